//! What a session is to do, as validated plain data: the [`SessionPlan`].
//!
//! The command line (parsed by the binary into [`Flags`], merged by `flags` over an OCI
//! config read by `oci`) is turned into a plan here and nowhere else; everything after works from the plan and never re-reads flags. Validation
//! names the flag (or the config field) and the value at fault, and creates nothing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub(crate) mod flags;
pub(crate) mod oci;
pub(crate) mod seccomp;
pub(crate) mod user;

pub use crate::seccomp::ProfileError;
pub use flags::{Flags, chosen_policy, parse_duration};
pub use oci::{OciError, OciSettings, load, starting_config};

/// How the session's network is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// The host's network namespace (and its resolv.conf and hosts).
    Host,
    /// A new network namespace with only `lo`, up.
    None,
}

/// A bind mount into the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// Host path.
    pub source: PathBuf,
    /// Absolute path inside the session.
    pub dest: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A config mount whose options a [`Bind`] or a plain tmpfs does not carry (a runtime
/// bundle's `/run` tmpfs with a size, a bind with `noexec`, an mqueue), made in order after
/// the launcher's own mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsMount {
    /// Absolute path inside the session.
    pub dest: PathBuf,
    /// What is mounted.
    pub kind: FsKind,
    /// Its flags.
    pub flags: MountFlags,
}

/// What an [`FsMount`] mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsKind {
    /// A host path bound (`rbind`: with the mounts below it).
    Bind {
        /// Host path (absolute, existing).
        source: PathBuf,
        /// With every mount below it.
        recursive: bool,
    },
    /// A tmpfs with these `key=value` options (`size=65536k,mode=755`).
    Tmpfs {
        /// The options, comma-separated.
        data: String,
        /// `tmpcopyup`: starts as a copy of what the root has at its destination.
        copy_up: bool,
    },
    /// A POSIX message queue filesystem of the session's ipc namespace.
    Mqueue,
}

/// The flags of an [`FsMount`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountFlags {
    /// `ro`.
    pub read_only: bool,
    /// `nosuid`.
    pub nosuid: bool,
    /// `nodev`.
    pub nodev: bool,
    /// `noexec`.
    pub noexec: bool,
}

/// Which user namespace setup to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserNs {
    /// A new user namespace (always for an unprivileged caller).
    New,
    /// Stay in the caller's user namespace (root only: `--no-userns`).
    Host,
    /// A new user namespace mapping only the caller's own uid and gid, onto 0 (what
    /// `runc spec --rootless` writes as `linux.uidMappings`).
    OwnId,
}

/// Whether the command gets a terminal of its own (a new pty the launcher relays).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Terminal {
    /// A new pty when the caller's stdin is a terminal (the default).
    #[default]
    Auto,
    /// Always a new pty (`-t/--tty`, `process.terminal: true`).
    Always,
    /// Never: the command gets the caller's stdio, in a session of its own (`--no-tty`).
    Never,
}

impl Terminal {
    /// The choice from `-t/--tty`, `--no-tty` and a config's `process.terminal`: a flag
    /// wins over the config, the config over the default.
    pub(crate) fn chosen(tty: bool, no_tty: bool, config: Option<bool>) -> Terminal {
        match (tty, no_tty, config) {
            (true, _, _) | (false, false, Some(true)) => Terminal::Always,
            (false, true, _) | (false, false, Some(false)) => Terminal::Never,
            (false, false, None) => Terminal::Auto,
        }
    }
}

/// The system-call filter the command runs under.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Seccomp {
    /// ovlrun's default filter: the effect of the containers default profile, plus
    /// TIOCSTI and TIOCLINUX refused.
    #[default]
    Default,
    /// No filter (`--seccomp unconfined`).
    Unconfined,
    /// A filter in the OCI `linux.seccomp` format (`--seccomp FILE`, or a config's).
    Profile(Box<oci_spec::runtime::LinuxSeccomp>),
}

/// A namespace the session joins (setns(2)) instead of making a new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinNs {
    /// Which kind.
    pub kind: NsKind,
    /// The namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub path: PathBuf,
}

/// The kinds of namespace a session can join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsKind {
    /// Network.
    Network,
    /// System V IPC and POSIX message queues.
    Ipc,
    /// Hostname and domain name.
    Uts,
    /// Process ids: the session's processes join another's pid namespace (its pid 1 is not
    /// theirs).
    Pid,
}

