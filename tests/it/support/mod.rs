//! Test support: a directory per test, `require!`, a private mount namespace per test thread,
//! mount guards for `ovlrun mount` and the kernel overlayfs, tree snapshots for comparing merged
//! views, fs helpers that panic with the path, the operation and the errno, and (in `process`)
//! processes run under a time limit: [`Out`], [`Bg`], [`run_within`].
//!
//! Mount hygiene, in two layers: every mounting test first calls [`private_mount_ns`], so its
//! mounts live in a mount namespace owned by the test thread (and by the processes it spawns,
//! which get `PR_SET_PDEATHSIG`), and the guards unmount on drop. A panic unwinds through the
//! guards; a killed test process takes the namespace (and thus the mounts) with it.

#![allow(dead_code)] // not every module uses every helper

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::hash::{DefaultHasher, Hasher};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::Pid;

/// Skips the test locally (with a message) when `$ok` is false, but fails it when `CI` is set:
/// CI has root, `/dev/fuse` and the kernel overlayfs, so a skip there hides a broken test.
macro_rules! require {
    ($ok:expr, $what:literal) => {
        if !$ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to {}",
                $what
            );
            eprintln!("skipped: cannot {}", $what);
            return;
        }
    };
}

/// Skips (locally) or fails (under `CI`) a test that cannot launch sessions over
/// `examples/rootfs` as root here.
macro_rules! require_launcher {
    () => {
        require!(
            $crate::support::example_rootfs()
                .join("bin/busybox")
                .is_file(),
            "find examples/rootfs/bin/busybox (run scripts/mkrootfs.sh)"
        );
        require!(
            $crate::support::can_mount_fuse(),
            "launch sessions (needs root and /dev/fuse)"
        );
    };
}

mod process;
pub mod pty;
#[macro_use]
pub mod runtime;
#[macro_use]
pub mod session;

pub use process::{Bg, EXIT_OWN_ERROR, Out, run_limited, run_with_input, run_within, tail};

/// How long a mount may take to appear, or an `ovlrun` to exit after SIGTERM / unmount.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Context-carrying failures

/// Unwraps a result, or panics naming the operation, the path and the errno.
pub trait OrPanic<T> {
    fn or_panic(self, op: &str, path: impl AsRef<Path>) -> T;
}

impl<T> OrPanic<T> for io::Result<T> {
    #[track_caller]
    fn or_panic(self, op: &str, path: impl AsRef<Path>) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!(
                "{op} {}: {e} (errno {:?})",
                path.as_ref().display(),
                errno_of(&e)
            ),
        }
    }
}

impl<T> OrPanic<T> for nix::Result<T> {
    #[track_caller]
    fn or_panic(self, op: &str, path: impl AsRef<Path>) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("{op} {}: {} ({e:?})", path.as_ref().display(), e.desc()),
        }
    }
}

/// The errno inside an `io::Error` (EIO when it carries none, which a syscall never does).
pub fn errno_of(e: &io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// `io::Result` → `Result<T, Errno>`, so results compare with `==` and print as `ENOENT`.
pub fn errno<T>(r: io::Result<T>) -> Result<T, Errno> {
    r.map_err(|e| errno_of(&e))
}

/// Asserts that `r` failed with exactly `want`.
#[track_caller]
pub fn expect_errno<T: fmt::Debug>(
    r: Result<T, Errno>,
    want: Errno,
    op: &str,
    path: impl AsRef<Path>,
) {
    match r {
        Err(e) if e == want => {}
        other => panic!(
            "{op} {}: expected {want:?} ({}), got {other:?}",
            path.as_ref().display(),
            want.desc()
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Directories

/// A directory for one test under `CARGO_TARGET_TMPDIR`, named after the test thread, world
/// searchable (0755, as tests may switch users), removed on drop.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// A fresh directory named after the current test (libtest names the thread after it).
    pub fn new() -> TestDir {
        let name = std::thread::current()
            .name()
            .unwrap_or("anon")
            .replace("::", "__");
        TestDir::named(&name)
    }

    /// A fresh directory named `name` plus a per-process counter.
    pub fn named(name: &str) -> TestDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("it");
        fs::create_dir_all(&root).or_panic("mkdir -p", &root);
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).or_panic("chmod", &root);
        static SWEPT: OnceLock<()> = OnceLock::new();
        SWEPT.get_or_init(|| sweep_dead_runs(&root));
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = root.join(format!("{name}-{}-{n}", std::process::id()));
        if path.exists() {
            // A previous run of a process with the same pid; its mounts died with its threads.
            fs::remove_dir_all(&path).or_panic("rm -rf stale", &path);
        }
        fs::create_dir(&path).or_panic("mkdir", &path);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).or_panic("chmod", &path);
        // Mount points are compared with /proc/thread-self/mountinfo, which shows real paths.
        let path = fs::canonicalize(&path).or_panic("canonicalize", &path);
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Creates `rel` (and its parents) with mode 0755 and returns its path.
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.path.join(rel);
        fs::create_dir_all(&p).or_panic("mkdir -p", &p);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).or_panic("chmod", &p);
        p
    }
}

