//! `cargo xtask bench`: builds `lb-bench` (release, with the eBPF object
//! embedded through lb-agent) and runs it as root. It writes
//! `docs/benchmarks.md` and the plots next to it, and prints the tables.
//!
//! xtask cannot depend on lb-agent (whose build needs the eBPF object that
//! xtask builds), so the benchmarks live in their own crate, `lb-bench`.

use std::{ffi::OsString, process::Command};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{ebpf, util};

/// Options for `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A short run (a few minutes): B1 at 1/1k/10k/100k services with 20k
    /// new flows per round, B2 at 1k/10k services with 2,000 connections,
    /// B3 at 10k x 10, B4 3 s per run. Without it: 100k new flows, B2 at
    /// 1k/10k/30k with 10,000 connections, B4 10 s per run.
    #[arg(long)]
    pub quick: bool,
    /// More `lb-bench` flags after `--`, e.g. sizes:
    /// `cargo xtask bench --quick -- --b2-services 1000,5000 --only b2`
    /// (`lb-bench --help` lists them).
    #[arg(last = true)]
    pub lb_bench_args: Vec<OsString>,
}

/// Runs the benchmark; setup, the eBPF object and lb-agent are built.
pub fn run(args: &BenchArgs) -> Result<()> {
    let object = ebpf::object_path();
    let mut build = util::host_cargo();
    build.args(["build", "--release", "-p", "lb-bench", "-p", "lb-agent"]).env(util::EBPF_OBJECT_ENV, &object);
    util::run(&mut build).context("building lb-bench failed")?;

    let root = util::workspace_root();
    let target = root.join("target/release");
    let mut cmd = Command::new(target.join("lb-bench"));
    cmd.current_dir(&root).arg("--out").arg(root.join("docs")).arg("--agent").arg(target.join("lb-agent"));
    let mut shown = String::from("cargo xtask bench");
    if args.quick {
        cmd.arg("--quick");
        shown.push_str(" --quick");
    }
    if !args.lb_bench_args.is_empty() {
        shown.push_str(" --");
        for a in &args.lb_bench_args {
            shown.push(' ');
            shown.push_str(&a.to_string_lossy());
        }
    }
    cmd.arg("--command").arg(&shown).args(&args.lb_bench_args);
    util::run(&mut cmd)
}
