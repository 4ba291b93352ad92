//! The FUSE adapter: translates kernel requests into [`crate::layers`] calls.
//!
//! It owns only FUSE concerns: node ids ([`nodes`]), open handles ([`handles`]), reply
//! types, and what the kernel may cache. No overlay rule is decided here; each operation in
//! the [`Filesystem`] impl below is a shim that calls the method of its concern: opening
//! (`open`), data (`io`), directories (`dir`), metadata (`meta`), extended attributes
//! (`xattr`).

pub(crate) mod attr;
pub(crate) mod handles;
pub(crate) mod nodes;
pub(crate) mod passthrough;
pub(crate) mod prefill;

mod dir;
mod io;
mod meta;
mod open;
mod xattr;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, FileHandle, Filesystem, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use nix::errno::Errno;

use crate::layers::{Attr, Found, LayerIdx, Loc, Overlay, SetAttr};
use handles::{Handle, HandleTable};
use nodes::{NodeTable, ROOT};
use open::oflags;
use passthrough::{Passthrough, PassthroughMode};
use prefill::Prefill;

/// How long the kernel may trust entries and attributes. Only this mount changes the upper
/// and the lowers are read-only for its life, and every change passes through the kernel,
/// which updates its own caches; so the answers stay true until we say otherwise.
const TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Largest write the kernel may send in one request.
const MAX_WRITE: u32 = 1 << 20;

/// The one nix → fuser errno conversion.
fn to_fuse(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e as i32)
}

/// The overlay served over FUSE.
#[derive(Debug)]
pub(crate) struct OverlayFs {
    ovl: Overlay,
    nodes: NodeTable,
    handles: HandleTable,
    /// The kernel caches writes (`FUSE_WRITEBACK_CACHE`): it may read through any open
    /// file and keeps the file offset of appends itself.
    writeback: bool,
    /// Per-node I/O modes, when the kernel passes reads and writes through to our files.
    passthrough: Passthrough,
    /// Complete metadata-only copies when the filesystem is unmounted (not when the upper
    /// is about to be thrown away).
    complete_at_unmount: bool,
    /// Stores small lower files' data in the kernel's cache at their first open.
    prefill: Arc<Prefill>,
}

impl OverlayFs {
    /// Serves `ovl`.
    pub(crate) fn new(ovl: Overlay) -> OverlayFs {
        OverlayFs {
            nodes: NodeTable::new(),
            ovl,
            handles: HandleTable::default(),
            writeback: false,
            passthrough: Passthrough::default(),
            complete_at_unmount: true,
            prefill: Arc::default(),
        }
    }

    /// Whether to complete metadata-only copies at unmount, so the upper left behind is one
    /// the kernel overlayfs reads (default: yes). Skip it when the upper is discarded.
    #[must_use]
    pub(crate) fn complete_at_unmount(mut self, complete: bool) -> OverlayFs {
        self.complete_at_unmount = complete;
        self
    }

    /// Chooses which files the kernel may read and write itself, where it lets this process
    /// register them (root in the initial user namespace); [`PassthroughMode::Upper`] by
    /// default.
    #[must_use]
    pub(crate) fn with_passthrough(mut self, mode: PassthroughMode) -> OverlayFs {
        self.passthrough = Passthrough::new(mode);
        self
    }

    /// The page-cache filler; attach the session's notifier to it once the session exists.
    pub(crate) fn prefill(&self) -> Arc<Prefill> {
        Arc::clone(&self.prefill)
    }

    fn loc(&self, node: INodeNo) -> Result<Loc, Errno> {
        if node.0 == ROOT {
            return Ok(self.ovl.root_loc());
        }
        self.nodes.loc(node.0)
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        self.handles.get(fh.0).ok_or(Errno::EBADF)
    }

    /// An open handle of a node whose names are all gone: the one the kernel named, else any.
    /// Such a file is still there for fstat(2) and for the kernel's cached writes.
    fn unlinked_file(&self, ino: INodeNo, fh: Option<FileHandle>) -> Option<Arc<Handle>> {
        fh.and_then(|fh| self.handles.get(fh.0))
            .or_else(|| self.handles.any_of_node(ino.0))
    }

    /// Registers a found entry with the kernel's new lookup and builds its reply attributes.
    fn entry(&self, parent: INodeNo, name: &OsStr, found: &Found) -> fuser::FileAttr {
        let id = self.nodes.remember(parent.0, name, found);
        attr::file_attr(id, &found.attr)
    }

    fn attr_of(&self, node: INodeNo, attr: &Attr) -> fuser::FileAttr {
        attr::file_attr(if node.0 == ROOT { ROOT } else { attr.ino.0 }, attr)
    }

    fn reply_entry(
        &self,
        parent: INodeNo,
        name: &OsStr,
        res: Result<Found, Errno>,
        reply: ReplyEntry,
    ) {
        match res {
            Ok(found) => reply.entry(&TTL, &self.entry(parent, name, &found), Generation(0)),
            Err(e) => reply.error(to_fuse(e)),
        }
    }
}

impl Filesystem for OverlayFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.negotiate(config);
        Ok(())
    }

    fn destroy(&mut self) {
        if !self.complete_at_unmount {
            return;
        }
        // Unmounted: the upper leaves our hands, and the kernel overlayfs cannot read stubs.
        // On failure they stay, whole with their lowers, for the next completion.
        if let Err(e) = self.ovl.complete_metacopies() {
            eprintln!(
                "ovlrun: upper directory {}: cannot complete its metadata-only copies: {e}",
                self.ovl.layer_path(LayerIdx::UPPER).display()
            );
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.lookup_name(parent, name, reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.nodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.get_attr(ino, fh, reply);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: meta::set_time(atime),
            mtime: meta::set_time(mtime),
        };
        self.set_attr(ino, &changes, fh, reply);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.read_link(ino, reply);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.make_node(req, parent, name, mode & !(umask & 0o777), rdev, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.make_dir(req, parent, name, mode & !umask & 0o7777, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove_name(parent, name, reply, Overlay::unlink);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove_name(parent, name, reply, Overlay::rmdir);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.make_symlink(req, parent, link_name, target, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let flags = nix::fcntl::RenameFlags::from_bits_retain(flags.bits());
        self.rename_entry((parent, name), (newparent, newname), flags, reply);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.make_link(req, ino, newparent, newname, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.open_file(ino, oflags(flags.0), reply);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.read_data(ino, fh, offset, size, reply);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.write_data(ino, fh, offset, data, reply);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at close: the kernel has written its cached pages and reported their
        // errors before it asks. ENOSYS makes it stop asking, one request less per close(2).
        reply.error(fuser::Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.release_file(ino, fh);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync_data(ino, fh, datasync, reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.open_dir(ino, reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.list_dir(ino, fh, offset, reply);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.list_dir_plus(ino, fh, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.remove(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.stat_fs(reply);
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.set_xattr(ino, name, value, flags, reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.get_xattr(ino, name, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.list_xattr(ino, size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove_xattr(ino, name, reply);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.check_access(ino, req.uid(), req.gid(), mask.bits(), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.create_file(
            req,
            parent,
            name,
            mode & !umask & 0o7777,
            oflags(flags),
            reply,
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.allocate(ino, fh, offset, length, mode, reply);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.seek(ino, fh, offset, whence, reply);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.copy_range(
            (ino_in, fh_in, offset_in),
            (ino_out, fh_out, offset_out),
            len,
            reply,
        );
    }
}

/// Replies to a request that returns no data.
fn reply_empty(reply: ReplyEmpty, res: Result<(), Errno>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(to_fuse(e)),
    }
}
