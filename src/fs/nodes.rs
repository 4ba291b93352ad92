//! The node table: which merged object each FUSE node id stands for.
//!
//! A node id *is* the object's stable inode number: fuser 0.18 sends `attr.ino` as the node
//! id of an entry reply, so the two cannot differ (the root, FUSE's id 1, is the exception).
//! That also makes hard links one kernel inode, as they should be. A node remembers its
//! names (parent node, name), so its merged path is rebuilt from the parent chain, and the
//! lowers behind it. The kernel holds a node until it forgets every lookup; so does the table.
//!
//! An index from (parent, name) to node mirrors every node's names, so unlink, rmdir and
//! rename touch only the nodes they name, never the whole table.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::RwLock;

use nix::errno::Errno;
use rustc_hash::FxHashMap as HashMap;

use crate::layers::{Found, Loc, Lowers, RenameOutcome};

/// The FUSE node id of the root.
pub(crate) const ROOT: u64 = 1;

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
    /// Whether the kernel's inode for this node was opened yet.
    opened: bool,
}

/// The nodes, and the index of their names.
#[derive(Debug, Default)]
struct Tables {
    nodes: HashMap<u64, Node>,
    /// parent → name → the node known by that name; holds exactly the nodes' aliases.
    names: HashMap<u64, HashMap<OsString, u64>>,
}

impl Tables {
    fn named(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.names.get(&parent)?.get(name).copied()
    }

    fn index(&mut self, parent: u64, name: &OsStr, id: u64) {
        self.names
            .entry(parent)
            .or_default()
            .insert(name.to_owned(), id);
    }

    /// Drops `name` of `parent` from the index only, returning who had it.
    fn unindex(&mut self, parent: u64, name: &OsStr) -> Option<u64> {
        let children = self.names.get_mut(&parent)?;
        let id = children.remove(name);
        if children.is_empty() {
            self.names.remove(&parent);
        }
        id
    }

    /// Whoever is known as `name` in `parent` no longer is.
    fn remove_name(&mut self, parent: u64, name: &OsStr) {
        if let Some(id) = self.unindex(parent, name) {
            if let Some(node) = self.nodes.get_mut(&id) {
                node.names.retain(|a| !a.is(parent, name));
            }
        }
    }

    /// Node `id`'s name `from` becomes `to`, in place (so a first name stays first), with the
    /// lowers the rename left it.
    fn move_name(&mut self, id: u64, from: (u64, &OsStr), to: (u64, &OsStr), lowers: &Lowers) {
        if let Some(alias) = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.names.iter_mut().find(|a| a.is(from.0, from.1)))
        {
            (alias.parent, alias.name) = (to.0, to.1.to_owned());
            alias.lowers = lowers.clone();
            self.index(to.0, to.1, id);
        }
    }

    /// Every name below the directories `tops` gets `lowers`.
    fn set_lowers_below(&mut self, tops: &[u64], lowers: &Lowers) {
        let mut seen: HashSet<u64> = tops.iter().copied().collect();
        let mut todo = tops.to_vec();
        while let Some(dir) = todo.pop() {
            let Some(children) = self.names.get(&dir) else {
                continue;
            };
            for (name, &child) in children {
                if let Some(node) = self.nodes.get_mut(&child) {
                    for alias in node.names.iter_mut().filter(|a| a.is(dir, name)) {
                        alias.lowers = lowers.clone();
                    }
                }
                if seen.insert(child) {
                    todo.push(child);
                }
            }
        }
    }
}

/// All nodes the kernel currently knows.
#[derive(Debug)]
pub(crate) struct NodeTable {
    tables: RwLock<Tables>,
}

