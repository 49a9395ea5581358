//! Every command that reads a repository, over a corpus of damaged and
//! crafted ones: no byte of storage makes volsnap panic. The corpus is made
//! from two real repositories (plain, and encrypted to an identity), each
//! object in turn emptied, cut in half, a byte flipped, replaced by noise,
//! and (JSON objects) every number set to 2^64-1 or every string to a path
//! escape with a terminal control sequence. Each case runs list, ls, diff,
//! verify (structure, all, read data), restore, export, prune (dry and
//! real), copy, repo show and host adopt; a panic is exit status 101.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The ways one object is damaged.
fn mutations(bytes: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = vec![
        ("emptied", Vec::new()),
        ("cut in half", bytes[..bytes.len() / 2].to_vec()),
    ];
    if !bytes.is_empty() {
        let mut flipped = bytes.to_vec();
        flipped[bytes.len() / 3] ^= 0x5a;
        out.push(("a byte flipped", flipped));
        // Noise: a fixed xorshift stream, so a failure is repeatable.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ bytes.len() as u64;
        let noise = (0..bytes.len())
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        out.push(("noise", noise));
    }
    if let Ok(json) = serde_json::from_slice::<Value>(bytes) {
        let mut huge = json.clone();
        map_leaves(&mut huge, &|v| {
            if v.is_number() {
                *v = Value::from(u64::MAX);
            }
        });
        out.push(("numbers 2^64-1", serde_json::to_vec(&huge).unwrap()));
        let mut escaping = json;
        map_leaves(&mut escaping, &|v| {
            if v.is_string() {
                *v = Value::from("../../escaped/\u{1b}[31mx");
            }
        });
        out.push(("strings escape", serde_json::to_vec(&escaping).unwrap()));
    }
    out
}

fn map_leaves(v: &mut Value, f: &dyn Fn(&mut Value)) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(|i| map_leaves(i, f)),
        Value::Object(map) => map.values_mut().for_each(|i| map_leaves(i, f)),
        leaf => f(leaf),
    }
}

