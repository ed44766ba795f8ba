//! `cargo xtask bench`: not written yet.

use anyhow::{Result, bail};
use clap::Args;

/// Options for `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A short run, for checking that the benchmark works.
    #[arg(long)]
    pub quick: bool,
}

/// Runs the benchmark; setup and `build` have already run.
pub fn run(_args: &BenchArgs) -> Result<()> {
    bail!("bench not implemented yet")
}
