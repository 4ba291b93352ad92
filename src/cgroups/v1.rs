//! cgroup v1: a file per limit in the hierarchy of its controller, and the freezer's state
//! file.

use std::path::Path;
use std::time::{Duration, Instant};

use super::resources::{Memory, Resources, pids_value};
use super::{Cgroup, CgroupError, FREEZE_TIMEOUT, FreezerState, files};

/// Writes the limits in `r` into the hierarchies of their controllers.
pub(super) fn apply(cg: &Cgroup, r: &Resources) -> Result<(), CgroupError> {
    if let Some(limit) = r.pids_max {
        files::write(
            dir(cg, "pids", "a pids limit")?,
            "pids.max",
            &pids_value(limit),
        )?;
    }
    if let Some(m) = r.memory
        && (m.limit.is_some() || m.swap.is_some())
    {
        memory(dir(cg, "memory", "a memory limit")?, m)?;
    }
    if let Some(c) = r.cpu
        && (c.shares.is_some() || c.period.is_some() || c.quota.is_some())
    {
        let d = dir(cg, "cpu", "a cpu limit")?;
        if let Some(shares) = c.shares {
            files::write(d, "cpu.shares", &shares.to_string())?;
        }
        // The period first: a quota is checked against the period in force.
        if let Some(period) = c.period {
            files::write(d, "cpu.cfs_period_us", &period.to_string())?;
        }
        if let Some(quota) = c.quota {
            files::write(d, "cpu.cfs_quota_us", &quota.max(-1).to_string())?;
        }
    }
    Ok(())
}

/// The directory of `controller`, or the error naming what needed it.
fn dir<'a>(
    cg: &'a Cgroup,
    controller: &'static str,
    needed_for: &'static str,
) -> Result<&'a Path, CgroupError> {
    cg.v1_dir(controller)
        .ok_or_else(|| CgroupError::MissingController {
            path: cg.path.clone(),
            controller,
            needed_for,
        })
}

/// `memory.limit_in_bytes` and `memory.memsw.limit_in_bytes`. The kernel keeps memsw at or
/// above the limit at every step, so when lowering the limit goes first and when raising
/// memsw goes first: try the limit first, and on EINVAL write memsw and retry.
fn memory(dir: &Path, m: Memory) -> Result<(), CgroupError> {
    let swap = match m.swap {
        Some(s) => {
            if !dir.join("memory.memsw.limit_in_bytes").exists() {
                return Err(CgroupError::Unsupported {
                    file: dir.join("memory.memsw.limit_in_bytes"),
                    feature: "swap accounting (a memory+swap limit)",
                });
            }
            Some(s.max(-1).to_string())
        }
        None => None,
    };
    let Some(limit) = m.limit.map(|l| l.max(-1).to_string()) else {
        return swap.map_or(Ok(()), |s| {
            files::write(dir, "memory.memsw.limit_in_bytes", &s)
        });
    };
    match files::write(dir, "memory.limit_in_bytes", &limit) {
        Ok(()) => swap.map_or(Ok(()), |s| {
            files::write(dir, "memory.memsw.limit_in_bytes", &s)
        }),
        Err(CgroupError::Write { source, .. })
            if swap.is_some() && source.raw_os_error() == Some(libc::EINVAL) =>
        {
            let s = swap.unwrap_or_default();
            files::write(dir, "memory.memsw.limit_in_bytes", &s)?;
            files::write(dir, "memory.limit_in_bytes", &limit)
        }
        Err(e) => Err(e),
    }
}

/// Writes `FROZEN` or `THAWED` to `freezer.state` until it reads back so (a freeze may need
/// repeating while tasks fork); a freeze that does not finish is undone.
pub(super) fn set_freezer(dir: &Path, frozen: bool) -> Result<(), CgroupError> {
    let (want, word) = if frozen {
        (FreezerState::Frozen, "FROZEN")
    } else {
        (FreezerState::Thawed, "THAWED")
    };
    let start = Instant::now();
    let mut pause = Duration::from_micros(100);
    loop {
        files::write(dir, "freezer.state", word)?;
        let now = freezer_state(dir)?;
        if now == want {
            return Ok(());
        }
        if start.elapsed() >= FREEZE_TIMEOUT {
            if frozen {
                let _ = files::write(dir, "freezer.state", "THAWED");
            }
            return Err(CgroupError::Freezer {
                dir: dir.to_owned(),
                want: if frozen { "frozen" } else { "thawed" },
                state: format!("{now:?}"),
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// `freezer.state`: `THAWED`, `FREEZING` or `FROZEN`.
pub(super) fn freezer_state(dir: &Path) -> Result<FreezerState, CgroupError> {
    let text = files::read(dir, "freezer.state")?;
    match text.trim() {
        "THAWED" => Ok(FreezerState::Thawed),
        "FREEZING" => Ok(FreezerState::Freezing),
        "FROZEN" => Ok(FreezerState::Frozen),
        other => Err(CgroupError::Parse {
            file: dir.join("freezer.state"),
            content: other.to_owned(),
        }),
    }
}
