//! `session.json`: what a session is, written atomically (temp file, fsync, rename, fsync of
//! the directory), so a crash leaves the old record or the new one, never half of one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SessionId;
use crate::mount::Backend;
use crate::policy::Policy;
use crate::sys::write_atomic;

/// Where a session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Its command is running.
    Running,
    /// Its command ended; its upper is kept (preserve, or a failed commit).
    Preserved,
    /// Its changes are being merged into the rootfs.
    Committing,
}

/// The record of one session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Session id.
    pub id: SessionId,
    /// The rootfs (absolute).
    pub rootfs: PathBuf,
    /// The upper directory.
    pub upper: PathBuf,
    /// The work directory.
    pub work: PathBuf,
    /// The policy the session was started with.
    pub policy: Policy,
    /// The launcher's pid while running.
    pub pid: u32,
    /// Where it stands.
    pub status: Status,
    /// Which filesystem served it: the one asked for until the session has mounted, then
    /// the one that did (`auto` becomes `kernel` or `fuse`).
    pub fs: Backend,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// When the command ended.
    pub ended: Option<u64>,
    /// The command's exit status.
    pub exit_code: Option<i32>,
    /// The uid that owns the session (sub-id files are removed in its user namespace).
    pub owner: u32,
    /// When the session began, for finding conflicts at commit
    /// ([`crate::policy::Conflict`]); absent in records of older versions, whose commits
    /// are not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) base: Option<crate::policy::conflict::Stamp>,
    /// The command the session runs (its argv, bytes that are not UTF-8 replaced); empty in
    /// records of older versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Read-only layers between the upper and the rootfs, topmost first (`--rootfs A:B:C`,
    /// `--layer SESSION`); empty for a session over one rootfs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<PathBuf>,
    /// How to enter the session while it runs (`ovlrun exec`): its pid 1 and its command's
    /// settings; absent once it has ended, and in records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) entry: Option<Entry>,
    /// The session's name (`--name`), if it was given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The boot (`/proc/sys/kernel/random/boot_id`) the session ran in while its upper was
    /// not yet synced to disk; absent once it is (see `session::durable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsynced_boot: Option<String>,
}

/// What `ovlrun exec` needs of a running session: where it is, and what its command runs as,
/// so a process entered into it is held as the command is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The session's pid 1 as the host sees it (a child of the launcher, `Record::pid`).
    pub init: u32,
    /// The command's uid, gid and supplementary groups inside.
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Its environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Its working directory.
    pub cwd: PathBuf,
    /// Its capability sets.
    pub capabilities: crate::config::CapabilitySets,
    /// Its system-call filter.
    pub seccomp: crate::config::Seccomp,
    /// Whether it runs with no_new_privs.
    pub no_new_privs: bool,
}

impl Entry {
    /// The entry of `plan`'s command, whose pid 1 is `init`.
    pub(crate) fn of(plan: &crate::config::SessionPlan, init: u32) -> Entry {
        Entry {
            init,
            uid: plan.uid,
            gid: plan.gid,
            groups: plan.groups.clone(),
            env: plan
                .env
                .iter()
                .map(|e| e.to_string_lossy().into_owned())
                .collect(),
            cwd: plan.cwd.clone(),
            capabilities: plan.capabilities.clone(),
            seccomp: plan.seccomp.clone(),
            no_new_privs: plan.no_new_privs,
        }
    }
}

