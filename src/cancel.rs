//! Cancellation: how Ctrl-C, SIGTERM and SIGHUP stop a run without
//! skipping cleanup.
//!
//! The first SIGINT, SIGTERM or SIGHUP (a dropped ssh session) only sets a
//! flag; nothing is killed. The
//! executor checks the flag between steps and the archiver checks it between
//! files, so a run stops at the next safe point and then unwinds its cleanup
//! stack (restart, thaw, unmount, drop snapshots, remove partial output).
//! Cleanup never looks at the flag, so further signals cannot cut it short:
//! once the handlers are installed, the default "terminate" action is gone
//! for these signals for the rest of the process. The daemon keeps SIGHUP
//! for reloading its configuration ([`Cancel::from_signals_but_hup`]).

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

    /// A flag set by SIGINT, SIGTERM and SIGHUP.
    pub fn from_signals() -> std::io::Result<Self> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        Self::registered(&[SIGINT, SIGTERM, SIGHUP])
    }

    /// A flag set by SIGINT and SIGTERM only: for the daemon, whose SIGHUP
    /// means "reload".
    pub fn from_signals_but_hup() -> std::io::Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        Self::registered(&[SIGINT, SIGTERM])
    }

    fn registered(signals: &[i32]) -> std::io::Result<Self> {
        let cancel = Self::new();
        for signal in signals {
            signal_hook::flag::register(*signal, Arc::clone(&cancel.flag))?;
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
