//! The executor: runs a plan's steps in order with a cleanup stack.
//!
//! Before each side effect its undo is pushed on the stack; a step that
//! succeeds discharges the undo it completes (a start discharges the pending
//! start of the same container). When a step fails, the run is interrupted,
//! or a step panics, the pending undos run newest first: services come back
//! in dependency order, snapshots are unmounted and dropped, and the partial
//! backup is removed. Cleanup keeps going past its own failures and reports
//! them all.

use crate::archive::chunked::{ChunkedBackup, ChunkedOptions};
use crate::archive::{write_archive, ArchiveOptions, ArchiveSummary};
use crate::cancel::Cancel;
use crate::discovery::{ComposeIdentity, Stack};
use crate::docker::{DaemonUnreachable, Docker, Settle};
use crate::journal::{Journal, Undo};
use crate::plan::{Action, HookPhase, Plan, Step};
use crate::repo::manifest::{
    render_sums, Consistency, ContainerRecord, Manifest, Strategy, VolumeRecord, FORMAT_VERSION,
    MANIFEST_FILE, SUMS_FILE,
};
use crate::repo::Repo;
use crate::storage::{backend_for, mount_dir, Runner, StorageInfo};
use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Progress and events, so the library never writes to the terminal.
pub trait Observer {
    fn step_started(&self, _step: &Step, _description: &str) {}
    fn step_finished(&self, _step: &Step, _elapsed: Duration) {}
    /// An archive of `total` bytes of content is starting.
    fn archive_started(&self, _volume: &str, _total: u64) {}
    /// `n` more content bytes were read (or, unchanged, taken as they were).
    fn bytes_read(&self, _n: u64) {}
    /// The services went down (`Some`: since when) or are all up again.
    fn services_down(&self, _since: Option<Instant>) {}
    fn archive_finished(&self) {}
    fn warning(&self, _message: &str) {}
}

/// An observer that only logs.
pub struct LogObserver;

impl Observer for LogObserver {
    fn warning(&self, message: &str) {
        tracing::warn!("{message}");
    }
}

/// Where a backup goes: a format-1 directory of tar archives, or a
/// format-2 repository of chunks.
pub enum Destination {
    Tar(Repo),
    Chunked {
        repo: Arc<crate::repo::v2::Repository>,
        options: ChunkedOptions,
    },
}

impl Destination {
    /// Where the repository is, for messages.
    pub fn location(&self) -> String {
        match self {
            Destination::Tar(repo) => repo.root().display().to_string(),
            Destination::Chunked { repo, .. } => repo.backend().location(),
        }
    }
}

/// Everything a run needs. `repo` is `None` for plans that write no
/// backup (snapshots kept for rollback).
pub struct Job<'a> {
    pub docker: &'a Docker,
    pub runner: &'a dyn Runner,
    pub stack: &'a Stack,
    pub storage: &'a [StorageInfo],
    pub plan: &'a Plan,
    pub repo: Option<&'a Destination>,
    pub id: String,
    /// The host the backup is recorded as from (`--host`, else the hostname).
    pub host: String,
    pub archive: ArchiveOptions,
    pub cancel: &'a Cancel,
    pub observer: &'a dyn Observer,
}

impl Job<'_> {
    /// Whether it writes into a format-2 repository.
    fn chunked(&self) -> bool {
        matches!(self.repo, Some(Destination::Chunked { .. }))
    }
}

/// What a finished run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The backup written, when the plan had a commit step.
    pub backup: Option<(Manifest, PathBuf)>,
    pub downtime_ms: u64,
    /// The part of the downtime spent archiving.
    pub archive_down_ms: u64,
    /// Format 2: content taken unread from the parent backup.
    pub reused_bytes: Option<u64>,
    /// Problems that did not void the backup: a service that did not come
    /// back healthy, say. The command still exits 1 when there are any.
    pub problems: Vec<String>,
}

