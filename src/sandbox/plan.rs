//! The session's filesystem setup as data: a list of [`Step`]s the child executes in order,
//! after bubblewrap's `SetupOp`. Built from the [`SessionPlan`] without touching anything,
//! so it is unit-tested without root.

use std::path::{Path, PathBuf};

use crate::config::{FsKind, FsMount, Network, SessionPlan};
use crate::host::cgroup::CgroupLayout;

/// Host device nodes bound into the session's `/dev`.
pub(crate) const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// What a mount target must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A directory.
    Dir,
    /// A regular file (the target of a file bind mount).
    File,
}

/// One setup step; paths are absolute paths inside the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A new procfs for the session's pid namespace (host `/proc` bound where refused).
    Proc(PathBuf),
    /// A tmpfs with this mode.
    Tmpfs {
        /// Where.
        dest: PathBuf,
        /// Mode of its root.
        mode: u32,
    },
    /// Creates a mount target inside a filesystem the session itself mounted.
    Create {
        /// Where.
        dest: PathBuf,
        /// What.
        kind: Kind,
    },
    /// Binds host `source` onto `dest` (recursively for directories).
    Bind {
        /// Host path.
        source: PathBuf,
        /// Where.
        dest: PathBuf,
        /// Read-only.
        read_only: bool,
    },
    /// A new read-only sysfs (for a session with its own network namespace).
    Sysfs(PathBuf),
    /// A new devpts instance, with `/dev/ptmx` pointing into it.
    DevPts(PathBuf),
    /// A symlink `dest` -> `target`.
    Symlink {
        /// The link's content.
        target: PathBuf,
        /// Where.
        dest: PathBuf,
    },
    /// Hides `dest`: `/dev/null` bound over a file, an empty read-only tmpfs over a
    /// directory; nothing where it does not exist.
    Mask(PathBuf),
    /// Makes `dest` and every mount below it read-only (bound onto itself first, so a path
    /// inside a mount, `/proc/sys`, becomes a mount of its own); nothing where it does not
    /// exist.
    ReadOnly(PathBuf),
    /// Makes the mount at `dest` (a mount the setup made) and every mount below it read-only.
    ReadOnlyMount(PathBuf),
    /// A new cgroup2 mount, read-only, showing the session's own cgroup namespace.
    Cgroup2(PathBuf),
    /// A config's mount, with its own flags and options.
    Mount(FsMount),
    /// A `name=value` sysctl, written under `/proc/sys` of the session's namespaces.
    Sysctl {
        /// The key, dotted (`net.ipv4.ip_forward`).
        key: String,
        /// The value.
        value: String,
    },
}

/// A host file bound into a shared-network session (resolv.conf, hosts), and where: its own
/// path, or the target of the rootfs's symlink there, as the [`super::Filesystem`] resolved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NetFile {
    /// The host file.
    pub source: PathBuf,
    /// Where it goes inside (absolute, no symlink on the way).
    pub dest: PathBuf,
}

/// What the setup needs from the merged root before it starts: mount targets that must exist
/// there. Those the launcher has to create are removed again before the session's changes
/// are looked at, so they never show in the upper.
pub(crate) fn targets(plan: &SessionPlan, net: &[NetFile]) -> Vec<(PathBuf, Kind)> {
    let mut t: Vec<(PathBuf, Kind)> = ["/proc", "/dev", "/sys", "/tmp"]
        .iter()
        .map(|p| (PathBuf::from(p), Kind::Dir))
        .collect();
    for file in net {
        t.push((file.dest.clone(), Kind::File));
    }
    for m in &plan.mounts {
        let kind = match &m.kind {
            FsKind::Bind { source, .. } if !source.is_dir() => Kind::File,
            _ => Kind::Dir,
        };
        t.push((m.dest.clone(), kind));
    }
    for bind in &plan.binds {
        let kind = if bind.source.is_dir() {
            Kind::Dir
        } else {
            Kind::File
        };
        t.push((bind.dest.clone(), kind));
    }
    t.extend(plan.tmpfs.iter().map(|p| (p.clone(), Kind::Dir)));
    t
}

