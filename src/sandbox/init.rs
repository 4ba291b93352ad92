//! The session's pid 1 and the command it starts.
//!
//! pid 1 forks the command, forwards the signals a terminal or a supervisor sends
//! (INT, TERM, HUP, QUIT, USR1, USR2, WINCH), reaps every orphan, and when the command ends
//! exits with its status (128 + n when killed by signal n), which ends the namespace and every
//! process left in it.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use crate::config::SessionPlan;
use crate::sys::process::{self, exit_now};

/// Signals pid 1 passes on to the command.
pub(crate) const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// The shell-style status of a finished process.
pub(crate) fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// What the command needs besides the plan.
pub(crate) struct Command<'a> {
    /// The plan.
    pub plan: &'a SessionPlan,
    /// Whether fds 0-2 are the session's own pty, which the command takes as its
    /// controlling terminal (job control, Ctrl-C); without it the command has none.
    pub terminal: bool,
    /// Whether setgroups(2) works in this user namespace.
    pub setgroups: bool,
    /// The compiled system-call filter (`None`: unconfined).
    pub filter: Option<&'a super::seccomp::Filter>,
}

/// Runs as pid 1: starts the command and supervises until it ends. Never returns.
pub(crate) fn run(cmd: &Command<'_>) -> ! {
    // Nothing the caller or the launcher had open reaches the session: not the command, and
    // not this process either, whose fds a process inside could open through /proc/1/fd.
    let keep = 3 + cmd.plan.preserve_fds;
    if let Err(e) = process::close_fds_from(keep, false) {
        eprintln!("ovlrun: session init: cannot close inherited fds: {e}");
        exit_now(125);
    }
    // A session of its own, without a controlling terminal: nothing inside shares the
    // caller's (TIOCSTI on it then needs CAP_SYS_ADMIN in the initial user namespace).
    if let Err(e) = nix::unistd::setsid() {
        eprintln!("ovlrun: session init: cannot start a session: {e}");
        exit_now(125);
    }
    // Not dumpable: no process inside may ptrace pid 1 or open its /proc files without
    // CAP_SYS_PTRACE, which the command does not get by default.
    let _ = nix::sys::prctl::set_dumpable(false);
    let mut signals = SigSet::empty();
    for s in FORWARDED {
        signals.add(s);
    }
    signals.add(Signal::SIGCHLD);
    if let Err(e) = process::catch_for_sigwait(&signals)
        .and_then(|()| sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None))
    {
        eprintln!("ovlrun: session init: cannot set up signals: {e}");
        exit_now(125);
    }
    // pid 1 is single-threaded; the command process execs or _exits.
    let child = match process::fork() {
        Ok(ForkResult::Child) => {
            let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&signals), None);
            process::reset_signal_dispositions();
            exec_command(cmd, false)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            eprintln!("ovlrun: session init: cannot start the command: {e}");
            exit_now(125);
        }
    };
    // The preserved fds are the command's alone.
    if keep > 3 {
        let _ = process::close_fds_from(3, false);
    }
    loop {
        let Ok(sig) = signals.wait() else { continue };
        if sig != Signal::SIGCHLD {
            forward(sig, child, cmd.terminal);
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) if status.pid() == Some(child) => {
                    if let Some(code) = exit_code(status) {
                        exit_now(code);
                    }
                }
                Ok(_) => {}
            }
        }
    }
}

