//! Repository format 2: content-addressed objects on any [`Backend`]
//! (docs/FORMAT.md, "Repository format 2").
//!
//! This module reads and writes the objects and checks each one against its
//! name before use; the archiver decides what goes into them.

pub mod copy;
pub mod crypto;
pub mod gc;
pub mod id;
pub mod index;
pub mod lock;
pub mod objects;
pub mod pack;
pub mod repair;
pub mod saver;
pub mod tree;

use crate::backend::Backend;
use anyhow::{bail, Context, Result};
use crypto::{EncryptionParams, Identities, KeyRing, OpenedKeys, Recipients, WriterKeys};
use id::Id;
use index::{Index, IndexFile};
use objects::{ChunkerParams, Commit, Config, FORMAT, ID_HASH};
use pack::{open_blob, BlobEntry, BlobKind, PackHeader};
use std::collections::HashMap;
use std::sync::Arc;

pub const CONFIG: &str = "config";

/// What this process holds of an encrypted repository's keys: always the
/// write key material; the recipients to back up; identities to read.
pub struct Keys {
    pub params: EncryptionParams,
    pub write: Arc<KeyRing>,
    pub recipients: Option<Recipients>,
    pub identities: Option<Identities>,
    opened: OpenedKeys,
}

/// What opening an encrypted repository without an identity says when
/// contents are asked for.
pub const NEEDS_IDENTITY: &str = "file contents and names in an encrypted repository open only with an identity: give --identity FILE (or VOLSNAP_IDENTITY_FILE), or --passphrase-file for a passphrase repository; a write key alone backs up, lists, prunes and checks structure";

impl Keys {
    pub fn new(
        params: EncryptionParams,
        write: KeyRing,
        recipients: Option<Recipients>,
        identities: Option<Identities>,
    ) -> Self {
        Self {
            params,
            write: Arc::new(write),
            recipients,
            identities,
            opened: OpenedKeys::default(),
        }
    }

    /// Seals one blob's `flag | payload`: refs blobs with the write key,
    /// the others with the writer's current content key (a fresh one when
    /// it has none or it is spent); the stored bytes and the wrapped key.
    pub fn seal_blob(
        &self,
        kind: BlobKind,
        id: &Id,
        parts: &[&[u8]],
        current: &mut Option<crypto::ContentKey>,
    ) -> Result<(Vec<u8>, Option<Arc<str>>)> {
        if kind == BlobKind::Refs {
            return Ok((self.write.seal_blob(id, parts)?, None));
        }
        if current.as_ref().is_none_or(|k| k.spent()) {
            let recipients = self.recipients.as_ref().context(
                "backing up into an encrypted repository needs its recipients: give the write key file (--write-key FILE)",
            )?;
            *current = Some(crypto::ContentKey::new(recipients)?);
        }
        let key = current.as_mut().expect("just set");
        Ok((
            key.seal_blob(self.write.aead(), id, parts)?,
            Some(key.wrapped.clone()),
        ))
    }

    /// `flag | payload` of a stored blob.
    fn open_blob(
        &self,
        kind: BlobKind,
        wrapped: Option<&Arc<str>>,
        id: &Id,
        stored: &[u8],
    ) -> Result<Vec<u8>> {
        if kind == BlobKind::Refs {
            return self.write.open_blob(id, stored);
        }
        let identities = self.identities.as_ref().context(NEEDS_IDENTITY)?;
        let wrapped = wrapped.context("its pack names no content key for it")?;
        self.opened
            .open_blob(identities, self.write.aead(), wrapped, id, stored)
    }

    /// Whether blobs of `kind` open with what this process holds.
    pub fn can_open(&self, kind: BlobKind) -> bool {
        kind == BlobKind::Refs || self.identities.is_some()
    }
}

/// Where the write key material, wrapped to the recipients, is stored:
/// named by the hash of its bytes, so that a change of recipients or a
/// rotation writes a new object (the old one is deleted after).
pub const WRITE_KEY_PREFIX: &str = "keys/write-";

/// Stores `writer`'s material wrapped to its recipients; the object's name.
pub fn store_wrapped_material(backend: &dyn Backend, writer: &WriterKeys) -> Result<String> {
    let wrapped = writer.wrapped_material()?;
    let name = format!("{WRITE_KEY_PREFIX}{}", Id::digest(&wrapped));
    backend.write(&name, &wrapped)?;
    Ok(name)
}

pub fn passphrase_object(id: &Id) -> String {
    format!("keys/passphrase-{id}")
}

/// An open format-2 repository.
pub struct Repository {
    backend: Arc<dyn Backend>,
    pub config: Config,
    /// The keys, in an encrypted repository.
    keys: Option<Keys>,
    /// A local directory of index objects read before ([`Self::cache_indexes_in`]).
    index_cache: std::sync::OnceLock<std::path::PathBuf>,
}

impl Repository {
    /// Creates a repository in `backend` (which must hold no `config`).
    pub fn init(backend: Arc<dyn Backend>, immutable_days: Option<u32>) -> Result<Self> {
        Self::init_with(backend, None, immutable_days)
    }

