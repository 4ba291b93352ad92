//! The second stage of the command line: [`Flags`] (what was typed, in library types) merged
//! over a config file's [`OciSettings`] into a validated [`SessionPlan`]. The binary parses
//! its arguments into [`Flags`] and nothing more; every rule of "a flag wins over the file"
//! lives here.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::oci::OciSettings;
use super::{
    CapabilitySets, Network, PlanError, Seccomp, SessionPlan, Terminal, UserNs, check_id,
    check_preserved_fds, check_rootfs, default_env, default_masked_paths, parse_bind,
    parse_capability, parse_rlimit, parse_sysctl, state_root,
};
use crate::layers::WhiteoutFormat;
use crate::mount::Backend;
use crate::policy::Policy;

/// The session flags as given on the command line: `None` and empty lists for flags not
/// given. Values are as typed; [`SessionPlan::from_flags`] checks them.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// `--rootfs`.
    pub rootfs: Option<PathBuf>,
    /// `--fs`.
    pub fs: Option<Backend>,
    /// `--no-userns`.
    pub no_userns: bool,
    /// `--uid`.
    pub uid: Option<u32>,
    /// `--gid`.
    pub gid: Option<u32>,
    /// `--net`.
    pub net: Option<Network>,
    /// `--bind SRC:DST[:ro]`, each.
    pub bind: Vec<String>,
    /// `--tmpfs DST`, each.
    pub tmpfs: Vec<PathBuf>,
    /// `--env KEY=VALUE`, each.
    pub env: Vec<String>,
    /// `--clear-env`.
    pub clear_env: bool,
    /// `--cwd`.
    pub cwd: Option<PathBuf>,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `--cap-add`, each.
    pub cap_add: Vec<String>,
    /// `--cap-drop`, each.
    pub cap_drop: Vec<String>,
    /// `--preserve-fds N`.
    pub preserve_fds: u32,
    /// `-t/--tty`.
    pub tty: bool,
    /// `--no-tty`.
    pub no_tty: bool,
    /// `--rlimit NAME=SOFT[:HARD]`, each.
    pub rlimit: Vec<String>,
    /// `--read-only`.
    pub read_only: bool,
    /// `--mask PATH`, each.
    pub mask: Vec<PathBuf>,
    /// `--ro PATH`, each.
    pub read_only_paths: Vec<PathBuf>,
    /// `--sysctl KEY=VALUE`, each.
    pub sysctl: Vec<String>,
    /// `--seccomp default|unconfined|FILE`.
    pub seccomp: Option<OsString>,
    /// The command and its arguments (empty: the file's, else `/bin/sh`).
    pub cmd: Vec<OsString>,
}

/// The policy a session ends with: `--policy` given, else preserve for a resumed session
/// (resuming must never throw the kept work away unless asked to on the command line), else
/// the file's, else discard.
pub fn chosen_policy(flag: Option<Policy>, resuming: bool, file: Option<Policy>) -> Policy {
    match (flag, resuming) {
        (Some(p), _) => p,
        (None, true) => Policy::Preserve,
        (None, false) => file.unwrap_or(Policy::Discard),
    }
}

