//! `volsnap restore`: into the original volumes, new volumes, or a directory.

use crate::cli::RestoreArgs;
use crate::output::{byte_bar, stderr_is_terminal};
use anyhow::Result;
use indicatif::ProgressBar;
use std::sync::Mutex;
use volsnap::cancel::Cancel;
use volsnap::fsutil::human_bytes;
use volsnap::jobs::restore::{perform, RestoreProgress, RestoreRequest};
use volsnap::jobs::RunContext;

pub fn run(args: RestoreArgs) -> Result<i32> {
    let request = RestoreRequest {
        repo: args.repo.clone(),
        id: args.id.clone(),
        scope: args.only.scope(&args.host)?,
        stack: args
            .only
            .to_selection_args()
            .map(|s| s.to_selection())
            .transpose()?,
        volumes: args.volumes.clone(),
        target_dir: args.target_dir.clone(),
        definition_to: args.definition_to.clone(),
        force: args.force,
        allow_special: args.allow_special,
        include: args.include.clone(),
    };
    let cancel = Cancel::from_signals()?;
    let observer = crate::output::TerminalObserver::new();
    let run = RunContext {
        state_dir: &args.state.state_dir,
        cancel: &cancel,
        observer: &observer,
    };
    let done = perform(&request, &run, &Bars::default())?;
    for v in &done.volumes {
        outln!(
            "  {} -> {}: {} files, {} verified",
            v.name,
            v.destination,
            v.files,
            human_bytes(v.bytes)
        );
        if !v.excluded.is_empty() {
            outln!(
                "      left out on purpose when backed up: {}",
                v.excluded.join(", ")
            );
        }
    }
    if let Some(problem) = done.problem {
        anyhow::bail!(problem);
    }
    if args.definition_to.is_some() {
        outln!("wrote out the stack definition of backup {}", done.id);
        return Ok(0);
    }
    outln!(
        "restored backup {} ({} volume(s))",
        done.id,
        done.volumes.len()
    );
    if done.definition_left > 0 {
        outln!(
            "the backup also keeps the stack's definition ({} file(s): compose files, read-only bound files); 'volsnap restore {} --definition-to DIR' writes it out",
            done.definition_left,
            done.id
        );
    }
    Ok(0)
}

/// One byte bar per volume, on a terminal.
#[derive(Default)]
struct Bars(Mutex<Vec<ProgressBar>>);

impl RestoreProgress for Bars {
    fn started(&self, volumes: &[(&str, u64)]) {
        if let Ok(mut bars) = self.0.lock() {
            *bars = volumes
                .iter()
                .map(|(name, bytes)| byte_bar(name, *bytes, stderr_is_terminal()))
                .collect();
        }
    }

    fn advanced(&self, volume: usize, bytes: u64) {
        if let Some(bar) = self.0.lock().ok().and_then(|b| b.get(volume).cloned()) {
            bar.inc(bytes);
        }
    }

    fn finished(&self) {
        if let Ok(bars) = self.0.lock() {
            bars.iter().for_each(|b| b.finish_and_clear());
        }
    }
}
