//! Encryption of a format-2 repository (docs/FORMAT.md, "Encryption"):
//! the primitives come from the `age` crate (recipients, identities, key
//! wrapping), RustCrypto's AEADs (blobs and sealed objects) and BLAKE3's
//! keyed mode (blob ids); this module only arranges them.
//!
//! Two kinds of secret: the *write key material* (write key, id key,
//! chunker seed), which every host that backs up holds, and *content
//! keys*, fresh random keys that seal file contents and manifests and are
//! kept only wrapped to the recipients. A host with the write key can
//! deduplicate, list, prune and check structure; only an identity opens
//! content keys.

use super::id::Id;
use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{AeadInPlace, KeyInit, OsRng};
use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use zeroize::{Zeroize, Zeroizing};

/// The scheme `config.encryption.scheme` names.
pub const SCHEME: &str = "volsnap-age-v1";
/// The first bytes of every object sealed with a write key.
const SEALED_MAGIC: &[u8; 4] = b"VSW1";
/// How many bytes of the write key's id a sealed object carries (so a
/// reader holding several generations picks the right one).
const KEY_TAG: usize = 8;
/// A content key seals at most this many blobs before a writer takes a
/// fresh one (random 96-bit nonces stay far from their limit).
const CONTENT_KEY_USES: u32 = 4096;
const TAG_LEN: usize = 16;

/// The AEAD sealing blobs and objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Aead {
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    #[serde(rename = "xchacha20-poly1305")]
    XChaCha20Poly1305,
}

impl Aead {
    /// AES-256-GCM where the CPU has AES and carry-less multiplication
    /// instructions (several times faster there), XChaCha20-Poly1305
    /// elsewhere.
    pub fn for_this_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
        {
            return Aead::Aes256Gcm;
        }
        Aead::XChaCha20Poly1305
    }

    pub fn name(self) -> &'static str {
        match self {
            Aead::Aes256Gcm => "aes-256-gcm",
            Aead::XChaCha20Poly1305 => "xchacha20-poly1305",
        }
    }

    fn nonce_len(self) -> usize {
        match self {
            Aead::Aes256Gcm => 12,
            Aead::XChaCha20Poly1305 => 24,
        }
    }

    /// The bytes sealing adds to a plaintext.
    pub fn overhead(self) -> usize {
        self.nonce_len() + TAG_LEN
    }

    /// `nonce | ciphertext of the concatenated parts | tag`, under `key`,
    /// authenticating `aad` too.
    pub fn seal(self, key: &[u8; 32], aad: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>> {
        let n = self.nonce_len();
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut out = Vec::with_capacity(n + len + TAG_LEN);
        out.resize(n, 0);
        OsRng.fill_bytes(&mut out[..n]);
        for part in parts {
            out.extend_from_slice(part);
        }
        let (nonce, body) = out.split_at_mut(n);
        let tag = match self {
            Aead::Aes256Gcm => aes_gcm::Aes256Gcm::new(key.into())
                .encrypt_in_place_detached((&*nonce).into(), aad, body)
                .map(|t| t.to_vec()),
            Aead::XChaCha20Poly1305 => chacha20poly1305::XChaCha20Poly1305::new(key.into())
                .encrypt_in_place_detached((&*nonce).into(), aad, body)
                .map(|t| t.to_vec()),
        }
        .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// The plaintext of what [`Aead::seal`] produced; fails on any change
    /// to the bytes, the key or `aad`.
    pub fn open(self, key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let n = self.nonce_len();
        if sealed.len() < n + TAG_LEN {
            bail!("it is too short to be sealed ({} bytes)", sealed.len());
        }
        let (nonce, rest) = sealed.split_at(n);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut plain = body.to_vec();
        let outcome = match self {
            Aead::Aes256Gcm => aes_gcm::Aes256Gcm::new(key.into()).decrypt_in_place_detached(
                nonce.into(),
                aad,
                &mut plain,
                tag.into(),
            ),
            Aead::XChaCha20Poly1305 => chacha20poly1305::XChaCha20Poly1305::new(key.into())
                .decrypt_in_place_detached(nonce.into(), aad, &mut plain, tag.into()),
        };
        if outcome.is_err() {
            bail!("it does not authenticate: damaged, tampered with, moved, or sealed with another key");
        }
        Ok(plain)
    }
}

/// `config.encryption`: public parameters only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionParams {
    pub scheme: String,
    pub aead: Aead,
    /// The id of the write key material objects are sealed with.
    pub write_key_id: Id,
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    key
}

