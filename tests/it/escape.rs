//! Escape attempts (issue 13): a hostile session tries to change the host through `/proc`,
//! `/sys` and its cgroups, through refused system calls, the caller's terminal, inherited fds,
//! device nodes, ptrace and a bind over a symlink. Each attack asserts that it failed (with the
//! errno expected from the hardening, the session's output in the message) and that the host
//! value, re-read from outside, is what it was.
//!
//! Most attacks run twice, as root and as the unprivileged `ovlrun-test` user
//! (`as_root_and_user!` makes `NAME::root` and `NAME::user` from one body `NAME`), over a
//! private copy of `examples/rootfs`, on the backend `OVLRUN_FS` picks (`scripts/test.sh` runs
//! this module again with `OVLRUN_FS=fuse`).
//!
//! The system calls busybox cannot make come from `tests/escape/attack.c`, compiled once per
//! test process with `cc -static` and bound read-only at `/attack`. It prints `NAME=OK` or
//! `NAME=ERRNO`.
//!
//! Harmless by construction, even where an attack gets through: a sysctl is written with the
//! value the host already has (and restored by a guard if it differs after), `/proc/sysrq-trigger`
//! gets `h` (help to the kernel log), cgroups are the test's own and removed by guards, the
//! frozen process is the test's own `sleep`, a block device is only read (512 bytes), the
//! traced process is the test's own and detached at once, and the injected terminal input is
//! read by the test's shell as data, never run.
//!
//! The positive side: what must keep working under the default filter, on busybox and on the
//! Debian trees of `realtree.rs` (shared through `realtree::trees`), and the hardening flags
//! (`--preserve-fds`, `--seccomp`, `--sysctl`, `--mask`, `--ro`, `--read-only`, `--rlimit`,
//! `--no-tty`).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::session::{Caller, SESSION_TIMEOUT, Session};
use crate::support::{self, Bg, Out, TestDir, run_within};

// ---------------------------------------------------------------------------------------------
// The attack program and sessions that have it

/// `tests/escape/attack.c`, compiled once per test process; its directory is never removed by
/// this process (a later run's sweep of dead runs' directories removes it).
fn attack_bin() -> &'static Path {
    static BIN: OnceLock<(TestDir, PathBuf)> = OnceLock::new();
    &BIN.get_or_init(|| {
        let dir = TestDir::named("escape-attack");
        let bin = dir.join("attack");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/escape/attack.c");
        let out = run_within(
            Command::new("cc")
                .args(["-static", "-O2", "-Wall", "-o"])
                .arg(&bin)
                .arg(&src),
            Duration::from_secs(120),
        );
        assert!(
            out.status.success(),
            "compiling {} (gcc and libc6-dev: scripts/setup.sh)\n{}",
            src.display(),
            out.context()
        );
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        (dir, bin)
    })
    .1
}

/// `--bind ATTACK:/attack:ro` and then `flags`.
fn with_attack(flags: &[&str]) -> Vec<String> {
    let mut all = vec![
        "--bind".to_owned(),
        format!("{}:/attack:ro", attack_bin().display()),
    ];
    all.extend(flags.iter().map(|f| (*f).to_owned()));
    all
}

/// Runs `sh -c SCRIPT` in a session of `s` with `flags` and `/attack`.
#[track_caller]
fn attack(s: &Session, flags: &[&str], script: &str) -> Out {
    let flags = with_attack(flags);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    s.sh(&flags, &format!("{PRELUDE}\n{script}"))
}

/// Shell functions every attack script may use: `opts PATH` prints the options of the topmost
/// mount at PATH (empty when nothing is mounted there), and `seccomp=` the mode of the
/// session's command (0 none, 2 a filter).
const PRELUDE: &str = r#"opts() { awk -v p="$1" '$5 == p { o = $6 } END { print o }' /proc/self/mountinfo; }
echo "seccomp=$(awk '/^Seccomp:/ { print $2 }' /proc/self/status)""#;

/// Makes `NAME::root` and `NAME::user`, each running `fn NAME(Caller)` as that caller.
macro_rules! as_root_and_user {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn root() {
                let caller = require_caller!(root);
                super::$name(caller);
            }

            #[test]
            fn user() {
                let caller = require_caller!(user);
                super::$name(caller);
            }
        }
    )+};
}

/// Asserts that the attack's line `key=` is one of `want`.
#[track_caller]
fn expect_one_of(out: &Out, who: &Caller, key: &str, want: &[&str]) {
    let got = out.value(key);
    assert!(
        want.contains(&got),
        "as {}: {key}: expected one of {want:?}, got {got}\n{}",
        who.name(),
        out.context()
    );
}

/// Whether mount options (`ro,nosuid,...`) say read-only.
fn read_only(opts: &str) -> bool {
    opts.split(',').any(|o| o == "ro")
}

/// A name no other test, process or path on the machine carries.
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("ovlrun-escape-{what}-{}-{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Host guards: whatever an attack changed is put back, also when the test fails

/// A host file (a sysctl) whose content is written back on drop if it changed.
struct HostValue {
    path: PathBuf,
    old: String,
}

impl HostValue {
    fn new(path: impl Into<PathBuf>) -> HostValue {
        let path = path.into();
        let old = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read host {}: {e}", path.display()));
        HostValue { path, old }
    }

    /// Asserts that the host file still holds what it held.
    #[track_caller]
    fn assert_unchanged(&self, out: &Out) {
        let now = fs::read_to_string(&self.path).unwrap();
        assert_eq!(
            now,
            self.old,
            "the host's {} changed (the guard writes it back)\n{}",
            self.path.display(),
            out.context()
        );
    }
}

impl Drop for HostValue {
    fn drop(&mut self) {
        if fs::read_to_string(&self.path).is_ok_and(|now| now != self.old) {
            if let Err(e) = fs::write(&self.path, self.old.trim_end_matches('\n')) {
                eprintln!("warning: cannot restore {}: {e}", self.path.display());
            }
        }
    }
}

/// A host directory (a cgroup, a scratch dir) removed on drop if it exists.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        if self.0.exists() {
            // A cgroup goes with rmdir(2) only; a scratch dir may have files in it.
            let _ = fs::remove_dir(&self.0).or_else(|_| fs::remove_dir_all(&self.0));
        }
    }
}

