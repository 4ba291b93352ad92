//! A bounded cache of directory fds, so a lookup does not walk the whole path again in every
//! layer.
//!
//! Lower layers never change while mounted, so their fds stay valid. An upper directory can
//! be moved or removed through the overlay: every such change bumps a generation, and upper
//! fds from an older generation are dropped. The cache also remembers where the upper has
//! *no* directory (most of a lower tree, during a walk); any new upper directory bumps a
//! second generation that drops those. At most [`CAPACITY`] entries are held, whatever the
//! size of the tree (DESIGN.md, "Bounded file descriptors").

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::LayerIdx;

/// Fds held at most.
pub(super) const CAPACITY: usize = 1024;
const SHARDS: usize = 16;

type Key = (LayerIdx, PathBuf);

#[derive(Debug)]
struct Cached {
    /// `None`: the layer has no directory there.
    fd: Option<Arc<OwnedFd>>,
    generation: u64,
}

/// What the cache knows of a directory.
#[derive(Debug)]
pub(super) enum Lookup {
    /// Not cached.
    Unknown,
    /// The layer has no directory there.
    Absent,
    /// Its fd.
    Present(Arc<OwnedFd>),
}

/// The cache; cheap to share between threads (sharded locks).
#[derive(Debug)]
pub(super) struct DirCache {
    shards: Vec<Mutex<LruCache<Key, Cached>>>,
    upper_generation: AtomicU64,
    /// Bumped when an upper directory appears (invalidates cached absences).
    absent_generation: AtomicU64,
}

impl Default for DirCache {
    fn default() -> Self {
        let per_shard = NonZeroUsize::new(CAPACITY / SHARDS).unwrap_or(NonZeroUsize::MIN);
        DirCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            upper_generation: AtomicU64::new(0),
            absent_generation: AtomicU64::new(0),
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
    /// What the cache knows of directory `path` in `layer`.
    pub(super) fn get(&self, layer: LayerIdx, path: &Path) -> Lookup {
        let current = self.generation_for(layer, false);
        let absent_current = self.generation_for(layer, true);
        let mut shard = self.shards[shard_of(layer, path)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = (layer, path.to_owned());
        let Some(hit) = shard.get(&key) else {
            return Lookup::Unknown;
        };
        let valid = match &hit.fd {
            Some(_) => hit.generation == current,
            None => hit.generation == absent_current,
        };
        match (&hit.fd, valid) {
            (Some(fd), true) => Lookup::Present(fd.clone()),
            (None, true) => Lookup::Absent,
            (_, false) => {
                shard.pop(&key);
                Lookup::Unknown
            }
        }
    }

    /// Remembers directory `path` of `layer` (`None`: absent), as found at generation
    /// `generation` (read before looking, so a change in between invalidates it).
    pub(super) fn put(
        &self,
        layer: LayerIdx,
        path: &Path,
        fd: Option<Arc<OwnedFd>>,
        generation: u64,
    ) {
        let mut shard = self.shards[shard_of(layer, path)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        shard.put((layer, path.to_owned()), Cached { fd, generation });
    }

    /// The generation an entry of `layer` found now is stamped with (lowers never change).
    pub(super) fn generation_for(&self, layer: LayerIdx, absent: bool) -> u64 {
        match (layer == LayerIdx::UPPER, absent) {
            (false, _) => 0,
            (true, false) => self.upper_generation.load(Ordering::Acquire),
            (true, true) => self.absent_generation.load(Ordering::Acquire),
        }
    }

    /// An upper directory appeared: cached absences may be wrong.
    pub(super) fn upper_dir_created(&self) {
        self.absent_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// An upper directory was moved or removed: no cached upper fd may be trusted (and a
    /// move makes a directory appear elsewhere).
    pub(super) fn upper_changed(&self) {
        self.upper_generation.fetch_add(1, Ordering::AcqRel);
        self.absent_generation.fetch_add(1, Ordering::AcqRel);
    }
}
