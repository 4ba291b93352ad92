//! The command line as typed: clap structures only, no checking beyond clap's.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use ovlrun::config::{Flags, Network};
use ovlrun::mount::WhiteoutFormat;
use ovlrun::mount::{Backend, PassthroughMode};
use ovlrun::policy::{CommitOn, Policy};

/// Run a command in a private copy-on-write view of a root filesystem.
///
/// `ovlrun --rootfs DIR [--] CMD [ARGS...]` runs CMD (default: /bin/sh) in new user, mount,
/// pid, uts and ipc namespaces, over an overlay whose lower is DIR: DIR is not modified while
/// it runs. When it exits, `--policy` decides what happens to its changes (default: discard).
///
/// ovlrun is also an OCI runtime with runc's command line, for podman, containerd, docker
/// and buildah: `ovlrun [--root DIR] [--log FILE] [--log-format json] VERB ...` with VERB one
/// of create, start, state, kill, delete, exec, ps, pause, resume, list, features (`ovlrun
/// create --help`). runc's `run ID` needs a runtime flag before it (`ovlrun --root DIR run
/// --bundle B ID`); a plain `ovlrun run` is a session.
#[derive(Debug, Parser)]
#[command(
    name = "ovlrun",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// What to do besides running a session.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Running a session.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Running a command in a session.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The root filesystem to run in (not modified while the session runs); `A:B:C` stacks
    /// read-only trees, topmost first, as the kernel's lowerdir does (a session over several
    /// trees cannot be committed: diff, export or keep it).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Run over a kept session's changes, read-only, without changing them: the session's
    /// rootfs with its upper (and its own layers) stacked over it, as image layers are. The
    /// new session's changes are its own, to diff, export or keep, and the session it stands
    /// on cannot be discarded, committed or resumed while this one exists.
    #[arg(long, value_name = "SESSION", conflicts_with = "rootfs")]
    pub layer: Option<String>,
    /// Read the session from an OCI runtime-spec config.json; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do with the changes when the command exits: discard (the default; preserve
    /// for `run --resume`), preserve (keep them as a session to diff, commit or discard
    /// later), commit (merge into the rootfs), commit-atomic (merge, journaled: a crash
    /// leaves the old or the new tree), ask (on a terminal, show the changes and ask).
    #[arg(long, value_enum)]
    pub policy: Option<PolicyArg>,
    /// Which runs `--policy commit` and `commit-atomic` commit: success (the command exited
    /// 0; any other run is kept as a session, to commit with `ovlrun commit ID` or drop), or
    /// always (every run, even a failed or killed command's half-done changes).
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = CommitOnArg::Success)]
    pub commit_on: CommitOnArg,
    /// Use this directory as the session's upper (kept by preserve; its work directory goes
    /// beside it). It must be new, empty or an upper ovlrun made, and must not be, hold or
    /// sit inside the rootfs or the state root.
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,
    /// Wait for the rootfs lock (a commit waits for running sessions, a session for a
    /// commit) instead of failing.
    #[arg(long)]
    pub wait: bool,
    /// Name the session: usable wherever an id is (diff, commit, export, discard,
    /// run --resume, --layer), unique among the sessions of the state root. Letters, digits,
    /// '_', '.' and '-', at most 64. A whole id wins over a name, a name over an id's start.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// When the session ends (also when it cannot start), write its result to FILE as JSON:
    /// id, backend, exit_code and signal, outcome (kept, discarded, committed, conflict,
    /// not-committed), changes (added, changed, deleted), upper, error. A regular file is
    /// replaced atomically; /dev/fd/N writes to an open descriptor.
    #[arg(long, value_name = "FILE", value_parser = json_status_path)]
    pub json_status: Option<PathBuf>,
    /// Which filesystem serves the overlay: the kernel overlayfs where it mounts, else
    /// ovlrun's FUSE filesystem (auto); always the kernel's; always FUSE (for its
    /// semantics: renaming lower directories, stable st_ino, hard links kept) [default: auto].
    #[arg(long, value_enum, env = "OVLRUN_FS")]
    pub fs: Option<FsArg>,
    /// Stay in the caller's user namespace (root only).
    #[arg(long)]
    pub no_userns: bool,
    /// uid of the command inside the session [default: 0].
    #[arg(long)]
    pub uid: Option<u32>,
    /// gid of the command inside the session [default: 0].
    #[arg(long)]
    pub gid: Option<u32>,
    /// Run the command as NAME|UID[:GROUP|GID], looked up in the rootfs's /etc/passwd and
    /// /etc/group: uid, primary gid, supplementary groups and HOME.
    #[arg(long, value_name = "USER", conflicts_with_all = ["uid", "gid"])]
    pub user: Option<String>,
    /// Bind a host device node into the session's /dev: SRC[:DST] (repeatable).
    #[arg(long, value_name = "SRC[:DST]")]
    pub dev_bind: Vec<String>,
    /// Network: the host's (shared), or a new namespace with only `lo` [default: host].
    #[arg(long, value_enum)]
    pub net: Option<Net>,
    /// Bind a host path into the session: SRC:DST[:ro] (repeatable).
    #[arg(long, value_name = "SRC:DST[:ro]")]
    pub bind: Vec<String>,
    /// Mount an empty tmpfs at DST inside the session (repeatable).
    #[arg(long, value_name = "DST")]
    pub tmpfs: Vec<PathBuf>,
    /// Set an environment variable: KEY=VALUE, or KEY to pass the caller's value (not set
    /// when the caller has none; repeatable; applied after --env-file).
    #[arg(long, value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Read environment variables from FILE: KEY=VALUE or KEY lines, `#` comments and blank
    /// lines (repeatable).
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Remove KEY from the command's environment (after every other flag; repeatable).
    #[arg(long, value_name = "KEY")]
    pub unsetenv: Vec<String>,
    /// Start from an empty environment (then PATH, HOME and TERM get defaults) instead of
    /// the caller's.
    #[arg(long)]
    pub clear_env: bool,
    /// Working directory inside the session [default: /].
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Hostname inside [default: the rootfs's /etc/hostname, else "ovlrun"].
    #[arg(long)]
    pub hostname: Option<String>,
    /// Add a capability to the default set (e.g. NET_ADMIN; repeatable).
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Remove a capability from the default set (repeatable).
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Pass the caller's fds 3 .. 3+N to the command (every other fd above 2 is closed).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// Give the command a new terminal (pty) of its own even when stdin or stdout is not a
    /// terminal [default: when both are].
    #[arg(short = 't', long = "tty", conflicts_with = "no_tty")]
    pub tty: bool,
    /// Never give the command a pty: it gets the caller's stdin, stdout and stderr as they
    /// are, in a session of its own without a controlling terminal.
    #[arg(long)]
    pub no_tty: bool,
    /// Set a resource limit: NAME=SOFT[:HARD], e.g. nofile=1024:4096 (repeatable).
    #[arg(long, value_name = "NAME=SOFT[:HARD]")]
    pub rlimit: Vec<String>,
    /// Make the whole root read-only (mounts such as /tmp, /dev and binds keep theirs).
    #[arg(long)]
    pub read_only: bool,
    /// Hide PATH inside: /dev/null over a file, an empty tmpfs over a directory (repeatable).
    #[arg(long, value_name = "PATH")]
    pub mask: Vec<PathBuf>,
    /// Make PATH (and every mount below it) read-only inside (repeatable).
    #[arg(long = "ro", value_name = "PATH")]
    pub read_only_paths: Vec<PathBuf>,
    /// Set a sysctl the kernel keeps per namespace: KEY=VALUE (net.* needs --net none;
    /// repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub sysctl: Vec<String>,
    /// The system-call filter: default (the effect of podman's and docker's default profile,
    /// plus the TIOCSTI and TIOCLINUX ioctls refused), unconfined (none), or FILE, an OCI
    /// `linux.seccomp` JSON object [default: the config's linux.seccomp, else default].
    #[arg(long, value_name = "default|unconfined|FILE")]
    pub seccomp: Option<OsString>,
    /// Stop the session after DURATION (seconds, or 30s, 5m, 2h): TERM, then KILL after
    /// --timeout-kill; the exit status is then 124, as timeout(1)'s, and the policy applies
    /// as for a failed run.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// How long a timed-out session has between TERM and KILL [default: 10s].
    #[arg(long, value_name = "DURATION", requires = "timeout")]
    pub timeout_kill: Option<String>,
    /// Most memory the session may use: bytes, or with k, m or g (512m, 2g). Needs cgroups
    /// the caller may write (root): otherwise the session runs without it, and says so.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Most processes and threads the session may have at once.
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<String>,
    /// CPU time the session may use, in CPUs (0.5, 2): its share of each 100 ms.
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Put each copied-up file on disk before it takes its place (an fsync per copy-up, as
    /// the kernel overlayfs does). Without it a kept session's changes are made durable once,
    /// when it ends, and a discarded session's never: a crash of the machine loses nothing
    /// those need.
    #[arg(long)]
    pub durable: bool,
    /// The command and its arguments [default: /bin/sh]. Options before it are ovlrun's;
    /// everything from CMD on is the command's (`--` before it is optional).
    #[arg(trailing_var_arg = true, value_name = "CMD")]
    pub cmd: Vec<OsString>,
}

impl RunArgs {
    /// The session flags, for [`ovlrun::config::SessionPlan::from_flags`] (the policy, the
    /// upper and `--config` are read by the caller first).
    pub fn into_flags(self) -> Flags {
        Flags {
            rootfs: self.rootfs,
            // Resolved by the caller: a session is not the config's to find.
            layers: Vec::new(),
            fs: self.fs.map(Into::into),
            no_userns: self.no_userns,
            uid: self.uid,
            gid: self.gid,
            user: self.user,
            dev_bind: self.dev_bind,
            net: self.net.map(Into::into),
            bind: self.bind,
            tmpfs: self.tmpfs,
            env: self.env,
            env_file: self.env_file,
            unsetenv: self.unsetenv,
            clear_env: self.clear_env,
            cwd: self.cwd,
            hostname: self.hostname,
            cap_add: self.cap_add,
            cap_drop: self.cap_drop,
            preserve_fds: self.preserve_fds,
            tty: self.tty,
            no_tty: self.no_tty,
            rlimit: self.rlimit,
            read_only: self.read_only,
            mask: self.mask,
            read_only_paths: self.read_only_paths,
            sysctl: self.sysctl,
            seccomp: self.seccomp,
            timeout: self.timeout,
            timeout_kill: self.timeout_kill,
            memory: self.memory,
            pids_limit: self.pids_limit,
            cpus: self.cpus,
            durable: self.durable,
            cmd: self.cmd,
        }
    }
}

/// `--json-status`'s FILE, absolute, so the session's own directory changes cannot move it.
/// Not `-`: stdout and stderr carry the command's output, which a reader would have to
/// separate from the JSON.
fn json_status_path(s: &str) -> Result<PathBuf, String> {
    if s == "-" {
        return Err(
            "not `-`: stdout is the command's; give a file, or /dev/fd/N for an \
                    open descriptor"
                .into(),
        );
    }
    std::path::absolute(s).map_err(|e| e.to_string())
}

/// `ovlrun run`.
#[derive(Debug, clap::Args)]
pub struct RunCommand {
    /// Run a new command on the kept changes of session ID (its rootfs, its upper).
    #[arg(long, value_name = "ID", conflicts_with_all = ["rootfs", "bundle", "upper", "layer"])]
    pub resume: Option<String>,
    /// Run an OCI bundle: DIR/config.json, whose root.path is relative to DIR.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["rootfs", "config"])]
    pub bundle: Option<PathBuf>,
    /// The session's settings.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `--policy` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PolicyArg {
    /// Keep the changes as a session.
    Preserve,
    /// Throw the changes away.
    Discard,
    /// Merge the changes into the rootfs.
    Commit,
    /// Merge the changes into the rootfs, crash-safe.
    CommitAtomic,
    /// Ask on the terminal.
    Ask,
}

/// `--commit-on` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CommitOnArg {
    /// Only when the command exited 0.
    Success,
    /// Whatever the command's exit status.
    Always,
}

