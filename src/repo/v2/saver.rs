//! Saving blobs: deduplicated against the repository's index, compressed
//! on worker threads, gathered into packs of one kind, each pack stored as
//! soon as it is full. What a backup saved is described by one index
//! object written at the end ([`BlobSaver::finish`]), after its packs.

use super::id::{Id, IdSet};
use super::index::{Index, IndexFile, IndexedPack};
use super::pack::{BlobKind, PackWriter};
use super::Repository;
use anyhow::{anyhow, Result};
use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Blobs waiting for a worker (each at most the chunker's maximum).
const QUEUE: usize = 8;

use super::index::INDEX_BLOBS;

/// A blob for a worker: its id, kind and plaintext.
type Work = (Id, BlobKind, Arc<Vec<u8>>);

/// What a finished saver leaves for the commit.
pub struct Saved {
    /// The packs this run wrote that no index object written during the
    /// run describes yet (the caller writes it).
    pub index: IndexFile,
    /// Every pack the saved blobs live in: new ones and those deduplicated
    /// against.
    pub referenced: HashSet<Id>,
    pub new_blobs: u64,
    pub new_bytes: u64,
}

struct Shared {
    repo: Arc<Repository>,
    packs: Mutex<[Option<PackWriter>; 3]>,
    /// Packs stored and not yet in an index object.
    written: Mutex<Vec<IndexedPack>>,
    /// Every pack this run stored.
    stored: Mutex<Vec<Id>>,
    stored_bytes: Mutex<u64>,
}

pub struct BlobSaver {
    index: Arc<Index>,
    /// Packs condemned by a prune's mark: their blobs count as absent.
    condemned: HashSet<Id>,
    /// Blobs sent to the workers by this run.
    queued: IdSet,
    referenced: HashSet<Id>,
    sender: Option<SyncSender<Work>>,
    workers: Vec<JoinHandle<Result<()>>>,
    shared: Arc<Shared>,
    new_blobs: u64,
}

fn slot(kind: BlobKind) -> usize {
    match kind {
        BlobKind::Data => 0,
        BlobKind::Tree => 1,
        BlobKind::Refs => 2,
    }
}

impl BlobSaver {
    pub fn new(
        repo: Arc<Repository>,
        index: Arc<Index>,
        condemned: HashSet<Id>,
        level: i32,
        threads: usize,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            repo,
            packs: Mutex::new([None, None, None]),
            written: Mutex::new(Vec::new()),
            stored: Mutex::new(Vec::new()),
            stored_bytes: Mutex::new(0),
        });
        let (sender, receiver) = sync_channel(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut workers = Vec::new();
        for n in 0..threads.max(1) {
            let (shared, receiver) = (shared.clone(), receiver.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("compress-{n}"))
                    .spawn(move || work(&shared, &receiver, level))?,
            );
        }
        Ok(Self {
            index,
            condemned,
            queued: IdSet::default(),
            referenced: HashSet::new(),
            sender: Some(sender),
            workers,
            shared,
            new_blobs: 0,
        })
    }

    /// Saves one blob (unless the repository or this run has it); its id.
    pub fn save(&mut self, kind: BlobKind, plain: Vec<u8>) -> Result<Id> {
        self.save_shared(kind, Arc::new(plain))
    }

    /// The repository the blobs go to (its blob ids are keyed when
    /// encrypted).
    pub fn repository(&self) -> Arc<Repository> {
        self.shared.repo.clone()
    }

    /// As [`BlobSaver::save`], for bytes someone else reads too.
    pub fn save_shared(&mut self, kind: BlobKind, plain: Arc<Vec<u8>>) -> Result<Id> {
        let id = self.shared.repo.blob_id(&plain);
        self.save_with_id(id, kind, plain)?;
        Ok(id)
    }

    /// As [`BlobSaver::save`], for a caller that hashed the blob already.
    pub fn save_with_id(&mut self, id: Id, kind: BlobKind, plain: Arc<Vec<u8>>) -> Result<()> {
        if self.queued.contains(&id) {
            return Ok(());
        }
        if let Some(pack) = self.known_pack(&id) {
            self.referenced.insert(pack);
            return Ok(());
        }
        self.queued.insert(id);
        self.new_blobs += 1;
        let sender = self.sender.as_ref().expect("saver used after finish");
        if sender.send((id, kind, plain)).is_err() {
            // A worker stopped: its error says why.
            return Err(self
                .join_workers()
                .err()
                .unwrap_or_else(|| anyhow!("the compression workers stopped unexpectedly")));
        }
        Ok(())
    }

    /// The pack holding `id`, when the repository has it in a live pack.
    fn known_pack(&self, id: &Id) -> Option<Id> {
        self.index
            .copies(id)
            .map(|at| self.index.pack_id(&at))
            .find(|pack| !self.condemned.contains(pack))
    }

    /// Whether the repository or this run has the blob (for reusing a
    /// parent's chunks without reading the file again).
    pub fn has(&mut self, id: &Id) -> bool {
        if self.queued.contains(id) {
            return true;
        }
        match self.known_pack(id) {
            Some(pack) => {
                self.referenced.insert(pack);
                true
            }
            None => false,
        }
    }

    fn join_workers(&mut self) -> Result<()> {
        self.sender = None;
        let mut first_error = None;
        for worker in self.workers.drain(..) {
            let outcome = worker
                .join()
                .unwrap_or_else(|_| Err(anyhow!("a compression worker panicked")));
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Waits for every blob to be packed, stores the last packs; what was
    /// saved. The index object is the caller's to write.
    pub fn finish(mut self) -> Result<Saved> {
        self.join_workers()?;
        let open: Vec<PackWriter> = {
            let mut packs = self
                .shared
                .packs
                .lock()
                .map_err(|_| anyhow!("pack state poisoned"))?;
            packs.iter_mut().filter_map(Option::take).collect()
        };
        for pack in open.into_iter().filter(|p| !p.is_empty()) {
            store(&self.shared, pack)?;
        }
        let written = std::mem::take(
            &mut *self
                .shared
                .written
                .lock()
                .map_err(|_| anyhow!("pack state poisoned"))?,
        );
        let mut referenced = std::mem::take(&mut self.referenced);
        referenced.extend(
            self.shared
                .stored
                .lock()
                .map_err(|_| anyhow!("pack state poisoned"))?
                .iter()
                .copied(),
        );
        let new_bytes = *self
            .shared
            .stored_bytes
            .lock()
            .map_err(|_| anyhow!("pack state poisoned"))?;
        Ok(Saved {
            index: IndexFile {
                packs: written,
                supersedes: Vec::new(),
            },
            referenced,
            new_blobs: self.new_blobs,
            new_bytes,
        })
    }
}

impl Drop for BlobSaver {
    fn drop(&mut self) {
        let _ = self.join_workers();
    }
}

/// A worker: compresses blobs and adds them to the open pack of their
/// kind; whoever fills a pack stores it (outside the lock).
fn work(shared: &Shared, receiver: &Mutex<Receiver<Work>>, level: i32) -> Result<()> {
    // One compressor and one output buffer per worker, reused blob after blob.
    let mut compressor = zstd::bulk::Compressor::new(level)?;
    let mut out: Vec<u8> = Vec::new();
    // This worker's content key (encrypted repositories): a fresh one
    // every few thousand blobs, so workers never contend for one.
    let mut content_key = None;
    let keys = shared.repo.keys();
    loop {
        let next = match receiver.lock() {
            Ok(r) => r.recv(),
            Err(_) => return Err(anyhow!("blob queue poisoned")),
        };
        let Ok((id, kind, plain)) = next else {
            return Ok(()); // the saver finished
        };
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(plain.len()));
        compressor
            .compress_to_buffer(&plain[..], &mut out)
            .map_err(|e| anyhow!("zstd compression failed: {e}"))?;
        let zstd = out.len() < plain.len();
        let payload: &[u8] = if zstd { &out } else { &plain };
        let sealed = match keys {
            Some(keys) => {
                let flag = [u8::from(zstd)];
                Some(keys.seal_blob(kind, &id, &[&flag, payload], &mut content_key)?)
            }
            None => None,
        };
        let full = {
            let mut packs = shared
                .packs
                .lock()
                .map_err(|_| anyhow!("pack state poisoned"))?;
            // A new buffer for every pack: one kept for the next pack
            // cost 40 MiB of resident memory for a page fault per 4 KiB.
            let open =
                packs[slot(kind)].get_or_insert_with(|| PackWriter::with_buffer(kind, Vec::new()));
            match &sealed {
                Some((stored, key)) => {
                    open.add_sealed(id, stored, plain.len() as u64, key.as_deref())
                }
                None => open.add_encoded(id, zstd, payload, plain.len() as u64),
            }
            if open.is_full() {
                packs[slot(kind)].take()
            } else {
                None
            }
        };
        drop(plain);
        if let Some(pack) = full {
            store(shared, pack)?;
        }
    }
}

