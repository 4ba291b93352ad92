//! User namespace id maps: who the session's ids are on the host.
//!
//! Root maps the whole id space onto itself. An unprivileged user maps 0 to itself and, where
//! `/etc/subuid` and `/etc/subgid` grant a range, 1.. onto that range through the setuid
//! `newuidmap`/`newgidmap`; without a range, only 0 exists inside.

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::{Gid, Pid, Uid};

/// A range of subordinate ids: `count` ids from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// First host id.
    pub start: u32,
    /// How many.
    pub count: u32,
}

/// How the session's ids map to the host's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdMap {
    /// Every id to itself (the caller is root).
    Identity,
    /// Only 0, onto the caller's uid and gid.
    Single {
        /// Host uid.
        uid: u32,
        /// Host gid.
        gid: u32,
    },
    /// 0 onto the caller, 1.. onto subordinate ranges.
    Sub {
        /// Host uid.
        uid: u32,
        /// Host gid.
        gid: u32,
        /// Subordinate uids.
        uids: Range,
        /// Subordinate gids.
        gids: Range,
    },
}

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

/// The first range `/etc/subuid`-style `content` grants to `user` (name or numeric id).
pub fn parse_subid(content: &str, name: &str, id: u32) -> Option<Range> {
    let id = id.to_string();
    content.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (owner, start, count) = (f.next()?, f.next()?, f.next()?);
        if owner != name && owner != id {
            return None;
        }
        let range = Range {
            start: start.parse().ok()?,
            count: count.parse().ok()?,
        };
        (range.count > 0).then_some(range)
    })
}

/// The map for the calling user.
pub fn choose() -> IdMap {
    let (uid, gid) = (Uid::current(), Gid::current());
    if uid.is_root() {
        return IdMap::Identity;
    }
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let helpers = ["newuidmap", "newgidmap"]
        .iter()
        .all(|h| find_in_path(h).is_some());
    match (
        parse_subid(&read("/etc/subuid"), &name, uid.as_raw()),
        parse_subid(&read("/etc/subgid"), &name, uid.as_raw()),
    ) {
        (Some(uids), Some(gids)) if helpers => IdMap::Sub {
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            uids,
            gids,
        },
        _ => IdMap::Single {
            uid: uid.as_raw(),
            gid: gid.as_raw(),
        },
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin:/usr/sbin:/sbin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn write(path: &str, content: &str) -> Result<(), IdMapError> {
    std::fs::write(path, content).map_err(|source| IdMapError::Write {
        path: Path::new(path).to_owned(),
        source,
    })
}

impl IdMap {
    /// True when the maps must be written from outside the namespace (anything beyond the
    /// caller's own id, which only a process in the parent namespace may map).
    pub fn needs_helpers(&self) -> bool {
        !matches!(self, IdMap::Single { .. })
    }

    /// True when processes inside may call setgroups(2) (not with a one-id map, where the
    /// kernel requires it denied).
    pub fn allows_setgroups(&self) -> bool {
        !matches!(self, IdMap::Single { .. })
    }

    /// A one-line note for the user about what this map cannot do, if anything.
    pub fn limitation(&self) -> Option<String> {
        match self {
            IdMap::Single { .. } => Some(
                "only uid/gid 0 exist in the session (no other owners, no setgroups); \
                 grant a range with: sudo usermod --add-subuids 100000-165535 \
                 --add-subgids 100000-165535 $USER"
                    .into(),
            ),
            // ovlrun does not yet map a root caller onto a subordinate range (README: "Root
            // sessions"); the session is confined, but its root owns what host root owns.
            IdMap::Identity => Some(
                "uid 0 in this session is the host's uid 0, confined by namespaces, a reduced \
                 capability set, read-only /proc/sys and /sys, and seccomp"
                    .into(),
            ),
            IdMap::Sub { .. } => None,
        }
    }

    /// Writes the one-id map of the calling process's new user namespace from inside it.
    ///
    /// # Errors
    /// [`IdMapError::Write`] naming the file.
    pub fn write_own(&self) -> Result<(), IdMapError> {
        let IdMap::Single { uid, gid } = self else {
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
    pub fn run_helpers(&self, pid: Pid) -> Result<(), IdMapError> {
        let (uid, gid, uids, gids) = match self {
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
            } => (uid, gid, uids, gids),
        };
        for (helper, own, range) in [("newuidmap", uid, uids), ("newgidmap", gid, gids)] {
            let out = Command::new(helper)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_lines() {
        let content = "alice:100000:65536\n# x\n1001:200000:1000\nbob:300000:0\n";
        assert_eq!(
            parse_subid(content, "alice", 5),
            Some(Range {
                start: 100000,
                count: 65536
            })
        );
        assert_eq!(
            parse_subid(content, "carol", 1001),
            Some(Range {
                start: 200000,
                count: 1000
            })
        );
        assert_eq!(
            parse_subid(content, "bob", 7),
            None,
            "empty ranges grant nothing"
        );
        assert_eq!(parse_subid(content, "dave", 8), None);
    }
}
