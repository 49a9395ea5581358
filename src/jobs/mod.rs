//! The job lifecycle, as library code the CLI and the daemon call: a
//! backup from start to end, a drill, retention, configured jobs with their
//! hooks, run log, metrics and notifications.

pub mod adopt;
pub mod backup;
pub mod config;
pub mod contents;
pub mod copy;
pub mod drill;
pub mod history;
pub mod notify;
pub mod prune;
pub mod restore;
pub mod run;
pub mod runlog;
pub mod schedule;
mod services;
pub mod snapshot;
mod source;

use crate::cancel::Cancel;
use crate::execute::Observer;
use crate::lock::HostLock;
use anyhow::Result;
use std::path::Path;

/// What every run on this host shares: where its state lives, how it is
/// stopped, and who is told about its steps.
pub struct RunContext<'a> {
    pub state_dir: &'a Path,
    pub cancel: &'a Cancel,
    pub observer: &'a dyn Observer,
}

/// The command line, for the lock file and journals.
pub fn command_line() -> String {
    std::env::args().skip(1).collect::<Vec<_>>().join(" ")
}

/// Starts a run that changes things: takes the host lock, then repairs what
/// an earlier, killed run left behind. An undo that keeps failing is
/// reported with the way out, and does not lock this run out: its journal
/// stays for `volsnap recover` (or `recover --give-up`).
pub fn begin_run(state_dir: &Path) -> Result<HostLock> {
    let lock = crate::lock::acquire(state_dir, &command_line())?;
    match crate::journal::recover(state_dir, &crate::storage::SystemRunner, false) {
        Ok(lines) => {
            for line in lines {
                eprintln!("volsnap: recovery: {line}");
            }
        }
        Err(e) => eprintln!(
            "volsnap: warning: {e:#}. This run goes on. Once the cause is fixed, 'volsnap recover' finishes the repair; if it was repaired by hand, 'volsnap recover --give-up RUN' stops retrying it"
        ),
    }
    Ok(lock)
}