/// The write key material: what every host that backs up holds.
pub struct WriteKey {
    pub aead: Aead,
    key: [u8; 32],
    id_key: [u8; 32],
    chunker_seed: u64,
}

impl Drop for WriteKey {
    fn drop(&mut self) {
        self.key.zeroize();
        self.id_key.zeroize();
        self.chunker_seed.zeroize();
    }
}

/// The write key material as JSON (inside the local key file and the
/// wrapped `keys/write-<id>` object).
#[derive(Serialize, Deserialize)]
struct Material {
    aead: Aead,
    write_key: String,
    id_key: String,
    chunker_seed: u64,
}

impl WriteKey {
    pub fn generate(aead: Aead) -> Self {
        Self {
            aead,
            key: random_key(),
            id_key: random_key(),
            chunker_seed: OsRng.next_u64(),
        }
    }

    /// Names the material without revealing it.
    pub fn id(&self) -> Id {
        let mut input = Zeroizing::new(Vec::with_capacity(72));
        input.extend_from_slice(&self.key);
        input.extend_from_slice(&self.id_key);
        input.extend_from_slice(&self.chunker_seed.to_le_bytes());
        Id(blake3::derive_key("volsnap 2026 write key id", &input))
    }

    /// A blob's id: BLAKE3 keyed with the id key, so that ids do not let
    /// anyone without the key confirm guessed content.
    pub fn blob_id(&self, plain: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id_key, plain).as_bytes())
    }

    /// The seed of the content and tree chunkers' gear tables.
    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }

    /// Seals an object of `kind` (index, snapshots, pack header, …):
    /// `VSW1 | first 8 bytes of the write key id | AEAD(nonce, ciphertext, tag)`.
    pub fn seal(&self, kind: &str, plain: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(plain.len() + 64);
        out.extend_from_slice(SEALED_MAGIC);
        out.extend_from_slice(&self.id().0[..KEY_TAG]);
        out.extend(self.aead.seal(&self.key, &aad(kind), &[plain])?);
        Ok(out)
    }

    /// Opens what [`WriteKey::seal`] sealed as `kind`.
    pub fn open(&self, kind: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        let prefix = SEALED_MAGIC.len() + KEY_TAG;
        if sealed.len() < prefix || &sealed[..4] != SEALED_MAGIC {
            bail!("it is not sealed (an encrypted repository seals every {kind} object)");
        }
        if sealed[4..prefix] != self.id().0[..KEY_TAG] {
            bail!(
                "it was sealed with another write key ({}…), not this one ({}…)",
                hex::encode(&sealed[4..prefix]),
                hex::encode(&self.id().0[..KEY_TAG])
            );
        }
        self.aead.open(&self.key, &aad(kind), &sealed[prefix..])
    }

    /// Seals a blob that the write key itself must open (refs blobs).
    pub fn seal_blob(&self, id: &Id, parts: &[&[u8]]) -> Result<Vec<u8>> {
        self.aead.seal(&self.key, &id.0, parts)
    }

    pub fn open_blob(&self, id: &Id, stored: &[u8]) -> Result<Vec<u8>> {
        self.aead.open(&self.key, &id.0, stored)
    }

    fn to_material(&self) -> Material {
        Material {
            aead: self.aead,
            write_key: hex::encode(self.key),
            id_key: hex::encode(self.id_key),
            chunker_seed: self.chunker_seed,
        }
    }

    fn from_material(m: &Material) -> Result<Self> {
        let mut out = Self {
            aead: m.aead,
            key: [0; 32],
            id_key: [0; 32],
            chunker_seed: m.chunker_seed,
        };
        hex::decode_to_slice(&m.write_key, &mut out.key)
            .context("its write_key is not 32 hex bytes")?;
        hex::decode_to_slice(&m.id_key, &mut out.id_key)
            .context("its id_key is not 32 hex bytes")?;
        Ok(out)
    }
}