/// One resource limit for the command (`--rlimit`, `process.rlimits`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rlimit {
    /// The resource.
    pub resource: nix::sys::resource::Resource,
    /// Its name as given (`RLIMIT_NOFILE`), for errors.
    pub name: String,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Paths under `/proc` and `/sys` hidden from every session (runc's default `maskedPaths`):
/// a file gets `/dev/null` over it, a directory an empty read-only tmpfs.
pub(crate) const DEFAULT_MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// More masked paths past runc's list: the host's power and thermal controls.
pub(crate) const EXTRA_MASKED_PATHS: [&str; 1] = ["/sys/devices/virtual/powercap"];

/// Paths under `/proc` read-only in every session (runc's default `readonlyPaths`).
pub(crate) const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What root in a session may do by default.
pub(crate) const DEFAULT_CAPABILITIES: [caps::Capability; 14] = [
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_MKNOD,
    caps::Capability::CAP_NET_RAW,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETFCAP,
    caps::Capability::CAP_SETPCAP,
    caps::Capability::CAP_NET_BIND_SERVICE,
    caps::Capability::CAP_SYS_CHROOT,
    caps::Capability::CAP_KILL,
    caps::Capability::CAP_AUDIT_WRITE,
];

/// The five capability sets of the command (names upper case, `CAP_` prefixed), as
/// `process.capabilities` gives them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CapabilitySets {
    /// What the command and its children can ever have.
    pub bounding: std::collections::BTreeSet<String>,
    /// In force after exec.
    pub effective: std::collections::BTreeSet<String>,
    /// May be made effective.
    pub permitted: std::collections::BTreeSet<String>,
    /// Kept across exec of a program with file capabilities.
    pub inheritable: std::collections::BTreeSet<String>,
    /// Kept across exec of any program, also by a non-root uid.
    pub ambient: std::collections::BTreeSet<String>,
}

impl CapabilitySets {
    /// The container engines' default set for a command running as `uid`: bounding for
    /// everyone, effective, permitted and inheritable for uid 0 only (a non-root command
    /// starts with none, as with runc and podman).
    pub fn container_default(uid: u32) -> CapabilitySets {
        let set: std::collections::BTreeSet<String> = DEFAULT_CAPABILITIES
            .iter()
            .map(ToString::to_string)
            .collect();
        let root = if uid == 0 {
            set.clone()
        } else {
            Default::default()
        };
        CapabilitySets {
            bounding: set,
            effective: root.clone(),
            permitted: root.clone(),
            inheritable: root,
            ambient: Default::default(),
        }
    }

    /// `--cap-add`: into the bounding set, and into the others where the command is root.
    pub fn add(&mut self, cap: &str, uid: u32) {
        self.bounding.insert(cap.to_owned());
        if uid == 0 {
            for set in [
                &mut self.effective,
                &mut self.permitted,
                &mut self.inheritable,
            ] {
                set.insert(cap.to_owned());
            }
        }
    }

    /// `--cap-drop`: out of every set.
    pub fn drop(&mut self, cap: &str) {
        for set in [
            &mut self.bounding,
            &mut self.effective,
            &mut self.permitted,
            &mut self.inheritable,
            &mut self.ambient,
        ] {
            set.remove(cap);
        }
    }
}

