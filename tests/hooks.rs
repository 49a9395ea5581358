//! Application hooks declared by container labels (`volsnap.pre`,
//! `volsnap.post`, `volsnap.timeout`, `volsnap.on-error`), run inside the
//! real containers through the Docker exec API.

mod common;

use common::*;
use std::path::Path;

fn backup(p: &Project, repo: &Path) -> std::process::Output {
    volsnap(&backup_args(&p.name, repo, &["--strategy", "cold"]))
}

fn backups_in(repo: &Path) -> usize {
    std::fs::read_dir(repo)
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
                && e.as_ref().unwrap().file_name() != "volsnap-format-1"
        })
        .count()
}

#[test]
fn hooks_run_in_order_pre_before_the_archive_post_after_the_restart() {
    let mut p = Project::new("hookorder");
    let repo = p.tar_repo();
    let vol = p.volume("data", &[]);
    let m = format!("{vol}:/data");
    let log = volume_path(&vol).join("hooks.log");
    let hook = |what: &str| format!("echo {what} >> /data/hooks.log");
    let (db_pre, db_post) = (hook("pre-db"), hook("post-db"));
    let (app_pre, app_post) = (hook("pre-app"), hook("post-app"));
    p.service(
        "db",
        &[],
        &[
            "-v",
            &m,
            "-l",
            &format!("volsnap.pre={db_pre}"),
            "-l",
            &format!("volsnap.post={db_post}"),
        ],
        &["idle"],
    );
    p.service(
        "app",
        &["db"],
        &[
            "-v",
            &m,
            "-l",
            &format!("volsnap.pre={app_pre}"),
            "-l",
            &format!("volsnap.post={app_post}"),
        ],
        &["idle"],
    );
    let plan = ok(volsnap(&[
        "plan",
        "--project",
        &p.name,
        "--strategy",
        "cold",
    ]));
    assert!(
        plan.contains("volsnap.pre hook of"),
        "plan shows the hooks: {plan}"
    );

    ok(backup(&p, &repo));
    let ran = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        ran.lines().collect::<Vec<_>>(),
        ["pre-app", "pre-db", "post-db", "post-app"],
        "pre hooks dependents first, post hooks dependencies first"
    );
    // The archive holds what the pre hooks wrote and nothing of the post hooks.
    let out = p.tempdir().join("restored");
    ok(volsnap(&[
        "restore",
        "--repo",
        repo.to_str().unwrap(),
        "latest",
        "--target-dir",
        out.to_str().unwrap(),
    ]));
    let archived = std::fs::read_to_string(out.join(&vol).join("hooks.log")).unwrap();
    assert_eq!(archived, "pre-app\npre-db\n");
}

#[test]
fn a_hook_that_times_out_or_fails_stops_the_backup_before_anything_is_stopped() {
    let mut p = Project::new("hookfail");
    let repo = p.tar_repo();
    let vol = p.volume("data", &[]);
    let m = format!("{vol}:/data");
    let slow = p.service(
        "slow",
        &[],
        &[
            "-v",
            &m,
            "-l",
            // A child forked in the background must die with the hook.
            "volsnap.pre=sleep 31 & sleep 30",
            "-l",
            "volsnap.timeout=1",
        ],
        &["idle"],
    );
    wait_until("slow to run", 30, || is_running(&slow));
    let started = inspect(&slow, "{{.State.StartedAt}}");
    let out = backup(&p, &repo);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did not finish within 1 s"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        inspect(&slow, "{{.State.StartedAt}}"),
        started,
        "never stopped"
    );
    assert_eq!(backups_in(&repo), 0, "no backup, no partial");
    let processes = docker(&["exec", &slow, "ps"]);
    assert!(
        !processes.contains("sleep 30") && !processes.contains("sleep 31"),
        "the hook was killed with its whole process tree: {processes}"
    );
}

#[test]
fn a_hook_that_prints_without_end_does_not_grow_volsnaps_memory() {
    let mut p = Project::new("hookchatty");
    let repo = p.tar_repo();
    let vol = p.volume("data", &[]);
    let m = format!("{vol}:/data");
    // 400 MB of output, then a failure: only the end is shown.
    let chatty = p.service(
        "chatty",
        &[],
        &[
            "-v",
            &m,
            "-l",
            "volsnap.pre=yes chatty-hook | head -c 400000000; echo the-very-end; exit 3",
        ],
        &["idle"],
    );
    wait_until("chatty to run", 30, || is_running(&chatty));
    let out = backup(&p, &repo);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exited with status 3") && stderr(&out).contains("the-very-end"),
        "{}",
        &stderr(&out)[..stderr(&out).len().min(2000)]
    );
    assert!(stderr(&out).len() < 64 << 10, "the message is bounded too");
    // The largest child this test waited for (volsnap, the docker CLI).
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let peak_mib = usage.max_rss() / 1024;
    assert!(
        peak_mib < 200,
        "volsnap held the hook's output: peak RSS {peak_mib} MiB for 400 MB of output"
    );
}

#[test]
fn on_error_continue_warns_and_fail_runs_the_post_hook_during_cleanup() {
    let mut p = Project::new("hookerr");
    let repo = p.tar_repo();
    let vol = p.volume("data", &[]);
    let m = format!("{vol}:/data");
    let tolerant = p.service(
        "tolerant",
        &[],
        &[
            "-v",
            &m,
            "-l",
            "volsnap.pre=exit 4",
            "-l",
            "volsnap.on-error=continue",
        ],
        &["idle"],
    );
    wait_until("tolerant to run", 30, || is_running(&tolerant));
    let out = backup(&p, &repo);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exited with status 4"),
        "{}",
        stderr(&out)
    );
    assert_eq!(backups_in(&repo), 1);

    // A failing pre hook (on-error=fail, the default) aborts the backup, and
    // the post hook still runs as cleanup.
    let mut q = Project::new("hookcleanup");
    let vol = q.volume("data", &[]);
    let m = format!("{vol}:/data");
    let strict = q.service(
        "strict",
        &[],
        &[
            "-v",
            &m,
            "-l",
            "volsnap.pre=echo pre >> /data/log; echo boom; exit 5",
            "-l",
            "volsnap.post=echo post >> /data/log",
        ],
        &["idle"],
    );
    wait_until("strict to run", 30, || is_running(&strict));
    let repo = q.tar_repo();
    let out = backup(&q, &repo);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exited with status 5") && stderr(&out).contains("boom"),
        "names the status and shows the output: {}",
        stderr(&out)
    );
    let ran = std::fs::read_to_string(volume_path(&vol).join("log")).unwrap();
    assert_eq!(ran, "pre\npost\n");
    assert!(is_running(&strict));
    assert_eq!(backups_in(&repo), 0);
}
