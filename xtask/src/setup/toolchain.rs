//! Toolchain preparation: nightly with rust-src, and bpf-linker built against
//! the nightly toolchain's own libLLVM.

use std::{
    fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, step};

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn ensure() -> Result<()> {
    let sysroot = ensure_nightly()?;
    ensure_rust_src(&sysroot)?;
    ensure_lint_tools(&sysroot)?;
    ensure_bpf_linker(&sysroot)
}

fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot = util::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    Ok(PathBuf::from(sysroot.trim()))
}

fn ensure_nightly() -> Result<PathBuf> {
    if let Ok(sysroot) = nightly_sysroot() {
        return Ok(sysroot);
    }
    step("installing the nightly Rust toolchain");
    util::run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal", "--component", "rust-src"]))
        .context("could not install nightly; do it by hand: rustup toolchain install nightly --component rust-src")?;
    nightly_sysroot()
}

fn ensure_rust_src(sysroot: &Path) -> Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library").is_dir() {
        return Ok(());
    }
    step("adding rust-src to the nightly toolchain");
    util::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("could not add rust-src; do it by hand: rustup component add rust-src --toolchain nightly")
}

/// clippy and rustfmt for the lint gate (`cargo xtask lint`), on nightly
/// (lb-ebpf) and on the host toolchain.
fn ensure_lint_tools(sysroot: &Path) -> Result<()> {
    let on_nightly = |bin: &str| sysroot.join("bin").join(bin).is_file();
    if !(on_nightly("cargo-clippy") && on_nightly("rustfmt")) {
        step("adding clippy and rustfmt to the nightly toolchain");
        util::run(Command::new("rustup").args(["component", "add", "clippy", "rustfmt", "--toolchain", "nightly"]))
            .context("could not add clippy and rustfmt; do it by hand: rustup component add clippy rustfmt --toolchain nightly")?;
    }
    let host_has = |sub: &str| util::output(util::host_cargo().args([sub, "--version"])).is_ok();
    if !(host_has("clippy") && host_has("fmt")) {
        step("adding clippy and rustfmt to the host toolchain");
        util::run(Command::new("rustup").args(["component", "add", "clippy", "rustfmt"]))
            .context("could not add clippy and rustfmt; do it by hand: rustup component add clippy rustfmt")?;
    }
    Ok(())
}

/// True if the `bpf-linker` that rustc will find reports the wanted version.
fn bpf_linker_ok() -> bool {
    let Some(path) = util::find_program("bpf-linker") else {
        return false;
    };
    util::output(Command::new(path).arg("--version")).is_ok_and(|out| out.split_whitespace().any(|word| word == BPF_LINKER_VERSION))
}

fn ensure_bpf_linker(sysroot: &Path) -> Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    let libllvm = find_libllvm(sysroot)?;
    let prefix = util::workspace_root().join("target/llvm-prefix");
    // An installed bpf-linker may only have lost its libLLVM links (`cargo clean`).
    if link_libllvm(&prefix, &libllvm)? && bpf_linker_ok() {
        return Ok(());
    }
    install_bpf_linker(&prefix, &libllvm)?;
    if !bpf_linker_ok() {
        bail!(
            "bpf-linker {BPF_LINKER_VERSION} was installed, but the `bpf-linker` found on PATH \
             does not report that version; put {} first on PATH",
            util::cargo_bin_dir().unwrap_or_default().display()
        );
    }
    Ok(())
}

/// The nightly toolchain's `lib/libLLVM.so.<version>` file.
fn find_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("could not list {}", lib.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| file_name(path).starts_with("libLLVM.so."))
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!("no libLLVM.so.* in {}; reinstall nightly by hand: rustup toolchain install nightly --force", lib.display())
    })
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Makes `<prefix>/lib/{libLLVM.so, libLLVM.so.<version>}` point at `libllvm`.
/// Returns whether anything changed.
fn link_libllvm(prefix: &Path, libllvm: &Path) -> Result<bool> {
    let lib = prefix.join("lib");
    let mut changed = false;
    for name in ["libLLVM.so".to_owned(), file_name(libllvm)] {
        let link = lib.join(name);
        if fs::read_link(&link).is_ok_and(|target| target == libllvm) {
            continue;
        }
        if !changed {
            step(format!("linking {} into {}", libllvm.display(), lib.display()));
            changed = true;
        }
        replace_symlink(libllvm, &link).with_context(|| format!("could not create the symlink {}", link.display()))?;
    }
    Ok(changed)
}

fn replace_symlink(target: &Path, link: &Path) -> io::Result<()> {
    if let Some(dir) = link.parent() {
        fs::create_dir_all(dir)?;
    }
    match fs::remove_file(link) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    symlink(target, link)
}

/// The LLVM major version in `libLLVM.so.<major>.<minor>-rust-...`.
fn llvm_major(libllvm: &Path) -> Result<u32> {
    let name = file_name(libllvm);
    name.strip_prefix("libLLVM.so.")
        .and_then(|version| version.split(['.', '-']).next())
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {name}"))
}

fn install_bpf_linker(prefix: &Path, libllvm: &Path) -> Result<()> {
    let feature = format!("llvm-{}", llvm_major(libllvm)?);
    step(format!("building bpf-linker {BPF_LINKER_VERSION} ({feature}) against {} (takes a minute or two)", libllvm.display()));
    let mut cmd = util::host_cargo();
    cmd.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked"])
        .args(["--no-default-features", "--features", &feature])
        .env("LLVM_PREFIX", prefix);
    let by_hand = format!(
        "could not build bpf-linker; do it by hand: LLVM_PREFIX={} cargo install bpf-linker \
         --version {BPF_LINKER_VERSION} --locked --no-default-features --features {feature}",
        prefix.display(),
    );
    util::run(&mut cmd).context(by_hand)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llvm_major_from_file_name() {
        let path = Path::new("/x/lib/libLLVM.so.22.1-rust-1.97.0-nightly");
        assert_eq!(llvm_major(path).ok(), Some(22));
        assert!(llvm_major(Path::new("/x/lib/libLLVM-22.so")).is_err());
    }
}
