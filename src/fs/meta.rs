//! Metadata requests: attributes, access checks, symlink targets, filesystem statistics.

use std::os::fd::AsFd;
use std::time::UNIX_EPOCH;

use fuser::{FileHandle, INodeNo, ReplyAttr, ReplyData, ReplyEmpty, ReplyStatfs, TimeOrNow};
use nix::errno::Errno;
use nix::sys::time::TimeSpec;

use super::handles::Handle;
use super::{OverlayFs, TTL, reply_empty, to_fuse};
use crate::layers::{Attr, Ino, SetAttr, SetTime};

/// A time to set, as the overlay takes it.
pub(super) fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => {
            let d = st.duration_since(UNIX_EPOCH).unwrap_or_default();
            SetTime::At(TimeSpec::new(
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                i64::from(d.subsec_nanos()),
            ))
        }
    })
}

impl OverlayFs {
    /// GETATTR; a node whose names are all gone answers from an open handle.
    pub(super) fn get_attr(&self, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let res = self
            .loc(ino)
            .and_then(|loc| self.ovl.stat(&loc))
            .or_else(|e| {
                let handle = self.unlinked_file(ino, fh).ok_or(e)?;
                let Handle::File(file) = &*handle else {
                    return Err(e);
                };
                let st = nix::sys::stat::fstat(file.fd().as_fd())?;
                Ok(Attr {
                    ino: Ino(ino.0),
                    st,
                })
            });
        match res {
            Ok(a) => reply.attr(&TTL, &self.attr_of(ino, &a)),
            Err(e) => reply.error(to_fuse(e)),
        }
    }

    /// SETATTR, through open file `fh` when the kernel names one.
    pub(super) fn set_attr(
        &self,
        ino: INodeNo,
        changes: &SetAttr,
        fh: Option<FileHandle>,
        reply: ReplyAttr,
    ) {
        let truncates = changes.size.is_some();
        let handle = fh.and_then(|fh| self.handles.get(fh.0));
        let fd = match handle.as_deref() {
            Some(Handle::File(file)) => Some(file.fd()),
            _ => None,
        };
        if truncates && let Err(e) = self.passthrough.check_data_change(ino.0) {
            return reply.error(to_fuse(e));
        }

        let res = match self.loc(ino) {
            Ok(loc) => self
                .ovl
                .setattr(&loc, changes, fd.as_ref().map(|fd| fd.as_fd())),
            // With the writeback cache the kernel sets the times of its cached writes to a
            // file unlinked while open; failing that makes the writer's close(2) fail (EIO).
            Err(e) => match self.unlinked_file(ino, fh).as_deref() {
                Some(Handle::File(file)) if file.is_upper() => self
                    .ovl
                    .setattr_unlinked(file.fd().as_fd(), changes)
                    .map(|st| Attr {
                        ino: Ino(ino.0),
                        st,
                    }),
                _ => Err(e),
            },
        };
        if truncates && res.is_ok() {
            self.prefill.wait_for_fills(ino.0);
        }
        match res {
            Ok(a) => reply.attr(&TTL, &self.attr_of(ino, &a)),
            Err(e) => reply.error(to_fuse(e)),
        }
    }

    /// READLINK.
    pub(super) fn read_link(&self, ino: INodeNo, reply: ReplyData) {
        use std::os::unix::ffi::OsStrExt;
        match self.loc(ino).and_then(|loc| self.ovl.readlink(&loc)) {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(to_fuse(e)),
        }
    }

    /// ACCESS by the mode bits of node `ino`.
    pub(super) fn check_access(
        &self,
        ino: INodeNo,
        uid: u32,
        gid: u32,
        mask: i32,
        reply: ReplyEmpty,
    ) {
        let res = self
            .loc(ino)
            .and_then(|loc| self.ovl.stat(&loc))
            .and_then(|a| {
                if may_access(&a.st, uid, gid, mask) {
                    Ok(())
                } else {
                    Err(Errno::EACCES)
                }
            });
        reply_empty(reply, res);
    }

    /// STATFS of the upper layer's filesystem.
    pub(super) fn stat_fs(&self, reply: ReplyStatfs) {
        match self.ovl.statfs() {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                u32::try_from(s.block_size()).unwrap_or(4096),
                u32::try_from(s.name_max()).unwrap_or(255),
                u32::try_from(s.fragment_size()).unwrap_or(4096),
            ),
            Err(e) => reply.error(to_fuse(e)),
        }
    }
}

/// access(2) by the mode bits (the kernel checks everything else with
/// `default_permissions`; this answers the explicit call).
fn may_access(st: &nix::sys::stat::FileStat, uid: u32, gid: u32, mask: i32) -> bool {
    if mask == libc::F_OK {
        return true;
    }
    let mode = st.st_mode;
    if uid == 0 {
        // Root may execute only what someone may execute.
        return mask & libc::X_OK == 0 || mode & 0o111 != 0 || mode & libc::S_IFMT == libc::S_IFDIR;
    }
    let bits = if st.st_uid == uid {
        (mode >> 6) & 7
    } else if st.st_gid == gid {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    let want = u32::try_from(mask & 7).unwrap_or(7);
    bits & want == want
}
