//! `volsnap backup`: discover, plan, run, report.

use crate::cli::BackupArgs;
use crate::output::{secs, TerminalObserver};
use anyhow::Result;
use serde_json::json;
use volsnap::archive::ArchiveOptions;
use volsnap::cancel::Cancel;
use volsnap::fsutil::human_bytes;
use volsnap::jobs::backup::{perform, BackupRequest, Done};
use volsnap::jobs::RunContext;

pub fn run(args: BackupArgs) -> Result<i32> {
    let cancel = Cancel::from_signals()?;
    let observer = if args.json {
        TerminalObserver::plain()
    } else {
        TerminalObserver::new()
    };
    let run = RunContext {
        state_dir: &args.state.state_dir,
        cancel: &cancel,
        observer: &observer,
    };
    let done = perform(&request(&args)?, &run)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&json_report(&done))?);
    } else {
        print_human(&done);
    }
    for problem in &done.problems {
        eprintln!("volsnap: error: the backup is complete, but {problem}");
    }
    Ok(if done.problems.is_empty() { 0 } else { 1 })
}

/// The library's view of the arguments.
fn request(args: &BackupArgs) -> Result<BackupRequest> {
    let mut archive = ArchiveOptions::new(args.compression.into(), args.level)?;
    if let Some(threads) = args.threads {
        archive.threads = threads;
    }
    archive.bwlimit = args.bwlimit;
    Ok(BackupRequest {
        selection: args.selection.to_selection()?,
        repo: volsnap::backend::location::with_upload_limit(&args.repo, args.upload_limit)?,
        plan: args.strategy.to_options(),
        snapshot_size: args.strategy.snapshot_size,
        archive,
        io_nice: args.io_nice,
        skip_space_check: args.skip_space_check,
        host: args.host.name(),
        force_read: args.force_read,
        exclude: args.exclude.clone(),
    })
}

fn json_report(done: &Done) -> serde_json::Value {
    let m = &done.manifest;
    json!({
        "id": m.id,
        "path": done.dir,
        "strategy": m.strategy,
        "consistency": m.consistency,
        "reason": m.reason,
        "downtime_ms": m.downtime_ms,
        "estimated_downtime_ms": done.estimate.ms,
        "estimate_source": done.estimate.source,
        "duration_ms": m.duration_ms,
        "compression": m.compression,
        "bytes": m.total_bytes(),
        "archive_bytes": m.archive_bytes(),
        "stored_bytes": m.bytes_stored(),
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
            "excluded": v.excluded,
            "excluded_entries": v.excluded_entries,
        })).collect::<Vec<_>>(),
        "containers": m.containers,
        "notes": m.notes,
        "problems": done.problems,
    })
}

fn print_human(done: &Done) {
    let (m, dir) = (&done.manifest, &done.dir);
    let estimated = if m.downtime_ms > 0 || done.estimate.ms > 0 {
        format!(" (estimated {})", secs(done.estimate.ms))
    } else {
        String::new()
    };
    outln!(
        "backup {}: {}, {}, downtime {}{estimated}, total {}",
        m.id,
        m.strategy,
        m.consistency,
        secs(m.downtime_ms),
        secs(m.duration_ms)
    );
    for v in &m.volumes {
        // Format 2 has no archive per volume: what it stored is per backup.
        let archive = match m.stored_bytes {
            None => format!(" -> {} ({})", v.archive, human_bytes(v.archive_bytes)),
            Some(_) => String::new(),
        };
        outln!(
            "  {:<28} {:>7} files {:>10}{archive}",
            v.name,
            v.files,
            human_bytes(v.bytes)
        );
        if !v.excluded.is_empty() {
            outln!(
                "      left out on purpose: {} entries matching {}",
                v.excluded_entries,
                v.excluded.join(", ")
            );
        }
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
    if let Some(stored) = m.stored_bytes {
        outln!(
            "stored {} new of {} (the rest deduplicated against earlier backups, or compressed away)",
            human_bytes(stored),
            human_bytes(m.total_bytes())
        );
    }
    outln!("saved to {}", dir.display());
}
