//! `cargo xtask demo`: not written yet.

use anyhow::{Result, bail};
use clap::Args;

/// Options for `cargo xtask demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {}

/// Runs the demo; setup and `build` have already run.
pub fn run(_args: &DemoArgs) -> Result<()> {
    bail!("demo not implemented yet")
}
