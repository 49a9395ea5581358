//! A restore of a backup into the original volumes, new volumes, or a
//! directory: targets taken from live Docker state (never from the
//! backup's word alone), the containers using them stopped and started
//! again, every volume swapped in as one through the run's journal.

use super::services::{image_changes, start_again, stop_in_order};
use super::source::{open_backup, Source};
use super::RunContext;
use crate::cancel::Cancel;
use crate::discovery::{start_order, volume_host_path, Container, Selection};
use crate::docker::{ContainerInfo, Docker};
use crate::journal::Journal;
use crate::repo::manifest::{Manifest, VolumeKind, VolumeRecord};
use crate::repo::Scope;
use crate::restore::{restore_volumes, RestoreOptions, VolumeRestore};
use crate::usage;
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// What to restore, and where.
pub struct RestoreRequest {
    pub repo: PathBuf,
    /// A backup id, or `latest` within `scope`.
    pub id: String,
    pub scope: Scope,
    /// The stack named on the command line: bind paths are written only
    /// where one of its containers binds them now.
    pub stack: Option<Selection>,
    /// `OLD=NEW` volume renames, and `NAME` alone: only these volumes are
    /// restored (every volume when empty).
    pub volumes: Vec<String>,
    pub target_dir: Option<PathBuf>,
    /// Write out only the stack's definition (compose files, read-only
    /// bound files), under their host paths, into this new or empty
    /// directory; Docker is not touched.
    pub definition_to: Option<PathBuf>,
    pub force: bool,
    pub allow_special: bool,
    /// Only the entries matching these patterns (and what lies beneath a
    /// matching directory), `--include`.
    pub include: Vec<String>,
}

/// Progress of the volumes being restored (in the order given).
pub trait RestoreProgress {
    fn started(&self, volumes: &[(&str, u64)]);
    fn advanced(&self, volume: usize, bytes: u64);
    fn finished(&self);
}

/// One restored volume.
pub struct RestoredVolume {
    pub name: String,
    /// Where it went, for people ("volume x", "bind mount /p (of c)").
    pub destination: String,
    pub files: u64,
    pub bytes: u64,
    /// Exclude patterns of the backup: what is missing on purpose.
    pub excluded: Vec<String>,
}

pub struct RestoreDone {
    pub id: String,
    pub volumes: Vec<RestoredVolume>,
    /// Set when the data is restored but something after it failed.
    pub problem: Option<String>,
    /// Files of the stack's definition the backup holds and this restore
    /// did not write out (`--definition-to` does).
    pub definition_left: u64,
}

/// One volume to restore and where.
struct Target<'m> {
    volume: &'m VolumeRecord,
    path: PathBuf,
    /// How to call the destination in messages.
    label: String,
}

