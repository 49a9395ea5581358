//! Format 2 end to end against a real Docker daemon: init, backups that
//! cost what changed, list, verify, restore byte for byte, damage named,
//! and a backup killed before its commit leaving no backup behind.

mod common;

use common::craft::objects;
use common::*;
use serde_json::Value;
use std::path::Path;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn stored_bytes(repo: &Path) -> u64 {
    objects(repo, "data")
        .iter()
        .map(|o| std::fs::metadata(repo.join(o)).unwrap().len())
        .sum()
}

#[test]
fn backups_cost_what_changed_and_restore_byte_for_byte() {
    let mut p = Project::new("chunk");
    let repo = p.tempdir().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let init = ok(volsnap(&["init", "--repo", &repo_s]));
    assert!(init.contains("format-2"), "{init}");
    // A second init is refused: exit 2, nothing changed.
    let again = volsnap(&["init", "--repo", &repo_s]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));

    let vol = p.volume("data", &[]);
    let src = volume_path(&vol);
    make_fixture(&src);
    // 8 MiB of incompressible data, in chunks, and a log.
    let big = pseudo_random(8 << 20, 0x2545f4914f6cdd1d);
    std::fs::write(src.join("objects.bin"), &big).unwrap();
    std::fs::write(src.join("app.log"), b"a log line\n".repeat(50_000)).unwrap();
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    let project = p.name.clone();

    let first = json(&ok(volsnap(&backup_args(
        &project,
        &repo,
        &["--strategy", "cold", "--json"],
    ))));
    let first_id = first["id"].as_str().unwrap().to_string();
    let packs_first = objects(&repo, "data");
    let bytes_first = stored_bytes(&repo);
    assert!(!packs_first.is_empty());

    // Nothing changed: no new pack at all, only a commit object.
    let second = json(&ok(volsnap(&backup_args(
        &project,
        &repo,
        &["--strategy", "cold", "--json"],
    ))));
    assert_eq!(
        objects(&repo, "data"),
        packs_first,
        "an unchanged backup stored data"
    );
    assert_eq!(objects(&repo, "snapshots").len(), 2);

    // 1 MiB of the big file rewritten: the new data stored is a few chunks,
    // far below the file's size.
    let mut changed = big.clone();
    for b in &mut changed[3 << 20..4 << 20] {
        *b = b.wrapping_add(1);
    }
    std::fs::write(src.join("objects.bin"), &changed).unwrap();
    let third = json(&ok(volsnap(&backup_args(
        &project,
        &repo,
        &["--strategy", "online", "--json"],
    ))));
    let third_id = third["id"].as_str().unwrap().to_string();
    let grown = stored_bytes(&repo) - bytes_first;
    assert!(
        grown < 6 << 20,
        "rewriting 1 MiB of an 8 MiB file stored {grown} new bytes"
    );
    eprintln!(
        "format 2: first backup stored {bytes_first} bytes, the 1-MiB change {grown} more; second backup {}",
        second["id"]
    );

    // list shows all three; verify and verify --deep pass.
    let listed = json(&ok(volsnap(&["list", "--repo", &repo_s, "--json"])));
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{listed}");
    assert!(ids.contains(&first_id.as_str()) && ids.contains(&third_id.as_str()));
    ok(volsnap(&["verify", "--repo", &repo_s, &third_id]));
    let deep = verify_deep(&repo, &third_id);
    assert!(deep.contains("intact"), "{deep}");

    // Restore the newest and the first into directories: byte for byte.
    let out = p.tempdir();
    let out_s = out.to_str().unwrap().to_string();
    ok(volsnap(&[
        "restore",
        "--repo",
        &repo_s,
        &third_id,
        "--target-dir",
        &out_s,
    ]));
    let restored = std::fs::read_dir(&out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_same_tree(&src, &restored);
    let out_first = p.tempdir();
    ok(volsnap(&[
        "restore",
        "--repo",
        &repo_s,
        &first_id,
        "--target-dir",
        out_first.to_str().unwrap(),
    ]));
    let restored_first = std::fs::read_dir(&out_first)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        std::fs::read(restored_first.join("objects.bin")).unwrap(),
        big
    );

    // The whole repository: structure, then every pack read in full.
    let all = ok(volsnap(&["verify", "--repo", &repo_s, "--all"]));
    assert!(
        all.contains("3 backup(s)") && all.contains("intact"),
        "{all}"
    );
    let all = verify_all_packs(&repo);
    let packs_now = objects(&repo, "data").len();
    assert!(all.contains(&format!("{packs_now} read in full")), "{all}");

    // A flipped byte in a data pack: verify --deep names the file, the
    // restore refuses and leaves its target as it was.
    let pack = packs_first
        .iter()
        .max_by_key(|o| std::fs::metadata(repo.join(o)).unwrap().len())
        .unwrap();
    let path = repo.join(pack);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let damaged = volsnap(&["verify", "--repo", &repo_s, &first_id, "--deep"]);
    assert_eq!(damaged.status.code(), Some(1));
    // It names the file whose chunk is damaged, and the pack.
    let said = stderr(&damaged);
    assert!(
        said.contains(": file ")
            && said.contains("does not match its id")
            && said.contains("in pack "),
        "{said}"
    );
    let target = p.tempdir();
    std::fs::write(target.join("keep"), b"precious").unwrap();
    let refused = volsnap(&[
        "restore",
        "--repo",
        &repo_s,
        &first_id,
        "--target-dir",
        target.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"precious");

    // verify --all: sizes still match, so only reading the pack finds the
    // flip; it names the pack, and each backup and file that needs it.
    ok(volsnap(&["verify", "--repo", &repo_s, "--all"]));
    let read = volsnap(&[
        "verify",
        "--repo",
        &repo_s,
        "--all",
        "--read-data-subset",
        "100",
    ]);
    assert_eq!(read.status.code(), Some(1), "{}", stdout(&read));
    let said = stderr(&read);
    let pack_id = pack.rsplit('/').next().unwrap();
    assert!(
        said.contains(&format!("pack {pack_id} is damaged")),
        "{said}"
    );
    assert!(
        said.lines()
            .any(|l| l.contains(&format!("backup {first_id}: "))
                && l.contains(": file objects.bin: ")
                && l.contains(pack_id)),
        "{said}"
    );
    // The pack gone: plain verify --all names it missing, with its files.
    std::fs::remove_file(&path).unwrap();
    let gone = volsnap(&["verify", "--repo", &repo_s, "--all"]);
    assert_eq!(gone.status.code(), Some(1));
    let said = stderr(&gone);
    assert!(
        said.contains(&format!("pack {pack_id} (in index"))
            && said.contains(&format!("pack {pack_id} is missing")),
        "{said}"
    );
}

