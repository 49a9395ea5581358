//! LVM: classic (copy-on-write) and thin snapshots of logical volumes.
//!
//! lvcreate suspends the device-mapper device while it takes the snapshot,
//! which freezes the filesystem on it: no separate FIFREEZE is needed.

use super::{args, Backend, Runner, SnapshotBackend, SnapshotSupport, StorageInfo};
use crate::fsutil::human_bytes;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Smallest copy-on-write area volsnap creates for a classic snapshot.
const MIN_COW_BYTES: u64 = 256 << 20;

pub struct Lvm;

#[derive(Deserialize)]
struct Report {
    report: Vec<ReportSection>,
}

#[derive(Deserialize)]
struct ReportSection {
    #[serde(default)]
    lv: Vec<LvRow>,
}

#[derive(Deserialize, Default)]
struct LvRow {
    #[serde(default)]
    vg_name: String,
    #[serde(default)]
    lv_name: String,
    #[serde(default)]
    lv_attr: String,
    #[serde(default)]
    pool_lv: String,
    #[serde(default)]
    lv_size: String,
    #[serde(default)]
    vg_free: String,
    #[serde(default)]
    snap_percent: String,
}

fn parse_rows(json: &str) -> Result<Vec<LvRow>> {
    let report: Report = serde_json::from_str(json).context("cannot parse the output of lvs")?;
    Ok(report.report.into_iter().flat_map(|s| s.lv).collect())
}

fn bytes(field: &str) -> u64 {
    field
        .trim()
        .trim_end_matches(['B', 'b'])
        .parse::<f64>()
        .unwrap_or(0.0) as u64
}

/// Default copy-on-write size of a classic snapshot: a fifth of the origin,
/// at least [`MIN_COW_BYTES`], at most the origin's size.
pub fn default_cow_bytes(origin_bytes: u64) -> u64 {
    (origin_bytes / 5)
        .max(MIN_COW_BYTES)
        .min(origin_bytes.max(1))
}

/// Fills in the LVM facts of `info` when its device is a logical volume.
pub fn detect(run: &dyn Runner, info: &mut StorageInfo, cow_bytes: Option<u64>) -> Result<()> {
    let output = match run.run(
        "lvs",
        &args([
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "vg_name,lv_name,lv_attr,pool_lv,lv_size,vg_free",
            info.device.as_str(),
        ]),
    ) {
        Ok(out) => out,
        Err(e) => {
            info.support = SnapshotSupport::No(format!(
                "{} is a device-mapper device but not an LVM logical volume ({e:#})",
                info.device
            ));
            return Ok(());
        }
    };
    let Some(row) = parse_rows(&output)?.into_iter().next() else {
        return Ok(());
    };
    let thin = row.lv_attr.starts_with('V') || !row.pool_lv.is_empty();
    let size_bytes = bytes(&row.lv_size);
    let vg_free_bytes = bytes(&row.vg_free);
    let need = cow_bytes.unwrap_or_else(|| default_cow_bytes(size_bytes));
    info.support = if !thin && vg_free_bytes < need {
        SnapshotSupport::No(format!(
            "volume group {} has {} free, a snapshot of {}/{} needs {}; free space in the volume group (vgextend, or shrink another LV)",
            row.vg_name,
            human_bytes(vg_free_bytes),
            row.vg_name,
            row.lv_name,
            human_bytes(need)
        ))
    } else {
        SnapshotSupport::Yes
    };
    info.backend = Backend::Lvm {
        vg: row.vg_name,
        lv: row.lv_name,
        thin,
        size_bytes,
        vg_free_bytes,
        cow_bytes: need,
    };
    Ok(())
}

struct Lv<'a> {
    vg: &'a str,
    lv: &'a str,
    thin: bool,
    cow_bytes: u64,
}

fn lv(info: &StorageInfo) -> Result<Lv<'_>> {
    match &info.backend {
        Backend::Lvm {
            vg,
            lv,
            thin,
            cow_bytes,
            ..
        } => Ok(Lv {
            vg,
            lv,
            thin: *thin,
            cow_bytes: *cow_bytes,
        }),
        other => bail!("internal error: {other:?} handed to the LVM backend"),
    }
}

/// `vg/<label>-<lv>`: the snapshot LV of one origin for one run.
pub fn snapshot_name(info: &StorageInfo, label: &str) -> Result<String> {
    let origin = lv(info)?;
    Ok(format!("{}/{label}-{}", origin.vg, origin.lv))
}

fn exists(run: &dyn Runner, name: &str) -> bool {
    run.run("lvs", &args(["--noheadings", "-o", "lv_name", name]))
        .is_ok()
}

