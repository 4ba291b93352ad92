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

// ---------------------------------------------------------------------------------------------
// The result of a run for machines (`--json-status`), `ls --json`, and the small ones

/// A copy of the example rootfs in `dir`, for runs that commit.
fn rootfs_copy(dir: &TestDir) -> String {
    let copy = dir.join("rootfs");
    support::run_within(
        Command::new("cp")
            .arg("-a")
            .arg(example_rootfs())
            .arg(&copy),
        RUN_TIMEOUT,
    )
    .expect_ok();
    copy.to_string_lossy().into_owned()
}

/// The ids of the sessions kept in `dir`'s state root.
fn kept_ids(dir: &TestDir) -> Vec<String> {
    std::fs::read_dir(dir.join("state/sessions"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A run with `--json-status` and its status, read back.
fn run_with_status(dir: &TestDir, args: &[&str]) -> (Out, serde_json::Value) {
    let status = dir.join("status.json");
    let _ = std::fs::remove_file(&status);
    let status_arg = status.to_string_lossy().into_owned();
    let mut all = vec!["--json-status", &status_arg];
    all.extend_from_slice(args);
    let out = ovlrun(dir, &all);
    let text = std::fs::read_to_string(&status)
        .unwrap_or_else(|e| panic!("no status file: {e}\n{}", out.context()));
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status is not JSON ({e}): {text}\n{}", out.context()));
    (out, json)
}

fn changes(json: &serde_json::Value) -> [u64; 3] {
    let c = &json["changes"];
    ["added", "changed", "deleted"].map(|k| {
        c[k].as_u64()
            .unwrap_or_else(|| panic!("no {k} count in {json}"))
    })
}

#[test]
fn json_status_of_a_preserved_run_names_the_session_and_its_changes() {
    require_launcher!();
    let dir = TestDir::new();
    let r = rootfs();
    let (out, json) = run_with_status(
        &dir,
        &[
            "--rootfs",
            &r,
            "--policy",
            "preserve",
            "sh",
            "-c",
            "echo new > /new; echo changed >> /etc/hostname; rm /etc/passwd",
        ],
    );
    out.expect_ok();
    let ids = kept_ids(&dir);
    assert_eq!(ids.len(), 1, "{}", out.context());
    let id = &ids[0];
    assert_eq!(json["id"], id.as_str(), "{json}");
    assert_eq!(json["outcome"], "kept", "{json}");
    assert_eq!(json["exit_code"], 0, "{json}");
    assert!(json["signal"].is_null() && json["error"].is_null() && json["name"].is_null());
    assert!(
        matches!(json["backend"].as_str(), Some("kernel" | "fuse")),
        "{json}"
    );
    assert_eq!(changes(&json), [1, 1, 1], "{json}");
    let upper = std::path::PathBuf::from(json["upper"].as_str().unwrap());
    assert!(upper.join("new").is_file(), "{json}");
    assert!(upper.ends_with(format!("{id}/upper")), "{json}");

    let ls = ovlrun(&dir, &["ls", "--json"]);
    ls.expect_ok();
    let rows: serde_json::Value = serde_json::from_str(&ls.stdout).unwrap();
    let row = &rows[0];
    assert_eq!(row["id"], id.as_str(), "{row}");
    assert_eq!(row["command"][0], "sh", "{row}");
    assert_eq!(row["command"].as_array().map(Vec::len), Some(3), "{row}");
    assert!(row.get("name").is_some_and(|n| n.is_null()), "{row}");
    assert!(row["created"].is_u64() && row["ended"].is_u64(), "{row}");
    assert_eq!(row["fs"], json["backend"], "{row}");
    ovlrun(&dir, &["discard", id]).expect_ok();
}

#[test]
fn json_status_of_a_discarded_run_has_its_status_and_no_upper() {
    require_launcher!();
    let dir = TestDir::new();
    let r = rootfs();
    let (out, json) = run_with_status(&dir, &["--rootfs", &r, "sh", "-c", "touch /x; exit 3"]);
    out.expect_code(3);
    assert_eq!(json["outcome"], "discarded", "{json}");
    assert_eq!(json["exit_code"], 3, "{json}");
    assert!(json["id"].is_string(), "{json}");
    assert!(
        json["changes"].is_null() && json["upper"].is_null(),
        "{json}"
    );
    assert!(kept_ids(&dir).is_empty(), "{}", out.context());
}

#[test]
fn json_status_of_commits_and_of_a_failed_run_under_commit() {
    require_launcher!();
    let dir = TestDir::new();
    let copy = rootfs_copy(&dir);
    let (out, json) = run_with_status(
        &dir,
        &["--rootfs", &copy, "--policy", "commit", "touch", "/made"],
    );
    out.expect_ok();
    assert_eq!(json["outcome"], "committed", "{json}");
    assert_eq!(changes(&json), [1, 0, 0], "{json}");
    assert!(json["upper"].is_null(), "{json}");
    assert!(dir.join("rootfs/made").is_file(), "{}", out.context());

    let (out, json) = run_with_status(
        &dir,
        &[
            "--rootfs",
            &copy,
            "--policy",
            "commit",
            "sh",
            "-c",
            "touch /half; kill -9 $$",
        ],
    );
    out.expect_code(137);
    assert_eq!(json["outcome"], "not-committed", "{json}");
    assert_eq!(
        (&json["exit_code"], &json["signal"]),
        (&137.into(), &9.into())
    );
    assert_eq!(changes(&json), [1, 0, 0], "{json}");
    let id = json["id"].as_str().unwrap();
    assert_eq!(kept_ids(&dir), [id], "{}", out.context());
    assert!(!dir.join("rootfs/half").exists(), "{}", out.context());
    ovlrun(&dir, &["discard", id]).expect_ok();
}

#[test]
fn json_status_of_a_session_that_cannot_start_has_the_error() {
    let dir = TestDir::new();
    let missing = dir.join("no-such-rootfs").to_string_lossy().into_owned();
    let (out, json) = run_with_status(&dir, &["--rootfs", &missing, "true"]);
    out.expect_own_error(&["no-such-rootfs"]);
    assert!(
        json["error"]
            .as_str()
            .is_some_and(|e| e.contains("no-such-rootfs")),
        "{json}"
    );
    assert!(
        json["id"].is_null() && json["exit_code"].is_null(),
        "{json}"
    );
    // Not `-`: stdout is the command's.
    expect_usage_error(
        &ovlrun(&dir, &["--json-status", "-", "--rootfs", &rootfs(), "true"]),
        &["--json-status", "stdout"],
    );
}

#[test]
fn json_status_goes_to_an_open_descriptor() {
    require_launcher!();
    let dir = TestDir::new();
    let out = support::run_within(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{} --json-status /dev/fd/3 --rootfs {} sh -c 'exit 5' 3>&1 >/dev/null",
                support::ovlrun_bin(),
                rootfs()
            ))
            .env("OVLRUN_STATE", dir.join("state")),
        RUN_TIMEOUT,
    );
    out.expect_code(5);
    let json: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", out.context()));
    assert_eq!(json["exit_code"], 5, "{json}");
}

#[test]
fn a_preserve_run_that_changed_nothing_keeps_no_session() {
    require_launcher!();
    let dir = TestDir::new();
    let r = rootfs();
    let (out, json) = run_with_status(
        &dir,
        &[
            "--rootfs",
            &r,
            "--policy",
            "preserve",
            "cat",
            "/etc/hostname",
        ],
    );
    out.expect_ok();
    assert!(
        out.stderr.contains("no changes; nothing kept"),
        "{}",
        out.context()
    );
    assert!(kept_ids(&dir).is_empty(), "{}", out.context());
    assert_eq!(json["outcome"], "discarded", "{json}");
    assert_eq!(changes(&json), [0, 0, 0], "{json}");
}

#[test]
fn ls_shows_the_backend_serving_a_running_session_and_commit_wait_says_it_waits() {
    require_launcher!();
    let dir = TestDir::new();
    let copy = rootfs_copy(&dir);
    let kept = ovlrun(
        &dir,
        &["--rootfs", &copy, "--policy", "preserve", "touch", "/kept"],
    );
    kept.expect_ok();
    let [kept_id] = <[String; 1]>::try_from(kept_ids(&dir)).unwrap();
    let mut running = support::Bg::spawn(
        Command::new(support::ovlrun_bin())
            .env("OVLRUN_STATE", dir.join("state"))
            .env("OVLRUN_FS", "auto")
            .args(["--rootfs", &copy, "sh", "-c", "echo ready; sleep 8"]),
        RUN_TIMEOUT,
    );
    running.wait_line("ready");
    let ls = ovlrun(&dir, &["ls"]);
    ls.expect_ok();
    let line = ls
        .stdout
        .lines()
        // The status column (after ID and NAME): the test's own paths hold the word too.
        .find(|l| l.split_whitespace().nth(2) == Some("running"))
        .unwrap_or_else(|| panic!("no running session\n{}", ls.context()));
    assert!(
        matches!(line.split_whitespace().nth(3), Some("kernel" | "fuse")),
        "{line}\n{}",
        ls.context()
    );
    let running_id = line.split_whitespace().next().unwrap().to_owned();
    // Long enough for a loaded machine to reach the lock while the session runs.
    let commit = ovlrun(&dir, &["commit", "--wait", &kept_id]);
    commit.expect_ok();
    running.wait().expect_ok();
    let want = format!(
        "ovlrun: waiting for the lock on {} held by session {running_id}",
        std::fs::canonicalize(&copy).unwrap().display()
    );
    assert!(
        commit.stderr.contains(&want),
        "{want}\n{}",
        commit.context()
    );
    assert!(dir.join("rootfs/kept").is_file(), "{}", commit.context());
}

#[test]
fn export_to_a_missing_directory_names_the_users_path() {
    require_launcher!();
    let dir = TestDir::new();
    let r = rootfs();
    ovlrun(
        &dir,
        &["--rootfs", &r, "--policy", "preserve", "touch", "/x"],
    )
    .expect_ok();
    let [id] = <[String; 1]>::try_from(kept_ids(&dir)).unwrap();
    let target = dir.join("missing/x.tar").to_string_lossy().into_owned();
    let out = ovlrun(&dir, &["export", &id, "-o", &target]);
    out.expect_own_error(&[&target]);
    assert!(!out.stderr.contains("ovlrun-partial"), "{}", out.context());
    ovlrun(&dir, &["discard", &id]).expect_ok();
}

// ---------------------------------------------------------------------------------------------
// Names and several sessions at once (issue 16 item 5)

/// `--name` names a session wherever an id is taken: the status, `ls`, `diff`, `run
/// --resume`, `discard`; a second session cannot take the name while the first exists, and
/// the name is free again once it is gone.
#[test]
fn a_named_session_is_addressed_by_its_name_and_its_name_is_unique() {
    require_launcher!();
    let dir = TestDir::new();
    let r = rootfs();
    let (out, json) = run_with_status(
        &dir,
        &[
            "--rootfs", &r, "--name", "job-1", "--policy", "preserve", "touch", "/a",
        ],
    );
    out.expect_ok();
    assert!(
        out.stderr.contains("drop them with `ovlrun discard job-1`"),
        "the way on does not use the name\n{}",
        out.context()
    );
    assert_eq!(json["name"], "job-1", "{json}");
    let id = json["id"].as_str().unwrap().to_owned();

    let ls = ovlrun(&dir, &["ls"]);
    ls.expect_ok();
    let row = ls.stdout.lines().find(|l| l.starts_with(&id)).unwrap_or("");
    assert!(
        row.contains(" job-1 "),
        "ls does not name it\n{}",
        ls.context()
    );
    let rows: serde_json::Value =
        serde_json::from_str(&ovlrun(&dir, &["ls", "--json"]).stdout).unwrap();
    assert_eq!(rows[0]["name"], "job-1", "{rows}");
    ovlrun(&dir, &["diff", "job-1"])
        .expect_ok()
        .expect_stdout(&["A /a"]);

    // Taken while the first session exists: refused, and nothing of a second one is left.
    let taken = ovlrun(
        &dir,
        &[
            "--rootfs", &r, "--name", "job-1", "--policy", "preserve", "touch", "/b",
        ],
    );
    taken.expect_own_error(&["--name job-1", &id]);
    assert_eq!(
        kept_ids(&dir),
        std::slice::from_ref(&id),
        "{}",
        taken.context()
    );

    ovlrun(&dir, &["run", "--resume", "job-1", "touch", "/c"]).expect_ok();
    ovlrun(&dir, &["diff", "job-1"])
        .expect_ok()
        .expect_stdout(&["A /a", "A /c"]);
    ovlrun(&dir, &["discard", "job-1"]).expect_ok();
    assert!(kept_ids(&dir).is_empty());
    ovlrun(&dir, &["diff", "job-1"]).expect_own_error(&["no session job-1"]);
    // Free again.
    let again = ovlrun(
        &dir,
        &[
            "--rootfs", &r, "--name", "job-1", "--policy", "preserve", "touch", "/d",
        ],
    );
    again.expect_ok();
    ovlrun(&dir, &["discard", "job-1"]).expect_ok();
}

/// A name that could read as an id, or as a path, is refused before anything is made.
#[test]
fn names_that_read_as_ids_or_paths_are_refused_before_anything_is_made() {
    require_launcher!();
    let dir = TestDir::new();
    let r = rootfs();
    for (name, why) in [
        ("0123456789ab", "shaped like a session id"),
        ("../x", "letter or a digit"),
        ("a/b", "only letters"),
        ("", "empty"),
    ] {
        let out = ovlrun(
            &dir,
            &[
                "--rootfs", &r, "--name", name, "--policy", "preserve", "true",
            ],
        );
        out.expect_own_error(&["--name", why]);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.context());
        assert!(kept_ids(&dir).is_empty(), "{}", out.context());
        assert!(!dir.join("state/names/x").exists() && !dir.join("names").exists());
    }
}

