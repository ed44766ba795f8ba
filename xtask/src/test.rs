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

/// Sets up the machine, runs the lint gate, builds the eBPF object and
/// runs `cargo test --workspace --release`, returning its exit status.
pub fn run(args: &TestArgs) -> Result<ExitCode> {
    util::require_root("test")?;
    setup::setup_toolchain()?;
    setup::setup_host()?;
    lint()?;
    let object = ebpf::build()?;
    let mut cmd = util::host_cargo();
    cmd.args(["test", "--workspace", "--release"]).args(&args.cargo_args).env(util::EBPF_OBJECT_ENV, &object);
    let status = util::status(&mut cmd)?;
    if !status.success() {
        eprintln!("error: `{}` failed ({status})", util::describe(&cmd));
    }
    Ok(util::exit_code(status))
}

/// The gate before any test: `cargo fmt --check` and
/// `cargo clippy --all-targets -D warnings` on the host workspace and on
/// lb-ebpf. Host clippy runs on the empty stub object (see
/// lb-agent/build.rs), so it needs no eBPF build.
pub fn lint() -> Result<()> {
    util::run(util::host_cargo().args(["fmt", "--all", "--check"]))
        .map_err(|e| e.context("the host crates are not formatted: run `cargo fmt --all`"))?;
    util::run(util::host_cargo().args(["clippy", "--workspace", "--all-targets", "--release", "--", "-D", "warnings"]))
        .map_err(|e| e.context("clippy found problems in the host crates"))?;
    ebpf::lint()
}