struct Run<'a> {
    job: &'a Job<'a>,
    started_at: DateTime<Utc>,
    started: Instant,
    cleanup: Vec<Action>,
    archives: Vec<Option<ArchiveSummary>>,
    /// Where each volume is read from, once its snapshot is readable.
    read_from: HashMap<usize, PathBuf>,
    down_since: Option<Instant>,
    downtime: Duration,
    archive_down: Duration,
    reused_bytes: u64,
    problems: Vec<String>,
    /// Undos that could not run because the Docker daemon never answered:
    /// they stay in the journal for `volsnap recover`.
    left_for_recover: Vec<Action>,
    /// Restarted containers without a healthcheck, confirmed still up at
    /// the end of the run.
    settles: Vec<Settle>,
    /// How each container stopped (by container id).
    stops: HashMap<String, crate::repo::manifest::StopRecord>,
    /// When each container was started again, and the milliseconds until
    /// it answered (healthy, and its `volsnap.ready` check passed).
    restarted: HashMap<String, Instant>,
    answered: HashMap<String, u64>,
    committed: Option<(Manifest, PathBuf)>,
    snapshot_label: Option<String>,
    /// The format-2 backup being written (from `Prepare` to `Commit`).
    chunked: Option<ChunkedBackup>,
    journal: Option<Journal>,
}

/// Runs a plan. On failure everything is undone and the error says
/// what failed and what the cleanup could not do.
///
/// With a journal, every undo is recorded before its effect; the journal is
/// deleted when the run ends with nothing left to undo, and kept (for
/// `volsnap recover`) when cleanup failed.
pub fn run_plan(job: &Job<'_>, journal: Option<Journal>) -> Result<Outcome> {
    let mut run = Run {
        job,
        started_at: Utc::now(),
        started: Instant::now(),
        cleanup: Vec::new(),
        archives: (0..job.stack.volumes.len()).map(|_| None).collect(),
        read_from: HashMap::new(),
        down_since: None,
        downtime: Duration::ZERO,
        archive_down: Duration::ZERO,
        reused_bytes: 0,
        problems: Vec::new(),
        left_for_recover: Vec::new(),
        settles: Vec::new(),
        stops: HashMap::new(),
        restarted: HashMap::new(),
        answered: HashMap::new(),
        committed: None,
        snapshot_label: None,
        chunked: None,
        journal,
    };
    let result = run.steps();
    if let Err(err) = result {
        let cleanup_errors = run.unwind();
        if cleanup_errors.is_empty() {
            run.finish_journal();
            return Err(err.context(
                "everything was undone (services restarted, snapshots and partial output removed)",
            ));
        }
        return Err(err.context(format!(
            "cleanup could not undo everything (the journal is kept: 'volsnap recover' retries) — act on these by hand if it cannot: {}",
            cleanup_errors.join("; ")
        )));
    }
    if run.left_for_recover.is_empty() {
        run.finish_journal();
    } else {
        // Only the starts the daemon never answered stay in the journal;
        // anything else still pending was kept on purpose (kept snapshots).
        for undo in std::mem::take(&mut run.cleanup) {
            if !run.left_for_recover.contains(&undo) {
                run.journal_discharge(&undo);
            }
        }
        let pending: Vec<String> = run
            .left_for_recover
            .iter()
            .map(|undo| undo.describe_for(job.stack, job.chunked()))
            .collect();
        run.problems.push(format!(
            "not done, kept in the journal for 'volsnap recover' (the next run also retries): {}",
            pending.join(", ")
        ));
    }
    if let Some(since) = run.down_since.take() {
        run.downtime += since.elapsed();
    }
    Ok(Outcome {
        backup: run.committed.take(),
        downtime_ms: run.downtime.as_millis() as u64,
        archive_down_ms: run.archive_down.as_millis() as u64,
        reused_bytes: matches!(job.repo, Some(Destination::Chunked { .. }))
            .then_some(run.reused_bytes),
        problems: run.problems,
    })
}

