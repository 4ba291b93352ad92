//! Against temp directories laid out like a cgroupfs (the test plays the kernel: it makes the
//! control files a real cgroupfs would have), and, as root, against this host's hierarchies.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::host::cgroup::{CgroupMounts, V1Hierarchy};

/// Makes `dir` (and parents) with the control files `files` (name, content).
fn seed(dir: &Path, files: &[(&str, &str)]) {
    fs::create_dir_all(dir).unwrap();
    for (name, content) in files {
        fs::write(dir.join(name), content).unwrap();
    }
}

fn read(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).unwrap()
}

/// A v1 host: pids, memory, cpu+cpuacct (co-mounted), freezer, devices, name=systemd.
fn fake_v1(tmp: &Path) -> CgroupMounts {
    let h = |name: &str, controllers: &[&str]| V1Hierarchy {
        mount_point: tmp.join(name),
        controllers: controllers.iter().map(|c| (*c).to_owned()).collect(),
    };
    CgroupMounts {
        v1: vec![
            h("pids", &["pids"]),
            h("memory", &["memory"]),
            h("cpu,cpuacct", &["cpu", "cpuacct"]),
            h("freezer", &["freezer"]),
            h("devices", &["devices"]),
            h("systemd", &["name=systemd"]),
        ],
        unified: Some(tmp.join("unified")),
    }
}

/// A v2 host: the unified hierarchy alone.
fn fake_v2(tmp: &Path) -> CgroupMounts {
    seed(
        tmp,
        &[
            ("cgroup.controllers", "cpuset cpu io memory pids\n"),
            ("cgroup.subtree_control", ""),
        ],
    );
    CgroupMounts {
        v1: Vec::new(),
        unified: Some(tmp.to_owned()),
    }
}

fn created(p: Placement) -> Cgroup {
    match p {
        Placement::Created(cg) => cg,
        Placement::NotWritable(n) => panic!("not writable: {n}"),
    }
}

#[test]
fn v1_cgroup_is_made_in_each_controller_hierarchy_but_not_named_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let mounts = fake_v1(tmp.path());
    let cg = created(Cgroup::create(&mounts, Path::new("/ovlrun/c1")).unwrap());
    assert!(!cg.is_v2());
    for h in ["pids", "memory", "cpu,cpuacct", "freezer", "devices"] {
        assert!(tmp.path().join(h).join("ovlrun/c1").is_dir(), "{h}");
    }
    assert!(!tmp.path().join("systemd/ovlrun").exists());
    assert!(!tmp.path().join("unified/ovlrun").exists());
    cg.remove(REMOVE_TIMEOUT).unwrap();
    for h in ["pids", "memory", "cpu,cpuacct", "freezer", "devices"] {
        assert!(!tmp.path().join(h).join("ovlrun/c1").exists(), "{h}");
        // Only the cgroup itself goes, not the parents it needed.
        assert!(tmp.path().join(h).join("ovlrun").is_dir(), "{h}");
    }
    cg.remove(REMOVE_TIMEOUT).unwrap();
}

