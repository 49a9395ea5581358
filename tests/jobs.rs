//! Configured jobs against a real stack: `config check`, `run JOB` with
//! host hooks and a webhook received by a local HTTP listener, `status`,
//! metrics, `systemd`, and the daemon running a job on a schedule.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// A one-stack setup: a project with data, a repository, a config file.
struct Setup {
    p: Project,
    repo: PathBuf,
    dir: PathBuf,
    config: PathBuf,
}

fn setup(prefix: &str, job_extra: &str, file_extra: &str) -> Setup {
    let mut p = Project::new(prefix);
    let vol = p.volume("data", &[]);
    std::fs::write(volume_path(&vol).join("state"), "ok\n").unwrap();
    let db = p.service("db", &[], &["-v", &format!("{vol}:/data")], &["idle"]);
    wait_until("db to run", 30, || is_running(&db));
    // An empty directory: the first backup makes it a format-2 repository,
    // as it would for an operator.
    let repo = p.tempdir().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let dir = p.tempdir();
    let config = dir.join("volsnap.toml");
    let text = format!(
        "run_log = \"{}/runs.jsonl\"\nmetrics_file = \"{}/volsnap.prom\"\n{file_extra}\n[jobs.nightly]\nproject = \"{}\"\nrepo = \"{}\"\nstrategy = \"online\"\n{job_extra}\n",
        dir.display(),
        dir.display(),
        p.name,
        repo.display()
    );
    std::fs::write(&config, text).unwrap();
    Setup {
        p,
        repo,
        dir,
        config,
    }
}

fn run_log(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("runs.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Accepts HTTP POSTs on a local port and hands their bodies over.
fn webhook_listener() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/hooks/secret-token",
        listener.local_addr().unwrap()
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .unwrap();
            let _ = tx.send(String::from_utf8(body).unwrap());
        }
    });
    (url, rx)
}

