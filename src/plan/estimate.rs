//! Downtime estimates from this host's own history.
//!
//! A cold backup's downtime is a fixed part (stopping, flushing, starting
//! and waiting for the services) plus the archiving done while they are
//! down. Both are taken, in order of preference, from the last backup of
//! the same selection with the same strategy on this host, from this host's
//! other backups, or from default rates; the estimate says which.

use crate::discovery::Stack;
use crate::fsutil::{human_bytes, human_secs};
use crate::repo::manifest::Strategy;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Quiesce;

/// Time assumed to stop and start one container when this host has no
/// history: a service that exits promptly on SIGTERM and starts in well
/// under a second (measured on the 2-core test machine: 0.29 s per
/// container on the benchmark stack, 0.35 s on the demo's).
pub const DEFAULT_MS_PER_CONTAINER: u64 = 350;
/// Archive throughput assumed with no history (a first, full format-2
/// backup of incompressible data read 320 MiB/s on the same machine; zstd
/// of format 1 is slower).
pub const DEFAULT_BYTES_PER_SEC: u64 = 250 * 1024 * 1024;
/// A pause (cgroup freezer) for a snapshot, with no history.
pub const DEFAULT_PAUSE_MS: u64 = 100;

/// One finished backup as the host remembers it (`STATE_DIR/history.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PastRun {
    pub at: DateTime<Utc>,
    pub selection: String,
    pub strategy: Strategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesce: Option<Quiesce>,
    /// Containers taken down.
    pub containers: u64,
    /// Data in the selection's volumes (each hard-linked file once).
    pub bytes: u64,
    pub downtime_ms: u64,
    /// The part of the downtime spent archiving (cold backups).
    pub archive_down_ms: u64,
    /// Format 2: the content actually read (the rest was unchanged and
    /// taken from the parent backup). Format 1 reads everything: `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_bytes: Option<u64>,
    /// What the plan estimated, to compare with `downtime_ms`.
    pub estimated_ms: u64,
    /// Each volume's data, by name: the next backup's expected sizes
    /// (progress totals) when it does not measure.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub volumes: std::collections::BTreeMap<String, u64>,
    /// The backup it wrote (the dashboard matches its record to the
    /// repository's backups by this; older records have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
}

/// An estimate and where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub ms: u64,
    pub source: String,
}

/// What is being estimated.
pub struct Shape<'a> {
    pub strategy: Strategy,
    pub quiesce: Option<Quiesce>,
    /// Containers the plan takes down.
    pub containers: u64,
    pub stack: &'a Stack,
}

pub fn downtime(shape: &Shape<'_>, history: &[PastRun]) -> Estimate {
    let none = |why: &str| Estimate {
        ms: 0,
        source: why.into(),
    };
    match (shape.strategy, shape.quiesce) {
        (Strategy::Online, _) => return none("online: nothing is stopped"),
        (Strategy::Snapshot, Some(Quiesce::None)) => {
            return none("--quiesce none: nothing is stopped")
        }
        _ if shape.containers == 0 => return none("no running container to stop"),
        _ => {}
    }
    let selection = shape.stack.selection.to_string();
    let same = history.iter().rev().find(|r| {
        r.selection == selection
            && r.strategy == shape.strategy
            && r.quiesce == shape.quiesce
            && r.containers > 0
    });
    if let Some(past) = same {
        let fixed = past.downtime_ms.saturating_sub(past.archive_down_ms);
        let fixed = fixed * shape.containers / past.containers;
        let (archive, scaled) = match (past.read_bytes, shape.stack.changed_bytes) {
            (Some(read), Some(changed)) if past.archive_down_ms > 0 => {
                incremental_archive(past, read, changed, history)
            }
            _ => scale_archive(past, shape.stack),
        };
        return Estimate {
            ms: fixed + archive,
            source: format!(
                "from this host's last {} backup of {selection} ({}: down {}{}){scaled}",
                shape.strategy,
                past.at.format("%Y-%m-%d %H:%M"),
                human_secs(past.downtime_ms),
                if past.bytes > 0 && shape.strategy == Strategy::Cold {
                    format!(" with {}", human_bytes(past.bytes))
                } else {
                    String::new()
                },
            ),
        };
    }
    if shape.strategy == Strategy::Snapshot && shape.quiesce == Some(Quiesce::Pause) {
        return Estimate {
            ms: DEFAULT_PAUSE_MS,
            source: "default: a pause of about 0.1 s (no paused snapshot of this selection yet)"
                .into(),
        };
    }
    // Other selections on this host: a per-container fixed cost and an
    // archive rate, each the median of what the runs showed.
    let mut per_container: Vec<u64> = history
        .iter()
        // Only runs that stopped something: an online backup (or a
        // snapshot without quiescing) stops nothing and would teach a
        // per-container cost of zero.
        .filter(|r| {
            r.containers > 0
                && r.strategy != Strategy::Online
                && !matches!(r.quiesce, Some(Quiesce::Pause) | Some(Quiesce::None))
        })
        .map(|r| r.downtime_ms.saturating_sub(r.archive_down_ms) / r.containers)
        .collect();
    let mut rates: Vec<u64> = history
        .iter()
        .filter(|r| r.strategy == Strategy::Cold && r.archive_down_ms > 0 && r.bytes > 0)
        .map(|r| r.bytes.saturating_mul(1000) / r.archive_down_ms)
        .collect();
    let (fixed_each, fixed_from) = match median(&mut per_container) {
        Some(ms) => (ms, format!("{} per container", human_secs(ms))),
        None => (
            DEFAULT_MS_PER_CONTAINER,
            format!(
                "{} per container (default)",
                human_secs(DEFAULT_MS_PER_CONTAINER)
            ),
        ),
    };
    let mut ms = fixed_each * shape.containers;
    let mut from = fixed_from;
    if shape.strategy == Strategy::Cold {
        let (rate, rate_from) = match median(&mut rates) {
            Some(rate) => (rate.max(1), format!("{}/s", human_bytes(rate))),
            None => (
                DEFAULT_BYTES_PER_SEC,
                format!("{}/s (default)", human_bytes(DEFAULT_BYTES_PER_SEC)),
            ),
        };
        let bytes = shape.stack.total_bytes();
        ms += bytes.saturating_mul(1000) / rate;
        from = format!("{from}, archiving {} at {rate_from}", human_bytes(bytes));
    }
    let whence = if history.is_empty() {
        "no backup on this host yet"
    } else {
        "no such backup of this selection yet; rates from this host's other backups"
    };
    Estimate {
        ms,
        source: format!("{whence}: {from}"),
    }
}

