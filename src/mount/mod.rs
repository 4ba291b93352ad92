//! The library's front door for the filesystem: build an overlay, mount it, get a handle
//! that unmounts on drop.
//!
//! ```no_run
//! let mount = ovlrun::mount::OverlayBuilder::new()
//!     .lower("/srv/rootfs")
//!     .upper("/var/tmp/upper")
//!     .mount("/mnt/merged")?;
//! // ... use /mnt/merged ...
//! mount.unmount()?;
//! # Ok::<(), ovlrun::mount::MountError>(())
//! ```

pub(crate) mod kernel;

use std::io;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use std::os::fd::{AsRawFd, OwnedFd};

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};

use crate::fs::OverlayFs;
pub use crate::fs::passthrough::PassthroughMode;
pub use crate::layers::{LayerSetupError, WhiteoutFormat, default_work};
use crate::layers::{Overlay, OverlayConfig};
pub use kernel::KernelMount;

/// Which filesystem serves an overlay. Stored in `session.json` by its [`Backend::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The kernel overlayfs where it mounts, else FUSE.
    Auto,
    /// The kernel overlayfs (`userxattr`).
    Kernel,
    /// ovlrun's own FUSE filesystem.
    Fuse,
}

impl Backend {
    /// The name used in flags, records and messages.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Kernel => "kernel",
            Backend::Fuse => "fuse",
        }
    }
}

/// Why an overlay could not be mounted. Each variant names the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The layers are unusable.
    #[error(transparent)]
    Layers(#[from] LayerSetupError),
    /// The mountpoint is unusable.
    #[error("mountpoint {}: {problem}", .path.display())]
    Mountpoint {
        /// The mountpoint.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The kernel refused the FUSE mount.
    #[error("cannot mount FUSE on {}", .path.display())]
    Fuse {
        /// The mountpoint.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel overlayfs refused the mount.
    #[error("the kernel overlayfs refused to mount on {}", .path.display())]
    Kernel {
        /// The mountpoint.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// The upper is in the AUFS format: the kernel overlayfs would show its markers as files.
    #[error(
        "the kernel overlayfs cannot serve upper {}: it is in the AUFS whiteout format \
         (recorded in {}), whose `.wh.*` markers it would show as files; use --fs fuse",
        .upper.display(), .work.display()
    )]
    KernelFormat {
        /// The upper directory.
        upper: PathBuf,
        /// Its work directory, holding the record.
        work: PathBuf,
    },
    /// The upper's format record cannot be read or written.
    #[error("cannot {step} the whiteout format record in {}", .work.display())]
    FormatRecord {
        /// The work directory.
        work: PathBuf,
        /// "read" or "write".
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Unmounting failed.
    #[error("cannot unmount {}", .path.display())]
    Unmount {
        /// The mountpoint.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Builds an overlay from layers and mounts it.
#[derive(Clone, Debug)]
pub struct OverlayBuilder {
    config: OverlayConfig,
    threads: Option<usize>,
    passthrough: PassthroughMode,
    complete_at_unmount: bool,
}

impl Default for OverlayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl OverlayBuilder {
    /// An empty builder: add at least one lower and the upper.
    pub fn new() -> Self {
        OverlayBuilder {
            config: OverlayConfig {
                lowers: Vec::new(),
                upper: PathBuf::new(),
                work: None,
                whiteout: None,
                durable: true,
            },
            threads: None,
            passthrough: PassthroughMode::default(),
            complete_at_unmount: true,
        }
    }

    /// Adds a lower layer below the ones already added.
    pub fn lower(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.lowers.push(dir.into());
        self
    }

    /// Sets the writable upper directory.
    pub fn upper(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.upper = dir.into();
        self
    }

    /// Sets the work directory (default: `<upper>.work` beside the upper).
    pub fn work(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.work = Some(dir.into());
        self
    }

    /// Chooses the whiteout format (default: the kernel's, where the upper can hold it).
    pub fn whiteout(mut self, format: WhiteoutFormat) -> Self {
        self.config.whiteout = Some(format);
        self
    }

    /// Sets the number of threads serving requests (default: the CPU count, at least 2).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n.max(1));
        self
    }

    /// Chooses which files the kernel may read and write itself (FUSE passthrough, where this
    /// process may register them); default [`PassthroughMode::Upper`].
    pub fn passthrough(mut self, mode: PassthroughMode) -> Self {
        self.passthrough = mode;
        self
    }

    /// Whether each copy-up's data is on disk before the copy takes its place in the upper
    /// (an fsync per copy-up; default: yes). Without, a crash of the machine may leave a
    /// copy empty or short, as with the kernel overlayfs's `volatile` option: for an upper
    /// that is thrown away, or made durable as a whole afterwards (`syncfs`).
    pub fn durable(mut self, durable: bool) -> Self {
        self.config.durable = durable;
        self
    }

    /// Whether to give metadata-only copies their data at unmount, so the upper stays one
    /// the kernel overlayfs can mount (default: yes; no for an upper about to be discarded).
    pub fn complete_at_unmount(mut self, complete: bool) -> Self {
        self.complete_at_unmount = complete;
        self
    }

    /// Opens the layers and mounts the overlay on `mountpoint`, served by background threads.
    ///
    /// # Errors
    /// [`MountError`] naming the layer or mountpoint at fault.
    pub fn mount(self, mountpoint: impl AsRef<Path>) -> Result<MountHandle, MountError> {
        self.mount_unserved(mountpoint)?.serve()
    }

    /// Mounts the overlay but starts no thread yet: requests wait until
    /// [`UnservedMount::serve`]. A launcher forks its child in between, while it is still
    /// single-threaded.
    ///
    /// # Errors
    /// [`MountError`] naming the layer or mountpoint at fault.
    pub fn mount_unserved(self, mountpoint: impl AsRef<Path>) -> Result<UnservedMount, MountError> {
        let mountpoint = mountpoint.as_ref();
        check_mountpoint(mountpoint, &self.config)?;
        raise_fd_limit();
        let overlay = Overlay::new(&self.config)?;
        let fs = OverlayFs::new(overlay)
            .with_passthrough(self.passthrough)
            .complete_at_unmount(self.complete_at_unmount);
        let threads = self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 8)
        });
        let prefill = fs.prefill();
        let config = fuse_config(threads, &self.config.upper);
        let fuse_err = |source| MountError::Fuse {
            path: mountpoint.to_owned(),
            source,
        };
        let (session, unmounter) = match mount_direct(mountpoint, &self.config.upper) {
            Ok(fd) => {
                let session = Session::from_fd(fs, fd, config.acl, config).map_err(fuse_err)?;
                (session, Unmounter::Direct)
            }
            // Unprivileged outside a user namespace: the setuid fusermount3 mounts for us.
            Err(Errno::EPERM) => {
                let mut session = Session::new(fs, mountpoint, &config).map_err(fuse_err)?;
                let unmounter = session.unmount_callable();
                (session, Unmounter::Fusermount(unmounter))
            }
            Err(e) => return Err(fuse_err(e.into())),
        };
        prefill.attach(session.notifier());
        Ok(UnservedMount {
            mountpoint: mountpoint.to_owned(),
            session,
            unmounter,
        })
    }
}

