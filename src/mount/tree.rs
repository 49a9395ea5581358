//! The mounted tree: an arena of nodes numbered as the kernel sees them
//! (inode 1 is the root). Every name comes from the repository and is an
//! attacker's: [`component`] turns it into one path component that cannot
//! leave its directory, or refuses it.

use crate::repo::manifest::{EntryKind, FileEntry};
use crate::repo::v2::id::Id;
use fuser::{FileAttr, FileType};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where a file's content comes from.
#[derive(Clone)]
pub(crate) enum Content {
    /// Format 2: its data blobs, in order.
    Chunks(std::sync::Arc<[Id]>),
    /// Format 1: an entry of a volume archive, found by its path.
    Archived {
        backup: usize,
        volume: usize,
        path: Vec<u8>,
        sha256: Option<String>,
    },
}

pub(crate) enum Body {
    Dir {
        children: BTreeMap<OsString, u64>,
        /// A backup whose entries are read when first looked into (an
        /// index into the mount's backups).
        unread: Option<usize>,
    },
    File(Content),
    Symlink(Vec<u8>),
    /// A FIFO or device node: listed, never opened (the mount is nodev).
    Special,
}

pub(crate) struct Node {
    pub parent: u64,
    pub attr: FileAttr,
    pub body: Body,
}

pub(crate) struct Tree {
    nodes: Vec<Node>,
    /// When the mount was made: the time of the directories volsnap makes.
    pub made: SystemTime,
    /// How many names were refused or skipped.
    pub skipped: usize,
}

const SKIPPED_SAID: usize = 50;

impl Tree {
    pub(crate) fn new() -> Tree {
        let mut tree = Tree {
            nodes: Vec::new(),
            made: SystemTime::now(),
            skipped: 0,
        };
        let root = tree.dir_attr(0o555);
        tree.nodes.push(Node {
            parent: 1,
            attr: root,
            body: Body::Dir {
                children: BTreeMap::new(),
                unread: None,
            },
        });
        tree.nodes[0].attr.ino = 1;
        tree
    }

    pub(crate) fn get(&self, ino: u64) -> Option<&Node> {
        ino.checked_sub(1)
            .and_then(|n| self.nodes.get(usize::try_from(n).ok()?))
    }

