//! Prune proves before it deletes, a poisoned index can be repaired, and
//! copies follow the repository as it is (docs/FORMAT.md, "Index", "Prune
//! and garbage collection", "Copies between repositories").
//!
//! A repository may be written by an attacker (PUT-only credentials, a
//! fleet host): index objects and commit objects are theirs to add. Every
//! test starts from real backups of a small volume (a few files, some of
//! 1-3 MiB of incompressible content, so data packs exist apart from tree
//! packs) and crafts, with tests/common/craft.rs, objects that are
//! consistent (named by their content) but lie.

mod common;

use common::craft::{self, names};
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

/// A mark ripens at once: of two prunes, the first marks, the second deletes.
const RIPE: [(&str, &str); 1] = [("VOLSNAP_TEST_MARK_AGE_SECS", "0")];

fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn read_json(path: &Path) -> Value {
    json_of(&std::fs::read_to_string(path).unwrap())
}

/// A project with one volume holding a few files, two of them incompressible
/// (3 MiB and 1 MiB and a bit), and a container using it: (project, volume
/// path, an initialised plain repository).
fn stack(p: &mut Project) -> (String, PathBuf, PathBuf) {
    let repo = p.tempdir().join("repo");
    ok(volsnap(&["init", "--repo", repo.to_str().unwrap()]));
    let vol = p.volume("data", &[]);
    let src = volume_path(&vol);
    std::fs::write(src.join("notes.txt"), b"a small text file\n".repeat(40)).unwrap();
    std::fs::create_dir_all(src.join("conf")).unwrap();
    std::fs::write(src.join("conf/app.conf"), b"key = value\n").unwrap();
    std::fs::write(src.join("a.bin"), pseudo_random(3 << 20, 0xa11ce)).unwrap();
    std::fs::write(src.join("b.bin"), pseudo_random((1 << 20) + 4321, 0xb0b)).unwrap();
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    (p.name.clone(), src, repo)
}

