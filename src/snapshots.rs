//! Snapshots kept for rollback ("pre-upgrade snapshots").
//!
//! `volsnap snapshot` takes consistent snapshots of a stack and records
//! them here, in `<state dir>/snapshots/<name>.json`; `rollback` puts every
//! volume back to them, with the services stopped around it.

use crate::discovery::Container;
use crate::discovery::Stack;
use crate::docker::Docker;
use crate::journal::{Journal, Undo};
use crate::storage::{backend_for, Runner, StorageInfo};
use crate::usage;
use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Rolls every volume of `record` back, stopping the running containers
/// of `stack` around it (dependents first) and starting them again
/// (dependencies first) whatever happens.
pub fn rollback(
    docker: &Docker,
    runner: &dyn Runner,
    record: &SnapshotRecord,
    stack: &Stack,
    stop_timeout_secs: u32,
    ready_timeout: Duration,
    journal: &mut Journal,
) -> Result<()> {
    // Refuse before stopping anything when a volume cannot roll back.
    for kept in &record.volumes {
        let backend = backend_for(&kept.storage)
            .ok_or_else(|| anyhow!("{} is on storage that cannot snapshot", kept.name))?;
        backend
            .can_rollback(&kept.storage)
            .map_err(|e| anyhow::Error::new(crate::error::UsageError(format!("{e:#}"))))?;
    }
    let mut stopped = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    for c in stack.stop_order().filter(|c| c.info.running) {
        tracing::info!("stopping {}", c.info.name);
        journal.push(&start_undo(c))?;
        if let Err(e) = docker.stop(&c.info.id, stop_timeout_secs) {
            failure = Some(e);
            break;
        }
        stopped.push(c);
    }
    let mut rolled_back = Vec::new();
    let mut units_done: Vec<String> = Vec::new();
    if failure.is_none() {
        for kept in &record.volumes {
            let unit = backend_for(&kept.storage)
                .map(|b| b.unit(&kept.storage))
                .unwrap_or_default();
            if units_done.contains(&unit) {
                rolled_back.push(kept.name.as_str());
                continue; // shares its LV or dataset with a volume already rolled back
            }
            units_done.push(unit);
            tracing::info!("rolling back {}", kept.name);
            let backend = backend_for(&kept.storage).expect("checked above");
            let in_progress = Undo::FinishRollback {
                storage: kept.storage.clone(),
                label: record.label.clone(),
            };
            journal.push(&in_progress)?;
            match backend.rollback(runner, &kept.storage, &record.label) {
                Ok(()) => {
                    journal.discharge(&in_progress)?;
                    rolled_back.push(kept.name.as_str());
                }
                Err(e) => {
                    let done = if rolled_back.is_empty() {
                        "no volume was rolled back".to_string()
                    } else {
                        format!("already rolled back: {}", rolled_back.join(", "))
                    };
                    failure = Some(e.context(format!("rollback of {} failed ({done})", kept.name)));
                    break;
                }
            }
        }
    }
    let mut start_errors = Vec::new();
    for c in stack
        .containers
        .iter()
        .filter(|c| stopped.iter().any(|s| s.info.id == c.info.id))
    {
        tracing::info!("starting {}", c.info.name);
        if let Err(e) = docker
            .start(&c.info.id)
            .and_then(|_| docker.wait_ready_settled(&c.info.id, &c.info.name, ready_timeout))
        {
            start_errors.push(format!("{e:#}"));
        } else {
            journal.discharge(&start_undo(c))?;
        }
    }
    match (failure, start_errors.is_empty()) {
        (None, true) => Ok(()),
        (None, false) => bail!(
            "rolled back, but services did not come back: {}",
            start_errors.join("; ")
        ),
        (Some(e), true) => Err(e.context("services were started again")),
        (Some(e), false) => Err(e.context(format!(
            "and services did not come back: {}",
            start_errors.join("; ")
        ))),
    }
}

/// The journal entry that restarts a container volsnap stopped.
pub fn start_undo(c: &Container) -> Undo {
    Undo::StartContainer {
        id: c.info.id.clone(),
        name: c.info.name.clone(),
        compose: crate::discovery::ComposeIdentity::of(&c.info.labels),
    }
}
