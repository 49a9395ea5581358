//! This host's backups as `plan` estimates from them: one JSON line per
//! finished backup in `STATE_DIR/history.jsonl`, the newest last. Kept on
//! the host (not read from a repository, which may be shared or hostile)
//! and bounded: it is rewritten with its newest lines when it grows long.

use crate::plan::estimate::PastRun;
use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Lines kept; older ones are dropped when the file reaches twice this.
const KEEP: usize = 500;

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("history.jsonl")
}

/// The history, oldest first. A missing or unreadable file is no history;
/// a line that does not parse is skipped.
pub fn load(state_dir: &Path) -> Vec<PastRun> {
    let Ok(text) = std::fs::read_to_string(path(state_dir)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Appends one finished backup.
pub fn record(state_dir: &Path, run: &PastRun) -> Result<()> {
    let file = path(state_dir);
    let mut past = load(state_dir);
    if past.len() + 1 >= 2 * KEEP {
        past.push(run.clone());
        let keep = &past[past.len() - KEEP..];
        let mut text = String::new();
        for r in keep {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        // An unpredictable temporary, created exclusively, never through a
        // symlink planted under a fixed name.
        crate::fsutil::replace_private_file(&file, text.as_bytes())
            .with_context(|| format!("cannot rewrite {}", file.display()))?;
        return Ok(());
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&file)
        .with_context(|| format!("cannot open {}", file.display()))?;
    writeln!(out, "{}", serde_json::to_string(run)?)
        .with_context(|| format!("cannot append to {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::Strategy;

    fn run(n: u64) -> PastRun {
        PastRun {
            at: chrono::Utc::now(),
            selection: "project demo".into(),
            strategy: Strategy::Cold,
            quiesce: None,
            containers: 1,
            bytes: n,
            downtime_ms: n,
            archive_down_ms: 0,
            read_bytes: None,
            estimated_ms: 0,
            volumes: Default::default(),
            backup_id: None,
        }
    }

    #[test]
    fn runs_append_in_order_stay_bounded_and_bad_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_empty());
        record(dir.path(), &run(1)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(path(dir.path()))
            .unwrap()
            .write_all(b"{not json\n")
            .unwrap();
        for n in 2..=(2 * KEEP as u64 + 3) {
            record(dir.path(), &run(n)).unwrap();
        }
        let past = load(dir.path());
        assert!(
            past.len() <= 2 * KEEP && past.len() >= KEEP,
            "{}",
            past.len()
        );
        assert_eq!(past.last().unwrap().bytes, 2 * KEEP as u64 + 3);
        assert!(past.windows(2).all(|w| w[0].bytes < w[1].bytes));
    }
}
