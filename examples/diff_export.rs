//! Lists the changes of a kept session and exports them as an OCI layer tarball.
//!
//! ```text
//! cargo run --example diff_export -- ID [STATE] [OUTPUT]
//! ```
//!
//! ID is a kept session (made with `--policy preserve`, or the `run_session` example);
//! STATE defaults to ovlrun's state root; OUTPUT to `ID.tar` in the current directory.

use std::error::Error;
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use ovlrun::layers::OverlayConfig;
use ovlrun::policy::{export, names, plan};
use ovlrun::session::SessionDirs;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args_os().skip(1);
    let id = args
        .next()
        .ok_or("usage: diff_export ID [STATE] [OUTPUT]")?;
    let id = id.to_str().ok_or("a session id is ASCII")?;
    let state = match args.next() {
        Some(dir) => PathBuf::from(dir),
        None => ovlrun::config::state_root()?,
    };
    let output = args
        .next()
        .map_or_else(|| PathBuf::from(format!("{id}.tar")), PathBuf::from);

    // A kept session: not running, so its upper is a plain directory to read.
    let (_, rec) = SessionDirs::open_finished(&state, id)?;
    // A non-root caller reads files the session made as its subordinate ids.
    ovlrun::sandbox::enter_owner_namespace()?;
    let format = ovlrun::session::upper::format_of(&rec)?;
    // Metadata-only copies a killed server left get their data first.
    ovlrun::layers::complete_metacopies(&OverlayConfig {
        lowers: vec![rec.rootfs.clone()],
        upper: rec.upper.clone(),
        work: Some(rec.work.clone()),
        whiteout: Some(format),
    })?;

    let diff = plan::plan(&rec.rootfs, &rec.upper, format)?;
    println!("session {id}: {} changes", diff.changes.len());
    for (change, path) in &diff.changes {
        println!("{} {}", change.letter(), names::quote(path));
    }
    let tar = export::export(&rec.upper, format, BufWriter::new(File::create(&output)?))?;
    tar.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    println!("exported to {}", output.display());
    Ok(())
}
