//! Storage backends: what lies under a volume and how to snapshot it.
//!
//! Each backend (btrfs, LVM, ZFS) lives in its own file behind the small
//! [`SnapshotBackend`] trait; plain storage has none. Detection starts from
//! `/proc/self/mountinfo`; external tools run through a [`Runner`] so that
//! their exact command lines can be unit-tested and their stderr ends up in
//! our error messages.

pub mod btrfs;
pub mod lvm;
pub mod mountinfo;
pub mod zfs;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Prefix of every snapshot, mount directory and subvolume volsnap creates,
/// so leftovers are recognisable.
pub const SNAPSHOT_PREFIX: &str = "volsnap-";
/// Where snapshots are mounted read-only while archived.
pub const MOUNT_ROOT: &str = "/run/volsnap";

/// Runs external tools: the real one uses duct; tests record command lines.
pub trait Runner {
    /// Runs `program args…`, returning stdout; fails with stderr included.
    fn run(&self, program: &str, args: &[String]) -> Result<String>;
}

/// Runs commands for real.
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&self, program: &str, args: &[String]) -> Result<String> {
        tracing::debug!("running {program} {}", args.join(" "));
        let output = duct::cmd(program, args)
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .with_context(|| format!("cannot run {program}; is it installed?"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(anyhow!(
                "'{program} {}' failed ({}): {}",
                args.join(" "),
                output.status,
                stderr.trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Builds an argument vector from string-likes.
pub fn args<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> Vec<String> {
    items.into_iter().map(|s| s.as_ref().to_string()).collect()
}

/// What lies under a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Backend {
    /// A btrfs filesystem; `subvolume` is the subvolume holding the volume.
    Btrfs {
        subvolume: PathBuf,
        snapshot_dir: PathBuf,
    },
    /// An LVM logical volume.
    Lvm {
        vg: String,
        lv: String,
        thin: bool,
        size_bytes: u64,
        vg_free_bytes: u64,
        /// Copy-on-write area of a classic snapshot.
        cow_bytes: u64,
    },
    /// A ZFS dataset.
    Zfs { dataset: String },
    /// Anything else: no snapshots.
    Plain,
}

/// Whether a volume can be snapshotted, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "snapshot", content = "reason", rename_all = "lowercase")]
pub enum SnapshotSupport {
    Yes,
    No(String),
}

/// Storage facts about one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageInfo {
    pub path: PathBuf,
    pub fs_type: String,
    pub device: String,
    pub mount_point: PathBuf,
    /// The volume's path inside the snapshotted unit (subvolume, LV or
    /// dataset): where to find it in the snapshot.
    pub relative: PathBuf,
    pub backend: Backend,
    pub support: SnapshotSupport,
}

impl StorageInfo {
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Btrfs { .. } => "btrfs",
            Backend::Lvm { .. } => "lvm",
            Backend::Zfs { .. } => "zfs",
            Backend::Plain => "plain",
        }
    }
}

/// Snapshot operations of one kind of storage. The label is unique per run
/// and starts with [`SNAPSHOT_PREFIX`].
pub trait SnapshotBackend {
    /// Snapshots all these volumes at one instant (as far as the backend can).
    fn snapshot(&self, run: &dyn Runner, volumes: &[&StorageInfo], label: &str) -> Result<()>;
    /// Whether the snapshot must be mounted before it can be read.
    fn needs_mount(&self) -> bool;
    /// Mounts the snapshot read-only at `dir`.
    fn mount(&self, run: &dyn Runner, info: &StorageInfo, label: &str, dir: &Path) -> Result<()>;
    /// Where the snapshot's copy of the volume is readable (under `dir` when mounted).
    fn read_path(&self, info: &StorageInfo, label: &str, dir: &Path) -> PathBuf;
    /// Fails when the snapshot can no longer be trusted (an overflowed LVM COW).
    fn check_valid(&self, _run: &dyn Runner, _info: &StorageInfo, _label: &str) -> Result<()> {
        Ok(())
    }
    fn drop_snapshot(&self, run: &dyn Runner, info: &StorageInfo, label: &str) -> Result<()>;
    /// Fails, saying what to do instead, when the volume cannot be rolled
    /// back in place. Checked before any service is stopped.
    fn can_rollback(&self, _info: &StorageInfo) -> Result<()> {
        Ok(())
    }
    /// What is snapshotted for this volume (LV, dataset, subvolume): volumes
    /// sharing one are rolled back once.
    fn unit(&self, info: &StorageInfo) -> String;
    /// Puts the volume back to the snapshot, in place (services stopped).
    fn rollback(&self, run: &dyn Runner, info: &StorageInfo, label: &str) -> Result<()>;
    /// Puts right a rollback that was killed midway (`recover` calls it;
    /// idempotent): the volume ends up either as it was before or rolled
    /// back, in use again, never missing or unmounted.
    fn finish_rollback(&self, _run: &dyn Runner, _info: &StorageInfo, _label: &str) -> Result<()> {
        Ok(())
    }
}

/// The backend for a volume's storage, if it can snapshot.
pub fn backend_for(info: &StorageInfo) -> Option<&'static dyn SnapshotBackend> {
    match info.backend {
        Backend::Btrfs { .. } => Some(&btrfs::Btrfs),
        Backend::Lvm { .. } => Some(&lvm::Lvm),
        Backend::Zfs { .. } => Some(&zfs::Zfs),
        Backend::Plain => None,
    }
}

