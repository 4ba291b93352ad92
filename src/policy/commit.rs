//! Executing a [`Plan`]: merging an upper into its rootfs, plainly or crash-safe.
//!
//! Both ways stage every new item in a transaction directory on the rootfs's filesystem,
//! then move entries with rename(2) only, so a reader never sees a half-written file.
//! `commit-atomic` adds a journal: the plan and the staged items are written first
//! (`prepared`), each step is logged before it runs, everything replaced or removed is kept
//! as a backup, and the state turns `committed` only after the last step. After a crash,
//! [`recover`] undoes a `prepared` transaction step by step in reverse (the rootfs is the old
//! tree again) or finishes a `committed` one (the new tree): byte for byte one or the other.
//!
//! `OVLRUN_FAULT_AFTER=N` kills the process with SIGKILL after N journal records, for the
//! crash tests.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};

use super::plan::{Meta, Op, Plan, meta_of};
use crate::session::record::write_atomic;
use crate::sys;

/// A commit that failed. The rootfs is unchanged (atomic) or partly merged (plain); the
/// upper is kept either way.
#[derive(Debug, thiserror::Error)]
#[error("commit into {}: cannot {step} {}", .rootfs.display(), .path.display())]
pub struct CommitError {
    /// The rootfs.
    pub rootfs: PathBuf,
    /// The step.
    pub step: &'static str,
    /// The path.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// What a transaction records before it touches the rootfs.
#[derive(Debug, Serialize, Deserialize)]
struct TxnPlan {
    ops: Vec<Op>,
    /// Per op: the rootfs had an entry at its path before (what an undo puts back).
    replaces: Vec<bool>,
    /// Existing rootfs directories the commit touches, with their metadata before it.
    dirs: Vec<(PathBuf, Meta)>,
}

/// The transaction directory of `rootfs`: beside it when on the same filesystem (renames
/// must not cross filesystems), else inside it.
pub fn txn_dir(rootfs: &Path) -> PathBuf {
    let inside = rootfs.join(".ovlrun-txn");
    if inside.exists() {
        return inside; // an interrupted transaction of the fallback kind
    }
    let name = rootfs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(parent) = rootfs.parent() {
        let beside = parent.join(format!(".{name}.ovlrun-txn"));
        let same_fs = match (std::fs::metadata(rootfs), std::fs::metadata(parent)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev(),
            _ => false,
        };
        let writable = nix::unistd::access(parent, nix::unistd::AccessFlags::W_OK).is_ok();
        if !name.is_empty() && (beside.exists() || (same_fs && writable)) {
            return beside;
        }
    }
    inside
}

struct Txn<'a> {
    rootfs: &'a Path,
    upper: &'a Path,
    dir: PathBuf,
    journal: Option<std::fs::File>,
    records: u64,
    fault_after: Option<u64>,
    step: &'a dyn Fn(),
}

impl Txn<'_> {
    fn err(
        &self,
        step: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> CommitError + '_ {
        let path = path.to_owned();
        move |source| CommitError {
            rootfs: self.rootfs.to_owned(),
            step,
            path,
            source,
        }
    }

    fn new_item(&self, i: usize) -> PathBuf {
        self.dir.join("new").join(i.to_string())
    }

    fn old_item(&self, i: usize) -> PathBuf {
        self.dir.join("old").join(i.to_string())
    }

    /// Appends a journal record and makes it durable; the fault hook counts these.
    fn log(&mut self, line: &str) -> Result<(), CommitError> {
        if let Some(j) = &mut self.journal {
            let path = self.dir.join("journal");
            j.write_all(format!("{line}\n").as_bytes())
                .and_then(|()| j.sync_data())
                .map_err(|source| CommitError {
                    rootfs: self.rootfs.to_owned(),
                    step: "write the journal",
                    path,
                    source,
                })?;
            self.records += 1;
            if self.fault_after == Some(self.records) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::getpid(),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        Ok(())
    }

    fn set_state(&mut self, state: &str) -> Result<(), CommitError> {
        if self.journal.is_none() {
            return Ok(());
        }
        let path = self.dir.join("state");
        write_atomic(&path, state.as_bytes()).map_err(self.err("write the state of", &path))?;
        self.log(&format!("state {state}"))
    }
}

