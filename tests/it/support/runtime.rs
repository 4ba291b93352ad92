//! Container managers driving the OCI runtime under test (issue 15): podman as root and as the
//! unprivileged user ([`Podman`]), and a containerd the test starts ([`Containerd`]), each
//! with its own storage, state, sockets and configuration in the test's directory, over an
//! image built from `examples/rootfs` ([`image`]). No registry is reachable here.
//!
//! The runtime under test ([`Runtime::under_test`]) is this repo's `ovlrun`, or the system
//! runc when `OVLRUN_RUNTIME=runc` (the reference that validates the harness). Each fixture
//! proves that runtime served a container ([`Podman::assert_served`],
//! [`Containerd::assert_served`]): the runtime's own `state` knows it, with the pid the
//! manager reports. A system runc that served it instead fails that check.
//!
//! Cleanup, also when a test fails: the guards remove every container, kill every process
//! whose command line names the test's directory (conmon, containerd, the shims) with its
//! descendants, kill rootless podman's pause process, unmount what is mounted under the
//! directory, and remove the cgroups the test's containers were put in. The directories are
//! short ([`ShortDir`]): podman and unix sockets limit path lengths.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::mount::MntFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::session::Caller;
use super::{Bg, OrPanic, Out, example_rootfs, mounts, ovlrun_bin, run_within};

/// How long one client command (a `podman run`, a `ctr task exec`) may take.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The name podman and containerd know the test image by.
pub const IMAGE: &str = "localhost/ovlrun-rootfs:latest";

/// A shell line that waits until the test creates `/ctl/go` (a bind of [`Podman::ctl`] or
/// [`Containerd::ctl`]): keeps a container running until the test has looked at it.
pub const WAIT_FOR_GO: &str = "until [ -e /ctl/go ]; do sleep 0.05; done";

// ---------------------------------------------------------------------------------------------
// Short directories

/// Where the fixtures live: podman refuses a run root longer than 50 bytes and unix socket
/// paths end at 108, which `CARGO_TARGET_TMPDIR/it/<test name>` overruns.
const SHORT_ROOT: &str = "/tmp/ovlrun-it";

/// A directory `/tmp/ovlrun-it/PID-N` (0755), removed on drop; directories of test
/// processes that no longer exist are swept by the first one made.
pub struct ShortDir {
    path: PathBuf,
}

impl ShortDir {
    pub fn new() -> ShortDir {
        let root = Path::new(SHORT_ROOT);
        fs::create_dir_all(root).or_panic("mkdir -p", root);
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).or_panic("chmod", root);
        static SWEPT: OnceLock<()> = OnceLock::new();
        SWEPT.get_or_init(|| sweep_dead(root));
        let path = root.join(unique_in_process());
        if path.exists() {
            fs::remove_dir_all(&path).or_panic("rm -rf stale", &path);
        }
        fs::create_dir(&path).or_panic("mkdir", &path);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).or_panic("chmod", &path);
        ShortDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Creates `rel` (0755) and returns its path.
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.path.join(rel);
        fs::create_dir_all(&p).or_panic("mkdir -p", &p);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).or_panic("chmod", &p);
        p
    }
}

impl Drop for ShortDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Removes `root/PID-N` of processes that are gone (their mounts went with their threads'
/// mount namespaces; their processes were killed by the guards or died with the run).
fn sweep_dead(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            unmount_under(&e.path());
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// `PID-N`, unique among the names this test process makes.
fn unique_in_process() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------------------------
// The runtime under test

/// Which OCI runtime the managers are pointed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// This repo's `ovlrun` (the default).
    Ovlrun,
    /// The system runc (`OVLRUN_RUNTIME=runc`): the reference.
    Runc,
}

/// The runtime binary the managers run.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub kind: RuntimeKind,
    pub path: PathBuf,
}

impl Runtime {
    /// `OVLRUN_RUNTIME`: unset or `ovlrun` for this repo's binary, `runc` for the system runc,
    /// or the path of another ovlrun build (a release binary, say).
    pub fn under_test() -> Runtime {
        match std::env::var("OVLRUN_RUNTIME").as_deref() {
            Ok(path) if path.contains('/') => Runtime {
                kind: RuntimeKind::Ovlrun,
                path: fs::canonicalize(path)
                    .unwrap_or_else(|e| panic!("OVLRUN_RUNTIME={path}: {e}")),
            },
            Err(_) | Ok("") | Ok("ovlrun") => Runtime {
                kind: RuntimeKind::Ovlrun,
                path: PathBuf::from(ovlrun_bin()),
            },
            Ok("runc") => Runtime {
                kind: RuntimeKind::Runc,
                path: find_program("runc").expect("OVLRUN_RUNTIME=runc but no runc on PATH"),
            },
            Ok(other) => panic!("OVLRUN_RUNTIME={other:?}: expected `ovlrun`, `runc` or a path"),
        }
    }

    /// `RUNTIME [--root ROOT] state ID` as parsed JSON, or the failed command.
    pub fn state(&self, mut cmd: Command, root: Option<&Path>, id: &str) -> Result<State, Out> {
        if let Some(root) = root {
            cmd.arg("--root").arg(root);
        }
        cmd.args(["state", id]);
        let out = run_within(&mut cmd, CLIENT_TIMEOUT);
        if !out.status.success() {
            return Err(out);
        }
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("state is not JSON: {e}\n{}", out.context()));
        Ok(State {
            id: v["id"].as_str().unwrap_or_default().to_owned(),
            pid: v["pid"].as_i64().unwrap_or(-1),
            status: v["status"].as_str().unwrap_or_default().to_owned(),
        })
    }
}

