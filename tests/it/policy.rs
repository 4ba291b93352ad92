//! Session policies end to end, through the binary over a private `cp -a` of `examples/rootfs`:
//! discard, preserve (then `ls`, `diff`, `export`, `commit`, `discard`), commit and
//! commit-atomic, `run --resume`, and the rootfs lock between running sessions and commits.
//!
//! Every test has its own [`TestDir`] with `OVLRUN_STATE` in it, and runs as root with
//! `/dev/fuse` (skipped locally without them, failed under `CI`). Every `ovlrun` runs under a
//! time limit, so a hung session fails its test instead of hanging the run.
//!
//! The helpers marked `pub(crate)` are shared with `crash`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{
    self, Bg, EXIT_OWN_ERROR, Frozen, Out, TestDir, example_rootfs, ls, lstat, lstat_opt, mkdir_p,
    read_string, set_xattr, write,
};

/// How long one `ovlrun` may take before its test fails.
pub(crate) const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Root, `/dev/fuse`, and the busybox tree of `examples/rootfs`: what a session needs.
pub(crate) fn can_run_sessions() -> bool {
    example_rootfs().join("bin/busybox").is_file() && support::can_mount_fuse()
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// `cp -a SRC DST`: owners, modes, times, xattrs, hard links and device nodes kept.
#[track_caller]
pub(crate) fn copy_tree(src: &Path, dst: &Path) {
    run_cmd(Command::new("cp").arg("-a").arg(src).arg(dst)).expect_ok();
}

/// Removes `path` (a tree or a file) if it exists.
#[track_caller]
pub(crate) fn remove_all(path: &Path) {
    match lstat_opt(path) {
        None => {}
        Some(m) if m.is_dir() => {
            fs::remove_dir_all(path).unwrap_or_else(|e| panic!("rm -rf {}: {e}", path.display()))
        }
        Some(_) => fs::remove_file(path).unwrap_or_else(|e| panic!("rm {}: {e}", path.display())),
    }
}

/// One test's directory, state root and private rootfs.
pub(crate) struct Fixture {
    pub(crate) dir: TestDir,
    pub(crate) state: PathBuf,
    pub(crate) rootfs: PathBuf,
}

impl Fixture {
    /// A `cp -a` of `examples/rootfs` at `DIR/rootfs`, state root `DIR/state`.
    pub(crate) fn new() -> Fixture {
        let dir = TestDir::new();
        let rootfs = dir.join("rootfs");
        copy_tree(&example_rootfs(), &rootfs);
        Fixture {
            state: dir.join("state"),
            rootfs,
            dir,
        }
    }

    /// `ovlrun ARGS..` with `OVLRUN_STATE` set.
    pub(crate) fn ovlrun(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(support::ovlrun_bin());
        cmd.env("OVLRUN_STATE", &self.state)
            .env_remove("OVLRUN_FAULT_AFTER")
            .args(args);
        cmd
    }

    /// `ovlrun FLAGS.. --rootfs ROOTFS -- /bin/sh -c SCRIPT`.
    pub(crate) fn session_cmd(&self, flags: &[&str], script: &str) -> Command {
        let mut cmd = self.ovlrun(flags);
        cmd.arg("--rootfs")
            .arg(&self.rootfs)
            .args(["--", "/bin/sh", "-c", script]);
        cmd
    }

    /// Runs `sh -c SCRIPT` in a session with `flags`.
    pub(crate) fn sh(&self, flags: &[&str], script: &str) -> Out {
        run_cmd(&mut self.session_cmd(flags, script))
    }

    /// Runs SCRIPT with `--policy preserve`, expects exit 0 and returns the new session's id.
    #[track_caller]
    pub(crate) fn preserved(&self, script: &str) -> String {
        let before = self.session_ids();
        let out = self.sh(&["--policy", "preserve"], script);
        out.expect_ok();
        let new: Vec<String> = self
            .session_ids()
            .into_iter()
            .filter(|id| !before.contains(id))
            .collect();
        assert_eq!(
            new.len(),
            1,
            "expected exactly one new session dir, got {new:?}\n{}",
            out.context()
        );
        new.into_iter().next().unwrap()
    }

    pub(crate) fn sessions_dir(&self) -> PathBuf {
        self.state.join("sessions")
    }

    /// Names under `STATE/sessions` (none when it does not exist), sorted.
    pub(crate) fn session_ids(&self) -> Vec<String> {
        match fs::read_dir(self.sessions_dir()) {
            Ok(rd) => {
                let mut v: Vec<String> = rd
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("read_dir {}: {e}", self.sessions_dir().display()),
        }
    }

    /// The upper directory of session `id` (from its record).
    pub(crate) fn upper_of(&self, id: &str) -> PathBuf {
        let rec = self.sessions_dir().join(id).join("session.json");
        let v: serde_json::Value = serde_json::from_str(&read_string(&rec))
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", rec.display()));
        PathBuf::from(
            v["upper"]
                .as_str()
                .unwrap_or_else(|| panic!("no \"upper\" in {}: {v}", rec.display())),
        )
    }

    /// `ovlrun ls --json`, parsed.
    #[track_caller]
    pub(crate) fn ls_json(&self) -> Vec<serde_json::Value> {
        let out = run_cmd(&mut self.ovlrun(&["ls", "--json"]));
        out.expect_ok();
        match serde_json::from_str::<serde_json::Value>(&out.stdout) {
            Ok(serde_json::Value::Array(rows)) => rows,
            other => panic!(
                "ls --json is not a JSON array: {other:?}\n{}",
                out.context()
            ),
        }
    }

    /// The `ls --json` row of session `id`, if listed.
    pub(crate) fn ls_row(&self, id: &str) -> Option<serde_json::Value> {
        self.ls_json()
            .into_iter()
            .find(|r| r["id"].as_str() == Some(id))
    }

    #[track_caller]
    pub(crate) fn assert_no_sessions(&self, after: &str) {
        let left = self.session_ids();
        assert!(
            left.is_empty(),
            "{} holds {left:?} after {after}",
            self.sessions_dir().display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Running ovlrun

/// Runs `cmd` (stdin closed) to completion within [`RUN_TIMEOUT`]; SIGKILLs it and fails the
/// test when it takes longer. Its stdout is the lines it printed, each with a newline.
#[track_caller]
pub(crate) fn run_cmd(cmd: &mut Command) -> Out {
    Bg::spawn(cmd, RUN_TIMEOUT).wait()
}

// ---------------------------------------------------------------------------------------------
// Rootfs comparisons

/// `(mode, uid, gid, mtime s, mtime ns)` of every entry of an upper a commit installs (all
/// but whiteouts and AUFS markers), keyed by path relative to the upper (`""`: its root).
pub(crate) fn upper_metadata(upper: &Path) -> BTreeMap<PathBuf, (u32, u32, u32, i64, i64)> {
    fn walk(upper: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, (u32, u32, u32, i64, i64)>) {
        let p = upper.join(rel);
        let md = lstat(&p);
        if md.file_type().is_char_device() && md.rdev() == 0 {
            return;
        }
        if rel
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b".wh."))
        {
            return;
        }
        out.insert(
            rel.to_owned(),
            (
                md.mode() & 0o7777,
                md.uid(),
                md.gid(),
                md.mtime(),
                md.mtime_nsec(),
            ),
        );
        if md.is_dir() {
            for name in ls(&p) {
                walk(upper, &rel.join(name), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(upper, Path::new(""), &mut out);
    out
}

/// Asserts that every entry recorded by [`upper_metadata`] has that mode, owner and mtime in
/// `rootfs`.
#[track_caller]
fn assert_metadata_applied(
    upper_meta: &BTreeMap<PathBuf, (u32, u32, u32, i64, i64)>,
    rootfs: &Path,
) {
    let mut bad = Vec::new();
    for (rel, want) in upper_meta {
        let p = rootfs.join(rel);
        match lstat_opt(&p) {
            None => bad.push(format!("  /{}: missing", rel.display())),
            Some(md) => {
                let got = (
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid(),
                    md.mtime(),
                    md.mtime_nsec(),
                );
                if got != *want {
                    bad.push(format!(
                        "  /{}: upper (mode, uid, gid, mtime s, ns) {want:?}, rootfs {got:?}",
                        rel.display()
                    ));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "after the commit, the rootfs does not carry the metadata of the upper's entries \
         (what the session saw):\n{}",
        bad.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The session every policy test runs

/// Lower entries [`CHANGES`] acts on, added to the rootfs copy before the session.
fn seed_lower(root: &Path) {
    write(root.join("etc/mod.txt"), "keep\n");
    set_xattr(root.join("etc/mod.txt"), "user.test", b"lowerval");
    write(root.join("etc/old.txt"), "lower\n");
    write(root.join("etc/modeme"), "m\n");
    write(root.join("etc/ownme"), "o\n");
    mkdir_p(root.join("var/lib/app/sub"));
    write(root.join("var/lib/app/sub/f"), "deep\n");
    write(root.join("var/lib/app/a"), "a\n");
    write(root.join("home/user/x"), "x\n");
}

/// Creates files and dirs, modifies a lower file, deletes a lower file and a lower tree,
/// replaces a lower dir by an opaque one, makes a symlink and a hard link, chmod, chown.
const CHANGES: &str = "set -e
mkdir -p /opt/new/d
echo hi > /opt/new/d/f
echo changed >> /etc/mod.txt
rm /etc/old.txt
rm -rf /var/lib/app
rm -rf /home && mkdir /home && touch /home/new
ln -s /etc/motd /etc/motd.link
echo data > /opt/h1
ln /opt/h1 /opt/h2
chmod 600 /etc/modeme
chown 1000:1000 /etc/ownme
echo session-done";

/// `ovlrun diff` after [`CHANGES`], exactly.
const EXPECTED_DIFF: &[&str] = &[
    "C /etc/mod.txt",
    "C /etc/modeme",
    "A /etc/motd.link",
    "D /etc/old.txt",
    "C /etc/ownme",
    "C /home",
    "A /home/new",
    "D /home/user",
    "A /opt",
    "A /opt/h1",
    "A /opt/h2",
    "A /opt/new",
    "A /opt/new/d",
    "A /opt/new/d/f",
    "D /var/lib/app",
];

/// Paths (relative) [`CHANGES`] touches; everything outside them must stay as it was.
const TOUCHED: &[&str] = &[
    "etc/mod.txt",
    "etc/modeme",
    "etc/motd.link",
    "etc/old.txt",
    "etc/ownme",
    "home",
    "opt",
    "var/lib/app",
];

/// A fixture with [`seed_lower`] applied, and the snapshot of its rootfs then.
fn seeded() -> (Fixture, Frozen) {
    let f = Fixture::new();
    seed_lower(&f.rootfs);
    let before = Frozen::take(&f.rootfs);
    (f, before)
}

/// Compares line sets entry by entry: what is missing, what is extra.
#[track_caller]
fn assert_same_lines(what: &str, got: &[String], want: &[&str], context: &str) {
    let got_set: BTreeSet<&str> = got.iter().map(String::as_str).collect();
    let want_set: BTreeSet<&str> = want.iter().copied().collect();
    let missing: Vec<&&str> = want_set.difference(&got_set).collect();
    let extra: Vec<&&str> = got_set.difference(&want_set).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && got.len() == want.len(),
        "{what}: missing {missing:?}, unexpected {extra:?} (got {} lines, want {})\n{context}",
        got.len(),
        want.len()
    );
}

/// Checks a rootfs into which [`CHANGES`] were committed; `before` is the snapshot taken
/// before the session; `upper_xattr`: the test set `user.added=newval` on the upper's
/// `/opt/new/d/f` before committing.
#[track_caller]
fn assert_committed(rootfs: &Path, before: &Frozen, upper_xattr: bool) {
    let r = |p: &str| rootfs.join(p);
    // Modified lower file: new content, its lower xattr carried through copy-up and commit.
    assert_eq!(read_string(r("etc/mod.txt")), "keep\nchanged\n");
    assert_eq!(
        xattr::get(r("etc/mod.txt"), "user.test").unwrap(),
        Some(b"lowerval".to_vec()),
        "user.test on /etc/mod.txt"
    );
    // Deletions.
    assert!(lstat_opt(r("etc/old.txt")).is_none(), "/etc/old.txt kept");
    assert!(lstat_opt(r("var/lib/app")).is_none(), "/var/lib/app kept");
    assert!(lstat(r("var/lib")).is_dir());
    // Opaque replacement: only the new entry.
    assert_eq!(
        ls(r("home")),
        vec!["new"],
        "/home is not only the new entry"
    );
    assert!(lstat(r("home/new")).is_file());
    assert_eq!(lstat(r("home/new")).len(), 0);
    // New files and dirs.
    assert_eq!(read_string(r("opt/new/d/f")), "hi\n");
    assert!(lstat(r("opt/new/d")).is_dir());
    if upper_xattr {
        assert_eq!(
            xattr::get(r("opt/new/d/f"), "user.added").unwrap(),
            Some(b"newval".to_vec()),
            "user.added on /opt/new/d/f"
        );
    }
    // No overlay-internal xattr or whiteout leaks into the rootfs.
    let leaks = support::overlay_internals_visible(rootfs);
    assert!(
        leaks.is_empty(),
        "overlay internals in the rootfs: {leaks:?}"
    );
    // Symlink.
    let link = lstat(r("etc/motd.link"));
    assert!(link.file_type().is_symlink(), "/etc/motd.link: {link:?}");
    assert_eq!(
        fs::read_link(r("etc/motd.link")).unwrap(),
        Path::new("/etc/motd")
    );
    // Hard link: one inode, two names.
    let (h1, h2) = (lstat(r("opt/h1")), lstat(r("opt/h2")));
    assert_eq!(read_string(r("opt/h1")), "data\n");
    assert_eq!(
        (h1.dev(), h1.ino()),
        (h2.dev(), h2.ino()),
        "/opt/h1 and /opt/h2 are not one inode"
    );
    assert_eq!(h1.nlink(), 2, "/opt/h1 link count");
    // chmod, chown.
    assert_eq!(lstat(r("etc/modeme")).mode() & 0o7777, 0o600);
    assert_eq!(read_string(r("etc/modeme")), "m\n");
    let own = lstat(r("etc/ownme"));
    assert_eq!((own.uid(), own.gid()), (1000, 1000), "/etc/ownme owner");
    assert_eq!(read_string(r("etc/ownme")), "o\n");
    // Everything else exactly as before; nothing else added.
    let touched = |p: &Path| TOUCHED.iter().any(|t| p.starts_with(t));
    let after = support::tree_snapshot(rootfs);
    let mut bad = Vec::new();
    for (p, info) in &before.tree {
        if touched(p) {
            continue;
        }
        match after.get(p) {
            Some(a) if a == info => {}
            Some(a) => bad.push(format!(
                "  /{}: before {info:?}\n    after {a:?}",
                p.display()
            )),
            None => bad.push(format!("  /{}: gone", p.display())),
        }
    }
    for p in after.keys() {
        if !before.tree.contains_key(p) && !touched(p) {
            bad.push(format!("  /{}: added", p.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "the commit changed paths the session did not touch:\n{}",
        bad.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Policies

#[test]
fn discard_leaves_rootfs_identical_and_no_session() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let (f, before) = seeded();
    let out = f.sh(&["--policy", "discard"], CHANGES);
    out.expect_ok();
    assert!(out.stdout.contains("session-done"), "{}", out.context());
    before.assert_unchanged(&f.rootfs, "--policy discard");
    f.assert_no_sessions("--policy discard");

    // The default policy of a new session is discard too.
    let out = f.sh(&[], CHANGES);
    out.expect_ok();
    before.assert_unchanged(&f.rootfs, "the default policy");
    f.assert_no_sessions("the default policy");

    // `ovlrun discard ID` of a kept session.
    let id = f.preserved(CHANGES);
    run_cmd(&mut f.ovlrun(&["discard", &id])).expect_ok();
    before.assert_unchanged(&f.rootfs, "ovlrun discard");
    f.assert_no_sessions("ovlrun discard");
    assert!(f.ls_row(&id).is_none(), "ls still lists {id}");
}

/// Makes a file immutable (chattr +i) until dropped, so nobody can unlink it.
pub(crate) struct Immutable(PathBuf);

impl Immutable {
    pub(crate) fn set(path: PathBuf) -> Immutable {
        run_cmd(Command::new("chattr").arg("+i").arg(&path)).expect_ok();
        Immutable(path)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// A discarded session records nothing at its end (that would cost two fsyncs for a record
/// about to go); one whose discard fails must still be kept with its end recorded.
#[test]
fn a_discard_that_fails_keeps_the_session_with_its_end_recorded() {
    require!(
        can_run_sessions() && support::is_root(),
        "run sessions as root (chattr +i)"
    );
    let f = Fixture::new();
    let mut bg = Bg::spawn(
        &mut f.session_cmd(
            &["--policy", "discard"],
            "echo x > /kept && echo ready && sleep 1 && exit 3",
        ),
        RUN_TIMEOUT,
    );
    bg.wait_line("ready");
    let ids = f.session_ids();
    assert_eq!(ids.len(), 1, "one running session: {ids:?}");
    let kept = f.upper_of(&ids[0]).join("kept");
    let _pin = Immutable::set(kept.clone());
    let out = bg.wait();
    assert_eq!(out.status.code(), Some(3), "{}", out.context());
    assert!(
        out.stderr.contains("cannot discard session") && out.stderr.contains("it is kept"),
        "{}",
        out.context()
    );
    let row = f
        .ls_row(&ids[0])
        .unwrap_or_else(|| panic!("ls --json does not list {}: {:?}", ids[0], f.ls_json()));
    assert_eq!(row["status"], "preserved", "{row}");
    assert_eq!(row["exit_code"], 3, "{row}");
    assert!(
        row["ended"].is_number() || row["ended"].is_string(),
        "{row}"
    );
    assert_eq!(read_string(&kept), "x\n");
}

#[test]
fn preserve_keeps_and_lists_the_session_then_commit_applies_it() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let (f, before) = seeded();
    let id = f.preserved(CHANGES);
    before.assert_unchanged(&f.rootfs, "--policy preserve");

    // ls: text and JSON.
    let out = run_cmd(&mut f.ovlrun(&["ls"]));
    out.expect_ok();
    assert!(
        out.stdout.lines().any(|l| l.starts_with(&id)),
        "ls does not list {id}\n{}",
        out.context()
    );
    let row = f
        .ls_row(&id)
        .unwrap_or_else(|| panic!("ls --json does not list {id}: {:?}", f.ls_json()));
    assert_eq!(row["status"], "preserved", "{row}");
    assert_eq!(row["state"], "preserved", "{row}");
    assert!(row["size"].as_u64().is_some_and(|s| s > 0), "size: {row}");
    assert_eq!(
        Path::new(row["rootfs"].as_str().unwrap()),
        f.rootfs.as_path(),
        "{row}"
    );

    // diff: exactly the expected lines.
    let out = run_cmd(&mut f.ovlrun(&["diff", &id]));
    out.expect_ok();
    let lines: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
    assert_same_lines("ovlrun diff", &lines, EXPECTED_DIFF, &out.context());
    before.assert_unchanged(&f.rootfs, "ovlrun diff");

    // A user xattr set on a new file in the upper (busybox has no setfattr): the format
    // carries it into the rootfs.
    let upper = f.upper_of(&id);
    set_xattr(upper.join("opt/new/d/f"), "user.added", b"newval");
    let upper_meta = upper_metadata(&upper);

    let out = run_cmd(&mut f.ovlrun(&["commit", &id]));
    out.expect_ok();
    assert_committed(&f.rootfs, &before, true);
    f.assert_no_sessions("ovlrun commit");
    assert_metadata_applied(&upper_meta, &f.rootfs);
}

#[test]
fn preserve_then_atomic_commit_applies_it() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let (f, before) = seeded();
    let id = f.preserved(CHANGES);
    let upper = f.upper_of(&id);
    set_xattr(upper.join("opt/new/d/f"), "user.added", b"newval");
    let upper_meta = upper_metadata(&upper);
    run_cmd(&mut f.ovlrun(&["commit", &id, "--atomic"])).expect_ok();
    assert_committed(&f.rootfs, &before, true);
    f.assert_no_sessions("ovlrun commit --atomic");
    assert!(
        lstat_opt(f.dir.join(".rootfs.ovlrun-txn")).is_none(),
        "transaction dir left after a successful commit"
    );
    assert_metadata_applied(&upper_meta, &f.rootfs);
}

#[test]
fn policy_commit_applies_every_kind_of_change() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let (f, before) = seeded();
    f.sh(&["--policy", "commit"], CHANGES).expect_ok();
    assert_committed(&f.rootfs, &before, false);
    f.assert_no_sessions("--policy commit");
}

#[test]
fn policy_commit_atomic_applies_every_kind_of_change() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let (f, before) = seeded();
    f.sh(&["--policy", "commit-atomic"], CHANGES).expect_ok();
    assert_committed(&f.rootfs, &before, false);
    f.assert_no_sessions("--policy commit-atomic");
    assert!(
        lstat_opt(f.dir.join(".rootfs.ovlrun-txn")).is_none(),
        "transaction dir left after a successful commit"
    );
}

#[test]
fn policy_commit_with_upper_flag_applies_and_removes_it() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let (f, before) = seeded();
    let upper = f.dir.join("my-upper");
    let upper_arg = upper.to_str().unwrap();
    f.sh(&["--policy", "commit", "--upper", upper_arg], CHANGES)
        .expect_ok();
    assert_committed(&f.rootfs, &before, false);
    f.assert_no_sessions("--policy commit --upper");
}

#[test]
fn a_no_change_commit_rewrites_nothing() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let f = Fixture::new();
    seed_lower(&f.rootfs);
    let before = Frozen::take(&f.rootfs);
    let read_only = "set -e; cat /etc/passwd /etc/motd /etc/mod.txt /var/lib/app/sub/f >/dev/null; \
                     ls -lR /etc /home /var /usr/bin >/dev/null; find /bin -type f | head -n 1";
    for policy in ["commit", "commit-atomic"] {
        let mut cmd = f.ovlrun(&["--policy", policy, "--rootfs"]);
        cmd.arg(&f.rootfs).args(["--", "true"]);
        run_cmd(&mut cmd).expect_ok();
        before.assert_unchanged(&f.rootfs, &format!("--policy {policy} -- true"));
        f.assert_no_sessions(&format!("--policy {policy} -- true"));

        f.sh(&["--policy", policy], read_only).expect_ok();
        before.assert_unchanged(&f.rootfs, &format!("--policy {policy} (a reading session)"));
        f.assert_no_sessions(&format!("--policy {policy} (a reading session)"));
    }
    // The same through a kept session and `ovlrun commit ID [--atomic]`: one with its own
    // upper, as a preserve run that changed nothing keeps no session of the state root.
    for atomic in [false, true] {
        let upper = f.dir.join(format!("upper-{atomic}"));
        let before_ids = f.session_ids();
        let kept = f.sh(
            &["--policy", "preserve", "--upper", &upper.to_string_lossy()],
            read_only,
        );
        kept.expect_ok();
        let id = f
            .session_ids()
            .into_iter()
            .find(|id| !before_ids.contains(id))
            .unwrap_or_else(|| panic!("no session kept\n{}", kept.context()));
        let mut args = vec!["commit", id.as_str()];
        if atomic {
            args.push("--atomic");
        }
        run_cmd(&mut f.ovlrun(&args)).expect_ok();
        before.assert_unchanged(&f.rootfs, &format!("ovlrun {}", args.join(" ")));
        f.assert_no_sessions(&format!("ovlrun {}", args.join(" ")));
    }
}

// ---------------------------------------------------------------------------------------------
// diff, export

#[test]
fn diff_json_matches_the_text_diff_and_unknown_ids_fail() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let (f, _) = seeded();
    let id = f.preserved(CHANGES);
    let text = run_cmd(&mut f.ovlrun(&["diff", &id]));
    text.expect_ok();
    let json = run_cmd(&mut f.ovlrun(&["diff", &id, "--json"]));
    json.expect_ok();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json.stdout)
        .unwrap_or_else(|e| panic!("diff --json is not a JSON array: {e}\n{}", json.context()));
    let from_json: Vec<String> = rows
        .iter()
        .map(|r| {
            let (c, p) = (r["change"].as_str(), r["path"].as_str());
            match (c, p) {
                (Some(c @ ("A" | "C" | "D")), Some(p)) if p.starts_with('/') => format!("{c} {p}"),
                _ => panic!("diff --json row {r} is not {{change: A|C|D, path: /..}}"),
            }
        })
        .collect();
    let from_text: Vec<String> = text.stdout.lines().map(str::to_owned).collect();
    assert_eq!(
        from_json,
        from_text,
        "diff --json and diff disagree\n{}\n{}",
        json.context(),
        text.context()
    );
    assert_same_lines(
        "ovlrun diff --json",
        &from_json,
        EXPECTED_DIFF,
        &json.context(),
    );

    // An id no session has (ids are 12 hex digits; `integrity` tries the malformed ones).
    for args in [
        &["diff", "fffffffff000"][..],
        &["diff", "fffffffff000", "--json"],
    ] {
        let out = run_cmd(&mut f.ovlrun(args));
        out.expect_code(EXIT_OWN_ERROR);
        assert!(
            out.stderr.contains("fffffffff000") && out.stderr.contains("no session"),
            "the error does not name the unknown session\n{}",
            out.context()
        );
        assert!(out.stdout.is_empty(), "{}", out.context());
    }
}

/// One entry of a layer tar, as read back.
#[derive(Debug)]
struct TarEntry {
    kind: tar::EntryType,
    /// Header fields a reader must be able to parse (an error kept as text, checked last so
    /// the other checks still run).
    mode: Result<u32, String>,
    uid: Result<u64, String>,
    gid: Result<u64, String>,
    data: Vec<u8>,
    link: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn read_layer(bytes: &[u8]) -> BTreeMap<String, TarEntry> {
    let mut ar = tar::Archive::new(bytes);
    let mut out = BTreeMap::new();
    for e in ar.entries().expect("tar entries") {
        let mut e = e.expect("tar entry");
        let name = String::from_utf8_lossy(&e.path_bytes())
            .trim_end_matches('/')
            .to_owned();
        let mut xattrs = BTreeMap::new();
        if let Some(exts) = e.pax_extensions().expect("pax extensions") {
            for ext in exts {
                let ext = ext.expect("pax record");
                let key = ext.key().expect("pax key").to_owned();
                if let Some(x) = key.strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(x.to_owned(), ext.value_bytes().to_vec());
                }
            }
        }
        let h = e.header();
        let (kind, mode, uid, gid) = (
            h.entry_type(),
            h.mode().map_err(|e| e.to_string()),
            h.uid().map_err(|e| e.to_string()),
            h.gid().map_err(|e| e.to_string()),
        );
        let link = e.link_name().expect("link name").map(|l| l.into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("tar data");
        let prev = out.insert(
            name.clone(),
            TarEntry {
                kind,
                mode,
                uid,
                gid,
                data,
                link,
                xattrs,
            },
        );
        assert!(prev.is_none(), "the layer holds {name} twice");
    }
    out
}

#[test]
fn export_writes_an_oci_layer() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let (f, before) = seeded();
    let id = f.preserved(CHANGES);
    let upper = f.upper_of(&id);
    set_xattr(upper.join("opt/new/d/f"), "user.added", b"newval");
    let layer = f.dir.join("layer.tar");
    run_cmd(&mut f.ovlrun(&["export", &id, "-o", layer.to_str().unwrap()])).expect_ok();
    let bytes = fs::read(&layer).unwrap();
    // `-o -` writes the same layer to stdout.
    let mut cmd = f.ovlrun(&["export", &id, "-o", "-"]);
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "export -o -: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == bytes,
        "export -o - differs from export -o FILE"
    );

    let entries = read_layer(&bytes);
    let names: Vec<&str> = entries.keys().map(String::as_str).collect();
    let want = [
        "etc",
        "etc/.wh.old.txt",
        "etc/mod.txt",
        "etc/modeme",
        "etc/motd.link",
        "etc/ownme",
        "home",
        "home/.wh..wh..opq",
        "home/new",
        "opt",
        "opt/h1",
        "opt/h2",
        "opt/new",
        "opt/new/d",
        "opt/new/d/f",
        "var",
        "var/lib",
        "var/lib/.wh.app",
    ];
    assert_eq!(names, want, "layer entries");
    let e = |n: &str| &entries[n];
    use tar::EntryType as T;
    for marker in ["etc/.wh.old.txt", "home/.wh..wh..opq", "var/lib/.wh.app"] {
        assert_eq!(e(marker).kind, T::Regular, "{marker}: {:?}", e(marker));
        assert!(e(marker).data.is_empty(), "{marker} is not empty");
    }
    for dir in [
        "etc",
        "home",
        "opt",
        "opt/new",
        "opt/new/d",
        "var",
        "var/lib",
    ] {
        assert_eq!(e(dir).kind, T::Directory, "{dir}: {:?}", e(dir));
    }
    assert_eq!(e("etc/mod.txt").kind, T::Regular);
    assert_eq!(e("etc/mod.txt").data, b"keep\nchanged\n");
    assert_eq!(
        e("etc/mod.txt").xattrs.get("user.test").map(Vec::as_slice),
        Some(&b"lowerval"[..]),
        "pax xattr of etc/mod.txt: {:?}",
        e("etc/mod.txt")
    );
    assert_eq!(e("opt/new/d/f").data, b"hi\n");
    assert_eq!(
        e("opt/new/d/f").xattrs.get("user.added").map(Vec::as_slice),
        Some(&b"newval"[..]),
        "pax xattr of opt/new/d/f: {:?}",
        e("opt/new/d/f")
    );
    for (n, en) in &entries {
        assert!(
            en.xattrs.keys().all(|k| !k.contains("overlay")),
            "{n} exports an overlay-internal xattr: {:?}",
            en.xattrs.keys()
        );
        assert!(
            !matches!(en.kind, T::Char | T::Block),
            "{n} is a device in the layer (a whiteout must be .wh.): {en:?}"
        );
    }
    assert_eq!(e("etc/motd.link").kind, T::Symlink);
    assert_eq!(
        e("etc/motd.link").link.as_deref(),
        Some(Path::new("/etc/motd"))
    );
    assert_eq!(e("opt/h1").kind, T::Regular);
    assert_eq!(e("opt/h1").data, b"data\n");
    assert_eq!(e("opt/h2").kind, T::Link, "opt/h2: {:?}", e("opt/h2"));
    assert_eq!(e("opt/h2").link.as_deref(), Some(Path::new("opt/h1")));
    assert_eq!(e("home/new").kind, T::Regular);
    assert!(e("home/new").data.is_empty());
    assert_eq!(e("etc/modeme").mode.clone().map(|m| m & 0o7777), Ok(0o600));
    assert_eq!(
        (e("etc/ownme").uid.clone(), e("etc/ownme").gid.clone()),
        (Ok(1000), Ok(1000))
    );
    assert_eq!(e("etc/ownme").data, b"o\n");
    // Every header is readable by a strict reader (the `tar` crate): numeric fields hold
    // numbers, markers included.
    let unreadable: Vec<String> = entries
        .iter()
        .filter_map(|(n, en)| {
            let errs: Vec<&String> = [
                en.mode.as_ref().err(),
                en.uid.as_ref().err(),
                en.gid.as_ref().err(),
            ]
            .into_iter()
            .flatten()
            .collect();
            (!errs.is_empty()).then(|| format!("  {n}: {errs:?}"))
        })
        .collect();
    assert!(
        unreadable.is_empty(),
        "layer headers with unparseable numeric fields:\n{}",
        unreadable.join("\n")
    );

    // Exporting changes nothing and keeps the session.
    before.assert_unchanged(&f.rootfs, "ovlrun export");
    assert!(f.ls_row(&id).is_some(), "export removed session {id}");
}

// ---------------------------------------------------------------------------------------------
// resume

#[test]
fn resume_runs_on_kept_changes_and_commit_applies_both() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let f = Fixture::new();
    let motd = read_string(f.rootfs.join("etc/motd"));
    let before = Frozen::take(&f.rootfs);
    let id = f.preserved("echo one > /etc/f");
    let out = run_cmd(&mut f.ovlrun(&[
        "run",
        "--resume",
        &id,
        "--",
        "sh",
        "-c",
        "cat /etc/f; echo more >> /etc/f; echo extra >> /etc/motd",
    ]));
    out.expect_ok();
    assert_eq!(out.stdout, "one\n", "{}", out.context());
    before.assert_unchanged(&f.rootfs, "run --resume");
    // Default policy of a resumed session: preserve.
    let row = f
        .ls_row(&id)
        .unwrap_or_else(|| panic!("{id} gone after run --resume: {:?}", f.ls_json()));
    assert_eq!(row["state"], "preserved", "{row}");
    assert_eq!(
        f.session_ids(),
        vec![id.clone()],
        "run --resume made a new session"
    );

    let diff = run_cmd(&mut f.ovlrun(&["diff", &id]));
    diff.expect_ok();
    let lines: Vec<String> = diff.stdout.lines().map(str::to_owned).collect();
    assert_same_lines(
        "diff after resume",
        &lines,
        &["A /etc/f", "C /etc/motd"],
        &diff.context(),
    );

    run_cmd(&mut f.ovlrun(&["commit", &id])).expect_ok();
    assert_eq!(read_string(f.rootfs.join("etc/f")), "one\nmore\n");
    assert_eq!(
        read_string(f.rootfs.join("etc/motd")),
        format!("{motd}extra\n")
    );
    f.assert_no_sessions("commit after resume");
}

// ---------------------------------------------------------------------------------------------
// The rootfs lock

/// Starts a `--policy preserve` session that prints `started`, then sleeps `secs`.
fn start_sleeper(f: &Fixture, secs: u32, flags: &[&str]) -> Bg {
    let mut flags = flags.to_vec();
    if !flags.contains(&"--policy") {
        flags.extend(["--policy", "preserve"]);
    }
    let mut bg = Bg::spawn(
        &mut f.session_cmd(&flags, &format!("echo started; sleep {secs}; echo slept")),
        RUN_TIMEOUT,
    );
    bg.wait_line("started");
    bg
}

#[test]
fn commit_while_a_session_runs_fails_or_waits() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let f = Fixture::new();
    let other = f.preserved("echo other > /etc/other");
    let before = Frozen::take(&f.rootfs);

    let mut sleeper = start_sleeper(&f, 6, &[]);
    for args in [&["commit", &other][..], &["commit", &other, "--atomic"]] {
        let out = run_cmd(&mut f.ovlrun(args));
        assert!(
            sleeper.try_status().is_none(),
            "the sleeping session ended too early for this test\n{}",
            out.context()
        );
        out.expect_code(EXIT_OWN_ERROR);
        assert!(
            out.stderr.contains("--wait"),
            "a refused commit does not mention --wait\n{}",
            out.context()
        );
        let row = f
            .ls_row(&other)
            .unwrap_or_else(|| panic!("refused commit lost session {other}\n{}", out.context()));
        assert_eq!(row["state"], "preserved", "{row}");
        assert!(f.upper_of(&other).join("etc/other").is_file());
        before.assert_unchanged(&f.rootfs, "a refused commit");
    }

    // With --wait: blocks while the session runs, then commits.
    let mut waiting = Bg::spawn(&mut f.ovlrun(&["commit", &other, "--wait"]), RUN_TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));
    if sleeper.try_status().is_none() {
        assert!(
            waiting.try_status().is_none(),
            "commit --wait ended while the session still runs: {}",
            waiting.wait().context()
        );
    }
    let slept = sleeper.wait();
    slept.expect_ok();
    let committed = waiting.wait();
    committed.expect_ok();
    assert_eq!(read_string(f.rootfs.join("etc/other")), "other\n");
    assert!(f.ls_row(&other).is_none(), "{other} kept after its commit");
    // The sleeper's own session changed nothing: its preserve policy keeps nothing.
    assert_eq!(f.session_ids().len(), 0, "{:?}", f.session_ids());
}

#[test]
fn policy_commit_at_the_end_of_a_session_is_refused_while_another_runs() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let f = Fixture::new();
    let before = Frozen::take(&f.rootfs);

    // Without --wait: the commit is refused while another session runs; the session is kept.
    let mut sleeper = start_sleeper(&f, 5, &[]);
    let out = f.sh(&["--policy", "commit"], "echo a > /etc/a");
    assert!(
        sleeper.try_status().is_none(),
        "the sleeping session ended too early for this test"
    );
    out.expect_code(EXIT_OWN_ERROR);
    assert!(out.stderr.contains("--wait"), "{}", out.context());
    before.assert_unchanged(&f.rootfs, "a refused --policy commit");
    let kept: Vec<serde_json::Value> = f
        .ls_json()
        .into_iter()
        .filter(|r| r["state"] == "preserved")
        .collect();
    assert!(
        kept.iter().any(|r| f
            .upper_of(r["id"].as_str().unwrap())
            .join("etc/a")
            .is_file()),
        "the refused session's changes are not kept: {kept:?}\n{}",
        out.context()
    );
    sleeper.wait().expect_ok();
}

#[test]
fn two_sessions_at_once_over_one_rootfs_both_commit_with_wait() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let f = Fixture::new();
    let script = |name: &str, secs: u32| {
        format!("echo {name} > /etc/{name}; echo started; sleep {secs}; cat /etc/{name}")
    };
    let mut a = Bg::spawn(
        &mut f.session_cmd(&["--policy", "commit", "--wait"], &script("a", 4)),
        RUN_TIMEOUT,
    );
    let mut b = Bg::spawn(
        &mut f.session_cmd(&["--policy", "commit-atomic", "--wait"], &script("b", 3)),
        RUN_TIMEOUT,
    );
    a.wait_line("started");
    b.wait_line("started");
    // Both run at once: each sees only its own change.
    assert!(
        a.try_status().is_none() && b.try_status().is_none(),
        "a session ended before the other started"
    );
    let (oa, ob) = (a.wait(), b.wait());
    oa.expect_ok();
    ob.expect_ok();
    assert_eq!(oa.stdout, "started\na\n", "{}", oa.context());
    assert_eq!(ob.stdout, "started\nb\n", "{}", ob.context());
    assert_eq!(read_string(f.rootfs.join("etc/a")), "a\n");
    assert_eq!(read_string(f.rootfs.join("etc/b")), "b\n");
    f.assert_no_sessions("two committed sessions");
}

// ---------------------------------------------------------------------------------------------
// Sessions over several trees (issue 16 item 8): `--rootfs A:B:C` and `--layer SESSION`

/// `--rootfs TOP:ROOTFS`: the session sees TOP over the rootfs; its diff is against the two as
/// one tree; a commit policy is refused before anything is made; neither tree changes.
#[test]
fn a_session_over_two_trees_sees_and_diffs_them_as_one() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let f = Fixture::new();
    let top = f.dir.join("top");
    mkdir_p(top.join("etc"));
    write(top.join("etc/motd"), "from the top tree\n");
    write(top.join("only-top"), "top\n");
    let (before_top, before_root) = (Frozen::take(&top), Frozen::take(&f.rootfs));
    let stack = format!("{}:{}", top.display(), f.rootfs.display());

    let out = run_cmd(&mut f.ovlrun(&[
        "--rootfs",
        &stack,
        "--policy",
        "preserve",
        "--",
        "/bin/sh",
        "-c",
        "cat /etc/motd /only-top; test -x /bin/busybox && echo has-busybox; \
         echo more >> /only-top; echo new > /new; rm /etc/motd",
    ]));
    out.expect_ok();
    assert_eq!(
        out.stdout,
        "from the top tree\ntop\nhas-busybox\n",
        "{}",
        out.context()
    );
    let (id, _) = out.kept_session();
    run_cmd(&mut f.ovlrun(&["diff", &id]))
        .expect_ok()
        .expect_stdout(&["D /etc/motd", "A /new", "C /only-top"]);
    let commit = run_cmd(&mut f.ovlrun(&["commit", &id]));
    commit.expect_own_error(&["stands on 1 layer(s)", "ovlrun export"]);
    run_cmd(&mut f.ovlrun(&["discard", &id])).expect_ok();

    let refused =
        run_cmd(&mut f.ovlrun(&["--rootfs", &stack, "--policy", "commit", "--", "/bin/true"]));
    refused.expect_own_error(&["--policy commit", "merges into one rootfs"]);
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.context());
    f.assert_no_sessions("a refused commit over two trees");
    before_top.assert_unchanged(&top, "sessions over top:rootfs");
    before_root.assert_unchanged(&f.rootfs, "sessions over top:rootfs");
}

/// `--layer S`: a new session over a kept one sees its changes (deletions too) without
/// changing them; the new session's diff is its own; the kept session cannot go (discard,
/// commit, resume) while the new one stands on it; export of the new one works.
#[test]
fn a_kept_session_is_a_layer_for_the_next() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let f = Fixture::new();
    let before_root = Frozen::take(&f.rootfs);
    let base = f.preserved("mkdir -p /opt/cache && echo v1 > /opt/cache/lib && rm /etc/motd");
    let base_upper = f.upper_of(&base);
    let before_base = Frozen::take(&base_upper);

    let out = run_cmd(&mut f.ovlrun(&[
        "--layer",
        &base,
        "--name",
        "step2",
        "--policy",
        "preserve",
        "--",
        "/bin/sh",
        "-c",
        "cat /opt/cache/lib; test -e /etc/motd && echo motd-back; \
         echo v2 > /opt/cache/lib; echo built > /opt/out",
    ]));
    out.expect_ok();
    assert_eq!(out.stdout, "v1\n", "{}", out.context());
    run_cmd(&mut f.ovlrun(&["diff", "step2"]))
        .expect_ok()
        .expect_stdout(&["C /opt/cache/lib", "A /opt/out"]);

    for verb in [&["discard", base.as_str()][..], &["commit", &base]] {
        let refused = run_cmd(&mut f.ovlrun(verb));
        refused.expect_own_error(&["is a layer of session"]);
    }
    let resumed = run_cmd(&mut f.ovlrun(&["run", "--resume", &base, "--", "/bin/true"]));
    resumed.expect_own_error(&["is a layer of session"]);
    run_cmd(&mut f.ovlrun(&["commit", "step2"])).expect_own_error(&["merges into one rootfs"]);

    let tar = f.dir.join("step2.tar");
    run_cmd(&mut f.ovlrun(&["export", "step2", "-o", tar.to_str().unwrap()])).expect_ok();
    let listing = run_cmd(Command::new("tar").arg("tf").arg(&tar));
    listing.expect_ok();
    assert!(
        listing
            .stdout
            .lines()
            .any(|l| l.trim_end_matches('/') == "opt/out"),
        "{}",
        listing.context()
    );
    before_base.assert_unchanged(&base_upper, "a session layered on it");

    // A layer of a layer: step3 over step2 sees both.
    let out = run_cmd(&mut f.ovlrun(&[
        "--layer",
        "step2",
        "--",
        "/bin/sh",
        "-c",
        "cat /opt/cache/lib /opt/out",
    ]));
    out.expect_ok();
    assert_eq!(out.stdout, "v2\nbuilt\n", "{}", out.context());

    // A sweep takes the session on top before the one under it.
    run_cmd(&mut f.ovlrun(&["discard", "--all"])).expect_ok();
    f.assert_no_sessions("after discarding both");
    before_root.assert_unchanged(&f.rootfs, "sessions layered on a kept one");
}
