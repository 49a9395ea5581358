//! Repository locks as objects (docs/FORMAT.md, "Locks"): object storage
//! has no flock and no rename, so a lock is an object that its holder
//! rewrites every [`REFRESH`] and that others ignore once it is older than
//! [`STALE`] by the storage's own clock.
//!
//! Shared locks (backups, copies) say "I started at this time and may
//! reference what I read then"; they never wait and never keep anyone out.
//! The exclusive lock of a prune's deleting phase keeps out only another
//! prune: backups are protected from deletion by the marks (docs/FORMAT.md,
//! "Prune and garbage collection"), not by waiting, so a fleet's backups
//! never stall behind a prune. Taking an exclusive lock writes first, then
//! lists, and backs off if another live exclusive lock exists, so two
//! prunes can not both miss each other.

use super::crypto::KeyRing;
use crate::backend::{Backend, ObjectInfo};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How often a holder rewrites its lock.
pub const REFRESH: Duration = Duration::from_secs(5 * 60);
/// A lock not refreshed for this long belongs to a dead holder.
pub const STALE: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Shared,
    Exclusive,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub kind: LockKind,
    pub host: String,
    /// This machine's /etc/machine-id: a dead holder is recognised at once
    /// only on the very machine it ran on.
    #[serde(default)]
    pub machine: String,
    pub pid: u32,
    pub command: String,
    pub created: DateTime<Utc>,
    pub refreshed: DateTime<Utc>,
}

/// A held lock; refreshed by a thread of its own, released on drop.
pub struct RepoLock {
    backend: Arc<dyn Backend>,
    name: Arc<Mutex<String>>,
    /// Dropped (or sent to) to stop the refresher at once.
    stop: Option<std::sync::mpsc::Sender<()>>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

/// Takes a lock of `kind`, or fails naming who holds the conflicting one.
/// `seal` is the write key of an encrypted repository: locks are sealed
/// with it (they name hosts, pids and commands).
pub fn acquire(
    backend: Arc<dyn Backend>,
    seal: Option<Arc<KeyRing>>,
    kind: LockKind,
    host: &str,
    command: &str,
) -> Result<RepoLock> {
    // The storage's clock, so that lock times compare with marks' times.
    let now: DateTime<Utc> = backend.now()?.into();
    let info = LockInfo {
        kind,
        host: host.to_string(),
        machine: machine_id(),
        pid: std::process::id(),
        command: command.to_string(),
        created: now,
        refreshed: now,
    };
    let name = write_lock(&*backend, seal.as_deref(), &info)?;
    let conflicts = match live_locks(&*backend, seal.as_deref()) {
        Ok(locks) => locks
            .into_iter()
            .filter(|(object, other)| {
                object.name != name
                    && kind == LockKind::Exclusive
                    && other.kind == LockKind::Exclusive
            })
            .collect::<Vec<_>>(),
        Err(e) => {
            let _ = backend.delete(&name);
            return Err(e);
        }
    };
    if !conflicts.is_empty() {
        let _ = backend.delete(&name);
        let holders: Vec<String> = conflicts
            .iter()
            .map(|(object, other)| describe(object, other, now.into()))
            .collect();
        bail!(
            "the repository {} is locked: {}. Wait for that run to end; a lock its holder stopped refreshing is ignored after {} minutes",
            backend.location(),
            holders.join("; "),
            STALE.as_secs() / 60
        );
    }
    let name = Arc::new(Mutex::new(name));
    let (stop, stopped) = std::sync::mpsc::channel();
    let refresher = {
        let (backend, name) = (backend.clone(), name.clone());
        std::thread::Builder::new()
            .name("lock-refresh".into())
            .spawn(move || refresh_until(&*backend, seal.as_deref(), &name, &stopped, info))
            .context("cannot start the lock refresher")?
    };
    Ok(RepoLock {
        backend,
        name,
        stop: Some(stop),
        refresher: Some(refresher),
    })
}

fn refresh_until(
    backend: &dyn Backend,
    seal: Option<&KeyRing>,
    name: &Mutex<String>,
    stopped: &std::sync::mpsc::Receiver<()>,
    mut info: LockInfo,
) {
    // Waits REFRESH between refreshes, and not a moment once told to stop.
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(REFRESH) {
        info.refreshed = backend.now().map_or_else(|_| Utc::now(), Into::into);
        // The new lock is written before the old one goes: never a moment
        // without one.
        match write_lock(backend, seal, &info) {
            Ok(new) => {
                if let Ok(mut current) = name.lock() {
                    let old = std::mem::replace(&mut *current, new);
                    let _ = backend.delete(&old);
                }
            }
            Err(e) => tracing::warn!("cannot refresh the repository lock: {e:#}"),
        }
    }
}

const LOCK_KIND: &str = "locks";

fn write_lock(backend: &dyn Backend, seal: Option<&KeyRing>, info: &LockInfo) -> Result<String> {
    let bytes = serde_json::to_vec(info)?;
    let bytes = match seal {
        Some(key) => key.seal(LOCK_KIND, &bytes)?,
        None => bytes,
    };
    let name = format!("locks/{}", super::id::Id::digest(&bytes));
    backend.write(&name, &bytes)?;
    Ok(name)
}

fn open_lock(seal: Option<&KeyRing>, bytes: &[u8]) -> Result<LockInfo> {
    let text = match seal {
        Some(key) => key.open(LOCK_KIND, bytes)?,
        None => bytes.to_vec(),
    };
    Ok(serde_json::from_slice(&text)?)
}

/// Every lock not stale, with its object (its time is the storage's).
pub fn live_locks(
    backend: &dyn Backend,
    seal: Option<&KeyRing>,
) -> Result<Vec<(ObjectInfo, LockInfo)>> {
    let now = backend.now()?;
    let mut live = Vec::new();
    for object in backend.list("locks")? {
        let age = now.duration_since(object.modified).unwrap_or_default();
        if age > STALE {
            continue;
        }
        let info = match backend.read(&object.name) {
            Ok(bytes) => match open_lock(seal, &bytes) {
                // A lock of this host whose process is gone was left by a
                // kill: it is dead now, not in 30 minutes.
                Ok(info)
                    if !info.machine.is_empty()
                        && info.machine == machine_id()
                        && !process_alive(info.pid) =>
                {
                    tracing::info!(
                        "removing the lock {} left by pid {} of this host, which is gone",
                        object.name,
                        info.pid
                    );
                    let _ = backend.delete(&object.name);
                    continue;
                }
                Ok(info) => info,
                // An unreadable lock still counts: treat it as exclusive.
                Err(_) => LockInfo {
                    kind: LockKind::Exclusive,
                    host: "?".into(),
                    machine: String::new(),
                    pid: 0,
                    command: "(unreadable lock)".into(),
                    created: now.into(),
                    refreshed: now.into(),
                },
            },
            Err(e) if crate::backend::is_missing(&e) => continue, // released meanwhile
            Err(e) => return Err(e),
        };
        live.push((object, info));
    }
    Ok(live)
}

/// This machine's id: systemd's /etc/machine-id, or where there is none
/// the kernel's id of this boot (a lock from an earlier boot then just
/// waits to go stale).
fn machine_id() -> String {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
    };
    read("/etc/machine-id")
        .or_else(|| read("/proc/sys/kernel/random/boot_id").map(|b| format!("boot:{b}")))
        .unwrap_or_default()
}

