//! The one integration test crate (ripgrep's shape): every test gets its own directory under
//! `CARGO_TARGET_TMPDIR`, mounts only inside the test thread's private mount namespace, and
//! panics with the path, the operation and the errno when something fails.
//!
//! Modules:
//! - `support`: `TestDir`, `require!`, mount guards (`OvlrunMount`, `KernelOverlay`),
//!   `tree_snapshot`, fs helpers that panic with context, and processes under a time limit
//!   (`Out`, `Bg`, `run_within`).
//! - `mount_ops`: every filesystem operation through a real `ovlrun mount`.
//! - `differential`: random operation sequences applied to ovlrun and to the kernel overlayfs
//!   over the same lower; errno per step and the final merged tree must agree.
//! - `compat`: uppers written by ovlrun read by the kernel overlayfs and the reverse; AUFS
//!   lowers read by ovlrun.
//! - `cli`: the command line as bwrap and podman users type it: the command after the options,
//!   usage errors, environment flags, `--timeout`.
//! - `escape`: a hostile session's attempts to get out (issue 13), as root and as the
//!   unprivileged user; `support::session` holds its caller-parametric session fixture.
//! - `durable`: which sessions fsync or sync their upper, and an upper lost before its sync.
//! - `runtime_cli`: ovlrun as an OCI runtime (runc's verbs) driven by hand, against runc.
//! - `examples`: the library's `examples/*.rs`, built and run over a copy of `examples/rootfs`.
//! - `runtime`: podman (root and rootless) and containerd with ovlrun as their OCI runtime
//!   (issue 15); `OVLRUN_RUNTIME=runc` runs them against the system runc. `support::runtime`
//!   holds the managers' fixtures.

// Test code: a failed unwrap is a failed test, which is what we want (clippy.toml means the
// same, but does not reach helper functions outside `#[test]` items).
#![allow(clippy::unwrap_used)]

#[macro_use]
mod support;

mod cli;
mod compat;
mod config;
mod crash;
mod differential;
mod durable;
mod escape;
mod examples;
mod integrity;
mod launcher;
mod metacopy;
mod mount_ops;
mod names;
mod passthrough;
mod policy;
mod prefill;
mod realtree;
mod runtime;
mod runtime_cli;
