//! Finding the host programs ovlrun runs (`newuidmap`, `newgidmap`, `fusermount3`,
//! `unshare`), with one rule for the launcher and for `doctor`.
//!
//! The rule: `$PATH`, then the usual system directories, sbin included, taking the first
//! regular file with an execute bit. A user's `$PATH` often lacks sbin, and `sudo`,
//! cron or a service manager hand a short one; a setuid helper installed in `/usr/sbin`
//! works the same whoever's `$PATH` it is, so looking there too is what makes the
//! launcher's choice not depend on how the shell was started.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Searched after `$PATH`, in this order.
pub(crate) const SYSTEM_DIRS: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The calling process's `$PATH` (empty when unset: the system directories still apply).
pub(crate) fn search_path() -> OsString {
    std::env::var_os("PATH").unwrap_or_default()
}

/// `name` found by the rule above with `$PATH` as it is now.
pub(crate) fn find(name: &str) -> Option<PathBuf> {
    find_in(name, &search_path())
}

/// `name` found by the rule above, with `search` standing for `$PATH`.
pub(crate) fn find_in(name: &str, search: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(search)
        .chain(SYSTEM_DIRS.map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

/// Setuid root (Debian) or carrying file capabilities (Fedora ships newuidmap with
/// `cap_setuid=ep` and no setuid bit): able to do for a user what only root may.
pub(crate) fn is_privileged(path: &Path) -> bool {
    let setuid_root = fs::metadata(path).is_ok_and(|m| m.mode() & 0o4000 != 0 && m.uid() == 0);
    // `sys::xattr` does not follow a symlink; the helper that runs is the link's target.
    let caps = fs::canonicalize(path).is_ok_and(|p| {
        crate::sys::xattr::get(&p, std::ffi::OsStr::new("security.capability")).is_ok()
    });
    setuid_root || caps
}

/// What the search found for a helper that must run with privilege.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Helper {
    /// Nowhere on the search path.
    Missing,
    /// Found, but neither setuid root nor with file capabilities: running it would fail.
    Unprivileged(PathBuf),
    /// Found and privileged.
    Ready(PathBuf),
}

impl Helper {
    /// Looks `name` up with `search` standing for `$PATH`, and checks its privilege.
    pub(crate) fn find_in(name: &str, search: &OsStr) -> Helper {
        match find_in(name, search) {
            None => Helper::Missing,
            Some(path) if is_privileged(&path) => Helper::Ready(path),
            Some(path) => Helper::Unprivileged(path),
        }
    }

    /// The path, when the helper can be used.
    pub(crate) fn ready(self) -> Option<PathBuf> {
        match self {
            Helper::Ready(path) => Some(path),
            Helper::Missing | Helper::Unprivileged(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn search_path_comes_first_and_needs_an_exec_bit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ovlrun-probe-helper");
        fs::write(&file, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(find_in("ovlrun-probe-helper", dir.path().as_os_str()), None);
        fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            find_in("ovlrun-probe-helper", dir.path().as_os_str()),
            Some(file.clone())
        );
        assert_eq!(
            Helper::find_in("ovlrun-probe-helper", dir.path().as_os_str()),
            Helper::Unprivileged(file)
        );
        fs::create_dir(dir.path().join("sh")).unwrap();
        let sh = find_in("sh", dir.path().as_os_str()).expect("sh in a system directory");
        assert!(SYSTEM_DIRS.iter().any(|d| sh.starts_with(d)), "{sh:?}");
    }
}
