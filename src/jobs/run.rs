//! Configured jobs, run once: host `pre` hook → backup (container hooks
//! inside it) → verification of the new backup → retention → host `post`
//! hook (always) → host `on_failure` hook (when anything failed) → run log
//! → metrics → notifications. `volsnap run` and the daemon call [`run_job`];
//! drills end the same way ([`finish`]).

use super::backup::{self, BackupRequest};
use super::config::{Config, Job};
use super::notify::{post_webhook, redact, run_shell};
use super::runlog::{self, RunKind, RunRecord, RunStatus};
use super::RunContext;
use crate::archive::ArchiveOptions;
use anyhow::Result;
use chrono::{DateTime, Utc};
use std::path::Path;
use std::time::Instant;

/// The backup a job stands for.
pub fn backup_request(job: &Job) -> Result<BackupRequest> {
    let size = |s: &Option<String>| -> Result<Option<u64>> {
        s.as_deref()
            .map(crate::fsutil::parse_size)
            .transpose()
            .map_err(|e| crate::usage!("{e}"))
    };
    let mut archive = ArchiveOptions::new(job.compression, job.level)?;
    if let Some(threads) = job.threads {
        archive.threads = threads;
    }
    archive.bwlimit = size(&job.bwlimit)?;
    Ok(BackupRequest {
        selection: job.selection(),
        repo: crate::backend::location::with_upload_limit(&job.repo, size(&job.upload_limit)?)?,
        plan: crate::plan::PlanOptions {
            strategy: job.strategy,
            quiesce: job.quiesce,
            max_downtime: job.max_downtime.map(std::time::Duration::from_secs),
            require_consistent: job.require_consistent,
            stop_timeout_secs: job.stop_timeout,
            ready_timeout_secs: job.ready_timeout.unwrap_or(120),
            history: Vec::new(),
        },
        snapshot_size: size(&job.snapshot_size)?,
        archive,
        io_nice: job.io_nice,
        skip_space_check: false,
        host: crate::execute::this_host(),
        force_read: false,
        exclude: job.exclude.clone(),
    })
}

/// Tells the repository layer which keys this job's repository opens with
/// (its own settings over the command line's).
pub fn register_keys(job: &Job, state_dir: &Path) {
    let sources = crate::repo::keys::KeySources {
        identity: job.identity.clone(),
        write_key: job.write_key.clone(),
        passphrase: job.passphrase_file.clone(),
        key_dir: Some(crate::repo::keys::key_dir(state_dir)),
    };
    crate::repo::keys::set_for_repo(&job.repo, sources.clone());
    for copy in &job.copy_to {
        crate::repo::keys::set_for_repo(copy, sources.clone());
    }
    let limited = job
        .upload_limit
        .as_deref()
        .and_then(|s| crate::fsutil::parse_size(s).ok())
        .and_then(|n| crate::backend::location::with_upload_limit(&job.repo, Some(n)).ok());
    if let Some(limited) = limited {
        crate::repo::keys::set_for_repo(&limited, sources);
    }
}

/// Environment of host hooks and notification commands.
pub fn hook_env(name: &str, job: &Job, kind: &str) -> Vec<(String, String)> {
    vec![
        ("VOLSNAP_JOB".into(), name.into()),
        ("VOLSNAP_KIND".into(), kind.into()),
        ("VOLSNAP_REPO".into(), job.repo.display().to_string()),
        ("VOLSNAP_SELECTION".into(), job.selection().to_string()),
    ]
}

/// Runs one backup job from start to end; never fails as a whole: what went
/// wrong is in the record (also appended to the run log).
pub fn run_job(config: &Config, name: &str, run: &RunContext<'_>) -> RunRecord {
    let job = config.jobs.get(name).expect("job checked by the caller");
    register_keys(job, run.state_dir);
    let clock = Instant::now();
    let mut record = RunRecord::start(name, RunKind::Backup);
    eprintln!(
        "volsnap: job {name}: backup of {} starting",
        job.selection()
    );
    let mut env = hook_env(name, job, "backup");
    let pre_ok = match &job.hooks.pre {
        Some(command) => run_shell(command, &env, None, job.hook_timeout())
            .map_err(|e| {
                record
                    .problems
                    .push(format!("pre hook: {e:#}; backup not run"))
            })
            .is_ok(),
        None => true,
    };
    if pre_ok {
        back_up(job, run, &mut record);
    }
    record.status = if record.problems.is_empty() {
        RunStatus::Success
    } else {
        RunStatus::Failed
    };
    env.push(("VOLSNAP_STATUS".into(), record.status.to_string()));
    env.push((
        "VOLSNAP_BACKUP_ID".into(),
        record.backup_id.clone().unwrap_or_default(),
    ));
    finish(config, name, job, &mut record, &env, clock, run.state_dir);
    record
}

