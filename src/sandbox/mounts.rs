//! Executes the [`Step`]s inside the session's own mount namespace, then moves into the new
//! root. Every target is resolved *inside* the new root (`RESOLVE_IN_ROOT`), so a symlink
//! in the rootfs (an absolute `/etc/resolv.conf` link, say) can never send a mount onto the
//! host.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::Mode;

use super::plan::{Kind, Step};
use crate::config::{FsKind, FsMount};

/// A setup step that failed, naming the step and the path inside the session.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {}", .path.display())]
pub(crate) struct SetupError {
    /// What was being done ("mount proc on", "bind /etc/hosts onto", ...).
    pub what: String,
    /// The path inside the session.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: Errno,
}

fn err(what: impl Into<String>, path: &Path) -> impl FnOnce(Errno) -> SetupError {
    let (what, path) = (what.into(), path.to_owned());
    move |source| SetupError { what, path, source }
}

/// Opens `dest` (absolute inside the session) beneath `root` as an `O_PATH` fd.
fn open_in_root(root: &OwnedFd, dest: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
    let rel = dest.strip_prefix("/").unwrap_or(dest);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    openat2(
        root,
        rel,
        OpenHow::new()
            .flags(flags | OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )
}

/// The path through which the kernel reaches an fd's file, for mount(2) targets.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Runs `steps` against the new root mounted at `root`.
///
/// # Errors
/// The first [`SetupError`]; the session does not start.
pub(crate) fn apply(root: &Path, steps: &[Step]) -> Result<Vec<String>, SetupError> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(err("open the new root", root))?;
    let mut notes = Vec::new();
    for step in steps {
        if let Some(note) = apply_one(&root_fd, step)? {
            notes.push(note);
        }
    }
    Ok(notes)
}

