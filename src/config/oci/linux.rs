//! `linux`: namespaces and id maps, seccomp, masked and read-only paths, sysctls.

use std::path::PathBuf;

use oci_spec::runtime::{Linux, LinuxIdMapping, LinuxNamespaceType, Spec};

use super::{Caller, Ctx, OciError, OciSettings};
use crate::config::{JoinNs, Network, NsKind, UserNs};
use crate::host::ids::IdMap;

impl Ctx<'_> {
    pub(super) fn namespaces(
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
            if let Some(path) = ns.path() {
                let kind = match ns.typ() {
                    LinuxNamespaceType::Network => NsKind::Network,
                    LinuxNamespaceType::Ipc => NsKind::Ipc,
                    LinuxNamespaceType::Uts => NsKind::Uts,
                    LinuxNamespaceType::Pid => NsKind::Pid,
                    other => {
                        return Err(self.bad(
                            format!("linux.namespaces[{i}].path"),
                            format!(
                                "joining an existing {other} namespace is not supported \
                                 (network, ipc, uts and pid are)"
                            ),
                        ));
                    }
                };
                out.join.push(JoinNs {
                    kind,
                    path: path.clone(),
                });
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

    /// `linux.devices`: each is the host's node of that type and number, bound at its path
    /// under `/dev` (as `--dev-bind`); its mode and owner are the host node's.
    fn devices(&self, l: &Linux, out: &mut OciSettings) -> Result<(), OciError> {
        use oci_spec::runtime::LinuxDeviceType;
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        for (i, d) in l.devices().iter().flatten().enumerate() {
            let field = format!("linux.devices[{i}]");
            let path = d.path();
            let want_block = match d.typ() {
                LinuxDeviceType::B => true,
                LinuxDeviceType::C | LinuxDeviceType::U => false,
                other => {
                    return Err(self.bad(field, format!("type {other:?}: only b, c and u")));
                }
            };
            let dev = nix::sys::stat::makedev(
                u64::try_from(d.major()).unwrap_or(u64::MAX),
                u64::try_from(d.minor()).unwrap_or(u64::MAX),
            );
            let matches = std::fs::metadata(path).is_ok_and(|m| {
                let t = m.file_type();
                m.rdev() == dev
                    && (if want_block {
                        t.is_block_device()
                    } else {
                        t.is_char_device()
                    })
            });
            if !matches {
                return Err(self.bad(
                    field,
                    format!(
                        "{}: ovlrun binds the host's node, and the host has no {} device {}:{} there",
                        path.display(),
                        if want_block { "block" } else { "character" },
                        d.major(),
                        d.minor()
                    ),
                ));
            }
            let bind = crate::config::parse_dev_bind(&path.display().to_string())
                .map_err(|e| self.bad(format!("linux.devices[{i}].path"), e.to_string()))?;
            out.dev_binds.push(bind);
        }
        Ok(())
    }

    /// `linux.seccomp`, `linux.maskedPaths`, `linux.readonlyPaths` and `linux.sysctl`.
    pub(super) fn linux_hardening(&self, l: &Linux, out: &mut OciSettings) -> Result<(), OciError> {
        self.devices(l, out)?;
        if let Some(profile) = l.seccomp() {
            crate::config::seccomp::check(profile).map_err(|e| {
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
            crate::config::check_sysctl("linux.sysctl", key, net)
                .map_err(|e| self.bad(format!("linux.sysctl[{key:?}]"), e.to_string()))?;
            out.sysctl.push((key.clone(), value.clone()));
        }
        Ok(())
    }
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
