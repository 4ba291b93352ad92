//! Session names (`--name`): `<state>/names/<name>` is a symlink whose target is the session's
//! id. symlink(2) fails when the name exists, so two sessions never claim one name, even
//! started at the same moment; a link whose session is gone is stale and may be claimed again.
//!
//! Wherever an id is taken, a name is too: a whole id first, then a name, then a unique start
//! of an id (as docker resolves them). A name is never a whole id's 12 hex digits.

use std::io;
use std::path::{Path, PathBuf};

use super::{SessionError, SessionId};

/// The longest name.
pub(crate) const MAX_LEN: usize = 64;

/// Checks `name`: 1 to [`MAX_LEN`] ASCII letters, digits, `_`, `.`, `+` or `-`, a letter or digit
/// first, and not shaped like a whole session id.
///
/// # Errors
/// [`SessionError::BadName`] saying which rule it breaks.
pub(crate) fn check(name: &str) -> Result<(), SessionError> {
    let bad = |why: &'static str| {
        Err(SessionError::BadName {
            name: name.to_owned(),
            why,
        })
    };
    // runc's container id characters, so a container's session can take its id.
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '+');
    match name.chars().next() {
        None => bad("it is empty"),
        _ if name.len() > MAX_LEN => bad("it is longer than 64 characters"),
        Some(first) if !first.is_ascii_alphanumeric() => {
            bad("it must start with a letter or a digit")
        }
        _ if !name.chars().all(allowed) => {
            bad("it may hold only letters, digits, '_', '.', '+' and '-'")
        }
        _ if SessionId::is_id(name, false) => bad("it is shaped like a session id (12 hex digits)"),
        _ => Ok(()),
    }
}

fn names_dir(state_root: &Path) -> PathBuf {
    state_root.join("names")
}

/// Gives session `id` the (checked) `name`, unless a live session has it.
///
/// # Errors
/// [`SessionError::NameTaken`], or [`SessionError::State`] when the link cannot be made.
pub(crate) fn claim(state_root: &Path, name: &str, id: &SessionId) -> Result<(), SessionError> {
    check(name)?;
    let dir = names_dir(state_root);
    let link = dir.join(name);
    let state_err = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| SessionError::State(super::StateError { what, path, source })
    };
    std::fs::create_dir_all(&dir).map_err(state_err("create", &dir))?;
    // Twice at most: once more after removing a stale link.
    for _ in 0..2 {
        match std::os::unix::fs::symlink(&id.0, &link) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match lookup(state_root, name) {
                Some(holder) => {
                    return Err(SessionError::NameTaken {
                        name: name.to_owned(),
                        id: holder,
                    });
                }
                None => {
                    let _ = std::fs::remove_file(&link);
                }
            },
            Err(e) => return Err(state_err("create", &link)(e)),
        }
    }
    Err(SessionError::NameTaken {
        name: name.to_owned(),
        id: lookup(state_root, name).unwrap_or_default(),
    })
}

/// The id of the session called `name`, if that session still exists.
pub(crate) fn lookup(state_root: &Path, name: &str) -> Option<String> {
    check(name).ok()?;
    let target = std::fs::read_link(names_dir(state_root).join(name)).ok()?;
    let id = target.to_str()?;
    let live = SessionId::is_id(id, false) && state_root.join("sessions").join(id).is_dir();
    live.then(|| id.to_owned())
}

/// Frees the name of session `id` (and any stale link to it): called when its directory goes.
pub(crate) fn release(state_root: &Path, id: &str) {
    let Ok(entries) = std::fs::read_dir(names_dir(state_root)) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        if std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == id) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_read_as_ids_or_paths_are_refused() {
        for good in ["build", "ci-job.42", "x", "Z_9", "b1", "cafe", "deadbeefg"] {
            assert!(check(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_LEN + 1);
        for bad in [
            "",
            "0123456789ab",
            "-x",
            ".x",
            "a/b",
            "..",
            "a b",
            "é",
            &long,
        ] {
            assert!(
                matches!(check(bad), Err(SessionError::BadName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_name_is_claimed_once_and_freed_with_its_session() {
        let state = std::env::temp_dir().join(format!("ovlrun-name-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let (a, b) = (SessionId::new(), SessionId::new());
        for id in [&a, &b] {
            std::fs::create_dir_all(state.join("sessions").join(&id.0)).unwrap();
        }
        claim(&state, "job", &a).unwrap();
        assert_eq!(lookup(&state, "job").as_deref(), Some(a.0.as_str()));
        match claim(&state, "job", &b) {
            Err(SessionError::NameTaken { id, .. }) => assert_eq!(id, a.0),
            other => panic!("{other:?}"),
        }
        // The holder's directory gone: the link is stale and the name free again.
        std::fs::remove_dir_all(state.join("sessions").join(&a.0)).unwrap();
        assert_eq!(lookup(&state, "job"), None);
        claim(&state, "job", &b).unwrap();
        release(&state, &b.0);
        assert!(!state.join("names/job").exists());
        std::fs::remove_dir_all(&state).unwrap();
    }
}
