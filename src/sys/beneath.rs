//! Opening a path strictly beneath a directory: `openat2(2)` with `RESOLVE_BENEATH` and
//! `RESOLVE_NO_SYMLINKS`.
//!
//! Used where a path comes from a file ovlrun reads back (a commit's plan): the kernel
//! refuses (`EXDEV`) any resolution that would leave `dir` (`..` above it, an absolute path,
//! a mount crossing that leads out) and (`ELOOP`) any symlink on the way, the last component
//! included. So the fd returned names an entry inside `dir`'s tree, reached without any link
//! the tree's contents could have planted, whatever else runs at the same time.
//!
//! nix wraps the system call (`nix::fcntl::openat2`) without `unsafe` on our side.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Opens `path` (relative) beneath `dir` with `flags` (`O_CLOEXEC` and `O_NOFOLLOW` added),
/// following no symlink at all (a trailing one opened `O_PATH` without `O_DIRECTORY` gives
/// an fd of the link itself).
///
/// # Errors
/// `EXDEV` when the path would leave `dir`, `ELOOP` at a symlink, or any error of
/// openat2(2) (`ENOSYS` before Linux 5.6).
pub(crate) fn open_beneath(dir: impl AsFd, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(Mode::empty())
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    // An empty path names `dir` itself, as "." does.
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    nix::fcntl::openat2(dir, path, how)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_outside_and_no_symlink_is_reached() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("root");
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(top.path().join("outside"), b"x").unwrap();
        std::os::unix::fs::symlink("../outside", root.join("out")).unwrap();
        std::os::unix::fs::symlink("e", root.join("d/in")).unwrap();
        let fd =
            nix::fcntl::open(&root, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        let open = |p: &str| open_beneath(&fd, Path::new(p), OFlag::O_PATH);
        assert!(open("d/e").is_ok());
        assert!(open("").is_ok());
        assert_eq!(open("../outside").unwrap_err(), nix::errno::Errno::EXDEV);
        assert_eq!(
            open("d/../../outside").unwrap_err(),
            nix::errno::Errno::EXDEV
        );
        let abs = top.path().join("outside");
        assert_eq!(
            open(abs.to_str().unwrap()).unwrap_err(),
            nix::errno::Errno::EXDEV
        );
        assert_eq!(open("out/x").unwrap_err(), nix::errno::Errno::ELOOP);
        assert_eq!(open("d/in/.").unwrap_err(), nix::errno::Errno::ELOOP);
        // A trailing link is never followed: with O_PATH the fd is the link itself, as a
        // directory it is refused.
        let link = open("out").unwrap();
        assert!(nix::sys::stat::fstat(&link).unwrap().st_mode & libc::S_IFMT == libc::S_IFLNK);
        assert!(open_beneath(&fd, Path::new("d/in"), OFlag::O_PATH | OFlag::O_DIRECTORY).is_err());
    }
}