/// A process of the test's own, killed and reaped on drop.
struct OwnChild(Child);

impl Drop for OwnChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// 1-3. /proc/sys and /proc/sysrq-trigger

/// A write of the host's own value to `/proc/sys/KEY` from inside: refused because
/// `/proc/sys` is read-only there (root: EROFS; the user's root is not host root, so its
/// write may stop at the permission check, EACCES, before the mount's), `/proc/sys` is a
/// read-only mount, and the host's value is unchanged.
fn proc_sys_write(caller: Caller, key: &str, value: Option<&str>) {
    let host = Path::new("/proc/sys").join(key);
    // A write-only sysctl (drop_caches) has no value to keep.
    let guard = value.is_none().then(|| HostValue::new(&host));
    let value = value.map_or_else(
        || {
            guard
                .as_ref()
                .unwrap()
                .old
                .trim_end_matches('\n')
                .to_owned()
        },
        str::to_owned,
    );
    let s = Session::new(caller);
    let out = attack(
        &s,
        &["--env", &format!("ESCAPE_VALUE={value}")],
        &format!(
            r#"/attack write /proc/sys/{key} "$ESCAPE_VALUE"
               echo "procsys=$(opts /proc/sys)""#
        ),
    );
    out.expect_ok();
    let refused: &[&str] = if s.caller.is_root() {
        &["EROFS"]
    } else {
        &["EROFS", "EACCES"]
    };
    expect_one_of(&out, &s.caller, "write", refused);
    assert!(
        read_only(out.value("procsys")),
        "as {}: /proc/sys must be a read-only mount inside\n{}",
        s.caller.name(),
        out.context()
    );
    if let Some(guard) = &guard {
        guard.assert_unchanged(&out);
    }
}

fn core_pattern_write(caller: Caller) {
    proc_sys_write(caller, "kernel/core_pattern", None);
}

fn printk_ratelimit_burst_write(caller: Caller) {
    proc_sys_write(caller, "kernel/printk_ratelimit_burst", None);
}

/// `1` drops clean page cache: harmless, only slower for a moment.
fn drop_caches_write(caller: Caller) {
    proc_sys_write(caller, "vm/drop_caches", Some("1"));
}

as_root_and_user!(
    core_pattern_write,
    printk_ratelimit_burst_write,
    drop_caches_write
);

/// runc's `readonlyPaths`: each one present inside is a read-only mount, and a write of `h` to
/// `/proc/sysrq-trigger` (where the kernel has one) is refused. `h` only prints the sysrq help
/// to the kernel log.
fn proc_read_only_paths_and_sysrq_trigger(caller: Caller) {
    let s = Session::new(caller);
    let paths = [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ];
    let out = attack(
        &s,
        &[],
        &format!(
            r#"for p in {}; do [ -e "$p" ] && echo "$p=$(opts "$p")"; done
               [ -e /proc/sysrq-trigger ] && /attack write /proc/sysrq-trigger h
               echo done"#,
            paths.join(" ")
        ),
    );
    out.expect_ok();
    for p in paths {
        if !Path::new(p).exists() {
            continue; // not in this kernel; runc skips those too
        }
        assert!(
            read_only(out.value(p)),
            "as {}: {p} must be a read-only mount inside\n{}",
            s.caller.name(),
            out.context()
        );
    }
    if Path::new("/proc/sysrq-trigger").exists() {
        let refused: &[&str] = if s.caller.is_root() {
            &["EROFS"]
        } else {
            &["EROFS", "EACCES"]
        };
        expect_one_of(&out, &s.caller, "write", refused);
    }
}

as_root_and_user!(proc_read_only_paths_and_sysrq_trigger);

// ---------------------------------------------------------------------------------------------
// 4-5. cgroups

/// The host's cgroup hierarchies to try a mkdir in: the v1 `pids` one and the v2 one
/// (`unified` on a hybrid layout, `/sys/fs/cgroup` itself on a pure v2 one).
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.to_owned()];
    }
    ["pids", "unified"]
        .iter()
        .map(|h| base.join(h))
        .filter(|p| p.is_dir())
        .collect()
}

/// mkdir of a new cgroup in the host's hierarchies from inside: refused (EROFS, /sys being
/// read-only down to its submounts; ENOENT where the session sees a cgroup tree of its own
/// without that hierarchy), and the host has no such cgroup.
fn cgroup_mkdir(caller: Caller) {
    let roots = cgroup_roots();
    require!(
        !roots.is_empty(),
        "find a cgroup hierarchy under /sys/fs/cgroup"
    );
    let name = unique("mkdir");
    let dirs: Vec<PathBuf> = roots.iter().map(|r| r.join(&name)).collect();
    let _guards: Vec<RemoveDir> = dirs.iter().cloned().map(RemoveDir).collect();
    let script: String = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            format!(
                "echo \"cg{i}=$(/attack mkdir {} | cut -d= -f2)\"\n",
                d.display()
            )
        })
        .collect();
    let s = Session::new(caller);
    let out = attack(&s, &[], &script);
    out.expect_ok();
    for (i, d) in dirs.iter().enumerate() {
        assert!(
            !d.exists(),
            "as {}: the session made the host cgroup {} (removed again)\n{}",
            s.caller.name(),
            d.display(),
            out.context()
        );
        expect_one_of(&out, &s.caller, &format!("cg{i}"), &["EROFS", "ENOENT"]);
    }
}

as_root_and_user!(cgroup_mkdir);

/// A freezer cgroup the test makes as host root, with a `sleep` of its own in it; on drop:
/// thawed, the sleep killed and reaped, the cgroup removed.
struct FreezerCgroup {
    dir: PathBuf,
    /// `freezer.state` (v1) or `cgroup.freeze` (v2).
    state_file: PathBuf,
    /// What the state file reads while thawed, and what freezes it.
    thawed: &'static str,
    frozen: &'static str,
    sleeper: Option<OwnChild>,
}

