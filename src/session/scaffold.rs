//! Mount targets the launcher makes in the upper for its own mounts (`/proc`, `/tmp`,
//! `/etc/resolv.conf`, bind targets ...) when the rootfs lacks them, and their removal, so
//! they never show among a session's changes.
//!
//! What is made is written to a list in the work directory ([`LIST`]) before it is made, so
//! a launcher killed with SIGKILL (which cannot clean up) leaves the list behind: the next
//! use of the session ([`scrub`]: resume, diff, commit, export) removes what is still as the
//! launcher made it, and only that.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use super::netfiles::{self, NotPlaced};
use super::rootfs::RootfsError;
use crate::config::SessionPlan;
use crate::layers::{LayerSetupError, NewNode, Overlay, OverlayConfig, Owner, WhiteoutFormat};
use crate::mount::MountError;
use crate::sandbox::plan;

/// The list of what the launcher made, in the work directory.
pub(crate) const LIST: &str = "ovlrun-scaffold";

/// An (seconds, nanoseconds) time.
type Ts = (i64, i64);

/// One entry the launcher made, and its upper parent's times around the making.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Made {
    /// The merged path.
    path: PathBuf,
    /// The upper parent's (atime, mtime) before; `None` while the entry is being made.
    before: Option<(Ts, Ts)>,
    /// The upper parent's mtime right after.
    after: Option<Ts>,
}

/// What the launcher made in the upper for its own mounts, in the order it made them; and
/// the upper directories it copied up to hold them. Each is removed after the session; a
/// copied parent too, if the session left it as it was (empty, same mode and owner).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scaffold {
    made: Vec<Made>,
    /// Upper directories copied up to hold a made entry, with their (mode, uid, gid) then.
    copied: Vec<(PathBuf, (u32, u32, u32))>,
}

fn times_of(path: &Path) -> Option<(Ts, Ts)> {
    use std::os::unix::fs::MetadataExt;
    let m = path.symlink_metadata().ok()?;
    Some(((m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec())))
}

fn owner_of(path: &Path) -> Option<(u32, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let m = path.symlink_metadata().ok()?;
    Some((m.mode(), m.uid(), m.gid()))
}

impl Scaffold {
    /// The list's text: one line per entry, paths in hex so any byte survives.
    fn to_text(&self) -> String {
        let hex = |p: &Path| -> String { crate::policy::names::hex(p.as_os_str().as_bytes()) };
        let ts = |t: Option<Ts>| t.map_or("-".to_owned(), |(s, ns)| format!("{s}.{ns}"));
        let mut out = String::new();
        for m in &self.made {
            out += &format!(
                "made {} {} {} {}\n",
                hex(&m.path),
                ts(m.before.map(|b| b.0)),
                ts(m.before.map(|b| b.1)),
                ts(m.after)
            );
        }
        for (p, (mode, uid, gid)) in &self.copied {
            out += &format!("copied {} {mode} {uid} {gid}\n", hex(p));
        }
        out
    }

    /// Parses [`Scaffold::to_text`]; `None` for anything else (a list ovlrun did not write
    /// is acted on not at all).
    fn from_text(text: &str) -> Option<Scaffold> {
        fn path(hex: &str) -> Option<PathBuf> {
            if hex.is_empty() {
                return None;
            }
            let bytes = crate::policy::names::unhex(hex)?;
            let p = PathBuf::from(OsStr::from_bytes(&bytes));
            // Merged paths: relative, plain names only.
            p.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
                .then_some(p)
        }
        fn ts(s: &str) -> Option<Option<Ts>> {
            if s == "-" {
                return Some(None);
            }
            let (a, b) = s.split_once('.')?;
            Some(Some((a.parse().ok()?, b.parse().ok()?)))
        }
        let mut s = Scaffold::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["made", p, a, m, after] => s.made.push(Made {
                    path: path(p)?,
                    before: ts(a)?.zip(ts(m)?),
                    after: ts(after)?,
                }),
                ["copied", p, mode, uid, gid] => s.copied.push((
                    path(p)?,
                    (mode.parse().ok()?, uid.parse().ok()?, gid.parse().ok()?),
                )),
                _ => return None,
            }
        }
        Some(s)
    }

    /// Writes the list into `work`, whole or not at all (a temp file renamed). Not synced:
    /// it guards against a killed launcher, not a lost machine.
    fn save(&self, work: &Path) -> Result<(), RootfsError> {
        let path = work.join(LIST);
        let tmp = work.join(format!("{LIST}.tmp"));
        std::fs::write(&tmp, self.to_text())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| RootfsError::Scaffold { path, source })
    }
}

