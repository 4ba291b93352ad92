//! Opening files: the data path the kernel grants at init, and for each open one decision of
//! how the kernel reads and writes it ([`OpenMode`]), then one call for that mode.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use fuser::{
    BackingId, FileHandle, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, ReplyCreate,
    ReplyOpen, Request,
};
use nix::errno::Errno;
use nix::fcntl::OFlag;

use super::handles::{Handle, OpenFile};
use super::passthrough::{self, Backing, Io};
use super::{MAX_WRITE, OverlayFs, TTL, to_fuse};
use crate::layers::{LayerIdx, NewNode};

/// How the kernel reads and writes one open file.
#[derive(Debug)]
pub(super) enum OpenMode {
    /// The kernel reads and writes the backing file itself (FUSE passthrough).
    Passthrough(Arc<BackingId>),
    /// `O_DIRECT`: through this server; nothing is stored in the cache ahead of the reads.
    Direct,
    /// Through this server and the kernel's page cache.
    Cached,
    /// Cached, and the `size` bytes of a small lower file stored in the cache before the
    /// open is answered (see [`super::prefill`]).
    Prefill {
        /// The file's size, all of which is stored.
        size: i64,
    },
}

impl OpenMode {
    fn fopen_flags(&self) -> FopenFlags {
        match self {
            OpenMode::Passthrough(_) => FopenFlags::empty(),
            OpenMode::Direct | OpenMode::Cached | OpenMode::Prefill { .. } => {
                FopenFlags::FOPEN_KEEP_CACHE
            }
        }
    }
}

/// The access-mode bits of `flags` as FUSE sends them.
pub(super) fn oflags(flags: i32) -> OFlag {
    OFlag::from_bits_truncate(flags)
}

impl OverlayFs {
    /// Chooses the data path at init: passthrough where the kernel grants it and this process
    /// may register backing files, else the writeback cache.
    pub(super) fn negotiate(&mut self, config: &mut KernelConfig) {
        // Every listing chunk carries attributes (no READDIRPLUS_AUTO, which sends only the
        // first chunk so): a stat, open or exec after a listing then needs no LOOKUP. Stat of
        // every entry of a 100,000-entry tree: 4.0 s -> 0.5 s; a name-only walk of it: 0.43 s
        // -> 0.89 s.
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_POSIX_ACL;
        // The kernel grants passthrough only without the writeback cache; passthrough is
        // the faster of the two where this process may register backing files.
        let data_path = if self.passthrough.wanted()
            && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && passthrough::may_register_backing_files()
        {
            // Depth 1: the backing files are on plain filesystems, and the kernel
            // overlayfs may still stack on this mount.
            let _ = config.set_max_stack_depth(1);
            InitFlags::FUSE_PASSTHROUGH
        } else {
            InitFlags::FUSE_WRITEBACK_CACHE
        };
        let granted = (wanted | data_path) & config.capabilities();
        self.writeback = granted.contains(InitFlags::FUSE_WRITEBACK_CACHE);
        if granted.contains(InitFlags::FUSE_PASSTHROUGH) {
            self.passthrough.enable();
        }
        let _ = config.add_capabilities(granted);
        let _ = config.set_max_write(MAX_WRITE);
    }

    /// The flags to open a backing file with. With the writeback cache the kernel may read
    /// pages of a file opened write-only, and it has already placed appends at the end.
    fn backing_flags(&self, flags: OFlag) -> OFlag {
        if !self.writeback {
            return flags;
        }
        let mut f = flags & !OFlag::O_APPEND;
        if f & OFlag::O_ACCMODE == OFlag::O_WRONLY {
            f = (f & !OFlag::O_WRONLY) | OFlag::O_RDWR;
        }
        f
    }

    /// OPEN: the backing file, the open's mode, then one call for that mode.
    pub(super) fn open_file(&self, ino: INodeNo, asked: OFlag, reply: ReplyOpen) {
        let seen = self.ovl.copy_ups();
        let flags = self.backing_flags(asked);
        let writes = crate::layers::opens_for_writing(flags);
        // A reader holds its node's data lock until answered, so its fill ends first.
        let _reading = (!writes).then(|| self.prefill.lock(ino.0));
        let opened = self
            .open_backing(ino, asked, flags, writes)
            .and_then(|(fd, layer)| {
                let register = || reply.open_backing(&fd);
                let mode = self.open_mode(ino.0, fd.as_fd(), layer, flags, writes, register)?;
                Ok((fd, layer, mode))
            });
        let (fd, layer, mode) = match opened {
            Ok(x) => x,
            Err(e) => return reply.error(to_fuse(e)),
        };
        if writes {
            // This open copied the file up: a fill of the lower copy must end before it.
            self.prefill.wait_for_fills(ino.0);
        }
        if let OpenMode::Prefill { size } = mode {
            // A failure only leaves the reads to READ requests.
            let _ = self.prefill.fill(ino.0, fd.as_fd(), size);
        }
        let fh = self.insert_file(ino.0, fd, flags, layer, seen);
        match &mode {
            OpenMode::Passthrough(id) => reply.opened_passthrough(fh, mode.fopen_flags(), id),
            _ => reply.opened(fh, mode.fopen_flags()),
        }
    }

