//! Blobs and packs (docs/FORMAT.md, "Blobs and packs").
//!
//! A pack is `blob 0 | … | blob n-1 | header | u32 LE header length`; each
//! stored blob is one flag byte (bit 0: zstd) and its payload. Everything
//! read back is checked: the header's length and every blob's bounds
//! against the pack's size, every blob's plaintext against its id, and a
//! decompression never produces more than the header's `raw_length`.

use super::crypto::KeyRing;
use super::id::Id;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// A pack is closed once it holds this much.
pub const PACK_TARGET: usize = 32 << 20;
/// A pack is also closed at this many blobs: a volume of tiny files would
/// otherwise make headers (and index objects) of hundreds of megabytes.
pub const PACK_MAX_BLOBS: usize = 20_000;
/// No header may claim more (a pack of small blobs at 32 MiB has a header
/// of a few MiB at most).
const MAX_HEADER: u64 = 64 << 20;
/// No blob is larger than the content chunker's maximum (4 MiB) plus room.
pub const MAX_BLOB: u64 = 8 << 20;
/// What storing may add to a blob: the flag byte, and sealing's nonce and tag.
const MAX_STORED_EXTRA: u64 = 1 + 64;
/// The largest pack a writer closes: full, plus one more blob, a header
/// and its length. Readers refuse to believe larger sizes.
pub const MAX_PACK: u64 = PACK_TARGET as u64 + MAX_BLOB + MAX_STORED_EXTRA + MAX_HEADER + 4;
const FLAG_ZSTD: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// A chunk of a file's content.
    Data,
    /// A chunk of a manifest stream.
    Tree,
    /// A piece of the list of data blobs a backup's volume uses, sealed
    /// with the write key (encrypted repositories: garbage collection on a
    /// host without an identity reads these instead of the manifests).
    Refs,
}

/// Where a blob lies in its pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    pub id: Id,
    #[serde(rename = "type")]
    pub kind: BlobKind,
    pub offset: u64,
    /// Stored length (flag byte included).
    pub length: u64,
    /// Plaintext length.
    pub raw_length: u64,
    /// Which of the pack's content keys seals it (encrypted repositories).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub key: u16,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PackHeader {
    pub blobs: Vec<BlobEntry>,
    /// The content keys sealing the pack's data and tree blobs, each a
    /// standard age file (base64) wrapped to the recipients; empty when
    /// the repository is not encrypted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

impl PackHeader {
    /// The wrapped content key sealing `entry` (encrypted repositories).
    pub fn wrapped_key(&self, entry: &BlobEntry) -> Option<std::sync::Arc<str>> {
        self.keys
            .get(usize::from(entry.key))
            .map(|k| k.as_str().into())
    }
}

/// A blob ready to go into a pack: compressed when that is smaller.
pub struct StoredBlob {
    pub id: Id,
    pub kind: BlobKind,
    pub bytes: Vec<u8>,
    pub raw_length: u64,
}

impl StoredBlob {
    /// Compresses `plain` with zstd at `level`, keeping it plain when that
    /// is not smaller (random data, already compressed files).
    pub fn new(id: Id, kind: BlobKind, plain: &[u8], level: i32) -> Result<Self> {
        let mut bytes = Vec::with_capacity(plain.len() / 2 + 1);
        bytes.push(FLAG_ZSTD);
        let compressed = zstd::bulk::Compressor::new(level)
            .and_then(|mut c| c.compress(plain))
            .context("zstd compression failed")?;
        if compressed.len() < plain.len() {
            bytes.extend_from_slice(&compressed);
        } else {
            bytes.clear();
            bytes.push(0);
            bytes.extend_from_slice(plain);
        }
        Ok(Self {
            id,
            kind,
            bytes,
            raw_length: plain.len() as u64,
        })
    }
}

/// Collects blobs of one kind into a pack.
pub struct PackWriter {
    kind: BlobKind,
    bytes: Vec<u8>,
    header: PackHeader,
}

impl PackWriter {
    pub fn new(kind: BlobKind) -> Self {
        Self::with_buffer(kind, Vec::new())
    }

    /// A pack writing into `buffer` (emptied first): writers reuse the
    /// buffers of packs they stored, so memory is not faulted in anew.
    pub fn with_buffer(kind: BlobKind, mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        buffer.reserve(PACK_TARGET + (MAX_BLOB as usize));
        Self {
            kind,
            bytes: buffer,
            header: PackHeader::default(),
        }
    }

