//! Volume archives: one standard tar per volume, streamed with bounded memory.
//!
//! Writing: walk the tree (sorted, never following symlinks, staying on one
//! filesystem) → tar headers, and each file read once straight into the
//! pipeline's chunks → hash each file and compress (a thread) → hash the
//! archive and write it (another thread); see `stage.rs`. Reading mirrors it
//! for `verify --deep` and `restore`.
//!
//! The archive is plain GNU-format tar: GNU tar extracts it. Hard links are
//! stored as links, symlinks as symlinks, extended attributes as PAX
//! `SCHILY.xattr.*` records (GNU tar's `--xattrs` reads them).

use crate::cancel::Cancel;
use crate::error::Cancelled;
use crate::hashing::HashingReader;
use crate::repo::manifest::{Compression, EntryKind, FileEntry};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xattr::FileExt as _;

pub use exclude::Exclude;

pub mod chunk;
pub mod chunked;
pub mod exclude;
mod guard;
mod parent;
mod prefetch;
mod readers;
mod stage;

const IO_BUFFER: usize = 1 << 20;
/// Prefix of the PAX records that carry extended attributes.
pub const XATTR_PAX_PREFIX: &str = "SCHILY.xattr.";

/// How archives are compressed.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveOptions {
    pub compression: Compression,
    /// zstd level (1–19) or gzip level (1–9).
    pub level: i32,
    /// zstd worker threads (0: compress on the calling thread).
    pub threads: u32,
    /// Read at most this many bytes per second (`--bwlimit`).
    pub bwlimit: Option<u64>,
}

/// zstd level by default: 1, zstd's fast strategy. On the Milvus-shaped
/// benchmark data its archives are within 0.1% of level 3's, at about 1.5
/// times the speed, and in a cold backup speed is downtime.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

impl Default for ArchiveOptions {
    fn default() -> Self {
        Self {
            compression: Compression::Zstd,
            level: DEFAULT_ZSTD_LEVEL,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            bwlimit: None,
        }
    }
}

impl ArchiveOptions {
    /// Options for `compression` at `level` (its default when `None`),
    /// refusing a level the compressor does not have.
    pub fn new(compression: Compression, level: Option<i32>) -> Result<Self> {
        let mut options = Self {
            compression,
            ..Self::default()
        };
        let range = if compression == Compression::Gzip {
            1..=9
        } else {
            1..=19
        };
        match level {
            Some(level) if !range.contains(&level) => {
                return Err(crate::usage!(
                    "--level {level} is out of range for {compression:?} ({range:?})"
                ))
            }
            Some(level) => options.level = level,
            None if compression == Compression::Gzip => options.level = 6,
            None => {}
        }
        Ok(options)
    }
}

/// What was written, for the manifest.
#[derive(Debug, Default)]
pub struct ArchiveSummary {
    pub sha256: String,
    pub archive_bytes: u64,
    pub files: u64,
    pub bytes: u64,
    pub entries: Vec<FileEntry>,
    pub changed_during_read: Vec<String>,
    pub vanished_during_read: Vec<String>,
    /// Sockets: not data, noted only.
    pub skipped: Vec<String>,
    /// Data that is not in the archive: nested filesystems, subvolumes,
    /// datasets. The backup cannot then claim to be consistent.
    pub left_out: Vec<String>,
    /// Entries left out on purpose (exclude patterns), with what they held.
    pub excluded: u64,
}

/// The inode number of the stand-in directory that a btrfs snapshot shows
/// where the snapshotted subvolume had a nested subvolume (no real btrfs
/// directory has it: theirs start at 256).
const BTRFS_EMPTY_SUBVOL_DIR: u64 = 2;

/// Writes the archive of the tree at `source` to the new file `dest`.
/// `progress` is called with the number of content bytes read since the
/// last call.
pub fn write_archive(
    source: &Path,
    dest: &Path,
    options: &ArchiveOptions,
    exclude: &Exclude,
    cancel: &Cancel,
    progress: &dyn Fn(u64),
) -> Result<ArchiveSummary> {
    let pipeline = stage::start(crate::fsutil::create_private(dest)?, options)?;
    let mut builder = tar::Builder::new(pipeline);
    builder.follow_symlinks(false);
    let mut tar = TarEmitter {
        builder: &mut builder,
        entries: Vec::new(),
        hashed_entries: Vec::new(),
    };
    let mut summary = walk(source, &mut tar, options.bwlimit, exclude, cancel, progress)?;
    let TarEmitter {
        entries,
        hashed_entries,
        ..
    } = tar;
    summary.entries = entries;

    let write_err = || format!("cannot write archive {}", dest.display());
    let ((file, sha256, archive_bytes), digests) = builder
        .into_inner()
        .and_then(stage::Stage::finish)
        .with_context(write_err)?;
    if digests.len() != hashed_entries.len() {
        bail!(
            "archiving {} went wrong: {} file digests for {} files (a bug; the backup is not kept)",
            source.display(),
            digests.len(),
            hashed_entries.len()
        );
    }
    for (index, digest) in hashed_entries.into_iter().zip(digests) {
        summary.entries[index].sha256 = Some(digest);
    }
    file.sync_all().with_context(write_err)?;
    summary.sha256 = sha256;
    summary.archive_bytes = archive_bytes;
    Ok(summary)
}

