//! Rename, with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`, for files and for directories
//! from any layer.
//!
//! The kernel overlayfs answers `EXDEV` for a directory that has lower parts (unless
//! `redirect_dir`, which `userxattr` mounts cannot use). ovlrun copies such a directory's
//! whole merged tree into the upper, marks it opaque and renames that: the upper stays a
//! plain `userxattr` upper the kernel can mount, and `mv` just works.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags, renameat2};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use super::format::{self, is_whiteout};
use super::lookup::check_name;
use super::walk::{clear_dir, list_names, stat_at};
use super::{Found, LayerIdx, Loc, Lowers, Overlay};

/// What a rename changed, for callers that cache [`Loc`]s: the one statement of which
/// names moved and which lowers they and everything below them keep.
#[derive(Clone, Debug)]
pub(crate) enum RenameOutcome {
    /// Source and target were names of one object: as rename(2), both stay as they were.
    Unchanged,
    /// The source now has the target's name, at `Loc`; a target it replaced lost its name.
    Moved(Loc),
    /// `RENAME_EXCHANGE`: the source now has the target's name and the target the source's.
    Exchanged {
        /// The source's new place.
        source: Loc,
        /// The target's new place.
        target: Loc,
    },
}

impl RenameOutcome {
    /// The lowers left to everything below a moved object: none. A moved directory's whole
    /// merged tree was copied into the upper (metacopies completed), so every cached `Loc`
    /// inside it must drop its lowers.
    pub(crate) fn lowers_below(&self) -> Lowers {
        Lowers::from(Vec::new())
    }
}

impl Overlay {
    /// Renames `sname` in `sparent` to `dname` in `dparent`.
    ///
    /// # Errors
    /// As rename(2): `ENOENT`, `EEXIST` (`RENAME_NOREPLACE`), `ENOTDIR`, `EISDIR`,
    /// `ENOTEMPTY`, `EINVAL` for unknown flags or AUFS names in an AUFS-format upper.
    pub(crate) fn rename(
        &self,
        sparent: &Loc,
        sname: &OsStr,
        dparent: &Loc,
        dname: &OsStr,
        flags: RenameFlags,
    ) -> Result<RenameOutcome, Errno> {
        check_name(dname)?;
        if (format::is_aufs_name(dname) && self.reads_aufs(LayerIdx::UPPER))
            || flags.intersects(!(RenameFlags::RENAME_NOREPLACE | RenameFlags::RENAME_EXCHANGE))
            || flags.contains(RenameFlags::RENAME_NOREPLACE | RenameFlags::RENAME_EXCHANGE)
        {
            return Err(Errno::EINVAL);
        }
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        let src = self.lookup(sparent, sname)?;
        let dst = match self.lookup(dparent, dname) {
            Ok(d) => Some(d),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(e),
        };
        match &dst {
            Some(_) if flags.contains(RenameFlags::RENAME_NOREPLACE) => return Err(Errno::EEXIST),
            None if exchange => return Err(Errno::ENOENT),
            Some(d) if !exchange => {
                if src.attr.ino == d.attr.ino && src.attr.is_dir() == d.attr.is_dir() {
                    return Ok(RenameOutcome::Unchanged);
                }
                match (src.attr.is_dir(), d.attr.is_dir()) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    (true, true) if !self.is_empty_dir(&d.loc)? => return Err(Errno::ENOTEMPTY),
                    _ => {}
                }
            }
            _ => {}
        }

        let _changed = self.moving_upper_dirs();
        self.bring_up(&src)?;
        match &dst {
            Some(d) if exchange => self.bring_up(d)?,
            Some(d) => self.join_index_before_removal(d)?,
            None => {}
        }
        self.ensure_upper_dir(&dparent.path)?;
        let src_lower = self.lower_has_name(sparent, sname)?;
        let dst_lower = self.lower_has_name(dparent, dname)?;
        let sdir = self.dir_fd(LayerIdx::UPPER, &sparent.path)?;
        let ddir = self.dir_fd(LayerIdx::UPPER, &dparent.path)?;
        let (sdir, ddir) = (sdir.as_fd(), ddir.as_fd());

