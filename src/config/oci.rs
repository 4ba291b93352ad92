//! An OCI runtime-spec `config.json` read into [`OciSettings`]: the settings the file gives
//! a session, each optional, checked against what ovlrun can do.
//!
//! This module decides what the file says and whether ovlrun can honour it. It does not
//! decide defaults or which command-line flag wins (the binary's `plan()` does), and it creates
//! nothing. Unknown keys are ignored, as the runtime spec requires; a known field that ovlrun
//! does not implement and whose value would change what the session may see or do is an
//! error naming the field (`linux.intelRdt`, `mounts[3].options`), never dropped silently.
//! Fields for other platforms (`solaris`, `windows`, `vm`, `zos`) are ignored.
//!
//! See: <https://github.com/opencontainers/runtime-spec/blob/main/config.md>

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, LinuxCapabilities, LinuxIdMapping, LinuxNamespaceType, LinuxSeccomp, Mount, Spec,
};
use serde::Serialize;

use super::{Bind, Network, UserNs};
use crate::host::ids::IdMap;
use crate::layers::WhiteoutFormat;
use crate::mount::Backend;
use crate::policy::Policy;

/// Annotation: what to do with the changes (`preserve|discard|commit|commit-atomic|ask`).
pub(crate) const ANNOTATION_POLICY: &str = "org.ovlrun.policy";
/// Annotation: the upper directory (relative to the config file's directory).
pub(crate) const ANNOTATION_UPPER: &str = "org.ovlrun.upper";
/// Annotation: the whiteout format (`kernel|aufs`).
pub(crate) const ANNOTATION_WHITEOUT: &str = "org.ovlrun.whiteout";
/// Annotation: which filesystem serves the overlay (`auto|kernel|fuse`).
pub(crate) const ANNOTATION_FS: &str = "org.ovlrun.fs";

/// Mount destinations the launcher sets up itself: an entry for one of them is accepted
/// whatever its type or options, and ovlrun's own mount is used.
const PROVIDED: [&str; 7] = [
    "/proc",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/sys",
    "/sys/fs/cgroup",
];

/// Mount options that change nothing in ovlrun's mounts: access-time flavours, and
/// propagation (every mount in a session is private to it).
const NEUTRAL_OPTIONS: [&str; 10] = [
    "rw",
    "relatime",
    "norelatime",
    "strictatime",
    "noatime",
    "nodiratime",
    "private",
    "rprivate",
    "slave",
    "rslave",
];

/// What a config file says, as ovlrun's settings. `None` (or empty) means the file does
/// not say, and the flag or ovlrun's default applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OciSettings {
    /// `root.path`, made absolute against the config file's directory; an existing directory.
    pub rootfs: Option<PathBuf>,
    /// `process.args`; `None` when absent or empty.
    pub args: Option<Vec<OsString>>,
    /// `process.env`, each `KEY=VALUE`: the whole environment, not additions to the caller's.
    pub env: Option<Vec<OsString>>,
    /// `process.cwd` (absolute).
    pub cwd: Option<PathBuf>,
    /// `process.terminal`: true gives the command a pty of its own, as `-t` does; false
    /// none, as `--no-tty` does (podman's `--console-socket` protocol is not spoken).
    pub terminal: Option<bool>,
    /// `process.user.uid`.
    pub uid: Option<u32>,
    /// `process.user.gid`.
    pub gid: Option<u32>,
    /// `hostname`.
    pub hostname: Option<String>,
    /// `mounts` of type bind, in order (sources absolute and existing).
    pub binds: Vec<Bind>,
    /// `mounts` of type tmpfs, in order (other than the ones ovlrun provides).
    pub tmpfs: Vec<PathBuf>,
    /// From `linux.namespaces`: a `network` entry means a new, empty network namespace;
    /// none means the host's. Always set from a file.
    pub net: Option<Network>,
    /// From `linux.namespaces`: no `user` entry, for a root caller, means the caller's user
    /// namespace; anything else a new one. Always set from a file.
    pub userns: Option<UserNs>,
    /// `process.capabilities`, all five sets as given.
    pub capabilities: Option<super::CapabilitySets>,
    /// Annotation `org.ovlrun.policy`.
    pub policy: Option<Policy>,
    /// Annotation `org.ovlrun.upper`, made absolute against the config file's directory.
    pub upper: Option<PathBuf>,
    /// Annotation `org.ovlrun.whiteout`.
    pub whiteout: Option<WhiteoutFormat>,
    /// Annotation `org.ovlrun.fs`.
    pub fs: Option<Backend>,
    /// `process.rlimits`.
    pub rlimits: Vec<super::Rlimit>,
    /// `linux.maskedPaths` (absolute).
    pub masked_paths: Vec<PathBuf>,
    /// `linux.readonlyPaths` (absolute).
    pub readonly_paths: Vec<PathBuf>,
    /// `root.readonly`.
    pub read_only_root: bool,
    /// `process.noNewPrivileges` when given.
    pub no_new_privs: Option<bool>,
    /// `linux.sysctl`, checked to be namespaced.
    pub sysctl: Vec<(String, String)>,
    /// `process.oomScoreAdj`.
    pub oom_score_adj: Option<i32>,
    /// `linux.seccomp`, checked (compiled once) to be a profile ovlrun can honour.
    pub seccomp: Option<Box<LinuxSeccomp>>,
}

/// The caller, as far as reading a config depends on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The caller is root (so a config without a user namespace can be honoured).
    pub root: bool,
    /// The id maps ovlrun would write for a new user namespace.
    pub idmap: IdMap,
}

impl Caller {
    /// The calling process.
    pub(crate) fn current() -> Caller {
        Caller {
            root: nix::unistd::geteuid().is_root(),
            idmap: crate::host::ids::choose(),
        }
    }

    /// The caller's own uid and gid on the host.
    fn own_ids(&self) -> (u32, u32) {
        match self.idmap {
            IdMap::Identity => (0, 0),
            IdMap::Single { uid, gid } | IdMap::Sub { uid, gid, .. } => (uid, gid),
        }
    }
}

