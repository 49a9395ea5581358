//! The configuration file: named jobs (what to back up, where, how, when,
//! what to keep, which hooks, whom to tell), in TOML.
//!
//! Loading checks everything that can be checked without touching the
//! host (selection, schedules, sizes, hook and retention settings) and
//! reports each problem with its line, so `volsnap config check` can be
//! trusted before the daemon runs the file at 3 a.m.

use crate::plan::{Quiesce, RequestedStrategy};
use crate::repo::manifest::Compression;
use crate::repo::retention::Policy;
use anyhow::Result;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "/etc/volsnap/volsnap.toml";

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where every run appends its JSON line (default: STATE_DIR/runs.jsonl).
    pub run_log: Option<PathBuf>,
    /// A Prometheus textfile-collector file rewritten after every run.
    pub metrics_file: Option<PathBuf>,
    /// Keys trusted per host name, beside `volsnap host trust`: a host
    /// name → the fingerprints whose backups count as that host's in this
    /// file's runs (docs/FORMAT.md, "Attribution").
    #[serde(default)]
    pub trust: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub jobs: BTreeMap<String, Job>,
}

/// One named job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub project: Option<String>,
    #[serde(default)]
    pub containers: Vec<String>,
    pub label: Option<String>,
    pub repo: PathBuf,
    #[serde(default)]
    pub strategy: RequestedStrategy,
    #[serde(default)]
    pub quiesce: Quiesce,
    pub max_downtime: Option<u64>,
    #[serde(default)]
    pub require_consistent: bool,
    /// Seconds each container gets to stop (default: its own stop timeout,
    /// compose's stop_grace_period; else 30).
    pub stop_timeout: Option<u32>,
    pub ready_timeout: Option<u32>,
    pub snapshot_size: Option<String>,
    #[serde(default)]
    pub compression: Compression,
    pub level: Option<i32>,
    pub threads: Option<u32>,
    pub bwlimit: Option<String>,
    /// Upload cap to a server repository, e.g. "20M".
    pub upload_limit: Option<String>,
    /// Encrypted repository: its write key file (default: the state
    /// directory's keys/<key id>.key, where volsnap init writes it).
    pub write_key: Option<PathBuf>,
    /// Encrypted repository: an age identity file, for drills and deep
    /// verification (leave it out on hosts that must not read backups).
    pub identity: Option<PathBuf>,
    /// Passphrase repository: the file holding its passphrase.
    pub passphrase_file: Option<PathBuf>,
    #[serde(default)]
    pub io_nice: bool,
    /// Cron expression in local time: 5 fields, or 6 with seconds first.
    pub schedule: Option<String>,
    /// Check the new backup's checksums right after writing it.
    #[serde(default = "yes")]
    pub verify: bool,
    pub retention: Option<Policy>,
    #[serde(default)]
    pub hooks: HostHooks,
    #[serde(default)]
    pub notify: Notify,
    pub drill: Option<Drill>,
    /// Repositories every new backup is copied into once it is written
    /// (and verified, when `verify`), each made with `volsnap init --like
    /// REPO`; the job's retention applies to them too. A failed copy fails
    /// the run.
    #[serde(default)]
    pub copy_to: Vec<PathBuf>,
    /// Exclude patterns for every volume (as backup --exclude).
    #[serde(default)]
    pub exclude: Vec<String>,
}

fn yes() -> bool {
    true
}

/// Shell commands run on the host around a job.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostHooks {
    /// Before the backup; a failure cancels it (post and on_failure still run).
    pub pre: Option<String>,
    /// After the backup, whatever happened (VOLSNAP_STATUS says what).
    pub post: Option<String>,
    /// After a failed run.
    pub on_failure: Option<String>,
    /// Seconds each hook may run (default 300).
    pub timeout: Option<u64>,
}

/// Who hears about a run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// URL that receives the run record as a JSON POST.
    pub webhook: Option<String>,
    /// Shell command that receives the run record as JSON on stdin.
    pub command: Option<String>,
    /// Also notify successful runs (default: failures only).
    #[serde(default)]
    pub on_success: bool,
}

/// Recovery drill settings of a job.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drill {
    /// When the daemon runs a drill of the newest backup (cron, local time).
    pub schedule: Option<String>,
    /// SERVICE = command run inside the drill copy of SERVICE; exit 0 is healthy.
    #[serde(default)]
    pub checks: BTreeMap<String, String>,
    /// Commands run on the host against the copies (`VOLSNAP_DRILL_<SERVICE>`
    /// holds each copy's address); exit 0 is healthy.
    #[serde(default)]
    pub host_checks: Vec<String>,
    /// Copies run on the images the backup was taken with, while they are
    /// on this host (see `drill --recorded-images`).
    #[serde(default)]
    pub recorded_images: bool,
    /// Seconds to wait for every container to be healthy (default 300).
    pub timeout: Option<u64>,
}