    /// Creates an encrypted repository: the write key material wrapped to
    /// the recipients under `keys/` (and, for a passphrase repository, the
    /// identity sealed under the passphrase), then `config`.
    pub fn init_encrypted(
        backend: Arc<dyn Backend>,
        writer: WriterKeys,
        passphrase: Option<crypto::PassphraseObject>,
        identities: Option<Identities>,
        immutable_days: Option<u32>,
    ) -> Result<Self> {
        let id = writer.write.id();
        store_wrapped_material(&*backend, &writer)?;
        if let Some(object) = &passphrase {
            backend.write(&passphrase_object(&id), &serde_json::to_vec_pretty(object)?)?;
        }
        let params = EncryptionParams {
            scheme: crypto::SCHEME.into(),
            aead: writer.write.aead(),
            write_key_id: id,
        };
        let keys = Keys::new(params, writer.write, Some(writer.recipients), identities);
        Self::init_with(backend, Some(keys), immutable_days)
    }

    /// Creates a repository in `backend` that cuts, names and seals blobs
    /// as the one `source` configures: its key objects first (copied as
    /// they are), then a config of its own with the source's parameters.
    pub fn init_like(
        backend: Arc<dyn Backend>,
        source: &Config,
        key_objects: &[(String, Vec<u8>)],
        immutable_days: Option<u32>,
    ) -> Result<Config> {
        for (name, bytes) in key_objects {
            backend.write(name, bytes)?;
        }
        let mut random = [0u8; 32];
        crate::fsutil::random_bytes(&mut random)?;
        let config = Config {
            id: hex::encode(random),
            created_by: format!("volsnap {}", env!("CARGO_PKG_VERSION")),
            immutable_days,
            ..source.clone()
        };
        Self::create_config(&*backend, &config)?;
        Ok(config)
    }