/// A config file that cannot be used. Each variant names the file; a field error names the
/// field as a JSON path.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The file cannot be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than any config (`/dev/zero`, a log given by mistake): not read on.
    #[error("config {} is larger than {} MiB (a runtime-spec config is a few KiB); not read", .path.display(), MAX_CONFIG_BYTES >> 20)]
    TooLarge {
        /// The config file.
        path: PathBuf,
    },
    /// The file is not JSON, or not shaped like a runtime-spec config.
    #[error("{}:{line}:{column}: {message}", .path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What serde_json found.
        message: String,
    },
    /// A field ovlrun cannot honour.
    #[error("{}: {field}: {problem}", .path.display())]
    Field {
        /// The config file.
        path: PathBuf,
        /// The field, as a JSON path (`linux.seccomp`, `mounts[2].source`).
        field: String,
        /// What is wrong, and what ovlrun does instead where that helps.
        problem: String,
    },
}

/// Reads and checks the config file at `path` for the calling process.
///
/// # Errors
/// [`OciError::Read`] naming the path, [`OciError::Parse`] with line and column, or
/// [`OciError::Field`] naming the first field ovlrun cannot honour.
pub fn load(path: &Path) -> Result<OciSettings, OciError> {
    let text = read_bounded(path)?;
    let spec = parse(path, &text)?;
    settings(&spec, path, &Caller::current())
}

/// The most a config file may hold.
pub(crate) const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Reads `path` as text, at most [`MAX_CONFIG_BYTES`] of it.
///
/// # Errors
/// [`OciError::TooLarge`], or [`OciError::Read`] (not UTF-8 included).
fn read_bounded(path: &Path) -> Result<String, OciError> {
    use std::io::Read;
    let read_err = |source| OciError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(OciError::TooLarge {
            path: path.to_owned(),
        });
    }
    String::from_utf8(bytes)
        .map_err(|e| read_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// Parses `text` (the content of `path`) as a runtime-spec config.
///
/// # Errors
/// [`OciError::Parse`] with line and column.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Spec, OciError> {
    let positioned = |e: serde_json::Error| {
        let message = e.to_string();
        // serde_json appends the position, which the error shows in front instead.
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        OciError::Parse {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            message: message.strip_suffix(&suffix).unwrap_or(&message).to_owned(),
        }
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(positioned)?;
    // The profile first, field by field: the whole-spec parse below could only say where an
    // unknown action is, not which field holds it.
    if let Some(profile) = value.pointer("/linux/seccomp").filter(|v| !v.is_null()) {
        super::seccomp::from_value(profile).map_err(|e| {
            let e = e.under("linux.seccomp");
            OciError::Field {
                path: path.to_owned(),
                field: e.field,
                problem: e.problem,
            }
        })?;
    }
    serde_json::from_str::<Spec>(text).map_err(positioned)
}

/// The settings `spec` (read from `path`) gives a session started by `caller`.
///
/// # Errors
/// [`OciError::Field`] naming the first field ovlrun cannot honour.
pub(crate) fn settings(spec: &Spec, path: &Path, caller: &Caller) -> Result<OciSettings, OciError> {
    let ctx = Ctx {
        path,
        dir: match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        },
    };
    let mut out = OciSettings::default();
    ctx.reject_unsupported(spec)?;
    if let Some(root) = spec.root() {
        out.read_only_root = root.readonly() == Some(true);
        out.rootfs = Some(ctx.rootfs(root.path())?);
    }
    ctx.process(spec, &mut out)?;
    out.hostname = spec.hostname().clone();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        ctx.mount(i, m, &mut out)?;
    }
    ctx.namespaces(spec, caller, &mut out)?;
    ctx.hardening(spec, &mut out)?;
    ctx.annotations(spec, &mut out)?;
    Ok(out)
}

/// `ovlrun spec`'s config.json: the shape of `examples/config.json` (a unit test keeps them
/// equal), written in the same order and style.
const STARTING_CONFIG: &str = r#"{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": {
      "uid": 0,
      "gid": 0
    },
    "args": [
      "sh"
    ],
    "env": [
      "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      "TERM=xterm"
    ],
    "cwd": "/"
  },
  "root": {
    "path": {ROOTFS}
  },
  "hostname": "ovlrun",
  "mounts": [
    {
      "destination": "/proc",
      "type": "proc",
      "source": "proc"
    },
    {
      "destination": "/dev",
      "type": "tmpfs",
      "source": "tmpfs",
      "options": [
        "nosuid",
        "strictatime",
        "mode=755",
        "size=65536k"
      ]
    },
    {
      "destination": "/sys",
      "type": "none",
      "source": "/sys",
      "options": [
        "rbind",
        "nosuid",
        "noexec",
        "nodev",
        "ro"
      ]
    },
    {
      "destination": "/tmp",
      "type": "tmpfs",
      "source": "tmpfs",
      "options": [
        "nosuid",
        "nodev",
        "mode=1777"
      ]
    }
  ],
  "linux": {
    "namespaces": [
      {
        "type": "pid"
      },
      {
        "type": "ipc"
      },
      {
        "type": "uts"
      },
      {
        "type": "mount"
      },
      {
        "type": "user"
      }
    ]
  },
  "annotations": {
    "org.ovlrun.policy": "discard"
  }
}"#;

/// A starting `config.json` for `ovlrun spec`, pretty-printed, with `root.path` set to
/// `rootfs`.
pub fn starting_config(rootfs: &str) -> String {
    // A JSON string is always serializable; the fallback only keeps this free of unwrap.
    let quoted = serde_json::to_string(rootfs).unwrap_or_else(|_| "\"rootfs\"".into());
    STARTING_CONFIG.replace("{ROOTFS}", &quoted)
}

/// True when `value` serializes to anything but null, `[]`, `{}` or nested empties: "the
/// field says something".
fn has_content<T: Serialize>(value: &T) -> bool {
    fn content(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Null => false,
            serde_json::Value::Array(a) => a.iter().any(content),
            serde_json::Value::Object(o) => o.values().any(content),
            _ => true,
        }
    }
    // A value that cannot be serialized cannot be checked: count it as saying something.
    serde_json::to_value(value).map_or(true, |v| content(&v))
}

/// Lexically normal: no `.` or `..` components, so comparisons with [`PROVIDED`] hold.
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

struct Ctx<'a> {
    /// The config file.
    path: &'a Path,
    /// Its directory, against which relative paths in it are resolved.
    dir: &'a Path,
}

