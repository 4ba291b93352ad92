//! On-disk compatibility of the upper directory (DESIGN.md: "compatibility is a feature"):
//! - an upper written through ovlrun, mounted afterwards by the kernel overlayfs (`userxattr`),
//!   shows the same merged tree ovlrun showed before unmount;
//! - an upper written by the kernel overlayfs reads the same through ovlrun;
//! - lowers in the AUFS/OCI form (`.wh.NAME`, `.wh..wh..opq`) read as a flattened tree, and an
//!   upper written with `--whiteout aufs` (or the kernel form) stacks as a lower.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AT_FDCWD, RenameFlags};
use nix::sys::stat::Mode;

use crate::support::{
    self, KernelOverlay, MountArgs, OrPanic, OvlrunMount, TestDir, assert_trees_eq, mkdir, mkdir_p,
    set_xattr, symlink, tree_snapshot, whiteout_chardev, write,
};

macro_rules! compat_test {
    () => {
        require!(support::can_mount_fuse(), "mount FUSE (/dev/fuse)");
        require!(
            support::can_mount_kernel_overlay(),
            "mount the kernel overlayfs (userxattr)"
        );
        support::private_mount_ns();
    };
}

/// Two lowers (`l0` on top) with something for every kind of change to act on.
fn build_lowers(dir: &TestDir) -> (PathBuf, PathBuf) {
    let l1 = dir.mkdir("l1");
    mkdir_p(l1.join("a/sub"));
    write(l1.join("a/x"), "a/x\n");
    write(l1.join("a/sub/deep"), "deep\n");
    write(l1.join("b"), "b\n");
    set_xattr(l1.join("b"), "user.tag", b"lower");
    write(l1.join("gone_file"), "");
    mkdir_p(l1.join("gone_dir/inner"));
    write(l1.join("gone_dir/inner/f"), "");
    mkdir(l1.join("reborn"));
    write(l1.join("reborn/old"), "old\n");
    write(l1.join("ren_file"), "ren\n");
    mkdir_p(l1.join("ren_dir/inner"));
    write(l1.join("ren_dir/inner/f"), "in ren_dir\n");
    set_xattr(l1.join("ren_dir"), "user.d", b"1");
    write(l1.join("meta"), "meta\n");
    symlink("b", l1.join("link"));
    write(l1.join("hidden"), "hidden by l0\n");
    mkdir(l1.join("o"));
    write(l1.join("o/old"), "");

    let l0 = dir.mkdir("l0");
    mkdir(l0.join("a"));
    write(l0.join("a/y"), "a/y from l0\n");
    write(l0.join("c"), "c\n");
    whiteout_chardev(&l0.join("hidden"));
    mkdir(l0.join("o"));
    support::opaque_user(&l0.join("o"));
    write(l0.join("o/new"), "");
    (l0, l1)
}

/// The same changes, applied through whichever mount is at `root`. Directory renames are left
/// to the caller: the kernel refuses them for lower dirs (EXDEV).
fn apply_changes(root: &Path) {
    let p = |r: &str| root.join(r);
    write(p("a/x"), "a/x rewritten\n");
    fs::OpenOptions::new()
        .append(true)
        .open(p("b"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"more\n"))
        .or_panic("append", p("b"));
    fs::remove_file(p("gone_file")).or_panic("unlink", p("gone_file"));
    fs::remove_dir_all(p("gone_dir")).or_panic("rm -r", p("gone_dir"));
    fs::remove_dir_all(p("reborn")).or_panic("rm -r", p("reborn"));
    mkdir(p("reborn"));
    write(p("reborn/new"), "new\n");
    nix::fcntl::renameat2(
        AT_FDCWD,
        &p("ren_file"),
        AT_FDCWD,
        &p("ren_file2"),
        RenameFlags::empty(),
    )
    .or_panic("rename", p("ren_file"));
    support::chmod(p("meta"), 0o600);
    set_xattr(p("meta"), "user.k", b"v");
    std::os::unix::fs::chown(p("meta"), Some(100), Some(200)).or_panic("chown", p("meta"));
    nix::unistd::truncate(&p("a/y"), 2).or_panic("truncate", p("a/y"));
    symlink("a/x", p("newlink"));
    mkdir_p(p("newdir/sub"));
    write(p("newdir/sub/f"), "f\n");
    support::hard_link(p("newdir/sub/f"), p("newdir/hl"));
    xattr::remove(p("b"), "user.tag").or_panic("removexattr", p("b"));
    nix::unistd::mkfifo(&p("fifo"), Mode::from_bits_truncate(0o644)).or_panic("mkfifo", p("fifo"));
    fs::remove_file(p("o/new")).or_panic("unlink", p("o/new"));
    write(p("a/sub/deep2"), "deep2\n");
    fs::remove_file(p("a/sub/deep")).or_panic("unlink", p("a/sub/deep"));
}

