//! `ps [--format table|json] ID [PS-OPTIONS]`: the processes of a container, as the caller
//! sees their pids (every process of its pid namespace; runc reads its cgroup instead).

use super::{Container, Root, RuntimeError, Status};
use crate::host::process as proc;

/// The pids of container `id`'s processes, sorted; none once it has stopped.
///
/// # Errors
/// [`RuntimeError::NotExist`], [`RuntimeError::InvalidId`].
pub fn pids(root: &Root, id: &str) -> Result<Vec<i32>, RuntimeError> {
    let (c, dir) = Container::load(root, id)?;
    if c.status(&dir) == Status::Stopped {
        return Ok(Vec::new());
    }
    if let Some(pids) = super::cgroup::pids(&c)? {
        return Ok(pids);
    }
    let pids = proc::in_pid_namespace_of(c.pid);
    // Looked up while its pid 1 was still the container's.
    if !proc::alive(c.pid, c.pid_start) {
        return Ok(Vec::new());
    }
    Ok(pids)
}
