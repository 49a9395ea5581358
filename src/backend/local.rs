//! A repository in a local directory (or any mounted filesystem).
//!
//! Every object is reached from the root's descriptor without following a
//! symlink ([`Beneath`]): whoever can write the repository cannot make
//! volsnap read or write outside it. Objects are written to an exclusive
//! temporary file beside their final name, fsynced, then renamed into place
//! (`write`) or hard-linked into place (`create_new`: `link` fails if the
//! name exists, which makes the create-if-absent atomic), and the
//! directory is fsynced, so a crash leaves the whole object or none of it.

use super::{check_name, Backend, Missing, ObjectInfo};
use crate::beneath::{proc_fd_path, At, Beneath};
use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Prefix of objects being written; never listed, removed by `prune`.
const TEMP_PREFIX: &str = ".tmp-";

pub struct LocalBackend {
    root: PathBuf,
    counter: AtomicU64,
}

impl LocalBackend {
    /// The repository directory `root`, which must exist.
    pub fn open(root: &Path) -> Result<Self> {
        let meta = std::fs::metadata(root)
            .with_context(|| format!("cannot open repository {}", root.display()))?;
        if !meta.is_dir() {
            anyhow::bail!("repository {} is not a directory", root.display());
        }
        Ok(Self {
            root: root.to_path_buf(),
            counter: AtomicU64::new(0),
        })
    }

    fn at(&self, name: &str, create: bool) -> Result<At> {
        check_name(name)?;
        let mut tree = Beneath::open(&self.root)
            .with_context(|| format!("cannot open repository {}", self.root.display()))?;
        tree.parent_of(Path::new(name), create)
            .map_err(|e| self.io_error(name, e))
    }

    fn io_error(&self, name: &str, e: std::io::Error) -> anyhow::Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::Error::new(Missing {
                name: name.to_string(),
                location: self.location(),
            })
        } else {
            anyhow::Error::new(e).context(format!("cannot access {name} in {}", self.location()))
        }
    }

    fn open_object(&self, name: &str) -> Result<File> {
        let at = self.at(name, false)?;
        let fd = nix::fcntl::openat(
            &*at.dir,
            at.name.as_os_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io_error(name, e.into()))?;
        let file = File::from(fd);
        if !file.metadata()?.is_file() {
            anyhow::bail!("{name} in {} is not a regular file", self.location());
        }
        Ok(file)
    }

    /// Writes `bytes` to a fresh temporary file in `at.dir`, fsynced; its name.
    fn write_temp(&self, at: &At, bytes: &[u8]) -> Result<String> {
        for _ in 0..16 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let temp = format!(
                "{TEMP_PREFIX}{}-{}-{nanos:08x}",
                std::process::id(),
                self.counter.fetch_add(1, Ordering::Relaxed)
            );
            let fd = match nix::fcntl::openat(
                &*at.dir,
                temp.as_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => fd,
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut file = File::from(fd);
            let written = file.write_all(bytes).and_then(|()| file.sync_all());
            if let Err(e) = written {
                let _ = nix::unistd::unlinkat(
                    &*at.dir,
                    temp.as_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
                return Err(e.into());
            }
            return Ok(temp);
        }
        anyhow::bail!("no free temporary name")
    }
}

fn sync(dir: &OwnedFd) -> std::io::Result<()> {
    nix::unistd::fsync(dir.as_fd()).map_err(Into::into)
}

