//! `volsnap copy` and a job's `copy_to`: backups of one repository copied
//! into others (a local repository and an off-site one: 3-2-1).

use crate::cancel::Cancel;
use crate::repo::v2::copy::{copy, Copied};
use crate::repo::{resolve_chunked, Scope};
use anyhow::Result;
use std::path::Path;

/// Copies the backups `ids` (ids, or `latest` within `scope`) of `from`
/// into `to`; with no ids, every backup of `from` (of the scope's stack,
/// when one is named) that `to` lacks.
pub fn copy_backups(
    from: &Path,
    to: &Path,
    ids: &[String],
    scope: &Scope,
    cancel: &Cancel,
) -> Result<Copied> {
    // An empty destination is made like the source first: what a job's
    // first copy into a new bucket or directory needs.
    let empty = match crate::repo::backup_format(to) {
        Ok((_, fresh)) => fresh,
        Err(_) => !crate::backend::is_remote(to) && !to.exists(),
    };
    if empty {
        let said = crate::repo::init(
            to,
            crate::repo::Format::Chunked,
            Some(crate::repo::keys::NewKeys::Like(from.to_path_buf())),
            None,
        )?;
        eprintln!("volsnap: {said}");
    }
    for (side, root) in [("--from", from), ("--to", to)] {
        if crate::repo::detect(root) != crate::repo::Format::Chunked {
            return Err(crate::usage!(
                "{side} {} holds no format-2 repository: volsnap copy works between format-2 repositories (create the destination with volsnap init --repo DEST --like {})",
                root.display(),
                from.display()
            ));
        }
    }
    let source = crate::repo::open_chunked(from)?;
    let destination = crate::repo::open_chunked(to)?;
    let commits = if ids.is_empty() {
        source
            .commits()?
            .into_iter()
            .filter(|(_, c)| scope.selection.as_ref().is_none_or(|s| *s == c.selection))
            .collect()
    } else {
        let mut chosen = Vec::new();
        for id in ids {
            let found = resolve_chunked(&source, id, scope)?;
            if !chosen.iter().any(|(o, _): &(_, _)| *o == found.0) {
                chosen.push(found);
            }
        }
        chosen
    };
    copy(
        &source,
        &destination,
        commits,
        &crate::execute::this_host(),
        cancel,
    )
}

/// One line on what a copy did, for terminals and run logs.
pub fn describe(copied: &Copied, to: &Path) -> String {
    let mib = copied.bytes_sent as f64 / (1 << 20) as f64;
    format!(
        "{} backup(s) copied to {}{}: {} pack(s) sent ({}, {:.1} MiB/s), {} the destination had already, in {:.1} s",
        copied.copied.len(),
        to.display(),
        if copied.present.is_empty() {
            String::new()
        } else {
            format!(" ({} there already)", copied.present.len())
        },
        copied.packs_sent,
        crate::fsutil::human_bytes(copied.bytes_sent),
        if copied.seconds > 0.0 { mib / copied.seconds } else { 0.0 },
        copied.packs_skipped,
        copied.seconds
    )
}