    /// Adds a blob already encoded: `payload` is zstd-compressed when
    /// `zstd`, the plaintext otherwise.
    pub fn add_encoded(&mut self, id: Id, zstd: bool, payload: &[u8], raw_length: u64) {
        self.header.blobs.push(BlobEntry {
            id,
            kind: self.kind,
            offset: self.bytes.len() as u64,
            length: payload.len() as u64 + 1,
            raw_length,
            key: 0,
        });
        self.bytes.push(if zstd { FLAG_ZSTD } else { 0 });
        self.bytes.extend_from_slice(payload);
    }

    /// Adds a blob sealed already (encrypted repositories), with the
    /// wrapped content key that opens it (none for refs blobs, which the
    /// write key opens).
    pub fn add_sealed(&mut self, id: Id, stored: &[u8], raw_length: u64, key: Option<&str>) {
        let key = match key {
            None => 0,
            Some(key) => match self.header.keys.iter().position(|k| k == key) {
                Some(n) => n,
                None => {
                    self.header.keys.push(key.to_string());
                    self.header.keys.len() - 1
                }
            },
        };
        self.header.blobs.push(BlobEntry {
            id,
            kind: self.kind,
            offset: self.bytes.len() as u64,
            length: stored.len() as u64,
            raw_length,
            key: key as u16,
        });
        self.bytes.extend_from_slice(stored);
    }

    pub fn kind(&self) -> BlobKind {
        self.kind
    }

    pub fn add(&mut self, blob: StoredBlob) {
        debug_assert_eq!(blob.kind, self.kind);
        self.header.blobs.push(BlobEntry {
            id: blob.id,
            kind: blob.kind,
            offset: self.bytes.len() as u64,
            length: blob.bytes.len() as u64,
            raw_length: blob.raw_length,
            key: 0,
        });
        self.bytes.extend_from_slice(&blob.bytes);
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.header.blobs.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.bytes.len() >= PACK_TARGET
            || self.header.blobs.len() >= PACK_MAX_BLOBS
            || self.header.keys.len() >= MAX_KEYS
    }

    /// The finished pack: its id (BLAKE3 of its bytes), bytes and header;
    /// the header sealed with `seal` in an encrypted repository.
    pub fn finish(self, seal: Option<&KeyRing>) -> Result<(Id, Vec<u8>, PackHeader)> {
        let mut bytes = self.bytes;
        let header = serde_json::to_vec(&self.header).context("cannot encode a pack header")?;
        let header = match seal {
            Some(key) => key.seal(HEADER_KIND, &header)?,
            None => header,
        };
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        Ok((Id::digest(&bytes), bytes, self.header))
    }
}

/// A pack closes once its blobs use this many content keys (a rewrite
/// gathers blobs of many packs).
const MAX_KEYS: usize = 1024;
/// The kind a sealed pack header is authenticated as.
const HEADER_KIND: &str = "pack-header";

/// Reads the header from a whole pack's bytes, checking every bound;
/// `open` opens a sealed one (encrypted repositories).
pub fn parse_header(pack: &[u8], open: Option<&KeyRing>) -> Result<PackHeader> {
    let size = pack.len() as u64;
    if size < 4 {
        bail!("the pack is {size} bytes long, too short for a header");
    }
    let tail: [u8; 4] = pack[pack.len() - 4..].try_into()?;
    let header_len = u64::from(u32::from_le_bytes(tail));
    if header_len > MAX_HEADER || header_len + 4 > size {
        bail!("the pack claims a header of {header_len} bytes in {size}");
    }
    let start = (size - 4 - header_len) as usize;
    let text = &pack[start..pack.len() - 4];
    let opened;
    let text = match open {
        Some(key) => {
            opened = key
                .open(HEADER_KIND, text)
                .context("its header cannot be opened")?;
            &opened[..]
        }
        None => text,
    };
    let header: PackHeader =
        serde_json::from_slice(text).context("the pack header is not valid")?;
    check_bounds(&header, start as u64)?;
    Ok(header)
}

/// Every blob lies inside the pack's blob area, without overlap, and
/// claims no more than a blob may hold.
pub fn check_bounds(header: &PackHeader, blob_area: u64) -> Result<()> {
    let mut end = 0;
    for blob in &header.blobs {
        // Checked: an offset near 2^64 must not wrap past the bound.
        let blob_end = blob.offset.checked_add(blob.length);
        if blob.offset < end
            || blob.length == 0
            || blob.length > MAX_BLOB + MAX_STORED_EXTRA
            || blob.raw_length > MAX_BLOB
            || blob_end.is_none_or(|e| e > blob_area)
            || (blob.key as usize >= header.keys.len() && blob.key != 0)
        {
            bail!(
                "blob {} claims {} bytes at offset {} of a {blob_area}-byte blob area",
                blob.id,
                blob.length,
                blob.offset
            );
        }
        end = blob_end.unwrap_or(u64::MAX);
    }
    Ok(())
}