    /// CREATE: the new upper file, registered with the kernel as a looked-up entry and opened.
    pub(super) fn create_file(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &std::ffi::OsStr,
        mode: u32,
        flags: OFlag,
        reply: ReplyCreate,
    ) {
        let flags = self.backing_flags(flags & !OFlag::O_DIRECT);
        let node = NewNode::File { mode, flags };
        let created = self
            .create_node(req, parent, name, node)
            .and_then(|(found, fd)| {
                let fd = fd.ok_or(Errno::EIO)?;
                let register = || reply.open_backing(&fd);
                let ino = found.attr.ino.0;
                let mode =
                    self.open_mode(ino, fd.as_fd(), LayerIdx::UPPER, flags, true, register)?;
                Ok((found, fd, mode))
            });
        let (found, fd, mode) = match created {
            Ok(x) => x,
            Err(e) => return reply.error(to_fuse(e)),
        };
        let fa = self.entry(parent, name, &found);
        let fh = self.insert_file(fa.ino.0, fd, flags, LayerIdx::UPPER, 0);
        let (ttl, g) = (&TTL, Generation(0));
        match &mode {
            OpenMode::Passthrough(id) => {
                reply.created_passthrough(ttl, &fa, g, fh, mode.fopen_flags(), id);
            }
            _ => reply.created(ttl, &fa, g, fh, mode.fopen_flags()),
        }
    }

    /// RELEASE: drops the handle and its node's passthrough open.
    pub(super) fn release_file(&self, ino: INodeNo, fh: FileHandle) {
        self.handles.remove(fh.0);
        self.passthrough.released(ino.0);
    }

    /// The fd backing an open of node `ino` and its layer; an open for writing copies up.
    fn open_backing(
        &self,
        ino: INodeNo,
        asked: OFlag,
        flags: OFlag,
        writes: bool,
    ) -> Result<(OwnedFd, LayerIdx), Errno> {
        let loc = self.loc(ino)?;
        if writes {
            self.passthrough.check_data_change(ino.0)?;
        }
        match self.ovl.open_top(&loc, flags) {
            // Write-only by mode: the kernel's cache then reads nothing through it.
            Err(Errno::EACCES) if flags != asked => self.ovl.open_top(&loc, asked),
            r => r,
        }
    }

    /// The one decision of how the kernel does I/O on a new open of node `ino`, whose `fd`
    /// (opened with `flags`) is in `layer`. Every success is one open for [`Passthrough`]
    /// (paired with [`OverlayFs::release_file`]); `register` makes the backing id for a
    /// node with no open yet. Only the first reading open of a small lower file since its
    /// lookup prefills.
    ///
    /// [`Passthrough`]: super::passthrough::Passthrough
    fn open_mode(
        &self,
        ino: u64,
        fd: BorrowedFd<'_>,
        layer: LayerIdx,
        flags: OFlag,
        writes: bool,
        register: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> Result<OpenMode, Errno> {
        let backing = if layer == LayerIdx::UPPER {
            Backing::Upper
        } else {
            Backing::Lower
        };
        if let Io::Passthrough(id) = self.passthrough.opened(ino, backing, writes, register)? {
            return Ok(OpenMode::Passthrough(id));
        }
        if flags.contains(OFlag::O_DIRECT) {
            return Ok(OpenMode::Direct);
        }
        if writes || backing == Backing::Upper {
            return Ok(OpenMode::Cached);
        }
        Ok(match nix::sys::stat::fstat(fd) {
            Ok(st) if self.prefill.wanted(st.st_size) && self.nodes.first_open(ino) => {
                OpenMode::Prefill { size: st.st_size }
            }
            _ => OpenMode::Cached,
        })
    }

    /// Stores an open fd as a handle; `layer` says whether it may go stale (see
    /// [`OpenFile`]).
    fn insert_file(
        &self,
        node: u64,
        fd: OwnedFd,
        flags: OFlag,
        layer: LayerIdx,
        seen: u64,
    ) -> FileHandle {
        let lower_seen = (layer != LayerIdx::UPPER).then_some(seen);
        let file = OpenFile::new(node, fd, flags, lower_seen);
        FileHandle(self.handles.insert(Handle::File(file)))
    }
}
