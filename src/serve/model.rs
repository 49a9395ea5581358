//! What the dashboard shows, read from a repository in one pass and kept
//! until it is refreshed: a page view never reads the repository per
//! backup. Everything here came from storage and is an attacker's: names
//! are escaped where they are rendered (maud escapes every string), and
//! numbers are checked here before anything plots them.

use super::host::{describe_policy, HostRecord};
use crate::jobs::prune::PreviewRule;
use crate::repo::retention::Policy;
use crate::repo::{self, BackupEntry, Format};
use anyhow::Result;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Bytes past this (a pebibyte) are not believed: plotted as nothing,
/// shown as out of range.
pub(crate) const MAX_BYTES: u64 = 1 << 50;
/// Durations past this (thirty days) are not believed either.
pub(crate) const MAX_MS: u64 = 30 * 24 * 3600 * 1000;

/// A number from the repository: kept only when plausible.
pub(crate) fn plausible(value: u64, max: u64) -> Option<u64> {
    (value <= max).then_some(value)
}

pub(crate) struct Drill {
    pub passed: bool,
    pub at: DateTime<Utc>,
    /// Restore plus start until healthy, when both are plausible.
    pub rto_ms: Option<u64>,
}

pub(crate) struct Backup {
    /// What URLs name it by: the commit object (format 2), else its id.
    pub key: String,
    pub id: String,
    pub host: String,
    pub selection: String,
    pub strategy: String,
    pub consistency: String,
    pub started_at: DateTime<Utc>,
    pub duration_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    pub bytes: Option<u64>,
    pub stored: Option<u64>,
    pub volumes: Vec<String>,
    pub protected: bool,
    pub verified_at: Option<DateTime<Utc>>,
    pub drill: Option<Drill>,
    /// Whether its claim to come from its host holds for this host.
    pub attributed: bool,
}

/// One repository as the dashboard shows it.
pub(crate) struct Model {
    pub location: String,
    pub root: PathBuf,
    pub loaded_at: DateTime<Utc>,
    pub format: Format,
    pub encrypted: bool,
    /// Whether file lists can be read (plain, or an identity loaded: never
    /// by the dashboard itself).
    pub browsable: bool,
    /// Oldest first.
    pub backups: Vec<Backup>,
    /// The indexes in `backups` of each (host, stack), oldest first: a
    /// page groups once, not once per row.
    pub by_stack: std::collections::BTreeMap<(String, String), Vec<usize>>,
    pub warnings: Vec<String>,
    /// (size, free) of the file system holding a local repository.
    pub capacity: Option<(u64, u64)>,
    /// The name this host's backups carry, and its own record of them
    /// (its state directory, not the repository): what each plan
    /// estimated and what each backup read.
    pub this_host: String,
    pub history: Vec<crate::plan::estimate::PastRun>,
    /// This host's jobs and run log, read with the repository.
    pub host: Arc<HostRecord>,
    /// What a prune would free: worked out once per reading, when first
    /// asked for (it reads every backup's trees).
    prune: OnceLock<PrunePreview>,
}

/// What a dry run of prune found.
pub(crate) struct PrunePreview {
    /// The rules, in words.
    pub rules: String,
    pub result: Result<PruneFigures, String>,
}

pub(crate) struct PruneFigures {
    /// (host, stack, backup id) of each backup the rules let go.
    pub deleting: Vec<(String, String, String)>,
    pub keeping: usize,
    /// The bytes only those backups use, when plausible.
    pub bytes_freed: Option<u64>,
}

