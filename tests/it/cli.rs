//! The command line as bwrap and podman users type it (issue 16): the command after the
//! options with or without `--`, clap's usage errors kept whole on one line, readers that
//! stop early, and the session's environment flags.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{self, Out, TestDir, example_rootfs};

/// How long one session may take before its test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// `ovlrun ARGS..` with `OVLRUN_STATE` in `dir`, under [`RUN_TIMEOUT`].
fn ovlrun(dir: &TestDir, args: &[&str]) -> Out {
    support::run_within(
        Command::new(support::ovlrun_bin())
            .env("OVLRUN_STATE", dir.join("state"))
            .args(args),
        RUN_TIMEOUT,
    )
}

fn rootfs() -> String {
    example_rootfs().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------------
// The command after the options

#[test]
fn the_command_follows_the_options_with_or_without_double_dash() {
    require_launcher!();
    let dir = TestDir::new();
    let r = rootfs();
    let with = ovlrun(&dir, &["--rootfs", &r, "--", "ls", "-l", "/etc/hostname"]);
    let without = ovlrun(&dir, &["--rootfs", &r, "ls", "-l", "/etc/hostname"]);
    for out in [&with, &without] {
        out.expect_ok();
        assert!(
            out.stdout.starts_with("-rw") && out.stdout.trim_end().ends_with("/etc/hostname"),
            "`ls -l` did not get its -l\n{}",
            out.context()
        );
    }
    // Everything from the command on is the command's, ovlrun's own flags included.
    ovlrun(
        &dir,
        &[
            "--rootfs", &r, "echo", "--rootfs", "x", "--policy", "commit", "-n",
        ],
    )
    .expect_ok()
    .expect_stdout(&["--rootfs x --policy commit -n"]);
    let run = ovlrun(&dir, &["run", "--rootfs", &r, "echo", "-n", "run"]);
    run.expect_ok();
    assert_eq!(run.stdout, "run", "{}", run.context());
}

#[test]
fn a_command_named_like_a_subcommand_is_the_command_after_the_options() {
    require_launcher!();
    let dir = TestDir::new();
    let r = rootfs();
    ovlrun(&dir, &["--rootfs", &r, "ls", "/etc/hostname"])
        .expect_ok()
        .expect_stdout(&["/etc/hostname"]);
    // busybox diff, not `ovlrun diff`: identical files, exit 0, nothing printed.
    ovlrun(
        &dir,
        &["--rootfs", &r, "diff", "/etc/hostname", "/etc/hostname"],
    )
    .expect_ok()
    .expect_stdout(&[]);
    // First on the line, the name is still the subcommand.
    let ls = ovlrun(&dir, &["ls"]);
    ls.expect_ok();
    assert!(ls.stdout.starts_with("ID "), "{}", ls.context());
}

#[test]
fn an_unknown_flag_before_the_command_is_still_an_error() {
    let dir = TestDir::new();
    let r = rootfs();
    ovlrun(&dir, &["--rootfs", &r, "--no-such-flag", "true"]).expect_own_error(&["--no-such-flag"]);
}

// ---------------------------------------------------------------------------------------------
// Usage errors

/// Asserts ovlrun's usage-error contract: 125, one stderr line `ovlrun: ...` holding each of
/// `parts`, nothing on stdout.
#[track_caller]
fn expect_usage_error(out: &Out, parts: &[&str]) {
    out.expect_own_error(parts);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("ovlrun: "),
        "not one 'ovlrun: ' line\n{}",
        out.context()
    );
    assert!(out.stdout.is_empty(), "{}", out.context());
}

#[test]
fn usage_errors_keep_clap_detail_on_one_line() {
    let dir = TestDir::new();
    let r = rootfs();
    expect_usage_error(&ovlrun(&dir, &["diff"]), &["<ID>", "usage: ovlrun diff"]);
    expect_usage_error(
        &ovlrun(&dir, &["mount"]),
        &["--lower <DIR>", "--upper <DIR>", "<MOUNTPOINT>"],
    );
    expect_usage_error(
        &ovlrun(&dir, &["--rootfs", &r, "--policy", "bogus", "true"]),
        &[
            "--policy",
            "bogus",
            "preserve",
            "discard",
            "commit",
            "commit-atomic",
            "ask",
        ],
    );
    expect_usage_error(
        &ovlrun(&dir, &["commit", "x", "--forc"]),
        &["--forc", "a similar argument exists: '--force'"],
    );
}

