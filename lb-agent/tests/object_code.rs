//! The eBPF object as built by `cargo xtask build-ebpf`: what its code
//! calls, and that the eBPF crate's documentation names its programs. The per-packet paths must not call the object's `memmove` or
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

/// The object lb-agent was built with; `None` (a skip, which fails with
/// `CI=true`) when it was built without one.
fn object() -> Option<&'static [u8]> {
    let elf = lb_agent::EBPF_OBJECT;
    if elf.is_empty() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true and lb-agent was built without the eBPF object");
        eprintln!("SKIPPED: lb-agent was built without the eBPF object (cargo xtask build-ebpf)");
        return None;
    }
    Some(elf)
}

#[test]
fn no_code_calls_a_byte_loop_memmove_or_memset() {
    let Some(elf) = object() else { return };
    let calls = calls(elf);
    // The harness sees the relocations at all: the programs' map references.
    assert!(calls.iter().any(|(_, name)| name == "LB4_CT_TCP"), "no relocation against LB4_CT_TCP found: {calls:?}");
    let loops: Vec<_> = calls.iter().filter(|(_, name)| name == "memmove" || name == "memset").collect();
    assert!(loops.is_empty(), "calls of the byte-loop builtins (section, callee): {loops:?}");
}

/// The eBPF crate's documentation (lb-ebpf/src/main.rs) names every
/// program the object holds, with its hook or the program array that
/// calls it: a program added without a word there fails here.
#[test]
fn the_crate_doc_names_every_program() {
    let Some(elf) = object() else { return };
    let file = object::File::parse(elf).expect("the eBPF object is an ELF file");
    let programs: Vec<String> = file
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.is_global())
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .filter(|n| n.starts_with("lb_"))
        .collect();
    assert!(programs.len() > 20, "programs found: {programs:?}");
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf/src/main.rs")).unwrap();
    let doc: String = doc.lines().filter(|l| l.starts_with("//!")).collect::<Vec<_>>().join("\n");
    let missing: Vec<&String> = programs.iter().filter(|p| !doc.contains(&format!("`{p}`"))).collect();
    assert!(missing.is_empty(), "programs the crate doc of lb-ebpf/src/main.rs does not name: {missing:?}");
}
