//! A new process in the namespaces of a running one (runc's `exec`, and later a running
//! session's `ovlrun exec NAME`): the plan's process (user, capabilities, seccomp,
//! no_new_privs, cwd, environment) started inside, a descendant of the caller.
//!
//! The order matters:
//! 1. The caller makes itself a child subreaper, compiles the filter and opens the target's
//!    namespace files (`/proc/PID/ns/*`) that differ from its own.
//! 2. A forked child joins them, the user namespace first (the others are owned by it, and a
//!    rootless caller has the rights to join them only from inside), the mount namespace
//!    last but one (its root becomes the process's), then forks the process: joining a pid
//!    namespace only places the children made afterwards.
//! 3. The process opens its pty inside (the container's devpts) when it has one, sends the
//!    master back or to the console socket, and runs the command as a session's does.
//! 4. The child reports the process's pid and exits; the process is re-parented to the
//!    caller, which may wait for it.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};

use super::handshake::{self, HandshakeError, Msg};
use super::{FsError, SandboxError, init, ns, seccomp, terminal};
use crate::config::SessionPlan;
use crate::sys::process::{self, exit_now};

/// The namespaces joined, in order, with their `/proc/PID/ns` names (the mount namespace
/// last, by the process itself).
const ORDER: [(&str, CloneFlags); 7] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Where the process's pty master goes when it has one.
#[derive(Debug)]
pub(crate) enum Console {
    /// No pty: the process inherits the caller's stdio.
    None,
    /// A pty whose master comes back to the caller (to relay it).
    Relayed,
    /// A pty whose master goes to this connected console socket.
    Socket(OwnedFd),
}

/// A process started in a running process's namespaces.
#[derive(Debug)]
pub(crate) struct Entered {
    /// Its pid, as the caller sees it.
    pub pid: Pid,
    /// Its pty's master, when [`Console::Relayed`].
    pub master: Option<OwnedFd>,
}

/// Starts `plan`'s process in the namespaces of `target`.
///
/// # Errors
/// [`SandboxError`] naming the step; [`SandboxError::Setup`] with the child's message.
/// `adopt` is called with the helper's pid before it joins anything or forks: the caller
/// places it (a cgroup), and the process it forks inherits that from its first instruction.
pub(crate) fn enter(
    target: Pid,
    plan: &SessionPlan,
    console: Console,
    adopt: impl FnOnce(Pid) -> Result<(), FsError>,
) -> Result<Entered, SandboxError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(ns("become a child subreaper"))?;
    let cache = plan.state_root.join("cache");
    let filter = seccomp::compile(&plan.seccomp, &plan.capabilities, Some(&cache))
        .map_err(SandboxError::Seccomp)?;
    let joined = namespaces_of(target)?;
    let (mut parent_end, mut child_end) = handshake::channel().map_err(HandshakeError::from)?;
    // The master comes on a channel of its own: the process sends it while the helper
    // reports the pid, in either order.
    let (mut term_parent, mut term_child) = handshake::channel().map_err(HandshakeError::from)?;
    // Single-threaded here: nothing but this process's own code runs in the child.
    let child = match process::fork().map_err(ns("fork the exec helper"))? {
        ForkResult::Child => {
            drop(parent_end);
            drop(term_parent);
            if child_end.wait_go().is_err() {
                exit_now(125);
            }
            let spawned = join_and_spawn(&joined, plan, &console, filter.as_ref(), &mut term_child);
            let why = match spawned {
                Ok(pid) => match child_end.send(Msg::Ready, pid.as_raw().to_string().as_bytes()) {
                    Ok(()) => exit_now(0),
                    Err(e) => e.to_string(),
                },
                Err(why) => why,
            };
            let _ = child_end.send(Msg::Failed, why.as_bytes());
            exit_now(125)
        }
        ForkResult::Parent { child } => child,
    };
    drop(child_end);
    drop(term_child);
    if let Err(e) = adopt(child) {
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        return Err(SandboxError::Adopt(e));
    }
    parent_end.send(Msg::Go, b"")?;
    let ready = parent_end.expect(Msg::Ready).map_err(setup_error);
    let _ = waitpid(child, None);
    let pid = String::from_utf8_lossy(&ready?)
        .parse::<i32>()
        .map_err(|_| SandboxError::Setup("the exec helper sent no pid".into()))?;
    let pid = Pid::from_raw(pid);
    let master = match console {
        Console::Relayed => match term_parent.expect_fd(Msg::Terminal) {
            Ok(m) => Some(m),
            Err(e) => {
                let _ = kill(pid, Signal::SIGKILL);
                return Err(setup_error(e));
            }
        },
        _ => None,
    };
    Ok(Entered { pid, master })
}

fn setup_error(e: HandshakeError) -> SandboxError {
    match e {
        HandshakeError::Failed { why, .. } => SandboxError::Setup(why),
        HandshakeError::Closed { .. } => {
            SandboxError::Setup("the exec helper ended before it started the process".into())
        }
        e => e.into(),
    }
}

