//! Real storage servers on 127.0.0.1 for the remote-repository tests,
//! installed by scripts/setup-servers.sh: s3s-fs (S3 over a directory,
//! survives a restart), moto (S3 with conditional writes, in memory),
//! rclone's `serve s3` (ignores conditional creates) and OpenSSH's sshd.
//!
//! A server that is not installed makes its test say so loudly and pass
//! without running, unless VOLSNAP_REQUIRE_SERVERS=1 (scripts/test.sh sets
//! it), where it fails the test.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "volsnaptestkey";
pub const SECRET_KEY: &str = "volsnap-test-secret-0123456789";
pub const BUCKET: &str = "volsnap-test";

/// Where scripts/setup-servers.sh installs them.
fn install_root() -> PathBuf {
    PathBuf::from(
        std::env::var("VOLSNAP_TEST_SERVERS").unwrap_or_else(|_| "/opt/volsnap-test".into()),
    )
}

/// The program, or `None` after saying loudly that the test cannot run.
fn program(relative: &str, test: &str) -> Option<PathBuf> {
    let path = install_root().join(relative);
    if path.is_file() {
        return Some(path);
    }
    let message = format!(
        "{} is not installed (run scripts/setup-servers.sh): {test} cannot run here",
        path.display()
    );
    if std::env::var("VOLSNAP_REQUIRE_SERVERS").as_deref() == Ok("1") {
        panic!("{message}");
    }
    eprintln!("\n########## SKIPPED: {message} ##########\n");
    None
}

/// A port nothing listens on now.
/// A port free now and never handed out before in this test process: a
/// server killed and restarted on its port (a_server_restarting_…) must
/// not find another test's server there, started on a port the kernel
/// gave out again while it was down.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Kind {
    /// s3s-fs: data in a directory, kept across restarts.
    S3sFs,
    /// moto: conditional writes, versioning, Object Lock; in memory.
    Moto,
    /// rclone serve s3: ignores If-None-Match.
    Rclone,
}

/// An S3 server on 127.0.0.1 with one bucket, [`BUCKET`].
pub struct S3Server {
    pub kind: S3Kind,
    pub port: u16,
    program: PathBuf,
    data: tempfile::TempDir,
    child: Option<Child>,
}

impl S3Server {
    pub fn start(kind: S3Kind, test: &str) -> Option<S3Server> {
        let program = program(
            match kind {
                S3Kind::S3sFs => "s3s/bin/s3s-fs",
                S3Kind::Moto => "venv/bin/moto_server",
                S3Kind::Rclone => "venv/bin/rclone",
            },
            test,
        )?;
        let data = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(data.path().join(BUCKET)).unwrap();
        let mut server = S3Server {
            kind,
            port: free_port(),
            program,
            data,
            child: None,
        };
        server.run();
        if kind == S3Kind::Moto {
            // moto keeps buckets in memory: create it through the API.
            let python = server.program.with_file_name("python3");
            let status = Command::new(python)
                .args(["-c", "import boto3,sys; boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='a', aws_secret_access_key='b', region_name='us-east-1').create_bucket(Bucket=sys.argv[2])"])
                .arg(server.endpoint())
                .arg(BUCKET)
                .status()
                .expect("python3 of the test venv");
            assert!(status.success(), "cannot create the moto bucket");
        }
        Some(server)
    }

