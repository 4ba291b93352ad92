//! Executing a [`Plan`]: merging an upper into its rootfs, plainly or crash-safe.
//!
//! Both ways stage every new item (files, symlinks, devices, hard links, new directories) in
//! a transaction directory on the rootfs's filesystem, then move entries with rename(2) only,
//! so a reader never sees a half-written file. `commit-atomic` adds a journal: the plan is
//! written once everything is staged (`prepared`), everything replaced or removed is kept as a
//! backup, and the state turns `committed` only after the last step. After a crash,
//! [`recover`] undoes a `prepared` transaction step by step in reverse (the rootfs is the old
//! tree again) or finishes a `committed` one (the new tree): byte for byte one or the other.
//!
//! Durability is paid per phase, not per file: one `syncfs` of the rootfs's filesystem after
//! staging (every staged item on disk before any rename can be), one after the renames
//! (before `committed`, and before a plain commit returns and the session's upper goes). The
//! undo needs no per-step record for that: which steps ran is read from the stage itself (an
//! item still in `new/` was not installed, one in `old/` was moved aside), so the renames of
//! a phase may reach the disk in any order and any prefix of them is undone alike.
//!
//! Nothing read back is trusted: the transaction lives where only the committing user can
//! write and is checked before use ([`super::txn`]), and every path of a plan is resolved
//! beneath the rootfs without following symlinks ([`super::beneath`]).
//!
//! `OVLRUN_FAULT_AFTER=N` kills the process with SIGKILL after N journal records, for the
//! crash tests.

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat, renameat, renameat2};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, fstatat, mkdirat, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, linkat, unlinkat};
use serde::{Deserialize, Serialize};

use super::beneath::{self, Beneath};
use super::names::Short;
use super::plan::{Meta, Op, Plan, meta_of};
use super::txn::{self, Stage, TxnDir, TxnError};
use crate::sys;
use crate::sys::write_atomic;

/// A commit that failed, and what it left: the rootfs unchanged (atomic, or nothing applied
/// yet) or partly merged (plain); the upper is kept either way.
#[derive(Debug, thiserror::Error)]
#[error(
    "commit into {}: cannot {step} {}{} ({left})",
    Short(.rootfs),
    Short(.path),
    super::names::too_long_note(.source)
)]
pub struct CommitError {
    /// The rootfs.
    pub rootfs: PathBuf,
    /// The step.
    pub step: &'static str,
    /// The path.
    pub path: PathBuf,
    /// What the failed commit left in the rootfs (boxed: errors stay small).
    pub left: Box<Left>,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// What a failed commit left in the rootfs, said as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Left {
    /// Nothing was applied, or all of it was undone: the rootfs is as before.
    #[default]
    Unchanged,
    /// A plain commit applied its first `applied` of `total` steps, and not the rest.
    Partly {
        /// Steps applied, in order.
        applied: usize,
        /// Steps planned.
        total: usize,
        /// The path of the first step not applied.
        next: PathBuf,
        /// Where its staging stays, when it could not be removed.
        staging: Option<PathBuf>,
    },
    /// A plain commit applied every step, but its filesystem could not be synced: a crash
    /// of the machine before it writes them back may still lose some.
    Unsynced,
    /// The undo of an atomic commit failed: the transaction is kept for recovery.
    Pending {
        /// The transaction's directory.
        txn: PathBuf,
    },
}

