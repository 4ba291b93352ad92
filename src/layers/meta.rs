//! Operations on one existing object: open, attributes, symlink targets, xattrs, statfs.
//! Anything that changes an object first copies it up.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, readlinkat};
use nix::sys::stat::{FchmodatFlags, Mode, UtimensatFlags, fchmodat, utimensat};
use nix::sys::statvfs::{Statvfs, fstatvfs};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat, ftruncate};

use super::format::{escape_xattr, is_whiteout, unescape_xattr};
use super::walk::{proc_path, split};
use super::{Attr, LayerIdx, Loc, Overlay};
use crate::sys;

/// True when an open with `flags` may change the file's data (so it needs the upper copy).
pub(crate) fn opens_for_writing(flags: OFlag) -> bool {
    flags.intersects(OFlag::O_WRONLY | OFlag::O_RDWR | OFlag::O_TRUNC)
}

/// A time to set.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SetTime {
    /// The current time.
    Now,
    /// This time.
    At(TimeSpec),
}

/// The changes of a setattr; `None` leaves a field as it is.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
}

fn timespec(t: Option<SetTime>) -> TimeSpec {
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(SetTime::Now) => TimeSpec::UTIME_NOW,
        Some(SetTime::At(ts)) => ts,
    }
}

/// The real entry behind a merged object: its layer, its parent directory, its name.
struct Real {
    layer: LayerIdx,
    dir: std::sync::Arc<OwnedFd>,
    name: OsString,
    /// The entry's stat when it is in the upper.
    upper_st: Option<nix::sys::stat::FileStat>,
}

impl Real {
    fn path(&self) -> std::path::PathBuf {
        proc_path(self.dir.as_fd(), &self.name)
    }
}

impl Overlay {
    fn real(&self, loc: &Loc) -> Result<Real, Errno> {
        let (parent, name) = match split(&loc.path) {
            Some((p, n)) => (p, n.to_owned()),
            None => (std::path::Path::new(""), OsString::new()),
        };
        if let Some(dir) = self.dir_fd_opt(LayerIdx::UPPER, parent)? {
            let st = if name.is_empty() {
                Some(nix::sys::stat::fstat(dir.as_fd())?)
            } else {
                super::walk::stat_at(dir.as_fd(), &name)?
            };
            match st {
                Some(st) if is_whiteout(&st) => return Err(Errno::ENOENT),
                Some(st) => {
                    return Ok(Real {
                        layer: LayerIdx::UPPER,
                        dir,
                        name,
                        upper_st: Some(st),
                    });
                }
                None => {}
            }
        }
        let layer = *loc.lowers.first().ok_or(Errno::ENOENT)?;
        let dir = self.dir_fd(layer, parent)?;
        if let Some(st) = super::walk::stat_at(dir.as_fd(), &name)? {
            if self.promote_if_indexed(loc, layer, &st)? {
                return self.real(loc);
            }
        }
        Ok(Real {
            layer,
            dir,
            name,
            upper_st: None,
        })
    }

    fn real_upper(&self, loc: &Loc) -> Result<Real, Errno> {
        self.copy_up(loc)?;
        let real = self.real(loc)?;
        debug_assert_eq!(real.layer, LayerIdx::UPPER);
        Ok(real)
    }

    /// Like [`Overlay::real_upper`] for a change of metadata only: a large lower file gets a
    /// metadata-only copy (see `metacopy.rs`).
    fn real_upper_meta(&self, loc: &Loc) -> Result<Real, Errno> {
        self.copy_up_meta(loc)?;
        let real = self.real(loc)?;
        debug_assert_eq!(real.layer, LayerIdx::UPPER);
        Ok(real)
    }

    /// Opens the object at `loc` with `flags`. Opening for writing (or with `O_TRUNC`)
    /// copies it up first; reading uses the topmost copy as it is.
    ///
    /// # Errors
    /// Any error of copy-up or open.
    pub(crate) fn open(&self, loc: &Loc, flags: OFlag) -> Result<OwnedFd, Errno> {
        self.open_top(loc, flags).map(|(fd, _)| fd)
    }

    /// Like [`Overlay::open`], also saying which layer the fd belongs to.
    ///
    /// # Errors
    /// Any error of copy-up or open.
    pub(crate) fn open_top(&self, loc: &Loc, flags: OFlag) -> Result<(OwnedFd, LayerIdx), Errno> {
        let writes = opens_for_writing(flags);
        let flags = flags & !(OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOCTTY | OFlag::O_DIRECT);
        let layer = if writes {
            self.copy_up(loc)?;
            LayerIdx::UPPER
        } else {
            let real = self.real(loc)?;
            match &real.upper_st {
                // A metadata-only copy reads its lower's data.
                Some(st) => self
                    .stub_data_layer(real.dir.as_fd(), &real.name, st)?
                    .unwrap_or(LayerIdx::UPPER),
                None => real.layer,
            }
        };
        Ok((self.open_in(layer, &loc.path, flags)?, layer))
    }

