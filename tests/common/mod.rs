//! Helpers shared by the integration tests: the real volsnap binary, the
//! real Docker daemon (through the docker CLI), fixtures and tree checks.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod craft;
pub mod servers;

pub const IMAGE: &str = "volsnap-test/busybox:1";

thread_local! {
    /// Tests run in parallel threads; each gets its own state directory
    /// (host lock, journals), as separate hosts would.
    static STATE_DIR: tempfile::TempDir = tempfile::tempdir().expect("state dir");
}

/// This test thread's volsnap state directory.
pub fn state_dir() -> PathBuf {
    STATE_DIR.with(|d| d.path().to_path_buf())
}

/// Runs the volsnap binary under test.
pub fn volsnap(args: &[&str]) -> Output {
    volsnap_env(args, &[])
}

pub fn volsnap_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volsnap"));
    cmd.args(args)
        .env_remove("VOLSNAP_REPO")
        .env_remove("RUST_LOG")
        .env("VOLSNAP_STATE_DIR", state_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("cannot run volsnap")
}

/// Starts volsnap in the background (output captured), for tests that act
/// on a run while it is under way.
pub fn spawn_volsnap(args: &[&str]) -> std::process::Child {
    spawn_volsnap_env(args, &[])
}

pub fn spawn_volsnap_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_volsnap"))
        .args(args)
        .env_remove("VOLSNAP_REPO")
        .env("VOLSNAP_STATE_DIR", state_dir())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot start volsnap")
}

/// The 1-based number of the first plan step named `name`, as the
/// fault-injection variables count them.
pub fn step_number(project: &str, strategy: &str, name: &str) -> usize {
    let plan = ok(volsnap(&[
        "plan",
        "--project",
        project,
        "--strategy",
        strategy,
        "--json",
    ]));
    let plan: serde_json::Value = serde_json::from_str(&plan).expect("plan --json");
    plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .position(|s| s["action"]["action"] == name)
        .unwrap_or_else(|| panic!("no {name} step in the plan: {plan}"))
        + 1
}

/// Makes `dir` (empty) a format-1 repository: `volsnap init --format tar`.
pub fn init_tar(dir: &Path) {
    ok(volsnap(&[
        "init",
        "--repo",
        dir.to_str().expect("test paths are UTF-8"),
        "--format",
        "tar",
    ]));
}

/// What `dir` holds besides the format-1 marker.
pub fn entries_besides_marker(dir: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "volsnap-format-1")
        .collect()
}

/// The arguments of `volsnap backup --project PROJECT --repo REPO`, then `extra`.
pub fn backup_args<'a>(project: &'a str, repo: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let repo = repo.to_str().expect("test paths are UTF-8");
    let mut args = vec!["backup", "--project", project, "--repo", repo];
    args.extend_from_slice(extra);
    args
}

/// `volsnap verify --repo REPO --all --read-data-subset 100` (format 2:
/// every index, pack and backup, every pack read whole), which must pass.
pub fn verify_all_packs(repo: &Path) -> String {
    ok(volsnap(&[
        "verify",
        "--repo",
        repo.to_str().expect("test paths are UTF-8"),
        "--all",
        "--read-data-subset",
        "100",
    ]))
}

/// An online backup of `project` into `repo`, which must succeed; its id.
pub fn online_backup_id(project: &str, repo: &Path) -> String {
    let out = ok(volsnap(&backup_args(
        project,
        repo,
        &["--strategy", "online", "--json"],
    )));
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    report["id"].as_str().expect("a backup id").to_string()
}

/// `volsnap verify --repo REPO ID --deep`, which must pass.
pub fn verify_deep(repo: &Path, id: &str) -> String {
    ok(volsnap(&[
        "verify",
        "--repo",
        repo.to_str().expect("test paths are UTF-8"),
        id,
        "--deep",
    ]))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
/// A run that failed as it should: exit `code`, `expect` in what it said,
/// and no panic or Debug dump.
pub fn assert_fails(out: &Output, code: i32, expect: &str) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code} for {expect:?}, got: {err}"
    );
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("Error {"),
        "no panics or Debug dumps: {err}"
    );
}

pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "volsnap failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Runs `docker …`, panicking with its stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("cannot run the docker CLI");
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Fails loudly when the environment that scripts/setup-host.sh prepares
/// is missing, instead of skipping silently.
pub fn require_docker() {
    let ready = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ready,
        "these tests need a running Docker daemon and the image {IMAGE}: run scripts/setup-host.sh as root first"
    );
}

/// A compose-style project whose containers and volumes are removed on drop.
pub struct Project {
    pub name: String,
    containers: Vec<String>,
    volumes: Vec<String>,
    networks: Vec<String>,
    pub dirs: Vec<tempfile::TempDir>,
}

impl Project {
    pub fn new(prefix: &str) -> Project {
        require_docker();
        let name = format!("vt{}{}", prefix, std::process::id());
        Project {
            name,
            containers: vec![],
            volumes: vec![],
            networks: vec![],
            dirs: vec![],
        }
    }

    /// Creates a named volume `<project>_<short>` and returns its name.
    pub fn volume(&mut self, short: &str, opts: &[&str]) -> String {
        let name = format!("{}_{short}", self.name);
        let mut args = vec!["volume", "create"];
        for o in opts {
            args.push("--opt");
            args.push(o);
        }
        args.push(&name);
        docker(&args);
        self.volumes.push(name.clone());
        name
    }

    /// Tracks a volume created by volsnap so it is removed too.
    pub fn adopt_volume(&mut self, name: &str) {
        self.volumes.push(name.to_string());
    }

    /// Creates a network `<project>_<short>` (removed on drop).
    pub fn network(&mut self, short: &str) -> String {
        let name = format!("{}_{short}", self.name);
        docker(&["network", "create", &name]);
        self.networks.push(name.clone());
        name
    }

    /// Starts a container of service `service` with compose labels.
    pub fn service(
        &mut self,
        service: &str,
        depends_on: &[&str],
        extra: &[&str],
        cmd: &[&str],
    ) -> String {
        self.service_of(IMAGE, "none", service, depends_on, extra, cmd)
    }

    /// The same, of `image` on `network` (reachable there by its service name).
    pub fn service_of(
        &mut self,
        image: &str,
        network: &str,
        service: &str,
        depends_on: &[&str],
        extra: &[&str],
        cmd: &[&str],
    ) -> String {
        let cname = format!("{}-{service}", self.name);
        let project_label = format!("com.docker.compose.project={}", self.name);
        let service_label = format!("com.docker.compose.service={service}");
        let deps: Vec<String> = depends_on
            .iter()
            .map(|d| format!("{d}:service_started:false"))
            .collect();
        let deps_label = format!("com.docker.compose.depends_on={}", deps.join(","));
        let mut args = vec![
            "run",
            "-d",
            "--network",
            network,
            "--name",
            &cname,
            "--label",
            &project_label,
            "--label",
            &service_label,
        ];
        if !depends_on.is_empty() {
            args.push("--label");
            args.push(&deps_label);
        }
        if network != "none" {
            args.extend_from_slice(&["--network-alias", service]);
        }
        args.extend_from_slice(extra);
        args.push(image);
        args.extend_from_slice(cmd);
        docker(&args);
        self.containers.push(cname.clone());
        cname
    }

    /// A format-1 repository (`volsnap init --format tar`): the format these
    /// tests read the files of; format 2 has tests/chunked.rs.
    pub fn tar_repo(&mut self) -> PathBuf {
        let dir = self.tempdir();
        init_tar(&dir);
        dir
    }

    pub fn tempdir(&mut self) -> PathBuf {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        self.dirs.push(dir);
        path
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        for v in &self.volumes {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", v])
                .output();
        }
        for n in &self.networks {
            let _ = Command::new("docker").args(["network", "rm", n]).output();
        }
    }
}