/// The namespace files of `target` that differ from this process's, in [`ORDER`], opened.
fn namespaces_of(target: Pid) -> Result<Vec<(CloneFlags, OwnedFd)>, SandboxError> {
    let mut out = Vec::new();
    for (name, flag) in ORDER {
        let theirs = format!("/proc/{target}/ns/{name}");
        let ours = format!("/proc/self/ns/{name}");
        let same = match (std::fs::metadata(&theirs), std::fs::metadata(&ours)) {
            (Ok(t), Ok(o)) => t.dev() == o.dev() && t.ino() == o.ino(),
            (Err(e), _) => {
                return Err(SandboxError::JoinNs {
                    path: theirs.into(),
                    source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                });
            }
            (Ok(_), Err(_)) => false,
        };
        if same {
            continue;
        }
        let fd = nix::fcntl::open(
            theirs.as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|source| SandboxError::JoinNs {
            path: theirs.clone().into(),
            source,
        })?;
        out.push((flag, fd));
    }
    Ok(out)
}

/// In the forked helper: joins the namespaces and forks the process; returns its pid, or
/// why not.
fn join_and_spawn(
    joined: &[(CloneFlags, OwnedFd)],
    plan: &SessionPlan,
    console: &Console,
    filter: Option<&seccomp::Filter>,
    end: &mut handshake::End,
) -> Result<Pid, String> {
    let join = |flag: &CloneFlags, fd: &OwnedFd| {
        nix::sched::setns(fd, *flag).map_err(|e| format!("cannot join the {flag:?} namespace: {e}"))
    };
    // The mount namespace is joined by the process itself, after the fork: this helper's
    // /proc must stay its own until then.
    let (mounts, others): (Vec<_>, Vec<_>) = joined
        .iter()
        .partition(|(flag, _)| *flag == CloneFlags::CLONE_NEWNS);
    for (flag, fd) in others {
        join(flag, fd)?;
    }
    let pty = !matches!(console, Console::None);
    match process::fork().map_err(|e| format!("cannot fork the process: {e}"))? {
        ForkResult::Child => {
            // Its cwd and root become the mount namespace's root.
            if let Some(Err(why)) = mounts.first().map(|(flag, fd)| join(flag, fd)) {
                eprintln!("ovlrun: exec: {why}");
                exit_now(125);
            }
            if pty {
                let sent = match console {
                    Console::Socket(socket) => terminal::open_in_session(
                        |master| terminal::send_to_console(socket.as_fd(), master),
                        plan.uid,
                        plan.gid,
                    ),
                    _ => terminal::open_in_session(
                        |master| end.send_fd(Msg::Terminal, master).map_err(Into::into),
                        plan.uid,
                        plan.gid,
                    ),
                };
                if let Err(e) = sent {
                    let why = crate::error_chain(&e);
                    if end.send(Msg::Failed, why.as_bytes()).is_err() {
                        eprintln!("ovlrun: exec: {why}");
                    }
                    exit_now(125);
                }
            }
            if let Err(e) = process::close_fds_from(3 + plan.preserve_fds, true) {
                eprintln!("ovlrun: exec: cannot close inherited fds: {e}");
                exit_now(125);
            }
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            process::reset_signal_dispositions();
            init::exec_command(
                &init::Command {
                    plan,
                    terminal: pty,
                    setgroups: setgroups_allowed(),
                    filter,
                },
                false,
            )
        }
        ForkResult::Parent { child } => Ok(child),
    }
}

/// Whether setgroups(2) works in the joined user namespace (its map may deny it).
fn setgroups_allowed() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").map_or(true, |s| s.trim() == "allow")
}

/// Waits for an entered process (the caller is its subreaper), forwarding the signals a
/// terminal or a supervisor sends and relaying its pty when the caller holds the master;
/// returns its status, shell style.
///
/// # Errors
/// When waiting fails.
pub(crate) fn wait(entered: Entered) -> Result<i32, SandboxError> {
    let set = super::forwarded_set();
    set.thread_block().map_err(ns("block signals"))?;
    let raw = entered
        .master
        .as_ref()
        .and_then(|_| terminal::RawMode::enter().ok().flatten());
    let winch = entered.master.as_ref().and_then(|m| m.try_clone().ok());
    let relay = entered.master.map(terminal::Relay::start).transpose();
    let relay = match relay {
        Ok(r) => r,
        Err(e) => {
            let _ = kill(entered.pid, Signal::SIGKILL);
            return Err(terminal::TerminalError::Relay(e).into());
        }
    };
    let forwarder = super::forward_signals(set, entered.pid, winch);
    let status = super::timeout::wait(entered.pid, None).map_err(ns("wait for the process"));
    if let Some(relay) = relay {
        relay.finish();
    }
    drop(raw);
    drop(forwarder);
    let (status, _) = status?;
    Ok(init::exit_code(status).unwrap_or(125))
}
