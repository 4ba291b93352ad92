//! Metadata-only copy-up through real mounts and sessions: chmod of a large lower file puts
//! a stub in the upper, not the data; the stub is completed at unmount (so the kernel
//! overlayfs reads the upper), and after a killed server before a commit.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::policy::{Fixture, RUN_TIMEOUT, can_run_sessions, run_cmd};
use crate::support::{self, Bg, KernelOverlay, MountArgs, OrPanic, OvlrunMount, TestDir};

/// Large enough for a stub (ovlrun copies files under 1 MiB whole).
const BIG: usize = 16 << 20;

const MARKER: &str = "user.overlay.ovlrun.metacopy";

fn pattern() -> Vec<u8> {
    (0..BIG).map(|i| (i % 239) as u8).collect()
}

fn is_stub(path: &Path) -> bool {
    xattr::get(path, MARKER).ok().flatten().is_some()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).or_panic("lstat", path).mode() & 0o7777
}

#[test]
fn chmod_through_a_mount_leaves_a_stub_completed_at_unmount() {
    require!(support::can_mount_fuse(), "mount FUSE (/dev/fuse)");
    support::private_mount_ns();
    let dir = TestDir::new();
    let (lower, upper, work, mnt) = (
        dir.mkdir("lower"),
        dir.mkdir("upper"),
        dir.mkdir("work"),
        dir.mkdir("mnt"),
    );
    let data = pattern();
    fs::write(lower.join("big"), &data).unwrap();
    let lower_blocks = fs::metadata(lower.join("big")).unwrap().blocks();
    let m = OvlrunMount::start(&MountArgs::new(&[&lower], &upper, &mnt).work(&work));
    let merged = mnt.join("big");
    fs::set_permissions(&merged, fs::Permissions::from_mode(0o600)).or_panic("chmod", &merged);

    let stub = upper.join("big");
    let st = fs::metadata(&stub).or_panic("stat", &stub);
    assert!(is_stub(&stub), "chmod put a full copy in the upper");
    assert!(
        st.blocks() * 512 < BIG as u64 / 4,
        "the stub holds data: {} blocks",
        st.blocks()
    );
    let seen = fs::metadata(&merged).unwrap();
    assert_eq!(seen.mode() & 0o7777, 0o600);
    assert_eq!(seen.len(), BIG as u64);
    assert_eq!(seen.blocks(), lower_blocks, "du sees the data's blocks");
    assert!(
        fs::read(&merged).unwrap() == data,
        "reads come from the lower"
    );
    drop(m);

    assert!(!is_stub(&stub), "still a stub after unmount");
    assert!(
        fs::read(&stub).unwrap() == data,
        "completed with the lower's data"
    );
    assert_eq!(mode(&stub), 0o600);
    let kmnt = dir.mkdir("kernel");
    let kwork = dir.mkdir("kwork");
    let _k = KernelOverlay::mount(&[&lower], &upper, &kwork, &kmnt, "");
    assert!(
        fs::read(kmnt.join("big")).unwrap() == data,
        "the kernel reads the upper"
    );
    assert_eq!(mode(&kmnt.join("big")), 0o600);
    assert!(
        fs::read(lower.join("big")).unwrap() == data,
        "lower untouched"
    );
}

/// A rootfs with a large file, for sessions.
fn rootfs_with_big_file() -> (Fixture, Vec<u8>) {
    let f = Fixture::new();
    let data = pattern();
    fs::write(f.rootfs.join("big"), &data).unwrap();
    fs::set_permissions(f.rootfs.join("big"), fs::Permissions::from_mode(0o644)).unwrap();
    (f, data)
}

#[test]
fn a_fuse_session_commits_a_chmod_of_a_large_file() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let (f, data) = rootfs_with_big_file();
    f.sh(&["--fs", "fuse", "--policy", "commit"], "chmod 600 /big")
        .expect_ok();
    assert_eq!(mode(&f.rootfs.join("big")), 0o600);
    assert!(
        fs::read(f.rootfs.join("big")).unwrap() == data,
        "data intact"
    );
    assert!(!is_stub(&f.rootfs.join("big")), "no marker in the rootfs");
}

#[test]
fn stubs_a_killed_server_left_are_completed_before_a_commit() {
    require!(
        can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let (f, data) = rootfs_with_big_file();
    let mut session = Bg::spawn(
        &mut f.session_cmd(
            &["--fs", "fuse", "--policy", "preserve"],
            "chmod 600 /big && echo changed && sleep 30",
        ),
        RUN_TIMEOUT,
    );
    session.wait_line("changed");
    let ids = f.session_ids();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let stub = f.upper_of(&ids[0]).join("big");
    assert!(is_stub(&stub), "the running session holds a stub");
    session.kill_now();
    assert!(is_stub(&stub), "the killed server left its stub");

    run_cmd(&mut f.ovlrun(&["commit", &ids[0]])).expect_ok();
    assert_eq!(mode(&f.rootfs.join("big")), 0o600);
    assert!(
        fs::read(f.rootfs.join("big")).unwrap() == data,
        "data intact"
    );
}
