//! The page-cache fill at open: a small lower file's data reaches the kernel with its first
//! open, and never lands over data written or truncated after it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use crate::support::{self, OneLower, OrPanic, OvlrunMount, read_string, write};

/// ovlrun's `PREFILL_MAX`: the largest file filled at open.
const PREFILL_MAX: usize = 128 * 1024;

macro_rules! fuse_test {
    () => {
        require!(support::can_mount_fuse(), "mount FUSE (/dev/fuse)");
        support::private_mount_ns();
    };
}

/// Bytes of `path` in the page cache, as fincore(1) counts them. fincore opens the file
/// read-only and reads nothing.
fn cached_bytes(path: &Path) -> u64 {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .or_panic("run fincore on", path);
    assert!(
        out.status.success(),
        "fincore {}: {:?}",
        path.display(),
        out
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("fincore {} printed {text:?}", path.display()))
}

#[test]
fn a_small_lower_file_is_cached_by_its_first_open_and_a_large_one_is_not() {
    fuse_test!();
    let fx = OneLower::new();
    fs::write(fx.lower.join("small"), vec![7u8; 10_000]).unwrap();
    fs::write(fx.lower.join("large"), vec![7u8; PREFILL_MAX + 1]).unwrap();
    fs::write(fx.lower.join("empty"), b"").unwrap();
    let m = OvlrunMount::start(&fx.args());
    let small = cached_bytes(&m.join("small"));
    assert!(
        small >= 10_000,
        "opening a 10,000-byte lower file left {small} bytes of it in the page cache"
    );
    assert_eq!(
        cached_bytes(&m.join("large")),
        0,
        "a large file is read on demand"
    );
    assert_eq!(cached_bytes(&m.join("empty")), 0);
    assert_eq!(fs::read(m.join("small")).unwrap(), vec![7u8; 10_000]);
}

#[test]
fn truncates_and_writes_after_a_filled_open_are_what_every_reader_sees() {
    fuse_test!();
    let fx = OneLower::new();
    write(fx.lower.join("f"), "lower data");
    let m = OvlrunMount::start(&fx.args());
    let path = m.join("f");
    let mut reader = File::open(&path).or_panic("open", &path);
    assert!(cached_bytes(&path) > 0, "the first open filled the cache");
    OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(3))
        .or_panic("truncate", &path);
    let mut seen = String::new();
    reader.read_to_string(&mut seen).unwrap();
    assert_eq!(seen, "low", "the filled reader after the truncate");
    let mut writer = OpenOptions::new().append(true).open(&path).unwrap();
    writer.write_all(b"X").unwrap();
    drop(writer);
    seen.clear();
    reader.seek(SeekFrom::Start(0)).unwrap();
    reader.read_to_string(&mut seen).unwrap();
    assert_eq!(seen, "lowX", "the filled reader after an append");
    assert_eq!(read_string(&path), "lowX", "a new open");
    drop((reader, m));
    assert_eq!(read_string(fx.upper.join("f")), "lowX", "the upper");
}

/// A first open for reading stops between reading the lower data and storing it (a debug
/// knob of the server); meanwhile the file is rewritten. The rewrite must wait for the fill,
/// or the fill would put the old data back over it. The new data has the old size: a size
/// change alone would make the kernel drop its cache.
#[test]
fn a_fill_racing_a_rewrite_never_brings_the_old_data_back() {
    fuse_test!();
    if !cfg!(debug_assertions) {
        eprintln!("skipped: the server's fill delay exists in debug builds only");
        return;
    }
    let fx = OneLower::new();
    write(fx.lower.join("f"), "old ".repeat(1000));
    let args = fx.args().env("OVLRUN_DEBUG_FILL_DELAY_MS", "500");
    let m = OvlrunMount::start(&args);
    let path = m.join("f");
    let started = std::time::Instant::now();
    let reader = {
        let path = path.clone();
        std::thread::spawn(move || File::open(&path).or_panic("open", &path))
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    fs::write(&path, "new ".repeat(1000)).or_panic("rewrite", &path);
    let reader = reader.join().unwrap();
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(500),
        "the reader's open was held by the fill delay"
    );
    assert_eq!(
        read_string(&path),
        "new ".repeat(1000),
        "a new open after the race"
    );
    let mut seen = String::new();
    (&reader).read_to_string(&mut seen).unwrap();
    assert_eq!(seen, "new ".repeat(1000), "the racing reader");
}