    fn create_config(backend: &dyn Backend, config: &Config) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(config)?;
        if !backend.create_new(CONFIG, &bytes)? {
            bail!(
                "{} is a repository already (it has a config object)",
                backend.location()
            );
        }
        Ok(())
    }

    fn init_with(
        backend: Arc<dyn Backend>,
        keys: Option<Keys>,
        immutable_days: Option<u32>,
    ) -> Result<Self> {
        let mut random = [0u8; 32];
        crate::fsutil::random_bytes(&mut random)?;
        let config = Config {
            format: FORMAT,
            id: hex::encode(random),
            ids: ID_HASH.into(),
            chunker: ChunkerParams::contents(),
            tree_chunker: ChunkerParams::trees(),
            compression: "zstd".into(),
            encryption: keys
                .as_ref()
                .map(|k| serde_json::to_value(&k.params))
                .transpose()?,
            immutable_days,
            created_by: format!("volsnap {}", env!("CARGO_PKG_VERSION")),
        };
        Self::create_config(&*backend, &config)?;
        Ok(Self {
            backend,
            config,
            keys,
            index_cache: std::sync::OnceLock::new(),
        })
    }

    /// Opens the repository in `backend`, refusing a format this volsnap
    /// does not know, and an encrypted one (see [`Self::open_with`]).
    pub fn open(backend: Arc<dyn Backend>) -> Result<Self> {
        Self::open_with(backend, &|_, backend| {
            bail!(
                "{} is encrypted: give its write key (--write-key FILE) or an identity (--identity FILE)",
                backend.location()
            )
        })
    }

    /// Opens the repository in `backend`; `unlock` finds the keys of an
    /// encrypted one from its public parameters.
    pub fn open_with(
        backend: Arc<dyn Backend>,
        unlock: &dyn Fn(&EncryptionParams, &dyn Backend) -> Result<Keys>,
    ) -> Result<Self> {
        let bytes = backend.read(CONFIG)?;
        let probe: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("the config of {} is not valid JSON", backend.location()))?;
        match probe.get("format").and_then(|f| f.as_u64()) {
            Some(2) => {}
            Some(other) => bail!(
                "{} is a format-{other} repository; this volsnap reads formats 1 and 2: use a newer volsnap",
                backend.location()
            ),
            None => bail!("the config of {} names no format", backend.location()),
        }
        let config: Config = serde_json::from_value(probe)
            .with_context(|| format!("the config of {} is not valid", backend.location()))?;
        config.check().map_err(|e| {
            anyhow::anyhow!(
                "the config of {} cannot be used: {e:#}; volsnap never writes such a config, so it was damaged or tampered with",
                backend.location()
            )
        })?;
        if config.ids != ID_HASH {
            bail!(
                "{} names its objects by {} hashes, which only a development build of volsnap wrote; \
                 initialise a new repository (volsnap init) and back up into it",
                backend.location(),
                config.ids
            );
        }
        let keys = match &config.encryption {
            None => None,
            Some(value) => {
                let params: EncryptionParams = serde_json::from_value(value.clone())
                    .with_context(|| {
                        format!(
                            "{} is encrypted with a scheme this volsnap does not know; use a newer volsnap",
                            backend.location()
                        )
                    })?;
                if params.scheme != crypto::SCHEME {
                    bail!(
                        "{} is encrypted with scheme {:?}, which this volsnap does not know; use a newer volsnap",
                        backend.location(),
                        params.scheme
                    );
                }
                let keys = unlock(&params, &*backend)?;
                if !keys.write.ids().contains(&params.write_key_id) {
                    bail!(
                        "the write key given is not {}'s (its id is {}, the repository's {})",
                        backend.location(),
                        &keys.write.id().hex()[..16],
                        &params.write_key_id.hex()[..16]
                    );
                }
                Some(keys)
            }
        };
        Ok(Self {
            backend,
            config,
            keys,
            index_cache: std::sync::OnceLock::new(),
        })
    }

    /// The keys of an encrypted repository.
    pub fn keys(&self) -> Option<&Keys> {
        self.keys.as_ref()
    }

    /// Whether file contents and names can be read: always in a plain
    /// repository, with an identity in an encrypted one.
    pub fn can_read_contents(&self) -> bool {
        self.keys.as_ref().is_none_or(|k| k.identities.is_some())
    }

    /// Fails with what to do when contents cannot be read here.
    pub fn require_contents(&self) -> Result<()> {
        if self.can_read_contents() {
            Ok(())
        } else {
            Err(crate::usage!(
                "{} is encrypted and this host holds no identity for it. {NEEDS_IDENTITY}",
                self.backend.location()
            ))
        }
    }

    /// A blob's id: BLAKE3 of its plaintext, keyed when encrypted.
    pub fn blob_id(&self, plain: &[u8]) -> Id {
        match &self.keys {
            Some(keys) => keys.write.blob_id(plain),
            None => Id::digest(plain),
        }
    }

    /// The chunkers' seed: 0, or the repository's secret one.
    pub fn chunker_seed(&self) -> u64 {
        self.keys.as_ref().map_or(0, |k| k.write.chunker_seed())
    }

    /// The write key sealing headers and objects, when encrypted.
    pub fn sealing(&self) -> Option<&KeyRing> {
        self.keys.as_ref().map(|k| &*k.write)
    }

    /// The same, for holders that outlive this (notes of a backup).
    pub fn sealing_shared(&self) -> Option<Arc<KeyRing>> {
        self.keys.as_ref().map(|k| k.write.clone())
    }

    /// `bytes` as stored under `dir/`: sealed when encrypted.
    fn seal(&self, dir: &str, bytes: Vec<u8>) -> Result<Vec<u8>> {
        match &self.keys {
            Some(keys) => keys.write.seal(dir, &bytes),
            None => Ok(bytes),
        }
    }

    /// Parses an object of `dir/` from its stored bytes.
    fn parse_object<T: serde::de::DeserializeOwned>(
        &self,
        dir: &str,
        name: &str,
        bytes: &[u8],
    ) -> Result<T> {
        let opened;
        let text = match &self.keys {
            Some(keys) => {
                opened = keys
                    .write
                    .open(dir, bytes)
                    .with_context(|| format!("{name} cannot be opened"))?;
                &opened[..]
            }
            None => bytes,
        };
        serde_json::from_slice(text).with_context(|| format!("{name} is not valid"))
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Reads `name` and checks that its bytes hash to `id`.
    fn read_checked(&self, name: &str, id: &Id) -> Result<Vec<u8>> {
        let bytes = self.backend.read(name)?;
        if Id::digest(&bytes) != *id {
            bail!(
                "{name} in {} does not match its name (damaged or tampered with)",
                self.backend.location()
            );
        }
        Ok(bytes)
    }

    /// Writes a content-addressed JSON object under `dir/<id>` (sealed
    /// when encrypted); its id.
    fn write_json<T: serde::Serialize>(&self, dir: &str, value: &T) -> Result<Id> {
        let bytes = self.seal(dir, serde_json::to_vec(value)?)?;
        let id = Id::digest(&bytes);
        self.backend.write(&format!("{dir}/{id}"), &bytes)?;
        Ok(id)
    }

    /// The ids of the objects under `dir/` whose names are ids.
    fn ids_in(&self, dir: &str) -> Result<Vec<Id>> {
        Ok(self
            .backend
            .list(dir)?
            .into_iter()
            .filter_map(|o| Id::parse(o.name.rsplit('/').next()?).ok())
            .collect())
    }

    /// Object Lock retention of an immutable repository, in days.
    pub fn immutable_days(&self) -> Option<u32> {
        self.config.immutable_days
    }

    /// In an immutable repository, retains the named objects for its
    /// retention period from now (by the storage's clock), a few requests
    /// at a time; does nothing in other repositories.
    pub fn retain(&self, names: &[String]) -> Result<()> {
        let Some(days) = self.immutable_days() else {
            return Ok(());
        };
        let until = self.backend.now()? + std::time::Duration::from_secs(u64::from(days) * 86_400);
        let next = std::sync::Mutex::new(names.iter());
        let failed: std::sync::Mutex<Option<anyhow::Error>> = std::sync::Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..8.min(names.len()) {
                scope.spawn(|| loop {
                    let Some(name) = next.lock().ok().and_then(|mut it| it.next()) else {
                        return;
                    };
                    if let Err(e) = self.backend.retain(name, until) {
                        if let Ok(mut slot) = failed.lock() {
                            slot.get_or_insert(e);
                        }
                        return;
                    }
                });
            }
        });
        match failed.into_inner().ok().flatten() {
            Some(e) => Err(e.context(format!(
                "cannot retain the objects of a new backup in the immutable repository {}",
                self.backend.location()
            ))),
            None => Ok(()),
        }
    }

    /// What a new backup (or a copied one) retains with its packs: the
    /// objects every backup needs, config and keys, whose retention each
    /// backup renews.
    pub fn retained_with_every_backup(&self) -> Result<Vec<String>> {
        let mut names = vec![CONFIG.to_string()];
        if self.immutable_days().is_some() {
            names.extend(self.backend.list("keys")?.into_iter().map(|o| o.name));
        }
        Ok(names)
    }

    /// Until when an object of an immutable repository may not be
    /// deleted, when that is still in the future.
    pub fn retained_until(&self, name: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        if self.immutable_days().is_none() {
            return Ok(None);
        }
        let now = self.backend.now()?;
        Ok(self
            .backend
            .retained_until(name)?
            .filter(|until| *until > now)
            .map(Into::into))
    }

    pub fn pack_name(id: &Id) -> String {
        let hex = id.hex();
        format!("data/{}/{hex}", &hex[..2])
    }

    /// Stores a finished pack.
    pub fn save_pack(&self, id: &Id, bytes: &[u8]) -> Result<()> {
        self.backend.write(&Self::pack_name(id), bytes)
    }

    /// Stores an index object; its id.
    /// In an immutable repository it is retained at once: an index names
    /// where every blob is, and a backup is not read without it.
    pub fn save_index(&self, file: &IndexFile) -> Result<Id> {
        let id = self.write_json("index", file)?;
        self.retain(&[format!("index/{id}")])?;
        Ok(id)
    }

    /// Retains what a backup about to be committed needs (immutable
    /// repositories): every pack it references, and config and keys.
    pub fn retain_for_commit(&self, packs: &[Id]) -> Result<()> {
        if self.immutable_days().is_none() {
            return Ok(());
        }
        let mut names: Vec<String> = packs.iter().map(Self::pack_name).collect();
        names.extend(self.retained_with_every_backup()?);
        self.retain(&names)
    }

    /// Stores a commit object (retained, in an immutable repository).
    fn store_commit(&self, commit: &Commit) -> Result<Id> {
        let id = self.write_json("snapshots", commit)?;
        self.retain(&[format!("snapshots/{id}")])?;
        Ok(id)
    }

    /// Every index object, checked, and their union, leaving out packs
    /// that are not in the repository: a blob stored again after its pack
    /// was lost is then found in its new pack, never in the lost one.
    ///
    /// A prune replaces an index by writing the one that supersedes it
    /// before deleting it: an index that vanishes between the listing and
    /// its read means a new listing names its replacement, so the load
    /// starts over (prunes take no lock that keeps backups out).
    pub fn load_index(&self) -> Result<Index> {
        let mut attempt = 0;
        loop {
            match self.try_load_index() {
                Err(e) if crate::backend::is_missing(&e) && attempt < 5 => {
                    attempt += 1;
                    tracing::debug!("an index vanished while read (a concurrent prune): {e:#}");
                }
                other => return other,
            }
        }
    }

    fn try_load_index(&self) -> Result<Index> {
        let present = self.pack_ids()?;
        let mut builder = index::IndexBuilder::default();
        let ids = self.index_ids()?;
        if let Some(dir) = self.index_cache.get() {
            forget_unlisted(dir, &ids);
        }
        let mut quarantined = Vec::new();
        for id in ids {
            // One damaged or crafted index object costs what it describes,
            // not the whole repository: it is set aside and named.
            let added = self.read_index(&id).and_then(|mut file| {
                file.packs.retain(|p| present.contains(&p.id));
                builder.add(id, file)
            });
            match added {
                Ok(()) => {}
                Err(e) if crate::backend::is_missing(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        "index {id} of {} is ignored: {e:#} (damaged or tampered with; what it describes counts as absent)",
                        self.backend.location()
                    );
                    quarantined.push((id, format!("{e:#}")));
                }
            }
        }
        let mut index = builder.finish();
        index.quarantined = quarantined;
        Ok(index)
    }

    /// The ids of the index objects, from a listing of `index/`.
    pub fn index_ids(&self) -> Result<Vec<Id>> {
        self.ids_in("index")
    }

    /// Keeps the index objects this process reads in `dir` and reads them
    /// from there next time (a repository on a server: an unchanged backup
    /// then fetches only listings and new indexes). Safe because an index
    /// never changes under its name, and a cached copy is used only if it
    /// hashes to its id and the listing of `index/` still names it.
    pub fn cache_indexes_in(&self, dir: std::path::PathBuf) {
        let _ = self.index_cache.set(dir);
    }

    /// One index object, checked against its name.
    pub fn read_index(&self, id: &Id) -> Result<IndexFile> {
        let name = format!("index/{id}");
        let bytes = match self.index_cache.get() {
            Some(dir) => {
                let path = dir.join(id.hex());
                match std::fs::read(&path) {
                    Ok(bytes) if Id::digest(&bytes) == *id => bytes,
                    _ => {
                        let bytes = self.read_checked(&name, id)?;
                        if let Err(e) = crate::fsutil::replace_file(&path, &bytes) {
                            tracing::debug!("cannot cache index {id}: {e:#}");
                        }
                        bytes
                    }
                }
            }
            None => self.read_checked(&name, id)?,
        };
        self.parse_object("index", &format!("index {id}"), &bytes)
    }

    /// The ids of the packs present, from a listing of `data/`.
    pub fn pack_ids(&self) -> Result<std::collections::HashSet<Id>> {
        Ok(self.ids_in("data")?.into_iter().collect())
    }

    /// Stores the commit object of a backup: from now on it exists.
    pub fn save_commit(&self, commit: &Commit) -> Result<Id> {
        self.retain_for_commit(&commit.packs)?;
        self.store_commit(commit)
    }

    /// Every commit object (checked against its name), oldest first. One
    /// whose fields are not what volsnap writes (an id not of its form,
    /// control characters in a host, selection or volume name) is left
    /// out and named: such strings name files and reach terminals.
    pub fn commits(&self) -> Result<Vec<(Id, Commit)>> {
        self.read_commits(true)
    }

    /// Every commit object, whatever its fields say: what garbage
    /// collection keeps (it never deletes what any commit might use).
    pub fn commits_unchecked(&self) -> Result<Vec<(Id, Commit)>> {
        self.read_commits(false)
    }

    fn read_commits(&self, checked: bool) -> Result<Vec<(Id, Commit)>> {
        let mut commits = Vec::new();
        let mut unopened: Option<anyhow::Error> = None;
        for id in self.ids_in("snapshots")? {
            let bytes = match self.read_checked(&format!("snapshots/{id}"), &id) {
                // Deleted by a concurrent prune's retention since the listing.
                Err(e) if crate::backend::is_missing(&e) => continue,
                other => other?,
            };
            // One sealed with a write key this host lacks is an error:
            // most often its key file is stale after a rotation, which the
            // operator must hear of. One that names this host's key but
            // does not open (junk any PUT credential can plant) is set
            // aside by readers while others open, and named; garbage
            // collection, which must know every commit, refuses. One that
            // opens but is not a commit is set aside by readers.
            let name = format!("backup object {id}");
            let opened = match &self.keys {
                Some(keys) => match keys.write.open("snapshots", &bytes) {
                    Ok(opened) => opened,
                    Err(e) if checked && !keys.write.sealed_with_another_key(&bytes) => {
                        let e = e.context(format!("{name} cannot be opened"));
                        tracing::warn!("{} of {} is ignored: {e:#}", name, self.backend.location());
                        unopened.get_or_insert(e);
                        continue;
                    }
                    Err(e) => return Err(e.context(format!("{name} cannot be opened"))),
                },
                None => bytes,
            };
            let parsed: Result<Commit> =
                serde_json::from_slice(&opened).with_context(|| format!("{name} is not valid"));
            let commit = match parsed {
                Ok(commit) if commit.format == FORMAT => commit,
                // Garbage collection must know every commit: it refuses.
                Err(e) if !checked => return Err(e),
                Ok(commit) if !checked => {
                    bail!("backup object {id} says format {}", commit.format)
                }
                // Readers set one unreadable object aside rather than stop.
                other => {
                    let why = other.map_or_else(
                        |e| format!("{e:#}"),
                        |c| format!("it says format {}", c.format),
                    );
                    tracing::warn!(
                        "backup object {id} of {} is ignored: {why}",
                        self.backend.location()
                    );
                    continue;
                }
            };
            if checked {
                if let Err(e) = commit.check() {
                    tracing::warn!(
                        "backup object {id} of {} is ignored: {e:#} (volsnap never writes such a backup: damaged or tampered with)",
                        self.backend.location()
                    );
                    continue;
                }
            }
            commits.push((id, commit));
        }
        if let (Some(e), true) = (unopened, commits.is_empty()) {
            return Err(e);
        }
        commits.sort_by(|a, b| {
            a.1.started_at
                .cmp(&b.1.started_at)
                .then(a.1.id.cmp(&b.1.id))
        });
        Ok(commits)
    }

    /// Every mark (checked against its name), with its object's time.
    pub fn marks(&self) -> Result<Vec<(Id, std::time::SystemTime, objects::Mark)>> {
        let mut marks = Vec::new();
        for object in self.backend.list("marks")? {
            let Some(id) = object
                .name
                .rsplit('/')
                .next()
                .and_then(|n| Id::parse(n).ok())
            else {
                continue;
            };
            // A mark a concurrent prune is done with: its packs are
            // deleted already, and gone from the listing of data/ that
            // follows (see ChunkedBackup::begin).
            let bytes = match self.read_checked(&object.name, &id) {
                Err(e) if crate::backend::is_missing(&e) => continue,
                other => other?,
            };
            let mark: objects::Mark = self.parse_object("marks", &format!("mark {id}"), &bytes)?;
            marks.push((id, object.modified, mark));
        }
        Ok(marks)
    }

    /// The packs some mark condemns: a backup does not deduplicate
    /// against them.
    pub fn condemned(&self) -> Result<std::collections::HashSet<Id>> {
        Ok(self
            .marks()?
            .into_iter()
            .flat_map(|(_, _, m)| m.condemned)
            .collect())
    }

    /// Writes a mark (prune).
    pub fn save_mark(&self, mark: &objects::Mark) -> Result<Id> {
        self.write_json("marks", mark)
    }

    /// Takes deleted packs out of the indexes: an index left with none of
    /// its packs is deleted; one left with some is replaced by a new index
    /// that supersedes it (written first, so no reader ever misses a live
    /// pack), then deleted.
    pub fn drop_from_indexes(&self, gone: &std::collections::HashSet<Id>) -> Result<()> {
        if gone.is_empty() {
            return Ok(());
        }
        for (id, file) in self.live_index_files()? {
            if !file.packs.iter().any(|p| gone.contains(&p.id)) {
                continue;
            }
            let kept: Vec<_> = file
                .packs
                .into_iter()
                .filter(|p| !gone.contains(&p.id))
                .collect();
            // The replacement supersedes what this one did too: an index
            // Object Lock keeps from being deleted must stay superseded
            // after its successor is replaced in turn.
            let name = format!("index/{id}");
            let retained = self.retained_until(&name)?.is_some();
            let mut supersedes = file.supersedes;
            supersedes.push(id);
            if !kept.is_empty() || retained || supersedes.len() > 1 {
                self.save_index(&IndexFile {
                    packs: kept,
                    supersedes,
                })?;
            }
            if !retained {
                self.backend.delete(&name)?;
            }
        }
        Ok(())
    }

    /// Every index object that no other index object supersedes.
    pub fn live_index_files(&self) -> Result<Vec<(Id, IndexFile)>> {
        let mut files = Vec::new();
        for id in self.index_ids()? {
            match self.read_index(&id) {
                Ok(file) => files.push((id, file)),
                Err(e) if crate::backend::is_missing(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let superseded: std::collections::HashSet<Id> = files
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().copied())
            .collect();
        files.retain(|(id, _)| !superseded.contains(id));
        Ok(files)
    }

    /// Deletes a commit object (prune; its packs go later), unless Object
    /// Lock retains it: then the date it may go.
    pub fn delete_commit(&self, id: &Id) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        let name = format!("snapshots/{id}");
        if let Some(until) = self.retained_until(&name)? {
            return Ok(Some(until));
        }
        self.backend.delete(&name)?;
        Ok(None)
    }

    /// A reader of many blobs in about the order they were stored (a
    /// restore): on a server, one request fetches a window of the pack.
    pub fn blob_reader<'r>(&'r self, index: &'r Index) -> Result<BlobReader<'r>> {
        let sizes = if self.backend.is_remote() {
            self.backend
                .list("data")?
                .into_iter()
                .filter_map(|o| Some((Id::parse(o.name.rsplit('/').next()?).ok()?, o.size)))
                .collect()
        } else {
            HashMap::new()
        };
        Ok(BlobReader {
            repo: self,
            index,
            sizes,
            windows: std::collections::VecDeque::new(),
        })
    }

    /// The plaintext of a blob, fetched from its pack and checked.
    pub fn read_blob(&self, index: &Index, blob: &Id) -> Result<Vec<u8>> {
        let at = index
            .get(blob)
            .with_context(|| format!("blob {blob} is in no pack of the index"))?;
        let pack = index.pack_id(&at);
        let stored = self
            .backend
            .read_range(&Self::pack_name(&pack), at.offset, at.length)
            .with_context(|| format!("cannot read blob {blob} from pack {pack}"))?;
        self.open_stored(index, blob, &at, &pack, &stored)
    }

    /// The plaintext of `blob` from its `stored` bytes, opened and checked.
    /// In an encrypted repository a copy that does not open (its content
    /// keys were wrapped to recipients other than this identity's) gives
    /// way to another copy that does.
    fn open_stored(
        &self,
        index: &Index,
        blob: &Id,
        at: &index::Location,
        pack: &Id,
        stored: &[u8],
    ) -> Result<Vec<u8>> {
        let first = self.open_copy(index, blob, at, pack, stored);
        if first.is_ok() || self.keys.is_none() {
            return first;
        }
        for other in index.copies(blob).filter(|l| l != at) {
            let other_pack = index.pack_id(&other);
            let opened = self
                .backend
                .read_range(&Self::pack_name(&other_pack), other.offset, other.length)
                .and_then(|bytes| self.open_copy(index, blob, &other, &other_pack, &bytes));
            if opened.is_ok() {
                return opened;
            }
        }
        first
    }

    fn open_copy(
        &self,
        index: &Index,
        blob: &Id,
        at: &index::Location,
        pack: &Id,
        stored: &[u8],
    ) -> Result<Vec<u8>> {
        self.open_entry(
            &BlobEntry {
                id: *blob,
                kind: at.kind,
                offset: at.offset,
                length: at.length,
                raw_length: at.raw_length,
                key: at.key,
            },
            index.content_key(at),
            stored,
        )
        .with_context(|| format!("in pack {pack}"))
    }

    /// Checks a blob of a whole pack as far as this host can: opened and
    /// checked against its id, unless it is a data or tree blob of an
    /// encrypted repository and this host holds no identity (then the
    /// pack's bytes, checked against its name, are all there is to check).
    pub fn check_packed_blob(
        &self,
        header: &PackHeader,
        entry: &BlobEntry,
        stored: &[u8],
    ) -> Result<()> {
        if self.keys.as_ref().is_none_or(|k| k.can_open(entry.kind)) {
            self.open_entry(entry, header.wrapped_key(entry).as_ref(), stored)?;
        }
        Ok(())
    }

    /// The plaintext of the blob `entry` describes, from its stored bytes:
    /// opened with its content key (`wrapped`) or the write key when
    /// encrypted, decompressed, checked against its id.
    pub fn open_entry(
        &self,
        entry: &BlobEntry,
        wrapped: Option<&Arc<str>>,
        stored: &[u8],
    ) -> Result<Vec<u8>> {
        let opened;
        let stored = match &self.keys {
            Some(keys) => {
                opened = keys
                    .open_blob(entry.kind, wrapped, &entry.id, stored)
                    .with_context(|| format!("blob {}", entry.id))?;
                &opened[..]
            }
            None => stored,
        };
        open_blob(entry, stored, &|plain| self.blob_id(plain))
    }

    /// The volume records of a backup (format 1's, without entries).
    pub fn volume_records(
        &self,
        index: &Index,
        commit: &Commit,
    ) -> Result<Vec<crate::repo::manifest::VolumeRecord>> {
        let mut records = Vec::new();
        for volume in &commit.volumes {
            let mut reader =
                tree::TreeReader::new(self, index, &volume.record, volume.record_sha256);
            let record: crate::repo::manifest::VolumeRecord =
                reader.next_line()?.with_context(|| {
                    format!("backup {}: volume {} has no record", commit.id, volume.name)
                })?;
            if reader.next_line::<serde_json::Value>()?.is_some() || record.name != volume.name {
                bail!(
                    "backup {}: the record of volume {} is not valid",
                    commit.id,
                    volume.name
                );
            }
            records.push(record);
        }
        Ok(records)
    }

    /// A whole pack, checked against its name, and its header.
    pub fn read_pack(&self, id: &Id) -> Result<(Vec<u8>, PackHeader)> {
        let bytes = self.read_checked(&Self::pack_name(id), id)?;
        let header =
            pack::parse_header(&bytes, self.sealing()).with_context(|| format!("pack {id}"))?;
        Ok((bytes, header))
    }
}

