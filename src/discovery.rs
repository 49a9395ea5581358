//! Discovery: from a selection to a [`Stack`] — its containers in
//! dependency order and every persistent volume under them, resolved to the
//! host path where the data really lives.

use crate::docker::{ContainerInfo, Docker};
use crate::repo::manifest::{MountUse, VolumeKind};
use crate::usage;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

pub const PROJECT_LABEL: &str = "com.docker.compose.project";
pub const SERVICE_LABEL: &str = "com.docker.compose.service";
pub const DEPENDS_ON_LABEL: &str = "com.docker.compose.depends_on";
pub const NUMBER_LABEL: &str = "com.docker.compose.container-number";
/// volsnap's own way to give the order: the services (or, outside compose,
/// container names) a container depends on, comma-separated.
pub const VOLSNAP_DEPENDS_ON_LABEL: &str = "volsnap.depends_on";

/// What survives `docker compose up` recreating a container: its project,
/// service and replica number (the id and often the name do not).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ComposeIdentity {
    pub project: String,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
}

impl ComposeIdentity {
    pub fn of(labels: &std::collections::BTreeMap<String, String>) -> Option<ComposeIdentity> {
        Some(ComposeIdentity {
            project: labels.get(PROJECT_LABEL)?.clone(),
            service: labels.get(SERVICE_LABEL)?.clone(),
            number: labels.get(NUMBER_LABEL).cloned(),
        })
    }

    /// Label filters that find the container holding this identity now.
    pub fn label_filters(&self) -> Vec<String> {
        let mut filters = vec![
            format!("{PROJECT_LABEL}={}", self.project),
            format!("{SERVICE_LABEL}={}", self.service),
        ];
        if let Some(number) = &self.number {
            filters.push(format!("{NUMBER_LABEL}={number}"));
        }
        filters
    }
}

/// The container to act on for `id`: itself while it exists, otherwise the
/// one compose recreated for the same service (`None` when there is none).
pub fn current_container(
    docker: &Docker,
    id: &str,
    identity: Option<&ComposeIdentity>,
) -> Result<Option<String>> {
    if docker.inspect_container(id)?.is_some() {
        return Ok(Some(id.to_string()));
    }
    let Some(identity) = identity else {
        return Ok(None);
    };
    let found = docker.list_container_ids(&identity.label_filters())?;
    if let Some(new_id) = found.first() {
        tracing::warn!(
            "container {} was replaced (compose service {}/{}); acting on its successor {}",
            short_id(id),
            identity.project,
            identity.service,
            short_id(new_id)
        );
    }
    Ok(found.into_iter().next())
}

fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Which containers make up the stack.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// Containers of a compose project (`com.docker.compose.project`).
    Project(String),
    /// Containers by name or id.
    Containers(Vec<String>),
    /// Containers carrying a label `KEY=VALUE`.
    Label(String, String),
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selection::Project(p) => write!(f, "--project {p}"),
            Selection::Containers(c) => {
                let parts: Vec<String> = c.iter().map(|c| format!("--container {c}")).collect();
                f.write_str(&parts.join(" "))
            }
            Selection::Label(k, v) => write!(f, "--label {k}={v}"),
        }
    }
}

/// A container of the stack.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub info: ContainerInfo,
    pub service: Option<String>,
    pub project: Option<String>,
    /// Compose services this one depends on.
    pub depends_on: Vec<String>,
    /// Where `depends_on` came from (`None`: nowhere says).
    pub order_source: Option<String>,
}

impl Container {
    /// What a backup or a kept snapshot records of it, as it is now.
    pub fn record(&self) -> crate::repo::manifest::ContainerRecord {
        crate::repo::manifest::ContainerRecord {
            name: self.info.name.clone(),
            id: self.info.id.clone(),
            image: self.info.image.clone(),
            service: self.service.clone(),
            project: self.project.clone(),
            was_running: self.info.running,
            image_id: Some(self.info.image_id.clone()).filter(|i| !i.is_empty()),
            config_hash: own_label(&self.info, "com.docker.compose.config-hash")
                .map(str::to_string),
            stop: None,
            answered_ms: None,
        }
    }

