//! Restore: extract a volume archive into a target directory, safely.
//!
//! Everything is extracted into a fresh private staging directory inside the
//! target, checking each entry against the manifest and each file's SHA-256
//! as it is written. Entries that would land outside the staging directory
//! (absolute paths, `..`, writing through a symlink, hard links to outside)
//! are refused, as are device nodes and setuid/setgid files unless allowed.
//! Only when the whole archive checked out is the old content moved aside,
//! the new content moved in, and the old content deleted, so a failed
//! restore leaves the previous content as it was.

pub mod export;
pub mod verify;
mod write;

use crate::archive::{entry_path, entry_xattrs, link_target, ArchiveReader, EntryChecker};
use crate::beneath::{open_path, proc_fd_path, At, Beneath};
use crate::cancel::Cancel;
use crate::repo::manifest::{Compression, EntryKind, FileEntry, VolumeRecord};
use crate::repo::v2::id::Id;
use crate::repo::v2::index::Index;
use crate::repo::v2::objects::CommitVolume;
use crate::repo::v2::tree::{TreeEntry, TreeReader};
use crate::repo::v2::Repository;
use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

/// Prefix of the staging directory inside the target.
pub const STAGING_PREFIX: &str = ".volsnap-restore-";
/// Prefix of the directory the previous content is moved to during the swap.
pub const ASIDE_PREFIX: &str = ".volsnap-replaced-";

/// What restore may do beyond plain files, directories and links.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Allow device nodes and setuid/setgid files.
    pub allow_special: bool,
}

/// What a restore wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct RestoreStats {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Where a volume's content comes from.
pub enum Payload<'a> {
    /// A format-1 archive and its manifest record.
    Tar {
        archive: PathBuf,
        compression: Compression,
        volume: &'a VolumeRecord,
    },
    /// A format-2 manifest stream and its chunks.
    Chunked {
        repo: &'a Repository,
        index: &'a Index,
        volume: &'a CommitVolume,
    },
}

impl Payload<'_> {
    fn name(&self) -> &str {
        match self {
            Payload::Tar { volume, .. } => &volume.name,
            Payload::Chunked { volume, .. } => &volume.name,
        }
    }
}

/// One volume of a restore: what it holds and where it goes.
pub struct VolumeRestore<'a> {
    pub payload: Payload<'a>,
    pub target: PathBuf,
    /// Only these entries (raw paths; the root always), for `--include`.
    pub only: Option<&'a HashSet<Vec<u8>>>,
}

/// Whether an entry is restored: every one, or those `only` lists (and
/// the root).
fn wanted(only: Option<&HashSet<Vec<u8>>>, raw: &[u8]) -> bool {
    only.is_none_or(|keep| raw == b"." || raw.is_empty() || keep.contains(raw))
}

/// What a restore needs remembered so that a process killed at any instant
/// is put right by `volsnap recover`. The run's journal keeps these
/// (`crate::journal`); restore itself knows no run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryStep {
    /// Remove a staging directory that never got swapped in.
    RemoveStaging { path: PathBuf },
    /// Put a target's previous content back ([`roll_back_swap`]).
    Swap {
        target: PathBuf,
        staging: PathBuf,
        aside: PathBuf,
        old_names: Vec<OsString>,
    },
    /// The restore committed: finish deleting what it replaced
    /// ([`finish_restore`]).
    Finish {
        remove: Vec<PathBuf>,
        mtimes: Vec<(PathBuf, i64)>,
    },
}

/// Where [`restore_volumes`] records each step before taking it, and
/// discharges it after.
pub trait RecoveryLog {
    fn push(&mut self, step: &RecoveryStep) -> Result<()>;
    fn discharge(&mut self, step: &RecoveryStep) -> Result<()>;
}

/// A volume whose new content is staged inside its target.
struct Staged {
    target: PathBuf,
    staging: PathBuf,
    aside: PathBuf,
    root: Option<RootMeta>,
    stats: RestoreStats,
}

