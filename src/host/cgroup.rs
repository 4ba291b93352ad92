//! The host's cgroup hierarchies, which decide what a session's `/sys/fs/cgroup` holds.

/// How the host lays out its cgroup hierarchies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CgroupLayout {
    /// cgroup2 at `/sys/fs/cgroup`.
    Unified,
    /// v1 controllers, with cgroup2 at `/sys/fs/cgroup/unified`.
    Hybrid,
    /// v1 controllers only.
    Legacy,
}

impl CgroupLayout {
    /// Reads the host's layout from the filesystem types at `/sys/fs/cgroup`.
    pub(crate) fn of_host() -> CgroupLayout {
        const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
        let is_cgroup2 = |p: &str| {
            nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
        };
        if is_cgroup2("/sys/fs/cgroup") {
            CgroupLayout::Unified
        } else if is_cgroup2("/sys/fs/cgroup/unified") {
            CgroupLayout::Hybrid
        } else {
            CgroupLayout::Legacy
        }
    }
}