/// A kill at each step of a backup and of a prune: the backup exists only
/// if its commit object was written, `recover` restarts what a cold backup
/// stopped, the whole repository verifies after each, and the next run
/// finishes the work.
#[test]
fn kills_at_every_step_of_a_backup_and_a_prune_leave_a_whole_repository() {
    let mut p = Project::new("chunkkill");
    let repo = p.tempdir().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    ok(volsnap(&["init", "--repo", &repo_s]));
    let vol = p.volume("data", &[]);
    let src = volume_path(&vol);
    let mount = format!("{vol}:/data");
    let app = p.service("app", &[], &["-v", &mount], &["idle"]);
    let project = p.name.clone();

    let gzip = volsnap(&backup_args(&project, &repo, &["--compression", "gzip"]));
    assert_eq!(gzip.status.code(), Some(2), "{}", stderr(&gzip));
    assert!(stderr(&gzip).contains("format-2"), "{}", stderr(&gzip));

    let mut round = 0u64;
    let mut change = || {
        round += 1;
        let bytes = pseudo_random(1 << 20, 0x9e3779b97f4a7c15 ^ round);
        std::fs::write(src.join("data.bin"), &bytes).unwrap();
        std::fs::write(src.join("round"), round.to_string()).unwrap();
    };
    let backups = || objects(&repo, "snapshots").len();
    let whole = |after: &str| {
        let out = volsnap(&[
            "verify",
            "--repo",
            &repo_s,
            "--all",
            "--read-data-subset",
            "100",
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "after a kill at {after}: {}",
            stderr(&out)
        );
    };
    let killed_at = |out: &std::process::Output, point: &str| {
        assert!(
            !out.status.success(),
            "not killed at {point}: {}",
            stdout(out)
        );
        assert!(
            stderr(out).contains(&format!("killing myself at {point}")),
            "{point} was not reached: {}",
            stderr(out)
        );
    };

    for point in [
        "v2-locked",
        "v2-pack-stored",
        "v2-index-stored",
        "v2-before-commit",
        "v2-after-commit",
    ] {
        change();
        let before = backups();
        let out = volsnap_env(
            &backup_args(&project, &repo, &["--strategy", "cold"]),
            &[("VOLSNAP_FAULT_KILL_AT", point)],
        );
        killed_at(&out, point);
        let committed = point == "v2-after-commit";
        assert_eq!(backups(), before + usize::from(committed), "at {point}");
        // recover starts the service the killed cold backup stopped.
        ok(volsnap(&["recover"]));
        assert!(is_running(&app), "at {point}");
        whole(point);
        // The next backup works, despite the dead run's lock.
        ok(volsnap(&backup_args(
            &project,
            &repo,
            &["--strategy", "cold"],
        )));
        verify_deep(&repo, "latest");
    }

    let env = [("VOLSNAP_TEST_MARK_AGE_SECS", "0")];
    let prune = |kill: Option<&str>| {
        let mut all = env.to_vec();
        if let Some(point) = kill {
            all.push(("VOLSNAP_FAULT_KILL_AT", point));
        }
        volsnap_env(&["prune", "--repo", &repo_s, "--keep-last", "1"], &all)
    };
    // A first complete prune leaves a mark for the next to act on.
    ok(prune(None));
    for point in [
        "prune-after-retention",
        "prune-before-mark",
        "prune-before-pack-deletion",
        "prune-mid-deletion",
        "prune-before-mark-deletion",
    ] {
        for _ in 0..2 {
            change();
            ok(volsnap(&backup_args(
                &project,
                &repo,
                &["--strategy", "online"],
            )));
        }
        killed_at(&prune(Some(point)), point);
        whole(point);
        verify_deep(&repo, "latest");
        // The next prune finishes the work, leaving a mark again.
        ok(prune(None));
        whole(point);
        assert_eq!(backups(), 1, "after {point}");
    }
    // Garbage does not pile up: what is left is about one backup's data.
    ok(prune(None));
    ok(prune(None));
    let stored = stored_bytes(&repo);
    assert!(stored < 3 << 20, "{stored} bytes left for a 1 MiB backup");
}

/// `volsnap export REPO ID VOLUME | tar -x` gives back the volume, from a
/// format-1 and from a format-2 repository alike.
#[test]
fn export_pipes_into_gnu_tar_for_both_formats() {
    use std::process::{Command, Stdio};
    let mut p = Project::new("export");
    let vol = p.volume("data", &[]);
    let src = volume_path(&vol);
    make_fixture(&src);
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    let project = p.name.clone();
    let tar_repo = p.tar_repo();
    let chunked_repo = p.tempdir().join("repo");
    ok(volsnap(&["init", "--repo", chunked_repo.to_str().unwrap()]));
    for repo in [&tar_repo, &chunked_repo] {
        let done: Value = json(&ok(volsnap(&backup_args(
            &project,
            repo,
            &["--strategy", "cold", "--json"],
        ))));
        let id = done["id"].as_str().unwrap();
        let out = p.tempdir();
        let mut export = Command::new(env!("CARGO_BIN_EXE_volsnap"))
            .args(["export", "--repo", repo.to_str().unwrap(), id, &vol])
            .env("VOLSNAP_STATE_DIR", state_dir())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let tar = Command::new("tar")
            .args([
                "--xattrs",
                "--xattrs-include=user.*",
                "--same-owner",
                "-xpf",
                "-",
                "-C",
            ])
            .arg(&out)
            .stdin(export.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(export.wait().unwrap().success());
        assert!(
            tar.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&tar.stderr)
        );
        assert_same_tree(&src, &out);
        // Every volume at once: each under its own directory.
        let all = Command::new(env!("CARGO_BIN_EXE_volsnap"))
            .args(["export", "--repo", repo.to_str().unwrap(), id])
            .env("VOLSNAP_STATE_DIR", state_dir())
            .output()
            .unwrap();
        assert!(all.status.success(), "{}", stderr(&all));
        let listing = Command::new("tar")
            .args(["-tf", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut t| {
                use std::io::Write;
                t.stdin.take().unwrap().write_all(&all.stdout)?;
                t.wait_with_output()
            })
            .unwrap();
        let names = String::from_utf8_lossy(&listing.stdout).into_owned();
        assert!(names.contains(&format!("{vol}/dir/file.txt")), "{names}");
    }
    // Not onto a terminal, and an unknown volume is named: exit 2.
    let unknown = volsnap(&[
        "export",
        "--repo",
        chunked_repo.to_str().unwrap(),
        "latest",
        "nope",
    ]);
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
}

/// Prune of a format-2 repository: retention deletes commit objects, then
/// unreferenced packs are condemned by a mark and deleted by a later prune,
/// never while a backup that started before the mark still holds its lock.
#[test]
fn prune_collects_garbage_in_two_marks_and_waits_for_running_backups() {
    let mut p = Project::new("chunkprune");
    let repo = p.tempdir().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    ok(volsnap(&["init", "--repo", &repo_s]));
    let vol = p.volume("data", &[]);
    let src = volume_path(&vol);
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    let project = p.name.clone();
    let mut ids = Vec::new();
    for round in 0..3u64 {
        // Each round a new incompressible file: new packs each time.
        let bytes = pseudo_random(2 << 20, 0x9e3779b97f4a7c15 ^ round);
        std::fs::write(src.join("data.bin"), &bytes).unwrap();
        let done = json(&ok(volsnap(&backup_args(
            &project,
            &repo,
            &["--strategy", "online", "--json"],
        ))));
        ids.push(done["id"].as_str().unwrap().to_string());
    }
    let packs_before = objects(&repo, "data").len();
    let env = [("VOLSNAP_TEST_MARK_AGE_SECS", "0")];
    let prune = |extra_env: &[(&str, &str)]| {
        let mut all = env.to_vec();
        all.extend_from_slice(extra_env);
        json(&ok(volsnap_env(
            &["prune", "--repo", &repo_s, "--keep-last", "1", "--json"],
            &all,
        )))
    };
    // First prune: two backups go, their packs are only condemned.
    let first = prune(&[]);
    assert_eq!(first["deleted"].as_array().unwrap().len(), 2, "{first}");
    assert!(
        first["garbage"]["packs_condemned"].as_u64().unwrap() >= 2,
        "{first}"
    );
    assert_eq!(first["garbage"]["packs_deleted"], 0, "{first}");
    // Nothing deleted; a tree pack whose small volume record the kept
    // backup shares may have been rewritten (one new pack per kind).
    let packs_before = {
        let now = objects(&repo, "data").len();
        let rewritten = first["garbage"]["packs_rewritten"].as_u64().unwrap();
        assert!(now >= packs_before && now <= packs_before + 2, "{first}");
        assert_eq!(now > packs_before, rewritten > 0, "{first}");
        now
    };

    // A backup that started before the mark still runs (its lock is
    // live): nothing is deleted.
    let lock = serde_json::json!({
        "kind": "shared", "host": "other", "pid": 1, "command": "backup",
        "created": "2000-01-01T00:00:00Z", "refreshed": "2000-01-01T00:00:00Z"
    });
    let lock_path = repo.join("locks").join("a".repeat(64));
    std::fs::create_dir_all(repo.join("locks")).unwrap();
    std::fs::write(&lock_path, lock.to_string()).unwrap();
    let waiting = prune(&[]);
    assert_eq!(waiting["garbage"]["packs_deleted"], 0, "{waiting}");
    assert_eq!(objects(&repo, "data").len(), packs_before);
    std::fs::remove_file(&lock_path).unwrap();

    // Then the condemned packs go, and the kept backup is whole.
    let second = prune(&[]);
    let deleted = second["garbage"]["packs_deleted"].as_u64().unwrap();
    assert!(deleted >= 2, "{second}");
    assert_eq!(
        objects(&repo, "data").len(),
        packs_before - deleted as usize
    );
    assert!(
        objects(&repo, "marks").is_empty(),
        "marks left: {:?}",
        objects(&repo, "marks")
    );
    let last = ids.last().unwrap();
    verify_deep(&repo, last);
    let out = p.tempdir();
    ok(volsnap(&[
        "restore",
        "--repo",
        &repo_s,
        last,
        "--target-dir",
        out.to_str().unwrap(),
    ]));
    // And a new backup after all that still works and verifies.
    let again = json(&ok(volsnap(&backup_args(
        &project,
        &repo,
        &["--strategy", "online", "--json"],
    ))));
    verify_deep(&repo, again["id"].as_str().unwrap());
}

/// A prune killed after taking packs out of the indexes but before
/// deleting them, and a pack deleted by hand: the next prune finishes, and
/// backups store what is missing again instead of failing.
#[test]
fn a_killed_prune_and_a_lost_pack_are_repaired_by_the_next_runs() {
    let mut p = Project::new("chunkpk");
    let repo = p.tempdir().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    ok(volsnap(&["init", "--repo", &repo_s]));
    let vol = p.volume("data", &[]);
    let src = volume_path(&vol);
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    let project = p.name.clone();
    let backup = || online_backup_id(&project, &repo);
    std::fs::write(src.join("a"), vec![1u8; 300_000]).unwrap();
    backup();
    std::fs::write(src.join("a"), vec![2u8; 300_000]).unwrap();
    let kept = backup();
    let env = [("VOLSNAP_TEST_MARK_AGE_SECS", "0")];
    let prune = |extra: &[(&str, &str)]| {
        let mut all = env.to_vec();
        all.extend_from_slice(extra);
        volsnap_env(
            &["prune", "--repo", &repo_s, "--keep-last", "1", "--json"],
            &all,
        )
    };
    ok(prune(&[]));
    let before = objects(&repo, "data").len();
    let killed = prune(&[("VOLSNAP_FAULT_KILL_AT", "prune-before-pack-deletion")]);
    assert!(!killed.status.success());
    assert_eq!(
        objects(&repo, "data").len(),
        before,
        "nothing deleted before the kill"
    );
    let finished = json(&ok(prune(&[])));
    // What the killed prune condemned is gone now, at the latest one prune later.
    let again = json(&ok(prune(&[])));
    let deleted = finished["garbage"]["packs_deleted"].as_u64().unwrap()
        + again["garbage"]["packs_deleted"].as_u64().unwrap();
    assert!(deleted >= 1, "{finished} {again}");
    verify_deep(&repo, &kept);

    // A pack lost by hand: verify names the damage, the next backup stores
    // the missing data again and verifies.
    let packs = objects(&repo, "data");
    std::fs::remove_file(repo.join(&packs[0])).unwrap();
    let damaged = volsnap(&["verify", "--repo", &repo_s, &kept]);
    assert_eq!(damaged.status.code(), Some(1), "{}", stdout(&damaged));
    let healed = backup();
    verify_deep(&repo, &healed);
}

/// Which format a backup writes is decided by what the directory holds: an
/// empty one (or only `lost+found`) becomes format 2, `init --format tar`
/// and earlier format-1 backups keep format 1, anything else is refused
/// with exit 2 and left untouched.
#[test]
fn the_first_backup_initialises_format_2_and_format_1_repositories_stay_format_1() {
    let mut p = Project::new("detect");
    let vol = p.volume("data", &[]);
    std::fs::write(volume_path(&vol).join("state"), b"one\n").unwrap();
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    let project = p.name.clone();
    let online = ["--strategy", "online", "--json"];

    // Empty but for lost+found: format 2, initialised by the backup.
    let fresh = p.tempdir();
    std::fs::create_dir(fresh.join("lost+found")).unwrap();
    let backup = json(&ok(volsnap(&backup_args(&project, &fresh, &online))));
    assert!(fresh.join("config").is_file(), "no config object");
    assert_eq!(objects(&fresh, "snapshots").len(), 1);
    assert!(!fresh.join(backup["id"].as_str().unwrap()).exists());
    verify_deep(&fresh, "latest");

    // init --format tar: format 1, with its marker, before and after a backup.
    let tar = p.tar_repo();
    assert!(tar.join("volsnap-format-1").is_file());
    let backup = json(&ok(volsnap(&backup_args(&project, &tar, &online))));
    let id = backup["id"].as_str().unwrap();
    assert!(tar.join(id).join("manifest.json").is_file());
    assert!(!tar.join("config").exists());
    let again = volsnap(&["init", "--repo", tar.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("format-1 repository already"),
        "{}",
        stderr(&again)
    );

    // A format-1 repository from before the marker: still format 1, and marked now.
    std::fs::remove_file(tar.join("volsnap-format-1")).unwrap();
    ok(volsnap(&backup_args(&project, &tar, &online)));
    assert!(tar.join("volsnap-format-1").is_file());
    assert!(!tar.join("config").exists());

    // Someone else's files: refused, exit 2, named, nothing written.
    let foreign = p.tempdir();
    std::fs::write(foreign.join("notes.txt"), b"mine\n").unwrap();
    let refused = volsnap(&backup_args(&project, &foreign, &online));
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("notes.txt"),
        "{}",
        stderr(&refused)
    );
    let left: Vec<_> = std::fs::read_dir(&foreign).unwrap().collect();
    assert_eq!(left.len(), 1, "the refusal wrote into the directory");

    // A directory that does not exist: refused, exit 2, pointing at init.
    let missing = foreign.join("nope");
    let refused = volsnap(&backup_args(&project, &missing, &online));
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("volsnap init"),
        "{}",
        stderr(&refused)
    );
}

/// Notes beside format-2 backups: protect keeps a backup from prune, the
/// backup prune found verifying is marked verified, and notes go with
/// their backup.
#[test]
fn protect_and_verified_notes_live_beside_format_2_backups() {
    let mut p = Project::new("chunknotes");
    let repo = p.tempdir();
    let repo_s = repo.to_str().unwrap().to_string();
    let vol = p.volume("data", &[]);
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    let project = p.name.clone();
    let mut ids = Vec::new();
    for round in 0..3 {
        std::fs::write(volume_path(&vol).join("state"), format!("round {round}\n")).unwrap();
        let done = json(&ok(volsnap(&backup_args(
            &project,
            &repo,
            &["--strategy", "online", "--json"],
        ))));
        ids.push(done["id"].as_str().unwrap().to_string());
    }
    let said = ok(volsnap(&["protect", "--repo", &repo_s, &ids[0]]));
    assert!(said.contains("protected"), "{said}");
    assert_eq!(objects(&repo, "notes").len(), 1, "one protected note");

    ok(volsnap(&["prune", "--repo", &repo_s, "--keep-last", "1"]));
    let listed = json(&ok(volsnap(&["list", "--repo", &repo_s, "--json"])));
    let rows = listed.as_array().unwrap();
    let kept: Vec<&str> = rows.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(kept, vec![ids[0].as_str(), ids[2].as_str()], "{listed}");
    assert_eq!(rows[0]["protected"], true, "{listed}");
    assert_eq!(rows[1]["protected"], false, "{listed}");
    assert!(
        rows[1]["verified_at"].is_string(),
        "prune verified the newest: {listed}"
    );
    let human = ok(volsnap(&["list", "--repo", &repo_s]));
    assert!(
        human
            .lines()
            .any(|l| l.contains(&ids[0]) && l.contains('P')),
        "{human}"
    );

    // Unprotected, the oldest goes, and its note with it.
    ok(volsnap(&[
        "protect", "--repo", &repo_s, &ids[0], "--remove",
    ]));
    ok(volsnap(&["prune", "--repo", &repo_s, "--keep-last", "1"]));
    let listed = json(&ok(volsnap(&["list", "--repo", &repo_s, "--json"])));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let notes = objects(&repo, "notes");
    assert!(
        notes.iter().all(|n| n.contains("/verified-")),
        "only the survivor's verified note is left: {notes:?}"
    );
}

/// A pack half garbage is rewritten: its used chunks copied into a new
/// pack, the old one condemned and deleted a prune later. A prune killed
/// right after the copy leaves both, and the next one finishes without
/// copying again.
#[test]
fn prune_rewrites_a_pack_that_is_mostly_garbage_even_when_killed_midway() {
    let mut p = Project::new("chunkrepack");
    let repo = p.tempdir();
    let repo_s = repo.to_str().unwrap().to_string();
    let vol = p.volume("data", &[]);
    let src = volume_path(&vol);
    let noise = |seed: u64| pseudo_random(3 << 20, 0x2545f4914f6cdd1d ^ seed);
    let kept = noise(1);
    std::fs::write(src.join("a.bin"), &kept).unwrap();
    std::fs::write(src.join("b.bin"), noise(2)).unwrap();
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    let project = p.name.clone();
    let backup = || online_backup_id(&project, &repo);
    backup();
    let data_packs: Vec<String> = objects(&repo, "data");
    std::fs::remove_file(src.join("b.bin")).unwrap();
    let second = backup();
    assert_eq!(
        objects(&repo, "data").len(),
        data_packs.len() + 1,
        "one tree pack more"
    );

    let env = [("VOLSNAP_TEST_MARK_AGE_SECS", "0")];
    let prune_with = |extra: &[(&str, &str)]| {
        let mut all = env.to_vec();
        all.extend_from_slice(extra);
        volsnap_env(
            &["prune", "--repo", &repo_s, "--keep-last", "1", "--json"],
            &all,
        )
    };
    // Killed after the copy, before its mark: both copies are there, and
    // the repository is whole.
    let killed = prune_with(&[("VOLSNAP_FAULT_KILL_AT", "prune-after-rewrite")]);
    assert_ne!(killed.status.code(), Some(0), "{}", stderr(&killed));
    assert!(
        stderr(&killed).contains("prune-after-rewrite"),
        "{}",
        stderr(&killed)
    );
    verify_all_packs(&repo);

    // The next prune does not copy again: the copy is kept, the old pack
    // and the deleted backup's tree pack are condemned.
    let next = json(&ok(prune_with(&[])));
    assert_eq!(next["garbage"]["packs_rewritten"], 0, "{next}");
    assert!(
        next["garbage"]["packs_condemned"].as_u64().unwrap() >= 2,
        "{next}"
    );
    // And the one after deletes them: what is stored is about a.bin.
    let last = json(&ok(prune_with(&[])));
    assert!(
        last["garbage"]["packs_deleted"].as_u64().unwrap() >= 2,
        "{last}"
    );
    let stored = stored_bytes(&repo);
    assert!(
        stored < (3 << 20) + (512 << 10),
        "after the rewrite {stored} bytes are stored for a 3 MiB file"
    );
    for pack in &data_packs {
        assert!(
            !repo.join(pack).exists(),
            "{pack} was rewritten and deleted"
        );
    }
    verify_all_packs(&repo);
    let out = p.tempdir();
    ok(volsnap(&[
        "restore",
        "--repo",
        &repo_s,
        &second,
        "--target-dir",
        out.to_str().unwrap(),
    ]));
    let restored = std::fs::read_dir(&out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(std::fs::read(restored.join("a.bin")).unwrap(), kept);
    assert!(!restored.join("b.bin").exists());
}

/// A prune racing a real backup (prune runs from another host's state, as
/// it would from a second machine): the backup deduplicates against a pack
/// the prune condemns meanwhile; deletion waits for the backup's lock, the
/// backup commits, and nothing it references is ever deleted.
#[test]
fn a_prune_racing_a_backup_never_deletes_what_the_backup_references() {
    let mut p = Project::new("chunkrace");
    let repo = p.tempdir();
    let repo_s = repo.to_str().unwrap().to_string();
    let other_state = p.tempdir();
    let vol = p.volume("data", &[]);
    let src = volume_path(&vol);
    let noise = |len: usize, seed: u64| pseudo_random(len, 0x853c49e6748fea9b ^ seed);
    let shared = noise(4 << 20, 1);
    std::fs::write(src.join("a.bin"), &shared).unwrap();
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    let project = p.name.clone();
    let online = ["--strategy", "online", "--json"];
    ok(volsnap(&backup_args(&project, &repo, &online)));
    // Backup 2 lacks a.bin: its chunks are then only backup 1's.
    std::fs::remove_file(src.join("a.bin")).unwrap();
    std::fs::write(src.join("b.bin"), noise(1 << 20, 2)).unwrap();
    ok(volsnap(&backup_args(&project, &repo, &online)));

    // a.bin is back; backup 3 deduplicates it against backup 1's pack, then
    // holds before opening z.bin while the prunes run.
    std::fs::write(src.join("a.bin"), &shared).unwrap();
    std::fs::write(src.join("z.bin"), noise(1 << 20, 3)).unwrap();
    let hold = p.tempdir().join("hold");
    let mut backup = spawn_volsnap_env(
        &backup_args(&project, &repo, &online),
        &[
            ("VOLSNAP_FAULT_HOLD_BEFORE_OPEN", "z.bin"),
            ("VOLSNAP_FAULT_HOLD_FILE", hold.to_str().unwrap()),
        ],
    );
    wait_until("backup 3 to reach z.bin", 60, || hold.exists());

    let other = other_state.to_str().unwrap();
    // The pruning "other host" trusts this host's signing key.
    let listed = json(&ok(volsnap(&["list", "--repo", &repo_s, "--json"])));
    let host = listed[0]["host"].as_str().unwrap().to_string();
    ok(volsnap_env(
        &["host", "trust", &host, &host_fingerprint(&state_dir())],
        &[("VOLSNAP_STATE_DIR", other)],
    ));
    let prune = || {
        json(&ok(volsnap_env(
            &["prune", "--repo", &repo_s, "--keep-last", "1", "--json"],
            &[
                ("VOLSNAP_TEST_MARK_AGE_SECS", "0"),
                ("VOLSNAP_STATE_DIR", other),
            ],
        )))
    };
    // Backup 1 goes; its pack (a.bin) is condemned, though backup 3 is
    // about to reference it.
    let first = prune();
    assert_eq!(first["deleted"].as_array().unwrap().len(), 1, "{first}");
    assert!(
        first["garbage"]["packs_condemned"].as_u64().unwrap() >= 1,
        "{first}"
    );
    // The mark is ripe, but backup 3 started before it: nothing goes.
    let second = prune();
    assert!(backup.try_wait().unwrap().is_none(), "backup 3 still holds");
    assert_eq!(second["garbage"]["packs_deleted"], 0, "{second}");
    assert!(second["garbage"]["postponed"].is_string(), "{second}");
    std::fs::remove_file(&hold).unwrap();

    let out = backup.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "backup 3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let third: Value = json(&String::from_utf8_lossy(&out.stdout));
    let third_id = third["id"].as_str().unwrap().to_string();
    verify_deep(&repo, &third_id);
    // Once backup 3 is the one kept, the packs it needs stay; the rest go.
    prune();
    prune();
    verify_all_packs(&repo);
    let restored = p.tempdir();
    ok(volsnap(&[
        "restore",
        "--repo",
        &repo_s,
        &third_id,
        "--target-dir",
        restored.to_str().unwrap(),
    ]));
    let dir = std::fs::read_dir(&restored)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), shared);
}

