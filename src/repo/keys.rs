//! Where this host's keys for encrypted repositories come from: the
//! operator's flags, environment and job configuration, and the state
//! directory, never the repository (docs/FORMAT.md, "Encryption").
//!
//! A *write key file* (0600) holds the write key material and the
//! recipients; `volsnap init` writes it to `<state dir>/keys/<key id>.key`,
//! where every command looks for it by the id the repository's config
//! names. An *identity file* (age's) opens contents. A *passphrase file*
//! opens a passphrase repository, whose identity is sealed in it.

use super::v2::crypto::{
    Aead, Identities, KeyRing, PassphraseObject, Recipients, WriteKey, WriterKeys,
};
use super::v2::{passphrase_object, store_wrapped_material, Keys, Repository, WRITE_KEY_PREFIX};
use crate::backend::Backend;
use crate::repo::v2::crypto::EncryptionParams;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What the operator named for opening encrypted repositories.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    pub identity: Option<PathBuf>,
    pub write_key: Option<PathBuf>,
    pub passphrase: Option<PathBuf>,
    /// Where write key files are looked up by id (`<state dir>/keys`).
    pub key_dir: Option<PathBuf>,
}

static DEFAULT: Mutex<Option<KeySources>> = Mutex::new(None);
/// The write keys of the repositories this process opened (`None`: not
/// encrypted), for notes written beside their backups.
static OPENED: Mutex<Option<HashMap<String, Option<Arc<KeyRing>>>>> = Mutex::new(None);
static PER_REPO: Mutex<Option<HashMap<String, KeySources>>> = Mutex::new(None);

/// Sets what every repository opened by this process uses (the command
/// line's `--identity`, `--write-key`, `--passphrase-file`).
pub fn set_default(sources: KeySources) {
    if let Ok(mut d) = DEFAULT.lock() {
        *d = Some(sources);
    }
}

/// Where write key files live: `<state_dir>/keys`.
pub fn key_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("keys")
}

/// Sets the state directory whose `keys/` holds write key files, for
/// commands that take `--state-dir`.
pub fn set_state_dir(state_dir: &Path) {
    if let Ok(mut d) = DEFAULT.lock() {
        d.get_or_insert_with(KeySources::default).key_dir = Some(key_dir(state_dir));
    }
    if let Ok(mut d) = STATE_DIR.lock() {
        *d = Some(state_dir.to_path_buf());
    }
}

