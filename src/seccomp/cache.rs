//! Compiled programs kept in the state directory, so a session does not pay libseccomp's
//! compile time (about 7 ms for the default profile, most of a session's start) on every
//! start.
//!
//! A program is a pure function of its profile, of how ovlrun compiles it (the source of
//! `seccomp/mod.rs`, hashed in, so a changed compiler never reuses old programs),
//! libseccomp's version, the architecture and the kernel (libseccomp adapts to what the
//! kernel supports): all of them make the key. The
//! file holds a BLAKE3 hash of its content, so a torn or altered file is recompiled, never
//! loaded. The cache is as trusted as the state directory it lives in, whose owner could run
//! unconfined anyway: a file is read only if the caller owns it and no one else may write it.
//! Every failure here means "compile instead"; none is an error of the session.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxSeccomp;

use super::Program;

/// Changes whenever the file format or the way programs are compiled does.
const FORMAT: &str = "ovlrun seccomp cache 1";

/// The kernel accepts at most this many instructions in a program.
const MAX_INSTRUCTIONS: usize = 4096;

/// Programs kept at most: every new build or kernel makes new keys, so old files would pile
/// up; the oldest go when a new one is stored.
const KEPT: usize = 16;

/// Bytes of one instruction and of the flags, as stored.
const INSTRUCTION_BYTES: usize = 8;
const FLAGS_BYTES: usize = 8;

/// The file under `dir` for `profile` on this machine; `None` when the key cannot be made.
pub(crate) fn path(dir: &Path, profile: &LinuxSeccomp) -> Option<PathBuf> {
    let version = libseccomp::ScmpVersion::current().ok()?;
    let kernel = nix::sys::utsname::uname().ok()?;
    let mut key = blake3::Hasher::new();
    key.update(FORMAT.as_bytes());
    key.update(include_str!("mod.rs").as_bytes());
    key.update(
        format!(
            "\n{}.{}.{}\n{:?}\n{}\n",
            version.major,
            version.minor,
            version.micro,
            libseccomp::ScmpArch::native(),
            kernel.release().to_string_lossy()
        )
        .as_bytes(),
    );
    key.update(serde_json::to_string(profile).ok()?.as_bytes());
    Some(dir.join(format!("seccomp-{}.bpf", key.finalize().to_hex())))
}

/// The program stored at `path`, if it is whole, the caller's, and writable by no one else.
pub(crate) fn read(path: &Path) -> Option<Program> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    let max = (32 + FLAGS_BYTES + MAX_INSTRUCTIONS * INSTRUCTION_BYTES) as u64;
    let owned = meta.uid() == nix::unistd::geteuid().as_raw() && meta.mode() & 0o022 == 0;
    if !owned || !meta.is_file() || meta.len() > max {
        return None;
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes).ok()?;
    let (hash, body) = bytes.split_at_checked(32)?;
    if blake3::hash(body).as_bytes() != hash {
        return None;
    }
    decode(body)
}

/// Stores `program` at `path` (made whole under a temporary name, then renamed), creating
/// its directory private to the caller. Failures are ignored: the next start compiles.
pub(crate) fn write(path: &Path, program: &Program) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    if std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .is_err()
    {
        return;
    }
    let body = encode(program);
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(blake3::hash(&body).as_bytes())?;
            f.write_all(&body)
        });
    if written.is_err() || std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
        return;
    }
    prune(dir, path);
}

/// Keeps the [`KEPT`] newest programs in `dir` (`just` among them), and removes temporary
/// files a killed writer left more than an hour ago. Only names this module makes are
/// touched.
fn prune(dir: &Path, just: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = std::time::SystemTime::now();
    let mut programs = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(meta) = e.path().symlink_metadata() else {
            continue;
        };
        let modified = meta.modified().unwrap_or(now);
        if name.starts_with(".seccomp-") && name.ends_with(".tmp") {
            let stale = now
                .duration_since(modified)
                .is_ok_and(|age| age.as_secs() > 3600);
            if stale {
                let _ = std::fs::remove_file(e.path());
            }
        } else if name.starts_with("seccomp-") && name.ends_with(".bpf") && e.path() != just {
            programs.push((modified, e.path()));
        }
    }
    programs.sort();
    let extra = (programs.len() + 1).saturating_sub(KEPT);
    for (_, old) in programs.into_iter().take(extra) {
        let _ = std::fs::remove_file(old);
    }
}

