//! The second stage of the command line: [`Flags`] (what was typed, in library types) merged
//! over a config file's [`OciSettings`] into a validated [`SessionPlan`]. The binary parses
//! its arguments into [`Flags`] and nothing more; every rule of "a flag wins over the file"
//! lives here.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::oci::OciSettings;
use super::{
    CapabilitySets, Limits, Network, PlanError, Seccomp, SessionPlan, Terminal, Timeout, UserNs,
    check_id, check_preserved_fds, default_env, default_masked_paths, parse_bind, parse_capability,
    parse_dev_bind, parse_rlimit, parse_sysctl, state_root,
};
use crate::layers::WhiteoutFormat;
use crate::mount::Backend;
use crate::policy::Policy;

/// The session flags as given on the command line: `None` and empty lists for flags not
/// given. Values are as typed; [`SessionPlan::from_flags`] checks them.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// `--rootfs`: one tree, or `A:B:C`, topmost first.
    pub rootfs: Option<PathBuf>,
    /// Layers over the rootfs, topmost first, from `--layer SESSION` (the caller resolves the
    /// session: its upper, then its own layers) or a resumed session's record.
    pub layers: Vec<PathBuf>,
    /// `--fs`.
    pub fs: Option<Backend>,
    /// `--no-userns`.
    pub no_userns: bool,
    /// `--uid`.
    pub uid: Option<u32>,
    /// `--gid`.
    pub gid: Option<u32>,
    /// `--user NAME|UID[:GROUP|GID]`, resolved in the rootfs.
    pub user: Option<String>,
    /// `--dev-bind SRC[:DST]`, each.
    pub dev_bind: Vec<String>,
    /// `--net`.
    pub net: Option<Network>,
    /// `--bind SRC:DST[:ro]`, each.
    pub bind: Vec<String>,
    /// `--tmpfs DST`, each.
    pub tmpfs: Vec<PathBuf>,
    /// `--env KEY=VALUE` or `--env KEY`, each.
    pub env: Vec<String>,
    /// `--env-file FILE`, each.
    pub env_file: Vec<PathBuf>,
    /// `--unsetenv KEY`, each.
    pub unsetenv: Vec<String>,
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
    /// `--timeout DURATION`.
    pub timeout: Option<String>,
    /// `--durable`.
    pub durable: bool,
    /// `--timeout-kill DURATION`.
    pub timeout_kill: Option<String>,
    /// `--memory SIZE`.
    pub memory: Option<String>,
    /// `--pids-limit N`.
    pub pids_limit: Option<String>,
    /// `--cpus N`.
    pub cpus: Option<String>,
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
        let (rootfs, mut layers) =
            super::split_rootfs(&flags.rootfs.or(oci.rootfs).ok_or(PlanError::NoRootfs)?)?;
        if !flags.layers.is_empty() {
            // A session's layers lie over its own rootfs, under anything given with colons.
            layers.extend(flags.layers.iter().cloned());
        }
        // A tree's own files (/etc/passwd, /etc/hostname): from the topmost tree holding them.
        let holder = |rel: &str| {
            layers
                .iter()
                .find(|l| l.join(rel).symlink_metadata().is_ok())
                .unwrap_or(&rootfs)
                .clone()
        };
        let userns = match (flags.no_userns, nix::unistd::geteuid().is_root()) {
            (false, _) => oci.userns.unwrap_or(UserNs::New),
            (true, true) => UserNs::Host,
            (true, false) => return Err(PlanError::NoUsernsUnprivileged),
        };
        let mut binds = Vec::new();
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
        let mounts = oci.mounts;
        let tmpfs = flags.tmpfs;
        let mut dev_binds = oci.dev_binds.clone();
        for d in &flags.dev_bind {
            dev_binds.push(parse_dev_bind(d)?);
        }
        let user = match &flags.user {
            Some(spec) => Some(super::user::lookup(spec, &holder("etc/passwd"))?),
            None => None,
        };
        let (uid, gid, groups) = match &user {
            Some(u) => (u.uid, u.gid, u.groups.clone()),
            None => (
                check_id("--uid", flags.uid.or(oci.uid).unwrap_or(0))?,
                check_id("--gid", flags.gid.or(oci.gid).unwrap_or(0))?,
                oci.groups.clone(),
            ),
        };
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
        let env = environment(
            oci.env,
            flags.clear_env,
            Home {
                uid,
                user: user.as_ref().map(|u| u.home.as_str()),
            },
            &cwd,
            EnvFlags {
                files: &flags.env_file,
                env: &flags.env,
                unset: &flags.unsetenv,
            },
        )?;
        let hostname = flags
            .hostname
            .or(oci.hostname)
            .unwrap_or_else(|| rootfs_hostname(&holder("etc/hostname")));
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
        let limits = Limits {
            memory: flags.memory.as_deref().map(parse_size).transpose()?,
            pids: flags.pids_limit.as_deref().map(parse_pids).transpose()?,
            cpus: flags.cpus.as_deref().map(parse_cpus).transpose()?,
        };
        let timeout = match &flags.timeout {
            Some(after) => Some(Timeout {
                after: parse_duration("--timeout", after)?,
                kill_after: match &flags.timeout_kill {
                    Some(k) => parse_duration("--timeout-kill", k)?,
                    None => DEFAULT_TIMEOUT_KILL,
                },
            }),
            None => None,
        };
        Ok(SessionPlan {
            rootfs,
            layers,
            argv,
            env,
            cwd,
            hostname,
            uid,
            gid,
            groups,
            userns,
            net,
            binds,
            dev_binds,
            tmpfs,
            mounts,
            capabilities,
            state_root: state_root()?,
            fs,
            whiteout,
            durable: flags.durable || oci.durable,
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
            umask: oci.umask,
            join: oci.join,
            timeout,
            limits,
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

/// The environment flags, in the order they apply.
struct EnvFlags<'a> {
    /// `--env-file`: each file's lines, in order.
    files: &'a [PathBuf],
    /// `--env`: over the files.
    env: &'a [String],
    /// `--unsetenv`: last.
    unset: &'a [String],
}

/// Whose `HOME` the command gets.
struct Home<'a> {
    /// The command's uid: `/root` for 0, else `/`, where the environment has none.
    uid: u32,
    /// `--user`'s home from the rootfs's passwd: over the caller's `HOME`, under the config
    /// file's and the `--env` flags.
    user: Option<&'a str>,
}

