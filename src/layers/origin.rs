//! Where a copied-up object came from, so its inode number survives copy-up and remounts.
//!
//! Recorded in the upper copy's [`INO_XATTR`]; where the upper takes no `user.` xattr on
//! that object (symlinks never do; some filesystems never do), in the origin map
//! `work/ovlrun-origin/<upper inode number>`, a symlink whose target is the number.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::fcntl::readlinkat;
use nix::sys::stat::FileStat;
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};

use super::format::INO_XATTR;
use super::walk::{proc_path, stat_at};
use super::{Ino, LayerIdx, Overlay};
use crate::sys;

/// Name of the origin map inside the work directory.
pub(crate) const ORIGIN_DIR: &str = "ovlrun-origin";

fn key(st: &FileStat) -> OsString {
    OsString::from(st.st_ino.to_string())
}

impl Overlay {
    /// True when the origin of this upper object lives in the map rather than an xattr.
    fn origin_in_map(&self, st: &FileStat) -> bool {
        !self.upper_xattrs || st.st_mode & libc::S_IFMT == libc::S_IFLNK
    }

    /// Records that entry `name` of upper-side directory `dir` is a copy of `ino`.
    pub(crate) fn mark_origin(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        ino: Ino,
    ) -> Result<(), Errno> {
        let st = stat_at(dir, name)?.ok_or(Errno::ENOENT)?;
        if !self.origin_in_map(&st) {
            return match sys::xattr::set(
                &proc_path(dir, name),
                OsStr::new(INO_XATTR),
                &ino.to_xattr(),
                0,
            ) {
                Ok(()) | Err(Errno::EPERM | Errno::EOPNOTSUPP) => Ok(()),
                Err(e) => Err(e),
            };
        }
        let map = self.origins.as_fd();
        let key = key(&st);
        match unlinkat(map, key.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        symlinkat(ino.0.to_string().as_str(), map, key.as_os_str())
    }

    /// The recorded origin of upper entry `name` of `dir`, if any.
    pub(crate) fn origin_of(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &FileStat,
    ) -> Result<Option<Ino>, Errno> {
        let value = if self.origin_in_map(st) {
            match readlinkat(self.origins.as_fd(), key(st).as_os_str()) {
                Ok(v) => v.into_encoded_bytes(),
                Err(Errno::ENOENT) => return Ok(None),
                Err(e) => return Err(e),
            }
        } else {
            match sys::xattr::get(&proc_path(dir, name), OsStr::new(INO_XATTR)) {
                Ok(v) => v,
                Err(Errno::ENODATA | Errno::EOPNOTSUPP | Errno::EPERM | Errno::EACCES) => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Ino::parse(&value))
    }

    /// Drops the map entry of an upper object that is going away with its last name (an
    /// inode number the filesystem may reuse must not inherit the origin).
    pub(crate) fn forget_origin(&self, st: &FileStat) -> Result<(), Errno> {
        if !self.origin_in_map(st) || st.st_nlink > 1 {
            return Ok(());
        }
        match unlinkat(
            self.origins.as_fd(),
            key(st).as_os_str(),
            UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The stable inode number of entry `name` of `dir` in `layer`.
    pub(crate) fn ino_of(
        &self,
        layer: LayerIdx,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &FileStat,
    ) -> Result<Ino, Errno> {
        if layer == LayerIdx::UPPER {
            if let Some(ino) = self.origin_of(dir, name, st)? {
                return Ok(ino);
            }
        }
        Ok(Ino::compose(self.fs_index(layer), st.st_ino))
    }
}
