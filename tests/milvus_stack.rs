//! The seed's own stack, for real: Milvus 2.3.5 standalone with etcd and an
//! S3 object store, started by Debian's docker-compose 1.29 from
//! stacks/milvus/docker-compose.yml (images built by
//! scripts/milvus-stack.sh), with a pymilvus client inserting numbered
//! vectors throughout. Each backup is restored into new volumes, a second
//! copy of the stack (its own project and network) starts on them, and the
//! client checks it: the rows a gapless prefix covering every insert
//! acknowledged before the stop, every vector intact, every search finding
//! its own row. The figures (downtime, times, what the checker found) are
//! printed for the closing note.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const SERVERS: &str = "/opt/volsnap-test";

/// One Milvus stack at a time: two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn python() -> PathBuf {
    let servers = std::env::var("VOLSNAP_TEST_SERVERS").unwrap_or_else(|_| SERVERS.into());
    Path::new(&servers).join("milvus-venv/bin/python")
}

fn checker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("stacks/milvus/checker.py")
}

/// Whether what the stack needs is built: loudly skipped, or failed under
/// CI (scripts/test.sh builds it), if not.
fn ready() -> bool {
    let image = Command::new("docker")
        .args(["image", "inspect", "volsnap-test/milvus:2.3.5"])
        .output()
        .is_ok_and(|o| o.status.success());
    let compose = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    let there = image && compose && python().exists();
    if !there {
        let message = "the real Milvus stack is not built (scripts/milvus-stack.sh; docker-compose from Debian)";
        if std::env::var("VOLSNAP_REQUIRE_SERVERS").as_deref() == Ok("1") {
            panic!("{message}");
        }
        eprintln!("\n########## SKIPPED: {message} ##########\n");
    }
    there
}

