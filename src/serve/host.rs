//! This host's own record, beside what repositories say: its jobs (the
//! configuration file) and their run log. Both are the host's files, not a
//! repository's, and are only read.

use crate::jobs::config::{Config, Job};
use crate::jobs::runlog::{self, RunRecord};
use crate::repo::retention::Policy;
use std::path::{Path, PathBuf};

/// Runs shown on the jobs page, newest first.
pub(crate) const RUNS_SHOWN: usize = 200;

pub(crate) struct HostRecord {
    pub config_path: PathBuf,
    /// Why the configuration was not read, when it was not (a missing file
    /// is no problem: this host has no jobs).
    pub config_problem: Option<String>,
    pub jobs: Vec<(String, Job)>,
    pub run_log: PathBuf,
    /// Oldest first.
    pub runs: Vec<RunRecord>,
}

impl HostRecord {
    pub(crate) fn load(config_path: &Path, state_dir: &Path) -> HostRecord {
        let (config, config_problem) = if config_path.exists() {
            match Config::load(config_path) {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            }
        } else {
            (None, None)
        };
        let run_log = config
            .as_ref()
            .map_or_else(|| state_dir.join("runs.jsonl"), |c| c.run_log(state_dir));
        let (runs, config_problem) = match runlog::read(&run_log) {
            Ok(runs) => (runs, config_problem),
            Err(e) => (Vec::new(), config_problem.or(Some(format!("{e:#}")))),
        };
        HostRecord {
            config_path: config_path.to_path_buf(),
            config_problem,
            jobs: config
                .map(|c| c.jobs.into_iter().collect())
                .unwrap_or_default(),
            run_log,
            runs,
        }
    }

    /// The jobs that back up into the repository at `root`.
    pub(crate) fn jobs_into<'h>(
        &'h self,
        root: &'h Path,
    ) -> impl Iterator<Item = &'h (String, Job)> {
        self.jobs
            .iter()
            .filter(move |(_, job)| same_repository(&job.repo, root))
    }

    /// The schedule of this host's job backing up `selection` into `root`.
    pub(crate) fn schedule_of(
        &self,
        root: &Path,
        selection: &str,
    ) -> Option<(String, croner::Cron)> {
        self.jobs_into(root)
            .filter(|(_, job)| job.selection().to_string() == selection)
            .find_map(|(_, job)| {
                let text = job.schedule.clone()?;
                let cron = crate::jobs::config::parse_schedule(&text).ok()?;
                Some((text, cron))
            })
    }

    /// Each job's retention over its own stack in `root` (the first job's,
    /// when two jobs back up one stack there).
    pub(crate) fn retention_into(&self, root: &Path) -> Vec<(String, Policy)> {
        let mut rules: Vec<(String, Policy)> = Vec::new();
        for (_, job) in self.jobs_into(root) {
            let selection = job.selection().to_string();
            if let Some(policy) = &job.retention {
                if !rules.iter().any(|(s, _)| *s == selection) {
                    rules.push((selection, policy.clone()));
                }
            }
        }
        rules
    }

    /// The runs of job `name`, newest first.
    pub(crate) fn runs_of<'h>(&'h self, name: &'h str) -> impl Iterator<Item = &'h RunRecord> {
        self.runs.iter().rev().filter(move |r| r.job == name)
    }
}

/// Whether two repository locations are the same repository: servers by
/// their text, directories by where they resolve.
fn same_repository(a: &Path, b: &Path) -> bool {
    if crate::backend::is_remote(a) || crate::backend::is_remote(b) {
        let text = |p: &Path| p.to_string_lossy().trim_end_matches('/').to_string();
        return text(a) == text(b);
    }
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    real(a) == real(b)
}

/// A policy as its flags: "--keep-last 3 --keep-daily 7".
pub(crate) fn describe_policy(policy: &Policy) -> String {
    [
        ("last", policy.keep_last),
        ("hourly", policy.keep_hourly),
        ("daily", policy.keep_daily),
        ("weekly", policy.keep_weekly),
        ("monthly", policy.keep_monthly),
        ("yearly", policy.keep_yearly),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(rule, n)| format!("--keep-{rule} {n}"))
    .collect::<Vec<_>>()
    .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_reads_as_its_flags() {
        let policy = Policy {
            keep_last: 3,
            keep_daily: 7,
            ..Policy::default()
        };
        assert_eq!(describe_policy(&policy), "--keep-last 3 --keep-daily 7");
    }

    #[test]
    fn repositories_are_compared_by_where_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        assert!(same_repository(&repo, &dir.path().join("./repo/")));
        assert!(!same_repository(&repo, dir.path()));
        assert!(same_repository(
            Path::new("s3://b/p/"),
            Path::new("s3://b/p")
        ));
        assert!(!same_repository(
            Path::new("s3://b/p"),
            Path::new("s3://b/q")
        ));
    }
}
