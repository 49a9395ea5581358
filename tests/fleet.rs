//! Many hosts, one repository, on a real S3 server (s3s-fs) and a real
//! Docker daemon: two hosts (two state directories, two `--host` names)
//! deduplicate against each other, and back up while a prune holds its
//! exclusive lock and deletes packs holding exactly the data they back up
//! again; every backup verifies afterwards, and `list` shows each host's
//! newest backup.

mod common;

use common::servers::*;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// volsnap as another host: its own state directory and host name.
fn as_host(host: &str, state: &Path, args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volsnap"));
    cmd.args(args)
        .env_remove("VOLSNAP_REPO")
        .env_remove("RUST_LOG")
        .env("VOLSNAP_STATE_DIR", state)
        .env("VOLSNAP_HOST", host)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("cannot run volsnap")
}

fn bucket_bytes(root: &Path) -> u64 {
    files_under(root, "data")
        .iter()
        .map(|f| std::fs::metadata(root.join(f)).unwrap().len())
        .sum()
}

#[test]
fn two_hosts_share_a_bucket_and_back_up_while_a_prune_deletes() {
    let Some(s3) = S3Server::start(S3Kind::S3sFs, "fleet") else {
        return;
    };
    let mut p = Project::new("fleet");
    let shared = pseudo_random(12 << 20, 0xf1ee7);
    let doomed = pseudo_random(8 << 20, 0xd00d);
    // Two stacks, one per host, holding the same big file.
    let mut stacks: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    let mut containers = Vec::new();
    for host in ["alpha", "beta"] {
        let vol = p.volume(&format!("data-{host}"), &[]);
        let src = volume_path(&vol);
        std::fs::write(src.join("shared.bin"), &shared).unwrap();
        std::fs::write(src.join("own.txt"), format!("{host}\n")).unwrap();
        let mount = format!("{vol}:/data");
        containers.push(p.service(&format!("app-{host}"), &[], &["-v", &mount], &["idle"]));
        stacks.push((host.to_string(), src, p.tempdir()));
    }
    let repo = s3.repo("fleet");
    let root = s3.bucket_dir().join("fleet");
    let mut env = s3.env();
    // Marks ripen at once, so that the prune below deletes now.
    env.push(("VOLSNAP_TEST_MARK_AGE_SECS", "0".to_string()));
    ok(volsnap_env(
        &["init", "--repo", &repo],
        &env.iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    ));
    let backup = |host: &str, state: &Path| -> Command {
        let container = &containers[usize::from(host == "beta")];
        as_host(
            host,
            state,
            &[
                "backup",
                "--repo",
                &repo,
                "--container",
                container,
                "--strategy",
                "online",
                "--json",
            ],
            &env,
        )
    };
    let (alpha, beta) = (&stacks[0], &stacks[1]);

    // alpha backs up a file it then deletes: after retention, that file's
    // packs are garbage, condemned by a first prune.
    std::fs::write(alpha.1.join("doomed.bin"), &doomed).unwrap();
    ok(run(backup("alpha", &alpha.2)));
    std::fs::remove_file(alpha.1.join("doomed.bin")).unwrap();
    ok(run(backup("alpha", &alpha.2)));
    let before_beta = bucket_bytes(&root);
    let beta_first = json(&ok(run(backup("beta", &beta.2))));
    let beta_added = bucket_bytes(&root) - before_beta;
    assert!(
        beta_added < (shared.len() / 4) as u64,
        "beta stored {beta_added} bytes of a volume whose 12 MiB alpha had stored already"
    );
    let prune_args = |state: &Path| {
        as_host(
            "pruner",
            state,
            &["prune", "--repo", &repo, "--keep-last", "1", "--json"],
            &env,
        )
    };
    // The pruning host counts a backup as alpha's or beta's only if signed
    // by a key it trusts for that host.
    let pruner = p.tempdir();
    for (host, _, state) in &stacks {
        let fingerprint = host_fingerprint(state);
        ok(run(as_host(
            "pruner",
            &pruner,
            &["host", "trust", host, &fingerprint],
            &env,
        )));
    }
    let first = json(&ok(run(prune_args(&pruner))));
    assert!(
        first["garbage"]["packs_condemned"].as_u64().unwrap() > 0,
        "{first}"
    );

    // Both hosts now back up the doomed file again, while the second prune
    // holds its exclusive lock just before deleting the packs that hold it.
    for (_, src, _) in &stacks {
        std::fs::write(src.join("doomed.bin"), &doomed).unwrap();
    }
    let hold = p.tempdir().join("hold");
    let mut held = prune_args(&pruner);
    held.env("VOLSNAP_FAULT_HOLD_AT", "prune-before-pack-deletion")
        .env("VOLSNAP_FAULT_HOLD_FILE", &hold)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let prune = held.spawn().unwrap();
    wait_until("the prune to hold its exclusive lock", 120, || {
        hold.exists()
    });
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| run(backup("alpha", &alpha.2)));
        let b = scope.spawn(|| run(backup("beta", &beta.2)));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a, b) = (json(&ok(a)), json(&ok(b)));
    std::fs::remove_file(&hold).unwrap();
    let pruned = prune.wait_with_output().unwrap();
    let pruned = json(&ok(pruned));
    let garbage = &pruned["garbage"];
    assert!(
        garbage["packs_deleted"].as_u64().unwrap() > 0,
        "the prune deleted the condemned packs: {pruned}"
    );
    eprintln!(
        "figure: the prune held its exclusive lock {} ms (held open on purpose by the test); both backups ran and committed meanwhile, waiting 0 ms",
        garbage["exclusive_ms"]
    );

    // Every backup verifies, every pack is whole, and each restores the
    // doomed file that the prune deleted an older copy of.
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ok(volsnap_env(
        &[
            "verify",
            "--repo",
            &repo,
            "--all",
            "--read-data-subset",
            "100",
        ],
        &refs,
    ));
    for (backup, (_, src, _)) in [(&a, alpha), (&b, beta)] {
        let id = backup["id"].as_str().unwrap();
        let target = p.tempdir();
        restore_to_dir(&repo, id, &target, &refs);
        assert_same_tree(src, &restored(&target));
    }

    // One listing shows the fleet: each host's newest backup and its age,
    // on a host that trusts their keys (others see them flagged `?`).
    let list = ok(run(as_host(
        "pruner",
        &pruner,
        &["list", "--repo", &repo],
        &env,
    )));
    let fleet = list
        .split("newest backup of each host and stack:")
        .nth(1)
        .unwrap_or_else(|| panic!("{list}"));
    for (host, id) in [("alpha", &a["id"]), ("beta", &b["id"])] {
        let line = fleet
            .lines()
            .find(|l| l.trim_start().starts_with(host))
            .unwrap_or_else(|| panic!("{list}"));
        assert!(
            line.contains(id.as_str().unwrap()) && line.contains("ago"),
            "{line}"
        );
    }
    assert!(
        !fleet.contains(beta_first["id"].as_str().unwrap()),
        "{list}"
    );

    // So does alpha's status, for the repository of its job, once alpha
    // trusts beta's key: here from its configuration file's [trust].
    let dir = p.tempdir();
    let config = dir.join("volsnap.toml");
    let status_hosts = |trust: &str| {
        std::fs::write(
            &config,
            format!(
                "run_log = \"{}/runs.jsonl\"\n{trust}[jobs.nightly]\ncontainers = [\"{}\"]\nrepo = \"{repo}\"\n",
                dir.display(),
                containers[0]
            ),
        )
        .unwrap();
        let status = ok(run(as_host(
            "alpha",
            &alpha.2,
            &["status", "--config", config.to_str().unwrap(), "--json"],
            &env,
        )));
        let newest = &json(&status)[0]["repository_newest"];
        newest
            .as_array()
            .unwrap_or_else(|| panic!("{status}"))
            .iter()
            .map(|n| n["host"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(status_hosts(""), ["alpha"], "beta's key is not trusted yet");
    let trust = format!("[trust]\nbeta = [\"{}\"]\n", host_fingerprint(&beta.2));
    assert_eq!(status_hosts(&trust), ["alpha", "beta"]);
    // A fingerprint that is not one is refused with its line.
    std::fs::write(
        &config,
        format!("[trust]\nbeta = [\"sha256:00\"]\n[jobs.nightly]\ncontainers = [\"x\"]\nrepo = \"{repo}\"\n"),
    )
    .unwrap();
    let out = run(as_host(
        "alpha",
        &alpha.2,
        &["config", "check", "--config", config.to_str().unwrap()],
        &env,
    ));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("line 2") && stderr(&out).contains("fingerprint"),
        "{}",
        stderr(&out)
    );
}
