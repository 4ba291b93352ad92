//! The only home of `unsafe` in ovlrun: thin wrappers over the system calls that neither `nix`
//! nor the standard library offer in the form we need.
//!
//! Each wrapper takes borrowed fds or plain values, returns `nix::Result`, and says in one line
//! why its `unsafe` block is sound. Nothing here knows about overlays or FUSE.

pub(crate) mod xattr;

use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;

/// All of `from`, when it holds at most `limit` bytes; `None` when it holds more (a file a
/// user or a tree handed ovlrun is never read without a bound).
///
/// # Errors
/// Any read error.
pub(crate) fn read_at_most(
    from: impl std::io::Read,
    limit: u64,
) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    from.take(limit + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// Writes `bytes` to `path` atomically: a temp file beside it, fsync, rename, fsync of the
/// directory. (No `unsafe`; it lives here, the lowest room, so `session` and `policy` share
/// it without importing each other.)
///
/// # Errors
/// Any I/O error.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    write_replacing(path, bytes, true)
}

/// [`write_atomic`] without the syncs: whole old or whole new for every reader, but a crash
/// of the machine may leave the old (or an empty file). For what is worth nothing after one.
///
/// # Errors
/// As [`write_atomic`].
pub(crate) fn write_replacing_volatile(
    path: &std::path::Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    write_replacing(path, bytes, false)
}

fn write_replacing(path: &std::path::Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
    }
    std::fs::rename(&tmp, path)?;
    if sync {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Shares the data blocks of `src` with `dst` (`FICLONE`), where the filesystem can.
///
/// # Errors
/// `EOPNOTSUPP`, `EXDEV` or `EINVAL` when the filesystem or the pair cannot share blocks;
/// the caller then copies the data.
pub(crate) fn ficlone(dst: impl AsFd, src: impl AsFd) -> nix::Result<()> {
    // SAFETY: FICLONE takes the source fd as its integer argument and reads no memory of ours;
    // both fds are borrowed and stay open for the duration of the call.
    let res = unsafe {
        libc::ioctl(
            dst.as_fd().as_raw_fd(),
            libc::FICLONE as _,
            src.as_fd().as_raw_fd(),
        )
    };
    Errno::result(res).map(drop)
}

pub(crate) mod beneath;
pub(crate) mod copy;
pub(crate) mod fdpass;
pub(crate) mod mount;
pub(crate) mod net;
pub(crate) mod process;
pub(crate) mod seccomp;
pub(crate) mod term;
