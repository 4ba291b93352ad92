//! Who the caller is, which subordinate ids `/etc/subuid` and `/etc/subgid` grant them, and
//! the user-namespace id map that follows: the launcher writes it, the config checks a
//! bundle's maps against it, `doctor` reports on the same ranges and helpers.
//!
//! Root maps the whole id space onto itself. An unprivileged user maps 0 to itself and,
//! where both files grant a range and both helpers are found privileged
//! ([`super::programs`]), 1.. onto that range through `newuidmap`/`newgidmap`; otherwise
//! only 0 exists inside.

use std::ffi::OsStr;
use std::path::PathBuf;

use nix::unistd::{Gid, Uid};

use super::programs::{self, Helper};

/// User or group ids: the two have the same kind of file, helper and map, one of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdKind {
    /// User ids.
    Uid,
    /// Group ids.
    Gid,
}

impl IdKind {
    /// The file granting subordinate ids of this kind. See: subuid(5), subgid(5).
    pub(crate) fn subid_file(self) -> &'static str {
        match self {
            IdKind::Uid => "/etc/subuid",
            IdKind::Gid => "/etc/subgid",
        }
    }

    /// This process's own map of this kind.
    pub(crate) fn own_map(self) -> &'static str {
        match self {
            IdKind::Uid => "/proc/self/uid_map",
            IdKind::Gid => "/proc/self/gid_map",
        }
    }

    /// The setuid helper that writes a map of this kind for a user.
    pub(crate) fn helper(self) -> &'static str {
        match self {
            IdKind::Uid => "newuidmap",
            IdKind::Gid => "newgidmap",
        }
    }
}

/// The calling user, as the id probes need them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct User {
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// The login name, when the passwd database has one.
    pub name: Option<String>,
}

impl User {
    /// The calling process's real user.
    pub(crate) fn current() -> User {
        let uid = Uid::current();
        User {
            uid: uid.as_raw(),
            gid: Gid::current().as_raw(),
            name: nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.name),
        }
    }

    /// Root, who maps ids directly.
    pub(crate) fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// A range of subordinate ids: `count` ids from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Range {
    /// First host id.
    pub start: u32,
    /// How many.
    pub count: u32,
}

/// One line of `/etc/subuid` or `/etc/subgid`: `owner:start:count`, the owner a login name
/// or a numeric uid. See: subuid(5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SubIdLine {
    /// Login name or uid.
    pub owner: String,
    /// The ids granted.
    pub range: Range,
}

/// `None` for blank, comment and malformed lines, and for empty ranges.
pub(crate) fn parse_subid_line(line: &str) -> Option<SubIdLine> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut fields = line.split(':');
    let owner = fields.next().filter(|o| !o.is_empty())?;
    let start = fields.next()?.trim().parse().ok()?;
    let count = fields.next()?.trim().parse().ok()?;
    if fields.next().is_some() || count == 0 {
        return None;
    }
    Some(SubIdLine {
        owner: owner.to_owned(),
        range: Range { start, count },
    })
}

/// The ranges a subid file's `text` grants to `user`, by login name or by uid (both forms
/// are valid), in file order. The launcher maps the first.
pub(crate) fn ranges_of(text: &str, user: &User) -> Vec<Range> {
    let uid = user.uid.to_string();
    text.lines()
        .filter_map(parse_subid_line)
        .filter(|l| Some(l.owner.as_str()) == user.name.as_deref() || l.owner == uid)
        .map(|l| l.range)
        .collect()
}

/// The first id past every range in a subid file's `text`, and at least 100000 (useradd's
/// default): where a new grant can start.
pub(crate) fn next_free_start(text: &str) -> u64 {
    text.lines()
        .filter_map(parse_subid_line)
        .map(|l| u64::from(l.range.start) + u64::from(l.range.count))
        .fold(100_000, u64::max)
}

/// How many ids a `/proc/<pid>/uid_map` text maps: the sum of its `inside outside count`
/// lines.
pub(crate) fn mapped_ids(map: &str) -> u64 {
    map.lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum()
}

/// A subid file's text; a missing or unreadable file grants nothing.
pub(crate) fn read_subids(kind: IdKind) -> String {
    std::fs::read_to_string(kind.subid_file()).unwrap_or_default()
}

/// The two helpers found by [`programs`]'s rule, both privileged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MapHelpers {
    /// Writes the uid map.
    pub newuidmap: PathBuf,
    /// Writes the gid map.
    pub newgidmap: PathBuf,
}

