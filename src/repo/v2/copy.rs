//! Copies backups between format-2 repositories that name and cut blobs
//! the same way: two plain repositories, or an encrypted one and a
//! repository made from it with `init --like`. Packs travel as raw
//! objects, so a copy decrypts nothing, recompresses nothing and needs no
//! identity: a write-only host replicates its own backups off-site.
//!
//! Order, so that a kill at any instant leaves nothing that looks
//! complete: packs first, then the index describing them, then one commit
//! object per backup. Packs and indexes a killed copy left behind are
//! garbage that prune collects.

use super::id::Id;
use super::index::{IndexFile, IndexedPack};
use super::lock::{acquire, LockKind};
use super::objects::Commit;
use super::Repository;
use crate::cancel::Cancel;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use super::index::INDEX_BLOBS;

/// What a copy did.
#[derive(Debug, Default, Serialize)]
pub struct Copied {
    /// Backups copied, by id.
    pub copied: Vec<String>,
    /// Backups asked for that the destination held already.
    pub present: Vec<String>,
    /// Packs sent, and their bytes.
    pub packs_sent: usize,
    pub bytes_sent: u64,
    /// Packs the destination held already (or whose every blob it held).
    pub packs_skipped: usize,
    pub seconds: f64,
}

/// Fails (usage) unless packs of `from` mean the same in `to`: same blob
/// ids, same chunking, same keys.
pub fn check_compatible(from: &Repository, to: &Repository) -> Result<()> {
    let (a, b) = (&from.config, &to.config);
    let advice = format!(
        "create the destination with volsnap init --repo DEST --like {}",
        from.backend().location()
    );
    if a.id == b.id {
        return Err(crate::usage!(
            "{} and {} are the same repository",
            from.backend().location(),
            to.backend().location()
        ));
    }
    if a.ids != b.ids || a.chunker != b.chunker || a.tree_chunker != b.tree_chunker {
        return Err(crate::usage!(
            "{} cuts or names blobs differently from {}: a copy would not deduplicate; {advice}",
            to.backend().location(),
            from.backend().location()
        ));
    }
    let key = |r: &Repository| r.keys().map(|k| k.params.write_key_id);
    if key(from) != key(to) {
        return Err(crate::usage!(
            "{} and {} do not share keys (one is encrypted and the other not, or they have different write keys), so packs cannot be copied as they are; {advice}",
            from.backend().location(),
            to.backend().location()
        ));
    }
    Ok(())
}

/// How a pack of the source reaches the destination.
enum Route {
    /// The destination has it (same name).
    Present,
    /// The destination has every blob of it, in these packs.
    Covered(Vec<Id>),
    /// It is sent.
    Send,
}

