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
    /// Seconds each container gets to stop; its own stop timeout if `None`.
    pub stop_timeout: Option<u32>,
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
        containers: stack.containers.iter().map(|c| c.record()).collect(),
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

/// Rolls the volumes of a kept snapshot back to it (the snapshot stays):
/// the stack's running containers are stopped around it, dependents first
/// and each with `stop_timeout` or else its own; then started again in
/// order, each answering before the next starts, with their after-restore
/// steps (the volumes hold older data again). Warnings (a container now
/// running another image than the snapshot recorded) go to stderr.
pub fn roll_back(
    name: &str,
    stop_timeout: Option<u32>,
    ready_timeout: Duration,
    state_dir: &std::path::Path,
) -> Result<SnapshotRecord> {
    let store = SnapshotStore::open(state_dir)?;
    let record = store.load(name)?;
    crate::snapshots::check_rollback(&record)?;
    let _lock = super::begin_run(state_dir)?;
    let mut journal = Journal::create(
        state_dir,
        &format!("rollback-{}", record.name),
        &super::command_line(),
    )?;
    let docker = Docker::connect()?;
    let stack = discover(&docker, &record.selection)?;
    let live: Vec<_> = stack.containers.iter().map(|c| c.info.clone()).collect();
    let taken = format!("snapshot {}", record.name);
    for warning in super::services::image_changes(&docker, &live, &record.containers, &taken) {
        eprintln!("volsnap: warning: {warning}");
    }
    let (stopped, mut failure) =
        super::services::stop_in_order(&docker, &stack.containers, stop_timeout, &mut journal)?;
    if failure.is_none() {
        failure = crate::snapshots::roll_back_volumes(&SystemRunner, &record, &mut journal).err();
    }
    let in_order: Vec<_> = stopped.iter().rev().copied().collect();
    let restarted = super::services::start_again(
        &docker,
        &in_order,
        failure.is_none(),
        ready_timeout,
        &mut journal,
    )?;
    let failed = |e: anyhow::Error| Err(e.context(format!("rollback to {} failed", record.name)));
    match (failure, restarted) {
        (Some(e), Ok(errors)) if errors.is_empty() => failed(e.context("services were started again")),
        (Some(e), Ok(errors)) => failed(e.context(format!(
            "and services did not come back: {}",
            errors.join("; ")
        ))),
        (Some(e), Err(step)) => failed(e.context(step)),
        (None, Err(step)) => {
            journal.finish()?;
            failed(anyhow::anyhow!(
                "the volumes were rolled back, but {step}; the stack is left stopped: fix the cause and start it (docker start, or docker-compose up -d)"
            ))
        }
        (None, Ok(errors)) if errors.is_empty() => {
            journal.finish()?;
            Ok(record)
        }
        (None, Ok(errors)) => failed(anyhow::anyhow!(
            "the volumes were rolled back, but services did not come back (the journal is kept: 'volsnap recover' retries): {}",
            errors.join("; ")
        )),
    }
}
