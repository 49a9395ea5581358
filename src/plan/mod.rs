//! Plans as data: the ordered steps a backup runs, each with the step that
//! undoes it. `volsnap plan` prints a plan; the executor runs the same value.

pub mod estimate;
mod snapshot;

pub use snapshot::{detect_stack, set_label};

use crate::discovery::{Container, Stack};
use crate::fsutil::{human_bytes, human_secs};
use crate::repo::manifest::{Consistency, Strategy};
use crate::storage::{SnapshotSupport, StorageInfo};
use crate::usage;
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// What the user asked for with `--strategy`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RequestedStrategy {
    #[default]
    Auto,
    Cold,
    Online,
    Snapshot,
}

/// How services are held still for a snapshot.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Quiesce {
    /// Stop the containers (the safest: applications flush and exit).
    #[default]
    Stop,
    /// Freeze their processes with the cgroup freezer (`docker pause`).
    Pause,
    /// Leave them running: the snapshot is crash-consistent only.
    None,
}

/// What a container without a stop timeout of its own gets, unless the
/// operator or job sets one.
pub const DEFAULT_STOP_TIMEOUT_SECS: u32 = 30;

/// Settings that shape a plan.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub strategy: RequestedStrategy,
    pub quiesce: Quiesce,
    pub max_downtime: Option<Duration>,
    pub require_consistent: bool,
    /// Seconds each container gets to stop when the operator or job says;
    /// otherwise its own stop timeout, or [`DEFAULT_STOP_TIMEOUT_SECS`].
    pub stop_timeout_secs: Option<u32>,
    pub ready_timeout_secs: u32,
    /// This host's past backups, for downtime estimates.
    pub history: Vec<estimate::PastRun>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            strategy: RequestedStrategy::Auto,
            quiesce: Quiesce::Stop,
            max_downtime: None,
            require_consistent: false,
            stop_timeout_secs: None,
            ready_timeout_secs: 120,
            history: Vec::new(),
        }
    }
}

/// One side effect. Equal actions are the same effect: running an action
/// that is pending as an undo discharges that undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Create the hidden partial backup directory.
    Prepare,
    /// Remove the partial backup directory.
    RemovePartial,
    Stop {
        container: String,
        name: String,
        timeout_secs: u32,
    },
    Start {
        container: String,
        name: String,
    },
    WaitReady {
        container: String,
        name: String,
        timeout_secs: u32,
    },
    Pause {
        container: String,
        name: String,
    },
    Unpause {
        container: String,
        name: String,
    },
    /// syncfs(2) on the filesystem holding the path.
    Flush {
        path: PathBuf,
    },
    /// Snapshot every listed volume at once (one call where the backend
    /// allows, e.g. ZFS).
    Snapshot {
        volumes: Vec<usize>,
        label: String,
    },
    /// Drop one volume's snapshot.
    DropSnapshot {
        volume: usize,
        label: String,
    },
    /// Mount one volume's snapshot read-only.
    MountSnapshot {
        volume: usize,
        label: String,
    },
    Unmount {
        volume: usize,
        label: String,
    },
    /// Archive one volume (from its snapshot when one is mounted).
    Archive {
        volume: usize,
        name: String,
        watch_changes: bool,
    },
    /// Write manifest and SHA256SUMS, then give the backup its final name.
    Commit,
    /// An application hook from a container label (`volsnap.pre`,
    /// `volsnap.post`), run inside the container.
    Hook {
        container: String,
        name: String,
        phase: HookPhase,
        command: String,
        timeout_secs: u32,
        /// `volsnap.on-error=continue`: a failure is a warning only.
        continue_on_error: bool,
    },
}

/// When a container hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookPhase {
    /// Before any service is stopped or paused (and before an online archive).
    Pre,
    /// After the services are back (or after an online archive); also during
    /// cleanup when the backup fails after the container's pre hook ran.
    Post,
}

impl HookPhase {
    /// The container label that declares this hook.
    pub fn label(self) -> &'static str {
        match self {
            HookPhase::Pre => PRE_HOOK_LABEL,
            HookPhase::Post => POST_HOOK_LABEL,
        }
    }
}

