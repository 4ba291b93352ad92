//! `--seccomp` and `linux.seccomp`: a system-call filter profile in the OCI format
//! (`linux.seccomp` of the runtime spec), read and checked.
//!
//! This module decides whether ovlrun can honour a profile, naming the field at fault as a
//! JSON path (`syscalls[3].action`); a feature ovlrun cannot honour (a seccomp agent, the
//! flags that need one) is an error, never dropped. It does not decide what the default
//! filter refuses (the sandbox's), nor how a profile becomes BPF ([`crate::seccomp`]'s).
//!
//! See: <https://github.com/opencontainers/runtime-spec/blob/main/config-linux.md#seccomp>

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use serde_json::Value;

use super::{PlanError, Seccomp};
pub(crate) use crate::seccomp::ProfileError;

/// The largest profile file read: podman's default profile is 40 KiB; anything far larger is
/// not a profile.
pub(crate) const MAX_PROFILE_BYTES: u64 = 4 << 20;

/// The highest `errnoRet`: the kernel returns at most `MAX_ERRNO` (4095) from a filter.
const MAX_ERRNO: u32 = 4095;

/// System calls have six arguments, 0 to 5.
const MAX_ARG_INDEX: u64 = 5;

/// Why `SCMP_ACT_NOTIFY` and what goes with it are refused.
const NO_AGENT: &str =
    "SCMP_ACT_NOTIFY needs a seccomp agent (listenerPath), which ovlrun does not support";

/// Parses `--seccomp default|unconfined|FILE` (a file named like a keyword is `./default`).
///
/// # Errors
/// [`PlanError::Seccomp`] naming the file, then the field and the problem.
pub(crate) fn parse_flag(value: &OsStr) -> Result<Seccomp, PlanError> {
    match value.to_str() {
        Some("default") => Ok(Seccomp::Default),
        Some("unconfined") => Ok(Seccomp::Unconfined),
        _ => read_file(Path::new(value)).map(|p| Seccomp::Profile(Box::new(p))),
    }
}

/// Reads the profile at `path` (at most [`MAX_PROFILE_BYTES`]) and checks it.
///
/// # Errors
/// [`PlanError::Seccomp`] naming the path, then the field and the problem.
pub(crate) fn read_file(path: &Path) -> Result<LinuxSeccomp, PlanError> {
    let err = |source: ProfileError| PlanError::Seccomp {
        path: PathBuf::from(path),
        source,
    };
    let text = std::fs::File::open(path)
        .and_then(|f| crate::sys::read_at_most(f, MAX_PROFILE_BYTES))
        .map_err(|e| err(ProfileError::new("", e.to_string())))?
        .ok_or_else(|| {
            err(ProfileError::new(
                "",
                format!("larger than {MAX_PROFILE_BYTES} bytes: not a seccomp profile"),
            ))
        })?;
    let value: Value = serde_json::from_slice(&text).map_err(|e| {
        err(ProfileError::new(
            "",
            format!("line {} column {}: not JSON ({e})", e.line(), e.column()),
        ))
    })?;
    let profile = from_value(&value).map_err(err)?;
    check(&profile).map_err(err)?;
    Ok(profile)
}

/// Reads a profile from JSON, naming the first field that is missing, of the wrong type or
/// an unknown name (action, architecture, flag, operator).
///
/// # Errors
/// [`ProfileError`] naming the field.
pub(crate) fn from_value(value: &Value) -> Result<LinuxSeccomp, ProfileError> {
    let obj = value
        .as_object()
        .ok_or_else(|| ProfileError::new("", "expected a JSON object"))?;
    match obj.get("defaultAction") {
        Some(v) => known::<LinuxSeccompAction>("defaultAction", v, "action")?,
        None => return Err(ProfileError::new("defaultAction", "missing")),
    }
    if let Some(v) = obj.get("defaultErrnoRet") {
        number("defaultErrnoRet", v)?;
    }
    for (i, v) in list(obj, "architectures")?.iter().enumerate() {
        known::<Arch>(&format!("architectures[{i}]"), v, "architecture")?;
    }
    for (i, v) in list(obj, "flags")?.iter().enumerate() {
        known::<LinuxSeccompFilterFlag>(&format!("flags[{i}]"), v, "flag")?;
    }
    for (i, call) in list(obj, "syscalls")?.iter().enumerate() {
        let at = format!("syscalls[{i}]");
        let call = call
            .as_object()
            .ok_or_else(|| ProfileError::new(&at, "expected a JSON object"))?;
        let names = list(call, "names").map_err(|e| e.under(&at))?;
        if names.is_empty() {
            return Err(ProfileError::new(format!("{at}.names"), "missing or empty"));
        }
        for (j, name) in names.iter().enumerate() {
            if !name.is_string() {
                return Err(ProfileError::new(
                    format!("{at}.names[{j}]"),
                    "expected a system call name",
                ));
            }
        }
        match call.get("action") {
            Some(v) => known::<LinuxSeccompAction>(&format!("{at}.action"), v, "action")?,
            None => return Err(ProfileError::new(format!("{at}.action"), "missing")),
        }
        if let Some(v) = call.get("errnoRet") {
            number(&format!("{at}.errnoRet"), v)?;
        }
        for (j, arg) in list(call, "args")
            .map_err(|e| e.under(&at))?
            .iter()
            .enumerate()
        {
            let at = format!("{at}.args[{j}]");
            let arg = arg
                .as_object()
                .ok_or_else(|| ProfileError::new(&at, "expected a JSON object"))?;
            for key in ["index", "value"] {
                match arg.get(key) {
                    Some(v) => number(&format!("{at}.{key}"), v)?,
                    None => return Err(ProfileError::new(format!("{at}.{key}"), "missing")),
                }
            }
            if let Some(v) = arg.get("valueTwo") {
                number(&format!("{at}.valueTwo"), v)?;
            }
            match arg.get("op") {
                Some(v) => known::<LinuxSeccompOperator>(&format!("{at}.op"), v, "operator")?,
                None => return Err(ProfileError::new(format!("{at}.op"), "missing")),
            }
        }
    }
    // Every field the runtime spec types was checked above; what is left is its shape.
    serde_json::from_value(value.clone()).map_err(|e| ProfileError::new("", e.to_string()))
}

