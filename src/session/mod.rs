//! Session state on disk: an id and a directory holding the upper, the work directory and
//! the mount point, under the state root.

use std::path::{Path, PathBuf};

/// A session's id: time of creation plus random bits, sortable and unique per host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionId(pub String);

impl SessionId {
    /// A fresh id.
    pub fn new() -> SessionId {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut rnd = [0u8; 4];
        let _ = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut rnd));
        let pid = std::process::id();
        SessionId(format!("{secs:x}-{pid:x}-{}", hex(&rnd)))
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
    /// Creates a new session's directories under `state_root`.
    ///
    /// # Errors
    /// [`StateError`] naming the directory.
    pub fn create(state_root: &Path) -> Result<SessionDirs, StateError> {
        let id = SessionId::new();
        let root = state_root.join("sessions").join(&id.0);
        let dirs = SessionDirs {
            upper: root.join("upper"),
            work: root.join("work"),
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
        // Others must reach the mount point's parent for allow_other mounts, but not the
        // upper's content: keep the session root searchable only.
        Ok(dirs)
    }

    /// Removes the session's directories and all they hold.
    ///
    /// # Errors
    /// [`StateError`] naming the directory.
    pub fn discard(&self) -> Result<(), StateError> {
        std::fs::remove_dir_all(&self.root).map_err(|source| StateError {
            what: "remove the session directory",
            path: self.root.clone(),
            source,
        })
    }
}
