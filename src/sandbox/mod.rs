//! The launcher: runs a [`SessionPlan`] in new namespaces over the root filesystem it is
//! handed, split along the container's life so that a session (`ovlrun --rootfs DIR -- CMD`)
//! and a runtime container (`ovlrun create` / `start`) go through the same steps:
//! [`create`] (namespaces, mounts, the process set up and held before its command),
//! [`Created::start`] (release it), [`Created::wait`] (wait and tear down).
//!
//! The order matters, and each step says why:
//! 1. Id-map helper forked, then `unshare(user | mount)`: a process must be single-threaded to
//!    enter a new user namespace, and `newuidmap` must run from outside it.
//! 2. `/` made private, so nothing mounted from here on propagates to the host.
//! 3. The [`Filesystem`] the launcher is handed mounted (its mount targets made first), but
//!    not served yet: still single-threaded.
//! 4. The child cloned into new pid, mount, uts, ipc (and net) namespaces: its mount namespace
//!    is a copy holding the root, so its `pivot_root` leaves ours alone. (A process cannot
//!    create threads after `unshare(pid)`, hence `clone`.)
//! 5. Serving threads started, then the child told to go: it builds `/proc`, `/dev`, ... in
//!    the root and pivots into it. With a terminal it opens a pty in its own devpts and sends
//!    the master back ([`terminal`]) or to a console socket. It then reports ready and waits
//!    at its [`Gate`]: the launcher's word (a session) or a reader on its exec fifo (a
//!    container's `start`).
//! 6. Released, pid 1 runs the command: it supervises it ([`Pid1::Supervise`], a session) or
//!    becomes it ([`Pid1::Exec`], a bundle's process is pid 1 as with runc).
//! 7. The launcher relays the pty (if any), forwards signals, waits and unmounts; the
//!    session's policy decides what becomes of the upper.
//!
//! The mount exists only in the launcher's private mount namespace, so nothing is left on
//! the host even if ovlrun is killed; a session's child dies with it (`PR_SET_PDEATHSIG`). A
//! container's process is not tied to the launcher: `ovlrun create` exits and leaves it to
//! the caller's subreaper, as runc's does.

pub(crate) mod caps;
pub(crate) mod enter;
pub(crate) mod handshake;
pub(crate) mod hooks;
pub(crate) mod idmap;
pub(crate) mod init;
pub(crate) mod mounts;
pub(crate) mod plan;
pub(crate) mod seccomp;
pub(crate) mod terminal;
pub(crate) mod timeout;

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};

use crate::config::{Network, NsKind, SessionPlan, UserNs};
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
    /// A namespace to join could not be opened.
    #[error("cannot open namespace {}", .path.display())]
    JoinNs {
        /// The namespace file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The caller could not place an entered process (in a cgroup).
    #[error("cannot place the new process")]
    Adopt(#[source] FsError),
    /// The child could not set the session up (mounts, root, hostname, terminal): its own
    /// message, naming the step and the path.
    #[error("{0}")]
    Setup(String),
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

    /// Step 7, once the command has exited: unmounts and removes what
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
    /// `--timeout` stopped it (its `code` is then [`timeout::TIMED_OUT`]).
    pub timed_out: bool,
}

/// Something the launcher has to tell the user that is not an error: the caller reports it
/// (a session to stderr, a runtime to its `--log`).
#[derive(Debug)]
pub(crate) enum Notice {
    /// The id map is narrower than a distribution tree needs.
    IdMapLimited(String),
    /// The caller's terminal could not be put in raw mode.
    NoRawMode(nix::Error),
    /// A setup step fell back to something weaker (a bound host `/proc`, no cgroup2 view).
    Setup(String),
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::IdMapLimited(note) | Notice::Setup(note) => f.write_str(note),
            Notice::NoRawMode(e) => write!(
                f,
                "cannot put the terminal in raw mode ({e}): keys are edited twice"
            ),
        }
    }
}

/// How pid 1 runs the command once released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pid1 {
    /// pid 1 forks the command, forwards signals and reaps orphans (a session).
    Supervise,
    /// pid 1 becomes the command (a bundle's process, as with runc).
    Exec,
}

/// What holds the set-up process before its command until it is started.
#[derive(Debug)]
pub(crate) enum Gate {
    /// The launcher's word over the handshake: [`Created::start`].
    Handshake,
    /// runc's exec fifo, as an `O_PATH` fd: the process opens it for writing, which blocks
    /// until a reader (`ovlrun start`) opens it, writes one byte and runs the command.
    Fifo(OwnedFd),
}

