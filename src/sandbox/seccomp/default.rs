//! The default filter: the effect of the default profiles podman (containers/common
//! `pkg/seccomp/seccomp.json`) and docker (moby `profiles/seccomp/default.json`) ship, plus
//! the terminal ioctls TIOCSTI and TIOCLINUX refused.
//!
//! - A system call the profile refuses fails with EPERM, as under docker.
//! - One the profile does not know (newer than it, or than the libseccomp it was compiled
//!   with; io_uring, which both profiles leave out) fails with ENOSYS, as under podman: glibc
//!   and programs take ENOSYS for "this kernel is older" and fall back (`clone3` to `clone`,
//!   `faccessat2` to `faccessat`), where EPERM would make them fail.
//! - Namespaces and mounts are allowed as podman allows them, so nested sandboxes work
//!   ([`NESTED_SANDBOXES`]); docker refuses them without `CAP_SYS_ADMIN`.
//! - What depends on a capability depends on the session's bounding set, as in docker's
//!   profile: `--cap-add SYS_TIME` allows `clock_settime`.
//!
//! Two programs, because libseccomp lets an unconditional rule silently win over a
//! conditional one for the same call: [`profile`] decides by system call (default ENOSYS),
//! [`refinements`] by argument (default allow). The kernel runs both and keeps the stricter
//! answer.

use std::collections::BTreeSet;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

use crate::seccomp::ProfileError;

/// Allowed to every session: what both profiles allow to every container.
#[rustfmt::skip]
pub(crate) const ALLOWED: &[&str] = &[
    "_llseek", "_newselect", "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk",
    "cachestat", "capget", "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime",
    "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64",
    "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range", "connect",
    "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl",
    "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd",
    "eventfd2", "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64",
    "fadvise64_64", "fallocate", "fanotify_init", "fanotify_mark", "fchdir", "fchmod", "fchmodat",
    "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr",
    "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64",
    "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex", "futex_requeue",
    "futex_time64", "futex_wait", "futex_waitv", "futex_wake", "futimesat", "get_mempolicy",
    "get_robust_list", "get_thread_area", "getcpu", "getcwd", "getdents", "getdents64", "getegid",
    "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32",
    "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority",
    "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "getrusage",
    "getsid", "getsockname", "getsockopt", "gettid", "gettimeofday", "getuid", "getuid32",
    "getxattr", "getxattrat", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "io_cancel", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "io_setup", "io_submit", "ioctl", "ioprio_get", "ioprio_set", "ipc",
    "kill", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown",
    "lchown32", "lgetxattr", "link", "linkat", "listen", "listmount", "listxattr", "listxattrat",
    "llistxattr", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise",
    "map_shadow_stack", "mbind", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir",
    "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect",
    "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64",
    "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap", "mseal", "msgctl", "msgget",
    "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap", "name_to_handle_at",
    "nanosleep", "newfstatat", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll",
    "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64",
    "process_mrelease", "process_vm_readv", "process_vm_writev", "pselect6", "pselect6_time64",
    "ptrace", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat",
    "readv", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages",
    "removexattr", "removexattrat", "rename", "renameat", "renameat2", "restart_syscall",
    "riscv_hwprobe", "rmdir", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
    "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
    "seccomp", "select", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send",
    "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "set_mempolicy",
    "set_mempolicy_home_node", "set_robust_list", "set_thread_area", "set_tid_address", "setfsgid",
    "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32",
    "setitimer", "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32",
    "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit", "setsid", "setsockopt",
    "setuid", "setuid32", "setxattr", "setxattrat", "shmat", "shmctl", "shmdt", "shmget",
    "shutdown", "sigaltstack", "signal", "signalfd", "signalfd4", "sigprocmask", "sigreturn",
    "socket", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64",
    "statmount", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo",
    "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime",
    "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate",
    "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "uretprobe", "utime",
    "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid",
    "write", "writev",
];

/// Allowed where they exist: each is a system call of some architectures only, and
/// libseccomp leaves a name out where it does not exist.
#[rustfmt::skip]
pub(crate) const ALLOWED_BY_ARCH: &[&str] = &[
    "arch_prctl", "modify_ldt", "arm_fadvise64_64", "arm_sync_file_range", "breakpoint",
    "cacheflush", "set_tls", "sync_file_range2", "swapcontext", "s390_pci_mmio_read",
    "s390_pci_mmio_write", "s390_runtime_instr", "riscv_flush_icache",
];

/// Namespaces and mounts, allowed as podman allows them, so nested sandboxes (`unshare -Ur`,
/// bwrap, rootless podman or runc inside) work: the kernel already requires `CAP_SYS_ADMIN`
/// over the namespace they act on, which a session's own namespaces do not grant without
/// `--cap-add SYS_ADMIN`, and a filter cannot tell a session's namespace from a nested one.
#[rustfmt::skip]
pub(crate) const NESTED_SANDBOXES: &[&str] = &[
    "clone", "clone3", "unshare", "setns", "mount", "umount", "umount2", "pivot_root",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
];