/// What `RUNTIME state ID` says (the fields the tests compare).
#[derive(Debug)]
pub struct State {
    pub id: String,
    pub pid: i64,
    pub status: String,
}

/// Asserts that the runtime's `state` names `id`, alive, with the manager's pid for it.
#[track_caller]
fn assert_state(runtime: &Runtime, state: Result<State, Out>, id: &str, pid: i64) {
    let state = state.unwrap_or_else(|out| {
        panic!(
            "{} does not know container {id}: a runtime other than the one under test served it\n{}",
            runtime.path.display(),
            out.context()
        )
    });
    assert_eq!(state.id, id, "state of {id}: {state:?}");
    assert_eq!(
        state.pid, pid,
        "the runtime's pid for {id} is not the manager's: {state:?}"
    );
    assert!(
        matches!(state.status.as_str(), "running" | "paused"),
        "state of {id} while it runs: {state:?}"
    );
}

/// `name` in the usual program directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(name))
    .find(|p| p.is_file())
}

/// Skips (locally) or fails (under `CI`) a test whose manager or tools are missing
/// (`scripts/setup.sh` installs them), or that is not root.
macro_rules! require_managers {
    ($($program:literal),+) => {
        require!($crate::support::is_root(), "run container managers (needs root)");
        require!(
            $crate::support::example_rootfs().join("bin/busybox").is_file(),
            "find examples/rootfs/bin/busybox (run scripts/mkrootfs.sh)"
        );
        $(require!(
            $crate::support::runtime::find_program($program).is_some(),
            "find the container tools (scripts/setup.sh installs podman, containerd, runc)"
        );)+
    };
}

// ---------------------------------------------------------------------------------------------
// The image

/// The test image, built once per test run: a tar of `examples/rootfs` (what `podman
/// import` takes) and an OCI archive of the same (what `ctr images import` takes).
pub struct Image {
    /// `tar -C examples/rootfs -c .`
    pub rootfs_tar: PathBuf,
    /// `podman save --format oci-archive` of the imported rootfs tar, named [`IMAGE`].
    pub oci_archive: PathBuf,
    /// The same as a docker archive (what `docker load` takes).
    pub docker_archive: PathBuf,
}

/// The image of this test run (made by the first test that asks; its directory is swept by
/// the next run, as `TestDir` does for directories of dead processes).
pub fn image() -> &'static Image {
    static IMG: OnceLock<Image> = OnceLock::new();
    IMG.get_or_init(|| {
        // On a thread of its own: podman's overlay driver mounts its home privately, which
        // must stay in a mount namespace that ends with the thread.
        std::thread::spawn(build_image).join().unwrap()
    })
}

fn build_image() -> Image {
    super::private_mount_ns();
    let dir = ShortDir::new();
    let rootfs_tar = dir.join("rootfs.tar");
    run_within(
        Command::new("tar")
            .arg("-C")
            .arg(example_rootfs())
            .arg("-cf")
            .arg(&rootfs_tar)
            .arg("."),
        CLIENT_TIMEOUT,
    )
    .expect_ok();
    fs::set_permissions(&rootfs_tar, fs::Permissions::from_mode(0o644)).unwrap();
    let oci_archive = dir.join("rootfs-oci.tar");
    let store = dir.mkdir("store");
    let conf = write_podman_conf(&store, None);
    let podman = |args: &[&str]| {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", &conf.containers)
            .env("CONTAINERS_STORAGE_CONF", &conf.storage)
            .arg("--root")
            .arg(store.join("root"))
            .arg("--runroot")
            .arg(store.join("runroot"))
            .args(args);
        run_within(&mut cmd, CLIENT_TIMEOUT)
    };
    podman(&["import", &rootfs_tar.to_string_lossy(), IMAGE]).expect_ok();
    podman(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        &oci_archive.to_string_lossy(),
        IMAGE,
    ])
    .expect_ok();
    let docker_archive = dir.join("rootfs-docker.tar");
    podman(&[
        "save",
        "--format",
        "docker-archive",
        "-o",
        &docker_archive.to_string_lossy(),
        IMAGE,
    ])
    .expect_ok();
    unmount_under(&store);
    fs::remove_dir_all(&store).or_panic("rm -rf", &store);
    for f in [&oci_archive, &docker_archive] {
        fs::set_permissions(f, fs::Permissions::from_mode(0o644)).unwrap();
    }
    // The directory outlives this thread: the next run's sweep removes it.
    let img = Image {
        rootfs_tar,
        oci_archive,
        docker_archive,
    };
    std::mem::forget(dir);
    img
}

// ---------------------------------------------------------------------------------------------
// podman

/// The configuration files one podman instance reads.
struct PodmanConf {
    containers: PathBuf,
    storage: PathBuf,
}

/// Writes `containers.conf` and `storage.conf` for a podman whose files all live in `dir`.
/// `cgroupfs` and a file event log: there is no systemd here. The default ulimits podman
/// asks for (nofile 1048576, nproc 4194304) exceed this machine's hard limits, which root
/// cannot raise without CAP_SYS_RESOURCE; podman itself lowers its nproc to pid_max.
fn write_podman_conf(dir: &Path, cgroup_parent: Option<&str>) -> PodmanConf {
    let (nofile, nproc) = ulimits();
    let containers = dir.join("containers.conf");
    let mut text = format!(
        "[containers]\n\
         default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
         [engine]\n\
         cgroup_manager = \"cgroupfs\"\n\
         events_logger = \"file\"\n\
         events_logfile_path = \"{dir}/events.log\"\n\
         tmp_dir = \"{dir}/tmp\"\n\
         [network]\n\
         network_config_dir = \"{dir}/net\"\n",
        dir = dir.display()
    );
    if let Some(parent) = cgroup_parent {
        text = text.replace(
            "[engine]\n",
            &format!("cgroup_parent = \"{parent}\"\n[engine]\n"),
        );
    }
    fs::write(&containers, text).or_panic("write", &containers);
    let storage = dir.join("storage.conf");
    fs::write(
        &storage,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/root\"\nrunroot = \"{0}/runroot\"\n",
            dir.display()
        ),
    )
    .or_panic("write", &storage);
    PodmanConf {
        containers,
        storage,
    }
}

