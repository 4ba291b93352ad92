//! An OCI `linux.seccomp` profile compiled to classic BPF with libseccomp, and the cache of
//! compiled programs ([`cache`]). Below both `config` (which checks a profile compiles) and
//! `sandbox` (which chooses the session's profiles and loads their programs); it imports
//! neither.
//!
//! How a profile becomes BPF follows runc's semantics: a rule whose action is the default one is left out (libseccomp refuses
//! it), a name this libseccomp does not know is skipped (a system call newer than it), and
//! conditions on distinct arguments must all hold while several on one argument are each a
//! rule of their own.

pub(crate) mod cache;

use std::io::{Read, Seek};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};

/// One BPF program and the `SECCOMP_FILTER_FLAG_*` it is installed with.
pub(crate) struct Program {
    instructions: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl Program {
    /// The number of BPF instructions.
    pub(crate) fn len(&self) -> usize {
        self.instructions.len()
    }

    #[cfg(test)]
    /// True for a program without instructions (never one libseccomp exports).
    pub(crate) fn is_empty(&self) -> bool {
        self.instructions.is_empty()
    }

    /// The instructions, as seccomp(2) takes them.
    pub(crate) fn instructions(&self) -> &[libc::sock_filter] {
        &self.instructions
    }

    /// The `SECCOMP_FILTER_FLAG_*` to install it with.
    pub(crate) fn flags(&self) -> libc::c_ulong {
        self.flags
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

/// A profile ovlrun cannot honour: the field (a JSON path inside the profile, empty for the
/// whole profile) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{problem}", if .field.is_empty() { String::new() } else { format!("{}: ", .field) })]
pub struct ProfileError {
    /// The field, as a JSON path inside the profile (`syscalls[3].action`); empty for the
    /// profile as a whole.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

impl ProfileError {
    /// An error of `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> ProfileError {
        ProfileError {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The same error, its field placed under `parent` (`linux.seccomp`).
    pub fn under(self, parent: &str) -> ProfileError {
        let field = if self.field.is_empty() {
            parent.to_owned()
        } else {
            format!("{parent}.{}", self.field)
        };
        ProfileError { field, ..self }
    }
}

/// Compiles one OCI profile to a BPF program, with runc's semantics (see the module doc).
///
/// # Errors
/// [`ProfileError`] naming the field libseccomp refused, or with an empty field when
/// libseccomp itself fails.
pub(crate) fn compile_profile(profile: &LinuxSeccomp) -> Result<Program, ProfileError> {
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
