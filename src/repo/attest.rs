//! Who wrote a backup: every commit object is signed by the host that made
//! it, and a host believes a commit's claim to come from host X only if it
//! verifies against a key this host trusts for X (docs/FORMAT.md,
//! "Attribution").
//!
//! In a fleet every host holds the shared write key, and some hold only
//! PUT rights: any of them can write a commit that says `host: victim`.
//! Retention and `latest` read that field, so without this a single
//! compromised host could make the victim's own prune delete its real
//! backups. Keys are trusted only from this host's side (its own key, and
//! `volsnap host trust NAME FINGERPRINT`), never from the repository.

use super::v2::objects::Commit;
use super::v2::Repository;
use crate::backend::Backend;
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a signature covers is prefixed with this, so that no other
/// volsnap signature (or anyone else's) can pass for a commit's.
const DOMAIN: &[u8] = b"volsnap commit signature, version 1\0";
/// The same for an attestation: a host's signature, made later, over an
/// unsigned commit it wrote before commits were signed (`host adopt`).
const ATTESTATION_DOMAIN: &[u8] = b"volsnap commit attestation, version 1\0";
/// Where attestations live: `attestations/<backup digest>-<key>`.
pub const ATTESTATIONS: &str = "attestations";
/// An attestation is a key and a signature; anything larger is not one.
const MAX_ATTESTATION: u64 = 1024;
/// A commit dated further ahead of this host's clock is never believed.
pub const FUTURE_SLACK_MINUTES: i64 = 10;

/// A commit's signature: the signer's public key and the signature, hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitSignature {
    pub key: String,
    pub sig: String,
}

/// The bytes a commit's signature covers: every field retention, `latest`,
/// restore and drills read, as this volsnap stores them; not `packs` and
/// `stored_bytes`, which copies rewrite.
pub fn signed_bytes(commit: &Commit) -> Result<Vec<u8>> {
    let mut covered = commit.clone();
    covered.packs.clear();
    covered.stored_bytes = None;
    covered.signature = None;
    let mut bytes = DOMAIN.to_vec();
    bytes.extend(serde_json::to_vec(&covered)?);
    Ok(bytes)
}

/// What identifies a backup to retention: the BLAKE3 digest of its signed
/// bytes (copies of one commit differing in `packs` or `stored_bytes`
/// share it), hex.
pub fn backup_digest(commit: &Commit) -> Result<String> {
    Ok(blake3::hash(&signed_bytes(commit)?).to_hex().to_string())
}

fn attestation_bytes(commit: &Commit) -> Result<Vec<u8>> {
    let mut bytes = ATTESTATION_DOMAIN.to_vec();
    bytes.extend(signed_bytes(commit)?.split_off(DOMAIN.len()));
    Ok(bytes)
}

/// A key's fingerprint, as operators compare and type it.
pub fn fingerprint(key: &VerifyingKey) -> String {
    format!("ed25519:{}", &blake3::hash(key.as_bytes()).to_hex()[..32])
}

fn key_file(state_dir: &Path) -> PathBuf {
    super::keys::key_dir(state_dir).join("host-signing.key")
}

/// This host's signing key (`<state dir>/keys/host-signing.key`, 0600).
pub struct HostKey {
    key: SigningKey,
}

