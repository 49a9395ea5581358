//! Retention: which backups a grandfather-father-son policy keeps, and why.
//!
//! The rules are restic's and sanoid's: `keep_last` keeps the newest N;
//! `keep_hourly` keeps the newest backup of each of the newest N hours that
//! have one, and likewise per day, ISO week, month and year. A backup kept
//! by several rules lists every reason. Protected backups are always kept.
//! Pure: time zone and "now" come from the caller, nothing is deleted here.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// How many backups each rule keeps (0 = the rule is off).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
}

impl Policy {
    /// A policy with no rule would delete everything: never accepted.
    pub fn is_empty(&self) -> bool {
        self.keep_last == 0 && self.rules().iter().all(|(_, n, _)| *n == 0)
    }

    fn rules(&self) -> [(&'static str, u32, &'static str); 5] {
        [
            ("hourly", self.keep_hourly, "%Y-%m-%d %H:00"),
            ("daily", self.keep_daily, "%Y-%m-%d"),
            ("weekly", self.keep_weekly, "%G-W%V"),
            ("monthly", self.keep_monthly, "%Y-%m"),
            ("yearly", self.keep_yearly, "%Y"),
        ]
    }
}

/// A backup as retention sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub time: DateTime<Utc>,
    pub protected: bool,
}

/// The verdict on one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    /// Why it is kept ("last 3", "daily 2026-11-24", "protected"); empty
    /// when it goes.
    pub reasons: Vec<String>,
}

/// Applies `policy` to `candidates` (any order), with periods counted in
/// time zone `tz`. Returns the decisions newest first.
pub fn decide<Tz: TimeZone>(policy: &Policy, candidates: &[Candidate], tz: &Tz) -> Vec<Decision>
where
    Tz::Offset: std::fmt::Display,
{
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by(|a, b| (b.time, &b.id).cmp(&(a.time, &a.id)));
    let mut decisions: Vec<Decision> = sorted
        .iter()
        .map(|c| Decision {
            id: c.id.clone(),
            keep: false,
            reasons: Vec::new(),
        })
        .collect();
    for (i, c) in sorted.iter().enumerate() {
        if c.protected {
            decisions[i].reasons.push("protected".into());
        }
        if (i as u32) < policy.keep_last {
            decisions[i]
                .reasons
                .push(format!("last {}", policy.keep_last));
        }
    }
    for (rule, count, format) in policy.rules() {
        let mut left = count;
        let mut last_period: Option<String> = None;
        for (i, c) in sorted.iter().enumerate() {
            if left == 0 {
                break;
            }
            let local = c.time.with_timezone(tz);
            let period = if rule == "weekly" {
                let week = local.iso_week();
                format!("{}-W{:02}", week.year(), week.week())
            } else {
                local.format(format).to_string()
            };
            if last_period.as_deref() != Some(period.as_str()) {
                decisions[i].reasons.push(format!("{rule} {period}"));
                last_period = Some(period);
                left -= 1;
            }
        }
    }
    for d in &mut decisions {
        d.keep = !d.reasons.is_empty();
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn hourly_for_a_year() -> Vec<Candidate> {
        // Hourly backups at :30 from 2025-01-01 00:30 to 2025-12-31 23:30 UTC.
        let start = Utc.with_ymd_and_hms(2025, 1, 1, 0, 30, 0).unwrap();
        (0..365 * 24)
            .map(|h| {
                let time = start + Duration::hours(h);
                Candidate {
                    id: time.format("%Y%m%dT%H%M%SZ").to_string(),
                    time,
                    protected: false,
                }
            })
            .collect()
    }

    fn kept(decisions: &[Decision]) -> Vec<&str> {
        decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id.as_str())
            .collect()
    }

    #[test]
    fn a_year_of_hourly_backups_keeps_exactly_the_gfs_set() {
        let policy = Policy {
            keep_hourly: 24,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 12,
            ..Policy::default()
        };
        let decisions = decide(&policy, &hourly_for_a_year(), &Utc);
        let kept = kept(&decisions);
        let mut expected: Vec<String> = Vec::new();
        // The newest 24 hours: 2025-12-31 00:30 .. 23:30.
        for h in (0..24).rev() {
            expected.push(format!("20251231T{h:02}3000Z"));
        }
        // Daily: the last backup of Dec 30 .. Dec 25 (Dec 31 is already in).
        for d in (25..=30).rev() {
            expected.push(format!("202512{d}T233000Z"));
        }
        // Weekly (ISO weeks end on Sunday): 2025-12-31 is in W01 of 2026,
        // covered; then the Sundays Dec 28 (covered by daily), Dec 21, Dec 14.
        expected.push("20251221T233000Z".into());
        expected.push("20251214T233000Z".into());
        // Monthly: the last backup of each month Nov .. Jan.
        for (month, last_day) in [
            (11, 30),
            (10, 31),
            (9, 30),
            (8, 31),
            (7, 31),
            (6, 30),
            (5, 31),
            (4, 30),
            (3, 31),
            (2, 28),
            (1, 31),
        ] {
            expected.push(format!("2025{month:02}{last_day}T233000Z"));
        }
        let mut expected: Vec<&str> = expected.iter().map(|s| s.as_str()).collect();
        expected.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(kept, expected);
        assert_eq!(kept.len(), 24 + 6 + 2 + 11);
        let newest = &decisions[0];
        assert!(newest
            .reasons
            .contains(&"hourly 2025-12-31 23:00".to_string()));
        assert!(newest.reasons.contains(&"daily 2025-12-31".to_string()));
        assert!(newest.reasons.contains(&"weekly 2026-W01".to_string()));
        assert!(newest.reasons.contains(&"monthly 2025-12".to_string()));
    }

    #[test]
    fn protected_and_keep_last_are_kept_and_an_empty_policy_is_empty() {
        let mut all = hourly_for_a_year();
        all[10].protected = true;
        let policy = Policy {
            keep_last: 3,
            ..Policy::default()
        };
        let decisions = decide(&policy, &all, &Utc);
        let kept = kept(&decisions);
        assert_eq!(kept.len(), 4);
        assert!(kept.contains(&all[10].id.as_str()));
        assert!(Policy::default().is_empty());
        assert!(!policy.is_empty());
    }

    #[test]
    fn days_are_counted_in_the_given_time_zone() {
        // 23:30 UTC on Jan 1 is already Jan 2 in UTC+2.
        let times = [
            Utc.with_ymd_and_hms(2025, 1, 1, 21, 30, 0).unwrap(),
            Utc.with_ymd_and_hms(2025, 1, 1, 23, 30, 0).unwrap(),
        ];
        let candidates: Vec<Candidate> = times
            .iter()
            .enumerate()
            .map(|(i, t)| Candidate {
                id: i.to_string(),
                time: *t,
                protected: false,
            })
            .collect();
        let policy = Policy {
            keep_daily: 5,
            ..Policy::default()
        };
        assert_eq!(kept(&decide(&policy, &candidates, &Utc)), ["1"]);
        let plus2 = chrono::FixedOffset::east_opt(2 * 3600).unwrap();
        assert_eq!(kept(&decide(&policy, &candidates, &plus2)), ["1", "0"]);
    }
}
