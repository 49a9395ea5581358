//! Reading files beside the walk (format 2). The walk lists, opens and
//! checks every file itself (relative to its directory's descriptor, no
//! symlink followed, fstat against the listing) and hands the open
//! descriptor here. Several threads then read, chunk and hash files at
//! once, so that a cold cache's disk round trips overlap and the walk
//! thread neither chunks nor hashes.
//!
//! Small files travel in batches, one message each way for many files:
//! one message per chunk cost more in thread wake-ups than the hashing.
//! What comes back is tagged with the file's line number; the emitter
//! writes lines in walk order whatever order the files finish in, so the
//! tree is the same however many threads read.

use super::chunk::Chunker;
use crate::cancel::Cancel;
use crate::error::Cancelled;
use crate::repo::v2::id::Id;
use crate::repo::v2::objects::ChunkerParams;
use crate::repo::v2::Repository;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Read};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A file up to this size goes into a batch; a batch is sent once it holds
/// this many bytes or [`BATCH_FILES`] files.
const BATCH_BYTES: u64 = 1 << 20;
const BATCH_FILES: usize = 64;
/// A reading thread sends what it has once this many chunk bytes wait in
/// it (a large file streams through in pieces of about this size).
const FLUSH_BYTES: usize = 1 << 20;
/// Past this size, a file's SHA-256 is taken on a thread of its own,
/// which this many chunks may wait for.
const LARGE_FILE: u64 = 8 << 20;
const SHA_QUEUED: usize = 4;
/// Messages from the reading threads not yet taken: with
/// [`FLUSH_BYTES`], what bounds the chunk bytes in flight.
const EVENTS_QUEUED: usize = 4;

/// One file for a reading thread: its line number in the stream, the
/// descriptor the walk opened and checked, the size it was listed with.
pub(super) struct FileJob {
    pub line: u64,
    pub file: File,
    pub size: u64,
    pub listed: fs::Metadata,
    /// Its path in the volume, for messages.
    pub rel: Vec<u8>,
}

/// What the reading threads found, in each file's order.
pub(super) enum Event {
    /// The next chunk of the file on `line`, with its blob id.
    Chunk {
        line: u64,
        id: Id,
        bytes: Arc<Vec<u8>>,
    },
    /// The file on `line` was read whole: its SHA-256, and its path if it
    /// came up short or changed while read.
    Done {
        line: u64,
        sha256: String,
        changed: Option<Vec<u8>>,
    },
}

type Events = Result<Vec<Event>>;

pub(super) struct Readers {
    jobs: Option<Sender<Vec<FileJob>>>,
    /// An `Option` so that dropping it first frees threads blocked on it.
    events: Option<Receiver<Events>>,
    threads: Vec<JoinHandle<()>>,
    batch: Vec<FileJob>,
    batch_bytes: u64,
    /// Files handed over and not yet done (each holds a descriptor).
    outstanding: usize,
}

impl Readers {
    pub(super) fn start(
        count: usize,
        repo: Arc<Repository>,
        params: &ChunkerParams,
        seed: u64,
        cancel: Cancel,
    ) -> Result<Self> {
        // Unbounded: the walk never blocks handing over (it bounds the
        // files outstanding itself), so a reading thread blocked on a full
        // event queue can never wait on the walk in turn.
        let (jobs, receiver) = channel::<Vec<FileJob>>();
        let (sender, events) = sync_channel::<Events>(EVENTS_QUEUED);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut threads = Vec::new();
        for n in 0..count.max(1) {
            let (receiver, sender, repo, cancel) = (
                receiver.clone(),
                sender.clone(),
                repo.clone(),
                cancel.clone(),
            );
            let mut chunker = Chunker::new(params, seed);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("read-{n}"))
                    .spawn(move || serve(&receiver, &sender, &mut chunker, &repo, &cancel))
                    .context("cannot start a reading thread")?,
            );
        }
        Ok(Self {
            jobs: Some(jobs),
            events: Some(events),
            threads,
            batch: Vec::new(),
            batch_bytes: 0,
            outstanding: 0,
        })
    }

    /// Files handed over whose reading is not done.
    pub(super) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Hands a file over: in the current batch if it is small, alone if
    /// not.
    pub(super) fn add(&mut self, job: FileJob) -> Result<()> {
        self.outstanding += 1;
        if job.size > BATCH_BYTES {
            self.flush()?;
            return self.send(vec![job]);
        }
        self.batch_bytes += job.size;
        self.batch.push(job);
        if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_FILES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch_bytes = 0;
        let batch = std::mem::take(&mut self.batch);
        self.send(batch)
    }

    fn send(&self, jobs: Vec<FileJob>) -> Result<()> {
        self.jobs
            .as_ref()
            .and_then(|j| j.send(jobs).ok())
            .context("the reading threads stopped")
    }

    /// The next events: waiting for them (after sending the batch being
    /// filled, which they may be waiting on), or only if some are there.
    pub(super) fn next(&mut self, wait: bool) -> Result<Option<Vec<Event>>> {
        let stopped = || anyhow::anyhow!("the reading threads stopped");
        if wait {
            self.flush()?;
        }
        let events = self.events.as_ref().ok_or_else(stopped)?;
        let got = if wait {
            events.recv().map_err(|_| stopped())?
        } else {
            match events.try_recv() {
                Ok(got) => got,
                Err(TryRecvError::Empty) => return Ok(None),
                Err(TryRecvError::Disconnected) => return Err(stopped()),
            }
        };
        let got = got?;
        let done = got
            .iter()
            .filter(|e| matches!(e, Event::Done { .. }))
            .count();
        self.outstanding = self.outstanding.saturating_sub(done);
        Ok(Some(got))
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.jobs = None;
        self.events = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn serve(
    jobs: &Mutex<Receiver<Vec<FileJob>>>,
    sender: &SyncSender<Events>,
    chunker: &mut Chunker,
    repo: &Repository,
    cancel: &Cancel,
) {
    loop {
        let next = match jobs.lock() {
            Ok(jobs) => jobs.recv(),
            Err(_) => return,
        };
        let Ok(batch) = next else { return };
        // A panic fails the backup like any error: a thread that vanished
        // would leave the walk waiting for its files forever.
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serve_batch(batch, chunker, repo, cancel, sender)
        }));
        let failed = match served {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(_) => anyhow::anyhow!("internal error: a reading thread failed"),
        };
        let _ = sender.send(Err(failed));
        return;
    }
}

