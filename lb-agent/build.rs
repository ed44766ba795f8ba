//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LB_EBPF_OBJECT");
    let path = match env::var_os("LB_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap())
            .join("../target/ebpf/bpfel-unknown-none/release/lb"),
    };
    println!("cargo:rerun-if-changed={}", path.display());
    if !path.exists() {
        panic!(
            "the eBPF object {} does not exist: run `cargo xtask build-ebpf` first \
             (or `cargo xtask build` / `cargo xtask test`), or point LB_EBPF_OBJECT at it",
            path.display()
        );
    }
    let path = path.canonicalize().unwrap();
    println!("cargo:rustc-env=LB_EBPF_OBJECT_PATH={}", path.display());
}
