//! The snapshot strategy's steps, and the storage facts of a stack they
//! are planned from.

use super::{restart_steps, stop_step, Action, PlanOptions, Quiesce, Step};
use crate::discovery::{Container, Stack};
use crate::storage::{backend_for, detect, mountinfo, Runner, StorageInfo};
use anyhow::Result;
use std::path::Path;

/// Detects the storage of every volume of a stack.
pub fn detect_stack(
    run: &dyn Runner,
    stack: &Stack,
    cow_bytes: Option<u64>,
) -> Result<Vec<StorageInfo>> {
    let mounts = mountinfo::read()?;
    stack
        .volumes
        .iter()
        .map(|v| detect(run, &mounts, &v.host_path, cow_bytes))
        .collect()
}

/// Lays out the snapshot strategy: quiesce, flush, snapshot all, resume,
/// then per volume mount, archive, unmount, drop.
pub fn plan_snapshot_steps(
    stack: &Stack,
    storage: &[StorageInfo],
    options: &PlanOptions,
    running: &[&Container],
    steps: &mut Vec<Step>,
    archive: bool,
) {
    let label = "<label>".to_string();
    let is_running = |c: &&Container| running.iter().any(|r| r.info.id == c.info.id);
    match options.quiesce {
        Quiesce::Stop => steps.extend(
            stack
                .stop_order()
                .filter(is_running)
                .map(|c| stop_step(c, options)),
        ),
        Quiesce::Pause => steps.extend(stack.stop_order().filter(is_running).map(|c| {
            let target = (c.info.id.clone(), c.info.name.clone());
            Step::with_undo(
                Action::Pause {
                    container: target.0.clone(),
                    name: target.1.clone(),
                },
                Action::Unpause {
                    container: target.0,
                    name: target.1,
                },
            )
        })),
        Quiesce::None => {}
    }
    let mut flushed: Vec<&Path> = Vec::new();
    for info in storage {
        if !flushed.contains(&info.mount_point.as_path()) {
            flushed.push(&info.mount_point);
            steps.push(Step::new(Action::Flush {
                path: info.path.clone(),
            }));
        }
    }
    let all: Vec<usize> = (0..stack.volumes.len()).collect();
    steps.push(Step::new(Action::Snapshot {
        volumes: all.clone(),
        label: label.clone(),
    }));
    // The undos of the snapshot are pushed by the executor per volume as each
    // snapshot is taken, so a half-taken group is still cleaned up.
    for c in stack.containers.iter().filter(is_running) {
        let (container, name) = (c.info.id.clone(), c.info.name.clone());
        match options.quiesce {
            Quiesce::Stop => steps.extend(restart_steps(c, options)),
            Quiesce::Pause => steps.push(Step::discharging(Action::Unpause { container, name })),
            Quiesce::None => {}
        }
    }
    if !archive {
        return;
    }
    for (i, (volume, info)) in stack.volumes.iter().zip(storage).enumerate() {
        let needs_mount = backend_for(info).is_some_and(|b| b.needs_mount());
        if needs_mount {
            steps.push(Step::with_undo(
                Action::MountSnapshot {
                    volume: i,
                    label: label.clone(),
                },
                Action::Unmount {
                    volume: i,
                    label: label.clone(),
                },
            ));
        }
        steps.push(Step::new(Action::Archive {
            volume: i,
            name: volume.name.clone(),
            watch_changes: false,
        }));
        if needs_mount {
            steps.push(Step::discharging(Action::Unmount {
                volume: i,
                label: label.clone(),
            }));
        }
        // Volumes on one LV or dataset share its snapshot: drop it only
        // after the last of them is archived.
        let unit = |info: &StorageInfo| backend_for(info).map(|b| b.unit(info));
        let shared_later = storage[i + 1..]
            .iter()
            .any(|later| unit(later) == unit(info));
        if !shared_later {
            for (j, _) in storage[..=i]
                .iter()
                .enumerate()
                .filter(|(_, s)| unit(s) == unit(info))
            {
                steps.push(Step::discharging(Action::DropSnapshot {
                    volume: j,
                    label: label.clone(),
                }));
            }
        }
    }
}

/// Replaces the plan's label placeholder with the run's real label.
pub fn set_label(steps: &mut [Step], real: &str) {
    let fix = |action: &mut Action| match action {
        Action::Snapshot { label, .. }
        | Action::DropSnapshot { label, .. }
        | Action::MountSnapshot { label, .. }
        | Action::Unmount { label, .. } => *label = real.to_string(),
        _ => {}
    };
    for step in steps {
        fix(&mut step.action);
        if let Some(u) = step.undo.as_mut() {
            fix(u);
        }
        if let Some(d) = step.discharges.as_mut() {
            fix(d);
        }
    }
}
