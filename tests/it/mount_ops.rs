//! Every filesystem operation through a real `ovlrun mount` (FUSE), checked in the merged view
//! and, where the on-disk format matters, in the upper directory itself. Plus the command line:
//! bad input exits 125 naming the path; SIGTERM/SIGINT/umount end the server with exit 0.
//!
//! Layout of most tests: three lowers `l0` (top) `l1` `l2` (bottom), `upper`, `work`, `mnt`,
//! all in the test's own directory; the test thread has its own mount namespace.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, FallocateFlags, RenameFlags};
use nix::sys::signal::Signal;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{AccessFlags, Gid, Uid, Whence};

use crate::support::{
    self, MountArgs, OrPanic, OvlrunMount, TestDir, errno, expect_errno, is_whiteout_chardev, ls,
    lstat, lstat_opt, mkdir, mkdir_p, read, read_string, set_xattr, symlink, whiteout_aufs,
    whiteout_chardev, write,
};

/// Skips (locally) or fails (in CI) without FUSE; then isolates the test's mounts.
macro_rules! mount_test {
    () => {
        require!(support::can_mount_fuse(), "mount FUSE (/dev/fuse)");
        support::private_mount_ns();
    };
}

/// Three lowers (`l[0]` on top), an upper, a work dir and a mount point in one test directory.
struct Fx {
    dir: TestDir,
    l: [PathBuf; 3],
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

impl Fx {
    fn new() -> Fx {
        let dir = TestDir::new();
        let l = [dir.mkdir("l0"), dir.mkdir("l1"), dir.mkdir("l2")];
        let (upper, work, mnt) = (dir.mkdir("upper"), dir.mkdir("work"), dir.mkdir("mnt"));
        Fx {
            dir,
            l,
            upper,
            work,
            mnt,
        }
    }

    fn args(&self) -> MountArgs {
        MountArgs::new(
            &[&self.l[0], &self.l[1], &self.l[2]],
            &self.upper,
            &self.mnt,
        )
        .work(&self.work)
    }

    fn mount(&self) -> OvlrunMount {
        OvlrunMount::start(&self.args())
    }

    /// `mnt/rel`
    fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// `upper/rel`
    fn u(&self, rel: &str) -> PathBuf {
        self.upper.join(rel)
    }
}

fn ino(p: &Path) -> u64 {
    lstat(p).ino()
}

/// Opens `path` with `opts`, panicking with the path and errno.
#[track_caller]
fn open(path: &Path, opts: &mut OpenOptions) -> File {
    opts.open(path).or_panic("open", path)
}

// ---------------------------------------------------------------------------------------------
// Lookup through layers

#[test]
fn lookup_goes_top_to_bottom_through_three_layers() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[2].join("only2"), "2");
    write(fx.l[1].join("only1"), "1");
    write(fx.l[0].join("only0"), "0");
    for (i, l) in fx.l.iter().enumerate() {
        write(l.join("shadowed"), format!("layer {i}"));
        mkdir_p(l.join("d/sub"));
        write(l.join(format!("d/sub/f{i}")), format!("deep {i}"));
    }
    write(fx.l[2].join("lowest_only_in_2"), "x");
    let _m = fx.mount();
    assert_eq!(read_string(fx.m("only2")), "2");
    assert_eq!(read_string(fx.m("only1")), "1");
    assert_eq!(read_string(fx.m("only0")), "0");
    assert_eq!(
        read_string(fx.m("shadowed")),
        "layer 0",
        "the topmost layer must win"
    );
    assert_eq!(ls(fx.m("d/sub")), ["f0", "f1", "f2"]);
    assert_eq!(read_string(fx.m("d/sub/f2")), "deep 2");
    expect_errno(
        errno(fs::symlink_metadata(fx.m("nope"))),
        Errno::ENOENT,
        "lstat",
        fx.m("nope"),
    );
    expect_errno(
        errno(fs::symlink_metadata(fx.m("d/nope/x"))),
        Errno::ENOENT,
        "lstat",
        fx.m("d/nope/x"),
    );
    // Reading through the mount never writes to the upper.
    assert_eq!(
        ls(&fx.upper),
        Vec::<String>::new(),
        "lookups must not copy anything up"
    );
}

#[test]
fn whiteouts_in_each_form_hide_lower_entries() {
    mount_test!();
    let fx = Fx::new();
    for name in ["wc", "wa", "wdir_c", "wdir_a", "deep_c", "keep"] {
        write(fx.l[2].join(name), "") // replaced below for the dirs
    }
    for name in ["wdir_c", "wdir_a"] {
        fs::remove_file(fx.l[2].join(name)).unwrap();
        mkdir_p(fx.l[2].join(format!("{name}/inner")));
    }
    // l1: kernel whiteout (char 0:0) and AUFS whiteout (.wh.NAME), for files and for dirs.
    whiteout_chardev(&fx.l[1].join("wc"));
    whiteout_aufs(&fx.l[1], "wa");
    whiteout_chardev(&fx.l[1].join("wdir_c"));
    whiteout_aufs(&fx.l[1], "wdir_a");
    // l0 whites out a name that only l2 has, through l1 which does not mention it.
    whiteout_chardev(&fx.l[0].join("deep_c"));
    // A whiteout in l1 of a name that l0 re-creates: l0 wins.
    write(fx.l[2].join("reborn"), "l2");
    whiteout_chardev(&fx.l[1].join("reborn"));
    write(fx.l[0].join("reborn"), "l0");
    let _m = fx.mount();
    for name in ["wc", "wa", "wdir_c", "wdir_a", "deep_c"] {
        expect_errno(
            errno(fs::symlink_metadata(fx.m(name))),
            Errno::ENOENT,
            "lstat whited-out",
            fx.m(name),
        );
    }
    expect_errno(
        errno(fs::symlink_metadata(fx.m("wdir_c/inner"))),
        Errno::ENOENT,
        "lstat",
        fx.m("wdir_c/inner"),
    );
    assert_eq!(
        ls(&fx.mnt),
        ["keep", "reborn"],
        "whiteouts and .wh. files must not be listed"
    );
    assert_eq!(read_string(fx.m("reborn")), "l0");
    // Opening a .wh. name directly must not reach the marker file either.
    expect_errno(
        errno(fs::symlink_metadata(fx.m(".wh.wa"))),
        Errno::ENOENT,
        "lstat",
        fx.m(".wh.wa"),
    );
}

#[test]
fn opaque_dirs_in_each_form_hide_lower_content() {
    mount_test!();
    let fx = Fx::new();
    let forms = ["trusted", "user", "aufs", "aufs_dir_opaque", "not_opaque"];
    for f in forms {
        mkdir_p(fx.l[2].join(f));
        write(fx.l[2].join(format!("{f}/from_l2")), "hidden");
        mkdir_p(fx.l[1].join(f));
        write(fx.l[1].join(format!("{f}/from_l1")), "visible");
    }
    support::opaque_trusted(&fx.l[1].join("trusted"));
    support::opaque_user(&fx.l[1].join("user"));
    support::opaque_aufs(&fx.l[1].join("aufs"));
    write(fx.l[1].join("aufs_dir_opaque/.wh.__dir_opaque"), "");
    // An opaque dir in the top layer hides everything under it, even from two layers down.
    mkdir_p(fx.l[0].join("user"));
    write(fx.l[0].join("user/from_l0"), "top");
    let _m = fx.mount();
    assert_eq!(ls(fx.m("trusted")), ["from_l1"], "trusted.overlay.opaque");
    assert_eq!(
        ls(fx.m("user")),
        ["from_l0", "from_l1"],
        "user.overlay.opaque"
    );
    assert_eq!(ls(fx.m("aufs")), ["from_l1"], ".wh..wh..opq");
    assert_eq!(ls(fx.m("aufs_dir_opaque")), ["from_l1"], ".wh.__dir_opaque");
    assert_eq!(
        ls(fx.m("not_opaque")),
        ["from_l1", "from_l2"],
        "a plain dir merges"
    );
    expect_errno(
        errno(fs::metadata(fx.m("user/from_l2"))),
        Errno::ENOENT,
        "stat",
        fx.m("user/from_l2"),
    );
    let leaks = support::overlay_internals_visible(&fx.mnt);
    assert!(leaks.is_empty(), "overlay internals visible: {leaks:?}");
}

#[test]
fn non_directory_hides_lower_directory_and_the_reverse() {
    mount_test!();
    let fx = Fx::new();
    mkdir_p(fx.l[2].join("n/inner"));
    write(fx.l[1].join("n"), "a file now");
    write(fx.l[2].join("m"), "was a file");
    mkdir_p(fx.l[1].join("m"));
    write(fx.l[1].join("m/in_m"), "");
    mkdir_p(fx.l[2].join("s"));
    symlink("n", fx.l[1].join("s"));
    let _m = fx.mount();
    assert!(lstat(fx.m("n")).is_file());
    assert_eq!(read_string(fx.m("n")), "a file now");
    expect_errno(
        errno(fs::symlink_metadata(fx.m("n/inner"))),
        Errno::ENOTDIR,
        "lstat",
        fx.m("n/inner"),
    );
    assert!(lstat(fx.m("m")).is_dir());
    assert_eq!(ls(fx.m("m")), ["in_m"]);
    assert!(
        lstat(fx.m("s")).file_type().is_symlink(),
        "a symlink hides a lower dir"
    );
}

// ---------------------------------------------------------------------------------------------
// readdir

#[test]
fn readdir_merges_layers_and_drops_duplicates() {
    mount_test!();
    let fx = Fx::new();
    for (i, l) in fx.l.iter().enumerate() {
        mkdir(l.join("d"));
        write(l.join("d/common"), format!("{i}"));
        write(l.join(format!("d/own{i}")), "");
        mkdir(l.join("d/subdir"));
    }
    let _m = fx.mount();
    write(fx.m("d/upper_new"), "");
    write(fx.m("d/common"), "rewritten"); // now also in the upper
    let names = raw_names(&fx.m("d"));
    assert_eq!(
        names,
        [
            ".",
            "..",
            "common",
            "own0",
            "own1",
            "own2",
            "subdir",
            "upper_new"
        ],
        "every name once, including . and .."
    );
    // d_type must agree with lstat.
    for e in fs::read_dir(fx.m("d")).unwrap() {
        let e = e.unwrap();
        let dt = e.file_type().unwrap();
        let st = lstat(e.path()).file_type();
        assert_eq!(dt.is_dir(), st.is_dir(), "d_type of {:?}", e.path());
        assert_eq!(dt.is_file(), st.is_file(), "d_type of {:?}", e.path());
    }
}