/// Container labels that declare application hooks.
pub const PRE_HOOK_LABEL: &str = "volsnap.pre";
pub const POST_HOOK_LABEL: &str = "volsnap.post";
pub const HOOK_TIMEOUT_LABEL: &str = "volsnap.timeout";
pub const HOOK_ON_ERROR_LABEL: &str = "volsnap.on-error";
/// Seconds a hook may run when `volsnap.timeout` does not say.
pub const DEFAULT_HOOK_TIMEOUT_SECS: u32 = 60;

impl Action {
    /// The stable step name, used by `plan`, logs and (later) hooks.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Prepare => "prepare",
            Action::RemovePartial => "remove-partial",
            Action::Stop { .. } => "stop",
            Action::Start { .. } => "start",
            Action::WaitReady { .. } => "wait-ready",
            Action::Pause { .. } => "pause",
            Action::Unpause { .. } => "unpause",
            Action::Flush { .. } => "flush",
            Action::Snapshot { .. } => "snapshot",
            Action::DropSnapshot { .. } => "drop-snapshot",
            Action::MountSnapshot { .. } => "mount-snapshot",
            Action::Unmount { .. } => "unmount",
            Action::Archive { .. } => "archive",
            Action::Commit => "commit",
            Action::Hook {
                phase: HookPhase::Pre,
                ..
            } => "pre-hook",
            Action::Hook {
                phase: HookPhase::Post,
                ..
            } => "post-hook",
        }
    }

    /// Whether this action takes services down (its undo brings them back).
    pub fn is_service_down(&self) -> bool {
        matches!(self, Action::Stop { .. } | Action::Pause { .. })
    }

    /// Whether this action brings a service back.
    pub fn is_service_up(&self) -> bool {
        matches!(self, Action::Start { .. } | Action::Unpause { .. })
    }

    /// One line for people.
    /// One line for people, for a repository of format 2 (`chunked`) or 1.
    pub fn describe_for(&self, stack: &Stack, chunked: bool) -> String {
        match (self, chunked) {
            (Action::Prepare, true) => {
                "take a shared lock on the repository and open the backup (nothing is visible until its commit)".into()
            }
            (Action::RemovePartial, true) => {
                "drop the unfinished backup and release its lock (its packs stay for prune)".into()
            }
            (Action::Commit, true) => {
                "write the index, check the packs it relies on, then the signed commit object: from then on the backup exists".into()
            }
            _ => self.describe(stack),
        }
    }

    /// One line for people (format 1's wording of the repository steps).
    pub fn describe(&self, stack: &Stack) -> String {
        let vol = |i: &usize| {
            stack
                .volumes
                .get(*i)
                .map_or("?".to_string(), |v| v.name.clone())
        };
        match self {
            Action::Prepare => "create the partial backup directory".into(),
            Action::RemovePartial => "remove the partial backup directory".into(),
            Action::Stop {
                name, timeout_secs, ..
            } => format!("stop {name} (graceful, {timeout_secs} s timeout)"),
            Action::Start { name, .. } => format!("start {name}"),
            Action::WaitReady {
                name, timeout_secs, ..
            } => {
                format!("wait until {name} runs (and is healthy, if it has a healthcheck; {timeout_secs} s at most)")
            }
            Action::Pause { name, .. } => format!("pause {name} (cgroup freezer)"),
            Action::Unpause { name, .. } => format!("unpause {name}"),
            Action::Flush { path } => {
                format!("flush the filesystem holding {} (syncfs)", path.display())
            }
            Action::Snapshot { volumes, label } => {
                let names: Vec<String> = volumes.iter().map(vol).collect();
                format!("snapshot {} as {label}", names.join(", "))
            }
            Action::DropSnapshot { volume, label } => {
                format!("drop snapshot {label} of {}", vol(volume))
            }
            Action::MountSnapshot { volume, label } => {
                format!("mount snapshot {label} of {} read-only", vol(volume))
            }
            Action::Unmount { volume, label } => {
                format!("unmount snapshot {label} of {}", vol(volume))
            }
            Action::Archive {
                volume,
                watch_changes,
                ..
            } => {
                let v = &stack.volumes[*volume];
                let from = if *watch_changes {
                    ", watching for changes"
                } else {
                    ""
                };
                let size = if stack.measured {
                    format!("{}, ", human_bytes(v.bytes))
                } else {
                    String::new()
                };
                format!("archive {} ({size}{}{from})", v.name, v.host_path.display())
            }
            Action::Commit => {
                "write manifest.json and SHA256SUMS, then rename the backup into place".into()
            }
            Action::Hook {
                name,
                phase,
                timeout_secs,
                continue_on_error,
                ..
            } => format!(
                "run the {} hook of {name} ({timeout_secs} s at most{})",
                phase.label(),
                if *continue_on_error {
                    ", failure tolerated"
                } else {
                    ""
                }
            ),
        }
    }
}

