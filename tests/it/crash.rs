//! Crash tests for `commit --atomic`: a commit killed at every journal record
//! (`OVLRUN_FAULT_AFTER=N`) and at random times (SIGKILL after 0-50 ms, or anywhere within
//! a fault-free commit's duration), then recovery
//! (`ovlrun recover`, or by itself when the next session takes the rootfs's lock); the rootfs
//! must then be exactly the old tree or exactly the new one, and a rolled-back session must
//! still be there to commit again.
//!
//! "Exactly" is a full description of the tree ([`tree_state`]): paths, types, modes, owners,
//! sizes, contents (BLAKE3), symlink targets, xattrs, hard-link groups, and the mtimes of files,
//! symlinks and directories (the rootfs's own directory included). The old tree is the rootfs
//! before the commit; the new tree is the rootfs after a commit of the same session that no
//! fault interrupted. Every attempt starts from the same pristine copies of the rootfs and the
//! state root, restored at the same paths (the session record names both).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::policy::{Fixture, RUN_TIMEOUT, can_run_sessions, copy_tree, remove_all, run_cmd};
use crate::support::{Bg, Out, ls, lstat, lstat_opt, mkdir_p, set_xattr, symlink, write};

/// SIGKILL as an exit code (128 + 9).
const KILLED: i32 = 137;

/// A full description of a tree: relative path -> one line with everything that must match.
type Tree = BTreeMap<String, String>;

/// Describes every entry under `root` (not following symlinks): type, mode, owner, size,
/// mtime (s, ns), BLAKE3 of the content, symlink target, every xattr, link count and hard-link
/// group (the first path of the same inode, since inode numbers differ between copies).
pub(crate) fn tree_state(root: &Path) -> Tree {
    let mut out = Tree::new();
    let mut groups: HashMap<(u64, u64), String> = HashMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let p = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let md = lstat(&p);
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir".to_owned()
        } else if ft.is_file() {
            "file".to_owned()
        } else if ft.is_symlink() {
            "symlink".to_owned()
        } else if ft.is_fifo() {
            "fifo".to_owned()
        } else if ft.is_socket() {
            "socket".to_owned()
        } else if ft.is_char_device() {
            format!("char {:x}", md.rdev())
        } else {
            format!("block {:x}", md.rdev())
        };
        let mut line = format!(
            "{kind} mode={:o} owner={}:{} mtime={}.{:09}",
            md.mode() & 0o7777,
            md.uid(),
            md.gid(),
            md.mtime(),
            md.mtime_nsec()
        );
        if !ft.is_dir() {
            line.push_str(&format!(" size={} nlink={}", md.len(), md.nlink()));
            if md.nlink() > 1 {
                let first = groups.entry((md.dev(), md.ino())).or_insert(rel.clone());
                line.push_str(&format!(" inode-of=/{first}"));
            }
        }
        if ft.is_file() {
            let mut h = blake3::Hasher::new();
            let mut f = fs::File::open(&p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f
                    .read(&mut buf)
                    .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            line.push_str(&format!(" blake3={}", h.finalize().to_hex()));
        }
        if ft.is_symlink() {
            let t = fs::read_link(&p).unwrap_or_else(|e| panic!("readlink {}: {e}", p.display()));
            line.push_str(&format!(" target={}", t.display()));
        }
        if ft.is_file() || ft.is_dir() {
            let mut names: Vec<_> = xattr::list(&p)
                .unwrap_or_else(|e| panic!("listxattr {}: {e}", p.display()))
                .collect();
            names.sort();
            for name in names {
                let v = xattr::get(&p, &name)
                    .unwrap_or_else(|e| panic!("getxattr {}: {e}", p.display()))
                    .unwrap_or_default();
                line.push_str(&format!(
                    " xattr:{}={}",
                    name.to_string_lossy(),
                    String::from_utf8_lossy(&v)
                ));
            }
        }
        if ft.is_dir() {
            let mut names = ls(&p);
            // Visit in sorted order (the stack pops the last first), so hard-link groups are
            // named by the same path in every copy.
            names.reverse();
            for n in names {
                stack.push(if rel.is_empty() {
                    n
                } else {
                    format!("{rel}/{n}")
                });
            }
        }
        out.insert(format!("/{rel}"), line);
    }
    out
}

