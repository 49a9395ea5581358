//! Writing restored files: each created beneath its verified directory
//! descriptor (never through a symlink, never over an existing name), its
//! content written with holes where the data is zeros, its SHA-256 checked
//! against the manifest, then its owner, attributes, mode and mtime set.
//!
//! Small files are written by a few threads at once: creating an inode
//! and hashing took most of a restore's one writing thread, while the
//! fetching threads waited. The restore's order of entries is unchanged
//! where it matters: a hard link waits until every file before it is
//! written, and directory metadata is applied after all of them.

use super::Xattrs;
use crate::beneath::At;
use crate::repo::manifest::FileEntry;
use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use xattr::FileExt as _;

const CHUNK: usize = 1 << 16;
/// Files up to this size go to the writing threads, read whole first;
/// larger ones are streamed by the restore's own thread.
pub(super) const HANDED_OFF: u64 = 1 << 20;
/// Files waiting for a writing thread, at most (bounded memory:
/// `QUEUED * HANDED_OFF`).
const QUEUED: usize = 16;

pub(super) fn create_file(dir: &impl AsFd, name: &OsString) -> nix::Result<File> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::openat(
        dir,
        name.as_os_str(),
        flags,
        Mode::from_bits_truncate(0o600),
    )
    .map(File::from)
}

/// Writes a regular file's content, leaving holes where the data is zeros.
/// Returns its SHA-256 and length.
pub(super) fn write_file(
    entry: &mut dyn Read,
    file: &mut File,
    path: &str,
    progress: &dyn Fn(u64),
) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    let mut hole_at_end = false;
    let write_err = || format!("cannot write {path:?}");
    loop {
        let n = entry.read(&mut buf).context("cannot read the backup")?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        hasher.update(chunk);
        hole_at_end = chunk.iter().all(|&b| b == 0);
        if hole_at_end {
            file.seek(SeekFrom::Current(n as i64))
                .with_context(write_err)?;
        } else {
            file.write_all(chunk).with_context(write_err)?;
        }
        len += n as u64;
        progress(n as u64);
    }
    // Only a hole at the end leaves the file short of its length (it was
    // created empty).
    if hole_at_end {
        file.set_len(len).with_context(write_err)?;
    }
    Ok((hex::encode(hasher.finalize()), len))
}

/// The checks of a written file against its manifest record.
pub(super) fn check_written(
    volume: &str,
    path: &str,
    record: &FileEntry,
    digest: &str,
    len: u64,
) -> Result<()> {
    check_length(volume, path, record, len)?;
    if Some(digest) != record.sha256.as_deref() {
        bail!(
            "{volume}: file {path} does not match the manifest (SHA-256 {digest}, expected {}); the backup is corrupt",
            record.sha256.as_deref().unwrap_or("none")
        );
    }
    Ok(())
}

/// A file's content is as long as its record says.
pub(super) fn check_length(volume: &str, path: &str, record: &FileEntry, len: u64) -> Result<()> {
    if len > record.size {
        bail!(
            "{volume}: file {path} holds more than its {} bytes; the backup is corrupt",
            record.size
        );
    }
    if len < record.size {
        bail!(
            "{volume}: file {path} holds {len} of its {} bytes; the backup is truncated or corrupt",
            record.size
        );
    }
    Ok(())
}

/// Owner, extended attributes, mode and mtime of an open file or
/// directory, in an order that keeps them all (chown clears setuid bits, so
/// mode comes after it).
pub(super) fn apply_to_open(
    file: &File,
    record: &FileEntry,
    xattrs: &Xattrs,
    path: &str,
) -> Result<()> {
    nix::unistd::fchown(file, Some(record.uid.into()), Some(record.gid.into()))
        .with_context(|| format!("cannot set the owner of {path:?}"))?;
    for (name, value) in xattrs {
        if let Err(e) = file.set_xattr(name, value) {
            tracing::warn!("cannot restore extended attribute {name} on {path:?}: {e}");
        }
    }
    nix::sys::stat::fchmod(file, Mode::from_bits_truncate(record.mode))
        .with_context(|| format!("cannot set the mode of {path:?}"))?;
    let mtime = nix::sys::time::TimeSpec::new(record.mtime, 0);
    nix::sys::stat::futimens(file, &mtime, &mtime)
        .with_context(|| format!("cannot set the modification time of {path:?}"))?;
    Ok(())
}

/// A small file read whole, to be written by a writing thread.
pub(super) struct FileJob {
    /// Its directory (a duplicate of the verified descriptor).
    pub dir: OwnedFd,
    pub name: OsString,
    pub bytes: Vec<u8>,
    pub record: FileEntry,
    pub xattrs: Xattrs,
    pub path: String,
}

impl FileJob {
    pub fn new(
        at: &At,
        bytes: Vec<u8>,
        record: FileEntry,
        xattrs: Xattrs,
        path: String,
    ) -> Result<Self> {
        Ok(Self {
            dir: at
                .dir
                .try_clone()
                .with_context(|| format!("cannot open the directory of {path:?}"))?,
            name: at.name.clone(),
            bytes,
            record,
            xattrs,
            path,
        })
    }

