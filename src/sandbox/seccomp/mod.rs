//! The command's system-call filter: the default profile ([`default`]) or an OCI
//! `linux.seccomp` profile, compiled by [`crate::seccomp`] in the launcher, and loaded by the
//! command process just before it executes the command.
//!
//! Compiling happens before the session's child is cloned, so a profile libseccomp refuses
//! fails before anything is mounted, and the child only hands the kernel instructions it
//! already holds (it allocates nothing).

pub(crate) mod default;

use std::path::Path;

use oci_spec::runtime::LinuxSeccomp;

use crate::config::{CapabilitySets, Seccomp};
use crate::seccomp::{ProfileError, Program, cache, compile_profile};

/// A compiled filter: programs installed in order, all of which every system call then
/// passes (the kernel takes the most restrictive answer).
#[derive(Debug)]
pub(crate) struct Filter {
    programs: Vec<Program>,
}

impl Filter {
    #[cfg(test)]
    /// The programs, in the order they are installed.
    pub(crate) fn programs(&self) -> &[Program] {
        &self.programs
    }

    /// Installs every program on the calling thread. Allocates nothing; the caller has set
    /// no_new_privs or holds `CAP_SYS_ADMIN` in its user namespace.
    ///
    /// # Errors
    /// The first error of seccomp(2).
    pub(crate) fn load(&self) -> nix::Result<()> {
        for p in &self.programs {
            crate::sys::seccomp::set_mode_filter(p.instructions(), p.flags())?;
        }
        Ok(())
    }
}

