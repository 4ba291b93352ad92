//! The command's system-call filter: the default profile ([`default`]) or an OCI
//! `linux.seccomp` profile, compiled to classic BPF with libseccomp in the launcher, and
//! loaded by the command process just before it executes the command.
//!
//! Compiling happens before the session's child is cloned, so a profile libseccomp refuses
//! fails before anything is mounted, and the child only hands the kernel instructions it
//! already holds (it allocates nothing). Whether a profile's fields are ones ovlrun can
//! honour is [`crate::config::seccomp`]'s to say; this module says how it becomes BPF, with
//! runc's semantics: a rule whose action is the default one is left out (libseccomp refuses
//! it), a name this libseccomp does not know is skipped (a system call newer than it), and
//! conditions on distinct arguments must all hold while several on one argument are each a
//! rule of their own.

pub mod cache;
pub mod default;

use std::io::{Read, Seek};
use std::path::Path;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};

use crate::config::seccomp::ProfileError;
use crate::config::{CapabilitySets, Seccomp};

/// One BPF program and the `SECCOMP_FILTER_FLAG_*` it is installed with.
pub struct Program {
    instructions: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl Program {
    /// The number of BPF instructions.
    pub fn len(&self) -> usize {
        self.instructions.len()
    }

    /// True for a program without instructions (never one libseccomp exports).
    pub fn is_empty(&self) -> bool {
        self.instructions.is_empty()
    }
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("instructions", &self.instructions.len())
            .field("flags", &self.flags)
            .finish()
    }
}

/// A compiled filter: programs installed in order, all of which every system call then
/// passes (the kernel takes the most restrictive answer).
#[derive(Debug)]
pub struct Filter {
    programs: Vec<Program>,
}

impl Filter {
    /// The programs, in the order they are installed.
    pub fn programs(&self) -> &[Program] {
        &self.programs
    }

    /// Installs every program on the calling thread. Allocates nothing; the caller has set
    /// no_new_privs or holds `CAP_SYS_ADMIN` in its user namespace.
    ///
    /// # Errors
    /// The first error of seccomp(2).
    pub fn load(&self) -> nix::Result<()> {
        for p in &self.programs {
            crate::sys::seccomp::set_mode_filter(&p.instructions, p.flags)?;
        }
        Ok(())
    }
}

/// Compiles the session's filter: `None` for `--seccomp unconfined`. The default profile
/// depends on `caps.bounding` (what it allows to a capability the session may never hold
/// would be refused by the kernel anyway). With `cache` (a directory), programs compiled
/// before are read from there, and new ones kept there ([`cache`]).
///
/// # Errors
/// [`ProfileError`] naming the field of the profile libseccomp refused.
pub fn compile(
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

/// Compiles one OCI profile to a BPF program, with runc's semantics (see the module doc).
///
/// # Errors
/// [`ProfileError`] naming the field libseccomp refused, or with an empty field when
/// libseccomp itself fails.
pub fn compile_profile(profile: &LinuxSeccomp) -> Result<Program, ProfileError> {
    let lib = |field: &str, e: libseccomp::error::SeccompError| {
        ProfileError::new(field, format!("libseccomp: {e}"))
    };
    let default = action(profile.default_action(), profile.default_errno_ret())
        .map_err(|p| ProfileError::new("defaultAction", p))?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| lib("", e))?;
    for (i, arch) in profile.architectures().iter().flatten().enumerate() {
        let field = format!("architectures[{i}]");
        let arch: ScmpArch = arch.to_string().parse().map_err(|e| lib(&field, e))?;
        ctx.add_arch(arch).map_err(|e| lib(&field, e))?;
    }
    // A binary tree of system call numbers: the kernel walks fewer instructions per call, and
    // when it installs the program (it runs it for every call number to cache the answers).
    ctx.set_ctl_optimize(2).map_err(|e| lib("", e))?;
    for (i, call) in profile.syscalls().iter().flatten().enumerate() {
        add_rules(&mut ctx, call, default)
            .map_err(|p| ProfileError::new(format!("syscalls[{i}]"), p))?;
    }
    let mut flags = 0;
    for flag in profile.flags().iter().flatten() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // The command process is single-threaded: there is nothing to synchronise.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 0,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(ProfileError::new(
                    "flags",
                    format!("{flag} is not supported"),
                ));
            }
        };
    }
    Ok(Program {
        instructions: export(&ctx)?,
        flags,
    })
}