/// One compose project of the stack, in a directory of its own; taken
/// down with its volumes on drop.
struct Stack {
    project: String,
    dir: PathBuf,
    /// Its compose files, in the order given to docker-compose.
    files: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// The stack's files in a new directory: the compose file, milvus.yaml
    /// rendered from the wheel's template, a log directory.
    fn new(project: &str, graceful_stop: u32) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let stacks = Path::new(env!("CARGO_MANIFEST_DIR")).join("stacks/milvus");
        std::fs::copy(
            stacks.join("docker-compose.yml"),
            dir.path().join("docker-compose.yml"),
        )
        .unwrap();
        let template = Command::new(python())
            .args([
                "-c",
                "import milvus, os; print(os.path.dirname(milvus.__file__))",
            ])
            .output()
            .unwrap();
        let template = Path::new(String::from_utf8_lossy(&template.stdout).trim())
            .join("data/config.yaml.template");
        let out = Command::new("python3")
            .arg(stacks.join("render-config.py"))
            .arg(&template)
            .arg(dir.path().join("milvus.yaml"))
            .args(["--graceful-stop-timeout", &graceful_stop.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        Stack {
            project: project.to_string(),
            dir: dir.path().to_path_buf(),
            files: vec!["docker-compose.yml".into()],
            _dir: dir,
        }
    }

    /// Puts its volumes (and log directory) on subvolumes of `fs`, through
    /// a second compose file: what `config_files` then names is two files.
    fn on_btrfs(mut self, fs: &BtrfsFs) -> Stack {
        let mut text = String::from("version: \"2.4\"\nvolumes:\n");
        for v in ["etcd_data", "minio_data", "milvus_data"] {
            let dir = fs.subvolume(v);
            text.push_str(&format!(
                "  {v}:\n    driver_opts:\n      type: none\n      o: bind\n      device: {}\n",
                dir.display()
            ));
        }
        let logs = fs.subvolume("logs");
        text.push_str(&format!(
            "services:\n  standalone:\n    volumes:\n      - {}:/var/log/milvus\n",
            logs.display()
        ));
        std::fs::write(self.dir.join("docker-compose.btrfs.yml"), text).unwrap();
        self.files = vec![
            "docker-compose.yml".into(),
            "docker-compose.btrfs.yml".into(),
        ];
        self
    }

    fn compose(&self, args: &[&str]) -> String {
        let mut files = Vec::new();
        for f in &self.files {
            files.extend(["-f", f.as_str()]);
        }
        let out = Command::new("docker-compose")
            .args(&files)
            .arg("-p")
            .arg(&self.project)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("docker-compose");
        assert!(
            out.status.success(),
            "docker-compose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    fn volume(&self, short: &str) -> String {
        format!("{}_{short}", self.project)
    }

    /// Starts it and waits until Milvus is healthy: the seconds it took.
    fn up(&self) -> f64 {
        let clock = Instant::now();
        self.compose(&["up", "-d"]);
        wait_healthy(&self.container("standalone"), Duration::from_secs(180));
        clock.elapsed().as_secs_f64()
    }

    /// The checker's collection, and the inserter running against it until
    /// dropped, once Milvus has acknowledged inserts for a few seconds.
    fn under_load(&self, acks: &Path) -> Inserter {
        let out = Command::new(python())
            .arg(checker())
            .args(["setup", "--host", &self.ip()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let inserter = Inserter::start(&self.ip(), acks);
        inserter.wait_acked(acks);
        inserter
    }

    fn ip(&self) -> String {
        let out = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                &self.container("standalone"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let mut files = Vec::new();
        for f in &self.files {
            files.extend(["-f", f.as_str()]);
        }
        let _ = Command::new("docker-compose")
            .args(&files)
            .args(["-p", &self.project, "down", "-v", "-t", "1"])
            .current_dir(&self.dir)
            .output();
    }
}

fn wait_healthy(container: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Health.Status}}", container])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() == "healthy" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{container} is not healthy after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The inserter: rows 1, 2, 3, … one batch at a time; every acknowledged
/// batch's last id and the time, appended to `acks`.
struct Inserter {
    child: Child,
}

impl Inserter {
    fn start(host: &str, acks: &Path) -> Inserter {
        let child = Command::new(python())
            .arg(checker())
            .args(["insert", "--host", host, "--acked"])
            .arg(acks)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Inserter { child }
    }
}

impl Inserter {
    /// Waits until Milvus has acknowledged inserts for a few seconds.
    fn wait_acked(&self, acks: &Path) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked_before(acks, f64::MAX) == 0 {
            assert!(Instant::now() < deadline, "Milvus acknowledges no insert");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

impl Drop for Inserter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last id acknowledged at or before `at` (seconds since the epoch).
fn acked_before(acks: &Path, at: f64) -> u64 {
    std::fs::read_to_string(acks)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (t, id) = l.split_once(' ')?;
            Some((t.parse::<f64>().ok()?, id.parse::<u64>().ok()?))
        })
        .filter(|(t, _)| *t <= at)
        .map(|(_, id)| id)
        .max()
        .unwrap_or(0)
}

/// When the container's last run ended, as seconds since the epoch.
fn finished_at(container: &str) -> f64 {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.State.FinishedAt}}", container])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    chrono::DateTime::parse_from_rfc3339(&text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp_millis() as f64
        / 1000.0
}

/// Restores backup `id` into the volumes of a second copy of the stack,
/// starts it and runs the checker there: its report, the restore's
/// seconds and the seconds until Milvus was healthy.
fn restore_and_check(
    repo: &str,
    id: &str,
    live: &Stack,
    copy: &str,
    acked: u64,
) -> (Value, f64, f64) {
    let copy = Stack::new(copy, 10);
    let mut args = vec!["restore", "--repo", repo, id];
    let maps: Vec<String> = ["etcd_data", "minio_data", "milvus_data"]
        .iter()
        .map(|v| format!("{}={}", live.volume(v), copy.volume(v)))
        .collect();
    for m in &maps {
        args.extend(["--volume", m.as_str()]);
    }
    let clock = Instant::now();
    ok(volsnap(&args));
    let restore_s = clock.elapsed().as_secs_f64();
    let healthy_s = copy.up();
    let out = Command::new(python())
        .arg(checker())
        .args(["check", "--host", &copy.ip(), "--acked", &acked.to_string()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let report = json(
        said.lines()
            .last()
            .unwrap_or_else(|| panic!("no report: {}", String::from_utf8_lossy(&out.stderr))),
    );
    (report, restore_s, healthy_s)
}

/// The record of container `name` in a backup's JSON.
fn record<'a>(backup: &'a Value, name: &str) -> &'a Value {
    backup["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {backup}"))
}

/// Seconds a stop took, from a backup's record of the container.
fn stop_took(backup: &Value, name: &str) -> f64 {
    record(backup, name)["stop"]["took_ms"].as_f64().unwrap() / 1000.0
}

fn backup(repo: &str, project: &str, extra: &[&str]) -> Value {
    let mut args = vec!["backup", "--repo", repo, "--project", project, "--json"];
    args.extend_from_slice(extra);
    json(&ok(volsnap(&args)))
}

#[test]
fn the_real_milvus_stack_backs_up_and_restores_every_acknowledged_row() {
    if !ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let project = format!("vtmilvus{}", std::process::id());
    let live = Stack::new(&project, 10);
    let started = live.up();
    let scratch = tempfile::tempdir().unwrap();
    let acks = scratch.path().join("acks");
    let inserter = live.under_load(&acks);

    // docker-compose 1.29 writes no depends_on label: the order comes from
    // the compose file the containers name, and Milvus stops first.
    let plan = ok(volsnap(&["plan", "--project", &project]));
    assert!(plan.contains("order from the compose file"), "{plan}");
    let stop_line = |service: &str| {
        plan.lines()
            .position(|l| l.contains(". stop") && l.contains(&format!("_{service}_1")))
            .unwrap_or_else(|| panic!("no stop of {service}: {plan}"))
    };
    assert!(stop_line("standalone") < stop_line("etcd"), "{plan}");
    assert!(stop_line("standalone") < stop_line("minio"), "{plan}");
    // Its own stop timeout (stop_grace_period: 90s) applies.
    assert!(plan.contains("stop timeout 90 s, its own"), "{plan}");

    let repo = scratch.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let repo_s = repo.to_str().unwrap();
    let mut figures = Vec::new();

    // Cold: Milvus stops cleanly within its time; the copy has every row.
    let clock = Instant::now();
    let cold = backup(repo_s, &project, &["--strategy", "cold"]);
    let cold_s = clock.elapsed().as_secs_f64();
    assert_eq!(cold["consistency"], "consistent", "{cold}");
    let stops: Vec<&Value> = cold["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["stop"])
        .collect();
    assert!(stops.iter().all(|s| s["killed"] == false), "{cold}");
    let standalone = live.container("standalone");
    let stop_took = stop_took(&cold, &standalone);
    let acked = acked_before(&acks, finished_at(&standalone) - stop_took);
    assert!(
        acked > 0,
        "the inserter acknowledged nothing before the stop"
    );
    // The stack's definition travels with its data: the compose file and
    // the read-only milvus.yaml, listed by ls, written out only into a
    // directory asked for, and only a new or empty one.
    let cold_id = cold["id"].as_str().unwrap();
    let listing = ok(volsnap(&["ls", "--repo", repo_s, cold_id]));
    let out_dir = scratch.path().join("definition");
    let out_s = out_dir.to_str().unwrap();
    let definition = [
        "restore",
        "--repo",
        repo_s,
        cold_id,
        "--definition-to",
        out_s,
    ];
    ok(volsnap(&definition));
    for name in ["docker-compose.yml", "milvus.yaml"] {
        let live_file = live.dir.join(name);
        assert!(
            listing.contains(&format!("stack-definition{}", live_file.display())),
            "{name} is not listed: {listing}"
        );
        let written = out_dir.join(live_file.strip_prefix("/").unwrap());
        assert_eq!(
            std::fs::read(&written).unwrap_or_default(),
            std::fs::read(&live_file).unwrap(),
            "{}",
            written.display()
        );
    }
    let again = volsnap(&definition);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));

