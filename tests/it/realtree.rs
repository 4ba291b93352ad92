//! Real distribution trees: apt, dpkg, useradd, su and a parallel C build in sessions over
//! Debian bookworm, as root and as the unprivileged `ovlrun-test` user.
//!
//! The trees come from `scripts/mkdebian.sh`, run once per test process (a [`OnceLock`]) and
//! cached under `target/debian/`: `bookworm` (minbase), `bookworm-build` (gcc, libc6-dev, make)
//! and `bookworm-ovlrun-test` (minbase owned by that user's ids as seen from the host). The
//! first build takes minutes and needs the Debian mirror of this machine's apt configuration;
//! later runs find the trees in place. No test writes a cached tree: a test whose session
//! commits works on its own `cp -a` of it, and the others use policies that leave it alone.
//!
//! Sessions use the default backend, so `OVLRUN_FS` picks it: `scripts/test.sh` runs this module
//! with `--fs auto` (the kernel overlayfs here) and again with `OVLRUN_FS=fuse`. Each launch
//! runs under a time limit, so a hung session fails its test instead of hanging the run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::unistd::User;

use crate::support::{self, EntryInfo, Out, TestDir, run_limited, run_within, tail};

/// The unprivileged user `scripts/setup.sh` creates, with a range in /etc/subuid.
const TEST_USER: &str = "ovlrun-test";

/// A small package with one binary whose output is known.
const PKG: &str = "hello";
const PKG_BIN: &str = "/usr/bin/hello";
const PKG_OUTPUT: &str = "Hello, world!";

/// A session that downloads from the mirror (apt-get update fetches ~10 MB of lists).
const APT_TIMEOUT: Duration = Duration::from_secs(300);
/// A session that only works locally; also the limit for apt failing without a network.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(60);
/// The first build of the trees (debootstrap, then apt-get install gcc in a copy).
const BUILD_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// The environment of every session: a clean one, as a login on the tree would have.
const SESSION_ENV: &[&str] = &[
    "--clear-env",
    "--env",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "--env",
    "DEBIAN_FRONTEND=noninteractive",
    "--env",
    "LC_ALL=C",
];

/// apt-get update, then install [`PKG`] and run it.
fn apt_install_script() -> String {
    format!(
        "set -e; apt-get update -q; apt-get install -y -q --no-install-recommends {PKG}; \
         echo RAN=$({PKG_BIN})"
    )
}

/// What dpkg does to a real system in one session: several packages in one run (dpkg
/// extracts each into the same temporary directories), a file capability set by a maintainer
/// script (iputils-ping's postinst runs setcap), an alternative (less provides pager),
/// reinstalls of packages the tree already has (dpkg hard-links the old file as a backup,
/// then renames the new one over it) and a purge (1300 paths of tzdata become whiteouts).
const APT_WORKLOAD: &str = "set -e
    apt-get update -q
    apt-get install -y -q --no-install-recommends hello iputils-ping less
    apt-get install -y -q --reinstall sed gzip
    apt-get purge -y -q tzdata
    echo RAN=$(hello)
    echo CAP=$(getcap /usr/bin/ping | cut -d' ' -f2)
    echo PAGER=$(readlink -f /usr/bin/pager)
    test -e /usr/share/zoneinfo || echo ZONEINFO=gone";

/// Checks the `KEY=VALUE` lines [`APT_WORKLOAD`] prints.
#[track_caller]
fn check_workload_output(out: &Out) {
    assert_eq!(out.value("RAN"), PKG_OUTPUT, "{}", out.context());
    assert_eq!(out.value("CAP"), "cap_net_raw=ep", "{}", out.context());
    assert_eq!(out.value("PAGER"), "/usr/bin/less", "{}", out.context());
    assert_eq!(out.value("ZONEINFO"), "gone", "{}", out.context());
}

