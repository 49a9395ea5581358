//! Garbage collection after retention (docs/FORMAT.md, "Prune and garbage
//! collection"): which blobs the remaining backups use, which packs are
//! needed for them, rewriting packs that are mostly garbage, and the two
//! marks that keep a prune from deleting what a running backup is about
//! to reference.

use super::id::Id;
use super::index::{IndexFile, IndexedPack};
use super::lock::{acquire, live_locks, LockKind};
use super::objects::Mark;
use super::pack::{BlobEntry, BlobKind, PackWriter};
use super::tree::{TreeEntry, TreeReader};
use super::Repository;
use crate::cancel::Cancel;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// A pack still needed whose unused bytes reach this share of it is
/// rewritten: its used blobs are copied into new packs and it is condemned.
pub const REPACK_UNUSED_SHARE: f64 = 0.25;

/// What garbage collection did.
#[derive(Debug, Default, Serialize)]
pub struct Collected {
    /// Packs no remaining backup needs, newly condemned by a mark
    /// (rewritten ones included).
    pub packs_condemned: usize,
    /// Packs partly used, whose used blobs were copied into new packs.
    pub packs_rewritten: usize,
    pub bytes_rewritten: u64,
    /// Packs deleted: condemned by a mark old enough, and needed by nothing.
    pub packs_deleted: usize,
    pub bytes_freed: u64,
    /// Condemned packs Object Lock does not let go yet (immutable
    /// repositories), and when the last of them may go.
    pub packs_retained: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retained_until: Option<chrono::DateTime<chrono::Utc>>,
    /// How long the deleting phase held the exclusive lock (which keeps
    /// out other prunes only: backups go on meanwhile).
    pub exclusive_ms: u64,
    /// Why deletion waits for a later prune, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postponed: Option<String>,
}

/// A temporary object this old belongs to a write that was killed.
const TEMPORARY_AGE: Duration = Duration::from_secs(3600);

/// A mark must be this old before its packs go: every backup that was
/// running when it was written has refreshed its lock since (and so read
/// the marks), or has ended. Tests shorten it (fault-injection builds only).
fn mark_age() -> Duration {
    #[cfg(feature = "fault-injection")]
    if let Some(secs) = std::env::var("VOLSNAP_TEST_MARK_AGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return Duration::from_secs(secs);
    }
    super::lock::REFRESH * 2
}

/// The repository's packs as the indexes and the listing describe them.
///
/// Garbage collection trusts no single index object: a pack's blobs are the
/// union of what every index (superseded ones too) says of it, so an index
/// that omits or `supersedes` away a pack cannot make it look unused; a
/// present pack no index describes is read, and described by its own
/// header (checked against its name), before anything counts it as garbage.
struct Packs {
    /// Every pack present, with its size.
    listed: HashMap<Id, u64>,
    /// The blobs of every present pack, as described.
    blobs: HashMap<Id, Vec<BlobEntry>>,
    /// Where each blob is: every present pack holding it.
    places: HashMap<Id, Vec<Id>>,
    /// The recipient set of each present pack (encrypted repositories).
    recipients: HashMap<Id, Option<Id>>,
    /// Present packs described only by superseded index objects: what a
    /// reader (which obeys `supersedes`) cannot find.
    hidden: HashSet<Id>,
    /// Present packs no index describes (read and described by their
    /// headers here; `repair index` indexes them).
    unindexed: Vec<Id>,
}

