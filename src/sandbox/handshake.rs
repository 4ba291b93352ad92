//! The launcher's processes talk through typed ends of a socket pair: one method per message,
//! and an unexpected message or EOF is an error naming what was expected.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use crate::sys::fdpass;

/// A message between launcher processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Msg {
    /// Parent to child: the overlay is mounted and served; set up and run.
    Go = 1,
    /// Parent to id-map helper: the user namespace exists; write its maps.
    MapIds = 2,
    /// Id-map helper to parent: maps written (payload empty) or failed (payload: the error).
    MapsDone = 3,
    /// Session pid 1 to parent: the master of the session's new pty, attached (no payload).
    Terminal = 4,
    /// Session pid 1 to parent: set up and held before the command (payload: notes of
    /// steps that fell back, one a line).
    Ready = 5,
    /// Parent to session pid 1: run the command.
    Start = 6,
    /// Session pid 1 to parent: setup failed (payload: why). Answers any expected message.
    Failed = 7,
}

impl Msg {
    fn from_u8(b: u8) -> Option<Msg> {
        [
            Msg::Go,
            Msg::MapIds,
            Msg::MapsDone,
            Msg::Terminal,
            Msg::Ready,
            Msg::Start,
            Msg::Failed,
        ]
        .into_iter()
        .find(|m| *m as u8 == b)
    }
}

/// A handshake that went wrong.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The other side closed its end (it died) before sending the expected message.
    #[error("launcher handshake: expected {expected:?}, but the other process is gone")]
    Closed {
        /// What was awaited.
        expected: Msg,
    },
    /// The other side sent something else.
    #[error("launcher handshake: expected {expected:?}, got {got}")]
    Unexpected {
        /// What was awaited.
        expected: Msg,
        /// The tag received.
        got: u8,
    },
    /// The expected message came without the file descriptor it carries.
    #[error("launcher handshake: {expected:?} came without its file descriptor")]
    NoFd {
        /// What was awaited.
        expected: Msg,
    },
    /// The other side failed, and says why, instead of sending the expected message.
    #[error("{why}")]
    Failed {
        /// What was awaited.
        expected: Msg,
        /// The other side's message.
        why: String,
    },
    /// Reading or writing failed.
    #[error("launcher handshake: {0}")]
    Io(#[from] std::io::Error),
}

/// One end of a launcher channel.
#[derive(Debug)]
pub(crate) struct End(UnixStream);

/// A connected pair of ends (close-on-exec).
///
/// # Errors
/// Any error of socketpair(2).
pub(crate) fn channel() -> std::io::Result<(End, End)> {
    let (a, b) = UnixStream::pair()?;
    Ok((End(a), End(b)))
}

