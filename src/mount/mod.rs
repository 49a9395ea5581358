//! `volsnap mount`: every backup of a repository as a read-only file
//! system (FUSE, through the fuser crate; no libfuse needed):
//! `hosts/HOST/STACK/BACKUP/VOLUME/…`, with a `latest` link in each stack.
//!
//! What the repository says is an attacker's:
//! - host, stack, backup and volume names pass [`tree::component`], which
//!   writes `/`, `%`, control bytes and a leading dot as `%XX`; paths inside
//!   a volume are split into components, and one that is empty, `.`, `..`
//!   or holds a NUL is skipped (and reported), never followed;
//! - a file's type comes from its entry's kind, never from its mode bits;
//! - content is read through the chunk index, every blob checked against
//!   its id, and a file whose chunks do not add up to its size fails with
//!   EIO; format 1 content is checked against its SHA-256 before it is
//!   served;
//! - the mount is read-only, `nosuid` and `nodev`, and only its owner may
//!   enter it unless `--allow-other` (then the kernel checks modes).

mod archived;
mod tree;

use crate::cancel::Cancel;
use crate::repo::manifest::{Manifest, MANIFEST_FILE};
use crate::repo::v2::id::Id;
use crate::repo::v2::index::Index;
use crate::repo::v2::Repository;
use crate::repo::{BackupEntry, Format};
use anyhow::{Context, Result};
use fuser::{
    FileType, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tree::{Body, Content, Tree};

/// How `volsnap mount` was asked to run.
pub struct MountOptions {
    pub repo: PathBuf,
    pub dir: PathBuf,
    /// Let other users in (the kernel then checks each entry's mode).
    pub allow_other: bool,
    /// Decrypted, decompressed chunks kept in memory.
    pub cache_bytes: usize,
}

/// Format-1 archives read at once (each by a thread of its own).
const CURSORS_KEPT: usize = 4;

/// How long the kernel may keep what it was told: nothing here changes.
const TTL: Duration = Duration::from_secs(3600);

/// One backup the mount shows.
struct Shown {
    /// Format 2: its commit; format 1: its directory.
    commit: Option<Arc<crate::repo::v2::objects::Commit>>,
    dir: PathBuf,
}

struct Mounted {
    tree: Tree,
    format: Format,
    chunked: Option<(Arc<Repository>, Index)>,
    backups: Vec<Shown>,
    cache: ChunkCache,
    open: HashMap<u64, Opened>,
    next_fh: u64,
    /// Format 1: the archives being read, most recently used last.
    cursors: Vec<((usize, usize), archived::Cursor)>,
    cancel: Cancel,
}

/// An open file: where each of its chunks ends, or its extracted content.
enum Opened {
    Chunks { chunks: Arc<[Id]>, ends: Arc<[u64]> },
    Extracted(std::fs::File),
}

/// Mounts the repository at `options.dir` and serves it until `cancel`
/// is set (SIGINT, SIGTERM) or the directory is unmounted.
pub fn run(options: MountOptions, cancel: Cancel, announce: &dyn Fn(&str)) -> Result<()> {
    let mount_point = check_mount_point(&options.dir)?;
    let format = crate::repo::detect(&options.repo);
    let chunked = match format {
        Format::Chunked => {
            let repo = crate::repo::open_chunked(&options.repo)?;
            repo.require_contents()?;
            let index = repo.load_index()?;
            Some((repo, index))
        }
        Format::Tar => None,
    };
    let (entries, warnings) = crate::repo::list_any(&options.repo)?;
    let commits: HashMap<Id, Arc<crate::repo::v2::objects::Commit>> = match &chunked {
        Some((repo, _)) => repo
            .commits()?
            .into_iter()
            .map(|(o, c)| (o, Arc::new(c)))
            .collect(),
        None => HashMap::new(),
    };
    let mut mounted = Mounted {
        tree: Tree::new(),
        format,
        chunked,
        backups: Vec::new(),
        cache: ChunkCache::new(options.cache_bytes),
        open: HashMap::new(),
        next_fh: 1,
        cursors: Vec::new(),
        cancel: cancel.clone(),
    };
    mounted.add_backups(&entries, &commits);
    for w in warnings {
        mounted.tree.skip(crate::text::escape(&w).into_owned());
    }
    let mut mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
        MountOption::FSName("volsnap".into()),
        MountOption::Subtype("volsnap".into()),
    ];
    if options.allow_other {
        mount_options.push(MountOption::AllowOther);
    }
    let count = mounted.backups.len();
    let mut session =
        fuser::Session::new(mounted, &mount_point, &mount_options).with_context(|| {
            format!(
                "cannot mount on {} (is /dev/fuse there, and are you root?)",
                options.dir.display()
            )
        })?;
    let mut unmounter = session.unmount_callable();
    let serving = std::thread::Builder::new()
        .name("fuse".into())
        .spawn(move || session.run())
        .context("cannot start the file system's thread")?;
    announce(&format!(
        "volsnap: {count} backups of {} mounted read-only at {}; stop with Ctrl-C, SIGTERM or umount {}",
        options.repo.display(),
        options.dir.display(),
        options.dir.display()
    ));
    while !cancel.is_cancelled() && !serving.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    if !serving.is_finished() {
        unmounter.unmount().with_context(|| {
            format!(
                "cannot unmount {} (busy? close what uses it, then umount it)",
                options.dir.display()
            )
        })?;
    }
    match serving.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("the file system stopped"),
        Err(_) => anyhow::bail!("the file system's thread failed"),
    }
}

