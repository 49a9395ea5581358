//! `volsnap key`: an encrypted repository's recipients and write key.

use crate::cli::KeyCommand;
use anyhow::Result;
use volsnap::repo::keys;

pub fn run(command: KeyCommand) -> Result<i32> {
    let said = match command {
        KeyCommand::List(args) => {
            keys::set_state_dir(&args.state.state_dir);
            keys::describe(&args.repo)?
        }
        KeyCommand::AddRecipient { repo, recipients } => {
            keys::set_state_dir(&repo.state.state_dir);
            keys::change_recipients(&repo.repo, &recipients, &[])?
        }
        KeyCommand::RemoveRecipient { repo, recipients } => {
            keys::set_state_dir(&repo.state.state_dir);
            keys::change_recipients(&repo.repo, &[], &recipients)?
        }
        KeyCommand::Rotate(args) => {
            keys::set_state_dir(&args.state.state_dir);
            keys::rotate(&args.repo)?
        }
    };
    outln!("{said}");
    Ok(0)
}
