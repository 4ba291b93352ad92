//! A runtime container's writes kept as a session (the bundle annotation
//! `org.ovlrun.policy`): the bundle's root is the lower of a kernel overlay whose upper is
//! a session's, so `ovlrun ls`, `diff`, `commit` and `export` see the container's changes,
//! and the policy is applied when the container is deleted (the exit status is the
//! manager's, not known here: a commit policy commits whatever the container left).
//!
//! The kernel overlayfs needs no process to serve it: mounted in `ovlrun create`'s mount
//! namespace, it lives on in the container's copy of it after `create` exits. FUSE would
//! need a server outliving `create`: refused for now.

use std::path::PathBuf;

use super::record::{Record, Status, now};
use super::report::Report;
use super::rootfs::SessionRootfs;
use super::{KeptError, SessionDirs, SessionError};
use crate::config::SessionPlan;
use crate::policy::conflict::Stamp;
use crate::policy::{CommitMode, Policy};

/// A container's session while `create` sets it up.
#[derive(Debug)]
pub(crate) struct ContainerSession {
    dirs: SessionDirs,
    rec: Record,
}

impl ContainerSession {
    /// A new session over `plan`'s rootfs for container `id`, recorded as running.
    ///
    /// # Errors
    /// [`SessionError`] naming the directory or record.
    pub(crate) fn begin(
        plan: &SessionPlan,
        policy: Policy,
        id: &str,
    ) -> Result<ContainerSession, SessionError> {
        let dirs = SessionDirs::create(&plan.state_root, None)?;
        // The upper's root is the merged root's metadata: an untouched root shows no change.
        let _ = crate::policy::commit::copy_dir_meta(&plan.rootfs, &dirs.upper);
        let rec = Record {
            id: dirs.id.clone(),
            rootfs: plan.rootfs.clone(),
            upper: dirs.upper.clone(),
            work: dirs.work.clone(),
            policy,
            pid: std::process::id(),
            status: Status::Running,
            fs: crate::mount::Backend::Kernel,
            created: now(),
            ended: None,
            exit_code: None,
            owner: nix::unistd::getuid().as_raw(),
            base: Some(Stamp::fine_now()),
            command: vec!["container".into(), id.into()],
            // Named by the container's id where it can be (not when another session has it).
            name: super::name::claim(&plan.state_root, id, &dirs.id)
                .ok()
                .map(|()| id.to_owned()),
            layers: Vec::new(),
            entry: None,
            // No volatile mount: nothing here syncs the upper once at the container's end.
            unsynced_boot: None,
        };
        rec.save(&dirs.root)?;
        Ok(ContainerSession { dirs, rec })
    }

    /// The session's id.
    pub(crate) fn id(&self) -> &str {
        &self.dirs.id.0
    }

    /// The launcher's root filesystem: the kernel overlay of the rootfs with this upper.
    pub(crate) fn rootfs<'a>(&'a self, plan: &'a SessionPlan) -> SessionRootfs<'a> {
        SessionRootfs::new(
            plan,
            &self.dirs,
            self.rec.policy != Policy::Discard,
            &self.rec,
            // Its network is the config's: the host's resolver files are not its business.
            &super::report::Silent,
        )
    }

    /// Records the container's process as the session's, so `ovlrun ls` shows it running.
    ///
    /// # Errors
    /// [`SessionError`] naming the record.
    pub(crate) fn started(&self, pid: u32) -> Result<(), SessionError> {
        let rec = Record {
            pid,
            ..self.rec.clone()
        };
        Ok(rec.save(&self.dirs.root)?)
    }

    /// Removes a session whose container could not be created.
    pub(crate) fn abandon(self) {
        let _ = self.dirs.discard();
    }
}

/// Where a container's session is, for `delete`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerSessionRef {
    /// The state root.
    pub state_root: PathBuf,
    /// The session's id.
    pub id: String,
}

/// Once the container has ended: applies the session's policy (discard, keep, commit) and
/// says, through `report`, what became of it.
///
/// # Errors
/// [`KeptError`]; the session is kept then.
pub(crate) fn finish(at: &ContainerSessionRef, report: &dyn Report) -> Result<(), KeptError> {
    let (dirs, mut rec) = SessionDirs::open(&at.state_root, &at.id)?;
    rec.status = Status::Preserved;
    rec.ended = Some(now());
    rec.save(&dirs.root).map_err(SessionError::from)?;
    let mode = match rec.policy {
        Policy::Discard => return Ok(dirs.discard().map_err(SessionError::from)?),
        Policy::Commit => CommitMode::Plain,
        Policy::CommitAtomic => CommitMode::Atomic,
        Policy::Preserve | Policy::Ask => {
            report.note(super::report::Note::Kept {
                id: &dirs.id.0,
                name: rec.name.as_deref(),
                upper: &dirs.upper,
                layered: false,
            });
            return Ok(());
        }
    };
    let mut kept = super::Kept::open(&at.state_root, &at.id)?;
    kept.commit(mode, false, false, report)?;
    Ok(())
}
