//! Deleting entries: unlink and rmdir, with a whiteout only where a lower still has the name.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::fcntl::{RenameFlags, renameat2};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::format::{WhiteoutFormat, aufs_whiteout_name};
use super::lookup::check_name;
use super::walk::{remove_tree, stat_at};
use super::{LayerIdx, Loc, Overlay};

impl Overlay {
    /// Removes non-directory `name` from merged directory `parent`.
    ///
    /// # Errors
    /// `ENOENT` when absent, `EISDIR` for a directory.
    pub(crate) fn unlink(&self, parent: &Loc, name: &OsStr) -> Result<(), Errno> {
        check_name(name)?;
        let found = self.lookup(parent, name)?;
        if found.attr.is_dir() {
            return Err(Errno::EISDIR);
        }
        self.join_index_before_removal(&found)?;
        self.remove_entry(parent, name, false)
    }

    /// Removes directory `name` from merged directory `parent`.
    ///
    /// # Errors
    /// `ENOENT` when absent, `ENOTDIR` for a non-directory, `ENOTEMPTY` when the merged
    /// directory shows any entry.
    pub(crate) fn rmdir(&self, parent: &Loc, name: &OsStr) -> Result<(), Errno> {
        check_name(name)?;
        let found = self.lookup(parent, name)?;
        if !found.attr.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if !self.is_empty_dir(&found.loc)? {
            return Err(Errno::ENOTEMPTY);
        }
        let _changed = self.moving_upper_dirs();
        self.remove_entry(parent, name, true)
    }

    /// Removes the upper copy of `name` (a directory with the whiteouts it may hold) and
    /// leaves a whiteout where a lower still shows the name.
    fn remove_entry(&self, parent: &Loc, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let needs_whiteout = self.lower_has_name(parent, name)?;
        if needs_whiteout {
            self.ensure_upper_dir(&parent.path)?;
        }
        let Some(updir) = self.dir_fd_opt(LayerIdx::UPPER, &parent.path)? else {
            return Ok(());
        };
        let updir = updir.as_fd();
        let in_upper = stat_at(updir, name)?;
        match (in_upper, needs_whiteout) {
            (None, false) => Ok(()),
            (None, true) => self.write_whiteout(updir, name),
            (Some(st), whiteout) => {
                if whiteout {
                    self.replace_with_whiteout(updir, name)?;
                } else {
                    remove_upper(updir, name, dir, self)?;
                }
                self.forget_origin(&st)
            }
        }
    }

    /// Turns upper entry `name` into a whiteout in one step where the format allows.
    fn replace_with_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
        match self.format {
            WhiteoutFormat::Kernel => {
                let tmp = self.temp_name();
                let scratch = self.scratch();
                self.write_whiteout(scratch, &tmp)?;
                if let Err(e) = renameat2(
                    scratch,
                    tmp.as_os_str(),
                    dir,
                    name,
                    RenameFlags::RENAME_EXCHANGE,
                ) {
                    let _ = remove_tree(scratch, &tmp);
                    return Err(e);
                }
                remove_tree(scratch, &tmp)
            }
            WhiteoutFormat::Aufs => {
                // The marker first: a crash in between leaves the upper entry, still winning.
                self.write_whiteout(dir, name)?;
                self.move_out_and_remove(dir, name)
            }
        }
    }

    /// Moves `name` out of the upper into the scratch dir and deletes it there, so a large
    /// tree disappears from the merged view at once.
    pub(crate) fn move_out_and_remove(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<(), Errno> {
        let _changed = self.moving_upper_dirs();
        let tmp = self.temp_name();
        let scratch = self.scratch();
        renameat2(dir, name, scratch, tmp.as_os_str(), RenameFlags::empty())?;
        remove_tree(scratch, &tmp)
    }
}

fn remove_upper(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    is_directory: bool,
    ovl: &Overlay,
) -> Result<(), Errno> {
    if !is_directory {
        return unlinkat(dir, name, UnlinkatFlags::NoRemoveDir);
    }
    match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) => Ok(()),
        // Empty in the merged view, but it still holds whiteouts or markers.
        Err(Errno::ENOTEMPTY | Errno::EEXIST) => ovl.move_out_and_remove(dir, name),
        Err(e) => Err(e),
    }
}

/// Removes an AUFS whiteout for `name` left in `dir`, if any.
pub(crate) fn drop_aufs_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match unlinkat(
        dir,
        aufs_whiteout_name(name).as_os_str(),
        UnlinkatFlags::NoRemoveDir,
    ) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}
