//! Passing an open file descriptor to another process over a unix socket (`SCM_RIGHTS`).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Sends `bytes` (at least one) with a copy of `fd` attached to their first byte.
///
/// # Errors
/// Any error of sendmsg(2); `EMSGSIZE` when the bytes did not all go in one message.
pub(crate) fn send_with_fd(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fd: BorrowedFd<'_>,
) -> nix::Result<()> {
    let fds = [fd.as_raw_fd()];
    let sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(bytes)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if sent == bytes.len() {
        Ok(())
    } else {
        Err(Errno::EMSGSIZE)
    }
}

/// Receives into `buf` and takes the descriptors sent with those bytes; returns how many
/// bytes came (0 at EOF) and the first descriptor, if any (further ones are closed). The
/// descriptors are close-on-exec.
///
/// # Errors
/// Any error of recvmsg(2); `ENOBUFS` when the kernel had more descriptors than fit (it
/// closed those).
pub(crate) fn recv_with_fd(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> nix::Result<(usize, Option<OwnedFd>)> {
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: with SCM_RIGHTS the kernel has just installed each of these
            // descriptors in our table, for this call alone: nothing else in this process
            // knows their numbers, so each gets exactly one owner here.
            received.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(Errno::ENOBUFS);
    }
    let n = msg.bytes;
    Ok((n, received.into_iter().next()))
}
