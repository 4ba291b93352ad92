//! Copy-up: bringing a lower object into the upper before it is changed.
//!
//! Atomic: the copy is built in the scratch directory (on the upper's filesystem), complete
//! with data, owner, mode, xattrs and times, then renamed into place. A crash leaves either
//! no upper copy or a whole one. Parents are copied first; symlinks are copied as symlinks.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, readlinkat, renameat2};
use nix::sys::stat::{
    FileStat, Mode, SFlag, UtimensatFlags, fchmod, fstat, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat, ftruncate, symlinkat};

use super::format::{METACOPY_XATTR, is_escaped_xattr, is_private_xattr, is_whiteout};
use super::index::is_multi_link;
use super::metacopy::marker;
use super::walk::{proc_path, remove_tree, split};
use super::{Ino, LayerIdx, Loc, Overlay, is_dir};
use crate::sys;

impl Overlay {
    /// Makes sure the object at `loc` has its own copy in the upper.
    ///
    /// # Errors
    /// `ENOENT` when the object is gone; any error of the copy.
    pub(crate) fn copy_up(&self, loc: &Loc) -> Result<(), Errno> {
        if let Some(st) = self.upper_stat(&loc.path)? {
            return if is_whiteout(&st) {
                Err(Errno::ENOENT)
            } else {
                // A metadata-only copy gets its data now.
                self.complete_stub(&loc.path)
            };
        }
        let Some((parent, name)) = split(&loc.path) else {
            return Ok(()); // the upper root always exists
        };
        self.ensure_upper_dir(parent)?;
        let layer = *loc.lowers.first().ok_or(Errno::ENOENT)?;
        self.copy_from(layer, parent, name, true)
    }

    /// Makes sure merged directory `path` exists in the upper, copying each missing parent
    /// from the topmost lower that holds it.
    pub(crate) fn ensure_upper_dir(&self, path: &Path) -> Result<(), Errno> {
        let mut prefix = Path::new("").to_path_buf();
        for comp in path.components() {
            let parent = prefix.clone();
            prefix.push(comp);
            match self.upper_stat(&prefix)? {
                Some(st) if is_dir(&st) => continue,
                Some(_) => return Err(Errno::EIO),
                None => {}
            }
            let name = prefix.file_name().ok_or(Errno::EINVAL)?;
            let source = (1..self.layers.len())
                .map(|i| LayerIdx(u16::try_from(i).unwrap_or(u16::MAX)))
                .find(|l| matches!(self.stat_in(*l, &prefix), Ok(Some(st)) if is_dir(&st)))
                .ok_or(Errno::ENOENT)?;
            self.copy_from(source, &parent, name, true)?;
        }
        Ok(())
    }

    /// Copies entry `name` of directory `parent` from `layer` into the same place in the
    /// upper, whose parent directory exists; without `data`, a regular file becomes a stub
    /// (see `metacopy.rs`).
    pub(crate) fn copy_from(
        &self,
        layer: LayerIdx,
        parent: &Path,
        name: &OsStr,
        data: bool,
    ) -> Result<(), Errno> {
        let src_dir = self.dir_fd(layer, parent)?;
        let st = super::walk::stat_at(src_dir.as_fd(), name)?.ok_or(Errno::ENOENT)?;
        let ino = Ino::compose(self.fs_index(layer), st.st_ino);
        let dst_dir = self.dir_fd(LayerIdx::UPPER, parent)?;
        let linked = is_multi_link(&st);
        let source = Source {
            layer,
            dir: &src_dir,
            st: &st,
            ino,
            data,
        };
        let res = keeping_times(dst_dir.as_fd(), || {
            self.copy_into(&source, &dst_dir, parent, name, linked)
        })?;
        if res.is_ok() {
            self.copy_ups
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        res
    }

    fn copy_into(
        &self,
        src: &Source<'_>,
        dst_dir: &OwnedFd,
        parent: &Path,
        name: &OsStr,
        linked: bool,
    ) -> Result<(), Errno> {
        let (st, ino) = (src.st, src.ino);
        if linked && self.link_from_index(ino, dst_dir.as_fd(), name)? {
            return Ok(());
        }
        let tmp = self.temp_name();
        let scratch = self.scratch();
        let built = self.build_copy(src, parent, name, &tmp).and_then(|()| {
            if linked {
                self.add_to_index(&tmp, ino, st.st_nlink)
            } else {
                Ok(true)
            }
        });
        match built {
            Ok(true) => {}
            // Another name of this object was copied up meanwhile: join that copy.
            Ok(false) => {
                remove_tree(scratch, &tmp)?;
                self.link_from_index(ino, dst_dir.as_fd(), name)?;
                return Ok(());
            }
            Err(e) => {
                let _ = remove_tree(scratch, &tmp);
                return Err(e);
            }
        }
        match renameat2(
            scratch,
            tmp.as_os_str(),
            dst_dir.as_fd(),
            name,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {
                if super::is_dir(st) {
                    self.upper_dir_created();
                }
                Ok(())
            }
            // Another thread copied it up first; its copy is as good as ours.
            Err(Errno::EEXIST) => remove_tree(scratch, &tmp),
            Err(e) => {
                let _ = remove_tree(scratch, &tmp);
                Err(e)
            }
        }
    }

    pub(crate) fn build_copy(
        &self,
        src: &Source<'_>,
        parent: &Path,
        name: &OsStr,
        tmp: &OsStr,
    ) -> Result<(), Errno> {
        let (layer, src_dir, st, ino) = (src.layer, src.dir, src.st, src.ino);
        let scratch = self.scratch();
        let perm = Mode::from_bits_truncate(st.st_mode & 0o7777);
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {
                let dst = nix::fcntl::openat(
                    scratch,
                    tmp,
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )?;
                if src.data {
                    let data = self.open_in(layer, &parent.join(name), OFlag::O_RDONLY)?;
                    sys::copy::copy_data(&data, &dst, st.st_size)?;
                } else {
                    ftruncate(dst.as_fd(), st.st_size)?;
                }
                set_owner(scratch, tmp, st)?;
                fchmod(dst.as_fd(), perm)?;
                copy_xattrs(src_dir.as_fd(), name, scratch, tmp)?;
                self.mark_origin(scratch, tmp, ino)?;
                if !src.data {
                    sys::xattr::set(
                        &proc_path(scratch, tmp),
                        OsStr::new(METACOPY_XATTR),
                        &marker(layer),
                        0,
                    )?;
                }
                set_times(scratch, tmp, st)?;
                // A durable overlay: the data is on disk before the rename can be, so a crash
                // never shows an empty or short copy. Otherwise the whole upper is synced
                // once at the end, or thrown away.
                if self.durable {
                    nix::unistd::fsync(dst.as_fd())?;
                    self.synced_copy_ups
                        .fetch_add(1, std::sync::atomic::Ordering::Release);
                }
            }
            libc::S_IFDIR => {
                mkdirat(scratch, tmp, Mode::from_bits_truncate(0o700))?;
                set_owner(scratch, tmp, st)?;
                nix::sys::stat::fchmodat(
                    scratch,
                    tmp,
                    perm,
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )?;
                copy_xattrs(src_dir.as_fd(), name, scratch, tmp)?;
                self.mark_origin(scratch, tmp, ino)?;
                set_times(scratch, tmp, st)?;
            }
            libc::S_IFLNK => {
                let target = readlinkat(src_dir.as_fd(), name)?;
                symlinkat(target.as_os_str(), scratch, tmp)?;
                set_owner(scratch, tmp, st)?;
                copy_xattrs(src_dir.as_fd(), name, scratch, tmp)?;
                self.mark_origin(scratch, tmp, ino)?;
                set_times(scratch, tmp, st)?;
            }
            kind => {
                let sflag = SFlag::from_bits_truncate(kind);
                mknodat(scratch, tmp, sflag, perm, st.st_rdev)?;
                set_owner(scratch, tmp, st)?;
                copy_xattrs(src_dir.as_fd(), name, scratch, tmp)?;
                self.mark_origin(scratch, tmp, ino)?;
                set_times(scratch, tmp, st)?;
            }
        }
        Ok(())
    }
}