/// Removes directories left by test processes that no longer exist (killed runs cannot clean
/// up; their mounts went with their mount namespaces). Names end in `-{pid}-{n}`.
fn sweep_dead_runs(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mut parts = name.rsplitn(3, '-');
        let (_n, pid) = (parts.next(), parts.next());
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!(
                "warning: cannot remove test dir {}: {e}",
                self.path.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Abilities

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Root (for a private mount namespace and mounting), and `/dev/fuse` opens read-write.
pub fn can_mount_fuse() -> bool {
    is_root()
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .is_ok()
}

/// Root, and a kernel overlayfs with `userxattr` really mounts (probed once, in a throwaway
/// thread with its own mount namespace, so nothing leaks).
pub fn can_mount_kernel_overlay() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if !is_root() {
            return false;
        }
        std::thread::spawn(|| {
            let dir = TestDir::named("probe-kernel-overlay");
            if nix::sched::unshare(CloneFlags::CLONE_NEWNS).is_err() {
                return false;
            }
            if nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .is_err()
            {
                return false;
            }
            let (l, u, w, m) = (
                dir.mkdir("l"),
                dir.mkdir("u"),
                dir.mkdir("w"),
                dir.mkdir("m"),
            );
            let opts = format!(
                "userxattr,lowerdir={},upperdir={},workdir={}",
                l.display(),
                u.display(),
                w.display()
            );
            let ok = nix::mount::mount(
                Some("overlay"),
                &m,
                Some("overlay"),
                MsFlags::empty(),
                Some(opts.as_str()),
            )
            .is_ok();
            if ok {
                let _ = nix::mount::umount2(&m, MntFlags::MNT_DETACH);
            }
            ok
        })
        .join()
        .unwrap_or(false)
    })
}

/// Gives the calling test thread its own mount namespace with `/` recursively private, so that
/// every mount it (or a process it spawns) makes disappears with the thread, whatever happens.
/// Mount namespaces are per thread on Linux (`unshare(CLONE_NEWNS)` implies `CLONE_FS`), and
/// libtest runs each test on its own thread. Call it first in every mounting test; mount paths
/// must then be checked in `/proc/thread-self/mountinfo`, not `/proc/self/...` (the main thread).
pub fn private_mount_ns() {
    assert_ne!(
        nix::unistd::gettid(),
        nix::unistd::getpid(),
        "private_mount_ns must run on a test thread, not the main thread"
    );
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).or_panic("unshare(CLONE_NEWNS)", "/");
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .or_panic("mount --make-rprivate", "/");
}

// ---------------------------------------------------------------------------------------------
// Mount table

/// One line of `/proc/thread-self/mountinfo`.
#[derive(Debug, Clone)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub super_opts: String,
}

