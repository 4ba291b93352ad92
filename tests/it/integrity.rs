//! Issue 14, "nothing lost, nothing trusted": what a session, another local user or a careless
//! flag plants or gives must never make ovlrun act outside what it owns.
//!
//! - Planted journals: a `.ovlrun-txn` a session committed into the rootfs, and a transaction
//!   directory another user made beside a rootfs in a sticky, world-writable directory, are
//!   never recovered: nothing outside the rootfs (or in it) is created, deleted or chmodded.
//! - `--upper`: a non-empty directory that is not an ovlrun upper, the rootfs, `.`, the
//!   rootfs's parent, a directory inside the rootfs and the state root are refused before
//!   anything is touched; records hold absolute paths; discard removes only what ovlrun made.
//! - Session ids are ids (or unique prefixes); `--uid`/`--gid` must be ids; `--config` is
//!   bounded; a dangling `/etc/resolv.conf` symlink still gets the host's resolver.
//!
//! The race of two commits from two state roots is in `crash`; conflicts between sessions are
//! in [`conflicts`].

mod conflicts;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::policy::{Fixture, can_run_sessions, run_cmd};
use crate::support::session::{Caller, Session};
use crate::support::{
    self, EXIT_OWN_ERROR, Frozen, ls, lstat, lstat_opt, mkdir_p, read_string, run_limited, write,
};

/// A uid no account has, owning what "another local user" plants.
const OTHER_UID: u32 = 4242;

macro_rules! require_sessions {
    () => {
        require!(
            can_run_sessions(),
            "run sessions (root, /dev/fuse, busybox)"
        );
    };
}

/// The JSON of a journal entry's metadata (`Meta`): `mode`, owner 4242, epoch times.
fn meta_json(mode: u32) -> String {
    format!(
        r#"{{"mode":{mode},"uid":{OTHER_UID},"gid":{OTHER_UID},"atime":[0,0],"mtime":[0,0],"xattrs":[]}}"#
    )
}

/// Writes `data` to `path`, making its parents first.
fn put(path: impl AsRef<Path>, data: impl AsRef<[u8]>) {
    mkdir_p(path.as_ref().parent().unwrap());
    write(path, data);
}

/// Victims outside the rootfs: a tree a planted rollback would delete, a root-only file it
/// would chmod and chown, and the place of a file it would create.
struct Outside {
    dir: PathBuf,
    tree: PathBuf,
    secret: PathBuf,
    created: PathBuf,
}

impl Outside {
    fn new(f: &Fixture) -> Outside {
        let dir = f.dir.join("outside");
        let tree = dir.join("tree");
        put(tree.join("keep"), "keep me\n");
        let secret = dir.join("secret");
        write(&secret, "root only\n");
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        Outside {
            created: dir.join("created"),
            dir,
            tree,
            secret,
        }
    }

    /// A transaction plan (`plan.json`) whose ops and dirs reach these victims through `..`
    /// from the rootfs and through absolute paths.
    fn plan_json(&self) -> String {
        let abs = |p: &Path| p.to_str().unwrap().to_owned();
        let meta = meta_json(0o6777);
        format!(
            r#"{{"ops":[{{"MakeDir":{{"path":"../outside/tree","meta":{meta},"existed":false}}}},{{"Install":{{"path":"../outside/created"}}}},{{"MakeDir":{{"path":"{tree}","meta":{meta},"existed":false}}}}],"replaces":[false,false,false],"dirs":[["../outside/secret",{meta}],["{secret}",{meta}]]}}"#,
            tree = abs(&self.tree),
            secret = abs(&self.secret),
        )
    }

    #[track_caller]
    fn assert_untouched(&self, after: &str) {
        assert_eq!(
            read_string(self.tree.join("keep")),
            "keep me\n",
            "{after}: the tree outside the rootfs was changed"
        );
        assert!(
            lstat_opt(&self.created).is_none(),
            "{after}: a file outside the rootfs was created: {}",
            self.created.display()
        );
        let md = lstat(&self.secret);
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o600, 0, 0),
            "{after}: the root-only file outside the rootfs was chmodded or chowned"
        );
        assert_eq!(ls(&self.dir), vec!["secret", "tree"], "{after}");
    }
}

/// A session with `--policy commit` plants `/.ovlrun-txn` (state `prepared`, a journal that
/// has begun every op, a backup, a plan with `..` and absolute paths): it reaches the rootfs
/// as files, and the next run over the rootfs acts on none of it.
#[test]
fn a_journal_committed_into_the_rootfs_is_never_recovered() {
    require_sessions!();
    let f = Fixture::new();
    let outside = Outside::new(&f);
    let script = format!(
        "set -e
mkdir -p /.ovlrun-txn/old /.ovlrun-txn/new
echo prepared > /.ovlrun-txn/state
printf 'state prepared\\nbegin 0\\nbegin 1\\nbegin 2\\n' > /.ovlrun-txn/journal
echo planted > /.ovlrun-txn/old/1
cat > /.ovlrun-txn/plan.json <<'EOF'
{}
EOF
echo planted-done",
        outside.plan_json()
    );
    let out = f.sh(&["--policy", "commit"], &script);
    out.expect_ok();
    assert!(
        lstat(f.rootfs.join(".ovlrun-txn/plan.json")).is_file(),
        "the commit did not carry the planted journal into the rootfs\n{}",
        out.context()
    );
    let planted = Frozen::take(&f.rootfs);

    // The next run over the rootfs, and an explicit recovery.
    let out = f.sh(&[], "echo next-run");
    outside.assert_untouched("the next run");
    planted.assert_unchanged(&f.rootfs, "the next run");
    out.expect_ok();
    assert!(
        !out.stderr.contains("recovered"),
        "a planted journal was recovered\n{}",
        out.context()
    );
    let out = run_cmd(
        f.ovlrun(&["recover", "--rootfs"])
            .arg(&f.rootfs)
            .current_dir(f.dir.path()),
    );
    out.expect_ok();
    outside.assert_untouched("ovlrun recover");
    planted.assert_unchanged(&f.rootfs, "ovlrun recover");
}

