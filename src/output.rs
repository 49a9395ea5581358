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

/// The bar on screen, if any: log lines are written around it (see
/// [`LogWriter`]) so that neither is left half-drawn or repeated.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Where log lines go: stderr, with the active progress bar (if any)
/// lifted while a line is written.
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE_BAR.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Logs steps and draws a byte progress bar while archiving: done and
/// total (the measured size, or the size the last backup found), percent,
/// throughput, ETA, and while services are down for how long. Plain logs
/// only when stderr is not a terminal or the run prints JSON.
pub struct TerminalObserver {
    bar: Mutex<Option<ProgressBar>>,
    interactive: bool,
    down_since: Mutex<Option<std::time::Instant>>,
}

impl TerminalObserver {
    pub fn new() -> Self {
        Self::with_bars(std::io::stderr().is_terminal())
    }

    /// No bars whatever stderr is (`--json` runs).
    pub fn plain() -> Self {
        Self::with_bars(false)
    }

    fn with_bars(interactive: bool) -> Self {
        Self {
            bar: Mutex::new(None),
            interactive,
            down_since: Mutex::new(None),
        }
    }

    fn with_bar(&self, f: impl FnOnce(&mut Option<ProgressBar>)) {
        if let Ok(mut guard) = self.bar.lock() {
            f(&mut guard);
        }
    }

    fn set_active(bar: Option<ProgressBar>) {
        if let Ok(mut active) = ACTIVE_BAR.lock() {
            *active = bar;
        }
    }

    /// "services down 2.4 s", while they are.
    fn downtime_text(&self) -> String {
        match self.down_since.lock().ok().and_then(|d| *d) {
            Some(since) => format!("services down {:.1} s", since.elapsed().as_secs_f64()),
            None => String::new(),
        }
    }
}

/// A byte progress bar on stderr, or a hidden one when not on a terminal.
pub fn byte_bar(label: &str, total: u64, interactive: bool) -> ProgressBar {
    if !interactive {
        return ProgressBar::hidden();
    }
    // Total 0: the size is not known; show what was read so far.
    let template = if total == 0 {
        "{prefix:16} {spinner} {bytes} {bytes_per_sec} {wide_msg}"
    } else {
        "{prefix:16} [{bar:20}] {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_msg}"
    };
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
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
        bar.set_message(self.downtime_text());
        if self.interactive {
            Self::set_active(Some(bar.clone()));
        }
        self.with_bar(|slot| *slot = Some(bar));
    }

    fn bytes_read(&self, n: u64) {
        let down = self.downtime_text();
        self.with_bar(|slot| {
            if let Some(bar) = slot {
                bar.inc(n);
                // The data grew since the size was taken: keep 100% honest.
                if bar
                    .length()
                    .is_some_and(|len| len > 0 && bar.position() > len)
                {
                    bar.set_length(bar.position());
                }
                bar.set_message(down);
            }
        });
    }

    fn archive_finished(&self) {
        Self::set_active(None);
        self.with_bar(|slot| {
            if let Some(bar) = slot.take() {
                bar.finish_and_clear();
            }
        });
    }

    fn services_down(&self, since: Option<std::time::Instant>) {
        if let Ok(mut down) = self.down_since.lock() {
            *down = since;
        }
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

/// A bar left on screen by an interrupted run is cleared, not redrawn
/// below the error.
impl Drop for TerminalObserver {
    fn drop(&mut self) {
        self.archive_finished();
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
