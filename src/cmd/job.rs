//! Configured jobs: `run JOB`, `config check`, `status`, `systemd JOB`.
//! What a job run does is library code (`volsnap::jobs::run`).

use crate::cli::{ConfigArgs, ConfigCommand, RunArgs, StatusArgs, SystemdArgs};
use crate::output::TerminalObserver;
use anyhow::Result;
use chrono::{DateTime, Utc};
use volsnap::cancel::Cancel;
use volsnap::jobs::config::Config;
use volsnap::jobs::run::{newest_verified, run_job};
use volsnap::jobs::runlog::{self, RunRecord, RunStatus};
use volsnap::jobs::RunContext;

pub fn run(args: RunArgs) -> Result<i32> {
    let config = Config::load(&args.config.path)?;
    config.job(&args.job)?;
    let cancel = Cancel::from_signals()?;
    let observer = TerminalObserver::new();
    let run = RunContext {
        state_dir: &args.state.state_dir,
        cancel: &cancel,
        observer: &observer,
    };
    let record = if args.drill {
        super::drill::run_job_drill(&config, &args.job, &run)
    } else {
        run_job(&config, &args.job, &run)
    };
    Ok(if record.status == RunStatus::Success {
        0
    } else {
        1
    })
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
    let cron = volsnap::jobs::config::parse_schedule(schedule).ok()?;
    let next = cron
        .find_next_occurrence(&chrono::Local::now(), false)
        .ok()?;
    Some(next.format("%Y-%m-%d %H:%M:%S %Z").to_string())
}

pub fn status(args: StatusArgs) -> Result<i32> {
    let config = Config::load(&args.config.path)?;
    let records = runlog::read(&config.run_log(&args.state.state_dir))?;
    let now = Utc::now();
    let ago = |t: &DateTime<Utc>| volsnap::fsutil::human_age(t, &now);
    let mut rows = Vec::new();
    for (name, job) in &config.jobs {
        volsnap::jobs::run::register_keys(job, &args.state.state_dir);
        let summary = runlog::summarize(name, &records);
        let verified = newest_verified(job);
        let fleet = volsnap::jobs::run::fleet(job);
        if args.json {
            rows.push(serde_json::json!({
                "job": name,
                "last_success": summary.last_success,
                "last_failure": summary.last_failure,
                "newest_verified_backup": verified.as_ref().map(|(id, t)| serde_json::json!({"id": id, "started_at": t})),
                "last_drill": summary.last_drill,
                "repository_newest": fleet,
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
        if let Some(done) = summary
            .last_success
            .as_ref()
            .filter(|r| !r.copied_to.is_empty())
        {
            outln!(
                "  copied to:        {} ({} sent)",
                done.copied_to.join(", "),
                volsnap::fsutil::human_bytes(done.copy_bytes)
            );
        }
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
        if fleet.iter().any(|n| n.host != fleet[0].host) {
            outln!("  newest in the repository, per host and stack:");
            for n in &fleet {
                outln!(
                    "    {}: {}, {} ({})",
                    n.host,
                    ago(&n.completed_at),
                    n.id,
                    n.selection
                );
            }
        }
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
        volsnap::jobs::schedule::to_on_calendar(schedule).map_err(|e| volsnap::usage!("{e}"))?;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/usr/local/bin/volsnap".into());
    let config_path = std::fs::canonicalize(&args.config.path)
        .unwrap_or(args.config.path.clone())
        .display()
        .to_string();
    let name = &args.job;
    let spread = args.spread;
    if spread.is_empty()
        || !spread
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b' ')
    {
        return Err(volsnap::usage!(
            "--spread takes a systemd time span such as 15min or 1h, not {spread:?}"
        ));
    }
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
# Hosts sharing a repository start at different moments within this window.
RandomizedDelaySec={spread}
Unit=volsnap-{name}.service

[Install]
WantedBy=timers.target

# Then: systemctl daemon-reload && systemctl enable --now volsnap-{name}.timer"
    );
    Ok(0)
}