    fn run(&mut self) {
        let port = self.port.to_string();
        let dir = self.data.path();
        let mut cmd = Command::new(&self.program);
        match self.kind {
            S3Kind::S3sFs => cmd
                .args(["--host", "127.0.0.1", "--port", &port])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(dir),
            S3Kind::Moto => cmd.args(["-H", "127.0.0.1", "-p", &port]),
            S3Kind::Rclone => cmd
                .args(["serve", "s3", "--addr"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("--auth-key")
                .arg(format!("{ACCESS_KEY},{SECRET_KEY}"))
                .arg(dir),
        };
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start the S3 server");
        wait_for_port(self.port, &mut child, &format!("{:?}", self.kind));
        self.child = Some(child);
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (s3s-fs keeps its data).
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs a boto3 snippet against this server (`s3` is the client; json,
    /// base64, hashlib and datetime are imported); its stdout.
    pub fn boto(&self, code: &str) -> String {
        let script = format!(
            "import boto3, base64, datetime, hashlib, json, sys\ns3 = boto3.client('s3', endpoint_url={:?}, aws_access_key_id='a', aws_secret_access_key='b', region_name='us-east-1')\n{code}\n",
            self.endpoint()
        );
        let out = Command::new("/opt/volsnap-test/venv/bin/python3")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("the test venv's python3");
        assert!(
            out.status.success(),
            "{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("boto3 printed UTF-8")
    }

    /// `s3://BUCKET/PREFIX`, its endpoint given in the environment.
    pub fn repo(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The standard AWS environment for this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
    }

    /// The bucket's files (s3s-fs and rclone keep objects as files).
    pub fn bucket_dir(&self) -> PathBuf {
        self.data.path().join(BUCKET)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// OpenSSH's sshd on 127.0.0.1 with a fresh host key, accepting one fresh
/// client key for root; `ssh` on PATH is wrapped to trust that host key
/// only (the real ssh binary, with a private known_hosts file).
pub struct SftpServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl SftpServer {
    pub fn start(test: &str) -> Option<SftpServer> {
        let sshd = PathBuf::from("/usr/sbin/sshd");
        if !sshd.is_file() {
            program("(openssh-server) /usr/sbin/sshd", test)?;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for key in ["host_key", "client_key"] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .status()
                .expect("ssh-keygen");
            assert!(status.success());
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let port = free_port();
        let config = format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nStrictModes no\n\
             UsePAM no\nPidFile none\nSubsystem sftp internal-sftp\n",
            hk = d.join("host_key").display(),
            ak = d.join("authorized_keys").display(),
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let host_key = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {host_key}"),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let bin = d.join("bin");
        std::fs::create_dir(&bin).unwrap();
        let wrapper = format!(
            "#!/bin/sh\nexec /usr/bin/ssh -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null \"$@\"\n",
            d.join("known_hosts").display()
        );
        std::fs::write(bin.join("ssh"), wrapper).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bin.join("ssh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut child = Command::new(&sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start sshd");
        wait_for_port(port, &mut child, "sshd");
        std::fs::create_dir(d.join("repos")).unwrap();
        Some(SftpServer { port, dir, child })
    }

    /// `sftp://root@127.0.0.1:PORT/<dir>/NAME?key=…`.
    pub fn repo(&self, name: &str) -> String {
        format!(
            "sftp://root@127.0.0.1:{}{}?key={}",
            self.port,
            self.dir.path().join("repos").join(name).display(),
            self.dir.path().join("client_key").display()
        )
    }

    /// Where `repo(name)` keeps its files.
    pub fn dir_of(&self, name: &str) -> PathBuf {
        self.dir.path().join("repos").join(name)
    }

    /// PATH with the trusting ssh wrapper first.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let path = std::env::var("PATH").unwrap_or_default();
        vec![(
            "PATH",
            format!("{}:{path}", self.dir.path().join("bin").display()),
        )]
    }
}

impl Drop for SftpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Files under `dir` whose relative path starts with `prefix`.
pub fn files_under(dir: &Path, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                pending.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                let rel = rel.display().to_string();
                if rel.starts_with(prefix) {
                    out.push(rel);
                }
            }
        }
    }
    out.sort();
    out
}

/// A TCP proxy in front of a real server that answers the first request
/// of the second connection, and of every `every`-th after it, with
/// `503 Slow Down` and closes it (the first never: three runs of volsnap
/// open at least three, so one is always refused), and
/// forwards the other connections both ways: transient server errors on
/// demand, in front of a real S3 server.
pub struct FlakyProxy {
    pub port: u16,
    pub refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FlakyProxy {
    pub fn start(target: u16, every: usize) -> FlakyProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let port = listener.local_addr().unwrap().port();
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = refused.clone();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(mut client) = conn else { continue };
                if n % every == 1 {
                    let counter = counter.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        let _ = client.read(&mut buf);
                        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                        let _ = write!(
                            client,
                            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        counter.fetch_add(1, Ordering::SeqCst);
                        let _ = client.shutdown(std::net::Shutdown::Write);
                        // Drain what the client still sends, then close.
                        let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
                        while matches!(client.read(&mut buf), Ok(k) if k > 0) {}
                    });
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut client, mut server) = (client, server);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client, &mut server);
                    let _ = server.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        FlakyProxy { port, refused }
    }
}
