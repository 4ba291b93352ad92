//! The node table: which merged object each FUSE node id stands for.
//!
//! A node id *is* the object's stable inode number: fuser 0.18 sends `attr.ino` as the node
//! id of an entry reply, so the two cannot differ (the root, FUSE's id 1, is the exception).
//! That also makes hard links one kernel inode, as they should be. A node remembers its
//! names (parent node, name), so its merged path is rebuilt from the parent chain, and the
//! lowers behind it. The kernel holds a node until it forgets every lookup; so does the table.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::RwLock;

use nix::errno::Errno;

use crate::layers::{Found, Loc, Lowers};

/// The FUSE node id of the root.
pub const ROOT: u64 = 1;

/// Deepest parent chain followed before giving up (a loop would otherwise hang a request).
const MAX_DEPTH: usize = 4096;

/// One name of a node, and the lowers behind the object under that name (hard links in
/// different directories have different lowers).
#[derive(Debug)]
struct Alias {
    parent: u64,
    name: OsString,
    lowers: Lowers,
}

impl Alias {
    fn is(&self, parent: u64, name: &OsStr) -> bool {
        self.parent == parent && self.name == name
    }
}

#[derive(Debug)]
struct Node {
    /// The names this object is known by; the first one is used to reach it.
    names: Vec<Alias>,
    /// Lookups the kernel has not forgotten yet.
    lookups: u64,
}

/// All nodes the kernel currently knows.
#[derive(Debug)]
pub struct NodeTable {
    nodes: RwLock<HashMap<u64, Node>>,
}

impl Default for NodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeTable {
    /// A table holding only the root.
    pub fn new() -> NodeTable {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                names: Vec::new(),
                lookups: 1,
            },
        );
        NodeTable {
            nodes: RwLock::new(nodes),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Node>> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Node>> {
        self.nodes.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Where node `id` lives now (not for the root, whose `Loc` the overlay gives).
    ///
    /// # Errors
    /// `ESTALE` for an unknown node, `ENOENT` for one whose every name was removed.
    pub fn loc(&self, id: u64) -> Result<Loc, Errno> {
        let nodes = self.read();
        let node = nodes.get(&id).ok_or(Errno::ESTALE)?;
        let lowers = node.names.first().ok_or(Errno::ENOENT)?.lowers.clone();
        let mut names: Vec<&OsStr> = Vec::new();
        let mut cur = id;
        while cur != ROOT {
            let n = nodes.get(&cur).ok_or(Errno::ESTALE)?;
            let alias = n.names.first().ok_or(Errno::ENOENT)?;
            names.push(&alias.name);
            cur = alias.parent;
            if names.len() > MAX_DEPTH {
                return Err(Errno::ELOOP);
            }
        }
        let path: PathBuf = names.iter().rev().collect();
        Ok(Loc { path, lowers })
    }

    /// Records one kernel lookup of `found`, reached as `name` in `parent`; returns its id.
    pub fn remember(&self, parent: u64, name: &OsStr, found: &Found) -> u64 {
        let id = found.attr.ino.0;
        let mut nodes = self.write();
        let node = nodes.entry(id).or_insert_with(|| Node {
            names: Vec::new(),
            lookups: 0,
        });
        node.lookups += 1;
        match node.names.iter_mut().find(|a| a.is(parent, name)) {
            Some(alias) => alias.lowers = found.loc.lowers.clone(),
            None => node.names.insert(
                0,
                Alias {
                    parent,
                    name: name.to_owned(),
                    lowers: found.loc.lowers.clone(),
                },
            ),
        }
        id
    }

    /// The kernel forgot `n` lookups of `id`.
    pub fn forget(&self, id: u64, n: u64) {
        if id == ROOT {
            return;
        }
        let mut nodes = self.write();
        if let Some(node) = nodes.get_mut(&id) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 {
                nodes.remove(&id);
            }
        }
    }

    /// Name `name` of `parent` no longer exists (unlink, rmdir, replaced by a rename).
    pub fn name_removed(&self, parent: u64, name: &OsStr) {
        let mut nodes = self.write();
        for node in nodes.values_mut() {
            node.names.retain(|a| !a.is(parent, name));
        }
    }

    /// The object known as `from` is now known as `to`, and (with `RENAME_EXCHANGE`) the one
    /// known as `to` is now `from`; a replaced `to` loses that name. What moved lives in the
    /// upper only now, and so does everything below it: their lowers are dropped.
    pub fn renamed(&self, from: (u64, &OsStr), to: (u64, &OsStr), exchange: bool) {
        let mut nodes = self.write();
        let mut moved = Vec::new();
        for (id, node) in nodes.iter_mut() {
            let mut hit = false;
            node.names.retain_mut(|a| {
                if a.is(from.0, from.1) {
                    (a.parent, a.name) = (to.0, to.1.to_owned());
                } else if a.is(to.0, to.1) && exchange {
                    (a.parent, a.name) = (from.0, from.1.to_owned());
                } else {
                    // A replaced target loses this name; every other name stays as it is.
                    return !a.is(to.0, to.1);
                }
                a.lowers = Lowers::from(Vec::new());
                hit = true;
                true
            });
            if hit {
                moved.push(*id);
            }
        }
        let inside: Vec<u64> = nodes
            .keys()
            .copied()
            .filter(|id| !moved.contains(id) && moved.iter().any(|m| is_within(&nodes, *id, *m)))
            .collect();
        for id in inside {
            if let Some(node) = nodes.get_mut(&id) {
                for alias in &mut node.names {
                    alias.lowers = Lowers::from(Vec::new());
                }
            }
        }
    }

    /// Number of nodes held (for tests and statistics).
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// True when only the root is held.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }
}

/// True when `id` is `ancestor` or lies below it.
fn is_within(nodes: &HashMap<u64, Node>, id: u64, ancestor: u64) -> bool {
    let mut cur = id;
    for _ in 0..MAX_DEPTH {
        if cur == ancestor {
            return true;
        }
        match nodes.get(&cur).and_then(|n| n.names.first()) {
            Some(alias) if cur != ROOT => cur = alias.parent,
            _ => return false,
        }
    }
    false
}