impl Model {
    pub(crate) fn load(root: &Path, host: Arc<HostRecord>) -> Result<Model> {
        let format = repo::detect(root);
        let (encrypted, browsable) = match format {
            Format::Chunked => {
                let opened = repo::open_chunked(root)?;
                (opened.keys().is_some(), opened.can_read_contents())
            }
            Format::Tar => (false, true),
        };
        let (entries, warnings) = repo::list_any(root)?;
        let mut backups: Vec<Backup> = entries.iter().map(backup).collect();
        backups.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.key.cmp(&b.key)));
        let mut by_stack: std::collections::BTreeMap<(String, String), Vec<usize>> =
            Default::default();
        for (n, b) in backups.iter().enumerate() {
            by_stack
                .entry((b.host.clone(), b.selection.clone()))
                .or_default()
                .push(n);
        }
        Ok(Model {
            by_stack,
            location: root.display().to_string(),
            root: root.to_path_buf(),
            loaded_at: Utc::now(),
            format,
            encrypted,
            browsable,
            backups,
            warnings,
            capacity: capacity(root),
            this_host: crate::execute::this_host(),
            history: crate::jobs::history::load(&crate::repo::keys::state_dir()),
            host,
            prune: OnceLock::new(),
        })
    }

    /// The prune preview, once worked out.
    pub(crate) fn prune_preview_done(&self) -> Option<&PrunePreview> {
        self.prune.get()
    }

    /// What prune would delete and free under `flags` (every stack), or
    /// else under this host's jobs' retention (each over its own stack);
    /// a dry run that writes nothing.
    pub(crate) fn prune_preview(&self, flags: Option<&Policy>) -> &PrunePreview {
        self.prune.get_or_init(|| {
            let (rules, words) = match flags {
                Some(policy) => (
                    vec![PreviewRule {
                        policy: policy.clone(),
                        selection: None,
                        host: None,
                    }],
                    format!("volsnap prune {} (every stack)", describe_policy(policy)),
                ),
                None => {
                    let jobs = self.host.retention_into(&self.root);
                    let words = jobs
                        .iter()
                        .map(|(selection, p)| format!("{selection}: {}", describe_policy(p)))
                        .collect::<Vec<_>>()
                        .join("; ");
                    let rules = jobs
                        .into_iter()
                        .map(|(selection, policy)| PreviewRule {
                            policy,
                            selection: Some(selection),
                            host: Some(self.this_host.clone()),
                        })
                        .collect();
                    (rules, format!("this host's jobs' retention ({words})"))
                }
            };
            let result = if rules.is_empty() {
                Err("No rule to apply: this host's jobs keep every backup here. Start volsnap serve with --keep-… flags to see what a prune with them would free.".to_string())
            } else {
                crate::jobs::prune::preview_at(&self.root, &rules, &crate::cancel::Cancel::new())
                    .map(|preview| PruneFigures {
                        deleting: preview
                            .reports
                            .iter()
                            .flat_map(|r| &r.groups)
                            .flat_map(|g| {
                                g.decisions.iter().filter(|d| !d.keep).map(|d| {
                                    (g.host.clone(), g.selection.clone(), d.id.clone())
                                })
                            })
                            .collect(),
                        keeping: preview
                            .reports
                            .iter()
                            .flat_map(|r| &r.groups)
                            .flat_map(|g| &g.decisions)
                            .filter(|d| d.keep)
                            .count(),
                        bytes_freed: plausible(preview.bytes_freed, MAX_BYTES),
                    })
                    .map_err(|e| format!("cannot work out what a prune would do: {e:#}"))
            };
            PrunePreview {
                rules: words,
                result,
            }
        })
    }

    /// Every (host, stack) pair, sorted.
    pub(crate) fn stacks(&self) -> impl Iterator<Item = &(String, String)> {
        self.by_stack.keys()
    }

    /// The backups of one stack, oldest first.
    pub(crate) fn of_stack<'m>(
        &'m self,
        host: &str,
        selection: &str,
    ) -> impl Iterator<Item = &'m Backup> + 'm {
        self.by_stack
            .get(&(host.to_string(), selection.to_string()))
            .into_iter()
            .flatten()
            .map(|&n| &self.backups[n])
    }

    pub(crate) fn find(&self, key: &str) -> Option<&Backup> {
        self.backups.iter().find(|b| b.key == key)
    }
}

fn backup(entry: &BackupEntry) -> Backup {
    let m = &entry.manifest;
    let key = match entry.format {
        Format::Chunked => entry
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| entry.id.clone()),
        Format::Tar => entry.id.clone(),
    };
    let notes = entry.notes().ok();
    let drill = notes
        .as_ref()
        .and_then(crate::jobs::drill::load_report)
        .map(|d| Drill {
            passed: d.passed,
            at: d.drilled_at,
            rto_ms: d
                .healthy_ms
                .and_then(|h| h.checked_add(d.restore_ms))
                .and_then(|ms| plausible(ms, MAX_MS)),
        });
    let stored = if entry.format == Format::Chunked {
        m.stored_bytes
    } else {
        Some(m.bytes_stored())
    };
    Backup {
        key,
        id: entry.id.clone(),
        host: m.host.clone(),
        selection: m.selection.clone(),
        strategy: m.strategy.to_string(),
        consistency: m.consistency.to_string(),
        started_at: m.started_at,
        duration_ms: plausible(m.duration_ms, MAX_MS),
        downtime_ms: plausible(m.downtime_ms, MAX_MS),
        bytes: m
            .volumes
            .iter()
            .try_fold(0u64, |sum, v| sum.checked_add(v.bytes))
            .and_then(|b| plausible(b, MAX_BYTES)),
        stored: stored.and_then(|b| plausible(b, MAX_BYTES)),
        volumes: m.volumes.iter().map(|v| v.name.clone()).collect(),
        protected: entry.protected(),
        verified_at: notes.as_ref().and_then(crate::restore::verify::verified_at),
        drill,
        attributed: entry.counts(),
    }
}

/// The size and free space of a local repository's file system.
fn capacity(root: &Path) -> Option<(u64, u64)> {
    if crate::backend::is_remote(root) {
        return None;
    }
    let stat = nix::sys::statvfs::statvfs(root).ok()?;
    let block = stat.fragment_size() as u64;
    Some((
        (stat.blocks() as u64).checked_mul(block)?,
        (stat.blocks_available() as u64).checked_mul(block)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implausible_numbers_are_dropped() {
        assert_eq!(plausible(1 << 63, MAX_BYTES), None);
        assert_eq!(plausible(5, MAX_BYTES), Some(5));
        assert_eq!(plausible(MAX_MS + 1, MAX_MS), None);
    }
}