/// A step: an action, the action that undoes it, and the pending undo it
/// discharges when it succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undo: Option<Action>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discharges: Option<Action>,
}

impl Step {
    pub fn new(action: Action) -> Step {
        Step {
            action,
            undo: None,
            discharges: None,
        }
    }

    pub fn with_undo(action: Action, undo: Action) -> Step {
        Step {
            action,
            undo: Some(undo),
            discharges: None,
        }
    }

    pub fn discharging(action: Action) -> Step {
        Step {
            discharges: Some(action.clone()),
            action,
            undo: None,
        }
    }
}

/// A backup plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub strategy: Strategy,
    pub consistency: Consistency,
    pub quiesce: Option<Quiesce>,
    /// Why this strategy.
    pub reason: String,
    pub estimated_downtime_ms: u64,
    /// Where the estimate comes from (history, rates, defaults).
    pub estimate_source: String,
    pub steps: Vec<Step>,
}

/// Containers a cold backup or a stopping snapshot takes down.
fn to_take_down(stack: &Stack) -> u64 {
    stack
        .containers
        .iter()
        .filter(|c| c.info.running && !c.info.paused)
        .count() as u64
}

/// The downtime `strategy` would cost this stack, from this host's history.
pub fn estimate_downtime(
    stack: &Stack,
    strategy: Strategy,
    options: &PlanOptions,
) -> estimate::Estimate {
    let shape = estimate::Shape {
        strategy,
        quiesce: (strategy == Strategy::Snapshot).then_some(options.quiesce),
        containers: to_take_down(stack),
        stack,
    };
    estimate::downtime(&shape, &options.history)
}

/// Volumes that cannot be snapshotted, each with the reason.
pub fn snapshot_blockers(stack: &Stack, storage: &[StorageInfo]) -> Vec<String> {
    stack
        .volumes
        .iter()
        .zip(storage)
        .filter_map(|(v, s)| match &s.support {
            SnapshotSupport::Yes => None,
            SnapshotSupport::No(why) => Some(format!("{}: {why}", v.name)),
        })
        .collect()
}

/// Picks the strategy and says why.
pub fn choose_strategy(
    stack: &Stack,
    storage: &[StorageInfo],
    options: &PlanOptions,
) -> Result<(Strategy, String)> {
    let snapshot_blockers = snapshot_blockers(stack, storage);
    match options.strategy {
        RequestedStrategy::Cold => {
            return Ok((Strategy::Cold, "requested with --strategy cold".into()))
        }
        RequestedStrategy::Online => {
            return Ok((Strategy::Online, "requested with --strategy online".into()))
        }
        RequestedStrategy::Snapshot => {
            if snapshot_blockers.is_empty() {
                return Ok((
                    Strategy::Snapshot,
                    "requested with --strategy snapshot".into(),
                ));
            }
            return Err(usage!(
                "--strategy snapshot needs every volume on LVM, ZFS or btrfs; not so for {}. Use --strategy cold (consistent, with downtime) or online",
                snapshot_blockers.join("; ")
            ));
        }
        RequestedStrategy::Auto => {}
    }
    if snapshot_blockers.is_empty() {
        return Ok((
            Strategy::Snapshot,
            "auto: every volume sits on storage that can snapshot, so downtime does not grow with the data".into(),
        ));
    }
    let no_snapshot = format!("no snapshot ({})", snapshot_blockers.join("; "));
    let estimate = estimate_downtime(stack, Strategy::Cold, options);
    match options.max_downtime {
        Some(budget) if Duration::from_millis(estimate.ms) > budget => {
            if options.require_consistent {
                Err(usage!(
                    "a consistent backup needs about {} of downtime (cold: {} to archive; {}), over the --max-downtime budget of {} s, and {no_snapshot}. Raise --max-downtime, or drop --require-consistent to accept an online (best-effort) backup",
                    human_secs(estimate.ms),
                    human_bytes(stack.total_bytes()),
                    estimate.source,
                    budget.as_secs()
                ))
            } else {
                Ok((
                    Strategy::Online,
                    format!(
                        "auto: {no_snapshot}; cold would take about {} of downtime ({}), over the {} s budget, so online (best-effort)",
                        human_secs(estimate.ms),
                        estimate.source,
                        budget.as_secs()
                    ),
                ))
            }
        }
        _ => Ok((
            Strategy::Cold,
            format!("auto: {no_snapshot}; cold is consistent"),
        )),
    }
}

