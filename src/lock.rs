//! One volsnap operation per host at a time.
//!
//! The lock is an `flock` on `<state dir>/lock`, so the kernel releases it
//! when its holder dies, however it dies: a stale lock cannot block anyone.
//! The file names the holder (pid and command) for the error message of the
//! run that finds it taken.

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Held for the life of the value.
pub struct HostLock {
    _lock: Flock<File>,
}

/// Takes the host lock, or fails naming who holds it.
pub fn acquire(state_dir: &Path, command: &str) -> Result<HostLock> {
    crate::fsutil::create_state_dir(state_dir)?;
    let path = state_dir.join("lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, _)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            anyhow::bail!(
                "another volsnap run holds the lock {} ({}); wait for it to finish. One run at a time keeps two runs from stopping or snapshotting the same volumes",
                path.display(),
                holder.trim()
            );
        }
    };
    let stale = {
        let mut previous = String::new();
        let _ = lock.read_to_string(&mut previous);
        previous
    };
    if !stale.trim().is_empty() {
        tracing::debug!("previous lock holder: {}", stale.trim());
    }
    lock.set_len(0)
        .and_then(|_| lock.rewind())
        .and_then(|_| writeln!(lock, "pid {}: volsnap {command}", std::process::id()))
        .and_then(|_| lock.sync_data())
        .with_context(|| format!("cannot write the lock file {}", path.display()))?;
    Ok(HostLock { _lock: lock })
}