impl SessionPlan {
    /// The plan of `flags` over the config file's settings `oci` (nothing is created before
    /// it is valid). A flag given wins over the file; list flags (`--bind`, `--tmpfs`,
    /// `--env`, `--cap-add`, `--cap-drop`, `--rlimit`, `--sysctl`, `--mask`, `--ro`) add to
    /// it.
    ///
    /// # Errors
    /// [`PlanError`] naming the flag or config field and the value at fault.
    pub fn from_flags(flags: Flags, oci: OciSettings) -> Result<SessionPlan, PlanError> {
        let rootfs = check_rootfs(&flags.rootfs.or(oci.rootfs).ok_or(PlanError::NoRootfs)?)?;
        let userns = match (flags.no_userns, nix::unistd::geteuid().is_root()) {
            (false, _) => oci.userns.unwrap_or(UserNs::New),
            (true, true) => UserNs::Host,
            (true, false) => return Err(PlanError::NoUsernsUnprivileged),
        };
        let mut binds = oci.binds;
        for b in &flags.bind {
            binds.push(parse_bind(b)?);
        }
        if let Some(cwd) = &flags.cwd {
            check_absolute("--cwd", cwd)?;
        }
        for t in &flags.tmpfs {
            check_absolute("--tmpfs", t)?;
        }
        let cwd = flags.cwd.or(oci.cwd).unwrap_or_else(|| "/".into());
        let mut tmpfs = oci.tmpfs;
        tmpfs.extend(flags.tmpfs);
        let uid = check_id("--uid", flags.uid.or(oci.uid).unwrap_or(0))?;
        let gid = check_id("--gid", flags.gid.or(oci.gid).unwrap_or(0))?;
        // The file's sets first, then the flags: a flag undoes the file's opposite choice.
        let mut capabilities = oci
            .capabilities
            .unwrap_or_else(|| CapabilitySets::container_default(uid));
        for c in &flags.cap_add {
            capabilities.add(&parse_capability("--cap-add", c)?, uid);
        }
        for c in &flags.cap_drop {
            capabilities.drop(&parse_capability("--cap-drop", c)?);
        }
        let env = environment(oci.env, flags.clear_env, uid, &flags.env)?;
        let hostname = flags
            .hostname
            .or(oci.hostname)
            .unwrap_or_else(|| rootfs_hostname(&rootfs));
        let net = flags.net.or(oci.net).unwrap_or(Network::Host);
        check_preserved_fds(flags.preserve_fds)?;
        let mut rlimits = oci.rlimits;
        for value in &flags.rlimit {
            let r = parse_rlimit(value)?;
            rlimits.retain(|old| old.resource != r.resource);
            rlimits.push(r);
        }
        let mut sysctl = oci.sysctl;
        for value in &flags.sysctl {
            let (key, val) = parse_sysctl(value, net)?;
            sysctl.retain(|(k, _)| *k != key);
            sysctl.push((key, val));
        }
        for p in &flags.mask {
            check_absolute("--mask", p)?;
        }
        for p in &flags.read_only_paths {
            check_absolute("--ro", p)?;
        }
        let mut masked_paths = default_masked_paths();
        masked_paths.extend(oci.masked_paths);
        masked_paths.extend(flags.mask);
        let mut readonly_paths: Vec<PathBuf> = super::DEFAULT_READONLY_PATHS
            .iter()
            .map(PathBuf::from)
            .collect();
        readonly_paths.extend(oci.readonly_paths);
        readonly_paths.extend(flags.read_only_paths);
        for list in [&mut masked_paths, &mut readonly_paths] {
            let mut seen = std::collections::HashSet::new();
            list.retain(|p| seen.insert(p.clone()));
        }
        let seccomp = match &flags.seccomp {
            Some(value) => super::seccomp::parse_flag(value)?,
            None => oci.seccomp.map_or(Seccomp::Default, Seccomp::Profile),
        };
        let argv = if !flags.cmd.is_empty() {
            flags.cmd
        } else {
            oci.args.unwrap_or_else(|| vec![OsString::from("/bin/sh")])
        };
        let (fs, whiteout) =
            backend_for(flags.fs.or(oci.fs).unwrap_or(Backend::Auto), oci.whiteout)?;
        Ok(SessionPlan {
            rootfs,
            argv,
            env,
            cwd,
            hostname,
            uid,
            gid,
            userns,
            net,
            binds,
            tmpfs,
            capabilities,
            state_root: state_root()?,
            fs,
            whiteout,
            terminal: Terminal::chosen(flags.tty, flags.no_tty, oci.terminal),
            seccomp,
            preserve_fds: flags.preserve_fds,
            rlimits,
            masked_paths,
            readonly_paths,
            read_only_root: flags.read_only || oci.read_only_root,
            no_new_privs: oci.no_new_privs.unwrap_or(true),
            sysctl,
            oom_score_adj: oci.oom_score_adj,
        })
    }
}

