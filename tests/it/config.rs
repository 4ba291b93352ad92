//! OCI configs through the binary: `ovlrun run --bundle DIR`, `ovlrun --config FILE` with
//! flags over the file's settings, rejected configs (exit 125, the field named, nothing
//! created), and `ovlrun spec` round trips.
//!
//! Every test has its own [`TestDir`] holding its bundle and its `OVLRUN_STATE`. Sessions run
//! over `examples/rootfs` itself (no test here writes it) under a time limit.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{self, Out, TestDir, example_rootfs};

/// How long one `ovlrun` may take before its test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// `examples/`: the example bundle's config.json (its rootfs is [`example_rootfs`]).
fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// A test's directory: `state/` for `OVLRUN_STATE` and `bundle/` (config.json + a `rootfs`
/// symlink to `examples/rootfs`).
struct Bundle {
    dir: TestDir,
}

impl Bundle {
    /// A bundle whose config.json is `config`.
    fn new(config: &Value) -> Bundle {
        Bundle::with_text(&serde_json::to_string_pretty(config).unwrap())
    }

    fn with_text(text: &str) -> Bundle {
        let dir = TestDir::new();
        let bundle = dir.mkdir("bundle");
        support::symlink(example_rootfs(), bundle.join("rootfs"));
        support::write(bundle.join("config.json"), text);
        Bundle { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("bundle")
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// `ovlrun ARGS..` with `OVLRUN_STATE` in the test dir.
    fn ovlrun(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(support::ovlrun_bin());
        cmd.env("OVLRUN_STATE", self.state()).args(args);
        support::run_within(&mut cmd, RUN_TIMEOUT)
    }

    /// `ovlrun run --bundle BUNDLE FLAGS.. -- sh -c SCRIPT`.
    fn sh(&self, flags: &[&str], script: &str) -> Out {
        let bundle = self.path();
        let mut args = vec!["run", "--bundle", bundle.to_str().unwrap()];
        args.extend(flags);
        args.extend(["--", "/bin/sh", "-c", script]);
        self.ovlrun(&args)
    }
}

/// The example bundle's config with `change` applied.
fn example_config(change: impl FnOnce(&mut Value)) -> Value {
    let text = support::read_string(example_dir().join("config.json"));
    let mut v: Value = serde_json::from_str(&text).unwrap();
    change(&mut v);
    v
}

#[test]
fn example_bundle_runs_and_flags_override_it() {
    require_launcher!();
    let b = Bundle::with_text(&support::read_string(example_dir().join("config.json")));
    // The file's hostname, cwd and environment (the whole environment: not the caller's).
    b.sh(&[], "hostname; pwd; echo $TERM ${CALLER_ONLY-unset}")
        .expect_ok()
        .expect_stdout(&["ovlrun", "/", "xterm unset"]);
    b.sh(
        &["--hostname", "h2", "--cwd", "/tmp", "--env", "TERM=dumb"],
        "hostname; pwd; echo $TERM",
    )
    .expect_ok()
    .expect_stdout(&["h2", "/tmp", "dumb"]);
    b.sh(&[], "exit 7").expect_code(7).expect_stdout(&[]);
    // A root caller with a "user" namespace in the file gets a new one: uid 0 is mapped.
    b.sh(&["--uid", "1000", "--gid", "1000"], "id -u; id -g")
        .expect_ok()
        .expect_stdout(&["1000", "1000"]);
    // With the file's args: `sh`, reading the closed stdin, exits 0 at once.
    let bundle = b.path();
    b.ovlrun(&["run", "--bundle", bundle.to_str().unwrap()])
        .expect_ok()
        .expect_stdout(&[]);
}

#[test]
fn config_namespaces_mounts_and_policy_reach_the_session() {
    require_launcher!();
    let host = TestDir::named("config-host-dir");
    support::write(host.join("note"), "from the host\n");
    let config = example_config(|v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "network"}));
        v["mounts"].as_array_mut().unwrap().extend([
            json!({"destination": "/mnt", "type": "bind", "source": host.path(),
                "options": ["rbind", "ro"]}),
            json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev"]}),
        ]);
        v["annotations"]["org.ovlrun.policy"] = json!("preserve");
    });
    let b = Bundle::new(&config);
    let sessions = b.state().join("sessions");
    let count = || fs::read_dir(&sessions).map_or(0, |d| d.count());
    let script = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; cat /mnt/note; \
                  touch /mnt/x 2>/dev/null || echo ro; grep ' /scratch ' /proc/mounts | cut -d' ' -f3; touch /kept";
    b.sh(&[], script)
        .expect_ok()
        .expect_stdout(&["lo", "from the host", "ro", "tmpfs"]);
    assert_eq!(count(), 1, "the file's policy (preserve) kept no session");
    // The flag wins over the annotation.
    b.sh(&["--policy", "discard"], "true")
        .expect_ok()
        .expect_stdout(&[]);
    assert_eq!(count(), 1, "--policy discard kept a session");
}

