//! A host's backups are its own: commits are signed by the host that made
//! them, and retention and `latest` believe a commit's host name only when
//! it verifies against a key trusted for that name. Forged commits from
//! another host holding the write key, a reinstalled host, a revoked key,
//! a commit dated in the future, a tampered field, and copies.

mod common;

use common::craft;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// volsnap as host `host` with state directory `state`.
fn as_host(host: &str, state: &Path, args: &[&str]) -> std::process::Output {
    volsnap_env(
        args,
        &[
            ("VOLSNAP_HOST", host),
            ("VOLSNAP_STATE_DIR", state.to_str().unwrap()),
        ],
    )
}

struct Fleet {
    _p: Project,
    /// The backed-up volume's directory.
    data: PathBuf,
    repo: PathBuf,
    repo_s: String,
    container: String,
}

fn fleet(prefix: &str) -> Fleet {
    fleet_with(prefix, false)
}

/// The same, in a repository encrypted to a new age identity.
fn encrypted_fleet(prefix: &str) -> Fleet {
    fleet_with(prefix, true)
}

fn fleet_with(prefix: &str, encrypted: bool) -> Fleet {
    let mut p = Project::new(prefix);
    let vol = p.volume("data", &[]);
    let data = volume_path(&vol);
    make_fixture(&data);
    let mount = format!("{vol}:/data");
    let container = p.service("app", &[], &["-v", &mount], &["idle"]);
    let repo = p.tempdir().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let repo_s = repo.to_str().unwrap().to_string();
    if encrypted {
        let (_, recipient) = keygen(&p.tempdir(), "reader");
        ok(volsnap(&[
            "init",
            "--repo",
            &repo_s,
            "--recipient",
            &recipient,
        ]));
    }
    Fleet {
        _p: p,
        data,
        repo,
        repo_s,
        container,
    }
}

impl Fleet {
    fn backup(&self, host: &str, state: &Path) -> String {
        let out = ok(as_host(
            host,
            state,
            &[
                "backup",
                "--repo",
                &self.repo_s,
                "--container",
                &self.container,
                "--strategy",
                "online",
                "--json",
            ],
        ));
        json(&out)["id"].as_str().unwrap().to_string()
    }

