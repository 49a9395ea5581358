//! Fault injection for the crash tests (feature `fault-injection` only).
//!
//! - `VOLSNAP_FAULT_KILL_BEFORE_STEP=N` makes the process SIGKILL itself just
//!   before step N (1-based) of a plan, as a power cut or OOM kill would.
//! - `VOLSNAP_FAULT_HOLD_BEFORE_STEP=N` with `VOLSNAP_FAULT_HOLD_FILE=PATH`
//!   creates PATH before step N and waits until the test removes it, so a
//!   test can break something (restart dockerd, recreate a container) at a
//!   known point of the run.
//! - `VOLSNAP_FAULT_RESTORE=ACTION:PHASE:INDEX` acts in a restore before
//!   PHASE (`stage`, `swap`: of volume INDEX, 0-based; `delete`: of the old
//!   content, INDEX 0): ACTION `kill` (SIGKILL), `fail` (an error) or `hold`
//!   (the hold file, as above).
//! - `VOLSNAP_FAULT_KILL_AT=NAME` makes the process SIGKILL itself at a
//!   named point inside a step (`btrfs-rollback-moved-aside`);
//!   `VOLSNAP_FAULT_HOLD_AT=NAME` with the hold file waits there.
//! - `VOLSNAP_FAULT_HOLD_BEFORE_OPEN=PATH_IN_VOLUME` with the same hold file
//!   makes the archiver wait just before it opens that entry (listed, not
//!   yet opened), so a test can swap it for a symlink, a FIFO or a device
//!   node at exactly the moment an attacker would.

use std::time::Duration;

fn wanted(variable: &str) -> Option<usize> {
    std::env::var(variable).ok()?.parse().ok()
}

/// Acts before step `number` when the environment asks for it.
pub fn before_step(number: usize, name: &str) {
    if wanted("VOLSNAP_FAULT_KILL_BEFORE_STEP") == Some(number) {
        eprintln!("volsnap: fault injection: killing myself before step {number} ({name})");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    if wanted("VOLSNAP_FAULT_HOLD_BEFORE_STEP") == Some(number) {
        hold(&format!("step {number} ({name})"));
    }
}

/// Acts before the archiver opens the entry `rel` of a volume.
pub fn before_open(rel: &str) {
    if std::env::var("VOLSNAP_FAULT_HOLD_BEFORE_OPEN").is_ok_and(|wanted| wanted == rel) {
        hold(&format!("opening {rel}"));
    }
}

/// `VOLSNAP_FAULT_KILL_AT=NAME`: SIGKILL at the named point of the code;
/// `VOLSNAP_FAULT_HOLD_AT=NAME` (with the hold file): wait there.
pub fn point(name: &str) {
    if std::env::var("VOLSNAP_FAULT_KILL_AT").is_ok_and(|wanted| wanted == name) {
        eprintln!("volsnap: fault injection: killing myself at {name}");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    if std::env::var("VOLSNAP_FAULT_HOLD_AT").is_ok_and(|wanted| wanted == name) {
        hold(name);
    }
}

/// Acts in a restore before `phase` of volume `index`.
pub fn during_restore(phase: &str, index: usize) -> anyhow::Result<()> {
    let Ok(wanted) = std::env::var("VOLSNAP_FAULT_RESTORE") else {
        return Ok(());
    };
    let Some((action, at)) = wanted.split_once(':') else {
        return Ok(());
    };
    if at != format!("{phase}:{index}") {
        return Ok(());
    }
    match action {
        "kill" => {
            eprintln!("volsnap: fault injection: killing myself before restore {at}");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        "fail" => anyhow::bail!("fault injection: failing before restore {at}"),
        "hold" => hold(&format!("restore {at}")),
        _ => {}
    }
    Ok(())
}

/// Creates the hold file and waits until the test removes it.
fn hold(what: &str) {
    let Some(path) = std::env::var_os("VOLSNAP_FAULT_HOLD_FILE") else {
        return;
    };
    eprintln!("volsnap: fault injection: holding before {what}");
    if std::fs::write(&path, what).is_ok() {
        while std::path::Path::new(&path).exists() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
