//! Making new entries: files, directories, symlinks, special files, hard links.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, renameat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, mkdirat, mknodat};
use nix::unistd::{Gid, Uid, fchownat, linkat, symlinkat};

use super::format::{self, is_whiteout};
use super::lookup::check_name;
use super::walk::{remove_tree, stat_at};
use super::{Found, LayerIdx, Loc, Lowers, Overlay};

/// What to create.
#[derive(Clone, Debug)]
pub(crate) enum NewNode {
    /// A regular file, opened with these flags (access mode and status flags).
    File {
        /// Permission bits (umask already applied).
        mode: u32,
        /// Open flags for the returned fd.
        flags: OFlag,
    },
    /// A directory.
    Dir {
        /// Permission bits (umask already applied).
        mode: u32,
    },
    /// A symlink to `target`.
    Symlink {
        /// The link's content.
        target: PathBuf,
    },
    /// A fifo, socket or device node.
    Special {
        /// Type and permission bits.
        mode: u32,
        /// Device number for devices.
        rdev: u64,
    },
    /// A new name for the existing non-directory at `source`.
    HardLink {
        /// The object to link to.
        source: Loc,
    },
}

/// Who the new entry belongs to: the caller's ids.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Owner {
    /// The caller's uid.
    pub uid: u32,
    /// The caller's gid.
    pub gid: u32,
}