#[test]
fn config_seccomp_profile_reaches_the_session() {
    require_launcher!();
    let config = example_config(|v| {
        v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]});
    });
    let b = Bundle::new(&config);
    let script = "grep Seccomp: /proc/self/status | tr -d '\\t'; \
                  mkdir /tmp/d 2>&1 | grep -o 'Permission denied'; touch /tmp/f && echo touched";
    b.sh(&[], script)
        .expect_ok()
        .expect_stdout(&["Seccomp:2", "Permission denied", "touched"]);
    // The flag wins over the file.
    b.sh(&["--seccomp", "unconfined"], script)
        .expect_ok()
        .expect_stdout(&["Seccomp:0", "touched"]);
    // Without no_new_privs the filter is installed while the command still holds
    // CAP_SYS_ADMIN (the kernel's condition), before its capabilities drop.
    let b = Bundle::new(&example_config(|v| {
        v["process"]["noNewPrivileges"] = json!(false);
        v["linux"]["seccomp"] = config["linux"]["seccomp"].clone();
    }));
    let script = format!("grep NoNewPrivs: /proc/self/status | tr -d '\\t'; {script}");
    b.sh(&[], &script).expect_ok().expect_stdout(&[
        "NoNewPrivs:0",
        "Seccomp:2",
        "Permission denied",
        "touched",
    ]);
}

#[test]
fn config_whiteout_annotation_reaches_the_fuse_upper() {
    require_launcher!();
    let config = example_config(|v| {
        v["annotations"]["org.ovlrun.whiteout"] = json!("aufs");
        v["annotations"]["org.ovlrun.policy"] = json!("preserve");
    });
    let b = Bundle::new(&config);
    // The kernel overlayfs writes only its own format: refused, naming the annotation.
    b.sh(&["--fs", "kernel"], "true")
        .expect_own_error(&["annotations[\"org.ovlrun.whiteout\"] aufs", "--fs kernel"]);
    assert!(!b.state().exists(), "{} was created", b.state().display());
    // Without --fs (or with auto) the session runs on FUSE, which writes `.wh.` files.
    b.sh(
        &["--fs", "auto"],
        "rm /etc/motd; test -e /etc/motd || echo gone",
    )
    .expect_ok()
    .expect_stdout(&["gone"]);
    let sessions: Vec<_> = fs::read_dir(b.state().join("sessions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let etc = sessions[0].join("upper/etc");
    let wh = fs::symlink_metadata(etc.join(".wh.motd")).expect("no .wh.motd in the upper");
    assert!(wh.is_file(), "{wh:?}");
    assert!(
        fs::symlink_metadata(etc.join("motd")).is_err(),
        "a kernel whiteout too"
    );
}

#[test]
fn a_config_ovlrun_cannot_honour_exits_125_naming_the_field() {
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            example_config(|v| {
                v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
                    "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_FOO"}]})
            }),
            vec!["config.json: linux.seccomp.syscalls[0].action: unknown action SCMP_ACT_FOO"],
        ),
        (
            example_config(|v| v["linux"]["sysctl"] = json!({"kernel.core_pattern": "|/x"})),
            vec![
                "linux.sysctl[\"kernel.core_pattern\"]: ",
                "not kept per namespace",
            ],
        ),
        (
            example_config(|v| {
                v["mounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"destination": "/mnt", "type": "nfs", "source": "srv:/x"}))
            }),
            vec!["mounts[4]: type \"nfs\""],
        ),
        (
            example_config(|v| v["annotations"]["org.ovlrun.policy"] = json!("keep")),
            vec!["annotations[\"org.ovlrun.policy\"]: \"keep\""],
        ),
    ];
    for (config, parts) in cases {
        let b = Bundle::new(&config);
        b.sh(&[], "true").expect_own_error(&parts);
        // Nothing is created before the config is valid.
        assert!(!b.state().exists(), "{} was created", b.state().display());
    }
    let b = Bundle::with_text("{\n  \"ociVersion\": \"1.0.2\",\n  \"process\": {,\n}\n");
    b.sh(&[], "true").expect_own_error(&["config.json:3:"]);
    let missing = b.dir.join("missing/config.json");
    b.ovlrun(&["--config", missing.to_str().unwrap()])
        .expect_own_error(&[missing.to_str().unwrap()]);
}

#[test]
fn spec_output_is_json_that_config_accepts() {
    let b = Bundle::with_text("{}");
    let out = b.ovlrun(&["spec"]);
    out.expect_ok();
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("ovlrun spec is not JSON: {e}\n{}", out.context()));
    assert_eq!(v["root"]["path"], "rootfs");
    assert_eq!(v["process"]["args"], json!(["sh"]));
    let rootfs = example_rootfs();
    let out = b.ovlrun(&["spec", "--rootfs", rootfs.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["root"]["path"], rootfs.to_str().unwrap());
    // Written beside the bundle: the absolute root.path does not depend on where.
    let config = b.dir.join("spec.json");
    support::write(&config, &out.stdout);
    require_launcher!();
    b.ovlrun(&[
        "--config",
        config.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        "hostname; pwd",
    ])
    .expect_ok()
    .expect_stdout(&["ovlrun", "/"]);
    // And `ovlrun spec`'s default, as config.json of a bundle with a rootfs beside it.
    let plain = b.ovlrun(&["spec"]).stdout;
    support::write(b.path().join("config.json"), &plain);
    b.sh(&[], "echo round trip")
        .expect_ok()
        .expect_stdout(&["round trip"]);
}
