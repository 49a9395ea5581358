//! The run log: one JSON line per job run (backup or drill), appended and
//! fsynced, read by `status` and turned into Prometheus metrics.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    Backup,
    Drill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Success,
    Failed,
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunStatus::Success => "success",
            RunStatus::Failed => "failed",
        })
    }
}

/// One run of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub job: String,
    pub kind: RunKind,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    #[serde(default)]
    pub downtime_ms: u64,
    /// What the plan expected the downtime to be (compare with the above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_downtime_ms: Option<u64>,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub archive_bytes: u64,
    /// Backups deleted by the job's retention after this run.
    #[serde(default)]
    pub pruned: usize,
    /// Their ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned_ids: Vec<String>,
    /// The `copy_to` repositories the new backup reached, and the bytes
    /// sent to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copied_to: Vec<String>,
    #[serde(default)]
    pub copy_bytes: u64,
    /// Drills: time to restore, and from start to every check healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_ms: Option<u64>,
    /// What went wrong (failed runs) or what needs attention.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl RunRecord {
    /// A run starting now, failed until it says otherwise.
    pub fn start(job: &str, kind: RunKind) -> RunRecord {
        let now = Utc::now();
        RunRecord {
            job: job.to_string(),
            kind,
            status: RunStatus::Failed,
            started_at: now,
            finished_at: now,
            duration_ms: 0,
            backup_id: None,
            strategy: None,
            consistency: None,
            downtime_ms: 0,
            estimated_downtime_ms: None,
            pruned_ids: Vec::new(),
            bytes: 0,
            archive_bytes: 0,
            pruned: 0,
            copied_to: Vec::new(),
            copy_bytes: 0,
            restore_ms: None,
            healthy_ms: None,
            problems: Vec::new(),
        }
    }
}

/// Appends one record (the file and its directory are created private).
pub fn append(path: &Path, record: &RunRecord) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut line = serde_json::to_vec(record)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open the run log {}", path.display()))?;
    file.write_all(&line)
        .and_then(|_| file.sync_data())
        .with_context(|| format!("cannot write the run log {}", path.display()))
}

/// Every record in the log, oldest first; torn or foreign lines are skipped.
pub fn read(path: &Path) -> Result<Vec<RunRecord>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read the run log {}", path.display())),
    }
}

/// What `status` and the metrics say about one job.
#[derive(Debug, Default, Serialize)]
pub struct JobSummary {
    pub job: String,
    pub last_success: Option<RunRecord>,
    pub last_failure: Option<RunRecord>,
    pub last_run: Option<RunRecord>,
    pub last_drill: Option<RunRecord>,
}

pub fn summarize(job: &str, records: &[RunRecord]) -> JobSummary {
    let mut summary = JobSummary {
        job: job.to_string(),
        ..JobSummary::default()
    };
    for r in records.iter().filter(|r| r.job == job) {
        match (r.kind, r.status) {
            (RunKind::Drill, _) => summary.last_drill = Some(r.clone()),
            (RunKind::Backup, status) => {
                summary.last_run = Some(r.clone());
                if status == RunStatus::Success {
                    summary.last_success = Some(r.clone());
                } else {
                    summary.last_failure = Some(r.clone());
                }
            }
        }
    }
    summary
}

