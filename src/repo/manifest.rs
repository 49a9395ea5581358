//! The backup manifest (`manifest.json`) and `SHA256SUMS`: the repository
//! format, specified in docs/FORMAT.md. Bump [`FORMAT_VERSION`] on any
//! incompatible change and keep reading the old versions.

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

/// Version of the manifest format written by this build.
pub const FORMAT_VERSION: u32 = 1;
/// File name of the manifest inside a backup directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the checksum list inside a backup directory.
pub const SUMS_FILE: &str = "SHA256SUMS";

/// How a backup was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Cold,
    Online,
    Snapshot,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strategy::Cold => "cold",
            Strategy::Online => "online",
            Strategy::Snapshot => "snapshot",
        })
    }
}

/// Whether every volume shows one point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    Consistent,
    BestEffort,
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Consistency::Consistent => "consistent",
            Consistency::BestEffort => "best-effort",
        })
    }
}

/// Archive compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Zstd,
    Gzip,
    None,
}

impl Compression {
    /// File name suffix of an archive with this compression.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Zstd => "tar.zst",
            Compression::Gzip => "tar.gz",
            Compression::None => "tar",
        }
    }
}

/// Whether a volume is a Docker named volume or a bind-mounted host path,
/// or the stack's definition: its compose files and the files its
/// containers bind read-only, under their host paths (format 2 only;
/// written out only where the operator asks, `restore --definition-to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    Volume,
    Bind,
    Definition,
}

/// The name of the stack's definition in a backup (see [`VolumeKind`]).
pub const DEFINITION_NAME: &str = "stack-definition";

/// One container of the stack, as it was when backed up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub name: String,
    pub id: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Whether it was running when the backup started.
    pub was_running: bool,
    /// The id of the image it ran (`sha256:…`): what a rollback needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Compose's hash of the service's configuration, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// How it stopped for the backup, when it was stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopRecord>,
    /// Milliseconds from its start after the backup until it answered
    /// (healthy, and its `volsnap.ready` check passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_ms: Option<u64>,
}

/// How a container stopped for a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRecord {
    /// The seconds it was given before being killed.
    pub timeout_secs: u32,
    /// What it took.
    pub took_ms: u64,
    /// Its exit code.
    pub exit_code: i64,
    /// Still running when its time was up: killed (SIGKILL).
    pub killed: bool,
}

impl StopRecord {
    /// Whether it stopped as asked: by itself within its time, exiting 0
    /// (or 143, ended by the SIGTERM it was sent without handling it).
    pub fn clean(&self) -> bool {
        !self.killed && matches!(self.exit_code, 0 | 143)
    }
}

/// Where a volume is mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountUse {
    pub container: String,
    pub destination: String,
}

/// What kind of filesystem object an archive entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Fifo,
    CharDevice,
    BlockDevice,
}

/// One entry of a volume archive, in archive order.
///
/// File names are bytes. A name that is valid UTF-8 is stored as itself in
/// `path`; any other is stored byte for byte as lowercase hex in `path_hex`,
/// with `path` holding a readable rendering (invalid bytes as U+FFFD) that
/// is never used to find the file. The same holds for `target` and
/// `target_hex`. Use [`FileEntry::raw_path`] and [`FileEntry::raw_target`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the volume root; "." is the root itself.
    pub path: String,
    /// The path's bytes, hex, when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Size of the content stored (regular files only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// SHA-256 of the content stored (regular files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Symlink target, or for a hard link the path it links to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The target's bytes, hex, when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_hex: Option<String>,
}

/// Backup times volsnap could have written: from 1970 to 9999 (a clock
/// stepped back may end a backup before it started: that is kept). Anything else is refused where a backup is read,
/// so that no calendar arithmetic (retention's local days, schedules,
/// plots) meets a date at chrono's limits.
pub fn plausible_times(started: DateTime<Utc>, completed: DateTime<Utc>) -> Result<()> {
    use chrono::Datelike;
    for (what, t) in [("start", started), ("end", completed)] {
        if !(1970..=9999).contains(&t.year()) {
            bail!(
                "its {what} time {} is outside the years 1970 to 9999",
                t.to_rfc3339()
            );
        }
    }
    Ok(())
}

/// A name's bytes as the manifest stores them: (text, hex when not UTF-8).
pub fn encode_name(raw: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(raw) {
        Ok(text) => (text.to_string(), None),
        Err(_) => (
            String::from_utf8_lossy(raw).into_owned(),
            Some(hex::encode(raw)),
        ),
    }
}

