//! The writing pipeline behind an archive: tar stream → hash file contents
//! and compress → hash and write the archive, each stage on a thread of its
//! own.
//!
//! The tree walker fills fixed-size chunks (file contents are read straight
//! into them) and hands each full chunk to the next stage through a bounded
//! channel; the stage sends the emptied buffer back for reuse. No byte is
//! copied between stages, memory stays at a few chunks whatever the data
//! size. The walker's thread only lists, opens and reads: file contents are
//! hashed by the first stage, from the spans the walker marks in each chunk.
//! On two cores this spreads the work evenly; the walker, doing everything,
//! was what set the pace.

use crate::hashing::hex_digest;
use crate::repo::manifest::Compression;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use super::ArchiveOptions;

/// Bytes per chunk handed from stage to stage.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks queued between two stages.
const QUEUE_DEPTH: usize = 4;
/// Bytes per zstd worker job (see [`Compressor::new`]).
const ZSTD_JOB_BYTES: u32 = 2 << 20;
/// Start writing an archive back to disk every this many bytes, so the
/// final fsync has little left to wait for.
const WRITEBACK_BYTES: u64 = 32 << 20;

/// The archive file once written: the file (still to be fsynced), the
/// SHA-256 of its bytes and their number.
pub type Sealed = (File, String, u64);

/// A stage's output, with the SHA-256 of each file content it was given.
pub type Finished<T> = (T, Vec<String>);

/// Where a file's content lies in a chunk; `last` when the file ends there.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    last: bool,
}

/// What a stage does with the chunks it receives.
pub trait Sink: Send + 'static {
    type Output: Send + 'static;
    fn consume(&mut self, data: &[u8]) -> io::Result<()>;
    fn finish(self) -> io::Result<Self::Output>;
}

enum Message {
    Chunk(Vec<u8>, usize, Vec<Span>),
    /// The end of the stream: finish the sink and return its output. A
    /// stage whose sender goes away without it was abandoned (an error
    /// upstream) and finishes nothing.
    Finish,
}

/// The sending end of a stage: a writer that fills chunks and queues them.
/// The stage's output comes with the SHA-256 of each file content marked
/// with [`Stage::commit_content`], in order.
pub struct Stage<T> {
    sender: Option<SyncSender<Message>>,
    recycled: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    filled: usize,
    spans: Vec<Span>,
    thread: Option<JoinHandle<io::Result<Finished<T>>>>,
}

impl<T: Send + 'static> Stage<T> {
    pub fn start<S: Sink<Output = T>>(name: &str, mut sink: S) -> Result<Self> {
        let (sender, receiver) = sync_channel::<Message>(QUEUE_DEPTH);
        let (give_back, recycled) = sync_channel::<Vec<u8>>(QUEUE_DEPTH + 1);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut content = Sha256::new();
                let mut digests = Vec::new();
                for message in receiver {
                    match message {
                        Message::Chunk(chunk, len, spans) => {
                            for span in spans {
                                content.update(&chunk[span.start..span.end]);
                                if span.last {
                                    digests.push(hex_digest(std::mem::take(&mut content)));
                                }
                            }
                            sink.consume(&chunk[..len])?;
                            let _ = give_back.try_send(chunk);
                        }
                        Message::Finish => return Ok((sink.finish()?, digests)),
                    }
                }
                Err(io::Error::other("the archive was abandoned"))
            })
            .with_context(|| format!("cannot start the {name} thread"))?;
        Ok(Self {
            sender: Some(sender),
            recycled,
            chunk: vec![0; CHUNK_BYTES],
            filled: 0,
            spans: Vec::new(),
            thread: Some(thread),
        })
    }

    fn send(&mut self, message: Message) -> io::Result<()> {
        match self.sender.as_ref().map(|s| s.send(message)) {
            Some(Ok(())) => Ok(()),
            // The stage stopped: its own error says why (ENOSPC, EIO, …).
            _ => Err(self
                .join()
                .err()
                .unwrap_or_else(|| io::Error::other("an archive stage stopped early"))),
        }
    }

    fn send_chunk(&mut self) -> io::Result<()> {
        let fresh = self
            .recycled
            .try_recv()
            .unwrap_or_else(|_| vec![0; CHUNK_BYTES]);
        let full = std::mem::replace(&mut self.chunk, fresh);
        let len = std::mem::take(&mut self.filled);
        let spans = std::mem::take(&mut self.spans);
        self.send(Message::Chunk(full, len, spans))
    }

    fn join(&mut self) -> io::Result<Finished<T>> {
        self.sender.take();
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("an archive stage panicked")),
            None => Err(io::Error::other("an archive stage already finished")),
        }
    }

    /// Free room in the current chunk, at most `max` bytes (at least one
    /// when `max` is not zero), to be filled in place and then claimed with
    /// [`Stage::commit`].
    pub fn room(&mut self, max: usize) -> io::Result<&mut [u8]> {
        if self.filled == CHUNK_BYTES {
            self.send_chunk()?;
        }
        let end = CHUNK_BYTES.min(self.filled.saturating_add(max));
        Ok(&mut self.chunk[self.filled..end])
    }

    /// Claims `n` bytes written into the last [`Stage::room`].
    pub fn commit(&mut self, n: usize) {
        self.filled += n;
    }

    /// Claims `n` bytes written into the last [`Stage::room`] as the next
    /// part of a file's content, to be hashed by the stage.
    pub fn commit_content(&mut self, n: usize) {
        let (start, end) = (self.filled, self.filled + n);
        match self.spans.last_mut() {
            Some(open) if !open.last && open.end == start => open.end = end,
            _ => self.spans.push(Span {
                start,
                end,
                last: false,
            }),
        }
        self.filled = end;
    }

    /// Ends the file content being committed: its digest is the next one.
    pub fn end_content(&mut self) {
        match self.spans.last_mut() {
            Some(open) if !open.last && open.end == self.filled => open.last = true,
            _ => self.spans.push(Span {
                start: self.filled,
                end: self.filled,
                last: true,
            }),
        }
    }

    /// Sends what is buffered and waits for the stage's output and the
    /// digests of the file contents, in order.
    pub fn finish(mut self) -> io::Result<Finished<T>> {
        if self.filled > 0 || !self.spans.is_empty() {
            self.send_chunk()?;
        }
        self.send(Message::Finish)?;
        self.join()
    }
}

