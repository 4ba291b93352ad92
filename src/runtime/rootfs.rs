//! A bundle's `root.path` as the launcher's [`Filesystem`]: the directory itself, as runc
//! uses it (no overlay), bound onto itself so it is a mount `pivot_root` can move.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::MsFlags;
use nix::sys::stat::Mode;

use crate::config::SessionPlan;
use crate::mount::Backend;
use crate::sandbox::plan::{self, Kind, NetFile};
use crate::sandbox::{Filesystem, FsError};

/// The bundle's root, made the container's root.
#[derive(Debug)]
pub(crate) struct BundleRoot<'a> {
    plan: &'a SessionPlan,
    root: PathBuf,
}

impl<'a> BundleRoot<'a> {
    /// The root of `plan` (its `rootfs`, the bundle's `root.path`).
    pub(crate) fn new(plan: &'a SessionPlan) -> Self {
        BundleRoot {
            plan,
            root: plan.rootfs.clone(),
        }
    }
}

/// Why the bundle's root could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {}", .path.display())]
struct RootError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: Errno,
}

impl Filesystem for BundleRoot<'_> {
    fn mountpoint(&self) -> &Path {
        &self.root
    }

    /// Makes the mount targets that are missing (inside the root, never through a symlink
    /// out of it), as runc makes mount destinations, and binds the root onto itself.
    fn mount(&mut self) -> Result<Vec<NetFile>, FsError> {
        let dir = nix::fcntl::open(
            &self.root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|source| RootError {
            what: "open the container's root",
            path: self.root.clone(),
            source,
        })?;
        for (target, kind) in plan::targets(self.plan, &[]) {
            // A target that cannot be made shows as its mount's error, which names it.
            let _ = make_target(&dir, &target, kind);
        }
        nix::mount::mount(
            Some(&self.root),
            &self.root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|source| RootError {
            what: "bind the container's root onto itself:",
            path: self.root.clone(),
            source,
        })?;
        // No resolver files of the host: the manager binds its own, as for runc.
        Ok(Vec::new())
    }

    fn serve(&mut self) -> Result<Backend, FsError> {
        // Nothing serves: the directory is the root. (The value names no overlay.)
        Ok(Backend::Kernel)
    }

    fn unmount(self) -> Result<(), FsError> {
        // The bind lives in the launcher's mount namespace and goes with it.
        Ok(())
    }
}

/// The container's root as the launcher is handed it: the bundle's directory itself (runc's
/// way, the default), or the kernel overlay of it whose upper is a session's (the
/// annotation `org.ovlrun.policy`).
pub(crate) enum ContainerRoot<'a> {
    /// The directory itself.
    Bundle(BundleRoot<'a>),
    /// A session's overlay of it.
    Session(crate::session::rootfs::SessionRootfs<'a>),
}

impl Filesystem for ContainerRoot<'_> {
    fn mountpoint(&self) -> &Path {
        match self {
            ContainerRoot::Bundle(b) => b.mountpoint(),
            ContainerRoot::Session(s) => s.mountpoint(),
        }
    }

    fn mount(&mut self) -> Result<Vec<NetFile>, FsError> {
        match self {
            ContainerRoot::Bundle(b) => b.mount(),
            // No resolver files of the host either way: the manager binds its own.
            ContainerRoot::Session(s) => s.mount().map(|_| Vec::new()),
        }
    }

    fn serve(&mut self) -> Result<Backend, FsError> {
        match self {
            ContainerRoot::Bundle(b) => b.serve(),
            ContainerRoot::Session(s) => s.serve(),
        }
    }

    fn unmount(self) -> Result<(), FsError> {
        match self {
            ContainerRoot::Bundle(b) => b.unmount(),
            ContainerRoot::Session(s) => s.unmount(),
        }
    }
}

/// Makes `target` (absolute inside the root) of `kind` beneath `root`, its parents first.
fn make_target(root: &std::os::fd::OwnedFd, target: &Path, kind: Kind) -> Result<(), Errno> {
    let rel = target.strip_prefix("/").unwrap_or(target);
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    };
    if openat2(root, rel, how()).is_ok() {
        return Ok(());
    }
    let (parent, name) = match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => return Err(Errno::EINVAL),
    };
    if !parent.as_os_str().is_empty() {
        make_target(root, &Path::new("/").join(parent), Kind::Dir)?;
    }
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let dir = openat2(
        root,
        parent,
        OpenHow::new()
            .flags(OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )?;
    let made = match kind {
        Kind::Dir => nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(0o755)),
        Kind::File => nix::fcntl::openat(
            &dir,
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map(drop),
    };
    match made {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}
