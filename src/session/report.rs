//! What a session tells its user, as values: the library never prints; the caller (the
//! `ovlrun` binary prints to stderr) implements [`Report`].

use std::fmt;
use std::path::{Path, PathBuf};

use super::StateError;
use crate::policy::commit::Recovery;
use crate::policy::{Policy, plan::Change};

/// Receives what a session has to say while it runs, and answers `--policy ask`.
pub trait Report {
    /// Something the user should know; its `Display` is the message, without the leading
    /// `ovlrun: `.
    fn note(&self, note: Note<'_>);

    /// A commit of `size` starts: the returned [`Progress`] is told of each step and dropped
    /// when the commit ends.
    fn commit_progress(&self, size: CommitSize) -> Box<dyn Progress + '_>;

    /// `--policy ask`: what to do with session `id`, whose `changes` are never empty.
    fn ask(&self, id: &str, changes: &[(Change, PathBuf)]) -> Policy;
}

/// The progress of one commit; dropped when the commit ends.
pub trait Progress {
    /// One more step of [`CommitSize::steps`] is done.
    fn step(&self);
}

/// How large a commit is.
#[derive(Clone, Copy, Debug)]
pub struct CommitSize {
    /// Operations in the plan.
    pub ops: usize,
    /// Progress steps the commit will report.
    pub steps: u64,
    /// Changes a user sees (added, changed, deleted paths).
    pub changes: usize,
}

/// A report that says nothing, shows no progress and answers `ask` by keeping the session.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Report for Silent {
    fn note(&self, _: Note<'_>) {}

    fn commit_progress(&self, _: CommitSize) -> Box<dyn Progress + '_> {
        Box::new(Silent)
    }

    fn ask(&self, _: &str, _: &[(Change, PathBuf)]) -> Policy {
        Policy::Preserve
    }
}

impl Progress for Silent {
    fn step(&self) {}
}

/// Something a session says that is not an error of its own.
#[derive(Debug)]
pub enum Note<'a> {
    /// An interrupted commit of `rootfs` was recovered before the session started.
    Recovered {
        /// The rootfs.
        rootfs: &'a Path,
        /// What the recovery did (never [`Recovery::Nothing`]).
        outcome: Recovery,
    },
    /// Session `id` is kept; its changes are in `upper`.
    Kept {
        /// The session.
        id: &'a str,
        /// Its name, which the commands to go on use, if it has one.
        name: Option<&'a str>,
        /// It stands on layers (`--layer`, `--rootfs A:B`): it can be exported, not committed.
        layered: bool,
        /// Its upper directory.
        upper: &'a Path,
    },
    /// A commit policy kept a run that ended with `code` instead of committing it.
    NotCommitted {
        /// The session.
        id: &'a str,
        /// Its upper directory.
        upper: &'a Path,
        /// The command's exit status.
        code: i32,
        /// The policy was `commit-atomic`.
        atomic: bool,
    },
    /// Session `id` could not be discarded and is kept.
    NotDiscarded {
        /// The session.
        id: &'a str,
        /// Why.
        error: &'a StateError,
    },
    /// Session `id` was committed but its directory could not be removed.
    NotRemoved {
        /// The session.
        id: &'a str,
        /// Why.
        error: &'a StateError,
    },
    /// `--wait`: the lock of `rootfs` is busy; waiting for it.
    Waiting {
        /// The rootfs.
        rootfs: &'a Path,
        /// The sessions of this state root that run on it or commit into it (others, of
        /// other state roots or users, are not seen).
        holders: &'a [String],
    },
    /// `--policy ask` or `preserve` found no changes: the session is discarded.
    NoChanges,
    /// A shared-network session does not get the host's `host` file (`/etc/resolv.conf`,
    /// `/etc/hosts`): the rootfs's own is in the way.
    HostFileNotShared {
        /// The host's file.
        host: &'a Path,
        /// What the rootfs has in its place.
        problem: &'a str,
    },
    /// What the launcher says that is no error: an id map narrower than a distribution tree
    /// needs, a terminal left out of raw mode, a setup step that fell back (a bound host
    /// `/proc`, no cgroup2 view, chroot instead of pivot_root).
    Launcher(&'a str),
    /// `--timeout` stopped the session: TERM at `after`, KILL `kill_after` later if need be.
    TimedOut {
        /// The `--timeout`.
        after: std::time::Duration,
        /// The `--timeout-kill`.
        kill_after: std::time::Duration,
    },
    /// `--memory`, `--pids-limit`, `--cpus` asked for, but the caller may not write cgroups:
    /// the session runs without them.
    LimitsNotApplied {
        /// Why (the cgroup that could not be made).
        why: &'a str,
    },
    /// The rootfs's owner has no id in the caller's user namespace.
    UnmappedOwner {
        /// The rootfs.
        rootfs: &'a Path,
        /// Its owner on the host.
        owner: u32,
    },
}