struct Dirs {
    dir: TestDir,
    l0: PathBuf,
    l1: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let dir = TestDir::new();
        let (l0, l1) = build_lowers(&dir);
        Dirs { dir, l0, l1 }
    }

    fn lowers(&self) -> [&Path; 2] {
        [&self.l0, &self.l1]
    }
}

/// Writes through ovlrun (`renames` extra steps after the common changes), unmounts, and checks
/// the kernel shows what ovlrun showed.
fn ovlrun_then_kernel(renames: impl Fn(&Path)) {
    let d = Dirs::new();
    let (upper, mnt) = (d.dir.mkdir("upper"), d.dir.mkdir("mnt"));
    let m =
        OvlrunMount::start(&MountArgs::new(&d.lowers(), &upper, &mnt).work(&d.dir.mkdir("work")));
    apply_changes(&mnt);
    renames(&mnt);
    let seen_by_ovlrun = tree_snapshot(&mnt);
    let st = m.unmount();
    assert!(st.success(), "ovlrun exit status after umount: {st}");
    let k = KernelOverlay::mount(
        &d.lowers(),
        &upper,
        &d.dir.mkdir("kwork"),
        &d.dir.mkdir("kmnt"),
        "",
    );
    assert_trees_eq(
        "ovlrun before unmount",
        &seen_by_ovlrun,
        "kernel over the same upper",
        &tree_snapshot(k.path()),
    );
}

#[test]
fn ovlrun_upper_reads_the_same_through_the_kernel() {
    compat_test!();
    ovlrun_then_kernel(|_| {});
}

#[test]
fn ovlrun_upper_with_a_renamed_lower_dir_reads_the_same_through_the_kernel() {
    compat_test!();
    ovlrun_then_kernel(|mnt| {
        nix::fcntl::renameat2(
            AT_FDCWD,
            &mnt.join("ren_dir"),
            AT_FDCWD,
            &mnt.join("ren_dir2"),
            RenameFlags::empty(),
        )
        .or_panic("rename of a lower dir", mnt.join("ren_dir"));
        write(mnt.join("ren_dir2/inner/f2"), "added after the rename\n");
        // A lower dir renamed over another lower dir's place, then a new dir at the old name.
        nix::fcntl::renameat2(
            AT_FDCWD,
            &mnt.join("a"),
            AT_FDCWD,
            &mnt.join("a_moved"),
            RenameFlags::empty(),
        )
        .or_panic("rename of a merged dir", mnt.join("a"));
        mkdir(mnt.join("a"));
        write(mnt.join("a/fresh"), "");
    });
}

#[test]
fn kernel_upper_reads_the_same_through_ovlrun() {
    compat_test!();
    let d = Dirs::new();
    let (upper, kmnt) = (d.dir.mkdir("upper"), d.dir.mkdir("kmnt"));
    let k = KernelOverlay::mount(&d.lowers(), &upper, &d.dir.mkdir("kwork"), &kmnt, "");
    apply_changes(&kmnt);
    // What `mv` does for a lower dir under the kernel: copy, then remove.
    let (st, _, err) = support::run(
        std::process::Command::new("mv")
            .arg(kmnt.join("ren_dir"))
            .arg(kmnt.join("ren_dir2")),
    );
    assert!(st.success(), "mv on the kernel overlay: {err}");
    let seen_by_kernel = tree_snapshot(&kmnt);
    k.unmount();
    let mnt = d.dir.mkdir("mnt");
    let _m =
        OvlrunMount::start(&MountArgs::new(&d.lowers(), &upper, &mnt).work(&d.dir.mkdir("work")));
    let seen_by_ovlrun = tree_snapshot(&mnt);
    assert_trees_eq(
        "kernel before unmount",
        &seen_by_kernel,
        "ovlrun over the same upper",
        &seen_by_ovlrun,
    );
    let leaks = support::overlay_internals_visible(&mnt);
    assert!(
        leaks.is_empty(),
        "kernel's own xattrs (origin, impure...) visible through ovlrun: {leaks:?}"
    );
}

