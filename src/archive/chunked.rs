//! The format-2 emitter: every entry becomes one line of the volume's
//! manifest stream, every regular file's content content-defined chunks
//! saved as data blobs, and a file the parent rule lets through is taken
//! from the parent backup without being read.
//!
//! The parent is this host's own stream of the same volume from its last
//! committed backup of the same selection, kept in the host's state
//! directory (never read from the repository: whoever can write the
//! repository cannot make a backup skip files). It is walked alongside the
//! tree in walk order, one line at a time. A file is taken over only when
//! its size, mtime, ctime (both to the nanosecond) and inode match, and
//! only if every chunk it lists is in a live pack of the repository now.

use super::parent::{KeepWriter, ParentCursor};
use super::readers::{Event, FileJob, Readers};
use super::{Content, Emit, Xattrs};
use crate::repo::manifest::{encode_name, EntryKind, FileEntry};
use crate::repo::v2::id::Id;
use crate::repo::v2::objects::ChunkerParams;
use crate::repo::v2::pack::BlobKind;
use crate::repo::v2::saver::BlobSaver;
use crate::repo::v2::tree::{RefsWriter, TreeEntry, TreeWriter, XattrRecord};
use anyhow::{Context, Result};
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What the emitter adds up besides the walk's own summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChunkStats {
    /// Files taken from the parent without being read.
    pub reused_files: u64,
    pub reused_bytes: u64,
}

/// A manifest line waiting, in walk order, for its file to be read (or
/// for the lines before it).
struct Waiting {
    line: TreeEntry,
    /// Whether its file is still being read.
    reading: bool,
}

/// Lines waiting at most (a run of small files behind a large one): past
/// this, the walk waits for the reading threads.
const MAX_WAITING_LINES: usize = 4096;
/// Files being read at most: each holds an open descriptor.
const MAX_READING_FILES: usize = 256;

pub struct ChunkEmitter<'s> {
    saver: &'s mut BlobSaver,
    readers: Readers,
    /// Lines in walk order, waiting for their files (or those before them).
    waiting: std::collections::VecDeque<Waiting>,
    /// The line number of the first waiting line.
    written: u64,
    /// Files that came up short or changed while a reading thread read
    /// them.
    changed: Vec<Vec<u8>>,
    tree: TreeWriter,
    /// The data blobs the files use (encrypted repositories).
    refs: Option<RefsWriter>,
    parent: Option<ParentCursor>,
    /// This stream, kept for the next backup as its parent.
    keep: Option<KeepWriter>,
    /// The line being written, encoded (reused from line to line).
    encoded: Vec<u8>,
    reuse_next: Option<TreeEntry>,
    pub stats: ChunkStats,
}