/// `--fs` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FsArg {
    /// The kernel overlayfs where it mounts, else FUSE.
    Auto,
    /// The kernel overlayfs.
    Kernel,
    /// ovlrun's FUSE filesystem.
    Fuse,
}

/// `--passthrough` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Passthrough {
    /// None.
    Off,
    /// Files in the upper layer: everything written or copied up.
    Upper,
    /// Lower files opened for reading too.
    All,
}

/// `--net` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Net {
    /// Share the host's network (and its resolv.conf and hosts).
    Host,
    /// A new network namespace with only the loopback interface.
    None,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check what ovlrun needs on this machine, for this user, and print the fix for each gap.
    Doctor {
        /// Also check that sessions of this user can act as the owner of this tree.
        #[arg(long, value_name = "DIR")]
        rootfs: Option<PathBuf>,
    },
    /// Run a session: the same flags as without a subcommand, plus --resume and --bundle
    /// (runc's `run ID`, a container, needs a runtime flag before it: `ovlrun --root DIR run`).
    Run(Box<RunCommand>),
    /// List kept and running sessions.
    Ls {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show every change of a session: A(dded), C(hanged), D(eleted) paths.
    ///
    /// One line per change: `A` added, `C` changed, `D` deleted, then the path. Names are
    /// escaped as `ls -b` and `git` do, so every line is one change and no two names print
    /// alike: `\\` for a backslash, `\n`, `\t`, `\r`, and `\ooo` (octal) for other control
    /// bytes and for bytes that are not valid UTF-8.
    Diff {
        /// The session id (or a unique start of one).
        id: String,
        /// Machine-readable output: a JSON array of {"change", "path"}; a path that is not
        /// valid UTF-8 comes as "path_hex" (the hex of its bytes) instead of "path".
        #[arg(long)]
        json: bool,
        /// Only the changes that conflict: paths whose rootfs entry changed too since the
        /// session began (JSON adds why: changed, removed, or inside and the path beneath).
        #[arg(long)]
        conflicts: bool,
    },
    /// Merge a kept session's changes into its rootfs, then remove the session. Refused, with
    /// nothing applied and the session kept, when a path it changes changed in the rootfs
    /// too since it began (each listed; exit status 1).
    Commit {
        /// The session id (or a unique start of one).
        id: String,
        /// Commit over conflicts: the session's version of each conflicting path wins.
        #[arg(long)]
        force: bool,
        /// Print the conflicts found (refused, or forced over) as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Journaled: after a crash the rootfs is the old tree or the new one.
        #[arg(long)]
        atomic: bool,
        /// Wait while other sessions run over the rootfs instead of failing.
        #[arg(long)]
        wait: bool,
    },
    /// Write a kept session's changes as an OCI image layer (tar with .wh. whiteouts).
    Export {
        /// The session id (or a unique start of one).
        id: String,
        /// The tar file to write ("-" for stdout).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Remove kept sessions and their changes: those named, or all of them (--all), or those
    /// older than a duration (--older-than). Running sessions are never removed.
    Discard {
        /// Session names, ids or unique starts of ids.
        #[arg(
            value_name = "ID",
            required_unless_present_any = ["all", "older_than"],
            conflicts_with_all = ["all", "older_than"]
        )]
        ids: Vec<String>,
        /// Every kept session of the state root (not the running ones).
        #[arg(long)]
        all: bool,
        /// Every kept session that began longer ago than DURATION (30s, 5m, 2h, 7d).
        #[arg(long, value_name = "DURATION", conflicts_with = "all")]
        older_than: Option<String>,
    },
    /// Finish or undo an interrupted commit of a rootfs (done by itself whenever ovlrun
    /// next locks that rootfs).
    Recover {
        /// The rootfs.
        #[arg(long, value_name = "DIR")]
        rootfs: PathBuf,
    },
    /// Print a starting OCI config.json for `--config FILE` or `run --bundle DIR`.
    Spec {
        /// The root.path to write (relative paths are relative to the config's directory).
        #[arg(long, value_name = "PATH", default_value = "rootfs")]
        rootfs: PathBuf,
    },
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
    /// Which filesystem: ovlrun's FUSE filesystem (served by this process), or the kernel
    /// overlayfs over the same directories (ovlrun mounts it and waits).
    #[arg(long, value_enum, default_value_t = FsArg::Fuse)]
    pub fs: FsArg,
    /// Threads serving requests [default: CPU count, 2 to 8].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Which files the kernel reads and writes itself, without a request to ovlrun (FUSE
    /// passthrough; needs root outside a user namespace, else everything goes through
    /// ovlrun). `all` adds lower files opened for reading: faster, but opening such a file
    /// for writing while it is open fails with ETXTBSY.
    #[arg(long, value_enum, value_name = "FILES", default_value_t = Passthrough::Upper)]
    pub passthrough: Passthrough,
    /// Do not put copied-up files on disk one by one (no fsync per copy-up; FUSE) and mount
    /// the kernel overlayfs with `volatile`: after a crash of the machine the upper may hold
    /// empty or short copies (the kernel then refuses to mount that work directory again
    /// until `work/incompat/volatile` is removed). For an upper that is thrown away.
    #[arg(long)]
    pub volatile: bool,
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

