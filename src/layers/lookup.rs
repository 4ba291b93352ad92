//! Name resolution through the layers, and the attributes the merged view reports.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::stat::FileStat;

use super::format::{self, is_whiteout, may_be_stub};
use super::walk::{split, stat_at};
use super::{Attr, Found, Ino, LayerIdx, Loc, Lowers, Overlay, is_dir};

/// Longest name the overlay accepts (the common `NAME_MAX`).
const NAME_MAX: usize = 255;

/// Names that never exist in a merged view: the AUFS vocabulary.
pub(crate) fn check_name(name: &OsStr) -> Result<(), Errno> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name == "." || name == ".." {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

impl Overlay {
    /// Looks `name` up in merged directory `parent`.
    ///
    /// Top to bottom: a whiteout hides everything below it; a non-directory hides lower
    /// entries of the same name; a directory merges with the lower directories below it until
    /// one of them is opaque or a lower entry is not a directory.
    ///
    /// # Errors
    /// `ENOENT` when the merged view has no such entry; any error of the layers.
    pub(crate) fn lookup(&self, parent: &Loc, name: &OsStr) -> Result<Found, Errno> {
        check_name(name)?;
        // A `.wh.*` name is a marker in the lowers, never shown; in a kernel-format upper it
        // is an ordinary file, as the kernel overlayfs makes it.
        let aufs_name = format::is_aufs_name(name);
        if aufs_name && self.reads_aufs(LayerIdx::UPPER) {
            return Err(Errno::ENOENT);
        }
        let layers: Vec<LayerIdx> = std::iter::once(LayerIdx::UPPER)
            .chain(parent.lowers.iter().copied().filter(|_| !aufs_name))
            .collect();
        let mut top: Option<(LayerIdx, FileStat, Ino)> = None;
        let mut dir_lowers: Vec<LayerIdx> = Vec::new();
        for (n, &layer) in layers.iter().enumerate() {
            let last = n + 1 == layers.len();
            let Some(dir) = self.dir_fd_opt(layer, &parent.path)? else {
                continue;
            };
            let dir = dir.as_fd();
            let Some(st) = stat_at(dir, name)? else {
                if !last && self.reads_aufs(layer) && format::has_aufs_whiteout(dir, name)? {
                    break;
                }
                continue;
            };
            if is_whiteout(&st) {
                break;
            }
            match &top {
                None => {
                    let ino = self.ino_of(layer, dir, name, &st)?;
                    top = Some((layer, st, ino));
                    if layer != LayerIdx::UPPER {
                        dir_lowers.push(layer);
                    }
                    if !is_dir(&st) {
                        break;
                    }
                }
                Some(_) if !is_dir(&st) => break,
                Some(_) => dir_lowers.push(layer),
            }
            if !last && format::dir_is_opaque(dir, name, self.reads_aufs(layer))? {
                break;
            }
        }
        let (layer, mut st, ino) = top.ok_or(Errno::ENOENT)?;
        let in_upper = layer == LayerIdx::UPPER;
        let loc = Loc {
            path: parent.child_path(name),
            lowers: Lowers::from(vec![layer]),
        };
        if self.promote_if_indexed(&loc, layer, &st)? {
            return self.lookup(parent, name);
        }
        if in_upper {
            self.index_nlink(ino, &mut st)?;
            if may_be_stub(&st) {
                let dir = self.dir_fd(LayerIdx::UPPER, &parent.path)?;
                self.stub_blocks(dir.as_fd(), name, &loc.path, &mut st)?;
            }
        }
        if is_dir(&st) {
            merged_dir_nlink(&mut st, in_upper, dir_lowers.len());
        }
        Ok(Found {
            loc: Loc {
                path: parent.child_path(name),
                lowers: Lowers::from(dir_lowers),
            },
            attr: Attr { ino, st },
        })
    }

    /// The attributes of the object at `loc`, read now.
    ///
    /// # Errors
    /// `ENOENT` when it is gone (deleted through the overlay).
    pub(crate) fn stat(&self, loc: &Loc) -> Result<Attr, Errno> {
        let upper = self.upper_stat(&loc.path)?;
        let (layer, st) = match upper {
            Some(st) if is_whiteout(&st) => return Err(Errno::ENOENT),
            Some(st) => (LayerIdx::UPPER, st),
            None => {
                let layer = *loc.lowers.first().ok_or(Errno::ENOENT)?;
                let st = self.stat_in(layer, &loc.path)?.ok_or(Errno::ENOENT)?;
                if self.promote_if_indexed(loc, layer, &st)? {
                    return self.stat(loc);
                }
                (layer, st)
            }
        };
        let mut st = st;
        let ino = match split(&loc.path) {
            Some((parent, name)) => {
                let dir = self.dir_fd(layer, parent)?;
                if layer == LayerIdx::UPPER && may_be_stub(&st) {
                    self.stub_blocks(dir.as_fd(), name, &loc.path, &mut st)?;
                }
                self.ino_of(layer, dir.as_fd(), name, &st)?
            }
            None => self.ino_of(layer, self.layer_root(layer), OsStr::new(""), &st)?,
        };
        if is_dir(&st) {
            merged_dir_nlink(&mut st, layer == LayerIdx::UPPER, loc.lowers.len());
        } else if layer == LayerIdx::UPPER {
            self.index_nlink(ino, &mut st)?;
        }
        Ok(Attr { ino, st })
    }

    /// The upper's entry at merged `path` (a whiteout included), `None` when absent.
    pub(crate) fn upper_stat(&self, path: &Path) -> Result<Option<FileStat>, Errno> {
        self.stat_in(LayerIdx::UPPER, path)
    }

    /// True when a lower below `parent` shows an entry `name` (the test for whether deleting
    /// or moving `name` needs a whiteout).
    pub(crate) fn lower_has_name(&self, parent: &Loc, name: &OsStr) -> Result<bool, Errno> {
        for (n, &layer) in parent.lowers.iter().enumerate() {
            let last = n + 1 == parent.lowers.len();
            let Some(dir) = self.dir_fd_opt(layer, &parent.path)? else {
                continue;
            };
            match stat_at(dir.as_fd(), name)? {
                Some(st) => return Ok(!is_whiteout(&st)),
                None if !last && format::has_aufs_whiteout(dir.as_fd(), name)? => return Ok(false),
                None => {}
            }
        }
        Ok(false)
    }
}

/// Merged directories report one link, as the kernel overlayfs does: counting the
/// subdirectories of every layer is not worth it, and `find` copes with 1.
fn merged_dir_nlink(st: &mut FileStat, in_upper: bool, lowers: usize) {
    if usize::from(in_upper) + lowers > 1 {
        st.st_nlink = 1;
    }
}
