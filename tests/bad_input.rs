//! Bad input gets one clear line, the right exit status, and changes nothing.

mod common;

use common::*;

fn assert_empty(dir: &std::path::Path) {
    let names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names.is_empty(),
        "{} should be untouched, holds {names:?}",
        dir.display()
    );
}

#[test]
fn selection_errors() {
    let mut p = Project::new("bad");
    let repo = p.tempdir();
    let repo_s = repo.to_str().unwrap();
    let vol = p.volume("data", &[]);
    let mount = format!("{vol}:/data");
    let app = p.service("app", &[], &["-v", &mount], &["idle"]);

    let out = volsnap(&[
        "backup",
        "--project",
        "no-such-project-xyz",
        "--repo",
        repo_s,
    ]);
    assert_fails(&out, 2, "no container belongs to compose project");
    let out = volsnap(&[
        "backup",
        "--container",
        "no-such-container-xyz",
        "--repo",
        repo_s,
    ]);
    assert_fails(&out, 2, "no container named");
    let out = volsnap(&["plan", "--label", "volsnap.test.nothing=here"]);
    assert_fails(&out, 2, "no container has the label");
    let out = volsnap(&["plan", "--label", "novalue"]);
    assert_fails(&out, 2, "KEY=VALUE");
    let out = volsnap(&["backup", "--repo", repo_s]);
    assert_fails(&out, 2, "--project");
    let out = volsnap(&["plan", "--project", &p.name, "--container", &app]);
    assert_fails(&out, 2, "cannot be used with");
    let out = volsnap(&[
        "backup",
        "--project",
        &p.name,
        "--repo",
        repo_s,
        "--level",
        "42",
    ]);
    assert_fails(&out, 2, "out of range");
    let out = volsnap(&[
        "backup",
        "--project",
        &p.name,
        "--repo",
        repo_s,
        "--strategy",
        "snapshot",
    ]);
    assert_fails(&out, 2, "needs every volume on LVM, ZFS or btrfs");
    let out = volsnap(&[
        "backup",
        "--project",
        &p.name,
        "--repo",
        repo_s,
        "--max-downtime",
        "0",
        "--require-consistent",
    ]);
    assert_fails(&out, 2, "--max-downtime");
    assert_empty(&repo);
    assert!(is_running(&app), "nothing was stopped");
    assert!(
        inspect(&app, "{{.State.FinishedAt}}").starts_with("0001-"),
        "never stopped"
    );
}

#[test]
fn max_downtime_falls_back_to_online() {
    let mut p = Project::new("budget");
    let vol = p.volume("data", &[]);
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    let out = ok(volsnap(&[
        "plan",
        "--project",
        &p.name,
        "--max-downtime",
        "0",
        "--json",
    ]));
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["strategy"], "online", "{plan}");
    assert!(plan["reason"].as_str().unwrap().contains("budget"));
    let out = ok(volsnap(&[
        "plan",
        "--project",
        &p.name,
        "--max-downtime",
        "3600",
        "--json",
    ]));
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["strategy"], "cold");
}