    /// `list --json` as seen from `state`: id → attribution.
    fn attributions(&self, state: &Path) -> Vec<(String, String)> {
        let listed = json(&ok(as_host(
            "observer",
            state,
            &["list", "--repo", &self.repo_s, "--json"],
        )));
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["id"].as_str().unwrap().to_string(),
                    b["attribution"]["is"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// The backup ids `list` shows from `state` (an encrypted repository's
    /// commits are sealed).
    fn ids_listed(&self, state: &Path) -> Vec<String> {
        self.attributions(state)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    fn ids(&self) -> Vec<String> {
        craft::commits(&self.repo)
            .into_iter()
            .map(|(_, c)| c["id"].as_str().unwrap().to_string())
            .collect()
    }
}

fn latest_of(f: &Fleet, host: &str, state: &Path) -> std::process::Output {
    as_host(host, state, &["verify", "--repo", &f.repo_s])
}

#[test]
fn forged_commits_from_another_host_never_make_the_victims_prune_delete_its_backups() {
    let f = fleet("forge");
    let victim = state_dir();
    let attacker = f.p_tempdir();
    let real: Vec<String> = (0..3).map(|_| f.backup("victim", &victim)).collect();
    // A host holding the write key (here: the whole repository) writes
    // newer backups that claim to be the victim's.
    let forged: Vec<String> = (0..3).map(|_| f.backup("victim", &attacker)).collect();

    let seen = f.attributions(&victim);
    for id in &real {
        assert!(seen.contains(&(id.clone(), "verified".into())), "{seen:?}");
    }
    for id in &forged {
        assert!(seen.contains(&(id.clone(), "untrusted".into())), "{seen:?}");
    }
    let listed = ok(as_host("victim", &victim, &["list", "--repo", &f.repo_s]));
    assert!(
        listed.lines().filter(|l| l.contains('?')).count() >= 3,
        "{listed}"
    );
    // `latest` is the victim's own newest, not the newer forgery.
    let verified = ok(latest_of(&f, "victim", &victim));
    assert!(
        verified.contains(&format!("backup {} is intact", real[2])),
        "{verified}"
    );

    // Retention counts only what verifies and deletes no forgery.
    let pruned = ok(as_host(
        "victim",
        &victim,
        &[
            "prune",
            "--repo",
            &f.repo_s,
            "--host",
            "victim",
            "--keep-last",
            "3",
        ],
    ));
    assert!(pruned.contains("untouched"), "{pruned}");
    let ids = f.ids();
    for id in real.iter().chain(&forged) {
        assert!(ids.contains(id), "{id} survives keep-last 3: {pruned}");
    }
    ok(as_host(
        "victim",
        &victim,
        &["prune", "--repo", &f.repo_s, "--keep-last", "1"],
    ));
    let ids = f.ids();
    assert!(ids.contains(&real[2]) && !ids.contains(&real[0]) && !ids.contains(&real[1]));
    for id in &forged {
        assert!(
            ids.contains(id),
            "retention never deletes an unverified backup"
        );
    }
    // Only the operator's explicit word removes one.
    let said = ok(as_host(
        "victim",
        &victim,
        &["forget", "--repo", &f.repo_s, &forged[0]],
    ));
    assert!(said.contains("forgot"), "{said}");
    assert!(!f.ids().contains(&forged[0]));

    // A host that trusts no key for the victim refuses to prune it.
    let pruner = f.p_tempdir();
    let out = as_host(
        "pruner",
        &pruner,
        &[
            "prune",
            "--repo",
            &f.repo_s,
            "--host",
            "victim",
            "--keep-last",
            "1",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("trusts no key"), "{}", stderr(&out));
    // ...and `latest` of the victim lists the candidates instead.
    let out = latest_of(&f, "victim", &pruner);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(&real[2]), "{}", stderr(&out));

    // Any one signed field changed: the signature no longer verifies.
    let (object, mut commit) = craft::commits(&f.repo)
        .into_iter()
        .find(|(_, c)| c["id"] == real[2].as_str())
        .unwrap();
    commit["reason"] = Value::from("tampered");
    craft::replace_commit_as_is(&f.repo, &object, &commit);
    let seen = f.attributions(&victim);
    assert!(
        seen.contains(&(real[2].clone(), "bad_signature".into())),
        "{seen:?}"
    );
    let out = latest_of(&f, "victim", &victim);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn a_reinstalled_host_keeps_its_old_backups_and_a_revoked_key_is_distrusted() {
    let f = fleet("reinst");
    let (before, after, pruner) = (f.p_tempdir(), f.p_tempdir(), state_dir());
    let old = f.backup("web", &before);
    let new = f.backup("web", &after); // the same host, reinstalled: a new key
    for state in [&before, &after] {
        let fingerprint = host_fingerprint(state);
        ok(as_host(
            "pruner",
            &pruner,
            &["host", "trust", "web", &fingerprint],
        ));
    }
    let seen = f.attributions(&pruner);
    assert!(seen.contains(&(old.clone(), "verified".into())), "{seen:?}");
    assert!(seen.contains(&(new.clone(), "verified".into())), "{seen:?}");

    // The old installation was compromised: its key is revoked.
    ok(as_host(
        "pruner",
        &pruner,
        &["host", "revoke", &host_fingerprint(&before)],
    ));
    let seen = f.attributions(&pruner);
    assert!(
        seen.contains(&(old.clone(), "untrusted".into())),
        "{seen:?}"
    );
    ok(as_host(
        "pruner",
        &pruner,
        &[
            "prune",
            "--repo",
            &f.repo_s,
            "--host",
            "web",
            "--keep-last",
            "1",
        ],
    ));
    let ids = f.ids();
    assert!(
        ids.contains(&old),
        "a revoked key's backup is not deleted by retention"
    );
    assert!(ids.contains(&new));
    let shown = ok(as_host("pruner", &pruner, &["host", "show"]));
    assert!(shown.contains("(revoked)"), "{shown}");
}

#[test]
fn a_commit_dated_in_the_future_never_wins_and_copies_keep_their_signatures() {
    let f = fleet("future");
    let host = state_dir();
    let first = f.backup("db", &host);
    let second = f.backup("db", &host);
    // Signed by the host's own key, but dated a day ahead.
    let (object, value) = craft::commits(&f.repo)
        .into_iter()
        .find(|(_, c)| c["id"] == second.as_str())
        .unwrap();
    let mut commit: volsnap::repo::v2::objects::Commit = serde_json::from_value(value).unwrap();
    commit.started_at += chrono::Duration::days(1);
    commit.completed_at += chrono::Duration::days(1);
    let key = volsnap::repo::attest::HostKey::load(&host)
        .unwrap()
        .unwrap();
    key.sign(&mut commit).unwrap();
    craft::replace_commit_as_is(&f.repo, &object, &serde_json::to_value(&commit).unwrap());
    let seen = f.attributions(&host);
    assert!(
        seen.contains(&(second.clone(), "from_the_future".into())),
        "{seen:?}"
    );
    let verified = ok(latest_of(&f, "db", &host));
    assert!(
        verified.contains(&format!("backup {first} is intact")),
        "{verified}"
    );
    ok(as_host(
        "db",
        &host,
        &["prune", "--repo", &f.repo_s, "--keep-last", "1"],
    ));
    let ids = f.ids();
    assert!(ids.contains(&first) && ids.contains(&second), "{ids:?}");

    // A copy carries the signatures: they verify in the destination.
    let third = f.backup("db", &host);
    let dest = f.p_tempdir().join("dest");
    let dest_s = dest.to_str().unwrap();
    ok(as_host(
        "db",
        &host,
        &["init", "--repo", dest_s, "--like", &f.repo_s],
    ));
    ok(as_host(
        "db",
        &host,
        &["copy", "--from", &f.repo_s, "--to", dest_s, &third],
    ));
    let listed = json(&ok(as_host(
        "db",
        &host,
        &["list", "--repo", dest_s, "--json"],
    )));
    let copied = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == third.as_str())
        .unwrap();
    assert_eq!(copied["attribution"]["is"], "verified", "{copied}");
}

impl Fleet {
    fn p_tempdir(&self) -> PathBuf {
        tempfile::tempdir().unwrap().keep()
    }
}

/// Notes are sealed to their backup and kind: a `verified` note moved onto
/// another backup (say, a damaged one) no longer opens there.
#[test]
fn a_verified_note_moved_onto_another_backup_does_not_open_there() {
    let f = encrypted_fleet("noteseal");
    let (repo, repo_s) = (&f.repo, &f.repo_s);
    let (first, second) = (f.backup("db", &state_dir()), f.backup("db", &state_dir()));
    ok(volsnap(&["verify", "--repo", repo_s, &first]));
    let object_of = |id: &str| {
        craft::names(repo, "snapshots")
            .into_iter()
            .find(|n| {
                let listed = json(&ok(volsnap(&["list", "--repo", repo_s, "--json"])));
                listed
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|b| b["id"] == id && b["object"] == n.as_str())
            })
            .unwrap()
    };
    let (a, b) = (object_of(&first), object_of(&second));
    let notes = repo.join("notes");
    let note = std::fs::read_dir(notes.join(&a))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("verified-")
        })
        .expect("a verified note");
    std::fs::create_dir_all(notes.join(&b)).unwrap();
    std::fs::copy(&note, notes.join(&b).join(note.file_name().unwrap())).unwrap();
    let listed = json(&ok(volsnap(&["list", "--repo", repo_s, "--json"])));
    let row = |id: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap()
            .clone()
    };
    assert!(row(&first)["verified_at"].is_string(), "{listed}");
    assert!(row(&second)["verified_at"].is_null(), "{listed}");
}

