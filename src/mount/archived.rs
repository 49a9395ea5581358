//! Format 1 content for the mount: a volume's archive read forward by a
//! thread of its own, so that files asked for in archive order (as `diff
//! -r`, `cp -r` and `grep -r` ask) cost one pass over it, not one each. A
//! file behind the cursor starts a new pass.

use crate::archive::ArchiveReader;
use crate::cancel::Cancel;
use crate::repo::manifest::Compression;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// One file asked for: its path in the archive, its size and SHA-256 as
/// the manifest records them, and where the answer goes.
struct Wanted {
    path: Vec<u8>,
    size: u64,
    sha256: Option<String>,
    answer: SyncSender<Result<std::fs::File>>,
}

/// A volume archive's reading thread; it ends when this is dropped.
pub(crate) struct Cursor {
    wanted: SyncSender<Wanted>,
}

impl Cursor {
    pub(crate) fn start(
        archive: PathBuf,
        compression: Compression,
        cancel: Cancel,
    ) -> Result<Cursor> {
        let (wanted, requests) = sync_channel(1);
        std::thread::Builder::new()
            .name("mount-archive".into())
            .spawn(move || serve(&archive, compression, &requests, &cancel))
            .context("cannot start an archive's reading thread")?;
        Ok(Cursor { wanted })
    }

    /// The file at `path`, copied out of the archive into an unlinked
    /// temporary file once its size and SHA-256 are checked.
    pub(crate) fn extract(
        &self,
        path: &[u8],
        size: u64,
        sha256: Option<&str>,
    ) -> Result<std::fs::File> {
        let (answer, answered) = sync_channel(1);
        self.wanted
            .send(Wanted {
                path: path.to_vec(),
                size,
                sha256: sha256.map(str::to_string),
                answer,
            })
            .ok()
            .context("the archive's reading thread stopped")?;
        answered
            .recv()
            .ok()
            .context("the archive's reading thread stopped")?
    }
}

/// Passes over the archive, each answering requests as long as they come
/// in archive order.
fn serve(
    archive: &std::path::Path,
    compression: Compression,
    requests: &Receiver<Wanted>,
    cancel: &Cancel,
) {
    let mut pending: Option<Wanted> = None;
    loop {
        let mut reader = match ArchiveReader::open(archive, compression) {
            Ok(reader) => reader,
            Err(e) => return refuse_all(pending, requests, &format!("{e:#}")),
        };
        let mut entries = match reader.archive().entries() {
            Ok(entries) => entries,
            Err(e) => {
                return refuse_all(pending, requests, &format!("cannot read the archive: {e}"))
            }
        };
        let mut at_start = true;
        loop {
            let wanted = match pending.take() {
                Some(w) => w,
                None => match requests.recv() {
                    Ok(w) => w,
                    Err(_) => return,
                },
            };
            // Whether this request saw the archive from its first entry.
            let whole = at_start;
            let mut found: Option<Result<std::fs::File>> = None;
            for entry in entries.by_ref() {
                at_start = false;
                if let Err(e) = cancel.check() {
                    found = Some(Err(anyhow::Error::from(e)));
                    break;
                }
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        found = Some(Err(anyhow::anyhow!("the archive is corrupt: {e}")));
                        break;
                    }
                };
                if entry.header().entry_type() == tar::EntryType::Regular
                    && crate::archive::entry_path(&entry) == wanted.path
                {
                    found = Some(copy_out(
                        entry,
                        wanted.size,
                        wanted.sha256.as_deref(),
                        cancel,
                    ));
                    break;
                }
            }
            match found {
                Some(result) => {
                    let _ = wanted.answer.send(result);
                }
                None if whole => {
                    let _ = wanted
                        .answer
                        .send(Err(anyhow::anyhow!("it is not in its archive")));
                }
                // Behind the cursor: a new pass from the start.
                None => {
                    pending = Some(wanted);
                    break;
                }
            }
        }
    }
}

fn refuse_all(pending: Option<Wanted>, requests: &Receiver<Wanted>, why: &str) {
    for wanted in pending.into_iter().chain(requests.iter()) {
        let _ = wanted.answer.send(Err(anyhow::anyhow!("{why}")));
    }
}

/// One archive entry into an unlinked temporary file, checked against the
/// manifest's size (before a byte is copied: a crafted entry could claim a
/// terabyte) and SHA-256.
fn copy_out<R: std::io::Read>(
    entry: tar::Entry<'_, R>,
    size: u64,
    sha256: Option<&str>,
    cancel: &Cancel,
) -> Result<std::fs::File> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    let claimed = entry.header().size().context("the archive is corrupt")?;
    anyhow::ensure!(
        claimed == size,
        "the archive says it holds {claimed} bytes, the manifest {size}"
    );
    let mut entry = entry.take(size);
    let mut out = tempfile::tempfile().context("cannot make a temporary file")?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        cancel.check()?;
        let n = entry.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        copied += n as u64;
    }
    anyhow::ensure!(
        copied == size,
        "the archive holds {copied} bytes of it, the manifest says {size}"
    );
    if let Some(expected) = sha256 {
        anyhow::ensure!(
            hex::encode(hasher.finalize()) == expected,
            "its content does not match its SHA-256"
        );
    }
    Ok(out)
}
