//! One backup from start to end: checks, host lock, discovery, plan,
//! execution. The CLI's `backup` and configured jobs both call [`perform`].

use super::{begin_run, command_line, history, RunContext};
use crate::archive::chunked::{parent_dir, ChunkedOptions};
use crate::archive::ArchiveOptions;
use crate::discovery::{discover, Selection, Stack};
use crate::docker::Docker;
use crate::execute::{run_plan, Destination, Job};
use crate::fsutil::human_bytes;
use crate::journal::Journal;
use crate::plan::estimate::{Estimate, PastRun};
use crate::plan::{build, detect_stack, set_label, Plan, PlanOptions};
use crate::repo::manifest::{Compression, Manifest};
use crate::repo::{new_backup_id, Format, Repo};
use crate::storage::{snapshot_label, StorageInfo, SystemRunner};
use anyhow::Result;
use std::path::PathBuf;

/// Everything a backup needs to know, as the CLI or a job's configuration
/// gave it.
pub struct BackupRequest {
    pub selection: Selection,
    pub repo: PathBuf,
    pub plan: PlanOptions,
    /// Size of classic LVM snapshots' copy-on-write area.
    pub snapshot_size: Option<u64>,
    pub archive: ArchiveOptions,
    /// Run at the lowest CPU and I/O priority.
    pub io_nice: bool,
    pub skip_space_check: bool,
    /// The host the backup is recorded under.
    pub host: String,
    /// Format 2: read every file, even those the parent rule would take
    /// from the previous backup.
    pub force_read: bool,
    /// Exclude patterns for every volume (`--exclude`).
    pub exclude: Vec<String>,
}

/// A written backup and what went wrong around it (services that did not
/// come back, post hooks that failed).
pub struct Done {
    pub manifest: Manifest,
    pub dir: PathBuf,
    pub problems: Vec<String>,
    /// The downtime the plan expected, and from what.
    pub estimate: Estimate,
}

/// Runs one backup. Everything that can be checked is checked before
/// anything is stopped.
pub fn perform(request: &BackupRequest, run: &RunContext<'_>) -> Result<Done> {
    if request.io_nice {
        lower_priority();
    }
    // The repository is only looked at here; it is written to (initialised,
    // marked) once the stack is known and the plan built.
    let (format, initialise) = crate::repo::backup_format(&request.repo)?;
    let tar_repo = match format {
        Format::Chunked if request.archive.compression != Compression::Zstd => {
            return Err(crate::usage!(
                "{} is a format-2 repository{}, whose chunks are always zstd; --compression {:?} is for format-1 (tar) repositories (volsnap init --format tar)",
                request.repo.display(),
                if initialise { " (as an empty directory becomes)" } else { "" },
                request.archive.compression
            ));
        }
        Format::Chunked => None,
        Format::Tar => {
            let repo = Repo::open(&request.repo)?;
            repo.check_writable()?;
            Some(repo)
        }
    };
    let _lock = begin_run(run.state_dir)?;
    let docker = Docker::connect()?;
    let mut stack = discover(&docker, &request.selection)?;
    for v in &mut stack.volumes {
        v.exclude.extend(request.exclude.iter().cloned());
        // A bad pattern is refused before anything stops.
        crate::archive::Exclude::new(&v.exclude)
            .map_err(|e| e.context(format!("volume {}", v.name)))?;
    }
    let storage = detect_stack(&SystemRunner, &stack, request.snapshot_size)?;
    // Sizes cost a walk of every file; measure only when something needs
    // them: a downtime budget, or a repository that might be too small.
    if request.plan.max_downtime.is_some() {
        stack.measure()?;
    }
    if let (Some(repo), false) = (&tar_repo, request.skip_space_check) {
        let free = repo.free_bytes()?;
        if !stack.measured && stack.used_space_bound()? > free {
            stack.measure()?;
        }
        if stack.measured {
            let need =
                repo.estimate_backup_bytes(&request.selection.to_string(), stack.total_bytes());
            if free < need {
                anyhow::bail!(
                    "repository {} has {} free, this backup needs about {} ({} of data{}); nothing was stopped. Free space, use another --repo, or pass --skip-space-check",
                    repo.root().display(),
                    human_bytes(free),
                    human_bytes(need),
                    human_bytes(stack.total_bytes()),
                    if need < stack.total_bytes() { ", compressed as last time" } else { ", assumed incompressible" }
                );
            }
        }
    }
    let options = PlanOptions {
        history: history::load(run.state_dir),
        ..request.plan.clone()
    };
    if !stack.measured {
        expect_sizes(&mut stack, &options.history);
    }
    let mut plan = build(&stack, &storage, &options)?;
    let destination = match tar_repo {
        Some(repo) => {
            repo.mark_format1()?;
            Destination::Tar(repo)
        }
        None => {
            if initialise {
                crate::repo::init_for_backup(&request.repo)?;
            }
            let repo = crate::repo::open_chunked(&request.repo)?;
            if crate::backend::is_remote(&request.repo) {
                repo.cache_indexes_in(
                    run.state_dir
                        .join("cache")
                        .join(repo.config.local_name())
                        .join("index"),
                );
            }
            let parents = parent_dir(
                run.state_dir,
                &repo.config.local_name(),
                &request.host,
                &request.selection.to_string(),
            );
            Destination::Chunked {
                repo,
                options: ChunkedOptions {
                    level: request.archive.level,
                    threads: request.archive.threads.max(1) as usize,
                    // One more than the cores: reads that wait on the disk
                    // overlap with the hashing of others.
                    readers: request.archive.threads.max(1) as usize + 1,
                    parents: Some(parents),
                    force_read: request.force_read,
                    signer: Some(std::sync::Arc::new(
                        crate::repo::attest::HostKey::load_or_create(run.state_dir)?,
                    )),
                },
            }
        }
    };
    let id = new_backup_id();
    set_label(&mut plan.steps, &snapshot_label(&id));
    let job = Job {
        docker: &docker,
        runner: &SystemRunner,
        stack: &stack,
        storage: &storage,
        plan: &plan,
        repo: Some(&destination),
        id,
        host: request.host.clone(),
        archive: request.archive,
        cancel: run.cancel,
        observer: run.observer,
    };
    let journal = Journal::create(run.state_dir, &job.id, &command_line())?;
    let outcome = run_plan(&job, Some(journal)).map_err(|e| e.context("backup failed"))?;
    let (manifest, dir) = outcome
        .backup
        .ok_or_else(|| anyhow::anyhow!("internal error: the backup plan wrote no backup"))?;
    let past = PastRun {
        at: manifest.completed_at,
        selection: manifest.selection.clone(),
        strategy: manifest.strategy,
        quiesce: plan.quiesce,
        containers: stack
            .containers
            .iter()
            .filter(|c| c.info.running && !c.info.paused)
            .count() as u64,
        bytes: manifest.total_bytes(),
        downtime_ms: outcome.downtime_ms,
        archive_down_ms: outcome.archive_down_ms,
        read_bytes: outcome
            .reused_bytes
            .map(|reused| manifest.total_bytes().saturating_sub(reused)),
        estimated_ms: plan.estimated_downtime_ms,
        backup_id: Some(manifest.id.clone()),
        volumes: manifest
            .volumes
            .iter()
            .map(|v| (v.name.clone(), v.bytes))
            .collect(),
    };
    if let Err(e) = history::record(run.state_dir, &past) {
        tracing::warn!("cannot record this backup for downtime estimates: {e:#}");
    }
    Ok(Done {
        manifest,
        dir,
        problems: outcome.problems,
        estimate: Estimate {
            ms: plan.estimated_downtime_ms,
            source: plan.estimate_source,
        },
    })
}

