//! `volsnap ls` and `volsnap diff`: a backup's entries, and what changed
//! between two backups.

use crate::cli::{DiffArgs, LsArgs};
use anyhow::Result;
use serde_json::json;
use volsnap::cancel::Cancel;
use volsnap::fsutil::human_bytes;
use volsnap::jobs::contents::{self, Change, Contents};
use volsnap::repo::manifest::{EntryKind, FileEntry};

pub fn ls(args: LsArgs) -> Result<i32> {
    let cancel = Cancel::from_signals()?;
    let scope = args.only.scope(&args.host)?;
    let backup = contents::read(&args.repo, &args.id, &scope, &cancel)?;
    let wanted = args.path.as_deref().unwrap_or("");
    check_volume(&backup, wanted)?;
    let listed = backup.volumes.iter().flat_map(|(volume, entries)| {
        entries
            .iter()
            .filter(move |l| contents::selected(volume, &l.entry.path, wanted))
            .map(move |l| (volume, &l.entry))
    });
    if args.json {
        let rows: Vec<_> = listed
            .map(|(volume, e)| {
                json!({
                    "volume": volume,
                    "path": e.path,
                    "path_hex": e.path_hex,
                    "kind": e.kind,
                    "mode": e.mode,
                    "uid": e.uid,
                    "gid": e.gid,
                    "size": e.size,
                    "mtime": e.mtime,
                    "target": e.target,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    let m = &backup.manifest;
    outln!(
        "backup {} ({}, {}, {})",
        backup.id,
        m.selection,
        m.strategy,
        m.started_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let (mut count, mut bytes) = (0u64, 0u64);
    for (volume, e) in listed {
        count += 1;
        bytes += e.size;
        outln!("{}", line(volume, e));
    }
    outln!("{count} entries, {} in files", human_bytes(bytes));
    Ok(0)
}

pub fn diff(args: DiffArgs) -> Result<i32> {
    let cancel = Cancel::from_signals()?;
    let scope = args.only.scope(&args.host)?;
    let old = contents::read(&args.repo, &args.old, &scope, &cancel)?;
    let new = contents::read(&args.repo, &args.new, &scope, &cancel)?;
    let wanted = args.path.as_deref().unwrap_or("");
    let changes: Vec<_> = contents::diff(&old, &new)
        .into_iter()
        .filter(|c| contents::selected(&c.volume, &c.path, wanted))
        .collect();
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "old": old.id,
                "new": new.id,
                "changes": changes,
            }))?
        );
        return Ok(0);
    }
    outln!("comparing backup {} with backup {}", old.id, new.id);
    let mut counts = std::collections::BTreeMap::new();
    for c in &changes {
        let (n, bytes) = counts.entry(c.change.mark()).or_insert((0u64, 0u64));
        *n += 1;
        *bytes += c.size;
        outln!(
            "{}  {}",
            c.change.mark(),
            shown(&full_path(&c.volume, &c.path))
        );
    }
    if changes.is_empty() {
        outln!("no differences");
        return Ok(0);
    }
    let count = |change: Change| counts.get(&change.mark()).copied().unwrap_or((0, 0));
    let (added, added_bytes) = count(Change::Added);
    let (removed, removed_bytes) = count(Change::Removed);
    outln!(
        "{added} added ({}), {removed} removed ({}), {} modified, {} metadata only, {} type changed",
        human_bytes(added_bytes),
        human_bytes(removed_bytes),
        count(Change::Modified).0,
        count(Change::Metadata).0,
        count(Change::Type).0
    );
    Ok(0)
}

/// A named volume that the backup lacks is a usage error, not an empty
/// listing.
fn check_volume(backup: &Contents, wanted: &str) -> Result<()> {
    let volume = wanted.split('/').next().unwrap_or("");
    if volume.is_empty() || backup.volumes.iter().any(|(name, _)| name == volume) {
        return Ok(());
    }
    let names: Vec<&str> = backup.volumes.iter().map(|(n, _)| n.as_str()).collect();
    Err(volsnap::usage!(
        "backup {} has no volume {}; its volumes: {}",
        backup.id,
        shown(volume),
        names.join(", ")
    ))
}

fn full_path(volume: &str, path: &str) -> String {
    if path == "." {
        volume.to_string()
    } else {
        format!("{volume}/{path}")
    }
}

/// `ls -l`-like: type and permissions, owner, size, time, name.
fn line(volume: &str, e: &FileEntry) -> String {
    let kind = match e.kind {
        EntryKind::File => '-',
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::Hardlink => 'h',
        EntryKind::Fifo => 'p',
        EntryKind::CharDevice => 'c',
        EntryKind::BlockDevice => 'b',
    };
    let mut perms = String::with_capacity(9);
    for shift in [6u32, 3, 0] {
        let bits = (e.mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let time = chrono::DateTime::from_timestamp(e.mtime, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "?".into());
    let size = match e.kind {
        EntryKind::File => human_bytes(e.size),
        _ => String::new(),
    };
    let target = match (e.kind, &e.target) {
        (EntryKind::Symlink, Some(t)) => format!(" -> {}", shown(t)),
        (EntryKind::Hardlink, Some(t)) => format!(" => {}", shown(t)),
        _ => String::new(),
    };
    format!(
        "{kind}{perms} {:>11} {size:>10} {time}  {}{target}",
        format!("{}:{}", e.uid, e.gid),
        shown(&full_path(volume, &e.path))
    )
}

/// A name from a backup, safe to print: control characters (a crafted
/// name could carry terminal escapes) are escaped.
fn shown(name: &str) -> String {
    volsnap::text::escape(name).into_owned()
}
