//! `ovlrun export`: a session's upper as an OCI image layer (a tar with `.wh.<name>`
//! whiteouts and `.wh..wh..opq` opaque markers), so the changes can be stacked on the
//! rootfs by any image tool.
//!
//! The upper is read in its recorded format. A kernel-format upper may hold ordinary files
//! named `.wh.*`; an OCI layer cannot (every reader takes them for whiteouts), so exporting
//! one fails with [`ExportError::WhiteoutName`] rather than writing a layer that deletes.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{Builder, EntryType, Header};

use super::at;
use super::plan::{is_opaque, user_xattrs};
use crate::layers::format::{self, WhiteoutFormat};

/// A layer that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the upper or writing the output failed.
    #[error(
        "cannot export {}{}",
        super::names::Short(.path),
        super::names::too_long_note(.source)
    )]
    Io {
        /// The path at fault (in the upper, or the output).
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The upper holds a file whose name an OCI layer reserves for whiteouts.
    #[error(
        "cannot export {}: an OCI layer cannot hold a file named `.wh.*` (every image tool \
         would read it as a whiteout); rename it, or commit the session instead",
        super::names::Short(.path)
    )]
    WhiteoutName {
        /// The file, in the upper.
        path: PathBuf,
    },
}

impl ExportError {
    /// The path at fault.
    pub fn path(&self) -> &Path {
        match self {
            ExportError::Io { path, .. } | ExportError::WhiteoutName { path } => path,
        }
    }
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A plan error about `via` (or anything) said about `shown`, the entry's path in the upper.
fn plan_err(e: super::plan::PlanError, shown: &Path) -> ExportError {
    ExportError::Io {
        path: shown.to_owned(),
        source: e.source,
    }
}

/// Writes `upper`, in whiteout format `fmt`, as an OCI layer tar to `out`. Entries are
/// sorted, so the same upper gives the same layer. The upper is walked by directory fd
/// (`policy::at`), so a tree deeper than PATH_MAX is exported like any other.
///
/// # Errors
/// [`ExportError`] naming the path.
pub fn export<W: Write>(upper: &Path, fmt: WhiteoutFormat, out: W) -> Result<W, ExportError> {
    let mut tar = Builder::new(out);
    tar.mode(tar::HeaderMode::Complete);
    let mut links = HashMap::new();
    let top = at::open_top(upper).map_err(err(upper))?;
    let mut w = Walk {
        tar: &mut tar,
        upper,
        fmt,
        links: &mut links,
    };
    w.dir(&top, Path::new(""))?;
    tar.into_inner().map_err(err(upper))
}

/// One export's walk of its upper.
struct Walk<'a, W: Write> {
    tar: &'a mut Builder<W>,
    upper: &'a Path,
    fmt: WhiteoutFormat,
    links: &'a mut HashMap<(u64, u64), PathBuf>,
}

impl<W: Write> Walk<'_, W> {
    /// Writes the entries of upper directory `rel`, open as `dir`.
    fn dir(&mut self, dir: &OwnedFd, rel: &Path) -> Result<(), ExportError> {
        let shown = self.upper.join(rel);
        let names = at::names(dir).map_err(err(&shown))?;
        if !rel.as_os_str().is_empty()
            && is_opaque(dir, self.fmt, &shown).map_err(|e| plan_err(e, &shown))?
        {
            marker(self.tar, &rel.join(format::AUFS_OPAQUE), &shown)?;
        }
        for name in names {
            let path = rel.join(&name);
            let shown = self.upper.join(&path);
            let via = at::entry(dir, &name);
            let md = via.symlink_metadata().map_err(err(&shown))?;
            if format::is_aufs_name(&name) && !self.fmt.has_aufs_markers() {
                return Err(ExportError::WhiteoutName { path: shown });
            }
            if format::is_aufs_name(&name) {
                if format::aufs_whiteout_target(&name).is_some() {
                    marker(self.tar, &path, &shown)?;
                }
                continue;
            }
            if format::is_whiteout(&md) {
                marker(
                    self.tar,
                    &rel.join(format::aufs_whiteout_name(&name)),
                    &shown,
                )?;
                continue;
            }
            crate::policy::plan::refuse_stub(&via, &md).map_err(|e| plan_err(e, &shown))?;
            let sub = if md.is_dir() {
                Some(at::open_dir(dir, &name).map_err(err(&shown))?)
            } else {
                None
            };
            let via = sub.as_ref().map_or(via, at::itself);
            entry(self.tar, &via, &shown, &path, &md, self.links)?;
            if let Some(sub) = sub {
                self.dir(&sub, &path)?;
            }
        }
        Ok(())
    }
}

/// An empty regular file: a whiteout or an opaque marker.
fn marker<W: Write>(tar: &mut Builder<W>, path: &Path, source: &Path) -> Result<(), ExportError> {
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    tar.append_data(&mut h, path, std::io::empty())
        .map_err(err(source))
}

/// Writes one entry, read through `via`; `shown` names it in messages.
fn entry<W: Write>(
    tar: &mut Builder<W>,
    via: &Path,
    shown: &Path,
    path: &Path,
    md: &std::fs::Metadata,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), ExportError> {
    let ft = md.file_type();
    let xattrs = if ft.is_symlink() {
        Vec::new()
    } else {
        user_xattrs(via).map_err(|e| plan_err(e, shown))?
    };
    if !xattrs.is_empty() {
        let records: Vec<(String, Vec<u8>)> = xattrs
            .iter()
            .map(|(k, v)| {
                (
                    format!("SCHILY.xattr.{}", String::from_utf8_lossy(k)),
                    v.clone(),
                )
            })
            .collect();
        tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(err(shown))?;
    }
    let mut h = Header::new_ustar();
    h.set_metadata_in_mode(md, tar::HeaderMode::Complete);
    let key = (md.dev(), md.ino());
    if !ft.is_dir() && md.nlink() > 1 {
        if let Some(first) = links.get(&key) {
            h.set_entry_type(EntryType::Link);
            h.set_size(0);
            return tar.append_link(&mut h, path, first).map_err(err(shown));
        }
        links.insert(key, path.to_owned());
    }
    if ft.is_symlink() {
        let target = std::fs::read_link(via).map_err(err(shown))?;
        h.set_size(0);
        return tar.append_link(&mut h, path, &target).map_err(err(shown));
    }
    if ft.is_file() {
        let f = std::fs::File::open(via).map_err(err(shown))?;
        return tar.append_data(&mut h, path, f).map_err(err(shown));
    }
    if ft.is_char_device() || ft.is_block_device() {
        let (major, minor) = (
            nix::sys::stat::major(md.rdev()),
            nix::sys::stat::minor(md.rdev()),
        );
        h.set_device_major(u32::try_from(major).unwrap_or(0))
            .map_err(err(shown))?;
        h.set_device_minor(u32::try_from(minor).unwrap_or(0))
            .map_err(err(shown))?;
    }
    h.set_size(0);
    let name = if ft.is_dir() {
        let mut n = path.as_os_str().to_owned();
        n.push("/");
        PathBuf::from(n)
    } else {
        path.to_owned()
    };
    tar.append_data(&mut h, &name, std::io::empty())
        .map_err(err(shown))
}