impl HostKey {
    /// The key, if this host has made one.
    pub fn load(state_dir: &Path) -> Result<Option<HostKey>> {
        let file = key_file(state_dir);
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        };
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .with_context(|| format!("{} is not a volsnap signing key", file.display()))?;
        Ok(Some(HostKey {
            key: SigningKey::from_bytes(&seed),
        }))
    }

    /// The key, made on first use (said on stderr, with its fingerprint).
    pub fn load_or_create(state_dir: &Path) -> Result<HostKey> {
        if let Some(key) = Self::load(state_dir)? {
            return Ok(key);
        }
        let mut seed = [0u8; 32];
        crate::fsutil::random_bytes(&mut seed)?;
        let dir = super::keys::key_dir(state_dir);
        crate::fsutil::create_state_dir(state_dir)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        crate::fsutil::write_private(&key_file(state_dir), hex::encode(seed).as_bytes())?;
        let key = HostKey {
            key: SigningKey::from_bytes(&seed),
        };
        eprintln!(
            "volsnap: this host signs its backups with key {} (kept in {}); a host that prunes or restores its backups trusts it with: volsnap host trust {} {}",
            key.fingerprint(),
            key_file(state_dir).display(),
            crate::execute::this_host(),
            key.fingerprint()
        );
        Ok(key)
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.key.verifying_key())
    }

    /// Signs `commit` (its signature field replaced).
    pub fn sign(&self, commit: &mut Commit) -> Result<()> {
        commit.signature = None;
        let sig = self.key.sign(&signed_bytes(commit)?);
        commit.signature = Some(self.signature(sig));
        Ok(())
    }

    fn signature(&self, sig: Signature) -> CommitSignature {
        CommitSignature {
            key: hex::encode(self.key.verifying_key().as_bytes()),
            sig: hex::encode(sig.to_bytes()),
        }
    }

    /// An attestation of an unsigned `commit`: the object's name and its
    /// bytes. Its name depends only on what the signature covers, so a
    /// copy of the commit in another repository finds it under the same
    /// name.
    pub fn attest(&self, commit: &Commit) -> Result<(String, Vec<u8>)> {
        let sig = self.key.sign(&attestation_bytes(commit)?);
        let name = format!(
            "{ATTESTATIONS}/{}-{}",
            backup_digest(commit)?,
            &self.fingerprint()["ed25519:".len()..]
        );
        Ok((name, serde_json::to_vec(&self.signature(sig))?))
    }
}

/// Parses a hex public key and signature; `None` if either is malformed.
fn parse_signature(signature: &CommitSignature) -> Option<(VerifyingKey, Signature)> {
    let key = hex::decode(&signature.key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())?;
    let sig = hex::decode(&signature.sig)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b))?;
    Some((key, sig))
}

/// The keys this host trusts, per host name (`<state dir>/trust.json`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Trust {
    /// Host name → fingerprints trusted for it (a reinstalled host's new
    /// key joins its old one, so both keep verifying).
    #[serde(default)]
    pub hosts: BTreeMap<String, Vec<String>>,
    /// Fingerprints trusted no more, whatever the list says.
    #[serde(default)]
    pub revoked: Vec<String>,
}

impl Trust {
    fn file(state_dir: &Path) -> PathBuf {
        state_dir.join("trust.json")
    }

    pub fn load(state_dir: &Path) -> Result<Trust> {
        let file = Self::file(state_dir);
        match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not valid", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Trust::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
        }
    }

    pub fn save(&self, state_dir: &Path) -> Result<()> {
        crate::fsutil::create_state_dir(state_dir)?;
        crate::fsutil::replace_private_file(
            &Self::file(state_dir),
            &serde_json::to_vec_pretty(self)?,
        )
    }
}

/// Checks that `fingerprint` looks like one (`ed25519:` and 32 hex digits).
pub fn parse_fingerprint(fingerprint: &str) -> Result<String> {
    let ok = fingerprint
        .strip_prefix("ed25519:")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        bail!(
            "{fingerprint:?} is not a volsnap key fingerprint (ed25519: and 32 hex digits, as `volsnap host show` prints it on the host that owns the key)"
        );
    }
    Ok(fingerprint.to_ascii_lowercase())
}

/// What this host makes of a commit's claim to come from its `host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "is")]
pub enum Attribution {
    /// Signed by a key this host trusts for that host name.
    Verified,
    /// Written unsigned, before commits were signed, and later attested by
    /// a key this host trusts for that host name (`volsnap host adopt`).
    Adopted { fingerprint: String },
    /// No signature (written before signatures, or by someone who left it out).
    Unsigned,
    /// Signed, by a key this host does not trust for that name (or revoked).
    Untrusted { fingerprint: String },
    /// The signature does not match the commit (a field was changed).
    BadSignature,
    /// Dated more than ten minutes ahead of this host's clock.
    FromTheFuture,
}

impl Attribution {
    pub fn verified(&self) -> bool {
        matches!(self, Attribution::Verified | Attribution::Adopted { .. })
    }

    /// A few words for lists and errors.
    pub fn describe(&self) -> String {
        match self {
            Attribution::Verified => "verified".into(),
            Attribution::Adopted { fingerprint } => {
                format!("verified (unsigned, adopted by {fingerprint})")
            }
            Attribution::Unsigned => "unsigned".into(),
            Attribution::Untrusted { fingerprint } => {
                format!("signed by {fingerprint}, a key not trusted for its host")
            }
            Attribution::BadSignature => "signature does not match (tampered with)".into(),
            Attribution::FromTheFuture => "dated in the future".into(),
        }
    }
}