#[test]
fn readdir_never_shows_whiteouts_or_overlay_xattrs() {
    mount_test!();
    let fx = Fx::new();
    mkdir_p(fx.l[1].join("o"));
    support::opaque_user(&fx.l[1].join("o"));
    mkdir_p(fx.l[0].join("t"));
    support::opaque_trusted(&fx.l[0].join("t"));
    set_xattr(fx.l[0].join("t"), "user.mine", b"kept");
    write(fx.l[2].join("gone"), "");
    whiteout_chardev(&fx.l[1].join("gone"));
    whiteout_aufs(&fx.l[1], "gone2");
    write(fx.l[2].join("gone2"), "");
    support::opaque_aufs(&fx.l[0].join("t"));
    let _m = fx.mount();
    write(fx.m("x"), "");
    fs::remove_file(fx.m("x")).unwrap();
    mkdir(fx.m("newdir"));
    let leaks = support::overlay_internals_visible(&fx.mnt);
    assert!(leaks.is_empty(), "overlay internals visible: {leaks:?}");
    let names: Vec<OsString> = xattr::list(fx.m("t")).unwrap().collect();
    assert_eq!(
        names,
        [OsString::from("user.mine")],
        "listxattr of an opaque dir"
    );
    // Hidden either way: the kernel overlayfs answers EOPNOTSUPP for its own names, a plain
    // file system ENODATA; what must never come back is the value.
    for (dir, name) in [
        ("o", "user.overlay.opaque"),
        ("t", "trusted.overlay.opaque"),
    ] {
        match errno(xattr::get(fx.m(dir), name)) {
            Ok(None) | Err(Errno::EOPNOTSUPP) => {}
            other => panic!(
                "getxattr {name} on {}: {other:?}, expected hidden",
                fx.m(dir).display()
            ),
        }
    }
    assert_eq!(ls(&fx.mnt), ["newdir", "o", "t"]);
}

/// `getdents64` with a caller-sized buffer: returns (name, d_off) of the entries it got.
fn getdents(dir: BorrowedFd<'_>, buf_len: usize) -> Result<Vec<(Vec<u8>, i64)>, Errno> {
    let mut buf = vec![0u8; buf_len];
    // SAFETY: `buf` is writable for `buf.len()` bytes and outlives the call; `dir` is an open fd.
    #[allow(unsafe_code)]
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    let n = Errno::result(n)? as usize;
    let mut out = Vec::new();
    let mut pos = 0;
    // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
    while pos < n {
        let off = i64::from_ne_bytes(buf[pos + 8..pos + 16].try_into().unwrap());
        let reclen = u16::from_ne_bytes(buf[pos + 16..pos + 18].try_into().unwrap()) as usize;
        let name = &buf[pos + 19..pos + reclen];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        out.push((name.to_vec(), off));
        pos += reclen;
    }
    Ok(out)
}

/// All names of a directory via raw `getdents64`, `.` and `..` included, sorted.
fn raw_names(dir: &Path) -> Vec<String> {
    let f = File::open(dir).or_panic("open dir", dir);
    let mut names = Vec::new();
    loop {
        let batch = getdents(f.as_fd(), 4096).or_panic("getdents64", dir);
        if batch.is_empty() {
            break;
        }
        names.extend(
            batch
                .into_iter()
                .map(|(n, _)| String::from_utf8_lossy(&n).into_owned()),
        );
    }
    names.sort();
    names
}

#[test]
fn rm_rf_of_a_big_merged_dir_while_listing() {
    mount_test!();
    let fx = Fx::new();
    let mut all = std::collections::BTreeSet::new();
    for (i, l) in fx.l.iter().enumerate() {
        mkdir(l.join("big"));
        for j in 0..200 {
            write(l.join(format!("big/l{i}_{j:03}")), "");
            all.insert(format!("l{i}_{j:03}"));
        }
        for j in 0..50 {
            write(l.join(format!("big/shared_{j:02}")), format!("{i}"));
        }
    }
    all.extend((0..50).map(|j| format!("shared_{j:02}")));
    let _m = fx.mount();
    for j in 0..100 {
        write(fx.m(&format!("big/u_{j:03}")), "");
        all.insert(format!("u_{j:03}"));
    }
    // Read in small chunks and unlink what each chunk returned before reading on: a stable
    // listing returns every name exactly once.
    let dir = File::open(fx.m("big")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let batch = getdents(dir.as_fd(), 256).or_panic("getdents64", fx.m("big"));
        if batch.is_empty() {
            break;
        }
        for (name, _) in batch {
            let name = String::from_utf8(name).unwrap();
            if name == "." || name == ".." {
                continue;
            }
            assert!(
                seen.insert(name.clone()),
                "{name} listed twice while deleting"
            );
            fs::remove_file(fx.m(&format!("big/{name}")))
                .or_panic("unlink", fx.m(&format!("big/{name}")));
        }
    }
    drop(dir);
    assert_eq!(seen, all, "every entry listed exactly once while deleting");
    assert_eq!(ls(fx.m("big")), Vec::<String>::new());
    fs::remove_dir(fx.m("big")).or_panic("rmdir", fx.m("big"));
    // And the real tool, on a second big dir.
    mkdir(fx.m("big2"));
    for j in 0..500 {
        write(fx.m(&format!("big2/f{j}")), "");
    }
    let (st, _, err) = support::run(Command::new("rm").arg("-rf").arg(fx.m("big2")));
    assert!(st.success(), "rm -rf failed: {err}");
    assert!(lstat_opt(fx.m("big2")).is_none());
    assert!(
        is_whiteout_chardev(&fx.u("big")),
        "big exists in lowers: its removal needs a whiteout"
    );
    assert!(
        lstat_opt(fx.u("big2")).is_none(),
        "big2 was upper-only: no whiteout"
    );
}

#[test]
fn readdir_offsets_are_stable_for_seekdir() {
    mount_test!();
    let fx = Fx::new();
    mkdir(fx.l[1].join("d"));
    mkdir(fx.l[2].join("d"));
    for j in 0..40 {
        write(
            fx.l[1 + j % 2].join(format!("d/name_with_some_length_{j:02}")),
            "",
        );
    }
    let _m = fx.mount();
    let dir = File::open(fx.m("d")).unwrap();
    let first = getdents(dir.as_fd(), 200).unwrap();
    assert!(
        first.len() >= 3,
        "expected a few entries in a 200-byte buffer, got {first:?}"
    );
    let rest1 = getdents(dir.as_fd(), 200).unwrap();
    // seekdir(telldir()) after the first chunk: lseek to the d_off of its last entry.
    let off = first.last().unwrap().1;
    nix::unistd::lseek(dir.as_fd(), off, Whence::SeekSet).or_panic("lseek", fx.m("d"));
    let rest2 = getdents(dir.as_fd(), 200).unwrap();
    assert_eq!(
        rest1, rest2,
        "resuming at a d_off must give the same entries"
    );
    // Offset of an entry in the middle of a chunk.
    let mid = first[1].1;
    nix::unistd::lseek(dir.as_fd(), mid, Whence::SeekSet).unwrap();
    let again = getdents(dir.as_fd(), 200).unwrap();
    assert_eq!(
        again[0].0, first[2].0,
        "seek to the d_off of entry 1 must continue at entry 2"
    );
    // Rewind gives everything again.
    nix::unistd::lseek(dir.as_fd(), 0, Whence::SeekSet).unwrap();
    let mut total = 0;
    loop {
        let b = getdents(dir.as_fd(), 200).unwrap();
        if b.is_empty() {
            break;
        }
        total += b.len();
    }
    assert_eq!(total, 42, "40 names plus . and .. after rewinddir");
}

// ---------------------------------------------------------------------------------------------
// Copy-up

#[test]
fn copy_up_keeps_data_mode_owner_and_xattrs() {
    mount_test!();
    let fx = Fx::new();
    let f = fx.l[1].join("dir/f");
    mkdir_p(f.parent().unwrap());
    support::chmod(fx.l[1].join("dir"), 0o750);
    std::os::unix::fs::chown(fx.l[1].join("dir"), Some(4321), Some(8765)).unwrap();
    set_xattr(fx.l[1].join("dir"), "user.dirattr", b"d");
    write(&f, "lower data\n");
    support::chmod(&f, 0o640);
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    set_xattr(&f, "user.one", b"1");
    set_xattr(&f, "user.two", b"");
    let _m = fx.mount();
    open(&fx.m("dir/f"), OpenOptions::new().append(true))
        .write_all(b"appended\n")
        .unwrap();
    assert_eq!(read_string(fx.m("dir/f")), "lower data\nappended\n");
    let up = fx.u("dir/f");
    let md = lstat(&up);
    assert_eq!(md.mode() & 0o7777, 0o640, "mode copied up");
    assert_eq!((md.uid(), md.gid()), (1234, 5678), "owner copied up");
    assert_eq!(
        xattr::get(&up, "user.one").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        xattr::get(&up, "user.two").unwrap().as_deref(),
        Some(&b""[..])
    );
    assert_eq!(read_string(&up), "lower data\nappended\n");
    let pd = lstat(fx.u("dir"));
    assert_eq!(pd.mode() & 0o7777, 0o750, "parent dir mode copied up");
    assert_eq!(
        (pd.uid(), pd.gid()),
        (4321, 8765),
        "parent dir owner copied up"
    );
    assert_eq!(
        xattr::get(fx.u("dir"), "user.dirattr").unwrap().as_deref(),
        Some(&b"d"[..])
    );
    assert_eq!(
        read_string(&f),
        "lower data\n",
        "the lower is never written"
    );
    // No half-copies lying around in the upper.
    assert_eq!(ls(fx.u("dir")), ["f"]);
}

