//! The command's capabilities: a default set (the one container engines give root in a
//! container), plus `--cap-add`, minus `--cap-drop`. Everything else leaves the bounding set,
//! so not even a set-user-ID program can get it back.

use std::collections::HashSet;

use caps::{CapSet, Capability, CapsHashSet};

/// What root in a session may do by default.
pub const DEFAULT: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// The set for `add` and `drop` (names already checked by the config).
pub fn wanted(add: &[String], drop: &[String]) -> CapsHashSet {
    let parse = |names: &[String]| -> HashSet<Capability> {
        names.iter().filter_map(|n| n.parse().ok()).collect()
    };
    let mut set: CapsHashSet = DEFAULT.into_iter().collect();
    set.extend(parse(add));
    for cap in parse(drop) {
        set.remove(&cap);
    }
    set
}

/// Shrinks the bounding set to `set` and, for a uid-0 command, makes `set` its effective,
/// permitted and inheritable capabilities.
///
/// # Errors
/// Any capability call's error.
pub fn apply(set: &CapsHashSet, root: bool) -> Result<(), caps::errors::CapsError> {
    for cap in caps::all() {
        if !set.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    if root {
        let permitted = caps::read(None, CapSet::Permitted)?;
        let keep: CapsHashSet = set.intersection(&permitted).copied().collect();
        caps::set(None, CapSet::Effective, &keep)?;
        caps::set(None, CapSet::Permitted, &keep)?;
        caps::set(None, CapSet::Inheritable, &keep)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_drop_change_the_default() {
        let set = wanted(&["CAP_SYS_ADMIN".into()], &["CAP_NET_RAW".into()]);
        assert!(set.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!set.contains(&Capability::CAP_NET_RAW));
        assert!(set.contains(&Capability::CAP_CHOWN));
        assert_eq!(wanted(&[], &[]).len(), DEFAULT.len());
    }
}
