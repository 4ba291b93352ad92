//! Session state on disk: an id and a directory holding the upper, the work directory and
//! the mount point, under the state root.

pub mod lock;
pub mod record;
pub mod run;

use std::path::{Path, PathBuf};

/// A session's id: 12 random hex digits, short enough to type (creation order lives in the
/// record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionId(pub String);

impl SessionId {
    /// A fresh id.
    pub fn new() -> SessionId {
        let mut rnd = [0u8; 6];
        let read = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut rnd));
        if read.is_err() {
            // No urandom (an odd chroot): time and pid still make it unique on this host.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let mixed = (t as u64) ^ (u64::from(std::process::id()) << 32);
            rnd.copy_from_slice(&mixed.to_le_bytes()[..6]);
        }
        SessionId(hex(&rnd))
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Why session state could not be prepared or removed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {}", .path.display())]
pub struct StateError {
    /// What was being done.
    pub what: &'static str,
    /// The path.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// The directories of one session.
#[derive(Debug)]
pub struct SessionDirs {
    /// The session's id.
    pub id: SessionId,
    /// `<state>/sessions/<id>`.
    pub root: PathBuf,
    /// The upper layer.
    pub upper: PathBuf,
    /// The work directory.
    pub work: PathBuf,
    /// Where the overlay is mounted (inside the launcher's private mount namespace only).
    pub mnt: PathBuf,
}

impl SessionDirs {
    /// Creates a new session's directories under `state_root`; `upper` chooses the upper
    /// directory (its work directory goes beside it).
    ///
    /// # Errors
    /// [`StateError`] naming the directory.
    pub fn create(state_root: &Path, upper: Option<&Path>) -> Result<SessionDirs, StateError> {
        let mut id = SessionId::new();
        while state_root.join("sessions").join(&id.0).exists() {
            id = SessionId::new();
        }
        let root = state_root.join("sessions").join(&id.0);
        let (upper, work) = match upper {
            Some(u) => (u.to_owned(), crate::layers::default_work(u)),
            None => (root.join("upper"), root.join("work")),
        };
        let dirs = SessionDirs {
            upper,
            work,
            mnt: root.join("mnt"),
            root,
            id,
        };
        for d in [&dirs.upper, &dirs.work, &dirs.mnt] {
            std::fs::create_dir_all(d).map_err(|source| StateError {
                what: "create the session directory",
                path: d.clone(),
                source,
            })?;
        }
        Ok(dirs)
    }

    /// The directories of the kept session `id`, from its record.
    ///
    /// # Errors
    /// [`SessionError::Unknown`] when there is no such session.
    pub fn open(
        state_root: &Path,
        id: &str,
    ) -> Result<(SessionDirs, record::Record), SessionError> {
        let root = state_root.join("sessions").join(id);
        if id.is_empty() || id.contains('/') || !root.is_dir() {
            return Err(SessionError::Unknown {
                id: id.to_owned(),
                state: state_root.to_owned(),
            });
        }
        let rec = record::Record::load(&root)?;
        let dirs = SessionDirs {
            id: SessionId(id.to_owned()),
            upper: rec.upper.clone(),
            work: rec.work.clone(),
            mnt: root.join("mnt"),
            root,
        };
        Ok((dirs, rec))
    }

    /// Like [`SessionDirs::open`], for acting on the session's changes: refused while its
    /// command still runs.
    ///
    /// # Errors
    /// [`SessionError::Running`], or as [`SessionDirs::open`].
    pub fn open_finished(
        state_root: &Path,
        id: &str,
    ) -> Result<(SessionDirs, record::Record), SessionError> {
        let (dirs, rec) = SessionDirs::open(state_root, id)?;
        if rec.status == record::Status::Running && !rec.is_dead() {
            return Err(SessionError::Running {
                id: id.to_owned(),
                pid: rec.pid,
            });
        }
        Ok((dirs, rec))
    }

    /// Every session under `state_root` that has a readable record, oldest first.
    pub fn list(state_root: &Path) -> Vec<(SessionDirs, record::Record)> {
        let Ok(entries) = std::fs::read_dir(state_root.join("sessions")) else {
            return Vec::new();
        };
        let mut out: Vec<_> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| SessionDirs::open(state_root, &e.file_name().to_string_lossy()).ok())
            .collect();
        out.sort_by_key(|(_, r)| (r.created, r.id.clone()));
        out
    }

    /// Removes the session: its upper and work directories, then its own directory.
    ///
    /// # Errors
    /// [`StateError`] naming the directory; what could not be removed stays.
    pub fn discard(&self) -> Result<(), StateError> {
        for d in [&self.upper, &self.work, &self.root] {
            match std::fs::remove_dir_all(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StateError {
                        what: "remove",
                        path: d.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Bytes used by the upper (apparent sizes of its files).
    pub fn upper_size(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(md) = p.symlink_metadata() else {
                return 0;
            };
            if !md.is_dir() {
                return md.len();
            }
            std::fs::read_dir(p)
                .map(|d| d.filter_map(|e| e.ok()).map(|e| walk(&e.path())).sum())
                .unwrap_or(0)
        }
        walk(&self.upper)
    }
}

/// A session command that cannot proceed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No such session.
    #[error("no session {id} under {} (see `ovlrun ls`)", .state.display())]
    Unknown {
        /// The id given.
        id: String,
        /// The state root searched.
        state: PathBuf,
    },
    /// The session's command is still running.
    #[error("session {id} is still running (pid {pid})")]
    Running {
        /// The session.
        id: String,
        /// Its launcher.
        pid: u32,
    },
    /// State files.
    #[error(transparent)]
    State(#[from] StateError),
    /// The record.
    #[error(transparent)]
    Record(#[from] record::RecordError),
    /// The rootfs lock.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// The sandbox.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// Reading the upper or rootfs for a diff or commit.
    #[error(transparent)]
    Plan(#[from] crate::policy::plan::PlanError),
    /// The commit failed; the session is kept.
    #[error("commit failed; the changes are kept as session {id}")]
    Commit {
        /// The session, kept.
        id: String,
        /// The cause.
        #[source]
        source: crate::policy::commit::CommitError,
    },
    /// Recovering an interrupted commit failed.
    #[error("cannot recover the interrupted commit of {}", .rootfs.display())]
    Recover {
        /// The rootfs.
        rootfs: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
