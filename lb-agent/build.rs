//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! Without one (`cargo check`, clippy or the pure unit tests on a machine
//! without the eBPF toolchain) an empty stub is embedded instead, as the
//! aya template does: everything builds, and loading the datapath fails
//! with an error that says how to build the object. `cargo xtask build`
//! and `cargo xtask test` always build the real object first.
use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LB_EBPF_OBJECT");
    let path = match env::var_os("LB_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../target/ebpf/bpfel-unknown-none/release/lb"),
    };
    println!("cargo:rerun-if-changed={}", path.display());
    let path = if path.exists() {
        path.canonicalize().unwrap()
    } else {
        let stub = PathBuf::from(env::var("OUT_DIR").unwrap()).join("lb-ebpf-stub.o");
        std::fs::write(&stub, b"").unwrap();
        println!(
            "cargo:warning=no eBPF object at {}: embedding an empty stub (the agent cannot load a datapath; \
             `cargo xtask build-ebpf` builds the object)",
            path.display()
        );
        stub
    };
    println!("cargo:rustc-env=LB_EBPF_OBJECT_PATH={}", path.display());
}