/// How the launcher starts the process: what a session and a runtime container differ in.
#[derive(Debug)]
pub(crate) struct Launch {
    /// What holds the process before its command.
    pub gate: Gate,
    /// How pid 1 runs the command.
    pub pid1: Pid1,
    /// Where the master of the process's pty goes: a connected console socket (runc's
    /// `--console-socket`), or `None` for the launcher, which relays it.
    pub console: Option<OwnedFd>,
    /// The process dies with the launcher (`PR_SET_PDEATHSIG`): a session. A container
    /// outlives `ovlrun create`.
    pub tied: bool,
    /// Hooks the process runs itself (a container's `createContainer`, `startContainer`).
    pub hooks: hooks::InContainer,
    /// The state JSON object its hooks read on stdin; its `pid` is filled in once the
    /// process exists.
    pub state: serde_json::Value,
}

impl Launch {
    /// A session's: held by the handshake, supervised by pid 1, tied to the launcher.
    pub(crate) fn session() -> Launch {
        Launch {
            gate: Gate::Handshake,
            pid1: Pid1::Supervise,
            console: None,
            tied: true,
            hooks: hooks::InContainer::default(),
            state: serde_json::Value::Null,
        }
    }
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

/// A process set up in its namespaces and held at its [`Gate`], before its command.
pub(crate) struct Created<F: Filesystem> {
    child: Pid,
    end: End,
    fs: F,
    backend: Backend,
    gate: bool,
    master: Option<OwnedFd>,
    forwarded: SigSet,
    timeout: Option<crate::config::Timeout>,
    relay: Option<terminal::Relay>,
    raw: Option<terminal::RawMode>,
    /// What the user should know so far; the caller takes them.
    pub notices: Vec<Notice>,
}

impl<F: Filesystem> std::fmt::Debug for Created<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created")
            .field("child", &self.child)
            .finish_non_exhaustive()
    }
}

/// Steps 1 to 5: namespaces, `fs` mounted and served, the child set up and held at
/// `launch`'s gate. On error the child, if any, is killed and reaped.
///
/// # Errors
/// [`SandboxError`] naming the step; [`SandboxError::Setup`] with the child's own message.
pub(crate) fn create<F: Filesystem>(
    plan: &SessionPlan,
    ids: Option<IdMap>,
    mut fs: F,
    launch: Launch,
) -> Result<Created<F>, SandboxError> {
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
    // Opened as the caller, before any namespace of ours: the paths are the caller's.
    let mut joined = Vec::new();
    for j in &plan.join {
        let fd = nix::fcntl::open(
            &j.path,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|source| SandboxError::JoinNs {
            path: j.path.clone(),
            source,
        })?;
        // Only the children made afterwards enter a pid namespace, so the launcher joins it
        // itself, before it has entered any namespace of its own, for the child it clones.
        if j.kind == NsKind::Pid {
            nix::sched::setns(&fd, CloneFlags::CLONE_NEWPID).map_err(|source| {
                SandboxError::JoinNs {
                    path: j.path.clone(),
                    source,
                }
            })?;
        }
        joined.push((j.kind, fd));
    }
    let mut notices = Vec::new();
    // A map the config asked for (`UserNs::OwnId`) is no limitation to point out.
    let asked = plan.userns == UserNs::OwnId;
    if let Some(note) = ids.as_ref().and_then(IdMap::limitation).filter(|_| !asked) {
        notices.push(Notice::IdMapLimited(note.to_string()));
    }
    enter_namespaces(ids.as_ref())?;
    let net = fs.mount().map_err(SandboxError::Filesystem)?;

    let pty = terminal::wanted(plan.terminal);
    let (mut parent_end, child_end) = handshake::channel().map_err(HandshakeError::from)?;
    let setgroups = ids.as_ref().is_none_or(IdMap::allows_setgroups);
    let relayed = pty && launch.console.is_none();
    let gate = matches!(launch.gate, Gate::Handshake);
    let child = start_child(
        plan,
        &Child {
            net: &net,
            root: fs.mountpoint(),
            pty,
            setgroups,
            filter: filter.as_ref(),
            launch: &launch,
            joined: &joined,
        },
        child_end,
    )?;
    let kill_child = |e: SandboxError| {
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        e
    };
    let backend = match fs.serve() {
        Ok(b) => b,
        Err(e) => return Err(kill_child(SandboxError::Filesystem(e))),
    };
    // The process's own hooks get its state, pid included, with the word to go.
    let state = if launch.hooks.is_empty() {
        Vec::new()
    } else {
        let mut state = launch.state.clone();
        state["pid"] = child.as_raw().into();
        serde_json::to_vec(&state).unwrap_or_default()
    };
    parent_end
        .send(Msg::Go, &state)
        .map_err(|e| kill_child(e.into()))?;
    let master = if relayed {
        let master = parent_end.expect_fd(Msg::Terminal);
        Some(master.map_err(|e| kill_child(child_failed(e, child)))?)
    } else {
        None
    };
    let ready = parent_end
        .expect(Msg::Ready)
        .map_err(|e| kill_child(child_failed(e, child)))?;
    notices.extend(
        String::from_utf8_lossy(&ready)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| Notice::Setup(l.to_owned())),
    );
    Ok(Created {
        child,
        end: parent_end,
        fs,
        backend,
        gate,
        master,
        forwarded,
        timeout: plan.timeout,
        relay: None,
        raw: None,
        notices,
    })
}

