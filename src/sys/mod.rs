//! The only home of `unsafe` in ovlrun: thin wrappers over the system calls that neither `nix`
//! nor the standard library offer in the form we need.
//!
//! Each wrapper takes borrowed fds or plain values, returns `nix::Result`, and says in one line
//! why its `unsafe` block is sound. Nothing here knows about overlays or FUSE.

pub(crate) mod xattr;

use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;

/// Shares the data blocks of `src` with `dst` (`FICLONE`), where the filesystem can.
///
/// # Errors
/// `EOPNOTSUPP`, `EXDEV` or `EINVAL` when the filesystem or the pair cannot share blocks;
/// the caller then copies the data.
pub(crate) fn ficlone(dst: impl AsFd, src: impl AsFd) -> nix::Result<()> {
    // SAFETY: FICLONE takes the source fd as its integer argument and reads no memory of ours;
    // both fds are borrowed and stay open for the duration of the call.
    let res = unsafe {
        libc::ioctl(
            dst.as_fd().as_raw_fd(),
            libc::FICLONE as _,
            src.as_fd().as_raw_fd(),
        )
    };
    Errno::result(res).map(drop)
}

pub(crate) mod beneath;
pub(crate) mod fdpass;
pub(crate) mod mount;
pub(crate) mod net;
pub(crate) mod process;
pub(crate) mod seccomp;
pub(crate) mod term;
