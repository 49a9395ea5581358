//! A backup opened for reading, whatever its repository's format: the
//! content source that restore and drills take their volumes from.

use crate::cancel::Cancel;
use crate::repo::manifest::{Manifest, VolumeRecord, MANIFEST_FILE};
use crate::repo::{Format, Repo, Scope};
use crate::restore::verify::VerifyReport;
use crate::restore::Payload;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Where the backup's content is read from.
pub(crate) enum Source {
    Tar(PathBuf, crate::repo::manifest::Compression),
    Chunked {
        repo: std::sync::Arc<crate::repo::v2::Repository>,
        index: crate::repo::v2::index::Index,
        /// The commit object's id (where its notes are kept) and content.
        object: crate::repo::v2::id::Id,
        commit: Box<crate::repo::v2::objects::Commit>,
    },
}

impl Source {
    /// Where the backup's notes are kept.
    pub(crate) fn notes(&self) -> crate::repo::notes::NotesAt {
        use crate::repo::notes::NotesAt;
        match self {
            Source::Tar(dir, _) => NotesAt::Dir(dir.clone()),
            Source::Chunked { repo, object, .. } => NotesAt::of_commit(repo, *object),
        }
    }

    pub(crate) fn payload<'s>(&'s self, volume: &'s VolumeRecord) -> Result<Payload<'s>> {
        Ok(match self {
            Source::Tar(dir, compression) => Payload::Tar {
                archive: dir.join(&volume.archive),
                compression: *compression,
                volume,
            },
            Source::Chunked {
                repo,
                index,
                commit,
                ..
            } => Payload::Chunked {
                repo,
                index,
                volume: commit
                    .volumes
                    .iter()
                    .find(|v| v.name == volume.name)
                    .with_context(|| {
                        format!("backup {} has no volume {}", commit.id, volume.name)
                    })?,
            },
        })
    }
}

/// Opens backup `id` (or `latest` within `scope`) of the repository at
/// `root`: its id, content source, manifest (volume records without
/// entries for format 2) and a structure check for callers to act on.
pub(crate) fn open_backup(
    root: &Path,
    id: &str,
    scope: &Scope,
    cancel: &Cancel,
) -> Result<(String, Source, Manifest, VerifyReport)> {
    Ok(match crate::repo::detect(root) {
        Format::Tar => {
            let repo = Repo::open(root)?;
            let (id, dir) = repo.resolve_in(id, scope)?;
            let manifest = Manifest::load(&dir.join(MANIFEST_FILE))?;
            let check = crate::restore::verify::verify(
                &dir,
                crate::restore::verify::Level::Checksums,
                cancel,
            )?;
            (id, Source::Tar(dir, manifest.compression), manifest, check)
        }
        Format::Chunked => {
            let repo = crate::repo::open_chunked(root)?;
            repo.require_contents()?;
            let (object, commit) = crate::repo::resolve_chunked(&repo, id, scope)?;
            let check = crate::restore::verify::verify_chunked(
                &repo,
                &commit,
                crate::restore::verify::Level::Checksums,
                cancel,
            )?;
            let index = repo.load_index()?;
            let mut manifest = commit.summary();
            manifest.volumes = repo.volume_records(&index, &commit)?;
            (
                commit.id.clone(),
                Source::Chunked {
                    repo,
                    index,
                    object,
                    commit: Box::new(commit),
                },
                manifest,
                check,
            )
        }
    })
}
