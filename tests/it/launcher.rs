//! The launcher as a process: `ovlrun [OPTIONS] --rootfs DIR -- CMD` over `examples/rootfs`
//! (or a copy of it, where a test writes it or checks it afterwards), as root and as the
//! unprivileged `ovlrun-test` user.
//!
//! Every test has its own [`TestDir`] and points `OVLRUN_STATE` into it. Every launch runs
//! under a time limit, so a hung session fails its test instead of hanging the run. Nothing
//! here mounts anything itself: the launcher's mounts live in its own mount namespace.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, User};

use crate::support::pty::on_a_pty;
use crate::support::{self, Bg, EXIT_OWN_ERROR, Frozen, Out, TestDir, example_rootfs};

/// How long one session may take before its test fails (a debug build on a busy CI machine
/// starts a session in well under a second).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The unprivileged user `scripts/setup.sh` creates for these tests.
const TEST_USER: &str = "ovlrun-test";

// ---------------------------------------------------------------------------------------------
// Fixtures

/// One test's directory, state root and rootfs.
struct Fixture {
    dir: TestDir,
    state: PathBuf,
    rootfs: PathBuf,
}

impl Fixture {
    /// Over `examples/rootfs` itself: for tests that only read it.
    fn shared() -> Fixture {
        let dir = TestDir::new();
        Fixture {
            state: dir.join("state"),
            rootfs: example_rootfs(),
            dir,
        }
    }

    /// Over a private `cp -a` of `examples/rootfs`: for tests that write it or check it.
    fn copied() -> Fixture {
        let dir = TestDir::new();
        let rootfs = dir.join("rootfs");
        copy_tree(&example_rootfs(), &rootfs);
        Fixture {
            state: dir.join("state"),
            rootfs,
            dir,
        }
    }

    /// `ovlrun FLAGS.. --rootfs ROOTFS -- ARGV..` with `OVLRUN_STATE` in the test dir.
    fn cmd(&self, flags: &[&str], argv: &[&str]) -> Command {
        let mut cmd = Command::new(support::ovlrun_bin());
        cmd.env("OVLRUN_STATE", &self.state)
            .args(flags)
            .arg("--rootfs")
            .arg(&self.rootfs)
            .arg("--")
            .args(argv);
        cmd
    }

    /// Runs `sh -c SCRIPT` in a session with `flags`.
    fn sh(&self, flags: &[&str], script: &str) -> Out {
        run(&mut self.cmd(flags, &["/bin/sh", "-c", script]))
    }

    fn sessions_dir(&self) -> PathBuf {
        self.state.join("sessions")
    }
}

/// `cp -a SRC DST`, keeping owners, modes, times and links.
fn copy_tree(src: &Path, dst: &Path) {
    let out = run(Command::new("cp").arg("-a").arg(src).arg(dst));
    assert!(out.status.success(), "cp -a failed\n{}", out.context());
}

/// Entries under `dir/sessions` (none, or the directory missing, is clean).
#[track_caller]
fn assert_no_sessions_left(sessions: &Path, after: &str) {
    let left = match fs::read_dir(sessions) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read_dir {}: {e}", sessions.display()),
    };
    assert!(
        left.is_empty(),
        "{} holds {left:?} after {after}",
        sessions.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Running ovlrun

/// Runs `cmd` (stdin closed) to completion within [`RUN_TIMEOUT`]; SIGKILLs it and fails the
/// test when it takes longer.
#[track_caller]
fn run(cmd: &mut Command) -> Out {
    support::run_within(cmd, RUN_TIMEOUT)
}

// ---------------------------------------------------------------------------------------------
// Processes and mounts left behind

/// Pids (other than ours) whose command line or environment contains `marker`: `pgrep -f`,
/// extended to the environment so that children with a plain argv (`sleep`) are found too.
fn pids_with(marker: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
        let environ = fs::read(e.path().join("environ")).unwrap_or_default();
        let has = |b: &[u8]| b.windows(marker.len()).any(|w| w == marker.as_bytes());
        if has(&cmdline) || has(&environ) {
            let argv = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push((pid, argv));
        }
    }
    found
}

/// Session mounts under `state`, in any process's mount table (`/proc/*/mountinfo`): a
/// `fuse.ovlrun` (source `ovlrun:<upper>`) or a kernel `overlay` (`upperdir=<upper>`), either
/// backend (`--fs`), whose line names a path under `state`.
fn session_mounts(state: &Path) -> Vec<String> {
    let state = state.to_string_lossy().into_owned();
    let mut found = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.flatten() {
        if e.file_name()
            .to_str()
            .is_none_or(|s| s.parse::<u32>().is_err())
        {
            continue;
        }
        let Ok(text) = fs::read_to_string(e.path().join("mountinfo")) else {
            continue;
        };
        for line in text.lines() {
            let Some((_, right)) = line.split_once(" - ") else {
                continue;
            };
            let fstype = right.split(' ').next().unwrap_or("");
            if matches!(fstype, "fuse.ovlrun" | "overlay") && line.contains(&state) {
                found.push(format!("{}: {line}", e.path().display()));
            }
        }
    }
    found
}