fn s(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn prune(repo: &Path, keep: &str) -> Output {
    volsnap_env(&["prune", "--repo", s(repo), "--keep-last", keep], &RIPE)
}

fn repair(repo: &Path, env: &[(&str, &str)]) -> Output {
    volsnap_env(&["repair", "index", "--repo", s(repo)], env)
}

fn said(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

/// Restores backup `id` of `repo` into a new directory and compares it
/// with `expected`, byte for byte, metadata and all.
fn restores_exactly(p: &mut Project, repo: &Path, id: &str, expected: &Path) {
    let target = p.tempdir();
    restore_to_dir(s(repo), id, &target, &[]);
    assert_same_tree(expected, &restored(&target));
}

/// Writes `value` as an index object named by its bytes: its name.
fn put_index(repo: &Path, value: &Value) -> String {
    let bytes = serde_json::to_vec(value).unwrap();
    let name = craft::b3(&bytes);
    std::fs::write(repo.join("index").join(&name), bytes).unwrap();
    name
}

/// The packs the (live) indexes say hold blobs of `kind`.
fn packs_of_kind(repo: &Path, kind: &str) -> BTreeSet<String> {
    craft::index(repo)
        .into_values()
        .filter(|l| l.kind == kind)
        .map(|l| l.pack)
        .collect()
}

/// A copy of `dir` (metadata, xattrs and all) at `to`.
fn snapshot_tree(dir: &Path, to: &Path) {
    let out = std::process::Command::new("cp")
        .args(["-a", s(dir), s(to)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_killed_at(out: &Output, point: &str) {
    assert!(
        out.status.code().is_none() && stderr(out).contains(&format!("killing myself at {point}")),
        "volsnap repair index was not killed at {point}: {}",
        said(out)
    );
}

/// A prune that refuses: exit 1, saying to run `volsnap repair index`.
fn assert_refuses(out: &Output, which: &str) {
    assert!(
        out.status.code() == Some(1) && stderr(out).contains("repair index"),
        "the {which} prune should refuse (exit 1) and point to volsnap repair index: {}",
        said(out)
    );
    assert!(!stderr(out).contains("panicked"), "{}", said(out));
}

/// A PUT-only attacker adds one index object: it lists only the tree packs
/// (copied from the honest indexes) and supersedes every honest index. The
/// data packs then look like garbage; a prune must not delete what a kept
/// backup uses whatever the indexes say, and `repair index` makes the
/// repository whole again from the packs' own headers.
#[test]
fn a_superseding_index_from_a_put_only_attacker_never_makes_prune_delete_kept_data() {
    let mut p = Project::new("pfsup");
    let (project, src, repo) = stack(&mut p);
    let id = online_backup_id(&project, &repo);
    let data = packs_of_kind(&repo, "data");
    assert!(!data.is_empty(), "the backup stored no data pack");

    let honest = names(&repo, "index");
    let mut tree_packs = Vec::new();
    for name in &honest {
        let file = read_json(&repo.join("index").join(name));
        for pack in file["packs"].as_array().unwrap() {
            if pack["blobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["type"] == "tree")
            {
                tree_packs.push(pack.clone());
            }
        }
    }
    assert!(!tree_packs.is_empty(), "no tree pack in {honest:?}");
    put_index(&repo, &json!({"packs": tree_packs, "supersedes": honest}));
    assert!(
        packs_of_kind(&repo, "data").is_empty(),
        "the crafted index should hide every data pack from readers"
    );

    let packs_before = craft::objects(&repo, "data");
    let marks_before = craft::objects(&repo, "marks");
    let first = prune(&repo, "5");
    let second = prune(&repo, "5");
    for pack in &packs_before {
        assert!(
            repo.join(pack).exists(),
            "prune deleted {pack}, which the kept backup {id} uses (a crafted index superseded the honest ones)\nfirst prune: {}\nsecond prune: {}",
            said(&first),
            said(&second)
        );
    }
    assert_refuses(&first, "first");
    assert_refuses(&second, "second");
    assert_eq!(
        craft::objects(&repo, "marks"),
        marks_before,
        "a refusing prune leaves the marks as they were"
    );

    // Repaired from the packs' own headers: every pack is described again
    // and the crafted index is gone with the others.
    let repaired = repair(&repo, &[]);
    assert_eq!(repaired.status.code(), Some(0), "{}", said(&repaired));
    assert_eq!(
        packs_of_kind(&repo, "data"),
        data,
        "repair describes every data pack"
    );
    for name in &honest {
        assert!(
            !repo.join("index").join(name).exists(),
            "old index {name} left"
        );
    }
    restores_exactly(&mut p, &repo, &id, &src);
    let after = prune(&repo, "5");
    assert_eq!(after.status.code(), Some(0), "{}", said(&after));
    ok(prune(&repo, "5"));
    for pack in &packs_before {
        assert!(repo.join(pack).exists(), "{pack} deleted after the repair");
    }
    verify_all_packs(&repo);
    restores_exactly(&mut p, &repo, &id, &src);
}

/// A pack of garbage whose header (and an index object) claims the real
/// data blobs of the backup: same ids, the real stored lengths, offsets
/// inside the garbage. It is 100% "used" and its id sorts first, so the
/// "fullest pack first, ties by id" choice keeps it and condemns the real
/// pack. Prune must check the copy it keeps by its content before
/// condemning the other.
#[test]
fn an_index_claiming_a_fake_copy_never_makes_prune_delete_the_real_one() {
    let mut p = Project::new("pffake");
    let (project, src, repo) = stack(&mut p);
    let id = online_backup_id(&project, &repo);
    let index = craft::index(&repo);
    let mut claimed: Vec<(String, craft::BlobLoc)> = index
        .into_iter()
        .filter(|(_, l)| l.kind == "data")
        .collect();
    claimed.sort_by(|a, b| a.0.cmp(&b.0));
    let real: BTreeSet<String> = claimed.iter().map(|(_, l)| l.pack.clone()).collect();
    assert!(!claimed.is_empty(), "the backup stored no data blob");
    let honest = names(&repo, "index");

    // The body: a 16-byte nonce, then garbage of each blob's stored length.
    let total: u64 = claimed.iter().map(|(_, l)| l.length).sum();
    let garbage = pseudo_random(total as usize, 0xfa4e);
    let mut entries = Vec::new();
    let mut offset = 16u64;
    for (blob, l) in &claimed {
        entries.push(json!({"id": blob, "type": "data", "offset": offset,
            "length": l.length, "raw_length": l.raw_length}));
        offset += l.length;
    }
    let header = serde_json::to_vec(&json!({ "blobs": entries })).unwrap();
    // Ground until the fake pack's id sorts before every real pack (so it
    // wins the tie) and its index object's name after every honest one (so
    // readers, which take the first copy described, still read the real
    // copy while it exists: only prune is fooled).
    let (pack_id, pack_bytes, index_bytes) = (0u64..100_000)
        .find_map(|nonce| {
            let mut body = Vec::with_capacity(total as usize + header.len() + 20);
            body.extend_from_slice(&pseudo_random(16, nonce + 1));
            body.extend_from_slice(&garbage);
            body.extend_from_slice(&header);
            body.extend_from_slice(&(header.len() as u32).to_le_bytes());
            let pid = craft::b3(&body);
            if real.iter().any(|r| *r <= pid) {
                return None;
            }
            let idx = serde_json::to_vec(&json!({
                "packs": [{"id": pid, "size": body.len() as u64, "blobs": entries}],
                "supersedes": [],
            }))
            .unwrap();
            let name = craft::b3(&idx);
            honest.iter().all(|h| *h < name).then_some((pid, body, idx))
        })
        .expect("no nonce gave a fake pack that wins");
    let dir = repo.join("data").join(&pack_id[..2]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&pack_id), &pack_bytes).unwrap();
    std::fs::write(
        repo.join("index").join(craft::b3(&index_bytes)),
        &index_bytes,
    )
    .unwrap();
    // Readers still read the real copy: the backup restores before a prune.
    restores_exactly(&mut p, &repo, &id, &src);

    let first = prune(&repo, "5");
    let second = prune(&repo, "5");
    for pack in &real {
        assert!(
            craft::pack_path(&repo, pack).exists(),
            "prune deleted the real data pack {pack} of the kept backup {id}, trusting a fake copy in {pack_id}\nfirst prune: {}\nsecond prune: {}",
            said(&first),
            said(&second)
        );
    }
    restores_exactly(&mut p, &repo, &id, &src);
    assert_refuses(&first, "first");
    assert_refuses(&second, "second");
}

/// Every index object lost, truncated, or replaced by one with an entry
/// out of its pack's bounds: verify says to run `repair index`, which
/// rebuilds the indexes from the packs' headers; then everything verifies
/// and restores byte for byte.
#[test]
fn every_index_lost_is_rebuilt_by_repair_index() {
    let mut p = Project::new("pflost");
    let (project, src, pristine) = stack(&mut p);
    let id = online_backup_id(&project, &pristine);
    type Damage = fn(&Path);
    let cases: [(&str, Damage); 3] = [
        ("every index object deleted", |repo| {
            for name in names(repo, "index") {
                std::fs::remove_file(repo.join("index").join(name)).unwrap();
            }
        }),
        ("every index object truncated", |repo| {
            for name in names(repo, "index") {
                let path = repo.join("index").join(name);
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
            }
        }),
        ("an index entry past its pack's end", |repo| {
            for name in names(repo, "index") {
                let path = repo.join("index").join(&name);
                let mut file = read_json(&path);
                for pack in file["packs"].as_array_mut().unwrap() {
                    let size = pack["size"].as_u64().unwrap();
                    if pack["blobs"][0]["type"] == "data" {
                        pack["blobs"][0]["offset"] = json!(size + 4096);
                    }
                }
                put_index(repo, &file);
                std::fs::remove_file(path).unwrap();
            }
        }),
    ];
    for (n, (what, damage)) in cases.iter().enumerate() {
        let repo = p.tempdir().join(format!("case{n}"));
        snapshot_tree(&pristine, &repo);
        damage(&repo);
        let verify = volsnap(&["verify", "--repo", s(&repo), "--all"]);
        assert_eq!(verify.status.code(), Some(1), "{what}: {}", said(&verify));
        if n == 0 {
            assert!(
                format!("{}{}", stdout(&verify), stderr(&verify)).contains("repair index"),
                "{what}: verify should say to run volsnap repair index: {}",
                said(&verify)
            );
        }
        let repaired = repair(&repo, &[]);
        assert_eq!(
            repaired.status.code(),
            Some(0),
            "{what}: {}",
            said(&repaired)
        );
        let verified = volsnap(&[
            "verify",
            "--repo",
            s(&repo),
            "--all",
            "--read-data-subset",
            "100",
        ]);
        assert_eq!(
            verified.status.code(),
            Some(0),
            "{what}: {}",
            said(&verified)
        );
        restores_exactly(&mut p, &repo, &id, &src);
    }
}

/// `repair index` killed after writing the new index (the old ones not yet
/// deleted) and midway through deleting the old ones: `recover` and a
/// second run finish it, and the backups restore byte for byte.
#[test]
fn a_killed_repair_index_is_finished_by_recover_and_a_second_run() {
    let mut p = Project::new("pfkill");
    let (project, src, pristine) = stack(&mut p);
    let first = online_backup_id(&project, &pristine);
    let first_tree = p.tempdir().join("first");
    snapshot_tree(&src, &first_tree);
    std::fs::write(src.join("c.bin"), pseudo_random(2 << 20, 0xc0c)).unwrap();
    let second = online_backup_id(&project, &pristine);
    assert!(
        names(&pristine, "index").len() >= 2,
        "two runs wrote two index objects"
    );
    // Killed after the new index is written: every old one deleted first,
    // as in a repository whose indexes were all lost. Killed midway
    // through deleting the old ones: those must exist, so they are all
    // truncated instead (all lost too, but there to delete).
    for (point, truncate) in [
        ("repair-after-index-written", false),
        ("repair-mid-deletion", true),
    ] {
        let repo = p.tempdir().join(point);
        snapshot_tree(&pristine, &repo);
        for name in names(&repo, "index") {
            let path = repo.join("index").join(name);
            if truncate {
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
        }
        let killed = repair(&repo, &[("VOLSNAP_FAULT_KILL_AT", point)]);
        assert_killed_at(&killed, point);
        let recovered = volsnap(&["recover"]);
        assert_eq!(
            recovered.status.code(),
            Some(0),
            "after {point}: {}",
            said(&recovered)
        );
        let again = repair(&repo, &[]);
        assert_eq!(
            again.status.code(),
            Some(0),
            "after {point}: {}",
            said(&again)
        );
        verify_all_packs(&repo);
        restores_exactly(&mut p, &repo, &first, &first_tree);
        restores_exactly(&mut p, &repo, &second, &src);
    }
}

/// A prune rewrites the pack the first backup shares with a deleted one
/// and deletes the old pack: the first backup's commit still lists it in
/// `packs`. A copy of that backup finds what to send through the source's
/// index as it is now, and the copy restores byte for byte.
#[test]
fn a_copy_after_a_rewriting_prune_sends_what_the_backup_needs_now() {
    let mut p = Project::new("pfcopy");
    let (project, src, repo) = stack(&mut p);
    // Backup 0 holds a.bin, b.bin and c.bin in one data pack; backup 1
    // (the one copied) lacks c.bin: once backup 0 goes, a third of that
    // pack is garbage and prune rewrites it.
    std::fs::write(src.join("c.bin"), pseudo_random(3 << 20, 0xc0c)).unwrap();
    online_backup_id(&project, &repo);
    let shared = packs_of_kind(&repo, "data");
    assert_eq!(shared.len(), 1, "backup 0 wrote one data pack");
    std::fs::remove_file(src.join("c.bin")).unwrap();
    let first = online_backup_id(&project, &repo);
    let first_tree = p.tempdir().join("first");
    snapshot_tree(&src, &first_tree);
    restores_exactly(&mut p, &repo, &first, &first_tree);
    std::fs::write(src.join("notes.txt"), b"changed after backup 1\n").unwrap();
    std::fs::write(src.join("d.bin"), pseudo_random(1 << 20, 0xd0d)).unwrap();
    let last = online_backup_id(&project, &repo);

    let rewriting = json_of(&ok(volsnap_env(
        &["prune", "--repo", s(&repo), "--keep-last", "2", "--json"],
        &RIPE,
    )));
    assert!(
        rewriting["garbage"]["packs_rewritten"].as_u64().unwrap() >= 1,
        "{rewriting}"
    );
    ok(prune(&repo, "2"));
    let old = shared.iter().next().unwrap();
    assert!(
        !craft::pack_path(&repo, old).exists(),
        "the rewritten pack {old} was deleted"
    );
    let (_, commit) = craft::commits(&repo)
        .into_iter()
        .find(|(_, c)| c["id"] == first.as_str())
        .expect("backup 1 is kept");
    assert!(
        commit["packs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == old.as_str()),
        "backup 1's commit still lists the pack that is gone: {commit}"
    );
    verify_all_packs(&repo);

    let dest = p.tempdir().join("dest");
    ok(volsnap(&["init", "--repo", s(&dest), "--like", s(&repo)]));
    let copied = volsnap(&[
        "copy",
        "--from",
        s(&repo),
        "--to",
        s(&dest),
        &first,
        "--json",
    ]);
    assert_eq!(
        copied.status.code(),
        Some(0),
        "copy of backup 1 after the rewriting prune: {}",
        said(&copied)
    );
    assert_eq!(json_of(&stdout(&copied))["copied"], json!([first]));
    verify_all_packs(&dest);
    restores_exactly(&mut p, &dest, &first, &first_tree);
    // The newest one follows, deduplicated against what is there.
    ok(volsnap(&[
        "copy",
        "--from",
        s(&repo),
        "--to",
        s(&dest),
        &last,
    ]));
    restores_exactly(&mut p, &dest, &last, &src);
}

/// The destination holds a planted commit with the backup's human id (and
/// no volumes). A copy matches backups by their commit object, so it copies
/// the real one anyway; then the human id names two backups there: restore
/// refuses it as ambiguous, and the commit object id restores.
#[test]
fn a_planted_commit_with_the_same_backup_id_never_stops_a_copy() {
    let mut p = Project::new("pfplant");
    let (project, src, repo) = stack(&mut p);
    let id = online_backup_id(&project, &repo);
    let dest = p.tempdir().join("dest");
    ok(volsnap(&["init", "--repo", s(&dest), "--like", s(&repo)]));

    let (source_object, mut planted) = craft::newest_commit(&repo);
    assert_eq!(planted["id"], id.as_str());
    planted["volumes"] = json!([]);
    planted["packs"] = json!([]);
    let bytes = serde_json::to_vec(&planted).unwrap();
    let planted_object = craft::b3(&bytes);
    std::fs::create_dir_all(dest.join("snapshots")).unwrap();
    std::fs::write(dest.join("snapshots").join(&planted_object), bytes).unwrap();
    let listed = ok(volsnap(&["list", "--repo", s(&dest)]));
    assert!(
        listed.contains(&id),
        "the planted commit is listed: {listed}"
    );

    let copied = volsnap(&["copy", "--from", s(&repo), "--to", s(&dest), &id, "--json"]);
    assert_eq!(copied.status.code(), Some(0), "{}", said(&copied));
    let real: Vec<String> = craft::commits(&dest)
        .into_iter()
        .filter(|(_, c)| {
            c["id"] == id.as_str() && c["volumes"].as_array().is_some_and(|v| !v.is_empty())
        })
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        real.len(),
        1,
        "the copy should have copied backup {id} (object {source_object}) despite the planted commit {planted_object}; the copy said: {}",
        said(&copied)
    );
    let real = &real[0];
    assert_ne!(*real, planted_object);
    verify_all_packs(&dest);
    restores_exactly(&mut p, &dest, real, &src);

    // The human id is ambiguous in the destination now.
    let target = p.tempdir();
    let ambiguous = volsnap(&[
        "restore",
        "--repo",
        s(&dest),
        &id,
        "--target-dir",
        s(&target),
    ]);
    let err = stderr(&ambiguous);
    assert!(
        ambiguous.status.code() == Some(2)
            && (err.contains("ambiguous") || (err.contains(real.as_str()) && err.contains(&planted_object))),
        "restore by the human id {id}, which two commits of the destination carry, should refuse naming both: {}",
        said(&ambiguous)
    );
    assert!(
        names(&target, ".").is_empty(),
        "a refused restore writes nothing: {:?}",
        names(&target, ".")
    );
    // The same holds in a further copy: nothing more to send.
    let again = json_of(&ok(volsnap(&[
        "copy",
        "--from",
        s(&repo),
        "--to",
        s(&dest),
        &id,
        "--json",
    ])));
    assert_eq!(again["copied"], json!([]), "{again}");
}
