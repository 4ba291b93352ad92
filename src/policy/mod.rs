//! What happens to a session's changes: the [`Policy`], the diff, and merging into the
//! rootfs (plain or crash-safe). Reads uppers in the format `layers` writes, through
//! its shared vocabulary (`layers::format`).

pub(crate) mod at;
pub(crate) mod beneath;
pub(crate) mod commit;
#[cfg(test)]
mod commit_props;
pub(crate) mod conflict;
pub(crate) mod export;
pub(crate) mod lower;
pub(crate) mod names;
pub(crate) mod plan;
pub(crate) mod txn;

pub use beneath::UnsafePath;
pub use commit::{CommitError, Left, RecoverError, Recovery};
pub use conflict::{Conflict, Why};
pub use export::{ExportError, export};
pub use names::{json_fields, quote};
pub use plan::{Change, Plan, PlanError, plan as diff};
pub use txn::TxnError;

/// What to do with a session's changes when its command exits. Stored in `session.json` by
/// its [`Policy::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Keep the upper; it can be committed or discarded later.
    Preserve,
    /// Throw the changes away.
    Discard,
    /// Merge them into the rootfs.
    Commit,
    /// Merge them into the rootfs, journaled: after a crash the rootfs is the old tree or
    /// the new one.
    CommitAtomic,
    /// Ask on the terminal, after showing the diff summary (discard when there is none).
    Ask,
}

impl Policy {
    /// The policy's name as typed.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Preserve => "preserve",
            Policy::Discard => "discard",
            Policy::Commit => "commit",
            Policy::CommitAtomic => "commit-atomic",
            Policy::Ask => "ask",
        }
    }

    /// Parses a policy name.
    pub fn parse(name: &str) -> Option<Policy> {
        [
            Policy::Preserve,
            Policy::Discard,
            Policy::Commit,
            Policy::CommitAtomic,
            Policy::Ask,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }
}

/// How a commit merges an upper into its rootfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMode {
    /// In place, step by step: a crash leaves a rootfs between the old tree and the new one.
    Plain,
    /// Journaled: after a crash the rootfs is the old tree or the new one.
    Atomic,
}

impl Policy {
    /// How this policy commits; `None` for the policies that do not.
    pub fn commit_mode(self) -> Option<CommitMode> {
        match self {
            Policy::Commit => Some(CommitMode::Plain),
            Policy::CommitAtomic => Some(CommitMode::Atomic),
            Policy::Preserve | Policy::Discard | Policy::Ask => None,
        }
    }
}

/// Which runs the commit policies commit (`--commit-on`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CommitOn {
    /// Only a command that exited 0; any other run is kept as a session.
    #[default]
    Success,
    /// Every run, whatever its exit status (a killed command's half-written files too).
    Always,
}

impl CommitOn {
    /// Whether a run that ended with exit status `code` is committed.
    pub fn commits(self, code: i32) -> bool {
        self == CommitOn::Always || code == 0
    }
}
