//! `--user NAME|UID[:GROUP|GID]`, resolved in the rootfs's own `/etc/passwd` and
//! `/etc/group` (never the host's): uid, primary gid, supplementary groups, home.
//!
//! The tree's files are the tree owner's to write, so they are read as hostile: strictly
//! beneath the rootfs with no symlink followed (`sys::beneath`), regular files only, and
//! at most [`MAX_ACCOUNT_FILE`] bytes.

use std::path::Path;

use nix::fcntl::OFlag;

use super::{PlanError, check_id};
use crate::sys::beneath::open_beneath;

/// The largest `/etc/passwd` or `/etc/group` read (a real one is a few KiB).
pub(crate) const MAX_ACCOUNT_FILE: u64 = 4 << 20;

/// The user a session's command runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct User {
    /// uid inside the session.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary gids (the groups whose member lists name the user), without `gid`.
    pub groups: Vec<u32>,
    /// The home directory (`/` for a uid with no passwd entry).
    pub home: String,
}

/// One `/etc/passwd` line: name, uid, gid, home.
#[derive(Debug, PartialEq, Eq)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

/// One `/etc/group` line: name, gid, members.
#[derive(Debug, PartialEq, Eq)]
struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        match f.as_slice() {
            [name, _, uid, gid, _, home, ..] if !name.starts_with('#') => Some(PasswdEntry {
                name,
                uid: uid.parse().ok()?,
                gid: gid.parse().ok()?,
                home,
            }),
            _ => None,
        }
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        match f.as_slice() {
            [name, _, gid, members, ..] if !name.starts_with('#') => Some(GroupEntry {
                name,
                gid: gid.parse().ok()?,
                members: members.split(',').filter(|m| !m.is_empty()).collect(),
            }),
            _ => None,
        }
    })
}

/// Resolves `spec` against the texts of the tree's `passwd` and `group` (`rootfs` only
/// names them in errors).
///
/// # Errors
/// [`PlanError::User`] naming the value: a name with no entry, an id out of range.
pub(crate) fn resolve(
    spec: &str,
    passwd: &str,
    group: &str,
    rootfs: &Path,
) -> Result<User, PlanError> {
    let err = |problem: String| PlanError::User {
        value: spec.to_owned(),
        problem,
    };
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || grp.is_some_and(str::is_empty) {
        return Err(err("expected NAME|UID[:GROUP|GID]".into()));
    }
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == user)
                .ok_or_else(|| {
                    err(format!(
                        "no such user in {}",
                        rootfs.join("etc/passwd").display()
                    ))
                })?,
        ),
    };
    let uid = match &entry {
        Some(e) => e.uid,
        None => user.parse().unwrap_or(0),
    };
    let gid = match grp {
        None => entry.as_ref().map_or(0, |e| e.gid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    err(format!(
                        "no such group in {}",
                        rootfs.join("etc/group").display()
                    ))
                })?,
        },
    };
    let bad_id = |e: PlanError| err(e.to_string());
    check_id("--user", uid).map_err(bad_id)?;
    check_id("--user", gid).map_err(bad_id)?;
    let mut groups: Vec<u32> = match &entry {
        Some(e) => group_entries(group)
            .filter(|g| g.members.contains(&e.name) && g.gid != gid)
            .map(|g| g.gid)
            .collect(),
        None => Vec::new(),
    };
    groups.sort_unstable();
    groups.dedup();
    Ok(User {
        uid,
        gid,
        groups,
        home: entry.map_or_else(|| "/".to_owned(), |e| e.home.to_owned()),
    })
}