/// Merges `upper` into `rootfs` following `plan`; `atomic` selects `commit-atomic`.
///
/// # Errors
/// [`CommitError`] naming the step and path. An atomic commit that fails is rolled back.
pub fn commit(rootfs: &Path, upper: &Path, plan: &Plan, atomic: bool) -> Result<(), CommitError> {
    commit_with_progress(rootfs, upper, plan, atomic, &|| {})
}

/// The number of steps [`commit_with_progress`] reports for `plan`: one per staged item,
/// one per operation.
pub fn progress_steps(plan: &Plan) -> u64 {
    let staged = plan
        .ops
        .iter()
        .filter(|op| matches!(op, Op::Install { .. }))
        .count();
    u64::try_from(staged + plan.ops.len()).unwrap_or(u64::MAX)
}

/// Like [`commit`], calling `step` after each of the [`progress_steps`] steps (for a
/// progress bar).
///
/// # Errors
/// As [`commit`].
pub fn commit_with_progress(
    rootfs: &Path,
    upper: &Path,
    plan: &Plan,
    atomic: bool,
    step: &dyn Fn(),
) -> Result<(), CommitError> {
    let dir = txn_dir(rootfs);
    let fault_after = std::env::var("OVLRUN_FAULT_AFTER")
        .ok()
        .and_then(|n| n.parse().ok());
    let mut txn = Txn {
        rootfs,
        upper,
        dir,
        journal: None,
        records: 0,
        fault_after,
        step,
    };
    let _ = std::fs::remove_dir_all(&txn.dir);
    for sub in ["new", "old"] {
        let d = txn.dir.join(sub);
        std::fs::create_dir_all(&d).map_err(txn.err("create", &d))?;
    }
    if atomic {
        let path = txn.dir.join("journal");
        txn.journal = Some(std::fs::File::create(&path).map_err(txn.err("create", &path))?);
    }
    let replaces = replaced_entries(rootfs, &plan.ops);
    let txn_plan = TxnPlan {
        ops: plan.ops.clone(),
        replaces,
        dirs: touched_dirs(rootfs, &plan.ops),
    };
    let result = run(&mut txn, &txn_plan);
    match result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&txn.dir);
            restore_root_after_inside_txn(rootfs, &txn.dir, final_root_meta(&txn_plan));
            Ok(())
        }
        Err(e) if atomic => {
            let _ = rollback(rootfs, &txn.dir);
            Err(e)
        }
        Err(e) => Err(e),
    }
}

fn run(txn: &mut Txn<'_>, plan: &TxnPlan) -> Result<(), CommitError> {
    // Stage everything first: nothing in the rootfs changes until all new data is on disk.
    for (i, op) in plan.ops.iter().enumerate() {
        if let Op::Install { path } = op {
            let (src, dst) = (txn.upper.join(path), txn.new_item(i));
            copy_entry(&src, &dst).map_err(txn.err("stage", &src))?;
            (txn.step)();
        }
    }
    if txn.journal.is_some() {
        let path = txn.dir.join("plan.json");
        let json = serde_json::to_vec(plan)
            .map_err(|e| e.into())
            .map_err(txn.err("write", &path))?;
        write_atomic(&path, &json).map_err(txn.err("write", &path))?;
        std::fs::File::open(&txn.dir)
            .and_then(|d| d.sync_all())
            .map_err(txn.err("sync", &txn.dir.clone()))?;
    }
    txn.set_state("prepared")?;
    for (i, op) in plan.ops.iter().enumerate() {
        txn.log(&format!("begin {i}"))?;
        apply(txn, i, op)?;
        (txn.step)();
    }
    txn.set_state("committed")
}

