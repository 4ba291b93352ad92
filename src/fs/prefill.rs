//! Prefilling the kernel's page cache at open: the data of a small lower file goes to the
//! kernel with the open (`FUSE_NOTIFY_STORE`), so reading it takes no READ request.
//!
//! Every request is a round trip between two processes, and on a machine with few CPUs the
//! wake-ups dominate a read of many small files. A lower file cannot change while it is
//! lower, so the data stored at its first open is what every READ would return, for as
//! long as the kernel keeps the pages (`FOPEN_KEEP_CACHE`).
//!
//! Only the first reading open of such a file since the kernel looked it up fills: later
//! opens find the pages there, or read them as usual (an open for writing copies the file
//! up first, and upper files are never filled). Stored data must never land after a write or a
//! truncate, which would put old data over new. So a reading open holds its node's lock
//! until it is answered, and an open for writing (which copies up) or a truncate waits for
//! that lock before it is answered: a fill that began before the copy-up has ended by then,
//! and one that begins after it finds the upper copy, which is never filled. No other open
//! of the node is answered while its fill runs, so no reader holds the pages it writes.

use std::os::fd::BorrowedFd;
use std::sync::{Mutex, MutexGuard, OnceLock};

use fuser::{INodeNo, Notifier};
use nix::errno::Errno;

/// Largest file whose data is stored at open (the kernel's first readahead window).
pub(crate) const PREFILL_MAX: u64 = 128 * 1024;

/// Stripes of the per-node lock: opens of unrelated nodes rarely share one.
const STRIPES: u64 = 256;

/// The filler: a channel to the kernel, once the session has one, and the node locks.
pub(crate) struct Prefill {
    notifier: OnceLock<Notifier>,
    stripes: Vec<Mutex<()>>,
}

impl std::fmt::Debug for Prefill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefill")
            .field("attached", &self.notifier.get().is_some())
            .finish()
    }
}

impl Default for Prefill {
    fn default() -> Self {
        Prefill {
            notifier: OnceLock::new(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl Prefill {
    /// Gives the filler the session's channel to the kernel; until then nothing is filled.
    pub(crate) fn attach(&self, notifier: Notifier) {
        // A second session would be a second filesystem: the first channel stays.
        let _ = self.notifier.set(notifier);
    }

    /// The lock of `node`'s data, held by a reading open until it is answered.
    pub(crate) fn lock(&self, node: u64) -> MutexGuard<'_, ()> {
        let stripe = usize::try_from(node % STRIPES).unwrap_or(0);
        self.stripes[stripe]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until no fill of `node` is running: called after a change to its data, before
    /// the change is answered.
    pub(crate) fn wait_for_fills(&self, node: u64) {
        drop(self.lock(node));
    }

    /// Whether an open whose fd holds `size` bytes of a lower file is worth filling.
    pub(crate) fn wanted(&self, size: i64) -> bool {
        self.notifier.get().is_some()
            && u64::try_from(size).is_ok_and(|s| s > 0 && s <= PREFILL_MAX)
    }

    /// Stores the first `size` bytes of `fd` as `node`'s data in the kernel's cache. The
    /// caller holds [`Prefill::lock`] of `node` and has not answered the open yet.
    ///
    /// # Errors
    /// The read's errno, or `EIO` when the kernel refuses the data; either only means the
    /// kernel will ask with READ requests.
    pub(crate) fn fill(&self, node: u64, fd: BorrowedFd<'_>, size: i64) -> Result<(), Errno> {
        let notifier = self.notifier.get().ok_or(Errno::ENOTCONN)?;
        let buf = super::io::read_at(fd, usize::try_from(size).map_err(|_| Errno::EINVAL)?, 0)?;
        debug_delay();
        notifier
            .store(INodeNo(node), 0, &buf)
            .map_err(|e| e.raw_os_error().map_or(Errno::EIO, Errno::from_raw))
    }
}

/// Debug builds only: `OVLRUN_DEBUG_FILL_DELAY_MS` holds every fill between its read and its
/// store, so tests can race a fill with a write deterministically.
#[cfg(debug_assertions)]
fn debug_delay() {
    static DELAY: OnceLock<Option<u64>> = OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        std::env::var("OVLRUN_DEBUG_FILL_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(ms) = delay {
        std::thread::sleep(std::time::Duration::from_millis(*ms));
    }
}

#[cfg(not(debug_assertions))]
fn debug_delay() {}