/// Copies of a real signed commit (another `stored_bytes`, so other
/// objects with the same signature) are one backup to retention: they
/// cannot fill keep-last's slots and push the host's older backups out.
#[test]
fn copies_of_a_signed_commit_count_once_in_retention() {
    let f = fleet("dupsig");
    let host = state_dir();
    let real: Vec<String> = (0..3).map(|_| f.backup("db", &host)).collect();
    let (_, newest) = craft::commits(&f.repo)
        .into_iter()
        .find(|(_, c)| c["id"] == real[2].as_str())
        .unwrap();
    for n in 0..3u64 {
        let mut copy = newest.clone();
        copy["stored_bytes"] = Value::from(1_000_000 + n);
        let bytes = serde_json::to_vec(&copy).unwrap();
        let name = craft::b3(&bytes);
        std::fs::write(f.repo.join("snapshots").join(name), bytes).unwrap();
    }
    let seen = f.attributions(&host);
    assert_eq!(
        seen.iter()
            .filter(|(id, a)| *id == real[2] && a == "verified")
            .count(),
        4,
        "the copies verify: {seen:?}"
    );
    ok(as_host(
        "db",
        &host,
        &["prune", "--repo", &f.repo_s, "--keep-last", "3"],
    ));
    let ids = f.ids();
    for id in &real {
        assert!(ids.contains(id), "{id} kept by keep-last 3: {ids:?}");
    }
}

