//! Property test of the planner and the commit (issue 14): over a random rootfs and a random
//! kernel-format upper with hostile names (`.wh.*`, `.ovlrun*`, not UTF-8, newlines,
//! 255-byte components, deep chains) and symlinks pointing out of the rootfs, a commit
//! (plain or atomic) gives the rootfs exactly the tree the kernel overlayfs showed over the
//! two, and changes nothing outside the rootfs.
//!
//! The reference is a real read-only kernel overlayfs mount (`userxattr`, the flavour the
//! kernel format writes), not a model: a model would share the planner's misreadings. It
//! lives here, not in `tests/it`, because the plan and the commit are crate-private (the
//! public way in, `session::Kept`, needs a whole session record and its lock).
//!
//! Needs root (mounts); skipped without it, failed under `CI`. Cases: `OVLRUN_PROP_CASES`
//! (default 128); seed: `OVLRUN_PROP_SEED` (printed on every run).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

use super::commit::commit_with_progress;
use super::plan::plan;
use crate::layers::format::WhiteoutFormat;

/// A name as bytes (any but `/` and NUL), shown escaped.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Name(Vec<u8>);

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

impl Name {
    fn os(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }
}

/// Ordinary names (drawn often, so the lower and the upper collide) and hostile ones.
fn name() -> impl Strategy<Value = Name> {
    let hostile: Vec<Vec<u8>> = vec![
        b".wh.a".to_vec(),
        b".wh.b".to_vec(),
        b".wh..wh..opq".to_vec(),
        b".wh.__dir_opaque".to_vec(),
        b".ovlrun-txn".to_vec(),
        b".rootfs.ovlrun-txn".to_vec(),
        b".ovlrun-stage.0".to_vec(),
        b"ovlrun-whiteout".to_vec(),
        b"\xff\xfe".to_vec(),
        b"caf\xe9".to_vec(),
        b"new\nline".to_vec(),
        b"-rf *".to_vec(),
        vec![b'n'; 255],
        vec![0xff; 255],
    ];
    prop_oneof![
        3 => prop::sample::select(vec!["a", "b", "c"]).prop_map(|s| Name(s.as_bytes().to_vec())),
        2 => prop::sample::select(hostile).prop_map(Name),
    ]
}

