//! What a stack's compose files say that its containers' labels may not:
//! the `depends_on` order. Compose v2 writes it as a label on each
//! container; docker-compose 1.29 (the Compose Debian 12 installs) does
//! not, so a cold backup would stop a dependency before its dependent.
//! Those containers name their compose files in labels
//! (`com.docker.compose.project.config_files`, relative to
//! `…project.working_dir`), and the order is read from there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CONFIG_FILES_LABEL: &str = "com.docker.compose.project.config_files";
pub const WORKING_DIR_LABEL: &str = "com.docker.compose.project.working_dir";

/// A compose file larger than this is not read (it is not one).
const MAX_FILE: u64 = 1 << 20;

/// The `depends_on` of every service, merged over a project's files.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ComposeOrder {
    /// Service → the services it depends on.
    pub depends_on: BTreeMap<String, Vec<String>>,
    /// The files read.
    pub files: Vec<PathBuf>,
    /// Files named but not read, and why.
    pub problems: Vec<String>,
}

/// Reads the `depends_on` relations of the compose files `config_files`
/// (comma-separated, as the label holds them; relative ones under
/// `working_dir`). A missing or unreadable file is skipped and named in
/// `problems`.
pub fn read_order(working_dir: &str, config_files: &str) -> ComposeOrder {
    let mut order = ComposeOrder::default();
    for name in config_files
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        let path = Path::new(working_dir).join(name);
        if !path.is_absolute() {
            order.problems.push(format!(
                "{name}: not an absolute path (working directory {working_dir:?})"
            ));
            continue;
        }
        match read_file(&path).and_then(|text| parse_depends_on(&text)) {
            Ok(found) => {
                for (service, deps) in found {
                    let merged = order.depends_on.entry(service).or_default();
                    for dep in deps {
                        if !merged.contains(&dep) {
                            merged.push(dep);
                        }
                    }
                }
                order.files.push(path);
            }
            Err(e) => order.problems.push(format!("{}: {e}", path.display())),
        }
    }
    order
}

fn read_file(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} bytes"));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

/// `services.<name>.depends_on` of one compose file, in its list form
/// (`[a, b]`) or its map form (`{a: {condition: …}}`).
pub fn parse_depends_on(text: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let mut out = BTreeMap::new();
    let Some(services) = doc.get("services").and_then(|s| s.as_mapping()) else {
        return Ok(out);
    };
    for (name, service) in services {
        let Some(name) = name.as_str() else { continue };
        let deps: Vec<String> = match service.get("depends_on") {
            Some(serde_yaml::Value::Sequence(list)) => list
                .iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect(),
            Some(serde_yaml::Value::Mapping(map)) => map
                .keys()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        out.insert(name.to_string(), deps);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_of_depends_on_are_read() {
        let text = "services:\n  milvus:\n    image: m\n    depends_on: [etcd, minio]\n  web:\n    depends_on:\n      milvus:\n        condition: service_healthy\n  etcd: {}\n";
        let found = parse_depends_on(text).unwrap();
        assert_eq!(found["milvus"], ["etcd", "minio"]);
        assert_eq!(found["web"], ["milvus"]);
        assert!(found["etcd"].is_empty());
    }

    #[test]
    fn files_merge_and_missing_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yml"),
            "services:\n  app:\n    depends_on: [db]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.yml"),
            "services:\n  app:\n    depends_on:\n      cache: {}\n",
        )
        .unwrap();
        let order = read_order(dir.path().to_str().unwrap(), "a.yml,b.yml,gone.yml");
        assert_eq!(order.depends_on["app"], ["db", "cache"]);
        assert_eq!(order.files.len(), 2);
        assert!(
            order.problems[0].contains("gone.yml"),
            "{:?}",
            order.problems
        );
        assert!(parse_depends_on("services: [").is_err());
    }
}
