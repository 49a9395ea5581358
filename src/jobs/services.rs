//! Stopping a stack's services around a change of their data (a restore,
//! a rollback) and starting them again: each with its own stop timeout,
//! dependents first; then dependencies first, each answering before the
//! next starts, with the application's after-restore steps in between.

use crate::discovery::Container;
use crate::docker::{ContainerInfo, Docker};
use crate::journal::Journal;
use crate::repo::manifest::ContainerRecord;
use crate::snapshots::start_undo;
use anyhow::Result;
use std::time::Duration;

/// Stops the running containers of `in_start_order`, dependents first,
/// each with `timeout` seconds or else its own stop timeout, journalling
/// each restart first. The containers stopped (in stop order), and the
/// error that ended the stopping early, if any.
pub(crate) fn stop_in_order<'c>(
    docker: &Docker,
    in_start_order: &'c [Container],
    timeout: Option<u32>,
    journal: &mut Journal,
) -> Result<(Vec<&'c Container>, Option<anyhow::Error>)> {
    let mut stopped = Vec::new();
    for c in in_start_order.iter().rev().filter(|c| c.info.running) {
        eprintln!("stopping {}", c.info.name);
        journal.push(&start_undo(c))?;
        let timeout = timeout
            .or(c.info.stop_timeout)
            .unwrap_or(crate::plan::DEFAULT_STOP_TIMEOUT_SECS);
        if let Err(e) = docker.stop(&c.info.id, timeout) {
            return Ok((stopped, Some(e)));
        }
        stopped.push(c);
    }
    Ok((stopped, None))
}

/// The containers that will run on the restored data with another image
/// than the backup recorded: an upgrade may have migrated the data, and
/// older data under a newer image (or the reverse) can break the service.
/// Also those whose compose configuration changed since (another config
/// hash), the other half of an upgrade.
pub fn image_changes(
    docker: &Docker,
    live: &[ContainerInfo],
    recorded: &[ContainerRecord],
    taken: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for c in live {
        if let Some((recorded, was)) = other_recorded_image(c, recorded) {
            out.push(format!(
                "{} runs image {} ({}), but {taken} was taken with {} ({}), which is {}: data written by one version may not work under another (an upgrade migrates metadata); roll the image back with the data if needed",
                c.name,
                crate::text::escape(&c.image),
                short_id(&c.image_id),
                crate::text::escape(&recorded.image),
                short_id(was),
                if docker.image_exists(was) {
                    "still on this host"
                } else {
                    "no longer on this host"
                }
            ));
        }
        let now = crate::discovery::own_label(c, CONFIG_HASH_LABEL);
        // Compose's hashes are 64 hex digits; nothing else is shown.
        let then = record_of(c, recorded)
            .and_then(|r| r.config_hash.as_deref())
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if let (Some(now), Some(then)) = (now, then) {
            if now != then {
                out.push(format!(
                    "the compose configuration of {} changed since {taken} was taken (its config hash was {}, is {})",
                    c.name,
                    &then[..12],
                    crate::text::escape(&now.chars().take(12).collect::<String>())
                ));
            }
        }
    }
    out
}

/// The label Compose gives a container: a digest of its service's
/// configuration.
const CONFIG_HASH_LABEL: &str = "com.docker.compose.config-hash";

/// The record of live container `c`: same compose service, else same name.
fn record_of<'r>(
    c: &ContainerInfo,
    recorded: &'r [ContainerRecord],
) -> Option<&'r ContainerRecord> {
    let service = crate::discovery::own_label(c, crate::discovery::SERVICE_LABEL);
    recorded.iter().find(|r| match (service, &r.service) {
        (Some(s), Some(rs)) => s == rs,
        _ => r.name == c.name,
    })
}

/// The record of live container `c` and the image id it recorded, when
/// that differs from the one `c` runs. Only an id of the form Docker gives
/// (`sha256:` and 64 hex digits) counts: it is the only part of a record
/// that goes to Docker.
pub(crate) fn other_recorded_image<'r>(
    c: &ContainerInfo,
    recorded: &'r [ContainerRecord],
) -> Option<(&'r ContainerRecord, &'r str)> {
    let record = record_of(c, recorded)?;
    let was = record.image_id.as_deref().filter(|id| {
        id.strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    })?;
    (was != c.image_id).then_some((record, was))
}