/// The paths where `a` and `b` differ (at most `max`), one per line with both descriptions.
fn tree_diff(a_name: &str, a: &Tree, b_name: &str, b: &Tree, max: usize) -> String {
    let mut lines = Vec::new();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut total = 0;
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x == y {
            continue;
        }
        total += 1;
        if lines.len() < max {
            lines.push(format!(
                "    {k}\n      {a_name}: {}\n      {b_name}: {}",
                x.map_or("(absent)", String::as_str),
                y.map_or("(absent)", String::as_str)
            ));
        }
    }
    if total > max {
        lines.push(format!("    ... and {} more paths", total - max));
    }
    lines.join("\n")
}

/// `[p1, p2, ..] (N paths)`: where two trees differ, briefly.
pub(crate) fn differing_paths(a: &Tree, b: &Tree) -> String {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let diff: Vec<&String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .collect();
    let shown: Vec<&str> = diff.iter().take(5).map(|k| k.as_str()).collect();
    format!(
        "{shown:?}{} ({} paths)",
        if diff.len() > 5 { " .." } else { "" },
        diff.len()
    )
}

/// Failures of a crash test, reported together at the end: one headline each (the first
/// line), then the details of the first few.
fn report(failures: &[String]) -> String {
    let heads: Vec<&str> = failures
        .iter()
        .map(|f| f.lines().next().unwrap_or(""))
        .collect();
    let details: Vec<&str> = failures.iter().take(3).map(String::as_str).collect();
    format!(
        "{} failures:\n{}\n\ndetails of the first {}:\n{}",
        failures.len(),
        heads.join("\n"),
        details.len(),
        details.join("\n\n")
    )
}

// ---------------------------------------------------------------------------------------------
// The session under test

/// Lower entries [`CHANGES`] acts on.
fn seed_lower(root: &Path) {
    let r = |p: &str| root.join(p);
    write(r("etc/mod1.txt"), "one\n");
    set_xattr(r("etc/mod1.txt"), "user.k", b"v1");
    write(r("etc/mod2.txt"), "old content of mod2\n");
    write(r("etc/old1.txt"), "old1\n");
    write(r("etc/old2.txt"), "old2\n");
    write(r("etc/chmodme"), "c\n");
    write(r("etc/chownme"), "o\n");
    write(r("etc/touchme"), "t\n");
    write(r("etc/f2d"), "a file that becomes a directory\n");
    mkdir_p(r("var/d2f"));
    write(r("var/d2f/x"), "x\n");
    write(r("var/d2f/y"), "y\n");
    mkdir_p(r("var/lib/app/sub"));
    mkdir_p(r("var/lib/app/sub2"));
    write(r("var/lib/app/a"), "a\n");
    write(r("var/lib/app/sub/f"), "f\n");
    write(r("var/lib/app/sub2/g"), "g\n");
    write(r("etc/renme"), "renamed file\n");
    mkdir_p(r("var/lib/mvdir"));
    write(r("var/lib/mvdir/x"), "mx\n");
    write(r("var/lib/mvdir/y"), "my\n");
    symlink("a", r("etc/lnk"));
    write(r("etc/hl1"), "linked\n");
    fs::hard_link(r("etc/hl1"), r("etc/hl2")).unwrap();
    write(r("home/user/x"), "x\n");
    mkdir_p(r("usr/share/doc/keep"));
    write(r("usr/share/doc/keep/readme"), "untouched\n");
    set_xattr(r("usr/share/doc/keep"), "user.dir", b"lower");
}

/// About 35 changes of every kind a commit handles.
const CHANGES: &str = "set -e
mkdir -p /opt/app/bin /opt/app/lib
for i in 1 2 3 4 5; do echo \"file $i\" > /opt/app/lib/f$i; done
printf '#!/bin/sh\\necho run\\n' > /opt/app/bin/run
chmod 755 /opt/app/bin/run
dd if=/dev/zero bs=1024 count=300 2>/dev/null | tr '\\0' x > /opt/app/big
mkfifo /opt/app/fifo
echo two >> /etc/mod1.txt
echo new > /etc/mod2.txt
rm /etc/old1.txt /etc/old2.txt
rm -rf /var/lib/app
rm -rf /home && mkdir /home && echo n > /home/new && mkdir /home/nd
rm /etc/f2d && mkdir /etc/f2d && echo in > /etc/f2d/x
rm -rf /var/d2f && echo file > /var/d2f
ln -s /etc/motd /etc/motd.link
ln -s ../../nowhere /opt/app/dangling
ln -sfn b /etc/lnk
echo data > /opt/h1
ln /opt/h1 /opt/h2
ln /opt/h1 /opt/app/h3
echo more >> /etc/hl1
mv /etc/renme /etc/renamed
mv /var/lib/mvdir /opt/mvdir
chmod 600 /etc/chmodme
chown 1000:1000 /etc/chownme
touch /etc/touchme
mkdir /var/newdir
chmod 1777 /var/newdir
echo session-done";

