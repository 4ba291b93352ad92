//! A bounded cache of directory fds, so a lookup does not walk the whole path again in every
//! layer.
//!
//! Lower layers never change while mounted, so their fds stay valid. An upper directory can
//! be moved or removed through the overlay: every such change bumps a generation, and upper
//! fds from an older generation are dropped. At most [`CAPACITY`] fds are held, whatever
//! the size of the tree (DESIGN.md, "Bounded file descriptors").

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::LayerIdx;

/// Fds held at most.
pub const CAPACITY: usize = 1024;
const SHARDS: usize = 16;

type Key = (LayerIdx, PathBuf);

#[derive(Debug)]
struct Cached {
    fd: Arc<OwnedFd>,
    generation: u64,
}

/// The cache; cheap to share between threads (sharded locks).
#[derive(Debug)]
pub struct DirCache {
    shards: Vec<Mutex<LruCache<Key, Cached>>>,
    upper_generation: AtomicU64,
}

impl Default for DirCache {
    fn default() -> Self {
        let per_shard = NonZeroUsize::new(CAPACITY / SHARDS).unwrap_or(NonZeroUsize::MIN);
        DirCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            upper_generation: AtomicU64::new(0),
        }
    }
}

fn shard_of(layer: LayerIdx, path: &Path) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (layer, path).hash(&mut h);
    usize::try_from(h.finish() % SHARDS as u64).unwrap_or(0)
}

impl DirCache {
    /// The cached fd of directory `path` in `layer`, if still valid.
    pub fn get(&self, layer: LayerIdx, path: &Path) -> Option<Arc<OwnedFd>> {
        let current = self.upper_generation.load(Ordering::Acquire);
        let mut shard = self.shards[shard_of(layer, path)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = (layer, path.to_owned());
        let hit = shard.get(&key)?;
        if layer == LayerIdx::UPPER && hit.generation != current {
            shard.pop(&key);
            return None;
        }
        Some(hit.fd.clone())
    }

    /// Remembers `fd` as directory `path` of `layer`, opened at upper generation
    /// `generation` (read before opening, so a change in between invalidates it).
    pub fn put(&self, layer: LayerIdx, path: &Path, fd: Arc<OwnedFd>, generation: u64) {
        let mut shard = self.shards[shard_of(layer, path)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        shard.put((layer, path.to_owned()), Cached { fd, generation });
    }

    /// The current upper generation.
    pub fn generation(&self) -> u64 {
        self.upper_generation.load(Ordering::Acquire)
    }

    /// An upper directory was moved or removed: no cached upper fd may be trusted.
    pub fn upper_changed(&self) {
        self.upper_generation.fetch_add(1, Ordering::AcqRel);
    }
}
