//! Backends move named objects to and from a repository's storage, and do
//! nothing else: they know no format, no backup, no Docker.
//!
//! An object is written whole or not at all, and never changed afterwards
//! (the repository format relies on that; see docs/FORMAT.md, "Repository
//! format 2"). Names are relative, `/`-separated, made of plain components
//! (`data/3f/3f…`); a backend refuses any other name, so a name read from a
//! repository can never reach outside it. A local directory
//! ([`LocalBackend`]) and S3 or SFTP servers ([`RemoteBackend`]) implement
//! the same trait; [`open`] picks one from the repository's address.

mod local;
pub mod location;
mod object_lock;
mod remote;

pub use local::LocalBackend;
pub use location::Location;
pub use object_lock::LockConfiguration;
pub use remote::RemoteBackend;

use anyhow::Result;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

/// The backend of the repository at `address` (a path or an `s3://` or
/// `sftp://` address). A server is reached once per process and address:
/// the first open checks that it answers and the credentials work (one
/// cheap listing), before a backup stops anything.
pub fn open(address: &Path) -> Result<Arc<dyn Backend>> {
    match Location::parse(address)? {
        Location::Local(root) => Ok(Arc::new(LocalBackend::open(&root)?)),
        Location::Remote(remote) => {
            static OPEN: OnceLock<Mutex<HashMap<String, Arc<dyn Backend>>>> = OnceLock::new();
            let key = address.to_string_lossy().into_owned();
            let open = OPEN.get_or_init(Default::default);
            if let Some(backend) = open.lock().ok().and_then(|m| m.get(&key).cloned()) {
                return Ok(backend);
            }
            let backend = RemoteBackend::open(&remote)?;
            backend.check()?;
            let backend: Arc<dyn Backend> = Arc::new(backend);
            if let Ok(mut map) = open.lock() {
                map.insert(key, backend.clone());
            }
            Ok(backend)
        }
    }
}

/// Whether `address` names a repository on a server.
pub fn is_remote(address: &Path) -> bool {
    Location::parse(address).is_ok_and(|l| l.is_remote())
}

/// One stored object, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    /// The storage's own clock (lock ages are judged by it).
    pub modified: SystemTime,
}

/// The object asked for does not exist. Readers tell "missing" (damage, or
/// a concurrent prune) from other failures by this type in the error chain.
#[derive(Debug, thiserror::Error)]
#[error("object {name} is missing from {location}")]
pub struct Missing {
    pub name: String,
    pub location: String,
}

/// Whether `err` says an object is missing.
pub fn is_missing(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<Missing>())
}

pub trait Backend: Send + Sync {
    /// Where the objects live, for messages (never with a secret in it).
    fn location(&self) -> String;

    /// The whole object.
    fn read(&self, name: &str) -> Result<Vec<u8>>;

    /// `length` bytes of the object from `offset`.
    fn read_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>>;

    /// Writes the object whole. For content-derived names a second write
    /// of the same name writes the same bytes, so replacing is harmless.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<()>;

    /// Writes the object only if no object of that name exists; `false`
    /// when one did (and nothing was written).
    fn create_new(&self, name: &str, bytes: &[u8]) -> Result<bool>;

    /// Every object whose name starts with `prefix/` (a directory-like
    /// prefix such as `data` or `locks`), at any depth.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// The object's size and time, `None` when it does not exist.
    fn stat(&self, name: &str) -> Result<Option<ObjectInfo>>;

    /// Deletes the object; deleting a missing object is not an error.
    fn delete(&self, name: &str) -> Result<()>;

    /// The storage's clock now: lock and mark ages are judged by it, so
    /// hosts with wrong clocks still agree on them.
    fn now(&self) -> Result<SystemTime> {
        Ok(SystemTime::now())
    }

    /// Whether the storage refuses a create-if-absent of a name that
    /// exists (some S3 servers ignore `If-None-Match` and overwrite).
    fn refuses_second_create(&self) -> Result<bool> {
        Ok(true)
    }

    /// Whether each request costs a round trip over a network: readers
    /// then fetch larger ranges and fewer of them.
    fn is_remote(&self) -> bool {
        false
    }

    /// Deletes what writes killed half way left (temporary objects older
    /// than `age`; a live write finishes long before); how many went.
    fn sweep_temporaries(&self, _age: std::time::Duration) -> Result<usize> {
        Ok(0)
    }

    /// The storage's Object Lock configuration: `None` where it has no
    /// Object Lock at all (local directories, SFTP).
    fn lock_configuration(&self) -> Result<Option<LockConfiguration>> {
        Ok(None)
    }

    /// Retains the object until `until`: nobody can delete or change it
    /// before then (S3 Object Lock, compliance mode).
    fn retain(&self, name: &str, _until: SystemTime) -> Result<()> {
        anyhow::bail!(
            "{} has no Object Lock: {name} cannot be retained (immutable repositories live on S3 buckets with Object Lock)",
            self.location()
        )
    }

    /// Until when the object is retained, `None` when it is not.
    fn retained_until(&self, _name: &str) -> Result<Option<SystemTime>> {
        Ok(None)
    }

    /// Up to a few names at the top level (objects and prefixes alike),
    /// to tell an empty place from one holding something.
    fn top_level(&self) -> Result<Vec<String>>;
}

/// Checks that `name` is a plain relative object name: components of ASCII
/// letters, digits, `.`, `_` and `-`, none empty or starting with a dot.
pub fn check_name(name: &str) -> Result<()> {
    let plain = |c: &str| {
        !c.is_empty()
            && !c.starts_with('.')
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if name.len() > 512 || !name.split('/').all(plain) {
        anyhow::bail!("{name:?} is not a valid repository object name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_pass() {
        for good in ["config", "data/3f/3fab", "locks/x-1", "notes/a/verified-1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "data/../x",
            "data//x",
            "a/.hidden",
            "data/x/",
            "a b",
            "dätä",
            ".tmp-1",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
