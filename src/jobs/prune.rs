//! `prune`: applies a retention policy to a repository, one group at a
//! time, never deleting a protected backup or the newest backup that
//! verifies. A group is one stack (selection) from one host: hosts sharing
//! a repository never prune each other's backups.

use crate::cancel::Cancel;
use crate::repo::retention::{decide, Candidate, Decision, Policy};
use crate::repo::Repo;
use anyhow::Result;
use serde::Serialize;

/// What prune decided for the backups of one selection.
#[derive(Debug, Serialize)]
pub struct GroupReport {
    pub host: String,
    pub selection: String,
    /// Newest first.
    pub decisions: Vec<Decision>,
    /// Backups found damaged while looking for the newest one that verifies.
    pub damaged: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub groups: Vec<GroupReport>,
    pub deleted: Vec<String>,
}

/// Applies `policy` to the backups of `selection` from `host` (every
/// selection, every host when `None`, each group on its own), deleting
/// unless `dry_run`.
pub fn prune(
    repo: &Repo,
    policy: &Policy,
    selection: Option<&str>,
    host: Option<&str>,
    dry_run: bool,
    cancel: &Cancel,
) -> Result<PruneReport> {
    if policy.is_empty() {
        return Err(crate::usage!(
            "no keep rule given, which would delete every backup; pass at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly"
        ));
    }
    if !dry_run {
        repo.finish_deletions()?;
    }
    let (backups, _) = repo.list()?;
    let mut groups: Vec<(&str, &str)> = backups
        .iter()
        .map(|b| (b.manifest.host.as_str(), b.manifest.selection.as_str()))
        .filter(|(h, s)| {
            selection.is_none_or(|wanted| wanted == *s) && host.is_none_or(|wanted| wanted == *h)
        })
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let mut report = PruneReport {
        dry_run,
        groups: Vec::new(),
        deleted: Vec::new(),
    };
    for (group_host, group) in groups {
        let members: Vec<_> = backups
            .iter()
            .filter(|b| b.manifest.selection == group && b.manifest.host == group_host)
            .collect();
        let candidates: Vec<Candidate> = members
            .iter()
            .map(|b| Candidate {
                id: b.id.clone(),
                time: b.manifest.started_at,
                protected: b.protected(),
            })
            .collect();
        let mut decisions = decide(policy, &candidates, &chrono::Local);
        // Whatever the rules say, the newest backup that verifies stays: the
        // newer ones may be damaged, and then it is the only good one.
        let mut damaged = Vec::new();
        for decision in decisions.iter_mut() {
            cancel.check()?;
            let dir = repo.backup_dir(&decision.id);
            let check = crate::restore::verify::verify(
                &dir,
                crate::restore::verify::Level::Entries,
                cancel,
            )?;
            if check.problems.is_empty() {
                if !dry_run {
                    crate::restore::verify::record_verified(&dir, false);
                }
                decision.keep = true;
                decision.reasons.push("newest backup that verifies".into());
                break;
            }
            damaged.push((decision.id.clone(), check.problems.join("; ")));
        }
        if !dry_run {
            for decision in decisions.iter().filter(|d| !d.keep) {
                cancel.check()?;
                repo.delete(&decision.id)?;
                report.deleted.push(decision.id.clone());
            }
        }
        report.groups.push(GroupReport {
            host: group_host.to_string(),
            selection: group.to_string(),
            decisions,
            damaged,
        });
    }
    Ok(report)
}