/// The command's environment: the file's (the whole environment, as for any OCI runtime),
/// else the defaults with `--clear-env`, else the caller's with `PWD` the session's `cwd`
/// (and no `OLDPWD`: both name the caller's directories); then each `--env-file` line and
/// each `--env` replacing its key, then each `--unsetenv` removing its key.
fn environment(
    file: Option<Vec<OsString>>,
    clear_env: bool,
    home: Home<'_>,
    cwd: &Path,
    flags: EnvFlags<'_>,
) -> Result<Vec<OsString>, PlanError> {
    let default_home = if home.uid == 0 { "/root" } else { "/" };
    let user_home = |env: &mut Vec<OsString>, keep_given: bool| {
        if let Some(h) = home.user {
            if !(keep_given && env.iter().any(|e| e.as_bytes().starts_with(b"HOME="))) {
                set_var(env, "HOME", key_value("HOME".as_ref(), h.as_ref()));
            }
        }
    };
    let mut env: Vec<OsString> = match file {
        Some(mut env) => {
            user_home(&mut env, true);
            env
        }
        None if clear_env => {
            let mut env = default_env(home.user.unwrap_or(default_home));
            user_home(&mut env, false);
            env
        }
        None => {
            let mut env: Vec<OsString> = std::env::vars_os()
                .filter(|(k, _)| k != "PWD" && k != "OLDPWD")
                .map(|(k, v)| key_value(&k, &v))
                .collect();
            env.push(key_value("PWD".as_ref(), cwd.as_os_str()));
            // The caller's HOME is the caller's, not the --user's.
            user_home(&mut env, false);
            env
        }
    };
    for path in flags.files {
        for (key, kv) in read_env_file(path)? {
            set_var(&mut env, &key, kv);
        }
    }
    for entry in flags.env {
        let key = env_key(entry).ok_or_else(|| PlanError::Env(entry.clone()))?;
        if let Some(kv) = env_entry(key, entry) {
            set_var(&mut env, key, kv);
        }
    }
    for key in flags.unset {
        if !is_var_name(key) {
            return Err(PlanError::Unsetenv(key.clone()));
        }
        remove_var(&mut env, key);
    }
    Ok(env)
}