/// A validated session: everything the launcher needs, and nothing it must re-check.
#[derive(Clone, Debug)]
pub struct SessionPlan {
    /// The root filesystem (absolute, an existing directory): the bottom layer, and the tree
    /// a commit merges into.
    pub rootfs: PathBuf,
    /// Read-only layers over the rootfs, topmost first (`--rootfs A:B:C` gives A and B;
    /// `--layer SESSION` a kept session's upper and its own layers); usually none.
    pub layers: Vec<PathBuf>,
    /// The command and its arguments; never empty.
    pub argv: Vec<OsString>,
    /// The command's environment, `KEY=VALUE`.
    pub env: Vec<OsString>,
    /// Working directory inside the session (absolute).
    pub cwd: PathBuf,
    /// Hostname inside.
    pub hostname: String,
    /// uid inside the session.
    pub uid: u32,
    /// gid inside the session.
    pub gid: u32,
    /// Supplementary gids of the command besides `gid` (`--user`'s groups).
    pub groups: Vec<u32>,
    /// User namespace choice.
    pub userns: UserNs,
    /// Network choice.
    pub net: Network,
    /// Extra bind mounts, in order.
    pub binds: Vec<Bind>,
    /// Host device nodes bound into the session's `/dev` (`--dev-bind`; never read-only).
    pub dev_binds: Vec<Bind>,
    /// Extra tmpfs mounts (absolute paths inside).
    pub tmpfs: Vec<PathBuf>,
    /// A config's mounts with options beyond [`Bind`]'s and a plain tmpfs's, in order.
    pub mounts: Vec<FsMount>,
    /// The command's capability sets.
    pub capabilities: CapabilitySets,
    /// Where session state lives (upper, work, mount point).
    pub state_root: PathBuf,
    /// Which filesystem serves the overlay.
    pub fs: crate::mount::Backend,
    /// The whiteout format the upper is written in (`org.ovlrun.whiteout`); `None` takes the
    /// one recorded with the upper, else the one the backend writes. `Aufs` comes with the
    /// FUSE backend only (the kernel overlayfs writes its own format).
    pub whiteout: Option<crate::layers::WhiteoutFormat>,
    /// Each copy-up is on disk before it takes its place in the upper (`--durable`,
    /// `org.ovlrun.durable`): an fsync per copy-up, as the kernel overlayfs does by default.
    /// Otherwise a kept session's upper is made durable once, at its end, and a discarded
    /// one's never (it has nothing to keep after a crash).
    pub durable: bool,
    /// Whether the command gets its own pty.
    pub terminal: Terminal,
    /// The system-call filter.
    pub seccomp: Seccomp,
    /// Inherited fds 3 .. 3+N passed to the command; every other fd above 2 is closed.
    pub preserve_fds: u32,
    /// Resource limits set before the command starts.
    pub rlimits: Vec<Rlimit>,
    /// Paths hidden inside (absolute): the defaults, the config's and `--mask`.
    pub masked_paths: Vec<PathBuf>,
    /// Paths read-only inside (absolute): the defaults, the config's and `--ro`.
    pub readonly_paths: Vec<PathBuf>,
    /// The whole root read-only (`--read-only`, `root.readonly`).
    pub read_only_root: bool,
    /// Set no_new_privs before exec (always from the command line).
    pub no_new_privs: bool,
    /// Namespaced sysctls to set inside (`linux.sysctl`), `(key, value)`.
    pub sysctl: Vec<(String, String)>,
    /// The command's `oom_score_adj`.
    pub oom_score_adj: Option<i32>,
    /// The command's umask (`process.user.umask`); `None` keeps the caller's.
    pub umask: Option<u32>,
    /// Existing namespaces the session joins instead of making its own (`linux.namespaces`
    /// entries with a `path`: network, ipc, uts).
    pub join: Vec<JoinNs>,
    /// `--timeout`: when the session is stopped, as `timeout(1)` does.
    pub timeout: Option<Timeout>,
    /// `--memory`, `--pids-limit`, `--cpus`: the session's cgroup limits.
    pub limits: Limits,
}

/// What a session may use at most, written into a cgroup of its own; none by default.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// Bytes of memory (`--memory`).
    pub memory: Option<u64>,
    /// Processes and threads at once (`--pids-limit`).
    pub pids: Option<u64>,
    /// CPUs' worth of time (`--cpus`).
    pub cpus: Option<f64>,
}

impl Limits {
    /// True when no limit is asked for.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// `--timeout DURATION [--timeout-kill DURATION]`: TERM to the session after `after`, KILL
/// `kill_after` later if it still runs; the run's exit status is then 124.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout {
    /// From the start of the command to the TERM.
    pub after: std::time::Duration,
    /// From the TERM to the KILL.
    pub kill_after: std::time::Duration,
}