impl FreezerCgroup {
    fn new(name: &str) -> Option<FreezerCgroup> {
        let v1 = Path::new("/sys/fs/cgroup/freezer");
        let v2 = Path::new("/sys/fs/cgroup");
        let (dir, file, thawed, frozen) = if v1.is_dir() {
            (v1.join(name), "freezer.state", "THAWED", "FROZEN")
        } else if v2.join("cgroup.controllers").exists() {
            (v2.join(name), "cgroup.freeze", "0", "1")
        } else {
            return None;
        };
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let mut cg = FreezerCgroup {
            state_file: dir.join(file),
            dir,
            thawed,
            frozen,
            sleeper: None,
        };
        let child = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        cg.sleeper = Some(OwnChild(child));
        fs::write(cg.dir.join("cgroup.procs"), pid.to_string()).unwrap();
        assert_eq!(cg.state(), thawed, "a new cgroup is thawed");
        Some(cg)
    }

    fn state(&self) -> String {
        fs::read_to_string(&self.state_file)
            .unwrap()
            .trim()
            .to_owned()
    }
}

impl Drop for FreezerCgroup {
    fn drop(&mut self) {
        let _ = fs::write(&self.state_file, self.thawed);
        drop(self.sleeper.take());
        // The cgroup empties once the killed sleep is gone; rmdir says EBUSY until then.
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.dir).is_err() && self.dir.exists() {
            if Instant::now() > deadline {
                eprintln!("warning: cannot remove cgroup {}", self.dir.display());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A write of FROZEN to the state file of the test's own freezer cgroup from inside: refused
/// (root: EROFS; the user's root is not host root, so its write may stop at the permission
/// check, EACCES, before the mount's; ENOENT where the session sees a cgroup tree of its
/// own), the hierarchy is a read-only mount inside (unless absent), and the host cgroup stays
/// thawed.
fn cgroup_freeze(caller: Caller) {
    let cg = FreezerCgroup::new(&unique("freeze"));
    require!(cg.is_some(), "find a freezer under /sys/fs/cgroup");
    let cg = cg.unwrap();
    let hierarchy = cg.dir.parent().unwrap();
    let s = Session::new(caller);
    let out = attack(
        &s,
        &[],
        &format!(
            "/attack write {} {}\necho \"hierarchy=$(opts {})\"",
            cg.state_file.display(),
            cg.frozen,
            hierarchy.display()
        ),
    );
    out.expect_ok();
    assert_eq!(
        cg.state(),
        cg.thawed,
        "as {}: the session froze the host cgroup {} (thawed again)\n{}",
        s.caller.name(),
        cg.dir.display(),
        out.context()
    );
    let refused: &[&str] = if s.caller.is_root() {
        &["EROFS", "ENOENT"]
    } else {
        &["EROFS", "ENOENT", "EACCES"]
    };
    expect_one_of(&out, &s.caller, "write", refused);
    assert!(
        out.value("write") == "ENOENT" || read_only(out.value("hierarchy")),
        "as {}: the host's {} must be a read-only mount inside\n{}",
        s.caller.name(),
        hierarchy.display(),
        out.context()
    );
}

as_root_and_user!(cgroup_freeze);

/// `/sys` is read-only down to its last submount (the host's cgroup hierarchies are
/// submounts of a `--net host` session's `/sys`), and the session has its own cgroup
/// namespace.
fn sys_read_only_everywhere_and_own_cgroup_namespace(caller: Caller) {
    let s = Session::new(caller);
    let out = attack(
        &s,
        &[],
        r#"awk '$5 == "/sys" || index($5, "/sys/") == 1 { print "mount " $5 " " $6 }' /proc/self/mountinfo
           echo "cgroupns=$(readlink /proc/self/ns/cgroup)""#,
    );
    out.expect_ok();
    let writable: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("mount "))
        .filter(|l| !read_only(l.rsplit(' ').next().unwrap_or("")))
        .collect();
    assert!(
        writable.is_empty(),
        "as {}: writable mounts under /sys: {writable:?}\n{}",
        s.caller.name(),
        out.context()
    );
    let host = fs::read_link("/proc/self/ns/cgroup").unwrap();
    assert_ne!(
        out.value("cgroupns"),
        host.to_string_lossy(),
        "as {}: the session shares the host's cgroup namespace\n{}",
        s.caller.name(),
        out.context()
    );
}

as_root_and_user!(sys_read_only_everywhere_and_own_cgroup_namespace);

// ---------------------------------------------------------------------------------------------
// 6. System calls the default filter refuses

/// `/attack NAME` inside: EPERM from the seccomp filter (`Seccomp: 2`; several of these the
/// kernel refuses already without a filter, hence the mode check).
fn syscall_refused(caller: Caller, name: &str) {
    let s = Session::new(caller);
    let out = attack(&s, &[], &format!("/attack {name}"));
    out.expect_ok();
    expect_one_of(&out, &s.caller, name, &["EPERM"]);
    assert_eq!(
        out.value("seccomp"),
        "2",
        "as {}: the command must run under a seccomp filter\n{}",
        s.caller.name(),
        out.context()
    );
}

fn init_module_refused(caller: Caller) {
    syscall_refused(caller, "init_module");
}

fn kexec_load_refused(caller: Caller) {
    syscall_refused(caller, "kexec_load");
}

fn open_by_handle_at_refused(caller: Caller) {
    syscall_refused(caller, "open_by_handle_at");
}

fn keyctl_refused(caller: Caller) {
    syscall_refused(caller, "keyctl");
}

fn bpf_refused(caller: Caller) {
    syscall_refused(caller, "bpf");
}

fn perf_event_open_refused(caller: Caller) {
    syscall_refused(caller, "perf_event_open");
}

as_root_and_user!(
    init_module_refused,
    kexec_load_refused,
    open_by_handle_at_refused,
    keyctl_refused,
    bpf_refused,
    perf_event_open_refused,
);

// ---------------------------------------------------------------------------------------------
// 7. Masked paths

/// runc's `maskedPaths`, and the host's power controls.
const MASKED: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Each masked path the host has shows nothing inside: a file reads 0 bytes (or cannot be
/// read: runc binds /dev/null over it), a directory lists empty (an empty read-only tmpfs).
fn masked_paths_show_nothing(caller: Caller) {
    let present: Vec<&str> = MASKED
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect();
    let s = Session::new(caller);
    let out = attack(
        &s,
        &[],
        &format!(
            r#"for p in {}; do
                   if [ -d "$p" ]; then echo "$p=dir $(ls -A "$p" 2>/dev/null | wc -l)"
                   elif [ -e "$p" ]; then echo "$p=file $(head -c 4096 "$p" 2>/dev/null | wc -c)"
                   else echo "$p=absent"; fi
               done"#,
            present.join(" ")
        ),
    );
    out.expect_ok();
    let shown: Vec<String> = present
        .iter()
        .filter(|p| {
            let v = out.value(p);
            v != "absent" && !v.ends_with(" 0")
        })
        .map(|p| format!("{p}: {}", out.value(p)))
        .collect();
    assert!(
        shown.is_empty(),
        "as {}: masked paths show content inside: {shown:?}\n{}",
        s.caller.name(),
        out.context()
    );
}

as_root_and_user!(masked_paths_show_nothing);

// ---------------------------------------------------------------------------------------------
// 8. TIOCSTI into the caller's terminal

/// Runs `bash OUTER` on a new pty (util-linux `script`) as the caller, with stdin kept open
/// (at EOF `script` would end the pty's input), until a line `DONE` or the time limit.
/// Returns the lines, `\r` trimmed.
fn on_a_pty(s: &Session, outer: &Path) -> Vec<String> {
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &format!("bash {}", outer.display()), "/dev/null"]);
    s.caller.apply(&mut cmd, &s.home);
    support::pty::on_a_pty(cmd, |_, _| {})
}

/// Inside, `/attack tiocsti` pushes `echo INJECTED > MARKER` and a newline into its stdin, a
/// terminal; after ovlrun exits, the caller's shell reads a line from its terminal for one
/// second. Nothing may arrive (the session has a pty of its own, or a session of its own and
/// a filter refusing TIOCSTI), and the marker is never written.
fn tiocsti_into_the_callers_terminal(s: &Session, flags: &[&str]) {
    require!(
        Command::new("script").arg("--version").output().is_ok(),
        "run util-linux's script (a pty for the test)"
    );
    let marker = s.dir.join("injected-marker");
    let outer = s.dir.join("outer.sh");
    let flags = with_attack(flags).join(" ");
    support::write(
        &outer,
        format!(
            "export OVLRUN_STATE={state}\n\
             {bin} {flags} --rootfs {rootfs} -- /attack tiocsti $'echo INJECTED > {marker}\\n'\n\
             echo \"EXIT=$?\"\n\
             if read -r -t 1 line; then echo \"GOT=$line\"; else echo GOT-NOTHING; fi\n\
             echo DONE\n",
            state = s.state.display(),
            bin = support::ovlrun_bin(),
            rootfs = s.rootfs.display(),
            marker = marker.display(),
        ),
    );
    let lines = on_a_pty(s, &outer);
    let text = lines.join("\n");
    let who = s.caller.name();
    assert!(
        lines.iter().any(|l| l.contains("tiocsti=")),
        "as {who}: the attack did not run in the session:\n{text}"
    );
    assert!(
        lines.iter().any(|l| l == "EXIT=0"),
        "as {who}: ovlrun did not exit 0:\n{text}"
    );
    assert!(
        lines.iter().any(|l| l == "GOT-NOTHING"),
        "as {who}: input injected by the session reached the caller's shell:\n{text}"
    );
    assert!(
        !marker.exists(),
        "as {who}: the injected command ran on the host"
    );
}

fn tiocsti_default(caller: Caller) {
    tiocsti_into_the_callers_terminal(&Session::new(caller), &[]);
}

fn tiocsti_no_tty(caller: Caller) {
    tiocsti_into_the_callers_terminal(&Session::new(caller), &["--no-tty"]);
}

as_root_and_user!(tiocsti_default, tiocsti_no_tty);

// ---------------------------------------------------------------------------------------------
// 9. Inherited fds

/// Pids of processes in another pid namespace than ours (so: inside a session) whose
/// environment carries `marker`, each with the fds among them that name `target`.
fn session_fds_naming(marker: &str, target: &Path) -> Vec<String> {
    let ours = fs::read_link("/proc/self/ns/pid").unwrap();
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let environ = fs::read(e.path().join("environ")).unwrap_or_default();
        if !environ
            .windows(marker.len())
            .any(|w| w == marker.as_bytes())
        {
            continue;
        }
        if fs::read_link(e.path().join("ns/pid")).is_ok_and(|ns| ns == ours) {
            continue; // the launcher (outside) or the test's shell
        }
        let Ok(fds) = fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|l| l == target) {
                found.push(format!("pid {pid} fd {}", fd.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// ovlrun started with fd 5 open on a host directory (`exec 5<DIR`): inside, the command
/// has only 0, 1, 2 (ls's listing shows its own directory fd as 3), the directory's secret
/// is not readable through /proc/self/fd/5, and no process of the session (pid 1
/// included), looked at from the host, holds the directory.
fn inherited_fd_is_closed(caller: Caller) {
    let s = Session::new(caller);
    let host = s.dir.mkdir("host-dir");
    support::write(host.join("secret"), "host-secret\n");
    let go = s.dir.mkdir("go");
    let marker = unique("fd");
    let inside = r#"if cat /proc/self/fd/5/secret >/dev/null 2>&1; then echo secret=read; else echo secret=refused; fi
           echo "fds=$(ls /proc/self/fd | sort -n | tr '\n' ' ')"
           echo "init_fds=$(ls /proc/1/fd 2>&1 | sort -n | tr '\n' ' ')"
           echo ready
           while [ ! -e /go/go ]; do sleep 0.05; done"#;
    let bind = format!("{}:/go:ro", go.display());
    let mut cmd = Command::new("sh");
    s.caller.apply(&mut cmd, &s.home);
    cmd.args(["-c", "exec 5<\"$1\"; shift; exec \"$@\"", "sh"])
        .arg(&host)
        .arg(support::ovlrun_bin())
        .env("OVLRUN_STATE", &s.state)
        .env("OVLRUN_ESCAPE_MARKER", &marker)
        .args(["--bind", &bind, "--rootfs"])
        .arg(&s.rootfs)
        .args(["--", "/bin/sh", "-c", inside]);
    let mut bg = Bg::spawn(&mut cmd, SESSION_TIMEOUT);
    bg.wait_line("ready");
    let holders = session_fds_naming(&marker, &host);
    support::write(go.join("go"), "");
    let out = bg.wait();
    out.expect_ok();
    let mut problems = Vec::new();
    if out.value("secret") != "refused" {
        problems.push("the host directory's secret was read through the inherited fd".to_owned());
    }
    if out.value("fds").trim() != "0 1 2 3" {
        problems.push(format!(
            "the command has fds {} (want 0 1 2, and 3 is ls's own)",
            out.value("fds").trim()
        ));
    }
    if !holders.is_empty() {
        problems.push(format!(
            "session processes hold the host directory: {holders:?}"
        ));
    }
    assert!(
        problems.is_empty(),
        "as {}: {}\n{}",
        s.caller.name(),
        problems.join("; "),
        out.context()
    );
}

/// `--preserve-fds 1` passes fd 3 (a file the caller's shell opened) and nothing else: fd 5
/// (a host directory) is closed.
fn preserve_fds_passes_only_those(caller: Caller) {
    let s = Session::new(caller);
    let file = s.dir.join("passed");
    support::write(&file, "passed-content\n");
    let host = s.dir.mkdir("host-dir");
    support::write(host.join("secret"), "host-secret\n");
    let mut cmd = Command::new("sh");
    s.caller.apply(&mut cmd, &s.home);
    cmd.args(["-c", "exec 3<\"$1\" 5<\"$2\"; shift 2; exec \"$@\"", "sh"])
        .arg(&file)
        .arg(&host)
        .arg(support::ovlrun_bin())
        .env("OVLRUN_STATE", &s.state)
        .args(["--preserve-fds", "1", "--rootfs"])
        .arg(&s.rootfs)
        .args([
            "--",
            "/bin/sh",
            "-c",
            r#"echo "fd3=$(cat <&3)"
               if cat /proc/self/fd/5/secret >/dev/null 2>&1; then echo secret=read; else echo secret=refused; fi
               echo "fds=$(ls /proc/self/fd | sort -n | tr '\n' ' ')""#,
        ]);
    let out = run_within(&mut cmd, SESSION_TIMEOUT);
    out.expect_ok();
    let who = s.caller.name();
    assert_eq!(
        out.value("fd3"),
        "passed-content",
        "as {who}: fd 3\n{}",
        out.context()
    );
    assert_eq!(
        out.value("secret"),
        "refused",
        "as {who}: fd 5 was passed too\n{}",
        out.context()
    );
    assert_eq!(
        out.value("fds").trim(),
        "0 1 2 3 4",
        "as {who}: the command must have fds 0-3 (4 is ls's own)\n{}",
        out.context()
    );
}

as_root_and_user!(inherited_fd_is_closed, preserve_fds_passes_only_those);

// ---------------------------------------------------------------------------------------------
// 10. Device nodes

/// A host block device host root can open for reading, as (name, major, minor): the root
/// filesystem's where it is one, else a real disk, else a loop or zram device.
fn host_block_device() -> Option<(String, u32, u32)> {
    let root_dev = fs::metadata("/").ok()?.dev();
    let mut names: Vec<String> = fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let rank = |n: &String| {
        let dev = fs::read_to_string(format!("/sys/block/{n}/dev")).unwrap_or_default();
        let is_root = dev.trim()
            == format!(
                "{}:{}",
                nix::sys::stat::major(root_dev),
                nix::sys::stat::minor(root_dev)
            );
        let virtual_dev = ["loop", "zram", "ram"].iter().any(|p| n.starts_with(p));
        (!is_root, virtual_dev, n.clone())
    };
    names.sort_by_key(rank);
    names.into_iter().find_map(|n| {
        let dev = fs::read_to_string(format!("/sys/block/{n}/dev")).ok()?;
        let (major, minor) = dev.trim().split_once(':')?;
        let (major, minor): (u32, u32) = (major.parse().ok()?, minor.parse().ok()?);
        let node = Path::new("/dev").join(&n);
        let meta = fs::metadata(&node).ok()?;
        let same = meta.file_type().is_block_device()
            && nix::sys::stat::major(meta.rdev()) == u64::from(major)
            && nix::sys::stat::minor(meta.rdev()) == u64::from(minor);
        (same && fs::File::open(&node).is_ok()).then_some((n, major, minor))
    })
}

/// mknod of a host block device in the overlay root, /tmp and /dev inside, then a 512-byte
/// read of it: mknod refused (EPERM), or the node cannot be opened (EACCES on a nodev mount,
/// EPERM). Only ever read.
fn mknod_block_device(caller: Caller, flags: &[&str]) {
    let dev = host_block_device();
    require!(dev.is_some(), "find a host block device root can open");
    let (name, major, minor) = dev.unwrap();
    let s = Session::new(caller);
    let out = attack(
        &s,
        flags,
        &format!(
            r#"for d in root:/ tmp:/tmp/ dev:/dev/; do
                   n="${{d#*:}}escape-blk"
                   echo "mknod_${{d%%:*}}=$(/attack mknod "$n" {major} {minor} | cut -d= -f2)"
                   echo "read_${{d%%:*}}=$(/attack read "$n" 512 | head -n 1 | cut -d= -f2)"
               done"#
        ),
    );
    out.expect_ok();
    for place in ["root", "tmp", "dev"] {
        let (mknod, read) = (
            out.value(&format!("mknod_{place}")),
            out.value(&format!("read_{place}")),
        );
        let refused = match mknod {
            "OK" => ["EACCES", "EPERM"].contains(&read),
            _ => mknod == "EPERM",
        };
        assert!(
            refused,
            "as {} with {flags:?}: host block device {name} ({major}:{minor}) in {place}: \
             mknod {mknod}, read {read}; expected mknod EPERM, or a refused open\n{}",
            s.caller.name(),
            out.context()
        );
    }
}

fn mknod_of_a_host_block_device(caller: Caller) {
    mknod_block_device(caller, &[]);
}

as_root_and_user!(mknod_of_a_host_block_device);

/// As root with `--no-userns`: the session is in the host's user namespace with CAP_MKNOD.
#[test]
fn mknod_of_a_host_block_device_without_userns() {
    let caller = require_caller!(root);
    mknod_block_device(caller, &["--no-userns"]);
}

// ---------------------------------------------------------------------------------------------
// 11. ptrace

/// PTRACE_ATTACH from inside to the pid of a host process the test started: ESRCH (not in the
/// session's pid namespace) or EPERM; the host process is not traced.
fn ptrace_of_a_host_process(caller: Caller) {
    let sleeper = OwnChild(
        Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = sleeper.0.id();
    let s = Session::new(caller);
    let out = attack(&s, &[], &format!("/attack ptrace {pid}"));
    out.expect_ok();
    expect_one_of(&out, &s.caller, "ptrace", &["ESRCH", "EPERM"]);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l == "TracerPid:\t0"),
        "as {}: the host process {pid} is traced:\n{status}\n{}",
        s.caller.name(),
        out.context()
    );
}

as_root_and_user!(ptrace_of_a_host_process);

// ---------------------------------------------------------------------------------------------
// 12. A bind whose destination is a symlink to a host path

/// The rootfs has `/escape-link -> HOST_DIR` (absolute, a host directory the caller may
/// write), and the session binds a directory onto `/escape-link`. Either the launcher refuses
/// (125, naming /escape-link) or the link resolves inside the session's root; the host
/// directory gets no mount and nothing the session writes through the link. Tried with a
/// directory under the test's own and one under the host's /tmp (a tmpfs inside).
fn bind_onto_a_symlink_to_a_host_dir(caller: Caller) {
    let s = Session::new(caller);
    let src = s.dir.mkdir("bind-src");
    s.give(&src);
    let tmp_target = PathBuf::from("/tmp").join(unique("link-target"));
    let _tmp_guard = RemoveDir(tmp_target.clone());
    for target in [s.dir.join("host-target"), tmp_target.clone()] {
        fs::create_dir(&target).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
        s.give(&target);
        let link = s.rootfs.join("escape-link");
        let _ = fs::remove_file(&link);
        support::symlink(&target, &link);
        let bind = format!("{}:/escape-link", src.display());
        let out = s.sh(
            &["--bind", &bind],
            "echo through-link > /escape-link/written; ls -A /escape-link; echo ran",
        );
        let who = s.caller.name();
        match out.code() {
            0 => assert!(out.stdout.ends_with("ran\n"), "{}", out.context()),
            125 => assert!(
                out.stderr.contains("/escape-link"),
                "as {who}: a refusal must name /escape-link\n{}",
                out.context()
            ),
            _ => panic!(
                "as {who}: expected the session to run or a refusal (125)\n{}",
                out.context()
            ),
        }
        let left = support::ls(&target);
        assert!(
            left.is_empty(),
            "as {who}: the host directory {} got {left:?} through the link\n{}",
            target.display(),
            out.context()
        );
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let target_str = target.to_string_lossy();
        assert!(
            !mountinfo
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(&*target_str)),
            "as {who}: a mount on the host at {}\n{}",
            target.display(),
            out.context()
        );
    }
}

as_root_and_user!(bind_onto_a_symlink_to_a_host_dir);

// ---------------------------------------------------------------------------------------------
// 13. What keeps working under the default filter (busybox)

/// A nested user namespace, ps, the mount listing, and (with CAP_SYS_ADMIN asked for) setting
/// the hostname, all under the default filter.
fn ordinary_tools_work_under_the_default_filter(caller: Caller) {
    let s = Session::new(caller);
    let out = attack(
        &s,
        &[],
        r#"unshare -U true && echo unshare=ok
           unshare -Ur id -u | sed 's/^/unshare_r=/'
           ps -o pid,comm >/dev/null && echo ps=ok
           mount | grep -q ' on / ' && echo mount=ok"#,
    );
    out.expect_ok();
    for (key, want) in [
        ("unshare", "ok"),
        ("unshare_r", "0"),
        ("ps", "ok"),
        ("mount", "ok"),
        ("seccomp", "2"),
    ] {
        expect_one_of(&out, &s.caller, key, &[want]);
    }
    let out = attack(
        &s,
        &["--cap-add", "SYS_ADMIN"],
        "hostname escape-test-x && echo \"hostname=$(hostname)\"",
    );
    out.expect_ok();
    expect_one_of(&out, &s.caller, "hostname", &["escape-test-x"]);
    expect_one_of(&out, &s.caller, "seccomp", &["2"]);
}

as_root_and_user!(ordinary_tools_work_under_the_default_filter);

/// `--net none --sysctl net.ipv4.ip_forward=V` (V the opposite of the host's): the session
/// reads V, the host keeps its value.
fn sysctl_flag_sets_a_namespaced_sysctl(caller: Caller) {
    let host = HostValue::new("/proc/sys/net/ipv4/ip_forward");
    let want = if host.old.trim() == "1" { "0" } else { "1" };
    let s = Session::new(caller);
    let out = s.sh(
        &[
            "--net",
            "none",
            "--sysctl",
            &format!("net.ipv4.ip_forward={want}"),
        ],
        "echo \"fwd=$(cat /proc/sys/net/ipv4/ip_forward)\"",
    );
    out.expect_ok();
    assert_eq!(
        out.value("fwd"),
        want,
        "as {}\n{}",
        s.caller.name(),
        out.context()
    );
    host.assert_unchanged(&out);
}

/// `--sysctl kernel.core_pattern=x` (not namespaced: it would change the host) is refused
/// with one line naming the key, exit 125; the host's value is unchanged.
fn sysctl_flag_refuses_a_host_sysctl(caller: Caller) {
    let host = HostValue::new("/proc/sys/kernel/core_pattern");
    let s = Session::new(caller);
    let out = s.sh(&["--sysctl", "kernel.core_pattern=x"], "echo ran");
    out.expect_own_error(&["kernel.core_pattern"]);
    assert_eq!(
        out.stderr.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "as {}: a one-line error\n{}",
        s.caller.name(),
        out.context()
    );
    host.assert_unchanged(&out);
}

as_root_and_user!(
    sysctl_flag_sets_a_namespaced_sysctl,
    sysctl_flag_refuses_a_host_sysctl
);

// ---------------------------------------------------------------------------------------------
// The hardening flags

/// `--mask /etc/secret`: the file reads empty inside; the rootfs keeps it.
fn mask_flag_hides_a_file(caller: Caller) {
    let s = Session::new(caller);
    let secret = s.rootfs.join("etc/secret");
    support::write(&secret, "top-secret\n");
    let out = s.sh(
        &["--mask", "/etc/secret"],
        "echo \"bytes=$(cat /etc/secret 2>/dev/null | wc -c)\"",
    );
    out.expect_ok();
    assert_eq!(
        out.value("bytes"),
        "0",
        "as {}: /etc/secret must read empty\n{}",
        s.caller.name(),
        out.context()
    );
    assert_eq!(support::read_string(&secret), "top-secret\n");
}

/// `--ro /etc`: mkdir and a new file under /etc give EROFS; the rest of the root stays
/// writable.
fn ro_flag_makes_a_path_read_only(caller: Caller) {
    let s = Session::new(caller);
    let out = attack(
        &s,
        &["--ro", "/etc"],
        r#"echo "etc_mkdir=$(/attack mkdir /etc/escape-dir | cut -d= -f2)"
           msg=$( (echo x > /etc/escape-file) 2>&1 ) && echo etc_create=OK
           case "$msg" in *Read-only*) echo etc_create=EROFS ;; ?*) echo "etc_create=$msg" ;; esac
           echo "top_mkdir=$(/attack mkdir /escape-dir | cut -d= -f2)""#,
    );
    out.expect_ok();
    let who = &s.caller;
    expect_one_of(&out, who, "etc_mkdir", &["EROFS"]);
    expect_one_of(&out, who, "etc_create", &["EROFS"]);
    expect_one_of(&out, who, "top_mkdir", &["OK"]);
}

