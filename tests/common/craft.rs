//! Crafting hostile but internally consistent format-2 repositories.
//!
//! Written from docs/FORMAT.md ("Repository format 2"), not from volsnap's
//! sources, for PLAIN (unencrypted) local repositories only: every object
//! written here is named by the BLAKE3 of its bytes, every blob by the BLAKE3
//! of its plaintext, every commit lists the packs it references, and every
//! stream's SHA-256 matches, so only the content chosen by a test is hostile.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// BLAKE3 of `bytes`, lowercase hex: the name of every object and blob.
pub fn b3(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Names of the objects directly in `repo/dir` (hidden temporaries left out).
pub fn names(repo: &Path, dir: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(repo.join(dir)) else {
        return vec![];
    };
    let mut out: Vec<String> = rd
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    out.sort();
    out
}

/// Writes an object under `dir/<blake3 of bytes>`; returns its id.
pub fn put_named(repo: &Path, dir: &str, bytes: &[u8]) -> String {
    let id = b3(bytes);
    let d = repo.join(dir);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(&id), bytes).unwrap();
    id
}

pub fn config(repo: &Path) -> Value {
    let c = read_json(&repo.join("config"));
    assert_eq!(c["format"], 2, "not a format-2 repository: {c}");
    assert!(
        c["encryption"].is_null(),
        "craft handles plain repositories only"
    );
    c
}

/// `config` is the one object not named by its content: rewritten in place.
pub fn write_config(repo: &Path, config: &Value) {
    std::fs::write(repo.join("config"), serde_json::to_vec(config).unwrap()).unwrap();
}

/// One blob as an index lists it.
#[derive(Clone, Debug)]
pub struct BlobLoc {
    pub pack: String,
    pub kind: String,
    pub offset: u64,
    pub length: u64,
    pub raw_length: u64,
}

