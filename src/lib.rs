//! ovlrun: run a command in a private, writable, copy-on-write view of a root filesystem.
//!
//! Module map (see DESIGN.md for the whole architecture):
//! - `layers`: overlay semantics on real directories (lookup, merged readdir, copy-up,
//!   whiteouts, rename). Plain Rust over directory fds; every overlay rule lives there.
//! - `fs`: the FUSE adapter: node ids, handles, replies, kernel caching. No overlay rule.
//! - [`mount`]: the overlay builder and the mount handle, the library's front door.
//! - [`config`]: the validated [`config::SessionPlan`] a session runs from.
//! - `host`: what the machine offers: id ranges, helpers, kernel features, cgroups.
//! - `sandbox`: namespaces, mounts, pid 1: runs a plan over an overlay of its rootfs.
//! - `seccomp`: OCI seccomp profiles compiled to BPF (below `config` and `sandbox`).
//! - [`policy`]: what becomes of a session's changes: diff, commit, commit-atomic.
//! - [`session`]: session ids and state directories.
//! - [`runtime`]: runc's command line (create, start, state, kill, delete, ...) over the
//!   launcher, for container managers.
//! - `sys`: the few raw system calls nix lacks; the only `unsafe` in the crate.

#![warn(unreachable_pub)]

pub(crate) mod cgroups;
pub mod config;
pub mod doctor;
pub(crate) mod fs;
pub(crate) mod host;
pub(crate) mod layers;
pub mod mount;
pub mod policy;
pub mod runtime;
pub(crate) mod sandbox;
pub(crate) mod seccomp;
pub mod session;
#[allow(unsafe_code)]
pub(crate) mod sys;

/// `e` and its causes on one line, `: `-separated, as `{:#}` shows an `anyhow::Error`: how
/// the binary, and the launcher's children that have no caller to return to, print an error.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}