impl MapHelpers {
    /// Both helpers, looked up with `search` standing for `$PATH`; `None` unless both are
    /// found privileged.
    pub(crate) fn find_in(search: &OsStr) -> Option<MapHelpers> {
        let find = |kind: IdKind| Helper::find_in(kind.helper(), search).ready();
        Some(MapHelpers {
            newuidmap: find(IdKind::Uid)?,
            newgidmap: find(IdKind::Gid)?,
        })
    }
}

/// The owner of the tree at `rootfs` when `map` does not map it (its files then show as
/// nobody inside, and the session's root cannot act as that owner); `None` when it does,
/// or the tree cannot be read.
pub(crate) fn unmapped_owner(rootfs: &std::path::Path, map: &IdMap) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(rootfs).ok()?.uid();
    (!map.maps_host_uid(owner)).then_some(owner)
}

/// What fixes a tree whose owner the caller's id map does not cover.
pub(crate) const UNMAPPED_TREE_FIX: &str = "create the tree in your own user namespace \
     (mmdebstrap --mode=unshare, or copy it with `unshare -r cp -a`, or `podman unshare`); \
     ovlrun does not shift a tree's owners into your range";

/// How the session's ids map to the host's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum IdMap {
    /// Every id to itself (the caller is root).
    Identity,
    /// Only 0, onto the caller's uid and gid.
    Single {
        /// Host uid.
        uid: u32,
        /// Host gid.
        gid: u32,
    },
    /// 0 onto the caller, 1.. onto subordinate ranges.
    Sub {
        /// Host uid.
        uid: u32,
        /// Host gid.
        gid: u32,
        /// Subordinate uids.
        uids: Range,
        /// Subordinate gids.
        gids: Range,
        /// The helpers that write the maps.
        helpers: MapHelpers,
    },
}

/// The map for the calling user, from this host's files and helpers.
pub(crate) fn choose() -> IdMap {
    let user = User::current();
    if user.is_root() {
        return IdMap::Identity;
    }
    choose_for(
        &user,
        &read_subids(IdKind::Uid),
        &read_subids(IdKind::Gid),
        MapHelpers::find_in(&programs::search_path()),
    )
}

/// The map for `user` given the texts of `/etc/subuid` and `/etc/subgid` and the helpers
/// found: the first granted range of each kind, when both helpers are usable.
pub(crate) fn choose_for(
    user: &User,
    subuid: &str,
    subgid: &str,
    helpers: Option<MapHelpers>,
) -> IdMap {
    if user.is_root() {
        return IdMap::Identity;
    }
    let first = |text| ranges_of(text, user).first().copied();
    match (first(subuid), first(subgid), helpers) {
        (Some(uids), Some(gids), Some(helpers)) => IdMap::Sub {
            uid: user.uid,
            gid: user.gid,
            uids,
            gids,
            helpers,
        },
        _ => IdMap::Single {
            uid: user.uid,
            gid: user.gid,
        },
    }
}

impl IdMap {
    /// True when the maps must be written from outside the namespace (anything beyond the
    /// caller's own id, which only a process in the parent namespace may map).
    pub(crate) fn needs_helpers(&self) -> bool {
        !matches!(self, IdMap::Single { .. })
    }

    /// True when processes inside may call setgroups(2) (not with a one-id map, where the
    /// kernel requires it denied).
    pub(crate) fn allows_setgroups(&self) -> bool {
        !matches!(self, IdMap::Single { .. })
    }

    /// True when host uid `uid` has an id in the session (an unmapped owner shows as the
    /// overflow uid, and the session's root cannot act as that owner).
    pub(crate) fn maps_host_uid(&self, uid: u32) -> bool {
        match self {
            IdMap::Identity => true,
            IdMap::Single { uid: own, .. } => uid == *own,
            IdMap::Sub { uid: own, uids, .. } => {
                uid == *own
                    || (uid >= uids.start
                        && u64::from(uid) < u64::from(uids.start) + u64::from(uids.count))
            }
        }
    }

