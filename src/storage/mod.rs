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

use crate::discovery::{Container, Stack};
use crate::plan::{Action, PlanOptions, Quiesce, Step};
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

/// Detects the storage of every volume of a stack.
pub fn detect_stack(
    run: &dyn Runner,
    stack: &Stack,
    cow_bytes: Option<u64>,
) -> Result<Vec<StorageInfo>> {
    let mounts = mountinfo::read()?;
    stack
        .volumes
        .iter()
        .map(|v| detect(run, &mounts, &v.host_path, cow_bytes))
        .collect()
}

/// A label for this run's snapshots.
pub fn snapshot_label(id: &str) -> String {
    format!("{SNAPSHOT_PREFIX}{id}")
}

/// Lays out the snapshot strategy: quiesce, flush, snapshot all, resume,
/// then per volume mount, archive, unmount, drop.
pub fn plan_snapshot_steps(
    stack: &Stack,
    storage: &[StorageInfo],
    options: &PlanOptions,
    running: &[&Container],
    steps: &mut Vec<Step>,
    archive: bool,
) {
    let label = "<label>".to_string();
    let is_running = |c: &&Container| running.iter().any(|r| r.info.id == c.info.id);
    match options.quiesce {
        Quiesce::Stop => steps.extend(
            stack
                .stop_order()
                .filter(is_running)
                .map(|c| crate::plan::stop_step(c, options)),
        ),
        Quiesce::Pause => steps.extend(stack.stop_order().filter(is_running).map(|c| {
            let target = (c.info.id.clone(), c.info.name.clone());
            Step::with_undo(
                Action::Pause {
                    container: target.0.clone(),
                    name: target.1.clone(),
                },
                Action::Unpause {
                    container: target.0,
                    name: target.1,
                },
            )
        })),
        Quiesce::None => {}
    }
    let mut flushed: Vec<&Path> = Vec::new();
    for info in storage {
        if !flushed.contains(&info.mount_point.as_path()) {
            flushed.push(&info.mount_point);
            steps.push(Step::new(Action::Flush {
                path: info.path.clone(),
            }));
        }
    }
    let all: Vec<usize> = (0..stack.volumes.len()).collect();
    steps.push(Step::new(Action::Snapshot {
        volumes: all.clone(),
        label: label.clone(),
    }));
    // The undos of the snapshot are pushed by the executor per volume as each
    // snapshot is taken, so a half-taken group is still cleaned up.
    for c in stack.containers.iter().filter(is_running) {
        let (container, name) = (c.info.id.clone(), c.info.name.clone());
        match options.quiesce {
            Quiesce::Stop => steps.extend(crate::plan::restart_steps(c, options)),
            Quiesce::Pause => steps.push(Step::discharging(Action::Unpause { container, name })),
            Quiesce::None => {}
        }
    }
    if !archive {
        return;
    }
    for (i, (volume, info)) in stack.volumes.iter().zip(storage).enumerate() {
        let needs_mount = backend_for(info).is_some_and(|b| b.needs_mount());
        if needs_mount {
            steps.push(Step::with_undo(
                Action::MountSnapshot {
                    volume: i,
                    label: label.clone(),
                },
                Action::Unmount {
                    volume: i,
                    label: label.clone(),
                },
            ));
        }
        steps.push(Step::new(Action::Archive {
            volume: i,
            name: volume.name.clone(),
            watch_changes: false,
        }));
        if needs_mount {
            steps.push(Step::discharging(Action::Unmount {
                volume: i,
                label: label.clone(),
            }));
        }
        // Volumes on one LV or dataset share its snapshot: drop it only
        // after the last of them is archived.
        let unit = |info: &StorageInfo| backend_for(info).map(|b| b.unit(info));
        let shared_later = storage[i + 1..]
            .iter()
            .any(|later| unit(later) == unit(info));
        if !shared_later {
            for (j, _) in storage[..=i]
                .iter()
                .enumerate()
                .filter(|(_, s)| unit(s) == unit(info))
            {
                steps.push(Step::discharging(Action::DropSnapshot {
                    volume: j,
                    label: label.clone(),
                }));
            }
        }
    }
}

/// Replaces the plan's label placeholder with the run's real label.
pub fn set_label(steps: &mut [Step], real: &str) {
    let fix = |action: &mut Action| match action {
        Action::Snapshot { label, .. }
        | Action::DropSnapshot { label, .. }
        | Action::MountSnapshot { label, .. }
        | Action::Unmount { label, .. } => *label = real.to_string(),
        _ => {}
    };
    for step in steps {
        fix(&mut step.action);
        if let Some(u) = step.undo.as_mut() {
            fix(u);
        }
        if let Some(d) = step.discharges.as_mut() {
            fix(d);
        }
    }
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
