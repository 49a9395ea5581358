//! `volsnap serve` on a real repository holding real backups from three
//! hosts, one of them named like an attack and holding a file named like
//! one, and one commit whose stored size an attacker raised to 2^63 (a
//! field its signature does not cover, so it still verifies). Checked over
//! HTTP with curl (token, Host header, login links, TLS) and rendered in
//! headless Chromium, asserting on the DOM it built; screenshots are kept
//! under the target directory. A second repository, in format 1, is served
//! beside it; this host's jobs and run log have their page, and the
//! repository page shows what the jobs' retention would free. Nothing in
//! either repository changes.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const EVIL_HOST: &str = "<script>document.title='owned'</script>\"'";
const EVIL_FILE: &str = "<img src=x onerror=document.title='owned'>.html";

fn as_host(host: &str, state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volsnap"))
        .args(args)
        .env_remove("VOLSNAP_REPO")
        .env_remove("RUST_LOG")
        .env("VOLSNAP_STATE_DIR", state)
        .env("VOLSNAP_HOST", host)
        .output()
        .expect("cannot run volsnap")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A running `volsnap serve`, stopped with SIGTERM when dropped.
struct Served {
    child: Child,
    scheme: &'static str,
    port: u16,
    first_link: String,
    token: String,
}

impl Served {
    fn start(host: &str, state: &Path, args: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_volsnap"))
            .arg("serve")
            .args(args)
            .env_remove("VOLSNAP_REPO")
            .env_remove("RUST_LOG")
            .env("VOLSNAP_STATE_DIR", state)
            .env("VOLSNAP_HOST", host)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start volsnap serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("serve printed nothing").unwrap();
        let link_line = lines.next().expect("serve printed no login link").unwrap();
        let scheme = if first.contains("https://") {
            "https"
        } else {
            "http"
        };
        let port = first
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no port in {first:?}"));
        let first_link = link_line
            .split_whitespace()
            .last()
            .unwrap()
            .split_once(&format!(":{port}"))
            .unwrap()
            .1
            .to_string();
        let token = std::fs::read_to_string(state.join("serve-token"))
            .unwrap()
            .trim()
            .to_string();
        Served {
            child,
            scheme,
            port,
            first_link,
            token,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    /// Status, headers and body of a request made with `extra` curl
    /// arguments (no token unless they carry one).
    fn curl(&self, path: &str, extra: &[&str]) -> (u16, String, String) {
        let out = Command::new("curl")
            .args(["-sk", "-D", "-", "-o", "-", "-w", "\n%{http_code}"])
            .args(extra)
            .arg(self.url(path))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (rest, code) = text.rsplit_once('\n').unwrap();
        let (headers, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        (
            code.trim().parse().unwrap(),
            headers.to_string(),
            body.to_string(),
        )
    }

    fn get(&self, path: &str) -> (u16, String, String) {
        let bearer = format!("Authorization: Bearer {}", self.token);
        self.curl(path, &["-H", &bearer])
    }

    /// A fresh one-time login link that lands on `next`.
    fn login_link(&self, next: &str) -> String {
        let bearer = format!("Authorization: Bearer {}", self.token);
        let (code, _, body) = self.curl("/api/login-link", &["-X", "POST", "-H", &bearer]);
        assert_eq!(code, 200, "{body}");
        format!("{}&next={}", body.trim(), urlencode(next))
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file of the repository: size and modification time.
fn listing(root: &Path) -> BTreeMap<PathBuf, (u64, i64, i64)> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                dirs.push(entry.path());
            }
            out.insert(
                entry.path().strip_prefix(root).unwrap().to_path_buf(),
                (meta.len(), meta.mtime(), meta.mtime_nsec()),
            );
        }
    }
    out
}

fn artefacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("serve-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Loads `path` in headless Chromium (through a fresh login link, as a
/// person would) and returns the DOM it built; with `shot`, also saves a
/// screenshot of the page.
fn render(served: &Served, path: &str, shot: Option<&str>) -> String {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            Command::new("sh")
                .args(["-c", &format!("command -v {c}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("no chromium: scripts/setup-host.sh installs Debian's");
    let profile = tempfile::tempdir().unwrap();
    let run = |action: &str| -> Output {
        let out = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--ignore-certificate-errors",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(action)
            .arg(served.url(&served.login_link(path)))
            .output()
            .unwrap();
        assert!(out.status.success(), "chromium failed: {}", stderr(&out));
        out
    };
    if let Some(name) = shot {
        let file = artefacts().join(format!("{name}.png"));
        run(&format!("--screenshot={}", file.display()));
        assert!(file.metadata().unwrap().len() > 1000, "an empty screenshot");
    }
    stdout(&run("--dump-dom"))
}

/// The markup of the element that opens with `start` (up to its `end`).
fn element<'d>(dom: &'d str, start: &str, end: &str) -> &'d str {
    let from = dom
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in {dom}"));
    let len = dom[from..]
        .find(end)
        .unwrap_or_else(|| panic!("no end of {start}"));
    &dom[from..from + len]
}

#[test]
fn the_dashboard_shows_a_fleet_safely_and_changes_nothing() {
    let mut p = Project::new("serve");
    let hosts = [("alpha", "a"), ("beta", "b"), (EVIL_HOST, "evil")];
    let mut containers = Vec::new();
    let mut sources = Vec::new();
    let mut states = Vec::new();
    for (_, short) in &hosts {
        let vol = p.volume(short, &[]);
        let src = volume_path(&vol);
        std::fs::write(src.join("notes.txt"), format!("{short}\n")).unwrap();
        let mount = format!("{vol}:/data");
        containers.push(p.service(&format!("app-{short}"), &[], &["-v", &mount], &["idle"]));
        sources.push(src);
        states.push(p.tempdir());
    }
    std::fs::write(sources[0].join(EVIL_FILE), b"not markup\n").unwrap();
    let repo = p.tempdir().join("repo");
    let repo_s = repo.to_str().unwrap().to_string();
    ok(as_host("alpha", &states[0], &["init", "--repo", &repo_s]));
    let backup = |n: usize| {
        ok(as_host(
            hosts[n].0,
            &states[n],
            &[
                "backup",
                "--repo",
                &repo_s,
                "--container",
                &containers[n],
                "--strategy",
                "online",
            ],
        ))
    };
    // alpha: three backups, a file added before the third, which its job
    // takes (so the run log has it). The job's retention is added after
    // that run: what it would free is a dry run on the dashboard.
    backup(0);
    backup(0);
    std::fs::write(sources[0].join("added.txt"), b"new\n").unwrap();
    let config = p.tempdir().join("volsnap.toml");
    let config_s = config.to_str().unwrap().to_string();
    let jobs = |extra: &str| {
        format!(
            "[jobs.nightly]\ncontainers = [\"{}\"]\nrepo = \"{repo_s}\"\nstrategy = \"online\"\n{extra}\n\
             [jobs.never-ran]\ncontainers = [\"app-never\"]\nrepo = \"{repo_s}\"\nschedule = \"0 3 * * 0\"\n",
            containers[0]
        )
    };
    std::fs::write(&config, jobs("")).unwrap();
    ok(as_host(
        "alpha",
        &states[0],
        &["run", "nightly", "--config", &config_s],
    ));
    // Yearly: alpha's stack is not overdue by its schedule, whatever
    // --overdue-after says.
    std::fs::write(
        &config,
        jobs("schedule = \"0 0 1 1 *\"\n[jobs.nightly.retention]\nkeep_last = 1"),
    )
    .unwrap();
    let alpha_done = Instant::now();
    backup(2);
    // The hostile host's newest backup is older than --overdue-after
    // below; beta's, taken just before the server starts, is not.
    let overdue_after = Duration::from_secs(20);
    if let Some(left) = (overdue_after + Duration::from_secs(5)).checked_sub(alpha_done.elapsed()) {
        std::thread::sleep(left);
    }
    backup(1);
    // The serving host (alpha) trusts the others' keys.
    for n in 1..3 {
        let fingerprint = host_fingerprint(&states[n]);
        let trusted = as_host(
            "alpha",
            &states[0],
            &["host", "trust", hosts[n].0, &fingerprint],
        );
        if n == 1 {
            ok(trusted);
        }
    }

    // An attacker raises beta's stored size to 2^63: outside what its
    // signature covers, so the commit still verifies as beta's.
    let commits = repo.join("snapshots");
    let mut raised = false;
    for name in std::fs::read_dir(&commits).unwrap() {
        let path = name.unwrap().path();
        let mut commit: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        if commit["host"] == "beta" {
            commit["stored_bytes"] = serde_json::json!(1u64 << 63);
            common::craft::put_named(&repo, "snapshots", &serde_json::to_vec(&commit).unwrap());
            std::fs::remove_file(&path).unwrap();
            raised = true;
        }
    }
    assert!(raised, "no commit of beta");
    // A second repository, in format 1, with one backup of alpha's.
    let tar_repo = p.tempdir().join("tar-repo");
    let tar_repo_s = tar_repo.to_str().unwrap().to_string();
    ok(as_host(
        "alpha",
        &states[0],
        &["init", "--repo", &tar_repo_s, "--format", "tar"],
    ));
    ok(as_host(
        "alpha",
        &states[0],
        &[
            "backup",
            "--repo",
            &tar_repo_s,
            "--container",
            &containers[0],
            "--strategy",
            "online",
        ],
    ));
    let before = (listing(&repo), listing(&tar_repo));

    let served = Served::start(
        "alpha",
        &states[0],
        &[
            "--repo",
            &repo_s,
            "--repo",
            &tar_repo_s,
            "--config",
            &config_s,
            "--listen",
            "127.0.0.1:0",
            "--overdue-after",
            "20s",
        ],
    );

    // The token, on every request, loopback included.
    let (code, _, _) = served.curl("/", &[]);
    assert_eq!(code, 401, "no token");
    let (code, _, _) = served.curl(
        "/",
        &[
            "-H",
            "Authorization: Bearer 0123456789abcdef0123456789abcdef",
        ],
    );
    assert_eq!(code, 401, "a wrong token");
    let (code, _, _) = served.curl("/api/login-link", &["-X", "POST"]);
    assert_eq!(code, 401, "minting a link needs the token");
    // The Host header names this server (DNS rebinding).
    let bearer = format!("Authorization: Bearer {}", served.token);
    let (code, _, _) = served.curl("/", &["-H", &bearer, "-H", "Host: rebound.example:80"]);
    assert_eq!(code, 421, "a foreign Host header");
    let (code, headers, fleet) = served.get("/");
    assert_eq!(code, 200, "{fleet}");
    let lower = headers.to_lowercase();
    assert!(
        lower.contains("content-security-policy: default-src 'none'"),
        "{headers}"
    );
    assert!(lower.contains("script-src 'none'"), "{headers}");
    // A login link works once, and sets a cookie scripts cannot read.
    let (code, headers, _) = served.curl(&served.first_link, &[]);
    assert_eq!(code, 303, "{headers}");
    let cookie = headers
        .lines()
        .find(|l| l.to_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {headers}"));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (code, _, _) = served.curl("/", &["-H", &format!("Cookie: {session}")]);
    assert_eq!(code, 200, "the session cookie opens the pages");
    let (code, _, _) = served.curl(&served.first_link, &[]);
    assert_eq!(code, 401, "a login link used twice");
    // `next` leads only to a path here: a tab that browsers drop would
    // make `/\t/evil.example` another site.
    for next in [
        "%2F%09%2Fevil.example",
        "%2F%2Fevil.example",
        "https%3A%2F%2Fevil.example",
    ] {
        let link = served.login_link("/");
        let link = link.replace("next=%2F", &format!("next={next}"));
        let (code, headers, _) = served.curl(&link, &[]);
        assert_eq!(code, 303, "{headers}");
        let location = headers
            .lines()
            .find(|l| l.to_lowercase().starts_with("location:"))
            .unwrap_or_else(|| panic!("no location: {headers}"));
        assert_eq!(location.split_once(':').unwrap().1.trim(), "/", "{next}");
    }

    // Right after beta's backup: the hostile host is overdue, beta is not,
    // and alpha is not either: its job's schedule says when it is due.
    let row = |page: &str, host: &str| -> String {
        let at = page
            .find(&format!("data-host=\"{host}\""))
            .unwrap_or_else(|| panic!("no row of {host}: {page}"));
        let start = page[..at].rfind("<tr").unwrap();
        let end = at + page[at..].find("</tr>").unwrap();
        page[start..end].to_string()
    };
    let evil_attribute = "&lt;script&gt;document.title='owned'&lt;/script&gt;&quot;'";
    assert!(row(&fleet, evil_attribute).contains("overdue"), "{fleet}");
    assert!(!row(&fleet, "beta").contains("overdue"), "{fleet}");
    assert!(
        !row(&fleet, "alpha").contains("class=\"overdue\""),
        "{fleet}"
    );
    assert!(
        row(&fleet, "alpha").contains("job schedule 0 0 1 1 *"),
        "{fleet}"
    );

    // In a real browser.
    let dom = render(&served, "/", Some("fleet"));
    // Both repositories, each with its table; the format-1 one holds
    // alpha's one backup.
    let second = element(&dom, "data-repo=\"1\"", "</table>");
    assert_eq!(second.matches("data-host=").count(), 1, "{second}");
    assert!(row(second, "alpha").contains("--container"), "{second}");
    assert!(
        dom.contains("&lt;script&gt;document.title='owned'&lt;/script&gt;"),
        "{dom}"
    );
    assert!(!dom.contains("<script"), "a script element: {dom}");
    assert!(
        dom.contains("<title>Fleet · volsnap</title>"),
        "the page's title changed: {dom}"
    );

    let stack = |n: usize| {
        format!(
            "/stack?repo=0&host={}&selection={}",
            urlencode(hosts[n].0),
            urlencode(&format!("--container {}", containers[n]))
        )
    };
    let dom = render(&served, &stack(0), Some("stack"));
    let plot = element(&dom, "id=\"plot-duration\"", "</figure>");
    assert!(plot.contains("data-points=\"3\""), "{plot}");
    assert_eq!(
        plot.matches("<circle").count(),
        3,
        "one point per backup: {plot}"
    );
    // alpha serves: its own record adds what each plan estimated and what
    // each backup read, one point per backup again.
    let plot = element(&dom, "id=\"plot-downtime\"", "</figure>");
    assert_eq!(
        plot.matches("<circle").count(),
        6,
        "down and estimated: {plot}"
    );
    let plot = element(&dom, "id=\"plot-bytes\"", "</figure>");
    assert_eq!(
        plot.matches("<circle").count(),
        9,
        "data, stored and read: {plot}"
    );

    // 2^63 stored bytes: shown as out of range, never plotted.
    let dom = render(&served, &stack(1), None);
    assert!(dom.contains("out of range"), "{dom}");
    let plot = element(&dom, "id=\"plot-bytes\"", "</figure>");
    assert_eq!(plot.matches("<circle").count(), 1, "its data only: {plot}");
    assert!(
        !plot.contains("PiB") && !plot.contains("EiB"),
        "an absurd axis: {plot}"
    );

    let dom = render(&served, &stack(2), Some("hostile-stack"));
    assert!(!dom.contains("<script"), "{dom}");
    assert!(dom.contains("&lt;script&gt;"), "{dom}");

    // A backup's files, and a diff between two backups.
    let (_, _, page) = served.get(&stack(0));
    let link = "/backup?repo=0&amp;id=";
    let keys: Vec<String> = page
        .match_indices(link)
        .map(|(at, _)| {
            page[at + link.len()..]
                .split('"')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys.len(), 3, "{page}");
    let (newest, oldest) = (&keys[0], &keys[2]);
    let dom = render(&served, &format!("/backup?id={newest}"), Some("backup"));
    assert!(
        dom.contains("&lt;img src=x onerror=document.title='owned'&gt;.html"),
        "{dom}"
    );
    assert!(!dom.contains("<img"), "{dom}");
    assert!(dom.contains("added.txt"), "{dom}");
    let dom = render(
        &served,
        &format!("/diff?from={oldest}&to={newest}"),
        Some("diff"),
    );
    let diff = element(&dom, "id=\"diff\"", "</table>");
    assert!(diff.contains("data-change=\"+\""), "{diff}");
    assert!(diff.contains("added.txt"), "{diff}");
    assert!(
        !diff.contains("notes.txt"),
        "an unchanged file in the diff: {diff}"
    );

    let dom = render(&served, "/repository", Some("repository"));
    let plot = element(&dom, "id=\"plot-growth\"", "</figure>");
    assert!(plot.contains("data-points=\"5\""), "{plot}");
    // What alpha's job's retention (keep_last = 1) would free: its two
    // older backups, and the bytes only they use.
    let prune = element(&dom, "id=\"prune\"", "</section>");
    assert!(prune.contains("data-deleting=\"2\""), "{prune}");
    assert!(prune.contains("--keep-last 1"), "{prune}");
    // The page names backups by id: the text of each link to them.
    let id_of = |key: &str| {
        let at = page.find(&format!("{key}\">")).unwrap() + key.len() + 2;
        page[at..].split('<').next().unwrap().to_string()
    };
    assert!(
        prune.contains(&id_of(&keys[1]))
            && prune.contains(&id_of(&keys[2]))
            && !prune.contains(&id_of(newest)),
        "{prune}"
    );
    assert!(!prune.contains("out of range"), "{prune}");

    // The format-1 repository: its page, its backup's files.
    let (code, _, page) = served.get("/repository?repo=1");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("1 (tar)"), "{page}");
    let (code, _, _) = served.get("/repository?repo=2");
    assert_eq!(code, 404, "a repository the server does not have");
    let (_, _, page) = served.get(&stack(0).replace("repo=0", "repo=1"));
    let link = "/backup?repo=1&amp;id=";
    let tar_key = page[page.find(link).expect(&page) + link.len()..]
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let dom = render(&served, &format!("/backup?repo=1&id={tar_key}"), None);
    assert!(
        dom.contains("notes.txt") && dom.contains("added.txt"),
        "{dom}"
    );
    assert!(!dom.contains("<img"), "{dom}");

    // This host's jobs: the job that ran, with its run; the one that
    // never ran is overdue.
    let dom = render(&served, "/jobs", Some("jobs"));
    let nightly = element(&dom, "data-job=\"nightly\"", "</tr>");
    assert!(
        nightly.contains("success") && !nightly.contains("overdue"),
        "{nightly}"
    );
    let never = element(&dom, "data-job=\"never-ran\"", "</tr>");
    assert!(never.contains("no successful run yet"), "{never}");
    let runs = element(&dom, "id=\"runs\"", "</table>");
    assert_eq!(
        runs.matches("data-status=\"success\"").count(),
        1,
        "one run: {runs}"
    );

    assert!(
        served.stop().success(),
        "serve did not stop cleanly on SIGTERM"
    );
    assert_eq!(
        (listing(&repo), listing(&tar_repo)),
        before,
        "the dashboard changed a repository"
    );
}

#[test]
fn off_loopback_it_needs_tls_and_serves_it() {
    let state = tempfile::tempdir().unwrap();
    let repo = state.path().join("repo");
    let repo_s = repo.to_str().unwrap();
    ok(as_host("alpha", state.path(), &["init", "--repo", repo_s]));
    let refused = as_host(
        "alpha",
        state.path(),
        &[
            "serve",
            "--repo",
            repo_s,
            "--listen",
            "0.0.0.0:0",
            "--server-name",
            "backups.example",
        ],
    );
    assert_fails(&refused, 2, "without TLS");
    for key in ["--identity", "--passphrase-file"] {
        let refused = as_host(
            "alpha",
            state.path(),
            &["serve", "--repo", repo_s, key, "/dev/null"],
        );
        assert_fails(&refused, 2, "never loads a key that reads backups");
    }

    let cert = state.path().join("cert.pem");
    let key = state.path().join("key.pem");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    let served = Served::start(
        "alpha",
        state.path(),
        &[
            "--repo",
            repo_s,
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(served.scheme, "https");
    let (code, _, body) = served.get("/");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("No backups in this repository yet."),
        "{body}"
    );
    let (code, headers, _) = served.curl(&served.first_link, &[]);
    assert_eq!(code, 303);
    assert!(
        headers.contains("; Secure"),
        "a cookie sent over TLS only: {headers}"
    );
    let plain = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{}/", served.port))
        .output()
        .unwrap();
    assert_ne!(stdout(&plain).trim(), "200", "plain HTTP on the TLS port");
    assert!(served.stop().success());
}