/// The walk reads and chunks; a digest thread computes the chunk ids and
/// files' SHA-256 beside it, and lines are written as their digests come
/// back, in walk order. So the manifest is the same whatever the timing:
/// a second backup of the same tree, every file read again (a state
/// directory of its own, so no parent to skip files with) and one
/// compression thread, stores nothing new: its tree blobs are the
/// first's, byte for byte.
#[test]
fn every_file_read_again_gives_the_same_manifest_whatever_the_threads() {
    let mut p = Project::new("sametree");
    let repo = p.tempdir();
    let vol = p.volume("data", &[]);
    let root = volume_path(&vol);
    make_fixture(&root);
    for d in 0..20 {
        let dir = root.join(format!("small/{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100u64 {
            let n = d * 100 + f;
            std::fs::write(
                dir.join(format!("f{f:03}")),
                pseudo_random((n * 37 % 9000) as usize, n),
            )
            .unwrap();
        }
    }
    std::fs::write(root.join("large.bin"), pseudo_random(12 << 20, 7)).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);

    let first = json(&ok(volsnap(&backup_args(
        &p.name,
        &repo,
        &["--strategy", "cold", "--json"],
    ))));
    assert!(
        first["stored_bytes"].as_u64().unwrap() > 12 << 20,
        "{first}"
    );
    let other_state = p.tempdir();
    let second = json(&ok(volsnap_env(
        &backup_args(
            &p.name,
            &repo,
            &["--strategy", "cold", "--threads", "1", "--json"],
        ),
        &[("VOLSNAP_STATE_DIR", other_state.to_str().unwrap())],
    )));
    assert_eq!(second["volumes"], first["volumes"], "{second}");
    assert_eq!(
        second["stored_bytes"], 0,
        "the same blobs, tree blobs included: {second}"
    );
    let listing = |id: &Value| {
        ok(volsnap(&[
            "ls",
            "--repo",
            repo.to_str().unwrap(),
            id.as_str().unwrap(),
            "--json",
        ]))
    };
    assert_eq!(listing(&first["id"]), listing(&second["id"]));
    verify_deep(&repo, second["id"].as_str().unwrap());
}

/// However large a file, the chunks waiting for their digests are bounded:
/// a 2 GiB sparse file (a container can make one in no time) is backed up
/// by a volsnap that never holds more than a fraction of it.
#[test]
fn a_huge_file_is_backed_up_in_bounded_memory() {
    let mut p = Project::new("hugefile");
    let repo = p.tempdir();
    let vol = p.volume("data", &[]);
    let file = std::fs::File::create(volume_path(&vol).join("sparse")).unwrap();
    file.set_len(2 << 30).unwrap();
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    let out = json(&ok(volsnap(&backup_args(
        &p.name,
        &repo,
        &["--strategy", "online", "--json"],
    ))));
    assert_eq!(out["volumes"][0]["bytes"], 2u64 << 30, "{out}");
    // The largest resident size of any child this test binary waited for.
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let peak_mib = usage.ru_maxrss / 1024;
    assert!(
        peak_mib < 1024,
        "volsnap held {peak_mib} MiB while backing up a 2 GiB file"
    );
}
