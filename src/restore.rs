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

use crate::archive::{entry_path, entry_xattrs, ArchiveReader, ArchiveStream, EntryChecker};
use crate::cancel::Cancel;
use crate::journal::{Journal, Undo};
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

/// Restores one volume's archive into `target` (created if missing). With a
/// journal, the staging directory and the swap are recorded first, so a run
/// killed midway is put right by `volsnap recover`.
#[allow(clippy::too_many_arguments)]
pub fn restore_volume(
    archive: &Path,
    compression: Compression,
    volume: &VolumeRecord,
    target: &Path,
    options: RestoreOptions,
    cancel: &Cancel,
    progress: &dyn Fn(u64),
    mut journal: Option<&mut Journal>,
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
    let aside = target.join(format!("{ASIDE_PREFIX}{tag}"));
    let remove_staging = Undo::RemoveDir {
        path: staging.clone(),
    };
    if let Some(j) = journal.as_deref_mut() {
        j.push(&remove_staging)?;
    }
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
            if let Some(j) = journal.as_deref_mut() {
                let _ = j.discharge(&remove_staging);
            }
            return Err(e.context(format!(
                "restore of {} into {} failed; the target was left as it was",
                volume.name,
                target.display()
            )));
        }
    };
    let old_names: Vec<String> = list_names(&target)?
        .into_iter()
        .filter(|n| !is_ours(n))
        .collect();
    let swap = Undo::RestoreSwap {
        target: target.clone(),
        staging: staging.clone(),
        aside: aside.clone(),
        old_names: old_names.clone(),
    };
    if let Some(j) = journal.as_deref_mut() {
        j.push(&swap)?;
    }
    swap_in(&target, &staging, &aside, &old_names)?;
    if let Some(root) = root {
        apply_metadata(&target, &root.0, &root.1, true)?;
    }
    if let Some(j) = journal {
        j.discharge(&swap)?;
        j.discharge(&remove_staging)?;
    }
    Ok(stats)
}

fn is_ours(name: &str) -> bool {
    name.starts_with(STAGING_PREFIX) || name.starts_with(ASIDE_PREFIX)
}

fn list_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        names.push(
            entry
                .file_name()
                .into_string()
                .map_err(|n| anyhow!("{} has a name that is not UTF-8: {n:?}", dir.display()))?,
        );
    }
    Ok(names)
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
    entry: &mut tar::Entry<'_, ArchiveStream>,
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

/// Replaces the content of `target` with that of `staging`: the old entries
/// (`old_names`) are moved aside, the new ones moved in, then the old ones
/// deleted. On failure the previous content is put back.
fn swap_in(target: &Path, staging: &Path, aside: &Path, old_names: &[String]) -> Result<()> {
    let result = (|| -> Result<()> {
        crate::fsutil::create_private_dir(aside)?;
        for name in old_names {
            fs::rename(target.join(name), aside.join(name))
                .with_context(|| format!("cannot move {} aside", target.join(name).display()))?;
        }
        for name in list_names(staging)? {
            fs::rename(staging.join(&name), target.join(&name)).with_context(|| {
                format!("cannot move {} into place", target.join(&name).display())
            })?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        roll_back_swap(target, staging, aside, old_names)
            .context("and putting the previous content back failed too")?;
        return Err(e.context(
            "restore could not swap the new content in; the previous content was put back",
        ));
    }
    fs::remove_dir(staging).with_context(|| format!("cannot remove {}", staging.display()))?;
    fs::remove_dir_all(aside)
        .with_context(|| format!("cannot remove the replaced content at {}", aside.display()))?;
    Ok(())
}

/// Undoes an interrupted swap, whatever point it reached: entries that came
/// from the staging directory are removed, entries moved aside come back.
pub fn roll_back_swap(
    target: &Path,
    staging: &Path,
    aside: &Path,
    old_names: &[String],
) -> Result<()> {
    if aside.exists() {
        for name in list_names(target)? {
            if is_ours(&name) {
                continue;
            }
            // New content: a name the target did not have, or one whose old
            // entry was already moved aside.
            let is_new = !old_names.contains(&name) || aside.join(&name).symlink_metadata().is_ok();
            if is_new {
                let path = target.join(&name);
                let removed = if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed.with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        for name in list_names(aside)? {
            fs::rename(aside.join(&name), target.join(&name))
                .with_context(|| format!("cannot move {} back", target.join(&name).display()))?;
        }
        fs::remove_dir(aside).with_context(|| format!("cannot remove {}", aside.display()))?;
    }
    match fs::remove_dir_all(staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", staging.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_swaps_roll_back_at_every_point() {
        // Old content {a, b}; new content {b, c}. Interrupt after each move.
        let old = ["a", "b"].map(String::from);
        for moves_done in 0..=4 {
            let dir = tempfile::tempdir().unwrap();
            let (target, staging, aside) = (
                dir.path().join("t"),
                dir.path().join("t/.volsnap-restore-1"),
                dir.path().join("t/.volsnap-replaced-1"),
            );
            fs::create_dir_all(&staging).unwrap();
            fs::create_dir(&aside).unwrap();
            for n in ["a", "b"] {
                fs::write(target.join(n), format!("old {n}")).unwrap();
            }
            for n in ["b", "c"] {
                fs::write(staging.join(n), format!("new {n}")).unwrap();
            }
            let moves = [
                ("a", &target, &aside),
                ("b", &target, &aside),
                ("b", &staging, &target),
                ("c", &staging, &target),
            ];
            for (name, from, to) in moves.iter().take(moves_done) {
                fs::rename(from.join(name), to.join(name)).unwrap();
            }
            roll_back_swap(&target, &staging, &aside, &old).unwrap();
            let mut names = list_names(&target).unwrap();
            names.sort();
            assert_eq!(names, ["a", "b"], "after {moves_done} moves");
            assert_eq!(fs::read(target.join("a")).unwrap(), b"old a");
            assert_eq!(
                fs::read(target.join("b")).unwrap(),
                b"old b",
                "after {moves_done} moves"
            );
        }
    }

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