/// Copies `commits` of `from` into `to` (see the module's comment);
/// backups the destination holds already (same id) are left alone.
pub fn copy(
    from: &Repository,
    to: &Repository,
    commits: Vec<(Id, Commit)>,
    host: &str,
    cancel: &Cancel,
) -> Result<Copied> {
    check_compatible(from, to)?;
    let clock = Instant::now();
    let mut report = Copied::default();
    // Shared locks on both sides: a prune of the source does not delete
    // what is being read, one of the destination waits for the commits.
    let source_lock = acquire(
        from.backend().clone(),
        from.sealing_shared(),
        LockKind::Shared,
        host,
        "copy (source)",
    )?;
    let lock = acquire(
        to.backend().clone(),
        to.sealing_shared(),
        LockKind::Shared,
        host,
        "copy",
    )?;
    sync_key_objects(from, to)?;
    // An unsigned backup's attestations (`host adopt`) go with it.
    let attested: HashSet<String> = commits
        .iter()
        .filter(|(_, c)| c.signature.is_none())
        .filter_map(|(_, c)| crate::repo::attest::backup_digest(c).ok())
        .collect();

    // Every blob each backup uses, through the source's index as it is now
    // (a prune may have rewritten or deleted the packs the commit lists).
    let from_index = from.load_index()?;
    let mut blobs_of: Vec<HashSet<Id>> = Vec::with_capacity(commits.len());
    for (_, commit) in &commits {
        let mut blobs = HashSet::new();
        super::gc::commit_blobs(from, &from_index, commit, cancel, &mut blobs)?;
        blobs_of.push(blobs);
    }
    // A backup is there when a commit of the destination is that backup
    // (same id, host, start and manifests) and the destination's index
    // places every blob it uses; a commit that merely claims it is not.
    let there = to.commits()?;
    let to_index = to.load_index()?;
    let (commits, present): (Vec<_>, Vec<_>) =
        commits
            .into_iter()
            .zip(blobs_of)
            .partition(|((_, c), blobs)| {
                !(there.iter().any(|(_, t)| t.same_backup(c))
                    && blobs.iter().all(|b| to_index.get(b).is_some()))
            });
    report.present = present.into_iter().map(|((_, c), _)| c.id).collect();
    crate::repo::attest::copy_attestations(
        from.backend().as_ref(),
        to.backend().as_ref(),
        &attested,
    )?;
    if commits.is_empty() {
        lock.release()?;
        source_lock.release()?;
        report.seconds = clock.elapsed().as_secs_f64();
        return Ok(report);
    }
    let mut needs: Vec<HashSet<Id>> = Vec::with_capacity(commits.len());
    for ((_, commit), blobs) in &commits {
        let mut packs = HashSet::new();
        for blob in blobs {
            let at = from_index.get(blob).with_context(|| {
                format!(
                    "backup {} uses blob {blob}, which no index of {} places in a present pack; run volsnap verify --repo {} --all",
                    crate::text::escape(&commit.id),
                    from.backend().location(),
                    from.backend().location()
                )
            })?;
            packs.insert(from_index.pack_id(&at));
        }
        needs.push(packs);
    }
    let commits: Vec<(Id, Commit)> = commits.into_iter().map(|(c, _)| c).collect();
    let wanted: HashSet<Id> = needs.iter().flatten().copied().collect();
    let described = described_packs(from, &wanted)?;
    let routes = plan_routes(to, &wanted, &described)?;
    let mut sending: Vec<&IndexedPack> = routes
        .iter()
        .filter(|(_, r)| matches!(r, Route::Send))
        .map(|(p, _)| &described[p])
        .collect();
    sending.sort_by_key(|p| p.id);
    report.packs_skipped = routes.len() - sending.len();

    send_packs(from, to, &sending, cancel, &mut report)?;
    for group in index_groups(&sending) {
        to.save_index(&IndexFile {
            packs: group.into_iter().cloned().collect(),
            supersedes: Vec::new(),
        })?;
    }
    #[cfg(feature = "fault-injection")]
    crate::fault::point("copy-before-commits");

    // As a backup's commit: a concurrent prune of the destination may have
    // deleted a pack a copied backup relies on; then nothing is committed.
    let landed = to.pack_ids()?;
    for ((_, mut commit), needed) in commits.into_iter().zip(needs) {
        cancel.check()?;
        let mut packs: Vec<Id> = Vec::new();
        for p in &needed {
            match &routes[p] {
                Route::Present | Route::Send => packs.push(*p),
                Route::Covered(holders) => packs.extend(holders.iter().copied()),
            }
        }
        packs.sort();
        packs.dedup();
        if let Some(gone) = packs.iter().find(|p| !landed.contains(p)) {
            bail!(
                "pack {gone} of backup {} left {} while copying (a concurrent prune?); backups committed so far: {}; run the copy again",
                commit.id,
                to.backend().location(),
                if report.copied.is_empty() { "none".to_string() } else { report.copied.join(", ") }
            );
        }
        commit.packs = packs;
        to.save_commit(&commit)?;
        report.copied.push(commit.id.clone());
    }
    lock.release()?;
    source_lock.release()?;
    report.seconds = clock.elapsed().as_secs_f64();
    Ok(report)
}

/// The key objects (wrapped write key material, passphrase objects) of
/// the source that the destination lacks: after a key rotation or a
/// recipient change at the source, the destination opens the same way.
fn sync_key_objects(from: &Repository, to: &Repository) -> Result<()> {
    if from.keys().is_none() {
        return Ok(());
    }
    let have: HashSet<String> = to
        .backend()
        .list("keys")?
        .into_iter()
        .map(|o| o.name)
        .collect();
    for object in from.backend().list("keys")? {
        if !have.contains(&object.name) {
            let bytes = from.backend().read(&object.name)?;
            to.backend().write(&object.name, &bytes)?;
        }
    }
    Ok(())
}

