//! Differential test: random operation sequences applied through `ovlrun mount` and through the
//! kernel overlayfs (`userxattr`) over the same lower layers, each with its own fresh upper. The
//! errno of every step and the whole merged tree at the end must agree.
//!
//! Two kernel references run side by side: the default options, and `index=on`. They differ in
//! one place ovlrun's design leaves open: a hard-linked pair in a lower stays linked after
//! copy-up with `index=on` and is broken without it (DESIGN.md: "hard links in a lower stay
//! linked after copy-up (goal)"). ovlrun passes a case when its whole trace and tree equal
//! either reference; both diffs are printed when it matches neither.
//!
//! Cases: `OVLRUN_DIFF_CASES` (default 64); seed: `OVLRUN_DIFF_SEED` (printed on every run).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, RenameFlags};
use nix::sys::stat::{FchmodatFlags, Mode};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

use crate::support::{
    self, KernelOverlay, MountArgs, OrPanic, OvlrunMount, TestDir, errno, opaque_user,
    private_mount_ns, tree_diff, tree_snapshot, whiteout_chardev,
};

/// Names used at every level; few, so that operations collide (EEXIST, ENOTDIR, ENOTEMPTY...).
const NAMES: [&str; 5] = ["a", "b", "c", "x", "y"];

/// Data written by `Write`/`Append`: empty, short, and larger than one page.
const DATA: [&str; 4] = ["", "hello\n", "0123456789abcdef", "big"];

fn data(i: usize) -> Vec<u8> {
    match DATA[i] {
        "big" => (0..9000u32).map(|i| (i % 251) as u8).collect(),
        s => s.as_bytes().to_vec(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flags {
    None,
    NoReplace,
    Exchange,
}

impl Flags {
    fn bits(self) -> RenameFlags {
        match self {
            Flags::None => RenameFlags::empty(),
            Flags::NoReplace => RenameFlags::RENAME_NOREPLACE,
            Flags::Exchange => RenameFlags::RENAME_EXCHANGE,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// open(O_WRONLY|O_CREAT|O_TRUNC, 0644) + write.
    Write(String, usize),
    /// open(O_WRONLY|O_APPEND) + write.
    Append(String, usize),
    Truncate(String, i64),
    Mkdir(String, u32),
    Rmdir(String),
    Unlink(String),
    Rename(String, String, Flags),
    Symlink(&'static str, String),
    Link(String, String),
    Chmod(String, u32),
    SetXattr(String, &'static str, &'static str),
    RemoveXattr(String),
    /// lstat + content + xattrs of one path, compared like any other result (stale caches).
    Check(String),
    /// Unmount and mount again over the same upper (state must live on disk, not in memory).
    /// Held fds are closed first.
    Remount,
    /// open(O_RDWR) of an existing path into fd slot 0 or 1 (replacing what the slot held).
    /// Only read-write: a read-only fd opened before copy-up reads the stale lower file on the
    /// kernel overlayfs, a known overlayfs wart that ovlrun need not copy.
    OpenRw(usize, String),
    /// pwrite through a held fd (EBADF when the slot is empty), after renames and unlinks of
    /// its name.
    WriteFd(usize, usize),
    /// pread of up to 64 bytes at offset 0 through a held fd.
    ReadFd(usize),
    CloseFd(usize),
    Chown(String, u32),
    Mkfifo(String),
}

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(NAMES.to_vec()).prop_map(str::to_owned)
}

/// A leading component: mostly names that are directories in the lowers (`a`, and `c` which
/// is a symlink to it), sometimes files (ENOTDIR) or names only mkdir makes into dirs.
fn dir_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "a", "a", "c", "b", "x", "y"]).prop_map(str::to_owned)
}

/// A second component: `a/b` and `a/b/c` are lower dirs.
fn dir_name2() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["b", "b", "c", "a", "x"]).prop_map(str::to_owned)
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        5 => name(),
        4 => (dir_name(), name()).prop_map(|(a, b)| format!("{a}/{b}")),
        2 => (dir_name(), dir_name2(), name()).prop_map(|(a, b, c)| format!("{a}/{b}/{c}")),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let data = 0..DATA.len();
    prop_oneof![
        4 => (path(), data.clone()).prop_map(|(p, d)| Op::Write(p, d)),
        2 => (path(), data).prop_map(|(p, d)| Op::Append(p, d)),
        2 => (path(), prop::sample::select(vec![0i64, 3, 5000])).prop_map(|(p, n)| Op::Truncate(p, n)),
        3 => (path(), prop::sample::select(vec![0o755u32, 0o700])).prop_map(|(p, m)| Op::Mkdir(p, m)),
        2 => path().prop_map(Op::Rmdir),
        3 => path().prop_map(Op::Unlink),
        5 => (path(), path(), prop::sample::select(vec![Flags::None, Flags::None, Flags::NoReplace, Flags::Exchange]))
            .prop_map(|(a, b, f)| Op::Rename(a, b, f)),
        // Targets stay inside the mount: a dangling one, a dir, a file, a nested file.
        1 => (prop::sample::select(vec!["nowhere", "a", "x", "a/x"]), path()).prop_map(|(t, p)| Op::Symlink(t, p)),
        2 => (path(), path()).prop_map(|(a, b)| Op::Link(a, b)),
        2 => (path(), prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o4755])).prop_map(|(p, m)| Op::Chmod(p, m)),
        2 => (path(), prop::sample::select(vec!["user.a", "user.b"]), prop::sample::select(vec!["1", "two"]))
            .prop_map(|(p, n, v)| Op::SetXattr(p, n, v)),
        1 => path().prop_map(Op::RemoveXattr),
        2 => path().prop_map(Op::Check),
        1 => Just(Op::Remount),
        2 => (0..2usize, path()).prop_map(|(s, p)| Op::OpenRw(s, p)),
        2 => (0..2usize, 0..DATA.len()).prop_map(|(s, d)| Op::WriteFd(s, d)),
        1 => (0..2usize).prop_map(Op::ReadFd),
        1 => (0..2usize).prop_map(Op::CloseFd),
        1 => (path(), prop::sample::select(vec![0u32, 1000])).prop_map(|(p, u)| Op::Chown(p, u)),
        1 => path().prop_map(Op::Mkfifo),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    // Up to 60 steps; the lower bound is 1, not 20, so that shrinking can reach the few steps
    // that matter instead of padding a failure with no-ops.
    prop::collection::vec(op(), 1..=60)
}