impl<T> Drop for Stage<T> {
    /// An unfinished stage (an error or a cancel upstream) is stopped and
    /// waited for, so no thread goes on writing into a backup being removed.
    fn drop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<T: Send + 'static> Write for Stage<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.room(buf.len())?;
        let n = room.len();
        room.copy_from_slice(&buf[..n]);
        self.commit(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The pipeline's entry for `file`: a stage that hashes file contents and
/// compresses, feeding the stage that hashes and writes the archive. Even
/// without compression the two stay apart: hashing twice on one thread
/// would make it the slowest.
pub fn start(file: File, options: &ArchiveOptions) -> Result<Stage<Sealed>> {
    let writer = Stage::start("archive-writer", ArchiveFile::new(file))?;
    Stage::start("archive-compress", Compressor::new(writer, options)?)
}

/// The last stage: hashes the archive's bytes and writes them, asking the
/// kernel to start writeback every [`WRITEBACK_BYTES`] so disk writes
/// overlap archiving instead of all waiting for the final fsync.
struct ArchiveFile {
    file: File,
    hasher: Sha256,
    written: u64,
    flushed_to: u64,
}

impl ArchiveFile {
    fn new(file: File) -> Self {
        Self {
            file,
            hasher: Sha256::new(),
            written: 0,
            flushed_to: 0,
        }
    }
}

impl Sink for ArchiveFile {
    type Output = Sealed;

    fn consume(&mut self, data: &[u8]) -> io::Result<()> {
        self.hasher.update(data);
        self.file.write_all(data)?;
        self.written += data.len() as u64;
        if self.written - self.flushed_to >= WRITEBACK_BYTES {
            // SAFETY: a plain syscall on a file descriptor we own; it only
            // schedules writeback and touches no memory of ours.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.flushed_to as i64,
                    (self.written - self.flushed_to) as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.flushed_to = self.written;
        }
        Ok(())
    }

    fn finish(self) -> io::Result<Sealed> {
        Ok((self.file, hex_digest(self.hasher), self.written))
    }
}

/// The compression stage.
enum Compressor {
    Zstd(zstd::stream::write::Encoder<'static, Stage<Sealed>>),
    Gzip(flate2::write::GzEncoder<Stage<Sealed>>),
    Plain(Stage<Sealed>),
}

impl Compressor {
    fn new(inner: Stage<Sealed>, options: &ArchiveOptions) -> Result<Self> {
        Ok(match options.compression {
            Compression::None => Compressor::Plain(inner),
            Compression::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(
                inner,
                flate2::Compression::new(options.level.clamp(1, 9) as u32),
            )),
            Compression::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(inner, options.level)
                    .context("cannot start zstd compression")?;
                if options.threads > 1 {
                    encoder
                        .multithread(options.threads)
                        .context("cannot start zstd worker threads")?;
                    // zstd's default job (4x the window) keeps ~120 MiB in
                    // flight at level 3; 2 MiB jobs keep memory flat at a
                    // ratio cost under 1%.
                    encoder
                        .set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_BYTES))
                        .context("cannot set the zstd job size")?;
                }
                encoder.include_checksum(true)?;
                Compressor::Zstd(encoder)
            }
        })
    }
}