/// How much of a pack one read fetches on a server, and how many such
/// windows a reader keeps (restores read blobs mostly in stored order).
const WINDOW: u64 = 8 << 20;
const WINDOWS: usize = 4;

/// See [`Repository::blob_reader`].
pub struct BlobReader<'r> {
    repo: &'r Repository,
    index: &'r Index,
    /// Pack sizes from a listing (servers only; locally every read is direct).
    sizes: HashMap<Id, u64>,
    /// Recently fetched windows: pack, offset, bytes.
    windows: std::collections::VecDeque<(Id, u64, Vec<u8>)>,
}

impl BlobReader<'_> {
    pub fn read(&mut self, blob: &Id) -> Result<Vec<u8>> {
        let at = self
            .index
            .get(blob)
            .with_context(|| format!("blob {blob} is in no pack of the index"))?;
        let pack = self.index.pack_id(&at);
        let Some(&size) = self.sizes.get(&pack) else {
            return self.repo.read_blob(self.index, blob);
        };
        let (start, end) = (at.offset, at.offset + at.length);
        let cached = self
            .windows
            .iter()
            .position(|(p, o, b)| *p == pack && *o <= start && end <= o + b.len() as u64);
        let slot = match cached {
            Some(slot) => slot,
            None => {
                let until = size
                    .min(start.saturating_add(WINDOW.max(at.length)))
                    .max(end);
                let bytes = self
                    .repo
                    .backend
                    .read_range(&Repository::pack_name(&pack), start, until - start)
                    .with_context(|| format!("cannot read blob {blob} from pack {pack}"))?;
                if self.windows.len() == WINDOWS {
                    self.windows.pop_front();
                }
                self.windows.push_back((pack, start, bytes));
                self.windows.len() - 1
            }
        };
        let (_, offset, bytes) = &self.windows[slot];
        let from = (start - offset) as usize;
        // The index's word on a pack's length is checked by what arrived.
        let stored = bytes
            .get(from..from + at.length as usize)
            .with_context(|| format!("pack {pack} is shorter than its index says"))?;
        self.repo.open_stored(self.index, blob, &at, &pack, stored)
    }
}

