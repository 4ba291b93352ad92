//! The rootfs lock: running sessions hold it shared, a commit (or a recovery) holds it
//! exclusively. It is a `flock(2)` on the rootfs directory itself, so it belongs to the tree,
//! not to a state root or a user: every ovlrun that uses the tree, under any `OVLRUN_STATE`,
//! as any user, through any path to it, meets the same lock, and the kernel drops it when its
//! holder dies. Nothing is created for it anywhere.
//!
//! Sessions never meet it: they see the overlay's directory, a different inode.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode as FileMode;

/// How the lock is wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Many at once (running sessions).
    Shared,
    /// One alone (a commit, a recovery).
    Exclusive,
}

/// A held rootfs lock; released on drop.
#[derive(Debug)]
pub(crate) struct RootfsLock {
    _lock: Flock<OwnedFd>,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds it.
    #[error(
        "rootfs {} is in use (running sessions, or a commit under way; see `ovlrun ls` of each state root); retry when they end, or pass --wait",
        .rootfs.display()
    )]
    Busy {
        /// The rootfs.
        rootfs: PathBuf,
    },
    /// The rootfs could not be opened.
    #[error("cannot open rootfs {} to lock it", .rootfs.display())]
    Open {
        /// The rootfs.
        rootfs: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// flock failed.
    #[error("cannot lock rootfs {}", .rootfs.display())]
    Flock {
        /// The rootfs.
        rootfs: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

impl RootfsLock {
    /// Takes the lock of `rootfs`; with `wait`, blocks until it is free.
    ///
    /// # Errors
    /// [`LockError::Busy`] when held and not waiting.
    pub(crate) fn take(rootfs: &Path, mode: Mode, wait: bool) -> Result<RootfsLock, LockError> {
        // flock(2) needs an fd opened for reading (not O_PATH); O_CLOEXEC keeps it from the
        // session's command.
        let fd = nix::fcntl::open(
            rootfs,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            FileMode::empty(),
        )
        .map_err(|source| LockError::Open {
            rootfs: rootfs.to_owned(),
            source,
        })?;
        let arg = match (mode, wait) {
            (Mode::Shared, true) => FlockArg::LockShared,
            (Mode::Shared, false) => FlockArg::LockSharedNonblock,
            (Mode::Exclusive, true) => FlockArg::LockExclusive,
            (Mode::Exclusive, false) => FlockArg::LockExclusiveNonblock,
        };
        match Flock::lock(fd, arg) {
            Ok(lock) => Ok(RootfsLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Busy {
                rootfs: rootfs.to_owned(),
            }),
            Err((_, source)) => Err(LockError::Flock {
                rootfs: rootfs.to_owned(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_holders_block_an_exclusive_one_through_any_path() {
        let top = tempfile::tempdir().unwrap();
        let rootfs = top.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        let link = top.path().join("link");
        std::os::unix::fs::symlink(&rootfs, &link).unwrap();
        let a = RootfsLock::take(&rootfs, Mode::Shared, false).unwrap();
        let b = RootfsLock::take(&link, Mode::Shared, false).unwrap();
        let e = RootfsLock::take(&link, Mode::Exclusive, false).unwrap_err();
        assert!(matches!(e, LockError::Busy { .. }), "{e}");
        drop(a);
        drop(b);
        let x = RootfsLock::take(&rootfs, Mode::Exclusive, false).unwrap();
        let e = RootfsLock::take(&link, Mode::Shared, false).unwrap_err();
        assert!(matches!(e, LockError::Busy { .. }), "{e}");
        drop(x);
        assert_eq!(
            std::fs::read_dir(top.path()).unwrap().count(),
            2,
            "no lock file"
        );
    }
}
