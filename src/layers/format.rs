//! The on-disk vocabulary of overlay layers: whiteouts, opaque markers, private xattrs.
//!
//! Lowers are read in every form (char 0:0, `trusted.`/`user.overlay.opaque`, `.wh.<name>`,
//! `.wh..wh..opq`, `.wh.__dir_opaque`). An upper is written and read in the one form it was
//! set up with, which is recorded beside it ([`FORMAT_RECORD`]): in a kernel-format upper a
//! `.wh.*` name is an ordinary file, as the kernel overlayfs makes it, never a marker. The
//! policy code reads uppers through these same helpers.

use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, SFlag, mknodat};

use super::Overlay;
use super::walk::{proc_path, stat_at};
use crate::sys;

/// How the upper records deletions and opaque directories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhiteoutFormat {
    /// The kernel overlayfs `userxattr` form: a char device 0:0 per deleted name, xattr
    /// `user.overlay.opaque="y"` on opaque directories.
    Kernel,
    /// The AUFS/OCI image layer form: `.wh.<name>` files and a `.wh..wh..opq` file.
    Aufs,
}

impl WhiteoutFormat {
    /// The name used in flags and in the format record.
    pub fn name(self) -> &'static str {
        match self {
            WhiteoutFormat::Kernel => "kernel",
            WhiteoutFormat::Aufs => "aufs",
        }
    }

    /// Parses [`WhiteoutFormat::name`].
    pub fn parse(name: &str) -> Option<WhiteoutFormat> {
        [WhiteoutFormat::Kernel, WhiteoutFormat::Aufs]
            .into_iter()
            .find(|f| f.name() == name)
    }

    /// True when `.wh.*` names in an upper of this format are markers, not files.
    pub fn has_aufs_markers(self) -> bool {
        self == WhiteoutFormat::Aufs
    }
}

/// The file in an upper's work directory that records the upper's format (`kernel` or
/// `aufs`). The work directory travels with the upper and is never shown to a session.
pub(crate) const FORMAT_RECORD: &str = "ovlrun-whiteout";

/// The format recorded in work directory `work`; `None` when there is no record (an upper
/// made before formats were recorded, or one not used yet).
///
/// # Errors
/// Any read error but `ENOENT`; `InvalidData` for a record that names no format.
pub(crate) fn recorded(work: &Path) -> std::io::Result<Option<WhiteoutFormat>> {
    let path = work.join(FORMAT_RECORD);
    match std::fs::read_to_string(&path) {
        Ok(s) => WhiteoutFormat::parse(s.trim()).map(Some).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {s:?} names no whiteout format", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Records `format` in work directory `work` (a temp file renamed into place).
///
/// # Errors
/// Any I/O error.
pub(crate) fn record(work: &Path, format: WhiteoutFormat) -> std::io::Result<()> {
    let tmp = work.join(format!("{FORMAT_RECORD}.tmp{}", std::process::id()));
    std::fs::write(&tmp, format!("{}\n", format.name()))?;
    std::fs::rename(&tmp, work.join(FORMAT_RECORD))
}

/// Prefix of AUFS whiteout files.
pub(crate) const AUFS_PREFIX: &[u8] = b".wh.";
/// The AUFS marker file of an opaque directory.
pub(crate) const AUFS_OPAQUE: &str = ".wh..wh..opq";
/// The opaque marker some image tools write instead of [`AUFS_OPAQUE`].
pub(crate) const AUFS_OPAQUE_ALT: &str = ".wh.__dir_opaque";
/// Xattrs that mark a directory opaque, in the order they are checked.
pub(crate) const OPAQUE_XATTRS: [&str; 2] = ["user.overlay.opaque", "trusted.overlay.opaque"];
/// The opaque xattr ovlrun writes (the kernel's `userxattr` flavour).
pub(crate) const OPAQUE_XATTR: &str = "user.overlay.opaque";
/// Where ovlrun keeps the stable inode number of a copied-up entry. The kernel ignores unknown
/// names under its private prefix and never lists them.
pub(crate) const INO_XATTR: &str = "user.overlay.ovlrun.ino";

/// Marks an upper stub holding metadata only; the value names the lower layer with the data
/// (see `metacopy.rs`).
pub(crate) const METACOPY_XATTR: &str = "user.overlay.ovlrun.metacopy";

/// Smaller files are copied whole: a stub would save little and cost a completion later.
/// A stub is therefore never smaller (see [`may_be_stub`]).
pub(crate) const METACOPY_MIN_SIZE: i64 = 1 << 20;

/// The fields of a file's status the format rules read, so each rule is written once for
/// `nix`'s [`FileStat`](struct@nix::sys::stat::FileStat) (layers) and `std`'s [`Metadata`] (policy, export).
pub(crate) trait Status {
    /// The file type bits of the mode (`S_IFMT`).
    fn type_bits(&self) -> u32;
    /// The device number a device file stands for.
    fn device_number(&self) -> u64;
    /// The size in bytes.
    fn size_bytes(&self) -> i64;
    /// The 512-byte blocks allocated.
    fn blocks_512(&self) -> i64;
}

impl Status for FileStat {
    fn type_bits(&self) -> u32 {
        self.st_mode & libc::S_IFMT
    }
    fn device_number(&self) -> u64 {
        self.st_rdev
    }
    fn size_bytes(&self) -> i64 {
        self.st_size
    }
    fn blocks_512(&self) -> i64 {
        self.st_blocks
    }
}

impl Status for Metadata {
    fn type_bits(&self) -> u32 {
        self.mode() & libc::S_IFMT
    }
    fn device_number(&self) -> u64 {
        self.rdev()
    }
    fn size_bytes(&self) -> i64 {
        i64::try_from(self.size()).unwrap_or(i64::MAX)
    }
    fn blocks_512(&self) -> i64 {
        i64::try_from(self.blocks()).unwrap_or(i64::MAX)
    }
}

/// True when `st` is a whiteout char device (0:0).
pub(crate) fn is_whiteout<S: Status + ?Sized>(st: &S) -> bool {
    st.type_bits() == libc::S_IFCHR && st.device_number() == 0
}

/// The name upper entry `name` (status `st`) deletes in an upper of format `fmt`: its own
/// for a char 0:0 whiteout, `<name>` for `.wh.<name>` in an AUFS-format upper; `None` for
/// everything else.
pub(crate) fn whiteout_target<'a, S: Status + ?Sized>(
    name: &'a OsStr,
    st: &S,
    fmt: WhiteoutFormat,
) -> Option<&'a OsStr> {
    if is_whiteout(st) {
        Some(name)
    } else if fmt.has_aufs_markers() {
        aufs_whiteout_target(name)
    } else {
        None
    }
}

