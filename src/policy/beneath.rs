//! A commit's paths, resolved strictly beneath the rootfs.
//!
//! A plan path is checked lexically first ([`check`]: relative, plain names only, no `..`,
//! no `.`, no root), then resolved by the kernel from an fd of the rootfs with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` (`sys::beneath`): no symlink in the tree
//! (planted or not) and no `..` can make a commit or a recovery act outside it. The last
//! component is then acted on with `*at` calls from its parent's fd, which do not follow it,
//! or through an fd of it (`/proc/self/fd/N/.`) for metadata.
//!
//! A path longer than one openat2(2) call takes (PATH_MAX) is resolved in pieces, each
//! beneath the directory the one before reached ([`open_in_steps`]): every piece is plain
//! names, so each step stays beneath the last and all of them beneath the rootfs.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, fstatat};

use crate::sys::beneath::open_beneath;

/// A plan path that is not a plain relative path.
#[derive(Debug, thiserror::Error)]
#[error("plan path {path:?} is not a plain relative path beneath the rootfs")]
pub struct UnsafePath {
    /// The path.
    pub path: PathBuf,
}

/// Checks that `path` is relative and made of plain names only (`""` is the rootfs itself).
///
/// # Errors
/// [`UnsafePath`].
pub(crate) fn check(path: &Path) -> Result<(), UnsafePath> {
    // `components()` drops inner `.` and repeated `/`; compare bytes to catch them too.
    let plain = path.components().all(|c| matches!(c, Component::Normal(_)))
        && path
            .components()
            .map(|c| c.as_os_str().len() + 1)
            .sum::<usize>()
            == path.as_os_str().len() + usize::from(!path.as_os_str().is_empty());
    if plain {
        Ok(())
    } else {
        Err(UnsafePath {
            path: path.to_owned(),
        })
    }
}

/// The path through which the kernel reaches what `fd` is (for path-based metadata calls).
pub(crate) fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/.", fd.as_raw_fd()))
}

/// The path through which the kernel reaches entry `name` of directory `parent` (the
/// last component is then not followed by the calls that do not follow one).
pub(crate) fn entry_path(parent: &OwnedFd, name: &OsStr) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", parent.as_raw_fd())).join(name)
}

/// Bytes of path one resolution step takes: well under PATH_MAX, whose limit counts the
/// terminating NUL.
const STEP_BYTES: usize = 2048;

/// Opens plain relative `rel` beneath `dir` with `flags`, as `open_beneath` does, in steps
/// of at most `STEP_BYTES` (a single name is at most 255 bytes), so any depth is reached.
///
/// # Errors
/// As `open_beneath`.
pub(crate) fn open_in_steps(dir: &OwnedFd, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    if rel.as_os_str().len() < STEP_BYTES {
        return open_beneath(dir, rel, flags);
    }
    let mut at: Option<OwnedFd> = None;
    let mut piece = PathBuf::new();
    for name in rel.components() {
        let name = name.as_os_str();
        if !piece.as_os_str().is_empty() && piece.as_os_str().len() + 1 + name.len() >= STEP_BYTES {
            let from = at.as_ref().unwrap_or(dir);
            at = Some(open_beneath(
                from,
                &piece,
                OFlag::O_PATH | OFlag::O_DIRECTORY,
            )?);
            piece.clear();
        }
        piece.push(name);
    }
    open_beneath(at.as_ref().unwrap_or(dir), &piece, flags)
}

/// An open rootfs that plan paths are resolved beneath.
#[derive(Debug)]
pub(crate) struct Beneath {
    fd: OwnedFd,
    /// The rootfs, for messages.
    pub path: PathBuf,
}

fn errno_io(e: Errno) -> std::io::Error {
    e.into()
}

impl Beneath {
    /// Opens the rootfs.
    ///
    /// # Errors
    /// Any error of open(2).
    pub(crate) fn open(rootfs: &Path) -> std::io::Result<Beneath> {
        let fd = nix::fcntl::open(
            rootfs,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Beneath {
            fd,
            path: rootfs.to_owned(),
        })
    }

