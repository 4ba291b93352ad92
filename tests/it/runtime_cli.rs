//! ovlrun as an OCI runtime, driven by hand as a container manager drives runc (issue 15):
//! `create` / `start` / `state` / `kill` / `delete` / `run` / `list` / `features` over a
//! bundle made of `examples/rootfs` and `ovlrun spec`, as root and as the unprivileged user.
//! Where runc is installed, the same sequences run through it and must give the same state
//! keys and the same exit codes.
//!
//! `create` leaves the container's process holding its stdio, so every verb runs with its
//! output in files (a pipe would stay open until the container ends). Every container a test
//! makes is deleted with `delete --force` when its fixture drops, also when the test fails.

use std::cell::RefCell;
use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::session::{Caller, Session};
use crate::support::{Out, ovlrun_bin};

/// How long one verb may take.
const VERB_TIMEOUT: Duration = Duration::from_secs(30);

/// The runtime a fixture drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rt {
    Ovlrun,
    Runc,
}

/// A bundle (`config.json` over a private copy of `examples/rootfs`), a state root, a `ctl`
/// directory bound at `/ctl` inside (the container's way to tell the test things), and the
/// containers made, deleted at drop.
struct Bundle {
    session: Session,
    rt: Rt,
    bundle: PathBuf,
    root: PathBuf,
    ctl: PathBuf,
    made: RefCell<Vec<String>>,
}

impl Bundle {
    /// A bundle whose process runs `sh -c script`; `userns`: the config asks for a user
    /// namespace (as `ovlrun spec` writes it), else none (runc's default config as root).
    fn new(caller: Caller, rt: Rt, script: &str, userns: bool) -> Bundle {
        let session = Session::new(caller);
        let bundle = session.dir.path().to_owned();
        let ctl = session.dir.mkdir("ctl");
        session.give(&ctl);
        // The mount target, made as root: the user could not write the root-owned tree.
        fs::create_dir_all(session.rootfs.join("ctl")).unwrap();
        let root = session.home.join("run");
        let b = Bundle {
            session,
            rt,
            bundle,
            root,
            ctl,
            made: RefCell::new(Vec::new()),
        };
        b.configure(script, userns, false);
        b
    }

    /// Rewrites config.json: `ovlrun spec`'s, running `sh -c script`, with `/ctl` bound.
    fn configure(&self, script: &str, userns: bool, terminal: bool) {
        self.configure_with(script, userns, terminal, |_| {});
    }