fn decode_name<'a>(text: &'a str, hex_form: Option<&str>) -> Result<Cow<'a, [u8]>> {
    match hex_form {
        None => Ok(Cow::Borrowed(text.as_bytes())),
        Some(h) => hex::decode(h)
            .map(Cow::Owned)
            .with_context(|| format!("name {text:?} has a malformed hex form {h:?}")),
    }
}

impl FileEntry {
    /// The entry's path, byte for byte.
    pub fn raw_path(&self) -> Result<Cow<'_, [u8]>> {
        decode_name(&self.path, self.path_hex.as_deref())
    }

    /// The link target, byte for byte.
    pub fn raw_target(&self) -> Result<Option<Cow<'_, [u8]>>> {
        self.target
            .as_deref()
            .map(|t| decode_name(t, self.target_hex.as_deref()))
            .transpose()
    }

    /// Sets the path from its bytes.
    pub fn set_path(&mut self, raw: &[u8]) {
        (self.path, self.path_hex) = encode_name(raw);
    }

    /// Sets the link target from its bytes.
    pub fn set_target(&mut self, raw: &[u8]) {
        let (text, hex_form) = encode_name(raw);
        self.target = Some(text);
        self.target_hex = hex_form;
    }
}

/// Whether `name` is a name Docker accepts for a volume: one plain
/// component (`[A-Za-z0-9][A-Za-z0-9_.-]*`), so never `..` nor a path.
pub fn is_volume_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The one-component name a volume's data takes locally (a directory under
/// `--target-dir`, a member prefix in `export`, an archive's stem): the
/// volume name, or for a bind mount `bind-` and its path flattened.
/// Computed from the kind and name, never taken from a stored path.
pub fn local_name(kind: VolumeKind, name: &str) -> Result<String> {
    match kind {
        VolumeKind::Volume if is_volume_name(name) => Ok(name.to_string()),
        VolumeKind::Volume => bail!(
            "the backup names a volume {:?}, which is not a Docker volume name (damaged or tampered with)",
            crate::text::escape(name)
        ),
        VolumeKind::Bind => {
            let flat: String = name
                .trim_matches('/')
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            Ok(format!("bind-{flat}"))
        }
        VolumeKind::Definition if name == DEFINITION_NAME => Ok(DEFINITION_NAME.to_string()),
        VolumeKind::Definition => bail!(
            "the backup names its stack definition {:?}, not {DEFINITION_NAME} (damaged or tampered with)",
            crate::text::escape(name)
        ),
    }
}

impl VolumeRecord {
    /// See [`local_name`].
    pub fn local_name(&self) -> Result<String> {
        local_name(self.kind, &self.name)
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One volume and its archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Docker volume name, or for a bind mount its host path.
    pub name: String,
    pub kind: VolumeKind,
    /// Where the data was read from on the backed-up host.
    pub source_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub mounted_by: Vec<MountUse>,
    /// Archive file name inside the backup directory.
    pub archive: String,
    /// SHA-256 of the archive file.
    pub sha256: String,
    pub archive_bytes: u64,
    /// Number of regular files.
    pub files: u64,
    /// Bytes of regular-file content.
    pub bytes: u64,
    /// Files whose size, mtime or ctime changed while they were read.
    #[serde(default)]
    pub changed_during_read: Vec<String>,
    /// Files that disappeared between listing and reading.
    #[serde(default)]
    pub vanished_during_read: Vec<String>,
    /// Data inside the volume that is not in the archive (nested mounts,
    /// subvolumes, datasets), with why. Non-empty means best-effort.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    /// Exclude patterns applied on purpose (relative to the volume's root;
    /// from --exclude, the job or a `volsnap.exclude` label), and how many
    /// entries they left out: a restore lacks these by design.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub excluded_entries: u64,
    pub entries: Vec<FileEntry>,
}

/// The whole backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub id: String,
    pub started_at: DateTime<Utc>,
    pub completed_at: DateTime<Utc>,
    pub host: String,
    pub volsnap_version: String,
    /// The selection, as the user gave it (`--project milvus`).
    pub selection: String,
    pub strategy: Strategy,
    pub consistency: Consistency,
    /// Why the strategy was chosen (the plan's reason).
    pub reason: String,
    pub downtime_ms: u64,
    pub duration_ms: u64,
    pub compression: Compression,
    pub containers: Vec<ContainerRecord>,
    pub volumes: Vec<VolumeRecord>,
    /// Anything the operator should know: skipped tmpfs mounts, changes seen.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Format 2: the bytes this backup added to the repository (its new
    /// packs, after deduplication and compression). Format 1 stores its
    /// archives' sizes instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
}

