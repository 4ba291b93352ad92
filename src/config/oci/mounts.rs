//! `mounts`: bind and tmpfs mounts, and the ones the launcher provides itself.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Mount;

use super::{Ctx, OciError, OciSettings, has_content};
use crate::config::{FsKind, FsMount, MountFlags};

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

impl Ctx<'_> {
    pub(super) fn mount(&self, i: usize, m: &Mount, out: &mut OciSettings) -> Result<(), OciError> {
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
        // An empty option means nothing (buildah sends one on its binds), as runc takes it.
        let options: Vec<&str> = m
            .options()
            .iter()
            .flatten()
            .map(String::as_str)
            .filter(|o| !o.is_empty())
            .collect();
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
            let field = format!("mounts[{i}].source");
            let source = m
                .source()
                .as_ref()
                .ok_or_else(|| self.bad(field.as_str(), "a bind mount needs a source"))?;
            let full = self.dir.join(source);
            let source = full
                .canonicalize()
                .map_err(|e| self.bad(field.as_str(), format!("{}: {e}", full.display())))?;
            let (flags, data) = flags_of(&options).map_err(|o| bad_option(o, "bind"))?;
            if let Some(o) = data.first() {
                return Err(bad_option(o, "bind"));
            }
            // As runc: `bind` alone binds the one mount, `rbind` the mounts below it too.
            let recursive = options.contains(&"rbind") || !options.contains(&"bind");
            out.mounts.push(FsMount {
                dest,
                kind: FsKind::Bind { source, recursive },
                flags,
            });
            return Ok(());
        }
        if typ == "mqueue" {
            let (flags, data) = flags_of(&options).map_err(|o| bad_option(o, "mqueue"))?;
            if let Some(o) = data.first() {
                return Err(bad_option(o, "mqueue"));
            }
            out.mounts.push(FsMount {
                dest,
                kind: FsKind::Mqueue,
                flags,
            });
            return Ok(());
        }
        if typ != "tmpfs" {
            return Err(self.bad(
                format!("mounts[{i}]"),
                format!(
                    "type {typ:?} on {} is not supported (ovlrun makes bind, tmpfs and mqueue \
                     mounts, and provides {} itself)",
                    dest.display(),
                    PROVIDED.join(", ")
                ),
            ));
        }
        // The launcher's own /tmp is a tmpfs with mode 1777 (nosuid, nodev): an entry asking
        // for exactly that is it.
        let tmp = dest == Path::new("/tmp");
        let mode_ok = |mode: &str| {
            let mode = mode.trim_start_matches('0');
            if tmp { mode == "1777" } else { mode == "755" }
        };
        let plain = options.iter().all(|o| match o.strip_prefix("mode=") {
            Some(mode) => mode_ok(mode),
            None => matches!(*o, "nosuid" | "nodev") || NEUTRAL_OPTIONS.contains(o),
        });
        if tmp && plain {
            return Ok(());
        }
        // runc's extension, which podman sends for --read-only's /run, /tmp, /var/tmp.
        let copy_up = options.contains(&"tmpcopyup");
        let rest: Vec<&str> = options
            .iter()
            .copied()
            .filter(|o| *o != "tmpcopyup")
            .collect();
        let (flags, data) = flags_of(&rest).map_err(|o| bad_option(o, "tmpfs"))?;
        out.mounts.push(FsMount {
            dest,
            kind: FsKind::Tmpfs {
                data: data.join(","),
                copy_up,
            },
            flags,
        });
        Ok(())
    }
}

/// The flags among `options` and the `key=value` data options, in order; the first option
/// that is neither (nor neutral, nor bind/rbind) is the error.
fn flags_of<'a>(options: &[&'a str]) -> Result<(MountFlags, Vec<&'a str>), &'a str> {
    let mut flags = MountFlags::default();
    let mut data = Vec::new();
    for o in options {
        match *o {
            "ro" => flags.read_only = true,
            "rw" => flags.read_only = false,
            "nosuid" => flags.nosuid = true,
            "suid" => flags.nosuid = false,
            "nodev" => flags.nodev = true,
            "dev" => flags.nodev = false,
            "noexec" => flags.noexec = true,
            "exec" => flags.noexec = false,
            "bind" | "rbind" => {}
            o if NEUTRAL_OPTIONS.contains(&o) => {}
            o if o.contains('=') && !o.starts_with('=') => data.push(o),
            o => return Err(o),
        }
    }
    Ok((flags, data))
}
