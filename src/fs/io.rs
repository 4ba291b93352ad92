//! Data requests on open files: read, write, sync, allocate, seek, copy.

use std::os::fd::{AsFd, BorrowedFd};

use fuser::{FileHandle, INodeNo, ReplyData, ReplyEmpty, ReplyLseek, ReplyWrite};
use nix::errno::Errno;

use super::handles::Handle;
use super::{OverlayFs, reply_empty, to_fuse};

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

/// A byte offset from FUSE as the signed offset the system calls take.
fn offset(off: u64) -> Result<i64, Errno> {
    i64::try_from(off).map_err(|_| Errno::EINVAL)
}

impl OverlayFs {
    /// Runs `f` on the current fd of open file `fh`: the upper copy once another open has
    /// copied the node up.
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

    /// READ.
    pub(super) fn read_data(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        off: u64,
        size: u32,
        reply: ReplyData,
    ) {
        let res = self.with_fd(ino, fh, |fd| {
            read_at(fd, usize::try_from(size).unwrap_or(0), offset(off)?)
        });
        match res {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(to_fuse(e)),
        }
    }

    /// WRITE.
    pub(super) fn write_data(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        off: u64,
        data: &[u8],
        reply: ReplyWrite,
    ) {
        let res = self.with_fd(ino, fh, |fd| {
            let off = offset(off)?;
            let mut done = 0;
            while done < data.len() {
                done += nix::sys::uio::pwrite(
                    fd,
                    &data[done..],
                    off + i64::try_from(done).unwrap_or(0),
                )?;
            }
            Ok(done)
        });
        match res {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(to_fuse(e)),
        }
    }

    /// FSYNC.
    pub(super) fn sync_data(
        &self,
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
        reply_empty(reply, res);
    }

    /// FALLOCATE.
    pub(super) fn allocate(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        off: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let res = self.with_fd(ino, fh, |fd| {
            let flags = nix::fcntl::FallocateFlags::from_bits_retain(mode);
            let len = i64::try_from(length).map_err(|_| Errno::EINVAL)?;
            nix::fcntl::fallocate(fd, flags, offset(off)?, len)
        });
        reply_empty(reply, res);
    }

    /// LSEEK (only `SEEK_DATA` and `SEEK_HOLE` reach a server in practice).
    pub(super) fn seek(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        off: i64,
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
            nix::unistd::lseek(fd, off, whence)
        });
        match res {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(to_fuse(e)),
        }
    }

    /// COPY_FILE_RANGE between two open files.
    pub(super) fn copy_range(
        &self,
        (ino_in, fh_in, offset_in): (INodeNo, FileHandle, u64),
        (ino_out, fh_out, offset_out): (INodeNo, FileHandle, u64),
        len: u64,
        reply: ReplyWrite,
    ) {
        let res = self.with_fd(ino_in, fh_in, |fd_in| {
            self.with_fd(ino_out, fh_out, |fd_out| {
                let mut off_in = offset(offset_in)?;
                let mut off_out = offset(offset_out)?;
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
