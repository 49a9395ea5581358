//! `volsnap daemon`: runs the configured jobs on their schedules.
//!
//! One loop, one job at a time: a job can never overlap itself (nor any
//! other volsnap run: the host lock sees to that). A run missed while the
//! daemon was down runs once at start. SIGTERM/SIGINT stop the loop; a
//! backup under way is aborted through its cleanup.

use crate::cli::DaemonArgs;
use anyhow::Result;
use chrono::{DateTime, Utc};
use std::time::Duration;
use volsnap::cancel::Cancel;
use volsnap::config::{parse_schedule, Config};
use volsnap::runlog::{self, RunKind};
use volsnap::schedule::{missed, next_after};

struct Slot {
    job: String,
    kind: RunKind,
    cron: croner::Cron,
    next: Option<DateTime<Utc>>,
}

pub fn run(args: DaemonArgs) -> Result<i32> {
    let config = Config::load(&args.config.path)?;
    let state_dir = &args.state.state_dir;
    let cancel = Cancel::from_signals()?;
    let records = runlog::read(&config.run_log(state_dir))?;
    let now = Utc::now();
    let mut slots = Vec::new();
    for (name, job) in &config.jobs {
        let schedules = [
            (RunKind::Backup, job.schedule.as_deref()),
            (
                RunKind::Drill,
                job.drill.as_ref().and_then(|d| d.schedule.as_deref()),
            ),
        ];
        for (kind, schedule) in schedules {
            let Some(schedule) = schedule else { continue };
            let cron = parse_schedule(schedule).map_err(|e| volsnap::usage!("job {name}: {e}"))?;
            let last = records
                .iter()
                .rev()
                .find(|r| &r.job == name && r.kind == kind)
                .map(|r| r.started_at);
            let next = match last {
                Some(last) if missed(&cron, last, now) => {
                    eprintln!("volsnap daemon: job {name}: a {kind:?} run was missed while the daemon was down; running it now (once)");
                    Some(now)
                }
                _ => next_after(&cron, now),
            };
            slots.push(Slot {
                job: name.clone(),
                kind,
                cron,
                next,
            });
        }
    }
    if slots.is_empty() {
        return Err(volsnap::usage!(
            "no job in {} has a schedule; add schedule = \"0 3 * * *\" (for example) to a job",
            args.config.path.display()
        ));
    }
    for slot in &slots {
        announce(slot);
    }
    while !cancel.is_cancelled() {
        let now = Utc::now();
        let due = slots
            .iter_mut()
            .filter(|s| s.next.is_some_and(|t| t <= now))
            .min_by_key(|s| s.next);
        if let Some(slot) = due {
            match slot.kind {
                RunKind::Backup => {
                    super::job::run_job(&config, &slot.job, state_dir, &cancel);
                }
                RunKind::Drill => {
                    super::drill::run_job_drill(&config, &slot.job, state_dir, &cancel);
                }
            }
            // Slots that passed during the run are not made up one by one.
            slot.next = next_after(&slot.cron, Utc::now());
            announce(slot);
            continue;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("volsnap daemon: stopped");
    Ok(0)
}

fn announce(slot: &Slot) {
    match slot.next {
        Some(next) => eprintln!(
            "volsnap daemon: job {}: next {:?} run at {}",
            slot.job,
            slot.kind,
            next.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S %Z")
        ),
        None => eprintln!(
            "volsnap daemon: job {}: its {:?} schedule never fires again",
            slot.job, slot.kind
        ),
    }
}