/// Polls `ready` until it holds, failing the test with `what` after `secs`.
pub fn wait_until(what: &str, secs: u64, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Host path of a named volume's data.
pub fn volume_path(name: &str) -> PathBuf {
    PathBuf::from(docker(&[
        "volume",
        "inspect",
        "-f",
        "{{.Mountpoint}}",
        name,
    ]))
}

/// `docker inspect` of one field.
pub fn inspect(container: &str, format: &str) -> String {
    docker(&["inspect", "-f", format, container])
}

pub fn is_running(container: &str) -> bool {
    inspect(container, "{{.State.Running}}") == "true"
}

/// Fills `root` with every kind of thing an archive must preserve.
pub fn make_fixture(root: &Path) {
    use std::fs;
    let p = |rel: &str| root.join(rel);
    fs::create_dir_all(p("dir/empty")).unwrap();
    fs::create_dir_all(p("deep/a/b/c/d")).unwrap();
    fs::write(p("dir/file.txt"), b"hello volsnap\n").unwrap();
    fs::set_permissions(p("dir/file.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(p("dir/file.txt"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::symlink("file.txt", p("dir/rel-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/absolute/target", p("dir/dangling")).unwrap();
    fs::hard_link(p("dir/file.txt"), p("dir/hard")).unwrap();
    fs::hard_link(p("dir/file.txt"), p("deep/a/hard2")).unwrap();
    fs::set_permissions(p("deep"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(p("deep/a/b"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(p("deep/a"), Some(999), Some(999)).unwrap();
    // Incompressible content.
    fs::write(p("blob.bin"), pseudo_random(300 * 1024, 0x9e3779b97f4a7c15)).unwrap();
    // Sparse: 8 MiB with a little data in the middle.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(p("sparse.img")).unwrap();
        f.seek(SeekFrom::Start(4 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
        f.set_len(8 << 20).unwrap();
    }
    let long = "n".repeat(120);
    fs::create_dir_all(p(&format!("long/{long}"))).unwrap();
    fs::write(p(&format!("long/{long}/{long}.txt")), b"long names").unwrap();
    fs::write(p("with space & ünïcode.txt"), b"names").unwrap();
    nix::unistd::mkfifo(&p("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    xattr::set(p("dir/file.txt"), "user.volsnap", b"kept").unwrap();
    fs::write(p("empty-file"), b"").unwrap();
    // Fixed mtimes, so a restore that drops them is caught.
    for rel in ["dir/file.txt", "blob.bin", "dir/empty", "deep/a/b"] {
        let t = nix::sys::time::TimeSpec::new(1_600_000_000, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &p(rel),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
}

/// Everything observable about one entry.
#[derive(Debug, PartialEq)]
struct EntryFacts {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<i64>,
    content: Option<Vec<u8>>,
    link: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// Index of the first path sharing this inode (hard-link structure).
    link_group: Option<String>,
}

fn facts(root: &Path, check_root_mtime: bool) -> BTreeMap<String, EntryFacts> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        let mut link_group = None;
        if ft.is_file() && meta.nlink() > 1 {
            let first = inodes
                .entry(meta.ino())
                .or_insert_with(|| rel.clone())
                .clone();
            link_group = Some(first);
        }
        let xattrs = if ft.is_symlink() {
            BTreeMap::new()
        } else {
            xattr::list(&path)
                .map(|names| {
                    names
                        .filter(|n| n.to_string_lossy().starts_with("user."))
                        .map(|n| {
                            let v = xattr::get(&path, &n).unwrap().unwrap_or_default();
                            (n.to_string_lossy().into_owned(), v)
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        // Directory mtimes are checked except the root's, which the test may touch.
        let mtime = if rel.is_empty() && !check_root_mtime {
            None
        } else {
            Some(meta.mtime())
        };
        out.insert(
            rel.clone(),
            EntryFacts {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime,
                content: if ft.is_file() {
                    Some(std::fs::read(&path).unwrap())
                } else {
                    None
                },
                link: if ft.is_symlink() {
                    Some(std::fs::read_link(&path).unwrap())
                } else {
                    None
                },
                xattrs,
                link_group,
            },
        );
        if ft.is_dir() {
            let mut children: Vec<_> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            children.sort();
            children.reverse();
            stack.extend(children);
        }
    }
    out
}

/// Asserts two trees hold the same entries with the same content, modes,
/// owners, mtimes, link targets, xattrs and hard-link structure.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let a = facts(expected, true);
    let b = facts(actual, true);
    let missing: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let extra: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    for (path, fa) in &a {
        let fb = &b[path];
        assert_eq!(
            fa,
            fb,
            "entry {path:?} differs between {} and {}",
            expected.display(),
            actual.display()
        );
    }
}

/// Allocated size of a file (to check sparse files stay sparse).
pub fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// `len` incompressible bytes, the same for the same `seed` (xorshift).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = if seed == 0 { 1 } else { seed };
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A fresh age identity in `dir/NAME.txt` (Debian's age-keygen) and its
/// recipient.
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let file = dir.join(format!("{name}.txt"));
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&file)
        .output()
        .expect("age-keygen is needed (Debian package age; scripts/setup-host.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = Command::new("age-keygen")
        .arg("-y")
        .arg(&file)
        .output()
        .unwrap();
    let recipient = String::from_utf8(public.stdout).unwrap().trim().to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    (file, recipient)
}

/// A btrfs filesystem on a loop device, unmounted and deleted on drop.
pub struct BtrfsFs {
    _dir: tempfile::TempDir,
    pub mnt: PathBuf,
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl BtrfsFs {
    pub fn new() -> BtrfsFs {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("btrfs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        run("truncate", &["-s", "1G", img.to_str().unwrap()]);
        run("mkfs.btrfs", &["-q", img.to_str().unwrap()]);
        run(
            "mount",
            &["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()],
        );
        BtrfsFs { _dir: dir, mnt }
    }

    pub fn subvolume(&self, name: &str) -> PathBuf {
        let path = self.mnt.join(name);
        run("btrfs", &["subvolume", "create", path.to_str().unwrap()]);
        path
    }

    /// Subvolumes whose path mentions volsnap: snapshots left behind.
    pub fn volsnap_subvolumes(&self) -> Vec<String> {
        run("btrfs", &["subvolume", "list", self.mnt.to_str().unwrap()])
            .lines()
            .filter(|l| l.contains("volsnap"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for BtrfsFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

/// `volsnap restore --repo REPO ID --target-dir TARGET`, which must pass.
pub fn restore_to_dir(repo: &str, id: &str, target: &Path, env: &[(&str, &str)]) -> String {
    ok(volsnap_env(
        &[
            "restore",
            "--repo",
            repo,
            id,
            "--target-dir",
            target.to_str().expect("test paths are UTF-8"),
        ],
        env,
    ))
}

/// The one volume directory a restore into `target` wrote.
pub fn restored(target: &Path) -> PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(target)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// The fingerprint of the signing key in state directory `state`, as
/// `volsnap host show` prints it there.
pub fn host_fingerprint(state: &Path) -> String {
    let shown = ok(volsnap_env(
        &["host", "show"],
        &[(
            "VOLSNAP_STATE_DIR",
            state.to_str().expect("test paths are UTF-8"),
        )],
    ));
    shown
        .split_whitespace()
        .find(|w| w.starts_with("ed25519:"))
        .unwrap_or_else(|| panic!("no fingerprint in: {shown}"))
        .to_string()
}

/// Builds image `tag` from `from` with a label more: another image id, as
/// an upgrade gives (the same files here).
pub fn derived_image(from: &str, tag: &str) {
    let mut build = Command::new("docker")
        .args(["build", "-q", "-t", tag, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("docker build");
    {
        use std::io::Write;
        let mut stdin = build.stdin.take().expect("stdin");
        writeln!(stdin, "FROM {from}\nLABEL volsnap.test.tag={tag}").expect("Dockerfile");
    }
    assert!(
        build.wait().expect("docker build").success(),
        "docker build of {tag}"
    );
}