/// The archive part of a format-2 cold backup, which reads only what
/// changed: the past run's time less its reading (the walk), plus reading
/// what changed since it, at this host's read rate.
fn incremental_archive(
    past: &PastRun,
    read: u64,
    changed: u64,
    history: &[PastRun],
) -> (u64, String) {
    let mut rates: Vec<u64> = history
        .iter()
        .filter(|r| r.archive_down_ms > 0 && r.read_bytes.is_some_and(|b| b >= 16 << 20))
        .map(|r| r.read_bytes.unwrap_or(0).saturating_mul(1000) / r.archive_down_ms)
        .collect();
    let rate = median(&mut rates).unwrap_or(DEFAULT_BYTES_PER_SEC).max(1);
    let walk = past
        .archive_down_ms
        .saturating_sub(read.saturating_mul(1000) / rate);
    (
        walk + changed.saturating_mul(1000) / rate,
        format!(
            ", reading the {} changed since at {}/s",
            human_bytes(changed),
            human_bytes(rate)
        ),
    )
}

/// The archive part of a past cold backup, scaled to today's data when it
/// was measured.
fn scale_archive(past: &PastRun, stack: &Stack) -> (u64, String) {
    if past.archive_down_ms == 0 {
        return (0, String::new());
    }
    let now = stack.total_bytes();
    if !stack.measured || past.bytes == 0 || now == past.bytes {
        return (past.archive_down_ms, String::new());
    }
    let scaled = (past.archive_down_ms as u128 * now as u128 / past.bytes as u128) as u64;
    (scaled, format!(", scaled to {}", human_bytes(now)))
}