/// The error for a child that failed its setup: its own reason, or, when it closed the
/// handshake without one, that it ended (killed, or it could not send the reason).
fn child_failed(e: HandshakeError, child: Pid) -> SandboxError {
    match e {
        HandshakeError::Failed { why, .. } => SandboxError::Setup(why),
        HandshakeError::Closed { .. } => SandboxError::Setup(format!(
            "the session's process ({child}) ended during its setup"
        )),
        e => e.into(),
    }
}

impl<F: Filesystem> Created<F> {
    /// The process's pid, as the caller sees it.
    pub(crate) fn pid(&self) -> Pid {
        self.child
    }

    /// The backend that serves the filesystem.
    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    /// Step 6 for a process held by the handshake: puts the caller's terminal in raw mode
    /// and relays the pty when the launcher holds its master, then releases the process.
    /// A process held by a fifo is released by its reader instead; this only starts the relay.
    ///
    /// # Errors
    /// When the relay cannot start (the process is killed) or the handshake fails.
    pub(crate) fn start(&mut self) -> Result<(), SandboxError> {
        if let Some(master) = self.master.take() {
            self.raw = match terminal::RawMode::enter() {
                Ok(raw) => raw,
                Err(e) => {
                    self.notices.push(Notice::NoRawMode(e));
                    None
                }
            };
            // A copy for the window size, which the signal thread sets.
            self.master = master.try_clone().ok();
            match terminal::Relay::start(master) {
                Ok(relay) => self.relay = Some(relay),
                Err(e) => {
                    let _ = kill(self.child, Signal::SIGKILL);
                    return Err(terminal::TerminalError::Relay(e).into());
                }
            }
        }
        if self.gate {
            if let Err(e) = self.end.send(Msg::Start, b"") {
                let _ = kill(self.child, Signal::SIGKILL);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Step 7: forwards signals, waits for the process (stopping it at the plan's timeout),
    /// ends the relay, restores the terminal and unmounts.
    ///
    /// # Errors
    /// When waiting or unmounting fails.
    pub(crate) fn wait(mut self) -> Result<Outcome, SandboxError> {
        let winch = self.master.take();
        let forwarder = forward_signals(self.forwarded, self.child, winch);
        let status = timeout::wait(self.child, self.timeout).map_err(ns("wait for the session"));
        if let Some(relay) = self.relay.take() {
            relay.finish();
        }
        drop(self.raw.take());
        drop(forwarder);
        let (status, timed_out) = status?;
        self.fs.unmount().map_err(SandboxError::Filesystem)?;
        let code = init::exit_code(status).unwrap_or(125);
        Ok(Outcome {
            code: if timed_out { timeout::TIMED_OUT } else { code },
            fs: self.backend,
            timed_out,
        })
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

/// What the child needs besides the plan.
struct Child<'a> {
    /// The host's resolver files and where they go.
    net: &'a [plan::NetFile],
    /// The new root, mounted.
    root: &'a Path,
    /// A pty of its own.
    pty: bool,
    /// setgroups(2) works in its user namespace.
    setgroups: bool,
    /// The compiled system-call filter.
    filter: Option<&'a seccomp::Filter>,
    /// Gate, pid 1's way, console socket.
    launch: &'a Launch,
    /// Namespaces to join (opened), instead of new ones of their kind.
    joined: &'a [(NsKind, OwnedFd)],
}

impl Child<'_> {
    fn joins(&self, kind: NsKind) -> bool {
        self.joined.iter().any(|(k, _)| *k == kind)
    }
}

/// The clone flag of a namespace kind a session can join.
fn clone_flag(kind: NsKind) -> CloneFlags {
    match kind {
        NsKind::Network => CloneFlags::CLONE_NEWNET,
        NsKind::Ipc => CloneFlags::CLONE_NEWIPC,
        NsKind::Uts => CloneFlags::CLONE_NEWUTS,
        NsKind::Pid => CloneFlags::CLONE_NEWPID,
    }
}

/// Step 4: the child, pid 1 of new namespaces, waiting for the go.
fn start_child(plan: &SessionPlan, c: &Child<'_>, end: End) -> Result<Pid, SandboxError> {
    // A cgroup namespace too, so the session's cgroup2 view starts at its own cgroup.
    let mut flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWCGROUP;
    if plan.net == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    // A namespace joined is entered instead of made.
    for (kind, _) in c.joined {
        flags.remove(clone_flag(*kind));
    }
    let mut end = Some(end);
    // The cloned child has no caller to return an error to: it sends its reason over the
    // handshake (or prints it when it cannot) and exits 125.
    let child = Box::new(move || -> isize {
        if c.launch.tied {
            // Dies with the launcher; if the launcher is already gone, the go never comes.
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        }
        let Some(mut end) = end.take() else {
            exit_now(125)
        };
        let Ok(state) = end.expect(Msg::Go) else {
            exit_now(125)
        };
        let notes = match setup_child(plan, c, &mut end, &state) {
            Ok(notes) => notes,
            Err(why) => fail_setup(&mut end, &why),
        };
        if let Err(e) = end.send(Msg::Ready, notes.join("\n").as_bytes()) {
            fail_setup(&mut end, &e.to_string());
        }
        // Held until started: the launcher's word, or a reader on the exec fifo.
        let released = match &c.launch.gate {
            Gate::Handshake => end.expect(Msg::Start).map(drop).map_err(|e| e.to_string()),
            Gate::Fifo(fifo) => init::wait_for_reader(fifo.as_fd()),
        };
        if let Err(e) = released {
            // Nobody waits for a message any more.
            eprintln!("ovlrun: {e}");
            exit_now(125);
        }
        drop(end);
        let cmd = init::Command {
            plan,
            terminal: c.pty,
            setgroups: c.setgroups,
            filter: c.filter,
        };
        // Inside its root, just before the user's program; nobody waits for an answer.
        if let Err(why) = hooks::run_all("startContainer", &c.launch.hooks.start, &state) {
            eprintln!("ovlrun: {why}");
            exit_now(125);
        }
        match c.launch.pid1 {
            Pid1::Supervise => init::run(&cmd),
            Pid1::Exec => init::exec_as_pid1(&cmd),
        }
    });
    // Still single-threaded here: the overlay is mounted but not served yet.
    process::clone_with_namespaces(child, flags).map_err(ns("create the session's namespaces"))
}

/// In the child, after a failed setup step: tells the launcher why and exits 125.
fn fail_setup(end: &mut End, why: &str) -> ! {
    if end.send(Msg::Failed, why.as_bytes()).is_err() {
        eprintln!("ovlrun: {why}");
    }
    exit_now(125)
}

/// In the child: mounts, root, hostname, loopback, terminal. Returns the notes of steps
/// that fell back, or the failing step's message.
fn setup_child(
    plan: &SessionPlan,
    c: &Child<'_>,
    end: &mut End,
    state: &[u8],
) -> Result<Vec<String>, String> {
    let chain = |e: &dyn std::error::Error| crate::error_chain(e);
    for (kind, fd) in c.joined.iter().filter(|(k, _)| *k != NsKind::Pid) {
        nix::sched::setns(fd, clone_flag(*kind)).map_err(|e| {
            let path = plan
                .join
                .iter()
                .find(|j| j.kind == *kind)
                .map(|j| j.path.display());
            format!(
                "cannot join namespace {}: {e}",
                path.map(|p| p.to_string()).unwrap_or_default()
            )
        })?;
    }
    let mut notes = mounts::apply(c.root, &plan::steps(plan, CgroupLayout::of_host(), c.net))
        .map_err(|e| chain(&e))?;
    mounts::seal_root(c.root, plan.read_only_root).map_err(|e| chain(&e))?;
    // In the container's namespaces, its mounts made, the runtime's paths still in view.
    hooks::run_all("createContainer", &c.launch.hooks.create, state)?;
    notes.extend(mounts::enter_root(c.root).map_err(|e| chain(&e))?);
    // A joined uts namespace keeps its name, as with runc.
    if !c.joins(NsKind::Uts) {
        nix::unistd::sethostname(&plan.hostname)
            .map_err(|e| format!("--hostname {}: {e}", plan.hostname))?;
    }
    // A joined network namespace is set up by its owner.
    if plan.net == Network::None && !c.joins(NsKind::Network) {
        loopback_up().map_err(|e| format!("cannot bring up lo: {e}"))?;
    }
    // Inside the session's own devpts; the master goes to the launcher or the console socket.
    if c.pty {
        let sent = match &c.launch.console {
            None => terminal::open_in_session(
                |master| end.send_fd(Msg::Terminal, master).map_err(Into::into),
                plan.uid,
                plan.gid,
            ),
            Some(socket) => terminal::open_in_session(
                |master| terminal::send_to_console(socket.as_fd(), master),
                plan.uid,
                plan.gid,
            ),
        };
        sent.map_err(|e| chain(&e))?;
    }
    Ok(notes)
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

/// Step 7: passes INT, TERM, HUP, QUIT, USR1, USR2, WINCH sent to the launcher on to the
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
