//! Session state on disk: an id and a directory holding the upper, the work directory and
//! the mount point, under the state root; and the root filesystem a session's launcher is
//! handed (the overlay mounted, its mount targets made and removed).

pub(crate) mod container;
pub mod ended;
pub(crate) mod kept;
pub(crate) mod lock;
pub(crate) mod netfiles;
pub(crate) mod record;
pub mod report;
pub(crate) mod rootfs;
pub(crate) mod run;
pub(crate) mod scaffold;
pub(crate) mod upper;

pub use crate::sandbox::SandboxError;
pub use crate::sandbox::handshake::{HandshakeError, Msg as HandshakeMsg};
pub use crate::sandbox::idmap::IdMapError;
pub use crate::sandbox::terminal::TerminalError;
pub use container::ContainerSessionRef;
pub use ended::{Counts, Ended, Failed, Outcome};
pub use kept::{Kept, KeptError, recover};
pub use lock::LockError;
pub use record::{Record, RecordError, Status};
pub use run::{RunOptions, run};
pub use upper::UpperError;

use std::path::{Path, PathBuf};

/// A session's id: 12 random hex digits, short enough to type (creation order lives in the
/// record). Stored in `session.json` as the plain string.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub String);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so `{:<12}` in tables lines up.
        f.pad(&self.0)
    }
}

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
        SessionId(crate::policy::names::hex(&rnd))
    }
}

impl SessionId {
    /// The number of hex digits of an id.
    pub const LEN: usize = 12;

    /// Whether `s` has an id's shape, or (`prefix`) is a non-empty start of one: lowercase
    /// hex digits only, so it can never name anything but an entry of the sessions dir.
    pub fn is_id(s: &str, prefix: bool) -> bool {
        let len_ok = if prefix {
            (1..=Self::LEN).contains(&s.len())
        } else {
            s.len() == Self::LEN
        };
        len_ok
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
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
    /// Creates a new session's directories under `state_root`; `upper`, a user-given upper
    /// already checked (`upper::check`), replaces the upper and work directories there.
    /// Every path is absolute and canonical.
    ///
    /// # Errors
    /// [`SessionError::State`] naming the directory, [`SessionError::Upper`].
    pub fn create(
        state_root: &Path,
        upper: Option<&upper::Checked>,
    ) -> Result<SessionDirs, SessionError> {
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError {
                what: "create the session directory",
                path,
                source,
            }
        };
        let sessions = state_root.join("sessions");
        std::fs::create_dir_all(&sessions).map_err(err(&sessions))?;
        let sessions = sessions.canonicalize().map_err(err(&sessions))?;
        let mut id = SessionId::new();
        while sessions.join(&id.0).exists() {
            id = SessionId::new();
        }
        let root = sessions.join(&id.0);
        let (upper_dir, work) = match upper {
            Some(u) => (u.upper.clone(), u.work.clone()),
            None => (root.join("upper"), root.join("work")),
        };
        let dirs = SessionDirs {
            upper: upper_dir,
            work,
            mnt: root.join("mnt"),
            root,
            id,
        };
        for d in [&dirs.root, &dirs.mnt] {
            std::fs::create_dir_all(d).map_err(err(d))?;
        }
        match upper {
            Some(u) => {
                u.create()?;
            }
            None => {
                for d in [&dirs.upper, &dirs.work] {
                    std::fs::create_dir(d).map_err(err(d))?;
                }
            }
        }
        Ok(dirs)
    }

    /// Whether the upper and work directories are the state root's own (`<root>/upper`,
    /// `<root>/work`), which need no mark.
    fn in_state(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let same = |a: &Path, b: &Path| {
            a == b
                || matches!((a.symlink_metadata(), b.symlink_metadata()),
                    (Ok(x), Ok(y)) if (x.dev(), x.ino()) == (y.dev(), y.ino()))
        };
        same(&self.upper, &self.root.join("upper")) && same(&self.work, &self.root.join("work"))
    }

