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

use ovlrun::policy;
use ovlrun::session::Kept;

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

    // A kept session, not running; opening it enters the owner's namespace, so a non-root
    // caller reads the files the session made as its subordinate ids.
    let kept = Kept::open(&state, id)?;
    let diff = kept.diff()?;
    println!("session {id}: {} changes", diff.changes.len());
    for (change, path) in &diff.changes {
        println!("{} {}", change.letter(), policy::quote(path));
    }
    let tar = kept.export(BufWriter::new(File::create(&output)?))?;
    tar.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    println!("exported to {}", output.display());
    Ok(())
}
