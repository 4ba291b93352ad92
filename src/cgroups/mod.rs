//! Writing cgroups: the one place that creates a cgroup, writes its limits, moves a process
//! in, freezes and thaws it, lists and signals its processes, and removes it. The OCI runtime
//! uses it for `cgroupsPath`, `linux.resources`, `pause`/`resume` and `ps`; sessions for
//! `--memory`, `--pids-limit` and `--cpus`.
//!
//! Where the hierarchies are comes from [`crate::host::cgroup::CgroupMounts`]. When v1
//! controllers are mounted (a legacy or hybrid host, like this project's CI machine) a cgroup
//! is a directory in each of the pids, memory, cpu, cpuacct, freezer and devices hierarchies
//! that is mounted; otherwise it is one directory of the unified (v2) hierarchy.
//!
//! A caller that may not write cgroups (rootless without delegation, a read-only cgroupfs)
//! gets [`Placement::NotWritable`] from [`Cgroup::create`], a value to report once and go on
//! without limits, as rootless runc does; every other failure is a [`CgroupError`] naming the
//! path and the file.

// The runtime (issue 15) and sessions' limits are its callers; until they land on this
// branch only the tests call it.
#![allow(dead_code)]

mod files;
mod resources;
mod v1;
mod v2;

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::host::cgroup::CgroupMounts;
#[allow(unused_imports)] // for the callers to come (see the allow above)
pub(crate) use resources::{Cpu, DEFAULT_CPU_PERIOD, Memory, Resources};

