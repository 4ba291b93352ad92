//! `start ID`: releases a created container's process, which waits in its exec fifo.

use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::Mode;

use super::container::EXEC_FIFO;
use super::{Container, Root, RuntimeError, Status, io};
use crate::host::process as proc;

/// `start`.
///
/// # Errors
/// [`RuntimeError::CannotStart`] unless the container is `created`; [`RuntimeError::Io`].
pub fn start(root: &Root, id: &str) -> Result<(), RuntimeError> {
    let (c, dir) = Container::load(root, id)?;
    match c.status(&dir) {
        Status::Created => {
            release(&c, &dir)?;
            poststart(&c, &dir)
        }
        Status::Running => Err(RuntimeError::CannotStart("is already running")),
        Status::Paused => Err(RuntimeError::CannotStart("is paused")),
        Status::Stopped => Err(RuntimeError::CannotStart("has stopped")),
    }
}

/// Runs the poststart hooks; when one fails the container is killed, as runc does.
pub(crate) fn poststart(c: &Container, dir: &Path) -> Result<(), RuntimeError> {
    let Some(hooks) = &c.hooks else {
        return Ok(());
    };
    let ran = super::hooks::run(
        hooks,
        super::hooks::Stage::Started,
        &super::State::of(c, dir),
    );
    if ran.is_err() {
        let _ = super::kill::signal_container(c, nix::sys::signal::Signal::SIGKILL, true);
    }
    ran
}

/// Opens the exec fifo for reading, which lets the process's open for writing return, takes
/// the byte it writes, and removes the fifo: the container is running from then on.
pub(crate) fn release(c: &Container, dir: &Path) -> Result<(), RuntimeError> {
    let path = dir.join(EXEC_FIFO);
    // Not blocking: a process that died before opening its end must not hang `start`.
    let fifo = nix::fcntl::open(
        &path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("cannot open the exec fifo", &path)(e.into()))?;
    loop {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u8)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {
                if !proc::alive(c.pid, c.pid_start) {
                    return Err(RuntimeError::CannotStart("has stopped"));
                }
            }
            Ok(_) => {
                let mut byte = [0u8; 1];
                match nix::unistd::read(&fifo, &mut byte) {
                    Ok(1) => break,
                    Ok(_) => return Err(RuntimeError::CannotStart("has stopped")),
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(io("cannot read the exec fifo", &path)(e.into())),
                }
            }
            Err(e) => return Err(io("cannot wait on the exec fifo", &path)(e.into())),
        }
    }
    std::fs::remove_file(&path).map_err(io("cannot remove the exec fifo", &path))
}