impl Packs {
    fn read(repo: &Repository, cancel: &Cancel) -> Result<Self> {
        let listed: HashMap<Id, u64> = repo
            .backend()
            .list("data")?
            .into_iter()
            .filter_map(|o| Some((Id::parse(o.name.rsplit('/').next()?).ok()?, o.size)))
            .collect();
        let mut files = Vec::new();
        for id in repo.index_ids()? {
            let file = repo.read_index(&id).with_context(|| {
                format!("prune relies on every index and cannot read index {id}; nothing was collected (run volsnap repair index --repo {})", repo.backend().location())
            })?;
            files.push((id, file));
        }
        let superseded: HashSet<Id> = files
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().copied())
            .collect();
        let mut blobs: HashMap<Id, Vec<BlobEntry>> = HashMap::new();
        let mut recipients = HashMap::new();
        let mut live: HashSet<Id> = HashSet::new();
        for (id, file) in files {
            for pack in file.packs {
                if listed.get(&pack.id) != Some(&pack.size) {
                    continue;
                }
                if !superseded.contains(&id) {
                    live.insert(pack.id);
                }
                recipients.entry(pack.id).or_insert(pack.recipients);
                let known = blobs.entry(pack.id).or_default();
                for blob in pack.blobs {
                    if !known.contains(&blob) {
                        known.push(blob);
                    }
                }
            }
        }
        let hidden = blobs
            .keys()
            .filter(|p| !live.contains(p))
            .copied()
            .collect();
        let mut unindexed = Vec::new();
        let undescribed: Vec<Id> = listed
            .keys()
            .filter(|p| !blobs.contains_key(p))
            .copied()
            .collect();
        for pack in &undescribed {
            cancel.check()?;
            // Packs describe themselves: what this one holds is read before
            // it can count as garbage. One that cannot be read (damaged,
            // or mid-upload) holds nothing a reader could use.
            match repo.read_pack(pack) {
                Ok((_, header)) => {
                    blobs.insert(*pack, header.blobs);
                    recipients.insert(*pack, None);
                    unindexed.push(*pack);
                }
                Err(e) => tracing::debug!(
                    "pack {pack} is described by no index and cannot be read: {e:#}"
                ),
            }
        }
        let mut places: HashMap<Id, Vec<Id>> = HashMap::new();
        for (pack, entries) in &blobs {
            for blob in entries {
                places.entry(blob.id).or_default().push(*pack);
            }
        }
        Ok(Self {
            listed,
            blobs,
            places,
            recipients,
            hidden,
            unindexed,
        })
    }

    /// What garbage collection relies on, checked before it condemns
    /// anything: every used blob has a place in a present pack, a reader can
    /// find it (no `supersedes` hides it), and no pack that holds a used blob
    /// is given up for another copy before that copy's content is proven.
    fn prove(
        &self,
        repo: &Repository,
        used: &HashSet<Id>,
        needed: &HashSet<Id>,
        cancel: &Cancel,
    ) -> Result<()> {
        let location = repo.backend().location();
        let repair = format!("nothing was condemned or deleted; run volsnap verify --repo {location} --all, and volsnap repair index --repo {location} to rebuild the index from the packs");
        let missing: Vec<&Id> = used
            .iter()
            .filter(|b| !self.places.contains_key(b))
            .collect();
        if let Some(first) = missing.first() {
            anyhow::bail!(
                "{} blob(s) that kept backups use are in no present pack (blob {first}, among others): the repository is damaged; {repair}",
                missing.len()
            );
        }
        if let Some(pack) = self.hidden.iter().find(|p| {
            self.blobs[*p].iter().any(|b| used.contains(&b.id))
                && self.blobs[*p].iter().any(|b| {
                    used.contains(&b.id)
                        && self.places[&b.id].iter().all(|q| self.hidden.contains(q))
                })
        }) {
            anyhow::bail!(
                "an index object supersedes the description of pack {pack}, which kept backups use: damaged or tampered with, and not obeyed; {repair}"
            );
        }
        if let Some(pack) = self.unindexed.iter().find(|p| {
            self.blobs[*p].iter().any(|b| {
                used.contains(&b.id)
                    && self.places[&b.id]
                        .iter()
                        .all(|q| self.unindexed.contains(q))
            })
        }) {
            anyhow::bail!(
                "pack {pack} holds blobs kept backups use, and no index describes it; {repair}"
            );
        }
        // Copies kept in place of a pack given up: proven by content.
        let mut to_prove: HashMap<Id, HashSet<Id>> = HashMap::new();
        for (pack, entries) in &self.blobs {
            if needed.contains(pack) {
                continue;
            }
            for blob in entries.iter().filter(|b| used.contains(&b.id)) {
                let kept = self.places[&blob.id]
                    .iter()
                    .find(|q| needed.contains(q))
                    .with_context(|| {
                        format!("internal error: blob {} has no needed pack", blob.id)
                    })?;
                to_prove.entry(*kept).or_default().insert(blob.id);
            }
        }
        for (pack, ids) in to_prove {
            cancel.check()?;
            let (bytes, header) = repo.read_pack(&pack).with_context(|| {
                format!("pack {pack} is to keep the only copy of blobs another pack also holds, and cannot be read; {repair}")
            })?;
            for id in ids {
                let proven = header.blobs.iter().filter(|e| e.id == id).any(|e| {
                    bytes
                        .get(e.offset as usize..(e.offset + e.length) as usize)
                        .is_some_and(|stored| repo.check_packed_blob(&header, e, stored).is_ok())
                });
                if !proven {
                    anyhow::bail!(
                        "an index says pack {pack} holds blob {id}, but the pack does not (damaged or tampered with): prune would have given up another copy for it; {repair}"
                    );
                }
            }
        }
        Ok(())
    }

    /// (used bytes, all blob bytes) of a pack.
    fn usage(&self, pack: &Id, used: &HashSet<Id>) -> (u64, u64) {
        self.blobs.get(pack).map_or((0, 0), |entries| {
            entries.iter().fold((0, 0), |(u, t), b| {
                (
                    u + if used.contains(&b.id) { b.length } else { 0 },
                    t + b.length,
                )
            })
        })
    }

    /// The packs that keep every used blob, chosen fullest first (so a
    /// copy made by a rewrite is kept over the pack it was copied from);
    /// ties go by id, so the choice is the same run after run.
    fn needed(&self, used: &HashSet<Id>) -> HashSet<Id> {
        let mut order: Vec<(f64, Id)> = self
            .blobs
            .keys()
            .map(|p| {
                let (u, t) = self.usage(p, used);
                (if t == 0 { 0.0 } else { u as f64 / t as f64 }, *p)
            })
            .filter(|(share, _)| *share > 0.0)
            .collect();
        order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut covered: HashSet<Id> = HashSet::new();
        let mut needed = HashSet::new();
        for (_, pack) in order {
            let mut adds = false;
            for blob in &self.blobs[&pack] {
                if used.contains(&blob.id) && covered.insert(blob.id) {
                    adds = true;
                }
            }
            if adds {
                needed.insert(pack);
            }
        }
        needed
    }

    /// The packs of `doomed` that may go: each used blob they hold is also
    /// in a present pack outside `doomed`. The rest stay (for now).
    fn deletable(&self, doomed: &HashSet<Id>, used: &HashSet<Id>) -> HashSet<Id> {
        let mut out = doomed.clone();
        loop {
            let keep: Vec<Id> = out
                .iter()
                .filter(|p| {
                    self.blobs.get(p).is_some_and(|entries| {
                        entries.iter().any(|b| {
                            used.contains(&b.id)
                                && !self.places[&b.id].iter().any(|q| !out.contains(q))
                        })
                    })
                })
                .copied()
                .collect();
            if keep.is_empty() {
                return out;
            }
            for p in keep {
                out.remove(&p);
            }
        }
    }
}

