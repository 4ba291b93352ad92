//! Issue 14 items 4 and 5: the tree's own names are data.
//!
//! - Names that look like whiteouts (`.wh.passwd`, `.wh..wh..opq`) made in a session are
//!   files on both backends: the upper's format is recorded with it and obeyed, so a commit
//!   installs them as files and deletes nothing, a resume on the other backend sees them, and
//!   `export` refuses them with a named error instead of writing whiteouts.
//! - Names that are not UTF-8 or hold a newline: text `diff` escapes them as `ls -b` does,
//!   `diff --json` carries them losslessly (`path_hex`), `commit --atomic` journals them, and
//!   a reader that closes the pipe early gets no panic.
//! - Trees deeper than PATH_MAX in an upper: `diff`, `diff --json`, `export` and `commit`
//!   walk them by directory fd and carry the deep file through.

use std::fs;
use std::path::Path;

use crate::policy::{Fixture, can_run_sessions, run_cmd};
use crate::support::{ls, lstat, lstat_opt, read_string};

macro_rules! require_sessions {
    () => {
        require!(
            can_run_sessions(),
            "run sessions (root, /dev/fuse, busybox)"
        );
    };
}

/// What a hostile or unlucky session writes: ordinary files with whiteout-like names.
const WHITEOUT_NAMES: &str = "echo notes > /etc/.wh.passwd; touch /bin/.wh..wh..opq";

/// `/etc/passwd` and `/bin` as they are, and the two files present as files.
#[track_caller]
fn assert_intact_with_files(rootfs: &Path, passwd: &str, bin: &[String], what: &str) {
    assert_eq!(read_string(rootfs.join("etc/passwd")), passwd, "{what}");
    let mut now = ls(rootfs.join("bin"));
    now.retain(|n| n != ".wh..wh..opq");
    assert_eq!(now, bin, "{what}: /bin changed");
    assert_eq!(
        read_string(rootfs.join("etc/.wh.passwd")),
        "notes\n",
        "{what}"
    );
    assert!(lstat(rootfs.join("bin/.wh..wh..opq")).is_file(), "{what}");
}

/// On each backend: the names are made inside the session, `diff` lists them as added,
/// a resume on the other backend sees them and `/etc/passwd` beside them, `export` fails
/// naming the file (and leaves no output), and `commit` installs them as files while
/// `/etc/passwd` and `/bin` stay as they were.
#[test]
fn whiteout_names_are_files_on_both_backends() {
    require_sessions!();
    for (fs_name, other) in [("kernel", "fuse"), ("fuse", "kernel")] {
        let what = format!("--fs {fs_name}");
        let f = Fixture::new();
        let passwd = read_string(f.rootfs.join("etc/passwd"));
        let bin = ls(f.rootfs.join("bin"));
        let out = f.sh(&["--policy", "preserve", "--fs", fs_name], WHITEOUT_NAMES);
        out.expect_ok();
        let (id, _) = out.kept_session();

        let diff = run_cmd(&mut f.ovlrun(&["diff", &id]));
        diff.expect_ok();
        assert_eq!(
            diff.stdout,
            "A /bin/.wh..wh..opq\nA /etc/.wh.passwd\n",
            "{what}\n{}",
            diff.context()
        );

        let mut cmd = f.ovlrun(&[
            "run", "--resume", &id, "--policy", "preserve", "--fs", other,
        ]);
        cmd.args([
            "--",
            "/bin/sh",
            "-c",
            "cat /etc/.wh.passwd; test -f /etc/passwd && test -f /bin/.wh..wh..opq && test -x /bin/sh && echo seen",
        ]);
        run_cmd(&mut cmd)
            .expect_ok()
            .expect_stdout(&["notes", "seen"]);

        let tar = f.dir.join("layer.tar");
        let export = run_cmd(f.ovlrun(&["export", &id, "-o"]).arg(&tar));
        assert_ne!(
            export.code(),
            0,
            "{what}: export wrote whiteouts\n{}",
            export.context()
        );
        assert!(
            export.stderr.contains("cannot hold a file named `.wh.*`")
                && export.stderr.contains(".wh."),
            "{what}: not the named error\n{}",
            export.context()
        );
        assert!(lstat_opt(&tar).is_none(), "{what}: a layer was left");

        run_cmd(&mut f.ovlrun(&["commit", &id])).expect_ok();
        assert_intact_with_files(&f.rootfs, &passwd, &bin, &what);
        f.assert_no_sessions(&what);

        // And straight through a commit policy.
        fs::remove_file(f.rootfs.join("etc/.wh.passwd")).unwrap();
        fs::remove_file(f.rootfs.join("bin/.wh..wh..opq")).unwrap();
        for policy in ["commit", "commit-atomic"] {
            f.sh(&["--policy", policy, "--fs", fs_name], WHITEOUT_NAMES)
                .expect_ok();
            assert_intact_with_files(&f.rootfs, &passwd, &bin, &format!("{what} {policy}"));
            fs::remove_file(f.rootfs.join("etc/.wh.passwd")).unwrap();
            fs::remove_file(f.rootfs.join("bin/.wh..wh..opq")).unwrap();
        }
    }
}

