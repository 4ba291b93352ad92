//! Extended attribute requests.

use std::ffi::OsStr;

use fuser::{INodeNo, ReplyEmpty, ReplyXattr};
use nix::errno::Errno;

use super::{OverlayFs, reply_empty, to_fuse};

impl OverlayFs {
    /// SETXATTR.
    pub(super) fn set_xattr(
        &self,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.loc(ino)
                .and_then(|loc| self.ovl.setxattr(&loc, name, value, flags)),
        );
    }

    /// GETXATTR.
    pub(super) fn get_xattr(&self, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.loc(ino).and_then(|loc| self.ovl.getxattr(&loc, name)) {
            Ok(v) => reply_sized(reply, size, &v),
            Err(e) => reply.error(to_fuse(e)),
        }
    }

    /// LISTXATTR: the names, each ending in a NUL byte.
    pub(super) fn list_xattr(&self, ino: INodeNo, size: u32, reply: ReplyXattr) {
        use std::os::unix::ffi::OsStrExt;
        match self.loc(ino).and_then(|loc| self.ovl.listxattr(&loc)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(n.as_bytes());
                    buf.push(0);
                }
                reply_sized(reply, size, &buf);
            }
            Err(e) => reply.error(to_fuse(e)),
        }
    }

    /// REMOVEXATTR.
    pub(super) fn remove_xattr(&self, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.loc(ino)
                .and_then(|loc| self.ovl.removexattr(&loc, name)),
        );
    }
}

/// Replies with `value`, or only its size when the caller asked for the size (`size` 0).
fn reply_sized(reply: ReplyXattr, size: u32, value: &[u8]) {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(to_fuse(Errno::ERANGE));
    } else {
        reply.data(value);
    }
}