/// A string no other process on the machine carries.
fn unique_marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("ovlrun-test-{what}-{}-{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Output and exit codes

#[test]
fn echo_prints_and_exits_zero() {
    require_launcher!();
    let f = Fixture::shared();
    run(&mut f.cmd(&[], &["echo", "hello", "world"]))
        .expect_ok()
        .expect_stdout(&["hello world"]);
    assert_no_sessions_left(&f.sessions_dir(), "a session that exited 0");
}

#[test]
fn default_command_is_bin_sh() {
    require_launcher!();
    let f = Fixture::shared();
    // No CMD: /bin/sh reads the script from stdin.
    let mut cmd = Command::new(support::ovlrun_bin());
    cmd.env("OVLRUN_STATE", &f.state)
        .arg("--rootfs")
        .arg(&f.rootfs);
    let out = support::run_with_input(&mut cmd, b"echo from-stdin $$\nexit 4\n", RUN_TIMEOUT);
    out.expect_code(4).expect_stdout(&["from-stdin 2"]);
}

#[test]
fn exit_status_is_the_commands() {
    require_launcher!();
    let f = Fixture::shared();
    f.sh(&[], "exit 7").expect_code(7);
    f.sh(&[], "exit 0").expect_code(0);
    f.sh(&[], "exit 255").expect_code(255);
    run(&mut f.cmd(&[], &["false"])).expect_code(1);
    // Killed by a signal: 128 + n, like a shell reports it.
    f.sh(&[], "kill -9 $$").expect_code(137);
    f.sh(&[], "kill -TERM $$").expect_code(143);
    f.sh(&[], "kill -INT $$").expect_code(130);
    assert_no_sessions_left(&f.sessions_dir(), "sessions that exited non-zero");
}

#[test]
fn command_not_found_is_127_and_named() {
    require_launcher!();
    let f = Fixture::shared();
    let out = run(&mut f.cmd(&[], &["/no/such-command-xyz"]));
    out.expect_code(127);
    assert!(
        out.stderr.starts_with("ovlrun: ") && out.stderr.contains("/no/such-command-xyz"),
        "stderr must start 'ovlrun: ' and name the command\n{}",
        out.context()
    );
    // Found through PATH, or not.
    let out = run(&mut f.cmd(&[], &["no-such-command-xyz"]));
    out.expect_code(127);
    assert!(
        out.stderr.contains("no-such-command-xyz"),
        "stderr must name the command\n{}",
        out.context()
    );
    assert_no_sessions_left(&f.sessions_dir(), "a command that was not found");
}

#[test]
fn non_executable_command_is_126() {
    require_launcher!();
    let f = Fixture::shared();
    // A regular file without x bits, and a directory.
    for path in ["/etc/motd", "/etc"] {
        let out = run(&mut f.cmd(&[], &[path]));
        out.expect_code(126);
        assert!(
            out.stderr.starts_with("ovlrun: ") && out.stderr.contains(path),
            "stderr must start 'ovlrun: ' and name {path}\n{}",
            out.context()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Namespaces

#[test]
fn pid_namespace_holds_only_the_session() {
    require_launcher!();
    let f = Fixture::shared();
    let out = f.sh(
        &[],
        r#"echo "pid=$$"
           echo "ppid=$(grep '^PPid:' /proc/$$/status | tr -d ' \t' | cut -d: -f2)"
           echo "comm1=$(cat /proc/1/comm)"
           echo "cmd1=$(tr '\0' ' ' < /proc/1/cmdline)"
           echo "nproc=$(ls /proc | grep -c '^[0-9][0-9]*$')"
           echo "ps=$(ps -o pid | tail -n +2 | wc -l)"
           for p in /proc/[0-9]*; do echo "proc ${p#/proc/}: $(tr '\0' ' ' < $p/cmdline)"; done"#,
    );
    out.expect_ok();
    assert_eq!(out.value("pid"), "2", "$$\n{}", out.context());
    assert_eq!(out.value("ppid"), "1", "parent of $$\n{}", out.context());
    assert_eq!(
        out.value("comm1"),
        "ovlrun",
        "pid 1's comm\n{}",
        out.context()
    );
    assert!(
        out.value("cmd1").contains(support::ovlrun_bin()),
        "pid 1 must be ovlrun's init\n{}",
        out.context()
    );
    for key in ["nproc", "ps"] {
        let n: usize = out.value(key).trim().parse().unwrap();
        assert!(
            (2..10).contains(&n),
            "{key}: expected only the session's processes (2..10), got {n}\n{}",
            out.context()
        );
    }
}

#[test]
fn uts_namespace_hostname_from_rootfs_and_flag() {
    require_launcher!();
    let f = Fixture::copied();
    support::write(f.rootfs.join("etc/hostname"), "from-rootfs-7q\n");
    let host_before = nix::unistd::gethostname().unwrap();
    f.sh(&[], "hostname; cat /proc/sys/kernel/hostname")
        .expect_ok()
        .expect_stdout(&["from-rootfs-7q", "from-rootfs-7q"]);
    f.sh(&["--hostname", "flag-host-3z"], "hostname; uname -n")
        .expect_ok()
        .expect_stdout(&["flag-host-3z", "flag-host-3z"]);
    // Setting it inside (with the capability it needs) changes only the session's.
    f.sh(
        &["--cap-add", "SYS_ADMIN"],
        "hostname inside-set && hostname",
    )
    .expect_ok()
    .expect_stdout(&["inside-set"]);
    assert_eq!(
        nix::unistd::gethostname().unwrap(),
        host_before,
        "the host's hostname changed"
    );
}

#[test]
fn ipc_and_user_namespaces_are_new() {
    require_launcher!();
    let f = Fixture::shared();
    let out = f.sh(
        &[],
        "for n in ipc uts pid mnt user net; do echo \"$n=$(readlink /proc/self/ns/$n)\"; done",
    );
    out.expect_ok();
    for (ns, new) in [
        ("ipc", true),
        ("uts", true),
        ("pid", true),
        ("mnt", true),
        ("user", true),
        ("net", false),
    ] {
        let host = fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let inside = out.value(ns);
        assert_eq!(
            inside != host.to_string_lossy(),
            new,
            "{ns} namespace: host {}, session {inside} (expected {})\n{}",
            host.display(),
            if new { "a new one" } else { "the host's" },
            out.context()
        );
    }
}

#[test]
fn session_sees_dev_proc_sys_tmp() {
    require_launcher!();
    let f = Fixture::shared();
    let out = f.sh(
        &[],
        r#"for d in null zero full random urandom tty; do [ -c /dev/$d ] && echo "dev $d"; done
           [ -c /dev/pts/ptmx ] || [ -c /dev/ptmx ] && echo ptmx
           [ -d /dev/shm ] && echo shm
           [ "$(readlink /dev/fd)" = /proc/self/fd ] && echo fd
           [ "$(readlink /dev/stdin)" = /proc/self/fd/0 ] && echo stdin
           echo x > /dev/null && echo null-writable
           [ "$(head -c 4 /dev/zero | od -An -tx1 | tr -d ' ')" = 00000000 ] && echo zero-reads
           grep -q ' /proc proc ' /proc/mounts && echo proc
           grep -q ' /tmp tmpfs ' /proc/mounts && echo tmp
           grep ' /sys ' /proc/mounts | grep -q '[ ,]ro[ ,]' && echo sys-ro
           echo t > /tmp/t && cat /tmp/t"#,
    );
    out.expect_ok().expect_stdout(&[
        "dev null",
        "dev zero",
        "dev full",
        "dev random",
        "dev urandom",
        "dev tty",
        "ptmx",
        "shm",
        "fd",
        "stdin",
        "null-writable",
        "zero-reads",
        "proc",
        "tmp",
        "sys-ro",
        "t",
    ]);
}

/// The capability sets of `/proc/self/status` (hex), and `NoNewPrivs`, in a session.
fn cap_status(f: &Fixture, flags: &[&str]) -> Out {
    f.sh(
        flags,
        "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status | tr -d ' \\t' | tr : =",
    )
}

#[test]
fn capabilities_default_add_and_drop() {
    require_launcher!();
    let f = Fixture::shared();
    // The default set container engines give root: CHOWN DAC_OVERRIDE FOWNER FSETID KILL
    // SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
    let default = 0xa80425fb_u64;
    let hex = |out: &Out, key: &str| u64::from_str_radix(out.value(key), 16).unwrap();
    let out = cap_status(&f, &[]);
    out.expect_ok();
    for key in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(hex(&out, key), default, "{key}\n{}", out.context());
    }
    assert_eq!(out.value("NoNewPrivs"), "1", "{}", out.context());

    let out = cap_status(&f, &["--cap-add", "NET_ADMIN", "--cap-drop", "CAP_CHOWN"]);
    out.expect_ok();
    let want = (default | 1 << 12) & !1;
    for key in ["CapEff", "CapBnd"] {
        assert_eq!(hex(&out, key), want, "{key}\n{}", out.context());
    }
    let out = f.sh(
        &["--cap-drop", "chown"],
        "touch /tmp/f; chown 5 /tmp/f 2>/dev/null; echo \"chown=$?\"",
    );
    out.expect_ok();
    assert_ne!(
        out.value("chown"),
        "0",
        "chown without CAP_CHOWN\n{}",
        out.context()
    );

    // A non-root command has no effective capabilities.
    let out = cap_status(&f, &["--uid", "1000", "--gid", "1000"]);
    out.expect_ok();
    assert_eq!(hex(&out, "CapEff"), 0, "{}", out.context());
    assert_eq!(hex(&out, "CapBnd"), default, "{}", out.context());
}

// ---------------------------------------------------------------------------------------------
// Copy-on-write: writes stay in the session

#[test]
fn writes_are_visible_inside_and_absent_afterwards() {
    require_launcher!();
    let f = Fixture::copied();
    let before = Frozen::take(&f.rootfs);
    let out = f.sh(
        &[],
        r#"set -e
           echo hello > /etc/newfile
           mkdir -p /newdir/sub && echo deep > /newdir/sub/f
           echo appended >> /etc/motd
           rm /etc/shells
           chmod 600 /etc/hostname
           chown 12:34 /etc/passwd
           mv /etc/profile /etc/profile.moved
           ln -s /etc/newfile /newlink
           rm -r /home
           dd if=/dev/urandom of=/big bs=65536 count=32 2>/dev/null
           cat /etc/newfile /newdir/sub/f
           tail -n 1 /etc/motd
           [ ! -e /etc/shells ] && echo shells-gone
           stat -c %a /etc/hostname
           stat -c %u:%g /etc/passwd
           [ -f /etc/profile.moved ] && [ ! -e /etc/profile ] && echo moved
           readlink /newlink
           [ ! -e /home ] && echo home-gone
           wc -c < /big"#,
    );
    out.expect_ok().expect_stdout(&[
        "hello",
        "deep",
        "appended",
        "shells-gone",
        "600",
        "12:34",
        "moved",
        "/etc/newfile",
        "home-gone",
        "2097152",
    ]);
    before.assert_unchanged(&f.rootfs, "a session that wrote, removed and renamed");
    assert_no_sessions_left(&f.sessions_dir(), "a session that wrote");
    // A second session starts from the rootfs again: the first one's changes are gone.
    f.sh(
        &[],
        "[ ! -e /etc/newfile ] && [ -e /etc/shells ] && [ -d /home ] && echo fresh",
    )
    .expect_ok()
    .expect_stdout(&["fresh"]);
}

#[test]
fn launcher_leaves_nothing_in_the_rootfs() {
    require_launcher!();
    let f = Fixture::copied();
    let src_dir = f.dir.mkdir("bind-src");
    support::write(src_dir.join("in"), "in\n");
    let src_file = f.dir.join("bind-file");
    support::write(&src_file, "file\n");
    // Targets the rootfs lacks (the launcher must create them somewhere), nested.
    let binds = [
        format!("{}:/mnt/new/deep", src_dir.display()),
        format!("{}:/opt/ro-dir:ro", src_dir.display()),
        format!("{}:/etc/bound-file", src_file.display()),
    ];
    let before = Frozen::take(&f.rootfs);
    let mut flags: Vec<&str> = Vec::new();
    for b in &binds {
        flags.extend(["--bind", b.as_str()]);
    }
    flags.extend(["--tmpfs", "/scratch/t", "--tmpfs", "/var/cache/x"]);
    let out = f.sh(
        &flags,
        "cat /mnt/new/deep/in /opt/ro-dir/in /etc/bound-file; [ -f /etc/resolv.conf ] && echo resolv",
    );
    out.expect_ok();
    assert!(
        out.stdout.starts_with("in\nin\nfile\n"),
        "binds not visible\n{}",
        out.context()
    );
    before.assert_unchanged(&f.rootfs, "a session with binds and tmpfs on new targets");
    assert_no_sessions_left(&f.sessions_dir(), "a session with binds");
    // And the scaffolding is not visible to the next session either.
    f.sh(
        &[],
        "for p in /mnt/new /opt /etc/bound-file /scratch /var/cache/x; do [ -e $p ] && echo \"left $p\"; done; echo done",
    )
    .expect_ok()
    .expect_stdout(&["done"]);
}

#[test]
fn rootfs_without_mount_targets_works_and_stays_unchanged() {
    require_launcher!();
    let f = Fixture::copied();
    // A bare tree: no /proc, /dev, /sys, /tmp for the launcher to mount on.
    for d in ["proc", "dev", "sys", "tmp"] {
        let p = f.rootfs.join(d);
        if p.exists() {
            fs::remove_dir_all(&p).unwrap();
        }
    }
    let before = Frozen::take(&f.rootfs);
    f.sh(
        &[],
        "[ -c /dev/null ] && [ -r /proc/self/stat ] && [ -d /sys/kernel ] && echo x > /tmp/x && echo ok",
    )
    .expect_ok()
    .expect_stdout(&["ok"]);
    before.assert_unchanged(
        &f.rootfs,
        "a session over a rootfs without /proc /dev /sys /tmp",
    );
}

#[test]
fn two_sessions_at_once_over_one_rootfs() {
    require_launcher!();
    let f = Fixture::copied();
    let sync = f.dir.mkdir("sync");
    let bind = format!("{}:/sync", sync.display());
    let before = Frozen::take(&f.rootfs);
    // Each writes, then waits until the other has written too, then reads: the writes overlap.
    let script = |me: &str, other: &str| {
        format!(
            r#"echo {me}-content > /shared.txt
               echo {me}-motd > /etc/motd
               rm /etc/shells
               touch /sync/{me}-ready
               i=0
               while [ ! -e /sync/{other}-ready ]; do
                   usleep 20000; i=$((i+1)); [ $i -gt 1500 ] && exit 9
               done
               cat /shared.txt /etc/motd
               [ -e /etc/shells ] || echo no-shells"#
        )
    };
    let (sa, sb) = (script("a", "b"), script("b", "a"));
    let mut a = Bg::spawn(
        &mut f.cmd(&["--bind", &bind], &["/bin/sh", "-c", &sa]),
        RUN_TIMEOUT,
    );
    let mut b = Bg::spawn(
        &mut f.cmd(&["--bind", &bind], &["/bin/sh", "-c", &sb]),
        RUN_TIMEOUT,
    );
    let (a, b) = (a.wait(), b.wait());
    a.expect_ok()
        .expect_stdout(&["a-content", "a-motd", "no-shells"]);
    b.expect_ok()
        .expect_stdout(&["b-content", "b-motd", "no-shells"]);
    before.assert_unchanged(&f.rootfs, "two concurrent sessions");
    assert_no_sessions_left(&f.sessions_dir(), "two concurrent sessions");
}

#[test]
fn many_sessions_start_at_once_over_one_rootfs() {
    require_launcher!();
    let f = Fixture::shared();
    // CI starts jobs over one rootfs at the same moment: none may be refused.
    let mut failures = Vec::new();
    for round in 0..10 {
        let running: Vec<Bg> = (0..8)
            .map(|i| {
                Bg::spawn(
                    &mut f.cmd(&[], &["echo", &format!("r{round}-s{i}")]),
                    RUN_TIMEOUT,
                )
            })
            .collect();
        for (i, mut r) in running.into_iter().enumerate() {
            let out = r.wait();
            if out.code() != 0 || out.stdout != format!("r{round}-s{i}\n") {
                failures.push(out.context());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 80 sessions started together failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert_no_sessions_left(&f.sessions_dir(), "sessions started together");
}

// ---------------------------------------------------------------------------------------------
// Flags

#[test]
fn bind_read_write_reaches_the_host() {
    require_launcher!();
    let f = Fixture::copied();
    let host = f.dir.mkdir("rw");
    support::write(host.join("from-host"), "host-data\n");
    let bind = format!("{}:/mnt/rw", host.display());
    let before = Frozen::take(&f.rootfs);
    f.sh(
        &["--bind", &bind],
        "cat /mnt/rw/from-host && echo session-data > /mnt/rw/from-session && mkdir /mnt/rw/d",
    )
    .expect_ok()
    .expect_stdout(&["host-data"]);
    assert_eq!(
        support::read_string(host.join("from-session")),
        "session-data\n",
        "a write through a rw bind must land on the host"
    );
    assert!(host.join("d").is_dir(), "mkdir through a rw bind");
    before.assert_unchanged(&f.rootfs, "a session with a rw bind");
}

#[test]
fn bind_read_only_gives_erofs() {
    require_launcher!();
    let f = Fixture::shared();
    let host = f.dir.mkdir("ro");
    support::write(host.join("from-host"), "host-data\n");
    let bind = format!("{}:/mnt/ro:ro", host.display());
    let out = f.sh(
        &["--bind", &bind],
        r#"cat /mnt/ro/from-host
           (echo x > /mnt/ro/new) 2>/tmp/err; echo "create=$?"
           (echo x >> /mnt/ro/from-host) 2>>/tmp/err; echo "append=$?"
           cat /tmp/err
           grep ' /mnt/ro ' /proc/mounts | grep -q '[ ,]ro[ ,]' && echo mounted-ro"#,
    );
    out.expect_ok();
    assert!(out.stdout.starts_with("host-data\n"), "{}", out.context());
    assert_ne!(
        out.value("create"),
        "0",
        "create on a ro bind\n{}",
        out.context()
    );
    assert_ne!(
        out.value("append"),
        "0",
        "append on a ro bind\n{}",
        out.context()
    );
    assert_eq!(
        out.stdout.matches("Read-only file system").count(),
        2,
        "both writes must fail with EROFS\n{}",
        out.context()
    );
    assert!(out.stdout.contains("mounted-ro"), "{}", out.context());
    assert!(
        !host.join("new").exists(),
        "a file appeared through a ro bind"
    );
    assert_eq!(support::read_string(host.join("from-host")), "host-data\n");
}

#[test]
fn bind_of_a_file() {
    require_launcher!();
    let f = Fixture::shared();
    let file = f.dir.join("file");
    support::write(&file, "one\n");
    let bind = format!("{}:/etc/motd", file.display());
    f.sh(&["--bind", &bind], "cat /etc/motd; echo two >> /etc/motd")
        .expect_ok()
        .expect_stdout(&["one"]);
    assert_eq!(support::read_string(&file), "one\ntwo\n");
}

#[test]
fn tmpfs_flag_mounts_an_empty_tmpfs() {
    require_launcher!();
    let f = Fixture::copied();
    let before = Frozen::take(&f.rootfs);
    // Over a rootfs directory that has content (hidden), and on a new path.
    f.sh(
        &["--tmpfs", "/etc", "--tmpfs", "/new/scratch"],
        r#"for d in /etc /new/scratch; do
               grep -q " $d tmpfs " /proc/mounts && echo "$d tmpfs"
               [ -z "$(ls -A $d)" ] && echo "$d empty"
               echo data > $d/f && cat $d/f
           done"#,
    )
    .expect_ok()
    .expect_stdout(&[
        "/etc tmpfs",
        "/etc empty",
        "data",
        "/new/scratch tmpfs",
        "/new/scratch empty",
        "data",
    ]);
    before.assert_unchanged(&f.rootfs, "a session with --tmpfs");
}

#[test]
fn env_flag_sets_and_overrides() {
    require_launcher!();
    let f = Fixture::shared();
    let mut cmd = f.cmd(
        &["--env", "FOO=bar baz", "--env", "OVERRIDE=new", "--env", "EMPTY="],
        &[
            "/bin/sh",
            "-c",
            r#"echo "FOO=$FOO"; echo "OVERRIDE=$OVERRIDE"; echo "PASS=$PASS"; echo "EMPTY=${EMPTY-unset}""#,
        ],
    );
    cmd.env("OVERRIDE", "old").env("PASS", "through");
    run(&mut cmd).expect_ok().expect_stdout(&[
        "FOO=bar baz",
        "OVERRIDE=new",
        "PASS=through",
        "EMPTY=",
    ]);
}

#[test]
fn clear_env_keeps_only_defaults_and_flags() {
    require_launcher!();
    let f = Fixture::shared();
    let mut cmd = f.cmd(&["--clear-env", "--env", "KEPT=1"], &["env"]);
    cmd.env("LEAK_ME", "secret");
    let out = run(&mut cmd);
    out.expect_ok();
    let mut names: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    names.sort_unstable();
    // `env` itself adds nothing; the shell is not involved.
    assert_eq!(
        names,
        ["HOME", "KEPT", "PATH", "TERM"],
        "environment after --clear-env\n{}",
        out.context()
    );
    assert!(out.value("PATH").contains("/bin"), "{}", out.context());
    assert_eq!(out.value("HOME"), "/root", "{}", out.context());
}

#[test]
fn cwd_flag_sets_the_working_directory() {
    require_launcher!();
    let f = Fixture::shared();
    run(&mut f.cmd(&["--cwd", "/etc"], &["pwd"]))
        .expect_ok()
        .expect_stdout(&["/etc"]);
    f.sh(&["--cwd", "/usr/bin"], "pwd; ls id")
        .expect_ok()
        .expect_stdout(&["/usr/bin", "id"]);
    // Default: /.
    run(&mut f.cmd(&[], &["pwd"]))
        .expect_ok()
        .expect_stdout(&["/"]);
}

#[test]
fn uid_and_gid_flags() {
    require_launcher!();
    let f = Fixture::shared();
    let out = f.sh(
        &["--uid", "1000", "--gid", "1000"],
        r#"echo "uid=$(id -u)"; echo "gid=$(id -g)"; echo "groups=$(id -G)"
           touch /tmp/mine && echo "owner=$(stat -c %u:%g /tmp/mine)"
           echo x > /etc/motd 2>/dev/null; echo "write-root-file=$?""#,
    );
    out.expect_ok();
    assert_eq!(out.value("uid"), "1000", "{}", out.context());
    assert_eq!(out.value("gid"), "1000", "{}", out.context());
    assert_eq!(out.value("groups"), "1000", "{}", out.context());
    assert_eq!(out.value("owner"), "1000:1000", "{}", out.context());
    assert_ne!(
        out.value("write-root-file"),
        "0",
        "uid 1000 wrote root's 0644 file\n{}",
        out.context()
    );
}

/// `--user NAME` is looked up in the rootfs's own passwd and group files (this host has no
/// `bob`): uid, primary gid, supplementary groups from the member lists, and HOME.
#[test]
fn user_flag_resolves_in_the_rootfs() {
    require_launcher!();
    let f = Fixture::copied();
    let etc = f.rootfs.join("etc");
    let append = |file: &str, line: &str| {
        let mut text = support::read_string(etc.join(file));
        text.push_str(line);
        support::write(etc.join(file), text);
    };
    append("passwd", "bob:x:2345:2400:Bob:/home/bob:/bin/sh\n");
    append(
        "group",
        "bobs:x:2400:\nwheel:x:2401:root,bob\naudio:x:2402:bob\n",
    );
    let script =
        r#"echo "uid=$(id -u)"; echo "gid=$(id -g)"; echo "groups=$(id -G)"; echo "home=$HOME""#;
    let out = f.sh(&["--user", "bob"], script);
    out.expect_ok();
    assert_eq!(out.value("uid"), "2345", "{}", out.context());
    assert_eq!(out.value("gid"), "2400", "{}", out.context());
    assert_eq!(out.value("groups"), "2400 2401 2402", "{}", out.context());
    assert_eq!(out.value("home"), "/home/bob", "{}", out.context());
    // An explicit group is the primary one; --env HOME wins over the passwd entry.
    let out = f.sh(&["--user", "bob:audio", "--env", "HOME=/x"], script);
    out.expect_ok();
    assert_eq!(out.value("gid"), "2402", "{}", out.context());
    assert_eq!(out.value("groups"), "2402 2401", "{}", out.context());
    assert_eq!(out.value("home"), "/x", "{}", out.context());
    // A uid with no entry: gid 0, HOME=/.
    let out = f.sh(&["--user", "4321"], script);
    out.expect_ok();
    assert_eq!(out.value("uid"), "4321", "{}", out.context());
    assert_eq!(out.value("gid"), "0", "{}", out.context());
    assert_eq!(out.value("home"), "/", "{}", out.context());
    let out = f.sh(&["--user", "alice"], "id");
    out.expect_own_error(&["--user alice: no such user in", "etc/passwd"]);
    assert!(out.stdout.is_empty(), "{}", out.context());
    // The tree's passwd is never followed out of it.
    fs::remove_file(etc.join("passwd")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", etc.join("passwd")).unwrap();
    f.sh(&["--user", "root"], "id")
        .expect_own_error(&["--user root", "symlink"]);
}

/// `--dev-bind` binds a host device node into the session's own /dev, usable there; a
/// path that is no device is refused.
#[test]
fn dev_bind_gives_a_usable_device_node() {
    require_launcher!();
    require!(
        Path::new("/dev/fuse").exists(),
        "find /dev/fuse on this host"
    );
    let f = Fixture::shared();
    let out = f.sh(
        &[
            "--dev-bind",
            "/dev/fuse",
            "--dev-bind",
            "/dev/null:/dev/sub/null2",
        ],
        r#"echo "kind=$(stat -c %F:%t,%T /dev/fuse)"
           exec 3<>/dev/fuse && echo "open=yes"
           echo x > /dev/sub/null2 && echo "null2=yes""#,
    );
    out.expect_ok();
    assert_eq!(
        out.value("kind"),
        "character special file:a,e5",
        "{}",
        out.context()
    );
    assert_eq!(out.value("open"), "yes", "{}", out.context());
    assert_eq!(out.value("null2"), "yes", "{}", out.context());
    let out = f.sh(&["--dev-bind", "/etc/passwd"], "true");
    out.expect_own_error(&["--dev-bind /etc/passwd", "not a device node"]);
    f.sh(&["--dev-bind", "/dev/null:/etc/null"], "true")
        .expect_own_error(&["--dev-bind /dev/null:/etc/null", "under /dev"]);
}

#[test]
fn net_none_has_only_lo_and_it_is_up() {
    require_launcher!();
    let f = Fixture::shared();
    let out = f.sh(
        &["--net", "none"],
        r#"tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | sed 's/^/dev=/'
           ip -o link show | sed 's/^[0-9]*: /link=/'
           echo "net=$(readlink /proc/self/ns/net)""#,
    );
    out.expect_ok();
    let devs: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("dev="))
        .collect();
    assert_eq!(devs, ["lo"], "/proc/net/dev interfaces\n{}", out.context());
    let links: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("link="))
        .collect();
    assert_eq!(links.len(), 1, "ip link\n{}", out.context());
    assert!(
        links[0].starts_with("lo: <") && links[0].contains(",UP"),
        "lo must be UP\n{}",
        out.context()
    );
    let host = fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        out.value("net"),
        host.to_string_lossy(),
        "{}",
        out.context()
    );
}

#[test]
fn net_none_sysfs_shows_only_lo() {
    require_launcher!();
    let f = Fixture::shared();
    // /sys/class/net describes the network namespace of whoever mounted sysfs: with a new
    // network namespace, the host's interfaces must not show there.
    f.sh(&["--net", "none"], "ls /sys/class/net")
        .expect_ok()
        .expect_stdout(&["lo"]);
}

#[test]
fn default_net_shares_the_host() {
    require_launcher!();
    let f = Fixture::shared();
    let out = f.sh(
        &[],
        r#"echo "net=$(readlink /proc/self/ns/net)"
           echo "ndev=$(tail -n +3 /proc/net/dev | wc -l)"
           echo ---resolv; cat /etc/resolv.conf 2>/dev/null; echo ---hosts; cat /etc/hosts"#,
    );
    out.expect_ok();
    let host_ns = fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(
        out.value("net"),
        host_ns.to_string_lossy(),
        "{}",
        out.context()
    );
    let host_ndev = support::read_string("/proc/net/dev").lines().count() - 2;
    assert_eq!(
        out.value("ndev"),
        host_ndev.to_string(),
        "interfaces differ from the host's\n{}",
        out.context()
    );
    let (_, rest) = out.stdout.split_once("---resolv\n").unwrap();
    let (resolv, hosts) = rest.split_once("---hosts\n").unwrap();
    if let Ok(host_resolv) = fs::read_to_string("/etc/resolv.conf") {
        assert_eq!(resolv, host_resolv, "/etc/resolv.conf\n{}", out.context());
    }
    if let Ok(host_hosts) = fs::read_to_string("/etc/hosts") {
        assert_eq!(hosts, host_hosts, "/etc/hosts\n{}", out.context());
    }
    // They are bound read-only.
    f.sh(
        &[],
        "echo x >> /etc/hosts 2>/dev/null && echo wrote || echo refused",
    )
    .expect_ok()
    .expect_stdout(&["refused"]);
}

// ---------------------------------------------------------------------------------------------
// Signals and SIGKILL

#[test]
fn sigterm_to_the_launcher_reaches_the_command() {
    require_launcher!();
    let f = Fixture::shared();
    let mut r = Bg::spawn(
        &mut f.cmd(
            &[],
            &[
                "/bin/sh",
                "-c",
                r#"trap 'echo got-term; exit 3' TERM
               echo ready
               while :; do sleep 1 & wait $!; done"#,
            ],
        ),
        RUN_TIMEOUT,
    );
    r.wait_line("ready");
    kill(r.pid(), Signal::SIGTERM).unwrap();
    let out = r.wait();
    out.expect_code(3).expect_stdout(&["ready", "got-term"]);
    assert_no_sessions_left(&f.sessions_dir(), "a session ended by SIGTERM");
}

#[test]
fn other_forwarded_signals_reach_the_command() {
    require_launcher!();
    let f = Fixture::shared();
    let signals = [
        (Signal::SIGINT, "INT"),
        (Signal::SIGHUP, "HUP"),
        (Signal::SIGQUIT, "QUIT"),
        (Signal::SIGUSR1, "USR1"),
        (Signal::SIGUSR2, "USR2"),
        (Signal::SIGWINCH, "WINCH"),
    ];
    for (i, (sig, name)) in signals.into_iter().enumerate() {
        let code = 10 + i as i32;
        let script = format!(
            r#"trap 'echo got-{name}; exit {code}' {name}
               echo ready
               while :; do sleep 1 & wait $!; done"#
        );
        let mut r = Bg::spawn(&mut f.cmd(&[], &["/bin/sh", "-c", &script]), RUN_TIMEOUT);
        r.wait_line("ready");
        kill(r.pid(), sig).unwrap();
        r.wait()
            .expect_code(code)
            .expect_stdout(&["ready", &format!("got-{name}")]);
    }
}

#[test]
fn sigkill_of_the_launcher_leaves_no_process_and_no_mount() {
    require_launcher!();
    let f = Fixture::shared();
    let marker = unique_marker("sigkill");
    let mut cmd = f.cmd(
        &[],
        &[
            "/bin/sh",
            "-c",
            &format!("sleep 1000 & sleep 1000 & echo ready; wait # {marker}"),
        ],
    );
    // In the environment too, so that the `sleep`s (whose argv lacks it) are found.
    cmd.env("OVLRUN_TEST_MARKER", &marker);
    let mut r = Bg::spawn(&mut cmd, RUN_TIMEOUT);
    r.wait_line("ready");
    let running = pids_with(&marker);
    assert!(
        running.len() >= 4,
        "expected launcher, init, sh and sleeps to carry the marker, found {running:?}"
    );
    assert!(
        !session_mounts(&f.state).is_empty(),
        "the session's mount should be visible in the launcher's mountinfo (check is blind?)"
    );
    kill(r.pid(), Signal::SIGKILL).unwrap();
    let out = r.wait();
    assert_eq!(out.status.signal(), Some(9), "{}", out.context());
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let procs = pids_with(&marker);
        let mounts = session_mounts(&f.state);
        if procs.is_empty() && mounts.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            // Leave nothing behind for the next test, then fail.
            for (pid, _) in &procs {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            panic!(
                "2 s after SIGKILL of the launcher:\nprocesses still running: {procs:#?}\nsession mounts: {mounts:#?}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input

/// Runs ovlrun with `args` and a fresh state root; returns what is wrong with its answer to
/// bad input: not 125, stderr not one line starting `ovlrun: ` naming each of `names`,
/// anything on stdout, or a session directory left behind.
fn bad_input_problems(state: &Path, what: &str, args: &[&str], names: &[&str]) -> Option<String> {
    let out = run(Command::new(support::ovlrun_bin())
        .env("OVLRUN_STATE", state)
        .args(args));
    let mut problems = Vec::new();
    if out.code() != EXIT_OWN_ERROR {
        problems.push(format!(
            "exit code {} (expected {EXIT_OWN_ERROR})",
            out.code()
        ));
    }
    let lines: Vec<&str> = out.stderr.lines().collect();
    if lines.len() != 1 || !lines[0].starts_with("ovlrun: ") {
        problems.push("stderr is not one line starting 'ovlrun: '".to_owned());
    }
    for n in names {
        if !out.stderr.contains(n) {
            problems.push(format!("stderr does not name {n:?}"));
        }
    }
    if !out.stdout.is_empty() {
        problems.push("stdout is not empty".to_owned());
    }
    let sessions = state.join("sessions");
    if fs::read_dir(&sessions).is_ok_and(|mut rd| rd.next().is_some()) {
        problems.push(format!("{} is not empty", sessions.display()));
    }
    (!problems.is_empty()).then(|| format!("{what}: {}\n{}", problems.join("; "), out.context()))
}

#[test]
fn bad_input_is_125_named_and_creates_nothing() {
    require_launcher!();
    let f = Fixture::shared();
    let missing = f.dir.join("no-such-rootfs").to_string_lossy().into_owned();
    let file = f.dir.join("a-file");
    support::write(&file, "not a dir\n");
    let file = file.to_string_lossy().into_owned();
    let good = example_rootfs().to_string_lossy().into_owned();
    let missing_src = f
        .dir
        .join("no-such-bind-src")
        .to_string_lossy()
        .into_owned();
    let missing_bind = format!("{missing_src}:/mnt");
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "--rootfs missing",
            vec!["--rootfs", &missing, "--", "true"],
            vec!["--rootfs", &missing],
        ),
        (
            "--rootfs a file",
            vec!["--rootfs", &file, "--", "true"],
            vec!["--rootfs", &file],
        ),
        (
            "--bind without DST",
            vec!["--rootfs", &good, "--bind", "nodest", "--", "true"],
            vec!["--bind", "nodest"],
        ),
        (
            "--bind with a bad option",
            vec!["--rootfs", &good, "--bind", "/etc:/mnt:rx", "--", "true"],
            vec!["--bind", "/etc:/mnt:rx"],
        ),
        (
            "--bind with a relative DST",
            vec!["--rootfs", &good, "--bind", "/etc:mnt", "--", "true"],
            vec!["--bind", "/etc:mnt"],
        ),
        (
            "--bind with a missing source",
            vec!["--rootfs", &good, "--bind", &missing_bind, "--", "true"],
            vec!["--bind", &missing_src],
        ),
        (
            "relative --cwd",
            vec!["--rootfs", &good, "--cwd", "etc", "--", "true"],
            vec!["--cwd", "etc"],
        ),
        (
            "relative --tmpfs",
            vec!["--rootfs", &good, "--tmpfs", "scratch", "--", "true"],
            vec!["--tmpfs", "scratch"],
        ),
        (
            "--env without a name",
            vec!["--rootfs", &good, "--env", "=NONAME", "--", "true"],
            vec!["--env", "=NONAME"],
        ),
        (
            "unknown capability",
            vec!["--rootfs", &good, "--cap-add", "CAP_NOPE", "--", "true"],
            vec!["--cap-add", "CAP_NOPE"],
        ),
    ];
    let failures: Vec<String> = cases
        .iter()
        .enumerate()
        .filter_map(|(i, (what, args, names))| {
            bad_input_problems(&f.dir.join(format!("state-{i}")), what, args, names)
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs answered wrongly:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// Flags clap rejects before ovlrun's own checks: the same contract (125, one line starting
/// `ovlrun: ` that names the flag, nothing created).
#[test]
fn usage_errors_are_125_with_an_ovlrun_message() {
    require_launcher!();
    let f = Fixture::shared();
    let good = example_rootfs().to_string_lossy().into_owned();
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        ("no --rootfs", vec!["--", "true"], vec!["--rootfs"]),
        (
            "unknown flag",
            vec!["--rootfs", &good, "--no-such-flag", "--", "true"],
            vec!["--no-such-flag"],
        ),
        (
            "bad --net value",
            vec!["--rootfs", &good, "--net", "bridge", "--", "true"],
            vec!["--net", "bridge"],
        ),
        (
            "non-numeric --uid",
            vec!["--rootfs", &good, "--uid", "alice", "--", "true"],
            vec!["--uid", "alice"],
        ),
    ];
    let failures: Vec<String> = cases
        .iter()
        .enumerate()
        .filter_map(|(i, (what, args, names))| {
            bad_input_problems(&f.dir.join(format!("state-{i}")), what, args, names)
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} usage errors answered wrongly:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------
// doctor

#[test]
fn doctor_reports_no_problems() {
    require_launcher!();
    let out = run(Command::new(support::ovlrun_bin()).arg("doctor"));
    out.expect_ok();
    assert!(
        out.stdout.contains(" 0 problems"),
        "doctor must count 0 problems\n{}",
        out.context()
    );
}

// ---------------------------------------------------------------------------------------------
// The unprivileged path: as `ovlrun-test`, with the id range /etc/subuid grants it.
//
// The variant without a subuid range (one-id map and a note on stderr) is not tested: it
// would need /etc/subuid edited or a second user created on a shared machine.

/// The test user and the first host uid of its subordinate range.
struct Unprivileged {
    user: User,
    subuid_start: u32,
}

fn unprivileged_user() -> Option<Unprivileged> {
    let user = User::from_name(TEST_USER).ok().flatten()?;
    let subuid = fs::read_to_string("/etc/subuid").ok()?;
    let subgid = fs::read_to_string("/etc/subgid").ok()?;
    let range = |content: &str| -> Option<u32> {
        content.lines().find_map(|l| {
            let mut f = l.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            let mine = who == user.name || who == user.uid.to_string();
            let count: u32 = count.parse().ok()?;
            if mine && count > 0 {
                start.parse().ok()
            } else {
                None
            }
        })
    };
    let subuid_start = range(&subuid)?;
    range(&subgid)?;
    Some(Unprivileged { user, subuid_start })
}

/// Whether every directory above `path` lets others search it (so another user reaches it).
fn searchable_by_others(path: &Path) -> bool {
    path.ancestors()
        .skip(1)
        .all(|d| fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 != 0))
}

fn newuidmap_available() -> bool {
    ["newuidmap", "newgidmap"].iter().all(|h| {
        ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(h).is_file())
    })
}

macro_rules! require_unprivileged {
    () => {{
        require_launcher!();
        require!(
            unprivileged_user().is_some(),
            "find user ovlrun-test with a range in /etc/subuid and /etc/subgid (scripts/setup.sh)"
        );
        require!(
            newuidmap_available(),
            "find newuidmap/newgidmap (package uidmap)"
        );
        require!(
            searchable_by_others(Path::new(support::ovlrun_bin()))
                && searchable_by_others(
                    Path::new(env!("CARGO_TARGET_TMPDIR")).join("it").as_path()
                ),
            "reach the binary and the test dirs as another user (a parent lacks o+x)"
        );
        unprivileged_user().unwrap()
    }};
}

/// A copied rootfs (root's, read-only to the user) and a home the user owns, holding the
/// state root.
struct UserFixture {
    f: Fixture,
    who: Unprivileged,
    home: PathBuf,
}

impl UserFixture {
    fn new(who: Unprivileged) -> UserFixture {
        let mut f = Fixture::copied();
        let home = f.dir.mkdir("home");
        nix::unistd::chown(&home, Some(who.user.uid), Some(who.user.gid)).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
        f.state = home.join("state");
        UserFixture { f, who, home }
    }

    /// `ovlrun` as the user, with a clean environment of its own.
    fn cmd(&self, flags: &[&str], argv: &[&str]) -> Command {
        let mut cmd = self.f.cmd(flags, argv);
        let (uid, gid): (Uid, Gid) = (self.who.user.uid, self.who.user.gid);
        cmd.env_clear()
            .env("HOME", &self.home)
            .env("OVLRUN_STATE", &self.f.state)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("USER", &self.who.user.name)
            .current_dir(&self.home)
            .uid(uid.as_raw())
            .gid(gid.as_raw());
        // scripts/test.sh runs these tests once per backend.
        if let Some(fs) = std::env::var_os("OVLRUN_FS") {
            cmd.env("OVLRUN_FS", fs);
        }
        cmd
    }

    fn sh(&self, flags: &[&str], script: &str) -> Out {
        run(&mut self.cmd(flags, &["/bin/sh", "-c", script]))
    }
}

#[test]
fn unprivileged_exit_codes() {
    let who = require_unprivileged!();
    let u = UserFixture::new(who);
    run(&mut u.cmd(&[], &["echo", "hi"]))
        .expect_ok()
        .expect_stdout(&["hi"]);
    u.sh(&[], "exit 7").expect_code(7);
    u.sh(&[], "kill -9 $$").expect_code(137);
    u.sh(&[], "kill -TERM $$").expect_code(143);
    let out = run(&mut u.cmd(&[], &["/no/such-command-xyz"]));
    out.expect_code(127);
    assert!(
        out.stderr.contains("/no/such-command-xyz"),
        "{}",
        out.context()
    );
    run(&mut u.cmd(&[], &["/etc/motd"])).expect_code(126);
    assert_no_sessions_left(&u.f.sessions_dir(), "unprivileged sessions");
}

#[test]
fn unprivileged_session_is_root_with_the_subuid_range() {
    let who = require_unprivileged!();
    let start = who.subuid_start;
    let u = UserFixture::new(who);
    let before = Frozen::take(&u.f.rootfs);
    let out = u.sh(
        &[],
        r#"echo "id=$(id -u):$(id -g)"
           echo "pid=$$"
           cat /proc/self/uid_map | sed 's/^ */uidmap=/' | tr -s ' '
           touch /x && chown 1000:1000 /x && echo "x=$(stat -c %u:%g /x)"
           mkdir /d && echo data > /d/f && chown -R 1000:1000 /d && chmod 700 /d && echo d-done"#,
    );
    out.expect_ok();
    let ctx = out.context();
    assert_eq!(out.value("id"), "0:0", "id inside\n{ctx}");
    assert_eq!(out.value("pid"), "2", "$$\n{ctx}");
    let maps: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("uidmap="))
        .collect();
    let uid = u.who.user.uid.as_raw();
    assert!(
        maps.contains(&format!("0 {uid} 1").as_str()),
        "uid_map must map 0 to {uid}\n{ctx}"
    );
    assert!(
        maps.iter().any(|m| m.starts_with(&format!("1 {start} "))),
        "uid_map must map 1.. to the subuid range starting {start}\n{ctx}"
    );
    assert_eq!(out.value("x"), "1000:1000", "chown inside\n{ctx}");
    assert!(out.stdout.ends_with("d-done\n"), "{ctx}");
    before.assert_unchanged(&u.f.rootfs, "an unprivileged session");
    // The launcher removes even what the session chowned to a subordinate id.
    assert_no_sessions_left(&u.f.sessions_dir(), "an unprivileged session");
}

/// The rootfs here belongs to host root, an id the user's namespace does not map (it shows as
/// 65534): root in the session must still be able to change its files, as with any rootfs.
#[test]
fn unprivileged_session_modifies_root_owned_rootfs_files() {
    let who = require_unprivileged!();
    let u = UserFixture::new(who);
    let before = Frozen::take(&u.f.rootfs);
    u.sh(
        &[],
        r#"set -e
           echo changed >> /etc/motd
           tail -n 1 /etc/motd
           chmod 600 /etc/hostname && stat -c %a /etc/hostname
           rm /etc/shells && [ ! -e /etc/shells ] && echo removed
           mv /etc/profile /etc/profile.moved && echo renamed"#,
    )
    .expect_ok()
    .expect_stdout(&["changed", "600", "removed", "renamed"]);
    before.assert_unchanged(
        &u.f.rootfs,
        "an unprivileged session that changed rootfs files",
    );
    assert_no_sessions_left(&u.f.sessions_dir(), "an unprivileged session");
}

#[test]
fn unprivileged_bind_and_net_none() {
    let who = require_unprivileged!();
    let u = UserFixture::new(who);
    let shared = u.home.join("shared");
    fs::create_dir(&shared).unwrap();
    nix::unistd::chown(&shared, Some(u.who.user.uid), Some(u.who.user.gid)).unwrap();
    let bind = format!("{}:/mnt/shared", shared.display());
    u.sh(
        &["--bind", &bind, "--net", "none"],
        "echo from-session > /mnt/shared/f && tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
    )
    .expect_ok()
    .expect_stdout(&["lo"]);
    let f = shared.join("f");
    assert_eq!(support::read_string(&f), "from-session\n");
    assert_eq!(
        support::lstat(&f).uid(),
        u.who.user.uid.as_raw(),
        "a file written as root inside belongs to the user on the host"
    );
}

#[test]
fn unprivileged_sigkill_leaves_no_process_and_no_mount() {
    let who = require_unprivileged!();
    let u = UserFixture::new(who);
    let marker = unique_marker("user-sigkill");
    let mut cmd = u.cmd(
        &[],
        &[
            "/bin/sh",
            "-c",
            &format!("sleep 1000 & echo ready; wait # {marker}"),
        ],
    );
    cmd.env("OVLRUN_TEST_MARKER", &marker);
    let mut r = Bg::spawn(&mut cmd, RUN_TIMEOUT);
    r.wait_line("ready");
    assert!(
        !session_mounts(&u.f.state).is_empty(),
        "the session's mount should be visible in the launcher's mountinfo"
    );
    kill(r.pid(), Signal::SIGKILL).unwrap();
    let out = r.wait();
    assert_eq!(out.status.signal(), Some(9), "{}", out.context());
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (procs, mounts) = (pids_with(&marker), session_mounts(&u.f.state));
        if procs.is_empty() && mounts.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for (pid, _) in &procs {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            panic!(
                "2 s after SIGKILL of the launcher:\nprocesses: {procs:#?}\nmounts: {mounts:#?}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn unprivileged_doctor_reports_no_problems() {
    let who = require_unprivileged!();
    let u = UserFixture::new(who);
    let mut cmd = Command::new(support::ovlrun_bin());
    cmd.arg("doctor")
        .env_clear()
        .env("HOME", &u.home)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .current_dir(&u.home)
        .uid(u.who.user.uid.as_raw())
        .gid(u.who.user.gid.as_raw());
    let out = run(&mut cmd);
    out.expect_ok();
    assert!(out.stdout.contains(" 0 problems"), "{}", out.context());
}

/// A user over a root-owned tree: the session says at start why root inside cannot act as
/// the files' owner and what fixes it, and `doctor --rootfs` says the same; a tree the user
/// owns draws neither.
#[test]
fn unprivileged_over_a_root_owned_tree_is_told_why_and_the_fix() {
    let who = require_unprivileged!();
    let u = UserFixture::new(who);
    let out = u.sh(&[], "true");
    out.expect_ok();
    let note: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("does not map"))
        .collect();
    assert_eq!(note.len(), 1, "{}", out.context());
    for part in [
        "belongs to uid 0",
        "mmdebstrap --mode=unshare",
        "unshare -r",
    ] {
        assert!(note[0].contains(part), "{part}\n{}", out.context());
    }
    let doctor = |rootfs: &Path| {
        let mut cmd = Command::new(support::ovlrun_bin());
        cmd.args(["doctor", "--rootfs"])
            .arg(rootfs)
            .env_clear()
            .env("HOME", &u.home)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .current_dir(&u.home)
            .uid(u.who.user.uid.as_raw())
            .gid(u.who.user.gid.as_raw());
        run(&mut cmd)
    };
    let out = doctor(&u.f.rootfs);
    assert!(
        out.stdout.contains("rootfs owner:") && out.stdout.contains("does not map"),
        "{}",
        out.context()
    );
    assert!(
        out.stdout.contains("fix: create the tree"),
        "{}",
        out.context()
    );
    // The user's own tree is fine, in a session and for doctor.
    let own = u.home.join("own");
    copy_tree(&example_rootfs(), &own);
    let chown = Command::new("chown")
        .args(["-R", &format!("{}:{}", u.who.user.uid, u.who.user.gid)])
        .arg(&own)
        .status()
        .unwrap();
    assert!(chown.success());
    let mut cmd2 = Command::new(support::ovlrun_bin());
    cmd2.env_clear()
        .env("HOME", &u.home)
        .env("OVLRUN_STATE", &u.f.state)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .current_dir(&u.home)
        .uid(u.who.user.uid.as_raw())
        .gid(u.who.user.gid.as_raw())
        .arg("--rootfs")
        .arg(&own)
        .args(["--", "true"]);
    let out = run(&mut cmd2);
    out.expect_ok();
    assert!(!out.stderr.contains("does not map"), "{}", out.context());
    let out = doctor(&own);
    assert!(
        out.stdout.contains("rootfs owner:") && !out.stdout.contains("does not map"),
        "{}",
        out.context()
    );
}

// ---------------------------------------------------------------------------------------------
// A terminal

/// Skips (locally) or fails (under CI) a test that needs util-linux's `script`.
macro_rules! require_script {
    () => {
        require!(
            Command::new("script").arg("--version").output().is_ok(),
            "run util-linux's script (a pty for the test)"
        );
    };
}

/// util-linux's `script` (a real pty for the whole run, as a user's terminal would be)
/// runs `sh OUTER`; `as_user` runs it as the test user instead of root.
fn script_cmd(outer: &Path, as_user: Option<&UserFixture>) -> Command {
    let mut cmd = Command::new("script");
    cmd.args(["-qfec", &format!("sh {}", outer.display()), "/dev/null"]);
    if let Some(u) = as_user {
        cmd.env_clear()
            .env("HOME", &u.home)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .current_dir(&u.home)
            .uid(u.who.user.uid.as_raw())
            .gid(u.who.user.gid.as_raw());
    }
    if let Some(fs) = std::env::var_os("OVLRUN_FS") {
        cmd.env("OVLRUN_FS", fs);
    }
    cmd
}

/// The value of the first word `KEY=VALUE` with this key on any line, else a panic
/// showing all the lines.
#[track_caller]
fn pty_value<'a>(lines: &'a [String], key: &str) -> &'a str {
    let prefix = format!("{key}=");
    lines
        .iter()
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {key}= in:\n{}", lines.join("\n")))
}

/// A shell line printing the session id, the controlling terminal (`tty_nr`, 0 for none)
/// and the pid of the shell that runs it, from `/proc/self/stat`.
const STAT_LINE: &str =
    r#"read -r _ _ _ _ _ sid ttynr _ < /proc/self/stat; echo "SID=$sid TTYNR=$ttynr PID=$$""#;

/// On a terminal, the command owns the foreground (job control works in it), Ctrl-C reaches
/// the command and not the launcher, and the foreground comes back to the caller afterwards.
#[test]
fn on_a_terminal_the_command_owns_the_foreground_and_gets_ctrl_c() {
    require_launcher!();
    require_script!();
    let fx = Fixture::shared();
    fs::create_dir_all(fx.dir.join("bin")).unwrap();
    // Inside the session: are we the terminal's foreground group? Then wait for Ctrl-C.
    let inner = fx.dir.join("bin/inner.sh");
    fs::write(
        &inner,
        "read _ _ _ _ pg _ _ tpg _ < /proc/$$/stat\n\
         echo \"INSIDE pgrp=$pg tpgid=$tpg\"\n\
         trap 'echo GOT-INT; exit 9' INT\n\
         echo READY\n\
         i=0; while [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n\
         echo NO-INT\n",
    )
    .unwrap();
    // On the host, in script's pty: run the session, then look at the foreground again.
    let outer = fx.dir.join("outer.sh");
    fs::write(
        &outer,
        format!(
            "OVLRUN_STATE={state} {bin} --rootfs {rootfs} --bind {bindir}:/t:ro -- /bin/sh /t/inner.sh\n\
             echo \"EXIT=$?\"\n\
             read _ _ _ _ pg _ _ tpg _ < /proc/$$/stat\n\
             echo \"AFTER pgrp=$pg tpgid=$tpg\"\n\
             echo DONE\n",
            state = fx.state.display(),
            bin = support::ovlrun_bin(),
            rootfs = fx.rootfs.display(),
            bindir = fx.dir.join("bin").display(),
        ),
    )
    .unwrap();
    let mut sent = false;
    let lines = on_a_pty(script_cmd(&outer, None), |line, stdin| {
        if line == "READY" && !sent {
            // ^C typed on the terminal: the session's line discipline signals its foreground.
            use std::io::Write;
            stdin.write_all(b"\x03").unwrap();
            sent = true;
        }
    });
    let text = lines.join("\n");
    let pair = |prefix: &str| -> (String, String) {
        let line = lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line in:\n{text}"));
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_default()
                .to_owned()
        };
        (field("pgrp="), field("tpgid="))
    };
    let (pg, tpg) = pair("INSIDE");
    assert_eq!(
        pg, tpg,
        "the command is not the terminal's foreground group:\n{text}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with("GOT-INT")),
        "Ctrl-C did not reach the command:\n{text}"
    );
    assert!(
        lines.iter().any(|l| l == "EXIT=9"),
        "the launcher did not exit with the command's status:\n{text}"
    );
    let (pg, tpg) = pair("AFTER");
    assert_eq!(
        pg, tpg,
        "the terminal's foreground was not given back:\n{text}"
    );
    assert_no_sessions_left(&fx.sessions_dir(), "a terminal session");
}

/// On a terminal the session gets a pty of its own: `tty` names `/dev/pts/N` of its own
/// devpts, the command leads its session with that pty as controlling terminal, `stty size`
/// is the caller's window size and follows a resize (SIGWINCH), and the caller's terminal
/// mode (`stty -g`) is the same after the session as before.
fn pty_of_its_own(fx: &Fixture, as_user: Option<&UserFixture>) {
    let shared = fx.dir.mkdir("shared");
    // The session's root is the test user's uid (or a subordinate id): let it write.
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let dir = fx.dir.join("outer");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(
        shared.join("inner.sh"),
        format!(
            "{STAT_LINE}\n\
             echo \"TTY=$(tty) SIZE=$(stty size | tr ' ' x)\"\n\
             trap 'echo \"RESIZED=$(stty size | tr \" \" x)\"; exit 0' WINCH\n\
             touch /t/ready\n\
             i=0; while [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n\
             echo NO-WINCH\n"
        ),
    )
    .unwrap();
    let outer = dir.join("outer.sh");
    fs::write(
        &outer,
        format!(
            "stty rows 37 cols 111\n\
             stty -g > {dir}/before\n\
             {{ while [ ! -e {shared}/ready ]; do sleep 0.05; done; stty rows 41 cols 123 < /dev/tty; }} &\n\
             OVLRUN_STATE={state} {bin} --rootfs {rootfs} --bind {shared}:/t -- /bin/sh /t/inner.sh\n\
             echo \"EXIT=$?\"\n\
             stty -g > {dir}/after\n\
             if cmp -s {dir}/before {dir}/after; then echo MODE=kept; else echo MODE=changed; fi\n\
             echo DONE\n",
            dir = dir.display(),
            shared = shared.display(),
            state = fx.state.display(),
            bin = support::ovlrun_bin(),
            rootfs = fx.rootfs.display(),
        ),
    )
    .unwrap();
    let lines = on_a_pty(script_cmd(&outer, as_user), |_, _| {});
    let text = lines.join("\n");
    let tty = pty_value(&lines, "TTY");
    assert!(
        tty.strip_prefix("/dev/pts/")
            .is_some_and(|n| n.parse::<u32>().is_ok()),
        "tty inside names no /dev/pts/N:\n{text}"
    );
    assert_ne!(
        pty_value(&lines, "TTYNR"),
        "0",
        "the command has no controlling terminal:\n{text}"
    );
    assert_eq!(
        pty_value(&lines, "SID"),
        pty_value(&lines, "PID"),
        "the command does not lead a session of its own:\n{text}"
    );
    assert_eq!(
        pty_value(&lines, "SIZE"),
        "37x111",
        "the window size was not copied:\n{text}"
    );
    assert_eq!(
        pty_value(&lines, "RESIZED"),
        "41x123",
        "a resize did not reach the session:\n{text}"
    );
    assert_eq!(pty_value(&lines, "EXIT"), "0", "{text}");
    assert_eq!(
        pty_value(&lines, "MODE"),
        "kept",
        "the caller's terminal mode was not restored:\n{text}"
    );
}

#[test]
fn on_a_terminal_the_session_has_a_pty_of_its_own() {
    require_launcher!();
    require_script!();
    let fx = Fixture::shared();
    pty_of_its_own(&fx, None);
    assert_no_sessions_left(&fx.sessions_dir(), "a pty session");
}

#[test]
fn unprivileged_session_has_a_pty_of_its_own() {
    let who = require_unprivileged!();
    require_script!();
    let u = UserFixture::new(who);
    pty_of_its_own(&u.f, Some(&u));
    assert_no_sessions_left(&u.f.sessions_dir(), "an unprivileged pty session");
}

/// SIGTERM to ovlrun while its session runs on a pty: the session ends with the signal's
/// status, and the caller's terminal, in raw mode meanwhile, gets its mode back.
#[test]
fn terminal_mode_is_restored_when_the_launcher_gets_sigterm() {
    require_launcher!();
    require_script!();
    let fx = Fixture::shared();
    let shared = fx.dir.mkdir("shared");
    let dir = fx.dir.join("outer");
    fs::create_dir_all(&dir).unwrap();
    let outer = dir.join("outer.sh");
    // A background job's stdin is /dev/null unless given: the terminal, so a pty is wanted.
    fs::write(
        &outer,
        format!(
            "stty -g > {dir}/before\n\
             OVLRUN_STATE={state} {bin} --rootfs {rootfs} --bind {shared}:/t -- /bin/sh -c 'touch /t/ready; sleep 30' < /dev/tty &\n\
             pid=$!\n\
             while [ ! -e {shared}/ready ]; do sleep 0.05; done\n\
             stty -g > {dir}/during\n\
             kill -TERM $pid\n\
             wait $pid\n\
             echo \"EXIT=$?\"\n\
             stty -g > {dir}/after\n\
             if cmp -s {dir}/before {dir}/during; then echo DURING=cooked; else echo DURING=raw; fi\n\
             if cmp -s {dir}/before {dir}/after; then echo MODE=kept; else echo MODE=changed; fi\n\
             echo DONE\n",
            dir = dir.display(),
            shared = shared.display(),
            state = fx.state.display(),
            bin = support::ovlrun_bin(),
            rootfs = fx.rootfs.display(),
        ),
    )
    .unwrap();
    let lines = on_a_pty(script_cmd(&outer, None), |_, _| {});
    let text = lines.join("\n");
    assert_eq!(
        pty_value(&lines, "DURING"),
        "raw",
        "the caller's terminal was not in raw mode during the session:\n{text}"
    );
    assert_eq!(
        pty_value(&lines, "EXIT"),
        "143",
        "SIGTERM did not end the session:\n{text}"
    );
    assert_eq!(
        pty_value(&lines, "MODE"),
        "kept",
        "the caller's terminal mode was not restored after SIGTERM:\n{text}"
    );
    assert_no_sessions_left(&fx.sessions_dir(), "a pty session ended by SIGTERM");
}

/// `--no-tty` on a terminal: no pty, and the command has no controlling terminal (so it
/// shares none with the caller); its stdio is the caller's terminal as it is.
#[test]
fn no_tty_leaves_the_command_without_a_controlling_terminal() {
    require_launcher!();
    require_script!();
    let fx = Fixture::shared();
    let outer = fx.dir.join("outer.sh");
    fs::write(
        &outer,
        format!(
            "OVLRUN_STATE={state} {bin} --no-tty --rootfs {rootfs} -- /bin/sh -c '{STAT_LINE}; tty >/dev/null && echo TTY=yes || echo TTY=no'\n\
             echo \"EXIT=$?\"\n\
             echo DONE\n",
            state = fx.state.display(),
            bin = support::ovlrun_bin(),
            rootfs = fx.rootfs.display(),
        ),
    )
    .unwrap();
    let lines = on_a_pty(script_cmd(&outer, None), |_, _| {});
    let text = lines.join("\n");
    assert_eq!(
        pty_value(&lines, "TTYNR"),
        "0",
        "--no-tty: the command has a controlling terminal:\n{text}"
    );
    // The caller's pty is not in the session's devpts, so `tty` cannot name it.
    assert_eq!(pty_value(&lines, "TTY"), "no", "{text}");
    assert_eq!(pty_value(&lines, "EXIT"), "0", "{text}");
}

/// `-t` without any terminal (stdin a pipe, stdout a pipe): the command still gets a pty;
/// input is relayed to it and the end of the input ends a reader (Ctrl-D on the pty).
#[test]
fn tty_flag_gives_a_pty_without_a_terminal() {
    require_launcher!();
    let fx = Fixture::shared();
    let script = r#"tty; read -r x; echo "got=$x"; cat; echo "cat-ended""#;
    let out = support::run_with_input(
        &mut fx.cmd(&["-t"], &["/bin/sh", "-c", script]),
        b"hello\nmore\n",
        RUN_TIMEOUT,
    );
    out.expect_ok();
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .collect();
    assert!(
        lines.iter().any(|l| l.starts_with("/dev/pts/")),
        "no pty with -t\n{}",
        out.context()
    );
    assert!(lines.contains(&"got=hello"), "{}", out.context());
    assert!(lines.contains(&"cat-ended"), "{}", out.context());
    // Without -t the same run has no terminal.
    let out = support::run_with_input(
        &mut fx.cmd(&[], &["/bin/sh", "-c", "tty"]),
        b"",
        RUN_TIMEOUT,
    );
    assert_eq!(out.stdout.trim(), "not a tty", "{}", out.context());
}

/// `-t` with stdin a pipe and stdout a terminal: the session's pty already ends its lines
/// with `\r\n`, so the caller's terminal must not add another `\r`; its mode is the same
/// afterwards.
#[test]
fn tty_flag_with_only_stdout_a_terminal_keeps_lines_whole() {
    require_launcher!();
    require_script!();
    let fx = Fixture::shared();
    let outer = fx.dir.join("outer.sh");
    fs::write(
        &outer,
        format!(
            "before=$(stty -g)\n\
             echo hi | OVLRUN_STATE={state} {bin} -t --rootfs {rootfs} -- /bin/sh -c 'read -r x; echo \"PIPED=$x $(tty)\"'\n\
             echo \"EXIT=$?\"\n\
             if [ \"$before\" = \"$(stty -g)\" ]; then echo MODE=kept; else echo MODE=changed; fi\n\
             echo DONE\n",
            state = fx.state.display(),
            bin = support::ovlrun_bin(),
            rootfs = fx.rootfs.display(),
        ),
    )
    .unwrap();
    let lines = on_a_pty(script_cmd(&outer, None), |_, _| {});
    let text = lines.join("\n");
    let piped = lines
        .iter()
        .find(|l| l.starts_with("PIPED="))
        .unwrap_or_else(|| panic!("no PIPED= line in:\n{text}"));
    assert!(
        piped.starts_with("PIPED=hi /dev/pts/") && !piped.ends_with('\r'),
        "{piped:?} (a line with \\r\\r\\n ends in \\r here)\n{text}"
    );
    assert_eq!(pty_value(&lines, "EXIT"), "0", "{text}");
    assert_eq!(pty_value(&lines, "MODE"), "kept", "{text}");
}

/// `--policy ask` on a terminal: Enter takes the default (preserve), and Ctrl-C at the prompt
/// keeps the session too, instead of killing ovlrun and losing the changes.
#[test]
fn ask_on_a_terminal_keeps_the_session_on_enter_and_on_ctrl_c() {
    require_launcher!();
    require_script!();
    for (key, said) in [(&b"\n"[..], "kept;"), (&b"\x03"[..], "no answer: keeping")] {
        let fx = Fixture::shared();
        let outer = fx.dir.join("outer.sh");
        let ovlrun = format!(
            "OVLRUN_STATE={state} {bin}",
            state = fx.state.display(),
            bin = support::ovlrun_bin()
        );
        // A handler, not an ignore: ovlrun must not inherit SIGINT ignored.
        fs::write(
            &outer,
            format!(
                "trap 'echo OUTER-INT' INT\n\
                 {ovlrun} --rootfs {rootfs} --policy ask -- sh -c 'touch /asked'\n\
                 echo \"EXIT=$?\"\n\
                 {ovlrun} ls\n\
                 echo DONE\n",
                rootfs = fx.rootfs.display(),
            ),
        )
        .unwrap();
        let mut typed = false;
        let lines = on_a_pty(script_cmd(&outer, None), |line, stdin| {
            if line.contains("1 added, 0 changed, 0 deleted") && !typed {
                use std::io::Write;
                stdin.write_all(key).unwrap();
                typed = true;
            }
        });
        let text = lines.join("\n");
        assert!(typed, "no summary before the prompt:\n{text}");
        assert!(
            text.contains(said),
            "key {key:?}: want {said:?} in:\n{text}"
        );
        assert!(
            lines.iter().any(|l| l == "EXIT=0"),
            "key {key:?}: ovlrun did not end with the command's status:\n{text}"
        );
        assert!(
            lines.iter().any(|l| l.contains(" preserved ")),
            "key {key:?}: the session is not kept:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Limits (issue 16 item 9): --memory, --pids-limit, --cpus

/// The host directory of the session's cgroup in the v1 hierarchy `controller` (or in
/// cgroup2 alone), from the session's pid 1 as the host sees it.
fn session_cgroup_dirs(state: &Path) -> Vec<PathBuf> {
    let sessions: Vec<_> = fs::read_dir(state.join("sessions"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let mut dirs = Vec::new();
    for id in sessions {
        let name = format!("session-{}", id.to_string_lossy());
        for base in [
            "/sys/fs/cgroup/pids/ovlrun",
            "/sys/fs/cgroup/memory/ovlrun",
            "/sys/fs/cgroup/cpu/ovlrun",
            "/sys/fs/cgroup/ovlrun",
        ] {
            let d = Path::new(base).join(&name);
            if d.is_dir() {
                dirs.push(d);
            }
        }
    }
    dirs
}

/// Root: the limits are written into a cgroup of the session's own before its command runs,
/// and they hold: a fork past `--pids-limit` fails, a process past `--memory` is killed.
/// The cgroup is gone after the session.
#[test]
fn limits_are_written_before_the_command_and_hold() {
    require_launcher!();
    require!(
        Path::new("/sys/fs/cgroup/pids").is_dir()
            || Path::new("/sys/fs/cgroup/cgroup.procs").exists(),
        "find a pids cgroup hierarchy"
    );
    let fx = Fixture::shared();
    let mut bg = support::Bg::spawn(
        &mut fx.cmd(
            &[
                "--memory",
                "64m",
                "--pids-limit",
                "16",
                "--cpus",
                "0.5",
                "--no-tty",
            ],
            &["/bin/sh", "-c", "echo ready; sleep 30"],
        ),
        RUN_TIMEOUT,
    );
    bg.wait_line("ready");
    let dirs = session_cgroup_dirs(&fx.state);
    let read = |file: &str| {
        dirs.iter()
            .map(|d| d.join(file))
            .find(|p| p.exists())
            .map(|p| fs::read_to_string(&p).unwrap().trim().to_owned())
    };
    let (pids, memory, quota) = (
        read("pids.max"),
        read("memory.limit_in_bytes").or_else(|| read("memory.max")),
        read("cpu.cfs_quota_us").or_else(|| read("cpu.max")),
    );
    // A launcher killed outright leaves its cgroup; the next session with limits removes it.
    bg.kill_now();
    assert_eq!(pids.as_deref(), Some("16"), "dirs {dirs:?}");
    assert_eq!(memory.as_deref(), Some("67108864"), "dirs {dirs:?}");
    assert!(
        matches!(quota.as_deref(), Some("50000") | Some("50000 100000")),
        "cpu quota {quota:?} in {dirs:?}"
    );

    // The limits hold, from the command's first instruction.
    std::thread::sleep(Duration::from_millis(2100));
    let out = fx.sh(
        &["--pids-limit", "6"],
        "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 2 & done; wait; echo done",
    );
    assert!(
        out.stderr.contains("can't fork") || out.stderr.contains("Resource temporarily"),
        "no fork refused under --pids-limit 6\n{}",
        out.context()
    );
    let out = fx.sh(
        &["--memory", "16m"],
        "dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd=$?",
    );
    assert!(
        out.stdout.contains("dd=137") || out.code() == 137,
        "dd of 64 MiB lived under --memory 16m\n{}",
        out.context()
    );
    // Gone with the sessions, also the one that was killed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !session_cgroup_dirs(&fx.state).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(session_cgroup_dirs(&fx.state), Vec::<PathBuf>::new());
    // Nor is their parent, when no other session has one in it.
    if !Path::new("/sys/fs/cgroup/pids/ovlrun")
        .read_dir()
        .is_ok_and(|mut d| {
            d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("session-")))
        })
    {
        assert!(
            !Path::new("/sys/fs/cgroup/pids/ovlrun").exists(),
            "/ovlrun left"
        );
    }
}

/// A limit that is none is refused by name before anything runs.
#[test]
fn bad_limits_are_named_errors() {
    let fx = Fixture::shared();
    for (flag, value, want) in [
        ("--memory", "12q", "--memory 12q"),
        ("--memory", "100", "less than 1 MiB"),
        ("--pids-limit", "0", "--pids-limit 0"),
        ("--cpus", "0", "--cpus 0"),
        ("--cpus", "4096", "CPUs"),
    ] {
        let out = fx.sh(&[flag, value], "echo ran");
        out.expect_own_error(&[want]);
        assert!(!out.stdout.contains("ran"), "{}", out.context());
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.context());
    }
    assert_no_sessions_left(&fx.sessions_dir(), "refused limits");
}

/// A user who may not write cgroups: the session runs, and says once that its limits are not
/// applied.
#[test]
fn unprivileged_limits_are_a_note_not_an_error() {
    let who = require_unprivileged!();
    let u = UserFixture::new(who);
    let out = u.sh(&["--memory", "64m", "--pids-limit", "16"], "echo ran");
    out.expect_ok().expect_stdout(&["ran"]);
    let notes = out
        .stderr
        .lines()
        .filter(|l| l.contains("are not applied"))
        .count();
    assert_eq!(notes, 1, "{}", out.context());
}

// ---------------------------------------------------------------------------------------------
// Entering a running session (issue 16 item 5): ovlrun exec ID|NAME -- CMD

/// Starts a session named `box` that marks itself, prints its confinement, says `ready` and
/// waits; returns it running.
fn running_box(cmd: &mut Command) -> support::Bg {
    let mut bg = support::Bg::spawn(cmd, RUN_TIMEOUT);
    bg.wait_line("ready");
    bg
}

/// The confinement lines of `/proc/self/status` a process inside prints.
const CONFINEMENT: &str = "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; grep -c session- /proc/self/cgroup";

/// Root: `exec` enters the running session (its root, its pid namespace, its cgroup) and is
/// held as its command is (capabilities, no_new_privs, seccomp); `--user`, `--env`, the exit
/// status; a kept session that no longer runs is refused.
#[test]
fn exec_enters_a_running_session_held_as_its_command() {
    require_launcher!();
    let fx = Fixture::shared();
    let script = format!("touch /inside; {{ {CONFINEMENT}; }} > /tmp/conf; echo ready; sleep 30");
    let mut bg = running_box(&mut fx.cmd(
        &[
            "--name",
            "box",
            "--policy",
            "preserve",
            "--no-tty",
            "--pids-limit",
            "64",
            "--cap-drop",
            "CAP_NET_RAW",
        ],
        &["/bin/sh", "-c", &script],
    ));
    let exec = |args: &[&str]| {
        let mut cmd = Command::new(support::ovlrun_bin());
        cmd.env("OVLRUN_STATE", &fx.state).arg("exec").args(args);
        run(&mut cmd)
    };
    let out = exec(&[
        "box",
        "--",
        "sh",
        "-c",
        "test -e /inside && echo seen; echo pid=$$",
    ]);
    out.expect_ok();
    assert!(out.stdout.contains("seen"), "{}", out.context());
    let pid: u32 = out.value("pid").parse().unwrap();
    assert!(
        pid > 1,
        "not in the session's pid namespace: {}",
        out.context()
    );
    // Held as the command is: the same capabilities, no_new_privs, filter and cgroup.
    let inside = exec(&[
        "box",
        "--",
        "sh",
        "-c",
        &format!("{CONFINEMENT}; cat /tmp/conf"),
    ]);
    inside.expect_ok();
    let lines: Vec<&str> = inside.stdout.lines().collect();
    assert_eq!(lines.len(), 10, "{}", inside.context());
    assert_eq!(
        lines[..5],
        lines[5..],
        "exec'd process differs from the command"
    );
    assert!(lines.contains(&"NoNewPrivs:\t1") && lines.contains(&"Seccomp:\t2"));
    assert_ne!(
        lines[4],
        "0",
        "not in the session's cgroup: {}",
        inside.context()
    );

    exec(&[
        "box",
        "--user",
        "1000:1000",
        "--env",
        "FOO=bar",
        "--",
        "sh",
        "-c",
        "echo $(id -u) $FOO",
    ])
    .expect_ok()
    .expect_stdout(&["1000 bar"]);
    exec(&["box", "--", "sh", "-c", "exit 7"]).expect_code(7);
    bg.kill_now();
    let ended = exec(&["box", "--", "true"]);
    ended.expect_own_error(&["is not running"]);
    run(Command::new(support::ovlrun_bin())
        .env("OVLRUN_STATE", &fx.state)
        .args(["discard", "box"]))
    .expect_ok();
}

/// A user: `exec` enters the user's own running session (pid 1 is not dumpable, so through
/// its command, in the session's user namespace).
#[test]
fn unprivileged_exec_enters_the_users_session() {
    let who = require_unprivileged!();
    let u = UserFixture::new(who);
    let mut bg = running_box(&mut u.cmd(
        &["--name", "box", "--no-tty"],
        &["/bin/sh", "-c", "touch /inside; echo ready; sleep 30"],
    ));
    let mut exec = Command::new(support::ovlrun_bin());
    exec.env_clear()
        .env("HOME", &u.home)
        .env("OVLRUN_STATE", &u.f.state)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .current_dir(&u.home)
        .uid(u.who.user.uid.as_raw())
        .gid(u.who.user.gid.as_raw())
        .args([
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "test -e /inside && echo seen; exit 3",
        ]);
    let out = run(&mut exec);
    bg.kill_now();
    out.expect_code(3);
    assert!(out.stdout.contains("seen"), "{}", out.context());
}

/// A user's `exec` never joins a process of the session that made a user namespace of its
/// own (there, the session's command would choose what the entered process sees): with no
/// other way in, it is refused.
#[test]
fn unprivileged_exec_refuses_a_command_in_a_namespace_of_its_own() {
    let who = require_unprivileged!();
    let u = UserFixture::new(who);
    let mut bg = running_box(&mut u.cmd(
        &["--name", "box", "--no-tty"],
        &["/bin/sh", "-c", "echo ready; exec unshare -U sleep 30"],
    ));
    let mut exec = Command::new(support::ovlrun_bin());
    exec.env_clear()
        .env("HOME", &u.home)
        .env("OVLRUN_STATE", &u.f.state)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .current_dir(&u.home)
        .uid(u.who.user.uid.as_raw())
        .gid(u.who.user.gid.as_raw())
        .args(["exec", "box", "--", "echo", "entered"]);
    let out = run(&mut exec);
    bg.kill_now();
    assert!(!out.stdout.contains("entered"), "{}", out.context());
    out.expect_own_error(&["namespace"]);
}
