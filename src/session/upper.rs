//! A user-given upper (`--upper DIR`): checked before anything is touched, made and marked
//! when used, and recognised later, so that ovlrun deletes only what it made.
//!
//! The mark is a small file, `ovlrun-upper`, in the upper's work directory
//! (`<upper>.work`), naming the upper by device and inode and saying which of the two
//! directories ovlrun created. It lives in the work directory because the upper cannot carry
//! it: every entry and every xattr of the upper's root is the merged root the session sees
//! (a `user.*` xattr there would show on `/` and be committed), while the work directory is
//! never shown, and is ovlrun's by construction. A directory with no mark, or with a mark
//! naming another inode (a record edited, a directory replaced), is never removed.
//!
//! Uppers in the state root (`<state>/sessions/<id>/upper`) are ovlrun's by where they are
//! and need no mark.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layers::format::{self, WhiteoutFormat};
use crate::policy::conflict::Stamp;
use crate::sys::write_atomic;

/// The mark's file name inside the work directory.
pub(crate) const MARKER: &str = "ovlrun-upper";

/// What the mark records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Marker {
    /// The upper, as it was made (for people reading the file).
    pub upper: PathBuf,
    /// The upper's device.
    pub dev: u64,
    /// The upper's inode.
    pub ino: u64,
    /// ovlrun created the upper directory itself (else it adopted an empty one).
    pub made_upper: bool,
    /// ovlrun created the work directory.
    pub made_work: bool,
    /// When the first session on this upper began: what its changes are checked against
    /// for conflicts ([`crate::policy::conflict`]); absent in marks of older versions.
    #[serde(default)]
    pub base: Option<Stamp>,
}

