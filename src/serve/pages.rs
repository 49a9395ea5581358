//! The dashboard's pages. maud escapes every string it interpolates, so a
//! host named `<script>` is text; SVG charts come from [`super::chart`],
//! which draws no repository string; links carry repository strings only
//! as query values (escaped by `urlencoded`).

use super::chart::{self, Series};
use super::model::{plausible, Backup, Model, PrunePreview, MAX_BYTES, MAX_MS};
use crate::fsutil::human_bytes;
use crate::jobs::contents::{Changed, Contents};
use crate::jobs::runlog::{RunKind, RunStatus};
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

/// What a page needs besides the model.
pub(crate) struct View<'m> {
    pub model: &'m Model,
    /// Which of the server's repositories `model` is, and all of them.
    pub repo: usize,
    pub repos: &'m [std::path::PathBuf],
    pub now: DateTime<Utc>,
    /// A stack whose newest backup is older than this is overdue.
    pub overdue_after: chrono::Duration,
}

fn layout(view: &View<'_>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · volsnap" }
                link rel="stylesheet" href="/static/style.css";
            }
            body {
                nav {
                    a href="/" { "Fleet" }
                    a href="/jobs" { "This host's jobs" }
                    @for (n, root) in view.repos.iter().enumerate() {
                        a.current[n == view.repo] href=(format!("/repository?repo={n}")) title=(root.display().to_string()) {
                            @if view.repos.len() == 1 { "Repository" } @else { "Repository " (n + 1) }
                        }
                    }
                    span.where { (view.model.location) }
                    span.when { "read " (age(view, &view.model.loaded_at)) }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub(crate) fn urlencode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn stack_link(view: &View<'_>, host: &str, selection: &str) -> String {
    format!(
        "/stack?{}",
        query(&[
            ("repo", &view.repo.to_string()),
            ("host", host),
            ("selection", selection)
        ])
    )
}

fn backup_link(view: &View<'_>, b: &Backup) -> String {
    format!(
        "/backup?{}",
        query(&[("repo", &view.repo.to_string()), ("id", &b.key)])
    )
}

/// What the repository said that was skipped.
fn warnings(view: &View<'_>) -> Markup {
    html! {
        @for w in &view.model.warnings {
            p.warning { "skipped: " (w) }
        }
    }
}

/// How long before the page `t` was: "5 min ago".
fn age(view: &View<'_>, t: &DateTime<Utc>) -> String {
    let s = (view.now - *t).num_seconds();
    match s {
        s if s < 0 => "in the future".to_string(),
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s if s < 172_800 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

fn human_duration(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    let (n, unit) = match s {
        s if s % 86_400 == 0 && s > 0 => (s / 86_400, "day"),
        s if s % 3600 == 0 && s > 0 => (s / 3600, "hour"),
        s if s % 60 == 0 && s > 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

fn opt_bytes(b: Option<u64>) -> String {
    b.map_or_else(|| "out of range".into(), human_bytes)
}

fn opt_ms(ms: Option<u64>) -> String {
    ms.map_or_else(|| "out of range".into(), |ms| chart::seconds(ms as f64))
}

pub(crate) fn fleet(views: &[View<'_>]) -> Markup {
    let body = html! {
        @for view in views {
            @if views.len() > 1 {
                h2 { "Repository " (view.repo + 1) ": " (view.model.location) }
            }
            (fleet_table(view))
        }
    };
    layout(&views[0], "Fleet", body)
}

fn fleet_table(view: &View<'_>) -> Markup {
    let stacks: Vec<&(String, String)> = view.model.stacks().collect();
    html! {
        (warnings(view))
        @if stacks.is_empty() {
            p { "No backups in this repository yet." }
        } @else {
            table.fleet data-repo=(view.repo) {
                thead { tr {
                    th { "host" } th { "stack" } th { "newest backup" } th { "consistency" }
                    th { "newest verified" } th { "last drill" } th { "RTO" } th { "backups" }
                } }
                tbody {
                    @for (host, selection) in stacks {
                        (fleet_row(view, host, selection))
                    }
                }
            }
            p.legend { "Overdue: no backup that verifies as its host's since the time this host's job for the stack was due, plus "
                (human_duration(SCHEDULE_GRACE)) "; for other stacks, the newest is older than "
                (human_duration(view.overdue_after)) " (serve --overdue-after). "
                "Backups that do not verify as their host's (unsigned, untrusted key, tampered with) are counted apart and never taken as newest." }
        }
    }
}

/// How late a scheduled backup may start before its stack is overdue.
const SCHEDULE_GRACE: chrono::Duration = chrono::Duration::hours(1);

/// Whether a stack is overdue, and the schedule that says so (this host's
/// job for it), if any.
fn overdue(
    view: &View<'_>,
    host: &str,
    selection: &str,
    newest: Option<&Backup>,
) -> (bool, Option<String>) {
    let schedule = (host == view.model.this_host)
        .then(|| view.model.host.schedule_of(&view.model.root, selection))
        .flatten();
    let Some(newest) = newest else {
        return (true, schedule.map(|(text, _)| text));
    };
    match schedule {
        Some((text, cron)) => {
            let late = crate::jobs::schedule::next_after(&cron, newest.started_at)
                .is_some_and(|due| view.now > due + SCHEDULE_GRACE);
            (late, Some(text))
        }
        None => (view.now - newest.started_at > view.overdue_after, None),
    }
}

fn fleet_row(view: &View<'_>, host: &str, selection: &str) -> Markup {
    let all: Vec<&Backup> = view.model.of_stack(host, selection).collect();
    let newest = all.iter().rev().find(|b| b.attributed);
    let (overdue, schedule) = overdue(view, host, selection, newest.copied());
    let unattributed = all.iter().filter(|b| !b.attributed).count();
    let verified = all.iter().filter_map(|b| b.verified_at).max();
    let drill = all
        .iter()
        .filter_map(|b| b.drill.as_ref())
        .max_by_key(|d| d.at);
    html! {
        tr.overdue[overdue] data-host=(host) data-stack=(selection) {
            td { (host) }
            td {
                a href=(stack_link(view, host, selection)) { (selection) }
                @if let Some(schedule) = &schedule { br; span.legend { "job schedule " (schedule) } }
            }
            td {
                @match newest {
                    Some(b) => { a href=(backup_link(view, b)) { (age(view, &b.started_at)) } }
                    None => { "none that verifies" }
                }
                @if overdue { " " span.flag { "overdue" } }
            }
            td { (newest.map_or("", |b| b.consistency.as_str())) }
            td { (verified.map_or_else(|| "never".to_string(), |t| age(view, &t))) }
            td {
                @match drill {
                    Some(d) if d.passed => { span.pass { "passed" } " " (age(view, &d.at)) }
                    Some(d) => { span.flag { "failed" } " " (age(view, &d.at)) }
                    None => { "never" }
                }
            }
            td { (drill.and_then(|d| d.rto_ms).map_or_else(String::new, |ms| chart::seconds(ms as f64))) }
            td {
                (all.len())
                @if unattributed > 0 { " " span.flag title="not attributable to their host" { (unattributed) " ?" } }
            }
        }
    }
}

fn figure(id: &str, title: &str, points: usize, svg: Option<String>) -> Markup {
    html! {
        figure id=(id) data-points=(points) {
            figcaption { (title) }
            @match svg {
                Some(svg) => { (PreEscaped(svg)) }
                None => { p { "nothing to plot" } }
            }
        }
    }
}

/// The points of `value` over the backups, skipping values out of range.
fn points(
    backups: &[&Backup],
    value: impl Fn(&Backup) -> Option<u64>,
) -> Vec<(DateTime<Utc>, f64)> {
    backups
        .iter()
        .filter_map(|b| value(b).map(|v| (b.started_at, v as f64)))
        .collect()
}

pub(crate) fn stack(view: &View<'_>, host: &str, selection: &str) -> Markup {
    let backups: Vec<&Backup> = view.model.of_stack(host, selection).collect();
    let duration = points(&backups, |b| b.duration_ms);
    let downtime = points(&backups, |b| b.downtime_ms);
    let data = points(&backups, |b| b.bytes);
    let stored = points(&backups, |b| b.stored);
    // This host's own record of its backups of this stack: the estimated
    // downtime and the bytes actually read (the rest came from the parent).
    let own: Vec<&crate::plan::estimate::PastRun> = if host == view.model.this_host {
        view.model
            .history
            .iter()
            .filter(|r| r.selection == selection)
            .filter(|r| {
                r.backup_id
                    .as_ref()
                    .is_none_or(|id| backups.iter().any(|b| b.id == *id))
            })
            .collect()
    } else {
        Vec::new()
    };
    let estimated: Vec<(DateTime<Utc>, f64)> = own
        .iter()
        .filter_map(|r| plausible(r.estimated_ms, MAX_MS).map(|ms| (r.at, ms as f64)))
        .collect();
    let read: Vec<(DateTime<Utc>, f64)> = own
        .iter()
        .filter_map(|r| {
            plausible(r.read_bytes.unwrap_or(r.bytes), MAX_BYTES).map(|b| (r.at, b as f64))
        })
        .collect();
    let rto: Vec<(DateTime<Utc>, f64)> = backups
        .iter()
        .filter_map(|b| b.drill.as_ref())
        .filter_map(|d| d.rto_ms.map(|ms| (d.at, ms as f64)))
        .collect();
    let one = |label, points| [Series { label, points }];
    let body = html! {
        p { "Host " strong { (host) } ", " (backups.len()) " backups." }
        (figure("plot-duration", "Duration of each backup", duration.len(),
            chart::time_chart(&one("duration", &duration), chart::seconds)))
        (figure("plot-downtime", "Services down during each backup, and what the plan estimated (this host's record)", downtime.len(),
            chart::time_chart(&[Series { label: "down", points: &downtime }, Series { label: "estimated", points: &estimated }], chart::seconds)))
        (figure("plot-bytes", "Data, bytes read (this host's record) and bytes stored per backup", data.len(),
            chart::time_chart(&[Series { label: "data", points: &data }, Series { label: "stored", points: &stored }, Series { label: "read", points: &read }], chart::bytes)))
        (figure("plot-rto", "Drill recovery time (restore, then healthy)", rto.len(),
            chart::time_chart(&one("RTO", &rto), chart::seconds)))
        table #backups {
            thead { tr {
                th { "backup" } th { "started (UTC)" } th { "strategy" } th { "consistency" }
                th { "duration" } th { "downtime" } th { "data" } th { "stored" } th { "marks" }
            } }
            tbody {
                @for b in backups.iter().rev() {
                    tr {
                        td { a href=(backup_link(view, b)) { (b.id) } }
                        td { (b.started_at.format("%Y-%m-%d %H:%M:%S")) }
                        td { (b.strategy) } td { (b.consistency) }
                        td { (opt_ms(b.duration_ms)) } td { (opt_ms(b.downtime_ms)) }
                        td { (opt_bytes(b.bytes)) } td { (opt_bytes(b.stored)) }
                        td { (marks(b)) }
                    }
                }
            }
        }
    };
    layout(
        view,
        &format!("Stack {selection}"),
        html! { (warnings(view)) (body) },
    )
}

fn marks(b: &Backup) -> String {
    let mut marks = Vec::new();
    if b.protected {
        marks.push("protected");
    }
    if b.verified_at.is_some() {
        marks.push("verified");
    }
    match &b.drill {
        Some(d) if d.passed => marks.push("drill passed"),
        Some(_) => marks.push("drill failed"),
        None => {}
    }
    if !b.attributed {
        marks.push("not its host's");
    }
    marks.join(", ")
}

pub(crate) fn repository(view: &View<'_>, prune: &PrunePreview) -> Markup {
    let m = view.model;
    // The repository's stored size after each backup: what each added.
    let mut total = 0u64;
    let mut growth = Vec::new();
    for b in &m.backups {
        total = total.saturating_add(b.stored.unwrap_or(0));
        growth.push((b.started_at, total as f64));
    }
    let per_day = match (m.backups.first(), m.backups.last()) {
        (Some(a), Some(b)) if b.started_at > a.started_at => {
            let days = (b.started_at - a.started_at).num_seconds() as f64 / 86_400.0;
            let added: u64 = m.backups[1..]
                .iter()
                .fold(0u64, |s, b| s.saturating_add(b.stored.unwrap_or(0)));
            Some(added as f64 / days.max(1.0 / 24.0))
        }
        _ => None,
    };
    let full = match (m.capacity, per_day) {
        (Some((_, free)), Some(rate)) if rate > 0.0 => {
            let days = free as f64 / rate;
            (days < 365.0 * 100.0)
                .then(|| view.now + chrono::Duration::seconds((days * 86_400.0) as i64))
        }
        _ => None,
    };
    let body = html! {
        dl #facts {
            dt { "format" } dd { (match m.format { crate::repo::Format::Chunked => "2 (chunked)", crate::repo::Format::Tar => "1 (tar)" }) }
            dt { "encrypted" } dd {
                @if m.encrypted { "yes" @if !m.browsable { " (file lists need an identity; the dashboard never loads one)" } } @else { "no" }
            }
            dt { "backups" } dd { (m.backups.len()) }
            dt { "stored by its backups" } dd { (human_bytes(total)) }
            dt { "growth per day" } dd { (per_day.map_or_else(|| "not enough backups yet".into(), |r| human_bytes(r as u64))) }
            @if let Some((size, free)) = m.capacity {
                dt { "file system" } dd { (human_bytes(free)) " free of " (human_bytes(size)) }
            } @else {
                dt { "file system" } dd { "a server: it does not say its capacity" }
            }
            dt { "estimated full" } dd { (full.map_or_else(|| "not within a century at this rate, or unknown".into(), |t| t.format("%Y-%m-%d").to_string())) }
        }
        (figure("plot-growth", "Stored size after each backup", growth.len(),
            chart::time_chart(&[Series { label: "stored", points: &growth }], chart::bytes)))
        (prune_section(view, prune))
    };
    layout(view, "Repository", html! { (warnings(view)) (body) })
}

fn prune_section(view: &View<'_>, prune: &PrunePreview) -> Markup {
    html! {
        section #prune {
            h2 { "What a prune would free" }
            p.legend { "A dry run of " (prune.rules) ", as of this reading: nothing was deleted. "
                "The newest backup of each stack that verifies always stays, and so do protected ones." }
            @match &prune.result {
                Err(why) => { p.warning { (why) } }
                Ok(figures) => {
                    p #prune-summary data-deleting=(figures.deleting.len()) {
                        (figures.deleting.len()) " backups would go, " (figures.keeping) " stay; about "
                        strong { (opt_bytes(figures.bytes_freed)) } " freed (what only the backups going use)."
                    }
                    @if !figures.deleting.is_empty() {
                        table #prune-deleting {
                            thead { tr { th { "host" } th { "stack" } th { "backup" } } }
                            tbody {
                                @for (host, selection, id) in figures.deleting.iter().take(MAX_ENTRIES) {
                                    tr { td { (host) } td { a href=(stack_link(view, host, selection)) { (selection) } } td { (id) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Runs shown per job on the jobs page.
const RUNS_PER_JOB: usize = 20;

/// This host's jobs (its configuration file) and their runs (its run log).
pub(crate) fn jobs(view: &View<'_>) -> Markup {
    let host = &view.model.host;
    let body = html! {
        p.legend { "From this host's configuration " code { (host.config_path.display().to_string()) }
            " and run log " code { (host.run_log.display().to_string()) } ", not from a repository." }
        @if let Some(problem) = &host.config_problem { p.warning { (problem) } }
        @if host.jobs.is_empty() {
            p { "This host has no jobs." }
        } @else {
            table #jobs {
                thead { tr {
                    th { "job" } th { "stack" } th { "repository" } th { "schedule" } th { "next run" }
                    th { "last run" } th { "last success" } th { "retention" }
                } }
                tbody {
                    @for (name, job) in &host.jobs {
                        (job_row(view, name, job))
                    }
                }
            }
        }
        h2 { "Runs" }
        @if host.runs.is_empty() {
            p { "No run recorded yet." }
        } @else {
            table #runs {
                thead { tr {
                    th { "job" } th { "kind" } th { "started (UTC)" } th { "status" } th { "duration" }
                    th { "downtime (estimated)" } th { "data" } th { "backup" } th { "problems" }
                } }
                tbody {
                    @for (name, _) in &host.jobs {
                        @for r in host.runs_of(name).take(RUNS_PER_JOB) { (run_row(r)) }
                    }
                    @for r in host.runs.iter().rev().filter(|r| !host.jobs.iter().any(|(n, _)| *n == r.job)).take(super::host::RUNS_SHOWN) {
                        (run_row(r))
                    }
                }
            }
            p.legend { "The newest " (RUNS_PER_JOB) " runs of each job, then runs of jobs no longer configured." }
        }
    };
    layout(view, "This host's jobs", body)
}

fn job_row(view: &View<'_>, name: &str, job: &crate::jobs::config::Job) -> Markup {
    let host = &view.model.host;
    let last = host.runs_of(name).find(|r| r.kind == RunKind::Backup);
    let success = host
        .runs_of(name)
        .find(|r| r.kind == RunKind::Backup && r.status == RunStatus::Success);
    let cron = job
        .schedule
        .as_deref()
        .and_then(|s| crate::jobs::config::parse_schedule(s).ok());
    let next = cron
        .as_ref()
        .and_then(|c| crate::jobs::schedule::next_after(c, view.now));
    // Late: a run was due since the last success (or ever, with none),
    // and the grace has passed.
    let late = cron.as_ref().is_some_and(|c| match success {
        Some(s) => crate::jobs::schedule::next_after(c, s.started_at)
            .is_some_and(|due| view.now > due + SCHEDULE_GRACE),
        None => true,
    });
    html! {
        tr.overdue[late] data-job=(name) {
            td {
                (name)
                @if late && success.is_none() { " " span.flag { "no successful run yet" } }
                @else if late { " " span.flag { "overdue" } }
            }
            td { (job.selection().to_string()) }
            td { (job.repo.display().to_string()) }
            td { (job.schedule.as_deref().unwrap_or("none (volsnap run)")) }
            td { (next.map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M UTC").to_string())) }
            td {
                @match last {
                    Some(r) if r.status == RunStatus::Success => { span.pass { "success" } " " (age(view, &r.started_at)) }
                    Some(r) => { span.flag { "failed" } " " (age(view, &r.started_at)) }
                    None => { "never" }
                }
            }
            td { (success.map_or_else(|| "never".to_string(), |r| age(view, &r.started_at))) }
            td { (job.retention.as_ref().map_or_else(|| "keeps every backup".to_string(), super::host::describe_policy)) }
        }
    }
}

fn run_row(r: &crate::jobs::runlog::RunRecord) -> Markup {
    let kind = match r.kind {
        RunKind::Backup => "backup",
        RunKind::Drill => "drill",
    };
    html! {
        tr data-job=(r.job) data-status=(r.status.to_string()) {
            td { (r.job) } td { (kind) }
            td { (r.started_at.format("%Y-%m-%d %H:%M:%S")) }
            td { @if r.status == RunStatus::Success { span.pass { "success" } } @else { span.flag { "failed" } } }
            td { (chart::seconds(r.duration_ms as f64)) }
            td { (chart::seconds(r.downtime_ms as f64))
                @if let Some(e) = r.estimated_downtime_ms { " (" (chart::seconds(e as f64)) ")" } }
            td { (human_bytes(r.bytes)) }
            td { (r.backup_id.as_deref().unwrap_or("")) }
            td { (r.problems.join("; ")) }
        }
    }
}

/// Entries shown on one backup page at most.
const MAX_ENTRIES: usize = 2000;

pub(crate) fn backup(
    view: &View<'_>,
    b: &Backup,
    contents: Result<&Contents, String>,
    under: &str,
) -> Markup {
    let others: Vec<&Backup> = view
        .model
        .of_stack(&b.host, &b.selection)
        .filter(|o| o.key != b.key)
        .collect();
    let body = html! {
        dl #facts {
            dt { "host" } dd { (b.host) }
            dt { "stack" } dd { a href=(stack_link(view, &b.host, &b.selection)) { (b.selection) } }
            dt { "started (UTC)" } dd { (b.started_at.format("%Y-%m-%d %H:%M:%S")) }
            dt { "strategy" } dd { (b.strategy) ", " (b.consistency) }
            dt { "volumes" } dd { (b.volumes.join(", ")) }
            dt { "marks" } dd { (marks(b)) }
        }
        @if !others.is_empty() {
            form method="get" action="/diff" {
                input type="hidden" name="repo" value=(view.repo);
                input type="hidden" name="from" value=(b.key);
                label { "Compare with " select name="to" {
                    @for o in others.iter().rev() { option value=(o.key) { (o.id) " (" (o.started_at.format("%Y-%m-%d %H:%M")) ")" } }
                } }
                button type="submit" { "diff" }
            }
        }
        @match contents {
            Err(why) => { p.warning { (why) } }
            Ok(contents) => {
                form method="get" action="/backup" {
                    input type="hidden" name="repo" value=(view.repo);
                    input type="hidden" name="id" value=(b.key);
                    label { "Under " input type="text" name="under" value=(under) placeholder="volume/path"; }
                    button type="submit" { "filter" }
                }
                table #entries {
                    thead { tr { th { "volume" } th { "path" } th { "kind" } th { "mode" } th { "size" } } }
                    tbody {
                        @for (volume, entry) in entries_under(contents, under).take(MAX_ENTRIES) {
                            tr {
                                td { (volume) }
                                td { (shown_path(&entry.entry)) }
                                td { (format!("{:?}", entry.entry.kind).to_lowercase()) }
                                td { (format!("{:o}", entry.entry.mode)) }
                                td { (human_bytes(entry.entry.size)) }
                            }
                        }
                    }
                }
                p.legend { "At most " (MAX_ENTRIES) " entries are shown; narrow with a volume or path." }
            }
        }
    };
    layout(
        view,
        &format!("Backup {}", b.id),
        html! { (warnings(view)) (body) },
    )
}

fn entries_under<'c>(
    contents: &'c Contents,
    under: &'c str,
) -> impl Iterator<Item = (&'c str, &'c crate::jobs::contents::Listed)> + 'c {
    contents.volumes.iter().flat_map(move |(name, entries)| {
        entries
            .iter()
            .filter(move |e| crate::jobs::contents::selected(name, &e.entry.path, under))
            .map(move |e| (name.as_str(), e))
    })
}

/// An entry's path as text: its raw bytes (names need not be UTF-8),
/// control characters and invalid bytes escaped.
fn shown_path(entry: &crate::repo::manifest::FileEntry) -> String {
    match entry.raw_path() {
        Ok(raw) => crate::text::escape_bytes(&raw),
        Err(_) => crate::text::escape(&entry.path).into_owned(),
    }
}

pub(crate) fn diff(
    view: &View<'_>,
    from: &Backup,
    to: &Backup,
    changes: Result<&[Changed], String>,
) -> Markup {
    let body = html! {
        p { "From " a href=(backup_link(view, from)) { (from.id) } " to " a href=(backup_link(view, to)) { (to.id) } "." }
        @match changes {
            Err(why) => { p.warning { (why) } }
            Ok(changes) if changes.is_empty() => { p { "No entry differs." } }
            Ok(changes) => {
                table #diff {
                    thead { tr { th { "change" } th { "volume" } th { "path" } th { "size" } } }
                    tbody {
                        @for c in changes.iter().take(MAX_ENTRIES) {
                            tr data-change=(c.change.mark()) {
                                td { (c.change.mark()) } td { (c.volume) } td { (c.path) } td { (human_bytes(c.size)) }
                            }
                        }
                    }
                }
                p.legend { (changes.len()) " entries differ (+ added, - removed, M content, U metadata only, T type)." }
            }
        }
    };
    layout(view, "Diff", body)
}

pub(crate) fn message(view: &View<'_>, title: &str, text: &str) -> Markup {
    layout(view, title, html! { p { (text) } })
}

pub(crate) const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}\
nav{background:#223;padding:.6em 1em;display:flex;gap:1.2em;align-items:baseline}\
nav a{color:#fff;text-decoration:none;font-weight:600}nav a.current{text-decoration:underline}\
nav .where,nav .when{color:#aab;font-size:.85em}\
main{padding:1em 1.5em}\
table{border-collapse:collapse;margin:1em 0;background:#fff}\
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;font-size:.9em}\
th{background:#eef}\
tr.overdue td{background:#fff1f0}\
.flag{color:#b00;font-weight:600}.pass{color:#070;font-weight:600}\
.warning{color:#a60}.legend{color:#666;font-size:.85em}\
figure{margin:1em 0;background:#fff;border:1px solid #ddd;display:inline-block;padding:.4em}\
figcaption{font-weight:600;margin-bottom:.3em}\
dl#facts{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}\
dt{font-weight:600}dd{margin:0}\
";