impl Overlay {
    /// Creates `name` in merged directory `parent`. For files, also returns the open fd.
    ///
    /// Over a whiteout the new entry is built in the scratch dir and exchanged with the
    /// whiteout in one rename, and a new directory there is made opaque, so the deleted lower
    /// entry never shows through, not even after a crash.
    ///
    /// # Errors
    /// `EEXIST` when the merged view has the name; `EPERM` for a char device 0:0 (the
    /// whiteout), as the kernel overlayfs answers; `EINVAL` for names of the AUFS vocabulary
    /// in an AUFS-format upper (a kernel-format upper holds them as files).
    pub(crate) fn create(
        &self,
        parent: &Loc,
        name: &OsStr,
        node: &NewNode,
        owner: Owner,
    ) -> Result<(Found, Option<OwnedFd>), Errno> {
        check_name(name)?;
        if format::is_aufs_name(name) && self.reads_aufs(LayerIdx::UPPER) {
            return Err(Errno::EINVAL);
        }
        if let NewNode::Special { mode, rdev } = node {
            if mode & libc::S_IFMT == libc::S_IFCHR && *rdev == 0 {
                return Err(Errno::EPERM);
            }
        }
        match self.lookup(parent, name) {
            Ok(_) => return Err(Errno::EEXIST),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        if let NewNode::HardLink { source } = node {
            self.copy_up(source)?;
        }
        self.ensure_upper_dir(&parent.path)?;
        let dir = self.dir_fd(LayerIdx::UPPER, &parent.path)?;
        let dir = dir.as_fd();
        let parent_st = fstat(dir)?;
        let over_whiteout = match stat_at(dir, name)? {
            Some(st) if is_whiteout(&st) => true,
            Some(_) => return Err(Errno::EEXIST),
            None => false,
        };
        let fd = if over_whiteout {
            let tmp = self.temp_name();
            let scratch = self.scratch();
            let made = self
                .make(scratch, &tmp, node, owner, &parent_st)
                .and_then(|fd| {
                    if matches!(node, NewNode::Dir { .. }) {
                        self.write_opaque(scratch, &tmp)?;
                    }
                    Ok(fd)
                });
            let fd = match made {
                Ok(fd) => fd,
                Err(e) => {
                    let _ = remove_tree(scratch, &tmp);
                    return Err(e);
                }
            };
            renameat2(
                scratch,
                tmp.as_os_str(),
                dir,
                name,
                RenameFlags::RENAME_EXCHANGE,
            )?;
            remove_tree(scratch, &tmp)?;
            fd
        } else {
            let aufs_marker =
                self.reads_aufs(LayerIdx::UPPER) && format::has_aufs_whiteout(dir, name)?;
            let fd = self.make(dir, name, node, owner, &parent_st)?;
            if aufs_marker {
                if matches!(node, NewNode::Dir { .. }) {
                    self.write_opaque(dir, name)?;
                }
                super::remove::drop_aufs_whiteout(dir, name)?;
            }
            fd
        };
        if matches!(node, NewNode::Dir { .. }) {
            self.upper_dir_created();
        }
        let mut st = stat_at(dir, name)?.ok_or(Errno::ENOENT)?;
        let ino = self.ino_of(LayerIdx::UPPER, dir, name, &st)?;
        self.index_nlink(ino, &mut st)?;
        let found = Found {
            loc: Loc {
                path: parent.child_path(name),
                lowers: Lowers::from(Vec::new()),
            },
            attr: super::Attr { ino, st },
        };
        Ok((found, fd))
    }

    /// Makes the entry `name` in real directory `dir` (upper parent or scratch) and gives it
    /// the caller's owner.
    fn make(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        node: &NewNode,
        owner: Owner,
        parent_st: &FileStat,
    ) -> Result<Option<OwnedFd>, Errno> {
        let mut fd = None;
        match node {
            NewNode::File { mode, flags } => {
                let flags = (*flags & !(OFlag::O_TRUNC | OFlag::O_DIRECTORY))
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_CLOEXEC
                    | OFlag::O_NOFOLLOW;
                fd = Some(nix::fcntl::openat(
                    dir,
                    name,
                    flags,
                    Mode::from_bits_truncate(*mode),
                )?);
            }
            NewNode::Dir { mode } => mkdirat(dir, name, Mode::from_bits_truncate(*mode))?,
            NewNode::Symlink { target } => symlinkat(target.as_os_str(), dir, name)?,
            NewNode::Special { mode, rdev } => mknodat(
                dir,
                name,
                SFlag::from_bits_truncate(mode & libc::S_IFMT),
                Mode::from_bits_truncate(mode & 0o7777),
                *rdev,
            )?,
            NewNode::HardLink { source } => {
                let (sparent, sname) = super::walk::split(&source.path).ok_or(Errno::EPERM)?;
                let sdir = self.dir_fd(LayerIdx::UPPER, sparent)?;
                linkat(sdir.as_fd(), sname, dir, name, AtFlags::empty())?;
                // A hard link keeps the owner and mode of the object it names.
                return Ok(None);
            }
        }
        self.give_to(dir, name, node, owner, parent_st)?;
        Ok(fd)
    }

    /// Sets the new entry's owner: the caller's uid, and the caller's gid unless the parent
    /// directory is set-group-ID (then its gid, and new directories inherit the bit).
    fn give_to(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        node: &NewNode,
        owner: Owner,
        parent_st: &FileStat,
    ) -> Result<(), Errno> {
        let sgid_parent = parent_st.st_mode & libc::S_ISGID != 0;
        let gid = if sgid_parent {
            parent_st.st_gid
        } else {
            owner.gid
        };
        match fchownat(
            dir,
            name,
            Some(Uid::from_raw(owner.uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            // Rootless with a one-id map: the entry stays ours.
            Ok(()) | Err(Errno::EPERM | Errno::EINVAL) => {}
            Err(e) => return Err(e),
        }
        // Set the exact mode asked for: the kernel has applied the caller's umask, the
        // server's own must not apply again, chown has cleared set-ID bits, and a directory
        // built in the scratch dir has not inherited the parent's set-group-ID bit.
        let mode = match node {
            NewNode::Dir { mode } if sgid_parent => Some((mode & 0o7777) | libc::S_ISGID),
            NewNode::Dir { mode } | NewNode::File { mode, .. } | NewNode::Special { mode, .. } => {
                Some(mode & 0o7777)
            }
            NewNode::Symlink { .. } | NewNode::HardLink { .. } => None,
        };
        if let Some(mode) = mode {
            nix::sys::stat::fchmodat(
                dir,
                name,
                Mode::from_bits_truncate(mode),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )?;
        }
        Ok(())
    }
}
