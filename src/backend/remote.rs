//! Repositories on S3-compatible object storage and SFTP servers, through
//! opendal: one well-kept crate for both protocols (and the same API the
//! local filesystem has there), with its retry layer (exponential backoff
//! with jitter, by backon) for transient errors, its timeout layer for a
//! server that stops answering, and its throttle layer for `upload-limit`.
//!
//! The [`Backend`] trait is synchronous (the archiver's workers are
//! threads); each backend owns a small tokio runtime and blocks on it.
//!
//! Whole-or-nothing writes: an S3 object exists only once its PUT or its
//! multipart upload completes. SFTP writes in place, so an object is
//! written under a temporary name and renamed (`posix-rename`, atomic on
//! OpenSSH) into place; a create-if-absent opens with `O_EXCL`.

use super::location::{Remote, Service};
use super::{check_name, Backend, Missing, ObjectInfo};
use anyhow::{Context, Result};
use opendal::layers::{RetryLayer, ThrottleLayer, TimeoutLayer};
use opendal::{ErrorKind, Operator};
use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Objects at least this big go up in multipart uploads of parts this big.
const PART: usize = 8 << 20;
/// Parts of one object in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Prefix of SFTP objects being written: never listed (and removed by prune).
const TEMP_PREFIX: &str = ".tmp-";

pub struct RemoteBackend {
    op: Operator,
    /// S3 buckets: Object Lock requests.
    object_lock: Option<super::object_lock::ObjectLock>,
    /// What [`RemoteBackend::probe`] found, once per process.
    facts: std::sync::OnceLock<ServerFacts>,
    runtime: tokio::runtime::Runtime,
    display: String,
    sftp: bool,
    counter: AtomicU64,
}

/// What a probe found out about a server.
struct ServerFacts {
    refuses_second_create: bool,
    /// How far the server's clock is ahead of or behind ours.
    ahead: Option<Duration>,
    behind: Option<Duration>,
}

/// How many times a transient failure is retried: enough to ride out a
/// restarting server (about half a minute of backoff in all).
fn retries() -> usize {
    #[cfg(feature = "fault-injection")]
    if let Some(n) = std::env::var("VOLSNAP_TEST_RETRIES")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return n;
    }
    6
}

impl RemoteBackend {
    pub fn open(remote: &Remote) -> Result<Self> {
        // Idempotent: the HTTP client every S3 operator shares.
        opendal::install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("volsnap-net")
            .enable_all()
            .build()
            .context("cannot start the network runtime")?;
        let root = format!("/{}", remote.path);
        let mut object_lock = None;
        let built = match &remote.service {
            Service::S3 { bucket } => {
                let o = &remote.options;
                let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
                let region = o
                    .region
                    .clone()
                    .or_else(|| env("AWS_REGION"))
                    .or_else(|| env("AWS_DEFAULT_REGION"))
                    .unwrap_or_else(|| "us-east-1".to_string());
                let mut b = opendal::services::S3::default()
                    .bucket(bucket)
                    .root(&root)
                    .region(&region);
                if let Some(endpoint) = o.endpoint.clone().or_else(|| env("AWS_ENDPOINT_URL")) {
                    b = b.endpoint(&endpoint);
                }
                if let Some(profile) = &o.profile {
                    b = b.profile(profile);
                }
                if o.virtual_host {
                    b = b.enable_virtual_host_style();
                }
                object_lock = Some(super::object_lock::ObjectLock::new(
                    o.endpoint
                        .clone()
                        .or_else(|| env("AWS_ENDPOINT_URL"))
                        .as_deref(),
                    &region,
                    o.profile.as_deref(),
                    bucket,
                    &remote.path,
                    o.virtual_host,
                    &remote.display,
                ));
                Operator::new(b)
            }
            Service::Sftp { user, host, port } => {
                let endpoint = match port {
                    Some(p) => format!("ssh://{host}:{p}"),
                    None => format!("ssh://{host}"),
                };
                let mut b = opendal::services::Sftp::default()
                    .endpoint(&endpoint)
                    .root(&root)
                    .known_hosts_strategy("strict");
                if let Some(user) = user {
                    b = b.user(user);
                }
                if let Some(key) = &remote.options.key {
                    b = b.key(&key.to_string_lossy());
                }
                Operator::new(b)
            }
        };
        let mut op = built
            .map_err(|e| crate::usage!("repository {}: {}", remote.display, short_message(&e)))?;
        // Outermost first: a throttled upload is not a timed-out one.
        op = op
            .layer(
                TimeoutLayer::new()
                    .with_timeout(Duration::from_secs(120))
                    .with_io_timeout(Duration::from_secs(30)),
            )
            .layer(
                RetryLayer::new()
                    .with_jitter()
                    .with_min_delay(Duration::from_millis(500))
                    .with_max_delay(Duration::from_secs(10))
                    .with_max_times(retries()),
            );
        if let Some(limit) = remote.options.upload_limit {
            let rate = u32::try_from(limit).unwrap_or(u32::MAX);
            // Each part passes the limiter whole, so the burst is a part.
            let burst = rate.max(PART as u32 + (1 << 20));
            op = op.layer(ThrottleLayer::new(rate, burst));
        }
        Ok(Self {
            op,
            object_lock,
            runtime,
            display: remote.display.clone(),
            sftp: matches!(remote.service, Service::Sftp { .. }),
            counter: AtomicU64::new(0),
            facts: std::sync::OnceLock::new(),
        })
    }