/// A mount point must be an empty directory (not a link to one): nothing
/// there is hidden by the mount, and nothing is mounted somewhere else.
/// Since mounting follows the path again, no directory above it may be
/// changed by another user (one could swap it for a link in between).
/// Its real path, to mount on.
fn check_mount_point(dir: &Path) -> Result<PathBuf> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| crate::usage!("cannot use {} as a mount point: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(crate::usage!(
            "{} is not a directory (a symbolic link is refused too): mount on an empty directory",
            dir.display()
        ));
    }
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if entries.next().is_some() {
        return Err(crate::usage!(
            "{} is not empty: mount on an empty directory, so that nothing is hidden",
            dir.display()
        ));
    }
    use std::os::unix::fs::MetadataExt;
    let real =
        std::fs::canonicalize(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    for above in real.ancestors().skip(1) {
        let meta =
            std::fs::metadata(above).with_context(|| format!("cannot read {}", above.display()))?;
        let sticky = meta.mode() & 0o1000 != 0;
        let others_write = meta.mode() & 0o022 != 0 && !sticky;
        if others_write || (meta.uid() != 0 && meta.uid() != me) {
            return Err(crate::usage!(
                "{} can be changed by another user, who could swap {} for a link to elsewhere between this check and the mount: mount under a directory only root (or you) can change, such as /mnt",
                above.display(),
                dir.display()
            ));
        }
    }
    Ok(real)
}

