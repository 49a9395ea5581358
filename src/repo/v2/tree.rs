//! The manifest stream of a volume (docs/FORMAT.md, "The manifest
//! stream"): one JSON line per entry in walk order, cut into tree blobs by
//! the tree chunker as it is written, read back one blob at a time. Neither
//! side ever holds a whole manifest.

use super::id::Id;
use super::index::Index;
use super::objects::ChunkerParams;
use super::pack::BlobKind;
use super::saver::BlobSaver;
use super::Repository;
use crate::repo::manifest::FileEntry;
use anyhow::{bail, Context, Result};
use fastcdc::v2020::{FastCDC, Normalization};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::cmp::Ordering;

/// One entry line: the format-1 entry fields, plus what the parent rule and
/// a restore need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    #[serde(flatten)]
    pub entry: FileEntry,
    #[serde(default)]
    pub mtime_ns: u32,
    #[serde(default)]
    pub ctime: i64,
    #[serde(default)]
    pub ctime_ns: u32,
    #[serde(default)]
    pub ino: u64,
    #[serde(default)]
    pub dev: u64,
    /// Device number of a device node.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<XattrRecord>,
    /// A regular file's data blobs, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<Id>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// An extended attribute: its name (as the manifest stores names) and its
/// value, hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XattrRecord {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_hex: Option<String>,
    pub value_hex: String,
}

/// The order the walk emits entries in: a directory, then its
/// non-directories by name, then its subdirectories by name, each followed
/// by its content. Comparing two entries this way lets a backup walk its
/// parent's stream alongside the tree, holding one line of it.
pub fn walk_order(a: &[u8], a_dir: bool, b: &[u8], b_dir: bool) -> Ordering {
    // Each component, marked 1 when a directory (every one but a
    // non-directory's last). No allocation: this runs for every parent
    // line a backup passes.
    fn key(path: &[u8], is_dir: bool) -> impl Iterator<Item = (u8, &[u8])> {
        let mut components = (path != b".")
            .then(|| path.split(|&c| c == b'/'))
            .into_iter()
            .flatten()
            .peekable();
        std::iter::from_fn(move || {
            let component = components.next()?;
            Some((u8::from(is_dir || components.peek().is_some()), component))
        })
    }
    key(a, a_dir).cmp(key(b, b_dir))
}

/// Writes a stream of lines into tree blobs.
pub struct TreeWriter {
    params: ChunkerParams,
    seed: u64,
    buffer: Vec<u8>,
    hasher: Sha256,
    blobs: Vec<Id>,
}

impl TreeWriter {
    pub fn new(params: ChunkerParams, seed: u64) -> Self {
        Self {
            params,
            seed,
            buffer: Vec::new(),
            hasher: Sha256::new(),
            blobs: Vec::new(),
        }
    }

    pub fn push<T: Serialize>(&mut self, line: &T, saver: &mut BlobSaver) -> Result<()> {
        let start = self.buffer.len();
        serde_json::to_writer(&mut self.buffer, line).context("cannot encode a manifest line")?;
        self.buffer.push(b'\n');
        self.hasher.update(&self.buffer[start..]);
        self.cut_when_full(saver)
    }

    /// Appends a line encoded already (one JSON value and its newline).
    pub fn push_encoded(&mut self, line: &[u8], saver: &mut BlobSaver) -> Result<()> {
        debug_assert!(line.ends_with(b"\n"));
        self.buffer.extend_from_slice(line);
        self.hasher.update(line);
        self.cut_when_full(saver)
    }

    fn cut_when_full(&mut self, saver: &mut BlobSaver) -> Result<()> {
        if self.buffer.len() >= 2 * self.params.max as usize {
            self.cut(false, saver)?;
        }
        Ok(())
    }

    /// Saves every chunk of the buffer that can no longer change (all of
    /// them at the end).
    fn cut(&mut self, all: bool, saver: &mut BlobSaver) -> Result<()> {
        let chunks: Vec<_> = FastCDC::with_level_and_seed(
            &self.buffer,
            self.params.min as usize,
            self.params.avg as usize,
            self.params.max as usize,
            Normalization::Level1,
            self.seed,
        )
        .collect();
        let keep = if all {
            chunks.len()
        } else {
            chunks.len().saturating_sub(1)
        };
        let mut consumed = 0;
        for chunk in &chunks[..keep] {
            let bytes = self.buffer[chunk.offset..chunk.offset + chunk.length].to_vec();
            self.blobs.push(saver.save(BlobKind::Tree, bytes)?);
            consumed = chunk.offset + chunk.length;
        }
        self.buffer.drain(..consumed);
        Ok(())
    }

    /// The tree blobs and the SHA-256 of the whole stream.
    pub fn finish(mut self, saver: &mut BlobSaver) -> Result<(Vec<Id>, Id)> {
        self.cut(true, saver)?;
        Ok((self.blobs, Id(self.hasher.finalize().into())))
    }
}