impl fmt::Display for Note<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::Recovered { rootfs, outcome } => write!(
                f,
                "recovered an interrupted commit of {}: {}",
                rootfs.display(),
                match outcome {
                    Recovery::RolledBack => "rolled back, the rootfs is as before it",
                    Recovery::Abandoned => {
                        "it was a plain commit, which keeps no journal: its staging is \
                         removed, and the rootfs may hold part of its changes; its session is \
                         kept, and committing it again finishes the commit"
                    }
                    _ => "completed",
                }
            ),
            Note::Kept {
                id,
                name,
                upper,
                layered,
            } => write!(
                f,
                "session {id} kept; its changes are in {upper}\n\
                 ovlrun: see them with `ovlrun diff {to}`, {go_on}, \
                 drop them with `ovlrun discard {to}`",
                upper = upper.display(),
                to = name.unwrap_or(id),
                go_on = if *layered {
                    format!(
                        "export them with `ovlrun export {} -o FILE`",
                        name.unwrap_or(id)
                    )
                } else {
                    format!("merge them with `ovlrun commit {}`", name.unwrap_or(id))
                },
            ),
            Note::NotCommitted {
                id,
                upper,
                code,
                atomic,
            } => write!(
                f,
                "the command {}, so session {id} was kept, not committed; its changes are in \
                 {upper}; commit them anyway with `ovlrun commit{atomic} {id}` (or run with \
                 --commit-on always), drop them with `ovlrun discard {id}`",
                match code {
                    129..=192 => format!("ended with status {code} (signal {})", code - 128),
                    c => format!("ended with status {c}"),
                },
                atomic = if *atomic { " --atomic" } else { "" },
                upper = upper.display()
            ),
            Note::NotDiscarded { id, error } => {
                write!(f, "cannot discard session {id}: {error}; it is kept")
            }
            Note::NotRemoved { id, error } => {
                write!(f, "committed, but cannot remove session {id}: {error}")
            }
            Note::Waiting { rootfs, holders } => write!(
                f,
                "waiting for the lock on {} held by {}",
                rootfs.display(),
                match holders {
                    [] => "another ovlrun (a session or a commit of another state root)".to_owned(),
                    [one] => format!("session {one}"),
                    many => format!("sessions {}", many.join(", ")),
                }
            ),
            Note::NoChanges => f.write_str("no changes; nothing kept"),
            Note::TimedOut { after, kill_after } => write!(
                f,
                "--timeout {after:?} reached: the session was stopped (TERM, then KILL after \
                 {kill_after:?})"
            ),
            Note::LimitsNotApplied { why } => write!(
                f,
                "note: --memory, --pids-limit and --cpus are not applied: {why} (cgroups need \
                 root, or a cgroup delegated to you)"
            ),
            Note::HostFileNotShared { host, problem } => write!(
                f,
                "{} in the rootfs {problem}: the session does not get the host's",
                host.display()
            ),
            Note::Launcher(note) => write!(f, "note: {note}"),
            Note::UnmappedOwner { rootfs, owner } => write!(
                f,
                "{} belongs to uid {owner}, which your user namespace does not map: its files \
                 show as nobody, and root in the session cannot open those only their owner \
                 may (dpkg's locks, 0600 files); fix: {}",
                rootfs.display(),
                crate::host::ids::UNMAPPED_TREE_FIX
            ),
        }
    }
}