/// Walks the tree at `source`, handing every entry to `emit`; what was
/// seen (counts, files that changed or vanished while read, what was left
/// out). The summary's `entries` are the emitter's business.
pub(crate) fn walk(
    source: &Path,
    emit: &mut dyn Emit,
    bwlimit: Option<u64>,
    exclude: &Exclude,
    cancel: &Cancel,
    progress: &dyn Fn(u64),
) -> Result<ArchiveSummary> {
    // Read ahead, but not under a rate limit (the hints would read past
    // it).
    let prefetch = if bwlimit.is_none() {
        prefetch::Prefetcher::start()
    } else {
        None
    };
    let mut walker = Walker {
        prefetch,
        emit,
        exclude,
        summary: ArchiveSummary::default(),
        hard_links: HashMap::new(),
        throttle: Throttle::new(bwlimit),
        cancel,
        progress,
    };
    let walked = walker.walk(source).and_then(|()| {
        let changed = walker.emit.finish_reads()?;
        walker
            .summary
            .changed_during_read
            .extend(changed.iter().map(|rel| display(rel)));
        Ok(())
    });
    walked.map_err(|e| {
        unwrap_cancelled(e).context(format!("archiving {} failed", source.display()))
    })?;
    Ok(walker.summary)
}

/// Turns an I/O error that carries [`Cancelled`] back into it, so callers
/// can tell an interruption from a failure.
fn unwrap_cancelled(err: anyhow::Error) -> anyhow::Error {
    let cancelled = err
        .chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.get_ref().is_some_and(|inner| inner.is::<Cancelled>()));
    if cancelled {
        anyhow::Error::new(Cancelled)
    } else {
        err
    }
}

/// Extended attributes of one entry: names and values.
pub(crate) type Xattrs = Vec<(std::ffi::OsString, Vec<u8>)>;

/// Where the walk hands each entry: the tar writer of format 1, or the
/// chunk writer of format 2. Entries come in archive order: depth first,
/// names sorted bytewise, a directory before its content.
pub(crate) trait Emit {
    /// Whether the regular file `meta` describes will likely be read, so
    /// that the walk reads it ahead. Only a hint: a wrong guess costs a
    /// read ahead for nothing, or a file read without one.
    fn likely_read(&self, _meta: &fs::Metadata) -> bool {
        true
    }

    /// Whether the regular file at `rel` may be taken from the parent
    /// backup without being read (format 2's parent rule). When it says
    /// yes, [`Emit::entry`] follows with no content for it.
    fn reuse(&mut self, _rel: &[u8], _meta: &fs::Metadata) -> bool {
        false
    }

    /// Waits for the files handed to reading threads ([`Content::hand_off`])
    /// and names those that changed while they were read.
    fn finish_reads(&mut self) -> Result<Vec<Vec<u8>>> {
        Ok(Vec::new())
    }

    /// One entry. `content` is the open file for a regular file being
    /// read, `None` for everything else (and for a reused file).
    fn entry(
        &mut self,
        entry: FileEntry,
        rel: &[u8],
        meta: &fs::Metadata,
        xattrs: &Xattrs,
        content: Option<&mut Content<'_>>,
    ) -> Result<()>;
}

/// A regular file's content as the walk hands it to an emitter: exactly
/// the size it was listed with, cut if the file grew, padded with zeros if
/// it shrank (and then marked short), read under the rate limit, watching
/// for cancellation.
pub(crate) struct Content<'w> {
    file: &'w File,
    remaining: u64,
    short: bool,
    /// Given to a reading thread, which reads and checks it.
    handed_off: bool,
    throttle: &'w mut Throttle,
    cancel: &'w Cancel,
    progress: &'w dyn Fn(u64),
}

impl Content<'_> {
    pub(crate) fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Fills as much of `buf` as the content has left; 0 at the end.
    pub(crate) fn read_into(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(io::Error::other(Cancelled));
        }
        let n = read_listed(self.file, buf, &mut self.remaining, &mut self.short)?;
        (self.progress)(n as u64);
        self.throttle.consume(n as u64);
        Ok(n)
    }

    /// Gives the file to a reading thread: counted as read now (progress,
    /// rate limit), and read and checked against its listing there
    /// (reported by [`Emit::finish_reads`]), not by the walk.
    pub(crate) fn hand_off(&mut self) -> io::Result<(File, u64)> {
        if self.cancel.is_cancelled() {
            return Err(io::Error::other(Cancelled));
        }
        // Under a rate limit the walk waits here, before the file is read:
        // the rate holds on average, and the wait stops on a signal.
        self.throttle
            .consume_cancellable(self.remaining, self.cancel)?;
        let file = self.file.try_clone()?;
        let size = std::mem::take(&mut self.remaining);
        self.handed_off = true;
        (self.progress)(size);
        Ok((file, size))
    }
}

/// Reads a listed file's content: exactly `remaining` bytes, cut if the
/// file grew, padded with zeros if it shrank (and then `short`).
fn read_listed(
    file: &File,
    buf: &mut [u8],
    remaining: &mut u64,
    short: &mut bool,
) -> io::Result<usize> {
    let want = buf.len().min((*remaining).min(usize::MAX as u64) as usize);
    if want == 0 {
        return Ok(0);
    }
    let buf = &mut buf[..want];
    let mut n = 0;
    if !*short {
        n = loop {
            match (&mut &*file).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
    }
    if n == 0 {
        *short = true;
        buf.fill(0);
        n = want;
    }
    *remaining -= n as u64;
    Ok(n)
}

impl Read for Content<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_into(buf)
    }
}

