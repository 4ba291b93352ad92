//! The FUSE adapter: translates kernel requests into [`crate::layers`] calls.
//!
//! It owns only FUSE concerns: node ids ([`nodes`]), open handles ([`handles`]), reply
//! types, and what the kernel may cache. No overlay rule is decided here; each operation is a
//! short shim that finds the node's [`Loc`], calls the overlay, and replies.

pub(crate) mod attr;
pub(crate) mod handles;
pub(crate) mod nodes;
pub(crate) mod passthrough;
pub(crate) mod prefill;

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, FileHandle, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::time::TimeSpec;

use crate::layers::{
    Attr, DirEntry, Found, LayerIdx, Loc, NewNode, Overlay, Owner, SetAttr, SetTime,
};
use handles::{Handle, HandleTable, OpenFile};
use nodes::{NodeTable, ROOT};
use passthrough::{Backing, Io, Passthrough, PassthroughMode};
use prefill::Prefill;

/// How long the kernel may trust entries and attributes. Only this mount changes the upper
/// and the lowers are read-only for its life, and every change passes through the kernel,
/// which updates its own caches; so the answers stay true until we say otherwise.
const TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Largest write the kernel may send in one request.
const MAX_WRITE: u32 = 1 << 20;

/// Reads `len` bytes of `fd` at `offset`, fewer only at end of file: the kernel takes a
/// short READ reply for end of file.
pub(crate) fn read_at(fd: BorrowedFd<'_>, len: usize, offset: i64) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < buf.len() {
        let at = offset + i64::try_from(done).map_err(|_| Errno::EOVERFLOW)?;
        let n = nix::sys::uio::pread(fd, &mut buf[done..], at)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

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

    fn with_fd<T>(
        &self,
        node: INodeNo,
        fh: FileHandle,
        f: impl FnOnce(BorrowedFd<'_>) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let handle = self.file(fh)?;
        let Handle::File(file) = &*handle else {
            return Err(Errno::EISDIR);
        };
        let copy_ups = self.ovl.copy_ups();
        if file.may_be_stale(copy_ups) {
            let upper = match self.loc(node) {
                Ok(loc) if self.ovl.in_upper(&loc)? => Some(self.ovl.open(&loc, file.flags)?),
                _ => None,
            };
            file.checked(upper, copy_ups);
        }
        f(file.fd().as_fd())
    }

    /// An open handle of a node whose names are all gone: the one the kernel named, else any.
    /// Such a file is still there for fstat(2) and for the kernel's cached writes.
    fn unlinked_file(&self, ino: INodeNo, fh: Option<FileHandle>) -> Option<Arc<Handle>> {
        fh.and_then(|fh| self.handles.get(fh.0))
            .or_else(|| self.handles.any_of_node(ino.0))
    }

    /// Removes `name` from directory `parent` with `remove` (unlink or rmdir) and forgets the
    /// name's node alias.
    fn remove_name(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
        remove: impl FnOnce(&Overlay, &Loc, &OsStr) -> Result<(), Errno>,
    ) {
        let res = self
            .loc(parent)
            .and_then(|dir| remove(&self.ovl, &dir, name));
        if res.is_ok() {
            self.nodes.name_removed(parent.0, name);
        }
        reply_empty(reply, res);
    }

    /// Stores a small lower file's data in the kernel's cache at the first reading open of
    /// its node (see [`prefill`]); a failure only leaves the reads to READ requests.
    fn fill_cache(&self, node: u64, fd: BorrowedFd<'_>, flags: OFlag) {
        if flags.contains(OFlag::O_DIRECT) {
            return;
        }
        if let Ok(st) = nix::sys::stat::fstat(fd)
            && self.prefill.wanted(st.st_size)
            && self.nodes.first_open(node)
        {
            let _ = self.prefill.fill(node, fd, st.st_size);
        }
    }

    /// Stores an open fd as a handle; `layer` says whether it may go stale (see
    /// [`handles::OpenFile`]).
    fn insert_file(
        &self,
        node: u64,
        fd: std::os::fd::OwnedFd,
        flags: OFlag,
        layer: LayerIdx,
        seen: u64,
    ) -> FileHandle {
        let lower_seen = (layer != LayerIdx::UPPER).then_some(seen);
        let file = OpenFile::new(node, fd, flags, lower_seen);
        FileHandle(self.handles.insert(Handle::File(file)))
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

    fn create_node(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        node: NewNode,
    ) -> Result<(Found, Option<std::os::fd::OwnedFd>), Errno> {
        let dir = self.loc(parent)?;
        let owner = Owner {
            uid: req.uid(),
            gid: req.gid(),
        };
        self.ovl.create(&dir, name, &node, owner)
    }

    fn listing(&self, dir: &Loc) -> Result<Vec<DirEntry>, Errno> {
        let here = self.ovl.stat(dir)?;
        let mut entries = vec![
            DirEntry {
                name: ".".into(),
                kind: libc::S_IFDIR,
                ino: here.ino,
            },
            DirEntry {
                name: "..".into(),
                kind: libc::S_IFDIR,
                ino: here.ino,
            },
        ];
        entries.extend(self.ovl.read_dir(dir)?);
        Ok(entries)
    }

    /// The snapshot of an open directory, taken again when the listing restarts at 0.
    /// The entries of open directory `fh` from `offset` on, as many as one reply can hold.
    fn snapshot(&self, node: INodeNo, fh: FileHandle, offset: u64) -> Result<Vec<DirEntry>, Errno> {
        // A reply buffer holds far fewer entries than this; cloning the whole tail on
        // every call would make listing a large directory quadratic.
        const CHUNK: usize = 512;
        let handle = self.file(fh)?;
        let Handle::Dir(snap) = &*handle else {
            return Err(Errno::ENOTDIR);
        };
        let mut snap = snap.lock().unwrap_or_else(|p| p.into_inner());
        let entries = match &mut *snap {
            Some(entries) if offset != 0 => entries,
            slot => slot.insert(self.listing(&self.loc(node)?)?),
        };
        Ok(entries
            .iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(CHUNK)
            .cloned()
            .collect())
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => {
            let d = st.duration_since(UNIX_EPOCH).unwrap_or_default();
            SetTime::At(TimeSpec::new(
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                i64::from(d.subsec_nanos()),
            ))
        }
    })
}

fn oflags(flags: i32) -> OFlag {
    OFlag::from_bits_truncate(flags)
}

impl Filesystem for OverlayFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
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
        match self.loc(parent).and_then(|dir| self.ovl.lookup(&dir, name)) {
            // Absent names stay absent until this mount makes them, and the kernel replaces
            // its negative entry itself when it does (create, mkdir, link, rename): so it may
            // remember the absence as long as any entry (compilers and ld.so probe many).
            Err(Errno::ENOENT) => {
                reply.entry(&TTL, &attr::negative_entry(), Generation(0));
            }
            res => self.reply_entry(parent, name, res, reply),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.nodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let res = self
            .loc(ino)
            .and_then(|loc| self.ovl.stat(&loc))
            .or_else(|e| {
                let handle = self.unlinked_file(ino, fh).ok_or(e)?;
                let Handle::File(file) = &*handle else {
                    return Err(e);
                };
                let st = nix::sys::stat::fstat(file.fd().as_fd())?;
                Ok(Attr {
                    ino: crate::layers::Ino(ino.0),
                    st,
                })
            });
        match res {
            Ok(a) => reply.attr(&TTL, &self.attr_of(ino, &a)),
            Err(e) => reply.error(to_fuse(e)),
        }
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
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        let handle = fh.and_then(|fh| self.handles.get(fh.0));
        let fd = match handle.as_deref() {
            Some(Handle::File(file)) => Some(file.fd()),
            _ => None,
        };
        if size.is_some()
            && let Err(e) = self.passthrough.check_data_change(ino.0)
        {
            return reply.error(to_fuse(e));
        }

        let res = match self.loc(ino) {
            Ok(loc) => self
                .ovl
                .setattr(&loc, &changes, fd.as_ref().map(|fd| fd.as_fd())),
            // With the writeback cache the kernel sets the times of its cached writes to a
            // file unlinked while open; failing that makes the writer's close(2) fail (EIO).
            Err(e) => match self.unlinked_file(ino, fh).as_deref() {
                Some(Handle::File(file)) if file.is_upper() => self
                    .ovl
                    .setattr_unlinked(file.fd().as_fd(), &changes)
                    .map(|st| Attr {
                        ino: crate::layers::Ino(ino.0),
                        st,
                    }),
                _ => Err(e),
            },
        };
        if size.is_some() && res.is_ok() {
            self.prefill.wait_for_fills(ino.0);
        }
        match res {
            Ok(a) => reply.attr(&TTL, &self.attr_of(ino, &a)),
            Err(e) => reply.error(to_fuse(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        use std::os::unix::ffi::OsStrExt;
        match self.loc(ino).and_then(|loc| self.ovl.readlink(&loc)) {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(to_fuse(e)),
        }
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
        let mode = mode & !(umask & 0o777);
        let node = if mode & libc::S_IFMT == libc::S_IFREG {
            NewNode::File {
                mode: mode & 0o7777,
                flags: OFlag::O_WRONLY,
            }
        } else {
            NewNode::Special {
                mode,
                rdev: u64::from(rdev),
            }
        };
        let res = self.create_node(req, parent, name, node).map(|(f, _)| f);
        self.reply_entry(parent, name, res, reply);
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
        let node = NewNode::Dir {
            mode: mode & !umask & 0o7777,
        };
        let res = self.create_node(req, parent, name, node).map(|(f, _)| f);
        self.reply_entry(parent, name, res, reply);
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
        let node = NewNode::Symlink {
            target: target.to_owned(),
        };
        let res = self
            .create_node(req, parent, link_name, node)
            .map(|(f, _)| f);
        self.reply_entry(parent, link_name, res, reply);
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
        let res = self.loc(parent).and_then(|sp| {
            let dp = self.loc(newparent)?;
            self.ovl.rename(&sp, name, &dp, newname, flags)
        });
        match res {
            Ok(outcome) => {
                self.nodes
                    .renamed((parent.0, name), (newparent.0, newname), &outcome);
                reply.ok();
            }
            Err(e) => reply.error(to_fuse(e)),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let res = self.loc(ino).and_then(|source| {
            self.create_node(req, newparent, newname, NewNode::HardLink { source })
                .map(|(f, _)| f)
        });
        self.reply_entry(newparent, newname, res, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let seen = self.ovl.copy_ups();
        let asked = oflags(flags.0);
        let flags = self.backing_flags(asked);
        let writes = crate::layers::opens_for_writing(flags);
        // A reader holds its node's data lock until answered, so its fill ends first.
        let reading = (!writes).then(|| self.prefill.lock(ino.0));
        let opened = self
            .loc(ino)
            .and_then(|loc| {
                if writes {
                    self.passthrough.check_data_change(ino.0)?;
                }
                match self.ovl.open_top(&loc, flags) {
                    // Write-only by mode: the kernel's cache then reads nothing through it.
                    Err(Errno::EACCES) if flags != asked => self.ovl.open_top(&loc, asked),
                    r => r,
                }
            })
            .and_then(|(fd, layer)| {
                let backing = if layer == LayerIdx::UPPER {
                    Backing::Upper
                } else {
                    Backing::Lower
                };
                let io = self
                    .passthrough
                    .opened(ino.0, backing, writes, || reply.open_backing(&fd))?;
                Ok((fd, layer, io))
            });
        match opened {
            Ok((fd, layer, io)) => {
                if writes {
                    self.prefill.wait_for_fills(ino.0);
                }
                if reading.is_some() && matches!(io, Io::Cached) && layer != LayerIdx::UPPER {
                    self.fill_cache(ino.0, fd.as_fd(), flags);
                }
                let fh = self.insert_file(ino.0, fd, flags, layer, seen);
                match io {
                    Io::Cached => reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE),
                    Io::Passthrough(id) => reply.opened_passthrough(fh, FopenFlags::empty(), &id),
                }
            }
            Err(e) => reply.error(to_fuse(e)),
        }
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
        let res = self.with_fd(ino, fh, |fd| {
            let offset = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
            read_at(fd, usize::try_from(size).unwrap_or(0), offset)
        });
        match res {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(to_fuse(e)),
        }
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
        let res = self.with_fd(ino, fh, |fd| {
            let offset = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
            let mut done = 0;
            while done < data.len() {
                done += nix::sys::uio::pwrite(
                    fd,
                    &data[done..],
                    offset + i64::try_from(done).unwrap_or(0),
                )?;
            }
            Ok(done)
        });
        match res {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(to_fuse(e)),
        }
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
        self.handles.remove(fh.0);
        self.passthrough.released(ino.0);
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
        let res = self.with_fd(ino, fh, |fd| {
            if datasync {
                nix::unistd::fdatasync(fd)
            } else {
                nix::unistd::fsync(fd)
            }
        });
        reply_empty(reply, res)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The listing is taken at the first read: a directory opened only to be walked
        // by fd (openat, fchdir) costs nothing.
        match self.loc(ino).and_then(|loc| self.ovl.stat(&loc)) {
            Ok(_) => {
                let fh = self
                    .handles
                    .insert(Handle::Dir(std::sync::Mutex::new(None)));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(to_fuse(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.snapshot(ino, fh, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(to_fuse(e)),
        };
        for (i, e) in entries.iter().enumerate() {
            let next = offset + u64::try_from(i).unwrap_or(0) + 1;
            if reply.add(INodeNo(e.ino.0), next, attr::kind(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (entries, dir) = match self
            .snapshot(ino, fh, offset)
            .and_then(|e| Ok((e, self.loc(ino)?)))
        {
            Ok(x) => x,
            Err(e) => return reply.error(to_fuse(e)),
        };
        for (i, e) in entries.iter().enumerate() {
            let next = offset + u64::try_from(i).unwrap_or(0) + 1;
            if e.name == "." || e.name == ".." {
                // The kernel links no node for these; their attributes are not used.
                let a = match self.ovl.stat(&dir) {
                    Ok(a) => a,
                    Err(_) => continue,
                };
                if reply.add(
                    INodeNo(e.ino.0),
                    next,
                    &e.name,
                    &TTL,
                    &attr::file_attr(e.ino.0, &a),
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            // Removed since the snapshot: skip it, as a fresh listing would.
            let Ok(found) = self.ovl.lookup(&dir, &e.name) else {
                continue;
            };
            let fa = attr::file_attr(found.attr.ino.0, &found.attr);
            if reply.add(INodeNo(fa.ino.0), next, &e.name, &TTL, &fa, Generation(0)) {
                break;
            }
            // Only an entry that made it into the reply counts as a kernel lookup.
            self.nodes.remember(ino.0, &e.name, &found);
        }
        reply.ok();
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
        match self.ovl.statfs() {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                u32::try_from(s.block_size()).unwrap_or(4096),
                u32::try_from(s.name_max()).unwrap_or(255),
                u32::try_from(s.fragment_size()).unwrap_or(4096),
            ),
            Err(e) => reply.error(to_fuse(e)),
        }
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
        reply_empty(
            reply,
            self.loc(ino)
                .and_then(|loc| self.ovl.setxattr(&loc, name, value, flags)),
        )
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.loc(ino).and_then(|loc| self.ovl.getxattr(&loc, name)) {
            Ok(v) => reply_sized(reply, size, &v),
            Err(e) => reply.error(to_fuse(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        use std::os::unix::ffi::OsStrExt;
        match self.loc(ino).and_then(|loc| self.ovl.listxattr(&loc)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(n.as_bytes());
                    buf.push(0);
                }
                reply_sized(reply, size, &buf);
            }
            Err(e) => reply.error(to_fuse(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.loc(ino)
                .and_then(|loc| self.ovl.removexattr(&loc, name)),
        )
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let res = self
            .loc(ino)
            .and_then(|loc| self.ovl.stat(&loc))
            .and_then(|a| {
                if may_access(&a.st, req.uid(), req.gid(), mask.bits()) {
                    Ok(())
                } else {
                    Err(Errno::EACCES)
                }
            });
        reply_empty(reply, res)
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
        let flags = self.backing_flags(oflags(flags) & !OFlag::O_DIRECT);
        let node = NewNode::File {
            mode: mode & !umask & 0o7777,
            flags,
        };
        let created = self
            .create_node(req, parent, name, node)
            .and_then(|(found, fd)| {
                let fd = fd.ok_or(Errno::EIO)?;
                let io = self
                    .passthrough
                    .opened(found.attr.ino.0, Backing::Upper, true, || {
                        reply.open_backing(&fd)
                    })?;
                Ok((found, fd, io))
            });
        match created {
            Ok((found, fd, io)) => {
                let fa = self.entry(parent, name, &found);
                let fh = self.insert_file(fa.ino.0, fd, flags, LayerIdx::UPPER, 0);
                let keep = FopenFlags::FOPEN_KEEP_CACHE;
                match io {
                    Io::Cached => reply.created(&TTL, &fa, Generation(0), fh, keep),
                    Io::Passthrough(id) => reply.created_passthrough(
                        &TTL,
                        &fa,
                        Generation(0),
                        fh,
                        FopenFlags::empty(),
                        &id,
                    ),
                }
            }
            Err(e) => reply.error(to_fuse(e)),
        }
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
        let res = self.with_fd(ino, fh, |fd| {
            let flags = nix::fcntl::FallocateFlags::from_bits_retain(mode);
            let off = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
            let len = i64::try_from(length).map_err(|_| Errno::EINVAL)?;
            nix::fcntl::fallocate(fd, flags, off, len)
        });
        reply_empty(reply, res)
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
        let res = self.with_fd(ino, fh, |fd| {
            let whence = match whence {
                libc::SEEK_DATA => nix::unistd::Whence::SeekData,
                libc::SEEK_HOLE => nix::unistd::Whence::SeekHole,
                libc::SEEK_SET => nix::unistd::Whence::SeekSet,
                libc::SEEK_END => nix::unistd::Whence::SeekEnd,
                _ => return Err(Errno::EINVAL),
            };
            nix::unistd::lseek(fd, offset, whence)
        });
        match res {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(to_fuse(e)),
        }
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
        let res = self.with_fd(ino_in, fh_in, |fd_in| {
            self.with_fd(ino_out, fh_out, |fd_out| {
                let mut off_in = i64::try_from(offset_in).map_err(|_| Errno::EINVAL)?;
                let mut off_out = i64::try_from(offset_out).map_err(|_| Errno::EINVAL)?;
                let len = usize::try_from(len).unwrap_or(usize::MAX).min(1 << 30);
                nix::fcntl::copy_file_range(
                    fd_in,
                    Some(&mut off_in),
                    fd_out,
                    Some(&mut off_out),
                    len,
                )
            })
        });
        match res {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(to_fuse(e)),
        }
    }
}

/// Replies to a request that returns no data.
fn reply_empty(reply: ReplyEmpty, res: Result<(), Errno>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(to_fuse(e)),
    }
}

/// Replies with `value`, or only its size when the caller asked for the size (`size` 0).
fn reply_sized(reply: ReplyXattr, size: u32, value: &[u8]) {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(to_fuse(Errno::ERANGE));
    } else {
        reply.data(value);
    }
}

/// access(2) by the mode bits (the kernel checks everything else with
/// `default_permissions`; this answers the explicit call).
fn may_access(st: &nix::sys::stat::FileStat, uid: u32, gid: u32, mask: i32) -> bool {
    if mask == libc::F_OK {
        return true;
    }
    let mode = st.st_mode;
    if uid == 0 {
        // Root may execute only what someone may execute.
        return mask & libc::X_OK == 0 || mode & 0o111 != 0 || mode & libc::S_IFMT == libc::S_IFDIR;
    }
    let bits = if st.st_uid == uid {
        (mode >> 6) & 7
    } else if st.st_gid == gid {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    let want = u32::try_from(mask & 7).unwrap_or(7);
    bits & want == want
}