/// Where a symlink points; `Outside*` are made absolute at build time.
#[derive(Clone, Copy, Debug)]
enum Target {
    Rel(&'static str),
    OutsideDir,
    OutsideFile,
}

fn target() -> impl Strategy<Value = Target> {
    prop::sample::select(vec![
        Target::Rel("../outside"),
        Target::Rel("../../outside/victim"),
        Target::Rel("../../../../../../../../../.."),
        Target::Rel("/"),
        Target::Rel("a"),
        Target::Rel("."),
        Target::Rel(".wh.a"),
        Target::Rel("nowhere"),
        Target::OutsideDir,
        Target::OutsideFile,
    ])
}

const DATA: [&[u8]; 4] = [b"", b"lower\n", b"upper\n", b"big"];

fn data(i: usize) -> Vec<u8> {
    match DATA[i] {
        b"big" => (0..9000u32).map(|i| (i % 251) as u8).collect(),
        d => d.to_vec(),
    }
}

#[derive(Clone, Debug)]
enum Node {
    File {
        data: usize,
        mode: u32,
        xattr: bool,
    },
    Dir {
        mode: u32,
        opaque: bool,
        xattr: bool,
        kids: BTreeMap<Name, Node>,
    },
    Link(Target),
    /// Kernel format: a character device 0:0 (upper only).
    Whiteout,
}

/// The entries of one tree's root; `upper` adds whiteouts and opaque directories.
fn tree(upper: bool) -> impl Strategy<Value = BTreeMap<Name, Node>> {
    let file = (
        0..DATA.len(),
        prop::sample::select(vec![0o644, 0o600, 0o755, 0o4755, 0o444]),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(data, mode, xattr)| Node::File { data, mode, xattr });
    let leaf = if upper {
        prop_oneof![4 => file, 2 => target().prop_map(Node::Link), 2 => Just(Node::Whiteout)]
            .boxed()
    } else {
        prop_oneof![4 => file, 2 => target().prop_map(Node::Link)].boxed()
    };
    let node = leaf.prop_recursive(3, 24, 4, move |inner| {
        (
            prop::sample::select(vec![0o755, 0o700, 0o555, 0o1777]),
            prop::bool::weighted(if upper { 0.3 } else { 0.0 }),
            prop::bool::weighted(0.2),
            prop::collection::btree_map(name(), inner, 0..4),
        )
            .prop_map(|(mode, opaque, xattr, kids)| Node::Dir {
                mode,
                opaque,
                xattr,
                kids,
            })
    });
    prop::collection::btree_map(name(), node, 0..6)
}

#[derive(Clone, Debug)]
struct Case {
    lower: BTreeMap<Name, Node>,
    upper: BTreeMap<Name, Node>,
    /// A chain of this many 255-byte directories (about 3 KB of path) ending in a file, in
    /// the upper, and also in the lower when the flag is set (the upper then replaces its
    /// file by a whiteout and adds another).
    deep: Option<(usize, bool)>,
    atomic: bool,
    /// An atomic commit first stops as if the machine went down after journal record
    /// `1 + crash % (ops + 1)` (never past the last step), and is recovered.
    crash: usize,
    /// The rootfs is a bind mount of itself: the anchor beside it is on another mount, so
    /// the commit stages inside the rootfs.
    bind: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        tree(false),
        tree(true),
        prop::option::weighted(0.2, (1..=11usize, any::<bool>())),
        any::<bool>(),
        any::<usize>(),
        prop::bool::weighted(0.25),
    )
        .prop_map(|(lower, upper, deep, atomic, crash, bind)| Case {
            lower,
            upper,
            deep,
            atomic,
            crash,
            bind,
        })
}

/// `deep`'s chain as a node: `depth` directories, then `leaf`.
fn chain(depth: usize, leaf: BTreeMap<Name, Node>) -> Node {
    let mut node = Node::Dir {
        mode: 0o755,
        opaque: false,
        xattr: false,
        kids: leaf,
    };
    for i in 1..depth {
        let name = Name(vec![if i % 2 == 0 { b'd' } else { 0xfe }; 255]);
        node = Node::Dir {
            mode: 0o755,
            opaque: false,
            xattr: false,
            kids: BTreeMap::from([(name, node)]),
        };
    }
    node
}

fn with_deep(case: &Case) -> (BTreeMap<Name, Node>, BTreeMap<Name, Node>) {
    let (mut lower, mut upper) = (case.lower.clone(), case.upper.clone());
    if let Some((depth, both)) = case.deep {
        let key = Name(vec![b'D'; 255]);
        let file = |data| Node::File {
            data,
            mode: 0o644,
            xattr: false,
        };
        let f = Name(b"f".to_vec());
        let g = Name(b"g".to_vec());
        if both {
            lower.insert(
                key.clone(),
                chain(depth, BTreeMap::from([(f.clone(), file(1))])),
            );
            upper.insert(
                key,
                chain(depth, BTreeMap::from([(f, Node::Whiteout), (g, file(2))])),
            );
        } else {
            upper.insert(key, chain(depth, BTreeMap::from([(g, file(2))])));
        }
    }
    (lower, upper)
}

fn ctx<T, E: fmt::Display>(what: &str, path: &Path) -> impl FnOnce(E) -> T {
    let at = format!("{what} {}", path.display());
    move |e| panic!("{at}: {e}")
}