/// Refused to every session, whatever its capabilities: they replace the host's kernel, or
/// reach state no namespace separates (kernel keyrings, swap, page faults served by user
/// space, a well-known tool of kernel exploits).
#[rustfmt::skip]
pub(crate) const REFUSED: &[&str] = &[
    "kexec_load", "kexec_file_load", "keyctl", "add_key", "request_key", "swapon", "swapoff",
    "userfaultfd",
];

/// Obsolete interfaces nothing current needs, refused as both profiles refuse them.
#[rustfmt::skip]
pub(crate) const OBSOLETE: &[&str] = &[
    "_sysctl", "afs_syscall", "bdflush", "create_module", "get_kernel_syms", "nfsservctl",
    "oldfstat", "oldlstat", "oldolduname", "oldstat", "olduname", "pciconfig_iobase",
    "pciconfig_read", "pciconfig_write", "sgetmask", "ssetmask", "sysfs", "uselib", "ustat",
    "vm86", "vm86old",
];

/// System calls allowed only when the session's bounding set holds one of `caps`, and
/// refused otherwise.
#[derive(Debug)]
pub(crate) struct ByCapability {
    /// Any one of these allows the calls.
    pub caps: &'static [&'static str],
    /// The calls.
    pub names: &'static [&'static str],
}

/// The capability-bound groups, each with why it is bound.
pub(crate) const BY_CAPABILITY: &[ByCapability] = &[
    // Kernel modules: code in the host's kernel.
    ByCapability {
        caps: &["CAP_SYS_MODULE"],
        names: &[
            "init_module",
            "finit_module",
            "delete_module",
            "query_module",
        ],
    },
    // A file handle opens any file of a filesystem, past the session's root (runc's "shocker").
    ByCapability {
        caps: &["CAP_DAC_READ_SEARCH"],
        names: &["open_by_handle_at"],
    },
    // eBPF programs and maps run in, and read, the host's kernel.
    ByCapability {
        caps: &["CAP_SYS_ADMIN", "CAP_BPF"],
        names: &["bpf"],
    },
    // Performance counters observe the whole machine.
    ByCapability {
        caps: &["CAP_SYS_ADMIN", "CAP_PERFMON"],
        names: &["perf_event_open"],
    },
    // Host-wide administration: quotas, profiling cookies, security modules' attributes; and
    // the UTS names (namespaced, but both profiles bind them to CAP_SYS_ADMIN as the kernel does).
    ByCapability {
        caps: &["CAP_SYS_ADMIN"],
        names: &[
            "quotactl",
            "quotactl_fd",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_set_self_attr",
            "lsm_list_modules",
            "sethostname",
            "setdomainname",
        ],
    },
    // The kernel log is the host's.
    ByCapability {
        caps: &["CAP_SYSLOG", "CAP_SYS_ADMIN"],
        names: &["syslog"],
    },
    // Process accounting writes every process's exit to a file.
    ByCapability {
        caps: &["CAP_SYS_PACCT"],
        names: &["acct"],
    },
    // Rebooting (in a pid namespace: ending it).
    ByCapability {
        caps: &["CAP_SYS_BOOT"],
        names: &["reboot"],
    },
    // I/O ports are the hardware's.
    ByCapability {
        caps: &["CAP_SYS_RAWIO"],
        names: &["ioperm", "iopl"],
    },
    // The clock is the host's.
    ByCapability {
        caps: &["CAP_SYS_TIME"],
        names: &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    },
    // Hanging up the terminal.
    ByCapability {
        caps: &["CAP_SYS_TTY_CONFIG"],
        names: &["vhangup"],
    },
    // Comparing or taking another process's resources (ptrace itself is allowed: the kernel
    // checks it, and since Linux 4.8 a tracer cannot get past the filter).
    ByCapability {
        caps: &["CAP_SYS_PTRACE"],
        names: &["kcmp", "process_madvise", "pidfd_getfd"],
    },
    // chroot, in the default set.
    ByCapability {
        caps: &["CAP_SYS_CHROOT"],
        names: &["chroot"],
    },
];

/// `personality(2)` values allowed: Linux, 32-bit Linux, UNAME26, both, and the query. Others
/// (`ADDR_NO_RANDOMIZE`, `READ_IMPLIES_EXEC`, ...) undo hardening; they fall to ENOSYS, as
/// under podman (a filter cannot say "none of these values" in one rule).
pub(crate) const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Terminal ioctls refused: TIOCSTI pushes input into the terminal (typed by the caller's
/// shell once the session ends), TIOCLINUX can paste the console's selection as input.
#[allow(clippy::unnecessary_cast)] // libc's type for ioctl numbers differs between targets
pub(crate) const REFUSED_IOCTLS: &[u64] = &[libc::TIOCSTI as u64, libc::TIOCLINUX as u64];

/// Socket families refused, as docker refuses them: the kernel's crypto API (AF_ALG), and
/// the hypervisor's host (AF_VSOCK), which no network namespace separates.
pub(crate) const REFUSED_SOCKET_FAMILIES: &[u64] = &[libc::AF_ALG as u64, libc::AF_VSOCK as u64];

/// The kernel takes an ioctl's request as `unsigned int`: only the low 32 bits count, so the
/// rule compares only those (else setting a high bit would get past it).
const IOCTL_REQUEST_MASK: u64 = 0xffff_ffff;

const EPERM: u32 = libc::EPERM as u32;
const ENOSYS: u32 = libc::ENOSYS as u32;

/// The architectures of the filter: the native one and the 32-bit one whose programs it also
/// runs (x86 on x86-64, ARM on aarch64). A system call of another architecture kills the
/// caller: so it does for x32, which both profiles list but which kernels leave off unless
/// booted with `syscall.x32=y`, and which would triple the time libseccomp takes to compile.
pub(crate) fn architectures() -> Vec<Arch> {
    match libseccomp::ScmpArch::native() {
        libseccomp::ScmpArch::X8664 => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86],
        libseccomp::ScmpArch::Aarch64 => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        _ => vec![Arch::ScmpArchNative],
    }
}