/// The seconds `c` gets to stop: the operator's or job's setting, else its
/// own stop timeout (compose's `stop_grace_period`), else volsnap's default.
pub fn stop_timeout(c: &Container, options: &PlanOptions) -> u32 {
    options
        .stop_timeout_secs
        .or(c.info.stop_timeout)
        .unwrap_or(DEFAULT_STOP_TIMEOUT_SECS)
}

/// Stop a container gracefully; its undo starts it again.
pub fn stop_step(c: &Container, options: &PlanOptions) -> Step {
    Step::with_undo(
        Action::Stop {
            container: c.info.id.clone(),
            name: c.info.name.clone(),
            timeout_secs: stop_timeout(c, options),
        },
        Action::Start {
            container: c.info.id.clone(),
            name: c.info.name.clone(),
        },
    )
}

/// Start a stopped container (discharging the pending start) and wait
/// until it runs and is healthy.
pub fn restart_steps(c: &Container, options: &PlanOptions) -> [Step; 2] {
    [
        Step::discharging(Action::Start {
            container: c.info.id.clone(),
            name: c.info.name.clone(),
        }),
        Step::new(Action::WaitReady {
            container: c.info.id.clone(),
            name: c.info.name.clone(),
            timeout_secs: options.ready_timeout_secs,
        }),
    ]
}

