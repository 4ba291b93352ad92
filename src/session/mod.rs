//! Session state on disk: an id and a directory holding the upper, the work directory and
//! the mount point, under the state root; and the root filesystem a session's launcher is
//! handed (the overlay mounted, its mount targets made and removed).

pub(crate) mod cgroup;
pub(crate) mod container;
pub(crate) mod durable;
pub mod ended;
pub mod exec;
pub(crate) mod kept;
pub(crate) mod lock;
pub(crate) mod name;
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

/// What a session run with `--layer` stands on: a kept session's rootfs, with its upper
/// and its own layers over it.
#[derive(Debug, Clone)]
pub struct Stack {
    /// The bottom tree.
    pub rootfs: PathBuf,
    /// The layers over it, topmost first.
    pub layers: Vec<PathBuf>,
}

/// The [`Stack`] of kept session `given` (a name, id or unique start of one) under
/// `state_root`, for a new session over it.
///
/// # Errors
/// [`SessionError::NotALayer`] for a session whose launcher was killed (resume, diff or
/// discard it first) or whose upper holds aufs whiteouts; as [`SessionDirs::open`].
pub fn stack_of(state_root: &Path, given: &str) -> Result<Stack, SessionError> {
    let (dirs, rec) = SessionDirs::open_finished(state_root, given)?;
    let not = |why| SessionError::NotALayer {
        id: dirs.id.0.clone(),
        why,
    };
    if rec.status != record::Status::Preserved {
        return Err(not(
            "it did not end (its launcher was killed); resume it or discard it first",
        ));
    }
    if upper::format_of(&rec).is_ok_and(|f| f == crate::layers::WhiteoutFormat::Aufs) {
        return Err(not(
            "its upper records aufs whiteouts (.wh. files), which the kernel overlayfs does not read",
        ));
    }
    let mut layers = vec![dirs.upper.clone()];
    layers.extend(rec.layers.iter().cloned());
    Ok(Stack {
        rootfs: rec.rootfs,
        layers,
    })
}

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
    pub(crate) fn new() -> SessionId {
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
    pub(crate) const LEN: usize = 12;

    /// Whether `s` has an id's shape, or (`prefix`) is a non-empty start of one: lowercase
    /// hex digits only, so it can never name anything but an entry of the sessions dir.
    pub(crate) fn is_id(s: &str, prefix: bool) -> bool {
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
    pub(crate) fn create(
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

    /// The session id `given` stands for: a session's name, id, or a unique prefix of an id,
    /// of a session under `state_root`.
    ///
    /// # Errors
    /// [`SessionError::BadId`], [`SessionError::Unknown`], [`SessionError::Ambiguous`].
    pub(crate) fn resolve_id(state_root: &Path, given: &str) -> Result<String, SessionError> {
        // A whole id, then a name, then the start of an id: as docker resolves them.
        if !SessionId::is_id(given, false) {
            if let Some(id) = name::lookup(state_root, given) {
                return Ok(id);
            }
        }
        if !SessionId::is_id(given, true) {
            if name::check(given).is_ok() {
                return Err(SessionError::Unknown {
                    id: given.to_owned(),
                    state: state_root.to_owned(),
                });
            }
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
    pub(crate) fn open_finished(
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
    pub(crate) fn discard(&self) -> Result<(), StateError> {
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
        upper::remove_or_empty(&self.root, true).map_err(fail("remove", &self.root))?;
        self.release_name();
        Ok(())
    }

    /// Frees the session's name, once its directory is gone.
    fn release_name(&self) {
        if let Some(state) = self.root.parent().and_then(Path::parent) {
            name::release(state, &self.id.0);
        }
    }

    /// Removes only the session's own directory (its record), leaving its upper: for a
    /// session that never ran over an upper holding earlier work.
    ///
    /// # Errors
    /// [`StateError`].
    pub(crate) fn forget(&self) -> Result<(), StateError> {
        upper::remove_or_empty(&self.root, true).map_err(|source| StateError {
            what: "remove",
            path: self.root.clone(),
            source,
        })?;
        self.release_name();
        Ok(())
    }

    /// The sessions under `state_root` that stand on this one's upper (`--layer`).
    pub(crate) fn dependents(&self) -> Vec<String> {
        let Some(state) = self.root.parent().and_then(Path::parent) else {
            return Vec::new();
        };
        SessionDirs::list(state)
            .into_iter()
            .filter(|(_, r)| r.layers.contains(&self.upper))
            .map(|(d, _)| d.id.0)
            .collect()
    }

    /// Refuses, with [`SessionError::IsALayer`], when other sessions stand on this one.
    pub(crate) fn check_no_dependents(&self) -> Result<(), SessionError> {
        let dependents = self.dependents();
        if dependents.is_empty() {
            return Ok(());
        }
        Err(SessionError::IsALayer {
            id: self.id.0.clone(),
            dependents,
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
        "{given:?} is neither a session id ({} hex digits, or a unique start of them) nor a session name; see `ovlrun ls`",
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
    /// A `--name` that is not a name.
    #[error("--name {name:?}: {why}")]
    BadName {
        /// What was given.
        name: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// A `--name` another session has.
    #[error("--name {name}: session {id} has that name (`ovlrun discard {name}` frees it)")]
    NameTaken {
        /// The name.
        name: String,
        /// The session that has it.
        id: String,
    },
    /// A commit of a session over several trees: there is no one tree to merge into.
    #[error(
        "session {id} stands on {count} layer(s) over {}: a commit merges into one rootfs; \
         see its changes with `ovlrun diff {id}`, export them with `ovlrun export {id}`, or keep it",
        .rootfs.display()
    )]
    Layered {
        /// The session.
        id: String,
        /// Its layers over the rootfs.
        count: usize,
        /// Its rootfs.
        rootfs: PathBuf,
    },
    /// The session's limits (`--memory`, `--pids-limit`, `--cpus`) could not be written; the
    /// command never ran.
    #[error("cannot set the session's limits in cgroup {}", .path.display())]
    Cgroup {
        /// The cgroup.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A commit policy for a session over several trees, refused before it starts.
    #[error(
        "--policy {policy}: the session would stand on {count} layer(s) over {}, and a commit \
         merges into one rootfs; use --policy preserve, then `ovlrun diff` or `ovlrun export`",
        .rootfs.display()
    )]
    CommitOverLayers {
        /// The policy asked for.
        policy: &'static str,
        /// The layers over the rootfs.
        count: usize,
        /// The rootfs.
        rootfs: PathBuf,
    },
    /// The session is a layer of other sessions, which would lose what they stand on.
    #[error(
        "session {id} is a layer of session {}, which stands on it: discard that first",
        .dependents.join(", ")
    )]
    IsALayer {
        /// The session.
        id: String,
        /// The sessions over it.
        dependents: Vec<String>,
    },
    /// A session that cannot be a layer.
    #[error("session {id} cannot be a layer: {why}")]
    NotALayer {
        /// The session.
        id: String,
        /// Why.
        why: &'static str,
    },
    /// A setting that is not valid (`exec --user`).
    #[error(transparent)]
    Setting(#[from] crate::config::PlanError),
    /// `ovlrun exec` into a session that is not running.
    #[error(
        "session {id} is not running: `ovlrun exec` enters running sessions only (`ovlrun run --resume {id}` runs a new command on a kept one)"
    )]
    NotRunning {
        /// The session.
        id: String,
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
    /// The session's upper was not synced before the machine went down: a copied-up file in
    /// it may be empty or short (see `durable.rs`).
    #[error(
        "session {id} was not yet on disk when the machine went down: a file it copied up in \
         {} may be empty or short, so it is not read (nothing was done); discard it with \
         `ovlrun discard {id}`, or, if you know its files are whole, remove the mark \
         `unsynced_boot` from its session.json",
        .upper.display()
    )]
    Unsynced {
        /// The session.
        id: String,
        /// Its upper.
        upper: PathBuf,
    },
    /// The session's upper could not be synced to disk.
    #[error("cannot sync {} to disk", .upper.display())]
    Sync {
        /// The upper.
        upper: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
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
