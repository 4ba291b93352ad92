//! Durability where it is owed (issue 18): a discarded session syncs nothing (the kernel
//! backend mounts `volatile`, FUSE fsyncs no copy-up), a kept session's upper is synced once
//! at its end, `--durable` fsyncs every copy-up, and an upper the machine lost before its
//! sync is never committed.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::policy::{Fixture, can_run_sessions, run_cmd};
use crate::support::{can_mount_kernel_overlay, mkdir_p, write};

macro_rules! require_sessions {
    () => {
        require!(
            can_run_sessions(),
            "run sessions (root, /dev/fuse, busybox)"
        );
    };
}

/// The root overlay's line of the session's mountinfo, as the command sees it, and whether
/// its options say `volatile` (`fsync=volatile` since Linux 6.x).
fn root_mount(f: &Fixture, flags: &[&str]) -> (String, bool) {
    let out = f.sh(flags, "grep ' / / ' /proc/self/mountinfo");
    out.expect_ok();
    let line = out.stdout.trim().to_owned();
    assert!(
        line.contains(" - overlay "),
        "{flags:?}: root is not an overlay: {line}"
    );
    let options = line.rsplit(' ').next().unwrap_or("");
    let volatile = options
        .split(',')
        .any(|o| o == "volatile" || o == "fsync=volatile");
    (line, volatile)
}

/// The kernel backend mounts a session `volatile` (no fsync per copy-up) unless `--durable`;
/// a kept one is synced at its end and the kernel's mark removed, so it mounts again.
#[test]
fn the_kernel_backend_mounts_volatile_unless_durable_and_a_kept_upper_mounts_again() {
    require_sessions!();
    require!(can_mount_kernel_overlay(), "mount the kernel overlayfs");
    let f = Fixture::new();
    for policy in ["discard", "preserve"] {
        let (line, volatile) = root_mount(&f, &["--fs", "kernel", "--policy", policy]);
        assert!(
            volatile,
            "--policy {policy}: the root overlay is not volatile: {line}"
        );
    }
    let (line, volatile) = root_mount(&f, &["--fs", "kernel", "--policy", "discard", "--durable"]);
    assert!(!volatile, "--durable: the root overlay is volatile: {line}");
    let out = f.sh(
        &["--fs", "kernel", "--policy", "preserve"],
        "echo kept > /etc/kept",
    );
    out.expect_ok();
    let (id, _) = out.kept_session();
    let mut again = f.ovlrun(&[
        "run", "--resume", &id, "--policy", "preserve", "--fs", "kernel",
    ]);
    again.args(["--", "/bin/sh", "-c", "cat /etc/kept"]);
    run_cmd(&mut again).expect_ok().expect_stdout(&["kept"]);
}

/// How many `fsync` and `syncfs` calls an ovlrun command and all its threads and children
/// make (strace); the command must succeed.
fn syncs(cmd: Command, dir: &Path) -> (usize, usize) {
    let log = dir.join("strace.log");
    let mut traced = Command::new("strace");
    traced
        .args(["-f", "-qq", "-e", "trace=fsync,syncfs", "-o"])
        .arg(&log)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => traced.env(k, v),
            None => traced.env_remove(k),
        };
    }
    run_cmd(&mut traced).expect_ok();
    let text = fs::read_to_string(&log).unwrap();
    let count = |call: &str| {
        text.lines()
            .filter(|l| l.contains(&format!("{call}(")) && !l.contains("resumed>"))
            .count()
    };
    (count("fsync"), count("syncfs"))
}

fn has_strace() -> bool {
    Command::new("strace").arg("-V").output().is_ok()
}

