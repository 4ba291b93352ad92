//! Overlay semantics on real directories: one writable upper over read-only lowers.
//!
//! Every overlay rule of ovlrun lives in this module and nowhere else: how a name resolves
//! through the layers, how listings merge, when a whiteout or an opaque marker is written, how
//! copy-up works, what rename does. It is plain Rust over directory fds: it knows nothing of
//! FUSE, node ids or namespaces, and it is unit-tested on temporary directories.
//!
//! Paths handed in are *merged* paths relative to the overlay root (`""` is the root). The
//! caller keeps, per merged directory, the [`Loc`] that a lookup returned (which lowers stand
//! behind it); the upper is always consulted live, because it is the only layer that changes.

mod copy_up;
mod create;
mod dircache;
pub(crate) mod format;
mod index;
mod ino;
mod lookup;
mod meta;
mod metacopy;
mod origin;
mod readdir;
mod remove;
mod rename;
mod setup;
#[cfg(test)]
mod tests;
mod walk;

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use nix::sys::stat::FileStat;

pub(crate) use create::{NewNode, Owner};
#[cfg(test)]
pub(crate) use format::METACOPY_MIN_SIZE;
pub use format::WhiteoutFormat;
pub(crate) use ino::Ino;
pub(crate) use meta::{SetAttr, SetTime, opens_for_writing};
pub(crate) use metacopy::complete_metacopies;
pub(crate) use origin::ORIGIN_DIR;
pub(crate) use readdir::DirEntry;
pub(crate) use rename::RenameOutcome;
pub(crate) use setup::OverlayConfig;
pub use setup::{LayerSetupError, default_work};

/// Index of a layer: 0 is the upper, 1.. are the lowers from the top down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct LayerIdx(pub u16);

impl LayerIdx {
    /// The writable upper layer.
    pub(crate) const UPPER: LayerIdx = LayerIdx(0);
}

/// The lower layers that stand behind one merged object, top first.
///
/// For a directory: every lower holding a directory of that path that the merged view
/// includes (the list is cut at an opaque directory, a whiteout or a non-directory). For a
/// non-directory: the one lower holding the visible copy, or nothing when it lives in the upper.
pub(crate) type Lowers = Arc<[LayerIdx]>;

/// Where a merged object lives: its merged path and the lowers behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    /// Path relative to the overlay root; empty for the root.
    pub path: PathBuf,
    /// Lower layers behind this object (see [`Lowers`]).
    pub lowers: Lowers,
}

impl Loc {
    /// The overlay root, given the lowers that hold a root directory.
    pub(crate) fn root(lowers: Lowers) -> Loc {
        Loc {
            path: PathBuf::new(),
            lowers,
        }
    }

    /// The merged path of entry `name` inside this directory.
    pub(crate) fn child_path(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }
}

/// The attributes of a merged object as the overlay shows them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attr {
    /// Stable inode number (see [`Ino`]).
    pub ino: Ino,
    /// The real `stat` of the topmost copy, with the overlay's adjustments (nlink of merged
    /// directories).
    pub st: FileStat,
}

impl Attr {
    /// True for directories.
    pub(crate) fn is_dir(&self) -> bool {
        is_dir(&self.st)
    }
}

/// A merged entry found by a lookup or made by a create.
#[derive(Clone, Debug)]
pub(crate) struct Found {
    /// Where it lives.
    pub loc: Loc,
    /// What it looks like.
    pub attr: Attr,
}

/// One real layer directory, held by an `O_PATH` fd for the life of the overlay.
#[derive(Debug)]
struct Layer {
    root: OwnedFd,
    path: PathBuf,
    /// Index of this layer's filesystem among the distinct filesystems of all layers
    /// (0 is the upper's); it goes into the high bits of inode numbers.
    fs_index: u8,
}

/// An overlay of real directories: the object every merged operation goes through.
///
/// All methods take `&self` and are safe to call from many threads at once.
#[derive(Debug)]
pub(crate) struct Overlay {
    /// `layers[0]` is the upper; the rest are lowers, top first.
    layers: Vec<Layer>,
    /// The work directory (`O_PATH`).
    work: OwnedFd,
    /// ovlrun's scratch directory inside the work dir, on the upper's filesystem.
    scratch: OwnedFd,
    /// The hard-link index inside the work dir (see `index.rs`).
    index: OwnedFd,
    /// The origin map inside the work dir (see `origin.rs`).
    origins: OwnedFd,
    /// The lowers behind the root, settled at setup (lowers never change).
    root_lowers: Lowers,
    format: WhiteoutFormat,
    /// Whether the upper filesystem takes `user.*` xattrs (opaque markers, stable inos).
    upper_xattrs: bool,
    next_temp: AtomicU64,
    /// Directory fds recently used (bounded).
    dirs: dircache::DirCache,
    /// Copy-ups done so far; lets callers holding lower fds notice cheaply that one happened.
    copy_ups: AtomicU64,
    /// Fsync each copy-up before it takes its place (see [`OverlayConfig::durable`]).
    durable: bool,
    /// Copy-ups fsynced so far (what `durable` costs, for tests).
    synced_copy_ups: AtomicU64,
    /// Held while a metadata-only copy is completed (see `metacopy.rs`).
    completing: std::sync::Mutex<()>,
    /// This overlay has made the work dir's marker that stubs may exist (see `metacopy.rs`).
    stubs_marked: std::sync::atomic::AtomicBool,
}

pub(crate) fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

impl Overlay {
    #[cfg(test)]
    /// The whiteout format this overlay writes.
    pub(crate) fn format(&self) -> WhiteoutFormat {
        self.format
    }

    /// The real directory of a layer (for messages and tests).
    pub(crate) fn layer_path(&self, layer: LayerIdx) -> &Path {
        &self.layers[usize::from(layer.0)].path
    }

    /// How many copy-ups this overlay has done; it only grows.
    pub(crate) fn copy_ups(&self) -> u64 {
        self.copy_ups.load(std::sync::atomic::Ordering::Acquire)
    }

    /// How many copy-ups were fsynced before taking their place; it only grows.
    #[cfg(test)]
    pub(crate) fn synced_copy_ups(&self) -> u64 {
        self.synced_copy_ups
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// True when the object at `loc` has its own copy in the upper.
    ///
    /// # Errors
    /// Any error of the upper.
    pub(crate) fn in_upper(&self, loc: &Loc) -> Result<bool, nix::errno::Errno> {
        Ok(self
            .upper_stat(&loc.path)?
            .is_some_and(|st| !format::is_whiteout(&st)))
    }

    /// The root of the merged view.
    pub(crate) fn root_loc(&self) -> Loc {
        Loc::root(self.root_lowers.clone())
    }
}