impl Mounted {
    /// hosts/HOST/STACK/BACKUP for every backup, and each stack's `latest`
    /// link to its newest backup that verifies as its host's.
    fn add_backups(
        &mut self,
        entries: &[BackupEntry],
        commits: &HashMap<Id, Arc<crate::repo::v2::objects::Commit>>,
    ) {
        let Some(hosts) = self.tree.dir(1, OsString::from("hosts")) else {
            return;
        };
        // Backups that count (verify as their host's; every format-1 one)
        // are named first, so that no forged backup takes their name; the
        // others carry `~unverified` in theirs.
        let mut sorted: Vec<&BackupEntry> = entries.iter().collect();
        sorted.sort_by_key(|a| (!a.counts(), a.manifest.started_at));
        let mut newest: HashMap<u64, OsString> = HashMap::new();
        for entry in sorted {
            let m = &entry.manifest;
            let Some(host) = self.tree.dir(hosts, tree::component(&m.host)) else {
                continue;
            };
            let Some(stack) = self.tree.dir(host, tree::stack_name(&m.selection)) else {
                continue;
            };
            let object = match self.format {
                Format::Chunked => entry
                    .dir
                    .file_name()
                    .and_then(|n| Id::parse(&n.to_string_lossy()).ok()),
                Format::Tar => None,
            };
            let commit = object.and_then(|o| commits.get(&o).cloned());
            if self.format == Format::Chunked && commit.is_none() {
                continue;
            }
            let started = tree::time(
                m.started_at.timestamp(),
                m.started_at.timestamp_subsec_nanos(),
            );
            let mut attr = self.tree.dir_attr(0o555);
            attr.mtime = started;
            attr.ctime = started;
            let n = self.backups.len();
            let body = || Body::Dir {
                children: Default::default(),
                unread: Some(n),
            };
            // Two commits may claim one id: the second is named by its
            // object too. `latest` is never a backup's name.
            let shown_id = if entry.counts() {
                entry.id.clone()
            } else {
                format!("{}~unverified", entry.id)
            };
            let mut name = tree::component(&shown_id);
            if name == "latest" {
                name = tree::component(&format!("{shown_id}~"));
            }
            let mut added = self.tree.add(stack, name.clone(), attr, body());
            if added.is_none() {
                if let Some(object) = &object {
                    name = tree::component(&format!("{shown_id}~{}", object.hex()));
                    added = self.tree.add(stack, name.clone(), attr, body());
                }
            }
            if added.is_none() {
                self.tree.skip(format!(
                    "backup {}: its name is taken",
                    crate::text::escape(&entry.id)
                ));
                continue;
            }
            self.backups.push(Shown {
                commit,
                dir: entry.dir.clone(),
            });
            if entry.counts() {
                newest.insert(stack, name);
            }
        }
        for (stack, name) in newest {
            let target = name.into_encoded_bytes();
            let mut attr = tree::attr(
                FileType::Symlink,
                0o777,
                0,
                0,
                target.len() as u64,
                self.tree.made,
                0,
            );
            attr.nlink = 1;
            if self
                .tree
                .add(stack, OsString::from("latest"), attr, Body::Symlink(target))
                .is_none()
            {
                self.tree
                    .skip("a stack's latest link: the name is taken".into());
            }
        }
    }

    /// Reads a backup's entries into its directory the first time it is
    /// looked into.
    fn read_backup(&mut self, ino: u64) -> Result<(), i32> {
        let Some(Body::Dir {
            unread: Some(n), ..
        }) = self.tree.get(ino).map(|node| &node.body)
        else {
            return Ok(());
        };
        let n = *n;
        // Read once, whatever comes of it: a backup that cannot be read is
        // not read again on every look.
        if let Some(node) = self.tree.get_mut(ino) {
            if let Body::Dir { unread, .. } = &mut node.body {
                *unread = None;
            }
        }
        if let Err(e) = self.load(ino, n) {
            let dir = self.backups[n].dir.to_string_lossy().into_owned();
            self.tree.skip(format!(
                "backup {}: it cannot be read ({})",
                crate::text::escape(&dir),
                crate::text::escape(&format!("{e:#}"))
            ));
            return Err(libc::EIO);
        }
        Ok(())
    }

    fn load(&mut self, ino: u64, n: usize) -> Result<()> {
        match (&self.chunked, self.backups[n].commit.clone()) {
            (Some((repo, _)), Some(commit)) => {
                use crate::repo::v2::tree::{TreeEntry, TreeReader};
                let repo = repo.clone();
                for volume in &commit.volumes {
                    let dir = self.volume_dir(ino, &volume.name)?;
                    let index = &self.chunked.as_ref().context("no chunk index")?.1;
                    let mut lines = TreeReader::new(&repo, index, &volume.tree, volume.tree_sha256);
                    while let Some(line) = lines.next_line::<TreeEntry>()? {
                        self.cancel.check()?;
                        let content = Content::Chunks(line.chunks.into());
                        self.tree.add_entry(
                            dir,
                            &line.entry,
                            Some(content),
                            line.mtime_ns,
                            line.rdev,
                        );
                    }
                }
            }
            _ => {
                let manifest = Manifest::load(&self.backups[n].dir.join(MANIFEST_FILE))?;
                for (v, volume) in manifest.volumes.iter().enumerate() {
                    let dir = self.volume_dir(ino, &volume.name)?;
                    for entry in &volume.entries {
                        let content = entry.raw_path().ok().map(|path| Content::Archived {
                            backup: n,
                            volume: v,
                            path: path.into_owned(),
                            sha256: entry.sha256.clone(),
                        });
                        self.tree.add_entry(dir, entry, content, 0, 0);
                    }
                }
            }
        }
        Ok(())
    }

