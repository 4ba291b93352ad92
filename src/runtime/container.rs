//! A container's record (`ROOT/ID/state.json`) and its status, which is never stored: it is
//! read from the process (alive, with the start time recorded, so a reused pid is not taken
//! for it) and from the exec fifo (present until `start`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Root, RuntimeError, io};
use crate::host::process as proc;

/// The record's file name in the container's directory.
const RECORD: &str = "state.json";
/// runc's exec fifo: present from `create` until `start`.
pub(crate) const EXEC_FIFO: &str = "exec.fifo";

/// A container's status, as runc names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Set up, held before the user's program.
    Created,
    /// The user's program runs.
    Running,
    /// Its cgroup is frozen (`pause`).
    Paused,
    /// Its process has ended (or never was).
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What `create` records of a container.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Container {
    /// The id.
    pub id: String,
    /// The container's process (pid 1 inside), as the caller sees it.
    pub pid: i32,
    /// Its start time (`/proc/PID/stat` field 22), which guards against a reused pid.
    pub pid_start: u64,
    /// The bundle directory (absolute).
    pub bundle: PathBuf,
    /// The container's root (absolute).
    pub rootfs: PathBuf,
    /// When it was created (RFC 3339, UTC).
    pub created: String,
    /// The config's `ociVersion`.
    pub oci_version: String,
    /// The config's annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The user that created it.
    pub owner: u32,
    /// Its cgroup, when it has one (below the hierarchies' roots).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// The session holding its writes (annotation `org.ovlrun.policy`), applied at delete.
    #[serde(default)]
    pub session: Option<crate::session::ContainerSessionRef>,
    /// The config's hooks (`poststart` and `poststop` run after `create` has exited).
    #[serde(default)]
    pub hooks: Option<oci_spec::runtime::Hooks>,
}

impl Container {
    /// Reads container `id` of `root`.
    ///
    /// # Errors
    /// [`RuntimeError::NotExist`] without a record; [`RuntimeError::Io`] for one unreadable.
    pub fn load(root: &Root, id: &str) -> Result<(Container, PathBuf), RuntimeError> {
        let (dir, _fd) = root.open_dir(id)?;
        let path = dir.join(RECORD);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotExist(id.to_owned()));
            }
            Err(e) => return Err(io("cannot read the container record", &path)(e)),
        };
        let c: Container = serde_json::from_slice(&bytes).map_err(|e| {
            io("cannot parse the container record", &path)(std::io::Error::other(e))
        })?;
        Ok((c, dir))
    }

    /// Writes the record into `dir`, atomically.
    ///
    /// # Errors
    /// [`RuntimeError::Io`].
    pub(crate) fn save(&self, dir: &Path) -> Result<(), RuntimeError> {
        let path = dir.join(RECORD);
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other);
        json.and_then(|j| crate::sys::write_atomic(&path, &j))
            .map_err(io("cannot write the container record", &path))
    }

    /// The status now; `dir` is the container's directory.
    pub fn status(&self, dir: &Path) -> Status {
        if !proc::alive(self.pid, self.pid_start) {
            Status::Stopped
        } else if dir.join(EXEC_FIFO).exists() {
            Status::Created
        } else if super::cgroup::frozen(self) {
            Status::Paused
        } else {
            Status::Running
        }
    }
}
