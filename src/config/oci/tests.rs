//! The config file reader, field by field.

use serde_json::{Value, json};

use super::*;
use crate::host::ids::{MapHelpers, Range};

const ROOT: Caller = Caller {
    root: true,
    idmap: IdMap::Identity,
};

fn user() -> Caller {
    Caller {
        root: false,
        idmap: IdMap::Single {
            uid: 1000,
            gid: 1000,
        },
    }
}

/// A bundle directory holding `config.json` (the text of `config`) and `rootfs/`.
fn bundle(config: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rootfs")).unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config).unwrap();
    (dir, path)
}

fn read(config: &Value, caller: &Caller) -> Result<OciSettings, OciError> {
    let (_dir, path) = bundle(&config.to_string());
    let text = std::fs::read_to_string(&path).unwrap();
    settings(&parse(&path, &text)?, &path, caller)
}

/// The starting config with `change` applied.
fn starting(change: impl FnOnce(&mut Value)) -> Value {
    let mut v: Value = serde_json::from_str(&starting_config("rootfs")).unwrap();
    change(&mut v);
    v
}

fn set(v: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = v.pointer_mut(parent).unwrap();
    match parent {
        Value::Array(a) => a[key.parse::<usize>().unwrap()] = value,
        Value::Object(o) => {
            o.insert(key.to_owned(), value);
        }
        _ => panic!("{pointer}: parent is not a container"),
    }
}

fn push(v: &mut Value, pointer: &str, value: Value) {
    v.pointer_mut(pointer)
        .unwrap()
        .as_array_mut()
        .unwrap()
        .push(value);
}

#[test]
fn example_bundle() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let s = settings(&parse(&path, &text).unwrap(), &path, &ROOT).unwrap();
    let rootfs = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/rootfs")
        .canonicalize()
        .unwrap();
    assert_eq!(s.rootfs, Some(rootfs));
    assert_eq!(s.args, Some(vec![OsString::from("sh")]));
    assert_eq!(s.env.as_ref().map(Vec::len), Some(2));
    assert_eq!(s.cwd, Some(PathBuf::from("/")));
    assert_eq!((s.uid, s.gid, s.terminal), (Some(0), Some(0), Some(false)));
    assert_eq!(s.hostname.as_deref(), Some("ovlrun"));
    // /proc, /dev and /sys are ovlrun's own; so is /tmp, a 1777 tmpfs.
    assert!(s.mounts.is_empty(), "{s:?}");
    assert_eq!(s.net, Some(Network::Host));
    assert_eq!(s.userns, Some(UserNs::New));
    assert_eq!(s.capabilities, None);
    assert_eq!(s.policy, Some(Policy::Discard));
    assert_eq!((s.upper, s.whiteout, s.fs), (None, None, None));
}

#[test]
fn starting_config_is_the_example() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.json");
    let example: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ours: Value = serde_json::from_str(&starting_config("rootfs")).unwrap();
    assert_eq!(ours, example);
    let odd: Value = serde_json::from_str(&starting_config("/a \"b\"\\c")).unwrap();
    assert_eq!(odd["root"]["path"], "/a \"b\"\\c");
}

