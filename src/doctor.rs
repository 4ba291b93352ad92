//! `ovlrun doctor`: checks what the launcher needs on this machine, for the user running it,
//! and names the command that fixes each missing piece.
//!
//! It reads system state and runs util-linux's `unshare` to try a user namespace for real (a
//! separate process, so this process never changes namespace and the crate needs no `fork`
//! here). It changes nothing, and it does not decide how the launcher copes with what is
//! missing (that is `sandbox`'s fallback): it only reports. Printing and the exit code are the
//! binary's; [`Report`] implements `Display`.
//!
//! Each check is a small function: the reading of `/proc`, `/etc` or `$PATH` is kept apart
//! from the judging, so the judging is unit-tested on plain values.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::unistd::{Uid, User};

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Present and working.
    Ok,
    /// ovlrun runs, with less: a fallback is used or a speed-up is off.
    Warn,
    /// ovlrun cannot run sessions for this user until this is fixed.
    Problem,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Problem => "problem",
        }
    }
}

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked, e.g. `/dev/fuse`.
    pub name: &'static str,
    /// How it came out.
    pub status: Status,
    /// What was found, in a few words with the values seen.
    pub detail: String,
    /// The command that fixes it; `None` when it is fine or nothing simple fixes it.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: Option<String>) -> Self {
        Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix,
        }
    }

    fn problem(name: &'static str, detail: impl Into<String>, fix: Option<String>) -> Self {
        Check {
            name,
            status: Status::Problem,
            detail: detail.into(),
            fix,
        }
    }
}