/// Runs `ovlrun ARGS..` with stdout a pipe whose reader is already gone.
fn with_stdout_closed(args: &[&str]) -> std::process::Output {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    Command::new(support::ovlrun_bin())
        .env("OVLRUN_STATE", TestDir::new().join("state"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_reader_gone_early_ends_quietly() {
    for args in [&["spec"][..], &["--help"], &["ls"], &["ls", "--json"]] {
        let out = with_stdout_closed(args);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "ovlrun {args:?} with stdout closed: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The environment

/// `ovlrun --rootfs ROOTFS FLAGS.. -- env`: the command's environment as `KEY=VALUE` lines,
/// with the caller's environment changed by `caller` first.
fn env_inside(dir: &TestDir, flags: &[&str], caller: impl FnOnce(&mut Command)) -> Out {
    let mut cmd = Command::new(support::ovlrun_bin());
    cmd.env("OVLRUN_STATE", dir.join("state"))
        .arg("--rootfs")
        .arg(example_rootfs())
        .args(flags)
        .args(["--", "env"]);
    caller(&mut cmd);
    let out = support::run_within(&mut cmd, RUN_TIMEOUT);
    out.expect_ok();
    out
}

/// The value of `key` in [`env_inside`]'s output, `None` when it is not set.
fn var<'a>(out: &'a Out, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}=");
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
}

#[test]
fn env_key_alone_passes_the_callers_value() {
    require_launcher!();
    let dir = TestDir::new();
    let out = env_inside(
        &dir,
        &[
            "--clear-env",
            "--env",
            "FROM_CALLER",
            "--env",
            "NOT_AT_CALLER",
        ],
        |c| {
            c.env("FROM_CALLER", "caller value")
                .env_remove("NOT_AT_CALLER");
        },
    );
    assert_eq!(
        var(&out, "FROM_CALLER"),
        Some("caller value"),
        "{}",
        out.context()
    );
    assert_eq!(var(&out, "NOT_AT_CALLER"), None, "{}", out.context());
}

#[test]
fn unsetenv_removes_inherited_and_set_variables() {
    require_launcher!();
    let dir = TestDir::new();
    let out = env_inside(
        &dir,
        &[
            "--env",
            "SET=1",
            "--unsetenv",
            "SET",
            "--unsetenv",
            "INHERITED",
        ],
        |c| {
            c.env("INHERITED", "x").env("KEPT", "y");
        },
    );
    assert_eq!(var(&out, "SET"), None, "{}", out.context());
    assert_eq!(var(&out, "INHERITED"), None, "{}", out.context());
    assert_eq!(var(&out, "KEPT"), Some("y"), "{}", out.context());
    let bad = ovlrun(&dir, &["--rootfs", &rootfs(), "--unsetenv", "A=1", "true"]);
    expect_usage_error(&bad, &["--unsetenv", "A=1"]);
}

#[test]
fn env_file_sets_lines_and_env_flags_win() {
    require_launcher!();
    let dir = TestDir::new();
    let file = dir.join("vars.env");
    support::write(
        &file,
        "# a comment\n\nA=from file\n  B=two words = one value\nPASSED\nUNSET_AT_CALLER\nC=file\n",
    );
    let file = file.to_string_lossy().into_owned();
    let out = env_inside(
        &dir,
        &["--clear-env", "--env-file", &file, "--env", "C=flag"],
        |c| {
            c.env("PASSED", "from caller").env_remove("UNSET_AT_CALLER");
        },
    );
    assert_eq!(var(&out, "A"), Some("from file"), "{}", out.context());
    assert_eq!(
        var(&out, "B"),
        Some("two words = one value"),
        "{}",
        out.context()
    );
    assert_eq!(
        var(&out, "PASSED"),
        Some("from caller"),
        "{}",
        out.context()
    );
    assert_eq!(var(&out, "UNSET_AT_CALLER"), None, "{}", out.context());
    assert_eq!(var(&out, "C"), Some("flag"), "{}", out.context());
    assert!(!out.stdout.contains("comment"), "{}", out.context());
}

#[test]
fn env_file_names_its_bad_line_and_a_missing_file() {
    require_launcher!();
    let dir = TestDir::new();
    let file = dir.join("bad.env");
    support::write(&file, "A=1\n# fine\nexport B=2\n");
    let file = file.to_string_lossy().into_owned();
    let r = rootfs();
    let out = ovlrun(&dir, &["--rootfs", &r, "--env-file", &file, "true"]);
    expect_usage_error(&out, &["--env-file", &file, "line 3", "export B=2"]);
    let missing = dir.join("missing.env").to_string_lossy().into_owned();
    let out = ovlrun(&dir, &["--rootfs", &r, "--env-file", &missing, "true"]);
    expect_usage_error(&out, &["--env-file", &missing, "No such file"]);
}

#[test]
fn pwd_is_the_sessions_cwd_not_the_callers() {
    require_launcher!();
    let dir = TestDir::new();
    let caller = |c: &mut Command| {
        c.current_dir(dir.path())
            .env("PWD", dir.path())
            .env("OLDPWD", dir.path());
    };
    let out = env_inside(&dir, &[], caller);
    assert_eq!(var(&out, "PWD"), Some("/"), "{}", out.context());
    assert_eq!(var(&out, "OLDPWD"), None, "{}", out.context());
    let out = env_inside(&dir, &["--cwd", "/etc"], caller);
    assert_eq!(var(&out, "PWD"), Some("/etc"), "{}", out.context());
}

// ---------------------------------------------------------------------------------------------
// --timeout

/// `timeout(1)`'s status for a command it stopped.
const TIMED_OUT: i32 = 124;

#[test]
fn timeout_stops_the_session_with_124() {
    require_launcher!();
    let dir = TestDir::new();
    let out = ovlrun(
        &dir,
        &["--rootfs", &rootfs(), "--timeout", "1", "--", "sleep", "30"],
    );
    out.expect_code(TIMED_OUT);
    assert!(
        out.elapsed < Duration::from_secs(8) && out.stderr.contains("--timeout 1s reached"),
        "{}",
        out.context()
    );
    // A run that ends in time keeps its own status.
    ovlrun(
        &dir,
        &[
            "--rootfs",
            &rootfs(),
            "--timeout",
            "30s",
            "sh",
            "-c",
            "exit 3",
        ],
    )
    .expect_code(3);
}

#[test]
fn timeout_kills_a_command_that_ignores_term() {
    require_launcher!();
    let dir = TestDir::new();
    let out = ovlrun(
        &dir,
        &[
            "--rootfs",
            &rootfs(),
            "--timeout",
            "1",
            "--timeout-kill",
            "1",
            "--",
            "sh",
            "-c",
            "trap '' TERM; sleep 30; echo survived",
        ],
    );
    out.expect_code(TIMED_OUT);
    assert!(
        out.elapsed < Duration::from_secs(10) && !out.stdout.contains("survived"),
        "{}",
        out.context()
    );
}

#[test]
fn a_timed_out_run_is_kept_not_committed() {
    require_launcher!();
    let dir = TestDir::new();
    let copy = dir.join("rootfs");
    let cp = support::run_within(
        Command::new("cp")
            .arg("-a")
            .arg(example_rootfs())
            .arg(&copy),
        RUN_TIMEOUT,
    );
    cp.expect_ok();
    let copy = copy.to_string_lossy().into_owned();
    let out = ovlrun(
        &dir,
        &[
            "--rootfs",
            &copy,
            "--policy",
            "commit",
            "--timeout",
            "1",
            "sh",
            "-c",
            "echo half > /half-done; sleep 30",
        ],
    );
    out.expect_code(TIMED_OUT);
    let kept: Vec<_> = std::fs::read_dir(dir.join("state/sessions"))
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(kept.len(), 1, "{}", out.context());
    let id = kept[0].file_name().to_string_lossy().into_owned();
    assert!(
        out.stderr
            .contains(&format!("session {id} was kept, not committed")),
        "{}",
        out.context()
    );
    assert!(
        kept[0].path().join("upper/half-done").is_file(),
        "{}",
        out.context()
    );
    assert!(
        !dir.join("rootfs/half-done").exists(),
        "a timed-out run was committed\n{}",
        out.context()
    );
    ovlrun(&dir, &["discard", &id]).expect_ok();
}
