//! The core round trip against a real Docker daemon: a compose-style stack,
//! cold and online backups, verify, GNU tar, sha256sum, restore.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn time_of(container: &str, field: &str) -> chrono::DateTime<chrono::Utc> {
    let text = inspect(container, &format!("{{{{.State.{field}}}}}"));
    chrono::DateTime::parse_from_rfc3339(&text)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

#[test]
fn cold_backup_restores_byte_identical_and_verifies() {
    let mut p = Project::new("cold");
    let repo = p.tar_repo();
    // etcd-like: a writer of checksummed records on a named volume.
    let etcd_vol = p.volume("etcd", &[]);
    // minio-like: a local volume bound onto a host directory (driver_opts).
    let bind_dir = p.tempdir();
    let device = format!("device={}", bind_dir.display());
    let minio_vol = p.volume("minio", &["type=none", "o=bind", device.as_str()]);
    make_fixture(&bind_dir);
    let etcd_mount = format!("{etcd_vol}:/data");
    let etcd = p.service(
        "etcd",
        &[],
        &["-v", &etcd_mount],
        &["record-writer", "/data/records.log", "0.005"],
    );
    let minio_mount = format!("{minio_vol}:/data");
    let minio = p.service(
        "minio",
        &[],
        &[
            "-v",
            &minio_mount,
            "--tmpfs",
            "/scratch",
            "-e",
            "MINIO_ROOT_PASSWORD=do-not-leak-8f3a",
        ],
        &["idle"],
    );
    // milvus-like: depends on both, shares etcd's volume read-only.
    let shared = format!("{etcd_vol}:/etcd:ro");
    let milvus = p.service("milvus", &["etcd", "minio"], &["-v", &shared], &["idle"]);
    std::thread::sleep(std::time::Duration::from_millis(800));
    let started_before: Vec<_> = [&etcd, &minio, &milvus]
        .iter()
        .map(|c| time_of(c, "StartedAt"))
        .collect();

    let plan = json(&ok(volsnap(&[
        "plan",
        "--project",
        &p.name,
        "--strategy",
        "cold",
        "--json",
    ])));
    let steps: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps.first(), Some(&"prepare"));
    assert_eq!(steps.last(), Some(&"commit"));
    let stopped: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == "stop")
        .map(|s| s["action"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(stopped.len(), 3, "{plan}");
    assert_eq!(stopped[0], milvus, "the dependent stops first: {stopped:?}");
    let repo_s = repo.to_str().unwrap();
    let before = chrono::Utc::now();
    let report = json(&ok(volsnap(&[
        "backup",
        "--project",
        &p.name,
        "--repo",
        repo_s,
        "--strategy",
        "cold",
        "--json",
    ])));
    let after = chrono::Utc::now();
    assert_eq!(report["strategy"], "cold");
    assert_eq!(report["consistency"], "consistent");
    assert!(report["downtime_ms"].as_u64().unwrap() > 0);
    let volumes = report["volumes"].as_array().unwrap();
    let names: Vec<&str> = volumes
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "the shared etcd volume is backed up once, tmpfs never: {names:?}"
    );
    assert!(names.contains(&etcd_vol.as_str()) && names.contains(&minio_vol.as_str()));
    for v in volumes {
        assert_eq!(
            v["changed_during_read"].as_array().unwrap().len(),
            0,
            "cold: nothing changes while read"
        );
        assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    }
    assert!(
        report["notes"].to_string().contains("tmpfs"),
        "{}",
        report["notes"]
    );

    // Every container was stopped during the backup (dependents first) and
    // runs again (dependencies first).
    for (i, c) in [&etcd, &minio, &milvus].iter().enumerate() {
        assert!(is_running(c), "{c} runs again after the backup");
        let finished = time_of(c, "FinishedAt");
        let started = time_of(c, "StartedAt");
        assert!(
            finished > before && finished < after,
            "{c} was stopped during the backup"
        );
        assert!(
            started > started_before[i] && started < after,
            "{c} was started again"
        );
    }
    assert!(
        time_of(&milvus, "FinishedAt") <= time_of(&etcd, "FinishedAt"),
        "milvus stops before etcd"
    );
    assert!(
        time_of(&etcd, "StartedAt") <= time_of(&milvus, "StartedAt"),
        "etcd starts before milvus"
    );

    let id = report["id"].as_str().unwrap().to_string();
    let dir = repo.join(&id);
    // Standard tools accept the backup.
    let sums = Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        sums.status.success(),
        "sha256sum -c: {}",
        String::from_utf8_lossy(&sums.stdout)
    );
    let minio_archive = volumes
        .iter()
        .find(|v| v["name"] == minio_vol.as_str())
        .unwrap()["archive"]
        .as_str()
        .unwrap()
        .to_string();
    let gnu = p.tempdir();
    let tar = Command::new("tar")
        .args([
            "--zstd",
            "--xattrs",
            "--xattrs-include=user.*",
            "--same-owner",
            "-xpf",
        ])
        .arg(dir.join(&minio_archive))
        .arg("-C")
        .arg(&gnu)
        .output()
        .unwrap();
    assert!(
        tar.status.success(),
        "GNU tar: {}",
        String::from_utf8_lossy(&tar.stderr)
    );
    assert_same_tree(&bind_dir, &gnu);
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    assert!(
        !manifest.contains("do-not-leak") && !report.to_string().contains("do-not-leak"),
        "container environments stay out of manifests and reports"
    );
    for entry in std::fs::read_dir(&dir).unwrap() {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &entry.unwrap().metadata().unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "backup files are private");
    }
    assert!(ok(volsnap(&["verify", "--repo", repo_s, &id, "--deep"])).contains("intact"));
    assert!(ok(volsnap(&["list", "--repo", repo_s])).contains(&id));

    // Restore into new volumes: identical content and a clean record log.
    let new_minio = format!("{}_minio_restored", p.name);
    let new_etcd = format!("{}_etcd_restored", p.name);
    p.adopt_volume(&new_minio);
    p.adopt_volume(&new_etcd);
    let map1 = format!("{minio_vol}={new_minio}");
    let map2 = format!("{etcd_vol}={new_etcd}");
    ok(volsnap(&[
        "restore", "--repo", repo_s, &id, "--volume", &map1, "--volume", &map2,
    ]));
    assert_same_tree(&bind_dir, &volume_path(&new_minio));
    let restored_sparse = volume_path(&new_minio).join("sparse.img");
    assert!(
        allocated_bytes(&restored_sparse) < 1 << 20,
        "sparse file restored sparse"
    );
    let check = docker(&[
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
    assert!(
        check.parse::<u64>().unwrap() > 0,
        "records restored: {check}"
    );

    // A flipped byte is caught by verify, and restore refuses the backup.
    let archive_path = dir.join(&minio_archive);
    let mut bytes = std::fs::read(&archive_path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&archive_path, &bytes).unwrap();
    let out = volsnap(&["verify", "--repo", repo_s, &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&minio_archive), "{}", stderr(&out));
    let target = p.tempdir();
    let out = volsnap(&[
        "restore",
        "--repo",
        repo_s,
        &id,
        "--target-dir",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "a refused restore writes nothing"
    );
}

#[test]
fn online_backup_lists_files_changed_while_read() {
    let mut p = Project::new("online");
    let repo = p.tar_repo();
    let vol = p.volume("data", &[]);
    let path = volume_path(&vol);
    // A large file that a busy writer keeps appending to, and a quiet one.
    std::fs::write(path.join("quiet.txt"), b"still").unwrap();
    let big: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(path.join("busy.log"), &big).unwrap();
    drop(big);
    let mount = format!("{vol}:/data");
    let writer = p.service(
        "writer",
        &[],
        &["-v", &mount],
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while :; do echo appended >> /data/busy.log; done",
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let started = inspect(&writer, "{{.State.StartedAt}}");
    let report = json(&ok(volsnap(&backup_args(
        &p.name,
        &repo,
        &["--strategy", "online", "--json"],
    ))));
    assert_eq!(report["strategy"], "online");
    assert_eq!(report["consistency"], "best-effort");
    assert_eq!(report["downtime_ms"], 0);
    let changed = report["volumes"][0]["changed_during_read"]
        .as_array()
        .unwrap();
    assert!(
        changed.iter().any(|c| c == "busy.log"),
        "busy.log changed while read: {changed:?}"
    );
    assert!(!changed.iter().any(|c| c == "quiet.txt"));
    assert!(is_running(&writer));
    assert_eq!(
        inspect(&writer, "{{.State.StartedAt}}"),
        started,
        "online never restarts anything"
    );
    // The archive is still a valid backup of what was read.
    let id = report["id"].as_str().unwrap();
    verify_deep(&repo, id);
}

#[test]
fn restore_in_place_refuses_while_in_use_and_force_restarts() {
    let mut p = Project::new("inplace");
    let repo = p.tar_repo();
    let repo_s = repo.to_str().unwrap();
    let vol = p.volume("data", &[]);
    let path = volume_path(&vol);
    make_fixture(&path);
    let mount = format!("{vol}:/data");
    let app = p.service("app", &[], &["-v", &mount], &["idle"]);
    let report = json(&ok(volsnap(&[
        "backup",
        "--project",
        &p.name,
        "--repo",
        repo_s,
        "--json",
    ])));
    let id = report["id"].as_str().unwrap();
    assert_eq!(
        report["strategy"], "cold",
        "auto picks cold on plain storage"
    );

    // "Upgrade damage" after the backup.
    std::fs::write(path.join("dir/file.txt"), b"damaged").unwrap();
    std::fs::write(path.join("new-file"), b"added later").unwrap();
    let out = volsnap(&["restore", "--repo", repo_s, id]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("in use") && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(path.join("dir/file.txt")).unwrap(),
        b"damaged",
        "refusal changes nothing"
    );
    assert!(is_running(&app));
    let journals: Vec<_> = std::fs::read_dir(state_dir().join("journal"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !journals
            .iter()
            .any(|n| n.to_string_lossy().starts_with(&format!("restore-{id}"))),
        "a refused restore leaves no journal behind: {journals:?}"
    );

    // With the stack stopped, the data is still data: a plain restore (id
    // defaulting to latest) replaces nothing without --force.
    docker(&["stop", "-t", "1", &app]);
    let out = volsnap(&["restore", "--repo", repo_s]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("would replace the data in volume {vol}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(path.join("dir/file.txt")).unwrap(),
        b"damaged",
        "refusal changes nothing"
    );
    docker(&["start", &app]);
    wait_until("the app to run again", 30, || is_running(&app));

    ok(volsnap(&["restore", "--repo", repo_s, id, "--force"]));
    assert!(is_running(&app), "--force starts the container again");
    assert_eq!(
        std::fs::read(path.join("dir/file.txt")).unwrap(),
        b"hello volsnap\n"
    );
    assert!(!path.join("new-file").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".volsnap"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no staging left behind: {leftovers:?}"
    );
    assert!(Path::new(&path).join("blob.bin").exists());
}