impl std::fmt::Display for Left {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Left::Unchanged => write!(f, "nothing was applied: the rootfs is as before"),
            Left::Partly {
                applied,
                total,
                next,
                staging,
            } => {
                write!(
                    f,
                    "the first {applied} of {total} steps were applied; {} and every later \
                     step were not, and committing the session again applies them",
                    Short(next)
                )?;
                if let Some(s) = staging {
                    write!(f, "; its staging {} could not be removed", s.display())?;
                }
                Ok(())
            }
            Left::Unsynced => write!(
                f,
                "every step was applied, but not yet synced to disk; the session is kept"
            ),
            Left::Pending { txn } => write!(
                f,
                "its undo failed too: the transaction {} is kept, and `ovlrun recover` \
                 finishes the undo",
                txn.display()
            ),
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: the journal record after which a commit stops as if the machine went down
    /// there (nothing undone, the transaction left for [`recover`]).
    pub(crate) static STOP_AFTER: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// The [`TxnPlan::version`] this build writes: every item (hard links and new directories
/// too) is staged before the first rename, and the undo reads what ran from the stage.
const TXN_VERSION: u32 = 2;

/// What a transaction records before it touches the rootfs.
#[derive(Debug, Serialize, Deserialize)]
struct TxnPlan {
    /// 0 (absent): written by an older build, which staged only files and made directories
    /// and hard links in place; its undo follows the journal's `begin` records.
    #[serde(default)]
    version: u32,
    ops: Vec<Op>,
    /// Version 0 only, per op: the rootfs had an entry at its path before.
    #[serde(default)]
    replaces: Vec<bool>,
    /// Existing rootfs directories the commit touches, with their metadata before it.
    #[serde(with = "super::plan::path_serde::pairs")]
    dirs: Vec<(PathBuf, Meta)>,
}

struct Txn<'a> {
    root: &'a Beneath,
    upper: &'a Path,
    anchor: TxnDir,
    stage: Stage,
    journal: Option<std::fs::File>,
    records: u64,
    fault_after: Option<u64>,
    step: &'a dyn Fn(),
    /// Ops applied so far, in order.
    applied: usize,
    /// Every item is staged: from here on an undo may read the stage.
    staged: bool,
}

impl Txn<'_> {
    fn err(
        &self,
        step: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> CommitError + '_ {
        let path = path.to_owned();
        move |source| CommitError {
            rootfs: self.root.path.clone(),
            step,
            path,
            left: Box::default(),
            source,
        }
    }

    /// Appends a journal record; the fault hook counts these. Not synced: the undo reads
    /// what ran from the stage, not from these (see the module docs); they log the progress
    /// and give the crash tests a point to fault at between every two steps.
    fn log(&mut self, line: &str) -> Result<(), CommitError> {
        if let Some(j) = &mut self.journal {
            j.write_all(format!("{line}\n").as_bytes())
                .map_err(|source| CommitError {
                    rootfs: self.root.path.clone(),
                    step: "write the journal",
                    path: self.anchor.path.join("journal"),
                    left: Box::default(),
                    source,
                })?;
            self.records += 1;
            if self.fault_after == Some(self.records) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::getpid(),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            #[cfg(test)]
            if STOP_AFTER.get() == Some(self.records) {
                return Err(self.err("stop (test) after", Path::new("a record"))(
                    std::io::Error::other("stopped"),
                ));
            }
        }
        Ok(())
    }

    fn set_state(&mut self, state: &str) -> Result<(), CommitError> {
        if self.journal.is_none() {
            return Ok(());
        }
        write_atomic(&self.anchor.via("state"), state.as_bytes())
            .map_err(self.err("write the state of", &self.anchor.path.clone()))?;
        self.log(&format!("state {state}"))
    }
}

fn txn_err(rootfs: &Path) -> impl FnOnce(TxnError) -> CommitError + '_ {
    move |e| CommitError {
        rootfs: rootfs.to_owned(),
        step: "prepare the transaction of",
        path: rootfs.to_owned(),
        left: Box::default(),
        source: std::io::Error::other(e),
    }
}

/// Whether `op` puts a staged item in place: an entry of the upper, another name of one, or
/// a new directory.
fn is_staged(op: &Op) -> bool {
    matches!(
        op,
        Op::Install { .. } | Op::Link { .. } | Op::MakeDir { existed: false, .. }
    )
}

/// The number of steps [`commit_with_progress`] reports for `plan`: one per staged item,
/// one per operation.
pub(crate) fn progress_steps(plan: &Plan) -> u64 {
    let staged = plan.ops.iter().filter(|op| is_staged(op)).count();
    u64::try_from(staged + plan.ops.len()).unwrap_or(u64::MAX)
}

