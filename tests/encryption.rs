//! Encrypted repositories end to end, with a real Docker daemon and Debian's
//! `age` tools: a host holding only the write key backs up, deduplicates,
//! lists, prunes and checks structure, and can read nothing; planted
//! markers appear nowhere in the stored bytes; restores without an
//! identity or with a wrong one change nothing; the right identity
//! restores byte for byte; tampering is named; a recipient planted in the
//! repository is never used; a passphrase repository; the same on S3.

mod common;

use common::servers::*;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// A new age identity from Debian's age-keygen: its file and recipient.
/// Whether `needle` occurs in any file under `root`.
fn found_in_files(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path);
                }
            }
        }
    }
    hits
}

/// Asserts that `out` failed with exit status `code`, saying `says`.
fn fails_saying(out: &std::process::Output, code: i32, says: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", stderr(out));
    assert!(stderr(out).contains(says), "{}", stderr(out));
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

/// The files under `root/dir`, sorted.
fn files_in(root: &Path, dir: &str) -> Vec<PathBuf> {
    files_under(root, &format!("{dir}/"))
        .iter()
        .map(|rel| root.join(rel))
        .collect()
}

/// `volsnap restore --repo REPO ID --target-dir TARGET`, then `extra`.
fn restore(repo: &str, id: &str, target: &Path, extra: &[&str]) -> std::process::Output {
    restore_env(repo, id, target, extra, &[])
}

fn restore_env(
    repo: &str,
    id: &str,
    target: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut args = vec!["restore", "--repo", repo, id, "--target-dir"];
    let target = target.to_str().unwrap();
    args.push(target);
    args.extend_from_slice(extra);
    volsnap_env(&args, env)
}

const MARKER: &str = "VOLSNAP-SECRET-MARKER-7f3a";

/// A stack whose volume holds the marker in a file's content, a file's
/// name and a directory's name, beside compressible and random data.
fn marked_stack(p: &mut Project) -> (String, PathBuf) {
    let vol = p.volume("data", &[]);
    let src = volume_path(&vol);
    make_fixture(&src);
    let dir = src.join(format!("dir-{MARKER}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{MARKER}.txt")),
        format!("{MARKER} in a small file\n"),
    )
    .unwrap();
    let mut log = Vec::new();
    for n in 0..40_000 {
        log.extend_from_slice(format!("line {n} {MARKER}\n").as_bytes());
    }
    std::fs::write(src.join("app.log"), &log).unwrap();
    std::fs::write(src.join("objects.bin"), pseudo_random(6 << 20, 0xe1c)).unwrap();
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    (vol, src)
}

/// A marked stack, age identities named `names` (from age-keygen), and a
/// repository encrypted to the first one's recipient.
struct Case {
    p: Project,
    keys: PathBuf,
    identities: Vec<(PathBuf, String)>,
    repo: PathBuf,
    repo_s: String,
    vol: String,
    src: PathBuf,
    project: String,
    /// What init said.
    init: String,
}

fn encrypted_case(prefix: &str, names: &[&str]) -> Case {
    let mut p = Project::new(prefix);
    let keys = p.tempdir();
    let identities: Vec<(PathBuf, String)> = names.iter().map(|n| keygen(&keys, n)).collect();
    let repo = p.tempdir().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let (vol, src) = marked_stack(&mut p);
    let project = p.name.clone();
    let init = ok(volsnap(&[
        "init",
        "--repo",
        &repo_s,
        "--recipient",
        &identities[0].1,
    ]));
    Case {
        p,
        keys,
        identities,
        repo,
        repo_s,
        vol,
        src,
        project,
        init,
    }
}

