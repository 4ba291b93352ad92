//! The launcher's processes talk through typed ends of a socket pair: one method per message,
//! and an unexpected message or EOF is an error naming what was expected.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

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
}

impl Msg {
    fn from_u8(b: u8) -> Option<Msg> {
        [Msg::Go, Msg::MapIds, Msg::MapsDone]
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
    /// Reading or writing failed.
    #[error("launcher handshake: {0}")]
    Io(#[from] std::io::Error),
}

/// One end of a launcher channel.
#[derive(Debug)]
pub struct End(UnixStream);

/// A connected pair of ends (close-on-exec).
///
/// # Errors
/// Any error of socketpair(2).
pub fn channel() -> std::io::Result<(End, End)> {
    let (a, b) = UnixStream::pair()?;
    Ok((End(a), End(b)))
}

impl End {
    /// Sends `msg` with `payload`.
    ///
    /// # Errors
    /// Any write error.
    pub fn send(&mut self, msg: Msg, payload: &[u8]) -> Result<(), HandshakeError> {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let mut buf = vec![msg as u8];
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&payload[..usize::try_from(len).unwrap_or(0)]);
        self.0.write_all(&buf)?;
        Ok(())
    }

    /// Waits for `expected` and returns its payload.
    ///
    /// # Errors
    /// [`HandshakeError::Closed`] on EOF, [`HandshakeError::Unexpected`] for another message.
    pub fn expect(&mut self, expected: Msg) -> Result<Vec<u8>, HandshakeError> {
        let mut head = [0u8; 5];
        match self.0.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(HandshakeError::Closed { expected });
            }
            Err(e) => return Err(e.into()),
        }
        if Msg::from_u8(head[0]) != Some(expected) {
            return Err(HandshakeError::Unexpected {
                expected,
                got: head[0],
            });
        }
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        let mut payload = vec![0u8; usize::try_from(len).unwrap_or(0)];
        self.0.read_exact(&mut payload)?;
        Ok(payload)
    }

    /// Blocks until the parent says the overlay is ready; EOF means the parent died.
    ///
    /// # Errors
    /// As [`End::expect`].
    pub fn wait_go(&mut self) -> Result<(), HandshakeError> {
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
        drop(a);
        assert!(matches!(
            b.wait_go(),
            Err(HandshakeError::Closed { expected: Msg::Go })
        ));
    }
}
