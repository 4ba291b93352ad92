//! The `ovlrun` binary: parse, run, report, exit. Exit codes live here and nowhere else:
//! 0 success, 125 ovlrun's own error (bad input included), the rest per command.

mod cli;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

mod sessions;
mod stderr;

use cli::{Cli, Command, CommitOnArg, MountArgs, Net, PolicyArg, RunArgs, Whiteout};
use ovlrun::config::oci::OciSettings;
use ovlrun::config::{self, Network, SessionPlan, UserNs};
use ovlrun::layers::WhiteoutFormat;
use ovlrun::mount::{Backend, OverlayBuilder, PassthroughMode};
use ovlrun::policy::{CommitOn, Policy};
use ovlrun::session::run::RunOptions;

/// ovlrun's own failure, as container runtimes report it.
const EXIT_OWN_ERROR: u8 = 125;

fn main() -> ExitCode {
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
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line naming the flag and the problem, like every other ovlrun error.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!(
                "ovlrun: {} (see ovlrun --help)",
                first.trim_start_matches("error: ")
            );
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
        Some(Command::Doctor) => Ok(doctor()),
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
        Some(Command::Discard { id }) => sessions::discard(&id),
        Some(Command::Export { id, output }) => sessions::export(&id, &output),
        Some(Command::Recover { rootfs }) => sessions::recover(&rootfs),
        Some(Command::Spec { rootfs }) => spec(&rootfs),
        None => session(cli.run),
    }
}

/// Exit 0 when nothing blocks a session, 1 when a check found a problem.
fn doctor() -> ExitCode {
    let report = ovlrun::doctor::run();
    print!("{report}");
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `ovlrun run`: a session, possibly on a kept session's changes or from an OCI bundle.
fn run_command(cmd: cli::RunCommand) -> anyhow::Result<ExitCode> {
    let mut args = cmd.run;
    if let Some(bundle) = cmd.bundle {
        args.config = Some(bundle.join("config.json"));
    }
    if let Some(id) = &cmd.resume {
        let state = config::state_root()?;
        let (dirs, rec) = ovlrun::session::SessionDirs::open(&state, id)?;
        args.rootfs = Some(rec.rootfs);
        args.upper = Some(dirs.upper);
    }
    session_with(args, cmd.resume)
}

/// Runs a session; its exit status is the command's.
fn session(args: RunArgs) -> anyhow::Result<ExitCode> {
    session_with(args, None)
}

fn session_with(args: RunArgs, resume: Option<String>) -> anyhow::Result<ExitCode> {
    // Read first: nothing is created before the config is valid.
    let oci = match &args.config {
        Some(path) => config::oci::load(path)?,
        None => OciSettings::default(),
    };
    let policy = match (args.policy, &resume) {
        (Some(p), _) => policy_of(p),
        // Resuming must never throw the kept work away unless asked to on the command line.
        (None, Some(_)) => Policy::Preserve,
        (None, None) => oci.policy.unwrap_or(Policy::Discard),
    };
    let opts = RunOptions {
        policy,
        upper: args.upper.clone().or_else(|| oci.upper.clone()),
        wait: args.wait,
        resume,
        commit_on: match args.commit_on {
            CommitOnArg::Success => CommitOn::Success,
            CommitOnArg::Always => CommitOn::Always,
        },
    };
    let plan = plan(args, oci)?;
    let code = ovlrun::session::run::run(&plan, &opts, &stderr::Stderr)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(EXIT_OWN_ERROR)))
}

fn policy_of(p: PolicyArg) -> Policy {
    match p {
        PolicyArg::Preserve => Policy::Preserve,
        PolicyArg::Discard => Policy::Discard,
        PolicyArg::Commit => Policy::Commit,
        PolicyArg::CommitAtomic => Policy::CommitAtomic,
        PolicyArg::Ask => Policy::Ask,
    }
}