/// A range of one pack holding blobs a reading needs next.
struct Window {
    pack: Id,
    start: u64,
    end: u64,
    /// Their plaintext size: bounds what a fetched window holds in memory.
    raw: u64,
    blobs: Vec<(Id, index::Location)>,
}

/// Blobs a window may skip between two it holds before a new one starts.
const WINDOW_GAP: u64 = 1 << 20;
/// The plaintext a window may hold.
const WINDOW_RAW: u64 = 16 << 20;

impl Window {
    fn start(pack: Id, id: Id, at: index::Location) -> Self {
        Window {
            pack,
            start: at.offset,
            end: at.offset + at.length,
            raw: at.raw_length,
            blobs: vec![(id, at)],
        }
    }

    /// Takes the blob if it lies near: workers fill packs in the order
    /// they finish compressing, so neighbours in a tree may sit in either
    /// order within a pack.
    fn take(&mut self, pack: Id, id: Id, at: index::Location) -> bool {
        let (start, end) = (at.offset, at.offset + at.length);
        let near = self.pack == pack
            && start <= self.end + WINDOW_GAP
            && end + WINDOW_GAP >= self.start
            && end.max(self.end) - start.min(self.start) <= WINDOW.max(at.length)
            && self.raw + at.raw_length <= WINDOW_RAW;
        if near {
            self.start = self.start.min(start);
            self.end = self.end.max(end);
            self.raw += at.raw_length;
            self.blobs.push((id, at));
        }
        near
    }