fn mount_options(fs_type: &str) -> &'static str {
    match fs_type {
        // Replaying the journal would write to the snapshot; XFS also
        // refuses a second mount with the same UUID.
        "xfs" => "ro,nouuid,norecovery",
        "ext4" | "ext3" => "ro,noload",
        _ => "ro",
    }
}

impl SnapshotBackend for Lvm {
    fn snapshot(&self, run: &dyn Runner, volumes: &[&StorageInfo], label: &str) -> Result<()> {
        let mut done: Vec<String> = Vec::new();
        for info in volumes {
            let origin = lv(info)?;
            let name = snapshot_name(info, label)?;
            if done.contains(&name) {
                continue; // two volumes on one LV share its snapshot
            }
            let short = name.rsplit('/').next().unwrap_or(&name).to_string();
            let source = format!("{}/{}", origin.vg, origin.lv);
            if origin.thin {
                run.run("lvcreate", &args(["--snapshot", "--name", &short, &source]))?;
                // Thin snapshots are created with the activation-skip flag.
                run.run(
                    "lvchange",
                    &args(["--activate", "y", "--ignoreactivationskip", &name]),
                )?;
            } else {
                let size = format!("{}b", origin.cow_bytes);
                run.run(
                    "lvcreate",
                    &args(["--snapshot", "--name", &short, "--size", &size, &source]),
                )?;
            }
            done.push(name);
        }
        Ok(())
    }

    fn needs_mount(&self) -> bool {
        true
    }

    fn unit(&self, info: &StorageInfo) -> String {
        lv(info)
            .map(|l| format!("lvm:{}/{}", l.vg, l.lv))
            .unwrap_or_default()
    }

    fn mount(&self, run: &dyn Runner, info: &StorageInfo, label: &str, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let device = format!("/dev/{}", snapshot_name(info, label)?);
        run.run(
            "mount",
            &args([
                "-o",
                mount_options(&info.fs_type),
                &device,
                &dir.display().to_string(),
            ]),
        )?;
        Ok(())
    }

    fn read_path(&self, info: &StorageInfo, _label: &str, dir: &Path) -> PathBuf {
        dir.join(info.relative.strip_prefix("/").unwrap_or(&info.relative))
    }

    fn check_valid(&self, run: &dyn Runner, info: &StorageInfo, label: &str) -> Result<()> {
        let name = snapshot_name(info, label)?;
        let out = run.run(
            "lvs",
            &args([
                "--reportformat",
                "json",
                "-o",
                "lv_name,lv_attr,snap_percent",
                &name,
            ]),
        )?;
        let row = parse_rows(&out)?.into_iter().next().unwrap_or_default();
        let invalid = row.lv_attr.chars().nth(4) == Some('I');
        let full = row.snap_percent.trim().parse::<f64>().unwrap_or(0.0) >= 100.0;
        if invalid || full {
            bail!(
                "LVM snapshot {name} overflowed its copy-on-write area while being archived, so the archive cannot be trusted; \
                 retry when the volume is less busy, or give the snapshot more room with --snapshot-size (the volume group needs that much free)"
            );
        }
        Ok(())
    }

    fn drop_snapshot(&self, run: &dyn Runner, info: &StorageInfo, label: &str) -> Result<()> {
        let name = snapshot_name(info, label)?;
        if exists(run, &name) {
            run.run("lvremove", &args(["--yes", &name]))?;
        }
        Ok(())
    }

    fn rollback(&self, run: &dyn Runner, info: &StorageInfo, label: &str) -> Result<()> {
        let name = snapshot_name(info, label)?;
        let origin = lv(info)?;
        let origin_name = format!("{}/{}", origin.vg, origin.lv);
        let mount_point = info.mount_point.display().to_string();
        // A merge starts only once the origin is closed: unmount it,
        // merge, cycle activation, mount it again where it was.
        run.run("umount", &args([&mount_point])).with_context(|| {
            format!("cannot unmount {mount_point} for the rollback; stop whatever else uses it")
        })?;
        let merged = run
            .run("lvconvert", &args(["--merge", &name]))
            .and_then(|_| run.run("lvchange", &args(["--activate", "n", &origin_name])))
            .and_then(|_| run.run("lvchange", &args(["--activate", "y", &origin_name])));
        let remount = run.run(
            "mount",
            &args([&format!("/dev/{origin_name}"), mount_point.as_str()]),
        );
        merged?;
        remount?;
        Ok(())
    }