    /// [`Bundle::configure`], then `edit` on the JSON.
    fn configure_with(
        &self,
        script: &str,
        userns: bool,
        terminal: bool,
        edit: impl FnOnce(&mut Value),
    ) {
        let spec = Command::new(ovlrun_bin())
            .args(["spec", "--rootfs", "rootfs"])
            .output()
            .unwrap();
        assert!(spec.status.success());
        let mut config: Value = serde_json::from_slice(&spec.stdout).unwrap();
        config["process"]["args"] = json!(["/bin/sh", "-c", script]);
        config["process"]["terminal"] = json!(terminal);
        config["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/ctl", "type": "bind", "source": self.ctl, "options": ["rbind", "rw"]}));
        if !userns {
            config["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|ns| ns["type"] != "user");
        }
        // An annotation to see in the state.
        config["annotations"] = json!({"test.ovlrun": "yes"});
        edit(&mut config);
        fs::write(
            self.bundle.join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
    }

    /// The runtime's command line, as the caller, with `--root` first.
    fn command(&self, args: &[&str]) -> Command {
        let bin = match self.rt {
            Rt::Ovlrun => ovlrun_bin(),
            Rt::Runc => "runc",
        };
        let mut cmd = Command::new(bin);
        self.session.caller.apply(&mut cmd, &self.session.home);
        cmd.arg("--root").arg(&self.root).args(args);
        cmd
    }

    /// Runs a verb with stdin closed and its output in files; fails the test past
    /// [`VERB_TIMEOUT`].
    #[track_caller]
    fn verb(&self, args: &[&str]) -> Out {
        let mut cmd = self.command(args);
        run_detached(&mut cmd, &self.session.dir.join("out"))
    }

    /// `create --bundle B --pid-file P ID` (recorded for the cleanup); returns the pid file.
    #[track_caller]
    fn create(&self, id: &str, extra: &[&str]) -> (Out, PathBuf) {
        self.made.borrow_mut().push(id.to_owned());
        let pid_file = self.session.home.join(format!("{id}.pid"));
        let mut args = vec!["create", "--bundle"];
        let bundle = self.bundle.to_str().unwrap().to_owned();
        let pid = pid_file.to_str().unwrap().to_owned();
        args.extend([bundle.as_str(), "--pid-file", pid.as_str()]);
        args.extend(extra);
        args.push(id);
        (self.verb(&args), pid_file)
    }

    /// `state ID` as JSON.
    #[track_caller]
    fn state(&self, id: &str) -> Value {
        let out = self.verb(&["state", id]);
        out.expect_ok();
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("state is no JSON: {e}\n{}", out.context()))
    }

    /// Waits until container `id`'s status is `want`.
    #[track_caller]
    fn wait_status(&self, id: &str, want: &str) -> Value {
        let deadline = Instant::now() + VERB_TIMEOUT;
        loop {
            let s = self.state(id);
            if s["status"] == want {
                return s;
            }
            assert!(Instant::now() < deadline, "{id} never became {want}: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `/ctl/NAME` exists inside, and returns its content.
    #[track_caller]
    fn wait_ctl(&self, name: &str) -> String {
        let path = self.ctl.join(name);
        let deadline = Instant::now() + VERB_TIMEOUT;
        while !path.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(20));
        fs::read_to_string(&path).unwrap()
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        for id in self.made.borrow().iter() {
            let _ = self.verb(&["delete", "--force", id]);
        }
    }
}

/// Runs `cmd` with stdin from /dev/null and stdout and stderr into files named after `base`,
/// so a process it leaves behind holding them does not keep the test waiting.
#[track_caller]
fn run_detached(cmd: &mut Command, base: &Path) -> Out {
    let (out_path, err_path) = (base.with_extension("stdout"), base.with_extension("stderr"));
    let what = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > VERB_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} took more than {VERB_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Out {
        what,
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        elapsed: start.elapsed(),
        timed_out: false,
    }
}

fn runc_installed() -> bool {
    Command::new("sh")
        .args(["-c", "command -v runc"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The status and parent of process `pid` from /proc.
fn proc_field(pid: i64, field: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

/// The whole life of a container: created (held before the user's program, pid written),
/// started (the program runs with create's stdio), killed, stopped, deleted, gone.
fn lifecycle(caller: Caller) {
    let b = Bundle::new(
        caller,
        Rt::Ovlrun,
        "echo ran > /ctl/started; echo to-stdout; while :; do sleep 0.05; done",
        true,
    );
    let (out, pid_file) = b.create("life", &[]);
    out.expect_ok();
    let pid: i64 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let s = b.state("life");
    assert_eq!(s["status"], "created", "{s}");
    assert_eq!(s["pid"], pid, "{s}");
    assert_eq!(s["id"], "life");
    assert_eq!(s["annotations"]["test.ovlrun"], "yes", "{s}");
    assert_eq!(
        Path::new(s["bundle"].as_str().unwrap()),
        b.bundle.canonicalize().unwrap()
    );
    // Held before the program: nothing it does has happened.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !b.ctl.join("started").exists(),
        "the program ran before start"
    );
    assert!(
        proc_field(pid, "State").is_some(),
        "the held process is gone"
    );

    b.verb(&["start", "life"]).expect_ok();
    assert_eq!(b.wait_ctl("started").trim(), "ran");
    assert_eq!(b.state("life")["status"], "running");
    // pid 1 is the program itself (sh), not an init of ovlrun's.
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "sh", "pid 1 is {comm}");
    let again = b.verb(&["start", "life"]);
    assert_eq!(
        again.code(),
        1,
        "start of a running container\n{}",
        again.context()
    );
    let busy = b.verb(&["delete", "life"]);
    assert_eq!(
        busy.code(),
        1,
        "delete of a running container\n{}",
        busy.context()
    );
    assert!(busy.stderr.contains("running"), "{}", busy.context());

    b.verb(&["kill", "life", "KILL"]).expect_ok();
    let s = b.wait_status("life", "stopped");
    assert_eq!(s["pid"], 0, "{s}");
    let late = b.verb(&["kill", "life", "KILL"]);
    assert_eq!(
        late.code(),
        1,
        "kill of a stopped container\n{}",
        late.context()
    );
    b.verb(&["kill", "--all", "life", "KILL"]).expect_ok();

    b.verb(&["delete", "life"]).expect_ok();
    let gone = b.verb(&["state", "life"]);
    assert_eq!(gone.code(), 1, "{}", gone.context());
    assert!(!b.root.join("life").exists());
}

#[test]
fn lifecycle_as_root() {
    lifecycle(require_caller!(root));
}

#[test]
fn lifecycle_as_the_unprivileged_user() {
    lifecycle(require_caller!(user));
}

/// The container's process inherits create's stdout and stderr (conmon and the shim give
/// it their pipes that way).
#[test]
fn the_container_writes_to_creates_stdio() {
    let caller = require_caller!(root);
    let b = Bundle::new(caller, Rt::Ovlrun, "echo out-line; echo err-line >&2", true);
    b.made.borrow_mut().push("io".into());
    let base = b.session.dir.join("create-io");
    let bundle = b.bundle.to_str().unwrap().to_owned();
    run_detached(
        &mut b.command(&["create", "--bundle", &bundle, "io"]),
        &base,
    )
    .expect_ok();
    b.verb(&["start", "io"]).expect_ok();
    b.wait_status("io", "stopped");
    assert_eq!(
        fs::read_to_string(base.with_extension("stdout")).unwrap(),
        "out-line\n"
    );
    assert!(
        fs::read_to_string(base.with_extension("stderr"))
            .unwrap()
            .contains("err-line"),
    );
}

/// Signals as runc reads them: 9, KILL, SIGKILL, and TERM by default, which a trap in the
/// program (pid 1 with a handler) receives.
#[test]
fn kill_takes_runcs_signal_forms() {
    let caller = require_caller!(root);
    let b = Bundle::new(
        caller,
        Rt::Ovlrun,
        "trap 'echo term > /ctl/got; exit 7' TERM; echo up > /ctl/up; while :; do sleep 0.05; done",
        true,
    );
    b.create("term", &[]).0.expect_ok();
    b.verb(&["start", "term"]).expect_ok();
    b.wait_ctl("up");
    b.verb(&["kill", "term"]).expect_ok();
    assert_eq!(b.wait_ctl("got").trim(), "term");
    b.wait_status("term", "stopped");
    b.verb(&["delete", "term"]).expect_ok();
    for (i, sig) in ["9", "KILL", "SIGKILL", "sigkill"].iter().enumerate() {
        let id = format!("k{i}");
        b.create(&id, &[]).0.expect_ok();
        b.verb(&["start", &id]).expect_ok();
        b.verb(&["kill", &id, sig]).expect_ok();
        b.wait_status(&id, "stopped");
    }
    let bad = b.verb(&["kill", "k0", "FLY"]);
    assert_eq!(bad.code(), 1, "{}", bad.context());
    assert!(bad.stderr.contains("FLY"), "{}", bad.context());
}

/// `delete --force` of a running container kills every process in it; `delete` of a created
/// one needs no force (runc's rule).
#[test]
fn delete_force_and_delete_of_a_created_container() {
    let caller = require_caller!(root);
    let b = Bundle::new(
        caller,
        Rt::Ovlrun,
        "sleep 1000 & echo $! > /ctl/child; while :; do sleep 0.05; done",
        true,
    );
    b.create("held", &[]).0.expect_ok();
    let (_, pid_file) = b.create("run", &[]);
    let held: i64 = fs::read_to_string(b.session.home.join("held.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    b.verb(&["delete", "held"]).expect_ok();
    assert!(proc_field(held, "State").is_none_or(|s| s.starts_with('Z')));
    b.verb(&["start", "run"]).expect_ok();
    b.wait_ctl("child");
    let pid: i64 = fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    b.verb(&["delete", "--force", "run"]).expect_ok();
    assert!(proc_field(pid, "State").is_none_or(|s| s.starts_with('Z')));
    assert!(!b.root.join("run").exists());
    let out = b.verb(&["delete", "--force", "never-was"]);
    assert_eq!(out.code(), 0, "{}", out.context());
    let out = b.verb(&["delete", "never-was"]);
    assert_eq!(out.code(), 1, "{}", out.context());
}

/// runc's `run` (a runtime flag before it): the program's exit status, the container
/// removed afterwards; `-d` leaves it running.
#[test]
fn run_is_create_start_wait_delete() {
    let caller = require_caller!(root);
    let b = Bundle::new(caller, Rt::Ovlrun, "echo ran > /ctl/ran; exit 3", true);
    let bundle = b.bundle.to_str().unwrap().to_owned();
    let out = b.verb(&["run", "--bundle", &bundle, "r1"]);
    assert_eq!(out.code(), 3, "{}", out.context());
    assert_eq!(b.wait_ctl("ran").trim(), "ran");
    assert_eq!(
        b.verb(&["state", "r1"]).code(),
        1,
        "run removes the container"
    );

    b.configure(
        "echo up > /ctl/up; while :; do sleep 0.05; done",
        true,
        false,
    );
    b.made.borrow_mut().push("r2".into());
    b.verb(&["run", "-d", "--bundle", &bundle, "r2"])
        .expect_ok();
    b.wait_ctl("up");
    assert_eq!(b.state("r2")["status"], "running");
}

/// Errors go to `--log` as JSON lines with level, msg and time when asked (containerd reads
/// them there), besides stderr; exit 1.
#[test]
fn errors_go_to_the_log_as_json_lines() {
    let caller = require_caller!(root);
    let b = Bundle::new(caller, Rt::Ovlrun, "true", true);
    let log = b.session.dir.join("log.json");
    let log_arg = format!("--log={}", log.display());
    let out = b.verb(&[&log_arg, "--log-format", "json", "state", "nosuch"]);
    assert_eq!(out.code(), 1, "{}", out.context());
    let text = fs::read_to_string(&log).unwrap();
    let line: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "error", "{text}");
    assert!(line["msg"].as_str().unwrap().contains("nosuch"), "{text}");
    assert!(line["time"].as_str().unwrap().ends_with('Z'), "{text}");
    let out = b.verb(&[
        "--systemd-cgroup",
        "create",
        "--bundle",
        "/nonexistent",
        "x",
    ]);
    assert_eq!(out.code(), 1, "{}", out.context());
    assert!(out.stderr.contains("systemd"), "{}", out.context());
}

/// `features` is runc's JSON shape; `list` shows the containers.
#[test]
fn features_and_list() {
    let caller = require_caller!(root);
    let b = Bundle::new(caller, Rt::Ovlrun, "while :; do sleep 0.05; done", true);
    let out = b.verb(&["features"]);
    out.expect_ok();
    let f: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(f["ociVersionMin"], "1.0.0");
    assert!(
        f["linux"]["namespaces"].as_array().unwrap().len() >= 6,
        "{f}"
    );
    b.create("listed", &[]).0.expect_ok();
    let out = b.verb(&["list", "--format", "json"]);
    let all: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(all[0]["id"], "listed", "{all}");
    assert_eq!(all[0]["status"], "created", "{all}");
    let out = b.verb(&["list", "-q"]);
    assert_eq!(out.stdout, "listed\n");
}

/// An id that is not one plain name, and a container directory replaced by a symlink, never
/// make ovlrun write, read or remove outside its root.
#[test]
fn ids_and_symlinks_never_reach_outside_the_root() {
    let caller = require_caller!(root);
    let b = Bundle::new(caller, Rt::Ovlrun, "true", true);
    let bundle = b.bundle.to_str().unwrap().to_owned();
    fs::create_dir_all(&b.root).unwrap();
    let outside = b.session.dir.mkdir("outside");
    fs::write(outside.join("keep"), "x").unwrap();
    for id in ["../outside", "..", ".", "a/b", "", "../escape"] {
        let out = b.verb(&["create", "--bundle", &bundle, id]);
        assert_eq!(out.code(), 1, "id {id:?}\n{}", out.context());
        for verb in ["state", "start", "delete"] {
            assert_eq!(b.verb(&[verb, id]).code(), 1, "{verb} {id:?}");
        }
    }
    assert!(!b.session.dir.join("escape").exists());
    std::os::unix::fs::symlink(&outside, b.root.join("planted")).unwrap();
    // A record beside the symlink's target naming a live process of the test's: a verb that
    // followed the symlink would signal it.
    let mut victim = Command::new("sleep").arg("100").spawn().unwrap();
    let vpid = i64::from(victim.id());
    let stat = fs::read_to_string(format!("/proc/{vpid}/stat")).unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let record = json!({"id": "planted", "pid": vpid, "pid_start": start, "bundle": "/",
        "rootfs": "/", "created": "", "oci_version": "1.0.2", "owner": 0});
    fs::write(outside.join("state.json"), record.to_string()).unwrap();
    for args in [
        &["delete", "--force", "planted"][..],
        &["state", "planted"],
        &["kill", "planted", "KILL"],
    ] {
        let _ = b.verb(args);
    }
    let alive = victim.try_wait().unwrap().is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    assert!(
        alive,
        "kill or delete signalled a process through the symlink"
    );
    assert!(
        outside.join("keep").exists(),
        "delete went through the symlink"
    );
    let out = b.verb(&["create", "--bundle", &bundle, "planted"]);
    assert_eq!(out.code(), 1, "{}", out.context());
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        2,
        "create wrote through the symlink"
    );
    // A root others may write in is refused.
    fs::set_permissions(&b.root, fs::Permissions::from_mode(0o777)).unwrap();
    let out = b.verb(&["state", "x"]);
    assert!(out.stderr.contains("others"), "{}", out.context());
}

/// With `process.terminal`, the pty's master comes over `--console-socket` (SCM_RIGHTS), as
/// conmon and containerd's shim take it; the program's stdio is that pty.
#[test]
fn a_terminal_goes_to_the_console_socket() {
    let caller = require_caller!(root);
    let b = Bundle::new(caller, Rt::Ovlrun, "true", true);
    b.configure("tty > /ctl/tty; echo on-the-pty; sleep 1", true, true);
    let sock = b.session.dir.join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let no_socket = b.create("t0", &[]).0;
    assert_eq!(no_socket.code(), 1, "a terminal without a console socket");
    let sock_arg = sock.to_str().unwrap().to_owned();
    let (out, _) = b.create("t1", &["--console-socket", &sock_arg]);
    out.expect_ok();
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 64];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = nix::sys::socket::recvmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(&conn.as_fd()),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let fd = msg
        .cmsgs()
        .unwrap()
        .find_map(|c| match c {
            nix::sys::socket::ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .expect("no fd came over the console socket");
    #[allow(unsafe_code)]
    // SAFETY: the kernel just installed this fd for us; nothing else owns it.
    let master = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    b.verb(&["start", "t1"]).expect_ok();
    assert!(b.wait_ctl("tty").starts_with("/dev/pts/"));
    let mut seen = String::new();
    let deadline = Instant::now() + VERB_TIMEOUT;
    while !seen.contains("on-the-pty") && Instant::now() < deadline {
        let mut chunk = [0u8; 256];
        match nix::unistd::read(&master, &mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&chunk[..n])),
        }
    }
    assert!(
        seen.contains("on-the-pty"),
        "read from the master: {seen:?}"
    );
}

/// The same sequences through runc and through ovlrun: the same state keys and statuses,
/// the same exit codes.
#[test]
fn state_keys_and_exit_codes_match_runc() {
    let caller = require_caller!(root);
    require!(runc_installed(), "find runc (scripts/setup.sh installs it)");
    let script = "echo up > /ctl/up; while :; do sleep 0.05; done";
    let mut seen = Vec::new();
    for rt in [Rt::Runc, Rt::Ovlrun] {
        let b = Bundle::new(caller.clone(), rt, script, false);
        let mut codes = Vec::new();
        b.create("c", &[]).0.expect_ok();
        let created = b.state("c");
        codes.push(b.verb(&["start", "c"]).code());
        b.wait_ctl("up");
        let running = b.state("c");
        codes.push(b.verb(&["start", "c"]).code());
        codes.push(b.verb(&["delete", "c"]).code());
        codes.push(b.verb(&["kill", "c", "KILL"]).code());
        b.wait_status("c", "stopped");
        codes.push(b.verb(&["kill", "c", "KILL"]).code());
        codes.push(b.verb(&["kill", "--all", "c", "KILL"]).code());
        let stopped = b.state("c");
        codes.push(b.verb(&["delete", "c"]).code());
        codes.push(b.verb(&["state", "c"]).code());
        codes.push(b.verb(&["delete", "c"]).code());
        codes.push(b.verb(&["delete", "--force", "c"]).code());
        codes.push(b.verb(&["start", "c"]).code());
        codes.push(b.verb(&["kill", "c"]).code());
        let keys = |v: &Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        seen.push((
            rt,
            keys(&created),
            [
                created["status"].clone(),
                running["status"].clone(),
                stopped["status"].clone(),
            ],
            stopped["pid"].clone(),
            codes,
        ));
    }
    let (_, runc_keys, runc_status, runc_pid, runc_codes) = &seen[0];
    let (_, keys, status, pid, codes) = &seen[1];
    assert_eq!(keys, runc_keys, "state keys");
    assert_eq!(status, runc_status, "statuses");
    assert_eq!(pid, runc_pid, "a stopped container's pid");
    assert_eq!(codes, runc_codes, "exit codes");
}

/// `exec`: a process in the running container's namespaces (its pid namespace: it sees pid 1;
/// its root), a descendant of the caller; its exit status is exec's; `--process` gives user,
/// groups, cwd and environment; `--detach` writes its pid and returns.
fn exec_into(caller: Caller) {
    let b = Bundle::new(
        caller,
        Rt::Ovlrun,
        "echo inside > /marker-dir-test 2>/dev/null; echo up > /ctl/up; while :; do sleep 0.05; done",
        true,
    );
    b.create("ex", &[]).0.expect_ok();
    b.verb(&["start", "ex"]).expect_ok();
    b.wait_ctl("up");
    let out = b.verb(&[
        "exec",
        "ex",
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$; test -d /ctl && echo root-ok",
    ]);
    out.expect_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].contains("while :"),
        "pid 1 is the container's\n{}",
        out.context()
    );
    assert_ne!(lines[1], "1", "{}", out.context());
    assert_eq!(lines[2], "root-ok", "{}", out.context());
    let code = b.verb(&["exec", "ex", "sh", "-c", "exit 42"]).code();
    assert_eq!(code, 42);

    let process = b.session.home.join("process.json");
    fs::write(
        &process,
        json!({"args": ["sh", "-c", "id -u; id -G; pwd; echo $A"], "cwd": "/ctl", "env": ["A=from-json"],
               "user": {"uid": 1, "gid": 2, "additionalGids": [5]}})
        .to_string(),
    )
    .unwrap();
    let p = process.to_str().unwrap().to_owned();
    let out = b.verb(&["exec", "--process", &p, "ex"]);
    out.expect_ok();
    assert_eq!(out.stdout, "1\n2 5\n/ctl\nfrom-json\n", "{}", out.context());

    let pid_file = b.session.home.join("exec.pid");
    let pf = pid_file.to_str().unwrap().to_owned();
    b.verb(&[
        "exec",
        "--detach",
        "--pid-file",
        &pf,
        "ex",
        "sh",
        "-c",
        "echo detached > /ctl/det; sleep 100",
    ])
    .expect_ok();
    assert_eq!(b.wait_ctl("det").trim(), "detached");
    let pid: i64 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "sleep",
        "the pid file names the exec'd process"
    );
    b.verb(&["kill", "ex", "KILL"]).expect_ok();
    b.wait_status("ex", "stopped");
    let stopped = b.verb(&["exec", "ex", "true"]);
    assert_eq!(
        stopped.code(),
        1,
        "exec in a stopped container\n{}",
        stopped.context()
    );
}