/// Whether a process of this pid runs here.
fn process_alive(pid: u32) -> bool {
    pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn describe(object: &ObjectInfo, info: &LockInfo, now: SystemTime) -> String {
    let age = now
        .duration_since(object.modified)
        .unwrap_or_default()
        .as_secs();
    format!(
        "{:?} lock of {} (pid {}, '{}'), refreshed {age} s ago",
        info.kind, info.host, info.pid, info.command
    )
    .to_lowercase()
    .replacen("shared", "a shared", 1)
    .replacen("exclusive", "an exclusive", 1)
}

impl RepoLock {
    /// Releases the lock now, reporting a failure to delete it.
    pub fn release(mut self) -> Result<()> {
        self.stop_refresher();
        let name = self.name.lock().map(|n| n.clone()).unwrap_or_default();
        self.backend.delete(&name)
    }

    fn stop_refresher(&mut self) {
        self.stop = None;
        if let Some(handle) = self.refresher.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        if self.refresher.is_some() {
            self.stop_refresher();
            if let Ok(name) = self.name.lock() {
                let _ = self.backend.delete(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;

    #[test]
    fn sealed_locks_name_no_host_to_the_storage_and_still_exclude() {
        use crate::repo::v2::crypto::{Aead, WriteKey};
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir.path()).unwrap());
        let key = Arc::new(KeyRing::new(WriteKey::generate(Aead::for_this_cpu())));
        let held = acquire(
            backend.clone(),
            Some(key.clone()),
            LockKind::Exclusive,
            "db-host-7",
            "prune",
        )
        .unwrap();
        let objects = backend.list("locks").unwrap();
        assert_eq!(objects.len(), 1);
        let raw = backend.read(&objects[0].name).unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("db-host-7"));
        let live = live_locks(&*backend, Some(&key)).unwrap();
        assert_eq!(live[0].1.host, "db-host-7");
        let err = acquire(
            backend.clone(),
            Some(key),
            LockKind::Exclusive,
            "h",
            "prune",
        )
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains("db-host-7"), "{err:#}");
        drop(held);
    }

    #[test]
    fn backups_never_wait_and_two_prunes_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir.path()).unwrap());
        let a = acquire(backend.clone(), None, LockKind::Shared, "h1", "backup").unwrap();
        let x = acquire(backend.clone(), None, LockKind::Exclusive, "h3", "prune").unwrap();
        let b = acquire(backend.clone(), None, LockKind::Shared, "h2", "backup").unwrap();
        let err = acquire(backend.clone(), None, LockKind::Exclusive, "h4", "prune")
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("an exclusive lock of h3"),
            "{err:#}"
        );
        // The refused attempt left no lock of its own behind.
        assert_eq!(live_locks(&*backend, None).unwrap().len(), 3);
        a.release().unwrap();
        drop(b);
        x.release().unwrap();
        assert!(backend.list("locks").unwrap().is_empty());
    }

    #[test]
    fn a_stale_lock_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open(dir.path()).unwrap());
        let old = acquire(backend.clone(), None, LockKind::Exclusive, "dead", "prune").unwrap();
        // The holder died an hour ago: its lock was never refreshed since.
        let name = old.name.lock().unwrap().clone();
        let path = dir.path().join(&name);
        std::mem::forget(old);
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        let lock = acquire(backend.clone(), None, LockKind::Shared, "h1", "backup").unwrap();
        lock.release().unwrap();
    }
}
