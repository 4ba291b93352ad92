//! A session from start to end: lock the rootfs (recovering an interrupted commit first),
//! record the session, run it, apply its policy. Changes are never lost: whatever cannot be
//! discarded or committed is kept and named.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use super::lock::{Mode, RootfsLock};
use super::record::{Record, Status, now};
use super::{SessionDirs, SessionError};
use crate::config::SessionPlan;
use crate::policy::commit::{self, Recovery};
use crate::policy::{CommitMode, CommitOn, Policy, plan};

/// What a session run needs besides the plan.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// What to do with the changes.
    pub policy: Policy,
    /// The upper directory to use instead of a new one in the state root.
    pub upper: Option<PathBuf>,
    /// Wait for the rootfs lock instead of failing.
    pub wait: bool,
    /// Continue kept session ID (its upper and record) instead of starting a new one.
    pub resume: Option<String>,
    /// Which runs the commit policies commit; the others are kept.
    pub commit_on: CommitOn,
}

/// Takes `rootfs`'s lock in `mode`, first finishing or undoing an interrupted commit (which
/// needs it exclusively, for a moment). The lock is the rootfs's own, whatever the state
/// root: a commit running from another state root is waited for (or reported busy), never
/// "recovered".
///
/// # Errors
/// [`SessionError::Lock`] when busy, [`SessionError::Recover`] when recovery fails or the
/// transaction found is not the caller's.
pub fn lock_and_recover(
    state: &Path,
    rootfs: &Path,
    mode: Mode,
    wait: bool,
) -> Result<RootfsLock, SessionError> {
    loop {
        let lock = RootfsLock::take(rootfs, mode, wait)?;
        // Only an interrupted commit leaves a transaction behind (a running one holds the
        // lock), so sessions starting side by side never contend for the exclusive lock just
        // to look.
        if mode == Mode::Shared && !commit::pending(rootfs, state) {
            return Ok(lock);
        }
        let exclusive = match mode {
            Mode::Exclusive => lock,
            Mode::Shared => {
                drop(lock);
                RootfsLock::take(rootfs, Mode::Exclusive, wait)?
            }
        };
        recover_locked(state, rootfs)?;
        if mode == Mode::Exclusive {
            return Ok(exclusive);
        }
        // Look again under the shared lock: another commit may have crashed meanwhile.
    }
}

/// Recovery, with the rootfs locked exclusively; says what it did.
fn recover_locked(state: &Path, rootfs: &Path) -> Result<(), SessionError> {
    match commit::recover(rootfs, state) {
        Ok(Recovery::Nothing) => Ok(()),
        Ok(r) => {
            settle_committing_sessions(state, rootfs, r);
            eprintln!(
                "ovlrun: recovered an interrupted commit of {}: {}",
                rootfs.display(),
                match r {
                    Recovery::RolledBack => "rolled back, the rootfs is as before it",
                    Recovery::Abandoned => {
                        "it was a plain commit, which keeps no journal: its staging is \
                         removed, and the rootfs may hold part of its changes; its session is \
                         kept, and committing it again finishes the commit"
                    }
                    _ => "completed",
                }
            );
            Ok(())
        }
        Err(source) => Err(SessionError::Recover {
            rootfs: rootfs.to_owned(),
            source,
        }),
    }
}

/// After a recovery, the sessions whose commit it was: kept again when rolled back (their
/// changes are still theirs), removed when the commit had completed.
fn settle_committing_sessions(state: &Path, rootfs: &Path, outcome: Recovery) {
    for (dirs, mut rec) in SessionDirs::list(state) {
        if rec.status != Status::Committing || rec.rootfs != rootfs || !rec.is_dead() {
            continue;
        }
        match outcome {
            Recovery::Completed => {
                let _ = dirs.discard();
            }
            _ => {
                rec.status = Status::Preserved;
                let _ = rec.save(&dirs.root);
            }
        }
    }
}

