//! Stable inode numbers, xino style.
//!
//! An object's number is the real inode number of its *origin* (the copy it had in the layer
//! where it was first seen), with the index of that layer's filesystem in the top bits, so
//! layers on different filesystems never collide. A copy-up records the origin's number in the
//! upper copy ([`super::format::INO_XATTR`]), so the number survives copy-up and remounts.

/// The inode number the merged view reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Ino(pub u64);

/// Bits left for the real inode number; the filesystem index goes above them.
const REAL_BITS: u32 = 56;

/// FUSE reserves node id 1 for the root; a real number that composes to it is moved here.
const ROOT_ALIAS: u64 = 1 << 63 | 1;

impl Ino {
    /// Composes the number of real inode `real` on the layer filesystem `fs_index`.
    pub(crate) fn compose(fs_index: u8, real: u64) -> Ino {
        let n = (real & ((1 << REAL_BITS) - 1)) | (u64::from(fs_index) << REAL_BITS);
        Ino(if n == 1 { ROOT_ALIAS } else { n })
    }

    /// Parses the decimal form stored in an xattr.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Ino> {
        std::str::from_utf8(bytes)
            .ok()?
            .trim()
            .parse()
            .ok()
            .map(Ino)
    }

    /// The decimal form stored in an xattr.
    pub(crate) fn to_xattr(self) -> Vec<u8> {
        self.0.to_string().into_bytes()
    }
}