#[test]
fn v1_limits_go_to_their_controllers_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mounts = fake_v1(tmp.path());
    let t = tmp.path();
    seed(&t.join("pids/c"), &[("pids.max", "max")]);
    let mem = [
        ("memory.limit_in_bytes", ""),
        ("memory.memsw.limit_in_bytes", ""),
    ];
    seed(&t.join("memory/c"), &mem);
    let cpu = [
        ("cpu.shares", ""),
        ("cpu.cfs_period_us", ""),
        ("cpu.cfs_quota_us", ""),
    ];
    seed(&t.join("cpu,cpuacct/c"), &cpu);
    let cg = created(Cgroup::create(&mounts, Path::new("/c")).unwrap());
    cg.apply(&Resources {
        pids_max: Some(32),
        memory: Some(Memory {
            limit: Some(64 << 20),
            swap: Some(128 << 20),
        }),
        cpu: Some(Cpu {
            quota: Some(50_000),
            period: Some(100_000),
            shares: Some(512),
        }),
    })
    .unwrap();
    assert_eq!(read(&t.join("pids/c"), "pids.max"), "32");
    assert_eq!(
        read(&t.join("memory/c"), "memory.limit_in_bytes"),
        "67108864"
    );
    assert_eq!(
        read(&t.join("memory/c"), "memory.memsw.limit_in_bytes"),
        "134217728"
    );
    assert_eq!(read(&t.join("cpu,cpuacct/c"), "cpu.shares"), "512");
    assert_eq!(
        read(&t.join("cpu,cpuacct/c"), "cpu.cfs_period_us"),
        "100000"
    );
    assert_eq!(read(&t.join("cpu,cpuacct/c"), "cpu.cfs_quota_us"), "50000");
    cg.apply(&Resources {
        pids_max: Some(0),
        ..Resources::default()
    })
    .unwrap();
    assert_eq!(read(&t.join("pids/c"), "pids.max"), "max");
}