fn serve_batch(
    batch: Vec<FileJob>,
    chunker: &mut Chunker,
    repo: &Repository,
    cancel: &Cancel,
    sender: &SyncSender<Events>,
) -> Result<()> {
    let mut events = Vec::new();
    let mut pending = 0;
    for job in batch {
        read_file(
            &job,
            chunker,
            repo,
            cancel,
            &mut events,
            &mut pending,
            sender,
        )
        .with_context(|| format!("cannot read {}", super::display(&job.rel)))?;
    }
    if !events.is_empty() && sender.send(Ok(events)).is_err() {
        anyhow::bail!("the backup stopped listening");
    }
    Ok(())
}

/// Reads, chunks and hashes one file into `events`, sending them once
/// [`FLUSH_BYTES`] of chunks wait.
fn read_file(
    job: &FileJob,
    chunker: &mut Chunker,
    repo: &Repository,
    cancel: &Cancel,
    events: &mut Vec<Event>,
    pending: &mut usize,
    sender: &SyncSender<Events>,
) -> Result<()> {
    let mut content = Listed {
        file: &job.file,
        remaining: job.size,
        short: false,
        cancel,
    };
    // A large file's SHA-256 is taken on a thread of its own, beside the
    // chunking and the blob ids: a lone large file (a database that
    // changed) would otherwise be hashed twice over on one core.
    let sha256 = if job.size > LARGE_FILE {
        std::thread::scope(|scope| -> Result<String> {
            let (chunks, receiver) = sync_channel::<Arc<Vec<u8>>>(SHA_QUEUED);
            let hasher = scope.spawn(move || {
                let mut sha = Sha256::new();
                for chunk in receiver {
                    sha.update(&*chunk);
                }
                hex::encode(sha.finalize())
            });
            chunker.chunks(&mut content, |chunk| {
                let chunk = Arc::new(chunk);
                chunks
                    .send(chunk.clone())
                    .map_err(|_| anyhow::anyhow!("the hashing thread stopped"))?;
                emit(
                    job.line,
                    repo.blob_id(&chunk),
                    chunk,
                    events,
                    pending,
                    sender,
                )
            })?;
            drop(chunks);
            hasher
                .join()
                .map_err(|_| anyhow::anyhow!("the hashing thread failed"))
        })?
    } else {
        let mut sha = Sha256::new();
        chunker.chunks(&mut content, |chunk| {
            sha.update(&chunk);
            let id = repo.blob_id(&chunk);
            emit(job.line, id, Arc::new(chunk), events, pending, sender)
        })?;
        hex::encode(sha.finalize())
    };
    let after = job
        .file
        .metadata()
        .context("cannot stat it after reading")?;
    let changed = content.short || super::changed_while_read(&job.listed, &after);
    events.push(Event::Done {
        line: job.line,
        sha256,
        changed: changed.then(|| job.rel.clone()),
    });
    Ok(())
}

/// Adds one chunk to `events`, sending them once [`FLUSH_BYTES`] wait.
fn emit(
    line: u64,
    id: Id,
    bytes: Arc<Vec<u8>>,
    events: &mut Vec<Event>,
    pending: &mut usize,
    sender: &SyncSender<Events>,
) -> Result<()> {
    *pending += bytes.len();
    events.push(Event::Chunk { line, id, bytes });
    if *pending >= FLUSH_BYTES {
        *pending = 0;
        if sender.send(Ok(std::mem::take(events))).is_err() {
            anyhow::bail!("the backup stopped listening");
        }
    }
    Ok(())
}

/// A handed-over file's content, read as the walk reads it
/// ([`super::Content`]), watching for cancellation.
struct Listed<'f> {
    file: &'f File,
    remaining: u64,
    short: bool,
    cancel: &'f Cancel,
}

impl Read for Listed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(io::Error::other(Cancelled));
        }
        super::read_listed(self.file, buf, &mut self.remaining, &mut self.short)
    }
}
