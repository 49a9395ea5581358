//! Object and blob ids: 32 bytes, written as 64 lowercase hex digits.

use anyhow::{bail, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// BLAKE3 of `bytes` (object names; blob ids in unencrypted
    /// repositories). Chosen over SHA-256 for speed: ids are computed over
    /// every byte stored, and BLAKE3 runs about 4x faster here.
    pub fn digest(bytes: &[u8]) -> Self {
        Id(*blake3::hash(bytes).as_bytes())
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut id = [0u8; 32];
        if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            bail!("{text:?} is not an id (64 lowercase hex digits)");
        }
        hex::decode_to_slice(text, &mut id)?;
        Ok(Id(id))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", &self.hex()[..12])
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Id::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A set of ids that grows to millions in little memory: a sorted table
/// (32 bytes an id) plus a small hash set of recent ones, merged into the
/// table when it fills. A hash set alone costs twice that and more while
/// it grows.
#[derive(Default)]
pub struct IdSet {
    sorted: Vec<Id>,
    recent: std::collections::HashSet<Id>,
}

impl IdSet {
    const RECENT: usize = 1 << 16;

    pub fn contains(&self, id: &Id) -> bool {
        self.recent.contains(id) || self.sorted.binary_search(id).is_ok()
    }

    /// Adds `id`; whether it was new.
    pub fn insert(&mut self, id: Id) -> bool {
        if self.contains(&id) {
            return false;
        }
        self.recent.insert(id);
        if self.recent.len() >= Self::RECENT {
            let mut run: Vec<Id> = self.recent.drain().collect();
            run.sort_unstable();
            self.sorted.extend(run);
            // Two sorted runs: the stable sort merges them in one pass.
            self.sorted.sort();
        }
        true
    }

    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_set_keeps_every_id_across_merges() {
        let mut set = IdSet::default();
        let ids: Vec<Id> = (0u32..(IdSet::RECENT as u32 * 2 + 17))
            .map(|n| Id::digest(&n.to_le_bytes()))
            .collect();
        for id in &ids {
            assert!(set.insert(*id));
        }
        assert_eq!(set.len(), ids.len());
        assert!(ids.iter().all(|id| set.contains(id)));
        assert!(ids.iter().all(|id| !set.insert(*id)), "no id twice");
        assert!(!set.contains(&Id::digest(b"never added")));
    }

    #[test]
    fn ids_parse_only_their_own_form() {
        let id = Id::digest(b"abc");
        assert_eq!(
            id.hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(Id::parse(&id.hex()).unwrap(), id);
        for bad in ["", "../etc", &id.hex().to_uppercase(), &id.hex()[..63]] {
            assert!(Id::parse(bad).is_err(), "{bad}");
        }
    }
}
