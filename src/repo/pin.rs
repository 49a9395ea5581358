//! What a repository is, as this host knows it: pinned on first use.
//!
//! `config` is the one object not named by its content, and it is read on
//! every run: whoever can write the storage can rewrite it. Were it trusted,
//! setting `"encryption": null` would make every write-only host store its
//! next backups in plaintext, and `"immutable_days": null` would silently
//! stop Object Lock retention. So the host records, when it creates or first
//! opens a format-2 repository, what it found (id, encryption and its write
//! key, immutability, chunker and compression) in
//! `<state dir>/repos/<digest of location>.json` (0600), and refuses any
//! later difference before doing anything, naming what changed. Only
//! `volsnap init` on this host, or `volsnap repo trust` after showing the
//! change, records new facts.

use super::v2::crypto::EncryptionParams;
use super::v2::id::Id;
use super::v2::objects::{ChunkerParams, Config};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The facts pinned about one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pinned {
    /// Where it is, as the operator names it (informational: the file's
    /// name is the digest of it).
    pub location: String,
    pub id: String,
    /// The id of its write key, or `None` for a plain repository.
    pub write_key: Option<String>,
    pub immutable_days: Option<u32>,
    pub chunker: ChunkerParams,
    pub tree_chunker: ChunkerParams,
    pub compression: String,
    /// The generations of its write key this host has used (ids, hex): a
    /// `keys/write-…` object must hold them all to be believed, so that a
    /// rotation cannot be replaced by material a former holder of the old
    /// key made up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_generations: Vec<String>,
}

impl Pinned {
    /// What `config` says (already checked by the reader).
    pub fn of(location: &str, config: &Config) -> Result<Self> {
        let write_key = match &config.encryption {
            None => None,
            Some(value) => {
                let params: EncryptionParams = serde_json::from_value(value.clone())
                    .context("its encryption parameters are not valid")?;
                Some(params.write_key_id.hex())
            }
        };
        Ok(Self {
            location: location.to_string(),
            id: config.id.clone(),
            write_key,
            immutable_days: config.immutable_days,
            chunker: config.chunker.clone(),
            tree_chunker: config.tree_chunker.clone(),
            compression: config.compression.clone(),
            write_generations: Vec::new(),
        })
    }

    /// What differs from `pinned`, one phrase each; empty when nothing does.
    pub fn changes_from(&self, pinned: &Pinned) -> Vec<String> {
        let mut out = Vec::new();
        let short = |s: &str| s.chars().take(16).collect::<String>();
        if self.id != pinned.id {
            out.push(format!(
                "its id is {} where this host knows {} (another repository is there now)",
                short(&self.id),
                short(&pinned.id)
            ));
        }
        match (&pinned.write_key, &self.write_key) {
            (Some(_), None) => out.push(
                "it is encrypted, and its config now says it is not (new backups would be stored in plaintext)"
                    .to_string(),
            ),
            (None, Some(key)) => out.push(format!(
                "it is not encrypted, and its config now names a write key {}",
                short(key)
            )),
            (Some(was), Some(now)) if was != now => out.push(format!(
                "its write key is {} where this host knows {}",
                short(now),
                short(was)
            )),
            _ => {}
        }
        if self.immutable_days != pinned.immutable_days {
            let days = |d: Option<u32>| d.map_or("off".to_string(), |d| format!("{d} days"));
            out.push(format!(
                "its immutability (Object Lock retention) is {} where this host knows {}",
                days(self.immutable_days),
                days(pinned.immutable_days)
            ));
        }
        if self.chunker != pinned.chunker || self.tree_chunker != pinned.tree_chunker {
            out.push("its chunker parameters changed".to_string());
        }
        if self.compression != pinned.compression {
            out.push("its compression changed".to_string());
        }
        out
    }
}

/// The pins of one host.
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    pub fn in_state_dir(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("repos"),
        }
    }

    fn file(&self, location: &str) -> PathBuf {
        self.dir.join(format!(
            "{}.json",
            &Id::digest(location.as_bytes()).hex()[..32]
        ))
    }

    /// What this host pinned for `location`, if anything. A pin file this
    /// host cannot read is an error: it is the host's own record.
    pub fn get(&self, location: &str) -> Result<Option<Pinned>> {
        let file = self.file(location);
        match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
                format!("{} is not a valid record of this host's", file.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
        }
    }

    /// The write key generations pinned for `location` (none if nothing is).
    pub fn generations(&self, location: &str) -> Result<Vec<Id>> {
        let Some(pinned) = self.get(location)? else {
            return Ok(Vec::new());
        };
        pinned
            .write_generations
            .iter()
            .map(|g| Id::parse(g))
            .collect::<Result<Vec<_>>>()
            .with_context(|| {
                format!(
                    "{} is not a valid record of this host's",
                    self.file(location).display()
                )
            })
    }

    /// Adds the write key generations `ids` to the pin of `location`.
    pub fn add_generations(&self, location: &str, ids: &[Id]) -> Result<()> {
        let Some(mut pinned) = self.get(location)? else {
            return Ok(());
        };
        let before = pinned.write_generations.len();
        for id in ids {
            if !pinned.write_generations.contains(&id.hex()) {
                pinned.write_generations.push(id.hex());
            }
        }
        if pinned.write_generations.len() == before {
            return Ok(());
        }
        self.put(&pinned)
    }

    /// Records `facts` (replacing what was pinned for the location; the
    /// write key generations are learnt again on the next open).
    pub fn put(&self, facts: &Pinned) -> Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        crate::fsutil::replace_private_file(
            &self.file(&facts.location),
            &serde_json::to_vec_pretty(facts)?,
        )
    }

    /// Checks what `config` says against the pin, pinning it on first use.
    /// A pin that cannot be written (a read-only state directory) is
    /// reported and the run goes on: nothing was pinned to contradict.
    pub fn check(&self, location: &str, config: &Config) -> Result<()> {
        let now = Pinned::of(location, config)?;
        match self.get(location)? {
            Some(pinned) => {
                let changes = now.changes_from(&pinned);
                if changes.is_empty() {
                    return Ok(());
                }
                Err(crate::usage!(
                    "refusing to use {location}: {}. This host recorded what the repository is when it first used it ({}); a config changed in storage is how an attacker would switch protection off. Nothing was done. If the change is yours, review it with `volsnap repo show --repo {location}` and accept it with `volsnap repo trust --repo {location}`",
                    changes.join("; "),
                    self.file(location).display()
                ))
            }
            None => {
                if let Err(e) = self.put(&now) {
                    tracing::warn!(
                        "cannot record what {location} is on this host ({e:#}); a later change of its config will not be noticed"
                    );
                }
                Ok(())
            }
        }
    }
}

