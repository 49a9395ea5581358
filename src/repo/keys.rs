//! Where this host's keys for encrypted repositories come from: the
//! operator's flags, environment and job configuration, and the state
//! directory, never the repository (docs/FORMAT.md, "Encryption").
//!
//! A *write key file* (0600) holds the write key material and the
//! recipients; `volsnap init` writes it to `<state dir>/keys/<key id>.key`,
//! where every command looks for it by the id the repository's config
//! names. An *identity file* (age's) opens contents. A *passphrase file*
//! opens a passphrase repository, whose identity is sealed in it.

use super::v2::crypto::{Aead, Identities, PassphraseObject, Recipients, WriteKey, WriterKeys};
use super::v2::{passphrase_object, write_key_object, Keys, Repository};
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
    Repository::open_with(backend, &|params, backend| {
        unlock(&sources, params, backend)
    })
}

/// The keys for an encrypted repository, from what the operator named.
fn unlock(sources: &KeySources, params: &EncryptionParams, backend: &dyn Backend) -> Result<Keys> {
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
            if writer.write.id() != id {
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
            let wrapped = backend.read(&write_key_object(&id)).with_context(|| {
                format!("cannot read the wrapped write key of {}", backend.location())
            })?;
            let writer = WriterKeys::unwrap_material(identities, &wrapped)
                .with_context(|| format!("cannot open the write key of {}", backend.location()))?;
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
}

/// Creates an encrypted repository in `backend`; what to tell the operator.
pub fn init_encrypted(backend: Arc<dyn Backend>, how: NewKeys) -> Result<(Repository, String)> {
    let aead = Aead::for_this_cpu();
    let write = WriteKey::generate(aead);
    let id = write.id();
    match how {
        NewKeys::Recipients {
            recipients,
            key_file,
        } => {
            let file = key_file.unwrap_or_else(|| {
                key_file_name(&default_key_dir(&sources_for(Path::new(""))), &id)
            });
            let writer = WriterKeys { write, recipients };
            let count = writer.recipients.as_strings().len();
            write_key_file(&file, &writer)?;
            let repo = match Repository::init_encrypted(backend, writer, None, None) {
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
            let repo = Repository::init_encrypted(backend, writer, Some(object), Some(identities))?;
            let said = format!(
                "encrypted ({}) with the passphrase in {} (Argon2id, 64 MiB): every command needs it (--passphrase-file FILE or VOLSNAP_PASSPHRASE_FILE); a lost passphrase cannot be recovered",
                aead.name(),
                file.display()
            );
            Ok((repo, said))
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