pub const DEFAULT_HOOK_TIMEOUT_SECS: u64 = 300;
pub const DEFAULT_DRILL_TIMEOUT_SECS: u64 = 300;

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                crate::usage!(
                    "no configuration file at {}; write one (see 'volsnap config --help') or pass --config FILE",
                    path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("cannot read {}", path.display()))
            }
        })?;
        let config = Config::parse(&text).map_err(|problems| {
            crate::usage!(
                "{} has {} problem(s):\n{}",
                path.display(),
                problems.len(),
                problems.join("\n")
            )
        })?;
        // Every run of this file believes the keys it trusts.
        crate::repo::attest::set_configured_trust(&config.trust);
        Ok(config)
    }

    /// Parses and checks the text of a configuration file; every problem
    /// found, each as "line N: …", in line order.
    pub fn parse(text: &str) -> std::result::Result<Config, Vec<String>> {
        let (config, mut problems) = parse_all(text);
        let mut config = config.unwrap_or_else(|| Config {
            run_log: None,
            metrics_file: None,
            trust: BTreeMap::new(),
            jobs: BTreeMap::new(),
        });
        for (host, keys) in config.trust.iter_mut() {
            let line = line_of(text, host);
            if host.is_empty() || host.chars().any(char::is_control) {
                problems.push((line, format!("trust: {host:?} is not a host name")));
            }
            for key in keys.iter_mut() {
                match crate::repo::attest::parse_fingerprint(key) {
                    Ok(parsed) => *key = parsed,
                    Err(e) => problems.push((line_of(text, key), format!("trust.{host}: {e:#}"))),
                }
            }
        }
        if config.jobs.is_empty() && problems.is_empty() {
            problems.push((1, "no job defined; add a [jobs.NAME] table".to_string()));
        }
        for (name, job) in &config.jobs {
            for problem in job.problems(name) {
                let line = job_line(text, name, problem.key);
                problems.push((line, format!("job {name}: {}", problem.text)));
            }
        }
        if problems.is_empty() {
            return Ok(config);
        }
        problems.sort_by_key(|(line, _)| *line);
        problems.dedup();
        Err(problems
            .into_iter()
            .map(|(line, text)| format!("line {line}: {text}"))
            .collect())
    }

    /// A job by name, or a usage error listing the jobs there are.
    pub fn job(&self, name: &str) -> Result<&Job> {
        self.jobs.get(name).ok_or_else(|| {
            crate::usage!(
                "no job {name:?} in the configuration; jobs: {}",
                self.jobs.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    pub fn run_log(&self, state_dir: &Path) -> PathBuf {
        self.run_log
            .clone()
            .unwrap_or_else(|| state_dir.join("runs.jsonl"))
    }
}

/// The first line of `text` that mentions `needle` (1 if none does).
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map_or(1, |n| n + 1)
}

struct Problem {
    /// The key the problem is about (its line is reported), or "" for the job.
    key: &'static str,
    text: String,
}

impl Job {
    fn problems(&self, name: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |key, text: String| out.push(Problem { key, text });
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            problem(
                "",
                "a job name may hold letters, digits, '-', '_' and '.' only".into(),
            );
        }
        let selections = usize::from(self.project.is_some())
            + usize::from(!self.containers.is_empty())
            + usize::from(self.label.is_some());
        if selections != 1 {
            problem(
                "",
                "say what to back up with exactly one of project, containers, label".into(),
            );
        }
        if let Some(label) = &self.label {
            if !label.contains('=') {
                problem("label", format!("label takes \"KEY=VALUE\", not {label:?}"));
            }
        }
        for (key, repo) in
            std::iter::once(("repo", &self.repo)).chain(self.copy_to.iter().map(|r| ("copy_to", r)))
        {
            match crate::backend::Location::parse(repo) {
                Err(e) => problem(key, format!("{key}: {e}")),
                Ok(crate::backend::Location::Local(_)) if !repo.is_absolute() => problem(
                    key,
                    format!(
                        "{key} must be an absolute path, s3://BUCKET/PREFIX or sftp://USER@HOST/PATH, not {repo:?}"
                    ),
                ),
                Ok(_) => {}
            }
        }
        if self.copy_to.contains(&self.repo) {
            problem(
                "copy_to",
                "copy_to names the job's own repo; name other repositories (made with volsnap init --like REPO)".into(),
            );
        }
        for (key, file) in [
            ("write_key", &self.write_key),
            ("identity", &self.identity),
            ("passphrase_file", &self.passphrase_file),
        ] {
            if file.as_ref().is_some_and(|f| !f.is_absolute()) {
                problem(key, format!("{key} must be an absolute path"));
            }
        }
        if self.passphrase_file.is_some() && (self.write_key.is_some() || self.identity.is_some()) {
            problem(
                "passphrase_file",
                "passphrase_file is the one key of a passphrase repository; leave out write_key and identity".into(),
            );
        }
        for (key, size) in [
            ("bwlimit", &self.bwlimit),
            ("upload_limit", &self.upload_limit),
            ("snapshot_size", &self.snapshot_size),
        ] {
            if let Some(Err(e)) = size.as_deref().map(crate::fsutil::parse_size) {
                problem(key, format!("{key}: {e}"));
            }
        }
        if let Some(level) = self.level {
            let range = if self.compression == Compression::Gzip {
                1..=9
            } else {
                1..=19
            };
            if !range.contains(&level) {
                problem(
                    "level",
                    format!(
                        "level {level} is out of range {range:?} for {:?}",
                        self.compression
                    ),
                );
            }
        }
        if let Err(e) = crate::archive::Exclude::new(&self.exclude) {
            problem("exclude", format!("{e:#}"));
        }
        if let Some(schedule) = &self.schedule {
            if let Err(e) = parse_schedule(schedule) {
                problem("schedule", e);
            }
        }
        if let Some(drill) = &self.drill {
            if let Some(Err(e)) = drill.schedule.as_deref().map(parse_schedule) {
                problem("schedule", format!("drill {e}"));
            }
        }
        if let Some(policy) = &self.retention {
            if policy.is_empty() {
                problem(
                    "retention",
                    "retention keeps nothing; set keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly or keep_yearly".into(),
                );
            }
        }
        if let Some(url) = &self.notify.webhook {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problem(
                    "webhook",
                    format!("webhook must be an http:// or https:// URL, not {url:?}"),
                );
            }
        }
        out
    }

    /// The selection as `backup` takes it.
    pub fn selection(&self) -> crate::discovery::Selection {
        use crate::discovery::Selection;
        if let Some(project) = &self.project {
            Selection::Project(project.clone())
        } else if let Some((key, value)) = self.label.as_deref().and_then(|l| l.split_once('=')) {
            Selection::Label(key.to_string(), value.to_string())
        } else {
            Selection::Containers(self.containers.clone())
        }
    }

    pub fn hook_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.hooks.timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT_SECS))
    }
}

