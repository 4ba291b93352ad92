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
use nix::unistd::{Gid, Uid, Whence, fchownat, ftruncate, lseek, symlinkat};

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
                    copy_data(&data, &dst, st.st_size)?;
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
                nix::unistd::fsync(dst.as_fd())?;
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

/// Copies `size` bytes of `src` into the empty `dst`: shared blocks where the filesystem can,
/// else the data ranges only, so holes stay holes.
fn copy_data(src: &OwnedFd, dst: &OwnedFd, size: i64) -> Result<(), Errno> {
    if size == 0 || sys::ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let mut offset: i64 = 0;
    while offset < size {
        let data = match lseek(src.as_fd(), offset, Whence::SeekData) {
            Ok(d) => d,
            Err(Errno::ENXIO) => break, // only a hole is left
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => offset, // no hole support: copy all
            Err(e) => return Err(e),
        };
        let hole = match lseek(src.as_fd(), data, Whence::SeekHole) {
            Ok(h) => h,
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => size,
            Err(e) => return Err(e),
        };
        copy_range(src, dst, data, hole - data)?;
        offset = hole;
    }
    ftruncate(dst.as_fd(), size)
}

/// Copies `len` bytes at `offset` from `src` to the same offset in `dst`.
pub(crate) fn copy_range(src: &OwnedFd, dst: &OwnedFd, offset: i64, len: i64) -> Result<(), Errno> {
    let (mut off_in, mut off_out) = (offset, offset);
    let end = offset + len;
    while off_in < end {
        let want = usize::try_from(end - off_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match nix::fcntl::copy_file_range(
            src.as_fd(),
            Some(&mut off_in),
            dst.as_fd(),
            Some(&mut off_out),
            want,
        ) {
            Ok(0) => break,
            Ok(_) => {}
            // Across filesystems (the usual rootfs and state dir) copy_file_range refuses.
            Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                return copy_range_spliced(src, dst, off_in, end - off_in);
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// [`copy_range`] where copy_file_range cannot: sendfile(2) moves the data inside the
/// kernel (a splice, as the kernel overlayfs's own copy-up does), else read and write.
fn copy_range_spliced(
    src: &OwnedFd,
    dst: &OwnedFd,
    mut offset: i64,
    len: i64,
) -> Result<(), Errno> {
    let end = offset + len;
    // sendfile writes at the file offset of `dst`.
    lseek(dst.as_fd(), offset, Whence::SeekSet)?;
    while offset < end {
        let want = usize::try_from(end - offset)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match nix::sys::sendfile::sendfile64(dst.as_fd(), src.as_fd(), Some(&mut offset), want) {
            Ok(0) => break,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::EINVAL | Errno::ENOSYS) => {
                return copy_range_rw(src, dst, offset, end - offset);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn copy_range_rw(src: &OwnedFd, dst: &OwnedFd, mut offset: i64, len: i64) -> Result<(), Errno> {
    let end = offset + len;
    let mut buf = vec![0u8; 1 << 20];
    while offset < end {
        let want = usize::try_from(end - offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = nix::sys::uio::pread(src.as_fd(), &mut buf[..want], offset)?;
        if n == 0 {
            break;
        }
        let mut done = 0;
        while done < n {
            done += nix::sys::uio::pwrite(
                dst.as_fd(),
                &buf[done..n],
                offset + i64::try_from(done).unwrap_or(0),
            )?;
        }
        offset += i64::try_from(n).unwrap_or(0);
    }
    Ok(())
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
