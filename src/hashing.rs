//! SHA-256 on the fly: a reader that hashes what passes through it.

use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::path::Path;

/// Lower-case hex of a finished digest.
pub fn hex_digest(hasher: Sha256) -> String {
    hex::encode(hasher.finalize())
}

/// Hashes and counts every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Reads what is left (so the digest covers the whole stream), then
    /// returns the hex digest and the byte count.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((hex_digest(self.hasher), self.bytes))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// SHA-256 of a whole file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let file = std::fs::File::open(path)?;
    let reader = HashingReader::new(io::BufReader::with_capacity(1 << 20, file));
    Ok(reader.finish()?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_agrees_with_known_digest() {
        // sha256("abc") from FIPS 180-2.
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let (digest, n) = HashingReader::new(&b"abc"[..]).finish().unwrap();
        assert_eq!((digest.as_str(), n), (expected, 3));
    }
}