#[test]
fn a_write_only_host_backs_up_lists_prunes_and_verifies_but_reads_nothing() {
    let Case {
        mut p,
        keys,
        identities,
        repo,
        repo_s,
        vol,
        src,
        project,
        init,
    } = encrypted_case("enc", &["reader", "stranger"]);
    let _ = keys;
    let (identity, recipient) = identities[0].clone();
    let wrong = identities[1].0.clone();
    assert!(
        init.contains("encrypted") && init.contains("write key file"),
        "{init}"
    );
    let key_files = files_in(&state_dir(), "keys");
    assert_eq!(key_files.len(), 1, "init keeps one write key file");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_files[0])
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the write key file is private");

    // Backups with the write key alone (found in the state directory).
    let backup = || {
        json(&ok(volsnap(&backup_args(
            &project,
            &repo,
            &["--strategy", "cold", "--json"],
        ))))
    };
    let first = backup();
    let first_id = first["id"].as_str().unwrap().to_string();
    let packs_first = files_in(&repo, "data").len();
    let bytes_first: u64 = files_in(&repo, "data")
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let second = backup();
    let second_id = second["id"].as_str().unwrap().to_string();
    let bytes_second: u64 = files_in(&repo, "data")
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(
        bytes_second - bytes_first < bytes_first / 20,
        "an unchanged backup stored {} bytes after {bytes_first} ({packs_first} packs)",
        bytes_second - bytes_first
    );

    // Nothing of the content, and no name, is readable in the repository.
    let hits = found_in_files(&repo, MARKER.as_bytes());
    assert!(hits.is_empty(), "the marker is readable in {hits:?}");
    for name in ["app.log", "objects.bin", &vol] {
        let hits = found_in_files(&repo, name.as_bytes());
        assert!(hits.is_empty(), "{name} is readable in {hits:?}");
    }

    // List and structure checks need no identity.
    let list = ok(volsnap(&["list", "--repo", &repo_s]));
    assert!(
        list.contains(&first_id) && list.contains(&second_id),
        "{list}"
    );
    let structure = ok(volsnap(&["verify", "--repo", &repo_s, &second_id]));
    assert!(
        structure.contains("as far as the write key shows"),
        "{structure}"
    );
    let all = verify_all_packs(&repo);
    assert!(all.contains("intact"), "{all}");

    // Reading needs an identity: refused with exit 2, nothing written.
    let target = p.tempdir();
    let refused = restore(&repo_s, &second_id, &target, &[]);
    fails_saying(&refused, 2, "--identity");
    assert!(
        is_empty_dir(&target),
        "a refused restore wrote into its target"
    );
    let deep = volsnap(&["verify", "--repo", &repo_s, &second_id, "--deep"]);
    assert_eq!(deep.status.code(), Some(2), "{}", stderr(&deep));
    let export = volsnap(&["export", "--repo", &repo_s, &second_id]);
    assert_eq!(export.status.code(), Some(2), "{}", stderr(&export));
    assert!(export.stdout.is_empty(), "export wrote without an identity");

    // A wrong identity: a clear failure, nothing written.
    let identity_s = identity.to_str().unwrap();
    let wrong_s = wrong.to_str().unwrap();
    let stranger = restore(&repo_s, &second_id, &target, &["--identity", wrong_s]);
    fails_saying(&stranger, 1, "no identity");
    assert!(
        is_empty_dir(&target),
        "a restore with a wrong identity wrote into its target"
    );

    // The right identity restores byte for byte and checks deeply.
    ok(restore(
        &repo_s,
        &second_id,
        &target,
        &["--identity", identity_s],
    ));
    assert_same_tree(&src, &restored(&target));
    let deep = ok(volsnap(&[
        "verify",
        "--repo",
        &repo_s,
        &first_id,
        "--deep",
        "--identity",
        identity_s,
    ]));
    assert!(deep.contains("content read and checked"), "{deep}");

    // The wrapped write key is a standard age file: Debian's age opens it.
    let wrapped = files_in(&repo, "keys");
    assert_eq!(wrapped.len(), 1, "{wrapped:?}");
    let opened = Command::new("age")
        .args(["-d", "-i", identity_s])
        .arg(&wrapped[0])
        .output()
        .unwrap();
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );
    let material: Value = serde_json::from_slice(&opened.stdout).unwrap();
    assert_eq!(material["recipients"][0], recipient.as_str());

    // Retention and garbage collection with the write key alone.
    let pruned = ok(volsnap(&["prune", "--repo", &repo_s, "--keep-last", "1"]));
    assert!(pruned.contains(&first_id), "{pruned}");
    let list = ok(volsnap(&["list", "--repo", &repo_s]));
    assert!(
        !list.contains(&first_id) && list.contains(&second_id),
        "{list}"
    );
    verify_all_packs(&repo);
}