struct Walker<'a> {
    /// Asks the kernel for the next files while one is read.
    prefetch: Option<prefetch::Prefetcher>,
    emit: &'a mut dyn Emit,
    exclude: &'a Exclude,
    summary: ArchiveSummary,
    /// (device, inode) of multiply-linked files already archived → their path.
    hard_links: HashMap<(u64, u64), Vec<u8>>,
    throttle: Throttle,
    cancel: &'a Cancel,
    progress: &'a dyn Fn(u64),
}

/// Keeps reading under a byte rate, so a backup can be gentle on a busy host.
#[derive(Debug)]
pub struct Throttle {
    limit: Option<u64>,
    started: std::time::Instant,
    bytes: u64,
}

impl Throttle {
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            limit,
            started: std::time::Instant::now(),
            bytes: 0,
        }
    }

    /// How long to wait, after `elapsed` with `bytes` read, to be back at
    /// the limit.
    pub fn delay(limit: u64, bytes: u64, elapsed: std::time::Duration) -> std::time::Duration {
        let due = std::time::Duration::from_secs_f64(bytes as f64 / limit.max(1) as f64);
        due.saturating_sub(elapsed)
    }

    /// Accounts for `n` bytes about to be read, sleeping while that is
    /// over the limit: in short slices, so that a stop asked for during a
    /// long wait (a large file under a low limit) is not kept waiting.
    fn consume_cancellable(&mut self, n: u64, cancel: &Cancel) -> io::Result<()> {
        if let Some(limit) = self.limit {
            self.bytes += n;
            loop {
                if cancel.is_cancelled() {
                    return Err(io::Error::other(Cancelled));
                }
                let wait = Self::delay(limit, self.bytes, self.started.elapsed());
                if wait.is_zero() {
                    break;
                }
                std::thread::sleep(wait.min(std::time::Duration::from_millis(200)));
            }
        }
        Ok(())
    }

    /// Accounts for `n` bytes read, sleeping if that went over the limit.
    fn consume(&mut self, n: u64) {
        if let Some(limit) = self.limit {
            self.bytes += n;
            let wait = Self::delay(limit, self.bytes, self.started.elapsed());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
    }
}

/// Reads extended attributes (names from `list`, values from `get`);
/// filesystems without xattr support simply have none.
fn read_xattrs(
    list: io::Result<xattr::XAttrs>,
    get: impl Fn(&std::ffi::OsStr) -> io::Result<Option<Vec<u8>>>,
) -> Xattrs {
    let Ok(names) = list else {
        return Vec::new();
    };
    names
        .filter_map(|name| match get(&name) {
            Ok(Some(value)) => Some((name, value)),
            _ => None,
        })
        .collect()
}

