//! Mount attribute changes nix lacks: `mount_setattr(2)`, which changes a whole mount tree
//! in one call.

use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;

/// Read-only (`MOUNT_ATTR_RDONLY`).
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
/// No set-user-ID (`MOUNT_ATTR_NOSUID`).
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
/// No device nodes (`MOUNT_ATTR_NODEV`).
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
/// No execution (`MOUNT_ATTR_NOEXEC`).
pub(crate) const MOUNT_ATTR_NOEXEC: u64 = 0x0000_0008;

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
pub(crate) fn set_mount_attrs(fd: impl AsFd, attrs: u64, recursive: bool) -> nix::Result<()> {
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

/// The id of the mount `fd` is on (`statx` `STATX_MNT_ID`): two bind mounts of one
/// filesystem share `st_dev` but not this, and `rename(2)` works only within one mount.
///
/// # Errors
/// The `statx` error; `ENOSYS` when the kernel does not report mount ids (before 5.8).
pub(crate) fn mount_id(fd: impl AsFd) -> nix::Result<u64> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: the path is a NUL-terminated empty string, so with AT_EMPTY_PATH the kernel
    // stats the borrowed, open fd; it writes at most one `struct statx` into `stx`, which is
    // that size and zeroed, so every field is initialised whatever the kernel fills.
    let res = unsafe {
        libc::statx(
            fd.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    };
    Errno::result(res)?;
    // SAFETY: zeroed above, and written by the kernel on success.
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(Errno::ENOSYS);
    }
    Ok(stx.stx_mnt_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_ids_tell_mounts_apart() {
        let dir = tempfile::tempdir().unwrap();
        let a = std::fs::File::open(dir.path()).unwrap();
        let b = std::fs::File::open(dir.path()).unwrap();
        let proc = std::fs::File::open("/proc").unwrap();
        assert_eq!(mount_id(&a).unwrap(), mount_id(&b).unwrap());
        assert_ne!(mount_id(&a).unwrap(), mount_id(&proc).unwrap());
    }
}
