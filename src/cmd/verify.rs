//! `volsnap verify`: is a backup intact?

use crate::cli::VerifyArgs;
use anyhow::Result;
use volsnap::cancel::Cancel;
use volsnap::repo::Repo;
use volsnap::restore::verify::Level;

pub fn run(args: VerifyArgs) -> Result<i32> {
    let repo = Repo::open(&args.repo)?;
    let (id, dir) = repo.resolve_in(&args.id, &args.only.scope(&args.host)?)?;
    let cancel = Cancel::from_signals()?;
    let level = if args.deep {
        Level::Deep
    } else {
        Level::Entries
    };
    let report = volsnap::restore::verify::verify(&dir, level, &cancel)?;
    if report.problems.is_empty() {
        volsnap::restore::verify::record_verified(&dir, args.deep);
        let depth = if args.deep {
            format!(", {} files checked one by one", report.files_checked)
        } else {
            ", entry lists match the manifest".to_string()
        };
        outln!(
            "backup {id} is intact: {} checksums match{depth}",
            report.archives_checked
        );
        return Ok(0);
    }
    eprintln!("volsnap: backup {id} FAILED verification:");
    for p in &report.problems {
        eprintln!("  - {p}");
    }
    Ok(1)
}