/// A `--upper` that cannot be used. Nothing was created or changed.
#[derive(Debug, thiserror::Error)]
pub enum UpperError {
    /// Not empty and not an ovlrun upper.
    #[error(
        "--upper {}: not empty, and not an upper ovlrun made (no mark in {}); give a new or empty directory",
        .upper.display(), .work.display()
    )]
    NotEmpty {
        /// The upper.
        upper: PathBuf,
        /// Where the mark would be.
        work: PathBuf,
    },
    /// The work directory beside it exists and is not the upper's.
    #[error(
        "--upper {}: its work directory {} exists, is not empty and is not ovlrun's for this upper",
        .upper.display(), .work.display()
    )]
    WorkNotOurs {
        /// The upper.
        upper: PathBuf,
        /// The work directory.
        work: PathBuf,
    },
    /// It (or its work directory) is, holds, or is inside the rootfs or the state root.
    #[error("--upper {}: {which} {} {relation} the {what} {}", .upper.display(), .path.display(), .other.display())]
    Overlap {
        /// The upper given.
        upper: PathBuf,
        /// "the upper" or "its work directory".
        which: &'static str,
        /// That directory, absolute.
        path: PathBuf,
        /// "is", "is inside", "holds".
        relation: &'static str,
        /// "rootfs" or "state root".
        what: &'static str,
        /// The rootfs or state root.
        other: PathBuf,
    },
    /// Exists and is not a directory.
    #[error("--upper {}: not a directory", .upper.display())]
    NotDir {
        /// The upper.
        upper: PathBuf,
    },
    /// Cannot be made absolute, read or created.
    #[error("--upper {}: cannot {step} {}", .upper.display(), .path.display())]
    Io {
        /// The upper given.
        upper: PathBuf,
        /// What was being done.
        step: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// `path` absolute and canonical, though its end may not exist yet: the longest existing
/// ancestor canonicalized (symlinks and `..` resolved), then the rest, which must be plain
/// names.
///
/// # Errors
/// `InvalidInput` when the part that does not exist holds `.` or `..`; any error of
/// canonicalize(3) or getcwd(3).
pub(crate) fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut rest = Vec::new();
    let mut base = abs.as_path();
    loop {
        match base.canonicalize() {
            Ok(canon) => {
                let mut out = canon;
                for name in rest.iter().rev() {
                    out.push(name);
                }
                return Ok(out);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (Some(parent), Some(Component::Normal(name))) =
                    (base.parent(), base.components().next_back())
                else {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "`.` or `..` after a directory that does not exist",
                    ));
                };
                rest.push(name.to_owned());
                base = parent;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The mark in `work`, when it names `upper` as it is now and the caller wrote it.
pub(crate) fn marker(upper: &Path, work: &Path) -> Option<Marker> {
    let file = work.join(MARKER);
    let md = file.symlink_metadata().ok()?;
    if !md.is_file() || md.uid() != nix::unistd::geteuid().as_raw() {
        return None;
    }
    let m: Marker = serde_json::from_slice(&std::fs::read(&file).ok()?).ok()?;
    let up = upper.symlink_metadata().ok().filter(|m| m.is_dir())?;
    (m.dev == up.dev() && m.ino == up.ino()).then_some(m)
}

/// The whiteout format of session `rec`'s upper: the one recorded with it (in its work
/// directory), else the one its backend implies for an upper from before formats were
/// recorded: kernel for the kernel overlayfs (and for "auto", which never deletes on a
/// name); for FUSE every form, since the FUSE server never let a session make a `.wh.*` name,
/// so any there is its marker.
///
/// # Errors
/// The record cannot be read or names no format.
pub(crate) fn format_of(rec: &super::record::Record) -> std::io::Result<WhiteoutFormat> {
    Ok(match format::recorded(&rec.work)? {
        Some(f) => f,
        None if rec.fs == crate::mount::Backend::Fuse => WhiteoutFormat::Aufs,
        None => WhiteoutFormat::Kernel,
    })
}

/// A `--upper` that passed every check; [`Checked::create`] makes it.
#[derive(Debug)]
pub(crate) struct Checked {
    /// The upper, absolute and canonical.
    pub upper: PathBuf,
    /// Its work directory.
    pub work: PathBuf,
    /// The mark it already carries (an ovlrun upper used again).
    pub reused: Option<Marker>,
}

fn is_empty_dir(path: &Path) -> std::io::Result<bool> {
    Ok(std::fs::read_dir(path)?.next().is_none())
}

/// Checks `given` as the upper of a new session over `rootfs` with state root `state`;
/// changes nothing.
///
/// # Errors
/// [`UpperError`] naming what is wrong.
pub(crate) fn check(given: &Path, rootfs: &Path, state: &Path) -> Result<Checked, UpperError> {
    let io = |step, path: &Path| {
        let (upper, path) = (given.to_owned(), path.to_owned());
        move |source| UpperError::Io {
            upper,
            step,
            path,
            source,
        }
    };
    let upper = absolute(given).map_err(io("resolve", given))?;
    let work = crate::layers::default_work(&upper);
    let rootfs = absolute(rootfs).map_err(io("resolve", rootfs))?;
    let state = absolute(state).map_err(io("resolve", state))?;
    for (which, path) in [("the upper", &upper), ("its work directory", &work)] {
        for (what, other) in [("rootfs", &rootfs), ("state root", &state)] {
            let relation = if path == other {
                "is"
            } else if path.starts_with(other) {
                "is inside"
            } else if other.starts_with(path) {
                "holds"
            } else {
                continue;
            };
            return Err(UpperError::Overlap {
                upper: given.to_owned(),
                which,
                path: path.clone(),
                relation,
                what,
                other: other.clone(),
            });
        }
    }
    let reused = match upper.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("read", &upper)(e)),
        Ok(md) if !md.is_dir() => {
            return Err(UpperError::NotDir {
                upper: given.to_owned(),
            });
        }
        Ok(_) => match marker(&upper, &work) {
            Some(m) => Some(m),
            None if is_empty_dir(&upper).map_err(io("read", &upper))? => None,
            None => return Err(UpperError::NotEmpty { upper, work }),
        },
    };
    if reused.is_none() {
        match work.symlink_metadata() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("read", &work)(e)),
            Ok(md) if md.is_dir() && is_empty_dir(&work).map_err(io("read", &work))? => {}
            Ok(_) => return Err(UpperError::WorkNotOurs { upper, work }),
        }
    }
    Ok(Checked {
        upper,
        work,
        reused,
    })
}