#[test]
fn v1_swap_without_swap_accounting_is_unsupported_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mounts = fake_v1(tmp.path());
    seed(
        &tmp.path().join("memory/c"),
        &[("memory.limit_in_bytes", "")],
    );
    let cg = created(Cgroup::create(&mounts, Path::new("/c")).unwrap());
    let err = cg
        .apply(&Resources {
            memory: Some(Memory {
                limit: Some(1 << 20),
                swap: Some(2 << 20),
            }),
            ..Resources::default()
        })
        .unwrap_err();
    match err {
        CgroupError::Unsupported { file, .. } => {
            assert!(
                file.ends_with("memory/c/memory.memsw.limit_in_bytes"),
                "{file:?}"
            )
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_missing_control_file_is_a_write_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mounts = fake_v1(tmp.path());
    let cg = created(Cgroup::create(&mounts, Path::new("/c")).unwrap());
    let err = cg
        .apply(&Resources {
            pids_max: Some(5),
            ..Resources::default()
        })
        .unwrap_err();
    let text = crate::error_chain(&err);
    assert!(
        text.contains("pids/c/pids.max") && text.contains("\"5\""),
        "{text}"
    );
}

#[test]
fn a_limit_without_its_hierarchy_names_the_controller() {
    let tmp = tempfile::tempdir().unwrap();
    let mut mounts = fake_v1(tmp.path());
    mounts.v1.retain(|h| h.controllers != ["pids"]);
    let cg = created(Cgroup::create(&mounts, Path::new("/c")).unwrap());
    let err = cg
        .apply(&Resources {
            pids_max: Some(5),
            ..Resources::default()
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::MissingController {
                controller: "pids",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn v1_freeze_and_thaw_go_through_freezer_state() {
    let tmp = tempfile::tempdir().unwrap();
    let mounts = fake_v1(tmp.path());
    let f = tmp.path().join("freezer/c");
    seed(&f, &[("freezer.state", "THAWED\n")]);
    let cg = created(Cgroup::create(&mounts, Path::new("/c")).unwrap());
    cg.freeze().unwrap();
    assert_eq!(read(&f, "freezer.state"), "FROZEN");
    assert_eq!(cg.freezer_state().unwrap(), FreezerState::Frozen);
    cg.thaw().unwrap();
    assert_eq!(cg.freezer_state().unwrap(), FreezerState::Thawed);
    fs::write(f.join("freezer.state"), "SOMETHING\n").unwrap();
    assert!(matches!(cg.freezer_state(), Err(CgroupError::Parse { .. })));
}

#[test]
fn pids_lists_the_cgroup_and_its_children_once_sorted() {
    let tmp = tempfile::tempdir().unwrap();
    let mounts = fake_v1(tmp.path());
    let p = tmp.path().join("pids/c");
    seed(&p, &[("cgroup.procs", "30\n10\n")]);
    seed(&p.join("sub"), &[("cgroup.procs", "20\n10\n")]);
    let cg = Cgroup::at(&mounts, Path::new("/c")).unwrap();
    let pids: Vec<i32> = cg.pids().unwrap().iter().map(|p| p.as_raw()).collect();
    assert_eq!(pids, [10, 20, 30]);
    fs::write(p.join("cgroup.procs"), "x\n").unwrap();
    assert!(matches!(cg.pids(), Err(CgroupError::Parse { .. })));
}

#[test]
fn v2_cgroup_enables_controllers_down_its_ancestors() {
    let tmp = tempfile::tempdir().unwrap();
    let mounts = fake_v2(tmp.path());
    // The kernel would give the new parent these files; the fake does it beforehand.
    seed(
        &tmp.path().join("ovlrun"),
        &[
            ("cgroup.controllers", "cpu memory pids\n"),
            ("cgroup.subtree_control", "pids\n"),
        ],
    );
    let cg = created(Cgroup::create(&mounts, Path::new("/ovlrun/c1")).unwrap());
    assert!(cg.is_v2());
    assert!(tmp.path().join("ovlrun/c1").is_dir());
    assert_eq!(
        read(tmp.path(), "cgroup.subtree_control"),
        "+pids +memory +cpu"
    );
    // pids was on already; cpuset and io are never asked for.
    assert_eq!(
        read(&tmp.path().join("ovlrun"), "cgroup.subtree_control"),
        "+memory +cpu"
    );
}

#[test]
fn v2_limits_use_v2_files_and_values() {
    let tmp = tempfile::tempdir().unwrap();
    let mounts = fake_v2(tmp.path());
    let d = tmp.path().join("c");
    seed(
        &d,
        &[
            ("pids.max", ""),
            ("memory.max", ""),
            ("memory.swap.max", ""),
            ("cpu.max", ""),
            ("cpu.weight", ""),
        ],
    );
    let cg = created(Cgroup::create(&mounts, Path::new("/c")).unwrap());
    cg.apply(&Resources {
        pids_max: Some(-1),
        memory: Some(Memory {
            limit: Some(100 << 20),
            swap: Some(150 << 20),
        }),
        cpu: Some(Cpu {
            quota: None,
            period: Some(50_000),
            shares: Some(1024),
        }),
    })
    .unwrap();
    assert_eq!(read(&d, "pids.max"), "max");
    assert_eq!(read(&d, "memory.max"), "104857600");
    assert_eq!(read(&d, "memory.swap.max"), "52428800");
    assert_eq!(read(&d, "cpu.max"), "max 50000");
    assert_eq!(read(&d, "cpu.weight"), "39");
    cg.apply(&Resources {
        cpu: Some(Cpu::from_cpus(0.5)),
        ..Resources::default()
    })
    .unwrap();
    assert_eq!(read(&d, "cpu.max"), "50000 100000");
}

#[test]
fn v2_freeze_waits_for_cgroup_events() {
    let tmp = tempfile::tempdir().unwrap();
    let mounts = fake_v2(tmp.path());
    let d = tmp.path().join("c");
    seed(
        &d,
        &[
            ("cgroup.freeze", "0\n"),
            ("cgroup.events", "populated 1\nfrozen 1\n"),
        ],
    );
    let cg = created(Cgroup::create(&mounts, Path::new("/c")).unwrap());
    cg.freeze().unwrap();
    assert_eq!(read(&d, "cgroup.freeze"), "1");
    // Asked to thaw, but the kernel (the fake) still says frozen: not yet thawed.
    fs::write(d.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
    fs::write(d.join("cgroup.freeze"), "1").unwrap();
    assert_eq!(cg.freezer_state().unwrap(), FreezerState::Freezing);
    cg.thaw().unwrap();
    assert_eq!(cg.freezer_state().unwrap(), FreezerState::Thawed);
}

#[test]
fn paths_must_be_absolute_and_plain() {
    let tmp = tempfile::tempdir().unwrap();
    let mounts = fake_v1(tmp.path());
    // `/a/./b` is `/a/b` to `Path::components`.
    for bad in ["c", "/a/../b", "", "./a"] {
        assert!(
            matches!(
                Cgroup::at(&mounts, Path::new(bad)),
                Err(CgroupError::BadPath { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        Cgroup::at(&CgroupMounts::default(), Path::new("/c")),
        Err(CgroupError::NoHierarchy)
    ));
}

#[test]
fn a_refused_mkdir_or_subtree_write_is_not_writable() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = Cgroup::at(&fake_v2(tmp.path()), Path::new("/c")).unwrap();
    let io = |errno| io::Error::from_raw_os_error(errno);
    let mkdir = CgroupError::Create {
        dir: tmp.path().join("c"),
        source: io(libc::EACCES),
    };
    match placement(cg.clone(), Err(mkdir)).unwrap() {
        Placement::NotWritable(n) => {
            assert_eq!(n.dir, tmp.path().join("c"));
            assert_eq!(n.errno, Errno::EACCES);
            assert!(n.to_string().contains("without resource limits"), "{n}");
        }
        other => panic!("{other:?}"),
    }
    let subtree = CgroupError::Write {
        file: tmp.path().join("cgroup.subtree_control"),
        value: "+pids".to_owned(),
        source: io(libc::EROFS),
    };
    match placement(cg.clone(), Err(subtree)).unwrap() {
        Placement::NotWritable(n) => assert_eq!(n.dir, tmp.path()),
        other => panic!("{other:?}"),
    }
    let other = CgroupError::Write {
        file: tmp.path().join("cgroup.subtree_control"),
        value: "+pids".to_owned(),
        source: io(libc::EINVAL),
    };
    assert!(matches!(
        placement(cg, Err(other)),
        Err(CgroupError::Write { .. })
    ));
}

#[test]
fn refusal_is_a_value_other_failures_are_errors() {
    for errno in [libc::EACCES, libc::EPERM, libc::EROFS] {
        assert!(refused(&io::Error::from_raw_os_error(errno)).is_some());
    }
    assert!(refused(&io::Error::from_raw_os_error(libc::ENOTDIR)).is_none());
    let tmp = tempfile::tempdir().unwrap();
    let mounts = fake_v1(tmp.path());
    // A file where the hierarchy's directory should be: ENOTDIR, an error.
    fs::write(tmp.path().join("pids"), "").unwrap();
    let err = Cgroup::create(&mounts, Path::new("/c")).unwrap_err();
    assert!(
        matches!(&err, CgroupError::Create { dir, .. } if dir.ends_with("pids/c")),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// This host, as root

/// A cgroup under a test prefix and the process put in it: both gone on drop, also when the
/// test fails.
struct Real {
    cg: Cgroup,
    child: Option<Child>,
}

impl Drop for Real {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = self.cg.thaw();
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.cg.thaw();
        let _ = self.cg.kill_all(Signal::SIGKILL);
        if let Err(e) = self.cg.remove(REMOVE_TIMEOUT) {
            eprintln!("warning: {}", crate::error_chain(&e));
        }
    }
}

/// `/ovlrun-cgtest-PID-N`, on this host, or `None` (skipped, failing under `CI`) when not root.
fn real_cgroup() -> Option<(CgroupMounts, Real)> {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the cgroup tests as root"
        );
        eprintln!("skipped: cgroup tests need root");
        return None;
    }
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = PathBuf::from(format!(
        "/ovlrun-cgtest-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mounts = CgroupMounts::of_host().unwrap();
    let cg = created(Cgroup::create(&mounts, &path).unwrap());
    Some((mounts, Real { cg, child: None }))
}

fn proc_state(pid: u32) -> char {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap()
}

#[test]
fn real_cgroup_takes_limits_a_process_freezes_thaws_and_goes() {
    let Some((mounts, mut real)) = real_cgroup() else {
        return;
    };
    let cg = real.cg.clone();
    let swap = match mounts.v1_of("memory") {
        Some(h) => h.mount_point.join("memory.memsw.limit_in_bytes").exists(),
        None => mounts.unified.as_ref().is_some_and(|u| {
            u.join(cg.path().strip_prefix("/").unwrap())
                .join("memory.swap.max")
                .exists()
        }),
    };
    cg.apply(&Resources {
        pids_max: Some(16),
        memory: Some(Memory {
            limit: Some(64 << 20),
            swap: swap.then_some(128 << 20),
        }),
        cpu: Some(Cpu {
            quota: Some(50_000),
            period: Some(100_000),
            shares: Some(512),
        }),
    })
    .unwrap();
    let rel = cg.path().strip_prefix("/").unwrap().to_owned();
    if let Some(h) = mounts.v1_of("pids") {
        assert_eq!(read(&h.mount_point.join(&rel), "pids.max").trim(), "16");
        let mem = mounts.v1_of("memory").unwrap().mount_point.join(&rel);
        assert_eq!(read(&mem, "memory.limit_in_bytes").trim(), "67108864");
        let cpu = mounts.v1_of("cpu").unwrap().mount_point.join(&rel);
        assert_eq!(read(&cpu, "cpu.cfs_quota_us").trim(), "50000");
        assert_eq!(read(&cpu, "cpu.shares").trim(), "512");
    } else {
        let d = mounts.unified.as_ref().unwrap().join(&rel);
        assert_eq!(read(&d, "pids.max").trim(), "16");
        assert_eq!(read(&d, "memory.max").trim(), "67108864");
        assert_eq!(read(&d, "cpu.max").trim(), "50000 100000");
    }

    let child = Command::new("sleep").arg("100").spawn().unwrap();
    let pid = child.id();
    real.child = Some(child);
    cg.add(Pid::from_raw(pid as i32)).unwrap();
    assert_eq!(cg.pids().unwrap(), [Pid::from_raw(pid as i32)]);
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let name = cg.path().to_str().unwrap();
    assert!(
        own.lines().any(|l| l.ends_with(name)),
        "/proc/{pid}/cgroup:\n{own}"
    );

    cg.freeze().unwrap();
    assert_eq!(cg.freezer_state().unwrap(), FreezerState::Frozen);
    // A frozen task sleeps uninterruptibly or is stopped by the freezer; never running.
    assert_ne!(proc_state(pid), 'R');
    cg.thaw().unwrap();
    assert_eq!(cg.freezer_state().unwrap(), FreezerState::Thawed);

    cg.kill_all(Signal::SIGKILL).unwrap();
    let status = real.child.take().unwrap().wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    cg.remove(REMOVE_TIMEOUT).unwrap();
    for h in &mounts.v1 {
        assert!(
            !h.mount_point.join(&rel).exists(),
            "{}",
            h.mount_point.display()
        );
    }
}

#[test]
fn real_pids_limit_stops_forks() {
    let Some((_, mut real)) = real_cgroup() else {
        return;
    };
    let cg = real.cg.clone();
    cg.apply(&Resources {
        pids_max: Some(3),
        ..Resources::default()
    })
    .unwrap();
    // The shell waits for its stdin to close before forking, so it is in the cgroup first.
    // dash gives up at its first failed fork; without the limit it would wait 30 s.
    let mut child = Command::new("sh")
        .args([
            "-c",
            "read _; for i in 1 2 3 4 5 6; do sleep 30 & done; wait",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    cg.add(Pid::from_raw(child.id() as i32)).unwrap();
    drop(child.stdin.take());
    let mut stderr = child.stderr.take().unwrap();
    real.child = Some(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = real.child.as_mut().unwrap().try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the shell forked 6 children under pids.max 3: {:?}",
            cg.pids()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let inside = cg.pids().unwrap();
    assert!(
        inside.len() <= 2,
        "more than the shell's two children: {inside:?}"
    );
    // The children hold the stderr pipe open: they go before it is read to its end.
    cg.kill_all(Signal::SIGKILL).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
    assert!(!status.success() && err.contains("fork"), "{status}: {err}");
    cg.remove(REMOVE_TIMEOUT).unwrap();
}