/// After [`APT_WORKLOAD`] was committed into `root`: dpkg itself finds a consistent system
/// with the packages installed, every file with the md5sum dpkg recorded (the commit copied
/// content right and touched nothing else), and no overlay internals.
#[track_caller]
fn check_workload_committed(root: &Path) {
    for pkg in [PKG, "iputils-ping", "less"] {
        assert_installed(root, pkg);
    }
    let ran = chroot(root, &[PKG_BIN]);
    ran.expect_ok();
    assert_eq!(ran.stdout.trim(), PKG_OUTPUT, "{}", ran.context());
    let audit = chroot(root, &["dpkg", "--audit"]);
    assert_eq!(
        (audit.code(), audit.stdout.as_str()),
        (0, ""),
        "dpkg --audit\n{}",
        audit.context()
    );
    let verify = chroot(root, &["dpkg", "--verify"]);
    assert_eq!(
        (verify.code(), verify.stdout.as_str()),
        (0, ""),
        "dpkg --verify\n{}",
        verify.context()
    );
    let ping = root.join("usr/bin/ping");
    assert!(
        xattr::get(&ping, "security.capability")
            .unwrap_or_else(|e| panic!("getxattr {}: {e}", ping.display()))
            .is_some(),
        "{} has no file capability after the commit",
        ping.display()
    );
    let pager = root.join("etc/alternatives/pager");
    assert_eq!(
        fs::read_link(&pager).ok(),
        Some(PathBuf::from("/usr/bin/less")),
        "{}",
        pager.display()
    );
    assert!(
        support::lstat_opt(root.join("usr/share/zoneinfo")).is_none(),
        "usr/share/zoneinfo is still in the rootfs after purging tzdata"
    );
    let internals = support::overlay_internals_visible(root);
    assert!(
        internals.is_empty(),
        "overlay internals committed into the rootfs:\n{}",
        internals.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The trees

pub(crate) struct Trees {
    /// `debootstrap --variant=minbase bookworm`, owned by root.
    pub(crate) minbase: PathBuf,
    /// minbase + gcc, libc6-dev, make.
    pub(crate) build: PathBuf,
    /// minbase owned by [`TEST_USER`]'s ids (None when the user or its range is missing).
    pub(crate) user: Option<PathBuf>,
}

/// The cached trees, made by `scripts/mkdebian.sh` on the first call of the process (also
/// used by `escape.rs`, so that one process never builds them twice at once).
pub(crate) fn trees() -> Result<&'static Trees, &'static str> {
    static TREES: OnceLock<Result<Trees, String>> = OnceLock::new();
    TREES
        .get_or_init(make_trees)
        .as_ref()
        .map_err(String::as_str)
}

fn make_trees() -> Result<Trees, String> {
    if !support::is_root() {
        return Err("scripts/mkdebian.sh needs root".into());
    }
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .ok_or("CARGO_TARGET_TMPDIR has no parent")?;
    let minbase = target.join("debian/bookworm");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mkdebian.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    let with_user = unprivileged_user().is_some();
    if with_user {
        cmd.args(["--user", TEST_USER]);
    }
    cmd.arg(&minbase);
    let start = Instant::now();
    let out = run_limited(&mut cmd, BUILD_TIMEOUT);
    eprintln!(
        "realtree: scripts/mkdebian.sh took {:.1} s: {}",
        start.elapsed().as_secs_f64(),
        out.stdout.trim().replace('\n', "; ")
    );
    if out.timed_out || !out.status.success() {
        return Err(out.context());
    }
    let with_suffix = |s: &str| {
        let mut p = minbase.clone().into_os_string();
        p.push(s);
        PathBuf::from(p)
    };
    Ok(Trees {
        build: with_suffix("-build"),
        user: with_user.then(|| with_suffix(&format!("-{TEST_USER}"))),
        minbase,
    })
}

/// Skips (locally) or fails (under `CI`) a test that cannot run sessions over the trees;
/// evaluates to the trees.
macro_rules! require_trees {
    () => {{
        require!(
            support::can_mount_fuse(),
            "launch sessions (needs root and /dev/fuse)"
        );
        if let Err(e) = trees() {
            eprintln!("scripts/mkdebian.sh failed:\n{e}");
        }
        require!(
            trees().is_ok(),
            "build the Debian trees with scripts/mkdebian.sh (needs the Debian mirror)"
        );
        trees().unwrap()
    }};
}

// ---------------------------------------------------------------------------------------------
// Running processes

/// `chroot ROOT ARGV..` on the host, as root: looks at a tree after a session.
#[track_caller]
fn chroot(root: &Path, argv: &[&str]) -> Out {
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C");
    run_within(&mut cmd, LOCAL_TIMEOUT)
}

/// Writes `data` to `path` and returns the path.
fn written(path: PathBuf, data: &str) -> PathBuf {
    support::write(&path, data);
    path
}

/// `cp -a SRC DST`.
fn copy_tree(src: &Path, dst: &Path) {
    let out = run_within(
        Command::new("cp").arg("-a").arg(src).arg(dst),
        LOCAL_TIMEOUT,
    );
    out.expect_ok();
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// Who runs `ovlrun`: root, or [`TEST_USER`] with a home (holding the state root) it owns.
enum Caller {
    Root,
    User { user: User, home: PathBuf },
}

/// One test's directory, state root, rootfs and caller.
struct Fixture {
    /// Removed when the test ends.
    dir: TestDir,
    state: PathBuf,
    rootfs: PathBuf,
    caller: Caller,
}

impl Fixture {
    /// As root over `rootfs` (a cached tree, or the test's own copy).
    fn root(dir: TestDir, rootfs: &Path) -> Fixture {
        Fixture {
            state: dir.join("state"),
            rootfs: rootfs.to_owned(),
            dir,
            caller: Caller::Root,
        }
    }

    /// As root over a private `cp -a` of `tree`.
    fn root_copy(tree: &Path) -> Fixture {
        let dir = TestDir::new();
        let rootfs = dir.join("rootfs");
        copy_tree(tree, &rootfs);
        Fixture::root(dir, &rootfs)
    }

    /// As [`TEST_USER`] over `rootfs`, with a 0700 home it owns holding the state root.
    fn user(user: User, rootfs: &Path) -> Fixture {
        let dir = TestDir::new();
        let home = dir.mkdir("home");
        nix::unistd::chown(&home, Some(user.uid), Some(user.gid)).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
        Fixture {
            state: home.join("state"),
            rootfs: rootfs.to_owned(),
            dir,
            caller: Caller::User { user, home },
        }
    }

    /// `ovlrun ARGS..` as the caller, with `OVLRUN_STATE` in the test dir.
    fn ovlrun(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(support::ovlrun_bin());
        cmd.args(args);
        match &self.caller {
            Caller::Root => {
                cmd.env("OVLRUN_STATE", &self.state);
            }
            Caller::User { user, home } => {
                cmd.env_clear()
                    .env("HOME", home)
                    .env("OVLRUN_STATE", &self.state)
                    .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
                    .env("USER", &user.name)
                    .envs(std::env::var_os("OVLRUN_FS").map(|v| ("OVLRUN_FS", v)))
                    .current_dir(home)
                    .uid(user.uid.as_raw())
                    .gid(user.gid.as_raw());
            }
        }
        cmd
    }

    /// `ovlrun <clean env> FLAGS.. --rootfs ROOTFS -- /bin/sh -c SCRIPT`.
    fn session(&self, flags: &[&str], script: &str) -> Command {
        let mut cmd = self.ovlrun(SESSION_ENV);
        cmd.args(flags)
            .arg("--rootfs")
            .arg(&self.rootfs)
            .args(["--", "/bin/sh", "-c", script]);
        cmd
    }

    fn sessions_dir(&self) -> PathBuf {
        self.state.join("sessions")
    }

    /// Entries left under the state root's `sessions/`.
    fn sessions_left(&self) -> Vec<String> {
        match fs::read_dir(self.sessions_dir()) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("read_dir {}: {e}", self.sessions_dir().display()),
        }
    }
}

fn unprivileged_user() -> Option<User> {
    let user = User::from_name(TEST_USER).ok().flatten()?;
    let has_range = |file: &str| {
        fs::read_to_string(file).is_ok_and(|c| {
            c.lines().any(|l| {
                let f: Vec<&str> = l.trim().split(':').collect();
                f.len() == 3
                    && (f[0] == user.name || f[0] == user.uid.to_string())
                    && f[2].parse::<u32>().is_ok_and(|n| n > 0)
            })
        })
    };
    (has_range("/etc/subuid") && has_range("/etc/subgid")).then_some(user)
}

/// The start of [`TEST_USER`]'s range in /etc/subuid.
fn subuid_start(user: &User) -> u32 {
    let c = fs::read_to_string("/etc/subuid").unwrap();
    c.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.trim().split(':').collect();
            (f.len() == 3 && (f[0] == user.name || f[0] == user.uid.to_string()))
                .then(|| f[1].parse().unwrap())
        })
        .unwrap()
}

