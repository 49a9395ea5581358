//! Configured jobs: `run JOB`, `config check`, `status`, `systemd JOB`.
//!
//! A job run, in order: host `pre` hook → backup (container hooks inside
//! it) → verification of the new backup → retention → host `post` hook
//! (always) → host `on_failure` hook (when anything failed) → run log →
//! metrics → notifications.

use super::backup;
use crate::cli::{
    BackupArgs, CompressionArg, ConfigArgs, ConfigCommand, RunArgs, SelectionArgs, StateArgs,
    StatusArgs, StrategyArgs, SystemdArgs,
};
use crate::output::error_chain;
use anyhow::Result;
use chrono::{DateTime, Utc};
use std::path::Path;
use std::time::Instant;
use volsnap::cancel::Cancel;
use volsnap::config::{Config, Job};
use volsnap::discovery::Selection;
use volsnap::manifest::Compression;
use volsnap::notify::{post_webhook, redact, run_shell};
use volsnap::repo::Repo;
use volsnap::runlog::{self, RunKind, RunRecord, RunStatus};

pub fn run(args: RunArgs) -> Result<i32> {
    let config = Config::load(&args.config.path)?;
    config.job(&args.job)?;
    let cancel = Cancel::from_signals()?;
    let record = if args.drill {
        super::drill::run_job_drill(&config, &args.job, &args.state.state_dir, &cancel)
    } else {
        run_job(&config, &args.job, &args.state.state_dir, &cancel)
    };
    Ok(if record.status == RunStatus::Success {
        0
    } else {
        1
    })
}