impl Manifest {
    /// Reads and checks a manifest, refusing versions this build cannot read.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let probe: serde_json::Value = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not valid JSON (corrupt manifest)", path.display()))?;
        let version = probe.get("format_version").and_then(|v| v.as_u64());
        match version {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => bail!(
                "{} has manifest format version {v}; this volsnap reads version {FORMAT_VERSION}: use a newer volsnap",
                path.display()
            ),
            None => bail!("{} has no format_version (corrupt manifest)", path.display()),
        }
        let manifest: Manifest = serde_json::from_value(probe).with_context(|| {
            format!(
                "{} does not match the manifest format (corrupt manifest)",
                path.display()
            )
        })?;
        // Archive names are joined to the backup's directory: one plain
        // file name each, or a crafted one would be read from elsewhere.
        for v in &manifest.volumes {
            let plain = !v.archive.is_empty()
                && v.archive != "."
                && v.archive != ".."
                && !v.archive.contains('/')
                && !v.archive.contains('\0');
            if !plain {
                bail!(
                    "{} names the archive {:?} for volume {:?}, which is not a plain file name (damaged or tampered with)",
                    path.display(),
                    crate::text::escape(&v.archive),
                    crate::text::escape(&v.name)
                );
            }
        }
        if let Err(why) = plausible_times(manifest.started_at, manifest.completed_at) {
            bail!("{}: {why} (damaged or tampered with)", path.display());
        }
        Ok(manifest)
    }

    pub fn total_bytes(&self) -> u64 {
        self.volumes.iter().map(|v| v.bytes).sum()
    }

    pub fn archive_bytes(&self) -> u64 {
        self.volumes.iter().map(|v| v.archive_bytes).sum()
    }

    /// What the backup added to the repository: format 2's new packs, or
    /// format 1's archives.
    pub fn bytes_stored(&self) -> u64 {
        self.stored_bytes.unwrap_or_else(|| self.archive_bytes())
    }
}

/// Renders `SHA256SUMS` in the format `sha256sum -c` reads.
pub fn render_sums(entries: &[(String, String)]) -> String {
    entries
        .iter()
        .map(|(digest, name)| format!("{digest}  {name}\n"))
        .collect()
}

/// Parses `SHA256SUMS` into (digest, file name) pairs.
pub fn parse_sums(text: &str) -> Result<Vec<(String, String)>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let (digest, name) = line
                .split_once("  ")
                .or_else(|| line.split_once(" *"))
                .with_context(|| format!("{SUMS_FILE} line {} is malformed", i + 1))?;
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("{SUMS_FILE} line {} has no valid SHA-256", i + 1);
            }
            Ok((digest.to_ascii_lowercase(), name.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_times_past_what_volsnap_writes_are_refused() {
        let at = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc)
        };
        let now = at("2026-12-06T23:00:00Z");
        assert!(plausible_times(now, now).is_ok());
        // A clock stepped back during a backup: kept.
        assert!(plausible_times(now, at("2026-12-06T22:59:00Z")).is_ok());
        assert!(plausible_times(at("1969-12-31T23:59:59Z"), now).is_err());
        let far = DateTime::<Utc>::MAX_UTC;
        assert!(plausible_times(now, far).is_err());
        assert!(plausible_times(far, far).is_err());
    }

    #[test]
    fn sums_round_trip() {
        let entries = vec![
            ("a".repeat(64), "vol.tar.zst".to_string()),
            ("b".repeat(64), MANIFEST_FILE.to_string()),
        ];
        let text = render_sums(&entries);
        assert_eq!(parse_sums(&text).unwrap(), entries);
        assert!(parse_sums("xyz  file\n").is_err());
    }

    #[test]
    fn names_round_trip_byte_for_byte_and_never_collapse() {
        let names: [&[u8]; 5] = [
            b"plain",
            b"\xff",
            b"\xfe",
            "caf\u{e9}".as_bytes(),
            b"caf\xe9",
        ];
        let mut seen = std::collections::HashSet::new();
        for raw in names {
            let (text, hex_form) = encode_name(raw);
            assert_eq!(hex_form.is_some(), std::str::from_utf8(raw).is_err());
            let back = decode_name(&text, hex_form.as_deref()).unwrap();
            assert_eq!(&*back, raw);
            let json = serde_json::to_string(&(text, hex_form)).unwrap();
            assert!(seen.insert(json), "two names collapsed");
        }
        assert!(decode_name("x", Some("zz")).is_err());
    }

    #[test]
    fn unknown_manifest_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        std::fs::write(&path, r#"{"format_version": 99}"#).unwrap();
        let err = Manifest::load(&path).unwrap_err().to_string();
        assert!(err.contains("version 99"), "{err}");
        std::fs::write(&path, "{not json").unwrap();
        assert!(Manifest::load(&path)
            .unwrap_err()
            .to_string()
            .contains("corrupt"));
    }
}
