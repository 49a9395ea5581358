//! `volsnap snapshot`, `snapshots list|drop` and `rollback`: pre-upgrade
//! snapshots and the way back.

use crate::cli::{RollbackArgs, SnapshotArgs, SnapshotsCommand};
use crate::output::{secs, TerminalObserver};
use anyhow::Result;
use std::time::Duration;
use volsnap::cancel::Cancel;
use volsnap::discovery::discover;
use volsnap::docker::Docker;
use volsnap::execute::{run_plan, Job};
use volsnap::journal::Journal;
use volsnap::plan::{build_keep_snapshot, PlanOptions};
use volsnap::repo::new_backup_id;
use volsnap::snapshots::{
    drop_snapshots, validate_name, KeptVolume, SnapshotRecord, SnapshotStore,
};
use volsnap::storage::{detect_stack, set_label, snapshot_label, SystemRunner};
use volsnap::usage;

pub fn take(args: SnapshotArgs) -> Result<i32> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("volsnap-{}", new_backup_id()));
    validate_name(&name)?;
    let store = SnapshotStore::open(&args.state.state_dir)?;
    if store.exists(&name) {
        return Err(usage!(
            "a snapshot named {name:?} exists already; pick another --name or drop it first"
        ));
    }
    let selection = args.selection.to_selection()?;
    let cancel = Cancel::from_signals()?;
    let _lock = super::begin_run(&args.state.state_dir)?;
    let docker = Docker::connect()?;
    let stack = discover(&docker, &selection)?;
    let storage = detect_stack(&SystemRunner, &stack, args.snapshot_size)?;
    let options = PlanOptions {
        quiesce: args.quiesce,
        stop_timeout_secs: args.stop_timeout,
        ready_timeout_secs: args.ready_timeout,
        ..PlanOptions::default()
    };
    let mut plan = build_keep_snapshot(&stack, &storage, &options)?;
    let label = if name.starts_with("volsnap-") {
        name.clone()
    } else {
        snapshot_label(&name)
    };
    set_label(&mut plan.steps, &label);
    let observer = TerminalObserver::new();
    let job = Job {
        docker: &docker,
        runner: &SystemRunner,
        stack: &stack,
        storage: &storage,
        plan: &plan,
        repo: None,
        id: name.clone(),
        host: volsnap::execute::this_host(),
        archive: Default::default(),
        cancel: &cancel,
        observer: &observer,
    };
    let journal = Journal::create(&args.state.state_dir, &name, &super::command_line())?;
    let outcome =
        run_plan(&job, Some(journal)).map_err(|e| e.context(format!("snapshot {name} failed")))?;
    let record = SnapshotRecord {
        name: name.clone(),
        label,
        created_at: chrono::Utc::now(),
        selection,
        downtime_ms: outcome.downtime_ms,
        volumes: stack
            .volumes
            .iter()
            .zip(storage)
            .map(|(v, s)| KeptVolume {
                name: v.name.clone(),
                storage: s,
            })
            .collect(),
    };
    if let Err(e) = store.save(&record) {
        // Unrecorded snapshots would be orphans: drop them.
        let _ = drop_snapshots(&SystemRunner, &record);
        return Err(e.context("cannot record the snapshot, so it was dropped again"));
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        outln!(
            "snapshot {name}: {} volume(s), downtime {}; roll back with: volsnap rollback {name}",
            record.volumes.len(),
            secs(record.downtime_ms)
        );
    }
    for problem in &outcome.problems {
        eprintln!("volsnap: error: the snapshot is taken, but {problem}");
    }
    Ok(if outcome.problems.is_empty() { 0 } else { 1 })
}

pub fn manage(command: SnapshotsCommand) -> Result<i32> {
    match command {
        SnapshotsCommand::List { state, json } => {
            let records = SnapshotStore::open(&state.state_dir)?.list()?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&records)?);
            } else if records.is_empty() {
                outln!("no kept snapshots");
            } else {
                for r in &records {
                    let volumes: Vec<String> = r
                        .volumes
                        .iter()
                        .map(|v| format!("{} ({})", v.name, v.storage.backend_name()))
                        .collect();
                    outln!(
                        "{:<32} {}  {}  {}",
                        r.name,
                        r.created_at.format("%Y-%m-%d %H:%M:%S"),
                        r.selection,
                        volumes.join(", ")
                    );
                }
            }
            Ok(0)
        }
        SnapshotsCommand::Drop { name, state } => {
            let _lock = super::begin_run(&state.state_dir)?;
            let store = SnapshotStore::open(&state.state_dir)?;
            let record = store.load(&name)?;
            drop_snapshots(&SystemRunner, &record)?;
            store.remove(&name)?;
            outln!("dropped snapshot {name}");
            Ok(0)
        }
    }
}

pub fn rollback(args: RollbackArgs) -> Result<i32> {
    let store = SnapshotStore::open(&args.state.state_dir)?;
    let record = store.load(&args.name)?;
    let _lock = super::begin_run(&args.state.state_dir)?;
    let mut journal = Journal::create(
        &args.state.state_dir,
        &format!("rollback-{}", record.name),
        &super::command_line(),
    )?;
    let docker = Docker::connect()?;
    let stack = discover(&docker, &record.selection)?;
    volsnap::snapshots::rollback(
        &docker,
        &SystemRunner,
        &record,
        &stack,
        args.stop_timeout,
        Duration::from_secs(args.ready_timeout.into()),
        &mut journal,
    )
    .map_err(|e| e.context(format!("rollback to {} failed", record.name)))?;
    journal.finish()?;
    outln!(
        "rolled {} volume(s) back to snapshot {} (taken {}); the snapshot is kept: drop it with 'volsnap snapshots drop {}'",
        record.volumes.len(),
        record.name,
        record.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        record.name
    );
    Ok(0)
}