    pub fn new(info: ContainerInfo) -> Container {
        let own = |key: &str| own_label(&info, key).map(str::to_string);
        let (depends_on, order_source) = if let Some(v) = own(VOLSNAP_DEPENDS_ON_LABEL) {
            (
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                Some(format!("the label {VOLSNAP_DEPENDS_ON_LABEL}")),
            )
        } else if let Some(v) = own(DEPENDS_ON_LABEL) {
            (
                parse_depends_on(&v),
                Some(format!("the label {DEPENDS_ON_LABEL} (Compose v2)")),
            )
        } else {
            (Vec::new(), None)
        };
        Container {
            service: own(SERVICE_LABEL),
            project: own(PROJECT_LABEL),
            depends_on,
            order_source,
            info,
        }
    }
}

/// A label the container carries that its image does not give it (with
/// that value): only those speak for the container.
pub fn own_label<'a>(info: &'a ContainerInfo, key: &str) -> Option<&'a str> {
    let value = info.labels.get(key)?;
    (info.image_labels.get(key) != Some(value)).then_some(value.as_str())
}

/// Fills in the order of compose containers whose labels do not give one
/// from the compose files they name (docker-compose 1.29 writes no
/// depends_on label); what was read, and what could not be, in `notes`.
fn order_from_compose_files(containers: &mut [Container], notes: &mut Vec<String>) {
    let mut read: BTreeMap<(String, String), crate::compose::ComposeOrder> = BTreeMap::new();
    for c in containers.iter_mut() {
        if c.order_source.is_some() {
            continue;
        }
        let (Some(service), Some(dir), Some(files)) = (
            c.service.clone(),
            own_label(&c.info, crate::compose::WORKING_DIR_LABEL),
            own_label(&c.info, crate::compose::CONFIG_FILES_LABEL),
        ) else {
            continue;
        };
        let order = read
            .entry((dir.to_string(), files.to_string()))
            .or_insert_with(|| {
                let order = crate::compose::read_order(dir, files);
                for problem in &order.problems {
                    notes.push(format!("compose file not read (ignored): {problem}"));
                }
                order
            });
        if order.files.is_empty() {
            continue;
        }
        c.depends_on = order.depends_on.get(&service).cloned().unwrap_or_default();
        c.order_source = Some(format!(
            "the compose file{} {}",
            if order.files.len() > 1 { "s" } else { "" },
            order
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
}

/// What `plan` says of the order: where it came from, or a warning when
/// a stack of several services has none.
fn describe_order(containers: &[Container], notes: &mut Vec<String>) {
    let mut sources: Vec<&str> = containers
        .iter()
        .filter_map(|c| c.order_source.as_deref())
        .collect();
    sources.sort_unstable();
    sources.dedup();
    if !sources.is_empty() {
        notes.insert(0, format!("order from {}", sources.join("; ")));
    } else if containers.len() > 1 {
        notes.insert(
            0,
            format!(
                "warning: nothing gives an order for these {} containers (no compose depends_on, no {VOLSNAP_DEPENDS_ON_LABEL} label): they stop and start by name, which may stop a database before the service that writes to it",
                containers.len()
            ),
        );
    }
}

/// A persistent volume of the stack, backed up once however many
/// containers mount it.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Docker volume name, or the host path of a bind mount.
    pub name: String,
    pub kind: VolumeKind,
    /// Where the data lives on this host.
    pub host_path: PathBuf,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub mounted_by: Vec<MountUse>,
    /// Data and files, once measured (`Stack::measured`); else the size
    /// the last backup found, when known, or 0.
    pub bytes: u64,
    pub files: u64,
    /// Exclude patterns, relative to the volume's root (labels, then
    /// --exclude).
    pub exclude: Vec<String>,
}

impl Volume {
    /// The archive's base name: the volume name, or for a bind mount its
    /// path made file-name safe.
    pub fn archive_stem(&self) -> String {
        // A live volume's name is Docker's, so always one plain component.
        crate::repo::manifest::local_name(self.kind, &self.name)
            .unwrap_or_else(|_| format!("volume-{}", hex::encode(self.name.as_bytes())))
    }
}

/// The discovered stack.
#[derive(Debug, Clone, PartialEq)]
pub struct Stack {
    pub selection: Selection,
    /// Containers in start order: dependencies before dependents.
    pub containers: Vec<Container>,
    pub volumes: Vec<Volume>,
    /// Mounts not backed up, with the reason (tmpfs, single files, …).
    pub skipped: Vec<String>,
    /// Where the stop and start order came from, and compose files that
    /// could not be read.
    pub order_notes: Vec<String>,
    /// Whether the volumes' `bytes` and `files` were measured (a full
    /// walk of the data: done only when something needs the sizes).
    pub measured: bool,
    /// Content of the files modified since a given time (the last backup),
    /// when measured with one.
    pub changed_bytes: Option<u64>,
}

impl Stack {
    /// Walks every volume to measure its data (bytes and files).
    pub fn measure(&mut self) -> Result<()> {
        self.measure_since(None)
    }

    /// Measures, and with `since` also counts the content of files whose
    /// data or inode changed from then on.
    pub fn measure_since(&mut self, since: Option<chrono::DateTime<chrono::Utc>>) -> Result<()> {
        let mut changed = 0;
        for v in &mut self.volumes {
            let usage = crate::fsutil::tree_usage(&v.host_path, since.map(|t| t.timestamp()))?;
            (v.bytes, v.files) = (usage.bytes, usage.files);
            changed += usage.changed;
        }
        self.measured = true;
        self.changed_bytes = since.map(|_| changed);
        Ok(())
    }

    /// An upper bound of the data, without a walk: the space used on the
    /// filesystems holding the volumes (each counted once).
    pub fn used_space_bound(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let mut seen = BTreeSet::new();
        let mut total = 0u64;
        for v in &self.volumes {
            let dev = std::fs::metadata(&v.host_path)
                .with_context(|| format!("cannot read {}", v.host_path.display()))?
                .dev();
            if seen.insert(dev) {
                let stat = nix::sys::statvfs::statvfs(&v.host_path)
                    .with_context(|| format!("cannot read {}", v.host_path.display()))?;
                let used = stat.blocks().saturating_sub(stat.blocks_free());
                total = total.saturating_add(used as u64 * stat.fragment_size() as u64);
            }
        }
        Ok(total)
    }

    pub fn total_bytes(&self) -> u64 {
        self.volumes.iter().map(|v| v.bytes).sum()
    }

    /// Containers in stop order: dependents before their dependencies.
    pub fn stop_order(&self) -> impl Iterator<Item = &Container> {
        self.containers.iter().rev()
    }
}

/// Parses compose's depends_on label: `db:service_started:false,cache:...`.
pub fn parse_depends_on(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter_map(|item| item.split(':').next())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Finds the containers of a selection and everything they store.
/// Finds the stack's containers and volumes. Sizes are not measured here
/// (see [`Stack::measure`]): on a tree of millions of files that walk costs
/// as much as a stat of every file.
pub fn discover(docker: &Docker, selection: &Selection) -> Result<Stack> {
    let infos = select_containers(docker, selection)?;
    let mut containers: Vec<Container> = infos.into_iter().map(Container::new).collect();
    let mut order_notes = Vec::new();
    order_from_compose_files(&mut containers, &mut order_notes);
    describe_order(&containers, &mut order_notes);
    let containers = start_order(containers)?;
    let (volumes, skipped) = resolve_volumes(docker, &containers)?;
    Ok(Stack {
        selection: selection.clone(),
        containers,
        volumes,
        skipped,
        order_notes,
        measured: false,
        changed_bytes: None,
    })
}

fn select_containers(docker: &Docker, selection: &Selection) -> Result<Vec<ContainerInfo>> {
    let ids = match selection {
        Selection::Project(project) => {
            let ids = docker.list_container_ids(&[format!("{PROJECT_LABEL}={project}")])?;
            if ids.is_empty() {
                return Err(usage!(
                    "no container belongs to compose project {project:?}; 'docker ps -a --filter label={PROJECT_LABEL}' shows the projects there are"
                ));
            }
            ids
        }
        Selection::Label(key, value) => {
            let ids = docker.list_container_ids(&[format!("{key}={value}")])?;
            if ids.is_empty() {
                return Err(usage!(
                    "no container has the label {key}={value}; 'docker ps -a --filter label={key}' shows which do"
                ));
            }
            ids
        }
        Selection::Containers(names) => {
            if names.is_empty() {
                return Err(usage!(
                    "the selection is empty: name at least one --container"
                ));
            }
            names.clone()
        }
    };
    let mut infos = Vec::new();
    let mut seen = BTreeSet::new();
    for id in ids {
        let info = docker.inspect_container(&id)?.ok_or_else(|| {
            usage!("no container named {id:?}; 'docker ps -a' lists the containers there are")
        })?;
        if seen.insert(info.id.clone()) {
            infos.push(info);
        }
    }
    Ok(infos)
}

/// Orders containers so that every one comes after the services it depends
/// on; among containers free to go, by name, so the order is stable.
pub fn start_order(containers: Vec<Container>) -> Result<Vec<Container>> {
    let n = containers.len();
    // deps[i]: indices of the containers i depends on (within the selection).
    let deps: Vec<BTreeSet<usize>> = containers
        .iter()
        .map(|c| {
            containers
                .iter()
                .enumerate()
                .filter(|(_, d)| d.service.as_ref().is_some_and(|s| c.depends_on.contains(s)))
                .filter(|(_, d)| d.info.id != c.info.id)
                .map(|(j, _)| j)
                .collect()
        })
        .collect();
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let next = (0..n)
            .filter(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d]))
            .min_by(|&a, &b| containers[a].info.name.cmp(&containers[b].info.name));
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => {
                let stuck: Vec<&str> = (0..n)
                    .filter(|&i| !placed[i])
                    .map(|i| containers[i].info.name.as_str())
                    .collect();
                bail!(
                    "the depends_on relations of {} form a cycle; fix the compose file",
                    stuck.join(", ")
                );
            }
        }
    }
    let mut slots: Vec<Option<Container>> = containers.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