/// `--read-only`: EROFS writing /etc; /tmp (a tmpfs) still writable.
fn read_only_flag_makes_the_root_read_only(caller: Caller) {
    let s = Session::new(caller);
    let out = attack(
        &s,
        &["--read-only"],
        r#"echo "etc_mkdir=$(/attack mkdir /etc/x | cut -d= -f2)"
           echo t > /tmp/t && echo "tmp=$(cat /tmp/t)""#,
    );
    out.expect_ok();
    expect_one_of(&out, &s.caller, "etc_mkdir", &["EROFS"]);
    expect_one_of(&out, &s.caller, "tmp", &["t"]);
}

/// `--rlimit nofile=64:64`: `ulimit -n` (soft) and `ulimit -Hn` (hard) print 64 inside.
fn rlimit_flag_sets_a_limit(caller: Caller) {
    let s = Session::new(caller);
    let out = s.sh(
        &["--rlimit", "nofile=64:64"],
        "echo \"soft=$(ulimit -n)\"; echo \"hard=$(ulimit -Hn)\"",
    );
    out.expect_ok();
    expect_one_of(&out, &s.caller, "soft", &["64"]);
    expect_one_of(&out, &s.caller, "hard", &["64"]);
}

/// `--seccomp unconfined`: no filter inside.
fn seccomp_unconfined_flag_has_no_filter(caller: Caller) {
    let s = Session::new(caller);
    let out = attack(&s, &["--seccomp", "unconfined"], "echo ran");
    out.expect_ok();
    expect_one_of(&out, &s.caller, "seccomp", &["0"]);
}