impl SessionPlan {
    /// A plan with every hardening default for `argv` over `rootfs`, the rest as the
    /// command line would leave it; for the library and tests.
    pub fn new(rootfs: PathBuf, argv: Vec<OsString>, state_root: PathBuf) -> SessionPlan {
        SessionPlan {
            rootfs,
            layers: Vec::new(),
            argv,
            env: default_env("/root"),
            cwd: PathBuf::from("/"),
            hostname: "ovlrun".into(),
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            userns: UserNs::New,
            net: Network::Host,
            binds: Vec::new(),
            dev_binds: Vec::new(),
            tmpfs: Vec::new(),
            mounts: Vec::new(),
            capabilities: CapabilitySets::container_default(0),
            state_root,
            fs: crate::mount::Backend::Auto,
            whiteout: None,
            durable: false,
            terminal: Terminal::Auto,
            seccomp: Seccomp::Default,
            preserve_fds: 0,
            rlimits: Vec::new(),
            masked_paths: default_masked_paths(),
            readonly_paths: DEFAULT_READONLY_PATHS.iter().map(PathBuf::from).collect(),
            read_only_root: false,
            no_new_privs: true,
            sysctl: Vec::new(),
            oom_score_adj: None,
            umask: None,
            join: Vec::new(),
            timeout: None,
            limits: Limits::default(),
        }
    }
}

impl SessionPlan {
    /// Every lower of the session, topmost first: the layers, then the rootfs.
    pub fn lowers(&self) -> Vec<PathBuf> {
        let mut all = self.layers.clone();
        all.push(self.rootfs.clone());
        all
    }
}

/// runc's masked paths and ours.
pub(crate) fn default_masked_paths() -> Vec<PathBuf> {
    DEFAULT_MASKED_PATHS
        .iter()
        .chain(EXTRA_MASKED_PATHS.iter())
        .map(PathBuf::from)
        .collect()
}

