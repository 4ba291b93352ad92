//! The config's hooks, run as runc runs them: each a program given the container's state
//! JSON on stdin, in the runtime's namespaces. `prestart` and `createRuntime` once the
//! container is set up (here: held before its program, after its root is entered, which a
//! hook that only reaches it through its pid, as docker's network hook does, cannot tell),
//! `poststart` after `start`, `poststop` at `delete`. `createContainer` and `startContainer`
//! run inside the container's mount namespace, which ovlrun does not do yet: refused.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks};

use super::{RuntimeError, State};

/// Which hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// `prestart` then `createRuntime`.
    Create,
    /// `poststart`.
    Started,
    /// `poststop`.
    Stopped,
}

/// The hooks of `hooks` ovlrun cannot run; the first is named.
///
/// # Errors
/// [`RuntimeError::Usage`] naming the field.
pub(crate) fn check(hooks: &Hooks) -> Result<(), RuntimeError> {
    for (field, list) in [
        ("hooks.createContainer", hooks.create_container()),
        ("hooks.startContainer", hooks.start_container()),
    ] {
        if list.as_ref().is_some_and(|l| !l.is_empty()) {
            return Err(RuntimeError::Usage(format!(
                "{field}: not supported (ovlrun runs prestart, createRuntime, poststart and \
                 poststop hooks)"
            )));
        }
    }
    Ok(())
}

/// Runs the hooks of `stage` with `state` on their stdin, in order.
///
/// # Errors
/// [`RuntimeError::Hook`] for the first that fails or times out.
pub(crate) fn run(hooks: &Hooks, stage: Stage, state: &State) -> Result<(), RuntimeError> {
    let lists = match stage {
        Stage::Create => vec![
            ("prestart", hooks.prestart()),
            ("createRuntime", hooks.create_runtime()),
        ],
        Stage::Started => vec![("poststart", hooks.poststart())],
        Stage::Stopped => vec![("poststop", hooks.poststop())],
    };
    let json = serde_json::to_vec(state).unwrap_or_default();
    for (name, list) in lists {
        for (i, hook) in list.iter().flatten().enumerate() {
            run_one(hook, &json).map_err(|problem| RuntimeError::Hook {
                hook: format!("hooks.{name}[{i}] ({})", hook.path().display()),
                problem,
            })?;
        }
    }
    Ok(())
}

/// Runs one hook: `path` with `args` (args[0] its argv[0]) and only `env`, the state on
/// stdin, killed at its timeout.
fn run_one(hook: &Hook, state: &[u8]) -> Result<(), String> {
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
