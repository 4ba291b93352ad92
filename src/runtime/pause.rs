//! `pause ID` and `resume ID`: the container's cgroup frozen and thawed.

use super::{Container, Root, RuntimeError, Status, cgroup};

/// `pause`: freezes a running container.
///
/// # Errors
/// [`RuntimeError::NotIn`] unless it runs; a container without a cgroup cannot be paused.
pub fn pause(root: &Root, id: &str) -> Result<(), RuntimeError> {
    let (c, dir) = Container::load(root, id)?;
    match c.status(&dir) {
        Status::Running => cgroup::set_frozen(&c, true),
        Status::Paused => Ok(()),
        _ => Err(RuntimeError::NotIn("running")),
    }
}

/// `resume`: thaws a paused container.
///
/// # Errors
/// [`RuntimeError::NotIn`] unless it is paused.
pub fn resume(root: &Root, id: &str) -> Result<(), RuntimeError> {
    let (c, dir) = Container::load(root, id)?;
    match c.status(&dir) {
        Status::Paused => cgroup::set_frozen(&c, false),
        _ => Err(RuntimeError::NotIn("paused")),
    }
}