fn apply(txn: &mut Txn<'_>, i: usize, op: &Op) -> Result<(), CommitError> {
    let target = txn.rootfs.join(op.path());
    match op {
        Op::Remove(_) => move_out(txn, i, &target),
        Op::MakeDir {
            meta,
            existed: false,
            ..
        } => {
            std::fs::create_dir(&target).map_err(txn.err("create directory", &target))?;
            set_owner_xattrs(&target, meta).map_err(txn.err("set metadata of", &target))
        }
        Op::MakeDir { existed: true, .. } => Ok(()),
        Op::Install { .. } => {
            move_out(txn, i, &target)?;
            let new = txn.new_item(i);
            std::fs::rename(&new, &target).map_err(txn.err("install", &target))
        }
        Op::Link { target: first, .. } => {
            let new = txn.new_item(i);
            let first = txn.rootfs.join(first);
            std::fs::hard_link(&first, &new).map_err(txn.err("link", &first))?;
            move_out(txn, i, &target)?;
            std::fs::rename(&new, &target).map_err(txn.err("install", &target))
        }
        Op::DirDone { meta, .. } => {
            set_owner_xattrs(&target, meta).map_err(txn.err("set metadata of", &target))?;
            set_mode_times(&target, meta, false).map_err(txn.err("set metadata of", &target))
        }
    }
}

/// Moves the rootfs entry at `target` (if any) into the backups.
fn move_out(txn: &Txn<'_>, i: usize, target: &Path) -> Result<(), CommitError> {
    match std::fs::rename(target, txn.old_item(i)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(txn.err("move aside", target)(e)),
    }
}

/// The root's metadata a plan ends with, if it sets it.
fn final_root_meta(plan: &TxnPlan) -> Option<&Meta> {
    plan.ops.iter().rev().find_map(|op| match op {
        Op::DirDone { path, meta } if path.as_os_str().is_empty() => Some(meta),
        _ => None,
    })
}

/// A transaction directory inside the rootfs (the fallback when beside it is not writable)
/// changes the root's times when it goes: set them back to what the tree should show.
fn restore_root_after_inside_txn(rootfs: &Path, dir: &Path, meta: Option<&Meta>) {
    if let (true, Some(meta)) = (dir.parent() == Some(rootfs), meta) {
        let _ = set_mode_times(rootfs, meta, false);
    }
}

/// Per op: whether an entry is at its path when the op runs (what an undo puts back),
/// following the earlier ops: a `Remove` empties a path that a later `Install` then fills.
fn replaced_entries(rootfs: &Path, ops: &[Op]) -> Vec<bool> {
    let mut present: std::collections::HashMap<&Path, bool> = std::collections::HashMap::new();
    ops.iter()
        .map(|op| {
            let path = op.path();
            let now = *present
                .entry(path)
                .or_insert_with(|| rootfs.join(path).symlink_metadata().is_ok());
            let after = !matches!(op, Op::Remove(_));
            present.insert(path, after);
            now
        })
        .collect()
}

/// Existing rootfs directories a plan changes (parents of every op, and dirs it updates),
/// with their metadata now, so an undo can give them back their times.
fn touched_dirs(rootfs: &Path, ops: &[Op]) -> Vec<(PathBuf, Meta)> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for op in ops {
        let p = op.path();
        for anc in p.ancestors().skip(usize::from(!matches!(
            op,
            Op::MakeDir { existed: true, .. }
        ))) {
            if !dirs.iter().any(|d| d == anc) {
                dirs.push(anc.to_owned());
            }
        }
    }
    dirs.into_iter()
        .filter_map(|d| {
            let full = rootfs.join(&d);
            let md = full.symlink_metadata().ok().filter(|m| m.is_dir())?;
            meta_of(&full, &md).ok().map(|m| (d, m))
        })
        .collect()
}