impl Walker<'_> {
    fn walk(&mut self, root: &Path) -> Result<()> {
        let root_dir = open_dir_at(None, root.as_os_str())
            .with_context(|| format!("cannot open {}", root.display()))?;
        let root_meta = root_dir
            .metadata()
            .with_context(|| format!("cannot read {}", root.display()))?;
        let on_btrfs = nix::sys::statfs::fstatfs(&root_dir)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC);
        // Depth-first: a directory's entry, its files (sorted, read right
        // after the listing), then each subdirectory in turn. Everything
        // under a directory follows it directly, which GNU tar needs to
        // restore directory mtimes.
        //
        // The volume belongs to its containers, which may rename, swap or
        // replace anything at any moment. So nothing below the root is
        // looked up by path: every directory is opened relative to its
        // parent's descriptor without following symlinks, and checked to be
        // the directory that was listed (device, inode) before it is read.
        let mut pending = vec![PendingDir {
            parent: None,
            name: root.as_os_str().to_owned(),
            abs: root.to_path_buf(),
            rel: b".".to_vec(),
            listed: root_meta.clone(),
        }];
        let mut root_dir = Some(root_dir);
        while let Some(next) = pending.pop() {
            self.cancel.check()?;
            let opened = match (&next.parent, root_dir.take()) {
                (None, Some(dir)) => Ok(dir),
                (parent, _) => {
                    #[cfg(feature = "fault-injection")]
                    crate::fault::before_open(&display(&next.rel));
                    open_dir_at(parent.as_deref(), &next.name)
                }
            };
            let dir = match opened.and_then(|d| d.metadata().map(|m| (d, m))) {
                Ok((dir, meta)) if same_inode(&meta, &next.listed) => (dir, meta),
                Ok(_) => {
                    // Something else sits under that name now.
                    self.summary.changed_during_read.push(display(&next.rel));
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.summary.vanished_during_read.push(display(&next.rel));
                    continue;
                }
                // Replaced by a file or a symlink since it was listed.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
                    self.summary.changed_during_read.push(display(&next.rel));
                    continue;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot open {}", next.abs.display()))
                }
            };
            let (dir, meta) = dir;
            self.write_entry(Source::Dir(&dir, &next.abs), &next.rel, &meta)?;
            let children =
                list_dir(&dir).with_context(|| format!("cannot list {}", next.abs.display()))?;
            let ahead = match &self.prefetch {
                Some(_) => dir.try_clone().ok().map(Arc::new),
                None => None,
            };
            let mut asked = 0;
            let dir = std::rc::Rc::new(dir);
            let mut subdirs = Vec::new();
            for (index, (name, meta)) in children.iter().enumerate() {
                self.cancel.check()?;
                if let (Some(prefetch), Some(ahead)) = (&self.prefetch, &ahead) {
                    while asked < children.len() && asked <= index + prefetch::WINDOW {
                        if let (name, Some(meta)) = &children[asked] {
                            let rel = if next.rel == b"." {
                                name.as_bytes().to_vec()
                            } else {
                                [&next.rel[..], b"/", name.as_bytes()].concat()
                            };
                            if meta.is_file()
                                && meta.len() > 0
                                && self.emit.likely_read(meta)
                                && !self.exclude.matches(&rel)
                            {
                                prefetch.ask(ahead, name, meta);
                            }
                        }
                        asked += 1;
                    }
                }
                let (name, meta) = (name.clone(), meta.clone());
                let child_abs = next.abs.join(&name);
                let child_rel = if next.rel == b"." {
                    name.as_bytes().to_vec()
                } else {
                    [&next.rel[..], b"/", name.as_bytes()].concat()
                };
                if self.exclude.matches(&child_rel) {
                    self.summary.excluded += 1;
                    continue;
                }
                let Some(meta) = meta else {
                    self.summary.vanished_during_read.push(display(&child_rel));
                    continue;
                };
                if meta.is_dir() {
                    if meta.dev() != root_meta.dev() {
                        tracing::warn!(
                            "not crossing into another filesystem at {}",
                            child_abs.display()
                        );
                        self.summary.left_out.push(format!(
                            "{} (another filesystem: a nested mount, subvolume or dataset)",
                            display(&child_rel)
                        ));
                        continue;
                    }
                    if on_btrfs && meta.ino() == BTRFS_EMPTY_SUBVOL_DIR {
                        // In a btrfs snapshot a nested subvolume is an
                        // empty stand-in directory: its data is not there.
                        self.summary.left_out.push(format!(
                            "{} (a nested btrfs subvolume, not part of the snapshot)",
                            display(&child_rel)
                        ));
                        continue;
                    }
                    subdirs.push(PendingDir {
                        parent: Some(dir.clone()),
                        name,
                        abs: child_abs,
                        rel: child_rel,
                        listed: meta,
                    });
                } else {
                    let source = Source::At {
                        dir: &dir,
                        name: &name,
                        abs: &child_abs,
                    };
                    self.write_entry(source, &child_rel, &meta)?;
                }
            }
            pending.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    fn write_entry(&mut self, source: Source<'_>, rel: &[u8], meta: &fs::Metadata) -> Result<()> {
        let abs = source.path();
        let file_type = meta.file_type();
        let shown = || display(rel);
        let mut entry = FileEntry {
            path: String::new(),
            path_hex: None,
            kind: EntryKind::Dir,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            size: 0,
            sha256: None,
            target: None,
            target_hex: None,
        };
        entry.set_path(rel);
        let no_xattrs = Xattrs::new();

        if file_type.is_file() && meta.nlink() > 1 {
            if let Some(first) = self.hard_links.get(&(meta.dev(), meta.ino())) {
                entry.kind = EntryKind::Hardlink;
                entry.set_target(first);
                return self
                    .emit
                    .entry(entry, rel, meta, &no_xattrs, None)
                    .with_context(|| format!("cannot archive {}", abs.display()));
            }
        }

        let xattrs = match source {
            Source::Dir(dir, _) => read_xattrs(dir.list_xattr(), |name| dir.get_xattr(name)),
            // A regular file's are read from its open descriptor, below.
            Source::At { .. } if file_type.is_file() => Vec::new(),
            Source::At { dir, name, .. } => {
                // Names under /proc/self/fd/N resolve the directory through
                // its descriptor, never through the volume's paths; the
                // xattr crate's calls do not follow a final symlink.
                let at = proc_path(dir).join(name);
                read_xattrs(xattr::list(&at), |n| xattr::get(&at, n))
            }
        };
        if file_type.is_dir() {
            self.emit.entry(entry, rel, meta, &xattrs, None)?;
        } else if file_type.is_symlink() {
            let target = match source.read_link() {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.summary.vanished_during_read.push(shown());
                    return Ok(());
                }
                // Replaced by something else since it was listed.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.summary.changed_during_read.push(shown());
                    return Ok(());
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot read link {}", abs.display()))
                }
            };
            entry.kind = EntryKind::Symlink;
            entry.set_target(target.as_os_str().as_bytes());
            self.emit.entry(entry, rel, meta, &xattrs, None)?;
        } else if file_type.is_file() {
            entry.kind = EntryKind::File;
            entry.size = meta.len();
            if self.emit.reuse(rel, meta) {
                self.emit
                    .entry(entry.clone(), rel, meta, &no_xattrs, None)
                    .with_context(|| format!("cannot archive {}", abs.display()))?;
                // Unchanged and not read, but covered: progress counts it.
                (self.progress)(entry.size);
            } else {
                #[cfg(feature = "fault-injection")]
                crate::fault::before_open(&shown());
                let file = match source.open_file() {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.summary.vanished_during_read.push(shown());
                        return Ok(());
                    }
                    // Replaced by a symlink since it was listed.
                    Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                        self.summary.changed_during_read.push(shown());
                        return Ok(());
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot open {}", abs.display()))
                    }
                };
                // Opening never blocks (O_NONBLOCK) and never follows a
                // symlink, but whatever was opened is read only if it is
                // still the regular file that was listed: a FIFO or a device
                // node swapped in would hang the backup or put host device
                // bytes into it.
                let opened = file
                    .metadata()
                    .with_context(|| format!("cannot read {}", abs.display()))?;
                if !opened.is_file() || !same_inode(&opened, meta) {
                    self.summary.changed_during_read.push(shown());
                    return Ok(());
                }
                let xattrs = read_xattrs(file.list_xattr(), |name| file.get_xattr(name));
                let mut content = Content {
                    file: &file,
                    remaining: entry.size,
                    short: false,
                    handed_off: false,
                    throttle: &mut self.throttle,
                    cancel: self.cancel,
                    progress: self.progress,
                };
                self.emit
                    .entry(entry.clone(), rel, meta, &xattrs, Some(&mut content))
                    .with_context(|| format!("cannot archive {}", abs.display()))?;
                if !content.handed_off {
                    let came_up_short = content.short;
                    let after = file
                        .metadata()
                        .with_context(|| format!("cannot read {}", abs.display()))?;
                    if came_up_short || changed_while_read(meta, &after) {
                        self.summary.changed_during_read.push(shown());
                    }
                }
            }
            self.summary.files += 1;
            self.summary.bytes += entry.size;
            if meta.nlink() > 1 {
                self.hard_links
                    .insert((meta.dev(), meta.ino()), rel.to_vec());
            }
        } else if file_type.is_fifo() || file_type.is_char_device() || file_type.is_block_device() {
            entry.kind = if file_type.is_fifo() {
                EntryKind::Fifo
            } else if file_type.is_char_device() {
                EntryKind::CharDevice
            } else {
                EntryKind::BlockDevice
            };
            self.emit.entry(entry, rel, meta, &xattrs, None)?;
        } else {
            // Sockets cannot be archived (GNU tar skips them too).
            self.summary.skipped.push(format!("{} (socket)", shown()));
        }
        Ok(())
    }
}

