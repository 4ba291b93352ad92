//! A session from start to end: lock the rootfs (recovering an interrupted commit first),
//! record the session, run it, apply its policy. Changes are never lost: whatever cannot be
//! discarded or committed is kept and named.

use std::path::{Path, PathBuf};

use super::ended::{Counts, Ended, Failed, Outcome};
use super::lock::{Mode, RootfsLock};
use super::record::{Record, Status, now};
use super::report::{CommitSize, Note, Report};
use super::rootfs::SessionRootfs;
use super::{SessionDirs, SessionError};
use crate::config::SessionPlan;
use crate::policy::commit::{self, Recovery};
use crate::policy::conflict::{self, Stamp};
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
    /// The session's name (`--name`): unique among the state root's sessions, usable
    /// wherever an id is.
    pub name: Option<String>,
}

/// Takes `rootfs`'s lock in `mode`, first finishing or undoing an interrupted commit (which
/// needs it exclusively, for a moment, and is told to `report`). The lock is the rootfs's own, whatever the state
/// root: a commit running from another state root is waited for (or reported busy), never
/// "recovered".
///
/// # Errors
/// [`SessionError::Lock`] when busy, [`SessionError::Recover`] when recovery fails or the
/// transaction found is not the caller's.
pub(crate) fn lock_and_recover(
    state: &Path,
    rootfs: &Path,
    mode: Mode,
    wait: bool,
    report: &dyn Report,
) -> Result<RootfsLock, SessionError> {
    loop {
        let lock = take(state, rootfs, mode, wait, report)?;
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
                take(state, rootfs, Mode::Exclusive, wait, report)?
            }
        };
        recover_locked(state, rootfs, report)?;
        if mode == Mode::Exclusive {
            return Ok(exclusive);
        }
        // Look again under the shared lock: another commit may have crashed meanwhile.
    }
}

/// Takes `rootfs`'s lock; with `wait`, when it is busy, says so (naming the sessions of
/// `state` that hold it) and blocks until it is free.
fn take(
    state: &Path,
    rootfs: &Path,
    mode: Mode,
    wait: bool,
    report: &dyn Report,
) -> Result<RootfsLock, SessionError> {
    match RootfsLock::take(rootfs, mode, false) {
        Err(super::LockError::Busy { .. }) if wait => {
            let holders: Vec<String> = SessionDirs::list(state)
                .into_iter()
                .filter(|(_, r)| r.rootfs == rootfs && r.status != Status::Preserved)
                .filter(|(_, r)| !r.is_dead())
                .map(|(_, r)| r.id.0)
                .collect();
            report.note(Note::Waiting {
                rootfs,
                holders: &holders,
            });
            Ok(RootfsLock::take(rootfs, mode, true)?)
        }
        taken => Ok(taken?),
    }
}

/// Recovery, with the rootfs locked exclusively; says what it did.
fn recover_locked(state: &Path, rootfs: &Path, report: &dyn Report) -> Result<(), SessionError> {
    match commit::recover(rootfs, state) {
        Ok(Recovery::Nothing) => Ok(()),
        Ok(r) => {
            settle_committing_sessions(state, rootfs, r, Stamp::settled());
            report.note(Note::Recovered { rootfs, outcome: r });
            Ok(())
        }
        Err(source) => Err(SessionError::Recover {
            rootfs: rootfs.to_owned(),
            source,
        }),
    }
}

/// After a recovery, the sessions whose commit it was: kept again when rolled back (their
/// changes are still theirs), removed when the commit had completed. A kept one passed its
/// conflict check before it began committing, so its changes are now checked against
/// `after`, when the recovery ended: what its own commit and undo did is no conflict.
fn settle_committing_sessions(state: &Path, rootfs: &Path, outcome: Recovery, after: Stamp) {
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
                rec.base = rec.base.map(|_| after);
                let _ = rec.save(&dirs.root);
            }
        }
    }
}

/// Runs `plan` as a session and applies the policy, telling `report` what the user should
/// know; returns how it ended (the command's exit status is [`Ended::code`]).
///
/// # Errors
/// [`Failed`]: the [`SessionError`], with the session as far as it got once it had an id;
/// when the error comes after the command ran, the session is kept and named.
pub fn run(plan: &SessionPlan, opts: &RunOptions, report: &dyn Report) -> Result<Ended, Failed> {
    let mut so_far = None;
    run_tracked(plan, opts, report, &mut so_far).map_err(|error| Failed {
        ended: so_far.map(Box::new),
        error: Box::new(error),
    })
}