/// The nofile and nproc limits a container may ask for here: the hard nofile limit, and the
/// smaller of the hard nproc limit and `pid_max` (to which podman lowers its own).
pub fn ulimits() -> (u64, u64) {
    use nix::sys::resource::{Resource, getrlimit};
    let (_, nofile) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let (_, nproc) = getrlimit(Resource::RLIMIT_NPROC).unwrap();
    let pid_max: u64 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (nofile, nproc.min(pid_max))
}

/// `PREFIX-PID-N`: a name unique in this test process.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", unique_in_process())
}

/// A podman-style command line (podman, docker): what the lifecycle tests need of it.
pub trait Engine {
    /// `ENGINE GLOBAL-FLAGS ARGS..` as its caller, in its environment.
    fn cmd(&self, args: &[&str]) -> Command;

    /// The options every `run` of the tests carries (the runtime, no network, `/ctl`).
    fn run_flags(&self) -> Vec<String>;

    /// `ENGINE run RUN-FLAGS.. ARGS..` (ARGS hold the options, the image and the command).
    fn run_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.cmd(&["run"]);
        cmd.args(self.run_flags()).args(args);
        cmd
    }

    /// [`Engine::run_cmd`] on a pty of its own, for `run -t`.
    fn run_on_pty(&self, args: &[&str]) -> Command {
        let flags = self.run_flags();
        let mut all: Vec<&str> = vec!["run"];
        all.extend(flags.iter().map(String::as_str));
        all.extend_from_slice(args);
        self.on_pty(&all)
    }

    /// The runtime under test.
    fn runtime(&self) -> &Runtime;

    /// Proves the runtime under test runs container `name` (see the fixtures).
    fn assert_served(&self, name: &str);

    /// `ENGINE ARGS..` on a pty of its own (util-linux `script`), for `-t`; for
    /// [`super::pty::on_a_pty`].
    fn on_pty(&self, args: &[&str]) -> Command;

    /// The directory bound at `/ctl` by every `run`: where [`WAIT_FOR_GO`] looks.
    fn ctl(&self) -> &Path;

    /// A directory of the caller's own for the test's files.
    fn home(&self) -> &Path;

    /// Whether the engine runs as the unprivileged user.
    fn is_rootless(&self) -> bool;

    /// `top NAME` asking for the pid and the arguments (the engines spell it differently).
    fn top_args<'a>(&self, name: &'a str) -> Vec<&'a str>;

    /// `rm` of a running container without waiting for a stop time-out.
    fn rm_force_args<'a>(&self, name: &'a str) -> Vec<&'a str>;

    /// Runs `ENGINE ARGS..` within [`CLIENT_TIMEOUT`].
    #[track_caller]
    fn out(&self, args: &[&str]) -> Out {
        run_within(&mut self.cmd(args), CLIENT_TIMEOUT)
    }

    /// Runs `ENGINE ARGS..` and asserts it succeeded; returns its stdout.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.out(args);
        out.expect_ok();
        out.stdout
    }

    /// The value of an inspect template (`{{.State.Pid}}`) for container `name`.
    #[track_caller]
    fn inspect(&self, name: &str, template: &str) -> String {
        self.ok(&["inspect", "--type=container", "--format", template, name])
            .trim()
            .to_owned()
    }

    /// The container's status as the engine sees it (`running`, `paused`, `exited`, ...).
    #[track_caller]
    fn status(&self, name: &str) -> String {
        self.inspect(name, "{{.State.Status}}")
    }

    /// Polls until the engine says `name` is `want`, or fails after [`CLIENT_TIMEOUT`].
    #[track_caller]
    fn wait_status(&self, name: &str, want: &str) {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            // Not there yet while a `run` in the background is still creating it.
            let out = self.out(&[
                "inspect",
                "--type=container",
                "--format={{.State.Status}}",
                name,
            ]);
            let now = if out.status.success() {
                out.stdout.trim().to_owned()
            } else {
                format!("absent ({})", out.stderr.trim())
            };
            if now == want {
                return;
            }
            assert!(
                now != "exited" || want == "exited",
                "container {name} exited while waiting for {want}"
            );
            assert!(
                Instant::now() < deadline,
                "container {name} is {now}, not {want}, after {CLIENT_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `name`, started by `run` (a `run` in the background), runs; fails
    /// at once with `run`'s output when `run` ends first.
    #[track_caller]
    fn wait_started(&self, name: &str, run: &mut Bg) {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            if run.try_status().is_some() {
                panic!(
                    "{name} ended before it was seen running\n{}",
                    run.wait().context()
                );
            }
            let out = self.out(&[
                "inspect",
                "--type=container",
                "--format={{.State.Status}}",
                name,
            ]);
            if out.status.success() && out.stdout.trim() == "running" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not running after {CLIENT_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates `/ctl/go`: releases [`WAIT_FOR_GO`].
    fn release(&self) {
        let go = self.ctl().join("go");
        fs::write(&go, "").or_panic("create", &go);
    }
}

/// One podman, as root or as the test user, with its storage, run root, configuration, runtime
/// state and (rootless) `XDG_RUNTIME_DIR` in the test's directory, the test image imported,
/// and `--runtime` the runtime under test.
pub struct Podman {
    pub runtime: Runtime,
    pub caller: Caller,
    /// The caller's own directory (0700): all of podman's files.
    pub home: PathBuf,
    /// Bound at `/ctl` by [`Podman::run_args`]: where [`WAIT_FOR_GO`] looks.
    pub ctl: PathBuf,
    conf: PodmanConf,
    /// The runtime's `--root` (podman's `--runtime-flag root=`); `None`: the runtime's default
    /// (`/run/ovlrun`, `/run/runc`, or under `XDG_RUNTIME_DIR` rootless), which the cleanup
    /// conmon runs at the container's exit uses too.
    runtime_root: Option<PathBuf>,
    /// Root: `--cgroup-parent` of every container (conmon goes below it too).
    cgroup_parent: Option<String>,
    xdg: PathBuf,
    // Last: removed after the guard has cleaned up.
    dir: ShortDir,
}

impl Podman {
    /// A podman for `caller`, with the test image imported. Call [`super::private_mount_ns`]
    /// first as root: podman's storage mounts then end with the test thread.
    pub fn new(caller: Caller) -> Podman {
        let runtime = Runtime::under_test();
        let dir = ShortDir::new();
        let home = dir.mkdir("home");
        let xdg = home.join("xdg");
        fs::create_dir(&xdg).or_panic("mkdir", &xdg);
        let ctl = home.join("ctl");
        fs::create_dir(&ctl).or_panic("mkdir", &ctl);
        // The runtime's own default root, not one of the test's: podman passes
        // `--runtime-flag` to the runtime it calls, but not to the `podman container cleanup`
        // conmon runs when the container exits, whose `delete` would then look in the default
        // root, find nothing, and leave the container's state and cgroup behind.
        let runtime_root = None;
        let cgroup_parent = caller
            .is_root()
            .then(|| format!("/{}", unique("ovlrun-it")));
        let conf = write_podman_conf(&home, cgroup_parent.as_deref());
        for p in [&home, &xdg, &ctl, &conf.containers, &conf.storage] {
            if let Caller::User(user) = &caller {
                nix::unistd::chown(p.as_path(), Some(user.uid), Some(user.gid)).unwrap();
            }
        }
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(&xdg, fs::Permissions::from_mode(0o700)).unwrap();
        let p = Podman {
            runtime,
            caller,
            home,
            ctl,
            conf,
            runtime_root,
            cgroup_parent,
            xdg,
            dir,
        };
        p.ok(&["import", &image().rootfs_tar.to_string_lossy(), IMAGE]);
        p
    }

    /// `buildah --root --runroot ARGS..` over this podman's storage, as the caller, with
    /// `TMPDIR` (where buildah writes its bundles) in the caller's directory.
    pub fn buildah(&self, args: &[&str]) -> Command {
        let tmp = self.home.join("buildah-tmp");
        if !tmp.exists() {
            fs::create_dir(&tmp).or_panic("mkdir", &tmp);
            if let Caller::User(user) = &self.caller {
                nix::unistd::chown(&tmp, Some(user.uid), Some(user.gid)).unwrap();
            }
        }
        let mut cmd = Command::new("buildah");
        self.caller.apply(&mut cmd, &self.home);
        cmd.env("CONTAINERS_CONF", &self.conf.containers)
            .env("CONTAINERS_STORAGE_CONF", &self.conf.storage)
            .env("XDG_RUNTIME_DIR", &self.xdg)
            .env("TMPDIR", &tmp)
            .arg(format!("--root={}", self.home.join("root").display()))
            .arg(format!("--runroot={}", self.home.join("runroot").display()))
            .args(args);
        cmd
    }

    /// `buildah run` with the runtime under test, its state in `root` (`--runtime-flag
    /// root=`), no network and `/ctl` bound: `ARGS` hold the options, the working
    /// container, `--` and the command.
    pub fn buildah_run(&self, root: &Path, args: &[&str]) -> Command {
        let mut cmd = self.buildah(&["run"]);
        cmd.arg(format!("--runtime={}", self.runtime.path.display()))
            .arg(format!("--runtime-flag=root={}", root.display()))
            .arg("--network=none")
            .arg(format!("--volume={}:/ctl", self.ctl.display()))
            .args(args);
        cmd
    }

    /// What the runtime under test says of buildah's one container under `root` (`RUNTIME
    /// --root ROOT list`, then `state`), or `None` while it lists none (or more than one).
    pub fn buildah_state(&self, root: &Path) -> Option<State> {
        let runtime = |args: &[&str]| {
            // Rootless: in the user namespace buildah ran it in.
            let mut cmd = if self.caller.is_root() {
                Command::new(&self.runtime.path)
            } else {
                let mut c = self.cmd(&["unshare"]);
                c.arg(&self.runtime.path);
                c
            };
            cmd.arg("--root").arg(root).args(args);
            cmd
        };
        let list = run_within(&mut runtime(&["list"]), CLIENT_TIMEOUT);
        let ids: Vec<&str> = list
            .stdout
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        match ids[..] {
            [id] if list.status.success() => self.runtime.state(runtime(&[]), None, id).ok(),
            _ => None,
        }
    }

    fn global_flags(&self) -> Vec<String> {
        let mut flags = vec![
            format!("--root={}", self.home.join("root").display()),
            format!("--runroot={}", self.home.join("runroot").display()),
            format!("--runtime={}", self.runtime.path.display()),
        ];
        if let Some(root) = &self.runtime_root {
            flags.push(format!("--runtime-flag=root={}", root.display()));
        }
        flags
    }

    /// The flags every `run` and `create` of the tests carries: no network (there is none to
    /// reach), the test's cgroup parent (root), `/ctl` bound from [`Podman::ctl`].
    pub fn run_args(&self) -> Vec<String> {
        let mut args = vec![
            "--network=none".to_owned(),
            format!("--volume={}:/ctl", self.ctl.display()),
        ];
        if let Some(parent) = &self.cgroup_parent {
            args.push(format!("--cgroup-parent={parent}"));
        }
        args
    }

    /// Rootless podman's pause process, which holds its user namespace between commands.
    fn pause_pid(&self) -> Option<Pid> {
        let text = fs::read_to_string(self.home.join("tmp/pause.pid")).ok()?;
        text.trim().parse().ok().map(Pid::from_raw)
    }
}

impl Engine for Podman {
    fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// `podman GLOBAL-FLAGS ARGS..` as the caller, in its environment.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        self.caller.apply(&mut cmd, &self.home);
        cmd.env("CONTAINERS_CONF", &self.conf.containers)
            .env("CONTAINERS_STORAGE_CONF", &self.conf.storage)
            .env("XDG_RUNTIME_DIR", &self.xdg)
            .args(self.global_flags())
            .args(args);
        cmd
    }

    fn run_flags(&self) -> Vec<String> {
        self.run_args()
    }

    /// Proves the runtime under test runs `name`: podman recorded its path as the container's
    /// OCI runtime, and the runtime's own `state` knows the container with podman's pid.
    #[track_caller]
    fn assert_served(&self, name: &str) {
        let recorded = self.inspect(name, "{{.OCIRuntime}}");
        assert_eq!(
            Path::new(&recorded),
            self.runtime.path,
            "podman's OCI runtime for {name}"
        );
        let id = self.inspect(name, "{{.Id}}");
        let pid: i64 = self.inspect(name, "{{.State.Pid}}").parse().unwrap();
        // Rootless: in podman's user namespace, with its environment, as conmon ran it.
        let cmd = if self.caller.is_root() {
            Command::new(&self.runtime.path)
        } else {
            let mut c = self.cmd(&["unshare"]);
            c.arg(&self.runtime.path);
            c
        };
        let state = self.runtime.state(cmd, self.runtime_root.as_deref(), &id);
        assert_state(&self.runtime, state, &id, pid);
    }

    /// A command on a pty of its own (util-linux `script`), for `-t`: `podman ARGS..` as the
    /// caller, in its environment. For [`super::pty::on_a_pty`].
    fn on_pty(&self, args: &[&str]) -> Command {
        let inner = self.cmd(args);
        let line = std::iter::once("podman".to_owned())
            .chain(inner.get_args().map(|a| a.to_string_lossy().into_owned()))
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = Command::new("script");
        self.caller.apply(&mut cmd, &self.home);
        cmd.env("CONTAINERS_CONF", &self.conf.containers)
            .env("CONTAINERS_STORAGE_CONF", &self.conf.storage)
            .env("XDG_RUNTIME_DIR", &self.xdg)
            .args(["-qec", &line, "/dev/null"]);
        cmd
    }

    fn ctl(&self) -> &Path {
        &self.ctl
    }

    fn home(&self) -> &Path {
        &self.home
    }

    fn is_rootless(&self) -> bool {
        !self.caller.is_root()
    }

    fn top_args<'a>(&self, name: &'a str) -> Vec<&'a str> {
        vec!["top", name, "pid", "args"]
    }

    fn rm_force_args<'a>(&self, name: &'a str) -> Vec<&'a str> {
        vec!["rm", "--force", "--time=0", name]
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let out = run_within(
            &mut self.cmd(&["rm", "--all", "--force", "--time=0"]),
            CLIENT_TIMEOUT,
        );
        if !out.status.success() {
            eprintln!("warning: podman rm --all failed\n{}", out.context());
        }
        kill_processes_naming(self.dir.path());
        if let Some(pid) = self.pause_pid() {
            if fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| matches!(c.trim(), "catatonit" | "podman" | "podman pause"))
            {
                kill_tree(pid);
            }
        }
        unmount_under(self.dir.path());
        if let Some(parent) = &self.cgroup_parent {
            remove_cgroup_everywhere(parent);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// containerd

/// A containerd the test started: its root, state, sockets and configuration in the test's
/// directory, a namespace of its own (which names the containers' cgroups), the test image
/// imported. `ctr run` gets `--runc-binary` (the runtime under test) and `--runc-root` (its
/// state in the test's directory).
pub struct Containerd {
    pub runtime: Runtime,
    /// The containerd namespace, unique per test; the containers' cgroups are `/NS/ID`.
    pub namespace: String,
    /// The shim's `--runc-root`; the runtime's `--root` is `runc_root/NAMESPACE`.
    pub runc_root: PathBuf,
    /// Bound at `/ctl` by [`Containerd::run_args`]: where [`WAIT_FOR_GO`] looks.
    pub ctl: PathBuf,
    socket: PathBuf,
    daemon: Option<Child>,
    log: PathBuf,
    // Last: removed after the guard has cleaned up.
    dir: ShortDir,
}

/// The plugins a test's containerd loads nothing from: Kubernetes' CRI (which wants CNI and
/// a pause image), snapshotters for filesystems this machine lacks, tracing.
const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
    "io.containerd.internal.v1.opt",
];

