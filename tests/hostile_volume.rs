//! Hostile volumes: a container owns its volume and may swap anything in it
//! while volsnap, as root, reads it. The swaps happen from inside a real
//! container (`docker exec`) at the exact moment an attacker would want:
//! the run holds just before it opens the entry (fault injection), after
//! listing its directory. None of them may put a host file into the backup,
//! hang the backup, or read a device.
//!
//! Needs the `fault-injection` feature (scripts/test.sh enables it).

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A one-service stack whose container mounts a fresh volume at /data, with
/// `setup` run inside it first.
fn stack(p: &mut Project, setup: &str) -> (String, PathBuf) {
    let vol = p.volume("data", &[]);
    let mount = format!("{vol}:/data");
    let app = p.service("app", &[], &["-v", &mount], &["idle"]);
    wait_until("the container to run", 30, || is_running(&app));
    docker(&["exec", &app, "sh", "-c", setup]);
    (app, volume_path(&vol))
}

/// Runs an online backup that holds before opening `entry`, runs `swap`
/// inside the container there, and lets the backup go on. Returns the
/// backup's JSON report and its manifest.
fn backup_with_swap(p: &mut Project, app: &str, entry: &str, swap: &str) -> (Value, Value) {
    let repo = p.tar_repo();
    let hold = p.tempdir().join("hold");
    let args = backup_args(&p.name, &repo, &["--strategy", "online", "--json"]);
    let mut child = spawn_volsnap_env(
        &args,
        &[
            ("VOLSNAP_FAULT_HOLD_BEFORE_OPEN", entry),
            ("VOLSNAP_FAULT_HOLD_FILE", hold.to_str().unwrap()),
        ],
    );
    wait_until(&format!("the backup to reach {entry}"), 60, || {
        hold.exists()
    });
    docker(&["exec", app, "sh", "-c", swap]);
    std::fs::remove_file(&hold).unwrap();
    // A backup that hangs on a FIFO would never end: give it ample time,
    // then kill it and fail (this guards against a hang, it measures nothing).
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the backup hung after {entry} was swapped ({swap})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = report["id"].as_str().unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(repo.join(id).join("manifest.json")).unwrap())
            .unwrap();
    verify_deep(&repo, id);
    (report, manifest)
}

fn entry_paths(manifest: &Value) -> Vec<String> {
    manifest["volumes"][0]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

fn entry<'m>(manifest: &'m Value, path: &str) -> Option<&'m Value> {
    manifest["volumes"][0]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
}

