//! Conflicts: paths a session changes whose rootfs entry changed too since the session began
//! (another session's commit, a package manager on the host, a hand edit).
//!
//! # Design
//!
//! A session records one number when it starts: its [`Stamp`], the kernel's fine wall clock
//! (`CLOCK_REALTIME`), taken under the rootfs's shared lock, so no ovlrun commit runs at that
//! moment; the session reads nothing of the rootfs until the coarse clock is past it. Nothing else is recorded then, and nothing while the session runs, so this
//! costs the same on both backends and for any size of tree: what the session changed is read
//! from its upper at commit time, and what the rootfs changed is read from the ctimes of just
//! those paths.
//!
//! Why a ctime says enough: the kernel sets an inode's ctime to the current time on every
//! change of its data, metadata, names (link, rename) or, for a directory, entries, and no
//! call can set it back. Filesystems stamp it from the same clock, coarse or finer (never
//! behind the coarse clock), truncated to their granularity; so any change after the stamp
//! was taken leaves a ctime at or after it (less a microsecond, or in the same second for a
//! filesystem that keeps whole seconds). So, for every path the commit would change:
//! - **The rootfs has an entry there now**: a conflict when its ctime is at or after the
//!   stamp ([`Why::Changed`]). When the session removes or replaces a directory there, every
//!   entry beneath it is looked at too ([`Why::Inside`]): what it would delete with it.
//! - **The rootfs has none**: the nearest ancestor it has tells whether its entries changed
//!   since; when they did not, the path was absent at the start too. When they did, the entry
//!   was there at the start exactly when the session's upper holds a copy-up of it, which
//!   both backends mark (the kernel overlayfs's `overlay.origin` xattr, ovlrun's origin
//!   inode number): a conflict when it does ([`Why::Removed`]).
//!
//! Limits, each erring to one side said here. A path is a conflict when its entry changed in
//! any way, to the same content included (a false alarm; `--force` takes it). An entry the
//! session copied up and renamed, into a directory the rootfs changed, is reported too. Not
//! detected: a clock stepped back during the session, a rootfs whose ctimes do not come from
//! this kernel's clock (NFS, some FUSE filesystems), and, where the rootfs lost an entry the
//! session deleted and then made again, or copied up without a mark (a symlink or a hard-linked
//! file on the kernel backend), the loss. A full baseline of the tree's names at session start
//! would close the last gap but costs a walk of the whole rootfs per session.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, fstatat};
use serde::{Deserialize, Serialize};

use super::beneath::Beneath;
use super::plan::{Change, Op, Plan, PlanError};
use crate::layers::format;
use crate::sys;

/// A moment on the clock filesystems stamp ctimes from: when a session began.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Stamp {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds.
    pub nsec: i64,
}

/// The slack for filesystems that keep ctimes finer than a second but coarser than a
/// nanosecond (100 ns for some): a change after the stamp shows at most this much before it.
const FINE_GRAIN_SLACK_NS: i64 = 1_000;

impl Stamp {
    /// Now, on the coarse clock: any ctime set after this call is at or after it.
    pub(crate) fn now() -> Stamp {
        // The coarse clock cannot fail on Linux; 0 would only make every entry a conflict.
        let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME_COARSE)
            .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
        Stamp {
            sec: ts.tv_sec(),
            nsec: ts.tv_nsec(),
        }
    }

    /// Now, on the fine clock: every ctime set before this call is at or before it, whether
    /// stamped from the coarse clock or (multigrain timestamps) the fine one. A session's start
    /// takes this, and reads nothing of the rootfs until [`Stamp::wait_coarse_past`] returns,
    /// so a coarse-stamped change made after its first read still shows as later.
    pub(crate) fn fine_now() -> Stamp {
        let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
            .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
        Stamp {
            sec: ts.tv_sec(),
            nsec: ts.tv_nsec(),
        }
    }

    /// Waits (a clock tick at most, usually not at all: a session's setup takes longer) until
    /// the coarse clock is past this stamp and its slack, so any ctime set from now on is after
    /// it.
    pub(crate) fn wait_coarse_past(self) {
        let past = total(self.sec, self.nsec) + i128::from(2 * FINE_GRAIN_SLACK_NS);
        for _ in 0..500 {
            let coarse = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME_COARSE)
                .map(|ts| total(ts.tv_sec(), ts.tv_nsec()))
                .unwrap_or(i128::MAX);
            if coarse > past {
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }

    /// After ovlrun's own changes to a rootfs (a commit, its undo, a recovery), with the lock
    /// still held: waits (a clock tick at most) until the coarse clock has passed every ctime
    /// they set, which may come from the finer clock, and returns that moment. A session
    /// that starts later, or retries its commit from here, never takes them for conflicts.
    pub(crate) fn settled() -> Stamp {
        Stamp::fine_now().wait_coarse_past();
        Stamp::now()
    }

    /// Whether an entry with this ctime may have changed at or after the stamp.
    pub(crate) fn changed_since(self, ctime_sec: i64, ctime_nsec: i64) -> bool {
        let ctime = total(ctime_sec, ctime_nsec);
        let base = total(self.sec, self.nsec) - i128::from(FINE_GRAIN_SLACK_NS);
        // A whole-second ctime in the stamp's second may be a later change, truncated.
        ctime >= base || (ctime_nsec == 0 && ctime_sec >= self.sec)
    }

    fn changed(self, st: &FileStat) -> bool {
        self.changed_since(st.st_ctime, st.st_ctime_nsec)
    }
}

fn total(sec: i64, nsec: i64) -> i128 {
    i128::from(sec) * 1_000_000_000 + i128::from(nsec)
}

