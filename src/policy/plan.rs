//! What merging an upper into its rootfs means, as data: a list of [`Op`]s in execution
//! order, each labelled with the change a user sees (`A`, `C`, `D`).
//!
//! The upper is read in the format recorded with it ([`format::recorded`]), the one `layers`
//! wrote: in a kernel-format upper `.wh.*` names are files like any other; in an AUFS-format
//! one they are markers. Whiteouts delete, opaque directories replace the rootfs directory's contents, everything
//! else is added or replaces what is there. An entry equal to the rootfs's (type, mode,
//! owner, size, mtime, xattrs, and BLAKE3 of the content) is skipped, so a no-change
//! session changes nothing and the cost grows with the changes, not the tree.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::at;
use super::lower::LowDir;
use crate::layers::format::{self, WhiteoutFormat};
use crate::sys;

/// The change a user sees at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Change {
    /// Added.
    #[serde(rename = "A")]
    Added,
    /// Changed (content, metadata, or type).
    #[serde(rename = "C")]
    Changed,
    /// Deleted.
    #[serde(rename = "D")]
    Deleted,
}

impl Change {
    /// The one-letter form of `ovlrun diff`.
    pub fn letter(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Changed => 'C',
            Change::Deleted => 'D',
        }
    }
}

/// Xattr names and values, sorted by name.
pub(crate) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Metadata applied to what a commit creates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Access time (s, ns).
    pub atime: (i64, i64),
    /// Modification time (s, ns).
    pub mtime: (i64, i64),
    /// User-visible xattrs, sorted.
    pub xattrs: Xattrs,
}

/// Paths in a plan written to disk (the commit journal's `plan.json`), binary-safe: a JSON
/// string when the path is valid UTF-8, else `{"hex": "<its bytes in hex>"}`.
pub(crate) mod path_serde {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Text(String),
        Bytes { hex: String },
    }

    impl Wire {
        fn of(p: &Path) -> Wire {
            match p.to_str() {
                Some(s) => Wire::Text(s.to_owned()),
                None => Wire::Bytes {
                    hex: crate::policy::names::hex(p.as_os_str().as_bytes()),
                },
            }
        }

        fn path(self) -> Result<PathBuf, String> {
            match self {
                Wire::Text(s) => Ok(PathBuf::from(s)),
                Wire::Bytes { hex } if hex.len() % 2 != 0 => {
                    Err(format!("odd-length hex path {hex:?}"))
                }
                Wire::Bytes { hex } => crate::policy::names::unhex(&hex)
                    .map(|b| PathBuf::from(std::ffi::OsString::from_vec(b)))
                    .ok_or_else(|| format!("bad hex path {hex:?}")),
            }
        }
    }

    /// Serializes one path.
    ///
    /// # Errors
    /// The serializer's.
    pub(crate) fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
        Wire::of(p).serialize(s)
    }

    /// Deserializes one path.
    ///
    /// # Errors
    /// The deserializer's, or bad hex.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Wire::deserialize(d)?.path().map_err(D::Error::custom)
    }

    /// The same for a list of (path, value) pairs.
    pub(crate) mod pairs {
        use super::*;

        /// Serializes the pairs.
        ///
        /// # Errors
        /// The serializer's.
        pub(crate) fn serialize<S: Serializer, T: Serialize>(
            v: &[(PathBuf, T)],
            s: S,
        ) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|(p, t)| (Wire::of(p), t)))
        }

        /// Deserializes the pairs.
        ///
        /// # Errors
        /// The deserializer's, or bad hex.
        pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
            d: D,
        ) -> Result<Vec<(PathBuf, T)>, D::Error> {
            Vec::<(Wire, T)>::deserialize(d)?
                .into_iter()
                .map(|(w, t)| Ok((w.path().map_err(D::Error::custom)?, t)))
                .collect()
        }
    }
}

