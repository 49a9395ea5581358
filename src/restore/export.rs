//! `export`: a backup as one standard GNU tar stream (extended attributes
//! as PAX `SCHILY.xattr.*` records), whatever the repository's format, so
//! `volsnap export … | tar -x` and every tar tool work on any backup.
//!
//! With one volume named, its entries are at the top of the stream; with
//! all of them, each volume's entries are under a directory named like its
//! archive (`<volume>/…`). Every file's content is checked against its
//! SHA-256 as it is written; a mismatch stops the export with an error
//! (the stream is then incomplete, and the exit status says so).

use crate::archive::{entry_path, entry_xattrs, link_target, ArchiveReader, XATTR_PAX_PREFIX};
use crate::cancel::Cancel;
use crate::repo::manifest::{Compression, EntryKind, FileEntry, VolumeRecord};
use crate::repo::v2::index::Index;
use crate::repo::v2::objects::CommitVolume;
use crate::repo::v2::tree::{TreeEntry, TreeReader};
use crate::repo::v2::Repository;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::path::Path;

/// One volume to export and the directory its entries go under ("" for
/// the top of the stream).
pub enum ExportVolume<'a> {
    Tar {
        archive: &'a Path,
        compression: Compression,
        record: &'a VolumeRecord,
        prefix: String,
    },
    Chunked {
        repo: &'a Repository,
        index: &'a Index,
        volume: &'a CommitVolume,
        prefix: String,
    },
}

/// Writes the volumes as one tar stream to `out`; the number of entries.
pub fn export(volumes: &[ExportVolume<'_>], out: impl Write, cancel: &Cancel) -> Result<u64> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut entries = 0;
    for volume in volumes {
        entries += match volume {
            ExportVolume::Tar {
                archive,
                compression,
                record,
                prefix,
            } => export_tar(&mut builder, archive, *compression, record, prefix, cancel)?,
            ExportVolume::Chunked {
                repo,
                index,
                volume,
                prefix,
            } => export_chunked(&mut builder, repo, index, volume, prefix, cancel)?,
        };
    }
    builder.finish().context("cannot write the tar stream")?;
    Ok(entries)
}

fn join(prefix: &str, raw: &[u8]) -> Vec<u8> {
    match (prefix.is_empty(), raw == b".") {
        (true, true) => b"./".to_vec(),
        (true, false) => raw.to_vec(),
        (false, true) => format!("{prefix}/").into_bytes(),
        (false, false) => [prefix.as_bytes(), b"/", raw].concat(),
    }
}

/// Appends one entry: xattrs first (PAX), then the header and content.
fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    record: &FileEntry,
    path: &[u8],
    link: Option<&[u8]>,
    xattrs: &[(String, Vec<u8>)],
    device: (u64, u64),
    content: Option<&mut dyn Read>,
) -> Result<()> {
    if !xattrs.is_empty() {
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(n, v)| (format!("{XATTR_PAX_PREFIX}{n}"), v.as_slice()))
            .collect();
        builder.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
    }
    let mut header = tar::Header::new_gnu();
    header.set_mode(record.mode);
    header.set_uid(record.uid.into());
    header.set_gid(record.gid.into());
    header.set_mtime(record.mtime.max(0) as u64);
    header.set_size(0);
    let path = Path::new(std::ffi::OsStr::from_bytes(path));
    let kind = match record.kind {
        EntryKind::File => tar::EntryType::Regular,
        EntryKind::Dir => tar::EntryType::Directory,
        EntryKind::Symlink => tar::EntryType::Symlink,
        EntryKind::Hardlink => tar::EntryType::Link,
        EntryKind::Fifo => tar::EntryType::Fifo,
        EntryKind::CharDevice => tar::EntryType::Char,
        EntryKind::BlockDevice => tar::EntryType::Block,
    };
    header.set_entry_type(kind);
    match record.kind {
        EntryKind::Symlink | EntryKind::Hardlink => {
            let target = link.with_context(|| format!("link {} has no target", record.path))?;
            builder.append_link(&mut header, path, std::ffi::OsStr::from_bytes(target))?;
        }
        EntryKind::File => {
            let content = content.with_context(|| format!("{} has no content", record.path))?;
            header.set_size(record.size);
            let mut checked = Checked {
                inner: content,
                hasher: Sha256::new(),
                read: 0,
            };
            builder.append_data(&mut header, path, &mut checked)?;
            let digest = hex::encode(checked.hasher.finalize());
            if checked.read != record.size || Some(&digest) != record.sha256.as_ref() {
                bail!(
                    "{} does not match its SHA-256 in the backup; the export is incomplete",
                    record.path
                );
            }
        }
        EntryKind::CharDevice | EntryKind::BlockDevice => {
            header.set_device_major(device.0 as u32)?;
            header.set_device_minor(device.1 as u32)?;
            builder.append_data(&mut header, path, io::empty())?;
        }
        EntryKind::Dir | EntryKind::Fifo => builder.append_data(&mut header, path, io::empty())?,
    }
    Ok(())
}