/// True when `st` may be a metadata-only stub: a large regular file with fewer blocks than
/// its size needs (an xattr block may count). Only such files are asked for the marker, so
/// ordinary files cost no extra syscall.
pub(crate) fn may_be_stub<S: Status + ?Sized>(st: &S) -> bool {
    st.type_bits() == libc::S_IFREG
        && st.size_bytes() >= METACOPY_MIN_SIZE
        && st.blocks_512().saturating_mul(512) < st.size_bytes()
}

/// The [`METACOPY_XATTR`] value of upper entry `path` (status `st`) when it is a stub, `None`
/// for a complete file. `path` may be a `/proc/self/fd/<dir>/<name>` path.
///
/// # Errors
/// Any error reading the marker but its absence (`ENODATA`, `EOPNOTSUPP`).
pub(crate) fn stub_marker<S: Status + ?Sized>(
    path: &Path,
    st: &S,
) -> Result<Option<Vec<u8>>, Errno> {
    if !may_be_stub(st) {
        return Ok(None);
    }
    match sys::xattr::get(path, OsStr::new(METACOPY_XATTR)) {
        Ok(v) => Ok(Some(v)),
        Err(Errno::ENODATA | Errno::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(e),
    }
}

/// True for names that belong to the AUFS vocabulary and never show in a merged view.
pub(crate) fn is_aufs_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(AUFS_PREFIX)
}

/// For `.wh.<name>`, the name it deletes; `None` for opaque markers and other names.
pub(crate) fn aufs_whiteout_target(name: &OsStr) -> Option<&OsStr> {
    let rest = name.as_bytes().strip_prefix(AUFS_PREFIX)?;
    if name == AUFS_OPAQUE || name == AUFS_OPAQUE_ALT || rest.is_empty() {
        return None;
    }
    Some(OsStr::from_bytes(rest))
}

/// The AUFS whiteout file name for `name`.
pub(crate) fn aufs_whiteout_name(name: &OsStr) -> OsString {
    let mut s = OsString::from(".wh.");
    s.push(name);
    s
}

/// Prefixes of the xattrs overlays keep for themselves.
const PRIVATE_PREFIXES: [&[u8]; 2] = [b"user.overlay.", b"trusted.overlay."];

fn private_prefix(name: &OsStr) -> Option<&'static [u8]> {
    PRIVATE_PREFIXES
        .into_iter()
        .find(|p| name.as_bytes().starts_with(p))
}

/// True for xattrs in the overlays' own namespaces (`user.overlay.*`, `trusted.overlay.*`).
pub(crate) fn is_private_xattr(name: &OsStr) -> bool {
    private_prefix(name).is_some()
}

