//! `ovlrun exec ID|NAME [--tty] [--user U] [--env K=V] [--cwd DIR] CMD...`: a new process in a
//! running session, as `podman exec` and `nsenter` give one: in the session's namespaces
//! (user first), its root, its cgroup (its limits hold), and held as its command is: the
//! same user unless `--user`, the same capabilities, system-call filter and no_new_privs,
//! its environment with `--env` over it. The process is the caller's child; its exit status
//! is `exec`'s.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;

use super::record::{Entry, Record, Status};
use super::{SessionDirs, SessionError};
use crate::config::{CapabilitySets, SessionPlan, Terminal};
use crate::host::process;
use crate::sandbox::enter::{self, Console};

/// What `exec` runs, and how.
#[derive(Clone, Debug, Default)]
pub struct ExecOptions {
    /// The command and its arguments; never empty.
    pub argv: Vec<OsString>,
    /// A pty of its own: `Some(true)` always, `Some(false)` never, `None` when stdin and
    /// stdout are terminals.
    pub tty: Option<bool>,
    /// `NAME|UID[:GID]`, looked up in the rootfs as `--user` is; else the session's user.
    pub user: Option<String>,
    /// `KEY=VALUE` over the session's environment.
    pub env: Vec<String>,
    /// The working directory; else the session's.
    pub cwd: Option<PathBuf>,
}

/// True when `given` names a session of `state_root` (running or not): `exec` of an id that
/// is no container's goes to the session then.
pub fn is_session(state_root: &Path, given: &str) -> bool {
    SessionDirs::resolve_id(state_root, given).is_ok()
}

/// The process whose namespaces `exec` joins. Root: the session's pid 1. Another user may not
/// open pid 1's (it is not dumpable), so a child of it still in the session's own user
/// namespace (the launcher's, `launcher`): the command, which ran its program inside, so its
/// owner may; a child that made namespaces of its own is passed over.
fn target_of(init: u32, launcher: u32) -> u32 {
    if nix::unistd::geteuid().is_root() {
        return init;
    }
    let session_ns = process::namespace(&launcher.to_string(), "user");
    let children = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| process::parent(pid) == Some(init))
        .filter(|&pid| {
            session_ns.is_some() && process::namespace(&pid.to_string(), "user") == session_ns
        });
    children.min().unwrap_or(init)
}

/// The session `given` and how to enter it, when it runs: its launcher alive and its pid 1
/// still the launcher's child (not a pid used again).
fn running(state_root: &Path, given: &str) -> Result<(SessionDirs, Record, Entry), SessionError> {
    let (dirs, rec) = SessionDirs::open(state_root, given)?;
    let not_running = || SessionError::NotRunning {
        id: dirs.id.0.clone(),
    };
    let entry = match (&rec.entry, rec.status) {
        (Some(e), Status::Running) if !rec.is_dead() => e.clone(),
        _ => return Err(not_running()),
    };
    if process::parent(entry.init) != Some(rec.pid) {
        return Err(not_running());
    }
    Ok((dirs, rec, entry))
}

/// The plan of the entered process: the session's command's settings, `opts` over them.
fn plan_of(
    state_root: &Path,
    rootfs: PathBuf,
    entry: &Entry,
    opts: &ExecOptions,
) -> Result<SessionPlan, SessionError> {
    let mut plan = SessionPlan::new(rootfs, opts.argv.clone(), state_root.to_owned());
    plan.uid = entry.uid;
    plan.gid = entry.gid;
    plan.groups = entry.groups.clone();
    plan.env = entry.env.iter().map(OsString::from).collect();
    plan.cwd = entry.cwd.clone();
    plan.capabilities = entry.capabilities.clone();
    plan.seccomp = entry.seccomp.clone();
    plan.no_new_privs = entry.no_new_privs;
    if let Some(spec) = &opts.user {
        let user = crate::config::user::lookup(spec, &plan.rootfs)?;
        // Another user: what the container default gives that user, never more than the
        // session's own bounding set.
        let mut caps = CapabilitySets::container_default(user.uid);
        for set in [
            &mut caps.effective,
            &mut caps.permitted,
            &mut caps.inheritable,
            &mut caps.ambient,
        ] {
            set.retain(|c| entry.capabilities.bounding.contains(c));
        }
        caps.bounding = entry.capabilities.bounding.clone();
        (plan.uid, plan.gid, plan.groups) = (user.uid, user.gid, user.groups);
        plan.capabilities = caps;
    }
    for kv in &opts.env {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        plan.env
            .retain(|e| e.to_string_lossy().split_once('=').map(|(k, _)| k) != Some(key));
        plan.env.push(kv.into());
    }
    if let Some(cwd) = &opts.cwd {
        plan.cwd = cwd.clone();
    }
    Ok(plan)
}

/// Runs `opts.argv` in the running session `given` (a name, id or unique start of one);
/// returns its exit status (128 + n when killed by signal n).
///
/// # Errors
/// [`SessionError::NotRunning`] for a session that is not running; a `--user` that cannot be
/// resolved; [`SessionError::Sandbox`] when the session cannot be entered.
pub fn exec(state_root: &Path, given: &str, opts: &ExecOptions) -> Result<i32, SessionError> {
    let (dirs, rec, entry) = running(state_root, given)?;
    let mut plan = plan_of(state_root, rec.rootfs.clone(), &entry, opts)?;
    let tty = opts.tty.unwrap_or_else(|| {
        use std::io::IsTerminal;
        std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
    });
    plan.terminal = if tty {
        Terminal::Always
    } else {
        Terminal::Never
    };
    let console = if tty { Console::Relayed } else { Console::None };
    let id = dirs.id.0.clone();
    let adopt = move |pid: Pid| {
        super::cgroup::adopt(&id, pid).map_err(|e| Box::new(e) as crate::sandbox::FsError)
    };
    let target = target_of(entry.init, rec.pid);
    let entered = enter::enter(
        Pid::from_raw(i32::try_from(target).unwrap_or(-1)),
        &plan,
        console,
        adopt,
    )?;
    Ok(enter::wait(entered)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let plan = SessionPlan::new("/r".into(), vec!["sh".into()], "/s".into());
        let mut e = Entry::of(&plan, 42);
        e.env = vec!["PATH=/bin".into(), "A=1".into()];
        e.capabilities.bounding.remove("CAP_NET_RAW");
        e
    }

    #[test]
    fn the_entered_process_is_held_as_the_sessions_command() {
        let e = entry();
        let opts = ExecOptions {
            argv: vec!["id".into()],
            env: vec!["A=2".into(), "B=3".into()],
            ..ExecOptions::default()
        };
        let plan = plan_of(Path::new("/s"), "/r".into(), &e, &opts).unwrap();
        assert_eq!(plan.capabilities, e.capabilities);
        assert_eq!((plan.uid, plan.gid), (0, 0));
        let env: Vec<_> = plan
            .env
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(env, ["PATH=/bin", "A=2", "B=3"]);
        assert_eq!(plan.seccomp, e.seccomp);
    }
}
