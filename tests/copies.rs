//! Copies between repositories (3-2-1), against a real Docker daemon and
//! real S3 (s3s-fs) and SFTP (OpenSSH) servers on 127.0.0.1: a write-only
//! host copies its encrypted backups off-site without an identity, a second
//! copy sends only what changed, and restores from the copies match the
//! volume byte for byte.

mod common;

use common::servers::*;
use common::*;
use serde_json::Value;
use std::path::Path;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn env_refs<'a>(env: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn a_write_only_host_copies_off_site_sending_only_what_changed() {
    let Some(s3) = S3Server::start(S3Kind::S3sFs, "copies") else {
        return;
    };
    let Some(sftp) = SftpServer::start("copies") else {
        return;
    };
    let mut p = Project::new("copy");
    let keys = p.tempdir();
    let (identity, recipient) = keygen(&keys, "reader");
    let vol = p.volume("data", &[]);
    let src = volume_path(&vol);
    make_fixture(&src);
    std::fs::write(src.join("objects.bin"), pseudo_random(24 << 20, 0xc0b)).unwrap();
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    let project = p.name.clone();

    let local = p.tempdir().join("repo");
    let local = local.to_str().unwrap().to_string();
    ok(volsnap(&[
        "init",
        "--repo",
        &local,
        "--recipient",
        &recipient,
    ]));
    let backup = || -> String {
        let out = ok(volsnap(&[
            "backup",
            "--project",
            &project,
            "--repo",
            &local,
            "--strategy",
            "online",
            "--json",
        ]));
        json(&out)["id"].as_str().unwrap().to_string()
    };
    let first = backup();

    // No identity anywhere below until the restores: the host holds only
    // the write key file init wrote into its state directory.
    let mut env = s3.env();
    env.extend(sftp.env());
    let env = env_refs(&env);
    let offsite = s3.repo("offsite");
    let said = ok(volsnap_env(
        &["init", "--repo", &offsite, "--like", &local],
        &env,
    ));
    assert!(said.contains("same keys"), "{said}");
    let copy = |from: &str, to: &str, extra: &[&str]| -> Value {
        let mut args = vec!["copy", "--from", from, "--to", to, "--json"];
        args.extend_from_slice(extra);
        json(&ok(volsnap_env(&args, &env)))
    };
    let full = copy(&local, &offsite, &[]);
    assert_eq!(full["copied"], serde_json::json!([first]), "{full}");
    let first_bytes = full["bytes_sent"].as_u64().unwrap();
    assert!(first_bytes > 20 << 20, "{full}");

    // A change of 1 MiB in 24: the second copy sends the chunks around it
    // (content-defined, 1 MiB on average, at most 4 MiB each, their
    // boundaries seeded per repository), not the volume again.
    let mut bytes = std::fs::read(src.join("objects.bin")).unwrap();
    bytes[5 << 20..6 << 20].copy_from_slice(&pseudo_random(1 << 20, 0xd1f));
    std::fs::write(src.join("objects.bin"), &bytes).unwrap();
    std::fs::write(src.join("new.txt"), b"written after the first copy\n").unwrap();
    let second = backup();
    let incremental = copy(&local, &offsite, &[]);
    assert_eq!(
        incremental["copied"],
        serde_json::json!([second]),
        "{incremental}"
    );
    assert_eq!(
        incremental["present"],
        serde_json::json!([first]),
        "{incremental}"
    );
    let second_bytes = incremental["bytes_sent"].as_u64().unwrap();
    assert!(
        second_bytes * 2 < first_bytes,
        "the second copy sent {second_bytes} bytes against {first_bytes} for the first"
    );
    let again = copy(&local, &offsite, &[]);
    assert_eq!(again["copied"], serde_json::json!([]), "{again}");
    assert_eq!(again["bytes_sent"], 0, "{again}");

    // Nothing of the volume is readable in the bucket, and the copy's
    // structure checks out with the write key alone.
    let list = ok(volsnap_env(&["list", "--repo", &offsite], &env));
    assert!(list.contains(&first) && list.contains(&second), "{list}");
    ok(volsnap_env(&["verify", "--repo", &offsite, "--all"], &env));

    // A chain: S3 to SFTP, the newest backup only.
    let far = sftp.repo("far");
    ok(volsnap_env(
        &["init", "--repo", &far, "--like", &offsite],
        &env,
    ));
    let chained = copy(&offsite, &far, &["latest", "--project", &project]);
    assert_eq!(chained["copied"], serde_json::json!([second]), "{chained}");

    // Reading takes the identity; the copies restore the volume exactly.
    let mut reader = env.clone();
    let identity = identity.to_str().unwrap().to_string();
    reader.push(("VOLSNAP_IDENTITY_FILE", &identity));
    for repo in [&offsite, &far] {
        let target = p.tempdir();
        restore_to_dir(repo, &second, &target, &reader);
        assert_same_tree(&src, &restored(&target));
    }
    let target = p.tempdir();
    restore_to_dir(&offsite, &first, &target, &reader);
    let old = std::fs::read(restored(&target).join("objects.bin")).unwrap();
    assert_eq!(
        old,
        pseudo_random(24 << 20, 0xc0b),
        "the first backup's copy"
    );

    // A destination that does not share the keys is refused before
    // anything is sent, saying how to make one that does.
    let plain = p.tempdir().join("plain");
    let plain = plain.to_str().unwrap().to_string();
    ok(volsnap(&["init", "--repo", &plain]));
    let out = volsnap_env(&["copy", "--from", &local, "--to", &plain], &env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--like"), "{}", stderr(&out));
    assert!(files_under(Path::new(&plain), "data").is_empty());
}