    fn write(self, volume: &str) -> Result<()> {
        let Self {
            dir,
            name,
            bytes,
            record,
            xattrs,
            path,
        } = self;
        let mut file =
            create_file(&dir, &name).with_context(|| format!("cannot create {path:?}"))?;
        let (digest, len) = write_file(&mut &bytes[..], &mut file, &path, &|_| {})?;
        check_written(volume, &path, &record, &digest, len)?;
        apply_to_open(&file, &record, &xattrs, &path)
    }
}

#[derive(Default)]
struct State {
    /// Jobs handed over and not yet done.
    pending: usize,
    /// The first failure (the restore fails with it).
    failed: Option<anyhow::Error>,
}

/// The writing threads.
pub(super) struct Writers {
    sender: Option<SyncSender<FileJob>>,
    state: Arc<(Mutex<State>, Condvar)>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    pub fn start(volume: &str) -> Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        let (sender, jobs) = sync_channel::<FileJob>(QUEUED);
        let jobs = Arc::new(Mutex::new(jobs));
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let mut handles = Vec::with_capacity(threads);
        for _ in 0..threads {
            let (jobs, state, volume) = (jobs.clone(), state.clone(), volume.to_string());
            handles.push(
                std::thread::Builder::new()
                    .name("restore-write".into())
                    .spawn(move || loop {
                        let job = match jobs.lock() {
                            Ok(jobs) => jobs.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        // A panic is a failure of this file, never a
                        // thread gone with its file still counted.
                        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            job.write(&volume)
                        }))
                        .unwrap_or_else(|_| Err(anyhow!("internal error writing a restored file")));
                        let (lock, changed) = &*state;
                        let Ok(mut state) = lock.lock() else { return };
                        state.pending -= 1;
                        if let Err(e) = done {
                            state.failed.get_or_insert(e);
                        }
                        changed.notify_all();
                    })?,
            );
        }
        Ok(Self {
            sender: Some(sender),
            state,
            threads: handles,
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .0
            .lock()
            .map_err(|_| anyhow!("a restore writing thread failed"))
    }

    /// Hands a file over (waiting while the queue is full); fails with the
    /// first failure of a file handed over before.
    pub fn submit(&mut self, job: FileJob) -> Result<()> {
        {
            let mut state = self.lock()?;
            if let Some(e) = state.failed.take() {
                return Err(e);
            }
            state.pending += 1;
        }
        let sent = self.sender.as_ref().is_some_and(|s| s.send(job).is_ok());
        if !sent {
            bail!("the restore writing threads stopped");
        }
        Ok(())
    }

    /// Waits until every file handed over is written.
    pub fn wait(&self) -> Result<()> {
        let mut state = self.lock()?;
        while state.pending > 0 {
            state = self
                .state
                .1
                .wait(state)
                .map_err(|_| anyhow!("a restore writing thread failed"))?;
        }
        match state.failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits for every file, then stops the threads.
    pub fn finish(mut self) -> Result<()> {
        let waited = self.wait();
        self.stop();
        waited
    }

    fn stop(&mut self) {
        self.sender = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::beneath::Beneath;
    use crate::repo::manifest::EntryKind;
    use std::os::unix::fs::PermissionsExt;

    fn record(path: &str, bytes: &[u8]) -> FileEntry {
        FileEntry {
            path: path.into(),
            path_hex: None,
            kind: EntryKind::File,
            mode: 0o640,
            uid: 0,
            gid: 0,
            mtime: 1_000_000,
            size: bytes.len() as u64,
            sha256: Some(hex::encode(Sha256::digest(bytes))),
            target: None,
            target_hex: None,
        }
    }

    /// Files written by the threads are whole, checked and have their
    /// metadata; one whose content does not match its record fails the
    /// restore with its name.
    #[test]
    fn writing_threads_write_and_check_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Beneath::open(dir.path()).unwrap();
        let mut writers = Writers::start("vol").unwrap();
        let mut failed = None;
        for n in 0..100u32 {
            let name = format!("f{n}");
            let mut bytes = n.to_le_bytes().repeat(n as usize * 10);
            bytes.extend(vec![0u8; 100_000]);
            let at = tree.parent_of(std::path::Path::new(&name), true).unwrap();
            let rec = record(&name, &bytes);
            if n == 42 {
                bytes[0] ^= 1;
            }
            let job = FileJob::new(&at, bytes, rec, Xattrs::new(), name).unwrap();
            // A failure shows at the next hand-over or at the end.
            if let Err(e) = writers.submit(job) {
                failed.get_or_insert(e);
                break;
            }
        }
        let err = match failed {
            Some(e) => e,
            None => writers.finish().unwrap_err(),
        };
        assert!(
            format!("{err:#}").contains("vol: file f42 does not match"),
            "{err:#}"
        );
        let f7 = dir.path().join("f7");
        let meta = std::fs::metadata(&f7).unwrap();
        assert_eq!(meta.len(), 7 * 4 * 10 + 100_000);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(std::os::unix::fs::MetadataExt::mtime(&meta), 1_000_000);
        assert_eq!(std::fs::read(&f7).unwrap()[..4], 7u32.to_le_bytes());
    }
}