fn resolve_volumes(
    docker: &Docker,
    containers: &[Container],
) -> Result<(Vec<Volume>, Vec<String>)> {
    let mut volumes: Vec<Volume> = Vec::new();
    let mut skipped = Vec::new();
    for container in containers {
        let name = &container.info.name;
        for dest in &container.info.tmpfs {
            skipped.push(format!(
                "{name}:{dest} is a tmpfs mount: not persistent, not backed up"
            ));
        }
        for mount in &container.info.mounts {
            let usage = MountUse {
                container: name.clone(),
                destination: mount.destination.clone(),
            };
            let (volume_name, kind, host_path, driver, opts, labels) = match mount.kind.as_str() {
                "volume" => {
                    let vname = mount.name.clone().unwrap_or_default();
                    let info = docker.inspect_volume(&vname)?.with_context(|| {
                        format!("volume {vname} of container {name} does not exist")
                    })?;
                    let path = volume_host_path(&info.driver, &info.options, &info.mountpoint);
                    (
                        vname,
                        VolumeKind::Volume,
                        path,
                        Some(info.driver),
                        info.options,
                        info.labels,
                    )
                }
                "bind" => {
                    let path = PathBuf::from(&mount.source);
                    if !path.is_dir() {
                        skipped.push(format!(
                            "{name}:{} binds {}, which is not a directory: not backed up",
                            mount.destination, mount.source
                        ));
                        continue;
                    }
                    (
                        mount.source.clone(),
                        VolumeKind::Bind,
                        path,
                        None,
                        BTreeMap::new(),
                        BTreeMap::new(),
                    )
                }
                "tmpfs" => {
                    skipped.push(format!(
                        "{name}:{} is a tmpfs mount: not persistent, not backed up",
                        mount.destination
                    ));
                    continue;
                }
                other => {
                    skipped.push(format!(
                        "{name}:{} is a {other} mount: not supported, not backed up",
                        mount.destination
                    ));
                    continue;
                }
            };
            let (whole, mut exclude) = excluded_by_labels(container, &mount.destination, &labels);
            if let Some(by) = whole {
                skipped.push(format!(
                    "{volume_name} (mounted by {name} at {}) is left out on purpose: {by}",
                    mount.destination
                ));
                continue;
            }
            if let Some(existing) = volumes
                .iter_mut()
                .find(|v| v.name == volume_name || v.host_path == host_path)
            {
                existing.mounted_by.push(usage);
                for pattern in exclude.drain(..) {
                    if !existing.exclude.contains(&pattern) {
                        existing.exclude.push(pattern);
                    }
                }
                continue;
            }
            if !host_path.is_dir() {
                bail!(
                    "the data of {volume_name} (mounted by {name}) should be at {}, which is not a directory; is the volume's device mounted?",
                    host_path.display()
                );
            }
            volumes.push(Volume {
                name: volume_name,
                kind,
                host_path,
                driver,
                driver_opts: opts,
                labels,
                mounted_by: vec![usage],
                bytes: 0,
                files: 0,
                exclude,
            });
        }
    }
    Ok((volumes, skipped))
}

