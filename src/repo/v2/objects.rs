//! The small JSON objects of format 2: `config` and the commit objects
//! (`snapshots/<id>`), as docs/FORMAT.md fixes them.

use super::id::Id;
use crate::repo::manifest::{Consistency, ContainerRecord, Strategy, VolumeKind};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const FORMAT: u32 = 2;

/// Content-defined chunking parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub algorithm: String,
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkerParams {
    pub fn contents() -> Self {
        Self::fastcdc(256 << 10, 1 << 20, 4 << 20)
    }

    pub fn trees() -> Self {
        Self::fastcdc(64 << 10, 256 << 10, 1 << 20)
    }

    fn fastcdc(min: u32, avg: u32, max: u32) -> Self {
        Self {
            algorithm: "fastcdc-2020".into(),
            min,
            avg,
            max,
        }
    }
}

/// The `config` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub format: u32,
    /// 32 random bytes, hex.
    pub id: String,
    pub chunker: ChunkerParams,
    pub tree_chunker: ChunkerParams,
    pub compression: String,
    pub encryption: Option<serde_json::Value>,
    pub immutable_days: Option<u32>,
    pub created_by: String,
}

/// One volume of a commit object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitVolume {
    pub name: String,
    pub kind: VolumeKind,
    pub files: u64,
    pub bytes: u64,
    /// The tree blobs of its manifest stream, in order.
    pub tree: Vec<Id>,
    /// SHA-256 of the whole stream.
    pub tree_sha256: Id,
    /// The volume record (format 1's, without entries), known only once
    /// the volume was read: a stream of one line, in tree blobs.
    pub record: Vec<Id>,
    pub record_sha256: Id,
}

/// A `snapshots/<id>` object: a backup exists once this does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Commit {
    pub format: u32,
    pub id: String,
    pub host: String,
    pub selection: String,
    pub strategy: Strategy,
    pub consistency: Consistency,
    pub reason: String,
    pub started_at: DateTime<Utc>,
    pub completed_at: DateTime<Utc>,
    pub downtime_ms: u64,
    pub duration_ms: u64,
    pub volsnap_version: String,
    pub containers: Vec<ContainerRecord>,
    #[serde(default)]
    pub notes: Vec<String>,
    pub volumes: Vec<CommitVolume>,
    /// The backup whose metadata unchanged files reused.
    pub parent: Option<String>,
    /// Every pack the backup references.
    pub packs: Vec<Id>,
}

/// A `marks/<id>` object: packs a prune found unreferenced. Backups do not
/// deduplicate against them; a later prune deletes those still
/// unreferenced once the mark is old enough.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mark {
    pub created: DateTime<Utc>,
    pub condemned: Vec<Id>,
}
