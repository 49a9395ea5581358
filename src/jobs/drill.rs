//! Recovery drills: prove that a backup restores and that the stack starts
//! on it, without touching the stack itself.
//!
//! The backup is restored into scratch volumes; the stack's running
//! containers are copied (same image, command, environment, healthcheck)
//! onto them, on an internal network with no published ports, and started
//! in dependency order. The drill passes when every copy runs (healthy, if
//! it has a healthcheck) and every check command exits 0 in time.
//! Everything the drill creates carries one label and is removed at the
//! end; the removal is journalled, so even a killed drill is cleaned up by
//! `volsnap recover`.

use super::config::{Config, DEFAULT_DRILL_TIMEOUT_SECS};
use super::runlog::{RunKind, RunRecord, RunStatus};
use super::source::{open_backup, Source};
use super::RunContext;
use crate::cancel::Cancel;
use crate::discovery::Stack;
use crate::discovery::{discover, Selection};
use crate::docker::{CopyMount, Docker, DRILL_LABEL};
use crate::journal::{Journal, Undo};
use crate::repo::manifest::{Manifest, VolumeKind};
use crate::repo::notes::{Note, NotesAt};
use crate::repo::Scope;
use crate::restore::{restore_volume, RestoreOptions};
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What to check and how long to wait.
#[derive(Debug, Clone)]
pub struct DrillSpec {
    /// (service or container name, command run inside its drill copy).
    pub checks: Vec<(String, String)>,
    /// Commands run on the host once the copies answer, each with
    /// `VOLSNAP_DRILL_<SERVICE>` set to the address of that service's copy
    /// on the drill network (a client program the images lack, such as a
    /// Milvus client). The operator's commands, never a backup's.
    pub host_checks: Vec<String>,
    /// Run a copy on the image its service's backup was taken with (by
    /// id, if still here under the running image's repository) rather
    /// than the current one.
    pub recorded_images: bool,
    pub timeout: Duration,
}

