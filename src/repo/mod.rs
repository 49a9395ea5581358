//! The backup repository: a directory of backups, one subdirectory each.
//!
//! A backup is written under a hidden temporary name (`.partial-<id>`) and
//! renamed to `<id>` only once its archives, manifest and `SHA256SUMS` are
//! complete and fsynced, so a failed or killed run never leaves something
//! that looks like a backup.

pub mod attest;
pub mod keys;
pub mod manifest;
pub mod notes;
pub mod pin;
pub mod retention;
pub mod v2;

use crate::repo::manifest::{Manifest, MANIFEST_FILE};
use crate::usage;
use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Prefix of backups being written.
pub const PARTIAL_PREFIX: &str = ".partial-";
/// A backup being deleted is renamed to this first, so it never looks
/// complete while half gone.
pub const DELETING_PREFIX: &str = ".deleting-";
/// An existing, usable repository directory.
#[derive(Debug, Clone)]
pub struct Repo {
    root: PathBuf,
}

/// A repository's format (docs/FORMAT.md, "config").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Format 1: a directory of backups, one tar archive per volume.
    Tar,
    /// Format 2: content-addressed chunks in packs.
    Chunked,
}

/// The file `init --format tar` leaves in a format-1 repository (and every
/// format-1 backup adds when missing), so that an empty format-1
/// repository is not taken for a directory to initialise as format 2.
pub const FORMAT1_MARKER: &str = "volsnap-format-1";

/// The format of the repository at `root`, for reading: a `config` object
/// means format 2; anything else is left to format 1's own checks (an
/// empty directory then holds no backup).
pub fn detect(root: &Path) -> Format {
    // Format 1 needs a directory's rename: a server holds format 2 only.
    if crate::backend::is_remote(root) || root.join(v2::CONFIG).is_file() {
        Format::Chunked
    } else {
        Format::Tar
    }
}

/// The format a backup into `root` writes, and whether `root` is an empty
/// directory the backup initialises first ([`init_for_backup`]): format 2
/// when `root` has a `config`; format 1 when it holds format-1 backups (or
/// the marker); format 2, to initialise, when it is empty (or holds only
/// `lost+found`). Anything else is refused (exit status 2): a backup never
/// scatters objects into a directory of someone else's files. Looks only.
pub fn backup_format(root: &Path) -> Result<(Format, bool)> {
    if crate::backend::is_remote(root) {
        let backend = crate::backend::open(root)?;
        if backend.stat(v2::CONFIG)?.is_some() {
            return Ok((Format::Chunked, false));
        }
        refuse_foreign(root, backend.top_level()?)?;
        return Ok((Format::Chunked, true));
    }
    if root.join(v2::CONFIG).is_file() {
        return Ok((Format::Chunked, false));
    }
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(usage!(
                "repository {} does not exist; create it with volsnap init --repo {} (or mkdir it)",
                root.display(),
                root.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(usage!("repository {} is not a directory", root.display()))
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read repository {}", root.display()))
        }
    };
    let mut foreign = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", root.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let format1 = name == FORMAT1_MARKER
            || name.starts_with(PARTIAL_PREFIX)
            || name.starts_with(DELETING_PREFIX)
            || entry.path().join(MANIFEST_FILE).is_file();
        if format1 {
            return Ok((Format::Tar, false));
        }
        if name != "lost+found" {
            foreign.push(name);
        }
    }
    refuse_foreign(root, foreign)?;
    Ok((Format::Chunked, true))
}

/// Refuses (exit status 2) a place that holds `foreign` names.
fn refuse_foreign(root: &Path, mut foreign: Vec<String>) -> Result<()> {
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let shown = foreign
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    Err(usage!(
        "{} is neither empty nor a volsnap repository (it holds {shown}{}); back up into an empty place or one made by volsnap init",
        root.display(),
        if foreign.len() > 5 { ", …" } else { "" }
    ))
}

