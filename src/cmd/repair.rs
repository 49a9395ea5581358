//! `volsnap repair index`: the index rebuilt from the packs.

use crate::cli::RepairCommand;
use anyhow::Result;
use volsnap::cancel::Cancel;

pub fn run(command: RepairCommand) -> Result<i32> {
    let RepairCommand::Index(args) = command;
    volsnap::repo::keys::set_state_dir(&args.state.state_dir);
    let cancel = Cancel::from_signals()?;
    let _lock = volsnap::jobs::begin_run(&args.state.state_dir)?;
    let repo = volsnap::repo::open_chunked(&args.repo)?;
    let repaired =
        volsnap::repo::v2::repair::repair_index(&repo, &volsnap::execute::this_host(), &cancel)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&repaired)?);
        return Ok(0);
    }
    outln!(
        "rebuilt the index of {}: {} pack(s), {} blob(s) in {} new index object(s), replacing {}",
        args.repo.display(),
        repaired.packs,
        repaired.blobs,
        repaired.indexes_written,
        repaired.indexes_replaced
    );
    if !repaired.left_out.is_empty() {
        outln!(
            "left out, as damaged ({}; volsnap verify --all names the backups that needed them):",
            repaired.left_out.len()
        );
        for why in repaired.left_out.iter().take(20) {
            outln!("  {}", volsnap::text::escape(why));
        }
    }
    Ok(0)
}