/// A plan that cannot be made. Each variant names the flag and the value.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Neither `--rootfs` nor a config's `root.path`.
    #[error("--rootfs DIR (or --config FILE with root.path) is required")]
    NoRootfs,
    /// `org.ovlrun.whiteout: aufs` with `--fs kernel`: the kernel overlayfs writes its own
    /// format only.
    #[error(
        "annotations[\"org.ovlrun.whiteout\"] aufs: the kernel overlayfs (--fs kernel) writes kernel whiteouts only; use --fs fuse or auto"
    )]
    KernelWhiteout,
    /// `--rootfs` is not an existing directory.
    #[error("--rootfs {}: {problem}", .path.display())]
    Rootfs {
        /// The value given.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A `--bind` value is malformed or its source is missing.
    #[error("--bind {value}: {problem}")]
    Bind {
        /// The value given.
        value: String,
        /// What is wrong.
        problem: String,
    },
    /// A `--dev-bind` value is malformed or its source is no device node.
    #[error("--dev-bind {value}: {problem}")]
    DevBind {
        /// The value given.
        value: String,
        /// What is wrong.
        problem: String,
    },
    /// A `--user` that cannot be resolved in the rootfs.
    #[error("--user {value}: {problem}")]
    User {
        /// The value given.
        value: String,
        /// What is wrong.
        problem: String,
    },
    /// A path that must be absolute inside the session is not.
    #[error("{flag} {value}: must be an absolute path inside the session")]
    NotAbsolute {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
    },
    /// A `--env` value with no name before its `=`, or a name with white space.
    #[error("--env {0}: expected KEY=VALUE, or KEY to pass the caller's value")]
    Env(String),
    /// A `--timeout` or `--timeout-kill` value that is no duration.
    #[error(
        "{flag} {value}: expected a duration: seconds, or a number with s, m, h or d (30s, 5m)"
    )]
    Duration {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
    },
    /// A `--memory`, `--pids-limit` or `--cpus` value that is no limit.
    #[error("{flag} {value}: {why}")]
    Limit {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// A `--unsetenv` value that is no variable name.
    #[error("--unsetenv {0}: expected a variable name (no '=', no white space)")]
    Unsetenv(String),
    /// An `--env-file` that cannot be read.
    #[error("--env-file {}: {source}", .path.display())]
    EnvFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An `--env-file` line that is no `KEY=VALUE`, `KEY`, comment or blank line.
    #[error("--env-file {}: line {line}: {text:?}: expected KEY=VALUE, KEY, or a # comment", .path.display())]
    EnvFileLine {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// The line.
        text: String,
    },
    /// An unknown capability name.
    #[error("{flag} {value}: unknown capability (see capabilities(7))")]
    Capability {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
    },
    /// `--no-userns` by a non-root caller.
    #[error("--no-userns: only root may run without a user namespace")]
    NoUsernsUnprivileged,
    /// No state directory can be found.
    #[error("no state directory: set OVLRUN_STATE, XDG_STATE_HOME or HOME")]
    NoStateRoot,
    /// A resource limit that cannot be set.
    #[error("{flag} {value}: {problem}")]
    Rlimit {
        /// The flag or config field.
        flag: String,
        /// The value given.
        value: String,
        /// What is wrong.
        problem: String,
    },
    /// A sysctl that is malformed or not namespaced.
    #[error("{flag} {key}: {problem}")]
    Sysctl {
        /// The flag or config field.
        flag: String,
        /// The key given.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// A uid or gid that is no id: `4294967295` is `(uid_t)-1`, which setresuid(2) takes as
    /// "leave unchanged" (the command would keep uid 0).
    #[error("{flag} {value}: not a valid id (0 to {})", MAX_ID)]
    Id {
        /// The flag or config field.
        flag: &'static str,
        /// The value given.
        value: u32,
    },
    /// A `--seccomp` profile that cannot be read or honoured.
    #[error("--seccomp {}", .path.display())]
    Seccomp {
        /// The profile file.
        path: PathBuf,
        /// The field and the problem.
        #[source]
        source: seccomp::ProfileError,
    },
    /// `--preserve-fds N` names an fd that is not open.
    #[error("--preserve-fds {count}: fd {fd} is not open (fds 3 to {} must be)", 2 + .count)]
    PreserveFds {
        /// N.
        count: u32,
        /// The first missing fd.
        fd: u32,
    },
}

/// The resource names setrlimit(2) knows, as `RLIMIT_*`.
const RLIMITS: [(&str, nix::sys::resource::Resource); 16] = {
    use nix::sys::resource::Resource as R;
    [
        ("RLIMIT_AS", R::RLIMIT_AS),
        ("RLIMIT_CORE", R::RLIMIT_CORE),
        ("RLIMIT_CPU", R::RLIMIT_CPU),
        ("RLIMIT_DATA", R::RLIMIT_DATA),
        ("RLIMIT_FSIZE", R::RLIMIT_FSIZE),
        ("RLIMIT_LOCKS", R::RLIMIT_LOCKS),
        ("RLIMIT_MEMLOCK", R::RLIMIT_MEMLOCK),
        ("RLIMIT_MSGQUEUE", R::RLIMIT_MSGQUEUE),
        ("RLIMIT_NICE", R::RLIMIT_NICE),
        ("RLIMIT_NOFILE", R::RLIMIT_NOFILE),
        ("RLIMIT_NPROC", R::RLIMIT_NPROC),
        ("RLIMIT_RSS", R::RLIMIT_RSS),
        ("RLIMIT_RTPRIO", R::RLIMIT_RTPRIO),
        ("RLIMIT_RTTIME", R::RLIMIT_RTTIME),
        ("RLIMIT_SIGPENDING", R::RLIMIT_SIGPENDING),
        ("RLIMIT_STACK", R::RLIMIT_STACK),
    ]
};

/// A resource limit from its name (`nofile`, `RLIMIT_NOFILE`) and limits; `flag` names
/// where it came from in errors.
///
/// # Errors
/// [`PlanError::Rlimit`] for an unknown name or a soft limit above the hard one.
pub(crate) fn rlimit(flag: &str, name: &str, soft: u64, hard: u64) -> Result<Rlimit, PlanError> {
    let bad = |problem: String| PlanError::Rlimit {
        flag: flag.to_owned(),
        value: name.to_owned(),
        problem,
    };
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("RLIMIT_") {
        upper
    } else {
        format!("RLIMIT_{upper}")
    };
    let Some((canon, resource)) = RLIMITS.iter().find(|(n, _)| *n == full) else {
        let known: Vec<&str> = RLIMITS.iter().map(|(n, _)| &n[7..]).collect();
        return Err(bad(format!(
            "unknown resource (known: {})",
            known.join(", ").to_lowercase()
        )));
    };
    if soft > hard {
        return Err(bad(format!(
            "the soft limit {soft} is above the hard limit {hard}"
        )));
    }
    Ok(Rlimit {
        resource: *resource,
        name: (*canon).to_owned(),
        soft,
        hard,
    })
}

/// Parses `--rlimit NAME=SOFT[:HARD]` (`unlimited` allowed; HARD defaults to SOFT).
///
/// # Errors
/// [`PlanError::Rlimit`] naming the value.
pub(crate) fn parse_rlimit(value: &str) -> Result<Rlimit, PlanError> {
    let bad = |problem: &str| PlanError::Rlimit {
        flag: "--rlimit".into(),
        value: value.to_owned(),
        problem: problem.to_owned(),
    };
    let (name, limits) = value
        .split_once('=')
        .ok_or_else(|| bad("expected NAME=SOFT[:HARD] (e.g. nofile=1024:4096)"))?;
    let number = |n: &str| -> Result<u64, PlanError> {
        if n == "unlimited" || n == "infinity" {
            return Ok(u64::MAX);
        }
        n.parse()
            .map_err(|_| bad(&format!("{n:?} is not a number or \"unlimited\"")))
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((s, h)) => (number(s)?, number(h)?),
        None => {
            let n = number(limits)?;
            (n, n)
        }
    };
    rlimit("--rlimit", name, soft, hard).map_err(|e| match e {
        PlanError::Rlimit { problem, .. } => bad(&problem),
        other => other,
    })
}

/// Checks that sysctl `key` is one the kernel keeps per namespace, so setting it inside
/// changes nothing of the host (runc's rule): IPC keys, `fs.mqueue.*`, the UTS names, and
/// `net.*` with a network namespace of the session's own.
///
/// # Errors
/// [`PlanError::Sysctl`] naming the key.
pub(crate) fn check_sysctl(flag: &str, key: &str, net: Network) -> Result<(), PlanError> {
    let bad = |problem: &str| PlanError::Sysctl {
        flag: flag.to_owned(),
        key: key.to_owned(),
        problem: problem.to_owned(),
    };
    let well_formed = !key.is_empty()
        && key
            .split('.')
            .all(|c| !c.is_empty() && c != ".." && !c.contains('/') && !c.contains('\0'));
    if !well_formed {
        return Err(bad("not a sysctl name (dotted, like net.ipv4.ip_forward)"));
    }
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&key)
        || key.starts_with("fs.mqueue.")
        || key == "kernel.hostname"
        || key == "kernel.domainname"
    {
        return Ok(());
    }
    if key.starts_with("net.") {
        return match net {
            Network::None => Ok(()),
            Network::Host => Err(bad(
                "the session shares the host's network namespace; net.* needs --net none",
            )),
        };
    }
    Err(bad(
        "not kept per namespace: setting it inside would change the host",
    ))
}

