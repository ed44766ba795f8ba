//! Runs datapath programs on crafted packets through BPF_PROG_TEST_RUN:
//! the harness behind the packet fixtures (functional mode, `repeat = 1`)
//! and the per-packet benchmarks (perf mode, large `repeat`).

use std::{net::SocketAddrV4, time::Duration};

use anyhow::Context;
use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp};
use etherparse::PacketBuilder;

pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// What a program did with one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: i32,
    pub packet: Vec<u8>,
}

/// An Ethernet + IPv4 + TCP packet; checksums computed by etherparse.
pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: &str, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .tcp(src.port(), dst.port(), seq, 64240);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(1),
            'F' => b.fin(),
            'R' => b.rst(),
            'P' => b.psh(),
            _ => panic!("unknown TCP flag {f}"),
        };
    }
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("writing to a Vec");
    out
}

/// An Ethernet + IPv4 + UDP packet; checksums computed by etherparse.
pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .udp(src.port(), dst.port());
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("writing to a Vec");
    out
}

fn options<'a>(input: &'a [u8], output: &'a mut [u8], repeat: u32) -> TestRunOptions<'a> {
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(input);
    opts.data_out = Some(output);
    opts.repeat = repeat;
    opts
}

/// Runs a tc program once on `input`.
pub fn run_tc(prog: &SchedClassifier, input: &[u8]) -> anyhow::Result<Outcome> {
    let mut out = vec![0u8; input.len() + 256];
    let r = prog.test_run(options(input, &mut out, 1)).context("BPF_PROG_TEST_RUN")?;
    out.truncate(r.data_size_out as usize);
    Ok(Outcome { verdict: r.return_value as i32, packet: out })
}

/// Average time per run of a tc program over `repeat` runs in the kernel.
pub fn time_tc(prog: &SchedClassifier, input: &[u8], repeat: u32) -> Result<(i32, Duration), ProgramError> {
    let mut out = vec![0u8; input.len() + 256];
    let r = prog.test_run(options(input, &mut out, repeat))?;
    Ok((r.return_value as i32, r.duration))
}

/// Average time per run of an XDP program over `repeat` runs.
pub fn time_xdp(prog: &Xdp, input: &[u8], repeat: u32) -> Result<(u32, Duration), ProgramError> {
    let mut out = vec![0u8; input.len() + 256];
    let r = prog.test_run(options(input, &mut out, repeat))?;
    Ok((r.return_value, r.duration))
}