/// One step of a commit. Paths are relative to the rootfs (and the upper).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Op {
    /// Remove the rootfs entry (a whole tree for a directory).
    Remove(#[serde(with = "path_serde")] PathBuf),
    /// Make a directory (or, when `existed`, give the existing one the upper's metadata
    /// later, at its [`Op::DirDone`]).
    MakeDir {
        /// Where.
        #[serde(with = "path_serde")]
        path: PathBuf,
        /// Its metadata.
        meta: Meta,
        /// The rootfs already has a directory there.
        existed: bool,
    },
    /// Put the upper's non-directory at `path`, replacing the rootfs's.
    Install {
        /// Where (and where in the upper it comes from).
        #[serde(with = "path_serde")]
        path: PathBuf,
    },
    /// Make `path` another name of the object installed at `target` (a hard link in the
    /// upper).
    Link {
        /// Where.
        #[serde(with = "path_serde")]
        path: PathBuf,
        /// The already installed name.
        #[serde(with = "path_serde")]
        target: PathBuf,
    },
    /// All of a directory's entries are done: set its final metadata (times last, since
    /// every change inside moves them).
    DirDone {
        /// The directory.
        #[serde(with = "path_serde")]
        path: PathBuf,
        /// Its metadata.
        meta: Meta,
    },
}

impl Op {
    /// The path the op acts on.
    pub(crate) fn path(&self) -> &Path {
        match self {
            Op::Remove(p) | Op::Install { path: p } | Op::Link { path: p, .. } => p,
            Op::MakeDir { path, .. } | Op::DirDone { path, .. } => path,
        }
    }
}

/// The commit plan and the diff of one upper.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Steps, in order.
    pub(crate) ops: Vec<Op>,
    /// Every change a user sees, sorted by path.
    pub changes: Vec<(Change, PathBuf)>,
}

/// An upper or rootfs that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read {}{}",
    super::names::Short(.path),
    super::names::too_long_note(.source)
)]
pub struct PlanError {
    /// The path.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// An error [`LowDir`] returns: the path in its layer, and the cause.
fn lower_err((path, source): (PathBuf, std::io::Error)) -> PlanError {
    PlanError { path, source }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PlanError + '_ {
    move |source| PlanError {
        path: path.to_owned(),
        source,
    }
}

fn nix_io(path: &Path) -> impl FnOnce(nix::Error) -> PlanError + '_ {
    move |e| PlanError {
        path: path.to_owned(),
        source: e.into(),
    }
}

/// The xattrs a commit carries over: the user's, with the overlay's own markers left out and
/// escaped names unescaped (see [`format::escape_xattr`]).
pub(crate) fn user_xattrs(path: &Path) -> Result<Xattrs, PlanError> {
    let names = match sys::xattr::list(path) {
        Ok(n) => n,
        Err(nix::errno::Errno::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(nix_io(path)(e)),
    };
    let mut out = Vec::new();
    for real in names {
        let Some(shown) = format::unescape_xattr(&real) else {
            continue;
        };
        match sys::xattr::get(path, &real) {
            Ok(v) => out.push((shown.as_bytes().to_vec(), v)),
            Err(nix::errno::Errno::ENODATA | nix::errno::Errno::EPERM) => {}
            Err(e) => return Err(nix_io(path)(e)),
        }
    }
    out.sort();
    Ok(out)
}

/// The metadata of `path` as a commit applies it.
pub(crate) fn meta_of(path: &Path, md: &Metadata) -> Result<Meta, PlanError> {
    Ok(Meta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        atime: (md.atime(), md.atime_nsec()),
        mtime: (md.mtime(), md.mtime_nsec()),
        xattrs: if md.file_type().is_symlink() {
            Vec::new()
        } else {
            user_xattrs(path)?
        },
    })
}

fn blake3_of(path: &Path) -> Result<blake3::Hash, PlanError> {
    let mut hasher = blake3::Hasher::new();
    let file = std::fs::File::open(path).map_err(io(path))?;
    hasher.update_reader(file).map_err(io(path))?;
    Ok(hasher.finalize())
}

/// True when upper entry `up` equals rootfs entry `low` (both non-directories).
fn same_entry(up: &Path, upm: &Metadata, low: &Path, lowm: &Metadata) -> Result<bool, PlanError> {
    let (ut, lt) = (upm.file_type(), lowm.file_type());
    let same_kind = (
        ut.is_file(),
        ut.is_symlink(),
        ut.is_fifo(),
        ut.is_socket(),
        ut.is_char_device(),
        ut.is_block_device(),
    ) == (
        lt.is_file(),
        lt.is_symlink(),
        lt.is_fifo(),
        lt.is_socket(),
        lt.is_char_device(),
        lt.is_block_device(),
    );
    if !same_kind
        || upm.mode() != lowm.mode()
        || !same_owner((upm.uid(), upm.gid()), (lowm.uid(), lowm.gid()))
        || upm.size() != lowm.size()
        || upm.rdev() != lowm.rdev()
    {
        return Ok(false);
    }
    if ut.is_symlink() {
        return Ok(
            std::fs::read_link(up).map_err(io(up))? == std::fs::read_link(low).map_err(io(low))?
        );
    }
    if (upm.mtime(), upm.mtime_nsec()) != (lowm.mtime(), lowm.mtime_nsec()) {
        return Ok(false);
    }
    if user_xattrs(up)? != user_xattrs(low)? {
        return Ok(false);
    }
    if ut.is_file() {
        return Ok(blake3_of(up)? == blake3_of(low)?);
    }
    Ok(true)
}