/// Initialises the empty directory `root` as a format-2 repository for the
/// backup about to write into it; a backup beside this one may have done so
/// first, which is as good.
pub fn init_for_backup(root: &Path) -> Result<()> {
    if !crate::backend::is_remote(root) {
        Repo::open(root)?.check_writable()?;
    }
    let backend = crate::backend::open(root)?;
    if !backend.refuses_second_create()? {
        // Two first backups racing could each write a config there.
        return Err(usage!(
            "{} ignores conditional creates (If-None-Match), so a first backup cannot safely create the repository; create it once with volsnap init --repo {}",
            root.display(),
            root.display()
        ));
    }
    match v2::Repository::init(backend.clone(), None) {
        Ok(repo) => {
            keys::pin_created(root, &repo.config)?;
            tracing::info!(
                "initialised {} as a format-2 repository (id {})",
                root.display(),
                &repo.config.id[..16]
            );
            Ok(())
        }
        Err(_) if matches!(backend.stat(v2::CONFIG), Ok(Some(_))) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates a repository at `root` (a directory that is empty, holds only
/// `lost+found`, or does not exist yet); says what was created.
///
/// `immutable_days`: an immutable repository (S3 with Object Lock), whose
/// backups' objects are retained that many days.
pub fn init(
    root: &Path,
    format: Format,
    encryption: Option<keys::NewKeys>,
    immutable_days: Option<u32>,
) -> Result<String> {
    if let Some(days) = immutable_days {
        if !crate::backend::is_remote(root) || format == Format::Tar {
            return Err(usage!(
                "--immutable {days}: immutable repositories live on S3 buckets with Object Lock (s3://BUCKET/PREFIX); {} is not one",
                root.display()
            ));
        }
        if days == 0 || days > 36_500 {
            return Err(usage!(
                "--immutable takes a number of days from 1 to 36500, not {days}"
            ));
        }
    }
    if format == Format::Tar && matches!(encryption, Some(keys::NewKeys::Like(_))) {
        return Err(usage!(
            "--like makes a format-2 repository that copies move backups into; leave out --format tar"
        ));
    }
    if format == Format::Tar && encryption.is_some() {
        return Err(usage!(
            "format 1 (tar) repositories are not encrypted; leave out --format tar to create an encrypted format-2 repository"
        ));
    }
    if crate::backend::is_remote(root) {
        return init_remote(root, format, encryption, immutable_days);
    }
    match fs::read_dir(root) {
        Ok(entries) => {
            let mut held: Vec<String> = Vec::new();
            for entry in entries {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if name != "lost+found" {
                    held.push(name);
                }
            }
            if !held.is_empty() {
                held.sort();
                let what = if detect(root) == Format::Chunked {
                    "is a format-2 repository already".to_string()
                } else if held.iter().any(|n| n == FORMAT1_MARKER) {
                    "is a format-1 repository already".to_string()
                } else {
                    format!("is not empty (it holds {})", held.join(", "))
                };
                return Err(usage!(
                    "{} {what}; initialise an empty or new directory",
                    root.display()
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .with_context(|| format!("cannot create {}", root.display()))?;
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", root.display()));
        }
    }
    Ok(match format {
        Format::Tar => {
            Repo::open(root)?.mark_format1()?;
            format!(
                "{} is ready for format-1 backups (one tar archive per volume, read by GNU tar)",
                root.display()
            )
        }
        Format::Chunked => {
            let backend = std::sync::Arc::new(crate::backend::LocalBackend::open(root)?);
            let (id, keys) = init_chunked(backend, root, encryption, None)?;
            format!(
                "created format-2 repository {} (id {}): chunked, deduplicated, zstd{keys}",
                root.display(),
                &id[..16]
            )
        }
    })
}

/// Creates a format-2 repository, encrypted when asked; its id, and what
/// the encryption means for the operator, as a sentence to append.
fn init_chunked(
    backend: std::sync::Arc<dyn crate::backend::Backend>,
    root: &Path,
    encryption: Option<keys::NewKeys>,
    immutable_days: Option<u32>,
) -> Result<(String, String)> {
    let (config, said) = match encryption {
        None => (
            v2::Repository::init(backend, immutable_days)?.config,
            String::new(),
        ),
        Some(keys::NewKeys::Like(source)) => init_like(backend, &source, immutable_days)?,
        Some(how) => {
            let (repo, said) = keys::init_encrypted(backend, root, how, immutable_days)?;
            (repo.config, format!(", {said}"))
        }
    };
    keys::pin_created(root, &config)?;
    Ok((config.id, said))
}

/// A repository that names, cuts and seals blobs as the one at `source`
/// does, so that `volsnap copy` moves packs between them as they are. Only
/// public objects of the source are read (its config, its wrapped key
/// material): no key is needed, and the source's write key file works for
/// both.
fn init_like(
    backend: std::sync::Arc<dyn crate::backend::Backend>,
    source: &Path,
    immutable_days: Option<u32>,
) -> Result<(v2::objects::Config, String)> {
    let from = crate::backend::open(source)?;
    let bytes = from.read(v2::CONFIG).map_err(|e| {
        if crate::backend::is_missing(&e) {
            usage!(
                "--like {}: it holds no format-2 repository (volsnap copy works between format-2 repositories)",
                source.display()
            )
        } else {
            e
        }
    })?;
    let config: v2::objects::Config = serde_json::from_slice(&bytes)
        .with_context(|| format!("the config of {} is not valid", source.display()))?;
    config
        .check()
        .with_context(|| format!("--like {}: its config cannot be used", source.display()))?;
    pin::Pins::in_state_dir(&keys::state_dir()).check(&keys::pin_location(source), &config)?;
    if config.format != v2::objects::FORMAT || config.ids != v2::objects::ID_HASH {
        return Err(usage!(
            "--like {}: its format (format {}, {} ids) is not the one this volsnap creates; copy from it into a new repository made without --like",
            source.display(),
            config.format,
            config.ids
        ));
    }
    let mut key_objects = Vec::new();
    for object in from.list("keys")? {
        key_objects.push((object.name.clone(), from.read(&object.name)?));
    }
    let encrypted = config.encryption.is_some();
    let config = v2::Repository::init_like(backend, &config, &key_objects, immutable_days)?;
    let said = if encrypted {
        format!(
            ", encrypted with the same keys as {} (the same write key file and identities serve both; volsnap copy moves backups between them without an identity)",
            source.display()
        )
    } else {
        format!(
            ", like {} (volsnap copy moves backups between them as they are)",
            source.display()
        )
    };
    Ok((config, said))
}

fn init_remote(
    root: &Path,
    format: Format,
    encryption: Option<keys::NewKeys>,
    immutable_days: Option<u32>,
) -> Result<String> {
    if format == Format::Tar {
        return Err(usage!(
            "{}: format 1 (tar) repositories live in local directories only (they rename directories, which object storage cannot); leave out --format for format 2",
            root.display()
        ));
    }
    let backend = crate::backend::open(root)?;
    if backend.stat(v2::CONFIG)?.is_some() {
        return Err(usage!(
            "{} is a format-2 repository already; initialise an empty place",
            root.display()
        ));
    }
    refuse_foreign(root, backend.top_level()?)?;
    let conditional = backend.refuses_second_create()?;
    if let Some(days) = immutable_days {
        check_object_lock(&*backend, root, days)?;
    }
    let (id, keys) = init_chunked(backend.clone(), root, encryption, immutable_days)?;
    let immutable = match immutable_days {
        Some(days) => {
            let repo = open_chunked(root)?;
            repo.retain(&repo.retained_with_every_backup()?)?;
            format!(
                "\nimmutable: every object of a backup is retained {days} days (S3 Object Lock, compliance mode) and each backup renews the retention of what it references; locks and marks are not retained. Set the bucket's lifecycle rules NoncurrentVersionExpiration and AbortIncompleteMultipartUpload (docs/fleets.md)"
            )
        }
        None => String::new(),
    };
    Ok(format!(
        "created format-2 repository {} (id {}): chunked, deduplicated, zstd{keys}{}",
        root.display(),
        &id[..16],
        if conditional {
            ""
        } else {
            "\nnote: this server ignores conditional creates (If-None-Match); locks and prune stay safe (docs/FORMAT.md, \"Conditional creates\"), but never run two inits on one place at once"
        }
    ) + &immutable)
}

/// Refuses (usage) a bucket without Object Lock, or one whose default
/// retention would lock every object, the lock objects included.
fn check_object_lock(backend: &dyn crate::backend::Backend, root: &Path, days: u32) -> Result<()> {
    match backend.lock_configuration()? {
        None => Err(usage!(
            "--immutable {days}: {} has no Object Lock (SFTP); immutable repositories live on S3 buckets with Object Lock",
            root.display()
        )),
        Some(c) if !c.enabled => Err(usage!(
            "--immutable {days}: the bucket of {} does not have Object Lock enabled; create a bucket with it (aws s3api create-bucket --object-lock-enabled-for-bucket …), which also turns on versioning",
            root.display()
        )),
        Some(c) => match c.default_retention {
            Some(rule) => Err(usage!(
                "--immutable {days}: the bucket of {} has a default retention ({rule}), which would lock the repository's lock objects too, so that no lock could ever be released; remove the bucket's default retention rule: volsnap sets the retention of each object itself",
                root.display()
            )),
            None => Ok(()),
        },
    }
}

/// Opens the format-2 repository at `root` (a directory or a server).
pub fn open_chunked(root: &Path) -> Result<std::sync::Arc<v2::Repository>> {
    let backend = crate::backend::open(root)?;
    match keys::open(backend, root) {
        Ok(repo) => Ok(std::sync::Arc::new(repo)),
        Err(e) if crate::backend::is_missing(&e) && crate::backend::is_remote(root) => Err(usage!(
            "{} holds no volsnap repository; create one with volsnap init --repo {}",
            root.display(),
            root.display()
        )),
        Err(e) => Err(e),
    }
}

/// A backup found in the repository.
#[derive(Debug, Clone)]
pub struct BackupEntry {
    pub format: Format,
    pub id: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Format 2: whether its claim to come from its host holds for this
    /// host (docs/FORMAT.md, "Attribution"); format 1 has no signatures.
    pub attribution: Option<attest::Attribution>,
}

impl BackupEntry {
    /// Whether it may decide anything for its host (retention, `latest`).
    pub fn counts(&self) -> bool {
        self.attribution.as_ref().is_none_or(|a| a.verified())
    }
}

impl Repo {
    /// Opens a repository that must exist and be a directory.
    pub fn open(root: &Path) -> Result<Repo> {
        if crate::backend::is_remote(root) {
            return Err(usage!(
                "{}: format 1 (tar) repositories live in local directories only; a server holds format 2",
                root.display()
            ));
        }
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => Ok(Repo {
                root: root.to_path_buf(),
            }),
            Ok(_) => Err(usage!("repository {} is not a directory", root.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(usage!(
                "repository {} does not exist; create it first (mkdir -p {})",
                root.display(),
                root.display()
            )),
            Err(e) => Err(e).with_context(|| format!("cannot open repository {}", root.display())),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks that backups can be written here, before anything is stopped.
    pub fn check_writable(&self) -> Result<()> {
        let probe = self
            .root
            .join(format!(".volsnap-write-test-{}", std::process::id()));
        crate::fsutil::create_private(&probe)
            .map(|_| ())
            .and_then(|_| fs::remove_file(&probe).context("cannot remove write probe"))
            .with_context(|| {
                format!(
                    "repository {} is not writable; check its permissions and free space",
                    self.root.display()
                )
            })
    }

    /// Leaves [`FORMAT1_MARKER`] unless it is there already.
    pub fn mark_format1(&self) -> Result<()> {
        let path = self.root.join(FORMAT1_MARKER);
        let created = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match created {
            Ok(mut file) => {
                use std::io::Write;
                file.write_all(
                    b"volsnap repository, format 1: one tar archive per volume and backup (docs/FORMAT.md)\n",
                )
                .and_then(|_| file.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
    }

    /// The directory a backup is written to while in progress.
    pub fn partial_dir(&self, id: &str) -> PathBuf {
        self.root.join(format!("{PARTIAL_PREFIX}{id}"))
    }

    /// The final directory of a backup.
    pub fn backup_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// All complete backups, oldest first. Directories without a readable
    /// manifest are reported through `warnings` and skipped.
    pub fn list(&self) -> Result<(Vec<BackupEntry>, Vec<String>)> {
        let mut backups = Vec::new();
        let mut warnings = Vec::new();
        let listing = fs::read_dir(&self.root)
            .with_context(|| format!("cannot list {}", self.root.display()))?;
        for entry in listing {
            let entry = entry.with_context(|| format!("cannot list {}", self.root.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            let manifest_path = entry.path().join(MANIFEST_FILE);
            if !manifest_path.exists() {
                continue;
            }
            match Manifest::load(&manifest_path) {
                Ok(manifest) => backups.push(BackupEntry {
                    attribution: None,
                    format: Format::Tar,
                    id: name,
                    dir: entry.path(),
                    manifest,
                }),
                Err(e) => warnings.push(format!("{name}: {e:#}")),
            }
        }
        backups.sort_by(|a, b| (a.manifest.started_at, &a.id).cmp(&(b.manifest.started_at, &b.id)));
        Ok((backups, warnings))
    }

    /// Resolves an id, or `latest`, to its directory (the manifest is not
    /// read here, so a corrupt one can still be verified and reported).
    pub fn resolve(&self, id: &str) -> Result<(String, PathBuf)> {
        if id == "latest" {
            let (backups, _) = self.list()?;
            let last = backups
                .last()
                .ok_or_else(|| usage!("repository {} holds no backup yet", self.root.display()))?;
            return Ok((last.id.clone(), last.dir.clone()));
        }
        if id.is_empty() || id.starts_with('.') || id.contains('/') {
            return Err(usage!("{id:?} is not a backup id"));
        }
        let dir = self.backup_dir(id);
        if !dir.join(MANIFEST_FILE).exists() {
            return Err(usage!(
                "no backup {id} in {}; 'volsnap list --repo {}' shows the backups there",
                self.root.display(),
                self.root.display()
            ));
        }
        Ok((id.to_string(), dir))
    }
}

/// What `latest` may name in a repository that several hosts and stacks
/// share: the newest backup from `host`, of `selection` when one is given.
#[derive(Debug, Clone)]
pub struct Scope {
    pub host: String,
    pub selection: Option<String>,
}

impl Scope {
    fn describe(&self) -> String {
        match &self.selection {
            Some(s) => format!("of {s} "),
            None => String::new(),
        }
    }
}

impl Repo {
    /// Resolves an id, or `latest` within `scope`, to its directory. When
    /// this host has no such backup but others do (a replacement machine
    /// after a disaster), the error names them, for `--host`.
    pub fn resolve_in(&self, id: &str, scope: &Scope) -> Result<(String, PathBuf)> {
        if id != "latest" {
            return self.resolve(id);
        }
        let (backups, _) = self.list()?;
        let newest = newest_in(&backups, scope, &self.root.display().to_string())?;
        Ok((newest.id.clone(), newest.dir.clone()))
    }
}

/// The newest backup of each host and stack in `backups` (oldest first):
/// what an operator watching a fleet of hosts on one repository checks.
pub fn newest_by_host(backups: &[BackupEntry]) -> Vec<&BackupEntry> {
    let mut newest: std::collections::BTreeMap<(&str, &str), &BackupEntry> = Default::default();
    // Only backups that verify as their host's: a forged, future-dated one
    // would otherwise make a stale host look fresh.
    for b in backups.iter().filter(|b| b.counts()) {
        newest.insert((&b.manifest.host, &b.manifest.selection), b);
    }
    newest.into_values().collect()
}

/// The newest of `backups` (oldest first) within `scope`, or an error that
/// names the hosts that do have backups of it.
pub fn newest_in<'b>(
    backups: &'b [BackupEntry],
    scope: &Scope,
    location: &str,
) -> Result<&'b BackupEntry> {
    if backups.is_empty() {
        return Err(usage!("repository {location} holds no backup yet"));
    }
    let of_stack: Vec<&BackupEntry> = backups
        .iter()
        .filter(|b| {
            scope
                .selection
                .as_deref()
                .is_none_or(|s| b.manifest.selection == s)
        })
        .collect();
    if let Some(newest) = of_stack
        .iter()
        .rev()
        .find(|b| b.manifest.host == scope.host && b.counts())
    {
        return Ok(newest);
    }
    // Backups that claim the host but do not verify never become `latest`.
    let claimed: Vec<String> = of_stack
        .iter()
        .filter(|b| b.manifest.host == scope.host)
        .map(|b| {
            let object = if b.id != b.manifest.id {
                format!(", commit object {}", b.id)
            } else {
                String::new()
            };
            format!(
                "{} ({}{object})",
                crate::text::escape(&b.manifest.id),
                b.attribution
                    .as_ref()
                    .map_or(String::new(), |a| a.describe())
            )
        })
        .collect();
    if !claimed.is_empty() {
        return Err(usage!(
            "no backup {}from host {} in {location} verifies against a key this host trusts for it; candidates: {}. If they are that host's, trust its key (on that host: volsnap host show; here: volsnap host trust {} FINGERPRINT), or name one by its commit object id",
            scope.describe(),
            crate::text::escape(&scope.host),
            claimed.join(", "),
            crate::text::escape(&scope.host)
        ));
    }
    let mut hosts: Vec<String> = of_stack
        .iter()
        .map(|b| crate::text::escape(&b.manifest.host).into_owned())
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    if hosts.is_empty() {
        return Err(usage!(
            "repository {location} holds no backup {}('volsnap list --repo {location}' shows what it holds)",
            scope.describe(),
        ));
    }
    Err(usage!(
        "repository {location} holds no backup {}from host {}; it has some from {}: name one with --host",
        scope.describe(),
        scope.host,
        hosts.join(", ")
    ))
}

/// The backups of a repository of either format, oldest first, and what
/// could not be read. A format-2 backup's `dir` is its commit object.
pub fn list_any(root: &Path) -> Result<(Vec<BackupEntry>, Vec<String>)> {
    match detect(root) {
        Format::Tar => Repo::open(root)?.list(),
        Format::Chunked => {
            let repo = open_chunked(root)?;
            let commits = repo.commits()?;
            let verifier = attest::Verifier::for_repository(&repo)?;
            Ok((
                commits
                    .into_iter()
                    .map(|(object, commit)| BackupEntry {
                        attribution: Some(verifier.attribute(&commit)),
                        format: Format::Chunked,
                        id: commit.id.clone(),
                        dir: root.join("snapshots").join(object.hex()),
                        manifest: commit.summary(),
                    })
                    .collect(),
                Vec::new(),
            ))
        }
    }
}

/// Protects backup `id` of the repository at `root` from `prune`, or lifts
/// the protection (`remove`); its id.
pub fn protect(root: &Path, id: &str, remove: bool) -> Result<String> {
    use notes::Note;
    let (backups, _) = list_any(root)?;
    let by_object = backups
        .iter()
        .find(|b| b.format == Format::Chunked && b.dir.file_name().is_some_and(|n| n == id));
    let claimed = backups.iter().filter(|b| b.id == id).count();
    if by_object.is_none() && claimed > 1 {
        return Err(usage!(
            "backup id {} is ambiguous in {}: {claimed} backups claim it; name one by its commit object id (volsnap list --json shows it as \"object\")",
            crate::text::escape(id),
            root.display()
        ));
    }
    let latest_scope = Scope {
        host: crate::execute::this_host(),
        selection: None,
    };
    let entry = match id {
        // This host's newest that verifies as its own, as everywhere else.
        "latest" => Some(newest_in(
            &backups,
            &latest_scope,
            &root.display().to_string(),
        )?),
        _ => by_object.or_else(|| backups.iter().find(|b| b.id == id)),
    }
    .ok_or_else(|| {
        usage!(
            "no backup {id} in {}; 'volsnap list --repo {}' shows the backups there",
            root.display(),
            root.display()
        )
    })?;
    let at = entry.notes()?;
    if remove {
        at.remove(Note::Protected)?;
    } else if at.read(Note::Protected).is_none() {
        let when = format!("protected at {}\n", chrono::Utc::now().to_rfc3339());
        let name = at.write_named(Note::Protected, when.as_bytes())?;
        // Under Object Lock a protection is retained like the backup: a
        // credential that deletes objects cannot lift it.
        if let (Some(name), Format::Chunked) = (name, entry.format) {
            let repo = open_chunked(root)?;
            repo.retain(&[name])?;
        }
    }
    Ok(entry.id.clone())
}

/// A format-2 backup by id (its `YYYYMMDD…` id, or its commit object's
/// id), or `latest` within `scope`.
pub fn resolve_chunked(
    repo: &v2::Repository,
    id: &str,
    scope: &Scope,
) -> Result<(v2::id::Id, v2::objects::Commit)> {
    let location = repo.backend().location();
    let mut commits = repo.commits()?;
    if id == "latest" {
        let verifier = attest::Verifier::for_repository(repo)?;
        let entries: Vec<BackupEntry> = commits
            .iter()
            .map(|(object, c)| BackupEntry {
                attribution: Some(verifier.attribute(c)),
                format: Format::Chunked,
                id: object.hex(),
                dir: PathBuf::new(),
                manifest: c.summary(),
            })
            .collect();
        let newest = newest_in(&entries, scope, &location)?;
        let object = v2::id::Id::parse(&newest.id)?;
        return commits
            .into_iter()
            .find(|(o, _)| *o == object)
            .context("internal error: the newest backup vanished");
    }
    // A commit object's id names one backup; a backup id is what the
    // commit says of itself, and two commits may say the same (a planted
    // one, say): never silently take one of them.
    if let Some(position) = commits.iter().position(|(object, _)| object.hex() == id) {
        return Ok(commits.swap_remove(position));
    }
    let matching: Vec<usize> = commits
        .iter()
        .enumerate()
        .filter(|(_, (_, c))| c.id == id)
        .map(|(n, _)| n)
        .collect();
    match matching[..] {
        [] => Err(usage!(
            "no backup {} in {location}; 'volsnap list --repo {location}' shows the backups there",
            crate::text::escape(id)
        )),
        [one] => Ok(commits.swap_remove(one)),
        _ => Err(usage!(
            "backup id {} is ambiguous in {location}: {} commit objects claim it ({}); name one by its commit object id (volsnap list --json shows them as \"object\"), and check the others: volsnap writes one per backup",
            crate::text::escape(id),
            matching.len(),
            matching
                .iter()
                .map(|n| commits[*n].0.hex())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

impl Repo {
    /// Deletes a backup: renamed out of sight first, then removed.
    pub fn delete(&self, id: &str) -> Result<()> {
        let (id, dir) = self.resolve(id)?;
        let doomed = self.root.join(format!("{DELETING_PREFIX}{id}"));
        fs::rename(&dir, &doomed)
            .with_context(|| format!("cannot delete backup {}", dir.display()))?;
        fs::remove_dir_all(&doomed)
            .with_context(|| format!("cannot remove {} (delete it by hand)", doomed.display()))
    }

    /// Finishes deletions an earlier, interrupted prune began.
    pub fn finish_deletions(&self) -> Result<()> {
        for entry in fs::read_dir(&self.root)
            .with_context(|| format!("cannot list {}", self.root.display()))?
        {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with(DELETING_PREFIX) && path.is_dir() {
                fs::remove_dir_all(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        Ok(())
    }
}

impl Repo {
    /// Bytes available to us on the repository's filesystem.
    pub fn free_bytes(&self) -> Result<u64> {
        let stat = nix::sys::statvfs::statvfs(&self.root)
            .with_context(|| format!("cannot read the free space of {}", self.root.display()))?;
        Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
    }

    /// Expected size of a new backup of `raw_bytes` of data for `selection`:
    /// the last backup of the same selection scaled to today's data, or,
    /// with no history, the data itself (as if incompressible).
    pub fn estimate_backup_bytes(&self, selection: &str, raw_bytes: u64) -> u64 {
        let previous = self.list().ok().and_then(|(backups, _)| {
            backups
                .into_iter()
                .rev()
                .find(|b| b.manifest.selection == selection)
        });
        match previous {
            Some(b) if b.manifest.total_bytes() > 0 => {
                let ratio = b.manifest.archive_bytes() as f64 / b.manifest.total_bytes() as f64;
                (raw_bytes as f64 * ratio.min(1.05)) as u64
            }
            _ => raw_bytes,
        }
    }
}

/// A new backup id: UTC time to the second plus a short disambiguator, so
/// ids sort by time and two runs in the same second do not collide.
pub fn new_backup_id() -> String {
    let now = chrono::Utc::now();
    let salt = (now.timestamp_subsec_nanos() ^ std::process::id().rotate_left(16)) & 0xffff;
    format!("{}-{:04x}", now.format("%Y%m%dT%H%M%SZ"), salt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_are_path_safe() {
        let id = new_backup_id();
        assert_eq!(id.len(), "20261125T191500Z-abcd".len());
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }

    #[test]
    fn missing_repository_is_a_usage_error() {
        let err = Repo::open(Path::new("/nonexistent/volsnap-repo")).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 2);
        assert!(err.to_string().contains("mkdir -p"));
    }
}
