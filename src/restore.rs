//! Restore: extract a volume archive into a target directory, safely.
//!
//! Everything is extracted into a fresh private staging directory inside the
//! target, checking each entry against the manifest and each file's SHA-256
//! as it is written. Entries that would land outside the staging directory
//! (absolute paths, `..`, writing through a symlink, hard links to outside)
//! are refused, as are device nodes and setuid/setgid files unless allowed.
//! Only when the whole archive checked out is the old content moved aside,
//! the new content moved in, and the old content deleted, so a failed
//! restore leaves the previous content as it was.

use crate::archive::{entry_path, entry_xattrs, ArchiveReader, Decompressor, EntryChecker};
use crate::cancel::Cancel;
use crate::manifest::{Compression, EntryKind, FileEntry, VolumeRecord};
use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Prefix of the staging directory inside the target.
pub const STAGING_PREFIX: &str = ".volsnap-restore-";
/// Prefix of the directory the previous content is moved to during the swap.
pub const ASIDE_PREFIX: &str = ".volsnap-replaced-";
const CHUNK: usize = 1 << 16;

/// What restore may do beyond plain files, directories and links.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Allow device nodes and setuid/setgid files.
    pub allow_special: bool,
}

/// What a restore wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct RestoreStats {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Restores one volume's archive into `target` (created if missing).
pub fn restore_volume(
    archive: &Path,
    compression: Compression,
    volume: &VolumeRecord,
    target: &Path,
    options: RestoreOptions,
    cancel: &Cancel,
    progress: &dyn Fn(u64),
) -> Result<RestoreStats> {
    fs::create_dir_all(target)
        .with_context(|| format!("cannot create restore target {}", target.display()))?;
    let target = target
        .canonicalize()
        .with_context(|| format!("cannot resolve restore target {}", target.display()))?;
    let tag = format!(
        "{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    );
    let staging = target.join(format!("{STAGING_PREFIX}{tag}"));
    crate::fsutil::create_private_dir(&staging)?;
    let extracted = extract(
        archive,
        compression,
        volume,
        &staging,
        options,
        cancel,
        progress,
    );
    let (stats, root) = match extracted {
        Ok(done) => done,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e.context(format!(
                "restore of {} into {} failed; the target was left as it was",
                volume.name,
                target.display()
            )));
        }
    };
    swap_in(
        &target,
        &staging,
        &target.join(format!("{ASIDE_PREFIX}{tag}")),
    )?;
    if let Some(root) = root {
        apply_metadata(&target, &root.0, &root.1, true)?;
    }
    Ok(stats)
}

type Xattrs = Vec<(String, Vec<u8>)>;
type RootMeta = (FileEntry, Xattrs);