/// A mounted overlay nobody serves yet (see [`OverlayBuilder::mount_unserved`]).
#[derive(Debug)]
pub struct UnservedMount {
    mountpoint: PathBuf,
    session: Session<OverlayFs>,
    unmounter: Unmounter,
}

impl UnservedMount {
    /// Starts the serving threads.
    ///
    /// # Errors
    /// [`MountError::Fuse`] when a thread cannot be started.
    pub fn serve(self) -> Result<MountHandle, MountError> {
        let UnservedMount {
            mountpoint,
            session,
            unmounter,
        } = self;
        let serving = std::thread::Builder::new()
            .name("ovlrun-fuse".into())
            .spawn(move || session.run())
            .map_err(|source| MountError::Fuse {
                path: mountpoint.clone(),
                source,
            })?;
        Ok(MountHandle {
            mountpoint,
            unmounter,
            serving: Some(serving),
        })
    }
}

/// Mounts a FUSE connection of type `fuse.ovlrun` on `mountpoint` and returns its
/// `/dev/fuse` fd. Works as root and inside a user namespace that owns the mount namespace.
fn mount_direct(mountpoint: &Path, upper: &Path) -> Result<OwnedFd, Errno> {
    let fd = nix::fcntl::open(
        "/dev/fuse",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let root_mode = nix::sys::stat::stat(mountpoint)?.st_mode & libc::S_IFMT;
    let root = nix::unistd::geteuid().is_root();
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id={},group_id={},default_permissions",
        fd.as_raw_fd(),
        nix::unistd::geteuid(),
        nix::unistd::getegid()
    );
    let mut flags = MsFlags::empty();
    if root {
        data.push_str(",allow_other");
    } else {
        flags |= MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    }
    let source = format!(
        "ovlrun:{}",
        upper
            .canonicalize()
            .unwrap_or_else(|_| upper.to_owned())
            .display()
    );
    nix::mount::mount(
        Some(source.as_str()),
        mountpoint,
        Some("fuse.ovlrun"),
        flags,
        Some(data.as_str()),
    )?;
    Ok(fd)
}