impl<'s> ChunkEmitter<'s> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        saver: &'s mut BlobSaver,
        params: ChunkerParams,
        tree_params: ChunkerParams,
        seed: u64,
        refs: bool,
        parent: Option<ParentCursor>,
        keep: Option<File>,
        readers: usize,
        cancel: &crate::cancel::Cancel,
    ) -> Result<Self> {
        let repo = saver.repository();
        Ok(Self {
            saver,
            readers: Readers::start(readers, repo, &params, seed, cancel.clone())?,
            waiting: Default::default(),
            written: 0,
            changed: Vec::new(),
            tree: TreeWriter::new(tree_params, seed),
            refs: refs.then(RefsWriter::new),
            parent,
            keep: keep.map(KeepWriter::start).transpose()?,
            encoded: Vec::new(),
            reuse_next: None,
            stats: ChunkStats::default(),
        })
    }

    /// The stream's tree blobs and SHA-256, and its refs blobs when
    /// encrypted; the parent copy flushed.
    pub fn finish(mut self) -> Result<(Vec<Id>, Id, Option<Vec<Id>>)> {
        self.settle(true)?;
        if let Some(keep) = self.keep {
            keep.finish()?;
        }
        let (tree, sha) = self.tree.finish(self.saver)?;
        let refs = self.refs.map(|r| r.finish(self.saver)).transpose()?;
        Ok((tree, sha, refs))
    }

    /// Hands one file to the reading threads; its line waits for them.
    fn read_file(
        &mut self,
        line: TreeEntry,
        rel: &[u8],
        meta: &fs::Metadata,
        content: &mut Content<'_>,
    ) -> Result<()> {
        let (file, size) = content.hand_off()?;
        let number = self.written + self.waiting.len() as u64;
        self.waiting.push_back(Waiting {
            line,
            reading: true,
        });
        self.readers.add(FileJob {
            line: number,
            file,
            size,
            listed: meta.clone(),
            rel: rel.to_vec(),
        })?;
        self.settle(false)
    }

    /// Takes what the reading threads found as it comes: saves each chunk
    /// at once and writes every line that is complete, in walk order;
    /// waits while too many lines or files are outstanding, or, with
    /// `all`, until every line is written.
    fn settle(&mut self, all: bool) -> Result<()> {
        loop {
            // Lines at the front with nothing to wait for.
            while self.waiting.front().is_some_and(|w| !w.reading) {
                let done = self.waiting.pop_front().expect("checked");
                self.written += 1;
                self.push(&done.line)?;
            }
            if self.waiting.is_empty() {
                return Ok(());
            }
            let wait = all
                || self.waiting.len() > MAX_WAITING_LINES
                || self.readers.outstanding() > MAX_READING_FILES;
            let Some(events) = self.readers.next(wait)? else {
                return Ok(());
            };
            for event in events {
                let (Event::Chunk { line, .. } | Event::Done { line, .. }) = &event;
                let waiting = line
                    .checked_sub(self.written)
                    .and_then(|at| self.waiting.get_mut(at as usize))
                    .context("internal error: a read for a line not waiting")?;
                match event {
                    Event::Chunk { id, bytes, .. } => {
                        self.saver.save_with_id(id, BlobKind::Data, bytes)?;
                        waiting.line.chunks.push(id);
                    }
                    Event::Done {
                        sha256, changed, ..
                    } => {
                        waiting.line.entry.sha256 = Some(sha256);
                        waiting.reading = false;
                        self.changed.extend(changed);
                    }
                }
            }
        }
    }

    /// Writes `line` after those waiting before it.
    fn emit_line(&mut self, line: TreeEntry) -> Result<()> {
        if self.waiting.is_empty() {
            self.written += 1;
            return self.push(&line);
        }
        self.waiting.push_back(Waiting {
            line,
            reading: false,
        });
        self.settle(false)
    }

    /// Writes a complete line: encoded once, into the tree stream and the
    /// parent copy alike.
    fn push(&mut self, line: &TreeEntry) -> Result<()> {
        self.encoded.clear();
        serde_json::to_writer(&mut self.encoded, line).context("cannot encode a manifest line")?;
        self.encoded.push(b'\n');
        self.tree.push_encoded(&self.encoded, self.saver)?;
        if let Some(refs) = &mut self.refs {
            for chunk in &line.chunks {
                refs.push(chunk, self.saver)?;
            }
        }
        if let Some(keep) = &mut self.keep {
            keep.write(&self.encoded)?;
        }
        Ok(())
    }
}

fn xattr_records(xattrs: &Xattrs) -> Vec<XattrRecord> {
    xattrs
        .iter()
        .map(|(name, value)| {
            let (name, name_hex) = encode_name(name.as_bytes());
            XattrRecord {
                name,
                name_hex,
                value_hex: hex::encode(value),
            }
        })
        .collect()
}

impl Emit for ChunkEmitter<'_> {
    /// Without a parent, every file is read. With one, a file whose
    /// inode changed after the parent copy was written (its ctime, which
    /// no one sets at will) will not match it: an upgrade that touches
    /// every file (a new release's mtimes) reads them all, ahead.
    fn likely_read(&self, meta: &fs::Metadata) -> bool {
        match &self.parent {
            None => true,
            Some(parent) => meta.ctime() >= parent.written(),
        }
    }

    fn reuse(&mut self, rel: &[u8], meta: &fs::Metadata) -> bool {
        let Some(parent) = &mut self.parent else {
            return false;
        };
        let line = match parent.find_file(rel) {
            Ok(Some(line)) => line,
            Ok(None) => return false,
            Err(e) => {
                // A damaged parent copy only costs reading everything.
                tracing::warn!(
                    "the parent backup's copy cannot be read, reading every file: {e:#}"
                );
                self.parent = None;
                return false;
            }
        };
        let same = line.entry.size == meta.len()
            && line.entry.mtime == meta.mtime()
            && i64::from(line.mtime_ns) == meta.mtime_nsec()
            && line.ctime == meta.ctime()
            && i64::from(line.ctime_ns) == meta.ctime_nsec()
            && line.ino == meta.ino()
            && line.entry.sha256.is_some()
            && (line.entry.size == 0) == line.chunks.is_empty();
        if !same || !line.chunks.iter().all(|c| self.saver.has(c)) {
            return false;
        }
        self.reuse_next = Some(line);
        true
    }

    fn finish_reads(&mut self) -> Result<Vec<Vec<u8>>> {
        self.settle(true)?;
        Ok(std::mem::take(&mut self.changed))
    }

    fn entry(
        &mut self,
        entry: FileEntry,
        rel: &[u8],
        meta: &fs::Metadata,
        xattrs: &Xattrs,
        content: Option<&mut Content<'_>>,
    ) -> Result<()> {
        let is_device = matches!(entry.kind, EntryKind::CharDevice | EntryKind::BlockDevice);
        let mut line = TreeEntry {
            entry,
            mtime_ns: meta.mtime_nsec() as u32,
            ctime: meta.ctime(),
            ctime_ns: meta.ctime_nsec() as u32,
            ino: meta.ino(),
            dev: meta.dev(),
            rdev: if is_device { meta.rdev() } else { 0 },
            xattrs: xattr_records(xattrs),
            chunks: Vec::new(),
        };
        if line.entry.kind == EntryKind::File {
            match content {
                Some(content) => return self.read_file(line, rel, meta, content),
                None => {
                    let parent = self
                        .reuse_next
                        .take()
                        .context("internal error: a file with neither content nor parent")?;
                    line.chunks = parent.chunks;
                    line.entry.sha256 = parent.entry.sha256;
                    line.xattrs = parent.xattrs;
                    self.stats.reused_files += 1;
                    self.stats.reused_bytes += line.entry.size;
                }
            }
        }
        self.emit_line(line)
    }
}