/// Attributes commits for this host: its own key, and its trust list.
pub struct Verifier {
    own: Option<String>,
    trust: Trust,
    now: DateTime<Utc>,
    /// The repository's attestation objects by backup digest, and where
    /// to read them (only an unsigned commit's are ever read).
    attestations: BTreeMap<String, Vec<String>>,
    backend: Option<Arc<dyn Backend>>,
}

impl Verifier {
    pub fn new(state_dir: &Path) -> Result<Verifier> {
        let mut trust = Trust::load(state_dir)?;
        for (host, keys) in configured_trust() {
            let listed = trust.hosts.entry(host).or_default();
            for key in keys {
                if !listed.contains(&key) {
                    listed.push(key);
                }
            }
        }
        Ok(Verifier {
            own: HostKey::load(state_dir)?.map(|k| k.fingerprint()),
            trust,
            now: Utc::now(),
            attestations: BTreeMap::new(),
            backend: None,
        })
    }

    /// The verifier of this process's state directory.
    pub fn for_this_host() -> Result<Verifier> {
        Self::new(&super::keys::state_dir())
    }

    /// [`Self::for_this_host`], also believing the attestations of `repo`
    /// (one listing; an attestation is read only for an unsigned commit).
    pub fn for_repository(repo: &Repository) -> Result<Verifier> {
        let mut verifier = Self::for_this_host()?;
        for object in repo.backend().list(ATTESTATIONS)? {
            let Some((digest, _)) = object
                .name
                .rsplit('/')
                .next()
                .and_then(|n| n.split_once('-'))
            else {
                continue;
            };
            if object.size <= MAX_ATTESTATION {
                verifier
                    .attestations
                    .entry(digest.to_string())
                    .or_default()
                    .push(object.name.clone());
            }
        }
        verifier.backend = Some(repo.backend().clone());
        Ok(verifier)
    }

    /// Whether a key is trusted for `host` by name (`volsnap host trust`).
    /// This host's own key, which signs whatever name its runs give, counts
    /// through the commits it verifies.
    pub fn trusts_by_name(&self, host: &str) -> bool {
        self.trust
            .hosts
            .get(host)
            .is_some_and(|keys| keys.iter().any(|k| !self.trust.revoked.contains(k)))
    }

    /// Whether this host believes `fingerprint` speaks for `host`.
    fn trusts(&self, fingerprint: &str, host: &str) -> bool {
        !self.trust.revoked.iter().any(|k| k == fingerprint)
            && (self.own.as_deref() == Some(fingerprint)
                || self
                    .trust
                    .hosts
                    .get(host)
                    .is_some_and(|keys| keys.iter().any(|k| k == fingerprint)))
    }

    /// The fingerprint of a trusted key that attested unsigned `commit`.
    fn adopted_by(&self, commit: &Commit) -> Option<String> {
        let backend = self.backend.as_ref()?;
        let names = self.attestations.get(&backup_digest(commit).ok()?)?;
        let covered = attestation_bytes(commit).ok()?;
        names.iter().find_map(|name| {
            let bytes = backend.read(name).ok()?;
            if bytes.len() as u64 > MAX_ATTESTATION {
                return None;
            }
            let signature: CommitSignature = serde_json::from_slice(&bytes).ok()?;
            let (key, sig) = parse_signature(&signature)?;
            key.verify(&covered, &sig).ok()?;
            let fingerprint = fingerprint(&key);
            self.trusts(&fingerprint, &commit.host)
                .then_some(fingerprint)
        })
    }

    pub fn attribute(&self, commit: &Commit) -> Attribution {
        let limit = self.now + chrono::Duration::minutes(FUTURE_SLACK_MINUTES);
        let from_the_future = commit.started_at > limit || commit.completed_at > limit;
        let Some(signature) = &commit.signature else {
            return match self.adopted_by(commit) {
                Some(_) if from_the_future => Attribution::FromTheFuture,
                Some(fingerprint) => Attribution::Adopted { fingerprint },
                None => Attribution::Unsigned,
            };
        };
        let Some((key, sig)) = parse_signature(signature) else {
            return Attribution::BadSignature;
        };
        let Ok(bytes) = signed_bytes(commit) else {
            return Attribution::BadSignature;
        };
        if key.verify(&bytes, &sig).is_err() {
            return Attribution::BadSignature;
        }
        let fingerprint = fingerprint(&key);
        if !self.trusts(&fingerprint, &commit.host) {
            return Attribution::Untrusted { fingerprint };
        }
        if from_the_future {
            return Attribution::FromTheFuture;
        }
        Attribution::Verified
    }
}

