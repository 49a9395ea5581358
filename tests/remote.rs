//! Format-2 repositories on real servers started here on 127.0.0.1: every
//! command against s3s-fs (S3) and OpenSSH (SFTP); a server killed in the
//! middle of a backup, and one restarted while a backup retries; bad
//! credentials, a missing bucket and an unreachable endpoint failing before
//! anything is stopped; moto honouring conditional creates and rclone's
//! `serve s3` ignoring them.

mod common;

use common::servers::*;
use common::*;
use serde_json::Value;
use std::path::Path;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn run(args: &[&str], env: &[(&'static str, String)]) -> std::process::Output {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    volsnap_env(args, &env)
}

fn run_ok(args: &[&str], env: &[(&'static str, String)]) -> String {
    ok(run(args, env))
}

/// The time a container last started (a stop and start changes it).
fn started_at(container: &str) -> String {
    inspect(container, "{{.State.StartedAt}}")
}

/// Restores `id` of `repo` into a new volume beside `vol` and checks it
/// against `src` byte for byte.
fn restore_matches(
    p: &mut Project,
    repo: &str,
    env: &[(&'static str, String)],
    id: &str,
    vol: &str,
    src: &Path,
) {
    let copy = format!("{vol}_copy");
    p.adopt_volume(&copy);
    let mapping = format!("{vol}={copy}");
    run_ok(&["restore", "--repo", repo, id, "--volume", &mapping], env);
    assert_same_tree(src, &volume_path(&copy));
}

/// A stack with one volume of `mib` MiB of incompressible data and a
/// little text, and a service using it.
fn stack(p: &mut Project, mib: usize) -> (String, String, std::path::PathBuf) {
    let vol = p.volume("data", &[]);
    let src = volume_path(&vol);
    make_fixture(&src);
    std::fs::write(src.join("objects.bin"), pseudo_random(mib << 20, 0x5eed)).unwrap();
    std::fs::write(src.join("app.log"), b"a log line\n".repeat(20_000)).unwrap();
    let mount = format!("{vol}:/data");
    let app = p.service("app", &[], &["-v", &mount], &["idle"]);
    (vol, app, src)
}

/// Every format-2 command on one server: init, backup (first and
/// unchanged), list, verify (one backup, deep, the whole repository),
/// restore byte for byte, export into GNU tar, protect, prune, drill, and a
/// job run with status.
fn every_command(
    name: &str,
    repo: &str,
    env: &[(&'static str, String)],
    objects: &dyn Fn(&str) -> usize,
) {
    let mut p = Project::new(name);
    let (vol, app, src) = stack(&mut p, 24);
    let project = p.name.clone();

    let init = run_ok(&["init", "--repo", repo], env);
    assert!(init.contains("format-2"), "{init}");
    let again = run(&["init", "--repo", repo], env);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    let tar = run(&["init", "--format", "tar", "--repo", repo], env);
    assert_eq!(tar.status.code(), Some(2), "{}", stderr(&tar));
    assert!(
        stderr(&tar).contains("local directories only"),
        "{}",
        stderr(&tar)
    );

    let backup = |extra: &[&str]| {
        let mut args = vec!["backup", "--project", &project, "--repo", repo, "--json"];
        args.extend_from_slice(extra);
        json(&run_ok(&args, env))
    };
    let first = backup(&["--strategy", "cold"]);
    let first_id = first["id"].as_str().unwrap().to_string();
    let packs_first = objects("data/");
    assert!(packs_first > 0, "no pack was stored");
    assert!(is_running(&app), "the service was not started again");

    // Nothing changed: no new pack, one more commit.
    let second = backup(&["--strategy", "online"]);
    let second_id = second["id"].as_str().unwrap().to_string();
    assert_eq!(
        objects("data/"),
        packs_first,
        "an unchanged backup stored data"
    );
    assert_eq!(objects("snapshots/"), 2);

    let list = run_ok(&["list", "--repo", repo], env);
    assert!(
        list.contains(&first_id) && list.contains(&second_id),
        "{list}"
    );
    run_ok(&["verify", "--repo", repo, &first_id, "--deep"], env);
    let all = run_ok(
        &[
            "verify",
            "--repo",
            repo,
            "--all",
            "--read-data-subset",
            "100",
        ],
        env,
    );
    assert!(all.contains("intact"), "{all}");

    // Restore into a new volume: byte for byte.
    restore_matches(&mut p, repo, env, &first_id, &vol, &src);

    // Export into GNU tar.
    let out = p.tempdir();
    let exported = run(&["export", "--repo", repo, &second_id, &vol], env);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let mut tar = std::process::Command::new("tar")
        .args(["-x", "-C"])
        .arg(&out)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    tar.stdin
        .take()
        .unwrap()
        .write_all(&exported.stdout)
        .unwrap();
    assert!(tar.wait().unwrap().success());
    assert_eq!(
        std::fs::read(out.join("objects.bin")).unwrap(),
        std::fs::read(src.join("objects.bin")).unwrap()
    );

    // Protect the first, prune to one: both stay; lift it: the first goes.
    run_ok(&["protect", "--repo", repo, &first_id], env);
    let pruned = run_ok(&["prune", "--repo", repo, "--keep-last", "1"], env);
    assert!(pruned.contains("keep"), "{pruned}");
    assert_eq!(objects("snapshots/"), 2, "a protected backup was pruned");
    run_ok(&["protect", "--repo", repo, &first_id, "--remove"], env);
    run_ok(&["prune", "--repo", repo, "--keep-last", "1"], env);
    assert_eq!(objects("snapshots/"), 1);
    run_ok(&["verify", "--repo", repo, "latest", "--deep"], env);

    // A drill restores the latest into scratch volumes and starts it.
    let drill = run(
        &["drill", "--repo", repo, "latest", "--project", &project],
        env,
    );
    assert!(drill.status.success(), "{}", stderr(&drill));

    // A job whose repository is this server, and its status.
    let config = p.tempdir().join("volsnap.toml");
    std::fs::write(
        &config,
        format!(
            "[jobs.remote]\nproject = \"{project}\"\nrepo = \"{repo}\"\nstrategy = \"online\"\nverify = true\n"
        ),
    )
    .unwrap();
    let config_s = config.to_str().unwrap();
    run_ok(&["run", "--config", config_s, "remote"], env);
    let status = run_ok(&["status", "--config", config_s], env);
    assert!(status.contains("remote"), "{status}");
    assert_eq!(objects("snapshots/"), 2);
}

#[test]
fn every_command_works_on_an_s3_server() {
    let Some(server) = S3Server::start(S3Kind::S3sFs, "every_command_works_on_an_s3_server") else {
        return;
    };
    let repo = server.repo("stacks/one");
    let root = server.bucket_dir().join("stacks/one");
    every_command("s3", &repo, &server.env(), &|prefix| {
        files_under(&root, prefix).len()
    });
}

#[test]
fn every_command_works_over_sftp() {
    let Some(server) = SftpServer::start("every_command_works_over_sftp") else {
        return;
    };
    let repo = server.repo("one");
    let root = server.dir_of("one");
    every_command("sftp", &repo, &server.env(), &|prefix| {
        files_under(&root, prefix)
            .iter()
            .filter(|f| !f.contains("/.tmp-"))
            .count()
    });
}

/// An s3s-fs server and a stack with `mib` MiB of data, for `test`; `None`
/// (said loudly) where the server is not installed.
struct S3Case {
    server: S3Server,
    p: Project,
    project: String,
    vol: String,
    app: String,
    src: std::path::PathBuf,
}

fn s3_case(test: &str, short: &str, mib: usize) -> Option<S3Case> {
    let server = S3Server::start(S3Kind::S3sFs, test)?;
    let mut p = Project::new(short);
    let (vol, app, src) = stack(&mut p, mib);
    let project = p.name.clone();
    Some(S3Case {
        server,
        p,
        project,
        vol,
        app,
        src,
    })
}

fn commits(root: &Path) -> usize {
    files_under(root, "snapshots/").len()
}

#[test]
fn a_server_killed_mid_backup_leaves_no_backup_and_the_next_one_succeeds() {
    let Some(S3Case {
        mut server,
        p: _p,
        project,
        vol: _vol,
        app,
        src,
    }) = s3_case(
        "a_server_killed_mid_backup_leaves_no_backup_and_the_next_one_succeeds",
        "kill",
        8,
    )
    else {
        return;
    };
    let repo = server.repo("k");
    let root = server.bucket_dir().join("k");
    let mut env = server.env();
    env.push(("VOLSNAP_TEST_RETRIES", "1".into()));
    run_ok(&["init", "--repo", &repo], &env);
    let backup_args = ["backup", "--project", &project, "--repo", &repo];
    run_ok(&backup_args, &env);
    assert_eq!(commits(&root), 1);

    // 64 MiB more, uploaded at 8 MiB/s: the server dies half way.
    std::fs::write(src.join("more.bin"), pseudo_random(64 << 20, 7)).unwrap();
    let started = started_at(&app);
    let mut args = backup_args.to_vec();
    args.extend(["--strategy", "cold", "--upload-limit", "8M"]);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let packs_before = files_under(&root, "data/").len();
    let child = spawn_volsnap_env(&args, &env_refs);
    wait_until("the backup uploads a pack", 300, || {
        files_under(&root, "data/").len() > packs_before
    });
    server.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(!message.contains(SECRET_KEY), "{message}");
    assert!(is_running(&app), "the service was left stopped");
    assert_ne!(
        started_at(&app),
        started,
        "the cold backup never stopped the service"
    );
    assert_eq!(commits(&root), 1, "a failed backup left a commit");

    // After a restart the earlier backup verifies, and the next succeeds.
    server.restart();
    let verified = run_ok(
        &[
            "verify",
            "--repo",
            &repo,
            "--all",
            "--read-data-subset",
            "100",
        ],
        &env,
    );
    assert!(verified.contains("intact"), "{verified}");
    run_ok(&backup_args, &env);
    assert_eq!(commits(&root), 2);
    run_ok(&["verify", "--repo", &repo, "latest", "--deep"], &env);
    // Prune removes what the killed run left unreferenced.
    run_ok(&["prune", "--repo", &repo, "--keep-last", "5"], &env);
}

#[test]
fn a_server_restarting_during_a_backup_is_ridden_out() {
    let Some(S3Case {
        mut server,
        mut p,
        project,
        vol,
        app: _app,
        src,
    }) = s3_case(
        "a_server_restarting_during_a_backup_is_ridden_out",
        "blip",
        48,
    )
    else {
        return;
    };
    let repo = server.repo("b");
    let env = server.env();
    run_ok(&["init", "--repo", &repo], &env);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let child = spawn_volsnap_env(
        &[
            "backup",
            "--project",
            &project,
            "--repo",
            &repo,
            "--upload-limit",
            "8M",
        ],
        &env_refs,
    );
    let root = server.bucket_dir().join("b");
    wait_until("the backup uploads a pack", 300, || {
        !files_under(&root, "data/").is_empty()
    });
    // Down for two seconds: refused connections are retried with backoff.
    server.kill();
    std::thread::sleep(std::time::Duration::from_secs(2));
    server.restart();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    restore_matches(&mut p, &repo, &env, "latest", &vol, &src);
}

#[test]
fn bad_credentials_a_missing_bucket_and_no_server_fail_before_anything_stops() {
    let Some(S3Case {
        server,
        p: _p,
        project,
        vol: _vol,
        app,
        src: _src,
    }) = s3_case(
        "bad_credentials_a_missing_bucket_and_no_server_fail_before_anything_stops",
        "cred",
        1,
    )
    else {
        return;
    };
    let started = started_at(&app);
    let wrong_secret = "wrong-secret-do-not-print-9876";
    let mut wrong = server.env();
    wrong.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    wrong.push(("AWS_SECRET_ACCESS_KEY", wrong_secret.into()));
    let mut missing_bucket = server.env();
    missing_bucket.push(("VOLSNAP_TEST_RETRIES", "1".into()));
    let mut no_server = server.env();
    no_server.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    no_server.push((
        "AWS_ENDPOINT_URL",
        format!("http://127.0.0.1:{}", free_port()),
    ));
    no_server.push(("VOLSNAP_TEST_RETRIES", "1".into()));
    for (what, env, repo, expect) in [
        ("wrong secret", &wrong, server.repo("c"), "access denied"),
        (
            "missing bucket",
            &missing_bucket,
            "s3://no-such-bucket/x".to_string(),
            "bucket does not exist",
        ),
        ("no server", &no_server, server.repo("c"), "cannot reach"),
    ] {
        let out = run(
            &[
                "backup",
                "--project",
                &project,
                "--repo",
                &repo,
                "--strategy",
                "cold",
            ],
            env,
        );
        let message = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {message}");
        assert!(message.contains(expect), "{what}: {message}");
        assert!(
            !message.contains(wrong_secret) && !message.contains(SECRET_KEY),
            "{what}: {message}"
        );
        assert_eq!(
            message.trim().lines().count(),
            1,
            "{what}: more than one line: {message}"
        );
        assert_eq!(started_at(&app), started, "{what}: the service was stopped");
    }
}

#[test]
fn conditional_creates_are_checked_and_a_server_ignoring_them_is_named() {
    let Some(moto) = S3Server::start(
        S3Kind::Moto,
        "conditional_creates_are_checked_and_a_server_ignoring_them_is_named",
    ) else {
        return;
    };
    let Some(rclone) = S3Server::start(
        S3Kind::Rclone,
        "conditional_creates_are_checked_and_a_server_ignoring_them_is_named",
    ) else {
        return;
    };
    let mut p = Project::new("cond");
    let (_vol, _app, _src) = stack(&mut p, 1);
    let project = p.name.clone();

    // moto honours If-None-Match: no note, and a first backup may init.
    let env = moto.env();
    let init = run_ok(&["init", "--repo", &moto.repo("m")], &env);
    assert!(!init.contains("ignores"), "{init}");
    run_ok(
        &[
            "backup",
            "--project",
            &project,
            "--repo",
            &moto.repo("fresh"),
        ],
        &env,
    );

    // rclone ignores it: init says so, a first backup refuses to init,
    // and once initialised, backups and prune work.
    let env = rclone.env();
    let init = run_ok(&["init", "--repo", &rclone.repo("r")], &env);
    assert!(init.contains("ignores conditional creates"), "{init}");
    let out = run(
        &[
            "backup",
            "--project",
            &project,
            "--repo",
            &rclone.repo("fresh"),
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("volsnap init"), "{}", stderr(&out));
    for _ in 0..2 {
        run_ok(
            &["backup", "--project", &project, "--repo", &rclone.repo("r")],
            &env,
        );
    }
    run_ok(
        &["prune", "--repo", &rclone.repo("r"), "--keep-last", "1"],
        &env,
    );
    run_ok(
        &[
            "verify",
            "--repo",
            &rclone.repo("r"),
            "--all",
            "--read-data-subset",
            "100",
        ],
        &env,
    );
}

#[test]
fn transient_server_errors_are_retried() {
    let Some(S3Case {
        server,
        mut p,
        project,
        vol,
        app: _app,
        src,
    }) = s3_case("transient_server_errors_are_retried", "flaky", 40)
    else {
        return;
    };
    // Every fifth connection is answered 503 Slow Down (a request would
    // have to meet seven of them in a row to fail).
    let proxy = FlakyProxy::start(server.port, 5);
    let repo = server.repo("f");
    let mut env = server.env();
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push((
        "AWS_ENDPOINT_URL",
        format!("http://127.0.0.1:{}", proxy.port),
    ));
    run_ok(&["init", "--repo", &repo], &env);
    run_ok(&["backup", "--project", &project, "--repo", &repo], &env);
    restore_matches(&mut p, &repo, &env, "latest", &vol, &src);
    let refused = proxy.refused.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        refused > 0,
        "the proxy never answered 503: the test proved nothing"
    );
    eprintln!("{refused} requests were answered 503 and retried");
}

#[test]
fn the_upload_limit_caps_the_rate_and_is_for_servers_only() {
    let Some(S3Case {
        server,
        mut p,
        project,
        vol: _vol,
        app: _app,
        src: _src,
    }) = s3_case(
        "the_upload_limit_caps_the_rate_and_is_for_servers_only",
        "limit",
        24,
    )
    else {
        return;
    };
    let repo = server.repo("l");
    let env = server.env();
    run_ok(&["init", "--repo", &repo], &env);
    // About 25 MiB of incompressible data at 4 MiB/s, of which at most one
    // part (9 MiB) passes as a burst: at least 4 s, however fast the machine.
    let started = std::time::Instant::now();
    run_ok(
        &[
            "backup",
            "--project",
            &project,
            "--repo",
            &repo,
            "--upload-limit",
            "4M",
        ],
        &env,
    );
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(3),
        "25 MiB went up in {took:?} under a 4 MiB/s limit"
    );
    eprintln!("25 MiB under --upload-limit 4M took {took:?}");
    let local = p.tempdir();
    let out = run(
        &[
            "backup",
            "--project",
            &project,
            "--repo",
            local.to_str().unwrap(),
            "--upload-limit",
            "4M",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--bwlimit"), "{}", stderr(&out));
}