/// An OCI profile that allows everything but mkdir, refused with EACCES.
const MKDIR_EACCES_PROFILE: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [
    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
  ]
}"#;

/// `--seccomp FILE`: the profile replaces the default filter. mkdir fails with "Permission
/// denied" (root could make /tmp/d otherwise), and keyctl, which the default refuses with
/// EPERM, reaches the kernel.
fn seccomp_file_flag_applies_the_profile(caller: Caller) {
    let s = Session::new(caller);
    let profile = s.home.join("mkdir-eacces.json");
    support::write(&profile, MKDIR_EACCES_PROFILE);
    s.give(&profile);
    let out = attack(
        &s,
        &["--seccomp", profile.to_str().unwrap()],
        r#"msg=$(mkdir /tmp/d 2>&1) && echo mkdir=OK
           case "$msg" in *"Permission denied"*) echo mkdir=EACCES ;; ?*) echo "mkdir=$msg" ;; esac
           touch /tmp/f && echo touch=OK
           /attack keyctl"#,
    );
    out.expect_ok();
    let who = &s.caller;
    expect_one_of(&out, who, "seccomp", &["2"]);
    expect_one_of(&out, who, "mkdir", &["EACCES"]);
    expect_one_of(&out, who, "touch", &["OK"]);
    assert_ne!(
        out.value("keyctl"),
        "EPERM",
        "as {}: the default filter is still there\n{}",
        who.name(),
        out.context()
    );
}

