//! The limits a cgroup can carry, in OCI's terms (`linux.resources`), and their values in
//! each cgroup version's files.

use oci_spec::runtime::LinuxResources;

/// The default CFS period, in microseconds (the kernel's and runc's).
pub(crate) const DEFAULT_CPU_PERIOD: u64 = 100_000;

/// Limits to write; `None` leaves a file as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Resources {
    /// Most tasks at once; 0 or less is no limit (`max`).
    pub(crate) pids_max: Option<i64>,
    pub(crate) memory: Option<Memory>,
    pub(crate) cpu: Option<Cpu>,
}

/// Memory limits in bytes; -1 is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Memory {
    pub(crate) limit: Option<i64>,
    /// Memory plus swap, as OCI and cgroup v1's `memory.memsw.limit_in_bytes` count it.
    pub(crate) swap: Option<i64>,
}

/// CPU bandwidth and weight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cpu {
    /// Microseconds of CPU time per period; -1 is no limit.
    pub(crate) quota: Option<i64>,
    /// The period in microseconds.
    pub(crate) period: Option<u64>,
    /// v1 `cpu.shares` (default 1024); v2 takes it as a weight ([`shares_to_weight`]).
    pub(crate) shares: Option<u64>,
}

impl Cpu {
    /// `--cpus N`: N CPUs' worth of time per default period (`--cpus 1.5` is 150 ms per
    /// 100 ms).
    pub(crate) fn from_cpus(cpus: f64) -> Cpu {
        Cpu {
            quota: Some((cpus * DEFAULT_CPU_PERIOD as f64).round() as i64),
            period: Some(DEFAULT_CPU_PERIOD),
            shares: None,
        }
    }
}

impl Resources {
    /// The limits of an OCI `linux.resources` that this module writes (pids, memory limit
    /// and swap, cpu quota, period and shares); the others are the caller's to refuse or
    /// ignore.
    pub(crate) fn from_oci(r: &LinuxResources) -> Resources {
        Resources {
            pids_max: r.pids().as_ref().map(|p| p.limit()),
            memory: r.memory().as_ref().map(|m| Memory {
                limit: m.limit(),
                swap: m.swap(),
            }),
            cpu: r.cpu().as_ref().map(|c| Cpu {
                quota: c.quota(),
                period: c.period(),
                shares: c.shares(),
            }),
        }
    }

    /// Whether nothing is to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.pids_max.is_none()
            && self
                .memory
                .is_none_or(|m| m.limit.is_none() && m.swap.is_none())
            && self
                .cpu
                .is_none_or(|c| c.quota.is_none() && c.period.is_none() && c.shares.is_none())
    }
}

/// `pids.max`'s value: a positive count, or `max`.
pub(super) fn pids_value(limit: i64) -> String {
    if limit > 0 {
        limit.to_string()
    } else {
        "max".to_owned()
    }
}

/// A v2 byte limit: the count, or `max` for -1 (or any negative).
pub(super) fn bytes_v2(limit: i64) -> String {
    if limit >= 0 {
        limit.to_string()
    } else {
        "max".to_owned()
    }
}

/// v2 `memory.swap.max` from OCI's memory+swap total: the swap part alone (runc's rule).
pub(super) fn swap_v2(memory: Memory) -> Option<String> {
    match (memory.swap?, memory.limit) {
        (s, _) if s < 0 => Some("max".to_owned()),
        (s, Some(l)) if l >= 0 => Some(s.saturating_sub(l).max(0).to_string()),
        // Swap without a memory limit: OCI's total is all swap.
        (s, _) => Some(s.to_string()),
    }
}

/// v1 `cpu.shares` (2..=262144) as a v2 `cpu.weight` (1..=10000), runc's mapping.
pub(super) fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// v2 `cpu.max`: "QUOTA PERIOD", QUOTA `max` when unlimited.
pub(super) fn cpu_max(cpu: Cpu) -> Option<String> {
    if cpu.quota.is_none() && cpu.period.is_none() {
        return None;
    }
    let quota = match cpu.quota {
        Some(q) if q > 0 => q.to_string(),
        _ => "max".to_owned(),
    };
    Some(format!(
        "{quota} {}",
        cpu.period.unwrap_or(DEFAULT_CPU_PERIOD)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_map_onto_weights_as_runc_does() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
    }

    #[test]
    fn cpu_max_writes_max_for_no_quota() {
        let c = Cpu::from_cpus(1.5);
        assert_eq!(cpu_max(c).as_deref(), Some("150000 100000"));
        let unlimited = Cpu {
            quota: Some(-1),
            period: Some(50_000),
            shares: None,
        };
        assert_eq!(cpu_max(unlimited).as_deref(), Some("max 50000"));
        assert_eq!(cpu_max(Cpu::default()), None);
    }

    #[test]
    fn v2_swap_is_the_total_minus_memory() {
        let m = |limit, swap| Memory { limit, swap };
        assert_eq!(swap_v2(m(Some(100), Some(300))).as_deref(), Some("200"));
        assert_eq!(swap_v2(m(Some(100), Some(-1))).as_deref(), Some("max"));
        assert_eq!(swap_v2(m(Some(100), Some(50))).as_deref(), Some("0"));
        assert_eq!(swap_v2(m(Some(100), None)), None);
        assert_eq!(swap_v2(m(None, Some(300))).as_deref(), Some("300"));
    }

    #[test]
    fn pids_and_bytes_write_max_for_no_limit() {
        assert_eq!(pids_value(0), "max");
        assert_eq!(pids_value(-1), "max");
        assert_eq!(pids_value(64), "64");
        assert_eq!(bytes_v2(-1), "max");
        assert_eq!(bytes_v2(1 << 20), "1048576");
    }

    #[test]
    fn oci_resources_convert() {
        let r: LinuxResources = serde_json::from_str(
            r#"{"pids":{"limit":32},"memory":{"limit":1048576,"swap":2097152},
                "cpu":{"quota":50000,"period":100000,"shares":512}}"#,
        )
        .unwrap();
        let got = Resources::from_oci(&r);
        assert_eq!(got.pids_max, Some(32));
        assert_eq!(
            got.memory,
            Some(Memory {
                limit: Some(1_048_576),
                swap: Some(2_097_152)
            })
        );
        assert_eq!(
            got.cpu,
            Some(Cpu {
                quota: Some(50_000),
                period: Some(100_000),
                shares: Some(512)
            })
        );
        assert!(!got.is_empty());
        assert!(Resources::default().is_empty());
    }
}
