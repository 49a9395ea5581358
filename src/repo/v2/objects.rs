//! The small JSON objects of format 2: `config` and the commit objects
//! (`snapshots/<id>`), as docs/FORMAT.md fixes them.

use super::id::Id;
use crate::repo::manifest::{
    Compression, Consistency, ContainerRecord, Manifest, Strategy, VolumeKind, VolumeRecord,
    FORMAT_VERSION,
};
use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const FORMAT: u32 = 2;
/// The hash `config.ids` names; the only one this volsnap reads or writes.
pub const ID_HASH: &str = "blake3";

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

    /// Refuses parameters volsnap would not write: an average of 0 breaks
    /// the chunker, and a maximum past what readers accept of a blob would
    /// store blobs that no restore could read.
    pub fn check(&self, what: &str) -> Result<()> {
        const MIN_CHUNK: u32 = 4 << 10;
        let max_blob = super::pack::MAX_BLOB;
        if self.algorithm != "fastcdc-2020" {
            bail!(
                "its {what} names the algorithm {:?}, which this volsnap does not know",
                crate::text::escape(&self.algorithm)
            );
        }
        // Within fastcdc's own bounds too (it asserts them).
        let (min_max, avg_max) = (
            fastcdc::v2020::MINIMUM_MAX as u32,
            fastcdc::v2020::AVERAGE_MAX as u32,
        );
        if !(MIN_CHUNK <= self.min
            && self.min <= self.avg
            && self.avg <= self.max
            && self.min <= min_max
            && self.avg <= avg_max
            && u64::from(self.max) <= max_blob)
        {
            bail!(
                "its {what} parameters (min {}, avg {}, max {}) are outside what volsnap writes \
                 ({MIN_CHUNK} <= min <= avg <= max, min <= {min_max}, avg <= {avg_max}, \
                 max <= {max_blob} bytes)",
                self.min,
                self.avg,
                self.max
            );
        }
        Ok(())
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

fn unnamed_id_hash() -> String {
    "sha256".into()
}

/// The `config` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub format: u32,
    /// 32 random bytes, hex.
    pub id: String,
    /// The hash that names objects and blobs: `"blake3"`. Configs written
    /// before it was settled lack the field (their names were SHA-256).
    #[serde(default = "unnamed_id_hash")]
    pub ids: String,
    pub chunker: ChunkerParams,
    pub tree_chunker: ChunkerParams,
    pub compression: String,
    pub encryption: Option<serde_json::Value>,
    pub immutable_days: Option<u32>,
    pub created_by: String,
}

impl Config {
    /// What a reader checks of a `config` before using any of it (it is the
    /// one object not named by its content): the id names local
    /// directories, the chunkers cut every backup.
    pub fn check(&self) -> Result<()> {
        if self.id.len() != 64
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            bail!(
                "its id {:?} is not 64 lowercase hex digits",
                crate::text::escape(&self.id.chars().take(80).collect::<String>())
            );
        }
        self.chunker.check("content chunker")?;
        self.tree_chunker.check("tree chunker")?;
        if self.compression != "zstd" {
            bail!(
                "its compression {:?} is not one this volsnap knows",
                crate::text::escape(&self.compression)
            );
        }
        Ok(())
    }

    /// The name of this repository's local directories (index cache,
    /// parent streams): derived from the id, never the id itself.
    pub fn local_name(&self) -> String {
        Id::digest(format!("volsnap-local\0{}", self.id).as_bytes()).hex()[..16].to_string()
    }
}