/// A session makes `/etc/a<newline>b` and `/etc/x<0xff>y`: text `diff` shows each on one
/// escaped line, `diff --json` gives the first as `path` and the second as `path_hex`,
/// `diff --json` into a closed pipe exits 0 without a panic, and `commit --atomic` puts
/// both names, byte for byte, into the rootfs.
#[test]
fn names_that_are_not_utf8_survive_diff_json_and_an_atomic_commit() {
    require_sessions!();
    use std::os::unix::ffi::OsStrExt;
    let f = Fixture::new();
    let id = f.preserved(r#"touch "$(printf '/etc/a\nb')" "$(printf '/etc/x\377y')""#);

    let text = run_cmd(&mut f.ovlrun(&["diff", &id]));
    text.expect_ok();
    assert_eq!(
        text.stdout,
        "A /etc/a\\nb\nA /etc/x\\377y\n",
        "{}",
        text.context()
    );

    let json = run_cmd(&mut f.ovlrun(&["diff", "--json", &id]));
    json.expect_ok();
    let rows: serde_json::Value = serde_json::from_str(&json.stdout)
        .unwrap_or_else(|e| panic!("not JSON: {e}\n{}", json.context()));
    assert_eq!(
        rows,
        serde_json::json!([
            {"change": "A", "path": "/etc/a\nb"},
            {"change": "A", "path_hex": "2f6574632f78ff79"},
        ]),
        "{}",
        json.context()
    );

    // The reader is gone before ovlrun prints (`ovlrun diff --json ID | head -0`).
    let mut child = f
        .ovlrun(&["diff", "--json", &id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "diff into a closed pipe: {stderr}"
    );
    assert!(stderr.is_empty(), "diff into a closed pipe said: {stderr}");

    run_cmd(&mut f.ovlrun(&["commit", "--atomic", &id])).expect_ok();
    let mut names: Vec<Vec<u8>> = fs::read_dir(f.rootfs.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .filter(|n| n.starts_with(b"a\n") || n.starts_with(b"x"))
        .collect();
    names.sort();
    assert_eq!(names, [b"a\nb".to_vec(), b"x\xffy".to_vec()]);
    f.assert_no_sessions("the atomic commit");
}

/// Levels of the deep tree and the length of each name: 300 × 21 bytes, past PATH_MAX.
const DEEP_LEVELS: usize = 300;

fn deep_names() -> Vec<String> {
    (0..DEEP_LEVELS)
        .map(|i| format!("level-{i:03}-abcdefghijk"))
        .collect()
}

/// Makes `top/deep/<300 levels>/leaf` (content `deep leaf\n`) by `mkdirat` from a directory
/// fd, since no path string reaches that far.
fn make_deep(top: &Path) {
    use nix::fcntl::{OFlag, open, openat};
    use nix::sys::stat::{Mode, mkdirat};
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir = open(top, flags, Mode::empty()).unwrap();
    for name in std::iter::once("deep".to_owned()).chain(deep_names()) {
        mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(0o755)).unwrap();
        dir = openat(&dir, name.as_str(), flags, Mode::empty()).unwrap();
    }
    let leaf = openat(
        &dir,
        "leaf",
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    nix::unistd::write(&leaf, b"deep leaf\n").unwrap();
}

/// The content of `top/deep/<300 levels>/leaf`, read by fd; `None` when any level is missing.
fn read_deep(top: &Path) -> Option<Vec<u8>> {
    use nix::fcntl::{OFlag, open, openat};
    use nix::sys::stat::Mode;
    use std::io::Read;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir = open(top, flags, Mode::empty()).ok()?;
    for name in std::iter::once("deep".to_owned()).chain(deep_names()) {
        dir = openat(
            &dir,
            name.as_str(),
            flags | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .ok()?;
    }
    let leaf = openat(
        &dir,
        "leaf",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut out = Vec::new();
    fs::File::from(leaf).read_to_end(&mut out).ok()?;
    Some(out)
}

/// The deep leaf's path as `diff` prints it.
fn deep_leaf_shown() -> String {
    format!("/deep/{}/leaf", deep_names().join("/"))
}

/// A preserved session's upper gets a tree deeper than PATH_MAX (6,300 bytes) written
/// straight into it: `diff` and `diff --json` list its leaf, `export` writes it into the
/// layer, and `commit` (plain and `--atomic`) installs it in the rootfs, byte for byte.
#[test]
fn trees_deeper_than_path_max_are_diffed_exported_and_committed() {
    require_sessions!();
    for commit_flags in [&["commit"][..], &["commit", "--atomic"]] {
        let what = commit_flags.join(" ");
        let f = Fixture::new();
        let id = f.preserved("echo touched > /etc/motd");
        make_deep(&f.upper_of(&id));
        let leaf = deep_leaf_shown();
        assert!(leaf.len() > 4096);
        // The whole context would hold every deep path: its start says enough.
        let short = |out: &crate::support::Out| {
            let s = out.context();
            s.chars().take(600).collect::<String>()
        };

        let diff = run_cmd(&mut f.ovlrun(&["diff", &id]));
        assert_eq!(diff.code(), 0, "diff\n{}", short(&diff));
        assert!(
            diff.stdout.lines().any(|l| l == format!("A {leaf}")),
            "diff does not list the deep leaf\n{}",
            short(&diff)
        );
        assert!(diff.stdout.lines().any(|l| l == "C /etc/motd"));

        let json = run_cmd(&mut f.ovlrun(&["diff", "--json", &id]));
        assert_eq!(json.code(), 0, "diff --json\n{}", short(&json));
        let rows: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        assert!(
            rows.as_array()
                .unwrap()
                .iter()
                .any(|r| r["change"] == "A" && r["path"] == leaf.as_str()),
            "diff --json does not list the deep leaf"
        );

        let tar_path = f.dir.join("layer.tar");
        let export = run_cmd(f.ovlrun(&["export", &id, "-o"]).arg(&tar_path));
        assert_eq!(export.code(), 0, "export\n{}", short(&export));
        let mut archive = tar::Archive::new(fs::File::open(&tar_path).unwrap());
        let mut found = None;
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().as_os_str() == &leaf[1..] {
                let mut data = String::new();
                std::io::Read::read_to_string(&mut entry, &mut data).unwrap();
                found = Some(data);
            }
        }
        assert_eq!(
            found.as_deref(),
            Some("deep leaf\n"),
            "the layer's deep leaf"
        );

        let commit = run_cmd(&mut f.ovlrun(&[commit_flags, &[&id]].concat()));
        assert_eq!(commit.code(), 0, "{what}\n{}", short(&commit));
        assert_eq!(
            read_deep(&f.rootfs).as_deref(),
            Some(&b"deep leaf\n"[..]),
            "{what}"
        );
        assert_eq!(read_string(f.rootfs.join("etc/motd")), "touched\n");
        f.assert_no_sessions(&what);
    }
}