#[test]
fn copy_up_keeps_timestamps() {
    mount_test!();
    let fx = Fx::new();
    let f = fx.l[2].join("old");
    write(&f, "old data");
    let t = TimeSpec::new(1_000_000_000, 123_456_789);
    nix::sys::stat::utimensat(AT_FDCWD, &f, &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
    mkdir(fx.l[2].join("olddir"));
    nix::sys::stat::utimensat(
        AT_FDCWD,
        &fx.l[2].join("olddir"),
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    write(fx.l[2].join("olddir/g"), "");
    nix::sys::stat::utimensat(
        AT_FDCWD,
        &fx.l[2].join("olddir"),
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    let _m = fx.mount();
    // Metadata-only changes copy up without touching mtime.
    set_xattr(fx.m("old"), "user.x", b"1");
    support::chmod(fx.m("olddir/g"), 0o600);
    for (p, what) in [(fx.u("old"), "file"), (fx.m("old"), "file via mount")] {
        let md = lstat(&p);
        assert_eq!(
            (md.mtime(), md.mtime_nsec()),
            (1_000_000_000, 123_456_789),
            "{what} mtime kept on copy-up"
        );
    }
    let d = lstat(fx.u("olddir"));
    assert_eq!(d.mtime(), 1_000_000_000, "parent dir mtime kept on copy-up");
    assert_eq!(read_string(fx.m("old")), "old data");
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf) -> Tmpfs {
        nix::mount::mount(
            Some("tmpfs"),
            &at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=512m"),
        )
        .or_panic("mount a tmpfs on", &at);
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The upper on another filesystem than the lower (the usual rootfs and state directory):
/// copy_file_range refuses to cross them, and the copy-up falls back.
#[test]
fn copy_up_across_filesystems_keeps_data_and_holes() {
    mount_test!();
    let fx = Fx::new();
    let tmp = Tmpfs::mount(fx.dir.mkdir("tmpfs"));
    let (upper, work) = (tmp.0.join("upper"), tmp.0.join("work"));
    mkdir(&upper);
    mkdir(&work);
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let f = fx.l[0].join("sparse");
    let file = File::create(&f).unwrap();
    file.write_all_at(&data, 4096).unwrap();
    file.write_all_at(&data[..1 << 20], 64 << 20).unwrap();
    file.set_len(96 << 20).unwrap();
    drop(file);
    let m = OvlrunMount::start(&MountArgs::new(&[&fx.l[0]], &upper, &fx.mnt).work(&work));
    open(&m.join("sparse"), OpenOptions::new().append(true))
        .write_all(b"end")
        .unwrap();
    drop(m);
    let mut want = fs::read(&f).unwrap();
    want.extend_from_slice(b"end");
    let got = fs::read(upper.join("sparse")).or_panic("read the copy in", &upper);
    assert!(
        got == want,
        "the upper copy differs from the lower data plus the append"
    );
    let blocks = lstat(upper.join("sparse")).blocks();
    assert!(
        blocks < 2 * lstat(&f).blocks() + 64,
        "the copy-up filled the holes: {blocks} blocks"
    );
}

#[test]
fn copy_up_keeps_holes_of_a_sparse_file() {
    mount_test!();
    let fx = Fx::new();
    let f = fx.l[1].join("sparse");
    let file = File::create(&f).unwrap();
    file.write_all_at(&[7u8; 4096], 0).unwrap();
    file.write_all_at(&[9u8; 4096], 64 << 20).unwrap();
    file.set_len(128 << 20).unwrap();
    drop(file);
    let lower_blocks = lstat(&f).blocks();
    assert!(
        lower_blocks < 1024,
        "the lower file should be sparse (blocks {lower_blocks})"
    );
    let _m = fx.mount();
    open(&fx.m("sparse"), OpenOptions::new().write(true))
        .write_all_at(b"X", 1)
        .unwrap();
    let up = lstat(fx.u("sparse"));
    assert_eq!(up.len(), 128 << 20);
    assert!(
        up.blocks() <= lower_blocks + 64,
        "copy-up filled the holes: upper st_blocks {} vs lower {lower_blocks}",
        up.blocks()
    );
    let mut b = [0u8; 2];
    File::open(fx.m("sparse"))
        .unwrap()
        .read_exact_at(&mut b, 64 << 20)
        .unwrap();
    assert_eq!(b, [9, 9]);
    File::open(fx.m("sparse"))
        .unwrap()
        .read_exact_at(&mut b, 0)
        .unwrap();
    assert_eq!(b, [7, b'X']);
    assert_eq!(
        lstat(fx.m("sparse")).blocks(),
        up.blocks(),
        "st_blocks through the mount"
    );
}

#[test]
fn symlinks_are_copied_as_symlinks_never_followed() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("target"), "target data");
    symlink("target", fx.l[1].join("s"));
    symlink("nowhere/at/all", fx.l[1].join("dangling"));
    mkdir(fx.l[1].join("d"));
    symlink("../target", fx.l[1].join("d/up"));
    let _m = fx.mount();
    assert_eq!(
        fs::read_link(fx.m("dangling")).unwrap(),
        Path::new("nowhere/at/all"),
        "dangling symlink readable"
    );
    expect_errno(
        errno(fs::metadata(fx.m("dangling"))),
        Errno::ENOENT,
        "stat (following)",
        fx.m("dangling"),
    );
    assert_eq!(read_string(fx.m("d/up")), "target data");
    // Force copy-up of the links themselves: lchown, rename.
    nix::unistd::fchownat(
        AT_FDCWD,
        &fx.m("s"),
        Some(Uid::from_raw(42)),
        Some(Gid::from_raw(43)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .or_panic("lchown", fx.m("s"));
    fs::rename(fx.m("dangling"), fx.m("dangling2")).or_panic("rename", fx.m("dangling"));
    fs::rename(fx.m("d/up"), fx.m("d/up2")).or_panic("rename", fx.m("d/up"));
    let s = lstat(fx.u("s"));
    assert!(
        s.file_type().is_symlink(),
        "the upper copy of a symlink is a symlink"
    );
    assert_eq!((s.uid(), s.gid()), (42, 43));
    assert_eq!(fs::read_link(fx.u("s")).unwrap(), Path::new("target"));
    assert_eq!(
        fs::read_link(fx.m("dangling2")).unwrap(),
        Path::new("nowhere/at/all")
    );
    assert_eq!(
        fs::read_link(fx.u("dangling2")).unwrap(),
        Path::new("nowhere/at/all")
    );
    assert_eq!(
        fs::read_link(fx.m("d/up2")).unwrap(),
        Path::new("../target")
    );
    assert!(
        lstat_opt(fx.u("target")).is_none(),
        "the symlink target must not be copied up"
    );
    assert!(
        lstat(fx.l[1].join("s")).uid() != 42,
        "the lower link is untouched"
    );
}

#[test]
fn chmod_chown_truncate_utimens_on_lower_files() {
    mount_test!();
    let fx = Fx::new();
    for n in ["m", "o", "t", "u"] {
        write(fx.l[2].join(n), "0123456789");
        support::chmod(fx.l[2].join(n), 0o644);
    }
    let _m = fx.mount();
    support::chmod(fx.m("m"), 0o4710);
    std::os::unix::fs::chown(fx.m("o"), Some(777), Some(888)).unwrap();
    nix::unistd::truncate(&fx.m("t"), 4).unwrap();
    let t = TimeSpec::new(1_234_567_890, 5);
    nix::sys::stat::utimensat(AT_FDCWD, &fx.m("u"), &t, &t, UtimensatFlags::FollowSymlink).unwrap();
    assert_eq!(lstat(fx.m("m")).mode() & 0o7777, 0o4710);
    assert_eq!((lstat(fx.m("o")).uid(), lstat(fx.m("o")).gid()), (777, 888));
    assert_eq!(read_string(fx.m("t")), "0123");
    assert_eq!(lstat(fx.m("t")).len(), 4);
    let u = lstat(fx.m("u"));
    assert_eq!(
        (u.mtime(), u.mtime_nsec(), u.atime(), u.atime_nsec()),
        (1_234_567_890, 5, 1_234_567_890, 5)
    );
    // The data of metadata-only changes is intact.
    for n in ["m", "o", "u"] {
        assert_eq!(read_string(fx.m(n)), "0123456789", "{n}");
    }
    for n in ["m", "o", "t", "u"] {
        let md = lstat(fx.l[2].join(n));
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.len()),
            (0o644, 0, 10),
            "lower {n} untouched"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Special files

#[test]
fn mknod_fifo_and_devices_and_char_0_0_is_refused() {
    mount_test!();
    let fx = Fx::new();
    let _m = fx.mount();
    nix::unistd::mkfifo(&fx.m("fifo"), Mode::from_bits_truncate(0o640))
        .or_panic("mkfifo", fx.m("fifo"));
    assert!(lstat(fx.m("fifo")).file_type().is_fifo());
    assert!(lstat(fx.u("fifo")).file_type().is_fifo());
    if support::is_root() {
        let null = libc::makedev(1, 3);
        nix::sys::stat::mknod(
            &fx.m("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            null,
        )
        .or_panic("mknod c 1 3", fx.m("null"));
        let md = lstat(fx.m("null"));
        assert!(md.file_type().is_char_device());
        assert_eq!(md.rdev(), null);
        let loop0 = libc::makedev(7, 0);
        nix::sys::stat::mknod(
            &fx.m("blk"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o660),
            loop0,
        )
        .or_panic("mknod b 7 0", fx.m("blk"));
        assert!(lstat(fx.m("blk")).file_type().is_block_device());
        assert_eq!(lstat(fx.m("blk")).rdev(), loop0);
        // char 0:0 is the overlay whiteout: the kernel overlayfs answers EPERM, so must we.
        expect_errno(
            nix::sys::stat::mknod(
                &fx.m("wh"),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                0,
            ),
            Errno::EPERM,
            "mknod c 0 0",
            fx.m("wh"),
        );
        assert!(
            lstat_opt(fx.m("wh")).is_none(),
            "nothing visible after the refused mknod"
        );
        assert!(
            lstat_opt(fx.u("wh")).is_none(),
            "no 0:0 device in the upper"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// mkdir / rmdir / unlink

#[test]
fn rmdir_of_a_merged_dir_that_is_not_empty_fails() {
    mount_test!();
    let fx = Fx::new();
    mkdir(fx.l[2].join("d"));
    write(fx.l[2].join("d/f"), "");
    mkdir(fx.l[1].join("d"));
    mkdir(fx.l[1].join("e"));
    let _m = fx.mount();
    expect_errno(
        errno(fs::remove_dir(fx.m("d"))),
        Errno::ENOTEMPTY,
        "rmdir",
        fx.m("d"),
    );
    fs::remove_file(fx.m("d/f")).unwrap();
    fs::remove_dir(fx.m("d")).or_panic("rmdir (now empty in the merged view)", fx.m("d"));
    assert!(lstat_opt(fx.m("d")).is_none());
    assert!(
        is_whiteout_chardev(&fx.u("d")),
        "upper must hold a whiteout for the removed lower dir"
    );
    // An upper-only dir leaves nothing behind.
    mkdir(fx.m("fresh"));
    write(fx.m("fresh/x"), "");
    expect_errno(
        errno(fs::remove_dir(fx.m("fresh"))),
        Errno::ENOTEMPTY,
        "rmdir",
        fx.m("fresh"),
    );
    fs::remove_file(fx.m("fresh/x")).unwrap();
    fs::remove_dir(fx.m("fresh")).unwrap();
    assert!(
        lstat_opt(fx.u("fresh")).is_none(),
        "upper-only dir removal must not leave a whiteout"
    );
    fs::remove_dir(fx.m("e")).unwrap();
    assert!(is_whiteout_chardev(&fx.u("e")));
    assert_eq!(ls(&fx.mnt), Vec::<String>::new());
}

#[test]
fn unlink_leaves_a_whiteout_only_where_a_lower_has_the_name() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[2].join("lower"), "");
    write(fx.l[0].join("copied"), "");
    let _m = fx.mount();
    write(fx.m("copied"), "now in upper too");
    write(fx.m("fresh"), "");
    for n in ["lower", "copied", "fresh"] {
        fs::remove_file(fx.m(n)).or_panic("unlink", fx.m(n));
        expect_errno(
            errno(fs::symlink_metadata(fx.m(n))),
            Errno::ENOENT,
            "lstat after unlink",
            fx.m(n),
        );
    }
    assert!(is_whiteout_chardev(&fx.u("lower")));
    assert!(is_whiteout_chardev(&fx.u("copied")));
    assert!(
        lstat_opt(fx.u("fresh")).is_none(),
        "upper-only file: no whiteout"
    );
    assert_eq!(ls(&fx.mnt), Vec::<String>::new());
    // Re-create over a whiteout: the whiteout is replaced, the lower stays hidden.
    write(fx.m("lower"), "new");
    assert_eq!(read_string(fx.m("lower")), "new");
    assert!(lstat(fx.u("lower")).is_file());
}

#[test]
fn mkdir_over_a_whiteout_makes_an_opaque_dir() {
    mount_test!();
    let fx = Fx::new();
    mkdir(fx.l[1].join("d"));
    write(fx.l[1].join("d/old"), "");
    set_xattr(fx.l[1].join("d"), "user.old", b"1");
    let _m = fx.mount();
    let (st, _, err) = support::run(Command::new("rm").arg("-r").arg(fx.m("d")));
    assert!(st.success(), "rm -r: {err}");
    assert!(is_whiteout_chardev(&fx.u("d")));
    mkdir(fx.m("d"));
    assert_eq!(
        ls(fx.m("d")),
        Vec::<String>::new(),
        "old lower content must stay hidden"
    );
    assert_eq!(
        xattr::get(fx.u("d"), "user.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..]),
        "upper d opaque"
    );
    assert!(
        xattr::get(fx.m("d"), "user.old").unwrap().is_none(),
        "old lower xattrs hidden"
    );
    let listed: Vec<OsString> = xattr::list(fx.m("d")).unwrap().collect();
    assert!(
        listed.is_empty(),
        "opaque marker must not be listed: {listed:?}"
    );
    write(fx.m("d/new"), "");
    assert_eq!(ls(fx.m("d")), ["new"]);
}

// ---------------------------------------------------------------------------------------------
// rename

fn renameat2(from: &Path, to: &Path, flags: RenameFlags) -> Result<(), Errno> {
    nix::fcntl::renameat2(AT_FDCWD, from, AT_FDCWD, to, flags)
}

#[test]
fn rename_files_from_lower_and_upper() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("a"), "A");
    write(fx.l[1].join("b"), "B");
    write(fx.l[2].join("c"), "C");
    let _m = fx.mount();
    write(fx.m("u"), "U");
    renameat2(&fx.m("a"), &fx.m("a2"), RenameFlags::empty()).or_panic("rename", fx.m("a"));
    assert_eq!(read_string(fx.m("a2")), "A");
    assert!(lstat_opt(fx.m("a")).is_none());
    assert!(is_whiteout_chardev(&fx.u("a")), "old lower name whited out");
    // Over an existing lower file.
    renameat2(&fx.m("u"), &fx.m("b"), RenameFlags::empty()).or_panic("rename over", fx.m("b"));
    assert_eq!(read_string(fx.m("b")), "U");
    assert!(lstat_opt(fx.m("u")).is_none());
    assert!(
        lstat_opt(fx.u("u")).is_none(),
        "old upper-only name leaves nothing"
    );
    // NOREPLACE over lower and upper names.
    expect_errno(
        renameat2(&fx.m("a2"), &fx.m("c"), RenameFlags::RENAME_NOREPLACE),
        Errno::EEXIST,
        "noreplace",
        fx.m("c"),
    );
    expect_errno(
        renameat2(&fx.m("c"), &fx.m("b"), RenameFlags::RENAME_NOREPLACE),
        Errno::EEXIST,
        "noreplace",
        fx.m("b"),
    );
    renameat2(&fx.m("c"), &fx.m("c2"), RenameFlags::RENAME_NOREPLACE)
        .or_panic("noreplace to a free name", fx.m("c2"));
    // EXCHANGE of a lower file and an upper file.
    renameat2(&fx.m("a2"), &fx.m("c2"), RenameFlags::RENAME_EXCHANGE)
        .or_panic("exchange", fx.m("a2"));
    assert_eq!(read_string(fx.m("a2")), "C");
    assert_eq!(read_string(fx.m("c2")), "A");
    expect_errno(
        renameat2(&fx.m("a2"), &fx.m("missing"), RenameFlags::RENAME_EXCHANGE),
        Errno::ENOENT,
        "exchange with a missing name",
        fx.m("missing"),
    );
    assert_eq!(ls(&fx.mnt), ["a2", "b", "c2"]);
}

#[test]
fn rename_exchange_of_a_file_and_a_directory() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("f"), "F");
    mkdir(fx.l[1].join("d"));
    write(fx.l[1].join("d/in"), "IN");
    let _m = fx.mount();
    renameat2(&fx.m("f"), &fx.m("d"), RenameFlags::RENAME_EXCHANGE)
        .or_panic("exchange file<->lower dir", fx.m("d"));
    assert_eq!(read_string(fx.m("d")), "F");
    assert_eq!(read_string(fx.m("f/in")), "IN");
}

#[test]
fn rename_of_a_lower_directory_works_and_contents_follow() {
    mount_test!();
    let fx = Fx::new();
    mkdir_p(fx.l[2].join("src/deep/er"));
    write(fx.l[2].join("src/deep/er/f"), "deep");
    write(fx.l[2].join("src/top"), "top2");
    mkdir(fx.l[1].join("src"));
    write(fx.l[1].join("src/mid"), "mid1");
    set_xattr(fx.l[1].join("src"), "user.a", b"1");
    mkdir(fx.l[1].join("emptytarget"));
    let _m = fx.mount();
    let ino_before = ino(&fx.m("src/deep/er/f"));
    renameat2(&fx.m("src"), &fx.m("dst"), RenameFlags::empty()).or_panic(
        "rename of a lower dir (the kernel says EXDEV; ovlrun must not)",
        fx.m("src"),
    );
    assert!(lstat_opt(fx.m("src")).is_none(), "old name gone");
    assert_eq!(ls(fx.m("dst")), ["deep", "mid", "top"]);
    assert_eq!(read_string(fx.m("dst/deep/er/f")), "deep");
    assert_eq!(read_string(fx.m("dst/mid")), "mid1");
    assert_eq!(
        xattr::get(fx.m("dst"), "user.a").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        ino(&fx.m("dst/deep/er/f")),
        ino_before,
        "st_ino follows the rename"
    );
    // The moved tree stays writable, and a new dir at the old name is empty.
    write(fx.m("dst/deep/er/f"), "changed");
    mkdir(fx.m("src"));
    assert_eq!(
        ls(fx.m("src")),
        Vec::<String>::new(),
        "a new dir at the old name must not show old content"
    );
    // Over an empty lower dir, and back.
    renameat2(&fx.m("dst"), &fx.m("emptytarget"), RenameFlags::empty())
        .or_panic("rename over empty lower dir", fx.m("emptytarget"));
    assert_eq!(ls(fx.m("emptytarget")), ["deep", "mid", "top"]);
    assert_eq!(read_string(fx.m("emptytarget/deep/er/f")), "changed");
    // Non-empty target.
    mkdir(fx.m("full"));
    write(fx.m("full/x"), "");
    expect_errno(
        renameat2(&fx.m("emptytarget"), &fx.m("full"), RenameFlags::empty()),
        Errno::ENOTEMPTY,
        "rename over non-empty",
        fx.m("full"),
    );
    // A dir into its own subdir.
    expect_errno(
        renameat2(
            &fx.m("emptytarget"),
            &fx.m("emptytarget/deep/x"),
            RenameFlags::empty(),
        ),
        Errno::EINVAL,
        "rename into itself",
        fx.m("emptytarget/deep/x"),
    );
    assert_eq!(
        read_string(fx.l[2].join("src/deep/er/f")),
        "deep",
        "the lower is untouched"
    );
}

#[test]
fn renamed_lower_directory_survives_a_remount() {
    mount_test!();
    let fx = Fx::new();
    mkdir_p(fx.l[1].join("src/sub"));
    write(fx.l[1].join("src/sub/f"), "f");
    let m = fx.mount();
    renameat2(&fx.m("src"), &fx.m("dst"), RenameFlags::empty())
        .or_panic("rename lower dir", fx.m("src"));
    let before = support::tree_snapshot(&fx.mnt);
    let st = m.unmount();
    assert!(st.success(), "ovlrun exit status after umount: {st}");
    let _m = fx.mount();
    support::assert_trees_eq(
        "before remount",
        &before,
        "after remount",
        &support::tree_snapshot(&fx.mnt),
    );
}

// ---------------------------------------------------------------------------------------------
// Hard links and st_ino

#[test]
fn hard_link_to_a_lower_file() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[2].join("f"), "one");
    let _m = fx.mount();
    fs::hard_link(fx.m("f"), fx.m("g")).or_panic("link lower file", fx.m("g"));
    let (f, g) = (lstat(fx.m("f")), lstat(fx.m("g")));
    assert_eq!(f.ino(), g.ino(), "both names, one inode");
    assert_eq!((f.nlink(), g.nlink()), (2, 2));
    open(&fx.m("g"), OpenOptions::new().append(true))
        .write_all(b" two")
        .unwrap();
    assert_eq!(
        read_string(fx.m("f")),
        "one two",
        "a write through one name shows through the other"
    );
    support::chmod(fx.m("f"), 0o600);
    assert_eq!(lstat(fx.m("g")).mode() & 0o777, 0o600);
    fs::remove_file(fx.m("f")).unwrap();
    assert_eq!(lstat(fx.m("g")).nlink(), 1);
    assert_eq!(read_string(fx.m("g")), "one two");
    expect_errno(
        errno(fs::hard_link(fx.m("g"), fx.m("g"))),
        Errno::EEXIST,
        "link onto itself",
        fx.m("g"),
    );
}

#[test]
fn st_ino_is_stable_across_copy_up() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[2].join("f"), "data");
    mkdir_p(fx.l[1].join("d/e"));
    write(fx.l[1].join("d/e/g"), "g");
    symlink("f", fx.l[2].join("s"));
    let _m = fx.mount();
    let before: Vec<u64> = ["f", "d", "d/e", "d/e/g", "s"]
        .iter()
        .map(|p| ino(&fx.m(p)))
        .collect();
    support::chmod(fx.m("f"), 0o600);
    open(&fx.m("d/e/g"), OpenOptions::new().append(true))
        .write_all(b"+")
        .unwrap();
    nix::unistd::fchownat(
        AT_FDCWD,
        &fx.m("s"),
        Some(Uid::from_raw(1)),
        None,
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    assert!(
        lstat(fx.u("d/e/g")).is_file(),
        "d/e/g should be copied up by now"
    );
    let after: Vec<u64> = ["f", "d", "d/e", "d/e/g", "s"]
        .iter()
        .map(|p| ino(&fx.m(p)))
        .collect();
    assert_eq!(
        before, after,
        "st_ino of f, d, d/e, d/e/g, s before and after copy-up"
    );
    // Distinct files keep distinct numbers.
    let mut uniq = after.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), after.len(), "st_ino collision: {after:?}");
    // fstat agrees with lstat.
    assert_eq!(
        File::open(fx.m("f")).unwrap().metadata().unwrap().ino(),
        after[0]
    );
}

