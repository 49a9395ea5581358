//! Faults: volsnap killed with SIGKILL before every step of cold, online and
//! snapshot runs, interrupted by SIGTERM, racing another run, running out of
//! space. After each, the stack runs, the source data is byte-identical, and
//! nothing is left behind: no partial backup, snapshot, mount or journal.
//!
//! Needs the `fault-injection` feature (scripts/test.sh enables it).

mod common;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn plan_len(project: &str, strategy: &str, extra: &[&str]) -> usize {
    let mut args = vec![
        "plan",
        "--project",
        project,
        "--strategy",
        strategy,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = ok(volsnap(&args));
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    plan["steps"].as_array().unwrap().len()
}

/// Nothing of a killed run may remain once recovered.
fn assert_clean(repo: &Path, containers: &[&str], sources: &[(&Path, &Path)]) {
    for c in containers {
        assert!(is_running(c), "{c} runs again");
        assert_eq!(
            inspect(c, "{{.State.Paused}}"),
            "false",
            "{c} is not left paused"
        );
    }
    let partial: Vec<_> = std::fs::read_dir(repo)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(partial.is_empty(), "no partial backup: {partial:?}");
    let journals = state_dir().join("journal");
    if journals.exists() {
        assert_eq!(
            std::fs::read_dir(&journals).unwrap().count(),
            0,
            "journal replayed and removed"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("/run/volsnap/"), "no snapshot mount left");
    for (source, pristine) in sources {
        assert_same_tree(pristine, source);
    }
}

/// A 4 MiB filesystem at `dir`: a repository that fills up.
fn mount_tiny_tmpfs(dir: &Path) {
    sh(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=4m",
            "tmpfs",
            dir.to_str().unwrap(),
        ],
    );
}

/// A copy of a fixture to compare the source against after each fault.
fn pristine_copy(p: &mut Project, source: &Path) -> PathBuf {
    let copy = p.tempdir().join("pristine");
    sh(
        "cp",
        &["-a", source.to_str().unwrap(), copy.to_str().unwrap()],
    );
    copy
}

/// Incompressible bytes, so compressing them takes real time.
fn noise(len: usize) -> Vec<u8> {
    pseudo_random(len, 0x2545F4914F6CDD1D)
}

fn kill_before_every_step(
    p: &Project,
    strategy: &str,
    extra: &[&str],
    repo: &Path,
    check: &dyn Fn(),
) {
    let steps = plan_len(&p.name, strategy, extra);
    assert!(steps >= 3);
    for step in 1..=steps {
        let k = step.to_string();
        let mut args = vec![
            "backup",
            "--project",
            &p.name,
            "--repo",
            repo.to_str().unwrap(),
            "--strategy",
            strategy,
        ];
        args.extend_from_slice(extra);
        let out = volsnap_env(&args, &[("VOLSNAP_FAULT_KILL_BEFORE_STEP", &k)]);
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{strategy}: killed before step {step}: {}",
            stderr(&out)
        );
        ok(volsnap(&["recover"]));
        check();
    }
    // The next run after recovery works normally.
    let mut args = vec![
        "backup",
        "--project",
        &p.name,
        "--repo",
        repo.to_str().unwrap(),
        "--strategy",
        strategy,
    ];
    args.extend_from_slice(extra);
    ok(volsnap(&args));
}

