//! Kept snapshots: taken before an upgrade, rolled back to after a bad one.

use super::RunContext;
use crate::discovery::{discover, Selection};
use crate::docker::Docker;
use crate::execute::{run_plan, Job};
use crate::journal::Journal;
use crate::plan::Quiesce;
use crate::plan::{build_keep_snapshot, detect_stack, set_label, PlanOptions};
use crate::repo::new_backup_id;
use crate::snapshots::{drop_snapshots, validate_name, KeptVolume, SnapshotRecord, SnapshotStore};
use crate::storage::{snapshot_label, SystemRunner};
use crate::usage;
use anyhow::Result;
use std::time::Duration;

/// A snapshot to take and keep.
pub struct KeepRequest {
    /// Its name; `volsnap-<id>` when not given.
    pub name: Option<String>,
    pub selection: Selection,
    pub quiesce: Quiesce,
    pub stop_timeout: u32,
    pub ready_timeout: u32,
    pub snapshot_size: Option<u64>,
}

/// A kept snapshot, and what went wrong around it.
pub struct Kept {
    pub record: SnapshotRecord,
    pub problems: Vec<String>,
}

/// Takes a snapshot of every volume of the selection and records it in
/// the host's state, for [`roll_back`].
pub fn keep(request: &KeepRequest, run: &RunContext<'_>) -> Result<Kept> {
    let args = request;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("volsnap-{}", new_backup_id()));
    validate_name(&name)?;
    let store = SnapshotStore::open(run.state_dir)?;
    if store.exists(&name) {
        return Err(usage!(
            "a snapshot named {name:?} exists already; pick another --name or drop it first"
        ));
    }
    let selection = args.selection.clone();
    let _lock = super::begin_run(run.state_dir)?;
    let docker = Docker::connect()?;
    let stack = discover(&docker, &selection)?;
    let storage = detect_stack(&SystemRunner, &stack, args.snapshot_size)?;
    let options = PlanOptions {
        quiesce: args.quiesce,
        stop_timeout_secs: Some(args.stop_timeout),
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
    let job = Job {
        docker: &docker,
        runner: &SystemRunner,
        stack: &stack,
        storage: &storage,
        plan: &plan,
        repo: None,
        id: name.clone(),
        host: crate::execute::this_host(),
        archive: Default::default(),
        cancel: run.cancel,
        observer: run.observer,
    };
    let journal = Journal::create(run.state_dir, &name, &super::command_line())?;
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
    Ok(Kept {
        record,
        problems: outcome.problems,
    })
}

/// Rolls the volumes of a kept snapshot back to it (the snapshot stays).
pub fn roll_back(
    name: &str,
    stop_timeout: u32,
    ready_timeout: Duration,
    state_dir: &std::path::Path,
) -> Result<SnapshotRecord> {
    let store = SnapshotStore::open(state_dir)?;
    let record = store.load(name)?;
    let _lock = super::begin_run(state_dir)?;
    let mut journal = Journal::create(
        state_dir,
        &format!("rollback-{}", record.name),
        &super::command_line(),
    )?;
    let docker = Docker::connect()?;
    let stack = discover(&docker, &record.selection)?;
    crate::snapshots::rollback(
        &docker,
        &SystemRunner,
        &record,
        &stack,
        stop_timeout,
        ready_timeout,
        &mut journal,
    )
    .map_err(|e| e.context(format!("rollback to {} failed", record.name)))?;
    journal.finish()?;
    Ok(record)
}