use std::os::unix::ffi::OsStrExt;

/// Hashes what passes through.
struct Checked<'r> {
    inner: &'r mut dyn Read,
    hasher: Sha256,
    read: u64,
}

impl Read for Checked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

fn export_tar<W: Write>(
    builder: &mut tar::Builder<W>,
    archive: &Path,
    compression: Compression,
    record: &VolumeRecord,
    prefix: &str,
    cancel: &Cancel,
) -> Result<u64> {
    let mut reader = ArchiveReader::open(archive, compression)?;
    let mut checker = crate::archive::EntryChecker::new(record)?;
    let mut count = 0;
    for entry in reader.archive().entries()? {
        cancel.check()?;
        let mut entry = entry.with_context(|| format!("{}: archive is corrupt", record.name))?;
        let tar_type = entry.header().entry_type();
        if tar_type == tar::EntryType::XGlobalHeader {
            continue;
        }
        let raw = entry_path(&entry);
        let listed = checker.check(&raw, tar_type)?.clone();
        // As for format 2: names that would leave the tree are refused here,
        // not left to the tar that extracts the stream.
        crate::restore::safe_relative(&raw)?;
        let link = match listed.kind {
            EntryKind::Symlink | EntryKind::Hardlink => {
                let target = link_target(&entry, listed.kind);
                checker.check_link(&listed, target.as_deref())?;
                if listed.kind == EntryKind::Hardlink {
                    if let Some(t) = &target {
                        crate::restore::safe_relative(t)?;
                    }
                }
                target.map(|t| match listed.kind {
                    EntryKind::Hardlink => join(prefix, &t),
                    _ => t,
                })
            }
            _ => None,
        };
        let xattrs = entry_xattrs(&mut entry)?;
        let device = match listed.kind {
            EntryKind::CharDevice | EntryKind::BlockDevice => (
                entry.header().device_major()?.unwrap_or(0).into(),
                entry.header().device_minor()?.unwrap_or(0).into(),
            ),
            _ => (0, 0),
        };
        let is_file = listed.kind == EntryKind::File;
        append(
            builder,
            &listed,
            &join(prefix, &raw),
            link.as_deref(),
            &xattrs,
            device,
            if is_file { Some(&mut entry) } else { None },
        )?;
        count += 1;
    }
    checker.finish()?;
    Ok(count)
}