/// Every generation of a repository's write key this host holds: the
/// current one seals; each opens what it sealed (`volsnap key rotate`
/// makes a new generation with a fresh write key and the same id key and
/// chunker seed, so deduplication goes on across it).
pub struct KeyRing {
    current: WriteKey,
    previous: Vec<WriteKey>,
}

impl KeyRing {
    pub fn new(current: WriteKey) -> Self {
        Self {
            current,
            previous: Vec::new(),
        }
    }

    /// The id of the generation that seals.
    pub fn id(&self) -> Id {
        self.current.id()
    }

    /// The ids of every generation, current first.
    pub fn ids(&self) -> Vec<Id> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(WriteKey::id)
            .collect()
    }

    pub fn aead(&self) -> Aead {
        self.current.aead
    }

    /// A new generation: a fresh write key, the same id key and chunker
    /// seed; the current one joins the earlier ones.
    pub fn rotate(&mut self) {
        let next = WriteKey {
            aead: self.current.aead,
            key: random_key(),
            id_key: self.current.id_key,
            chunker_seed: self.current.chunker_seed,
        };
        let old = std::mem::replace(&mut self.current, next);
        self.previous.insert(0, old);
    }

    pub fn blob_id(&self, plain: &[u8]) -> Id {
        self.current.blob_id(plain)
    }

    pub fn chunker_seed(&self) -> u64 {
        self.current.chunker_seed()
    }

    pub fn seal(&self, kind: &str, plain: &[u8]) -> Result<Vec<u8>> {
        self.current.seal(kind, plain)
    }

    /// Opens an object with the generation its tag names.
    /// Whether `sealed` names a generation of this ring but for a
    /// different one (another write key, or a rotation this ring lacks).
    pub fn sealed_with_another_key(&self, sealed: &[u8]) -> bool {
        let prefix = SEALED_MAGIC.len() + KEY_TAG;
        sealed.len() >= prefix
            && sealed[..4] == *SEALED_MAGIC
            && !std::iter::once(&self.current)
                .chain(&self.previous)
                .any(|k| k.id().0[..KEY_TAG] == sealed[4..prefix])
    }

    pub fn open(&self, kind: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        let prefix = SEALED_MAGIC.len() + KEY_TAG;
        let tagged = (sealed.len() >= prefix)
            .then(|| {
                std::iter::once(&self.current)
                    .chain(&self.previous)
                    .find(|k| k.id().0[..KEY_TAG] == sealed[4..prefix])
            })
            .flatten();
        tagged.unwrap_or(&self.current).open(kind, sealed)
    }

    pub fn seal_blob(&self, id: &Id, parts: &[&[u8]]) -> Result<Vec<u8>> {
        self.current.seal_blob(id, parts)
    }

    /// Opens a refs blob with whichever generation sealed it.
    pub fn open_blob(&self, id: &Id, stored: &[u8]) -> Result<Vec<u8>> {
        let mut outcome = self.current.open_blob(id, stored);
        for key in &self.previous {
            if outcome.is_ok() {
                break;
            }
            outcome = key.open_blob(id, stored);
        }
        outcome
    }
}

fn aad(kind: &str) -> Vec<u8> {
    format!("volsnap:{kind}").into_bytes()
}