/// Another local user pre-creates the transaction directory beside a rootfs kept in a sticky,
/// world-writable directory, with a plan that deletes the rootfs's /etc and hands its root to
/// that user: root's next session refuses it with a named error and acts on nothing in it;
/// so do `recover` and a commit.
#[test]
fn a_transaction_planted_beside_the_rootfs_by_another_user_is_refused() {
    require_sessions!();
    let f = Fixture::new();
    let shared = f.dir.join("shared");
    mkdir_p(&shared);
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let rootfs = shared.join("rootfs");
    fs::rename(&f.rootfs, &rootfs).unwrap();
    let txn = shared.join(".rootfs.ovlrun-txn");
    let meta = meta_json(0o777);
    for sub in ["", "new", "old"] {
        mkdir_p(txn.join(sub));
    }
    write(txn.join("state"), "prepared\n");
    write(txn.join("journal"), "state prepared\nbegin 0\n");
    write(
        txn.join("plan.json"),
        format!(
            r#"{{"ops":[{{"MakeDir":{{"path":"etc","meta":{meta},"existed":false}}}}],"replaces":[false],"dirs":[["",{meta}],["bin",{meta}]]}}"#
        ),
    );
    let chown = run_cmd(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{OTHER_UID}:{OTHER_UID}"))
            .arg(&txn),
    );
    chown.expect_ok();
    fs::set_permissions(&txn, fs::Permissions::from_mode(0o700)).unwrap();
    let before = Frozen::take(&rootfs);
    let planted = Frozen::take(&txn);

    let session = |args: &[&str]| {
        let mut cmd = f.ovlrun(args);
        cmd.arg("--rootfs")
            .arg(&rootfs)
            .args(["--", "/bin/sh", "-c", "echo ran"]);
        run_cmd(&mut cmd)
    };
    let out = session(&[]);
    assert_eq!(out.code(), EXIT_OWN_ERROR, "{}", out.context());
    assert!(
        out.stderr.contains(&txn.display().to_string()) && out.stderr.contains("4242"),
        "the refusal does not name the transaction directory and its owner\n{}",
        out.context()
    );
    assert!(!out.stdout.contains("ran"), "{}", out.context());
    before.assert_unchanged(&rootfs, "a session beside a planted transaction");
    planted.assert_unchanged(&txn, "a session beside a planted transaction");

    let out = run_cmd(f.ovlrun(&["recover", "--rootfs"]).arg(&rootfs));
    out.expect_own_error(&[".rootfs.ovlrun-txn"]);
    before.assert_unchanged(&rootfs, "ovlrun recover");
    planted.assert_unchanged(&txn, "ovlrun recover");

    // A symlink in its place, to a directory that passes every check, is refused the same
    // way, never followed.
    let moved = shared.join("moved");
    fs::rename(&txn, &moved).unwrap();
    run_cmd(Command::new("chown").arg("-R").arg("0:0").arg(&moved)).expect_ok();
    std::os::unix::fs::symlink(&moved, &txn).unwrap();
    let planted = Frozen::take(&moved);
    let out = session(&["--policy", "commit"]);
    out.expect_own_error(&[".rootfs.ovlrun-txn", "symlink"]);
    before.assert_unchanged(&rootfs, "a session beside a planted symlink");
    planted.assert_unchanged(&moved, "a session beside a planted symlink");
}

// ---------------------------------------------------------------------------------------------
// --upper

/// `--upper DIR` over `f`'s rootfs from `cwd`, policy discard: must be refused with ovlrun's
/// own exit code, naming `--upper`, and change nothing.
#[track_caller]
fn refused_upper(f: &Fixture, upper: &Path, cwd: &Path, what: &str) {
    let watched = [f.dir.path().to_owned()];
    let before: Vec<Frozen> = watched.iter().map(|w| Frozen::take(w)).collect();
    let mut cmd = f.session_cmd(&["--upper", upper.to_str().unwrap()], "echo ran");
    cmd.current_dir(cwd);
    let out = run_cmd(&mut cmd);
    assert_eq!(
        out.code(),
        EXIT_OWN_ERROR,
        "--upper {what} was not refused\n{}",
        out.context()
    );
    assert!(
        out.stderr.contains("--upper"),
        "the refusal of --upper {what} does not name the flag\n{}",
        out.context()
    );
    assert!(!out.stdout.contains("ran"), "{}", out.context());
    for (w, b) in watched.iter().zip(&before) {
        b.assert_unchanged(w, &format!("--upper {what}"));
    }
}

