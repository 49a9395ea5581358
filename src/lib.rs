//! volsnap: consistency-aware snapshot orchestrator for Docker volumes.
//!
//! The library holds everything but argument parsing and terminal output.
//! Its layers, lowest first (a module uses only those above it in this list):
//!
//! - base: [`error`], [`cancel`], [`fsutil`], [`text`] (repository strings
//!   made safe to print), [`beneath`] (paths resolved
//!   inside a tree, never through a symlink), [`hashing`], [`process`], [`lock`];
//! - [`backend`]: moves named objects to and from a repository's storage;
//! - [`repo`]: repository formats, the manifest, retention decisions;
//! - facts about the host: [`docker`] and [`discovery`] (what runs, which
//!   volumes), [`storage`] (what each volume lives on, and its snapshot
//!   backends; knows neither Docker nor plans);
//! - [`archive`]: the archiver (walk, staged pipeline, tar guard);
//! - [`restore`]: restore and verify (knows no run: it records its steps
//!   through [`restore::RecoveryLog`]);
//! - [`discovery`] and [`compose`]: the stack, from Docker and its compose files;
//! - the run: [`plan`] (steps as data), [`execute`] (the executor and its
//!   cleanup stack), [`journal`] (what `recover` repairs), [`snapshots`];
//! - [`jobs`]: the job lifecycle the CLI and the daemon call (backup, drill,
//!   prune, hooks, run log, metrics, notifications, configuration);
//! - [`serve`]: the read-only dashboard over a repository.
//!
//! `src/main.rs` and `src/cmd/` parse arguments, call one entry point and
//! print.

pub mod archive;
pub mod backend;
pub mod beneath;
pub mod cancel;
pub mod compose;
pub mod definition;
pub mod discovery;
pub mod docker;
pub mod error;
pub mod execute;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod fsutil;
pub mod hashing;
pub mod jobs;
pub mod journal;
pub mod lock;
pub mod mount;
pub mod plan;
pub mod process;
pub mod repo;
pub mod restore;
pub mod serve;
pub mod snapshots;
pub mod storage;
pub mod text;