/// Reads `rel` (`etc/passwd`) of the tree `rootfs`: "" when it does not exist.
///
/// # Errors
/// [`PlanError::User`] naming `spec` and the file: a symlink on the way or at the end, not
/// a regular file, larger than [`MAX_ACCOUNT_FILE`], unreadable.
pub(crate) fn read_account_file(rootfs: &Path, rel: &str, spec: &str) -> Result<String, PlanError> {
    let path = rootfs.join(rel);
    let err = |problem: String| PlanError::User {
        value: spec.to_owned(),
        problem: format!("{}: {problem}", path.display()),
    };
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| err(e.desc().to_owned()))?;
    // O_NONBLOCK: a FIFO planted there must not hang the caller.
    let fd = match open_beneath(&root, Path::new(rel), OFlag::O_RDONLY | OFlag::O_NONBLOCK) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(String::new()),
        Err(nix::errno::Errno::ELOOP | nix::errno::Errno::EXDEV) => {
            return Err(err("a symlink on the way; not followed".into()));
        }
        Err(e) => return Err(err(e.desc().to_owned())),
    };
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    let bytes = crate::sys::read_at_most(file, MAX_ACCOUNT_FILE)
        .map_err(|e| err(e.to_string()))?
        .ok_or_else(|| err(format!("larger than {MAX_ACCOUNT_FILE} bytes")))?;
    // As read_to_string says it.
    String::from_utf8(bytes).map_err(|_| err("stream did not contain valid UTF-8".into()))
}

/// `--user spec` resolved in the tree at `rootfs`.
///
/// # Errors
/// As [`read_account_file`] and [`resolve`].
pub(crate) fn lookup(spec: &str, rootfs: &Path) -> Result<User, PlanError> {
    let passwd = read_account_file(rootfs, "etc/passwd", spec)?;
    let group = read_account_file(rootfs, "etc/group", spec)?;
    resolve(spec, &passwd, &group, rootfs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\nbob:x:1000:100:Bob:/home/bob:/bin/sh\nbroken line\n";
    const GROUP: &str =
        "root:x:0:\nusers:x:100:\nwheel:x:10:root,bob\naudio:x:29:bob\nbob2:x:1000:alice\n";

    fn r(spec: &str) -> Result<User, PlanError> {
        resolve(spec, PASSWD, GROUP, Path::new("/r"))
    }

    #[test]
    fn names_and_ids_resolve_in_the_tree() {
        let bob = r("bob").unwrap();
        assert_eq!(
            (bob.uid, bob.gid, bob.home.as_str()),
            (1000, 100, "/home/bob")
        );
        assert_eq!(bob.groups, vec![10, 29]);
        assert_eq!(r("1000").unwrap(), bob);
        let with_group = r("bob:wheel").unwrap();
        assert_eq!((with_group.gid, with_group.groups.clone()), (10, vec![29]));
        assert_eq!(r("bob:7").unwrap().gid, 7);
        let stranger = r("4242").unwrap();
        assert_eq!(
            (
                stranger.uid,
                stranger.gid,
                stranger.groups.len(),
                stranger.home.as_str()
            ),
            (4242, 0, 0, "/")
        );
        assert_eq!(r("4242:5").unwrap().gid, 5);
    }

    #[test]
    fn unknown_names_are_named_errors() {
        let e = r("alice").unwrap_err().to_string();
        assert_eq!(e, "--user alice: no such user in /r/etc/passwd");
        let e = r("bob:nogroup").unwrap_err().to_string();
        assert_eq!(e, "--user bob:nogroup: no such group in /r/etc/group");
        assert!(r("").is_err());
        assert!(r("bob:").is_err());
        assert!(r("4294967295").is_err());
    }

    #[test]
    fn the_tree_files_are_read_beneath_and_bounded() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(top.path().join("host-passwd"), PASSWD).unwrap();
        std::os::unix::fs::symlink("../../host-passwd", root.join("etc/passwd")).unwrap();
        let e = lookup("bob", &root).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        assert!(lookup("bob", &root).is_err(), "no passwd: no bob");
        assert_eq!(lookup("7", &root).unwrap().home, "/");
        std::fs::write(root.join("etc/passwd"), PASSWD).unwrap();
        assert_eq!(lookup("bob", &root).unwrap().uid, 1000);
        let big = std::fs::File::create(root.join("etc/group")).unwrap();
        big.set_len(MAX_ACCOUNT_FILE + 1).unwrap();
        let e = lookup("bob", &root).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        std::fs::remove_file(root.join("etc/group")).unwrap();
        nix::unistd::mkfifo(&root.join("etc/group"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = lookup("bob", &root).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