/// A cron expression: 5 fields (minute first) or 6 (seconds first).
pub fn parse_schedule(expression: &str) -> std::result::Result<croner::Cron, String> {
    croner::Cron::new(expression)
        .with_seconds_optional()
        .parse()
        .map_err(|e| {
            format!("schedule {expression:?} is not a cron expression ({e}); example: \"0 3 * * *\" is 03:00 every day")
        })
}

/// The 1-based line holding byte `offset`.
/// Deserializes the file, collecting every syntax and type error rather
/// than the first: each error's span (toml reports where it is) is blanked
/// out line by line, keeping every other line where it was, and the file is
/// read again. A table whose header is at fault goes with all its keys, so
/// they cannot fall into the table before it. The config is what remains
/// (`None` when nothing could be read, as after a syntax error).
fn parse_all(text: &str) -> (Option<Config>, Vec<(usize, String)>) {
    let mut text = text.to_string();
    let mut problems = Vec::new();
    // Each round blanks at least one line; the bound only guards the loop.
    for _ in 0..=text.lines().count() {
        let error = match toml::from_str::<Config>(&text) {
            Ok(config) => return (Some(config), problems),
            Err(e) => e,
        };
        let Some(span) = error.span() else {
            problems.push((1, error.message().to_string()));
            return (None, problems);
        };
        problems.push((line_at(&text, span.start), error.message().to_string()));
        let syntax = toml::from_str::<toml::Table>(&text).is_err();
        if syntax || !blank(&mut text, span) {
            return (None, problems);
        }
    }
    (None, problems)
}

/// Replaces the lines `span` touches with spaces (a table header's whole
/// table). False when nothing was left to blank.
fn blank(text: &mut String, span: std::ops::Range<usize>) -> bool {
    let start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let mut end = text[span.end.min(text.len())..]
        .find('\n')
        .map_or(text.len(), |i| span.end + i);
    if text[start..].trim_start().starts_with('[') {
        // Up to the next table header.
        let mut offset = end;
        while offset < text.len() {
            let line_end = text[offset + 1..]
                .find('\n')
                .map_or(text.len(), |i| offset + 1 + i);
            if text[offset + 1..line_end].trim_start().starts_with('[') {
                break;
            }
            end = line_end;
            offset = line_end;
        }
    }
    if text[start..end].trim().is_empty() {
        return false;
    }
    let blanked: String = text[start..end]
        .chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect();
    text.replace_range(start..end, &blanked);
    true
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line of `key` within job `name`'s tables, else of the job's header,
/// else 1. A plain scan: good enough to point a person at the right place.
fn job_line(text: &str, name: &str, key: &str) -> usize {
    let header = format!("[jobs.{name}");
    let mut in_job = false;
    let mut job_header = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            in_job =
                trimmed.starts_with(&header) && trimmed[header.len()..].starts_with([']', '.']);
            if in_job && job_header.is_none() {
                job_header = Some(i + 1);
            }
            continue;
        }
        if in_job && !key.is_empty() {
            let is_key = trimmed
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='));
            if is_key {
                return i + 1;
            }
        }
    }
    job_header.unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