/// The format-1 emitter: one GNU tar stream into the staged pipeline,
/// which hashes each file's content and the whole archive.
struct TarEmitter<'b> {
    builder: &'b mut tar::Builder<stage::Stage<stage::Sealed>>,
    entries: Vec<FileEntry>,
    /// Indexes in `entries` of the files whose content went into the
    /// archive, in order: the pipeline's digests belong to them.
    hashed_entries: Vec<usize>,
}

impl Emit for TarEmitter<'_> {
    fn entry(
        &mut self,
        entry: FileEntry,
        rel: &[u8],
        meta: &fs::Metadata,
        xattrs: &Xattrs,
        content: Option<&mut Content<'_>>,
    ) -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(entry.uid.into());
        header.set_gid(entry.gid.into());
        header.set_mtime(entry.mtime.max(0) as u64);
        header.set_size(0);
        // The root is stored as "./" so that GNU tar applies its metadata to
        // the extraction directory.
        let tar_path = Path::new(std::ffi::OsStr::from_bytes(if rel == b"." {
            b"./"
        } else {
            rel
        }));
        if entry.kind != EntryKind::Hardlink {
            self.write_xattrs(xattrs)?;
        }
        match entry.kind {
            EntryKind::Hardlink => {
                header.set_entry_type(tar::EntryType::Link);
                let target = entry.raw_target()?.unwrap_or_default();
                self.builder.append_link(
                    &mut header,
                    tar_path,
                    std::ffi::OsStr::from_bytes(&target),
                )?;
            }
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                self.builder
                    .append_data(&mut header, tar_path, io::empty())?;
            }
            EntryKind::Symlink => {
                header.set_entry_type(tar::EntryType::Symlink);
                let target = entry.raw_target()?.unwrap_or_default();
                self.builder.append_link(
                    &mut header,
                    tar_path,
                    std::ffi::OsStr::from_bytes(&target),
                )?;
            }
            EntryKind::File => {
                let content = content.context("internal error: a file without content")?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(entry.size);
                // append_data writes the header (after a GNU long-name entry
                // when the path needs one), then copies `data` and pads it;
                // with an empty reader it stops after the header and the
                // content follows here, read straight into the pipeline's
                // chunks.
                self.builder
                    .append_data(&mut header, tar_path, io::empty())?;
                self.copy_content(content, entry.size)?;
                // The pipeline hashes the content; the digest is filled in
                // at the end.
                self.hashed_entries.push(self.entries.len());
            }
            EntryKind::Fifo | EntryKind::CharDevice | EntryKind::BlockDevice => {
                header.set_entry_type(match entry.kind {
                    EntryKind::Fifo => tar::EntryType::Fifo,
                    EntryKind::CharDevice => tar::EntryType::Char,
                    _ => tar::EntryType::Block,
                });
                let rdev = meta.rdev();
                header.set_device_major(nix::sys::stat::major(rdev) as u32)?;
                header.set_device_minor(nix::sys::stat::minor(rdev) as u32)?;
                self.builder
                    .append_data(&mut header, tar_path, io::empty())?;
            }
        }
        self.entries.push(entry);
        Ok(())
    }
}

impl TarEmitter<'_> {
    /// Copies the content into the archive, marked as content for the
    /// pipeline to hash, then pads to the tar block. [`Content`] keeps the
    /// length exact, so the archive stays valid whatever the file did.
    fn copy_content(&mut self, content: &mut Content<'_>, size: u64) -> io::Result<()> {
        let pipeline = self.builder.get_mut();
        while content.remaining() > 0 {
            let room = pipeline.room(content.remaining().min(usize::MAX as u64) as usize)?;
            let n = content.read_into(room)?;
            pipeline.commit_content(n);
        }
        pipeline.end_content();
        let padding = (512 - size % 512) % 512;
        pipeline.write_all(&[0; 512][..padding as usize])?;
        Ok(())
    }

    /// Extended attributes as a PAX record before the entry they belong to.
    fn write_xattrs(&mut self, xattrs: &Xattrs) -> Result<()> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(name, value)| {
                (
                    format!("{XATTR_PAX_PREFIX}{}", name.to_string_lossy()),
                    value.as_slice(),
                )
            })
            .collect();
        self.builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .context("cannot archive extended attributes")?;
        Ok(())
    }
}

