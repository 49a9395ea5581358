//! Property tests (proptest) for what reads hostile input: manifest names
//! and manifests, archive entry paths, the tar stream guard, and restore
//! path resolution. Each property runs on a few hundred generated cases,
//! shrunk to a minimal one on failure.

use proptest::prelude::*;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use volsnap::beneath::Beneath;
use volsnap::repo::manifest::{encode_name, FileEntry, Manifest};

/// `cases` cases, and no failure files written into the source tree.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn entry_with(raw: &[u8]) -> FileEntry {
    let mut e: FileEntry = serde_json::from_str(
        r#"{"path": "", "kind": "file", "mode": 420, "uid": 0, "gid": 0, "mtime": 0}"#,
    )
    .unwrap();
    e.set_path(raw);
    e
}

proptest! {
    #![proptest_config(config(512))]

    /// Any name survives the manifest byte for byte, through JSON.
    #[test]
    fn names_round_trip_through_json(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
        let entry = entry_with(&raw);
        let json = serde_json::to_string(&entry).unwrap();
        let back: FileEntry = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&*back.raw_path().unwrap(), &raw[..]);
    }

    /// Two different names never share an encoding.
    #[test]
    fn different_names_never_collapse(
        a in proptest::collection::vec(any::<u8>(), 0..16),
        b in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        prop_assume!(a != b);
        prop_assert_ne!(encode_name(&a), encode_name(&b));
    }

    /// Whatever bytes an archive names, the relative path restore derives
    /// is plain names only (or refused).
    #[test]
    fn archive_paths_stay_inside(raw in proptest::collection::vec(
        prop_oneof![Just(b'/'), Just(b'.'), Just(0u8), Just(b'a'), any::<u8>()], 0..24)) {
        if let Ok(rel) = volsnap::restore::safe_relative(&raw) {
            prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
            prop_assert!(!rel.as_os_str().as_bytes().contains(&0));
        }
    }

    /// Arbitrary bytes as a manifest: an error, never a panic.
    #[test]
    fn manifests_of_any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        std::fs::write(&path, &bytes).unwrap();
        let _ = Manifest::load(&path);
    }

    /// Manifest-shaped JSON with hostile values: an error or a manifest
    /// whose names all decode, never a panic.
    #[test]
    fn hostile_manifest_values_never_panic(
        path in ".{0,12}",
        hex in proptest::option::of("[0-9a-fz]{0,9}"),
        version in 0u64..3,
        size in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("manifest.json");
        let json = serde_json::json!({
            "format_version": version, "id": "x", "started_at": "2026-01-01T00:00:00Z",
            "completed_at": "2026-01-01T00:00:00Z", "host": "h", "volsnap_version": "t",
            "selection": "s", "strategy": "cold", "consistency": "consistent", "reason": "r",
            "downtime_ms": 0, "duration_ms": 0, "compression": "none", "containers": [],
            "volumes": [{"name": "v", "kind": "volume", "source_path": "/x", "mounted_by": [],
                "archive": "v.tar", "sha256": "00", "archive_bytes": 0, "files": 0, "bytes": 0,
                "entries": [{"path": path, "path_hex": hex, "kind": "file", "mode": 420,
                    "uid": 0, "gid": 0, "mtime": 0, "size": size}]}],
        });
        std::fs::write(&file, serde_json::to_vec(&json).unwrap()).unwrap();
        if let Ok(m) = Manifest::load(&file) {
            for e in &m.volumes[0].entries {
                let _ = e.raw_path();
            }
        }
    }
}

/// Whether every existing directory above `rel` in `root` is a real one.
fn no_symlink_on_the_way(root: &Path, rel: &Path) -> bool {
    let mut at = root.to_path_buf();
    for component in rel.parent().into_iter().flat_map(Path::components) {
        at.push(component);
        match at.symlink_metadata() {
            Ok(m) if !m.is_dir() => return false,
            Ok(_) => {}
            Err(_) => return true, // the rest is created as real directories
        }
    }
    true
}

/// A random tree: directories, and symlinks pointing anywhere (inside,
/// outside, absolute, `..`).
#[derive(Debug, Clone)]
enum Node {
    Dir(String),
    Link(String, String),
}

fn node() -> impl Strategy<Value = Node> {
    let name = "[ab]{1,2}(/[ab]{1,2}){0,2}";
    prop_oneof![
        name.prop_map(Node::Dir),
        (
            name,
            prop_oneof![
                Just("/".to_string()),
                Just("..".to_string()),
                Just("../..".to_string()),
                Just("a".to_string()),
                Just("/tmp".to_string()),
                "[ab./]{1,6}",
            ]
        )
            .prop_map(|(n, t)| Node::Link(n, t)),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// However the tree is laid out, a path resolved for restore is a
    /// directory inside the root, reached without following a symlink.
    #[test]
    fn restore_paths_resolve_only_beneath_the_root(
        nodes in proptest::collection::vec(node(), 0..8),
        wanted in "[ab.]{1,2}(/[ab.]{1,2}){0,3}/f",
        create in any::<bool>(),
    ) {
        let scratch = tempfile::tempdir().unwrap();
        let scratch_path = scratch.path().canonicalize().unwrap();
        let root = scratch_path.join("root");
        std::fs::create_dir(&root).unwrap();
        // Directories first, then symlinks, so the setup itself never
        // writes through one.
        let mut nodes = nodes;
        nodes.sort_by_key(|n| matches!(n, Node::Link(..)));
        for n in &nodes {
            match n {
                Node::Dir(d) => { let _ = std::fs::create_dir_all(root.join(d)); }
                Node::Link(l, t) => {
                    // Only where no symlink is on the way: the setup must
                    // not write outside either.
                    if no_symlink_on_the_way(&root, Path::new(l)) {
                        let _ = std::fs::create_dir_all(root.join(l).parent().unwrap());
                        let _ = std::os::unix::fs::symlink(t, root.join(l));
                    }
                }
            }
        }
        let root = root.canonicalize().unwrap();
        let mut tree = Beneath::open(&root).unwrap();
        if let Ok(at) = tree.parent_of(Path::new(&wanted), create) {
            use std::os::fd::AsRawFd;
            let real = std::fs::read_link(format!("/proc/self/fd/{}", at.dir.as_raw_fd())).unwrap();
            prop_assert!(real.starts_with(&root), "{} resolved to {}", wanted, real.display());
            // No symlink on the way: the lexical path is the real one.
            let lexical = root.join(Path::new(&wanted).parent().unwrap());
            let lexical: std::path::PathBuf = lexical.components().filter(|c| !matches!(c, Component::CurDir)).collect();
            prop_assert_eq!(real, lexical);
        }
        // Nothing was created outside the root.
        let outside: Vec<_> = std::fs::read_dir(&scratch_path).unwrap().collect();
        prop_assert_eq!(outside.len(), 1);
    }
}
