//! The commands on kept sessions: ls, diff, commit, discard, recover.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use ovlrun::config;
use ovlrun::policy::{self, CommitMode};
use ovlrun::session::{Kept, KeptError, Record, SessionDirs, SessionError, Status};

use crate::stderr::Stderr;

fn state() -> anyhow::Result<std::path::PathBuf> {
    Ok(config::state_root()?)
}

/// `ovlrun ls`.
pub fn ls(json: bool) -> anyhow::Result<ExitCode> {
    let state = state()?;
    let sessions = SessionDirs::list(&state);
    let mut out = std::io::stdout().lock();
    let status = |r: &Record| {
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
                v["name"] = r.name.clone().into();
                v["command"] = r.command.clone().into();
                v["size"] = d.upper_size().into();
                v
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = sessions
        .iter()
        .filter_map(|(_, r)| r.name.as_ref().map(String::len))
        .max()
        .unwrap_or(0)
        .max(4);
    writeln!(
        out,
        "{:<12}  {:<width$}  {:<10} {:<6} {:>5} {:>7}  ROOTFS",
        "ID", "NAME", "STATUS", "FS", "AGE", "SIZE"
    )?;
    for (d, r) in &sessions {
        writeln!(
            out,
            "{:<12}  {:<width$}  {:<10} {:<6} {:>5} {:>7}  {}{}",
            r.id,
            r.name.as_deref().unwrap_or("-"),
            status(r),
            r.fs.name(),
            age(r.age()),
            size(d.upper_size()),
            r.rootfs.display(),
            match r.layers.len() {
                0 => String::new(),
                1 => " (+1 layer)".to_owned(),
                n => format!(" (+{n} layers)"),
            }
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

/// `ovlrun diff ID`; `conflicts`: only the changes that conflict with the rootfs.
pub fn diff(id: &str, json: bool, conflicts: bool) -> anyhow::Result<ExitCode> {
    // A running session's server owns its upper; it completes the copies at its end.
    let kept = Kept::peek(&state()?, id)?;
    let mut p = kept.diff()?;
    let mut why = std::collections::HashMap::new();
    if conflicts {
        for c in kept.conflicts(&p)? {
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
                let mut row = policy::json_fields(path);
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
            writeln!(out, "{} {}", c.letter(), policy::quote(path))?;
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
    let mut kept = Kept::open(&state()?, id)?;
    let result = kept.commit(
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
        Err(KeptError::Session(SessionError::Conflicts { conflicts, .. })) => (conflicts, true),
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
    let rec = kept.record();
    if refused {
        let id = kept.id();
        eprintln!(
            "ovlrun: session {} not committed: {} of the paths it changes changed in {} since \
             it began; nothing was applied and the session is kept; commit over them with \
             `ovlrun commit --force {}`, drop it with `ovlrun discard {}`",
            id,
            conflicts.len(),
            rec.rootfs.display(),
            id,
            id
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

/// `ovlrun discard ID... | --all | --older-than DURATION`: every session it can, each
/// failure named; the exit status is 1 when one of several failed (one session named fails
/// as ovlrun's own error).
pub fn discard(ids: &[String], all: bool, older_than: Option<&str>) -> anyhow::Result<ExitCode> {
    let state = state()?;
    let older_than = older_than
        .map(|d| config::parse_duration("--older-than", d))
        .transpose()?;
    let chosen: Vec<String> = if all || older_than.is_some() {
        // Only finished sessions: a running one is never taken by a sweep.
        SessionDirs::list(&state)
            .into_iter()
            .filter(|(_, r)| r.status != Status::Running || r.is_orphaned())
            .filter(|(_, r)| older_than.is_none_or(|d| r.age() >= d.as_secs()))
            .map(|(_, r)| r.id.to_string())
            .collect()
    } else {
        ids.to_vec()
    };
    // Files the session made as sub-ids are removable only in a namespace that maps them.
    let discard_one = |id: &str| -> anyhow::Result<()> {
        Kept::open(&state, id)
            .and_then(Kept::discard)
            .with_context(|| format!("cannot discard session {id}"))
    };
    if let ([id], false) = (chosen.as_slice(), all || older_than.is_some()) {
        // One session named: its failure is the command's own error, as for other verbs.
        discard_one(id)?;
        return Ok(ExitCode::SUCCESS);
    }
    // Rounds until nothing more goes: a session another stands on (`--layer`) goes in a later
    // round, once that one has.
    let mut left = chosen;
    loop {
        let before = left.len();
        let mut errors = Vec::new();
        left.retain(|id| match discard_one(id) {
            Ok(()) => false,
            Err(e) => {
                errors.push(format!("ovlrun: {e:#}"));
                true
            }
        });
        if left.is_empty() || left.len() == before {
            errors.iter().for_each(|e| eprintln!("{e}"));
            break;
        }
    }
    Ok(if left.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `ovlrun recover --rootfs DIR`.
pub fn recover(rootfs: &Path) -> anyhow::Result<ExitCode> {
    let rootfs = config::check_rootfs(rootfs)?;
    ovlrun::session::recover(&state()?, &rootfs, &Stderr)?;
    eprintln!("ovlrun: {}: no interrupted commit left", rootfs.display());
    Ok(ExitCode::SUCCESS)
}

/// `ovlrun export ID -o FILE`.
pub fn export(id: &str, output: &Path) -> anyhow::Result<ExitCode> {
    let kept = Kept::open(&state()?, id)?;
    if output == Path::new("-") {
        let mut out = kept.export(std::io::stdout().lock())?;
        std::io::Write::flush(&mut out)?;
    } else {
        // Written beside the target and renamed, so a failed export leaves no partial file.
        let tmp = output.with_extension("ovlrun-partial");
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", output.display()))?;
        let file = match kept.export(std::io::BufWriter::new(file)) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
        file.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot write {}", output.display()))?;
        std::fs::rename(&tmp, output)
            .with_context(|| format!("cannot write {}", output.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