    let (report, restore_s, healthy_s) =
        restore_and_check(repo_s, cold_id, &live, &format!("{project}c"), acked);
    let report_cold_max = report["max_id"].as_u64();
    let answered = record(&cold, &standalone)["answered_ms"]
        .as_f64()
        .unwrap_or(0.0)
        / 1000.0;
    figures.push(format!(
        "cold: downtime {:.1} s (Milvus stopping {stop_took:.1} s), Milvus answered a query {answered:.1} s after its start, backup {cold_s:.1} s; restore {restore_s:.1} s, copy (started by compose) healthy after {healthy_s:.1} s, checker {report}",
        cold["downtime_ms"].as_f64().unwrap() / 1000.0
    ));
    assert_eq!(report["ok"], true, "{report}");

    // A drill of the cold backup: scratch volumes, copies of the live
    // containers on an isolated network, the etcd copy's after-restore step,
    // Milvus's readiness check, then the checker itself, run on the host
    // against the Milvus copy's address: every row acknowledged before the
    // stop, gapless, every vector and search.
    let check_host = format!(
        "{} {} check --host $VOLSNAP_DRILL_STANDALONE --acked {acked} --timeout 60",
        python().display(),
        checker().display()
    );
    let drill = json(&ok(volsnap(&[
        "drill",
        "--repo",
        repo_s,
        "--project",
        &project,
        cold_id,
        "--check-host",
        &check_host,
        "--timeout",
        "120",
        "--json",
    ])));
    assert_eq!(drill["passed"], true, "{drill}");
    assert_eq!(drill["checks"][0]["service"], "(host)", "{drill}");
    figures.push(format!(
        "drill of the cold backup: restore {:.1} s, healthy and answering {:.1} s (RTO {:.1} s)",
        drill["restore_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        drill["healthy_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        (drill["restore_ms"].as_f64().unwrap_or(0.0) + drill["healthy_ms"].as_f64().unwrap_or(0.0))
            / 1000.0
    ));

    // Online: best-effort, with the files that changed named; what the
    // checker finds is reported, not required.
    let clock = Instant::now();
    let online = backup(repo_s, &project, &["--strategy", "online"]);
    let online_s = clock.elapsed().as_secs_f64();
    assert_eq!(online["consistency"], "best-effort", "{online}");
    let (report, restore_s, healthy_s) = restore_and_check(
        repo_s,
        online["id"].as_str().unwrap(),
        &live,
        &format!("{project}o"),
        0,
    );
    figures.push(format!(
        "online: downtime 0 s, backup {online_s:.1} s, restore {restore_s:.1} s, copy healthy after {healthy_s:.1} s, checker {report}"
    ));

    // Too little time to stop: Milvus (10 s of graceful stop) is killed at
    // a 2 s timeout, and the backup says so per service: never "consistent".
    let killed = backup(
        repo_s,
        &project,
        &["--strategy", "cold", "--stop-timeout", "2"],
    );
    assert_eq!(killed["consistency"], "best-effort", "{killed}");
    assert_eq!(
        record(&killed, &standalone)["stop"]["killed"],
        true,
        "{killed}"
    );
    let notes = killed["notes"].to_string();
    assert!(
        notes.contains("was killed") && notes.contains(&standalone),
        "{notes}"
    );
    wait_healthy(&standalone, Duration::from_secs(180));
    drop(inserter);

    // In place: the first strong query after a restore, measured against
    // the same after a clean restart of the stack. The restore clears the
    // restored etcd's stale sessions (the etcd service's
    // volsnap.after-restore label) before Milvus starts, and returns once
    // Milvus answers a query (its volsnap.ready label).
    // Clean: given the time its graceful stop needs (compose's own
    // restart waits only 10 s), so Milvus deregisters its sessions.
    live.compose(&["restart", "-t", "90"]);
    wait_healthy(&standalone, Duration::from_secs(180));
    let check = |acked: u64| {
        let out = Command::new(python())
            .arg(checker())
            .args(["check", "--host", &live.ip(), "--acked", &acked.to_string()])
            .output()
            .unwrap();
        json(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or("{}"),
        )
    };
    let clean = check(0);
    // An upgrade since the backup: a newer image tag (here the same server
    // with a label more) runs the stack. The restore says the backup was
    // taken with another image, and names it.
    let upgraded = format!("volsnap-test/milvus:2.3.5-{project}");
    derived_image("volsnap-test/milvus:2.3.5", &upgraded);
    let compose_file = live.dir.join("docker-compose.yml");
    let text = std::fs::read_to_string(&compose_file).unwrap();
    std::fs::write(
        &compose_file,
        text.replace(
            "image: volsnap-test/milvus:2.3.5",
            &format!("image: {upgraded}"),
        ),
    )
    .unwrap();
    live.compose(&["up", "-d"]);
    wait_healthy(&standalone, Duration::from_secs(180));
    let clock = Instant::now();
    let out = volsnap(&[
        "restore",
        "--repo",
        repo_s,
        cold["id"].as_str().unwrap(),
        "--force",
    ]);
    let restore_s = clock.elapsed().as_secs_f64();
    let _ = Command::new("docker")
        .args(["rmi", "-f", &upgraded])
        .output();
    let restored = ok(out.clone());
    assert!(
        stderr(&out).contains(&format!("runs image {upgraded}"))
            && stderr(&out).contains("backup was taken with volsnap-test/milvus:2.3.5")
            && stderr(&out).contains(&format!(
                "compose configuration of {standalone} changed since the backup"
            )),
        "{}",
        stderr(&out)
    );
    let after = check(acked);
    figures.push(format!(
        "in place: restore until Milvus answered {restore_s:.1} s; first strong query {} s after a clean restart, {} s after the restore; checker {after}",
        clean["first_strong_query_s"], after["first_strong_query_s"]
    ));
    assert_eq!(after["ok"], true, "{after} {restored}");
    assert_eq!(
        after["max_id"].as_u64(),
        report_cold_max,
        "the cold backup's rows, no more"
    );
    let (clean_q, after_q) = (
        clean["first_strong_query_s"].as_f64().unwrap(),
        after["first_strong_query_s"].as_f64().unwrap(),
    );
    assert!(
        after_q <= 2.0 * clean_q.max(0.5),
        "first query {after_q} s after the restore, {clean_q} s after a clean restart"
    );

    eprintln!("\nreal Milvus stack (started in {started:.1} s):");
    for f in &figures {
        eprintln!("  {f}");
    }
}

/// Snapshot on btrfs: Milvus, MinIO and etcd stopped only while their
/// subvolumes are snapshotted (about a second beyond Milvus's own stop),
/// archived from the snapshots after they run again; the copy restored
/// from it passes the checker.
#[test]
fn a_snapshot_backup_of_the_real_milvus_stack_on_btrfs_restores_every_acknowledged_row() {
    if !ready() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let fs = BtrfsFs::new();
    let project = format!("vtmilvusb{}", std::process::id());
    let live = Stack::new(&project, 10).on_btrfs(&fs);
    live.up();
    let scratch = tempfile::tempdir().unwrap();
    let acks = scratch.path().join("acks");
    let inserter = live.under_load(&acks);

    let plan = ok(volsnap(&[
        "plan",
        "--project",
        &project,
        "--strategy",
        "snapshot",
    ]));
    assert!(
        plan.contains("docker-compose.yml") && plan.contains("docker-compose.btrfs.yml"),
        "the order comes from both compose files: {plan}"
    );
    let repo = scratch.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let repo_s = repo.to_str().unwrap();
    let clock = Instant::now();
    let snap = backup(repo_s, &project, &["--strategy", "snapshot"]);
    let snap_s = clock.elapsed().as_secs_f64();
    drop(inserter);
    assert_eq!(snap["strategy"], "snapshot", "{snap}");
    assert_eq!(snap["consistency"], "consistent", "{snap}");
    let standalone = live.container("standalone");
    let stop_took = stop_took(&snap, &standalone);
    let acked = acked_before(&acks, finished_at(&standalone) - stop_took);
    assert!(acked > 0);
    let (report, restore_s, healthy_s) = restore_and_check(
        repo_s,
        snap["id"].as_str().unwrap(),
        &live,
        &format!("{project}c"),
        acked,
    );
    eprintln!(
        "\nreal Milvus stack, snapshot on btrfs: downtime {:.1} s (Milvus stopping {stop_took:.1} s), backup {snap_s:.1} s; restore {restore_s:.1} s, copy healthy after {healthy_s:.1} s, checker {report}",
        snap["downtime_ms"].as_f64().unwrap() / 1000.0
    );
    assert_eq!(report["ok"], true, "{report}");
}