/// The variable a host check finds the address of `service`'s copy in:
/// `VOLSNAP_DRILL_` and the name in capitals, other characters as `_`.
pub fn address_variable(service: &str) -> String {
    let name: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("VOLSNAP_DRILL_{name}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    pub service: String,
    pub command: String,
    pub passed: bool,
    /// The last attempt's exit status and output, when it did not pass.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    pub backup_id: String,
    pub drilled_at: DateTime<Utc>,
    pub passed: bool,
    /// Restoring every volume into scratch volumes.
    pub restore_ms: u64,
    /// From starting the first copy to every copy healthy and every check
    /// passing (with `restore_ms`, the recovery time actually achieved).
    pub healthy_ms: Option<u64>,
    pub containers: Vec<String>,
    pub checks: Vec<CheckResult>,
    #[serde(default)]
    pub problems: Vec<String>,
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Resolves the backup (`latest` = the newest of this selection), checks
/// it, runs the drill and stores its report beside the backup.
pub fn perform(
    repo: &Path,
    id: &str,
    selection: &Selection,
    host: &str,
    spec: &DrillSpec,
    state_dir: &Path,
    cancel: &Cancel,
) -> Result<DrillReport> {
    let scope = Scope {
        host: host.to_string(),
        selection: Some(selection.to_string()),
    };
    let (id, source, manifest, check) = open_backup(repo, id, &scope, cancel)?;
    if !check.problems.is_empty() {
        anyhow::bail!(
            "backup {id} failed verification, not drilling it: {}",
            check.problems.join("; ")
        );
    }
    let _lock = super::begin_run(state_dir)?;
    let docker = Docker::connect()?;
    let stack = discover(&docker, selection)?;
    let mut journal = Journal::create(
        state_dir,
        &format!("drill-{id}-{}", std::process::id()),
        &super::command_line(),
    )?;
    eprintln!("volsnap: drilling backup {id} of {selection}");
    let report = drill(
        &docker,
        &source,
        &manifest,
        &stack,
        spec,
        cancel,
        &mut journal,
    )?;
    // A teardown that did not complete stays in the journal for recover.
    journal.finish_if_clean()?;
    // The report is kept beside the backup, as a note.
    let notes = source.notes();
    store_report(&notes, &report);
    if report.passed {
        crate::restore::verify::record_verified(&notes, false);
    }
    Ok(report)
}

/// The drill of a configured job (newest backup of its stack).
pub fn run_job_drill(
    config: &Config,
    name: &str,
    run: &RunContext<'_>,
    show: &dyn Fn(&DrillReport),
) -> RunRecord {
    let job = config.jobs.get(name).expect("job checked by the caller");
    super::run::register_keys(job, run.state_dir);
    let settings = job.drill.clone().unwrap_or_default();
    let spec = DrillSpec {
        checks: settings.checks.into_iter().collect(),
        host_checks: settings.host_checks,
        recorded_images: settings.recorded_images,
        timeout: Duration::from_secs(settings.timeout.unwrap_or(DEFAULT_DRILL_TIMEOUT_SECS)),
    };
    let clock = Instant::now();
    let mut record = RunRecord::start(name, RunKind::Drill);
    let repo: PathBuf = job.repo.clone();
    let host = crate::execute::this_host();
    match perform(
        &repo,
        "latest",
        &job.selection(),
        &host,
        &spec,
        run.state_dir,
        run.cancel,
    ) {
        Ok(report) => {
            show(&report);
            record.backup_id = Some(report.backup_id.clone());
            record.restore_ms = Some(report.restore_ms);
            record.healthy_ms = report.healthy_ms;
            record.problems.extend(report.problems);
            record.problems.extend(
                report
                    .checks
                    .iter()
                    .filter(|c| !c.passed)
                    .map(|c| format!("check {} failed: {}", c.service, c.detail)),
            );
            if report.passed {
                record.status = RunStatus::Success;
            }
        }
        Err(e) => record
            .problems
            .push(format!("drill failed: {}", crate::error::error_chain(&e))),
    }
    let mut env = super::run::hook_env(name, job, "drill");
    env.push(("VOLSNAP_STATUS".into(), record.status.to_string()));
    env.push((
        "VOLSNAP_BACKUP_ID".into(),
        record.backup_id.clone().unwrap_or_default(),
    ));
    super::run::finish(config, name, job, &mut record, &env, clock, run.state_dir);
    record
}

/// Runs a drill of the backup read from `source` for the live `stack`.
pub(crate) fn drill(
    docker: &Docker,
    source: &Source,
    manifest: &Manifest,
    stack: &Stack,
    spec: &DrillSpec,
    cancel: &Cancel,
    journal: &mut Journal,
) -> Result<DrillReport> {
    let tag = format!(
        "{:x}{:04x}",
        std::process::id(),
        Utc::now().timestamp_subsec_micros() & 0xffff
    );
    let prefix = format!("volsnap-drill-{tag}");
    let mut labels = BTreeMap::new();
    labels.insert(DRILL_LABEL.to_string(), tag.clone());
    labels.insert("volsnap.drill-of".to_string(), manifest.id.clone());
    let teardown = Undo::RemoveLabelled {
        label: DRILL_LABEL.to_string(),
        value: tag.clone(),
    };
    journal.push(&teardown)?;
    let mut report = DrillReport {
        backup_id: manifest.id.clone(),
        drilled_at: Utc::now(),
        passed: false,
        restore_ms: 0,
        healthy_ms: None,
        containers: Vec::new(),
        checks: Vec::new(),
        problems: Vec::new(),
        notes: Vec::new(),
    };
    let outcome = run_drill(
        docker,
        source,
        manifest,
        stack,
        spec,
        cancel,
        &prefix,
        &labels,
        &mut report,
    );
    if let Err(e) = outcome {
        report.problems.push(format!("{e:#}"));
    }
    // Always torn down; only a clean teardown leaves the journal.
    match docker.remove_labelled(DRILL_LABEL, &tag) {
        Ok(removed) => {
            tracing::info!("drill torn down: {}", removed.join(", "));
            journal.discharge(&teardown)?;
        }
        Err(e) => report.problems.push(format!(
            "teardown incomplete ({e:#}); 'volsnap recover' retries it"
        )),
    }
    report.passed = report.problems.is_empty() && report.checks.iter().all(|c| c.passed);
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn run_drill(
    docker: &Docker,
    source: &Source,
    manifest: &Manifest,
    stack: &Stack,
    spec: &DrillSpec,
    cancel: &Cancel,
    prefix: &str,
    labels: &BTreeMap<String, String>,
    report: &mut DrillReport,
) -> Result<()> {
    let network = prefix.to_string();
    docker.create_internal_network(&network, labels)?;

    // 1. Restore every volume of the backup into a scratch volume.
    let restore_clock = Instant::now();
    let mut scratch: BTreeMap<usize, String> = BTreeMap::new();
    for (i, v) in manifest.volumes.iter().enumerate() {
        cancel.check()?;
        if v.kind == VolumeKind::Definition {
            continue; // files of the host, not of a volume
        }
        let name = format!("{prefix}-v{i}");
        let info = docker.create_volume(&name, "local", &BTreeMap::new(), labels)?;
        restore_volume(
            source.payload(v)?,
            Path::new(&info.mountpoint),
            RestoreOptions::default(),
            cancel,
        )
        .with_context(|| format!("cannot restore {} into scratch volume {name}", v.name))?;
        scratch.insert(i, name);
    }
    report.restore_ms = restore_clock.elapsed().as_millis() as u64;

    // 2. Copy the running containers onto them and start them, dependencies
    //    first, each ready before the next starts.
    let deadline = crate::fsutil::deadline_after(spec.timeout);
    let healthy_clock = Instant::now();
    let running: Vec<_> = stack.containers.iter().filter(|c| c.info.running).collect();
    if running.is_empty() {
        anyhow::bail!("no container of the stack is running, so there is nothing to copy for the drill; start the stack first");
    }
    let mut copies: Vec<(String, String, Option<String>, String)> = Vec::new();
    for c in running {
        cancel.check()?;
        let mut mounts = Vec::new();
        for m in &c.info.mounts {
            let backed_up = manifest.volumes.iter().position(|v| match v.kind {
                VolumeKind::Volume => m.name.as_deref() == Some(v.name.as_str()),
                VolumeKind::Bind => m.kind == "bind" && m.source == v.source_path,
                VolumeKind::Definition => false,
            });
            let (source, bind) = match (backed_up, m.kind.as_str()) {
                (Some(i), _) => (scratch[&i].clone(), false),
                (None, "volume") => {
                    let name = format!("{prefix}-e{}", mounts.len());
                    docker.create_volume(&name, "local", &BTreeMap::new(), labels)?;
                    report.notes.push(format!(
                        "{}: {} is not in the backup; the copy gets an empty volume",
                        c.info.name, m.destination
                    ));
                    (name, false)
                }
                (None, "bind") => {
                    report.notes.push(format!(
                        "{}: host path {} is not in the backup; bound read-only",
                        c.info.name, m.source
                    ));
                    mounts.push(CopyMount {
                        source: m.source.clone(),
                        destination: m.destination.clone(),
                        bind: true,
                        read_only: true,
                    });
                    continue;
                }
                _ => continue,
            };
            mounts.push(CopyMount {
                source,
                destination: m.destination.clone(),
                bind,
                read_only: m.read_only,
            });
        }
        let short = c.service.clone().unwrap_or_else(|| c.info.name.clone());
        let name = format!("{prefix}-{short}");
        let mut aliases = vec![c.info.name.clone()];
        aliases.extend(c.service.clone());
        // The image the backup was taken with, when the service runs
        // another now: only if the operator asks (the id is the backup's
        // word), and that image (by id) is still here, known by the
        // repository of the one running now (an older tag of the same
        // software, not whatever image a backup names). Never pulled, and
        // nothing else of the copy's configuration from the backup.
        let lineage = crate::docker::repository_of(&c.info.image);
        let image = match super::services::other_recorded_image(&c.info, &manifest.containers) {
            Some((recorded, was)) => {
                // "image (id)" of the recorded and the current image.
                let (then, now) = (
                    format!(
                        "{} ({})",
                        crate::text::escape(&recorded.image),
                        super::services::short_id(was)
                    ),
                    format!(
                        "{} ({})",
                        crate::text::escape(&c.info.image),
                        super::services::short_id(&c.info.image_id)
                    ),
                );
                let name = &c.info.name;
                let (note, image) = if !spec.recorded_images {
                    (format!("{name}: the backup was taken with image {then}; the copy runs the current {now} (--recorded-images runs the one recorded, while it is on this host)"), None)
                } else if docker.image_repositories(was).iter().any(|r| r == lineage) {
                    (format!("{name}: the copy runs the image the backup was taken with, {then}, not the current {now}"), Some(was))
                } else {
                    (format!("{name}: the backup was taken with image {then}, which is no longer on this host as {lineage}; the copy runs the current {now}, so the drill does not prove the backup under its own version"), None)
                };
                report.notes.push(note);
                image
            }
            None => None,
        };
        let id = docker.create_copy(&c.info.id, &name, &network, aliases, mounts, image, labels)?;
        docker.start(&id)?;
        let left = deadline.saturating_duration_since(Instant::now());
        docker
            .wait_ready_settled(&id, &name, left)
            .with_context(|| format!("the drill copy of {} did not come up", c.info.name))?;
        // As after a restore: the service's own step (from the live
        // container's label, never from the backup) before its dependents
        // start, and its readiness check.
        if let Err(failure) = super::services::after_restore_step(docker, &id, &c.info) {
            anyhow::bail!("in the drill copy: {failure}");
        }
        if let Some(command) = crate::discovery::own_label(&c.info, crate::docker::READY_LABEL) {
            let left = deadline.saturating_duration_since(Instant::now());
            docker.wait_for_check(&id, &name, command, left)?;
        }
        report.containers.push(name.clone());
        copies.push((id, name, c.service.clone(), c.info.name.clone()));
    }

    // 3. The checks, retried until they pass or time runs out.
    for (service, command) in &spec.checks {
        let copy = copies
            .iter()
            .find(|(_, _, svc, original)| svc.as_deref() == Some(service) || original == service);
        let Some((id, _, _, _)) = copy else {
            report.checks.push(CheckResult {
                service: service.clone(),
                command: command.clone(),
                passed: false,
                detail: format!("no running service or container {service:?} in the stack"),
            });
            continue;
        };
        let result = retried(deadline, cancel, |left| {
            let outcome = docker.exec(id, command, left.min(Duration::from_secs(30)))?;
            Ok((
                outcome.exit_code,
                "timed out",
                crate::text::escape(outcome.output.trim()).into_owned(),
            ))
        })?;
        report
            .checks
            .push(check_result(service, command, result, spec));
    }
    // 4. The host's checks, against the copies' addresses.
    let mut env = Vec::new();
    for (id, _, service, original) in &copies {
        if let Some(ip) = docker.address_on(id, &network)? {
            for name in service.iter().chain(std::iter::once(original)) {
                env.push((address_variable(name), ip.clone()));
            }
        }
    }
    for command in &spec.host_checks {
        let result = retried(deadline, cancel, |left| {
            let (code, output) = super::notify::run_shell_captured(command, &env, left)?;
            Ok((
                code.map(i64::from),
                "killed at the drill's timeout",
                crate::text::escape(output.trim()).into_owned(),
            ))
        })?;
        report
            .checks
            .push(check_result("(host)", command, result, spec));
    }
    if report.checks.iter().all(|c| c.passed) {
        report.healthy_ms = Some(healthy_clock.elapsed().as_millis() as u64);
    }
    Ok(())
}

/// Runs a check's `attempt` (given the time it may take; its exit code,
/// what to call no exit code, its output) until it exits 0 or time runs
/// out, a second apart: `None` once it passed, else what the last attempt
/// said (empty if none ran).
fn retried(
    deadline: Instant,
    cancel: &Cancel,
    mut attempt: impl FnMut(Duration) -> Result<(Option<i64>, &'static str, String)>,
) -> Result<Option<String>> {
    let mut detail = String::new();
    let mut attempts = 0;
    while let Some(left) = attempt_time(deadline, attempts) {
        cancel.check()?;
        attempts += 1;
        let (code, no_code, output) = attempt(left)?;
        if code == Some(0) {
            return Ok(None);
        }
        let status = code.map_or(no_code.to_string(), |c| format!("exit status {c}"));
        detail = format!("{status}: {output}");
        std::thread::sleep(Duration::from_secs(1).min(left));
    }
    Ok(Some(detail))
}

/// A check's line in the report, from what [`retried`] said.
fn check_result(
    service: &str,
    command: &str,
    failed: Option<String>,
    spec: &DrillSpec,
) -> CheckResult {
    CheckResult {
        service: service.to_string(),
        command: command.to_string(),
        passed: failed.is_none(),
        detail: match failed {
            None => String::new(),
            Some(d) if d.is_empty() => format!("no time left within {} s", spec.timeout.as_secs()),
            Some(d) => d,
        },
    }
}

/// How long the next attempt of a check may take: what is left of the
/// drill's time, and at least 10 s for its first attempt (a check that
/// never ran would report nothing); `None` once time is up.
fn attempt_time(deadline: Instant, attempts: u32) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    match (attempts, left.is_zero()) {
        (0, _) => Some(left.max(Duration::from_secs(10))),
        (_, true) => None,
        (_, false) => Some(left),
    }
}

/// Stores the report beside the backup (best effort: a read-only
/// repository can be drilled, it just cannot remember it).
pub fn store_report(at: &NotesAt, report: &DrillReport) {
    let written = serde_json::to_vec_pretty(report)
        .map_err(anyhow::Error::from)
        .and_then(|text| at.write(Note::Drill, &text));
    if let Err(e) = written {
        tracing::warn!("cannot store the drill report: {e:#}");
    }
}

/// The stored drill report of a backup, if it was drilled.
pub fn load_report(at: &NotesAt) -> Option<DrillReport> {
    serde_json::from_slice(&at.read(Note::Drill)?).ok()
}