/// The id the kernel shows for owners the current user namespace does not map.
fn overflow_id(kind: &str) -> u32 {
    std::fs::read_to_string(format!("/proc/sys/kernel/overflow{kind}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65534)
}

/// Owners equal, or the rootfs's owner is one this namespace cannot map: a session (or a
/// commit) running here can neither keep nor restore it, so it is no change.
fn same_owner(up: (u32, u32), low: (u32, u32)) -> bool {
    (up.0 == low.0 || low.0 == overflow_id("uid")) && (up.1 == low.1 || low.1 == overflow_id("gid"))
}

fn same_dir_meta(up: &Meta, low: &Meta) -> bool {
    same_owner((up.uid, up.gid), (low.uid, low.gid))
        && (up.mode, &up.xattrs) == (low.mode, &low.xattrs)
}

struct Walker<'a> {
    upper: &'a Path,
    format: WhiteoutFormat,
    plan: Plan,
    /// Upper inodes already installed, for hard links: (dev, ino) -> first path.
    installed: HashMap<(u64, u64), PathBuf>,
}

/// Builds the plan that merges `upper`, in whiteout format `fmt`, into `lowers` (topmost
/// first; the last is the rootfs, and one is the usual case): the changes are against the
/// lowers as one tree, as the session saw them (a layer's markers read as the overlay reads them).
///
/// The trees are walked by directory fd (`policy::at`), so an upper deeper than
/// PATH_MAX is planned like any other.
///
/// # Errors
/// [`PlanError`] naming the path that could not be read.
pub fn plan(lowers: &[PathBuf], upper: &Path, fmt: WhiteoutFormat) -> Result<Plan, PlanError> {
    let mut w = Walker {
        upper,
        format: fmt,
        plan: Plan::default(),
        installed: HashMap::new(),
    };
    let up = at::open_top(upper).map_err(io(upper))?;
    let low = LowDir::top(lowers).map_err(lower_err)?;
    w.dir(Path::new(""), &up, Some(&low))?;
    // The root directory's own metadata, last, as for every other directory with changes.
    let root_md = upper.symlink_metadata().map_err(io(upper))?;
    let root_meta = meta_of(upper, &root_md)?;
    let low_via = low.itself();
    let low_md = low_via.symlink_metadata().map_err(io(low.shown()))?;
    let low_meta =
        meta_of(&low_via, &low_md).map_err(shown_as(&low_via, low.shown().to_owned()))?;
    let meta_changed = !same_dir_meta(&root_meta, &low_meta);
    if meta_changed {
        w.change(Change::Changed, Path::new(""));
    }
    if !w.plan.ops.is_empty() || meta_changed {
        w.plan.ops.push(Op::DirDone {
            path: PathBuf::new(),
            meta: root_meta,
        });
    }
    w.plan.changes.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(w.plan)
}

/// A metadata-only copy still in the upper has no data of its own: committing or exporting
/// it would write zeros. Sessions complete them first; this guards the rest.
pub(crate) fn refuse_stub(up: &Path, upm: &Metadata) -> Result<(), PlanError> {
    if format::stub_marker(up, upm).map_err(nix_io(up))?.is_some() {
        return Err(PlanError {
            path: up.to_owned(),
            source: std::io::Error::other(
                "a metadata-only copy whose data is still in the lower; \
                 `ovlrun commit` or `ovlrun diff` of the session completes it",
            ),
        });
    }
    Ok(())
}

/// True when upper directory `dir` (shown as `shown`) is opaque in the upper's format.
pub(crate) fn is_opaque(
    dir: &OwnedFd,
    fmt: WhiteoutFormat,
    shown: &Path,
) -> Result<bool, PlanError> {
    format::upper_dir_is_opaque(dir.as_fd(), fmt).map_err(nix_io(shown))
}

fn lstat_opt(path: &Path) -> Result<Option<Metadata>, PlanError> {
    at::lstat_opt(path).map_err(io(path))
}

/// An error about `via` (an entry reached through an fd) said about `shown` (its path in
/// its tree), for messages; errors about other paths pass unchanged.
fn shown_as(via: &Path, shown: PathBuf) -> impl FnOnce(PlanError) -> PlanError + '_ {
    move |e| {
        if e.path == via {
            PlanError {
                path: shown,
                source: e.source,
            }
        } else {
            e
        }
    }
}