fn store(shared: &Shared, pack: PackWriter) -> Result<()> {
    let (id, bytes, header) = pack.finish(shared.repo.sealing())?;
    shared.repo.save_pack(&id, &bytes)?;
    #[cfg(feature = "fault-injection")]
    crate::fault::point("v2-pack-stored");
    let size = bytes.len() as u64;
    if let Ok(mut total) = shared.stored_bytes.lock() {
        *total += size;
    }
    shared
        .stored
        .lock()
        .map_err(|_| anyhow!("pack state poisoned"))?
        .push(id);
    let full = {
        let mut written = shared
            .written
            .lock()
            .map_err(|_| anyhow!("pack state poisoned"))?;
        let recipients = match header.keys.is_empty() {
            true => None,
            false => shared
                .repo
                .keys()
                .and_then(|k| k.recipients.as_ref())
                .map(|r| r.digest()),
        };
        written.push(IndexedPack {
            id,
            size,
            blobs: header.blobs,
            keys: header.keys,
            recipients,
        });
        let blobs: usize = written.iter().map(|p| p.blobs.len()).sum();
        (blobs >= INDEX_BLOBS).then(|| std::mem::take(&mut *written))
    };
    if let Some(packs) = full {
        shared.repo.save_index(&IndexFile {
            packs,
            supersedes: Vec::new(),
        })?;
    }
    Ok(())
}

/// Blob ids by pack, for readers that fetch whole packs.
pub fn by_pack(index: &Index, blobs: impl IntoIterator<Item = Id>) -> HashMap<Id, Vec<Id>> {
    let mut out: HashMap<Id, Vec<Id>> = HashMap::new();
    for blob in blobs {
        if let Some(at) = index.get(&blob) {
            out.entry(index.pack_id(&at)).or_default().push(blob);
        }
    }
    out
}