fn fuse_config(threads: usize, upper: &Path) -> Config {
    let root = nix::unistd::geteuid().is_root();
    let mut options = vec![
        MountOption::FSName(format!("ovlrun:{}", upper.display())),
        MountOption::Subtype("ovlrun".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
    ];
    if root {
        // Device nodes and set-id programs of a root filesystem must keep working.
        options.extend([MountOption::Dev, MountOption::Suid]);
    }
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = if root {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(threads);
    config.clone_fd = true;
    config
}

fn check_mountpoint(path: &Path, config: &OverlayConfig) -> Result<(), MountError> {
    let err = |problem: String| MountError::Mountpoint {
        path: path.to_owned(),
        problem,
    };
    let canon = path.canonicalize().map_err(|e| err(e.to_string()))?;
    if !canon.is_dir() {
        return Err(err("not a directory".into()));
    }
    for (role, dir) in
        std::iter::once(("upper", &config.upper)).chain(config.work.iter().map(|w| ("work", w)))
    {
        if let Ok(d) = dir.canonicalize() {
            if canon.starts_with(&d) {
                return Err(err(format!(
                    "is inside the {role} directory {}",
                    dir.display()
                )));
            }
        }
    }
    if is_mount_point(&canon) {
        return Err(err("is already a mount point (busy)".into()));
    }
    Ok(())
}

/// True when `/proc/self/mountinfo` lists `path` as a mount point.
fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo fields.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.clone().take(3).collect();
            if let Ok(n) = u8::from_str_radix(&code, 8) {
                out.push(char::from(n));
                for _ in 0..3 {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// The kernel keeps every entry it has looked up; we keep no fd per entry, but handles and
/// parallel requests still want room: take the whole hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// A mounted overlay. Dropping it unmounts and stops serving.
#[derive(Debug)]
pub struct MountHandle {
    mountpoint: PathBuf,
    unmounter: Unmounter,
    serving: Option<JoinHandle<io::Result<()>>>,
}

impl MountHandle {
    /// Where the overlay is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// True once serving has stopped (the filesystem was unmounted from outside).
    pub fn is_finished(&self) -> bool {
        self.serving.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Unmounts and waits for the serving threads to stop.
    ///
    /// # Errors
    /// [`MountError::Unmount`] when the kernel refuses (busy).
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.stop()
    }

    /// Waits until the filesystem is unmounted from outside.
    ///
    /// # Errors
    /// [`MountError::Fuse`] when serving ended with an error.
    pub fn wait(mut self) -> Result<(), MountError> {
        self.join()
    }

    fn join(&mut self) -> Result<(), MountError> {
        let Some(t) = self.serving.take() else {
            return Ok(());
        };
        let path = self.mountpoint.clone();
        match t.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(MountError::Fuse { path, source }),
            Err(_) => Err(MountError::Fuse {
                path,
                source: io::Error::other("serving thread panicked"),
            }),
        }
    }

    fn stop(&mut self) -> Result<(), MountError> {
        if self.serving.as_ref().is_some_and(|t| !t.is_finished()) {
            let res = match &mut self.unmounter {
                Unmounter::Direct => umount_or_detach(&self.mountpoint).map_err(io::Error::from),
                Unmounter::Fusermount(u) => u.unmount(),
            };
            res.map_err(|source| MountError::Unmount {
                path: self.mountpoint.clone(),
                source,
            })?;
        }
        self.join()
    }
}

/// Unmounts `mountpoint`; still in use, it is detached instead, so it goes away once the
/// last user does.
pub(crate) fn umount_or_detach(mountpoint: &Path) -> Result<(), Errno> {
    nix::mount::umount2(mountpoint, MntFlags::empty()).or_else(|e| match e {
        Errno::EBUSY => nix::mount::umount2(mountpoint, MntFlags::MNT_DETACH),
        e => Err(e),
    })
}

/// How a mount is undone, matching how it was made.
#[derive(Debug)]
enum Unmounter {
    /// Mounted by us: umount2(2).
    Direct,
    /// Mounted through fusermount3, which also unmounts.
    Fusermount(SessionUnmounter),
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