/// Parses `--sysctl KEY=VALUE`.
///
/// # Errors
/// [`PlanError::Sysctl`] naming the key.
pub(crate) fn parse_sysctl(value: &str, net: Network) -> Result<(String, String), PlanError> {
    let (key, val) = value.split_once('=').ok_or_else(|| PlanError::Sysctl {
        flag: "--sysctl".into(),
        key: value.to_owned(),
        problem: "expected KEY=VALUE".into(),
    })?;
    check_sysctl("--sysctl", key, net)?;
    Ok((key.to_owned(), val.to_owned()))
}

/// Checks that fds 3 .. 3+`count` are open in this process, so `--preserve-fds` passes
/// exactly what the caller opened and never one of ovlrun's own.
///
/// # Errors
/// [`PlanError::PreserveFds`] naming the first fd that is not open.
pub(crate) fn check_preserved_fds(count: u32) -> Result<(), PlanError> {
    for fd in 3..3u32.saturating_add(count) {
        if std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_err() {
            return Err(PlanError::PreserveFds { count, fd });
        }
    }
    Ok(())
}

/// Parses `SRC:DST[:ro]`.
///
/// # Errors
/// [`PlanError::Bind`] naming the value.
pub(crate) fn parse_bind(value: &str) -> Result<Bind, PlanError> {
    let err = |problem: &str| PlanError::Bind {
        value: value.to_owned(),
        problem: problem.to_owned(),
    };
    let parts: Vec<&str> = value.split(':').collect();
    let (source, dest, read_only) = match parts.as_slice() {
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        [_, _, opt] => return Err(err(&format!("unknown option '{opt}' (expected ro or rw)"))),
        _ => return Err(err("expected SRC:DST or SRC:DST:ro")),
    };
    if source.is_empty() || dest.is_empty() {
        return Err(err("expected SRC:DST or SRC:DST:ro"));
    }
    if !dest.starts_with('/') {
        return Err(err("DST must be an absolute path inside the session"));
    }
    let source = Path::new(source)
        .canonicalize()
        .map_err(|e| err(&format!("source: {e}")))?;
    Ok(Bind {
        source,
        dest: PathBuf::from(dest),
        read_only,
    })
}