/// Builds the plan for a stack.
pub fn build(stack: &Stack, storage: &[StorageInfo], options: &PlanOptions) -> Result<Plan> {
    if stack.volumes.is_empty() {
        return Err(usage!(
            "nothing to back up: the selected containers ({}) have no volumes or bind-mounted directories",
            stack.containers.iter().map(|c| c.info.name.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    let (strategy, reason) = choose_strategy(stack, storage, options)?;
    let mut steps = vec![Step::with_undo(Action::Prepare, Action::RemovePartial)];
    let running: Vec<_> = stack
        .containers
        .iter()
        .filter(|c| c.info.running && !c.info.paused)
        .collect();
    let stop = |c: &Container| stop_step(c, options);
    let start = |c: &Container| restart_steps(c, options);
    let archive = |watch_changes: bool| {
        stack.volumes.iter().enumerate().map(move |(i, v)| {
            Step::new(Action::Archive {
                volume: i,
                name: v.name.clone(),
                watch_changes,
            })
        })
    };
    let flush = || {
        let mut paths: Vec<PathBuf> = stack.volumes.iter().map(|v| v.host_path.clone()).collect();
        paths.dedup();
        paths
            .into_iter()
            .map(|path| Step::new(Action::Flush { path }))
    };
    let mut quiesce = None;
    let consistency;
    let estimate = estimate_downtime(stack, strategy, options);
    match strategy {
        Strategy::Cold => {
            consistency = Consistency::Consistent;
            steps.extend(stack.stop_order().filter(|c| running.contains(c)).map(stop));
            steps.extend(flush());
            steps.extend(archive(true));
            steps.extend(
                stack
                    .containers
                    .iter()
                    .filter(|c| running.contains(c))
                    .flat_map(start),
            );
        }
        Strategy::Online => {
            consistency = Consistency::BestEffort;
            steps.extend(archive(true));
        }
        Strategy::Snapshot => {
            quiesce = Some(options.quiesce);
            consistency = if options.quiesce == Quiesce::None {
                Consistency::BestEffort
            } else {
                Consistency::Consistent
            };
            snapshot::plan_snapshot_steps(stack, storage, options, &running, &mut steps, true);
        }
    }
    add_hooks(&running, &mut steps, 1)?;
    steps.push(Step::discharging(Action::Commit));
    if let Some(last) = steps.last_mut() {
        last.discharges = Some(Action::RemovePartial);
    }
    Ok(Plan {
        strategy,
        consistency,
        quiesce,
        reason,
        estimated_downtime_ms: estimate.ms,
        estimate_source: estimate.source,
        steps,
    })
}

/// The plan of `volsnap snapshot`: quiesce, flush, snapshot, resume. The
/// snapshots are kept (for a rollback), so there is no archive and no drop.
pub fn build_keep_snapshot(
    stack: &Stack,
    storage: &[StorageInfo],
    options: &PlanOptions,
) -> Result<Plan> {
    if stack.volumes.is_empty() {
        return Err(usage!(
            "nothing to snapshot: the selected containers have no volumes"
        ));
    }
    let blockers = snapshot_blockers(stack, storage);
    if !blockers.is_empty() {
        return Err(usage!(
            "cannot snapshot: {}. Pre-upgrade snapshots need every volume on LVM, ZFS or btrfs; take a backup instead (volsnap backup)",
            blockers.join("; ")
        ));
    }
    let running: Vec<_> = stack
        .containers
        .iter()
        .filter(|c| c.info.running && !c.info.paused)
        .collect();
    let mut steps = Vec::new();
    snapshot::plan_snapshot_steps(stack, storage, options, &running, &mut steps, false);
    add_hooks(&running, &mut steps, 0)?;
    Ok(Plan {
        strategy: Strategy::Snapshot,
        consistency: if options.quiesce == Quiesce::None {
            Consistency::BestEffort
        } else {
            Consistency::Consistent
        },
        quiesce: Some(options.quiesce),
        reason: "snapshots kept for rollback".into(),
        estimated_downtime_ms: 0,
        estimate_source: String::new(),
        steps,
    })
}

/// A container's hook for `phase`, from its labels.
fn hook_of(c: &Container, phase: HookPhase) -> Result<Option<Action>> {
    let Some(command) = c
        .info
        .labels
        .get(phase.label())
        .filter(|c| !c.trim().is_empty())
    else {
        return Ok(None);
    };
    let name = &c.info.name;
    let timeout_secs = match c.info.labels.get(HOOK_TIMEOUT_LABEL) {
        None => DEFAULT_HOOK_TIMEOUT_SECS,
        Some(t) => t.trim().parse().ok().filter(|t| *t > 0).ok_or_else(|| {
            usage!("container {name}: label {HOOK_TIMEOUT_LABEL}={t:?} is not a number of seconds")
        })?,
    };
    let continue_on_error = match c.info.labels.get(HOOK_ON_ERROR_LABEL).map(|v| v.trim()) {
        None | Some("fail") => false,
        Some("continue") => true,
        Some(other) => {
            return Err(usage!(
                "container {name}: label {HOOK_ON_ERROR_LABEL}={other:?} must be fail or continue"
            ))
        }
    };
    Ok(Some(Action::Hook {
        container: c.info.id.clone(),
        name: name.clone(),
        phase,
        command: command.clone(),
        timeout_secs,
        continue_on_error,
    }))
}

/// Adds the running containers' label hooks: pre hooks at `pre_at` (before
/// anything is quiesced), dependents first as for stopping; post hooks once
/// the services are back (after the last start, wait or unpause; after the
/// archives when nothing was quiesced), dependencies first. A post hook is
/// also the undo of its container's pre hook, so it runs on failure too.
fn add_hooks(running: &[&Container], steps: &mut Vec<Step>, pre_at: usize) -> Result<()> {
    let mut pre = Vec::new();
    let mut post = Vec::new();
    for c in running.iter().rev() {
        let post_hook = hook_of(c, HookPhase::Post)?;
        if let Some(hook) = hook_of(c, HookPhase::Pre)? {
            pre.push(match &post_hook {
                Some(undo) => Step::with_undo(hook, undo.clone()),
                None => Step::new(hook),
            });
        }
        if let Some(hook) = post_hook {
            post.push(Step::discharging(hook));
        }
    }
    post.reverse();
    let resumed = steps.iter().rposition(|s| {
        matches!(
            s.action,
            Action::Start { .. } | Action::WaitReady { .. } | Action::Unpause { .. }
        )
    });
    let archived = steps
        .iter()
        .rposition(|s| matches!(s.action, Action::Archive { .. }));
    let post_at = resumed.or(archived).map_or(steps.len(), |i| i + 1);
    steps.splice(post_at..post_at, post);
    steps.splice(pre_at..pre_at, pre);
    Ok(())
}