#[test]
fn an_upper_with_files_is_refused_and_kept() {
    require_sessions!();
    let f = Fixture::new();
    let dir = f.dir.join("mine");
    put(dir.join("notes.txt"), "my work\n");
    put(dir.join("sub/deep"), "deep\n");
    refused_upper(&f, &dir, f.dir.path(), "DIR with files");
    // `.` with files, given from inside it.
    refused_upper(&f, Path::new("."), &dir, "`.`");
}

#[test]
fn an_upper_that_is_or_holds_the_rootfs_or_the_state_is_refused() {
    require_sessions!();
    let f = Fixture::new();
    // The state root exists (with a kept session), so it can be watched and named.
    let id = f.preserved("echo kept > /kept");
    let rootfs = f.rootfs.clone();
    refused_upper(&f, &rootfs, f.dir.path(), "= the rootfs");
    refused_upper(&f, f.dir.path(), f.dir.path(), "= the rootfs's parent");
    refused_upper(
        &f,
        &rootfs.join("etc"),
        f.dir.path(),
        "inside the rootfs (existing)",
    );
    refused_upper(
        &f,
        &rootfs.join("new-up"),
        f.dir.path(),
        "inside the rootfs (new)",
    );
    refused_upper(&f, &f.state, f.dir.path(), "= the state root");
    refused_upper(
        &f,
        &f.state.join("up"),
        f.dir.path(),
        "inside the state root",
    );
    // `--upper .` from inside the rootfs.
    refused_upper(&f, Path::new("."), &rootfs, "`.` in the rootfs");
    // A new, empty upper whose work directory (`<upper>.work`) would be the rootfs.
    let beside = f.dir.join("rootfs-link");
    fs::rename(&rootfs, f.dir.join("up.work")).unwrap();
    std::os::unix::fs::symlink(f.dir.join("up.work"), &beside).unwrap();
    let mut cmd = f.ovlrun(&["--upper"]);
    cmd.arg(f.dir.join("up"))
        .arg("--rootfs")
        .arg(&beside)
        .args(["--", "/bin/sh", "-c", "echo ran"]);
    let moved = Frozen::take(&f.dir.join("up.work"));
    let out = run_cmd(&mut cmd);
    out.expect_own_error(&["--upper"]);
    moved.assert_unchanged(
        &f.dir.join("up.work"),
        "an upper whose work dir is the rootfs",
    );
    assert!(lstat_opt(f.dir.join("up")).is_none(), "{}", out.context());
    fs::remove_file(&beside).unwrap();
    fs::rename(f.dir.join("up.work"), &rootfs).unwrap();
    // The kept session is still there.
    assert!(f.session_ids().contains(&id));
}

/// A new `--upper` given relative: the record holds it absolute, so `discard ID` from another
/// directory removes that upper and nothing in the other directory.
#[test]
fn records_hold_absolute_uppers_and_discard_runs_from_anywhere() {
    require_sessions!();
    let f = Fixture::new();
    let a = f.dir.mkdir("a");
    let b = f.dir.mkdir("b");
    put(b.join("rel/up/precious"), "not ovlrun's\n");
    let mut cmd = f.session_cmd(
        &["--upper", "rel/up", "--policy", "preserve"],
        "echo x > /x",
    );
    cmd.current_dir(&a);
    let out = run_cmd(&mut cmd);
    out.expect_ok();
    let (id, upper) = out.kept_session();
    let want = a.canonicalize().unwrap().join("rel/up");
    assert_eq!(upper, want, "{}", out.context());
    assert_eq!(f.upper_of(&id), want, "the record's upper");
    assert_eq!(read_string(a.join("rel/up/x")), "x\n");
    let mut discard = f.ovlrun(&["discard", &id]);
    discard.current_dir(&b);
    run_cmd(&mut discard).expect_ok();
    assert_eq!(read_string(b.join("rel/up/precious")), "not ovlrun's\n");
    assert!(
        lstat_opt(a.join("rel/up")).is_none(),
        "the session's upper was not removed"
    );
    assert!(lstat_opt(a.join("rel/up.work")).is_none());
    assert!(
        lstat(a.join("rel")).is_dir(),
        "a parent ovlrun did not make was removed"
    );
}

/// A kept `--upper` is an ovlrun upper: a later session may use it again (its changes are
/// there). A record edited to point at a directory ovlrun did not make: discard leaves it.
#[test]
fn discard_removes_only_what_carries_the_marker() {
    require_sessions!();
    let f = Fixture::new();
    let up = f.dir.join("up");
    let out = f.sh(
        &["--upper", up.to_str().unwrap(), "--policy", "preserve"],
        "echo one > /one",
    );
    out.expect_ok();
    let (first, _) = out.kept_session();
    let out = f.sh(
        &["--upper", up.to_str().unwrap(), "--policy", "preserve"],
        "cat /one; echo two > /two",
    );
    out.expect_ok();
    assert!(out.stdout.contains("one"), "{}", out.context());
    let (second, _) = out.kept_session();
    assert_eq!(read_string(up.join("two")), "two\n");

    // Point the first record at someone else's directory.
    let theirs = f.dir.join("theirs");
    put(theirs.join("data"), "theirs\n");
    let rec_path = f.sessions_dir().join(&first).join("session.json");
    let mut rec: serde_json::Value = serde_json::from_str(&read_string(&rec_path)).unwrap();
    rec["upper"] = theirs.to_str().unwrap().into();
    rec["work"] = f.dir.join("theirs.work").to_str().unwrap().into();
    write(&rec_path, serde_json::to_vec(&rec).unwrap());
    let kept = Frozen::take(&theirs);
    let out = run_cmd(&mut f.ovlrun(&["discard", &first]));
    kept.assert_unchanged(&theirs, "discard of a record pointing at another directory");
    assert_eq!(out.code(), EXIT_OWN_ERROR, "{}", out.context());

    // The real one goes whole.
    run_cmd(&mut f.ovlrun(&["discard", &second])).expect_ok();
    assert!(lstat_opt(&up).is_none(), "the marked upper was not removed");
    assert!(lstat_opt(f.dir.join("up.work")).is_none());
}