fn apply_one(root: &OwnedFd, step: &Step) -> Result<Option<String>, SetupError> {
    match step {
        Step::Proc(dest) => {
            let target = open_in_root(root, dest, OFlag::O_DIRECTORY).map_err(err("find", dest))?;
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            match mount(
                Some("proc"),
                &fd_path(&target),
                Some("proc"),
                flags,
                None::<&str>,
            ) {
                Ok(()) => Ok(None),
                // Some container hosts forbid a new procfs; the host's still works for most.
                Err(Errno::EPERM | Errno::EACCES) => {
                    bind(Path::new("/proc"), &target)
                        .map_err(err("bind the host /proc onto", dest))?;
                    Ok(Some(
                        "a new /proc was refused; the host's /proc is bound instead".into(),
                    ))
                }
                Err(e) => Err(err("mount proc on", dest)(e)),
            }
        }
        Step::Sysfs(dest) => {
            let target = open_in_root(root, dest, OFlag::O_DIRECTORY).map_err(err("find", dest))?;
            let flags =
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
            match mount(
                Some("sysfs"),
                &fd_path(&target),
                Some("sysfs"),
                flags,
                None::<&str>,
            ) {
                Ok(()) => Ok(None),
                Err(Errno::EPERM | Errno::EACCES) => {
                    bind(Path::new("/sys"), &target)
                        .map_err(err("bind the host /sys onto", dest))?;
                    make_read_only(root, dest)?;
                    Ok(Some(
                        "a new /sys was refused; the host's is bound read-only instead".into(),
                    ))
                }
                Err(e) => Err(err("mount sysfs on", dest)(e)),
            }
        }
        Step::Tmpfs { dest, mode } => {
            let target = open_in_root(root, dest, OFlag::O_DIRECTORY).map_err(err("find", dest))?;
            let data = format!("mode={mode:o}");
            mount(
                Some("tmpfs"),
                &fd_path(&target),
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(data.as_str()),
            )
            .map_err(err("mount a tmpfs on", dest))?;
            Ok(None)
        }
        Step::Create { dest, kind } => {
            let (parent, name) = split(dest)?;
            let dir =
                open_in_root(root, parent, OFlag::O_DIRECTORY).map_err(err("find", parent))?;
            let res = match kind {
                Kind::Dir => nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(0o755)),
                Kind::File => nix::fcntl::openat(
                    &dir,
                    name,
                    OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                )
                .map(drop),
            };
            match res {
                Ok(()) | Err(Errno::EEXIST) => Ok(None),
                Err(e) => Err(err("create", dest)(e)),
            }
        }
        Step::Bind {
            source,
            dest,
            read_only,
        } => {
            let target = open_in_root(root, dest, OFlag::empty()).map_err(err("find", dest))?;
            let what = format!("bind {} onto", source.display());
            bind(source, &target).map_err(err(what, dest))?;
            if *read_only {
                make_read_only(root, dest)?;
            }
            Ok(None)
        }
        Step::DevPts(dest) => {
            let target = open_in_root(root, dest, OFlag::O_DIRECTORY).map_err(err("find", dest))?;
            mount(
                Some("devpts"),
                &fd_path(&target),
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=620"),
            )
            .map_err(err("mount devpts on", dest))?;
            let ptmx = dest.parent().unwrap_or(Path::new("/dev")).join("ptmx");
            apply_one(
                root,
                &Step::Symlink {
                    target: PathBuf::from("pts/ptmx"),
                    dest: ptmx,
                },
            )
        }
        Step::Mask(dest) => mask(root, dest).map(|()| None),
        Step::ReadOnly(dest) => {
            let target = match open_in_root(root, dest, OFlag::empty()) {
                Ok(t) => t,
                Err(Errno::ENOENT) => return Ok(None),
                Err(e) => return Err(err("find", dest)(e)),
            };
            // A path inside a mount (/proc/sys) becomes a mount of its own first; over a
            // mount root the new bind is the same tree, one level up the stack.
            bind(&fd_path(&target), &target).map_err(err("bind onto itself", dest))?;
            make_read_only(root, dest)?;
            Ok(None)
        }
        Step::ReadOnlyMount(dest) => make_read_only(root, dest).map(|()| None),
        Step::Mount(m) => mount_fs(root, m).map(|()| None),
        Step::Cgroup2(dest) => {
            let target = open_in_root(root, dest, OFlag::O_DIRECTORY).map_err(err("find", dest))?;
            let flags =
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
            match mount(
                Some("cgroup2"),
                &fd_path(&target),
                Some("cgroup2"),
                flags,
                None::<&str>,
            ) {
                Ok(()) => Ok(None),
                Err(e) => Ok(Some(format!(
                    "no cgroup2 view at {} ({e}); the session's /sys/fs/cgroup is empty",
                    dest.display()
                ))),
            }
        }
        Step::Sysctl { key, value } => {
            let dest = sysctl_path(key);
            let file = openat2(
                root,
                dest.strip_prefix("/").unwrap_or(&dest),
                OpenHow::new()
                    .flags(OFlag::O_WRONLY | OFlag::O_TRUNC | OFlag::O_CLOEXEC)
                    .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS),
            )
            .map_err(err(format!("set sysctl {key} through"), &dest))?;
            nix::unistd::write(&file, value.as_bytes())
                .map_err(err(format!("set sysctl {key}={value} through"), &dest))?;
            Ok(None)
        }
        Step::Symlink { target, dest } => {
            let (parent, name) = split(dest)?;
            let dir =
                open_in_root(root, parent, OFlag::O_DIRECTORY).map_err(err("find", parent))?;
            match nix::unistd::symlinkat(target.as_os_str(), &dir, name) {
                Ok(()) | Err(Errno::EEXIST) => Ok(None),
                Err(e) => Err(err("create the symlink", dest)(e)),
            }
        }
    }
}