/// An entry of both walks: reached through its parent's fd, named by its path in its tree.
struct Ent {
    via: PathBuf,
    shown: PathBuf,
}

impl Walker<'_> {
    fn change(&mut self, c: Change, rel: &Path) {
        self.plan.changes.push((c, Path::new("/").join(rel)));
    }

    fn up_ent(&self, dir: &OwnedFd, name: &OsStr, rel: &Path) -> Ent {
        Ent {
            via: at::entry(dir, name),
            shown: self.upper.join(rel),
        }
    }

    /// Walks upper directory `rel` (open as `up`); `low`: the rootfs's directory of that path
    /// when it still shows through (neither absent nor cut by an opaque marker).
    fn dir(&mut self, rel: &Path, up: &OwnedFd, low: Option<&LowDir>) -> Result<(), PlanError> {
        let names = at::names(up).map_err(io(&self.upper.join(rel)))?;
        // Deletions first: a whiteout's name may be reused by nothing else in this directory.
        let mut deleted = BTreeSet::new();
        for name in &names {
            let e = self.up_ent(up, name, &rel.join(name));
            let md = e.via.symlink_metadata().map_err(io(&e.shown))?;
            let target = format::whiteout_target(name, &md, self.format);
            if let (Some(target), Some(low)) = (target, low) {
                let path = rel.join(target);
                if low.entry(target).map_err(lower_err)?.is_some() && deleted.insert(path.clone()) {
                    self.plan.ops.push(Op::Remove(path.clone()));
                    self.change(Change::Deleted, &path);
                }
            }
        }
        for name in &names {
            if self.format.has_aufs_markers() && format::is_aufs_name(name) {
                continue;
            }
            let path = rel.join(name);
            let u = self.up_ent(up, name, &path);
            let upm = u.via.symlink_metadata().map_err(io(&u.shown))?;
            if format::is_whiteout(&upm) {
                continue;
            }
            let l = match low {
                Some(low) => low.entry(name).map_err(lower_err)?,
                None => None,
            };
            let lowm = l.as_ref().map(|l| l.md.clone());
            if upm.is_dir() {
                let up_dir = at::open_dir(up, name).map_err(io(&u.shown))?;
                let low_dir = match (low, &l) {
                    (Some(low), Some(l)) if l.md.is_dir() => {
                        Some(low.child(name, l).map_err(lower_err)?)
                    }
                    _ => None,
                };
                self.subdir(&path, &up_dir, &upm, low_dir.as_ref(), lowm.as_ref())?;
            } else {
                let l = l.map(|l| Ent {
                    via: l.via,
                    shown: l.shown,
                });
                self.non_dir(&path, &u, &upm, l.as_ref(), lowm.as_ref())?;
            }
        }
        Ok(())
    }

    /// Upper directory `path` (open as `up`, with status `upm`); `low`: the rootfs's
    /// directory there, `lowm`: the status of whatever the rootfs has there.
    fn subdir(
        &mut self,
        path: &Path,
        up: &OwnedFd,
        upm: &Metadata,
        low: Option<&LowDir>,
        lowm: Option<&Metadata>,
    ) -> Result<(), PlanError> {
        let up_via = at::itself(up);
        let meta = meta_of(&up_via, upm).map_err(shown_as(&up_via, self.upper.join(path)))?;
        let opaque = is_opaque(up, self.format, &self.upper.join(path))?;
        match (lowm, low) {
            (None, _) => {
                self.change(Change::Added, path);
                self.plan.ops.push(Op::MakeDir {
                    path: path.to_owned(),
                    meta: meta.clone(),
                    existed: false,
                });
            }
            (Some(m), Some(low)) if m.is_dir() && !opaque => {
                let low_via = low.itself();
                let low_meta =
                    meta_of(&low_via, m).map_err(shown_as(&low_via, low.shown().to_owned()))?;
                let changed = !same_dir_meta(&meta, &low_meta);
                if changed {
                    self.change(Change::Changed, path);
                }
                let before = self.plan.ops.len();
                self.plan.ops.push(Op::MakeDir {
                    path: path.to_owned(),
                    meta: meta.clone(),
                    existed: true,
                });
                self.dir(path, up, Some(low))?;
                // A directory that was only copied up, with nothing changed inside, is left
                // alone: a no-change session rewrites nothing.
                if !changed && self.plan.ops.len() == before + 1 && meta.mtime == low_meta.mtime {
                    self.plan.ops.truncate(before);
                } else {
                    self.plan.ops.push(Op::DirDone {
                        path: path.to_owned(),
                        meta,
                    });
                }
                return Ok(());
            }
            (Some(_), _) => {
                // Replaced: a non-directory by a directory, or a directory by an opaque one.
                self.change(Change::Changed, path);
                if let Some(low) = low {
                    let names = low.names().map_err(lower_err)?;
                    for name in names {
                        let child = path.join(&name);
                        let u = self.up_ent(up, &name, &child);
                        let gone = lstat_opt(&u.via)
                            .map_err(shown_as(&u.via, u.shown))?
                            .is_none_or(|m| format::is_whiteout(&m));
                        if gone {
                            self.change(Change::Deleted, &child);
                        }
                    }
                }
                self.plan.ops.push(Op::Remove(path.to_owned()));
                self.plan.ops.push(Op::MakeDir {
                    path: path.to_owned(),
                    meta: meta.clone(),
                    existed: false,
                });
            }
        }
        self.dir(path, up, low.filter(|_| !opaque))?;
        self.plan.ops.push(Op::DirDone {
            path: path.to_owned(),
            meta,
        });
        Ok(())
    }

    fn non_dir(
        &mut self,
        path: &Path,
        up: &Ent,
        upm: &Metadata,
        low: Option<&Ent>,
        lowm: Option<&Metadata>,
    ) -> Result<(), PlanError> {
        refuse_stub(&up.via, upm).map_err(shown_as(&up.via, up.shown.clone()))?;
        if let (Some(m), Some(low)) = (lowm, low) {
            if !m.is_dir()
                && same_entry(&up.via, upm, &low.via, m)
                    .map_err(shown_as(&up.via, up.shown.clone()))
                    .map_err(shown_as(&low.via, low.shown.clone()))?
            {
                return Ok(());
            }
        }
        self.change(
            if lowm.is_some() {
                Change::Changed
            } else {
                Change::Added
            },
            path,
        );
        if lowm.is_some_and(Metadata::is_dir) {
            self.plan.ops.push(Op::Remove(path.to_owned()));
        }
        let key = (upm.dev(), upm.ino());
        match self.installed.get(&key) {
            Some(first) if upm.nlink() > 1 => {
                self.plan.ops.push(Op::Link {
                    path: path.to_owned(),
                    target: first.clone(),
                });
            }
            _ => {
                if upm.nlink() > 1 {
                    self.installed.insert(key, path.to_owned());
                }
                self.plan.ops.push(Op::Install {
                    path: path.to_owned(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stub a killed server left must never reach a commit or an export as zeros.
    #[test]
    fn plan_and_export_refuse_a_metadata_only_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, upper) = (tmp.path().join("rootfs"), tmp.path().join("upper"));
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::create_dir_all(&upper).unwrap();
        let size = u64::try_from(crate::layers::METACOPY_MIN_SIZE).unwrap();
        std::fs::write(
            rootfs.join("big"),
            vec![7u8; usize::try_from(size).unwrap()],
        )
        .unwrap();
        let stub = std::fs::File::create(upper.join("big")).unwrap();
        stub.set_len(size).unwrap();
        let k = WhiteoutFormat::Kernel;
        assert!(
            plan(std::slice::from_ref(&rootfs), &upper, k).is_ok(),
            "a sparse file alone is fine"
        );
        sys::xattr::set(
            &upper.join("big"),
            OsStr::new(format::METACOPY_XATTR),
            b"1",
            0,
        )
        .unwrap();
        let err = plan(std::slice::from_ref(&rootfs), &upper, k).unwrap_err();
        assert_eq!(err.path, upper.join("big"));
        assert!(err.source.to_string().contains("metadata-only"), "{err:?}");
        let err = crate::policy::export::export(&upper, k, Vec::new()).unwrap_err();
        assert_eq!(err.path(), upper.join("big"));
    }
}
