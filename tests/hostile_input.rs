//! Hostile and damaged backups: restore must refuse them without writing
//! outside its target or touching the previous content; verify must name
//! what is wrong. Each case is crafted here, byte by byte where needed.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use volsnap::hashing::sha256_file;
use volsnap::repo::manifest::*;

/// One crafted archive entry.
struct Crafted {
    name: Vec<u8>,
    kind: tar::EntryType,
    data: Vec<u8>,
    link: Option<String>,
    mode: u32,
    /// Listed in the manifest (as what kind, with which content hash).
    listed: Option<(EntryKind, Option<Vec<u8>>)>,
    /// Extended attributes, as PAX records before the entry.
    xattrs: Vec<(String, Vec<u8>)>,
}

fn file(name: impl AsRef<[u8]>, data: &[u8]) -> Crafted {
    Crafted {
        name: name.as_ref().to_vec(),
        xattrs: vec![],
        kind: tar::EntryType::Regular,
        data: data.to_vec(),
        link: None,
        mode: 0o644,
        listed: Some((EntryKind::File, Some(data.to_vec()))),
    }
}

fn link(name: impl AsRef<[u8]>, kind: tar::EntryType, target: &str) -> Crafted {
    let listed = if kind == tar::EntryType::Symlink {
        EntryKind::Symlink
    } else {
        EntryKind::Hardlink
    };
    Crafted {
        name: name.as_ref().to_vec(),
        xattrs: vec![],
        kind,
        data: vec![],
        link: Some(target.to_string()),
        mode: 0o777,
        listed: Some((listed, None)),
    }
}

fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Writes a backup `id` with one volume "vol" holding `entries`, raw names
/// and all, with a manifest and SHA256SUMS that agree with the archive.
fn craft(repo: &Path, id: &str, entries: &[Crafted]) -> PathBuf {
    let dir = repo.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let archive = dir.join("vol.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    let mut listed = vec![FileEntry {
        path: ".".into(),
        path_hex: None,
        target_hex: None,
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        size: 0,
        sha256: None,
        target: None,
    }];
    let mut root = tar::Header::new_gnu();
    root.set_entry_type(tar::EntryType::Directory);
    root.set_mode(0o755);
    root.set_size(0);
    builder
        .append_data(&mut root, "./", std::io::empty())
        .unwrap();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        // Raw bytes: the tar crate's own setters refuse ".." and "/".
        let name = &mut h.as_old_mut().name;
        name[..e.name.len()].copy_from_slice(&e.name);
        if let Some(l) = &e.link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_size(e.data.len() as u64);
        h.set_cksum();
        if !e.xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = e
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                .collect();
            builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .unwrap();
        }
        builder.append(&h, e.data.as_slice()).unwrap();
        if let Some((kind, content)) = &e.listed {
            let mut entry = FileEntry {
                path: String::new(),
                path_hex: None,
                target_hex: None,
                kind: *kind,
                mode: e.mode,
                uid: 0,
                gid: 0,
                mtime: 0,
                size: content.as_ref().map_or(0, |c| c.len() as u64),
                sha256: content.as_ref().map(|c| sha(c)),
                target: e.link.clone(),
            };
            entry.set_path(e.name.strip_prefix(b"./").unwrap_or(&e.name));
            listed.push(entry);
        }
    }
    builder.into_inner().unwrap();
    write_manifest(&dir, id, listed);
    dir
}

fn write_manifest(dir: &Path, id: &str, entries: Vec<FileEntry>) {
    let archive_sha = sha256_file(&dir.join("vol.tar")).unwrap();
    let now = chrono::Utc::now();
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        id: id.into(),
        started_at: now,
        completed_at: now,
        host: "test".into(),
        volsnap_version: "test".into(),
        selection: "--container crafted".into(),
        strategy: Strategy::Cold,
        consistency: Consistency::Consistent,
        reason: "crafted".into(),
        downtime_ms: 0,
        duration_ms: 0,
        compression: Compression::None,
        containers: vec![],
        volumes: vec![VolumeRecord {
            name: "vol".into(),
            kind: VolumeKind::Volume,
            source_path: "/nowhere".into(),
            driver: None,
            driver_opts: Default::default(),
            labels: Default::default(),
            mounted_by: vec![],
            archive: "vol.tar".into(),
            sha256: archive_sha.clone(),
            archive_bytes: 0,
            files: 0,
            bytes: 0,
            changed_during_read: vec![],
            vanished_during_read: vec![],
            left_out: vec![],
            excluded: vec![],
            excluded_entries: 0,
            entries,
        }],
        notes: vec![],
        stored_bytes: None,
    };
    std::fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    rewrite_sums(dir, &archive_sha);
}