    /// A volume's directory in a backup's: refused when the name is taken
    /// (two volumes of one name never share a directory).
    fn volume_dir(&mut self, backup: u64, name: &str) -> Result<u64> {
        let attr = self.tree.dir_attr(0o555);
        let body = Body::Dir {
            children: Default::default(),
            unread: None,
        };
        self.tree
            .add(backup, tree::component(name), attr, body)
            .with_context(|| format!("two volumes are named {}", crate::text::escape(name)))
    }

    fn open_content(&mut self, content: &Content, size: u64) -> Result<Opened> {
        match content {
            Content::Chunks(chunks) => {
                let (_, index) = self.chunked.as_ref().context("no chunk index")?;
                let mut ends = Vec::with_capacity(chunks.len());
                let mut end = 0u64;
                for chunk in chunks.iter() {
                    let at = index
                        .get(chunk)
                        .with_context(|| format!("chunk {chunk} is in no pack"))?;
                    end = end
                        .checked_add(at.raw_length)
                        .context("chunk sizes overflow")?;
                    ends.push(end);
                }
                anyhow::ensure!(
                    end == size,
                    "its chunks hold {end} bytes, its entry says {size}"
                );
                Ok(Opened::Chunks {
                    chunks: chunks.clone(),
                    ends: ends.into(),
                })
            }
            Content::Archived {
                backup,
                volume,
                path,
                sha256,
            } => {
                let cursor = self.cursor(*backup, *volume)?;
                cursor
                    .extract(path, size, sha256.as_deref())
                    .map(Opened::Extracted)
            }
        }
    }

    /// The reading thread of a format-1 volume's archive, started when
    /// first needed; a few are kept, the least recently used one goes.
    fn cursor(&mut self, backup: usize, volume: usize) -> Result<&archived::Cursor> {
        let key = (backup, volume);
        if let Some(at) = self.cursors.iter().position(|(k, _)| *k == key) {
            let kept = self.cursors.remove(at);
            self.cursors.push(kept);
        } else {
            let dir = &self.backups[backup].dir;
            let manifest = Manifest::load(&dir.join(MANIFEST_FILE))?;
            let record = manifest.volumes.get(volume).context("no such volume")?;
            let cursor = archived::Cursor::start(
                dir.join(&record.archive),
                manifest.compression,
                self.cancel.clone(),
            )?;
            if self.cursors.len() == CURSORS_KEPT {
                self.cursors.remove(0);
            }
            self.cursors.push((key, cursor));
        }
        self.cursors
            .last()
            .map(|(_, c)| c)
            .context("no archive cursor")
    }

    fn read_chunks(
        &mut self,
        chunks: &[Id],
        ends: &[u64],
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>> {
        let total = ends.last().copied().unwrap_or(0);
        let stop = offset.saturating_add(size).min(total);
        let mut out = Vec::with_capacity(stop.saturating_sub(offset) as usize);
        let mut at = offset;
        let mut n = ends.partition_point(|end| *end <= offset);
        while at < stop && n < chunks.len() {
            let start = if n == 0 { 0 } else { ends[n - 1] };
            let data = self.chunk(&chunks[n], ends[n] - start)?;
            let from = (at - start) as usize;
            let to = (stop.min(ends[n]) - start) as usize;
            out.extend_from_slice(&data[from..to]);
            at = start + to as u64;
            n += 1;
        }
        Ok(out)
    }

    /// A chunk's plaintext, checked against its id (by the repository) and
    /// against the length the index gave it.
    fn chunk(&mut self, id: &Id, length: u64) -> Result<Arc<Vec<u8>>> {
        if let Some(data) = self.cache.get(id) {
            return Ok(data);
        }
        let (repo, index) = self.chunked.as_ref().context("no chunk index")?;
        let data = Arc::new(repo.read_blob(index, id)?);
        anyhow::ensure!(
            data.len() as u64 == length,
            "chunk {id} holds {} bytes, the index says {length}",
            data.len()
        );
        self.cache.put(*id, data.clone());
        Ok(data)
    }
}

/// Chunks kept by most recent use, up to a byte budget (each charged its
/// length and what keeping it costs besides).
struct ChunkCache {
    /// Each chunk and the tick of its last use.
    kept: HashMap<Id, (Arc<Vec<u8>>, u64)>,
    /// Ticks of last use, oldest first.
    by_use: BTreeMap<u64, Id>,
    tick: u64,
    bytes: usize,
    budget: usize,
}

/// What one kept chunk costs beyond its bytes (map entries, the Arc).
const CHUNK_OVERHEAD: usize = 128;

impl ChunkCache {
    fn new(budget: usize) -> Self {
        ChunkCache {
            kept: HashMap::new(),
            by_use: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            budget,
        }
    }

