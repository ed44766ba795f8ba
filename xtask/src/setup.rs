//! `cargo xtask setup`: idempotent machine preparation. Every step prints one
//! line when it does something and nothing when it is already done.

pub mod host;
mod toolchain;

use anyhow::{Context as _, Result};

/// Nightly with rust-src, and bpf-linker: what building lb-ebpf needs.
pub fn setup_toolchain() -> Result<()> {
    toolchain::ensure().context("toolchain setup failed")
}

/// Host tools, bpffs and a cgroup2 mount: what tests, demo and bench need.
/// The cgroup2 path is available from [`host::cgroup2_mount`].
pub fn setup_host() -> Result<()> {
    host::ensure().context("host setup failed")
}
