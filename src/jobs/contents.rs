//! What a backup holds, file by file, whatever its repository's format:
//! `volsnap ls` lists it and `volsnap diff` compares two backups. Only
//! metadata is read (format 1: the manifest; format 2: the tree blobs), so
//! neither reads archived content.

use crate::cancel::Cancel;
use crate::repo::manifest::{EntryKind, FileEntry, Manifest, MANIFEST_FILE};
use crate::repo::{Format, Repo, Scope};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One backup's entries, volume by volume.
pub struct Contents {
    pub id: String,
    pub manifest: Manifest,
    /// Per volume (in backup order): its name and entries.
    pub volumes: Vec<(String, Vec<Listed>)>,
}

/// An entry and what identifies its content.
#[derive(Debug, Clone)]
pub struct Listed {
    pub entry: FileEntry,
    /// SHA-256 of the content when recorded, else the chunk list: equal
    /// values mean equal content.
    pub content: Option<String>,
}

/// Reads the entries of backup `id` (or `latest` within `scope`).
pub fn read(root: &Path, id: &str, scope: &Scope, cancel: &Cancel) -> Result<Contents> {
    match crate::repo::detect(root) {
        Format::Tar => {
            let repo = Repo::open(root)?;
            let (id, dir) = repo.resolve_in(id, scope)?;
            let mut manifest = Manifest::load(&dir.join(MANIFEST_FILE))?;
            let mut volumes = Vec::new();
            for v in &mut manifest.volumes {
                let entries = std::mem::take(&mut v.entries)
                    .into_iter()
                    .map(|entry| Listed {
                        content: entry.sha256.clone(),
                        entry,
                    })
                    .collect();
                volumes.push((v.name.clone(), entries));
            }
            Ok(Contents {
                id,
                manifest,
                volumes,
            })
        }
        Format::Chunked => {
            use crate::repo::v2::tree::{TreeEntry, TreeReader};
            let repo = crate::repo::open_chunked(root)?;
            repo.require_contents()?;
            let (_, commit) = crate::repo::resolve_chunked(&repo, id, scope)?;
            let index = repo.load_index()?;
            let mut volumes = Vec::new();
            for volume in &commit.volumes {
                let mut lines = TreeReader::new(&repo, &index, &volume.tree, volume.tree_sha256);
                let mut entries = Vec::new();
                while let Some(line) = lines.next_line::<TreeEntry>()? {
                    cancel.check()?;
                    let content = line.entry.sha256.clone().or_else(|| {
                        (!line.chunks.is_empty()).then(|| {
                            line.chunks
                                .iter()
                                .map(|c| c.hex())
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                    });
                    entries.push(Listed {
                        entry: line.entry,
                        content,
                    });
                }
                volumes.push((volume.name.clone(), entries));
            }
            Ok(Contents {
                id: commit.id.clone(),
                manifest: commit.summary(),
                volumes,
            })
        }
    }
}

/// Whether `volume/path` is `wanted` or lies beneath it. `wanted` is
/// `VOLUME` or `VOLUME/PATH`; an empty `wanted` matches everything.
pub fn selected(volume: &str, path: &str, wanted: &str) -> bool {
    let wanted = wanted.trim_end_matches('/');
    if wanted.is_empty() {
        return true;
    }
    let full = if path == "." {
        volume.to_string()
    } else {
        format!("{volume}/{path}")
    };
    full == wanted
        || full
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// How an entry differs between two backups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Only in the second backup.
    Added,
    /// Only in the first.
    Removed,
    /// Another kind of entry now (a file became a directory, say).
    Type,
    /// Content (or a link's target) changed.
    Modified,
    /// Only metadata (mode, owner, modification time) changed.
    Metadata,
}

impl Change {
    /// The one-letter mark `diff` prints (restic's letters).
    pub fn mark(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Type => 'T',
            Change::Modified => 'M',
            Change::Metadata => 'U',
        }
    }
}

/// One changed entry.
#[derive(Debug, Clone, Serialize)]
pub struct Changed {
    pub change: Change,
    pub volume: String,
    pub path: String,
    /// Size in the second backup (the first for removals).
    pub size: u64,
}

/// Every difference between `old` and `new`, volume by volume, in path
/// order. A volume in only one backup shows as all its entries added or
/// removed.
pub fn diff(old: &Contents, new: &Contents) -> Vec<Changed> {
    // Keyed by the raw bytes of each name: two names that are not UTF-8
    // render alike and must never be taken for one.
    let by_volume = |c: &Contents| -> BTreeMap<String, BTreeMap<Vec<u8>, Listed>> {
        c.volumes
            .iter()
            .map(|(name, entries)| {
                let entries = entries
                    .iter()
                    .map(|l| {
                        let raw = l
                            .entry
                            .raw_path()
                            .map(|p| p.into_owned())
                            .unwrap_or_else(|_| l.entry.path.as_bytes().to_vec());
                        (raw, l.clone())
                    })
                    .collect();
                (name.clone(), entries)
            })
            .collect()
    };
    let (old, new) = (by_volume(old), by_volume(new));
    let empty = BTreeMap::new();
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    let mut changes = Vec::new();
    for name in names {
        let (a, b) = (
            old.get(name).unwrap_or(&empty),
            new.get(name).unwrap_or(&empty),
        );
        let mut paths: Vec<&Vec<u8>> = a.keys().chain(b.keys()).collect();
        paths.sort();
        paths.dedup();
        for path in paths {
            let change = match (a.get(path), b.get(path)) {
                (None, Some(_)) => Some(Change::Added),
                (Some(_), None) => Some(Change::Removed),
                (Some(x), Some(y)) => compare(x, y),
                (None, None) => None,
            };
            if let Some(change) = change {
                let listed = b.get(path).or_else(|| a.get(path));
                changes.push(Changed {
                    change,
                    volume: name.clone(),
                    path: crate::text::escape_bytes(path),
                    size: listed.map_or(0, |l| l.entry.size),
                });
            }
        }
    }
    changes
}

fn compare(x: &Listed, y: &Listed) -> Option<Change> {
    let (a, b) = (&x.entry, &y.entry);
    if a.kind != b.kind {
        return Some(Change::Type);
    }
    let content_differs = match a.kind {
        EntryKind::File => {
            a.size != b.size
                || match (&x.content, &y.content) {
                    (Some(p), Some(q)) => p != q,
                    // Nothing to compare content by: trust size and time.
                    _ => a.mtime != b.mtime,
                }
        }
        EntryKind::Symlink | EntryKind::Hardlink => {
            a.target != b.target || a.target_hex != b.target_hex
        }
        _ => false,
    };
    if content_differs {
        Some(Change::Modified)
    } else if (a.mode, a.uid, a.gid, a.mtime) != (b.mode, b.uid, b.gid, b.mtime) {
        Some(Change::Metadata)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(path: &str, kind: EntryKind, content: &str, mtime: i64) -> Listed {
        Listed {
            entry: FileEntry {
                path: path.into(),
                path_hex: None,
                kind,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime,
                size: content.len() as u64,
                sha256: None,
                target: None,
                target_hex: None,
            },
            content: (kind == EntryKind::File).then(|| content.to_string()),
        }
    }

    fn contents(volumes: Vec<(&str, Vec<Listed>)>) -> Contents {
        Contents {
            id: "x".into(),
            manifest: serde_json::from_value(serde_json::json!({
                "format_version": 1, "id": "x", "started_at": "2026-11-27T00:00:00Z",
                "completed_at": "2026-11-27T00:00:00Z", "host": "h", "volsnap_version": "0",
                "selection": "s", "strategy": "cold", "consistency": "consistent",
                "reason": "", "downtime_ms": 0, "duration_ms": 0, "compression": "zstd",
                "containers": [], "volumes": []
            }))
            .unwrap(),
            volumes: volumes
                .into_iter()
                .map(|(n, e)| (n.to_string(), e))
                .collect(),
        }
    }

    #[test]
    fn every_kind_of_change_is_named_once() {
        use EntryKind::*;
        let old = contents(vec![
            (
                "data",
                vec![
                    listed(".", Dir, "", 1),
                    listed("same", File, "a", 1),
                    listed("edited", File, "a", 1),
                    listed("touched", File, "a", 1),
                    listed("gone", File, "a", 1),
                    listed("became-dir", File, "a", 1),
                ],
            ),
            ("old-volume", vec![listed(".", Dir, "", 1)]),
        ]);
        let new = contents(vec![(
            "data",
            vec![
                listed(".", Dir, "", 1),
                listed("same", File, "a", 1),
                listed("edited", File, "b", 1),
                listed("touched", File, "a", 2),
                listed("new", File, "abc", 1),
                listed("became-dir", Dir, "", 1),
            ],
        )]);
        let changes: Vec<(char, String)> = diff(&old, &new)
            .into_iter()
            .map(|c| (c.change.mark(), format!("{}/{}", c.volume, c.path)))
            .collect();
        let expect: Vec<(char, String)> = [
            ('T', "data/became-dir"),
            ('M', "data/edited"),
            ('-', "data/gone"),
            ('+', "data/new"),
            ('U', "data/touched"),
            ('-', "old-volume/."),
        ]
        .iter()
        .map(|(m, p)| (*m, p.to_string()))
        .collect();
        assert_eq!(changes, expect);
    }

    #[test]
    fn a_selection_is_a_volume_or_a_path_and_what_lies_beneath() {
        assert!(selected("data", ".", "data"));
        assert!(selected("data", "a/b", "data"));
        assert!(selected("data", "a/b", "data/a/"));
        assert!(selected("data", "a/b", "data/a/b"));
        assert!(!selected("data", "ab", "data/a"));
        assert!(!selected("database", ".", "data"));
        assert!(selected("x", "y", ""));
    }
}