impl Containerd {
    /// Starts containerd and imports the test image. Calls [`super::private_mount_ns`]: the
    /// snapshots the shims mount end with the test thread.
    pub fn start() -> Containerd {
        super::private_mount_ns();
        let runtime = Runtime::under_test();
        let dir = ShortDir::new();
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        let disabled = DISABLED_PLUGINS
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        fs::write(
            &config,
            format!(
                "version = 2\n\
                 root = \"{dir}/root\"\n\
                 state = \"{dir}/state\"\n\
                 disabled_plugins = [{disabled}]\n\
                 [grpc]\n  address = \"{sock}\"\n\
                 [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [debug]\n  address = \"\"\n",
                dir = dir.path().display(),
                sock = socket.display()
            ),
        )
        .or_panic("write", &config);
        let log = dir.join("containerd.log");
        let out = fs::File::create(&log).or_panic("create", &log);
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .or_panic("spawn", "containerd");
        let mut c = Containerd {
            runtime,
            namespace: unique("ovlrun-it"),
            runc_root: dir.join("runc-root"),
            ctl: dir.mkdir("ctl"),
            socket,
            daemon: Some(daemon),
            log,
            dir,
        };
        c.wait_ready();
        c.ok(&["images", "import", &image().oci_archive.to_string_lossy()]);
        c
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            if run_within(&mut self.ctr(&["version"]), CLIENT_TIMEOUT)
                .status
                .success()
            {
                return;
            }
            if let Some(st) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!("containerd exited with {st}\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "containerd not serving after {CLIENT_TIMEOUT:?}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// containerd's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ctr --address SOCK --namespace NS ARGS..`.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args);
        cmd
    }

    /// The flags every `ctr run` of the tests carries: the runtime under test and its root,
    /// and `/ctl` bound from [`Containerd::ctl`].
    pub fn run_args(&self) -> Vec<String> {
        vec![
            self.fifo_dir(),
            format!("--runc-binary={}", self.runtime.path.display()),
            format!("--runc-root={}", self.runc_root.display()),
            format!(
                "--mount=type=bind,src={},dst=/ctl,options=rbind:rw",
                self.ctl.display()
            ),
        ]
    }

    /// ctr's stdio fifos in the test's directory, not in `/run/containerd/fifo`.
    fn fifo_dir(&self) -> String {
        format!("--fifo-dir={}", self.dir.join("fifo").display())
    }

    /// `ctr task exec --fifo-dir=.. ARGS..`.
    pub fn exec_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.ctr(&["task", "exec", &self.fifo_dir()]);
        cmd.args(args);
        cmd
    }

