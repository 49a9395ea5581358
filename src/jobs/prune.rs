//! `prune`: applies a retention policy to a repository, one group at a
//! time, never deleting a protected backup or the newest backup that
//! verifies. A group is one stack (selection) from one host: hosts sharing
//! a repository never prune each other's backups.

use crate::cancel::Cancel;
use crate::repo::notes::Note;
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
    /// Format 2: backups that claim this host but do not verify against a
    /// key trusted for it (id, why). Retention neither counts nor deletes
    /// them; `volsnap forget` does, when the operator says so.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unverified: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub groups: Vec<GroupReport>,
    pub deleted: Vec<String>,
    /// Backups retention let go that Object Lock still retains (immutable
    /// repositories): a later prune deletes them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retained: Vec<Retained>,
    /// Format 2: the commit objects retention lets go (deleted, or in a
    /// dry run, that would be).
    #[serde(skip)]
    pub(crate) letting_go: Vec<crate::repo::v2::id::Id>,
}

/// A backup Object Lock keeps until a date.
#[derive(Debug, Serialize)]
pub struct Retained {
    pub id: String,
    pub until: chrono::DateTime<chrono::Utc>,
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
        retained: Vec::new(),
        letting_go: Vec::new(),
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
                    crate::restore::verify::record_verified(
                        &crate::repo::notes::NotesAt::Dir(dir),
                        false,
                    );
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
            unverified: Vec::new(),
        });
    }
    Ok(report)
}

pub use crate::repo::v2::gc::Collected;