/// Age recipients (public keys) that content keys are wrapped to. They
/// come from the host's own configuration, never from the repository.
#[derive(Clone)]
pub struct Recipients {
    keys: Vec<age::x25519::Recipient>,
    text: Vec<String>,
}

impl Recipients {
    /// Parses recipients: one per item, `#` comments and blank lines
    /// skipped (the lines of an age recipients file).
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>, from: &str) -> Result<Self> {
        let mut out = Self {
            keys: Vec::new(),
            text: Vec::new(),
        };
        for item in items {
            let item = item.trim();
            if item.is_empty() || item.starts_with('#') {
                continue;
            }
            let key: age::x25519::Recipient = item.parse().map_err(|_| {
                anyhow::anyhow!(
                    "{from}: {item:?} is not an age X25519 recipient (age1…, as age-keygen -y prints); ssh keys and plugins are not supported"
                )
            })?;
            if !out.text.iter().any(|t| t == item) {
                out.keys.push(key);
                out.text.push(item.to_string());
            }
        }
        if out.keys.is_empty() {
            bail!("{from}: no recipient given");
        }
        Ok(out)
    }

    /// Reads an age recipients file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the recipients file {}", path.display()))?;
        Self::parse(text.lines(), &path.display().to_string())
    }

    pub fn as_strings(&self) -> &[String] {
        &self.text
    }

    /// Names the set (order aside): packs record the set their content
    /// keys were wrapped to, and a backup deduplicates only against packs
    /// of its own set, so that every recipient reads all of every backup
    /// written for it.
    pub fn digest(&self) -> Id {
        let mut sorted = self.text.clone();
        sorted.sort();
        Id(blake3::derive_key(
            "volsnap 2026 recipient set",
            sorted.join("\n").as_bytes(),
        ))
    }

    /// `secret` as a standard age file, readable by any of the recipients'
    /// identities (`age -d -i IDENTITY` decrypts it).
    pub fn wrap(&self, secret: &[u8]) -> Result<Vec<u8>> {
        let encryptor =
            age::Encryptor::with_recipients(self.keys.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| anyhow::anyhow!("cannot wrap a key to the recipients: {e}"))?;
        let mut out = Vec::with_capacity(secret.len() + 200 * self.keys.len());
        let mut writer = encryptor.wrap_output(&mut out)?;
        writer.write_all(secret)?;
        writer.finish()?;
        Ok(out)
    }
}

/// Age identities (private keys): what reading contents takes.
pub struct Identities {
    keys: Vec<age::x25519::Identity>,
    from: String,
}

impl Identities {
    /// Reads an age identity file (as age-keygen writes it). Errors name
    /// the line, never its content.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the identity file {}", path.display()))?,
        );
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, from: &str) -> Result<Self> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.parse::<age::x25519::Identity>() {
                Ok(key) => keys.push(key),
                Err(_) => bail!(
                    "{from}, line {}: not an age X25519 identity (AGE-SECRET-KEY-1…, as age-keygen writes)",
                    n + 1
                ),
            }
        }
        if keys.is_empty() {
            bail!("{from} holds no age identity");
        }
        Ok(Self {
            keys,
            from: from.to_string(),
        })
    }

    /// A fresh identity (passphrase repositories keep one, sealed).
    pub fn generate(from: &str) -> Self {
        Self {
            keys: vec![age::x25519::Identity::generate()],
            from: from.to_string(),
        }
    }

    /// The recipient of each identity.
    pub fn recipients(&self) -> Result<Recipients> {
        let text: Vec<String> = self
            .keys
            .iter()
            .map(|k| k.to_public().to_string())
            .collect();
        Recipients::parse(text.iter().map(String::as_str), &self.from)
    }

    /// The identities as an age identity file's text.
    pub fn to_text(&self) -> Zeroizing<String> {
        use age::secrecy::ExposeSecret;
        let mut out = Zeroizing::new(String::new());
        for key in &self.keys {
            out.push_str(key.to_string().expose_secret());
            out.push('\n');
        }
        out
    }

    /// The content of an age file wrapped to one of these identities.
    pub fn unwrap(&self, file: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let decryptor = age::Decryptor::new_buffered(file)
            .map_err(|e| anyhow::anyhow!("it is not a valid age file: {e}"))?;
        let mut reader = decryptor
            .decrypt(self.keys.iter().map(|k| k as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => anyhow::anyhow!(
                    "no identity in {} can open it (a wrong identity, or one added after it was written)",
                    self.from
                ),
                other => anyhow::anyhow!("it cannot be decrypted: {other}"),
            })?;
        let mut out = Zeroizing::new(Vec::new());
        reader
            .read_to_end(&mut out)
            .map_err(|e| anyhow::anyhow!("it cannot be decrypted: {e}"))?;
        Ok(out)
    }
}

