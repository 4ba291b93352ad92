//! `delete [--force] ID`: removes a stopped (or created) container; with `--force`, kills a
//! running one first.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::kill::signal_container;
use super::{Container, Notes, Root, RuntimeError, Status};
use crate::host::process as proc;

/// How long `delete` waits for a killed process to end.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// `delete`; returns what the poststop hooks said when they failed (runc goes on).
///
/// # Errors
/// [`RuntimeError::NotExist`] (not with `force`, as runc); [`RuntimeError::NotStopped`] for a
/// running container without `force`.
pub fn delete(root: &Root, id: &str, force: bool) -> Result<Notes, RuntimeError> {
    let (c, dir) = match Container::load(root, id) {
        Ok(found) => found,
        Err(RuntimeError::NotExist(_)) => {
            // A create that failed half-way leaves a directory without a record: removed,
            // as runc does (never through a symlink: the id is a plain name).
            let dir = root.dir_of(id)?;
            if dir.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                let _ = std::fs::remove_dir_all(&dir);
            }
            return if force {
                Ok(Notes::new())
            } else {
                Err(RuntimeError::NotExist(id.to_owned()))
            };
        }
        Err(e) => return Err(e),
    };
    match c.status(&dir) {
        Status::Stopped => {}
        Status::Created => stop(&c)?,
        Status::Running | Status::Paused if force => stop(&c)?,
        status @ (Status::Running | Status::Paused) => {
            return Err(RuntimeError::NotStopped {
                id: id.to_owned(),
                status,
            });
        }
    }
    super::cgroup::remove(&c)?;
    let mut notes = Notes::new();
    if let Some(hooks) = &c.hooks {
        let state = super::State::of(&c, &dir);
        if let Err(e) = super::hooks::run(hooks, super::hooks::Stage::Stopped, &state) {
            notes.push(e.to_string());
        }
    }
    if let Some(session) = &c.session {
        let report = Collect::default();
        if let Err(e) = crate::session::container::finish(session, &report) {
            notes.push(format!(
                "the container's session {} is kept: {}",
                session.id,
                crate::error_chain(&e)
            ));
        }
        notes.extend(report.0.into_inner());
    }
    std::fs::remove_dir_all(&dir)
        .map_err(super::io("cannot remove the container directory", &dir))?;
    Ok(notes)
}

/// What a container's session says at its end, collected as notes for `--log`.
#[derive(Default)]
struct Collect(std::cell::RefCell<Notes>);

impl crate::session::report::Report for Collect {
    fn note(&self, note: crate::session::report::Note<'_>) {
        self.0.borrow_mut().push(note.to_string());
    }

    fn commit_progress(
        &self,
        _: crate::session::report::CommitSize,
    ) -> Box<dyn crate::session::report::Progress + '_> {
        Box::new(crate::session::report::Silent)
    }

    /// Nobody to ask: the session is kept.
    fn ask(
        &self,
        _: &str,
        _: &[(crate::policy::Change, std::path::PathBuf)],
    ) -> crate::policy::Policy {
        crate::policy::Policy::Preserve
    }
}

/// Kills every process of `c` and waits until its process has ended (it is the caller's
/// subreaper's child, not ours, so it is watched, not waited for).
fn stop(c: &Container) -> Result<(), RuntimeError> {
    signal_container(c, Signal::SIGKILL, true)?;
    let deadline = Instant::now() + KILL_WAIT;
    while proc::alive(c.pid, c.pid_start) {
        if Instant::now() > deadline {
            return Err(RuntimeError::StillAlive(c.pid));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
