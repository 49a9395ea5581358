//! `prune` and `protect` over a history of backups: one real backup of a
//! real stack, copied with backdated manifests (checksums redone so each
//! copy verifies), then pruned by the real binary.

mod common;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Copies backup `from` to a new backup `id` that started at `time`.
fn backdated_copy(repo: &Path, from: &str, id: &str, time: chrono::DateTime<chrono::Utc>) {
    let src = repo.join(from);
    let dst = repo.join(id);
    std::fs::create_dir(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(dst.join("manifest.json")).unwrap()).unwrap();
    manifest["id"] = id.into();
    manifest["started_at"] = time.to_rfc3339().into();
    manifest["completed_at"] = time.to_rfc3339().into();
    let text = serde_json::to_vec_pretty(&manifest).unwrap();
    std::fs::write(dst.join("manifest.json"), &text).unwrap();
    let digest = hex::encode(Sha256::digest(&text));
    let sums = std::fs::read_to_string(dst.join("SHA256SUMS")).unwrap();
    let sums: String = sums
        .lines()
        .map(|line| {
            if line.ends_with("  manifest.json") {
                format!("{digest}  manifest.json\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(dst.join("SHA256SUMS"), sums).unwrap();
}

fn ids_in(repo: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(repo)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "volsnap-format-1")
        .collect();
    ids.sort();
    ids
}

#[test]
fn prune_keeps_the_policy_the_protected_and_the_newest_backup_that_verifies() {
    let mut p = Project::new("prune");
    let repo = p.tar_repo();
    let vol = p.volume("data", &[]);
    std::fs::write(volume_path(&vol).join("state"), "some state\n").unwrap();
    p.service("db", &[], &["-v", &format!("{vol}:/data")], &["idle"]);
    let repo_s = repo.to_str().unwrap();
    let out = ok(volsnap(&[
        "backup",
        "--project",
        &p.name,
        "--repo",
        repo_s,
        "--strategy",
        "online",
        "--json",
    ]));
    let real: Value = serde_json::from_str(&out).unwrap();
    let real = real["id"].as_str().unwrap().to_string();

    // Ten days of history, one backup a day at noon UTC, plus a second one on
    // the newest day.
    let today = chrono::Utc::now().date_naive();
    let mut ids = Vec::new();
    for days_ago in (1..=10).rev() {
        let day = today - chrono::Days::new(days_ago);
        let time = day.and_hms_opt(12, 0, 0).unwrap().and_utc();
        let id = format!("{}-0000", time.format("%Y%m%dT%H%M%SZ"));
        backdated_copy(&repo, &real, &id, time);
        ids.push(id);
    }
    let yesterday = (today - chrono::Days::new(1))
        .and_hms_opt(6, 0, 0)
        .unwrap()
        .and_utc();
    let early = format!("{}-0000", yesterday.format("%Y%m%dT%H%M%SZ"));
    backdated_copy(&repo, &real, &early, yesterday);
    std::fs::remove_dir_all(repo.join(&real)).unwrap();
    let newest_three: Vec<String> = ids[7..].to_vec();

    // Dry run: says what goes and why the rest stays; deletes nothing.
    let dry = ok(volsnap(&[
        "prune",
        "--repo",
        repo_s,
        "--keep-daily",
        "3",
        "--dry-run",
        "--json",
    ]));
    let dry: Value = serde_json::from_str(&dry).unwrap();
    let decisions = dry["groups"][0]["decisions"].as_array().unwrap();
    let kept: Vec<&str> = decisions
        .iter()
        .filter(|d| d["keep"] == true)
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = newest_three.iter().map(|s| s.as_str()).rev().collect();
    assert_eq!(kept, expected, "one per day for the newest three days");
    assert!(
        decisions[0]["reasons"].to_string().contains("daily"),
        "{}",
        decisions[0]
    );
    assert_eq!(ids_in(&repo).len(), 11, "a dry run deletes nothing");
    let human = ok(volsnap(&[
        "prune",
        "--repo",
        repo_s,
        "--keep-daily",
        "3",
        "--dry-run",
    ]));
    assert!(human.contains("would delete 8"), "{human}");

    // Protected backups survive any policy.
    ok(volsnap(&["protect", "--repo", repo_s, &ids[0]]));
    ok(volsnap(&["prune", "--repo", repo_s, "--keep-daily", "3"]));
    let mut survivors = newest_three.clone();
    survivors.push(ids[0].clone());
    survivors.sort();
    assert_eq!(ids_in(&repo), survivors);

    // When the newest backup is damaged, the newest one that verifies stays
    // even if no rule keeps it.
    let newest = repo.join(&ids[9]);
    let archive = std::fs::read_dir(&newest)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .unwrap();
    let mut bytes = std::fs::read(&archive).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&archive, bytes).unwrap();
    let out = volsnap(&["prune", "--repo", repo_s, "--keep-last", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not verify"), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("newest backup that verifies"),
        "{}",
        stdout(&out)
    );
    expected = vec![&ids[0], &ids[8], &ids[9]];
    assert_eq!(ids_in(&repo), expected);

    ok(volsnap(&["protect", "--repo", repo_s, "--remove", &ids[0]]));
    let refused = volsnap(&["prune", "--repo", repo_s]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "no rule: refused as bad usage"
    );
    assert_eq!(ids_in(&repo).len(), 3);
}

/// Runs volsnap as host `host` (VOLSNAP_HOST), as a second machine sharing
/// the repository would.
fn as_host(host: &str, args: &[&str]) -> std::process::Output {
    volsnap_env(args, &[("VOLSNAP_HOST", host)])
}

#[test]
fn hosts_sharing_a_repository_never_prune_or_restore_each_others_backups() {
    let mut p = Project::new("hosts");
    let repo = p.tar_repo();
    let repo_s = repo.to_str().unwrap();
    let vol = p.volume("data", &[]);
    std::fs::write(volume_path(&vol).join("state"), "one\n").unwrap();
    p.service("db", &[], &["-v", &format!("{vol}:/data")], &["idle"]);
    let backup = |host: &str| -> String {
        let out = ok(as_host(
            host,
            &backup_args(&p.name, &repo, &["--strategy", "online", "--json"]),
        ));
        let report: Value = serde_json::from_str(&out).unwrap();
        report["id"].as_str().unwrap().to_string()
    };
    // Two hosts run the same stack (same selection) into one repository.
    let a1 = backup("host-a");
    let b1 = backup("host-b");
    let a2 = backup("host-a");
    let b2 = backup("host-b");

    let listed: Value =
        serde_json::from_str(&ok(volsnap(&["list", "--repo", repo_s, "--json"]))).unwrap();
    let hosts: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["id"].as_str().unwrap(), b["host"].as_str().unwrap()))
        .collect();
    assert!(hosts.contains(&(a1.as_str(), "host-a")), "{hosts:?}");
    assert!(hosts.contains(&(b2.as_str(), "host-b")), "{hosts:?}");
    let only_b = ok(volsnap(&["list", "--repo", repo_s, "--host", "host-b"]));
    assert!(only_b.contains(&b1) && !only_b.contains(&a1), "{only_b}");

    // `latest` is this host's newest, never the other host's.
    let verified = ok(as_host("host-a", &["verify", "--repo", repo_s]));
    assert!(verified.contains(&a2), "{verified}");
    // A replacement machine has none of its own: it is told whose exist.
    let out = as_host(
        "host-new",
        &["verify", "--repo", repo_s, "--project", &p.name],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("host-a, host-b") && stderr(&out).contains("--host"),
        "{}",
        stderr(&out)
    );
    let picked = ok(as_host(
        "host-new",
        &["verify", "--repo", repo_s, "--host", "host-b"],
    ));
    assert!(picked.contains(&b2), "{picked}");

    // Retention by host: keep-last 1 keeps each host's newest.
    ok(as_host(
        "host-a",
        &["prune", "--repo", repo_s, "--keep-last", "1"],
    ));
    let left = ids_in(&repo);
    assert_eq!(left, {
        let mut both = vec![a2.clone(), b2.clone()];
        both.sort();
        both
    });
}
