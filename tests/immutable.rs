//! Immutable repositories on a real S3 server with Object Lock (moto), a
//! real Docker daemon, and boto3 playing the attacker who holds the host's
//! credentials: every object a backup needs is retained in compliance mode,
//! deleting a retained version is refused by the server, and prune keeps
//! (and names) what Object Lock still retains.

mod common;

use common::servers::*;
use common::*;
use serde_json::Value;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn an_immutable_repository_survives_leaked_credentials_and_prune_names_what_it_keeps() {
    let Some(s3) = S3Server::start(S3Kind::Moto, "immutable") else {
        return;
    };
    s3.boto("s3.create_bucket(Bucket='locked-b', ObjectLockEnabledForBucket=True)\n\
         s3.create_bucket(Bucket='plain-b')\n\
         s3.create_bucket(Bucket='default-b', ObjectLockEnabledForBucket=True)\n\
         s3.put_object_lock_configuration(Bucket='default-b', ObjectLockConfiguration={'ObjectLockEnabled': 'Enabled', 'Rule': {'DefaultRetention': {'Mode': 'GOVERNANCE', 'Days': 1}}})",
    );
    let env = s3.env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("VOLSNAP_TEST_MARK_AGE_SECS", "0"));

    // Buckets that cannot hold an immutable repository are refused before
    // anything is written, saying why.
    for (bucket, says) in [
        ("plain-b", "does not have Object Lock enabled"),
        ("default-b", "default retention"),
    ] {
        let repo = format!("s3://{bucket}/r");
        let out = volsnap_env(&["init", "--repo", &repo, "--immutable", "2"], &env);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
        let listed = s3.boto(&format!(
            "print(s3.list_objects_v2(Bucket='{bucket}').get('KeyCount', 0))"
        ));
        assert_eq!(listed.trim(), "0", "{bucket} stays empty");
    }
    let out = volsnap_env(&["init", "--repo", "/tmp/x", "--immutable", "2"], &env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let repo = "s3://locked-b/r";
    let said = ok(volsnap_env(
        &["init", "--repo", repo, "--immutable", "2"],
        &env,
    ));
    assert!(said.contains("immutable"), "{said}");

    let mut p = Project::new("immut");
    let vol = p.volume("data", &[]);
    let src = volume_path(&vol);
    make_fixture(&src);
    std::fs::write(src.join("doomed.bin"), pseudo_random(3 << 20, 0x1a)).unwrap();
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    let project = p.name.clone();
    let backup = || -> Value {
        json(&ok(volsnap_env(
            &[
                "backup",
                "--project",
                &project,
                "--repo",
                repo,
                "--strategy",
                "online",
                "--json",
            ],
            &env,
        )))
    };
    let first = backup()["id"].as_str().unwrap().to_string();

    // Every object a backup needs is retained two days in compliance mode;
    // locks (released) and nothing else of the run is left unretained.
    let described = s3.boto(
        "now = datetime.datetime.now(datetime.timezone.utc)\n\
         for o in s3.list_objects_v2(Bucket='locked-b', Prefix='r/')['Contents']:\n\
         \x20   h = s3.head_object(Bucket='locked-b', Key=o['Key'])\n\
         \x20   until = h.get('ObjectLockRetainUntilDate')\n\
         \x20   days = (until - now).total_seconds() / 86400 if until else 0\n\
         \x20   print(o['Key'], h.get('ObjectLockMode'), round(days, 2), h['VersionId'])",
    );
    let objects: Vec<Vec<&str>> = described
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for prefix in ["r/config", "r/data/", "r/index/", "r/snapshots/"] {
        let of: Vec<_> = objects
            .iter()
            .filter(|o| o[0].starts_with(prefix))
            .collect();
        assert!(!of.is_empty(), "no {prefix}: {described}");
        for o in of {
            assert_eq!(o[1], "COMPLIANCE", "{described}");
            let days: f64 = o[2].parse().unwrap();
            assert!(days > 1.9 && days <= 2.0, "{described}");
        }
    }
    assert!(
        !objects.iter().any(|o| o[0].starts_with("r/locks/")),
        "{described}"
    );

    // The attacker with the host's credentials: deleting any version of a
    // pack or a backup object is refused by the server.
    for o in objects
        .iter()
        .filter(|o| o[0].starts_with("r/data/") || o[0].starts_with("r/snapshots/"))
    {
        let refused = s3.boto(&format!(
                "try:\n    s3.delete_object(Bucket='locked-b', Key={:?}, VersionId={:?})\n    print('deleted')\nexcept Exception as e:\n    print('refused', e)",
                o[0], o[3]
            ),
        );
        assert!(refused.starts_with("refused"), "{}: {refused}", o[0]);
    }

    // Retention lets the first backup go; Object Lock does not: prune keeps
    // it, names it with its date, and deletes nothing it needs.
    std::fs::remove_file(src.join("doomed.bin")).unwrap();
    let second = backup()["id"].as_str().unwrap().to_string();
    let pruned = json(&ok(volsnap_env(
        &["prune", "--repo", repo, "--keep-last", "1", "--json"],
        &env,
    )));
    assert_eq!(pruned["deleted"], serde_json::json!([]), "{pruned}");
    assert_eq!(pruned["retained"][0]["id"], first.as_str(), "{pruned}");
    let text = ok(volsnap_env(
        &["prune", "--repo", repo, "--keep-last", "1"],
        &env,
    ));
    assert!(text.contains("Object Lock retains it until"), "{text}");
    ok(volsnap_env(
        &[
            "verify",
            "--repo",
            repo,
            "--all",
            "--read-data-subset",
            "100",
        ],
        &env,
    ));
    for id in [&first, &second] {
        let target = p.tempdir();
        restore_to_dir(repo, id, &target, &env);
    }

    // A protection is retained like the backup: the host's credentials
    // cannot delete it to let a prune take the backup.
    ok(volsnap_env(&["protect", "--repo", repo, &second], &env));
    let retained = s3.boto("keys = [o['Key'] for o in s3.list_objects_v2(Bucket='locked-b', Prefix='r/notes/')['Contents'] if '/protected-' in o['Key']]\n\
         h = s3.head_object(Bucket='locked-b', Key=keys[0])\n\
         print(h.get('ObjectLockMode'))\n\
         try:\n    s3.delete_object(Bucket='locked-b', Key=keys[0], VersionId=h['VersionId'])\n    print('deleted')\n\
         except Exception:\n    print('refused')",
    );
    assert_eq!(
        retained.split_whitespace().collect::<Vec<_>>(),
        ["COMPLIANCE", "refused"],
        "{retained}"
    );
}
