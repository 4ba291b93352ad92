//! Open file and directory handles, in a sharded table so parallel requests on different
//! handles never wait on one another.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use nix::fcntl::OFlag;

use crate::layers::DirEntry;

const SHARDS: usize = 16;

/// What an open handle holds.
#[derive(Debug)]
pub(crate) enum Handle {
    /// An open file of one layer.
    File(OpenFile),
    /// A directory listing snapshot, taken at the first read and again at each rewind
    /// (offset 0 after a read), so offsets stay stable while entries are removed during the
    /// listing.
    Dir(Mutex<Option<Vec<DirEntry>>>),
}

/// Marks an [`OpenFile`] whose fd is already the upper copy.
const UPPER: u64 = u64::MAX;

/// An open file. A read-only open of a lower file holds the lower fd; the kernel keeps one
/// page cache per inode, so once the object is copied up (through another open) that handle
/// must read the upper copy too, or it would fill the shared cache with stale data.
#[derive(Debug)]
pub(crate) struct OpenFile {
    fd: RwLock<OwnedFd>,
    /// The overlay's copy-up count when the lower fd was last known current; [`UPPER`] once
    /// the fd is the upper copy.
    seen: AtomicU64,
    /// The flags it was opened with, to reopen the upper copy alike.
    pub flags: OFlag,
    /// The node it belongs to.
    pub node: u64,
}

impl OpenFile {
    /// A handle on `fd`; `lower_seen` is the copy-up count at open for a lower fd, `None`
    /// for an upper one.
    pub(crate) fn new(node: u64, fd: OwnedFd, flags: OFlag, lower_seen: Option<u64>) -> OpenFile {
        OpenFile {
            fd: RwLock::new(fd),
            seen: AtomicU64::new(lower_seen.unwrap_or(UPPER)),
            flags,
            node,
        }
    }

    /// True when the fd may be a stale lower copy: it is lower, and copy-ups happened since
    /// it was last checked.
    pub(crate) fn may_be_stale(&self, copy_ups: u64) -> bool {
        let seen = self.seen.load(Ordering::Acquire);
        seen != UPPER && seen != copy_ups
    }

    /// Records the outcome of a check: `Some(fd)` is the upper copy to use from now on,
    /// `None` means the lower copy is still current at `copy_ups`.
    pub(crate) fn checked(&self, upper: Option<OwnedFd>, copy_ups: u64) {
        match upper {
            Some(fd) => {
                *self.fd.write().unwrap_or_else(|p| p.into_inner()) = fd;
                self.seen.store(UPPER, Ordering::Release);
            }
            None => self.seen.store(copy_ups, Ordering::Release),
        }
    }

    /// True once the fd is the upper copy (changing it never touches a lower layer).
    pub(crate) fn is_upper(&self) -> bool {
        self.seen.load(Ordering::Acquire) == UPPER
    }

    /// The fd to use now.
    pub(crate) fn fd(&self) -> RwLockReadGuard<'_, OwnedFd> {
        self.fd.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// The table of open handles.
#[derive(Debug)]
pub(crate) struct HandleTable {
    next: AtomicU64,
    shards: Vec<RwLock<std::collections::HashMap<u64, Arc<Handle>>>>,
}

impl Default for HandleTable {
    fn default() -> Self {
        HandleTable {
            next: AtomicU64::new(1),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }
}

impl HandleTable {
    fn shard(&self, fh: u64) -> &RwLock<std::collections::HashMap<u64, Arc<Handle>>> {
        &self.shards[usize::try_from(fh % SHARDS as u64).unwrap_or(0)]
    }

    /// Stores `handle` and returns its number.
    pub(crate) fn insert(&self, handle: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.shard(fh)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(handle));
        fh
    }

    /// The handle numbered `fh`.
    pub(crate) fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.shard(fh)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
    }

    /// Some open file of node `node` (a slow scan: only for files whose names are all gone).
    pub(crate) fn any_of_node(&self, node: u64) -> Option<Arc<Handle>> {
        self.shards.iter().find_map(|shard| {
            shard
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .find(|h| matches!(&***h, Handle::File(f) if f.node == node))
                .cloned()
        })
    }

    /// Drops handle `fh`.
    pub(crate) fn remove(&self, fh: u64) {
        self.shard(fh)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }
}
