//! `verify`: checks a backup against its own checksums and its archives'
//! entry lists against the manifest, and with `--deep` every file's content
//! against the manifest too.

use crate::archive::{entry_path, hash_content, link_target, ArchiveReader, EntryChecker};
use crate::cancel::Cancel;
use crate::hashing::sha256_file;
use crate::repo::manifest::{parse_sums, EntryKind, Manifest, MANIFEST_FILE, SUMS_FILE};
use anyhow::Result;
use std::path::Path;

/// Marker file: when the backup last verified (written by whoever checked).
pub const VERIFIED_FILE: &str = "VERIFIED";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct VerifiedMarker {
    verified_at: chrono::DateTime<chrono::Utc>,
    deep: bool,
}

/// Notes that the backup in `dir` just verified. Best effort: a read-only
/// repository can still be verified, it just cannot remember it.
pub fn record_verified(dir: &Path, deep: bool) {
    let marker = VerifiedMarker {
        verified_at: chrono::Utc::now(),
        deep,
    };
    let path = dir.join(VERIFIED_FILE);
    let written = serde_json::to_vec(&marker)
        .map_err(anyhow::Error::from)
        .and_then(|text| crate::fsutil::replace_file(&path, &text));
    if let Err(e) = written {
        tracing::info!(
            "cannot record the verification in {}: {e:#}",
            path.display()
        );
    }
}

/// When the backup in `dir` last verified, if it ever did.
pub fn verified_at(dir: &Path) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = std::fs::read(dir.join(VERIFIED_FILE)).ok()?;
    serde_json::from_slice::<VerifiedMarker>(&text)
        .ok()
        .map(|m| m.verified_at)
}

/// What verification found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Each problem names what differs. Empty means the backup is intact.
    pub problems: Vec<String>,
    pub archives_checked: usize,
    pub files_checked: u64,
}

/// How much `verify` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// SHA256SUMS, the manifest, each archive's SHA-256. For callers that
    /// read every entry right after anyway (restore, drill).
    Checksums,
    /// Also every archive's entry list (names, kinds, link targets) against
    /// the manifest: plain `verify`, and what retention trusts.
    Entries,
    /// Also every file's content against its SHA-256 (`verify --deep`).
    Deep,
}

/// Verifies the backup in `dir`.
pub fn verify(dir: &Path, level: Level, cancel: &Cancel) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let sums = match std::fs::read_to_string(dir.join(SUMS_FILE)) {
        Ok(text) => match parse_sums(&text) {
            Ok(s) => s,
            Err(e) => {
                report.problems.push(format!("{e:#}"));
                Vec::new()
            }
        },
        Err(e) => {
            report
                .problems
                .push(format!("cannot read {SUMS_FILE}: {e}"));
            Vec::new()
        }
    };
    for (expected, name) in &sums {
        cancel.check()?;
        if name.contains('/') || name.starts_with('.') {
            report.problems.push(format!(
                "{SUMS_FILE} names {name:?}, which is not a file of this backup"
            ));
            continue;
        }
        match sha256_file(&dir.join(name)) {
            Ok(actual) if &actual == expected => report.archives_checked += 1,
            Ok(actual) => report.problems.push(format!(
                "{name}: SHA-256 is {actual}, {SUMS_FILE} says {expected}"
            )),
            Err(e) => report.problems.push(format!("{name}: cannot read: {e}")),
        }
    }
    if !sums.iter().any(|(_, n)| n == MANIFEST_FILE) {
        report
            .problems
            .push(format!("{MANIFEST_FILE} is not covered by {SUMS_FILE}"));
    }
    let manifest = match Manifest::load(&dir.join(MANIFEST_FILE)) {
        Ok(m) => m,
        Err(e) => {
            report.problems.push(format!("{e:#}"));
            return Ok(report);
        }
    };
    for volume in &manifest.volumes {
        match sums.iter().find(|(_, n)| n == &volume.archive) {
            None => report.problems.push(format!(
                "{}: archive {} is not listed in {SUMS_FILE}",
                volume.name, volume.archive
            )),
            Some((digest, _)) if digest != &volume.sha256 => report.problems.push(format!(
                "{}: {SUMS_FILE} and the manifest disagree on the SHA-256 of {}",
                volume.name, volume.archive
            )),
            Some(_) => {}
        }
    }
    if level >= Level::Entries {
        for volume in &manifest.volumes {
            match entries_check(dir, &manifest, volume, level == Level::Deep, cancel) {
                Ok(files) => report.files_checked += files,
                Err(e) if e.is::<crate::error::Cancelled>() => return Err(e),
                Err(e) => report.problems.push(format!("{e:#}")),
            }
        }
    }
    Ok(report)
}

/// Streams one archive and checks every entry, and with `content` every
/// file's SHA-256. The archive's own SHA-256 is checked at the end, so an
/// archive is read once whatever the level.
fn entries_check(
    dir: &Path,
    manifest: &Manifest,
    volume: &crate::repo::manifest::VolumeRecord,
    content: bool,
    cancel: &Cancel,
) -> Result<u64> {
    let mut reader = ArchiveReader::open(&dir.join(&volume.archive), manifest.compression)?;
    let mut checker = EntryChecker::new(volume)?;
    let mut files = 0;
    for entry in reader.archive().entries()? {
        cancel.check()?;
        let mut entry =
            entry.map_err(|e| anyhow::anyhow!("{}: archive is corrupt: {e}", volume.name))?;
        let tar_type = entry.header().entry_type();
        if tar_type == tar::EntryType::XGlobalHeader {
            continue;
        }
        let path = entry_path(&entry);
        let record = checker.check(&path, tar_type)?;
        if matches!(record.kind, EntryKind::Symlink | EntryKind::Hardlink) {
            let target = link_target(&entry, record.kind);
            checker.check_link(record, target.as_deref())?;
        }
        let path = String::from_utf8_lossy(&path);
        if record.kind == EntryKind::File && !content {
            if entry.size() != record.size {
                anyhow::bail!(
                    "{}: file {path} is {} bytes in the archive, the manifest says {}",
                    volume.name,
                    entry.size(),
                    record.size
                );
            }
            continue;
        }
        if let Some(expected) = &record.sha256 {
            let (actual, len) = hash_content(&mut entry)
                .map_err(|e| anyhow::anyhow!("{}: cannot read {path}: {e}", volume.name))?;
            if len != record.size {
                anyhow::bail!(
                    "{}: file {path} holds {len} of its {} bytes; the archive is truncated or corrupt",
                    volume.name,
                    record.size
                );
            }
            if &actual != expected {
                anyhow::bail!("{}: file {path} differs from the manifest (SHA-256 {actual}, expected {expected})", volume.name);
            }
            files += 1;
        }
    }
    checker.finish()?;
    let (digest, _) = reader.finish()?;
    if digest != volume.sha256 {
        anyhow::bail!(
            "{}: archive SHA-256 is {digest}, the manifest says {}",
            volume.name,
            volume.sha256
        );
    }
    Ok(files)
}