    /// The session id `given` stands for: an id, or a unique prefix of one, of a session
    /// under `state_root`.
    ///
    /// # Errors
    /// [`SessionError::BadId`], [`SessionError::Unknown`], [`SessionError::Ambiguous`].
    pub fn resolve_id(state_root: &Path, given: &str) -> Result<String, SessionError> {
        if !SessionId::is_id(given, true) {
            return Err(SessionError::BadId {
                given: given.to_owned(),
            });
        }
        let unknown = || SessionError::Unknown {
            id: given.to_owned(),
            state: state_root.to_owned(),
        };
        let sessions = state_root.join("sessions");
        if SessionId::is_id(given, false) && sessions.join(given).is_dir() {
            return Ok(given.to_owned());
        }
        let mut found: Vec<String> = std::fs::read_dir(&sessions)
            .map_err(|_| unknown())?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| SessionId::is_id(n, false) && n.starts_with(given))
            .collect();
        found.sort();
        match found.len() {
            0 => Err(unknown()),
            1 => Ok(found.remove(0)),
            _ => Err(SessionError::Ambiguous {
                given: given.to_owned(),
                matches: found,
            }),
        }
    }

    /// The directories of the kept session `id`, from its record.
    ///
    /// # Errors
    /// [`SessionError::Unknown`] when there is no such session.
    pub fn open(
        state_root: &Path,
        id: &str,
    ) -> Result<(SessionDirs, record::Record), SessionError> {
        let id = Self::resolve_id(state_root, id)?;
        Self::open_exact(state_root, &id)
    }

    /// Opens session `id` (a whole id, checked) and checks its record.
    fn open_exact(
        state_root: &Path,
        id: &str,
    ) -> Result<(SessionDirs, record::Record), SessionError> {
        let root = state_root.join("sessions").join(id);
        let root = root.canonicalize().unwrap_or(root);
        let rec = record::Record::load(&root)?;
        rec.check_paths(&root)?;
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
                id: dirs.id.0.clone(),
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
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| SessionId::is_id(name, false))
            .filter_map(|name| SessionDirs::open_exact(state_root, &name).ok())
            .collect();
        out.sort_by_key(|(_, r)| (r.created, r.id.clone()));
        out
    }

    /// Removes the session: its upper and work directories, then its own directory. An
    /// upper outside the state root goes only when its work directory carries ovlrun's mark
    /// for it (`upper::marker`), and only as far as ovlrun made it: a directory the user
    /// gave empty is emptied, not removed.
    ///
    /// # Errors
    /// [`StateError`] naming the directory; what could not be removed stays, and nothing is
    /// removed when the upper carries no mark.
    pub fn discard(&self) -> Result<(), StateError> {
        let fail = |what, path: &Path| {
            let path = path.to_owned();
            move |source| StateError { what, path, source }
        };
        if self.in_state() {
            for d in [&self.upper, &self.work] {
                upper::remove_or_empty(d, true).map_err(fail("remove", d))?;
            }
        } else {
            let Some(mark) = upper::marker(&self.upper, &self.work) else {
                return Err(StateError {
                    what: "remove",
                    path: self.upper.clone(),
                    source: std::io::Error::other(format!(
                        "ovlrun did not make it (no mark for it in {}); remove the session's \
                         record {} by hand if it is stale",
                        self.work.display(),
                        self.root.display()
                    )),
                });
            };
            upper::remove_or_empty(&self.upper, mark.made_upper)
                .map_err(fail("remove", &self.upper))?;
            upper::remove_or_empty(&self.work, mark.made_work)
                .map_err(fail("remove", &self.work))?;
        }
        upper::remove_or_empty(&self.root, true).map_err(fail("remove", &self.root))
    }

    /// Removes only the session's own directory (its record), leaving its upper: for a
    /// session that never ran over an upper holding earlier work.
    ///
    /// # Errors
    /// [`StateError`].
    pub fn forget(&self) -> Result<(), StateError> {
        upper::remove_or_empty(&self.root, true).map_err(|source| StateError {
            what: "remove",
            path: self.root.clone(),
            source,
        })
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
    /// Not an id nor the start of one.
    #[error(
        "{given:?} is not a session id ({} hex digits, or a unique start of them; see `ovlrun ls`)",
        SessionId::LEN
    )]
    BadId {
        /// What was given.
        given: String,
    },
    /// A prefix that more than one session id starts with.
    #[error("session id {given} is ambiguous: {}", .matches.join(", "))]
    Ambiguous {
        /// What was given.
        given: String,
        /// The ids it starts.
        matches: Vec<String>,
    },
    /// A `--upper` that cannot be used.
    #[error(transparent)]
    Upper(#[from] upper::UpperError),
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
    /// Paths the session changes changed in the rootfs too since it began: nothing was
    /// applied and the session is kept.
    #[error(
        "session {id} not committed: {} changed in {} since the session began ({}); nothing \
         was applied and the session is kept: see them with `ovlrun diff --conflicts {id}`, \
         commit over them with `ovlrun commit --force {id}`",
        count_paths(.conflicts.len()), .rootfs.display(), first_paths(.conflicts)
    )]
    Conflicts {
        /// The session, kept.
        id: String,
        /// The rootfs.
        rootfs: PathBuf,
        /// The conflicting paths, sorted.
        conflicts: Vec<crate::policy::conflict::Conflict>,
    },
    /// Recovering an interrupted commit failed.
    #[error("cannot recover the interrupted commit of {}", .rootfs.display())]
    Recover {
        /// The rootfs.
        rootfs: PathBuf,
        /// The cause.
        #[source]
        source: crate::policy::commit::RecoverError,
    },
}

fn count_paths(n: usize) -> String {
    if n == 1 {
        "1 path it changes was".into()
    } else {
        format!("{n} paths it changes were")
    }
}

/// The first few conflicting paths, for a one-line message.
fn first_paths(conflicts: &[crate::policy::conflict::Conflict]) -> String {
    const SHOWN: usize = 3;
    let mut s: Vec<String> = conflicts
        .iter()
        .take(SHOWN)
        .map(|c| c.path.display().to_string())
        .collect();
    if conflicts.len() > SHOWN {
        s.push(format!("and {} more", conflicts.len() - SHOWN));
    }
    s.join(", ")
}
