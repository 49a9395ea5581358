//! `volsnap drill` and the drills of configured jobs.

use crate::cli::DrillArgs;
use anyhow::Result;
use std::time::Duration;
use volsnap::cancel::Cancel;
use volsnap::jobs::config::Config;
use volsnap::jobs::drill::{DrillReport, DrillSpec};
use volsnap::jobs::runlog::RunRecord;
use volsnap::jobs::RunContext;
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
        host_checks: args.check_host.clone(),
        recorded_images: args.recorded_images,
        timeout: Duration::from_secs(args.timeout),
    };
    let cancel = Cancel::from_signals()?;
    let report = volsnap::jobs::drill::perform(
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

/// The drill of a configured job, its report printed here.
pub fn run_job_drill(config: &Config, name: &str, run: &RunContext<'_>) -> RunRecord {
    volsnap::jobs::drill::run_job_drill(config, name, run, &print_report)
}