/// Writes the list of data blobs a volume's files use into refs blobs
/// (encrypted repositories): 32 bytes an id, in manifest order, cut after
/// an id whose first 12 bits are zero (one in 4,096; ids are keyed hashes,
/// so the cuts depend on content only) or at 16,384 ids. An unchanged
/// stretch of a volume gives the same pieces, stored once.
pub struct RefsWriter {
    buffer: Vec<u8>,
    blobs: Vec<Id>,
}

const REFS_MAX_IDS: usize = 16_384;

impl RefsWriter {
    pub fn new() -> Self {
        Self {
            buffer: Vec::new(),
            blobs: Vec::new(),
        }
    }

    pub fn push(&mut self, id: &Id, saver: &mut BlobSaver) -> Result<()> {
        self.buffer.extend_from_slice(&id.0);
        if (id.0[0] == 0 && id.0[1] < 16) || self.buffer.len() >= REFS_MAX_IDS * 32 {
            self.cut(saver)?;
        }
        Ok(())
    }

    fn cut(&mut self, saver: &mut BlobSaver) -> Result<()> {
        if !self.buffer.is_empty() {
            let piece = std::mem::take(&mut self.buffer);
            self.blobs.push(saver.save(BlobKind::Refs, piece)?);
        }
        Ok(())
    }

    /// The refs blobs, in order.
    pub fn finish(mut self, saver: &mut BlobSaver) -> Result<Vec<Id>> {
        self.cut(saver)?;
        Ok(self.blobs)
    }
}

impl Default for RefsWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// The data blob ids a refs blob lists.
pub fn parse_refs(bytes: &[u8]) -> Result<Vec<Id>> {
    if !bytes.len().is_multiple_of(32) {
        bail!("a refs blob of {} bytes is not a list of ids", bytes.len());
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|c| Id(c.try_into().expect("32 bytes")))
        .collect())
}

/// Reads a stream back line by line, fetching one tree blob at a time,
/// and checks the stream's SHA-256 at its end.
pub struct TreeReader<'r> {
    repo: &'r Repository,
    index: &'r Index,
    blobs: Vec<Id>,
    next_blob: usize,
    expected: Id,
    hasher: Sha256,
    buffer: Vec<u8>,
    position: usize,
    done: bool,
}

impl<'r> TreeReader<'r> {
    pub fn new(repo: &'r Repository, index: &'r Index, blobs: &[Id], expected: Id) -> Self {
        Self {
            repo,
            index,
            blobs: blobs.to_vec(),
            next_blob: 0,
            expected,
            hasher: Sha256::new(),
            buffer: Vec::new(),
            position: 0,
            done: false,
        }
    }

    /// The next line, parsed; `None` at the end of a stream that checked out.
    pub fn next_line<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>> {
        loop {
            if let Some(end) = self.buffer[self.position..]
                .iter()
                .position(|&b| b == b'\n')
            {
                let line = &self.buffer[self.position..self.position + end];
                let value = serde_json::from_slice(line).context("a manifest line is not valid")?;
                self.position += end + 1;
                return Ok(Some(value));
            }
            match self.blobs.get(self.next_blob).copied() {
                Some(id) => {
                    self.next_blob += 1;
                    let bytes = self.repo.read_blob(self.index, &id)?;
                    self.hasher.update(&bytes);
                    self.buffer.drain(..self.position);
                    self.position = 0;
                    self.buffer.extend_from_slice(&bytes);
                    if self.buffer.len() > 64 << 20 {
                        bail!("a manifest line is longer than 64 MiB");
                    }
                }
                None => {
                    if self.position != self.buffer.len() {
                        bail!("the manifest stream ends in the middle of a line");
                    }
                    if !self.done {
                        self.done = true;
                        let digest = Id(std::mem::take(&mut self.hasher).finalize().into());
                        if digest != self.expected {
                            bail!("the manifest stream does not match its recorded SHA-256");
                        }
                    }
                    return Ok(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_order_puts_files_before_subdirectories_and_content_after_its_directory() {
        // The order the walk produces for a small tree.
        let walk: [(&[u8], bool); 8] = [
            (b".", true),
            (b"b", false),
            (b"z", false),
            (b"a", true),
            (b"a/f", false),
            (b"a/sub", true),
            (b"a/sub/x", false),
            (b"c", true),
        ];
        for (i, (a, ad)) in walk.iter().enumerate() {
            for (j, (b, bd)) in walk.iter().enumerate() {
                assert_eq!(
                    walk_order(a, *ad, b, *bd),
                    i.cmp(&j),
                    "{:?} vs {:?}",
                    String::from_utf8_lossy(a),
                    String::from_utf8_lossy(b)
                );
            }
        }
    }
}