/// Every check, in the order it ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The checks; a check that does not apply here (a sysctl this kernel lacks) is absent.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when no check is a [`Status::Problem`]: ovlrun can run sessions here, as this
    /// user, perhaps without some speed-ups or the full id range.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.count(Status::Problem) == 0
    }

    /// How many checks came out as `status`.
    #[must_use]
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// One line: the counts and the verdict.
    #[must_use]
    pub fn summary(&self) -> String {
        let problems = self.count(Status::Problem);
        let verdict = if problems == 0 {
            "ovlrun can run sessions here"
        } else {
            "ovlrun cannot run sessions here until the problems are fixed"
        };
        format!(
            "{} ok, {} {}, {} {}: {verdict}",
            self.count(Status::Ok),
            self.count(Status::Warn),
            plural(self.count(Status::Warn), "warning"),
            problems,
            plural(problems, "problem"),
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            writeln!(
                f,
                "{:<8} {}: {}",
                check.status.label(),
                check.name,
                check.detail
            )?;
            if let Some(fix) = &check.fix {
                writeln!(f, "{:<8} fix: {fix}", "")?;
            }
        }
        writeln!(f, "{}", self.summary())
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

/// Runs every check for the current user.
#[must_use]
pub fn run() -> Report {
    let me = Caller::current();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease");
    let kernel = kernel.as_deref().map(str::trim);
    let mut checks = vec![dev_fuse(), fusermount(&me)];
    checks.extend(
        USERNS_SYSCTLS
            .iter()
            .filter_map(|s| read_optional(s.path).map(|v| judge_sysctl(s, v.as_deref(), &me))),
    );
    checks.push(try_user_namespace());
    let subuid = subordinate_ids(&me, IdKind::Uid);
    let subgid = subordinate_ids(&me, IdKind::Gid);
    let ranges_ok = subuid.status == Status::Ok && subgid.status == Status::Ok;
    checks.extend([subuid, subgid]);
    let uidmap = id_map_helper(&me, IdKind::Uid.helper());
    let gidmap = id_map_helper(&me, IdKind::Gid.helper());
    let helpers_ok = uidmap.status == Status::Ok && gidmap.status == Status::Ok;
    checks.extend([uidmap, gidmap]);
    if !me.root && ranges_ok && helpers_ok {
        checks.push(try_full_id_map());
    }
    checks.push(kernel_overlay());
    checks.push(judge_rootless_overlay(kernel));
    checks.push(judge_passthrough(kernel, &me));
    Report { checks }
}

/// Who runs the checks: what they need differs for root.
#[derive(Clone, Debug)]
struct Caller {
    uid: Uid,
    /// The login name, when the passwd database has one.
    name: Option<String>,
    root: bool,
    /// Holds `CAP_SYS_ADMIN` in the initial user namespace: what FUSE passthrough needs.
    /// Root in a container's user namespace, or with capabilities dropped, does not.
    initial_admin: bool,
}

impl Caller {
    fn current() -> Self {
        let uid = Uid::current();
        let name = User::from_uid(uid).ok().flatten().map(|u| u.name);
        let initial_ns = fs::read_link("/proc/self/ns/user")
            .is_ok_and(|link| is_initial_user_ns(&link.to_string_lossy()));
        let admin = fs::read_to_string("/proc/self/status")
            .is_ok_and(|status| has_effective_cap(&status, CAP_SYS_ADMIN));
        Caller {
            uid,
            name,
            root: uid.is_root(),
            initial_admin: initial_ns && admin,
        }
    }

    /// The name to put in a fix command.
    fn login(&self) -> String {
        self.name.clone().unwrap_or_else(|| "$USER".to_owned())
    }
}

/// The inode of the initial user namespace, fixed by the kernel (`PROC_USER_INIT_INO` in
/// include/linux/proc_ns.h).
const INITIAL_USER_NS: &str = "user:[4026531837]";

/// `link` is the target of `/proc/self/ns/user`.
fn is_initial_user_ns(link: &str) -> bool {
    link == INITIAL_USER_NS
}

/// See: capability(7); include/uapi/linux/capability.h.
const CAP_SYS_ADMIN: u32 = 21;

/// Whether the `CapEff:` line of a `/proc/<pid>/status` text has capability `cap`.
fn has_effective_cap(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

/// Reads a file that may legitimately be absent: `None` when it does not exist, else its
/// trimmed contents or the error.
fn read_optional(path: &str) -> Option<io::Result<String>> {
    match fs::read_to_string(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        r => Some(r.map(|s| s.trim().to_owned())),
    }
}

const DEV_FUSE: &str = "/dev/fuse";

fn dev_fuse() -> Check {
    const NAME: &str = "/dev/fuse";
    match fs::metadata(DEV_FUSE) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Check::problem(
                NAME,
                "missing (in a container, pass it in: --device /dev/fuse)",
                Some("sudo modprobe fuse".to_owned()),
            );
        }
        Err(e) => return Check::problem(NAME, format!("cannot stat: {e}"), None),
        Ok(m) if !m.file_type().is_char_device() => {
            return Check::problem(NAME, "exists but is not a character device", None);
        }
        Ok(_) => {}
    }
    // Opening is harmless: a FUSE connection exists only once the fd is passed to mount(2).
    match OpenOptions::new().read(true).write(true).open(DEV_FUSE) {
        Ok(_) => Check::ok(NAME, "opens read-write"),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Check::problem(
            NAME,
            "cannot open it read-write (permission denied)",
            Some("sudo chmod 0666 /dev/fuse".to_owned()),
        ),
        Err(e) => Check::problem(
            NAME,
            format!("cannot open it read-write: {e}"),
            Some("sudo apt-get install fuse3".to_owned()),
        ),
    }
}

fn fusermount(me: &Caller) -> Check {
    const NAME: &str = "fusermount3";
    let Some(path) = find_program("fusermount3") else {
        return Check::warn(
            NAME,
            "not found; `ovlrun mount` needs it when run unprivileged outside a namespace",
            Some("sudo apt-get install fuse3".to_owned()),
        );
    };
    if me.root || is_privileged_helper(&path) {
        Check::ok(NAME, path.display().to_string())
    } else {
        Check::warn(
            NAME,
            format!(
                "{} is not setuid root, so it cannot mount for users",
                path.display()
            ),
            Some(format!("sudo chmod u+s {}", path.display())),
        )
    }
}

/// A sysctl that can forbid user namespaces, and its fix.
#[derive(Debug)]
struct Sysctl {
    path: &'static str,
    name: &'static str,
    /// The value at which user namespaces are allowed.
    good: Good,
}

#[derive(Clone, Copy, Debug)]
enum Good {
    Positive,
    Exactly(u64),
}

const USERNS_SYSCTLS: [Sysctl; 3] = [
    Sysctl {
        path: "/proc/sys/user/max_user_namespaces",
        name: "user.max_user_namespaces",
        good: Good::Positive,
    },
    // Debian's and older Ubuntu kernels' switch; absent upstream.
    Sysctl {
        path: "/proc/sys/kernel/unprivileged_userns_clone",
        name: "kernel.unprivileged_userns_clone",
        good: Good::Exactly(1),
    },
    // Ubuntu 23.10+: AppArmor allows unprivileged user namespaces only to profiled programs.
    Sysctl {
        path: "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        name: "kernel.apparmor_restrict_unprivileged_userns",
        good: Good::Exactly(0),
    },
];