/// Prometheus text exposition of the summaries (for the node exporter's
/// textfile collector). `newest_verified` is the time of each job's newest
/// verified backup, when there is one.
pub fn render_metrics(
    summaries: &[JobSummary],
    newest_verified: &[(String, Option<DateTime<Utc>>)],
) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, values: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (job, value) in values {
            out.push_str(&format!("{name}{{job=\"{}\"}} {value}\n", escape(&job)));
        }
    };
    let per_job = |f: &dyn Fn(&JobSummary) -> Option<f64>| -> Vec<(String, f64)> {
        summaries
            .iter()
            .filter_map(|s| f(s).map(|v| (s.job.clone(), v)))
            .collect()
    };
    let seconds = |t: &DateTime<Utc>| t.timestamp_millis() as f64 / 1000.0;
    metric(
        "volsnap_last_success_timestamp_seconds",
        "When the job's last successful backup finished.",
        per_job(&|s| s.last_success.as_ref().map(|r| seconds(&r.finished_at))),
    );
    metric(
        "volsnap_last_run_success",
        "1 when the job's last backup run succeeded, else 0.",
        per_job(&|s| {
            s.last_run
                .as_ref()
                .map(|r| f64::from(u8::from(r.status == RunStatus::Success)))
        }),
    );
    metric(
        "volsnap_last_run_duration_seconds",
        "Duration of the job's last backup run.",
        per_job(&|s| s.last_run.as_ref().map(|r| r.duration_ms as f64 / 1000.0)),
    );
    metric(
        "volsnap_last_downtime_seconds",
        "Service downtime of the job's last successful backup.",
        per_job(&|s| {
            s.last_success
                .as_ref()
                .map(|r| r.downtime_ms as f64 / 1000.0)
        }),
    );
    metric(
        "volsnap_last_backup_bytes",
        "Data bytes in the job's last successful backup.",
        per_job(&|s| s.last_success.as_ref().map(|r| r.bytes as f64)),
    );
    metric(
        "volsnap_last_archive_bytes",
        "Archive bytes of the job's last successful backup.",
        per_job(&|s| s.last_success.as_ref().map(|r| r.archive_bytes as f64)),
    );
    metric(
        "volsnap_last_backup_consistent",
        "1 when the job's last successful backup is application-consistent.",
        per_job(&|s| {
            s.last_success
                .as_ref()
                .map(|r| f64::from(u8::from(r.consistency.as_deref() == Some("consistent"))))
        }),
    );
    metric(
        "volsnap_last_copy_bytes",
        "Bytes the job's last successful backup sent to its copy_to repositories.",
        per_job(&|s| {
            s.last_success
                .as_ref()
                .filter(|r| !r.copied_to.is_empty())
                .map(|r| r.copy_bytes as f64)
        }),
    );
    metric(
        "volsnap_newest_verified_backup_timestamp_seconds",
        "When the job's newest verified backup was taken.",
        newest_verified
            .iter()
            .filter_map(|(job, t)| t.as_ref().map(|t| (job.clone(), seconds(t))))
            .collect(),
    );
    metric(
        "volsnap_last_drill_success",
        "1 when the job's last recovery drill passed, else 0.",
        per_job(&|s| {
            s.last_drill
                .as_ref()
                .map(|r| f64::from(u8::from(r.status == RunStatus::Success)))
        }),
    );
    metric(
        "volsnap_last_drill_timestamp_seconds",
        "When the job's last recovery drill finished.",
        per_job(&|s| s.last_drill.as_ref().map(|r| seconds(&r.finished_at))),
    );
    metric(
        "volsnap_last_drill_healthy_seconds",
        "Restore plus time-to-healthy of the last passing drill (the recovery time achieved).",
        per_job(&|s| {
            s.last_drill
                .as_ref()
                .filter(|r| r.status == RunStatus::Success)
                .map(|r| (r.restore_ms.unwrap_or(0) + r.healthy_ms.unwrap_or(0)) as f64 / 1000.0)
        }),
    );
    out
}

/// The newest backup of one host and stack in a repository.
#[derive(Debug, Clone, Serialize)]
pub struct HostNewest {
    pub host: String,
    pub selection: String,
    pub id: String,
    pub completed_at: DateTime<Utc>,
}

/// Per job, the newest backup of every host and stack in its repository.
pub fn render_fleet_metrics(fleets: &[(String, Vec<HostNewest>)]) -> String {
    let name = "volsnap_repository_newest_backup_timestamp_seconds";
    let mut out = format!(
        "# HELP {name} When the newest backup of each host and stack in the job's repository completed.\n# TYPE {name} gauge\n"
    );
    for (job, newest) in fleets {
        for n in newest {
            out.push_str(&format!(
                "{name}{{job=\"{}\",host=\"{}\",selection=\"{}\"}} {}\n",
                escape(job),
                escape(&n.host),
                escape(&n.selection),
                n.completed_at.timestamp_millis() as f64 / 1000.0
            ));
        }
    }
    out
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