impl Default for NodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeTable {
    /// A table holding only the root.
    pub(crate) fn new() -> NodeTable {
        let mut tables = Tables::default();
        tables.nodes.insert(
            ROOT,
            Node {
                names: Vec::new(),
                lookups: 1,
                opened: false,
            },
        );
        NodeTable {
            tables: RwLock::new(tables),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Where node `id` lives now (not for the root, whose `Loc` the overlay gives).
    ///
    /// # Errors
    /// `ESTALE` for an unknown node, `ENOENT` for one whose every name was removed.
    pub(crate) fn loc(&self, id: u64) -> Result<Loc, Errno> {
        let tables = self.read();
        let nodes = &tables.nodes;
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
    pub(crate) fn remember(&self, parent: u64, name: &OsStr, found: &Found) -> u64 {
        let id = found.attr.ino.0;
        let mut tables = self.write();
        let lowers = found.loc.lowers.clone();
        if tables.named(parent, name) != Some(id) {
            // The name now stands for this object; whoever had it before lost it.
            tables.remove_name(parent, name);
            tables.index(parent, name, id);
        }
        let node = tables.nodes.entry(id).or_insert_with(|| Node {
            names: Vec::new(),
            lookups: 0,
            opened: false,
        });
        node.lookups += 1;
        match node.names.iter_mut().find(|a| a.is(parent, name)) {
            Some(alias) => alias.lowers = lowers,
            None => node.names.insert(
                0,
                Alias {
                    parent,
                    name: name.to_owned(),
                    lowers,
                },
            ),
        }
        id
    }

    /// The kernel forgot `n` lookups of `id`.
    pub(crate) fn forget(&self, id: u64, n: u64) {
        if id == ROOT {
            return;
        }
        let mut tables = self.write();
        let Some(node) = tables.nodes.get_mut(&id) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 {
            return;
        }
        if let Some(node) = tables.nodes.remove(&id) {
            for alias in node.names {
                if tables.named(alias.parent, &alias.name) == Some(id) {
                    tables.unindex(alias.parent, &alias.name);
                }
            }
        }
    }

    /// Name `name` of `parent` no longer exists (unlink, rmdir, replaced by a rename).
    pub(crate) fn name_removed(&self, parent: u64, name: &OsStr) {
        self.write().remove_name(parent, name);
    }

    /// Applies what [`Overlay::rename`](crate::layers::Overlay::rename) of `from` to `to`
    /// changed: the names that moved, and the lowers layers left them and everything below.
    pub(crate) fn renamed(&self, from: (u64, &OsStr), to: (u64, &OsStr), outcome: &RenameOutcome) {
        let (source, target) = match outcome {
            RenameOutcome::Unchanged => return,
            RenameOutcome::Moved(source) => (source, None),
            RenameOutcome::Exchanged { source, target } => (source, Some(target)),
        };
        let mut tables = self.write();
        let moving = tables.named(from.0, from.1);
        let swapped = tables.named(to.0, to.1);
        tables.unindex(from.0, from.1);
        if target.is_some() {
            tables.unindex(to.0, to.1);
        } else {
            // A replaced target lost its name.
            tables.remove_name(to.0, to.1);
        }
        let mut moved = Vec::new();
        if let Some(id) = moving {
            tables.move_name(id, from, to, &source.lowers);
            moved.push(id);
        }
        if let (Some(id), Some(target)) = (swapped, target) {
            tables.move_name(id, to, from, &target.lowers);
            moved.push(id);
        }
        tables.set_lowers_below(&moved, &outcome.lowers_below());
    }

    /// True the first time it is asked for `id` since the kernel looked it up (the first
    /// open that may fill its inode's cache); false for every later call.
    pub(crate) fn first_open(&self, id: u64) -> bool {
        self.write()
            .nodes
            .get_mut(&id)
            .is_some_and(|n| !std::mem::replace(&mut n.opened, true))
    }

    #[cfg(test)]
    /// Number of nodes held (for tests and statistics).
    pub(crate) fn len(&self) -> usize {
        self.read().nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{Attr, Ino, LayerIdx};

    fn found(ino: u64, lowers: &[u16]) -> Found {
        let st = nix::sys::stat::stat("/").expect("stat /");
        Found {
            loc: Loc {
                path: PathBuf::new(),
                lowers: lowers.iter().map(|l| LayerIdx(*l)).collect(),
            },
            attr: Attr { ino: Ino(ino), st },
        }
    }

    fn at(t: &NodeTable, id: u64) -> Result<(String, usize), Errno> {
        t.loc(id)
            .map(|l| (l.path.to_string_lossy().into_owned(), l.lowers.len()))
    }

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn upper_only(path: &str) -> Loc {
        Loc {
            path: PathBuf::from(path),
            lowers: Lowers::from(Vec::new()),
        }
    }

    /// What layers answers for a rename onto `to`.
    fn moved(to: &str) -> RenameOutcome {
        RenameOutcome::Moved(upper_only(to))
    }

    /// What layers answers for an exchange of `from` and `to`.
    fn exchanged(from: &str, to: &str) -> RenameOutcome {
        RenameOutcome::Exchanged {
            source: upper_only(to),
            target: upper_only(from),
        }
    }

    #[test]
    fn a_removed_name_leaves_its_siblings_alone() {
        let t = NodeTable::new();
        for i in 0..100 {
            t.remember(ROOT, name(&format!("f{i}")), &found(10 + i, &[1]));
        }
        t.name_removed(ROOT, name("f7"));
        assert_eq!(at(&t, 17), Err(Errno::ENOENT));
        assert_eq!(at(&t, 18), Ok(("f8".into(), 1)));
        assert_eq!(t.len(), 101, "a removed name does not forget the node");
    }

    #[test]
    fn a_renamed_directory_takes_its_subtree_into_the_upper() {
        let t = NodeTable::new();
        t.remember(ROOT, name("d"), &found(10, &[1]));
        t.remember(10, name("sub"), &found(11, &[1]));
        t.remember(11, name("f"), &found(12, &[1]));
        t.remember(ROOT, name("other"), &found(13, &[1]));
        t.renamed((ROOT, name("d")), (ROOT, name("e")), &moved("e"));
        assert_eq!(at(&t, 10), Ok(("e".into(), 0)));
        assert_eq!(at(&t, 12), Ok(("e/sub/f".into(), 0)));
        assert_eq!(at(&t, 13), Ok(("other".into(), 1)));
    }

    #[test]
    fn a_replaced_target_loses_its_name_and_exchange_swaps_both() {
        let t = NodeTable::new();
        t.remember(ROOT, name("a"), &found(10, &[]));
        t.remember(ROOT, name("b"), &found(11, &[]));
        t.renamed((ROOT, name("a")), (ROOT, name("b")), &exchanged("a", "b"));
        assert_eq!(at(&t, 10), Ok(("b".into(), 0)));
        assert_eq!(at(&t, 11), Ok(("a".into(), 0)));
        t.renamed((ROOT, name("a")), (ROOT, name("b")), &moved("b"));
        assert_eq!(at(&t, 11), Ok(("b".into(), 0)));
        assert_eq!(at(&t, 10), Err(Errno::ENOENT));
        // The freed name is nobody's: renaming it again moves nothing.
        t.renamed((ROOT, name("a")), (ROOT, name("c")), &moved("c"));
        assert_eq!(at(&t, 11), Ok(("b".into(), 0)));
    }

    #[test]
    fn a_hard_link_is_reached_by_its_remaining_name() {
        let t = NodeTable::new();
        t.remember(ROOT, name("d1"), &found(10, &[1]));
        t.remember(ROOT, name("d2"), &found(11, &[1]));
        t.remember(10, name("x"), &found(20, &[1]));
        t.remember(11, name("y"), &found(20, &[2]));
        assert_eq!(
            at(&t, 20),
            Ok(("d2/y".into(), 1)),
            "the newest name comes first"
        );
        t.renamed((ROOT, name("d2")), (ROOT, name("d3")), &moved("d3"));
        assert_eq!(at(&t, 20), Ok(("d3/y".into(), 0)));
        t.name_removed(11, name("y"));
        assert_eq!(at(&t, 20), Ok(("d1/x".into(), 1)));
        // Renaming one name onto another of the same object changes nothing, as rename(2).
        t.remember(10, name("z"), &found(20, &[1]));
        t.renamed((10, name("x")), (10, name("z")), &RenameOutcome::Unchanged);
        assert_eq!(at(&t, 20), Ok(("d1/z".into(), 1)));
        t.name_removed(10, name("z"));
        assert_eq!(at(&t, 20), Ok(("d1/x".into(), 1)));
    }

    #[test]
    fn forgetting_a_node_frees_its_names_and_a_reused_name_moves_on() {
        let t = NodeTable::new();
        t.remember(ROOT, name("a"), &found(10, &[]));
        t.remember(ROOT, name("a"), &found(10, &[]));
        t.forget(10, 1);
        assert_eq!(at(&t, 10), Ok(("a".into(), 0)), "one lookup is still held");
        t.forget(10, 1);
        assert_eq!(at(&t, 10), Err(Errno::ESTALE));
        assert!(
            t.read().names.is_empty(),
            "the index holds no name of a forgotten node"
        );
        t.remember(ROOT, name("b"), &found(11, &[]));
        t.remember(ROOT, name("b"), &found(12, &[]));
        assert_eq!(
            at(&t, 11),
            Err(Errno::ENOENT),
            "the name now stands for another object"
        );
        assert_eq!(at(&t, 12), Ok(("b".into(), 0)));
    }

    #[test]
    fn only_the_first_open_of_a_looked_up_node_is_first() {
        let t = NodeTable::new();
        t.remember(ROOT, name("a"), &found(10, &[1]));
        assert!(t.first_open(10));
        assert!(!t.first_open(10));
        assert!(!t.first_open(99), "an unknown node is never filled");
        t.forget(10, 1);
        t.remember(ROOT, name("a"), &found(10, &[1]));
        assert!(t.first_open(10), "a new kernel inode starts without data");
    }
}