/// libseccomp's action for an OCI action; runc's defaults for a missing `errnoRet`.
fn action(action: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<ScmpAction, String> {
    let ret = || {
        i32::try_from(errno_ret.unwrap_or(libc::EPERM as u32))
            .map_err(|_| "errnoRet out of range".to_owned())
    };
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(ret()?),
        LinuxSeccompAction::ScmpActTrace => {
            ScmpAction::Trace(u16::try_from(ret()?).map_err(|_| "errnoRet out of range")?)
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => return Err(format!("{action} is not supported")),
    })
}

/// The rules of one `syscalls[]` entry.
fn add_rules(
    ctx: &mut ScmpFilterContext,
    call: &LinuxSyscall,
    default: ScmpAction,
) -> Result<(), String> {
    let act = action(call.action(), call.errno_ret())?;
    // libseccomp refuses a rule that changes nothing.
    if act == default {
        return Ok(());
    }
    let args = call.args().as_deref().unwrap_or_default();
    let conditions: Vec<ScmpArgCompare> = args
        .iter()
        .map(|a| {
            let op = match a.op() {
                LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
                LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
                LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
                LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
                LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
                LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
                // The OCI format gives the mask as `value` and the value to compare as `valueTwo`.
                LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(a.value()),
            };
            let datum = match a.op() {
                LinuxSeccompOperator::ScmpCmpMaskedEq => a.value_two().unwrap_or(0),
                _ => a.value(),
            };
            // Indexes above 5 were refused by the config check; u32 holds any index that passed.
            ScmpArgCompare::new(a.index() as u32, op, datum)
        })
        .collect();
    let mut seen = [0u8; 6];
    for a in args {
        if let Some(n) = seen.get_mut(a.index()) {
            *n += 1;
        }
    }
    let same_arg_twice = seen.iter().any(|&n| n > 1);
    for name in call.names() {
        // A name this libseccomp does not know is a system call newer than it: skipped, as runc does.
        let Ok(nr) = ScmpSyscall::from_name(name) else {
            continue;
        };
        let added = if conditions.is_empty() {
            ctx.add_rule(act, nr)
        } else if same_arg_twice {
            conditions
                .iter()
                .try_for_each(|c| {
                    ctx.add_rule_conditional(act, nr, std::slice::from_ref(c))
                        .map(drop)
                })
                .map(|()| &mut *ctx)
        } else {
            ctx.add_rule_conditional(act, nr, &conditions)
        };
        added.map_err(|e| format!("{name}: libseccomp: {e}"))?;
    }
    Ok(())
}

/// The context's BPF program, through a memory file (libseccomp 2.5 exports only to an fd).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<libc::sock_filter>, ProfileError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        ProfileError::new("", format!("cannot export the BPF program: {what}: {e}"))
    };
    let fd =
        nix::sys::memfd::memfd_create(c"ovlrun-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| fail("memfd_create", &e))?;
    ctx.export_bpf(&fd).map_err(|e| fail("libseccomp", &e))?;
    let mut file = std::fs::File::from(fd);
    let mut bytes = Vec::new();
    file.rewind()
        .and_then(|()| file.read_to_end(&mut bytes))
        .map_err(|e| fail("read", &e))?;
    let size = std::mem::size_of::<libc::sock_filter>();
    if bytes.len() % size != 0 {
        return Err(fail(
            "size",
            &format!(
                "{} bytes is not a whole number of instructions",
                bytes.len()
            ),
        ));
    }
    Ok(bytes
        .chunks_exact(size)
        .map(|b| libc::sock_filter {
            code: u16::from_ne_bytes([b[0], b[1]]),
            jt: b[2],
            jf: b[3],
            k: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

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
        assert_eq!(filter.programs()[0].flags, libc::SECCOMP_FILTER_FLAG_LOG);
    }
}