/// Sizes the last backup of this selection found, for a stack that was not
/// measured: progress then has totals (a percentage and an ETA).
fn expect_sizes(stack: &mut Stack, history: &[PastRun]) {
    let selection = stack.selection.to_string();
    let Some(last) = history.iter().rev().find(|r| r.selection == selection) else {
        return;
    };
    for v in &mut stack.volumes {
        if let Some(bytes) = last.volumes.get(&v.name) {
            v.bytes = *bytes;
        }
    }
}

/// What a backup of `selection` would do now: the stack (measured), the
/// storage under each volume, and the plan (`volsnap plan`).
pub fn preview(
    selection: &Selection,
    options: &PlanOptions,
    snapshot_size: Option<u64>,
    state_dir: &std::path::Path,
) -> Result<(Stack, Vec<StorageInfo>, Plan)> {
    let docker = Docker::connect()?;
    let mut stack = discover(&docker, selection)?;
    let history = history::load(state_dir);
    // What changed since this selection's last backup: a format-2
    // backup reads only that.
    let last = stack.selection.to_string();
    let since = history
        .iter()
        .rev()
        .find(|r| r.selection == last)
        .map(|r| r.at);
    stack.measure_since(since)?;
    let storage = detect_stack(&SystemRunner, &stack, snapshot_size)?;
    let options = PlanOptions {
        history,
        ..options.clone()
    };
    let plan = build(&stack, &storage, &options)?;
    Ok((stack, storage, plan))
}

/// Lowest CPU priority and the lowest best-effort I/O priority, for this
/// process and the threads it starts later.
fn lower_priority() {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_BE: libc::c_long = 2;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    // SAFETY: plain syscalls on this process; failures are only logged.
    unsafe {
        if libc::setpriority(libc::PRIO_PROCESS, 0, 19) != 0 {
            tracing::warn!("cannot lower the CPU priority");
        }
        let prio = (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | 7;
        if libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_long,
            prio,
        ) != 0
        {
            tracing::warn!("cannot lower the I/O priority");
        }
    }
}
