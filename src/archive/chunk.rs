//! Content-defined chunking (FastCDC 2020) of file contents and manifest
//! streams, with the parameters a format-2 repository's config fixes.
//! Contents are chunked first and each chunk compressed afterwards:
//! chunking a compressed stream would defeat deduplication.

use crate::repo::v2::objects::ChunkerParams;
use anyhow::{Context, Result};
use fastcdc::v2020::{cut_gear, get_gear_with_seed, select_masks, Normalization};
use std::borrow::Cow;
use std::io::Read;

/// Cuts streams into chunks with one buffer reused from file to file: most
/// files of a volume are smaller than one chunk, and a buffer of the
/// chunker's maximum allocated and zeroed per file would cost more than
/// reading them (fastcdc's `StreamCDC` does that).
pub struct Chunker {
    params: ChunkerParams,
    masks: (u64, u64),
    gear: (Cow<'static, [u64]>, Cow<'static, [u64]>),
    buffer: Vec<u8>,
}

impl Chunker {
    /// The seed is 0 in an unencrypted repository and the repository's
    /// secret chunker seed in an encrypted one.
    pub fn new(params: &ChunkerParams, seed: u64) -> Self {
        Self {
            params: params.clone(),
            masks: select_masks(params.avg as usize, Normalization::Level1),
            gear: get_gear_with_seed(seed),
            buffer: Vec::new(),
        }
    }

    /// Calls `each` with every chunk of `source`, in order; the bytes read.
    pub fn chunks(
        &mut self,
        mut source: impl Read,
        mut each: impl FnMut(Vec<u8>) -> Result<()>,
    ) -> Result<u64> {
        let max = self.params.max as usize;
        if self.buffer.len() < 2 * max {
            self.buffer.resize(2 * max, 0);
        }
        let (mut start, mut end, mut eof, mut total) = (0usize, 0usize, false, 0u64);
        loop {
            // Keep at least one maximum chunk ahead of `start`, or the rest.
            while !eof && end - start < max {
                if end == self.buffer.len() {
                    self.buffer.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                }
                let n = loop {
                    match source.read(&mut self.buffer[end..]) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        other => break other.context("cannot read what is being chunked")?,
                    }
                };
                if n == 0 {
                    eof = true;
                }
                end += n;
            }
            if start == end {
                return Ok(total);
            }
            let (_, count) = cut_gear(
                &self.buffer[start..end],
                self.params.min as usize,
                self.params.avg as usize,
                max,
                self.masks.0,
                self.masks.1,
                self.masks.0 << 1,
                self.masks.1 << 1,
                &self.gear.0,
                &self.gear.1,
            );
            let count = if count == 0 { end - start } else { count };
            each(self.buffer[start..start + count].to_vec())?;
            total += count as u64;
            start += count;
        }
    }
}

/// Calls `each` with every chunk of `source`, in order; the bytes read
/// (a one-off [`Chunker`]).
pub fn chunks(
    source: impl Read,
    params: &ChunkerParams,
    seed: u64,
    each: impl FnMut(Vec<u8>) -> Result<()>,
) -> Result<u64> {
    Chunker::new(params, seed).chunks(source, each)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, mut state: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn cut(data: &[u8], seed: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        chunks(data, &ChunkerParams::trees(), seed, |c| {
            out.push(c);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn an_insertion_changes_only_the_chunks_around_it() {
        let data = pseudo_random(4 << 20, 7);
        let before = cut(&data, 0);
        assert_eq!(before.concat(), data, "chunks put together give the input");
        let params = ChunkerParams::trees();
        for c in &before[..before.len() - 1] {
            assert!(c.len() >= params.min as usize && c.len() <= params.max as usize);
        }
        let mut edited = data.clone();
        edited.splice(1_000_000..1_000_000, b"inserted".iter().copied());
        let after = cut(&edited, 0);
        let shared = after.iter().filter(|c| before.contains(c)).count();
        assert!(
            shared + 3 >= before.len(),
            "{shared} of {} chunks survived an 8-byte insertion",
            before.len()
        );
        // The same cut points as fastcdc's own in-memory chunker.
        let theirs: Vec<usize> = fastcdc::v2020::FastCDC::with_level_and_seed(
            &data,
            params.min as usize,
            params.avg as usize,
            params.max as usize,
            fastcdc::v2020::Normalization::Level1,
            0,
        )
        .map(|c| c.length)
        .collect();
        let ours: Vec<usize> = before.iter().map(Vec::len).collect();
        assert_eq!(ours, theirs);
        // Another seed cuts elsewhere: chunk sizes do not fingerprint content.
        assert_ne!(cut(&data, 12345)[0].len(), before[0].len());
    }
}
