//! The on-disk journal: what a run must undo if it dies.
//!
//! Before each side effect the executor appends (and fsyncs) the undo of
//! that effect; when the effect is undone or completed it appends a
//! discharge. A run that ends normally deletes its journal. A journal left
//! behind belongs to a run that was killed (SIGKILL, power loss): `volsnap
//! recover`, and every later run before it starts, replays the undos still
//! pending, newest first. Every undo is idempotent, so replaying one that
//! had in fact completed is harmless.

use crate::discovery::ComposeIdentity;
use crate::docker::Docker;
use crate::restore::{finish_restore, roll_back_swap, RecoveryLog, RecoveryStep};
use crate::storage::{backend_for, Runner, StorageInfo};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Something to undo, self-contained (no reference to a plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "undo", rename_all = "kebab-case")]
pub enum Undo {
    /// Start a container volsnap stopped.
    StartContainer {
        id: String,
        name: String,
        /// Finds the successor when compose recreated the container.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compose: Option<ComposeIdentity>,
    },
    /// Remove every container, network and volume labelled `label=value`
    /// (a recovery drill's copies).
    RemoveLabelled { label: String, value: String },
    /// Unpause a container volsnap paused.
    Unpause { id: String, name: String },
    /// Unmount a snapshot mounted at `dir`, then remove the directory.
    Unmount { dir: PathBuf },
    /// Drop a snapshot.
    DropSnapshot { storage: StorageInfo, label: String },
    /// Remove a directory tree volsnap created (partial backup, staging).
    RemoveDir { path: PathBuf },
    /// Put back the previous content of a restore target whose swap was
    /// interrupted: `old_names` were (being) moved to `aside`.
    RestoreSwap {
        target: PathBuf,
        staging: PathBuf,
        aside: PathBuf,
        #[serde(with = "file_names")]
        old_names: Vec<std::ffi::OsString>,
    },
    /// A rollback of a kept snapshot was under way on this storage: make
    /// sure the volume is whole and in use again.
    FinishRollback { storage: StorageInfo, label: String },
    /// A restore committed: every volume has its new content. What remains
    /// is deleting the content it replaced (and emptied staging
    /// directories); recovery finishes that, it never undoes the restore.
    FinishRestore {
        remove: Vec<PathBuf>,
        /// Each target's mtime from the backup, set again after deleting.
        #[serde(default)]
        mtimes: Vec<(PathBuf, i64)>,
    },
}

/// File names in a journal: a name that is UTF-8 as a string, any other as
/// `{"hex": "…"}` with its bytes, so every name comes back byte for byte.
mod file_names {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Name {
        Text(String),
        Bytes { hex: String },
    }

    pub fn serialize<S: Serializer>(names: &[OsString], s: S) -> Result<S::Ok, S::Error> {
        let names: Vec<Name> = names
            .iter()
            .map(|n| match n.to_str() {
                Some(text) => Name::Text(text.to_string()),
                None => Name::Bytes {
                    hex: hex::encode(n.as_bytes()),
                },
            })
            .collect();
        names.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<OsString>, D::Error> {
        Vec::<Name>::deserialize(d)?
            .into_iter()
            .map(|n| match n {
                Name::Text(text) => Ok(OsString::from(text)),
                Name::Bytes { hex } => hex::decode(hex)
                    .map(OsString::from_vec)
                    .map_err(serde::de::Error::custom),
            })
            .collect()
    }
}

impl From<&RecoveryStep> for Undo {
    fn from(step: &RecoveryStep) -> Self {
        match step.clone() {
            RecoveryStep::RemoveStaging { path } => Undo::RemoveDir { path },
            RecoveryStep::Swap {
                target,
                staging,
                aside,
                old_names,
            } => Undo::RestoreSwap {
                target,
                staging,
                aside,
                old_names,
            },
            RecoveryStep::Finish { remove, mtimes } => Undo::FinishRestore { remove, mtimes },
        }
    }
}

/// A restore records its steps in the run's journal.
impl RecoveryLog for Journal {
    fn push(&mut self, step: &RecoveryStep) -> Result<()> {
        Journal::push(self, &Undo::from(step))
    }