/// The source's index entries of the `wanted` packs; fails naming a pack
/// no index describes (the source is damaged: verify it).
fn described_packs(from: &Repository, wanted: &HashSet<Id>) -> Result<HashMap<Id, IndexedPack>> {
    let mut found: HashMap<Id, IndexedPack> = HashMap::new();
    for id in from.index_ids()? {
        for pack in from.read_index(&id)?.packs {
            if wanted.contains(&pack.id) {
                found.entry(pack.id).or_insert(pack);
            }
        }
    }
    if let Some(missing) = wanted.iter().find(|p| !found.contains_key(p)) {
        bail!(
            "no index of {} describes pack {missing}, which a backup to copy uses; run volsnap verify --repo {} --all",
            from.backend().location(),
            from.backend().location()
        );
    }
    Ok(found)
}

/// Whether each wanted pack is sent, or the destination has its blobs.
fn plan_routes(
    to: &Repository,
    wanted: &HashSet<Id>,
    described: &HashMap<Id, IndexedPack>,
) -> Result<HashMap<Id, Route>> {
    let index = to.load_index()?;
    let present = to.pack_ids()?;
    // Packs a prune condemned are on their way out: never relied on.
    let condemned = to.condemned()?;
    let usable = |p: &Id| present.contains(p) && !condemned.contains(p);
    let mut routes = HashMap::new();
    for pack in wanted {
        let route = if usable(pack) {
            Route::Present
        } else {
            let holders: Option<HashSet<Id>> = described[pack]
                .blobs
                .iter()
                .map(|blob| {
                    index
                        .copies(&blob.id)
                        .map(|at| index.pack_id(&at))
                        .find(|p| usable(p))
                })
                .collect();
            match holders {
                Some(holders) => Route::Covered(holders.into_iter().collect()),
                None => Route::Send,
            }
        };
        routes.insert(*pack, route);
    }
    Ok(routes)
}

/// Packs in flight at once: one each for a local copy is plenty; servers
/// answer each request after a round trip.
fn senders(from: &Repository, to: &Repository) -> usize {
    if from.backend().is_remote() || to.backend().is_remote() {
        6
    } else {
        2
    }
}

/// Sends the packs, each checked against its name before it is written.
fn send_packs(
    from: &Repository,
    to: &Repository,
    packs: &[&IndexedPack],
    cancel: &Cancel,
    report: &mut Copied,
) -> Result<()> {
    let next = Mutex::new(packs.iter());
    let sent = Mutex::new((0usize, 0u64));
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..senders(from, to).min(packs.len().max(1)) {
            scope.spawn(|| loop {
                if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                    return;
                }
                let Some(pack) = next.lock().ok().and_then(|mut it| it.next()) else {
                    return;
                };
                let result = (|| -> Result<u64> {
                    cancel.check()?;
                    let name = Repository::pack_name(&pack.id);
                    let bytes = from.backend().read(&name)?;
                    if Id::digest(&bytes) != pack.id {
                        bail!(
                            "{name} in {} does not match its name (damaged or tampered with); nothing of it was copied",
                            from.backend().location()
                        );
                    }
                    to.backend()
                        .write(&name, &bytes)
                        .with_context(|| format!("cannot write {name} to {}", to.backend().location()))?;
                    Ok(bytes.len() as u64)
                })();
                match result {
                    Ok(n) => {
                        if let Ok(mut s) = sent.lock() {
                            s.0 += 1;
                            s.1 += n;
                        }
                    }
                    Err(e) => {
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let (packs_sent, bytes_sent) = sent.into_inner().unwrap_or_default();
    report.packs_sent = packs_sent;
    report.bytes_sent = bytes_sent;
    Ok(())
}

/// Packs grouped so that no index object describes many more than
/// [`INDEX_BLOBS`] blobs.
fn index_groups<'p>(packs: &[&'p IndexedPack]) -> Vec<Vec<&'p IndexedPack>> {
    let mut groups: Vec<Vec<&IndexedPack>> = Vec::new();
    let mut blobs = 0;
    for pack in packs {
        if groups.is_empty() || blobs >= INDEX_BLOBS {
            groups.push(Vec::new());
            blobs = 0;
        }
        blobs += pack.blobs.len();
        groups.last_mut().expect("pushed above").push(pack);
    }
    groups
}