impl<'a> Run<'a> {
    fn steps(&mut self) -> Result<()> {
        let job = self.job;
        #[allow(unused_variables)]
        for (index, step) in job.plan.steps.iter().enumerate() {
            job.cancel.check()?;
            let description = step.action.describe_for(job.stack, job.chunked());
            job.observer.step_started(step, &description);
            let begun = Instant::now();
            #[cfg(feature = "fault-injection")]
            crate::fault::before_step(index + 1, step.action.name());
            if let Some(undo) = &step.undo {
                self.push_undo(undo.clone())?;
            }
            if step.action.is_service_down() && self.down_since.is_none() {
                self.down_since = Some(begun);
                job.observer.services_down(Some(begun));
            }
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.apply(&step.action)))
                    .unwrap_or_else(|panic| {
                        Err(anyhow!(
                            "internal error (panic) in step {}: {}",
                            step.action.name(),
                            panic_text(&panic)
                        ))
                    });
            let mut undone = true;
            match outcome {
                Ok(()) => {}
                // A service that will not come back does not void the
                // backup: note it, keep going, exit 1 at the end.
                Err(e)
                    if matches!(
                        step.action,
                        Action::Start { .. }
                            | Action::WaitReady { .. }
                            | Action::Hook {
                                phase: HookPhase::Post,
                                ..
                            }
                    ) =>
                {
                    let message = format!("{description}: {e:#}");
                    job.observer.warning(&message);
                    self.problems.push(message);
                    // Nobody answered: the start stays in the journal for
                    // `volsnap recover` instead of being forgotten.
                    undone = e.downcast_ref::<DaemonUnreachable>().is_none();
                }
                Err(e) => {
                    return Err(e.context(format!("step {} ({description})", step.action.name())))
                }
            }
            if let (false, Some(done)) = (undone, &step.discharges) {
                self.left_for_recover.push(done.clone());
            }
            if let Some(done) = step.discharges.as_ref().filter(|_| undone) {
                if let Some(pos) = self.cleanup.iter().rposition(|a| a == done) {
                    let done = self.cleanup.remove(pos);
                    self.journal_discharge(&done);
                }
            }
            if matches!(step.action, Action::Archive { .. }) && self.down_since.is_some() {
                self.archive_down += begun.elapsed();
            }
            self.note_service_up(&step.action);
            job.observer.step_finished(step, begun.elapsed());
        }
        for settle in std::mem::take(&mut self.settles) {
            if let Err(e) = settle.confirm(job.docker) {
                let message = format!("{e:#}");
                job.observer.warning(&message);
                self.problems.push(message);
            }
        }
        Ok(())
    }

    /// Ends the downtime window once nothing taken down is still pending.
    fn note_service_up(&mut self, action: &Action) {
        if action.is_service_up() && !self.cleanup.iter().any(Action::is_service_up) {
            if let Some(since) = self.down_since.take() {
                self.downtime += since.elapsed();
                self.job.observer.services_down(None);
            }
        }
    }

    fn apply(&mut self, action: &Action) -> Result<()> {
        let job = self.job;
        let docker = job.docker;
        match action {
            Action::Prepare => match self.destination()? {
                Destination::Tar(repo) => {
                    crate::fsutil::create_private_dir(&repo.partial_dir(&job.id))
                }
                Destination::Chunked { repo, options } => {
                    self.chunked = Some(ChunkedBackup::begin(
                        repo.clone(),
                        // and the stack's definition, last
                        job.stack.volumes.len() + 1,
                        &job.host,
                        &format!("backup {}", job.id),
                        options,
                    )?);
                    Ok(())
                }
            },
            Action::RemovePartial => {
                // A format-2 backup leaves only unreferenced objects behind
                // (prune removes them); dropping it releases its lock.
                self.chunked = None;
                let Destination::Tar(repo) = self.destination()? else {
                    return Ok(());
                };
                let dir = repo.partial_dir(&job.id);
                match std::fs::remove_dir_all(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e)
                        .with_context(|| format!("cannot remove partial backup {}", dir.display())),
                    _ => Ok(()),
                }
            }
            Action::Stop {
                container,
                timeout_secs,
                ..
            } => {
                let clock = Instant::now();
                docker.stop(container, *timeout_secs)?;
                let took = clock.elapsed();
                if let Some(info) = docker.inspect_container(container)? {
                    // 137 is SIGKILL: at the timeout, Docker's kill.
                    let killed = info.exit_code == 137
                        && took.as_secs_f64() + 0.5 >= f64::from(*timeout_secs);
                    self.stops.insert(
                        container.clone(),
                        crate::repo::manifest::StopRecord {
                            timeout_secs: *timeout_secs,
                            took_ms: took.as_millis() as u64,
                            exit_code: info.exit_code,
                            killed,
                        },
                    );
                }
                Ok(())
            }
            Action::Start { container, name } => {
                self.restarted.insert(container.clone(), Instant::now());
                docker.start(&self.current_container(container, name)?)
            }
            Action::WaitReady {
                container,
                name,
                timeout_secs,
            } => {
                let current = self.current_container(container, name)?;
                let limit = Duration::from_secs((*timeout_secs).into());
                let settle = docker.wait_ready(&current, name, limit)?;
                docker.wait_answering(&current, name, limit)?;
                if let Some(started) = self.restarted.get(container) {
                    self.answered
                        .insert(container.clone(), started.elapsed().as_millis() as u64);
                }
                self.settles.extend(settle);
                Ok(())
            }
            Action::Hook {
                container,
                name,
                phase,
                command,
                timeout_secs,
                continue_on_error,
            } => {
                let result = run_hook(docker, container, command, *timeout_secs)
                    .with_context(|| format!("the {} hook of {name} failed", phase.label()));
                match result {
                    Err(e) if *continue_on_error => {
                        job.observer
                            .warning(&format!("{e:#} (volsnap.on-error=continue: going on)"));
                        Ok(())
                    }
                    other => other,
                }
            }
            Action::Pause { container, .. } => docker.pause(container),
            Action::Unpause { container, .. } => docker.unpause(container),
            Action::Flush { path } => crate::fsutil::syncfs(path),
            Action::Snapshot { volumes, label } => self.snapshot(volumes, label),
            Action::MountSnapshot { volume, label } => {
                let info = &job.storage[*volume];
                let backend = backend_for(info).context("internal error: no snapshot backend")?;
                let dir = mount_dir(label, *volume);
                backend.mount(job.runner, info, label, &dir)?;
                self.read_from
                    .insert(*volume, backend.read_path(info, label, &dir));
                Ok(())
            }
            Action::Unmount { volume, label } => {
                let dir = mount_dir(label, *volume);
                if crate::storage::mountinfo::read()?
                    .iter()
                    .any(|m| m.mount_point == dir)
                {
                    job.runner.run("umount", &[dir.display().to_string()])?;
                }
                let _ = std::fs::remove_dir(&dir);
                let _ = std::fs::remove_dir(dir.parent().unwrap_or(&dir));
                Ok(())
            }
            Action::DropSnapshot { volume, label } => {
                let info = &job.storage[*volume];
                backend_for(info)
                    .context("internal error: no snapshot backend")?
                    .drop_snapshot(job.runner, info, label)
            }
            Action::Archive {
                volume,
                watch_changes,
                ..
            } => self.archive(*volume, *watch_changes),
            Action::Commit => self.commit(),
        }
    }

    /// Records an undo (journal first, then the in-memory stack).
    /// The container to start: the one stopped, or what compose recreated
    /// for the same service meanwhile.
    fn current_container(&self, id: &str, name: &str) -> Result<String> {
        let identity = self.compose_identity(id);
        crate::discovery::current_container(self.job.docker, id, identity.as_ref())?.with_context(
            || format!("container {name} was removed during the run and nothing replaced it"),
        )
    }

    fn compose_identity(&self, id: &str) -> Option<ComposeIdentity> {
        let container = self.job.stack.containers.iter().find(|c| c.info.id == id)?;
        ComposeIdentity::of(&container.info.labels)
    }

    fn push_undo(&mut self, undo: Action) -> Result<()> {
        let record = self.undo_record(&undo);
        if let (Some(journal), Some(record)) = (self.journal.as_mut(), record) {
            journal
                .push(&record)
                .context("cannot record the undo in the journal; nothing was changed")?;
        }
        self.cleanup.push(undo);
        Ok(())
    }

    fn journal_discharge(&mut self, undo: &Action) {
        let record = self.undo_record(undo);
        if let (Some(record), Some(journal)) = (record, self.journal.as_mut()) {
            if let Err(e) = journal.discharge(&record) {
                // Harmless: replaying a completed undo is a no-op.
                tracing::warn!("{e:#}");
            }
        }
    }

    fn finish_journal(&mut self) {
        if let Some(journal) = self.journal.take() {
            if let Err(e) = journal.finish() {
                tracing::warn!("{e:#}");
            }
        }
    }

    /// The self-contained journal form of an undo.
    fn undo_record(&self, undo: &Action) -> Option<Undo> {
        let job = self.job;
        Some(match undo {
            // A post hook left undone by a killed run is not replayed later:
            // the application's state has moved on by then.
            Action::Hook { .. } => return None,
            Action::Start { container, name } => Undo::StartContainer {
                id: container.clone(),
                name: name.clone(),
                compose: self.compose_identity(container),
            },
            Action::Unpause { container, name } => Undo::Unpause {
                id: container.clone(),
                name: name.clone(),
            },
            Action::Unmount { volume, label } => Undo::Unmount {
                dir: mount_dir(label, *volume),
            },
            Action::DropSnapshot { volume, label } => Undo::DropSnapshot {
                storage: job.storage.get(*volume)?.clone(),
                label: label.clone(),
            },
            Action::RemovePartial => match job.repo? {
                Destination::Tar(repo) => Undo::RemoveDir {
                    path: repo.partial_dir(&job.id),
                },
                Destination::Chunked { .. } => return None,
            },
            _ => return None,
        })
    }

    fn destination(&self) -> Result<&'a Destination> {
        self.job
            .repo
            .context("internal error: this plan writes a backup but no repository was given")
    }

    fn snapshot(&mut self, volumes: &[usize], label: &str) -> Result<()> {
        let job = self.job;
        self.snapshot_label = Some(label.to_string());
        // Record every drop before taking any snapshot: a half-taken group
        // is cleaned up too (drops are no-ops for snapshots never taken).
        for &v in volumes {
            self.push_undo(Action::DropSnapshot {
                volume: v,
                label: label.to_string(),
            })?;
        }
        // Group by backend kind, one call per group (ZFS: one atomic call).
        let mut groups: Vec<(&'static str, Vec<usize>)> = Vec::new();
        for &v in volumes {
            let kind = job.storage[v].backend_name();
            match groups.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, members)) => members.push(v),
                None => groups.push((kind, vec![v])),
            }
        }
        for (kind, members) in groups {
            let infos: Vec<&StorageInfo> = members.iter().map(|&v| &job.storage[v]).collect();
            let backend =
                backend_for(infos[0]).with_context(|| format!("{kind} storage cannot snapshot"))?;
            backend.snapshot(job.runner, &infos, label)?;
            if !backend.needs_mount() {
                for &v in &members {
                    let info = &job.storage[v];
                    self.read_from
                        .insert(v, backend.read_path(info, label, &mount_dir(label, v)));
                }
            }
        }
        Ok(())
    }

    fn archive(&mut self, volume: usize, watch_changes: bool) -> Result<()> {
        let job = self.job;
        let v = &job.stack.volumes[volume];
        let source = self
            .read_from
            .get(&volume)
            .cloned()
            .unwrap_or_else(|| v.host_path.clone());
        let file_name = format!(
            "{}.{}",
            v.archive_stem(),
            job.archive.compression.extension()
        );
        job.observer.archive_started(&v.name, v.bytes);
        let observer = job.observer;
        let progress = |n| observer.bytes_read(n);
        let exclude = crate::archive::Exclude::new(&v.exclude)?;
        let summary = match (self.destination()?, self.chunked.as_mut()) {
            (Destination::Tar(repo), _) => {
                let dest = repo.partial_dir(&job.id).join(&file_name);
                write_archive(
                    &source,
                    &dest,
                    &job.archive,
                    &exclude,
                    job.cancel,
                    &progress,
                )
            }
            (Destination::Chunked { .. }, Some(chunked)) => chunked.archive(
                volume,
                &v.name,
                &source,
                job.archive.bwlimit,
                &exclude,
                job.cancel,
                &progress,
            ),
            (Destination::Chunked { .. }, None) => {
                Err(anyhow!("internal error: archive before prepare"))
            }
        };
        job.observer.archive_finished();
        // An archive read from a snapshot that overflowed meanwhile is void;
        // reading one usually fails with EIO, which says less than this.
        if let (Some(label), Some(info)) = (&self.snapshot_label, job.storage.get(volume)) {
            if let Some(backend) = backend_for(info) {
                backend.check_valid(job.runner, info, label)?;
            }
        }
        let summary = summary?;
        if let Some(chunked) = &self.chunked {
            let reused = chunked.reused(volume);
            self.reused_bytes += reused.reused_bytes;
            if reused.reused_files > 0 {
                tracing::info!(
                    "{}: {} file(s), {}, unchanged since this host's last backup: not read again",
                    v.name,
                    reused.reused_files,
                    crate::fsutil::human_bytes(reused.reused_bytes)
                );
            }
        }
        if watch_changes && !summary.changed_during_read.is_empty() {
            job.observer.warning(&format!(
                "{}: {} file(s) changed while being read",
                v.name,
                summary.changed_during_read.len()
            ));
        }
        self.archives[volume] = Some(summary);
        Ok(())
    }

    /// Format 2: stores the stack's definition (its compose files and
    /// read-only bound files, see [`crate::definition`]) as one more tree,
    /// after the volumes; its record, if the stack has any such file.
    fn archive_definition(&mut self, notes: &mut Vec<String>) -> Result<Option<VolumeRecord>> {
        let job = self.job;
        let (paths, left_out) = crate::definition::files(job.stack);
        notes.extend(left_out);
        if paths.is_empty() {
            return Ok(None);
        }
        let staging = tempfile::Builder::new()
            .prefix("volsnap-definition-")
            .tempdir()
            .context("cannot create a staging directory for the stack's definition")?;
        let staged = crate::definition::stage(&paths, staging.path())?;
        notes.extend(staged.notes);
        if staged.files == 0 {
            return Ok(None);
        }
        let index = job.stack.volumes.len();
        let chunked = self
            .chunked
            .as_mut()
            .context("internal error: archive before prepare")?;
        let summary = chunked.archive(
            index,
            // Not a Docker volume name: its parent copy is its own.
            "@definition",
            staging.path(),
            None,
            &crate::archive::Exclude::new(&[])?,
            job.cancel,
            &|_| {},
        )?;
        Ok(Some(VolumeRecord {
            name: crate::repo::manifest::DEFINITION_NAME.to_string(),
            kind: crate::repo::manifest::VolumeKind::Definition,
            source_path: String::new(),
            driver: None,
            driver_opts: Default::default(),
            labels: Default::default(),
            mounted_by: Vec::new(),
            archive: crate::repo::manifest::DEFINITION_NAME.to_string(),
            sha256: summary.sha256,
            archive_bytes: summary.archive_bytes,
            files: summary.files,
            bytes: summary.bytes,
            changed_during_read: Vec::new(),
            vanished_during_read: Vec::new(),
            left_out: Vec::new(),
            excluded: Vec::new(),
            excluded_entries: 0,
            entries: summary.entries,
        }))
    }

    fn commit(&mut self) -> Result<()> {
        let job = self.job;
        let chunked = matches!(self.destination()?, Destination::Chunked { .. });
        let mut volumes = Vec::new();
        let mut notes: Vec<String> = job.stack.skipped.clone();
        let mut any_changed = false;
        let mut incomplete = Vec::new();
        let mounts = if job.plan.strategy == Strategy::Snapshot {
            crate::storage::mountinfo::read()?
        } else {
            Vec::new()
        };
        for (i, v) in job.stack.volumes.iter().enumerate() {
            let mut summary = self.archives[i]
                .take()
                .with_context(|| format!("internal error: volume {} was not archived", v.name))?;
            any_changed |= !summary.changed_during_read.is_empty();
            // A snapshot holds one filesystem: whatever is mounted inside
            // the volume (a ZFS child dataset, another LV, a bind mount)
            // shows up in it as an empty directory.
            for m in &mounts {
                if let Ok(inside) = m.mount_point.strip_prefix(&v.host_path) {
                    if !inside.as_os_str().is_empty() {
                        summary.left_out.push(format!(
                            "{} (a {} filesystem mounted inside the volume, not part of its snapshot)",
                            inside.display(),
                            m.fs_type
                        ));
                    }
                }
            }
            if !summary.vanished_during_read.is_empty() {
                incomplete.push(format!(
                    "{}: {} file(s) vanished while it was read",
                    v.name,
                    summary.vanished_during_read.len()
                ));
            }
            incomplete.extend(
                summary
                    .left_out
                    .iter()
                    .map(|s| format!("{}: left out {s}", v.name)),
            );
            notes.extend(
                summary
                    .skipped
                    .iter()
                    .map(|s| format!("{}: skipped {s}", v.name)),
            );
            volumes.push(VolumeRecord {
                name: v.name.clone(),
                kind: v.kind,
                source_path: v.host_path.display().to_string(),
                driver: v.driver.clone(),
                driver_opts: v.driver_opts.clone(),
                labels: v.labels.clone(),
                mounted_by: v.mounted_by.clone(),
                // Format 2 has no archive files; the stem still names the
                // volume's directory under `restore --target-dir`.
                archive: if chunked {
                    v.archive_stem()
                } else {
                    format!(
                        "{}.{}",
                        v.archive_stem(),
                        job.archive.compression.extension()
                    )
                },
                sha256: summary.sha256,
                archive_bytes: summary.archive_bytes,
                files: summary.files,
                bytes: summary.bytes,
                changed_during_read: summary.changed_during_read,
                vanished_during_read: summary.vanished_during_read,
                left_out: summary.left_out,
                excluded: v.exclude.clone(),
                excluded_entries: summary.excluded,
                entries: summary.entries,
            });
        }
        if job.plan.quiesce == Some(crate::plan::Quiesce::None) {
            notes.push("--quiesce none: the services kept running, so the snapshots are crash-consistent only".into());
        }
        let mut consistency = job.plan.consistency;
        if any_changed && consistency == Consistency::Consistent {
            // Something wrote while the services were supposedly still:
            // say so rather than claim a consistency we did not get.
            consistency = Consistency::BestEffort;
            notes.push("files changed while read although the services were stopped: another writer uses these volumes".into());
        }
        if !incomplete.is_empty() {
            // Never a silent gap in a backup that calls itself consistent.
            consistency = Consistency::BestEffort;
            notes.extend(incomplete);
        }
        for c in &job.stack.containers {
            let Some(stop) = self.stops.get(&c.info.id).filter(|s| !s.clean()) else {
                continue;
            };
            // A service killed at its timeout (or failing on its way
            // down) left its files as a crash would: never "consistent".
            consistency = Consistency::BestEffort;
            notes.push(if stop.killed {
                format!(
                    "{} was still running at its {} s stop timeout and was killed: its volumes are crash-consistent (as a snapshot of a running service is), not cleanly stopped; give it more time (its stop_grace_period, or the job's stop_timeout) or shorten its own shutdown",
                    c.info.name, stop.timeout_secs
                )
            } else {
                format!(
                    "{} exited with code {} when stopped: it did not stop cleanly, so its volumes may be crash-consistent only",
                    c.info.name, stop.exit_code
                )
            });
        }
        if chunked {
            volumes.extend(self.archive_definition(&mut notes)?);
        }
        if let Some(since) = self.down_since.take() {
            self.downtime += since.elapsed();
        }
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            id: job.id.clone(),
            started_at: self.started_at,
            completed_at: Utc::now(),
            host: job.host.clone(),
            volsnap_version: env!("CARGO_PKG_VERSION").to_string(),
            selection: job.stack.selection.to_string(),
            strategy: job.plan.strategy,
            consistency,
            reason: job.plan.reason.clone(),
            downtime_ms: self.downtime.as_millis() as u64,
            duration_ms: self.started.elapsed().as_millis() as u64,
            compression: job.archive.compression,
            containers: job
                .stack
                .containers
                .iter()
                .map(|c| ContainerRecord {
                    stop: self.stops.get(&c.info.id).cloned(),
                    answered_ms: self.answered.get(&c.info.id).copied(),
                    ..c.record()
                })
                .collect(),
            volumes,
            notes,
            stored_bytes: None,
        };
        let repo = match self.destination()? {
            Destination::Tar(repo) => repo,
            Destination::Chunked { repo, .. } => {
                let backup = self
                    .chunked
                    .take()
                    .context("internal error: commit before prepare")?;
                let (id, stored) = backup.commit(&manifest)?;
                let mut manifest = manifest;
                manifest.stored_bytes = Some(stored);
                let location = PathBuf::from(repo.backend().location())
                    .join("snapshots")
                    .join(id.hex());
                self.committed = Some((manifest, location));
                return Ok(());
            }
        };
        let partial = repo.partial_dir(&job.id);
        let json = serde_json::to_vec_pretty(&manifest).context("cannot encode the manifest")?;
        crate::fsutil::write_private(&partial.join(MANIFEST_FILE), &json)?;
        let mut sums: Vec<(String, String)> = manifest
            .volumes
            .iter()
            .map(|v| (v.sha256.clone(), v.archive.clone()))
            .collect();
        sums.push((
            crate::hashing::sha256_file(&partial.join(MANIFEST_FILE))?,
            MANIFEST_FILE.to_string(),
        ));
        crate::fsutil::write_private(&partial.join(SUMS_FILE), render_sums(&sums).as_bytes())?;
        crate::fsutil::sync_dir(&partial)?;
        let dir = repo.backup_dir(&job.id);
        if dir.exists() {
            bail!("{} already exists; not overwriting it", dir.display());
        }
        std::fs::rename(&partial, &dir)
            .with_context(|| format!("cannot rename {} to {}", partial.display(), dir.display()))?;
        crate::fsutil::sync_dir(repo.root())?;
        self.committed = Some((manifest, dir));
        Ok(())
    }

    /// Runs pending undos, newest first; returns what could not be undone.
    fn unwind(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        while let Some(undo) = self.cleanup.pop() {
            let description = undo.describe_for(self.job.stack, self.job.chunked());
            tracing::info!("cleanup: {description}");
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.apply(&undo)))
                    .unwrap_or_else(|p| Err(anyhow!("panic: {}", panic_text(&p))));
            match result {
                Ok(()) => self.journal_discharge(&undo),
                Err(e) => errors.push(format!("{description}: {e:#}")),
            }
            self.note_service_up(&undo);
        }
        errors
    }
}

/// Runs a container hook; a non-zero exit or a timeout is an error that
/// shows the end of the hook's output.
fn run_hook(docker: &Docker, container: &str, command: &str, timeout_secs: u32) -> Result<()> {
    let outcome = docker.exec(container, command, Duration::from_secs(timeout_secs.into()))?;
    let tail = || {
        let text = outcome.output.trim_end();
        let start = text.len().saturating_sub(400);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        if text.is_empty() {
            String::new()
        } else {
            format!("; its output ends: {}", &text[start..])
        }
    };
    match outcome.exit_code {
        Some(0) => Ok(()),
        Some(code) => bail!("{command:?} exited with status {code}{}", tail()),
        None => bail!(
            "{command:?} did not finish within {timeout_secs} s and was killed{}",
            tail()
        ),
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// The name backups from this machine carry: `VOLSNAP_HOST` when set (a
/// machine that took over another's role keeps its name), else the hostname.
pub fn this_host() -> String {
    std::env::var("VOLSNAP_HOST")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(hostname)
}

/// This machine's hostname.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".to_string())
}
