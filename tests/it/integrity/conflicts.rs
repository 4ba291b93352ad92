//! Issue 14 item 10, "conflicts are detected, not silent": two sessions over one rootfs, the
//! rootfs changed under a running session, on both backends. A commit whose paths the rootfs
//! changed too since the session began is refused whole (nothing applied, the session kept,
//! each path listed, `--json` too); `--force` commits over them; `diff --conflicts` lists
//! them; what changed elsewhere in the rootfs is no conflict.

use std::fs;

use crate::policy::{Fixture, run_cmd};
use crate::support::{self, lstat_opt, read_string, write};

/// Runs SCRIPT as a preserve session on backend `fs_name` and returns its id.
#[track_caller]
fn preserved_on(f: &Fixture, fs_name: &str, script: &str) -> String {
    let before = f.session_ids();
    f.sh(&["--policy", "preserve", "--fs", fs_name], script)
        .expect_ok();
    let new: Vec<String> = f
        .session_ids()
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    new.into_iter().next().unwrap()
}

/// `(change, path, conflict kind)` of a `--json` list of conflicts.
#[track_caller]
fn json_conflicts(stdout: &str) -> Vec<(String, String, String)> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("not a JSON array ({e}):\n{stdout}"));
    rows.iter()
        .map(|r| {
            (
                r["change"].as_str().unwrap_or_default().to_owned(),
                r["path"].as_str().unwrap_or_default().to_owned(),
                r["conflict"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// A edits `/etc/motd`, deletes `/etc/victim` and `/etc/shared`; B edits `/etc/motd`,
/// appends to `/etc/shared`, adds `/etc/bnew` and never touches `/etc/victim`. After A's
/// commit, B's is refused listing exactly `/etc/motd` (changed) and `/etc/shared` (removed):
/// the rootfs keeps A's tree and B stays listed. `diff --conflicts` lists the same two.
/// `--force` commits B: its motd, shared and bnew; `/etc/victim` stays deleted.
#[test]
fn a_second_commit_over_the_same_paths_is_refused_until_forced() {
    require!(
        crate::policy::can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    for fs_name in ["kernel", "fuse"] {
        let what = format!("--fs {fs_name}");
        let f = Fixture::new();
        write(f.rootfs.join("etc/victim"), "victim\n");
        write(f.rootfs.join("etc/shared"), "shared\n");
        let a = preserved_on(
            &f,
            fs_name,
            "echo A > /etc/motd; rm /etc/victim /etc/shared",
        );
        let b = preserved_on(
            &f,
            fs_name,
            "echo B > /etc/motd; echo more >> /etc/shared; echo new > /etc/bnew",
        );
        run_cmd(&mut f.ovlrun(&["commit", &a])).expect_ok();
        let after_a = support::Frozen::take(&f.rootfs);

        let out = run_cmd(&mut f.ovlrun(&["diff", "--conflicts", &b]));
        out.expect_ok();
        assert_eq!(
            out.stdout,
            "C /etc/motd\nA /etc/shared\n",
            "{what}\n{}",
            out.context()
        );
        let out = run_cmd(&mut f.ovlrun(&["diff", "--conflicts", "--json", &b]));
        out.expect_ok();
        assert_eq!(
            json_conflicts(&out.stdout),
            [
                ("C".into(), "/etc/motd".into(), "changed".into()),
                ("A".into(), "/etc/shared".into(), "removed".into())
            ],
            "{what}"
        );

        let out = run_cmd(&mut f.ovlrun(&["commit", &b]));
        assert_eq!(out.code(), 1, "{what}: not refused\n{}", out.context());
        let listed: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("ovlrun: conflict: "))
            .collect();
        assert_eq!(listed.len(), 2, "{what}\n{}", out.context());
        assert!(listed[0].contains(" /etc/motd:"), "{what}: {listed:?}");
        assert!(listed[1].contains(" /etc/shared:"), "{what}: {listed:?}");
        after_a.assert_unchanged(&f.rootfs, &format!("{what}: refused commit"));
        assert_eq!(read_string(f.rootfs.join("etc/motd")), "A\n", "{what}");
        let row = f
            .ls_row(&b)
            .unwrap_or_else(|| panic!("{what}: {b} not kept"));
        assert_eq!(row["status"], "preserved", "{what}: {row}");

        let out = run_cmd(&mut f.ovlrun(&["commit", "--json", &b]));
        assert_eq!(out.code(), 1, "{what}\n{}", out.context());
        assert_eq!(json_conflicts(&out.stdout).len(), 2, "{what}");
        after_a.assert_unchanged(&f.rootfs, &format!("{what}: refused --json commit"));

        run_cmd(&mut f.ovlrun(&["commit", "--force", &b])).expect_ok();
        assert_eq!(read_string(f.rootfs.join("etc/motd")), "B\n", "{what}");
        assert_eq!(
            read_string(f.rootfs.join("etc/shared")),
            "shared\nmore\n",
            "{what}"
        );
        assert_eq!(read_string(f.rootfs.join("etc/bnew")), "new\n", "{what}");
        assert!(
            lstat_opt(f.rootfs.join("etc/victim")).is_none(),
            "{what}: B's commit brought back /etc/victim, which A deleted and B never touched"
        );
        f.assert_no_sessions(&what);
    }
}

/// Two sessions that change different paths of one directory both commit, in either order,
/// and a session over a rootfs nobody changed commits: no false conflict.
#[test]
fn sessions_changing_different_paths_commit_without_conflict() {
    require!(
        crate::policy::can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    for fs_name in ["kernel", "fuse"] {
        let what = format!("--fs {fs_name}");
        let f = Fixture::new();
        let a = preserved_on(&f, fs_name, "echo A > /etc/motd; echo a > /etc/a-new");
        let b = preserved_on(
            &f,
            fs_name,
            "echo B >> /etc/hostname; rm /etc/shells; echo b > /etc/b-new",
        );
        run_cmd(&mut f.ovlrun(&["commit", &a])).expect_ok();
        let out = run_cmd(&mut f.ovlrun(&["diff", "--conflicts", &b]));
        assert_eq!(out.stdout, "", "{what}\n{}", out.context());
        run_cmd(&mut f.ovlrun(&["commit", &b])).expect_ok();
        assert_eq!(read_string(f.rootfs.join("etc/motd")), "A\n", "{what}");
        assert_eq!(read_string(f.rootfs.join("etc/b-new")), "b\n", "{what}");
        assert!(lstat_opt(f.rootfs.join("etc/shells")).is_none(), "{what}");
        f.sh(
            &["--policy", "commit", "--fs", fs_name],
            "echo C > /etc/motd",
        )
        .expect_ok();
        assert_eq!(read_string(f.rootfs.join("etc/motd")), "C\n", "{what}");
        f.assert_no_sessions(&what);
    }
}

/// B removes a directory; then a file two levels inside it is edited in place (a host tool:
/// the directories above it do not change). B's commit would delete that edit, so it is
/// refused, naming the file beneath. A commit by another session into the directory is one
/// too (it also sets the directories' times, so the directory itself shows as changed).
#[test]
fn removing_a_directory_whose_contents_changed_is_a_conflict() {
    require!(
        crate::policy::can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    for fs_name in ["kernel", "fuse"] {
        let what = format!("--fs {fs_name}");
        let f = Fixture::new();
        support::mkdir_p(f.rootfs.join("home/user/sub"));
        write(f.rootfs.join("home/user/sub/old"), "old\n");
        let b = preserved_on(&f, fs_name, "rm -r /home/user");
        write(f.rootfs.join("home/user/sub/old"), "edited\n");
        let out = run_cmd(&mut f.ovlrun(&["commit", "--json", &b]));
        assert_eq!(out.code(), 1, "{what}\n{}", out.context());
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(rows.len(), 1, "{what}: {rows:?}");
        assert_eq!(rows[0]["path"], "/home/user", "{what}");
        assert_eq!(rows[0]["conflict"]["kind"], "inside", "{what}");
        assert_eq!(rows[0]["conflict"]["path"], "/home/user/sub/old", "{what}");
        assert_eq!(
            read_string(f.rootfs.join("home/user/sub/old")),
            "edited\n",
            "{what}"
        );

        let a = preserved_on(&f, fs_name, "echo new > /home/user/sub/new");
        let c = preserved_on(&f, fs_name, "rm -r /home/user");
        run_cmd(&mut f.ovlrun(&["commit", &a])).expect_ok();
        let out = run_cmd(&mut f.ovlrun(&["commit", &c]));
        assert_eq!(out.code(), 1, "{what}\n{}", out.context());
        assert_eq!(
            read_string(f.rootfs.join("home/user/sub/new")),
            "new\n",
            "{what}"
        );
    }
}

/// The rootfs changed by someone else (a host tool) while a `--policy commit` session ran:
/// the launcher keeps the session instead of committing over it (exit 125, the path named).
#[test]
fn a_commit_policy_keeps_a_session_whose_path_changed_on_the_host() {
    require!(
        crate::policy::can_run_sessions(),
        "run sessions (root, /dev/fuse, busybox)"
    );
    let f = Fixture::new();
    let sig = f.dir.join("sig");
    fs::create_dir(&sig).unwrap();
    let bind = format!("{}:/mnt", sig.display());
    let mut bg = support::Bg::spawn(
        &mut f.session_cmd(
            &["--policy", "commit", "--bind", &bind],
            "echo B > /etc/motd; echo written; while [ ! -e /mnt/go ]; do sleep 0.05; done",
        ),
        crate::policy::RUN_TIMEOUT,
    );
    bg.wait_line("written");
    write(f.rootfs.join("etc/motd"), "host\n");
    write(sig.join("go"), "");
    let out = bg.wait();
    assert_eq!(
        out.code(),
        125,
        "committed over the host's edit\n{}",
        out.context()
    );
    assert!(
        out.stderr.contains("not committed") && out.stderr.contains("/etc/motd"),
        "{}",
        out.context()
    );
    assert_eq!(read_string(f.rootfs.join("etc/motd")), "host\n");
    assert_eq!(f.session_ids().len(), 1, "the session was not kept");
}