/// Like [`commit`], calling `step` after each of the [`progress_steps`] steps (for a
/// progress bar).
///
/// # Errors
/// As [`commit`].
pub(crate) fn commit_with_progress(
    rootfs: &Path,
    upper: &Path,
    state: &Path,
    plan: &Plan,
    atomic: bool,
    step: &dyn Fn(),
) -> Result<(), CommitError> {
    // Nothing is touched before every path of the plan is known to stay beneath the rootfs.
    for op in &plan.ops {
        let paths = match op {
            Op::Link { path, target } => vec![path.as_path(), target.as_path()],
            _ => vec![op.path()],
        };
        for p in paths {
            beneath::check(p).map_err(|e| CommitError {
                rootfs: rootfs.to_owned(),
                step: "plan",
                path: p.to_owned(),
                left: Box::default(),
                source: std::io::Error::other(e),
            })?;
        }
    }
    let root = Beneath::open(rootfs).map_err(|source| CommitError {
        rootfs: rootfs.to_owned(),
        step: "open",
        path: rootfs.to_owned(),
        left: Box::default(),
        source,
    })?;
    // Before a stage inside the rootfs changes the root's times.
    let txn_plan = TxnPlan {
        version: TXN_VERSION,
        ops: plan.ops.clone(),
        replaces: Vec::new(),
        dirs: touched_dirs(&root, &plan.ops),
    };
    let anchor = txn::create(rootfs, state).map_err(txn_err(rootfs))?;
    let stage = match txn::create_stage(&anchor, root.fd(), rootfs) {
        Ok(stage) => stage,
        Err(e) => {
            let _ = txn::remove(anchor, None, root.fd());
            return Err(txn_err(rootfs)(e));
        }
    };
    let fault_after = std::env::var("OVLRUN_FAULT_AFTER")
        .ok()
        .and_then(|n| n.parse().ok());
    let mut txn = Txn {
        root: &root,
        upper,
        anchor,
        stage,
        journal: None,
        records: 0,
        fault_after,
        step,
        applied: 0,
        staged: false,
    };
    if atomic {
        let path = txn.anchor.via("journal");
        let shown = txn.anchor.path.join("journal");
        txn.journal = Some(std::fs::File::create(&path).map_err(txn.err("create", &shown))?);
    }
    let result = run(&mut txn, &txn_plan);
    #[cfg(test)]
    if result.is_err() && STOP_AFTER.get() == Some(txn.records) {
        return result;
    }
    let inside = txn.stage.inside.is_some();
    match result {
        Ok(()) => {
            let Txn { anchor, stage, .. } = txn;
            let _ = txn::remove(anchor, Some(stage), root.fd());
            if inside {
                restore_root_meta(&root, final_root_meta(&txn_plan));
            }
            Ok(())
        }
        Err(mut e) if atomic => {
            // Undone now (the steps begun: the applied ones and the one that failed); if the
            // undo fails, the transaction stays for `recover`.
            let begun = if txn.staged {
                (0..=txn.applied).collect()
            } else {
                Vec::new()
            };
            if rollback(&root, &txn.stage, &txn_plan, &begun).is_ok() {
                let Txn { anchor, stage, .. } = txn;
                let _ = txn::remove(anchor, Some(stage), root.fd());
                if inside {
                    restore_root_meta(&root, first_root_meta(&txn_plan));
                }
            } else {
                *e.left = Left::Pending {
                    txn: txn.anchor.path.clone(),
                };
            }
            Err(e)
        }
        Err(mut e) => {
            *e.left = abandon_plain(txn, &txn_plan);
            if inside && *e.left == Left::Unchanged {
                restore_root_meta(&root, first_root_meta(&txn_plan));
            }
            Err(e)
        }
    }
}

/// After a plain commit failed at op `txn.applied`: puts back what that op had moved aside
/// and not replaced, removes the staging (a plain commit has nothing to recover), and says
/// what the rootfs now holds.
fn abandon_plain(txn: Txn<'_>, plan: &TxnPlan) -> Left {
    let failed = txn.applied;
    if let Some(op) = plan.ops.get(failed) {
        let rel = op.path();
        let item = failed.to_string();
        if let Ok((parent, name)) = txn.root.parent(rel) {
            let moved = fstatat(
                txn.stage.old.fd(),
                item.as_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            );
            let empty = matches!(
                fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW),
                Err(Errno::ENOENT)
            );
            if moved.is_ok() && empty {
                let _ = renameat(txn.stage.old.fd(), item.as_str(), &parent, name);
            }
        }
    }
    let Txn {
        root,
        anchor,
        stage,
        ..
    } = txn;
    let shown = anchor.path.clone();
    let staging = txn::remove(anchor, Some(stage), root.fd())
        .err()
        .map(|_| shown);
    match plan.ops.get(failed) {
        Some(op) if failed > 0 => Left::Partly {
            applied: failed,
            total: plan.ops.len(),
            next: root.show(op.path()),
            staging,
        },
        None if failed > 0 => Left::Unsynced,
        _ => Left::Unchanged,
    }
}