impl Checked {
    /// Makes what does not exist yet and marks both directories as the pair they are.
    ///
    /// # Errors
    /// [`UpperError::Io`].
    pub(crate) fn create(&self) -> Result<Marker, UpperError> {
        let io = |step, path: &Path| {
            let (upper, path) = (self.upper.clone(), path.to_owned());
            move |source| UpperError::Io {
                upper,
                step,
                path,
                source,
            }
        };
        let made = |dir: &Path| -> Result<bool, UpperError> {
            match std::fs::create_dir(dir) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(io("create", dir)(e)),
            }
        };
        if let Some(parent) = self.upper.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        let made_upper = made(&self.upper)?;
        let made_work = made(&self.work)?;
        let md = self
            .upper
            .symlink_metadata()
            .map_err(io("read", &self.upper))?;
        let mark = Marker {
            upper: self.upper.clone(),
            dev: md.dev(),
            ino: md.ino(),
            made_upper: self.reused.as_ref().map_or(made_upper, |m| m.made_upper),
            made_work: self.reused.as_ref().map_or(made_work, |m| m.made_work),
            base: self
                .reused
                .as_ref()
                .map_or(Some(Stamp::fine_now()), |m| m.base),
        };
        let json =
            serde_json::to_vec_pretty(&mark).map_err(|e| io("write", &self.work)(e.into()))?;
        write_atomic(&self.work.join(MARKER), &json).map_err(io("write", &self.work))?;
        Ok(mark)
    }
}

/// Removes `dir` when ovlrun made it, else empties it; nothing when it is gone.
///
/// # Errors
/// Any I/O error.
pub(crate) fn remove_or_empty(dir: &Path, made: bool) -> std::io::Result<()> {
    let result = if made {
        std::fs::remove_dir_all(dir)
    } else {
        std::fs::read_dir(dir).and_then(|entries| {
            for entry in entries {
                let path = entry?.path();
                if path.symlink_metadata()?.is_dir() {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
            }
            Ok(())
        })
    };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_keeps_plain_new_names_and_refuses_dots_after_them() {
        let top = tempfile::tempdir().unwrap();
        let canon = top.path().canonicalize().unwrap();
        std::fs::create_dir(canon.join("a")).unwrap();
        assert_eq!(
            absolute(&canon.join("a/../a/new/x")).unwrap(),
            canon.join("a/new/x")
        );
        assert!(absolute(&canon.join("a/new/../x")).is_err());
    }

    #[test]
    fn overlaps_and_foreign_contents_are_refused_and_marks_recognised() {
        let top = tempfile::tempdir().unwrap();
        let t = top.path().canonicalize().unwrap();
        let (rootfs, state) = (t.join("rootfs"), t.join("state"));
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        for bad in [
            rootfs.clone(),
            rootfs.join("etc"),
            rootfs.join("new"),
            t.clone(),
            state.join("u"),
        ] {
            let e = check(&bad, &rootfs, &state).unwrap_err();
            assert!(matches!(e, UpperError::Overlap { .. }), "{bad:?}: {e}");
        }
        // `<upper>.work` would be the rootfs.
        let e = check(&t.join("x"), &t.join("x.work"), &state).unwrap_err();
        assert!(
            matches!(
                e,
                UpperError::Overlap {
                    which: "its work directory",
                    ..
                }
            ),
            "{e}"
        );

        let mine = t.join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(mine.join("f"), b"x").unwrap();
        assert!(matches!(
            check(&mine, &rootfs, &state).unwrap_err(),
            UpperError::NotEmpty { .. }
        ));

        let new = check(&t.join("up"), &rootfs, &state).unwrap();
        let mark = new.create().unwrap();
        assert!(mark.made_upper && mark.made_work);
        std::fs::write(t.join("up/changed"), b"x").unwrap();
        let again = check(&t.join("up"), &rootfs, &state).unwrap();
        assert_eq!(again.reused, Some(mark));
        assert!(marker(&mine, &t.join("up.work")).is_none(), "another inode");
    }
}