impl Commit {
    /// The fields that name things on the host or reach a terminal are what
    /// volsnap writes: an id `YYYYMMDDTHHMMSSZ-hex`, a host, selection and
    /// volume names without control characters, Docker volume names.
    pub fn check(&self) -> Result<()> {
        if !is_backup_id(&self.id) {
            bail!(
                "its backup id {:?} is not of the form YYYYMMDDTHHMMSSZ-xxxx",
                crate::text::escape(&self.id.chars().take(64).collect::<String>())
            );
        }
        let plain = |what: &str, s: &str, max: usize| -> Result<()> {
            if s.chars().any(char::is_control) || s.len() > max {
                bail!(
                    "its {what} {:?} holds control characters or is over {max} bytes",
                    crate::text::escape(&s.chars().take(64).collect::<String>())
                );
            }
            Ok(())
        };
        plain("host", &self.host, 255)?;
        crate::repo::manifest::plausible_times(self.started_at, self.completed_at)?;
        plain("selection", &self.selection, 4096)?;
        for v in &self.volumes {
            plain("volume name", &v.name, 4096)?;
            crate::repo::manifest::local_name(v.kind, &v.name)?;
        }
        Ok(())
    }
}

impl Commit {
    /// Whether `other` is the same backup: same id, host, selection and
    /// start, and the same manifests (tree and record streams, by blob ids
    /// and digests). What copies and prunes rewrite (`packs`) may differ.
    pub fn same_backup(&self, other: &Commit) -> bool {
        let same_volume = |a: &CommitVolume, b: &CommitVolume| {
            a.name == b.name
                && a.tree == b.tree
                && a.tree_sha256 == b.tree_sha256
                && a.record == b.record
                && a.record_sha256 == b.record_sha256
        };
        self.id == other.id
            && self.host == other.host
            && self.selection == other.selection
            && self.started_at == other.started_at
            && self.volumes.len() == other.volumes.len()
            && self
                .volumes
                .iter()
                .zip(&other.volumes)
                .all(|(a, b)| same_volume(a, b))
    }
}

/// Whether `id` has the form of the backup ids volsnap makes.
pub fn is_backup_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() >= 18
        && b.len() <= 34
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
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
    /// Encrypted repositories: the refs blobs listing every data blob the
    /// volume's files use, readable with the write key (garbage collection
    /// and structural checks on hosts without an identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refs: Option<Vec<Id>>,
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
    /// The bytes of the packs this backup wrote (what it added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    /// The signature of the host that made the backup, over every field
    /// but `packs` and `stored_bytes` ([`crate::repo::attest`]); absent in
    /// commits written before signatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::repo::attest::CommitSignature>,
}

/// A `marks/<id>` object: packs a prune found unreferenced. Backups do not
/// deduplicate against them; a later prune deletes those still
/// unreferenced once the mark is old enough.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mark {
    pub created: DateTime<Utc>,
    pub condemned: Vec<Id>,
}

impl Commit {
    /// The backup as `list` and retention see it: everything but the
    /// volumes' records, which live in tree blobs.
    pub fn summary(&self) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            id: self.id.clone(),
            started_at: self.started_at,
            completed_at: self.completed_at,
            host: self.host.clone(),
            volsnap_version: self.volsnap_version.clone(),
            selection: self.selection.clone(),
            strategy: self.strategy,
            consistency: self.consistency,
            reason: self.reason.clone(),
            downtime_ms: self.downtime_ms,
            duration_ms: self.duration_ms,
            compression: Compression::Zstd,
            containers: self.containers.clone(),
            volumes: self
                .volumes
                .iter()
                .map(|v| VolumeRecord {
                    name: v.name.clone(),
                    kind: v.kind,
                    source_path: String::new(),
                    driver: None,
                    driver_opts: Default::default(),
                    labels: Default::default(),
                    mounted_by: Vec::new(),
                    archive: String::new(),
                    sha256: String::new(),
                    archive_bytes: 0,
                    files: v.files,
                    bytes: v.bytes,
                    changed_during_read: Vec::new(),
                    vanished_during_read: Vec::new(),
                    left_out: Vec::new(),
                    excluded: Vec::new(),
                    excluded_entries: 0,
                    entries: Vec::new(),
                })
                .collect(),
            notes: self.notes.clone(),
            stored_bytes: self.stored_bytes,
        }
    }
}