/// The backend for a whiteout format asked for: the kernel overlayfs writes only its own
/// format, so `aufs` makes `auto` FUSE and is refused with `kernel`.
///
/// # Errors
/// [`PlanError::KernelWhiteout`] for `aufs` with the kernel overlayfs.
fn backend_for(
    fs: Backend,
    whiteout: Option<WhiteoutFormat>,
) -> Result<(Backend, Option<WhiteoutFormat>), PlanError> {
    match (fs, whiteout) {
        (Backend::Kernel, Some(WhiteoutFormat::Aufs)) => Err(PlanError::KernelWhiteout),
        (Backend::Auto, Some(WhiteoutFormat::Aufs)) => Ok((Backend::Fuse, whiteout)),
        _ => Ok((fs, whiteout)),
    }
}

/// The command's environment: the file's (the whole environment, as for any OCI runtime),
/// else the defaults with `--clear-env`, else the caller's; then each `--env` replacing its
/// key.
fn environment(
    file: Option<Vec<OsString>>,
    clear_env: bool,
    uid: u32,
    flags: &[String],
) -> Result<Vec<OsString>, PlanError> {
    let home = if uid == 0 { "/root" } else { "/" };
    let mut env: Vec<OsString> = match file {
        Some(env) => env,
        None if clear_env => default_env(home),
        None => std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k;
                kv.push("=");
                kv.push(v);
                kv
            })
            .collect(),
    };
    for kv in flags {
        let Some((key, _)) = kv.split_once('=') else {
            return Err(PlanError::Env(kv.clone()));
        };
        let prefix = format!("{key}=");
        env.retain(|e| !e.as_bytes().starts_with(prefix.as_bytes()));
        env.push(kv.into());
    }
    Ok(env)
}

/// The rootfs's `/etc/hostname`, else "ovlrun".
fn rootfs_hostname(rootfs: &Path) -> String {
    std::fs::read_to_string(rootfs.join("etc/hostname"))
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ovlrun".into())
}

fn check_absolute(flag: &'static str, path: &Path) -> Result<(), PlanError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(PlanError::NotAbsolute {
            flag,
            value: path.display().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aufs_whiteouts_choose_fuse_and_refuse_the_kernel() {
        let aufs = Some(WhiteoutFormat::Aufs);
        assert_eq!(
            backend_for(Backend::Auto, aufs).unwrap(),
            (Backend::Fuse, aufs)
        );
        assert_eq!(
            backend_for(Backend::Fuse, aufs).unwrap(),
            (Backend::Fuse, aufs)
        );
        let e = backend_for(Backend::Kernel, aufs).unwrap_err().to_string();
        assert!(
            e.contains("org.ovlrun.whiteout") && e.contains("--fs"),
            "{e}"
        );
        let kernel = Some(WhiteoutFormat::Kernel);
        assert_eq!(
            backend_for(Backend::Auto, kernel).unwrap(),
            (Backend::Auto, kernel)
        );
        assert_eq!(
            backend_for(Backend::Kernel, None).unwrap(),
            (Backend::Kernel, None)
        );
    }

    #[test]
    fn the_flag_wins_and_resuming_preserves() {
        assert_eq!(chosen_policy(None, false, None), Policy::Discard);
        assert_eq!(
            chosen_policy(None, false, Some(Policy::Commit)),
            Policy::Commit
        );
        assert_eq!(
            chosen_policy(None, true, Some(Policy::Commit)),
            Policy::Preserve
        );
        assert_eq!(chosen_policy(Some(Policy::Ask), true, None), Policy::Ask);
    }

    #[test]
    fn flags_name_themselves_in_errors() {
        let rootfs = std::env::temp_dir();
        let with = |change: fn(&mut Flags)| {
            let mut f = Flags {
                rootfs: Some(rootfs.clone()),
                ..Flags::default()
            };
            change(&mut f);
            SessionPlan::from_flags(f, OciSettings::default())
                .unwrap_err()
                .to_string()
        };
        assert!(with(|f| f.rootfs = None).contains("--rootfs"));
        assert!(with(|f| f.cwd = Some("rel".into())).starts_with("--cwd rel:"));
        assert!(with(|f| f.mask = vec!["rel".into()]).starts_with("--mask rel:"));
        assert!(with(|f| f.read_only_paths = vec!["rel".into()]).starts_with("--ro rel:"));
        assert!(with(|f| f.env = vec!["NOEQ".into()]).starts_with("--env NOEQ:"));
    }
}