/// A directory still to be archived: its name in its parent's open
/// descriptor (the root has none and is opened by its host path), and the
/// metadata it was listed with.
struct PendingDir {
    parent: Option<std::rc::Rc<File>>,
    name: std::ffi::OsString,
    abs: PathBuf,
    rel: Vec<u8>,
    listed: fs::Metadata,
}

/// Where an entry is read from: an open directory, or a name in one.
/// `abs` is for messages only.
enum Source<'p> {
    Dir(&'p File, &'p Path),
    At {
        dir: &'p File,
        name: &'p std::ffi::OsStr,
        abs: &'p Path,
    },
}

impl Source<'_> {
    fn path(&self) -> &Path {
        match self {
            Source::Dir(_, abs) => abs,
            Source::At { abs, .. } => abs,
        }
    }

    /// Opens a regular file for reading: relative to its directory, never
    /// following a symlink, never blocking (a FIFO swapped in), never
    /// becoming the controlling terminal (a tty swapped in), leaving its
    /// atime alone. The caller checks what was opened.
    fn open_file(&self) -> io::Result<File> {
        let Source::At { dir, name, .. } = self else {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        };
        let flags = libc::O_RDONLY
            | libc::O_NOFOLLOW
            | libc::O_NOATIME
            | libc::O_CLOEXEC
            | libc::O_NONBLOCK
            | libc::O_NOCTTY;
        openat(Some(dir), name, flags)
    }

    /// A symlink's target, read relative to its directory.
    fn read_link(&self) -> io::Result<PathBuf> {
        let Source::At { dir, name, .. } = self else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        nix::fcntl::readlinkat(*dir, *name)
            .map(PathBuf::from)
            .map_err(io::Error::from)
    }
}

