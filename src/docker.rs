//! The only door to the Docker daemon: a small blocking facade over bollard.
//!
//! volsnap's control flow is sequential (stop, flush, archive, start), so the
//! rest of the program calls plain functions; this module owns a
//! current-thread tokio runtime and blocks on each request. The API version
//! is negotiated, so Debian's docker.io 20.10 (API 1.41) and current engines
//! both work.

use anyhow::{anyhow, Context, Result};
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder,
};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How long a container without a healthcheck must stay up, in one run, to
/// count as started again (see [`Docker::wait_ready`]).
pub const READY_SETTLE: Duration = Duration::from_millis(500);

/// A container seen running without a healthcheck, to be confirmed still
/// up (in the same run) once [`READY_SETTLE`] has passed.
#[derive(Debug, Clone)]
pub struct Settle {
    pub id: String,
    pub name: String,
    started_at: String,
    seen: Instant,
}

impl Settle {
    pub fn confirm(&self, docker: &Docker) -> Result<()> {
        std::thread::sleep(READY_SETTLE.saturating_sub(self.seen.elapsed()));
        let name = &self.name;
        match docker.inspect_container(&self.id)? {
            Some(info) if info.running && info.started_at == self.started_at => Ok(()),
            Some(info) if info.running => Err(anyhow!(
                "container {name} restarted right after it was started (it crashed); see 'docker logs {name}'"
            )),
            Some(_) => Err(anyhow!(
                "container {name} exited right after it was started; see 'docker logs {name}'"
            )),
            None => Err(anyhow!("container {name} disappeared right after it was started")),
        }
    }
}

/// A container as volsnap needs to see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    /// The id of the image it runs (`sha256:…`).
    pub image_id: String,
    pub labels: BTreeMap<String, String>,
    /// The labels its image carries: a container label with the same
    /// value is inherited, not the container's own.
    pub image_labels: BTreeMap<String, String>,
    /// Its own stop timeout in seconds (`docker run --stop-timeout`,
    /// compose's `stop_grace_period`), when set.
    pub stop_timeout: Option<u32>,
    pub running: bool,
    pub paused: bool,
    /// Health status ("healthy", "starting", …) when a healthcheck is set.
    pub health: Option<String>,
    /// When the current run of the container began (State.StartedAt);
    /// changes on every restart.
    pub started_at: String,
    /// The exit code of its last run (0 while running).
    pub exit_code: i64,
    pub mounts: Vec<MountInfo>,
    /// Destinations of `--tmpfs` mounts (HostConfig.Tmpfs).
    pub tmpfs: Vec<String>,
}

/// One mount of a container.
#[derive(Debug, Clone, PartialEq)]
pub struct MountInfo {
    /// "volume", "bind", "tmpfs", …
    pub kind: String,
    /// Volume name (named volumes only).
    pub name: Option<String>,
    pub source: String,
    pub destination: String,
    pub driver: Option<String>,
    pub read_only: bool,
}

/// How a command run in a container ended.
#[derive(Debug, Clone)]
pub struct ExecOutcome {
    /// `None` when it ran out of time (and was killed).
    pub exit_code: Option<i64>,
    /// Its stdout and stderr, interleaved.
    pub output: String,
}

/// A container label holding a command run inside it that exits 0 once
/// the service answers its clients (`sh -c`).
pub const READY_LABEL: &str = "volsnap.ready";
/// A container label holding a command run inside it after a restore put
/// data back and the container started, before the services that depend
/// on it start (Milvus: clear the stale sessions of the restored etcd).
pub const AFTER_RESTORE_LABEL: &str = "volsnap.after-restore";
/// Its time limit in seconds (default 60).
pub const AFTER_RESTORE_TIMEOUT_LABEL: &str = "volsnap.after-restore-timeout";

/// A mount of a container copy.
#[derive(Debug, Clone)]
pub struct CopyMount {
    /// A host path (bind) or a volume name.
    pub source: String,
    pub destination: String,
    pub bind: bool,
    pub read_only: bool,
}

/// The label every drill resource carries (value: the drill's tag), so a
/// drill is torn down, or recovered after a crash, with one sweep.
pub const DRILL_LABEL: &str = "volsnap.drill";

/// A named volume.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeInfo {
    pub name: String,
    pub driver: String,
    pub mountpoint: String,
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

/// Docker objects carrying one label value (container ids, network and
/// volume names).
#[derive(Debug, Default)]
pub struct Labelled {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub volumes: Vec<String>,
}