fn rewrite_sums(dir: &Path, archive_sha: &str) {
    let manifest_sha = sha256_file(&dir.join(MANIFEST_FILE)).unwrap();
    let sums = render_sums(&[
        (archive_sha.to_string(), "vol.tar".into()),
        (manifest_sha, MANIFEST_FILE.into()),
    ]);
    std::fs::write(dir.join(SUMS_FILE), sums).unwrap();
}

/// A restore target that already holds precious data.
fn target_with_precious_data(root: &Path) -> PathBuf {
    let target = root.join("target");
    std::fs::create_dir_all(target.join("vol")).unwrap();
    std::fs::write(target.join("vol/precious"), b"keep me").unwrap();
    target
}

/// Restores `id` into a fresh target and asserts it was refused with
/// `expect` in the message, the precious data intact and nothing staged.
fn assert_refused(repo: &Path, id: &str, expect: &str, extra: &[&str]) {
    let scratch = tempfile::tempdir().unwrap();
    let target = target_with_precious_data(scratch.path());
    // --force: the target holds data, and the refusal must come from the
    // hostile content, not from the missing flag.
    let mut args = vec![
        "restore",
        "--repo",
        repo.to_str().unwrap(),
        id,
        "--target-dir",
        target.to_str().unwrap(),
        "--force",
    ];
    args.extend_from_slice(extra);
    let out = volsnap(&args);
    assert_eq!(out.status.code(), Some(1), "{id}: {}", stderr(&out));
    assert!(
        stderr(&out).contains(expect),
        "{id}: expected {expect:?} in: {}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"));
    let names: Vec<_> = std::fs::read_dir(target.join("vol"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["precious"], "{id}: target left exactly as it was");
    assert_eq!(
        std::fs::read(target.join("vol/precious")).unwrap(),
        b"keep me"
    );
    let around: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        around,
        ["target"],
        "{id}: nothing written beside the target"
    );
}

#[test]
fn restore_refuses_entries_that_escape_the_target() {
    let repo = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let outside_s: &'static str = Box::leak(outside.path().display().to_string().into_boxed_str());
    let abs_file: &'static str = Box::leak(format!("{outside_s}/absolute.txt").into_boxed_str());

    craft(
        repo.path(),
        "dotdot",
        &[
            file("../escape.txt", b"x"),
            file("a/../../escape2.txt", b"x"),
        ],
    );
    assert_refused(repo.path(), "dotdot", "'..'", &[]);

    craft(repo.path(), "absolute", &[file(abs_file, b"x")]);
    assert_refused(repo.path(), "absolute", "absolute path", &[]);

    craft(
        repo.path(),
        "symlink-escape",
        &[
            link("link", tar::EntryType::Symlink, outside_s),
            file("link/pwned", b"x"),
        ],
    );
    assert_refused(repo.path(), "symlink-escape", "(a symlink?)", &[]);

    craft(
        repo.path(),
        "hardlink-escape",
        &[link("h", tar::EntryType::Link, "../../../../etc/passwd")],
    );
    assert_refused(repo.path(), "hardlink-escape", "'..'", &[]);

    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing written outside"
    );
    assert!(!repo.path().join("escape.txt").exists());
}