/// The backup, its verification and the retention that follows it.
fn back_up(job: &Job, run: &RunContext<'_>, record: &mut RunRecord) {
    let done = match backup_request(job).and_then(|request| backup::perform(&request, run)) {
        Ok(done) => done,
        Err(e) => {
            record
                .problems
                .push(format!("backup failed: {}", crate::error::error_chain(&e)));
            return;
        }
    };
    let m = &done.manifest;
    record.backup_id = Some(m.id.clone());
    record.strategy = Some(m.strategy.to_string());
    record.consistency = Some(m.consistency.to_string());
    record.downtime_ms = m.downtime_ms;
    record.estimated_downtime_ms = Some(done.estimate.ms);
    record.bytes = m.total_bytes();
    record.archive_bytes = m.bytes_stored();
    record.problems.extend(done.problems);
    if job.verify {
        match crate::restore::verify::verify_by_id(
            &job.repo,
            &m.id,
            crate::restore::verify::Level::Entries,
            run.cancel,
        ) {
            Ok(report) if report.problems.is_empty() => {}
            Ok(report) => record.problems.push(format!(
                "the new backup does not verify: {}",
                report.problems.join("; ")
            )),
            Err(e) => record
                .problems
                .push(format!("cannot verify the new backup: {e:#}")),
        }
    }
    if record.problems.is_empty() {
        copy_off(job, &m.id, run, record);
    }
    if let (Some(policy), true) = (&job.retention, record.problems.is_empty()) {
        for repo in std::iter::once(&job.repo).chain(&job.copy_to) {
            let pruned = super::begin_run(run.state_dir).and_then(|_lock| {
                crate::jobs::prune::prune_at(
                    repo,
                    policy,
                    Some(&job.selection().to_string()),
                    Some(&crate::execute::this_host()),
                    false,
                    run.cancel,
                )
                .map(|(report, _)| report)
            });
            match pruned {
                Ok(report) if *repo == job.repo => {
                    record.pruned = report.deleted.len();
                    record.pruned_ids = report.deleted;
                }
                Ok(report) => {
                    if !report.deleted.is_empty() {
                        eprintln!(
                            "volsnap: retention in {}: deleted {}",
                            repo.display(),
                            report.deleted.join(", ")
                        );
                    }
                }
                Err(e) => record
                    .problems
                    .push(format!("retention in {}: {e:#}", repo.display())),
            }
        }
    }
}

/// Copies the new backup into each of the job's `copy_to` repositories.
fn copy_off(job: &Job, id: &str, run: &RunContext<'_>, record: &mut RunRecord) {
    for to in &job.copy_to {
        let scope = crate::repo::Scope {
            host: crate::execute::this_host(),
            selection: None,
        };
        match super::copy::copy_backups(&job.repo, to, &[id.to_string()], &scope, run.cancel) {
            Ok(copied) => {
                eprintln!("volsnap: {}", super::copy::describe(&copied, to));
                record.copied_to.push(to.display().to_string());
                record.copy_bytes += copied.bytes_sent;
            }
            Err(e) => record.problems.push(format!(
                "copy to {}: {}",
                to.display(),
                crate::error::error_chain(&e)
            )),
        }
    }
}

/// Post and failure hooks, run log, metrics, notifications: the same end
/// for backups and drills.
pub fn finish(
    config: &Config,
    name: &str,
    job: &Job,
    record: &mut RunRecord,
    env: &[(String, String)],
    clock: Instant,
    state_dir: &Path,
) {
    if let Some(command) = &job.hooks.post {
        if let Err(e) = run_shell(command, env, None, job.hook_timeout()) {
            record.problems.push(format!("post hook: {e:#}"));
            record.status = RunStatus::Failed;
        }
    }
    if record.status == RunStatus::Failed {
        if let Some(command) = &job.hooks.on_failure {
            if let Err(e) = run_shell(command, env, None, job.hook_timeout()) {
                record.problems.push(format!("on_failure hook: {e:#}"));
            }
        }
    }
    record.finished_at = Utc::now();
    record.duration_ms = clock.elapsed().as_millis() as u64;
    let log = config.run_log(state_dir);
    if let Err(e) = runlog::append(&log, record) {
        eprintln!("volsnap: warning: {e:#}");
    }
    if let Some(path) = &config.metrics_file {
        if let Err(e) = write_metrics(config, &log, path) {
            eprintln!("volsnap: warning: metrics: {e:#}");
        }
    }
    notify(job, record, env);
    match record.status {
        RunStatus::Success => eprintln!("volsnap: job {name}: {}", success_line(job, record)),
        RunStatus::Failed => {
            eprintln!("volsnap: error: job {name}: {:?} failed:", record.kind);
            for p in &record.problems {
                eprintln!("  - {p}");
            }
        }
    }
}