    pub(crate) fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        ino.checked_sub(1)
            .and_then(|n| self.nodes.get_mut(usize::try_from(n).ok()?))
    }

    /// A directory volsnap makes (hosts, stacks, backups).
    pub(crate) fn dir_attr(&self, perm: u16) -> FileAttr {
        attr(FileType::Directory, perm, 0, 0, 0, self.made, 0)
    }

    /// Something of the repository that is not shown: said once, on
    /// standard error (at most [`SKIPPED_SAID`] times).
    pub(crate) fn skip(&mut self, why: String) {
        self.skipped += 1;
        if self.skipped <= SKIPPED_SAID {
            tracing::warn!("not shown in the mount: {why}");
        }
    }

    /// Adds `name` under directory `parent`; `None` if the name is taken
    /// (the first one stays) or `parent` is no directory.
    pub(crate) fn add(
        &mut self,
        parent: u64,
        name: OsString,
        mut attr: FileAttr,
        body: Body,
    ) -> Option<u64> {
        let ino = self.nodes.len() as u64 + 1;
        match &mut self.get_mut(parent)?.body {
            Body::Dir { children, .. } => {
                if children.contains_key(&name) {
                    return None;
                }
                children.insert(name, ino);
            }
            _ => return None,
        }
        attr.ino = ino;
        if attr.kind == FileType::Directory {
            attr.nlink = 2;
        }
        self.nodes.push(Node { parent, attr, body });
        Some(ino)
    }

    /// The child `name` of directory `parent`.
    pub(crate) fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        match &self.get(parent)?.body {
            Body::Dir { children, .. } => children.get(name).copied(),
            _ => None,
        }
    }

    /// The directory `name` under `parent`, made if missing.
    pub(crate) fn dir(&mut self, parent: u64, name: OsString) -> Option<u64> {
        if let Some(ino) = self.child(parent, &name) {
            return matches!(self.get(ino)?.body, Body::Dir { .. }).then_some(ino);
        }
        let attr = self.dir_attr(0o555);
        self.add(
            parent,
            name,
            attr,
            Body::Dir {
                children: BTreeMap::new(),
                unread: None,
            },
        )
    }

    /// Adds one entry of a backed-up volume under `volume` (the volume's
    /// directory), its path split into checked components. Missing parent
    /// directories are made; hard links share their target's node.
    pub(crate) fn add_entry(
        &mut self,
        volume: u64,
        entry: &FileEntry,
        content: Option<Content>,
        mtime_ns: u32,
        rdev: u64,
    ) {
        let shown = || crate::text::escape(&entry.path).into_owned();
        let Ok(raw) = entry.raw_path() else {
            return self.skip(format!("{}: an undecodable name", shown()));
        };
        let Some(parts) = split(&raw) else {
            return self.skip(format!("{}: a name that would leave its volume", shown()));
        };
        let mtime = time(entry.mtime, mtime_ns);
        let Some((last, dirs)) = parts.split_last() else {
            // The volume's root: its own mode, owner and time.
            if let Some(node) = self.get_mut(volume) {
                if entry.kind == EntryKind::Dir {
                    node.attr.perm = (entry.mode & 0o7777) as u16;
                    node.attr.uid = entry.uid;
                    node.attr.gid = entry.gid;
                    node.attr.mtime = mtime;
                    node.attr.ctime = mtime;
                }
            }
            return;
        };
        let mut parent = volume;
        for dir in dirs {
            match self.dir(parent, OsString::from_vec(dir.to_vec())) {
                Some(ino) => parent = ino,
                None => return self.skip(format!("{}: its parent is not a directory", shown())),
            }
        }
        let name = OsString::from_vec(last.to_vec());
        let perm = (entry.mode & 0o7777) as u16;
        let (kind, body, size) = match entry.kind {
            EntryKind::Dir => {
                // Listed after a child made it: set its metadata now.
                if let Some(ino) = self.child(parent, &name) {
                    if let Some(node) = self
                        .get_mut(ino)
                        .filter(|n| n.attr.kind == FileType::Directory)
                    {
                        node.attr.perm = perm;
                        node.attr.uid = entry.uid;
                        node.attr.gid = entry.gid;
                        node.attr.mtime = mtime;
                        node.attr.ctime = mtime;
                    }
                    return;
                }
                (
                    FileType::Directory,
                    Body::Dir {
                        children: BTreeMap::new(),
                        unread: None,
                    },
                    0,
                )
            }
            EntryKind::File => match content {
                Some(content) => (FileType::RegularFile, Body::File(content), entry.size),
                None => return self.skip(format!("{}: no content recorded", shown())),
            },
            EntryKind::Symlink => match entry.raw_target() {
                Ok(Some(target)) => (
                    FileType::Symlink,
                    Body::Symlink(target.into_owned()),
                    target_len(entry),
                ),
                _ => return self.skip(format!("{}: a link without a target", shown())),
            },
            EntryKind::Hardlink => return self.link(volume, parent, name, entry),
            EntryKind::Fifo => (FileType::NamedPipe, Body::Special, 0),
            EntryKind::CharDevice => (FileType::CharDevice, Body::Special, 0),
            EntryKind::BlockDevice => (FileType::BlockDevice, Body::Special, 0),
        };
        let mut attr = attr(kind, perm, entry.uid, entry.gid, size, mtime, rdev);
        attr.nlink = 1;
        if self.add(parent, name, attr, body).is_none() {
            self.skip(format!("{}: listed twice", shown()));
        }
    }

    /// A hard link: the node of its target (a file of the same volume,
    /// listed before it) under one more name.
    fn link(&mut self, volume: u64, parent: u64, name: OsString, entry: &FileEntry) {
        let shown = crate::text::escape(&entry.path).into_owned();
        let raw = entry.raw_target().ok().flatten();
        let target = raw.as_deref().and_then(split).and_then(|parts| {
            parts
                .iter()
                .try_fold(volume, |at, part| self.child(at, OsStr::from_bytes(part)))
        });
        let Some(target) = target.filter(|t| {
            self.get(*t)
                .is_some_and(|n| matches!(n.body, Body::File(_)))
        }) else {
            return self.skip(format!("{shown}: a hard link to no file before it"));
        };
        match &mut self.get_mut(parent).map(|n| &mut n.body) {
            Some(Body::Dir { children, .. }) if !children.contains_key(&name) => {
                children.insert(name, target);
            }
            _ => return self.skip(format!("{shown}: listed twice")),
        }
        if let Some(node) = self.get_mut(target) {
            node.attr.nlink = node.attr.nlink.saturating_add(1);
        }
    }
}

fn target_len(entry: &FileEntry) -> u64 {
    entry
        .raw_target()
        .ok()
        .flatten()
        .map_or(0, |t| t.len() as u64)
}

/// The longest name a directory entry may have (Linux's NAME_MAX): a
/// longer one would make the kernel refuse a whole directory listing.
const NAME_MAX: usize = 255;