/// What the `volsnap.exclude` labels say of one mount: whether the whole
/// volume is left out (and by which label), else its patterns relative to
/// the volume's root. A volume's label holds such patterns, or `true`; a
/// container's holds paths inside the container (those under the mount's
/// destination apply, relative to it) or name patterns without `/`.
fn excluded_by_labels(
    container: &Container,
    destination: &str,
    volume_labels: &BTreeMap<String, String>,
) -> (Option<String>, Vec<String>) {
    use crate::archive::exclude::{split_label, EXCLUDE_LABEL};
    let mut patterns = Vec::new();
    if let Some(value) = volume_labels.get(EXCLUDE_LABEL) {
        if value.trim() == "true" {
            return (
                Some(format!("the volume's label {EXCLUDE_LABEL}=true")),
                Vec::new(),
            );
        }
        patterns.extend(split_label(value));
    }
    if let Some(value) = container.info.labels.get(EXCLUDE_LABEL) {
        let mount = destination.trim_end_matches('/');
        for pattern in split_label(value) {
            if !pattern.starts_with('/') {
                patterns.push(pattern);
            } else if pattern.trim_end_matches('/') == mount {
                return (
                    Some(format!(
                        "label {EXCLUDE_LABEL} of container {} names its mount point",
                        container.info.name
                    )),
                    Vec::new(),
                );
            } else if let Some(inside) = pattern.strip_prefix(&format!("{mount}/")) {
                // Anchored: that path in this volume, not a name anywhere.
                patterns.push(format!("/{inside}"));
            }
        }
    }
    (None, patterns)
}

