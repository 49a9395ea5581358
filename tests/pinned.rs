//! What a repository is, pinned on the host: a `config` rewritten in
//! storage (encryption or Object Lock switched off, another repository put
//! in its place) is refused before anything is stopped or stored, naming
//! the change; keys given for a plain repository are an error; only
//! `volsnap repo trust` on the host accepts a change.

mod common;

use common::servers::*;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Output;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn fails_saying(out: &Output, code: i32, says: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", stderr(out));
    assert!(
        stderr(out).contains(says),
        "expected {says:?} in: {}",
        stderr(out)
    );
}

/// Rewrites the repository's `config` as an attacker with write access to
/// the storage would.
fn rewrite_config(repo: &Path, edit: impl FnOnce(&mut Value)) {
    let path = repo.join("config");
    let mut config = json(&std::fs::read_to_string(&path).unwrap());
    edit(&mut config);
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten() {
            let p = e.unwrap().path();
            if p.is_dir() {
                pending.push(p);
            } else {
                n += 1;
            }
        }
    }
    n
}

fn stack(p: &mut Project) -> String {
    let vol = p.volume("data", &[]);
    make_fixture(&volume_path(&vol));
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"])
}

#[test]
fn an_encrypted_repository_whose_config_says_plain_is_refused_before_anything_is_stored() {
    let mut p = Project::new("pinenc");
    let keys = p.tempdir();
    let (identity, recipient) = keygen(&keys, "reader");
    let repo = p.tempdir().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    let app = stack(&mut p);
    ok(volsnap(&[
        "init",
        "--repo",
        &repo_s,
        "--recipient",
        &recipient,
    ]));
    let project = p.name.clone();
    let cold = ["--strategy", "cold", "--json"];
    let first = json(&ok(volsnap(&backup_args(&project, &repo, &cold))));
    assert!(first["id"].is_string());

    rewrite_config(&repo, |c| c["encryption"] = Value::Null);
    let stored = count_files(&repo.join("data"));

    // The host pinned the repository at init: the downgrade is named, and
    // refused before the services stop or anything is stored.
    let out = volsnap(&backup_args(&project, &repo, &cold));
    fails_saying(&out, 2, "plaintext");
    assert!(is_running(&app), "the service was never stopped");
    assert_eq!(count_files(&repo.join("data")), stored, "nothing stored");
    fails_saying(&volsnap(&["list", "--repo", &repo_s]), 2, "encrypted");
    let shown = ok(volsnap(&["repo", "show", "--repo", &repo_s]));
    assert!(shown.contains("DIFFERENT"), "{shown}");

    // A host that never opened it, given the write key or an identity,
    // refuses too: keys named for a plain repository are an error.
    let key_file = std::fs::read_dir(state_dir().join("keys"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let other_host = p.tempdir();
    let other = [("VOLSNAP_STATE_DIR", other_host.to_str().unwrap())];
    let out = volsnap_env(
        &[
            "list",
            "--repo",
            &repo_s,
            "--write-key",
            key_file.to_str().unwrap(),
        ],
        &other,
    );
    fails_saying(&out, 2, "is not encrypted, but a write key");
    let out = volsnap_env(
        &[
            "list",
            "--repo",
            &repo_s,
            "--identity",
            identity.to_str().unwrap(),
        ],
        &other,
    );
    fails_saying(&out, 2, "an identity");
    assert_eq!(count_files(&repo.join("data")), stored);
}

#[test]
fn another_repository_in_the_same_place_needs_repo_trust() {
    let mut p = Project::new("pinid");
    let repo = p.tempdir().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    stack(&mut p);
    let project = p.name.clone();
    std::fs::create_dir(&repo).unwrap();
    ok(volsnap(&backup_args(
        &project,
        &repo,
        &["--strategy", "online"],
    )));
    // Someone replaces it with a repository of their own (another id and
    // chunking), consistent in itself.
    std::fs::remove_dir_all(&repo).unwrap();
    let elsewhere = p.tempdir();
    ok(volsnap_env(
        &["init", "--repo", &repo_s],
        &[("VOLSNAP_STATE_DIR", elsewhere.to_str().unwrap())],
    ));
    rewrite_config(&repo, |c| c["chunker"]["avg"] = Value::from(512 << 10));
    let out = volsnap(&["list", "--repo", &repo_s]);
    fails_saying(&out, 2, "another repository is there now");
    assert!(stderr(&out).contains("chunker"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("volsnap repo trust"),
        "{}",
        stderr(&out)
    );

    // The operator looks, then accepts it on this host.
    let trusted = ok(volsnap(&["repo", "trust", "--repo", &repo_s]));
    assert!(trusted.contains("accepted"), "{trusted}");
    ok(volsnap(&["list", "--repo", &repo_s]));
    ok(volsnap(&backup_args(
        &project,
        &repo,
        &["--strategy", "online"],
    )));
    let again = ok(volsnap(&["repo", "trust", "--repo", &repo_s]));
    assert!(again.contains("unchanged"), "{again}");
}

#[test]
fn an_immutable_repository_whose_config_drops_object_lock_is_refused() {
    let Some(s3) = S3Server::start(S3Kind::Moto, "pinlock") else {
        return;
    };
    s3.boto("s3.create_bucket(Bucket='locked', ObjectLockEnabledForBucket=True)");
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let repo = "s3://locked/r";
    ok(volsnap_env(
        &["init", "--repo", repo, "--immutable", "2"],
        &env,
    ));
    let mut p = Project::new("pinlock");
    let app = stack(&mut p);
    let project = p.name.clone();
    let args = [
        "backup",
        "--project",
        &project,
        "--repo",
        repo,
        "--strategy",
        "cold",
    ];
    ok(volsnap_env(&args, &env));
    let count = "print(len(s3.list_objects_v2(Bucket='locked', Prefix='r/snapshots/').get('Contents', [])))";
    let commits = s3.boto(count);

    // A new version of config (the bucket is versioned; the locked one
    // stays underneath) that switches retention off.
    s3.boto("c = json.loads(s3.get_object(Bucket='locked', Key='r/config')['Body'].read())\n\
         c['immutable_days'] = None\n\
         body = json.dumps(c).encode()\n\
         s3.put_object(Bucket='locked', Key='r/config', Body=body, ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode())",
    );
    let out = volsnap_env(&args, &env);
    fails_saying(&out, 2, "immutability");
    assert!(is_running(&app), "the service was never stopped");
    assert_eq!(s3.boto(count), commits, "no backup was committed");
}

/// A former fleet host keeps a copy of the old write key file: after a
/// rotation it makes up material that extends the old key with more
/// generations of its own (`key rotate` twice, from its copy) and replaces
/// the repository's key object. A host with an identity that has used the
/// real rotation refuses the made-up material instead of sealing with
/// keys the former host knows.
#[test]
fn write_key_material_that_drops_a_rotation_this_host_used_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let repo_s = repo.to_str().unwrap();
    let (identity, recipient) = keygen(dir.path(), "reader");
    let owner = dir.path().join("owner");
    let reader = dir.path().join("reader-state");
    let former = dir.path().join("former");
    let as_state = |state: &Path, args: &[&str]| {
        volsnap_env(args, &[("VOLSNAP_STATE_DIR", state.to_str().unwrap())])
    };
    let read = |args: &[&str]| {
        let mut all = vec![
            "list",
            "--repo",
            repo_s,
            "--identity",
            identity.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        as_state(&reader, &all)
    };
    ok(as_state(
        &owner,
        &["init", "--repo", repo_s, "--recipient", &recipient],
    ));
    ok(read(&[]));
    // The former host's copy of the key file, from before the rotation.
    std::fs::create_dir_all(former.join("keys")).unwrap();
    for key in std::fs::read_dir(owner.join("keys")).unwrap() {
        let key = key.unwrap().path();
        std::fs::copy(&key, former.join("keys").join(key.file_name().unwrap())).unwrap();
    }
    ok(as_state(&owner, &["key", "rotate", "--repo", repo_s]));
    ok(read(&[]));
    let keys_before = count_files(&repo.join("keys"));
    ok(as_state(&former, &["key", "rotate", "--repo", repo_s]));
    ok(as_state(&former, &["key", "rotate", "--repo", repo_s]));
    assert_eq!(count_files(&repo.join("keys")), keys_before, "replaced");
    fails_saying(&read(&[]), 2, "lack generations");
    // A host that never used the repository has nothing to tell by: it
    // takes what it finds (first use).
    let newcomer = dir.path().join("newcomer");
    ok(as_state(
        &newcomer,
        &[
            "list",
            "--repo",
            repo_s,
            "--identity",
            identity.to_str().unwrap(),
        ],
    ));
}
