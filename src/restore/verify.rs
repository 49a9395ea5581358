//! `verify`: checks a backup against its own checksums and its archives'
//! entry lists against the manifest, and with `--deep` every file's content
//! against the manifest too.

use crate::archive::{entry_path, hash_content, link_target, ArchiveReader, EntryChecker};
use crate::cancel::Cancel;
use crate::hashing::sha256_file;
use crate::repo::manifest::{parse_sums, EntryKind, Manifest, MANIFEST_FILE, SUMS_FILE};
use crate::repo::notes::{Note, NotesAt};
use crate::repo::v2::id::Id;
use crate::repo::v2::index::Index;
use crate::repo::v2::objects::Commit;
use crate::repo::v2::pack::BlobEntry;
use crate::repo::v2::Repository;
use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::path::Path;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct VerifiedMarker {
    verified_at: chrono::DateTime<chrono::Utc>,
    deep: bool,
}

/// Notes that a backup just verified. Best effort: a read-only repository
/// can still be verified, it just cannot remember it.
pub fn record_verified(at: &NotesAt, deep: bool) {
    let marker = VerifiedMarker {
        verified_at: chrono::Utc::now(),
        deep,
    };
    let written = serde_json::to_vec(&marker)
        .map_err(anyhow::Error::from)
        .and_then(|text| at.write(Note::Verified, &text));
    if let Err(e) = written {
        tracing::info!("cannot record the verification: {e:#}");
    }
}

/// A verification failed: the backup no longer counts as verified (`list`
/// drops its V, retention stops treating it as the newest that verifies).
pub fn forget_verified(at: &NotesAt) {
    if let Err(e) = at.remove(Note::Verified) {
        tracing::warn!(
            "cannot remove the verified mark of a backup that failed verification: {e:#}"
        );
    }
}

/// When a backup last verified, if it ever did.
pub fn verified_at(at: &NotesAt) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = at.read(Note::Verified)?;
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
    /// Chunks checked through the refs lists, by a host holding only the
    /// write key of an encrypted repository (which cannot see files).
    pub chunks_checked: u64,
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

/// What a format-2 check knows of the packs: the sizes a listing of `data/`
/// gives, those found damaged when read whole, and (cached) whether each
/// pack a backup needs is usable.
pub(crate) struct PackFacts {
    pub listed: HashMap<Id, u64>,
    pub damaged: HashMap<Id, String>,
    /// Blobs of packs the indexes name but the listing lacks, by pack
    /// (filled by the whole-repository check, to name the lost pack).
    pub lost: HashMap<Id, Id>,
    usable: HashMap<Id, Option<String>>,
}

impl PackFacts {
    pub fn list(repo: &Repository) -> Result<Self> {
        let listed = repo
            .backend()
            .list("data")?
            .into_iter()
            .filter_map(|o| Some((Id::parse(o.name.rsplit('/').next()?).ok()?, o.size)))
            .collect();
        Ok(Self {
            listed,
            damaged: HashMap::new(),
            lost: HashMap::new(),
            usable: HashMap::new(),
        })
    }

    /// Why the pack of `pack` (whose index entry is `(id, size)`) cannot
    /// serve its blobs, if it cannot.
    fn problem(&mut self, pack: Id, size: u64) -> Option<String> {
        let (listed, damaged) = (&self.listed, &self.damaged);
        self.usable
            .entry(pack)
            .or_insert_with(|| match (listed.get(&pack), damaged.get(&pack)) {
                (_, Some(why)) => Some(format!("pack {pack} is damaged ({why})")),
                (Some(&listed), None) if listed == size => None,
                (Some(&listed), None) => Some(format!(
                    "pack {pack} holds {listed} bytes, its index says {size}"
                )),
                (None, None) => Some(format!("pack {pack} is missing")),
            })
            .clone()
    }
}

/// Verifies a format-2 backup. Every level reads the volume records and
/// manifest streams (each tree blob checked against its id, each stream
/// against its SHA-256) and checks that every chunk a file lists is in the
/// index, in a pack that exists with the size the index gives; `Deep` also
/// reads every chunk and checks each file's SHA-256. Problems name the
/// volume and file, and go on to the next file.
pub fn verify_chunked(
    repo: &Repository,
    commit: &Commit,
    level: Level,
    cancel: &Cancel,
) -> Result<VerifyReport> {
    let index = repo.load_index()?;
    let mut facts = PackFacts::list(repo)?;
    let mut report = VerifyReport::default();
    check_commit(repo, &index, &mut facts, commit, level, cancel, &mut report)?;
    Ok(report)
}

