//! `volsnap recover`: replay the journals of runs that did not finish.

use crate::cli::RecoverArgs;
use anyhow::Result;
use volsnap::journal::recover;
use volsnap::storage::SystemRunner;

pub fn run(args: RecoverArgs) -> Result<i32> {
    let _lock = volsnap::lock::acquire(&args.state.state_dir, &super::command_line())?;
    let report = recover(&args.state.state_dir, &SystemRunner, args.dry_run)?;
    if report.is_empty() {
        outln!("nothing to recover: every earlier run finished cleanly");
    }
    for line in report {
        outln!("{line}");
    }
    Ok(0)
}
