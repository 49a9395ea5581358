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
/// count as started again.
pub const READY_SETTLE: Duration = Duration::from_millis(1000);

/// A container as volsnap needs to see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    pub paused: bool,
    /// Health status ("healthy", "starting", …) when a healthcheck is set.
    pub health: Option<String>,
    /// When the current run of the container began (State.StartedAt);
    /// changes on every restart.
    pub started_at: String,
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
}

/// A named volume.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeInfo {
    pub name: String,
    pub driver: String,
    pub mountpoint: String,
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

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
            .runtime
            .block_on(self.client.list_containers(Some(options)))
            .map_err(|e| anyhow!("cannot list containers: {}", describe(&e)))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// Inspects a container by id or name; `None` when it does not exist.
    pub fn inspect_container(&self, id_or_name: &str) -> Result<Option<ContainerInfo>> {
        let response = match self.runtime.block_on(
            self.client
                .inspect_container(id_or_name, None::<InspectContainerOptions>),
        ) {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => {
                return Err(anyhow!(
                    "cannot inspect container {id_or_name}: {}",
                    describe(&e)
                ))
            }
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
            })
            .collect();
        let mut tmpfs: Vec<String> = host_config.tmpfs.unwrap_or_default().into_keys().collect();
        tmpfs.sort();
        Ok(Some(ContainerInfo {
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
            mounts,
            tmpfs,
        }))
    }

    /// Inspects a named volume; `None` when it does not exist.
    pub fn inspect_volume(&self, name: &str) -> Result<Option<VolumeInfo>> {
        match self.runtime.block_on(self.client.inspect_volume(name)) {
            Ok(v) => Ok(Some(VolumeInfo {
                name: v.name,
                driver: v.driver,
                mountpoint: v.mountpoint,
                options: v.options.into_iter().collect(),
                labels: v.labels.into_iter().collect(),
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(anyhow!("cannot inspect volume {name}: {}", describe(&e))),
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
        self.runtime
            .block_on(self.client.create_volume(request))
            .map_err(|e| anyhow!("cannot create volume {name}: {}", describe(&e)))?;
        self.inspect_volume(name)?
            .ok_or_else(|| anyhow!("volume {name} vanished right after it was created"))
    }

    /// Stops a container gracefully, killing it after `timeout_secs`.
    pub fn stop(&self, id: &str, timeout_secs: u32) -> Result<()> {
        let options = StopContainerOptionsBuilder::new()
            .t(timeout_secs as i32)
            .build();
        match self
            .runtime
            .block_on(self.client.stop_container(id, Some(options)))
        {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(anyhow!("cannot stop container {id}: {}", describe(&e))),
        }
    }

    pub fn start(&self, id: &str) -> Result<()> {
        match self.runtime.block_on(
            self.client
                .start_container(id, None::<StartContainerOptions>),
        ) {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(anyhow!("cannot start container {id}: {}", describe(&e))),
        }
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        self.runtime
            .block_on(self.client.pause_container(id))
            .map_err(|e| anyhow!("cannot pause container {id}: {}", describe(&e)))
    }

    pub fn unpause(&self, id: &str) -> Result<()> {
        self.runtime
            .block_on(self.client.unpause_container(id))
            .map_err(|e| anyhow!("cannot unpause container {id}: {}", describe(&e)))
    }

    /// Waits until a started container runs (and is healthy, when it has a
    /// healthcheck). Fails when it exits, turns unhealthy, or time runs out.
    pub fn wait_ready(&self, id: &str, name: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        // Without a healthcheck, "running" alone would accept a service that
        // crashes a moment after it starts: ask that the same run (same
        // StartedAt) has lasted READY_SETTLE.
        let mut seen_run: Option<(String, Instant)> = None;
        loop {
            let info = self
                .inspect_container(id)?
                .ok_or_else(|| anyhow!("container {name} disappeared while starting"))?;
            if !info.running {
                return Err(anyhow!(
                    "container {name} exited right after it was started; see 'docker logs {name}'"
                ));
            }
            let ready = match info.health.as_deref() {
                Some(health) => health == "healthy",
                None => match &seen_run {
                    Some((run, since)) if *run == info.started_at => {
                        since.elapsed() >= READY_SETTLE
                    }
                    _ => {
                        seen_run = Some((info.started_at.clone(), Instant::now()));
                        false
                    }
                },
            };
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let state = match info.health {
                    Some(health) => format!("running but not healthy ({health})"),
                    None => "restarting again and again".to_string(),
                };
                return Err(anyhow!(
                    "container {name} is {state} after {} s; see 'docker inspect {name}'",
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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
            .runtime
            .block_on(self.client.list_containers(Some(options)))
            .map_err(|e| anyhow!("cannot list containers: {}", describe(&e)))?;
        let mut out = Vec::new();
        for id in list.into_iter().filter_map(|c| c.id) {
            if let Some(info) = self.inspect_container(&id)? {
                out.push(info);
            }
        }
        Ok(out)
    }
}