/// A record that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Writing failed.
    #[error("cannot write session record {}", .path.display())]
    Write {
        /// The record file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading failed.
    #[error("cannot read session record {}", .path.display())]
    Read {
        /// The record file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A path in the record is not absolute and plain: acting on it would depend on the
    /// directory ovlrun runs in.
    #[error("session record {} holds {field} {value:?}, not an absolute path; nothing was done", .path.display())]
    NotAbsolute {
        /// The record file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// Its value.
        value: PathBuf,
    },
    /// The file is not a record.
    #[error("session record {} is malformed", .path.display())]
    Parse {
        /// The record file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Record {
    /// The record file of a session directory.
    pub(crate) fn path_in(session_dir: &Path) -> PathBuf {
        session_dir.join("session.json")
    }

    /// Writes the record into `session_dir`.
    ///
    /// # Errors
    /// [`RecordError::Write`].
    pub(crate) fn save(&self, session_dir: &Path) -> Result<(), RecordError> {
        self.save_with(session_dir, write_atomic)
    }

    /// [`Record::save`] without syncing: for what a crash makes stale anyway (a running
    /// session's entry: after a crash, nothing runs).
    ///
    /// # Errors
    /// As [`Record::save`].
    pub(crate) fn save_volatile(&self, session_dir: &Path) -> Result<(), RecordError> {
        self.save_with(session_dir, crate::sys::write_replacing_volatile)
    }

    fn save_with(
        &self,
        session_dir: &Path,
        write: fn(&Path, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), RecordError> {
        let path = Self::path_in(session_dir);
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| RecordError::Write {
            path: path.clone(),
            source: e.into(),
        })?;
        json.push(b'\n');
        write(&path, &json).map_err(|source| RecordError::Write { path, source })
    }

    /// Reads the record of `session_dir`.
    ///
    /// # Errors
    /// [`RecordError::Read`] or [`RecordError::Parse`].
    pub(crate) fn load(session_dir: &Path) -> Result<Record, RecordError> {
        let path = Self::path_in(session_dir);
        let bytes = std::fs::read(&path).map_err(|source| RecordError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| RecordError::Parse { path, source })
    }

    /// Checks that the rootfs, upper and work paths are absolute, with no `.` or `..`.
    ///
    /// # Errors
    /// [`RecordError::NotAbsolute`] naming the field.
    pub(crate) fn check_paths(&self, session_dir: &Path) -> Result<(), RecordError> {
        for (field, value) in [
            ("rootfs", &self.rootfs),
            ("upper", &self.upper),
            ("work", &self.work),
        ] {
            let mut comps = value.components();
            let plain = comps.next() == Some(std::path::Component::RootDir)
                && comps.all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain {
                return Err(RecordError::NotAbsolute {
                    path: Self::path_in(session_dir),
                    field,
                    value: value.clone(),
                });
            }
        }
        Ok(())
    }

    /// Every lower of the session, topmost first: its layers, then its rootfs.
    pub fn lowers(&self) -> Vec<PathBuf> {
        let mut all = self.layers.clone();
        all.push(self.rootfs.clone());
        all
    }

    /// Seconds since the session was created.
    pub fn age(&self) -> u64 {
        now().saturating_sub(self.created)
    }

    /// True when the process that wrote the record is gone.
    pub(crate) fn is_dead(&self) -> bool {
        !Path::new(&format!("/proc/{}", self.pid)).exists()
    }

    /// True when the record says running but its launcher is gone (killed, crashed).
    pub fn is_orphaned(&self) -> bool {
        self.status == Status::Running && self.is_dead()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Record {
            id: SessionId("x".into()),
            rootfs: "/r".into(),
            upper: "/u".into(),
            work: "/w".into(),
            policy: Policy::Preserve,
            pid: u32::MAX - 1,
            status: Status::Running,
            fs: Backend::Fuse,
            created: 1,
            ended: None,
            exit_code: None,
            owner: 0,
            base: Some(crate::policy::conflict::Stamp { sec: 1, nsec: 2 }),
            command: vec!["sh".into(), "-c".into(), "true".into()],
            name: Some("job".into()),
            layers: vec!["/l".into()],
            entry: Some(Entry::of(
                &crate::config::SessionPlan::new("/r".into(), vec!["sh".into()], "/s".into()),
                7,
            )),
            unsynced_boot: Some("b".into()),
        };
        rec.save(dir.path()).unwrap();
        assert_eq!(Record::load(dir.path()).unwrap(), rec);
        assert!(rec.is_orphaned(), "no process has that pid");
        rec.check_paths(dir.path()).unwrap();
        let relative = Record {
            upper: ".".into(),
            ..rec.clone()
        };
        assert!(relative.check_paths(dir.path()).is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left");
        std::fs::write(Record::path_in(dir.path()), b"{").unwrap();
        assert!(
            Record::load(dir.path())
                .unwrap_err()
                .to_string()
                .contains("malformed")
        );
    }

    /// The JSON on disk is unchanged by the typed fields: a record as earlier versions wrote
    /// it (strings for id, policy and fs) loads, and saves back byte for byte.
    #[test]
    fn records_written_with_string_fields_load() {
        let old = r#"{
  "id": "0123456789ab",
  "rootfs": "/srv/alpine",
  "upper": "/var/lib/ovlrun/sessions/0123456789ab/upper",
  "work": "/var/lib/ovlrun/sessions/0123456789ab/work",
  "policy": "commit-atomic",
  "pid": 4242,
  "status": "preserved",
  "fs": "kernel",
  "created": 1700000000,
  "ended": 1700000060,
  "exit_code": 3,
  "owner": 1000
}
"#;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(Record::path_in(dir.path()), old).unwrap();
        let rec = Record::load(dir.path()).unwrap();
        assert_eq!(rec.id, SessionId("0123456789ab".into()));
        assert_eq!(rec.policy, Policy::CommitAtomic);
        assert_eq!(rec.fs, Backend::Kernel);
        assert_eq!(rec.status, Status::Preserved);
        rec.save(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(Record::path_in(dir.path())).unwrap(),
            old
        );
        for (policy, fs) in [("preserve", "fuse"), ("ask", "auto"), ("discard", "fuse")] {
            let text = old
                .replace("commit-atomic", policy)
                .replace("\"kernel\"", &format!("\"{fs}\""));
            std::fs::write(Record::path_in(dir.path()), &text).unwrap();
            let rec = Record::load(dir.path()).unwrap();
            assert_eq!((rec.policy.name(), rec.fs.name()), (policy, fs));
        }
        let unknown = old.replace("\"kernel\"", "\"btrfs\"");
        std::fs::write(Record::path_in(dir.path()), unknown).unwrap();
        assert!(
            Record::load(dir.path()).is_err(),
            "an unknown fs is refused"
        );
    }
}
