//! What `/proc` says of a process, as any user may read it: its state, start time (against
//! a reused pid) and parent, its namespaces, the processes of its pid namespace. Used by the
//! runtime for its containers' processes and by sessions for `ovlrun exec`.

/// The fields of `/proc/PID/stat` from field 3 (the state) on. The command name before
/// them may hold spaces and parentheses: they follow the last ')'.
fn stat_fields(pid: i64) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The start time (clock ticks since boot, `/proc/PID/stat` field 22) of `pid` when it is
/// alive and not a zombie; `None` when it is gone, dead or unreadable.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let fields = stat_fields(i64::from(pid))?;
    if matches!(fields.first()?.as_str(), "Z" | "X" | "x") {
        return None;
    }
    // Field 3 is the first; field 22 the 20th after it.
    fields.get(19)?.parse().ok()
}

/// True when `pid` is the process that started at `start` and has not ended.
pub(crate) fn alive(pid: i32, start: u64) -> bool {
    pid > 0 && start_time(pid) == Some(start)
}

/// The parent of `pid` (`/proc/PID/stat` field 4).
pub(crate) fn parent(pid: u32) -> Option<u32> {
    stat_fields(i64::from(pid))?.get(1)?.parse().ok()
}

/// Namespace `kind` (`pid`, `user`, ...) of process `pid` (`self` for the caller), as
/// (device, inode): equal for two processes in the same one.
pub(crate) fn namespace(pid: &str, kind: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(format!("/proc/{pid}/ns/{kind}")).ok()?;
    Some((md.dev(), md.ino()))
}

/// The pids of every process in the pid namespace of `pid` (itself included), as this
/// process sees them; just `pid` when that namespace is this process's own (a process that
/// is no container's pid 1: sweeping its namespace would signal every process of the
/// caller's).
pub(crate) fn in_pid_namespace_of(pid: i32) -> Vec<i32> {
    let Some(ns) = namespace(&pid.to_string(), "pid") else {
        return Vec::new();
    };
    if namespace("self", "pid") == Some(ns) {
        return vec![pid];
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| namespace(&p.to_string(), "pid") == Some(ns))
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_bogus_start_is_not() {
        let me = i32::try_from(std::process::id()).unwrap();
        let start = start_time(me).unwrap();
        assert!(alive(me, start));
        assert!(!alive(me, start + 1));
        assert!(!alive(0, start));
        // Never the caller's whole namespace.
        assert_eq!(in_pid_namespace_of(me), vec![me]);
    }
}
