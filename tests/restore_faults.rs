//! A restore of several volumes is all or nothing, and survives a kill at
//! any point: failed or killed before it commits, every volume keeps its old
//! content; killed after (while the old content is being deleted),
//! `recover` finishes it. Never a volume with half old, half new content.
//!
//! Needs the `fault-injection` feature (scripts/test.sh enables it).

mod common;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

/// A stopped two-volume stack with a backup of it, and each volume changed
/// since ("new" is the backup, "old" what the volumes hold now).
struct Setup {
    p: Project,
    repo: PathBuf,
    id: String,
    /// (volume path, a pristine copy of the backed-up content)
    volumes: Vec<(PathBuf, PathBuf)>,
}

fn setup(prefix: &str) -> Setup {
    let mut p = Project::new(prefix);
    let repo = p.tar_repo();
    let mut volumes = Vec::new();
    let mut args: Vec<String> = Vec::new();
    for short in ["a", "b"] {
        let vol = p.volume(short, &[]);
        let path = volume_path(&vol);
        make_fixture(&path);
        // An old tree big enough that deleting it takes a while.
        for i in 0..2000 {
            std::fs::write(path.join(format!("old-{i:04}")), b"old").unwrap();
        }
        args.push("-v".into());
        args.push(format!("{vol}:/{short}"));
        volumes.push((path, PathBuf::new()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let app = p.service("app", &[], &args, &["idle"]);
    let out = ok(volsnap(&backup_args(
        &p.name,
        &repo,
        &["--strategy", "cold", "--json"],
    )));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = report["id"].as_str().unwrap().to_string();
    docker(&["stop", "-t", "1", &app]);
    for (path, pristine) in volumes.iter_mut() {
        *pristine = p.tempdir().join("copy");
        let status = std::process::Command::new("cp")
            .args(["-a", path.to_str().unwrap(), pristine.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        // Changed after the backup: the restore must bring the backup back,
        // or leave exactly this.
        std::fs::write(path.join("dir/file.txt"), b"changed later").unwrap();
        std::fs::write(path.join("added-later"), b"new since the backup").unwrap();
    }
    Setup {
        p,
        repo,
        id,
        volumes,
    }
}

fn restore_args(s: &Setup) -> Vec<&str> {
    vec![
        "restore",
        "--repo",
        s.repo.to_str().unwrap(),
        &s.id,
        "--force",
    ]
}

/// Each volume holds exactly what it held before the restore.
fn assert_all_old(s: &Setup) {
    for (path, _) in &s.volumes {
        assert_eq!(
            std::fs::read(path.join("dir/file.txt")).unwrap(),
            b"changed later",
            "{} is not wholly old",
            path.display()
        );
        assert!(path.join("added-later").exists());
        assert!(path.join("old-1999").exists());
        assert_no_leftovers(path);
    }
}

/// Each volume holds exactly the backup.
fn assert_all_new(s: &Setup) {
    for (path, pristine) in &s.volumes {
        assert!(!path.join("added-later").exists(), "{}", path.display());
        assert_same_tree(pristine, path);
        assert_no_leftovers(path);
    }
}

fn assert_no_leftovers(path: &Path) {
    let ours: Vec<String> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".volsnap-"))
        .collect();
    assert!(ours.is_empty(), "{} keeps {ours:?}", path.display());
}

fn journals() -> usize {
    std::fs::read_dir(state_dir().join("journal"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_failure_in_the_second_volume_leaves_every_volume_as_it_was() {
    let s = setup("rsfail");
    for point in ["fail:stage:1", "fail:swap:1"] {
        let out = volsnap_env(&restore_args(&s), &[("VOLSNAP_FAULT_RESTORE", point)]);
        assert_eq!(out.status.code(), Some(1), "{point}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("as it was"),
            "{point}: {}",
            stderr(&out)
        );
        assert_all_old(&s);
        assert_eq!(journals(), 0, "{point}: nothing left to recover");
    }
    // Without a fault the same restore brings the backup back.
    ok(volsnap(&restore_args(&s)));
    assert_all_new(&s);
    drop(s.p);
}

#[test]
fn a_restore_killed_before_it_commits_is_rolled_back_by_recover() {
    let s = setup("rskill");
    for point in ["kill:stage:1", "kill:swap:1", "kill:swap:0"] {
        let out = volsnap_env(&restore_args(&s), &[("VOLSNAP_FAULT_RESTORE", point)]);
        assert_eq!(out.status.signal(), Some(9), "{point}: {}", stderr(&out));
        ok(volsnap(&["recover"]));
        assert_all_old(&s);
        assert_eq!(journals(), 0, "{point}: journal done");
    }
    drop(s.p);
}

#[test]
fn a_restore_killed_while_deleting_the_old_content_is_finished_by_recover() {
    let s = setup("rsdelete");
    let hold = s.repo.join("hold");
    let mut child = spawn_volsnap_env(
        &restore_args(&s),
        &[
            ("VOLSNAP_FAULT_RESTORE", "hold:delete:0"),
            ("VOLSNAP_FAULT_HOLD_FILE", hold.to_str().unwrap()),
        ],
    );
    wait_until("the restore to reach its deletion phase", 120, || {
        hold.exists()
    });
    // The deletion got half way through the first volume's old content
    // when the power went: SIGKILL now.
    let (first, _) = &s.volumes[0];
    let aside = std::fs::read_dir(first)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".volsnap-replaced-")
        })
        .expect("the old content is set aside");
    for i in 0..1000 {
        std::fs::remove_file(aside.join(format!("old-{i:04}"))).unwrap();
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9));

    let report = ok(volsnap(&["recover"]));
    assert!(report.contains("finish a restore"), "{report}");
    assert_all_new(&s);
    assert_eq!(journals(), 0, "journal done");
    drop(s.p);
}