    /// Tries the server once: creates a probe object, creates it again
    /// (which must be refused), reads its time, deletes it.
    fn probe(&self) -> Result<&ServerFacts> {
        if let Some(facts) = self.facts.get() {
            return Ok(facts);
        }
        let mut random = [0u8; 16];
        crate::fsutil::random_bytes(&mut random)?;
        let name = format!("probes/{}", hex::encode(random));
        let before = SystemTime::now();
        if !self.create_new(&name, b"volsnap probe: deleted at once\n")? {
            anyhow::bail!(
                "{}: a fresh probe object already existed (it was just named at random); the server does not behave as storage",
                self.display
            );
        }
        let after = SystemTime::now();
        let second = self.create_new(&name, b"second");
        let stat = self.stat(&name);
        let _ = self.delete(&name);
        let refuses_second_create = !second?;
        let server_time = stat?.map(|o| o.modified).unwrap_or(after);
        // The object's time is the server's clock at about the middle of the PUT.
        let midpoint = before + after.duration_since(before).unwrap_or_default() / 2;
        let facts = ServerFacts {
            refuses_second_create,
            ahead: server_time.duration_since(midpoint).ok(),
            behind: midpoint.duration_since(server_time).ok(),
        };
        if !refuses_second_create {
            tracing::warn!(
                "{} ignores conditional creates (If-None-Match): see docs/FORMAT.md, \"Conditional creates\", for what still holds",
                self.display
            );
        }
        Ok(self.facts.get_or_init(|| facts))
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// One line for people: what failed, on what, and what to do. The
    /// server's own words are kept short; no request, header or secret.
    fn error(&self, what: &str, name: &str, e: opendal::Error) -> anyhow::Error {
        let object = if name.is_empty() {
            self.display.clone()
        } else {
            format!("{name} in {}", self.display)
        };
        match e.kind() {
            ErrorKind::NotFound => anyhow::Error::new(Missing {
                name: name.to_string(),
                location: self.display.clone(),
            }),
            ErrorKind::PermissionDenied => anyhow::anyhow!(
                "cannot {what} {object}: access denied ({}); check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials; for SFTP the SSH key) and what they may do",
                short_message(&e)
            ),
            ErrorKind::ConfigInvalid if short_message(&e).contains("NoSuchBucket") => {
                anyhow::anyhow!(
                    "cannot {what} {object}: the bucket does not exist; create it first (aws s3 mb, or the server's console)"
                )
            }
            // A bucket whose default Object Lock retention applies to every
            // upload (and so demands checksums volsnap's plain uploads lack).
            _ if short_message(&e).contains("Object Lock") => crate::usage!(
                "cannot {what} {object}: the bucket has a default Object Lock retention, which would lock every object, the repository's locks included, so that none could be released; remove the bucket's default retention rule (volsnap init --immutable DAYS retains each backup's objects itself)"
            ),
            _ => anyhow::anyhow!(
                "cannot {what} {object}: {}{}",
                short_message(&e),
                if e.is_temporary() || e.kind() == ErrorKind::Unexpected {
                    " (still failing after retries; check that the server is reachable and up)"
                } else {
                    ""
                }
            ),
        }
    }

    fn temp_name(&self, name: &str) -> String {
        let (dir, _) = name.rsplit_once('/').unwrap_or(("", name));
        let temp = format!(
            "{TEMP_PREFIX}{}-{}-{:x}",
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        if dir.is_empty() {
            temp
        } else {
            format!("{dir}/{temp}")
        }
    }

    async fn put(&self, name: &str, bytes: &[u8], if_not_exists: bool) -> opendal::Result<()> {
        let buffer = opendal::Buffer::from(bytes.to_vec());
        let mut write = self
            .op
            .write_with(name, buffer)
            .if_not_exists(if_not_exists);
        if bytes.len() > PART {
            write = write.chunk(PART).concurrent(PARTS_IN_FLIGHT);
        }
        write.into_future().await.map(|_| ())
    }
}

/// The server's message, short: S3 errors arrive as a debug dump of the
/// XML body, from which the code and message are kept.
fn short_message(e: &opendal::Error) -> String {
    let text = e.message();
    let field = |key: &str| {
        let start = text.find(&format!("{key}: \""))? + key.len() + 3;
        let end = text[start..].find('"')?;
        Some(&text[start..start + end])
    };
    let mut out = match (field("code"), field("message")) {
        (Some(code), Some(message)) if !message.is_empty() => format!("{code}: {message}"),
        (Some(code), _) if !code.is_empty() => code.to_string(),
        _ => {
            let source = std::error::Error::source(e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            format!("{}{source}", text.lines().next().unwrap_or(""))
        }
    };
    if out.trim().is_empty() {
        out = e.kind().to_string();
    }
    if out.len() > 300 {
        let mut cut = 300;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

impl Backend for RemoteBackend {
    fn location(&self) -> String {
        self.display.clone()
    }

    fn read(&self, name: &str) -> Result<Vec<u8>> {
        check_name(name)?;
        self.block(self.op.read(name))
            .map(|b| b.to_vec())
            .map_err(|e| self.error("read", name, e))
    }

    fn read_range(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        check_name(name)?;
        let bytes = self
            .block(
                self.op
                    .read_with(name)
                    .range(offset..offset + length)
                    .into_future(),
            )
            .map(|b| b.to_vec())
            .map_err(|e| self.error("read", name, e))?;
        if bytes.len() as u64 != length {
            anyhow::bail!(
                "{name} in {} is shorter than its index says (read {} of {length} bytes at {offset})",
                self.display,
                bytes.len()
            );
        }
        Ok(bytes)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        check_name(name)?;
        if !self.sftp {
            return self
                .block(self.put(name, bytes, false))
                .map_err(|e| self.error("write", name, e));
        }
        let temp = self.temp_name(name);
        let written = self.block(async {
            self.put(&temp, bytes, false).await?;
            self.op.rename(&temp, name).await
        });
        if let Err(e) = written {
            let _ = self.block(self.op.delete(&temp));
            return Err(self.error("write", name, e));
        }
        Ok(())
    }

    fn create_new(&self, name: &str, bytes: &[u8]) -> Result<bool> {
        check_name(name)?;
        match self.block(self.put(name, bytes, true)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::ConditionNotMatch => Ok(false),
            Err(e) => Err(self.error("create", name, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        check_name(prefix)?;
        let entries = match self.block(
            self.op
                .list_with(&format!("{prefix}/"))
                .recursive(true)
                .into_future(),
        ) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.error("list", prefix, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let (path, meta) = entry.into_parts();
            let name = path.trim_start_matches('/').to_string();
            let base = name.rsplit('/').next().unwrap_or("");
            if name.ends_with('/') || base.starts_with(TEMP_PREFIX) || check_name(&name).is_err() {
                continue;
            }
            let meta = match meta.last_modified() {
                Some(_) => meta,
                // Some listings leave times out: ask the object itself.
                None => match self.block(self.op.stat(&name)) {
                    Ok(m) => m,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(self.error("stat", &name, e)),
                },
            };
            out.push(ObjectInfo {
                name,
                size: meta.content_length(),
                modified: meta
                    .last_modified()
                    .map_or(SystemTime::UNIX_EPOCH, Into::into),
            });
        }
        Ok(out)
    }

    fn stat(&self, name: &str) -> Result<Option<ObjectInfo>> {
        check_name(name)?;
        match self.block(self.op.stat(name)) {
            Ok(meta) => Ok(Some(ObjectInfo {
                name: name.to_string(),
                size: meta.content_length(),
                modified: meta
                    .last_modified()
                    .map_or(SystemTime::UNIX_EPOCH, Into::into),
            })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error("stat", name, e)),
        }
    }

    fn delete(&self, name: &str) -> Result<()> {
        check_name(name)?;
        match self.block(self.op.delete(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.error("delete", name, e)),
        }
    }

    fn now(&self) -> Result<SystemTime> {
        let facts = self.probe()?;
        let now = SystemTime::now();
        Ok(match (facts.ahead, facts.behind) {
            (Some(ahead), _) => now + ahead,
            (None, Some(behind)) => now - behind,
            (None, None) => now,
        })
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn sweep_temporaries(&self, age: Duration) -> Result<usize> {
        if !self.sftp {
            return Ok(0); // S3 writes leave no temporary objects
        }
        let entries = self
            .block(self.op.list_with("/").recursive(true).into_future())
            .map_err(|e| self.error("list", "", e))?;
        let now = SystemTime::now();
        let mut swept = 0;
        for entry in entries {
            let (path, meta) = entry.into_parts();
            let name = path.trim_start_matches('/');
            let base = name.rsplit('/').next().unwrap_or("");
            let old = meta
                .last_modified()
                .map(SystemTime::from)
                .is_some_and(|t| now.duration_since(t).unwrap_or_default() > age);
            if base.starts_with(TEMP_PREFIX) && old {
                match self.block(self.op.delete(name)) {
                    Ok(()) => swept += 1,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(self.error("delete", name, e)),
                }
            }
        }
        Ok(swept)
    }

    fn refuses_second_create(&self) -> Result<bool> {
        Ok(self.probe()?.refuses_second_create)
    }

    fn lock_configuration(&self) -> Result<Option<super::LockConfiguration>> {
        self.object_lock
            .as_ref()
            .map(|lock| lock.configuration(&self.runtime))
            .transpose()
    }

    fn retain(&self, name: &str, until: SystemTime) -> Result<()> {
        check_name(name)?;
        match &self.object_lock {
            Some(lock) => lock.retain(&self.runtime, name, until),
            None => anyhow::bail!(
                "{} (SFTP) has no Object Lock: immutable repositories live on S3 buckets with Object Lock",
                self.display
            ),
        }
    }

    fn retained_until(&self, name: &str) -> Result<Option<SystemTime>> {
        check_name(name)?;
        match &self.object_lock {
            Some(lock) => lock.retained_until(&self.runtime, name),
            None => Ok(None),
        }
    }

    fn top_level(&self) -> Result<Vec<String>> {
        let entries = self
            .block(self.op.list_with("/").limit(16).into_future())
            .map_err(|e| self.error("list", "", e))?;
        Ok(entries
            .into_iter()
            .map(|e| e.path().trim_matches('/').to_string())
            .filter(|n| !n.is_empty() && n != "lost+found")
            .take(16)
            .collect())
    }
}

impl RemoteBackend {
    /// Checks that the repository can be reached with these credentials,
    /// and the bucket exists: one cheap listing.
    pub fn check(&self) -> Result<()> {
        self.block(self.op.list_with("/").limit(1).into_future())
            .map(|_| ())
            .map_err(|e| self.error("reach", "", e))
    }
}
