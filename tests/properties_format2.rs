//! Property tests (proptest) for format 2's readers of hostile bytes: pack
//! headers, index objects, config, commit objects and volume names. Each
//! property runs on a few hundred generated cases (bounded for CI); none
//! may panic, and what they accept must be within bounds.

use proptest::prelude::*;
use volsnap::repo::manifest::{local_name, VolumeKind};
use volsnap::repo::v2::id::Id;
use volsnap::repo::v2::index::{Index, IndexFile};
use volsnap::repo::v2::objects::{ChunkerParams, Commit, Config};
use volsnap::repo::v2::pack::{parse_header, BlobKind, PackWriter, MAX_BLOB};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Offsets and lengths an attacker would pick: small, near the bounds,
/// near 2^64.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..4096,
        Just(MAX_BLOB),
        Just(MAX_BLOB + 1),
        (u64::MAX - 4096)..=u64::MAX,
        any::<u64>(),
    ]
}

fn entry_json(id: u8, offset: u64, length: u64, raw: u64, key: u16) -> serde_json::Value {
    serde_json::json!({
        "id": Id::digest(&[id]).hex(),
        "type": "data",
        "offset": offset,
        "length": length,
        "raw_length": raw,
        "key": key,
    })
}

proptest! {
    #![proptest_config(config(384))]

    /// Any bytes as a pack: a header parsed from them describes blobs that
    /// lie inside the pack, and nothing panics.
    #[test]
    fn packs_of_any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(header) = parse_header(&bytes, None) {
            for blob in &header.blobs {
                prop_assert!(blob.offset.checked_add(blob.length).is_some_and(|e| e <= bytes.len() as u64));
            }
        }
    }

    /// A well-formed pack whose header claims any offsets and lengths:
    /// accepted only when every blob lies inside the blob area.
    #[test]
    fn crafted_pack_headers_are_bounded(
        entries in proptest::collection::vec((any::<u8>(), number(), number(), number(), 0u16..3), 1..4),
        area in 0usize..512,
    ) {
        let blobs: Vec<_> = entries.iter().map(|(i, o, l, r, k)| entry_json(*i, *o, *l, *r, *k)).collect();
        let header = serde_json::to_vec(&serde_json::json!({"blobs": blobs, "keys": []})).unwrap();
        let mut pack = vec![0u8; area];
        pack.extend_from_slice(&header);
        pack.extend_from_slice(&(header.len() as u32).to_le_bytes());
        if let Ok(parsed) = parse_header(&pack, None) {
            for blob in &parsed.blobs {
                let end = blob.offset.checked_add(blob.length);
                prop_assert!(end.is_some_and(|e| e <= area as u64), "{blob:?} in {area}");
                prop_assert!(blob.raw_length <= MAX_BLOB);
            }
        }
    }

    /// An index object with any numbers: added whole or not at all, and
    /// every location the index then gives lies inside its pack.
    #[test]
    fn crafted_index_objects_are_bounded(
        entries in proptest::collection::vec((any::<u8>(), number(), number(), number(), 0u16..2), 0..4),
        size in number(),
    ) {
        let blobs: Vec<_> = entries.iter().map(|(i, o, l, r, k)| entry_json(*i, *o, *l, *r, *k)).collect();
        let text = serde_json::json!({"packs": [{"id": Id::digest(b"pack").hex(), "size": size, "blobs": blobs}]});
        let Ok(file) = serde_json::from_value::<IndexFile>(text) else { return Ok(()); };
        if let Ok(index) = Index::from_files(vec![(Id::digest(b"index"), file)]) {
            for (i, ..) in &entries {
                if let Some(at) = index.get(&Id::digest(&[*i])) {
                    prop_assert!(at.offset.checked_add(at.length).is_some_and(|e| e <= size));
                }
            }
        }
    }

    /// Any bytes as an index object or a commit object parse or fail, never panic.
    #[test]
    fn objects_of_any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_slice::<IndexFile>(&bytes);
        let _ = serde_json::from_slice::<Commit>(&bytes);
        if let Ok(config) = serde_json::from_slice::<Config>(&bytes) {
            let _ = config.check();
        }
    }

    /// Chunker parameters pass the check only within what volsnap writes,
    /// and those never panic the chunker.
    #[test]
    fn chunker_parameters_are_checked(min in number(), avg in number(), max in number()) {
        let (min, avg, max) = (min as u32, avg as u32, max as u32);
        let params = ChunkerParams { algorithm: "fastcdc-2020".into(), min, avg, max };
        if params.check("chunker").is_ok() {
            prop_assert!(min >= 4096 && min <= avg && avg <= max && u64::from(max) <= MAX_BLOB);
            prop_assert!(min as usize <= fastcdc::v2020::MINIMUM_MAX && avg as usize <= fastcdc::v2020::AVERAGE_MAX);
            let data = vec![7u8; (max as usize).min(1 << 20) * 2];
            let chunks = fastcdc::v2020::FastCDC::new(&data, min as usize, avg as usize, max as usize);
            prop_assert!(chunks.count() >= 1);
        }
    }

    /// A volume name from a backup becomes one plain path component or is
    /// refused.
    #[test]
    fn local_names_are_one_plain_component(
        name in "[a-zA-Z0-9/._\\-\u{1b}\u{0}]{0,40}",
        bind in any::<bool>(),
    ) {
        let kind = if bind { VolumeKind::Bind } else { VolumeKind::Volume };
        if let Ok(local) = local_name(kind, &name) {
            prop_assert!(!local.is_empty() && local != "." && local != "..");
            prop_assert!(!local.contains('/') && !local.contains('\0'));
            prop_assert!(!local.chars().any(char::is_control));
        }
    }
}

/// A pack volsnap writes parses back with every blob in place.
#[test]
fn written_packs_parse() {
    let mut writer = PackWriter::new(BlobKind::Data);
    for n in 0..5u8 {
        let payload = vec![n; 100 + usize::from(n)];
        writer.add_encoded(Id::digest(&payload), false, &payload, payload.len() as u64);
    }
    let (_, bytes, header) = writer.finish(None).unwrap();
    assert_eq!(parse_header(&bytes, None).unwrap().blobs, header.blobs);
}