    fn finish_rollback(&self, run: &dyn Runner, info: &StorageInfo, _label: &str) -> Result<()> {
        // Killed with the origin unmounted (the merge goes on by itself
        // once the origin is activated): activate it and mount it again.
        let mount_point = info.mount_point.display().to_string();
        let mounted = crate::storage::mountinfo::read()?
            .iter()
            .any(|m| m.mount_point == info.mount_point);
        if mounted {
            return Ok(());
        }
        let origin = lv(info)?;
        let origin_name = format!("{}/{}", origin.vg, origin.lv);
        run.run("lvchange", &args(["--activate", "y", &origin_name]))?;
        run.run(
            "mount",
            &args([&format!("/dev/{origin_name}"), mount_point.as_str()]),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::recorder::Recorder;
    use super::*;

    fn info(thin: bool) -> StorageInfo {
        StorageInfo {
            path: "/mnt/lvm/etcd".into(),
            fs_type: "xfs".into(),
            device: "/dev/mapper/vg0-data".into(),
            mount_point: "/mnt/lvm".into(),
            relative: "/etcd".into(),
            backend: Backend::Lvm {
                vg: "vg0".into(),
                lv: "data".into(),
                thin,
                size_bytes: 4 << 30,
                vg_free_bytes: 2 << 30,
                cow_bytes: (4 << 30) / 5,
            },
            support: SnapshotSupport::Yes,
        }
    }

    #[test]
    fn classic_snapshot_mount_and_drop_commands() {
        let rec = Recorder::default();
        let i = info(false);
        Lvm.snapshot(&rec, &[&i, &i], "volsnap-X").unwrap();
        let dir = std::env::temp_dir().join("volsnap-lvm-unit");
        Lvm.mount(&rec, &i, "volsnap-X", &dir).unwrap();
        Lvm.drop_snapshot(&rec, &i, "volsnap-X").unwrap();
        let calls = rec.calls.borrow();
        assert_eq!(
            calls[0],
            format!(
                "lvcreate --snapshot --name volsnap-X-data --size {}b vg0/data",
                (4u64 << 30) / 5
            )
        );
        assert_eq!(
            calls.len(),
            4,
            "one snapshot for two volumes on one LV: {calls:?}"
        );
        assert_eq!(
            calls[1],
            format!(
                "mount -o ro,nouuid,norecovery /dev/vg0/volsnap-X-data {}",
                dir.display()
            )
        );
        assert_eq!(calls[2], "lvs --noheadings -o lv_name vg0/volsnap-X-data");
        assert_eq!(calls[3], "lvremove --yes vg0/volsnap-X-data");
        assert_eq!(Lvm.read_path(&i, "volsnap-X", &dir), dir.join("etcd"));
    }

    #[test]
    fn thin_snapshot_is_activated() {
        let rec = Recorder::default();
        Lvm.snapshot(&rec, &[&info(true)], "volsnap-Y").unwrap();
        assert_eq!(
            *rec.calls.borrow(),
            [
                "lvcreate --snapshot --name volsnap-Y-data vg0/data",
                "lvchange --activate y --ignoreactivationskip vg0/volsnap-Y-data"
            ]
        );
    }

    #[test]
    fn overflowed_snapshot_fails_loudly() {
        let rec = Recorder {
            replies: vec![(
                "lvs --reportformat json".into(),
                r#"{"report":[{"lv":[{"lv_name":"s","lv_attr":"swi-I-s---","snap_percent":"100.00"}]}]}"#.into(),
            )],
            ..Default::default()
        };
        let err = Lvm
            .check_valid(&rec, &info(false), "volsnap-Z")
            .unwrap_err()
            .to_string();
        assert!(err.contains("overflowed"), "{err}");
    }

    #[test]
    fn detect_reads_lvs_and_refuses_a_full_vg() {
        let rec = Recorder {
            replies: vec![(
                "lvs".into(),
                r#"{"report":[{"lv":[{"vg_name":"vg0","lv_name":"data","lv_attr":"-wi-ao----","pool_lv":"","lv_size":"10737418240","vg_free":"104857600"}]}]}"#.into(),
            )],
            ..Default::default()
        };
        let mut i = info(false);
        i.backend = Backend::Plain;
        detect(&rec, &mut i, None).unwrap();
        assert!(matches!(
            i.backend,
            Backend::Lvm {
                thin: false,
                size_bytes: 10737418240,
                ..
            }
        ));
        match &i.support {
            SnapshotSupport::No(why) => assert!(why.contains("vg0 has 100.0 MiB free"), "{why}"),
            SnapshotSupport::Yes => panic!("a VG with 100 MiB free cannot hold a 2 GiB COW"),
        }
    }
}