fn build(dir: &Path, kids: &BTreeMap<Name, Node>, outside: &Path) {
    for (name, node) in kids {
        let p = dir.join(name.os());
        match node {
            Node::File {
                data: d,
                mode,
                xattr,
            } => {
                std::fs::write(&p, data(*d)).unwrap_or_else(ctx("write", &p));
                if *xattr {
                    xattr::set(&p, "user.k", b"v\xff\n").unwrap_or_else(ctx("setxattr", &p));
                }
                set_mode(&p, *mode);
            }
            Node::Dir {
                mode,
                opaque,
                xattr,
                kids,
            } => {
                std::fs::create_dir(&p).unwrap_or_else(ctx("mkdir", &p));
                build(&p, kids, outside);
                if *opaque {
                    xattr::set(&p, "user.overlay.opaque", b"y").unwrap_or_else(ctx("setxattr", &p));
                }
                if *xattr {
                    xattr::set(&p, "user.d", b"dir").unwrap_or_else(ctx("setxattr", &p));
                }
                set_mode(&p, *mode);
            }
            Node::Link(t) => {
                let to = match t {
                    Target::Rel(s) => PathBuf::from(s),
                    Target::OutsideDir => outside.to_owned(),
                    Target::OutsideFile => outside.join("victim"),
                };
                std::os::unix::fs::symlink(&to, &p).unwrap_or_else(ctx("symlink", &p));
            }
            Node::Whiteout => nix::sys::stat::mknod(&p, SFlag::S_IFCHR, Mode::empty(), 0)
                .unwrap_or_else(ctx("mknod", &p)),
        }
    }
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(ctx("chmod", p));
}

/// One entry as a merged view shows it (times left out: the overlay and the commit need not
/// agree on a directory's mtime; inode numbers differ by nature).
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: String,
    mode: u32,
    owner: (u32, u32),
    data: Option<String>,
    target: Option<String>,
    xattrs: Vec<String>,
}

fn entry(p: &Path) -> Entry {
    let md = std::fs::symlink_metadata(p).unwrap_or_else(ctx("lstat", p));
    let ft = md.file_type();
    let kind = if ft.is_file() {
        "file".to_owned()
    } else if ft.is_dir() {
        "dir".to_owned()
    } else if ft.is_symlink() {
        "symlink".to_owned()
    } else if ft.is_char_device() {
        format!("char {:x}", md.rdev())
    } else {
        format!("other {:o}", md.mode())
    };
    let data = ft.is_file().then(|| {
        let d = std::fs::read(p).unwrap_or_else(ctx("read", p));
        if d.len() <= 64 {
            d.escape_ascii().to_string()
        } else {
            format!("{} bytes, blake3 {}", d.len(), blake3::hash(&d))
        }
    });
    let target = ft.is_symlink().then(|| {
        let t = std::fs::read_link(p).unwrap_or_else(ctx("readlink", p));
        t.as_os_str().as_bytes().escape_ascii().to_string()
    });
    let mut xattrs = Vec::new();
    if ft.is_file() || ft.is_dir() {
        for n in xattr::list(p).unwrap_or_else(ctx("listxattr", p)) {
            let b = n.as_bytes();
            if b.starts_with(b"user.") && !b.starts_with(b"user.overlay.") {
                let v = xattr::get(p, &n).unwrap_or_else(ctx("getxattr", p));
                xattrs.push(format!(
                    "{}={}",
                    b.escape_ascii(),
                    v.unwrap_or_default().escape_ascii()
                ));
            }
        }
        xattrs.sort();
    }
    Entry {
        kind,
        mode: md.mode() & 0o7777,
        owner: (md.uid(), md.gid()),
        data,
        target,
        xattrs,
    }
}

type Tree = BTreeMap<Vec<u8>, Entry>;

/// Every entry under `root` (not following symlinks), keyed by its relative path's bytes.
fn snapshot(root: &Path) -> Tree {
    fn walk(root: &Path, rel: &Path, out: &mut Tree) {
        let p = root.join(rel);
        let e = entry(&p);
        let is_dir = e.kind == "dir";
        out.insert(rel.as_os_str().as_bytes().to_vec(), e);
        if is_dir {
            for d in std::fs::read_dir(&p).unwrap_or_else(ctx("opendir", &p)) {
                let name = rel.join(d.unwrap_or_else(ctx("readdir", &p)).file_name());
                // The kernel lists a whiteout in a directory with nothing below it (it
                // writes none there itself), and lookup then says ENOENT: not an entry.
                if std::fs::symlink_metadata(root.join(&name)).is_ok() {
                    walk(root, &name, out);
                }
            }
        }
    }
    let mut out = Tree::new();
    walk(root, Path::new(""), &mut out);
    out
}

