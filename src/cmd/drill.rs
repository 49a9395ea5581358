//! `volsnap drill` and the drills of configured jobs.

use crate::cli::DrillArgs;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use volsnap::cancel::Cancel;
use volsnap::config::{Config, DEFAULT_DRILL_TIMEOUT_SECS};
use volsnap::discovery::{discover, Selection};
use volsnap::docker::Docker;
use volsnap::drill::{drill, store_report, DrillReport, DrillSpec};
use volsnap::journal::Journal;
use volsnap::manifest::{Manifest, MANIFEST_FILE};
use volsnap::repo::{Repo, Scope};
use volsnap::runlog::{RunKind, RunRecord, RunStatus};
use volsnap::usage;

pub fn run(args: DrillArgs) -> Result<i32> {
    let selection = args.selection.to_selection()?;
    let mut checks = Vec::new();
    for check in &args.check {
        let (service, command) = check
            .split_once('=')
            .filter(|(s, c)| !s.is_empty() && !c.trim().is_empty())
            .ok_or_else(|| usage!("--check takes SERVICE=CMD, not {check:?}"))?;
        checks.push((service.to_string(), command.to_string()));
    }
    let spec = DrillSpec {
        checks,
        timeout: Duration::from_secs(args.timeout),
    };
    let cancel = Cancel::from_signals()?;
    let report = perform(
        &args.repo,
        &args.id,
        &selection,
        &args.host.name(),
        &spec,
        &args.state.state_dir,
        &cancel,
    )?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.passed { 0 } else { 1 })
}

/// Resolves the backup (`latest` = the newest of this selection), checks
/// it, runs the drill and stores its report beside the backup.
fn perform(
    repo: &Path,
    id: &str,
    selection: &Selection,
    host: &str,
    spec: &DrillSpec,
    state_dir: &Path,
    cancel: &Cancel,
) -> Result<DrillReport> {
    let repo = Repo::open(repo)?;
    let scope = Scope {
        host: host.to_string(),
        selection: Some(selection.to_string()),
    };
    let (id, dir) = repo.resolve_in(id, &scope)?;
    let manifest = Manifest::load(&dir.join(MANIFEST_FILE))?;
    let check = volsnap::verify::verify(&dir, volsnap::verify::Level::Checksums, cancel)?;
    if !check.problems.is_empty() {
        anyhow::bail!(
            "backup {id} failed verification, not drilling it: {}",
            check.problems.join("; ")
        );
    }
    let _lock = super::begin_run(state_dir)?;
    let docker = Docker::connect()?;
    let stack = discover(&docker, selection)?;
    let mut journal = Journal::create(
        state_dir,
        &format!("drill-{id}-{}", std::process::id()),
        &super::command_line(),
    )?;
    eprintln!("volsnap: drilling backup {id} of {selection}");
    let report = drill(&docker, &dir, &manifest, &stack, spec, cancel, &mut journal)?;
    // A teardown that did not complete stays in the journal for recover.
    journal.finish_if_clean()?;
    store_report(&dir, &report);
    if report.passed {
        volsnap::verify::record_verified(&dir, false);
    }
    Ok(report)
}

fn print_report(r: &DrillReport) {
    outln!(
        "drill of backup {}: {}",
        r.backup_id,
        if r.passed { "PASSED" } else { "FAILED" }
    );
    outln!("  restore:        {:.1} s", r.restore_ms as f64 / 1000.0);
    if let Some(h) = r.healthy_ms {
        outln!("  to healthy:     {:.1} s", h as f64 / 1000.0);
        outln!(
            "  recovery time:  {:.1} s (restore + start + checks)",
            (r.restore_ms + h) as f64 / 1000.0
        );
    }
    outln!("  containers:     {}", r.containers.join(", "));
    for c in &r.checks {
        outln!(
            "  check {} `{}`: {}{}",
            c.service,
            c.command,
            if c.passed { "passed" } else { "FAILED" },
            if c.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.detail)
            }
        );
    }
    for n in &r.notes {
        outln!("  note: {n}");
    }
    for p in &r.problems {
        eprintln!("volsnap: error: drill: {p}");
    }
}

/// The drill of a configured job (newest backup of its stack).
pub fn run_job_drill(config: &Config, name: &str, state_dir: &Path, cancel: &Cancel) -> RunRecord {
    let job = config.jobs.get(name).expect("job checked by the caller");
    let settings = job.drill.clone().unwrap_or_default();
    let spec = DrillSpec {
        checks: settings.checks.into_iter().collect(),
        timeout: Duration::from_secs(settings.timeout.unwrap_or(DEFAULT_DRILL_TIMEOUT_SECS)),
    };
    let clock = Instant::now();
    let mut record = RunRecord::start(name, RunKind::Drill);
    let repo: PathBuf = job.repo.clone();
    let host = volsnap::execute::this_host();
    match perform(
        &repo,
        "latest",
        &job.selection(),
        &host,
        &spec,
        state_dir,
        cancel,
    ) {
        Ok(report) => {
            print_report(&report);
            record.backup_id = Some(report.backup_id.clone());
            record.restore_ms = Some(report.restore_ms);
            record.healthy_ms = report.healthy_ms;
            record.problems.extend(report.problems);
            record.problems.extend(
                report
                    .checks
                    .iter()
                    .filter(|c| !c.passed)
                    .map(|c| format!("check {} failed: {}", c.service, c.detail)),
            );
            if report.passed {
                record.status = RunStatus::Success;
            }
        }
        Err(e) => record
            .problems
            .push(format!("drill failed: {}", crate::output::error_chain(&e))),
    }
    let mut env = super::job::hook_env(name, job, "drill");
    env.push(("VOLSNAP_STATUS".into(), record.status.to_string()));
    env.push((
        "VOLSNAP_BACKUP_ID".into(),
        record.backup_id.clone().unwrap_or_default(),
    ));
    super::job::finish(config, name, job, &mut record, &env, clock, state_dir);
    record
}
