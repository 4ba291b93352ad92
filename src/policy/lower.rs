//! A session's lowers as the one tree its changes are planned against (`--rootfs A:B:C`,
//! `--layer SESSION`). A directory of that tree is the stack of the same directory in each
//! lower it shows through, topmost first, cut below a layer where it is opaque; an entry is
//! the topmost layer's that has it, unless a layer above whites it out. The bottom tree (the
//! rootfs) is plain: nothing in it is a marker. The layers over it are read as the overlay
//! reads lowers ([`crate::layers::format`]): char 0:0 and `.wh.` whiteouts, opaque xattrs
//! and `.wh..wh..opq`. With one lower, this is that tree, read as before.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::at;
use crate::layers::format;

/// One layer's copy of a directory.
struct Level {
    fd: OwnedFd,
    /// The directory's path in that layer, for messages.
    shown: PathBuf,
    /// The rootfs, where nothing is a marker.
    bottom: bool,
}

/// A directory of the merged lowers.
pub(crate) struct LowDir {
    /// Topmost first; never empty.
    levels: Vec<Level>,
}

/// An entry of the merged lowers: reached through its layer's directory fd.
pub(crate) struct LowEnt {
    /// `/proc/self/fd/N/name`: the entry itself.
    pub via: PathBuf,
    /// Its path in its layer, for messages.
    pub shown: PathBuf,
    /// Its status.
    pub md: Metadata,
    /// Which level of the directory holds it.
    level: usize,
}

impl Level {
    /// True when this layer whites `name` out: by a char 0:0 entry (given its status), or a
    /// `.wh.` marker beside it.
    fn whites_out(&self, name: &OsStr, md: Option<&Metadata>) -> std::io::Result<bool> {
        if self.bottom {
            return Ok(false);
        }
        if md.is_some_and(format::is_whiteout) {
            return Ok(true);
        }
        Ok(format::has_aufs_whiteout(self.fd.as_fd(), name)?)
    }

    fn is_opaque(&self) -> std::io::Result<bool> {
        if self.bottom {
            return Ok(false);
        }
        Ok(format::dir_is_opaque(
            self.fd.as_fd(),
            OsStr::new(""),
            true,
        )?)
    }
}

/// The error of reading `shown`: its path in its layer.
fn at_path(shown: &Path) -> impl FnOnce(std::io::Error) -> (PathBuf, std::io::Error) + '_ {
    move |e| (shown.to_owned(), e)
}

impl LowDir {
    /// The top of the merged `lowers` (topmost first, the rootfs last).
    ///
    /// # Errors
    /// The path that could not be opened, with the cause.
    pub(crate) fn top(lowers: &[PathBuf]) -> Result<LowDir, (PathBuf, std::io::Error)> {
        let mut levels = Vec::with_capacity(lowers.len());
        for (i, l) in lowers.iter().enumerate() {
            let level = Level {
                fd: at::open_top(l).map_err(at_path(l))?,
                shown: l.clone(),
                bottom: i + 1 == lowers.len(),
            };
            let opaque = level.is_opaque().map_err(at_path(l))?;
            levels.push(level);
            if opaque {
                break;
            }
        }
        Ok(LowDir { levels })
    }

    /// The directory itself, for its own status: the topmost layer's copy.
    pub(crate) fn itself(&self) -> PathBuf {
        at::itself(&self.levels[0].fd)
    }

    /// Its path in the topmost layer that has it, for messages.
    pub(crate) fn shown(&self) -> &Path {
        &self.levels[0].shown
    }

    /// Entry `name`, if the merged lowers have it.
    ///
    /// # Errors
    /// The path that could not be read, with the cause.
    pub(crate) fn entry(&self, name: &OsStr) -> Result<Option<LowEnt>, (PathBuf, std::io::Error)> {
        for (i, level) in self.levels.iter().enumerate() {
            // A `.wh.` name is a marker in a layer, a name like any other in the rootfs.
            if !level.bottom && format::is_aufs_name(name) {
                continue;
            }
            let via = at::entry(&level.fd, name);
            let shown = level.shown.join(name);
            let md = at::lstat_opt(&via).map_err(at_path(&shown))?;
            if level
                .whites_out(name, md.as_ref())
                .map_err(at_path(&shown))?
            {
                return Ok(None);
            }
            if let Some(md) = md {
                return Ok(Some(LowEnt {
                    via,
                    shown,
                    md,
                    level: i,
                }));
            }
        }
        Ok(None)
    }

