//! Where a commit's transaction lives, and whether one found there may be trusted.
//!
//! A transaction is two directories. Its *anchor* holds what recovery reads back and acts on
//! (`state`, `journal`, `plan.json`); its *stage* holds the staged new items and the backups
//! (`new/`, `old/`), and must be on the rootfs's mount, since a commit only renames.
//!
//! Why recovery may trust an anchor (issue 14, item 1). A session writes only inside its
//! rootfs (through the overlay, then a commit), never beside it. So the anchor is
//! `<parent>/.<name>.ovlrun-txn`, beside the rootfs (or, where the caller cannot write the
//! parent, `<state root>/txns/<dev>-<ino>`, in the caller's own state), made with mode 0700,
//! and before any use opened with `O_NOFOLLOW` and checked on that fd: a directory, owned by
//! the caller, writable by no one else. All later reads and writes go through that fd
//! (`/proc/self/fd/N/...`), so a name swapped afterwards changes nothing. Only the caller (or
//! root) can then have written what is in it. A `.ovlrun-txn` inside a rootfs is just a file
//! of the tree: nothing looks there. Whatever is in a trusted anchor is still checked before
//! use ([`super::beneath`]): every path of a plan is resolved beneath the rootfs without
//! symlinks, so even a plan written by something with the caller's rights (a commit into a
//! tree that holds this rootfs, say) can do nothing its writer could not do directly.
//!
//! The stage is the anchor itself when the anchor is on the rootfs's mount (mount id and
//! `st_dev`). Otherwise (the rootfs is the root of its filesystem or a bind mount, a btrfs
//! subvolume, the anchor is in the state root) it is a fresh directory inside the rootfs whose name carries 128 random bits,
//! recorded in the anchor (`stage`) before it is made: a session cannot guess it, and only
//! the name a trusted anchor records is ever used.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, fstat};

use crate::sys::write_atomic;

/// The anchor's name beside the rootfs: `.<rootfs name>` followed by this.
pub(crate) const ANCHOR_SUFFIX: &str = ".ovlrun-txn";

/// The prefix of a stage made inside the rootfs; 32 hex digits follow.
const STAGE_PREFIX: &str = ".ovlrun-stage.";

/// The anchor file naming a stage inside the rootfs.
const STAGE_FILE: &str = "stage";

/// A transaction directory that failed its checks or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// Found, but not made by the caller: never read, never recovered.
    #[error(
        "transaction directory {} is not yours: {problem}; ovlrun used nothing in it (if no commit of that user is under way, remove it)",
        .path.display()
    )]
    Untrusted {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A trusted anchor names a stage that is not a stage name.
    #[error("transaction directory {} names {name:?} as its stage, which is not an ovlrun stage name; nothing was done", .path.display())]
    BadStage {
        /// The anchor.
        path: PathBuf,
        /// The name found.
        name: OsString,
    },
    /// A step on the transaction's directories failed.
    #[error("cannot {step} {}", .path.display())]
    Io {
        /// What was being done.
        step: &'static str,
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TxnError + 'a {
    move |source| TxnError::Io {
        step,
        path: path.to_owned(),
        source,
    }
}

/// An open, checked directory of a transaction.
#[derive(Debug)]
pub(crate) struct TxnDir {
    fd: OwnedFd,
    /// Where it is, for messages.
    pub path: PathBuf,
}

impl TxnDir {
    /// The fd (a directory).
    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// A path to `name` inside, resolved through the checked fd (never through the name the
    /// directory had when it was checked).
    pub(crate) fn via(&self, name: impl AsRef<Path>) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).join(name)
    }
}

/// The anchor paths of `rootfs`, in the order they are looked for: beside it, then in the
/// state root.
fn anchor_paths(rootfs: &Path, state: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let (Some(parent), Some(name)) = (rootfs.parent(), rootfs.file_name()) {
        let mut anchor = OsString::from(".");
        anchor.push(name);
        anchor.push(ANCHOR_SUFFIX);
        out.push(parent.join(anchor));
    }
    if let Ok(md) = std::fs::metadata(rootfs) {
        use std::os::unix::fs::MetadataExt;
        out.push(
            state
                .join("txns")
                .join(format!("{:x}-{:x}", md.dev(), md.ino())),
        );
    }
    out
}