fn info(name: String, meta: &std::fs::Metadata) -> ObjectInfo {
    use std::os::unix::fs::MetadataExt;
    ObjectInfo {
        name,
        size: meta.len(),
        modified: UNIX_EPOCH
            + Duration::new(
                u64::try_from(meta.mtime()).unwrap_or(0),
                u32::try_from(meta.mtime_nsec()).unwrap_or(0),
            ),
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn read(&self, name: &str) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open_object(name)?
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {name} in {}", self.location()))?;
        Ok(bytes)
    }

    fn read_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let file = self.open_object(name)?;
        let mut bytes = vec![0; usize::try_from(length)?];
        file.read_exact_at(&mut bytes, offset).with_context(|| {
            format!(
                "cannot read {length} bytes at {offset} of {name} in {}",
                self.location()
            )
        })?;
        Ok(bytes)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let at = self.at(name, true)?;
        let done = self.write_temp(&at, bytes).and_then(|temp| {
            nix::fcntl::renameat(&*at.dir, temp.as_str(), &*at.dir, at.name.as_os_str())?;
            sync(&at.dir)?;
            Ok(())
        });
        done.with_context(|| format!("cannot write {name} in {}", self.location()))
    }

    fn create_new(&self, name: &str, bytes: &[u8]) -> Result<bool> {
        let at = self.at(name, true)?;
        let temp = self
            .write_temp(&at, bytes)
            .with_context(|| format!("cannot write {name} in {}", self.location()))?;
        let linked = nix::unistd::linkat(
            &*at.dir,
            temp.as_str(),
            &*at.dir,
            at.name.as_os_str(),
            AtFlags::empty(),
        );
        let _ = nix::unistd::unlinkat(
            &*at.dir,
            temp.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        match linked {
            Ok(()) => {
                sync(&at.dir)?;
                Ok(true)
            }
            Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(anyhow::Error::new(e)
                .context(format!("cannot write {name} in {}", self.location()))),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        check_name(prefix)?;
        let tree = Beneath::open(&self.root)
            .with_context(|| format!("cannot open repository {}", self.root.display()))?;
        let mut found = Vec::new();
        let mut pending = vec![prefix.to_string()];
        while let Some(dir) = pending.pop() {
            let fd = match tree.dir(Path::new(&dir)) {
                Ok(fd) => fd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_error(&dir, e)),
            };
            let listing = std::fs::read_dir(proc_fd_path(fd.as_fd()))
                .with_context(|| format!("cannot list {dir} in {}", self.location()))?;
            for entry in listing {
                let entry = entry?;
                let Some(file_name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let name = format!("{dir}/{file_name}");
                if check_name(&name).is_err() {
                    continue; // temporary files, and names volsnap never writes
                }
                let meta = entry.metadata()?; // does not follow a symlink
                if meta.is_dir() {
                    pending.push(name);
                } else if meta.is_file() {
                    found.push(info(name, &meta));
                }
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    fn stat(&self, name: &str) -> Result<Option<ObjectInfo>> {
        match self.open_object(name) {
            Ok(file) => Ok(Some(info(name.to_string(), &file.metadata()?))),
            Err(e) if super::is_missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn delete(&self, name: &str) -> Result<()> {
        let at = match self.at(name, false) {
            Ok(at) => at,
            Err(e) if super::is_missing(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        match nix::unistd::unlinkat(
            &*at.dir,
            at.name.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) => Ok(sync(&at.dir)?),
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(anyhow::Error::new(e)
                .context(format!("cannot delete {name} in {}", self.location()))),
        }
    }

    fn sweep_temporaries(&self, age: Duration) -> Result<usize> {
        // Temporary files sit beside the objects they were to become; the
        // walk never follows a symlink (a planted one leads nowhere).
        let now = SystemTime::now();
        let mut swept = 0;
        let mut pending = vec![self.root.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if kind.is_dir() && name != "lost+found" {
                    pending.push(entry.path());
                } else if kind.is_file() && name.starts_with(TEMP_PREFIX) {
                    let old = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > age);
                    if old && std::fs::remove_file(entry.path()).is_ok() {
                        swept += 1;
                    }
                }
            }
        }
        Ok(swept)
    }

    fn top_level(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.root)
            .with_context(|| format!("cannot list {}", self.root.display()))?
        {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name != "lost+found" {
                names.push(name);
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeping_removes_only_old_temporaries_and_never_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let backend = LocalBackend::open(dir.path()).unwrap();
        backend.write("data/ab/abcd", b"pack").unwrap();
        let old = SystemTime::now() - Duration::from_secs(7200);
        let stale = dir.path().join("data/ab/.tmp-1-2-3");
        let fresh = dir.path().join("data/ab/.tmp-4-5-6");
        let beyond = outside.path().join(".tmp-7-8-9");
        for path in [&stale, &fresh, &beyond] {
            std::fs::write(path, b"half").unwrap();
        }
        for path in [&stale, &beyond] {
            File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        std::os::unix::fs::symlink(outside.path(), dir.path().join("data/cd")).unwrap();
        assert_eq!(
            backend
                .sweep_temporaries(Duration::from_secs(3600))
                .unwrap(),
            1
        );
        assert!(!stale.exists() && fresh.exists() && beyond.exists());
        assert_eq!(backend.read("data/ab/abcd").unwrap(), b"pack");
    }

    #[test]
    fn objects_round_trip_and_create_new_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::open(dir.path()).unwrap();
        backend.write("data/ab/abcd", b"hello world").unwrap();
        assert_eq!(backend.read("data/ab/abcd").unwrap(), b"hello world");
        assert_eq!(backend.read_range("data/ab/abcd", 6, 5).unwrap(), b"world");
        assert!(backend.create_new("config", b"one").unwrap());
        assert!(!backend.create_new("config", b"two").unwrap());
        assert_eq!(backend.read("config").unwrap(), b"one");
        let listed: Vec<String> = backend
            .list("data")
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(listed, ["data/ab/abcd"]);
        assert_eq!(backend.stat("data/ab/abcd").unwrap().unwrap().size, 11);
        let err = backend.read("data/ab/none").unwrap_err();
        assert!(super::super::is_missing(&err), "{err:#}");
        assert!(backend.stat("data/ab/none").unwrap().is_none());
        backend.delete("data/ab/abcd").unwrap();
        backend.delete("data/ab/abcd").unwrap();
        assert!(backend.list("data").unwrap().is_empty());
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("data/ab"))
            .unwrap()
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_symlink_in_the_repository_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"host file").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("data/ab")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("config")).unwrap();
        let backend = LocalBackend::open(&root).unwrap();
        assert!(backend.write("data/ab/x", b"planted").is_err());
        assert!(backend.read("data/ab/secret").is_err());
        assert!(backend.read("config").is_err());
        assert!(backend.list("data").unwrap().is_empty());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }
}
