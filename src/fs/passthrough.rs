//! FUSE passthrough: the kernel reads and writes an open file's backing file itself, with no
//! request to this server.
//!
//! The kernel allows one I/O mode per inode at a time: all its opens cached, or all passed
//! through to one backing file. So the mode is chosen per node when it has no open, and every
//! later open of the node gets the same mode until the last one is released.
//!
//! An upper file backs every open of its node. With [`PassthroughMode::All`] a lower file may
//! back reads too; while it does, the file's data must not change (those readers would keep
//! reading the lower copy), so opening it for writing or truncating it fails with `ETXTBSY`,
//! as for a running program.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fuser::BackingId;
use nix::errno::Errno;

/// Which files the kernel may read and write itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PassthroughMode {
    /// None: every read and write is a request to this server.
    Off,
    /// Files in the upper layer (everything written, and whatever was copied up), with no
    /// change in behaviour.
    #[default]
    Upper,
    /// Lower files opened for reading too; opening such a file for writing while it is open
    /// for reading then fails with `ETXTBSY`.
    All,
}

/// How the kernel does I/O on one open file.
#[derive(Debug)]
pub(crate) enum Io {
    /// Through this server and the FUSE page cache.
    Cached,
    /// Straight to the backing file.
    Passthrough(Arc<BackingId>),
}

/// Which layer the file backing a node's opens is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backing {
    /// The upper copy: any open may use it.
    Upper,
    /// A lower copy: only reads, and the data may not change meanwhile.
    Lower,
}

/// The I/O mode of a node with open files.
#[derive(Debug)]
struct NodeIo {
    opens: usize,
    backing: Option<(Arc<BackingId>, Backing)>,
}

/// The per-node I/O modes of open files.
#[derive(Debug, Default)]
pub(crate) struct Passthrough {
    mode: PassthroughMode,
    on: AtomicBool,
    nodes: Mutex<HashMap<u64, NodeIo>>,
}

impl Passthrough {
    /// Per-node modes for files of `mode`; off until [`Passthrough::enable`].
    pub(crate) fn new(mode: PassthroughMode) -> Passthrough {
        Passthrough {
            mode,
            ..Passthrough::default()
        }
    }

    /// Whether to ask the kernel for passthrough at all.
    pub(crate) fn wanted(&self) -> bool {
        self.mode != PassthroughMode::Off
    }

    /// Turns passthrough on (the kernel granted `FUSE_PASSTHROUGH`).
    pub(crate) fn enable(&self) {
        self.on.store(true, Ordering::Release);
    }

    /// Whether opens may be passed through.
    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, NodeIo>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `ETXTBSY` while a lower copy backs open readers of `node`: its data must not change.
    pub(crate) fn check_data_change(&self, node: u64) -> Result<(), Errno> {
        if !self.is_on() {
            return Ok(());
        }
        match self.table().get(&node) {
            Some(NodeIo {
                backing: Some((_, Backing::Lower)),
                ..
            }) => Err(Errno::ETXTBSY),
            _ => Ok(()),
        }
    }

    /// Chooses the I/O mode of a new open of `node`, whose fd is in layer `layer` and which
    /// `writes` (or truncates). `register` makes the backing id when the node has no open.
    /// Every successful call is paired with one [`Passthrough::released`].
    ///
    /// # Errors
    /// `ETXTBSY` for a writing open while a lower copy backs readers.
    pub(crate) fn opened(
        &self,
        node: u64,
        layer: Backing,
        writes: bool,
        register: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> Result<Io, Errno> {
        if !self.is_on() {
            return Ok(Io::Cached);
        }
        let mut table = self.table();
        let io = match table.entry(node) {
            Entry::Occupied(known) => {
                let io = known.into_mut();
                if writes && matches!(io.backing, Some((_, Backing::Lower))) {
                    return Err(Errno::ETXTBSY);
                }
                // An open that found the upper copy while lower readers are passed through
                // reads the same data: no write happened since they opened.
                io.opens += 1;
                io
            }
            Entry::Vacant(new) => new.insert(NodeIo {
                opens: 1,
                backing: self.backing(layer, register),
            }),
        };
        Ok(match &io.backing {
            Some((id, _)) => Io::Passthrough(Arc::clone(id)),
            None => Io::Cached,
        })
    }

    /// The backing file for the first open of a node, whose fd is in `layer`; `None` keeps
    /// the node cached.
    fn backing(
        &self,
        layer: Backing,
        register: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> Option<(Arc<BackingId>, Backing)> {
        if layer == Backing::Lower && self.mode != PassthroughMode::All {
            return None;
        }
        match register() {
            Ok(id) => Some((Arc::new(id), layer)),
            Err(e) => {
                // Not privileged after all (CAP_SYS_ADMIN in the initial namespace): stop
                // trying. Other refusals (a backing fs stacked too deep) are per file.
                if e.raw_os_error() == Some(libc::EPERM) {
                    self.on.store(false, Ordering::Release);
                }
                None
            }
        }
    }

    /// Records that one open of `node` was released; the last one frees the backing id.
    pub(crate) fn released(&self, node: u64) {
        let mut table = self.table();
        if let Some(io) = table.get_mut(&node) {
            io.opens -= 1;
            if io.opens == 0 {
                table.remove(&node);
            }
        }
    }
}

/// Whether this process may register backing files: the kernel asks for CAP_SYS_ADMIN in the
/// initial user namespace.
pub(crate) fn may_register_backing_files() -> bool {
    let initial_userns = std::fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|map| map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]);
    initial_userns
        && caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_ADMIN,
        )
        .unwrap_or(false)
}