impl Ctx<'_> {
    fn bad(&self, field: impl Into<String>, problem: impl Into<String>) -> OciError {
        OciError::Field {
            path: self.path.to_owned(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// Fields ovlrun has no way to honour, rejected whenever they say anything.
    fn reject_unsupported(&self, spec: &Spec) -> Result<(), OciError> {
        let mut checks: Vec<(&str, bool, &str)> = vec![
            (
                "domainname",
                has_content(spec.domainname()),
                "not supported",
            ),
            (
                "hooks",
                has_content(spec.hooks()),
                "hooks are not supported",
            ),
        ];
        if let Some(p) = spec.process() {
            let user = p.user();
            checks.extend([
                (
                    "process.user.umask",
                    has_content(&user.umask()),
                    "not supported",
                ),
                (
                    "process.user.additionalGids",
                    has_content(user.additional_gids()),
                    "not supported (the command's only group is its gid)",
                ),
                (
                    "process.apparmorProfile",
                    has_content(p.apparmor_profile()),
                    "AppArmor is not supported",
                ),
                (
                    "process.selinuxLabel",
                    has_content(p.selinux_label()),
                    "SELinux is not supported",
                ),
                (
                    "process.ioPriority",
                    has_content(p.io_priority()),
                    "not supported",
                ),
                (
                    "process.scheduler",
                    has_content(p.scheduler()),
                    "not supported",
                ),
                (
                    "process.execCPUAffinity",
                    has_content(p.exec_cpu_affinity()),
                    "not supported",
                ),
            ]);
        }
        if let Some(l) = spec.linux() {
            checks.extend([
                (
                    "linux.resources",
                    has_content(&l.resources().as_ref().map(resources_past_devices)),
                    "cgroup limits are not supported",
                ),
                (
                    "linux.cgroupsPath",
                    has_content(l.cgroups_path()),
                    "cgroups are not supported (the command stays in the caller's cgroup)",
                ),
                (
                    "linux.devices",
                    has_content(l.devices()),
                    "not supported (ovlrun makes /dev)",
                ),
                (
                    "linux.netDevices",
                    has_content(l.net_devices()),
                    "not supported",
                ),
                (
                    "linux.mountLabel",
                    has_content(l.mount_label()),
                    "SELinux is not supported",
                ),
                (
                    "linux.intelRdt",
                    has_content(l.intel_rdt()),
                    "not supported",
                ),
                (
                    "linux.memoryPolicy",
                    has_content(l.memory_policy()),
                    "not supported",
                ),
                (
                    "linux.personality",
                    has_content(l.personality()),
                    "not supported",
                ),
                (
                    "linux.timeOffsets",
                    has_content(l.time_offsets()),
                    "not supported",
                ),
            ]);
            match l.rootfs_propagation().as_deref() {
                None | Some("private" | "rprivate" | "slave" | "rslave") => {}
                Some(other) => {
                    return Err(self.bad(
                        "linux.rootfsPropagation",
                        format!("{other:?} is not supported (a session's mounts are private)"),
                    ));
                }
            }
        }
        match checks.into_iter().find(|(_, said, _)| *said) {
            Some((field, _, problem)) => Err(self.bad(field, problem)),
            None => Ok(()),
        }
    }

    fn rootfs(&self, path: &Path) -> Result<PathBuf, OciError> {
        let full = self.dir.join(path);
        let canon = full
            .canonicalize()
            .map_err(|e| self.bad("root.path", format!("{}: {e}", full.display())))?;
        if !canon.is_dir() {
            return Err(self.bad("root.path", format!("{}: not a directory", full.display())));
        }
        Ok(canon)
    }

    fn process(&self, spec: &Spec, out: &mut OciSettings) -> Result<(), OciError> {
        let Some(p) = spec.process() else {
            return Ok(());
        };
        out.terminal = p.terminal();
        for (field, id) in [
            ("process.user.uid", p.user().uid()),
            ("process.user.gid", p.user().gid()),
        ] {
            if id > super::MAX_ID {
                return Err(self.bad(
                    field,
                    format!("{id}: not a valid id (0 to {})", super::MAX_ID),
                ));
            }
        }
        out.uid = Some(p.user().uid());
        out.gid = Some(p.user().gid());
        out.args = p
            .args()
            .as_ref()
            .filter(|a| !a.is_empty())
            .map(|a| a.iter().map(OsString::from).collect());
        if let Some(env) = p.env() {
            for (i, kv) in env.iter().enumerate() {
                if !kv.contains('=') {
                    return Err(self.bad(format!("process.env[{i}]"), "expected KEY=VALUE"));
                }
            }
            out.env = Some(env.iter().map(OsString::from).collect());
        }
        if !p.cwd().is_absolute() {
            return Err(self.bad(
                "process.cwd",
                format!("{}: must be absolute", p.cwd().display()),
            ));
        }
        out.cwd = Some(p.cwd().clone());
        if let Some(caps) = p.capabilities() {
            self.capabilities(caps, out)?;
        }
        Ok(())
    }

    /// The five sets as given; the launcher applies them in runc's order (bounding first,
    /// ambient last), so a config asks for exactly what it gets.
    fn capabilities(
        &self,
        caps: &LinuxCapabilities,
        out: &mut OciSettings,
    ) -> Result<(), OciError> {
        let names =
            |field: &str, set: &Option<Capabilities>| -> Result<BTreeSet<String>, OciError> {
                set.iter()
                    .flatten()
                    .map(|c| {
                        let name = format!("CAP_{c}");
                        // The flag name is only used in parse_capability's own error.
                        super::parse_capability("--cap-add", &name)
                            .map_err(|_| self.bad(field, format!("{name}: unknown capability")))
                    })
                    .collect()
            };
        let sets = super::CapabilitySets {
            bounding: names("process.capabilities.bounding", caps.bounding())?,
            effective: names("process.capabilities.effective", caps.effective())?,
            permitted: names("process.capabilities.permitted", caps.permitted())?,
            inheritable: names("process.capabilities.inheritable", caps.inheritable())?,
            ambient: names("process.capabilities.ambient", caps.ambient())?,
        };
        // The kernel refuses these combinations; say which field, before anything runs.
        for (field, set) in [
            ("process.capabilities.effective", &sets.effective),
            ("process.capabilities.ambient", &sets.ambient),
        ] {
            if let Some(c) = set.difference(&sets.permitted).next() {
                return Err(self.bad(field, format!("{c} is not in permitted")));
            }
        }
        out.capabilities = Some(sets);
        Ok(())
    }

    fn mount(&self, i: usize, m: &Mount, out: &mut OciSettings) -> Result<(), OciError> {
        let dest = m.destination();
        if !dest.is_absolute() {
            return Err(self.bad(
                format!("mounts[{i}].destination"),
                format!(
                    "{}: must be an absolute path inside the session",
                    dest.display()
                ),
            ));
        }
        for (name, maps) in [
            ("uidMappings", m.uid_mappings()),
            ("gidMappings", m.gid_mappings()),
        ] {
            if has_content(maps) {
                return Err(self.bad(
                    format!("mounts[{i}].{name}"),
                    "id-mapped mounts are not supported",
                ));
            }
        }
        let dest = normal(dest);
        if PROVIDED.iter().any(|p| dest == Path::new(p)) {
            return Ok(());
        }
        let options: Vec<&str> = m.options().iter().flatten().map(String::as_str).collect();
        let typ = m.typ().as_deref().unwrap_or("");
        let bind = typ == "bind" || options.iter().any(|o| matches!(*o, "bind" | "rbind"));
        let bad_option = |o: &str, kind: &str| {
            self.bad(
                format!("mounts[{i}].options"),
                format!(
                    "{o:?} is not supported on a {kind} mount ({})",
                    dest.display()
                ),
            )
        };
        if bind {
            // nosuid changes nothing: the command runs with no_new_privs, so set-user-ID
            // bits and file capabilities grant nothing anywhere.
            if let Some(o) = options.iter().find(|o| {
                !matches!(**o, "bind" | "rbind" | "ro" | "nosuid") && !NEUTRAL_OPTIONS.contains(o)
            }) {
                return Err(bad_option(o, "bind"));
            }
            let field = format!("mounts[{i}].source");
            let source = m
                .source()
                .as_ref()
                .ok_or_else(|| self.bad(field.as_str(), "a bind mount needs a source"))?;
            let full = self.dir.join(source);
            let source = full
                .canonicalize()
                .map_err(|e| self.bad(field.as_str(), format!("{}: {e}", full.display())))?;
            // The last of ro/rw wins, as in mount(8).
            let read_only =
                options.iter().rev().find(|o| matches!(**o, "ro" | "rw")) == Some(&"ro");
            out.binds.push(Bind {
                source,
                dest,
                read_only,
            });
            return Ok(());
        }
        if typ != "tmpfs" {
            return Err(self.bad(
                format!("mounts[{i}]"),
                format!(
                    "type {typ:?} on {} is not supported (ovlrun makes bind and tmpfs mounts, \
                     and provides {} itself)",
                    dest.display(),
                    PROVIDED.join(", ")
                ),
            ));
        }
        // The launcher's own /tmp is a tmpfs with mode 1777 (nosuid, nodev): this entry asks
        // for exactly that.
        let tmp = dest == Path::new("/tmp");
        let mode_ok = |mode: &str| {
            let mode = mode.trim_start_matches('0');
            if tmp { mode == "1777" } else { mode == "755" }
        };
        if let Some(o) = options.iter().find(|o| match o.strip_prefix("mode=") {
            Some(mode) => !mode_ok(mode),
            None => !matches!(**o, "nosuid" | "nodev") && !NEUTRAL_OPTIONS.contains(o),
        }) {
            return Err(bad_option(o, "tmpfs"));
        }
        if !tmp {
            out.tmpfs.push(dest);
        }
        Ok(())
    }

    /// `process.rlimits`, `process.noNewPrivileges`, `process.oomScoreAdj`, `linux.seccomp`,
    /// `linux.maskedPaths`, `linux.readonlyPaths` and `linux.sysctl` (after the
    /// namespaces, which decide whether `net.*` keys are the session's own).
    fn hardening(&self, spec: &Spec, out: &mut OciSettings) -> Result<(), OciError> {
        if let Some(p) = spec.process() {
            for (i, r) in p.rlimits().iter().flatten().enumerate() {
                let field = format!("process.rlimits[{i}]");
                let name = serde_json::to_value(r.typ())
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let limit = super::rlimit(&field, &name, r.soft(), r.hard())
                    .map_err(|e| self.bad(field.as_str(), e.to_string()))?;
                out.rlimits.retain(|old| old.resource != limit.resource);
                out.rlimits.push(limit);
            }
            out.no_new_privs = p.no_new_privileges();
            out.oom_score_adj = p.oom_score_adj();
        }
        let Some(l) = spec.linux() else {
            return Ok(());
        };
        if let Some(profile) = l.seccomp() {
            super::seccomp::check(profile).map_err(|e| {
                let e = e.under("linux.seccomp");
                self.bad(e.field, e.problem)
            })?;
            out.seccomp = Some(Box::new(profile.clone()));
        }
        for (field, paths, into) in [
            ("linux.maskedPaths", l.masked_paths(), &mut out.masked_paths),
            (
                "linux.readonlyPaths",
                l.readonly_paths(),
                &mut out.readonly_paths,
            ),
        ] {
            for (i, path) in paths.iter().flatten().enumerate() {
                if !path.starts_with('/') {
                    return Err(self.bad(
                        format!("{field}[{i}]"),
                        format!("{path}: must be an absolute path inside the session"),
                    ));
                }
                into.push(PathBuf::from(path));
            }
        }
        let net = out.net.unwrap_or(Network::Host);
        let mut keys: Vec<(&String, &String)> = l.sysctl().iter().flatten().collect();
        keys.sort();
        for (key, value) in keys {
            super::check_sysctl("linux.sysctl", key, net)
                .map_err(|e| self.bad(format!("linux.sysctl[{key:?}]"), e.to_string()))?;
            out.sysctl.push((key.clone(), value.clone()));
        }
        Ok(())
    }

    fn namespaces(
        &self,
        spec: &Spec,
        caller: &Caller,
        out: &mut OciSettings,
    ) -> Result<(), OciError> {
        let linux = spec.linux().as_ref();
        let mut user = false;
        let mut net = false;
        for (i, ns) in linux
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            if ns.path().is_some() {
                return Err(self.bad(
                    format!("linux.namespaces[{i}].path"),
                    "joining an existing namespace is not supported",
                ));
            }
            match ns.typ() {
                LinuxNamespaceType::User => user = true,
                LinuxNamespaceType::Network => net = true,
                LinuxNamespaceType::Time => {
                    return Err(self.bad(
                        format!("linux.namespaces[{i}]"),
                        format!("a {} namespace is not supported", ns.typ()),
                    ));
                }
                // Made for every session, whether asked for or not.
                LinuxNamespaceType::Cgroup
                | LinuxNamespaceType::Pid
                | LinuxNamespaceType::Ipc
                | LinuxNamespaceType::Uts
                | LinuxNamespaceType::Mount => {}
            }
        }
        out.net = Some(if net { Network::None } else { Network::Host });
        let userns = if !user && caller.root {
            UserNs::Host
        } else {
            UserNs::New
        };
        out.userns = Some(userns);
        let (uid_want, gid_want) = expected_maps(&caller.idmap);
        let own = caller.own_ids();
        let mut own_only = 0;
        for (field, given, want, own) in [
            (
                "linux.uidMappings",
                linux.and_then(|l| l.uid_mappings().as_ref()),
                uid_want,
                own.0,
            ),
            (
                "linux.gidMappings",
                linux.and_then(|l| l.gid_mappings().as_ref()),
                gid_want,
                own.1,
            ),
        ] {
            let Some(given) = given.filter(|g| !g.is_empty()) else {
                continue;
            };
            if userns == UserNs::Host {
                return Err(self.bad(field, "given without a \"user\" namespace"));
            }
            let mut given: MapLines = given.iter().map(triple).collect();
            given.sort_unstable();
            // The caller's own id onto 0 is a map anyone may write (runc's rootless spec).
            if given == [(0, own, 1)] {
                own_only += 1;
                continue;
            }
            if given != want {
                return Err(self.bad(
                    field,
                    format!(
                        "ovlrun computes the maps itself and would write {} (or only the \
                         caller's own id: 0 {own} 1); remove the field or make it equal",
                        want.iter()
                            .map(|(c, h, s)| format!("{c} {h} {s}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        match own_only {
            0 => {}
            2 => out.userns = Some(UserNs::OwnId),
            _ => {
                return Err(self.bad(
                    "linux.gidMappings",
                    "maps only the caller's own id in one of uidMappings and gidMappings: \
                     both must, or neither",
                ));
            }
        }
        Ok(())
    }

    fn annotations(&self, spec: &Spec, out: &mut OciSettings) -> Result<(), OciError> {
        let Some(annotations) = spec.annotations() else {
            return Ok(());
        };
        let mut keys: Vec<&String> = annotations
            .keys()
            .filter(|k| k.starts_with("org.ovlrun."))
            .collect();
        // Sorted, so the first error is the same on every run.
        keys.sort();
        for key in keys {
            let value = annotations[key].as_str();
            let field = format!("annotations[{key:?}]");
            let bad_value = |expected: &str| {
                self.bad(field.as_str(), format!("{value:?}: expected {expected}"))
            };
            match key.as_str() {
                ANNOTATION_POLICY => {
                    out.policy = Some(Policy::parse(value).ok_or_else(|| {
                        bad_value("preserve, discard, commit, commit-atomic or ask")
                    })?);
                }
                ANNOTATION_UPPER => {
                    if value.is_empty() {
                        return Err(bad_value("a directory"));
                    }
                    out.upper = Some(self.dir.join(value));
                }
                ANNOTATION_WHITEOUT => {
                    out.whiteout = Some(match value {
                        "kernel" => WhiteoutFormat::Kernel,
                        "aufs" => WhiteoutFormat::Aufs,
                        _ => return Err(bad_value("kernel or aufs")),
                    });
                }
                ANNOTATION_FS => {
                    out.fs = Some(match value {
                        "auto" => Backend::Auto,
                        "kernel" => Backend::Kernel,
                        "fuse" => Backend::Fuse,
                        _ => return Err(bad_value("auto, kernel or fuse")),
                    });
                }
                _ => {
                    return Err(self.bad(
                        field,
                        format!(
                            "unknown ovlrun annotation (known: {ANNOTATION_POLICY}, \
                             {ANNOTATION_UPPER}, {ANNOTATION_WHITEOUT}, {ANNOTATION_FS})"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What `resources` says beyond device rules that only deny: ovlrun's `/dev` holds only
/// the standard nodes, so "deny all devices" (what `runc spec` writes) is already so.
fn resources_past_devices(r: &oci_spec::runtime::LinuxResources) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
    if r.devices().iter().flatten().all(|d| !d.allow()) {
        if let Some(o) = v.as_object_mut() {
            o.remove("devices");
        }
    }
    v
}

/// An id map as its lines: (containerID, hostID, size), sorted.
type MapLines = Vec<(u32, u32, u32)>;

fn triple(m: &LinuxIdMapping) -> (u32, u32, u32) {
    (m.container_id(), m.host_id(), m.size())
}

/// The uid and gid maps (containerID, hostID, size), sorted, that ovlrun writes for `idmap`.
fn expected_maps(idmap: &IdMap) -> (MapLines, MapLines) {
    match idmap {
        IdMap::Identity => (vec![(0, 0, u32::MAX)], vec![(0, 0, u32::MAX)]),
        IdMap::Single { uid, gid } => (vec![(0, *uid, 1)], vec![(0, *gid, 1)]),
        IdMap::Sub {
            uid,
            gid,
            uids,
            gids,
            ..
        } => (
            vec![(0, *uid, 1), (1, uids.start, uids.count)],
            vec![(0, *gid, 1), (1, gids.start, gids.count)],
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::host::ids::{MapHelpers, Range};

    const ROOT: Caller = Caller {
        root: true,
        idmap: IdMap::Identity,
    };

    fn user() -> Caller {
        Caller {
            root: false,
            idmap: IdMap::Single {
                uid: 1000,
                gid: 1000,
            },
        }
    }

    /// A bundle directory holding `config.json` (the text of `config`) and `rootfs/`.
    fn bundle(config: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, config).unwrap();
        (dir, path)
    }

    fn read(config: &Value, caller: &Caller) -> Result<OciSettings, OciError> {
        let (_dir, path) = bundle(&config.to_string());
        let text = std::fs::read_to_string(&path).unwrap();
        settings(&parse(&path, &text)?, &path, caller)
    }

    /// The starting config with `change` applied.
    fn starting(change: impl FnOnce(&mut Value)) -> Value {
        let mut v: Value = serde_json::from_str(&starting_config("rootfs")).unwrap();
        change(&mut v);
        v
    }

    fn set(v: &mut Value, pointer: &str, value: Value) {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let parent = v.pointer_mut(parent).unwrap();
        match parent {
            Value::Array(a) => a[key.parse::<usize>().unwrap()] = value,
            Value::Object(o) => {
                o.insert(key.to_owned(), value);
            }
            _ => panic!("{pointer}: parent is not a container"),
        }
    }

    fn push(v: &mut Value, pointer: &str, value: Value) {
        v.pointer_mut(pointer)
            .unwrap()
            .as_array_mut()
            .unwrap()
            .push(value);
    }

    #[test]
    fn example_bundle() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let s = settings(&parse(&path, &text).unwrap(), &path, &ROOT).unwrap();
        let rootfs = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/rootfs")
            .canonicalize()
            .unwrap();
        assert_eq!(s.rootfs, Some(rootfs));
        assert_eq!(s.args, Some(vec![OsString::from("sh")]));
        assert_eq!(s.env.as_ref().map(Vec::len), Some(2));
        assert_eq!(s.cwd, Some(PathBuf::from("/")));
        assert_eq!((s.uid, s.gid, s.terminal), (Some(0), Some(0), Some(false)));
        assert_eq!(s.hostname.as_deref(), Some("ovlrun"));
        // /proc, /dev and /sys are ovlrun's own; so is /tmp, a 1777 tmpfs.
        assert!(s.binds.is_empty() && s.tmpfs.is_empty(), "{s:?}");
        assert_eq!(s.net, Some(Network::Host));
        assert_eq!(s.userns, Some(UserNs::New));
        assert_eq!(s.capabilities, None);
        assert_eq!(s.policy, Some(Policy::Discard));
        assert_eq!((s.upper, s.whiteout, s.fs), (None, None, None));
    }

    #[test]
    fn starting_config_is_the_example() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.json");
        let example: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let ours: Value = serde_json::from_str(&starting_config("rootfs")).unwrap();
        assert_eq!(ours, example);
        let odd: Value = serde_json::from_str(&starting_config("/a \"b\"\\c")).unwrap();
        assert_eq!(odd["root"]["path"], "/a \"b\"\\c");
    }

    #[test]
    fn mounts_namespaces_and_annotations() {
        let host = tempfile::tempdir().unwrap();
        let v = starting(|v| {
            // Relative to the config's directory, like root.path.
            push(
                v,
                "/mounts",
                json!({"destination": "/data", "type": "bind",
                "source": "rootfs", "options": ["rbind", "ro", "nosuid", "rprivate"]}),
            );
            push(
                v,
                "/mounts",
                json!({"destination": "/host/", "source":
                host.path(), "options": ["bind", "ro", "rw"]}),
            );
            push(
                v,
                "/mounts",
                json!({"destination": "/scratch", "type": "tmpfs",
                "source": "tmpfs", "options": ["nosuid", "nodev", "mode=0755"]}),
            );
            push(
                v,
                "/mounts",
                json!({"destination": "/dev/mqueue", "type": "mqueue",
                "source": "mqueue"}),
            );
            set(
                v,
                "/linux/namespaces",
                json!([{"type": "network"}, {"type": "mount"}]),
            );
            set(
                v,
                "/annotations",
                json!({"org.ovlrun.policy": "commit-atomic",
                "org.ovlrun.upper": "changes", "org.ovlrun.whiteout": "aufs",
                "org.ovlrun.fs": "fuse", "com.example.other": "kept out"}),
            );
            set(v, "/process/args", json!([]));
        });
        let (dir, path) = bundle(&v.to_string());
        let spec = parse(&path, &v.to_string()).unwrap();
        let s = settings(&spec, &path, &ROOT).unwrap();
        let rootfs = dir.path().join("rootfs").canonicalize().unwrap();
        assert_eq!(
            s.binds,
            vec![
                Bind {
                    source: rootfs,
                    dest: "/data".into(),
                    read_only: true
                },
                Bind {
                    source: host.path().canonicalize().unwrap(),
                    dest: "/host".into(),
                    read_only: false
                },
            ]
        );
        assert_eq!(s.tmpfs, vec![PathBuf::from("/scratch")]);
        assert_eq!(s.net, Some(Network::None));
        // No "user" entry: root stays in its user namespace, anyone else gets a new one.
        assert_eq!(s.userns, Some(UserNs::Host));
        assert_eq!(
            settings(&spec, &path, &user()).unwrap().userns,
            Some(UserNs::New)
        );
        assert_eq!(s.policy, Some(Policy::CommitAtomic));
        assert_eq!(s.upper, Some(dir.path().join("changes")));
        assert_eq!(s.whiteout, Some(WhiteoutFormat::Aufs));
        assert_eq!(s.fs, Some(Backend::Fuse));
        assert_eq!(s.args, None, "empty args mean the default command");
    }

    #[test]
    fn relative_root_path_is_resolved_against_the_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bundle")).unwrap();
        std::fs::create_dir_all(dir.path().join("other")).unwrap();
        let path = dir.path().join("bundle/config.json");
        // Relative to the config's directory, not to the current one.
        let text = starting_config("../other");
        let s = settings(&parse(&path, &text).unwrap(), &path, &ROOT).unwrap();
        assert_eq!(
            s.rootfs,
            Some(dir.path().join("other").canonicalize().unwrap())
        );
        let abs = starting_config(dir.path().to_str().unwrap());
        let s = settings(&parse(&path, &abs).unwrap(), &path, &ROOT).unwrap();
        assert_eq!(s.rootfs, Some(dir.path().canonicalize().unwrap()));
        let missing = starting_config("nothing-here");
        let e = settings(&parse(&path, &missing).unwrap(), &path, &ROOT)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.json: root.path: ") && e.contains("bundle/nothing-here"),
            "{e}"
        );
        let file = starting_config("config.json");
        let e = settings(&parse(&path, &file).unwrap(), &path, &ROOT);
        assert!(e.is_err(), "a file as root.path: {e:?}");
    }

    #[test]
    fn capability_sets_are_taken_as_given() {
        let set = json!([
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_MKNOD",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "AUDIT_WRITE",
            "CAP_SYS_PTRACE"
        ]);
        let v = starting(|v| {
            set_caps(
                v,
                json!({"bounding": set, "effective": set, "permitted": set}),
            );
        });
        let s = read(&v, &ROOT).unwrap();
        let caps = s.capabilities.unwrap();
        assert!(caps.bounding.contains("CAP_SYS_PTRACE") && !caps.bounding.contains("CAP_NET_RAW"));
        assert!(caps.bounding.contains("CAP_AUDIT_WRITE"));
        assert_eq!(
            (&caps.effective, &caps.permitted),
            (&caps.bounding, &caps.bounding)
        );
        assert!(caps.inheritable.is_empty() && caps.ambient.is_empty());
        let v = starting(|v| {
            set_caps(
                v,
                json!({"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]}),
            );
        });
        let e = read(&v, &ROOT).unwrap_err().to_string();
        assert!(
            e.contains("process.capabilities.effective: CAP_KILL is not in permitted"),
            "{e}"
        );
    }

    fn set_caps(v: &mut Value, caps: Value) {
        set(v, "/process/capabilities", caps);
    }

    #[test]
    fn id_maps_must_be_ovlruns_own() {
        let maps = |v: &mut Value, uid: Value, gid: Value| {
            set(v, "/linux/uidMappings", uid);
            set(v, "/linux/gidMappings", gid);
        };
        let identity = json!([{"containerID": 0, "hostID": 0, "size": 4294967295u32}]);
        let v = starting(|v| maps(v, identity.clone(), identity.clone()));
        assert!(read(&v, &ROOT).is_ok());
        let sub = Caller {
            root: false,
            idmap: IdMap::Sub {
                uid: 1000,
                gid: 100,
                uids: Range {
                    start: 100000,
                    count: 65536,
                },
                gids: Range {
                    start: 200000,
                    count: 65536,
                },
                helpers: MapHelpers {
                    newuidmap: "/usr/bin/newuidmap".into(),
                    newgidmap: "/usr/bin/newgidmap".into(),
                },
            },
        };
        let v = starting(|v| {
            maps(
                v,
                json!([{"containerID": 1, "hostID": 100000, "size": 65536},
                    {"containerID": 0, "hostID": 1000, "size": 1}]),
                json!([{"containerID": 0, "hostID": 100, "size": 1},
                    {"containerID": 1, "hostID": 200000, "size": 65536}]),
            )
        });
        assert!(read(&v, &sub).is_ok());
        let e = read(&v, &ROOT).unwrap_err().to_string();
        assert!(
            e.contains(
                "linux.uidMappings: ovlrun computes the maps itself and would write 0 0 4294967295"
            ),
            "{e}"
        );
        let v = starting(|v| maps(v, json!([]), identity.clone()));
        let e = read(&v, &user()).unwrap_err().to_string();
        assert!(
            e.contains("linux.gidMappings: ") && e.contains("0 1000 1"),
            "{e}"
        );
        let v = starting(|v| {
            maps(v, identity.clone(), json!([]));
            set(v, "/linux/namespaces", json!([]));
        });
        let e = read(&v, &ROOT).unwrap_err().to_string();
        assert!(
            e.contains("linux.uidMappings: given without a \"user\" namespace"),
            "{e}"
        );
    }

    #[test]
    fn fields_ovlrun_cannot_honour_are_errors_naming_them() {
        let caps = json!(["CAP_KILL"]);
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "linux.seccomp.syscalls[1].action: unknown action SCMP_ACT_FOO",
                Box::new(|v| {
                    set(
                        v,
                        "/linux/seccomp",
                        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
                            {"names": ["rmdir"], "action": "SCMP_ACT_FOO"}]}),
                    )
                }),
            ),
            (
                "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY needs a seccomp agent",
                Box::new(|v| {
                    set(
                        v,
                        "/linux/seccomp",
                        json!({"defaultAction": "SCMP_ACT_NOTIFY"}),
                    )
                }),
            ),
            (
                "linux.resources",
                Box::new(|v| set(v, "/linux/resources", json!({"memory": {"limit": 1000000}}))),
            ),
            (
                "linux.cgroupsPath",
                Box::new(|v| set(v, "/linux/cgroupsPath", json!("/ovlrun"))),
            ),
            (
                "linux.sysctl[\"net.ipv4.ip_forward\"]: linux.sysctl net.ipv4.ip_forward: the \
                 session shares",
                Box::new(|v| set(v, "/linux/sysctl", json!({"net.ipv4.ip_forward": "1"}))),
            ),
            (
                "linux.sysctl[\"kernel.core_pattern\"]",
                Box::new(|v| set(v, "/linux/sysctl", json!({"kernel.core_pattern": "|/x"}))),
            ),
            (
                "linux.maskedPaths[0]: proc/kcore: must be an absolute path",
                Box::new(|v| set(v, "/linux/maskedPaths", json!(["proc/kcore"]))),
            ),
            (
                "process.rlimits[0]: process.rlimits[0] RLIMIT_NOFILE: the soft limit",
                Box::new(|v| {
                    set(
                        v,
                        "/process/rlimits",
                        json!([{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 1024}]),
                    )
                }),
            ),
            (
                "linux.devices",
                Box::new(|v| {
                    set(
                        v,
                        "/linux/devices",
                        json!([{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]),
                    )
                }),
            ),
            (
                "linux.rootfsPropagation",
                Box::new(|v| set(v, "/linux/rootfsPropagation", json!("rshared"))),
            ),
            (
                "process.apparmorProfile",
                Box::new(|v| set(v, "/process/apparmorProfile", json!("docker-default"))),
            ),
            (
                "process.selinuxLabel",
                Box::new(|v| {
                    set(
                        v,
                        "/process/selinuxLabel",
                        json!("system_u:system_r:container_t:s0"),
                    )
                }),
            ),
            (
                "process.user.additionalGids",
                Box::new(|v| set(v, "/process/user/additionalGids", json!([10]))),
            ),
            (
                "process.cwd",
                Box::new(|v| set(v, "/process/cwd", json!("home"))),
            ),
            (
                "process.env[1]",
                Box::new(|v| set(v, "/process/env/1", json!("NOEQUALS"))),
            ),
            (
                "process.capabilities.ambient: CAP_KILL is not in permitted",
                {
                    let c = caps.clone();
                    Box::new(move |v| set_caps(v, json!({"bounding": c, "ambient": c})))
                },
            ),
            (
                "hooks",
                Box::new(|v| set(v, "/hooks", json!({"prestart": [{"path": "/bin/true"}]}))),
            ),
            (
                "domainname",
                Box::new(|v| set(v, "/domainname", json!("example.com"))),
            ),
            (
                "linux.namespaces[1].path",
                Box::new(|v| {
                    set(
                        v,
                        "/linux/namespaces/1",
                        json!({"type": "ipc", "path": "/proc/1/ns/ipc"}),
                    )
                }),
            ),
            (
                "linux.namespaces[5]: a time namespace",
                Box::new(|v| push(v, "/linux/namespaces", json!({"type": "time"}))),
            ),
            (
                "mounts[4]: type \"nfs\"",
                Box::new(|v| {
                    push(
                        v,
                        "/mounts",
                        json!({"destination": "/mnt", "type": "nfs", "source": "server:/x"}),
                    )
                }),
            ),
            (
                "mounts[4].options: \"noexec\"",
                Box::new(|v| {
                    push(
                        v,
                        "/mounts",
                        json!({"destination": "/mnt", "type": "bind", "source": "/", "options": ["rbind", "noexec"]}),
                    )
                }),
            ),
            (
                "mounts[4].options: \"size=1m\"",
                Box::new(|v| {
                    push(
                        v,
                        "/mounts",
                        json!({"destination": "/mnt", "type": "tmpfs", "options": ["size=1m"]}),
                    )
                }),
            ),
            (
                "mounts[4].options: \"mode=700\"",
                Box::new(|v| {
                    push(
                        v,
                        "/mounts",
                        json!({"destination": "/mnt", "type": "tmpfs", "options": ["mode=700"]}),
                    )
                }),
            ),
            (
                "mounts[3].options: \"mode=755\"",
                Box::new(|v| set(v, "/mounts/3/options", json!(["mode=755"]))),
            ),
            (
                "mounts[4].source: a bind mount needs a source",
                Box::new(|v| {
                    push(
                        v,
                        "/mounts",
                        json!({"destination": "/mnt", "options": ["bind"]}),
                    )
                }),
            ),
            (
                "mounts[4].source: ",
                Box::new(|v| {
                    push(
                        v,
                        "/mounts",
                        json!({"destination": "/mnt", "options": ["bind"], "source": "/does/not/exist"}),
                    )
                }),
            ),
            (
                "mounts[4].destination",
                Box::new(|v| push(v, "/mounts", json!({"destination": "mnt", "type": "tmpfs"}))),
            ),
            (
                "mounts[4].uidMappings",
                Box::new(|v| {
                    push(
                        v,
                        "/mounts",
                        json!({"destination": "/mnt", "type": "bind", "source": "/", "uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]}),
                    )
                }),
            ),
            (
                "annotations[\"org.ovlrun.policy\"]: \"keep\": expected preserve",
                Box::new(|v| set(v, "/annotations/org.ovlrun.policy", json!("keep"))),
            ),
            (
                "annotations[\"org.ovlrun.whiteout\"]",
                Box::new(|v| set(v, "/annotations/org.ovlrun.whiteout", json!("chardev"))),
            ),
            (
                "annotations[\"org.ovlrun.fs\"]",
                Box::new(|v| set(v, "/annotations/org.ovlrun.fs", json!("ext4"))),
            ),
            (
                "annotations[\"org.ovlrun.polcy\"]: unknown ovlrun annotation",
                Box::new(|v| set(v, "/annotations/org.ovlrun.polcy", json!("discard"))),
            ),
        ];
        for (want, change) in cases {
            let v = starting(|v| change(v));
            match read(&v, &ROOT) {
                Ok(s) => panic!("{want}: accepted as {s:?}"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(e.contains(&format!("config.json: {want}")), "{want}: {e}");
                }
            }
        }
    }

    #[test]
    fn a_seccomp_profile_is_honoured() {
        let profile = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]});
        let v = starting(|v| set(v, "/linux/seccomp", profile.clone()));
        let got = read(&v, &ROOT).unwrap().seccomp.unwrap();
        assert_eq!(serde_json::to_value(&*got).unwrap(), profile);
        let v = starting(|v| set(v, "/linux/seccomp", Value::Null));
        assert_eq!(read(&v, &ROOT).unwrap().seccomp, None);
    }

    #[test]
    fn empty_or_harmless_values_are_accepted() {
        let v = starting(|v| {
            set(v, "/linux/resources", json!({"devices": []}));
            set(v, "/linux/maskedPaths", json!([]));
            set(v, "/linux/rootfsPropagation", json!("rslave"));
            set(v, "/process/rlimits", json!([]));
            set(v, "/process/noNewPrivileges", json!(true));
            set(v, "/hooks", json!({"prestart": []}));
            // Unknown keys are ignored, as the runtime spec requires.
            set(v, "/process/someFutureField", json!({"x": 1}));
            set(v, "/someFutureSection", json!([1, 2]));
            // Other platforms' sections do not apply.
            set(v, "/windows", json!({"layerFolders": ["C:\\layers"]}));
        });
        assert!(read(&v, &ROOT).is_ok(), "{:?}", read(&v, &ROOT));
    }

    #[test]
    fn malformed_json_is_reported_with_line_and_column() {
        let (_dir, path) = bundle("{\n  \"ociVersion\": \"1.0.2\",\n  \"process\": [,\n}\n");
        let e = load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:3:", path.display())), "{e}");
        assert!(!e.contains(" at line "), "position given twice: {e}");
        // Valid JSON, wrong type: serde's position too.
        let text = starting_config("rootfs").replace("\"uid\": 0", "\"uid\": \"root\"");
        let e = parse(Path::new("b/config.json"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("b/config.json:6:19: invalid type"), "{e}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = load(Path::new("/does/not/exist/config.json")).unwrap_err();
        assert!(e.to_string().contains("/does/not/exist/config.json"), "{e}");
    }
}