/// `discard` takes several sessions, `--all`, or `--older-than`; one it cannot find fails
/// the command (exit 1) without sparing the others.
#[test]
fn discard_takes_several_sessions_all_or_the_old_ones() {
    require_launcher!();
    let dir = TestDir::new();
    let r = rootfs();
    let keep = |n: &str| {
        let (out, json) =
            run_with_status(&dir, &["--rootfs", &r, "--policy", "preserve", "touch", n]);
        out.expect_ok();
        json["id"].as_str().unwrap().to_owned()
    };
    let (a, b, c) = (keep("/a"), keep("/b"), keep("/c"));
    let out = ovlrun(&dir, &["discard", &a, "no-such-session", &b]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("no-such-session"),
        "the unknown one is not named\n{}",
        out.context()
    );
    assert_eq!(kept_ids(&dir), std::slice::from_ref(&c));

    let d = keep("/d");
    ovlrun(&dir, &["discard", "--older-than", "1h"]).expect_ok();
    let mut left = kept_ids(&dir);
    left.sort();
    let mut want = vec![c, d];
    want.sort();
    assert_eq!(left, want, "--older-than 1h took a new session");
    std::thread::sleep(Duration::from_millis(1100));
    ovlrun(&dir, &["discard", "--older-than", "1s"]).expect_ok();
    assert!(kept_ids(&dir).is_empty());
    keep("/e");
    ovlrun(&dir, &["discard", "--all"]).expect_ok();
    assert!(kept_ids(&dir).is_empty());
    ovlrun(&dir, &["discard", "--older-than", "soon"]).expect_own_error(&["--older-than soon"]);
    ovlrun(&dir, &["discard"]).expect_own_error(&["<ID>", "not provided"]);
    ovlrun(&dir, &["discard", "--all", "x"]).expect_own_error(&["--all", "cannot be used"]);
}

/// `discard --all` never takes a session whose command still runs.
#[test]
fn discard_all_spares_a_running_session() {
    require_launcher!();
    let dir = TestDir::new();
    let r = rootfs();
    let mut cmd = Command::new(support::ovlrun_bin());
    cmd.env("OVLRUN_STATE", dir.join("state")).args([
        "--rootfs",
        &r,
        "--name",
        "busy",
        "--policy",
        "preserve",
        "--no-tty",
        "sh",
        "-c",
        "touch /x; echo started; sleep 60",
    ]);
    let mut bg = support::Bg::spawn(&mut cmd, RUN_TIMEOUT);
    bg.wait_line("started");
    ovlrun(&dir, &["discard", "--all"]).expect_ok();
    assert_eq!(kept_ids(&dir).len(), 1, "--all took the running session");
    // Killed, the launcher leaves an orphaned session, which a sweep takes.
    bg.kill_now();
    ovlrun(&dir, &["discard", "--all"]).expect_ok();
    assert!(kept_ids(&dir).is_empty());
}