#[test]
fn mounts_namespaces_and_annotations() {
    let host = tempfile::tempdir().unwrap();
    let v = starting(|v| {
        // Relative to the config's directory, like root.path.
        push(
            v,
            "/mounts",
            json!({"destination": "/data", "type": "bind",
            "source": "rootfs", "options": ["rbind", "ro", "nosuid", "rprivate"]}),
        );
        push(
            v,
            "/mounts",
            json!({"destination": "/host/", "source":
            host.path(), "options": ["bind", "ro", "rw"]}),
        );
        push(
            v,
            "/mounts",
            json!({"destination": "/scratch", "type": "tmpfs",
            "source": "tmpfs", "options": ["nosuid", "nodev", "mode=0755"]}),
        );
        push(
            v,
            "/mounts",
            json!({"destination": "/dev/mqueue", "type": "mqueue",
            "source": "mqueue"}),
        );
        set(
            v,
            "/linux/namespaces",
            json!([{"type": "network"}, {"type": "mount"}]),
        );
        set(
            v,
            "/annotations",
            json!({"org.ovlrun.policy": "commit-atomic",
            "org.ovlrun.upper": "changes", "org.ovlrun.whiteout": "aufs",
            "org.ovlrun.fs": "fuse", "org.ovlrun.durable": "true",
            "com.example.other": "kept out"}),
        );
        set(v, "/process/args", json!([]));
    });
    let (dir, path) = bundle(&v.to_string());
    let spec = parse(&path, &v.to_string()).unwrap();
    let s = settings(&spec, &path, &ROOT).unwrap();
    let rootfs = dir.path().join("rootfs").canonicalize().unwrap();
    use crate::config::{FsKind, FsMount, MountFlags};
    assert_eq!(
        s.mounts,
        vec![
            FsMount {
                dest: "/data".into(),
                kind: FsKind::Bind {
                    source: rootfs,
                    recursive: true
                },
                flags: MountFlags {
                    read_only: true,
                    nosuid: true,
                    ..MountFlags::default()
                },
            },
            // `bind` alone: not recursive; the last of ro and rw wins.
            FsMount {
                dest: "/host".into(),
                kind: FsKind::Bind {
                    source: host.path().canonicalize().unwrap(),
                    recursive: false
                },
                flags: MountFlags::default(),
            },
            FsMount {
                dest: "/scratch".into(),
                kind: FsKind::Tmpfs {
                    data: "mode=0755".into(),
                    copy_up: false,
                },
                flags: MountFlags {
                    nosuid: true,
                    nodev: true,
                    ..MountFlags::default()
                },
            },
        ]
    );

    assert_eq!(s.net, Some(Network::None));
    // No "user" entry: root stays in its user namespace, anyone else gets a new one.
    assert_eq!(s.userns, Some(UserNs::Host));
    assert_eq!(
        settings(&spec, &path, &user()).unwrap().userns,
        Some(UserNs::New)
    );
    assert_eq!(s.policy, Some(Policy::CommitAtomic));
    assert!(s.durable);
    assert_eq!(s.upper, Some(dir.path().join("changes")));
    assert_eq!(s.whiteout, Some(WhiteoutFormat::Aufs));
    assert_eq!(s.fs, Some(Backend::Fuse));
    assert_eq!(s.args, None, "empty args mean the default command");
}

#[test]
fn relative_root_path_is_resolved_against_the_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bundle")).unwrap();
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    let path = dir.path().join("bundle/config.json");
    // Relative to the config's directory, not to the current one.
    let text = starting_config("../other");
    let s = settings(&parse(&path, &text).unwrap(), &path, &ROOT).unwrap();
    assert_eq!(
        s.rootfs,
        Some(dir.path().join("other").canonicalize().unwrap())
    );
    let abs = starting_config(dir.path().to_str().unwrap());
    let s = settings(&parse(&path, &abs).unwrap(), &path, &ROOT).unwrap();
    assert_eq!(s.rootfs, Some(dir.path().canonicalize().unwrap()));
    let missing = starting_config("nothing-here");
    let e = settings(&parse(&path, &missing).unwrap(), &path, &ROOT)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config.json: root.path: ") && e.contains("bundle/nothing-here"),
        "{e}"
    );
    let file = starting_config("config.json");
    let e = settings(&parse(&path, &file).unwrap(), &path, &ROOT);
    assert!(e.is_err(), "a file as root.path: {e:?}");
}

