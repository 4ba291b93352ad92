//! The running kernel's features and the caller's standing in it: the release and what it
//! implies, the filesystems it knows, whether the caller is an administrator of the initial
//! user namespace.

use std::fmt;
use std::fs;
use std::io;

/// A kernel release as `uname -r` prints it, compared by its leading numbers only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KernelVersion {
    major: u32,
    minor: u32,
    patch: u32,
}

impl KernelVersion {
    /// `major.minor.patch`.
    pub(crate) const fn new(major: u32, minor: u32, patch: u32) -> Self {
        KernelVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses `6.1.0-28-amd64`, `6.9`, `6.9.0-rc1+`, `5.15.167.4-microsoft-standard-WSL2`:
    /// up to three dot-separated numbers, each ending at the first non-digit. The major and
    /// minor numbers are required.
    pub(crate) fn parse(release: &str) -> Option<Self> {
        let mut parts = release.trim().split('.').map(leading_number);
        let major = parts.next()??;
        let minor = parts.next()??;
        let patch = parts.next().flatten().unwrap_or(0);
        Some(KernelVersion::new(major, minor, patch))
    }
}

fn leading_number(s: &str) -> Option<u32> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Linux 5.11 lets a user namespace's root mount overlayfs.
pub(crate) const ROOTLESS_OVERLAY: KernelVersion = KernelVersion::new(5, 11, 0);
/// Linux 6.9 added FUSE passthrough (`FUSE_PASSTHROUGH`, `CONFIG_FUSE_PASSTHROUGH`).
pub(crate) const FUSE_PASSTHROUGH: KernelVersion = KernelVersion::new(6, 9, 0);

/// The running kernel's release, trimmed (`/proc/sys/kernel/osrelease`).
///
/// # Errors
/// The read's error.
pub(crate) fn release() -> io::Result<String> {
    fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned())
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): it changes at every boot.
pub(crate) fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// `/proc/filesystems`, whose lines are `[nodev]\t<name>`.
///
/// # Errors
/// The read's error.
pub(crate) fn filesystems() -> io::Result<String> {
    fs::read_to_string("/proc/filesystems")
}

/// Whether a `/proc/filesystems` text lists `name`, matched by whole name.
pub(crate) fn has_filesystem(text: &str, name: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().last() == Some(name))
}

/// The inode of the initial user namespace, fixed by the kernel (`PROC_USER_INIT_INO` in
/// include/linux/proc_ns.h).
const INITIAL_USER_NS: &str = "user:[4026531837]";

/// Whether `link`, the target of `/proc/self/ns/user`, is the initial user namespace.
pub(crate) fn is_initial_user_ns(link: &str) -> bool {
    link == INITIAL_USER_NS
}

/// See: capability(7); include/uapi/linux/capability.h.
pub(crate) const CAP_SYS_ADMIN: u32 = 21;

/// Whether the `CapEff:` line of a `/proc/<pid>/status` text has capability `cap`.
pub(crate) fn has_effective_cap(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

/// Whether this process holds `CAP_SYS_ADMIN` in the initial user namespace: what FUSE
/// passthrough needs. Root in a container's user namespace, or with capabilities dropped,
/// does not.
pub(crate) fn initial_admin() -> bool {
    let initial_ns = fs::read_link("/proc/self/ns/user")
        .is_ok_and(|link| is_initial_user_ns(&link.to_string_lossy()));
    let admin = fs::read_to_string("/proc/self/status")
        .is_ok_and(|status| has_effective_cap(&status, CAP_SYS_ADMIN));
    initial_ns && admin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        let v = KernelVersion::new;
        assert_eq!(KernelVersion::parse("6.1.0-28-amd64"), Some(v(6, 1, 0)));
        assert_eq!(
            KernelVersion::parse("6.18.44-fc-v657\n"),
            Some(v(6, 18, 44))
        );
        assert_eq!(KernelVersion::parse("6.9"), Some(v(6, 9, 0)));
        assert_eq!(KernelVersion::parse("6.9.0-rc1+"), Some(v(6, 9, 0)));
        assert_eq!(KernelVersion::parse("6.10-rc2"), Some(v(6, 10, 0)));
        assert_eq!(
            KernelVersion::parse("5.15.167.4-microsoft-standard-WSL2"),
            Some(v(5, 15, 167))
        );
        for bad in ["", "6", "linux", "6.x"] {
            assert_eq!(KernelVersion::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn kernel_versions_compare_numerically() {
        let v = KernelVersion::new;
        assert!(v(6, 10, 0) > v(6, 9, 0)); // not string order
        assert!(v(5, 11, 0) > v(5, 10, 200));
        assert!(v(6, 9, 0) >= FUSE_PASSTHROUGH);
        assert!(v(6, 8, 12) < FUSE_PASSTHROUGH);
        assert!(v(5, 10, 0) < ROOTLESS_OVERLAY);
    }

    #[test]
    fn admin_needs_the_initial_namespace_and_the_capability() {
        assert!(is_initial_user_ns("user:[4026531837]"));
        assert!(!is_initial_user_ns("user:[4026532451]"));
        let status = "Name:\tcat\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        assert!(has_effective_cap(status, CAP_SYS_ADMIN));
        assert!(!has_effective_cap(
            "CapEff:\t0000000000000000\n",
            CAP_SYS_ADMIN
        ));
        assert!(!has_effective_cap(
            "CapPrm:\t000001fffeffffff\n",
            CAP_SYS_ADMIN
        ));
    }

    #[test]
    fn filesystems_list_is_matched_by_whole_name() {
        let text = "nodev\tsysfs\n\text4\nnodev\toverlay\nfuseblk\n";
        assert!(has_filesystem(text, "overlay"));
        assert!(has_filesystem(text, "ext4"));
        assert!(!has_filesystem(text, "fuse"));
    }
}