/// Compiles the session's filter: `None` for `--seccomp unconfined`. The default profile
/// depends on `caps.bounding` (what it allows to a capability the session may never hold
/// would be refused by the kernel anyway). With `cache` (a directory), programs compiled
/// before are read from there, and new ones kept there ([`crate::seccomp::cache`]).
///
/// # Errors
/// [`ProfileError`] naming the field of the profile libseccomp refused.
pub(crate) fn compile(
    choice: &Seccomp,
    caps: &CapabilitySets,
    cache: Option<&Path>,
) -> Result<Option<Filter>, ProfileError> {
    let one = |profile: &LinuxSeccomp| -> Result<Program, ProfileError> {
        let Some(path) = cache.and_then(|dir| cache::path(dir, profile)) else {
            return compile_profile(profile);
        };
        if let Some(program) = cache::read(&path) {
            return Ok(program);
        }
        let program = compile_profile(profile)?;
        cache::write(&path, &program);
        Ok(program)
    };
    let programs = match choice {
        Seccomp::Unconfined => return Ok(None),
        Seccomp::Default => vec![
            one(&default::profile(&caps.bounding)?)?,
            one(&default::refinements(&caps.bounding)?)?,
        ],
        Seccomp::Profile(p) => vec![one(p)?],
    };
    Ok(Some(Filter { programs }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use oci_spec::runtime::{LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator};

    use super::default::*;
    use super::*;

    fn bounding(extra: &[&str], dropped: &[&str]) -> BTreeSet<String> {
        let mut caps = CapabilitySets::container_default(0);
        for c in extra {
            caps.add(c, 0);
        }
        for c in dropped {
            caps.drop(c);
        }
        caps.bounding
    }

    /// The unconditional answer of `profile` to `name`: the action and errno of the entry
    /// naming it without argument conditions.
    fn verdict(profile: &LinuxSeccomp, name: &str) -> Option<(LinuxSeccompAction, Option<u32>)> {
        profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|c| c.args().as_ref().is_none_or(Vec::is_empty))
            .find(|c| c.names().iter().any(|n| n == name))
            .map(|c| (c.action(), c.errno_ret()))
    }

    const EPERM: Option<(LinuxSeccompAction, Option<u32>)> =
        Some((LinuxSeccompAction::ScmpActErrno, Some(libc::EPERM as u32)));
    const ALLOW: Option<(LinuxSeccompAction, Option<u32>)> =
        Some((LinuxSeccompAction::ScmpActAllow, None));

    #[test]
    fn the_escape_calls_are_refused_with_eperm() {
        let p = profile(&bounding(&[], &[])).unwrap();
        for name in [
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "open_by_handle_at",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "swapon",
            "swapoff",
            "reboot",
            "acct",
            "quotactl",
            "lookup_dcookie",
            "userfaultfd",
            "clock_settime",
            "settimeofday",
            "iopl",
            "syslog",
            "kcmp",
            "pidfd_getfd",
            "sethostname",
            "uselib",
        ] {
            assert_eq!(verdict(&p, name), EPERM, "{name}");
        }
        assert_eq!(
            (p.default_action(), p.default_errno_ret()),
            (LinuxSeccompAction::ScmpActErrno, Some(libc::ENOSYS as u32)),
            "calls unknown to the profile fail with ENOSYS"
        );
        assert_eq!(verdict(&p, "io_uring_setup"), None);
    }

    #[test]
    fn nested_sandboxes_and_ordinary_calls_are_allowed() {
        let p = profile(&bounding(&[], &[])).unwrap();
        for name in [
            "unshare",
            "clone",
            "clone3",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "read",
            "execve",
            "ioctl",
            "socket",
            "ptrace",
            "chroot",
            "mkdir",
            "capset",
            "close_range",
        ] {
            assert_eq!(verdict(&p, name), ALLOW, "{name}");
        }
        let personality: Vec<u64> = p
            .syscalls()
            .iter()
            .flatten()
            .filter(|c| c.names() == &["personality"])
            .flat_map(|c| c.args().iter().flatten().map(|a| a.value()))
            .collect();
        assert_eq!(personality, PERSONALITIES);
    }

    #[test]
    fn capabilities_in_the_bounding_set_allow_their_calls() {
        let with = profile(&bounding(
            &[
                "CAP_SYS_TIME",
                "CAP_DAC_READ_SEARCH",
                "CAP_BPF",
                "CAP_SYS_ADMIN",
            ],
            &["CAP_SYS_CHROOT"],
        ))
        .unwrap();
        for name in [
            "clock_settime",
            "open_by_handle_at",
            "bpf",
            "sethostname",
            "syslog",
        ] {
            assert_eq!(verdict(&with, name), ALLOW, "{name}");
        }
        assert_eq!(verdict(&with, "chroot"), EPERM);
        // No capability allows these.
        for name in ["kexec_load", "keyctl", "swapon"] {
            assert_eq!(verdict(&with, name), EPERM, "{name}");
        }
        let perfmon = profile(&bounding(&["CAP_PERFMON"], &[])).unwrap();
        assert_eq!(verdict(&perfmon, "perf_event_open"), ALLOW);
        assert_eq!(verdict(&perfmon, "bpf"), EPERM);
    }

    #[test]
    fn no_call_is_in_two_groups() {
        // libseccomp keeps the first of two unconditional rules for one call, silently.
        let mut seen = BTreeSet::new();
        let groups = [
            ALLOWED,
            ALLOWED_BY_ARCH,
            NESTED_SANDBOXES,
            REFUSED,
            OBSOLETE,
        ];
        let gated = BY_CAPABILITY.iter().map(|g| g.names);
        for name in groups.into_iter().chain(gated).flatten() {
            assert!(seen.insert(*name), "{name} is in two groups");
        }
        assert!(
            !seen.contains("personality"),
            "personality is allowed by value only"
        );
    }

    #[test]
    fn tiocsti_and_tioclinux_are_refused_on_the_low_32_bits() {
        let r = refinements(&bounding(&[], &[])).unwrap();
        assert_eq!(r.default_action(), LinuxSeccompAction::ScmpActAllow);
        let ioctls: Vec<_> = r
            .syscalls()
            .iter()
            .flatten()
            .filter(|c| c.names() == &["ioctl"])
            .collect();
        assert_eq!(ioctls.len(), 2);
        for (call, request) in ioctls.iter().zip([0x5412, 0x541c]) {
            assert_eq!((call.action(), call.errno_ret()), EPERM.unwrap());
            let args = call.args().as_ref().unwrap();
            assert_eq!(args.len(), 1);
            assert_eq!(
                (
                    args[0].index(),
                    args[0].op(),
                    args[0].value(),
                    args[0].value_two()
                ),
                (
                    1,
                    LinuxSeccompOperator::ScmpCmpMaskedEq,
                    0xffff_ffff,
                    Some(request)
                )
            );
        }
        let audit = |r: &LinuxSeccomp| {
            r.syscalls()
                .iter()
                .flatten()
                .any(|c| c.errno_ret() == Some(libc::EINVAL as u32))
        };
        assert!(!audit(&r), "CAP_AUDIT_WRITE is in the default set");
        assert!(audit(
            &refinements(&bounding(&[], &["CAP_AUDIT_WRITE"])).unwrap()
        ));
    }

    #[test]
    fn every_choice_compiles() {
        let caps = CapabilitySets::container_default(0);
        assert!(
            compile(&Seccomp::Unconfined, &caps, None)
                .unwrap()
                .is_none()
        );
        let start = std::time::Instant::now();
        let filter = compile(&Seccomp::Default, &caps, None).unwrap().unwrap();
        eprintln!(
            "default filter: {:?} compiled in {:.2} ms",
            filter.programs(),
            start.elapsed().as_secs_f64() * 1000.0
        );
        assert_eq!(filter.programs().len(), 2);
        assert!(
            filter
                .programs()
                .iter()
                .all(|p| !p.is_empty() && p.len() < 4096)
        );
        let mut own = LinuxSeccomp::default();
        own.set_default_action(LinuxSeccompAction::ScmpActAllow);
        own.set_flags(Some(vec![LinuxSeccompFilterFlag::SeccompFilterFlagLog]));
        let filter = compile(&Seccomp::Profile(Box::new(own)), &caps, None)
            .unwrap()
            .unwrap();
        assert_eq!(filter.programs()[0].flags(), libc::SECCOMP_FILTER_FLAG_LOG);
    }
}
