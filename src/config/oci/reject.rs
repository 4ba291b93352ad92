//! Fields ovlrun has no way to honour: each is refused whenever it says anything, with the
//! field's JSON path and why.

use oci_spec::runtime::{Linux, Process, Spec};

use super::{Ctx, OciError, has_content};

/// One field ovlrun cannot honour: its path, what the refusal says, and whether `spec`
/// says anything in it.
struct Unsupported {
    field: &'static str,
    problem: &'static str,
    says: fn(&Spec) -> bool,
}

/// Whether `spec` has a `process` whose field `f` reads says something.
fn in_process(spec: &Spec, f: impl Fn(&Process) -> bool) -> bool {
    spec.process().as_ref().is_some_and(f)
}

/// Whether `spec` has a `linux` whose field `f` reads says something.
fn in_linux(spec: &Spec, f: impl Fn(&Linux) -> bool) -> bool {
    spec.linux().as_ref().is_some_and(f)
}

/// The refused fields, in the order they are checked: the first that says something is
/// the one named.
const UNSUPPORTED: &[Unsupported] = &[
    Unsupported {
        field: "domainname",
        problem: "not supported",
        says: |s| has_content(s.domainname()),
    },
    Unsupported {
        field: "hooks",
        problem: "hooks are not supported",
        says: |s| has_content(s.hooks()),
    },
    Unsupported {
        field: "process.apparmorProfile",
        problem: "AppArmor is not supported",
        says: |s| in_process(s, |p| has_content(p.apparmor_profile())),
    },
    Unsupported {
        field: "process.selinuxLabel",
        problem: "SELinux is not supported",
        says: |s| in_process(s, |p| has_content(p.selinux_label())),
    },
    Unsupported {
        field: "process.ioPriority",
        problem: "not supported",
        says: |s| in_process(s, |p| has_content(p.io_priority())),
    },
    Unsupported {
        field: "process.scheduler",
        problem: "not supported",
        says: |s| in_process(s, |p| has_content(p.scheduler())),
    },
    Unsupported {
        field: "process.execCPUAffinity",
        problem: "not supported",
        says: |s| in_process(s, |p| has_content(p.exec_cpu_affinity())),
    },
    Unsupported {
        field: "linux.resources",
        problem: "cgroup limits are not supported",
        says: |s| {
            in_linux(s, |l| {
                has_content(&l.resources().as_ref().map(resources_past_devices))
            })
        },
    },
    Unsupported {
        field: "linux.cgroupsPath",
        problem: "cgroups are not supported (the command stays in the caller's cgroup)",
        says: |s| in_linux(s, |l| has_content(l.cgroups_path())),
    },
    Unsupported {
        field: "linux.netDevices",
        problem: "not supported",
        says: |s| in_linux(s, |l| has_content(l.net_devices())),
    },
    Unsupported {
        field: "linux.mountLabel",
        problem: "SELinux is not supported",
        says: |s| in_linux(s, |l| has_content(l.mount_label())),
    },
    Unsupported {
        field: "linux.intelRdt",
        problem: "not supported",
        says: |s| in_linux(s, |l| has_content(l.intel_rdt())),
    },
    Unsupported {
        field: "linux.memoryPolicy",
        problem: "not supported",
        says: |s| in_linux(s, |l| has_content(l.memory_policy())),
    },
    Unsupported {
        field: "linux.personality",
        problem: "not supported",
        says: |s| in_linux(s, |l| has_content(l.personality())),
    },
    Unsupported {
        field: "linux.timeOffsets",
        problem: "not supported",
        says: |s| in_linux(s, |l| has_content(l.time_offsets())),
    },
];

impl Ctx<'_> {
    /// Refuses the first field of [`UNSUPPORTED`] that says anything; a propagation other
    /// than private or slave is refused before them all.
    pub(super) fn reject_unsupported(&self, spec: &Spec) -> Result<(), OciError> {
        if let Some(l) = spec.linux() {
            self.rootfs_propagation(l)?;
        }
        match UNSUPPORTED.iter().find(|u| (u.says)(spec)) {
            Some(u) => Err(self.bad(u.field, u.problem)),
            None => Ok(()),
        }
    }

    fn rootfs_propagation(&self, l: &Linux) -> Result<(), OciError> {
        match l.rootfs_propagation().as_deref() {
            None | Some("private" | "rprivate" | "slave" | "rslave") => Ok(()),
            Some(other) => Err(self.bad(
                "linux.rootfsPropagation",
                format!("{other:?} is not supported (a session's mounts are private)"),
            )),
        }
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
