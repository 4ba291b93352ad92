//! A session's limits (`--memory`, `--pids-limit`, `--cpus`): a cgroup of its own,
//! `/ovlrun/session-ID` in every hierarchy, the limits written and the session's pid 1 moved
//! in while the launcher still holds it before the command, so nothing of the command runs
//! unlimited; removed when the session ends. Where the caller may not write cgroups (a user
//! without a delegated subtree), the session runs without them and says so once.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::SessionError;
use super::report::{Note, Report};
use crate::cgroups::{Cgroup, Cpu, Memory, Placement, REMOVE_TIMEOUT, Resources};
use crate::config::{Limits, SessionPlan};
use crate::host::ids::IdMap;
use crate::sandbox::{self, Filesystem, Launch, Notice, Outcome};

/// The cgroup a session's limits are written in.
fn path_of(id: &str) -> PathBuf {
    Path::new("/ovlrun").join(format!("session-{id}"))
}

/// What the cgroups room writes for `limits`.
fn resources_of(limits: &Limits) -> Resources {
    Resources {
        pids_max: limits.pids.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
        memory: limits.memory.map(|bytes| Memory {
            limit: Some(i64::try_from(bytes).unwrap_or(i64::MAX)),
            swap: None,
        }),
        cpu: limits.cpus.map(Cpu::from_cpus),
    }
}

fn failed(path: &Path) -> impl FnOnce(crate::cgroups::CgroupError) -> SessionError + '_ {
    move |e| SessionError::Cgroup {
        path: path.to_owned(),
        source: Box::new(e),
    }
}

/// Makes session `id`'s cgroup, writes its limits and moves `pid` into it; `None` (after a
/// note) when the caller may not write cgroups.
fn place(
    id: &str,
    limits: &Limits,
    pid: Pid,
    report: &dyn Report,
) -> Result<Option<Cgroup>, SessionError> {
    let path = path_of(id);
    let mounts = crate::host::cgroup::CgroupMounts::of_host().map_err(|e| {
        failed(&path)(crate::cgroups::CgroupError::Read {
            file: PathBuf::from("/proc/self/mountinfo"),
            source: e,
        })
    })?;
    sweep_leftovers(&mounts);
    // Once more if the first fails: another session's end may remove `/ovlrun` between
    // the making of it and of ours below it.
    let created = Cgroup::create(&mounts, &path).or_else(|_| Cgroup::create(&mounts, &path));
    let cg = match created.map_err(failed(&path))? {
        Placement::Created(cg) => cg,
        Placement::NotWritable(why) => {
            report.note(Note::LimitsNotApplied {
                why: &why.to_string(),
            });
            return Ok(None);
        }
    };
    let placed = cg
        .apply(&resources_of(limits))
        .and_then(|()| cg.add(pid))
        .map_err(failed(&path));
    if let Err(e) = placed {
        let _ = cg.remove(REMOVE_TIMEOUT);
        return Err(e);
    }
    Ok(Some(cg))
}

/// A session cgroup younger than this may be one a session is just placing its pid 1 in.
const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(2);

/// Removes the session cgroups a killed launcher left: empty ones (rmdir fails on any
/// other) made more than [`LEFTOVER_AGE`] ago, in every hierarchy.
fn sweep_leftovers(mounts: &crate::host::cgroup::CgroupMounts) {
    let mut names = std::collections::BTreeSet::new();
    for base in parents(mounts) {
        for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > LEFTOVER_AGE));
            let name = e.file_name().to_string_lossy().into_owned();
            if old && name.starts_with("session-") {
                names.insert(name);
            }
        }
    }
    for name in names {
        if let Ok(cg) = Cgroup::at(mounts, &Path::new("/ovlrun").join(name)) {
            let _ = cg.remove(std::time::Duration::ZERO);
        }
    }
}

/// Removes `/ovlrun` in every hierarchy when no session's cgroup is left in it (rmdir fails
/// on a cgroup that has any below it).
fn remove_parent() {
    let Ok(mounts) = crate::host::cgroup::CgroupMounts::of_host() else {
        return;
    };
    for parent in parents(&mounts) {
        let _ = std::fs::remove_dir(parent);
    }
}