/// A user's uid in a tree's /etc/passwd.
fn uid_in_tree(root: &Path, name: &str) -> u32 {
    let passwd = support::read_string(root.join("etc/passwd"));
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == name).then(|| f[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {name} in {}/etc/passwd", root.display()))
}

/// Whether every directory above `path` lets others search it.
fn searchable_by_others(path: &Path) -> bool {
    path.ancestors()
        .skip(1)
        .all(|d| fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 != 0))
}

/// The diff lines (`A /path`) of `ovlrun diff ID`.
#[track_caller]
fn diff_lines(f: &Fixture, id: &str) -> Vec<String> {
    let out = run_within(&mut f.ovlrun(&["diff", id]), LOCAL_TIMEOUT);
    out.expect_ok();
    out.stdout.lines().map(str::to_owned).collect()
}

/// Paths the launcher makes for its own mounts, which must never show as changes.
fn launcher_artifact(path: &str) -> bool {
    ["/proc/", "/sys/", "/dev/", "/tmp/"]
        .iter()
        .any(|p| path.starts_with(p))
        || ["/etc/resolv.conf", "/etc/hosts"].contains(&path)
}

// ---------------------------------------------------------------------------------------------
// apt and dpkg as root

#[test]
fn apt_workload_with_commit_lands_in_the_rootfs() {
    let trees = require_trees!();
    let f = Fixture::root_copy(&trees.minbase);
    let out = run_within(
        &mut f.session(&["--policy", "commit"], APT_WORKLOAD),
        APT_TIMEOUT,
    );
    out.expect_ok();
    check_workload_output(&out);
    assert!(f.sessions_left().is_empty(), "{:?}", f.sessions_left());
    check_workload_committed(&f.rootfs);
}

