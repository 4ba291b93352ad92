//! The launcher: runs a [`SessionPlan`] in new namespaces over an overlay of its rootfs.
//!
//! The order matters, and each step says why:
//! 1. Id-map helper forked, then `unshare(user | mount)`: a process must be single-threaded to
//!    enter a new user namespace, and `newuidmap` must run from outside it.
//! 2. `/` made private, so nothing mounted from here on propagates to the host.
//! 3. The [`Filesystem`] the launcher is handed mounted (its mount targets made first), but
//!    not served yet: still single-threaded.
//! 4. The child cloned into new pid, mount, uts, ipc (and net) namespaces: its mount namespace
//!    is a copy holding the overlay, so its `pivot_root` leaves ours alone. (A process cannot
//!    create threads after `unshare(pid)`, hence `clone`.)
//! 5. Serving threads started, then the child told to go: it builds `/proc`, `/dev`, ... in
//!    the overlay, pivots into it and, as pid 1, runs the command. With a terminal, pid 1
//!    first opens a pty in the session's devpts and sends its master back ([`terminal`]).
//! 6. The launcher relays the pty (if any), forwards signals, waits and unmounts; the
//!    session's policy decides what becomes of the upper.
//!
//! The mount exists only in the launcher's private mount namespace, so nothing is left on
//! the host even if ovlrun is killed; the child dies with it (`PR_SET_PDEATHSIG`).

pub(crate) mod caps;
pub(crate) mod handshake;
pub(crate) mod idmap;
pub(crate) mod init;
pub(crate) mod mounts;
pub(crate) mod plan;
pub(crate) mod seccomp;
pub(crate) mod terminal;
pub(crate) mod timeout;

use std::os::fd::OwnedFd;
use std::path::Path;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};

use crate::config::{Network, SessionPlan, UserNs};
use crate::mount::Backend;
use crate::sys::process::{self, exit_now};
use handshake::{End, HandshakeError, Msg};
use idmap::IdMapError;

use crate::host::cgroup::CgroupLayout;
use crate::host::ids::{self as host_ids, IdMap};