fn run(txn: &mut Txn<'_>, plan: &TxnPlan) -> Result<(), CommitError> {
    stage(txn, plan)?;
    // Once for the whole stage, instead of an fsync per item: every staged item's data and
    // metadata are on disk before the first rename can reach the rootfs (a crash then shows
    // each path old or new, never a torn file), and before the plan recovery trusts exists.
    sys_syncfs(txn.stage.dir.fd())
        .map_err(txn.err("sync the stage", &txn.stage.dir.path.clone()))?;
    txn.staged = true;
    if txn.journal.is_some() {
        let shown = txn.anchor.path.join("plan.json");
        let json = serde_json::to_vec(plan)
            .map_err(|e| e.into())
            .map_err(txn.err("write", &shown))?;
        write_atomic(&txn.anchor.via("plan.json"), &json).map_err(txn.err("write", &shown))?;
    }
    txn.set_state("prepared")?;
    let mut parents = Parents::default();
    for (i, op) in plan.ops.iter().enumerate() {
        txn.log(&format!("begin {i}"))?;
        apply(txn, &mut parents, i, op)?;
        txn.applied += 1;
        (txn.step)();
    }
    // Once for every rename and metadata change of the apply phase: all of it is on disk
    // before the state says `committed` (recovery would otherwise finish a commit the disk
    // holds only part of) and before a plain commit returns (its caller then removes the
    // session's upper, perhaps on another filesystem, whose removal could reach the disk
    // first).
    sys_syncfs(txn.stage.dir.fd()).map_err(txn.err("sync", &txn.root.path.clone()))?;
    txn.set_state("committed")
}

fn sys_syncfs(fd: &OwnedFd) -> std::io::Result<()> {
    nix::unistd::syncfs(fd).map_err(Into::into)
}

/// Stages every item the plan puts in place, in `new/<op index>`: a copy of the upper's entry
/// for an install, another name of the staged copy for a hard link, an empty directory with
/// its owner and xattrs for a new directory (its mode and times come at its `DirDone`).
fn stage(txn: &mut Txn<'_>, plan: &TxnPlan) -> Result<(), CommitError> {
    // The upper is read beneath its fd, in steps, so entries deeper than PATH_MAX stage too.
    let upper = Beneath::open(txn.upper).map_err(txn.err("open", txn.upper))?;
    let mut parents = Parents::default();
    let mut staged_at: std::collections::HashMap<&Path, usize> = std::collections::HashMap::new();
    for (i, op) in plan.ops.iter().enumerate() {
        let item = i.to_string();
        match op {
            Op::Install { path } => {
                let src = txn.upper.join(path);
                parents
                    .get(&upper, path)
                    .and_then(|(dir, name)| copy_entry(dir, name, txn.stage.new.fd(), &item))
                    .map_err(txn.err("stage", &src))?;
                staged_at.insert(path, i);
            }
            Op::Link { path, target } => {
                let shown = txn.upper.join(path);
                let first = staged_at.get(target.as_path()).ok_or_else(|| {
                    txn.err("stage", &shown)(std::io::Error::other(format!(
                        "its other name {} is not installed before it",
                        target.display()
                    )))
                })?;
                let new = txn.stage.new.fd();
                linkat(
                    new,
                    first.to_string().as_str(),
                    new,
                    item.as_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| txn.err("stage", &shown)(e.into()))?;
            }
            Op::MakeDir {
                path,
                meta,
                existed: false,
            } => {
                let shown = txn.root.show(path);
                mkdirat(
                    txn.stage.new.fd(),
                    item.as_str(),
                    Mode::from_bits_truncate(0o777),
                )
                .map_err(|e| txn.err("stage directory", &shown)(e.into()))?;
                let via = beneath::entry_path(txn.stage.new.fd(), OsStr::new(&item));
                set_owner_xattrs(&via, meta).map_err(txn.err("stage directory", &shown))?;
            }
            _ => continue,
        }
        (txn.step)();
    }
    Ok(())
}

/// The directory the last op resolved, reused while the next ops name the same parent (a
/// run of entries of one directory resolves it once). Forgotten before any op that moves a
/// directory away, so a path never reaches a directory that is no longer there.
#[derive(Default)]
struct Parents {
    last: Option<(PathBuf, OwnedFd)>,
}