fn unescape_mountinfo(s: &str) -> PathBuf {
    // Space, tab, newline and backslash are written as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// The mounts seen by the calling thread (its mount namespace).
pub fn mounts() -> Vec<MountInfo> {
    let text = fs::read_to_string("/proc/thread-self/mountinfo")
        .or_panic("read", "/proc/thread-self/mountinfo");
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            Some(MountInfo {
                mount_point: unescape_mountinfo(left.get(4)?),
                fstype: right.first()?.to_string(),
                source: right.get(1).unwrap_or(&"").to_string(),
                super_opts: right.get(2).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// The topmost mount at `path` in the calling thread's namespace, if any.
pub fn mount_at(path: &Path) -> Option<MountInfo> {
    mounts().into_iter().rev().find(|m| m.mount_point == path)
}

// ---------------------------------------------------------------------------------------------
// ovlrun mount

/// Arguments of `ovlrun mount`.
#[derive(Debug, Clone, Default)]
pub struct MountArgs {
    /// Topmost first, like `lowerdir=`.
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: Option<PathBuf>,
    /// `kernel` or `aufs`.
    pub whiteout: Option<&'static str>,
    /// `off`, `upper` or `all`; unset: `$OVLRUN_TEST_PASSTHROUGH`, else ovlrun's default.
    pub passthrough: Option<&'static str>,
    pub mount_point: PathBuf,
    /// Extra environment of the server (debug knobs).
    pub env: Vec<(&'static str, String)>,
}

impl MountArgs {
    pub fn new(lowers: &[&Path], upper: &Path, mount_point: &Path) -> MountArgs {
        MountArgs {
            lowers: lowers.iter().map(|p| p.to_path_buf()).collect(),
            upper: upper.to_path_buf(),
            work: None,
            whiteout: None,
            passthrough: None,
            mount_point: mount_point.to_path_buf(),
            env: Vec::new(),
        }
    }

    pub fn work(mut self, work: &Path) -> MountArgs {
        self.work = Some(work.to_path_buf());
        self
    }

    pub fn whiteout(mut self, style: &'static str) -> MountArgs {
        self.whiteout = Some(style);
        self
    }

    pub fn passthrough(mut self, files: &'static str) -> MountArgs {
        self.passthrough = Some(files);
        self
    }

    pub fn env(mut self, key: &'static str, value: impl Into<String>) -> MountArgs {
        self.env.push((key, value.into()));
        self
    }

    /// The `ovlrun mount ...` command line.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(ovlrun_bin());
        cmd.arg("mount");
        for l in &self.lowers {
            cmd.arg("--lower").arg(l);
        }
        cmd.arg("--upper").arg(&self.upper);
        if let Some(w) = &self.work {
            cmd.arg("--work").arg(w);
        }
        if let Some(s) = self.whiteout {
            cmd.arg("--whiteout").arg(s);
        }
        // A second pass of the suite sets `off`, so the server's own read and write path is
        // tested as root too (sessions in a user namespace never get passthrough).
        match (self.passthrough, std::env::var("OVLRUN_TEST_PASSTHROUGH")) {
            (Some(p), _) => {
                cmd.arg("--passthrough").arg(p);
            }
            (None, Ok(p)) => {
                cmd.arg("--passthrough").arg(p);
            }
            (None, Err(_)) => {}
        }
        cmd.arg(&self.mount_point);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// One lower, an upper, a work dir and a mount point in one test directory.
pub struct OneLower {
    pub _dir: TestDir,
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl OneLower {
    pub fn new() -> OneLower {
        let dir = TestDir::new();
        let (lower, upper) = (dir.mkdir("lower"), dir.mkdir("upper"));
        let (work, mnt) = (dir.mkdir("work"), dir.mkdir("mnt"));
        OneLower {
            _dir: dir,
            lower,
            upper,
            work,
            mnt,
        }
    }

    /// `ovlrun mount` of these directories.
    pub fn args(&self) -> MountArgs {
        MountArgs::new(&[&self.lower], &self.upper, &self.mnt).work(&self.work)
    }
}

pub fn ovlrun_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ovlrun")
}

/// The busybox tree `scripts/mkrootfs.sh` makes: the rootfs of the launcher's tests.
pub fn example_rootfs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rootfs")
}

/// Runs `cmd` to completion (stdin closed) and returns status, stdout, stderr.
pub fn run(cmd: &mut Command) -> (ExitStatus, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .or_panic("spawn", format!("{cmd:?}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `ovlrun mount`: waits for the mount to appear; on drop stops the server (SIGTERM,
/// then lazy unmount and SIGKILL if it does not go) and makes sure nothing stays mounted.
pub struct OvlrunMount {
    child: Option<Child>,
    mount_point: PathBuf,
    log: PathBuf,
    args: MountArgs,
    /// Set (under the lock) when the child is reaped, so the watchdog never signals a pid
    /// that could have been reused.
    reaped: Arc<Mutex<bool>>,
    /// Dropping the sender stops the watchdog thread.
    watchdog: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

/// How long one `ovlrun mount` may live in a test before the watchdog kills it: a hung FUSE
/// request would otherwise hang the test (and CI) forever; killing the server aborts the
/// connection, so the stuck syscall fails with ENOTCONN and the test fails instead.
fn mount_time_limit() -> Duration {
    let secs = std::env::var("OVLRUN_TEST_MOUNT_LIMIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

impl OvlrunMount {
    /// Spawns `ovlrun mount` and polls the mount table until `fuse.ovlrun` sits on the mount
    /// point; panics after [`MOUNT_TIMEOUT`] or when the child exits, with its stderr.
    #[track_caller]
    pub fn start(args: &MountArgs) -> OvlrunMount {
        assert!(
            mount_at(&args.mount_point).is_none_or(|m| m.fstype != "fuse.ovlrun"),
            "{} is already an ovlrun mount",
            args.mount_point.display()
        );
        static N: AtomicUsize = AtomicUsize::new(0);
        let log = args
            .mount_point
            .with_file_name(format!("ovlrun-{}.log", N.fetch_add(1, Ordering::Relaxed)));
        let err = File::create(&log).or_panic("create", &log);
        let out = err.try_clone().or_panic("dup", &log);
        let mut cmd = args.command();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        // The server dies with the test thread that forked it (PR_SET_PDEATHSIG is per thread),
        // so a killed test never leaves a server holding the thread's mount namespace alive.
        // SAFETY: prctl is async-signal-safe and touches no memory shared with the parent.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)
            });
        }
        let child = cmd.spawn().or_panic("spawn", ovlrun_bin());
        let reaped = Arc::new(Mutex::new(false));
        let (tx, rx) = mpsc::channel::<()>();
        let watchdog = {
            let (reaped, pid, mnt, limit) = (
                reaped.clone(),
                child.id() as i32,
                args.mount_point.clone(),
                mount_time_limit(),
            );
            std::thread::spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                    let reaped = reaped.lock().unwrap_or_else(|e| e.into_inner());
                    if !*reaped {
                        eprintln!(
                            "watchdog: ovlrun on {} still running after {limit:?} (hung request?): SIGKILL",
                            mnt.display()
                        );
                        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            })
        };
        let mut m = OvlrunMount {
            child: Some(child),
            mount_point: args.mount_point.clone(),
            log,
            args: args.clone(),
            reaped,
            watchdog: Some((tx, watchdog)),
        };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if mount_at(&m.mount_point).is_some_and(|mi| mi.fstype == "fuse.ovlrun") {
                return m;
            }
            if let Some(status) = m.try_reap() {
                panic!(
                    "ovlrun mount exited with {status} before mounting\ncommand: {:?}\nstderr:\n{}",
                    m.args.command(),
                    m.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} not mounted after {MOUNT_TIMEOUT:?}\ncommand: {:?}\nstderr:\n{}",
                    m.mount_point.display(),
                    m.args.command(),
                    m.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    /// `mount_point/rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mount_point.join(rel)
    }

    /// The server's stdout and stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log.display()))
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("server running").id() as i32)
    }

    /// Sends `sig` to the server and waits for it to exit; returns its status, and whether the
    /// mount point was still mounted right after it exited. The guard then cleans up.
    pub fn stop_with(mut self, sig: Signal) -> (ExitStatus, bool) {
        nix::sys::signal::kill(self.pid(), sig).or_panic("kill", format!("pid {}", self.pid()));
        let status = self.wait_exit(MOUNT_TIMEOUT);
        let still = mount_at(&self.mount_point).is_some_and(|m| m.fstype.starts_with("fuse"));
        let status = status.unwrap_or_else(|| {
            panic!(
                "ovlrun did not exit within {MOUNT_TIMEOUT:?} after {sig}\nstderr:\n{}",
                self.stderr()
            )
        });
        (status, still)
    }

    /// `umount MNT` (not lazy) and waits for the server to exit by itself; returns its status.
    pub fn unmount(mut self) -> ExitStatus {
        umount_retry(&self.mount_point);
        match self.wait_exit(MOUNT_TIMEOUT) {
            Some(s) => s,
            None => panic!(
                "ovlrun did not exit within {MOUNT_TIMEOUT:?} after umount\nstderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// Reaps the child if it has exited (under the watchdog's lock).
    fn try_reap(&mut self) -> Option<ExitStatus> {
        let reaped = self.reaped.clone();
        let mut reaped = reaped.lock().unwrap_or_else(|e| e.into_inner());
        let status = self
            .child
            .as_mut()?
            .try_wait()
            .unwrap_or_else(|e| panic!("wait for ovlrun: {e}"))?;
        *reaped = true;
        self.child = None;
        Some(status)
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.as_ref()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_reap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for OvlrunMount {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            if self.wait_exit(MOUNT_TIMEOUT).is_none() {
                let _ = nix::mount::umount2(&self.mount_point, MntFlags::MNT_DETACH);
                if let Some(mut c) = self.child.take() {
                    let mut reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = c.kill();
                    let _ = c.wait();
                    *reaped = true;
                }
                eprintln!(
                    "warning: ovlrun on {} ignored SIGTERM; killed",
                    self.mount_point.display()
                );
            }
        }
        if let Some((tx, handle)) = self.watchdog.take() {
            drop(tx);
            let _ = handle.join();
        }
        // A server that died without unmounting leaves a dead FUSE mount ("Transport endpoint
        // is not connected"); detach it so the directory can be removed.
        while mount_at(&self.mount_point).is_some_and(|m| m.fstype.starts_with("fuse")) {
            if nix::mount::umount2(&self.mount_point, MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
    }
}

/// Unmounts `path`, retrying briefly on EBUSY (a file just closed may still be released).
fn umount_retry(path: &Path) {
    let deadline = Instant::now() + MOUNT_TIMEOUT;
    loop {
        match nix::mount::umount2(path, MntFlags::empty()) {
            Ok(()) => return,
            Err(Errno::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("umount {}: {e}", path.display()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel overlayfs

/// A kernel overlayfs (`userxattr` flavour) mounted in the calling thread's namespace; unmounted
/// (lazily) on drop.
pub struct KernelOverlay {
    mount_point: PathBuf,
    mounted: bool,
}

impl KernelOverlay {
    /// `mount -t overlay -o userxattr,lowerdir=..,upperdir=..,workdir=..[,extra] overlay MNT`.
    #[track_caller]
    pub fn mount(
        lowers: &[&Path],
        upper: &Path,
        work: &Path,
        mount_point: &Path,
        extra: &str,
    ) -> KernelOverlay {
        let lowerdir: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let mut opts = format!(
            "userxattr,lowerdir={},upperdir={},workdir={}",
            lowerdir.join(":"),
            upper.display(),
            work.display()
        );
        if !extra.is_empty() {
            opts.push(',');
            opts.push_str(extra);
        }
        nix::mount::mount(
            Some("overlay"),
            mount_point,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .or_panic(&format!("mount -t overlay -o {opts}"), mount_point);
        KernelOverlay {
            mount_point: mount_point.to_path_buf(),
            mounted: true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mount_point.join(rel)
    }

    /// Unmounts now (not lazily), so the upper can be reused by another mount.
    pub fn unmount(mut self) {
        umount_retry(&self.mount_point);
        self.mounted = false;
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        if self.mounted {
            let _ = nix::mount::umount2(&self.mount_point, MntFlags::MNT_DETACH);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layer building (on the raw directories, not through a mount)

/// A kernel-style whiteout: a character device 0:0 named `name`.
pub fn whiteout_chardev(path: &Path) {
    nix::sys::stat::mknod(path, SFlag::S_IFCHR, Mode::empty(), 0).or_panic("mknod c 0 0", path);
}

/// An AUFS-style whiteout for `dir/name`: an empty `dir/.wh.name`.
pub fn whiteout_aufs(dir: &Path, name: &str) {
    let p = dir.join(format!(".wh.{name}"));
    File::create(&p).or_panic("create", &p);
}

/// Opaque in the `userxattr` flavour.
pub fn opaque_user(dir: &Path) {
    xattr::set(dir, "user.overlay.opaque", b"y").or_panic("setxattr user.overlay.opaque", dir);
}

/// Opaque in the privileged kernel flavour.
pub fn opaque_trusted(dir: &Path) {
    xattr::set(dir, "trusted.overlay.opaque", b"y")
        .or_panic("setxattr trusted.overlay.opaque", dir);
}

/// Opaque in the AUFS/OCI flavour: `dir/.wh..wh..opq`.
pub fn opaque_aufs(dir: &Path) {
    let p = dir.join(".wh..wh..opq");
    File::create(&p).or_panic("create", &p);
}

pub fn is_whiteout_chardev(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

// ---------------------------------------------------------------------------------------------
// fs helpers that panic with context

#[track_caller]
pub fn write(path: impl AsRef<Path>, data: impl AsRef<[u8]>) {
    fs::write(path.as_ref(), data).or_panic("write", path)
}

#[track_caller]
pub fn read(path: impl AsRef<Path>) -> Vec<u8> {
    fs::read(path.as_ref()).or_panic("read", path)
}

#[track_caller]
pub fn read_string(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path.as_ref()).or_panic("read", path)
}

#[track_caller]
pub fn mkdir(path: impl AsRef<Path>) {
    fs::create_dir(path.as_ref()).or_panic("mkdir", path)
}

#[track_caller]
pub fn mkdir_p(path: impl AsRef<Path>) {
    fs::create_dir_all(path.as_ref()).or_panic("mkdir -p", path)
}

#[track_caller]
pub fn symlink(target: impl AsRef<Path>, path: impl AsRef<Path>) {
    std::os::unix::fs::symlink(target, path.as_ref()).or_panic("symlink", path)
}

#[track_caller]
pub fn hard_link(from: impl AsRef<Path>, to: impl AsRef<Path>) {
    fs::hard_link(from.as_ref(), to.as_ref())
        .or_panic(&format!("link {} ->", from.as_ref().display()), to)
}

#[track_caller]
pub fn lstat(path: impl AsRef<Path>) -> fs::Metadata {
    fs::symlink_metadata(path.as_ref()).or_panic("lstat", path)
}

#[track_caller]
pub fn chmod(path: impl AsRef<Path>, mode: u32) {
    fs::set_permissions(path.as_ref(), fs::Permissions::from_mode(mode))
        .or_panic(&format!("chmod {mode:o}"), path)
}

#[track_caller]
pub fn set_xattr(path: impl AsRef<Path>, name: &str, value: &[u8]) {
    xattr::set(path.as_ref(), name, value).or_panic(&format!("setxattr {name}"), path)
}

/// Names in a directory (through `readdir`, without `.`/`..`), sorted.
#[track_caller]
pub fn ls(path: impl AsRef<Path>) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(path.as_ref())
        .or_panic("opendir", path.as_ref())
        .map(|e| {
            e.or_panic("readdir", path.as_ref())
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// `lstat` that reports absence as `None` and panics on any other error.
#[track_caller]
pub fn lstat_opt(path: impl AsRef<Path>) -> Option<fs::Metadata> {
    match fs::symlink_metadata(path.as_ref()) {
        Ok(m) => Some(m),
        Err(e) if errno_of(&e) == Errno::ENOENT => None,
        Err(e) => panic!("lstat {}: {e}", path.as_ref().display()),
    }
}

// ---------------------------------------------------------------------------------------------
// Tree snapshots

/// File type, as far as a merged view can tell.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Char(u64),
    Block(u64),
}

/// File data: kept whole when small, else its length and a hash.
#[derive(Clone, PartialEq, Eq)]
pub enum Content {
    Bytes(Vec<u8>),
    Hashed { len: u64, hash: u64 },
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Bytes(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Content::Hashed { len, hash } => write!(f, "<{len} bytes, hash {hash:016x}>"),
        }
    }
}

/// What a comparison of two merged trees looks at. Times, st_ino and st_dev are left out on
/// purpose (they legitimately differ between two mounts); so are directory sizes and link
/// counts (filesystem-specific).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size of non-directories.
    pub size: Option<u64>,
    /// Link count of non-directories (hard links must survive).
    pub nlink: Option<u64>,
    pub content: Option<Content>,
    pub link_target: Option<PathBuf>,
    /// `user.*` xattrs except `user.overlay.*`, sorted by name.
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Small files are kept byte for byte, so a mismatch shows the text.
const KEEP_BYTES: u64 = 4096;

/// Walks `root` without following symlinks and records every entry (keyed by its path relative
/// to `root`; the root itself is `""`). Panics with the path on any error.
pub fn tree_snapshot(root: &Path) -> BTreeMap<PathBuf, EntryInfo> {
    let mut out = BTreeMap::new();
    snapshot_into(root, Path::new(""), &mut out);
    out
}

fn snapshot_into(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, EntryInfo>) {
    let path = if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let info = entry_info(&path);
    let is_dir = info.kind == Kind::Dir;
    out.insert(rel.to_path_buf(), info);
    if is_dir {
        let mut names: Vec<OsString> = fs::read_dir(&path)
            .or_panic("opendir", &path)
            .map(|e| e.or_panic("readdir", &path).file_name())
            .collect();
        names.sort();
        for w in names.windows(2) {
            assert_ne!(
                w[0],
                w[1],
                "readdir of {} lists {:?} twice",
                path.display(),
                w[0]
            );
        }
        for name in names {
            snapshot_into(root, &rel.join(name), out);
        }
    }
}

/// The [`EntryInfo`] of one path (not following a final symlink).
pub fn entry_info(path: &Path) -> EntryInfo {
    let md = lstat(path);
    let ft = md.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else if ft.is_char_device() {
        Kind::Char(md.rdev())
    } else {
        Kind::Block(md.rdev())
    };
    let content = (kind == Kind::File).then(|| file_content(path, md.len()));
    let link_target =
        (kind == Kind::Symlink).then(|| fs::read_link(path).or_panic("readlink", path));
    let mut xattrs = Vec::new();
    // user.* xattrs exist only on regular files and directories.
    if matches!(kind, Kind::File | Kind::Dir) {
        for name in xattr::list(path).or_panic("listxattr", path) {
            let b = name.as_bytes();
            if b.starts_with(b"user.") && !b.starts_with(b"user.overlay.") {
                let v = xattr::get(path, &name)
                    .or_panic(&format!("getxattr {name:?}"), path)
                    .unwrap_or_default();
                xattrs.push((name, v));
            }
        }
        xattrs.sort();
    }
    EntryInfo {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: (kind != Kind::Dir).then_some(md.len()),
        nlink: (kind != Kind::Dir).then(|| md.nlink()),
        content,
        link_target,
        xattrs,
        kind,
    }
}

fn file_content(path: &Path, len: u64) -> Content {
    let mut f = File::open(path).or_panic("open", path);
    if len <= KEEP_BYTES {
        let mut v = Vec::new();
        f.read_to_end(&mut v).or_panic("read", path);
        return Content::Bytes(v);
    }
    let mut h = DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).or_panic("read", path);
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
        total += n as u64;
    }
    Content::Hashed {
        len: total,
        hash: h.finish(),
    }
}

/// The differences between two snapshots, one line per path, or `None` when equal.
pub fn tree_diff(
    a_name: &str,
    a: &BTreeMap<PathBuf, EntryInfo>,
    b_name: &str,
    b: &BTreeMap<PathBuf, EntryInfo>,
) -> Option<String> {
    let mut lines = Vec::new();
    let keys: std::collections::BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => lines.push(format!(
                "  /{}:\n    {a_name}: {x:?}\n    {b_name}: {y:?}",
                k.display()
            )),
            (Some(x), None) => lines.push(format!("  /{}: only in {a_name}: {x:?}", k.display())),
            (None, Some(y)) => lines.push(format!("  /{}: only in {b_name}: {y:?}", k.display())),
            (None, None) => unreachable!(),
        }
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// Panics with the per-path differences when the two trees differ.
#[track_caller]
pub fn assert_trees_eq(
    a_name: &str,
    a: &BTreeMap<PathBuf, EntryInfo>,
    b_name: &str,
    b: &BTreeMap<PathBuf, EntryInfo>,
) {
    if let Some(d) = tree_diff(a_name, a, b_name, b) {
        panic!("merged trees differ ({a_name} vs {b_name}):\n{d}");
    }
}

/// A rootfs as a session must leave it: everything [`tree_snapshot`] compares, plus each
/// entry's inode number, mtime and ctime. A rootfs nobody wrote keeps all three, so even a
/// chmod-and-back or a rewrite with the same bytes shows.
pub struct Frozen {
    /// The [`tree_snapshot`] of the rootfs.
    pub tree: BTreeMap<PathBuf, EntryInfo>,
    stamps: BTreeMap<PathBuf, (u64, i64, i64, i64, i64)>,
}

impl Frozen {
    /// Snapshots the tree under `root`.
    pub fn take(root: &Path) -> Frozen {
        let tree = tree_snapshot(root);
        let stamps = tree
            .keys()
            .map(|rel| {
                let md = lstat(root.join(rel));
                (
                    rel.clone(),
                    (
                        md.ino(),
                        md.mtime(),
                        md.mtime_nsec(),
                        md.ctime(),
                        md.ctime_nsec(),
                    ),
                )
            })
            .collect();
        Frozen { tree, stamps }
    }

    /// Panics with the differing paths when `root` is no longer exactly as it was.
    #[track_caller]
    pub fn assert_unchanged(&self, root: &Path, after: &str) {
        let now = Frozen::take(root);
        if let Some(d) = tree_diff("before", &self.tree, "after", &now.tree) {
            panic!("rootfs {} changed by {after}:\n{d}", root.display());
        }
        let moved: Vec<String> = self
            .stamps
            .iter()
            .filter(|(k, v)| now.stamps.get(*k) != Some(v))
            .map(|(k, v)| format!("  /{}: {v:?} -> {:?}", k.display(), now.stamps.get(k)))
            .collect();
        assert!(
            moved.is_empty(),
            "rootfs {} rewritten by {after} ((ino, mtime s, ns, ctime s, ns) changed):\n{}",
            root.display(),
            moved.join("\n")
        );
    }
}

/// Paths under `root` (not following symlinks) that list an `*.overlay.*` xattr or whose name
/// starts with `.wh.`: the merged view must never show either.
pub fn overlay_internals_visible(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = lstat(&p);
        if p.file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b".wh."))
        {
            found.push(format!("{}: .wh. name", p.display()));
        }
        if md.is_dir() || md.is_file() {
            for name in xattr::list(&p).or_panic("listxattr", &p) {
                if name.as_bytes().windows(9).any(|w| w == b".overlay.") {
                    found.push(format!("{}: xattr {name:?}", p.display()));
                }
            }
        }
        if md.is_dir() {
            for e in fs::read_dir(&p).or_panic("opendir", &p) {
                stack.push(e.or_panic("readdir", &p).path());
            }
        }
    }
    found
}