    /// `ctr run RUN-ARGS.. ARGS..` (ARGS hold the options, the image, the id and the command).
    pub fn run_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.ctr(&["run"]);
        cmd.args(self.run_args()).args(args);
        cmd
    }

    /// Runs `ctr ARGS..` within [`CLIENT_TIMEOUT`].
    #[track_caller]
    pub fn out(&self, args: &[&str]) -> Out {
        run_within(&mut self.ctr(args), CLIENT_TIMEOUT)
    }

    /// Runs `ctr ARGS..` and asserts it succeeded; returns its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.out(args);
        out.expect_ok();
        out.stdout
    }

    /// The task's pid and status from `ctr task ls` (`RUNNING`, `PAUSED`, `STOPPED`).
    #[track_caller]
    pub fn task(&self, id: &str) -> Option<(i64, String)> {
        self.ok(&["task", "ls"]).lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[0] == id).then(|| (f[1].parse().unwrap_or(-1), f[2].to_owned()))
        })
    }

    /// Polls until the task `id` has status `want`, or fails after [`CLIENT_TIMEOUT`].
    #[track_caller]
    pub fn wait_status(&self, id: &str, want: &str) -> i64 {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            let now = self.task(id);
            if let Some((pid, status)) = &now
                && status == want
            {
                return *pid;
            }
            assert!(
                now.as_ref().is_none_or(|(_, s)| s != "STOPPED"),
                "task {id} stopped while waiting for {want}"
            );
            assert!(
                Instant::now() < deadline,
                "task {id} is {now:?}, not {want}, after {CLIENT_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until task `id`, started by `run` (a `ctr run` in the background), runs; fails
    /// at once with `run`'s output when `run` ends first.
    #[track_caller]
    pub fn wait_started(&self, id: &str, run: &mut Bg) {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            if run.try_status().is_some() {
                panic!(
                    "{id} ended before it was seen running\n{}",
                    run.wait().context()
                );
            }
            if self.task(id).is_some_and(|(_, s)| s == "RUNNING") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} not running after {CLIENT_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Proves the runtime under test runs task `id`: its own `state`, under the root the shim
    /// gave it, knows the container with the pid containerd reports.
    #[track_caller]
    pub fn assert_served(&self, id: &str) {
        let (pid, _) = self
            .task(id)
            .unwrap_or_else(|| panic!("no task {id} in `ctr task ls`"));
        let root = self.runc_root.join(&self.namespace);
        let state = self
            .runtime
            .state(Command::new(&self.runtime.path), Some(&root), id);
        assert_state(&self.runtime, state, id, pid);
    }

    /// The exit code `ctr task delete ID` reports for a stopped task: ctr 1.6 exits 0 and
    /// warns "task ID exit with non-zero exit code N" when N is not 0.
    #[track_caller]
    pub fn delete_task(&self, id: &str) -> i32 {
        let out = self.out(&["task", "delete", id]);
        out.expect_ok();
        let marker = "non-zero exit code ";
        out.stderr
            .lines()
            .find_map(|l| {
                let rest = &l[l.find(marker)? + marker.len()..];
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// The file `/ctl/go` inside: releases [`WAIT_FOR_GO`].
    pub fn release(&self) {
        let go = self.ctl.join("go");
        fs::write(&go, "").or_panic("create", &go);
    }

    /// `inner` (a `ctr` command) on a pty of its own (util-linux `script`): `ctr -t` wants a
    /// terminal.
    pub fn on_pty(&self, inner: Command) -> Command {
        let line = std::iter::once("ctr".to_owned())
            .chain(inner.get_args().map(|a| a.to_string_lossy().into_owned()))
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"]);
        cmd
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // The tasks first, through containerd, so the shims delete their containers.
        let tasks = run_within(&mut self.ctr(&["task", "ls", "--quiet"]), CLIENT_TIMEOUT);
        for id in tasks.stdout.split_whitespace() {
            let _ = run_within(
                &mut self.ctr(&["task", "delete", "--force", id]),
                CLIENT_TIMEOUT,
            );
        }
        let containers = run_within(
            &mut self.ctr(&["containers", "ls", "--quiet"]),
            CLIENT_TIMEOUT,
        );
        for id in containers.stdout.split_whitespace() {
            let _ = run_within(&mut self.ctr(&["containers", "delete", id]), CLIENT_TIMEOUT);
        }
        if let Some(mut daemon) = self.daemon.take() {
            let _ = nix::sys::signal::kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        // The shims name the socket on their command lines; what they still run goes too.
        kill_processes_naming(self.dir.path());
        unmount_under(self.dir.path());
        remove_cgroup_everywhere(&format!("/{}", self.namespace));
    }
}

// ---------------------------------------------------------------------------------------------
// docker

/// The name dockerd knows the runtime under test by (`--add-runtime NAME=PATH`).
const DOCKER_RUNTIME: &str = "under-test";

/// Debian's docker client (`docker.io`), which matches its dockerd, before any other on PATH.
pub fn docker_client() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/bin/docker");
    if debian.is_file() {
        Some(debian)
    } else {
        find_program("docker")
    }
}

/// A dockerd the test started (it starts its own containerd): data root, exec root, socket
/// and configuration in the test's directory, no bridge and no iptables, containers under a
/// cgroup parent of the test's own, the runtime under test added as `under-test`, the test
/// image loaded.
pub struct Docker {
    pub runtime: Runtime,
    ctl: PathBuf,
    home: PathBuf,
    socket: PathBuf,
    exec_root: PathBuf,
    cgroup_parent: String,
    daemon: Option<Child>,
    log: PathBuf,
    // Last: removed after the guard has cleaned up.
    dir: ShortDir,
}

impl Docker {
    /// Starts dockerd and loads the test image. Calls [`super::private_mount_ns`]: its mounts
    /// end with the test thread.
    pub fn start() -> Docker {
        super::private_mount_ns();
        let runtime = Runtime::under_test();
        let dir = ShortDir::new();
        let config = dir.join("daemon.json");
        fs::write(&config, "{}\n").or_panic("write", &config);
        let log = dir.join("dockerd.log");
        let out = fs::File::create(&log).or_panic("create", &log);
        let socket = dir.join("docker.sock");
        let exec_root = dir.join("exec");
        let cgroup_parent = format!("/{}", unique("ovlrun-it"));
        let daemon = Command::new("dockerd")
            .arg(format!("--config-file={}", config.display()))
            .arg(format!("--data-root={}", dir.join("data").display()))
            .arg(format!("--exec-root={}", exec_root.display()))
            .arg(format!("--pidfile={}", dir.join("dockerd.pid").display()))
            .arg(format!("--host=unix://{}", socket.display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .arg("--storage-driver=overlay2")
            .arg(format!("--cgroup-parent={cgroup_parent}"))
            .arg(format!(
                "--add-runtime={DOCKER_RUNTIME}={}",
                runtime.path.display()
            ))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .or_panic("spawn", "dockerd");
        let d = Docker {
            runtime,
            ctl: dir.mkdir("ctl"),
            home: dir.mkdir("home"),
            socket,
            exec_root,
            cgroup_parent,
            daemon: Some(daemon),
            log,
            dir,
        };
        d.wait_ready();
        d.ok(&["load", "--input", &image().docker_archive.to_string_lossy()]);
        d
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        while !run_within(&mut self.cmd(&["version"]), CLIENT_TIMEOUT)
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "dockerd not serving after {CLIENT_TIMEOUT:?}\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn client(&self) -> PathBuf {
        docker_client().expect("no docker client")
    }
}

impl Engine for Docker {
    fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.client());
        cmd.arg(format!("--host=unix://{}", self.socket.display()))
            .args(args);
        cmd
    }

    fn run_flags(&self) -> Vec<String> {
        vec![
            format!("--runtime={DOCKER_RUNTIME}"),
            "--network=none".to_owned(),
            format!("--volume={}:/ctl", self.ctl.display()),
        ]
    }

    /// dockerd recorded the runtime under test for `name`, and that runtime's own `state`,
    /// under the root the shim gave it (`EXEC_ROOT/runtime-*/moby`), knows the container
    /// with docker's pid.
    #[track_caller]
    fn assert_served(&self, name: &str) {
        assert_eq!(
            self.inspect(name, "{{.HostConfig.Runtime}}"),
            DOCKER_RUNTIME,
            "docker's runtime for {name}"
        );
        let id = self.inspect(name, "{{.Id}}");
        let pid: i64 = self.inspect(name, "{{.State.Pid}}").parse().unwrap();
        let roots: Vec<PathBuf> = fs::read_dir(&self.exec_root)
            .or_panic("readdir", &self.exec_root)
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("runtime-"))
            .map(|e| e.path().join("moby"))
            .collect();
        let mut last: Result<(), String> = Err(format!(
            "no runtime root under {}",
            self.exec_root.display()
        ));
        for root in &roots {
            match self
                .runtime
                .state(Command::new(&self.runtime.path), Some(root), &id)
            {
                Ok(state) => {
                    assert_state(&self.runtime, Ok(state), &id, pid);
                    return;
                }
                Err(out) => last = Err(out.context()),
            }
        }
        panic!(
            "{} does not know container {id} under {roots:?}: a runtime other than the one under test served it\n{}",
            self.runtime.path.display(),
            last.unwrap_err()
        );
    }

    fn on_pty(&self, args: &[&str]) -> Command {
        let inner = self.cmd(args);
        let line = std::iter::once(self.client().to_string_lossy().into_owned())
            .chain(inner.get_args().map(|a| a.to_string_lossy().into_owned()))
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"]);
        cmd
    }

    fn ctl(&self) -> &Path {
        &self.ctl
    }

    fn home(&self) -> &Path {
        &self.home
    }

    fn is_rootless(&self) -> bool {
        false
    }

    fn top_args<'a>(&self, name: &'a str) -> Vec<&'a str> {
        vec!["top", name, "-o", "pid,args"]
    }

    fn rm_force_args<'a>(&self, name: &'a str) -> Vec<&'a str> {
        vec!["rm", "--force", name]
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let ids = run_within(&mut self.cmd(&["ps", "--all", "--quiet"]), CLIENT_TIMEOUT);
        for id in ids.stdout.split_whitespace() {
            let _ = run_within(&mut self.cmd(&["rm", "--force", id]), CLIENT_TIMEOUT);
        }
        if let Some(mut daemon) = self.daemon.take() {
            let _ = nix::sys::signal::kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        // Its containerd, the shims and what they run name the directory.
        kill_processes_naming(self.dir.path());
        unmount_under(self.dir.path());
        remove_cgroup_everywhere(&self.cgroup_parent);
    }
}

// ---------------------------------------------------------------------------------------------
// Cleanup helpers

/// `s` quoted for `sh`.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Every process: (pid, parent pid, command line with NULs as spaces).
fn processes() -> Vec<(i32, i32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name is in parentheses and may hold spaces: fields follow the last ')'.
            let ppid = stat[stat.rfind(')')? + 2..]
                .split(' ')
                .nth(1)?
                .parse()
                .ok()?;
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            Some((pid, ppid, cmdline))
        })
        .collect()
}

