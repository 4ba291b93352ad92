//! The config's hooks, run as runc runs them: each a program given the container's state
//! JSON on stdin, in the runtime's namespaces. `prestart` and `createRuntime` once the
//! container is set up (here: held before its program, after its root is entered, which a
//! hook that only reaches it through its pid, as docker's network hook does, cannot tell),
//! `poststart` after `start`, `poststop` at `delete`. `createContainer` and `startContainer`
//! run in the container's namespaces, by its own process ([`crate::sandbox::hooks`]).

use oci_spec::runtime::Hooks;

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
            crate::sandbox::hooks::run_one(hook, &json).map_err(|problem| RuntimeError::Hook {
                hook: format!("hooks.{name}[{i}] ({})", hook.path().display()),
                problem,
            })?;
        }
    }
    Ok(())
}
