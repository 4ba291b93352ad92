//! Runs a command in a session over a rootfs and applies a policy to its changes.
//!
//! ```text
//! cargo run --example run_session -- [ROOTFS] [STATE] [POLICY]
//! ```
//!
//! ROOTFS defaults to `examples/rootfs`, STATE to ovlrun's state root (`$OVLRUN_STATE`, ...),
//! POLICY to `discard` (or `preserve`, `commit`, `commit-atomic`). The command writes a file
//! in `/root` and prints it. Needs root, or subordinate ids, and `/dev/fuse`.

use std::error::Error;
use std::ffi::OsString;
use std::path::PathBuf;

use ovlrun::config::SessionPlan;
use ovlrun::policy::{Change, CommitOn, Policy};
use ovlrun::session::report::{CommitSize, Note, Progress, Report, Silent};
use ovlrun::session::{RunOptions, run};

/// Prints what the session says; a kept session's id on a line of its own.
struct Stdout;

impl Report for Stdout {
    fn note(&self, note: Note<'_>) {
        match note {
            Note::Kept { id, .. } => println!("kept session {id}"),
            other => println!("note: {other}"),
        }
    }

    fn commit_progress(&self, size: CommitSize) -> Box<dyn Progress + '_> {
        println!("committing {} changes", size.changes);
        Box::new(Silent)
    }

    fn ask(&self, _: &str, _: &[(Change, PathBuf)]) -> Policy {
        Policy::Preserve
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args_os().skip(1);
    let rootfs = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rootfs")));
    let state = match args.next() {
        Some(dir) => PathBuf::from(dir),
        None => ovlrun::config::state_root()?,
    };
    let name = args.next().unwrap_or_else(|| OsString::from("discard"));
    let policy = Policy::parse(&name.to_string_lossy()).ok_or("unknown policy")?;

    // The rootfs must be absolute, as a validated plan's is.
    let rootfs = std::path::absolute(rootfs)?;
    let script = "echo hello from $(hostname) > /root/hello && cat /root/hello";
    let argv = ["/bin/sh", "-c", script].map(OsString::from).to_vec();
    let plan = SessionPlan::new(rootfs, argv, state);
    let opts = RunOptions {
        policy,
        upper: None,
        wait: false,
        resume: None,
        commit_on: CommitOn::Success,
        name: None,
    };
    let code = run(&plan, &opts, &Stdout)?.code.unwrap_or(125);
    println!("policy {}: the command exited with {code}", policy.name());
    std::process::exit(code)
}