/// A config's mount: a bind (recursive or not), a tmpfs with its options, an mqueue; then
/// its flags on it (and, for a recursive bind, on every mount below it).
fn mount_fs(root: &OwnedFd, m: &FsMount) -> Result<(), SetupError> {
    use crate::sys::mount::{
        MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, set_mount_attrs,
    };
    let dest = &m.dest;
    let target = open_in_root(root, dest, OFlag::empty()).map_err(err("find", dest))?;
    let mut f = m.flags;
    // No device cgroup guards the session: a node made on a mount of its own (root with
    // CAP_MKNOD, a tmpfs without nodev) would open the host's disk. Only the bind of a
    // device node itself keeps it usable.
    let device = match &m.kind {
        FsKind::Bind { source, .. } => {
            use std::os::unix::fs::FileTypeExt;
            std::fs::metadata(source)
                .is_ok_and(|md| md.file_type().is_block_device() || md.file_type().is_char_device())
        }
        _ => false,
    };
    f.nodev |= !device;
    let mut recursive = false;
    match &m.kind {
        FsKind::Bind {
            source,
            recursive: rec,
        } => {
            recursive = *rec;
            let mut flags = MsFlags::MS_BIND;
            if recursive {
                flags |= MsFlags::MS_REC;
            }
            let what = format!("bind {} onto", source.display());
            mount(
                Some(source.as_path()),
                &fd_path(&target),
                None::<&str>,
                flags,
                None::<&str>,
            )
            .map_err(err(what, dest))?;
        }
        FsKind::Tmpfs { data, copy_up } => {
            // Opened before the mount hides it: lookups relative to it still see beneath.
            let under = match copy_up {
                true => Some(open_dir_in_root(root, dest).map_err(err("open", dest))?),
                false => None,
            };
            let data = (!data.is_empty()).then_some(data.as_str());
            mount(
                Some("tmpfs"),
                &fd_path(&target),
                Some("tmpfs"),
                MsFlags::empty(),
                data,
            )
            .map_err(err("mount a tmpfs on", dest))?;
            if let Some(under) = under {
                let over = open_dir_in_root(root, dest).map_err(err("open", dest))?;
                copy_tree(&under, &over).map_err(err("copy what lies beneath into", dest))?;
            }
        }
        FsKind::Mqueue => {
            mount(
                Some("mqueue"),
                &fd_path(&target),
                Some("mqueue"),
                MsFlags::empty(),
                None::<&str>,
            )
            .map_err(err("mount an mqueue on", dest))?;
        }
    }
    let mut attrs = 0;
    for (on, attr) in [
        (f.read_only, MOUNT_ATTR_RDONLY),
        (f.nosuid, MOUNT_ATTR_NOSUID),
        (f.nodev, MOUNT_ATTR_NODEV),
        (f.noexec, MOUNT_ATTR_NOEXEC),
    ] {
        if on {
            attrs |= attr;
        }
    }
    if attrs != 0 {
        // A fd opened before the mount names what lies under it; look the path up again.
        let mounted = open_in_root(root, dest, OFlag::empty()).map_err(err("find", dest))?;
        set_mount_attrs(&mounted, attrs, recursive).map_err(err("set the flags of", dest))?;
    }
    Ok(())
}

/// Opens the directory `dest` beneath `root` for reading.
fn open_dir_in_root(root: &OwnedFd, dest: &Path) -> Result<OwnedFd, Errno> {
    let rel = dest.strip_prefix("/").unwrap_or(dest);
    openat2(
        root,
        rel,
        OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )
}