/// [`run`], leaving in `so_far` what became of the session, for its error.
fn run_tracked(
    plan: &SessionPlan,
    opts: &RunOptions,
    report: &dyn Report,
    so_far: &mut Option<Ended>,
) -> Result<Ended, SessionError> {
    // A user-given upper is checked before anything is locked, created or changed.
    let checked = match (&opts.resume, &opts.upper) {
        (None, Some(u)) => {
            for layer in &plan.layers {
                super::upper::check(u, layer, &plan.state_root)?;
            }
            Some(super::upper::check(u, &plan.rootfs, &plan.state_root)?)
        }
        _ => None,
    };
    // Over several trees, there is no one tree to commit into: said before anything runs.
    if !plan.layers.is_empty() && matches!(opts.policy, Policy::Commit | Policy::CommitAtomic) {
        return Err(SessionError::CommitOverLayers {
            policy: opts.policy.name(),
            count: plan.layers.len(),
            rootfs: plan.rootfs.clone(),
        });
    }
    let shared = lock_and_recover(
        &plan.state_root,
        &plan.rootfs,
        Mode::Shared,
        opts.wait,
        report,
    )?;
    // The layers too: a commit into one of them waits for this session, as for its rootfs.
    let _layer_locks = plan
        .layers
        .iter()
        .map(|l| take(&plan.state_root, l, Mode::Shared, opts.wait, report))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(name) = &opts.name {
        super::name::check(name)?;
    }
    let (dirs, mut rec) = match &opts.resume {
        Some(id) => resume(plan, id, opts.name.as_deref())?,
        None => new_session(plan, opts, checked.as_ref())?,
    };
    // An upper used again holds earlier work, which a failed launch must not take away.
    let earlier_work =
        opts.resume.is_some() || checked.as_ref().is_some_and(|c| c.reused.is_some());
    // Until something else is known, the changes are kept where they are.
    let ended = so_far.insert(Ended {
        id: dirs.id.0.clone(),
        name: rec.name.clone(),
        fs: None,
        code: None,
        outcome: Outcome::Kept,
        changes: None,
        upper: Some(dirs.upper.clone()),
    });
    rec.save(&dirs.root)?;
    let ids = crate::sandbox::id_map(plan);
    if let Some(owner) = ids
        .as_ref()
        .and_then(|map| crate::host::ids::unmapped_owner(&plan.rootfs, map))
    {
        report.note(Note::UnmappedOwner {
            rootfs: &plan.rootfs,
            owner,
        });
    }
    // A kept upper must be whole: FUSE completes its metadata-only copies at unmount.
    let fs = SessionRootfs::new(plan, &dirs, opts.policy != Policy::Discard, &rec, report);
    // Once pid 1 exists: the record says how to enter the session (`ovlrun exec`), and
    // which backend serves it.
    let entered = |init: nix::unistd::Pid, fs| {
        let init = u32::try_from(init.as_raw()).unwrap_or_default();
        // Not synced: after a crash nothing runs, and the entry is stale anyway.
        Ok(Record {
            entry: Some(super::record::Entry::of(plan, init)),
            fs,
            ..rec.clone()
        }
        .save_volatile(&dirs.root)?)
    };
    let code = match super::cgroup::launch(plan, ids, fs, &dirs.id.0, report, entered) {
        Ok(outcome) => {
            rec.fs = outcome.fs;
            ended.fs = Some(outcome.fs);
            outcome.code
        }
        Err(e) => {
            if opts.resume.is_some() {
                // The kept changes are the user's work: keep them, synced as at any end.
                rec.status = Status::Preserved;
                super::durable::sync_upper(&mut rec)?;
                rec.save(&dirs.root)?;
            } else if earlier_work {
                let _ = dirs.forget();
            } else {
                // The command never ran; nothing but launcher scaffolding is in the upper.
                let _ = dirs.discard();
                ended.outcome = Outcome::Discarded;
                ended.upper = None;
            }
            return Err(e);
        }
    };
    ended.code = Some(code);
    rec.status = Status::Preserved;
    rec.ended = Some(now());
    rec.exit_code = Some(code);
    // A session about to be discarded records its end only if it stays (two fsyncs less),
    // and its upper, thrown away, is never synced; a kept one's is, once, here.
    if opts.policy != Policy::Discard {
        super::durable::sync_upper(&mut rec)?;
        rec.save(&dirs.root)?;
    }
    drop(shared);
    apply_policy(&plan.state_root, opts, &dirs, &mut rec, code, report, ended)?;
    Ok(ended.clone())
}

