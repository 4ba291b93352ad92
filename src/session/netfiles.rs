//! Where the host's name-resolution files go inside a session that shares the host's network.
//!
//! They are bound over the rootfs's own `/etc/resolv.conf` and `/etc/hosts`. When the rootfs's
//! file is a symlink (systemd-resolved images: `/etc/resolv.conf ->
//! ../run/systemd/resolve/stub-resolv.conf`, dangling outside a running system), the bind goes
//! to the link's target, resolved in the merged view as the session will resolve it (`/` is
//! the rootfs's root); a target that does not exist is made as mount scaffolding, and removed
//! again after the session. A link that cannot lead to a file (a loop, a directory) costs a
//! one-line note and the host's file, never the launch.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;

use crate::config::{Network, SessionPlan};
use crate::layers::{Loc, Overlay};
use crate::sandbox::plan::NetFile;

/// Symlinks followed at most, as the kernel's `MAXSYMLINKS`.
const MAX_LINKS: usize = 40;

/// A host file a shared-network session does not get, and why.
#[derive(Debug)]
pub(crate) struct NotPlaced {
    /// The host's file (`/etc/resolv.conf`, `/etc/hosts`).
    pub host: &'static Path,
    /// What the rootfs has in its place, as a phrase.
    pub problem: String,
}

/// The host's files a shared-network session gets, each with where it goes inside, and those
/// that cannot be placed.
pub(crate) fn resolve(plan: &SessionPlan, ovl: &Overlay) -> (Vec<NetFile>, Vec<NotPlaced>) {
    let (mut files, mut notes) = (Vec::new(), Vec::new());
    if plan.net != Network::Host {
        return (files, notes);
    }
    for host in ["/etc/resolv.conf", "/etc/hosts"].map(Path::new) {
        if !host.exists() {
            continue;
        }
        match resolve_in(ovl, host) {
            Ok(dest) => files.push(NetFile {
                source: host.to_owned(),
                dest,
            }),
            Err(problem) => notes.push(NotPlaced { host, problem }),
        }
    }
    (files, notes)
}

fn is_symlink(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFLNK
}

/// `path` (absolute) resolved in the merged view, every symlink followed as in the session;
/// the part that does not exist is kept as named.
fn resolve_in(ovl: &Overlay, path: &Path) -> Result<PathBuf, String> {
    let mut todo: VecDeque<OsString> = names(path);
    // The resolved components so far, each with where it is.
    let mut done: Vec<(OsString, Loc)> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            done.pop();
            continue;
        }
        let parent = done
            .last()
            .map_or_else(|| ovl.root_loc(), |(_, l)| l.clone());
        match ovl.lookup(&parent, &name) {
            Ok(found) if is_symlink(found.attr.st.st_mode) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err("is a symlink loop".into());
                }
                let target = ovl
                    .readlink(&found.loc)
                    .map_err(|e| format!("is a link that cannot be read ({e})"))?;
                let target = Path::new(&target);
                if target.is_absolute() {
                    done.clear();
                }
                for n in names(target).into_iter().rev() {
                    todo.push_front(n);
                }
            }
            Ok(found) if !todo.is_empty() && !found.attr.is_dir() => {
                return Err(format!(
                    "leads through {}, which is not a directory",
                    joined(&done, Some(&name)).display()
                ));
            }
            Ok(found) if todo.is_empty() && found.attr.is_dir() => {
                return Err(format!(
                    "leads to {}, a directory",
                    joined(&done, Some(&name)).display()
                ));
            }
            Ok(found) => done.push((name, found.loc)),
            Err(Errno::ENOENT) => {
                // The rest is made as scaffolding: plain names only.
                if todo.iter().any(|n| n == "..") {
                    return Err("leads through a directory that does not exist".into());
                }
                let mut out = joined(&done, Some(&name));
                out.extend(todo);
                return Ok(out);
            }
            Err(e) => return Err(format!("cannot be looked up ({e})")),
        }
    }
    Ok(joined(&done, None))
}

/// The plain names and `..` of `path` (`.`, `/` and the root left out).
fn names(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

fn joined(done: &[(OsString, Loc)], last: Option<&OsStr>) -> PathBuf {
    let mut p = PathBuf::from("/");
    p.extend(done.iter().map(|(n, _)| n));
    p.extend(last);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::OverlayConfig;

    fn overlay(lower: &Path, top: &Path) -> Overlay {
        Overlay::new(&OverlayConfig {
            lowers: vec![lower.to_owned()],
            upper: top.join("upper"),
            work: Some(top.join("work")),
            whiteout: None,
            durable: true,
        })
        .unwrap()
    }

    #[test]
    fn links_are_followed_inside_the_rootfs_and_missing_ends_kept() {
        let top = tempfile::tempdir().unwrap();
        let lower = top.path().join("lower");
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::create_dir_all(lower.join("run")).unwrap();
        std::fs::create_dir_all(top.path().join("upper")).unwrap();
        let ovl = overlay(&lower, top.path());
        let link = |target: &str| {
            let l = lower.join("etc/resolv.conf");
            let _ = std::fs::remove_file(&l);
            std::os::unix::fs::symlink(target, &l).unwrap();
        };
        let at = |p: &str| resolve_in(&ovl, Path::new(p));
        link("../run/systemd/resolve/stub-resolv.conf");
        assert_eq!(
            at("/etc/resolv.conf").unwrap(),
            Path::new("/run/systemd/resolve/stub-resolv.conf")
        );
        // Absolute, and `..` above the root: both stay in the rootfs.
        link("/../../run/x.conf");
        assert_eq!(at("/etc/resolv.conf").unwrap(), Path::new("/run/x.conf"));
        link("resolv.conf");
        assert!(at("/etc/resolv.conf").unwrap_err().contains("loop"));
        link("/run");
        assert!(at("/etc/resolv.conf").unwrap_err().contains("directory"));
        std::fs::remove_file(lower.join("etc/resolv.conf")).unwrap();
        assert_eq!(
            at("/etc/resolv.conf").unwrap(),
            Path::new("/etc/resolv.conf")
        );
    }
}
