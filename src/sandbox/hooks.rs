//! A config hook run: a program with the container's state JSON on stdin, its own argv and
//! environment, killed at its timeout. The runtime runs `prestart`, `createRuntime`,
//! `poststart` and `poststop` in its own namespaces; the container's process runs
//! `createContainer` (after its mounts, before entering its root, so the path is the
//! runtime's) and `startContainer` (inside its root, just before the user's program).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

/// The hooks a container's own process runs, and the state they read.
#[derive(Clone, Debug, Default)]
pub(crate) struct InContainer {
    /// `createContainer`.
    pub create: Vec<Hook>,
    /// `startContainer`.
    pub start: Vec<Hook>,
}

impl InContainer {
    /// Whether there is none.
    pub(crate) fn is_empty(&self) -> bool {
        self.create.is_empty() && self.start.is_empty()
    }
}

/// Runs `hooks` named `name` in order with `state`; the first failure, as a message.
pub(crate) fn run_all(name: &str, hooks: &[Hook], state: &[u8]) -> Result<(), String> {
    for (i, hook) in hooks.iter().enumerate() {
        run_one(hook, state)
            .map_err(|e| format!("hooks.{name}[{i}] ({}): {e}", hook.path().display()))?;
    }
    Ok(())
}

/// Runs one hook: `path` with `args` (args[0] its argv[0]) and only `env`, the state on
/// stdin, killed at its timeout.
pub(crate) fn run_one(hook: &Hook, state: &[u8]) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(hook.path());
    let args = hook.args().clone().unwrap_or_default();
    if let Some((arg0, rest)) = args.split_first() {
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear()
        .envs(
            hook.env()
                .iter()
                .flatten()
                .filter_map(|kv| kv.split_once('=')),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run it: {e}"))?;
    // Read while it runs, so a chatty hook never blocks on a full pipe.
    let stderr = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut e, &mut text);
            text
        })
    });
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is no failure.
        let _ = stdin.write_all(state);
    }
    let limit = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t.unsigned_abs()));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if limit.is_some_and(|l| start.elapsed() > l) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "timed out after {}s",
                    limit.map_or(0, |l| l.as_secs())
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(e.to_string()),
        }
    };
    if status.success() {
        return Ok(());
    }
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    Err(format!("{status}: {}", stderr.trim()))
}
