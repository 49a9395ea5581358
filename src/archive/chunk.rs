//! Content-defined chunking (FastCDC 2020) of file contents and manifest
//! streams, with the parameters a format-2 repository's config fixes.
//! Contents are chunked first and each chunk compressed afterwards:
//! chunking a compressed stream would defeat deduplication.

use crate::repo::v2::objects::ChunkerParams;
use anyhow::{Context, Result};
use fastcdc::v2020::{Normalization, StreamCDC};
use std::io::Read;

/// Calls `each` with every chunk of `source`, in order; the bytes read.
/// The seed is 0 in an unencrypted repository and the repository's secret
/// chunker seed in an encrypted one.
pub fn chunks(
    source: impl Read,
    params: &ChunkerParams,
    seed: u64,
    mut each: impl FnMut(Vec<u8>) -> Result<()>,
) -> Result<u64> {
    let chunker = StreamCDC::with_level_and_seed(
        source,
        params.min as usize,
        params.avg as usize,
        params.max as usize,
        Normalization::Level1,
        seed,
    );
    let mut total = 0;
    for chunk in chunker {
        let chunk = chunk.context("cannot read what is being chunked")?;
        total += chunk.length as u64;
        each(chunk.data)?;
    }
    Ok(total)
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
        // Another seed cuts elsewhere: chunk sizes do not fingerprint content.
        assert_ne!(cut(&data, 12345)[0].len(), before[0].len());
    }
}
