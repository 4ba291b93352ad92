//! The kernel overlayfs backend: the same lower, upper and work directories, mounted by the
//! kernel (`userxattr`, so it works in a user namespace, Linux 5.11 and later). The upper
//! format is the one `layers` writes, so sessions and policies never care which backend
//! served them.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;

/// A kernel overlayfs mount; unmounted on drop.
#[derive(Debug)]
pub struct KernelMount {
    mountpoint: PathBuf,
    mounted: bool,
}

/// Escapes a path for `lowerdir=`/`upperdir=`: the kernel splits on ',' and ':' and takes
/// '\\' as the escape.
fn escape(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl KernelMount {
    /// Mounts `lowers` (topmost first) under `upper` at `mountpoint`; `work` must be an
    /// empty-or-kernel-owned directory on the upper's filesystem.
    ///
    /// # Errors
    /// The mount(2) error: `EPERM`/`EINVAL` where the kernel refuses an overlay here (old
    /// kernel, no user namespace support, an upper filesystem it cannot use).
    pub fn mount(
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        mountpoint: &Path,
    ) -> Result<KernelMount, Errno> {
        Self::mount_with(lowers, upper, work, mountpoint, false)
    }

    /// [`KernelMount::mount`]; with `volatile`, the kernel neither fsyncs copy-ups nor syncs
    /// the upper at all (for an upper that is thrown away): after a crash of the machine the
    /// upper may hold empty or short files, and the kernel refuses to mount `work` again
    /// until `work/work/incompat/volatile` is removed.
    ///
    /// # Errors
    /// As [`KernelMount::mount`].
    pub fn mount_with(
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        mountpoint: &Path,
        volatile: bool,
    ) -> Result<KernelMount, Errno> {
        let lowerdir: Vec<String> = lowers.iter().map(|l| escape(l)).collect();
        let mut data = format!(
            "lowerdir={},upperdir={},workdir={},userxattr",
            lowerdir.join(":"),
            escape(upper),
            escape(work)
        );
        if volatile {
            data.push_str(",volatile");
        }
        nix::mount::mount(
            Some("overlay"),
            mountpoint,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )?;
        Ok(KernelMount {
            mountpoint: mountpoint.to_owned(),
            mounted: true,
        })
    }

    /// Unmounts (lazily when busy).
    ///
    /// # Errors
    /// umount2(2)'s error.
    pub fn unmount(mut self) -> Result<(), Errno> {
        self.mounted = false;
        unmount(&self.mountpoint)
    }
}

fn unmount(mountpoint: &Path) -> Result<(), Errno> {
    match super::umount_or_detach(mountpoint) {
        // Already unmounted from outside: the job is done.
        Err(Errno::EINVAL) => Ok(()),
        r => r,
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = unmount(&self.mountpoint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_in_paths_are_escaped() {
        assert_eq!(escape(Path::new("/a:b,c\\d")), "/a\\:b\\,c\\\\d");
    }
}
