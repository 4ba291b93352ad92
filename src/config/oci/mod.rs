//! An OCI runtime-spec `config.json` read into [`OciSettings`]: the settings the file gives
//! a session, each optional, checked against what ovlrun can do.
//!
//! This module decides what the file says and whether ovlrun can honour it. It does not
//! decide defaults or which command-line flag wins (`SessionPlan::from_flags` does), and it creates
//! nothing. Unknown keys are ignored, as the runtime spec requires; a known field that ovlrun
//! does not implement and whose value would change what the session may see or do is an
//! error naming the field (`linux.intelRdt`, `mounts[3].options`), never dropped silently.
//! Fields for other platforms (`solaris`, `windows`, `vm`, `zos`) are ignored.
//!
//! See: <https://github.com/opencontainers/runtime-spec/blob/main/config.md>

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxSeccomp, Spec};
use serde::Serialize;

use super::{Network, UserNs};
use crate::host::ids::IdMap;
use crate::layers::WhiteoutFormat;
use crate::mount::Backend;
use crate::policy::Policy;

mod annotations;
mod linux;
mod mounts;
mod process;
mod reject;
#[cfg(test)]
mod tests;

/// Annotation: what to do with the changes (`preserve|discard|commit|commit-atomic|ask`).
pub(crate) const ANNOTATION_POLICY: &str = "org.ovlrun.policy";
/// Annotation: the upper directory (relative to the config file's directory).
pub(crate) const ANNOTATION_UPPER: &str = "org.ovlrun.upper";
/// Annotation: the whiteout format (`kernel|aufs`).
pub(crate) const ANNOTATION_WHITEOUT: &str = "org.ovlrun.whiteout";
/// Annotation: which filesystem serves the overlay (`auto|kernel|fuse`).
pub(crate) const ANNOTATION_FS: &str = "org.ovlrun.fs";
/// Annotation: an fsync per copy-up (`true|false`), as `--durable`.
pub(crate) const ANNOTATION_DURABLE: &str = "org.ovlrun.durable";

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
    /// `process.user.additionalGids`: the command's supplementary groups.
    pub groups: Vec<u32>,
    /// `process.user.gid`.
    pub gid: Option<u32>,
    /// `hostname`.
    pub hostname: Option<String>,
    /// `mounts` of type bind, tmpfs and mqueue, in order (bind sources absolute and
    /// existing), other than the ones ovlrun provides.
    pub mounts: Vec<super::FsMount>,
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
    /// Annotation `org.ovlrun.durable`.
    pub durable: bool,
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
    /// `linux.devices`: the host's node of each, bound into the session's `/dev`.
    pub dev_binds: Vec<super::Bind>,
    /// `linux.sysctl`, checked to be namespaced.
    pub sysctl: Vec<(String, String)>,
    /// `process.oomScoreAdj`.
    pub oom_score_adj: Option<i32>,
    /// `process.user.umask`.
    pub umask: Option<u32>,
    /// `linux.namespaces` entries with a `path` (network, ipc, uts): joined, not made.
    pub join: Vec<super::JoinNs>,
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
pub(crate) fn read_bounded(path: &Path) -> Result<String, OciError> {
    let read_err = |source| OciError::Read {
        path: path.to_owned(),
        source,
    };
    let bytes = std::fs::File::open(path)
        .and_then(|f| crate::sys::read_at_most(f, MAX_CONFIG_BYTES))
        .map_err(read_err)?
        .ok_or_else(|| OciError::TooLarge {
            path: path.to_owned(),
        })?;
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

/// The settings a lone `process` object gives (runc's `exec --process FILE`), read from
/// `path`: the same checks as a config's `process`.
///
/// # Errors
/// [`OciError::Parse`] or [`OciError::Field`] naming the first field ovlrun cannot honour.
pub(crate) fn process_settings(path: &Path, text: &str) -> Result<OciSettings, OciError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| OciError::Parse {
        path: path.to_owned(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let wrapped = serde_json::json!({"ociVersion": "1.0.2", "process": value});
    let spec = parse(path, &wrapped.to_string())?;
    let ctx = Ctx {
        path,
        dir: Path::new("/"),
    };
    let mut out = OciSettings::default();
    ctx.reject_unsupported(&spec)?;
    ctx.process(&spec, &mut out)?;
    if let Some(p) = spec.process() {
        ctx.process_hardening(p, &mut out)?;
    }
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

    /// `process.rlimits`, `process.noNewPrivileges`, `process.oomScoreAdj`, `linux.seccomp`,
    /// `linux.maskedPaths`, `linux.readonlyPaths` and `linux.sysctl` (after the
    /// namespaces, which decide whether `net.*` keys are the session's own).
    fn hardening(&self, spec: &Spec, out: &mut OciSettings) -> Result<(), OciError> {
        if let Some(p) = spec.process() {
            self.process_hardening(p, out)?;
        }
        match spec.linux() {
            Some(l) => self.linux_hardening(l, out),
            None => Ok(()),
        }
    }
}