#[test]
fn docker_unreachable_says_how_to_point_at_it() {
    let repo = tempfile::tempdir().unwrap();
    let out = volsnap_env(
        &[
            "backup",
            "--project",
            "x",
            "--repo",
            repo.path().to_str().unwrap(),
        ],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    assert_fails(&out, 1, "DOCKER_HOST");
    assert!(stderr(&out).contains("cannot reach the Docker daemon"));
    assert_empty(repo.path());
}

#[test]
fn repository_errors() {
    let scratch = tempfile::tempdir().unwrap();
    let missing = scratch.path().join("missing");
    let out = volsnap(&["list", "--repo", missing.to_str().unwrap()]);
    assert_fails(&out, 2, "does not exist");
    assert!(
        !missing.exists(),
        "a missing repository is not created behind the user's back"
    );
    let file = scratch.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let out = volsnap(&["list", "--repo", file.to_str().unwrap()]);
    assert_fails(&out, 2, "not a directory");

    let empty = scratch.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = volsnap(&[
        "verify",
        "--repo",
        empty.to_str().unwrap(),
        "20990101T000000Z-ffff",
    ]);
    assert_fails(&out, 2, "no backup 20990101T000000Z-ffff");
    let out = volsnap(&[
        "restore",
        "--repo",
        empty.to_str().unwrap(),
        "latest",
        "--target-dir",
        "/tmp/x",
    ]);
    assert_fails(&out, 2, "holds no backup yet");
    let out = volsnap(&["verify", "--repo", empty.to_str().unwrap(), "../etc"]);
    assert_fails(&out, 2, "not a backup id");
    // VOLSNAP_REPO stands in for --repo.
    let out = volsnap_env(&["list"], &[("VOLSNAP_REPO", empty.to_str().unwrap())]);
    assert!(stdout(&out).contains("no backups"), "{}", stdout(&out));
}

#[test]
fn read_only_repository_is_refused_before_anything_stops() {
    let mut p = Project::new("ro");
    let vol = p.volume("data", &[]);
    let mount = format!("{vol}:/data");
    let app = p.service("app", &[], &["-v", &mount], &["idle"]);
    let repo = p.tempdir();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&repo)
        .status()
        .unwrap();
    assert!(status.success(), "mounting a read-only tmpfs needs root");
    let out = volsnap(&backup_args(&p.name, &repo, &[]));
    let _ = std::process::Command::new("umount").arg(&repo).status();
    assert_fails(&out, 1, "not writable");
    assert!(is_running(&app));
    assert!(
        inspect(&app, "{{.State.FinishedAt}}").starts_with("0001-"),
        "never stopped"
    );
}

#[test]
fn restore_mapping_errors() {
    let mut p = Project::new("map");
    let repo = p.tempdir();
    let repo_s = repo.to_str().unwrap();
    let vol = p.volume("data", &[]);
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    ok(volsnap(&[
        "backup",
        "--project",
        &p.name,
        "--repo",
        repo_s,
        "--strategy",
        "online",
    ]));
    let out = volsnap(&["restore", "--repo", repo_s, "--volume", "nope=new"]);
    assert_fails(&out, 2, "has no volume \"nope\"");
    let bad = format!("{vol}=bad/name");
    let out = volsnap(&["restore", "--repo", repo_s, "--volume", &bad]);
    assert_fails(&out, 2, "not a valid Docker volume name");
    let out = volsnap(&["restore", "--repo", repo_s, "--volume", "missing-volume"]);
    assert_fails(&out, 2, "has no volume \"missing-volume\"");
    let out = volsnap(&["restore", "--repo", repo_s, "--volume", "=new"]);
    assert_fails(&out, 2, "OLD=NEW or NAME");
}

#[test]
fn huge_timeouts_saturate_instead_of_panicking() {
    let mut p = Project::new("huge");
    let vol = p.volume("data", &[]);
    std::fs::write(volume_path(&vol).join("f"), b"x").unwrap();
    let m = format!("{vol}:/data");
    let app = p.service("app", &[], &["-v", &m], &["idle"]);
    wait_until("app to run", 30, || is_running(&app));
    let repo = p.tempdir();
    let max64 = u64::MAX.to_string();
    let max32 = u32::MAX.to_string();
    // A retry window and timeouts as large as their types hold: the run
    // proceeds (the services stop promptly, so nothing waits that long).
    let out = volsnap_env(
        &backup_args(
            &p.name,
            &repo,
            &[
                "--strategy",
                "cold",
                "--stop-timeout",
                &max32,
                "--ready-timeout",
                &max32,
            ],
        ),
        &[("VOLSNAP_DOCKER_RETRY_SECS", &max64)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(is_running(&app));
    // One past what the type holds is bad usage, said plainly.
    let out = volsnap(&backup_args(
        &p.name,
        &repo,
        &["--stop-timeout", "4294967296"],
    ));
    assert_fails(&out, 2, "--stop-timeout");
}
