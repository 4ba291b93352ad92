//! The commands on kept sessions: ls, diff, commit, discard, recover.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use ovlrun::config;
use ovlrun::policy::CommitMode;
use ovlrun::policy::{names, plan};
use ovlrun::session::SessionDirs;
use ovlrun::session::SessionError;
use ovlrun::session::lock::Mode;
use ovlrun::session::record::Status;
use ovlrun::session::run::{commit_session, conflicts_of, lock_and_recover};

use crate::stderr::Stderr;

fn state() -> anyhow::Result<std::path::PathBuf> {
    Ok(config::state_root()?)
}

/// `ovlrun ls`.
pub fn ls(json: bool) -> anyhow::Result<ExitCode> {
    let state = state()?;
    let sessions = SessionDirs::list(&state);
    let mut out = std::io::stdout().lock();
    let now = ovlrun::session::record::now();
    let status = |r: &ovlrun::session::record::Record| {
        if r.is_orphaned() {
            "orphaned"
        } else {
            match r.status {
                Status::Running => "running",
                Status::Preserved => "preserved",
                Status::Committing => "committing",
            }
        }
    };
    if json {
        let rows: Vec<serde_json::Value> = sessions
            .iter()
            .map(|(d, r)| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["state"] = status(r).into();
                v["size"] = d.upper_size().into();
                v
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<12}  {:<10} {:<6} {:>5} {:>7}  ROOTFS",
        "ID", "STATUS", "FS", "AGE", "SIZE"
    )?;
    for (d, r) in &sessions {
        writeln!(
            out,
            "{:<12}  {:<10} {:<6} {:>5} {:>7}  {}",
            r.id,
            status(r),
            r.fs.name(),
            age(now.saturating_sub(r.created)),
            size(d.upper_size()),
            r.rootfs.display()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1 << 10 => format!("{b}B"),
        b if b < 1 << 20 => format!("{:.1}K", b as f64 / 1024.0),
        b if b < 1 << 30 => format!("{:.1}M", b as f64 / f64::from(1 << 20)),
        b => format!("{:.1}G", b as f64 / f64::from(1 << 30)),
    }
}

/// Refuses sessions whose command still runs.
fn finished(id: &str) -> anyhow::Result<(SessionDirs, ovlrun::session::record::Record)> {
    Ok(SessionDirs::open_finished(&state()?, id)?)
}

/// Makes a finished session's upper what its session wrote, before anything reads it as a
/// plain directory: removes the mount targets a killed launcher left, and gives the
/// metadata-only copies a killed FUSE server left their data.
/// The recorded whiteout format of `rec`'s upper.
fn format_of(
    rec: &ovlrun::session::record::Record,
) -> anyhow::Result<ovlrun::layers::WhiteoutFormat> {
    ovlrun::session::upper::format_of(rec)
        .with_context(|| format!("cannot read the whiteout format of {}", rec.upper.display()))
}

fn complete_metacopies(rec: &ovlrun::session::record::Record) -> anyhow::Result<()> {
    ovlrun::session::scaffold::scrub(&rec.rootfs, &rec.upper, &rec.work);
    ovlrun::layers::complete_metacopies(&ovlrun::layers::OverlayConfig {
        lowers: vec![rec.rootfs.clone()],
        upper: rec.upper.clone(),
        work: Some(rec.work.clone()),
        whiteout: Some(format_of(rec)?),
    })?;
    Ok(())
}

/// `ovlrun diff ID`; `conflicts`: only the changes that conflict with the rootfs.
pub fn diff(id: &str, json: bool, conflicts: bool) -> anyhow::Result<ExitCode> {
    let (_, rec) = SessionDirs::open(&state()?, id)?;
    ovlrun::sandbox::enter_owner_namespace()?;
    // A running session's server owns its upper; it completes the copies at its end.
    if rec.status != Status::Running || rec.is_dead() {
        complete_metacopies(&rec)?;
    }
    let mut p = plan::plan(&rec.rootfs, &rec.upper, format_of(&rec)?)?;
    let mut why = std::collections::HashMap::new();
    if conflicts {
        for c in conflicts_of(&rec, &p)? {
            why.insert(c.path, c.why);
        }
        // A removed or replaced directory conflicts through what is beneath it.
        p.changes.retain(|(_, path)| why.contains_key(path));
    }
    let mut out = std::io::stdout().lock();
    if json {
        let rows: Vec<serde_json::Value> = p
            .changes
            .iter()
            .map(|(c, path)| {
                let mut row = names::json_fields(path);
                row.insert("change".into(), c.letter().to_string().into());
                if let Some(w) = why.get(path) {
                    row.insert("conflict".into(), serde_json::to_value(w)?);
                }
                Ok(serde_json::Value::Object(row))
            })
            .collect::<Result<_, serde_json::Error>>()?;
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    } else {
        for (c, path) in &p.changes {
            writeln!(out, "{} {}", c.letter(), names::quote(path))?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The flags of `ovlrun commit`.
pub struct CommitFlags {
    /// Journaled.
    pub atomic: bool,
    /// Wait for the lock.
    pub wait: bool,
    /// Commit over conflicts.
    pub force: bool,
    /// Conflicts as JSON on stdout.
    pub json: bool,
}

/// `ovlrun commit ID`: exit 1 when conflicts refuse it.
pub fn commit(id: &str, flags: CommitFlags) -> anyhow::Result<ExitCode> {
    let (dirs, mut rec) = finished(id)?;
    ovlrun::sandbox::enter_owner_namespace()?;
    complete_metacopies(&rec)?;
    let result = commit_session(
        &state()?,
        &dirs,
        &mut rec,
        if flags.atomic {
            CommitMode::Atomic
        } else {
            CommitMode::Plain
        },
        flags.wait,
        flags.force,
        &Stderr,
    );
    let (conflicts, refused) = match result {
        Ok(forced) => (forced, false),
        Err(SessionError::Conflicts { conflicts, .. }) => (conflicts, true),
        Err(e) => return Err(e.into()),
    };
    if flags.json {
        let rows: Vec<serde_json::Value> = conflicts
            .iter()
            .map(|c| serde_json::json!({ "change": c.change, "path": c.path, "conflict": c.why }))
            .collect();
        // The commit is done or refused either way: a reader gone early does not change the
        // exit status that says which.
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&rows)?
        );
    }
    for c in &conflicts {
        eprintln!(
            "ovlrun: conflict: {} {}: {}",
            c.change.letter(),
            c.path.display(),
            c.why
        );
    }
    if refused {
        eprintln!(
            "ovlrun: session {} not committed: {} of the paths it changes changed in {} since \
             it began; nothing was applied and the session is kept; commit over them with \
             `ovlrun commit --force {}`, drop it with `ovlrun discard {}`",
            dirs.id.0,
            conflicts.len(),
            rec.rootfs.display(),
            dirs.id.0,
            dirs.id.0
        );
        return Ok(ExitCode::FAILURE);
    }
    eprintln!(
        "ovlrun: session {id} committed into {}{}",
        rec.rootfs.display(),
        if conflicts.is_empty() {
            String::new()
        } else {
            format!(", over {} conflicting paths", conflicts.len())
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `ovlrun discard ID`.
pub fn discard(id: &str) -> anyhow::Result<ExitCode> {
    let (dirs, _) = finished(id)?;
    // Files the session made as sub-ids are removable only in a namespace that maps them.
    ovlrun::sandbox::enter_owner_namespace()?;
    dirs.discard()
        .with_context(|| format!("cannot discard session {id}"))?;
    Ok(ExitCode::SUCCESS)
}

/// `ovlrun recover --rootfs DIR`.
pub fn recover(rootfs: &Path) -> anyhow::Result<ExitCode> {
    let rootfs = config::check_rootfs(rootfs)?;
    ovlrun::sandbox::enter_owner_namespace()?;
    let _lock = lock_and_recover(&state()?, &rootfs, Mode::Exclusive, false, &Stderr)?;
    eprintln!("ovlrun: {}: no interrupted commit left", rootfs.display());
    Ok(ExitCode::SUCCESS)
}

/// `ovlrun export ID -o FILE`.
pub fn export(id: &str, output: &Path) -> anyhow::Result<ExitCode> {
    let (_, rec) = finished(id)?;
    ovlrun::sandbox::enter_owner_namespace()?;
    complete_metacopies(&rec)?;
    let format = format_of(&rec)?;
    if output == Path::new("-") {
        let mut out = ovlrun::policy::export::export(&rec.upper, format, std::io::stdout().lock())?;
        std::io::Write::flush(&mut out)?;
    } else {
        // Written beside the target and renamed, so a failed export leaves no partial file.
        let tmp = output.with_extension("ovlrun-partial");
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let file =
            match ovlrun::policy::export::export(&rec.upper, format, std::io::BufWriter::new(file))
            {
                Ok(f) => f,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e.into());
                }
            };
        file.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, output)
            .with_context(|| format!("cannot write {}", output.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