/// A path of a volume as its components: `None` when one of them is
/// empty, `.`, `..`, longer than [`NAME_MAX`] or holds a NUL (the root,
/// `.`, is no component).
pub(crate) fn split(raw: &[u8]) -> Option<Vec<&[u8]>> {
    if raw == b"." {
        return Some(Vec::new());
    }
    let parts: Vec<&[u8]> = raw.split(|b| *b == b'/').collect();
    parts
        .iter()
        .all(|p| {
            !p.is_empty() && *p != b"." && *p != b".." && !p.contains(&0) && p.len() <= NAME_MAX
        })
        .then_some(parts)
}

/// A name from the repository (a host, a stack, a backup id, a volume) as
/// one path component: bytes that are not printable ASCII or that could
/// change the path (`/`, `%`, and a leading `.`) are written `%XX`, so
/// distinct names stay distinct and none is `.`, `..` or empty.
pub(crate) fn component(name: &str) -> OsString {
    if name.is_empty() {
        return OsString::from("%");
    }
    let mut out = String::new();
    for (n, b) in name.bytes().enumerate() {
        let plain = b.is_ascii_graphic() && b != b'/' && b != b'%' && !(n == 0 && b == b'.');
        if plain || b == b' ' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > NAME_MAX {
        // Shortened, with a digest of the whole name: still one per name.
        let digest = blake3::hash(name.as_bytes()).to_hex();
        let mut cut = NAME_MAX - 34;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out = format!("{}~{}", &out[..cut], &digest[..32]);
    }
    OsString::from(out)
}

/// A stack's directory name from its selection: `--project milvus`
/// becomes `project=milvus`, several flags are joined with `+`.
pub(crate) fn stack_name(selection: &str) -> OsString {
    let words: Vec<&str> = selection.split(' ').collect();
    let pairs: Option<Vec<String>> = words
        .chunks(2)
        .map(|pair| match pair {
            [flag, value] => flag.strip_prefix("--").map(|f| format!("{f}={value}")),
            _ => None,
        })
        .collect();
    component(&pairs.map_or_else(|| selection.to_string(), |p| p.join("+")))
}

pub(crate) fn time(seconds: i64, nanos: u32) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(nanos.min(999_999_999)));
    if seconds >= 0 {
        UNIX_EPOCH
            .checked_add(Duration::from_secs(seconds as u64) + nanos)
            .unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(seconds.unsigned_abs()))
            .and_then(|t| t.checked_add(nanos))
            .unwrap_or(UNIX_EPOCH)
    }
}

pub(crate) fn attr(
    kind: FileType,
    perm: u16,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: SystemTime,
    rdev: u64,
) -> FileAttr {
    FileAttr {
        ino: 0,
        size,
        blocks: size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind,
        perm,
        nlink: 1,
        uid,
        gid,
        rdev: u32::try_from(rdev).unwrap_or(0),
        blksize: 4096,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_become_one_harmless_component() {
        assert_eq!(component("alpha"), OsString::from("alpha"));
        assert_eq!(component("../../etc"), OsString::from("%2E.%2F..%2Fetc"));
        assert_eq!(component(".."), OsString::from("%2E."));
        assert_eq!(component("a/b"), OsString::from("a%2Fb"));
        assert_eq!(component("\x1b[31mred"), OsString::from("%1B[31mred"));
        assert_eq!(component("100%"), OsString::from("100%25"));
        assert_eq!(component(""), OsString::from("%"));
        assert_ne!(component("a%2Fb"), component("a/b"));
        let long = component(&"\x01".repeat(5000));
        assert!(long.len() <= NAME_MAX, "{}", long.len());
        assert_ne!(long, component(&"\x01".repeat(5001)));
    }

    #[test]
    fn stacks_are_named_by_their_selection() {
        assert_eq!(
            stack_name("--project milvus"),
            OsString::from("project=milvus")
        );
        assert_eq!(
            stack_name("--container a --container b"),
            OsString::from("container=a+container=b")
        );
        assert_eq!(
            stack_name("--project ../x"),
            OsString::from("project=..%2Fx")
        );
    }

    #[test]
    fn paths_that_leave_a_volume_are_refused() {
        assert_eq!(split(b"."), Some(Vec::new()));
        assert_eq!(split(b"a/b"), Some(vec![&b"a"[..], &b"b"[..]]));
        for bad in [
            &b"../x"[..],
            b"a/../b",
            b"/abs",
            b"a//b",
            b"a/./b",
            b"a\0b",
            b"",
            &[b'n'; 256],
        ] {
            assert_eq!(split(bad), None, "{bad:?}");
        }
    }
}