/// Applies `policy` to a format-2 repository as [`prune`] does to a
/// format-1 one (per host and selection; the newest backup that verifies
/// always stays), then collects garbage with two marks
/// ([`crate::repo::v2::gc::collect_garbage`]). Every step can be killed and
/// run again.
pub fn prune_chunked(
    repo: &crate::repo::v2::Repository,
    policy: &Policy,
    selection: Option<&str>,
    host: Option<&str>,
    dry_run: bool,
    cancel: &Cancel,
) -> Result<(PruneReport, Collected)> {
    use crate::restore::verify::{verify_chunked, Level};
    if policy.is_empty() {
        return Err(crate::usage!(
            "no keep rule given, which would delete every backup; pass at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly"
        ));
    }
    let commits = repo.commits()?;
    let index = repo.load_index()?;
    // Whose backups these are is decided by signatures this host checks,
    // never by the host name a commit states about itself.
    let verifier = crate::repo::attest::Verifier::for_repository(repo)?;
    if let Some(host) = host {
        let verifies = commits
            .iter()
            .any(|(_, c)| c.host == host && verifier.attribute(c).verified());
        if !verifier.trusts_by_name(host) && !verifies {
            return Err(crate::usage!(
                "this host trusts no key for host {}, so no backup of it can be told from a forgery; trust its key first (on that host: volsnap host show; here: volsnap host trust {} FINGERPRINT). Nothing was deleted",
                crate::text::escape(host),
                crate::text::escape(host)
            ));
        }
    }
    let mut groups: Vec<(String, String)> = commits
        .iter()
        .map(|(_, c)| (c.host.clone(), c.selection.clone()))
        .filter(|(h, s)| {
            selection.is_none_or(|wanted| wanted == s) && host.is_none_or(|wanted| wanted == h)
        })
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let mut report = PruneReport {
        dry_run,
        groups: Vec::new(),
        deleted: Vec::new(),
        retained: Vec::new(),
        letting_go: Vec::new(),
    };
    for (group_host, group) in groups {
        let (members, unverified): (Vec<_>, Vec<_>) = commits
            .iter()
            .filter(|(_, c)| c.selection == group && c.host == group_host)
            .map(|(o, c)| ((o, c), verifier.attribute(c)))
            .partition(|(_, a)| a.verified());
        let members: Vec<(&crate::repo::v2::id::Id, &crate::repo::v2::objects::Commit)> =
            members.into_iter().map(|(m, _)| m).collect();
        let mut unverified: Vec<(String, String)> = unverified
            .into_iter()
            .map(|((_, c), a)| (c.id.clone(), a.describe()))
            .collect();
        // Decisions are about backups, not objects: commit objects that a
        // signature covers alike are one backup (copies of a real commit
        // with another `stored_bytes` would otherwise fill keep-last's
        // slots), kept or deleted together; and never by a claimed id.
        let mut backups: Vec<(
            String,
            Vec<(&crate::repo::v2::id::Id, &crate::repo::v2::objects::Commit)>,
        )> = Vec::new();
        for (object, commit) in members {
            let key = crate::repo::attest::backup_digest(commit)?;
            match backups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, objects)) => objects.push((object, commit)),
                None => backups.push((key, vec![(object, commit)])),
            }
        }
        // A backup counts only if every blob it uses is there: one whose
        // packs were deleted (by a credential with delete rights, say)
        // must not fill a place an intact older backup needs.
        let mut incomplete = Vec::new();
        for (key, objects) in &backups {
            cancel.check()?;
            let missing = crate::repo::v2::gc::missing_blobs(repo, &index, objects[0].1, cancel)?;
            if missing > 0 {
                incomplete.push(key.clone());
                unverified.push((
                    objects[0].1.id.clone(),
                    format!("incomplete: {missing} piece(s) of it are not in the repository"),
                ));
            }
        }
        backups.retain(|(key, _)| !incomplete.contains(key));
        let candidates: Vec<Candidate> = backups
            .iter()
            .map(|(key, objects)| Candidate {
                id: key.clone(),
                time: objects[0].1.started_at,
                protected: objects
                    .iter()
                    .any(|(o, _)| notes_of(repo, o).read(Note::Protected).is_some()),
            })
            .collect();
        let mut decisions = decide(policy, &candidates, &chrono::Local);
        let backup = |d: &Decision| backups.iter().find(|(k, _)| *k == d.id).map(|(_, o)| o);
        let shown = |d: &Decision| {
            backup(d).map_or_else(|| d.id.clone(), |objects| objects[0].1.id.clone())
        };
        let mut damaged = Vec::new();
        for decision in decisions.iter_mut() {
            cancel.check()?;
            let Some(objects) = backup(decision) else {
                continue;
            };
            let (object, commit) = objects[0];
            let check = verify_chunked(repo, commit, Level::Entries, cancel)?;
            if check.problems.is_empty() {
                if !dry_run {
                    crate::restore::verify::record_verified(&notes_of(repo, object), false);
                }
                decision.keep = true;
                decision.reasons.push("newest backup that verifies".into());
                break;
            }
            damaged.push((shown(decision), check.problems.join("; ")));
        }
        for decision in decisions.iter().filter(|d| !d.keep) {
            if let Some(objects) = backup(decision) {
                report.letting_go.extend(objects.iter().map(|(o, _)| **o));
            }
        }
        if !dry_run {
            for decision in decisions.iter().filter(|d| !d.keep) {
                let Some(objects) = backup(decision) else {
                    continue;
                };
                let mut retained = None;
                for (object, _) in objects {
                    cancel.check()?;
                    if let Some(until) = repo.delete_commit(object)? {
                        retained = retained.max(Some(until));
                        continue;
                    }
                    // Notes outlive nothing: gone with their backup.
                    crate::repo::notes::remove_all(repo.backend().as_ref(), object)?;
                }
                if retained.is_none() {
                    crate::repo::attest::remove_attestations(
                        repo.backend().as_ref(),
                        &decision.id,
                    )?;
                }
                match retained {
                    Some(until) => report.retained.push(Retained {
                        id: shown(decision),
                        until,
                    }),
                    None => report.deleted.push(shown(decision)),
                }
            }
        }
        for decision in decisions.iter_mut() {
            decision.id = shown(decision);
        }
        report.groups.push(GroupReport {
            host: group_host,
            selection: group,
            decisions,
            damaged,
            unverified,
        });
    }
    #[cfg(feature = "fault-injection")]
    crate::fault::point("prune-after-retention");
    let collected = if dry_run {
        Collected::default()
    } else {
        crate::repo::v2::gc::collect_garbage(repo, &crate::execute::this_host(), cancel)?
    };
    Ok((report, collected))
}

fn notes_of(
    repo: &crate::repo::v2::Repository,
    object: &crate::repo::v2::id::Id,
) -> crate::repo::notes::NotesAt {
    crate::repo::notes::NotesAt::of_commit(repo, *object)
}

/// Prune of the repository at `root`, whatever its format.
pub fn prune_at(
    root: &std::path::Path,
    policy: &Policy,
    selection: Option<&str>,
    host: Option<&str>,
    dry_run: bool,
    cancel: &Cancel,
) -> Result<(PruneReport, Option<Collected>)> {
    match crate::repo::detect(root) {
        crate::repo::Format::Tar => {
            let repo = Repo::open(root)?;
            if !dry_run {
                repo.check_writable()?;
            }
            Ok((
                prune(&repo, policy, selection, host, dry_run, cancel)?,
                None,
            ))
        }
        crate::repo::Format::Chunked => {
            let repo = crate::repo::open_chunked(root)?;
            let (report, collected) =
                prune_chunked(&repo, policy, selection, host, dry_run, cancel)?;
            Ok((report, Some(collected)))
        }
    }
}