#[test]
fn config_check_explains_every_error_with_its_line() {
    let s = setup("cfgcheck", "schedule = \"0 3 * * *\"", "");
    let out = ok(volsnap(&[
        "config",
        "check",
        "--config",
        s.config.to_str().unwrap(),
    ]));
    assert!(
        out.contains("ok, 1 job(s)") && out.contains("next"),
        "{out}"
    );

    let bad = s.dir.join("bad.toml");
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("0 3 * * *", "at night")
        .replace(
            "strategy = \"online\"",
            "strategy = \"online\"\nkeep_forever = true",
        );
    std::fs::write(&bad, text).unwrap();
    let out = volsnap(&["config", "check", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("line 8: unknown field `keep_forever`"),
        "{}",
        stderr(&out)
    );
    // Every problem of the file in one run, the unknown key's included.
    assert!(
        stderr(&out).contains("2 problem(s)") && stderr(&out).contains("job nightly: schedule"),
        "{}",
        stderr(&out)
    );
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/volsnap.example.toml");
    ok(volsnap(&["config", "check", "--config", example]));
    let missing = volsnap(&["config", "check", "--config", "/nonexistent/volsnap.toml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("no configuration file"));

    let units = ok(volsnap(&[
        "systemd",
        "nightly",
        "--config",
        s.config.to_str().unwrap(),
    ]));
    assert!(units.contains("OnCalendar=*-*-* 3:0:0"), "{units}");
    assert!(units.contains("Persistent=true"));
    assert!(units.contains("run nightly --config"), "{units}");
}

#[test]
fn a_job_runs_its_hooks_in_order_and_notifies_by_webhook() {
    let (url, bodies) = webhook_listener();
    let hooks = |dir: &str| {
        format!(
            "[jobs.nightly.hooks]\npre = \"echo pre $VOLSNAP_JOB >> {dir}/hooks.log\"\npost = \"echo post $VOLSNAP_STATUS $VOLSNAP_BACKUP_ID >> {dir}/hooks.log\"\non_failure = \"echo failure >> {dir}/hooks.log\"\n[jobs.nightly.notify]\nwebhook = \"{url}\"\non_success = true\n[jobs.nightly.retention]\nkeep_last = 1\n"
        )
    };
    let mut s = setup("jobhooks", "", "");
    let dir_s = s.dir.display().to_string();
    let text = std::fs::read_to_string(&s.config).unwrap() + &hooks(&dir_s);
    std::fs::write(&s.config, text).unwrap();
    let config = s.config.to_str().unwrap().to_string();

    let mut said = Vec::new();
    for _ in 0..2 {
        let out = volsnap(&["run", "nightly", "--config", &config]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        said.push(stderr(&out));
    }
    let records = run_log(&s.dir);
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r["status"] == "success"));
    assert_eq!(records[1]["pruned"], 1, "retention after the second run");
    let id = records[1]["backup_id"].as_str().unwrap();
    // The terminal says what the run did, retention included.
    let first = records[0]["backup_id"].as_str().unwrap();
    assert!(said[0].contains("retention deleted nothing"), "{}", said[0]);
    assert!(
        said[1].contains(&format!("retention deleted 1 backup(s): {first}"))
            && said[1].contains("(estimated "),
        "{}",
        said[1]
    );
    assert!(
        records[1]["estimated_downtime_ms"].is_u64(),
        "{}",
        records[1]
    );
    let log = std::fs::read_to_string(s.dir.join("hooks.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[2], "pre nightly");
    assert_eq!(lines[3], format!("post success {id}"));
    let body: Value =
        serde_json::from_str(&bodies.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap();
    assert_eq!(body["status"], "success");
    assert_eq!(body["job"], "nightly");

    // Break the stack's own hook: the backup fails; post and on_failure still
    // run, and the webhook hears about it.
    let bad =
        s.p.service("worker", &[], &["-l", "volsnap.pre=exit 7"], &["idle"]);
    wait_until("worker to run", 30, || is_running(&bad));
    let out = volsnap(&["run", "nightly", "--config", &config]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exited with status 7"),
        "{}",
        stderr(&out)
    );
    let log = std::fs::read_to_string(s.dir.join("hooks.log")).unwrap();
    let tail: Vec<&str> = log.lines().skip(4).collect();
    assert_eq!(tail, ["pre nightly", "post failed", "failure"]);
    let _second = bodies.recv_timeout(Duration::from_secs(10)).unwrap();
    let failed: Value =
        serde_json::from_str(&bodies.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap();
    assert_eq!(failed["status"], "failed");
    assert!(failed["problems"].to_string().contains("status 7"));
    assert!(
        !stderr(&out).contains("secret-token"),
        "the webhook URL is never printed"
    );

    // status and metrics tell the same story.
    let status = ok(volsnap(&["status", "--config", &config]));
    assert!(
        status.contains("last success:") && status.contains(id),
        "{status}"
    );
    assert!(status.contains("exited with status 7"), "{status}");
    let metrics = std::fs::read_to_string(s.dir.join("volsnap.prom")).unwrap();
    assert!(
        metrics.contains("volsnap_last_run_success{job=\"nightly\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("volsnap_last_success_timestamp_seconds{job=\"nightly\"}"));
    assert!(metrics.contains("volsnap_newest_verified_backup_timestamp_seconds{job=\"nightly\"}"));
}

fn signal(child: &std::process::Child, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
}

/// Stops a daemon with SIGTERM, checks it ended cleanly, returns its stderr.
fn stop_daemon(mut daemon: std::process::Child) -> String {
    signal(&daemon, nix::sys::signal::Signal::SIGTERM);
    let mut stopped = None;
    wait_until("the daemon to stop", 60, || {
        stopped = daemon.try_wait().unwrap();
        stopped.is_some()
    });
    let err = stderr(&daemon.wait_with_output().unwrap());
    assert_eq!(stopped.unwrap().code(), Some(0), "{err}");
    assert!(err.contains("volsnap daemon: stopped"), "{err}");
    err
}

#[test]
fn the_daemon_runs_a_job_on_its_schedule_and_stops_cleanly() {
    // Every 2 seconds; one run was "missed" an hour ago and is made up once.
    let s = setup(
        "daemon",
        "schedule = \"*/2 * * * * *\"\n[jobs.nightly.retention]\nkeep_last = 2\n",
        "",
    );
    let config = s.config.to_str().unwrap();
    let daemon = spawn_volsnap(&["daemon", "--config", config]);
    wait_until("three scheduled runs", 60, || {
        run_log(&s.dir)
            .iter()
            .filter(|r| r["status"] == "success")
            .count()
            >= 3
    });
    stop_daemon(daemon);
    let listed: serde_json::Value = serde_json::from_str(&ok(volsnap(&[
        "list",
        "--repo",
        s.repo.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    let backups: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        backups.len() <= 2,
        "retention ran after each backup: {backups:?}"
    );
    // What the daemon left is whole: every index, pack and backup checks.
    ok(volsnap(&[
        "verify",
        "--repo",
        s.repo.to_str().unwrap(),
        "--all",
    ]));
    let metrics = std::fs::read_to_string(s.dir.join("volsnap.prom")).unwrap();
    assert!(metrics.contains("volsnap_last_run_success{job=\"nightly\"}"));
}

#[test]
fn the_daemon_reloads_its_configuration_on_sighup_and_keeps_it_when_broken() {
    // Starts with a yearly schedule: nothing runs until the reload.
    let s = setup("reload", "schedule = \"0 0 1 1 *\"", "");
    let config = s.config.to_str().unwrap();
    let daemon = spawn_volsnap(&["daemon", "--config", config]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(run_log(&s.dir).len(), 0, "the yearly schedule is not due");

    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, text.replace("0 0 1 1 *", "*/2 * * * * *")).unwrap();
    signal(&daemon, nix::sys::signal::Signal::SIGHUP);
    wait_until("a run on the reloaded schedule", 60, || {
        run_log(&s.dir).iter().any(|r| r["status"] == "success")
    });

    // A broken file is refused; the 2-second schedule goes on.
    std::fs::write(&s.config, "[jobs.nightly\nproject = ").unwrap();
    signal(&daemon, nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_secs(1));
    let before = run_log(&s.dir).len();
    wait_until("a run after the refused reload", 60, || {
        run_log(&s.dir).len() > before
    });

    let err = stop_daemon(daemon);
    assert!(err.contains("reloaded"), "{err}");
    assert!(
        err.contains("cannot reload") && err.contains("the previous configuration stays in effect"),
        "{err}"
    );
}

#[test]
fn a_run_missed_while_the_daemon_was_down_runs_once_at_start() {
    // Once a year (midnight, January 1st): with a last run two years ago, one
    // run is due now (not two), and the next is far beyond the test.
    let s = setup("missed", "schedule = \"0 0 1 1 *\"", "");
    let two_years_ago = chrono::Utc::now() - chrono::Duration::days(730);
    let old = serde_json::json!({
        "job": "nightly", "kind": "backup", "status": "success",
        "started_at": two_years_ago, "finished_at": two_years_ago, "duration_ms": 1000,
    });
    std::fs::write(s.dir.join("runs.jsonl"), format!("{old}\n")).unwrap();
    let config = s.config.to_str().unwrap();
    let mut daemon = spawn_volsnap(&["daemon", "--config", config]);
    wait_until("the missed run", 60, || run_log(&s.dir).len() >= 2);
    std::thread::sleep(Duration::from_secs(3));
    signal(&daemon, nix::sys::signal::Signal::SIGTERM);
    let status = daemon.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        run_log(&s.dir).len(),
        2,
        "made up once, not once per missed hour"
    );
}