#[test]
fn st_ino_is_stable_across_remount() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[2].join("lower"), "");
    write(fx.l[1].join("copied"), "");
    mkdir(fx.l[0].join("dir"));
    let names = ["lower", "copied", "dir", "fresh", "fresh_dir"];
    let m = fx.mount();
    write(fx.m("copied"), "x");
    write(fx.m("fresh"), "");
    mkdir(fx.m("fresh_dir"));
    let before: Vec<u64> = names.iter().map(|p| ino(&fx.m(p))).collect();
    let root_before = ino(&fx.mnt);
    assert!(m.unmount().success());
    let _m = fx.mount();
    let after: Vec<u64> = names.iter().map(|p| ino(&fx.m(p))).collect();
    assert_eq!(
        before, after,
        "st_ino of {names:?} before and after remount"
    );
    assert_eq!(root_before, ino(&fx.mnt), "root st_ino");
}

// ---------------------------------------------------------------------------------------------
// Data path

#[test]
fn open_create_read_write_append_truncate() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("f"), "hello world");
    write(fx.l[1].join("t"), "to be truncated");
    let _m = fx.mount();
    expect_errno(
        errno(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(fx.m("f")),
        ),
        Errno::EEXIST,
        "O_CREAT|O_EXCL on a lower file",
        fx.m("f"),
    );
    let mut n = open(
        &fx.m("new"),
        OpenOptions::new().read(true).write(true).create_new(true),
    );
    n.write_all(b"abcdef").unwrap();
    n.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    n.read_to_string(&mut s).unwrap();
    assert_eq!(s, "abcdef", "read back through the same fd");
    n.write_all_at(b"XY", 2).unwrap();
    drop(n);
    assert_eq!(read_string(fx.m("new")), "abXYef");
    // Read-only open of a lower file does not copy up; a write while that fd is still open
    // does. (What the old read-only fd reads afterwards is not asserted: the kernel overlayfs
    // itself keeps serving the stale lower file there.)
    let r = File::open(fx.m("f")).unwrap();
    assert!(lstat_opt(fx.u("f")).is_none(), "O_RDONLY must not copy up");
    let w = open(&fx.m("f"), OpenOptions::new().write(true));
    w.write_all_at(b"J", 0).unwrap();
    drop(w);
    assert_eq!(read_string(fx.m("f")), "Jello world");
    drop(r);
    open(&fx.m("f"), OpenOptions::new().append(true))
        .write_all(b"!")
        .unwrap();
    assert_eq!(read_string(fx.m("f")), "Jello world!");
    drop(open(
        &fx.m("t"),
        OpenOptions::new().write(true).truncate(true),
    ));
    assert_eq!(lstat(fx.m("t")).len(), 0, "O_TRUNC on a lower file");
    assert_eq!(read_string(fx.l[1].join("t")), "to be truncated");
    expect_errno(
        errno(File::open(fx.m("nope"))),
        Errno::ENOENT,
        "open",
        fx.m("nope"),
    );
}

