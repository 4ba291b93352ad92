//! Unit tests of the overlay rules on temporary directories; nothing is mounted.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags};
use nix::sys::stat::{Mode, SFlag, mknod};

use super::*;

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    /// Two lowers (`l1` on top of `l2`), an empty upper.
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        for d in ["l1", "l2", "upper"] {
            fs::create_dir(root.join(d)).unwrap();
        }
        Fixture { _tmp: tmp, root }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn write(&self, rel: &str, data: &str) {
        let p = self.p(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    fn mkdir(&self, rel: &str) {
        fs::create_dir_all(self.p(rel)).unwrap();
    }

    fn whiteout(&self, rel: &str) {
        mknod(&self.p(rel), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
    }

    fn overlay(&self, format: Option<WhiteoutFormat>) -> Overlay {
        self.overlay_durable(format, true)
    }

    fn overlay_durable(&self, format: Option<WhiteoutFormat>, durable: bool) -> Overlay {
        Overlay::new(&OverlayConfig {
            lowers: vec![self.p("l1"), self.p("l2")],
            upper: self.p("upper"),
            work: None,
            whiteout: format,
            durable,
        })
        .unwrap()
    }
}

fn at(ovl: &Overlay, path: &str) -> Loc {
    let mut loc = ovl.root_loc();
    for comp in Path::new(path).components() {
        loc = ovl.lookup(&loc, comp.as_os_str()).unwrap().loc;
    }
    loc
}

fn names(ovl: &Overlay, dir: &str) -> Vec<String> {
    let mut n: Vec<String> = ovl
        .read_dir(&at(ovl, dir))
        .unwrap()
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

fn lookup_err(ovl: &Overlay, dir: &str, name: &str) -> Errno {
    ovl.lookup(&at(ovl, dir), OsStr::new(name)).unwrap_err()
}

fn read(ovl: &Overlay, path: &str) -> String {
    let fd = ovl.open(&at(ovl, path), OFlag::O_RDONLY).unwrap();
    std::io::read_to_string(fs::File::from(fd)).unwrap()
}

const OWNER: Owner = Owner { uid: 0, gid: 0 };

#[test]
fn upper_hides_lower_and_lowers_merge() {
    let f = Fixture::new();
    f.write("l2/d/a", "l2");
    f.write("l2/d/b", "l2");
    f.write("l1/d/a", "l1");
    f.write("upper/d/c", "up");
    let ovl = f.overlay(None);
    assert_eq!(names(&ovl, "d"), ["a", "b", "c"]);
    assert_eq!(read(&ovl, "d/a"), "l1");
    assert_eq!(read(&ovl, "d/b"), "l2");
    let d = ovl.lookup(&ovl.root_loc(), OsStr::new("d")).unwrap();
    assert_eq!(&*d.loc.lowers, &[LayerIdx(1), LayerIdx(2)]);
    assert_eq!(d.attr.st.st_nlink, 1, "merged dirs report one link");
}

#[test]
fn whiteouts_in_every_form_hide_lower_entries() {
    let f = Fixture::new();
    for n in ["x", "y", "z", "keep"] {
        f.write(&format!("l2/{n}"), n);
    }
    f.whiteout("l1/x");
    f.write("l1/.wh.y", "");
    f.whiteout("upper/z");
    let ovl = f.overlay(None);
    assert_eq!(names(&ovl, ""), ["keep"]);
    for n in ["x", "y", "z", ".wh.y"] {
        assert_eq!(lookup_err(&ovl, "", n), Errno::ENOENT, "{n}");
    }
}

#[test]
fn opaque_dirs_in_every_form_stop_the_descent() {
    let f = Fixture::new();
    for d in ["a", "b", "c"] {
        f.write(&format!("l2/{d}/below"), "");
        f.write(&format!("l1/{d}/above"), "");
    }
    crate::sys::xattr::set(&f.p("l1/a"), OsStr::new("user.overlay.opaque"), b"y", 0).unwrap();
    crate::sys::xattr::set(&f.p("l1/b"), OsStr::new("trusted.overlay.opaque"), b"y", 0).unwrap();
    f.write("l1/c/.wh..wh..opq", "");
    let ovl = f.overlay(None);
    for d in ["a", "b", "c"] {
        assert_eq!(names(&ovl, d), ["above"], "{d}");
    }
}

#[test]
fn a_file_hides_a_lower_directory_and_a_dir_stops_at_a_lower_file() {
    let f = Fixture::new();
    f.write("l2/n/inside", "");
    f.write("l1/n", "file");
    f.write("l2/m", "file");
    f.write("l1/m/inside", "");
    let ovl = f.overlay(None);
    assert_eq!(read(&ovl, "n"), "file");
    assert!(at(&ovl, "m").lowers.len() == 1);
    assert_eq!(names(&ovl, "m"), ["inside"]);
}

#[test]
fn copy_up_keeps_data_holes_metadata_xattrs_and_ino() {
    let f = Fixture::new();
    let p = f.p("l1/sparse");
    let file = fs::File::create(&p).unwrap();
    file.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(b"tail", (64 << 20) - 4).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    nix::unistd::chown(
        &p,
        Some(nix::unistd::Uid::from_raw(1234)),
        Some(nix::unistd::Gid::from_raw(4321)),
    )
    .unwrap();
    crate::sys::xattr::set(&p, OsStr::new("user.note"), b"kept", 0).unwrap();
    let old = fs::metadata(&p).unwrap();
    let ovl = f.overlay(None);
    let loc = at(&ovl, "sparse");
    let before = ovl.stat(&loc).unwrap();
    ovl.copy_up(&loc).unwrap();
    let up = fs::metadata(f.p("upper/sparse")).unwrap();
    assert_eq!(up.len(), old.len());
    assert!(up.blocks() < 1024, "holes kept: {} blocks", up.blocks());
    assert_eq!((up.mode(), up.uid(), up.gid()), (old.mode(), 1234, 4321));
    assert_eq!(up.mtime(), old.mtime());
    assert_eq!(up.mtime_nsec(), old.mtime_nsec());
    assert_eq!(
        ovl.getxattr(&loc, OsStr::new("user.note")).unwrap(),
        b"kept"
    );
    assert_eq!(
        ovl.stat(&loc).unwrap().ino,
        before.ino,
        "st_ino survives copy-up"
    );
    assert!(
        ovl.listxattr(&loc)
            .unwrap()
            .iter()
            .all(|n| !format::is_private_xattr(n))
    );
    assert!(
        fs::read_dir(f.p("upper.work/ovlrun"))
            .unwrap()
            .next()
            .is_none(),
        "scratch left clean"
    );
}

/// A durable overlay fsyncs each copied-up file before it takes its place; one that is not
/// (a discarded session, or one synced as a whole at its end) fsyncs none, and copies the same.
#[test]
fn only_a_durable_overlay_fsyncs_its_copy_ups() {
    for durable in [true, false] {
        let f = Fixture::new();
        for i in 0..3 {
            f.write(&format!("l1/d/f{i}"), &format!("data {i}\n"));
        }
        let ovl = f.overlay_durable(None, durable);
        for i in 0..3 {
            ovl.copy_up(&at(&ovl, &format!("d/f{i}"))).unwrap();
        }
        let want = if durable { 3 } else { 0 };
        assert_eq!(ovl.synced_copy_ups(), want, "durable: {durable}");
        for i in 0..3 {
            assert_eq!(
                fs::read_to_string(f.p(&format!("upper/d/f{i}"))).unwrap(),
                format!("data {i}\n")
            );
        }
    }
}

#[test]
fn copy_up_copies_parents_first_and_symlinks_as_symlinks() {
    let f = Fixture::new();
    f.mkdir("l2/a/b");
    fs::set_permissions(f.p("l2/a"), fs::Permissions::from_mode(0o751)).unwrap();
    symlink("../../nowhere", f.p("l2/a/b/link")).unwrap();
    let ovl = f.overlay(None);
    ovl.copy_up(&at(&ovl, "a/b/link")).unwrap();
    assert_eq!(fs::metadata(f.p("upper/a")).unwrap().mode() & 0o7777, 0o751);
    let link = fs::symlink_metadata(f.p("upper/a/b/link")).unwrap();
    assert!(link.file_type().is_symlink());
    assert_eq!(
        fs::read_link(f.p("upper/a/b/link")).unwrap(),
        Path::new("../../nowhere")
    );
    // A copied-up parent still merges with its lower.
    assert_eq!(names(&ovl, "a/b"), ["link"]);
}

#[test]
fn unlink_leaves_a_whiteout_only_where_a_lower_has_the_name() {
    let f = Fixture::new();
    f.write("l2/lowerfile", "x");
    f.write("upper/upperfile", "x");
    let ovl = f.overlay(None);
    let root = ovl.root_loc();
    ovl.unlink(&root, OsStr::new("lowerfile")).unwrap();
    ovl.unlink(&root, OsStr::new("upperfile")).unwrap();
    let wh = fs::symlink_metadata(f.p("upper/lowerfile")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert!(fs::symlink_metadata(f.p("upper/upperfile")).is_err());
    assert!(names(&ovl, "").is_empty());
    assert_eq!(
        ovl.unlink(&root, OsStr::new("lowerfile")),
        Err(Errno::ENOENT)
    );
}

#[test]
fn rmdir_refuses_merged_non_empty_and_removes_dirs_holding_whiteouts() {
    let f = Fixture::new();
    f.write("l2/d/x", "");
    let ovl = f.overlay(None);
    let root = ovl.root_loc();
    assert_eq!(ovl.rmdir(&root, OsStr::new("d")), Err(Errno::ENOTEMPTY));
    ovl.unlink(&at(&ovl, "d"), OsStr::new("x")).unwrap();
    ovl.rmdir(&root, OsStr::new("d")).unwrap();
    assert!(
        fs::symlink_metadata(f.p("upper/d"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert_eq!(lookup_err(&ovl, "", "d"), Errno::ENOENT);
}

#[test]
fn mkdir_over_a_whiteout_is_opaque() {
    let f = Fixture::new();
    f.write("l2/d/old", "");
    let ovl = f.overlay(None);
    let root = ovl.root_loc();
    ovl.unlink(&at(&ovl, "d"), OsStr::new("old")).unwrap();
    ovl.rmdir(&root, OsStr::new("d")).unwrap();
    ovl.create(&root, OsStr::new("d"), &NewNode::Dir { mode: 0o755 }, OWNER)
        .unwrap();
    assert!(names(&ovl, "d").is_empty());
    assert_eq!(
        crate::sys::xattr::get(&f.p("upper/d"), OsStr::new("user.overlay.opaque")).unwrap(),
        b"y"
    );
    assert!(
        fs::read_dir(f.p("upper.work/ovlrun"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn creating_a_char_device_0_0_is_refused_like_the_kernel() {
    let f = Fixture::new();
    let ovl = f.overlay(None);
    let node = NewNode::Special {
        mode: libc::S_IFCHR | 0o644,
        rdev: 0,
    };
    assert_eq!(
        ovl.create(&ovl.root_loc(), OsStr::new("c"), &node, OWNER)
            .unwrap_err(),
        Errno::EPERM
    );
}

#[test]
fn create_refuses_existing_names_and_aufs_names_in_an_aufs_upper() {
    let f = Fixture::new();
    f.write("l2/here", "");
    let ovl = f.overlay(Some(WhiteoutFormat::Aufs));
    let root = ovl.root_loc();
    let file = NewNode::File {
        mode: 0o644,
        flags: OFlag::O_RDWR,
    };
    assert_eq!(
        ovl.create(&root, OsStr::new("here"), &file, OWNER)
            .unwrap_err(),
        Errno::EEXIST
    );
    assert_eq!(
        ovl.create(&root, OsStr::new(".wh.x"), &file, OWNER)
            .unwrap_err(),
        Errno::EINVAL
    );
}

/// In a kernel-format upper `.wh.*` names are the user's files, as with the kernel
/// overlayfs: made, listed, looked up and removed as files, hiding nothing; in the lowers
/// they stay markers. The format is recorded at first use and a different one is refused.
#[test]
fn a_kernel_format_upper_holds_whiteout_names_as_files() {
    let f = Fixture::new();
    f.write("l2/etc/passwd", "root");
    f.write("l2/bin/sh", "sh");
    f.write("l1/etc/.wh.gone", "");
    let ovl = f.overlay(Some(WhiteoutFormat::Kernel));
    let file = NewNode::File {
        mode: 0o644,
        flags: OFlag::O_RDWR,
    };
    let etc = at(&ovl, "etc");
    let bin = at(&ovl, "bin");
    ovl.create(&etc, OsStr::new(".wh.passwd"), &file, OWNER)
        .unwrap();
    ovl.create(&bin, OsStr::new(".wh..wh..opq"), &file, OWNER)
        .unwrap();
    assert_eq!(names(&ovl, "etc"), [".wh.passwd", "passwd"]);
    assert_eq!(names(&ovl, "bin"), [".wh..wh..opq", "sh"]);
    assert!(
        ovl.lookup(&etc, OsStr::new(".wh.gone")).is_err(),
        "a lower marker"
    );
    ovl.create(&etc, OsStr::new("gone"), &file, OWNER).unwrap();
    assert!(
        f.p("upper/etc/.wh.passwd").is_file(),
        "kept by a create beside it"
    );
    drop(ovl);
    assert_eq!(
        crate::layers::format::recorded(&default_work(&f.p("upper"))).unwrap(),
        Some(WhiteoutFormat::Kernel)
    );
    let again = f.overlay(None);
    assert_eq!(
        again.format(),
        WhiteoutFormat::Kernel,
        "the record is obeyed"
    );
    let e = Overlay::new(&OverlayConfig {
        lowers: vec![f.p("l1"), f.p("l2")],
        upper: f.p("upper"),
        work: None,
        whiteout: Some(WhiteoutFormat::Aufs),
        durable: true,
    })
    .unwrap_err();
    assert!(matches!(e, LayerSetupError::FormatMismatch { .. }), "{e}");
}

#[test]
fn rename_of_a_lower_directory_moves_its_merged_tree() {
    let f = Fixture::new();
    f.write("l2/src/deep/a", "a");
    f.write("l1/src/b", "b");
    let ovl = f.overlay(None);
    let root = ovl.root_loc();
    let out = ovl
        .rename(
            &root,
            OsStr::new("src"),
            &root,
            OsStr::new("dst"),
            RenameFlags::empty(),
        )
        .unwrap();
    let RenameOutcome::Moved(moved) = &out else {
        panic!("a rename onto a free name moves: {out:?}");
    };
    assert_eq!(moved.path, Path::new("dst"));
    assert!(moved.lowers.is_empty());
    assert!(
        out.lowers_below().is_empty(),
        "the tree below is upper only"
    );
    assert_eq!(names(&ovl, "dst"), ["b", "deep"]);
    assert_eq!(read(&ovl, "dst/deep/a"), "a");
    assert_eq!(lookup_err(&ovl, "", "src"), Errno::ENOENT);
    assert_eq!(
        crate::sys::xattr::get(&f.p("upper/dst"), OsStr::new("user.overlay.opaque")).unwrap(),
        b"y"
    );
}

#[test]
fn rename_flags() {
    let f = Fixture::new();
    f.write("l2/a", "A");
    f.write("l2/b", "B");
    let ovl = f.overlay(None);
    let root = ovl.root_loc();
    let (a, b) = (OsStr::new("a"), OsStr::new("b"));
    assert_eq!(
        ovl.rename(&root, a, &root, b, RenameFlags::RENAME_NOREPLACE)
            .unwrap_err(),
        Errno::EEXIST
    );
    let out = ovl
        .rename(&root, a, &root, b, RenameFlags::RENAME_EXCHANGE)
        .unwrap();
    let RenameOutcome::Exchanged { source, target } = out else {
        panic!("an exchange swaps: {out:?}");
    };
    assert_eq!(
        (source.path.as_path(), target.path.as_path()),
        (Path::new("b"), Path::new("a"))
    );
    assert!(source.lowers.is_empty() && target.lowers.is_empty());
    assert_eq!((read(&ovl, "a"), read(&ovl, "b")), ("B".into(), "A".into()));
    let source = at(&ovl, "b");
    ovl.create(
        &root,
        OsStr::new("b2"),
        &NewNode::HardLink { source },
        OWNER,
    )
    .unwrap();
    let out = ovl
        .rename(&root, b, &root, OsStr::new("b2"), RenameFlags::empty())
        .unwrap();
    assert!(
        matches!(out, RenameOutcome::Unchanged),
        "two names of one object: {out:?}"
    );
    assert_eq!(names(&ovl, ""), ["a", "b", "b2"]);
    ovl.unlink(&root, OsStr::new("b2")).unwrap();
    ovl.rename(&root, a, &root, b, RenameFlags::empty())
        .unwrap();
    assert_eq!(names(&ovl, ""), ["b"]);
    assert_eq!(read(&ovl, "b"), "B");
    assert_eq!(
        ovl.rename(
            &root,
            a,
            &root,
            OsStr::new("c"),
            RenameFlags::RENAME_EXCHANGE
        )
        .unwrap_err(),
        Errno::ENOENT
    );
}

#[test]
fn rename_onto_a_non_empty_merged_dir_fails() {
    let f = Fixture::new();
    f.mkdir("l2/empty");
    f.write("l2/full/x", "");
    let ovl = f.overlay(None);
    let root = ovl.root_loc();
    assert_eq!(
        ovl.rename(
            &root,
            OsStr::new("empty"),
            &root,
            OsStr::new("full"),
            RenameFlags::empty()
        )
        .unwrap_err(),
        Errno::ENOTEMPTY
    );
}

#[test]
fn hard_link_of_a_lower_file_shares_the_upper_inode() {
    let f = Fixture::new();
    f.write("l2/orig", "data");
    let ovl = f.overlay(None);
    let root = ovl.root_loc();
    let source = at(&ovl, "orig");
    let (found, _) = ovl
        .create(
            &root,
            OsStr::new("link"),
            &NewNode::HardLink { source },
            OWNER,
        )
        .unwrap();
    assert_eq!(found.attr.st.st_nlink, 2);
    assert_eq!(found.attr.ino, ovl.stat(&at(&ovl, "orig")).unwrap().ino);
}

#[test]
fn aufs_format_writes_wh_files() {
    let f = Fixture::new();
    f.write("l2/gone", "");
    f.write("l2/d/x", "");
    let ovl = f.overlay(Some(WhiteoutFormat::Aufs));
    let root = ovl.root_loc();
    ovl.unlink(&root, OsStr::new("gone")).unwrap();
    assert!(f.p("upper/.wh.gone").exists());
    ovl.unlink(&at(&ovl, "d"), OsStr::new("x")).unwrap();
    ovl.rmdir(&root, OsStr::new("d")).unwrap();
    ovl.create(&root, OsStr::new("d"), &NewNode::Dir { mode: 0o755 }, OWNER)
        .unwrap();
    assert!(f.p("upper/d/.wh..wh..opq").exists());
    assert!(!f.p("upper/.wh.d").exists());
    assert!(names(&ovl, "d").is_empty());
    assert_eq!(names(&ovl, ""), ["d"]);
}

#[test]
fn setattr_copies_up_and_applies() {
    let f = Fixture::new();
    f.write("l2/file", "0123456789");
    let ovl = f.overlay(None);
    let loc = at(&ovl, "file");
    let changes = SetAttr {
        mode: Some(0o600),
        size: Some(4),
        ..SetAttr::default()
    };
    let attr = ovl.setattr(&loc, &changes, None).unwrap();
    assert_eq!((attr.st.st_mode & 0o7777, attr.st.st_size), (0o600, 4));
    assert_eq!(
        fs::read_to_string(f.p("l2/file")).unwrap(),
        "0123456789",
        "lower untouched"
    );
}

#[test]
fn setup_errors_name_the_path() {
    let f = Fixture::new();
    let open = |lowers: Vec<PathBuf>, upper: PathBuf| {
        Overlay::new(&OverlayConfig {
            lowers,
            upper,
            work: None,
            whiteout: None,
            durable: true,
        })
        .unwrap_err()
        .to_string()
    };
    let e = open(vec![f.p("missing")], f.p("upper"));
    assert!(e.contains("missing"), "{e}");
    let e = open(vec![f.p("upper")], f.p("upper"));
    assert!(e.contains("same directory"), "{e}");
    f.mkdir("l1/inner");
    let e = open(vec![f.p("l1")], f.p("l1/inner"));
    assert!(e.contains("is inside"), "{e}");
}

#[test]
fn hard_links_in_a_lower_stay_linked_after_copy_up() {
    let f = Fixture::new();
    f.write("l2/a/one", "old");
    f.mkdir("l2/b");
    fs::hard_link(f.p("l2/a/one"), f.p("l2/b/two")).unwrap();
    let ovl = f.overlay(None);
    let one = at(&ovl, "a/one");
    let ino = ovl.stat(&one).unwrap().ino;
    let fd = ovl.open(&one, OFlag::O_WRONLY | OFlag::O_TRUNC).unwrap();
    nix::unistd::write(&fd, b"new").unwrap();
    drop(fd);
    // The other name now reads the new data and is the same inode, with two links.
    assert_eq!(read(&ovl, "b/two"), "new");
    let two = ovl.stat(&at(&ovl, "b/two")).unwrap();
    assert_eq!(two.ino, ino);
    assert_eq!(two.st.st_nlink, 2, "the index link is not counted");
    assert_eq!(
        fs::metadata(f.p("upper/a/one")).unwrap().ino(),
        fs::metadata(f.p("upper/b/two")).unwrap().ino()
    );
    assert_eq!(
        fs::read_to_string(f.p("l2/b/two")).unwrap(),
        "old",
        "lower untouched"
    );
}

/// Writes a lower file of `len` bytes with a recognisable pattern; returns the data.
fn big_lower(f: &Fixture, rel: &str, len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    fs::create_dir_all(f.p(rel).parent().unwrap()).unwrap();
    fs::write(f.p(rel), &data).unwrap();
    data
}

fn read_bytes(ovl: &Overlay, path: &str) -> Vec<u8> {
    let fd = ovl.open(&at(ovl, path), OFlag::O_RDONLY).unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::from(fd), &mut out).unwrap();
    out
}

fn is_stub(path: &Path) -> bool {
    crate::sys::xattr::get(path, OsStr::new(format::METACOPY_XATTR)).is_ok()
}

#[test]
fn chmod_of_a_large_lower_file_copies_metadata_only() {
    let f = Fixture::new();
    let size = usize::try_from(METACOPY_MIN_SIZE).unwrap() * 2;
    let data = big_lower(&f, "l2/d/big", size);
    f.write("l2/small", "tiny");
    let ovl = f.overlay(None);
    let before = ovl.stat(&at(&ovl, "d/big")).unwrap();
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    let attr = ovl.setattr(&at(&ovl, "d/big"), &chmod, None).unwrap();
    assert_eq!(attr.st.st_mode & 0o7777, 0o600);
    assert_eq!(attr.st.st_size, before.st.st_size);
    assert_eq!(attr.ino, before.ino, "st_ino kept");
    assert_eq!(attr.st.st_blocks, before.st.st_blocks, "blocks of the data");
    let upper = fs::metadata(f.p("upper/d/big")).unwrap();
    assert!(
        upper.blocks() <= 8,
        "the upper copy holds no data (an xattr block at most)"
    );
    assert!(is_stub(&f.p("upper/d/big")));
    assert!(
        read_bytes(&ovl, "d/big") == data,
        "reads come from the lower"
    );
    // A small file is copied whole.
    ovl.setattr(&at(&ovl, "small"), &chmod, None).unwrap();
    assert!(!is_stub(&f.p("upper/small")));
    assert_eq!(fs::read_to_string(f.p("upper/small")).unwrap(), "tiny");
}

#[test]
fn writing_or_renaming_a_metadata_only_copy_completes_it() {
    let f = Fixture::new();
    let size = usize::try_from(METACOPY_MIN_SIZE).unwrap() + 7;
    let data = big_lower(&f, "l2/a", size);
    big_lower(&f, "l2/b", size);
    let ovl = f.overlay(None);
    let chown = SetAttr {
        uid: Some(4321),
        gid: Some(4321),
        ..SetAttr::default()
    };
    for name in ["a", "b"] {
        ovl.setattr(&at(&ovl, name), &chown, None).unwrap();
        assert!(is_stub(&f.p(&format!("upper/{name}"))));
    }
    let ino_a = ovl.stat(&at(&ovl, "a")).unwrap().ino;
    let fd = ovl.open(&at(&ovl, "a"), OFlag::O_WRONLY).unwrap();
    nix::sys::uio::pwrite(&fd, b"XY", 0).unwrap();
    drop(fd);
    let upper_a = fs::metadata(f.p("upper/a")).unwrap();
    assert!(
        !is_stub(&f.p("upper/a")),
        "complete after opening for writing"
    );
    assert_eq!(
        (upper_a.uid(), upper_a.gid()),
        (4321, 4321),
        "the stub's owner kept"
    );
    assert_eq!(ovl.stat(&at(&ovl, "a")).unwrap().ino, ino_a, "st_ino kept");
    let got = fs::read(f.p("upper/a")).unwrap();
    assert!(
        got[..2] == *b"XY" && got[2..] == data[2..],
        "the lower's data, then the write"
    );

    ovl.rename(
        &ovl.root_loc(),
        OsStr::new("b"),
        &ovl.root_loc(),
        OsStr::new("c"),
        RenameFlags::empty(),
    )
    .unwrap();
    assert!(!is_stub(&f.p("upper/c")), "complete before a rename");
    assert!(read_bytes(&ovl, "c") == data);
    assert!(fs::read(f.p("l2/a")).unwrap() == data, "lower untouched");
}

#[test]
fn complete_metacopies_leaves_an_upper_the_kernel_can_read() {
    let f = Fixture::new();
    let size = usize::try_from(METACOPY_MIN_SIZE).unwrap() * 3;
    let data = big_lower(&f, "l1/x/y/big", size);
    let ovl = f.overlay(None);
    let utimes = SetAttr {
        mtime: Some(SetTime::At(nix::sys::time::TimeSpec::new(1_000_000, 0))),
        ..SetAttr::default()
    };
    ovl.setattr(&at(&ovl, "x/y/big"), &utimes, None).unwrap();
    ovl.setxattr(&at(&ovl, "x/y/big"), OsStr::new("user.note"), b"kept", 0)
        .unwrap();
    assert!(is_stub(&f.p("upper/x/y/big")));
    let marker = f.p("upper.work/ovlrun-metacopy");
    assert!(marker.exists(), "no marker in the work dir for the stub");
    let dir_mtime = fs::metadata(f.p("upper/x/y")).unwrap().mtime();
    assert_eq!(ovl.complete_metacopies().unwrap(), 1);
    assert!(!marker.exists(), "marker left after completing every stub");
    assert_eq!(ovl.complete_metacopies().unwrap(), 0, "nothing left");
    let up = f.p("upper/x/y/big");
    assert!(!is_stub(&up));
    assert!(
        fs::read(&up).unwrap() == data,
        "the data is in the upper now"
    );
    assert_eq!(fs::metadata(&up).unwrap().mtime(), 1_000_000, "times kept");
    assert_eq!(
        crate::sys::xattr::get(&up, OsStr::new("user.note")).unwrap(),
        b"kept"
    );
    assert_eq!(
        fs::metadata(f.p("upper/x/y")).unwrap().mtime(),
        dir_mtime,
        "the parent's times kept"
    );
}
