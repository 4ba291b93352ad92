//! Open file and directory handles, in a sharded table so parallel requests on different
//! handles never wait on one another.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::layers::DirEntry;

const SHARDS: usize = 16;

/// What an open handle holds.
#[derive(Debug)]
pub enum Handle {
    /// An open file of one layer.
    File(OwnedFd),
    /// A directory listing snapshot, taken at open and again at each rewind (offset 0), so
    /// offsets stay stable while entries are removed during the listing.
    Dir(Mutex<Vec<DirEntry>>),
}

/// The table of open handles.
#[derive(Debug)]
pub struct HandleTable {
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
    pub fn insert(&self, handle: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.shard(fh)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(handle));
        fh
    }

    /// The handle numbered `fh`.
    pub fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.shard(fh)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
    }

    /// Drops handle `fh`.
    pub fn remove(&self, fh: u64) {
        self.shard(fh)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }
}