#[test]
fn exec_as_root() {
    exec_into(require_caller!(root));
}

#[test]
fn exec_as_the_unprivileged_user() {
    exec_into(require_caller!(user));
}

/// `ps --format json` lists the pids of the container's processes (pid 1 and a child), as
/// the caller sees them; the table keeps ps's header and only their lines.
#[test]
fn ps_lists_the_containers_processes() {
    let caller = require_caller!(root);
    let b = Bundle::new(
        caller,
        Rt::Ovlrun,
        "sleep 1000 & echo $! > /ctl/child; while :; do sleep 0.05; done",
        true,
    );
    let (out, pid_file) = b.create("ps", &[]);
    out.expect_ok();
    b.verb(&["start", "ps"]).expect_ok();
    b.wait_ctl("child");
    let pid: i64 = fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = b.verb(&["ps", "--format", "json", "ps"]);
    out.expect_ok();
    let pids: Vec<i64> = serde_json::from_str(&out.stdout).unwrap();
    assert!(pids.contains(&pid), "{pids:?} lacks pid 1 ({pid})");
    assert!(pids.len() >= 2, "{pids:?}: the sleep is missing");
    let me = i64::from(std::process::id());
    assert!(!pids.contains(&me), "the caller's own process is listed");
    let table = b.verb(&["ps", "ps"]);
    table.expect_ok();
    assert!(table.stdout.starts_with("UID"), "{}", table.context());
    assert!(table.stdout.contains("sleep 1000"), "{}", table.context());
    assert!(!table.stdout.contains("cargo"), "{}", table.context());
}

