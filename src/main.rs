//! The `ovlrun` binary: parse, run, report, exit. Exit codes live here and nowhere else:
//! 0 success, 125 ovlrun's own error (bad input included), the rest per command.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

mod sessions;
mod stderr;
mod usage_error;
mod verbs;

use cli::{Cli, Command, MountArgs, RunArgs};
use ovlrun::config::OciSettings;
use ovlrun::config::{self, SessionPlan};
use ovlrun::mount::OverlayBuilder;
use ovlrun::session::{Ended, Failed, RunOptions};

/// ovlrun's own failure, as container runtimes report it.
const EXIT_OWN_ERROR: u8 = 125;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if cli::is_runtime(&args) {
        return verbs::main(args);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                // A write error here is a reader gone early (`ovlrun --help | head`).
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line naming the flag and the problem, like every other ovlrun error.
            eprintln!("ovlrun: {}", usage_error::one_line(&e.to_string()));
            return ExitCode::from(EXIT_OWN_ERROR);
        }
    };
    match run(cli) {
        Ok(code) => code,
        // A reader that stopped early (`ovlrun diff ID | head`) is no error to report.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ovlrun: {err:#}");
            ExitCode::from(EXIT_OWN_ERROR)
        }
    }
}

/// True when `err` comes from writing to a closed pipe.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Mount(args)) => mount(args),
        Some(Command::Run(cmd)) => run_command(*cmd),
        Some(Command::Doctor { rootfs }) => doctor(rootfs.as_deref()),
        Some(Command::Ls { json }) => sessions::ls(json),
        Some(Command::Diff {
            id,
            json,
            conflicts,
        }) => sessions::diff(&id, json, conflicts),
        Some(Command::Commit {
            id,
            force,
            json,
            atomic,
            wait,
        }) => sessions::commit(
            &id,
            sessions::CommitFlags {
                atomic,
                wait,
                force,
                json,
            },
        ),
        Some(Command::Discard {
            ids,
            all,
            older_than,
        }) => sessions::discard(&ids, all, older_than.as_deref()),
        Some(Command::Export { id, output }) => sessions::export(&id, &output),
        Some(Command::Recover { rootfs }) => sessions::recover(&rootfs),
        Some(Command::Spec { rootfs }) => spec(&rootfs),
        None => session(cli.run),
    }
}