// Each CLI enum maps to its library twin here and only here. The CLI enums stay (rather
// than `clap::ValueEnum` derived on the library's) so clap stays out of the library, and
// `--help` keeps its own wording of each value.

impl From<PolicyArg> for Policy {
    fn from(p: PolicyArg) -> Policy {
        match p {
            PolicyArg::Preserve => Policy::Preserve,
            PolicyArg::Discard => Policy::Discard,
            PolicyArg::Commit => Policy::Commit,
            PolicyArg::CommitAtomic => Policy::CommitAtomic,
            PolicyArg::Ask => Policy::Ask,
        }
    }
}

impl From<CommitOnArg> for CommitOn {
    fn from(c: CommitOnArg) -> CommitOn {
        match c {
            CommitOnArg::Success => CommitOn::Success,
            CommitOnArg::Always => CommitOn::Always,
        }
    }
}

impl From<FsArg> for Backend {
    fn from(f: FsArg) -> Backend {
        match f {
            FsArg::Auto => Backend::Auto,
            FsArg::Kernel => Backend::Kernel,
            FsArg::Fuse => Backend::Fuse,
        }
    }
}

impl From<Passthrough> for PassthroughMode {
    fn from(p: Passthrough) -> PassthroughMode {
        match p {
            Passthrough::Off => PassthroughMode::Off,
            Passthrough::Upper => PassthroughMode::Upper,
            Passthrough::All => PassthroughMode::All,
        }
    }
}

