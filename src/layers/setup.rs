//! Opening and checking the layer directories before anything is served.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::{Mode, SFlag, fstat, mknodat};

use super::format::WhiteoutFormat;
use super::walk::{clear_dir, proc_path};
use super::{Layer, LayerIdx, Lowers, Overlay};
use crate::sys;

/// Name of ovlrun's scratch directory inside the work directory (the kernel uses `work/`
/// and `index/` there, so the two never meet).
const SCRATCH: &str = "ovlrun";

/// What an overlay is made of.
#[derive(Clone, Debug)]
pub(crate) struct OverlayConfig {
    /// Lower directories, topmost first (as in the kernel's `lowerdir=`).
    pub lowers: Vec<PathBuf>,
    /// The writable upper directory.
    pub upper: PathBuf,
    /// The work directory, on the upper's filesystem; `None` for `<upper>.work` beside it.
    pub work: Option<PathBuf>,
    /// The whiteout format to write; `None` takes the one recorded with the upper, else
    /// probes the upper filesystem and prefers [`WhiteoutFormat::Kernel`]. The format is
    /// recorded in the work directory at the first use and obeyed afterwards.
    pub whiteout: Option<WhiteoutFormat>,
    /// Each copy-up's data is on disk before the copy takes its place in the upper (an fsync
    /// per copy-up). Without, a crash of the machine may leave a copy empty or short: fine for
    /// an upper that is thrown away, or one the caller makes durable as a whole afterwards
    /// (one `syncfs`), as the kernel's `volatile` option.
    pub durable: bool,
}

/// Why a set of layers cannot make an overlay. Every variant names the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum LayerSetupError {
    /// No lower layer given.
    #[error("at least one lower directory is needed")]
    NoLower,
    /// A layer path is missing or not a directory.
    #[error("{role} directory {}", .path.display())]
    Open {
        /// Which layer ("lower", "upper", "work").
        role: &'static str,
        /// The path given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A layer path is not a directory.
    #[error("{role} directory {} is not a directory", .path.display())]
    NotDir {
        /// Which layer.
        role: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// Two layers overlap.
    #[error("{a_role} directory {} {what} the {b_role} directory {}", .a.display(), .b.display())]
    Overlap {
        /// Role of the first path.
        a_role: &'static str,
        /// First path.
        a: PathBuf,
        /// How they overlap ("is the same directory as", "is inside").
        what: &'static str,
        /// Role of the second path.
        b_role: &'static str,
        /// Second path.
        b: PathBuf,
    },
    /// The work directory is on another filesystem than the upper.
    #[error(
        "work directory {} is not on the same filesystem as upper {} (give --work on the upper's filesystem)",
        .work.display(), .upper.display()
    )]
    WorkOtherFs {
        /// The work directory.
        work: PathBuf,
        /// The upper directory.
        upper: PathBuf,
    },
    /// The upper filesystem cannot hold the requested whiteout format.
    #[error(
        "upper directory {} cannot hold kernel-style whiteouts ({what} failed; use --whiteout aufs)",
        .upper.display()
    )]
    FormatUnsupported {
        /// The upper directory.
        upper: PathBuf,
        /// What failed ("mknod 0:0", "user xattrs").
        what: &'static str,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// The format asked for is not the one recorded with the upper.
    #[error(
        "upper directory {} is in the {} whiteout format (recorded in {}); it cannot be used as {}",
        .upper.display(), .recorded.name(), .work.display(), .asked.name()
    )]
    FormatMismatch {
        /// The upper directory.
        upper: PathBuf,
        /// Its work directory, holding the record.
        work: PathBuf,
        /// The recorded format.
        recorded: WhiteoutFormat,
        /// The format asked for.
        asked: WhiteoutFormat,
    },
    /// Metadata-only copies in the upper could not be completed (they stay as they were).
    #[error("upper directory {}: cannot complete its metadata-only copies", .upper.display())]
    Metacopy {
        /// The upper directory.
        upper: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// A step on the work directory failed.
    #[error("work directory {}: cannot {step}", .path.display())]
    Work {
        /// The work directory.
        path: PathBuf,
        /// The step.
        step: &'static str,
        /// The cause.
        #[source]
        source: Errno,
    },
}

fn open_dir(role: &'static str, path: &Path) -> Result<(OwnedFd, PathBuf), LayerSetupError> {
    let canon = path
        .canonicalize()
        .map_err(|source| LayerSetupError::Open {
            role,
            path: path.to_owned(),
            source,
        })?;
    if !canon.is_dir() {
        return Err(LayerSetupError::NotDir {
            role,
            path: path.to_owned(),
        });
    }
    let fd = open(
        &canon,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| LayerSetupError::Open {
        role,
        path: path.to_owned(),
        source: e.into(),
    })?;
    Ok((fd, canon))
}