/// The local write key file: the write key material and the recipients,
/// 0600 on each host that backs up (docs/FORMAT.md, "Encryption").
#[derive(Serialize, Deserialize)]
struct KeyFile {
    volsnap: String,
    write_key_id: Id,
    #[serde(flatten)]
    material: Material,
    recipients: Vec<String>,
    /// Earlier generations (after `volsnap key rotate`), newest first:
    /// they open what they sealed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    previous: Vec<Material>,
}

const KEY_FILE_KIND: &str = "write-key-v1";

/// What a writer holds: the write key material and the recipients.
pub struct WriterKeys {
    pub write: KeyRing,
    pub recipients: Recipients,
}

impl WriterKeys {
    fn to_key_file(&self) -> KeyFile {
        KeyFile {
            volsnap: KEY_FILE_KIND.into(),
            write_key_id: self.write.id(),
            material: self.write.current.to_material(),
            recipients: self.recipients.as_strings().to_vec(),
            previous: self
                .write
                .previous
                .iter()
                .map(WriteKey::to_material)
                .collect(),
        }
    }

    /// The key file's text (JSON).
    pub fn to_file_text(&self) -> Result<Zeroizing<String>> {
        Ok(Zeroizing::new(
            serde_json::to_string_pretty(&self.to_key_file())? + "\n",
        ))
    }

    pub fn parse_file(text: &str, from: &str) -> Result<Self> {
        let file: KeyFile = serde_json::from_str(text)
            .map_err(|_| anyhow::anyhow!("{from} is not a volsnap write key file"))?;
        if file.volsnap != KEY_FILE_KIND {
            bail!("{from} is not a volsnap write key file");
        }
        let current = WriteKey::from_material(&file.material).with_context(|| from.to_string())?;
        if current.id() != file.write_key_id {
            bail!("{from} is damaged: its key material does not match its write_key_id");
        }
        let previous = file
            .previous
            .iter()
            .map(WriteKey::from_material)
            .collect::<Result<Vec<_>>>()
            .with_context(|| from.to_string())?;
        let recipients = Recipients::parse(file.recipients.iter().map(String::as_str), from)?;
        Ok(Self {
            write: KeyRing { current, previous },
            recipients,
        })
    }

    /// The write key material wrapped to the recipients: the
    /// `keys/write-<id>` object, from which an identity recovers it.
    pub fn wrapped_material(&self) -> Result<Vec<u8>> {
        let text = Zeroizing::new(serde_json::to_vec(&self.to_key_file())?);
        self.recipients.wrap(&text)
    }

    /// The write key material (and the recipients it was written for) from
    /// a `keys/write-<id>` object, opened with an identity.
    pub fn unwrap_material(identities: &Identities, wrapped: &[u8]) -> Result<Self> {
        let text = identities.unwrap(wrapped)?;
        let text = std::str::from_utf8(&text).context("the key object is not text")?;
        Self::parse_file(text, "the wrapped write key")
    }
}