/// Restores several volumes as one: every volume is staged (extracted,
/// checked, flushed to disk) before any is touched, then all are swapped
/// in, then the old content is deleted. A failure in any volume leaves
/// every volume as it was.
///
/// With a journal every phase is recorded before it starts, so a run killed
/// at any instant, power loss included, is put right by `volsnap recover`:
/// killed before the commit record, every volume gets its old content back;
/// after it, the deletion of the old content is finished. Never a mix.
pub fn restore_volumes(
    items: &[VolumeRestore<'_>],
    options: RestoreOptions,
    cancel: &Cancel,
    progress: &dyn Fn(usize, u64),
    mut journal: Option<&mut (dyn RecoveryLog + '_)>,
) -> Result<Vec<RestoreStats>> {
    // 1. Stage every volume.
    let mut staged: Vec<Staged> = Vec::new();
    let mut staging_undos = Vec::new();
    let mut failure = None;
    for (index, item) in items.iter().enumerate() {
        let one = fault_point("stage", index).and_then(|()| {
            stage_volume(
                item,
                options,
                cancel,
                &|n| progress(index, n),
                journal.as_deref_mut(),
            )
        });
        match one {
            Ok((one, undo)) => {
                staged.push(one);
                staging_undos.push(undo);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failure {
        for (one, undo) in staged.iter().zip(&staging_undos) {
            let _ = fs::remove_dir_all(&one.staging);
            if let Some(j) = journal.as_deref_mut() {
                let _ = j.discharge(undo);
            }
        }
        return Err(e.context("restore failed; every volume was left as it was"));
    }

    // 2. Swap every volume in; on any failure put every one back.
    let mut swaps = Vec::new();
    for one in &staged {
        let old_names: Vec<OsString> = list_names(&one.target)?
            .into_iter()
            .filter(|n| !is_ours(n))
            .collect();
        let swap = RecoveryStep::Swap {
            target: one.target.clone(),
            staging: one.staging.clone(),
            aside: one.aside.clone(),
            old_names,
        };
        if let Some(j) = journal.as_deref_mut() {
            j.push(&swap)?;
        }
        swaps.push(swap);
    }
    let mut failure = None;
    for (index, (one, swap)) in staged.iter().zip(&swaps).enumerate() {
        let RecoveryStep::Swap { old_names, .. } = swap else {
            unreachable!("swaps holds RestoreSwap records only")
        };
        let swapped = fault_point("swap", index)
            .and_then(|()| swap_in(&one.target, &one.staging, &one.aside, old_names));
        if let Err(e) = swapped {
            failure = Some(e);
            break;
        }
    }
    if failure.is_none() {
        // The renames reach the disk before the commit record does.
        for one in &staged {
            if let Err(e) = crate::fsutil::syncfs(&one.target) {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failure {
        let mut rollback_errors = Vec::new();
        for (one, swap) in staged.iter().zip(&swaps) {
            let RecoveryStep::Swap { old_names, .. } = swap else {
                unreachable!("swaps holds RestoreSwap records only")
            };
            match roll_back_swap(&one.target, &one.staging, &one.aside, old_names) {
                Ok(()) => {
                    if let Some(j) = journal.as_deref_mut() {
                        let _ = j.discharge(swap);
                    }
                }
                Err(e) => rollback_errors.push(format!("{}: {e:#}", one.target.display())),
            }
        }
        if !rollback_errors.is_empty() {
            return Err(e.context(format!(
                "restore failed, and putting the previous content back failed too for {} (the journal is kept: 'volsnap recover' retries)",
                rollback_errors.join("; ")
            )));
        }
        for undo in &staging_undos {
            if let Some(j) = journal.as_deref_mut() {
                let _ = j.discharge(undo);
            }
        }
        return Err(e.context(
            "restore could not swap the new content in; every volume was put back as it was",
        ));
    }

    // 3. Commit: from here on, recovery finishes the restore instead of
    //    undoing it. One record for all volumes, so they commit together.
    let remove: Vec<PathBuf> = staged
        .iter()
        .flat_map(|one| [one.aside.clone(), one.staging.clone()])
        .collect();
    // Deleting changes each target's mtime: it is set again after.
    let mtimes: Vec<(PathBuf, i64)> = staged
        .iter()
        .filter_map(|one| {
            one.root
                .as_ref()
                .map(|(r, _)| (one.target.clone(), r.mtime))
        })
        .collect();
    let finish = RecoveryStep::Finish {
        remove: remove.clone(),
        mtimes: mtimes.clone(),
    };
    if let Some(j) = journal.as_deref_mut() {
        j.push(&finish)?;
        for undo in swaps.iter().chain(&staging_undos) {
            j.discharge(undo)?;
        }
    }
    for one in &mut staged {
        if let Some((record, xattrs)) = one.root.take() {
            let dir = File::from(Beneath::open(&one.target)?.root().try_clone_to_owned()?);
            write::apply_to_open(&dir, &record, &xattrs, &one.target.display().to_string())?;
        }
    }

    // 4. Delete the old content.
    fault_point("delete", 0)?;
    finish_restore(&remove, &mtimes)?;
    if let Some(j) = journal {
        j.discharge(&finish)?;
    }
    Ok(staged.into_iter().map(|one| one.stats).collect())
}

/// Restores one volume into `target` (created if missing), with no
/// journal: for scratch targets such as a drill's.
pub fn restore_volume(
    payload: Payload<'_>,
    target: &Path,
    options: RestoreOptions,
    cancel: &Cancel,
) -> Result<RestoreStats> {
    let item = VolumeRestore {
        payload,
        target: target.to_path_buf(),
        only: None,
    };
    let mut stats = restore_volumes(&[item], options, cancel, &|_, _| {}, None)?;
    Ok(stats.remove(0))
}

/// `target` made if missing and resolved: its parent as it resolves (a
/// path the host chose), the target itself a real directory, never a
/// symlink followed (`mkdir` does not follow one; the check after it does
/// not either, and everything later opens it with `O_NOFOLLOW`).
fn real_directory(target: &Path) -> Result<PathBuf> {
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        bail!("{} cannot be a restore target", target.display());
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let target = parent
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", parent.display()))?
        .join(name);
    match fs::create_dir(&target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot create restore target {}", target.display()))
        }
    }
    let meta = fs::symlink_metadata(&target)
        .with_context(|| format!("cannot inspect restore target {}", target.display()))?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        bail!(
            "the restore target {} is {}; volsnap never restores through one: remove it, or restore elsewhere",
            target.display(),
            if meta.file_type().is_symlink() { "a symbolic link" } else { "not a directory" }
        );
    }
    Ok(target)
}

/// Extracts one volume into a fresh staging directory inside its target.
fn stage_volume(
    item: &VolumeRestore<'_>,
    options: RestoreOptions,
    cancel: &Cancel,
    progress: &dyn Fn(u64),
    journal: Option<&mut (dyn RecoveryLog + '_)>,
) -> Result<(Staged, RecoveryStep)> {
    let target = real_directory(&item.target)?;
    let tag = format!(
        "{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    );
    let staging = target.join(format!("{STAGING_PREFIX}{tag}"));
    let aside = target.join(format!("{ASIDE_PREFIX}{tag}"));
    let remove_staging = RecoveryStep::RemoveStaging {
        path: staging.clone(),
    };
    let mut journal = journal;
    if let Some(j) = journal.as_deref_mut() {
        j.push(&remove_staging)?;
    }
    crate::fsutil::create_private_dir(&staging)?;
    let extracted = match &item.payload {
        Payload::Tar {
            archive,
            compression,
            volume,
        } => extract(
            archive,
            *compression,
            volume,
            &staging,
            options,
            item.only,
            cancel,
            progress,
        ),
        Payload::Chunked {
            repo,
            index,
            volume,
        } => extract_chunked(
            repo, index, volume, &staging, options, item.only, cancel, progress,
        ),
    };
    match extracted {
        Ok((stats, root)) => Ok((
            Staged {
                target,
                staging,
                aside,
                root,
                stats,
            },
            remove_staging,
        )),
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            if let Some(j) = journal {
                let _ = j.discharge(&remove_staging);
            }
            Err(e.context(format!(
                "restore of {} into {} failed; every target was left as it was",
                item.payload.name(),
                target.display()
            )))
        }
    }
}

/// Deletes what a committed restore replaced (and its emptied staging
/// directories), then sets each target's mtime from the backup again.
/// Idempotent: `recover` runs it again after a kill.
pub fn finish_restore(paths: &[PathBuf], mtimes: &[(PathBuf, i64)]) -> Result<()> {
    for path in paths {
        match fs::remove_dir_all(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| {
                    format!("cannot remove the replaced content at {}", path.display())
                })
            }
            _ => {}
        }
    }
    for (target, mtime) in mtimes {
        let time = nix::sys::time::TimeSpec::new(*mtime, 0);
        let dir = File::from(Beneath::open(target)?.root().try_clone_to_owned()?);
        nix::sys::stat::futimens(&dir, &time, &time)
            .with_context(|| format!("cannot set the modification time of {}", target.display()))?;
    }
    Ok(())
}

/// Where the crash tests act (feature `fault-injection`; nothing otherwise).
fn fault_point(phase: &str, index: usize) -> Result<()> {
    #[cfg(feature = "fault-injection")]
    crate::fault::during_restore(phase, index)?;
    let _ = (phase, index);
    Ok(())
}

/// Whether a name in a restore target is one of volsnap's own staging or
/// set-aside directories.
pub fn is_ours(name: &OsStr) -> bool {
    let name = name.as_bytes();
    name.starts_with(STAGING_PREFIX.as_bytes()) || name.starts_with(ASIDE_PREFIX.as_bytes())
}

fn list_names(dir: &Path) -> Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        names.push(entry.file_name());
    }
    Ok(names)
}

type Xattrs = Vec<(String, Vec<u8>)>;
type RootMeta = (FileEntry, Xattrs);

/// One entry of a backup on its way into the staging tree, already read
/// from its source (a tar archive, or a manifest stream and its chunks).
pub(crate) struct Incoming<'c> {
    /// The path as stored, and the record describing the entry.
    pub raw: Vec<u8>,
    pub record: FileEntry,
    /// Symlink or hard-link target.
    pub link: Vec<u8>,
    pub xattrs: Xattrs,
    /// A device node's (major, minor).
    pub device: (u64, u64),
    /// A regular file's content.
    pub content: Option<&'c mut dyn Read>,
}

/// Creates entries beneath the staging directory's descriptor, never
/// through a symlink, checking each file's SHA-256 as it is written.
/// Directory metadata is applied at the end, deepest first, so restrictive
/// modes and mtimes are not disturbed by the entries created inside.
pub(crate) struct Materializer<'p> {
    tree: Beneath,
    staging: PathBuf,
    volume: String,
    options: RestoreOptions,
    progress: &'p dyn Fn(u64),
    stats: RestoreStats,
    root: Option<RootMeta>,
    dirs: Vec<(PathBuf, FileEntry, Xattrs)>,
    /// Threads writing small files (taken when finished).
    writers: Option<write::Writers>,
}

impl<'p> Materializer<'p> {
    pub(crate) fn new(
        staging: &Path,
        volume: &str,
        options: RestoreOptions,
        progress: &'p dyn Fn(u64),
    ) -> Result<Self> {
        Ok(Self {
            tree: Beneath::open(staging)
                .with_context(|| format!("cannot open {}", staging.display()))?,
            staging: staging.to_path_buf(),
            volume: volume.to_string(),
            options,
            progress,
            stats: RestoreStats::default(),
            root: None,
            dirs: Vec::new(),
            writers: Some(write::Writers::start(volume)?),
        })
    }

    fn writers(&mut self) -> Result<&mut write::Writers> {
        self.writers
            .as_mut()
            .context("internal error: the restore is finished")
    }

    pub(crate) fn put(&mut self, incoming: Incoming<'_>) -> Result<()> {
        let Incoming {
            raw,
            record,
            link,
            xattrs,
            device,
            content,
        } = incoming;
        let options = self.options;
        let path = String::from_utf8_lossy(&raw).into_owned();
        let relative = safe_relative(&raw)?;
        if record.mode & 0o6000 != 0 && !options.allow_special {
            bail!("{path:?} is setuid or setgid; refusing it (pass --allow-special to restore such files)");
        }
        check_xattrs(&path, &xattrs, options)?;
        self.stats.entries += 1;
        if relative.as_os_str().is_empty() {
            self.root = Some((record, xattrs));
            return Ok(());
        }
        let at = self.tree.parent_of(&relative, true).map_err(|e| {
            anyhow!("backup entry {path:?} would be written through something that is not a directory inside the target (a symlink?); refusing it ({e})")
        })?;
        let created = |r: nix::Result<()>, what: &str| {
            r.with_context(|| format!("cannot create {what} {path:?}"))
        };
        match record.kind {
            EntryKind::Dir => {
                match nix::sys::stat::mkdirat(
                    &*at.dir,
                    at.name.as_os_str(),
                    Mode::from_bits_truncate(0o700),
                ) {
                    Err(Errno::EEXIST) => {
                        let existing =
                            fstatat(&*at.dir, at.name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
                        if SFlag::from_bits_truncate(existing.st_mode) & SFlag::S_IFMT
                            != SFlag::S_IFDIR
                        {
                            bail!("{path:?} is both a directory and something else in the backup");
                        }
                    }
                    other => created(other, "directory")?,
                }
                self.dirs.push((relative, record, xattrs));
            }
            EntryKind::File => {
                let content = content.with_context(|| format!("{path:?} has no content"))?;
                if record.size <= write::HANDED_OFF {
                    // Read whole (one byte more shows a longer content),
                    // written and checked by a writing thread.
                    let mut bytes = Vec::with_capacity(record.size as usize);
                    content
                        .take(record.size + 1)
                        .read_to_end(&mut bytes)
                        .context("cannot read the backup")?;
                    let len = bytes.len() as u64;
                    // A short content is named here, before the entries
                    // after it fail for the same reason.
                    write::check_length(&self.volume, &path, &record, len)?;
                    (self.progress)(len);
                    self.stats.files += 1;
                    self.stats.bytes += len;
                    let job = write::FileJob::new(&at, bytes, record, xattrs, path)?;
                    return self.writers()?.submit(job);
                }
                let mut file = write::create_file(&*at.dir, &at.name)
                    .with_context(|| format!("cannot create {path:?}"))?;
                // Never more than one byte past its size: a crafted chunk
                // list cannot fill the disk before the length check.
                let mut content = content.take(record.size + 1);
                let (digest, len) =
                    write::write_file(&mut content, &mut file, &path, self.progress)?;
                write::check_written(&self.volume, &path, &record, &digest, len)?;
                write::apply_to_open(&file, &record, &xattrs, &path)?;
                self.stats.files += 1;
                self.stats.bytes += len;
            }
            EntryKind::Symlink => {
                created(
                    nix::unistd::symlinkat(OsStr::from_bytes(&link), &*at.dir, at.name.as_os_str()),
                    "symlink",
                )?;
                apply_at(&at, &record, &xattrs, &path)?;
            }
            EntryKind::Hardlink => {
                // The source is resolved inside the staging tree like any
                // entry: a symlink on its way is refused, never followed.
                let shown = String::from_utf8_lossy(&link);
                let not_earlier = || {
                    anyhow!("hard link {path:?} points to {shown:?}, which is not an earlier regular file of the backup")
                };
                let source_rel = safe_relative(&link)?;
                // Its target may still be with a writing thread.
                self.writers()?.wait()?;
                let source = self
                    .tree
                    .parent_of(&source_rel, false)
                    .map_err(|_| not_earlier())?;
                let meta = fstatat(
                    &*source.dir,
                    source.name.as_os_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|_| not_earlier())?;
                if SFlag::from_bits_truncate(meta.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
                    return Err(not_earlier());
                }
                created(
                    nix::unistd::linkat(
                        &*source.dir,
                        source.name.as_os_str(),
                        &*at.dir,
                        at.name.as_os_str(),
                        AtFlags::empty(),
                    ),
                    "hard link",
                )?;
                // It shares the metadata of its target.
            }
            EntryKind::Fifo => {
                created(
                    nix::unistd::mkfifoat(
                        &*at.dir,
                        at.name.as_os_str(),
                        Mode::from_bits_truncate(0o600),
                    ),
                    "fifo",
                )?;
                apply_at(&at, &record, &xattrs, &path)?;
            }
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                if !options.allow_special {
                    bail!("{path:?} is a device node; refusing it (pass --allow-special to restore device nodes)");
                }
                let kind = if record.kind == EntryKind::CharDevice {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                created(
                    nix::sys::stat::mknodat(
                        &*at.dir,
                        at.name.as_os_str(),
                        kind,
                        Mode::from_bits_truncate(0o600),
                        nix::sys::stat::makedev(device.0, device.1),
                    ),
                    "device node",
                )?;
                apply_at(&at, &record, &xattrs, &path)?;
            }
        }
        Ok(())
    }

    /// Applies directory metadata and flushes the staging tree to disk.
    pub(crate) fn finish(mut self) -> Result<(RestoreStats, Option<RootMeta>)> {
        if let Some(writers) = self.writers.take() {
            writers.finish()?;
        }
        for (rel, record, xattrs) in self.dirs.iter().rev() {
            let dir = File::from(
                self.tree
                    .dir(rel)
                    .with_context(|| format!("cannot open {}", rel.display()))?,
            );
            write::apply_to_open(&dir, record, xattrs, &rel.to_string_lossy())?;
        }
        // Everything staged reaches the disk before anything is swapped in.
        nix::unistd::syncfs(self.tree.root())
            .with_context(|| format!("cannot flush {} to disk", self.staging.display()))?;
        Ok((self.stats, self.root))
    }
}

#[allow(clippy::too_many_arguments)]
fn extract(
    archive: &Path,
    compression: Compression,
    volume: &VolumeRecord,
    staging: &Path,
    options: RestoreOptions,
    only: Option<&HashSet<Vec<u8>>>,
    cancel: &Cancel,
    progress: &dyn Fn(u64),
) -> Result<(RestoreStats, Option<RootMeta>)> {
    let mut reader = ArchiveReader::open(archive, compression)?;
    let mut checker = EntryChecker::new(volume)?;
    let mut out = Materializer::new(staging, &volume.name, options, progress)?;
    for entry in reader.archive().entries()? {
        cancel.check()?;
        let mut entry = entry.map_err(|e| anyhow!("{}: archive is corrupt: {e}", volume.name))?;
        let tar_type = entry.header().entry_type();
        if tar_type == tar::EntryType::XGlobalHeader {
            continue;
        }
        let raw = entry_path(&entry);
        let path = String::from_utf8_lossy(&raw).into_owned();
        let record = checker.check(&raw, tar_type)?.clone();
        let link = match record.kind {
            EntryKind::Symlink | EntryKind::Hardlink => {
                let target = link_target(&entry, record.kind);
                checker.check_link(&record, target.as_deref())?;
                target.ok_or_else(|| anyhow!("link {path:?} has no target"))?
            }
            _ => Vec::new(),
        };
        let xattrs = entry_xattrs(&mut entry)?;
        let device = match record.kind {
            // Without --allow-special, put() refuses it before the numbers
            // matter.
            EntryKind::CharDevice | EntryKind::BlockDevice if options.allow_special => {
                let header = entry.header();
                (
                    header.device_major()?.unwrap_or(0).into(),
                    header.device_minor()?.unwrap_or(0).into(),
                )
            }
            _ => (0, 0),
        };
        if !wanted(only, &raw) {
            // Checked like every entry, not written; tar skips its data.
            continue;
        }
        let is_file = record.kind == EntryKind::File;
        out.put(Incoming {
            raw,
            record,
            link,
            xattrs,
            device,
            content: if is_file { Some(&mut entry) } else { None },
        })?;
    }
    checker.finish()?;
    let (digest, _) = reader.finish()?;
    if digest != volume.sha256 {
        bail!(
            "{}: archive SHA-256 is {digest}, the manifest says {}; the archive is corrupt",
            volume.name,
            volume.sha256
        );
    }
    out.finish()
}

/// Extracts a format-2 volume: its manifest stream, line by line, each
/// file's content fetched chunk by chunk from its packs.
#[allow(clippy::too_many_arguments)]
fn extract_chunked(
    repo: &Repository,
    index: &Index,
    volume: &CommitVolume,
    staging: &Path,
    options: RestoreOptions,
    only: Option<&HashSet<Vec<u8>>>,
    cancel: &Cancel,
    progress: &dyn Fn(u64),
) -> Result<(RestoreStats, Option<RootMeta>)> {
    // A second reader of the same stream fetches, decompresses and checks
    // the chunks ahead, in the order the files below consume them, while
    // this thread writes and hashes files.
    std::thread::scope(|scope| {
        let (ahead, chunks) = std::sync::mpsc::sync_channel(8);
        scope.spawn(move || {
            let mut lines = TreeReader::new(repo, index, &volume.tree, volume.tree_sha256);
            let mut chunks = Vec::new().into_iter();
            // A manifest that cannot be read ends the chunks here; the
            // reader below meets the same error and reports it.
            let ids = std::iter::from_fn(move || loop {
                if let Some(id) = chunks.next() {
                    return Some(id);
                }
                match lines.next_line::<TreeEntry>() {
                    // Files not restored are not fetched either.
                    Ok(Some(line))
                        if !line.entry.raw_path().is_ok_and(|raw| wanted(only, &raw)) => {}
                    Ok(Some(line)) => chunks = line.chunks.into_iter(),
                    _ => return None,
                }
            });
            repo.read_blobs_in_order(index, ids, &mut |fetched| {
                ahead.send(fetched.map_err(|e| format!("{e:#}"))).is_ok()
            });
        });
        let done = materialize_chunked(
            repo, index, volume, staging, options, only, cancel, progress, &chunks,
        );
        drop(chunks);
        done
    })
}

#[allow(clippy::too_many_arguments)]
fn materialize_chunked(
    repo: &Repository,
    index: &Index,
    volume: &CommitVolume,
    staging: &Path,
    options: RestoreOptions,
    only: Option<&HashSet<Vec<u8>>>,
    cancel: &Cancel,
    progress: &dyn Fn(u64),
    ahead: &std::sync::mpsc::Receiver<std::result::Result<Vec<u8>, String>>,
) -> Result<(RestoreStats, Option<RootMeta>)> {
    let mut lines = TreeReader::new(repo, index, &volume.tree, volume.tree_sha256);
    let mut out = Materializer::new(staging, &volume.name, options, progress)?;
    while let Some(line) = lines.next_line::<TreeEntry>()? {
        cancel.check()?;
        let raw = line.entry.raw_path()?.into_owned();
        if !wanted(only, &raw) {
            continue;
        }
        let link = match line.entry.kind {
            EntryKind::Symlink | EntryKind::Hardlink => line
                .entry
                .raw_target()?
                .with_context(|| format!("link {:?} has no target", line.entry.path))?
                .into_owned(),
            _ => Vec::new(),
        };
        let mut xattrs = Xattrs::new();
        for x in &line.xattrs {
            let name = match &x.name_hex {
                None => x.name.clone(),
                Some(h) => String::from_utf8(hex::decode(h)?).map_err(|_| {
                    anyhow!(
                        "{:?} has an extended attribute whose name is not UTF-8; volsnap cannot set it",
                        line.entry.path
                    )
                })?,
            };
            let value = hex::decode(&x.value_hex)
                .with_context(|| format!("{:?}: a malformed xattr value", line.entry.path))?;
            xattrs.push((name, value));
        }
        let device = (
            nix::sys::stat::major(line.rdev),
            nix::sys::stat::minor(line.rdev),
        );
        let mut content = ChunkReader {
            fetch: Fetch::Ahead(ahead),
            chunks: &line.chunks,
            next: 0,
            current: Vec::new(),
            position: 0,
        };
        let is_file = line.entry.kind == EntryKind::File;
        out.put(Incoming {
            raw,
            record: line.entry.clone(),
            link,
            xattrs,
            device,
            content: if is_file { Some(&mut content) } else { None },
        })?;
        if is_file && content.next < line.chunks.len() {
            bail!(
                "{}: file {:?} lists more chunks than its size",
                volume.name,
                line.entry.path
            );
        }
    }
    out.finish()
}

/// Where a [`ChunkReader`] gets its chunks.
enum Fetch<'a> {
    /// Reads each as it is needed (through a [`crate::repo::v2::BlobReader`]).
    Direct(&'a mut dyn FnMut(&Id) -> Result<Vec<u8>>),
    /// Takes each from a thread that fetches them ahead, in order.
    Ahead(&'a std::sync::mpsc::Receiver<std::result::Result<Vec<u8>, String>>),
}

/// A file's content, read chunk by chunk (each checked against its id).
pub(crate) struct ChunkReader<'a> {
    fetch: Fetch<'a>,
    chunks: &'a [Id],
    next: usize,
    current: Vec<u8>,
    position: usize,
}

impl<'a> ChunkReader<'a> {
    pub(crate) fn new(read: &'a mut dyn FnMut(&Id) -> Result<Vec<u8>>, chunks: &'a [Id]) -> Self {
        Self {
            fetch: Fetch::Direct(read),
            chunks,
            next: 0,
            current: Vec::new(),
            position: 0,
        }
    }
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.position == self.current.len() {
            let Some(id) = self.chunks.get(self.next) else {
                return Ok(0);
            };
            self.current = match &mut self.fetch {
                Fetch::Direct(read) => {
                    read(id).map_err(|e| std::io::Error::other(format!("{e:#}")))?
                }
                Fetch::Ahead(ahead) => ahead
                    .recv()
                    .map_err(|_| std::io::Error::other("the chunk reader stopped"))?
                    .map_err(std::io::Error::other)?,
            };
            self.position = 0;
            self.next += 1;
        }
        let n = buf.len().min(self.current.len() - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

fn check_xattrs(path: &str, xattrs: &Xattrs, options: RestoreOptions) -> Result<()> {
    if options.allow_special {
        return Ok(());
    }
    if let Some((name, _)) = xattrs
        .iter()
        .find(|(name, _)| name.starts_with("security.") || name.starts_with("trusted."))
    {
        bail!("{path:?} has the extended attribute {name} (privileges such as file capabilities); refusing it (pass --allow-special to restore such attributes)");
    }
    Ok(())
}

/// Turns an archive path into a relative path that stays inside the
/// target: no root, no `..`, nothing but plain names.
pub fn safe_relative(raw: &[u8]) -> Result<PathBuf> {
    let shown = String::from_utf8_lossy(raw);
    if raw == b"." {
        return Ok(PathBuf::new());
    }
    if raw.contains(&0) {
        bail!("archive entry {shown:?} has a NUL byte in its name; refusing it");
    }
    let mut out = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                bail!("archive entry {shown:?} is an absolute path; refusing to write outside the target")
            }
            Component::ParentDir => {
                bail!("archive entry {shown:?} contains '..'; refusing to write outside the target")
            }
        }
    }
    if out.as_os_str().is_empty() {
        bail!("archive entry {shown:?} has an empty name");
    }
    Ok(out)
}

/// Owner, attributes, mode and mtime of a symlink, FIFO or device node
/// just created at `at`: by name in its directory, never following it; the mode (not for symlinks)
/// through an `O_PATH` descriptor checked to be what was created.
fn apply_at(at: &At, record: &FileEntry, xattrs: &Xattrs, path: &str) -> Result<()> {
    let name = at.name.as_os_str();
    nix::unistd::fchownat(
        &*at.dir,
        name,
        Some(record.uid.into()),
        Some(record.gid.into()),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .with_context(|| format!("cannot set the owner of {path:?}"))?;
    for (xname, value) in xattrs {
        if let Err(e) = xattr::set(at.proc_path(), xname, value) {
            tracing::warn!("cannot restore extended attribute {xname} on {path:?}: {e}");
        }
    }
    if record.kind != EntryKind::Symlink {
        let node = open_path(at).with_context(|| format!("cannot open {path:?}"))?;
        let kind = node.metadata()?.file_type();
        if !(kind.is_fifo() || kind.is_char_device() || kind.is_block_device()) {
            bail!("{path:?} changed while it was restored; refusing to go on");
        }
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &proc_fd_path(node.as_fd()),
            Mode::from_bits_truncate(record.mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .with_context(|| format!("cannot set the mode of {path:?}"))?;
    }
    let mtime = nix::sys::time::TimeSpec::new(record.mtime, 0);
    nix::sys::stat::utimensat(
        &*at.dir,
        name,
        &mtime,
        &mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .with_context(|| format!("cannot set the modification time of {path:?}"))?;
    Ok(())
}

/// Replaces the content of `target` with that of `staging`: the old entries
/// (`old_names`) are moved aside, the new ones moved in. The old content
/// stays in `aside` until the restore commits ([`finish_restore`]). On
/// failure the previous content is put back.
fn swap_in(target: &Path, staging: &Path, aside: &Path, old_names: &[OsString]) -> Result<()> {
    let result = (|| -> Result<()> {
        // Every move is between descriptors of the target and of our two
        // directories in it: nothing can redirect a move by swapping one
        // of them for a symlink.
        let dirs = SwapDirs::open(target, staging, aside, true)?;
        let aside_fd = dirs.aside.as_ref().expect("created just now");
        for name in old_names {
            nix::fcntl::renameat(&dirs.target, name.as_os_str(), aside_fd, name.as_os_str())
                .with_context(|| format!("cannot move {} aside", target.join(name).display()))?;
        }
        for name in list_names(&proc_fd_path(dirs.staging.as_fd()))? {
            nix::fcntl::renameat(
                &dirs.staging,
                name.as_os_str(),
                &dirs.target,
                name.as_os_str(),
            )
            .with_context(|| format!("cannot move {} into place", target.join(&name).display()))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        roll_back_swap(target, staging, aside, old_names)
            .context("and putting the previous content back failed too")?;
        return Err(e.context(
            "restore could not swap the new content in; the previous content was put back",
        ));
    }
    Ok(())
}

/// The directories of a swap, open: the target, and the staging and
/// set-aside directories inside it (opened without following symlinks).
struct SwapDirs {
    target: std::os::fd::OwnedFd,
    staging: std::os::fd::OwnedFd,
    aside: Option<std::os::fd::OwnedFd>,
}

impl SwapDirs {
    /// With `create`, the set-aside directory is made (it must not exist);
    /// otherwise it is opened if it exists.
    fn open(target: &Path, staging: &Path, aside: &Path, create: bool) -> Result<SwapDirs> {
        let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let name_of = |p: &Path| {
            p.file_name()
                .map(OsStr::to_os_string)
                .ok_or_else(|| anyhow!("{} has no name", p.display()))
        };
        let target_fd = Beneath::open(target)
            .with_context(|| format!("cannot open {}", target.display()))?
            .root()
            .try_clone_to_owned()?;
        let open_in = |name: &OsStr| nix::fcntl::openat(&target_fd, name, dir_flags, Mode::empty());
        let staging_fd = open_in(&name_of(staging)?)
            .with_context(|| format!("cannot open {}", staging.display()))?;
        let aside_name = name_of(aside)?;
        let aside_fd = if create {
            nix::sys::stat::mkdirat(
                &target_fd,
                aside_name.as_os_str(),
                Mode::from_bits_truncate(0o700),
            )
            .with_context(|| format!("cannot create directory {}", aside.display()))?;
            Some(open_in(&aside_name).with_context(|| format!("cannot open {}", aside.display()))?)
        } else {
            match open_in(&aside_name) {
                Ok(fd) => Some(fd),
                Err(Errno::ENOENT) => None,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot open {}", aside.display()))
                }
            }
        };
        Ok(SwapDirs {
            target: target_fd,
            staging: staging_fd,
            aside: aside_fd,
        })
    }
}

/// Undoes an interrupted swap, whatever point it reached: entries that came
/// from the staging directory are removed, entries moved aside come back.
pub fn roll_back_swap(
    target: &Path,
    staging: &Path,
    aside: &Path,
    old_names: &[OsString],
) -> Result<()> {
    // Only a real directory there can be ours (a swap makes it with
    // mkdirat and moves only through its descriptor).
    if aside.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        let target_fd = Beneath::open(target)
            .with_context(|| format!("cannot open {}", target.display()))?
            .root()
            .try_clone_to_owned()?;
        let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let aside_name = aside
            .file_name()
            .ok_or_else(|| anyhow!("{} has no name", aside.display()))?;
        let aside_fd = nix::fcntl::openat(&target_fd, aside_name, dir_flags, Mode::empty())
            .with_context(|| format!("cannot open {}", aside.display()))?;
        for name in list_names(&proc_fd_path(target_fd.as_fd()))? {
            if is_ours(&name) {
                continue;
            }
            // New content: a name the target did not have, or one whose old
            // entry was already moved aside.
            let moved_aside =
                fstatat(&aside_fd, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).is_ok();
            if !old_names.contains(&name) || moved_aside {
                let path = target.join(&name);
                let removed = if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed.with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        for name in list_names(&proc_fd_path(aside_fd.as_fd()))? {
            nix::fcntl::renameat(&aside_fd, name.as_os_str(), &target_fd, name.as_os_str())
                .with_context(|| format!("cannot move {} back", target.join(&name).display()))?;
        }
        nix::unistd::unlinkat(
            &target_fd,
            aside_name,
            nix::unistd::UnlinkatFlags::RemoveDir,
        )
        .with_context(|| format!("cannot remove {}", aside.display()))?;
    }
    match fs::remove_dir_all(staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", staging.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A content that never ends, counting what is read of it.
    struct Endless(u64);

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            buf.fill(b'a');
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
    }

    /// A content longer than its record (a crafted chunk list repeating
    /// one chunk) is refused after one byte more than the record's size,
    /// small file or large: it cannot fill the target's disk first.
    #[test]
    fn a_content_longer_than_its_record_is_read_one_byte_past_it() {
        for size in [1000u64, 3 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let mut out =
                Materializer::new(dir.path(), "vol", RestoreOptions::default(), &|_| {}).unwrap();
            let record = FileEntry {
                path: "big".into(),
                path_hex: None,
                kind: EntryKind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 0,
                size,
                sha256: Some("0".repeat(64)),
                target: None,
                target_hex: None,
            };
            let mut content = Endless(0);
            let refused = out.put(Incoming {
                raw: b"big".to_vec(),
                record,
                link: Vec::new(),
                xattrs: Xattrs::new(),
                device: (0, 0),
                content: Some(&mut content),
            });
            let err = refused.expect_err("a longer content was restored");
            assert!(
                format!("{err:#}").contains("holds more than its"),
                "{err:#}"
            );
            assert!(
                content.0 <= size + (1 << 16),
                "read {} of {size}",
                content.0
            );
        }
    }

    #[test]
    fn interrupted_swaps_roll_back_at_every_point() {
        // Old content {a, b}; new content {b, c}. Interrupt after each move.
        let old = ["a", "b"].map(OsString::from);
        for moves_done in 0..=4 {
            let dir = tempfile::tempdir().unwrap();
            let (target, staging, aside) = (
                dir.path().join("t"),
                dir.path().join("t/.volsnap-restore-1"),
                dir.path().join("t/.volsnap-replaced-1"),
            );
            fs::create_dir_all(&staging).unwrap();
            fs::create_dir(&aside).unwrap();
            for n in ["a", "b"] {
                fs::write(target.join(n), format!("old {n}")).unwrap();
            }
            for n in ["b", "c"] {
                fs::write(staging.join(n), format!("new {n}")).unwrap();
            }
            let moves = [
                ("a", &target, &aside),
                ("b", &target, &aside),
                ("b", &staging, &target),
                ("c", &staging, &target),
            ];
            for (name, from, to) in moves.iter().take(moves_done) {
                fs::rename(from.join(name), to.join(name)).unwrap();
            }
            roll_back_swap(&target, &staging, &aside, &old).unwrap();
            let mut names = list_names(&target).unwrap();
            names.sort();
            assert_eq!(names, ["a", "b"], "after {moves_done} moves");
            assert_eq!(fs::read(target.join("a")).unwrap(), b"old a");
            assert_eq!(
                fs::read(target.join("b")).unwrap(),
                b"old b",
                "after {moves_done} moves"
            );
        }
    }

    #[test]
    fn a_symlink_planted_where_the_old_content_goes_is_never_moved_into() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        let outside = dir.path().join("outside");
        let staging = target.join(".volsnap-restore-1");
        let aside = target.join(".volsnap-replaced-1");
        fs::create_dir_all(&staging).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(target.join("a"), b"old a").unwrap();
        fs::write(staging.join("a"), b"new a").unwrap();
        std::os::unix::fs::symlink(&outside, &aside).unwrap();
        let old = [OsString::from("a")];
        assert!(swap_in(&target, &staging, &aside, &old).is_err());
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing moved out"
        );
        assert_eq!(fs::read(target.join("a")).unwrap(), b"old a");
    }

    #[test]
    fn relative_paths_stay_inside() {
        assert_eq!(safe_relative(b"a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(safe_relative(b"./a").unwrap(), PathBuf::from("a"));
        assert_eq!(safe_relative(b".").unwrap(), PathBuf::new());
        assert_eq!(
            safe_relative(b"\xff/\xfe").unwrap().as_os_str().as_bytes(),
            b"\xff/\xfe"
        );
        assert!(safe_relative(b"../x").is_err());
        assert!(safe_relative(b"a/../../x").is_err());
        assert!(safe_relative(b"/etc/passwd").is_err());
        assert!(safe_relative(b"a\0b").is_err());
    }
}