/// Why a path is a conflict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "path")]
pub enum Why {
    /// The rootfs entry changed (or was made) since the session began.
    Changed,
    /// The rootfs entry the session started from was removed since.
    Removed,
    /// Something beneath a directory the session removes or replaces changed since: the
    /// first such path, as the session sees it.
    Inside(PathBuf),
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Changed => write!(f, "changed in the rootfs since the session began"),
            Why::Removed => write!(f, "removed from the rootfs since the session began"),
            Why::Inside(p) => write!(
                f,
                "{} beneath it changed in the rootfs since the session began",
                p.display()
            ),
        }
    }
}

/// A path the session changes that the rootfs changed too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The session's change there.
    pub change: Change,
    /// The path, as the session sees it (`/etc/motd`).
    pub path: PathBuf,
    /// What the rootfs did.
    pub why: Why,
}

/// The conflicts of `plan` (the session's upper `upper`, work directory `work`, against
/// `rootfs`) with what changed in the rootfs since `base`, sorted by path.
///
/// # Errors
/// [`PlanError`] when the rootfs cannot be opened or a directory beneath it listed.
pub(crate) fn find(
    rootfs: &Path,
    upper: &Path,
    work: &Path,
    plan: &Plan,
    base: Stamp,
) -> Result<Vec<Conflict>, PlanError> {
    let root = Beneath::open(rootfs).map_err(|source| PlanError {
        path: rootfs.to_owned(),
        source,
    })?;
    let mut out: Vec<Conflict> = Vec::new();
    for (change, shown) in &plan.changes {
        let rel = shown.strip_prefix("/").unwrap_or(shown);
        let why = match root.lstat(rel) {
            Some(st) if base.changed(&st) => Some(Why::Changed),
            Some(_) => None,
            None if ancestor_changed(&root, rel, base) && copied_up(upper, work, rel) => {
                Some(Why::Removed)
            }
            None => None,
        };
        if let Some(why) = why {
            out.push(Conflict {
                change: *change,
                path: shown.clone(),
                why,
            });
        }
    }
    // A directory the commit removes (or replaces) takes everything beneath it along.
    for op in &plan.ops {
        let Op::Remove(rel) = op else { continue };
        let shown = Path::new("/").join(rel);
        if out.iter().any(|c| c.path == shown) {
            continue;
        }
        let Ok(dir) = root.dir(rel) else { continue };
        if let Some(inner) = changed_beneath(dir, &shown, base)? {
            let change = plan
                .changes
                .iter()
                .find(|(_, p)| *p == shown)
                .map_or(Change::Deleted, |(c, _)| *c);
            out.push(Conflict {
                change,
                path: shown,
                why: Why::Inside(inner),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Whether the nearest ancestor of `rel` the rootfs has changed its entries since `base`.
fn ancestor_changed(root: &Beneath, rel: &Path, base: Stamp) -> bool {
    rel.ancestors()
        .skip(1)
        .find_map(|a| root.lstat(a))
        .is_none_or(|st| base.changed(&st))
}

/// Whether the upper's entry at `rel` is a copy-up of a rootfs entry: the kernel overlayfs
/// marks every copy-up of a directory or single-linked file with `overlay.origin` (empty
/// when the lower cannot give file handles); ovlrun's FUSE server with its origin inode
/// number, in an xattr or, for symlinks, in the work directory's origin map.
fn copied_up(upper: &Path, work: &Path, rel: &Path) -> bool {
    let entry = upper.join(rel);
    let Ok(md) = entry.symlink_metadata() else {
        return false;
    };
    let marked = [
        "user.overlay.origin",
        "trusted.overlay.origin",
        format::INO_XATTR,
    ]
    .iter()
    .any(|x| sys::xattr::get(&entry, OsStr::new(x)).is_ok());
    marked
        || work
            .join(crate::layers::ORIGIN_DIR)
            .join(md.ino().to_string())
            .symlink_metadata()
            .is_ok()
}

/// The first entry beneath directory `dir` (shown as `shown`) whose ctime is at or after
/// `base`, walked by fd.
fn changed_beneath(dir: OwnedFd, shown: &Path, base: Stamp) -> Result<Option<PathBuf>, PlanError> {
    let fail = |source: nix::Error| PlanError {
        path: shown.to_owned(),
        source: source.into(),
    };
    let readable = nix::fcntl::openat(
        &dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(fail)?;
    drop(dir);
    let mut listing = Dir::from_fd(readable).map_err(fail)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(fail)?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." {
            names.push(name.to_owned());
        }
    }
    let mut subdirs = Vec::new();
    for name in names {
        let st = match fstatat(&listing, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => return Err(fail(e)),
        };
        if base.changed(&st) {
            return Ok(Some(shown.join(&name)));
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            subdirs.push(name);
        }
    }
    for name in subdirs {
        let sub = nix::fcntl::openat(
            &listing,
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(fail)?;
        if let Some(p) = changed_beneath(sub, &shown.join(&name), base)? {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ctime stamped after the start is a change, on filesystems of every granularity; one
    /// well before it is not.
    #[test]
    fn ctimes_at_or_after_the_start_are_changes() {
        let base = Stamp {
            sec: 100,
            nsec: 500_000_000,
        };
        assert!(base.changed_since(100, 500_000_000), "the same tick");
        assert!(base.changed_since(101, 0));
        assert!(
            base.changed_since(100, 0),
            "a whole-second filesystem, same second"
        );
        assert!(base.changed_since(100, 499_999_900), "a 100 ns filesystem");
        assert!(!base.changed_since(100, 400_000_000));
        assert!(!base.changed_since(99, 0));
        let later = Stamp::now();
        let file = tempfile::NamedTempFile::new().unwrap();
        let md = file.as_file().metadata().unwrap();
        assert!(later.changed_since(md.ctime(), md.ctime_nsec()));
    }
}
