//! `volsnap copy`: backups of one repository copied into another.

use crate::cli::CopyArgs;
use anyhow::Result;
use volsnap::cancel::Cancel;
use volsnap::jobs::copy::{copy_backups, describe};

pub fn run(args: CopyArgs) -> Result<i32> {
    let cancel = Cancel::from_signals()?;
    let scope = args.only.scope(&args.host)?;
    let copied = copy_backups(&args.from, &args.to, &args.ids, &scope, &cancel)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&copied)?);
    } else {
        outln!("{}", describe(&copied, &args.to));
        for id in &copied.copied {
            outln!("  copied {id}");
        }
    }
    Ok(0)
}
