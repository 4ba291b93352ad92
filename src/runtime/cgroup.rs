//! A container's cgroup (`linux.cgroupsPath`, `linux.resources`) through the `cgroups` room:
//! made and filled at `create`, entered by `exec`, frozen by `pause`, read by `ps`, emptied
//! by `kill --all` and removed by `delete`. Where the caller may not write cgroups
//! (rootless), the container runs without one and `create` says so once.

use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use super::{Container, Notes, RuntimeError};
use crate::cgroups::{Cgroup, CgroupError, Placement, Resources};
use crate::host::cgroup::CgroupMounts;

/// A cgroup failure, naming the cgroup.
fn failed(path: &Path) -> impl FnOnce(CgroupError) -> RuntimeError {
    let path = path.to_owned();
    move |e| RuntimeError::Cgroup {
        path,
        source: Box::new(e),
    }
}

/// The host's hierarchies.
fn mounts(path: &Path) -> Result<CgroupMounts, RuntimeError> {
    CgroupMounts::of_host().map_err(|e| RuntimeError::Cgroup {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

/// Makes the cgroup the config asks for (`path`, else `/ovlrun/ID` when only resources are
/// given; a relative path is taken below the root, as runc takes it below its own cgroup's
/// root), writes `resources` and moves `pid` into it. Returns its path, or `None` with a note
/// when the caller may not write cgroups.
///
/// # Errors
/// [`RuntimeError::Cgroup`] for any other failure.
pub(crate) fn place(
    id: &str,
    path: Option<&Path>,
    resources: Option<&LinuxResources>,
    pid: Pid,
    notes: &mut Notes,
) -> Result<Option<PathBuf>, RuntimeError> {
    let path = match path {
        Some(p) if p.is_absolute() => p.to_owned(),
        Some(p) => Path::new("/").join(p),
        None if resources.is_some() => Path::new("/ovlrun").join(id),
        None => return Ok(None),
    };
    let cg = match Cgroup::create(&mounts(&path)?, &path).map_err(failed(&path))? {
        Placement::Created(cg) => cg,
        Placement::NotWritable(why) => {
            notes.push(why.to_string());
            return Ok(None);
        }
    };
    if let Some(r) = resources.map(Resources::from_oci).filter(|r| !r.is_empty()) {
        cg.apply(&r).map_err(failed(&path))?;
    }
    cg.add(pid).map_err(failed(&path))?;
    Ok(Some(path))
}

/// The cgroup of `c`, when it has one.
fn of(c: &Container) -> Result<Option<Cgroup>, RuntimeError> {
    let Some(path) = &c.cgroup else {
        return Ok(None);
    };
    Cgroup::at(&mounts(path)?, path)
        .map(Some)
        .map_err(failed(path))
}

/// Moves `pid` (an exec'd process) into `c`'s cgroup, if it has one.
pub(crate) fn enter(c: &Container, pid: Pid) -> Result<(), RuntimeError> {
    match of(c)? {
        Some(cg) => cg.add(pid).map_err(failed(cg.path())),
        None => Ok(()),
    }
}

/// Whether `c`'s cgroup is frozen (the container is paused).
pub(crate) fn frozen(c: &Container) -> bool {
    of(c).ok().flatten().is_some_and(|cg| {
        cg.freezer_state()
            .is_ok_and(|s| s == crate::cgroups::FreezerState::Frozen)
    })
}

/// Freezes (`true`) or thaws `c`'s cgroup.
///
/// # Errors
/// [`RuntimeError::Usage`] for a container without a cgroup; [`RuntimeError::Cgroup`].
pub(crate) fn set_frozen(c: &Container, freeze: bool) -> Result<(), RuntimeError> {
    let cg = of(c)?.ok_or_else(|| {
        RuntimeError::Usage(format!(
            "container {} has no cgroup (it could not be created, or the config named \
             none): it cannot be {}",
            c.id,
            if freeze { "paused" } else { "resumed" }
        ))
    })?;
    let done = if freeze { cg.freeze() } else { cg.thaw() };
    done.map_err(failed(cg.path()))
}

/// The pids of `c`'s cgroup, when it has one.
pub(crate) fn pids(c: &Container) -> Result<Option<Vec<i32>>, RuntimeError> {
    match of(c)? {
        Some(cg) => Ok(Some(
            cg.pids()
                .map_err(failed(cg.path()))?
                .into_iter()
                .map(Pid::as_raw)
                .collect(),
        )),
        None => Ok(None),
    }
}

/// Sends `signal` to every process of `c`'s cgroup, if it has one.
pub(crate) fn kill_all(
    c: &Container,
    signal: nix::sys::signal::Signal,
) -> Result<(), RuntimeError> {
    match of(c)? {
        Some(cg) => cg.kill_all(signal).map_err(failed(cg.path())),
        None => Ok(()),
    }
}

/// Removes `c`'s cgroup (its processes are gone), if it has one.
pub(crate) fn remove(c: &Container) -> Result<(), RuntimeError> {
    match of(c)? {
        Some(cg) => cg
            .remove(crate::cgroups::REMOVE_TIMEOUT)
            .map_err(failed(cg.path())),
        None => Ok(()),
    }
}