/// What "nothing changed" compares outside the rootfs: the entry, its inode and its times.
type Stamped = BTreeMap<Vec<u8>, (Entry, u64, (i64, i64), (i64, i64))>;

/// Everything under `top` but the rootfs (and `top`'s own times, which the transaction
/// made and removed beside the rootfs moves).
fn outside_state(top: &Path, rootfs: &Path) -> Stamped {
    let skip = rootfs.strip_prefix(top).unwrap().as_os_str().as_bytes();
    snapshot(top)
        .into_iter()
        .filter(|(k, _)| !k.is_empty() && !k.starts_with(skip))
        .map(|(k, e)| {
            let md = std::fs::symlink_metadata(top.join(OsStr::from_bytes(&k))).unwrap();
            let times = ((md.mtime(), md.mtime_nsec()), (md.ctime(), md.ctime_nsec()));
            (k, (e, md.ino(), times.0, times.1))
        })
        .collect()
}

fn diff<V: fmt::Debug + PartialEq>(
    a_name: &str,
    a: &BTreeMap<Vec<u8>, V>,
    b_name: &str,
    b: &BTreeMap<Vec<u8>, V>,
) -> Option<String> {
    let mut lines = Vec::new();
    for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        let shown = k.escape_ascii();
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => lines.push(format!(
                "  /{shown}:\n    {a_name}: {x:?}\n    {b_name}: {y:?}"
            )),
            (Some(x), None) => lines.push(format!("  /{shown}: only in {a_name}: {x:?}")),
            (None, Some(y)) => lines.push(format!("  /{shown}: only in {b_name}: {y:?}")),
            (None, None) => {}
        }
    }
    lines.truncate(30);
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// A mount made by a case, undone when the case ends, also by a panic.
struct Mounted(PathBuf);