/// The `--env-file` at `path` as `(KEY, KEY=VALUE)` pairs in line order: `KEY=VALUE` lines,
/// `KEY` lines (the caller's value, skipped when the caller has none), and `#` comments and
/// blank lines, skipped.
///
/// # Errors
/// [`PlanError::EnvFile`] when it cannot be read; [`PlanError::EnvFileLine`] naming the first
/// line that is none of those.
fn read_env_file(path: &Path) -> Result<Vec<(String, OsString)>, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlanError::EnvFile {
        path: path.to_owned(),
        source,
    })?;
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.trim_start();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let key = env_key(entry).ok_or_else(|| PlanError::EnvFileLine {
            path: path.to_owned(),
            line: i + 1,
            text: line.to_owned(),
        })?;
        if let Some(kv) = env_entry(key, entry) {
            vars.push((key.to_owned(), kv));
        }
    }
    Ok(vars)
}

/// The name of `KEY=VALUE` or `KEY`, when it is a variable name.
fn env_key(entry: &str) -> Option<&str> {
    let key = entry.split_once('=').map_or(entry, |(k, _)| k);
    is_var_name(key).then_some(key)
}

/// `entry` when it has a value, else `KEY=` the caller's value (docker's and podman's
/// `--env KEY`), else nothing.
fn env_entry(key: &str, entry: &str) -> Option<OsString> {
    if entry.contains('=') {
        return Some(entry.into());
    }
    std::env::var_os(key).map(|v| key_value(key.as_ref(), &v))
}

/// Not empty, and neither `=`, white space nor NUL in it.
fn is_var_name(key: &str) -> bool {
    !key.is_empty() && !key.contains(|c: char| c == '=' || c == '\0' || c.is_whitespace())
}

fn key_value(key: &std::ffi::OsStr, value: &std::ffi::OsStr) -> OsString {
    let mut kv = key.to_owned();
    kv.push("=");
    kv.push(value);
    kv
}

fn remove_var(env: &mut Vec<OsString>, key: &str) {
    let prefix = format!("{key}=");
    env.retain(|e| !e.as_bytes().starts_with(prefix.as_bytes()));
}

fn set_var(env: &mut Vec<OsString>, key: &str, kv: OsString) {
    remove_var(env, key);
    env.push(kv);
}

/// How long a timed-out session has between TERM and KILL unless `--timeout-kill` says.
const DEFAULT_TIMEOUT_KILL: std::time::Duration = std::time::Duration::from_secs(10);

/// `--memory`: bytes, or a number with k, m or g (binary units, as podman's), at least 1 MiB
/// (a smaller limit kills the session's own pid 1 before it starts).
fn parse_size(value: &str) -> Result<u64, PlanError> {
    let bad = |why: &str| PlanError::Limit {
        flag: "--memory",
        value: value.to_owned(),
        why: why.to_owned(),
    };
    let lower = value.to_ascii_lowercase();
    let (number, scale) = match lower.char_indices().last() {
        Some((i, 'k')) => (&lower[..i], 1u64 << 10),
        Some((i, 'm')) => (&lower[..i], 1 << 20),
        Some((i, 'g')) => (&lower[..i], 1 << 30),
        Some((i, 'b')) => (&lower[..i], 1),
        _ => (lower.as_str(), 1),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| bad("expected bytes, or a number with k, m or g (512m, 2g)"))?;
    let bytes = n
        .checked_mul(scale)
        .ok_or_else(|| bad("larger than any machine"))?;
    if bytes < 1 << 20 {
        return Err(bad("less than 1 MiB, too little to start a command in"));
    }
    Ok(bytes)
}

/// `--pids-limit`: a count of at least 1.
fn parse_pids(value: &str) -> Result<u64, PlanError> {
    match value.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(PlanError::Limit {
            flag: "--pids-limit",
            value: value.to_owned(),
            why: "expected a number of processes, at least 1".to_owned(),
        }),
    }
}