impl From<Net> for Network {
    fn from(n: Net) -> Network {
        match n {
            Net::Host => Network::Host,
            Net::None => Network::None,
        }
    }
}

impl From<Whiteout> for WhiteoutFormat {
    fn from(w: Whiteout) -> WhiteoutFormat {
        match w {
            Whiteout::Kernel => WhiteoutFormat::Kernel,
            Whiteout::Aufs => WhiteoutFormat::Aufs,
        }
    }
}

/// runc's command line, for container managers: `ovlrun [GLOBAL FLAGS] VERB ...`.
///
/// Chosen over the session command line when the first word after the global flags below
/// is one of its verbs, or is `run` after at least one of them (`ovlrun --root DIR run ID`
/// is runc's run; a plain `ovlrun run` stays ovlrun's session).
#[derive(Debug, Parser)]
#[command(
    name = "ovlrun",
    version,
    about = "ovlrun as an OCI runtime, with runc's command line"
)]
pub struct RuntimeCli {
    /// Where container state lives [default: /run/ovlrun for root, else
    /// $XDG_RUNTIME_DIR/ovlrun].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Write errors and warnings to FILE instead of stderr only.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// The log's format.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Use systemd for cgroups: refused (ovlrun has no systemd driver).
    #[arg(long)]
    pub systemd_cgroup: bool,
    /// More logging (accepted; ovlrun logs the same).
    #[arg(long)]
    pub debug: bool,
    /// runc's rootless mode switch (accepted: ovlrun decides from the caller).
    #[arg(long, value_name = "true|false|auto")]
    pub rootless: Option<String>,
    /// The verb.
    #[command(subcommand)]
    pub verb: Verb,
}

