//! `state ID`: runc's JSON of a container.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::{Container, Root, RuntimeError, Status};

/// The state of a container as `runc state` prints it (the same keys and meanings).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct State {
    /// The config's `ociVersion`.
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// The id.
    pub id: String,
    /// Its process as the caller sees it; 0 once stopped.
    pub pid: i32,
    /// `created`, `running` or `stopped`.
    pub status: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The container's root.
    pub rootfs: PathBuf,
    /// When it was created (RFC 3339, UTC).
    pub created: String,
    /// The config's annotations (left out when none).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The owner of the state directory: empty, as runc leaves it.
    pub owner: String,
}

impl State {
    /// The state of `c`, whose directory is `dir`.
    pub fn of(c: &Container, dir: &std::path::Path) -> State {
        let status = c.status(dir);
        State {
            oci_version: c.oci_version.clone(),
            id: c.id.clone(),
            pid: if status == Status::Stopped { 0 } else { c.pid },
            status: status.to_string(),
            bundle: c.bundle.clone(),
            rootfs: c.rootfs.clone(),
            created: c.created.clone(),
            annotations: c.annotations.clone(),
            owner: String::new(),
        }
    }
}

/// `state ID`.
///
/// # Errors
/// [`RuntimeError::NotExist`], [`RuntimeError::InvalidId`].
pub fn state(root: &Root, id: &str) -> Result<State, RuntimeError> {
    let (c, dir) = Container::load(root, id)?;
    Ok(State::of(&c, &dir))
}
