//! The parent copies of format-2 backups: this host's own manifest stream
//! of a volume from its last committed backup (read by the next backup,
//! alongside the walk), and the copy of the stream being written now.
//!
//! Both are read or written for every entry, changed or not: decoding and
//! parsing the old copy and compressing the new one were half of an
//! unchanged backup's time on one thread. Each now runs on a thread of its
//! own, in batches, beside the walk.

use crate::repo::manifest::EntryKind;
use crate::repo::v2::tree::{walk_order, TreeEntry};
use anyhow::{bail, Context, Result};
use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Lines a batch of the parent copy holds, at most.
const BATCH_LINES: usize = 512;
/// Bytes of encoded lines a batch holds, at most one line past (either
/// way).
const BATCH_BYTES: usize = 256 << 10;
/// Batches in flight either way: bounded memory whatever the tree.
const BATCHES_AHEAD: usize = 4;

/// A parent stream being walked alongside the tree, parsed ahead by a
/// thread.
pub struct ParentCursor {
    batches: Receiver<std::result::Result<Vec<TreeEntry>, String>>,
    batch: std::vec::IntoIter<TreeEntry>,
    current: Option<TreeEntry>,
    /// When the copy was last written (seconds since the epoch).
    written: i64,
}

impl ParentCursor {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let written = std::os::unix::fs::MetadataExt::mtime(&file.metadata()?);
        let decoder = zstd::stream::read::Decoder::new(file)?;
        let (sender, batches) = sync_channel(BATCHES_AHEAD);
        std::thread::Builder::new()
            .name("parent".into())
            .spawn(move || read_batches(BufReader::with_capacity(1 << 18, decoder), &sender))?;
        let mut cursor = Self {
            batches,
            batch: Vec::new().into_iter(),
            current: None,
            written,
        };
        cursor.advance()?;
        Ok(cursor)
    }

    fn advance(&mut self) -> Result<()> {
        loop {
            if let Some(line) = self.batch.next() {
                self.current = Some(line);
                return Ok(());
            }
            match self.batches.recv() {
                Ok(Ok(batch)) => self.batch = batch.into_iter(),
                Ok(Err(e)) => bail!("{e}"),
                // The end of the copy.
                Err(_) => {
                    self.current = None;
                    return Ok(());
                }
            }
        }
    }

    /// When the copy was written: the end of the parent backup's walk.
    pub fn written(&self) -> i64 {
        self.written
    }

    /// The parent's line for the regular file at `rel`, if it has one;
    /// skips the lines of entries that are gone.
    pub fn find_file(&mut self, rel: &[u8]) -> Result<Option<TreeEntry>> {
        while let Some(line) = &self.current {
            let path = line.entry.raw_path()?;
            match walk_order(&path, line.entry.kind == EntryKind::Dir, rel, false) {
                Ordering::Less => self.advance()?,
                Ordering::Equal => {
                    let found = self.current.take();
                    self.advance()?;
                    return Ok(found.filter(|l| l.entry.kind == EntryKind::File));
                }
                Ordering::Greater => return Ok(None),
            }
        }
        Ok(None)
    }
}

/// The parent thread: lines parsed in batches until the end of the copy,
/// the first error, or the cursor is dropped.
fn read_batches(
    mut lines: impl BufRead,
    sender: &SyncSender<std::result::Result<Vec<TreeEntry>, String>>,
) {
    let mut text = String::new();
    let mut batch = Vec::with_capacity(BATCH_LINES);
    // Bounded by bytes as well as lines: a line lists every chunk of its
    // file, and a huge file's line is megabytes.
    let mut batch_bytes = 0;
    loop {
        text.clear();
        let line = match lines.read_line(&mut text) {
            Ok(0) => break,
            Ok(_) => serde_json::from_str::<TreeEntry>(&text)
                .map_err(|e| format!("a parent line is not valid: {e}")),
            Err(e) => Err(format!("cannot read the parent copy: {e}")),
        };
        match line {
            Ok(line) => {
                batch_bytes += text.len();
                batch.push(line);
            }
            Err(e) => {
                let _ = sender.send(Ok(std::mem::take(&mut batch)));
                let _ = sender.send(Err(e));
                return;
            }
        }
        if (batch.len() == BATCH_LINES || batch_bytes >= BATCH_BYTES)
            && sender
                .send(Ok(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(BATCH_LINES),
                )))
                .is_err()
        {
            return;
        }
        if batch.is_empty() {
            batch_bytes = 0;
        }
    }
    let _ = sender.send(Ok(batch));
}