/// A preserved session over a rootfs copy, pristine copies of both, and the two trees.
struct Crash {
    f: Fixture,
    id: String,
    pristine_rootfs: PathBuf,
    pristine_state: PathBuf,
    txn: PathBuf,
    old: Tree,
    new: Tree,
    /// How long the fault-free atomic commit took.
    commit_time: Duration,
}

impl Crash {
    fn new() -> Crash {
        let f = Fixture::new();
        seed_lower(&f.rootfs);
        let id = f.preserved(CHANGES);
        // Xattrs set in the upper itself (busybox has no setfattr): on a new file and a new
        // directory.
        let upper = f.upper_of(&id);
        set_xattr(upper.join("opt/app/lib/f1"), "user.crash", b"1");
        set_xattr(upper.join("opt/app"), "user.dirx", b"d");
        let diff = run_cmd(&mut f.ovlrun(&["diff", &id]));
        diff.expect_ok();
        let changes = diff.stdout.lines().count();
        assert!(
            changes >= 30,
            "expected ~35 changes, diff shows {changes}\n{}",
            diff.context()
        );
        let pristine = f.dir.join("pristine");
        mkdir_p(&pristine);
        let (pristine_rootfs, pristine_state) = (pristine.join("rootfs"), pristine.join("state"));
        copy_tree(&f.rootfs, &pristine_rootfs);
        copy_tree(&f.state, &pristine_state);
        let txn = f.dir.join(".rootfs.ovlrun-txn");
        let old = tree_state(&f.rootfs);
        assert_eq!(
            tree_state(&pristine_rootfs),
            old,
            "cp -a does not reproduce the tree exactly: the test cannot work"
        );
        let mut c = Crash {
            f,
            id,
            pristine_rootfs,
            pristine_state,
            txn,
            old,
            new: Tree::new(),
            commit_time: Duration::ZERO,
        };
        let start = Instant::now();
        let out = c.commit(None);
        c.commit_time = start.elapsed();
        out.expect_ok();
        c.f.assert_no_sessions("a fault-free commit --atomic");
        assert!(
            lstat_opt(&c.txn).is_none(),
            "txn dir left by a fault-free commit"
        );
        c.new = tree_state(&c.f.rootfs);
        assert!(c.new != c.old, "the commit changed nothing");
        c.restore();
        c
    }

    /// Puts the rootfs and the state root back as they were before any commit.
    fn restore(&self) {
        remove_all(&self.txn);
        remove_all(&self.f.rootfs);
        remove_all(&self.f.state);
        copy_tree(&self.pristine_rootfs, &self.f.rootfs);
        copy_tree(&self.pristine_state, &self.f.state);
    }

    /// `ovlrun commit ID --atomic --force`, with `OVLRUN_FAULT_AFTER=N` when given. Forced:
    /// [`Crash::restore`] copies the rootfs anew after the session began, so every path it
    /// changes is a conflict.
    fn commit(&self, fault_after: Option<u64>) -> Out {
        let mut cmd = self.f.ovlrun(&["commit", &self.id, "--atomic", "--force"]);
        if let Some(n) = fault_after {
            cmd.env("OVLRUN_FAULT_AFTER", n.to_string());
        }
        run_cmd(&mut cmd)
    }

    fn recover(&self) -> Out {
        let mut cmd = self.f.ovlrun(&["recover", "--rootfs"]);
        cmd.arg(&self.f.rootfs);
        run_cmd(&mut cmd)
    }

