//! Metadata-only copy-up: chmod, chown, utimes and xattr changes to a large lower file copy
//! its metadata into the upper, not its data (the kernel's `metacopy` idea).
//!
//! The upper copy is a stub: a sparse file of the lower's size, with owner, mode, times and
//! xattrs of its own, marked with [`METACOPY_XATTR`](super::format::METACOPY_XATTR) naming the lower layer that holds the
//! data. Reads go to that layer. Whatever needs the data in the upper (opening for writing,
//! truncation, rename, link) first completes the stub, atomically, like a copy-up.
//!
//! The kernel overlayfs cannot read such a stub (it refuses `metacopy` with `userxattr`), so
//! stubs never outlive ovlrun's use of an upper: they are completed at unmount, and
//! [`complete_metacopies`] completes the ones a killed server left behind before anything
//! else reads the upper. A marker file in the work dir, made durable before the first stub
//! and removed once all are complete, spares those completions a walk of an upper that
//! holds none.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use nix::fcntl::{OFlag, renameat};
use nix::sys::stat::{FileStat, Mode};

use super::copy_up::{Source, keeping_times};
use super::format::METACOPY_MIN_SIZE;
use super::walk::{list_names, proc_path, remove_tree, split, stat_at};
use super::{Ino, LayerIdx, Loc, Overlay, OverlayConfig, is_dir};

/// The work dir's marker that the upper may hold stubs.
const PENDING_MARKER: &str = "ovlrun-metacopy";

/// True when lower object `st` gets a stub rather than a full copy: a regular file with one
/// name (hard links go through the copy-up index) and enough data to be worth it.
pub(crate) fn wants_metacopy(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
        && st.st_nlink == 1
        && st.st_size >= METACOPY_MIN_SIZE
}

/// The marker's value: the lower layer holding the data.
pub(crate) fn marker(layer: LayerIdx) -> Vec<u8> {
    layer.0.to_string().into_bytes()
}