fn rule(names: &[&str], action: LinuxSeccompAction, errno: Option<u32>) -> LinuxSyscall {
    let mut call = LinuxSyscall::default();
    call.set_names(names.iter().map(|n| (*n).to_owned()).collect());
    call.set_action(action);
    call.set_errno_ret(errno);
    call
}

fn condition(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> Result<LinuxSeccompArg, ProfileError> {
    let mut arg = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    if let Some(two) = value_two {
        arg = arg.value_two(two);
    }
    // Every field has a value, so the builder has nothing to refuse; kept as an error anyway.
    arg.build()
        .map_err(|e| ProfileError::new("", format!("default profile: {e}")))
}

fn allow(names: &[&str]) -> LinuxSyscall {
    rule(names, LinuxSeccompAction::ScmpActAllow, None)
}

fn refuse(names: &[&str]) -> LinuxSyscall {
    rule(names, LinuxSeccompAction::ScmpActErrno, Some(EPERM))
}

fn held(bounding: &BTreeSet<String>, caps: &[&str]) -> bool {
    caps.iter().any(|c| bounding.contains(*c))
}

/// The first program: by system call, for a session whose bounding set is `bounding`.
///
/// # Errors
/// None in practice (see `condition`).
pub(crate) fn profile(bounding: &BTreeSet<String>) -> Result<LinuxSeccomp, ProfileError> {
    let mut calls = vec![
        allow(ALLOWED),
        allow(ALLOWED_BY_ARCH),
        allow(NESTED_SANDBOXES),
        refuse(REFUSED),
        refuse(OBSOLETE),
    ];
    for group in BY_CAPABILITY {
        calls.push(if held(bounding, group.caps) {
            allow(group.names)
        } else {
            refuse(group.names)
        });
    }
    for value in PERSONALITIES {
        let mut call = allow(&["personality"]);
        call.set_args(Some(vec![condition(
            0,
            LinuxSeccompOperator::ScmpCmpEq,
            *value,
            None,
        )?]));
        calls.push(call);
    }
    let mut p = LinuxSeccomp::default();
    p.set_default_action(LinuxSeccompAction::ScmpActErrno);
    p.set_default_errno_ret(Some(ENOSYS));
    p.set_architectures(Some(architectures()));
    p.set_syscalls(Some(calls));
    Ok(p)
}

/// The second program: by argument, everything else allowed (the first decides that).
///
/// # Errors
/// None in practice (see `condition`).
pub(crate) fn refinements(bounding: &BTreeSet<String>) -> Result<LinuxSeccomp, ProfileError> {
    let mut calls = Vec::new();
    for request in REFUSED_IOCTLS {
        let mut call = refuse(&["ioctl"]);
        call.set_args(Some(vec![condition(
            1,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            IOCTL_REQUEST_MASK,
            Some(*request),
        )?]));
        calls.push(call);
    }
    for family in REFUSED_SOCKET_FAMILIES {
        let mut call = refuse(&["socket"]);
        call.set_args(Some(vec![condition(
            0,
            LinuxSeccompOperator::ScmpCmpEq,
            *family,
            None,
        )?]));
        calls.push(call);
    }
    // The audit socket writes the host's audit log: without CAP_AUDIT_WRITE, EINVAL as under
    // podman (what a kernel without audit answers, so programs carry on without it).
    if !held(bounding, &["CAP_AUDIT_WRITE"]) {
        let mut call = rule(
            &["socket"],
            LinuxSeccompAction::ScmpActErrno,
            Some(libc::EINVAL as u32),
        );
        call.set_args(Some(vec![
            condition(
                0,
                LinuxSeccompOperator::ScmpCmpEq,
                libc::AF_NETLINK as u64,
                None,
            )?,
            condition(
                2,
                LinuxSeccompOperator::ScmpCmpEq,
                libc::NETLINK_AUDIT as u64,
                None,
            )?,
        ]));
        calls.push(call);
    }
    let mut p = LinuxSeccomp::default();
    p.set_default_action(LinuxSeccompAction::ScmpActAllow);
    p.set_architectures(Some(architectures()));
    p.set_syscalls(Some(calls));
    Ok(p)
}