#[test]
fn capability_sets_are_taken_as_given() {
    let set = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "AUDIT_WRITE",
        "CAP_SYS_PTRACE"
    ]);
    let v = starting(|v| {
        set_caps(
            v,
            json!({"bounding": set, "effective": set, "permitted": set}),
        );
    });
    let s = read(&v, &ROOT).unwrap();
    let caps = s.capabilities.unwrap();
    assert!(caps.bounding.contains("CAP_SYS_PTRACE") && !caps.bounding.contains("CAP_NET_RAW"));
    assert!(caps.bounding.contains("CAP_AUDIT_WRITE"));
    assert_eq!(
        (&caps.effective, &caps.permitted),
        (&caps.bounding, &caps.bounding)
    );
    assert!(caps.inheritable.is_empty() && caps.ambient.is_empty());
    let v = starting(|v| {
        set_caps(
            v,
            json!({"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]}),
        );
    });
    let e = read(&v, &ROOT).unwrap_err().to_string();
    assert!(
        e.contains("process.capabilities.effective: CAP_KILL is not in permitted"),
        "{e}"
    );
}

fn set_caps(v: &mut Value, caps: Value) {
    set(v, "/process/capabilities", caps);
}

#[test]
fn id_maps_must_be_ovlruns_own() {
    let maps = |v: &mut Value, uid: Value, gid: Value| {
        set(v, "/linux/uidMappings", uid);
        set(v, "/linux/gidMappings", gid);
    };
    let identity = json!([{"containerID": 0, "hostID": 0, "size": 4294967295u32}]);
    let v = starting(|v| maps(v, identity.clone(), identity.clone()));
    assert!(read(&v, &ROOT).is_ok());
    let sub = Caller {
        root: false,
        idmap: IdMap::Sub {
            uid: 1000,
            gid: 100,
            uids: Range {
                start: 100000,
                count: 65536,
            },
            gids: Range {
                start: 200000,
                count: 65536,
            },
            helpers: MapHelpers {
                newuidmap: "/usr/bin/newuidmap".into(),
                newgidmap: "/usr/bin/newgidmap".into(),
            },
        },
    };
    let v = starting(|v| {
        maps(
            v,
            json!([{"containerID": 1, "hostID": 100000, "size": 65536},
                {"containerID": 0, "hostID": 1000, "size": 1}]),
            json!([{"containerID": 0, "hostID": 100, "size": 1},
                {"containerID": 1, "hostID": 200000, "size": 65536}]),
        )
    });
    assert!(read(&v, &sub).is_ok());
    let e = read(&v, &ROOT).unwrap_err().to_string();
    assert!(
        e.contains(
            "linux.uidMappings: ovlrun computes the maps itself and would write 0 0 4294967295"
        ),
        "{e}"
    );
    let v = starting(|v| maps(v, json!([]), identity.clone()));
    let e = read(&v, &user()).unwrap_err().to_string();
    assert!(
        e.contains("linux.gidMappings: ") && e.contains("0 1000 1"),
        "{e}"
    );
    let v = starting(|v| {
        maps(v, identity.clone(), json!([]));
        set(v, "/linux/namespaces", json!([]));
    });
    let e = read(&v, &ROOT).unwrap_err().to_string();
    assert!(
        e.contains("linux.uidMappings: given without a \"user\" namespace"),
        "{e}"
    );
}

#[test]
fn fields_ovlrun_cannot_honour_are_errors_naming_them() {
    let caps = json!(["CAP_KILL"]);
    type Change = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "linux.seccomp.syscalls[1].action: unknown action SCMP_ACT_FOO",
            Box::new(|v| {
                set(
                    v,
                    "/linux/seccomp",
                    json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
                        {"names": ["rmdir"], "action": "SCMP_ACT_FOO"}]}),
                )
            }),
        ),
        (
            "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY needs a seccomp agent",
            Box::new(|v| {
                set(
                    v,
                    "/linux/seccomp",
                    json!({"defaultAction": "SCMP_ACT_NOTIFY"}),
                )
            }),
        ),
        (
            "linux.resources",
            Box::new(|v| set(v, "/linux/resources", json!({"memory": {"limit": 1000000}}))),
        ),
        (
            "linux.cgroupsPath",
            Box::new(|v| set(v, "/linux/cgroupsPath", json!("/ovlrun"))),
        ),
        (
            "linux.sysctl[\"net.ipv4.ip_forward\"]: linux.sysctl net.ipv4.ip_forward: the \
             session shares",
            Box::new(|v| set(v, "/linux/sysctl", json!({"net.ipv4.ip_forward": "1"}))),
        ),
        (
            "linux.sysctl[\"kernel.core_pattern\"]",
            Box::new(|v| set(v, "/linux/sysctl", json!({"kernel.core_pattern": "|/x"}))),
        ),
        (
            "linux.maskedPaths[0]: proc/kcore: must be an absolute path",
            Box::new(|v| set(v, "/linux/maskedPaths", json!(["proc/kcore"]))),
        ),
        (
            "process.rlimits[0]: process.rlimits[0] RLIMIT_NOFILE: the soft limit",
            Box::new(|v| {
                set(
                    v,
                    "/process/rlimits",
                    json!([{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 1024}]),
                )
            }),
        ),
        (
            "linux.devices",
            Box::new(|v| {
                set(
                    v,
                    "/linux/devices",
                    json!([{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]),
                )
            }),
        ),
        (
            "linux.rootfsPropagation",
            Box::new(|v| set(v, "/linux/rootfsPropagation", json!("rshared"))),
        ),
        (
            "process.apparmorProfile",
            Box::new(|v| set(v, "/process/apparmorProfile", json!("docker-default"))),
        ),
        (
            "process.selinuxLabel",
            Box::new(|v| {
                set(
                    v,
                    "/process/selinuxLabel",
                    json!("system_u:system_r:container_t:s0"),
                )
            }),
        ),
        (
            "process.cwd",
            Box::new(|v| set(v, "/process/cwd", json!("home"))),
        ),
        (
            "process.env[1]",
            Box::new(|v| set(v, "/process/env/1", json!("NOEQUALS"))),
        ),
        (
            "process.capabilities.ambient: CAP_KILL is not in permitted",
            {
                let c = caps.clone();
                Box::new(move |v| set_caps(v, json!({"bounding": c, "ambient": c})))
            },
        ),
        (
            "hooks",
            Box::new(|v| set(v, "/hooks", json!({"prestart": [{"path": "/bin/true"}]}))),
        ),
        (
            "domainname",
            Box::new(|v| set(v, "/domainname", json!("example.com"))),
        ),
        (
            "linux.namespaces[1].path",
            Box::new(|v| {
                set(
                    v,
                    "/linux/namespaces/1",
                    json!({"type": "mount", "path": "/proc/1/ns/mnt"}),
                )
            }),
        ),
        (
            "linux.namespaces[5]: a time namespace",
            Box::new(|v| push(v, "/linux/namespaces", json!({"type": "time"}))),
        ),
        (
            "mounts[4]: type \"nfs\"",
            Box::new(|v| {
                push(
                    v,
                    "/mounts",
                    json!({"destination": "/mnt", "type": "nfs", "source": "server:/x"}),
                )
            }),
        ),
        (
            "mounts[4].options: \"nocopyup-yet\"",
            Box::new(|v| {
                push(
                    v,
                    "/mounts",
                    json!({"destination": "/mnt", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup", "nocopyup-yet"]}),
                )
            }),
        ),
        (
            "mounts[4].source: a bind mount needs a source",
            Box::new(|v| {
                push(
                    v,
                    "/mounts",
                    json!({"destination": "/mnt", "options": ["bind"]}),
                )
            }),
        ),
        (
            "mounts[4].source: ",
            Box::new(|v| {
                push(
                    v,
                    "/mounts",
                    json!({"destination": "/mnt", "options": ["bind"], "source": "/does/not/exist"}),
                )
            }),
        ),
        (
            "mounts[4].destination",
            Box::new(|v| push(v, "/mounts", json!({"destination": "mnt", "type": "tmpfs"}))),
        ),
        (
            "mounts[4].uidMappings",
            Box::new(|v| {
                push(
                    v,
                    "/mounts",
                    json!({"destination": "/mnt", "type": "bind", "source": "/", "uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]}),
                )
            }),
        ),
        (
            "annotations[\"org.ovlrun.policy\"]: \"keep\": expected preserve",
            Box::new(|v| set(v, "/annotations/org.ovlrun.policy", json!("keep"))),
        ),
        (
            "annotations[\"org.ovlrun.whiteout\"]",
            Box::new(|v| set(v, "/annotations/org.ovlrun.whiteout", json!("chardev"))),
        ),
        (
            "annotations[\"org.ovlrun.fs\"]",
            Box::new(|v| set(v, "/annotations/org.ovlrun.fs", json!("ext4"))),
        ),
        (
            "annotations[\"org.ovlrun.durable\"]: \"yes\": expected true or false",
            Box::new(|v| set(v, "/annotations/org.ovlrun.durable", json!("yes"))),
        ),
        (
            "annotations[\"org.ovlrun.polcy\"]: unknown ovlrun annotation",
            Box::new(|v| set(v, "/annotations/org.ovlrun.polcy", json!("discard"))),
        ),
    ];
    for (want, change) in cases {
        let v = starting(|v| change(v));
        match read(&v, &ROOT) {
            Ok(s) => panic!("{want}: accepted as {s:?}"),
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains(&format!("config.json: {want}")), "{want}: {e}");
            }
        }
    }
}

#[test]
fn a_seccomp_profile_is_honoured() {
    let profile = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]});
    let v = starting(|v| set(v, "/linux/seccomp", profile.clone()));
    let got = read(&v, &ROOT).unwrap().seccomp.unwrap();
    assert_eq!(serde_json::to_value(&*got).unwrap(), profile);
    let v = starting(|v| set(v, "/linux/seccomp", Value::Null));
    assert_eq!(read(&v, &ROOT).unwrap().seccomp, None);
}

