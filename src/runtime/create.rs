//! `create --bundle B [--pid-file P] [--console-socket S] [--preserve-fds N] ID`: the
//! container set up in its namespaces, its process held before the user's program in the
//! exec fifo, its pid written; then `ovlrun create` exits and leaves the process to the
//! caller.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::container::EXEC_FIFO;
use super::rootfs::{BundleRoot, ContainerRoot};
use super::{Container, Notes, Root, RuntimeError, State, io};
use crate::config::oci::{self, Caller};
use crate::config::{Flags, SessionPlan, Terminal};
use crate::host::process as proc;
use crate::policy::Policy;
use crate::sandbox::{self, Created, Gate, Launch, Pid1};
use crate::session::ContainerSessionRef;
use crate::session::container::ContainerSession;

/// `create`'s flags (and `run`'s).
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// The bundle directory (`config.json` and the root it names).
    pub bundle: PathBuf,
    /// Where to write the container's pid.
    pub pid_file: Option<PathBuf>,
    /// A unix socket to send the pty master to, when the process has a terminal.
    pub console_socket: Option<PathBuf>,
    /// Pass the caller's fds 3 .. 3+N to the process.
    pub preserve_fds: u32,
    /// runc's `--no-pivot`: accepted; the root is entered with pivot_root where the kernel
    /// allows, else moved over `/` and chrooted into, as `--no-pivot` does.
    pub no_pivot: bool,
}

/// `create`: returns what the user should know (setup steps that fell back).
///
/// # Errors
/// [`RuntimeError`]; nothing of the container is left then.
pub fn create(root: &Root, id: &str, opts: &CreateOptions) -> Result<Notes, RuntimeError> {
    // The held process is left to the caller: dropping `created` neither waits nor kills.
    let ((), notes) = create_then(root, id, opts, true, |created, _, _| {
        drop(created);
        Ok(())
    })?;
    Ok(notes)
}

