//! `volsnap mount` on a real FUSE mount: a real backup of a real Docker
//! volume, in both formats, compared with `diff -r` against what restore
//! writes, a large file read through the mount checked by SHA-256, names
//! that are not UTF-8, modes, owners, times and links as backed up; a
//! crafted repository whose host and backup names hold `/`, `..` and
//! escape sequences shows them as harmless names; SIGTERM unmounts.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A running `volsnap mount`; unmounted (and killed) when dropped.
struct Mounted {
    child: Child,
    dir: PathBuf,
}

impl Mounted {
    fn start(repo: &str, dir: &Path) -> Mounted {
        Mounted::start_with(repo, dir, &[])
    }

    fn start_with(repo: &str, dir: &Path, extra: &[&str]) -> Mounted {
        let mut args = vec!["mount", "--repo", repo, dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut child = spawn_volsnap(&args);
        // Ready once the tree is there (or the command has failed).
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dir.join("hosts").exists() {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                panic!("volsnap mount exited with {status}: {}", stderr(&out));
            }
            assert!(Instant::now() < deadline, "the mount never appeared");
            std::thread::sleep(Duration::from_millis(100));
        }
        Mounted {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// Stops it as an operator would (SIGTERM); its exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "mount did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn mounted(dir: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    table.lines().any(|l| l.split(' ').nth(4) == Some(dir))
}

fn names(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    names
}

fn only(dir: &Path) -> PathBuf {
    let names = names(dir);
    assert_eq!(names.len(), 1, "{}: {names:?}", dir.display());
    dir.join(&names[0])
}

fn sha256(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

fn diff_r(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "diff -r {} {}:\n{}{}",
        a.display(),
        b.display(),
        stdout(&out),
        stderr(&out)
    );
}

const NOT_UTF8: &[u8] = b"caf\xe9-latin1.txt";

fn fill(src: &Path) {
    use std::fs;
    let p = |rel: &str| src.join(rel);
    fs::create_dir_all(p("dir")).unwrap();
    fs::create_dir_all(p("deep/a/b")).unwrap();
    fs::write(p("dir/file.txt"), b"hello volsnap\n").unwrap();
    fs::set_permissions(p("dir/file.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(p("dir/file.txt"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::symlink("file.txt", p("dir/rel-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/absolute/target", p("dir/dangling")).unwrap();
    fs::hard_link(p("dir/file.txt"), p("dir/hard")).unwrap();
    fs::set_permissions(p("deep/a/b"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(p("empty-file"), b"").unwrap();
    fs::write(p("with space & ünïcode.txt"), b"names").unwrap();
    fs::write(src.join(OsStr::from_bytes(NOT_UTF8)), b"latin-1\n").unwrap();
    // Many chunks, incompressible.
    fs::write(p("big.bin"), pseudo_random(24 << 20, 0x2545f4914f6cdd1d)).unwrap();
    let t = nix::sys::time::TimeSpec::new(1_600_000_000, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &p("dir/file.txt"),
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

use std::os::unix::fs::PermissionsExt;

/// The one volume directory of the one backup of the one stack of the
/// one host in a mount.
fn volume_in(mount: &Path) -> PathBuf {
    let stack = only(&only(&mount.join("hosts")));
    let backup = names(&stack).into_iter().find(|n| n != "latest").unwrap();
    only(&stack.join(backup))
}

#[test]
fn a_mounted_backup_is_the_restored_backup_and_names_stay_harmless() {
    let mut p = Project::new("mnt");
    let vol = p.volume("data", &[]);
    let src = volume_path(&vol);
    fill(&src);
    let mount = format!("{vol}:/data");
    p.service("app", &[], &["-v", &mount], &["idle"]);
    let project = p.name.clone();
    let repo = p.tempdir().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    ok(volsnap(&["init", "--repo", &repo_s]));
    let id = serde_json::from_str::<serde_json::Value>(&ok(volsnap(&backup_args(
        &project,
        &repo,
        &["--strategy", "cold", "--json"],
    ))))
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let restored_to = p.tempdir();
    ok(volsnap(&[
        "restore",
        "--repo",
        &repo_s,
        &id,
        "--target-dir",
        restored_to.to_str().unwrap(),
    ]));
    let restored = only(&restored_to);

    // A mount point must be an empty directory.
    let busy = p.tempdir();
    std::fs::write(busy.join("kept"), b"x").unwrap();
    let refused = volsnap(&["mount", "--repo", &repo_s, busy.to_str().unwrap()]);
    assert_fails(&refused, 2, "not empty");
    // Nor under a directory another user may change (no sticky bit): the
    // empty directory could be swapped for a link before the mount.
    let open = p.tempdir().join("open");
    std::fs::create_dir_all(open.join("mnt")).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let refused = volsnap(&[
        "mount",
        "--repo",
        &repo_s,
        open.join("mnt").to_str().unwrap(),
    ]);
    assert_fails(&refused, 2, "can be changed by another user");
    assert!(!mounted(&open.join("mnt")));

    let dir = p.tempdir();
    let m = Mounted::start(&repo_s, &dir);
    assert!(mounted(&dir));
    let host = only(&dir.join("hosts"));
    let stack = only(&host);
    assert_eq!(
        stack.file_name().unwrap(),
        OsStr::new(&format!("project={project}")),
        "a stack is named by its selection"
    );
    assert_eq!(
        std::fs::read_link(stack.join("latest")).unwrap(),
        Path::new(&id),
        "latest names the newest backup"
    );
    let volume = stack.join(&id).join(&vol);
    diff_r(&restored, &volume);
    // Through the `latest` link too.
    diff_r(&restored, &stack.join("latest").join(&vol));

    // A file of many chunks, read through the mount.
    let started = Instant::now();
    let through_mount = sha256(&volume.join("big.bin"));
    let took = started.elapsed();
    assert_eq!(through_mount, sha256(&src.join("big.bin")));
    eprintln!(
        "mount: read 24 MiB through the mount in {:.3} s ({:.0} MiB/s)",
        took.as_secs_f64(),
        24.0 / took.as_secs_f64()
    );
    // Names that are not UTF-8, as bytes.
    assert!(
        names(&volume).iter().any(|n| n.as_bytes() == NOT_UTF8),
        "{:?}",
        names(&volume)
    );
    // Modes, owners, times and links as backed up.
    let file = std::fs::symlink_metadata(volume.join("dir/file.txt")).unwrap();
    assert_eq!(file.mode() & 0o7777, 0o640);
    assert_eq!((file.uid(), file.gid()), (1234, 5678));
    assert_eq!(file.mtime(), 1_600_000_000);
    let hard = std::fs::symlink_metadata(volume.join("dir/hard")).unwrap();
    assert_eq!(hard.ino(), file.ino(), "a hard link is one file");
    assert_eq!(file.nlink(), 2);
    assert_eq!(
        std::fs::read_link(volume.join("dir/dangling")).unwrap(),
        Path::new("/nonexistent/absolute/target")
    );
    let private = std::fs::symlink_metadata(volume.join("deep/a/b")).unwrap();
    assert_eq!(private.mode() & 0o7777, 0o700);
    // Read-only: nothing can be written, whoever asks.
    assert!(std::fs::write(volume.join("new.txt"), b"x").is_err());
    assert!(std::fs::remove_file(volume.join("empty-file")).is_err());
    let options = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = options
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
        .unwrap();
    let flags = line.split(' ').nth(5).unwrap();
    for flag in ["ro", "nosuid", "nodev"] {
        assert!(
            flags.split(',').any(|f| f == flag),
            "{flag} missing: {line}"
        );
    }

    assert!(m.stop().success(), "mount did not stop cleanly on SIGTERM");
    assert!(!mounted(&dir), "still mounted after SIGTERM");
    assert!(names(&dir).is_empty(), "left something in the mount point");

    // The same data in format 1: the same tree through the mount.
    let tar_repo = p.tempdir().join("tar-repo");
    let tar_repo_s = tar_repo.to_str().unwrap().to_string();
    ok(volsnap(&["init", "--repo", &tar_repo_s, "--format", "tar"]));
    ok(volsnap(&backup_args(
        &project,
        &tar_repo,
        &["--strategy", "cold"],
    )));
    let m = Mounted::start(&tar_repo_s, &dir);
    let tar_volume = volume_in(&dir);
    diff_r(&restored, &tar_volume);
    assert_eq!(sha256(&tar_volume.join("big.bin")), through_mount);
    assert!(m.stop().success());

    // An encrypted repository: mounted with an identity only.
    let (identity, recipient) = keygen(&p.tempdir(), "reader");
    let enc_repo = p.tempdir().join("enc-repo");
    let enc_repo_s = enc_repo.to_str().unwrap().to_string();
    ok(volsnap(&[
        "init",
        "--repo",
        &enc_repo_s,
        "--recipient",
        &recipient,
    ]));
    ok(volsnap(&backup_args(
        &project,
        &enc_repo,
        &["--strategy", "cold"],
    )));
    let refused = volsnap(&["mount", "--repo", &enc_repo_s, dir.to_str().unwrap()]);
    assert_fails(&refused, 2, "no identity");
    assert!(!mounted(&dir));
    let m = Mounted::start_with(
        &enc_repo_s,
        &dir,
        &["--identity", identity.to_str().unwrap()],
    );
    let enc_volume = volume_in(&dir);
    diff_r(&restored, &enc_volume);
    assert_eq!(sha256(&enc_volume.join("big.bin")), through_mount);
    assert!(m.stop().success());

    // A crafted repository: copies of the real backup's commit whose host
    // and stack are an attacker's. Internally consistent (the trees are
    // the real ones), so they list; their names must stay names. A host
    // with an escape sequence is set aside by the repository's own checks.
    let commits = repo.join("snapshots");
    let real = std::fs::read_dir(&commits)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let commit: serde_json::Value = serde_json::from_slice(&std::fs::read(&real).unwrap()).unwrap();
    // The third forges the real backup itself (same host, stack and id,
    // an earlier start, no valid signature): it must not take its name.
    let real_host = commit["host"].as_str().unwrap().to_string();
    let real_selection = commit["selection"].as_str().unwrap().to_string();
    for (host, selection, started) in [
        ("../../etc", "--project ../../../tmp/evil", None),
        ("evil\x1b]0;owned\x07", "--project x", None),
        (
            real_host.as_str(),
            real_selection.as_str(),
            Some("2026-01-01T00:00:00Z"),
        ),
    ] {
        let mut crafted = commit.clone();
        crafted["host"] = serde_json::json!(host);
        crafted["selection"] = serde_json::json!(selection);
        if let Some(started) = started {
            crafted["started_at"] = serde_json::json!(started);
        }
        common::craft::put_named(&repo, "snapshots", &serde_json::to_vec(&crafted).unwrap());
    }
    let parent = dir.parent().unwrap().to_path_buf();
    let around = names(&parent);
    let m = Mounted::start(&repo_s, &dir);
    let hosts = names(&dir.join("hosts"));
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    let shown = std::ffi::OsString::from("%2E.%2F..%2Fetc");
    assert!(hosts.contains(&shown), "{hosts:?}");
    let evil_stack = only(&dir.join("hosts").join(&shown));
    assert_eq!(
        evil_stack.file_name().unwrap(),
        OsStr::new("project=..%2F..%2F..%2Ftmp%2Fevil")
    );
    let unverified = format!("{id}~unverified");
    assert_eq!(
        names(&evil_stack),
        vec![std::ffi::OsString::from(&unverified)],
        "its backup, marked, and no latest (it is not its host's)"
    );
    // Its trees are the real ones: browsable, and nothing outside moved.
    diff_r(&restored, &evil_stack.join(&unverified).join(&vol));
    // The forged copy of the real backup: beside it, marked; the real one
    // keeps its name and latest.
    let real_stack = only(&dir.join("hosts").join(&real_host));
    assert_eq!(
        names(&real_stack),
        vec![
            std::ffi::OsString::from(&id),
            std::ffi::OsString::from(&unverified),
            std::ffi::OsString::from("latest"),
        ]
    );
    assert_eq!(
        std::fs::read_link(real_stack.join("latest")).unwrap(),
        Path::new(&id)
    );
    assert_eq!(
        names(&parent),
        around,
        "something appeared beside the mount"
    );
    assert!(!Path::new("/tmp/evil").exists());
    assert!(m.stop().success());
}