/// SIGKILLs `root` and every descendant of it (children first seen, all of them killed).
fn kill_tree(root: Pid) {
    let procs = processes();
    let mut doomed: HashSet<i32> = HashSet::from([root.as_raw()]);
    loop {
        let before = doomed.len();
        for (pid, ppid, _) in &procs {
            if doomed.contains(ppid) {
                doomed.insert(*pid);
            }
        }
        if doomed.len() == before {
            break;
        }
    }
    for pid in doomed {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// SIGKILLs every process whose command line names `dir` (conmon, containerd, its shims)
/// and their descendants (the containers), then waits for them to be gone.
fn kill_processes_naming(dir: &Path) {
    let me = std::process::id() as i32;
    // With the slash: `/tmp/ovlrun-it/7-1` must not match `/tmp/ovlrun-it/7-12/...`, the
    // directory of a test running beside this one.
    let needle = format!("{}/", dir.display());
    let found: Vec<i32> = processes()
        .into_iter()
        .filter(|(pid, _, cmdline)| *pid != me && cmdline.contains(&needle))
        .map(|(pid, _, _)| pid)
        .collect();
    for pid in &found {
        kill_tree(Pid::from_raw(*pid));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while found
        .iter()
        .any(|pid| Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(*pid))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.get(s.rfind(')')? + 2..).map(|r| r.starts_with('Z')))
        .unwrap_or(true)
}

/// Lazily unmounts everything mounted under `dir` in the calling thread's mount namespace,
/// deepest first.
pub fn unmount_under(dir: &Path) {
    let mut points: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, MntFlags::MNT_DETACH);
    }
}

/// Removes the cgroup `rel` (an absolute cgroup path such as `/ovlrun-it-1-2`) and every
/// cgroup below it, in each hierarchy under `/sys/fs/cgroup`, deepest first; retries while
/// the last tasks leave.
pub fn remove_cgroup_everywhere(rel: &str) {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for root in roots {
        let top = root.join(rel);
        if !top.is_dir() {
            continue;
        }
        let mut dirs = Vec::new();
        let mut stack = vec![top];
        while let Some(d) = stack.pop() {
            if let Ok(entries) = fs::read_dir(&d) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs::remove_dir(d).is_err() && d.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if d.exists() {
                eprintln!("warning: cannot remove cgroup {}", d.display());
            }
        }
    }
}

/// Whether a cgroup directory `rel` exists in any hierarchy (for leak checks).
pub fn cgroup_exists_anywhere(rel: &str) -> bool {
    let rel = rel.trim_start_matches('/');
    fs::read_dir("/sys/fs/cgroup")
        .map(|entries| entries.flatten().any(|e| e.path().join(rel).is_dir()))
        .unwrap_or(false)
        || Path::new("/sys/fs/cgroup").join(rel).is_dir()
}
