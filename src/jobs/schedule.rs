//! Schedules: when a cron expression fires next (local time, DST handled by
//! croner), whether a run was missed, and the systemd `OnCalendar=` form.

use chrono::{DateTime, Local, Utc};

/// The first time after `after` that `schedule` fires.
pub fn next_after(schedule: &croner::Cron, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule
        .find_next_occurrence(&after.with_timezone(&Local), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Whether a run due after `last_run` began was missed by `now` (the
/// daemon was down): then it runs once, not once per missed slot.
pub fn missed(schedule: &croner::Cron, last_run: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    next_after(schedule, last_run).is_some_and(|due| due <= now)
}

/// Translates a cron expression into systemd's `OnCalendar=` syntax.
/// Numeric fields with `*`, lists, ranges and steps are supported; anything
/// else is refused with a hint rather than translated loosely.
pub fn to_on_calendar(cron: &str) -> Result<String, String> {
    let fields: Vec<&str> = cron.split_whitespace().collect();
    let (seconds, rest) = match fields.len() {
        5 => ("0", &fields[..]),
        6 => (fields[0], &fields[1..]),
        _ => return Err(format!("{cron:?}: expected 5 or 6 cron fields")),
    };
    let [minute, hour, dom, month, dow] = [rest[0], rest[1], rest[2], rest[3], rest[4]];
    if dom != "*" && dow != "*" {
        return Err(format!(
            "{cron:?}: cron runs when day-of-month OR weekday matches, systemd when both do; write OnCalendar= by hand"
        ));
    }
    let unsupported = |field: &str| {
        format!("{cron:?}: cannot translate {field:?} to systemd; write OnCalendar= by hand")
    };
    let numeric = |field: &str, first: u32| -> Result<String, String> {
        if field == "*" {
            return Ok("*".into());
        }
        let parts: Result<Vec<String>, String> = field
            .split(',')
            .map(|part| {
                let (range, step) = match part.split_once('/') {
                    Some((r, s)) => (r, Some(s)),
                    None => (part, None),
                };
                let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
                let range = match range.split_once('-') {
                    _ if range == "*" => first.to_string(),
                    Some((a, b)) if ok(a) && ok(b) && step.is_none() => format!("{a}..{b}"),
                    None if ok(range) => range.to_string(),
                    _ => return Err(unsupported(field)),
                };
                match step {
                    Some(s) if ok(s) => Ok(format!("{range}/{s}")),
                    Some(_) => Err(unsupported(field)),
                    None => Ok(range),
                }
            })
            .collect();
        Ok(parts?.join(","))
    };
    const DAYS: [&str; 8] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let weekday = |field: &str| -> Result<String, String> {
        let day = |d: &str| {
            d.parse::<usize>()
                .ok()
                .and_then(|n| DAYS.get(n).copied())
                .ok_or_else(|| unsupported(field))
        };
        let parts: Result<Vec<String>, String> = field
            .split(',')
            .map(|part| match part.split_once('-') {
                Some((a, b)) => Ok(format!("{}..{}", day(a)?, day(b)?)),
                None => day(part).map(str::to_string),
            })
            .collect();
        Ok(parts?.join(","))
    };
    let date = format!("*-{}-{}", numeric(month, 1)?, numeric(dom, 1)?);
    let time = format!(
        "{}:{}:{}",
        numeric(hour, 0)?,
        numeric(minute, 0)?,
        numeric(seconds, 0)?
    );
    Ok(if dow == "*" {
        format!("{date} {time}")
    } else {
        format!("{} {date} {time}", weekday(dow)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn cron_to_on_calendar() {
        assert_eq!(to_on_calendar("0 3 * * *").unwrap(), "*-*-* 3:0:0");
        assert_eq!(to_on_calendar("*/15 * * * *").unwrap(), "*-*-* *:0/15:0");
        assert_eq!(
            to_on_calendar("30 2 * * 1-5").unwrap(),
            "Mon..Fri *-*-* 2:30:0"
        );
        assert_eq!(to_on_calendar("0 0 1 */3 *").unwrap(), "*-1/3-1 0:0:0");
        assert_eq!(to_on_calendar("*/10 * * * * *").unwrap(), "*-*-* *:*:0/10");
        assert_eq!(
            to_on_calendar("0 4 * * 0,6").unwrap(),
            "Sun,Sat *-*-* 4:0:0"
        );
        assert!(
            to_on_calendar("0 3 1 * 1").is_err(),
            "dom OR dow has no systemd form"
        );
        assert!(to_on_calendar("0 3 * JAN *").is_err());
        assert!(to_on_calendar("0 3 *").is_err());
    }

    #[test]
    fn a_missed_run_is_seen_once() {
        let daily = crate::jobs::config::parse_schedule("0 3 * * *").unwrap();
        let last = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap();
        // Five nights later: missed (once; the caller runs it a single time).
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap();
        assert!(missed(&daily, last, now));
        // An hour later: not yet due.
        assert!(!missed(&daily, last, last + chrono::Duration::hours(1)));
        let next = next_after(&daily, now).unwrap();
        assert!(next > now && next - now <= chrono::Duration::days(1));
    }
}
