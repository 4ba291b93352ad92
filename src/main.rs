//! The `ovlrun` binary: parse, run, report, exit. Exit codes live here and nowhere else:
//! 0 success, 125 ovlrun's own error (bad input included), the rest per command.

mod cli;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

use cli::{Cli, Command, MountArgs, Whiteout};
use ovlrun::layers::WhiteoutFormat;
use ovlrun::mount::OverlayBuilder;

/// ovlrun's own failure, as container runtimes report it.
const EXIT_OWN_ERROR: u8 = 125;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ovlrun: {err:#}");
            ExitCode::from(EXIT_OWN_ERROR)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Mount(args) => mount(args),
    }
}

fn mount(args: MountArgs) -> anyhow::Result<ExitCode> {
    let mut builder = OverlayBuilder::new().upper(&args.upper);
    for lower in args
        .lowers
        .iter()
        .flat_map(|l| l.split(':'))
        .filter(|l| !l.is_empty())
    {
        builder = builder.lower(lower);
    }
    if let Some(work) = &args.work {
        builder = builder.work(work);
    }
    if let Some(w) = args.whiteout {
        builder = builder.whiteout(match w {
            Whiteout::Kernel => WhiteoutFormat::Kernel,
            Whiteout::Aufs => WhiteoutFormat::Aufs,
        });
    }
    if let Some(n) = args.threads {
        builder = builder.threads(n);
    }
    // Blocked before any thread exists, so every thread inherits the mask and the signals
    // reach only the sigwait below.
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        signals.add(s);
    }
    signals.thread_block().context("cannot block signals")?;
    let handle = builder.mount(&args.mountpoint)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            let _ = tx.send(sig);
        }
    });
    // Ends on a signal, or when the filesystem was unmounted from outside.
    while !handle.is_finished() {
        match rx.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(_) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    handle.unmount()?;
    Ok(ExitCode::SUCCESS)
}