/// No device cgroup guards a container: root with CAP_MKNOD (no user namespace) makes a node
/// of the host's disk on a tmpfs the config mounts without `nodev`, and must not be able to
/// read through it (runc's device cgroup refuses the same).
#[test]
fn a_device_node_made_on_a_config_mount_opens_nothing() {
    let caller = require_caller!(root);
    let disk = fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .find(|e| !e.file_name().to_string_lossy().starts_with("loop"))
        .map(|e| fs::read_to_string(e.path().join("dev")).unwrap());
    require!(disk.is_some(), "find a block device in /sys/block");
    let (major, minor) = disk.as_deref().unwrap().trim().split_once(':').unwrap();
    let script = format!(
        "mknod /scratch/disk b {major} {minor} || {{ echo no-mknod > /ctl/out; exit; }}; \
         if head -c 512 /scratch/disk > /dev/null 2>&1; then echo read > /ctl/out; \
         else echo refused > /ctl/out; fi"
    );
    let b = Bundle::new(caller, Rt::Ovlrun, "true", false);
    b.configure_with(&script, false, false, |c| {
        c["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}),
        );
    });
    fs::create_dir_all(b.session.rootfs.join("scratch")).unwrap();
    let bundle = b.bundle.to_str().unwrap().to_owned();
    b.verb(&["run", "--bundle", &bundle, "dev"]).expect_ok();
    assert_eq!(b.wait_ctl("out").trim(), "refused");
}

