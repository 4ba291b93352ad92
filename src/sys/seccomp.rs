//! Installing a compiled system-call filter: seccomp(2) with `SECCOMP_SET_MODE_FILTER`.

use nix::errno::Errno;

/// Installs `program` (classic BPF, as libseccomp exports it) as a seccomp filter of the
/// calling thread, with `flags` (`SECCOMP_FILTER_FLAG_*`). Allocates nothing, so a forked
/// child may call it; the caller has set no_new_privs or holds `CAP_SYS_ADMIN` in its user
/// namespace, as the kernel requires.
///
/// # Errors
/// `EINVAL` for a program longer than the kernel takes or one it rejects; `EACCES` without
/// no_new_privs and the capability; any other error of seccomp(2).
pub(crate) fn set_mode_filter(
    program: &[libc::sock_filter],
    flags: libc::c_ulong,
) -> nix::Result<()> {
    let len = u16::try_from(program.len()).map_err(|_| Errno::EINVAL)?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: the kernel only reads `prog` and the `len` instructions it points to, both
    // borrowed for the duration of the call; it copies the program before returning.
    let res = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    Errno::result(res).map(drop)
}

#[cfg(test)]
#[allow(clippy::unnecessary_cast)] // libc's type for ioctl numbers differs between targets
mod tests {
    use std::mem::MaybeUninit;
    use std::os::fd::{AsRawFd, RawFd};

    use crate::config::{CapabilitySets, Seccomp};
    use crate::sandbox::seccomp::{Filter, compile};

    /// A system call with harmless arguments.
    #[derive(Clone, Copy, Debug)]
    enum Call {
        Getppid,
        /// `KEYCTL_GET_KEYRING_ID` of the session keyring.
        Keyctl,
        /// This request on /dev/null, with a one-byte argument.
        Ioctl(u64),
        /// A stream socket of this family.
        Socket(i32),
        Personality(u64),
        IoUringSetup,
        /// The realtime clock set to 0 (refused by the kernel too, without `CAP_SYS_TIME`).
        ClockSettime,
        /// A 32-bit x86 system call (`int 0x80`) with this number and two arguments.
        #[cfg(target_arch = "x86_64")]
        I386(u32, i32, i32),
    }

    /// `int 0x80` from a 64-bit process: the kernel runs the i386 system call `nr`, and the
    /// filter sees the i386 architecture. Returns the raw result (negative errno).
    #[cfg(target_arch = "x86_64")]
    fn i386(nr: u32, a: i32, b: i32) -> libc::c_long {
        let ret: i32;
        // SAFETY: the system calls used here take only numbers; int 0x80 returns in eax and
        // may zero r8-r11, declared clobbered; rbx is restored before the block ends.
        unsafe {
            // rbx is LLVM's: the first argument goes through another register.
            std::arch::asm!(
                "xchg {a}, rbx",
                "int 0x80",
                "xchg {a}, rbx",
                a = inout(reg) i64::from(a) => _,
                inlateout("eax") nr as i32 => ret,
                in("ecx") b,
                in("edx") 0,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            );
        }
        if ret < 0 {
            nix::errno::Errno::set_raw(-ret);
            -1
        } else {
            libc::c_long::from(ret)
        }
    }