/// Where a named volume's data lives on the host: for a `local` volume
/// created with `type=none, o=bind, device=X` it is X (Docker's mountpoint is
/// then only a bind of it, present while a container runs).
pub fn volume_host_path(
    driver: &str,
    options: &BTreeMap<String, String>,
    mountpoint: &str,
) -> PathBuf {
    let is_bind = options.get("type").is_some_and(|t| t == "none")
        && options
            .get("o")
            .is_some_and(|o| o.split(',').any(|opt| opt == "bind" || opt == "rbind"));
    match options.get("device") {
        Some(device) if driver == "local" && is_bind => PathBuf::from(device),
        _ => PathBuf::from(mountpoint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, service: &str, depends: &str) -> Container {
        let mut labels = BTreeMap::new();
        labels.insert(SERVICE_LABEL.to_string(), service.to_string());
        if !depends.is_empty() {
            labels.insert(DEPENDS_ON_LABEL.to_string(), depends.to_string());
        }
        Container::new(ContainerInfo {
            id: format!("id-{name}"),
            name: name.to_string(),
            image: "img".into(),
            image_id: "sha256:1".into(),
            labels,
            image_labels: BTreeMap::new(),
            stop_timeout: None,
            running: true,
            paused: false,
            health: None,
            started_at: String::new(),
            exit_code: 0,
            mounts: vec![],
            tmpfs: vec![],
        })
    }

    fn names(cs: &[Container]) -> Vec<&str> {
        cs.iter().map(|c| c.info.name.as_str()).collect()
    }

    #[test]
    fn dependencies_start_first_and_unrelated_keep_name_order() {
        let milvus = container(
            "m-milvus",
            "milvus",
            "etcd:service_started:false,minio:service_healthy:true",
        );
        let etcd = container("m-etcd", "etcd", "");
        let minio = container("m-minio", "minio", "");
        let other = container("a-other", "other", "");
        let ordered = start_order(vec![milvus, etcd, minio, other]).unwrap();
        assert_eq!(
            names(&ordered),
            ["a-other", "m-etcd", "m-minio", "m-milvus"]
        );
    }

    #[test]
    fn cycles_are_reported() {
        let a = container("ca", "a", "b:service_started");
        let b = container("cb", "b", "a:service_started");
        let err = start_order(vec![a, b]).unwrap_err().to_string();
        assert!(err.contains("cycle") && err.contains("ca"), "{err}");
    }

    #[test]
    fn bind_type_local_volume_resolves_to_device() {
        let mut opts = BTreeMap::new();
        opts.insert("type".into(), "none".into());
        opts.insert("o".into(), "bind".into());
        opts.insert("device".into(), "/mnt/ssd/etcd".into());
        let mp = "/var/lib/docker/volumes/x/_data";
        assert_eq!(
            volume_host_path("local", &opts, mp),
            PathBuf::from("/mnt/ssd/etcd")
        );
        opts.insert("type".into(), "nfs".into());
        assert_eq!(volume_host_path("local", &opts, mp), PathBuf::from(mp));
        assert_eq!(
            volume_host_path("local", &BTreeMap::new(), mp),
            PathBuf::from(mp)
        );
    }

    #[test]
    fn depends_on_label_forms() {
        assert_eq!(
            parse_depends_on("etcd:service_started:false,minio:service_healthy:true"),
            ["etcd", "minio"]
        );
        assert_eq!(parse_depends_on("db"), ["db"]);
        assert!(parse_depends_on("").is_empty());
    }
}