/// Copies the tree of directory `from` into directory `to` (runc's `tmpcopyup`):
/// directories, regular files, symlinks, with their modes and owners; other kinds are
/// skipped.
fn copy_tree(from: &OwnedFd, to: &OwnedFd) -> Result<(), Errno> {
    use nix::sys::stat::{FchmodatFlags, SFlag, fchmodat, fstatat};
    use nix::unistd::{Gid, Uid, fchownat};
    let mut dir = nix::dir::Dir::from_fd(from.try_clone().map_err(|_| Errno::EMFILE)?)?;
    let names: Vec<std::ffi::CString> = dir
        .iter()
        .flatten()
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    let nofollow = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    for name in names {
        let name = name.as_c_str();
        let st = fstatat(from, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        match kind {
            SFlag::S_IFDIR => {
                nix::sys::stat::mkdirat(to, name, mode)?;
                let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | nofollow;
                let sub_from = nix::fcntl::openat(from, name, flags, Mode::empty())?;
                let sub_to = nix::fcntl::openat(to, name, flags, Mode::empty())?;
                copy_tree(&sub_from, &sub_to)?;
            }
            SFlag::S_IFREG => {
                let src =
                    nix::fcntl::openat(from, name, OFlag::O_RDONLY | nofollow, Mode::empty())?;
                let create = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | nofollow;
                let dst = nix::fcntl::openat(to, name, create, mode)?;
                let (mut src, mut dst) = (std::fs::File::from(src), std::fs::File::from(dst));
                std::io::copy(&mut src, &mut dst)
                    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
            }
            SFlag::S_IFLNK => {
                let target = nix::fcntl::readlinkat(from, name)?;
                nix::unistd::symlinkat(target.as_os_str(), to, name)?;
            }
            _ => continue,
        }
        let (uid, gid) = (Uid::from_raw(st.st_uid), Gid::from_raw(st.st_gid));
        let _ = fchownat(
            to,
            name,
            Some(uid),
            Some(gid),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        if kind != SFlag::S_IFLNK {
            // After the chown, which clears set-user-ID bits.
            let _ = fchmodat(to, name, mode, FchmodatFlags::FollowSymlink);
        }
    }
    Ok(())
}

/// The file under `/proc/sys` of a dotted sysctl key (already checked by the config).
pub(crate) fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// Hides `dest` as runc's `maskedPaths` does.
fn mask(root: &OwnedFd, dest: &Path) -> Result<(), SetupError> {
    let target = match open_in_root(root, dest, OFlag::empty()) {
        Ok(t) => t,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(err("find", dest)(e)),
    };
    let is_dir = nix::sys::stat::fstat(&target)
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .map_err(err("stat", dest))?;
    if is_dir {
        mount(
            Some("tmpfs"),
            &fd_path(&target),
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=0,mode=555"),
        )
        .map_err(err("mask", dest))
    } else {
        let null = Path::new("/dev/null");
        mount(
            Some(null),
            &fd_path(&target),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(err("mask", dest))
    }
}

fn split(dest: &Path) -> Result<(&Path, &OsStr), SetupError> {
    match (dest.parent(), dest.file_name()) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err(err("create", dest)(Errno::EINVAL)),
    }
}

/// Binds host `source` onto the already opened `target`, recursively.
fn bind(source: &Path, target: &OwnedFd) -> Result<(), Errno> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(
        Some(source),
        &fd_path(target),
        None::<&str>,
        flags,
        None::<&str>,
    )
}

/// Makes the mount at `dest` and every mount below it read-only: a read-only bind of /sys
/// must not leave its cgroup submounts writable.
fn make_read_only(root: &OwnedFd, dest: &Path) -> Result<(), SetupError> {
    // A fd opened before the mount names what lies under it; look the path up again.
    let mounted = open_in_root(root, dest, OFlag::empty()).map_err(err("find", dest))?;
    crate::sys::mount::set_mount_attrs(&mounted, crate::sys::mount::MOUNT_ATTR_RDONLY, true)
        .map_err(err("make read-only", dest))
}

/// Sets the new root's own mount flags once everything is mounted on it: never device
/// nodes (a `--no-userns` session keeps CAP_MKNOD, and a block device made in the overlay
/// must not open the host's disk), and read-only with `read_only` (`--read-only`). The
/// mounts on it (`/tmp`, `/dev`, binds) keep their own flags.
///
/// # Errors
/// The failing step.
pub(crate) fn seal_root(root: &Path, read_only: bool) -> Result<(), SetupError> {
    use crate::sys::mount::{MOUNT_ATTR_NODEV, MOUNT_ATTR_RDONLY, set_mount_attrs};
    let fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(err("open the new root", root))?;
    let mut attrs = MOUNT_ATTR_NODEV;
    if read_only {
        attrs |= MOUNT_ATTR_RDONLY;
    }
    set_mount_attrs(&fd, attrs, false).map_err(err("set nodev (and read-only) on", root))
}

/// Makes `root` the root of this mount namespace and drops the old one from view.
///
/// `pivot_root(".", ".")` stacks the old root under the new one, so it needs no directory
/// for the old root (the trick runc and LXC use); the lazy unmount then removes it.
///
/// Where pivot_root(2) is refused (a container whose root is not a mount point it may
/// move, or an initramfs root), the new root is moved over `/` and entered with chroot(2),
/// as runc's `--no-pivot` does; the returned note says so.
///
/// # Errors
/// The failing step.
pub(crate) fn enter_root(root: &Path) -> Result<Option<String>, SetupError> {
    nix::unistd::chdir(root).map_err(err("enter the new root", root))?;
    let note = match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            umount2(".", MntFlags::MNT_DETACH).map_err(err("detach the old root from", root))?;
            None
        }
        Err(Errno::EINVAL | Errno::EPERM) => {
            mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
                .map_err(err("move the new root over / from", root))?;
            nix::unistd::chroot(".").map_err(err("chroot into", root))?;
            Some("pivot_root was refused; the root was moved over / and entered with chroot".into())
        }
        Err(e) => return Err(err("pivot_root into", root)(e)),
    };
    nix::unistd::chdir("/").map_err(err("enter", Path::new("/")))?;
    Ok(note)
}