    /// "old", "new", or a description of how the rootfs differs from both.
    fn classify(&self) -> Result<&'static str, String> {
        let now = tree_state(&self.f.rootfs);
        if now == self.old {
            Ok("old")
        } else if now == self.new {
            Ok("new")
        } else {
            Err(format!(
                "neither tree: differs from new at {}, from old at {}\n  vs new:\n{}\n  vs old:\n{}",
                differing_paths(&self.new, &now),
                differing_paths(&self.old, &now),
                tree_diff("new", &self.new, "now", &now, 4),
                tree_diff("old", &self.old, "now", &now, 4)
            ))
        }
    }

    /// After a recovery that rolled back: the session and its upper must still be there, and
    /// committing it again must give the new tree. Returns the problems found.
    fn check_rolled_back_session(&self, what: &str) -> Vec<String> {
        let mut bad = Vec::new();
        let upper = self.f.sessions_dir().join(&self.id).join("upper");
        if !upper.join("opt/app/lib/f1").is_file() {
            bad.push(format!(
                "{what}: rolled back, but the session's upper {} lost its changes",
                upper.display()
            ));
            return bad;
        }
        if self.f.ls_row(&self.id).is_none() {
            bad.push(format!(
                "{what}: rolled back, but `ovlrun ls` no longer lists the session"
            ));
        }
        let again = self.commit(None);
        if again.code() != 0 {
            bad.push(format!(
                "{what}: commit again after the rollback failed\n{}",
                again.context()
            ));
        } else {
            match self.classify() {
                Ok("new") => {}
                Ok(other) => bad.push(format!(
                    "{what}: commit again after the rollback left the {other} tree"
                )),
                Err(d) => bad.push(format!("{what}: commit again after the rollback left {d}")),
            }
        }
        bad
    }
}