/// The default work directory: `<upper>.work` beside the upper.
pub fn default_work(upper: &Path) -> PathBuf {
    let mut name = upper.file_name().unwrap_or(OsStr::new("upper")).to_owned();
    name.push(".work");
    upper.with_file_name(name)
}

/// A layer as given and as resolved, for overlap checks.
type Named<'a> = (&'static str, &'a Path, &'a Path);

fn check_overlap(a: Named<'_>, b: Named<'_>) -> Result<(), LayerSetupError> {
    let overlap = |x: Named<'_>, what, y: Named<'_>| LayerSetupError::Overlap {
        a_role: x.0,
        a: x.1.to_owned(),
        what,
        b_role: y.0,
        b: y.1.to_owned(),
    };
    if a.2 == b.2 {
        Err(overlap(a, "is the same directory as", b))
    } else if a.2.starts_with(b.2) {
        Err(overlap(a, "is inside", b))
    } else if b.2.starts_with(a.2) {
        Err(overlap(b, "is inside", a))
    } else {
        Ok(())
    }
}

impl Overlay {
    /// Opens and checks the layers, prepares the work directory and settles the format.
    ///
    /// # Errors
    /// A [`LayerSetupError`] naming the path at fault. Nothing in the layers is changed
    /// before all paths are checked.
    pub(crate) fn new(config: &OverlayConfig) -> Result<Overlay, LayerSetupError> {
        if config.lowers.is_empty() {
            return Err(LayerSetupError::NoLower);
        }
        let (upper_fd, upper_canon) = open_dir("upper", &config.upper)?;
        let mut lowers = Vec::new();
        for lower in &config.lowers {
            let (fd, canon) = open_dir("lower", lower)?;
            check_overlap(
                ("upper", &config.upper, &upper_canon),
                ("lower", lower, &canon),
            )?;
            lowers.push((fd, canon));
        }
        let work = config
            .work
            .clone()
            .unwrap_or_else(|| default_work(&config.upper));
        if !work.exists() {
            std::fs::create_dir(&work).map_err(|source| LayerSetupError::Open {
                role: "work",
                path: work.clone(),
                source,
            })?;
        }
        let (work_fd, work_canon) = open_dir("work", &work)?;
        check_overlap(
            ("work", &work, &work_canon),
            ("upper", &config.upper, &upper_canon),
        )?;
        for (lower, (_, canon)) in config.lowers.iter().zip(&lowers) {
            check_overlap(("work", &work, &work_canon), ("lower", lower, canon))?;
        }
        let dev_of = |fd: &OwnedFd, role, path: &Path| {
            fstat(fd.as_fd())
                .map(|st| st.st_dev)
                .map_err(|e| LayerSetupError::Open {
                    role,
                    path: path.to_owned(),
                    source: e.into(),
                })
        };
        let upper_dev = dev_of(&upper_fd, "upper", &config.upper)?;
        if dev_of(&work_fd, "work", &work)? != upper_dev {
            return Err(LayerSetupError::WorkOtherFs {
                work,
                upper: config.upper.clone(),
            });
        }

        let work_err = |step| {
            let path = work.clone();
            move |source| LayerSetupError::Work { path, step, source }
        };
        let scratch = prepare_scratch(&work_fd).map_err(work_err("prepare its scratch dir"))?;
        let probe = probe_upper(&scratch).map_err(work_err("probe the upper filesystem"))?;
        let index = open_kept_dir(&work_fd, super::index::INDEX_DIR)
            .map_err(work_err("open its index dir"))?;
        let origins = open_kept_dir(&work_fd, super::origin::ORIGIN_DIR)
            .map_err(work_err("open its origin map"))?;
        let recorded = super::format::recorded(&work).map_err(|e| {
            work_err("read its format record")(Errno::from_raw(
                e.raw_os_error().unwrap_or(libc::EINVAL),
            ))
        })?;
        let wanted = match (config.whiteout, recorded) {
            (Some(asked), Some(recorded)) if asked != recorded => {
                return Err(LayerSetupError::FormatMismatch {
                    upper: config.upper.clone(),
                    work: work.clone(),
                    recorded,
                    asked,
                });
            }
            (asked, recorded) => asked.or(recorded),
        };
        let format = match (wanted, probe.whiteout) {
            (Some(WhiteoutFormat::Kernel), Err(source)) => {
                return Err(LayerSetupError::FormatUnsupported {
                    upper: config.upper.clone(),
                    what: "mknod 0:0",
                    source,
                });
            }
            (Some(WhiteoutFormat::Kernel), Ok(())) if probe.xattrs.is_err() => {
                return Err(LayerSetupError::FormatUnsupported {
                    upper: config.upper.clone(),
                    what: "user xattrs",
                    source: probe.xattrs.err().unwrap_or(Errno::EOPNOTSUPP),
                });
            }
            (Some(f), _) => f,
            (None, Ok(())) if probe.xattrs.is_ok() => WhiteoutFormat::Kernel,
            (None, _) => WhiteoutFormat::Aufs,
        };
        if recorded.is_none() {
            super::format::record(&work, format).map_err(|e| {
                work_err("record the upper's format")(Errno::from_raw(
                    e.raw_os_error().unwrap_or(libc::EIO),
                ))
            })?;
        }

        let mut devs = vec![upper_dev];
        let mut layers = vec![Layer {
            root: upper_fd,
            path: upper_canon,
            fs_index: 0,
        }];
        for (root, path) in lowers {
            let dev = dev_of(&root, "lower", &path)?;
            let index = match devs.iter().position(|d| *d == dev) {
                Some(i) => i,
                None => {
                    devs.push(dev);
                    devs.len() - 1
                }
            };
            layers.push(Layer {
                root,
                path,
                fs_index: u8::try_from(index).unwrap_or(u8::MAX),
            });
        }
        let root_lowers = root_lowers(&layers, format).map_err(|source| LayerSetupError::Work {
            path: layers[0].path.clone(),
            step: "read the layer roots",
            source,
        })?;
        Ok(Overlay {
            layers,
            work: work_fd,
            scratch,
            index,
            origins,
            root_lowers,
            format,
            upper_xattrs: probe.xattrs.is_ok(),
            next_temp: AtomicU64::new(0),
            dirs: super::dircache::DirCache::default(),
            copy_ups: AtomicU64::new(0),
            durable: config.durable,
            synced_copy_ups: AtomicU64::new(0),
            completing: std::sync::Mutex::new(()),
            stubs_marked: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// Opens `work/ovlrun`, creating it, and empties it: anything there is a leftover of a
/// session that crashed mid-operation (a half-made copy-up never reached the upper).
fn prepare_scratch(work: &OwnedFd) -> Result<OwnedFd, Errno> {
    match nix::sys::stat::mkdirat(work.as_fd(), SCRATCH, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e),
    }
    clear_dir(work.as_fd(), OsStr::new(SCRATCH))?;
    nix::fcntl::openat(
        work.as_fd(),
        SCRATCH,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens directory `name` of the work dir, creating it; unlike the scratch dir its content
/// is kept across mounts (the index and the origin map).
fn open_kept_dir(work: &OwnedFd, name: &str) -> Result<OwnedFd, Errno> {
    match nix::sys::stat::mkdirat(work.as_fd(), name, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e),
    }
    nix::fcntl::openat(
        work.as_fd(),
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The lowers behind the root: all of them, cut below the first opaque root (an opaque
/// upper root hides them all).
fn root_lowers(layers: &[Layer], format: WhiteoutFormat) -> Result<Lowers, Errno> {
    let opaque =
        |l: &Layer, aufs| super::format::dir_is_opaque(l.root.as_fd(), OsStr::new(""), aufs);
    let mut kept = Vec::new();
    if opaque(&layers[0], format.has_aufs_markers())? {
        return Ok(Lowers::from(kept));
    }
    for (i, layer) in layers.iter().enumerate().skip(1) {
        kept.push(LayerIdx(u16::try_from(i).unwrap_or(u16::MAX)));
        if i + 1 < layers.len() && opaque(layer, true)? {
            break;
        }
    }
    Ok(Lowers::from(kept))
}

struct Probe {
    whiteout: Result<(), Errno>,
    xattrs: Result<(), Errno>,
}

/// Tries what the kernel format needs on the upper's filesystem: a 0:0 char device and a
/// `user.` xattr.
fn probe_upper(scratch: &OwnedFd) -> Result<Probe, Errno> {
    let dir = scratch.as_fd();
    let whiteout = mknodat(dir, "probe-whiteout", SFlag::S_IFCHR, Mode::empty(), 0);
    if whiteout.is_ok() {
        nix::unistd::unlinkat(
            dir,
            "probe-whiteout",
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )?;
    }
    nix::sys::stat::mkdirat(dir, "probe-xattr", Mode::from_bits_truncate(0o700))?;
    let xattrs = sys::xattr::set(
        &proc_path(dir, OsStr::new("probe-xattr")),
        OsStr::new(super::format::OPAQUE_XATTR),
        b"y",
        0,
    );
    nix::unistd::unlinkat(dir, "probe-xattr", nix::unistd::UnlinkatFlags::RemoveDir)?;
    Ok(Probe { whiteout, xattrs })
}
