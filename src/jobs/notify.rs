//! Talking to the outside: host hooks and notifications (a webhook POST or
//! a command), each bounded in time so a hung receiver cannot hang a job.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `sh -c command` on the host with `env` added and `stdin` fed in,
/// killing it, and every process it started, after `timeout`. Its output
/// goes to volsnap's stderr.
pub fn run_shell(
    command: &str,
    env: &[(String, String)],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<()> {
    match bounded_shell(command, env, stdin, None, timeout)? {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!("{command:?} failed ({status})"),
        None => bail!(
            "{command:?} did not finish within {} s and was killed",
            timeout.as_secs()
        ),
    }
}

/// Runs `sh -c command` on the host like [`run_shell`], with no input and
/// its output (stdout and stderr, at most the last 4 KiB) captured: its
/// exit code (`None` when killed at `timeout`, or ended by a signal) and
/// its output.
pub fn run_shell_captured(
    command: &str,
    env: &[(String, String)],
    timeout: Duration,
) -> Result<(Option<i32>, String)> {
    use std::io::{Read, Seek};
    let mut out = tempfile::tempfile().context("cannot create a file for a command's output")?;
    let status = bounded_shell(command, env, None, Some(&out), timeout)?;
    // Only the end, whatever the command wrote.
    let end = out.seek(std::io::SeekFrom::End(0))?;
    out.seek(std::io::SeekFrom::Start(end.saturating_sub(4096)))?;
    let mut tail = Vec::new();
    out.read_to_end(&mut tail)?;
    Ok((
        status.and_then(|s| s.code()),
        String::from_utf8_lossy(&tail).into_owned(),
    ))
}

/// Runs `sh -c command` (its stdout and stderr to `output`, else to
/// volsnap's) in a process group of its own; its exit status, or `None`
/// once it was killed, with every process it started, at `timeout`.
fn bounded_shell(
    command: &str,
    env: &[(String, String)],
    stdin: Option<&[u8]>,
    output: Option<&std::fs::File>,
    timeout: Duration,
) -> Result<Option<std::process::ExitStatus>> {
    let (stdout, stderr) = match output {
        Some(file) => (
            Stdio::from(file.try_clone()?),
            Stdio::from(file.try_clone()?),
        ),
        None => (Stdio::inherit(), Stdio::inherit()),
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(stdout)
        .stderr(stderr)
        // Its own process group: no terminal signal meant for volsnap
        // reaches it, and it can be killed as a whole.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {command:?}"))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // On a thread: a command that does not read its input must not
        // block volsnap past the timeout (nor is it an error).
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let deadline = crate::fsutil::deadline_after(timeout);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            crate::process::kill_tree(child.id() as i32);
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// POSTs `body` (JSON) to `url`, with a 10 s timeout per attempt and
/// three attempts: receivers blip, and one lost alert can matter.
pub fn post_webhook(url: &str, body: &str) -> Result<()> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("volsnap/", env!("CARGO_PKG_VERSION")))
        .build();
    let mut last_error = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(2));
        }
        match agent
            .post(url)
            .set("Content-Type", "application/json")
            .send_string(body)
        {
            Ok(_) => return Ok(()),
            Err(ureq::Error::Status(code, _)) => last_error = format!("HTTP status {code}"),
            // Not the error's Display: it repeats the URL, which may hold a token.
            Err(ureq::Error::Transport(t)) => {
                last_error = format!(
                    "{}{}",
                    t.kind(),
                    t.message().map(|m| format!(": {m}")).unwrap_or_default()
                )
            }
        }
    }
    bail!(
        "webhook {} failed after 3 attempts: {last_error}",
        redact(url)
    )
}

/// A URL without its path and query, where webhook tokens live.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?']).next().unwrap_or_default();
            let host = host.rsplit('@').next().unwrap_or_default();
            format!("{scheme}://{host}/…")
        }
        None => "(not a URL)".to_string(),
    }
}