/// `chroot ROOT dpkg -s PKG` says installed.
#[track_caller]
fn assert_installed(root: &Path, pkg: &str) {
    let st = chroot(root, &["dpkg", "-s", pkg]);
    assert!(
        st.code() == 0 && st.stdout.contains("Status: install ok installed"),
        "{pkg} is not installed in {}\n{}",
        root.display(),
        st.context()
    );
}

/// A kept apt session as a user keeps one: diff, export, a second command on it
/// (`run --resume`), then `ovlrun commit --atomic ID` into the rootfs.
#[test]
fn apt_session_diff_export_resume_and_commit_atomic() {
    let trees = require_trees!();
    let f = Fixture::root_copy(&trees.minbase);
    let script = format!("{}; apt-get purge -y -q tzdata", apt_install_script());
    let out = run_within(
        &mut f.session(&["--policy", "preserve"], &script),
        APT_TIMEOUT,
    );
    out.expect_ok();
    assert_eq!(out.value("RAN"), PKG_OUTPUT, "{}", out.context());
    let (id, upper) = out.kept_session();
    let diff = diff_lines(&f, &id);
    let has = |line: &str| diff.iter().any(|l| l == line);
    for want in [
        format!("A {PKG_BIN}"),
        "C /var/lib/dpkg/status".into(),
        "D /usr/share/zoneinfo".into(),
    ] {
        assert!(has(&want), "no '{want}' in diff:\n{}", diff.join("\n"));
    }
    // Every path dpkg lists for the package that the tree did not have is an addition.
    let list = support::read_string(upper.join(format!("var/lib/dpkg/info/{PKG}.list")));
    let missing: Vec<String> = list
        .lines()
        .filter(|p| *p != "/." && support::lstat_opt(f.rootfs.join(&p[1..])).is_none())
        .map(|p| format!("A {p}"))
        .filter(|l| !has(l))
        .collect();
    assert!(
        missing.is_empty(),
        "package paths missing from the diff: {missing:?}\ndiff:\n{}",
        diff.join("\n")
    );
    let artifacts: Vec<&String> = diff
        .iter()
        .filter(|l| l.get(2..).is_some_and(launcher_artifact))
        .collect();
    assert!(
        artifacts.is_empty(),
        "launcher mount targets in the diff: {artifacts:?}"
    );

    // The same changes as an OCI layer: files, and .wh. whiteouts for the purge.
    let layer = f.dir.join("layer.tar");
    let layer_arg = layer.to_str().unwrap();
    run_within(
        &mut f.ovlrun(&["export", &id, "-o", layer_arg]),
        LOCAL_TIMEOUT,
    )
    .expect_ok();
    let tar = run_within(Command::new("tar").arg("tf").arg(&layer), LOCAL_TIMEOUT);
    tar.expect_ok();
    for want in ["usr/bin/hello", "usr/share/.wh.zoneinfo"] {
        assert!(
            tar.stdout
                .lines()
                .any(|l| l.trim_start_matches("./") == want),
            "no {want} in the exported layer\n{}",
            tar.context()
        );
    }

    // A second command on the kept changes: apt's lists are there, so no download of them.
    let mut resume = f.ovlrun(&["run"]);
    resume
        .args(SESSION_ENV)
        .args(["--resume", &id, "--", "/bin/sh", "-c"])
        .arg("set -e; apt-get install -y -q --no-install-recommends less; echo RAN=$(hello)");
    let out = run_within(&mut resume, APT_TIMEOUT);
    out.expect_ok();
    assert_eq!(out.value("RAN"), PKG_OUTPUT, "{}", out.context());

    run_within(&mut f.ovlrun(&["commit", "--atomic", &id]), LOCAL_TIMEOUT).expect_ok();
    assert!(f.sessions_left().is_empty(), "{:?}", f.sessions_left());
    assert_installed(&f.rootfs, PKG);
    assert_installed(&f.rootfs, "less");
    for check in [&["dpkg", "--audit"][..], &["dpkg", "--verify"]] {
        let out = chroot(&f.rootfs, check);
        assert_eq!(
            (out.code(), out.stdout.as_str()),
            (0, ""),
            "{}",
            out.context()
        );
    }
    assert!(
        support::lstat_opt(f.rootfs.join("usr/share/zoneinfo")).is_none(),
        "usr/share/zoneinfo is still in the rootfs after purging tzdata"
    );
    let internals = support::overlay_internals_visible(&f.rootfs);
    assert!(
        internals.is_empty(),
        "overlay internals committed into the rootfs:\n{}",
        internals.join("\n")
    );
}

