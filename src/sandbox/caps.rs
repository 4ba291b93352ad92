//! The command's capabilities: a default set (the one container engines give root in a
//! container), plus `--cap-add`, minus `--cap-drop`. Everything else leaves the bounding set,
//! so not even a set-user-ID program can get it back.

use caps::{CapSet, CapsHashSet};

use crate::config::CapabilitySets;

/// Parses capability names (already checked by the config).
fn parse(names: &std::collections::BTreeSet<String>) -> CapsHashSet {
    names.iter().filter_map(|n| n.parse().ok()).collect()
}

/// First half, before the command's uid changes: shrinks the bounding set, and keeps the
/// permitted set across the uid change (`PR_SET_KEEPCAPS`) so [`apply_after_setuid`] can set
/// the rest, as runc does.
///
/// # Errors
/// Any capability call's error.
pub(crate) fn apply_before_setuid(sets: &CapabilitySets) -> Result<(), caps::errors::CapsError> {
    let bounding = parse(&sets.bounding);
    for cap in caps::all() {
        if !bounding.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    let _ = nix::sys::prctl::set_keepcaps(true);
    Ok(())
}

/// Second half, after setresuid: the effective, permitted and inheritable sets as given,
/// then the ambient ones (which the kernel raises only where permitted and inheritable
/// allow: they are added to inheritable for that, as runc's configs expect).
///
/// # Errors
/// Any capability call's error, naming the set through `CapsError`'s text.
pub(crate) fn apply_after_setuid(sets: &CapabilitySets) -> Result<(), caps::errors::CapsError> {
    let _ = nix::sys::prctl::set_keepcaps(false);
    let held = caps::read(None, CapSet::Permitted)?;
    let within = |names| -> CapsHashSet { parse(names).intersection(&held).copied().collect() };
    let ambient = within(&sets.ambient);
    let mut inheritable = within(&sets.inheritable);
    inheritable.extend(ambient.iter().copied());
    caps::set(None, CapSet::Inheritable, &inheritable)?;
    caps::set(None, CapSet::Effective, &within(&sets.effective))?;
    caps::set(None, CapSet::Permitted, &within(&sets.permitted))?;
    caps::clear(None, CapSet::Ambient)?;
    for cap in ambient {
        caps::raise(None, CapSet::Ambient, cap)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_drop_change_the_default() {
        let mut sets = CapabilitySets::container_default(0);
        sets.add("CAP_SYS_ADMIN", 0);
        sets.drop("CAP_NET_RAW");
        assert!(
            sets.bounding.contains("CAP_SYS_ADMIN") && sets.effective.contains("CAP_SYS_ADMIN")
        );
        assert!(!sets.bounding.contains("CAP_NET_RAW") && !sets.permitted.contains("CAP_NET_RAW"));
        assert!(sets.bounding.contains("CAP_CHOWN"));
        assert_eq!(
            CapabilitySets::container_default(0).bounding.len(),
            crate::config::DEFAULT_CAPABILITIES.len()
        );
        let user = CapabilitySets::container_default(1000);
        assert!(
            user.effective.is_empty()
                && user.bounding.len() == crate::config::DEFAULT_CAPABILITIES.len()
        );
        assert_eq!(
            parse(&user.bounding).len(),
            crate::config::DEFAULT_CAPABILITIES.len()
        );
    }
}