/// Skips (locally) or fails (in CI) without what a session needs.
macro_rules! require_sessions {
    () => {
        require!(
            can_run_sessions(),
            "run sessions (root, /dev/fuse, busybox)"
        );
    };
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn fault_at_every_journal_record_then_recover_gives_old_or_new() {
    require_sessions!();
    let c = Crash::new();
    let mut failures: Vec<String> = Vec::new();
    let (mut points, mut rolled_back, mut completed) = (0u64, 0u64, 0u64);
    let mut left_committing = 0u64;
    let mut n = 1u64;
    loop {
        assert!(n < 2000, "the commit never completed without a fault");
        c.restore();
        let out = c.commit(Some(n));
        if out.code() == 0 {
            // N is past the last record: the commit ran to its end.
            match c.classify() {
                Ok("new") => {}
                Ok(other) => failures.push(format!(
                    "N={n} (no fault hit): the commit left the {other} tree"
                )),
                Err(d) => failures.push(format!("N={n} (no fault hit): the commit left {d}")),
            }
            if !c.f.session_ids().is_empty() {
                failures.push(format!("N={n} (no fault hit): the session was kept"));
            }
            break;
        }
        points += 1;
        if out.code() != KILLED {
            failures.push(format!(
                "N={n}: expected death by SIGKILL (137)\n{}",
                out.context()
            ));
        }
        let rec = c.recover();
        if rec.code() != 0 {
            failures.push(format!(
                "N={n}: ovlrun recover failed: {}\n{}",
                rec.stderr.trim(),
                rec.context()
            ));
        }
        if lstat_opt(&c.txn).is_some() {
            failures.push(format!("N={n}: the txn dir is left after recovery"));
        }
        match c.classify() {
            Ok("old") => {
                rolled_back += 1;
                failures.extend(c.check_rolled_back_session(&format!("N={n}")));
            }
            Ok(_) => {
                completed += 1;
                if c.f.ls_row(&c.id).is_some() {
                    left_committing += 1;
                }
            }
            Err(d) => failures.push(format!(
                "N={n}: after SIGKILL and `ovlrun recover` the rootfs is {d}\n  recover said: {}",
                rec.stderr.trim()
            )),
        }
        n += 1;
    }
    println!(
        "crash points tried: {points} (journal records before completion); rolled back to old: \
         {rolled_back}; completed to new: {completed} (session still listed after that: \
         {left_committing}); failures: {}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{points} crash points tried; {}",
        report(&failures)
    );
    assert!(
        points > 10,
        "only {points} crash points: too few journal records"
    );
}

#[test]
fn recovery_runs_by_itself_when_the_next_session_takes_the_lock() {
    require_sessions!();
    let c = Crash::new();
    let mut failures: Vec<String> = Vec::new();
    let mut tried = Vec::new();
    // Every 5th record, then the last one (the `committed` state) found by walking back.
    let mut n = 1u64;
    let mut last_killed = 0u64;
    let completes_at = loop {
        assert!(n < 2000, "the commit never completed without a fault");
        c.restore();
        let out = c.commit(Some(n));
        if out.code() == 0 {
            break n;
        }
        if out.code() != KILLED {
            failures.push(format!("N={n}: expected SIGKILL\n{}", out.context()));
        }
        failures.extend(session_recovers(&c, n));
        tried.push(n);
        last_killed = n;
        n += 5;
    };
    for m in (last_killed + 1..completes_at).rev() {
        c.restore();
        if c.commit(Some(m)).code() == KILLED {
            failures.extend(session_recovers(&c, m));
            tried.push(m);
            break;
        }
    }
    println!("auto-recovery crash points tried: {tried:?}");
    assert!(failures.is_empty(), "{}", report(&failures));
    assert!(tried.len() > 2, "too few crash points: {tried:?}");
}

/// After a commit killed at record `n`: `ovlrun --rootfs R -- true` must recover by itself.
fn session_recovers(c: &Crash, n: u64) -> Vec<String> {
    let mut bad = Vec::new();
    if lstat_opt(&c.txn).is_none() {
        bad.push(format!("N={n}: no txn dir after the kill"));
    }
    let mut cmd = c.f.ovlrun(&["--rootfs"]);
    cmd.arg(&c.f.rootfs).args(["--", "true"]);
    let out = run_cmd(&mut cmd);
    if out.code() != 0 {
        bad.push(format!(
            "N={n}: the next session failed: {}\n{}",
            out.stderr.trim(),
            out.context()
        ));
    }
    if lstat_opt(&c.txn).is_some() {
        bad.push(format!(
            "N={n}: the txn dir is left after the next session\n{}",
            out.context()
        ));
    }
    match c.classify() {
        Ok("old") => bad.extend(c.check_rolled_back_session(&format!("N={n} (auto)"))),
        Ok(_) => {}
        Err(d) => bad.push(format!(
            "N={n}: after the next session the rootfs is {d}\n  session stderr: {}",
            out.stderr.trim()
        )),
    }
    bad
}

/// xorshift64*: enough randomness for kill delays, with a printed seed to replay a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn sigkill_at_random_times_then_recover_gives_old_or_new() {
    require_sessions!();
    let c = Crash::new();
    let seed = std::env::var("OVLRUN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let mut rng = Rng(seed);
    let mut failures: Vec<String> = Vec::new();
    let (mut killed_mid, mut killed_before, mut finished) = (0u32, 0u32, 0u32);
    let (mut rolled_back, mut completed) = (0u32, 0u32);
    const ROUNDS: u32 = 20;
    for round in 0..ROUNDS {
        // Half the rounds within 0-50 ms of the start; the other half anywhere within the
        // time a fault-free commit takes (a debug build takes longer than 50 ms, and the
        // apply phase comes last).
        let span = if round % 2 == 0 {
            50
        } else {
            (c.commit_time.as_millis() as u64 * 6 / 5).clamp(50, 2000)
        };
        let delay = Duration::from_millis(rng.next() % (span + 1));
        let what = format!("round {round} (kill after {delay:?}, seed {seed})");
        c.restore();
        let mut bg = Bg::spawn(
            &mut c.f.ovlrun(&["commit", &c.id, "--atomic", "--force"]),
            RUN_TIMEOUT,
        );
        std::thread::sleep(delay);
        let out = match bg.try_status() {
            Some(_) => bg.wait(),
            None => bg.kill_now(),
        };
        match out.code() {
            0 => finished += 1,
            KILLED if lstat_opt(&c.txn).is_some() => killed_mid += 1,
            KILLED => killed_before += 1,
            _ => failures.push(format!("{what}: commit failed\n{}", out.context())),
        }
        let rec = c.recover();
        if rec.code() != 0 {
            failures.push(format!(
                "{what}: ovlrun recover failed: {}\n{}",
                rec.stderr.trim(),
                rec.context()
            ));
        }
        match c.classify() {
            Ok("old") => {
                rolled_back += 1;
                failures.extend(c.check_rolled_back_session(&what));
            }
            Ok(_) => completed += 1,
            Err(d) => failures.push(format!(
                "{what}: after SIGKILL and recovery the rootfs is {d}\n  recover said: {}",
                rec.stderr.trim()
            )),
        }
    }
    println!(
        "random SIGKILL (seed {seed}, fault-free commit took {:?}): {ROUNDS} rounds; killed \
         mid-transaction {killed_mid}, killed before the transaction {killed_before}, finished \
         before the kill {finished}; old tree after recovery {rolled_back}, new tree {completed}",
        c.commit_time
    );
    assert!(failures.is_empty(), "{}", report(&failures));
}

#[test]
fn tree_state_sees_directory_mtimes_and_hard_links() {
    // The oracle itself: a directory mtime or a broken hard link must change the description.
    let dir = crate::support::TestDir::new();
    let root = dir.mkdir("t");
    write(root.join("a"), "x");
    fs::hard_link(root.join("a"), root.join("b")).unwrap();
    let before = tree_state(&root);
    let sub = dir.mkdir("t/d");
    let t0 = tree_state(&root);
    assert_ne!(before, t0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &sub,
        &nix::sys::time::TimeSpec::new(1, 0),
        &nix::sys::time::TimeSpec::new(1, 0),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    assert_ne!(tree_state(&root), t0, "a directory mtime is not seen");
    let t1 = tree_state(&root);
    fs::remove_file(root.join("b")).unwrap();
    write(root.join("b"), "x");
    let t2 = tree_state(&root);
    assert_ne!(t1.get("/b"), t2.get("/b"), "a broken hard link is not seen");
}

// ---------------------------------------------------------------------------------------------
// Two state roots, one rootfs (issue 14, item 3)

/// How many files session A's commit installs: enough for the commit to take a while.
const RACE_FILES: usize = 3000;

/// `commit --atomic` of session A (3,000 files, state root 1) while session B's commit and a
/// new session start from state root 2: the rootfs lock belongs to the rootfs, so both are
/// refused with a named error while A commits (neither "recovers" A's running commit), and
/// with `--wait` B's commit waits for A's. No file of A or of B is lost.
#[test]
fn a_commit_racing_a_commit_from_another_state_root_loses_nothing() {
    require_sessions!();
    let f = Fixture::new();
    let state2 = f.dir.join("state2");
    let in_state2 = |args: &[&str]| {
        let mut cmd = f.ovlrun(args);
        cmd.env("OVLRUN_STATE", &state2);
        cmd
    };
    let a = f.preserved(&format!(
        "set -e; mkdir /a; i=0; while [ $i -lt {RACE_FILES} ]; do echo $i > /a/f$i; i=$((i+1)); done"
    ));
    let mut cmd = in_state2(&["--policy", "preserve", "--rootfs"]);
    cmd.arg(&f.rootfs).args([
        "--",
        "/bin/sh",
        "-c",
        "mkdir /b && echo b > /b/one && echo b2 > /b/two",
    ]);
    let out = run_cmd(&mut cmd);
    out.expect_ok();
    let (b, _) = out.kept_session();
    let txn = f.dir.join(".rootfs.ovlrun-txn");

    let mut commit_a = Bg::spawn(&mut f.ovlrun(&["commit", &a, "--atomic"]), RUN_TIMEOUT);
    // Until A's transaction exists, A holds the lock only if it already started: wait for it.
    let start = Instant::now();
    while lstat_opt(&txn).is_none() {
        assert!(
            commit_a.try_status().is_none(),
            "commit A ended before its transaction was seen"
        );
        assert!(start.elapsed() < RUN_TIMEOUT, "no transaction directory");
        std::thread::sleep(Duration::from_millis(2));
    }
    let busy = run_cmd(&mut in_state2(&["commit", &b]));
    let mut session = in_state2(&["--rootfs"]);
    session.arg(&f.rootfs).args(["--", "/bin/true"]);
    let during = run_cmd(&mut session);
    let mut waiting = Bg::spawn(&mut in_state2(&["commit", &b, "--wait"]), RUN_TIMEOUT);
    let a_out = commit_a.wait();
    let b_out = waiting.wait();

    a_out.expect_ok();
    for (what, out) in [("commit B", &busy), ("a session", &during)] {
        out.expect_own_error(&["in use"]);
        assert!(
            !out.stderr.contains("recovered"),
            "{what} under another state root recovered the running commit\n{}",
            out.context()
        );
    }
    b_out.expect_ok();
    let missing: Vec<usize> = (0..RACE_FILES)
        .filter(|i| {
            fs::read_to_string(f.rootfs.join(format!("a/f{i}"))).ok() != Some(format!("{i}\n"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of A's {RACE_FILES} files missing or wrong after the race (first: {:?})\nA: {}\nB: {}",
        missing.len(),
        &missing[..missing.len().min(5)],
        a_out.context(),
        b_out.context()
    );
    assert_eq!(ls(f.rootfs.join("b")), vec!["one", "two"]);
    assert!(lstat_opt(&txn).is_none(), "transaction directory left");
}
