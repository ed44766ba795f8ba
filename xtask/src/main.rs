//! `cargo xtask <command>`: set up the machine, build, test and run lb.

mod agent;
mod bench;
mod demo;
mod ebpf;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test and run helpers for lb")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make this Debian machine (as root) ready: nightly with rust-src,
    /// bpf-linker, host tools (ip, bpftool, nft, iptables, sysctl), bpffs.
    /// Prints nothing when everything is already in place.
    Setup,
    /// Build the eBPF object from lb-ebpf and print its path.
    BuildEbpf,
    /// Build the eBPF object, then the lb-agent binary (release) embedding it.
    Build,
    /// Run every test: setup, build the eBPF object, then
    /// `cargo test --workspace --release` (needs root).
    Test(test::TestArgs),
    /// The lint gate that `test` runs first: rustfmt --check and clippy
    /// -D warnings on the host crates and on lb-ebpf.
    Lint,
    /// Set up, build, then run the demo (needs root).
    Demo(demo::DemoArgs),
    /// Set up, build, then run the benchmark (needs root).
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Cmd) -> Result<ExitCode> {
    match command {
        Cmd::Setup => {
            setup::setup_toolchain()?;
            setup::setup_host()?;
        }
        Cmd::BuildEbpf => {
            setup::setup_toolchain()?;
            println!("{}", ebpf::build()?.display());
        }
        Cmd::Build => {
            setup::setup_toolchain()?;
            agent::build(&ebpf::build()?)?;
        }
        Cmd::Test(args) => return test::run(&args),
        Cmd::Lint => {
            setup::setup_toolchain()?;
            test::lint()?;
        }
        Cmd::Demo(args) => {
            prepare_root_run("demo")?;
            demo::run(&args)?;
        }
        Cmd::Bench(args) => {
            prepare_root_run("bench")?;
            bench::run(&args)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Everything `demo` and `bench` need before they start: root, a ready
/// machine, the eBPF object and the agent binary.
fn prepare_root_run(command: &str) -> Result<()> {
    util::require_root(command)?;
    setup::setup_toolchain()?;
    setup::setup_host()?;
    agent::build(&ebpf::build()?)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::{Cli, Cmd};

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_passes_args_after_double_dash() {
        let cli = Cli::try_parse_from(["xtask", "test", "--", "-p", "lb-lab", "--", "--nocapture"]);
        let Ok(Cli { command: Cmd::Test(args) }) = cli else {
            panic!("`test -- ...` did not parse as the test command");
        };
        assert_eq!(args.cargo_args, ["-p", "lb-lab", "--", "--nocapture"]);
    }
}