/// Applies `op` under `root`; `Ok` carries what the step observed (only `Check` observes).
/// Fds held across steps, per mount.
type Fds = [Option<fs::File>; 2];

fn apply(root: &Path, fds: &mut Fds, op: &Op) -> Result<String, Errno> {
    let p = |rel: &str| root.join(rel);
    match op {
        Op::OpenRw(slot, rel) => {
            fds[*slot] = None;
            fds[*slot] = Some(errno(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(p(rel)),
            )?);
        }
        Op::WriteFd(slot, d) => {
            let f = fds[*slot].as_ref().ok_or(Errno::EBADF)?;
            errno(std::os::unix::fs::FileExt::write_all_at(f, &data(*d), 0))?;
        }
        Op::ReadFd(slot) => {
            let f = fds[*slot].as_ref().ok_or(Errno::EBADF)?;
            let mut buf = [0u8; 64];
            let n = errno(std::os::unix::fs::FileExt::read_at(f, &mut buf, 0))?;
            return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        Op::CloseFd(slot) => {
            fds[*slot].take().ok_or(Errno::EBADF)?;
        }
        Op::Chown(rel, uid) => std::os::unix::fs::chown(p(rel), Some(*uid), Some(*uid))
            .map_err(|e| support::errno_of(&e))?,
        Op::Mkfifo(rel) => nix::unistd::mkfifo(&p(rel), Mode::from_bits_truncate(0o644))?,
        Op::Write(rel, d) => {
            let mut f = errno(
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o644)
                    // A FIFO without reader: ENXIO instead of blocking forever.
                    .custom_flags(libc::O_NONBLOCK)
                    .open(p(rel)),
            )?;
            errno(f.write_all(&data(*d)))?;
        }
        Op::Append(rel, d) => {
            let mut f = errno(
                OpenOptions::new()
                    .append(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(p(rel)),
            )?;
            errno(f.write_all(&data(*d)))?;
        }
        Op::Truncate(rel, n) => nix::unistd::truncate(&p(rel), *n)?,
        Op::Mkdir(rel, mode) => errno(fs::DirBuilder::new().mode(*mode).create(p(rel)))?,
        Op::Rmdir(rel) => errno(fs::remove_dir(p(rel)))?,
        Op::Unlink(rel) => errno(fs::remove_file(p(rel)))?,
        Op::Rename(a, b, f) => nix::fcntl::renameat2(AT_FDCWD, &p(a), AT_FDCWD, &p(b), f.bits())?,
        Op::Symlink(t, rel) => errno(std::os::unix::fs::symlink(t, p(rel)))?,
        Op::Link(a, b) => errno(fs::hard_link(p(a), p(b)))?,
        Op::Chmod(rel, m) => nix::sys::stat::fchmodat(
            AT_FDCWD,
            &p(rel),
            Mode::from_bits_truncate(*m),
            FchmodatFlags::FollowSymlink,
        )?,
        Op::SetXattr(rel, n, v) => errno(xattr::set(p(rel), n, v.as_bytes()))?,
        Op::RemoveXattr(rel) => errno(xattr::remove(p(rel), "user.a"))?,
        Op::Remount => unreachable!("run_case remounts"),
        Op::Check(rel) => {
            let md = errno(fs::symlink_metadata(p(rel)))?;
            let mut seen = format!("{:?}", support::entry_info(&p(rel)));
            if md.is_dir() {
                seen += &format!(" {:?}", support::ls(p(rel)));
            }
            return Ok(seen);
        }
    }
    Ok(String::new())
}

/// True when `a` and `b` under `root` are two names of one existing non-directory.
fn same_file(root: &Path, a: &str, b: &str) -> bool {
    let lstat = |p: &str| fs::symlink_metadata(root.join(p)).ok();
    match (lstat(a), lstat(b)) {
        (Some(x), Some(y)) => !x.is_dir() && (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => false,
    }
}

/// The kernel answers EXDEV when a directory that exists in a lower is renamed (no
/// `redirect_dir` with `userxattr`); ovlrun renames it. To keep comparing, the kernel side is
/// brought to the state a working rename gives, the way `mv` does it: re-create each directory
/// (mode, owner, user xattrs) and move every non-directory with rename(2), which the kernel
/// allows and which, unlike `mv`'s copy, keeps hard links to names outside the tree. Returns the
/// result ovlrun must give: success, or ENOTEMPTY when the target is a non-empty directory (the
/// kernel checks EXDEV before emptiness, so it never says so itself).
fn emulate_dir_rename(root: &Path, from: &str, to: &str, flags: Flags) -> Result<String, Errno> {
    // Resolve the parents first, as rename(2) does: moving a symlink that a later path goes
    // through (`c -> a`, exchange `c/b/c` with `c`) must not change where the steps land.
    let resolve = |rel: &str| {
        let p = root.join(rel);
        let parent = p.parent().expect("a path under the mount has a parent");
        fs::canonicalize(parent)
            .or_panic("realpath", parent)
            .join(p.file_name().expect("a name"))
    };
    let (src, dst) = (resolve(from), resolve(to));
    if flags == Flags::Exchange {
        let tmp = src.with_file_name(".exchange-tmp");
        move_any(&src, &tmp);
        move_any(&dst, &src);
        move_any(&tmp, &dst);
        return Ok(String::new());
    }
    if let Some(md) = support::lstat_opt(&dst) {
        assert!(
            md.is_dir(),
            "kernel said EXDEV renaming {from} over non-directory {to}"
        );
        if fs::read_dir(&dst)
            .or_panic("opendir", &dst)
            .next()
            .is_some()
        {
            return Err(Errno::ENOTEMPTY);
        }
        fs::remove_dir(&dst).or_panic("rmdir", &dst);
    }
    move_any(&src, &dst);
    Ok(String::new())
}

fn move_any(src: &Path, dst: &Path) {
    let md = support::lstat(src);
    if !md.is_dir() {
        fs::rename(src, dst).or_panic(&format!("rename {} ->", src.display()), dst);
        return;
    }
    fs::create_dir(dst).or_panic("mkdir", dst);
    fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777)).or_panic("chmod", dst);
    std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid())).or_panic("lchown", dst);
    for name in xattr::list(src).or_panic("listxattr", src) {
        let visible = name
            .to_str()
            .is_some_and(|n| n.starts_with("user.") && !n.starts_with("user.overlay."));
        if visible {
            let v = xattr::get(src, &name)
                .or_panic("getxattr", src)
                .unwrap_or_default();
            xattr::set(dst, &name, &v).or_panic("setxattr", dst);
        }
    }
    let names: Vec<_> = fs::read_dir(src)
        .or_panic("opendir", src)
        .map(|e| e.or_panic("readdir", src).file_name())
        .collect();
    for n in names {
        move_any(&src.join(&n), &dst.join(&n));
    }
    fs::remove_dir(src).or_panic("rmdir", src);
}

