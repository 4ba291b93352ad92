//! Copying a file's data inside the kernel: shared blocks (`FICLONE`) where the filesystem
//! can, else `copy_file_range`, else `sendfile`, else read and write; holes stay holes. (No
//! `unsafe`; it lives here, the lowest room, so `layers`' copy-up and `policy`'s commit share
//! it.)

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::unistd::{Whence, ftruncate, lseek};

/// Copies `size` bytes of `src` into the empty `dst`: shared blocks where the filesystem can,
/// else the data ranges only, so holes stay holes.
pub(crate) fn copy_data(src: &OwnedFd, dst: &OwnedFd, size: i64) -> Result<(), Errno> {
    if size == 0 || super::ficlone(dst, src).is_ok() {
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
