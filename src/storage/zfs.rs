//! ZFS: dataset snapshots, taken atomically for all datasets in one call.

use super::{args, Backend, Runner, SnapshotBackend, SnapshotSupport, StorageInfo};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub struct Zfs;

/// Fills in the ZFS facts of `info` (whose fs type is zfs).
pub fn detect(info: &mut StorageInfo, below_mount: &Path) {
    info.relative = below_mount.to_path_buf();
    info.backend = Backend::Zfs {
        dataset: info.device.clone(),
    };
    info.support = SnapshotSupport::Yes;
}

fn dataset(info: &StorageInfo) -> Result<&str> {
    match &info.backend {
        Backend::Zfs { dataset } => Ok(dataset),
        other => bail!("internal error: {other:?} handed to the ZFS backend"),
    }
}

pub fn snapshot_name(info: &StorageInfo, label: &str) -> Result<String> {
    Ok(format!("{}@{label}", dataset(info)?))
}

impl SnapshotBackend for Zfs {
    fn snapshot(&self, run: &dyn Runner, volumes: &[&StorageInfo], label: &str) -> Result<()> {
        let mut names: Vec<String> = Vec::new();
        for info in volumes {
            let name = snapshot_name(info, label)?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
        // One call: ZFS takes all the snapshots at the same instant.
        let mut argv = vec!["snapshot".to_string()];
        argv.extend(names);
        run.run("zfs", &argv)?;
        Ok(())
    }

    fn needs_mount(&self) -> bool {
        true
    }

    fn unit(&self, info: &StorageInfo) -> String {
        dataset(info)
            .map(|d| format!("zfs:{d}"))
            .unwrap_or_default()
    }

    fn mount(&self, run: &dyn Runner, info: &StorageInfo, label: &str, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // Explicit mount: the .zfs/snapshot automount is unreliable in
        // minimal environments.
        run.run(
            "mount",
            &args([
                "-t",
                "zfs",
                "-o",
                "ro",
                &snapshot_name(info, label)?,
                &dir.display().to_string(),
            ]),
        )?;
        Ok(())
    }

    fn read_path(&self, info: &StorageInfo, _label: &str, dir: &Path) -> PathBuf {
        dir.join(&info.relative)
    }

    fn drop_snapshot(&self, run: &dyn Runner, info: &StorageInfo, label: &str) -> Result<()> {
        let name = snapshot_name(info, label)?;
        if run
            .run(
                "zfs",
                &args(["list", "-H", "-t", "snapshot", "-o", "name", &name]),
            )
            .is_ok()
        {
            run.run("zfs", &args(["destroy", &name]))?;
        }
        Ok(())
    }

    fn rollback(&self, run: &dyn Runner, info: &StorageInfo, label: &str) -> Result<()> {
        // -r: later snapshots (none of volsnap's, normally) would block it.
        run.run(
            "zfs",
            &args(["rollback", "-r", &snapshot_name(info, label)?]),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::recorder::Recorder;
    use super::*;

    fn info(dataset: &str, relative: &str) -> StorageInfo {
        let mut i = StorageInfo {
            path: format!("/{dataset}/{relative}").into(),
            fs_type: "zfs".into(),
            device: dataset.into(),
            mount_point: format!("/{dataset}").into(),
            relative: PathBuf::new(),
            backend: Backend::Plain,
            support: SnapshotSupport::No(String::new()),
        };
        detect(&mut i, Path::new(relative));
        i
    }

    #[test]
    fn all_datasets_in_one_atomic_call() {
        let rec = Recorder::default();
        let (a, b, c) = (
            info("tank/etcd", ""),
            info("tank/minio", "data"),
            info("tank/etcd", "x"),
        );
        Zfs.snapshot(&rec, &[&a, &b, &c], "volsnap-1").unwrap();
        Zfs.rollback(&rec, &a, "volsnap-1").unwrap();
        assert_eq!(
            *rec.calls.borrow(),
            [
                "zfs snapshot tank/etcd@volsnap-1 tank/minio@volsnap-1",
                "zfs rollback -r tank/etcd@volsnap-1"
            ]
        );
        assert_eq!(
            Zfs.read_path(&b, "volsnap-1", Path::new("/run/x")),
            PathBuf::from("/run/x/data")
        );
    }

    #[test]
    fn drop_checks_existence_first() {
        let rec = Recorder::default();
        Zfs.drop_snapshot(&rec, &info("tank/etcd", ""), "volsnap-2")
            .unwrap();
        assert_eq!(
            *rec.calls.borrow(),
            [
                "zfs list -H -t snapshot -o name tank/etcd@volsnap-2",
                "zfs destroy tank/etcd@volsnap-2"
            ]
        );
    }
}