/// Deletes the attestations of the backup whose digest is `digest` (once
/// no commit object of it is left).
pub fn remove_attestations(backend: &dyn Backend, digest: &str) -> Result<()> {
    let prefix = format!("{digest}-");
    for object in backend.list(ATTESTATIONS)? {
        if object
            .name
            .rsplit('/')
            .next()
            .is_some_and(|n| n.starts_with(&prefix))
        {
            backend.delete(&object.name)?;
        }
    }
    Ok(())
}

/// Copies the attestations of the backups whose digests are `digests`
/// from one repository to another (the names are the same in both).
pub fn copy_attestations(
    from: &dyn Backend,
    to: &dyn Backend,
    digests: &std::collections::HashSet<String>,
) -> Result<()> {
    if digests.is_empty() {
        return Ok(());
    }
    for object in from.list(ATTESTATIONS)? {
        let wanted = object
            .name
            .rsplit('/')
            .next()
            .and_then(|n| n.split_once('-'))
            .is_some_and(|(digest, _)| digests.contains(digest));
        if wanted && object.size <= MAX_ATTESTATION {
            let bytes = from.read(&object.name)?;
            if bytes.len() as u64 <= MAX_ATTESTATION {
                to.write(&object.name, &bytes)?;
            }
        }
    }
    Ok(())
}

/// Keys trusted by this process's configuration file (`[trust]`), beside
/// `STATE/trust.json`: set once by the commands that load the file.
static CONFIGURED_TRUST: std::sync::RwLock<BTreeMap<String, Vec<String>>> =
    std::sync::RwLock::new(BTreeMap::new());

/// Adds the configuration file's trusted keys (already checked).
pub fn set_configured_trust(trust: &BTreeMap<String, Vec<String>>) {
    if let Ok(mut configured) = CONFIGURED_TRUST.write() {
        *configured = trust.clone();
    }
}

fn configured_trust() -> BTreeMap<String, Vec<String>> {
    CONFIGURED_TRUST
        .read()
        .map(|t| t.clone())
        .unwrap_or_default()
}

/// `volsnap host show`: this host's key and whom it trusts.
pub fn show(state_dir: &Path) -> Result<String> {
    let mut out = match HostKey::load(state_dir)? {
        Some(key) => format!(
            "this host ({}) signs its backups with {}",
            crate::execute::this_host(),
            key.fingerprint()
        ),
        None => format!(
            "this host ({}) has no signing key yet: its first format-2 backup makes one",
            crate::execute::this_host()
        ),
    };
    let trust = Trust::load(state_dir)?;
    if trust.hosts.is_empty() {
        out.push_str("\nit trusts no other host's key");
    }
    for (host, keys) in &trust.hosts {
        for key in keys {
            let revoked = if trust.revoked.contains(key) {
                " (revoked)"
            } else {
                ""
            };
            out.push_str(&format!("\ntrusted for {host}: {key}{revoked}"));
        }
    }
    Ok(out)
}

/// `volsnap host trust NAME FINGERPRINT`.
pub fn trust(state_dir: &Path, host: &str, fingerprint: &str) -> Result<String> {
    let fingerprint = parse_fingerprint(fingerprint)?;
    let mut trust = Trust::load(state_dir)?;
    trust.revoked.retain(|k| *k != fingerprint);
    let keys = trust.hosts.entry(host.to_string()).or_default();
    if !keys.contains(&fingerprint) {
        keys.push(fingerprint.clone());
    }
    trust.save(state_dir)?;
    Ok(format!(
        "backups signed by {fingerprint} count as {host}'s on this host (retention, latest, restore, drills)"
    ))
}

/// `volsnap host revoke FINGERPRINT`.
pub fn revoke(state_dir: &Path, fingerprint: &str) -> Result<String> {
    let fingerprint = parse_fingerprint(fingerprint)?;
    let mut trust = Trust::load(state_dir)?;
    if !trust.revoked.contains(&fingerprint) {
        trust.revoked.push(fingerprint.clone());
    }
    trust.save(state_dir)?;
    Ok(format!(
        "{fingerprint} is trusted no more on this host: backups it signed are listed as unverified, never counted by retention nor taken as latest, and deleted only by volsnap forget"
    ))
}
