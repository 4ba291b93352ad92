//! Whether a session's upper is on disk yet.
//!
//! A session that does not fsync each copy-up (the default; `--durable` does) records the
//! boot it runs in before its command starts, syncs its upper's filesystem once when it ends
//! with the upper kept, then clears the mark. A mark from another boot means the machine went
//! down before that sync: a copied-up file may be empty or short, and committing or
//! exporting the upper would spread that over files the session never changed, so it is
//! refused (the kernel overlayfs refuses a `volatile` upper after a crash alike). A mark from
//! this boot means only the process died: the page cache holds everything, and one sync
//! settles it. The kernel backend mounts such a session `volatile` (no fsync per copy-up).

use super::record::Record;
use super::{SessionDirs, SessionError};

/// The mark a session starts with: this boot, unless each copy-up is synced (`durable`).
pub(crate) fn mark(durable: bool) -> Option<String> {
    if durable {
        None
    } else {
        crate::host::kernel::boot_id()
    }
}

/// Syncs the filesystem of `rec`'s upper if the record says it is not synced, and clears the
/// mark (the caller saves the record).
///
/// # Errors
/// [`SessionError::Sync`].
pub(crate) fn sync_upper(rec: &mut Record) -> Result<(), SessionError> {
    if rec.unsynced_boot.is_none() {
        return Ok(());
    }
    let err = |source: std::io::Error| SessionError::Sync {
        upper: rec.upper.clone(),
        source,
    };
    let dir = std::fs::File::open(&rec.upper).map_err(err)?;
    // One syncfs for the whole upper instead of an fsync per copy-up during the session.
    nix::unistd::syncfs(&dir).map_err(|e| err(e.into()))?;
    // The kernel backend mounted it `volatile` and refuses to mount it again while this
    // mark is there; the upper is whole now, which is when its docs allow removing it.
    let mark = rec.work.join(KERNEL_VOLATILE_MARK);
    // (It holds a file `dirty`; the directory is in the session's own work directory.)
    match std::fs::remove_dir_all(&mark) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(SessionError::Sync {
                upper: mark,
                source: e,
            });
        }
        _ => {}
    }
    rec.unsynced_boot = None;
    Ok(())
}

/// Where the kernel overlayfs marks a work directory it mounted `volatile`, below the
/// session's work directory (`session::rootfs` gives the kernel `kernel/` of it).
const KERNEL_VOLATILE_MARK: &str = "kernel/work/incompat/volatile";

/// For a session whose command no longer runs: `true` when its upper is on disk (synced now,
/// and the record saved, if only the process died), `false` when the machine went down
/// before it was synced.
///
/// # Errors
/// [`SessionError::Sync`], or the record's save.
pub(crate) fn settle(dirs: &SessionDirs, rec: &mut Record) -> Result<bool, SessionError> {
    match &rec.unsynced_boot {
        None => Ok(true),
        Some(boot) if Some(boot) == crate::host::kernel::boot_id().as_ref() => {
            sync_upper(rec)?;
            rec.save(&dirs.root)?;
            Ok(true)
        }
        Some(_) => Ok(false),
    }
}

/// [`settle`], as an error for a session whose upper cannot be trusted.
///
/// # Errors
/// [`SessionError::Unsynced`], or as [`settle`].
pub(crate) fn require(dirs: &SessionDirs, rec: &mut Record) -> Result<(), SessionError> {
    if settle(dirs, rec)? {
        Ok(())
    } else {
        Err(SessionError::Unsynced {
            id: dirs.id.0.clone(),
            upper: rec.upper.clone(),
        })
    }
}
