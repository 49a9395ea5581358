//! The snapshot strategy for real: btrfs on a loop device, Docker volumes
//! bound onto its subvolumes, a writer running. Backups, pre-upgrade
//! snapshots, rollback, and cleanup after a failure.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A btrfs filesystem on a loop device, unmounted and deleted on drop.
struct BtrfsFs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl BtrfsFs {
    fn new() -> BtrfsFs {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("btrfs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        run("truncate", &["-s", "1G", img.to_str().unwrap()]);
        run("mkfs.btrfs", &["-q", img.to_str().unwrap()]);
        run(
            "mount",
            &["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()],
        );
        BtrfsFs { _dir: dir, mnt }
    }

    fn subvolume(&self, name: &str) -> PathBuf {
        let path = self.mnt.join(name);
        run("btrfs", &["subvolume", "create", path.to_str().unwrap()]);
        path
    }

    /// Subvolumes whose path mentions volsnap: snapshots left behind.
    fn volsnap_subvolumes(&self) -> Vec<String> {
        run("btrfs", &["subvolume", "list", self.mnt.to_str().unwrap()])
            .lines()
            .filter(|l| l.contains("volsnap"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for BtrfsFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn started_at(container: &str) -> chrono::DateTime<chrono::Utc> {
    let text = inspect(container, "{{.State.StartedAt}}");
    chrono::DateTime::parse_from_rfc3339(&text)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

fn mtime(path: &Path) -> chrono::DateTime<chrono::Utc> {
    std::fs::metadata(path).unwrap().modified().unwrap().into()
}

/// A stack on btrfs: an etcd-like writer and a minio-like store with a
/// fixture, each on its own subvolume through bind-type local volumes.
struct BtrfsStack {
    p: Project,
    fs: BtrfsFs,
    etcd_dir: PathBuf,
    minio_dir: PathBuf,
    etcd: String,
    minio: String,
}

fn btrfs_stack(prefix: &str) -> BtrfsStack {
    let mut p = Project::new(prefix);
    let fs = BtrfsFs::new();
    let etcd_dir = fs.subvolume("etcd");
    let minio_dir = fs.subvolume("minio");
    make_fixture(&minio_dir);
    // Enough data that archiving takes a while after the services resumed.
    let chunk: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    for i in 0..4 {
        std::fs::write(minio_dir.join(format!("object-{i}.bin")), &chunk).unwrap();
    }
    let dev_etcd = format!("device={}", etcd_dir.display());
    let dev_minio = format!("device={}", minio_dir.display());
    let etcd_vol = p.volume("etcd", &["type=none", "o=bind", &dev_etcd]);
    let minio_vol = p.volume("minio", &["type=none", "o=bind", &dev_minio]);
    let m1 = format!("{etcd_vol}:/data");
    let etcd = p.service(
        "etcd",
        &[],
        &["-v", &m1],
        &["record-writer", "/data/records.log", "0.005"],
    );
    let m2 = format!("{minio_vol}:/data");
    let minio = p.service("minio", &["etcd"], &["-v", &m2], &["idle"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    BtrfsStack {
        p,
        fs,
        etcd_dir,
        minio_dir,
        etcd,
        minio,
    }
}

#[test]
fn snapshot_backup_resumes_services_before_archiving_and_leaves_nothing() {
    let mut s = btrfs_stack("snap");
    let repo = s.p.tempdir();
    let repo_s = repo.to_str().unwrap().to_string();
    let name = s.p.name.clone();

    let plan = json(&ok(volsnap(&["plan", "--project", &name, "--json"])));
    assert_eq!(
        plan["strategy"], "snapshot",
        "auto picks snapshot on btrfs: {}",
        plan["reason"]
    );
    for v in plan["volumes"].as_array().unwrap() {
        assert_eq!(v["storage"]["backend"]["kind"], "btrfs", "{v}");
    }
    let names: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let snap = names.iter().position(|n| *n == "snapshot").unwrap();
    let first_archive = names.iter().position(|n| *n == "archive").unwrap();
    let last_start = names.iter().rposition(|n| *n == "start").unwrap();
    assert!(
        last_start > snap && last_start < first_archive,
        "resume comes before archiving: {names:?}"
    );

    let report = json(&ok(volsnap(&[
        "backup",
        "--project",
        &name,
        "--repo",
        &repo_s,
        "--json",
    ])));
    assert_eq!(report["strategy"], "snapshot");
    assert_eq!(report["consistency"], "consistent");
    let dir = PathBuf::from(report["path"].as_str().unwrap());
    // Both services were started again before the big archive was written
    // (ordering, not timing; the small one is finished within a clock tick).
    let big = report["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|v| v["bytes"].as_u64().unwrap())
        .unwrap();
    let file = dir.join(big["archive"].as_str().unwrap());
    for c in [&s.etcd, &s.minio] {
        assert!(is_running(c));
        assert!(
            started_at(c) < mtime(&file),
            "{c} resumed before {} was written",
            file.display()
        );
    }
    assert!(
        s.fs.volsnap_subvolumes().is_empty(),
        "snapshots dropped: {:?}",
        s.fs.volsnap_subvolumes()
    );
    assert!(!s.fs.mnt.join(".volsnap-snapshots").exists());
    ok(volsnap(&["verify", "--repo", &repo_s, "latest", "--deep"]));

    // Restore into new volumes: the fixture is identical, the log clean.
    let id = report["id"].as_str().unwrap();
    let (new_minio, new_etcd) = (format!("{name}_minio_r"), format!("{name}_etcd_r"));
    s.p.adopt_volume(&new_minio);
    s.p.adopt_volume(&new_etcd);
    let (m1, m2) = (
        format!("{name}_minio={new_minio}"),
        format!("{name}_etcd={new_etcd}"),
    );
    ok(volsnap(&[
        "restore", "--repo", &repo_s, id, "--volume", &m1, "--volume", &m2,
    ]));
    assert_same_tree(&s.minio_dir, &volume_path(&new_minio));
    let count = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &format!("{new_etcd}:/d"),
        IMAGE,
        "record-check",
        "/d/records.log",
    ]);
    assert!(count.parse::<u64>().unwrap() > 0);

    // Pause instead of stop: the containers are never restarted.
    let before = started_at(&s.etcd);
    let report = json(&ok(volsnap(&[
        "backup",
        "--project",
        &name,
        "--repo",
        &repo_s,
        "--quiesce",
        "pause",
        "--json",
    ])));
    assert_eq!(report["consistency"], "consistent");
    assert_eq!(started_at(&s.etcd), before, "pause does not restart");
    assert_eq!(inspect(&s.etcd, "{{.State.Paused}}"), "false");
    assert!(s.fs.volsnap_subvolumes().is_empty());
    let _ = &s.etcd_dir;
}

#[test]
fn pre_upgrade_snapshot_and_rollback_round_trip() {
    let s = btrfs_stack("rollback");
    let state = tempfile::tempdir().unwrap();
    let st = state.path().to_str().unwrap();
    let name = s.p.name.clone();

    let out = ok(volsnap(&[
        "snapshot",
        "--project",
        &name,
        "--name",
        "before-upgrade",
        "--state-dir",
        st,
    ]));
    assert!(out.contains("volsnap rollback before-upgrade"), "{out}");
    assert!(ok(volsnap(&["snapshots", "list", "--state-dir", st])).contains("before-upgrade"));
    assert_eq!(
        s.fs.volsnap_subvolumes().len(),
        2,
        "one kept snapshot per volume"
    );
    assert!(is_running(&s.etcd) && is_running(&s.minio));
    let out = volsnap(&[
        "snapshot",
        "--project",
        &name,
        "--name",
        "before-upgrade",
        "--state-dir",
        st,
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "names are unique: {}",
        stderr(&out)
    );

    // The "upgrade" damages both volumes.
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::write(s.minio_dir.join("upgrade-garbage"), b"v2 format").unwrap();
    std::fs::remove_file(s.minio_dir.join("blob.bin")).unwrap();
    docker(&[
        "exec",
        &s.etcd,
        "sh",
        "-c",
        "echo 'torn rec' >> /data/records.log",
    ]);

    ok(volsnap(&["rollback", "before-upgrade", "--state-dir", st]));
    assert!(
        is_running(&s.etcd) && is_running(&s.minio),
        "services run after the rollback"
    );
    assert!(!s.minio_dir.join("upgrade-garbage").exists());
    assert!(s.minio_dir.join("blob.bin").exists());
    // The writer resumed on the rolled-back log: it must still be clean.
    docker(&["stop", &s.etcd]);
    let check = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &format!("{}:/d", s.etcd_dir.display()),
            IMAGE,
            "record-check",
            "/d/records.log",
        ])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "clean log after rollback: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    ok(volsnap(&[
        "snapshots",
        "drop",
        "before-upgrade",
        "--state-dir",
        st,
    ]));
    assert!(
        s.fs.volsnap_subvolumes().is_empty(),
        "{:?}",
        s.fs.volsnap_subvolumes()
    );
    assert!(ok(volsnap(&["snapshots", "list", "--state-dir", st])).contains("no kept snapshots"));
    let out = volsnap(&["rollback", "before-upgrade", "--state-dir", st]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn rollback_refuses_a_volume_that_is_not_its_own_subvolume() {
    let mut p = Project::new("nosub");
    let fs = BtrfsFs::new();
    let parent = fs.subvolume("shared");
    let inner = parent.join("app-data");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(inner.join("f"), b"x").unwrap();
    let dev = format!("device={}", inner.display());
    let vol = p.volume("data", &["type=none", "o=bind", &dev]);
    let m = format!("{vol}:/data");
    let app = p.service("app", &[], &["-v", &m], &["idle"]);
    let state = tempfile::tempdir().unwrap();
    let st = state.path().to_str().unwrap();
    ok(volsnap(&[
        "snapshot",
        "--project",
        &p.name,
        "--name",
        "s1",
        "--state-dir",
        st,
    ]));
    let started = inspect(&app, "{{.State.StartedAt}}");
    let out = volsnap(&["rollback", "s1", "--state-dir", st]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a subvolume of its own"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        inspect(&app, "{{.State.StartedAt}}"),
        started,
        "refused before stopping anything"
    );
    ok(volsnap(&["snapshots", "drop", "s1", "--state-dir", st]));
    assert!(fs.volsnap_subvolumes().is_empty());
}

#[test]
fn failed_snapshot_backup_drops_snapshots_and_restarts_services() {
    let mut s = btrfs_stack("enospc");
    // A repository far too small for the archives: ENOSPC mid-archive.
    let repo = s.p.tempdir();
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=2m",
            "tmpfs",
            repo.to_str().unwrap(),
        ],
    );
    let out = volsnap(&backup_args(
        &s.p.name,
        &repo,
        &["--compression", "none", "--skip-space-check"],
    ));
    let leftovers: Vec<_> = std::fs::read_dir(&repo)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let _ = Command::new("umount").arg(&repo).status();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("No space left"), "{}", stderr(&out));
    assert!(
        leftovers.is_empty(),
        "partial backup removed: {leftovers:?}"
    );
    assert!(
        s.fs.volsnap_subvolumes().is_empty(),
        "snapshots dropped: {:?}",
        s.fs.volsnap_subvolumes()
    );
    assert!(
        is_running(&s.etcd) && is_running(&s.minio),
        "services running after the failure"
    );
    let _ = &mut s;
}
