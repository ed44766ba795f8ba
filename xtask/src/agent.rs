//! `cargo xtask build`: the host half, lb-agent with the eBPF object embedded.

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::util;

/// Builds lb-agent (release), embedding the eBPF object at `object`.
pub fn build(object: &Path) -> Result<()> {
    let mut cmd = util::host_cargo();
    cmd.args(["build", "--release", "-p", "lb-agent"]).env(util::EBPF_OBJECT_ENV, object);
    util::run(&mut cmd).context("building lb-agent failed")
}