/// A content key as a writer holds it: the key, its wrapped form (a
/// base64 age file), and how often it was used.
pub struct ContentKey {
    key: [u8; 32],
    pub wrapped: Arc<str>,
    uses: u32,
}

impl Drop for ContentKey {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl ContentKey {
    pub fn new(recipients: &Recipients) -> Result<Self> {
        let key = random_key();
        let wrapped = base64::engine::general_purpose::STANDARD.encode(recipients.wrap(&key)?);
        Ok(Self {
            key,
            wrapped: wrapped.into(),
            uses: 0,
        })
    }

    /// Whether it sealed as many blobs as one key may.
    pub fn spent(&self) -> bool {
        self.uses >= CONTENT_KEY_USES
    }

    /// Seals one blob's `flag | payload`, authenticated with its id.
    pub fn seal_blob(&mut self, aead: Aead, id: &Id, parts: &[&[u8]]) -> Result<Vec<u8>> {
        self.uses += 1;
        aead.seal(&self.key, &id.0, parts)
    }
}

/// Content keys opened with an identity, by their wrapped form: each
/// pack's key is unwrapped (one X25519 operation) once per process.
#[derive(Default)]
pub struct OpenedKeys {
    keys: Mutex<HashMap<Arc<str>, [u8; 32]>>,
}

impl OpenedKeys {
    pub fn open_blob(
        &self,
        identities: &Identities,
        aead: Aead,
        wrapped: &Arc<str>,
        id: &Id,
        stored: &[u8],
    ) -> Result<Vec<u8>> {
        let cached = self.keys.lock().ok().and_then(|k| k.get(wrapped).copied());
        let key = match cached {
            Some(key) => key,
            None => {
                let file = base64::engine::general_purpose::STANDARD
                    .decode(wrapped.as_bytes())
                    .context("its content key is not base64")?;
                let opened = identities
                    .unwrap(&file)
                    .context("its content key cannot be opened")?;
                let key: [u8; 32] = opened[..]
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("its content key is not 32 bytes"))?;
                if let Ok(mut keys) = self.keys.lock() {
                    keys.insert(wrapped.clone(), key);
                }
                key
            }
        };
        aead.open(&key, &id.0, stored)
    }
}

impl Drop for OpenedKeys {
    fn drop(&mut self) {
        if let Ok(keys) = self.keys.get_mut() {
            for key in keys.values_mut() {
                key.zeroize();
            }
        }
    }
}

/// Argon2id parameters of a passphrase repository: 64 MiB and 3 passes
/// (RFC 9106's second recommendation), well inside what a backup run uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PassphraseKdf {
    pub kdf: String,
    pub memory_kib: u32,
    pub passes: u32,
    pub lanes: u32,
    pub salt: String,
}

impl PassphraseKdf {
    /// Fresh parameters with a random salt.
    pub fn fresh() -> Self {
        let mut salt = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        Self {
            kdf: "argon2id".into(),
            memory_kib: 64 * 1024,
            passes: 3,
            lanes: 1,
            salt: hex::encode(salt),
        }
    }

    /// The key a passphrase gives, refusing parameters no volsnap writes
    /// (a tampered object must not make this allocate gigabytes).
    pub fn derive(&self, passphrase: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        if self.kdf != "argon2id"
            || !(8 * 1024..=1024 * 1024).contains(&self.memory_kib)
            || !(1..=16).contains(&self.passes)
            || !(1..=8).contains(&self.lanes)
        {
            bail!("its key derivation parameters are not ones volsnap writes");
        }
        let salt = hex::decode(&self.salt).context("its salt is not hex")?;
        let params = argon2::Params::new(self.memory_kib, self.passes, self.lanes, Some(32))
            .map_err(|e| anyhow::anyhow!("bad key derivation parameters: {e}"))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase, &salt, &mut *key)
            .map_err(|e| anyhow::anyhow!("key derivation failed: {e}"))?;
        Ok(key)
    }
}

