//! The library's examples (`examples/*.rs`), built and run as a Rust program would use the
//! library: each over a private `cp -a` of `examples/rootfs` and its own state root, checked
//! by its output and by what it left on disk.
//!
//! `cargo test` builds the examples itself; a filtered run (`cargo test --test it`) does not,
//! so [`example`] builds them once per process with the cargo that runs the tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::policy::{Fixture, can_run_sessions, run_cmd};
use crate::support::{self, Frozen, Out, read_string, run_within};

/// How long `cargo build --examples` may take (a cold build of three small binaries).
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// The built example `name`, next to this test binary's profile directory.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    // target/<profile>/deps/it-HASH → target/<profile>/examples/NAME
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--examples", "--quiet"]);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        run_within(&mut cmd, BUILD_TIMEOUT).expect_ok();
    });
    let bin = profile_dir.join("examples").join(name);
    assert!(bin.is_file(), "no example binary at {}", bin.display());
    bin
}

/// Runs example `name` with `args`, under the sessions' time limit.
fn run_example(name: &str, args: &[&Path]) -> Out {
    run_cmd(Command::new(example(name)).args(args))
}

/// Asserts that stdout has the line `want`.
#[track_caller]
fn has_line(out: &Out, want: &str) {
    assert!(
        out.stdout.lines().any(|l| l == want),
        "stdout lacks the line {want:?}\n{}",
        out.context()
    );
}

#[test]
fn mount_overlay_writes_to_the_upper_only_and_unmounts() {
    require!(
        support::can_mount_fuse(),
        "mount FUSE (needs root and /dev/fuse)"
    );
    support::private_mount_ns();
    let f = Fixture::new();
    let scratch = f.dir.mkdir("scratch");
    let lower = Frozen::take(&f.rootfs);
    let out = run_example("mount_overlay", &[&f.rootfs, &scratch]);
    out.expect_ok();
    has_line(&out, "read through the overlay: etc/hostname = ovlrun");
    has_line(&out, "upper: etc/hostname = changed");
    has_line(&out, "lower: etc/hostname = ovlrun");
    assert_eq!(read_string(scratch.join("upper/etc/hostname")), "changed\n");
    lower.assert_unchanged(&f.rootfs, "the example's write");
    assert!(
        support::mount_at(&scratch.join("mnt")).is_none(),
        "the handle unmounted\n{}",
        out.context()
    );
}

#[test]
fn run_session_keeps_a_session_that_diff_export_lists_and_exports() {
    require!(can_run_sessions(), "launch sessions over examples/rootfs");
    let f = Fixture::new();
    let rootfs = Frozen::take(&f.rootfs);
    let out = run_example("run_session", &[&f.rootfs, &f.state, Path::new("preserve")]);
    out.expect_ok();
    has_line(&out, "hello from ovlrun");
    has_line(&out, "policy preserve: the command exited with 0");
    let id = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("kept session "))
        .unwrap_or_else(|| panic!("no kept session on stdout\n{}", out.context()));
    assert_eq!(f.session_ids(), [id], "the kept session is the only one");
    rootfs.assert_unchanged(&f.rootfs, "a preserved session");

    let tar = f.dir.join("layer.tar");
    let out = run_example("diff_export", &[Path::new(id), &f.state, &tar]);
    out.expect_ok();
    has_line(&out, "A /root/hello");
    has_line(&out, &format!("exported to {}", tar.display()));
    let listing = run_cmd(Command::new("tar").arg("-tf").arg(&tar));
    listing.expect_ok();
    assert!(
        listing.stdout.lines().any(|l| l == "root/hello"),
        "the layer holds root/hello\n{}",
        listing.context()
    );
    assert_eq!(f.session_ids(), [id], "diff and export keep the session");
}

#[test]
fn run_session_commits_and_discards() {
    require!(can_run_sessions(), "launch sessions over examples/rootfs");
    let f = Fixture::new();
    let rootfs = Frozen::take(&f.rootfs);
    let out = run_example("run_session", &[&f.rootfs, &f.state]);
    out.expect_ok();
    has_line(&out, "hello from ovlrun");
    has_line(&out, "policy discard: the command exited with 0");
    assert!(f.session_ids().is_empty(), "discard leaves no session");
    rootfs.assert_unchanged(&f.rootfs, "a discarded session");

    let out = run_example("run_session", &[&f.rootfs, &f.state, Path::new("commit")]);
    out.expect_ok();
    has_line(&out, "policy commit: the command exited with 0");
    assert_eq!(
        read_string(f.rootfs.join("root/hello")),
        "hello from ovlrun\n"
    );
    assert!(f.session_ids().is_empty(), "a committed session is removed");
}
