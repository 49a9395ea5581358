//! The conventions of a Debian tool, made from the same definitions as
//! `--help`: completion scripts for the shells, and a man page for volsnap
//! and for every subcommand, which `man` renders.

mod common;

use common::*;
use std::process::Command;

/// Every subcommand name, from `volsnap --help`'s command list.
fn subcommands() -> Vec<String> {
    let help = ok(volsnap(&["--help"]));
    let list = help
        .split("Commands:")
        .nth(1)
        .expect("no command list in --help");
    list.lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A wrapped description continues further in.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn completions_name_every_subcommand_in_each_shell() {
    let names = subcommands();
    assert!(names.len() > 20, "{names:?}");
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(volsnap(&["completions", shell]));
        for name in &names {
            assert!(script.contains(name.as_str()), "{shell}: no {name}");
        }
    }
    let bash = ok(volsnap(&["completions", "bash"]));
    assert!(bash.contains("complete -F _volsnap"), "{bash}");
    // bash itself accepts the script.
    let checked = Command::new("bash")
        .args(["-n", "-c", &bash])
        .output()
        .unwrap();
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert_fails(&volsnap(&["completions", "tcsh"]), 2, "tcsh");
}

#[test]
fn a_man_page_for_volsnap_and_each_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    ok(volsnap(&["man", "--dir", out.to_str().unwrap()]));
    let main = std::fs::read_to_string(out.join("volsnap.1")).unwrap();
    assert!(
        main.starts_with(".ie") || main.contains(".TH volsnap"),
        "{main}"
    );
    for name in subcommands() {
        let page = out.join(format!("volsnap-{name}.1"));
        let text =
            std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("no page for {name}: {e}"));
        assert!(text.contains(".TH"), "{name}: not a man page");
    }
    // The backup page carries the options --help shows.
    let backup = std::fs::read_to_string(out.join("volsnap-backup.1")).unwrap();
    assert!(backup.contains("strategy"), "{backup}");
}