    fn discharge(&mut self, step: &RecoveryStep) -> Result<()> {
        Journal::discharge(self, &Undo::from(step))
    }
}

impl Undo {
    pub fn describe(&self) -> String {
        match self {
            Undo::StartContainer { name, .. } => format!("start container {name}"),
            Undo::Unpause { name, .. } => format!("unpause container {name}"),
            Undo::RemoveLabelled { label, value } => {
                format!("remove the containers, networks and volumes labelled {label}={value}")
            }
            Undo::Unmount { dir } => format!("unmount {}", dir.display()),
            Undo::DropSnapshot { storage, label } => {
                format!("drop snapshot {label} of {}", storage.path.display())
            }
            Undo::RemoveDir { path } => format!("remove {}", path.display()),
            Undo::RestoreSwap { target, .. } => {
                format!("put the previous content of {} back", target.display())
            }
            Undo::FinishRollback { storage, label } => format!(
                "finish or undo the rollback of {} to {label}",
                storage.path.display()
            ),
            Undo::FinishRestore { remove, .. } => {
                let shown: Vec<String> = remove.iter().map(|p| p.display().to_string()).collect();
                format!(
                    "finish a restore: delete the replaced content {}",
                    shown.join(", ")
                )
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "kebab-case")]
enum Record {
    Begin {
        pid: u32,
        command: String,
        started_at: chrono::DateTime<chrono::Utc>,
    },
    Push {
        undo: Undo,
    },
    Discharge {
        undo: Undo,
    },
}

/// The journal of the current run.
pub struct Journal {
    file: File,
    path: PathBuf,
    /// Undos pushed and not yet discharged.
    pending: Vec<Undo>,
}

fn journal_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("journal")
}

impl Journal {
    /// Starts a journal for a run of `command`.
    pub fn create(state_dir: &Path, run_id: &str, command: &str) -> Result<Journal> {
        let dir = journal_dir(state_dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{run_id}.jsonl"));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create journal {}", path.display()))?;
        let mut journal = Journal {
            file,
            path,
            pending: Vec::new(),
        };
        journal.append(&Record::Begin {
            pid: std::process::id(),
            command: command.to_string(),
            started_at: chrono::Utc::now(),
        })?;
        crate::fsutil::sync_dir(&dir)?;
        Ok(journal)
    }

    fn append(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_vec(record).context("cannot encode a journal record")?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("cannot write journal {}", self.path.display()))
    }

    /// Records an undo before the effect it undoes.
    pub fn push(&mut self, undo: &Undo) -> Result<()> {
        self.append(&Record::Push { undo: undo.clone() })?;
        self.pending.push(undo.clone());
        Ok(())
    }

    /// Records that an undo is no longer needed (done, or undone).
    pub fn discharge(&mut self, undo: &Undo) -> Result<()> {
        self.append(&Record::Discharge { undo: undo.clone() })?;
        if let Some(pos) = self.pending.iter().rposition(|u| u == undo) {
            self.pending.remove(pos);
        }
        Ok(())
    }

    /// After a failed run: deletes the journal when nothing is left to
    /// undo (the run cleaned up after itself), keeps it for `recover`
    /// otherwise.
    pub fn finish_if_clean(self) -> Result<()> {
        if self.pending.is_empty() {
            self.finish()
        } else {
            Ok(())
        }
    }

    /// The run ended and left nothing to undo: delete the journal.
    pub fn finish(mut self) -> Result<()> {
        self.pending.clear();
        std::fs::remove_file(&self.path)
            .with_context(|| format!("cannot remove journal {}", self.path.display()))
    }
}

