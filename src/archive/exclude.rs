//! What a backup leaves out on purpose: glob patterns relative to a
//! volume's root, from `--exclude`, a job's `exclude`, or the
//! `volsnap.exclude` label of a volume or container.
//!
//! A pattern without `/` matches an entry's name at any depth (`*.tmp`,
//! `cache`); one with `/` matches the path from the volume's root
//! (`cache/**`, `data/tmp`, `/logs`). A directory that matches is left out with
//! everything in it.

use anyhow::Result;
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The label that excludes paths (or, with `true`, the whole volume).
pub const EXCLUDE_LABEL: &str = "volsnap.exclude";

#[derive(Debug, Clone)]
pub struct Exclude {
    patterns: Vec<String>,
    by_name: GlobSet,
    by_path: GlobSet,
}

impl Default for Exclude {
    fn default() -> Self {
        Self::new(&[]).expect("no pattern is always valid")
    }
}

impl Exclude {
    /// Compiles `patterns`; a malformed one is a usage error naming it.
    pub fn new(patterns: &[String]) -> Result<Self> {
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        for pattern in patterns {
            let trimmed = pattern.trim_start_matches('/').trim_end_matches('/');
            if trimmed.is_empty() {
                return Err(crate::usage!(
                    "exclude pattern {pattern:?} would leave out the whole volume; to leave a volume out, label it {EXCLUDE_LABEL}=true"
                ));
            }
            let glob = glob(trimmed).map_err(|e| {
                crate::usage!("exclude pattern {pattern:?} is not a valid glob: {e}")
            })?;
            // A `/` anywhere (a leading one included) anchors at the root.
            if pattern.trim_end_matches('/').contains('/') {
                by_path.add(glob);
            } else {
                by_name.add(glob);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build()
                .map_err(|e| crate::usage!("exclude patterns are not valid: {e}"))
        };
        Ok(Self {
            patterns: patterns.to_vec(),
            by_name: build(by_name)?,
            by_path: build(by_path)?,
        })
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the entry at `rel` (relative to the volume's root, as bytes)
    /// is left out.
    pub fn matches(&self, rel: &[u8]) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let path = Path::new(OsStr::from_bytes(rel));
        let name = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
        self.by_path.is_match(path) || self.by_name.is_match(Path::new(OsStr::from_bytes(name)))
    }
}

/// `*` and `?` stay within one path component; `**` crosses them.
fn glob(pattern: &str) -> std::result::Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

/// A label's comma-separated patterns.
pub fn split_label(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(patterns: &[&str]) -> Exclude {
        Exclude::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn names_match_at_any_depth_and_paths_from_the_root() {
        let e = ex(&["*.tmp", "cache/**", "/logs", "data/*/scratch"]);
        assert!(e.matches(b"a.tmp"));
        assert!(e.matches(b"deep/down/b.tmp"));
        assert!(!e.matches(b"a.tmp.keep"));
        assert!(e.matches(b"cache/x"));
        assert!(e.matches(b"cache/x/y"));
        assert!(!e.matches(b"cache"), "the directory itself stays, empty");
        assert!(e.matches(b"logs"));
        assert!(!e.matches(b"sub/logs"), "a path pattern is anchored");
        assert!(e.matches(b"data/1/scratch"));
        assert!(!e.matches(b"data/1/2/scratch"), "* stays in one component");
        assert!(!ex(&[]).matches(b"anything"));
        assert!(e.matches(b"odd\xffname.tmp"), "names need not be UTF-8");
    }

    #[test]
    fn bad_patterns_are_usage_errors() {
        for bad in ["/", "a[", ""] {
            let err = Exclude::new(&[bad.to_string()]).unwrap_err();
            assert_eq!(crate::error::exit_code(&err), 2, "{bad}: {err}");
        }
        assert_eq!(split_label(" cache/**, *.tmp ,,"), ["cache/**", "*.tmp"]);
    }
}
