//! The snapshot strategy for real: btrfs on a loop device, Docker volumes
//! bound onto its subvolumes, a writer running. Backups, pre-upgrade
//! snapshots, rollback, and cleanup after a failure.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    let repo = s.p.tar_repo();
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

    // ... and minio now runs a newer image tag (the same files, a label
    // more), recreated as compose would.
    let upgraded = format!("{IMAGE}-{name}");
    derived_image(IMAGE, &upgraded);
    let minio_mount = format!(
        "{}:/data",
        inspect(&s.minio, "{{range .Mounts}}{{.Name}}{{end}}")
    );
    docker(&["rm", "-f", &s.minio]);
    let mut p = s.p;
    let minio = p.service_of(
        &upgraded,
        "none",
        "minio",
        &["etcd"],
        &["-v", &minio_mount],
        &["idle"],
    );

    // The rollback says the snapshot was taken with another image, and
    // which, before it stops anything.
    let out = volsnap(&["rollback", "before-upgrade", "--state-dir", st]);
    let _ = Command::new("docker")
        .args(["rmi", "-f", &upgraded])
        .output();
    ok(out.clone());
    assert!(
        stderr(&out).contains(&format!("runs image {upgraded}"))
            && stderr(&out).contains(&format!("snapshot before-upgrade was taken with {IMAGE}")),
        "{}",
        stderr(&out)
    );
    assert!(
        is_running(&s.etcd) && is_running(&minio),
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
    init_tar(&repo);
    let out = volsnap(&backup_args(
        &s.p.name,
        &repo,
        &["--compression", "none", "--skip-space-check"],
    ));
    let leftovers = entries_besides_marker(&repo);
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

#[test]
fn a_nested_subvolume_is_never_a_silent_gap_in_a_consistent_backup() {
    let mut p = Project::new("nested");
    let fs = BtrfsFs::new();
    let dir = fs.subvolume("data");
    std::fs::write(dir.join("top.txt"), b"in the volume's own subvolume").unwrap();
    // A subvolume inside the volume, with data: a btrfs snapshot of the
    // volume shows it as an empty directory.
    run(
        "btrfs",
        &["subvolume", "create", dir.join("inner").to_str().unwrap()],
    );
    std::fs::write(
        dir.join("inner/precious.db"),
        b"data in the nested subvolume",
    )
    .unwrap();
    let device = format!("device={}", dir.display());
    let vol = p.volume("data", &["type=none", "o=bind", &device]);
    let m = format!("{vol}:/data");
    let app = p.service("app", &[], &["-v", &m], &["idle"]);
    wait_until("app to run", 30, || is_running(&app));
    let repo = p.tar_repo();
    for strategy in ["snapshot", "cold"] {
        let report = json(&ok(volsnap(&backup_args(
            &p.name,
            &repo,
            &["--strategy", strategy, "--json"],
        ))));
        assert_eq!(report["consistency"], "best-effort", "{strategy}: {report}");
        let id = report["id"].as_str().unwrap();
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(repo.join(id).join("manifest.json")).unwrap())
                .unwrap();
        let left_out = manifest["volumes"][0]["left_out"].to_string();
        assert!(left_out.contains("inner"), "{strategy}: {manifest}");
        assert!(
            manifest["notes"].to_string().contains("inner"),
            "{strategy}: the operator is told: {}",
            manifest["notes"]
        );
    }
    assert!(is_running(&app));
    assert!(fs.volsnap_subvolumes().is_empty(), "no snapshot left");
}

#[test]
fn a_rollback_killed_with_the_subvolume_moved_aside_is_put_right_by_recover() {
    use std::os::unix::process::ExitStatusExt;
    let s = btrfs_stack("rbkill");
    let state = tempfile::tempdir().unwrap();
    let st = state.path().to_str().unwrap();
    let name = s.p.name.clone();
    ok(volsnap(&[
        "snapshot",
        "--project",
        &name,
        "--name",
        "pre",
        "--state-dir",
        st,
    ]));
    std::fs::write(
        s.minio_dir.join("after-snapshot"),
        b"kept if not rolled back",
    )
    .unwrap();
    // Killed after the live subvolume was moved aside, before the
    // rolled-back copy took its place: the volume's path is empty.
    let out = volsnap_env(
        &["rollback", "pre", "--state-dir", st],
        &[("VOLSNAP_FAULT_KILL_AT", "btrfs-rollback-moved-aside")],
    );
    assert_eq!(out.status.signal(), Some(9), "{}", stderr(&out));
    assert!(
        !s.etcd_dir.exists() || !s.minio_dir.exists(),
        "the kill left a subvolume moved aside"
    );
    let report = ok(volsnap(&["recover", "--state-dir", st]));
    assert!(report.contains("rollback"), "{report}");
    // Put back as it was before the rollback (which can then be retried).
    assert!(s.etcd_dir.join("records.log").exists());
    assert!(s.minio_dir.join("after-snapshot").exists());
    assert!(
        is_running(&s.etcd) && is_running(&s.minio),
        "recover started them"
    );
    ok(volsnap(&["rollback", "pre", "--state-dir", st]));
    assert!(
        !s.minio_dir.join("after-snapshot").exists(),
        "rolled back now"
    );
    ok(volsnap(&["snapshots", "drop", "pre", "--state-dir", st]));
}

/// Format 2 from btrfs snapshots: the parent rule holds on snapshot mounts
/// (inodes and change times survive a snapshot, the device number does not
/// count), so the second backup reads no unchanged file again; the backup
/// verifies whole and restores byte for byte.
#[test]
fn format_2_backups_from_btrfs_snapshots_skip_unchanged_files_and_restore() {
    let mut s = btrfs_stack("snapv2");
    let repo = s.p.tempdir(); // empty: the first backup makes it format 2
    let repo_s = repo.to_str().unwrap().to_string();
    let name = s.p.name.clone();
    let backup = |verbose: bool| {
        let mut args = vec![];
        if verbose {
            args.push("-v");
        }
        args.extend([
            "backup",
            "--project",
            &name,
            "--repo",
            &repo_s,
            "--strategy",
            "snapshot",
            "--json",
        ]);
        let out = volsnap(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        (json(&stdout(&out)), stderr(&out))
    };
    let (first, _) = backup(false);
    assert_eq!(first["consistency"], "consistent");
    assert!(repo.join("config").is_file(), "format 2");
    let (second, log) = backup(true);
    assert_eq!(second["consistency"], "consistent");
    let minio_vol = format!("{name}_minio");
    assert!(
        log.lines().any(|l| l.contains(&minio_vol)
            && l.contains("unchanged since this host's last backup: not read again")),
        "the unchanged files of {minio_vol} were read again: {log}"
    );
    assert!(s.fs.volsnap_subvolumes().is_empty());
    verify_all_packs(&repo);
    let id = second["id"].as_str().unwrap();
    verify_deep(&repo, id);
    let new_minio = format!("{name}_minio_r2");
    s.p.adopt_volume(&new_minio);
    let mapping = format!("{minio_vol}={new_minio}");
    ok(volsnap(&[
        "restore", "--repo", &repo_s, id, "--volume", &mapping,
    ]));
    assert_same_tree(&s.minio_dir, &volume_path(&new_minio));
}
