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

/// Verifies a format-2 backup. Every level reads the volume records and
/// manifest streams (each tree blob checked against its id, each stream
/// against its SHA-256) and checks that every chunk a file lists is in the
/// index, in a pack that exists with the size the index gives; `Deep` also
/// reads every chunk and checks each file's SHA-256. Problems name the
/// volume and file, and go on to the next file.
pub fn verify_chunked(
    repo: &crate::repo::v2::Repository,
    commit: &crate::repo::v2::objects::Commit,
    level: Level,
    cancel: &Cancel,
) -> Result<VerifyReport> {
    use crate::repo::manifest::VolumeRecord;
    use crate::repo::v2::tree::{TreeEntry, TreeReader};
    use sha2::{Digest, Sha256};
    let mut report = VerifyReport::default();
    let index = repo.load_index()?;
    let present: std::collections::HashMap<String, u64> = repo
        .backend()
        .list("data")?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    let mut pack_ok: std::collections::HashMap<crate::repo::v2::id::Id, bool> = Default::default();
    for volume in &commit.volumes {
        cancel.check()?;
        report.archives_checked += 1;
        let mut record = TreeReader::new(repo, &index, &volume.record, volume.record_sha256);
        match record.next_line::<VolumeRecord>().and_then(|r| {
            record.next_line::<VolumeRecord>()?;
            Ok(r)
        }) {
            Ok(Some(r)) if r.name == volume.name => {}
            Ok(_) => report.problems.push(format!(
                "{}: its volume record is missing or names another volume",
                volume.name
            )),
            Err(e) => report.problems.push(format!(
                "{}: its volume record cannot be read: {e:#}",
                volume.name
            )),
        }
        let mut lines = TreeReader::new(repo, &index, &volume.tree, volume.tree_sha256);
        loop {
            cancel.check()?;
            let line = match lines.next_line::<TreeEntry>() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => {
                    report.problems.push(format!(
                        "{}: its manifest cannot be read: {e:#}",
                        volume.name
                    ));
                    break;
                }
            };
            if line.entry.kind != EntryKind::File {
                continue;
            }
            report.files_checked += 1;
            let mut missing = None;
            for chunk in &line.chunks {
                let Some(at) = index.get(chunk) else {
                    missing = Some(format!("chunk {chunk} is in no pack"));
                    break;
                };
                let pack = index.pack_id(&at);
                let ok = *pack_ok.entry(pack).or_insert_with(|| {
                    let size = index.packs[at.pack as usize].1;
                    present.get(&crate::repo::v2::Repository::pack_name(&pack)) == Some(&size)
                });
                if !ok {
                    missing = Some(format!("pack {pack} is missing or has the wrong size"));
                    break;
                }
            }
            if let Some(why) = missing {
                report
                    .problems
                    .push(format!("{}: file {}: {why}", volume.name, line.entry.path));
                continue;
            }
            if level == Level::Deep {
                let mut hasher = Sha256::new();
                let mut size = 0u64;
                let mut failed = None;
                for chunk in &line.chunks {
                    match repo.read_blob(&index, chunk) {
                        Ok(bytes) => {
                            size += bytes.len() as u64;
                            hasher.update(&bytes);
                        }
                        Err(e) => {
                            failed = Some(format!("{e:#}"));
                            break;
                        }
                    }
                }
                let digest = hex::encode(hasher.finalize());
                let problem = match failed {
                    Some(e) => Some(e),
                    None if size != line.entry.size => Some(format!(
                        "holds {size} bytes, its manifest says {}",
                        line.entry.size
                    )),
                    None if Some(&digest) != line.entry.sha256.as_ref() => {
                        Some("its content does not match its SHA-256".into())
                    }
                    None => None,
                };
                if let Some(p) = problem {
                    report
                        .problems
                        .push(format!("{}: file {}: {p}", volume.name, line.entry.path));
                }
            }
        }
    }
    Ok(report)
}

/// Verifies backup `id` (exactly that id) of the repository at `root`,
/// whatever its format; marks a format-1 backup verified when it passes.
pub fn verify_by_id(root: &Path, id: &str, level: Level, cancel: &Cancel) -> Result<VerifyReport> {
    match crate::repo::detect(root) {
        crate::repo::Format::Tar => {
            let dir = crate::repo::Repo::open(root)?.backup_dir(id);
            let report = verify(&dir, level, cancel)?;
            if report.problems.is_empty() {
                record_verified(&dir, level == Level::Deep);
            }
            Ok(report)
        }
        crate::repo::Format::Chunked => {
            let repo = crate::repo::open_chunked(root)?;
            let scope = crate::repo::Scope {
                host: String::new(),
                selection: None,
            };
            let (_, commit) = crate::repo::resolve_chunked(&repo, id, &scope)?;
            verify_chunked(&repo, &commit, level, cancel)
        }
    }
}