/// `linux.resources` and `cgroupsPath` make the container's cgroup (its pids limit written),
/// `pause` freezes it (status paused, its counter stops), `resume` thaws it, `delete` removes
/// the cgroup.
#[test]
fn pause_resume_and_limits_through_the_cgroup() {
    let caller = require_caller!(root);
    let path = format!("/ovlrun-it-cli-{}", std::process::id());
    let b = Bundle::new(caller, Rt::Ovlrun, "true", true);
    b.configure_with(
        "i=0; while :; do i=$((i+1)); echo $i > /ctl/count; sleep 0.02; done",
        true,
        false,
        |c| {
            c["linux"]["cgroupsPath"] = json!(path);
            c["linux"]["resources"] = json!({"pids": {"limit": 77}});
        },
    );
    b.create("pz", &[]).0.expect_ok();
    b.verb(&["start", "pz"]).expect_ok();
    b.wait_ctl("count");
    let pids_max = [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
    ]
    .iter()
    .map(|h| {
        Path::new(h)
            .join(path.trim_start_matches('/'))
            .join("pids.max")
    })
    .find(|p| p.exists())
    .expect("the container's pids cgroup");
    assert_eq!(fs::read_to_string(&pids_max).unwrap().trim(), "77");
    b.verb(&["pause", "pz"]).expect_ok();
    assert_eq!(b.state("pz")["status"], "paused");
    let frozen = fs::read_to_string(b.ctl.join("count")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        fs::read_to_string(b.ctl.join("count")).unwrap(),
        frozen,
        "it ran while paused"
    );
    b.verb(&["resume", "pz"]).expect_ok();
    assert_eq!(b.state("pz")["status"], "running");
    let deadline = Instant::now() + VERB_TIMEOUT;
    while fs::read_to_string(b.ctl.join("count")).unwrap() == frozen {
        assert!(Instant::now() < deadline, "it never ran again after resume");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        b.verb(&["resume", "pz"]).code(),
        1,
        "resume of a running container"
    );
    // An exec'd process is in the container's cgroup.
    let pid_file = b.session.home.join("exec.pid");
    let pf = pid_file.to_str().unwrap().to_owned();
    b.verb(&["exec", "--detach", "--pid-file", &pf, "pz", "sleep", "100"])
        .expect_ok();
    let pid = fs::read_to_string(&pid_file).unwrap();
    let cgroups = fs::read_to_string(format!("/proc/{}/cgroup", pid.trim())).unwrap();
    assert!(
        cgroups.contains(&path),
        "exec'd process not in {path}:\n{cgroups}"
    );
    b.verb(&["delete", "--force", "pz"]).expect_ok();
    assert!(
        !pids_max.parent().unwrap().exists(),
        "delete left the cgroup"
    );
}