impl Overlay {
    /// The lower layer holding the data of upper entry `name` in `dir` (whose stat is `st`)
    /// when it is a stub; `None` for a complete file.
    ///
    /// # Errors
    /// `EIO` for a marker naming no lower layer; any error reading the marker.
    pub(crate) fn stub_data_layer(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &FileStat,
    ) -> Result<Option<LayerIdx>, Errno> {
        let Some(value) = super::format::stub_marker(&proc_path(dir, name), st)? else {
            return Ok(None);
        };
        let layer = std::str::from_utf8(&value)
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|&l| l >= 1 && usize::from(l) < self.layers.len())
            .ok_or(Errno::EIO)?;
        Ok(Some(LayerIdx(layer)))
    }

    /// Makes sure the object at `loc` has an upper copy for a change of its metadata: a stub
    /// for a large lower file (see the module doc), a full copy-up otherwise.
    ///
    /// # Errors
    /// `ENOENT` when the object is gone; any error of the copy.
    pub(crate) fn copy_up_meta(&self, loc: &Loc) -> Result<(), Errno> {
        if let Some(st) = self.upper_stat(&loc.path)? {
            return if super::format::is_whiteout(&st) {
                Err(Errno::ENOENT)
            } else {
                Ok(()) // a stub or a full copy: either holds metadata
            };
        }
        let (Some((parent, name)), Some(&layer)) = (split(&loc.path), loc.lowers.first()) else {
            return self.copy_up(loc);
        };
        let wanted = self.upper_xattrs
            && self
                .stat_in(layer, &loc.path)?
                .is_some_and(|st| wants_metacopy(&st));
        if !wanted {
            return self.copy_up(loc);
        }
        self.ensure_upper_dir(parent)?;
        self.mark_stubs_pending()?;
        match self.copy_from(layer, parent, name, false) {
            Ok(()) => Ok(()),
            // The upper refused the marker after all: copy the data.
            Err(Errno::EOPNOTSUPP | Errno::EPERM) => self.copy_up(loc),
            Err(e) => Err(e),
        }
    }

    /// Replaces the stub at upper `path`, if it still is one, by a complete copy: the data
    /// of its lower, the stub's own metadata. Atomic like a copy-up; serialized, so two
    /// completions never race and lose a write made through the first.
    ///
    /// # Errors
    /// `EIO` when the lower no longer holds data of the stub's size; any error of the copy.
    pub(crate) fn complete_stub(&self, path: &Path) -> Result<(), Errno> {
        let _one_at_a_time = self.completing.lock().unwrap_or_else(|p| p.into_inner());
        let Some((parent, name)) = split(path) else {
            return Ok(());
        };
        let dir = self.dir_fd(LayerIdx::UPPER, parent)?;
        let Some(st) = stat_at(dir.as_fd(), name)? else {
            return Ok(());
        };
        let Some(layer) = self.stub_data_layer(dir.as_fd(), name, &st)? else {
            return Ok(()); // completed meanwhile
        };
        let data = self
            .stat_in(layer, path)?
            .filter(|d| d.st_mode & libc::S_IFMT == libc::S_IFREG && d.st_size == st.st_size)
            .ok_or(Errno::EIO)?;
        let ino = Ino::compose(self.fs_index(layer), data.st_ino);
        // A copy-up's own build: the data from the lower, everything else from the stub.
        let source = Source {
            layer,
            dir: &dir,
            st: &st,
            ino,
            data: true,
        };
        let (scratch, tmp) = (self.scratch(), self.temp_name());
        let placed = self.build_copy(&source, parent, name, &tmp).and_then(|()| {
            keeping_times(dir.as_fd(), || {
                renameat(scratch, tmp.as_os_str(), dir.as_fd(), name)
            })?
        });
        if let Err(e) = placed {
            let _ = remove_tree(scratch, &tmp);
            return Err(e);
        }
        self.copy_ups
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Makes the work dir's marker durable before this overlay makes its first stub, so a
    /// crash can never leave a stub without it.
    fn mark_stubs_pending(&self) -> Result<(), Errno> {
        if self.stubs_marked.load(Ordering::Acquire) {
            return Ok(());
        }
        let marker = nix::fcntl::openat(
            self.work.as_fd(),
            PENDING_MARKER,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        nix::unistd::fsync(marker.as_fd())?;
        let work = nix::fcntl::openat(
            self.work.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        nix::unistd::fsync(work.as_fd())?;
        self.stubs_marked.store(true, Ordering::Release);
        Ok(())
    }

    /// Completes every stub in the upper (see the module doc); returns how many there were.
    /// Without the work dir's marker there are none and nothing is read. Call it while the
    /// overlay is not serving: before a mount, after the unmount, or offline.
    ///
    /// # Errors
    /// The first error of the walk or of a completion, naming nothing: callers add the upper.
    pub(crate) fn complete_metacopies(&self) -> Result<usize, Errno> {
        if !self.stubs_marked.load(Ordering::Acquire)
            && stat_at(self.work.as_fd(), OsStr::new(PENDING_MARKER))?.is_none()
        {
            return Ok(0);
        }
        let mut stubs = Vec::new();
        let root = nix::fcntl::openat(
            self.layer_root(LayerIdx::UPPER),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        self.find_stubs(&root, PathBuf::new(), &mut stubs)?;
        for path in &stubs {
            self.complete_stub(path)?;
        }
        match nix::unistd::unlinkat(
            self.work.as_fd(),
            PENDING_MARKER,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        self.stubs_marked.store(false, Ordering::Release);
        Ok(stubs.len())
    }

    /// Collects the stubs under upper directory `dir` (at `path`), depth first: one fd per
    /// level.
    fn find_stubs(
        &self,
        dir: &OwnedFd,
        path: PathBuf,
        out: &mut Vec<PathBuf>,
    ) -> Result<(), Errno> {
        for name in list_names(dir)? {
            let Some(st) = stat_at(dir.as_fd(), &name)? else {
                continue;
            };
            if is_dir(&st) {
                let sub = nix::fcntl::openat(
                    dir.as_fd(),
                    name.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                self.find_stubs(&sub, path.join(&name), out)?;
            } else if self.stub_data_layer(dir.as_fd(), &name, &st)?.is_some() {
                out.push(path.join(&name));
            }
        }
        Ok(())
    }

    /// Reports data blocks of the lower for a stub (`du` sees the file's real size), as the
    /// kernel's metacopy does.
    ///
    /// # Errors
    /// Any error reading the marker or the lower.
    pub(crate) fn stub_blocks(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        st: &mut FileStat,
    ) -> Result<(), Errno> {
        if let Some(layer) = self.stub_data_layer(dir, name, st)?
            && let Some(lower) = self.stat_in(layer, path)?
        {
            st.st_blocks = lower.st_blocks;
        }
        Ok(())
    }
}

/// Completes the stubs a killed server left in the upper of `config` (see the module doc);
/// returns how many there were. Cheap when there are none: one walk of the upper.
///
/// # Errors
/// The layers cannot be opened, or a completion failed (the stub and its lower stay as they
/// were, nothing is lost).
pub(crate) fn complete_metacopies(config: &OverlayConfig) -> Result<usize, super::LayerSetupError> {
    let ovl = Overlay::new(config)?;
    ovl.complete_metacopies()
        .map_err(|source| super::LayerSetupError::Metacopy {
            upper: config.upper.clone(),
            source,
        })
}
