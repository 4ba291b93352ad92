//! Extended attributes by path, without following a trailing symlink (the `l*xattr` calls).
//!
//! ovlrun reaches files through directory fds; it names an entry as
//! `/proc/self/fd/<dirfd>/<name>`, which the kernel resolves through the fd, so these calls
//! act on exactly the entry the fd-based code found, symlinks included.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use nix::errno::Errno;

fn cstr(bytes: &[u8]) -> nix::Result<CString> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

/// Reads attribute `name` of `path` whole, growing the buffer when the value grows between
/// the size query and the read.
///
/// # Errors
/// `ENODATA` when the attribute is absent; any error of `lgetxattr(2)`.
pub(crate) fn get(path: &Path, name: &OsStr) -> nix::Result<Vec<u8>> {
    let path = cstr(path.as_os_str().as_bytes())?;
    let name = cstr(name.as_bytes())?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // SAFETY: both strings are NUL-terminated and live across the call; a null buffer
        // with size 0 asks only for the value's length.
        let size =
            unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        let size = usize::try_from(Errno::result(size)?).map_err(|_| Errno::EOVERFLOW)?;
        buf.resize(size, 0);
        // SAFETY: `buf` has exactly `buf.len()` writable bytes, which is the size we pass.
        let got = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        match Errno::result(got) {
            Ok(n) => {
                buf.truncate(usize::try_from(n).map_err(|_| Errno::EOVERFLOW)?);
                return Ok(buf);
            }
            Err(Errno::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Lists the attribute names of `path`.
///
/// # Errors
/// Any error of `llistxattr(2)`.
pub(crate) fn list(path: &Path) -> nix::Result<Vec<OsString>> {
    let path = cstr(path.as_os_str().as_bytes())?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // SAFETY: NUL-terminated path; null buffer with size 0 asks for the list's length.
        let size = unsafe { libc::llistxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
        let size = usize::try_from(Errno::result(size)?).map_err(|_| Errno::EOVERFLOW)?;
        if size == 0 {
            return Ok(Vec::new());
        }
        buf.resize(size, 0);
        // SAFETY: `buf` has exactly `buf.len()` writable bytes, which is the size we pass.
        let got = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        match Errno::result(got) {
            Ok(n) => {
                buf.truncate(usize::try_from(n).map_err(|_| Errno::EOVERFLOW)?);
                return Ok(buf
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(|n| OsString::from_vec(n.to_vec()))
                    .collect());
            }
            Err(Errno::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Sets attribute `name` of `path`; `flags` is `XATTR_CREATE`, `XATTR_REPLACE` or 0.
///
/// # Errors
/// Any error of `lsetxattr(2)`.
pub(crate) fn set(path: &Path, name: &OsStr, value: &[u8], flags: i32) -> nix::Result<()> {
    let path = cstr(path.as_os_str().as_bytes())?;
    let name = cstr(name.as_bytes())?;
    // SAFETY: NUL-terminated strings; `value` is readable for `value.len()` bytes.
    let res = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    Errno::result(res).map(drop)
}

/// Removes attribute `name` of `path`.
///
/// # Errors
/// `ENODATA` when absent; any error of `lremovexattr(2)`.
pub(crate) fn remove(path: &Path, name: &OsStr) -> nix::Result<()> {
    let path = cstr(path.as_os_str().as_bytes())?;
    let name = cstr(name.as_bytes())?;
    // SAFETY: both strings are NUL-terminated and live across the call.
    let res = unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) };
    Errno::result(res).map(drop)
}