/// Hooks run as runc runs them, with the state JSON on stdin: prestart and createRuntime at
/// create (the process known by its pid), poststart after start, poststop at delete; a
/// failing prestart fails create and leaves no container.
#[test]
fn hooks_get_the_state_on_stdin() {
    let caller = require_caller!(root);
    let b = Bundle::new(caller, Rt::Ovlrun, "true", true);
    let ctl = b.ctl.display().to_string();
    let hook = |name: &str| {
        json!({"path": "/bin/sh", "args": ["sh", "-c", format!("{{ cat; echo; echo $X; }} > {ctl}/{name}.json")],
               "env": [format!("X=env-of-{name}")]})
    };
    b.configure_with("while :; do sleep 0.05; done", true, false, |c| {
        // startContainer runs inside the container's root: its paths are the container's.
        let inside = json!({"path": "/bin/sh", "args": ["sh", "-c", "{ cat; echo; echo $X; } > /ctl/startContainer.json"],
                            "env": ["X=env-of-startContainer"]});
        c["hooks"] = json!({"prestart": [hook("prestart")], "createRuntime": [hook("createRuntime")],
            "createContainer": [hook("createContainer")], "startContainer": [inside],
            "poststart": [hook("poststart")], "poststop": [hook("poststop")]});
    });
    let (out, pid_file) = b.create("hk", &[]);
    out.expect_ok();
    let pid: i64 = fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let read = |name: &str| -> (Value, String) {
        let text = fs::read_to_string(b.ctl.join(format!("{name}.json")))
            .unwrap_or_else(|e| panic!("hook {name} did not run: {e}"));
        let (json, env) = text.split_once('\n').unwrap();
        (serde_json::from_str(json).unwrap(), env.trim().to_owned())
    };
    for name in ["prestart", "createRuntime", "createContainer"] {
        let (state, env) = read(name);
        assert_eq!(
            (state["id"].as_str(), state["pid"].as_i64()),
            (Some("hk"), Some(pid)),
            "{state}"
        );
        assert_eq!(state["status"], "created");
        assert_eq!(env, format!("env-of-{name}"));
    }
    assert!(!b.ctl.join("poststart.json").exists());
    assert!(!b.ctl.join("startContainer.json").exists());
    b.verb(&["start", "hk"]).expect_ok();
    b.wait_ctl("startContainer.json");
    let (state, env) = read("startContainer");
    assert_eq!(
        (state["id"].as_str(), state["pid"].as_i64()),
        (Some("hk"), Some(pid)),
        "{state}"
    );
    assert_eq!(env, "env-of-startContainer");
    assert_eq!(read("poststart").0["status"], "running");
    b.verb(&["delete", "--force", "hk"]).expect_ok();
    assert_eq!(read("poststop").0["id"], "hk");

    b.configure_with("true", true, false, |c| {
        c["hooks"] = json!({"prestart": [{"path": "/bin/false"}]});
    });
    let (out, _) = b.create("bad", &[]);
    assert_eq!(out.code(), 1, "{}", out.context());
    assert!(
        out.stderr.contains("hooks.prestart[0]"),
        "{}",
        out.context()
    );
    assert_eq!(b.verb(&["state", "bad"]).code(), 1, "a container was left");
}

