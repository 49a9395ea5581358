//! Terminal output: progress bars and human formatting, kept in one place.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use volsnap::execute::Observer;
use volsnap::plan::Step;

/// Seconds with millisecond precision.
pub fn secs(ms: u64) -> String {
    volsnap::fsutil::human_secs(ms)
}

/// Logs steps and draws a byte progress bar while archiving or restoring,
/// when stderr is a terminal.
pub struct TerminalObserver {
    bar: Mutex<Option<ProgressBar>>,
    interactive: bool,
}

impl TerminalObserver {
    pub fn new() -> Self {
        Self {
            bar: Mutex::new(None),
            interactive: std::io::stderr().is_terminal(),
        }
    }

    fn with_bar(&self, f: impl FnOnce(&mut Option<ProgressBar>)) {
        if let Ok(mut guard) = self.bar.lock() {
            f(&mut guard);
        }
    }
}

/// A byte progress bar on stderr, or a hidden one when not on a terminal.
pub fn byte_bar(label: &str, total: u64, interactive: bool) -> ProgressBar {
    if !interactive {
        return ProgressBar::hidden();
    }
    // Total 0: the size was not measured; show what was read so far.
    let template = if total == 0 {
        "{msg:24} {spinner} {bytes} {bytes_per_sec}"
    } else {
        "{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    };
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

impl Observer for TerminalObserver {
    fn step_started(&self, step: &Step, description: &str) {
        tracing::info!(step = step.action.name(), "{description}");
    }

    fn archive_started(&self, volume: &str, total: u64) {
        let bar = byte_bar(volume, total, self.interactive);
        self.with_bar(|slot| *slot = Some(bar));
    }

    fn bytes_read(&self, n: u64) {
        self.with_bar(|slot| {
            if let Some(bar) = slot {
                bar.inc(n);
            }
        });
    }

    fn archive_finished(&self) {
        self.with_bar(|slot| {
            if let Some(bar) = slot.take() {
                bar.finish_and_clear();
            }
        });
    }

    fn warning(&self, message: &str) {
        self.with_bar(|slot| {
            if let Some(bar) = slot {
                bar.suspend(|| eprintln!("volsnap: warning: {message}"));
            } else {
                eprintln!("volsnap: warning: {message}");
            }
        });
    }
}

/// `println!` that ignores a closed stdout (`volsnap list | head`), instead
/// of panicking on EPIPE.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