// ---------------------------------------------------------------------------------------------
// Small ones (item 11)

/// Plants a record at `dir/session.json` (a copy of session `id`'s).
fn plant_record(f: &Fixture, id: &str, dir: &Path) {
    let rec = read_string(f.sessions_dir().join(id).join("session.json"));
    write(dir.join("session.json"), rec);
}

/// Gives session `from` the id `to`: its directory and the paths in its record.
fn rename_session(f: &Fixture, from: &str, to: &str) {
    let (old, new) = (f.sessions_dir().join(from), f.sessions_dir().join(to));
    fs::rename(&old, &new).unwrap();
    let rec = new.join("session.json");
    let text = read_string(&rec).replace(from, to);
    write(&rec, text);
}

#[test]
fn session_ids_are_ids_or_unique_prefixes() {
    require_sessions!();
    let f = Fixture::new();
    let id = f.preserved("echo a > /a");
    // `..` and `.` name the state root and the sessions dir: records planted there are never
    // read.
    plant_record(&f, &id, &f.state);
    plant_record(&f, &id, &f.sessions_dir());
    for bad in ["..", ".", "", "../sessions/x"] {
        let out = run_cmd(&mut f.ovlrun(&["diff", bad]));
        out.expect_own_error(&["session id"]);
        assert!(!out.stdout.contains("/a"), "{}", out.context());
    }
    // Shaped like names (`--name`), which no session has.
    for unknown in ["ABCDEF", "0123456789abc"] {
        let out = run_cmd(&mut f.ovlrun(&["diff", unknown]));
        out.expect_own_error(&["no session", unknown]);
        assert!(!out.stdout.contains("/a"), "{}", out.context());
    }
    let before = f.session_ids();
    let out = run_cmd(&mut f.ovlrun(&["discard", "."]));
    out.expect_own_error(&["session id"]);
    assert_eq!(f.session_ids(), before, "discard . removed sessions");
    assert!(lstat(f.upper_of(&id)).is_dir());
    let out = run_cmd(&mut f.ovlrun(&["commit", "."]));
    out.expect_own_error(&["session id"]);

    // A unique prefix works; an ambiguous one is a named error.
    run_cmd(&mut f.ovlrun(&["diff", &id[..4]])).expect_stdout(&["A /a"]);
    let other = f.preserved("echo b > /b");
    let (x, y) = ("aaaa00000001", "aaaa00000002");
    rename_session(&f, &id, x);
    rename_session(&f, &other, y);
    let out = run_cmd(&mut f.ovlrun(&["diff", "aaaa"]));
    out.expect_own_error(&["ambiguous", x, y]);
    run_cmd(&mut f.ovlrun(&["diff", x])).expect_stdout(&["A /a"]);
    run_cmd(&mut f.ovlrun(&["diff", "aaaa00000002"])).expect_stdout(&["A /b"]);
}

#[test]
fn uid_and_gid_must_be_ids() {
    require_sessions!();
    let f = Fixture::new();
    for flag in ["--uid", "--gid"] {
        for value in ["4294967295", "4294967296", "-1", "root"] {
            let arg = format!("{flag}={value}");
            let out = run_cmd(&mut f.session_cmd(&[&arg], "id -u; id -g"));
            out.expect_own_error(&[flag]);
            assert!(out.stdout.is_empty(), "{}", out.context());
        }
    }
    // The largest valid id is fine.
    let out = run_cmd(&mut f.session_cmd(&["--uid", "4294967294"], "id -u"));
    out.expect_stdout(&["4294967294"]);
    // So is a config's.
    let config = f.dir.join("config.json");
    let out = run_cmd(f.ovlrun(&["spec", "--rootfs"]).arg(&f.rootfs));
    out.expect_ok();
    write(
        &config,
        out.stdout.replace("\"uid\": 0", "\"uid\": 4294967295"),
    );
    let out = run_cmd(
        f.ovlrun(&["--config"])
            .arg(&config)
            .args(["--", "id", "-u"]),
    );
    out.expect_own_error(&["uid"]);
}

