//! `ovlrun doctor`: checks what the launcher needs on this machine, for the user running it,
//! and names the command that fixes each missing piece.
//!
//! It reads system state and runs util-linux's `unshare` to try a user namespace for real (a
//! separate process, so this process never changes namespace and the crate needs no `fork`
//! here). It changes nothing, and it does not decide how the launcher copes with what is
//! missing (that is `sandbox`'s fallback): it only reports. Printing and the exit code are the
//! binary's; [`Report`] implements `Display`.
//!
//! Each check is a small function: the reading of `/proc`, `/etc` or `$PATH` is
//! `host`'s, the same probes the launcher and the config use, so what doctor says
//! is what a session gets; the judging here is unit-tested on plain values.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::host::ids::{self, IdKind, User};
use crate::host::kernel::{self, FUSE_PASSTHROUGH, KernelVersion, ROOTLESS_OVERLAY};
use crate::host::programs::{self, Helper};

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
    let kernel = kernel::release();
    let kernel = kernel.as_deref();
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
    let search = programs::search_path();
    let helper = |kind: IdKind| judge_id_helper(&me, kind, Helper::find_in(kind.helper(), &search));
    let (uidmap, gidmap) = (helper(IdKind::Uid), helper(IdKind::Gid));
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

/// `doctor --rootfs DIR`: whether the caller's id map covers the tree's owner.
#[must_use]
pub fn rootfs(dir: &Path) -> Check {
    use std::os::unix::fs::MetadataExt;
    const NAME: &str = "rootfs owner";
    let owner = match fs::metadata(dir) {
        Ok(m) => m.uid(),
        Err(e) => return Check::problem(NAME, format!("{}: {e}", dir.display()), None),
    };
    judge_rootfs_owner(dir, owner, &ids::choose())
}

fn judge_rootfs_owner(dir: &Path, owner: u32, map: &ids::IdMap) -> Check {
    const NAME: &str = "rootfs owner";
    if map.maps_host_uid(owner) {
        return Check::ok(
            NAME,
            format!(
                "{} belongs to uid {owner}, which sessions map",
                dir.display()
            ),
        );
    }
    Check::warn(
        NAME,
        format!(
            "{} belongs to uid {owner}, which your user namespace does not map: its files show \
             as nobody, and root in a session cannot open those only their owner may",
            dir.display()
        ),
        Some(ids::UNMAPPED_TREE_FIX.to_owned()),
    )
}

/// Who runs the checks: what they need differs for root.
#[derive(Clone, Debug)]
struct Caller {
    user: User,
    root: bool,
    /// Holds `CAP_SYS_ADMIN` in the initial user namespace: what FUSE passthrough needs.
    /// Root in a container's user namespace, or with capabilities dropped, does not.
    initial_admin: bool,
}

impl Caller {
    fn current() -> Self {
        let user = User::current();
        Caller {
            root: user.is_root(),
            user,
            initial_admin: kernel::initial_admin(),
        }
    }

    /// The name to put in a fix command.
    fn login(&self) -> String {
        self.user.name.clone().unwrap_or_else(|| "$USER".to_owned())
    }
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
    let Some(path) = programs::find("fusermount3") else {
        return Check::warn(
            NAME,
            "not found; `ovlrun mount` needs it when run unprivileged outside a namespace",
            Some("sudo apt-get install fuse3".to_owned()),
        );
    };
    if me.root || programs::is_privileged(&path) {
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
        Tried::Missing => Check::warn(
            NAME,
            "cannot try it: util-linux's unshare is not installed",
            Some("sudo apt-get install util-linux".to_owned()),
        ),
        Tried::Succeeded => Check::ok(NAME, "created (unshare --user --map-root-user --mount)"),
        Tried::Failed(why) => Check::problem(
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
        Tried::Missing => Check::warn(NAME, "cannot try it: unshare is not installed", None),
        Tried::Succeeded => Check::ok(NAME, "mapped (unshare --map-auto, through newuidmap)"),
        Tried::Failed(why) => Check::warn(
            NAME,
            format!("unshare --map-auto failed, sessions get one id only: {why}"),
            None,
        ),
    }
}

enum Tried {
    Missing,
    Succeeded,
    /// Exit status and the first line of stderr.
    Failed(String),
}

/// Runs `unshare ARGS... unshare --version`: the program run inside is unshare itself, so
/// a failure is the namespace's, never a missing `true` on a strange `$PATH`.
fn run_unshare(args: &[&str]) -> Tried {
    let Some(path) = programs::find("unshare") else {
        return Tried::Missing;
    };
    let out = Command::new(&path)
        .args(args)
        .arg(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => return Tried::Failed(format!("cannot run {}: {e}", path.display())),
    };
    if out.status.success() {
        return Tried::Succeeded;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    match stderr.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => Tried::Failed(format!("{} ({line})", out.status)),
        None => Tried::Failed(out.status.to_string()),
    }
}

/// The size of range the launcher wants: every id a distribution tree uses, `nobody`
/// (65534) included.
const FULL_RANGE: u64 = 65536;

fn check_name(kind: IdKind) -> &'static str {
    match kind {
        IdKind::Uid => "subordinate uids",
        IdKind::Gid => "subordinate gids",
    }
}

fn usermod_flag(kind: IdKind) -> &'static str {
    match kind {
        IdKind::Uid => "--add-subuids",
        IdKind::Gid => "--add-subgids",
    }
}