/// Why a session could not run. The command's own failures are its exit status instead.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A namespace step failed.
    #[error("cannot {step}")]
    Namespace {
        /// The step.
        step: &'static str,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// Id maps failed.
    #[error("cannot map user ids")]
    IdMap(#[from] IdMapError),
    /// The filesystem handed to the launcher could not be mounted, served or unmounted.
    #[error(transparent)]
    Filesystem(FsError),
    /// Parent and child lost each other.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The system-call filter could not be compiled.
    #[error("cannot compile the seccomp filter")]
    Seccomp(#[source] crate::config::seccomp::ProfileError),
    /// The session's terminal could not be set up.
    #[error(transparent)]
    Terminal(#[from] terminal::TerminalError),
}

/// Why a [`Filesystem`] step failed: the filesystem's own error, which the launcher passes on.
pub(crate) type FsError = Box<dyn std::error::Error + Send + Sync>;

/// "Mount the fs here": the session's root filesystem, as the launcher is handed it. The
/// launcher knows nothing of what it is; it calls each step once, in order, at the point the
/// module doc names, and drops it (unmounting whatever is still mounted) when it returns.
pub(crate) trait Filesystem {
    /// Where the filesystem is (or will be) mounted: the session's root.
    fn mountpoint(&self) -> &Path;

    /// Step 3, inside the session's user and mount namespaces and still single-threaded:
    /// makes the targets the launcher's own mounts need ([`plan::targets`]) and mounts the
    /// filesystem at [`Filesystem::mountpoint`], starting no thread. Returns the host's resolver
    /// files and where they go inside.
    ///
    /// # Errors
    /// The filesystem's own, passed on as [`SandboxError::Filesystem`].
    fn mount(&mut self) -> Result<Vec<plan::NetFile>, FsError>;

    /// Step 5, once the child is cloned: starts serving (threads may start now); says which
    /// backend serves.
    ///
    /// # Errors
    /// As for [`Filesystem::mount`].
    fn serve(&mut self) -> Result<Backend, FsError>;

    /// Step 6, once the command has exited: unmounts and removes what
    /// [`Filesystem::mount`] made for the launcher.
    ///
    /// # Errors
    /// As for [`Filesystem::mount`].
    fn unmount(self) -> Result<(), FsError>;
}

fn ns(step: &'static str) -> impl FnOnce(nix::Error) -> SandboxError {
    move |source| SandboxError::Namespace { step, source }
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The command's exit status (128 + n when killed by signal n).
    pub code: i32,
    /// The filesystem that served the overlay.
    pub fs: Backend,
}

/// Runs `plan` with `fs` as its root filesystem. The calling process stays in the new user
/// namespace afterwards, so it can still handle files owned by the session's sub-ids.
///
/// # Errors
/// [`SandboxError`] when the session cannot be set up; nothing of the rootfs has changed.
/// `ids` is the map [`id_map`] chose for `plan`, chosen once by the caller, which judges the
/// rootfs against it too.
pub(crate) fn run(
    plan: &SessionPlan,
    ids: Option<IdMap>,
    fs: impl Filesystem,
) -> Result<Outcome, SandboxError> {
    run_in(plan, ids, fs)
}

/// The ids a session of `plan` maps: none without a user namespace (`--no-userns`), the
/// caller's own for a config that asks for just that, else the caller's subordinate range
/// where it has one.
pub(crate) fn id_map(plan: &SessionPlan) -> Option<IdMap> {
    match plan.userns {
        UserNs::New => Some(host_ids::choose()),
        UserNs::Host => None,
        UserNs::OwnId => Some(IdMap::Single {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }),
    }
}

/// For a non-root caller: enters a user (and mount) namespace mapping the caller's
/// subordinate ids, as sessions do, so files a session made as those ids can be read, merged
/// and removed. Root needs nothing.
///
/// # Errors
/// As for a session's namespaces.
pub(crate) fn enter_owner_namespace() -> Result<(), SandboxError> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    enter_namespaces(Some(&host_ids::choose()))
}

fn run_in(
    plan: &SessionPlan,
    ids: Option<IdMap>,
    mut fs: impl Filesystem,
) -> Result<Outcome, SandboxError> {
    // Compiled first (or read from the state's cache, as the caller, before any namespace):
    // a profile libseccomp refuses fails before anything is mounted, and the child only
    // installs what it is handed.
    let cache = plan.state_root.join("cache");
    let filter = seccomp::compile(&plan.seccomp, &plan.capabilities, Some(&cache))
        .map_err(SandboxError::Seccomp)?;
    // Blocked before any thread exists, so every thread inherits the mask and the signals
    // wait for the forwarding thread (a serving thread would otherwise die of them).
    let forwarded = forwarded_set();
    forwarded.thread_block().map_err(ns("block signals"))?;
    // A map the config asked for (`UserNs::OwnId`) is no limitation to point out.
    let asked = plan.userns == UserNs::OwnId;
    if let Some(note) = ids.as_ref().and_then(IdMap::limitation).filter(|_| !asked) {
        eprintln!("ovlrun: note: {note}");
    }
    enter_namespaces(ids.as_ref())?;
    let net = fs.mount().map_err(SandboxError::Filesystem)?;

    let pty = terminal::wanted(plan.terminal);
    let (mut parent_end, child_end) = handshake::channel().map_err(HandshakeError::from)?;
    let setgroups = ids.as_ref().is_none_or(IdMap::allows_setgroups);
    let child = start_child(
        plan,
        &net,
        fs.mountpoint(),
        child_end,
        pty,
        setgroups,
        filter.as_ref(),
    )?;

    let backend = fs.serve().map_err(SandboxError::Filesystem)?;
    parent_end.send(Msg::Go, b"")?;
    let (master, mut failure) = if pty {
        receive_terminal(&mut parent_end, child)
    } else {
        (None, None)
    };
    // Declared before the relay, so it is restored after the relay has written everything.
    let raw = match master.as_ref().map(|_| terminal::RawMode::enter()) {
        Some(Err(e)) => {
            eprintln!(
                "ovlrun: note: cannot put the terminal in raw mode ({e}): keys are edited twice"
            );
            None
        }
        Some(Ok(raw)) => raw,
        None => None,
    };
    let winch = master.as_ref().and_then(|m| m.try_clone().ok());
    let relay = match master.map(terminal::Relay::start).transpose() {
        Ok(relay) => relay,
        Err(e) => {
            let _ = kill(child, Signal::SIGKILL);
            failure.get_or_insert(SandboxError::Terminal(terminal::TerminalError::Relay(e)));
            None
        }
    };
    let forwarder = forward_signals(forwarded, child, winch);
    let status = timeout::wait(child, plan.timeout).map_err(ns("wait for the session"));
    if let Some(relay) = relay {
        relay.finish();
    }
    drop(raw);
    drop(forwarder);
    let (status, timed_out) = status?;
    fs.unmount().map_err(SandboxError::Filesystem)?;
    if let Some(e) = failure {
        return Err(e);
    }
    let code = init::exit_code(status).unwrap_or(125);
    Ok(Outcome {
        code: if timed_out { timeout::TIMED_OUT } else { code },
        fs: backend,
    })
}

/// Takes the master of the session's pty from pid 1. When pid 1 died before sending it, its
/// exit status says why (it printed the reason); any other failure ends the session and is
/// returned once it is waited for.
fn receive_terminal(end: &mut End, child: Pid) -> (Option<OwnedFd>, Option<SandboxError>) {
    match end.expect_fd(Msg::Terminal) {
        Ok(master) => (Some(master), None),
        Err(HandshakeError::Closed { .. }) => (None, None),
        Err(e) => {
            let _ = kill(child, Signal::SIGKILL);
            (None, Some(e.into()))
        }
    }
}

/// Step 1 and 2: new user (unless `--no-userns`) and mount namespaces, ids mapped, `/`
/// private.
pub(crate) fn enter_namespaces(ids: Option<&IdMap>) -> Result<(), SandboxError> {
    let Some(ids) = ids else {
        nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(ns("create a mount namespace"))?;
        return make_private();
    };
    let helper = if ids.needs_helpers() {
        Some(spawn_idmap_helper(ids)?)
    } else {
        None
    };
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
        .map_err(ns("create a user namespace (see `ovlrun doctor`)"))?;
    match helper {
        Some((mut end, pid)) => {
            end.send(Msg::MapIds, b"")?;
            let answer = end.expect(Msg::MapsDone)?;
            let _ = waitpid(pid, None);
            if !answer.is_empty() {
                return Err(SandboxError::IdMap(IdMapError::Helper {
                    helper: "newuidmap/newgidmap",
                    status: std::process::ExitStatus::default(),
                    stderr: String::from_utf8_lossy(&answer).into_owned(),
                }));
            }
        }
        None => idmap::write_own(ids)?,
    }
    make_private()
}

fn make_private() -> Result<(), SandboxError> {
    // Everything mounted from here on stays in this namespace.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(ns("make / private"))
}

/// Forks the process that runs `newuidmap`/`newgidmap` on us once we are in the new user
/// namespace (they must run outside it).
fn spawn_idmap_helper(ids: &IdMap) -> Result<(End, Pid), SandboxError> {
    let (parent_end, mut helper_end) = handshake::channel().map_err(HandshakeError::from)?;
    let target = nix::unistd::getpid();
    // The launcher has started no thread yet; the helper only runs the id-map commands.
    match process::fork().map_err(ns("fork the id-map helper"))? {
        ForkResult::Child => {
            drop(parent_end);
            let code = match helper_end.expect(Msg::MapIds) {
                Ok(_) => {
                    let answer = match idmap::run_helpers(ids, target) {
                        Ok(()) => String::new(),
                        Err(e) => format!("{e}"),
                    };
                    i32::from(helper_end.send(Msg::MapsDone, answer.as_bytes()).is_err())
                }
                Err(_) => 1,
            };
            exit_now(code)
        }
        ForkResult::Parent { child } => Ok((parent_end, child)),
    }
}

/// Step 4: the child, pid 1 of new namespaces, waiting for the go.
fn start_child(
    plan: &SessionPlan,
    net: &[plan::NetFile],
    root: &Path,
    end: End,
    pty: bool,
    setgroups: bool,
    filter: Option<&seccomp::Filter>,
) -> Result<Pid, SandboxError> {
    // A cgroup namespace too, so the session's cgroup2 view starts at its own cgroup.
    let mut flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWCGROUP;
    if plan.net == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let mut end = Some(end);
    // The cloned child has no caller to return an error to: it prints and exits 125.
    let child = Box::new(move || -> isize {
        // Dies with the launcher; if the launcher is already gone, the go never comes.
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        let Some(mut end) = end.take() else {
            exit_now(125)
        };
        if end.wait_go().is_err() {
            exit_now(125);
        }
        setup_child(plan, net, root);
        // Inside the session's own devpts, before init closes the handshake socket.
        if pty {
            if let Err(e) = terminal::open_in_session(&mut end, plan.uid, plan.gid) {
                eprintln!("ovlrun: {}", crate::error_chain(&e));
                exit_now(125);
            }
        }
        drop(end);
        init::run(&init::Command {
            plan,
            terminal: pty,
            setgroups,
            filter,
        })
    });
    // Still single-threaded here: the overlay is mounted but not served yet.
    process::clone_with_namespaces(child, flags).map_err(ns("create the session's namespaces"))
}

/// In the child: mounts, root, hostname, loopback. Exits 125 with a message on failure.
fn setup_child(plan: &SessionPlan, net: &[plan::NetFile], root: &Path) {
    let fail = |e: &dyn std::fmt::Display| -> ! {
        eprintln!("ovlrun: {e}");
        exit_now(125)
    };
    match mounts::apply(root, &plan::steps(plan, CgroupLayout::of_host(), net)) {
        Ok(notes) => notes.iter().for_each(|n| eprintln!("ovlrun: note: {n}")),
        Err(e) => fail(&crate::error_chain(&e)),
    }
    if let Err(e) = mounts::seal_root(root, plan.read_only_root) {
        fail(&crate::error_chain(&e));
    }
    match mounts::enter_root(root) {
        Ok(Some(note)) => eprintln!("ovlrun: note: {note}"),
        Ok(None) => {}
        Err(e) => fail(&crate::error_chain(&e)),
    }
    if let Err(e) = nix::unistd::sethostname(&plan.hostname) {
        fail(&format!("--hostname {}: {e}", plan.hostname));
    }
    if plan.net == Network::None {
        if let Err(e) = loopback_up() {
            fail(&format!("cannot bring up lo: {e}"));
        }
    }
}

/// Brings up `lo` in a new network namespace (an ioctl on a datagram socket).
fn loopback_up() -> nix::Result<()> {
    crate::sys::net::loopback_up()
}

fn forwarded_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in init::FORWARDED {
        set.add(s);
    }
    set
}

/// The signal-forwarding thread. Dropped, it is stopped and joined: left waiting, it would
/// eat a signal meant for what comes after the session (Ctrl-C at the `--policy ask` prompt)
/// and pass it to a session that is gone.
struct Forwarder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes its sigwait: WINCH is in its set, and every other thread blocks it.
        let _ = kill(nix::unistd::getpid(), Signal::SIGWINCH);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Step 6: passes INT, TERM, HUP, QUIT, USR1, USR2, WINCH sent to the launcher on to the
/// session's pid 1; with a pty (`winch`, a copy of its master), WINCH copies the caller's
/// window size onto it instead, and the kernel signals the session.
fn forward_signals(set: SigSet, child: Pid, winch: Option<OwnedFd>) -> Option<Forwarder> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ovlrun-signals".into())
        .spawn(move || {
            while let Ok(sig) = set.wait() {
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if let (Signal::SIGWINCH, Some(master)) = (sig, &winch) {
                    terminal::copy_window_size(master);
                    continue;
                }
                if kill(child, sig).is_err() {
                    break;
                }
            }
        })
        .ok()?;
    Some(Forwarder {
        stop,
        thread: Some(thread),
    })
}
