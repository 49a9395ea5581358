//! Small filesystem helpers shared by the repository, archiver and restore.

use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Creates a private file (0600) that must not exist yet.
pub fn create_private(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Writes `data` to a new private file and fsyncs it.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let mut file = create_private(path)?;
    file.write_all(data)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Creates a private directory (0700) that must not exist yet.
pub fn create_private_dir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create directory {}", path.display()))
}

/// Creates this host's state directory (and missing parents) as 0700, and
/// takes group and other access away from one that exists: it holds the
/// host's keys, journals and records of what each repository is. A symlink
/// there is refused, not followed.
pub fn create_state_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create the state directory {}", path.display()))?;
    let meta = fs::symlink_metadata(path)
        .with_context(|| format!("cannot inspect the state directory {}", path.display()))?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        anyhow::bail!(
            "the state directory {} is a symbolic link or not a directory; give a real directory with --state-dir",
            path.display()
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (0700)", path.display()))?;
    }
    Ok(())
}

/// fsyncs a directory, making renames and creations inside it durable.
pub fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", path.display()))
}

/// Flushes every dirty page of the filesystem holding `path` (syncfs(2)).
pub fn syncfs(path: &Path) -> Result<()> {
    let dir = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    nix::unistd::syncfs(&dir).with_context(|| format!("syncfs failed on {}", path.display()))
}

/// What [`tree_usage`] found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
    /// Content of the files modified (data or inode) at or after `since`.
    pub changed: u64,
}

/// Total size and number of regular files below `root`, without following
/// symlinks or crossing into other filesystems. Counted as a backup counts
/// them: a file with several hard links once. With `since` (seconds since
/// the epoch), also what changed from then on.
pub fn tree_usage(root: &Path, since: Option<i64>) -> Result<Usage> {
    use std::os::unix::fs::MetadataExt;
    let mut linked = std::collections::HashSet::new();
    let top =
        fs::symlink_metadata(root).with_context(|| format!("cannot read {}", root.display()))?;
    let mut usage = Usage::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let listing = match fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
        };
        for entry in listing {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(_) => continue, // vanished meanwhile: sizes are estimates
            };
            if meta.is_file() && meta.nlink() > 1 && !linked.insert((meta.dev(), meta.ino())) {
                continue;
            }
            if meta.is_dir() && meta.dev() == top.dev() {
                stack.push(entry.path());
            } else if meta.is_file() {
                usage.bytes += meta.len();
                usage.files += 1;
                if since.is_some_and(|t| meta.mtime().max(meta.ctime()) >= t) {
                    usage.changed += meta.len();
                }
            }
        }
    }
    Ok(usage)
}

/// `time` as an operator reads it in a status: `2026-11-27 02:30 (5 h ago)`.
pub fn human_age(
    time: &chrono::DateTime<chrono::Utc>,
    now: &chrono::DateTime<chrono::Utc>,
) -> String {
    let secs = (*now - *time).num_seconds().max(0);
    let text = match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    };
    format!("{} ({text} ago)", time.format("%Y-%m-%d %H:%M"))
}

/// Milliseconds as seconds with two decimals: `1.24 s`.
pub fn human_secs(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

/// Human-readable byte count (binary units).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Parses a size: a number of bytes, or with a K/M/G/T suffix (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let upper = t.to_ascii_uppercase();
    let trimmed = upper.trim_end_matches("IB").trim_end_matches('B');
    let (digits, shift) = match trimmed.chars().last() {
        Some('K') => (&trimmed[..trimmed.len() - 1], 10),
        Some('M') => (&trimmed[..trimmed.len() - 1], 20),
        Some('G') => (&trimmed[..trimmed.len() - 1], 30),
        Some('T') => (&trimmed[..trimmed.len() - 1], 40),
        _ => (trimmed, 0),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a size (examples: 268435456, 256M, 4G)"))
}

/// The instant `timeout` from now, saturating: a timeout of any size (a
/// flag, a config value, an environment variable) means "that long, or as
/// long as a clock can count", never an overflow panic.
pub fn deadline_after(timeout: std::time::Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(std::time::Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Replaces `path` atomically, so readers see the old content or the new,
/// never half a file. Safe in a directory others can write to (a metrics
/// directory, say): the temporary file beside it gets an unpredictable name
/// and is created exclusively (never through a symlink planted there), is
/// fsynced, then renamed over `path` (which replaces a symlink at `path`
/// rather than writing through it); the directory is fsynced last. The
/// file is world-readable (0644): metrics and markers are for others.
pub fn replace_file(path: &Path, contents: &[u8]) -> Result<()> {
    replace_file_with_mode(path, contents, 0o644)
}

/// [`replace_file`] for a file only root may read (0600): this host's own
/// records in its state directory.
pub fn replace_private_file(path: &Path, contents: &[u8]) -> Result<()> {
    replace_file_with_mode(path, contents, 0o600)
}

fn replace_file_with_mode(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut created = None;
    for attempt in 0..16u32 {
        let tmp = dir.join(format!(
            ".{name}.tmp-{}-{:08x}",
            std::process::id(),
            nanos.wrapping_mul(2_654_435_761).wrapping_add(attempt)
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(file) => {
                created = Some((tmp, file));
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot write {}", path.display())),
        }
    }
    let (tmp, mut file) = created.with_context(|| {
        format!(
            "cannot write {}: no free temporary name beside it",
            path.display()
        )
    })?;
    let written = file
        .write_all(contents)
        .and_then(|_| file.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    sync_dir(dir)
}

/// Random bytes from the kernel.
pub(crate) fn random_bytes(buf: &mut [u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("cannot read random bytes from /dev/urandom")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_file_never_writes_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("metrics.prom");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        // A symlink planted where a predictable temporary name would be.
        let planted = dir
            .path()
            .join(format!(".metrics.prom.tmp-{}", std::process::id()));
        let victim2 = dir.path().join("victim2");
        std::fs::write(&victim2, b"also precious").unwrap();
        std::os::unix::fs::symlink(&victim2, &planted).unwrap();
        replace_file(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&victim2).unwrap(), b"also precious");
        assert!(!path.is_symlink());
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 4, "no temporary file left");
    }

    #[test]
    fn human_bytes_picks_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
