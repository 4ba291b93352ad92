//! FUSE passthrough on `ovlrun mount` as root: the kernel reads and writes the layer files
//! itself. Whether it really does is read from the server's own I/O counters
//! (`/proc/PID/io`): data the server handles shows there, data passed through does not.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};

use nix::errno::Errno;

use crate::support::{self, OneLower, OrPanic, OvlrunMount, read_string, write};

/// Size of the data each check moves: far above what the server's own requests add.
const DATA: usize = 32 << 20;

/// `ovlrun mount --passthrough files` of the fixture.
fn mount(fx: &OneLower, files: &'static str) -> OvlrunMount {
    OvlrunMount::start(&fx.args().passthrough(files))
}

/// Bytes the server process has read and written through syscalls so far (its requests from
/// /dev/fuse included).
fn server_io(m: &OvlrunMount) -> u64 {
    let path = format!("/proc/{}/io", m.pid());
    let text = fs::read_to_string(&path).or_panic("read", &path);
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            matches!(k, "rchar" | "wchar").then(|| v.trim().parse::<u64>().ok())?
        })
        .sum()
}

/// Writes [`DATA`] bytes to a new file and reads them back; returns the server's I/O meanwhile.
fn write_and_read_back(fx: &OneLower, m: &OvlrunMount) -> u64 {
    let before = server_io(m);
    let path = fx.mnt.join("new");
    let data: Vec<u8> = (0..DATA).map(|i| (i % 251) as u8).collect();
    let mut f = File::create(&path).or_panic("create", &path);
    f.write_all(&data).or_panic("write", &path);
    f.sync_all().or_panic("fsync", &path);
    drop(f);
    let back = fs::read(&path).or_panic("read", &path);
    assert!(
        back == data,
        "{} reads back what was written",
        path.display()
    );
    server_io(m) - before
}

macro_rules! root_mount_test {
    () => {
        require!(support::can_mount_fuse(), "mount FUSE (/dev/fuse)");
        require!(
            nix::unistd::geteuid().is_root(),
            "run as root (passthrough needs CAP_SYS_ADMIN)"
        );
        support::private_mount_ns();
    };
}

#[test]
fn upper_files_bypass_the_server_and_off_keeps_them_in_it() {
    root_mount_test!();
    let fx = OneLower::new();
    let through = write_and_read_back(&fx, &mount(&fx, "upper"));
    assert!(
        through < (DATA / 4) as u64,
        "with --passthrough upper the server moved {through} bytes for {DATA} written and read"
    );
    fs::remove_file(fx.upper.join("new")).unwrap();
    let served = write_and_read_back(&fx, &mount(&fx, "off"));
    assert!(
        served >= DATA as u64,
        "with --passthrough off the server moved only {served} bytes for {DATA} written"
    );
}

#[test]
fn upper_mode_reads_lower_files_in_the_server_and_lets_writers_in() {
    root_mount_test!();
    let fx = OneLower::new();
    write(fx.lower.join("f"), "lower");
    let m = mount(&fx, "upper");
    let path = fx.mnt.join("f");
    let mut reader = File::open(&path).or_panic("open", &path);
    let mut writer = OpenOptions::new()
        .append(true)
        .open(&path)
        .or_panic("open for appending while open for reading", &path);
    writer.write_all(b"+more").or_panic("append", &path);
    drop(writer);
    let mut seen = String::new();
    reader.read_to_string(&mut seen).or_panic("read", &path);
    assert_eq!(seen, "lower+more", "the reader follows the copy-up");
    drop(m);
    assert_eq!(read_string(fx.lower.join("f")), "lower", "lower untouched");
}

#[test]
fn all_mode_passes_lower_reads_through_and_refuses_writers_meanwhile() {
    root_mount_test!();
    let fx = OneLower::new();
    let data: Vec<u8> = (0..DATA).map(|i| (i % 241) as u8).collect();
    write(fx.lower.join("big"), &data);
    write(fx.lower.join("f"), "lower");
    let m = mount(&fx, "all");

    let before = server_io(&m);
    let back = fs::read(fx.mnt.join("big")).or_panic("read", fx.mnt.join("big"));
    let moved = server_io(&m) - before;
    assert!(back == data, "the lower file reads whole");
    assert!(
        moved < (DATA / 4) as u64,
        "a lower read passed through still moved {moved} bytes through the server"
    );

    let path = fx.mnt.join("f");
    let mut reader = File::open(&path).or_panic("open", &path);
    let refused = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| e.raw_os_error());
    assert_eq!(
        refused.err(),
        Some(Some(Errno::ETXTBSY as i32)),
        "opening for writing while a lower copy backs a reader"
    );
    let truncated = nix::unistd::truncate(&path, 0);
    assert_eq!(truncated, Err(Errno::ETXTBSY), "truncate meanwhile");
    let mut seen = String::new();
    reader.read_to_string(&mut seen).or_panic("read", &path);
    assert_eq!(seen, "lower");
    drop(reader);

    let mut writer = OpenOptions::new()
        .append(true)
        .open(&path)
        .or_panic("open for appending once the reader closed", &path);
    writer.write_all(b"+more").or_panic("append", &path);
    drop(writer);
    assert_eq!(read_string(&path), "lower+more");
    drop(m);
    assert_eq!(read_string(fx.upper.join("f")), "lower+more");
    assert_eq!(read_string(fx.lower.join("f")), "lower", "lower untouched");
}
