//! The eBPF object as built by `cargo xtask build-ebpf`: what its code
//! calls. The per-packet paths must not call the object's `memmove` or
//! `memset`: those are loops of one-byte accesses (about 130 instructions
//! for a 16-byte IPv6 address). They appear when bpf-linker passes LLVM
//! `--bpf-expand-memcpy-in-order` (its default; `xtask/src/ebpf.rs` turns
//! it off): every move of a struct built from a reference, and every
//! zeroed key padding, became such a call.

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

/// The names of the functions the object's code calls through relocations
/// (BPF-to-BPF calls of functions in `.text`), with the section of each
/// call site.
fn calls(elf: &[u8]) -> Vec<(String, String)> {
    let file = object::File::parse(elf).expect("the eBPF object is an ELF file");
    let mut out = Vec::new();
    for section in file.sections() {
        let from = section.name().unwrap_or("?").to_owned();
        for (_, reloc) in section.relocations() {
            if let RelocationTarget::Symbol(i) = reloc.target()
                && let Ok(sym) = file.symbol_by_index(i)
                && let Ok(name) = sym.name()
            {
                out.push((from.clone(), name.to_owned()));
            }
        }
    }
    out
}

#[test]
fn no_code_calls_a_byte_loop_memmove_or_memset() {
    let elf = lb_agent::EBPF_OBJECT;
    if elf.is_empty() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true and lb-agent was built without the eBPF object");
        eprintln!("SKIPPED: lb-agent was built without the eBPF object (cargo xtask build-ebpf)");
        return;
    }
    let calls = calls(elf);
    // The harness sees the relocations at all: the programs' map references.
    assert!(calls.iter().any(|(_, name)| name == "LB4_CT_TCP"), "no relocation against LB4_CT_TCP found: {calls:?}");
    let loops: Vec<_> = calls.iter().filter(|(_, name)| name == "memmove" || name == "memset").collect();
    assert!(loops.is_empty(), "calls of the byte-loop builtins (section, callee): {loops:?}");
}