/// The stream being written, copied for the next backup: lines handed in
/// batches to a thread that compresses them into `file`. Only
/// [`KeepWriter::finish`] completes and flushes the copy; dropped before,
/// the copy is left unfinished (and is never renamed into place).
pub struct KeepWriter {
    sender: Option<SyncSender<Vec<u8>>>,
    buffer: Vec<u8>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl KeepWriter {
    pub fn start(file: File) -> Result<Self> {
        let (sender, batches) = sync_channel::<Vec<u8>>(BATCHES_AHEAD);
        let thread =
            std::thread::Builder::new()
                .name("keep".into())
                .spawn(move || -> Result<()> {
                    // Level 1: a local copy read once, by the next backup.
                    let mut encoder = zstd::stream::write::Encoder::new(file, 1)?;
                    for batch in batches {
                        // An empty batch is the end: anything else that ends
                        // the channel leaves the copy unfinished.
                        if batch.is_empty() {
                            encoder.finish()?.sync_all()?;
                            return Ok(());
                        }
                        encoder.write_all(&batch)?;
                    }
                    Ok(())
                })?;
        Ok(Self {
            sender: Some(sender),
            buffer: Vec::with_capacity(BATCH_BYTES),
            thread: Some(thread),
        })
    }

    /// Appends one encoded line.
    pub fn write(&mut self, line: &[u8]) -> Result<()> {
        self.buffer.extend_from_slice(line);
        if self.buffer.len() >= BATCH_BYTES {
            let batch = std::mem::replace(&mut self.buffer, Vec::with_capacity(BATCH_BYTES));
            self.send(batch)?;
        }
        Ok(())
    }

    fn send(&mut self, batch: Vec<u8>) -> Result<()> {
        let sent = self.sender.as_ref().is_some_and(|s| s.send(batch).is_ok());
        if !sent {
            // The thread stopped: its error says why.
            self.sender = None;
            return match self.thread.take().map(|t| t.join()) {
                Some(Ok(Err(e))) => Err(e.context("cannot write the parent copy")),
                _ => bail!("cannot write the parent copy: its thread stopped"),
            };
        }
        Ok(())
    }

    /// Writes what is left, ends the copy and flushes it to disk.
    pub fn finish(mut self) -> Result<()> {
        let rest = std::mem::take(&mut self.buffer);
        if !rest.is_empty() {
            self.send(rest)?;
        }
        self.send(Vec::new())?;
        self.sender = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(done)) => done.context("cannot write the parent copy"),
            _ => bail!("cannot write the parent copy: its thread stopped"),
        }
    }
}

impl Drop for KeepWriter {
    fn drop(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::FileEntry;

    fn line(path: &str, kind: EntryKind) -> TreeEntry {
        let mut entry = FileEntry {
            path: String::new(),
            path_hex: None,
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            size: 0,
            sha256: None,
            target: None,
            target_hex: None,
        };
        entry.set_path(path.as_bytes());
        TreeEntry {
            entry,
            mtime_ns: 0,
            ctime: 0,
            ctime_ns: 0,
            ino: 0,
            dev: 0,
            rdev: 0,
            xattrs: Vec::new(),
            chunks: Vec::new(),
        }
    }

    /// A copy of several batches round-trips through both threads, a
    /// cursor finds files in walk order across batch boundaries, and a copy
    /// dropped before `finish` does not read back whole.
    #[test]
    fn a_kept_copy_is_read_back_in_order_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy");
        let mut keep = KeepWriter::start(File::create(&path).unwrap()).unwrap();
        let mut lines = vec![line(".", EntryKind::Dir)];
        for n in 0..3 * BATCH_LINES {
            lines.push(line(&format!("f{n:05}"), EntryKind::File));
        }
        lines.push(line("sub", EntryKind::Dir));
        lines.push(line("sub/x", EntryKind::File));
        for l in &lines {
            let mut encoded = serde_json::to_vec(l).unwrap();
            encoded.push(b'\n');
            keep.write(&encoded).unwrap();
        }
        keep.finish().unwrap();

        let mut cursor = ParentCursor::open(&path).unwrap();
        assert!(cursor.find_file(b"f00000").unwrap().is_some());
        // Skips over the lines of files that are gone.
        let found = cursor.find_file(b"f01500").unwrap().unwrap();
        assert_eq!(found.entry.raw_path().unwrap().as_ref(), b"f01500");
        assert!(cursor.find_file(b"f01500x").unwrap().is_none());
        assert!(cursor.find_file(b"sub/x").unwrap().is_some());
        assert!(cursor.find_file(b"sub/y").unwrap().is_none());

        let unfinished = dir.path().join("unfinished");
        let mut keep = KeepWriter::start(File::create(&unfinished).unwrap()).unwrap();
        keep.write(&vec![b'x'; 2 * BATCH_BYTES]).unwrap();
        drop(keep);
        let bytes = std::fs::read(&unfinished).unwrap();
        let whole = zstd::stream::decode_all(&bytes[..]).is_ok_and(|d| d.len() == 2 * BATCH_BYTES);
        assert!(!whole, "an unfinished copy reads back whole");
    }

    #[test]
    fn a_damaged_copy_is_an_error_not_an_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy");
        let mut text = Vec::new();
        for n in 0..BATCH_LINES + 10 {
            text.extend(serde_json::to_vec(&line(&format!("f{n:05}"), EntryKind::File)).unwrap());
            text.push(b'\n');
        }
        text.extend_from_slice(b"{not json\n");
        std::fs::write(&path, zstd::stream::encode_all(&text[..], 1).unwrap()).unwrap();
        let mut cursor = ParentCursor::open(&path).unwrap();
        assert!(cursor.find_file(b"f00001").unwrap().is_some());
        let err = cursor.find_file(b"zzz").unwrap_err();
        assert!(format!("{err:#}").contains("not valid"), "{err:#}");
    }
}