/// The object a copy-up copies: its metadata and xattrs from `dir`/`st`, its data from
/// `layer` at the same path.
pub(crate) struct Source<'a> {
    pub(crate) layer: LayerIdx,
    pub(crate) dir: &'a OwnedFd,
    pub(crate) st: &'a FileStat,
    pub(crate) ino: Ino,
    /// Copy a regular file's data (else make a stub).
    pub(crate) data: bool,
}

/// Runs `f`, which puts an entry into upper directory `dir`, then gives `dir` back the times
/// it had: the merged view must not see that change (the kernel overlayfs restores them
/// too). The times are restored whether `f` failed or not.
pub(crate) fn keeping_times<T>(
    dir: BorrowedFd<'_>,
    f: impl FnOnce() -> Result<T, Errno>,
) -> Result<Result<T, Errno>, Errno> {
    let before = fstat(dir)?;
    let res = f();
    set_times(dir, OsStr::new("."), &before)?;
    Ok(res)
}

/// Gives the copy the original's owner. Where we may not (a rootless session whose id map
/// lacks the owner), the copy stays ours: the kernel would refuse the copy-up instead.
fn set_owner(dir: BorrowedFd<'_>, name: &OsStr, st: &FileStat) -> Result<(), Errno> {
    match fchownat(
        dir,
        name,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(()) | Err(Errno::EPERM | Errno::EINVAL) => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_times(dir: BorrowedFd<'_>, name: &OsStr, st: &FileStat) -> Result<(), Errno> {
    let atime = TimeSpec::new(st.st_atime, st.st_atime_nsec);
    let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
    utimensat(dir, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
}

/// Copies the user-visible xattrs of `src_dir/name` to `dst_dir/dst`; ones we may not set
/// (`trusted.*`, `security.*` without privilege) are left behind as the kernel does.
pub(crate) fn copy_xattrs(
    src_dir: BorrowedFd<'_>,
    name: &OsStr,
    dst_dir: BorrowedFd<'_>,
    dst: &OsStr,
) -> Result<(), Errno> {
    let src = proc_path(src_dir, name);
    let dst = proc_path(dst_dir, dst);
    let names = match sys::xattr::list(&src) {
        Ok(n) => n,
        Err(Errno::EOPNOTSUPP | Errno::EPERM | Errno::EACCES) => return Ok(()),
        Err(e) => return Err(e),
    };
    for xname in names
        .iter()
        .filter(|n| !is_private_xattr(n) || is_escaped_xattr(n))
    {
        let value = match sys::xattr::get(&src, xname) {
            Ok(v) => v,
            Err(Errno::ENODATA | Errno::EPERM | Errno::EACCES) => continue,
            Err(e) => return Err(e),
        };
        match sys::xattr::set(&dst, xname, &value, 0) {
            Ok(()) | Err(Errno::EPERM | Errno::EOPNOTSUPP | Errno::EACCES) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