/// FUSE copy-ups: none fsynced in a discarded session, each with `--durable`; a kept session
/// syncs its upper's filesystem once at its end, a discarded one never.
#[test]
fn copy_ups_are_fsynced_only_with_durable_and_a_kept_upper_is_synced_once() {
    require_sessions!();
    require!(has_strace(), "run strace");
    const FILES: usize = 40;
    let f = Fixture::new();
    mkdir_p(f.rootfs.join("etc/many"));
    for i in 0..FILES {
        write(f.rootfs.join(format!("etc/many/f{i}")), format!("{i}\n"));
    }
    let chmod = "chmod 600 /etc/many/f*";
    let run = |flags: &[&str]| {
        let mut all = vec!["--fs", "fuse"];
        all.extend_from_slice(flags);
        syncs(f.session_cmd(&all, chmod), &f.dir.join(""))
    };
    let (fsyncs, syncfs) = run(&["--policy", "discard"]);
    assert!(
        fsyncs < FILES / 4,
        "a discarded session fsynced {fsyncs} times for {FILES} copy-ups"
    );
    assert_eq!(syncfs, 0, "a discarded session synced its upper");
    let (durable, _) = run(&["--policy", "discard", "--durable"]);
    assert!(
        durable >= fsyncs + FILES,
        "--durable: {durable} fsyncs for {FILES} copy-ups (without: {fsyncs})"
    );
    let (kept_fsyncs, kept_syncfs) = run(&["--policy", "preserve"]);
    assert!(
        kept_fsyncs < FILES / 4,
        "a kept session fsynced {kept_fsyncs} times for {FILES} copy-ups"
    );
    assert!(kept_syncfs >= 1, "a kept session never synced its upper");
}

fn record(f: &Fixture, id: &str) -> serde_json::Value {
    let path = f.sessions_dir().join(id).join("session.json");
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn set_mark(f: &Fixture, id: &str, boot: &str) {
    let path = f.sessions_dir().join(id).join("session.json");
    let mut rec = record(f, id);
    rec["unsynced_boot"] = serde_json::Value::String(boot.to_owned());
    fs::write(path, serde_json::to_vec(&rec).unwrap()).unwrap();
}

/// A kept session ends synced (its record holds no mark); one whose mark names another boot
/// (the machine went down before the sync) is refused by commit, diff and export, with the
/// rootfs untouched, and can still be discarded; a mark of this boot (only ovlrun died) is
/// settled by a sync and the commit goes on.
#[test]
fn an_upper_the_machine_lost_before_its_sync_is_never_committed() {
    require_sessions!();
    let f = Fixture::new();
    let id = f.preserved("echo new > /etc/added && chmod 600 /etc/passwd");
    assert!(
        record(&f, &id).get("unsynced_boot").is_none(),
        "a kept session's record still says its upper is not synced: {}",
        record(&f, &id)
    );
    let before = fs::read(f.rootfs.join("etc/passwd")).unwrap();
    set_mark(&f, &id, "00000000-0000-0000-0000-000000000000");
    let out = run_cmd(&mut f.ovlrun(&["commit", &id]));
    out.expect_own_error(&["not yet on disk", &id]);
    assert!(!f.rootfs.join("etc/added").exists(), "committed anyway");
    assert_eq!(fs::read(f.rootfs.join("etc/passwd")).unwrap(), before);
    run_cmd(&mut f.ovlrun(&["diff", &id])).expect_own_error(&["not yet on disk"]);
    let layer = f.dir.join("layer.tar");
    let mut export = f.ovlrun(&["export", &id, "-o"]);
    export.arg(&layer);
    run_cmd(&mut export).expect_own_error(&["not yet on disk"]);

    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    set_mark(&f, &id, boot.trim());
    run_cmd(&mut f.ovlrun(&["commit", &id])).expect_ok();
    assert_eq!(
        fs::read_to_string(f.rootfs.join("etc/added")).unwrap(),
        "new\n"
    );

    let lost = f.preserved("echo lost > /etc/lost");
    set_mark(&f, &lost, "00000000-0000-0000-0000-000000000000");
    run_cmd(&mut f.ovlrun(&["discard", &lost])).expect_ok();
    f.assert_no_sessions("discarding a session whose upper was not synced");
}