/// Runs `plan` as a session and applies the policy; returns the command's exit status.
///
/// # Errors
/// [`SessionError`]; when it comes after the command ran, the session is kept and named.
pub fn run(plan: &SessionPlan, opts: &RunOptions) -> Result<i32, SessionError> {
    // A user-given upper is checked before anything is locked, created or changed.
    let checked = match (&opts.resume, &opts.upper) {
        (None, Some(u)) => Some(super::upper::check(u, &plan.rootfs, &plan.state_root)?),
        _ => None,
    };
    let shared = lock_and_recover(&plan.state_root, &plan.rootfs, Mode::Shared, opts.wait)?;
    let (dirs, mut rec) = match &opts.resume {
        Some(id) => resume(plan, id)?,
        None => new_session(plan, opts, checked.as_ref())?,
    };
    // An upper used again holds earlier work, which a failed launch must not take away.
    let earlier_work =
        opts.resume.is_some() || checked.as_ref().is_some_and(|c| c.reused.is_some());
    rec.save(&dirs.root)?;
    let upper = match opts.policy {
        Policy::Discard => crate::sandbox::UpperAfter::Discarded,
        _ => crate::sandbox::UpperAfter::Kept,
    };
    let code = match crate::sandbox::run(plan, &dirs, upper) {
        Ok(outcome) => {
            rec.fs = outcome.fs;
            outcome.code
        }
        Err(e) => {
            if opts.resume.is_some() {
                // The kept changes are the user's work: keep them.
                rec.status = Status::Preserved;
                rec.save(&dirs.root)?;
            } else if earlier_work {
                let _ = dirs.forget();
            } else {
                // The command never ran; nothing but launcher scaffolding is in the upper.
                let _ = dirs.discard();
            }
            return Err(e.into());
        }
    };
    rec.status = Status::Preserved;
    rec.ended = Some(now());
    rec.exit_code = Some(code);
    // A session about to be discarded records its end only if it stays (two fsyncs less).
    if opts.policy != Policy::Discard {
        rec.save(&dirs.root)?;
    }
    drop(shared);
    apply_policy(plan, opts, &dirs, &mut rec, code)?;
    Ok(code)
}

fn new_session(
    plan: &SessionPlan,
    opts: &RunOptions,
    upper: Option<&super::upper::Checked>,
) -> Result<(SessionDirs, Record), SessionError> {
    let dirs = SessionDirs::create(&plan.state_root, upper)?;
    // The upper's root is the merged root's metadata (with both backends): start it as the
    // rootfs's root, so an untouched root shows no change.
    if std::fs::read_dir(&dirs.upper).is_ok_and(|mut d| d.next().is_none()) {
        let _ = crate::policy::commit::copy_dir_meta(&plan.rootfs, &dirs.upper);
    }
    let rec = Record {
        id: dirs.id.clone(),
        rootfs: plan.rootfs.clone(),
        upper: dirs.upper.clone(),
        work: dirs.work.clone(),
        policy: opts.policy,
        pid: std::process::id(),
        status: Status::Running,
        fs: plan.fs,
        created: now(),
        ended: None,
        exit_code: None,
        owner: nix::unistd::getuid().as_raw(),
    };
    Ok((dirs, rec))
}

/// Reopens kept session `id` to run a new command on its changes.
fn resume(plan: &SessionPlan, id: &str) -> Result<(SessionDirs, Record), SessionError> {
    let (dirs, mut rec) = SessionDirs::open_finished(&plan.state_root, id)?;
    rec.status = Status::Running;
    rec.pid = std::process::id();
    rec.ended = None;
    rec.exit_code = None;
    Ok((dirs, rec))
}

fn apply_policy(
    plan: &SessionPlan,
    opts: &RunOptions,
    dirs: &SessionDirs,
    rec: &mut Record,
    code: i32,
) -> Result<(), SessionError> {
    let policy = match opts.policy {
        Policy::Ask => ask(plan, dirs, rec)?,
        Policy::Commit | Policy::CommitAtomic if !opts.commit_on.commits(code) => {
            report_not_committed(dirs, opts.policy, code);
            return Ok(());
        }
        p => p,
    };
    match policy {
        Policy::Discard => {
            if let Err(e) = dirs.discard() {
                eprintln!(
                    "ovlrun: cannot discard session {}: {e}; it is kept",
                    dirs.id.0
                );
                // The record goes last in a discard, so it is still there to say so.
                rec.save(&dirs.root)?;
            }
            Ok(())
        }
        Policy::Commit | Policy::CommitAtomic => commit_session(
            &plan.state_root,
            dirs,
            rec,
            policy.commit_mode().unwrap_or(CommitMode::Plain),
            opts.wait,
        ),
        Policy::Preserve | Policy::Ask => {
            report_kept(dirs);
            Ok(())
        }
    }
}

/// Prints where a kept session is and what can be done with it.
pub fn report_kept(dirs: &SessionDirs) {
    eprintln!(
        "ovlrun: session {id} kept; its changes are in {upper}\n\
         ovlrun: see them with `ovlrun diff {id}`, merge them with `ovlrun commit {id}`, \
         drop them with `ovlrun discard {id}`",
        id = dirs.id.0,
        upper = dirs.upper.display()
    );
}

