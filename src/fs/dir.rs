//! Directories: looking names up, listing them, and making, removing and renaming entries.

use std::ffi::OsStr;
use std::path::Path;

use fuser::{
    FileHandle, FopenFlags, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, Request,
};
use nix::errno::Errno;
use nix::fcntl::OFlag;

use super::handles::Handle;
use super::{OverlayFs, TTL, attr, reply_empty, to_fuse};
use crate::layers::{DirEntry, Found, Loc, NewNode, Overlay, Owner};

impl OverlayFs {
    /// LOOKUP.
    pub(super) fn lookup_name(&self, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
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

    /// Makes `node` as `name` in directory `parent`, owned by the caller of `req`.
    pub(super) fn create_node(
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

    /// MKNOD, MKDIR, SYMLINK and LINK: makes `node` and replies with its entry.
    fn make_entry(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        node: NewNode,
        reply: ReplyEntry,
    ) {
        let res = self.create_node(req, parent, name, node).map(|(f, _)| f);
        self.reply_entry(parent, name, res, reply);
    }

    /// MKNOD: a regular file is made empty, anything else as a special file.
    pub(super) fn make_node(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
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
        self.make_entry(req, parent, name, node, reply);
    }

    /// MKDIR.
    pub(super) fn make_dir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        reply: ReplyEntry,
    ) {
        self.make_entry(req, parent, name, NewNode::Dir { mode }, reply);
    }

    /// SYMLINK.
    pub(super) fn make_symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let node = NewNode::Symlink {
            target: target.to_owned(),
        };
        self.make_entry(req, parent, name, node, reply);
    }

    /// LINK.
    pub(super) fn make_link(
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

    /// Removes `name` from directory `parent` with `remove` (unlink or rmdir) and forgets the
    /// name's node alias.
    pub(super) fn remove_name(
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

    /// RENAME: the overlay moves the name, and the node table follows its outcome.
    pub(super) fn rename_entry(
        &self,
        (parent, name): (INodeNo, &OsStr),
        (newparent, newname): (INodeNo, &OsStr),
        flags: nix::fcntl::RenameFlags,
        reply: ReplyEmpty,
    ) {
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

    /// OPENDIR. The listing is taken at the first read: a directory opened only to be
    /// walked by fd (openat, fchdir) costs nothing.
    pub(super) fn open_dir(&self, ino: INodeNo, reply: ReplyOpen) {
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

    /// READDIR.
    pub(super) fn list_dir(
        &self,
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

    /// READDIRPLUS: each entry with its attributes, and counted as a kernel lookup.
    pub(super) fn list_dir_plus(
        &self,
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
}
