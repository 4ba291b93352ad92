//! Mounts a copy-on-write overlay with the library's builder, writes through it, and shows
//! that the change landed in the upper while the lower stayed as it was.
//!
//! ```text
//! cargo run --example mount_overlay -- [LOWER] [SCRATCH]
//! ```
//!
//! LOWER defaults to `examples/rootfs`; the upper and the mount point are made in SCRATCH
//! (default: a new directory in the temp dir, removed at the end). Needs root, or a user
//! namespace that owns its mount namespace, and `/dev/fuse`.

use std::error::Error;
use std::fs;
use std::path::PathBuf;

use ovlrun::mount::OverlayBuilder;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let lower = args
        .next()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rootfs")));
    let (scratch, made) = match args.next() {
        Some(dir) => (dir, false),
        None => {
            let dir = std::env::temp_dir().join(format!("ovlrun-example-{}", std::process::id()));
            (dir, true)
        }
    };
    let (upper, mountpoint) = (scratch.join("upper"), scratch.join("mnt"));
    fs::create_dir_all(&upper)?;
    fs::create_dir_all(&mountpoint)?;

    let mount = OverlayBuilder::new()
        .lower(&lower)
        .upper(&upper)
        .mount(&mountpoint)?;
    let hostname = fs::read_to_string(mountpoint.join("etc/hostname"))?;
    println!(
        "read through the overlay: etc/hostname = {}",
        hostname.trim()
    );
    fs::write(mountpoint.join("etc/hostname"), "changed\n")?;
    println!("wrote through the overlay: etc/hostname = changed");
    // Dropping the handle unmounts too; unmount() reports a failure instead.
    mount.unmount()?;

    let in_upper = fs::read_to_string(upper.join("etc/hostname"))?;
    let in_lower = fs::read_to_string(lower.join("etc/hostname"))?;
    println!("upper: etc/hostname = {}", in_upper.trim());
    println!("lower: etc/hostname = {}", in_lower.trim());
    if made {
        fs::remove_dir_all(&scratch)?;
    }
    Ok(())
}