#[test]
fn a_config_larger_than_the_bound_is_refused() {
    require_sessions!();
    let f = Fixture::new();
    // A valid config padded past 4 MiB with whitespace.
    let out = run_cmd(f.ovlrun(&["spec", "--rootfs"]).arg(&f.rootfs));
    out.expect_ok();
    let mut big = out.stdout.clone();
    big.push_str(&" ".repeat(5 << 20));
    let config = f.dir.join("big.json");
    write(&config, &big);
    let out = run_cmd(f.ovlrun(&["--config"]).arg(&config).args(["--", "true"]));
    out.expect_own_error(&["big.json", "MiB"]);

    // /dev/zero never ends: refused at once (memory capped, so a regression cannot eat the
    // machine).
    let mut cmd = Command::new("sh");
    cmd.env("OVLRUN_STATE", &f.state)
        .args([
            "-c",
            "ulimit -v 1048576; exec \"$0\" --config /dev/zero -- true",
        ])
        .arg(support::ovlrun_bin());
    let out = run_limited(&mut cmd, Duration::from_secs(10));
    assert!(
        !out.timed_out,
        "--config /dev/zero did not return\n{}",
        out.context()
    );
    out.expect_own_error(&["/dev/zero", "MiB"]);
}

/// systemd-resolved images: `/etc/resolv.conf` a dangling link into `/run`. The session still
/// gets the host's resolver (bound at the link's target inside the rootfs), and the target
/// the launcher made does not stay in the upper.
#[test]
fn a_dangling_resolv_conf_link_gets_the_host_resolver() {
    require_sessions!();
    let host = Path::new("/etc/resolv.conf");
    require!(host.exists(), "find the host's /etc/resolv.conf");
    let want = fs::read_to_string(host).unwrap();
    for target in [
        "../run/systemd/resolve/stub-resolv.conf",
        "/run/systemd/resolve/stub-resolv.conf",
    ] {
        let f = Fixture::new();
        let link = f.rootfs.join("etc/resolv.conf");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).unwrap();
        let before = Frozen::take(&f.rootfs);
        let out = f.sh(
            &["--policy", "preserve"],
            "cat /etc/resolv.conf; touch /kept",
        );
        out.expect_ok();
        assert_eq!(out.stdout, want, "link {target}\n{}", out.context());
        let (id, _) = out.kept_session();
        let diff = run_cmd(&mut f.ovlrun(&["diff", &id]));
        diff.expect_stdout(&["A /kept"]);
        before.assert_unchanged(&f.rootfs, "a session with a dangling resolv.conf");
    }
}

/// A rootfs whose `/etc/resolv.conf` is a directory: the session still runs with the
/// rootfs's own (nothing is mounted over it) and the user is told, once, why it does not get
/// the host's resolver.
#[test]
fn a_resolv_conf_directory_is_left_alone_with_a_note() {
    require_sessions!();
    require!(
        Path::new("/etc/resolv.conf").exists(),
        "find the host's /etc/resolv.conf"
    );
    let f = Fixture::new();
    let conf = f.rootfs.join("etc/resolv.conf");
    let _ = fs::remove_file(&conf);
    mkdir_p(&conf);
    fs::write(conf.join("inside"), "rootfs's own\n").unwrap();
    let before = Frozen::take(&f.rootfs);
    let out = f.sh(&[], "cat /etc/resolv.conf/inside");
    out.expect_ok();
    assert_eq!(out.stdout, "rootfs's own\n", "{}", out.context());
    let notes: Vec<_> = out
        .stderr
        .lines()
        .filter(|l| l.contains("/etc/resolv.conf in the rootfs leads to"))
        .collect();
    assert_eq!(
        notes.len(),
        1,
        "want one note naming the directory in the way\n{}",
        out.context()
    );
    assert!(
        notes[0].starts_with("ovlrun: ") && notes[0].contains("a directory"),
        "{}",
        out.context()
    );
    before.assert_unchanged(&f.rootfs, "a session over a resolv.conf directory");
}

