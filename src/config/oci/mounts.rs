//! `mounts`: bind and tmpfs mounts, and the ones the launcher provides itself.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Mount;

use super::{Ctx, OciError, OciSettings, has_content};
use crate::config::Bind;

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
}