    /// A one-line note for the user about what this map cannot do, if anything.
    pub(crate) fn limitation(&self) -> Option<String> {
        match self {
            IdMap::Single { .. } => Some(
                "only uid/gid 0 exist in the session (no other owners, no setgroups); \
                 grant a range with: sudo usermod --add-subuids 100000-165535 \
                 --add-subgids 100000-165535 $USER"
                    .into(),
            ),
            // ovlrun does not yet map a root caller onto a subordinate range (README: "Root
            // sessions"); the session is confined, but its root owns what host root owns.
            IdMap::Identity => Some(
                "uid 0 in this session is the host's uid 0, confined by namespaces, a reduced \
                 capability set, read-only /proc/sys and /sys, and seccomp"
                    .into(),
            ),
            IdMap::Sub { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, uid: u32) -> User {
        User {
            uid,
            gid: uid,
            name: Some(name.to_owned()),
        }
    }

    fn range(start: u32, count: u32) -> Range {
        Range { start, count }
    }

    #[test]
    fn subid_lines_parse_and_reject_garbage() {
        assert_eq!(
            parse_subid_line("alice:100000:65536"),
            Some(SubIdLine {
                owner: "alice".into(),
                range: range(100_000, 65536)
            })
        );
        assert_eq!(
            parse_subid_line("  1000:200000:10 \n").map(|l| l.range),
            Some(range(200_000, 10))
        );
        for bad in [
            "",
            "   ",
            "# a comment",
            "alice:100000",
            "alice:x:65536",
            ":1:2",
            "a:1:2:3",
            "a:1:0",
            "a:5000000000:1",
        ] {
            assert_eq!(parse_subid_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ranges_match_by_name_or_uid() {
        let text = "alice:100000:65536\nbob:165536:65536\n1000:300000:5\nalicex:1:1\n";
        let mine = ranges_of(text, &user("alice", 1000));
        assert_eq!(mine, [range(100_000, 65536), range(300_000, 5)]);
        let nameless = |uid| User {
            uid,
            gid: uid,
            name: None,
        };
        assert!(ranges_of(text, &nameless(1001)).is_empty());
        assert_eq!(ranges_of(text, &nameless(1000)), [range(300_000, 5)]);
        let text = "alice:100000:65536\n# x\n1001:200000:1000\nbob:300000:0\n";
        assert_eq!(
            ranges_of(text, &user("carol", 1001)),
            [range(200_000, 1000)]
        );
        assert!(
            ranges_of(text, &user("bob", 7)).is_empty(),
            "empty ranges grant nothing"
        );
    }

    #[test]
    fn next_free_start_is_past_every_range() {
        assert_eq!(next_free_start(""), 100_000);
        assert_eq!(next_free_start("a:100000:65536\nb:10:5\n"), 165_536);
        assert_eq!(next_free_start("a:500000:10\nb:100000:65536\n"), 500_010);
    }

    #[test]
    fn mapped_ids_sum_the_counts() {
        assert_eq!(
            mapped_ids("         0          0 4294967295\n"),
            4_294_967_295
        );
        assert_eq!(mapped_ids("0 1000 1\n1 100000 65536\n"), 65537);
    }

    #[test]
    fn a_map_covers_the_caller_and_its_range_only() {
        let sub = IdMap::Sub {
            uid: 1000,
            gid: 1000,
            uids: range(100_000, 65536),
            gids: range(100_000, 65536),
            helpers: MapHelpers {
                newuidmap: "/x".into(),
                newgidmap: "/y".into(),
            },
        };
        assert!(
            sub.maps_host_uid(1000) && sub.maps_host_uid(100_000) && sub.maps_host_uid(165_535)
        );
        assert!(!sub.maps_host_uid(0) && !sub.maps_host_uid(165_536) && !sub.maps_host_uid(99_999));
        let single = IdMap::Single {
            uid: 1000,
            gid: 1000,
        };
        assert!(single.maps_host_uid(1000) && !single.maps_host_uid(0));
        assert!(IdMap::Identity.maps_host_uid(0));
    }

    #[test]
    fn the_map_needs_both_ranges_and_both_helpers() {
        let alice = user("alice", 1000);
        let helpers = MapHelpers {
            newuidmap: "/x/newuidmap".into(),
            newgidmap: "/x/newgidmap".into(),
        };
        let single = IdMap::Single {
            uid: 1000,
            gid: 1000,
        };
        let grant = "alice:100000:65536\nalice:900000:10\n";
        assert_eq!(
            choose_for(&alice, grant, "1000:200000:65536\n", Some(helpers.clone())),
            IdMap::Sub {
                uid: 1000,
                gid: 1000,
                uids: range(100_000, 65536),
                gids: range(200_000, 65536),
                helpers: helpers.clone(),
            }
        );
        assert_eq!(choose_for(&alice, grant, grant, None), single);
        assert_eq!(choose_for(&alice, grant, "", Some(helpers.clone())), single);
        assert_eq!(choose_for(&user("root", 0), "", "", None), IdMap::Identity);
    }
}
