//! The stack's definition, kept with its data: the compose files its
//! containers name (and the project's `.env`, which those files read) and
//! the regular files they bind-mount read-only (configuration such as
//! `milvus.yaml`). A backup stores them under their host paths as one more
//! tree (`VolumeKind::Definition`), encrypted like file contents; a restore
//! writes them out only into a directory the operator names, never over
//! the live files.
//!
//! Which files is decided by the live containers' own labels and mounts,
//! read by the host; nothing here comes from a repository.

use crate::discovery::{own_label, Stack};
use anyhow::{Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A file larger than this is not kept (a definition file is small; a
/// large bound file is data, and belongs in a volume).
pub const MAX_FILE: u64 = 1 << 20;
/// Nor more than this in all.
pub const MAX_TOTAL: u64 = 16 << 20;

/// The host files that define `stack`, in a stable order, and why
/// others were left out.
pub fn files(stack: &Stack) -> (Vec<PathBuf>, Vec<String>) {
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut notes = Vec::new();
    let mut add = |path: PathBuf| {
        if !paths.contains(&path) {
            paths.push(path);
        }
    };
    for c in &stack.containers {
        if let (Some(dir), Some(config_files)) = (
            own_label(&c.info, crate::compose::WORKING_DIR_LABEL),
            own_label(&c.info, crate::compose::CONFIG_FILES_LABEL),
        ) {
            let dir = Path::new(dir);
            if dir.is_absolute() {
                for name in config_files
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                {
                    add(dir.join(name));
                }
                // Compose substitutes variables from the project's `.env`.
                let env = dir.join(".env");
                if env.is_file() {
                    add(env);
                }
            }
        }
        for m in &c.info.mounts {
            if m.kind == "bind" && m.read_only && Path::new(&m.source).is_file() {
                add(PathBuf::from(&m.source));
            }
        }
    }
    paths.retain(|p| {
        let keep = p.is_absolute() && p.components().all(|c| c != std::path::Component::ParentDir);
        if !keep {
            notes.push(format!(
                "stack definition: {} is not a plain absolute path: not kept",
                p.display()
            ));
        }
        keep
    });
    (paths, notes)
}

/// What [`stage`] copied.
pub struct Staged {
    pub files: usize,
    pub bytes: u64,
    /// Files named but not kept, and why.
    pub notes: Vec<String>,
}

/// Copies `paths` into `dir` under their host paths (`/srv/x/a.yml` as
/// `dir/srv/x/a.yml`), each at most [`MAX_FILE`] and all together at most
/// [`MAX_TOTAL`] bytes. A path that is not a regular file now, or cannot
/// be read, is left out and noted.
pub fn stage(paths: &[PathBuf], dir: &Path) -> Result<Staged> {
    let mut staged = Staged {
        files: 0,
        bytes: 0,
        notes: Vec::new(),
    };
    for path in paths {
        let (bytes, mode) = match read_bounded(path) {
            Ok(b) => b,
            Err(why) => {
                staged.notes.push(format!(
                    "stack definition: {} {why}: not kept",
                    path.display()
                ));
                continue;
            }
        };
        if staged.bytes + bytes.len() as u64 > MAX_TOTAL {
            staged.notes.push(format!(
                "stack definition: {} would take the definition over {} MiB: not kept",
                path.display(),
                MAX_TOTAL >> 20
            ));
            continue;
        }
        let relative = path.strip_prefix("/").unwrap_or(path);
        let to = dir.join(relative);
        // A file where another file's directory goes (two paths of the
        // definition, one inside the other): noted, not a failed backup.
        if let Err(e) = write_staged(&to, &bytes, mode) {
            staged.notes.push(format!(
                "stack definition: {} cannot be kept ({e:#}): not kept",
                path.display()
            ));
            continue;
        }
        staged.files += 1;
        staged.bytes += bytes.len() as u64;
    }
    Ok(staged)
}

fn write_staged(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    crate::fsutil::write_private(to, bytes)?;
    // Its permission bits as they are (the staging directory is 0700).
    std::fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", to.display()))
}

/// A regular file's content and permission bits, if it is one and not
/// too large; else why not.
fn read_bounded(path: &Path) -> std::result::Result<(Vec<u8>, u32), String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // The file itself may sit in a directory a container writes (a
    // project bound into its service): a symlink put in its place is not
    // followed (it could name a secret of the host's), nor is a device
    // made a terminal; non-blocking, so that a FIFO cannot hang the
    // backup; checked to be a regular file once open.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot be read ({e})"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot be read ({e})"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.len() > MAX_FILE {
        return Err(format!("is larger than {} KiB", MAX_FILE >> 10));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot be read ({e})"))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!("is larger than {} KiB", MAX_FILE >> 10));
    }
    Ok((bytes, meta.permissions().mode() & 0o777))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_staged_under_their_host_paths_and_bounded() {
        let src = tempfile::tempdir().unwrap();
        let small = src.path().join("milvus.yaml");
        std::fs::write(&small, b"common: {}\n").unwrap();
        let big = src.path().join("big.bin");
        std::fs::write(&big, vec![0u8; (MAX_FILE + 1) as usize]).unwrap();
        let missing = src.path().join("gone.yml");
        // A symlink put in a file's place (to a host secret, say).
        let link = src.path().join(".env");
        std::os::unix::fs::symlink(&small, &link).unwrap();
        let out = tempfile::tempdir().unwrap();
        let staged = stage(&[small.clone(), big, missing, link], out.path()).unwrap();
        assert_eq!(staged.files, 1);
        assert_eq!(staged.notes.len(), 3, "{:?}", staged.notes);
        assert!(!out
            .path()
            .join(src.path().strip_prefix("/").unwrap())
            .join(".env")
            .exists());
        let copy = out.path().join(small.strip_prefix("/").unwrap());
        assert_eq!(std::fs::read(copy).unwrap(), b"common: {}\n");
    }
}
