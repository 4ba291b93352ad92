//! Writing a user namespace's id maps. Which map (and which helpers write it) is
//! [`crate::host::ids`]'s to say; this module only writes it.

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::Pid;

use crate::host::ids::IdMap;

/// Why the maps could not be written.
#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    /// Writing a map file failed.
    #[error("cannot write {}", .path.display())]
    Write {
        /// The map file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A helper could not be started.
    #[error("cannot run {helper}")]
    Spawn {
        /// The helper.
        helper: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A helper failed.
    #[error("{helper} failed ({status}): {stderr}")]
    Helper {
        /// The helper.
        helper: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it said.
        stderr: String,
    },
}

fn write(path: &str, content: &str) -> Result<(), IdMapError> {
    std::fs::write(path, content).map_err(|source| IdMapError::Write {
        path: Path::new(path).to_owned(),
        source,
    })
}

/// Writes the one-id map of the calling process's new user namespace from inside it.
///
/// # Errors
/// [`IdMapError::Write`] naming the file.
pub(crate) fn write_own(ids: &IdMap) -> Result<(), IdMapError> {
    let IdMap::Single { uid, gid } = ids else {
        return Ok(());
    };
    // Required before an unprivileged process may write its own gid map.
    write("/proc/self/setgroups", "deny")?;
    write("/proc/self/uid_map", &format!("0 {uid} 1\n"))?;
    write("/proc/self/gid_map", &format!("0 {gid} 1\n"))
}

/// Writes the maps of process `pid`'s user namespace from outside it: directly for
/// root, through the setuid `newuidmap`/`newgidmap` for a user with subordinate ids.
///
/// # Errors
/// [`IdMapError::Write`] or [`IdMapError::Helper`] with the helper's own message.
pub(crate) fn run_helpers(ids: &IdMap, pid: Pid) -> Result<(), IdMapError> {
    let (uid, gid, uids, gids, helpers) = match ids {
        IdMap::Identity => {
            write(&format!("/proc/{pid}/uid_map"), "0 0 4294967295\n")?;
            return write(&format!("/proc/{pid}/gid_map"), "0 0 4294967295\n");
        }
        IdMap::Single { .. } => return Ok(()),
        IdMap::Sub {
            uid,
            gid,
            uids,
            gids,
            helpers,
        } => (uid, gid, uids, gids, helpers),
    };
    for (helper, path, own, range) in [
        ("newuidmap", &helpers.newuidmap, uid, uids),
        ("newgidmap", &helpers.newgidmap, gid, gids),
    ] {
        let out = Command::new(path)
            .arg(pid.to_string())
            .args(["0", &own.to_string(), "1"])
            .args(["1", &range.start.to_string(), &range.count.to_string()])
            .output()
            .map_err(|source| IdMapError::Spawn { helper, source })?;
        if !out.status.success() {
            return Err(IdMapError::Helper {
                helper,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
    }
    Ok(())
}