/// Flags, then each instruction, little-endian.
#[allow(clippy::useless_conversion)] // c_ulong is u32 on 32-bit targets
fn encode(program: &Program) -> Vec<u8> {
    let mut out = Vec::with_capacity(FLAGS_BYTES + program.len() * INSTRUCTION_BYTES);
    out.extend_from_slice(&u64::from(program.flags).to_le_bytes());
    for i in &program.instructions {
        out.extend_from_slice(&i.code.to_le_bytes());
        out.extend_from_slice(&[i.jt, i.jf]);
        out.extend_from_slice(&i.k.to_le_bytes());
    }
    out
}

fn decode(body: &[u8]) -> Option<Program> {
    let (flags, code) = body.split_at_checked(FLAGS_BYTES)?;
    let count = code.len() / INSTRUCTION_BYTES;
    if code.len() % INSTRUCTION_BYTES != 0 || count == 0 || count > MAX_INSTRUCTIONS {
        return None;
    }
    let flags = u64::from_le_bytes(flags.try_into().ok()?);
    let instructions = code
        .chunks_exact(INSTRUCTION_BYTES)
        .map(|b| libc::sock_filter {
            code: u16::from_le_bytes([b[0], b[1]]),
            jt: b[2],
            jf: b[3],
            k: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        })
        .collect();
    Some(Program {
        instructions,
        flags: libc::c_ulong::try_from(flags).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A profile refusing `names`.
    fn refusing(names: &[&str]) -> LinuxSeccomp {
        serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": names, "action": "SCMP_ACT_ERRNO"}],
        }))
        .unwrap()
    }

    fn same(a: &Program, b: &Program) -> bool {
        a.flags == b.flags
            && a.instructions.len() == b.instructions.len()
            && a.instructions
                .iter()
                .zip(&b.instructions)
                .all(|(x, y)| (x.code, x.jt, x.jf, x.k) == (y.code, y.jt, y.jf, y.k))
    }

    #[test]
    fn a_stored_program_reads_back_and_an_altered_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let profile = refusing(&["reboot", "kexec_load"]);
        let program = super::super::compile_profile(&profile).unwrap();
        let path = path(&dir.path().join("cache"), &profile).unwrap();
        assert!(read(&path).is_none());
        write(&path, &program);
        assert!(same(&read(&path).unwrap(), &program));
        // Another profile, another file.
        let other = refusing(&["reboot"]);
        assert_ne!(
            super::path(&dir.path().join("cache"), &other).unwrap(),
            path
        );

        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(read(&path).is_none(), "an altered program was read");

        write(&path, &program);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o622)).unwrap();
        assert!(read(&path).is_none(), "a program others may write was read");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read(&path).is_some());
    }

    #[test]
    fn only_the_newest_programs_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let program = super::super::compile_profile(&refusing(&["reboot"])).unwrap();
        std::fs::create_dir_all(&cache).unwrap();
        // Files of others' naming stay whatever happens.
        std::fs::write(cache.join("notes.txt"), "mine").unwrap();
        let mut paths = Vec::new();
        for n in 0..KEPT + 3 {
            let p = cache.join(format!("seccomp-{n:04}.bpf"));
            write(&p, &program);
            // Distinct, increasing modification times, whatever the clock's grain.
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(n as u64);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
            paths.push(p);
        }
        let kept: Vec<_> = paths.iter().filter(|p| p.exists()).collect();
        assert_eq!(kept.len(), KEPT, "{kept:?}");
        assert!(!paths[0].exists() && !paths[1].exists() && paths[KEPT + 2].exists());
        assert!(cache.join("notes.txt").exists());
    }
}
