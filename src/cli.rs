//! The command line as typed: clap structures only, no checking beyond clap's.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Run a command in a private copy-on-write view of a root filesystem.
#[derive(Debug, Parser)]
#[command(name = "ovlrun", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve an overlay filesystem on MOUNTPOINT until it is unmounted or ovlrun gets
    /// SIGINT/SIGTERM.
    Mount(MountArgs),
}

/// `ovlrun mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// A read-only lower directory; repeat it or join with ':' (A:B:C), topmost first.
    #[arg(long = "lower", required = true, value_name = "DIR")]
    pub lowers: Vec<String>,
    /// The writable upper directory.
    #[arg(long, value_name = "DIR")]
    pub upper: PathBuf,
    /// The work directory, on the upper's filesystem [default: <UPPER>.work beside it].
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// How deletions are written to the upper [default: kernel where the upper can hold it,
    /// else aufs].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub whiteout: Option<Whiteout>,
    /// Threads serving requests [default: CPU count, 2 to 8].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Where to mount the merged view.
    pub mountpoint: PathBuf,
}

/// `--whiteout` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Whiteout {
    /// Char device 0:0 whiteouts and `user.overlay.opaque` (kernel overlayfs, userxattr).
    Kernel,
    /// `.wh.<name>` files and `.wh..wh..opq` (AUFS, OCI image layers).
    Aufs,
}
