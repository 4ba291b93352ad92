//! Hard links across copy-up, after the kernel overlayfs's `index` feature.
//!
//! When a lower file with several names is copied up through one of them, the copy is also
//! linked into `work/ovlrun-index/<ino>`. Its other names, when next looked up, are linked to
//! that same upper inode instead of showing the stale lower data, so the names stay one file.
//! Without this, two names with one stable inode number would be one kernel inode showing
//! two different contents.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::FileStat;
use nix::unistd::linkat;

use super::walk::{proc_path, stat_at};
use super::{Ino, LayerIdx, Loc, Overlay, is_dir};
use crate::sys;

/// Name of the index directory inside the work directory.
pub(crate) const INDEX_DIR: &str = "ovlrun-index";

/// On an indexed inode: how many of its lower names have not joined the upper copy yet.
/// The merged link count is the upper names plus those.
const LOWER_LINKS_XATTR: &str = "user.overlay.ovlrun.lower-links";

fn key(ino: Ino) -> OsString {
    OsString::from(ino.0.to_string())
}

/// True for objects that may have other names to keep linked.
pub(crate) fn is_multi_link(st: &FileStat) -> bool {
    !is_dir(st) && st.st_nlink > 1
}

impl Overlay {
    /// Links `name` of upper directory `dir` to the indexed copy of `ino`, if there is one.
    pub(crate) fn link_from_index(
        &self,
        ino: Ino,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<bool, Errno> {
        match linkat(
            self.index.as_fd(),
            key(ino).as_os_str(),
            dir,
            name,
            AtFlags::empty(),
        ) {
            Ok(()) => {
                let left = self.lower_links(ino)?.saturating_sub(1);
                self.set_lower_links(self.index.as_fd(), &key(ino), left)?;
                Ok(true)
            }
            Err(Errno::EEXIST) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Records the finished copy `tmp` (in the scratch dir) of `ino`, whose lower original
    /// has `nlink` names, in the index. Returns false when another thread indexed its own
    /// copy first.
    pub(crate) fn add_to_index(&self, tmp: &OsStr, ino: Ino, nlink: u64) -> Result<bool, Errno> {
        self.set_lower_links(self.scratch(), tmp, nlink.saturating_sub(1))?;
        match linkat(
            self.scratch(),
            tmp,
            self.index.as_fd(),
            key(ino).as_os_str(),
            AtFlags::empty(),
        ) {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn lower_links(&self, ino: Ino) -> Result<u64, Errno> {
        let path = proc_path(self.index.as_fd(), &key(ino));
        match sys::xattr::get(&path, OsStr::new(LOWER_LINKS_XATTR)) {
            Ok(v) => Ok(Ino::parse(&v).map_or(0, |n| n.0)),
            Err(Errno::ENODATA | Errno::EOPNOTSUPP | Errno::ENOENT) => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn set_lower_links(&self, dir: BorrowedFd<'_>, name: &OsStr, n: u64) -> Result<(), Errno> {
        if !self.upper_xattrs {
            return Ok(());
        }
        let value = n.to_string();
        sys::xattr::set(
            &proc_path(dir, name),
            OsStr::new(LOWER_LINKS_XATTR),
            value.as_bytes(),
            0,
        )
    }

    /// For a lower name of an object another name of which was copied up: link this name to
    /// the upper copy now. Returns true when it did.
    pub(crate) fn promote_if_indexed(
        &self,
        loc: &Loc,
        layer: LayerIdx,
        st: &FileStat,
    ) -> Result<bool, Errno> {
        if layer == LayerIdx::UPPER || !is_multi_link(st) {
            return Ok(false);
        }
        let ino = Ino::compose(self.fs_index(layer), st.st_ino);
        if stat_at(self.index.as_fd(), &key(ino))?.is_none() {
            return Ok(false);
        }
        self.copy_up(loc)?;
        Ok(true)
    }

    /// Before a lower name of a multiply linked file goes away, copies it up (into the
    /// index), so the other names count one link less, as with the kernel's `index=on`.
    pub(crate) fn join_index_before_removal(&self, found: &super::Found) -> Result<(), Errno> {
        if !found.loc.lowers.is_empty()
            && is_multi_link(&found.attr.st)
            && !self.in_upper(&found.loc)?
        {
            self.copy_up(&found.loc)?;
        }
        Ok(())
    }

    /// The merged link count of an indexed upper copy: its upper names (the index's own
    /// link left out) plus the lower names that have not joined it yet, as the kernel
    /// overlayfs counts with `index=on`.
    pub(crate) fn index_nlink(&self, ino: Ino, st: &mut FileStat) -> Result<(), Errno> {
        if !is_multi_link(st) {
            return Ok(());
        }
        if let Some(ix) = stat_at(self.index.as_fd(), &key(ino))? {
            if ix.st_ino == st.st_ino && ix.st_dev == st.st_dev {
                st.st_nlink = st.st_nlink - 1 + self.lower_links(ino)?;
            }
        }
        Ok(())
    }
}