/// Where this host keeps the parent streams of one repository, host and
/// selection (0700, files 0600).
pub fn parent_dir(
    state_dir: &Path,
    repo_local_name: &str,
    host: &str,
    selection: &str,
) -> std::path::PathBuf {
    let group = Id::digest(format!("{host}\0{selection}").as_bytes()).hex();
    state_dir
        .join("parents")
        .join(repo_local_name)
        .join(&group[..16])
}

fn parent_file(dir: &Path, volume: &str) -> std::path::PathBuf {
    dir.join(format!(
        "{}.jsonl.zst",
        &Id::digest(volume.as_bytes()).hex()[..16]
    ))
}

/// A format-2 backup being written: a shared repository lock, the saver,
/// and what each volume's walk produced; nothing is visible in the
/// repository as a backup until [`ChunkedBackup::commit`] writes its
/// commit object last.
pub struct ChunkedBackup {
    repo: std::sync::Arc<crate::repo::v2::Repository>,
    lock: Option<crate::repo::v2::lock::RepoLock>,
    saver: Option<BlobSaver>,
    parents: Option<std::path::PathBuf>,
    force_read: bool,
    readers: usize,
    /// Per volume: tree blobs, stream SHA-256, refs blobs, what the
    /// parent saved.
    volumes: Vec<Option<Walked>>,
    /// Parent copies written by this run, renamed into place at commit.
    new_parents: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    /// The backup the parent copies came from.
    parent_id: Option<String>,
    signer: Option<std::sync::Arc<crate::repo::attest::HostKey>>,
}

/// What reading one volume produced.
#[derive(Clone)]
struct Walked {
    tree: Vec<Id>,
    tree_sha256: Id,
    refs: Option<Vec<Id>>,
    stats: ChunkStats,
}

/// Names the backup the parent copies in a parent directory belong to.
const PARENT_ID_FILE: &str = "backup-id";

/// How a chunked backup reads and what it may reuse.
pub struct ChunkedOptions {
    pub level: i32,
    pub threads: usize,
    /// Threads reading, chunking and hashing files at once.
    pub readers: usize,
    /// Where the parent streams of this host and selection live; `None`
    /// reads every file and keeps no parent.
    pub parents: Option<std::path::PathBuf>,
    /// Read every file even where the parent rule would let it through.
    pub force_read: bool,
    /// This host's key, which signs the commit (docs/FORMAT.md,
    /// "Attribution"); `None` leaves it unsigned.
    pub signer: Option<std::sync::Arc<crate::repo::attest::HostKey>>,
}