static STATE_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// This host's state directory: `--state-dir`, else `VOLSNAP_STATE_DIR`,
/// else the default.
pub fn state_dir() -> PathBuf {
    STATE_DIR
        .lock()
        .ok()
        .and_then(|d| d.clone())
        .or_else(|| std::env::var_os("VOLSNAP_STATE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(crate::snapshots::DEFAULT_STATE_DIR))
}

/// The name a repository is pinned under: a local directory resolved (so
/// that two spellings of it are one), a server's address as given.
pub fn pin_location(root: &Path) -> String {
    if crate::backend::is_remote(root) {
        root.display().to_string()
    } else {
        root.canonicalize()
            .unwrap_or_else(|_| root.to_path_buf())
            .display()
            .to_string()
    }
}

/// A config read directly (the key commands read no index): checked, and
/// compared with what this host pinned, as [`open`] does.
fn checked_and_pinned(root: &Path, config: &crate::repo::v2::objects::Config) -> Result<()> {
    config
        .check()
        .with_context(|| format!("the config of {} cannot be used", root.display()))?;
    super::pin::Pins::in_state_dir(&state_dir()).check(&pin_location(root), config)
}

/// Records what the repository just created at `root` is (`init` on this
/// host: it replaces whatever was pinned for that place before).
pub fn pin_created(root: &Path, config: &crate::repo::v2::objects::Config) -> Result<()> {
    let location = pin_location(root);
    super::pin::Pins::in_state_dir(&state_dir()).put(&super::pin::Pinned::of(&location, config)?)
}

/// Sets what one repository uses (a job's configuration), over the default.
pub fn set_for_repo(repo: &Path, sources: KeySources) {
    if let Ok(mut map) = PER_REPO.lock() {
        map.get_or_insert_with(HashMap::new)
            .insert(repo.display().to_string(), sources);
    }
}

fn sources_for(repo: &Path) -> KeySources {
    let default = DEFAULT
        .lock()
        .ok()
        .and_then(|d| d.clone())
        .unwrap_or_default();
    let own = PER_REPO
        .lock()
        .ok()
        .and_then(|m| m.as_ref()?.get(&repo.display().to_string()).cloned());
    match own {
        None => default,
        Some(own) => KeySources {
            identity: own.identity.or(default.identity),
            write_key: own.write_key.or(default.write_key),
            passphrase: own.passphrase.or(default.passphrase),
            key_dir: own.key_dir.or(default.key_dir),
        },
    }
}

fn default_key_dir(sources: &KeySources) -> PathBuf {
    sources.key_dir.clone().unwrap_or_else(|| {
        let state = std::env::var_os("VOLSNAP_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(crate::snapshots::DEFAULT_STATE_DIR));
        key_dir(&state)
    })
}

fn key_file_name(dir: &Path, id: &crate::repo::v2::id::Id) -> PathBuf {
    dir.join(format!("{}.key", &id.hex()[..16]))
}

/// Opens the repository at `root` with the keys this host holds for it.
pub fn open(backend: Arc<dyn Backend>, root: &Path) -> Result<Repository> {
    let sources = sources_for(root);
    let pins = super::pin::Pins::in_state_dir(&state_dir());
    let location = pin_location(root);
    let known = pins.generations(&location)?;
    let repo = Repository::open_with(backend, &|params, backend| {
        unlock(&sources, params, backend, &known)
    })?;
    if repo.keys().is_none() {
        // Keys named for a plain repository: either the wrong repository,
        // or an encrypted one whose config was rewritten to say plain.
        let named: Vec<String> = [
            ("a write key", &sources.write_key),
            ("an identity", &sources.identity),
            ("a passphrase file", &sources.passphrase),
        ]
        .iter()
        .filter_map(|(what, file)| file.as_ref().map(|f| format!("{what} ({})", f.display())))
        .collect();
        if !named.is_empty() {
            return Err(crate::usage!(
                "{} is not encrypted, but {} was given for it: refusing, since an encrypted repository whose config was rewritten in storage would look just like this, and backups into it would be stored in plaintext. Check --repo; if the repository is meant to be plain, leave the keys out",
                root.display(),
                named.join(" and ")
            ));
        }
    }
    pins.check(&location, &repo.config)?;
    if let Some(keys) = repo.keys() {
        if let Err(e) = pins.add_generations(&location, &keys.write.ids()) {
            tracing::warn!("cannot record the write key generations of {location}: {e:#}");
        }
    }
    if let Ok(mut opened) = OPENED.lock() {
        opened
            .get_or_insert_with(HashMap::new)
            .insert(root.display().to_string(), repo.sealing_shared());
    }
    Ok(repo)
}

/// The write key notes of the repository at `root` are sealed with:
/// `None` when it is not encrypted. Opens it unless this process did.
pub fn sealing_for(root: &Path) -> Result<Option<Arc<KeyRing>>> {
    let known = OPENED
        .lock()
        .ok()
        .and_then(|o| o.as_ref()?.get(&root.display().to_string()).cloned());
    match known {
        Some(seal) => Ok(seal),
        None => Ok(crate::repo::open_chunked(root)?.sealing_shared()),
    }
}

/// The keys for an encrypted repository, from what the operator named.
fn unlock(
    sources: &KeySources,
    params: &EncryptionParams,
    backend: &dyn Backend,
    known: &[crate::repo::v2::id::Id],
) -> Result<Keys> {
    let id = params.write_key_id;
    let identities = match (&sources.passphrase, &sources.identity) {
        (Some(file), _) => {
            let passphrase = crate::repo::v2::crypto::read_passphrase(file)?;
            let bytes = match backend.read(&passphrase_object(&id)) {
                Ok(bytes) => bytes,
                Err(e) if crate::backend::is_missing(&e) => {
                    return Err(crate::usage!(
                        "{} is not a passphrase repository (it has no {}); give --identity FILE or --write-key FILE instead of --passphrase-file",
                        backend.location(),
                        passphrase_object(&id)
                    ))
                }
                Err(e) => return Err(e),
            };
            let object: PassphraseObject = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not valid", passphrase_object(&id)))?;
            Some(
                object
                    .open(&passphrase)
                    .with_context(|| format!("cannot open {}", backend.location()))?,
            )
        }
        (None, Some(file)) => Some(Identities::from_file(file)?),
        (None, None) => None,
    };
    let key_file = match &sources.write_key {
        Some(file) => Some(file.clone()),
        None => Some(key_file_name(&default_key_dir(sources), &id)).filter(|f| f.exists()),
    };
    let (write, recipients) = match (key_file, &identities) {
        (Some(file), _) => {
            let writer = read_key_file(&file)?;
            if !writer.write.ids().contains(&id) {
                return Err(crate::usage!(
                    "the write key file {} belongs to another repository (key {}, while {} uses key {})",
                    file.display(),
                    &writer.write.id().hex()[..16],
                    backend.location(),
                    &id.hex()[..16]
                ));
            }
            (writer.write, Some(writer.recipients))
        }
        (None, Some(identities)) => {
            let writer = unwrap_material(backend, identities, &id, known)?;
            // The recipients an object of the repository names are never
            // used: whoever holds the storage could have put their own
            // there. A passphrase's identity is its own recipient.
            let recipients = if sources.passphrase.is_some() {
                Some(identities.recipients()?)
            } else {
                None
            };
            (writer.write, recipients)
        }
        (None, None) => {
            return Err(crate::usage!(
                "{} is encrypted (write key {}): give its write key file (--write-key FILE; volsnap init keeps it as {}) to back up, list and prune, or an identity (--identity FILE) or --passphrase-file to read",
                backend.location(),
                &id.hex()[..16],
                key_file_name(&default_key_dir(sources), &id).display()
            ))
        }
    };
    Ok(Keys::new(params.clone(), write, recipients, identities))
}

/// The write key material an identity opens: of the `keys/write-*`
/// objects that open, hold the repository's key and every generation this
/// host has used (`known`), the one with the most generations (the newest
/// rotation). Two that fork (neither holds the other's generations) are
/// refused: one of them is not a rotation of this repository's key.
fn unwrap_material(
    backend: &dyn Backend,
    identities: &Identities,
    id: &crate::repo::v2::id::Id,
    known: &[crate::repo::v2::id::Id],
) -> Result<WriterKeys> {
    let mut fitting: Vec<(String, WriterKeys)> = Vec::new();
    let mut unknown = Vec::new();
    let mut last_error = None;
    for object in backend.list("keys")? {
        if !object.name.starts_with(WRITE_KEY_PREFIX) {
            continue;
        }
        let opened = backend
            .read(&object.name)
            .and_then(|bytes| WriterKeys::unwrap_material(identities, &bytes));
        match opened {
            Ok(writer) if writer.write.ids().contains(id) => {
                let ids = writer.write.ids();
                if known.iter().all(|k| ids.contains(k)) {
                    fitting.push((object.name, writer));
                } else {
                    unknown.push(object.name);
                }
            }
            Ok(_) => {}
            Err(e) => last_error = Some(e),
        }
    }
    fitting.sort_by_key(|(_, w)| w.write.ids().len());
    if let Some((name, best)) = fitting.pop() {
        let best_ids = best.write.ids();
        if let Some((other, _)) = fitting
            .iter()
            .find(|(_, w)| !w.write.ids().iter().all(|i| best_ids.contains(i)))
        {
            return Err(crate::usage!(
                "{} holds two write key objects that extend its key differently ({name} and {other}): only one can be a rotation made with volsnap key; the other was made by someone holding an older write key. Nothing was done. Ask the host that rotated which one it wrote (its write key file names the generation) and delete the other",
                backend.location()
            ));
        }
        return Ok(best);
    }
    if !unknown.is_empty() {
        return Err(crate::usage!(
            "the write key objects of {} ({}) lack generations of its key that this host has used: a rotation was replaced by key material made by someone holding an older write key. Nothing was done; restore the repository's keys/ from a copy, or if the keys were really rebuilt, run volsnap repo trust --repo {}",
            backend.location(),
            unknown.join(", "),
            backend.location()
        ));
    }
    match last_error {
        Some(e) => Err(e.context(format!(
            "cannot open the write key of {}",
            backend.location()
        ))),
        None => anyhow::bail!(
            "{} holds no wrapped write key (keys/write-…) for its key {}",
            backend.location(),
            &id.hex()[..16]
        ),
    }
}

fn read_key_file(file: &Path) -> Result<WriterKeys> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the write key file {}", file.display()))?,
    );
    WriterKeys::parse_file(&text, &file.display().to_string())
}

/// How `init` encrypts a new repository.
pub enum NewKeys {
    /// To these recipients; the write key file goes to `key_file`.
    Recipients {
        recipients: Recipients,
        key_file: Option<PathBuf>,
    },
    /// With a passphrase (restic's model: the passphrase reads and writes).
    Passphrase { file: PathBuf },
    /// As the repository at this address is: same chunker, same keys (or
    /// none), so that copies between them move packs as they are.
    Like(PathBuf),
}

/// Creates an encrypted repository in `backend`; what to tell the operator.
pub fn init_encrypted(
    backend: Arc<dyn Backend>,
    root: &Path,
    how: NewKeys,
    immutable_days: Option<u32>,
) -> Result<(Repository, String)> {
    let aead = Aead::for_this_cpu();
    let write = KeyRing::new(WriteKey::generate(aead));
    let id = write.id();
    match how {
        NewKeys::Recipients {
            recipients,
            key_file,
        } => {
            let file = key_file
                .unwrap_or_else(|| key_file_name(&default_key_dir(&sources_for(root)), &id));
            let writer = WriterKeys { write, recipients };
            let count = writer.recipients.as_strings().len();
            write_key_file(&file, &writer)?;
            let repo = match Repository::init_encrypted(backend, writer, None, None, immutable_days)
            {
                Ok(repo) => repo,
                Err(e) => {
                    let _ = std::fs::remove_file(&file);
                    return Err(e);
                }
            };
            let said = format!(
                "encrypted ({}) to {count} recipient(s); the write key file is {} (0600): copy it to every host that backs up into this repository (--write-key FILE, or that path). It writes and lists backups but cannot read them; reading takes an identity (--identity FILE)",
                aead.name(),
                file.display()
            );
            Ok((repo, said))
        }
        NewKeys::Passphrase { file } => {
            let passphrase = crate::repo::v2::crypto::read_passphrase(&file)?;
            let identities = Identities::generate("the passphrase's identity");
            let object = PassphraseObject::seal(&identities, &passphrase)?;
            let writer = WriterKeys {
                write,
                recipients: identities.recipients()?,
            };
            let repo = Repository::init_encrypted(
                backend,
                writer,
                Some(object),
                Some(identities),
                immutable_days,
            )?;
            let said = format!(
                "encrypted ({}) with the passphrase in {} (Argon2id, 64 MiB): every command needs it (--passphrase-file FILE or VOLSNAP_PASSPHRASE_FILE); a lost passphrase cannot be recovered",
                aead.name(),
                file.display()
            );
            Ok((repo, said))
        }
        NewKeys::Like(_) => {
            anyhow::bail!("internal error: init --like is not an encryption of its own")
        }
    }
}

/// Writes a write key file, 0600 in a 0700 directory, refusing to replace one.
fn write_key_file(file: &Path, writer: &WriterKeys) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| {
            format!(
                "cannot create the write key file {} (it must not exist yet)",
                file.display()
            )
        })?;
    out.write_all(writer.to_file_text()?.as_bytes())?;
    out.sync_all()?;
    Ok(())
}