fn judge_sysctl(sysctl: &Sysctl, value: Result<&str, &io::Error>, me: &Caller) -> Check {
    let value = match value {
        Ok(v) => v,
        Err(e) => {
            return Check::warn(
                sysctl.name,
                format!("cannot read {}: {e}", sysctl.path),
                None,
            );
        }
    };
    let Ok(n) = value.parse::<u64>() else {
        return Check::warn(sysctl.name, format!("unexpected value {value:?}"), None);
    };
    let (fine, wanted) = match sysctl.good {
        Good::Positive => (n > 0, 15000),
        Good::Exactly(want) => (n == want, want),
    };
    let fix = format!("sudo sysctl -w {}={wanted}", sysctl.name);
    if fine {
        Check::ok(sysctl.name, format!("{n}"))
    } else if me.root && !matches!(sysctl.good, Good::Positive) {
        // Both switches restrict only callers without CAP_SYS_ADMIN; max_user_namespaces = 0
        // stops root too.
        Check::warn(
            sysctl.name,
            format!("{n}: root is exempt, other users are refused"),
            Some(fix),
        )
    } else {
        Check::problem(
            sysctl.name,
            format!("{n}: user namespaces are refused"),
            Some(fix),
        )
    }
}

/// Creates a user and a mount namespace in a child, the launcher's first step.
fn try_user_namespace() -> Check {
    const NAME: &str = "user namespace";
    match run_unshare(&["--user", "--map-root-user", "--mount"]) {
        Helper::Missing => Check::warn(
            NAME,
            "cannot try it: util-linux's unshare is not installed",
            Some("sudo apt-get install util-linux".to_owned()),
        ),
        Helper::Succeeded => Check::ok(NAME, "created (unshare --user --map-root-user --mount)"),
        Helper::Failed(why) => Check::problem(
            NAME,
            format!("unshare --user --map-root-user --mount failed: {why}"),
            None,
        ),
    }
}

/// Maps the caller's subordinate ranges through newuidmap/newgidmap, as the launcher does.
fn try_full_id_map() -> Check {
    const NAME: &str = "full id map";
    match run_unshare(&["--user", "--map-auto", "--map-root-user", "--mount"]) {
        Helper::Missing => Check::warn(NAME, "cannot try it: unshare is not installed", None),
        Helper::Succeeded => Check::ok(NAME, "mapped (unshare --map-auto, through newuidmap)"),
        Helper::Failed(why) => Check::warn(
            NAME,
            format!("unshare --map-auto failed, sessions get one id only: {why}"),
            None,
        ),
    }
}

enum Helper {
    Missing,
    Succeeded,
    /// Exit status and the first line of stderr.
    Failed(String),
}

/// Runs `unshare ARGS... unshare --version`: the program run inside is unshare itself, so
/// a failure is the namespace's, never a missing `true` on a strange `$PATH`.
fn run_unshare(args: &[&str]) -> Helper {
    let Some(path) = find_program("unshare") else {
        return Helper::Missing;
    };
    let out = Command::new(&path)
        .args(args)
        .arg(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => return Helper::Failed(format!("cannot run {}: {e}", path.display())),
    };
    if out.status.success() {
        return Helper::Succeeded;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    match stderr.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => Helper::Failed(format!("{} ({line})", out.status)),
        None => Helper::Failed(out.status.to_string()),
    }
}

/// The size of range the launcher wants: every id a distribution tree uses, `nobody`
/// (65534) included.
const FULL_RANGE: u64 = 65536;

/// User or group ids: the two have the same files, helpers and maps, one of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdKind {
    Uid,
    Gid,
}

impl IdKind {
    fn check_name(self) -> &'static str {
        match self {
            IdKind::Uid => "subordinate uids",
            IdKind::Gid => "subordinate gids",
        }
    }

    fn subid_file(self) -> &'static str {
        match self {
            IdKind::Uid => "/etc/subuid",
            IdKind::Gid => "/etc/subgid",
        }
    }

    fn own_map(self) -> &'static str {
        match self {
            IdKind::Uid => "/proc/self/uid_map",
            IdKind::Gid => "/proc/self/gid_map",
        }
    }

    fn usermod_flag(self) -> &'static str {
        match self {
            IdKind::Uid => "--add-subuids",
            IdKind::Gid => "--add-subgids",
        }
    }

    fn helper(self) -> &'static str {
        match self {
            IdKind::Uid => "newuidmap",
            IdKind::Gid => "newgidmap",
        }
    }
}

