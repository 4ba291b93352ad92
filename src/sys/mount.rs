//! Mount attribute changes nix lacks: `mount_setattr(2)`, which changes a whole mount tree
//! in one call.

use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;

/// Read-only (`MOUNT_ATTR_RDONLY`).
pub const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
/// No device nodes (`MOUNT_ATTR_NODEV`).
pub const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;

/// `struct mount_attr` of the kernel's uapi (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets `attrs` on the mount at `fd` and, with `recursive`, on every mount below it: the
/// one way to make a tree of mounts read-only that a later submount cannot escape from.
///
/// # Errors
/// Any error of mount_setattr(2) (`EPERM` for a mount this namespace may not change).
pub fn set_mount_attrs(fd: impl AsFd, attrs: u64, recursive: bool) -> nix::Result<()> {
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: the path is a NUL-terminated empty string with AT_EMPTY_PATH, so the kernel
    // acts on the borrowed fd; `attr` is a live, correctly sized `struct mount_attr` that the
    // kernel only reads.
    let res = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_fd().as_raw_fd(),
            c"".as_ptr(),
            flags,
            &raw const attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(res).map(drop)
}