    /// Fetches the range and opens every blob in it, in order; a failure
    /// ends the list.
    fn fetch(&self, repo: &Repository, index: &Index) -> Vec<Result<Vec<u8>>> {
        let stored = match repo
            .backend
            .read_range(
                &Repository::pack_name(&self.pack),
                self.start,
                self.end - self.start,
            )
            .with_context(|| format!("cannot read pack {}", self.pack))
        {
            Ok(stored) => stored,
            Err(e) => return vec![Err(e)],
        };
        let mut out = Vec::with_capacity(self.blobs.len());
        for (blob, at) in &self.blobs {
            let from = (at.offset - self.start) as usize;
            let plain = match stored.get(from..from + at.length as usize) {
                Some(bytes) => repo.open_stored(index, blob, at, &self.pack, bytes),
                None => Err(anyhow::anyhow!(
                    "pack {} is shorter than its index says",
                    self.pack
                )),
            };
            let failed = plain.is_err();
            out.push(plain);
            if failed {
                break;
            }
        }
        out
    }
}

type Opened = Vec<Result<Vec<u8>>>;

impl Repository {
    /// Reads the blobs `ids` yields, in that order, handing each (checked)
    /// to `sink` until it returns false or a read fails (handed over too).
    /// Nearby blobs of one pack are fetched as one range of at most
    /// [`WINDOW`], and fetched, decompressed and checked on several threads
    /// at once (six on a server, where each request waits a round trip;
    /// two locally); memory stays bounded by the windows in flight.
    pub fn read_blobs_in_order(
        &self,
        index: &Index,
        ids: impl Iterator<Item = Id> + Send,
        sink: &mut dyn FnMut(Result<Vec<u8>>) -> bool,
    ) {
        use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
        let parallel = if self.backend.is_remote() { 6 } else { 2 };
        let (jobs, work) = sync_channel::<(Window, SyncSender<Opened>)>(parallel);
        let work = std::sync::Mutex::new(work);
        let work = &work;
        std::thread::scope(|scope| {
            for _ in 0..parallel {
                scope.spawn(move || loop {
                    let job = match work.lock() {
                        Ok(work) => work.recv(),
                        Err(_) => return,
                    };
                    let Ok((window, done)) = job else {
                        return;
                    };
                    let _ = done.send(window.fetch(self, index));
                });
            }
            let (queue, planned): (SyncSender<Receiver<Opened>>, Receiver<Receiver<Opened>>) =
                sync_channel(parallel + 2);
            scope.spawn(move || {
                let dispatch = |w: Window| -> bool {
                    let (done, result) = sync_channel(1);
                    jobs.send((w, done)).is_ok() && queue.send(result).is_ok()
                };
                let mut open: Option<Window> = None;
                for id in ids {
                    let Some(at) = index.get(&id) else {
                        if let Some(w) = open.take() {
                            dispatch(w);
                        }
                        let (done, result) = sync_channel(1);
                        let _ = done.send(vec![Err(anyhow::anyhow!(
                            "blob {id} is in no pack of the index"
                        ))]);
                        let _ = queue.send(result);
                        return;
                    };
                    let pack = index.pack_id(&at);
                    if open.as_mut().is_some_and(|w| w.take(pack, id, at)) {
                        continue;
                    }
                    if let Some(w) = open.replace(Window::start(pack, id, at)) {
                        if !dispatch(w) {
                            return;
                        }
                    }
                }
                if let Some(w) = open.take() {
                    dispatch(w);
                }
            });
            'windows: for result in planned.iter() {
                let Ok(opened) = result.recv() else {
                    break;
                };
                for plain in opened {
                    let failed = plain.is_err();
                    if !sink(plain) || failed {
                        break 'windows;
                    }
                }
            }
            // The planner and the fetchers stop once nobody takes their work.
            drop(planned);
        });
    }
}