/// A shared writable mapping of `len` bytes of `f`, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(f: &File, len: usize, writable: bool) -> Result<Mapping, Errno> {
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL); `f` is an open fd.
        #[allow(unsafe_code)]
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        Ok(Mapping { ptr, len })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` maps `len` bytes for as long as `self` lives; only we access it here.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.cast::<u8>(), self.len)
        }
    }

    fn msync(&self) -> Result<(), Errno> {
        // SAFETY: syncs exactly the range we mapped.
        #[allow(unsafe_code)]
        let r = unsafe { libc::msync(self.ptr, self.len, libc::MS_SYNC) };
        Errno::result(r).map(drop)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range we mapped; no slice into it outlives `self`.
        #[allow(unsafe_code)]
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

#[test]
fn mmap_read_and_write() {
    mount_test!();
    let fx = Fx::new();
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 256) as u8).collect();
    write(fx.l[1].join("ro"), &data);
    write(fx.l[1].join("rw"), &data);
    let _m = fx.mount();
    let f = File::open(fx.m("ro")).unwrap();
    let mut map = Mapping::new(&f, 8192, false).or_panic("mmap PROT_READ", fx.m("ro"));
    assert_eq!(map.bytes(), &data[..], "mmap read of a lower file");
    drop(map);
    let f = open(&fx.m("rw"), OpenOptions::new().read(true).write(true));
    let mut map = Mapping::new(&f, 8192, true).or_panic("mmap PROT_WRITE MAP_SHARED", fx.m("rw"));
    map.bytes()[100..105].copy_from_slice(b"HELLO");
    map.bytes()[8000] = b'!';
    map.msync().or_panic("msync", fx.m("rw"));
    drop(map);
    drop(f);
    let mut want = data.clone();
    want[100..105].copy_from_slice(b"HELLO");
    want[8000] = b'!';
    assert_eq!(read(fx.m("rw")), want, "mmap writes visible through read()");
    assert_eq!(read(fx.u("rw")), want, "mmap writes reached the upper");
    assert_eq!(read(fx.l[1].join("rw")), data, "lower untouched");
}

/// A 4096-aligned 4096-byte window into `buf` (no unsafe allocation needed).
fn aligned(buf: &mut [u8]) -> &mut [u8] {
    let off = (4096 - buf.as_ptr() as usize % 4096) % 4096;
    &mut buf[off..off + 4096]
}

#[test]
fn o_direct_read_and_write() {
    mount_test!();
    let fx = Fx::new();
    let data: Vec<u8> = (0..16384u32).map(|i| (i % 199) as u8).collect();
    write(fx.l[1].join("f"), &data);
    let _m = fx.mount();
    let mut backing = vec![0u8; 8192];
    let buf = aligned(&mut backing);
    let f = open(
        &fx.m("f"),
        OpenOptions::new().read(true).custom_flags(libc::O_DIRECT),
    );
    f.read_exact_at(buf, 4096)
        .or_panic("O_DIRECT read", fx.m("f"));
    assert_eq!(&buf[..], &data[4096..8192]);
    drop(f);
    let f = open(
        &fx.m("f"),
        OpenOptions::new().write(true).custom_flags(libc::O_DIRECT),
    );
    buf.fill(0xAB);
    f.write_all_at(buf, 8192)
        .or_panic("O_DIRECT write", fx.m("f"));
    drop(f);
    let got = read(fx.m("f"));
    assert_eq!(got.len(), 16384);
    assert!(
        got[8192..12288].iter().all(|&b| b == 0xAB),
        "O_DIRECT write landed"
    );
    assert_eq!(&got[..8192], &data[..8192]);
    assert_eq!(&got[12288..], &data[12288..]);
}

#[test]
fn fallocate_extends_and_punches_holes() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("f"), vec![1u8; 65536]);
    let _m = fx.mount();
    let f = open(&fx.m("f"), OpenOptions::new().read(true).write(true));
    nix::fcntl::fallocate(&f, FallocateFlags::empty(), 0, 1 << 20).or_panic("fallocate", fx.m("f"));
    assert_eq!(
        lstat(fx.m("f")).len(),
        1 << 20,
        "fallocate mode 0 extends the size"
    );
    nix::fcntl::fallocate(
        &f,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        4096,
        8192,
    )
    .or_panic("fallocate PUNCH_HOLE", fx.m("f"));
    drop(f);
    let got = read(fx.m("f"));
    assert_eq!(got.len(), 1 << 20);
    assert!(got[..4096].iter().all(|&b| b == 1));
    assert!(
        got[4096..12288].iter().all(|&b| b == 0),
        "punched range reads as zeros"
    );
    assert!(got[12288..65536].iter().all(|&b| b == 1));
    assert!(got[65536..].iter().all(|&b| b == 0));
    assert_eq!(read(fx.l[1].join("f")).len(), 65536, "lower untouched");
}

#[test]
fn seek_data_and_seek_hole_on_a_sparse_file() {
    mount_test!();
    let fx = Fx::new();
    for name in ["lower", "copied"] {
        let f = File::create(fx.l[1].join(name)).unwrap();
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        f.write_all_at(&[2u8; 4096], 1 << 20).unwrap();
        f.set_len(2 << 20).unwrap();
    }
    let _m = fx.mount();
    open(&fx.m("copied"), OpenOptions::new().write(true))
        .write_all_at(&[3u8], 0)
        .unwrap();
    for name in ["lower", "copied"] {
        let f = File::open(fx.m(name)).unwrap();
        let seek = |off, w| nix::unistd::lseek(f.as_fd(), off, w);
        assert_eq!(seek(0, Whence::SeekHole), Ok(4096), "{name}: first hole");
        assert_eq!(
            seek(4096, Whence::SeekData),
            Ok(1 << 20),
            "{name}: next data"
        );
        assert_eq!(
            seek((1 << 20) + 10, Whence::SeekHole),
            Ok((1 << 20) + 4096),
            "{name}: hole after data"
        );
        assert_eq!(
            seek((1 << 20) + 8192, Whence::SeekData),
            Err(Errno::ENXIO),
            "{name}: no data after the last extent"
        );
    }
}

#[test]
fn copy_file_range_between_layers() {
    mount_test!();
    let fx = Fx::new();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    write(fx.l[2].join("src"), &data);
    let _m = fx.mount();
    let src = File::open(fx.m("src")).unwrap();
    let dst = open(
        &fx.m("dst"),
        OpenOptions::new().write(true).create_new(true),
    );
    let (mut off_in, mut off_out) = (1000i64, 0i64);
    let mut left = 50_000usize;
    while left > 0 {
        let n =
            nix::fcntl::copy_file_range(&src, Some(&mut off_in), &dst, Some(&mut off_out), left)
                .or_panic("copy_file_range", fx.m("dst"));
        assert!(n > 0, "copy_file_range returned 0 before the end");
        left -= n;
    }
    drop(dst);
    assert_eq!(read(fx.m("dst")), &data[1000..51_000]);
}

#[test]
fn fsync_reaches_the_upper() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("f"), "old");
    let _m = fx.mount();
    let mut f = open(&fx.m("f"), OpenOptions::new().write(true).truncate(true));
    f.write_all(b"synced").unwrap();
    f.sync_all().or_panic("fsync", fx.m("f"));
    f.sync_data().or_panic("fdatasync", fx.m("f"));
    // While still open: the bytes are in the upper file.
    assert_eq!(read_string(fx.u("f")), "synced");
    let d = File::open(&fx.mnt).unwrap();
    d.sync_all().or_panic("fsync dir", &fx.mnt);
}

#[test]
fn statfs_reports_the_upper_filesystem() {
    mount_test!();
    let fx = Fx::new();
    let _m = fx.mount();
    let mnt = nix::sys::statfs::statfs(&fx.mnt).or_panic("statfs", &fx.mnt);
    let up = nix::sys::statfs::statfs(&fx.upper).or_panic("statfs", &fx.upper);
    let total = |s: &nix::sys::statfs::Statfs| s.blocks() as u128 * s.block_size() as u128;
    assert_eq!(
        total(&mnt),
        total(&up),
        "total bytes of the mount vs the upper's fs"
    );
    assert_eq!(
        mnt.files(),
        up.files(),
        "inode count of the mount vs the upper's fs"
    );
    assert!(mnt.maximum_name_length() >= 255);
}

#[test]
fn access_checks() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("rw"), "");
    write(fx.l[1].join("noexec"), "");
    support::chmod(fx.l[1].join("noexec"), 0o644);
    write(fx.l[1].join("exec"), "");
    support::chmod(fx.l[1].join("exec"), 0o755);
    let _m = fx.mount();
    nix::unistd::access(&fx.m("rw"), AccessFlags::R_OK | AccessFlags::W_OK).or_panic(
        "access R|W (lower file is writable through the overlay)",
        fx.m("rw"),
    );
    nix::unistd::access(&fx.m("exec"), AccessFlags::X_OK).or_panic("access X", fx.m("exec"));
    if support::is_root() {
        expect_errno(
            nix::unistd::access(&fx.m("noexec"), AccessFlags::X_OK),
            Errno::EACCES,
            "access X of 0644 as root",
            fx.m("noexec"),
        );
    }
    expect_errno(
        nix::unistd::access(&fx.m("missing"), AccessFlags::F_OK),
        Errno::ENOENT,
        "access",
        fx.m("missing"),
    );
    assert!(lstat_opt(fx.u("rw")).is_none(), "access must not copy up");
}

#[test]
fn xattrs_get_set_list_remove() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("f"), "");
    set_xattr(fx.l[1].join("f"), "user.tag", b"lower");
    mkdir(fx.l[1].join("d"));
    set_xattr(fx.l[1].join("d"), "user.dtag", b"dir");
    write(fx.l[1].join("d/inner"), "");
    let _m = fx.mount();
    assert_eq!(
        xattr::get(fx.m("f"), "user.tag").unwrap().as_deref(),
        Some(&b"lower"[..])
    );
    set_xattr(fx.m("f"), "user.new", b"v");
    let mut names: Vec<OsString> = xattr::list(fx.m("f"))
        .unwrap()
        .filter(|n| n.as_bytes().starts_with(b"user."))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [OsString::from("user.new"), OsString::from("user.tag")]
    );
    xattr::remove(fx.m("f"), "user.tag").or_panic("removexattr user.tag", fx.m("f"));
    assert!(
        xattr::get(fx.m("f"), "user.tag").unwrap().is_none(),
        "removed xattr gone"
    );
    expect_errno(
        errno(xattr::remove(fx.m("f"), "user.tag")),
        Errno::ENODATA,
        "removexattr missing",
        fx.m("f"),
    );
    assert_eq!(
        xattr::get(fx.l[1].join("f"), "user.tag")
            .unwrap()
            .as_deref(),
        Some(&b"lower"[..]),
        "lower untouched"
    );
    // Directories (copy-up of a dir's xattrs) and a big value.
    let big = vec![b'z'; 3000];
    set_xattr(fx.m("d"), "user.big", &big);
    assert_eq!(xattr::get(fx.m("d"), "user.big").unwrap(), Some(big));
    assert_eq!(
        xattr::get(fx.m("d"), "user.dtag").unwrap().as_deref(),
        Some(&b"dir"[..])
    );
    assert_eq!(
        xattr::get(fx.u("d"), "user.dtag").unwrap().as_deref(),
        Some(&b"dir"[..]),
        "dir xattrs copied up"
    );
    // A user setting the overlay's own name must not make a merged dir opaque on disk (the
    // kernel either refuses or, since 6.7, stores it escaped as user.overlay.overlay.*).
    let _ = xattr::set(fx.m("d"), "user.overlay.opaque", b"y");
    assert_eq!(ls(fx.m("d")), ["inner"], "lower content must stay visible");
    assert_ne!(
        xattr::get(fx.u("d"), "user.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..]),
        "a user's setxattr through the mount made the upper dir opaque"
    );
}

#[test]
fn error_cases() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("file"), "");
    mkdir(fx.l[1].join("dir"));
    write(fx.l[1].join("dir/x"), "");
    mkdir(fx.l[2].join("dir2"));
    let _m = fx.mount();
    expect_errno(
        errno(fs::symlink_metadata(fx.m("none"))),
        Errno::ENOENT,
        "lstat",
        fx.m("none"),
    );
    expect_errno(
        errno(fs::remove_file(fx.m("none"))),
        Errno::ENOENT,
        "unlink",
        fx.m("none"),
    );
    expect_errno(
        errno(fs::create_dir(fx.m("dir"))),
        Errno::EEXIST,
        "mkdir",
        fx.m("dir"),
    );
    expect_errno(
        errno(fs::create_dir(fx.m("file"))),
        Errno::EEXIST,
        "mkdir",
        fx.m("file"),
    );
    expect_errno(
        errno(std::os::unix::fs::symlink("x", fx.m("file"))),
        Errno::EEXIST,
        "symlink",
        fx.m("file"),
    );
    expect_errno(
        errno(fs::hard_link(fx.m("file"), fx.m("dir"))),
        Errno::EEXIST,
        "link",
        fx.m("dir"),
    );
    expect_errno(
        errno(fs::symlink_metadata(fx.m("file/x"))),
        Errno::ENOTDIR,
        "lstat",
        fx.m("file/x"),
    );
    expect_errno(
        errno(fs::remove_dir(fx.m("file"))),
        Errno::ENOTDIR,
        "rmdir",
        fx.m("file"),
    );
    expect_errno(
        errno(File::create(fx.m("file/x"))),
        Errno::ENOTDIR,
        "create",
        fx.m("file/x"),
    );
    expect_errno(
        errno(OpenOptions::new().write(true).open(fx.m("dir"))),
        Errno::EISDIR,
        "open O_WRONLY",
        fx.m("dir"),
    );
    expect_errno(
        errno(fs::remove_file(fx.m("dir"))),
        Errno::EISDIR,
        "unlink",
        fx.m("dir"),
    );
    expect_errno(
        errno(fs::remove_dir(fx.m("dir"))),
        Errno::ENOTEMPTY,
        "rmdir",
        fx.m("dir"),
    );
    expect_errno(
        renameat2(&fx.m("dir2"), &fx.m("dir"), RenameFlags::empty()),
        Errno::ENOTEMPTY,
        "rename over non-empty",
        fx.m("dir"),
    );
    expect_errno(
        renameat2(&fx.m("dir2"), &fx.m("file"), RenameFlags::empty()),
        Errno::ENOTDIR,
        "rename dir over file",
        fx.m("file"),
    );
    expect_errno(
        renameat2(&fx.m("file"), &fx.m("dir2"), RenameFlags::empty()),
        Errno::EISDIR,
        "rename file over dir",
        fx.m("dir2"),
    );
    // Never EXDEV for a lower directory.
    let r = renameat2(&fx.m("dir2"), &fx.m("dir3"), RenameFlags::empty());
    assert_ne!(r, Err(Errno::EXDEV), "EXDEV for a lower dir rename");
    r.or_panic("rename lower dir", fx.m("dir2"));
    assert_eq!(ls(&fx.mnt), ["dir", "dir3", "file"]);
}

// ---------------------------------------------------------------------------------------------
// Command line and lifecycle

/// Runs `ovlrun` with `args`; panics if it is still running after 10 s (then it would be
/// serving a mount it should have refused).
fn run_ovlrun(args: &[&std::ffi::OsStr]) -> (ExitStatus, String) {
    let log = std::env::temp_dir().join(format!(
        "ovlrun-cli-{}-{:?}.log",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut child = Command::new(support::ovlrun_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + support::MOUNT_TIMEOUT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let err = fs::read_to_string(&log).unwrap_or_default();
            let _ = fs::remove_file(&log);
            return (st, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = fs::read_to_string(&log).unwrap_or_default();
            let _ = fs::remove_file(&log);
            panic!(
                "ovlrun {args:?} still running after {:?} (it should have refused); stderr:\n{err}",
                support::MOUNT_TIMEOUT
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn bad_input_exits_125_naming_the_path() {
    mount_test!();
    let fx = Fx::new();
    let missing = fx.dir.join("missing");
    let nested_upper = fx.l[0].join("upper_inside");
    mkdir(&nested_upper);
    let file_mnt = fx.dir.join("file_mnt");
    write(&file_mnt, "");
    let busy = fx.dir.mkdir("busy");
    nix::mount::mount(
        Some("tmpfs"),
        &busy,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    write(busy.join("inside"), "");
    // /dev/shm is a tmpfs: another filesystem than the upper's.
    let other_fs_work = tempfile::Builder::new()
        .prefix("ovlrun-work")
        .tempdir_in("/dev/shm")
        .unwrap();
    let l0 = fx.l[0].as_os_str();
    let up = fx.upper.as_os_str();
    let mnt = fx.mnt.as_os_str();
    let m = missing.as_os_str();
    let cases: Vec<(&str, Vec<&std::ffi::OsStr>, &Path)> = vec![
        (
            "missing lower",
            vec![
                "mount".as_ref(),
                "--lower".as_ref(),
                m,
                "--upper".as_ref(),
                up,
                mnt,
            ],
            &missing,
        ),
        (
            "missing upper",
            vec![
                "mount".as_ref(),
                "--lower".as_ref(),
                l0,
                "--upper".as_ref(),
                m,
                mnt,
            ],
            &missing,
        ),
        (
            "missing mount point",
            vec![
                "mount".as_ref(),
                "--lower".as_ref(),
                l0,
                "--upper".as_ref(),
                up,
                m,
            ],
            &missing,
        ),
        (
            "upper inside a lower",
            vec![
                "mount".as_ref(),
                "--lower".as_ref(),
                l0,
                "--upper".as_ref(),
                nested_upper.as_os_str(),
                mnt,
            ],
            &nested_upper,
        ),
        (
            "upper == lower",
            vec![
                "mount".as_ref(),
                "--lower".as_ref(),
                l0,
                "--upper".as_ref(),
                l0,
                mnt,
            ],
            &fx.l[0],
        ),
        (
            "upper and work on different filesystems",
            vec![
                "mount".as_ref(),
                "--lower".as_ref(),
                l0,
                "--upper".as_ref(),
                up,
                "--work".as_ref(),
                other_fs_work.path().as_os_str(),
                mnt,
            ],
            other_fs_work.path(),
        ),
        (
            "mount point not a dir",
            vec![
                "mount".as_ref(),
                "--lower".as_ref(),
                l0,
                "--upper".as_ref(),
                up,
                file_mnt.as_os_str(),
            ],
            &file_mnt,
        ),
        (
            "mount point busy",
            vec![
                "mount".as_ref(),
                "--lower".as_ref(),
                l0,
                "--upper".as_ref(),
                up,
                busy.as_os_str(),
            ],
            &busy,
        ),
    ];
    let mut failures = Vec::new();
    for (what, args, path) in cases {
        let (st, err) = run_ovlrun(&args);
        let lines = err.trim_end().lines().count();
        let ok = st.code() == Some(125) && err.contains(&*path.to_string_lossy()) && lines == 1;
        if !ok {
            failures.push(format!("{what}: status {st}, {lines} stderr line(s), expected 125 and one line naming {}:\n{err}", path.display()));
        }
        let still = support::mount_at(&fx.mnt).is_some_and(|m| m.fstype.starts_with("fuse"))
            || support::mount_at(&busy).is_some_and(|m| m.fstype.starts_with("fuse"));
        if still {
            failures.push(format!("{what}: a FUSE mount was left behind"));
            let _ = nix::mount::umount2(&fx.mnt, nix::mount::MntFlags::MNT_DETACH);
            let _ = nix::mount::umount2(&busy, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _ = nix::mount::umount2(&busy, nix::mount::MntFlags::MNT_DETACH);
    assert!(
        failures.is_empty(),
        "bad input not refused properly:\n{}",
        failures.join("\n")
    );
}

#[test]
fn sigterm_and_sigint_unmount_and_exit_0() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[0].join("f"), "");
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let m = fx.mount();
        assert!(lstat(fx.m("f")).is_file());
        let (st, still_mounted) = m.stop_with(sig);
        assert_eq!(st.code(), Some(0), "exit status after {sig}");
        assert!(!still_mounted, "still mounted after {sig}");
    }
}

#[test]
fn umount_ends_the_server_with_exit_0() {
    mount_test!();
    let fx = Fx::new();
    let m = fx.mount();
    write(fx.m("f"), "x");
    let st = m.unmount();
    assert_eq!(st.code(), Some(0), "exit status after umount");
    assert_eq!(read_string(fx.u("f")), "x");
}

#[test]
fn work_dir_defaults_outside_the_upper() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[0].join("f"), "lower");
    let args = MountArgs::new(&[&fx.l[0]], &fx.upper, &fx.mnt);
    let m = OvlrunMount::start(&args);
    write(fx.m("f"), "copied up");
    fs::remove_file(fx.m("f")).unwrap();
    write(fx.m("g"), "new");
    assert!(m.unmount().success());
    assert_eq!(
        ls(&fx.upper),
        ["f", "g"],
        "only the changes in the upper: no work dir inside it"
    );
    assert!(is_whiteout_chardev(&fx.u("f")));
}

#[test]
fn aufs_whiteout_mode_writes_wh_files() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("f"), "");
    mkdir(fx.l[1].join("d"));
    write(fx.l[1].join("d/old"), "");
    mkdir(fx.l[1].join("e"));
    let _m = OvlrunMount::start(&fx.args().whiteout("aufs"));
    fs::remove_file(fx.m("f")).unwrap();
    fs::remove_file(fx.m("d/old")).unwrap();
    fs::remove_dir(fx.m("d")).unwrap();
    fs::remove_dir(fx.m("e")).unwrap();
    mkdir(fx.m("e"));
    write(fx.m("e/new"), "");
    let wh = lstat(fx.u(".wh.f"));
    assert!(wh.is_file(), "aufs whiteout is a regular file");
    assert!(lstat(fx.u(".wh.d")).is_file());
    assert!(
        lstat_opt(fx.u("f")).is_none(),
        "no char-device whiteout in aufs mode"
    );
    assert!(
        lstat(fx.u("e/.wh..wh..opq")).is_file(),
        "mkdir over a whiteout marks the dir opaque with .wh..wh..opq"
    );
    assert!(
        xattr::get(fx.u("e"), "user.overlay.opaque")
            .unwrap()
            .is_none(),
        "no xattr opaque in aufs mode"
    );
    assert_eq!(ls(&fx.mnt), ["e"]);
    assert_eq!(ls(fx.m("e")), ["new"]);
    let leaks = support::overlay_internals_visible(&fx.mnt);
    assert!(leaks.is_empty(), "{leaks:?}");
}

// ---------------------------------------------------------------------------------------------
// Beyond single operations

#[test]
fn other_users_can_use_the_mount() {
    mount_test!();
    require!(support::is_root(), "switch users (root)");
    use std::os::unix::process::CommandExt;
    let fx = Fx::new();
    write(fx.l[1].join("readable"), "for everyone\n");
    mkdir(fx.l[1].join("shared"));
    support::chmod(fx.l[1].join("shared"), 0o777);
    let _m = fx.mount();
    let as_nobody = |script: &str| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).uid(65534).gid(65534);
        support::run(&mut cmd)
    };
    let (st, out, err) = as_nobody(&format!("cat {}", fx.m("readable").display()));
    assert!(
        st.success(),
        "nobody cannot read through the mount (allow_other?): {err}"
    );
    assert_eq!(out, "for everyone\n");
    let (st, _, err) = as_nobody(&format!(
        "echo mine > {}",
        fx.m("shared/by_nobody").display()
    ));
    assert!(st.success(), "nobody cannot create in a 0777 dir: {err}");
    let md = lstat(fx.m("shared/by_nobody"));
    assert_eq!(
        (md.uid(), md.gid()),
        (65534, 65534),
        "the file belongs to its creator"
    );
    assert_eq!(
        (lstat(fx.u("shared/by_nobody")).uid()),
        65534,
        "and so in the upper"
    );
    let (st, _, _) = as_nobody(&format!("echo x > {}", fx.m("readable").display()));
    assert!(!st.success(), "nobody must not write a 0644 root file");
    assert_eq!(read_string(fx.m("readable")), "for everyone\n");
}

/// `system.posix_acl_access` in the kernel's binary form: version 2, then (tag, perm, id).
fn acl_blob(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

#[test]
fn posix_acls_are_read_and_survive_copy_up() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("f"), "acl\n");
    support::chmod(fx.l[1].join("f"), 0o640);
    // user::rw- user:1000:r-- group::r-- mask::r-- other::---
    let acl = acl_blob(&[
        (0x01, 6, u32::MAX),
        (0x02, 4, 1000),
        (0x04, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ]);
    xattr::set(fx.l[1].join("f"), "system.posix_acl_access", &acl)
        .or_panic("set ACL", fx.l[1].join("f"));
    let stored = xattr::get(fx.l[1].join("f"), "system.posix_acl_access")
        .unwrap()
        .expect("lower ACL");
    let _m = fx.mount();
    assert_eq!(
        xattr::get(fx.m("f"), "system.posix_acl_access")
            .or_panic("getxattr ACL", fx.m("f"))
            .as_ref(),
        Some(&stored),
        "ACL read through the mount"
    );
    open(&fx.m("f"), OpenOptions::new().append(true))
        .write_all(b"more\n")
        .unwrap();
    assert_eq!(
        xattr::get(fx.u("f"), "system.posix_acl_access")
            .unwrap()
            .as_ref(),
        Some(&stored),
        "ACL copied up"
    );
    // Enforced: uid 1000 may read (named entry), uid 1001 may not (other::---).
    if support::is_root() {
        use std::os::unix::process::CommandExt;
        let cat = |uid: u32| {
            let mut c = Command::new("cat");
            c.arg(fx.m("f")).uid(uid).gid(uid);
            support::run(&mut c).0.success()
        };
        assert!(cat(1000), "uid 1000 has r-- through the ACL");
        assert!(!cat(1001), "uid 1001 falls under other::---");
    }
}

#[test]
fn unlinked_open_files_stay_usable() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("lower"), "lower data");
    let _m = fx.mount();
    write(fx.m("upper"), "upper data");
    let mut lower = File::open(fx.m("lower")).unwrap();
    let mut upper = open(&fx.m("upper"), OpenOptions::new().read(true).write(true));
    fs::remove_file(fx.m("lower")).unwrap();
    fs::remove_file(fx.m("upper")).unwrap();
    let mut s = String::new();
    lower
        .read_to_string(&mut s)
        .or_panic("read after unlink", fx.m("lower"));
    assert_eq!(s, "lower data");
    upper
        .write_all_at(b"UPPER", 0)
        .or_panic("write after unlink", fx.m("upper"));
    let mut all = String::new();
    upper.seek(SeekFrom::Start(0)).unwrap();
    upper.read_to_string(&mut all).unwrap();
    assert_eq!(all, "UPPER data");
    assert_eq!(
        upper.metadata().unwrap().nlink(),
        0,
        "fstat of an unlinked file"
    );
    assert_eq!(ls(&fx.mnt), Vec::<String>::new());
}

/// Read syscalls the server has made so far: one per FUSE request it took.
fn server_reads(m: &OvlrunMount) -> u64 {
    let path = format!("/proc/{}/io", m.pid());
    let text = fs::read_to_string(&path).or_panic("read", &path);
    text.lines()
        .find_map(|l| l.strip_prefix("syscr: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no syscr in {path}: {text}"))
}

/// The kernel keeps absent names as negative entries: probing one again costs no request.
/// Names this mount then makes replace them, whatever made them.
#[test]
fn absent_names_are_remembered_until_the_mount_makes_them() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("file"), "lower");
    let m = fx.mount();
    let names = ["created", "dir", "renamed", "linked", "symlinked"];
    for n in names {
        assert!(lstat_opt(fx.m(n)).is_none(), "{n} exists before");
    }
    let before = server_reads(&m);
    for _ in 0..200 {
        for n in names {
            assert!(lstat_opt(fx.m(n)).is_none());
        }
    }
    let asked = server_reads(&m) - before;
    assert!(
        asked < 50,
        "1000 lookups of absent names took {asked} requests"
    );

    write(fx.m("created"), "new");
    fs::create_dir(fx.m("dir")).unwrap();
    write(fx.m("src"), "moved");
    fs::rename(fx.m("src"), fx.m("renamed")).unwrap();
    fs::hard_link(fx.m("file"), fx.m("linked")).unwrap();
    symlink("file", fx.m("symlinked"));
    assert_eq!(read_string(fx.m("created")), "new");
    assert!(lstat(fx.m("dir")).is_dir());
    assert_eq!(read_string(fx.m("renamed")), "moved");
    assert_eq!(read_string(fx.m("linked")), "lower");
    assert_eq!(read_string(fx.m("symlinked")), "lower");
    fs::remove_file(fx.m("created")).unwrap();
    assert!(
        lstat_opt(fx.m("created")).is_none(),
        "gone again after unlink"
    );
}

/// apt's close(2) failed with EIO: the kernel's writeback cache sets the mtime of its cached
/// writes through the handle after the name is gone, and that setattr must not fail.
#[test]
fn closing_a_written_unlinked_file_succeeds() {
    mount_test!();
    let fx = Fx::new();
    let _m = fx.mount();
    let mut f = File::create(fx.m("tmp")).unwrap();
    f.write_all(&[7u8; 100_000]).unwrap();
    fs::remove_file(fx.m("tmp")).unwrap();
    f.write_all(b"tail").unwrap();
    f.sync_all()
        .or_panic("fsync of an unlinked file", fx.m("tmp"));
    f.write_all(b"more").unwrap();
    assert_eq!(
        f.metadata().unwrap().len(),
        100_008,
        "fstat after the writes"
    );
    let closed = nix::unistd::close(std::os::fd::IntoRawFd::into_raw_fd(f));
    assert_eq!(closed, Ok(()), "close(2) of a written, unlinked file");
}

#[test]
fn walk_of_a_tree_bigger_than_the_fd_limit() {
    mount_test!();
    let fx = Fx::new();
    // 30 000 entries: more than the hard `nofile` limit (20 000) on the target machines, so an
    // fd per looked-up inode cannot work.
    const DIRS: usize = 150;
    const FILES: usize = 200;
    for d in 0..DIRS {
        let layer = &fx.l[d % 2];
        let dir = layer.join(format!("d{d:03}"));
        mkdir(&dir);
        for f in 0..FILES {
            File::create(dir.join(format!("f{f:03}"))).or_panic("create", &dir);
        }
    }
    let m = fx.mount();
    let mut count = 0usize;
    for d in 0..DIRS {
        let dir = fx.m(&format!("d{d:03}"));
        for e in fs::read_dir(&dir).or_panic("opendir", &dir) {
            let p = e.or_panic("readdir", &dir).path();
            lstat(&p);
            count += 1;
        }
        File::open(dir.join("f000")).or_panic("open", dir.join("f000"));
    }
    assert_eq!(count, DIRS * FILES);
    let fds = fs::read_dir(format!("/proc/{}/fd", m.pid()))
        .unwrap()
        .count();
    // Half the entries walked: an fd per known inode would be near 30 000 (or EMFILE first).
    assert!(
        fds < DIRS * FILES / 2,
        "ovlrun holds {fds} fds after the walk: it must bound them"
    );
    // And the tree is still usable at the end.
    write(fx.m("d000/f000"), "x");
    assert_eq!(read_string(fx.m("d000/f000")), "x");
}

#[test]
fn parallel_writers_in_one_mount() {
    mount_test!();
    let fx = Fx::new();
    mkdir(fx.l[1].join("shared"));
    for i in 0..4 {
        write(
            fx.l[1].join(format!("shared/lower{i}")),
            format!("lower {i}"),
        );
    }
    let _m = fx.mount();
    let mnt = fx.mnt.clone();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let mnt = mnt.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    let p = mnt.join(format!("shared/t{t}_{i}"));
                    fs::write(&p, format!("{t}:{i}")).or_panic("write", &p);
                }
                let p = mnt.join(format!("shared/lower{t}"));
                let mut f = OpenOptions::new()
                    .append(true)
                    .open(&p)
                    .or_panic("open", &p);
                for _ in 0..50 {
                    f.write_all(b"+").or_panic("append", &p);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
    assert_eq!(ls(fx.m("shared")).len(), 404);
    for t in 0..4 {
        assert_eq!(
            read_string(fx.m(&format!("shared/t{t}_99"))),
            format!("{t}:99")
        );
        assert_eq!(
            read_string(fx.m(&format!("shared/lower{t}"))),
            format!("lower {t}{}", "+".repeat(50))
        );
    }
}

#[test]
fn file_locks() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("f"), "");
    let _m = fx.mount();
    use nix::fcntl::{Flock, FlockArg};
    let a = File::open(fx.m("f")).unwrap();
    let b = File::open(fx.m("f")).unwrap();
    let a = Flock::lock(a, FlockArg::LockExclusiveNonblock)
        .unwrap_or_else(|(_, e)| panic!("flock LOCK_EX {}: {e}", fx.m("f").display()));
    let b = match Flock::lock(b, FlockArg::LockExclusiveNonblock) {
        Ok(_) => panic!("a second open file description got the exclusive lock"),
        Err((b, e)) => {
            assert_eq!(e, Errno::EWOULDBLOCK);
            b
        }
    };
    drop(a.unlock().map_err(|(_, e)| e).unwrap());
    let _b = Flock::lock(b, FlockArg::LockExclusiveNonblock)
        .unwrap_or_else(|(_, e)| panic!("flock after unlock {}: {e}", fx.m("f").display()));
}

#[test]
fn unix_socket_nodes() {
    mount_test!();
    let fx = Fx::new();
    let _m = fx.mount();
    let path = fx.m("sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).or_panic("bind", &path);
    assert!(lstat(&path).file_type().is_socket());
    let mut c = std::os::unix::net::UnixStream::connect(&path).or_panic("connect", &path);
    let (mut s, _) = listener.accept().unwrap();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    assert!(lstat(fx.u("sock")).file_type().is_socket());
}

#[test]
fn times_and_sizes_are_fresh_after_changes() {
    mount_test!();
    let fx = Fx::new();
    mkdir(fx.l[1].join("d"));
    write(fx.l[1].join("d/f"), "0123456789");
    let old = TimeSpec::new(1_000_000_000, 0);
    for p in [fx.l[1].join("d/f"), fx.l[1].join("d")] {
        nix::sys::stat::utimensat(AT_FDCWD, &p, &old, &old, UtimensatFlags::NoFollowSymlink)
            .unwrap();
    }
    let _m = fx.mount();
    assert_eq!(lstat(fx.m("d")).mtime(), 1_000_000_000);
    // Creating an entry updates the directory's mtime and ctime.
    write(fx.m("d/new"), "");
    let d = lstat(fx.m("d"));
    assert!(
        d.mtime() > 1_000_000_000,
        "dir mtime after create: {}",
        d.mtime()
    );
    assert!(
        d.ctime() > 1_000_000_000,
        "dir ctime after create: {}",
        d.ctime()
    );
    // A write through an open fd shows in stat by path at once (size and mtime).
    let f = open(&fx.m("d/f"), OpenOptions::new().write(true));
    f.write_all_at(&[b'x'; 100], 50).unwrap();
    let st = lstat(fx.m("d/f"));
    assert_eq!(st.len(), 150, "size by path while the writer is still open");
    assert!(
        st.mtime() > 1_000_000_000,
        "mtime after write: {}",
        st.mtime()
    );
    assert_eq!(f.metadata().unwrap().len(), 150, "fstat");
    drop(f);
    // Removing an entry updates the directory too.
    let t = TimeSpec::new(1_500_000_000, 0);
    nix::sys::stat::utimensat(
        AT_FDCWD,
        &fx.m("d"),
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    assert_eq!(
        lstat(fx.m("d")).mtime(),
        1_500_000_000,
        "utimensat on a dir"
    );
    fs::remove_file(fx.m("d/f")).unwrap();
    assert!(
        lstat(fx.m("d")).mtime() > 1_500_000_000,
        "dir mtime after unlink"
    );
    // Link counts of a dir made through the mount follow mkdir/rmdir (2 + subdirs). (A merged
    // dir reports 1, as the kernel overlayfs does: it cannot count cheaply.)
    mkdir(fx.m("fresh"));
    assert_eq!(lstat(fx.m("fresh")).nlink(), 2, "new dir nlink");
    mkdir(fx.m("fresh/sub"));
    assert_eq!(lstat(fx.m("fresh")).nlink(), 3, "dir nlink after mkdir");
    fs::remove_dir(fx.m("fresh/sub")).unwrap();
    assert_eq!(lstat(fx.m("fresh")).nlink(), 2, "dir nlink after rmdir");
}

#[test]
fn two_mounts_share_one_lower_independently() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("f"), "lower");
    let (up2, mnt2) = (fx.dir.mkdir("upper2"), fx.dir.mkdir("mnt2"));
    let _a = fx.mount();
    let _b = OvlrunMount::start(
        &MountArgs::new(&[&fx.l[0], &fx.l[1], &fx.l[2]], &up2, &mnt2).work(&fx.dir.mkdir("work2")),
    );
    write(fx.m("f"), "changed in a");
    write(fx.m("only_a"), "");
    fs::remove_file(mnt2.join("f")).unwrap();
    assert_eq!(read_string(fx.m("f")), "changed in a");
    assert!(lstat_opt(mnt2.join("f")).is_none());
    assert!(
        lstat_opt(mnt2.join("only_a")).is_none(),
        "changes in one session never show in another"
    );
    assert_eq!(
        read_string(fx.l[1].join("f")),
        "lower",
        "the shared lower is untouched"
    );
}

#[test]
fn hard_links_and_inodes_survive_remount() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("f"), "data");
    let m = fx.mount();
    fs::hard_link(fx.m("f"), fx.m("g")).unwrap();
    fs::hard_link(fx.m("g"), fx.m("h")).unwrap();
    fs::remove_file(fx.m("f")).unwrap();
    let ino_g = ino(&fx.m("g"));
    assert!(m.unmount().success());
    let _m = fx.mount();
    let (g, h) = (lstat(fx.m("g")), lstat(fx.m("h")));
    assert_eq!(g.ino(), h.ino(), "still one inode after remount");
    assert_eq!(g.ino(), ino_g, "same st_ino after remount");
    assert_eq!((g.nlink(), h.nlink()), (2, 2));
    assert!(lstat_opt(fx.m("f")).is_none());
    open(&fx.m("h"), OpenOptions::new().append(true))
        .write_all(b"+")
        .unwrap();
    assert_eq!(read_string(fx.m("g")), "data+");
}

#[test]
fn rename_exchange_of_two_lower_directories() {
    mount_test!();
    let fx = Fx::new();
    // Same child names with different types on both sides: a mix-up of origins shows.
    mkdir_p(fx.l[1].join("p/c"));
    write(fx.l[1].join("p/c/in_p"), "p");
    write(fx.l[1].join("p/only_p"), "");
    mkdir(fx.l[1].join("q"));
    symlink("nowhere", fx.l[1].join("q/c"));
    write(fx.l[1].join("q/only_q"), "");
    mkdir_p(fx.l[2].join("top/inner/c"));
    write(fx.l[2].join("top/inner/c/deep"), "deep");
    let m = fx.mount();
    renameat2(&fx.m("p"), &fx.m("q"), RenameFlags::RENAME_EXCHANGE)
        .or_panic("exchange two lower dirs", fx.m("p"));
    // A lower dir moved up a level, then exchanged with its old parent.
    renameat2(&fx.m("top/inner"), &fx.m("inner"), RenameFlags::empty())
        .or_panic("rename lower dir", fx.m("top/inner"));
    renameat2(&fx.m("inner"), &fx.m("top"), RenameFlags::RENAME_EXCHANGE)
        .or_panic("exchange", fx.m("top"));
    let check = |when: &str| {
        assert_eq!(
            ls(fx.m("p")),
            ["c", "only_q"],
            "{when}: p holds q's entries"
        );
        assert_eq!(
            ls(fx.m("q")),
            ["c", "only_p"],
            "{when}: q holds p's entries"
        );
        assert_eq!(
            fs::read_link(fx.m("p/c")).ok(),
            Some(PathBuf::from("nowhere")),
            "{when}: p/c is q's symlink"
        );
        assert_eq!(read_string(fx.m("q/c/in_p")), "p", "{when}: q/c is p's dir");
        assert_eq!(ls(fx.m("top")), ["c"], "{when}: top is the old top/inner");
        assert_eq!(read_string(fx.m("top/c/deep")), "deep", "{when}");
        assert_eq!(
            ls(fx.m("inner")),
            Vec::<String>::new(),
            "{when}: inner is the old top, now empty"
        );
    };
    check("after the renames");
    assert!(m.unmount().success());
    let _m = fx.mount();
    check("after remount");
}

/// Found by the differential test: a lower dir renamed onto a whited-out lower file's name,
/// then exchanged with its old parent; the parent's own child of the same name came back.
#[test]
fn lower_dir_moved_over_a_whiteout_then_exchanged_with_its_parent() {
    mount_test!();
    let fx = Fx::new();
    write(fx.l[1].join("b"), "file b");
    mkdir_p(fx.l[1].join("a/b/c"));
    write(fx.l[1].join("a/b/c/x"), "hidden by opaque");
    symlink("nowhere", fx.l[1].join("a/c"));
    mkdir_p(fx.l[0].join("a/b/c"));
    support::opaque_user(&fx.l[0].join("a/b/c"));
    write(fx.l[0].join("a/b/c/y"), "y");
    let m = fx.mount();
    fs::remove_file(fx.m("b")).unwrap();
    renameat2(&fx.m("a/b"), &fx.m("b"), RenameFlags::empty())
        .or_panic("rename a/b -> b", fx.m("a/b"));
    renameat2(&fx.m("b"), &fx.m("a"), RenameFlags::RENAME_EXCHANGE)
        .or_panic("exchange b <-> a", fx.m("a"));
    let check = |when: &str| {
        assert_eq!(ls(fx.m("a")), ["c"], "{when}: a is the old a/b");
        assert!(
            lstat(fx.m("a/c")).is_dir(),
            "{when}: a/c must be the opaque dir, not a's old symlink"
        );
        assert_eq!(ls(fx.m("a/c")), ["y"], "{when}: a/c stays opaque");
        assert_eq!(
            ls(fx.m("b")),
            ["c"],
            "{when}: b is the old a (its b moved out)"
        );
        assert_eq!(
            fs::read_link(fx.m("b/c")).ok(),
            Some(PathBuf::from("nowhere")),
            "{when}: b/c is a's old symlink"
        );
    };
    check("after the renames");
    assert!(m.unmount().success());
    let _m = fx.mount();
    check("after remount");
}