/// Checks one commit into `report` (see [`verify_chunked`]).
pub(crate) fn check_commit(
    repo: &Repository,
    index: &Index,
    facts: &mut PackFacts,
    commit: &Commit,
    level: Level,
    cancel: &Cancel,
    report: &mut VerifyReport,
) -> Result<()> {
    use crate::repo::manifest::VolumeRecord;
    use crate::repo::v2::tree::{TreeEntry, TreeReader};
    use sha2::{Digest, Sha256};
    if !repo.can_read_contents() {
        if level == Level::Deep {
            repo.require_contents()?;
        }
        return check_commit_structure(repo, index, facts, commit, cancel, report);
    }
    for volume in &commit.volumes {
        cancel.check()?;
        report.archives_checked += 1;
        let mut record = TreeReader::new(repo, index, &volume.record, volume.record_sha256);
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
        let mut lines = TreeReader::new(repo, index, &volume.tree, volume.tree_sha256);
        let mut blobs = repo.blob_reader(index)?;
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
                    missing = Some(match facts.lost.get(chunk) {
                        Some(pack) => format!("pack {pack} is missing"),
                        None => format!("chunk {chunk} is in no pack"),
                    });
                    break;
                };
                let (pack, size) = index.packs[at.pack as usize];
                if let Some(why) = facts.problem(pack, size) {
                    missing = Some(why);
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
                    match blobs.read(chunk) {
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
    Ok(())
}

/// What a host holding only the write key of an encrypted repository can
/// check of a backup: every tree, record and refs blob, and every chunk the
/// refs list, is in the index, in a pack present at its size; the refs
/// blobs themselves are read and authenticated.
fn check_commit_structure(
    repo: &Repository,
    index: &Index,
    facts: &mut PackFacts,
    commit: &Commit,
    cancel: &Cancel,
    report: &mut VerifyReport,
) -> Result<()> {
    let mut place = |blob: &Id| -> Option<String> {
        let Some(at) = index.get(blob) else {
            return Some(match facts.lost.get(blob) {
                Some(pack) => format!("pack {pack} is missing"),
                None => format!("blob {blob} is in no pack"),
            });
        };
        let (pack, size) = index.packs[at.pack as usize];
        facts.problem(pack, size)
    };
    for volume in &commit.volumes {
        cancel.check()?;
        report.archives_checked += 1;
        let Some(refs) = &volume.refs else {
            report
                .problems
                .push(format!("{}: it lists no chunk list (refs)", volume.name));
            continue;
        };
        let mut problem = volume
            .tree
            .iter()
            .chain(&volume.record)
            .chain(refs)
            .find_map(&mut place);
        for piece in refs {
            if problem.is_some() {
                break;
            }
            cancel.check()?;
            match repo
                .read_blob(index, piece)
                .and_then(|b| crate::repo::v2::tree::parse_refs(&b))
            {
                Ok(chunks) => {
                    report.chunks_checked += chunks.len() as u64;
                    problem = chunks.iter().find_map(&mut place);
                }
                Err(e) => problem = Some(format!("its chunk list cannot be read: {e:#}")),
            }
        }
        if let Some(why) = problem {
            report.problems.push(format!("{}: {why}", volume.name));
        }
    }
    Ok(())
}

/// What `verify --all` found in a format-2 repository.
#[derive(Debug, Default)]
pub struct RepositoryReport {
    pub backups: usize,
    pub files: u64,
    /// Chunks checked through refs lists (a host without an identity).
    pub chunks: u64,
    /// Packs the indexes name.
    pub packs: usize,
    pub packs_read: usize,
    pub bytes_read: u64,
    /// Packs no index names: left by killed backups; the next prune
    /// collects them. Not a problem.
    pub unindexed: usize,
    pub problems: Vec<String>,
}

/// `verify --all`: every index (checked against its name), every pack it
/// names present at its size, `read_percent` of those packs read whole (a
/// random sample: each blob decompressed and checked against its id, the
/// header against the index), then every backup's structure, so that a
/// damaged or missing pack is named with the backups and files it affects.
pub fn verify_repository(
    repo: &Repository,
    read_percent: f64,
    cancel: &Cancel,
) -> Result<RepositoryReport> {
    let mut report = RepositoryReport::default();
    let mut facts = PackFacts::list(repo)?;
    let mut files = Vec::new();
    let mut index_trouble = false;
    for id in repo.index_ids()? {
        match repo.read_index(&id) {
            Ok(file) => files.push((id, file)),
            Err(e) => {
                report.problems.push(format!("index {id}: {e:#}"));
                index_trouble = true;
            }
        }
    }
    let superseded: HashSet<Id> = files
        .iter()
        .flat_map(|(_, f)| f.supersedes.iter().copied())
        .collect();
    let mut indexed: HashMap<Id, (u64, Vec<BlobEntry>)> = HashMap::new();
    for (id, file) in files.into_iter().filter(|(id, _)| !superseded.contains(id)) {
        for pack in file.packs {
            match facts.listed.get(&pack.id) {
                None => {
                    report
                        .problems
                        .push(format!("pack {} (in index {id}) is missing", pack.id));
                    for blob in &pack.blobs {
                        facts.lost.insert(blob.id, pack.id);
                    }
                }
                Some(&size) if size != pack.size => report.problems.push(format!(
                    "pack {} holds {size} bytes, index {id} says {}",
                    pack.id, pack.size
                )),
                Some(_) => {}
            }
            indexed.insert(pack.id, (pack.size, pack.blobs));
        }
    }
    report.packs = indexed.len();
    report.unindexed = facts
        .listed
        .keys()
        .filter(|p| !indexed.contains_key(p))
        .count();

    // The sample: packs in the order of a keyed hash under a fresh key.
    let mut key = [0u8; 32];
    crate::fsutil::random_bytes(&mut key)?;
    let mut sample: Vec<Id> = indexed
        .keys()
        .filter(|p| facts.listed.contains_key(p))
        .copied()
        .collect();
    sample.sort_by_key(|p| *blake3::keyed_hash(&key, &p.0).as_bytes());
    let take = ((sample.len() as f64) * read_percent / 100.0).ceil() as usize;
    for pack in sample.into_iter().take(take) {
        cancel.check()?;
        let blobs = &indexed[&pack].1;
        match read_whole_pack(repo, &pack, blobs) {
            Ok(bytes) => report.bytes_read += bytes,
            Err(e) => {
                let why = format!("{e:#}");
                report
                    .problems
                    .push(format!("pack {pack} is damaged: {why}"));
                facts.damaged.insert(pack, why);
            }
        }
        report.packs_read += 1;
    }

    let index = repo.load_index()?;
    for (_, commit) in repo.commits()? {
        let mut one = VerifyReport::default();
        if let Err(e) = check_commit(
            repo,
            &index,
            &mut facts,
            &commit,
            Level::Entries,
            cancel,
            &mut one,
        ) {
            cancel.check()?;
            one.problems.push(format!("{e:#}"));
        }
        report.backups += 1;
        report.files += one.files_checked;
        report.chunks += one.chunks_checked;
        report.problems.extend(
            one.problems
                .into_iter()
                .map(|p| format!("backup {}: {p}", commit.id)),
        );
    }
    index_trouble |= !index.quarantined.is_empty();
    if !report.problems.is_empty() && (index_trouble || report.unindexed > 0) {
        // Packs describe themselves: what an index lost, they still say.
        report.problems.push(format!(
            "the index is damaged or incomplete ({} pack(s) no index describes): volsnap repair index --repo {} rebuilds it from the packs",
            report.unindexed,
            repo.backend().location()
        ));
    }
    Ok(report)
}

/// Reads a pack whole and checks it: its bytes against its name, its header
/// against its index entry, every blob against its id. Its size.
fn read_whole_pack(repo: &Repository, pack: &Id, indexed: &[BlobEntry]) -> Result<u64> {
    let (bytes, header) = repo.read_pack(pack)?;
    if header.blobs != indexed {
        anyhow::bail!("its header and its index entry list different blobs");
    }
    for blob in &header.blobs {
        let stored = &bytes[blob.offset as usize..(blob.offset + blob.length) as usize];
        repo.check_packed_blob(&header, blob, stored)?;
    }
    Ok(bytes.len() as u64)
}

/// Verifies backup `id` (exactly that id) of the repository at `root`,
/// whatever its format; marks a format-1 backup verified when it passes.
pub fn verify_by_id(root: &Path, id: &str, level: Level, cancel: &Cancel) -> Result<VerifyReport> {
    match crate::repo::detect(root) {
        crate::repo::Format::Tar => {
            let dir = crate::repo::Repo::open(root)?.backup_dir(id);
            let report = verify(&dir, level, cancel)?;
            let at = NotesAt::Dir(dir);
            if report.problems.is_empty() {
                record_verified(&at, level == Level::Deep);
            } else {
                forget_verified(&at);
            }
            Ok(report)
        }
        crate::repo::Format::Chunked => {
            let repo = crate::repo::open_chunked(root)?;
            let scope = crate::repo::Scope {
                host: String::new(),
                selection: None,
            };
            let (object, commit) = crate::repo::resolve_chunked(&repo, id, &scope)?;
            let report = verify_chunked(&repo, &commit, level, cancel)?;
            let at = NotesAt::of_commit(&repo, object);
            if report.problems.is_empty() {
                record_verified(&at, level == Level::Deep);
            } else {
                forget_verified(&at);
            }
            Ok(report)
        }
    }
}