/// The backup arguments a job stands for.
fn backup_args(job: &Job, state_dir: &Path) -> Result<BackupArgs> {
    let selection = match job.selection() {
        Selection::Project(p) => SelectionArgs {
            project: Some(p),
            container: Vec::new(),
            label: None,
        },
        Selection::Containers(c) => SelectionArgs {
            project: None,
            container: c,
            label: None,
        },
        Selection::Label(k, v) => SelectionArgs {
            project: None,
            container: Vec::new(),
            label: Some(format!("{k}={v}")),
        },
    };
    let size = |s: &Option<String>| -> Result<Option<u64>> {
        s.as_deref()
            .map(volsnap::fsutil::parse_size)
            .transpose()
            .map_err(|e| volsnap::usage!("{e}"))
    };
    Ok(BackupArgs {
        selection,
        repo: job.repo.clone(),
        strategy: StrategyArgs {
            strategy: job.strategy,
            quiesce: job.quiesce,
            max_downtime: job.max_downtime,
            require_consistent: job.require_consistent,
            stop_timeout: job.stop_timeout.unwrap_or(30),
            ready_timeout: job.ready_timeout.unwrap_or(120),
            snapshot_size: size(&job.snapshot_size)?,
        },
        compression: match job.compression {
            Compression::Zstd => CompressionArg::Zstd,
            Compression::Gzip => CompressionArg::Gzip,
            Compression::None => CompressionArg::None,
        },
        level: job.level,
        threads: job.threads,
        bwlimit: size(&job.bwlimit)?,
        io_nice: job.io_nice,
        skip_space_check: false,
        host: crate::cli::HostArgs { host: None },
        state: StateArgs {
            state_dir: state_dir.to_path_buf(),
        },
        json: false,
    })
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
pub fn run_job(config: &Config, name: &str, state_dir: &Path, cancel: &Cancel) -> RunRecord {
    let job = config.jobs.get(name).expect("job checked by the caller");
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
        back_up(job, state_dir, cancel, &mut record);
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
    finish(config, name, job, &mut record, &env, clock, state_dir);
    record
}

/// The backup, its verification and the retention that follows it.
fn back_up(job: &Job, state_dir: &Path, cancel: &Cancel, record: &mut RunRecord) {
    let done = match backup_args(job, state_dir).and_then(|args| backup::perform(&args, cancel)) {
        Ok(done) => done,
        Err(e) => {
            record
                .problems
                .push(format!("backup failed: {}", error_chain(&e)));
            return;
        }
    };
    let m = &done.manifest;
    record.backup_id = Some(m.id.clone());
    record.strategy = Some(m.strategy.to_string());
    record.consistency = Some(m.consistency.to_string());
    record.downtime_ms = m.downtime_ms;
    record.bytes = m.total_bytes();
    record.archive_bytes = m.archive_bytes();
    record.problems.extend(done.problems);
    if job.verify {
        match volsnap::verify::verify(&done.dir, volsnap::verify::Level::Entries, cancel) {
            Ok(report) if report.problems.is_empty() => {
                volsnap::verify::record_verified(&done.dir, false)
            }
            Ok(report) => record.problems.push(format!(
                "the new backup does not verify: {}",
                report.problems.join("; ")
            )),
            Err(e) => record
                .problems
                .push(format!("cannot verify the new backup: {e:#}")),
        }
    }
    if let (Some(policy), true) = (&job.retention, record.problems.is_empty()) {
        let pruned = Repo::open(&job.repo).and_then(|repo| {
            let _lock = super::begin_run(state_dir)?;
            volsnap::prune::prune(
                &repo,
                policy,
                Some(&job.selection().to_string()),
                Some(&volsnap::execute::this_host()),
                false,
                cancel,
            )
        });
        match pruned {
            Ok(report) => record.pruned = report.deleted.len(),
            Err(e) => record.problems.push(format!("retention: {e:#}")),
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
        RunStatus::Success => eprintln!(
            "volsnap: job {name}: {:?} succeeded{} in {:.1} s",
            record.kind,
            record
                .backup_id
                .as_deref()
                .map(|id| format!(" ({id})"))
                .unwrap_or_default(),
            record.duration_ms as f64 / 1000.0
        ),
        RunStatus::Failed => {
            eprintln!("volsnap: error: job {name}: {:?} failed:", record.kind);
            for p in &record.problems {
                eprintln!("  - {p}");
            }
        }
    }
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
fn newest_verified(job: &Job) -> Option<(String, DateTime<Utc>)> {
    let repo = Repo::open(&job.repo).ok()?;
    let (backups, _) = repo.list().ok()?;
    let selection = job.selection().to_string();
    backups
        .iter()
        .rev()
        .filter(|b| b.manifest.selection == selection)
        .find(|b| volsnap::verify::verified_at(&b.dir).is_some())
        .map(|b| (b.id.clone(), b.manifest.started_at))
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
    volsnap::fsutil::replace_file(
        path,
        runlog::render_metrics(&summaries, &verified).as_bytes(),
    )
}

pub fn config(command: ConfigCommand) -> Result<i32> {
    match command {
        ConfigCommand::Check(ConfigArgs { path }) => {
            let config = Config::load(&path)?;
            outln!("{}: ok, {} job(s)", path.display(), config.jobs.len());
            for (name, job) in &config.jobs {
                let schedule = job
                    .schedule
                    .as_deref()
                    .and_then(|s| next_run(s).map(|next| format!("{s:?}, next {next}")))
                    .unwrap_or_else(|| "no schedule (run it with 'volsnap run')".into());
                outln!(
                    "  {name}: {} -> {}, {}, {schedule}",
                    job.selection(),
                    job.repo.display(),
                    format!("{:?}", job.strategy).to_lowercase()
                );
            }
            Ok(0)
        }
    }
}

/// The next time a schedule fires, in local time, for people.
fn next_run(schedule: &str) -> Option<String> {
    let cron = volsnap::config::parse_schedule(schedule).ok()?;
    let next = cron
        .find_next_occurrence(&chrono::Local::now(), false)
        .ok()?;
    Some(next.format("%Y-%m-%d %H:%M:%S %Z").to_string())
}

pub fn status(args: StatusArgs) -> Result<i32> {
    let config = Config::load(&args.config.path)?;
    let records = runlog::read(&config.run_log(&args.state.state_dir))?;
    let now = Utc::now();
    let ago = |t: &DateTime<Utc>| {
        let secs = (now - *t).num_seconds().max(0);
        let text = match secs {
            s if s < 120 => format!("{s} s"),
            s if s < 7200 => format!("{} min", s / 60),
            s if s < 172_800 => format!("{} h", s / 3600),
            s => format!("{} days", s / 86_400),
        };
        format!("{} ({text} ago)", t.format("%Y-%m-%d %H:%M"))
    };
    let mut rows = Vec::new();
    for (name, job) in &config.jobs {
        let summary = runlog::summarize(name, &records);
        let verified = newest_verified(job);
        if args.json {
            rows.push(serde_json::json!({
                "job": name,
                "last_success": summary.last_success,
                "last_failure": summary.last_failure,
                "newest_verified_backup": verified.as_ref().map(|(id, t)| serde_json::json!({"id": id, "started_at": t})),
                "last_drill": summary.last_drill,
            }));
            continue;
        }
        outln!("{name} ({} -> {})", job.selection(), job.repo.display());
        let line = |r: &Option<RunRecord>| {
            r.as_ref()
                .map(|r| {
                    format!(
                        "{}{}",
                        ago(&r.finished_at),
                        r.backup_id
                            .as_deref()
                            .map(|id| format!(", {id}"))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "never".into())
        };
        outln!("  last success:     {}", line(&summary.last_success));
        outln!("  last failure:     {}", line(&summary.last_failure));
        if let Some(failure) = &summary.last_failure {
            if let Some(first) = failure.problems.first() {
                outln!("                    {first}");
            }
        }
        outln!(
            "  newest verified:  {}",
            verified
                .map(|(id, t)| format!("{id}, taken {}", ago(&t)))
                .unwrap_or_else(|| "none".into())
        );
        outln!(
            "  last drill:       {}",
            summary
                .last_drill
                .as_ref()
                .map(|d| format!(
                    "{} {}{}",
                    d.status,
                    ago(&d.finished_at),
                    match (d.restore_ms, d.healthy_ms) {
                        (Some(r), Some(h)) => format!(
                            ", restore {:.1} s + healthy {:.1} s",
                            r as f64 / 1000.0,
                            h as f64 / 1000.0
                        ),
                        _ => String::new(),
                    }
                ))
                .unwrap_or_else(|| "never".into())
        );
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(0)
}

pub fn systemd(args: SystemdArgs) -> Result<i32> {
    let config = Config::load(&args.config.path)?;
    let job = config.job(&args.job)?;
    let schedule = job.schedule.as_deref().ok_or_else(|| {
        volsnap::usage!(
            "job {} has no schedule; add schedule = \"0 3 * * *\" (for example) to [jobs.{}]",
            args.job,
            args.job
        )
    })?;
    let calendar =
        volsnap::schedule::to_on_calendar(schedule).map_err(|e| volsnap::usage!("{e}"))?;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/usr/local/bin/volsnap".into());
    let config_path = std::fs::canonicalize(&args.config.path)
        .unwrap_or(args.config.path.clone())
        .display()
        .to_string();
    let name = &args.job;
    outln!(
        "# /etc/systemd/system/volsnap-{name}.service
[Unit]
Description=volsnap backup job {name}
Wants=docker.service
After=docker.service

[Service]
Type=oneshot
ExecStart={exe} run {name} --config {config_path}
# A backup may stop services: let it finish or clean up, never kill it early.
TimeoutStopSec=10min
KillMode=mixed
KillSignal=SIGTERM

# /etc/systemd/system/volsnap-{name}.timer
[Unit]
Description=volsnap backup job {name} on its schedule ({schedule})

[Timer]
OnCalendar={calendar}
# A run missed while the host was off runs once at boot.
Persistent=true
Unit=volsnap-{name}.service

[Install]
WantedBy=timers.target

# Then: systemctl daemon-reload && systemctl enable --now volsnap-{name}.timer"
    );
    Ok(0)
}
