//! `volsnap list`: the backups in a repository.

use crate::cli::ListArgs;
use anyhow::Result;
use serde_json::json;
use volsnap::fsutil::human_bytes;
use volsnap::text::escape;

pub fn run(args: ListArgs) -> Result<i32> {
    let (mut backups, warnings) = volsnap::repo::list_any(&args.repo)?;
    let selection = args.only.selection()?;
    backups.retain(|b| {
        selection
            .as_deref()
            .is_none_or(|s| b.manifest.selection == s)
            && args.host.as_deref().is_none_or(|h| b.manifest.host == h)
    });
    for w in &warnings {
        eprintln!("volsnap: warning: skipping {w}");
    }
    if args.json {
        let rows: Vec<_> = backups
            .iter()
            .map(|b| {
                let m = &b.manifest;
                // Format 2: the commit object's id, which names exactly
                // one backup where a backup id might be claimed twice.
                let object = (b.format == volsnap::repo::Format::Chunked)
                    .then(|| b.dir.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .flatten();
                json!({
                    "id": b.id,
                    "object": object,
                    "host": m.host,
                    "started_at": m.started_at,
                    "selection": m.selection,
                    "strategy": m.strategy,
                    "consistency": m.consistency,
                    "downtime_ms": m.downtime_ms,
                    "bytes": m.total_bytes(),
                    "archive_bytes": m.archive_bytes(),
                    "stored_bytes": m.bytes_stored(),
                    "volumes": m.volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
                    "attribution": b.attribution,
                    "protected": b.protected(),
                    "verified_at": b.notes().ok().and_then(|n| volsnap::restore::verify::verified_at(&n)),
                    "drill": b.notes().ok().and_then(|n| volsnap::jobs::drill::load_report(&n)).map(|d| json!({
                        "passed": d.passed,
                        "drilled_at": d.drilled_at,
                        "restore_ms": d.restore_ms,
                        "healthy_ms": d.healthy_ms,
                    })),
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    if backups.is_empty() {
        let filtered = selection.is_some() || args.host.is_some();
        outln!(
            "no backups in {}{}",
            args.repo.display(),
            if filtered { " match" } else { "" }
        );
        return Ok(0);
    }
    let host_width = backups
        .iter()
        .map(|b| escape(&b.manifest.host).chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    outln!(
        "{:<22} {:<host_width$} {:<20} {:<9} {:<12} {:>10} {:>10} {:<5} selection",
        "id",
        "host",
        "time (UTC)",
        "strategy",
        "consistency",
        "data",
        "stored",
        "flags"
    );
    for b in &backups {
        let m = &b.manifest;
        outln!(
            "{:<22} {:<host_width$} {:<20} {:<9} {:<12} {:>10} {:>10} {:<5} {}",
            escape(&b.id),
            escape(&m.host),
            m.started_at.format("%Y-%m-%d %H:%M:%S"),
            m.strategy.to_string(),
            m.consistency.to_string(),
            human_bytes(m.total_bytes()),
            human_bytes(m.bytes_stored()),
            flags(b),
            escape(&m.selection)
        );
    }
    outln!("flags: P protected from prune, V verified, D drill passed, d drill failed, ? not attributable to its host (unsigned, untrusted key, tampered with, or dated in the future: never counted by retention nor taken as latest)");
    let newest = volsnap::repo::newest_by_host(&backups);
    if newest
        .iter()
        .any(|b| b.manifest.host != newest[0].manifest.host)
    {
        let now = chrono::Utc::now();
        outln!("newest backup of each host and stack:");
        for b in newest {
            let m = &b.manifest;
            outln!(
                "  {:<host_width$} {}  {}  {}",
                escape(&m.host),
                volsnap::fsutil::human_age(&m.completed_at, &now),
                escape(&b.id),
                escape(&m.selection)
            );
        }
    }
    Ok(0)
}

fn flags(b: &volsnap::repo::BackupEntry) -> String {
    let mut flags = String::new();
    if b.protected() {
        flags.push('P');
    }
    let notes = b.notes().ok();
    if notes
        .as_ref()
        .and_then(volsnap::restore::verify::verified_at)
        .is_some()
    {
        flags.push('V');
    }
    match notes.as_ref().and_then(volsnap::jobs::drill::load_report) {
        Some(d) if d.passed => flags.push('D'),
        Some(_) => flags.push('d'),
        None => {}
    }
    if !b.counts() {
        flags.push('?');
    }
    if flags.is_empty() {
        flags.push('-');
    }
    flags
}