/// What the format-2 repository at `root` says it is now (its config,
/// checked but not compared), and what this host pinned for it.
pub fn facts(root: &Path) -> Result<(Pinned, Option<Pinned>)> {
    let backend = crate::backend::open(root)?;
    let bytes = backend.read(super::v2::CONFIG).map_err(|e| {
        if crate::backend::is_missing(&e) {
            crate::usage!("{} holds no format-2 repository", root.display())
        } else {
            e
        }
    })?;
    let config: Config = serde_json::from_slice(&bytes)
        .with_context(|| format!("the config of {} is not valid", root.display()))?;
    config
        .check()
        .with_context(|| format!("the config of {} cannot be used", root.display()))?;
    let location = super::keys::pin_location(root);
    let now = Pinned::of(&location, &config)?;
    let pinned = Pins::in_state_dir(&super::keys::state_dir()).get(&location)?;
    Ok((now, pinned))
}

/// `volsnap repo show`: the facts, and how they differ from the pin.
pub fn show(root: &Path) -> Result<String> {
    let (now, pinned) = facts(root)?;
    let mut out = describe(&now);
    match pinned {
        None => {
            out.push_str("\nthis host has not pinned it yet: the first command that opens it will")
        }
        Some(pinned) => {
            let changes = now.changes_from(&pinned);
            if changes.is_empty() {
                out.push_str("\nas pinned on this host");
            } else {
                out.push_str("\nDIFFERENT from what this host pinned:");
                for change in changes {
                    out.push_str(&format!("\n  - {change}"));
                }
                out.push_str(&format!(
                    "\nif the change is yours: volsnap repo trust --repo {}",
                    root.display()
                ));
            }
        }
    }
    Ok(out)
}

/// `volsnap repo trust`: pins what the repository says now.
pub fn trust(root: &Path) -> Result<String> {
    let (now, pinned) = facts(root)?;
    let changes = pinned
        .as_ref()
        .map(|p| now.changes_from(p))
        .unwrap_or_default();
    Pins::in_state_dir(&super::keys::state_dir()).put(&now)?;
    Ok(match (pinned, changes.is_empty()) {
        (Some(_), true) => format!("{}: unchanged; nothing to trust", now.location),
        (None, _) => format!("pinned {}:\n{}", now.location, describe(&now)),
        (Some(_), false) => format!(
            "accepted on this host: {}\n{}",
            changes.join("; "),
            describe(&now)
        ),
    })
}

fn describe(facts: &Pinned) -> String {
    format!(
        "repository {}\n  id {}\n  encryption {}\n  immutable {}\n  chunks {}..{}..{} bytes, trees {}..{}..{} bytes, {}",
        facts.location,
        facts.id,
        facts
            .write_key
            .as_ref()
            .map_or("none".to_string(), |k| format!("on (write key {})", &k[..k.len().min(16)])),
        facts
            .immutable_days
            .map_or("no".to_string(), |d| format!("{d} days (S3 Object Lock)")),
        facts.chunker.min,
        facts.chunker.avg,
        facts.chunker.max,
        facts.tree_chunker.min,
        facts.tree_chunker.avg,
        facts.tree_chunker.max,
        facts.compression
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            format: 2,
            id: "a".repeat(64),
            ids: "blake3".into(),
            chunker: ChunkerParams::contents(),
            tree_chunker: ChunkerParams::trees(),
            compression: "zstd".into(),
            encryption: None,
            immutable_days: Some(30),
            created_by: String::new(),
        }
    }

    #[test]
    fn a_pin_refuses_a_downgrade_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::in_state_dir(dir.path());
        let config = config();
        pins.check("s3://b/p", &config).unwrap();
        pins.check("s3://b/p", &config).unwrap();
        let mut changed = config.clone();
        changed.immutable_days = None;
        let err = pins.check("s3://b/p", &changed).unwrap_err().to_string();
        assert!(err.contains("immutability"), "{err}");
        // Another location is pinned on its own.
        pins.check("s3://b/other", &changed).unwrap();
        let mode = std::fs::metadata(pins.file("s3://b/p"))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }
}