/// Checks `--dev-bind SRC[:DST]`: SRC a host character or block device, DST (default SRC)
/// a plain absolute path under `/dev` (the session's own tmpfs, where its node is made).
///
/// # Errors
/// [`PlanError::DevBind`] naming the value.
pub(crate) fn parse_dev_bind(value: &str) -> Result<Bind, PlanError> {
    use std::os::unix::fs::FileTypeExt;
    let err = |problem: String| PlanError::DevBind {
        value: value.to_owned(),
        problem,
    };
    let (source, dest) = value.split_once(':').unwrap_or((value, value));
    let meta = std::fs::metadata(source).map_err(|e| err(format!("source: {e}")))?;
    let kind = meta.file_type();
    if !kind.is_char_device() && !kind.is_block_device() {
        return Err(err(format!(
            "{source} is not a device node (use --bind for files and directories)"
        )));
    }
    let dest = Path::new(dest);
    let plain = dest
        .components()
        .skip(1)
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !dest.starts_with("/dev") || dest == Path::new("/dev") || !dest.is_absolute() || !plain {
        return Err(err(
            "DST must be a path under /dev inside the session (no . or ..)".into(),
        ));
    }
    let source = Path::new(source)
        .canonicalize()
        .map_err(|e| err(format!("source: {e}")))?;
    Ok(Bind {
        source,
        dest: dest.to_owned(),
        read_only: false,
    })
}

/// The largest uid or gid: one more is `(uid_t)-1`.
pub(crate) const MAX_ID: u32 = u32::MAX - 1;

/// Checks a uid or gid given as `flag`.
///
/// # Errors
/// [`PlanError::Id`] for `(uid_t)-1`.
pub(crate) fn check_id(flag: &'static str, value: u32) -> Result<u32, PlanError> {
    if value <= MAX_ID {
        Ok(value)
    } else {
        Err(PlanError::Id { flag, value })
    }
}

/// Checks `--rootfs` and returns it absolute.
///
/// # Errors
/// [`PlanError::Rootfs`] naming the path.
pub fn check_rootfs(path: &Path) -> Result<PathBuf, PlanError> {
    let err = |problem: String| PlanError::Rootfs {
        path: path.to_owned(),
        problem,
    };
    let canon = path.canonicalize().map_err(|e| err(e.to_string()))?;
    if !canon.is_dir() {
        return Err(err("not a directory".into()));
    }
    Ok(canon)
}

/// `--rootfs A:B:C`: the rootfs (the last, bottom tree) and the layers over it (topmost
/// first), each checked as [`check_rootfs`]. A path that is itself a directory is one
/// rootfs, colons and all.
///
/// # Errors
/// [`PlanError::Rootfs`] naming the part at fault.
pub(crate) fn split_rootfs(path: &Path) -> Result<(PathBuf, Vec<PathBuf>), PlanError> {
    if path.is_dir() {
        return Ok((check_rootfs(path)?, Vec::new()));
    }
    use std::os::unix::ffi::OsStrExt;
    let text = path.as_os_str().as_bytes();
    let parts: Vec<&[u8]> = text.split(|&b| b == b':').collect();
    if parts.len() < 2 {
        return Ok((check_rootfs(path)?, Vec::new()));
    }
    let mut trees = Vec::with_capacity(parts.len());
    for part in parts {
        if part.is_empty() {
            return Err(PlanError::Rootfs {
                path: path.to_owned(),
                problem: "an empty layer between colons (A:B:C, topmost first)".into(),
            });
        }
        trees.push(check_rootfs(Path::new(std::ffi::OsStr::from_bytes(part)))?);
    }
    let rootfs = trees.pop().unwrap_or_default();
    let twice = (0..trees.len()).any(|i| trees[i] == rootfs || trees[..i].contains(&trees[i]));
    if twice {
        return Err(PlanError::Rootfs {
            path: path.to_owned(),
            problem: "a layer appears twice".into(),
        });
    }
    Ok((rootfs, trees))
}

/// Normalizes a capability name (`net_raw`, `CAP_NET_RAW`) to `CAP_NET_RAW`.
///
/// # Errors
/// [`PlanError::Capability`] for names capabilities(7) does not know.
pub(crate) fn parse_capability(flag: &'static str, value: &str) -> Result<String, PlanError> {
    let upper = value.to_ascii_uppercase();
    let name = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    match name.parse::<caps::Capability>() {
        Ok(_) => Ok(name),
        Err(_) => Err(PlanError::Capability {
            flag,
            value: value.to_owned(),
        }),
    }
}