/// An encrypted repository and this host's write key file for it: what
/// the key commands change.
struct KeyedRepository {
    backend: Arc<dyn Backend>,
    params: EncryptionParams,
    file: PathBuf,
    writer: WriterKeys,
}

fn keyed(root: &Path) -> Result<KeyedRepository> {
    let backend = crate::backend::open(root)?;
    let config: crate::repo::v2::objects::Config =
        serde_json::from_slice(&backend.read(crate::repo::v2::CONFIG).map_err(|e| {
            if crate::backend::is_missing(&e) {
                crate::usage!("{} holds no volsnap repository", root.display())
            } else {
                e
            }
        })?)
        .with_context(|| format!("the config of {} is not valid", root.display()))?;
    checked_and_pinned(root, &config)?;
    let Some(encryption) = config.encryption else {
        return Err(crate::usage!(
            "{} is not encrypted: it has no keys to manage (volsnap init --recipient creates an encrypted repository)",
            root.display()
        ));
    };
    let params: EncryptionParams = serde_json::from_value(encryption).with_context(|| {
        format!(
            "{} is encrypted with a scheme this volsnap does not know",
            root.display()
        )
    })?;
    let sources = sources_for(root);
    if sources.passphrase.is_some() {
        return Err(crate::usage!(
            "{} has a passphrase as its one key; the key commands manage the recipients of repositories created with --recipient",
            root.display()
        ));
    }
    let file = sources
        .write_key
        .clone()
        .unwrap_or_else(|| key_file_name(&default_key_dir(&sources), &params.write_key_id));
    if !file.exists() {
        return Err(crate::usage!(
            "the key commands change this host's write key file, and {} does not exist; give --write-key FILE",
            file.display()
        ));
    }
    let writer = read_key_file(&file)?;
    if !writer.write.ids().contains(&params.write_key_id) {
        return Err(crate::usage!(
            "the write key file {} belongs to another repository",
            file.display()
        ));
    }
    Ok(KeyedRepository {
        backend,
        params,
        file,
        writer,
    })
}