/// Builds `expected` as a plain directory tree and compares it with ovlrun's merged view.
#[test]
fn aufs_lower_reads_as_the_flattened_tree() {
    compat_test!();
    let dir = TestDir::new();
    // An OCI image: base layer l1, then a layer l0 with AUFS-style whiteouts.
    let l1 = dir.mkdir("l1");
    mkdir_p(l1.join("etc/conf.d"));
    write(l1.join("etc/passwd"), "root\n");
    write(l1.join("etc/conf.d/a"), "");
    write(l1.join("etc/conf.d/b"), "");
    mkdir_p(l1.join("var/cache/pkg"));
    write(l1.join("var/cache/pkg/x"), "");
    write(l1.join("var/keep"), "");
    write(l1.join("tmpfile"), "");
    let l0 = dir.mkdir("l0");
    mkdir_p(l0.join("etc/conf.d"));
    support::whiteout_aufs(&l0.join("etc/conf.d"), "a");
    write(l0.join("etc/conf.d/c"), "c\n");
    mkdir_p(l0.join("var/cache"));
    support::opaque_aufs(&l0.join("var/cache"));
    write(l0.join("var/cache/fresh"), "");
    support::whiteout_aufs(&l0, "tmpfile");
    let expected = dir.mkdir("expected");
    mkdir_p(expected.join("etc/conf.d"));
    write(expected.join("etc/passwd"), "root\n");
    write(expected.join("etc/conf.d/b"), "");
    write(expected.join("etc/conf.d/c"), "c\n");
    mkdir_p(expected.join("var/cache"));
    write(expected.join("var/cache/fresh"), "");
    write(expected.join("var/keep"), "");
    let mnt = dir.mkdir("mnt");
    let _m = OvlrunMount::start(
        &MountArgs::new(&[&l0, &l1], &dir.mkdir("upper"), &mnt).work(&dir.mkdir("work")),
    );
    let mut want = tree_snapshot(&expected);
    let got = tree_snapshot(&mnt);
    // The root's own mode/owner come from the layers, not from `expected`.
    want.insert(
        PathBuf::new(),
        got.get(Path::new("")).cloned().expect("root entry"),
    );
    assert_trees_eq("expected", &want, "ovlrun", &got);
}

/// An upper written in either whiteout form stacks as a lower (a preserved session, an OCI
/// layer): ovlrun over (that upper + the old lowers) shows what ovlrun showed over the upper.
fn upper_stacks_as_a_lower(style: &'static str) {
    let d = Dirs::new();
    let (upper, mnt) = (d.dir.mkdir("upper"), d.dir.mkdir("mnt"));
    let m = OvlrunMount::start(
        &MountArgs::new(&d.lowers(), &upper, &mnt)
            .work(&d.dir.mkdir("work"))
            .whiteout(style),
    );
    apply_changes(&mnt);
    let before = tree_snapshot(&mnt);
    assert!(m.unmount().success());
    let mnt2 = d.dir.mkdir("mnt2");
    let _m = OvlrunMount::start(
        &MountArgs::new(&[&upper, &d.l0, &d.l1], &d.dir.mkdir("upper2"), &mnt2)
            .work(&d.dir.mkdir("work2")),
    );
    assert_trees_eq(
        "ovlrun over the upper",
        &before,
        "ovlrun with it as a lower",
        &tree_snapshot(&mnt2),
    );
    assert_eq!(
        support::ls(d.dir.join("upper2")),
        Vec::<String>::new(),
        "reading must not write the new upper"
    );
}

#[test]
fn aufs_upper_stacks_as_a_lower() {
    compat_test!();
    upper_stacks_as_a_lower("aufs");
}

#[test]
fn kernel_form_upper_stacks_as_a_lower() {
    compat_test!();
    upper_stacks_as_a_lower("kernel");
}

#[test]
fn ovlrun_upper_stacks_as_a_kernel_lower() {
    compat_test!();
    let d = Dirs::new();
    let (upper, mnt) = (d.dir.mkdir("upper"), d.dir.mkdir("mnt"));
    let m =
        OvlrunMount::start(&MountArgs::new(&d.lowers(), &upper, &mnt).work(&d.dir.mkdir("work")));
    apply_changes(&mnt);
    let before = tree_snapshot(&mnt);
    assert!(m.unmount().success());
    let k = KernelOverlay::mount(
        &[&upper, &d.l0, &d.l1],
        &d.dir.mkdir("kupper"),
        &d.dir.mkdir("kwork"),
        &d.dir.mkdir("kmnt"),
        "",
    );
    let after = tree_snapshot(k.path());
    // The hard link made through ovlrun is two names of one upper inode: the kernel shows it
    // as such in a lower too, so link counts compare as well.
    assert_trees_eq(
        "ovlrun over the upper",
        &before,
        "kernel with it as a lower",
        &after,
    );
    assert!(fs::symlink_metadata(k.join("newdir/hl")).unwrap().nlink() == 2);
}