impl Labelled {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.networks.is_empty() && self.volumes.is_empty()
    }

    /// "container 0123456789ab", "network n", "volume v".
    pub fn describe(&self) -> Vec<String> {
        let containers = self
            .containers
            .iter()
            .map(|id| format!("container {}", &id[..12.min(id.len())]));
        let networks = self.networks.iter().map(|n| format!("network {n}"));
        let volumes = self.volumes.iter().map(|v| format!("volume {v}"));
        containers.chain(networks).chain(volumes).collect()
    }
}

/// How much of a container hook's output is kept (its end).
pub const HOOK_OUTPUT_KEPT: usize = 64 << 10;

/// A connected, version-negotiated Docker client.
pub struct Docker {
    runtime: tokio::runtime::Runtime,
    client: bollard::Docker,
    endpoint: String,
}

fn endpoint_description() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string())
}

fn is_not_found(err: &BollardError) -> bool {
    matches!(
        err,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Failures that mean "nobody answered" rather than "the daemon said no":
/// what a restarting dockerd looks like from here.
fn is_unreachable(err: &BollardError) -> bool {
    matches!(
        err,
        BollardError::IOError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::SocketNotFoundError(_)
            | BollardError::RequestTimeoutError
    )
}

/// How long a request keeps retrying while the daemon does not answer
/// (`VOLSNAP_DOCKER_RETRY_SECS`, default 60). A dockerd restart takes
/// seconds; a backup that gave up at once would leave stopped services.
pub fn reconnect_window() -> Duration {
    let secs = std::env::var("VOLSNAP_DOCKER_RETRY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// The daemon stayed unreachable for the whole [`reconnect_window`]. Callers
/// look for it in an error chain: what was not undone because of it must
/// stay in the journal for `volsnap recover`.
#[derive(Debug, thiserror::Error)]
#[error("the Docker daemon at {endpoint} did not answer for {secs} s ({detail}); once it is back, run 'volsnap recover'")]
pub struct DaemonUnreachable {
    endpoint: String,
    detail: String,
    secs: u64,
}

/// Docker's own message, without bollard's Debug wrapping.
fn describe(err: &BollardError) -> String {
    match err {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

impl Docker {
    /// Connects (honouring `DOCKER_HOST`) and checks the daemon answers.
    pub fn connect() -> Result<Docker> {
        let endpoint = endpoint_description();
        let unreachable = |detail: String| {
            anyhow!(
                "cannot reach the Docker daemon at {endpoint}: {detail}. Is dockerd running \
                 (systemctl start docker)? To use another daemon, set DOCKER_HOST, e.g. \
                 DOCKER_HOST=unix:///run/docker.sock"
            )
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let client =
            bollard::Docker::connect_with_defaults().map_err(|e| unreachable(describe(&e)))?;
        let client = runtime
            .block_on(async {
                let client = client.with_timeout(Duration::from_secs(600));
                tokio::time::timeout(Duration::from_secs(15), client.negotiate_version()).await
            })
            .map_err(|_| unreachable("no answer within 15 s".to_string()))?
            .map_err(|e| unreachable(describe(&e)))?;
        tracing::debug!(api = %client.client_version(), "connected to Docker at {endpoint}");
        Ok(Docker {
            runtime,
            client,
            endpoint,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Runs one request, riding out a daemon restart: while nobody answers,
    /// it is retried for up to [`reconnect_window`].
    fn request<T, F, Fut>(&self, make: F) -> std::result::Result<T, BollardError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, BollardError>>,
    {
        let window = reconnect_window();
        let deadline = crate::fsutil::deadline_after(window);
        let mut warned = false;
        loop {
            match self.runtime.block_on(make()) {
                Err(e) if is_unreachable(&e) && Instant::now() < deadline => {
                    if !warned {
                        tracing::warn!(
                            "the Docker daemon at {} does not answer ({}); retrying for up to {} s",
                            self.endpoint,
                            describe(&e),
                            window.as_secs()
                        );
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                result => {
                    if warned && result.is_ok() {
                        tracing::info!("the Docker daemon at {} answers again", self.endpoint);
                    }
                    return result;
                }
            }
        }
    }

    /// A failed request as a person reads it, marking an unreachable daemon.
    fn failure(&self, err: BollardError, what: String) -> anyhow::Error {
        if is_unreachable(&err) {
            anyhow::Error::new(DaemonUnreachable {
                endpoint: self.endpoint.clone(),
                detail: describe(&err),
                secs: reconnect_window().as_secs(),
            })
            .context(what)
        } else {
            anyhow!("{what}: {}", describe(&err))
        }
    }

    /// Ids of containers (running or not) matching all the label filters.
    pub fn list_container_ids(&self, label_filters: &[String]) -> Result<Vec<String>> {
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        if !label_filters.is_empty() {
            filters.insert("label".to_string(), label_filters.to_vec());
        }
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .request(|| self.client.list_containers(Some(options.clone())))
            .map_err(|e| self.failure(e, "cannot list containers".into()))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// Inspects a container by id or name; `None` when it does not exist.
    pub fn inspect_container(&self, id_or_name: &str) -> Result<Option<ContainerInfo>> {
        let response = match self.request(|| {
            self.client
                .inspect_container(id_or_name, None::<InspectContainerOptions>)
        }) {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.failure(e, format!("cannot inspect container {id_or_name}"))),
        };
        let state = response.state.unwrap_or_default();
        let config = response.config.unwrap_or_default();
        let host_config = response.host_config.unwrap_or_default();
        let mounts = response
            .mounts
            .unwrap_or_default()
            .into_iter()
            .map(|m| MountInfo {
                kind: m.typ.unwrap_or_default(),
                name: m.name,
                source: m.source.unwrap_or_default(),
                destination: m.destination.unwrap_or_default(),
                driver: m.driver,
                read_only: m.rw == Some(false),
            })
            .collect();
        let mut tmpfs: Vec<String> = host_config.tmpfs.unwrap_or_default().into_keys().collect();
        tmpfs.sort();
        let image_id = response.image.unwrap_or_default();
        // An image removed since the container was made has no labels.
        let image_labels = match self.request(|| self.client.inspect_image(&image_id)) {
            Ok(image) => image
                .config
                .and_then(|c| c.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            Err(_) => BTreeMap::new(),
        };
        Ok(Some(ContainerInfo {
            image_id,
            image_labels,
            stop_timeout: config.stop_timeout.and_then(|t| u32::try_from(t).ok()),
            id: response.id.unwrap_or_default(),
            name: response
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image: config.image.unwrap_or_default(),
            labels: config.labels.unwrap_or_default().into_iter().collect(),
            running: state.running.unwrap_or(false),
            paused: state.paused.unwrap_or(false),
            health: state
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty() && s != "none"),
            started_at: state.started_at.unwrap_or_default(),
            exit_code: state.exit_code.unwrap_or_default(),
            mounts,
            tmpfs,
        }))
    }

    /// Whether an image with this id (or name) is on this host.
    pub fn image_exists(&self, image: &str) -> bool {
        self.request(|| self.client.inspect_image(image)).is_ok()
    }

    /// The repositories image `id` is known by here (`volsnap-test/milvus`
    /// for `volsnap-test/milvus:2.3.5`), from its tags and digests; empty
    /// when there is no such image.
    pub fn image_repositories(&self, id: &str) -> Vec<String> {
        let Ok(image) = self.request(|| self.client.inspect_image(id)) else {
            return Vec::new();
        };
        let tags = image.repo_tags.unwrap_or_default();
        let digests = image.repo_digests.unwrap_or_default();
        let mut out: Vec<String> = tags
            .iter()
            .map(|t| repository_of(t).to_string())
            .chain(
                digests
                    .iter()
                    .filter_map(|d| d.split_once('@').map(|(repo, _)| repo.to_string())),
            )
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Inspects a named volume; `None` when it does not exist.
    pub fn inspect_volume(&self, name: &str) -> Result<Option<VolumeInfo>> {
        match self.request(|| self.client.inspect_volume(name)) {
            Ok(v) => Ok(Some(VolumeInfo {
                name: v.name,
                driver: v.driver,
                mountpoint: v.mountpoint,
                options: v.options.into_iter().collect(),
                labels: v.labels.into_iter().collect(),
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.failure(e, format!("cannot inspect volume {name}"))),
        }
    }

    /// Creates a named volume and returns it.
    pub fn create_volume(
        &self,
        name: &str,
        driver: &str,
        options: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> Result<VolumeInfo> {
        let request = bollard::models::VolumeCreateRequest {
            name: Some(name.to_string()),
            driver: Some(driver.to_string()),
            driver_opts: Some(options.clone().into_iter().collect()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.request(|| self.client.create_volume(request.clone()))
            .map_err(|e| self.failure(e, format!("cannot create volume {name}")))?;
        self.inspect_volume(name)?
            .ok_or_else(|| anyhow!("volume {name} vanished right after it was created"))
    }

    /// Stops a container gracefully, killing it after `timeout_secs`.
    pub fn stop(&self, id: &str, timeout_secs: u32) -> Result<()> {
        let options = StopContainerOptionsBuilder::new()
            .t(timeout_secs.min(i32::MAX as u32) as i32)
            .build();
        match self.request(|| self.client.stop_container(id, Some(options.clone()))) {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.failure(e, format!("cannot stop container {id}"))),
        }
    }

    pub fn start(&self, id: &str) -> Result<()> {
        match self.request(|| {
            self.client
                .start_container(id, None::<StartContainerOptions>)
        }) {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.failure(e, format!("cannot start container {id}"))),
        }
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        self.request(|| self.client.pause_container(id))
            .map_err(|e| self.failure(e, format!("cannot pause container {id}")))
    }

    pub fn unpause(&self, id: &str) -> Result<()> {
        self.request(|| self.client.unpause_container(id))
            .map_err(|e| self.failure(e, format!("cannot unpause container {id}")))
    }

    /// Waits until a started container runs (and is healthy, when it has a
    /// healthcheck). Fails when it exits, turns unhealthy, or time runs out.
    ///
    /// Without a healthcheck, "running" is all there is to wait for (as
    /// compose's `service_started`), but a service that crashes a moment
    /// later must not pass: the returned [`Settle`] confirms, once
    /// [`READY_SETTLE`] has passed, that the same run is still up. Callers
    /// with several containers confirm them all at the end, so the wait is
    /// paid once, not per container.
    pub fn wait_ready(&self, id: &str, name: &str, timeout: Duration) -> Result<Option<Settle>> {
        let deadline = crate::fsutil::deadline_after(timeout);
        loop {
            let info = self
                .inspect_container(id)?
                .ok_or_else(|| anyhow!("container {name} disappeared while starting"))?;
            if !info.running {
                return Err(anyhow!(
                    "container {name} exited right after it was started; see 'docker logs {name}'"
                ));
            }
            match info.health.as_deref() {
                None => {
                    return Ok(Some(Settle {
                        id: id.to_string(),
                        name: name.to_string(),
                        started_at: info.started_at,
                        seen: Instant::now(),
                    }))
                }
                Some("healthy") => return Ok(None),
                Some(health) if Instant::now() >= deadline => {
                    return Err(anyhow!(
                        "container {name} is running but not healthy ({health}) after {} s; see 'docker inspect {name}'",
                        timeout.as_secs()
                    ))
                }
                Some(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Waits until the container's readiness command (label `volsnap.ready`,
    /// run inside it) exits 0, for at most `timeout`: what its clients
    /// see, beyond a healthcheck. Without the label: at once.
    pub fn wait_answering(&self, id: &str, name: &str, timeout: Duration) -> Result<()> {
        let Some(info) = self.inspect_container(id)? else {
            return Err(anyhow!("container {name} disappeared while starting"));
        };
        let Some(command) = crate::discovery::own_label(&info, READY_LABEL) else {
            return Ok(());
        };
        self.wait_for_check(id, name, command, timeout)
    }

    /// Runs `command` inside the container until it exits 0, for at most
    /// `timeout`.
    pub fn wait_for_check(
        &self,
        id: &str,
        name: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = crate::fsutil::deadline_after(timeout);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = self.exec(id, command, left.min(Duration::from_secs(30)))?;
            if outcome.exit_code == Some(0) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "container {name} does not answer its readiness check ({READY_LABEL}) after {} s; its last output: {}",
                    timeout.as_secs(),
                    crate::text::escape(outcome.output.trim())
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `wait_ready`, then the settle check at once: for single containers.
    pub fn wait_ready_settled(&self, id: &str, name: &str, timeout: Duration) -> Result<()> {
        match self.wait_ready(id, name, timeout)? {
            Some(settle) => settle.confirm(self),
            None => Ok(()),
        }
    }

    /// Runs `sh -c command` inside a running container (an application
    /// hook), up to `timeout`; on timeout the process is killed with every
    /// process it started. The last [`HOOK_OUTPUT_KEPT`] bytes of its
    /// output are kept.
    pub fn exec(&self, id: &str, command: &str, timeout: Duration) -> Result<ExecOutcome> {
        use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
        use futures_util::StreamExt;
        let config = CreateExecOptions {
            cmd: Some(vec!["sh", "-c", command]),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = self
            .request(|| self.client.create_exec(id, config.clone()))
            .map_err(|e| self.failure(e, format!("cannot run a hook in container {id}")))?;
        let started = self
            .runtime
            .block_on(
                self.client
                    .start_exec(&created.id, None::<StartExecOptions>),
            )
            .map_err(|e| self.failure(e, format!("cannot run a hook in container {id}")))?;
        let mut output = Vec::new();
        let finished = match started {
            StartExecResults::Attached {
                output: mut stream, ..
            } => self.runtime.block_on(async {
                tokio::time::timeout(timeout, async {
                    while let Some(Ok(chunk)) = stream.next().await {
                        output.extend_from_slice(&chunk.into_bytes());
                        // Only the end is ever shown: a chatty hook must
                        // not grow volsnap's memory.
                        if output.len() > 2 * HOOK_OUTPUT_KEPT {
                            output.drain(..output.len() - HOOK_OUTPUT_KEPT);
                        }
                    }
                })
                .await
                .is_ok()
            }),
            StartExecResults::Detached => true,
        };
        let inspect = || {
            self.request(|| self.client.inspect_exec(&created.id))
                .map_err(|e| self.failure(e, format!("cannot inspect a hook in container {id}")))
        };
        let mut inspected = inspect()?;
        // The output can end a moment before the exit code is recorded.
        for _ in 0..50 {
            if !finished || inspected.running != Some(true) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            inspected = inspect()?;
        }
        if !finished {
            // The API cannot stop an exec; its process, and whatever it
            // started, are ours to kill.
            if let Some(pid) = inspected.pid.filter(|p| *p > 0) {
                crate::process::kill_tree(pid as i32);
            }
        }
        if output.len() > HOOK_OUTPUT_KEPT {
            output.drain(..output.len() - HOOK_OUTPUT_KEPT);
        }
        Ok(ExecOutcome {
            exit_code: if finished { inspected.exit_code } else { None },
            output: String::from_utf8_lossy(&output).into_owned(),
        })
    }

    /// The IPv4 address of container `id` on `network`, if it has one.
    pub fn address_on(&self, id: &str, network: &str) -> Result<Option<String>> {
        let response = self
            .request(|| {
                self.client
                    .inspect_container(id, None::<InspectContainerOptions>)
            })
            .map_err(|e| self.failure(e, format!("cannot inspect container {id}")))?;
        Ok(response
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(network))
            .and_then(|endpoint| endpoint.ip_address)
            .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok()))
    }

    /// Creates an internal network (no route out, nothing published).
    pub fn create_internal_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        let request = bollard::models::NetworkCreateRequest {
            name: name.to_string(),
            internal: Some(true),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.request(|| self.client.create_network(request.clone()))
            .map(|_| ())
            .map_err(|e| self.failure(e, format!("cannot create network {name}")))
    }

    /// Creates (does not start) a copy of container `source`: same image,
    /// command, entrypoint, environment, user, working directory and
    /// healthcheck; on `network` only, known there by `aliases`; with
    /// exactly `mounts`; no published ports, no restart policy.
    #[allow(clippy::too_many_arguments)]
    pub fn create_copy(
        &self,
        source: &str,
        name: &str,
        network: &str,
        aliases: Vec<String>,
        mounts: Vec<CopyMount>,
        image: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<String> {
        use bollard::models::{
            ContainerCreateBody, EndpointSettings, HostConfig, Mount, MountType, NetworkingConfig,
        };
        let original = self
            .request(|| {
                self.client
                    .inspect_container(source, None::<InspectContainerOptions>)
            })
            .map_err(|e| self.failure(e, format!("cannot inspect container {source}")))?;
        let config = original.config.unwrap_or_default();
        let tmpfs = original.host_config.and_then(|h| h.tmpfs);
        let host_config = HostConfig {
            mounts: Some(
                mounts
                    .into_iter()
                    .map(|m| Mount {
                        target: Some(m.destination),
                        source: Some(m.source),
                        typ: Some(if m.bind {
                            MountType::BIND
                        } else {
                            MountType::VOLUME
                        }),
                        read_only: Some(m.read_only),
                        ..Default::default()
                    })
                    .collect(),
            ),
            tmpfs,
            network_mode: Some(network.to_string()),
            ..Default::default()
        };
        let mut endpoints = HashMap::new();
        endpoints.insert(
            network.to_string(),
            EndpointSettings {
                aliases: Some(aliases),
                ..Default::default()
            },
        );
        let body = ContainerCreateBody {
            image: image.map(str::to_string).or(config.image),
            cmd: config.cmd,
            entrypoint: config.entrypoint,
            env: config.env,
            user: config.user,
            working_dir: config.working_dir,
            healthcheck: config.healthcheck,
            stop_signal: config.stop_signal,
            labels: Some(labels.clone().into_iter().collect()),
            host_config: Some(host_config),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(endpoints),
            }),
            ..Default::default()
        };
        let options = bollard::query_parameters::CreateContainerOptionsBuilder::new()
            .name(name)
            .build();
        self.request(|| {
            self.client
                .create_container(Some(options.clone()), body.clone())
        })
        .map(|created| created.id)
        .map_err(|e| self.failure(e, format!("cannot create container {name}")))
    }

    /// Removes every container, network and volume carrying `label=value`
    /// (containers forcibly). Returns what it removed, for the report.
    pub fn remove_labelled(&self, label: &str, value: &str) -> Result<Vec<String>> {
        let found = self.labelled(label, value)?;
        let mut removed = Vec::new();
        for id in &found.containers {
            let options = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                .force(true)
                .v(true)
                .build();
            match self.request(|| self.client.remove_container(id, Some(options.clone()))) {
                Ok(()) => removed.push(format!("container {}", &id[..12.min(id.len())])),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(self.failure(e, format!("cannot remove container {id}"))),
            }
        }
        for name in &found.networks {
            match self.request(|| self.client.remove_network(name)) {
                Ok(()) => removed.push(format!("network {name}")),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(self.failure(e, format!("cannot remove network {name}"))),
            }
        }
        for name in &found.volumes {
            match self.request(|| {
                self.client
                    .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
            }) {
                Ok(()) => removed.push(format!("volume {name}")),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(self.failure(e, format!("cannot remove volume {name}"))),
            }
        }
        // Removed means gone: a removal the daemon accepted but did not
        // carry out must keep the cleanup pending.
        let left = self.labelled(label, value)?;
        if !left.is_empty() {
            anyhow::bail!(
                "{} still present after removal ({label}={value})",
                left.describe().join(", ")
            );
        }
        Ok(removed)
    }

    /// What carries `label=value`: containers, networks, volumes.
    pub fn labelled(&self, label: &str, value: &str) -> Result<Labelled> {
        let filter = format!("{label}={value}");
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        filters.insert("label".to_string(), vec![filter.clone()]);
        let containers = self.list_container_ids(std::slice::from_ref(&filter))?;
        let options = bollard::query_parameters::ListNetworksOptionsBuilder::new()
            .filters(&filters)
            .build();
        let networks = self
            .request(|| self.client.list_networks(Some(options.clone())))
            .map_err(|e| self.failure(e, "cannot list networks".into()))?
            .into_iter()
            .filter_map(|n| n.name)
            .collect();
        let options = bollard::query_parameters::ListVolumesOptionsBuilder::new()
            .filters(&filters)
            .build();
        let volumes = self
            .request(|| self.client.list_volumes(Some(options.clone())))
            .map_err(|e| self.failure(e, "cannot list volumes".into()))?
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        Ok(Labelled {
            containers,
            networks,
            volumes,
        })
    }

    /// Containers (running or not) that mount the named volume.
    pub fn containers_using_volume(&self, volume: &str) -> Result<Vec<ContainerInfo>> {
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        filters.insert("volume".to_string(), vec![volume.to_string()]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .request(|| self.client.list_containers(Some(options.clone())))
            .map_err(|e| self.failure(e, "cannot list containers".into()))?;
        let mut out = Vec::new();
        for id in list.into_iter().filter_map(|c| c.id) {
            if let Some(info) = self.inspect_container(&id)? {
                out.push(info);
            }
        }
        Ok(out)
    }
}

/// The repository part of an image reference: `registry:5000/a/b:tag` is
/// `registry:5000/a/b`, `a@sha256:…` is `a`.
pub fn repository_of(reference: &str) -> &str {
    let reference = reference.split('@').next().unwrap_or(reference);
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => reference,
    }
}

#[cfg(test)]
mod tests {
    use super::repository_of;

    #[test]
    fn the_repository_of_an_image_reference() {
        assert_eq!(
            repository_of("volsnap-test/milvus:2.3.5"),
            "volsnap-test/milvus"
        );
        assert_eq!(repository_of("registry:5000/a/b:tag"), "registry:5000/a/b");
        assert_eq!(repository_of("registry:5000/a/b"), "registry:5000/a/b");
        assert_eq!(repository_of("busybox"), "busybox");
        assert_eq!(repository_of("a/b@sha256:00"), "a/b");
    }
}