#[test]
fn restore_refuses_devices_setuid_and_unlisted_entries() {
    let repo = tempfile::tempdir().unwrap();
    let mut dev = file("null", b"");
    dev.kind = tar::EntryType::Char;
    dev.listed = Some((EntryKind::CharDevice, None));
    craft(repo.path(), "device", &[dev]);
    assert_refused(repo.path(), "device", "device node", &[]);

    let mut suid = file("suid", b"#!/bin/sh\n");
    suid.mode = 0o4755;
    craft(repo.path(), "setuid", &[suid]);
    assert_refused(repo.path(), "setuid", "setuid", &[]);

    let mut hidden = file("unlisted", b"surprise");
    hidden.listed = None;
    craft(repo.path(), "unlisted", &[file("ok", b"fine"), hidden]);
    assert_refused(repo.path(), "unlisted", "not in the manifest", &[]);
}

#[test]
fn restore_and_verify_catch_content_that_differs_from_the_manifest() {
    let repo = tempfile::tempdir().unwrap();
    let mut lying = file("data.bin", b"actual content");
    lying.listed = Some((EntryKind::File, Some(b"ACTUAL content".to_vec())));
    craft(repo.path(), "content", &[file("a", b"first"), lying]);
    assert_refused(repo.path(), "content", "does not match the manifest", &[]);
    let out = volsnap(&[
        "verify",
        "--repo",
        repo.path().to_str().unwrap(),
        "content",
        "--deep",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("data.bin"), "{}", stderr(&out));
    // Without --deep the archive checksums still match: that is what --deep is for.
    let out = volsnap(&["verify", "--repo", repo.path().to_str().unwrap(), "content"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let verified = || -> bool {
        let list = ok(volsnap(&[
            "list",
            "--repo",
            repo.path().to_str().unwrap(),
            "--json",
        ]));
        let rows: serde_json::Value = serde_json::from_str(&list).unwrap();
        !rows[0]["verified_at"].is_null()
    };
    assert!(verified(), "the passing verify marked it");
    // A verification that fails takes the mark away: list tells the truth.
    let out = volsnap(&[
        "verify",
        "--repo",
        repo.path().to_str().unwrap(),
        "content",
        "--deep",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!verified(), "a failed verify leaves no verified mark");
}

#[test]
fn truncated_archive_edited_manifest_and_unknown_version_are_detected() {
    let repo = tempfile::tempdir().unwrap();
    let repo_s = repo.path().to_str().unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let big: &'static [u8] = Box::leak(big.into_boxed_slice());

    // Truncated, with SHA256SUMS rewritten to match: only --deep and restore see it.
    let dir = craft(
        repo.path(),
        "truncated",
        &[file("big.bin", big), file("z-last", b"end")],
    );
    let archive = dir.join("vol.tar");
    let bytes = std::fs::read(&archive).unwrap();
    std::fs::write(&archive, &bytes[..bytes.len() / 2]).unwrap();
    let sha = sha256_file(&archive).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    m["volumes"][0]["sha256"] = sha.clone().into();
    std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
    rewrite_sums(&dir, &sha);
    let out = volsnap(&["verify", "--repo", repo_s, "truncated", "--deep"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
    assert_refused(repo.path(), "truncated", "truncated", &[]);

    // Manifest edited after the fact: its digest in SHA256SUMS no longer matches.
    let dir = craft(repo.path(), "edited", &[file("a", b"a")]);
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap();
    std::fs::write(dir.join(MANIFEST_FILE), text.replace("crafted", "tampered")).unwrap();
    let out = volsnap(&["verify", "--repo", repo_s, "edited"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("manifest.json"), "{}", stderr(&out));
    assert_refused(repo.path(), "edited", "failed verification", &[]);

    // A manifest from a future format version.
    let dir = craft(repo.path(), "future", &[file("a", b"a")]);
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap();
    std::fs::write(
        dir.join(MANIFEST_FILE),
        text.replace(
            &format!("\"format_version\": {FORMAT_VERSION}"),
            "\"format_version\": 99",
        ),
    )
    .unwrap();
    rewrite_sums(&dir, &sha256_file(&dir.join("vol.tar")).unwrap());
    let out = volsnap(&["verify", "--repo", repo_s, "future"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("version 99"), "{}", stderr(&out));
    assert_refused(repo.path(), "future", "version 99", &[]);

    // Corrupt JSON.
    let dir = craft(repo.path(), "corrupt", &[file("a", b"a")]);
    std::fs::write(dir.join(MANIFEST_FILE), b"{ not json").unwrap();
    assert_refused(repo.path(), "corrupt", "corrupt manifest", &[]);
}

#[test]
fn a_clean_crafted_backup_restores() {
    // The control case: the crafting itself yields a restorable backup, so
    // the refusals above are due to what each case changes.
    let repo = tempfile::tempdir().unwrap();
    craft(
        repo.path(),
        "clean",
        &[
            file("a.txt", b"alpha"),
            link("l", tar::EntryType::Symlink, "a.txt"),
            link("h", tar::EntryType::Link, "a.txt"),
        ],
    );
    let scratch = tempfile::tempdir().unwrap();
    let target = target_with_precious_data(scratch.path());
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--repo",
            repo.path().to_str().unwrap(),
            "clean",
            "--target-dir",
            target.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        volsnap(&args)
    };
    // The target holds data: without --force nothing is replaced, and the
    // message says what would be.
    let out = restore(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("would replace the data in") && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(target.join("vol/precious")).unwrap(),
        b"keep me"
    );
    ok(restore(&["--force"]));
    assert_eq!(std::fs::read(target.join("vol/a.txt")).unwrap(), b"alpha");
    assert_eq!(std::fs::read(target.join("vol/h")).unwrap(), b"alpha");
    assert_eq!(
        std::fs::read_link(target.join("vol/l")).unwrap(),
        Path::new("a.txt")
    );
    assert!(
        !target.join("vol/precious").exists(),
        "a restore replaces the previous content"
    );
}

#[test]
fn a_hard_link_through_a_symlink_never_reaches_outside_the_target() {
    // The tampered backup that once made restore (exit 0) link a file
    // outside the target into it: a symlink to a directory outside, then
    // a hard link whose source goes through that symlink. Manifest and
    // SHA256SUMS agree, as an attacker who can write the repository makes them.
    let repo = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"host secret").unwrap();
    let outside_s = outside.path().to_str().unwrap();
    craft(
        repo.path(),
        "hardlink-via-symlink",
        &[
            link("s", tar::EntryType::Symlink, outside_s),
            link("h", tar::EntryType::Link, "s/secret"),
        ],
    );
    assert_refused(
        repo.path(),
        "hardlink-via-symlink",
        "not an earlier regular file",
        &[],
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&secret).unwrap().nlink(),
        1,
        "no link to the outside file was made"
    );
}

#[test]
fn file_capabilities_come_back_only_with_allow_special() {
    let repo = tempfile::tempdir().unwrap();
    let mut capable = file("ping", b"\x7fELF");
    // A file capability (cap_net_raw+ep), as `setcap` writes it.
    capable.xattrs = vec![(
        "security.capability".into(),
        vec![
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    )];
    craft(repo.path(), "caps", &[capable]);
    assert_refused(repo.path(), "caps", "security.capability", &[]);
    let mut trusted = file("t", b"x");
    trusted.xattrs = vec![("trusted.overlay.opaque".into(), b"y".to_vec())];
    craft(repo.path(), "trusted", &[trusted]);
    assert_refused(repo.path(), "trusted", "trusted.overlay.opaque", &[]);

    // user.* attributes are plain data and come back without a flag.
    let mut plain = file("u", b"x");
    plain.xattrs = vec![("user.note".into(), b"hello".to_vec())];
    craft(repo.path(), "user-xattr", &[plain]);
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("t");
    ok(volsnap(&[
        "restore",
        "--repo",
        repo.path().to_str().unwrap(),
        "user-xattr",
        "--target-dir",
        target.to_str().unwrap(),
    ]));
    assert_eq!(
        xattr::get(target.join("vol/u"), "user.note").unwrap(),
        Some(b"hello".to_vec())
    );

    // With --allow-special the operator takes them.
    let target = scratch.path().join("t2");
    ok(volsnap(&[
        "restore",
        "--repo",
        repo.path().to_str().unwrap(),
        "caps",
        "--target-dir",
        target.to_str().unwrap(),
        "--allow-special",
    ]));
    assert_eq!(std::fs::read(target.join("vol/ping")).unwrap(), b"\x7fELF");
}

#[test]
fn names_that_are_not_utf8_round_trip_and_never_collapse() {
    // 0xff and 0xfe both render as U+FFFD: a lossy manifest made them one
    // path, so `verify --deep` and restore failed while `verify` passed.
    let repo = tempfile::tempdir().unwrap();
    let repo_s = repo.path().to_str().unwrap();
    craft(
        repo.path(),
        "bytes",
        &[
            file(b"\xff", b"first"),
            file(b"\xfe", b"second"),
            file(b"caf\xe9", b"latin-1"),
            link(b"l\xff", tar::EntryType::Symlink, "caf\u{e9}"),
        ],
    );
    ok(volsnap(&["verify", "--repo", repo_s, "bytes"]));
    ok(volsnap(&["verify", "--repo", repo_s, "bytes", "--deep"]));
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("t");
    ok(volsnap(&[
        "restore",
        "--repo",
        repo_s,
        "bytes",
        "--target-dir",
        target.to_str().unwrap(),
    ]));
    use std::os::unix::ffi::OsStrExt;
    let at = |name: &[u8]| target.join("vol").join(std::ffi::OsStr::from_bytes(name));
    assert_eq!(std::fs::read(at(b"\xff")).unwrap(), b"first");
    assert_eq!(std::fs::read(at(b"\xfe")).unwrap(), b"second");
    assert_eq!(std::fs::read(at(b"caf\xe9")).unwrap(), b"latin-1");
    assert_eq!(
        std::fs::read_link(at(b"l\xff")).unwrap(),
        Path::new("caf\u{e9}")
    );
}

#[test]
fn plain_verify_fails_when_manifest_and_archive_disagree_on_the_entries() {
    let repo = tempfile::tempdir().unwrap();
    let repo_s = repo.path().to_str().unwrap();
    // The archive holds "b", the manifest lists "a" (same content): the
    // checksums of the files all match, the entry lists do not.
    let mut renamed = file("b", b"same");
    renamed.listed = None;
    let dir = craft(repo.path(), "renamed", &[renamed]);
    edit_manifest(&dir, |m| {
        m["volumes"][0]["entries"].as_array_mut().unwrap().push(
            serde_json::json!({"path": "a", "kind": "file", "mode": 420, "uid": 0, "gid": 0,
            "mtime": 0, "size": 4, "sha256": sha(b"same")}),
        );
    });
    let out = volsnap(&["verify", "--repo", repo_s, "renamed"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not in the manifest"),
        "{}",
        stderr(&out)
    );

    // A symlink whose target differs between manifest and archive.
    let mut lying = link("l", tar::EntryType::Symlink, "/etc/shadow");
    lying.listed = None;
    let dir = craft(repo.path(), "retargeted", &[lying]);
    edit_manifest(&dir, |m| {
        m["volumes"][0]["entries"].as_array_mut().unwrap().push(
            serde_json::json!({"path": "l", "kind": "symlink", "mode": 511, "uid": 0,
            "gid": 0, "mtime": 0, "target": "harmless"}),
        );
    });
    let out = volsnap(&["verify", "--repo", repo_s, "retargeted"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("points to"), "{}", stderr(&out));
    assert_refused(repo.path(), "retargeted", "points to", &[]);

    // One path listed twice.
    let dir = craft(repo.path(), "twice", &[file("a", b"x")]);
    edit_manifest(&dir, |m| {
        let dup = m["volumes"][0]["entries"][1].clone();
        m["volumes"][0]["entries"].as_array_mut().unwrap().push(dup);
    });
    let out = volsnap(&["verify", "--repo", repo_s, "twice"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("twice"), "{}", stderr(&out));
}

/// Edits a crafted backup's manifest as JSON, keeping SHA256SUMS in step.
fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
    rewrite_sums(dir, &sha256_file(&dir.join("vol.tar")).unwrap());
}

#[test]
fn a_manifest_never_chooses_a_host_path_to_restore_into() {
    require_docker();
    let repo = tempfile::tempdir().unwrap();
    let repo_s = repo.path().to_str().unwrap();
    // A host directory that no container binds, named as a bind source.
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("precious"), b"keep me").unwrap();
    let dir = craft(repo.path(), "bind-claim", &[file("pwned", b"x")]);
    let claimed = host_dir.path().to_str().unwrap().to_string();
    edit_manifest(&dir, |m| {
        m["volumes"][0]["kind"] = "bind".into();
        m["volumes"][0]["name"] = claimed.clone().into();
        m["volumes"][0]["source_path"] = claimed.clone().into();
    });
    let out = volsnap(&["restore", "--repo", repo_s, "bind-claim", "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no container binds that path"),
        "{}",
        stderr(&out)
    );
    let names: Vec<_> = std::fs::read_dir(host_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["precious"], "the host directory was not touched");

    // A container of another stack binds it: restoring a named stack
    // still does not write there.
    let other = format!("vtotherbinder{}", std::process::id());
    let bind = format!("{claimed}:/x");
    docker(&[
        "create",
        "--network",
        "none",
        "--name",
        &other,
        "-v",
        &bind,
        IMAGE,
        "idle",
    ]);
    let out = volsnap(&[
        "restore",
        "--repo",
        repo_s,
        "bind-claim",
        "--project",
        "some-stack",
        "--force",
    ]);
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &other])
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("of the selected stack"),
        "{}",
        stderr(&out)
    );
    assert!(!host_dir.path().join("pwned").exists());

    // A missing volume whose recorded options bind a host directory.
    let volume = format!("vtclaim{}", std::process::id());
    let dir = craft(repo.path(), "device-claim", &[file("pwned", b"x")]);
    edit_manifest(&dir, |m| {
        m["volumes"][0]["name"] = volume.clone().into();
        m["volumes"][0]["driver"] = "local".into();
        m["volumes"][0]["driver_opts"] =
            serde_json::json!({"type": "none", "o": "bind", "device": claimed});
    });
    let out = volsnap(&["restore", "--repo", repo_s, "device-claim", "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not create volumes from options"),
        "{}",
        stderr(&out)
    );
    let created = std::process::Command::new("docker")
        .args(["volume", "inspect", &volume])
        .output()
        .unwrap();
    if created.status.success() {
        let _ = std::process::Command::new("docker")
            .args(["volume", "rm", "-f", &volume])
            .output();
        panic!("volume {volume} was created from the backup's options");
    }
    assert!(!host_dir.path().join("pwned").exists());
}

#[test]
fn a_small_archive_cannot_make_one_entry_claim_unbounded_memory() {
    // 1 GiB of "long name" compresses to almost nothing: the tar parser
    // would read it whole into memory.
    let repo = tempfile::tempdir().unwrap();
    let dir = craft(repo.path(), "bomb", &[file("a", b"x")]);
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(1 << 30);
    h.set_cksum();
    use std::io::Write;
    encoder.write_all(h.as_bytes()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        encoder.write_all(&zeros).unwrap();
    }
    let compressed = encoder.finish().unwrap();
    assert!(compressed.len() < 1 << 20, "a small archive");
    std::fs::write(dir.join("vol.tar"), &compressed).unwrap();
    let archive_sha = sha256_file(&dir.join("vol.tar")).unwrap();
    edit_manifest(&dir, |m| {
        m["compression"] = "zstd".into();
        m["volumes"][0]["sha256"] = archive_sha.clone().into();
    });
    let repo_s = repo.path().to_str().unwrap();
    let out = volsnap(&["verify", "--repo", repo_s, "bomb"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("names or attributes"),
        "{}",
        stderr(&out)
    );
    assert_refused(repo.path(), "bomb", "names or attributes", &[]);
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    assert!(
        usage.max_rss() / 1024 < 200,
        "peak RSS {} MiB",
        usage.max_rss() / 1024
    );
}