/// `--cpus`: a positive number of CPUs, at most those of the machine.
fn parse_cpus(value: &str) -> Result<f64, PlanError> {
    let have = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let bad = |why: String| PlanError::Limit {
        flag: "--cpus",
        value: value.to_owned(),
        why,
    };
    match value.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.01 && n <= have as f64 => Ok(n),
        Ok(n) if n.is_finite() && n > have as f64 => {
            Err(bad(format!("this machine has {have} CPUs")))
        }
        _ => Err(bad(
            "expected a number of CPUs, at least 0.01 (0.5, 2)".to_owned()
        )),
    }
}

/// `30`, `1.5`, `30s`, `5m`, `2h`, `1d`, as `timeout(1)` takes them.
///
/// # Errors
/// [`PlanError::Duration`] naming `flag` for anything else (negative, empty, other units).
pub fn parse_duration(flag: &'static str, value: &str) -> Result<std::time::Duration, PlanError> {
    let bad = || PlanError::Duration {
        flag,
        value: value.to_owned(),
    };
    let (number, unit) = match value.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&value[..i], c),
        _ => (value, 's'),
    };
    let scale = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86400.0,
        _ => return Err(bad()),
    };
    let n: f64 = number.parse().map_err(|_| bad())?;
    std::time::Duration::try_from_secs_f64(n * scale).map_err(|_| bad())
}

/// The rootfs's `/etc/hostname`, else "ovlrun".
/// The tree's `/etc/hostname`, read beneath the rootfs without following a symlink (the
/// tree's files are not trusted: a link to a host file would show its first line inside);
/// its first line, or `ovlrun`.
fn rootfs_hostname(rootfs: &Path) -> String {
    super::user::read_account_file(rootfs, "etc/hostname", "")
        .ok()
        .and_then(|h| h.lines().next().map(|l| l.trim().to_owned()))
        .filter(|h| !h.is_empty() && h.len() <= 64)
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
    fn durable_comes_from_the_flag_or_the_annotation() {
        let durable = |flag: bool, annotation: bool| {
            let flags = Flags {
                rootfs: Some(std::env::temp_dir()),
                durable: flag,
                ..Flags::default()
            };
            let oci = OciSettings {
                durable: annotation,
                ..OciSettings::default()
            };
            SessionPlan::from_flags(flags, oci).unwrap().durable
        };
        assert!(!durable(false, false));
        assert!(durable(true, false));
        assert!(durable(false, true));
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
        assert!(with(|f| f.env = vec!["=v".into()]).starts_with("--env =v:"));
        assert!(with(|f| f.env = vec!["A B=v".into()]).starts_with("--env A B=v:"));
        assert!(with(|f| f.unsetenv = vec!["A=".into()]).starts_with("--unsetenv A=:"));
        let e = with(|f| f.env_file = vec!["/nonexistent/ovlrun-env".into()]);
        assert!(e.starts_with("--env-file /nonexistent/ovlrun-env: "), "{e}");
    }

    #[test]
    fn env_file_lines_and_the_bad_line_named() {
        let dir = std::env::temp_dir().join(format!("ovlrun-envfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "# comment\n\nA=1\n  B=two words\nC=\nA=3\n").unwrap();
        let vars = read_env_file(&good).unwrap();
        let got: Vec<&OsString> = vars.iter().map(|(_, kv)| kv).collect();
        assert_eq!(got, ["A=1", "B=two words", "C=", "A=3"]);
        let bad = dir.join("bad");
        std::fs::write(&bad, "A=1\n# fine\nexport B=2\n").unwrap();
        let e = read_env_file(&bad).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("line 3") && e.contains("export B=2"), "{e}");
    }

    #[test]
    fn durations_as_timeout_takes_them() {
        let d = |v| parse_duration("--timeout", v);
        assert_eq!(d("30").unwrap().as_secs(), 30);
        assert_eq!(d("30s").unwrap().as_secs(), 30);
        assert_eq!(d("5m").unwrap().as_secs(), 300);
        assert_eq!(d("2h").unwrap().as_secs(), 7200);
        assert_eq!(d("1.5").unwrap().as_millis(), 1500);
        for bad in ["", "s", "-1", "5x", "abc", "inf"] {
            let e = d(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--timeout {bad}: ")), "{e}");
        }
    }
}
