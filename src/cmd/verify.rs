//! `volsnap verify`: is a backup intact?

use crate::cli::VerifyArgs;
use anyhow::Result;
use volsnap::cancel::Cancel;
use volsnap::repo::{Format, Repo};
use volsnap::restore::verify::Level;

pub fn run(args: VerifyArgs) -> Result<i32> {
    let cancel = Cancel::from_signals()?;
    let level = if args.deep {
        Level::Deep
    } else {
        Level::Entries
    };
    let scope = args.only.scope(&args.host)?;
    let (id, dir, report) = match volsnap::repo::detect(&args.repo) {
        Format::Chunked => {
            let repo = volsnap::repo::open_chunked(&args.repo)?;
            let (_, commit) = volsnap::repo::resolve_chunked(&repo, &args.id, &scope)?;
            let report = volsnap::restore::verify::verify_chunked(&repo, &commit, level, &cancel)?;
            (commit.id, None, report)
        }
        Format::Tar => {
            let repo = Repo::open(&args.repo)?;
            let (id, dir) = repo.resolve_in(&args.id, &scope)?;
            let report = volsnap::restore::verify::verify(&dir, level, &cancel)?;
            (id, Some(dir), report)
        }
    };
    if report.problems.is_empty() {
        if let Some(dir) = &dir {
            volsnap::restore::verify::record_verified(dir, args.deep);
        }
        let depth = if args.deep {
            format!(", {} files checked one by one", report.files_checked)
        } else {
            ", entry lists match the manifest".to_string()
        };
        if dir.is_some() {
            outln!(
                "backup {id} is intact: {} checksums match{depth}",
                report.archives_checked
            );
        } else {
            outln!(
                "backup {id} is intact: {} volume(s), {} files, every chunk in a pack that exists{}",
                report.archives_checked,
                report.files_checked,
                if args.deep { ", every file's content read and checked" } else { "" }
            );
        }
        return Ok(0);
    }
    eprintln!("volsnap: backup {id} FAILED verification:");
    for p in &report.problems {
        eprintln!("  - {p}");
    }
    Ok(1)
}