impl KeyedRepository {
    /// Saves the changed key file (replacing it atomically, 0600), then
    /// publishes the material wrapped to the recipients and deletes the
    /// older wrapped objects; never a moment without one.
    fn save(&self) -> Result<()> {
        let temp = self
            .file
            .with_extension(format!("new-{}", std::process::id()));
        let _ = std::fs::remove_file(&temp);
        write_key_file(&temp, &self.writer)?;
        std::fs::rename(&temp, &self.file)
            .with_context(|| format!("cannot replace {}", self.file.display()))?;
        let new = store_wrapped_material(&*self.backend, &self.writer)?;
        for object in self.backend.list("keys")? {
            if object.name.starts_with(WRITE_KEY_PREFIX) && object.name != new {
                self.backend.delete(&object.name)?;
            }
        }
        Ok(())
    }
}

/// `volsnap key list`: what protects the repository and what this host holds.
pub fn describe(root: &Path) -> Result<String> {
    let backend = crate::backend::open(root)?;
    let config: crate::repo::v2::objects::Config =
        serde_json::from_slice(&backend.read(crate::repo::v2::CONFIG)?)
            .with_context(|| format!("the config of {} is not valid", root.display()))?;
    checked_and_pinned(root, &config)?;
    let Some(encryption) = config.encryption else {
        return Ok(format!("{} is not encrypted", root.display()));
    };
    let params: EncryptionParams = serde_json::from_value(encryption)?;
    let sources = sources_for(root);
    let mut out = vec![format!(
        "{}: encrypted ({}, {}), repository key {}",
        root.display(),
        params.scheme,
        params.aead.name(),
        &params.write_key_id.hex()[..16]
    )];
    let file = sources
        .write_key
        .clone()
        .unwrap_or_else(|| key_file_name(&default_key_dir(&sources), &params.write_key_id));
    match read_key_file(&file) {
        Ok(writer) => {
            out.push(format!(
                "write key file {}: current key {}, {} earlier key(s); new backups are readable by:",
                file.display(),
                &writer.write.id().hex()[..16],
                writer.write.ids().len() - 1
            ));
            out.extend(
                writer
                    .recipients
                    .as_strings()
                    .iter()
                    .map(|r| format!("  {r}")),
            );
        }
        Err(_) if !file.exists() => out.push(format!(
            "no write key file on this host ({} does not exist): it cannot back up into this repository",
            file.display()
        )),
        Err(e) => out.push(format!("the write key file cannot be used: {e:#}")),
    }
    let mut objects = Vec::new();
    let mut foreign = Vec::new();
    for object in backend.list("keys")? {
        if object.name.starts_with(WRITE_KEY_PREFIX) || object.name.starts_with("keys/passphrase-")
        {
            objects.push(object.name);
        } else {
            foreign.push(object.name);
        }
    }
    out.push(format!(
        "key objects in the repository: {}",
        if objects.is_empty() {
            "none".to_string()
        } else {
            objects.join(", ")
        }
    ));
    if !foreign.is_empty() {
        out.push(format!(
            "not volsnap's, and never used (recipients come from this host's write key file only): {}",
            foreign.join(", ")
        ));
    }
    Ok(out.join("\n"))
}