/// Opens `path` without following a symlink and checks it is a directory the caller owns
/// that no one else may write. `None` when nothing is there.
fn open_checked(path: &Path) -> Result<Option<TxnDir>, TxnError> {
    let fd = match nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            return Err(TxnError::Untrusted {
                path: path.to_owned(),
                problem: "not a directory (a symlink or a file)".into(),
            });
        }
        Err(e) => return Err(io_err("open", path)(e.into())),
    };
    let st = fstat(&fd).map_err(|e| io_err("stat", path)(e.into()))?;
    let me = nix::unistd::geteuid().as_raw();
    let problem = if st.st_uid != me {
        Some(format!("owned by uid {}, not by uid {me}", st.st_uid))
    } else if st.st_mode & 0o022 != 0 {
        Some(format!(
            "mode {:o}: others may write in it",
            st.st_mode & 0o7777
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(TxnError::Untrusted {
            path: path.to_owned(),
            problem,
        }),
        None => Ok(Some(TxnDir {
            fd,
            path: path.to_owned(),
        })),
    }
}

/// The anchor of an interrupted (or running) transaction of `rootfs`, checked.
///
/// # Errors
/// [`TxnError::Untrusted`] for a directory in an anchor's place that the caller did not make.
pub(crate) fn find(rootfs: &Path, state: &Path) -> Result<Option<TxnDir>, TxnError> {
    for path in anchor_paths(rootfs, state) {
        if let Some(dir) = open_checked(&path)? {
            return Ok(Some(dir));
        }
    }
    Ok(None)
}

/// Whether anything is in an anchor's place (checked or not): a cheap look before locking.
pub(crate) fn present(rootfs: &Path, state: &Path) -> bool {
    anchor_paths(rootfs, state)
        .iter()
        .any(|p| p.symlink_metadata().is_ok())
}

/// Makes a new anchor for a commit into `rootfs`: beside it, or in the state root when the
/// caller cannot write beside it.
///
/// # Errors
/// [`TxnError::Untrusted`] when something is already in its place, [`TxnError::Io`].
pub(crate) fn create(rootfs: &Path, state: &Path) -> Result<TxnDir, TxnError> {
    let paths = anchor_paths(rootfs, state);
    let mut last = None;
    for (i, path) in paths.iter().enumerate() {
        if i > 0 {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
            }
        }
        match nix::unistd::mkdir(path, Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            // The parent is not ours to write: the state root is.
            Err(e @ (Errno::EACCES | Errno::EPERM | Errno::EROFS)) => {
                last = Some(io_err("create", path)(e.into()));
                continue;
            }
            Err(Errno::EEXIST) => {
                // Recovery ran under the same lock just before: this is not a transaction of
                // ours, or it would be gone.
                open_checked(path)?;
                return Err(TxnError::Untrusted {
                    path: path.clone(),
                    problem: "left over after recovery".into(),
                });
            }
            Err(e) => return Err(io_err("create", path)(e.into())),
        }
        return open_checked(path)?.ok_or_else(|| io_err("open", path)(Errno::ENOENT.into()));
    }
    Err(last.unwrap_or_else(|| io_err("find a place for", rootfs)(Errno::ENOENT.into())))
}

/// Where a transaction's `new/` and `old/` items live.
#[derive(Debug)]
pub(crate) struct Stage {
    /// The stage directory (the anchor itself, or one inside the rootfs).
    pub dir: TxnDir,
    /// `new/`.
    pub new: TxnDir,
    /// `old/`.
    pub old: TxnDir,
    /// Its name inside the rootfs, when it is there.
    pub inside: Option<OsString>,
}

/// Whether a rename can move entries between `a` and `b`: the same mount and the same
/// `st_dev`. A rootfs that is a bind mount shares its `st_dev` with the directory beside it,
/// and btrfs subvolumes share a mount, but `rename(2)` fails with `EXDEV` across either.
/// `st_dev` alone where the kernel reports no mount ids.
fn same_mount(a: &impl AsFd, b: &impl AsFd) -> bool {
    use crate::sys::mount::mount_id;
    let same_dev =
        matches!((fstat(a.as_fd()), fstat(b.as_fd())), (Ok(x), Ok(y)) if x.st_dev == y.st_dev);
    match (mount_id(a.as_fd()), mount_id(b.as_fd())) {
        (Ok(x), Ok(y)) => same_dev && x == y,
        _ => same_dev,
    }
}