fn subordinate_ids(me: &Caller, kind: IdKind) -> Check {
    let name = kind.check_name();
    if me.root {
        // Root maps directly, but only ids its own namespace has: in a container that may be
        // a few.
        return match fs::read_to_string(kind.own_map()) {
            Ok(map) => judge_root_map(&map, kind),
            Err(e) => Check::warn(name, format!("cannot read {}: {e}", kind.own_map()), None),
        };
    }
    let path = kind.subid_file();
    let text = match read_optional(path) {
        None => String::new(),
        Some(Ok(text)) => text,
        Some(Err(e)) => return Check::warn(name, format!("cannot read {path}: {e}"), None),
    };
    judge_subids(&text, me, kind)
}

fn judge_root_map(map: &str, kind: IdKind) -> Check {
    let ids = mapped_ids(map);
    if ids >= FULL_RANGE {
        Check::ok(
            kind.check_name(),
            "not needed: root maps a full range itself",
        )
    } else {
        Check::warn(
            kind.check_name(),
            format!(
                "root here is in a user namespace with {ids} {} ({}); sessions get those only",
                if ids == 1 { "id" } else { "ids" },
                kind.own_map()
            ),
            None,
        )
    }
}

/// How many ids a `/proc/<pid>/uid_map` text maps: the sum of its `inside outside count`
/// lines.
fn mapped_ids(map: &str) -> u64 {
    map.lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum()
}

fn judge_subids(text: &str, me: &Caller, kind: IdKind) -> Check {
    let (name, path) = (kind.check_name(), kind.subid_file());
    let mine = ranges_of(text, me.name.as_deref(), me.uid.as_raw());
    let total: u64 = mine.iter().map(|r| r.count).sum();
    let start = next_free_start(text);
    let who = me.login();
    let fix = format!(
        "sudo usermod {} {start}-{} {who}",
        kind.usermod_flag(),
        start + FULL_RANGE - 1
    );
    match mine.first() {
        None => Check::warn(
            name,
            format!("{who} has none in {path}; sessions get one id only (apt, dpkg fail)"),
            Some(fix),
        ),
        Some(_) if total < FULL_RANGE => Check::warn(
            name,
            format!("{who} has {total} in {path}, fewer than {FULL_RANGE}"),
            Some(fix),
        ),
        Some(first) => Check::ok(
            name,
            format!(
                "{}-{} ({total} ids) in {path}",
                first.start,
                first.start + first.count - 1,
            ),
        ),
    }
}

/// One line of `/etc/subuid` or `/etc/subgid`: `owner:start:count`, the owner a login name
/// or a numeric uid. See: subuid(5).
#[derive(Clone, Debug, PartialEq, Eq)]
struct SubIdRange {
    owner: String,
    start: u64,
    count: u64,
}

/// `None` for blank, comment and malformed lines, and for empty ranges.
fn parse_subid_line(line: &str) -> Option<SubIdRange> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut fields = line.split(':');
    let owner = fields.next().filter(|o| !o.is_empty())?;
    let start = fields.next()?.trim().parse().ok()?;
    let count = fields.next()?.trim().parse().ok()?;
    if fields.next().is_some() || count == 0 {
        return None;
    }
    Some(SubIdRange {
        owner: owner.to_owned(),
        start,
        count,
    })
}

/// The ranges granted to the user, by login name or by uid (both forms are valid).
fn ranges_of(text: &str, name: Option<&str>, uid: u32) -> Vec<SubIdRange> {
    let uid = uid.to_string();
    text.lines()
        .filter_map(parse_subid_line)
        .filter(|r| Some(r.owner.as_str()) == name || r.owner == uid)
        .collect()
}

/// The first id past every range in the file, and at least 100000 (useradd's default).
fn next_free_start(text: &str) -> u64 {
    text.lines()
        .filter_map(parse_subid_line)
        .map(|r| r.start.saturating_add(r.count))
        .fold(100_000, u64::max)
}

