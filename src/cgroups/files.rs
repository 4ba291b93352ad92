//! Reading and writing cgroup control files, each failure naming the file.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::CgroupError;

/// Writes `value` to the existing control file `dir/name` (one `write`, as the kernel wants;
/// never creates it: a missing file means the controller or feature is absent).
pub(super) fn write(dir: &Path, name: &str, value: &str) -> Result<(), CgroupError> {
    let file = dir.join(name);
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&file)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            file,
            value: value.to_owned(),
            source,
        })
}

/// The text of the control file `dir/name`.
pub(super) fn read(dir: &Path, name: &str) -> Result<String, CgroupError> {
    let file = dir.join(name);
    fs::read_to_string(&file).map_err(|source| CgroupError::Read { file, source })
}

/// The pids listed in `dir/cgroup.procs`.
pub(super) fn procs(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let text = read(dir, "cgroup.procs")?;
    text.lines()
        .map(|l| {
            l.trim().parse().map_err(|_| CgroupError::Parse {
                file: dir.join("cgroup.procs"),
                content: l.to_owned(),
            })
        })
        .collect()
}

/// `dir` and every directory below it, deepest first (the order `rmdir` needs).
pub(super) fn subtree_deepest_first(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        found.push(d);
    }
    // Every directory was found after its parent.
    found.reverse();
    found
}