fn sub(dir: &TxnDir, name: &str, create: bool) -> Result<TxnDir, TxnError> {
    let path = dir.path.join(name);
    if create {
        match nix::sys::stat::mkdirat(&dir.fd, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io_err("create", &path)(e.into())),
        }
    }
    let fd = nix::fcntl::openat(
        &dir.fd,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open", &path)(e.into()))?;
    Ok(TxnDir { fd, path })
}

fn random_hex() -> Result<String, std::io::Error> {
    let mut rnd = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut rnd)?;
    Ok(rnd.iter().map(|b| format!("{b:02x}")).collect())
}

fn is_stage_name(name: &OsStr) -> bool {
    name.as_bytes()
        .strip_prefix(STAGE_PREFIX.as_bytes())
        .is_some_and(|hex| {
            hex.len() == 32
                && hex
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        })
}

/// Makes the stage of a new transaction: in `anchor` when it is on the rootfs's
/// mount, else a fresh, unguessably named directory inside the rootfs (`root`, an fd of
/// it), recorded in the anchor first.
///
/// # Errors
/// [`TxnError::Io`].
pub(crate) fn create_stage(
    anchor: &TxnDir,
    root: &OwnedFd,
    rootfs: &Path,
) -> Result<Stage, TxnError> {
    if same_mount(&anchor.fd, root) {
        return Ok(Stage {
            new: sub(anchor, "new", true)?,
            old: sub(anchor, "old", true)?,
            dir: TxnDir {
                fd: anchor
                    .fd
                    .try_clone()
                    .map_err(io_err("open", &anchor.path))?,
                path: anchor.path.clone(),
            },
            inside: None,
        });
    }
    loop {
        let name = OsString::from(format!(
            "{STAGE_PREFIX}{}",
            random_hex().map_err(io_err("read random bytes for", rootfs))?
        ));
        let file = anchor.via(STAGE_FILE);
        write_atomic(&file, name.as_bytes()).map_err(io_err("write", &anchor.path))?;
        match nix::sys::stat::mkdirat(root, name.as_os_str(), Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(io_err("create a stage in", rootfs)(e.into())),
        }
        let dir = sub(
            &TxnDir {
                fd: root.try_clone().map_err(io_err("open", rootfs))?,
                path: rootfs.to_owned(),
            },
            &name.to_string_lossy(),
            false,
        )?;
        return Ok(Stage {
            new: sub(&dir, "new", true)?,
            old: sub(&dir, "old", true)?,
            dir,
            inside: Some(name),
        });
    }
}

/// The stage of the transaction anchored at `anchor`, if it (still) exists.
///
/// # Errors
/// [`TxnError::BadStage`] when the anchor names something that is not a stage name;
/// [`TxnError::Untrusted`] when a stage inside the rootfs is not the caller's.
pub(crate) fn open_stage(
    anchor: &TxnDir,
    root: &OwnedFd,
    rootfs: &Path,
) -> Result<Option<Stage>, TxnError> {
    let name = match std::fs::read(anchor.via(STAGE_FILE)) {
        Ok(bytes) => OsString::from(std::ffi::OsStr::from_bytes(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = TxnDir {
                fd: anchor
                    .fd
                    .try_clone()
                    .map_err(io_err("open", &anchor.path))?,
                path: anchor.path.clone(),
            };
            return Ok(match (sub(&dir, "new", false), sub(&dir, "old", false)) {
                (Ok(new), Ok(old)) => Some(Stage {
                    dir,
                    new,
                    old,
                    inside: None,
                }),
                _ => None,
            });
        }
        Err(e) => return Err(io_err("read", &anchor.path.join(STAGE_FILE))(e)),
    };
    if !is_stage_name(&name) {
        return Err(TxnError::BadStage {
            path: anchor.path.clone(),
            name,
        });
    }
    let path = rootfs.join(&name);
    let fd = match crate::sys::beneath::open_beneath(
        root,
        Path::new(&name),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
    ) {
        Ok(fd) => fd,
        // Crashed before the stage was made.
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(io_err("open", &path)(e.into())),
    };
    let st = fstat(&fd).map_err(|e| io_err("stat", &path)(e.into()))?;
    if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o022 != 0 {
        return Err(TxnError::Untrusted {
            path,
            problem: format!("owner {}, mode {:o}", st.st_uid, st.st_mode & 0o7777),
        });
    }
    let dir = TxnDir { fd, path };
    Ok(match (sub(&dir, "new", false), sub(&dir, "old", false)) {
        (Ok(new), Ok(old)) => Some(Stage {
            dir,
            new,
            old,
            inside: Some(name),
        }),
        _ => None,
    })
}

/// Removes a finished transaction: its stage inside the rootfs (if any), then its anchor.
///
/// # Errors
/// [`TxnError::Io`]; what could not be removed stays (and is found again by recovery).
pub(crate) fn remove(anchor: TxnDir, stage: Option<Stage>, root: &OwnedFd) -> Result<(), TxnError> {
    if let Some(Stage {
        inside: Some(name),
        dir,
        ..
    }) = stage
    {
        let via = PathBuf::from(format!("/proc/self/fd/{}", root.as_raw_fd())).join(&name);
        remove_tree(&via).map_err(io_err("remove", &dir.path))?;
    }
    // Emptied through the checked fd; then only an empty directory can go by its name.
    let entries = std::fs::read_dir(anchor.via("")).map_err(io_err("read", &anchor.path))?;
    for entry in entries {
        let entry = entry.map_err(io_err("read", &anchor.path))?;
        remove_tree(&anchor.via(entry.file_name())).map_err(io_err("remove", &anchor.path))?;
    }
    match std::fs::remove_dir(&anchor.path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_err("remove", &anchor.path)(e))
        }
        _ => Ok(()),
    }
}

