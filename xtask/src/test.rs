//! `cargo xtask test`: the one command that runs every test.

use std::{ffi::OsString, process::ExitCode};

use anyhow::Result;
use clap::Args;

use crate::{ebpf, setup, util};

/// Options for `cargo xtask test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Extra arguments for `cargo test`, after `--`
    /// (e.g. `cargo xtask test -- -p lb-lab -- --nocapture`).
    #[arg(last = true)]
    pub cargo_args: Vec<OsString>,
}

/// Sets up the machine, builds the eBPF object and runs
/// `cargo test --workspace --release`, returning its exit status.
pub fn run(args: &TestArgs) -> Result<ExitCode> {
    util::require_root("test")?;
    setup::setup_toolchain()?;
    setup::setup_host()?;
    let object = ebpf::build()?;
    let mut cmd = util::host_cargo();
    cmd.args(["test", "--workspace", "--release"])
        .args(&args.cargo_args)
        .env(util::EBPF_OBJECT_ENV, &object);
    let status = util::status(&mut cmd)?;
    if !status.success() {
        eprintln!("error: `{}` failed ({status})", util::describe(&cmd));
    }
    Ok(util::exit_code(status))
}