/// A newer note of junk never hides a real protection.
#[test]
fn a_planted_junk_note_never_lifts_a_protection() {
    let f = encrypted_fleet("junknote");
    let (repo, repo_s) = (&f.repo, &f.repo_s);
    f.backup("db", &state_dir());
    ok(as_host(
        "db",
        &state_dir(),
        &["protect", "--repo", repo_s, "latest"],
    ));
    let object = craft::names(repo, "notes").pop().expect("a note directory");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(
        repo.join("notes").join(&object).join("protected-ffff"),
        b"junk that opens with no key",
    )
    .unwrap();
    let listed = json(&ok(volsnap(&["list", "--repo", repo_s, "--json"])));
    assert_eq!(listed[0]["protected"], true, "{listed}");
}

/// A repository written before commits were signed: `host adopt` attests
/// the backups this host's own history records, so its retention counts
/// them again; an unsigned commit claiming its name that it did not write
/// stays unverified, and one copying a real backup's time and selection
/// makes that record ambiguous (neither adopted).
#[test]
fn host_adopt_attests_only_the_unsigned_backups_this_host_recorded() {
    let f = fleet("adopt");
    let victim = state_dir();
    let attacker = f.p_tempdir();
    let real: Vec<String> = (0..4).map(|_| f.backup("victim", &victim)).collect();
    let forged = f.backup("victim", &attacker);
    // Every commit as an older volsnap wrote it: no signature.
    for (object, mut commit) in craft::commits(&f.repo) {
        commit.as_object_mut().unwrap().remove("signature");
        craft::replace_commit_as_is(&f.repo, &object, &commit);
    }
    // A copy of real[0] with its time and selection but other content.
    let (_, mut twin) = craft::commits(&f.repo)
        .into_iter()
        .find(|(_, c)| c["id"] == real[0].as_str())
        .unwrap();
    twin["reason"] = Value::from("planted");
    craft::put_named(&f.repo, "snapshots", &serde_json::to_vec(&twin).unwrap());
    let unsigned = |seen: &[(String, String)], id: &str| {
        seen.iter()
            .filter(|(i, _)| i == id)
            .all(|(_, a)| a == "unsigned")
    };
    let seen = f.attributions(&victim);
    assert!(real.iter().all(|id| unsigned(&seen, id)), "{seen:?}");
    // Unverified: retention keeps everything.
    let prune = |keep: &str| {
        ok(as_host(
            "victim",
            &victim,
            &["prune", "--repo", &f.repo_s, "--keep-last", keep],
        ))
    };
    prune("1");
    assert_eq!(f.ids().len(), 6, "nothing unverified is deleted");

    let said = ok(as_host(
        "victim",
        &victim,
        &["host", "adopt", "--repo", &f.repo_s],
    ));
    assert!(said.contains("adopted 3 backup(s)"), "{said}");
    assert!(
        said.contains("ambiguous") || said.contains(&real[0]),
        "{said}"
    );
    assert!(said.contains(&forged), "{said}");
    let seen = f.attributions(&victim);
    for id in &real[1..] {
        assert!(seen.contains(&(id.clone(), "adopted".into())), "{seen:?}");
    }
    assert!(unsigned(&seen, &real[0]), "ambiguous: {seen:?}");
    assert!(unsigned(&seen, &forged), "{seen:?}");
    // Another host that trusts the victim's key believes the attestations;
    // one that does not, does not.
    let other = f.p_tempdir();
    let seen = f.attributions(&other);
    assert!(real[1..]
        .iter()
        .all(|id| !seen.contains(&(id.clone(), "adopted".into()))));

    // Retention now counts the adopted ones: keep-last 2 deletes real[1].
    let pruned = prune("2");
    let ids = f.ids();
    assert!(!ids.contains(&real[1]), "{pruned}");
    assert!(ids.contains(&real[2]) && ids.contains(&real[3]), "{pruned}");
    assert!(ids.contains(&forged), "{pruned}");
    assert_eq!(ids.iter().filter(|i| **i == real[0]).count(), 2, "{pruned}");
    // Its attestation went with it; the others stay.
    assert_eq!(craft::names(&f.repo, "attestations").len(), 2);

    // The operator may vouch for one by its commit object id.
    let (object, _) = craft::commits(&f.repo)
        .into_iter()
        .find(|(_, c)| c["id"] == real[0].as_str() && c["reason"] != "planted")
        .unwrap();
    let out = as_host(
        "victim",
        &victim,
        &["host", "adopt", "--repo", &f.repo_s, &real[0]],
    );
    assert_eq!(out.status.code(), Some(2), "ambiguous id: {}", stderr(&out));
    let said = ok(as_host(
        "victim",
        &victim,
        &["host", "adopt", "--repo", &f.repo_s, &object],
    ));
    assert!(said.contains("adopted 1 backup(s)"), "{said}");
    let seen = f.attributions(&victim);
    assert!(
        seen.contains(&(real[0].clone(), "adopted".into())),
        "{seen:?}"
    );

    // An adopted backup's attestation travels with a copy.
    let dest = f.p_tempdir().join("dest");
    ok(as_host(
        "victim",
        &victim,
        &[
            "init",
            "--repo",
            dest.to_str().unwrap(),
            "--like",
            &f.repo_s,
        ],
    ));
    ok(as_host(
        "victim",
        &victim,
        &[
            "copy",
            "--from",
            &f.repo_s,
            "--to",
            dest.to_str().unwrap(),
            &real[3],
        ],
    ));
    let listed = json(&ok(as_host(
        "victim",
        &victim,
        &["list", "--repo", dest.to_str().unwrap(), "--json"],
    )));
    assert_eq!(listed[0]["attribution"]["is"], "adopted", "{listed}");
}