/// The lower layers every case shares (read-only through all mounts):
/// ```text
/// l1 (bottom): a/ (user.color=red)  a/x  a/y (70 KB)  a/b/y  a/b/c/x  b (0640, user.tag)
///              c -> a   x, y (one hard-linked file)   a/c -> nowhere (dangling)
/// l0 (top):    a/b/y  = whiteout (char 0:0)           a/b/c/ opaque (user.overlay.opaque) with y
///              a/z    new file in a merged dir
/// ```
fn build_lowers(dir: &TestDir) -> (PathBuf, PathBuf) {
    let l1 = dir.mkdir("l1");
    support::mkdir_p(l1.join("a/b/c"));
    support::set_xattr(l1.join("a"), "user.color", b"red");
    support::write(l1.join("a/x"), "a/x in l1\n");
    support::write(
        l1.join("a/y"),
        (0..70_000u32).map(|i| (i % 253) as u8).collect::<Vec<_>>(),
    );
    support::write(l1.join("a/b/y"), "hidden by a whiteout\n");
    support::write(l1.join("a/b/c/x"), "hidden by an opaque dir\n");
    support::write(l1.join("b"), "b in l1\n");
    support::chmod(l1.join("b"), 0o640);
    support::set_xattr(l1.join("b"), "user.tag", b"lower");
    support::symlink("a", l1.join("c"));
    support::write(l1.join("x"), "linked\n");
    support::hard_link(l1.join("x"), l1.join("y"));
    support::symlink("nowhere", l1.join("a/c"));

    let l0 = dir.mkdir("l0");
    support::mkdir_p(l0.join("a/b/c"));
    support::set_xattr(l0.join("a"), "user.color", b"red");
    whiteout_chardev(&l0.join("a/b/y"));
    opaque_user(&l0.join("a/b/c"));
    support::write(l0.join("a/b/c/y"), "only entry of the opaque dir\n");
    support::write(l0.join("a/z"), "a/z in l0\n");
    (l0, l1)
}