pub fn perform(
    request: &RestoreRequest,
    run: &RunContext<'_>,
    progress: &dyn RestoreProgress,
) -> Result<RestoreDone> {
    let args = request;
    let cancel = run.cancel;
    let (id, source, manifest, check) = open_backup(&args.repo, &args.id, &args.scope, cancel)?;
    let (mapping, only) = parse_mapping(&args.volumes, &manifest)?;
    let definition_only = args.definition_to.is_some();
    if definition_only && (args.target_dir.is_some() || !args.volumes.is_empty() || args.force) {
        return Err(usage!(
            "--definition-to writes out only the stack's definition, into a new or empty directory; it takes no --target-dir, --volume or --force"
        ));
    }
    let definitions: Vec<&VolumeRecord> = manifest
        .volumes
        .iter()
        .filter(|v| is_definition(v))
        .collect();
    if definitions.len() > 1 {
        anyhow::bail!(
            "backup {id} holds {} stack definitions where a backup has at most one (damaged or tampered with); nothing was restored",
            definitions.len()
        );
    }
    for d in &definitions {
        d.local_name()?; // its one name, or refused
    }
    if definition_only && definitions.is_empty() {
        return Err(usage!(
            "backup {id} keeps no stack definition (its stack had no compose file or read-only bound file, it is a format-1 backup, or it was taken before volsnap kept one)"
        ));
    }
    if args.target_dir.is_some() && !mapping.is_empty() {
        return Err(usage!(
            "--target-dir restores each volume into DIR/<volume>; --volume there takes names only (--volume NAME), not OLD=NEW"
        ));
    }
    let chosen = |v: &VolumeRecord| {
        if definition_only || is_definition(v) {
            return definition_only && is_definition(v);
        }
        (mapping.is_empty() && only.is_empty())
            || mapping.contains_key(&v.name)
            || only.contains(&v.name)
    };
    let salvage = triage(&manifest, &check.problems, &chosen);
    if !salvage.blocking.is_empty() {
        let intact: Vec<&str> = manifest
            .volumes
            .iter()
            .filter(|v| !salvage.damaged.contains(&v.name))
            .map(|v| v.name.as_str())
            .collect();
        let hint = if salvage.damaged.is_empty() || intact.is_empty() {
            String::new()
        } else {
            format!(
                ". The damage is confined to {}; the other volumes can be restored alone: {}",
                salvage
                    .damaged
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                intact
                    .iter()
                    .map(|n| format!("--volume {n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        return Err(anyhow::anyhow!(
            "backup {id} failed verification, not restoring it: {}{hint}",
            salvage.blocking.join("; ")
        ));
    }
    for problem in &salvage.elsewhere {
        eprintln!("volsnap: warning: not restored, and damaged: {problem}");
    }
    let include = crate::archive::Exclude::new(&args.include)?;
    if !include.is_empty() && args.target_dir.is_none() && !definition_only {
        let in_place: Vec<&str> = manifest
            .volumes
            .iter()
            .filter(|v| chosen(v) && !mapping.contains_key(&v.name))
            .map(|v| v.name.as_str())
            .collect();
        if !in_place.is_empty() {
            return Err(usage!(
                "--include restores part of a volume, and a restore replaces a volume's whole content: into {} it would leave only what matches. Restore the part elsewhere (--target-dir DIR, or --volume OLD=NEW) and copy what you need",
                in_place.join(", ")
            ));
        }
    }
    let keep = if include.is_empty() {
        None
    } else {
        let contents = super::contents::read(&args.repo, &id, &args.scope, cancel)?;
        Some(included(&contents, &include)?)
    };
    let _lock = super::begin_run(run.state_dir)?;
    let mut journal = Journal::create(
        run.state_dir,
        &format!("restore-{id}-{}", std::process::id()),
        &super::command_line(),
    )?;

    let docker = match (&args.target_dir, &args.definition_to) {
        (None, None) => Some(Docker::connect()?),
        _ => None,
    };
    let targets = match (
        args.target_dir.as_ref().or(args.definition_to.as_ref()),
        &docker,
    ) {
        (Some(dir), _) if definition_only => {
            let root = target_root(dir)?;
            manifest
                .volumes
                .iter()
                .filter(|v| chosen(v))
                .map(|v| Target {
                    volume: v,
                    label: root.display().to_string(),
                    path: root.clone(),
                })
                .collect()
        }
        (Some(root), _) => {
            let root = target_root(root)?;
            manifest
                .volumes
                .iter()
                .filter(|v| chosen(v))
                .map(|v| {
                    // The directory's name comes from the validated volume
                    // name, never from a path the backup stored.
                    let path = root.join(v.local_name()?);
                    Ok(Target {
                        volume: v,
                        label: path.display().to_string(),
                        path,
                    })
                })
                .collect::<Result<_>>()?
        }
        (None, Some(docker)) => {
            // With a stack named, a bind path is written only if one of
            // its containers binds it now (none may exist yet on a
            // replacement machine: then no bind path is written).
            let selected: Option<Vec<String>> = args.stack.as_ref().map(|s| {
                crate::discovery::discover(docker, s)
                    .map(|stack| {
                        stack
                            .containers
                            .iter()
                            .map(|c| c.info.name.clone())
                            .collect()
                    })
                    .unwrap_or_default()
            });
            docker_targets(docker, &manifest, &mapping, &only, &id, selected.as_deref())?
        }
        (None, None) => {
            unreachable!("a Docker connection exists whenever there is no --target-dir")
        }
    };

    for t in &targets {
        not_a_link(&t.path)?;
    }
    // Who uses the targets? Refuse, or with --force stop them (and always
    // start them again afterwards).
    let mut users: Vec<ContainerInfo> = Vec::new();
    if let Some(docker) = &docker {
        for t in &targets {
            for c in users_of(docker, t)? {
                if c.running && !users.iter().any(|u| u.id == c.id) {
                    users.push(c);
                }
            }
        }
    }
    if let Some(docker) = &docker {
        for warning in image_changes(docker, &users, &manifest.containers, "the backup") {
            eprintln!("volsnap: warning: {warning}");
        }
    }
    if !args.force {
        let mut reasons = Vec::new();
        if !users.is_empty() {
            let names: Vec<&str> = users.iter().map(|c| c.name.as_str()).collect();
            reasons.push(format!(
                "the restore target is in use by running container(s) {} (--force stops them and starts them again afterwards)",
                names.join(", ")
            ));
        }
        let holding: Vec<String> = targets
            .iter()
            .filter_map(|t| holds_data(&t.path).map(|n| format!("{} ({n} entries)", t.label)))
            .collect();
        if !holding.is_empty() {
            reasons.push(format!(
                "it would replace the data in {}",
                holding.join(", ")
            ));
        }
        if !reasons.is_empty() {
            return Err(usage!(
                "not restoring backup {id}: {}. Nothing was changed; pass --force to replace the data (the previous content is deleted once the new content is in place), or restore elsewhere with --volume OLD=NEW or --target-dir DIR",
                reasons.join("; and ")
            ));
        }
    }
    let ordered = start_order(users.into_iter().map(Container::new).collect())?;
    let mut stopped: Vec<&Container> = Vec::new();
    let mut result = Ok(Vec::new());
    if let Some(docker) = &docker {
        let (done, failure) = stop_in_order(docker, &ordered, None, &mut journal)?;
        stopped = done;
        if let Some(e) = failure {
            result = Err(e);
        }
    }
    if result.is_ok() {
        result = restore_all(
            &source,
            &targets,
            keep.as_ref(),
            args,
            cancel,
            progress,
            &mut journal,
        );
    }
    let mut restart_errors = Vec::new();
    let mut step_failed = None;
    if let Some(docker) = &docker {
        let in_order: Vec<&Container> = stopped.iter().rev().copied().collect();
        let restored = result.is_ok();
        let ready = std::time::Duration::from_secs(180);
        match start_again(docker, &in_order, restored, ready, &mut journal)? {
            Ok(errors) => restart_errors = errors,
            Err(failure) => step_failed = Some(failure),
        }
    }
    let volumes = match result {
        Ok(volumes) => volumes,
        Err(e) => {
            journal.finish_if_clean()?;
            return Err(e);
        }
    };
    if let Some(failure) = step_failed {
        journal.finish()?;
        return Err(anyhow::anyhow!(
            "backup {id} was restored, but {failure}; the restored stack is left stopped, with its new data: fix the cause and start it (docker start, or docker-compose up -d)"
        ));
    }
    let problem = if restart_errors.is_empty() {
        journal.finish()?;
        None
    } else {
        Some(format!(
            "restore completed, but containers did not start again (the journal is kept: 'volsnap recover' retries): {}",
            restart_errors.join("; ")
        ))
    };
    let definition_left = manifest
        .volumes
        .iter()
        .filter(|v| is_definition(v) && !chosen(v))
        .map(|v| v.files)
        .sum();
    Ok(RestoreDone {
        id,
        volumes,
        problem,
        definition_left,
    })
}

/// `--target-dir DIR` as given, made and resolved once: the operator
/// chose it, symlinks on the way included. What lies beneath it is created
/// relative to it and never through a symlink (see `restore::stage_volume`).
fn target_root(root: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(root)
        .with_context(|| format!("cannot create restore target {}", root.display()))?;
    root.canonicalize()
        .with_context(|| format!("cannot resolve restore target {}", root.display()))
}

#[allow(clippy::too_many_arguments)]
fn restore_all(
    source: &Source,
    targets: &[Target<'_>],
    keep: Option<&BTreeMap<String, HashSet<Vec<u8>>>>,
    args: &RestoreRequest,
    cancel: &Cancel,
    progress: &dyn RestoreProgress,
    journal: &mut Journal,
) -> Result<Vec<RestoredVolume>> {
    let options = RestoreOptions {
        allow_special: args.allow_special,
    };
    let items: Vec<VolumeRestore<'_>> = targets
        .iter()
        .map(|t| {
            Ok(VolumeRestore {
                payload: source.payload(t.volume)?,
                target: t.path.clone(),
                only: keep.map(|k| k.get(&t.volume.name).unwrap_or(&NOTHING)),
            })
        })
        .collect::<Result<_>>()?;
    let sizes: Vec<(&str, u64)> = targets
        .iter()
        .map(|t| (t.volume.name.as_str(), t.volume.bytes))
        .collect();
    progress.started(&sizes);
    let restored = restore_volumes(
        &items,
        options,
        cancel,
        &|index, n| progress.advanced(index, n),
        Some(journal),
    );
    progress.finished();
    Ok(targets
        .iter()
        .zip(restored?)
        .map(|(t, stats)| RestoredVolume {
            name: t.volume.name.clone(),
            destination: t.label.clone(),
            files: stats.files,
            bytes: stats.bytes,
            excluded: t.volume.excluded.clone(),
        })
        .collect())
}

static NOTHING: std::sync::LazyLock<HashSet<Vec<u8>>> = std::sync::LazyLock::new(HashSet::new);

/// Per volume, the entries `--include` keeps: those matching, everything
/// beneath a matching directory, the directories leading to them, and the
/// file a kept hard link points to.
fn included(
    contents: &super::contents::Contents,
    include: &crate::archive::Exclude,
) -> Result<BTreeMap<String, HashSet<Vec<u8>>>> {
    fn with_ancestors(keep: &mut HashSet<Vec<u8>>, raw: &[u8]) {
        for (i, &b) in raw.iter().enumerate() {
            if b == b'/' {
                keep.insert(raw[..i].to_vec());
            }
        }
        keep.insert(raw.to_vec());
    }
    let mut out = BTreeMap::new();
    let mut matched_any = false;
    for (volume, entries) in &contents.volumes {
        let mut keep = HashSet::new();
        for listed in entries {
            let raw = listed.entry.raw_path()?;
            let hit = raw
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == b'/')
                .map(|(i, _)| &raw[..i])
                .chain(std::iter::once(&raw[..]))
                .any(|prefix| include.matches(prefix));
            if !hit {
                continue;
            }
            matched_any = true;
            with_ancestors(&mut keep, &raw);
            if listed.entry.kind == crate::repo::manifest::EntryKind::Hardlink {
                if let Some(target) = listed.entry.raw_target()? {
                    with_ancestors(&mut keep, &target);
                }
            }
        }
        out.insert(volume.clone(), keep);
    }
    if !matched_any {
        return Err(usage!(
            "nothing in backup {} matches --include {}; 'volsnap ls --repo REPO {}' lists what it holds",
            contents.id,
            include.patterns().join(" --include "),
            contents.id
        ));
    }
    Ok(out)
}

/// Verification problems sorted for a restore of some volumes: those that
/// concern a volume not being restored do not block it.
struct Triage {
    blocking: Vec<String>,
    elsewhere: Vec<String>,
    /// Volumes some problem is about.
    damaged: std::collections::BTreeSet<String>,
}

fn triage(
    manifest: &Manifest,
    problems: &[String],
    chosen: &dyn Fn(&VolumeRecord) -> bool,
) -> Triage {
    let mut triage = Triage {
        blocking: Vec::new(),
        elsewhere: Vec::new(),
        damaged: Default::default(),
    };
    for problem in problems {
        // Problems name their volume (or its archive) first. Only names a
        // Docker volume or archive can have count, so a crafted name
        // cannot claim another volume's problem.
        let about = manifest.volumes.iter().find(|v| {
            [&v.name, &v.archive].iter().any(|name| {
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                    && problem.starts_with(&format!("{name}:"))
            })
        });
        if let Some(v) = about {
            triage.damaged.insert(v.name.clone());
        }
        match about {
            Some(v) if !chosen(v) => triage.elsewhere.push(problem.clone()),
            _ => triage.blocking.push(problem.clone()),
        }
    }
    triage
}

/// `--volume OLD=NEW` pairs and `--volume NAME` names, checked against
/// the backup.
fn parse_mapping(
    pairs: &[String],
    manifest: &Manifest,
) -> Result<(BTreeMap<String, String>, Vec<String>)> {
    let mut map = BTreeMap::new();
    let mut only = Vec::new();
    for pair in pairs {
        let (old, new) = match pair.split_once('=') {
            None => (pair.as_str(), ""),
            Some((o, n)) if !o.is_empty() && !n.is_empty() => (o, n),
            Some(_) => return Err(usage!("--volume takes OLD=NEW or NAME, not {pair:?}")),
        };
        if manifest
            .volumes
            .iter()
            .any(|v| v.name == old && is_definition(v))
        {
            return Err(usage!(
                "{old} is the stack's definition, not a volume: --definition-to DIR writes it out"
            ));
        }
        if !manifest.volumes.iter().any(|v| v.name == old) {
            let names: Vec<&str> = manifest
                .volumes
                .iter()
                .filter(|v| !is_definition(v))
                .map(|v| v.name.as_str())
                .collect();
            return Err(usage!(
                "backup {} has no volume {old:?}; it has {}",
                manifest.id,
                names.join(", ")
            ));
        }
        if new.is_empty() {
            only.push(old.to_string());
            continue;
        }
        if !crate::repo::manifest::is_volume_name(new) {
            return Err(usage!("{new:?} is not a valid Docker volume name"));
        }
        map.insert(old.to_string(), new.to_string());
    }
    Ok((map, only))
}

fn docker_targets<'m>(
    docker: &Docker,
    manifest: &'m Manifest,
    mapping: &BTreeMap<String, String>,
    only: &[String],
    id: &str,
    selected: Option<&[String]>,
) -> Result<Vec<Target<'m>>> {
    let mut targets = Vec::new();
    for v in &manifest.volumes {
        let everything = mapping.is_empty() && only.is_empty();
        if !everything && !only.contains(&v.name) {
            let Some(new) = mapping.get(&v.name) else {
                continue;
            };
            let info = match docker.inspect_volume(new)? {
                Some(info) => info,
                None => {
                    let mut labels = BTreeMap::new();
                    labels.insert(
                        "volsnap.restored-from".to_string(),
                        format!("{id}/{}", v.name),
                    );
                    docker.create_volume(new, "local", &BTreeMap::new(), &labels)?
                }
            };
            targets.push(Target {
                volume: v,
                path: volume_host_path(&info.driver, &info.options, &info.mountpoint),
                label: format!("volume {new}"),
            });
            continue;
        }
        match v.kind {
            // Written out only with --definition-to.
            VolumeKind::Definition => continue,
            VolumeKind::Volume => {
                v.local_name()?; // a Docker volume name, or refused
                let info = match docker.inspect_volume(&v.name)? {
                    Some(info) => info,
                    None => {
                        recreatable(v)?;
                        // volsnap's own labels steer later backups (a
                        // `volsnap.exclude` silences the volume): they come
                        // from the operator, never from a backup.
                        let labels: BTreeMap<String, String> = v
                            .labels
                            .iter()
                            .filter(|(k, _)| !k.starts_with("volsnap."))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        docker
                            .create_volume(&v.name, "local", &BTreeMap::new(), &labels)
                            .with_context(|| format!("cannot recreate volume {}", v.name))?
                    }
                };
                targets.push(Target {
                    volume: v,
                    path: volume_host_path(&info.driver, &info.options, &info.mountpoint),
                    label: format!("volume {}", v.name),
                });
            }
            VolumeKind::Bind => {
                // The manifest's path is only a claim: write there only if a
                // container mounts that very path right now.
                let path = PathBuf::from(&v.source_path);
                let binders: Vec<String> = containers_binding(docker, &path)?
                    .into_iter()
                    .map(|c| c.name)
                    .filter(|name| selected.is_none_or(|s| s.contains(name)))
                    .collect();
                if binders.is_empty() || !path.is_absolute() {
                    return Err(usage!(
                        "backup {id} holds the bind mount {}, but no container{} binds that path now; volsnap does not write to a host path on a backup's word alone. Restore it with --target-dir DIR, or create the container that binds it first",
                        crate::text::escape(&v.source_path),
                        if selected.is_some() { " of the selected stack" } else { "" }
                    ));
                }
                targets.push(Target {
                    volume: v,
                    path,
                    label: format!(
                        "bind mount {} (of {})",
                        crate::text::escape(&v.source_path),
                        binders.join(", ")
                    ),
                })
            }
        }
    }
    Ok(targets)
}