fn export_chunked<W: Write>(
    builder: &mut tar::Builder<W>,
    repo: &Repository,
    index: &Index,
    volume: &CommitVolume,
    prefix: &str,
    cancel: &Cancel,
) -> Result<u64> {
    let mut lines = TreeReader::new(repo, index, &volume.tree, volume.tree_sha256);
    let mut blobs = repo.blob_reader(index)?;
    let mut read = |id: &crate::repo::v2::id::Id| blobs.read(id);
    let mut count = 0;
    while let Some(line) = lines.next_line::<TreeEntry>()? {
        cancel.check()?;
        let raw = line.entry.raw_path()?.into_owned();
        // What lands in the stream is what a tar extracting it writes:
        // names that leave the tree are refused here, not left to the tar.
        crate::restore::safe_relative(&raw)?;
        let link = match line.entry.kind {
            EntryKind::Hardlink => line
                .entry
                .raw_target()?
                .map(|t| crate::restore::safe_relative(&t).map(|_| join(prefix, &t)))
                .transpose()?,
            EntryKind::Symlink => line.entry.raw_target()?.map(|t| t.into_owned()),
            _ => None,
        };
        let mut xattrs = Vec::new();
        for x in &line.xattrs {
            let name = match &x.name_hex {
                None => x.name.clone(),
                Some(h) => String::from_utf8_lossy(&hex::decode(h)?).into_owned(),
            };
            xattrs.push((name, hex::decode(&x.value_hex)?));
        }
        let device = (
            nix::sys::stat::major(line.rdev),
            nix::sys::stat::minor(line.rdev),
        );
        let mut content = crate::restore::ChunkReader::new(&mut read, &line.chunks);
        let is_file = line.entry.kind == EntryKind::File;
        append(
            builder,
            &line.entry,
            &join(prefix, &raw),
            link.as_deref(),
            &xattrs,
            device,
            if is_file { Some(&mut content) } else { None },
        )?;
        count += 1;
    }
    Ok(count)
}

/// Exports backup `id` (or `latest` within `scope`) of the repository at
/// `root`, all volumes or the one named, to `out`; the entries written.
pub fn export_backup(
    root: &Path,
    id: &str,
    scope: &crate::repo::Scope,
    volume: Option<&str>,
    out: impl Write,
    cancel: &Cancel,
) -> Result<u64> {
    let pick = |names: Vec<&str>| -> Result<Option<usize>> {
        match volume {
            None => Ok(None),
            Some(wanted) => names
                .iter()
                .position(|n| *n == wanted)
                .map(Some)
                .ok_or_else(|| {
                    crate::usage!(
                        "backup {id} has no volume {wanted:?}; it has {}",
                        names.join(", ")
                    )
                }),
        }
    };
    // Members are prefixed with the volume's local name (computed from its
    // validated name, never a stored path), or nothing with one volume named.
    let prefix = |record: &crate::repo::manifest::VolumeRecord| -> Result<String> {
        match volume {
            Some(_) => Ok(String::new()),
            None => record.local_name(),
        }
    };
    match crate::repo::detect(root) {
        crate::repo::Format::Tar => {
            let repo = crate::repo::Repo::open(root)?;
            let (_, dir) = repo.resolve_in(id, scope)?;
            let manifest = crate::repo::manifest::Manifest::load(
                &dir.join(crate::repo::manifest::MANIFEST_FILE),
            )?;
            let only = pick(manifest.volumes.iter().map(|v| v.name.as_str()).collect())?;
            let archives: Vec<_> = manifest
                .volumes
                .iter()
                .map(|v| dir.join(&v.archive))
                .collect();
            let volumes: Vec<ExportVolume<'_>> = manifest
                .volumes
                .iter()
                .zip(&archives)
                .enumerate()
                .filter(|(i, _)| only.is_none_or(|o| o == *i))
                .map(|(_, (v, archive))| {
                    Ok(ExportVolume::Tar {
                        archive,
                        compression: manifest.compression,
                        record: v,
                        prefix: prefix(v)?,
                    })
                })
                .collect::<Result<_>>()?;
            export(&volumes, out, cancel)
        }
        crate::repo::Format::Chunked => {
            let repo = crate::repo::open_chunked(root)?;
            repo.require_contents()?;
            let (_, commit) = crate::repo::resolve_chunked(&repo, id, scope)?;
            let index = repo.load_index()?;
            let records = repo.volume_records(&index, &commit)?;
            let only = pick(commit.volumes.iter().map(|v| v.name.as_str()).collect())?;
            let volumes: Vec<ExportVolume<'_>> = commit
                .volumes
                .iter()
                .zip(&records)
                .enumerate()
                .filter(|(i, _)| only.is_none_or(|o| o == *i))
                .map(|(_, (v, record))| {
                    Ok(ExportVolume::Chunked {
                        repo: &repo,
                        index: &index,
                        volume: v,
                        prefix: prefix(record)?,
                    })
                })
                .collect::<Result<_>>()?;
            export(&volumes, out, cancel)
        }
    }
}
