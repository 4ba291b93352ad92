//! The session's root filesystem, as the launcher is handed it ([`crate::sandbox::Filesystem`]):
//! the backend chosen, the overlay of the rootfs with the session's upper mounted (kernel
//! overlayfs or FUSE), and the mount targets the launcher's own mounts need made and removed
//! ([`super::scaffold`]). The launcher calls each step at its point; what happens is decided
//! here.

use std::path::{Path, PathBuf};

use super::SessionDirs;
use super::record::Record;
use super::scaffold::{self, Scaffold};
use crate::config::SessionPlan;
use crate::layers::format::{self, WhiteoutFormat};
use crate::mount::kernel::KernelMount;
use crate::mount::{Backend, MountError, MountHandle, OverlayBuilder, UnservedMount};
use crate::sandbox::plan::NetFile;
use crate::sandbox::{Filesystem, FsError};

/// Why the session's filesystem could not be set up or taken down.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RootfsError {
    /// The overlay could not be mounted.
    #[error("cannot mount the overlay of the rootfs")]
    Mount(#[from] MountError),
    /// A mount target could not be prepared in the upper.
    #[error("cannot prepare mount target {}", .path.display())]
    Scaffold {
        /// The path in the upper.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The launcher asked to serve an overlay it had not mounted.
    #[error("cannot serve the overlay of the rootfs: it is not mounted")]
    NotMounted,
}

/// A mounted overlay, before and after its serving threads start.
enum Mounted {
    /// FUSE, not served yet.
    Unserved(Box<UnservedMount>),
    /// FUSE, served.
    Fuse(MountHandle),
    /// The kernel overlayfs: nothing to serve.
    Kernel(KernelMount),
}

/// The overlay of `plan`'s rootfs with the upper and work of `dirs`, mounted at `dirs.mnt`.
pub(crate) struct SessionRootfs<'a> {
    plan: &'a SessionPlan,
    dirs: &'a SessionDirs,
    /// The upper is kept after the session: FUSE completes metadata-only copies at unmount.
    kept: bool,
    mounted: Option<Mounted>,
    scaffold: Scaffold,
    /// The session's record, saved with the backend that serves once it is known, so `ls`
    /// names it while the session runs.
    record: &'a Record,
}

impl<'a> SessionRootfs<'a> {
    /// Nothing done yet; `kept` says whether the upper outlives the session (it must then be
    /// whole, readable by the kernel overlayfs and by the policies); `record` is the
    /// session's, as saved.
    pub(crate) fn new(
        plan: &'a SessionPlan,
        dirs: &'a SessionDirs,
        kept: bool,
        record: &'a Record,
    ) -> Self {
        SessionRootfs {
            plan,
            dirs,
            kept,
            mounted: None,
            scaffold: Scaffold::default(),
            record,
        }
    }

    fn kernel(&self) -> Result<Mounted, RootfsError> {
        let (plan, dirs) = (self.plan, self.dirs);
        let record_err = |step| {
            move |source| {
                RootfsError::Mount(MountError::FormatRecord {
                    work: dirs.work.clone(),
                    step,
                    source,
                })
            }
        };
        // The kernel reads an upper in its own format only; the record says which one the
        // upper is in (made by the first backend that served it).
        let recorded = format::recorded(&dirs.work).map_err(record_err("read"))?;
        if recorded == Some(WhiteoutFormat::Aufs) {
            return Err(RootfsError::Mount(MountError::KernelFormat {
                upper: dirs.upper.clone(),
                work: dirs.work.clone(),
            }));
        }
        let work = dirs.work.join("kernel");
        std::fs::create_dir_all(&work).map_err(|source| RootfsError::Scaffold {
            path: work.clone(),
            source,
        })?;
        // No fsync per copy-up unless asked: a discarded upper has nothing to keep after a
        // crash, a kept one is synced once at the end (`durable.rs`, which also removes the
        // kernel's `volatile` mark then, so the upper mounts again).
        let volatile = self.record.unsynced_boot.is_some();
        let m = KernelMount::mount_with(
            std::slice::from_ref(&plan.rootfs),
            &dirs.upper,
            &work,
            &dirs.mnt,
            volatile,
        )
        .map_err(|source| MountError::Kernel {
            path: dirs.mnt.clone(),
            source,
        })?;
        if recorded.is_none() {
            format::record(&dirs.work, WhiteoutFormat::Kernel).map_err(record_err("write"))?;
        }
        Ok(Mounted::Kernel(m))
    }