fn is_definition(v: &VolumeRecord) -> bool {
    v.kind == VolumeKind::Definition
}

/// Containers that mount a restore target.
fn users_of(docker: &Docker, target: &Target<'_>) -> Result<Vec<ContainerInfo>> {
    if let Some(name) = target.label.strip_prefix("volume ") {
        return docker.containers_using_volume(name);
    }
    // Bind mounts and directories: any container binding that path.
    containers_binding(docker, &target.path)
}

/// The containers (running or not) that bind-mount `path` now.
fn containers_binding(docker: &Docker, path: &Path) -> Result<Vec<ContainerInfo>> {
    let mut out = Vec::new();
    for id in docker.list_container_ids(&[])? {
        if let Some(c) = docker.inspect_container(&id)? {
            if c.mounts.iter().any(|m| Path::new(&m.source) == path) {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// A missing volume is recreated from the backup only as a plain local
/// volume: driver options read from a backup can bind a host path
/// (`device=/etc`) or mount a remote one, and that is the operator's call.
fn recreatable(v: &VolumeRecord) -> Result<()> {
    let driver = v.driver.as_deref().unwrap_or("local");
    if driver == "local" && v.driver_opts.is_empty() {
        return Ok(());
    }
    let opts: Vec<String> = v
        .driver_opts
        .iter()
        .map(|(k, val)| format!("--opt {k}={val}"))
        .collect();
    Err(usage!(
        "volume {} does not exist, and the backup recorded it with driver {driver} {}; volsnap does not create volumes from options read from a backup (they can bind host paths). Create it yourself if those options are right (docker volume create --driver {driver} {} {}) and run the restore again, or restore into a new plain volume with --volume {}=NEW",
        v.name,
        if opts.is_empty() { "and no options".to_string() } else { format!("and options {}", opts.join(" ")) },
        opts.join(" "),
        v.name,
        v.name
    ))
}

/// How many entries a restore target holds, when it holds any (volsnap's
/// own leftovers aside); `None` when it is empty or missing.
/// Refuses a target that is not a directory of its own: a symlink planted
/// there (by a local user, say) would send the restore elsewhere.
fn not_a_link(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(usage!(
            "the restore target {} is a symbolic link{}; volsnap never restores through one. Nothing was changed: remove the link, or restore elsewhere with --target-dir DIR",
            path.display(),
            std::fs::read_link(path)
                .map(|to| format!(" (to {})", to.display()))
                .unwrap_or_default()
        )),
        Ok(m) if !m.is_dir() => Err(usage!(
            "the restore target {} exists and is not a directory. Nothing was changed: move it away, or restore elsewhere with --target-dir DIR",
            path.display()
        )),
        _ => Ok(()),
    }
}

fn holds_data(path: &Path) -> Option<usize> {
    let count = std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| !crate::restore::is_ours(&e.file_name()))
        .count();
    (count > 0).then_some(count)
}