#[test]
fn apt_update_without_network_fails_fast() {
    let trees = require_trees!();
    let f = Fixture::root(TestDir::new(), &trees.minbase);
    // --error-on=any: without it, apt-get update reports fetch failures as warnings and
    // exits 0 (apt >= 2.1.16).
    let out = run_limited(
        &mut f.session(&["--net", "none"], "apt-get -q --error-on=any update"),
        LOCAL_TIMEOUT,
    );
    assert!(
        !out.timed_out,
        "apt-get update without a network hangs\n{}",
        out.context()
    );
    assert_ne!(out.code(), 0, "{}", out.context());
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("Temporary failure resolving")
            || all.contains("Could not resolve")
            || all.contains("Network is unreachable")
            || all.contains("Failed to fetch"),
        "not apt's own network error\n{}",
        out.context()
    );
    assert!(f.sessions_left().is_empty(), "{:?}", f.sessions_left());
}

// ---------------------------------------------------------------------------------------------
// The merged view of a real tree

/// Lists every entry of the tree at / with type, mode, owner, and for non-directories size,
/// link count and link target (directory sizes and link counts differ between filesystems),
/// leaving out what the launcher mounts; then `dpkg --verify`, which reads every packaged
/// file and compares its md5sum.
const VIEW_SCRIPT: &str = r#"cd / && find / -xdev \( -path /proc -o -path /sys -o -path /dev \
        -o -path /tmp -o -path /etc/resolv.conf -o -path /etc/hosts -o -path /.ovlrun-debian-ok \) \
        -prune -o \( -type d -printf "%p d %m %U %G\n" \) -o -printf "%p %y %m %U %G %s %n %l\n" \
        | LC_ALL=C sort
    echo '== dpkg --verify'
    dpkg --verify; echo "rc=$?""#;

