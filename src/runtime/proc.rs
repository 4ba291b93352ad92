//! What `/proc` says of a container's process: alive or not (its start time guards against
//! a reused pid), the processes of its pid namespace.

use std::os::unix::fs::MetadataExt;

/// The start time (clock ticks since boot, `/proc/PID/stat` field 22) of `pid` when it is
/// alive and not a zombie; `None` when it is gone, dead or unreadable.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if matches!(state, "Z" | "X" | "x") {
        return None;
    }
    // Field 3 was `state`; field 22 is the 20th after it.
    fields.nth(18)?.parse().ok()
}

/// True when `pid` is the process that started at `start` and has not ended.
pub(crate) fn alive(pid: i32, start: u64) -> bool {
    pid > 0 && start_time(pid) == Some(start)
}

/// The pids of every process in the pid namespace of `pid` (itself included), as this
/// process sees them; just `pid` when that namespace is this process's own (a process that
/// is no container's pid 1: sweeping its namespace would signal every process of the
/// caller's).
pub(crate) fn in_pid_namespace_of(pid: i32) -> Vec<i32> {
    let Ok(ns) = std::fs::metadata(format!("/proc/{pid}/ns/pid")) else {
        return Vec::new();
    };
    let own = std::fs::metadata("/proc/self/ns/pid");
    if own.is_ok_and(|o| o.dev() == ns.dev() && o.ino() == ns.ino()) {
        return vec![pid];
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::metadata(format!("/proc/{p}/ns/pid"))
                .is_ok_and(|m| m.dev() == ns.dev() && m.ino() == ns.ino())
        })
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