/// One reference (kernel) or the subject (ovlrun): where it is mounted and what it answered.
struct Trace {
    name: &'static str,
    results: Vec<Result<String, Errno>>,
}

/// Char 0:0 whiteouts and `user.overlay.opaque` xattrs under a raw upper directory.
fn kernel_form_markers(upper: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![upper.to_path_buf()];
    while let Some(p) = stack.pop() {
        if support::is_whiteout_chardev(&p) {
            found.push(format!("{}: char 0:0", p.display()));
        }
        let md = support::lstat(&p);
        if md.is_dir() {
            if xattr::get(&p, "user.overlay.opaque")
                .ok()
                .flatten()
                .is_some()
            {
                found.push(format!("{}: user.overlay.opaque", p.display()));
            }
            for e in fs::read_dir(&p).or_panic("opendir", &p) {
                stack.push(e.or_panic("readdir", &p).path());
            }
        }
    }
    found
}

/// st_ino and, for non-directories, the link count of every path.
fn ino_map(root: &Path) -> BTreeMap<PathBuf, (u64, Option<u64>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let md = support::lstat(root.join(&rel));
        out.insert(
            rel.clone(),
            (md.ino(), (!md.is_dir()).then_some(md.nlink())),
        );
        if md.is_dir() {
            for e in fs::read_dir(root.join(&rel)).or_panic("opendir", root.join(&rel)) {
                stack.push(rel.join(e.or_panic("readdir", root.join(&rel)).file_name()));
            }
        }
    }
    out
}