/// An image id as Docker shows it: 12 hex digits.
pub(crate) fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// Runs the `volsnap.after-restore` step `declared_by` (a live container)
/// declares, inside container `run_in` (itself, or its drill copy); what
/// went wrong, for people. No label: nothing to do.
pub(crate) fn after_restore_step(
    docker: &Docker,
    run_in: &str,
    declared_by: &ContainerInfo,
) -> std::result::Result<(), String> {
    use crate::docker::{AFTER_RESTORE_LABEL, AFTER_RESTORE_TIMEOUT_LABEL};
    let Some(command) = crate::discovery::own_label(declared_by, AFTER_RESTORE_LABEL) else {
        return Ok(());
    };
    let secs = crate::discovery::own_label(declared_by, AFTER_RESTORE_TIMEOUT_LABEL)
        .and_then(|t| t.parse().ok())
        .unwrap_or(60);
    match docker.exec(run_in, command, Duration::from_secs(secs)) {
        Ok(o) if o.exit_code == Some(0) => Ok(()),
        Ok(o) => Err(format!(
            "the after-restore step of {} ({AFTER_RESTORE_LABEL}) {}: {}",
            declared_by.name,
            o.exit_code
                .map_or(format!("ran out of its {secs} s"), |code| format!(
                    "exited with {code}"
                )),
            crate::text::escape(o.output.trim())
        )),
        Err(e) => Err(format!(
            "the after-restore step of {} could not run: {e:#}",
            declared_by.name
        )),
    }
}

/// Starts the containers a restore stopped, in start order, each once the
/// one before answers (healthy, and its `volsnap.ready` check passed).
/// After a restore (`restored`), a container's `volsnap.after-restore`
/// step runs in it once it has started and before its dependents start;
/// one that fails stops what was started and leaves the rest stopped: the
/// outer error names it. The inner list: containers that did not come
/// back, for the report.
pub(crate) fn start_again(
    docker: &Docker,
    in_order: &[&Container],
    restored: bool,
    ready: Duration,
    journal: &mut Journal,
) -> Result<std::result::Result<Vec<String>, String>> {
    use crate::docker::AFTER_RESTORE_LABEL;
    let mut errors = Vec::new();
    let mut started: Vec<&Container> = Vec::new();
    for (n, c) in in_order.iter().enumerate() {
        eprintln!("starting {}", c.info.name);
        if let Err(e) = docker.start(&c.info.id) {
            errors.push(format!("{e:#}"));
            continue;
        }
        journal.discharge(&start_undo(c))?;
        started.push(c);
        let answering = docker
            .wait_ready_settled(&c.info.id, &c.info.name, ready)
            .and_then(|()| docker.wait_answering(&c.info.id, &c.info.name, ready));
        let step = crate::discovery::own_label(&c.info, AFTER_RESTORE_LABEL).filter(|_| restored);
        let failure = match (answering, step) {
            (Err(e), Some(_)) => Some(format!(
                "{} did not answer, so its after-restore step could not run: {e:#}",
                c.info.name
            )),
            (Err(e), None) => {
                errors.push(format!("{e:#}"));
                None
            }
            (Ok(()), Some(_)) => {
                eprintln!("running the after-restore step of {}", c.info.name);
                after_restore_step(docker, &c.info.id, &c.info).err()
            }
            (Ok(()), None) => None,
        };
        if let Some(failure) = failure {
            for done in started.iter().rev() {
                let timeout = done
                    .info
                    .stop_timeout
                    .unwrap_or(crate::plan::DEFAULT_STOP_TIMEOUT_SECS);
                if let Err(e) = docker.stop(&done.info.id, timeout) {
                    tracing::warn!("cannot stop {} again: {e:#}", done.info.name);
                }
            }
            // Left stopped on purpose: nothing for recover to start.
            for rest in &in_order[n + 1..] {
                journal.discharge(&start_undo(rest))?;
            }
            return Ok(Err(failure));
        }
    }
    Ok(Ok(errors))
}
