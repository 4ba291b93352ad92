//! runc's command line over the launcher (issue 15): the verbs container managers send
//! (podman's conmon, containerd's runc shim, docker, buildah), one file per verb as youki
//! has them, over the launcher split along the container's life (`sandbox::create`,
//! then `start` through runc's exec fifo, `kill`, `delete`).
//!
//! A container is a directory `ROOT/ID` (0700, in a root of the caller's own, 0700) holding
//! its record `state.json` ([`container`]) and, until it is started, `exec.fifo`. Its
//! process is cloned by `ovlrun create`, which exits: the process stays a descendant of the
//! caller (conmon and the shim are child subreapers), held before the user's program in its
//! exec fifo until `ovlrun start` reads it. The bundle's `root.path` is the container's root,
//! as with runc, and the bundle's process is pid 1.
//!
//! This room decides the verbs' rules (which status allows what, runc's messages, the state
//! JSON); it prints nothing: the binary prints, logs to `--log` and picks the exit codes.

pub(crate) mod cgroup;
pub mod container;
pub mod create;
pub mod delete;
pub mod exec;
pub mod features;
pub(crate) mod hooks;
pub mod kill;
pub mod list;
pub mod pause;
pub mod ps;
pub mod root;
pub(crate) mod rootfs;
pub mod run;
pub mod start;
pub mod state;
pub(crate) mod time;

pub use container::{Container, Status};
pub use root::Root;
pub use state::State;

use std::path::PathBuf;

/// Why a runtime verb failed. Each variant says what runc would say.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// An id runc's rules refuse (`[A-Za-z0-9_+.-]+`, not `.` or `..`).
    #[error(
        "invalid container id {0:?}: only letters, digits, '_', '+', '-' and '.' (not . or ..)"
    )]
    InvalidId(String),
    /// No container with this id in the root.
    #[error("container {0:?} does not exist")]
    NotExist(String),
    /// A container with this id already exists.
    #[error("container with id exists: {0}")]
    Exists(String),
    /// The verb needs a running (or created) container.
    #[error("container not running")]
    NotRunning,
    /// `start` of a container that is not `created`.
    #[error("cannot start a container that {0}")]
    CannotStart(&'static str),
    /// `delete` without `--force` of a container that runs.
    #[error("cannot delete container {id} that is not stopped: {status}")]
    NotStopped {
        /// The container.
        id: String,
        /// Its status.
        status: Status,
    },
    /// An unknown signal name or number.
    #[error("unknown signal {0:?}")]
    Signal(String),
    /// The state root is unusable (not ours, open to others) or cannot be made.
    #[error("state root {}: {problem}", .path.display())]
    Root {
        /// The root.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A file of the container or of the caller could not be read or written.
    #[error("{what} {}", .path.display())]
    Io {
        /// What was being done ("cannot write the pid file").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The bundle's config cannot be used.
    #[error(transparent)]
    Config(#[from] crate::config::OciError),
    /// The plan made of the bundle cannot be used.
    #[error(transparent)]
    Plan(#[from] crate::config::PlanError),
    /// A flag combination runc refuses (a terminal without a console socket, ...).
    #[error("{0}")]
    Usage(String),
    /// The container could not be set up.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// A signal could not be sent.
    #[error("cannot signal the container's process {pid}")]
    Kill {
        /// The process.
        pid: i32,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// A cgroup step failed.
    #[error("cgroup {}", .path.display())]
    Cgroup {
        /// The cgroup path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The container's session (`org.ovlrun.policy`) could not be made or finished.
    #[error("the container's session")]
    Session(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A hook failed.
    #[error("{hook}: {problem}")]
    Hook {
        /// Which (`hooks.prestart[0] (/usr/bin/x)`).
        hook: String,
        /// How it failed.
        problem: String,
    },
    /// `pause` of a container that is not running, or `resume` of one not paused.
    #[error("container not {0}")]
    NotIn(&'static str),
    /// The container's process did not end after SIGKILL.
    #[error("the container's process {0} is still alive after SIGKILL")]
    StillAlive(i32),
}

/// What a verb has to say that is not an error (a setup step that fell back, cgroups not
/// applied): the binary logs it as a warning.
pub type Notes = Vec<String>;

/// `io::Error` with what was done and on which path.
pub(crate) fn io(
    what: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_owned();
    move |source| RuntimeError::Io { what, path, source }
}

/// Now as RFC 3339 UTC with nanoseconds, as runc's logs and state show time.
pub fn time_now() -> String {
    time::now_rfc3339()
}
