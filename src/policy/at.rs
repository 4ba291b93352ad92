//! Walking a tree by directory fd, so its depth is not bounded by PATH_MAX.
//!
//! Each directory is opened from its parent's fd (`openat`, `O_PATH`, never following a
//! symlink); an entry is then reached as `/proc/self/fd/<dir>/<name>`, a short path the
//! kernel resolves through the fd, so the path-taking calls (`lstat`, `l*xattr`, `open` of
//! a regular file, `readlink`) work at any depth and act on exactly the entry the walk found.
//! A walk holds one fd per level it is in.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::Mode;

use super::beneath;

const DIR: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Opens the top of a walk.
///
/// # Errors
/// Any error of open(2).
pub(crate) fn open_top(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(open(path, DIR, Mode::empty())?)
}

/// Opens directory `name` of `parent` (not following a symlink).
///
/// # Errors
/// Any error of openat(2); `ENOTDIR` when `name` is not a directory.
pub(crate) fn open_dir(parent: &OwnedFd, name: &OsStr) -> std::io::Result<OwnedFd> {
    Ok(openat(parent, name, DIR, Mode::empty())?)
}

/// The names in directory `dir`, `.` and `..` left out, sorted.
///
/// # Errors
/// Any error of opening or reading the directory.
pub(crate) fn names(dir: &OwnedFd) -> std::io::Result<Vec<OsString>> {
    // A readable fd of its own: `dir` is `O_PATH`, and a fresh one starts at the first entry.
    let mut d = nix::dir::Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    out.sort();
    Ok(out)
}

/// The short path that reaches entry `name` of `dir` (see the module docs).
pub(crate) fn entry(dir: &OwnedFd, name: &OsStr) -> PathBuf {
    beneath::entry_path(dir, name)
}

/// The short path that reaches directory `dir` itself.
pub(crate) fn itself(dir: &OwnedFd) -> PathBuf {
    beneath::fd_path(dir)
}

/// The status of `path` (not following a last symlink), `None` when it does not exist (or
/// a component on the way is no directory).
///
/// # Errors
/// Any other error of lstat(2).
pub(crate) fn lstat_opt(path: &Path) -> std::io::Result<Option<std::fs::Metadata>> {
    match path.symlink_metadata() {
        Ok(m) => Ok(Some(m)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree deeper than PATH_MAX is listed, stat'ed and read at its bottom.
    #[test]
    fn a_walk_reaches_below_path_max() {
        let top = tempfile::tempdir().unwrap();
        let mut dir = open_top(top.path()).unwrap();
        let name = OsStr::new("n123456789012345678901234567890123456789");
        for _ in 0..120 {
            nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(0o755)).unwrap();
            dir = open_dir(&dir, name).unwrap();
        }
        std::fs::write(entry(&dir, OsStr::new("leaf")), b"x").unwrap();
        assert_eq!(names(&dir).unwrap(), [OsString::from("leaf")]);
        assert!(
            entry(&dir, OsStr::new("leaf"))
                .symlink_metadata()
                .unwrap()
                .is_file()
        );
        assert!(itself(&dir).symlink_metadata().unwrap().is_dir());
        assert!(open_dir(&dir, OsStr::new("leaf")).is_err());
    }
}
