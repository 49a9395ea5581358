//! `volsnap repair index`: the index rebuilt from the packs alone.
//!
//! Packs describe themselves (their header, checked with the pack against
//! its name), so a lost, truncated or poisoned index is recoverable: every
//! present pack is read, each blob it lists is kept only if its stored
//! bytes check out where this process can check them (contents need an
//! identity in an encrypted repository; the write key opens headers), and
//! new index objects describing them are written, superseding every index
//! object found. The old ones are deleted last. A kill at any point leaves
//! a readable repository: before the new index is written nothing changed,
//! after it the old objects are superseded; running it again finishes.

use super::id::Id;
use super::index::{IndexFile, IndexedPack, INDEX_BLOBS};
use super::lock::{acquire, LockKind};
use super::Repository;
use crate::cancel::Cancel;
use anyhow::Result;
use serde::Serialize;
use std::collections::HashMap;

/// What a repair did.
#[derive(Debug, Default, Serialize)]
pub struct Repaired {
    /// Packs read and described.
    pub packs: usize,
    pub blobs: usize,
    /// Index objects written, and the old ones they replaced.
    pub indexes_written: usize,
    pub indexes_replaced: usize,
    /// Packs that could not be read (damaged), and blobs left out because
    /// their stored bytes do not match what the header says: why, each.
    pub left_out: Vec<String>,
}

pub fn repair_index(repo: &Repository, host: &str, cancel: &Cancel) -> Result<Repaired> {
    // Other prunes and repairs stay out; backups go on (a pack one uploads
    // meanwhile is described twice at worst, which readers accept).
    let lock = acquire(
        repo.backend().clone(),
        repo.sealing_shared(),
        LockKind::Exclusive,
        host,
        "repair index",
    )?;
    let old = repo.index_ids()?;
    // The recipient set of each pack, where a readable old index says it
    // (it only groups rewrites; nothing reads contents by it).
    let mut recipients: HashMap<Id, Option<Id>> = HashMap::new();
    for id in &old {
        if let Ok(file) = repo.read_index(id) {
            for pack in file.packs {
                recipients.entry(pack.id).or_insert(pack.recipients);
            }
        }
    }
    let mut repaired = Repaired::default();
    let mut batch: Vec<IndexedPack> = Vec::new();
    let mut in_batch = 0;
    let mut packs: Vec<Id> = repo.pack_ids()?.into_iter().collect();
    packs.sort();
    for pack in packs {
        cancel.check()?;
        let (bytes, header) = match repo.read_pack(&pack) {
            Ok(read) => read,
            Err(e) if crate::backend::is_missing(&e) => continue,
            Err(e) => {
                repaired.left_out.push(format!("pack {pack}: {e:#}"));
                continue;
            }
        };
        let mut blobs = Vec::with_capacity(header.blobs.len());
        for entry in &header.blobs {
            let stored = bytes.get(entry.offset as usize..(entry.offset + entry.length) as usize);
            match stored.map(|s| repo.check_packed_blob(&header, entry, s)) {
                Some(Ok(())) => blobs.push(entry.clone()),
                Some(Err(e)) => repaired
                    .left_out
                    .push(format!("blob {} of pack {pack}: {e:#}", entry.id)),
                None => repaired.left_out.push(format!(
                    "blob {} of pack {pack}: outside the pack",
                    entry.id
                )),
            }
        }
        repaired.packs += 1;
        repaired.blobs += blobs.len();
        in_batch += blobs.len();
        batch.push(IndexedPack {
            id: pack,
            size: bytes.len() as u64,
            blobs,
            keys: header.keys,
            recipients: recipients.get(&pack).copied().flatten(),
        });
        if in_batch >= INDEX_BLOBS {
            save(repo, &mut batch, &old)?;
            repaired.indexes_written += 1;
            in_batch = 0;
        }
    }
    if !batch.is_empty() || repaired.indexes_written == 0 {
        save(repo, &mut batch, &old)?;
        repaired.indexes_written += 1;
    }
    #[cfg(feature = "fault-injection")]
    crate::fault::point("repair-after-index-written");
    for id in &old {
        let name = format!("index/{id}");
        // Object Lock may keep an old index: it stays, superseded.
        if repo.retained_until(&name)?.is_none() {
            match repo.backend().delete(&name) {
                Err(e) if !crate::backend::is_missing(&e) => return Err(e),
                _ => {}
            }
        }
        repaired.indexes_replaced += 1;
        #[cfg(feature = "fault-injection")]
        crate::fault::point("repair-mid-deletion");
    }
    lock.release()?;
    Ok(repaired)
}

fn save(repo: &Repository, batch: &mut Vec<IndexedPack>, old: &[Id]) -> Result<()> {
    repo.save_index(&IndexFile {
        packs: std::mem::take(batch),
        supersedes: old.to_vec(),
    })?;
    Ok(())
}