/// The steps, in order: each one's target exists when it runs; `net`: the host files a
/// shared-network session gets.
pub(crate) fn steps(plan: &SessionPlan, cgroup: CgroupLayout, net: &[NetFile]) -> Vec<Step> {
    let p = PathBuf::from;
    let mut s = vec![
        Step::Proc(p("/proc")),
        Step::Tmpfs {
            dest: p("/dev"),
            mode: 0o755,
        },
    ];
    for dev in DEVICES {
        let dest = Path::new("/dev").join(dev);
        s.push(Step::Create {
            dest: dest.clone(),
            kind: Kind::File,
        });
        s.push(Step::Bind {
            source: dest.clone(),
            dest,
            read_only: false,
        });
    }
    // Made in the session's own /dev tmpfs, never in the upper: the nodes stay usable as the
    // bind keeps the host mount's flags (no nodev), unlike the tmpfs around them.
    for dev in &plan.dev_binds {
        let parents: Vec<&Path> = dev
            .dest
            .ancestors()
            .skip(1)
            .take_while(|a| *a != Path::new("/dev"))
            .collect();
        for dir in parents.into_iter().rev() {
            s.push(Step::Create {
                dest: dir.to_owned(),
                kind: Kind::Dir,
            });
        }
        s.push(Step::Create {
            dest: dev.dest.clone(),
            kind: Kind::File,
        });
        s.push(Step::Bind {
            source: dev.source.clone(),
            dest: dev.dest.clone(),
            read_only: false,
        });
    }
    s.push(Step::Create {
        dest: p("/dev/pts"),
        kind: Kind::Dir,
    });
    s.push(Step::DevPts(p("/dev/pts")));
    s.push(Step::Create {
        dest: p("/dev/shm"),
        kind: Kind::Dir,
    });
    s.push(Step::Tmpfs {
        dest: p("/dev/shm"),
        mode: 0o1777,
    });
    for (target, name) in [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        s.push(Step::Symlink {
            target: p(target),
            dest: Path::new("/dev").join(name),
        });
    }
    s.push(match plan.net {
        // A new network namespace owned by the session's user namespace may mount its own
        // sysfs, which shows only its own interfaces.
        Network::None => Step::Sysfs(p("/sys")),
        Network::Host => Step::Bind {
            source: p("/sys"),
            dest: p("/sys"),
            read_only: true,
        },
    });
    s.extend(cgroup_view(cgroup));
    s.extend(plan.sysctl.iter().map(|(key, value)| Step::Sysctl {
        key: key.clone(),
        value: value.clone(),
    }));
    s.extend(plan.masked_paths.iter().cloned().map(Step::Mask));
    // Last of the kernel's own filesystems: /sys with every submount the host had.
    s.push(Step::ReadOnlyMount(p("/sys")));
    s.extend(plan.readonly_paths.iter().cloned().map(Step::ReadOnly));
    s.push(Step::Tmpfs {
        dest: p("/tmp"),
        mode: 0o1777,
    });
    for file in net {
        s.push(Step::Bind {
            source: file.source.clone(),
            dest: file.dest.clone(),
            read_only: true,
        });
    }
    s.extend(plan.mounts.iter().cloned().map(Step::Mount));
    for dest in &plan.tmpfs {
        s.push(Step::Tmpfs {
            dest: dest.clone(),
            mode: 0o755,
        });
    }
    for bind in &plan.binds {
        s.push(Step::Bind {
            source: bind.source.clone(),
            dest: bind.dest.clone(),
            read_only: bind.read_only,
        });
    }
    s
}