/// The two `run`s: runc's (a runtime flag before it) runs a container by id; a plain
/// `ovlrun run --bundle B` stays ovlrun's session over the bundle (the command after it is
/// the session's), and `--help` says which is which.
#[test]
fn runcs_run_and_ovlruns_run_coexist() {
    let caller = require_caller!(root);
    let b = Bundle::new(
        caller,
        Rt::Ovlrun,
        "echo from-the-bundle > /ctl/which",
        true,
    );
    let bundle = b.bundle.to_str().unwrap().to_owned();
    // ovlrun's session: the trailing words are its command, the bundle its settings.
    let mut session = Command::new(ovlrun_bin());
    session
        .env("OVLRUN_STATE", b.session.home.join("state"))
        .args([
            "run",
            "--bundle",
            &bundle,
            "--policy",
            "discard",
            "sh",
            "-c",
            "echo session > /ctl/which",
        ]);
    run_detached(&mut session, &b.session.dir.join("session")).expect_ok();
    assert_eq!(
        fs::read_to_string(b.ctl.join("which")).unwrap().trim(),
        "session"
    );
    // runc's: the last word is the container's id.
    b.verb(&["run", "--bundle", &bundle, "runc-style"])
        .expect_ok();
    assert_eq!(
        fs::read_to_string(b.ctl.join("which")).unwrap().trim(),
        "from-the-bundle"
    );
    let help = Command::new(ovlrun_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("runc's `run ID` needs a runtime flag"),
        "{help}"
    );
    let create = Command::new(ovlrun_bin())
        .args(["create", "--help"])
        .output()
        .unwrap();
    assert!(create.status.success());
    assert!(String::from_utf8_lossy(&create.stdout).contains("--console-socket"));
}