    fn make(call: Call, fd: RawFd) -> libc::c_long {
        let byte = b"x".as_ptr();
        let mut termios = MaybeUninit::<libc::termios>::uninit();
        let epoch = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: raw system calls whose pointer arguments point to live values of the size
        // the call reads (one byte, a timespec) or writes (a termios, for TCGETS); the rest
        // are plain numbers the kernel checks.
        unsafe {
            match call {
                Call::Getppid => libc::syscall(libc::SYS_getppid),
                Call::Keyctl => libc::syscall(libc::SYS_keyctl, 0, -3, 0),
                Call::Ioctl(req) if req == libc::TCGETS as u64 => {
                    libc::syscall(libc::SYS_ioctl, fd, req, termios.as_mut_ptr())
                }
                Call::Ioctl(req) => libc::syscall(libc::SYS_ioctl, fd, req, byte),
                Call::Socket(family) => {
                    libc::syscall(libc::SYS_socket, family, libc::SOCK_STREAM, 0)
                }
                Call::Personality(p) => libc::syscall(libc::SYS_personality, p),
                Call::IoUringSetup => {
                    libc::syscall(libc::SYS_io_uring_setup, 1, std::ptr::null_mut::<u8>())
                }
                Call::ClockSettime => {
                    libc::syscall(libc::SYS_clock_settime, libc::CLOCK_REALTIME, &epoch)
                }
                #[cfg(target_arch = "x86_64")]
                Call::I386(nr, a, b) => i386(nr, a, b),
            }
        }
    }

    /// The errno of `call` (0 when it succeeds) in a forked child that installed `filter`
    /// first.
    fn errno_under(filter: &Filter, call: Call, fd: RawFd) -> i32 {
        // SAFETY: the child only makes system calls (prctl, seccomp, `call`) and _exits: it
        // takes no lock another thread of the test process could hold, and allocates nothing.
        match unsafe { libc::fork() } {
            0 => {
                let nnp = nix::sys::prctl::set_no_new_privs();
                let code = if nnp.is_err() || filter.load().is_err() {
                    255
                } else if make(call, fd) < 0 {
                    nix::errno::Errno::last_raw()
                } else {
                    0
                };
                // SAFETY: _exit(2) has no preconditions and never returns.
                unsafe { libc::_exit(code) }
            }
            pid => {
                assert!(pid > 0, "fork failed");
                let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                match status {
                    Ok(nix::sys::wait::WaitStatus::Exited(_, 255)) => {
                        panic!("the child could not install the filter")
                    }
                    Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => code,
                    other => panic!("{call:?}: the child ended as {other:?}"),
                }
            }
        }
    }

    #[test]
    fn the_default_filter_answers_as_its_tables_say() {
        let caps = CapabilitySets::container_default(0);
        let filter = compile(&Seccomp::Default, &caps, None).unwrap().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let tiocsti = libc::TIOCSTI as u64;
        let cases = [
            (Call::Getppid, 0),
            (Call::Keyctl, libc::EPERM),
            (Call::Ioctl(tiocsti), libc::EPERM),
            // The kernel reads the request as 32 bits: a high bit must not get past the rule.
            (Call::Ioctl((1 << 32) | tiocsti), libc::EPERM),
            (Call::Ioctl(libc::TIOCLINUX as u64), libc::EPERM),
            // Other requests reach the kernel, which answers for /dev/null.
            (Call::Ioctl(libc::TCGETS as u64), libc::ENOTTY),
            (Call::Socket(libc::AF_VSOCK), libc::EPERM),
            (Call::Socket(libc::AF_UNIX), 0),
            (Call::Personality(0x0040000), libc::ENOSYS),
            (Call::IoUringSetup, libc::ENOSYS),
            (Call::ClockSettime, libc::EPERM),
        ];
        // The x86 half of the filter: the same answers for 32-bit calls (getpid, keyctl,
        // io_uring_setup), none of them killed as a foreign architecture.
        #[cfg(target_arch = "x86_64")]
        let cases = cases.into_iter().chain([
            (Call::I386(20, 0, 0), 0),
            (Call::I386(288, 0, -3), libc::EPERM),
            (Call::I386(425, 1, 0), libc::ENOSYS),
        ]);
        for (call, want) in cases {
            let got = errno_under(&filter, call, null.as_raw_fd());
            assert_eq!(
                got,
                want,
                "{call:?}: got {}, want {}",
                nix::errno::Errno::from_raw(got),
                nix::errno::Errno::from_raw(want)
            );
        }
    }
}
