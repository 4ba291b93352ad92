//! The state root (`--root`): where containers live, one directory per id. Made 0700 and
//! owned by the caller; a root another user could write, or an id that is no plain name,
//! is refused, so no id makes ovlrun write outside its root.

use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::RuntimeError;

/// An open state root.
#[derive(Debug)]
pub struct Root {
    /// Its path.
    pub path: PathBuf,
}

impl Root {
    /// The default root: `/run/ovlrun` for root, else `$XDG_RUNTIME_DIR/ovlrun`; as runc,
    /// root of a user namespace other than the host's (rootless podman runs the runtime
    /// there) counts as a user when `XDG_RUNTIME_DIR` is set.
    ///
    /// # Errors
    /// [`RuntimeError::Root`] for a user without `XDG_RUNTIME_DIR`.
    pub fn default_path() -> Result<PathBuf, RuntimeError> {
        let xdg = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty());
        if nix::unistd::geteuid().is_root() && (xdg.is_none() || in_host_user_namespace()) {
            return Ok(PathBuf::from("/run/ovlrun"));
        }
        match xdg {
            Some(dir) => Ok(PathBuf::from(dir).join("ovlrun")),
            None => Err(RuntimeError::Root {
                path: PathBuf::from("$XDG_RUNTIME_DIR/ovlrun"),
                problem: "XDG_RUNTIME_DIR is not set; give --root DIR".into(),
            }),
        }
    }

    /// Opens (making it, 0700, when missing) the root at `path`.
    ///
    /// # Errors
    /// [`RuntimeError::Root`] when it cannot be made, is no directory, or belongs to
    /// another user or is writable by others.
    pub fn open(path: &Path) -> Result<Root, RuntimeError> {
        let bad = |problem: String| RuntimeError::Root {
            path: path.to_owned(),
            problem,
        };
        if !path.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|e| bad(format!("cannot create it: {e}")))?;
        }
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if !meta.is_dir() {
            return Err(bad("not a directory".into()));
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(bad(format!(
                "owned by uid {}, not by you ({me})",
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(bad(format!(
                "mode {:o} lets others write in it",
                meta.mode() & 0o7777
            )));
        }
        Ok(Root {
            path: path.to_owned(),
        })
    }

    /// The directory of container `id` (checked), not opened.
    ///
    /// # Errors
    /// [`RuntimeError::InvalidId`].
    pub fn dir_of(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        check_id(id)?;
        Ok(self.path.join(id))
    }

    /// Makes the directory of new container `id`, 0700.
    ///
    /// # Errors
    /// [`RuntimeError::Exists`] when it exists; [`RuntimeError::Io`].
    pub(crate) fn make_dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        let dir = self.dir_of(id)?;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(RuntimeError::Exists(id.to_owned()))
            }
            Err(e) => Err(super::io("cannot create the container directory", &dir)(e)),
        }
    }

    /// Opens the directory of container `id`, refusing a symlink there.
    ///
    /// # Errors
    /// [`RuntimeError::NotExist`] when there is none.
    pub(crate) fn open_dir(&self, id: &str) -> Result<(PathBuf, OwnedFd), RuntimeError> {
        let dir = self.dir_of(id)?;
        match nix::fcntl::open(
            &dir,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
            Mode::empty(),
        ) {
            Ok(fd) => Ok((dir, fd)),
            Err(_) => Err(RuntimeError::NotExist(id.to_owned())),
        }
    }

    /// The ids of the containers in the root, sorted (entries that are no valid id are
    /// skipped).
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| check_id(id).is_ok())
            .collect();
        ids.sort();
        ids
    }
}

/// Whether this process is in the host's user namespace (its uid map is the identity of
/// every id).
fn in_host_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
}

/// runc's id rule: `^[\w+\-.]+$`, and not `.` or `..`, so an id is always one plain name
/// beneath the root.
///
/// # Errors
/// [`RuntimeError::InvalidId`].
pub fn check_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidId(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_names() {
        for good in ["a", "abc-1.2_x+y", "..a", "a..", "0"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in [
            "", ".", "..", "a/b", "../x", "/abs", "a b", "a\0b", "é", "a\n",
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