/// Creates the mount targets the rootfs lacks, through the overlay's own rules (before it is
/// mounted), so copied-up parents keep their metadata; returns what it made for [`remove`],
/// where the host's resolver files go, and those that cannot go in. First scrubs what a killed launcher left.
pub(crate) fn make_targets(
    plan: &SessionPlan,
    upper: &Path,
    work: &Path,
) -> Result<(Scaffold, Vec<plan::NetFile>, Vec<NotPlaced>), RootfsError> {
    let lowers = plan.lowers();
    scrub(&lowers, upper, work);
    let ovl = open_layers(&lowers, upper, work, plan.whiteout)?;
    // A resumed upper may hold metadata-only copies a killed server left; the kernel
    // backend cannot read them.
    ovl.complete_metacopies().map_err(|source| {
        RootfsError::Mount(MountError::Layers(LayerSetupError::Metacopy {
            upper: upper.to_owned(),
            source,
        }))
    })?;
    let (net, not_placed) = netfiles::resolve(plan, &ovl);
    let owner = Owner { uid: 0, gid: 0 };
    let mut scaffold = Scaffold::default();
    for (target, kind) in plan::targets(plan, &net) {
        let mut loc = ovl.root_loc();
        let comps: Vec<_> = target
            .strip_prefix("/")
            .unwrap_or(&target)
            .components()
            .collect();
        for (i, comp) in comps.iter().enumerate() {
            let name = comp.as_os_str();
            let err = |e: nix::Error| RootfsError::Scaffold {
                path: loc.child_path(name),
                source: e.into(),
            };
            loc = match ovl.lookup(&loc, name) {
                Ok(found) => found.loc,
                Err(nix::errno::Errno::ENOENT) => {
                    let node = if i + 1 == comps.len() && kind == plan::Kind::File {
                        NewNode::File {
                            mode: 0o644,
                            flags: OFlag::O_WRONLY,
                        }
                    } else {
                        NewNode::Dir { mode: 0o755 }
                    };
                    // Listed before they are made: the parents copied up first (with the
                    // lower's owner, as a copy keeps it), then the entry.
                    let first_copied = scaffold.copied.len();
                    for a in loc.path.ancestors() {
                        if !a.as_os_str().is_empty() && !upper.join(a).exists() {
                            if let Some(o) = owner_of(&in_lowers(&lowers, a)) {
                                scaffold.copied.push((a.to_owned(), o));
                            }
                        }
                    }
                    scaffold.made.push(Made {
                        path: loc.child_path(name),
                        before: None,
                        after: None,
                    });
                    scaffold.save(work)?;
                    ovl.copy_up(&loc).map_err(err)?;
                    for (a, o) in &mut scaffold.copied[first_copied..] {
                        if let Some(now) = owner_of(&upper.join(&*a)) {
                            *o = now;
                        }
                    }
                    let upper_parent = upper.join(&loc.path);
                    let before = times_of(&upper_parent);
                    let (found, _) = ovl.create(&loc, name, &node, owner).map_err(err)?;
                    let after = times_of(&upper_parent).map(|(_, m)| m);
                    if let Some(m) = scaffold.made.last_mut() {
                        m.before = before;
                        m.after = after;
                    }
                    scaffold.save(work)?;
                    found.loc
                }
                Err(e) => return Err(err(e)),
            };
        }
    }
    Ok((scaffold, net, not_placed))
}

/// The layers of a session's overlay; `whiteout` as the plan asks (the first opening of an
/// upper records its format, which the overlay's mount must then find).
fn open_layers(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    whiteout: Option<WhiteoutFormat>,
) -> Result<Overlay, RootfsError> {
    Overlay::new(&OverlayConfig {
        lowers: lowers.to_vec(),
        upper: upper.to_owned(),
        work: Some(work.to_owned()),
        whiteout,
        durable: true,
    })
    .map_err(|e| RootfsError::Mount(MountError::Layers(e)))
}