/// Removes `path`, a whole tree for a directory; a symlink is removed, never followed.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    let result = match path.symlink_metadata() {
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn rootfs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let top = tempfile::tempdir().unwrap();
        let rootfs = top.path().join("r");
        std::fs::create_dir(&rootfs).unwrap();
        let state = top.path().join("state");
        (top, rootfs, state)
    }

    #[test]
    fn made_beside_the_rootfs_found_again_and_removed() {
        let (top, rootfs, state) = rootfs();
        assert!(find(&rootfs, &state).unwrap().is_none());
        let a = create(&rootfs, &state).unwrap();
        std::fs::write(a.via("state"), b"prepared").unwrap();
        let root = nix::fcntl::open(&rootfs, OFlag::O_PATH, Mode::empty()).unwrap();
        let stage = create_stage(&a, &root, &rootfs).unwrap();
        assert!(
            stage.inside.is_none(),
            "same filesystem: staged in the anchor"
        );
        std::fs::write(stage.new.via("0"), b"x").unwrap();
        assert_eq!(a.path, top.path().join(".r.ovlrun-txn"));
        let mode = std::fs::metadata(&a.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(present(&rootfs, &state));
        assert_eq!(find(&rootfs, &state).unwrap().unwrap().path, a.path);
        // Something already there is never taken over.
        assert!(matches!(
            create(&rootfs, &state).unwrap_err(),
            TxnError::Untrusted { .. }
        ));
        remove(a, Some(stage), &root).unwrap();
        assert!(!present(&rootfs, &state));
        assert_eq!(std::fs::read_dir(top.path()).unwrap().count(), 1);
    }

    #[test]
    fn symlinks_and_open_modes_are_refused() {
        let (top, rootfs, state) = rootfs();
        let real = top.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        let anchor = top.path().join(".r.ovlrun-txn");
        std::os::unix::fs::symlink(&real, &anchor).unwrap();
        assert!(matches!(
            find(&rootfs, &state).unwrap_err(),
            TxnError::Untrusted { .. }
        ));
        std::fs::remove_file(&anchor).unwrap();
        std::fs::create_dir(&anchor).unwrap();
        std::fs::set_permissions(&anchor, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = find(&rootfs, &state).unwrap_err();
        assert!(e.to_string().contains("others may write"), "{e}");
    }

    #[test]
    fn stage_names_are_checked() {
        assert!(is_stage_name(OsStr::new(
            ".ovlrun-stage.0123456789abcdef0123456789abcdef"
        )));
        for bad in [
            "../x",
            ".ovlrun-stage.",
            ".ovlrun-stage.0123456789ABCDEF0123456789abcdef",
            ".ovlrun-stage.0123456789abcdef0123456789abcdef/..",
        ] {
            assert!(!is_stage_name(OsStr::new(bad)), "{bad}");
        }
    }
}