/// Says, in one line, that a commit policy kept a failed run instead of committing it, and
/// how to commit it anyway.
fn report_not_committed(dirs: &SessionDirs, policy: Policy, code: i32) {
    let atomic = if policy == Policy::CommitAtomic {
        " --atomic"
    } else {
        ""
    };
    eprintln!(
        "ovlrun: the command {}, so session {id} was kept, not committed; its changes are in \
         {upper}; commit them anyway with `ovlrun commit{atomic} {id}` (or run with \
         --commit-on always), drop them with `ovlrun discard {id}`",
        match code {
            129..=192 => format!("ended with status {code} (signal {})", code - 128),
            c => format!("ended with status {c}"),
        },
        id = dirs.id.0,
        upper = dirs.upper.display()
    );
}

/// Merges a finished session into its rootfs under the exclusive lock, then removes it. On
/// failure the session is kept (status preserved) and named.
///
/// # Errors
/// [`SessionError::Lock`] when other sessions run (the session is kept);
/// [`SessionError::Commit`].
pub fn commit_session(
    state: &Path,
    dirs: &SessionDirs,
    rec: &mut Record,
    mode: CommitMode,
    wait: bool,
) -> Result<(), SessionError> {
    let _lock = match lock_and_recover(state, &rec.rootfs, Mode::Exclusive, wait) {
        Ok(l) => l,
        Err(e) => {
            report_kept(dirs);
            return Err(e);
        }
    };
    let plan = plan::plan(&rec.rootfs, &rec.upper, upper_format(rec)?)?;
    rec.status = Status::Committing;
    rec.pid = std::process::id();
    rec.save(&dirs.root)?;
    // A bar on a terminal for commits that take a while; nothing anywhere else.
    let bar = if std::io::stderr().is_terminal() && plan.ops.len() > 100 {
        indicatif::ProgressBar::new(commit::progress_steps(&plan))
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "ovlrun: committing {msg} [{bar:30}] {pos}/{len} steps",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{} changes", plan.changes.len()));
    let result = commit::commit_with_progress(
        &rec.rootfs,
        &rec.upper,
        state,
        &plan,
        mode == CommitMode::Atomic,
        &|| bar.inc(1),
    );
    bar.finish_and_clear();
    match result {
        Ok(()) => {
            if let Err(e) = dirs.discard() {
                eprintln!(
                    "ovlrun: committed, but cannot remove session {}: {e}",
                    dirs.id.0
                );
            }
            Ok(())
        }
        Err(source) => {
            rec.status = Status::Preserved;
            rec.save(&dirs.root)?;
            Err(SessionError::Commit {
                id: dirs.id.0.clone(),
                source,
            })
        }
    }
}

/// The recorded format of `rec`'s upper (see [`super::upper::format_of`]).
fn upper_format(rec: &Record) -> Result<crate::layers::WhiteoutFormat, plan::PlanError> {
    super::upper::format_of(rec).map_err(|source| plan::PlanError {
        path: rec.work.join(crate::layers::format::FORMAT_RECORD),
        source,
    })
}

/// `--policy ask`: on a terminal, shows the diff summary and asks; elsewhere keeps the
/// session (never loses work without being told to).
fn ask(plan: &SessionPlan, dirs: &SessionDirs, rec: &Record) -> Result<Policy, SessionError> {
    let diff = plan::plan(&plan.rootfs, &dirs.upper, upper_format(rec)?)?;
    if diff.changes.is_empty() {
        eprintln!("ovlrun: no changes");
        return Ok(Policy::Discard);
    }
    if !std::io::stdin().is_terminal() {
        eprintln!("ovlrun: --policy ask without a terminal: keeping the session");
        return Ok(Policy::Preserve);
    }
    let count = |c| diff.changes.iter().filter(|(k, _)| *k == c).count();
    eprintln!(
        "ovlrun: {} added, {} changed, {} deleted",
        count(plan::Change::Added),
        count(plan::Change::Changed),
        count(plan::Change::Deleted)
    );
    for (c, p) in diff.changes.iter().take(20) {
        eprintln!("  {} {}", c.letter(), p.display());
    }
    if diff.changes.len() > 20 {
        eprintln!(
            "  ... ({} more: `ovlrun diff {}`)",
            diff.changes.len() - 20,
            dirs.id.0
        );
    }
    loop {
        eprint!("ovlrun: [c]ommit, commit [a]tomically, [p]reserve or [d]iscard? ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line).unwrap_or(0) == 0 {
            return Ok(Policy::Preserve);
        }
        match line.trim() {
            "c" | "commit" => return Ok(Policy::Commit),
            "a" | "atomic" => return Ok(Policy::CommitAtomic),
            "p" | "preserve" => return Ok(Policy::Preserve),
            "d" | "discard" => return Ok(Policy::Discard),
            _ => {}
        }
    }
}