fn subordinate_ids(me: &Caller, kind: IdKind) -> Check {
    let name = check_name(kind);
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
    let ids = ids::mapped_ids(map);
    if ids >= FULL_RANGE {
        Check::ok(
            check_name(kind),
            "not needed: root maps a full range itself",
        )
    } else {
        Check::warn(
            check_name(kind),
            format!(
                "root here is in a user namespace with {ids} {} ({}); sessions get those only",
                if ids == 1 { "id" } else { "ids" },
                kind.own_map()
            ),
            None,
        )
    }
}

fn judge_subids(text: &str, me: &Caller, kind: IdKind) -> Check {
    let (name, path) = (check_name(kind), kind.subid_file());
    let mine = ids::ranges_of(text, &me.user);
    let total: u64 = mine.iter().map(|r| u64::from(r.count)).sum();
    let start = ids::next_free_start(text);
    let who = me.login();
    let fix = format!(
        "sudo usermod {} {start}-{} {who}",
        usermod_flag(kind),
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
                u64::from(first.start) + u64::from(first.count) - 1,
            ),
        ),
    }
}

/// Judges a map helper as [`crate::host::ids::MapHelpers`] does: sessions get the full map
/// only when both are [`Helper::Ready`].
fn judge_id_helper(me: &Caller, kind: IdKind, found: Helper) -> Check {
    let program = kind.helper();
    if me.root {
        return Check::ok(
            program,
            "not needed: root writes uid_map and gid_map itself",
        );
    }
    let fix = Some("sudo apt-get install uidmap".to_owned());
    match found {
        Helper::Missing => Check::warn(program, "not found; sessions get one id only", fix),
        Helper::Ready(path) => Check::ok(program, path.display().to_string()),
        Helper::Unprivileged(path) => Check::warn(
            program,
            format!(
                "{} is neither setuid root nor has file capabilities; sessions get one id only",
                path.display()
            ),
            fix,
        ),
    }
}

fn kernel_overlay() -> Check {
    const NAME: &str = "kernel overlayfs";
    match kernel::filesystems() {
        Ok(text) if kernel::has_filesystem(&text, "overlay") => {
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
        // Nothing a user can change: the kernel keeps passthrough for the initial namespace's
        // admin, and sessions, which run in a user namespace, never get it, even as root.
        Ok(_) if !me.root => Check::ok(
            NAME,
            "not for unprivileged users (a kernel rule): the FUSE backend uses the page \
             cache with writeback instead",
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
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn user(name: &str, uid: u32) -> Caller {
        Caller {
            user: User {
                uid,
                gid: uid,
                name: Some(name.to_owned()),
            },
            root: uid == 0,
            initial_admin: uid == 0,
        }
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
        assert_eq!(judge_root_map(host, IdKind::Uid).status, Status::Ok);
        let single = "         0       1000          1\n";
        assert_eq!(judge_root_map(single, IdKind::Gid).status, Status::Warn);
    }

    /// One fake `/etc/subuid` and one directory of helpers: doctor's verdict and the
    /// launcher's map come from the same probe, so they name the same range and helper, and
    /// fall back together when the helper cannot be used.
    #[test]
    fn doctor_and_launcher_agree_on_range_and_helpers() {
        let alice = user("alice", 1000);
        let subids = "bob:100000:65536\nalice:165536:65536\n1000:300000:65536\n";
        let dir = tempfile::tempdir().unwrap();
        let mut helpers = Vec::new();
        for kind in [IdKind::Uid, IdKind::Gid] {
            let path = dir.path().join(kind.helper());
            fs::write(&path, "#!/bin/sh\n").unwrap();
            helpers.push(path);
        }
        let search = dir.path().as_os_str();
        // Setuid root only where the test runs as root; elsewhere both must fall back.
        for mode in [0o755, 0o4755] {
            for path in &helpers {
                fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
            }
            let launcher = ids::choose_for(
                &alice.user,
                subids,
                subids,
                ids::MapHelpers::find_in(search),
            );
            let doctor: Vec<Check> = [IdKind::Uid, IdKind::Gid]
                .into_iter()
                .flat_map(|kind| {
                    [
                        judge_subids(subids, &alice, kind),
                        judge_id_helper(&alice, kind, Helper::find_in(kind.helper(), search)),
                    ]
                })
                .collect();
            let doctor_ok = doctor.iter().all(|c| c.status == Status::Ok);
            assert_eq!(
                doctor_ok,
                matches!(launcher, ids::IdMap::Sub { .. }),
                "mode {mode:o}: {launcher:?} but doctor says {doctor:#?}"
            );
            assert_eq!(
                doctor[0].detail,
                "165536-231071 (131072 ids) in /etc/subuid"
            );
            match &launcher {
                ids::IdMap::Sub {
                    uids,
                    gids,
                    helpers: found,
                    ..
                } => {
                    assert_eq!((uids.start, gids.start), (165_536, 165_536));
                    assert_eq!(doctor[1].detail, found.newuidmap.display().to_string());
                    assert_eq!(doctor[3].detail, found.newgidmap.display().to_string());
                    assert_eq!(found.newuidmap, helpers[0]);
                }
                ids::IdMap::Single { .. } => {
                    assert!(doctor[1].detail.contains("one id only"), "{doctor:#?}");
                }
                ids::IdMap::Identity => panic!("alice is not root"),
            }
            let root = nix::unistd::geteuid().is_root();
            assert_eq!(doctor_ok, root && mode == 0o4755, "mode {mode:o}");
        }
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
        // A user can do nothing about it: said, not warned.
        assert_eq!(judge_passthrough(Ok("6.12.0"), &alice).status, Status::Ok);
        assert_eq!(judge_passthrough(Ok("6.8.0"), &alice).status, Status::Warn);
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