/// Every blob the remaining backups use: their manifests' tree blobs,
/// volume records, and every file's chunks. A manifest that cannot be read
/// stops the collection: its chunks could be anywhere.
fn used_blobs(repo: &Repository, cancel: &Cancel) -> Result<HashSet<Id>> {
    let index = repo.load_index()?;
    // Garbage is what no index describes: with an index set aside, what it
    // described would count as garbage. Refuse rather than guess.
    if let Some((id, why)) = index.quarantined.first() {
        anyhow::bail!(
            "index {id} of {} failed its checks ({why}); prune deletes nothing while an index is damaged or tampered with",
            repo.backend().location()
        );
    }
    let mut used = HashSet::new();
    for (_, commit) in repo.commits_unchecked()? {
        commit_blobs(repo, &index, &commit, cancel, &mut used)?;
    }
    Ok(used)
}

/// The bytes of the blobs that only the backups `going` (commit objects)
/// use: what deleting them lets garbage collection free, before packs are
/// rewritten. Lengths come from the index (saturating: an index may lie).
pub(crate) fn bytes_only_used_by(
    repo: &Repository,
    going: &HashSet<Id>,
    cancel: &Cancel,
) -> Result<u64> {
    if going.is_empty() {
        return Ok(0);
    }
    let index = repo.load_index()?;
    let (mut stays, mut goes) = (HashSet::new(), HashSet::new());
    for (object, commit) in repo.commits_unchecked()? {
        let used = if going.contains(&object) {
            &mut goes
        } else {
            &mut stays
        };
        commit_blobs(repo, &index, &commit, cancel, used)?;
    }
    Ok(goes
        .difference(&stays)
        .filter_map(|blob| index.get(blob))
        .fold(0u64, |sum, at| sum.saturating_add(at.length)))
}

