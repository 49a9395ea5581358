//! A watch on the tar stream before the `tar` crate parses it, so that a
//! small hostile archive cannot make one entry claim unbounded memory.
//!
//! The `tar` crate reads a GNU long name (`L`), long link (`K`) or PAX
//! record block (`x`, `g`) whole into memory, whatever size its header
//! claims (up to 8 GiB in octal, more in base-256). This guard follows the
//! stream's block structure (header, content padded to 512 bytes, next
//! header) and refuses any such entry over [`EXTENSION_LIMIT`]. It reads
//! the PAX records it lets through for a `size` record, since that sets
//! the size of the entry that follows, exactly as the `tar` crate does.
//! GNU sparse entries (`S`, whose extra header blocks it does not follow)
//! are refused: volsnap never writes them.

use std::io;

/// The most bytes one name or attribute extension may claim: far above
/// PATH_MAX (4 KiB) and what Linux allows in extended attributes
/// (64 KiB of names, 64 KiB per value, a few values per file).
pub const EXTENSION_LIMIT: u64 = 1 << 20;

const BLOCK: usize = 512;

#[derive(Debug)]
enum State {
    /// Collecting a header block.
    Header {
        block: Box<[u8; BLOCK]>,
        filled: usize,
    },
    /// Passing over `remaining` bytes of content and padding.
    Skip { remaining: u64 },
    /// Collecting PAX records (`remaining` data bytes, then `padding`).
    Pax {
        records: Vec<u8>,
        remaining: u64,
        padding: u64,
    },
    /// After the end-of-archive block: nothing more is parsed.
    End,
}

/// Follows a tar stream chunk by chunk (see the module comment).
#[derive(Debug)]
pub struct Guard {
    state: State,
    /// The size a PAX `size` record set for the next entry.
    next_size: Option<u64>,
}

impl Default for Guard {
    fn default() -> Self {
        Self {
            state: State::Header {
                block: Box::new([0; BLOCK]),
                filled: 0,
            },
            next_size: None,
        }
    }
}