impl Mounted {
    fn new(
        src: Option<&Path>,
        at: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        opts: Option<&str>,
    ) -> Mounted {
        nix::mount::mount(src, at, fstype, flags, opts)
            .unwrap_or_else(ctx(&format!("mount {opts:?}"), at));
        Mounted(at.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if nix::mount::umount2(&self.0, MntFlags::empty()).is_err() {
            let _ = nix::mount::umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
}

/// What the cases covered, printed at the end: a run of empty trees proves little.
#[derive(Debug, Default)]
struct Stats {
    cases: u32,
    ops: usize,
    merged_entries: usize,
    atomic: u32,
    crashed: u32,
    bind: u32,
    deep: u32,
}

fn run_case(case: &Case, stats: &std::cell::RefCell<Stats>) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path();
    let dir = |n: &str| {
        let p = top.join(n);
        std::fs::create_dir(&p).unwrap_or_else(ctx("mkdir", &p));
        p
    };
    let (rootfs, upper, work, mnt, outside) = (
        dir("rootfs"),
        dir("upper"),
        dir("work"),
        dir("mnt"),
        dir("outside"),
    );
    let state = top.join("state");
    std::fs::write(outside.join("victim"), b"sentinel\n").unwrap();
    std::fs::create_dir(outside.join("dir")).unwrap();
    std::fs::write(outside.join("dir/inner"), b"inner\n").unwrap();
    std::fs::write(top.join("beside"), b"beside the rootfs\n").unwrap();
    let (lower_tree, upper_tree) = with_deep(case);
    build(&rootfs, &lower_tree, &outside);
    build(&upper, &upper_tree, &outside);
    set_mode(&rootfs, 0o755);
    set_mode(&upper, 0o755);

    let _bind = case
        .bind
        .then(|| Mounted::new(Some(&rootfs), &rootfs, None, MsFlags::MS_BIND, None));
    let merged = {
        let opts = format!(
            "userxattr,lowerdir={},upperdir={},workdir={}",
            rootfs.display(),
            upper.display(),
            work.display()
        );
        let _overlay = Mounted::new(
            Some(Path::new("overlay")),
            &mnt,
            Some("overlay"),
            MsFlags::MS_RDONLY,
            Some(&opts),
        );
        snapshot(&mnt)
    };
    let before = outside_state(top, &rootfs);
    let host_root = host_root();

    let p = plan(
        std::slice::from_ref(&rootfs),
        &upper,
        WhiteoutFormat::Kernel,
    )
    .map_err(|e| failed("plan", &e))?;
    let mut failures = Vec::new();
    if case.atomic && !p.ops.is_empty() {
        // Records: `state prepared`, a `begin` per op, `state committed`: stop before the last.
        let at = 1 + case.crash % (p.ops.len() + 1);
        let old = snapshot(&rootfs);
        super::commit::STOP_AFTER.set(u64::try_from(at).ok());
        let stopped = commit_with_progress(&rootfs, &upper, &state, &p, true, &|| {});
        super::commit::STOP_AFTER.set(None);
        if stopped.is_ok() {
            failures.push(format!("the commit did not stop after record {at}"));
        }
        match super::commit::recover(&rootfs, &state) {
            Ok(super::commit::Recovery::RolledBack) => {}
            other => failures.push(format!("recovery after record {at}: {other:?}")),
        }
        if let Some(d) = diff("before", &old, "recovered", &snapshot(&rootfs)) {
            failures.push(format!(
                "stopped after record {at} of {} and recovered, the rootfs is not the old \
                 tree:\n{d}",
                p.ops.len() + 2
            ));
        }
        stats.borrow_mut().crashed += 1;
    }
    {
        let mut st = stats.borrow_mut();
        st.cases += 1;
        st.ops += p.ops.len();
        st.merged_entries += merged.len();
        st.atomic += u32::from(case.atomic);
        st.bind += u32::from(case.bind);
        st.deep += u32::from(case.deep.is_some());
    }
    commit_with_progress(&rootfs, &upper, &state, &p, case.atomic, &|| {})
        .map_err(|e| failed("commit", &e))?;

    if let Some(d) = diff(
        "kernel overlayfs",
        &merged,
        "committed rootfs",
        &snapshot(&rootfs),
    ) {
        failures.push(format!("the committed rootfs is not the merged view:\n{d}"));
    }
    if let Some(d) = diff("before", &before, "after", &outside_state(top, &rootfs)) {
        failures.push(format!(
            "the commit changed things outside the rootfs:\n{d}"
        ));
    }
    if host_root != self::host_root() {
        failures.push("the commit changed the host's /".to_owned());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(TestCaseError::fail(failures.join("\n")))
    }
}

/// A failed step with its whole error chain.
fn failed(step: &str, e: &dyn std::error::Error) -> TestCaseError {
    let mut msg = format!("{step}: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    TestCaseError::fail(msg)
}

/// The host's `/`: its names and times (an absolute `/` link followed would write there).
fn host_root() -> (Vec<std::ffi::OsString>, i64, i64) {
    let mut names: Vec<_> = std::fs::read_dir("/")
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let md = std::fs::metadata("/").unwrap();
    (names, md.mtime_nsec(), md.ctime_nsec())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_commit_gives_the_merged_view_and_writes_nothing_outside() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount (needs root)"
        );
        eprintln!("skipped: cannot mount (needs root)");
        return;
    }
    // Mount namespaces are per thread: every mount of this test dies with its thread.
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make / private");
    let cases = env_or("OVLRUN_PROP_CASES", 128);
    let seed = env_or(
        "OVLRUN_PROP_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    );
    eprintln!("commit_props: {cases} cases, OVLRUN_PROP_SEED={seed}");
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: env_or("OVLRUN_PROP_SHRINK", 512),
        ..Config::default()
    });
    let stats = std::cell::RefCell::new(Stats::default());
    let result = runner.run(&case(), |c| run_case(&c, &stats));
    eprintln!("commit_props: {:?} (with shrinking)", stats.borrow());
    if let Err(e) = result {
        panic!("commit property failed (OVLRUN_PROP_SEED={seed}):\n{e}");
    }
}