impl ChunkedBackup {
    /// Locks the repository (shared) and loads its index: done before any
    /// service is stopped.
    pub fn begin(
        repo: std::sync::Arc<crate::repo::v2::Repository>,
        volumes: usize,
        host: &str,
        command: &str,
        options: &ChunkedOptions,
    ) -> Result<Self> {
        // An encrypted repository opened with an identity but no write key
        // file has no recipients: say so now, before anything is stopped.
        if repo.keys().is_some_and(|k| k.recipients.is_none()) {
            return Err(crate::usage!(
                "backing up into the encrypted repository {} needs its write key file, which names the recipients (--write-key FILE, or the one volsnap init wrote under the state directory); an identity alone does not say whom to encrypt to",
                repo.backend().location()
            ));
        }
        let lock = crate::repo::v2::lock::acquire(
            repo.backend().clone(),
            repo.sealing_shared(),
            crate::repo::v2::lock::LockKind::Shared,
            host,
            command,
        )?;
        #[cfg(feature = "fault-injection")]
        crate::fault::point("v2-locked");
        let index = std::sync::Arc::new(repo.load_index()?);
        // Blobs count as absent in packs a mark condemns, and in packs an
        // index lists but that are gone (a prune killed half way, a hand
        // deletion): the backup then stores them again instead of failing
        // at its commit check every time.
        let mut condemned = repo.condemned()?;
        // Encrypted: blobs whose content keys were wrapped to another
        // recipient set are stored again, so that every current recipient
        // reads the whole backup (a recipient change costs one full backup).
        if let Some(set) = repo
            .keys()
            .and_then(|k| k.recipients.as_ref())
            .map(|r| r.digest())
        {
            condemned.extend(index.packs_for_other_recipients(&set));
        }
        let present = repo.pack_ids()?;
        condemned.extend(
            index
                .packs
                .iter()
                .map(|(p, _)| *p)
                .filter(|p| !present.contains(p)),
        );
        let saver = BlobSaver::new(
            repo.clone(),
            index,
            condemned,
            options.level,
            options.threads,
        )?;
        if let Some(dir) = &options.parents {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        }
        let parent_id = options
            .parents
            .as_ref()
            .filter(|_| !options.force_read)
            .and_then(|dir| fs::read_to_string(dir.join(PARENT_ID_FILE)).ok())
            .map(|id| id.trim().to_string());
        Ok(Self {
            parent_id,
            repo,
            lock: Some(lock),
            saver: Some(saver),
            parents: options.parents.clone(),
            force_read: options.force_read,
            readers: options.readers,
            volumes: (0..volumes).map(|_| None).collect(),
            new_parents: Vec::new(),
            signer: options.signer.clone(),
        })
    }

    /// Reads one volume into chunks; the walk's summary.
    #[allow(clippy::too_many_arguments)]
    pub fn archive(
        &mut self,
        index: usize,
        name: &str,
        source: &Path,
        bwlimit: Option<u64>,
        exclude: &super::Exclude,
        cancel: &crate::cancel::Cancel,
        progress: &dyn Fn(u64),
    ) -> Result<super::ArchiveSummary> {
        let config = self.repo.config.clone();
        let saver = self
            .saver
            .as_mut()
            .context("internal error: backup already committed")?;
        let (parent, keep) = match &self.parents {
            Some(dir) => {
                let path = parent_file(dir, name);
                let parent = if self.force_read || !path.exists() {
                    None
                } else {
                    match ParentCursor::open(&path) {
                        Ok(cursor) => Some(cursor),
                        Err(e) => {
                            tracing::warn!("ignoring the parent copy {}: {e:#}", path.display());
                            None
                        }
                    }
                };
                let temp = path.with_extension(format!("new-{}", std::process::id()));
                let file = crate::fsutil::create_private(&temp).or_else(|_| {
                    let _ = fs::remove_file(&temp);
                    crate::fsutil::create_private(&temp)
                })?;
                self.new_parents.push((temp, path));
                (parent, Some(file))
            }
            None => (None, None),
        };
        let mut emitter = ChunkEmitter::new(
            saver,
            config.chunker.clone(),
            config.tree_chunker.clone(),
            self.repo.chunker_seed(),
            self.repo.keys().is_some(),
            parent,
            keep,
            self.readers,
            cancel,
        )?;
        let summary = super::walk(source, &mut emitter, bwlimit, exclude, cancel, progress)?;
        let stats = emitter.stats;
        let (tree, tree_sha256, refs) = emitter.finish()?;
        self.volumes[index] = Some(Walked {
            tree,
            tree_sha256,
            refs,
            stats,
        });
        Ok(summary)
    }

    /// Files taken from the parent without being read, per volume.
    pub fn reused(&self, index: usize) -> ChunkStats {
        self.volumes
            .get(index)
            .and_then(|v| v.as_ref())
            .map(|w| w.stats)
            .unwrap_or_default()
    }

