//! `volsnap export`: a backup as a tar stream on stdout.

use crate::cli::ExportArgs;
use anyhow::Result;
use std::io::IsTerminal;
use volsnap::cancel::Cancel;

pub fn run(args: ExportArgs) -> Result<i32> {
    if std::io::stdout().is_terminal() {
        return Err(volsnap::usage!(
            "export writes a tar stream to stdout, not to a terminal: pipe it (volsnap export … | tar -x -C DIR) or redirect it to a file"
        ));
    }
    let cancel = Cancel::from_signals()?;
    let scope = args.only.scope(&args.host)?;
    let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let entries = volsnap::restore::export::export_backup(
        &args.repo,
        &args.id,
        &scope,
        args.volume.as_deref(),
        out,
        &cancel,
    )?;
    eprintln!("volsnap: exported {entries} entries");
    Ok(0)
}
