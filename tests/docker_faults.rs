//! Docker faults: the daemon restarts while a cold backup has the services
//! down, and compose recreates a container during a run. Either way the
//! services end up running and the backup is complete.
//!
//! These tests stop and restart dockerd, so they run against a private
//! daemon of their own (scripts/test-dockerd: own socket, data root, exec
//! root and pid file), never the host's: the operator's containers keep
//! running. Every test here sets `DOCKER_HOST` to it first, for the docker
//! CLI and for volsnap alike; the tests share it, so they take turns.
//!
//! Needs the `fault-injection` feature (scripts/test.sh enables it): the run
//! holds before a chosen step while the test breaks things.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, Once};
use std::time::Duration;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `scripts/test-dockerd ACTION`, returning what it printed. `start`
/// names this test binary as the daemon's owner: the daemon is purged as
/// soon as the binary exits, whatever ends it.
fn dockerd(action: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-dockerd");
    let mut cmd = Command::new(script);
    cmd.arg(action);
    if action == "start" {
        cmd.arg(std::process::id().to_string());
    }
    let out = cmd
        .env_remove("DOCKER_HOST")
        .output()
        .expect("scripts/test-dockerd");
    assert!(
        out.status.success(),
        "scripts/test-dockerd {action} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Takes this binary's turn and points everything at the private daemon
/// (started here the first time).
fn private_daemon() -> MutexGuard<'static, ()> {
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let host = dockerd("start");
        assert!(host.starts_with("unix://"), "test-dockerd printed {host:?}");
        // SAFETY (set_var): every test of this binary waits for ONE_AT_A_TIME
        // and reaches this line before it starts any process.
        std::env::set_var("DOCKER_HOST", host);
    });
    dockerd("start"); // back up, should an earlier test have left it down
    turn
}

/// Brings the private dockerd back even when the test fails half-way, so
/// the tests after it still have a daemon.
struct DaemonBack;

impl Drop for DaemonBack {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-dockerd");
        let _ = Command::new(script).arg("start").output();
    }
}

/// A two-service stack with data, and a backup of it held before its first
/// `start` step. Returns the held process and the hold file.
struct HeldBackup {
    child: std::process::Child,
    hold: PathBuf,
}

fn hold_cold_backup(p: &mut Project, repo: &Path, env: &[(&str, &str)]) -> HeldBackup {
    let hold = p.tempdir().join("hold");
    let step = step_number(&p.name, "cold", "start").to_string();
    let mut env = env.to_vec();
    env.push(("VOLSNAP_FAULT_HOLD_BEFORE_STEP", &step));
    env.push(("VOLSNAP_FAULT_HOLD_FILE", hold.to_str().unwrap()));
    let child = spawn_volsnap_env(
        &backup_args(&p.name, repo, &["--strategy", "cold", "--json"]),
        &env,
    );
    wait_until("the backup to reach its first start", 60, || hold.exists());
    HeldBackup { child, hold }
}

fn stack(p: &mut Project) -> (String, String, PathBuf) {
    let vol = p.volume("data", &[]);
    let source = volume_path(&vol);
    make_fixture(&source);
    let m = format!("{vol}:/data");
    let db = p.service("db", &[], &["-v", &m], &["idle"]);
    let app = p.service("app", &["db"], &["-v", &m], &["idle"]);
    wait_until("the stack to run", 30, || {
        is_running(&db) && is_running(&app)
    });
    (db, app, source)
}

#[test]
fn dockerd_restarting_while_services_are_down_does_not_leave_them_down() {
    let _turn = private_daemon();
    let mut p = Project::new("dkrestart");
    let repo = p.tar_repo();
    let (db, app, _) = stack(&mut p);
    let held = hold_cold_backup(&mut p, &repo, &[]);
    assert!(!is_running(&db) && !is_running(&app), "cold: both stopped");

    let _back = DaemonBack;
    dockerd("stop");
    // Release the run while nobody answers on the socket: its first start
    // must wait for the daemon instead of giving up.
    std::fs::remove_file(&held.hold).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    dockerd("start");

    let out = held.child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not answer"),
        "says it waited for the daemon: {}",
        stderr(&out)
    );
    assert!(is_running(&db) && is_running(&app), "both run again");
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = report["id"].as_str().unwrap();
    verify_deep(&repo, id);
    assert_eq!(journals(), 0, "nothing left for recover");
}

fn journals() -> usize {
    std::fs::read_dir(state_dir().join("journal"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_daemon_down_for_too_long_leaves_the_restarts_to_recover() {
    let _turn = private_daemon();
    let mut p = Project::new("dkdown");
    let repo = p.tar_repo();
    let (db, app, _) = stack(&mut p);
    let held = hold_cold_backup(&mut p, &repo, &[("VOLSNAP_DOCKER_RETRY_SECS", "2")]);

    let back = DaemonBack;
    dockerd("stop");
    std::fs::remove_file(&held.hold).unwrap();
    let out = held.child.wait_with_output().unwrap();
    dockerd("start");
    drop(back);

    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("kept in the journal"),
        "says what is left and how: {}",
        stderr(&out)
    );
    assert!(
        !is_running(&db) && !is_running(&app),
        "nobody could start them"
    );
    assert_eq!(journals(), 1, "the restarts wait in the journal");
    let report = ok(volsnap(&["recover"]));
    assert!(report.contains("start container"), "{report}");
    assert!(is_running(&db) && is_running(&app), "recover started both");
    assert_eq!(journals(), 0, "journal done");
}

#[test]
fn a_container_recreated_by_compose_during_the_run_is_started_by_its_service() {
    let _turn = private_daemon();
    let mut p = Project::new("dkrecreate");
    let repo = p.tar_repo();
    let (db, app, _) = stack(&mut p);
    let old_id = inspect(&app, "{{.Id}}");
    let held = hold_cold_backup(&mut p, &repo, &[]);

    // What `docker compose up` does to a changed service: remove the
    // container, create a new one with the same labels (not started here).
    let labels = docker(&[
        "inspect",
        "--format",
        "{{range $k, $v := .Config.Labels}}{{$k}}={{$v}}\n{{end}}",
        &app,
    ]);
    let vol = format!("{}_data:/data", p.name);
    docker(&["rm", "-f", &app]);
    let mut args = vec!["create", "--network", "none", "--name", &app, "-v", &vol];
    for label in labels.lines().filter(|l| !l.is_empty()) {
        args.push("--label");
        args.push(label);
    }
    args.extend_from_slice(&[IMAGE, "idle"]);
    docker(&args);
    let new_id = inspect(&app, "{{.Id}}");
    assert_ne!(old_id, new_id);
    std::fs::remove_file(&held.hold).unwrap();

    let out = held.child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("was replaced"),
        "reports the replacement: {}",
        stderr(&out)
    );
    assert!(is_running(&db), "db runs again");
    assert!(is_running(&app), "the recreated app container was started");
    assert_eq!(inspect(&app, "{{.Id}}"), new_id);
}