/// The union of the index objects not superseded: blob id -> where it is.
pub fn index(repo: &Path) -> HashMap<String, BlobLoc> {
    let objects: Vec<(String, Value)> = names(repo, "index")
        .into_iter()
        .map(|n| {
            let v = read_json(&repo.join("index").join(&n));
            (n, v)
        })
        .collect();
    let superseded: Vec<String> = objects
        .iter()
        .flat_map(|(_, v)| v["supersedes"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    let mut out = HashMap::new();
    for (name, v) in objects {
        if superseded.contains(&name) {
            continue;
        }
        for pack in v["packs"].as_array().expect("index: packs") {
            let pid = pack["id"].as_str().expect("pack id").to_string();
            for b in pack["blobs"].as_array().expect("pack blobs") {
                out.insert(
                    b["id"].as_str().expect("blob id").to_string(),
                    BlobLoc {
                        pack: pid.clone(),
                        kind: b["type"].as_str().unwrap_or("").to_string(),
                        offset: b["offset"].as_u64().expect("offset"),
                        length: b["length"].as_u64().expect("length"),
                        raw_length: b["raw_length"].as_u64().expect("raw_length"),
                    },
                );
            }
        }
    }
    out
}

pub fn pack_path(repo: &Path, pack: &str) -> PathBuf {
    repo.join("data").join(&pack[..2]).join(pack)
}

/// A blob's plaintext: found through the indexes, its flag byte honoured
/// (bit 0: zstd) and checked against its id.
pub fn read_blob(repo: &Path, id: &str) -> Vec<u8> {
    let idx = index(repo);
    let loc = idx
        .get(id)
        .unwrap_or_else(|| panic!("blob {id} is in no index"));
    let pack = std::fs::read(pack_path(repo, &loc.pack)).unwrap();
    assert_eq!(b3(&pack), loc.pack, "pack does not match its name");
    let stored = &pack[loc.offset as usize..(loc.offset + loc.length) as usize];
    let (flags, payload) = stored.split_first().expect("an empty stored blob");
    let plain = if flags & 1 == 1 {
        zstd::decode_all(payload).expect("zstd blob")
    } else {
        payload.to_vec()
    };
    assert_eq!(plain.len() as u64, loc.raw_length, "raw_length of {id}");
    assert_eq!(b3(&plain), id, "blob does not match its id");
    plain
}

/// A stream (a manifest or a record): its blobs in order, concatenated.
pub fn read_stream(repo: &Path, ids: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    for id in ids.as_array().expect("a list of blob ids") {
        out.extend(read_blob(repo, id.as_str().expect("blob id")));
    }
    out
}

/// The commit objects: (object name, JSON).
pub fn commits(repo: &Path) -> Vec<(String, Value)> {
    names(repo, "snapshots")
        .into_iter()
        .map(|n| {
            let v = read_json(&repo.join("snapshots").join(&n));
            (n, v)
        })
        .collect()
}

/// The newest commit object (backup ids sort by time).
pub fn newest_commit(repo: &Path) -> (String, Value) {
    commits(repo)
        .into_iter()
        .max_by(|a, b| {
            let key = |c: &Value| c["id"].as_str().unwrap_or("").to_string();
            key(&a.1).cmp(&key(&b.1))
        })
        .expect("no commit object in the repository")
}

/// Stores blobs into one new pack (`flags 0 | plaintext` each, header JSON,
/// u32 LE header length) and an index object describing it; returns the
/// pack id and the blob ids.
pub fn write_pack(repo: &Path, kind: &str, blobs: &[Vec<u8>]) -> (String, Vec<String>) {
    let mut body = Vec::new();
    let mut entries = Vec::new();
    let mut ids = Vec::new();
    for plain in blobs {
        let id = b3(plain);
        let offset = body.len() as u64;
        body.push(0u8);
        body.extend_from_slice(plain);
        entries.push(json!({
            "id": id,
            "type": kind,
            "offset": offset,
            "length": plain.len() as u64 + 1,
            "raw_length": plain.len() as u64,
        }));
        ids.push(id);
    }
    let pack = write_raw_pack(repo, body, entries);
    (pack, ids)
}

/// A pack of `body` with a header listing exactly `entries` (whatever they
/// say), and an index object listing the same entries for it: the pack id.
pub fn write_raw_pack(repo: &Path, mut body: Vec<u8>, entries: Vec<Value>) -> String {
    let header = serde_json::to_vec(&json!({ "blobs": entries })).unwrap();
    body.extend_from_slice(&header);
    body.extend_from_slice(&(header.len() as u32).to_le_bytes());
    let id = b3(&body);
    let dir = repo.join("data").join(&id[..2]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&id), &body).unwrap();
    let index = json!({
        "packs": [{"id": id, "size": body.len() as u64, "blobs": entries}],
        "supersedes": [],
    });
    put_named(repo, "index", &serde_json::to_vec(&index).unwrap());
    id
}

/// Writes `commit` as a new commit object and deletes `old`: the new name.
///
/// A signed commit is signed again with this test thread's host key: the
/// crafting is then that of a trusted host gone bad, and what is tested is
/// how the rest of the backup is read ([`replace_commit_as_is`] keeps the
/// old signature, which then no longer matches).
pub fn replace_commit(repo: &Path, old: &str, commit: &Value) -> String {
    if commit.get("signature").is_some_and(|s| !s.is_null()) {
        if let Some(key) = volsnap::repo::attest::HostKey::load(&super::state_dir()).unwrap() {
            let mut parsed: volsnap::repo::v2::objects::Commit =
                serde_json::from_value(commit.clone()).expect("a commit object");
            key.sign(&mut parsed).unwrap();
            return replace_commit_as_is(repo, old, &serde_json::to_value(&parsed).unwrap());
        }
    }
    replace_commit_as_is(repo, old, commit)
}

/// Writes `commit` as a new commit object, byte for byte as given, and
/// deletes `old`: the new name.
pub fn replace_commit_as_is(repo: &Path, old: &str, commit: &Value) -> String {
    let name = put_named(repo, "snapshots", &serde_json::to_vec(commit).unwrap());
    if name != old {
        std::fs::remove_file(repo.join("snapshots").join(old)).unwrap();
    }
    name
}

/// Stores `stream` as tree blobs in a new pack; sets `commit.volumes[vol]`'s
/// `<field>` (blob ids) and `<field>_sha256`, and adds the pack to `packs`.
fn store_stream(repo: &Path, commit: &mut Value, vol: usize, field: &str, stream: &[u8]) {
    // Cut in pieces of at most 64 KiB (the tree chunker's minimum): readers
    // concatenate whatever blobs a stream lists.
    let pieces: Vec<Vec<u8>> = if stream.is_empty() {
        vec![]
    } else {
        stream.chunks(64 << 10).map(<[u8]>::to_vec).collect()
    };
    let (pack, ids) = write_pack(repo, "tree", &pieces);
    let v = &mut commit["volumes"][vol];
    v[field] = json!(ids);
    v[format!("{field}_sha256")] = json!(sha256_hex(stream));
    commit["packs"]
        .as_array_mut()
        .expect("commit: packs")
        .push(json!(pack));
}

/// Applies `f` to the newest commit's JSON and writes it back: the new
/// commit object's name.
pub fn edit_commit(repo: &Path, f: impl FnOnce(&mut Value)) -> String {
    let (old, mut commit) = newest_commit(repo);
    f(&mut commit);
    replace_commit(repo, &old, &commit)
}

/// Applies `f` to the volume record (one JSON line) of volume `vol` of the
/// newest commit, and writes record, commit and all consistently.
pub fn edit_record(repo: &Path, vol: usize, f: impl FnOnce(&mut Value)) -> String {
    let (old, mut commit) = newest_commit(repo);
    let bytes = read_stream(repo, &commit["volumes"][vol]["record"]);
    assert_eq!(
        sha256_hex(&bytes),
        commit["volumes"][vol]["record_sha256"].as_str().unwrap(),
        "the record as stored does not match record_sha256"
    );
    let newline = bytes.ends_with(b"\n");
    let mut record: Value = serde_json::from_slice(&bytes).expect("record: one JSON line");
    f(&mut record);
    let mut out = serde_json::to_vec(&record).unwrap();
    if newline {
        out.push(b'\n');
    }
    store_stream(repo, &mut commit, vol, "record", &out);
    replace_commit(repo, &old, &commit)
}

/// The record of volume `vol` of the newest commit.
pub fn record(repo: &Path, vol: usize) -> Value {
    let (_, commit) = newest_commit(repo);
    serde_json::from_slice(&read_stream(repo, &commit["volumes"][vol]["record"])).unwrap()
}

/// The manifest stream (one JSON value per line) of volume `vol` of the
/// newest commit.
pub fn tree(repo: &Path, vol: usize) -> Vec<Value> {
    let (_, commit) = newest_commit(repo);
    let bytes = read_stream(repo, &commit["volumes"][vol]["tree"]);
    assert_eq!(
        sha256_hex(&bytes),
        commit["volumes"][vol]["tree_sha256"].as_str().unwrap(),
        "the tree as stored does not match tree_sha256"
    );
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("tree: JSON lines"))
        .collect()
}

/// Applies `f` to the manifest stream of volume `vol` of the newest commit
/// and writes stream and commit back consistently.
pub fn edit_tree(repo: &Path, vol: usize, f: impl FnOnce(&mut Vec<Value>)) -> String {
    let mut lines = tree(repo, vol);
    f(&mut lines);
    let mut out = Vec::new();
    for l in &lines {
        out.extend(serde_json::to_vec(l).unwrap());
        out.push(b'\n');
    }
    let (old, mut commit) = newest_commit(repo);
    store_stream(repo, &mut commit, vol, "tree", &out);
    replace_commit(repo, &old, &commit)
}

/// Every object under `repo/dir`, recursively, relative to `repo`.
pub fn objects(repo: &Path, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![repo.join(dir)];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                pending.push(p);
            } else {
                out.push(p.strip_prefix(repo).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}