/// A run that returns early (a refusal, an error before any effect) leaves
/// no journal: one with nothing pending has nothing for `recover` to do and
/// would only be reported as a run that did not finish. A killed process
/// runs no destructor, so its journal stays, as it must.
impl Drop for Journal {
    fn drop(&mut self) {
        if self.pending.is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A journal left behind by a run that did not finish.
#[derive(Debug)]
pub struct Leftover {
    pub path: PathBuf,
    pub pid: u32,
    pub command: String,
    /// Undos still pending, oldest first.
    pub pending: Vec<Undo>,
}

/// Reads the journals in the state directory. A torn last line (the run
/// died while writing it) is ignored: its effect had not started.
pub fn leftovers(state_dir: &Path) -> Result<Vec<Leftover>> {
    let dir = journal_dir(state_dir);
    let listing = match std::fs::read_dir(&dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in listing {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut leftover = Leftover {
            path: path.clone(),
            pid: 0,
            command: String::new(),
            pending: Vec::new(),
        };
        for line in text.lines() {
            match serde_json::from_str::<Record>(line) {
                Ok(Record::Begin { pid, command, .. }) => {
                    leftover.pid = pid;
                    leftover.command = command;
                }
                Ok(Record::Push { undo }) => leftover.pending.push(undo),
                Ok(Record::Discharge { undo }) => {
                    if let Some(pos) = leftover.pending.iter().rposition(|u| *u == undo) {
                        leftover.pending.remove(pos);
                    }
                }
                Err(_) => tracing::warn!("ignoring a torn line in {}", path.display()),
            }
        }
        out.push(leftover);
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Carries out one undo.
pub fn apply(undo: &Undo, docker: &mut Option<Docker>, runner: &dyn Runner) -> Result<()> {
    fn connected(docker: &mut Option<Docker>) -> Result<&Docker> {
        if docker.is_none() {
            *docker = Some(Docker::connect()?);
        }
        Ok(docker.as_ref().expect("just connected"))
    }
    match undo {
        Undo::StartContainer { id, compose, .. } => {
            let d = connected(docker)?;
            match crate::discovery::current_container(d, id, compose.as_ref())? {
                Some(current) => d.start(&current),
                None => {
                    tracing::warn!("container {id} no longer exists; nothing to start");
                    Ok(())
                }
            }
        }
        Undo::RemoveLabelled { label, value } => {
            connected(docker)?.remove_labelled(label, value).map(|_| ())
        }
        Undo::Unpause { id, .. } => {
            let d = connected(docker)?;
            match d.inspect_container(id)? {
                Some(info) if info.paused => d.unpause(id),
                _ => Ok(()),
            }
        }
        Undo::Unmount { dir } => {
            if crate::storage::mountinfo::read()?
                .iter()
                .any(|m| &m.mount_point == dir)
            {
                runner.run("umount", &[dir.display().to_string()])?;
            }
            let _ = std::fs::remove_dir(dir);
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
            Ok(())
        }
        Undo::DropSnapshot { storage, label } => match backend_for(storage) {
            Some(backend) => backend.drop_snapshot(runner, storage, label),
            None => Ok(()),
        },
        Undo::RemoveDir { path } => match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        },
        Undo::RestoreSwap {
            target,
            staging,
            aside,
            old_names,
        } => roll_back_swap(target, staging, aside, old_names),
        Undo::FinishRollback { storage, label } => match backend_for(storage) {
            Some(backend) => backend.finish_rollback(runner, storage, label),
            None => Ok(()),
        },
        Undo::FinishRestore { remove, mtimes } => finish_restore(remove, mtimes),
    }
}

/// Replays every leftover journal: pending undos newest first (unpausing
/// before anything else). With `dry_run`, only says what it would do.
/// Returns one line per action, and fails if any undo failed (the journal is
/// then kept, so the next attempt retries).
pub fn recover(state_dir: &Path, runner: &dyn Runner, dry_run: bool) -> Result<Vec<String>> {
    let mut report = Vec::new();
    let mut failures = Vec::new();
    let mut docker = None;
    for leftover in leftovers(state_dir)? {
        report.push(format!(
            "run {} (pid {}, '{}') did not finish; {} undo(s) pending",
            leftover
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            leftover.pid,
            leftover.command,
            leftover.pending.len()
        ));
        let mut order: Vec<&Undo> = leftover.pending.iter().rev().collect();
        // A paused service is released first: it may be holding others up.
        order.sort_by_key(|u| !matches!(u, Undo::Unpause { .. }));
        let mut ok = true;
        for undo in order {
            if dry_run {
                report.push(format!("  would {}", undo.describe()));
                continue;
            }
            match apply(undo, &mut docker, runner) {
                Ok(()) => report.push(format!("  {}: done", undo.describe())),
                Err(e) => {
                    ok = false;
                    failures.push(format!("{}: {e:#}", undo.describe()));
                    report.push(format!("  {}: FAILED: {e:#}", undo.describe()));
                }
            }
        }
        if ok && !dry_run {
            std::fs::remove_file(&leftover.path)
                .with_context(|| format!("cannot remove journal {}", leftover.path.display()))?;
        }
    }
    if !failures.is_empty() {
        anyhow::bail!(
            "recovery could not undo everything (the journal is kept; fix the cause and run 'volsnap recover' again): {}",
            failures.join("; ")
        );
    }
    Ok(report)
}

/// Stops retrying the leftover journal of run `run` (its file name without
/// `.jsonl`): the operator repaired things by hand, or accepts what is
/// left. The journal is moved to `journal/abandoned/`, and what it still
/// asked for is returned so it can be checked by hand.
pub fn give_up(state_dir: &Path, run: &str) -> Result<Vec<String>> {
    if run.is_empty() || run.contains('/') || run.starts_with('.') {
        return Err(crate::usage!(
            "{run:?} is not a run name ('volsnap recover --dry-run' lists them)"
        ));
    }
    let leftover = leftovers(state_dir)?
        .into_iter()
        .find(|l| l.path.file_stem().is_some_and(|s| s == run))
        .ok_or_else(|| {
            crate::usage!("no unfinished run {run:?}; 'volsnap recover --dry-run' lists them")
        })?;
    let abandoned = journal_dir(state_dir).join("abandoned");
    std::fs::create_dir_all(&abandoned)
        .with_context(|| format!("cannot create {}", abandoned.display()))?;
    let dest = abandoned.join(format!("{run}.jsonl"));
    std::fs::rename(&leftover.path, &dest)
        .with_context(|| format!("cannot move {} aside", leftover.path.display()))?;
    crate::fsutil::sync_dir(&journal_dir(state_dir))?;
    let mut lines = vec![format!(
        "gave up run {run} ('{}'); its journal is kept at {}. Not done, check by hand:",
        leftover.command,
        dest.display()
    )];
    lines.extend(
        leftover
            .pending
            .iter()
            .rev()
            .map(|u| format!("  {}", u.describe())),
    );
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_is_pushes_minus_discharges_and_torn_lines_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), "run1", "backup --project x").unwrap();
        let a = Undo::StartContainer {
            id: "a".into(),
            name: "a".into(),
            compose: None,
        };
        let b = Undo::RemoveDir {
            path: "/nonexistent/b".into(),
        };
        j.push(&b).unwrap();
        j.push(&a).unwrap();
        j.discharge(&a).unwrap();
        // A torn write at the moment of death.
        let path = dir.path().join("journal/run1.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"record":"push","undo":{"undo":"start-cont"#)
            .unwrap();
        let left = leftovers(dir.path()).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].pending, vec![b]);
        assert_eq!(left[0].command, "backup --project x");
        // Replaying removes the (absent) directory and then the journal.
        let report = recover(dir.path(), &crate::storage::SystemRunner, false).unwrap();
        assert!(
            report
                .iter()
                .any(|l| l.contains("remove /nonexistent/b: done")),
            "{report:?}"
        );
        assert!(leftovers(dir.path()).unwrap().is_empty());
    }
}
