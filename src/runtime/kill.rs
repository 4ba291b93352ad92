//! `kill [--all] ID [SIGNAL]`: a signal to the container's process (with `--all`, to every
//! process of its pid namespace).

use std::str::FromStr;

use nix::sys::signal::{Signal, kill as send};
use nix::unistd::Pid;

use super::{Container, Root, RuntimeError, Status};
use crate::host::process as proc;

/// runc's signal syntax: a number (`9`), or a name with or without `SIG` in any case
/// (`KILL`, `sigkill`, `SIGKILL`).
///
/// # Errors
/// [`RuntimeError::Signal`] naming the value.
pub fn parse_signal(raw: &str) -> Result<Signal, RuntimeError> {
    let bad = || RuntimeError::Signal(raw.to_owned());
    if let Ok(n) = raw.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = raw.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| bad())
}

/// `kill`: sends `signal` to container `id`'s process, or with `all` to every process in
/// its pid namespace.
///
/// # Errors
/// [`RuntimeError::NotRunning`] for a stopped container (not with `all`, as runc);
/// [`RuntimeError::Kill`].
pub fn kill(root: &Root, id: &str, signal: Signal, all: bool) -> Result<(), RuntimeError> {
    let (c, dir) = Container::load(root, id)?;
    if c.status(&dir) == Status::Stopped {
        return if all {
            Ok(())
        } else {
            Err(RuntimeError::NotRunning)
        };
    }
    signal_container(&c, signal, all)
}

/// Sends `signal` to `c`'s process, or to all of its pid namespace.
pub(crate) fn signal_container(
    c: &Container,
    signal: Signal,
    all: bool,
) -> Result<(), RuntimeError> {
    let mut pids = vec![c.pid];
    if all && super::cgroup::pids(c)?.is_some() {
        // Frozen while signalled (and thawed after), so nothing forks past the signal and a
        // paused container's processes get it.
        super::cgroup::kill_all(c, signal)?;
    }
    if all {
        // The namespace is looked up while its pid 1 is known to be the container's.
        pids = proc::in_pid_namespace_of(c.pid);
        if !proc::alive(c.pid, c.pid_start) {
            return Ok(());
        }
    }
    for pid in pids {
        match send(Pid::from_raw(pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(source) => return Err(RuntimeError::Kill { pid, source }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_as_runc_reads_them() {
        for s in ["9", "KILL", "kill", "SIGKILL", "sigkill"] {
            assert_eq!(parse_signal(s).unwrap(), Signal::SIGKILL, "{s}");
        }
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("15").unwrap(), Signal::SIGTERM);
        for bad in ["", "FLY", "SIG", "999", "-1"] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }
}