impl Sink for Compressor {
    type Output = Sealed;

    fn consume(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Compressor::Zstd(e) => e.write_all(data),
            Compressor::Gzip(e) => e.write_all(data),
            Compressor::Plain(w) => w.write_all(data),
        }
    }

    fn finish(self) -> io::Result<Sealed> {
        match self {
            Compressor::Zstd(e) => e.finish()?.finish().map(|(sealed, _)| sealed),
            Compressor::Gzip(e) => e.finish()?.finish().map(|(sealed, _)| sealed),
            Compressor::Plain(w) => w.finish().map(|(sealed, _)| sealed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects what reaches it.
    struct Collect(Vec<u8>);

    impl Sink for Collect {
        type Output = Vec<u8>;
        fn consume(&mut self, data: &[u8]) -> io::Result<()> {
            self.0.extend_from_slice(data);
            Ok(())
        }
        fn finish(self) -> io::Result<Vec<u8>> {
            Ok(self.0)
        }
    }

    /// Commits `content` in pieces of `piece` bytes, the way the tree
    /// walker reads a file into the stage's chunks.
    fn put_content(stage: &mut Stage<Vec<u8>>, content: &[u8], piece: usize) {
        let mut rest = content;
        while !rest.is_empty() {
            let room = stage.room(piece.min(rest.len())).unwrap();
            let n = room.len();
            room.copy_from_slice(&rest[..n]);
            stage.commit_content(n);
            rest = &rest[n..];
        }
        stage.end_content();
    }

    #[test]
    fn stream_and_content_digests_survive_chunk_boundaries() {
        let big: Vec<u8> = (0..CHUNK_BYTES * 5 / 2)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let small = b"hello".to_vec();
        let mut stage = Stage::start("test-stage", Collect(Vec::new())).unwrap();
        let mut expected = Vec::new();
        for (header, content, piece) in [
            (&b"header one"[..], &big[..], 100_000),
            (&b"header two"[..], &[][..], 1),
            (&b"header three"[..], &small[..], 2),
            // Ends exactly on a chunk boundary, then an empty file follows.
            (
                &b""[..],
                &big[..CHUNK_BYTES * 3 - big.len() - 37][..],
                1 << 20,
            ),
            (&b"x"[..], &[][..], 1),
        ] {
            stage.write_all(header).unwrap();
            put_content(&mut stage, content, piece);
            expected.extend_from_slice(header);
            expected.extend_from_slice(content);
        }
        let (stream, digests) = stage.finish().unwrap();
        assert_eq!(stream.len(), expected.len());
        assert!(
            stream == expected,
            "the stream differs from what was written"
        );
        let sha = |data: &[u8]| hex_digest(Sha256::new_with_prefix(data));
        let last_len = CHUNK_BYTES * 3 - big.len() - 37;
        assert_eq!(
            digests,
            vec![
                sha(&big),
                sha(b""),
                sha(b"hello"),
                sha(&big[..last_len]),
                sha(b""),
            ]
        );
    }

    /// A sink that fails like a full disk.
    struct Full;

    impl Sink for Full {
        type Output = ();
        fn consume(&mut self, _: &[u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn finish(self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_stage_reports_its_own_error_upstream() {
        let mut stage = Stage::start("test-full", Full).unwrap();
        let mut failed = None;
        for _ in 0..16 {
            if let Err(e) = stage
                .write_all(&[0; 4096])
                .and_then(|()| stage.room(CHUNK_BYTES).map(|_| ()))
            {
                failed = Some(e);
                break;
            }
            stage.commit(CHUNK_BYTES - 4096);
        }
        let err = failed
            .or_else(|| stage.finish().err())
            .expect("a full disk must fail the stream");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }
}