#[test]
fn empty_or_harmless_values_are_accepted() {
    let v = starting(|v| {
        set(v, "/linux/resources", json!({"devices": []}));
        set(v, "/linux/maskedPaths", json!([]));
        set(v, "/linux/rootfsPropagation", json!("rslave"));
        set(v, "/process/rlimits", json!([]));
        set(v, "/process/noNewPrivileges", json!(true));
        set(v, "/hooks", json!({"prestart": []}));
        // Unknown keys are ignored, as the runtime spec requires.
        set(v, "/process/someFutureField", json!({"x": 1}));
        set(v, "/someFutureSection", json!([1, 2]));
        // Other platforms' sections do not apply.
        set(v, "/windows", json!({"layerFolders": ["C:\\layers"]}));
        // buildah's binds carry an empty option.
        push(
            v,
            "/mounts",
            json!({"destination": "/ctl", "type": "bind", "source": "rootfs",
                   "options": ["bind", "", "ro"]}),
        );
    });
    assert!(read(&v, &ROOT).is_ok(), "{:?}", read(&v, &ROOT));
}

#[test]
fn malformed_json_is_reported_with_line_and_column() {
    let (_dir, path) = bundle("{\n  \"ociVersion\": \"1.0.2\",\n  \"process\": [,\n}\n");
    let e = load(&path).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}:3:", path.display())), "{e}");
    assert!(!e.contains(" at line "), "position given twice: {e}");
    // Valid JSON, wrong type: serde's position too.
    let text = starting_config("rootfs").replace("\"uid\": 0", "\"uid\": \"root\"");
    let e = parse(Path::new("b/config.json"), &text)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("b/config.json:6:19: invalid type"), "{e}");
}