/// Exit 0 when nothing blocks a session, 1 when a check found a problem.
fn doctor(rootfs: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let mut report = ovlrun::doctor::run();
    report.checks.extend(rootfs.map(ovlrun::doctor::rootfs));
    write!(std::io::stdout(), "{report}")?;
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `ovlrun run`: a session, possibly on a kept session's changes or from an OCI bundle.
fn run_command(cmd: cli::RunCommand) -> anyhow::Result<ExitCode> {
    let mut args = cmd.run;
    if let Some(bundle) = cmd.bundle {
        args.config = Some(bundle.join("config.json"));
    }
    let mut layers = Vec::new();
    if let Some(id) = &cmd.resume {
        let state = config::state_root()?;
        let (dirs, rec) = ovlrun::session::SessionDirs::open(&state, id)?;
        args.rootfs = Some(rec.rootfs);
        args.upper = Some(dirs.upper);
        layers = rec.layers;
    }
    session_with(args, cmd.resume, layers)
}

/// Runs a session; its exit status is the command's.
fn session(args: RunArgs) -> anyhow::Result<ExitCode> {
    session_with(args, None, Vec::new())
}

/// A session; `layers` over its rootfs are a resumed session's own.
fn session_with(
    args: RunArgs,
    resume: Option<String>,
    layers: Vec<std::path::PathBuf>,
) -> anyhow::Result<ExitCode> {
    let Some(status) = args.json_status.clone() else {
        return exit_of(session_run(args, resume, layers));
    };
    let result = session_run(args, resume, layers);
    let (ended, error) = match &result {
        Ok(ended) => (Some(ended), None),
        Err(e @ SessionFailed::Setup(_)) => (None, Some(ovlrun::error_chain(e))),
        Err(SessionFailed::Run(f)) => (f.ended.as_deref(), Some(ovlrun::error_chain(f))),
    };
    let json = ovlrun::session::ended::status_json(ended, error.as_deref());
    if let Err(e) = ovlrun::session::ended::write_status(&status, &json) {
        // The session's own error comes first: it says what happened to the changes.
        if let Err(run) = result {
            eprintln!("ovlrun: {:#}", anyhow::Error::from(run));
        }
        anyhow::bail!("cannot write --json-status {}: {e}", status.display());
    }
    exit_of(result)
}

fn session_run(
    mut args: RunArgs,
    resume: Option<String>,
    mut layers: Vec<std::path::PathBuf>,
) -> Result<Ended, SessionFailed> {
    if let Some(id) = &args.layer {
        let state = config::state_root().map_err(anyhow::Error::from)?;
        let stack = ovlrun::session::stack_of(&state, id).map_err(anyhow::Error::from)?;
        args.rootfs = Some(stack.rootfs);
        layers = stack.layers;
    }
    // Read first: nothing is created before the config is valid.
    let oci = match &args.config {
        Some(path) => config::load(path).map_err(anyhow::Error::from)?,
        None => OciSettings::default(),
    };
    let opts = RunOptions {
        policy: config::chosen_policy(args.policy.map(Into::into), resume.is_some(), oci.policy),
        upper: args.upper.clone().or_else(|| oci.upper.clone()),
        wait: args.wait,
        resume,
        commit_on: args.commit_on.into(),
        name: args.name.clone(),
    };
    let mut flags = args.into_flags();
    flags.layers = layers;
    let plan = SessionPlan::from_flags(flags, oci).map_err(anyhow::Error::from)?;
    Ok(ovlrun::session::run(&plan, &opts, &stderr::Stderr)?)
}

/// A session that did not end well: before it had begun (reading the config, the flags) or
/// while it ran.
#[derive(Debug, thiserror::Error)]
enum SessionFailed {
    #[error(transparent)]
    Setup(#[from] anyhow::Error),
    #[error(transparent)]
    Run(#[from] Failed),
}

/// The exit status of a session: the command's, or ovlrun's own error.
fn exit_of(result: Result<Ended, SessionFailed>) -> anyhow::Result<ExitCode> {
    let ended = result?;
    let code = ended.code.unwrap_or(i32::from(EXIT_OWN_ERROR));
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(EXIT_OWN_ERROR)))
}

/// `ovlrun spec`: a starting config.json on stdout.
fn spec(rootfs: &std::path::Path) -> anyhow::Result<ExitCode> {
    let rootfs = rootfs
        .to_str()
        .with_context(|| format!("--rootfs {}: not UTF-8", rootfs.display()))?;
    writeln!(std::io::stdout(), "{}", config::starting_config(rootfs))?;
    Ok(ExitCode::SUCCESS)
}

fn mount(args: MountArgs) -> anyhow::Result<ExitCode> {
    let lowers: Vec<std::path::PathBuf> = args
        .lowers
        .iter()
        .flat_map(|l| l.split(':'))
        .filter(|l| !l.is_empty())
        .map(Into::into)
        .collect();
    let mut builder = OverlayBuilder::new().upper(&args.upper);
    for lower in &lowers {
        builder = builder.lower(lower);
    }
    if let Some(work) = &args.work {
        builder = builder.work(work);
    }
    if let Some(w) = args.whiteout {
        builder = builder.whiteout(w.into());
    }
    if let Some(n) = args.threads {
        builder = builder.threads(n);
    }
    // Durable unless told: an upper given to `ovlrun mount` is the user's to keep, and no
    // session syncs it at the end.
    builder = builder
        .passthrough(args.passthrough.into())
        .durable(!args.volatile);
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
    if matches!(args.fs, cli::FsArg::Kernel | cli::FsArg::Auto) {
        let work = args
            .work
            .clone()
            .unwrap_or_else(|| ovlrun::mount::default_work(&args.upper));
        std::fs::create_dir_all(&work)
            .with_context(|| format!("cannot create {}", work.display()))?;
        let k = ovlrun::mount::KernelMount::mount_with(
            &lowers,
            &args.upper,
            &work,
            &args.mountpoint,
            args.volatile,
        )
        .with_context(|| {
            format!(
                "the kernel overlayfs refused to mount on {}",
                args.mountpoint.display()
            )
        })?;
        signals.wait().context("cannot wait for a signal")?;
        k.unmount()
            .with_context(|| format!("cannot unmount {}", args.mountpoint.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
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
