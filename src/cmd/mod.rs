//! One subcommand per file; each turns its arguments into library calls and
//! prints the result. `run` returns the exit status.

mod backup;
mod daemon;
mod drill;
mod job;
mod list;
mod plan;
mod prune;
mod recover;
mod restore;
mod snapshot;
mod verify;

use crate::cli::{Command, HostArgs, SelectionArgs, StackFilterArgs, StrategyArgs};
use anyhow::Result;
use std::path::Path;
use volsnap::discovery::Selection;
use volsnap::lock::HostLock;
use volsnap::plan::PlanOptions;
use volsnap::repo::Scope;
use volsnap::usage;

pub fn run(command: Command) -> Result<i32> {
    match command {
        Command::Plan(args) => plan::run(args),
        Command::Backup(args) => backup::run(args),
        Command::List(args) => list::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Restore(args) => restore::run(args),
        Command::Snapshot(args) => snapshot::take(args),
        Command::Snapshots { command } => snapshot::manage(command),
        Command::Rollback(args) => snapshot::rollback(args),
        Command::Recover(args) => recover::run(args),
        Command::Prune(args) => prune::run(args),
        Command::Protect(args) => prune::protect(args),
        Command::Run(args) => job::run(args),
        Command::Daemon(args) => daemon::run(args),
        Command::Status(args) => job::status(args),
        Command::Config { command } => job::config(command),
        Command::Systemd(args) => job::systemd(args),
        Command::Drill(args) => drill::run(args),
    }
}

impl SelectionArgs {
    pub fn to_selection(&self) -> Result<Selection> {
        if let Some(project) = &self.project {
            return Ok(Selection::Project(project.clone()));
        }
        if let Some(label) = &self.label {
            let (key, value) = label
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| usage!("--label takes KEY=VALUE, not {label:?}"))?;
            return Ok(Selection::Label(key.to_string(), value.to_string()));
        }
        Ok(Selection::Containers(self.container.clone()))
    }
}

impl StackFilterArgs {
    /// The selection string backups of this stack record, when one is named.
    pub fn selection(&self) -> Result<Option<String>> {
        self.to_selection_args()
            .map(|s| s.to_selection().map(|s| s.to_string()))
            .transpose()
    }

    /// What `latest` means for a reading command: the newest backup from
    /// the host, of the stack when one is named.
    pub fn scope(&self, host: &HostArgs) -> Result<Scope> {
        Ok(Scope {
            host: host.name(),
            selection: self.selection()?,
        })
    }
}

impl StrategyArgs {
    pub fn to_options(&self) -> PlanOptions {
        PlanOptions {
            strategy: self.strategy,
            quiesce: self.quiesce,
            max_downtime: self.max_downtime.map(std::time::Duration::from_secs),
            require_consistent: self.require_consistent,
            stop_timeout_secs: self.stop_timeout,
            ready_timeout_secs: self.ready_timeout,
        }
    }
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
    let lock = volsnap::lock::acquire(state_dir, &command_line())?;
    match volsnap::journal::recover(state_dir, &volsnap::storage::SystemRunner, false) {
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
