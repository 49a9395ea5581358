//! `volsnap recover`: replay the journals of runs that did not finish.

use crate::cli::RecoverArgs;
use anyhow::Result;
use volsnap::journal::{give_up, recover};
use volsnap::storage::SystemRunner;

pub fn run(args: RecoverArgs) -> Result<i32> {
    let _lock = volsnap::lock::acquire(&args.state.state_dir, &volsnap::jobs::command_line())?;
    if !args.give_up.is_empty() {
        for run in &args.give_up {
            for line in give_up(&args.state.state_dir, run)? {
                outln!("{line}");
            }
        }
        return Ok(0);
    }
    let report = recover(&args.state.state_dir, &SystemRunner, args.dry_run)?;
    if report.is_empty() {
        outln!("nothing to recover: every earlier run finished cleanly");
    }
    for line in report {
        outln!("{line}");
    }
    Ok(0)
}
