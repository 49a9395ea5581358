//! Recovery drills of a real stack: a backup restored into scratch volumes,
//! a copy of the stack started on them and checked, everything torn down.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

/// Containers, volumes and networks a drill of backup `id` left behind
/// (other tests drill at the same time: count only this backup's).
fn drill_leftovers(id: &str) -> usize {
    let filter = format!("label=volsnap.drill-of={id}");
    ["ps", "volume", "network"]
        .iter()
        .map(|what| {
            let mut args = vec![*what];
            if *what != "ps" {
                args.push("ls");
            } else {
                args.push("-a");
            }
            args.extend(["-q", "--filter", &filter]);
            docker(&args).lines().filter(|l| !l.is_empty()).count()
        })
        .sum()
}

/// An etcd-like service with a healthcheck on its data, and a dependent.
fn stack(p: &mut Project, state: &str) -> String {
    let vol = p.volume("data", &[]);
    std::fs::write(volume_path(&vol).join("state"), state).unwrap();
    let m = format!("{vol}:/data");
    let db = p.service(
        "db",
        &[],
        &[
            "-v",
            &m,
            "--health-cmd",
            "test -s /data/state",
            "--health-interval",
            "1s",
        ],
        &["idle"],
    );
    let app = p.service("app", &["db"], &[], &["idle"]);
    wait_until("the stack to run", 30, || {
        is_running(&db) && is_running(&app)
    });
    vol
}

fn backup(p: &Project, repo: &Path) -> String {
    let out = ok(volsnap(&backup_args(
        &p.name,
        repo,
        &["--strategy", "cold", "--json"],
    )));
    let report: Value = serde_json::from_str(&out).unwrap();
    report["id"].as_str().unwrap().to_string()
}

#[test]
fn a_drill_of_a_good_backup_passes_and_leaves_nothing() {
    let mut p = Project::new("drillok");
    // Format 2 (an empty directory): the report is a note object.
    let repo = p.tempdir();
    let vol = stack(&mut p, "ok\n");
    let id = backup(&p, &repo);
    // The live data changes afterwards: the drill must see the backup's.
    std::fs::write(volume_path(&vol).join("state"), "changed\n").unwrap();
    let out = ok(volsnap(&[
        "drill",
        "--repo",
        repo.to_str().unwrap(),
        "--project",
        &p.name,
        "--check",
        "db=grep -qx ok /data/state",
        "--check",
        "app=ping -c1 -W2 db",
        // On the host: the variable holds the address of a drill copy.
        "--check-host",
        "docker ps -q --filter label=volsnap.drill | xargs docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' | grep -qx \"$VOLSNAP_DRILL_DB\"",
        "--json",
    ]));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["checks"][2]["service"], "(host)", "{report}");
    assert_eq!(report["backup_id"], id.as_str());
    assert_eq!(report["containers"].as_array().unwrap().len(), 2);
    assert!(report["healthy_ms"].as_u64().is_some());
    assert_eq!(drill_leftovers(&id), 0, "torn down");
    let list = ok(volsnap(&[
        "list",
        "--repo",
        repo.to_str().unwrap(),
        "--json",
    ]));
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["drill"]["passed"], true, "list shows the drill");
    assert_eq!(
        std::fs::read_to_string(volume_path(&vol).join("state")).unwrap(),
        "changed\n",
        "the live stack's data was not touched"
    );
}