    /// Writes the volume records, the packs still open, the index, checks
    /// that every pack the backup deduplicated against still exists, then
    /// writes the commit object: from then on the backup exists. Returns
    /// the commit object's id and the bytes of the packs the backup wrote.
    pub fn commit(mut self, manifest: &crate::repo::manifest::Manifest) -> Result<(Id, u64)> {
        let parent = self.parent_id.clone();
        use crate::repo::v2::objects::{Commit, CommitVolume, FORMAT};
        let config = self.repo.config.clone();
        let mut saver = self
            .saver
            .take()
            .context("internal error: committed twice")?;
        let mut volumes = Vec::new();
        for (record, walked) in manifest.volumes.iter().zip(&self.volumes) {
            let Walked {
                tree,
                tree_sha256,
                refs,
                ..
            } = walked
                .clone()
                .with_context(|| format!("internal error: volume {} was not read", record.name))?;
            let mut writer = TreeWriter::new(config.tree_chunker.clone(), self.repo.chunker_seed());
            writer.push(record, &mut saver)?;
            let (record_blobs, record_sha256) = writer.finish(&mut saver)?;
            volumes.push(CommitVolume {
                name: record.name.clone(),
                kind: record.kind,
                files: record.files,
                bytes: record.bytes,
                tree,
                tree_sha256,
                record: record_blobs,
                record_sha256,
                refs,
            });
        }
        let saved = saver.finish()?;
        let stored_bytes: u64 = saved.index.packs.iter().map(|p| p.size).sum();
        if !saved.index.packs.is_empty() {
            self.repo.save_index(&saved.index)?;
        }
        #[cfg(feature = "fault-injection")]
        crate::fault::point("v2-index-stored");

        // A prune may have deleted a pack this backup deduplicated against
        // since the index was read: then nothing is committed, and the next
        // run writes those blobs again.
        let present = self.repo.pack_ids()?;
        let missing: Vec<String> = saved
            .referenced
            .iter()
            .filter(|p| !present.contains(p))
            .map(|p| p.hex())
            .collect();
        if !missing.is_empty() {
            anyhow::bail!(
                "{} pack(s) this backup refers to were deleted meanwhile (a concurrent prune?), e.g. {}; nothing was committed, run the backup again",
                missing.len(),
                missing[0]
            );
        }
        let mut packs: Vec<Id> = saved.referenced.into_iter().collect();
        packs.sort();
        let commit = Commit {
            format: FORMAT,
            id: manifest.id.clone(),
            host: manifest.host.clone(),
            selection: manifest.selection.clone(),
            strategy: manifest.strategy,
            consistency: manifest.consistency,
            reason: manifest.reason.clone(),
            started_at: manifest.started_at,
            completed_at: manifest.completed_at,
            downtime_ms: manifest.downtime_ms,
            duration_ms: manifest.duration_ms,
            volsnap_version: manifest.volsnap_version.clone(),
            containers: manifest.containers.clone(),
            notes: manifest.notes.clone(),
            volumes,
            parent,
            packs,
            stored_bytes: Some(stored_bytes),
            signature: None,
        };
        let mut commit = commit;
        if let Some(key) = &self.signer {
            key.sign(&mut commit)?;
        }
        #[cfg(feature = "fault-injection")]
        crate::fault::point("v2-before-commit");
        let id = self.repo.save_commit(&commit)?;
        #[cfg(feature = "fault-injection")]
        crate::fault::point("v2-after-commit");

        // Only a committed backup becomes the next one's parent.
        for (temp, path) in std::mem::take(&mut self.new_parents) {
            if let Err(e) = fs::rename(&temp, &path) {
                tracing::warn!("cannot keep {} as the next parent: {e}", path.display());
            }
        }
        if let Some(dir) = &self.parents {
            let _ = crate::fsutil::replace_file(&dir.join(PARENT_ID_FILE), manifest.id.as_bytes());
        }
        if let Some(lock) = self.lock.take() {
            lock.release()?;
        }
        Ok((id, stored_bytes))
    }
}