/// The array `obj[key]`, empty when absent or null.
fn list<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
) -> Result<&'a [Value], ProfileError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(ProfileError::new(key, "expected an array")),
    }
}

fn number(field: &str, v: &Value) -> Result<(), ProfileError> {
    if v.is_u64() {
        Ok(())
    } else {
        Err(ProfileError::new(
            field,
            format!("{v}: expected a non-negative integer"),
        ))
    }
}

/// Checks that `v` is a string naming a `T` (`SCMP_ACT_ERRNO`, ...).
fn known<T: FromStr>(field: &str, v: &Value, what: &str) -> Result<(), ProfileError> {
    match v.as_str() {
        Some(s) if s.parse::<T>().is_ok() => Ok(()),
        Some(s) => Err(ProfileError::new(field, format!("unknown {what} {s}"))),
        None => Err(ProfileError::new(field, format!("{v}: expected a string"))),
    }
}

/// Checks that ovlrun can honour `profile` as the kernel would run it: no seccomp agent, an
/// `errnoRet` only where an action returns one, argument indexes 0 to 5; then compiles it, so
/// that what libseccomp refuses is named too.
///
/// # Errors
/// [`ProfileError`] naming the field.
pub(crate) fn check(profile: &LinuxSeccomp) -> Result<(), ProfileError> {
    check_action(
        "defaultAction",
        profile.default_action(),
        profile.default_errno_ret(),
        "defaultErrnoRet",
    )?;
    if profile.listener_path().is_some() || profile.listener_metadata().is_some() {
        let field = if profile.listener_path().is_some() {
            "listenerPath"
        } else {
            "listenerMetadata"
        };
        return Err(ProfileError::new(field, "seccomp agents are not supported"));
    }
    for (i, flag) in profile.flags().iter().flatten().enumerate() {
        if *flag == LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv {
            return Err(ProfileError::new(
                format!("flags[{i}]"),
                format!("{flag} applies to SCMP_ACT_NOTIFY only: {NO_AGENT}"),
            ));
        }
    }
    for (i, call) in profile.syscalls().iter().flatten().enumerate() {
        let at = format!("syscalls[{i}]");
        if call.names().is_empty() {
            return Err(ProfileError::new(format!("{at}.names"), "empty"));
        }
        check_action(
            &format!("{at}.action"),
            call.action(),
            call.errno_ret(),
            &format!("{at}.errnoRet"),
        )?;
        for (j, arg) in call.args().iter().flatten().enumerate() {
            if arg.index() as u64 > MAX_ARG_INDEX {
                return Err(ProfileError::new(
                    format!("{at}.args[{j}].index"),
                    format!(
                        "{}: system calls have 6 arguments, 0 to {MAX_ARG_INDEX}",
                        arg.index()
                    ),
                ));
            }
        }
    }
    crate::seccomp::compile_profile(profile).map(drop)
}