impl Guard {
    /// Checks the next `data` of the stream.
    pub fn check(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match &mut self.state {
                State::End => return Ok(()),
                State::Skip { remaining } => {
                    let n = (*remaining).min(data.len() as u64) as usize;
                    *remaining -= n as u64;
                    data = &data[n..];
                    if *remaining == 0 {
                        self.state = State::default_header();
                    }
                }
                State::Pax {
                    records,
                    remaining,
                    padding,
                } => {
                    if *remaining > 0 {
                        let n = (*remaining).min(data.len() as u64) as usize;
                        records.extend_from_slice(&data[..n]);
                        *remaining -= n as u64;
                        data = &data[n..];
                    }
                    if *remaining == 0 {
                        self.next_size = pax_size(records).or(self.next_size);
                        self.state = State::Skip {
                            remaining: *padding,
                        };
                        if let State::Skip { remaining: 0 } = self.state {
                            self.state = State::default_header();
                        }
                    }
                }
                State::Header { block, filled } => {
                    let n = (BLOCK - *filled).min(data.len());
                    block[*filled..*filled + n].copy_from_slice(&data[..n]);
                    *filled += n;
                    data = &data[n..];
                    if *filled == BLOCK {
                        let block = std::mem::replace(block, Box::new([0; BLOCK]));
                        self.state = self.after_header(&block)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn after_header(&mut self, block: &[u8; BLOCK]) -> io::Result<State> {
        if block.iter().all(|b| *b == 0) {
            return Ok(State::End);
        }
        let kind = block[156];
        let size = header_size(&block[124..136])?;
        let padded = |size: u64| size.div_ceil(BLOCK as u64) * BLOCK as u64;
        match kind {
            b'L' | b'K' | b'x' | b'g' => {
                if size > EXTENSION_LIMIT {
                    return Err(refused(format!(
                        "an archive entry claims {size} bytes of names or attributes (at most {EXTENSION_LIMIT} are accepted); the archive is hostile or corrupt"
                    )));
                }
                if kind == b'x' {
                    return Ok(State::Pax {
                        records: Vec::with_capacity(size as usize),
                        remaining: size,
                        padding: padded(size) - size,
                    });
                }
                Ok(State::skip(padded(size)))
            }
            b'S' => Err(refused(
                "the archive holds a GNU sparse entry, which volsnap never writes; refusing it"
                    .to_string(),
            )),
            _ => {
                let size = self.next_size.take().unwrap_or(size);
                Ok(State::skip(padded(size)))
            }
        }
    }
}

impl State {
    fn default_header() -> State {
        State::Header {
            block: Box::new([0; BLOCK]),
            filled: 0,
        }
    }

    fn skip(remaining: u64) -> State {
        if remaining == 0 {
            State::default_header()
        } else {
            State::Skip { remaining }
        }
    }
}

fn refused(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// A header's size field: octal text, or base-256 when its top bit is set.
fn header_size(field: &[u8]) -> io::Result<u64> {
    if field[0] & 0x80 != 0 {
        let mut value: u64 = (field[0] & 0x7f) as u64;
        for b in &field[1..] {
            value = value
                .checked_mul(256)
                .and_then(|v| v.checked_add(*b as u64))
                .ok_or_else(|| refused("an archive entry size overflows".to_string()))?;
        }
        return Ok(value);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| *b != 0 && *b != b' ')
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    let text = std::str::from_utf8(&text)
        .map_err(|_| refused("an archive header has a malformed size".to_string()))?;
    u64::from_str_radix(text, 8)
        .map_err(|_| refused("an archive header has a malformed size".to_string()))
}

/// The value of a `size` record among PAX records (`LEN size=N\n`).
fn pax_size(records: &[u8]) -> Option<u64> {
    let mut rest = records;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return None;
        }
        let record = &rest[space + 1..len];
        if let Some(value) = record.strip_prefix(b"size=") {
            let value = value.strip_suffix(b"\n").unwrap_or(value);
            return std::str::from_utf8(value).ok()?.parse().ok();
        }
        rest = &rest[len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, size_field: &[u8]) -> Vec<u8> {
        let mut block = vec![0u8; BLOCK];
        block[..4].copy_from_slice(b"name");
        block[124..124 + size_field.len()].copy_from_slice(size_field);
        block[156] = kind;
        block
    }

    /// Feeds `data` in pieces of `step` bytes.
    fn feed(data: &[u8], step: usize) -> io::Result<()> {
        let mut guard = Guard::default();
        for piece in data.chunks(step) {
            guard.check(piece)?;
        }
        Ok(())
    }

    #[test]
    fn a_huge_long_name_or_pax_block_is_refused_before_it_is_read() {
        for kind in [b'L', b'K', b'x', b'g'] {
            // 8 GiB, octal; and 2^40 in base-256.
            for field in [
                &b"77777777777\0"[..],
                &[0x80, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0][..],
            ] {
                let err = feed(&header(kind, field), 7).unwrap_err();
                assert!(err.to_string().contains("names or attributes"), "{err}");
            }
        }
        assert!(feed(&header(b'S', b"00000000000\0"), 512).is_err());
    }

    #[test]
    fn real_archives_pass_whatever_the_chunking() {
        // Long names, xattrs as PAX records, files of odd sizes, hard links.
        let mut builder = tar::Builder::new(Vec::new());
        let long = "n".repeat(300);
        for (i, size) in [0usize, 1, 511, 512, 513, 70_000].iter().enumerate() {
            let mut h = tar::Header::new_gnu();
            h.set_size(*size as u64);
            h.set_mode(0o644);
            builder
                .append_pax_extensions([("SCHILY.xattr.user.a", &b"v"[..])])
                .unwrap();
            builder
                .append_data(&mut h, format!("{long}/{i}"), &vec![7u8; *size][..])
                .unwrap();
        }
        let data = builder.into_inner().unwrap();
        for step in [1, 100, 512, 4096, data.len()] {
            feed(&data, step).unwrap();
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes, in arbitrary pieces: the guard answers, never panics.
        #[test]
        fn any_bytes_never_panic(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            step in 1usize..700,
        ) {
            let _ = feed(&data, step);
        }
    }

    #[test]
    fn a_pax_size_record_sets_the_next_entry_size() {
        // The header says 0 bytes, the PAX record 1024: the guard must skip
        // 1024, then find the huge long name behind them.
        let record = b"13 size=1024\n";
        let mut data = header(b'x', format!("{:011o}\0", record.len()).as_bytes());
        let mut padded = record.to_vec();
        padded.resize(BLOCK, 0);
        data.extend_from_slice(&padded);
        data.extend_from_slice(&header(b'0', b"00000000000\0"));
        data.extend_from_slice(&vec![0u8; 1024]);
        data.extend_from_slice(&header(b'L', b"77777777777\0"));
        assert!(
            feed(&data, 300).is_err(),
            "the entry after the file was found"
        );
        assert_eq!(pax_size(b"13 size=1024\n"), Some(1024));
        assert_eq!(pax_size(b"9 path=x\n13 size=1024\n"), Some(1024));
        assert_eq!(pax_size(b"garbage"), None);
    }
}
