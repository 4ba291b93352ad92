//! The rootfs lock: running sessions hold it shared, a commit holds it exclusively. It is a
//! file in the state root named after the rootfs's device and inode (never inside the
//! rootfs), so every path to the same tree finds the same lock.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// How the lock is wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Many at once (running sessions).
    Shared,
    /// One alone (a commit, a recovery).
    Exclusive,
}

/// A held rootfs lock; released on drop.
#[derive(Debug)]
pub struct RootfsLock {
    _lock: Flock<File>,
    /// The lock file.
    pub path: PathBuf,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Other sessions hold it.
    #[error(
        "rootfs {} is in use by running sessions (see `ovlrun ls`); retry when they end, or pass --wait",
        .rootfs.display()
    )]
    Busy {
        /// The rootfs.
        rootfs: PathBuf,
    },
    /// The lock file could not be opened.
    #[error("cannot open lock file {}", .path.display())]
    Open {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// flock failed.
    #[error("cannot lock {}", .path.display())]
    Flock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// The lock file of `rootfs` under `state_root`.
///
/// # Errors
/// [`LockError::Open`] when the rootfs cannot be stat'ed.
pub fn lock_path(state_root: &Path, rootfs: &Path) -> Result<PathBuf, LockError> {
    let md = std::fs::metadata(rootfs).map_err(|source| LockError::Open {
        path: rootfs.to_owned(),
        source,
    })?;
    Ok(state_root
        .join("locks")
        .join(format!("{:x}-{:x}.lock", md.dev(), md.ino())))
}

impl RootfsLock {
    /// Takes the lock of `rootfs`; with `wait`, blocks until it is free.
    ///
    /// # Errors
    /// [`LockError::Busy`] when held and not waiting.
    pub fn take(
        state_root: &Path,
        rootfs: &Path,
        mode: Mode,
        wait: bool,
    ) -> Result<RootfsLock, LockError> {
        let path = lock_path(state_root, rootfs)?;
        let open_err = |source| LockError::Open {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(open_err)?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(open_err)?;
        let arg = match (mode, wait) {
            (Mode::Shared, true) => FlockArg::LockShared,
            (Mode::Shared, false) => FlockArg::LockSharedNonblock,
            (Mode::Exclusive, true) => FlockArg::LockExclusive,
            (Mode::Exclusive, false) => FlockArg::LockExclusiveNonblock,
        };
        match Flock::lock(file, arg) {
            Ok(lock) => Ok(RootfsLock { _lock: lock, path }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Busy {
                rootfs: rootfs.to_owned(),
            }),
            Err((_, source)) => Err(LockError::Flock { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_holders_block_an_exclusive_one() {
        let state = tempfile::tempdir().unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        let a = RootfsLock::take(state.path(), rootfs.path(), Mode::Shared, false).unwrap();
        let _b = RootfsLock::take(state.path(), rootfs.path(), Mode::Shared, false).unwrap();
        let e = RootfsLock::take(state.path(), rootfs.path(), Mode::Exclusive, false).unwrap_err();
        assert!(matches!(e, LockError::Busy { .. }), "{e}");
        drop(a);
        drop(_b);
        RootfsLock::take(state.path(), rootfs.path(), Mode::Exclusive, false).unwrap();
    }
}
