//! Cancellation: how Ctrl-C and SIGTERM stop a run without skipping cleanup.
//!
//! The first SIGINT or SIGTERM only sets a flag; nothing is killed. The
//! executor checks the flag between steps and the archiver checks it between
//! files, so a run stops at the next safe point and then unwinds its cleanup
//! stack (restart, thaw, unmount, drop snapshots, remove partial output).
//! Cleanup never looks at the flag, so further signals cannot cut it short:
//! once the handlers are installed, the default "terminate" action is gone
//! for both signals for the rest of the process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A cheap, clonable handle on the process-wide "please stop" flag.
#[derive(Clone, Debug, Default)]
pub struct Cancel {
    flag: Arc<AtomicBool>,
}

impl Cancel {
    /// A flag that only [`Cancel::cancel`] sets (for tests and library use).
    pub fn new() -> Self {
        Self::default()
    }

    /// A flag set by SIGINT and SIGTERM.
    pub fn from_signals() -> std::io::Result<Self> {
        let cancel = Self::new();
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, Arc::clone(&cancel.flag))?;
        }
        Ok(cancel)
    }

    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once a stop was asked for: the `?`-friendly check.
    pub fn check(&self) -> Result<(), crate::error::Cancelled> {
        if self.is_cancelled() {
            Err(crate::error::Cancelled)
        } else {
            Ok(())
        }
    }
}