/// What a successful run did, on one line: the backup, its downtime
/// against the estimate, and what retention deleted.
fn success_line(job: &Job, record: &RunRecord) -> String {
    let mut line = format!(
        "{:?} succeeded in {}",
        record.kind,
        crate::fsutil::human_secs(record.duration_ms)
    );
    if let Some(id) = &record.backup_id {
        line.push_str(&format!(
            "; backup {id}, downtime {}",
            crate::fsutil::human_secs(record.downtime_ms)
        ));
        if let Some(estimate) = record.estimated_downtime_ms {
            line.push_str(&format!(
                " (estimated {})",
                crate::fsutil::human_secs(estimate)
            ));
        }
    }
    if job.retention.is_some() && record.kind == RunKind::Backup {
        if record.pruned_ids.is_empty() {
            line.push_str("; retention deleted nothing");
        } else {
            line.push_str(&format!(
                "; retention deleted {} backup(s): {}",
                record.pruned_ids.len(),
                record.pruned_ids.join(", ")
            ));
        }
    }
    line
}

fn notify(job: &Job, record: &RunRecord, env: &[(String, String)]) {
    if record.status == RunStatus::Success && !job.notify.on_success {
        return;
    }
    let body = match serde_json::to_string(record) {
        Ok(b) => b,
        Err(_) => return,
    };
    if let Some(url) = &job.notify.webhook {
        match post_webhook(url, &body) {
            Ok(()) => tracing::info!("notified {}", redact(url)),
            Err(e) => eprintln!("volsnap: warning: notification: {e:#}"),
        }
    }
    if let Some(command) = &job.notify.command {
        if let Err(e) = run_shell(command, env, Some(body.as_bytes()), job.hook_timeout()) {
            eprintln!("volsnap: warning: notification command: {e:#}");
        }
    }
}

/// The time of the newest backup of the job's stack that verified.
pub fn newest_verified(job: &Job) -> Option<(String, DateTime<Utc>)> {
    let (backups, _) = crate::repo::list_any(&job.repo).ok()?;
    let selection = job.selection().to_string();
    backups
        .iter()
        .rev()
        .filter(|b| b.manifest.selection == selection && b.counts())
        .find(|b| {
            b.notes()
                .ok()
                .and_then(|n| crate::restore::verify::verified_at(&n))
                .is_some()
        })
        .map(|b| (b.id.clone(), b.manifest.started_at))
}

/// The newest backup of every host and stack in the job's repository
/// (host, selection, id, completion): a fleet on one repository, watched
/// from any of its hosts.
pub fn fleet(job: &Job) -> Vec<runlog::HostNewest> {
    let Ok((backups, _)) = crate::repo::list_any(&job.repo) else {
        return Vec::new();
    };
    crate::repo::newest_by_host(&backups)
        .into_iter()
        .map(|b| runlog::HostNewest {
            host: b.manifest.host.clone(),
            selection: b.manifest.selection.clone(),
            id: b.id.clone(),
            completed_at: b.manifest.completed_at,
        })
        .collect()
}

pub fn write_metrics(config: &Config, log: &Path, path: &Path) -> Result<()> {
    let records = runlog::read(log)?;
    let summaries: Vec<_> = config
        .jobs
        .keys()
        .map(|name| runlog::summarize(name, &records))
        .collect();
    let verified: Vec<_> = config
        .jobs
        .iter()
        .map(|(name, job)| (name.clone(), newest_verified(job).map(|(_, t)| t)))
        .collect();
    let mut text = runlog::render_metrics(&summaries, &verified);
    let fleets: Vec<_> = config
        .jobs
        .iter()
        .map(|(name, job)| (name.clone(), fleet(job)))
        .collect();
    text.push_str(&runlog::render_fleet_metrics(&fleets));
    crate::fsutil::replace_file(path, text.as_bytes())
}