/// As pid 1 of a bundle's container: becomes the command, as runc's init does (the user's
/// process is pid 1). Drops every fd but 0-2 and the preserved ones, leads a session of its
/// own (with its pty as controlling terminal when it has one), and unblocks and resets the
/// signals the launcher blocked. Never returns.
pub(crate) fn exec_as_pid1(cmd: &Command<'_>) -> ! {
    if let Err(e) = process::close_fds_from(3 + cmd.plan.preserve_fds, false) {
        eprintln!("ovlrun: container init: cannot close inherited fds: {e}");
        exit_now(125);
    }
    if let Err(e) = nix::unistd::setsid() {
        eprintln!("ovlrun: container init: cannot start a session: {e}");
        exit_now(125);
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    process::reset_signal_dispositions();
    exec_command(cmd, true)
}

/// The held process's gate when it is runc's exec fifo (`fifo`, an `O_PATH` fd): opening it
/// for writing blocks until `ovlrun start` opens it for reading; one byte then says "started".
///
/// # Errors
/// The failing step, as a message (nobody waits for a reply any more).
pub(crate) fn wait_for_reader(fifo: std::os::fd::BorrowedFd<'_>) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", fifo.as_raw_fd());
    let writer = nix::fcntl::open(
        path.as_str(),
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("cannot open the exec fifo: {e}"))?;
    nix::unistd::write(&writer, b"0").map_err(|e| format!("cannot write the exec fifo: {e}"))?;
    Ok(())
}

/// Passes `sig` on to the command: to its process group when it leads one on its terminal
/// (as a terminal would), else to the command alone.
fn forward(sig: Signal, child: Pid, terminal: bool) {
    // Until the command has called setsid its group does not exist yet.
    if !terminal || kill(Pid::from_raw(-child.as_raw()), sig) == Err(Errno::ESRCH) {
        let _ = kill(child, sig);
    }
}

/// In the command's process: ids, capabilities, terminal, directory, exec; `leader`: it
/// already leads a session of its own. Never returns.
pub(crate) fn exec_command(cmd: &Command<'_>, leader: bool) -> ! {
    let plan = cmd.plan;
    let fail = |what: &str, e: &dyn std::fmt::Display, code: i32| -> ! {
        eprintln!("ovlrun: {what}: {e}");
        exit_now(code)
    };
    if cmd.terminal {
        let taken = if leader {
            crate::sys::term::make_controlling(std::io::stdin())
        } else {
            super::terminal::take_as_controlling()
        };
        if let Err(e) = taken {
            fail("cannot take the session's terminal", &e, 125);
        }
    }
    if cmd.setgroups {
        let mut groups = vec![Gid::from_raw(plan.gid)];
        groups.extend(plan.groups.iter().map(|g| Gid::from_raw(*g)));
        if let Err(e) = nix::unistd::setgroups(&groups) {
            fail("cannot set supplementary groups", &e, 125);
        }
    } else if !plan.groups.is_empty() {
        fail(
            "--user: cannot set supplementary groups",
            &"setgroups(2) is denied in this user namespace",
            125,
        );
    }
    for r in &plan.rlimits {
        if let Err(e) = nix::sys::resource::setrlimit(r.resource, r.soft, r.hard) {
            fail(
                &format!("cannot set {} to {}:{}", r.name, r.soft, r.hard),
                &e,
                125,
            );
        }
    }
    if let Some(adj) = plan.oom_score_adj {
        if let Err(e) = std::fs::write("/proc/self/oom_score_adj", adj.to_string()) {
            fail(&format!("cannot set oomScoreAdj {adj}"), &e, 125);
        }
    }
    // Without no_new_privs the kernel takes a filter only from a holder of CAP_SYS_ADMIN:
    // installed while this process still has every capability, as runc does. The filter
    // must then allow what follows (the default one does).
    if !plan.no_new_privs {
        load_filter(cmd.filter);
    }
    if let Err(e) = super::caps::apply_before_setuid(&plan.capabilities) {
        fail("cannot set the bounding capabilities", &e, 125);
    }
    let (uid, gid) = (Uid::from_raw(plan.uid), Gid::from_raw(plan.gid));
    if let Err(e) = nix::unistd::setresgid(gid, gid, gid) {
        fail(&format!("--gid {}", plan.gid), &e, 125);
    }
    if let Err(e) = nix::unistd::setresuid(uid, uid, uid) {
        fail(&format!("--uid {}", plan.uid), &e, 125);
    }
    if let Err(e) = super::caps::apply_after_setuid(&plan.capabilities) {
        fail("cannot set capabilities", &e, 125);
    }
    if plan.no_new_privs {
        if let Err(e) = nix::sys::prctl::set_no_new_privs() {
            fail("cannot set no_new_privs", &e, 125);
        }
    }
    if let Some(mask) = plan.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    if let Err(e) = nix::unistd::chdir(&plan.cwd) {
        fail(&format!("--cwd {}", plan.cwd.display()), &e, 125);
    }
    let program = &plan.argv[0];
    let path = match resolve(program, &plan.env) {
        Ok(p) => p,
        Err(e) => fail(
            &program.to_string_lossy(),
            &e,
            process::exec_failure_status(e),
        ),
    };
    let args: Vec<CString> = plan.argv.iter().filter_map(|a| cstring(a)).collect();
    let env: Vec<CString> = plan.env.iter().filter_map(|a| cstring(a)).collect();
    let Some(cpath) = cstring(path.as_os_str()) else {
        fail(&program.to_string_lossy(), &Errno::EINVAL, 126)
    };
    // pid 1 closed every other fd; whatever this process opened since goes at exec.
    if let Err(e) = process::close_fds_from(3 + plan.preserve_fds, true) {
        fail("cannot close fds", &e, 125);
    }
    // Last, so nothing this process does before exec meets the filter: execve is the only
    // system call it still makes.
    if plan.no_new_privs {
        load_filter(cmd.filter);
    }
    let e = match nix::unistd::execve(&cpath, &args, &env) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    fail(
        &format!("cannot execute {}", path.display()),
        &e,
        process::exec_failure_status(e),
    )
}

/// Installs the session's filter, if any; exits 125 when the kernel refuses it.
fn load_filter(filter: Option<&super::seccomp::Filter>) {
    if let Some(Err(e)) = filter.map(super::seccomp::Filter::load) {
        eprintln!("ovlrun: cannot load the seccomp filter: {e}");
        exit_now(125);
    }
}

fn cstring(s: &OsStr) -> Option<CString> {
    CString::new(s.as_bytes()).ok()
}

/// Finds `program` the way a shell would, with the session's own `PATH`.
///
/// # Errors
/// `ENOENT` when nothing is found, `EACCES` when found but not executable.
pub(crate) fn resolve(program: &OsStr, env: &[OsString]) -> Result<PathBuf, Errno> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = env
        .iter()
        .find_map(|kv| kv.as_bytes().strip_prefix(b"PATH="))
        .map(|p| OsStr::from_bytes(p).to_owned())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut found_unexecutable = false;
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && !candidate.is_dir()
        {
            return Ok(candidate);
        }
        if Path::new(&candidate).exists() {
            found_unexecutable = true;
        }
    }
    Err(if found_unexecutable {
        Errno::EACCES
    } else {
        Errno::ENOENT
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_shell_convention() {
        let pid = Pid::from_raw(5);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 7)), Some(7));
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGTERM, false)),
            Some(143)
        );
    }

    #[test]
    fn resolve_uses_the_session_path() {
        let env = vec![OsString::from("PATH=/nonexistent:/bin")];
        assert_eq!(
            resolve(OsStr::new("sh"), &env).unwrap(),
            Path::new("/bin/sh")
        );
        assert_eq!(
            resolve(OsStr::new("no-such-tool"), &env),
            Err(Errno::ENOENT)
        );
        assert_eq!(resolve(OsStr::new("./x"), &env).unwrap(), Path::new("./x"));
    }
}
