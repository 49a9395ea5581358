//! Fault injection for the crash tests (feature `fault-injection` only):
//! `VOLSNAP_FAULT_KILL_BEFORE_STEP=N` makes the process SIGKILL itself just
//! before step N (1-based) of a plan, as a power cut or OOM kill would.

/// Kills the process before step `number` when the environment asks for it.
pub fn before_step(number: usize, name: &str) {
    let wanted = std::env::var("VOLSNAP_FAULT_KILL_BEFORE_STEP")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    if wanted == Some(number) {
        eprintln!("volsnap: fault injection: killing myself before step {number} ({name})");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