impl End {
    /// Sends `msg` with `payload`.
    ///
    /// # Errors
    /// Any write error.
    pub(crate) fn send(&mut self, msg: Msg, payload: &[u8]) -> Result<(), HandshakeError> {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let mut buf = vec![msg as u8];
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&payload[..usize::try_from(len).unwrap_or(0)]);
        self.0.write_all(&buf)?;
        Ok(())
    }

    /// Sends `msg`, without payload, carrying a copy of `fd` for the other process.
    ///
    /// # Errors
    /// Any error of sendmsg(2).
    pub(crate) fn send_fd(&mut self, msg: Msg, fd: BorrowedFd<'_>) -> Result<(), HandshakeError> {
        let mut head = [0u8; 5];
        head[0] = msg as u8;
        fdpass::send_with_fd(self.0.as_fd(), &head, fd).map_err(std::io::Error::from)?;
        Ok(())
    }

    /// Waits for `expected`, sent by [`End::send_fd`], and returns the fd it carries
    /// (close-on-exec).
    ///
    /// # Errors
    /// As [`End::expect`]; [`HandshakeError::NoFd`] when the message carries no fd.
    pub(crate) fn expect_fd(&mut self, expected: Msg) -> Result<OwnedFd, HandshakeError> {
        let mut head = [0u8; 5];
        let (n, fd) =
            fdpass::recv_with_fd(self.0.as_fd(), &mut head).map_err(std::io::Error::from)?;
        if n == 0 {
            return Err(HandshakeError::Closed { expected });
        }
        // The fd rides on the first byte; the rest of a short read follows as plain bytes.
        self.read_rest(&mut head[n..], expected)?;
        self.check_and_take_payload(head, expected)?;
        fd.ok_or(HandshakeError::NoFd { expected })
    }

    /// Waits for `expected` and returns its payload.
    ///
    /// # Errors
    /// [`HandshakeError::Closed`] on EOF, [`HandshakeError::Unexpected`] for another message.
    pub(crate) fn expect(&mut self, expected: Msg) -> Result<Vec<u8>, HandshakeError> {
        let mut head = [0u8; 5];
        self.read_rest(&mut head, expected)?;
        self.check_and_take_payload(head, expected)
    }

    fn read_rest(&mut self, buf: &mut [u8], expected: Msg) -> Result<(), HandshakeError> {
        match self.0.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(HandshakeError::Closed { expected })
            }
            Err(e) => Err(e.into()),
        }
    }

    fn check_and_take_payload(
        &mut self,
        head: [u8; 5],
        expected: Msg,
    ) -> Result<Vec<u8>, HandshakeError> {
        let got = Msg::from_u8(head[0]);
        if got == Some(Msg::Failed) && expected != Msg::Failed {
            let why = self.payload(&head)?;
            return Err(HandshakeError::Failed {
                expected,
                why: String::from_utf8_lossy(&why).into_owned(),
            });
        }
        if got != Some(expected) {
            return Err(HandshakeError::Unexpected {
                expected,
                got: head[0],
            });
        }
        self.payload(&head)
    }

    /// Reads the payload whose length `head` gives.
    fn payload(&mut self, head: &[u8; 5]) -> Result<Vec<u8>, HandshakeError> {
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        let mut payload = vec![0u8; usize::try_from(len).unwrap_or(0)];
        self.0.read_exact(&mut payload)?;
        Ok(payload)
    }

    /// Blocks until the parent says the overlay is ready; EOF means the parent died.
    ///
    /// # Errors
    /// As [`End::expect`].
    pub(crate) fn wait_go(&mut self) -> Result<(), HandshakeError> {
        self.expect(Msg::Go).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_mismatches_are_named() {
        let (mut a, mut b) = channel().unwrap();
        a.send(Msg::MapsDone, b"newuidmap: failed").unwrap();
        assert_eq!(b.expect(Msg::MapsDone).unwrap(), b"newuidmap: failed");
        a.send(Msg::MapIds, b"").unwrap();
        let e = b.wait_go().unwrap_err().to_string();
        assert!(e.contains("expected Go, got 2"), "{e}");
        a.send(Msg::Failed, b"cannot mount proc").unwrap();
        assert!(matches!(
            b.expect(Msg::Ready),
            Err(HandshakeError::Failed { expected: Msg::Ready, why }) if why == "cannot mount proc"
        ));
        drop(a);
        assert!(matches!(
            b.wait_go(),
            Err(HandshakeError::Closed { expected: Msg::Go })
        ));
    }

    #[test]
    fn an_fd_crosses_with_its_message() {
        let (mut a, mut b) = channel().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        a.send_fd(Msg::Terminal, w.as_fd()).unwrap();
        drop(w);
        let got = b.expect_fd(Msg::Terminal).unwrap();
        nix::unistd::write(&got, b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(nix::unistd::read(&r, &mut buf).unwrap(), 1);
        assert_eq!(&buf, b"x");
        let flags = nix::fcntl::fcntl(&got, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "a received fd must be close-on-exec"
        );
        // A plain message where an fd is due, and EOF, are named.
        a.send(Msg::Terminal, b"").unwrap();
        assert!(matches!(
            b.expect_fd(Msg::Terminal),
            Err(HandshakeError::NoFd {
                expected: Msg::Terminal
            })
        ));
        a.send_fd(Msg::Go, got.as_fd()).unwrap();
        assert!(matches!(
            b.expect_fd(Msg::Terminal),
            Err(HandshakeError::Unexpected { got: 1, .. })
        ));
        drop(a);
        assert!(matches!(
            b.expect_fd(Msg::Terminal),
            Err(HandshakeError::Closed { .. })
        ));
    }
}