#[test]
fn a_missing_file_is_named() {
    let e = load(Path::new("/does/not/exist/config.json")).unwrap_err();
    assert!(e.to_string().contains("/does/not/exist/config.json"), "{e}");
}

#[test]
fn the_first_refused_field_is_named_propagation_before_all() {
    let mut v = starting(|v| {
        set(v, "/domainname", json!("example.com"));
        set(v, "/linux/cgroupsPath", json!("/x"));
    });
    let e = read(&v, &ROOT).unwrap_err().to_string();
    assert!(e.contains("config.json: domainname: not supported"), "{e}");
    set(&mut v, "/linux/rootfsPropagation", json!("shared"));
    let e = read(&v, &ROOT).unwrap_err().to_string();
    assert!(e.contains("config.json: linux.rootfsPropagation"), "{e}");
}

#[test]
fn devices_are_the_hosts_nodes_bound() {
    let v = starting(|v| {
        set(
            v,
            "/linux/devices",
            json!([{"path": "/dev/null", "type": "c", "major": 1, "minor": 3}]),
        );
    });
    let (_dir, path) = bundle(&v.to_string());
    let spec = parse(&path, &v.to_string()).unwrap();
    let s = settings(&spec, &path, &ROOT).unwrap();
    assert_eq!(s.dev_binds.len(), 1);
    assert_eq!(s.dev_binds[0].dest, PathBuf::from("/dev/null"));
    // The wrong numbers for the path: refused, naming the entry.
    let v = starting(|v| {
        set(
            v,
            "/linux/devices",
            json!([{"path": "/dev/null", "type": "c", "major": 1, "minor": 5}]),
        );
    });
    let (_dir, path) = bundle(&v.to_string());
    let spec = parse(&path, &v.to_string()).unwrap();
    let e = settings(&spec, &path, &ROOT).unwrap_err().to_string();
    assert!(e.contains("linux.devices[0]"), "{e}");
}
