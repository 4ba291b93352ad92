//! `list`: every container of the root.

use super::{Container, Root, State};

/// The state of each container in `root`, by id (unreadable ones are skipped, as runc does).
pub fn list(root: &Root) -> Vec<State> {
    root.ids()
        .iter()
        .filter_map(|id| Container::load(root, id).ok())
        .map(|(c, dir)| State::of(&c, &dir))
        .collect()
}