    fn fuse(&self) -> Result<Mounted, RootfsError> {
        let mut builder = OverlayBuilder::new()
            .lower(&self.plan.rootfs)
            .upper(&self.dirs.upper)
            .work(&self.dirs.work)
            .complete_at_unmount(self.kept)
            // Without the mark (`--durable`, or no boot id to tell a crash by) every copy-up
            // is fsynced.
            .durable(self.record.unsynced_boot.is_none());
        if let Some(w) = self.plan.whiteout {
            builder = builder.whiteout(w);
        }
        if let Some(n) = std::env::var("OVLRUN_THREADS")
            .ok()
            .and_then(|n| n.parse().ok())
        {
            builder = builder.threads(n);
        }
        Ok(Mounted::Unserved(Box::new(
            builder.mount_unserved(&self.dirs.mnt)?,
        )))
    }

    /// Mounts the overlay with the plan's backend, without starting any thread.
    fn mount_overlay(&self) -> Result<Mounted, RootfsError> {
        match self.plan.fs {
            Backend::Kernel => self.kernel(),
            Backend::Fuse => self.fuse(),
            // The kernel shows the tree's real owners; where the session cannot map them (a
            // user over a root-owned tree), nothing would be writable. FUSE shows such a tree
            // as the session's own, so it serves there.
            Backend::Auto if !owner_is_mapped(&self.plan.rootfs) => self.fuse(),
            Backend::Auto => self.kernel().or_else(|_| self.fuse()),
        }
    }
}

impl Filesystem for SessionRootfs<'_> {
    fn mountpoint(&self) -> &Path {
        &self.dirs.mnt
    }

    fn mount(&mut self) -> Result<Vec<NetFile>, FsError> {
        // Nothing of the rootfs is read before the coarse clock is past the session's start
        // (see `Stamp::wait_coarse_past`), so its conflicts are sound.
        if let Some(start) = self.record.base {
            start.wait_coarse_past();
        }
        // Made inside the namespace, so it sees owners as the removal afterwards will.
        let (made, net) = scaffold::make_targets(self.plan, &self.dirs.upper, &self.dirs.work)?;
        self.scaffold = made;
        self.mounted = Some(self.mount_overlay()?);
        Ok(net)
    }

    fn serve(&mut self) -> Result<Backend, FsError> {
        let (mounted, fs) = match self.mounted.take() {
            Some(Mounted::Unserved(m)) => (
                Mounted::Fuse(m.serve().map_err(RootfsError::from)?),
                Backend::Fuse,
            ),
            Some(k @ Mounted::Kernel(_)) => (k, Backend::Kernel),
            Some(f @ Mounted::Fuse(_)) => (f, Backend::Fuse),
            None => return Err(RootfsError::NotMounted.into()),
        };
        self.mounted = Some(mounted);
        if self.record.fs != fs {
            // Best effort: the record gets the backend at the end anyway.
            let _ = Record {
                fs,
                ..self.record.clone()
            }
            .save(&self.dirs.root);
        }
        Ok(fs)
    }

    fn unmount(mut self) -> Result<(), FsError> {
        match self.mounted.take() {
            Some(Mounted::Fuse(m)) => m.unmount().map_err(RootfsError::from)?,
            Some(Mounted::Kernel(k)) => k.unmount().map_err(|source| {
                RootfsError::Mount(MountError::Kernel {
                    path: self.dirs.mnt.clone(),
                    source,
                })
            })?,
            Some(Mounted::Unserved(_)) | None => {}
        }
        let (plan, dirs) = (self.plan, self.dirs);
        scaffold::remove(&plan.rootfs, &dirs.upper, &dirs.work, &self.scaffold);
        Ok(())
    }
}

/// True when the rootfs's top directory is owned by an id this (already entered) user
/// namespace maps: unmapped owners read as the overflow uid.
fn owner_is_mapped(rootfs: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let overflow = std::fs::read_to_string("/proc/sys/kernel/overflowuid")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(65534);
    std::fs::metadata(rootfs).is_ok_and(|m| m.uid() != overflow)
}