/// The `keys/passphrase-<id>` object: an identity sealed under a key
/// derived from the passphrase.
#[derive(Serialize, Deserialize)]
pub struct PassphraseObject {
    #[serde(flatten)]
    pub kdf: PassphraseKdf,
    /// XChaCha20-Poly1305 of the identity file's text, hex.
    pub sealed_identity: String,
}

const PASSPHRASE_AAD: &[u8] = b"volsnap:passphrase-identity";

impl PassphraseObject {
    pub fn seal(identities: &Identities, passphrase: &[u8]) -> Result<Self> {
        let kdf = PassphraseKdf::fresh();
        let key = kdf.derive(passphrase)?;
        let text = identities.to_text();
        let sealed = Aead::XChaCha20Poly1305.seal(&key, PASSPHRASE_AAD, &[text.as_bytes()])?;
        Ok(Self {
            kdf,
            sealed_identity: hex::encode(sealed),
        })
    }

    pub fn open(&self, passphrase: &[u8]) -> Result<Identities> {
        let key = self.kdf.derive(passphrase)?;
        let sealed = hex::decode(&self.sealed_identity).context("it is not hex")?;
        let text = Aead::XChaCha20Poly1305
            .open(&key, PASSPHRASE_AAD, &sealed)
            .map_err(|_| {
                anyhow::anyhow!("the passphrase is wrong (or the key object was altered)")
            })?;
        let text = Zeroizing::new(String::from_utf8(text).context("it is not text")?);
        Identities::parse(&text, "the passphrase's identity")
    }
}

