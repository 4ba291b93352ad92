//! How a session ended, as values for a caller that reports it: the binary's
//! `--json-status FILE`, written atomically when the session ends, also when it could not
//! start.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::SessionError;
use crate::mount::Backend;
use crate::policy::plan::Change;

/// What became of a session's changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Kept as a session (preserve, ask, or a commit that failed or was refused by the lock).
    Kept,
    /// Dropped (discard, or nothing changed).
    Discarded,
    /// Merged into the rootfs.
    Committed,
    /// Not merged: the rootfs changed the same paths since the session began; kept.
    Conflict,
    /// A commit policy kept a run that did not succeed (`--commit-on success`).
    NotCommitted,
}

/// How many paths were added, changed and deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Added paths (`A`).
    pub added: usize,
    /// Changed paths (`C`).
    pub changed: usize,
    /// Deleted paths (`D`).
    pub deleted: usize,
}

impl Counts {
    /// Counts the changes of a diff.
    pub(crate) fn of(changes: &[(Change, PathBuf)]) -> Counts {
        let count = |c| changes.iter().filter(|(k, _)| *k == c).count();
        Counts {
            added: count(Change::Added),
            changed: count(Change::Changed),
            deleted: count(Change::Deleted),
        }
    }
}

/// A session that ran (or was made and could not start): what a caller reports of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The session's id.
    pub id: String,
    /// The session's name, if it has one.
    pub name: Option<String>,
    /// The backend that served the overlay; `None` when it never mounted.
    pub fs: Option<Backend>,
    /// The command's exit status (128 + n when killed by signal n); `None` when it never ran.
    pub code: Option<i32>,
    /// What became of the changes.
    pub outcome: Outcome,
    /// The changes, where they were computed (`None` when discarded without a diff).
    pub changes: Option<Counts>,
    /// Where the changes are, when they were kept.
    pub upper: Option<PathBuf>,
}

/// A session that failed: the error, and how far the session got when it had begun.
#[derive(Debug)]
pub struct Failed {
    /// The session, once it had an id (its outcome says what became of its changes).
    pub ended: Option<Box<Ended>>,
    /// Why it failed (boxed: `Failed` travels in a `Result`).
    pub error: Box<SessionError>,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

// The error's own chain: `Failed` adds no message of its own.
impl std::error::Error for Failed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.error)
    }
}

impl From<SessionError> for Failed {
    fn from(error: SessionError) -> Failed {
        Failed {
            ended: None,
            error: Box::new(error),
        }
    }
}

/// The `--json-status` document of a session (`ended`, if it got an id) that ended with
/// `error` (if any). The exit status 128 + n reads as signal n, as a shell reads it (a
/// command that exits 130 itself looks the same).
pub fn status_json(ended: Option<&Ended>, error: Option<&str>) -> serde_json::Value {
    let code = ended.and_then(|e| e.code);
    serde_json::json!({
        "id": ended.map(|e| e.id.as_str()),
        "name": ended.and_then(|e| e.name.as_deref()),
        "backend": ended.and_then(|e| e.fs).map(Backend::name),
        "exit_code": code,
        "signal": code.filter(|c| (129..=192).contains(c)).map(|c| c - 128),
        "outcome": ended.map(|e| e.outcome),
        "changes": ended.and_then(|e| e.changes),
        "upper": ended.and_then(|e| e.upper.as_deref()).map(Path::to_string_lossy),
        "error": error,
    })
}

/// Writes `json` to `path`: atomically (temp file, rename) for a regular file or a new one;
/// straight through anything else that exists (`/dev/fd/3`, a symlink, a fifo), whose
/// directory entry is not the user's to replace.
///
/// # Errors
/// The write's, for the caller to name `path`.
pub fn write_status(path: &Path, json: &serde_json::Value) -> std::io::Result<()> {
    let mut text = serde_json::to_vec_pretty(json)?;
    text.push(b'\n');
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() => std::fs::write(path, &text),
        _ => crate::sys::write_atomic(path, &text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_signals_and_leaves_unknowns_null() {
        let ended = Ended {
            id: "abc".into(),
            name: None,
            fs: Some(Backend::Kernel),
            code: Some(137),
            outcome: Outcome::NotCommitted,
            changes: Some(Counts {
                added: 1,
                changed: 2,
                deleted: 3,
            }),
            upper: Some("/s/abc/upper".into()),
        };
        let v = status_json(Some(&ended), None);
        assert_eq!(v["signal"], 9);
        assert_eq!(v["exit_code"], 137);
        assert_eq!(v["outcome"], "not-committed");
        assert_eq!(v["backend"], "kernel");
        assert_eq!(v["changes"]["deleted"], 3);
        assert!(v["name"].is_null() && v["error"].is_null());
        let plain = status_json(
            Some(&Ended {
                code: Some(3),
                ..ended.clone()
            }),
            None,
        );
        assert!(plain["signal"].is_null());
        let named = status_json(
            Some(&Ended {
                name: Some("job".into()),
                ..ended.clone()
            }),
            None,
        );
        assert_eq!(named["name"], "job");
        let failed = status_json(None, Some("cannot"));
        assert!(failed["id"].is_null() && failed["outcome"].is_null());
        assert_eq!(failed["error"], "cannot");
    }

    #[test]
    fn status_goes_atomically_to_files_and_straight_to_devices() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("status.json");
        write_status(&file, &serde_json::json!({"a": 1})).unwrap();
        write_status(&file, &serde_json::json!({"a": 2})).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(v["a"], 2);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write_status(Path::new("/dev/null"), &serde_json::json!({})).unwrap();
        assert!(
            std::fs::metadata("/dev/null").unwrap().file_type()
                != std::fs::metadata(&file).unwrap().file_type(),
            "/dev/null was replaced"
        );
    }
}