/// How many blobs backup `commit` uses that the index does not place in a
/// present pack (its trees unreadable count as one): a backup counts for
/// retention only when this is 0.
pub(crate) fn missing_blobs(
    repo: &Repository,
    index: &super::index::Index,
    commit: &super::objects::Commit,
    cancel: &Cancel,
) -> Result<usize> {
    let mut used = HashSet::new();
    if let Err(e) = commit_blobs(repo, index, commit, cancel, &mut used) {
        cancel.check()?;
        tracing::debug!("backup {} is incomplete: {e:#}", commit.id);
        return Ok(1);
    }
    Ok(used.iter().filter(|b| index.get(b).is_none()).count())
}

/// Adds every blob backup `commit` uses to `used`: its manifests' tree
/// blobs, volume records, and every file's chunks (through the refs lists
/// in an encrypted repository, readable with the write key).
pub(super) fn commit_blobs(
    repo: &Repository,
    index: &super::index::Index,
    commit: &super::objects::Commit,
    cancel: &Cancel,
    used: &mut HashSet<Id>,
) -> Result<()> {
    let id = crate::text::escape(&commit.id);
    for volume in &commit.volumes {
        let name = crate::text::escape(&volume.name);
        used.extend(volume.tree.iter().copied());
        used.extend(volume.record.iter().copied());
        if let Some(refs) = &volume.refs {
            for piece in refs {
                cancel.check()?;
                used.insert(*piece);
                let bytes = repo.read_blob(index, piece).with_context(|| {
                    format!(
                        "cannot read the chunk list of backup {id} (volume {name}); nothing was done (volsnap verify --all names the damage)"
                    )
                })?;
                used.extend(super::tree::parse_refs(&bytes)?);
            }
            continue;
        }
        if repo.keys().is_some() {
            anyhow::bail!("backup {id} (volume {name}) lists no chunk list; nothing was done");
        }
        let mut lines = TreeReader::new(repo, index, &volume.tree, volume.tree_sha256);
        while let Some(line) = lines.next_line::<TreeEntry>().with_context(|| {
            format!(
                "cannot read the manifest of backup {id} (volume {name}); nothing was done (volsnap verify --all names the damage)"
            )
        })? {
            cancel.check()?;
            used.extend(line.chunks);
        }
    }
    Ok(())
}

/// Copies the used blobs of `packs` into new packs (stored as they are,
/// each checked against its id first) and indexes them; bytes copied.
/// Blobs are copied into packs of their kind and their source pack's
/// recipient set, so that backups go on deduplicating against them.
fn rewrite(
    repo: &Repository,
    packs: &[Id],
    recipients: &HashMap<Id, Option<Id>>,
    used: &HashSet<Id>,
    cancel: &Cancel,
) -> Result<u64> {
    type Group = (BlobKind, Option<Id>);
    let mut writers: HashMap<Group, PackWriter> = HashMap::new();
    let mut written: Vec<IndexedPack> = Vec::new();
    let mut copied = 0;
    let store =
        |writer: PackWriter, set: Option<Id>, written: &mut Vec<IndexedPack>| -> Result<()> {
            let (id, bytes, header) = writer.finish(repo.sealing())?;
            repo.save_pack(&id, &bytes)?;
            written.push(IndexedPack {
                id,
                size: bytes.len() as u64,
                blobs: header.blobs,
                keys: header.keys,
                recipients: set,
            });
            Ok(())
        };
    let mut done: HashSet<Id> = HashSet::new();
    for pack in packs {
        cancel.check()?;
        let (bytes, header) = repo.read_pack(pack)?;
        let set = recipients.get(pack).copied().flatten();
        for blob in header.blobs.iter().filter(|b| used.contains(&b.id)) {
            if !done.insert(blob.id) {
                continue;
            }
            let stored = &bytes[blob.offset as usize..(blob.offset + blob.length) as usize];
            repo.check_packed_blob(&header, blob, stored)
                .with_context(|| format!("rewriting pack {pack}"))?;
            let wrapped = header.wrapped_key(blob);
            let writer = writers
                .entry((blob.kind, set))
                .or_insert_with(|| PackWriter::new(blob.kind));
            if repo.keys().is_some() {
                writer.add_sealed(blob.id, stored, blob.raw_length, wrapped.as_deref());
            } else {
                writer.add_encoded(blob.id, stored[0] != 0, &stored[1..], blob.raw_length);
            }
            copied += blob.length;
            if writer.is_full() {
                let full = writers.remove(&(blob.kind, set)).expect("just used");
                store(full, set, &mut written)?;
            }
        }
    }
    for ((_, set), writer) in writers.into_iter().filter(|(_, w)| !w.is_empty()) {
        store(writer, set, &mut written)?;
    }
    if !written.is_empty() {
        // The copies now carry blobs of backups that are retained.
        let names: Vec<String> = written
            .iter()
            .map(|p| Repository::pack_name(&p.id))
            .collect();
        repo.retain(&names)?;
        repo.save_index(&IndexFile {
            packs: written,
            supersedes: Vec::new(),
        })?;
    }
    Ok(copied)
}