impl Parents {
    /// The directory holding `rel`'s last component, beneath `root`, and that component.
    fn get<'p>(&mut self, root: &Beneath, rel: &'p Path) -> std::io::Result<(&OwnedFd, &'p OsStr)> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if !matches!(&self.last, Some((p, _)) if p == parent) {
            self.last = None;
            let (fd, _) = root.parent(rel)?;
            self.last = Some((parent.to_owned(), fd));
        }
        beneath::check(rel).map_err(|_| std::io::Error::from(Errno::EINVAL))?;
        match (&self.last, rel.file_name()) {
            (Some((_, fd)), Some(name)) => Ok((fd, name)),
            _ => Err(Errno::EINVAL.into()),
        }
    }

    fn forget(&mut self) {
        self.last = None;
    }
}

fn apply(txn: &mut Txn<'_>, parents: &mut Parents, i: usize, op: &Op) -> Result<(), CommitError> {
    let rel = op.path();
    let shown = txn.root.show(rel);
    let item = i.to_string();
    match op {
        Op::Remove(_) => {
            // It may move a directory that a cached parent is, or is beneath.
            parents.forget();
            move_out(txn, parents, i, rel)
        }
        Op::MakeDir { existed: false, .. } => {
            parents.forget();
            let (parent, name) = parents
                .get(txn.root, rel)
                .map_err(txn.err("create directory", &shown))?;
            renameat2(
                txn.stage.new.fd(),
                item.as_str(),
                parent,
                name,
                RenameFlags::RENAME_NOREPLACE,
            )
            .map_err(|e| txn.err("create directory", &shown)(e.into()))
        }
        Op::MakeDir { existed: true, .. } => Ok(()),
        Op::Install { .. } | Op::Link { .. } => {
            // A plain commit keeps no backup: the rename replaces the old entry in one step
            // (old or new at the path, never neither), and frees it.
            if txn.journal.is_some() {
                move_out(txn, parents, i, rel)?;
            }
            let (parent, name) = parents
                .get(txn.root, rel)
                .map_err(txn.err("install", &shown))?;
            renameat(txn.stage.new.fd(), item.as_str(), parent, name)
                .map_err(|e| txn.err("install", &shown)(e.into()))
        }
        Op::DirDone { meta, .. } => {
            let dir = txn
                .root
                .dir(rel)
                .map_err(txn.err("set metadata of", &shown))?;
            let via = beneath::fd_path(&dir);
            set_owner_xattrs(&via, meta).map_err(txn.err("set metadata of", &shown))?;
            set_mode_times(&via, meta, false).map_err(txn.err("set metadata of", &shown))
        }
    }
}

/// Moves the rootfs entry at `rel` (if any) into the backups.
fn move_out(txn: &Txn<'_>, parents: &mut Parents, i: usize, rel: &Path) -> Result<(), CommitError> {
    let shown = txn.root.show(rel);
    let (parent, name) = parents
        .get(txn.root, rel)
        .map_err(txn.err("move aside", &shown))?;
    match renameat(parent, name, txn.stage.old.fd(), i.to_string().as_str()) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(txn.err("move aside", &shown)(e.into())),
    }
}

/// The root's metadata a plan ends with, if it sets it.
fn final_root_meta(plan: &TxnPlan) -> Option<&Meta> {
    plan.ops.iter().rev().find_map(|op| match op {
        Op::DirDone { path, meta } if path.as_os_str().is_empty() => Some(meta),
        _ => None,
    })
}

/// The root's metadata before a plan.
fn first_root_meta(plan: &TxnPlan) -> Option<&Meta> {
    plan.dirs
        .iter()
        .find(|(p, _)| p.as_os_str().is_empty())
        .map(|(_, m)| m)
}

/// A stage inside the rootfs changes the root's times when it goes: set them back to what
/// the tree should show.
fn restore_root_meta(root: &Beneath, meta: Option<&Meta>) {
    if let (Some(meta), Ok(dir)) = (meta, root.dir(Path::new(""))) {
        let _ = set_mode_times(&beneath::fd_path(&dir), meta, false);
    }
}

/// Existing rootfs directories a plan changes (parents of every op, and dirs it updates),
/// with their metadata now, so an undo can give them back their times.
fn touched_dirs(root: &Beneath, ops: &[Op]) -> Vec<(PathBuf, Meta)> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut seen: std::collections::HashSet<&Path> = std::collections::HashSet::new();
    for op in ops {
        let p = op.path();
        for anc in p.ancestors().skip(usize::from(!matches!(
            op,
            Op::MakeDir { existed: true, .. }
        ))) {
            if seen.insert(anc) {
                dirs.push(anc.to_owned());
            }
        }
    }
    dirs.into_iter()
        .filter_map(|d| {
            let fd = root.dir(&d).ok()?;
            let via = beneath::fd_path(&fd);
            let md = via.symlink_metadata().ok()?;
            meta_of(&via, &md).ok().map(|m| (d, m))
        })
        .collect()
}

