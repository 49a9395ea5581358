//! volsnap: consistency-aware snapshot orchestrator for Docker volumes.
//!
//! The library holds everything but argument parsing and terminal output:
//! discovery of a stack through the Docker API, plans as data, the executor
//! with its cleanup stack, the archive format, the repository, verification
//! and restore. `src/main.rs` and `src/cmd/` are thin glue around it.

pub mod archive;
pub mod beneath;
pub mod cancel;
pub mod config;
pub mod discovery;
pub mod docker;
pub mod drill;
pub mod error;
pub mod execute;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod fsutil;
pub mod hashing;
pub mod journal;
pub mod lock;
pub mod manifest;
pub mod notify;
pub mod plan;
pub mod process;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod runlog;
pub mod schedule;
pub mod snapshots;
pub mod storage;
pub mod verify;