/// `--seccomp FILE` with an unknown action: one line naming the file and the field, exit
/// 125, and no session state made.
fn seccomp_file_flag_refuses_a_bad_profile(caller: Caller) {
    let s = Session::new(caller);
    let profile = s.home.join("prof.json");
    support::write(
        &profile,
        MKDIR_EACCES_PROFILE.replace("SCMP_ACT_ERRNO", "SCMP_ACT_FOO"),
    );
    s.give(&profile);
    let out = s.sh(&["--seccomp", profile.to_str().unwrap()], "echo ran");
    out.expect_own_error(&[&format!(
        "--seccomp {}: syscalls[0].action: unknown action SCMP_ACT_FOO",
        profile.display()
    )]);
    assert_eq!(
        out.stderr.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "as {}: a one-line error\n{}",
        s.caller.name(),
        out.context()
    );
    assert!(!s.state.exists(), "{} was created", s.state.display());
}

as_root_and_user!(
    mask_flag_hides_a_file,
    ro_flag_makes_a_path_read_only,
    read_only_flag_makes_the_root_read_only,
    rlimit_flag_sets_a_limit,
    seccomp_unconfined_flag_has_no_filter,
    seccomp_file_flag_applies_the_profile,
    seccomp_file_flag_refuses_a_bad_profile,
);