fn changed(report: &Value) -> Vec<String> {
    report["volumes"][0]["changed_during_read"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_parent_directory_swapped_for_a_symlink_to_root_does_not_lead_outside_the_volume() {
    let mut p = Project::new("hvroot");
    // x/etc exists in the volume: once x is a symlink to /, "x/etc" by
    // path would be the host's /etc.
    let (app, source) = stack(
        &mut p,
        "mkdir -p /data/x/etc && echo mine > /data/x/etc/own",
    );
    let (_, manifest) = backup_with_swap(
        &mut p,
        &app,
        "x/etc",
        "mv /data/x /data/x.moved && ln -s / /data/x",
    );
    let paths = entry_paths(&manifest);
    for host_file in ["x/etc/passwd", "x/etc/shadow", "x/etc/hostname"] {
        assert!(
            !paths.iter().any(|p| p == host_file),
            "the host's {host_file} got into the backup: {paths:?}"
        );
    }
    // The directory that was listed is the one read, wherever it moved.
    assert!(paths.iter().any(|p| p == "x/etc/own"), "{paths:?}");
    assert!(source.join("x").is_symlink());
}

#[test]
fn a_directory_swapped_for_a_symlink_is_not_followed() {
    let mut p = Project::new("hvdir");
    let (app, _) = stack(&mut p, "mkdir -p /data/d && echo mine > /data/d/own");
    let (report, manifest) =
        backup_with_swap(&mut p, &app, "d", "rm -rf /data/d && ln -s /etc /data/d");
    let paths = entry_paths(&manifest);
    assert!(
        !paths.iter().any(|p| p.starts_with("d/")),
        "something under the swapped directory was archived: {paths:?}"
    );
    assert!(changed(&report).contains(&"d".to_string()), "{report}");
}

#[test]
fn a_file_swapped_for_a_fifo_does_not_hang_the_backup() {
    let mut p = Project::new("hvfifo");
    let (app, _) = stack(
        &mut p,
        "head -c 1000000 /dev/urandom > /data/a-big && echo x > /data/b-file && echo y > /data/c-after",
    );
    let (report, manifest) = backup_with_swap(
        &mut p,
        &app,
        "b-file",
        "rm /data/b-file && mkfifo /data/b-file",
    );
    assert!(changed(&report).contains(&"b-file".to_string()), "{report}");
    assert!(
        entry(&manifest, "b-file").is_none_or(|e| e["kind"] != "file"),
        "the FIFO was archived as a file: {manifest}"
    );
    assert_eq!(entry(&manifest, "c-after").unwrap()["kind"], "file");
}

#[test]
fn a_file_swapped_for_a_device_node_is_never_read() {
    let mut p = Project::new("hvdev");
    let (app, source) = stack(&mut p, "echo x > /data/f && echo y > /data/g");
    // /dev/urandom's numbers: read as a file, it would put host device
    // bytes into the backup.
    let (report, manifest) =
        backup_with_swap(&mut p, &app, "f", "rm /data/f && mknod /data/f c 1 9");
    assert!(changed(&report).contains(&"f".to_string()), "{report}");
    assert!(
        entry(&manifest, "f").is_none_or(|e| e["kind"] != "file"),
        "the device was read as a file: {manifest}"
    );
    assert!(Path::new(&source.join("f")).exists());
}

#[test]
fn names_that_are_not_utf8_survive_backup_verify_and_restore_through_a_container() {
    let mut p = Project::new("hvbytes");
    // Two names that render alike (U+FFFD) and one Latin-1 name, written
    // by the container itself.
    let (_app, source) = stack(
        &mut p,
        "printf one > /data/$(printf '\\377') && printf two > /data/$(printf '\\376') \
         && mkdir /data/caf$(printf '\\351') && printf three > /data/caf$(printf '\\351')/x \
         && ln -s $(printf '\\377') /data/link",
    );
    let repo = p.tar_repo();
    let repo_s = repo.to_str().unwrap();
    let report: Value = serde_json::from_str(&ok(volsnap(&backup_args(
        &p.name,
        &repo,
        &["--strategy", "cold", "--json"],
    ))))
    .unwrap();
    let id = report["id"].as_str().unwrap();
    assert_eq!(report["volumes"][0]["files"], 3, "{report}");
    ok(volsnap(&["verify", "--repo", repo_s, id]));
    ok(volsnap(&["verify", "--repo", repo_s, id, "--deep"]));
    let restored = format!("{}_restored", p.name);
    p.adopt_volume(&restored);
    let mapping = format!("{}_data={restored}", p.name);
    ok(volsnap(&[
        "restore", "--repo", repo_s, id, "--volume", &mapping,
    ]));
    assert_same_tree(&source, &volume_path(&restored));
    use std::os::unix::ffi::OsStrExt;
    let at = |name: &[u8]| volume_path(&restored).join(std::ffi::OsStr::from_bytes(name));
    assert_eq!(std::fs::read(at(b"\xff")).unwrap(), b"one");
    assert_eq!(std::fs::read(at(b"\xfe")).unwrap(), b"two");
    assert_eq!(std::fs::read(at(b"caf\xe9/x")).unwrap(), b"three");
    assert_eq!(
        std::fs::read_link(at(b"link"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"\xff"
    );
}