/// `/sys/fs/cgroup` as the session sees it: an empty tmpfs over the host's hierarchies, with
/// the session's own cgroup2 (in its cgroup namespace) where the host has one. A new cgroup
/// namespace cannot mount v1 hierarchies from a user namespace, so those are not shown.
fn cgroup_view(layout: CgroupLayout) -> Vec<Step> {
    let root = PathBuf::from("/sys/fs/cgroup");
    let mut s = vec![Step::Tmpfs {
        dest: root.clone(),
        mode: 0o755,
    }];
    match layout {
        CgroupLayout::Unified => s.push(Step::Cgroup2(root)),
        CgroupLayout::Hybrid => {
            let unified = root.join("unified");
            s.push(Step::Create {
                dest: unified.clone(),
                kind: Kind::Dir,
            });
            s.push(Step::Cgroup2(unified));
        }
        CgroupLayout::Legacy => {}
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Bind;

    /// The host's resolver files at their own paths, as over a rootfs without links there.
    fn net_files(plan: &SessionPlan) -> Vec<NetFile> {
        if plan.net == Network::None {
            return Vec::new();
        }
        ["/etc/resolv.conf", "/etc/hosts"]
            .map(PathBuf::from)
            .into_iter()
            .filter(|p| p.exists())
            .map(|p| NetFile {
                source: p.clone(),
                dest: p,
            })
            .collect()
    }

    fn plan(net: Network) -> SessionPlan {
        let mut plan =
            SessionPlan::new(PathBuf::from("/r"), vec!["sh".into()], PathBuf::from("/s"));
        plan.hostname = "h".into();
        plan.net = net;
        plan.binds = vec![Bind {
            source: PathBuf::from("/etc"),
            dest: PathBuf::from("/host-etc"),
            read_only: true,
        }];
        plan.tmpfs = vec![PathBuf::from("/scratch")];
        plan.fs = crate::mount::Backend::Fuse;
        plan
    }

    #[test]
    fn every_step_target_exists_before_it_runs() {
        for net in [Network::Host, Network::None] {
            every_target_exists(&plan(net));
        }
    }

    fn every_target_exists(plan: &SessionPlan) {
        let plan = plan.clone();
        let net = net_files(&plan);
        let mut exists: Vec<PathBuf> = targets(&plan, &net).into_iter().map(|(p, _)| p).collect();
        for step in steps(&plan, CgroupLayout::Hybrid, &net) {
            match step {
                Step::Create { dest, .. } | Step::Symlink { dest, .. } => {
                    let parent = dest.parent().unwrap().to_path_buf();
                    assert!(exists.contains(&parent), "parent of {dest:?} exists");
                    exists.push(dest);
                }
                Step::Mask(_) | Step::ReadOnly(_) | Step::Sysctl { .. } => {}
                Step::ReadOnlyMount(d) => assert!(exists.contains(&d), "{d:?} exists"),
                Step::Proc(d)
                | Step::Cgroup2(d)
                | Step::Sysfs(d)
                | Step::DevPts(d)
                | Step::Tmpfs { dest: d, .. }
                | Step::Bind { dest: d, .. }
                | Step::Mount(FsMount { dest: d, .. }) => {
                    assert!(exists.contains(&d), "target {d:?} exists before its mount");
                    // A sysfs, new or the host's, brings its own /sys/fs/cgroup.
                    if d == Path::new("/sys") {
                        exists.push(PathBuf::from("/sys/fs/cgroup"));
                    }
                }
            }
        }
    }

    #[test]
    fn no_network_gets_its_own_sysfs() {
        let sysfs = |net| {
            let p = plan(net);
            steps(&p, CgroupLayout::Hybrid, &net_files(&p))
                .iter()
                .any(|x| matches!(x, Step::Sysfs(_)))
        };
        assert!(sysfs(Network::None));
        assert!(!sysfs(Network::Host));
    }

    #[test]
    fn dev_comes_before_its_nodes_and_user_binds_come_last() {
        let p = plan(Network::Host);
        let s = steps(&p, CgroupLayout::Hybrid, &net_files(&p));
        let dev = s
            .iter()
            .position(|x| matches!(x, Step::Tmpfs { dest, .. } if dest == Path::new("/dev")))
            .unwrap();
        let null = s
            .iter()
            .position(|x| matches!(x, Step::Bind { dest, .. } if dest == Path::new("/dev/null")))
            .unwrap();
        assert!(dev < null);
        assert!(
            matches!(s.last(), Some(Step::Bind { dest, read_only: true, .. }) if dest == Path::new("/host-etc"))
        );
    }

    /// A device's target is made in the session's /dev tmpfs (its directories first), never
    /// asked of the merged root, where it would land in the upper.
    #[test]
    fn dev_binds_are_made_inside_the_dev_tmpfs() {
        let mut p = plan(Network::Host);
        p.dev_binds = vec![Bind {
            source: PathBuf::from("/dev/dri/card0"),
            dest: PathBuf::from("/dev/dri/card0"),
            read_only: false,
        }];
        let s = steps(&p, CgroupLayout::Hybrid, &net_files(&p));
        let at = |want: &Step| s.iter().position(|x| x == want).unwrap();
        let dev = at(&Step::Tmpfs {
            dest: PathBuf::from("/dev"),
            mode: 0o755,
        });
        let dir = at(&Step::Create {
            dest: PathBuf::from("/dev/dri"),
            kind: Kind::Dir,
        });
        let node = at(&Step::Create {
            dest: PathBuf::from("/dev/dri/card0"),
            kind: Kind::File,
        });
        let bind = at(&Step::Bind {
            source: PathBuf::from("/dev/dri/card0"),
            dest: PathBuf::from("/dev/dri/card0"),
            read_only: false,
        });
        assert!(dev < dir && dir < node && node < bind);
        assert!(
            !targets(&p, &[])
                .iter()
                .any(|(t, _)| t.starts_with("/dev/dri"))
        );
    }

    #[test]
    fn no_network_means_no_host_resolver_files() {
        let binds_etc = |net| {
            let p = plan(net);
            steps(&p, CgroupLayout::Hybrid, &net_files(&p)).iter().any(
                |x| matches!(x, Step::Bind { dest, .. } if dest == Path::new("/etc/resolv.conf")),
            )
        };
        assert!(!binds_etc(Network::None));
        assert_eq!(
            binds_etc(Network::Host),
            Path::new("/etc/resolv.conf").exists()
        );
    }
}