fn new_session(
    plan: &SessionPlan,
    opts: &RunOptions,
    upper: Option<&super::upper::Checked>,
) -> Result<(SessionDirs, Record), SessionError> {
    let dirs = SessionDirs::create(&plan.state_root, upper)?;
    if let Some(name) = &opts.name {
        if let Err(e) = super::name::claim(&plan.state_root, name, &dirs.id) {
            // Nothing ran: only what `create` just made goes.
            let _ = dirs.discard();
            return Err(e);
        }
    }
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
        // Taken under the shared lock, before the overlay exists: no commit runs now, and
        // every later change of the rootfs has a ctime at or after it. An upper used again
        // keeps the start of its first session, when its earliest changes were based.
        base: match upper.and_then(|u| u.reused.as_ref()) {
            Some(mark) => mark.base,
            // The fine clock: an entry changed just before the start, in the same coarse
            // tick, may carry a fine-grained ctime past the coarse clock (multigrain).
            None => Some(Stamp::fine_now()),
        },
        command: command_of(plan),
        name: opts.name.clone(),
        layers: plan.layers.clone(),
        entry: None,
        unsynced_boot: super::durable::mark(plan.durable),
    };
    Ok((dirs, rec))
}

/// `plan`'s argv as the record shows it.
fn command_of(plan: &SessionPlan) -> Vec<String> {
    plan.argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// Reopens kept session `id` to run a new command on its changes.
/// A session keeps its name; one without gets `name`, if given.
fn resume(
    plan: &SessionPlan,
    id: &str,
    name: Option<&str>,
) -> Result<(SessionDirs, Record), SessionError> {
    let (dirs, mut rec) = SessionDirs::open_finished(&plan.state_root, id)?;
    // Its upper is a lower of those: changing it would change them under their feet.
    dirs.check_no_dependents()?;
    match (name, rec.name.as_deref()) {
        (Some(new), Some(old)) if new != old => {
            return Err(SessionError::BadName {
                name: new.to_owned(),
                why: "the resumed session already has a name, which it keeps",
            });
        }
        (Some(new), None) => {
            super::name::claim(&plan.state_root, new, &dirs.id)?;
            rec.name = Some(new.to_owned());
        }
        _ => {}
    }
    super::durable::require(&dirs, &mut rec)?;
    rec.unsynced_boot = super::durable::mark(plan.durable);
    rec.status = Status::Running;
    rec.pid = std::process::id();
    rec.ended = None;
    rec.exit_code = None;
    rec.command = command_of(plan);
    Ok((dirs, rec))
}

/// Applies `opts.policy` to the finished session, recording in `ended` what became of it.
fn apply_policy(
    state: &Path,
    opts: &RunOptions,
    dirs: &SessionDirs,
    rec: &mut Record,
    code: i32,
    report: &dyn Report,
    ended: &mut Ended,
) -> Result<(), SessionError> {
    // Only a new session with its upper in the state root is dropped for changing nothing.
    let fresh = opts.resume.is_none() && dirs.upper.starts_with(&dirs.root);
    let policy = match opts.policy {
        Policy::Ask => {
            let diff = plan::plan(&rec.lowers(), &rec.upper, upper_format(rec)?)?;
            ended.changes = Some(Counts::of(&diff.changes));
            if diff.changes.is_empty() {
                report.note(Note::NoChanges);
                Policy::Discard
            } else {
                report.ask(&dirs.id.0, &diff.changes)
            }
        }
        Policy::Commit | Policy::CommitAtomic if !opts.commit_on.commits(code) => {
            ended.changes = counts(rec);
            report.note(Note::NotCommitted {
                id: &dirs.id.0,
                upper: &dirs.upper,
                code,
                atomic: opts.policy == Policy::CommitAtomic,
            });
            ended.outcome = Outcome::NotCommitted;
            return Ok(());
        }
        Policy::Preserve => {
            // A diff that cannot be read keeps the session: it may hold work.
            ended.changes = counts(rec);
            if fresh && ended.changes == Some(Counts::default()) {
                report.note(Note::NoChanges);
                Policy::Discard
            } else {
                Policy::Preserve
            }
        }
        p => p,
    };
    match policy {
        Policy::Discard => {
            if let Err(e) = dirs.discard() {
                report.note(Note::NotDiscarded {
                    id: &dirs.id.0,
                    error: &e,
                });
                // The record goes last in a discard, so it is still there to say so.
                rec.save(&dirs.root)?;
                return Ok(());
            }
            ended.outcome = Outcome::Discarded;
            ended.upper = None;
            Ok(())
        }
        Policy::Commit | Policy::CommitAtomic => {
            let mut planned = None;
            let result = commit_session(
                state,
                dirs,
                rec,
                policy.commit_mode().unwrap_or(CommitMode::Plain),
                opts.wait,
                false,
                report,
                &mut planned,
            );
            ended.changes = planned.or(ended.changes);
            match result {
                Ok(_) => {
                    ended.outcome = Outcome::Committed;
                    ended.upper = None;
                    Ok(())
                }
                Err(e) => {
                    if matches!(e, SessionError::Conflicts { .. }) {
                        ended.outcome = Outcome::Conflict;
                    }
                    Err(e)
                }
            }
        }
        Policy::Preserve | Policy::Ask => {
            report_kept(dirs, rec, report);
            Ok(())
        }
    }
}

/// The counts of `rec`'s changes, or `None` when its diff cannot be read.
fn counts(rec: &Record) -> Option<Counts> {
    let format = upper_format(rec).ok()?;
    let diff = plan::plan(&rec.lowers(), &rec.upper, format).ok()?;
    Some(Counts::of(&diff.changes))
}

/// Tells `report` where a kept session is.
fn report_kept(dirs: &SessionDirs, rec: &Record, report: &dyn Report) {
    report.note(Note::Kept {
        id: &dirs.id.0,
        name: rec.name.as_deref(),
        upper: &dirs.upper,
        layered: !rec.layers.is_empty(),
    });
}

/// Merges a finished session into its rootfs under the exclusive lock, then removes it. On
/// failure the session is kept (status preserved) and named; `report` shows its progress. Paths the session changes that
/// the rootfs changed too since the session began ([`conflict`]) refuse the whole commit
/// before anything is applied, unless `force`; returns the conflicts committed over.
///
/// # Errors
/// [`SessionError::Lock`] when other sessions run (the session is kept);
/// [`SessionError::Conflicts`] (nothing applied, the session kept);
/// [`SessionError::Commit`]. `planned` gets the counts of the changes once they are known.
#[allow(clippy::too_many_arguments)]
pub(crate) fn commit_session(
    state: &Path,
    dirs: &SessionDirs,
    rec: &mut Record,
    mode: CommitMode,
    wait: bool,
    force: bool,
    report: &dyn Report,
    planned: &mut Option<Counts>,
) -> Result<Vec<conflict::Conflict>, SessionError> {
    let refused = if rec.layers.is_empty() {
        dirs.check_no_dependents()
    } else {
        Err(SessionError::Layered {
            id: dirs.id.0.clone(),
            count: rec.layers.len(),
            rootfs: rec.rootfs.clone(),
        })
    };
    // Nothing was tried: the error says what to do instead.
    refused?;
    let _lock = match lock_and_recover(state, &rec.rootfs, Mode::Exclusive, wait, report) {
        Ok(l) => l,
        Err(e) => {
            report_kept(dirs, rec, report);
            return Err(e);
        }
    };
    let plan = plan::plan(&rec.lowers(), &rec.upper, upper_format(rec)?)?;
    *planned = Some(Counts::of(&plan.changes));
    let conflicts = conflicts_of(rec, &plan)?;
    if !conflicts.is_empty() && !force {
        return Err(SessionError::Conflicts {
            id: dirs.id.0.clone(),
            rootfs: rec.rootfs.clone(),
            conflicts,
        });
    }
    rec.status = Status::Committing;
    rec.pid = std::process::id();
    rec.save(&dirs.root)?;
    let progress = report.commit_progress(CommitSize {
        ops: plan.ops.len(),
        steps: commit::progress_steps(&plan),
        changes: plan.changes.len(),
    });
    let result = commit::commit_with_progress(
        &rec.rootfs,
        &rec.upper,
        state,
        &plan,
        mode == CommitMode::Atomic,
        &|| progress.step(),
    );
    drop(progress);
    // Under the lock still: what this commit (or its undo) stamped is past for later checks.
    let after = Stamp::settled();
    match result {
        Ok(()) => {
            if let Err(e) = dirs.discard() {
                report.note(Note::NotRemoved {
                    id: &dirs.id.0,
                    error: &e,
                });
            }
            Ok(conflicts)
        }
        Err(source) => {
            rec.status = Status::Preserved;
            // Checked (or forced) before it began: only its own steps changed since.
            rec.base = rec.base.map(|_| after);
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

/// The conflicts of kept session `rec` whose plan is `plan`: none for a record of an older
/// version, which holds no start to compare with.
///
/// # Errors
/// [`SessionError::Plan`] when the rootfs cannot be read.
pub(crate) fn conflicts_of(
    rec: &Record,
    plan: &plan::Plan,
) -> Result<Vec<conflict::Conflict>, SessionError> {
    match rec.base {
        Some(base) => Ok(conflict::find(
            &rec.rootfs,
            &rec.upper,
            &rec.work,
            plan,
            base,
        )?),
        None => Ok(Vec::new()),
    }
}
