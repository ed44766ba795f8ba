//! `cargo xtask build-ebpf`: build lb-ebpf with its own nightly toolchain.

use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, ensure};

use crate::util;

const TARGET: &str = "bpfel-unknown-none";

/// Where the eBPF build puts its artifacts.
fn target_dir() -> PathBuf {
    util::workspace_root().join("target/ebpf")
}

/// The eBPF object produced by [`build`].
pub fn object_path() -> PathBuf {
    target_dir().join(TARGET).join("release/lb")
}

/// Builds the eBPF object (assumes `setup_toolchain` ran) and returns its path.
pub fn build() -> Result<PathBuf> {
    let mut cmd = cargo_command("build");
    util::run(&mut cmd).context(
        "building lb-ebpf failed; it needs the nightly toolchain of lb-ebpf/rust-toolchain.toml \
         with rust-src and bpf-linker (`cargo xtask setup` installs them)",
    )?;
    let object = object_path();
    ensure!(object.is_file(), "the eBPF build succeeded but {} does not exist", object.display());
    Ok(object)
}

/// `cargo fmt --check` and `cargo clippy -D warnings` on lb-ebpf, with
/// the flags and target of its build.
pub fn lint() -> Result<()> {
    let mut fmt = cargo_command("fmt");
    fmt.args(["--check"]);
    util::run(&mut fmt).context("lb-ebpf is not formatted: run `cargo fmt` in lb-ebpf")?;
    let mut clippy = cargo_command("clippy");
    clippy.args(["--", "-D", "warnings"]);
    util::run(&mut clippy).context("clippy found problems in lb-ebpf")
}

/// `cargo <sub>` in lb-ebpf on its nightly toolchain (`build` and `clippy`
/// get the target, std build and flags of the eBPF object).
fn cargo_command(sub: &str) -> Command {
    let flags = [
        format!("--cfg=bpf_target_arch=\"{}\"", env::consts::ARCH),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        // bpf-linker passes LLVM `--bpf-expand-memcpy-in-order` unless told
        // not to. That option turns every `memmove` and `memset` LLVM
        // cannot prove to be a `memcpy` (a struct built from a reference, a
        // key's zeroed padding) into a call of a byte-at-a-time loop: a
        // 16-byte IPv6 address moved in about 130 instructions, on every
        // packet. Without it, LLVM inlines them as loads and stores.
        "-Clink-arg=--disable-expand-memcpy-in-order".to_owned(),
    ];
    // The rustup proxy `cargo`, without the variables that pin the running
    // (stable) toolchain, so lb-ebpf/rust-toolchain.toml selects nightly.
    let mut cmd = Command::new("cargo");
    util::clear_cargo_env(&mut cmd);
    for var in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER", "RUSTDOC", "RUSTUP_TOOLCHAIN", "RUSTUP_TOOLCHAIN_SOURCE"] {
        cmd.env_remove(var);
    }
    cmd.current_dir(util::workspace_root().join("lb-ebpf")).arg(sub);
    if sub == "fmt" {
        return cmd;
    }
    cmd.args(["--release", "-Z", "build-std=core", "--target", TARGET])
        .env("CARGO_TARGET_DIR", target_dir())
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        // rustc runs bpf-linker from PATH; cargo install may have put it in ~/.cargo/bin.
        .env("PATH", util::search_path());
    cmd
}
