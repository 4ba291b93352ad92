//! Reaching real entries inside one layer: fd-based, never following symlinks, never leaving
//! the layer. Bounded fds: nothing here keeps an fd beyond the call that opened it.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, fstat, fstatat};
use nix::unistd::UnlinkatFlags;

use super::dircache::Lookup;
use super::{LayerIdx, Overlay};

/// Resolution rules for every path ovlrun opens inside a layer: stay beneath the layer root
/// and follow no symlink, so a symlink in a lower can never redirect us outside it.
fn resolve_how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
}

/// `"."` for the root, the path itself otherwise (openat2 refuses empty paths).
fn rel(path: &Path) -> &Path {
    if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    }
}

/// The `/proc/self/fd/<dirfd>/<name>` path naming an entry for the path-based xattr calls.
pub(crate) fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(if name.is_empty() {
        OsStr::new(".")
    } else {
        name
    });
    p
}

/// Splits a merged path into its parent and last component (`None` for the root).
pub(crate) fn split(path: &Path) -> Option<(&Path, &OsStr)> {
    let name = path.file_name()?;
    Some((path.parent().unwrap_or(Path::new("")), name))
}

impl Overlay {
    pub(crate) fn layer_root(&self, layer: LayerIdx) -> BorrowedFd<'_> {
        self.layers[usize::from(layer.0)].root.as_fd()
    }

    pub(crate) fn fs_index(&self, layer: LayerIdx) -> u8 {
        self.layers[usize::from(layer.0)].fs_index
    }

    /// Opens directory `path` of `layer` as an `O_PATH` fd.
    ///
    /// # Errors
    /// `ENOENT`/`ENOTDIR` when the layer has no directory there.
    pub(crate) fn dir_fd(&self, layer: LayerIdx, path: &Path) -> Result<Arc<OwnedFd>, Errno> {
        self.dir_fd_opt(layer, path)?.ok_or(Errno::ENOENT)
    }

    /// Returns a guard that, when dropped (after the change, on every path), makes cached
    /// upper directory fds invalid: for operations that move or remove upper directories.
    pub(crate) fn moving_upper_dirs(&self) -> UpperDirsChanged<'_> {
        UpperDirsChanged(self)
    }

    /// Like [`Overlay::dir_fd`], but `None` when the layer has no directory there.
    pub(crate) fn dir_fd_opt(
        &self,
        layer: LayerIdx,
        path: &Path,
    ) -> Result<Option<Arc<OwnedFd>>, Errno> {
        match self.dirs.get(layer, path) {
            Lookup::Present(fd) => return Ok(Some(fd)),
            Lookup::Absent => return Ok(None),
            Lookup::Unknown => {}
        }
        let (present_gen, absent_gen) = (
            self.dirs.generation_for(layer, false),
            self.dirs.generation_for(layer, true),
        );
        let how = resolve_how(OFlag::O_PATH | OFlag::O_DIRECTORY);
        match openat2(self.layer_root(layer), rel(path), how) {
            Ok(fd) => {
                let fd = Arc::new(fd);
                self.dirs.put(layer, path, Some(fd.clone()), present_gen);
                Ok(Some(fd))
            }
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {
                self.dirs.put(layer, path, None, absent_gen);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// An upper directory was just made (copy-up, mkdir, rename into place): cached absences
    /// may be wrong now.
    pub(crate) fn upper_dir_created(&self) {
        self.dirs.upper_dir_created();
    }

    /// Opens entry `path` of `layer` with `flags` (resolution rules of this module).
    pub(crate) fn open_in(
        &self,
        layer: LayerIdx,
        path: &Path,
        flags: OFlag,
    ) -> Result<OwnedFd, Errno> {
        match split(path) {
            None => openat2(self.layer_root(layer), rel(path), resolve_how(flags)),
            // From the (usually cached) parent: one component to resolve, not the path.
            Some((parent, name)) => {
                let dir = self.dir_fd_opt(layer, parent)?.ok_or(Errno::ENOENT)?;
                openat2(dir.as_fd(), name, resolve_how(flags))
            }
        }
    }

    /// `stat` of entry `path` in `layer`, `None` when absent.
    pub(crate) fn stat_in(&self, layer: LayerIdx, path: &Path) -> Result<Option<FileStat>, Errno> {
        match split(path) {
            None => fstat(self.layer_root(layer)).map(Some),
            Some((parent, name)) => match self.dir_fd_opt(layer, parent)? {
                Some(dir) => stat_at(dir.as_fd(), name),
                None => Ok(None),
            },
        }
    }

    /// A fresh name for a temporary entry in the scratch directory.
    pub(crate) fn temp_name(&self) -> OsString {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#{}-{n}", std::process::id()))
    }

    pub(crate) fn scratch(&self) -> BorrowedFd<'_> {
        self.scratch.as_fd()
    }
}

/// `stat` of `name` in `dir` without following a symlink; `None` when absent.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<FileStat>, Errno> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes `name` from `dir`, whatever it is, a whole directory tree included.
pub(crate) fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR | Errno::EPERM) => {}
        Err(e) => return Err(e),
    }
    clear_dir(dir, name)?;
    match nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes everything inside directory `name` of `dir`.
pub(crate) fn clear_dir(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let names = list_names(&fd)?;
    for child in names {
        remove_tree(fd.as_fd(), &child)?;
    }
    Ok(())
}

/// The names in an open directory, `.` and `..` left out.
pub(crate) fn list_names(fd: &OwnedFd) -> Result<Vec<OsString>, Errno> {
    use std::os::unix::ffi::OsStrExt;
    let dup = fd
        .try_clone()
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    let mut dir = nix::dir::Dir::from_fd(dup)?;
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(out)
}

/// See [`Overlay::moving_upper_dirs`].
pub(crate) struct UpperDirsChanged<'a>(&'a Overlay);

impl Drop for UpperDirsChanged<'_> {
    fn drop(&mut self) {
        self.0.dirs.upper_changed();
    }
}
