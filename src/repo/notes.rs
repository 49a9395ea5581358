//! Notes about a backup: protected from prune, last verified, last drill.
//! They live beside a backup, never in it (docs/FORMAT.md, "Notes about a
//! backup"): files in a format-1 backup's directory; objects
//! `notes/<commit object>/<kind>-<id>` in format 2, where objects are
//! immutable, so a newer note is a new object and the newest counts.

use super::v2::crypto::KeyRing;
use super::v2::id::Id;
use super::v2::Repository;
use super::{BackupEntry, Format};
use crate::backend::Backend;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The kinds of notes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// `protect`: prune never deletes the backup.
    Protected,
    /// `{"verified_at", "deep"}` of the last passing verification.
    Verified,
    /// The report of the last recovery drill.
    Drill,
}

impl Note {
    /// The file name in a format-1 backup.
    pub fn file(self) -> &'static str {
        match self {
            Note::Protected => "PROTECTED",
            Note::Verified => "VERIFIED",
            Note::Drill => "drill.json",
        }
    }

    /// The object name prefix in format 2.
    fn prefix(self) -> &'static str {
        match self {
            Note::Protected => "protected-",
            Note::Verified => "verified-",
            Note::Drill => "drill-",
        }
    }
}

/// What a sealed note is authenticated as: the backup it is about and its
/// kind, so that a note moved onto another backup (a `verified` one onto a
/// damaged backup) or renamed to another kind no longer opens.
fn sealed_as(commit: &Id, note: Note) -> String {
    format!("notes:{commit}:{}", note.prefix().trim_end_matches('-'))
}

/// Where one backup's notes are kept.
pub enum NotesAt {
    Dir(PathBuf),
    Objects {
        backend: Arc<dyn Backend>,
        commit: Id,
        /// The write key of an encrypted repository: notes are sealed
        /// with it (a drill report names services and commands).
        seal: Option<Arc<KeyRing>>,
    },
}

impl BackupEntry {
    /// Where this backup's notes are kept.
    pub fn notes(&self) -> Result<NotesAt> {
        Ok(match self.format {
            Format::Tar => NotesAt::Dir(self.dir.clone()),
            Format::Chunked => {
                // A format-2 entry's `dir` is `<root>/snapshots/<commit>`.
                let root = self
                    .dir
                    .parent()
                    .and_then(Path::parent)
                    .context("internal error: a format-2 backup without its repository")?;
                let commit = self
                    .dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .context("internal error: a format-2 backup without its commit")?;
                NotesAt::Objects {
                    backend: crate::backend::open(root)?,
                    commit: Id::parse(commit)?,
                    seal: super::keys::sealing_for(root)?,
                }
            }
        })
    }

    pub fn protected(&self) -> bool {
        self.notes()
            .is_ok_and(|at| at.read(Note::Protected).is_some())
    }
}

impl NotesAt {
    /// The notes of commit object `commit` of `repo`.
    pub fn of_commit(repo: &Repository, commit: Id) -> Self {
        NotesAt::Objects {
            backend: repo.backend().clone(),
            commit,
            seal: repo.sealing_shared(),
        }
    }

    fn objects(
        backend: &Arc<dyn Backend>,
        commit: &Id,
        note: Note,
    ) -> Result<Vec<crate::backend::ObjectInfo>> {
        let dir = format!("notes/{commit}");
        let mut found: Vec<_> = backend
            .list(&dir)?
            .into_iter()
            .filter(|o| {
                o.name
                    .rsplit('/')
                    .next()
                    .is_some_and(|n| n.starts_with(note.prefix()))
            })
            .collect();
        found.sort_by_key(|o| o.modified);
        Ok(found)
    }

    /// The note's content (in format 2 the newest that opens), if there is
    /// one. Notes that cannot be read count as absent: one planted newer
    /// note of junk never hides a real one (a protection, say).
    pub fn read(&self, note: Note) -> Option<Vec<u8>> {
        match self {
            NotesAt::Dir(dir) => std::fs::read(dir.join(note.file())).ok(),
            NotesAt::Objects {
                backend,
                commit,
                seal,
            } => Self::objects(backend, commit, note)
                .ok()?
                .iter()
                .rev()
                .find_map(|object| {
                    let bytes = backend.read(&object.name).ok()?;
                    match seal {
                        Some(key) => key.open(&sealed_as(commit, note), &bytes).ok(),
                        None => Some(bytes),
                    }
                }),
        }
    }

    /// Writes the note (replacing an older one of its kind).
    pub fn write(&self, note: Note, bytes: &[u8]) -> Result<()> {
        self.write_named(note, bytes).map(|_| ())
    }

    /// [`Self::write`], and in format 2 the object's name (which an
    /// immutable repository retains for a protection).
    pub fn write_named(&self, note: Note, bytes: &[u8]) -> Result<Option<String>> {
        match self {
            NotesAt::Dir(dir) => {
                crate::fsutil::replace_file(&dir.join(note.file()), bytes).map(|()| None)
            }
            NotesAt::Objects {
                backend,
                commit,
                seal,
            } => {
                let older = Self::objects(backend, commit, note)?;
                let sealed;
                let bytes = match seal {
                    Some(key) => {
                        sealed = key.seal(&sealed_as(commit, note), bytes)?;
                        &sealed[..]
                    }
                    None => bytes,
                };
                let name = format!("notes/{commit}/{}{}", note.prefix(), Id::digest(bytes));
                backend.write(&name, bytes)?;
                for o in older.into_iter().filter(|o| o.name != name) {
                    // Object Lock may keep an older one: it stays, harmless.
                    if let Err(e) = backend.delete(&o.name) {
                        tracing::debug!("cannot delete the older note {}: {e:#}", o.name);
                    }
                }
                Ok(Some(name))
            }
        }
    }

    /// Removes every note of this kind.
    pub fn remove(&self, note: Note) -> Result<()> {
        match self {
            NotesAt::Dir(dir) => match std::fs::remove_file(dir.join(note.file())) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e)
                    .with_context(|| format!("cannot remove {}", dir.join(note.file()).display())),
                _ => Ok(()),
            },
            NotesAt::Objects {
                backend, commit, ..
            } => {
                for o in Self::objects(backend, commit, note)? {
                    backend.delete(&o.name)?;
                }
                Ok(())
            }
        }
    }
}

/// Removes every note of a deleted format-2 backup.
pub fn remove_all(backend: &dyn Backend, commit: &Id) -> Result<()> {
    for o in backend.list(&format!("notes/{commit}"))? {
        backend.delete(&o.name)?;
    }
    Ok(())
}