    /// Applies `changes` to the object at `loc` (copying it up) and returns its attributes.
    /// `fd`, when given, is an open handle of the object, used for truncation.
    ///
    /// # Errors
    /// Any error of copy-up or of the underlying calls.
    pub(crate) fn setattr(
        &self,
        loc: &Loc,
        changes: &SetAttr,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Attr, Errno> {
        let real = if changes.size.is_some() {
            self.real_upper(loc)?
        } else {
            self.real_upper_meta(loc)?
        };
        let (dir, name) = (real.dir.as_fd(), real.name.as_os_str());
        let name = if name.is_empty() {
            OsStr::new(".")
        } else {
            name
        };
        if changes.uid.is_some() || changes.gid.is_some() {
            fchownat(
                dir,
                name,
                changes.uid.map(Uid::from_raw),
                changes.gid.map(Gid::from_raw),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
        }
        if let Some(mode) = changes.mode {
            fchmodat(
                dir,
                name,
                Mode::from_bits_truncate(mode & 0o7777),
                FchmodatFlags::FollowSymlink,
            )?;
        }
        if let Some(size) = changes.size {
            let size = i64::try_from(size).map_err(|_| Errno::EFBIG)?;
            match fd {
                Some(fd) => ftruncate(fd, size)?,
                None => {
                    let file = self.open_in(LayerIdx::UPPER, &loc.path, OFlag::O_WRONLY)?;
                    ftruncate(file.as_fd(), size)?;
                }
            }
        }
        if changes.atime.is_some() || changes.mtime.is_some() {
            utimensat(
                dir,
                name,
                &timespec(changes.atime),
                &timespec(changes.mtime),
                UtimensatFlags::NoFollowSymlink,
            )?;
        }
        self.stat(loc)
    }

    /// Applies `changes` to an open upper file whose names are all gone (unlinked while
    /// open): the kernel still sets the times and size of its cached writes through it.
    /// The caller guarantees `fd` is an upper copy; a lower file is never changed.
    ///
    /// # Errors
    /// Any error of the underlying calls.
    pub(crate) fn setattr_unlinked(
        &self,
        fd: BorrowedFd<'_>,
        changes: &SetAttr,
    ) -> Result<nix::sys::stat::FileStat, Errno> {
        if changes.uid.is_some() || changes.gid.is_some() {
            nix::unistd::fchown(
                fd,
                changes.uid.map(Uid::from_raw),
                changes.gid.map(Gid::from_raw),
            )?;
        }
        if let Some(mode) = changes.mode {
            nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode & 0o7777))?;
        }
        if let Some(size) = changes.size {
            ftruncate(fd, i64::try_from(size).map_err(|_| Errno::EFBIG)?)?;
        }
        if changes.atime.is_some() || changes.mtime.is_some() {
            nix::sys::stat::futimens(fd, &timespec(changes.atime), &timespec(changes.mtime))?;
        }
        nix::sys::stat::fstat(fd)
    }

    /// The target of the symlink at `loc`.
    ///
    /// # Errors
    /// `EINVAL` when it is not a symlink.
    pub(crate) fn readlink(&self, loc: &Loc) -> Result<OsString, Errno> {
        let real = self.real(loc)?;
        readlinkat(real.dir.as_fd(), real.name.as_os_str())
    }

    /// The value of xattr `name` (see [`super::format::escape_xattr`] for the overlay namespaces).
    ///
    /// # Errors
    /// `ENODATA` when absent.
    pub(crate) fn getxattr(&self, loc: &Loc, name: &OsStr) -> Result<Vec<u8>, Errno> {
        sys::xattr::get(&self.real(loc)?.path(), &escape_xattr(name))
    }

    /// The xattr names of the object; the overlay's own markers left out.
    ///
    /// # Errors
    /// Any error of the layer.
    pub(crate) fn listxattr(&self, loc: &Loc) -> Result<Vec<OsString>, Errno> {
        let names = sys::xattr::list(&self.real(loc)?.path())?;
        Ok(names.iter().filter_map(|n| unescape_xattr(n)).collect())
    }

    /// Sets xattr `name` (copying the object up); `flags` as setxattr(2).
    ///
    /// # Errors
    /// Any error of the upper.
    pub(crate) fn setxattr(
        &self,
        loc: &Loc,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<(), Errno> {
        sys::xattr::set(
            &self.real_upper_meta(loc)?.path(),
            &escape_xattr(name),
            value,
            flags,
        )
    }

    /// Removes xattr `name` (copying the object up).
    ///
    /// # Errors
    /// `ENODATA` when absent.
    pub(crate) fn removexattr(&self, loc: &Loc, name: &OsStr) -> Result<(), Errno> {
        let real = escape_xattr(name);
        // Copying up just to learn the name is absent would change the upper for nothing.
        sys::xattr::get(&self.real(loc)?.path(), &real)?;
        sys::xattr::remove(&self.real_upper_meta(loc)?.path(), &real)
    }

    /// Filesystem statistics: those of the upper, where new data goes.
    ///
    /// # Errors
    /// Any error of fstatvfs(2).
    pub(crate) fn statfs(&self) -> Result<Statvfs, Errno> {
        fstatvfs(self.layer_root(LayerIdx::UPPER))
    }
}