#[test]
fn sigkill_at_every_step_of_cold_and_online_runs_is_recovered() {
    let mut p = Project::new("kill");
    let repo = p.tar_repo();
    let vol = p.volume("data", &[]);
    let path = volume_path(&vol);
    make_fixture(&path);
    let pristine = pristine_copy(&mut p, &path);
    let m = format!("{vol}:/data:ro");
    let db = p.service("db", &[], &["-v", &m], &["idle"]);
    let app = p.service("app", &["db"], &["-v", &m], &["idle"]);
    let check = || assert_clean(&repo, &[&db, &app], &[(&path, &pristine)]);
    kill_before_every_step(&p, "cold", &[], &repo, &check);
    kill_before_every_step(&p, "online", &[], &repo, &check);
    // And what a killed run left is also repaired by the next run itself.
    let out = volsnap_env(
        &backup_args(&p.name, &repo, &["--strategy", "cold"]),
        &[("VOLSNAP_FAULT_KILL_BEFORE_STEP", "3")],
    );
    assert_eq!(out.status.signal(), Some(9));
    assert!(!is_running(&app), "the killed run had stopped app");
    let out = volsnap(&backup_args(&p.name, &repo, &["--strategy", "online"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("recovery: "), "{}", stderr(&out));
    check();
}

#[test]
fn sigkill_at_every_step_of_a_btrfs_snapshot_run_is_recovered() {
    let mut p = Project::new("ksnap");
    let dir = p.tempdir();
    let img = dir.join("btrfs.img");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    sh("truncate", &["-s", "512M", img.to_str().unwrap()]);
    sh("mkfs.btrfs", &["-q", img.to_str().unwrap()]);
    sh(
        "mount",
        &["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()],
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let sub = mnt.join("db");
    sh("btrfs", &["subvolume", "create", sub.to_str().unwrap()]);
    make_fixture(&sub);
    let pristine = pristine_copy(&mut p, &sub);
    let dev = format!("device={}", sub.display());
    let vol = p.volume("db", &["type=none", "o=bind", &dev]);
    let m = format!("{vol}:/data:ro");
    let db = p.service("db", &[], &["-v", &m], &["idle"]);
    let repo = p.tar_repo();
    let check = || {
        assert_clean(&repo, &[&db], &[(&sub, &pristine)]);
        let subvols = sh("btrfs", &["subvolume", "list", mnt.to_str().unwrap()]);
        assert!(!subvols.contains("volsnap"), "no snapshot left: {subvols}");
    };
    kill_before_every_step(&p, "snapshot", &[], &repo, &check);
    kill_before_every_step(&p, "snapshot", &["--quiesce", "pause"], &repo, &check);
}

#[test]
fn sigterm_or_sighup_during_archive_aborts_cleanly() {
    // SIGHUP: the ssh session running volsnap dropped.
    for signal in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        signal_during_archive_aborts_cleanly(signal);
    }
}

fn signal_during_archive_aborts_cleanly(signal: nix::sys::signal::Signal) {
    let mut p = Project::new("term");
    let repo = p.tar_repo();
    let vol = p.volume("data", &[]);
    let path = volume_path(&vol);
    // Enough data that gzip takes seconds.
    let data = noise(96 << 20);
    std::fs::write(path.join("big.bin"), &data).unwrap();
    let m = format!("{vol}:/data");
    let app = p.service("app", &[], &["-v", &m], &["idle"]);
    let child = spawn_volsnap(&backup_args(
        &p.name,
        &repo,
        &[
            "--strategy",
            "cold",
            "--compression",
            "gzip",
            "--level",
            "9",
        ],
    ));
    // Wait until the archive is being written, then ask it to stop.
    wait_until("the archive to start", 60, || {
        std::fs::read_dir(&repo).unwrap().any(|e| {
            let e = e.unwrap();
            e.file_name().to_string_lossy().starts_with(".partial-")
                && std::fs::read_dir(e.path()).unwrap().count() > 0
        })
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    // A second signal during cleanup must not cut the cleanup short.
    std::thread::sleep(std::time::Duration::from_millis(10));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{signal}: {}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert_clean(&repo, &[&app], &[]);
}

#[test]
fn a_second_run_is_refused_while_one_holds_the_lock() {
    let mut p = Project::new("lock");
    let repo = p.tar_repo();
    let vol = p.volume("data", &[]);
    let path = volume_path(&vol);
    let data = noise(64 << 20);
    std::fs::write(path.join("big.bin"), &data).unwrap();
    let m = format!("{vol}:/data");
    let app = p.service("app", &[], &["-v", &m], &["idle"]);
    let first = spawn_volsnap(&backup_args(
        &p.name,
        &repo,
        &[
            "--strategy",
            "online",
            "--compression",
            "gzip",
            "--level",
            "9",
        ],
    ));
    let lock = state_dir().join("lock");
    wait_until("the first run to take the lock", 30, || {
        std::fs::read_to_string(&lock)
            .unwrap_or_default()
            .contains(&format!("pid {}", first.id()))
    });
    let second = volsnap(&backup_args(&p.name, &repo, &["--strategy", "cold"]));
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("another volsnap run holds the lock"),
        "{}",
        stderr(&second)
    );
    assert!(
        stderr(&second).contains(&format!("pid {}", first.id())),
        "names the holder: {}",
        stderr(&second)
    );
    assert!(is_running(&app), "the refused run stopped nothing");
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn enospc_during_a_cold_backup_removes_the_partial_backup_and_restarts() {
    let mut p = Project::new("nospace");
    let vol = p.volume("data", &[]);
    let path = volume_path(&vol);
    let data = noise(16 << 20);
    std::fs::write(path.join("big.bin"), &data).unwrap();
    let m = format!("{vol}:/data");
    let app = p.service("app", &[], &["-v", &m], &["idle"]);
    let repo = p.tempdir();
    mount_tiny_tmpfs(&repo);
    init_tar(&repo);
    let out = volsnap(&backup_args(
        &p.name,
        &repo,
        &["--compression", "none", "--skip-space-check"],
    ));
    let clean = entries_besides_marker(&repo).is_empty();
    let _ = Command::new("umount").arg(&repo).status();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("No space left"), "{}", stderr(&out));
    assert!(clean, "partial backup removed");
    assert!(is_running(&app));
}

#[test]
fn a_repository_too_small_is_refused_before_anything_stops() {
    let mut p = Project::new("small");
    let vol = p.volume("data", &[]);
    std::fs::write(volume_path(&vol).join("big.bin"), noise(16 << 20)).unwrap();
    let m = format!("{vol}:/data");
    let app = p.service("app", &[], &["-v", &m], &["idle"]);
    let started = inspect(&app, "{{.State.StartedAt}}");
    let repo = p.tempdir();
    mount_tiny_tmpfs(&repo);
    init_tar(&repo);
    let out = volsnap(&backup_args(&p.name, &repo, &["--strategy", "cold"]));
    let empty = entries_besides_marker(&repo).is_empty();
    let _ = Command::new("umount").arg(&repo).status();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("free, this backup needs about"),
        "{}",
        stderr(&out)
    );
    assert!(empty, "nothing written");
    assert_eq!(
        inspect(&app, "{{.State.StartedAt}}"),
        started,
        "nothing was stopped"
    );
}

#[test]
fn a_service_that_does_not_come_back_is_reported_and_the_backup_kept() {
    let mut p = Project::new("noback");
    let repo = p.tar_repo();
    let vol = p.volume("data", &[]);
    let m = format!("{vol}:/data");
    // Runs the first time; exits with an error on any later start.
    let flaky = p.service(
        "flaky",
        &[],
        &["-v", &m],
        &[
            "sh",
            "-c",
            "test -f /data/started && exit 3; touch /data/started; exec idle",
        ],
    );
    let other = p.service("other", &["flaky"], &["-v", &m], &["idle"]);
    // Wait for the first start to have marked itself.
    let marker = volume_path(&vol).join("started");
    wait_until("flaky to start", 30, || marker.exists());
    let out = volsnap(&backup_args(
        &p.name,
        &repo,
        &["--strategy", "cold", "--json"],
    ));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the backup is complete, but"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(&flaky),
        "names the container: {}",
        stderr(&out)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = report["id"].as_str().unwrap();
    verify_deep(&repo, id);
    assert!(is_running(&other), "volsnap kept starting the rest");
}

#[test]
fn an_undo_that_keeps_failing_does_not_lock_later_runs_out_and_can_be_given_up() {
    // A restore swap whose target vanished: putting it back fails every
    // time (there is nowhere to put it).
    let scratch = tempfile::tempdir().unwrap();
    let aside = scratch.path().join("gone/.volsnap-replaced-1");
    std::fs::create_dir_all(&aside).unwrap();
    let mut journal =
        volsnap::journal::Journal::create(&state_dir(), "restore-stuck", "restore latest").unwrap();
    journal
        .push(&volsnap::journal::Undo::RestoreSwap {
            target: scratch.path().join("no-such-target"),
            staging: scratch.path().join("no-such-target/.volsnap-restore-1"),
            aside: aside.clone(),
            old_names: vec!["data".into()],
        })
        .unwrap();
    drop(journal); // the run "died" here

    let out = volsnap(&["recover"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // A later run that changes things still runs, and says what is stuck.
    let repo = tempfile::tempdir().unwrap();
    let out = volsnap(&[
        "prune",
        "--repo",
        repo.path().to_str().unwrap(),
        "--keep-last",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--give-up") && stderr(&out).contains("put the previous content"),
        "{}",
        stderr(&out)
    );
    let given_up = ok(volsnap(&["recover", "--give-up", "restore-stuck"]));
    assert!(given_up.contains("check by hand"), "{given_up}");
    assert!(
        ok(volsnap(&["recover"])).contains("nothing to recover"),
        "the journal no longer retries"
    );
    assert!(state_dir()
        .join("journal/abandoned/restore-stuck.jsonl")
        .exists());
    let out = volsnap(&["recover", "--give-up", "no-such-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
