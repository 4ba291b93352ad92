//! Merged directory listings.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use nix::dir::Type;
use nix::errno::Errno;
use nix::fcntl::OFlag;

use super::format::{self, is_whiteout};
use super::walk::stat_at;
use super::{Ino, LayerIdx, Loc, Overlay};

/// One entry of a merged listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DirEntry {
    /// The entry's name.
    pub name: OsString,
    /// Its type, as `libc::S_IF*` bits.
    pub kind: u32,
    /// Its stable inode number (the same number `stat` reports).
    pub ino: Ino,
}

fn kind_of(t: Type) -> u32 {
    match t {
        Type::Fifo => libc::S_IFIFO,
        Type::CharacterDevice => libc::S_IFCHR,
        Type::Directory => libc::S_IFDIR,
        Type::BlockDevice => libc::S_IFBLK,
        Type::File => libc::S_IFREG,
        Type::Symlink => libc::S_IFLNK,
        Type::Socket => libc::S_IFSOCK,
    }
}

impl Overlay {
    /// Lists merged directory `dir`: every layer's entries, duplicates dropped (the upper
    /// one wins), whiteouts and the names they delete dropped, AUFS markers never shown.
    ///
    /// # Errors
    /// Any error reading a layer.
    pub(crate) fn read_dir(&self, dir: &Loc) -> Result<Vec<DirEntry>, Errno> {
        let mut out = Vec::new();
        // Names already decided: shown, or deleted by a whiteout in a higher layer.
        let mut decided: HashSet<OsString> = HashSet::new();
        let layers = std::iter::once(LayerIdx::UPPER).chain(dir.lowers.iter().copied());
        for layer in layers {
            let fd = match self.open_in(layer, &dir.path, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ENOTDIR) => continue,
                Err(e) => return Err(e),
            };
            let pathfd = fd
                .try_clone()
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
            let mut entries = nix::dir::Dir::from_fd(fd)?;
            let mut deleted_here: Vec<OsString> = Vec::new();
            for entry in entries.iter() {
                let entry = entry?;
                let name = OsStr::from_bytes(entry.file_name().to_bytes());
                if name == "." || name == ".." {
                    continue;
                }
                if format::is_aufs_name(name) && self.reads_aufs(layer) {
                    if let Some(target) = format::aufs_whiteout_target(name) {
                        deleted_here.push(target.to_owned());
                    }
                    continue;
                }
                if decided.contains(name) {
                    continue;
                }
                let mut kind = entry.file_type().map(kind_of);
                let mut real_ino = entry.ino();
                if kind.is_none() || kind == Some(libc::S_IFCHR) {
                    let Some(st) = stat_at(pathfd.as_fd(), name)? else {
                        continue;
                    };
                    if is_whiteout(&st) {
                        deleted_here.push(name.to_owned());
                        continue;
                    }
                    kind = Some(st.st_mode & libc::S_IFMT);
                    real_ino = st.st_ino;
                }
                let ino = if layer == LayerIdx::UPPER {
                    match stat_at(pathfd.as_fd(), name)? {
                        Some(st) => self.ino_of(layer, pathfd.as_fd(), name, &st)?,
                        None => continue,
                    }
                } else {
                    Ino::compose(self.fs_index(layer), real_ino)
                };
                deleted_here.push(name.to_owned());
                out.push(DirEntry {
                    name: name.to_owned(),
                    kind: kind.unwrap_or(libc::S_IFREG),
                    ino,
                });
            }
            // Whiteouts act on the layers below, never on their own layer's entries, so
            // they join the decided set only after the whole layer is read.
            decided.extend(deleted_here);
        }
        Ok(out)
    }

    /// True when merged directory `dir` shows no entry.
    ///
    /// # Errors
    /// Any error reading a layer.
    pub(crate) fn is_empty_dir(&self, dir: &Loc) -> Result<bool, Errno> {
        Ok(self.read_dir(dir)?.is_empty())
    }
}
