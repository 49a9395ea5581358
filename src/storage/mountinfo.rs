//! `/proc/self/mountinfo`: which filesystem, device and subtree a path is on.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The subtree of the filesystem mounted here ("/" for a whole fs; for
    /// btrfs, the subvolume path; for a bind mount, the bound directory).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    pub options: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = u8::from_str_radix(&field[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the text of a mountinfo file; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            if left.len() < 6 || right.len() < 2 {
                return None;
            }
            Some(MountEntry {
                root: PathBuf::from(unescape(left[3])),
                mount_point: PathBuf::from(unescape(left[4])),
                options: left[5].to_string(),
                fs_type: right[0].to_string(),
                source: unescape(right[1]),
            })
        })
        .collect()
}

/// Reads this process's mount table.
pub fn read() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    Ok(parse(&text))
}

/// The mount that holds `path` (an absolute, canonical path): the one with
/// the longest mount point above it, the later one when stacked.
pub fn find<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mount_point))
        .max_by_key(|(i, m)| (m.mount_point.components().count(), *i))
        .map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 7:0 / /mnt/btr rw,relatime shared:20 - btrfs /dev/loop0 rw,space_cache=v2,subvolid=5,subvol=/
41 22 7:0 /vols/etcd /mnt/etcd\\040data rw,relatime shared:21 - btrfs /dev/loop0 rw,subvolid=257,subvol=/vols/etcd
50 22 253:2 / /mnt/lvm rw,relatime shared:30 - ext4 /dev/mapper/vg0-data rw
60 22 0:50 / /tank/milvus rw,xattr,noacl shared:40 - zfs tank/milvus rw,xattr,noacl
";

    #[test]
    fn parses_fields_and_escapes() {
        let mounts = parse(SAMPLE);
        assert_eq!(mounts.len(), 5);
        assert_eq!(mounts[2].mount_point, PathBuf::from("/mnt/etcd data"));
        assert_eq!(mounts[2].root, PathBuf::from("/vols/etcd"));
        assert_eq!(mounts[4].source, "tank/milvus");
        assert_eq!(mounts[4].fs_type, "zfs");
    }

    #[test]
    fn finds_the_deepest_mount() {
        let mounts = parse(SAMPLE);
        let m = find(&mounts, Path::new("/mnt/lvm/etcd/member")).unwrap();
        assert_eq!(m.source, "/dev/mapper/vg0-data");
        let m = find(&mounts, Path::new("/mnt/lvmx")).unwrap();
        assert_eq!(m.fs_type, "ext4");
        assert_eq!(m.mount_point, PathBuf::from("/"));
    }
}