/// The plaintext of a stored blob (`flag | payload`, opened already in an
/// encrypted repository), checked against its id as `id_of` computes ids.
pub fn open_blob(entry: &BlobEntry, stored: &[u8], id_of: &dyn Fn(&[u8]) -> Id) -> Result<Vec<u8>> {
    let (flag, payload) = stored
        .split_first()
        .with_context(|| format!("blob {} is empty", entry.id))?;
    if entry.raw_length > MAX_BLOB {
        bail!(
            "blob {} claims {} bytes, more than a blob holds",
            entry.id,
            entry.raw_length
        );
    }
    let plain = match *flag {
        0 => payload.to_vec(),
        // Into a buffer of the length the pack states, never more.
        FLAG_ZSTD => decompress(payload, entry.raw_length as usize)
            .with_context(|| format!("blob {} cannot be decompressed", entry.id))?,
        other => bail!("blob {} has unknown flags {other:#x}", entry.id),
    };
    if plain.len() as u64 != entry.raw_length {
        bail!(
            "blob {} holds {} bytes, its pack says {}",
            entry.id,
            plain.len(),
            entry.raw_length
        );
    }
    if id_of(&plain) != entry.id {
        bail!("blob {} does not match its id (damaged)", entry.id);
    }
    Ok(plain)
}

thread_local! {
    /// One decompression context a thread, reused blob after blob: making
    /// one per blob took 7% of a restore's time.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// `payload` decompressed into at most `capacity` bytes (more is an error).
fn decompress(payload: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let decompressor = match &mut *cell {
            Some(d) => d,
            none => none.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress(payload, capacity)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_round_trips_and_damage_is_named() {
        let texts: [&[u8]; 3] = [b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", b"x", b"hello"];
        let mut writer = PackWriter::new(BlobKind::Data);
        for t in texts {
            writer.add(StoredBlob::new(Id::digest(t), BlobKind::Data, t, 1).unwrap());
        }
        let (id, bytes, header) = writer.finish(None).unwrap();
        assert_eq!(id, Id::digest(&bytes));
        let parsed = parse_header(&bytes, None).unwrap();
        assert_eq!(parsed.blobs, header.blobs);
        for (t, entry) in texts.iter().zip(&parsed.blobs) {
            let stored = &bytes[entry.offset as usize..(entry.offset + entry.length) as usize];
            assert_eq!(open_blob(entry, stored, &Id::digest).unwrap(), *t);
        }
        // The long run of a's was compressed, the single byte was not.
        assert_eq!(bytes[parsed.blobs[0].offset as usize], FLAG_ZSTD);
        assert_eq!(bytes[parsed.blobs[1].offset as usize], 0);
        // A flipped bit in a blob is caught by its id.
        let mut damaged = bytes.clone();
        damaged[parsed.blobs[2].offset as usize + 2] ^= 1;
        let e = &parsed.blobs[2];
        let stored = &damaged[e.offset as usize..(e.offset + e.length) as usize];
        assert!(open_blob(e, stored, &Id::digest).is_err());
    }

    #[test]
    fn a_pack_of_tiny_blobs_closes_at_its_blob_count_with_a_readable_header() {
        let mut writer = PackWriter::new(BlobKind::Data);
        let mut n = 0u32;
        while !writer.is_full() {
            let text = n.to_le_bytes();
            writer.add_encoded(Id::digest(&text), false, &text, 4);
            n += 1;
        }
        assert_eq!(n as usize, PACK_MAX_BLOBS);
        let (_, bytes, _) = writer.finish(None).unwrap();
        assert_eq!(
            parse_header(&bytes, None).unwrap().blobs.len(),
            PACK_MAX_BLOBS
        );
    }

    #[test]
    fn hostile_headers_are_refused() {
        assert!(parse_header(b"", None).is_err());
        assert!(parse_header(&u32::MAX.to_le_bytes(), None).is_err());
        let lie = PackHeader {
            blobs: vec![BlobEntry {
                id: Id::digest(b"x"),
                kind: BlobKind::Data,
                offset: 0,
                length: 1000,
                raw_length: 1,
                key: 0,
            }],
            keys: Vec::new(),
        };
        let mut bytes = vec![0u8; 10];
        let header = serde_json::to_vec(&lie).unwrap();
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        assert!(parse_header(&bytes, None).is_err());
        // A blob that decompresses to more than it claims is refused.
        let big = vec![7u8; 100_000];
        let blob = StoredBlob::new(Id::digest(&big), BlobKind::Data, &big, 1).unwrap();
        let entry = BlobEntry {
            id: blob.id,
            kind: BlobKind::Data,
            offset: 0,
            length: blob.bytes.len() as u64,
            raw_length: 10,
            key: 0,
        };
        assert!(open_blob(&entry, &blob.bytes, &Id::digest).is_err());
    }
}