    fn get(&mut self, id: &Id) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let (data, used) = self.kept.get_mut(id)?;
        self.by_use.remove(used);
        *used = self.tick;
        self.by_use.insert(self.tick, *id);
        Some(data.clone())
    }

    fn put(&mut self, id: Id, data: Arc<Vec<u8>>) {
        self.tick += 1;
        self.bytes += data.len() + CHUNK_OVERHEAD;
        if let Some((old, used)) = self.kept.insert(id, (data, self.tick)) {
            self.bytes -= old.len() + CHUNK_OVERHEAD;
            self.by_use.remove(&used);
        }
        self.by_use.insert(self.tick, id);
        while self.bytes > self.budget && self.kept.len() > 1 {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            if let Some((gone, _)) = self.kept.remove(&oldest) {
                self.bytes -= gone.len() + CHUNK_OVERHEAD;
            }
        }
    }
}

impl fuser::Filesystem for Mounted {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        if let Err(e) = self.read_backup(parent) {
            return reply.error(e);
        }
        match self
            .tree
            .child(parent, name)
            .and_then(|ino| self.tree.get(ino))
        {
            Some(node) => reply.entry(&TTL, &node.attr, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.tree.get(ino) {
            Some(node) => reply.attr(&TTL, &node.attr),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.tree.get(ino).map(|n| &n.body) {
            Some(Body::Symlink(target)) => reply.data(target),
            Some(_) => reply.error(libc::EINVAL),
            None => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        let (content, size) = match self.tree.get(ino) {
            Some(node) => match &node.body {
                Body::File(content) => (content.clone(), node.attr.size),
                Body::Dir { .. } => return reply.error(libc::EISDIR),
                _ => return reply.error(libc::EACCES),
            },
            None => return reply.error(libc::ENOENT),
        };
        match self.open_content(&content, size) {
            Ok(opened) => {
                let fh = self.next_fh;
                self.next_fh += 1;
                self.open.insert(fh, opened);
                reply.opened(fh, fuser::consts::FOPEN_KEEP_CACHE);
            }
            Err(e) => {
                tracing::warn!("cannot open inode {ino} of the mount: {e:#}");
                reply.error(libc::EIO)
            }
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        let read = match self.open.get(&fh) {
            Some(Opened::Chunks { chunks, ends }) => {
                let (chunks, ends) = (chunks.clone(), ends.clone());
                self.read_chunks(&chunks, &ends, offset, u64::from(size))
            }
            Some(Opened::Extracted(file)) => {
                let mut buf = vec![0u8; size as usize];
                file.read_at(&mut buf, offset)
                    .map(|n| {
                        buf.truncate(n);
                        buf
                    })
                    .map_err(Into::into)
            }
            None => return reply.error(libc::EBADF),
        };
        match read {
            Ok(data) => reply.data(&data),
            Err(e) => {
                tracing::warn!("cannot read inode {ino} of the mount: {e:#}");
                reply.error(libc::EIO)
            }
        }
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.open.remove(&fh);
        reply.ok();
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.read_backup(ino) {
            Ok(()) => reply.opened(0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        if let Err(e) = self.read_backup(ino) {
            return reply.error(e);
        }
        let Some(node) = self.tree.get(ino) else {
            return reply.error(libc::ENOENT);
        };
        let Body::Dir { children, .. } = &node.body else {
            return reply.error(libc::ENOTDIR);
        };
        let dots = [
            (ino, FileType::Directory, OsStr::new(".")),
            (node.parent, FileType::Directory, OsStr::new("..")),
        ];
        let listed = dots
            .into_iter()
            .chain(children.iter().filter_map(|(name, child)| {
                self.tree
                    .get(*child)
                    .map(|c| (*child, c.attr.kind, name.as_os_str()))
            }));
        for (n, (child, kind, name)) in listed
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(0))
        {
            if reply.add(child, n as i64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}