impl Drop for ChunkedBackup {
    fn drop(&mut self) {
        for (temp, _) in &self.new_parents {
            let _ = fs::remove_file(temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, LocalBackend};
    use crate::cancel::Cancel;
    use crate::repo::manifest::{
        Compression, Consistency, Manifest, Strategy, VolumeKind, VolumeRecord,
    };
    use crate::repo::v2::Repository;
    use crate::restore::{restore_volume, Payload, RestoreOptions};
    use sha2::{Digest, Sha256};
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    fn pseudo_random(len: usize, mut state: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn manifest(id: &str, summary: &super::super::ArchiveSummary) -> Manifest {
        Manifest {
            format_version: crate::repo::manifest::FORMAT_VERSION,
            id: id.into(),
            started_at: chrono::Utc::now(),
            completed_at: chrono::Utc::now(),
            host: "h".into(),
            volsnap_version: "test".into(),
            selection: "--project p".into(),
            strategy: Strategy::Online,
            consistency: Consistency::BestEffort,
            reason: "test".into(),
            downtime_ms: 0,
            duration_ms: 0,
            compression: Compression::Zstd,
            containers: Vec::new(),
            volumes: vec![VolumeRecord {
                name: "vol".into(),
                kind: VolumeKind::Volume,
                source_path: "/src".into(),
                driver: None,
                driver_opts: Default::default(),
                labels: Default::default(),
                mounted_by: Vec::new(),
                archive: String::new(),
                sha256: String::new(),
                archive_bytes: 0,
                files: summary.files,
                bytes: summary.bytes,
                changed_during_read: summary.changed_during_read.clone(),
                vanished_during_read: summary.vanished_during_read.clone(),
                left_out: summary.left_out.clone(),
                excluded: Vec::new(),
                excluded_entries: 0,
                entries: Vec::new(),
            }],
            notes: Vec::new(),
            stored_bytes: None,
        }
    }

    /// Every entry under `root`: path, kind and content (or link target).
    fn tree(root: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                let meta = fs::symlink_metadata(&path).unwrap();
                let what = if meta.is_dir() {
                    pending.push(path.clone());
                    format!("dir {:o}", meta.mode() & 0o7777)
                } else if meta.file_type().is_symlink() {
                    format!("link {}", fs::read_link(&path).unwrap().display())
                } else {
                    let bytes = fs::read(&path).unwrap();
                    format!(
                        "file {:o} {} {}",
                        meta.mode() & 0o7777,
                        bytes.len(),
                        Id::digest(&bytes)
                    )
                };
                out.push((rel, what));
            }
        }
        out.sort();
        out
    }

    fn back_up(repo: &Arc<Repository>, src: &Path, parents: &Path, id: &str) -> ChunkStats {
        let options = ChunkedOptions {
            level: 1,
            threads: 2,
            readers: 3,
            parents: Some(parents.to_path_buf()),
            force_read: false,
            signer: None,
        };
        let mut backup = ChunkedBackup::begin(repo.clone(), 1, "h", "test", &options).unwrap();
        let summary = backup
            .archive(
                0,
                "vol",
                src,
                None,
                &super::super::Exclude::default(),
                &Cancel::new(),
                &|_| {},
            )
            .unwrap();
        let stats = backup.reused(0);
        backup.commit(&manifest(id, &summary)).unwrap();
        stats
    }

    #[test]
    fn a_tree_round_trips_through_chunks_and_unchanged_files_are_not_read_again() {
        let scratch = tempfile::tempdir().unwrap();
        let src = scratch.path().join("src");
        fs::create_dir_all(src.join("sub/deeper")).unwrap();
        fs::write(src.join("big"), pseudo_random(5 << 20, 3)).unwrap();
        fs::write(src.join("log"), b"line\n".repeat(100_000)).unwrap();
        fs::write(src.join("empty"), b"").unwrap();
        fs::write(src.join("sub/small"), b"small file").unwrap();
        fs::write(src.join("sub/deeper/x"), b"x").unwrap();
        fs::hard_link(src.join("sub/small"), src.join("sub/link")).unwrap();
        std::os::unix::fs::symlink("../big", src.join("sub/sym")).unwrap();
        fs::set_permissions(src.join("sub/small"), fs::Permissions::from_mode(0o640)).unwrap();
        let repo_dir = scratch.path().join("repo");
        fs::create_dir(&repo_dir).unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open(&repo_dir).unwrap());
        let repo = Arc::new(Repository::init(backend, None).unwrap());
        let parents = scratch.path().join("state");

        let first = back_up(&repo, &src, &parents, "20260101T000001Z-0001");
        assert_eq!(first.reused_files, 0);
        let packs_after_first = repo.pack_ids().unwrap();

        // Nothing changed: every file comes from the parent, no new data.
        let second = back_up(&repo, &src, &parents, "20260101T000002Z-0002");
        assert_eq!(second.reused_files, 5, "big, log, empty, small, x");
        assert_eq!(repo.pack_ids().unwrap(), packs_after_first);

        // One file appended to: only it is read.
        fs::OpenOptions::new()
            .append(true)
            .open(src.join("log"))
            .unwrap()
            .write_all(b"more\n")
            .unwrap();
        let third = back_up(&repo, &src, &parents, "20260101T000003Z-0003");
        assert_eq!(third.reused_files, 4);

        // The newest backup restores byte for byte.
        let commits = repo.commits().unwrap();
        assert_eq!(commits.len(), 3);
        let (_, last) = commits
            .iter()
            .find(|(_, c)| c.id == "20260101T000003Z-0003")
            .unwrap();
        let index = repo.load_index().unwrap();
        let target = scratch.path().join("target");
        let payload = Payload::Chunked {
            repo: &repo,
            index: &index,
            volume: &last.volumes[0],
        };
        restore_volume(payload, &target, RestoreOptions::default(), &Cancel::new()).unwrap();
        assert_eq!(tree(&target), tree(&src));
        let restored = fs::metadata(target.join("sub/link")).unwrap();
        assert_eq!(restored.nlink(), 2, "the hard link came back as one");
    }

