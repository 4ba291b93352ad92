//! `exec [--process F | ID CMD...] [--detach] [--pid-file P] [--tty --console-socket S] ID`:
//! a new process in a running container, a descendant of the caller (see
//! `crate::sandbox::enter`), with the container's seccomp filter and the process's own
//! user, capabilities, no_new_privs, cwd and environment.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use super::create::{bundle_plan, console};
use super::{Container, Notes, Root, RuntimeError, Status, io};
use crate::config::{Terminal, oci};
use crate::sandbox::enter::{self, Console};

/// `exec`'s flags.
#[derive(Clone, Debug, Default)]
pub struct ExecOptions {
    /// A runtime-spec `process` object (JSON) to run; else `args` and the flags below.
    pub process: Option<PathBuf>,
    /// The command and its arguments (without `--process`).
    pub args: Vec<String>,
    /// Give the process a pty.
    pub tty: bool,
    /// Working directory (without `--process`) [default: the container's].
    pub cwd: Option<PathBuf>,
    /// `KEY=VALUE` added to the container's environment (without `--process`).
    pub env: Vec<String>,
    /// `UID[:GID]` (without `--process`) [default: the container's].
    pub user: Option<String>,
    /// Start the process and return, leaving it running.
    pub detach: bool,
    /// Where to write the process's pid.
    pub pid_file: Option<PathBuf>,
    /// A unix socket to send the pty's master to.
    pub console_socket: Option<PathBuf>,
    /// Pass the caller's fds 3 .. 3+N to the process.
    pub preserve_fds: u32,
}

/// `exec`: the process's exit status (0 when detached) and the notes.
///
/// # Errors
/// [`RuntimeError::NotRunning`] for a stopped container; [`RuntimeError`].
pub fn exec(root: &Root, id: &str, opts: &ExecOptions) -> Result<(i32, Notes), RuntimeError> {
    let (c, dir) = Container::load(root, id)?;
    if c.status(&dir) == Status::Stopped {
        return Err(RuntimeError::NotRunning);
    }
    // What is not applied was said at create.
    let (_, _, mut plan, _) = bundle_plan(&c.bundle, opts.preserve_fds)?;
    let notes = Notes::new();
    let tty = match &opts.process {
        Some(path) => {
            let text = oci::read_bounded(path)?;
            let p = oci::process_settings(path, &text)?;
            plan.argv = p.args.ok_or_else(|| {
                RuntimeError::Usage(format!("{}: process.args is empty", path.display()))
            })?;
            plan.env = p.env.unwrap_or_default();
            plan.cwd = p.cwd.unwrap_or_else(|| "/".into());
            plan.uid = p.uid.unwrap_or(0);
            plan.gid = p.gid.unwrap_or(0);
            plan.groups = p.groups;
            if let Some(caps) = p.capabilities {
                plan.capabilities = caps;
            }
            if let Some(nnp) = p.no_new_privs {
                plan.no_new_privs = nnp;
            }
            if !p.rlimits.is_empty() {
                plan.rlimits = p.rlimits;
            }
            plan.umask = p.umask.or(plan.umask);
            plan.oom_score_adj = None;
            p.terminal == Some(true)
        }
        None => {
            if opts.args.is_empty() {
                return Err(RuntimeError::Usage(
                    "exec needs --process FILE or a command after the id".into(),
                ));
            }
            plan.argv = opts.args.iter().map(Into::into).collect();
            plan.env.extend(opts.env.iter().map(Into::into));
            if let Some(cwd) = &opts.cwd {
                plan.cwd = cwd.clone();
            }
            if let Some(user) = &opts.user {
                let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
                let bad = || RuntimeError::Usage(format!("--user {user}: expected UID[:GID]"));
                plan.uid = uid.parse().map_err(|_| bad())?;
                plan.gid = gid.parse().map_err(|_| bad())?;
            }
            opts.tty
        }
    };
    plan.terminal = if tty {
        Terminal::Always
    } else {
        Terminal::Never
    };
    let socket = console(opts.console_socket.as_deref(), tty, opts.detach)?;
    let console = match (tty, socket) {
        (false, _) => Console::None,
        (true, Some(s)) => Console::Socket(s),
        (true, None) => Console::Relayed,
    };
    // In the container's cgroup before it joins anything: what it runs is limited from the
    // start.
    let adopt = |pid| super::cgroup::enter(&c, pid).map_err(Into::into);
    let entered = enter::enter(nix::unistd::Pid::from_raw(c.pid), &plan, console, adopt)?;
    if let Some(path) = &opts.pid_file {
        let abs = std::path::absolute(path).map_err(io("cannot write the pid file", path))?;
        crate::sys::write_atomic(&abs, entered.pid.as_raw().to_string().as_bytes())
            .map_err(io("cannot write the pid file", path))?;
    }
    if opts.detach {
        drop::<Option<OwnedFd>>(entered.master);
        return Ok((0, notes));
    }
    Ok((enter::wait(entered)?, notes))
}
