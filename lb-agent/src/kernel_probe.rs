//! What the running kernel lets the datapath's programs do, asked the way
//! `bpftool feature probe` asks: by loading a program of a few
//! instructions that uses the feature.
//!
//! Kernels differ in the helpers they give a program type. Where one
//! refuses a helper, the verifier rejects every program that calls it, so
//! the datapath learns it before loading and switches the calls off
//! (a load-time global the verifier sees as a constant).

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_FUNC_XDP_ADJUST_META: i32 = 54;

/// The prefix of `union bpf_attr`'s `BPF_PROG_LOAD` member that a probe
/// needs (the kernel takes a shorter attribute and zeroes the rest).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// One eBPF instruction (`struct bpf_insn`), encoded.
const fn insn(code: u8, dst: u8, imm: i32) -> u64 {
    code as u64 | (dst as u64) << 8 | (imm as u32 as u64) << 32
}

/// `r2 = -4; call bpf_xdp_adjust_meta; r0 = XDP_PASS; exit` (r1 holds
/// the context on entry).
const ADJUST_META: [u64; 4] = [
    insn(0xb7, 2, -4),                       // BPF_ALU64 | BPF_MOV | BPF_K
    insn(0x85, 0, BPF_FUNC_XDP_ADJUST_META), // BPF_JMP | BPF_CALL
    insn(0xb7, 0, 2),
    insn(0x95, 0, 0), // BPF_JMP | BPF_EXIT
];

/// Whether XDP programs may call `bpf_xdp_adjust_meta`: `Ok(false)` when
/// the kernel refuses the probe program (`EINVAL`, as for "program of
/// this type cannot use helper"), an error when it could not be asked
/// (no privilege, say).
pub fn xdp_adjust_meta() -> io::Result<bool> {
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: ADJUST_META.len() as u32,
        insns: ADJUST_META.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_XDP,
        ..Default::default()
    };
    attr.prog_name[..11].copy_from_slice(b"lb_probe_md");
    // (The attribute's pointers, instructions and license, live across the
    // call.)
    match crate::links::sys_bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => {
            // SAFETY: a new program fd, ours alone; dropping it unloads.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            Ok(true)
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_program_is_encoded_as_the_kernel_reads_it() {
        // `struct bpf_insn`: the opcode, dst | src << 4, a little-endian
        // 16-bit offset and 32-bit immediate.
        let bytes: Vec<u8> = ADJUST_META.iter().flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(
            bytes,
            [
                0xb7, 0x02, 0, 0, 0xfc, 0xff, 0xff, 0xff, //
                0x85, 0x00, 0, 0, 0x36, 0, 0, 0, //
                0xb7, 0x00, 0, 0, 0x02, 0, 0, 0, //
                0x95, 0x00, 0, 0, 0, 0, 0, 0,
            ]
        );
    }
}
