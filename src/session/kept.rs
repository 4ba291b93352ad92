//! A kept session's changes, read as a plain directory: the sequence every command on a kept
//! session follows (open it, enter the owner's namespace, make the upper whole, then diff,
//! commit, export or discard), so the binary and a library user run it the same way.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::lock::Mode;
use super::record::{Record, Status};
use super::run::{commit_session, conflicts_of, lock_and_recover};
use super::{SessionDirs, SessionError, SessionId, scaffold, upper};
use crate::layers::{LayerSetupError, OverlayConfig, WhiteoutFormat};
use crate::policy::conflict::Conflict;
use crate::policy::export::ExportError;
use crate::policy::plan::Plan;
use crate::policy::{CommitMode, export, plan};
use crate::session::report::Report;

/// Why a kept session's changes could not be read or written out.
#[derive(Debug, thiserror::Error)]
pub enum KeptError {
    /// Opening, entering the owner's namespace, reading the diff or committing.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The metadata-only copies a killed server left could not be completed.
    #[error(transparent)]
    Metacopy(#[from] LayerSetupError),
    /// The upper's recorded whiteout format cannot be read.
    #[error("cannot read the whiteout format of {}", .upper.display())]
    Format {
        /// The session's upper.
        upper: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the layer tarball failed.
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// A session opened for its changes, in the owner's namespace (a non-root caller reads files
/// the session made as its subordinate ids only there).
#[derive(Debug)]
pub struct Kept {
    state: PathBuf,
    dirs: SessionDirs,
    rec: Record,
    /// Whether a running session's FUSE server still owns the upper (it completes the copies
    /// at its end, so they are left alone).
    live: bool,
    /// The upper was not synced before the machine went down (`durable.rs`): it may be
    /// discarded, not read.
    unsynced: bool,
}

impl Kept {
    /// Opens session `id` (a whole id or a unique start of one) under `state`, refused while
    /// its command still runs, and enters the owner's namespace.
    ///
    /// # Errors
    /// [`SessionError::Running`], [`SessionError::Unknown`] and the like, or
    /// [`SessionError::Sandbox`] when the namespace cannot be entered.
    pub fn open(state: &Path, id: &str) -> Result<Kept, SessionError> {
        let (dirs, rec) = SessionDirs::open_finished(state, id)?;
        Kept::enter(state, dirs, rec)
    }

    /// Like [`Kept::open`], also for a session whose command still runs: for reading its
    /// changes so far ([`Kept::diff`]).
    ///
    /// # Errors
    /// As [`Kept::open`], but never [`SessionError::Running`].
    pub fn peek(state: &Path, id: &str) -> Result<Kept, SessionError> {
        let (dirs, rec) = SessionDirs::open(state, id)?;
        Kept::enter(state, dirs, rec)
    }

    fn enter(state: &Path, dirs: SessionDirs, mut rec: Record) -> Result<Kept, SessionError> {
        crate::sandbox::enter_owner_namespace()?;
        let live = rec.status == Status::Running && !rec.is_dead();
        // A running session syncs its upper itself when it ends.
        let unsynced = !live && !super::durable::settle(&dirs, &mut rec)?;
        Ok(Kept {
            state: state.to_owned(),
            dirs,
            rec,
            live,
            unsynced,
        })
    }

    /// The session's id.
    pub fn id(&self) -> &SessionId {
        &self.dirs.id
    }

    /// The session's record (its rootfs, upper, status).
    pub fn record(&self) -> &Record {
        &self.rec
    }

    /// Makes the upper what the session wrote before it is read as a plain directory: removes
    /// the mount targets a killed launcher left and gives the metadata-only copies a killed
    /// FUSE server left their data. Returns the upper's whiteout format.
    fn complete(&self) -> Result<WhiteoutFormat, KeptError> {
        if self.unsynced {
            return Err(SessionError::Unsynced {
                id: self.dirs.id.0.clone(),
                upper: self.rec.upper.clone(),
            }
            .into());
        }
        let format = upper::format_of(&self.rec).map_err(|source| KeptError::Format {
            upper: self.rec.upper.clone(),
            source,
        })?;
        if !self.live {
            scaffold::scrub(&self.rec.lowers(), &self.rec.upper, &self.rec.work);
            crate::layers::complete_metacopies(&OverlayConfig {
                lowers: self.rec.lowers(),
                upper: self.rec.upper.clone(),
                work: Some(self.rec.work.clone()),
                whiteout: Some(format),
                durable: true,
            })?;
        }
        Ok(format)
    }

    /// The session's changes against its rootfs, sorted by path.
    ///
    /// # Errors
    /// [`KeptError::Metacopy`], [`KeptError::Format`], or [`SessionError::Plan`] when the
    /// upper or rootfs cannot be read.
    pub fn diff(&self) -> Result<Plan, KeptError> {
        let format = self.complete()?;
        Ok(plan::plan(&self.rec.lowers(), &self.rec.upper, format).map_err(SessionError::from)?)
    }

    /// The paths of `diff` (from [`Kept::diff`]) that the rootfs changed too since the session
    /// began.
    ///
    /// # Errors
    /// [`SessionError::Plan`] when the rootfs cannot be read.
    pub fn conflicts(&self, diff: &Plan) -> Result<Vec<Conflict>, SessionError> {
        conflicts_of(&self.rec, diff)
    }

    /// Commits the changes into the rootfs (`wait`: for its lock; `force`: over conflicts) and
    /// removes the session; returns the conflicts committed over. `report` shows progress.
    ///
    /// # Errors
    /// [`SessionError::Conflicts`] (nothing applied, the session kept),
    /// [`SessionError::Commit`], [`SessionError::Lock`], or as [`Kept::diff`].
    pub fn commit(
        &mut self,
        mode: CommitMode,
        wait: bool,
        force: bool,
        report: &dyn Report,
    ) -> Result<Vec<Conflict>, KeptError> {
        self.complete()?;
        Ok(commit_session(
            &self.state,
            &self.dirs,
            &mut self.rec,
            mode,
            wait,
            force,
            report,
            &mut None,
        )?)
    }

    /// Writes the changes to `out` as an OCI layer tarball and returns `out`, unflushed.
    ///
    /// # Errors
    /// [`KeptError::Export`] naming the path, or as [`Kept::diff`].
    pub fn export<W: Write>(&self, out: W) -> Result<W, KeptError> {
        let format = self.complete()?;
        Ok(export::export(&self.rec.upper, format, out)?)
    }

    /// Removes the session and its changes.
    ///
    /// # Errors
    /// [`SessionError::IsALayer`] while other sessions stand on this one (nothing removed);
    /// [`SessionError::State`] naming what could not be removed.
    pub fn discard(self) -> Result<(), SessionError> {
        self.dirs.check_no_dependents()?;
        Ok(self.dirs.discard()?)
    }
}

/// Finishes or undoes an interrupted commit into `rootfs` (told to `report`), in the owner's
/// namespace, under the rootfs's lock taken exclusively without waiting.
///
/// # Errors
/// [`SessionError::Lock`] when busy, [`SessionError::Recover`], [`SessionError::Sandbox`].
pub fn recover(state: &Path, rootfs: &Path, report: &dyn Report) -> Result<(), SessionError> {
    crate::sandbox::enter_owner_namespace()?;
    lock_and_recover(state, rootfs, Mode::Exclusive, false, report)?;
    Ok(())
}
