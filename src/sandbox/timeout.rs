//! Step 6's wait with `--timeout`: TERM to the session's pid 1 when the time is up, KILL a
//! grace period later, as `timeout(1)` does.

use std::sync::{Arc, Condvar, Mutex};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

use crate::config::Timeout;

/// `timeout(1)`'s exit status for a command it stopped.
pub(crate) const TIMED_OUT: i32 = 124;

/// Waits for `child` to exit and reaps it, stopping it at `timeout`; true when it was
/// stopped.
///
/// # Errors
/// The errno of `waitid` or `waitpid`.
pub(crate) fn wait(child: Pid, timeout: Option<Timeout>) -> nix::Result<(WaitStatus, bool)> {
    let Some(timeout) = timeout else {
        return Ok((waitpid(child, None)?, false));
    };
    // `exited` is set only while the child is still an unreaped zombie, and the timer signals
    // only under the lock after seeing it unset: its pid cannot have been reused.
    let state = Arc::new((Mutex::new(false), Condvar::new()));
    let timer = {
        let state = Arc::clone(&state);
        std::thread::Builder::new()
            .name("ovlrun-timeout".into())
            .spawn(move || stop_at(child, timeout, &state))
            .map_err(|_| nix::Error::EAGAIN)?
    };
    let exited = loop {
        match waitid(Id::Pid(child), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(nix::Error::EINTR) => continue,
            other => break other,
        }
    };
    {
        let (lock, cvar) = &*state;
        *lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        cvar.notify_all();
    }
    let stopped = timer.join().unwrap_or(false);
    exited?;
    Ok((waitpid(child, None)?, stopped))
}

/// The timer: TERM at `timeout.after`, KILL `timeout.kill_after` later, unless `state` says
/// the child exited first; true when it sent TERM.
fn stop_at(child: Pid, timeout: Timeout, state: &(Mutex<bool>, Condvar)) -> bool {
    let (lock, cvar) = state;
    let guard = lock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (guard, _) = cvar
        .wait_timeout_while(guard, timeout.after, |exited| !*exited)
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *guard {
        return false;
    }
    let _ = kill(child, Signal::SIGTERM);
    let (guard, _) = cvar
        .wait_timeout_while(guard, timeout.kill_after, |exited| !*exited)
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !*guard {
        let _ = kill(child, Signal::SIGKILL);
    }
    true
}
