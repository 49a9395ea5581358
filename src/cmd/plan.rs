//! `volsnap plan`: what a backup would do, and why.

use crate::cli::PlanArgs;
use anyhow::Result;
use serde::Serialize;
use volsnap::discovery::Stack;
use volsnap::fsutil::human_bytes;
use volsnap::plan::Plan;
use volsnap::storage::{SnapshotSupport, StorageInfo};

#[derive(Serialize)]
struct PlanReport<'a> {
    selection: String,
    strategy: String,
    consistency: String,
    reason: &'a str,
    estimated_downtime_ms: u64,
    estimate_source: &'a str,
    containers: Vec<ContainerLine<'a>>,
    volumes: Vec<VolumeLine<'a>>,
    skipped: &'a [String],
    order: &'a [String],
    steps: Vec<StepLine<'a>>,
}

#[derive(Serialize)]
struct ContainerLine<'a> {
    name: &'a str,
    service: Option<&'a str>,
    running: bool,
    depends_on: &'a [String],
    /// Seconds it gets to stop, and whose setting that is.
    stop_timeout_secs: u32,
    stop_timeout_from: &'static str,
}

#[derive(Serialize)]
struct VolumeLine<'a> {
    name: &'a str,
    host_path: String,
    bytes: u64,
    files: u64,
    exclude: &'a [String],
    storage: &'a StorageInfo,
}

#[derive(Serialize)]
struct StepLine<'a> {
    name: &'static str,
    description: String,
    #[serde(flatten)]
    step: &'a volsnap::plan::Step,
}

pub fn run(args: PlanArgs) -> Result<i32> {
    let selection = args.selection.to_selection()?;
    let (stack, storage, plan) = volsnap::jobs::backup::preview(
        &selection,
        &args.strategy.to_options(),
        args.strategy.snapshot_size,
        &args.state.state_dir,
    )?;
    let options = args.strategy.to_options();
    // Without --repo: format 2, what an empty repository becomes.
    let chunked = match args.repo.as_deref() {
        None => true,
        Some(repo) if !repo.exists() && !volsnap::backend::is_remote(repo) => true,
        Some(repo) => volsnap::repo::backup_format(repo)?.0 == volsnap::repo::Format::Chunked,
    };
    let report = report(&stack, &storage, &plan, &options, chunked);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    Ok(0)
}

fn report<'a>(
    stack: &'a Stack,
    storage: &'a [StorageInfo],
    plan: &'a Plan,
    options: &volsnap::plan::PlanOptions,
    chunked: bool,
) -> PlanReport<'a> {
    PlanReport {
        selection: stack.selection.to_string(),
        strategy: plan.strategy.to_string(),
        consistency: plan.consistency.to_string(),
        reason: &plan.reason,
        estimated_downtime_ms: plan.estimated_downtime_ms,
        estimate_source: &plan.estimate_source,
        containers: stack
            .containers
            .iter()
            .map(|c| ContainerLine {
                name: &c.info.name,
                service: c.service.as_deref(),
                running: c.info.running,
                depends_on: &c.depends_on,
                stop_timeout_secs: volsnap::plan::stop_timeout(c, options),
                stop_timeout_from: match (options.stop_timeout_secs, c.info.stop_timeout) {
                    (Some(mine), Some(own)) if own > mine => "--stop-timeout, shorter than its own",
                    (Some(_), _) => "--stop-timeout",
                    (None, Some(_)) => "its own",
                    (None, None) => "volsnap's default",
                },
            })
            .collect(),
        volumes: stack
            .volumes
            .iter()
            .zip(storage)
            .map(|(v, s)| VolumeLine {
                name: &v.name,
                host_path: v.host_path.display().to_string(),
                bytes: v.bytes,
                files: v.files,
                exclude: &v.exclude,
                storage: s,
            })
            .collect(),
        skipped: &stack.skipped,
        order: &stack.order_notes,
        steps: plan
            .steps
            .iter()
            .map(|s| StepLine {
                name: s.action.name(),
                description: s.action.describe_for(stack, chunked),
                step: s,
            })
            .collect(),
    }
}

fn print_human(r: &PlanReport<'_>) {
    outln!("selection:   {}", r.selection);
    outln!("strategy:    {} ({})", r.strategy, r.consistency);
    outln!("why:         {}", r.reason);
    outln!(
        "downtime:    about {} (estimate)",
        crate::output::secs(r.estimated_downtime_ms)
    );
    outln!("estimate:    {}", r.estimate_source);
    outln!("containers (start order):");
    for note in r.order {
        outln!("  {note}");
    }
    for c in &r.containers {
        let deps = if c.depends_on.is_empty() {
            String::new()
        } else {
            format!(", depends on {}", c.depends_on.join(", "))
        };
        let state = if c.running { "running" } else { "not running" };
        outln!(
            "  {} [{}{deps}; stop timeout {} s, {}]",
            c.name,
            state,
            c.stop_timeout_secs,
            c.stop_timeout_from
        );
        if c.stop_timeout_from.contains("shorter") {
            outln!(
                "  warning: {} asks for more time to stop than it gets: it may be killed, leaving its data crash-consistent",
                c.name
            );
        }
    }
    outln!("volumes:");
    for v in &r.volumes {
        let snap = match &v.storage.support {
            SnapshotSupport::Yes => "can snapshot".to_string(),
            SnapshotSupport::No(why) => format!("no snapshot: {why}"),
        };
        outln!(
            "  {}  {}  {} files  at {}",
            v.name,
            human_bytes(v.bytes),
            v.files,
            v.host_path
        );
        if !v.exclude.is_empty() {
            outln!("      excluded: {}", v.exclude.join(", "));
        }
        outln!(
            "      storage: {} ({} on {}); {snap}",
            v.storage.backend_name(),
            v.storage.fs_type,
            v.storage.device
        );
    }
    for s in r.skipped {
        outln!("  skipped: {s}");
    }
    outln!("steps:");
    for (i, s) in r.steps.iter().enumerate() {
        let undo = match &s.step.undo {
            Some(u) => format!("   (undo: {})", u.name()),
            None => String::new(),
        };
        outln!("  {:>2}. {:<14} {}{undo}", i + 1, s.name, s.description);
    }
}