/// A backup counts for retention only if every piece it uses is there: a
/// verified newest backup whose packs were deleted does not take the place
/// of an intact older one, and is not deleted either.
#[test]
fn a_backup_missing_its_packs_is_not_counted_by_retention() {
    let f = fleet("incomplete");
    let me = state_dir();
    let mut ids = Vec::new();
    for n in 0..3 {
        std::fs::write(
            f.data.join(format!("new-{n}.bin")),
            vec![n as u8 + 7; 300_000],
        )
        .unwrap();
        ids.push(f.backup("victim", &me));
    }
    let commits = craft::commits(&f.repo);
    let packs_of = |id: &str| -> Vec<String> {
        commits.iter().find(|(_, c)| c["id"] == id).unwrap().1["packs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect()
    };
    let older: Vec<String> = packs_of(&ids[0])
        .into_iter()
        .chain(packs_of(&ids[1]))
        .collect();
    // Its data packs (its trees stay readable, so garbage collection
    // still knows what it uses).
    let data_packs: Vec<String> = craft::index(&f.repo)
        .into_values()
        .filter(|b| b.kind == "data")
        .map(|b| b.pack)
        .collect();
    let only_newest: Vec<String> = packs_of(&ids[2])
        .into_iter()
        .filter(|p| !older.contains(p) && data_packs.contains(p))
        .collect();
    assert!(!only_newest.is_empty());
    for pack in &only_newest {
        std::fs::remove_file(craft::pack_path(&f.repo, pack)).unwrap();
    }
    let pruned = ok(as_host(
        "victim",
        &me,
        &[
            "prune",
            "--repo",
            &f.repo_s,
            "--keep-last",
            "2",
            "--dry-run",
        ],
    ));
    assert!(pruned.contains("incomplete"), "{pruned}");
    // The real run keeps all three; its garbage collection then refuses
    // to delete anything in a damaged repository, and says so.
    let out = as_host(
        "victim",
        &me,
        &["prune", "--repo", &f.repo_s, "--keep-last", "2"],
    );
    assert!(stderr(&out).contains("repair index"), "{}", stderr(&out));
    let pruned = stdout(&out);
    let left = f.ids();
    for id in &ids {
        assert!(left.contains(id), "{id} stays: {pruned}");
    }
}

/// The credentials table's second row: a fleet host holding the shared
/// write key of an encrypted repository writes newer backups claiming the
/// victim's name, sealed like real ones; the victim's retention and
/// `latest` still count only its own.
#[test]
fn a_host_with_the_write_key_cannot_make_the_victims_retention_count_its_forgeries() {
    let f = encrypted_fleet("writekey");
    let victim = state_dir();
    let attacker = f.p_tempdir();
    // The attacker holds the write key as every fleet host does.
    let keys = victim.join("keys");
    std::fs::create_dir_all(attacker.join("keys")).unwrap();
    for key in std::fs::read_dir(&keys).unwrap() {
        let key = key.unwrap().path();
        if key.extension().is_some_and(|e| e == "key") && !key.ends_with("host-signing.key") {
            std::fs::copy(&key, attacker.join("keys").join(key.file_name().unwrap())).unwrap();
        }
    }
    let real: Vec<String> = (0..2).map(|_| f.backup("victim", &victim)).collect();
    let forged: Vec<String> = (0..3).map(|_| f.backup("victim", &attacker)).collect();
    let seen = f.attributions(&victim);
    for id in &forged {
        assert!(seen.contains(&(id.clone(), "untrusted".into())), "{seen:?}");
    }
    let pruned = ok(as_host(
        "victim",
        &victim,
        &[
            "prune",
            "--repo",
            &f.repo_s,
            "--host",
            "victim",
            "--keep-last",
            "2",
        ],
    ));
    let ids = f.ids_listed(&victim);
    for id in real.iter().chain(&forged) {
        assert!(ids.contains(id), "{id} stays: {pruned}");
    }
    let verified = ok(latest_of(&f, "victim", &victim));
    assert!(
        verified.contains(&format!("backup {} is intact", real[1])),
        "{verified}"
    );
}
