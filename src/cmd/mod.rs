//! One subcommand per file; each turns its arguments into library calls and
//! prints the result. `run` returns the exit status.

mod backup;
mod contents;
mod copy;
mod daemon;
mod drill;
mod export;
mod init;
mod job;
mod key;
mod list;
mod plan;
mod prune;
mod recover;
mod repair;
mod repo;
mod restore;
mod serve;
mod snapshot;
mod verify;

use crate::cli::{Command, HostArgs, SelectionArgs, StackFilterArgs, StrategyArgs};
use anyhow::{Context, Result};
use volsnap::discovery::Selection;
use volsnap::plan::PlanOptions;
use volsnap::repo::Scope;
use volsnap::usage;

pub fn run(command: Command, keys: &crate::cli::KeyArgs) -> Result<i32> {
    volsnap::repo::keys::set_default(volsnap::repo::keys::KeySources {
        identity: keys.identity.clone(),
        write_key: keys.write_key.clone(),
        passphrase: keys.passphrase_file.clone(),
        key_dir: None,
    });
    match command {
        Command::Init(args) => {
            volsnap::repo::keys::set_state_dir(&args.state.state_dir);
            init::run(args, keys)
        }
        Command::Plan(args) => plan::run(args),
        Command::Backup(args) => {
            volsnap::repo::keys::set_state_dir(&args.state.state_dir);
            backup::run(args)
        }
        Command::List(args) => list::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Restore(args) => {
            volsnap::repo::keys::set_state_dir(&args.state.state_dir);
            restore::run(args)
        }
        Command::Export(args) => export::run(args),
        Command::Snapshot(args) => snapshot::take(args),
        Command::Snapshots { command } => snapshot::manage(command),
        Command::Rollback(args) => snapshot::rollback(args),
        Command::Recover(args) => recover::run(args),
        Command::Prune(args) => {
            volsnap::repo::keys::set_state_dir(&args.state.state_dir);
            prune::run(args)
        }
        Command::Protect(args) => prune::protect(args),
        Command::Forget(args) => {
            volsnap::repo::keys::set_state_dir(&args.state.state_dir);
            prune::forget(args)
        }
        Command::Host { command } => prune::host(command),
        Command::Run(args) => {
            volsnap::repo::keys::set_state_dir(&args.state.state_dir);
            job::run(args)
        }
        Command::Daemon(args) => {
            volsnap::repo::keys::set_state_dir(&args.state.state_dir);
            daemon::run(args)
        }
        Command::Status(args) => {
            volsnap::repo::keys::set_state_dir(&args.state.state_dir);
            job::status(args)
        }
        Command::Config { command } => job::config(command),
        Command::Systemd(args) => job::systemd(args),
        Command::Key { command } => key::run(command),
        Command::Repo { command } => repo::run(command),
        Command::Repair { command } => repair::run(command),
        Command::Copy(args) => {
            volsnap::repo::keys::set_state_dir(&args.state.state_dir);
            copy::run(args)
        }
        Command::Ls(args) => contents::ls(args),
        Command::Completions(args) => {
            let mut definition = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(
                args.shell,
                &mut definition,
                "volsnap",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Man(args) => {
            std::fs::create_dir_all(&args.dir)
                .with_context(|| format!("cannot create the directory {}", args.dir.display()))?;
            let definition = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_mangen::generate_to(definition, &args.dir)
                .with_context(|| format!("cannot write man pages into {}", args.dir.display()))?;
            outln!("volsnap: man pages written into {}", args.dir.display());
            Ok(0)
        }
        Command::Mount(args) => {
            volsnap::repo::keys::set_state_dir(&args.state.state_dir);
            let options = volsnap::mount::MountOptions {
                repo: args.repo,
                dir: args.dir,
                allow_other: args.allow_other,
                cache_bytes: args.cache_mib.saturating_mul(1 << 20),
            };
            let cancel = volsnap::cancel::Cancel::from_signals()?;
            volsnap::mount::run(options, cancel, &|text| outln!("{text}"))?;
            Ok(0)
        }
        Command::Serve(args) => {
            volsnap::repo::keys::set_state_dir(&args.state.state_dir);
            serve::run(args, keys)
        }
        Command::Diff(args) => contents::diff(args),
        Command::Drill(args) => {
            volsnap::repo::keys::set_state_dir(&args.state.state_dir);
            drill::run(args)
        }
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
            history: Vec::new(),
        }
    }
}