/// Makes container `id` of `opts` and hands its held process to `then` (with its record and
/// directory), whose value is returned with the notes. A failure anywhere removes the
/// container's directory. `detached`: the process outlives this call (`create`, `run -d`),
/// so a terminal needs a console socket.
pub(crate) fn create_then<T>(
    root: &Root,
    id: &str,
    opts: &CreateOptions,
    detached: bool,
    then: impl FnOnce(Created<ContainerRoot<'_>>, &Container, &Path) -> Result<T, RuntimeError>,
) -> Result<(T, Notes), RuntimeError> {
    let dir = root.make_dir(id)?;
    let made = create_in(&dir, id, opts, detached, then);
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    made
}

fn create_in<T>(
    dir: &Path,
    id: &str,
    opts: &CreateOptions,
    detached: bool,
    then: impl FnOnce(Created<ContainerRoot<'_>>, &Container, &Path) -> Result<T, RuntimeError>,
) -> Result<(T, Notes), RuntimeError> {
    let (bundle, mut spec, plan, notes) = bundle_plan(&opts.bundle, opts.preserve_fds)?;
    let (cgroups_path, resources) = take_cgroups(&mut spec).unwrap_or_default();
    let session = match container_policy(&spec)? {
        Some(policy) => Some(ContainerSession::begin(&plan, policy, id).map_err(session_error)?),
        None => None,
    };
    let made = create_with(
        dir,
        id,
        opts,
        detached,
        (bundle, spec, plan, notes),
        session.as_ref(),
        cgroups_path,
        resources,
        then,
    );
    if let (Err(_), Some(s)) = (&made, session) {
        s.abandon();
    }
    made
}

/// [`create_in`] once the bundle is read and its session (if any) begun.
#[allow(clippy::too_many_arguments)]
fn create_with<T>(
    dir: &Path,
    id: &str,
    opts: &CreateOptions,
    detached: bool,
    (bundle, spec, plan, mut notes): (PathBuf, oci_spec::runtime::Spec, SessionPlan, Notes),
    session: Option<&ContainerSession>,
    cgroups_path: Option<PathBuf>,
    resources: Option<oci_spec::runtime::LinuxResources>,
    then: impl FnOnce(Created<ContainerRoot<'_>>, &Container, &Path) -> Result<T, RuntimeError>,
) -> Result<(T, Notes), RuntimeError> {
    let console = console(
        opts.console_socket.as_deref(),
        plan.terminal == Terminal::Always,
        detached,
    )?;
    let fifo = exec_fifo(dir)?;
    let launch = Launch {
        gate: Gate::Fifo(fifo),
        pid1: Pid1::Exec,
        console,
        tied: false,
        hooks: crate::sandbox::hooks::InContainer {
            create: spec
                .hooks()
                .as_ref()
                .and_then(|h| h.create_container().clone())
                .unwrap_or_default(),
            start: spec
                .hooks()
                .as_ref()
                .and_then(|h| h.start_container().clone())
                .unwrap_or_default(),
        },
        // As `state` prints it; the launcher fills in the pid.
        state: serde_json::json!({
            "ociVersion": spec.version(),
            "id": id,
            "status": "created",
            "bundle": bundle,
            "rootfs": plan.rootfs,
            "annotations": spec.annotations().clone().unwrap_or_default(),
        }),
    };
    let ids = sandbox::id_map(&plan);
    let root = match session {
        Some(s) => ContainerRoot::Session(s.rootfs(&plan)),
        None => ContainerRoot::Bundle(BundleRoot::new(&plan)),
    };
    let created = sandbox::create(&plan, ids, root, launch)?;
    notes.extend(created.notices.iter().map(ToString::to_string));
    let pid = created.pid();
    let rootfs = plan.rootfs.clone();
    let state_root = plan.state_root.clone();
    let finish = move || -> Result<(T, Notes), RuntimeError> {
        let raw = pid.as_raw();
        // The process is held before the user's program: its limits apply from the start.
        let cgroup = super::cgroup::place(
            id,
            cgroups_path.as_deref(),
            resources.as_ref(),
            pid,
            &mut notes,
        )?;
        let record = Container {
            id: id.to_owned(),
            pid: raw,
            pid_start: proc::start_time(raw).unwrap_or(0),
            bundle,
            rootfs,
            created: super::time::now_rfc3339(),
            oci_version: spec.version().clone(),
            annotations: spec
                .annotations()
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            owner: nix::unistd::geteuid().as_raw(),
            cgroup,
            hooks: spec.hooks().clone(),
            session: session.map(|s| ContainerSessionRef {
                state_root,
                id: s.id().to_owned(),
            }),
        };
        if let Some(s) = session {
            s.started(u32::try_from(raw).unwrap_or(0))
                .map_err(session_error)?;
        }
        record.save(dir)?;
        if let Some(hooks) = &record.hooks {
            super::hooks::run(hooks, super::hooks::Stage::Create, &State::of(&record, dir))?;
        }
        if let Some(path) = &opts.pid_file {
            write_pid_file(path, raw)?;
        }
        then(created, &record, dir).map(|t| (t, notes))
    };
    match finish() {
        Ok(done) => Ok(done),
        Err(e) => {
            // No container is left half made: its process goes with its directory.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            Err(e)
        }
    }
}

/// The policy of a container whose writes are a session (`org.ovlrun.policy`), or `None`
/// for runc's way (its writes go to the bundle's root).
fn container_policy(spec: &oci_spec::runtime::Spec) -> Result<Option<Policy>, RuntimeError> {
    let Some(value) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(crate::config::oci::ANNOTATION_POLICY))
    else {
        return Ok(None);
    };
    // Checked by the config already; the kernel serves (FUSE would need a server outliving
    // `create`).
    let fs = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(crate::config::oci::ANNOTATION_FS))
        .map(String::as_str);
    if fs == Some("fuse") {
        return Err(RuntimeError::Usage(
            "annotations[\"org.ovlrun.fs\"] fuse: a container's session is served by the \
             kernel overlayfs (FUSE would need a server outliving create)"
                .into(),
        ));
    }
    Ok(Policy::parse(value))
}

fn session_error(e: crate::session::SessionError) -> RuntimeError {
    RuntimeError::Session(Box::new(e))
}

/// The plan of the bundle at `bundle` for a container (`create`) or a process entering it
/// (`exec`, which overrides the process): its absolute path, its config, the plan, and the
/// notes about what is not applied.
pub(crate) fn bundle_plan(
    bundle: &Path,
    preserve_fds: u32,
) -> Result<(PathBuf, oci_spec::runtime::Spec, SessionPlan, Notes), RuntimeError> {
    let bundle = bundle
        .canonicalize()
        .map_err(io("cannot open the bundle", bundle))?;
    let config = bundle.join("config.json");
    let text = oci::read_bounded(&config)?;
    let spec = oci::parse(&config, &text)?;
    let notes = Notes::new();
    // The cgroup fields are the runtime's (see `cgroup`), not a session's.
    let mut stripped = spec.clone();
    take_cgroups(&mut stripped);
    // Hooks too: a session refuses them, the runtime runs them (see `hooks`).
    stripped.set_hooks(None);
    let settings = oci::settings(&stripped, &config, &Caller::current())?;
    let terminal = settings.terminal == Some(true);
    let no_new_privs = settings.no_new_privs;
    let flags = Flags {
        preserve_fds,
        clear_env: true,
        tty: terminal,
        no_tty: !terminal,
        ..Flags::default()
    };
    let mut plan = SessionPlan::from_flags(flags, settings)?;
    // runc's default: a process may gain privileges (setuid programs) unless the config
    // says otherwise.
    plan.no_new_privs = no_new_privs.unwrap_or(false);
    // A container's session, if any, is served by the kernel (see `container_policy`).
    plan.fs = crate::mount::Backend::Kernel;
    Ok((bundle, spec, plan, notes))
}

/// The config's cgroup fields (`linux.cgroupsPath`, `linux.resources`), taken out of `spec`:
/// the runtime's to apply, not a session's.
fn take_cgroups(
    spec: &mut oci_spec::runtime::Spec,
) -> Option<(Option<PathBuf>, Option<oci_spec::runtime::LinuxResources>)> {
    let linux = spec.linux().clone()?;
    let (path, resources) = (linux.cgroups_path().clone(), linux.resources().clone());
    if path.is_none() && resources.is_none() {
        return None;
    }
    let mut stripped = linux;
    stripped.set_cgroups_path(None).set_resources(None);
    spec.set_linux(Some(stripped));
    Some((path, resources))
}

/// The console socket to send a pty's master to, connected; runc's rules on when one is
/// needed and allowed.
pub(crate) fn console(
    socket: Option<&Path>,
    terminal: bool,
    detached: bool,
) -> Result<Option<OwnedFd>, RuntimeError> {
    match (socket, terminal) {
        (Some(_), false) => Err(RuntimeError::Usage(
            "cannot use console socket if runc will not detach or allocate tty".into(),
        )),
        (None, true) if detached => Err(RuntimeError::Usage(
            "cannot allocate tty if runc will detach without setting console socket".into(),
        )),
        (None, _) => Ok(None),
        (Some(path), true) => UnixStream::connect(path)
            .map(|s| Some(OwnedFd::from(s)))
            .map_err(io("cannot connect to the console socket", path)),
    }
}

/// Makes the exec fifo in `dir` and opens it `O_PATH`, for the process to reopen for writing.
fn exec_fifo(dir: &Path) -> Result<OwnedFd, RuntimeError> {
    let path = dir.join(EXEC_FIFO);
    nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))
        .map_err(|e| io("cannot make the exec fifo", &path)(e.into()))?;
    nix::fcntl::open(&path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| io("cannot open the exec fifo", &path)(e.into()))
}

/// Writes `pid` in decimal to `path`, atomically (a reader never sees it half written).
fn write_pid_file(path: &Path, pid: i32) -> Result<(), RuntimeError> {
    let abs = std::path::absolute(path).map_err(io("cannot write the pid file", path))?;
    crate::sys::write_atomic(&abs, pid.to_string().as_bytes())
        .map_err(io("cannot write the pid file", path))
}