fn id_map_helper(me: &Caller, program: &'static str) -> Check {
    if me.root {
        return Check::ok(
            program,
            "not needed: root writes uid_map and gid_map itself",
        );
    }
    let fix = Some("sudo apt-get install uidmap".to_owned());
    match find_program(program) {
        None => Check::warn(program, "not found; sessions get one id only", fix),
        Some(path) if is_privileged_helper(&path) => Check::ok(program, path.display().to_string()),
        Some(path) => Check::warn(
            program,
            format!(
                "{} is neither setuid root nor has file capabilities; sessions get one id only",
                path.display()
            ),
            fix,
        ),
    }
}

/// Setuid root (Debian) or carrying file capabilities (Fedora ships newuidmap with
/// `cap_setuid=ep` and no setuid bit).
fn is_privileged_helper(path: &Path) -> bool {
    let setuid_root = fs::metadata(path).is_ok_and(|m| m.mode() & 0o4000 != 0 && m.uid() == 0);
    // `sys::xattr` does not follow a symlink; the helper that runs is the link's target.
    let caps = fs::canonicalize(path).is_ok_and(|p| {
        crate::sys::xattr::get(&p, std::ffi::OsStr::new("security.capability")).is_ok()
    });
    setuid_root || caps
}

/// Searches `$PATH`, then the usual system directories (a user's `$PATH` often lacks sbin).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

fn kernel_overlay() -> Check {
    const NAME: &str = "kernel overlayfs";
    match fs::read_to_string("/proc/filesystems") {
        Ok(text) if has_filesystem(&text, "overlay") => {
            Check::ok(NAME, "available (--fs kernel and --fs auto can use it)")
        }
        Ok(_) => Check::warn(
            NAME,
            "not in /proc/filesystems; sessions use the FUSE overlay",
            Some("sudo modprobe overlay".to_owned()),
        ),
        Err(e) => Check::warn(NAME, format!("cannot read /proc/filesystems: {e}"), None),
    }
}

/// `/proc/filesystems` lines are `[nodev]\t<name>`.
fn has_filesystem(text: &str, name: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().last() == Some(name))
}

/// A kernel release as `uname -r` prints it, compared by its leading numbers only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct KernelVersion {
    major: u32,
    minor: u32,
    patch: u32,
}

