//! The host's cgroup hierarchies: their layout, which decides what a session's
//! `/sys/fs/cgroup` holds, and where each is mounted, which `crate::cgroups` writes into.

use std::path::PathBuf;

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

// `CgroupMounts` serves `crate::cgroups`, whose callers (issue 15's runtime, sessions'
// limits) land on another branch; until then only tests use it.

/// The v1 controllers ovlrun knows by name (a `name=...` hierarchy such as `name=systemd`
/// counts too); other super options of a `cgroup` mount (`rw`, `clone_children`, ...) are not
/// controllers.
#[allow(dead_code)]
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// One mounted cgroup v1 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct V1Hierarchy {
    /// Where it is mounted, e.g. `/sys/fs/cgroup/memory`.
    pub(crate) mount_point: PathBuf,
    /// The controllers bound to it, e.g. `["cpu", "cpuacct"]` or `["name=systemd"]`.
    pub(crate) controllers: Vec<String>,
}

/// Where the host's cgroup hierarchies are mounted: what `crate::cgroups` writes into.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CgroupMounts {
    /// Each v1 hierarchy once (the first mount of it), in mount order.
    pub(crate) v1: Vec<V1Hierarchy>,
    /// The cgroup2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host).
    pub(crate) unified: Option<PathBuf>,
}

#[allow(dead_code)]
impl CgroupMounts {
    /// Reads the caller's mount table (`/proc/self/mountinfo`).
    pub(crate) fn of_host() -> std::io::Result<CgroupMounts> {
        Ok(CgroupMounts::parse(&std::fs::read_to_string(
            "/proc/self/mountinfo",
        )?))
    }

    /// The cgroup mounts of a `/proc/PID/mountinfo` text.
    pub(crate) fn parse(mountinfo: &str) -> CgroupMounts {
        let mut mounts = CgroupMounts::default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split(' ').nth(4).map(unescape_octal) else {
                continue;
            };
            let mut right = right.split(' ');
            let (fstype, super_opts) = (right.next(), right.nth(1).unwrap_or(""));
            match fstype {
                Some("cgroup2") if mounts.unified.is_none() => {
                    mounts.unified = Some(mount_point);
                }
                Some("cgroup") => {
                    let controllers: Vec<String> = super_opts
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                        .map(str::to_owned)
                        .collect();
                    let seen = mounts.v1.iter().any(|h| h.controllers == controllers);
                    if !controllers.is_empty() && !seen {
                        mounts.v1.push(V1Hierarchy {
                            mount_point,
                            controllers,
                        });
                    }
                }
                _ => {}
            }
        }
        mounts
    }

    /// The v1 hierarchy `controller` is bound to, if one is mounted.
    pub(crate) fn v1_of(&self, controller: &str) -> Option<&V1Hierarchy> {
        self.v1
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
    }
}

#[allow(dead_code)]
/// A mountinfo path with its `\ooo` escapes (space, tab, newline, backslash) undone.
fn unescape_octal(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4);
        match octal {
            Some(d) if b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// This machine's table: v1 controllers one per mount, cgroup2 at `unified`.
    const HYBRID: &str = "\
25 1 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw,relatime shared:8 - tmpfs tmpfs rw,mode=755
27 26 0:25 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
28 26 0:26 / /sys/fs/cgroup/cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpuacct
29 26 0:27 / /sys/fs/cgroup/memory rw,relatime shared:11 - cgroup cgroup rw,memory
30 26 0:28 / /sys/fs/cgroup/freezer rw,relatime shared:12 - cgroup cgroup rw,freezer
31 26 0:29 / /sys/fs/cgroup/systemd rw,relatime shared:13 - cgroup cgroup rw,xattr,name=systemd
32 26 0:30 / /sys/fs/cgroup/unified rw,relatime shared:14 - cgroup2 cgroup2 rw
33 1 0:29 / /mnt/again\\040there rw,relatime shared:13 - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn hybrid_table_gives_each_v1_hierarchy_once_and_the_unified_mount() {
        let m = CgroupMounts::parse(HYBRID);
        let names: Vec<String> = m.v1.iter().map(|h| h.controllers.join(",")).collect();
        assert_eq!(
            names,
            ["cpu", "cpuacct", "memory", "freezer", "name=systemd"]
        );
        assert_eq!(
            m.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            m.v1_of("freezer").map(|h| h.mount_point.clone()),
            Some(PathBuf::from("/sys/fs/cgroup/freezer"))
        );
        assert!(m.v1_of("pids").is_none());
    }

    #[test]
    fn comounted_controllers_share_one_hierarchy() {
        let m = CgroupMounts::parse(
            "1 0 0:1 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct,clone_children\n",
        );
        assert_eq!(m.v1.len(), 1);
        assert_eq!(m.v1[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(m.v1_of("cpuacct"), m.v1_of("cpu"));
    }

    #[test]
    fn unified_host_has_no_v1_hierarchy() {
        let m = CgroupMounts::parse(
            "1 0 0:1 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
        );
        assert!(m.v1.is_empty());
        assert_eq!(m.unified.as_deref(), Some(Path::new("/sys/fs/cgroup")));
    }

    #[test]
    fn escaped_mount_points_are_unescaped() {
        assert_eq!(unescape_octal("/a\\040b\\134c"), PathBuf::from("/a b\\c"));
        assert_eq!(
            unescape_octal("/trailing\\04"),
            PathBuf::from("/trailing\\04")
        );
    }
}
