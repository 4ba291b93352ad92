//! cgroup v2: one directory, controllers enabled from the root down, `cgroup.freeze` and
//! `cgroup.events` for freezing.

use std::path::Path;
use std::time::{Duration, Instant};

use super::resources::{Resources, bytes_v2, cpu_max, pids_value, shares_to_weight, swap_v2};
use super::{CgroupError, FREEZE_TIMEOUT, FreezerState, files, make_dir};

/// Creates `dir` below the unified `root`, enabling in each ancestor's
/// `cgroup.subtree_control` those of `controllers` that its `cgroup.controllers` offers
/// (a controller's files appear in a cgroup only when its parent delegates it).
pub(super) fn create(root: &Path, dir: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    let mut parent = root.to_path_buf();
    for comp in rel.components() {
        enable(&parent, controllers)?;
        parent.push(comp);
        make_dir(&parent)?;
    }
    Ok(())
}

/// Enables `controllers` (where offered and not yet enabled) for the children of `dir`.
fn enable(dir: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    let offered = files::read(dir, "cgroup.controllers")?;
    let enabled = files::read(dir, "cgroup.subtree_control")?;
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| offered.split_whitespace().any(|o| o == **c))
        .filter(|c| !enabled.split_whitespace().any(|o| o == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    files::write(dir, "cgroup.subtree_control", &missing.join(" "))
}

/// Writes the limits in `r`: `pids.max`, `memory.max`, `memory.swap.max`, `cpu.max`,
/// `cpu.weight`.
pub(super) fn apply(dir: &Path, r: &Resources) -> Result<(), CgroupError> {
    if let Some(limit) = r.pids_max {
        files::write(dir, "pids.max", &pids_value(limit))?;
    }
    if let Some(m) = r.memory {
        if let Some(limit) = m.limit {
            files::write(dir, "memory.max", &bytes_v2(limit))?;
        }
        if let Some(swap) = swap_v2(m) {
            if !dir.join("memory.swap.max").exists() {
                return Err(CgroupError::Unsupported {
                    file: dir.join("memory.swap.max"),
                    feature: "swap accounting (a swap limit)",
                });
            }
            files::write(dir, "memory.swap.max", &swap)?;
        }
    }
    if let Some(c) = r.cpu {
        if let Some(shares) = c.shares {
            files::write(dir, "cpu.weight", &shares_to_weight(shares).to_string())?;
        }
        if let Some(max) = cpu_max(c) {
            files::write(dir, "cpu.max", &max)?;
        }
    }
    Ok(())
}

/// Writes `cgroup.freeze` and waits until `cgroup.events` says `frozen 1` (or `0`); a
/// freeze that does not finish is undone.
pub(super) fn set_frozen(dir: &Path, frozen: bool) -> Result<(), CgroupError> {
    files::write(dir, "cgroup.freeze", if frozen { "1" } else { "0" })?;
    let want = if frozen {
        FreezerState::Frozen
    } else {
        FreezerState::Thawed
    };
    let start = Instant::now();
    let mut pause = Duration::from_micros(100);
    loop {
        let now = freezer_state(dir)?;
        if now == want {
            return Ok(());
        }
        if start.elapsed() >= FREEZE_TIMEOUT {
            if frozen {
                let _ = files::write(dir, "cgroup.freeze", "0");
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

/// Frozen when `cgroup.events` says `frozen 1`; freezing when `cgroup.freeze` asks for it
/// but the tasks are not all stopped yet.
pub(super) fn freezer_state(dir: &Path) -> Result<FreezerState, CgroupError> {
    let events = files::read(dir, "cgroup.events")?;
    let frozen = events
        .lines()
        .find_map(|l| l.strip_prefix("frozen "))
        .ok_or_else(|| CgroupError::Parse {
            file: dir.join("cgroup.events"),
            content: events.clone(),
        })?;
    if frozen.trim() == "1" {
        return Ok(FreezerState::Frozen);
    }
    let asked = files::read(dir, "cgroup.freeze")?;
    Ok(if asked.trim() == "1" {
        FreezerState::Freezing
    } else {
        FreezerState::Thawed
    })
}