#[test]
fn plain_repositories_copy_without_like_and_a_killed_copy_leaves_nothing_that_looks_complete() {
    let mut p = Project::new("copyplain");
    let vol = p.volume("data", &[]);
    let src = volume_path(&vol);
    make_fixture(&src);
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    let project = p.name.clone();
    let a = p.tempdir().join("a");
    let b = p.tempdir().join("b");
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    ok(volsnap(&["init", "--repo", a]));
    ok(volsnap(&["init", "--repo", b]));
    let out = ok(volsnap(&backup_args(&project, Path::new(a), &["--json"])));
    let id = json(&out)["id"].as_str().unwrap().to_string();

    // Killed after the packs and the index, before the commit: the
    // destination lists no backup, and the next copy completes it.
    let out = volsnap_env(
        &["copy", "--from", a, "--to", b],
        &[("VOLSNAP_FAULT_KILL_AT", "copy-before-commits")],
    );
    assert!(!out.status.success(), "{}", stdout(&out));
    let list = ok(volsnap(&["list", "--repo", b]));
    assert!(!list.contains(&id), "{list}");
    let done = json(&ok(volsnap(&["copy", "--from", a, "--to", b, "--json"])));
    assert_eq!(done["copied"], serde_json::json!([id]), "{done}");
    assert_eq!(done["bytes_sent"], 0, "the packs were there: {done}");
    let target = p.tempdir();
    restore_to_dir(b, &id, &target, &[]);
    assert_same_tree(&src, &restored(&target));

    // Copying a repository into itself is refused.
    let out = volsnap(&["copy", "--from", a, "--to", a]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn a_job_copies_each_new_backup_and_applies_its_retention_to_the_copy() {
    let mut p = Project::new("copyjob");
    let vol = p.volume("data", &[]);
    let src = volume_path(&vol);
    std::fs::write(src.join("state"), "one\n").unwrap();
    let mount = format!("{vol}:/data");
    p.service("db", &[], &["-v", &mount], &["idle"]);
    let repo = p.tempdir().join("repo");
    std::fs::create_dir(&repo).unwrap();
    // Does not exist yet: the first copy makes it like the job's repo.
    let offsite = p.tempdir().join("offsite");
    let dir = p.tempdir();
    let config = dir.join("volsnap.toml");
    std::fs::write(
        &config,
        format!(
            "run_log = \"{d}/runs.jsonl\"\nmetrics_file = \"{d}/volsnap.prom\"\n[jobs.nightly]\nproject = \"{}\"\nrepo = \"{}\"\nstrategy = \"online\"\ncopy_to = [\"{}\"]\n[jobs.nightly.retention]\nkeep_last = 1\n",
            p.name,
            repo.display(),
            offsite.display(),
            d = dir.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    ok(volsnap(&["run", "nightly", "--config", config]));
    std::fs::write(src.join("state"), "two\n").unwrap();
    ok(volsnap(&["run", "nightly", "--config", config]));

    let records: Vec<Value> = std::fs::read_to_string(dir.join("runs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r["status"], "success", "{r}");
        assert_eq!(
            r["copied_to"],
            serde_json::json!([offsite.display().to_string()]),
            "{r}"
        );
        assert!(r["copy_bytes"].as_u64().unwrap() > 0, "{r}");
    }
    let newest = records[1]["backup_id"].as_str().unwrap();
    let listed = json(&ok(volsnap(&[
        "list",
        "--repo",
        offsite.to_str().unwrap(),
        "--json",
    ])));
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [newest], "retention applies to the copy too");
    let target = p.tempdir();
    restore_to_dir(offsite.to_str().unwrap(), newest, &target, &[]);
    assert_eq!(
        std::fs::read_to_string(restored(&target).join("state")).unwrap(),
        "two\n"
    );
    let status = ok(volsnap(&["status", "--config", config]));
    assert!(
        status.contains(&format!("copied to:        {}", offsite.display())),
        "{status}"
    );
    let metrics = std::fs::read_to_string(dir.join("volsnap.prom")).unwrap();
    assert!(
        metrics.contains("volsnap_last_copy_bytes{job=\"nightly\"}"),
        "{metrics}"
    );
}