fn median(values: &mut [u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    Some(values[values.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Selection;

    fn stack(bytes: u64) -> Stack {
        Stack {
            selection: Selection::Project("demo".into()),
            containers: Vec::new(),
            volumes: vec![crate::discovery::Volume {
                name: "data".into(),
                kind: crate::repo::manifest::VolumeKind::Volume,
                host_path: "/nonexistent".into(),
                driver: None,
                driver_opts: Default::default(),
                labels: Default::default(),
                mounted_by: Vec::new(),
                bytes,
                files: 1,
                exclude: Vec::new(),
            }],
            order_notes: Vec::new(),
            skipped: Vec::new(),
            measured: true,
            changed_bytes: None,
        }
    }

    fn past(selection: &str, strategy: Strategy, down: u64, archive: u64, bytes: u64) -> PastRun {
        PastRun {
            at: Utc::now(),
            selection: selection.into(),
            strategy,
            quiesce: (strategy == Strategy::Snapshot).then_some(Quiesce::Stop),
            containers: 2,
            bytes,
            downtime_ms: down,
            archive_down_ms: archive,
            read_bytes: None,
            estimated_ms: 0,
            volumes: Default::default(),
            backup_id: None,
        }
    }

    fn cold(stack: &Stack, containers: u64) -> Shape<'_> {
        Shape {
            strategy: Strategy::Cold,
            quiesce: None,
            containers,
            stack,
        }
    }

    #[test]
    fn online_backups_teach_no_per_container_stop_cost() {
        let s = stack(0);
        let history = vec![
            past("--project other", Strategy::Online, 0, 0, 1 << 20),
            past("--project other", Strategy::Online, 0, 0, 1 << 20),
            past("--project third", Strategy::Cold, 3_000, 1_000, 1 << 20),
        ];
        let e = downtime(&cold(&s, 2), &history);
        // 1000 ms per container from the cold run, not 0 from the online ones.
        assert_eq!(e.ms, 2_000, "{}", e.source);
    }

    #[test]
    fn the_same_selections_last_run_scales_with_its_data() {
        let s = stack(200 << 20);
        let history = vec![
            past("--project demo", Strategy::Cold, 9_000, 8_000, 100 << 20),
            past("--project demo", Strategy::Cold, 1_500, 1_000, 100 << 20),
        ];
        let e = downtime(&cold(&s, 2), &history);
        // Fixed 500 ms as last time, archiving twice the data: 2000 ms.
        assert_eq!(e.ms, 2_500);
        assert!(
            e.source.contains("last cold backup of --project demo"),
            "{}",
            e.source
        );
        assert!(e.source.contains("scaled to 200.0 MiB"), "{}", e.source);
    }

    #[test]
    fn after_a_full_format_2_backup_only_what_changed_is_read() {
        let mut s = stack(256 << 20);
        let mut full = past("--project demo", Strategy::Cold, 1_246, 800, 256 << 20);
        full.read_bytes = Some(256 << 20);
        // 256 MiB read in 800 ms: 320 MiB/s, no walk to speak of; 32 MiB
        // changed since: 100 ms to read them.
        s.changed_bytes = Some(32 << 20);
        let e = downtime(&cold(&s, 2), std::slice::from_ref(&full));
        assert_eq!(e.ms, 446 + 100, "{}", e.source);
        assert!(e.source.contains("32.0 MiB changed since"), "{}", e.source);
        // An incremental run before it: its walk stays, at the full run's rate.
        let mut incremental = past("--project demo", Strategy::Cold, 500, 60, 256 << 20);
        incremental.read_bytes = Some(0);
        s.changed_bytes = Some(0);
        let e = downtime(&cold(&s, 2), &[full, incremental]);
        assert_eq!(e.ms, 440 + 60, "{}", e.source);
        // Format 1 reads everything: scaled by the data, as before.
        s.changed_bytes = Some(0);
        let tar = past("--project demo", Strategy::Cold, 1_246, 800, 256 << 20);
        assert_eq!(downtime(&cold(&s, 2), &[tar]).ms, 1_246);
    }

    #[test]
    fn other_selections_give_rates_and_nothing_gives_defaults() {
        let s = stack(100 << 20);
        let history = vec![past(
            "--project other",
            Strategy::Cold,
            1_400,
            1_000,
            50 << 20,
        )];
        let e = downtime(&cold(&s, 3), &history);
        // 200 ms per container, 50 MiB/s: 600 + 2000.
        assert_eq!(e.ms, 2_600);
        assert!(e.source.contains("other backups"), "{}", e.source);
        let e = downtime(&cold(&s, 3), &[]);
        let archive = (100u64 << 20) * 1000 / DEFAULT_BYTES_PER_SEC;
        assert_eq!(e.ms, 3 * DEFAULT_MS_PER_CONTAINER + archive);
        assert!(
            e.source.contains("no backup on this host yet"),
            "{}",
            e.source
        );
    }

    #[test]
    fn snapshots_take_the_last_snapshot_and_ignore_the_data() {
        let s = stack(10 << 30);
        let history = vec![
            past("--project demo", Strategy::Cold, 90_000, 89_000, 10 << 30),
            past("--project demo", Strategy::Snapshot, 1_100, 0, 10 << 30),
        ];
        let shape = Shape {
            strategy: Strategy::Snapshot,
            quiesce: Some(Quiesce::Stop),
            containers: 2,
            stack: &s,
        };
        assert_eq!(downtime(&shape, &history).ms, 1_100);
        let online = Shape {
            strategy: Strategy::Online,
            quiesce: None,
            containers: 2,
            stack: &s,
        };
        assert_eq!(downtime(&online, &history).ms, 0);
    }
}