/// Garbage collection, after retention deleted commit objects. Deletes
/// what old-enough marks condemned and nothing needs (under the exclusive
/// lock, which keeps out other prunes but no backup; postponed while a backup that started before the mark runs);
/// rewrites needed packs that are mostly garbage; condemns, in a new mark,
/// every pack nothing needs now. Every step can be killed and run again.
pub fn collect_garbage(repo: &Repository, host: &str, cancel: &Cancel) -> Result<Collected> {
    let mut collected = Collected::default();
    match repo.backend().sweep_temporaries(TEMPORARY_AGE) {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} temporary object(s) of writes killed half way"),
        Err(e) => tracing::warn!("cannot remove the temporary objects of killed writes: {e:#}"),
    }
    let used = used_blobs(repo, cancel)?;
    let packs = Packs::read(repo, cancel)?;
    let needed = packs.needed(&used);
    packs.prove(repo, &used, &needed, cancel)?;
    let unneeded: HashSet<Id> = packs
        .listed
        .keys()
        .filter(|p| !needed.contains(p))
        .copied()
        .collect();

    let now = repo.backend().now()?;
    let marks = repo.marks()?;
    let ripe: Vec<_> = marks
        .iter()
        .filter(|(_, written, _)| now.duration_since(*written).unwrap_or_default() >= mark_age())
        .collect();
    let mut still_condemned: HashSet<Id> = marks
        .iter()
        .filter(|(_, written, _)| now.duration_since(*written).unwrap_or_default() < mark_age())
        .flat_map(|(_, _, m)| m.condemned.iter().copied())
        .collect();
    let mut deleted: HashSet<Id> = HashSet::new();
    if !ripe.is_empty() {
        match acquire(
            repo.backend().clone(),
            repo.sealing_shared(),
            LockKind::Exclusive,
            host,
            "prune",
        ) {
            Err(e) => {
                collected.postponed = Some(format!("{e:#}"));
                still_condemned.extend(
                    ripe.iter()
                        .flat_map(|(_, _, m)| m.condemned.iter().copied()),
                );
            }
            Ok(lock) => {
                let held = std::time::Instant::now();
                let live = live_locks(&**repo.backend(), repo.sealing())?;
                let mut doomed: HashSet<Id> = HashSet::new();
                let mut done_marks = Vec::new();
                for (mark_id, written, mark) in &ripe {
                    let written_at: chrono::DateTime<chrono::Utc> = (*written).into();
                    // A backup that started before this mark may not have
                    // seen it: its packs wait.
                    if let Some((_, l)) = live
                        .iter()
                        .find(|(_, l)| l.kind == LockKind::Shared && l.created < written_at)
                    {
                        still_condemned.extend(mark.condemned.iter().copied());
                        collected.postponed = Some(format!(
                            "a run that started before those packs were marked still goes on ({} of {}, pid {}, since {}); a later prune deletes them",
                            l.command,
                            l.host,
                            l.pid,
                            l.created.format("%Y-%m-%d %H:%M:%S UTC")
                        ));
                        continue;
                    }
                    doomed.extend(
                        mark.condemned
                            .iter()
                            .filter(|p| unneeded.contains(p))
                            .copied(),
                    );
                    done_marks.push(*mark_id);
                }
                let mut gone = packs.deletable(&doomed, &used);
                // Immutable repositories: packs still retained stay indexed
                // and condemned, for a later prune.
                if repo.immutable_days().is_some() {
                    let mut kept = Vec::new();
                    for pack in &gone {
                        if let Some(until) = repo.retained_until(&Repository::pack_name(pack))? {
                            kept.push(*pack);
                            collected.retained_until = collected.retained_until.max(Some(until));
                        }
                    }
                    for pack in &kept {
                        gone.remove(pack);
                        still_condemned.insert(*pack);
                    }
                    // A mark stays while it condemns a pack that stays.
                    done_marks.retain(|id| {
                        ripe.iter()
                            .find(|(m, _, _)| m == id)
                            .is_none_or(|(_, _, mark)| {
                                !mark.condemned.iter().any(|p| kept.contains(p))
                            })
                    });
                    collected.packs_retained = kept.len();
                }
                // Out of the indexes first: a kill from here on leaves packs
                // nothing lists (deleted by the next prune), never an index
                // naming a pack that is gone.
                repo.drop_from_indexes(&gone)?;
                #[cfg(feature = "fault-injection")]
                crate::fault::point("prune-before-pack-deletion");
                for pack in &gone {
                    cancel.check()?;
                    repo.backend().delete(&Repository::pack_name(pack))?;
                    collected.packs_deleted += 1;
                    collected.bytes_freed += packs.listed.get(pack).copied().unwrap_or(0);
                    #[cfg(feature = "fault-injection")]
                    crate::fault::point("prune-mid-deletion");
                }
                deleted = gone;
                #[cfg(feature = "fault-injection")]
                crate::fault::point("prune-before-mark-deletion");
                for mark_id in done_marks {
                    repo.backend().delete(&format!("marks/{mark_id}"))?;
                }
                lock.release()?;
                collected.exclusive_ms = held.elapsed().as_millis() as u64;
            }
        }
    }

    // Needed packs mostly garbage, not condemned already: their used blobs
    // are copied, then they are condemned like the rest.
    let mut rewritten: Vec<Id> = needed
        .iter()
        .filter(|p| !still_condemned.contains(p))
        .filter(|p| {
            let (u, t) = packs.usage(p, &used);
            t > 0 && (t - u) as f64 >= REPACK_UNUSED_SHARE * t as f64
        })
        .copied()
        .collect();
    rewritten.sort();
    if !rewritten.is_empty() {
        collected.bytes_rewritten = rewrite(repo, &rewritten, &packs.recipients, &used, cancel)?;
        collected.packs_rewritten = rewritten.len();
        #[cfg(feature = "fault-injection")]
        crate::fault::point("prune-after-rewrite");
    }

    let mut fresh: Vec<Id> = unneeded
        .iter()
        .chain(rewritten.iter())
        .filter(|p| !still_condemned.contains(p) && !deleted.contains(p))
        .copied()
        .collect();
    if !fresh.is_empty() {
        fresh.sort();
        fresh.dedup();
        collected.packs_condemned = fresh.len();
        #[cfg(feature = "fault-injection")]
        crate::fault::point("prune-before-mark");
        repo.save_mark(&Mark {
            created: chrono::Utc::now(),
            condemned: fresh,
        })?;
    }
    Ok(collected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(id: Id, length: u64) -> BlobEntry {
        BlobEntry {
            id,
            kind: BlobKind::Data,
            offset: 0,
            length,
            raw_length: length,
            key: 0,
        }
    }

    fn packs(layout: &[(Id, Vec<BlobEntry>)]) -> Packs {
        let mut places: HashMap<Id, Vec<Id>> = HashMap::new();
        for (pack, entries) in layout {
            for b in entries {
                places.entry(b.id).or_default().push(*pack);
            }
        }
        Packs {
            listed: layout.iter().map(|(p, _)| (*p, 1)).collect(),
            blobs: layout.iter().cloned().collect(),
            places,
            recipients: HashMap::new(),
            hidden: HashSet::new(),
            unindexed: Vec::new(),
        }
    }

    #[test]
    fn a_copy_is_kept_over_the_half_used_pack_it_came_from_and_no_only_copy_goes() {
        let (x, y, z) = (Id::digest(b"x"), Id::digest(b"y"), Id::digest(b"z"));
        let (old, copy, other) = (
            Id::digest(b"old"),
            Id::digest(b"copy"),
            Id::digest(b"other"),
        );
        // `old` holds x (used) and y (garbage); `copy` holds x alone.
        let p = packs(&[
            (old, vec![blob(x, 10), blob(y, 10)]),
            (copy, vec![blob(x, 10)]),
            (other, vec![blob(z, 10)]),
        ]);
        let used: HashSet<Id> = [x, z].into_iter().collect();
        let needed = p.needed(&used);
        assert_eq!(needed, [copy, other].into_iter().collect());
        // Deleting old is safe (x lives on in copy); deleting both copies
        // of x at once is not: both stay.
        let doomed: HashSet<Id> = [old].into_iter().collect();
        assert_eq!(p.deletable(&doomed, &used), doomed);
        let both: HashSet<Id> = [old, copy].into_iter().collect();
        assert!(p.deletable(&both, &used).is_empty());
        // A pack of garbage only may always go.
        let used_z: HashSet<Id> = [z].into_iter().collect();
        assert_eq!(p.deletable(&both, &used_z), both);
    }
}