fn check_action(
    field: &str,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    errno_field: &str,
) -> Result<(), ProfileError> {
    match action {
        LinuxSeccompAction::ScmpActNotify => Err(ProfileError::new(field, NO_AGENT)),
        LinuxSeccompAction::ScmpActErrno | LinuxSeccompAction::ScmpActTrace => match errno_ret {
            Some(n) if n > MAX_ERRNO => Err(ProfileError::new(
                errno_field,
                format!("{n}: above the largest errno, {MAX_ERRNO}"),
            )),
            _ => Ok(()),
        },
        other if errno_ret.is_some() => Err(ProfileError::new(
            errno_field,
            format!("given with {other}: only SCMP_ACT_ERRNO and SCMP_ACT_TRACE return a value"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problem(v: Value) -> String {
        match from_value(&v).and_then(|p| check(&p)) {
            Ok(()) => panic!("accepted: {v}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_valid_profile_reads_back_as_written() {
        let v = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 4, "op": "SCMP_CMP_EQ"}]},
                {"names": ["no_such_call_yet"], "action": "SCMP_ACT_KILL"}
            ]
        });
        let p = from_value(&v).unwrap();
        check(&p).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        let calls = p.syscalls().as_ref().unwrap();
        assert_eq!(calls[0].errno_ret(), Some(13));
        assert_eq!(calls[1].args().as_ref().unwrap()[0].value(), 4);
    }

    #[test]
    fn errors_name_the_field() {
        let base = |calls: Value| json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": calls});
        let cases = [
            (json!([1]), "expected a JSON object"),
            (json!({}), "defaultAction: missing"),
            (
                json!({"defaultAction": "SCMP_ACT_NOPE"}),
                "defaultAction: unknown action SCMP_ACT_NOPE",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]}),
                "architectures[0]: unknown architecture SCMP_ARCH_VAX",
            ),
            (
                base(json!([{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                            {"names": ["a"], "action": "SCMP_ACT_ALLOW"},
                            {"names": ["b"], "action": "SCMP_ACT_ALLOW"},
                            {"names": ["mkdir"], "action": "SCMP_ACT_FOO"}])),
                "syscalls[3].action: unknown action SCMP_ACT_FOO",
            ),
            (
                base(json!([{"names": [], "action": "SCMP_ACT_ALLOW"}])),
                "syscalls[0].names: missing or empty",
            ),
            (
                base(json!([{"names": ["read", 3], "action": "SCMP_ACT_ALLOW"}])),
                "syscalls[0].names[1]: expected a system call name",
            ),
            (
                base(json!([{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                             "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}])),
                "syscalls[0].args[0].value: -1: expected a non-negative integer",
            ),
            (
                base(json!([{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}])),
                "syscalls[0].args[0].op: unknown operator SCMP_CMP_ABOUT",
            ),
            (
                base(json!([{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                             "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}])),
                "syscalls[0].args[0].index: 6: system calls have 6 arguments",
            ),
            (
                base(json!([{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}])),
                "syscalls[0].errnoRet: given with SCMP_ACT_ALLOW",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 5000}),
                "defaultErrnoRet: 5000: above the largest errno",
            ),
        ];
        for (v, want) in cases {
            let got = problem(v.clone());
            assert!(got.starts_with(want), "{v}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn an_agent_is_an_error_not_dropped() {
        for (v, field) in [
            (
                json!({"defaultAction": "SCMP_ACT_NOTIFY"}),
                "defaultAction: SCMP_ACT_NOTIFY needs a seccomp agent",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW",
                       "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}),
                "syscalls[0].action: SCMP_ACT_NOTIFY",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}),
                "listenerPath: seccomp agents are not supported",
            ),
            (
                json!({"defaultAction": "SCMP_ACT_ALLOW",
                       "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}),
                "flags[0]: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV applies to SCMP_ACT_NOTIFY",
            ),
        ] {
            let got = problem(v.clone());
            assert!(got.starts_with(field), "{v}: got {got:?}");
        }
    }

    #[test]
    fn the_flag_reads_keywords_and_files() {
        assert_eq!(parse_flag("default".as_ref()).unwrap(), Seccomp::Default);
        assert_eq!(
            parse_flag("unconfined".as_ref()).unwrap(),
            Seccomp::Unconfined
        );
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(
            &good,
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
        )
        .unwrap();
        assert!(matches!(
            parse_flag(good.as_os_str()).unwrap(),
            Seccomp::Profile(_)
        ));
        let bad = dir.path().join("prof.json");
        std::fs::write(
            &bad,
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_FOO"}]}"#,
        )
        .unwrap();
        let e = crate::error_chain(&parse_flag(bad.as_os_str()).unwrap_err());
        assert_eq!(
            e,
            format!(
                "--seccomp {}: syscalls[0].action: unknown action SCMP_ACT_FOO",
                bad.display()
            )
        );
        std::fs::write(&bad, "{\n  \"defaultAction\": \n").unwrap();
        let e = crate::error_chain(&parse_flag(bad.as_os_str()).unwrap_err());
        assert!(e.contains("prof.json: line 3 column 0: not JSON"), "{e}");
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_PROFILE_BYTES as usize + 1]).unwrap();
        let e = crate::error_chain(&parse_flag(big.as_os_str()).unwrap_err());
        assert!(e.contains("big.json: larger than"), "{e}");
        let e = crate::error_chain(&parse_flag("/nonexistent/prof.json".as_ref()).unwrap_err());
        assert!(
            e.starts_with("--seccomp /nonexistent/prof.json: No such file"),
            "{e}"
        );
    }
}
