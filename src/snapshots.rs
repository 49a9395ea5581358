//! Snapshots kept for rollback ("pre-upgrade snapshots").
//!
//! `volsnap snapshot` takes consistent snapshots of a stack and records
//! them here, in `<state dir>/snapshots/<name>.json`; `rollback` puts every
//! volume back to them, with the services stopped around it.

use crate::discovery::Container;
use crate::journal::{Journal, Undo};
use crate::storage::{backend_for, Runner, StorageInfo};
use crate::usage;
use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where volsnap keeps its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/volsnap";

/// A set of snapshots, one per volume, taken at one point in time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub name: String,
    /// The label the storage backends know the snapshots by.
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub selection: crate::discovery::Selection,
    pub downtime_ms: u64,
    pub volumes: Vec<KeptVolume>,
    /// The containers of the stack when it was taken: their images, which
    /// a rollback compares with the running ones.
    #[serde(default)]
    pub containers: Vec<crate::repo::manifest::ContainerRecord>,
}

/// One volume's snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeptVolume {
    pub name: String,
    pub storage: StorageInfo,
}

/// Checks a snapshot name: it becomes part of LV, dataset and file names.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(usage!(
            "{name:?} is not a usable snapshot name: use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        ))
    }
}

/// The records in a state directory.
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    pub fn open(state_dir: &Path) -> Result<SnapshotStore> {
        let dir = state_dir.join("snapshots");
        if !dir.exists() {
            crate::fsutil::create_state_dir(state_dir)?;
            crate::fsutil::create_private_dir(&dir)?;
        }
        Ok(SnapshotStore { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    pub fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    pub fn save(&self, record: &SnapshotRecord) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(record).context("cannot encode the snapshot record")?;
        crate::fsutil::write_private(&self.path(&record.name), &json)?;
        crate::fsutil::sync_dir(&self.dir)
    }

    pub fn load(&self, name: &str) -> Result<SnapshotRecord> {
        validate_name(name)?;
        let path = self.path(name);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(usage!(
                    "no snapshot named {name:?}; 'volsnap snapshots list' shows them"
                ))
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        serde_json::from_slice(&text).with_context(|| format!("{} is corrupt", path.display()))
    }

    /// All records, oldest first.
    pub fn list(&self) -> Result<Vec<SnapshotRecord>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)
            .with_context(|| format!("cannot list {}", self.dir.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                out.push(
                    serde_json::from_slice::<SnapshotRecord>(&text)
                        .with_context(|| format!("{} is corrupt", path.display()))?,
                );
            }
        }
        out.sort_by_key(|r| r.created_at);
        Ok(out)
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        std::fs::remove_file(self.path(name))
            .with_context(|| format!("cannot remove the record of {name}"))
    }
}

/// Drops every snapshot of a record; reports all failures together.
pub fn drop_snapshots(runner: &dyn Runner, record: &SnapshotRecord) -> Result<()> {
    let mut errors = Vec::new();
    for kept in &record.volumes {
        let result = backend_for(&kept.storage)
            .ok_or_else(|| anyhow!("{} is on storage that cannot snapshot", kept.name))
            .and_then(|b| b.drop_snapshot(runner, &kept.storage, &record.label));
        if let Err(e) = result {
            errors.push(format!("{}: {e:#}", kept.name));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!(
            "could not drop every snapshot of {}: {}",
            record.name,
            errors.join("; ")
        )
    }
}

/// Refuses, before anything is stopped, a record with a volume that
/// cannot roll back.
pub fn check_rollback(record: &SnapshotRecord) -> Result<()> {
    for kept in &record.volumes {
        let backend = backend_for(&kept.storage)
            .ok_or_else(|| anyhow!("{} is on storage that cannot snapshot", kept.name))?;
        backend
            .can_rollback(&kept.storage)
            .map_err(|e| anyhow::Error::new(crate::error::UsageError(format!("{e:#}"))))?;
    }
    Ok(())
}

/// Rolls every volume of `record` back (the services using them are
/// stopped: see [`crate::jobs::snapshot::roll_back`]), each through the
/// journal; an error says which were rolled back already.
pub fn roll_back_volumes(
    runner: &dyn Runner,
    record: &SnapshotRecord,
    journal: &mut Journal,
) -> Result<()> {
    let mut rolled_back = Vec::new();
    let mut units_done: Vec<String> = Vec::new();
    for kept in &record.volumes {
        let backend = backend_for(&kept.storage)
            .ok_or_else(|| anyhow!("{} is on storage that cannot snapshot", kept.name))?;
        let unit = backend.unit(&kept.storage);
        if units_done.contains(&unit) {
            rolled_back.push(kept.name.as_str());
            continue; // shares its LV or dataset with a volume already rolled back
        }
        units_done.push(unit);
        tracing::info!("rolling back {}", kept.name);
        let in_progress = Undo::FinishRollback {
            storage: kept.storage.clone(),
            label: record.label.clone(),
        };
        journal.push(&in_progress)?;
        if let Err(e) = backend.rollback(runner, &kept.storage, &record.label) {
            let done = if rolled_back.is_empty() {
                "no volume was rolled back".to_string()
            } else {
                format!("already rolled back: {}", rolled_back.join(", "))
            };
            return Err(e.context(format!("rollback of {} failed ({done})", kept.name)));
        }
        journal.discharge(&in_progress)?;
        rolled_back.push(kept.name.as_str());
    }
    Ok(())
}

/// The journal entry that restarts a container volsnap stopped.
pub fn start_undo(c: &Container) -> Undo {
    Undo::StartContainer {
        id: c.info.id.clone(),
        name: c.info.name.clone(),
        compose: crate::discovery::ComposeIdentity::of(&c.info.labels),
    }
}