/// The state root: `$OVLRUN_STATE`, else `$XDG_STATE_HOME/ovlrun`, else `/var/lib/ovlrun`
/// for root, else `~/.local/state/ovlrun`.
///
/// # Errors
/// [`PlanError::NoStateRoot`] when none applies.
pub fn state_root() -> Result<PathBuf, PlanError> {
    if let Some(dir) = std::env::var_os("OVLRUN_STATE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("ovlrun"));
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/ovlrun"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|home| PathBuf::from(home).join(".local/state/ovlrun"))
        .ok_or(PlanError::NoStateRoot)
}

/// The environment a command gets by default: `PATH`, `HOME`, `TERM` (from the host when
/// set).
pub(crate) fn default_env(home: &str) -> Vec<OsString> {
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
    vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        format!("HOME={home}").into(),
        format!("TERM={term}").into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_flags_win_over_the_config() {
        assert_eq!(Terminal::chosen(false, false, None), Terminal::Auto);
        assert_eq!(Terminal::chosen(true, false, Some(false)), Terminal::Always);
        assert_eq!(Terminal::chosen(false, true, Some(true)), Terminal::Never);
        assert_eq!(Terminal::chosen(false, false, Some(true)), Terminal::Always);
        assert_eq!(Terminal::chosen(false, false, Some(false)), Terminal::Never);
    }

    #[test]
    fn bind_values() {
        let b = parse_bind("/tmp:/mnt/t:ro").unwrap();
        assert_eq!((b.dest.as_path(), b.read_only), (Path::new("/mnt/t"), true));
        assert!(!parse_bind("/tmp:/x").unwrap().read_only);
        for bad in [
            "/tmp",
            "/tmp:rel",
            "/tmp:/x:rx",
            ":/x",
            "/does/not/exist:/x",
        ] {
            let e = parse_bind(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--bind {bad}:")), "{e}");
        }
    }

    #[test]
    fn rlimit_values() {
        let r = parse_rlimit("nofile=64:128").unwrap();
        assert_eq!(
            (r.name.as_str(), r.soft, r.hard),
            ("RLIMIT_NOFILE", 64, 128)
        );
        let r = parse_rlimit("RLIMIT_CORE=unlimited").unwrap();
        assert_eq!((r.soft, r.hard), (u64::MAX, u64::MAX));
        assert_eq!(parse_rlimit("nproc=10").unwrap().hard, 10);
        for bad in ["nofile", "flying=1", "nofile=x", "nofile=10:5"] {
            let e = parse_rlimit(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--rlimit {bad}:")), "{e}");
        }
    }

    #[test]
    fn only_namespaced_sysctls() {
        assert!(check_sysctl("--sysctl", "net.ipv4.ip_forward", Network::None).is_ok());
        assert!(check_sysctl("--sysctl", "kernel.shmmax", Network::Host).is_ok());
        assert!(check_sysctl("--sysctl", "fs.mqueue.msg_max", Network::Host).is_ok());
        for (key, net) in [
            ("net.ipv4.ip_forward", Network::Host),
            ("kernel.core_pattern", Network::None),
            ("vm.drop_caches", Network::None),
            ("net..ipv4", Network::None),
            ("net.ipv4/../../kernel/core_pattern", Network::None),
        ] {
            let e = check_sysctl("--sysctl", key, net).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--sysctl {key}:")), "{e}");
        }
        assert_eq!(
            parse_sysctl("kernel.shmmni=100", Network::Host).unwrap(),
            ("kernel.shmmni".into(), "100".into())
        );
    }

    #[test]
    fn capability_names() {
        assert_eq!(
            parse_capability("--cap-add", "net_raw").unwrap(),
            "CAP_NET_RAW"
        );
        assert_eq!(
            parse_capability("--cap-add", "CAP_SYS_ADMIN").unwrap(),
            "CAP_SYS_ADMIN"
        );
        assert!(parse_capability("--cap-drop", "flying").is_err());
    }

    #[test]
    fn rootfs_must_be_a_directory() {
        let e = check_rootfs(Path::new("/nonexistent/rootfs"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/rootfs"), "{e}");
        let e = check_rootfs(Path::new("/etc/hostname"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}