// ---------------------------------------------------------------------------------------------
// 14. What keeps working under the default filter (Debian)

/// Builds a local package with dpkg-deb and installs it with apt-get (no network), lists it
/// with dpkg, runs `unshare -Ur id -u`, and with `gcc` compiles and runs a hello world.
fn debian_script(gcc: bool) -> String {
    let mut script = String::from(
        r#"set -e
echo "seccomp=$(awk '/^Seccomp:/ { print $2 }' /proc/self/status)"
mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/share/ovlrun-escape
printf 'Package: ovlrun-escape-test\nVersion: 1.0\nArchitecture: all\nMaintainer: ovlrun tests <tests@ovlrun.invalid>\nDescription: a local package for the escape tests\n' > /tmp/pkg/DEBIAN/control
echo hello > /tmp/pkg/usr/share/ovlrun-escape/hello
dpkg-deb --build /tmp/pkg /tmp/ovlrun-escape-test.deb >/dev/null
apt-get install -y -q /tmp/ovlrun-escape-test.deb
echo "status=$(dpkg-query -W -f '${Status}' ovlrun-escape-test)"
echo "listed=$(dpkg -l ovlrun-escape-test | grep -c '^ii')"
echo "unshare=$(unshare -Ur id -u)"
"#,
    );
    if gcc {
        script.push_str(
            r#"printf '#include <stdio.h>\nint main(void) { puts("hello from gcc"); return 0; }\n' > /tmp/hello.c
gcc -o /tmp/hello /tmp/hello.c
echo "hello=$(/tmp/hello)"
"#,
        );
    }
    script
}