/// Reads a passphrase file: its first line, without the line ending.
pub fn read_passphrase(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let text = Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("cannot read the passphrase file {}", path.display()))?,
    );
    let line = text.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        bail!("the passphrase file {} is empty", path.display());
    }
    Ok(Zeroizing::new(line.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_aeads_round_trip_and_refuse_any_change() {
        for aead in [Aead::Aes256Gcm, Aead::XChaCha20Poly1305] {
            let key = random_key();
            let sealed = aead.seal(&key, b"id", &[b"flag", b"payload"]).unwrap();
            assert_eq!(sealed.len(), 11 + aead.overhead());
            assert_eq!(aead.open(&key, b"id", &sealed).unwrap(), b"flagpayload");
            let mut flipped = sealed.clone();
            flipped[aead.nonce_len() + 2] ^= 1;
            assert!(aead.open(&key, b"id", &flipped).is_err(), "a flipped bit");
            assert!(
                aead.open(&key, b"other id", &sealed).is_err(),
                "a moved blob"
            );
            assert!(
                aead.open(&random_key(), b"id", &sealed).is_err(),
                "another key"
            );
            assert!(aead.open(&key, b"id", &sealed[..sealed.len() - 1]).is_err());
        }
    }

    #[test]
    fn sealed_objects_name_their_kind_and_key() {
        let key = WriteKey::generate(Aead::for_this_cpu());
        let sealed = key.seal("index", b"{}").unwrap();
        assert_eq!(key.open("index", &sealed).unwrap(), b"{}");
        assert!(key.open("snapshots", &sealed).is_err(), "swapped kinds");
        let other = WriteKey::generate(Aead::for_this_cpu());
        let err = other.open("index", &sealed).unwrap_err();
        assert!(format!("{err:#}").contains("another write key"), "{err:#}");
        assert!(key.open("index", b"{\"plain\": 1}").is_err());
        // Keyed ids: the same plaintext, other ids under another key.
        assert_ne!(key.blob_id(b"x"), other.blob_id(b"x"));
        assert_ne!(key.blob_id(b"x"), Id::digest(b"x"));
    }

    #[test]
    fn a_key_file_round_trips_and_its_material_unwraps_only_with_an_identity() {
        let ours = Identities::generate("test");
        let theirs = Identities::generate("other");
        let writer = WriterKeys {
            write: KeyRing::new(WriteKey::generate(Aead::Aes256Gcm)),
            recipients: ours.recipients().unwrap(),
        };
        let text = writer.to_file_text().unwrap();
        let back = WriterKeys::parse_file(&text, "f").unwrap();
        assert_eq!(back.write.id(), writer.write.id());
        assert_eq!(back.recipients.as_strings(), writer.recipients.as_strings());
        let wrapped = writer.wrapped_material().unwrap();
        let recovered = WriterKeys::unwrap_material(&ours, &wrapped).unwrap();
        assert_eq!(recovered.write.id(), writer.write.id());
        let err = WriterKeys::unwrap_material(&theirs, &wrapped)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("no identity"), "{err:#}");
        assert!(!String::from_utf8_lossy(&wrapped).contains(&hex::encode(writer.write.current.key)));
    }

    #[test]
    fn content_keys_open_only_with_an_identity_of_a_recipient() {
        let ours = Identities::generate("test");
        let mut key = ContentKey::new(&ours.recipients().unwrap()).unwrap();
        let id = Id::digest(b"blob");
        let sealed = key
            .seal_blob(Aead::Aes256Gcm, &id, &[b"\x01", b"data"])
            .unwrap();
        let opened = OpenedKeys::default();
        let plain = opened
            .open_blob(&ours, Aead::Aes256Gcm, &key.wrapped, &id, &sealed)
            .unwrap();
        assert_eq!(plain, b"\x01data");
        let theirs = Identities::generate("other");
        assert!(OpenedKeys::default()
            .open_blob(&theirs, Aead::Aes256Gcm, &key.wrapped, &id, &sealed)
            .is_err());
    }

    #[test]
    fn a_passphrase_opens_its_identity_and_a_wrong_one_is_named() {
        let ids = Identities::generate("test");
        let object = PassphraseObject::seal(&ids, b"correct horse").unwrap();
        let opened = object.open(b"correct horse").unwrap();
        assert_eq!(
            opened.recipients().unwrap().as_strings(),
            ids.recipients().unwrap().as_strings()
        );
        let err = object.open(b"wrong").err().unwrap();
        assert!(
            format!("{err:#}").contains("passphrase is wrong"),
            "{err:#}"
        );
        let mut hostile = PassphraseObject::seal(&ids, b"x").unwrap();
        hostile.kdf.memory_kib = u32::MAX;
        assert!(
            hostile.open(b"x").is_err(),
            "no gigabytes for a tampered object"
        );
    }

    /// Seals and opens 1 MiB blobs with each AEAD, checking every one, and
    /// prints the sealing speed: the measurement behind
    /// [`Aead::for_this_cpu`] (`cargo test --release --lib
    /// aead_throughput -- --nocapture`). Reported, not judged.
    #[test]
    fn aead_throughput() {
        let key = random_key();
        let blob: Vec<u8> = (0..1u32 << 20).map(|n| (n * 31 % 251) as u8).collect();
        for aead in [Aead::Aes256Gcm, Aead::XChaCha20Poly1305] {
            let mut last = Vec::new();
            let start = std::time::Instant::now();
            for _ in 0..128 {
                last = aead.seal(&key, b"id", &[&blob]).unwrap();
            }
            let secs = start.elapsed().as_secs_f64();
            assert_eq!(aead.open(&key, b"id", &last).unwrap(), blob);
            println!("{}: sealed {:.0} MiB/s", aead.name(), 128.0 / secs);
        }
    }

    #[test]
    fn recipients_refuse_what_is_not_one() {
        let err = Recipients::parse(["ssh-ed25519 AAAA"], "cli")
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("not an age X25519 recipient"));
        assert!(Recipients::parse(["# only a comment", ""], "file").is_err());
        let err = Identities::parse("AGE-SECRET-KEY-1NOPE\n", "id.txt")
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("line 1"), "{err:#}");
        assert!(!format!("{err:#}").contains("NOPE"), "no secret in errors");
    }
}