/// `openat(2)` relative to `dir` (or the working directory), returning a
/// `File` that owns the descriptor.
fn openat(dir: Option<&File>, name: &std::ffi::OsStr, flags: libc::c_int) -> io::Result<File> {
    let name = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: a valid directory descriptor (or AT_FDCWD) and a NUL-terminated name.
    let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens a directory relative to `parent` without following a symlink.
fn open_dir_at(parent: Option<&File>, name: &std::ffi::OsStr) -> io::Result<File> {
    let flags =
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    openat(parent, name, flags)
}

/// The path of an open descriptor in /proc: the kernel resolves it to the
/// very object the descriptor holds, whatever happened to its name since.
fn proc_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// A path for people (lists of changed files, messages): invalid UTF-8
/// shown as U+FFFD. The manifest keeps the bytes (see `FileEntry`).
fn display(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

/// Whether two stats describe the same filesystem object.
fn same_inode(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// A directory's children, sorted by name, each with its metadata (`None`
/// when it vanished between listing and stat).
type Listing = Vec<(std::ffi::OsString, Option<fs::Metadata>)>;

/// Lists an open directory. The listing goes through /proc/self/fd, so it
/// reads the directory that was opened (not whatever its path names now),
/// and each child's metadata is taken relative to it without following
/// symlinks.
fn list_dir(dir: &File) -> io::Result<Listing> {
    let mut children = Vec::new();
    for entry in fs::read_dir(proc_path(dir))? {
        let entry = entry?;
        let meta = match entry.metadata() {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        children.push((entry.file_name(), meta));
    }
    children.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(children)
}

/// Whether a file changed between the listing and the end of its read.
fn changed_while_read(before: &fs::Metadata, after: &fs::Metadata) -> bool {
    before.len() != after.len()
        || (before.mtime(), before.mtime_nsec()) != (after.mtime(), after.mtime_nsec())
        || (before.ctime(), before.ctime_nsec()) != (after.ctime(), after.ctime_nsec())
}

type HashedFile = HashingReader<BufReader<File>>;

/// The decompression stage of the reader.
enum Decompressor {
    Zstd(zstd::stream::read::Decoder<'static, BufReader<HashedFile>>),
    Gzip(Box<flate2::read::GzDecoder<HashedFile>>),
    Plain(HashedFile),
}

impl Read for Decompressor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decompressor::Zstd(d) => d.read(buf),
            Decompressor::Gzip(d) => d.read(buf),
            Decompressor::Plain(r) => r.read(buf),
        }
    }
}

impl Decompressor {
    fn into_hashed(self) -> HashedFile {
        match self {
            Decompressor::Zstd(d) => d.finish().into_inner(),
            Decompressor::Gzip(d) => (*d).into_inner(),
            Decompressor::Plain(r) => r,
        }
    }
}

/// The decompressed stream of an archive, produced on a thread of its own
/// (read, hash, decompress) and handed over in chunks through a bounded
/// channel, so decompression and extraction use both cores.
pub struct ArchiveStream {
    receiver: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ArchiveStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.receiver.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // the producer is done: end of stream
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A volume archive opened for reading: iterate its entries with
/// [`ArchiveReader::archive`], then call [`ArchiveReader::finish`] to check
/// the stream ended cleanly and get the archive's SHA-256.
pub struct ArchiveReader {
    archive: tar::Archive<ArchiveStream>,
    producer: std::thread::JoinHandle<io::Result<(String, u64)>>,
    path: PathBuf,
}

impl ArchiveReader {
    pub fn open(path: &Path, compression: Compression) -> Result<Self> {
        let file =
            File::open(path).with_context(|| format!("cannot open archive {}", path.display()))?;
        let hashed = HashingReader::new(BufReader::with_capacity(IO_BUFFER, file));
        let mut decompressor = match compression {
            Compression::Zstd => Decompressor::Zstd(
                zstd::stream::read::Decoder::new(hashed)
                    .with_context(|| format!("cannot read archive {}", path.display()))?,
            ),
            Compression::Gzip => Decompressor::Gzip(Box::new(flate2::read::GzDecoder::new(hashed))),
            Compression::None => Decompressor::Plain(hashed),
        };
        let (sender, receiver) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
        let producer = std::thread::Builder::new()
            .name("archive-reader".into())
            .spawn(move || {
                let mut guard = guard::Guard::default();
                loop {
                    let mut chunk = vec![0u8; IO_BUFFER];
                    let mut filled = 0;
                    while filled < chunk.len() {
                        match decompressor.read(&mut chunk[filled..]) {
                            Ok(0) => break,
                            Ok(n) => filled += n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                let message = e.to_string();
                                let _ = sender.send(Err(e));
                                return Err(io::Error::other(message));
                            }
                        }
                    }
                    if filled == 0 {
                        break;
                    }
                    chunk.truncate(filled);
                    // Checked before the tar parser sees it: no entry may
                    // claim unbounded memory.
                    if let Err(e) = guard.check(&chunk) {
                        let message = e.to_string();
                        let _ = sender.send(Err(e));
                        return Err(io::Error::other(message));
                    }
                    if sender.send(Ok(chunk)).is_err() {
                        // The consumer gave up (an error while extracting).
                        return Err(io::Error::other("archive reading was abandoned"));
                    }
                }
                drop(sender);
                decompressor.into_hashed().finish()
            })
            .context("cannot start the archive reader thread")?;
        let stream = ArchiveStream {
            receiver,
            chunk: Vec::new(),
            pos: 0,
        };
        Ok(Self {
            archive: tar::Archive::new(stream),
            producer,
            path: path.to_path_buf(),
        })
    }

    pub fn archive(&mut self) -> &mut tar::Archive<ArchiveStream> {
        &mut self.archive
    }

    /// Drains the stream (a truncated or corrupt one fails here) and returns
    /// the archive file's SHA-256 and size.
    pub fn finish(self) -> Result<(String, u64)> {
        let mut stream = self.archive.into_inner();
        let path = &self.path;
        io::copy(&mut stream, &mut io::sink())
            .with_context(|| format!("archive {} is truncated or corrupt", path.display()))?;
        drop(stream);
        match self.producer.join() {
            Ok(result) => result.with_context(|| format!("cannot read archive {}", path.display())),
            Err(_) => anyhow::bail!("the reader thread of {} panicked", path.display()),
        }
    }
}

/// The path of a tar entry as the manifest spells it ("." for the root).
pub fn entry_path(entry: &tar::Entry<'_, ArchiveStream>) -> Vec<u8> {
    normalize_entry_path(&entry.path_bytes())
}

/// An archive path as the manifest names it: no leading `./`, no trailing
/// `/`, the root as `.`. Bytes stay bytes.
pub fn normalize_entry_path(raw: &[u8]) -> Vec<u8> {
    let mut path = raw;
    while let Some(rest) = path.strip_prefix(b"./") {
        path = rest;
    }
    while let Some(rest) = path.strip_suffix(b"/") {
        path = rest;
    }
    if path.is_empty() || path == b"." {
        b".".to_vec()
    } else {
        path.to_vec()
    }
}

/// A link entry's target as the manifest names it: a symlink's exactly as
/// stored, a hard link's normalized like an entry path.
pub fn link_target(entry: &tar::Entry<'_, ArchiveStream>, kind: EntryKind) -> Option<Vec<u8>> {
    let raw = entry.link_name_bytes()?;
    Some(if kind == EntryKind::Hardlink {
        normalize_entry_path(&raw)
    } else {
        raw.into_owned()
    })
}

/// Extended attributes carried by an entry's PAX records.
pub fn entry_xattrs(entry: &mut tar::Entry<'_, ArchiveStream>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(extensions) = entry.pax_extensions()? {
        for ext in extensions {
            let ext = ext?;
            if let Ok(key) = ext.key() {
                if let Some(name) = key.strip_prefix(XATTR_PAX_PREFIX) {
                    out.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    Ok(out)
}

/// Reads the rest of an entry's content, returning its SHA-256 and length.
pub fn hash_content(reader: &mut impl Read) -> io::Result<(String, u64)> {
    HashingReader::new(reader).finish()
}

/// Checks an archive's entries against the manifest, one by one: each must
/// be listed, of the listed kind, and seen once; at the end none may be
/// missing. Shared by `verify --deep` and `restore`.
pub struct EntryChecker<'m> {
    volume: &'m str,
    index: HashMap<std::borrow::Cow<'m, [u8]>, &'m FileEntry>,
    seen: std::collections::HashSet<std::borrow::Cow<'m, [u8]>>,
}

impl<'m> EntryChecker<'m> {
    /// Indexes the manifest's entries by their bytes, refusing a manifest
    /// that names one path twice.
    pub fn new(volume: &'m crate::repo::manifest::VolumeRecord) -> Result<Self> {
        let mut index = HashMap::with_capacity(volume.entries.len());
        for entry in &volume.entries {
            let raw = entry
                .raw_path()
                .with_context(|| format!("{}: corrupt manifest", volume.name))?;
            if index.insert(raw, entry).is_some() {
                bail!(
                    "{}: the manifest lists {:?} twice (corrupt manifest)",
                    volume.name,
                    entry.path
                );
            }
        }
        Ok(Self {
            volume: &volume.name,
            index,
            seen: Default::default(),
        })
    }

    /// The manifest's record of an archive entry (its normalized path and
    /// tar type), or why it is refused.
    pub fn check(&mut self, path: &[u8], tar_type: tar::EntryType) -> Result<&'m FileEntry> {
        let shown = String::from_utf8_lossy(path);
        let kind = match tar_type {
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            tar::EntryType::Link => EntryKind::Hardlink,
            tar::EntryType::Fifo => EntryKind::Fifo,
            tar::EntryType::Char => EntryKind::CharDevice,
            tar::EntryType::Block => EntryKind::BlockDevice,
            other => bail!(
                "{}: entry {shown:?} has unsupported type {other:?}",
                self.volume
            ),
        };
        let (key, &record) = self.index.get_key_value(path).with_context(|| {
            format!(
                "{}: archive entry {shown:?} is not in the manifest",
                self.volume
            )
        })?;
        if record.kind != kind {
            bail!(
                "{}: archive entry {shown:?} is a {kind:?}, the manifest says {:?}",
                self.volume,
                record.kind
            );
        }
        if !self.seen.insert(key.clone()) {
            bail!("{}: archive entry {shown:?} appears twice", self.volume);
        }
        Ok(record)
    }

    /// Checks that a link entry's target in the archive is the one the
    /// manifest records.
    pub fn check_link(&self, record: &FileEntry, archive_target: Option<&[u8]>) -> Result<()> {
        let listed = record
            .raw_target()
            .with_context(|| format!("{}: corrupt manifest", self.volume))?;
        if listed.as_deref() != archive_target {
            bail!(
                "{}: link {:?} points to {:?} in the archive, the manifest says {:?}",
                self.volume,
                record.path,
                archive_target.map(String::from_utf8_lossy),
                record.target
            );
        }
        Ok(())
    }

    /// Fails when manifest entries never appeared (a truncated archive).
    pub fn finish(&self) -> Result<()> {
        let mut missing: Vec<&str> = self
            .index
            .iter()
            .filter(|(k, _)| !self.seen.contains(*k))
            .map(|(_, e)| e.path.as_str())
            .collect();
        if !missing.is_empty() {
            let count = missing.len();
            missing.sort();
            missing.truncate(3);
            bail!(
                "{}: the archive lacks {} entr{} listed in the manifest (truncated?), e.g. {}",
                self.volume,
                count,
                if count == 1 { "y" } else { "ies" },
                missing.join(", ")
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A file cut short while it is read: the archive still holds the size
    /// announced in its header (padded with zeros), stays readable, and the
    /// file is reported as changed.
    #[test]
    fn a_file_that_shrinks_while_read_keeps_the_archive_valid() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        fs::create_dir(&source).unwrap();
        let victim = source.join("shrinks.db");
        let size = 64u64 << 20;
        File::create(&victim).unwrap().set_len(size).unwrap();
        fs::write(source.join("z-after.txt"), b"still here").unwrap();
        let dest = dir.path().join("out.tar");
        // 32 MiB/s: reading takes 2 s; the file is cut after 0.3 s. The
        // entry after it must still be intact.
        let options = ArchiveOptions {
            compression: Compression::None,
            bwlimit: Some(32 << 20),
            ..ArchiveOptions::default()
        };
        let cutter = std::thread::spawn({
            let victim = victim.clone();
            move || {
                std::thread::sleep(Duration::from_millis(300));
                fs::OpenOptions::new()
                    .write(true)
                    .open(victim)
                    .unwrap()
                    .set_len(4096)
                    .unwrap();
            }
        });
        let summary = write_archive(
            &source,
            &dest,
            &options,
            &Exclude::default(),
            &Cancel::new(),
            &|_| (),
        )
        .unwrap();
        cutter.join().unwrap();
        assert_eq!(summary.changed_during_read, vec!["shrinks.db".to_string()]);
        let mut archive = tar::Archive::new(File::open(&dest).unwrap());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            seen.push((path, content.len() as u64));
            if seen.last().unwrap().0 == "z-after.txt" {
                assert_eq!(content, b"still here");
            }
        }
        assert!(seen.contains(&("shrinks.db".to_string(), size)), "{seen:?}");
        assert!(seen.iter().any(|(p, _)| p == "z-after.txt"), "{seen:?}");
    }

    #[test]
    fn throttle_waits_only_when_ahead_of_the_rate() {
        // 10 MB at 10 MB/s is due at 1 s.
        assert_eq!(
            Throttle::delay(10_000_000, 10_000_000, Duration::from_millis(400)),
            Duration::from_millis(600)
        );
        assert_eq!(
            Throttle::delay(10_000_000, 10_000_000, Duration::from_secs(2)),
            Duration::ZERO
        );
    }

    #[test]
    fn a_long_wait_under_the_rate_limit_stops_on_a_signal() {
        // 1 GB at 1 MB/s would wait 1,000 s; a stop asked for after 0.2 s
        // ends the wait, as an error the walk turns into Cancelled.
        let mut throttle = Throttle::new(Some(1_000_000));
        let cancel = Cancel::new();
        let stopper = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                cancel.cancel();
            })
        };
        // Without the stop, the wait would end after 1,000 s with Ok.
        let waited = throttle.consume_cancellable(1_000_000_000, &cancel);
        stopper.join().unwrap();
        let err = waited.expect_err("the wait ended without the stop");
        assert!(err.get_ref().is_some_and(|e| e.is::<Cancelled>()), "{err}");
    }
}
