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

#[cfg(test)]
mod tests {
    use super::*;

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