/// The ops a journal says were begun.
fn read_begun(anchor: &TxnDir) -> Vec<usize> {
    std::fs::read_to_string(anchor.via("journal"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("begin ")?.parse().ok())
        .collect()
}

/// A recovery that could not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The transaction directory is not the caller's (or names a stage that is not one).
    #[error(transparent)]
    Txn(#[from] TxnError),
    /// The plan holds a path that is not plain and relative: nothing was done.
    #[error("transaction {}: {source}; nothing was done", .txn.display())]
    UnsafePath {
        /// The transaction's anchor.
        txn: PathBuf,
        /// The path.
        #[source]
        source: beneath::UnsafePath,
    },
    /// A step of the undo failed; the transaction is kept for a retry.
    #[error("cannot {step} {}", .path.display())]
    Io {
        /// What was being done.
        step: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn rec_err(step: &'static str, path: PathBuf) -> impl FnOnce(std::io::Error) -> RecoverError {
    move |source| RecoverError::Io { step, path, source }
}

/// Undoes the `begun` ops of a `prepared` transaction whose items are in `stage`, last first.
/// Each undo is a no-op for an op that had not run, and may run again after a crash of its
/// own: it reads from the stage what the op did (version 2), and moves the staged entry back
/// into the stage rather than deleting it.
fn rollback(
    root: &Beneath,
    stage: &Stage,
    plan: &TxnPlan,
    begun: &[usize],
) -> Result<(), RecoverError> {
    if plan.version >= TXN_VERSION {
        for &i in begun.iter().rev() {
            if let Some(op) = plan.ops.get(i) {
                undo(root, stage, i, op)?;
            }
        }
        return restore_dirs(root, plan);
    }
    for &i in begun.iter().rev() {
        let Some(op) = plan.ops.get(i) else { continue };
        let rel = op.path();
        let shown = root.show(rel);
        let item = i.to_string();
        let in_stage =
            |dir: &TxnDir| fstatat(dir.fd(), item.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW).is_ok();
        let replaced = plan.replaces.get(i).copied().unwrap_or(false);
        match op {
            Op::MakeDir { existed: false, .. } => {
                remove_beneath(root, rel).map_err(rec_err("remove", shown))?;
            }
            Op::Remove(_) | Op::Install { .. } | Op::Link { .. } => {
                let ours_in_place = match op {
                    Op::Remove(_) => false,
                    // Installed when the staged item has left `new` and the original (if
                    // any) has left the rootfs.
                    _ => !in_stage(&stage.new) && (!replaced || in_stage(&stage.old)),
                };
                if ours_in_place {
                    remove_beneath(root, rel).map_err(rec_err("remove", shown.clone()))?;
                }
                if in_stage(&stage.old) {
                    let (parent, name) = root
                        .parent(rel)
                        .map_err(rec_err("restore", shown.clone()))?;
                    renameat(stage.old.fd(), item.as_str(), &parent, name)
                        .map_err(|e| rec_err("restore", shown)(e.into()))?;
                }
            }
            Op::MakeDir { existed: true, .. } | Op::DirDone { .. } => {}
        }
    }
    restore_dirs(root, plan)
}

/// Undoes op `i` of a version-2 transaction, if it ran: a staged item no longer in `new/` is
/// the entry at its path (nothing but this op puts it there, and the later ops on that path,
/// undone first, took theirs away), so it goes back into `new/`; a backup in `old/` goes back
/// to its path.
fn undo(root: &Beneath, stage: &Stage, i: usize, op: &Op) -> Result<(), RecoverError> {
    let rel = op.path();
    let shown = root.show(rel);
    let item = i.to_string();
    let in_stage =
        |dir: &TxnDir| fstatat(dir.fd(), item.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW).is_ok();
    if is_staged(op) && !in_stage(&stage.new) {
        let (parent, name) = root.parent(rel).map_err(rec_err("remove", shown.clone()))?;
        match renameat(&parent, name, stage.new.fd(), item.as_str()) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(rec_err("remove", shown)(e.into())),
        }
    }
    if (matches!(op, Op::Remove(_)) || is_staged(op)) && in_stage(&stage.old) {
        let (parent, name) = root
            .parent(rel)
            .map_err(rec_err("restore", shown.clone()))?;
        renameat(stage.old.fd(), item.as_str(), &parent, name)
            .map_err(|e| rec_err("restore", shown)(e.into()))?;
    }
    Ok(())
}

/// Gives the existing directories a plan touched their metadata from before it.
fn restore_dirs(root: &Beneath, plan: &TxnPlan) -> Result<(), RecoverError> {
    for (path, meta) in &plan.dirs {
        let shown = root.show(path);
        let dir = root
            .dir(path)
            .map_err(rec_err("restore metadata of", shown.clone()))?;
        let via = beneath::fd_path(&dir);
        set_owner_xattrs(&via, meta).map_err(rec_err("restore metadata of", shown.clone()))?;
        set_mode_times(&via, meta, false).map_err(rec_err("restore metadata of", shown))?;
    }
    Ok(())
}

/// Removes `rel` beneath the rootfs, whatever it is (a whole tree for a directory).
fn remove_beneath(root: &Beneath, rel: &Path) -> std::io::Result<()> {
    let (parent, name) = root.parent(rel)?;
    let st = match fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        // Reached through the parent's fd; std's remove_dir_all never follows a symlink below.
        std::fs::remove_dir_all(beneath::entry_path(&parent, name))
    } else {
        unlinkat(&parent, name, UnlinkatFlags::NoRemoveDir).map_err(Into::into)
    }
}

/// What recovering an interrupted commit found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// No interrupted commit.
    Nothing,
    /// An interrupted commit was undone: the rootfs is the old tree.
    RolledBack,
    /// A commit had completed its last step: its cleanup was finished (the new tree).
    Completed,
    /// A plain commit had stopped (killed, or its cleanup failed): its staging was removed.
    /// It keeps no journal, so the rootfs may hold any part of its changes.
    Abandoned,
}

