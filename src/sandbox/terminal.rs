//! The session's own terminal, as nspawn and `podman -t` give one.
//!
//! Inside, pid 1 opens a new pty in the session's own devpts (after `pivot_root`), makes its
//! slave the session's stdin, stdout and stderr, and sends the master to the launcher over
//! the handshake socket. The command leads a session of its own with the slave as its
//! controlling terminal, so `tty` names it, job control works, and nothing inside holds the
//! caller's terminal: TIOCSTI can only type into the session's own pty.
//!
//! Outside, the launcher puts the caller's terminal in raw mode (restored by a guard on every
//! way out), relays stdin to the master and the master to stdout, and copies the window size
//! on SIGWINCH. Keys such as Ctrl-C reach the session through the pty's line discipline.

use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::Mode;
use nix::sys::termios::{OutputFlags, SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use nix::unistd::{Gid, Uid};

use super::handshake::HandshakeError;
use crate::config::Terminal;
use crate::sys::term;

/// Why the session's terminal could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// A step of opening the pty failed.
    #[error("cannot {step} for the session's terminal")]
    Pty {
        /// The step (`open /dev/ptmx`, `unlock the pty`, ...).
        step: String,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The launcher could not start relaying the pty.
    #[error("cannot relay the session's terminal")]
    Relay(#[source] std::io::Error),
    /// The master could not be handed to the launcher.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

fn pty_step(step: impl Into<String>) -> impl FnOnce(nix::Error) -> TerminalError {
    let step = step.into();
    move |source| TerminalError::Pty { step, source }
}

/// Whether the session gets a pty of its own: always or never as asked, else when the
/// caller's stdin and stdout both are terminals (a pipe on either side wants plain bytes).
pub(crate) fn wanted(choice: Terminal) -> bool {
    match choice {
        Terminal::Always => true,
        Terminal::Never => false,
        Terminal::Auto => std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
    }
}

/// The caller's window size: from the first of stdin, stdout, stderr that is a terminal.
fn caller_window_size() -> Option<term::WindowSize> {
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let fds: [BorrowedFd<'_>; 3] = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
    fds.into_iter().find_map(|fd| term::window_size(fd).ok())
}

/// In the session's pid 1, after `pivot_root`: opens a pty in the session's devpts, gives its
/// slave to the command's ids with the caller's window size, hands the master to `send`
/// (the launcher's handshake, or a console socket) and makes the slave this process's fds
/// 0, 1 and 2 (the command inherits them).
///
/// # Errors
/// [`TerminalError`] naming the step; fds 0-2 are still the caller's then.
pub(crate) fn open_in_session(
    send: impl FnOnce(BorrowedFd<'_>) -> Result<(), TerminalError>,
    uid: u32,
    gid: u32,
) -> Result<(), TerminalError> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(pty_step("open /dev/ptmx"))?;
    nix::pty::grantpt(&master).map_err(pty_step("grant the pty"))?;
    nix::pty::unlockpt(&master).map_err(pty_step("unlock the pty"))?;
    let name = nix::pty::ptsname_r(&master).map_err(pty_step("name the pty"))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(pty_step(format!("open {name}")))?;
    // Owned by the command, as login(1) leaves a terminal, so it may reopen it by name.
    nix::unistd::fchown(&slave, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(pty_step(format!("give {name} to uid {uid} gid {gid}")))?;
    if let Some(size) = caller_window_size() {
        term::set_window_size(&slave, &size).map_err(pty_step("set the window size"))?;
    }
    send(master.as_fd())?;
    drop(master);
    nix::unistd::dup2_stdin(&slave).map_err(pty_step("make the pty stdin"))?;
    nix::unistd::dup2_stdout(&slave).map_err(pty_step("make the pty stdout"))?;
    nix::unistd::dup2_stderr(&slave).map_err(pty_step("make the pty stderr"))?;
    Ok(())
}

/// Sends a pty's `master` over a console socket (runc's `--console-socket`): one message
/// naming it, with the fd attached (`SCM_RIGHTS`), as conmon and containerd's shim expect.
///
/// # Errors
/// [`TerminalError::Pty`] when sendmsg(2) fails.
pub(crate) fn send_to_console(
    socket: BorrowedFd<'_>,
    master: BorrowedFd<'_>,
) -> Result<(), TerminalError> {
    crate::sys::fdpass::send_with_fd(socket, b"/dev/ptmx", master)
        .map_err(pty_step("send the pty master to the console socket"))
}

/// In the forked command: leads a new session whose controlling terminal is fd 0, the pty
/// [`open_in_session`] made.
///
/// # Errors
/// Any error of setsid(2) or `TIOCSCTTY`.
pub(crate) fn take_as_controlling() -> nix::Result<()> {
    nix::unistd::setsid()?;
    term::make_controlling(std::io::stdin())
}

/// The caller's terminal in raw mode; dropping it restores the saved mode, on every way out
/// of the launcher (return, error, unwinding panic).
#[derive(Debug)]
pub(crate) struct RawMode {
    /// The caller's stdin (true) or stdout.
    stdin: bool,
    saved: Termios,
}

impl RawMode {
    /// Puts stdin, when it is a terminal, in raw mode: keys go to the session unedited
    /// (Ctrl-C as a byte, for the session's line discipline) and its output is shown as it
    /// is. When only stdout is a terminal, only its output processing is turned off (the
    /// pty already made `\n` into `\r\n`), so Ctrl-C there still interrupts ovlrun. `None`
    /// when neither is a terminal.
    ///
    /// # Errors
    /// Any error of tcsetattr(3).
    pub(crate) fn enter() -> nix::Result<Option<RawMode>> {
        for stdin in [true, false] {
            let saved = match Self::get(stdin) {
                Ok(t) => t,
                Err(Errno::ENOTTY | Errno::EBADF | Errno::EINVAL) => continue,
                Err(e) => return Err(e),
            };
            let mut raw = saved.clone();
            if stdin {
                cfmakeraw(&mut raw);
            } else {
                raw.output_flags.remove(OutputFlags::OPOST);
            }
            Self::set(stdin, &raw)?;
            return Ok(Some(RawMode { stdin, saved }));
        }
        Ok(None)
    }

    fn get(stdin: bool) -> nix::Result<Termios> {
        if stdin {
            tcgetattr(std::io::stdin())
        } else {
            tcgetattr(std::io::stdout())
        }
    }

    fn set(stdin: bool, mode: &Termios) -> nix::Result<()> {
        // Output is processed when written, so nothing queued is changed by setting it now.
        if stdin {
            tcsetattr(std::io::stdin(), SetArg::TCSANOW, mode)
        } else {
            tcsetattr(std::io::stdout(), SetArg::TCSANOW, mode)
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = Self::set(self.stdin, &self.saved);
    }
}

/// Copies the caller's window size onto the session's pty (on SIGWINCH); the kernel then
/// signals the session's foreground group.
pub(crate) fn copy_window_size(master: impl AsFd) {
    if let Some(size) = caller_window_size() {
        let _ = term::set_window_size(master, &size);
    }
}

/// The relay between the caller's stdio and the session's pty master, on a thread of its
/// own until [`Relay::finish`].
#[derive(Debug)]
pub(crate) struct Relay {
    stop: OwnedFd,
    thread: std::thread::JoinHandle<()>,
}

impl Relay {
    /// Starts relaying stdin to `master` and `master` to stdout.
    ///
    /// # Errors
    /// When the stop pipe, the master's flags or the thread cannot be had.
    pub(crate) fn start(master: OwnedFd) -> std::io::Result<Relay> {
        let (stop_rx, stop) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let flags = fcntl(&master, FcntlArg::F_GETFL)?;
        // Our own open file description (pid 1 opened it), so O_NONBLOCK affects no one else.
        fcntl(
            &master,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )?;
        let thread = std::thread::Builder::new()
            .name("ovlrun-pty".into())
            .spawn(move || relay(&master, &stop_rx))?;
        Ok(Relay { stop, thread })
    }

    /// Once the session has ended: stops reading stdin, writes out what the session left in
    /// the pty, and waits for the thread.
    pub(crate) fn finish(self) {
        let _ = nix::unistd::write(&self.stop, b"x");
        let _ = self.thread.join();
    }
}

/// What the session reads on end of input when stdin is no terminal: the line discipline's
/// default VEOF (Ctrl-D), so a reader in canonical mode sees end of file.
const EOF_CHAR: u8 = 0x04;

/// The relay loop: stdin to `master` while the session reads, `master` to stdout, until the
/// pty is gone or `stop` becomes readable; then the master is drained.
fn relay(master: &OwnedFd, stop: &OwnedFd) {
    let stdin = std::io::stdin();
    let mut out = Output::default();
    let mut to_session: Vec<u8> = Vec::new();
    let mut stdin_open = true;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let reading_stdin = stdin_open && to_session.is_empty();
        let mut master_events = PollFlags::POLLIN;
        if !to_session.is_empty() {
            master_events |= PollFlags::POLLOUT;
        }
        let mut fds = vec![
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(master.as_fd(), master_events),
        ];
        if reading_stdin {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(PollFd::revents)
                .unwrap_or(PollFlags::empty())
        };
        let (stop_ready, master_ready, stdin_ready) = (ready(0), ready(1), ready(2));
        if !stop_ready.is_empty() {
            break;
        }
        if master_ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match nix::unistd::read(master, &mut buf) {
                Ok(n) if n > 0 => out.write(&buf[..n]),
                Err(Errno::EAGAIN | Errno::EINTR) if !master_ready.contains(PollFlags::POLLHUP) => {
                }
                // EIO: every slave is closed, the session is over.
                _ => return,
            }
        }
        if master_ready.contains(PollFlags::POLLOUT) {
            match nix::unistd::write(master, &to_session) {
                Ok(n) => {
                    to_session.drain(..n);
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(_) => {
                    to_session.clear();
                    stdin_open = false;
                }
            }
        }
        if reading_stdin && !stdin_ready.is_empty() {
            match nix::unistd::read(&stdin, &mut buf) {
                Ok(0) => {
                    to_session.push(EOF_CHAR);
                    stdin_open = false;
                }
                Ok(n) => to_session.extend_from_slice(&buf[..n]),
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(_) => stdin_open = false,
            }
        }
    }
    // The session is gone (or stopped being waited for): take what it wrote. Reading the
    // master flushes the pty's pending input first, and gives EIO once no slave is open.
    while let Ok(n) = nix::unistd::read(master, &mut buf) {
        if n == 0 {
            break;
        }
        out.write(&buf[..n]);
    }
}

/// The caller's stdout; after a failed write (the reader went away) output is dropped, so
/// the session never blocks on a full pty.
#[derive(Debug, Default)]
struct Output {
    broken: bool,
}

impl Output {
    fn write(&mut self, mut bytes: &[u8]) {
        let stdout = std::io::stdout();
        while !self.broken && !bytes.is_empty() {
            match nix::unistd::write(&stdout, bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::NONE);
                }
                Err(_) => self.broken = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_follows_the_choice() {
        assert!(wanted(Terminal::Always));
        assert!(!wanted(Terminal::Never));
        let both = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        assert_eq!(wanted(Terminal::Auto), both);
    }
}