/// Finds what lies under `path`. `cow_bytes` overrides the size of the
/// copy-on-write area of classic LVM snapshots.
pub fn detect(
    run: &dyn Runner,
    mounts: &[mountinfo::MountEntry],
    path: &Path,
    cow_bytes: Option<u64>,
) -> Result<StorageInfo> {
    let canonical = path
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let mount = mountinfo::find(mounts, &canonical)
        .ok_or_else(|| anyhow!("no mount holds {} (is /proc mounted?)", canonical.display()))?;
    let below_mount = canonical
        .strip_prefix(&mount.mount_point)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    let mut info = StorageInfo {
        path: canonical.clone(),
        fs_type: mount.fs_type.clone(),
        device: mount.source.clone(),
        mount_point: mount.mount_point.clone(),
        relative: mount.root.join(&below_mount),
        backend: Backend::Plain,
        support: SnapshotSupport::No(format!(
            "{} on {} cannot snapshot (needs LVM, ZFS or btrfs)",
            mount.fs_type, mount.source
        )),
    };
    match mount.fs_type.as_str() {
        "btrfs" => btrfs::detect(&mut info, &canonical)?,
        "zfs" => zfs::detect(&mut info, &below_mount),
        _ if mount.source.starts_with("/dev/mapper/") || mount.source.starts_with("/dev/dm-") => {
            lvm::detect(run, &mut info, cow_bytes)?
        }
        _ => {}
    }
    Ok(info)
}

/// A label for this run's snapshots.
pub fn snapshot_label(id: &str) -> String {
    format!("{SNAPSHOT_PREFIX}{id}")
}

/// Where a volume's snapshot is mounted for archiving.
pub fn mount_dir(label: &str, volume: usize) -> PathBuf {
    PathBuf::from(MOUNT_ROOT)
        .join(label)
        .join(volume.to_string())
}

/// Records command lines instead of running them (tests of exact sequences).
#[cfg(test)]
pub mod recorder {
    use super::Runner;
    use std::cell::RefCell;

    #[derive(Default)]
    pub struct Recorder {
        pub calls: RefCell<Vec<String>>,
        /// Canned stdout by command prefix.
        pub replies: Vec<(String, String)>,
    }

    impl Runner for Recorder {
        fn run(&self, program: &str, args: &[String]) -> anyhow::Result<String> {
            let line = format!("{program} {}", args.join(" "));
            self.calls.borrow_mut().push(line.clone());
            Ok(self
                .replies
                .iter()
                .find(|(prefix, _)| line.starts_with(prefix))
                .map(|(_, out)| out.clone())
                .unwrap_or_default())
        }
    }
}
