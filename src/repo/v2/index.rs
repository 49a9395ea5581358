//! Indexes: which blobs each pack holds (docs/FORMAT.md, "Index").
//!
//! Readers take the union of every index object not superseded by another;
//! in memory that is one table of blob ids, sorted, with their packs and places.

use super::id::Id;
use super::pack::{check_bounds, BlobEntry, BlobKind, PackHeader};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// An index object is written once the packs it describes hold this many
/// blobs (docs/FORMAT.md, "Index"): no object's text grows large.
pub const INDEX_BLOBS: usize = 40_000;

/// One `index/<id>` object.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexFile {
    pub packs: Vec<IndexedPack>,
    #[serde(default)]
    pub supersedes: Vec<Id>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexedPack {
    pub id: Id,
    pub size: u64,
    pub blobs: Vec<BlobEntry>,
    /// The pack's wrapped content keys (its header's `keys`), so that a
    /// reader opens blobs without fetching headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// The recipient set its content keys are wrapped to (its digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Id>,
}

/// Where one blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Position in [`Index::packs`].
    pub pack: u32,
    pub kind: BlobKind,
    pub offset: u64,
    pub length: u64,
    pub raw_length: u64,
    /// Which of its pack's content keys seals it.
    pub key: u16,
}

/// Where one blob is, as the index keeps it: 24 bytes beside the id, so a
/// million blobs cost about 56 MB (a blob is at most 4 MiB, so its lengths
/// fit in 32 bits).
#[derive(Debug, Clone, Copy)]
struct Compact {
    offset: u64,
    pack: u32,
    length: u32,
    raw_length: u32,
    key: u16,
    kind: BlobKind,
}

/// The union of a repository's indexes: a table sorted by blob id.
#[derive(Debug)]
pub struct Index {
    /// (pack id, pack size), in the order first seen.
    pub packs: Vec<(Id, u64)>,
    /// Each pack's wrapped content keys (empty lists when not encrypted).
    pack_keys: Vec<Vec<std::sync::Arc<str>>>,
    /// Each pack's recipient set (encrypted repositories).
    pack_recipients: Vec<Option<Id>>,
    blobs: Vec<(Id, Compact)>,
    /// Where the ids starting with each two-byte prefix begin in `blobs`
    /// (65,537 entries): a lookup searches a handful of ids, not all of
    /// them (an unchanged file's chunks are looked up once a file).
    fanout: Vec<u32>,
    /// Index objects set aside because they failed their checks, and why.
    pub quarantined: Vec<(Id, String)>,
}

/// Builds an [`Index`] from index objects read one at a time, so only one
/// object's text is in memory at once.
#[derive(Default)]
pub struct IndexBuilder {
    packs: Vec<(Id, u64)>,
    pack_keys: Vec<Vec<std::sync::Arc<str>>>,
    pack_recipients: Vec<Option<Id>>,
    pack_slots: HashMap<Id, u32>,
    /// Blob, place, and the index object that described it.
    blobs: Vec<(Id, Compact, u32)>,
    files: Vec<Id>,
    superseded: HashSet<Id>,
}

impl IndexBuilder {
    /// Adds index object `id`. Every pack's blob list is bounds-checked.
    /// An object that fails a check adds nothing.
    pub fn add(&mut self, id: Id, file: IndexFile) -> Result<()> {
        let mut checked = Vec::with_capacity(file.packs.len());
        for pack in file.packs {
            let header = PackHeader {
                blobs: pack.blobs,
                keys: pack.keys,
            };
            if pack.size > super::pack::MAX_PACK {
                anyhow::bail!(
                    "index {id} gives pack {} a size of {} bytes, more than a pack can hold",
                    pack.id,
                    pack.size
                );
            }
            check_bounds(&header, pack.size)
                .with_context(|| format!("index {id} describes pack {} wrongly", pack.id))?;
            checked.push((pack.id, pack.size, pack.recipients, header));
        }
        let file_no = self.files.len() as u32;
        self.files.push(id);
        self.superseded.extend(file.supersedes.iter().copied());
        for (pack_id, pack_size, pack_recipients, header) in checked {
            let slot = *self.pack_slots.entry(pack_id).or_insert_with(|| {
                self.packs.push((pack_id, pack_size));
                self.pack_keys
                    .push(header.keys.iter().map(|k| k.as_str().into()).collect());
                self.pack_recipients.push(pack_recipients);
                (self.packs.len() - 1) as u32
            });
            for blob in header.blobs {
                self.blobs.push((
                    blob.id,
                    Compact {
                        offset: blob.offset,
                        pack: slot,
                        // check_bounds keeps both below MAX_BLOB + 1.
                        length: blob.length as u32,
                        raw_length: blob.raw_length as u32,
                        key: blob.key,
                        kind: blob.kind,
                    },
                    file_no,
                ));
            }
        }
        Ok(())
    }

