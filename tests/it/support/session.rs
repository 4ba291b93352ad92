//! Sessions over a private copy of `examples/rootfs` (or over another tree), launched by root
//! or by the unprivileged `ovlrun-test` user, on the backend `OVLRUN_FS` picks.
//!
//! The same shape as `launcher.rs`'s `Fixture`/`UserFixture` (and its `require_unprivileged!`
//! checks), with the caller a value, so that one test body runs as both: [`Session`],
//! [`Caller`], `require_caller!`. A candidate to fold `launcher.rs`'s copies into.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::unistd::User;

use super::{Out, TestDir, example_rootfs, ovlrun_bin, run_within};

/// How long one session may take before its test fails.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(60);

/// The unprivileged user `scripts/setup.sh` creates, with a range in /etc/subuid.
pub const TEST_USER: &str = "ovlrun-test";

/// The `PATH` of the unprivileged caller's clean environment.
const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/// Who runs `ovlrun`.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Host root (the test process itself).
    Root,
    /// [`TEST_USER`], from a clean environment.
    User(User),
}

impl Caller {
    /// "root" or "user", for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Caller::Root => "root",
            Caller::User(_) => "user",
        }
    }

    pub fn is_root(&self) -> bool {
        matches!(self, Caller::Root)
    }

    /// Makes `cmd` run as this caller: for the user, its uid/gid, `home` as HOME and working
    /// directory, and a clean environment that keeps only `OVLRUN_FS` (scripts/test.sh runs
    /// the session tests once per backend). Root's `cmd` inherits the test's environment.
    pub fn apply(&self, cmd: &mut Command, home: &Path) {
        if let Caller::User(user) = self {
            cmd.env_clear()
                .env("HOME", home)
                .env("PATH", USER_PATH)
                .env("USER", &user.name)
                .envs(std::env::var_os("OVLRUN_FS").map(|v| ("OVLRUN_FS", v)))
                .current_dir(home)
                .uid(user.uid.as_raw())
                .gid(user.gid.as_raw());
        }
    }
}

/// [`TEST_USER`], when it exists and has ranges in both /etc/subuid and /etc/subgid.
pub fn test_user() -> Option<User> {
    let user = User::from_name(TEST_USER).ok().flatten()?;
    let has_range = |file: &str| {
        fs::read_to_string(file).is_ok_and(|c| {
            c.lines().any(|l| {
                let f: Vec<&str> = l.trim().split(':').collect();
                f.len() == 3
                    && (f[0] == user.name || f[0] == user.uid.to_string())
                    && f[2].parse::<u32>().is_ok_and(|n| n > 0)
            })
        })
    };
    (has_range("/etc/subuid") && has_range("/etc/subgid")).then_some(user)
}

/// Whether every directory above `path` lets others search it (so another user reaches it).
pub fn searchable_by_others(path: &Path) -> bool {
    path.ancestors()
        .skip(1)
        .all(|d| fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 != 0))
}

/// newuidmap and newgidmap (package uidmap) are installed.
pub fn newuidmap_available() -> bool {
    ["newuidmap", "newgidmap"].iter().all(|h| {
        ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(h).is_file())
    })
}

/// Whether the user can reach the ovlrun binary and the test directories.
pub fn user_reaches_the_tests() -> bool {
    searchable_by_others(Path::new(ovlrun_bin()))
        && searchable_by_others(Path::new(env!("CARGO_TARGET_TMPDIR")).join("it").as_path())
}

/// Skips (locally) or fails (under `CI`) a test that cannot launch sessions as this caller;
/// evaluates to the [`Caller`]: `require_caller!(root)` or `require_caller!(user)`.
macro_rules! require_caller {
    (root) => {{
        require_launcher!();
        $crate::support::session::Caller::Root
    }};
    (user) => {{
        require_launcher!();
        require!(
            $crate::support::session::test_user().is_some(),
            "find user ovlrun-test with a range in /etc/subuid and /etc/subgid (scripts/setup.sh)"
        );
        require!(
            $crate::support::session::newuidmap_available(),
            "find newuidmap/newgidmap (package uidmap)"
        );
        require!(
            $crate::support::session::user_reaches_the_tests(),
            "reach the binary and the test dirs as another user (a parent lacks o+x)"
        );
        $crate::support::session::Caller::User($crate::support::session::test_user().unwrap())
    }};
}

/// One test's directory, rootfs, state root and caller. The state root lives in a 0700 home
/// the caller owns (the user's state must be the user's).
pub struct Session {
    /// Removed when the test ends.
    pub dir: TestDir,
    pub rootfs: PathBuf,
    pub state: PathBuf,
    pub home: PathBuf,
    pub caller: Caller,
}

impl Session {
    /// Over a private `cp -a` of `examples/rootfs` (owned by root, as the original is).
    pub fn new(caller: Caller) -> Session {
        let dir = TestDir::new();
        let rootfs = dir.join("rootfs");
        let out = run_within(
            Command::new("cp")
                .arg("-a")
                .arg(example_rootfs())
                .arg(&rootfs),
            SESSION_TIMEOUT,
        );
        assert!(out.status.success(), "cp -a failed\n{}", out.context());
        Session::with_dir(dir, rootfs, caller)
    }

    /// Over `rootfs` itself (a tree the sessions must not change: use a discarding policy).
    pub fn over(rootfs: &Path, caller: Caller) -> Session {
        Session::with_dir(TestDir::new(), rootfs.to_owned(), caller)
    }

    fn with_dir(dir: TestDir, rootfs: PathBuf, caller: Caller) -> Session {
        let home = dir.mkdir("home");
        if let Caller::User(user) = &caller {
            nix::unistd::chown(&home, Some(user.uid), Some(user.gid)).unwrap();
        }
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
        Session {
            state: home.join("state"),
            rootfs,
            dir,
            home,
            caller,
        }
    }

    /// `ovlrun ARGS..` as the caller, with `OVLRUN_STATE` in the test's home.
    pub fn ovlrun(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(ovlrun_bin());
        self.caller.apply(&mut cmd, &self.home);
        cmd.env("OVLRUN_STATE", &self.state).args(args);
        cmd
    }

    /// `ovlrun FLAGS.. --rootfs ROOTFS -- ARGV..` as the caller.
    pub fn cmd(&self, flags: &[&str], argv: &[&str]) -> Command {
        let mut cmd = self.ovlrun(flags);
        cmd.arg("--rootfs").arg(&self.rootfs).arg("--").args(argv);
        cmd
    }

    /// Runs `sh -c SCRIPT` in a session with `flags`, within [`SESSION_TIMEOUT`].
    #[track_caller]
    pub fn sh(&self, flags: &[&str], script: &str) -> Out {
        run_within(
            &mut self.cmd(flags, &["/bin/sh", "-c", script]),
            SESSION_TIMEOUT,
        )
    }

    /// Gives a directory the test made to the caller (so the user can write it).
    pub fn give(&self, path: &Path) {
        if let Caller::User(user) = &self.caller {
            nix::unistd::chown(path, Some(user.uid), Some(user.gid)).unwrap();
        }
    }
}