/// `/ovlrun`, the parent of every session's cgroup, in each hierarchy.
fn parents(mounts: &crate::host::cgroup::CgroupMounts) -> Vec<PathBuf> {
    mounts
        .v1
        .iter()
        .map(|h| h.mount_point.as_path())
        .chain(mounts.unified.as_deref())
        .map(|m| m.join("ovlrun"))
        .collect()
}

/// Runs the session's launcher: set up, its limits placed (when asked for), `created` told
/// of its pid 1 and backend (to record how to enter it), started, waited for; then its
/// cgroup removed.
///
/// # Errors
/// The launcher's, `created`'s, or [`SessionError::Cgroup`] when the limits cannot be
/// written (the session's process is killed first: it never ran the command).
pub(crate) fn launch<F: Filesystem>(
    plan: &SessionPlan,
    ids: Option<IdMap>,
    fs: F,
    id: &str,
    report: &dyn Report,
    created: impl FnOnce(Pid, crate::mount::Backend) -> Result<(), SessionError>,
) -> Result<Outcome, SessionError> {
    let mut notice = |n: Notice| report.note(Note::Launcher(&n.to_string()));
    let mut launched = sandbox::create(plan, ids, fs, Launch::session())?;
    launched.notices.drain(..).for_each(&mut notice);
    let pid = launched.pid();
    let placed = if plan.limits.is_empty() {
        Ok(None)
    } else {
        place(id, &plan.limits, pid, report)
    };
    let cgroup = match placed.and_then(|cg| created(pid, launched.backend()).map(|()| cg)) {
        Ok(cg) => cg,
        Err(e) => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = launched.wait();
            return Err(e);
        }
    };
    let outcome = launched
        .start()
        .map(|()| launched.notices.drain(..).for_each(&mut notice))
        .and_then(|()| launched.wait());
    if let Some(cg) = cgroup {
        // Whatever the command left (its pid namespace is gone with pid 1, but its
        // processes may still be exiting).
        let _ = cg.kill_all(Signal::SIGKILL);
        if let Err(e) = cg.remove(REMOVE_TIMEOUT) {
            report.note(Note::Launcher(&format!(
                "cannot remove the session's cgroup: {}",
                crate::error_chain(&e)
            )));
        }
        remove_parent();
    }
    let outcome = outcome?;
    if let (true, Some(t)) = (outcome.timed_out, plan.timeout) {
        report.note(Note::TimedOut {
            after: t.after,
            kill_after: t.kill_after,
        });
    }
    Ok(outcome)
}

/// Moves `pid` (a process `ovlrun exec` enters into session `id`) into the session's
/// cgroup, when it has one: what it runs is limited as the session is.
///
/// # Errors
/// [`SessionError::Cgroup`] when the cgroup exists but `pid` cannot join it.
pub(crate) fn adopt(id: &str, pid: Pid) -> Result<(), SessionError> {
    let path = path_of(id);
    let Ok(mounts) = crate::host::cgroup::CgroupMounts::of_host() else {
        return Ok(());
    };
    let Ok(cg) = Cgroup::at(&mounts, &path) else {
        return Ok(());
    };
    match cg.add(pid) {
        Ok(()) => Ok(()),
        // No cgroup of its own (no limits, or none could be made).
        Err(crate::cgroups::CgroupError::Write { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        Err(e) => Err(failed(&path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_become_the_cgroup_files_values() {
        let r = resources_of(&Limits {
            memory: Some(64 << 20),
            pids: Some(32),
            cpus: Some(0.5),
        });
        assert_eq!(r.pids_max, Some(32));
        assert_eq!(r.memory.and_then(|m| m.limit), Some(64 << 20));
        let cpu = r.cpu.unwrap();
        assert_eq!((cpu.quota, cpu.period), (Some(50_000), Some(100_000)));
        assert_eq!(path_of("abc"), Path::new("/ovlrun/session-abc"));
    }
}