/// Removes what a killed launcher made and listed in `work`, as far as it is still as made;
/// then the list. Nothing to do (the common case) costs one failed open.
/// `rel` in the topmost of `lowers` (topmost first) that has it, else in the bottom one: where
/// the session's view of `rel` comes from, as far as a parent's owner and xattrs go.
fn in_lowers(lowers: &[PathBuf], rel: &Path) -> PathBuf {
    lowers
        .iter()
        .map(|l| l.join(rel))
        .find(|p| p.symlink_metadata().is_ok())
        .or_else(|| lowers.last().map(|l| l.join(rel)))
        .unwrap_or_else(|| rel.to_owned())
}

pub(crate) fn scrub(lowers: &[PathBuf], upper: &Path, work: &Path) {
    let Ok(text) = std::fs::read_to_string(work.join(LIST)) else {
        return;
    };
    match Scaffold::from_text(&text) {
        Some(s) => remove(lowers, upper, work, &s),
        None => {
            let _ = std::fs::remove_file(work.join(LIST));
        }
    }
}

/// Removes what [`make_targets`] made, where the session left it as made (an empty file
/// or directory of the upper alone), so it never shows among the session's changes: where
/// nothing else touched a parent, its times go back to what they were, and a parent copied
/// up only for the launcher goes too. Then the list in `work`.
pub(crate) fn remove(lowers: &[PathBuf], upper: &Path, work: &Path, scaffold: &Scaffold) {
    let Ok(ovl) = open_layers(lowers, upper, work, None) else {
        return;
    };
    for made in scaffold.made.iter().rev() {
        let (Some(parent), Some(name)) = (made.path.parent(), made.path.file_name()) else {
            continue;
        };
        let mut loc = Some(ovl.root_loc());
        for comp in parent.components() {
            loc = loc.and_then(|l| ovl.lookup(&l, comp.as_os_str()).ok().map(|f| f.loc));
        }
        let Some(loc) = loc else { continue };
        let Ok(found) = ovl.lookup(&loc, name) else {
            continue;
        };
        // Only an entry of the upper alone: removing one with a lower behind would write a
        // whiteout, a deletion the session never made.
        if !found.loc.lowers.is_empty() {
            continue;
        }
        let upper_parent = upper.join(parent);
        let untouched = match (made.after, times_of(&upper_parent)) {
            (Some(after), Some((_, now))) => after == now,
            _ => false,
        };
        let empty_file =
            found.attr.st.st_mode & libc::S_IFMT == libc::S_IFREG && found.attr.st.st_size == 0;
        let removed = if found.attr.is_dir() {
            ovl.rmdir(&loc, name).is_ok()
        } else {
            empty_file && ovl.unlink(&loc, name).is_ok()
        };
        if let (true, true, Some((atime, mtime))) = (removed, untouched, made.before) {
            let _ = nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &upper_parent,
                &nix::sys::time::TimeSpec::new(atime.0, atime.1),
                &nix::sys::time::TimeSpec::new(mtime.0, mtime.1),
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            );
        }
    }
    // Deepest first: a copied parent can only go once its children have.
    let mut copied: Vec<_> = scaffold.copied.iter().collect();
    copied.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, owner) in copied {
        let in_upper = upper.join(path);
        let xattrs = |p: &Path| crate::policy::plan::user_xattrs(p).ok();
        let is_plain_copy = owner_of(&in_upper) == Some(*owner)
            && xattrs(&in_upper) == xattrs(&in_lowers(lowers, path));
        if is_plain_copy {
            // Fails, as it should, when the session put anything in it.
            let _ = std::fs::remove_dir(&in_upper);
        }
    }
    let _ = std::fs::remove_file(work.join(LIST));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_round_trips_any_name_and_refuses_what_it_did_not_write() {
        let s = Scaffold {
            made: vec![
                Made {
                    path: PathBuf::from(OsStr::from_bytes(b"etc/r\xffe\nsolv.conf")),
                    before: Some(((1, 2), (3, 4))),
                    after: Some((5, 6)),
                },
                Made {
                    path: "tmp".into(),
                    before: None,
                    after: None,
                },
            ],
            copied: vec![("etc".into(), (0o40755, 0, 0))],
        };
        assert_eq!(Scaffold::from_text(&s.to_text()), Some(s));
        for bad in [
            "made 2e2e -.- -\n",
            "made 2f6574 - - -\n",
            "made 6 - - -\n",
            "rm 2f - - -\n",
            "copied 6574 x 0 0\n",
        ] {
            assert_eq!(Scaffold::from_text(bad), None, "{bad:?}");
        }
    }
}