    /// Directory `entry` (from [`LowDir::entry`] of this directory, a directory) as merged:
    /// its copy in each layer from the one that holds it down, while each is a directory
    /// and no layer whites it out, through the first opaque one.
    ///
    /// # Errors
    /// The path that could not be opened, with the cause.
    pub(crate) fn child(
        &self,
        name: &OsStr,
        entry: &LowEnt,
    ) -> Result<LowDir, (PathBuf, std::io::Error)> {
        let mut levels = Vec::new();
        for level in &self.levels[entry.level..] {
            let shown = level.shown.join(name);
            let md = at::lstat_opt(&at::entry(&level.fd, name)).map_err(at_path(&shown))?;
            if level
                .whites_out(name, md.as_ref())
                .map_err(at_path(&shown))?
            {
                break;
            }
            match md {
                Some(m) if m.is_dir() => {}
                // Nothing here: a lower layer's copy may still show through.
                None => continue,
                // A non-directory hides what is below it.
                Some(_) => break,
            }
            let child = Level {
                fd: at::open_dir(&level.fd, name).map_err(at_path(&shown))?,
                shown,
                bottom: level.bottom,
            };
            let opaque = child.is_opaque().map_err(at_path(&child.shown))?;
            levels.push(child);
            if opaque {
                break;
            }
        }
        Ok(LowDir { levels })
    }

    /// The names the merged directory shows, sorted: every layer's, without markers and
    /// without what a layer above whites out.
    ///
    /// # Errors
    /// The path that could not be read, with the cause.
    pub(crate) fn names(&self) -> Result<Vec<OsString>, (PathBuf, std::io::Error)> {
        let mut shown = BTreeSet::new();
        let mut hidden = BTreeSet::new();
        for level in &self.levels {
            for name in at::names(&level.fd).map_err(at_path(&level.shown))? {
                if level.bottom {
                    if !hidden.contains(&name) {
                        shown.insert(name);
                    }
                    continue;
                }
                if let Some(target) = format::aufs_whiteout_target(&name) {
                    hidden.insert(target.to_os_string());
                    continue;
                }
                if format::is_aufs_name(&name) {
                    continue;
                }
                let md = at::lstat_opt(&at::entry(&level.fd, &name))
                    .map_err(at_path(&level.shown.join(&name)))?;
                if md.as_ref().is_some_and(format::is_whiteout) {
                    hidden.insert(name);
                } else if !hidden.contains(&name) {
                    shown.insert(name.clone());
                    // A non-directory hides the names below it; a directory merges on.
                    if md.as_ref().is_some_and(|m| !m.is_dir()) {
                        hidden.insert(name);
                    }
                }
            }
        }
        Ok(shown.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_of(d: &LowDir) -> Vec<String> {
        d.names()
            .unwrap()
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn layers_merge_over_the_rootfs_with_their_markers() {
        let tmp = tempfile::tempdir().unwrap();
        let (layer, rootfs) = (tmp.path().join("layer"), tmp.path().join("rootfs"));
        let touch = |p: PathBuf| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        };
        for f in ["a", "b", "d/1", "d/2", "e/1", "g/1", ".wh.kept"] {
            touch(rootfs.join(f));
        }
        // The layer deletes a, adds c, adds d/3, makes e opaque with e/9, replaces the
        // directory g by a file.
        for f in [".wh.a", "c", "d/3", "e/.wh..wh..opq", "e/9", "g"] {
            touch(layer.join(f));
        }
        let top = LowDir::top(&[layer.clone(), rootfs.clone()]).unwrap();
        // The rootfs's own `.wh.kept` is a name like any other; the layer's markers are not.
        assert_eq!(names_of(&top), [".wh.kept", "b", "c", "d", "e", "g"]);
        assert!(top.entry(OsStr::new("a")).unwrap().is_none());
        assert!(top.entry(OsStr::new(".wh.a")).unwrap().is_none());
        let g = top.entry(OsStr::new("g")).unwrap().unwrap();
        assert!(
            g.md.is_file(),
            "the layer's file hides the rootfs's directory"
        );
        let d = top.entry(OsStr::new("d")).unwrap().unwrap();
        assert_eq!(
            names_of(&top.child(OsStr::new("d"), &d).unwrap()),
            ["1", "2", "3"]
        );
        let e = top.entry(OsStr::new("e")).unwrap().unwrap();
        let e = top.child(OsStr::new("e"), &e).unwrap();
        assert_eq!(
            names_of(&e),
            ["9"],
            "an opaque directory hides what is below"
        );
        assert!(e.entry(OsStr::new("1")).unwrap().is_none());

        // One tree alone is read as it is: nothing in it is a marker.
        let alone = LowDir::top(&[layer]).unwrap();
        assert!(alone.entry(OsStr::new(".wh.a")).unwrap().is_some());
        assert!(names_of(&alone).contains(&".wh.a".to_owned()));
    }
}
