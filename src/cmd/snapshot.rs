//! `volsnap snapshot`, `snapshots list|drop` and `rollback`: pre-upgrade
//! snapshots and the way back.

use crate::cli::{RollbackArgs, SnapshotArgs, SnapshotsCommand};
use crate::output::{secs, TerminalObserver};
use anyhow::Result;
use std::time::Duration;
use volsnap::cancel::Cancel;
use volsnap::jobs::snapshot::{keep, roll_back, KeepRequest, Kept};
use volsnap::jobs::RunContext;
use volsnap::snapshots::{drop_snapshots, SnapshotStore};
use volsnap::storage::SystemRunner;

pub fn take(args: SnapshotArgs) -> Result<i32> {
    let request = KeepRequest {
        name: args.name.clone(),
        selection: args.selection.to_selection()?,
        quiesce: args.quiesce,
        stop_timeout: args.stop_timeout,
        ready_timeout: args.ready_timeout,
        snapshot_size: args.snapshot_size,
    };
    let cancel = Cancel::from_signals()?;
    let observer = TerminalObserver::new();
    let run = RunContext {
        state_dir: &args.state.state_dir,
        cancel: &cancel,
        observer: &observer,
    };
    let Kept { record, problems } = keep(&request, &run)?;
    let name = &record.name;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        outln!(
            "snapshot {name}: {} volume(s), downtime {}; roll back with: volsnap rollback {name}",
            record.volumes.len(),
            secs(record.downtime_ms)
        );
    }
    for problem in &problems {
        eprintln!("volsnap: error: the snapshot is taken, but {problem}");
    }
    Ok(if problems.is_empty() { 0 } else { 1 })
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
            let _lock = volsnap::jobs::begin_run(&state.state_dir)?;
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
    let record = roll_back(
        &args.name,
        args.stop_timeout,
        Duration::from_secs(args.ready_timeout.into()),
        &args.state.state_dir,
    )?;
    outln!(
        "rolled {} volume(s) back to snapshot {} (taken {}); the snapshot is kept: drop it with 'volsnap snapshots drop {}'",
        record.volumes.len(),
        record.name,
        record.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        record.name
    );
    Ok(0)
}
