//! Process creation and signal dispositions: the launcher's only `unsafe` calls.

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::unistd::{ForkResult, Pid};

/// True when the calling process has exactly one thread.
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

/// Forks the calling process, which must be single-threaded (the launcher forks before it
/// starts any thread); the child should exec or [`exit_now`].
///
/// # Errors
/// `EDEADLK` when other threads exist (a forked child could inherit a lock held by one of
/// them, forever); any error of fork(2).
pub(crate) fn fork() -> nix::Result<ForkResult> {
    if !single_threaded() {
        return Err(Errno::EDEADLK);
    }
    // SAFETY: checked just above that no other thread exists whose locks the child could
    // inherit in a held state.
    unsafe { nix::unistd::fork() }
}

/// Starts `child` in a new process created with namespace `flags` (e.g. a new pid
/// namespace, where it is pid 1) and returns its pid. `child`'s return value is its exit
/// status. Like [`fork`], only from a single-threaded process.
///
/// # Errors
/// `EDEADLK` when other threads exist; any error of clone(2).
pub(crate) fn clone_with_namespaces(
    child: Box<dyn FnMut() -> isize + '_>,
    flags: CloneFlags,
) -> nix::Result<Pid> {
    if !single_threaded() || flags.contains(CloneFlags::CLONE_VM) {
        return Err(Errno::EDEADLK);
    }
    // The child's stack; 1 MiB is plenty for the setup code that runs before exec.
    let mut stack = vec![0u8; 1 << 20];
    // SAFETY: without CLONE_VM (refused above) the child gets a copy of this memory, so the
    // stack buffer and the closure stay valid in it even after this function returns in the
    // parent; no other thread exists (checked above) whose locks the child could inherit.
    unsafe {
        nix::sched::clone(
            child,
            &mut stack,
            flags,
            Some(Signal::SIGCHLD as libc::c_int),
        )
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Gives `signals` a handler that does nothing. A pid namespace's init drops signals whose
/// disposition is the default, even blocked ones; with a handler installed they stay
/// pending, so init can take them with `sigwait` and forward them.
///
/// # Errors
/// Any error of sigaction(2).
pub(crate) fn catch_for_sigwait(signals: &SigSet) -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(ignore_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in signals.iter() {
        // SAFETY: the handler is an `extern "C"` function that touches nothing, so it is
        // async-signal-safe; replacing a disposition has no other precondition.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

/// Restores the default disposition of every catchable signal, as a process about to
/// exec a user's command should have.
pub(crate) fn reset_signal_dispositions() {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL cannot violate any invariant of this process.
        let _ = unsafe { sigaction(sig, &default) };
    }
}

/// Ends the calling process at once, without running Rust destructors or atexit handlers
/// (a forked child must not flush or free what belongs to its parent).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) has no preconditions and never returns.
    unsafe { libc::_exit(code) }
}

/// Maps an `Errno` to the conventional shell status for a failed exec.
pub(crate) fn exec_failure_status(e: Errno) -> i32 {
    match e {
        Errno::ENOENT | Errno::ENOTDIR => 127,
        _ => 126,
    }
}

/// Closes every fd from `first` up, or with `cloexec` marks them close-on-exec
/// (`close_range(2)`): what the session's processes do so that no fd of the caller or of
/// the launcher crosses into the command.
///
/// # Errors
/// Any error of close_range(2).
pub(crate) fn close_fds_from(first: u32, cloexec: bool) -> nix::Result<()> {
    let flags = if cloexec {
        libc::CLOSE_RANGE_CLOEXEC
    } else {
        0
    };
    // SAFETY: close_range only closes (or flags) descriptors of this process; the callers
    // own no fd in that range that Rust code still uses (pid 1 and the command keep theirs
    // below `first`).
    let res = unsafe { libc::close_range(first, libc::c_uint::MAX, flags as libc::c_int) };
    Errno::result(res).map(drop)
}