/// Whether anything sits where a transaction of `rootfs` would be (trusted or not): a cheap
/// look before taking the lock exclusively to [`recover`].
pub(crate) fn pending(rootfs: &Path, state: &Path) -> bool {
    txn::present(rootfs, state)
}

/// Finishes or undoes an interrupted commit of `rootfs` (whose transaction may be in the
/// state root `state`). Call with the rootfs locked exclusively.
///
/// Only a transaction directory the caller made is used ([`txn`]), and every path of its
/// plan is checked before anything is done and resolved beneath the rootfs.
///
/// # Errors
/// [`RecoverError::Txn`] for a transaction that is not the caller's,
/// [`RecoverError::UnsafePath`] for a plan that leaves the rootfs (nothing is done for
/// either), [`RecoverError::Io`] when the undo fails (the transaction is then kept for a
/// retry).
pub(crate) fn recover(rootfs: &Path, state: &Path) -> Result<Recovery, RecoverError> {
    let Some(anchor) = txn::find(rootfs, state)? else {
        return Ok(Recovery::Nothing);
    };
    let root = Beneath::open(rootfs).map_err(rec_err("open", rootfs.to_owned()))?;
    let stage = txn::open_stage(&anchor, root.fd(), rootfs)?;
    let state_text = std::fs::read_to_string(anchor.via("state")).unwrap_or_default();
    let plan: Option<TxnPlan> = match std::fs::read(anchor.via("plan.json")) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
            rec_err("read", anchor.path.join("plan.json"))(std::io::Error::other(e))
        })?),
        // Crashed while staging: nothing in the rootfs was touched.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(rec_err("read", anchor.path.join("plan.json"))(e)),
    };
    if let Some(plan) = &plan {
        plan.check().map_err(|source| RecoverError::UnsafePath {
            txn: anchor.path.clone(),
            source,
        })?;
    }
    // Only an atomic commit writes a journal, from before its first change.
    let journaled = std::fs::symlink_metadata(anchor.via("journal")).is_ok();
    let outcome = if state_text.trim() == "committed" {
        Recovery::Completed
    } else if !journaled && plan.is_none() {
        Recovery::Abandoned
    } else {
        if let (Some(plan), Some(stage)) = (&plan, &stage) {
            // A version-2 plan exists only once everything is staged, and its journal is not
            // synced: every op may have run (those that did not are left as they are).
            let begun = if plan.version >= TXN_VERSION {
                (0..plan.ops.len()).collect()
            } else {
                read_begun(&anchor)
            };
            rollback(&root, stage, plan, &begun)?;
        }
        Recovery::RolledBack
    };
    let inside = stage.as_ref().is_some_and(|s| s.inside.is_some());
    txn::remove(anchor, stage, root.fd())?;
    if let (true, Some(plan)) = (inside, &plan) {
        restore_root_meta(
            &root,
            match outcome {
                Recovery::Completed => final_root_meta(plan),
                _ => first_root_meta(plan),
            },
        );
    }
    Ok(outcome)
}