fn extract(
    archive: &Path,
    compression: Compression,
    volume: &VolumeRecord,
    staging: &Path,
    options: RestoreOptions,
    cancel: &Cancel,
    progress: &dyn Fn(u64),
) -> Result<(RestoreStats, Option<RootMeta>)> {
    let mut reader = ArchiveReader::open(archive, compression)?;
    let mut checker = EntryChecker::new(volume);
    let mut stats = RestoreStats::default();
    let mut root = None;
    // Directory metadata is applied last, deepest first, so restrictive
    // modes and mtimes are not disturbed by the entries created inside.
    let mut dirs: Vec<(PathBuf, FileEntry, Xattrs)> = Vec::new();
    for entry in reader.archive().entries()? {
        cancel.check()?;
        let mut entry = entry.map_err(|e| anyhow!("{}: archive is corrupt: {e}", volume.name))?;
        let tar_type = entry.header().entry_type();
        if tar_type == tar::EntryType::XGlobalHeader {
            continue;
        }
        let path = entry_path(&entry);
        let relative = safe_relative(&path)?;
        let record = checker.check(&path, tar_type)?.clone();
        if record.mode & 0o6000 != 0 && !options.allow_special {
            bail!("{path:?} is setuid or setgid; refusing it (pass --allow-special to restore such files)");
        }
        let xattrs = entry_xattrs(&mut entry)?;
        stats.entries += 1;
        if relative.as_os_str().is_empty() {
            root = Some((record, xattrs));
            continue;
        }
        let dest = staging.join(&relative);
        ensure_parents(staging, &relative)?;
        match record.kind {
            EntryKind::Dir => {
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        bail!("{path:?} is both a directory and something else in the archive")
                    }
                    Err(_) => fs::create_dir(&dest)
                        .with_context(|| format!("cannot create {}", dest.display()))?,
                }
                dirs.push((dest, record, xattrs));
                continue;
            }
            EntryKind::File => {
                let (digest, len) = write_file(&mut entry, &dest, progress)?;
                if len != record.size {
                    bail!(
                        "{}: file {path} holds {len} of its {} bytes; the archive is truncated or corrupt",
                        volume.name,
                        record.size
                    );
                }
                if Some(&digest) != record.sha256.as_ref() {
                    bail!(
                        "{}: file {path} does not match the manifest (SHA-256 {digest}, expected {}); the archive is corrupt",
                        volume.name,
                        record.sha256.as_deref().unwrap_or("none")
                    );
                }
                stats.files += 1;
                stats.bytes += len;
            }
            EntryKind::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| anyhow!("symlink {path:?} has no target"))?;
                let target = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&target);
                std::os::unix::fs::symlink(target, &dest)
                    .with_context(|| format!("cannot create symlink {}", dest.display()))?;
            }
            EntryKind::Hardlink => {
                let raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| anyhow!("hard link {path:?} has no target"))?;
                let link_target = String::from_utf8_lossy(&raw)
                    .trim_start_matches("./")
                    .to_string();
                let source = staging.join(safe_relative(&link_target)?);
                let meta = fs::symlink_metadata(&source)
                    .map_err(|_| anyhow!("hard link {path:?} points to {link_target:?}, which is not an earlier file of the archive"))?;
                if !meta.is_file() {
                    bail!(
                        "hard link {path:?} points to {link_target:?}, which is not a regular file"
                    );
                }
                fs::hard_link(&source, &dest)
                    .with_context(|| format!("cannot create hard link {}", dest.display()))?;
                continue; // shares the metadata of its target
            }
            EntryKind::Fifo => {
                nix::unistd::mkfifo(&dest, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .with_context(|| format!("cannot create fifo {}", dest.display()))?;
            }
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                if !options.allow_special {
                    bail!("{path:?} is a device node; refusing it (pass --allow-special to restore device nodes)");
                }
                let header = entry.header();
                let major = header.device_major()?.unwrap_or(0);
                let minor = header.device_minor()?.unwrap_or(0);
                let kind = if record.kind == EntryKind::CharDevice {
                    nix::sys::stat::SFlag::S_IFCHR
                } else {
                    nix::sys::stat::SFlag::S_IFBLK
                };
                nix::sys::stat::mknod(
                    &dest,
                    kind,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                    nix::sys::stat::makedev(major.into(), minor.into()),
                )
                .with_context(|| format!("cannot create device node {}", dest.display()))?;
            }
        }
        apply_metadata(&dest, &record, &xattrs, record.kind != EntryKind::Symlink)?;
    }
    checker.finish()?;
    let (digest, _) = reader.finish()?;
    if digest != volume.sha256 {
        bail!(
            "{}: archive SHA-256 is {digest}, the manifest says {}; the archive is corrupt",
            volume.name,
            volume.sha256
        );
    }
    for (dir, record, xattrs) in dirs.iter().rev() {
        apply_metadata(dir, record, xattrs, true)?;
    }
    Ok((stats, root))
}

/// Turns an archive path into a relative path that stays inside the
/// target: no root, no `..`, nothing but plain names.
pub fn safe_relative(path: &str) -> Result<PathBuf> {
    if path == "." {
        return Ok(PathBuf::new());
    }
    if path.contains('\0') {
        bail!("archive entry {path:?} has a NUL byte in its name; refusing it");
    }
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                bail!("archive entry {path:?} is an absolute path; refusing to write outside the target")
            }
            Component::ParentDir => {
                bail!("archive entry {path:?} contains '..'; refusing to write outside the target")
            }
        }
    }
    if out.as_os_str().is_empty() {
        bail!("archive entry {path:?} has an empty name");
    }
    Ok(out)
}

/// Makes sure every directory above `relative` inside `staging` is a real
/// directory, never a symlink (which could lead the write elsewhere).
fn ensure_parents(staging: &Path, relative: &Path) -> Result<()> {
    let mut current = staging.to_path_buf();
    let parents: Vec<_> = relative.components().collect();
    for component in &parents[..parents.len().saturating_sub(1)] {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "archive entry {} would be written through {}, which is not a directory (a symlink?); refusing it",
                relative.display(),
                current.strip_prefix(staging).unwrap_or(&current).display()
            ),
            Err(_) => fs::create_dir(&current).with_context(|| format!("cannot create {}", current.display()))?,
        }
    }
    Ok(())
}