/// A rootfs that is the root of its own filesystem, in a read-only directory: its commit keeps
/// the transaction in the state root and stages inside the rootfs under an unguessable name.
/// Killed midway, the commit is rolled back by `recover` to exactly the old tree (no stage
/// left, the root's times as before); committed again, it gives the new tree.
#[test]
fn a_rootfs_on_its_own_filesystem_stages_inside_it_and_recovers() {
    require_sessions!();
    support::private_mount_ns();
    let f = Fixture::new();
    let parent = f.dir.mkdir("ro");
    let tmpfs = |at: &Path, flags: nix::mount::MsFlags| {
        nix::mount::mount(Some("tmpfs"), at, Some("tmpfs"), flags, Some("mode=0755")).unwrap();
    };
    tmpfs(&parent, nix::mount::MsFlags::empty());
    let rootfs = parent.join("rootfs");
    mkdir_p(&rootfs);
    tmpfs(&rootfs, nix::mount::MsFlags::empty());
    run_cmd(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", f.rootfs.display()))
            .arg(&rootfs),
    )
    .expect_ok();
    nix::mount::mount(
        None::<&str>,
        &parent,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap();

    let mut cmd = f.ovlrun(&["--policy", "preserve", "--rootfs"]);
    cmd.arg(&rootfs).args([
        "--",
        "/bin/sh",
        "-c",
        "mkdir /opt && echo x > /opt/f && rm /etc/motd && echo y >> /etc/hostname",
    ]);
    let out = run_cmd(&mut cmd);
    out.expect_ok();
    let (id, _) = out.kept_session();
    let old = crate::crash::tree_state(&rootfs);
    let staged = || -> Vec<String> {
        ls(&rootfs)
            .into_iter()
            .filter(|n| n.starts_with(".ovlrun-stage."))
            .collect()
    };

    let out = run_cmd(
        f.ovlrun(&["commit", &id, "--atomic"])
            .env("OVLRUN_FAULT_AFTER", "4"),
    );
    assert_eq!(
        out.code(),
        137,
        "not killed by the fault\n{}",
        out.context()
    );
    assert_eq!(
        staged().len(),
        1,
        "no stage inside the rootfs: {:?}",
        ls(&rootfs)
    );
    assert!(
        lstat_opt(f.state.join("txns")).is_some_and(|m| m.is_dir())
            && ls(f.state.join("txns")).len() == 1,
        "no transaction in the state root\n{}",
        out.context()
    );
    let out = run_cmd(f.ovlrun(&["recover", "--rootfs"]).arg(&rootfs));
    out.expect_ok();
    assert!(out.stderr.contains("rolled back"), "{}", out.context());
    assert!(staged().is_empty(), "stage left: {:?}", staged());
    assert!(ls(f.state.join("txns")).is_empty(), "transaction left");
    let now = crate::crash::tree_state(&rootfs);
    assert!(
        now == old,
        "not the old tree: {}",
        crate::crash::differing_paths(&old, &now)
    );

    run_cmd(&mut f.ovlrun(&["commit", &id, "--atomic"])).expect_ok();
    assert!(staged().is_empty(), "stage left: {:?}", staged());
    assert_eq!(read_string(rootfs.join("opt/f")), "x\n");
    assert!(lstat_opt(rootfs.join("etc/motd")).is_none());
    assert!(ls(f.state.join("txns")).is_empty(), "transaction left");
}

/// The unprivileged user commits atomically into a rootfs of their own, in a directory they
/// may write (the transaction beside the rootfs) and in one they may not (the transaction in
/// their state root): killed midway, `recover` gives the old tree back; committed again, the
/// new one.
#[test]
fn a_user_commits_atomically_into_their_own_rootfs_and_recovers() {
    let caller = require_caller!(user);
    let s = Session::new(caller);
    let Caller::User(user) = &s.caller else {
        unreachable!()
    };
    let owner = format!("{}:{}", user.uid, user.gid);
    run_cmd(Command::new("chown").arg("-R").arg(&owner).arg(&s.rootfs)).expect_ok();
    let in_home = s.home.join("rootfs");
    run_cmd(Command::new("cp").arg("-a").arg(&s.rootfs).arg(&in_home)).expect_ok();
    for (rootfs, anchor_beside) in [(&in_home, true), (&s.rootfs, false)] {
        let mut cmd = s.ovlrun(&["--policy", "preserve", "--rootfs"]);
        cmd.arg(rootfs).args([
            "--",
            "/bin/sh",
            "-c",
            "echo x > /etc/new && rm /etc/motd && mkdir /opt",
        ]);
        let out = run_cmd(&mut cmd);
        out.expect_ok();
        let (id, _) = out.kept_session();
        let old = crate::crash::tree_state(rootfs);

        let mut commit = s.ovlrun(&["commit", &id, "--atomic"]);
        commit.env("OVLRUN_FAULT_AFTER", "3");
        let out = run_cmd(&mut commit);
        assert_eq!(
            out.code(),
            137,
            "not killed by the fault\n{}",
            out.context()
        );
        let beside = rootfs.with_file_name(".rootfs.ovlrun-txn");
        assert_eq!(
            lstat_opt(&beside).is_some(),
            anchor_beside,
            "{}: transaction beside the rootfs?",
            rootfs.display()
        );
        assert_eq!(
            lstat_opt(s.state.join("txns")).is_some_and(|_| !ls(s.state.join("txns")).is_empty()),
            !anchor_beside,
            "{}: transaction in the state root?",
            rootfs.display()
        );
        let out = run_cmd(s.ovlrun(&["recover", "--rootfs"]).arg(rootfs));
        out.expect_ok();
        assert!(out.stderr.contains("rolled back"), "{}", out.context());
        let now = crate::crash::tree_state(rootfs);
        assert!(
            now == old,
            "{}: not the old tree: {}",
            rootfs.display(),
            crate::crash::differing_paths(&old, &now)
        );
        run_cmd(&mut s.ovlrun(&["commit", &id, "--atomic"])).expect_ok();
        assert_eq!(read_string(rootfs.join("etc/new")), "x\n");
        assert!(lstat_opt(&beside).is_none());
    }
}

// ---------------------------------------------------------------------------------------------
// Commit policies commit only success (item 9)

/// `--policy commit` and `commit-atomic` over a command that fails (exit 1) or is killed
/// (SIGKILL) after writing half its work: the rootfs is untouched, the session is kept and
/// listed, and the message names the session and `ovlrun commit`; committing it then works.
/// `--commit-on always` commits such a run.
#[test]
fn commit_policies_keep_failed_and_killed_runs() {
    require_sessions!();
    let f = Fixture::new();
    for policy in ["commit", "commit-atomic"] {
        for (how, script, code) in [
            ("exit 1", "echo half > /etc/partial; exit 1", 1),
            ("kill -9", "echo half > /etc/partial; kill -9 $$", 137),
        ] {
            let what = format!("--policy {policy}, {how}");
            let before = Frozen::take(&f.rootfs);
            let out = f.sh(&["--policy", policy], script);
            assert_eq!(out.code(), code, "{what}\n{}", out.context());
            before.assert_unchanged(&f.rootfs, &what);
            let line = out
                .stderr
                .lines()
                .find(|l| l.contains("not committed"))
                .unwrap_or_else(|| panic!("{what}: no 'not committed' line\n{}", out.context()));
            let id = f
                .session_ids()
                .into_iter()
                .find(|id| {
                    line.contains(&format!("ovlrun commit {id}"))
                        || line.contains(&format!("ovlrun commit --atomic {id}"))
                })
                .unwrap_or_else(|| {
                    panic!(
                        "{what}: the line names no kept session's commit\n{}",
                        out.context()
                    )
                });
            let row = f
                .ls_row(&id)
                .unwrap_or_else(|| panic!("{what}: {id} not listed"));
            assert_eq!(row["status"], "preserved", "{what}: {row}");
            assert_eq!(
                read_string(f.upper_of(&id).join("etc/partial")),
                "half\n",
                "{what}"
            );
            run_cmd(&mut f.ovlrun(&["commit", &id])).expect_ok();
            assert_eq!(
                read_string(f.rootfs.join("etc/partial")),
                "half\n",
                "{what}"
            );
            fs::remove_file(f.rootfs.join("etc/partial")).unwrap();
            f.assert_no_sessions(&what);
        }
        let out = f.sh(
            &["--policy", policy, "--commit-on", "always"],
            "echo half > /etc/partial; exit 3",
        );
        assert_eq!(out.code(), 3, "{}", out.context());
        assert_eq!(
            read_string(f.rootfs.join("etc/partial")),
            "half\n",
            "--policy {policy} --commit-on always did not commit\n{}",
            out.context()
        );
        f.assert_no_sessions("--commit-on always");
        fs::remove_file(f.rootfs.join("etc/partial")).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Launcher scaffolding after SIGKILL (item 8)

/// Starts a `--policy preserve` session on `fs` that writes `/kept` and waits, SIGKILLs
/// ovlrun once `/kept` is written, and returns the session's id.
fn killed_session(f: &Fixture, fs_name: &str) -> String {
    let mut bg = support::Bg::spawn(
        &mut f.session_cmd(
            &["--policy", "preserve", "--fs", fs_name],
            "echo x > /kept; echo written; exec sleep 60",
        ),
        crate::policy::RUN_TIMEOUT,
    );
    bg.wait_line("written");
    let out = bg.kill_now();
    assert_eq!(out.code(), 137, "ovlrun was not killed\n{}", out.context());
    let ids = f.session_ids();
    assert_eq!(ids.len(), 1, "{ids:?}\n{}", out.context());
    ids.into_iter().next().unwrap()
}

/// A rootfs without `/tmp` and `/etc/resolv.conf` (mount targets the launcher makes in the
/// upper): after ovlrun is SIGKILLed during a preserve session, `diff` shows only what the
/// command wrote, so does it after a `run --resume`, and `commit` (after either, or first)
/// writes only that; on both backends.
#[test]
fn scaffolding_never_reaches_an_upper_after_sigkill() {
    require_sessions!();
    for fs_name in ["kernel", "fuse"] {
        let f = Fixture::new();
        fs::remove_dir(f.rootfs.join("tmp")).unwrap();
        let _ = fs::remove_file(f.rootfs.join("etc/resolv.conf"));
        let _ = fs::remove_file(f.rootfs.join("etc/hosts"));
        for first in ["diff", "resume", "nothing"] {
            let what = format!("--fs {fs_name}, then {first}");
            let before = support::tree_snapshot(&f.rootfs);
            let id = killed_session(&f, fs_name);
            match first {
                "diff" => {
                    let out = run_cmd(&mut f.ovlrun(&["diff", &id]));
                    assert_eq!(out.stdout, "A /kept\n", "{what}\n{}", out.context());
                }
                "resume" => {
                    let mut cmd = f.ovlrun(&["run", "--resume", &id, "--fs", fs_name]);
                    cmd.args(["--", "/bin/sh", "-c", "cat /kept"]);
                    run_cmd(&mut cmd).expect_ok().expect_stdout(&["x"]);
                    let out = run_cmd(&mut f.ovlrun(&["diff", &id]));
                    assert_eq!(out.stdout, "A /kept\n", "{what}\n{}", out.context());
                }
                _ => {}
            }
            run_cmd(&mut f.ovlrun(&["commit", &id])).expect_ok();
            assert_eq!(read_string(f.rootfs.join("kept")), "x\n", "{what}");
            fs::remove_file(f.rootfs.join("kept")).unwrap();
            let after = support::tree_snapshot(&f.rootfs);
            if let Some(d) = support::tree_diff("before", &before, "after the commit", &after) {
                panic!("{what}: the commit wrote more than /kept:\n{d}");
            }
            f.assert_no_sessions(&what);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Staging on the rootfs's mount (item 6)

/// Bind mounts made by a test, detached when it ends (the thread's private mount namespace
/// goes with it anyway).
struct Binds(Vec<PathBuf>);

impl Binds {
    fn bind(&mut self, src: &Path, dst: &Path) {
        nix::mount::mount(
            Some(src),
            dst,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("bind {} on {}: {e}", src.display(), dst.display()));
        self.0.push(dst.to_owned());
    }
}

impl Drop for Binds {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A rootfs that is a bind mount (of a directory onto itself, and onto another place) shares
/// its `st_dev` with the directory beside it, where the transaction goes, but not its mount:
/// plain and atomic commits stage inside it and succeed, leaving no stage.
#[test]
fn a_rootfs_that_is_a_bind_mount_is_committed() {
    require_sessions!();
    support::private_mount_ns();
    let f = Fixture::new();
    let elsewhere = f.dir.mkdir("elsewhere");
    let mut binds = Binds(Vec::new());
    binds.bind(&f.rootfs, &elsewhere);
    binds.bind(&f.rootfs, &f.rootfs);
    for (n, (rootfs, atomic)) in [
        (&f.rootfs, false),
        (&f.rootfs, true),
        (&elsewhere, false),
        (&elsewhere, true),
    ]
    .into_iter()
    .enumerate()
    {
        let what = format!("rootfs {}, atomic: {atomic}", rootfs.display());
        let mut cmd = f.ovlrun(&["--policy", "preserve", "--rootfs"]);
        cmd.arg(rootfs).args([
            "--",
            "/bin/sh",
            "-c",
            &format!("echo {n} > /etc/new{n} && mkdir /opt{n}"),
        ]);
        let out = run_cmd(&mut cmd);
        out.expect_ok();
        let (id, _) = out.kept_session();
        let mut args = vec!["commit", id.as_str()];
        if atomic {
            args.push("--atomic");
        }
        let out = run_cmd(&mut f.ovlrun(&args));
        out.expect_ok();
        assert_eq!(
            read_string(f.rootfs.join(format!("etc/new{n}"))),
            format!("{n}\n"),
            "{what}"
        );
        assert!(lstat(f.rootfs.join(format!("opt{n}"))).is_dir(), "{what}");
        let left: Vec<String> = ls(&f.rootfs)
            .into_iter()
            .filter(|n| n.contains("ovlrun"))
            .chain(
                ls(f.dir.path())
                    .into_iter()
                    .filter(|n| n.contains("ovlrun")),
            )
            .collect();
        assert!(left.is_empty(), "{what}: left {left:?}");
    }
    drop(binds);
}

// ---------------------------------------------------------------------------------------------
// A failed plain commit (item 7)

/// Names in the rootfs and beside it that belong to a commit's staging.
fn staging_left(f: &Fixture) -> Vec<String> {
    ls(&f.rootfs)
        .into_iter()
        .chain(ls(f.dir.path()))
        .filter(|n| n.contains("ovlrun-txn") || n.contains("ovlrun-stage"))
        .collect()
}

/// A plain commit that fails midway (an immutable `/etc` refuses its install there) removes
/// its staging and says how many steps it applied and which was not; the next run recovers
/// nothing; once `/etc` is writable, committing again applies the rest.
#[test]
fn a_failed_plain_commit_removes_its_staging_and_says_what_it_applied() {
    require!(
        can_run_sessions() && support::is_root(),
        "run sessions as root (chattr +i)"
    );
    let f = Fixture::new();
    let id = f.preserved("echo a > /bin/new-a && echo e > /etc/new-e && echo z > /var/new-z");
    let pin = crate::policy::Immutable::set(f.rootfs.join("etc"));
    let out = run_cmd(&mut f.ovlrun(&["commit", &id]));
    assert_eq!(out.code(), EXIT_OWN_ERROR, "{}", out.context());
    assert!(
        out.stderr.contains("steps were applied") && out.stderr.contains("/etc"),
        "the failure does not say what was applied\n{}",
        out.context()
    );
    assert!(
        !out.stderr.contains("as before"),
        "a half-applied commit claims the rootfs is as before\n{}",
        out.context()
    );
    assert_eq!(
        read_string(f.rootfs.join("bin/new-a")),
        "a\n",
        "not applied first"
    );
    assert!(staging_left(&f).is_empty(), "{:?}", staging_left(&f));
    let next = f.sh(&[], "true");
    next.expect_ok();
    assert!(!next.stderr.contains("recovered"), "{}", next.context());
    drop(pin);
    run_cmd(&mut f.ovlrun(&["commit", &id])).expect_ok();
    for (p, c) in [
        ("bin/new-a", "a\n"),
        ("etc/new-e", "e\n"),
        ("var/new-z", "z\n"),
    ] {
        assert_eq!(read_string(f.rootfs.join(p)), c);
    }
    f.assert_no_sessions("the second commit");
}

/// What a killed plain commit leaves (a transaction directory with no journal): the next run
/// removes it and says the rootfs may hold part of that commit, never "as before it".
#[test]
fn the_leftover_of_a_killed_plain_commit_is_reported_truly() {
    require_sessions!();
    let f = Fixture::new();
    let txn = f.dir.join(".rootfs.ovlrun-txn");
    for sub in ["new", "old"] {
        mkdir_p(txn.join(sub));
    }
    fs::set_permissions(&txn, fs::Permissions::from_mode(0o700)).unwrap();
    write(txn.join("old/0"), "moved aside\n");
    let out = f.sh(&[], "true");
    out.expect_ok();
    assert!(
        out.stderr.contains("plain commit") && out.stderr.contains("part of its changes"),
        "{}",
        out.context()
    );
    assert!(!out.stderr.contains("as before"), "{}", out.context());
    assert!(staging_left(&f).is_empty(), "{:?}", staging_left(&f));
}
