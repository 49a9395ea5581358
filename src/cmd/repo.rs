//! `volsnap repo`: what a repository is, as this host pinned it.

use crate::cli::RepoCommand;
use anyhow::Result;
use volsnap::repo::{keys, pin};

pub fn run(command: RepoCommand) -> Result<i32> {
    let said = match command {
        RepoCommand::Show(args) => {
            keys::set_state_dir(&args.state.state_dir);
            pin::show(&args.repo)?
        }
        RepoCommand::Trust(args) => {
            keys::set_state_dir(&args.state.state_dir);
            pin::trust(&args.repo)?
        }
    };
    outln!("{said}");
    Ok(0)
}
