//! What this machine offers its caller, read in one place so `config`, `sandbox` and
//! `doctor` see the same host: subordinate id ranges and the id map they allow ([`ids`]),
//! the setuid helpers and how they are found ([`programs`]), the kernel's features and the
//! caller's capabilities ([`kernel`]), the cgroup layout ([`cgroup`]).
//!
//! Each probe reads in a thin function and judges plain values (a file's text, a search
//! path) in another, so the judging is tested without this host.

pub(crate) mod cgroup;
pub(crate) mod ids;
pub(crate) mod kernel;
pub(crate) mod process;
pub(crate) mod programs;