/// Paths that share an st_ino without being hard links of one file: a directory among them,
/// or more names than the link count admits.
fn ino_collisions(inos: &BTreeMap<PathBuf, (u64, Option<u64>)>) -> Option<String> {
    let mut by_ino: BTreeMap<u64, Vec<(&PathBuf, Option<u64>)>> = BTreeMap::new();
    for (p, (ino, nlink)) in inos {
        by_ino.entry(*ino).or_default().push((p, *nlink));
    }
    let bad: Vec<String> = by_ino
        .iter()
        .filter(|(_, v)| {
            v.len() > 1
                && v.iter()
                    .any(|(_, nlink)| nlink.is_none_or(|n| n < v.len() as u64))
        })
        .map(|(ino, v)| format!("{ino}: {:?}", v.iter().map(|(p, _)| p).collect::<Vec<_>>()))
        .collect();
    (!bad.is_empty()).then(|| format!("st_ino shared by paths that are not hard links: {bad:?}"))
}

/// A kernel overlayfs reference: its directories, options, mount and trace.
struct KernelRef {
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    extra: &'static str,
    mount: Option<KernelOverlay>,
    fds: Fds,
    trace: Trace,
}

impl KernelRef {
    fn new(name: &'static str, case: &TestDir, sub: &str, extra: &'static str) -> KernelRef {
        KernelRef {
            upper: case.mkdir(format!("{sub}/u")),
            work: case.mkdir(format!("{sub}/w")),
            mnt: case.mkdir(format!("{sub}/m")),
            extra,
            mount: None,
            fds: [None, None],
            trace: Trace {
                name,
                results: vec![],
            },
        }
    }

    fn mount(&mut self, lowers: &[&Path]) {
        self.mount = Some(KernelOverlay::mount(
            lowers,
            &self.upper,
            &self.work,
            &self.mnt,
            self.extra,
        ));
    }
}

