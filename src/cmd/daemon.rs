//! `volsnap daemon`: runs the configured jobs on their schedules.
//!
//! One loop, one job at a time: a job can never overlap itself (nor any
//! other volsnap run: the host lock sees to that). A run missed while the
//! daemon was down runs once at start. SIGTERM/SIGINT stop the loop; a
//! backup under way is aborted through its cleanup. SIGHUP reloads the
//! configuration between runs; a configuration that does not load (or
//! schedules nothing) is refused and the previous one stays in effect.

use crate::cli::DaemonArgs;
use anyhow::Result;
use chrono::{DateTime, Utc};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use volsnap::cancel::Cancel;
use volsnap::jobs::config::{parse_schedule, Config};
use volsnap::jobs::runlog::{self, RunKind};
use volsnap::jobs::schedule::{missed, next_after};

struct Slot {
    job: String,
    kind: RunKind,
    /// The schedule as written, to tell an unchanged slot on reload.
    schedule: String,
    cron: croner::Cron,
    next: Option<DateTime<Utc>>,
}

pub fn run(args: DaemonArgs) -> Result<i32> {
    let path = &args.config.path;
    let state_dir = &args.state.state_dir;
    let mut config = Config::load(path)?;
    let cancel = Cancel::from_signals_but_hup()?;
    let observer = crate::output::TerminalObserver::new();
    let run = volsnap::jobs::RunContext {
        state_dir,
        cancel: &cancel,
        observer: &observer,
    };
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))?;
    let records = runlog::read(&config.run_log(state_dir))?;
    let mut slots = slots_of(&config, path, Utc::now(), |name, kind, _, cron, now| {
        let last = records
            .iter()
            .rev()
            .find(|r| r.job == name && r.kind == kind)
            .map(|r| r.started_at);
        match last {
            Some(last) if missed(cron, last, now) => {
                eprintln!("volsnap daemon: job {name}: a {kind:?} run was missed while the daemon was down; running it now (once)");
                Some(now)
            }
            _ => next_after(cron, now),
        }
    })?;
    slots.iter().for_each(announce);
    while !cancel.is_cancelled() {
        if reload.swap(false, Ordering::SeqCst) {
            if let Some((new_config, new_slots)) = reloaded(path, &slots) {
                config = new_config;
                slots = new_slots;
            }
        }
        let now = Utc::now();
        let due = slots
            .iter_mut()
            .filter(|s| s.next.is_some_and(|t| t <= now))
            .min_by_key(|s| s.next);
        if let Some(slot) = due {
            match slot.kind {
                RunKind::Backup => {
                    volsnap::jobs::run::run_job(&config, &slot.job, &run);
                }
                RunKind::Drill => {
                    super::drill::run_job_drill(&config, &slot.job, &run);
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

/// The scheduled runs of `config`; `first` picks each one's first time
/// from the job, the kind of run, the schedule as written and parsed, and now.
fn slots_of(
    config: &Config,
    path: &Path,
    now: DateTime<Utc>,
    first: impl Fn(&str, RunKind, &str, &croner::Cron, DateTime<Utc>) -> Option<DateTime<Utc>>,
) -> Result<Vec<Slot>> {
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
            let next = first(name, kind, schedule, &cron, now);
            slots.push(Slot {
                job: name.clone(),
                kind,
                schedule: schedule.to_string(),
                cron,
                next,
            });
        }
    }
    if slots.is_empty() {
        return Err(volsnap::usage!(
            "no job in {} has a schedule; add schedule = \"0 3 * * *\" (for example) to a job",
            path.display()
        ));
    }
    Ok(slots)
}

/// Loads the configuration again (SIGHUP). A slot whose job, kind and
/// schedule are unchanged keeps its next time; new or changed ones start
/// from now (nothing is made up on reload). `None`, saying why, when the
/// new configuration cannot be used.
fn reloaded(path: &Path, current: &[Slot]) -> Option<(Config, Vec<Slot>)> {
    let loaded = Config::load(path).and_then(|config| {
        let slots = slots_of(
            &config,
            path,
            Utc::now(),
            |name, kind, schedule, cron, now| {
                current
                    .iter()
                    .find(|s| s.job == name && s.kind == kind && s.schedule == schedule)
                    .map_or_else(|| next_after(cron, now), |s| s.next)
            },
        )?;
        Ok((config, slots))
    });
    match loaded {
        Ok((config, slots)) => {
            eprintln!(
                "volsnap daemon: reloaded {} ({} scheduled runs)",
                path.display(),
                slots.len()
            );
            slots.iter().for_each(announce);
            Some((config, slots))
        }
        Err(e) => {
            eprintln!(
                "volsnap daemon: cannot reload {}: {e:#}; the previous configuration stays in effect (check it with 'volsnap config check')",
                path.display()
            );
            None
        }
    }
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
