//! Indexes: which blobs each pack holds (docs/FORMAT.md, "Index").
//!
//! Readers take the union of every index object not superseded by another;
//! in memory that is one map from blob id to its pack and place.

use super::id::Id;
use super::pack::{check_bounds, BlobEntry, BlobKind, PackHeader};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

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
}

/// The union of a repository's indexes.
#[derive(Debug, Default)]
pub struct Index {
    /// (pack id, pack size), in the order first seen.
    pub packs: Vec<(Id, u64)>,
    pack_slots: HashMap<Id, u32>,
    blobs: HashMap<Id, Location>,
}

impl Index {
    /// Builds the union of `files` (id and content), leaving out every file
    /// another one supersedes. Every pack's blob list is bounds-checked.
    pub fn from_files(files: &[(Id, IndexFile)]) -> Result<Self> {
        let superseded: HashSet<Id> = files
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().copied())
            .collect();
        let mut index = Index::default();
        for (id, file) in files.iter().filter(|(id, _)| !superseded.contains(id)) {
            for pack in &file.packs {
                check_bounds(
                    &PackHeader {
                        blobs: pack.blobs.clone(),
                        content_key: None,
                    },
                    pack.size,
                )
                .with_context(|| format!("index {id} describes pack {} wrongly", pack.id))?;
                index.add_pack(pack.id, pack.size, &pack.blobs);
            }
        }
        Ok(index)
    }

    /// Records a pack and its blobs (a blob already known keeps its first
    /// place: either copy serves).
    pub fn add_pack(&mut self, id: Id, size: u64, blobs: &[BlobEntry]) {
        let slot = *self.pack_slots.entry(id).or_insert_with(|| {
            self.packs.push((id, size));
            (self.packs.len() - 1) as u32
        });
        for blob in blobs {
            self.blobs.entry(blob.id).or_insert(Location {
                pack: slot,
                kind: blob.kind,
                offset: blob.offset,
                length: blob.length,
                raw_length: blob.raw_length,
            });
        }
    }

    pub fn get(&self, blob: &Id) -> Option<Location> {
        self.blobs.get(blob).copied()
    }

    pub fn contains(&self, blob: &Id) -> bool {
        self.blobs.contains_key(blob)
    }

    pub fn pack_id(&self, location: &Location) -> Id {
        self.packs[location.pack as usize].0
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }
}
