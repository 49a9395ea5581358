//! A directory tree that restore writes into, with every path resolved
//! inside it and never through a symlink.
//!
//! An archive is hostile input: it may hold a symlink `s -> /etc` and then a
//! file `s/passwd`, or a hard link whose source is `s/shadow`. Checking
//! paths first and using them later leaves a window, and a path checked
//! component by component is still resolved by the kernel again when used.
//! So nothing here takes a path: each operation works on a directory
//! descriptor and one plain name. Directories are reached from the root's
//! descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, or,
//! where the kernel or a seccomp filter lacks it, one component at a time
//! with `O_NOFOLLOW | O_DIRECTORY` (`..` never gets here: [`plain_names`]
//! refuses it).

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// The root of a tree being written, and the directory last resolved in it
/// (entries of one directory come together in an archive).
pub struct Beneath {
    root: OwnedFd,
    last: Option<(PathBuf, std::rc::Rc<OwnedFd>)>,
}

/// A directory of the tree, open, and a name in it.
pub struct At {
    pub dir: std::rc::Rc<OwnedFd>,
    pub name: OsString,
}

impl At {
    /// `/proc/self/fd/N/NAME`: for the calls that only take paths (xattrs
    /// of a symlink). The kernel resolves the descriptor itself, and the
    /// callers use the variants that do not follow the final name.
    pub fn proc_path(&self) -> PathBuf {
        proc_fd_path(self.dir.as_fd()).join(&self.name)
    }
}

/// The path in /proc of an open descriptor.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

impl Beneath {
    /// Opens `root` (a path the host chose, not the archive).
    pub fn open(root: &Path) -> io::Result<Beneath> {
        let root = nix::fcntl::open(root, DIR_FLAGS, Mode::empty())?;
        Ok(Beneath { root, last: None })
    }

    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The parent directory of `rel` (a relative path of plain names),
    /// opened, and the final name. With `create`, missing directories on the
    /// way are made (mode 0700: the real modes come at the end). A symlink
    /// or anything but a directory on the way is an error (`ELOOP`,
    /// `ENOTDIR`), never followed.
    pub fn parent_of(&mut self, rel: &Path, create: bool) -> io::Result<At> {
        let names = plain_names(rel)?;
        let (name, dirs) = names
            .split_last()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let dir_rel: PathBuf = dirs.iter().collect();
        let dir = match &self.last {
            Some((cached, fd)) if *cached == dir_rel => fd.clone(),
            _ => {
                let fd = std::rc::Rc::new(self.open_dir(dirs, create)?);
                self.last = Some((dir_rel, fd.clone()));
                fd
            }
        };
        Ok(At {
            dir,
            name: (*name).to_owned(),
        })
    }

    /// Opens the directory `rel` of the tree ("" is the root).
    pub fn dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.open_dir(&plain_names(rel)?, false)
    }

    fn open_dir(&self, names: &[&OsStr], create: bool) -> io::Result<OwnedFd> {
        if names.is_empty() {
            return self.root.try_clone();
        }
        if !create {
            let path: PathBuf = names.iter().collect();
            let how = OpenHow::new().flags(DIR_FLAGS).resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
            match nix::fcntl::openat2(self.root.as_fd(), &path, how) {
                Ok(fd) => return Ok(fd),
                // No openat2 here (kernel before 5.6, or a seccomp filter):
                // walk it one name at a time below.
                Err(nix::errno::Errno::ENOSYS | nix::errno::Errno::EPERM) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut current = self.root.try_clone()?;
        for name in names {
            current = match nix::fcntl::openat(&current, *name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(nix::errno::Errno::ENOENT) if create => {
                    match nix::sys::stat::mkdirat(&current, *name, Mode::from_bits_truncate(0o700))
                    {
                        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    nix::fcntl::openat(&current, *name, DIR_FLAGS, Mode::empty())?
                }
                Err(e) => return Err(e.into()),
            };
        }
        Ok(current)
    }
}

/// The names of a relative path, refusing anything that could leave the
/// tree: a root, `..`, an empty path. `.` components are dropped.
pub fn plain_names(rel: &Path) -> io::Result<Vec<&OsStr>> {
    let mut names = Vec::new();
    for component in rel.components() {
        match component {
            Component::Normal(name) => names.push(name),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} leaves the tree", rel.display()),
                ))
            }
        }
    }
    Ok(names)
}

/// Opens an object of the tree without following a symlink and without
/// reading it (`O_PATH`): for metadata calls on what was just created.
pub fn open_path(at: &At) -> io::Result<File> {
    let fd = nix::fcntl::openat(
        &*at.dir,
        at.name.as_os_str(),
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_on_the_way_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("s")).unwrap();
        std::os::unix::fs::symlink("a", root.join("rel")).unwrap();
        let mut tree = Beneath::open(&root).unwrap();
        assert!(tree.parent_of(Path::new("a/b/f"), false).is_ok());
        for path in ["s/f", "s/x/f", "rel/b/f"] {
            for create in [false, true] {
                let err = tree.parent_of(Path::new(path), create).err();
                assert!(err.is_some(), "{path} (create {create}) resolved");
            }
        }
        for path in ["../f", "/etc/passwd", "a/../../f", ""] {
            assert!(tree.parent_of(Path::new(path), true).is_err(), "{path}");
        }
        // Creation makes the missing directories inside, nowhere else.
        tree.parent_of(Path::new("new/deeper/f"), true).unwrap();
        assert!(root.join("new/deeper").is_dir());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert!(tree.dir(Path::new("s")).is_err());
        assert!(tree.dir(Path::new("a/b")).is_ok());
    }
}