fn run_case(
    base: &TestDir,
    l0: &Path,
    l1: &Path,
    ops: &[Op],
    stats: &RefCell<BTreeMap<String, usize>>,
    shrinking: &Cell<bool>,
    whiteout: &'static str,
) -> Result<(), TestCaseError> {
    let case = TestDir::named(&format!(
        "{}-case",
        base.path().file_name().unwrap().to_string_lossy()
    ));
    let lowers = [l0, l1];
    let mut refs = [
        KernelRef::new("kernel", &case, "k", ""),
        KernelRef::new("kernel index=on", &case, "i", "index=on"),
    ];
    for r in refs.iter_mut() {
        r.mount(&lowers);
    }
    let args = MountArgs::new(&lowers, &case.mkdir("o/u"), &case.mkdir("o/m"))
        .work(&case.mkdir("o/w"))
        .whiteout(whiteout);
    let mut ovl = OvlrunMount::start(&args);
    let mut ovl_fds: Fds = [None, None];
    let mut got = Trace {
        name: "ovlrun",
        results: vec![],
    };
    for op in ops {
        if let Op::Remount = op {
            ovl_fds = [None, None];
            for r in refs.iter_mut() {
                r.fds = [None, None];
                r.mount.take().expect("mounted").unmount();
                r.mount(&lowers);
                r.trace.results.push(Ok(String::new()));
            }
            let st = ovl.unmount();
            ovl = OvlrunMount::start(&args);
            got.results.push(if st.success() {
                Ok(String::new())
            } else {
                Ok(format!("ovlrun exited with {st}"))
            });
            continue;
        }
        for r in refs.iter_mut() {
            let mnt = r.mount.as_ref().expect("mounted").path();
            // Judged in the kernel's upper: its merged view gives the two names two inos.
            let one_file = matches!(op, Op::Rename(a, b, _) if same_file(&r.upper, a, b));
            let mut res = apply(mnt, &mut r.fds, op);
            if let (Err(Errno::EXDEV), Op::Rename(a, b, f)) = (&res, op) {
                res = emulate_dir_rename(mnt, a, b, *f);
            }
            // Renaming (or exchanging) one hard link of a copied-up file with another:
            // success and no change, as on any Linux filesystem and in ovlrun; the kernel
            // overlayfs says ESTALE.
            if one_file && res == Err(Errno::ESTALE) {
                res = Ok(String::new());
            }
            r.trace.results.push(res);
        }
        got.results.push(apply(ovl.path(), &mut ovl_fds, op));
    }
    drop(ovl_fds);
    for r in refs.iter_mut() {
        r.fds = [None, None];
    }
    let leaks = support::overlay_internals_visible(ovl.path());
    let got_tree = tree_snapshot(ovl.path());
    for r in &got.results {
        let key = match r {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("{e:?}"),
        };
        if !shrinking.get() {
            *stats.borrow_mut().entry(key).or_default() += 1;
        }
    }

    // 1. The same errno at every step and the same merged tree as one kernel reference.
    let mut reports = Vec::new();
    let mut matched = false;
    for KernelRef { mount, trace, .. } in &refs {
        let mnt = mount.as_ref().expect("mounted");
        let first_diff = (0..ops.len()).find(|&i| trace.results[i] != got.results[i]);
        let tree = tree_snapshot(mnt.path());
        let diff = tree_diff(trace.name, &tree, got.name, &got_tree);
        if first_diff.is_none() && diff.is_none() {
            matched = true;
            break;
        }
        let mut r = format!("against {}:", trace.name);
        if let Some(i) = first_diff {
            r += &format!(
                "\n  step {i} {:?}: {} -> {:?}, ovlrun -> {:?}",
                ops[i], trace.name, trace.results[i], got.results[i]
            );
        }
        if let Some(d) = diff {
            r += &format!("\n  final trees differ:\n{d}");
        }
        reports.push(r);
    }
    if matched {
        reports.clear();
    }
    if !leaks.is_empty() {
        reports.push(format!(
            "overlay internals visible through ovlrun: {leaks:?}"
        ));
    }
    drop(refs);

    // 2. The upper alone carries the state: ovlrun mounted again shows the same tree, with
    // the same st_ino for every path (DESIGN: st_ino is stable across remounts), and st_ino
    // is shared only by hard links.
    let inos_before = ino_map(ovl.path());
    reports.extend(ino_collisions(&inos_before));
    let st = ovl.unmount();
    if !st.success() {
        reports.push(format!("ovlrun exited with {st} after umount"));
    }
    let again = OvlrunMount::start(&args);
    if let Some(d) = tree_diff(
        "ovlrun",
        &got_tree,
        "ovlrun remounted",
        &tree_snapshot(again.path()),
    ) {
        reports.push(format!(
            "ovlrun after remount over its own upper differs:\n{d}"
        ));
    }
    let inos_after = ino_map(again.path());
    let moved: Vec<String> = inos_before
        .iter()
        .filter(|(p, (ino, _))| inos_after.get(*p).is_some_and(|(i, _)| i != ino))
        .map(|(p, (ino, _))| format!("/{}: {ino} -> {}", p.display(), inos_after[p].0))
        .collect();
    if !moved.is_empty() {
        reports.push(format!("st_ino changed across remount: {moved:?}"));
    }
    drop(again);

    if whiteout == "aufs" {
        // 3'. The AUFS form is what was asked for: no char-device whiteouts, no opaque xattrs.
        let kernel_form = kernel_form_markers(&case.join("o/u"));
        if !kernel_form.is_empty() {
            reports.push(format!(
                "--whiteout aufs wrote kernel-form markers: {kernel_form:?}"
            ));
        }
        return if reports.is_empty() {
            Ok(())
        } else {
            Err(TestCaseError::fail(reports.join("\n")))
        };
    }

    // 3. The upper is a kernel overlayfs upper: the kernel over it shows the same tree.
    // Link counts are left out here: for a lower hard link whose other name was copied up or
    // removed, the kernel without `index` still reports the lower's count, with `index` (and
    // ovlrun, if it keeps links like that) the real one. Step 1 already held ovlrun to either.
    let kover = KernelOverlay::mount(
        &lowers,
        &case.join("o/u"),
        &case.mkdir("ko/w"),
        &case.mkdir("ko/m"),
        "",
    );
    let no_nlink = |t: &BTreeMap<PathBuf, support::EntryInfo>| {
        t.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    support::EntryInfo {
                        nlink: None,
                        ..v.clone()
                    },
                )
            })
            .collect::<BTreeMap<_, _>>()
    };
    if let Some(d) = tree_diff(
        "ovlrun",
        &no_nlink(&got_tree),
        "kernel over ovlrun's upper",
        &no_nlink(&tree_snapshot(kover.path())),
    ) {
        reports.push(format!("the kernel reads ovlrun's upper differently:\n{d}"));
    }
    drop(kover);

    if reports.is_empty() {
        Ok(())
    } else {
        Err(TestCaseError::fail(reports.join("\n")))
    }
}

#[test]
fn random_sequences_match_kernel_overlayfs() {
    require!(support::can_mount_fuse(), "mount FUSE (/dev/fuse)");
    require!(
        support::can_mount_kernel_overlay(),
        "mount the kernel overlayfs (userxattr)"
    );
    private_mount_ns();
    run_random("kernel", 64);
}