/// Removes cached index objects the repository no longer lists (a prune
/// superseded them).
fn forget_unlisted(dir: &std::path::Path, listed: &[Id]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let listed: std::collections::HashSet<String> = listed.iter().map(Id::hex).collect();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !listed.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;
    use pack::{BlobKind, PackWriter, StoredBlob};

    #[test]
    fn objects_written_are_read_back_checked() {
        let dir = tempfile::tempdir().unwrap();
        let open = || -> Arc<dyn Backend> { Arc::new(LocalBackend::open(dir.path()).unwrap()) };
        let repo = Repository::init(open(), None).unwrap();
        assert!(Repository::init(open(), None).is_err(), "a second init");
        let repo2 = Repository::open(open()).unwrap();
        assert_eq!(repo2.config.id, repo.config.id);

        let blobs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + i as usize]).collect();
        let mut writer = PackWriter::new(BlobKind::Data);
        for b in &blobs {
            writer.add(StoredBlob::new(Id::digest(b), BlobKind::Data, b, 1).unwrap());
        }
        let (pack_id, bytes, header) = writer.finish(None).unwrap();
        repo.save_pack(&pack_id, &bytes).unwrap();
        repo.save_index(&IndexFile {
            packs: vec![index::IndexedPack {
                id: pack_id,
                size: bytes.len() as u64,
                blobs: header.blobs.clone(),
                keys: Vec::new(),
                recipients: None,
            }],
            supersedes: Vec::new(),
        })
        .unwrap();
        let index = repo2.load_index().unwrap();
        assert_eq!(index.blob_count(), 5);
        for b in &blobs {
            assert_eq!(&repo2.read_blob(&index, &Id::digest(b)).unwrap(), b);
        }
        assert!(repo2.pack_ids().unwrap().contains(&pack_id));
        let (_, parsed) = repo2.read_pack(&pack_id).unwrap();
        assert_eq!(parsed.blobs, header.blobs);

        // A pack altered on disk is caught, by name and by blob id.
        let path = dir.path().join(Repository::pack_name(&pack_id));
        let mut damaged = std::fs::read(&path).unwrap();
        damaged[3] ^= 0x40;
        std::fs::write(&path, &damaged).unwrap();
        assert!(repo2.read_pack(&pack_id).is_err());
        assert!(repo2.read_blob(&index, &Id::digest(&blobs[0])).is_err());

        // An unknown format is refused with the version named.
        std::fs::write(dir.path().join("config"), br#"{"format": 3}"#).unwrap();
        let err = Repository::open(open()).err().unwrap();
        assert!(format!("{err:#}").contains("format-3"), "{err:#}");
    }
}
