//! runc's command line in the binary: parse, run the verb in the library's `runtime` room,
//! print its JSON or table, send errors and warnings to `--log` (text or JSON lines) as
//! well as stderr, and exit as runc does: 0, or 1 on any error (`run`: the container's
//! status).

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ovlrun::runtime::{self, Root};

use crate::cli::{CreateArgs, LogFormat, RuntimeCli, Verb};

/// runc's status for every error.
const EXIT_ERROR: u8 = 1;

/// Runs runc's command line `args` (without the program name).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let cli =
        match RuntimeCli::try_parse_from(std::iter::once(OsString::from("ovlrun")).chain(args)) {
            Ok(cli) => cli,
            Err(e) => {
                use clap::error::ErrorKind;
                if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                    let _ = e.print();
                    return ExitCode::SUCCESS;
                }
                eprintln!("ovlrun: {}", crate::usage_error::one_line(&e.to_string()));
                return ExitCode::from(EXIT_ERROR);
            }
        };
    let log = match Log::open(cli.log.as_deref(), cli.log_format) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("ovlrun: {e:#}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match verb(&cli, &log) {
        Ok(code) => code,
        // A reader that stopped early (`ovlrun features | head`) is no error.
        Err(e) if crate::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            log.error(&format!("{e:#}"));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn verb(cli: &RuntimeCli, log: &Log) -> anyhow::Result<ExitCode> {
    if let Some(code) = session_exec(cli)? {
        return Ok(code);
    }
    if matches!(cli.verb, Verb::Features) {
        print_json(&runtime::features::features())?;
        return Ok(ExitCode::SUCCESS);
    }
    let path = match &cli.root {
        Some(p) => p.clone(),
        None => Root::default_path()?,
    };
    let root = Root::open(&path)?;
    let refuse_systemd = || -> anyhow::Result<()> {
        anyhow::ensure!(
            !cli.systemd_cgroup,
            "--systemd-cgroup: ovlrun has no systemd cgroup driver (there is no systemd here); \
             use cgroupfs (podman: --cgroup-manager cgroupfs; containerd: SystemdCgroup = false)"
        );
        Ok(())
    };
    match &cli.verb {
        Verb::Create(args) => {
            refuse_systemd()?;
            let notes = runtime::create::create(&root, &args.id, &create_options(args))?;
            notes.iter().for_each(|n| log.warn(n));
        }
        Verb::Run { detach, create } => {
            refuse_systemd()?;
            let opts = runtime::run::RunOptions {
                create: create_options(create),
                detach: *detach,
            };
            let (code, notes) = runtime::run::run(&root, &create.id, &opts)?;
            notes.iter().for_each(|n| log.warn(n));
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(EXIT_ERROR)));
        }
        Verb::Start { id } => runtime::start::start(&root, id)?,
        Verb::State { id } => print_json(&runtime::state::state(&root, id)?)?,
        Verb::Kill { all, id, signal } => {
            let sig = runtime::kill::parse_signal(signal.as_deref().unwrap_or("SIGTERM"))?;
            runtime::kill::kill(&root, id, sig, *all)?;
        }
        Verb::Delete { force, id } => {
            let notes = runtime::delete::delete(&root, id, *force)?;
            notes.iter().for_each(|n| log.warn(n));
        }
        Verb::List { format, quiet } => list(&root, format, *quiet)?,
        Verb::Features => {}
        Verb::Pause { id } => runtime::pause::pause(&root, id)?,
        Verb::Resume { id } => runtime::pause::resume(&root, id)?,
        Verb::Ps {
            format,
            id,
            ps_options,
        } => ps(&root, id, format, ps_options)?,
        Verb::Exec {
            process,
            detach,
            pid_file,
            tty,
            console_socket,
            cwd,
            env,
            user,
            preserve_fds,
            id,
            args,
        } => {
            let opts = runtime::exec::ExecOptions {
                process: process.clone(),
                args: args.clone(),
                tty: *tty,
                cwd: cwd.clone(),
                env: env.clone(),
                user: user.clone(),
                detach: *detach,
                pid_file: pid_file.clone(),
                console_socket: console_socket.clone(),
                preserve_fds: *preserve_fds,
            };
            let (code, notes) = runtime::exec::exec(&root, id, &opts)?;
            notes.iter().for_each(|n| log.warn(n));
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(EXIT_ERROR)));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ovlrun exec ID|NAME [FLAGS] CMD...` of a running session (issue 16): an exec without
/// runc's global flags, `--process`, `--detach`, `--pid-file` or `--console-socket`, whose
/// id is no container of the default root but a session of the state root. `None`: runc's
/// exec (or another verb) then.
fn session_exec(cli: &RuntimeCli) -> anyhow::Result<Option<ExitCode>> {
    let Verb::Exec {
        process: None,
        detach: false,
        pid_file: None,
        tty,
        console_socket: None,
        cwd,
        env,
        user,
        preserve_fds: 0,
        id,
        args,
    } = &cli.verb
    else {
        return Ok(None);
    };
    if cli.root.is_some() || cli.log.is_some() {
        return Ok(None);
    }
    let is_container = Root::default_path().is_ok_and(|p| p.join(id).is_dir());
    let Ok(state) = ovlrun::config::state_root() else {
        return Ok(None);
    };
    if is_container || !ovlrun::session::exec::is_session(&state, id) {
        return Ok(None);
    }
    // `exec NAME -- CMD`: the first `--` ends exec's own flags.
    let argv = args.strip_prefix(&["--".to_owned()]).unwrap_or(args);
    let opts = ovlrun::session::exec::ExecOptions {
        argv: argv.iter().map(Into::into).collect(),
        tty: tty.then_some(true),
        user: user.clone(),
        env: env.clone(),
        cwd: cwd.clone(),
    };
    // A session's exec fails as ovlrun's own errors do (125), not as runc's (1).
    let code = if opts.argv.is_empty() {
        eprintln!(
            "ovlrun: exec {id}: no command (ovlrun exec ID|NAME [--tty] [--user U] [--env K=V] \
             [--cwd DIR] -- CMD...)"
        );
        125
    } else {
        match ovlrun::session::exec::exec(&state, id, &opts) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("ovlrun: {}", ovlrun::error_chain(&e));
                125
            }
        }
    };
    Ok(Some(ExitCode::from(u8::try_from(code).unwrap_or(125))))
}

fn create_options(args: &CreateArgs) -> runtime::create::CreateOptions {
    runtime::create::CreateOptions {
        bundle: args.bundle.clone(),
        pid_file: args.pid_file.clone(),
        console_socket: args.console_socket.clone(),
        preserve_fds: args.preserve_fds,
        no_pivot: args.no_pivot,
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// `ps`: the pids as a JSON array, or the lines of ps(1) (`-ef` by default) whose PID
/// column names one of them, under its header, as runc prints them.
fn ps(root: &Root, id: &str, format: &str, options: &[String]) -> anyhow::Result<()> {
    let pids = runtime::ps::pids(root, id)?;
    let mut out = std::io::stdout().lock();
    match format {
        "json" => {
            serde_json::to_writer(&mut out, &pids)?;
            writeln!(out)?;
        }
        "table" => {
            let args: Vec<&str> = if options.is_empty() {
                vec!["-ef"]
            } else {
                options.iter().map(String::as_str).collect()
            };
            let listed = std::process::Command::new("ps")
                .args(&args)
                .output()
                .context("cannot run ps")?;
            anyhow::ensure!(
                listed.status.success(),
                "ps {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&listed.stderr).trim()
            );
            let text = String::from_utf8_lossy(&listed.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or_default();
            let column = header
                .split_whitespace()
                .position(|h| h == "PID")
                .context("ps's output has no PID column")?;
            writeln!(out, "{header}")?;
            for line in lines {
                let pid = line
                    .split_whitespace()
                    .nth(column)
                    .and_then(|p| p.parse().ok());
                if pid.is_some_and(|p: i32| pids.contains(&p)) {
                    writeln!(out, "{line}")?;
                }
            }
        }
        other => anyhow::bail!("invalid format option {other:?}: table or json"),
    }
    Ok(())
}

/// `list`: runc's table (ID, PID, STATUS, BUNDLE, CREATED, OWNER), `--format json`, or
/// `--quiet` ids.
fn list(root: &Root, format: &str, quiet: bool) -> anyhow::Result<()> {
    let states = runtime::list::list(root);
    let mut out = std::io::stdout().lock();
    if quiet {
        for s in &states {
            writeln!(out, "{}", s.id)?;
        }
        return Ok(());
    }
    match format {
        "json" => {
            serde_json::to_writer(&mut out, &states)?;
            writeln!(out)?;
        }
        "table" => {
            writeln!(
                out,
                "{:<12} {:<8} {:<10} {:<40} {:<32} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            )?;
            for s in &states {
                writeln!(
                    out,
                    "{:<12} {:<8} {:<10} {:<40} {:<32} {}",
                    s.id,
                    s.pid,
                    s.status,
                    s.bundle.display(),
                    s.created,
                    s.owner
                )?;
            }
        }
        other => anyhow::bail!("invalid format option {other:?}: table or json"),
    }
    Ok(())
}

/// Where errors and warnings go: stderr always (errors), and `--log` in its format.
struct Log {
    file: Option<File>,
    json: bool,
}

impl Log {
    fn open(path: Option<&std::path::Path>, format: LogFormat) -> anyhow::Result<Log> {
        let file = match path {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("--log {}", p.display()))?,
            ),
            None => None,
        };
        Ok(Log {
            file,
            json: format == LogFormat::Json,
        })
    }

    fn error(&self, msg: &str) {
        eprintln!("ovlrun: {msg}");
        self.write("error", msg);
    }

    fn warn(&self, msg: &str) {
        if self.file.is_none() {
            eprintln!("ovlrun: note: {msg}");
        }
        self.write("warning", msg);
    }

    fn write(&self, level: &str, msg: &str) {
        let Some(mut file) = self.file.as_ref() else {
            return;
        };
        let time = runtime::time_now();
        let line = if self.json {
            serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
        } else {
            format!(
                "time={} level={level} msg={}",
                serde_json::Value::from(time),
                serde_json::Value::from(msg)
            )
        };
        // One write per line, so lines of concurrent calls do not interleave.
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}
