//! A Milvus-shaped stack end to end, from real servers: etcd (Debian's
//! etcd-server), an S3 object store in MinIO's place (s3s-fs, in a container,
//! its data in a volume) and an application that writes a segment object
//! and then the etcd key naming it with the object's SHA-256 (Milvus's own
//! order), all on btrfs, under load. After a cold and a snapshot backup, a
//! restore into new volumes must have every key pointing to an object with
//! the right checksum; the same check on an online backup shows what
//! `best-effort` means, beside the files its report names.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

const MILVUS_IMAGE: &str = "volsnap-test/milvus-parts:1";

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Whether the stack's image is there (scripts/milvus-image.sh builds it;
/// scripts/test.sh runs that): loudly skipped, or failed under CI, if not.
fn image_ready() -> bool {
    let there = Command::new("docker")
        .args(["image", "inspect", MILVUS_IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    if !there {
        let message = format!(
            "{MILVUS_IMAGE} is not built (run scripts/milvus-image.sh): the Milvus-shaped test cannot run here"
        );
        if std::env::var("VOLSNAP_REQUIRE_SERVERS").as_deref() == Ok("1") {
            panic!("{message}");
        }
        eprintln!("\n########## SKIPPED: {message} ##########\n");
    }
    there
}

/// Containers and a network started for one check, removed on drop.
struct CheckStack {
    containers: Vec<String>,
    network: String,
}

impl Drop for CheckStack {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

/// Restores backup `id` into new volumes, starts etcd and the store on
/// them in a network of their own, and runs the consistency check there:
/// its exit status and its `keys=… missing=… wrong=…` line.
fn check_backup(p: &mut Project, repo: &str, id: &str, volumes: &[String; 2]) -> (i32, String) {
    let tag = &id[id.len() - 6..];
    let fresh: Vec<String> = volumes
        .iter()
        .map(|v| {
            format!(
                "{}_restored_{tag}_{}",
                p.name,
                v.rsplit('_').next().unwrap()
            )
        })
        .collect();
    let mut args = vec!["restore", "--repo", repo, id];
    let maps: Vec<String> = volumes
        .iter()
        .zip(&fresh)
        .map(|(old, new)| format!("{old}={new}"))
        .collect();
    for m in &maps {
        args.extend(["--volume", m.as_str()]);
    }
    ok(volsnap(&args));
    for v in &fresh {
        p.adopt_volume(v);
    }
    let stack = CheckStack {
        containers: vec![
            format!("{}-chk{tag}-etcd", p.name),
            format!("{}-chk{tag}-store", p.name),
        ],
        network: format!("{}-chk{tag}", p.name),
    };
    docker(&["network", "create", &stack.network]);
    for ((name, alias), (volume, command)) in stack
        .containers
        .iter()
        .zip(["etcd", "store"])
        .zip(fresh.iter().zip(["etcd-server", "object-store"]))
    {
        let mount = format!("{volume}:/data");
        docker(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &stack.network,
            "--network-alias",
            alias,
            "-v",
            &mount,
            MILVUS_IMAGE,
            command,
        ]);
    }
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            &stack.network,
            MILVUS_IMAGE,
            "milvus-check",
        ])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), said.trim().to_string())
}

/// The count of `what=` in the check's line.
fn count(said: &str, what: &str) -> u64 {
    said.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{what}=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {what}= in {said:?}"))
}

#[test]
fn every_etcd_key_of_a_cold_or_snapshot_backup_points_to_its_object() {
    if !image_ready() {
        return;
    }
    let mut p = Project::new("milvus");
    let fs = BtrfsFs::new();
    let mut volumes = Vec::new();
    for short in ["etcd", "store"] {
        let dir = fs.subvolume(short);
        let device = format!("device={}", dir.display());
        volumes.push(p.volume(short, &["type=none", "o=bind", &device]));
    }
    let volumes: [String; 2] = [volumes[0].clone(), volumes[1].clone()];
    let net = p.network("net");
    let etcd_mount = format!("{}:/data", volumes[0]);
    let store_mount = format!("{}:/data", volumes[1]);
    p.service_of(
        MILVUS_IMAGE,
        &net,
        "etcd",
        &[],
        &["-v", &etcd_mount],
        &["etcd-server"],
    );
    p.service_of(
        MILVUS_IMAGE,
        &net,
        "store",
        &[],
        &["-v", &store_mount],
        &["object-store"],
    );
    let app = p.service_of(
        MILVUS_IMAGE,
        &net,
        "milvus",
        &["etcd", "store"],
        &[],
        &["milvus-writer"],
    );
    let written = |app: &str| -> u64 {
        let out = Command::new("docker")
            .args([
                "exec",
                app,
                "etcdctl",
                "--endpoints=http://etcd:2379",
                "get",
                "/meta/next",
                "--print-value-only",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    wait_until("the application to write 30 segments", 120, || {
        written(&app) >= 30
    });

    let repo = p.tempdir();
    let repo = repo.to_str().unwrap().to_string();
    let project = p.name.clone();
    let backup = |strategy: &str| -> Value {
        json(&ok(volsnap(&[
            "backup",
            "--project",
            &project,
            "--repo",
            &repo,
            "--strategy",
            strategy,
            "--json",
        ])))
    };
    let mut results = Vec::new();
    for strategy in ["cold", "snapshot", "online"] {
        let before = written(&app);
        let report = backup(strategy);
        wait_until("the application to write again", 120, || {
            written(&app) > before + 5
        });
        results.push((strategy, report));
    }
    for (strategy, report) in &results {
        let id = report["id"].as_str().unwrap();
        let (status, said) = check_backup(&mut p, &repo, id, &volumes);
        let changed: Vec<String> = report["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|v| {
                v["changed_during_read"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |c| {
                        format!(
                            "{}:{}",
                            v["name"].as_str().unwrap_or("?"),
                            c.as_str().unwrap_or("?")
                        )
                    })
            })
            .collect();
        eprintln!(
            "figure: {strategy} backup ({}, downtime {} ms): restored check: {said} (exit {status}); files the report names as changed while read: {}",
            report["consistency"],
            report["downtime_ms"],
            if changed.is_empty() { "none".to_string() } else { changed.join(", ") }
        );
        if *strategy == "online" {
            assert_eq!(report["consistency"], "best-effort", "{report}");
            continue;
        }
        assert_eq!(report["consistency"], "consistent", "{report}");
        assert_eq!(status, 0, "{strategy}: {said}");
        assert!(count(&said, "keys") >= 30, "{strategy}: {said}");
        assert_eq!(count(&said, "missing") + count(&said, "wrong"), 0, "{said}");
    }
    // The stack runs on, writing, after all three.
    let now = written(&app);
    wait_until("the application to go on", 60, || written(&app) > now);
}