/// Every file under `root` (relative), skipping locks.
fn objects(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if !path.starts_with(root.join("locks")) {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

struct Corpus {
    _p: Project,
    scratch: PathBuf,
    pristine: PathBuf,
    state: PathBuf,
    ids: (String, String),
    identity: Option<PathBuf>,
}

fn corpus(prefix: &str, encrypted: bool) -> Corpus {
    let mut p = Project::new(prefix);
    let vol = p.volume("data", &[]);
    make_fixture(&volume_path(&vol));
    let mount = format!("{vol}:/data");
    let container = p.service("app", &[], &["-v", &mount], &["idle"]);
    let scratch = p.tempdir();
    let pristine = scratch.join("pristine");
    std::fs::create_dir(&pristine).unwrap();
    let state = scratch.join("state");
    let repo_s = pristine.to_str().unwrap().to_string();
    let env = [
        ("VOLSNAP_HOST", "corpus"),
        ("VOLSNAP_STATE_DIR", state.to_str().unwrap()),
    ];
    let mut identity = None;
    if encrypted {
        let (id, recipient) = keygen(&scratch, "reader");
        ok(volsnap_env(
            &["init", "--repo", &repo_s, "--recipient", &recipient],
            &env,
        ));
        identity = Some(id);
    }
    let mut ids = Vec::new();
    for n in 0..2 {
        std::fs::write(
            volume_path(&vol).join(format!("v{n}.txt")),
            vec![b'a' + n; 5000],
        )
        .unwrap();
        let out = ok(volsnap_env(
            &[
                "backup",
                "--repo",
                &repo_s,
                "--container",
                &container,
                "--strategy",
                "online",
                "--json",
            ],
            &env,
        ));
        let v: Value = serde_json::from_str(&out).unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    Corpus {
        _p: p,
        pristine,
        state,
        ids: (ids[0].clone(), ids[1].clone()),
        identity,
        scratch,
    }
}

impl Corpus {
    /// Runs every command over every damaged copy; the cases that panicked.
    fn run(&self) -> (usize, Vec<String>) {
        let work = self.scratch.join("work");
        let state = self.scratch.join("work-state");
        let out_dir = self.scratch.join("out");
        let dest = self.scratch.join("dest");
        let (a, b) = (&self.ids.0, &self.ids.1);
        let mut panics = Vec::new();
        let mut runs = 0;
        let mut cases: Vec<(PathBuf, &str, Option<Vec<u8>>)> =
            vec![(PathBuf::from("config"), "intact (the control)", None)];
        for object in objects(&self.pristine) {
            let original = std::fs::read(self.pristine.join(&object)).unwrap();
            for (how, bytes) in mutations(&original) {
                cases.push((object.clone(), how, Some(bytes)));
            }
        }
        for (object, how, bytes) in cases {
            {
                copy_tree(&self.pristine, &work);
                copy_tree(&self.state, &state);
                if let Some(bytes) = &bytes {
                    std::fs::write(work.join(&object), bytes).unwrap();
                }
                let repo = work.to_str().unwrap();
                let target = out_dir.join("restore");
                let _ = std::fs::remove_dir_all(&out_dir);
                let _ = std::fs::remove_dir_all(&dest);
                std::fs::create_dir_all(&target).unwrap();
                let commands: Vec<Vec<&str>> = vec![
                    vec!["list", "--repo", repo],
                    vec!["list", "--repo", repo, "--json"],
                    vec!["ls", "--repo", repo, "latest"],
                    vec!["diff", "--repo", repo, a, b],
                    vec!["verify", "--repo", repo],
                    vec!["verify", "--repo", repo, "--all"],
                    vec![
                        "verify",
                        "--repo",
                        repo,
                        "--all",
                        "--read-data-subset",
                        "100",
                    ],
                    vec![
                        "restore",
                        "--repo",
                        repo,
                        "latest",
                        "--target-dir",
                        target.to_str().unwrap(),
                    ],
                    vec!["export", "--repo", repo, "latest"],
                    vec!["prune", "--repo", repo, "--keep-last", "1", "--dry-run"],
                    vec!["prune", "--repo", repo, "--keep-last", "1"],
                    vec!["copy", "--from", repo, "--to", dest.to_str().unwrap()],
                    vec!["repo", "show", "--repo", repo],
                    vec!["host", "adopt", "--repo", repo, "--dry-run"],
                ];
                for args in commands {
                    let mut env = vec![
                        ("VOLSNAP_HOST", "corpus".to_string()),
                        ("VOLSNAP_STATE_DIR", state.to_str().unwrap().to_string()),
                    ];
                    if let Some(identity) = &self.identity {
                        env.push(("VOLSNAP_IDENTITY_FILE", identity.to_str().unwrap().into()));
                    }
                    let env: Vec<(&str, &str)> =
                        env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let out = volsnap_env(&args, &env);
                    runs += 1;
                    let err = stderr(&out);
                    // On the intact repository every command works: the
                    // corpus runs commands that do something.
                    if bytes.is_none() && !out.status.success() {
                        panics.push(format!(
                            "the control failed: volsnap {}: {err}",
                            args.join(" ")
                        ));
                    }
                    if out.status.code() == Some(101) || err.contains("panicked") {
                        panics.push(format!(
                            "{} {how}: volsnap {}: {}",
                            object.display(),
                            args.join(" "),
                            err.lines().take(3).collect::<Vec<_>>().join(" | ")
                        ));
                    }
                    let shown = if args[0] == "export" {
                        String::new()
                    } else {
                        stdout(&out)
                    };
                    if err.contains('\u{1b}') || shown.contains('\u{1b}') {
                        panics.push(format!(
                            "{} {how}: volsnap {}: a raw escape reached the terminal",
                            object.display(),
                            args.join(" ")
                        ));
                    }
                }
            }
        }
        (runs, panics)
    }
}

#[test]
fn no_damaged_or_crafted_plain_repository_makes_a_command_panic() {
    let c = corpus("corpusplain", false);
    let (runs, panics) = c.run();
    eprintln!("{runs} command runs over the plain corpus");
    assert!(runs > 500, "{runs}");
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}

#[test]
fn no_damaged_or_crafted_encrypted_repository_makes_a_command_panic() {
    let c = corpus("corpusenc", true);
    let (runs, panics) = c.run();
    eprintln!("{runs} command runs over the encrypted corpus");
    assert!(runs > 500, "{runs}");
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}