impl TxnPlan {
    /// Every path is plain and relative.
    fn check(&self) -> Result<(), beneath::UnsafePath> {
        for op in &self.ops {
            beneath::check(op.path())?;
            if let Op::Link { target, .. } = op {
                beneath::check(target)?;
            }
        }
        for (p, _) in &self.dirs {
            beneath::check(p)?;
        }
        Ok(())
    }
}

/// Gives directory `dst` the mode, owner (where allowed), user xattrs and times of `src`.
///
/// # Errors
/// Any I/O error.
pub(crate) fn copy_dir_meta(src: &Path, dst: &Path) -> std::io::Result<()> {
    let md = src.symlink_metadata()?;
    let meta = meta_of(src, &md).map_err(|e| std::io::Error::other(e.to_string()))?;
    set_owner_xattrs(dst, &meta)?;
    set_mode_times(dst, &meta, false)
}

/// Copies entry `name` of upper directory `dir` to `item` of directory `dst` (a new name),
/// with its metadata; symlinks as symlinks, a file's data inside the kernel (shared blocks
/// where the filesystem can, holes kept). Not synced: the stage is synced as a whole.
fn copy_entry(dir: &OwnedFd, name: &OsStr, dst: &OwnedFd, item: &str) -> std::io::Result<()> {
    let src = beneath::entry_path(dir, name);
    let out = beneath::entry_path(dst, OsStr::new(item));
    let md = src.symlink_metadata()?;
    let ft = md.file_type();
    if ft.is_file() {
        let flags = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let from = openat(dir, name, flags | OFlag::O_RDONLY, Mode::empty())?;
        let to = openat(
            dst,
            item,
            flags | OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            Mode::from_bits_truncate(0o600),
        )?;
        sys::copy::copy_data(&from, &to, i64::try_from(md.len()).unwrap_or(i64::MAX))?;
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(&src)?, &out)?;
    } else {
        let kind = SFlag::from_bits_truncate(md.mode() & libc::S_IFMT);
        mknod(
            &out,
            kind,
            Mode::from_bits_truncate(md.mode() & 0o7777),
            md.rdev(),
        )?;
    }
    let meta = meta_of(&src, &md).map_err(|e| std::io::Error::other(e.to_string()))?;
    set_owner_xattrs(&out, &meta)?;
    set_mode_times(&out, &meta, ft.is_symlink())
}

/// Owner (when the committer may) and xattrs.
fn set_owner_xattrs(path: &Path, meta: &Meta) -> std::io::Result<()> {
    match nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(()) | Err(nix::errno::Errno::EPERM | nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(e.into()),
    }
    for (name, value) in &meta.xattrs {
        match sys::xattr::set(path, OsStr::from_bytes(name), value, 0) {
            Ok(()) | Err(Errno::EPERM | Errno::EOPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // An existing directory keeps xattrs the upper's copy no longer has (the session removed
    // them), and an undo must take off what the commit added: both would differ from `meta`.
    let present = match sys::xattr::list(path) {
        Ok(names) => names,
        Err(Errno::EOPNOTSUPP) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for name in present {
        let wanted = meta
            .xattrs
            .iter()
            .any(|(n, _)| n.as_slice() == name.as_bytes());
        if wanted || crate::layers::format::is_private_xattr(&name) {
            continue;
        }
        match sys::xattr::remove(path, &name) {
            Ok(()) | Err(Errno::EPERM | Errno::EACCES | Errno::ENODATA | Errno::EOPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Mode (after chown, which clears set-ID bits) and times, last.
fn set_mode_times(path: &Path, meta: &Meta, symlink: bool) -> std::io::Result<()> {
    if !symlink {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode))?;
    }
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::new(meta.atime.0, meta.atime.1),
        &TimeSpec::new(meta.mtime.0, meta.mtime.1),
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}