metrics_file = "/var/lib/node_exporter/volsnap.prom"

[jobs.milvus]
project = "milvus"
repo = "/backups/milvus"
strategy = "cold"
schedule = "0 3 * * *"
bwlimit = "50M"

[jobs.milvus.retention]
keep_daily = 7
keep_weekly = 4

[jobs.milvus.hooks]
post = "logger volsnap done"
"#;

    #[test]
    fn a_good_file_parses() {
        let config = Config::parse(GOOD).unwrap();
        let job = config.job("milvus").unwrap();
        assert_eq!(job.strategy, RequestedStrategy::Cold);
        assert_eq!(job.retention.as_ref().unwrap().keep_daily, 7);
        assert!(job.verify);
        assert!(config.job("nope").is_err());
    }

    #[test]
    fn type_errors_unknown_keys_and_checks_come_in_one_run() {
        let bad = format!(
            "{GOOD}\n[jobs.other]\nproject = \"x\"\nrepo = \"/r\"\nmax_downtime = \"ten\"\nstrategy = \"freezing\"\nretain = 3\nbwlimit = \"fast\"\n\n[jobs.third]\nproject = \"y\"\nrepo = \"relative\"\n"
        )
        .replace("keep_weekly = 4", "keep_weekly = \"four\"");
        let problems = Config::parse(&bad).unwrap_err();
        let lines: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap())
            .collect();
        assert_eq!(
            lines,
            ["line 13", "line 21", "line 22", "line 23", "line 24", "line 28"],
            "{problems:#?}"
        );
        assert!(problems[0].contains("invalid type"), "{problems:?}");
        assert!(
            problems[2].contains("unknown variant `freezing`"),
            "{problems:?}"
        );
        assert!(
            problems[3].contains("unknown field `retain`"),
            "{problems:?}"
        );
        assert!(problems[4].contains("job other: bwlimit"), "{problems:?}");
        assert!(problems[5].contains("job third: repo"), "{problems:?}");

        let syntax = format!("{GOOD}\n[jobs.broken\nrepo = 1\n");
        let problems = Config::parse(&syntax).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("line 18"), "{problems:?}");
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let bad = GOOD
            .replace("schedule = \"0 3 * * *\"", "schedule = \"every night\"")
            .replace("bwlimit = \"50M\"", "bwlimit = \"fast\"");
        let problems = Config::parse(&bad).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("line 8: job milvus: schedule"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("line 9: job milvus: bwlimit"),
            "{problems:?}"
        );

        let typo = GOOD.replace("keep_weekly", "keep_weakly");
        let problems = Config::parse(&typo).unwrap_err();
        assert!(
            problems[0].starts_with("line 13: unknown field `keep_weakly`"),
            "{problems:?}"
        );

        let two = GOOD.replace(
            "project = \"milvus\"",
            "project = \"milvus\"\nlabel = \"a=b\"",
        );
        let problems = Config::parse(&two).unwrap_err();
        assert!(
            problems[0].contains("line 4: job milvus: say what to back up"),
            "{problems:?}"
        );

        // Server repositories pass; a bad address and a relative path do not.
        let remote = GOOD.replace(
            "repo = \"/backups/milvus\"",
            "repo = \"s3://backups/milvus?region=eu-west-1\"\nupload_limit = \"20M\"",
        );
        assert!(Config::parse(&remote).is_ok());
        for bad in ["s3://Bad_Bucket/x", "backups/milvus", "s3://b/x?secret=abc"] {
            let config = GOOD.replace("/backups/milvus", bad);
            let problems = Config::parse(&config).unwrap_err();
            assert!(
                problems[0].starts_with("line 6: job milvus: repo"),
                "{bad}: {problems:?}"
            );
            assert!(!problems[0].contains("abc"), "{problems:?}");
        }

        let strategy = GOOD.replace("\"cold\"", "\"freezing\"");
        let problems = Config::parse(&strategy).unwrap_err();
        assert!(
            problems[0].starts_with("line 7: unknown variant `freezing`"),
            "{problems:?}"
        );
    }
}
