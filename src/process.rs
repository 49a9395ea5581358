//! Killing a process together with everything it started: a hook past its
//! timeout must not leave a forked child running (holding files open in a
//! volume about to be archived, or writing to it).

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;

/// Sends SIGKILL to `pid` and every process descended from it, as found in
/// /proc. The tree is frozen (SIGSTOP) while it is collected so that no
/// member can fork a new one in between; a few passes catch the rest.
pub fn kill_tree(pid: i32) {
    for _ in 0..3 {
        let tree = descendants_and_self(pid);
        if tree.is_empty() {
            return;
        }
        for p in &tree {
            let _ = kill(Pid::from_raw(*p), Signal::SIGSTOP);
        }
        // Collect again, now that nothing in it can fork.
        let tree = descendants_and_self(pid)
            .into_iter()
            .chain(tree)
            .collect::<Vec<_>>();
        for p in &tree {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
    }
}

/// `pid` (if it still exists) and all its descendants.
fn descendants_and_self(pid: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut exists = false;
    if let Ok(listing) = std::fs::read_dir("/proc") {
        for entry in listing.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            exists |= p == pid;
            if let Some(parent) = parent_of(p) {
                children.entry(parent).or_default().push(p);
            }
        }
    }
    if !exists {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        if out.contains(&p) {
            continue;
        }
        out.push(p);
        if let Some(kids) = children.get(&p) {
            frontier.extend(kids);
        }
    }
    out
}

/// The parent of `pid`, from /proc/PID/stat (the command name may hold
/// spaces and parentheses: the fields that follow come after the last ')').
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_and_the_children_it_forked_all_die() {
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 1000 & sleep 1001 & wait"])
            .spawn()
            .unwrap();
        let pid = shell.id() as i32;
        let mut tree = Vec::new();
        for _ in 0..100 {
            tree = descendants_and_self(pid);
            if tree.len() >= 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(tree.len(), 3, "sh and its two sleeps: {tree:?}");
        kill_tree(pid);
        shell.wait().unwrap();
        for p in &tree[1..] {
            // Reaped by init once dead, or a zombie for a moment: either
            // way it is no longer running.
            for _ in 0..100 {
                let state = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                let running = state
                    .rfind(')')
                    .and_then(|i| state[i + 1..].split_whitespace().next())
                    .is_some_and(|s| s != "Z" && s != "X");
                if !running {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let state = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            assert!(
                state.is_empty() || state.contains(") Z") || state.contains(") X"),
                "{p} still runs: {state}"
            );
        }
    }
}