/// The same with `--whiteout aufs`: the merged view must not depend on the upper's form.
#[test]
fn random_sequences_with_aufs_whiteouts_match_kernel_overlayfs() {
    require!(support::can_mount_fuse(), "mount FUSE (/dev/fuse)");
    require!(
        support::can_mount_kernel_overlay(),
        "mount the kernel overlayfs (userxattr)"
    );
    private_mount_ns();
    run_random("aufs", 32);
}

fn run_random(whiteout: &'static str, default_cases: u32) {
    let base = TestDir::new();
    let (l0, l1) = build_lowers(&base);

    let cases = std::env::var("OVLRUN_DIFF_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cases);
    let seed = std::env::var("OVLRUN_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("differential (--whiteout {whiteout}): {cases} cases, OVLRUN_DIFF_SEED={seed}");
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        // Every shrink step mounts three filesystems (~50 ms); this bounds a failing run to minutes.
        max_shrink_iters: std::env::var("OVLRUN_DIFF_SHRINK")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1024),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let runs = Cell::new(0u32);
    let stats = RefCell::new(BTreeMap::new());
    let shrinking = Cell::new(false);
    let result = runner.run(&ops(), |ops| {
        runs.set(runs.get() + 1);
        let r = run_case(&base, &l0, &l1, &ops, &stats, &shrinking, whiteout);
        // Once a case failed, the rest are shrink steps: they do not count in the statistics.
        shrinking.set(shrinking.get() || r.is_err());
        r
    });
    eprintln!(
        "differential (--whiteout {whiteout}): {} sequences run (cases plus shrinking), seed {seed}",
        runs.get()
    );
    // What the steps answered through ovlrun: a run that is mostly ENOENT tests little.
    eprintln!(
        "differential: ovlrun step results (before any shrinking): {:?}",
        stats.borrow()
    );
    if let Err(e) = result {
        panic!(
            "ovlrun --whiteout {whiteout} differs from the kernel overlayfs (OVLRUN_DIFF_SEED={seed}):\n{e}"
        );
    }
}

/// Sequences the random test found, replayed on every run (proptest's regression files, in
/// code, with a line on what each caught).
#[test]
fn known_sequences_match_kernel_overlayfs() {
    require!(support::can_mount_fuse(), "mount FUSE (/dev/fuse)");
    require!(
        support::can_mount_kernel_overlay(),
        "mount the kernel overlayfs (userxattr)"
    );
    private_mount_ns();
    let base = TestDir::new();
    let (l0, l1) = build_lowers(&base);
    let s = |p: &str| p.to_owned();
    let sequences: Vec<(&str, Vec<Op>)> = vec![
        (
            // ovlrun showed the old a/c symlink at a/c (and another tree after remount) where the
            // kernel shows the opaque dir moved there with a/b.
            "lower dir onto a whiteout, exchanged with its parent, then a hard-linked lower copy-up",
            vec![
                Op::Unlink(s("b")),
                Op::Rename(s("a/b"), s("b"), Flags::None),
                Op::Rename(s("b"), s("a"), Flags::Exchange),
                Op::OpenRw(0, s("b/a/b")),
                Op::SetXattr(s("x"), "user.a", "1"),
                Op::Rename(s("a/x"), s("x/x/y"), Flags::Exchange),
                Op::Mkdir(s("x"), 0o700),
                Op::WriteFd(1, 3),
                Op::Chmod(s("x"), 0o755),
                Op::RemoveXattr(s("x")),
                Op::Truncate(s("a/x/c"), 5000),
                Op::Append(s("a"), 2),
            ],
        ),
        (
            // The kernel answers ESTALE renaming a copied-up symlink onto its own hard link;
            // POSIX (and ovlrun) say success with no change.
            "rename of a name onto another hard link of the same copied-up symlink",
            vec![
                Op::Unlink(s("y")),
                Op::Link(s("c"), s("y")),
                Op::Rename(s("c"), s("y"), Flags::None),
            ],
        ),
    ];
    let stats = RefCell::new(BTreeMap::new());
    let mut failures = Vec::new();
    for (what, ops) in &sequences {
        if let Err(e) = run_case(&base, &l0, &l1, ops, &stats, &Cell::new(false), "kernel") {
            failures.push(format!("{what}:\n{e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