/// The annotation `org.ovlrun.policy` serves the bundle's root through a kernel overlay
/// whose upper is a session's: the root is untouched while the container runs, `ovlrun diff`
/// shows its writes, and the policy applies at `delete` (preserve keeps them, commit merges
/// them into the root, discard drops them).
#[test]
fn a_policy_annotation_makes_the_containers_writes_a_session() {
    let caller = require_caller!(root);
    require!(
        crate::support::can_mount_kernel_overlay(),
        "mount the kernel overlayfs"
    );
    let b = Bundle::new(caller, Rt::Ovlrun, "true", true);
    let state = b.session.home.join("state");
    let ovlrun = |args: &[&str]| {
        let mut cmd = Command::new(ovlrun_bin());
        cmd.env("OVLRUN_STATE", &state).args(args);
        run_detached(&mut cmd, &b.session.dir.join("ovlrun"))
    };
    let in_runtime = |args: &[&str]| {
        let mut cmd = b.command(args);
        cmd.env("OVLRUN_STATE", &state);
        run_detached(&mut cmd, &b.session.dir.join("rt"))
    };
    let bundle = b.bundle.to_str().unwrap().to_owned();
    for (policy, id) in [("preserve", "p1"), ("commit", "p2"), ("discard", "p3")] {
        let file = format!("/made-by-{id}");
        b.configure_with(
            &format!("echo {policy} > {file}; echo up > /ctl/{id}; while :; do sleep 0.05; done"),
            true,
            false,
            |c| c["annotations"] = json!({"org.ovlrun.policy": policy}),
        );
        b.made.borrow_mut().push(id.into());
        in_runtime(&["create", "--bundle", &bundle, id]).expect_ok();
        in_runtime(&["start", id]).expect_ok();
        b.wait_ctl(id);
        let host = b.session.rootfs.join(file.trim_start_matches('/'));
        assert!(
            !host.exists(),
            "{policy}: the container wrote into the bundle's root"
        );
        let listed = ovlrun(&["ls", "--json"]);
        let sessions: Value = serde_json::from_str(&listed.stdout).unwrap();
        let session = sessions
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["status"] == "running")
            .unwrap_or_else(|| panic!("{policy}: no running session\n{}", listed.context()))["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let diff = ovlrun(&["diff", &session]);
        assert!(
            diff.stdout.contains(&format!("A {file}")),
            "{}",
            diff.context()
        );
        in_runtime(&["delete", "--force", id]).expect_ok();
        let after = ovlrun(&["ls", "--json"]);
        let kept = after.stdout.contains(&session);
        match policy {
            "preserve" => assert!(kept && !host.exists(), "{}", after.context()),
            "commit" => {
                assert!(!kept, "{}", after.context());
                assert_eq!(fs::read_to_string(&host).unwrap().trim(), "commit");
            }
            _ => assert!(!kept && !host.exists(), "{}", after.context()),
        }
    }
}

/// Namespaces given by path are joined (as a Kubernetes pod's containers share the sandbox's):
/// a second container given the first's network, ipc, uts and pid namespaces sees its
/// processes and its hostname.
#[test]
fn namespaces_given_by_path_are_joined() {
    let caller = require_caller!(root);
    let b = Bundle::new(caller, Rt::Ovlrun, "true", false);
    b.configure_with(
        "hostname > /ctl/first; while :; do sleep 0.05; done",
        false,
        false,
        |c| {
            c["hostname"] = json!("sandbox-host");
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "network"}));
        },
    );
    let (out, pid_file) = b.create("first", &[]);
    out.expect_ok();
    b.verb(&["start", "first"]).expect_ok();
    b.wait_ctl("first");
    let pid = fs::read_to_string(pid_file).unwrap().trim().to_owned();
    b.configure_with(
        "hostname > /ctl/second; ps -o comm > /ctl/ps; ls /sys/class/net > /ctl/net",
        false,
        false,
        |c| {
            let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
            ns.retain(|n| !matches!(n["type"].as_str(), Some("uts" | "ipc" | "pid")));
            for (kind, file) in [
                ("network", "net"),
                ("ipc", "ipc"),
                ("uts", "uts"),
                ("pid", "pid"),
            ] {
                ns.push(json!({"type": kind, "path": format!("/proc/{pid}/ns/{file}")}));
            }
        },
    );
    b.made.borrow_mut().push("second".into());
    let bundle = b.bundle.to_str().unwrap().to_owned();
    b.verb(&["run", "--bundle", &bundle, "second"]).expect_ok();
    assert_eq!(b.wait_ctl("second").trim(), "sandbox-host");
    let ps = fs::read_to_string(b.ctl.join("ps")).unwrap();
    assert!(
        ps.lines().filter(|l| l.trim() == "sh").count() >= 2,
        "the first container's sh is not seen:\n{ps}"
    );
    let net = fs::read_to_string(b.ctl.join("net")).unwrap();
    assert_eq!(
        net.trim(),
        "lo",
        "the first container's network namespace has only lo"
    );
}