#[test]
fn a_drill_whose_restored_data_fails_its_check_fails_and_leaves_nothing() {
    let mut p = Project::new("drillbad");
    // Format 2 (an empty directory): the report is a note object.
    let repo = p.tempdir();
    stack(&mut p, "bad\n");
    let id = backup(&p, &repo);
    let out = volsnap(&[
        "drill",
        "--repo",
        repo.to_str().unwrap(),
        "--project",
        &p.name,
        "--check",
        "db=grep -qx ok /data/state",
        "--check-host",
        "echo no rows; exit 3",
        "--timeout",
        "5",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("FAILED"), "{}", stdout(&out));
    assert!(stdout(&out).contains("check db"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("exit status 3: no rows"),
        "{}",
        stdout(&out)
    );
    assert_eq!(drill_leftovers(&id), 0, "nothing left running");
    let list = ok(volsnap(&["list", "--repo", repo.to_str().unwrap()]));
    assert!(list.contains(" d "), "list marks the failed drill: {list}");
}

#[test]
fn a_job_drill_is_recorded_for_status_and_metrics() {
    let mut p = Project::new("drilljob");
    let repo = p.tar_repo();
    stack(&mut p, "ok\n");
    backup(&p, &repo);
    let dir = p.tempdir();
    let config = dir.join("volsnap.toml");
    std::fs::write(
        &config,
        format!(
            "run_log = \"{d}/runs.jsonl\"\nmetrics_file = \"{d}/volsnap.prom\"\n[jobs.stack]\nproject = \"{}\"\nrepo = \"{}\"\n[jobs.stack.drill]\ntimeout = 60\nchecks = {{ db = \"grep -qx ok /data/state\" }}\n",
            p.name,
            repo.display(),
            d = dir.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    ok(volsnap(&["run", "stack", "--drill", "--config", config]));
    let status = ok(volsnap(&["status", "--config", config]));
    assert!(status.contains("last drill:       success"), "{status}");
    let metrics = std::fs::read_to_string(dir.join("volsnap.prom")).unwrap();
    assert!(
        metrics.contains("volsnap_last_drill_success{job=\"stack\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("volsnap_last_drill_healthy_seconds{job=\"stack\"}"));
}

#[test]
fn a_drill_killed_midway_is_cleaned_up_by_recover() {
    let mut p = Project::new("drillkill");
    let repo = p.tar_repo();
    stack(&mut p, "bad\n");
    let id = backup(&p, &repo);
    // A check that never passes keeps the drill copies up for a minute.
    let mut drill = spawn_volsnap(&[
        "drill",
        "--repo",
        repo.to_str().unwrap(),
        "--project",
        &p.name,
        "--check",
        "db=grep -qx ok /data/state",
        "--timeout",
        "60",
    ]);
    wait_until("the drill copies to run", 60, || drill_leftovers(&id) >= 4);
    drill.kill().unwrap();
    drill.wait().unwrap();
    assert!(drill_leftovers(&id) > 0, "SIGKILL left the copies behind");
    let report = ok(volsnap(&["recover"]));
    assert!(report.contains("labelled volsnap.drill="), "{report}");
    assert_eq!(drill_leftovers(&id), 0, "recover removed them all");
    assert!(
        is_running(&format!("{}-db", p.name)),
        "the stack itself runs on"
    );
}

/// After an image change, a drill runs the image the backup was taken with
/// while it is still on the host (by id), and says when it is not.
#[test]
fn a_drill_runs_the_recorded_image_while_it_exists_and_says_when_it_does_not() {
    let mut p = Project::new("drillimg");
    let repo = p.tempdir();
    let old = format!("{IMAGE}-{}", p.name);
    derived_image(IMAGE, &old);
    let vol = p.volume("data", &[]);
    std::fs::write(volume_path(&vol).join("state"), "ok\n").unwrap();
    let m = format!("{vol}:/data");
    let db = p.service_of(&old, "none", "db", &[], &["-v", &m], &["idle"]);
    wait_until("db to run", 30, || is_running(&db));
    let id = backup(&p, &repo);
    let old_id = inspect(&db, "{{.Image}}");

    // The "upgrade": db recreated from another image.
    docker(&["rm", "-f", &db]);
    let db = p.service("db", &[], &["-v", &m], &["idle"]);
    wait_until("db to run", 30, || is_running(&db));
    let drill = |what: &str, recorded: bool| -> Value {
        let mut args = vec![
            "drill",
            "--repo",
            repo.to_str().unwrap(),
            "--project",
            &p.name,
            "--check",
            "db=grep -qx ok /data/state",
            "--json",
        ];
        if recorded {
            args.push("--recorded-images");
        }
        let out = ok(volsnap(&args));
        let report: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["passed"], true, "{what}: {report}");
        report
    };
    // The backup's word alone does not pick an image: the operator asks.
    let report = drill("without --recorded-images", false);
    let notes = report["notes"].to_string();
    assert!(
        notes.contains(&format!("taken with image {old}"))
            && notes.contains("the copy runs the current")
            && notes.contains("--recorded-images"),
        "{notes}"
    );
    let report = drill("recorded image present", true);
    let notes = report["notes"].to_string();
    assert!(
        notes.contains(&format!("runs the image the backup was taken with, {old}"))
            && notes.contains(&old_id.trim_start_matches("sha256:")[..12]),
        "{notes}"
    );
    assert_eq!(id, report["backup_id"].as_str().unwrap());

    docker(&["rmi", &old]);
    let report = drill("recorded image gone", true);
    let notes = report["notes"].to_string();
    assert!(
        notes.contains(&format!("taken with image {old}"))
            && notes.contains("no longer on this host"),
        "{notes}"
    );
}