    /// Reads `src` whole with `readers` threads: the volume's tree blobs,
    /// the stream's SHA-256 and the walk's counts.
    fn tree_read_by(src: &Path, readers: usize) -> (Vec<Id>, Id, u64, u64) {
        let scratch = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open(scratch.path()).unwrap());
        let repo = Arc::new(Repository::init(backend, None).unwrap());
        let options = ChunkedOptions {
            level: 1,
            threads: 2,
            readers,
            parents: None,
            force_read: false,
            signer: None,
        };
        let mut backup = ChunkedBackup::begin(repo, 1, "h", "test", &options).unwrap();
        let exclude = super::super::Exclude::default();
        let summary = backup
            .archive(0, "vol", src, None, &exclude, &Cancel::new(), &|_| {})
            .unwrap();
        assert!(summary.changed_during_read.is_empty());
        let walked = backup.volumes[0].clone().unwrap();
        (
            walked.tree,
            walked.tree_sha256,
            summary.files,
            summary.bytes,
        )
    }

    #[test]
    fn one_and_several_reading_threads_write_the_same_tree() {
        let scratch = tempfile::tempdir().unwrap();
        let src = scratch.path().join("src");
        // Small files of many sizes (batched), some large enough for
        // several chunks (alone, in pieces), links between them.
        for n in 0..400usize {
            let dir = src.join(format!("d{}", n % 7)).join(format!("e{}", n % 3));
            fs::create_dir_all(&dir).unwrap();
            let len = (n * 7919) % 150_000;
            fs::write(dir.join(format!("f{n}")), pseudo_random(len, n as u64 + 1)).unwrap();
        }
        fs::write(src.join("d1/huge"), pseudo_random(11 << 20, 5)).unwrap();
        fs::write(src.join("d3/e0/large"), pseudo_random(3 << 20, 6)).unwrap();
        fs::write(src.join("d5/empty"), b"").unwrap();
        fs::hard_link(src.join("d1/huge"), src.join("d6/huge-link")).unwrap();
        std::os::unix::fs::symlink("../d1/huge", src.join("d2/sym")).unwrap();

        let one = tree_read_by(&src, 1);
        assert_eq!(one.2, 403, "every file was read");
        assert!(one.3 > 14 << 20);
        for readers in [2, 5] {
            assert!(
                tree_read_by(&src, readers) == one,
                "{readers} reading threads wrote another tree than one"
            );
        }
    }

    #[test]
    fn a_changed_parent_never_makes_a_changed_file_look_unchanged() {
        let scratch = tempfile::tempdir().unwrap();
        let src = scratch.path().join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), b"version one").unwrap();
        let repo_dir = scratch.path().join("repo");
        fs::create_dir(&repo_dir).unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open(&repo_dir).unwrap());
        let repo = Arc::new(Repository::init(backend, None).unwrap());
        let parents = scratch.path().join("state");
        back_up(&repo, &src, &parents, "20260101T000001Z-0001");
        // Same size, same mtime (set back), but a new ctime: read again.
        let mtime = fs::metadata(src.join("f")).unwrap().modified().unwrap();
        fs::write(src.join("f"), b"version two").unwrap();
        fs::File::options()
            .write(true)
            .open(src.join("f"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let second = back_up(&repo, &src, &parents, "20260101T000002Z-0002");
        assert_eq!(second.reused_files, 0);
        // The parent's chunks gone from the index (a prune took them): read.
        for object in repo.backend().list("index").unwrap() {
            repo.backend().delete(&object.name).unwrap();
        }
        let third = back_up(&repo, &src, &parents, "20260101T000003Z-0003");
        assert_eq!(third.reused_files, 0);
    }

    /// A backup is data: a stream crafted to be internally consistent
    /// (every id right) but naming `../escape`, or a file beneath a
    /// symlink it planted, is refused by restore and export, and nothing
    /// is written outside the target.
    #[test]
    fn a_crafted_stream_never_writes_outside_the_target() {
        use crate::repo::manifest::EntryKind;
        use crate::repo::v2::objects::{Commit, CommitVolume, FORMAT};
        let scratch = tempfile::tempdir().unwrap();
        let outside = scratch.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let repo_dir = scratch.path().join("repo");
        fs::create_dir(&repo_dir).unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open(&repo_dir).unwrap());
        let repo = Arc::new(Repository::init(backend, None).unwrap());
        let entry = |path: &str, kind: EntryKind, target: Option<String>| TreeEntry {
            entry: FileEntry {
                path: path.into(),
                path_hex: None,
                kind,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 0,
                size: 0,
                sha256: None,
                target,
                target_hex: None,
            },
            mtime_ns: 0,
            ctime: 0,
            ctime_ns: 0,
            ino: 0,
            dev: 0,
            rdev: 0,
            xattrs: Vec::new(),
            chunks: Vec::new(),
        };
        let attacks: Vec<(&str, Vec<TreeEntry>)> = vec![
            (
                "dotdot",
                vec![
                    entry(".", EntryKind::Dir, None),
                    entry("../escape", EntryKind::File, None),
                ],
            ),
            (
                "through-symlink",
                vec![
                    entry(".", EntryKind::Dir, None),
                    entry("s", EntryKind::Symlink, Some(outside.display().to_string())),
                    entry("s/planted", EntryKind::File, None),
                ],
            ),
        ];
        for (name, lines) in attacks {
            let index = Arc::new(repo.load_index().unwrap());
            let mut saver = BlobSaver::new(repo.clone(), index, Default::default(), 1, 1).unwrap();
            let evil = b"evil".to_vec();
            let chunk = saver.save(BlobKind::Data, evil.clone()).unwrap();
            let mut tree = TreeWriter::new(ChunkerParams::trees(), 0);
            for mut line in lines {
                if line.entry.kind == EntryKind::File {
                    line.entry.size = 4;
                    line.entry.sha256 = Some(hex::encode(Sha256::digest(&evil)));
                    line.chunks = vec![chunk];
                }
                tree.push(&line, &mut saver).unwrap();
            }
            let (tree, tree_sha256) = tree.finish(&mut saver).unwrap();
            let summary = super::super::ArchiveSummary::default();
            let m = manifest(name, &summary);
            let mut record = TreeWriter::new(ChunkerParams::trees(), 0);
            record.push(&m.volumes[0], &mut saver).unwrap();
            let (record, record_sha256) = record.finish(&mut saver).unwrap();
            let saved = saver.finish().unwrap();
            repo.save_index(&saved.index).unwrap();
            let commit = Commit {
                format: FORMAT,
                id: name.into(),
                host: m.host.clone(),
                selection: m.selection.clone(),
                strategy: m.strategy,
                consistency: m.consistency,
                reason: m.reason.clone(),
                started_at: m.started_at,
                completed_at: m.completed_at,
                downtime_ms: 0,
                duration_ms: 0,
                volsnap_version: "test".into(),
                containers: Vec::new(),
                notes: Vec::new(),
                stored_bytes: None,
                signature: None,
                volumes: vec![CommitVolume {
                    name: "vol".into(),
                    kind: VolumeKind::Volume,
                    files: 1,
                    bytes: 4,
                    tree,
                    tree_sha256,
                    record,
                    record_sha256,
                    refs: None,
                }],
                parent: None,
                packs: saved.referenced.into_iter().collect(),
            };
            repo.save_commit(&commit).unwrap();
            let index = repo.load_index().unwrap();
            let target = scratch.path().join(format!("target-{name}"));
            let payload = Payload::Chunked {
                repo: &repo,
                index: &index,
                volume: &commit.volumes[0],
            };
            let refused =
                restore_volume(payload, &target, RestoreOptions::default(), &Cancel::new());
            assert!(refused.is_err(), "{name}: the crafted backup restored");
            let mut sink = Vec::new();
            let exported = crate::restore::export::export(
                &[crate::restore::export::ExportVolume::Chunked {
                    repo: &repo,
                    index: &index,
                    volume: &commit.volumes[0],
                    prefix: String::new(),
                }],
                &mut sink,
                &Cancel::new(),
            );
            if name == "dotdot" {
                assert!(exported.is_err(), "export wrote a name leaving the tree");
            }
            assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "{name}");
            assert!(!scratch.path().join("escape").exists(), "{name}");
            // Nothing was swapped in: the target holds no staged leftovers.
            assert_eq!(fs::read_dir(&target).unwrap().count(), 0, "{name}");
        }
    }
}
