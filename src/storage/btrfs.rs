//! btrfs: read-only subvolume snapshots.
//!
//! A volume is snapshotted through the subvolume that holds it. Snapshots go
//! to `<mount point>/.volsnap-snapshots/`, beside the volume, never inside it.

use super::{args, Backend, Runner, SnapshotBackend, SnapshotSupport, StorageInfo};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The inode number of every btrfs subvolume's root directory.
const SUBVOLUME_ROOT_INODE: u64 = 256;
/// Directory under the mount point that holds volsnap's snapshots.
pub const SNAPSHOT_DIR: &str = ".volsnap-snapshots";

pub struct Btrfs;

/// Fills in the btrfs facts of `info` (whose fs type is btrfs).
pub fn detect(info: &mut StorageInfo, path: &Path) -> Result<()> {
    // Walk up to the nearest subvolume root, staying below the mount point.
    let mut subvolume = path.to_path_buf();
    loop {
        let meta = std::fs::metadata(&subvolume)
            .with_context(|| format!("cannot read {}", subvolume.display()))?;
        if meta.ino() == SUBVOLUME_ROOT_INODE || subvolume == info.mount_point {
            break;
        }
        match subvolume.parent() {
            Some(parent) => subvolume = parent.to_path_buf(),
            None => break,
        }
    }
    info.relative = path
        .strip_prefix(&subvolume)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    let snapshot_dir = info.mount_point.join(SNAPSHOT_DIR);
    info.support = if path == info.mount_point {
        SnapshotSupport::No(format!(
            "{} is the mount point of its btrfs filesystem, so a snapshot kept beside it would land inside the volume; \
             put the volume's data in a subvolume below the mount point",
            path.display()
        ))
    } else {
        SnapshotSupport::Yes
    };
    info.backend = Backend::Btrfs {
        subvolume,
        snapshot_dir,
    };
    Ok(())
}

fn parts(info: &StorageInfo) -> Result<(&Path, &Path)> {
    match &info.backend {
        Backend::Btrfs {
            subvolume,
            snapshot_dir,
        } => Ok((subvolume, snapshot_dir)),
        other => bail!("internal error: {other:?} handed to the btrfs backend"),
    }
}

fn delete_subvolume(run: &dyn Runner, path: &Path) -> Result<()> {
    run.run(
        "btrfs",
        &args([
            "subvolume".to_string(),
            "delete".into(),
            path.display().to_string(),
        ]),
    )
    .map(|_| ())
}

/// Where a rollback moves the live subvolume while it swaps it.
fn rollback_aside(subvolume: &Path, label: &str) -> std::path::PathBuf {
    subvolume.with_file_name(format!(
        ".{}-{label}-replaced",
        subvolume
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ))
}

/// The snapshot's path: per label and volume path, so volumes sharing a
/// subvolume get snapshots of their own.
pub fn snapshot_path(info: &StorageInfo, label: &str) -> Result<PathBuf> {
    let (_, dir) = parts(info)?;
    let tag = hex::encode(&Sha256::digest(info.path.as_os_str().as_encoded_bytes())[..4]);
    Ok(dir.join(format!("{label}-{tag}")))
}

impl SnapshotBackend for Btrfs {
    fn snapshot(&self, run: &dyn Runner, volumes: &[&StorageInfo], label: &str) -> Result<()> {
        for info in volumes {
            let (subvolume, dir) = parts(info)?;
            if !dir.exists() {
                crate::fsutil::create_private_dir(dir)?;
            }
            let snap = snapshot_path(info, label)?;
            run.run(
                "btrfs",
                &args([
                    "subvolume".to_string(),
                    "snapshot".into(),
                    "-r".into(),
                    subvolume.display().to_string(),
                    snap.display().to_string(),
                ]),
            )?;
        }
        Ok(())
    }

    fn needs_mount(&self) -> bool {
        false
    }

    fn unit(&self, info: &StorageInfo) -> String {
        // Each volume has a snapshot of its own (see snapshot_path).
        format!("btrfs:{}", info.path.display())
    }

    fn mount(
        &self,
        _run: &dyn Runner,
        _info: &StorageInfo,
        _label: &str,
        _dir: &Path,
    ) -> Result<()> {
        Ok(())
    }

    fn read_path(&self, info: &StorageInfo, label: &str, _dir: &Path) -> PathBuf {
        snapshot_path(info, label)
            .map(|p| p.join(&info.relative))
            .unwrap_or_default()
    }

    fn drop_snapshot(&self, run: &dyn Runner, info: &StorageInfo, label: &str) -> Result<()> {
        let snap = snapshot_path(info, label)?;
        if snap.exists() {
            delete_subvolume(run, &snap)?;
        }
        // Leave no empty snapshot directory behind (fails harmlessly if others remain).
        let _ = std::fs::remove_dir(parts(info)?.1);
        Ok(())
    }

    fn can_rollback(&self, info: &StorageInfo) -> Result<()> {
        let (subvolume, _) = parts(info)?;
        if !info.relative.as_os_str().is_empty() {
            bail!(
                "cannot roll {} back in place: it is a directory inside the subvolume {}, not a subvolume of its own; \
                 restore it from a backup instead (volsnap restore), or keep each volume in its own subvolume",
                info.path.display(),
                subvolume.display()
            );
        }
        Ok(())
    }

    fn rollback(&self, run: &dyn Runner, info: &StorageInfo, label: &str) -> Result<()> {
        self.can_rollback(info)?;
        let (subvolume, _) = parts(info)?;
        let snap = snapshot_path(info, label)?;
        if !snap.exists() {
            bail!(
                "snapshot {} is gone; nothing to roll back to",
                snap.display()
            );
        }
        // Swap: move the live subvolume aside, put a writable snapshot of the
        // kept one in its place, then delete the old one. The caller
        // journalled [`finish_rollback`] first.
        let aside = rollback_aside(subvolume, label);
        std::fs::rename(subvolume, &aside).with_context(|| {
            format!("cannot move {} aside for the rollback", subvolume.display())
        })?;
        #[cfg(feature = "fault-injection")]
        crate::fault::point("btrfs-rollback-moved-aside");
        if let Err(e) = run.run(
            "btrfs",
            &args([
                "subvolume".to_string(),
                "snapshot".into(),
                snap.display().to_string(),
                subvolume.display().to_string(),
            ]),
        ) {
            // Put the original back: the rollback did not happen.
            std::fs::rename(&aside, subvolume).with_context(|| {
                format!(
                    "rollback failed and the original is left at {}: move it back by hand",
                    aside.display()
                )
            })?;
            return Err(e);
        }
        delete_subvolume(run, &aside)?;
        Ok(())
    }

    fn finish_rollback(&self, run: &dyn Runner, info: &StorageInfo, label: &str) -> Result<()> {
        let (subvolume, _) = parts(info)?;
        let aside = rollback_aside(subvolume, label);
        if !aside.exists() {
            return Ok(()); // nothing had moved, or the rollback completed
        }
        if subvolume.exists() {
            // The rolled-back copy is in place: finish by deleting the old one.
            delete_subvolume(run, &aside)?;
        } else {
            // Killed between the two moves: put the live subvolume back.
            std::fs::rename(&aside, subvolume).with_context(|| {
                format!(
                    "cannot move {} back to {}",
                    aside.display(),
                    subvolume.display()
                )
            })?;
        }
        Ok(())
    }
}