/// How long a freeze or thaw may take before it is given up (and undone).
pub(crate) const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Cgroup::remove`] waits for the last tasks to leave by default.
pub(crate) const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The v1 controllers a cgroup is created in, where mounted.
const V1_CONTROLLERS: &[&str] = &["pids", "memory", "cpu", "cpuacct", "freezer", "devices"];

/// The v2 controllers enabled for a cgroup, where its parent offers them.
const V2_CONTROLLERS: &[&str] = &["pids", "memory", "cpu"];

/// A failure to write, read or remove a cgroup.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupError {
    #[error("cgroup path {path:?} must be absolute, without `.` or `..`")]
    BadPath { path: PathBuf },
    #[error("no cgroup hierarchy is mounted (neither v1 controllers nor cgroup2)")]
    NoHierarchy,
    #[error("cannot create cgroup {dir}")]
    Create {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {file}")]
    Write {
        file: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {file}")]
    Read {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{file}: unexpected content {content:?}")]
    Parse { file: PathBuf, content: String },
    #[error("cgroup {path} has no {controller} controller, which {needed_for} needs")]
    MissingController {
        path: PathBuf,
        controller: &'static str,
        needed_for: &'static str,
    },
    #[error("{file} does not exist: this kernel does not offer {feature}")]
    Unsupported {
        file: PathBuf,
        feature: &'static str,
    },
    #[error("cgroup {dir} is not {want} after {waited:?} (state {state:?})")]
    Freezer {
        dir: PathBuf,
        want: &'static str,
        state: String,
        waited: Duration,
    },
    #[error("cannot signal pid {pid} of cgroup {dir}")]
    Signal {
        pid: i32,
        dir: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot remove cgroup {dir}: tasks {pids:?} still in it after {waited:?}")]
    Busy {
        dir: PathBuf,
        pids: Vec<i32>,
        waited: Duration,
    },
    #[error("cannot remove cgroup {dir}")]
    Remove {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What [`Cgroup::create`] could do.
#[derive(Debug)]
pub(crate) enum Placement {
    /// The cgroup exists in every hierarchy it needs.
    Created(Cgroup),
    /// The caller may not create cgroups there: run without limits and say so once.
    NotWritable(NotWritable),
}

/// Why no cgroup could be made (permission, or a read-only cgroupfs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotWritable {
    /// The directory whose creation was refused.
    pub(crate) dir: PathBuf,
    pub(crate) errno: Errno,
}

impl fmt::Display for NotWritable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot create cgroup {} ({}): running without resource limits, pause or cgroup ps",
            self.dir.display(),
            self.errno.desc()
        )
    }
}

/// Whether a freezer is thawed, freezing or frozen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FreezerState {
    Thawed,
    Freezing,
    Frozen,
}

/// One cgroup: the same path in each hierarchy it lives in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cgroup {
    /// The cgroup path below each hierarchy's root, e.g. `/ovlrun/abc`.
    path: PathBuf,
    dirs: Dirs,
}

/// The cgroup's directories.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Dirs {
    /// One per v1 hierarchy, with the controllers bound to it.
    V1(Vec<(Vec<String>, PathBuf)>),
    /// The unified hierarchy's directory.
    V2(PathBuf),
}

impl Cgroup {
    /// The cgroup at `path` (absolute, as OCI's `cgroupsPath` below the hierarchies' roots)
    /// in `mounts`, whether or not it exists: for verbs that act on a cgroup another process
    /// created.
    pub(crate) fn at(mounts: &CgroupMounts, path: &Path) -> Result<Cgroup, CgroupError> {
        let rel = relative(path)?;
        let v1: Vec<(Vec<String>, PathBuf)> = mounts
            .v1
            .iter()
            .filter(|h| {
                h.controllers
                    .iter()
                    .any(|c| V1_CONTROLLERS.contains(&c.as_str()))
            })
            .map(|h| (h.controllers.clone(), h.mount_point.join(&rel)))
            .collect();
        let dirs = match (&mounts.unified, v1.is_empty()) {
            (_, false) => Dirs::V1(v1),
            (Some(unified), true) => Dirs::V2(unified.join(&rel)),
            (None, true) => return Err(CgroupError::NoHierarchy),
        };
        Ok(Cgroup {
            path: path.to_owned(),
            dirs,
        })
    }

    /// Creates the cgroup at `path` in every hierarchy it needs (v2: enabling the pids,
    /// memory and cpu controllers in its ancestors where offered). An existing cgroup is
    /// taken as it is.
    pub(crate) fn create(mounts: &CgroupMounts, path: &Path) -> Result<Placement, CgroupError> {
        let cg = Cgroup::at(mounts, path)?;
        let made = match &cg.dirs {
            Dirs::V1(dirs) => dirs.iter().try_for_each(|(_, d)| make_dir(d)),
            Dirs::V2(dir) => {
                let root = mounts.unified.as_deref().unwrap_or(Path::new("/"));
                v2::create(root, dir, V2_CONTROLLERS)
            }
        };
        placement(cg, made)
    }

    /// The cgroup path below the hierarchies' roots.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is a v2 (unified) cgroup.
    pub(crate) fn is_v2(&self) -> bool {
        matches!(self.dirs, Dirs::V2(_))
    }

    /// Writes the limits in `r`.
    pub(crate) fn apply(&self, r: &Resources) -> Result<(), CgroupError> {
        match &self.dirs {
            Dirs::V1(_) => v1::apply(self, r),
            Dirs::V2(dir) => v2::apply(dir, r),
        }
    }

    /// Moves process `pid` (with its threads) into the cgroup in every hierarchy.
    pub(crate) fn add(&self, pid: Pid) -> Result<(), CgroupError> {
        let pid = pid.to_string();
        match &self.dirs {
            Dirs::V1(dirs) => dirs
                .iter()
                .try_for_each(|(_, d)| files::write(d, "cgroup.procs", &pid)),
            Dirs::V2(dir) => files::write(dir, "cgroup.procs", &pid),
        }
    }

    /// Freezes every task, and returns once the kernel says the cgroup is frozen; thaws it
    /// again and fails after [`FREEZE_TIMEOUT`].
    pub(crate) fn freeze(&self) -> Result<(), CgroupError> {
        match &self.dirs {
            Dirs::V1(_) => v1::set_freezer(&self.freezer_dir()?, true),
            Dirs::V2(dir) => v2::set_frozen(dir, true),
        }
    }

    /// Thaws every task, and returns once the kernel says the cgroup is thawed.
    pub(crate) fn thaw(&self) -> Result<(), CgroupError> {
        match &self.dirs {
            Dirs::V1(_) => v1::set_freezer(&self.freezer_dir()?, false),
            Dirs::V2(dir) => v2::set_frozen(dir, false),
        }
    }

    /// Whether the cgroup is thawed, freezing or frozen (a paused container is frozen).
    pub(crate) fn freezer_state(&self) -> Result<FreezerState, CgroupError> {
        match &self.dirs {
            Dirs::V1(_) => v1::freezer_state(&self.freezer_dir()?),
            Dirs::V2(dir) => v2::freezer_state(dir),
        }
    }

    /// The processes in the cgroup and the cgroups below it (for `ps`).
    pub(crate) fn pids(&self) -> Result<Vec<Pid>, CgroupError> {
        let mut pids = Vec::new();
        for dir in files::subtree_deepest_first(self.tasks_dir()) {
            match files::procs(&dir) {
                Ok(p) => pids.extend(p),
                // A sub-cgroup removed while we read.
                Err(CgroupError::Read { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && dir != self.tasks_dir() => {}
                Err(e) => return Err(e),
            }
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids.into_iter().map(Pid::from_raw).collect())
    }

    /// Sends `signal` to every process in the cgroup. SIGKILL on v2 uses `cgroup.kill`
    /// where the kernel has it; otherwise the cgroup is frozen while the signals go out (so
    /// no process forks past them) and thawed after, where a freezer exists.
    pub(crate) fn kill_all(&self, signal: Signal) -> Result<(), CgroupError> {
        if let Dirs::V2(dir) = &self.dirs
            && signal == Signal::SIGKILL
            && dir.join("cgroup.kill").exists()
        {
            return files::write(dir, "cgroup.kill", "1");
        }
        let frozen = self.freeze().is_ok();
        let sent = self.pids().and_then(|pids| {
            pids.into_iter()
                .try_for_each(|pid| match nix::sys::signal::kill(pid, signal) {
                    Ok(()) | Err(Errno::ESRCH) => Ok(()),
                    Err(source) => Err(CgroupError::Signal {
                        pid: pid.as_raw(),
                        dir: self.tasks_dir().to_owned(),
                        source,
                    }),
                })
        });
        let thawed = if frozen { self.thaw() } else { Ok(()) };
        sent.and(thawed)
    }

    /// Removes the cgroup and every cgroup below it from each hierarchy, deepest first,
    /// retrying while tasks leave for up to `wait`. A cgroup already gone is fine.
    pub(crate) fn remove(&self, wait: Duration) -> Result<(), CgroupError> {
        let deadline = std::time::Instant::now() + wait;
        for dir in self.all_dirs() {
            for d in files::subtree_deepest_first(dir) {
                loop {
                    match std::fs::remove_dir(&d) {
                        Ok(()) => break,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                            if std::time::Instant::now() >= deadline {
                                return Err(CgroupError::Busy {
                                    pids: files::procs(&d).unwrap_or_default(),
                                    dir: d,
                                    waited: wait,
                                });
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(source) => return Err(CgroupError::Remove { dir: d, source }),
                    }
                }
            }
        }
        Ok(())
    }

    /// Every directory of the cgroup, one per hierarchy.
    fn all_dirs(&self) -> Vec<&Path> {
        match &self.dirs {
            Dirs::V1(dirs) => dirs.iter().map(|(_, d)| d.as_path()).collect(),
            Dirs::V2(dir) => vec![dir.as_path()],
        }
    }

    /// The directory in the hierarchy bound to `controller`, if mounted.
    fn v1_dir(&self, controller: &str) -> Option<&Path> {
        match &self.dirs {
            Dirs::V1(dirs) => dirs
                .iter()
                .find(|(cs, _)| cs.iter().any(|c| c == controller))
                .map(|(_, d)| d.as_path()),
            Dirs::V2(_) => None,
        }
    }

    fn freezer_dir(&self) -> Result<PathBuf, CgroupError> {
        self.v1_dir("freezer")
            .map(Path::to_owned)
            .ok_or_else(|| CgroupError::MissingController {
                path: self.path.clone(),
                controller: "freezer",
                needed_for: "pause and resume",
            })
    }

    /// Where the cgroup's tasks are listed: v2's directory, or the first v1 hierarchy (every
    /// hierarchy holds the same tasks once [`Cgroup::add`] has run).
    fn tasks_dir(&self) -> &Path {
        match &self.dirs {
            Dirs::V1(dirs) => self
                .v1_dir("pids")
                .or_else(|| self.v1_dir("freezer"))
                .unwrap_or_else(|| dirs[0].1.as_path()),
            Dirs::V2(dir) => dir,
        }
    }
}

/// `path` without its leading `/`, refusing relative paths and `.`/`..` components.
fn relative(path: &Path) -> Result<PathBuf, CgroupError> {
    let bad = || CgroupError::BadPath {
        path: path.to_owned(),
    };
    let mut rel = PathBuf::new();
    let mut comps = path.components();
    if comps.next() != Some(Component::RootDir) {
        return Err(bad());
    }
    for c in comps {
        match c {
            Component::Normal(n) => rel.push(n),
            _ => return Err(bad()),
        }
    }
    Ok(rel)
}

/// What creating `cg` came to: a refused `mkdir`, or a refused write while creating (v2's
/// `cgroup.subtree_control` of an ancestor the caller does not own), is
/// [`Placement::NotWritable`]; any other failure stays an error.
fn placement(cg: Cgroup, made: Result<(), CgroupError>) -> Result<Placement, CgroupError> {
    let not_writable = |dir: PathBuf, errno| Ok(Placement::NotWritable(NotWritable { dir, errno }));
    match made {
        Ok(()) => Ok(Placement::Created(cg)),
        Err(CgroupError::Create { dir, source }) => match refused(&source) {
            Some(errno) => not_writable(dir, errno),
            None => Err(CgroupError::Create { dir, source }),
        },
        Err(CgroupError::Write {
            file,
            value,
            source,
        }) => match refused(&source) {
            Some(errno) => not_writable(file.parent().unwrap_or(&file).to_owned(), errno),
            None => Err(CgroupError::Write {
                file,
                value,
                source,
            }),
        },
        Err(e) => Err(e),
    }
}

/// `mkdir -p dir`, as a [`CgroupError::Create`].
fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(|source| CgroupError::Create {
        dir: dir.to_owned(),
        source,
    })
}

/// The errno when `e` means "you may not create cgroups here".
fn refused(e: &io::Error) -> Option<Errno> {
    let errno = Errno::from_raw(e.raw_os_error()?);
    matches!(errno, Errno::EACCES | Errno::EPERM | Errno::EROFS).then_some(errno)
}

#[cfg(test)]
mod tests;