    /// The rootfs's fd.
    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The rootfs path of `rel`, for messages.
    pub(crate) fn show(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// The directory that holds `rel`'s last component (an `O_PATH` fd), and that component.
    ///
    /// # Errors
    /// `EINVAL` for an unsafe path or the rootfs itself; `EXDEV`/`ELOOP` when resolving would
    /// leave the rootfs or meet a symlink; any error of openat2(2).
    pub(crate) fn parent<'p>(&self, rel: &'p Path) -> std::io::Result<(OwnedFd, &'p OsStr)> {
        check(rel).map_err(|_| errno_io(Errno::EINVAL))?;
        let name = rel.file_name().ok_or_else(|| errno_io(Errno::EINVAL))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let fd = open_in_steps(&self.fd, parent, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map_err(errno_io)?;
        Ok((fd, name))
    }

    /// `rel` itself as a directory (an `O_PATH` fd), with no symlink anywhere on the way.
    ///
    /// # Errors
    /// As [`Beneath::parent`]; `ENOTDIR` when it is not a directory.
    pub(crate) fn dir(&self, rel: &Path) -> std::io::Result<OwnedFd> {
        check(rel).map_err(|_| errno_io(Errno::EINVAL))?;
        open_in_steps(&self.fd, rel, OFlag::O_PATH | OFlag::O_DIRECTORY).map_err(errno_io)
    }

    /// The status of `rel` (not following it), `None` when absent or unreachable beneath.
    pub(crate) fn lstat(&self, rel: &Path) -> Option<FileStat> {
        if rel.as_os_str().is_empty() {
            return nix::sys::stat::fstat(&self.fd).ok();
        }
        let (parent, name) = self.parent(rel).ok()?;
        fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_pass() {
        for good in ["", "a", "a/b", "etc/.wh.x", "..x/y", "a/...", "a b/c"] {
            assert!(check(Path::new(good)).is_ok(), "{good:?}");
        }
        for bad in [
            "/", "/etc", "..", "a/..", "../a", "a/../b", ".", "./a", "a/.", "a//b", "a/",
        ] {
            assert!(check(Path::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parents_are_found_beneath_and_symlinks_refused() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink(top.path(), root.join("out")).unwrap();
        let b = Beneath::open(&root).unwrap();
        let (_, name) = b.parent(Path::new("a/b/c")).unwrap();
        assert_eq!(name, "c");
        assert!(b.parent(Path::new("out/x")).is_err());
        assert!(b.parent(Path::new("../x")).is_err());
        assert!(b.dir(Path::new("out")).is_err());
        assert!(b.dir(Path::new("a/b")).is_ok());
        assert!(b.lstat(Path::new("out")).is_some(), "the link itself");
        assert!(b.lstat(Path::new("out/root")).is_none());
    }

    /// Paths past PATH_MAX resolve in steps; a symlink deep down is still refused.
    #[test]
    fn deep_paths_resolve_in_steps() {
        let top = tempfile::tempdir().unwrap();
        let name = "n".repeat(100);
        let mut fd = nix::fcntl::open(
            top.path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let mut rel = PathBuf::new();
        for _ in 0..60 {
            let dir = entry_path(&fd, OsStr::new(&name));
            std::fs::create_dir(&dir).unwrap();
            fd = nix::fcntl::open(&dir, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
            rel.push(&name);
        }
        std::os::unix::fs::symlink("/", entry_path(&fd, OsStr::new("up"))).unwrap();
        assert!(rel.as_os_str().len() > 4096);
        let b = Beneath::open(top.path()).unwrap();
        assert!(b.dir(&rel).is_ok());
        assert!(b.lstat(&rel.join("up")).is_some());
        assert!(b.dir(&rel.join("up")).is_err());
        assert!(b.parent(&rel.join("up/x")).is_err());
    }
}