#[test]
fn tampered_truncated_and_swapped_objects_are_named() {
    let Case {
        p: _p,
        identities,
        repo,
        repo_s,
        vol: _vol,
        project,
        ..
    } = encrypted_case("enctamper", &["reader"]);
    let identity_s = identities[0].0.to_str().unwrap().to_string();
    let id = |out: String| json(&out)["id"].as_str().unwrap().to_string();
    let a = id(ok(volsnap(&backup_args(
        &project,
        &repo,
        &["--strategy", "online", "--json"],
    ))));
    std::fs::write(volume_path(&_vol).join("new.txt"), b"more").unwrap();
    let b = id(ok(volsnap(&backup_args(
        &project,
        &repo,
        &["--strategy", "online", "--json"],
    ))));
    let check_all = |with_identity: bool| {
        let mut args = vec![
            "verify",
            "--repo",
            &repo_s,
            "--all",
            "--read-data-subset",
            "100",
        ];
        if with_identity {
            args.extend(["--identity", &identity_s]);
        }
        volsnap(&args)
    };
    assert!(check_all(true).status.success());

    // One flipped bit in a data pack: named, with and without an identity.
    let packs = files_in(&repo, "data");
    let biggest = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    let original = std::fs::read(&biggest).unwrap();
    let mut flipped = original.clone();
    flipped[original.len() / 3] ^= 0x08;
    std::fs::write(&biggest, &flipped).unwrap();
    let pack_name = biggest.file_name().unwrap().to_str().unwrap().to_string();
    for with_identity in [false, true] {
        let out = check_all(with_identity);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains(&pack_name), "{}", stderr(&out));
    }
    std::fs::write(&biggest, &original).unwrap();

    // A truncated index object: named.
    let index = files_in(&repo, "index")[0].clone();
    let whole = std::fs::read(&index).unwrap();
    std::fs::write(&index, &whole[..whole.len() - 7]).unwrap();
    let out = check_all(false);
    assert_eq!(out.status.code(), Some(1));
    let index_name = index.file_name().unwrap().to_str().unwrap().to_string();
    assert!(stderr(&out).contains(&index_name), "{}", stderr(&out));
    std::fs::write(&index, &whole).unwrap();

    // Two backups' commit objects swapped: each refused for its name.
    let commits = files_in(&repo, "snapshots");
    assert_eq!(commits.len(), 2);
    let (x, y) = (
        std::fs::read(&commits[0]).unwrap(),
        std::fs::read(&commits[1]).unwrap(),
    );
    std::fs::write(&commits[0], &y).unwrap();
    std::fs::write(&commits[1], &x).unwrap();
    let out = volsnap(&["list", "--repo", &repo_s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not match its name"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&commits[0], &x).unwrap();
    std::fs::write(&commits[1], &y).unwrap();

    // A commit object sealed for another place (an index object's bytes
    // under a commit's name, renamed to match): its kind does not open.
    // Readers name it and set it aside (one planted object must not stop
    // them); garbage collection, which must know every commit, refuses.
    let index_bytes = std::fs::read(&index).unwrap();
    let name = blake3_hex(&index_bytes);
    std::fs::write(repo.join("snapshots").join(&name), &index_bytes).unwrap();
    let out = volsnap(&["list", "--repo", &repo_s]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot be opened") && stderr(&out).contains(&name),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains(&a) && stdout(&out).contains(&b));
    let out = volsnap(&["prune", "--repo", &repo_s, "--keep-last", "5"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot be opened"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(repo.join("snapshots").join(&name)).unwrap();

    // Intact again: both backups verify deeply.
    for id in [&a, &b] {
        ok(volsnap(&[
            "verify",
            "--repo",
            &repo_s,
            id,
            "--deep",
            "--identity",
            &identity_s,
        ]));
    }
}

/// BLAKE3 of `bytes`, hex, as the repository names objects.
fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[test]
fn a_recipient_planted_in_the_repository_is_never_used() {
    let Case {
        mut p,
        identities,
        repo,
        repo_s,
        src,
        project,
        ..
    } = encrypted_case("encplant", &["owner", "attacker"]);
    let identity = identities[0].0.clone();
    let (attacker, attacker_recipient) = identities[1].clone();
    ok(volsnap(&backup_args(
        &project,
        &repo,
        &["--strategy", "online"],
    )));

    // Whoever holds the storage adds their recipient everywhere it could
    // be taken from: a recipients object, and a wrapped write key of
    // their own making.
    std::fs::write(
        repo.join("keys/recipients"),
        format!("{attacker_recipient}\n"),
    )
    .unwrap();
    let fake = Command::new("age")
        .args(["-r", &attacker_recipient, "-o"])
        .arg(repo.join(format!("keys/write-{}", "0".repeat(64))))
        .stdin(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(fake.success());
    std::fs::write(
        src.join("after.txt"),
        format!("{MARKER} written after the plant\n"),
    )
    .unwrap();
    let out = json(&ok(volsnap(&backup_args(
        &project,
        &repo,
        &["--strategy", "online", "--json"],
    ))));
    let id = out["id"].as_str().unwrap().to_string();

    // Even holding a host's write key file, the attacker's identity opens
    // nothing of the new backup.
    let key_file = files_in(&state_dir(), "keys")[0].clone();
    let target = p.tempdir();
    let out = restore(
        &repo_s,
        &id,
        &target,
        &[
            "--identity",
            attacker.to_str().unwrap(),
            "--write-key",
            key_file.to_str().unwrap(),
        ],
    );
    fails_saying(&out, 1, "no identity");
    assert!(is_empty_dir(&target));
    // The owner reads it, the planted file included.
    ok(restore(
        &repo_s,
        &id,
        &target,
        &["--identity", identity.to_str().unwrap()],
    ));
    assert_same_tree(&src, &restored(&target));
}

#[test]
fn a_passphrase_repository_reads_and_writes_with_the_passphrase_alone() {
    let mut p = Project::new("encpass");
    let dir = p.tempdir();
    let pass = dir.join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "incorrect horse\n").unwrap();
    let repo = p.tempdir().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let (_vol, src) = marked_stack(&mut p);
    let project = p.name.clone();
    let pass_s = pass.to_str().unwrap();
    let init = ok(volsnap(&[
        "init",
        "--repo",
        &repo_s,
        "--passphrase-file",
        pass_s,
    ]));
    assert!(init.contains("passphrase"), "{init}");
    assert!(
        files_in(&state_dir(), "keys").is_empty(),
        "no key file needed"
    );

    // Without the passphrase nothing opens; with a wrong one it is named.
    let out = volsnap(&backup_args(&project, &repo, &[]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = volsnap_env(
        &backup_args(&project, &repo, &[]),
        &[("VOLSNAP_PASSPHRASE_FILE", wrong.to_str().unwrap())],
    );
    fails_saying(&out, 1, "passphrase is wrong");

    let env = [("VOLSNAP_PASSPHRASE_FILE", pass_s)];
    let out = json(&ok(volsnap_env(
        &backup_args(&project, &repo, &["--strategy", "online", "--json"]),
        &env,
    )));
    let id = out["id"].as_str().unwrap().to_string();
    assert!(found_in_files(&repo, MARKER.as_bytes()).is_empty());
    let target = p.tempdir();
    ok(restore_env(&repo_s, &id, &target, &[], &env));
    assert_same_tree(&src, &restored(&target));
}

#[test]
fn an_encrypted_repository_on_s3_hides_its_content_from_the_bucket() {
    let Some(server) = S3Server::start(S3Kind::S3sFs, "encrypted_s3") else {
        return;
    };
    let mut p = Project::new("encs3");
    let keys = p.tempdir();
    let (identity, recipient) = keygen(&keys, "reader");
    let (_vol, src) = marked_stack(&mut p);
    let project = p.name.clone();
    let repo = server.repo("enc");
    let env: Vec<(&str, String)> = server.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ok(volsnap_env(
        &["init", "--repo", &repo, "--recipient", &recipient],
        &env,
    ));
    let backup = |env: &[(&str, &str)]| {
        json(&ok(volsnap_env(
            &[
                "backup",
                "--project",
                &project,
                "--repo",
                &repo,
                "--strategy",
                "online",
                "--json",
            ],
            env,
        )))
    };
    let first = backup(&env);
    let id = first["id"].as_str().unwrap().to_string();
    let root = server.bucket_dir().join("enc");
    let packs = files_in(&root, "data").len();
    backup(&env);
    assert_eq!(
        files_in(&root, "data").len(),
        packs,
        "an unchanged backup stored data"
    );
    assert!(found_in_files(&root, MARKER.as_bytes()).is_empty());
    let list = ok(volsnap_env(&["list", "--repo", &repo], &env));
    assert!(list.contains(&id), "{list}");
    let target = p.tempdir();
    let out = restore_env(&repo, &id, &target, &[], &env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let mut with_identity = env.clone();
    with_identity.push(("VOLSNAP_IDENTITY_FILE", identity.to_str().unwrap()));
    ok(restore_env(&repo, &id, &target, &[], &with_identity));
    assert_same_tree(&src, &restored(&target));
}

#[test]
fn a_write_only_job_backs_up_and_prunes_and_its_drill_asks_for_an_identity() {
    let mut p = Project::new("encjob");
    let keys = p.tempdir();
    let (identity, recipient) = keygen(&keys, "reader");
    let vol = p.volume("data", &[]);
    std::fs::write(volume_path(&vol).join("state"), "ok\n").unwrap();
    let db = p.service("db", &[], &["-v", &format!("{vol}:/data")], &["idle"]);
    wait_until("db to run", 30, || is_running(&db));
    let repo = p.tempdir().join("repo");
    ok(volsnap(&[
        "init",
        "--repo",
        repo.to_str().unwrap(),
        "--recipient",
        &recipient,
    ]));
    let dir = p.tempdir();
    let config = dir.join("volsnap.toml");
    let job = |extra: &str| {
        format!(
            "run_log = \"{d}/runs.jsonl\"\n[jobs.stack]\nproject = \"{}\"\nrepo = \"{}\"\nstrategy = \"online\"\n{extra}[jobs.stack.retention]\nkeep_last = 1\n[jobs.stack.drill]\ntimeout = 60\nchecks = {{ db = \"grep -qx ok /data/state\" }}\n",
            p.name,
            repo.display(),
            d = dir.display()
        )
    };
    std::fs::write(&config, job("")).unwrap();
    let config_s = config.to_str().unwrap();
    for _ in 0..2 {
        ok(volsnap(&["run", "stack", "--config", config_s]));
    }
    let log = std::fs::read_to_string(dir.join("runs.jsonl")).unwrap();
    let records: Vec<Value> = log.lines().map(json).collect();
    assert!(records.iter().all(|r| r["status"] == "success"), "{log}");
    assert_eq!(
        records[1]["pruned"], 1,
        "retention ran with the write key alone"
    );

    // The drill needs to read: without an identity it says so.
    let drill = volsnap(&["run", "stack", "--drill", "--config", config_s]);
    assert!(!drill.status.success());
    let said = format!("{}{}", stdout(&drill), stderr(&drill));
    assert!(said.contains("identity"), "{said}");

    // With the identity in the job's configuration it passes.
    let line = format!("identity = \"{}\"\n", identity.display());
    std::fs::write(&config, job(&line)).unwrap();
    ok(volsnap(&["run", "stack", "--drill", "--config", config_s]));
    let status = ok(volsnap(&["status", "--config", config_s]));
    assert!(status.contains("last drill:       success"), "{status}");
    // The drill report is a note beside the backup, sealed: the storage
    // holder does not read the check command; list (with the write key)
    // does.
    let notes = files_in(&repo, "notes");
    assert!(!notes.is_empty(), "no note was written");
    assert!(found_in_files(&repo.join("notes"), b"grep -qx").is_empty());
    let list = json(&ok(volsnap(&[
        "list",
        "--repo",
        repo.to_str().unwrap(),
        "--json",
    ])));
    let drilled = list
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["drill"]["passed"] == true);
    assert!(drilled, "{list}");
}

#[test]
fn recipients_added_and_removed_and_a_rotated_write_key_behave_as_documented() {
    let Case {
        p: _p,
        keys,
        identities,
        repo,
        repo_s,
        src,
        project,
        ..
    } = encrypted_case("enckeys", &["a", "b"]);
    let (a, a_recipient) = identities[0].clone();
    let (b, b_recipient) = identities[1].clone();
    let backup = || {
        let out = ok(volsnap(&backup_args(
            &project,
            &repo,
            &["--strategy", "online", "--json"],
        )));
        json(&out)["id"].as_str().unwrap().to_string()
    };
    // Restores `id` with `identity`: whether it could, and the file names
    // at the top of the restored volume.
    let restores = |id: &str, identity: &Path| -> Option<Vec<String>> {
        let scratch = tempfile::tempdir().unwrap();
        let target = scratch.path();
        let out = restore(
            &repo_s,
            id,
            target,
            &["--identity", identity.to_str().unwrap()],
        );
        if !out.status.success() {
            assert!(stderr(&out).contains("no identity"), "{}", stderr(&out));
            return None;
        }
        let mut names: Vec<String> = std::fs::read_dir(restored(target))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Some(names)
    };
    std::fs::write(src.join("only-first.txt"), "gone after the first backup\n").unwrap();
    let first = backup();
    std::fs::remove_file(src.join("only-first.txt")).unwrap();

    // Adding b: backups from now on are b's to read too, whole; the one
    // written before stays a's alone.
    let added = ok(volsnap(&[
        "key",
        "add-recipient",
        "--repo",
        &repo_s,
        &b_recipient,
    ]));
    assert!(added.contains("from now on"), "{added}");
    let again = volsnap(&["key", "add-recipient", "--repo", &repo_s, &b_recipient]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    let second = backup();
    let packs = files_in(&repo, "data").len();
    backup();
    assert_eq!(
        files_in(&repo, "data").len(),
        packs,
        "the backup after the one that re-stored everything for the new set deduplicates"
    );
    let seen = restores(&second, &b).expect("b reads a backup written for it");
    assert!(!seen.contains(&"only-first.txt".to_string()), "{seen:?}");
    assert!(restores(&second, &a).is_some());
    assert!(
        restores(&first, &b).is_none(),
        "b reads a backup written before it was added"
    );
    assert!(restores(&first, &a)
        .unwrap()
        .contains(&"only-first.txt".to_string()));

    // Removing a: what is new in later backups is not a's to read; what a
    // could read stays so.
    ok(volsnap(&[
        "key",
        "remove-recipient",
        "--repo",
        &repo_s,
        &a_recipient,
    ]));
    std::fs::write(
        src.join("after-removal.txt"),
        format!("{MARKER} for b only\n"),
    )
    .unwrap();
    let third = backup();
    let seen = restores(&third, &b).expect("b reads the newest backup");
    assert!(seen.contains(&"after-removal.txt".to_string()), "{seen:?}");
    assert!(
        restores(&third, &a).is_none(),
        "a removed recipient reads a new backup"
    );
    assert!(restores(&second, &a).is_some());
    let last = volsnap(&["key", "remove-recipient", "--repo", &repo_s, &b_recipient]);
    assert_eq!(last.status.code(), Some(2), "{}", stderr(&last));

    // key list names the recipients, and an object planted under keys/.
    std::fs::write(repo.join("keys/recipients"), format!("{a_recipient}\n")).unwrap();
    let listed = ok(volsnap(&["key", "list", "--repo", &repo_s]));
    assert!(
        listed.contains(&b_recipient) && !listed.contains(&a_recipient),
        "{listed}"
    );
    assert!(
        listed.contains("keys/recipients") && listed.contains("never used"),
        "{listed}"
    );

    // Rotation: an old copy of the key file no longer reads new records;
    // deduplication goes on (an unchanged backup stores no data).
    let key_file = files_in(&state_dir(), "keys")[0].clone();
    let old_copy = keys.join("old.key");
    std::fs::copy(&key_file, &old_copy).unwrap();
    let packs = files_in(&repo, "data").len();
    let rotated = ok(volsnap(&["key", "rotate", "--repo", &repo_s]));
    assert!(rotated.contains("rotated"), "{rotated}");
    let fourth = backup();
    assert_eq!(
        files_in(&repo, "data").len(),
        packs,
        "rotation broke deduplication"
    );
    let old = volsnap(&[
        "list",
        "--repo",
        &repo_s,
        "--write-key",
        old_copy.to_str().unwrap(),
    ]);
    assert!(!old.status.success());
    assert!(
        stderr(&old).contains("another write key"),
        "{}",
        stderr(&old)
    );
    let list = ok(volsnap(&["list", "--repo", &repo_s]));
    for id in [&first, &second, &third, &fourth] {
        assert!(list.contains(id.as_str()), "{list}");
    }
    assert!(restores(&fourth, &b).is_some());
    // An identity alone (no key file on this host) finds the newest
    // wrapped key, whose earlier generation reads what was sealed before.
    let elsewhere = keys.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let env = [("VOLSNAP_STATE_DIR", elsewhere.to_str().unwrap())];
    let b_s = b.to_str().unwrap();
    for id in [&third, &fourth] {
        ok(volsnap_env(
            &["verify", "--repo", &repo_s, id, "--deep", "--identity", b_s],
            &env,
        ));
    }
    // An identity alone does not say whom to encrypt to: a backup is
    // refused before anything is stopped.
    let refused = volsnap_env(
        &backup_args(&project, &repo, &["--strategy", "cold", "--identity", b_s]),
        &env,
    );
    fails_saying(&refused, 2, "needs its write key file");
    assert!(
        is_running(&format!("{project}-app")),
        "the service was stopped"
    );
}

/// Prune on a write-only host rewrites a pack that is mostly garbage
/// (copying sealed blobs it cannot open, with their wrapped content keys)
/// and deletes the rest a prune later; the identity still reads it all.
#[test]
fn a_write_only_prune_rewrites_sealed_packs_that_an_identity_still_reads() {
    let mut p = Project::new("encrepack");
    let keys = p.tempdir();
    let (identity, recipient) = keygen(&keys, "reader");
    let repo = p.tempdir().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let vol = p.volume("data", &[]);
    let src = volume_path(&vol);
    std::fs::write(src.join("a.bin"), pseudo_random(3 << 20, 11)).unwrap();
    std::fs::write(src.join("b.bin"), pseudo_random(3 << 20, 12)).unwrap();
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    let project = p.name.clone();
    ok(volsnap(&[
        "init",
        "--repo",
        &repo_s,
        "--recipient",
        &recipient,
    ]));
    online_backup_id(&project, &repo);
    std::fs::remove_file(src.join("b.bin")).unwrap();
    let second = online_backup_id(&project, &repo);
    let env = [("VOLSNAP_TEST_MARK_AGE_SECS", "0")];
    let prune = || {
        json(&ok(volsnap_env(
            &["prune", "--repo", &repo_s, "--keep-last", "1", "--json"],
            &env,
        )))
    };
    let first = prune();
    assert!(
        first["garbage"]["packs_rewritten"].as_u64().unwrap() >= 1,
        "{first}"
    );
    let next = prune();
    assert!(
        next["garbage"]["packs_deleted"].as_u64().unwrap() >= 1,
        "{next}"
    );
    let stored: u64 = files_in(&repo, "data")
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(
        stored < (3 << 20) + (512 << 10),
        "{stored} bytes stored for a 3 MiB file"
    );
    verify_all_packs(&repo);
    let target = p.tempdir();
    ok(restore(
        &repo_s,
        &second,
        &target,
        &["--identity", identity.to_str().unwrap()],
    ));
    assert_same_tree(&src, &restored(&target));
}