    /// The union of what was added, leaving out every object another one
    /// supersedes; a blob described twice keeps its first place (either
    /// copy serves).
    pub fn finish(self) -> Index {
        let superseded: HashSet<u32> = self
            .files
            .iter()
            .enumerate()
            .filter(|(_, id)| self.superseded.contains(id))
            .map(|(n, _)| n as u32)
            .collect();
        let mut blobs: Vec<(Id, Compact)> = self
            .blobs
            .into_iter()
            .filter(|(_, _, file)| !superseded.contains(file))
            .map(|(id, place, _)| (id, place))
            .collect();
        // Stable: of equal ids the first described stays first; the other
        // copies stay behind it (an encrypted repository may hold a blob
        // under content keys of two recipient sets: a reader takes the
        // copy it can open).
        blobs.sort_by_key(|b| b.0);
        blobs.dedup_by(|later, first| later.0 == first.0 && later.1.pack == first.1.pack);
        blobs.shrink_to_fit();
        let mut fanout = vec![0u32; PREFIXES + 1];
        for (id, _) in &blobs {
            fanout[prefix(id) + 1] += 1;
        }
        for i in 1..fanout.len() {
            fanout[i] += fanout[i - 1];
        }
        Index {
            packs: self.packs,
            pack_keys: self.pack_keys,
            pack_recipients: self.pack_recipients,
            blobs,
            fanout,
            quarantined: Vec::new(),
        }
    }
}

impl Default for Index {
    /// An empty index (its fan-out table too).
    fn default() -> Self {
        IndexBuilder::default().finish()
    }
}

/// The number of two-byte id prefixes (see [`Index::fanout`]).
const PREFIXES: usize = 1 << 16;

fn prefix(id: &Id) -> usize {
    usize::from(u16::from_be_bytes([id.0[0], id.0[1]]))
}

impl Index {
    /// The union of `files` (id and content); see [`IndexBuilder`].
    pub fn from_files(files: Vec<(Id, IndexFile)>) -> Result<Self> {
        let mut builder = IndexBuilder::default();
        for (id, file) in files {
            builder.add(id, file)?;
        }
        Ok(builder.finish())
    }

    /// Where the blob is (its first copy).
    pub fn get(&self, blob: &Id) -> Option<Location> {
        self.copies(blob).next()
    }

    /// Every copy of the blob, the first described first.
    pub fn copies(&self, blob: &Id) -> impl Iterator<Item = Location> + '_ {
        let p = prefix(blob);
        let bucket = &self.blobs[self.fanout[p] as usize..self.fanout[p + 1] as usize];
        let from = bucket.partition_point(|(id, _)| id < blob);
        let blob = *blob;
        bucket[from..]
            .iter()
            .take_while(move |(id, _)| *id == blob)
            .map(|(_, place)| Location {
                pack: place.pack,
                kind: place.kind,
                offset: place.offset,
                length: u64::from(place.length),
                raw_length: u64::from(place.raw_length),
                key: place.key,
            })
    }

    /// The packs holding blobs sealed with content keys wrapped to another
    /// recipient set than `digest` (a backup does not deduplicate against
    /// them: their content would not open for every current recipient).
    pub fn packs_for_other_recipients(&self, digest: &Id) -> Vec<Id> {
        self.packs
            .iter()
            .zip(&self.pack_keys)
            .zip(&self.pack_recipients)
            .filter(|((_, keys), set)| !keys.is_empty() && set.as_ref() != Some(digest))
            .map(|(((id, _), _), _)| *id)
            .collect()
    }

    /// The wrapped content key that opens the blob at `location`, in an
    /// encrypted repository.
    pub fn content_key(&self, location: &Location) -> Option<&std::sync::Arc<str>> {
        self.pack_keys
            .get(location.pack as usize)?
            .get(usize::from(location.key))
    }

    pub fn contains(&self, blob: &Id) -> bool {
        self.get(blob).is_some()
    }

    pub fn pack_id(&self, location: &Location) -> Id {
        self.packs[location.pack as usize].0
    }

    /// Blobs described (a blob kept in two packs counts twice).
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }
}