/// Writes a regular file's content, leaving holes where the data is zeros.
fn write_file(
    entry: &mut tar::Entry<'_, Decompressor>,
    dest: &Path,
    progress: &dyn Fn(u64),
) -> Result<(String, u64)> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    let write_err = || format!("cannot write {}", dest.display());
    loop {
        let n = entry.read(&mut buf).context("cannot read the archive")?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        hasher.update(chunk);
        if chunk.iter().all(|&b| b == 0) {
            file.seek(SeekFrom::Current(n as i64))
                .with_context(write_err)?;
        } else {
            file.write_all(chunk).with_context(write_err)?;
        }
        len += n as u64;
        progress(n as u64);
    }
    file.set_len(len).with_context(write_err)?;
    Ok((hex::encode(hasher.finalize()), len))
}

/// Owner, extended attributes, mode and mtime, in an order that keeps
/// them all (chown clears setuid bits, so mode comes after it).
fn apply_metadata(
    path: &Path,
    record: &FileEntry,
    xattrs: &[(String, Vec<u8>)],
    set_mode: bool,
) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(record.uid), Some(record.gid))
        .with_context(|| format!("cannot set the owner of {}", path.display()))?;
    for (name, value) in xattrs {
        if let Err(e) = xattr::set(path, name, value) {
            tracing::warn!(
                "cannot restore extended attribute {name} on {}: {e}",
                path.display()
            );
        }
    }
    if set_mode {
        fs::set_permissions(path, fs::Permissions::from_mode(record.mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    }
    let mtime = nix::sys::time::TimeSpec::new(record.mtime, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &mtime,
        &mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .with_context(|| format!("cannot set the modification time of {}", path.display()))?;
    Ok(())
}

/// Replaces the content of `target` with that of `staging`: old entries are
/// moved aside, new ones moved in, then the old ones deleted. On failure the
/// moves are reversed.
fn swap_in(target: &Path, staging: &Path, aside: &Path) -> Result<()> {
    crate::fsutil::create_private_dir(aside)?;
    let ours = |name: &std::ffi::OsStr| {
        let n = name.to_string_lossy();
        n.starts_with(STAGING_PREFIX) || n.starts_with(ASIDE_PREFIX)
    };
    let names_in = |dir: &Path| -> Result<Vec<std::ffi::OsString>> {
        fs::read_dir(dir)
            .and_then(|l| l.map(|e| e.map(|e| e.file_name())).collect())
            .with_context(|| format!("cannot list {}", dir.display()))
    };
    let old: Vec<_> = names_in(target)?.into_iter().filter(|n| !ours(n)).collect();
    let new = names_in(staging)?;
    let mut moved_aside = Vec::new();
    let mut moved_in = Vec::new();
    let result = (|| -> Result<()> {
        for name in &old {
            fs::rename(target.join(name), aside.join(name))
                .with_context(|| format!("cannot move {} aside", target.join(name).display()))?;
            moved_aside.push(name.clone());
        }
        for name in &new {
            fs::rename(staging.join(name), target.join(name)).with_context(|| {
                format!("cannot move {} into place", target.join(name).display())
            })?;
            moved_in.push(name.clone());
        }
        Ok(())
    })();
    if let Err(e) = result {
        for name in moved_in.iter().rev() {
            let _ = fs::rename(target.join(name), staging.join(name));
        }
        for name in moved_aside.iter().rev() {
            let _ = fs::rename(aside.join(name), target.join(name));
        }
        let _ = fs::remove_dir_all(staging);
        let _ = fs::remove_dir(aside);
        return Err(e.context(
            "restore could not swap the new content in; the previous content was put back",
        ));
    }
    fs::remove_dir(staging).with_context(|| format!("cannot remove {}", staging.display()))?;
    fs::remove_dir_all(aside)
        .with_context(|| format!("cannot remove the replaced content at {}", aside.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_stay_inside() {
        assert_eq!(safe_relative("a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(safe_relative("./a").unwrap(), PathBuf::from("a"));
        assert_eq!(safe_relative(".").unwrap(), PathBuf::new());
        assert!(safe_relative("../x").is_err());
        assert!(safe_relative("a/../../x").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
    }
}