/// The environment of the Debian sessions (a clean one, as a login would have).
const DEBIAN_ENV: &[&str] = &[
    "--clear-env",
    "--env",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "--env",
    "DEBIAN_FRONTEND=noninteractive",
    "--env",
    "LC_ALL=C",
];

fn debian_tools_work(tree: &Path, caller: Caller, gcc: bool) {
    // Over the cached tree itself: the default policy discards the session's changes.
    let s = Session::over(tree, caller);
    let start = Instant::now();
    let out = s.sh(DEBIAN_ENV, &debian_script(gcc));
    eprintln!(
        "escape: Debian session as {} took {:.1} s",
        s.caller.name(),
        start.elapsed().as_secs_f64()
    );
    out.expect_ok();
    let who = &s.caller;
    expect_one_of(&out, who, "status", &["install ok installed"]);
    expect_one_of(&out, who, "listed", &["1"]);
    expect_one_of(&out, who, "unshare", &["0"]);
    if gcc {
        expect_one_of(&out, who, "hello", &["hello from gcc"]);
    }
    expect_one_of(&out, who, "seccomp", &["2"]);
    assert!(
        !tree
            .join("var/lib/dpkg/info/ovlrun-escape-test.list")
            .exists(),
        "the session's install reached the cached tree {}",
        tree.display()
    );
}

/// Skips (locally) or fails (under `CI`) without the Debian trees; evaluates to them.
macro_rules! require_debian {
    () => {{
        require!(
            support::can_mount_fuse(),
            "launch sessions (needs root and /dev/fuse)"
        );
        if let Err(e) = crate::realtree::trees() {
            eprintln!("scripts/mkdebian.sh failed:\n{e}");
        }
        require!(
            crate::realtree::trees().is_ok(),
            "build the Debian trees with scripts/mkdebian.sh (needs the Debian mirror)"
        );
        crate::realtree::trees().unwrap()
    }};
}

#[test]
fn debian_tools_work_under_the_default_filter_as_root() {
    let trees = require_debian!();
    debian_tools_work(&trees.build, Caller::Root, true);
}

/// Over the minbase tree owned by the user's ids (no gcc in it).
#[test]
fn debian_tools_work_under_the_default_filter_as_user() {
    let trees = require_debian!();
    let caller = require_caller!(user);
    require!(
        trees.user.is_some(),
        "find the Debian tree made for ovlrun-test (scripts/mkdebian.sh --user)"
    );
    debian_tools_work(trees.user.as_ref().unwrap(), caller, false);
}

// ---------------------------------------------------------------------------------------------
// 15. The tree's own files

/// A tree whose `/etc/hostname` is a symlink to a host file (absolute, or climbing out with
/// `..`): the session's hostname is the default, never the host file's first line, which a
/// root caller could otherwise read into the session.
#[test]
fn a_hostname_symlink_out_of_the_tree_is_not_followed() {
    let caller = require_caller!(root);
    let s = Session::new(caller);
    let secret = s.dir.join("host-secret");
    support::write(&secret, "host-secret-line\n");
    let link = s.rootfs.join("etc/hostname");
    let climb = format!("../../../../../../../..{}", secret.display());
    for target in [secret.display().to_string(), climb] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let out = s.sh(&[], "hostname");
        out.expect_ok();
        assert_eq!(
            out.stdout.trim(),
            "ovlrun",
            "/etc/hostname -> {target}: the session took its hostname through the link\n{}",
            out.context()
        );
    }
}