/// `volsnap key add-recipient` / `remove-recipient`: changes who can read
/// what is written from now on.
pub fn change_recipients(root: &Path, add: &[String], remove: &[String]) -> Result<String> {
    let mut keyed = keyed(root)?;
    let mut list: Vec<String> = keyed.writer.recipients.as_strings().to_vec();
    for r in remove {
        let before = list.len();
        list.retain(|x| x != r.trim());
        if list.len() == before {
            return Err(crate::usage!(
                "{r} is not a recipient of the write key file {}",
                keyed.file.display()
            ));
        }
    }
    for r in add {
        if list.iter().any(|x| x == r.trim()) {
            return Err(crate::usage!("{r} is a recipient already"));
        }
        list.push(r.trim().to_string());
    }
    if list.is_empty() {
        return Err(crate::usage!(
            "that would leave no recipient: nobody could read new backups; add another first"
        ));
    }
    keyed.writer.recipients = Recipients::parse(list.iter().map(String::as_str), "--recipient")
        .map_err(|e| crate::usage!("{e:#}"))?;
    keyed.save()?;
    let mut said = Vec::new();
    if !add.is_empty() {
        said.push(format!(
            "added {} recipient(s): they read backups written from now on. Backups written before stay readable only by the identities they were written for (their content keys are not re-wrapped)",
            add.len()
        ));
    }
    if !remove.is_empty() {
        said.push(format!(
            "removed {} recipient(s): backups written from now on are not readable by them. What was written before stays readable by their identities; to end that, the backups must be deleted (prune)",
            remove.len()
        ));
    }
    said.push(format!(
        "the write key file {} changed: copy it to every other host that backs up into {}, or their backups keep the old recipients",
        keyed.file.display(),
        root.display()
    ));
    Ok(said.join("\n"))
}

/// `volsnap key rotate`: a new write key for what is written from now on.
pub fn rotate(root: &Path) -> Result<String> {
    let mut keyed = keyed(root)?;
    let old = keyed.writer.write.id();
    keyed.writer.write.rotate();
    keyed.save()?;
    Ok(format!(
        "rotated the write key of {} ({} → {}): indexes, pack headers and backup records written from now on are sealed with the new key, which a copy of the old write key file does not open. The old keys stay in the file to read what they sealed; the id key and chunker seed stay (deduplication goes on), so an old key file can still compute chunk ids of content it guesses and add objects sealed with the old key: revoke its host's storage credentials too. Copy {} to every host that backs up into this repository (key {})",
        root.display(),
        &old.hex()[..16],
        &keyed.writer.write.id().hex()[..16],
        keyed.file.display(),
        &keyed.params.write_key_id.hex()[..16]
    ))
}