        let moved = Loc {
            path: dparent.child_path(dname),
            lowers: Lowers::from(Vec::new()),
        };
        if exchange {
            renameat2(sdir, sname, ddir, dname, RenameFlags::RENAME_EXCHANGE)?;
            // A directory that lands on a name a lower also has must not merge with it.
            if src.attr.is_dir() && dst_lower {
                self.write_opaque(ddir, dname)?;
            }
            if dst.as_ref().is_some_and(|d| d.attr.is_dir()) && src_lower {
                self.write_opaque(sdir, sname)?;
            }
            let exchanged = Loc {
                path: sparent.child_path(sname),
                lowers: Lowers::from(Vec::new()),
            };
            return Ok(RenameOutcome::Exchanged {
                source: moved,
                target: exchanged,
            });
        }

        let upper_dst = stat_at(ddir, dname)?;
        let dst_is_whiteout = upper_dst.as_ref().is_some_and(is_whiteout);
        if src.attr.is_dir() && (dst_lower || dst_is_whiteout) {
            self.write_opaque(sdir, sname)?;
        }
        if let Some(st) = &upper_dst {
            if super::is_dir(st) {
                // Empty in the merged view; what it still holds are whiteouts and markers.
                clear_dir(ddir, dname)?;
            }
        }
        if dst_is_whiteout {
            // Swap with the whiteout: the source name gets it for free, which is what a
            // lower copy of the source needs anyway.
            renameat2(sdir, sname, ddir, dname, RenameFlags::RENAME_EXCHANGE)?;
            if !src_lower {
                nix::unistd::unlinkat(sdir, sname, nix::unistd::UnlinkatFlags::NoRemoveDir)?;
            }
        } else {
            renameat2(sdir, sname, ddir, dname, RenameFlags::empty())?;
            if src_lower {
                self.write_whiteout(sdir, sname)?;
            }
        }
        if let Some(st) = upper_dst.filter(|st| !is_whiteout(st) && !super::is_dir(st)) {
            self.forget_origin(&st)?;
        }
        if self.format == format::WhiteoutFormat::Aufs {
            super::remove::drop_aufs_whiteout(ddir, dname)?;
        }
        Ok(RenameOutcome::Moved(moved))
    }

    /// Puts the whole of a merged object in the upper: a non-directory is copied up; a
    /// directory with lower parts has its merged tree copied and is marked opaque.
    fn bring_up(&self, found: &Found) -> Result<(), Errno> {
        if !found.attr.is_dir() {
            return self.copy_up(&found.loc);
        }
        if found.loc.lowers.is_empty() {
            return Ok(());
        }
        self.copy_up_tree(&found.loc)?;
        let (parent, name) = super::walk::split(&found.loc.path).ok_or(Errno::EBUSY)?;
        let dir = self.dir_fd(LayerIdx::UPPER, parent)?;
        purge_whiteouts(dir.as_fd(), name, self.reads_aufs(LayerIdx::UPPER))?;
        self.write_opaque(dir.as_fd(), name)
    }

    fn copy_up_tree(&self, dir: &Loc) -> Result<(), Errno> {
        self.copy_up(dir)?;
        for entry in self.read_dir(dir)? {
            let child = self.lookup(dir, &entry.name)?;
            if child.attr.is_dir() {
                self.copy_up_tree(&child.loc)?;
            } else {
                self.copy_up(&child.loc)?;
            }
        }
        Ok(())
    }
}

/// Removes the whiteouts below upper directory `name` of `dir`. Its whole merged tree is now
/// in the upper and it is about to become opaque: nothing below is left to hide, and the
/// kernel overlayfs lists a directory without lowers as it is, whiteouts included.
/// `aufs`: `.wh.*` names are markers here (else they are the user's files).
fn purge_whiteouts(dir: BorrowedFd<'_>, name: &OsStr, aufs: bool) -> Result<(), Errno> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    for child in list_names(&fd)? {
        let Some(st) = stat_at(fd.as_fd(), &child)? else {
            continue;
        };
        if is_whiteout(&st) || (aufs && format::aufs_whiteout_target(&child).is_some()) {
            nix::unistd::unlinkat(fd.as_fd(), child.as_os_str(), UnlinkatFlags::NoRemoveDir)?;
        } else if super::is_dir(&st) {
            purge_whiteouts(fd.as_fd(), &child, aufs)?;
        }
    }
    Ok(())
}