/// Turns the flags, over the config file's settings `oci`, into a validated plan (nothing
/// is created before it is valid). A flag given wins over the file; list flags (`--bind`,
/// `--tmpfs`, `--env`, `--cap-add`, `--cap-drop`) add to it.
fn plan(args: RunArgs, oci: OciSettings) -> anyhow::Result<SessionPlan> {
    let rootfs_arg = args
        .rootfs
        .or(oci.rootfs)
        .context("--rootfs DIR (or --config FILE with root.path) is required")?;
    let rootfs = config::check_rootfs(&rootfs_arg)?;
    let root = nix::unistd::geteuid().is_root();
    let userns = match (args.no_userns, root) {
        (false, _) => oci.userns.unwrap_or(UserNs::New),
        (true, true) => UserNs::Host,
        (true, false) => return Err(config::PlanError::NoUsernsUnprivileged.into()),
    };
    let mut binds = oci.binds;
    for b in &args.bind {
        binds.push(config::parse_bind(b)?);
    }
    if let Some(cwd) = &args.cwd {
        check_absolute("--cwd", cwd)?;
    }
    for t in &args.tmpfs {
        check_absolute("--tmpfs", t)?;
    }
    let cwd = args.cwd.or(oci.cwd).unwrap_or_else(|| "/".into());
    let mut tmpfs = oci.tmpfs;
    tmpfs.extend(args.tmpfs);
    let uid = config::check_id("--uid", args.uid.or(oci.uid).unwrap_or(0))?;
    let gid = config::check_id("--gid", args.gid.or(oci.gid).unwrap_or(0))?;
    // The file's sets first, then the flags: a flag undoes the file's opposite choice.
    let mut capabilities = oci
        .capabilities
        .unwrap_or_else(|| config::CapabilitySets::container_default(uid));
    for c in &args.cap_add {
        capabilities.add(&config::parse_capability("--cap-add", c)?, uid);
    }
    for c in &args.cap_drop {
        capabilities.drop(&config::parse_capability("--cap-drop", c)?);
    }
    let home = if uid == 0 { "/root" } else { "/" };
    let mut env: Vec<OsString> = match oci.env {
        // The file's environment is the whole environment, as for any OCI runtime.
        Some(env) => env,
        None if args.clear_env => config::default_env(home),
        None => std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k;
                kv.push("=");
                kv.push(v);
                kv
            })
            .collect(),
    };
    for kv in &args.env {
        let Some((key, _)) = kv.split_once('=') else {
            return Err(config::PlanError::Env(kv.clone()).into());
        };
        let prefix = format!("{key}=");
        env.retain(|e| !e.as_bytes().starts_with(prefix.as_bytes()));
        env.push(kv.into());
    }
    let hostname = args.hostname.or(oci.hostname).unwrap_or_else(|| {
        std::fs::read_to_string(rootfs.join("etc/hostname"))
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "ovlrun".into())
    });
    let net = match args.net {
        Some(Net::Host) => Network::Host,
        Some(Net::None) => Network::None,
        None => oci.net.unwrap_or(Network::Host),
    };
    config::check_preserved_fds(args.preserve_fds)?;
    let mut rlimits = oci.rlimits;
    for value in &args.rlimit {
        let r = config::parse_rlimit(value)?;
        rlimits.retain(|old| old.resource != r.resource);
        rlimits.push(r);
    }
    let mut sysctl = oci.sysctl;
    for value in &args.sysctl {
        let (key, val) = config::parse_sysctl(value, net)?;
        sysctl.retain(|(k, _)| *k != key);
        sysctl.push((key, val));
    }
    for p in args.mask.iter().chain(&args.read_only_paths) {
        let flag = if args.mask.contains(p) {
            "--mask"
        } else {
            "--ro"
        };
        check_absolute(flag, p)?;
    }
    let mut masked_paths = config::default_masked_paths();
    masked_paths.extend(oci.masked_paths);
    masked_paths.extend(args.mask);
    let mut readonly_paths: Vec<std::path::PathBuf> = config::DEFAULT_READONLY_PATHS
        .iter()
        .map(std::path::PathBuf::from)
        .collect();
    readonly_paths.extend(oci.readonly_paths);
    readonly_paths.extend(args.read_only_paths);
    for list in [&mut masked_paths, &mut readonly_paths] {
        let mut seen = std::collections::HashSet::new();
        list.retain(|p| seen.insert(p.clone()));
    }
    let seccomp = match &args.seccomp {
        Some(value) => config::seccomp::parse_flag(value)?,
        None => oci
            .seccomp
            .map_or(config::Seccomp::Default, config::Seccomp::Profile),
    };
    let argv = if !args.cmd.is_empty() {
        args.cmd
    } else {
        oci.args.unwrap_or_else(|| vec![OsString::from("/bin/sh")])
    };
    Ok(SessionPlan {
        rootfs,
        argv,
        env,
        cwd,
        hostname,
        uid,
        gid,
        userns,
        net,
        binds,
        tmpfs,
        capabilities,
        state_root: config::state_root()?,
        fs: match args.fs {
            Some(cli::FsArg::Auto) => Backend::Auto,
            Some(cli::FsArg::Kernel) => Backend::Kernel,
            Some(cli::FsArg::Fuse) => Backend::Fuse,
            None => oci.fs.unwrap_or(Backend::Auto),
        },
        terminal: config::Terminal::chosen(args.tty, args.no_tty, oci.terminal),
        seccomp,
        preserve_fds: args.preserve_fds,
        rlimits,
        masked_paths,
        readonly_paths,
        read_only_root: args.read_only || oci.read_only_root,
        no_new_privs: oci.no_new_privs.unwrap_or(true),
        sysctl,
        oom_score_adj: oci.oom_score_adj,
    })
}

fn check_absolute(flag: &'static str, path: &std::path::Path) -> Result<(), config::PlanError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(config::PlanError::NotAbsolute {
            flag,
            value: path.display().to_string(),
        })
    }
}

/// `ovlrun spec`: a starting config.json on stdout.
fn spec(rootfs: &std::path::Path) -> anyhow::Result<ExitCode> {
    let rootfs = rootfs
        .to_str()
        .with_context(|| format!("--rootfs {}: not UTF-8", rootfs.display()))?;
    println!("{}", config::oci::starting_config(rootfs));
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
        builder = builder.whiteout(match w {
            Whiteout::Kernel => WhiteoutFormat::Kernel,
            Whiteout::Aufs => WhiteoutFormat::Aufs,
        });
    }
    if let Some(n) = args.threads {
        builder = builder.threads(n);
    }
    builder = builder.passthrough(match args.passthrough {
        cli::Passthrough::Off => PassthroughMode::Off,
        cli::Passthrough::Upper => PassthroughMode::Upper,
        cli::Passthrough::All => PassthroughMode::All,
    });
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
            .unwrap_or_else(|| ovlrun::layers::default_work(&args.upper));
        std::fs::create_dir_all(&work)
            .with_context(|| format!("cannot create {}", work.display()))?;
        let k = ovlrun::mount::kernel::KernelMount::mount(
            &lowers,
            &args.upper,
            &work,
            &args.mountpoint,
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