/// One rule of a [`preview_at`]: a policy over the groups it names.
pub struct PreviewRule {
    pub policy: Policy,
    pub selection: Option<String>,
    pub host: Option<String>,
}

/// What prune would do under some rules, and about how many bytes it
/// would free (what only the backups it deletes use; the packs holding
/// them go or are rewritten by garbage collection). Nothing is written.
pub struct Preview {
    pub reports: Vec<PruneReport>,
    pub bytes_freed: u64,
}

/// A dry run of every rule on the repository at `root`, then the bytes
/// the backups they let go hold alone.
pub fn preview_at(
    root: &std::path::Path,
    rules: &[PreviewRule],
    cancel: &Cancel,
) -> Result<Preview> {
    let mut reports = Vec::new();
    for rule in rules {
        let (report, _) = prune_at(
            root,
            &rule.policy,
            rule.selection.as_deref(),
            rule.host.as_deref(),
            true,
            cancel,
        )?;
        reports.push(report);
    }
    let bytes_freed = match crate::repo::detect(root) {
        crate::repo::Format::Chunked => {
            let going = reports
                .iter()
                .flat_map(|r| r.letting_go.iter().copied())
                .collect();
            let repo = crate::repo::open_chunked(root)?;
            crate::repo::v2::gc::bytes_only_used_by(&repo, &going, cancel)?
        }
        crate::repo::Format::Tar => {
            let going: std::collections::HashSet<&str> = reports
                .iter()
                .flat_map(|r| &r.groups)
                .flat_map(|g| &g.decisions)
                .filter(|d| !d.keep)
                .map(|d| d.id.as_str())
                .collect();
            let (backups, _) = Repo::open(root)?.list()?;
            backups
                .iter()
                .filter(|b| going.contains(b.id.as_str()))
                .fold(0u64, |sum, b| sum.saturating_add(b.manifest.bytes_stored()))
        }
    };
    Ok(Preview {
        reports,
        bytes_freed,
    })
}

/// `volsnap forget`: deletes one backup, named by the operator (its id, or
/// in format 2 its commit object id; an id two commits claim is refused).
/// A protected backup stays until its protection is lifted.
pub fn forget(root: &std::path::Path, id: &str) -> Result<String> {
    let shown = crate::text::escape(id);
    match crate::repo::detect(root) {
        crate::repo::Format::Tar => {
            let repo = Repo::open(root)?;
            let (found, dir) = repo.resolve(id)?;
            if dir.join(Note::Protected.file()).exists() {
                return Err(crate::usage!(
                    "backup {shown} is protected; lift it first with volsnap protect --repo {} {shown} --remove",
                    root.display()
                ));
            }
            repo.delete(&found)?;
            Ok(format!("forgot backup {found}"))
        }
        crate::repo::Format::Chunked => {
            let repo = crate::repo::open_chunked(root)?;
            let scope = crate::repo::Scope {
                host: crate::execute::this_host(),
                selection: None,
            };
            let (object, commit) = crate::repo::resolve_chunked(&repo, id, &scope)?;
            if notes_of(&repo, &object).read(Note::Protected).is_some() {
                return Err(crate::usage!(
                    "backup {shown} is protected; lift it first with volsnap protect --repo {} {} --remove",
                    root.display(),
                    object.hex()
                ));
            }
            if let Some(until) = repo.delete_commit(&object)? {
                return Ok(format!(
                    "backup {} stays: Object Lock retains it until {}",
                    crate::text::escape(&commit.id),
                    until.format("%Y-%m-%d %H:%M UTC")
                ));
            }
            crate::repo::notes::remove_all(repo.backend().as_ref(), &object)?;
            let digest = crate::repo::attest::backup_digest(&commit)?;
            let twins = repo
                .commits_unchecked()?
                .into_iter()
                .any(|(_, c)| crate::repo::attest::backup_digest(&c).is_ok_and(|d| d == digest));
            if !twins {
                crate::repo::attest::remove_attestations(repo.backend().as_ref(), &digest)?;
            }
            Ok(format!(
                "forgot backup {} (commit object {}); the next prune collects the data only it used",
                crate::text::escape(&commit.id),
                object.hex()
            ))
        }
    }
}
