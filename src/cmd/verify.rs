//! `volsnap verify`: is a backup intact?

use crate::cli::VerifyArgs;
use anyhow::Result;
use volsnap::cancel::Cancel;
use volsnap::repo::notes::NotesAt;
use volsnap::repo::{Format, Repo};
use volsnap::restore::verify::Level;

pub fn run(args: VerifyArgs) -> Result<i32> {
    let cancel = Cancel::from_signals()?;
    let level = if args.deep {
        Level::Deep
    } else {
        Level::Entries
    };
    if args.all {
        return verify_all(&args, level, &cancel);
    }
    let scope = args.only.scope(&args.host)?;
    let (id, notes, report) = match volsnap::repo::detect(&args.repo) {
        Format::Chunked => {
            let repo = volsnap::repo::open_chunked(&args.repo)?;
            let (object, commit) = volsnap::repo::resolve_chunked(&repo, &args.id, &scope)?;
            let report = volsnap::restore::verify::verify_chunked(&repo, &commit, level, &cancel)?;
            let notes = NotesAt::of_commit(&repo, object);
            (commit.id, notes, report)
        }
        Format::Tar => {
            let repo = Repo::open(&args.repo)?;
            let (id, dir) = repo.resolve_in(&args.id, &scope)?;
            let report = volsnap::restore::verify::verify(&dir, level, &cancel)?;
            (id, NotesAt::Dir(dir), report)
        }
    };
    if report.problems.is_empty() {
        volsnap::restore::verify::record_verified(&notes, args.deep);
        let depth = if args.deep {
            format!(", {} files checked one by one", report.files_checked)
        } else {
            ", entry lists match the manifest".to_string()
        };
        if report.chunks_checked > 0 && report.files_checked == 0 {
            outln!(
                "backup {id} is intact as far as the write key shows: {} volume(s), {} chunk(s), each in a pack that exists; file contents and names need an identity (--identity FILE)",
                report.archives_checked,
                report.chunks_checked
            );
        } else if let NotesAt::Dir(_) = notes {
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
    volsnap::restore::verify::forget_verified(&notes);
    eprintln!("volsnap: backup {id} FAILED verification:");
    for p in &report.problems {
        eprintln!("  - {p}");
    }
    Ok(1)
}

/// `verify --all`: every backup of the repository.
fn verify_all(args: &VerifyArgs, level: Level, cancel: &Cancel) -> Result<i32> {
    let (problems, summary) = match volsnap::repo::detect(&args.repo) {
        Format::Chunked => {
            if args.deep {
                return Err(volsnap::usage!(
                    "--all --deep reads every backup's files one by one; on a format-2 repository use --all --read-data-subset 100, which reads every pack once"
                ));
            }
            let repo = volsnap::repo::open_chunked(&args.repo)?;
            let percent = args.read_data_subset.unwrap_or(0.0);
            let r = volsnap::restore::verify::verify_repository(&repo, percent, cancel)?;
            let what = if r.files == 0 && r.chunks > 0 {
                format!(
                    "{} chunks (write key only: files need an identity)",
                    r.chunks
                )
            } else {
                format!("{} files", r.files)
            };
            let summary = format!(
                "{} backup(s), {what}; {} packs present at their sizes, {} read in full ({}, {percent}%){}",
                r.backups,
                r.packs,
                r.packs_read,
                volsnap::fsutil::human_bytes(r.bytes_read),
                if r.unindexed > 0 {
                    format!("; {} pack(s) of killed backups no index names (prune collects them)", r.unindexed)
                } else {
                    String::new()
                }
            );
            (r.problems, summary)
        }
        Format::Tar => {
            if args.read_data_subset.is_some() {
                return Err(volsnap::usage!(
                    "{} is a format-1 repository, which has no packs; use --all --deep to read every archive",
                    args.repo.display()
                ));
            }
            let (backups, warnings) = volsnap::repo::list_any(&args.repo)?;
            let mut problems = warnings;
            let mut files = 0;
            for backup in &backups {
                let report =
                    volsnap::restore::verify::verify_by_id(&args.repo, &backup.id, level, cancel)?;
                files += report.files_checked;
                problems.extend(
                    report
                        .problems
                        .into_iter()
                        .map(|p| format!("backup {}: {p}", backup.id)),
                );
            }
            (
                problems,
                format!(
                    "{} backup(s){}",
                    backups.len(),
                    if args.deep {
                        format!(", {files} files checked one by one")
                    } else {
                        String::new()
                    }
                ),
            )
        }
    };
    if problems.is_empty() {
        outln!("repository {} is intact: {summary}", args.repo.display());
        return Ok(0);
    }
    eprintln!(
        "volsnap: repository {} FAILED verification ({summary}):",
        args.repo.display()
    );
    for p in &problems {
        eprintln!("  - {p}");
    }
    Ok(1)
}
