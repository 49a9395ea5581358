//! `volsnap backup`: discover, plan, run, report.

use crate::cli::BackupArgs;
use crate::output::{secs, TerminalObserver};
use anyhow::Result;
use serde_json::json;
use volsnap::archive::ArchiveOptions;
use volsnap::cancel::Cancel;
use volsnap::discovery::discover;
use volsnap::docker::Docker;
use volsnap::execute::{run_plan, Job};
use volsnap::fsutil::human_bytes;
use volsnap::journal::Journal;
use volsnap::manifest::{Compression, Manifest};
use volsnap::plan::build;
use volsnap::repo::{new_backup_id, Repo};
use volsnap::storage::{detect_stack, set_label, snapshot_label, SystemRunner};

/// A written backup and what went wrong around it (services that did not
/// come back, post hooks that failed).
pub struct Done {
    pub manifest: Manifest,
    pub dir: std::path::PathBuf,
    pub problems: Vec<String>,
}

pub fn run(args: BackupArgs) -> Result<i32> {
    let cancel = Cancel::from_signals()?;
    let done = perform(&args, &cancel)?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json_report(&done.manifest, &done.dir, &done.problems))?
        );
    } else {
        print_human(&done.manifest, &done.dir);
    }
    for problem in &done.problems {
        eprintln!("volsnap: error: the backup is complete, but {problem}");
    }
    Ok(if done.problems.is_empty() { 0 } else { 1 })
}

/// Runs one backup: checks, lock, discovery, plan, execution.
pub fn perform(args: &BackupArgs, cancel: &Cancel) -> Result<Done> {
    let selection = args.selection.to_selection()?;
    let compression: Compression = args.compression.into();
    let mut archive = ArchiveOptions {
        compression,
        ..ArchiveOptions::default()
    };
    if let Some(level) = args.level {
        let range = if compression == Compression::Gzip {
            1..=9
        } else {
            1..=19
        };
        if !range.contains(&level) {
            return Err(volsnap::usage!(
                "--level {level} is out of range for {compression:?} ({range:?})"
            ));
        }
        archive.level = level;
    } else if compression == Compression::Gzip {
        archive.level = 6;
    }
    if let Some(threads) = args.threads {
        archive.threads = threads;
    }
    archive.bwlimit = args.bwlimit;
    if args.io_nice {
        lower_priority();
    }
    // Check everything that can be checked before anything is stopped.
    let repo = Repo::open(&args.repo)?;
    repo.check_writable()?;
    let _lock = super::begin_run(&args.state.state_dir)?;
    let docker = Docker::connect()?;
    let mut stack = discover(&docker, &selection)?;
    let storage = detect_stack(&SystemRunner, &stack, args.strategy.snapshot_size)?;
    // Sizes cost a walk of every file; measure only when something needs
    // them: a downtime budget, or a repository that might be too small.
    if args.strategy.max_downtime.is_some() {
        stack.measure()?;
    }
    if !args.skip_space_check {
        let free = repo.free_bytes()?;
        if !stack.measured && stack.used_space_bound()? > free {
            stack.measure()?;
        }
        if stack.measured {
            let need = repo.estimate_backup_bytes(&selection.to_string(), stack.total_bytes());
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
    let mut plan = build(&stack, &storage, &args.strategy.to_options())?;
    let id = new_backup_id();
    set_label(&mut plan.steps, &snapshot_label(&id));
    let observer = TerminalObserver::new();
    let job = Job {
        docker: &docker,
        runner: &SystemRunner,
        stack: &stack,
        storage: &storage,
        plan: &plan,
        repo: Some(&repo),
        id,
        host: args.host.name(),
        archive,
        cancel,
        observer: &observer,
    };
    let journal = Journal::create(&args.state.state_dir, &job.id, &super::command_line())?;
    let outcome = run_plan(&job, Some(journal)).map_err(|e| e.context("backup failed"))?;
    let (manifest, dir) = outcome
        .backup
        .ok_or_else(|| anyhow::anyhow!("internal error: the backup plan wrote no backup"))?;
    Ok(Done {
        manifest,
        dir,
        problems: outcome.problems,
    })
}

fn json_report(m: &Manifest, dir: &std::path::Path, problems: &[String]) -> serde_json::Value {
    json!({
        "id": m.id,
        "path": dir,
        "strategy": m.strategy,
        "consistency": m.consistency,
        "reason": m.reason,
        "downtime_ms": m.downtime_ms,
        "duration_ms": m.duration_ms,
        "compression": m.compression,
        "bytes": m.total_bytes(),
        "archive_bytes": m.archive_bytes(),
        "volumes": m.volumes.iter().map(|v| json!({
            "name": v.name,
            "kind": v.kind,
            "archive": v.archive,
            "sha256": v.sha256,
            "files": v.files,
            "bytes": v.bytes,
            "archive_bytes": v.archive_bytes,
            "changed_during_read": v.changed_during_read,
            "vanished_during_read": v.vanished_during_read,
        })).collect::<Vec<_>>(),
        "notes": m.notes,
        "problems": problems,
    })
}

fn print_human(m: &Manifest, dir: &std::path::Path) {
    outln!(
        "backup {}: {}, {}, downtime {}, total {}",
        m.id,
        m.strategy,
        m.consistency,
        secs(m.downtime_ms),
        secs(m.duration_ms)
    );
    for v in &m.volumes {
        outln!(
            "  {:<28} {:>7} files {:>10} -> {} ({})",
            v.name,
            v.files,
            human_bytes(v.bytes),
            v.archive,
            human_bytes(v.archive_bytes)
        );
        if !v.changed_during_read.is_empty() {
            outln!(
                "      changed while read: {}",
                v.changed_during_read.join(", ")
            );
        }
        if !v.vanished_during_read.is_empty() {
            outln!(
                "      vanished while read: {}",
                v.vanished_during_read.join(", ")
            );
        }
    }
    for note in &m.notes {
        outln!("  note: {note}");
    }
    outln!("saved to {}", dir.display());
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