/// `--log-format` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// logrus's text lines: `time="..." level=error msg="..."`.
    Text,
    /// One JSON object a line: `{"level","msg","time"}`.
    Json,
}

/// `create` and `run`'s flags.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The bundle: a directory holding config.json.
    #[arg(long, short = 'b', value_name = "DIR", default_value = ".")]
    pub bundle: PathBuf,
    /// Write the container's pid (decimal) to FILE.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// A unix socket to send the master of the container's pty to (SCM_RIGHTS).
    #[arg(long, value_name = "SOCKET")]
    pub console_socket: Option<PathBuf>,
    /// Pass the caller's fds 3 .. 3+N to the container.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// Do not use pivot_root (ovlrun falls back to it by itself where pivot_root is refused).
    #[arg(long)]
    pub no_pivot: bool,
    /// Do not create a new session keyring (accepted; ovlrun makes none).
    #[arg(long)]
    pub no_new_keyring: bool,
    /// The container's id.
    pub id: String,
}

/// runc's verbs.
#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Set a container up from a bundle, its process held before the user's program.
    Create(CreateArgs),
    /// Run the user's program of a created container.
    Start {
        /// The container's id.
        id: String,
    },
    /// Print a container's state as JSON.
    State {
        /// The container's id.
        id: String,
    },
    /// Send a signal (default TERM) to a container's process.
    Kill {
        /// Every process of the container.
        #[arg(long, short = 'a')]
        all: bool,
        /// The container's id.
        id: String,
        /// The signal: a number, or a name with or without SIG (9, KILL, SIGKILL).
        signal: Option<String>,
    },
    /// Remove a stopped container (with --force, a running one too).
    Delete {
        /// Kill a running container first.
        #[arg(long, short = 'f')]
        force: bool,
        /// The container's id.
        id: String,
    },
    /// List the containers of the root.
    List {
        /// table or json.
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        /// Only the ids.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Print the features this runtime implements, as JSON.
    Features,
    /// Freeze a running container's processes (its cgroup).
    Pause {
        /// The container's id.
        id: String,
    },
    /// Thaw a paused container.
    Resume {
        /// The container's id.
        id: String,
    },
    /// List a container's processes: `ps -ef` lines (or PS-OPTIONS), or their pids as JSON.
    Ps {
        /// table or json.
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        /// The container's id.
        id: String,
        /// Options for ps(1) [default: -ef].
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_options: Vec<String>,
    },
    /// Run a new process in a running container.
    Exec {
        /// A runtime-spec process object (JSON) to run instead of CMD.
        #[arg(long, short = 'p', value_name = "FILE")]
        process: Option<PathBuf>,
        /// Start the process and return.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Write the process's pid (decimal) to FILE.
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
        /// Give the process a pty.
        #[arg(long, short = 't')]
        tty: bool,
        /// A unix socket to send the pty's master to (SCM_RIGHTS).
        #[arg(long, value_name = "SOCKET")]
        console_socket: Option<PathBuf>,
        /// Working directory inside.
        #[arg(long, value_name = "DIR")]
        cwd: Option<PathBuf>,
        /// Set an environment variable KEY=VALUE (repeatable).
        #[arg(long, short = 'e', value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// UID[:GID] to run as.
        #[arg(long, short = 'u', value_name = "UID[:GID]")]
        user: Option<String>,
        /// Pass the caller's fds 3 .. 3+N to the process.
        #[arg(long, value_name = "N", default_value_t = 0)]
        preserve_fds: u32,
        /// The container's id.
        id: String,
        /// The command and its arguments (without --process).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// runc's run: create, start and wait for a container, then delete it.
    Run {
        /// Start it and return, leaving it running.
        #[arg(long, short = 'd')]
        detach: bool,
        /// As for create.
        #[command(flatten)]
        create: CreateArgs,
    },
}

/// The verbs that make `ovlrun ...` runc's command line.
pub const RUNTIME_VERBS: [&str; 11] = [
    "create", "start", "state", "kill", "delete", "list", "features", "exec", "ps", "pause",
    "resume",
];

/// Global flags of runc's command line that take a value.
const RUNTIME_VALUED: [&str; 4] = ["--root", "--log", "--log-format", "--rootless"];
/// Global flags of runc's command line that take none.
const RUNTIME_SWITCHES: [&str; 2] = ["--systemd-cgroup", "--debug"];

/// Whether `args` (without the program name) are runc's command line: a runtime verb after
/// the global runtime flags, or `run` after at least one of them.
pub fn is_runtime(args: &[OsString]) -> bool {
    let mut globals = 0;
    let mut i = 0;
    while let Some(arg) = args.get(i).and_then(|a| a.to_str()) {
        let name = arg.split_once('=').map_or(arg, |(n, _)| n);
        if RUNTIME_VALUED.contains(&name) {
            i += if arg.contains('=') { 1 } else { 2 };
        } else if RUNTIME_SWITCHES.contains(&name) {
            i += 1;
        } else {
            return RUNTIME_VERBS.contains(&arg) || (arg == "run" && globals > 0);
        }
        globals += 1;
    }
    false
}
