//! `volsnap host adopt`: this host attests, with its signing key, the
//! unsigned backups it wrote before commits were signed, so that its
//! retention and `latest` count them again (docs/FORMAT.md, "Attribution").
//!
//! Which backups are this host's is decided by its own records, never by
//! the repository: a commit is adopted only if it matches a line of this
//! host's history (`STATE/history.jsonl`: completion time to the
//! nanosecond, selection and strategy), or if the operator names it. Any
//! fleet host could have written an unsigned commit claiming this host's
//! name; one that copies a real commit's time and selection makes that
//! record ambiguous, and then neither is adopted.

use crate::repo::attest::{self, Attribution, HostKey, Verifier};
use crate::repo::v2::id::Id;
use crate::repo::v2::objects::Commit;
use crate::text::escape;
use anyhow::Result;
use std::path::Path;

/// What `adopt` did, or would do with `dry_run`.
#[derive(Debug, Default)]
pub struct Adoption {
    /// Backup ids attested now.
    pub adopted: Vec<String>,
    /// Unsigned commits claiming this host that no record of this host
    /// names (left unverified).
    pub unrecorded: Vec<String>,
    /// Records two different unsigned commits match: neither adopted.
    pub ambiguous: Vec<String>,
}

/// Attests this host's unsigned backups in the repository at `root`: those
/// its history records, or exactly `named` (ids or commit object ids).
pub fn adopt(root: &Path, state_dir: &Path, named: &[String], dry_run: bool) -> Result<Adoption> {
    if crate::repo::detect(root) != crate::repo::Format::Chunked {
        return Err(crate::usage!(
            "{} is a format-1 repository: its backups are not signed, so there is nothing to adopt",
            root.display()
        ));
    }
    let repo = crate::repo::open_chunked(root)?;
    let this_host = crate::execute::this_host();
    let verifier = Verifier::for_repository(&repo)?;
    let unsigned: Vec<(Id, Commit)> = repo
        .commits()?
        .into_iter()
        .filter(|(_, c)| c.host == this_host && verifier.attribute(c) == Attribution::Unsigned)
        .collect();
    let mut adoption = Adoption::default();
    let chosen: Vec<&(Id, Commit)> = if named.is_empty() {
        let history = super::history::load(state_dir);
        let mut chosen = Vec::new();
        for candidate in &unsigned {
            let (_, commit) = candidate;
            let recorded = history.iter().any(|run| {
                run.at == commit.completed_at
                    && run.selection == commit.selection
                    && run.strategy == commit.strategy
            });
            if !recorded {
                adoption.unrecorded.push(escape(&commit.id).into_owned());
                continue;
            }
            let digest = attest::backup_digest(commit)?;
            let rivals = unsigned.iter().any(|(_, other)| {
                other.completed_at == commit.completed_at
                    && other.selection == commit.selection
                    && attest::backup_digest(other).is_ok_and(|d| d != digest)
            });
            if rivals {
                adoption.ambiguous.push(escape(&commit.id).into_owned());
            } else {
                chosen.push(candidate);
            }
        }
        chosen
    } else {
        let mut chosen = Vec::new();
        for name in named {
            let by_object: Vec<_> = unsigned.iter().filter(|(o, _)| o.hex() == *name).collect();
            let by_id: Vec<_> = unsigned.iter().filter(|(_, c)| c.id == *name).collect();
            match (by_object.as_slice(), by_id.as_slice()) {
                ([one], _) | ([], [one]) => chosen.push(*one),
                ([], []) => {
                    return Err(crate::usage!(
                        "{} is no unsigned backup of this host ({this_host}) in {}: volsnap list --repo {} flags them with ? and says why",
                        escape(name),
                        root.display(),
                        root.display()
                    ))
                }
                _ => {
                    return Err(crate::usage!(
                        "backup id {} is ambiguous: several unsigned commits claim it; name the one this host wrote by its commit object id (volsnap list --json shows it as \"object\")",
                        escape(name)
                    ))
                }
            }
        }
        chosen
    };
    if chosen.is_empty() {
        return Ok(adoption);
    }
    let key = HostKey::load_or_create(state_dir)?;
    let mut written = Vec::new();
    for (_, commit) in chosen {
        let (name, bytes) = key.attest(commit)?;
        if !dry_run {
            repo.backend().write(&name, &bytes)?;
            written.push(name);
        }
        adoption.adopted.push(escape(&commit.id).into_owned());
    }
    // In an immutable repository an attestation is retained like a backup.
    repo.retain(&written)?;
    adoption.adopted.dedup();
    Ok(adoption)
}
