//! What a stack's services need around a backup and a restore beyond a
//! file copy: their own stop timeouts (longer than volsnap's default,
//! waited for), and after-restore steps, one of which fails.

mod common;

use common::*;
use serde_json::Value;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A service that takes 31 s to stop while /tmp/slow exists (its own stop
/// timeout is 45 s, volsnap's default 30 s), and whose after-restore step
/// fails while /tmp/fail-step exists; a dependent of it.
#[test]
fn a_long_own_stop_timeout_is_waited_for_and_a_failing_after_restore_step_leaves_the_stack_stopped()
{
    let mut p = Project::new("steps");
    let repo = p.tempdir();
    let repo_s = repo.to_str().unwrap();
    ok(volsnap(&["init", "--repo", repo_s]));
    let vol = p.volume("data", &[]);
    std::fs::write(volume_path(&vol).join("records"), b"1\n2\n").unwrap();
    let mount = format!("{vol}:/data");
    let db = p.service(
        "db",
        &[],
        &[
            "-v",
            &mount,
            "--stop-timeout",
            "45",
            "--label",
            "volsnap.after-restore=test ! -f /tmp/fail-step && test -f /data/records",
            "--label",
            "volsnap.after-restore-timeout=10",
        ],
        &[
            "sh",
            "-c",
            "trap 'test -f /tmp/slow && sleep 31; exit 0' TERM; while :; do sleep 1; done",
        ],
    );
    let app_vol = p.volume("cache", &[]);
    let app_mount = format!("{app_vol}:/cache");
    let app = p.service("app", &["db"], &["-v", &app_mount], &["idle"]);

    let plan = ok(volsnap(&["plan", "--project", &p.name]));
    assert!(plan.contains("stop timeout 45 s, its own"), "{plan}");

    // Stopping takes longer than volsnap's default and within the
    // service's own timeout: waited for, a clean stop, consistent.
    docker(&["exec", &db, "touch", "/tmp/slow"]);
    let backup = json(&ok(volsnap(&[
        "backup",
        "--project",
        &p.name,
        "--repo",
        repo_s,
        "--strategy",
        "cold",
        "--json",
    ])));
    docker(&["exec", &db, "rm", "-f", "/tmp/slow"]);
    let stop = backup["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == db.as_str())
        .map(|c| c["stop"].clone())
        .unwrap_or_else(|| panic!("{backup}"));
    assert_eq!(stop["killed"], false, "{backup}");
    assert_eq!(stop["timeout_secs"], 45, "{backup}");
    assert!(
        stop["took_ms"].as_u64().unwrap() >= 30_000,
        "the stop took its 31 s: {backup}"
    );
    assert_eq!(backup["consistency"], "consistent", "{backup}");
    let id = backup["id"].as_str().unwrap();

    // In place: db's step fails. The data is in place, db is stopped
    // again, app never starts, and the restore fails naming the step.
    std::fs::write(volume_path(&vol).join("records"), b"damaged").unwrap();
    docker(&["exec", &db, "touch", "/tmp/fail-step"]);
    let out = volsnap(&["restore", "--repo", repo_s, id, "--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains(&format!("the after-restore step of {db}")) && said.contains("left stopped"),
        "{said}"
    );
    assert!(
        !is_running(&db) && !is_running(&app),
        "db running {}, app running {}: {said}",
        is_running(&db),
        is_running(&app)
    );
    assert_eq!(
        std::fs::read(volume_path(&vol).join("records")).unwrap(),
        b"1\n2\n"
    );
    // Left stopped on purpose: recover has nothing to start.
    let recover = ok(volsnap(&["recover", "--dry-run"]));
    assert!(
        !recover.contains(&db) && !recover.contains(&app),
        "{recover}"
    );

    // Once the cause is fixed, the same restore starts both again.
    docker(&["start", &db]);
    docker(&["exec", &db, "rm", "/tmp/fail-step"]);
    docker(&["start", &app]);
    std::fs::write(volume_path(&vol).join("records"), b"damaged").unwrap();
    ok(volsnap(&["restore", "--repo", repo_s, id, "--force"]));
    assert!(is_running(&db) && is_running(&app));
    assert_eq!(
        std::fs::read(volume_path(&vol).join("records")).unwrap(),
        b"1\n2\n"
    );
}