/// A session over a real tree shows exactly the tree, owners included (as the user: its sub-ids
/// seen as the tree's own ids), and every packaged file reads back with dpkg's md5sum.
#[test]
fn merged_view_equals_the_tree_as_root_and_as_the_user() {
    let trees = require_trees!();
    let want = chroot(&trees.minbase, &["/bin/sh", "-c", VIEW_SCRIPT]);
    want.expect_ok();
    assert!(
        want.stdout.ends_with("== dpkg --verify\nrc=0\n"),
        "dpkg --verify of the tree itself\n{}",
        want.context()
    );
    let mut fixtures = vec![("root", Fixture::root(TestDir::new(), &trees.minbase))];
    if let (Some(user), Some(tree)) = (unprivileged_user(), trees.user.as_deref()) {
        fixtures.push((TEST_USER, Fixture::user(user, tree)));
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have user {TEST_USER} with a subuid range"
        );
    }
    for (who, f) in fixtures {
        let got = run_within(&mut f.session(&[], VIEW_SCRIPT), LOCAL_TIMEOUT);
        got.expect_ok();
        if got.stdout != want.stdout {
            let diff = run_within(
                Command::new("diff")
                    .arg(written(f.dir.join("want"), &want.stdout))
                    .arg(written(f.dir.join("got"), &got.stdout)),
                LOCAL_TIMEOUT,
            );
            panic!(
                "the session's view (as {who}) differs from the tree (< tree, > session):\n{}",
                tail(&diff.stdout, 80)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Users and groups other than root

#[test]
fn useradd_chown_and_su_work_inside() {
    let trees = require_trees!();
    let f = Fixture::root(TestDir::new(), &trees.minbase);
    let script = r#"set -e
        useradd -m -s /bin/sh testuser
        echo U=$(id -u testuser):$(id -g testuser)
        echo x > /home/testuser/x
        chown testuser:testuser /home/testuser/x
        echo X=$(stat -c %U:%G /home/testuser/x)
        echo SU=$(su testuser -c 'id -un; echo mine > $HOME/y; stat -c %U:%G $HOME/y' | tr '\n' ' ')
        echo SETPRIV=$(setpriv --reuid=testuser --regid=testuser --init-groups id -un)
        if setpriv --reuid=testuser --regid=testuser --init-groups sh -c ': > /etc/forbidden' 2>/dev/null
        then echo ETC=writable; else echo ETC=denied; fi
        echo HOME=$(stat -c %U:%a /home/testuser)
    "#;
    let out = run_within(
        &mut f.session(&["--policy", "preserve"], script),
        LOCAL_TIMEOUT,
    );
    out.expect_ok();
    let uid_gid = out.value("U").to_owned();
    assert_eq!(out.value("X"), "testuser:testuser", "{}", out.context());
    assert_eq!(
        out.value("SU").trim(),
        "testuser testuser:testuser",
        "{}",
        out.context()
    );
    assert_eq!(out.value("SETPRIV"), "testuser", "{}", out.context());
    assert_eq!(out.value("ETC"), "denied", "{}", out.context());
    assert!(
        out.value("HOME").starts_with("testuser:"),
        "{}",
        out.context()
    );

    // Root's sessions map every id onto itself: the upper holds the new user's own ids.
    let (id, upper) = out.kept_session();
    let (uid, gid) = uid_gid.split_once(':').unwrap();
    let md = support::lstat(upper.join("home/testuser/y"));
    assert_eq!(
        (md.uid().to_string(), md.gid().to_string()),
        (uid.to_owned(), gid.to_owned()),
        "owner of home/testuser/y in the upper"
    );
    let diff = diff_lines(&f, &id);
    for want in ["A /home/testuser/x", "C /etc/passwd", "C /etc/group"] {
        assert!(
            diff.iter().any(|l| l == want),
            "no '{want}' in diff:\n{}",
            diff.join("\n")
        );
    }
    run_within(&mut f.ovlrun(&["discard", &id]), LOCAL_TIMEOUT).expect_ok();
    assert!(f.sessions_left().is_empty(), "{:?}", f.sessions_left());
}

// ---------------------------------------------------------------------------------------------
// The unprivileged path: ovlrun-test over its own tree (owned by its ids as seen from the host)

macro_rules! require_user_tree {
    () => {{
        let trees = require_trees!();
        require!(
            unprivileged_user().is_some() && trees.user.is_some(),
            "find user ovlrun-test with a range in /etc/subuid and /etc/subgid (scripts/setup.sh)"
        );
        require!(
            searchable_by_others(Path::new(support::ovlrun_bin()))
                && searchable_by_others(&trees.minbase)
                && searchable_by_others(
                    Path::new(env!("CARGO_TARGET_TMPDIR")).join("it").as_path()
                ),
            "reach the binary, the trees and the test dirs as another user (a parent lacks o+x)"
        );
        (unprivileged_user().unwrap(), trees.user.as_deref().unwrap())
    }};
}

#[test]
fn unprivileged_apt_workload_leaves_the_tree_unchanged() {
    let (user, tree) = require_user_tree!();
    let before: BTreeMap<PathBuf, EntryInfo> = support::tree_snapshot(tree);
    let f = Fixture::user(user, tree);
    let out = run_within(&mut f.session(&[], APT_WORKLOAD), APT_TIMEOUT);
    out.expect_ok();
    check_workload_output(&out);
    // apt fetches as _apt; it falls back to root (and says so) when _apt cannot write its
    // partial directory, which is what a session without the id range would give.
    assert!(
        !out.stderr.contains("unsandboxed"),
        "apt could not drop to _apt\n{}",
        out.context()
    );
    assert!(f.sessions_left().is_empty(), "{:?}", f.sessions_left());
    let after = support::tree_snapshot(tree);
    support::assert_trees_eq("before", &before, "after", &after);
}

#[test]
fn unprivileged_apt_workload_with_commit_into_its_own_tree() {
    let (user, tree) = require_user_tree!();
    // The user's copy of its tree, in a directory of root's (as /srv/trees/NAME would be):
    // the user owns the tree, not the directory that holds it.
    let f = Fixture::user(user, tree);
    let rootfs = f.dir.join("rootfs");
    copy_tree(tree, &rootfs);
    let f = Fixture { rootfs, ..f };
    let out = run_within(
        &mut f.session(&["--policy", "commit"], APT_WORKLOAD),
        APT_TIMEOUT,
    );
    out.expect_ok();
    check_workload_output(&out);
    assert!(f.sessions_left().is_empty(), "{:?}", f.sessions_left());
    check_workload_committed(&f.rootfs);
}

#[test]
fn unprivileged_preserve_then_discard_of_files_owned_by_sub_ids() {
    let (user, tree) = require_user_tree!();
    let subuid = subuid_start(&user);
    let apt_uid = uid_in_tree(tree, "_apt");
    let f = Fixture::user(user, tree);
    // Directories the caller cannot enter on the host (0700, owned by a sub-id), as apt's own
    // lists/partial is; a new user with a home.
    let script = "set -e
        mkdir -p /var/cache/secret/deep
        echo data > /var/cache/secret/deep/f
        chown -R _apt:nogroup /var/cache/secret
        chmod 700 /var/cache/secret /var/cache/secret/deep
        useradd -m -s /bin/sh testuser
        su testuser -c 'echo mine > $HOME/y'
        echo OWNER=$(stat -c %U /var/cache/secret/deep/f)";
    let out = run_within(
        &mut f.session(&["--policy", "preserve"], script),
        LOCAL_TIMEOUT,
    );
    out.expect_ok();
    assert_eq!(out.value("OWNER"), "_apt", "{}", out.context());
    let (id, upper) = out.kept_session();
    let md = support::lstat(upper.join("var/cache/secret"));
    assert_eq!(
        md.uid(),
        subuid + apt_uid - 1,
        "host owner of var/cache/secret in the upper (_apt is {apt_uid} inside)"
    );

    let diff = diff_lines(&f, &id);
    for want in ["A /var/cache/secret/deep/f", "A /home/testuser/y"] {
        assert!(
            diff.iter().any(|l| l == want),
            "no '{want}' in diff:\n{}",
            diff.join("\n")
        );
    }
    run_within(&mut f.ovlrun(&["discard", &id]), LOCAL_TIMEOUT).expect_ok();
    assert!(f.sessions_left().is_empty(), "{:?}", f.sessions_left());
    assert!(
        support::lstat_opt(&upper).is_none(),
        "{} still exists after discard",
        upper.display()
    );
}

/// A tree of root's (readable by all) under an unprivileged session: its files belong to ids
/// outside the session's map.
///
/// The kernel overlayfs (the reference) shows them owned by an unmapped id, so root in the
/// session gets no override and changes nothing (EACCES). ovlrun's FUSE backend deliberately
/// differs (README: "Where ovlrun differs"): it shows them owned by `nobody` (65534, an id
/// the session maps) and lets the session's root change them, copy-on-write, so a user can
/// install packages into a private copy of a root-owned tree; the tree itself is never
/// written. `--fs auto` picks FUSE for exactly this case.
#[test]
fn unprivileged_session_over_a_root_owned_tree_kernel_refuses_fuse_copies() {
    let (user, _) = require_user_tree!();
    let trees = trees().unwrap();
    let f = Fixture::user(user, &trees.minbase);
    let script = "
        echo OWNER=$(stat -c %u /opt)
        cat /etc/os-release >/dev/null && echo READ=ok
        if mkdir /opt/x 2>/dev/null; then echo MKDIR=allowed; else echo MKDIR=denied; fi
        if true >> /etc/motd 2>/dev/null; then echo APPEND=allowed; else echo APPEND=denied; fi
        if chmod 777 /usr/bin 2>/dev/null; then echo CHMOD=allowed; else echo CHMOD=denied; fi";
    for (fs, expected) in [
        ("kernel", "denied"),
        ("fuse", "allowed"),
        ("auto", "allowed"),
    ] {
        let out = run_within(
            &mut f.session(&["--fs", fs, "--policy", "preserve"], script),
            LOCAL_TIMEOUT,
        );
        out.expect_ok();
        assert_eq!(out.value("OWNER"), "65534", "--fs {fs}: {}", out.context());
        assert_eq!(out.value("READ"), "ok", "--fs {fs}: {}", out.context());
        for key in ["MKDIR", "APPEND", "CHMOD"] {
            assert_eq!(
                out.value(key),
                expected,
                "--fs {fs}: {key}\n{}",
                out.context()
            );
        }
        if expected == "denied" {
            // Nothing could change, so a preserve run keeps nothing.
            assert!(
                out.stderr.contains("no changes; nothing kept"),
                "--fs {fs}: {}",
                out.context()
            );
        } else {
            let (id, _) = out.kept_session();
            run_within(&mut f.ovlrun(&["discard", &id]), LOCAL_TIMEOUT).expect_ok();
        }
    }
    assert!(
        !trees.minbase.join("opt/x").exists(),
        "the root-owned tree itself was written"
    );
}

/// What the launcher makes for its own mounts (the targets of /etc/resolv.conf and
/// /etc/hosts) never shows as a change, also where it cannot give a copied-up directory the
/// owner of the tree's (an id outside the session's map).
#[test]
fn unprivileged_empty_session_over_a_root_owned_tree_has_no_changes() {
    let (user, _) = require_user_tree!();
    let trees = trees().unwrap();
    let f = Fixture::user(user, &trees.minbase);
    let out = run_within(
        &mut f.session(&["--policy", "preserve"], "true"),
        LOCAL_TIMEOUT,
    );
    out.expect_ok();
    // A preserve run keeps a session only when its diff shows changes.
    assert!(
        out.stderr.contains("no changes; nothing kept"),
        "a session that changed nothing shows changes:\n{}",
        out.context()
    );
    let left = fs::read_dir(f.state.join("sessions")).map_or(0, |d| d.count());
    assert_eq!(left, 0, "a session that changed nothing was kept");
}

// ---------------------------------------------------------------------------------------------
// A parallel C build

/// Number of generated translation units besides main.c.
const C_FILES: u32 = 200;

/// Writes `C_FILES` functions, a header, main.c and a Makefile into `dir`; returns the line
/// the program prints.
fn write_c_project(dir: &Path) -> String {
    let mut header = String::from("#ifndef FUNCS_H\n#define FUNCS_H\n");
    let mut calls = String::new();
    let mut sum: i64 = 0;
    for i in 0..C_FILES {
        let _ = writeln!(header, "long f{i}(long x);");
        support::write(
            dir.join(format!("f{i}.c")),
            format!(
                "#include \"funcs.h\"\n#include <string.h>\n\
                 long f{i}(long x) {{ return x * {i} + (long)strlen(\"f{i}\"); }}\n"
            ),
        );
        let _ = writeln!(calls, "    s += f{i}({});", i % 13);
        sum += i64::from(i % 13) * i64::from(i) + format!("f{i}").len() as i64;
    }
    header.push_str("#endif\n");
    support::write(dir.join("funcs.h"), header);
    support::write(
        dir.join("main.c"),
        format!(
            "#include <stdio.h>\n#include \"funcs.h\"\n\
             int main(void) {{\n    long s = 0;\n{calls}    printf(\"sum=%ld\\n\", s);\n    return 0;\n}}\n"
        ),
    );
    support::write(
        dir.join("Makefile"),
        "SRCS := $(wildcard *.c)\nOBJS := $(SRCS:.c=.o)\n\
         prog: $(OBJS)\n\tgcc -o $@ $(OBJS)\n\
         %.o: %.c funcs.h\n\tgcc -O1 -c -o $@ $<\n",
    );
    format!("sum={sum}")
}

#[test]
fn c_build_with_make_j2() {
    let trees = require_trees!();
    let dir = TestDir::new();
    let src = dir.mkdir("src");
    let expected = write_c_project(&src);
    let f = Fixture::root(dir, &trees.build);
    let bind = format!("{}:/src:ro", src.display());
    // Built in the overlay (a copy of /src under /root): gcc reads the tree's headers and
    // libraries through the filesystem and writes objects into the upper. Then make must see
    // the timestamps: nothing to do, and after a touch exactly one object and the link again.
    let script = "set -e
        cp -a /src /root/proj
        cd /root/proj
        make -j2 -s
        echo OUT=$(./prog)
        echo NOOP=$(make | tr '\n' ' ')
        sleep 0.05
        touch f7.c
        echo REBUILT=$(make | grep -c gcc)
        echo OUT2=$(./prog)";
    let out = run_within(&mut f.session(&["--bind", &bind], script), APT_TIMEOUT);
    out.expect_ok();
    assert_eq!(out.value("OUT"), expected, "{}", out.context());
    assert!(
        out.value("NOOP").contains("is up to date"),
        "a second make rebuilt something\n{}",
        out.context()
    );
    assert_eq!(
        out.value("REBUILT"),
        "2",
        "make after touching one source\n{}",
        out.context()
    );
    assert_eq!(out.value("OUT2"), expected, "{}", out.context());
    eprintln!("c build session took {:.1} s", out.elapsed.as_secs_f64());
    assert!(f.sessions_left().is_empty(), "{:?}", f.sessions_left());
}

/// The build-step cache people build with image layers, over the real build tree: step 1
/// builds with make and gcc and is kept; step 2 runs over it with `--layer`, rebuilds and
/// deletes its Makefile; step 3 over step 2 sees the rebuilt binary and no Makefile. Each
/// step's diff is its own; the tree is never written.
#[test]
fn a_build_cache_of_layered_sessions_over_the_build_tree() {
    let trees = require_trees!();
    let f = Fixture::root(TestDir::new(), &trees.build);
    let before = support::tree_snapshot(&trees.build);
    let step = |flags: &[&str], script: &str| {
        let mut cmd = f.ovlrun(SESSION_ENV);
        cmd.args(flags).args(["--", "/bin/sh", "-c", script]);
        let out = run_within(&mut cmd, LOCAL_TIMEOUT);
        out.expect_ok();
        out
    };
    let rootfs = trees.build.to_string_lossy().into_owned();
    step(
        &[
            "--rootfs", &rootfs, "--name", "step1", "--policy", "preserve",
        ],
        "set -e; mkdir -p /src && cd /src
         printf 'int main(void){return 3;}\\n' > main.c
         printf 'prog: main.c\\n\\tgcc -o prog main.c\\n' > Makefile
         make -s",
    );
    let out = step(
        &[
            "--layer", "step1", "--name", "step2", "--policy", "preserve",
        ],
        "set -e; cd /src; ./prog || echo STEP1=$?
         printf 'int main(void){return 4;}\\n' > main.c
         make -s; rm Makefile",
    );
    assert_eq!(out.value("STEP1"), "3", "{}", out.context());
    let diff = diff_lines(&f, "step2");
    assert_eq!(
        diff,
        ["D /src/Makefile", "C /src/main.c", "C /src/prog"],
        "step 2's diff is its own"
    );
    let out = step(
        &["--layer", "step2"],
        "cd /src; ./prog || echo STEP2=$?; test -e Makefile || echo NO-MAKEFILE; \
         test -e /usr/bin/gcc && echo GCC",
    );
    assert_eq!(out.value("STEP2"), "4", "{}", out.context());
    assert!(out.stdout.contains("NO-MAKEFILE\nGCC"), "{}", out.context());
    run_within(&mut f.ovlrun(&["discard", "--all"]), LOCAL_TIMEOUT).expect_ok();
    assert!(f.sessions_left().is_empty(), "{:?}", f.sessions_left());
    assert_eq!(
        support::tree_snapshot(&trees.build),
        before,
        "the build tree changed"
    );
}