/// Undoes a `prepared` transaction of `rootfs` whose directory is `dir`.
fn rollback(rootfs: &Path, dir: &Path) -> std::io::Result<()> {
    let plan: TxnPlan = match std::fs::read(dir.join("plan.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        // Crashed while staging: nothing in the rootfs was touched.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let journal = std::fs::read_to_string(dir.join("journal")).unwrap_or_default();
    let begun: Vec<usize> = journal
        .lines()
        .filter_map(|l| l.strip_prefix("begin ")?.parse().ok())
        .collect();
    for &i in begun.iter().rev() {
        let Some(op) = plan.ops.get(i) else { continue };
        let target = rootfs.join(op.path());
        let (new, old) = (
            dir.join("new").join(i.to_string()),
            dir.join("old").join(i.to_string()),
        );
        let replaced = plan.replaces.get(i).copied().unwrap_or(false);
        match op {
            Op::MakeDir { existed: false, .. } => remove_any(&target)?,
            Op::Remove(_) | Op::Install { .. } | Op::Link { .. } => {
                let ours_in_place = match op {
                    Op::Remove(_) => false,
                    // Installed when the staged item has left `new` and the original (if
                    // any) has left the rootfs.
                    _ => !new.exists() && (!replaced || old.symlink_metadata().is_ok()),
                };
                if ours_in_place {
                    remove_any(&target)?;
                }
                if old.symlink_metadata().is_ok() {
                    std::fs::rename(&old, &target)?;
                }
            }
            Op::MakeDir { existed: true, .. } | Op::DirDone { .. } => {}
        }
    }
    for (path, meta) in &plan.dirs {
        let full = rootfs.join(path);
        set_owner_xattrs(&full, meta)?;
        set_mode_times(&full, meta, false)?;
    }
    Ok(())
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What [`recover`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// No interrupted commit.
    Nothing,
    /// An interrupted commit was undone: the rootfs is the old tree.
    RolledBack,
    /// A commit had completed its last step: its cleanup was finished (the new tree).
    Completed,
}

/// Finishes or undoes an interrupted commit of `rootfs`. Call with the rootfs locked
/// exclusively.
///
/// # Errors
/// Any I/O error of the undo; the transaction directory is then kept for a retry.
pub fn recover(rootfs: &Path) -> std::io::Result<Recovery> {
    let dir = txn_dir(rootfs);
    if !dir.exists() {
        return Ok(Recovery::Nothing);
    }
    let state = std::fs::read_to_string(dir.join("state")).unwrap_or_default();
    let plan: Option<TxnPlan> = std::fs::read(dir.join("plan.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let outcome = if state.trim() == "committed" {
        Recovery::Completed
    } else {
        rollback(rootfs, &dir)?;
        Recovery::RolledBack
    };
    std::fs::remove_dir_all(&dir)?;
    if let Some(plan) = &plan {
        let root_meta = match outcome {
            Recovery::Completed => final_root_meta(plan),
            _ => plan
                .dirs
                .iter()
                .find(|(p, _)| p.as_os_str().is_empty())
                .map(|(_, m)| m),
        };
        restore_root_after_inside_txn(rootfs, &dir, root_meta);
    }
    Ok(outcome)
}

/// Gives directory `dst` the mode, owner (where allowed), user xattrs and times of `src`.
///
/// # Errors
/// Any I/O error.
pub fn copy_dir_meta(src: &Path, dst: &Path) -> std::io::Result<()> {
    let md = src.symlink_metadata()?;
    let meta = meta_of(src, &md).map_err(|e| std::io::Error::other(e.to_string()))?;
    set_owner_xattrs(dst, &meta)?;
    set_mode_times(dst, &meta, false)
}

/// Copies upper entry `src` to `dst` (a new name) with its metadata; symlinks as symlinks.
fn copy_entry(src: &Path, dst: &Path) -> std::io::Result<()> {
    let md = src.symlink_metadata()?;
    let ft = md.file_type();
    if ft.is_file() {
        std::fs::copy(src, dst)?;
        std::fs::File::open(dst)?.sync_all()?;
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)?;
    } else {
        let kind = SFlag::from_bits_truncate(md.mode() & libc::S_IFMT);
        mknod(
            dst,
            kind,
            Mode::from_bits_truncate(md.mode() & 0o7777),
            md.rdev(),
        )?;
    }
    let meta = meta_of(src, &md).map_err(|e| std::io::Error::other(e.to_string()))?;
    set_owner_xattrs(dst, &meta)?;
    set_mode_times(dst, &meta, ft.is_symlink())
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
        let name = OsString::from(String::from_utf8_lossy(name).into_owned());
        match sys::xattr::set(path, &name, value, 0) {
            Ok(()) | Err(nix::errno::Errno::EPERM | nix::errno::Errno::EOPNOTSUPP) => {}
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