/// True for a private-namespace xattr that belongs to the user: the escaped form
/// `user.overlay.overlay.X` of a `user.overlay.X` set through an overlay.
pub(crate) fn is_escaped_xattr(name: &OsStr) -> bool {
    private_prefix(name).is_some_and(|p| name.as_bytes()[p.len()..].starts_with(b"overlay."))
}

/// The name stored in a layer for xattr `name` set through the merged view. Like the kernel
/// overlayfs (6.7 and later), a name in an overlay namespace gets one more `overlay.`, so
/// overlays can be stacked and the user's xattrs never pose as overlay markers.
pub(crate) fn escape_xattr(name: &OsStr) -> OsString {
    match private_prefix(name) {
        Some(p) => {
            let mut out = p.to_vec();
            out.extend_from_slice(b"overlay.");
            out.extend_from_slice(&name.as_bytes()[p.len()..]);
            OsString::from_vec(out)
        }
        None => name.to_owned(),
    }
}

/// The merged view's name for layer xattr `real`; `None` for the overlay's own markers.
pub(crate) fn unescape_xattr(real: &OsStr) -> Option<OsString> {
    let Some(p) = private_prefix(real) else {
        return Some(real.to_owned());
    };
    let rest = real.as_bytes()[p.len()..].strip_prefix(b"overlay.")?;
    let mut out = p.to_vec();
    out.extend_from_slice(rest);
    Some(OsString::from_vec(out))
}

fn xattr_says_yes(path: &Path, name: &str) -> Result<bool, Errno> {
    match sys::xattr::get(path, OsStr::new(name)) {
        Ok(v) => Ok(v == b"y"),
        Err(Errno::ENODATA | Errno::EOPNOTSUPP | Errno::EPERM | Errno::EACCES) => Ok(false),
        Err(e) => Err(e),
    }
}

/// True when directory `name` of `dir` is opaque: by xattr, or with `aufs` also by marker
/// file.
pub(crate) fn dir_is_opaque(dir: BorrowedFd<'_>, name: &OsStr, aufs: bool) -> Result<bool, Errno> {
    let path = proc_path(dir, name);
    for x in OPAQUE_XATTRS {
        if xattr_says_yes(&path, x)? {
            return Ok(true);
        }
    }
    if !aufs {
        return Ok(false);
    }
    for marker in [AUFS_OPAQUE, AUFS_OPAQUE_ALT] {
        let inner = Path::new(name).join(marker);
        let inner = if name.is_empty() {
            Path::new(marker).to_path_buf()
        } else {
            inner
        };
        if stat_at(dir, inner.as_os_str())?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// True when upper directory `dir` itself is opaque in the upper's format `fmt`.
///
/// # Errors
/// As [`dir_is_opaque`]: any error but the marker's absence.
pub(crate) fn upper_dir_is_opaque(dir: BorrowedFd<'_>, fmt: WhiteoutFormat) -> Result<bool, Errno> {
    dir_is_opaque(dir, OsStr::new(""), fmt.has_aufs_markers())
}

/// True when `dir` holds an AUFS whiteout for `name`.
pub(crate) fn has_aufs_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool, Errno> {
    match stat_at(dir, &aufs_whiteout_name(name)) {
        Ok(st) => Ok(st.is_some()),
        // A name too long to carry the prefix cannot have an AUFS whiteout.
        Err(Errno::ENAMETOOLONG) => Ok(false),
        Err(e) => Err(e),
    }
}

impl Overlay {
    /// True when `.wh.*` names in `layer` are markers: always in a lower, in the upper only
    /// when it is in the AUFS format.
    pub(crate) fn reads_aufs(&self, layer: super::LayerIdx) -> bool {
        layer != super::LayerIdx::UPPER || self.format.has_aufs_markers()
    }

    /// Writes a whiteout for `name` into upper directory `dir`; `name` must be free.
    pub(crate) fn write_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
        match self.format {
            WhiteoutFormat::Kernel => mknodat(dir, name, SFlag::S_IFCHR, Mode::empty(), 0),
            WhiteoutFormat::Aufs => create_marker(dir, &aufs_whiteout_name(name)),
        }
    }

    /// Marks directory `name` of upper directory `dir` opaque.
    pub(crate) fn write_opaque(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
        match self.format {
            WhiteoutFormat::Kernel => {
                sys::xattr::set(&proc_path(dir, name), OsStr::new(OPAQUE_XATTR), b"y", 0)
            }
            WhiteoutFormat::Aufs => {
                let inner = nix::fcntl::openat(
                    dir,
                    name,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                create_marker(inner.as_fd(), OsStr::new(AUFS_OPAQUE))
            }
        }
    }
}

/// Creates an empty marker file (mode 0) unless it is there already.
fn create_marker(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match nix::fcntl::openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(_) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}
