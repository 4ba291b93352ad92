//! Terminal ioctls nix does not wrap: window size and the controlling terminal.

use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;

/// A terminal's size in characters and pixels (`struct winsize`).
pub(crate) type WindowSize = libc::winsize;

/// The window size of the terminal `fd` (`TIOCGWINSZ`).
///
/// # Errors
/// `ENOTTY` when `fd` is not a terminal.
pub(crate) fn window_size(fd: impl AsFd) -> nix::Result<WindowSize> {
    let mut size = WindowSize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` into `size`, which lives across the call.
    let res = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    Errno::result(res).map(|_| size)
}

/// Sets the window size of the terminal `fd` (`TIOCSWINSZ`); the kernel sends SIGWINCH to
/// the terminal's foreground process group when the size changes.
///
/// # Errors
/// `ENOTTY` when `fd` is not a terminal.
pub(crate) fn set_window_size(fd: impl AsFd, size: &WindowSize) -> nix::Result<()> {
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from `size`, which lives across the call.
    let res = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, size) };
    Errno::result(res).map(drop)
}

/// Makes the terminal `fd` the controlling terminal of the calling process, which must lead
/// a session that has none (`TIOCSCTTY` with 0: never steal it from another session).
///
/// # Errors
/// `EPERM` when the caller is no session leader or the terminal belongs to another session.
pub(crate) fn make_controlling(fd: impl AsFd) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument and touches no memory of ours.
    let res = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSCTTY, 0 as libc::c_int) };
    Errno::result(res).map(drop)
}