impl KernelVersion {
    const fn new(major: u32, minor: u32, patch: u32) -> Self {
        KernelVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses `6.1.0-28-amd64`, `6.9`, `6.9.0-rc1+`, `5.15.167.4-microsoft-standard-WSL2`:
    /// up to three dot-separated numbers, each ending at the first non-digit. The major and
    /// minor numbers are required.
    fn parse(release: &str) -> Option<Self> {
        let mut parts = release.trim().split('.').map(leading_number);
        let major = parts.next()??;
        let minor = parts.next()??;
        let patch = parts.next().flatten().unwrap_or(0);
        Some(KernelVersion::new(major, minor, patch))
    }
}

fn leading_number(s: &str) -> Option<u32> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Linux 5.11 lets a user namespace's root mount overlayfs.
const ROOTLESS_OVERLAY: KernelVersion = KernelVersion::new(5, 11, 0);
/// Linux 6.9 added FUSE passthrough (`FUSE_PASSTHROUGH`, `CONFIG_FUSE_PASSTHROUGH`).
const FUSE_PASSTHROUGH: KernelVersion = KernelVersion::new(6, 9, 0);

fn parse_release(release: Result<&str, &io::Error>) -> Result<KernelVersion, String> {
    let release = release.map_err(|e| format!("cannot read the kernel release: {e}"))?;
    KernelVersion::parse(release).ok_or_else(|| format!("cannot parse kernel release {release:?}"))
}

fn judge_rootless_overlay(release: Result<&str, &io::Error>) -> Check {
    const NAME: &str = "rootless kernel overlayfs";
    match parse_release(release) {
        Err(why) => Check::warn(NAME, why, None),
        Ok(v) if v >= ROOTLESS_OVERLAY => {
            Check::ok(NAME, format!("kernel {v} >= {ROOTLESS_OVERLAY}"))
        }
        Ok(v) => Check::warn(
            NAME,
            format!("kernel {v} < {ROOTLESS_OVERLAY}: unprivileged sessions use the FUSE overlay"),
            None,
        ),
    }
}

fn judge_passthrough(release: Result<&str, &io::Error>, me: &Caller) -> Check {
    const NAME: &str = "FUSE passthrough";
    match parse_release(release) {
        Err(why) => Check::warn(NAME, why, None),
        Ok(v) if v < FUSE_PASSTHROUGH => Check::warn(
            NAME,
            format!("kernel {v} < {FUSE_PASSTHROUGH}: reads and writes go through ovlrun"),
            None,
        ),
        // A kernel built without CONFIG_FUSE_PASSTHROUGH refuses it at open, and ovlrun falls
        // back; the release cannot tell.
        Ok(v) if me.initial_admin => Check::ok(
            NAME,
            format!("kernel {v} >= {FUSE_PASSTHROUGH}; used where the kernel accepts it"),
        ),
        Ok(v) => Check::warn(
            NAME,
            format!(
                "kernel {v} has it, but only a process with CAP_SYS_ADMIN in the initial user \
                 namespace may use it, and this one has not"
            ),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, uid: u32) -> Caller {
        Caller {
            uid: Uid::from_raw(uid),
            name: Some(name.to_owned()),
            root: uid == 0,
            initial_admin: uid == 0,
        }
    }

    #[test]
    fn subid_lines_parse_and_reject_garbage() {
        assert_eq!(
            parse_subid_line("alice:100000:65536"),
            Some(SubIdRange {
                owner: "alice".into(),
                start: 100_000,
                count: 65536
            })
        );
        assert_eq!(
            parse_subid_line("  1000:200000:10 \n"),
            Some(SubIdRange {
                owner: "1000".into(),
                start: 200_000,
                count: 10
            })
        );
        for bad in [
            "",
            "   ",
            "# a comment",
            "alice:100000",
            "alice:x:65536",
            ":1:2",
            "a:1:2:3",
            "a:1:0",
        ] {
            assert_eq!(parse_subid_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ranges_match_by_name_or_uid() {
        let text = "alice:100000:65536\nbob:165536:65536\n1000:300000:5\nalicex:1:1\n";
        let mine = ranges_of(text, Some("alice"), 1000);
        assert_eq!(
            mine.iter().map(|r| r.start).collect::<Vec<_>>(),
            [100_000, 300_000]
        );
        assert!(ranges_of(text, None, 1001).is_empty());
        assert_eq!(ranges_of(text, None, 1000).len(), 1);
    }

    #[test]
    fn next_free_start_is_past_every_range() {
        assert_eq!(next_free_start(""), 100_000);
        assert_eq!(next_free_start("a:100000:65536\nb:10:5\n"), 165_536);
        assert_eq!(next_free_start("a:500000:10\nb:100000:65536\n"), 500_010);
    }

    #[test]
    fn subids_judged_for_the_caller() {
        let alice = user("alice", 1000);
        let ok = judge_subids("alice:100000:65536\n", &alice, IdKind::Uid);
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(ok.detail, "100000-165535 (65536 ids) in /etc/subuid");

        let none = judge_subids("bob:100000:65536\n", &alice, IdKind::Gid);
        assert_eq!(none.status, Status::Warn);
        assert_eq!(
            none.fix.as_deref(),
            Some("sudo usermod --add-subgids 165536-231071 alice")
        );

        let small = judge_subids("1000:100000:1000\n", &alice, IdKind::Uid);
        assert_eq!(small.status, Status::Warn);
    }

    #[test]
    fn root_needs_a_full_map_of_its_own() {
        let host = "         0          0 4294967295\n";
        assert_eq!(mapped_ids(host), 4_294_967_295);
        assert_eq!(judge_root_map(host, IdKind::Uid).status, Status::Ok);
        let container = "0 1000 1\n1 100000 65536\n";
        assert_eq!(mapped_ids(container), 65537);
        let single = "         0       1000          1\n";
        assert_eq!(judge_root_map(single, IdKind::Gid).status, Status::Warn);
    }

    #[test]
    fn kernel_versions_parse() {
        let v = KernelVersion::new;
        assert_eq!(KernelVersion::parse("6.1.0-28-amd64"), Some(v(6, 1, 0)));
        assert_eq!(
            KernelVersion::parse("6.18.44-fc-v657\n"),
            Some(v(6, 18, 44))
        );
        assert_eq!(KernelVersion::parse("6.9"), Some(v(6, 9, 0)));
        assert_eq!(KernelVersion::parse("6.9.0-rc1+"), Some(v(6, 9, 0)));
        assert_eq!(KernelVersion::parse("6.10-rc2"), Some(v(6, 10, 0)));
        assert_eq!(
            KernelVersion::parse("5.15.167.4-microsoft-standard-WSL2"),
            Some(v(5, 15, 167))
        );
        for bad in ["", "6", "linux", "6.x"] {
            assert_eq!(KernelVersion::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn kernel_versions_compare_numerically() {
        let v = KernelVersion::new;
        assert!(v(6, 10, 0) > v(6, 9, 0)); // not string order
        assert!(v(5, 11, 0) > v(5, 10, 200));
        assert!(v(6, 9, 0) >= FUSE_PASSTHROUGH);
        assert!(v(6, 8, 12) < FUSE_PASSTHROUGH);
        assert!(v(5, 10, 0) < ROOTLESS_OVERLAY);
    }

    #[test]
    fn kernel_checks_follow_the_release() {
        let root = user("root", 0);
        let alice = user("alice", 1000);
        assert_eq!(
            judge_rootless_overlay(Ok("5.10.0-28-amd64")).status,
            Status::Warn
        );
        assert_eq!(judge_rootless_overlay(Ok("6.1.0")).status, Status::Ok);
        assert_eq!(judge_passthrough(Ok("6.8.0"), &root).status, Status::Warn);
        assert_eq!(judge_passthrough(Ok("6.9.0"), &root).status, Status::Ok);
        assert_eq!(judge_passthrough(Ok("6.12.0"), &alice).status, Status::Warn);
        assert_eq!(judge_passthrough(Ok("garbage"), &root).status, Status::Warn);
    }

    #[test]
    fn sysctls_judged_for_root_and_users() {
        let [max, clone, apparmor] = &USERNS_SYSCTLS;
        let root = user("root", 0);
        let alice = user("alice", 1000);
        assert_eq!(judge_sysctl(max, Ok("15000"), &alice).status, Status::Ok);
        assert_eq!(judge_sysctl(max, Ok("0"), &root).status, Status::Problem);
        assert_eq!(judge_sysctl(clone, Ok("0"), &alice).status, Status::Problem);
        assert_eq!(judge_sysctl(clone, Ok("0"), &root).status, Status::Warn);
        let denied = judge_sysctl(apparmor, Ok("1"), &alice);
        assert_eq!(denied.status, Status::Problem);
        assert_eq!(
            denied.fix.as_deref(),
            Some("sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")
        );
        assert_eq!(
            judge_sysctl(apparmor, Ok("nonsense"), &alice).status,
            Status::Warn
        );
    }

    #[test]
    fn passthrough_needs_admin_in_the_initial_namespace() {
        assert!(is_initial_user_ns("user:[4026531837]"));
        assert!(!is_initial_user_ns("user:[4026532451]"));
        let status = "Name:\tcat\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        assert!(has_effective_cap(status, CAP_SYS_ADMIN));
        assert!(!has_effective_cap(
            "CapEff:\t0000000000000000\n",
            CAP_SYS_ADMIN
        ));
        assert!(!has_effective_cap(
            "CapPrm:\t000001fffeffffff\n",
            CAP_SYS_ADMIN
        ));
        let container_root = Caller {
            initial_admin: false,
            ..user("root", 0)
        };
        assert_eq!(
            judge_passthrough(Ok("6.12.0"), &container_root).status,
            Status::Warn
        );
    }

    #[test]
    fn filesystems_list_is_matched_by_whole_name() {
        let text = "nodev\tsysfs\n\text4\nnodev\toverlay\nfuseblk\n";
        assert!(has_filesystem(text, "overlay"));
        assert!(has_filesystem(text, "ext4"));
        assert!(!has_filesystem(text, "fuse"));
    }

    #[test]
    fn report_passes_unless_a_problem_and_prints_fixes() {
        let mut report = Report {
            checks: vec![
                Check::ok("a", "fine"),
                Check::warn("b", "slower", Some("do b".into())),
            ],
        };
        assert!(report.passed());
        assert_eq!(
            report.summary(),
            "1 ok, 1 warning, 0 problems: ovlrun can run sessions here"
        );
        report
            .checks
            .push(Check::problem("c", "broken", Some("do c".into())));
        assert!(!report.passed());
        let text = report.to_string();
        assert!(
            text.contains("problem  c: broken\n         fix: do c\n"),
            "{text}"
        );
        assert!(text.ends_with(
            "1 problem: ovlrun cannot run sessions here until the problems are fixed\n"
        ));
    }
}
