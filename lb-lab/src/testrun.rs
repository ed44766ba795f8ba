//! Runs datapath programs on crafted packets through BPF_PROG_TEST_RUN:
//! the harness behind the packet fixtures (functional mode, `repeat = 1`)
//! and the per-packet benchmarks (perf mode, large `repeat`).

use std::{
    net::{SocketAddrV4, SocketAddrV6},
    time::Duration,
};

use anyhow::Context;
use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp};
use etherparse::{PacketBuilder, PacketBuilderStep, TcpHeader};

/// tcx "next": the packet goes on (to later programs, then the stack).
pub const TC_ACT_UNSPEC: i32 = -1;
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

pub const XDP_ABORTED: i32 = 0;
pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
pub const XDP_TX: i32 = 3;
pub const XDP_REDIRECT: i32 = 4;

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
    tcp_frame(Frame::default(), src, dst, flags, seq, payload)
}

/// The Ethernet addresses and TTL of a test frame.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub ttl: u8,
}

impl Default for Frame {
    /// From the client to the node, TTL 64.
    fn default() -> Self {
        Frame { src_mac: CLIENT_MAC, dst_mac: NODE_MAC, ttl: 64 }
    }
}

/// [`tcp`] with given MACs and TTL.
pub fn tcp_frame(frame: Frame, src: SocketAddrV4, dst: SocketAddrV4, flags: &str, seq: u32, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(frame.src_mac, frame.dst_mac).ipv4(src.ip().octets(), dst.ip().octets(), frame.ttl).tcp(
        src.port(),
        dst.port(),
        seq,
        64240,
    );
    tcp_packet(b, flags, payload)
}

/// An Ethernet + IPv6 + TCP packet (no extension headers), from the
/// client to the node; checksums computed by etherparse.
pub fn tcp6(src: SocketAddrV6, dst: SocketAddrV6, flags: &str, seq: u32, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv6(src.ip().octets(), dst.ip().octets(), 64).tcp(
        src.port(),
        dst.port(),
        seq,
        64240,
    );
    tcp_packet(b, flags, payload)
}

/// The packet `b` (a builder after `.tcp()`, of either IP family) builds
/// with the TCP `flags` (see [`with_tcp_flags`]) and `payload`.
pub fn tcp_packet(b: PacketBuilderStep<TcpHeader>, flags: &str, payload: &[u8]) -> Vec<u8> {
    let b = with_tcp_flags(b, flags);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("writing to a Vec");
    out
}

/// `b` (a packet builder after `.tcp()`, of either IP family) with the
/// TCP flags given as letters: S, A (acknowledging 1), F, R, P.
pub fn with_tcp_flags(mut b: PacketBuilderStep<TcpHeader>, flags: &str) -> PacketBuilderStep<TcpHeader> {
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
    b
}

/// An Ethernet + IPv4 + UDP packet; checksums computed by etherparse.
pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    udp_frame(Frame::default(), src, dst, payload)
}

/// [`udp`] with given MACs and TTL.
pub fn udp_frame(frame: Frame, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(frame.src_mac, frame.dst_mac)
        .ipv4(src.ip().octets(), dst.ip().octets(), frame.ttl)
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

/// The `struct __sk_buff` a tc test run starts from: received on
/// `ifindex` (of the calling thread's network namespace; the kernel runs
/// the program on that device, so `bpf_fib_lookup` and redirects see it),
/// every other field the kernel's default.
pub fn sk_buff_on(ifindex: u32) -> [u8; SK_BUFF_LEN] {
    let mut skb = [0u8; SK_BUFF_LEN];
    skb[36..40].copy_from_slice(&ifindex.to_ne_bytes()); // ingress_ifindex
    skb[40..44].copy_from_slice(&ifindex.to_ne_bytes()); // ifindex
    skb
}

/// `sizeof(struct __sk_buff)`.
pub const SK_BUFF_LEN: usize = 192;

/// [`sk_buff_on`] for a GSO super-packet of `gso_size`-byte segments.
pub fn gso_sk_buff_on(ifindex: u32, gso_size: u32, gso_segs: u32) -> [u8; SK_BUFF_LEN] {
    let mut skb = sk_buff_on(ifindex);
    skb[164..168].copy_from_slice(&gso_segs.to_ne_bytes());
    skb[176..180].copy_from_slice(&gso_size.to_ne_bytes());
    skb
}

/// Runs a tc program once on `input`, received on interface `ifindex`
/// (see [`sk_buff_on`]).
pub fn run_tc_on(prog: &SchedClassifier, input: &[u8], ifindex: u32) -> anyhow::Result<Outcome> {
    run_tc_skb(prog, input, &sk_buff_on(ifindex))
}

/// Runs a tc program once on `input`, from the `struct __sk_buff` `skb`.
pub fn run_tc_skb(prog: &SchedClassifier, input: &[u8], skb: &[u8; SK_BUFF_LEN]) -> anyhow::Result<Outcome> {
    let mut out = vec![0u8; input.len() + 256];
    let mut opts = options(input, &mut out, 1);
    opts.ctx_in = Some(skb);
    let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    out.truncate(r.data_size_out as usize);
    Ok(Outcome { verdict: r.return_value as i32, packet: out })
}

/// Average time per run of a tc program over `repeat` runs in the kernel.
pub fn time_tc(prog: &SchedClassifier, input: &[u8], repeat: u32) -> Result<(i32, Duration), ProgramError> {
    let mut out = vec![0u8; input.len() + 256];
    let r = prog.test_run(options(input, &mut out, repeat))?;
    Ok((r.return_value as i32, r.duration))
}

/// Average time per run of a tc program over `repeat` runs, received on
/// interface `ifindex` (see [`sk_buff_on`]).
pub fn time_tc_on(prog: &SchedClassifier, input: &[u8], ifindex: u32, repeat: u32) -> Result<(i32, Duration), ProgramError> {
    let mut out = vec![0u8; input.len() + 256];
    let skb = sk_buff_on(ifindex);
    let mut opts = options(input, &mut out, repeat);
    opts.ctx_in = Some(&skb);
    let r = prog.test_run(opts)?;
    Ok((r.return_value as i32, r.duration))
}

/// Average time per run of an XDP program over `repeat` runs.
pub fn time_xdp(prog: &Xdp, input: &[u8], repeat: u32) -> Result<(u32, Duration), ProgramError> {
    let mut out = vec![0u8; input.len() + 256];
    let r = prog.test_run(options(input, &mut out, repeat))?;
    Ok((r.return_value, r.duration))
}

/// The `struct xdp_md` a test run starts from: the whole input is packet
/// data, received on `ingress_ifindex` (of the calling thread's network
/// namespace; 0 for the loopback device), queue 0.
pub fn xdp_md(len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let mut md = [0u8; 24];
    md[4..8].copy_from_slice(&(len as u32).to_ne_bytes()); // data_end
    md[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    md
}

fn xdp_options<'a>(input: &'a [u8], output: &'a mut [u8], ctx: &'a [u8], repeat: u32) -> TestRunOptions<'a> {
    let mut opts = options(input, output, repeat);
    opts.ctx_in = Some(ctx);
    opts
}

/// Runs an XDP program once on `input`, received on `ingress_ifindex`.
/// `bpf_fib_lookup` in the program consults the routes and neighbours of
/// the calling thread's network namespace.
pub fn run_xdp(prog: &Xdp, input: &[u8], ingress_ifindex: u32) -> anyhow::Result<Outcome> {
    let mut out = vec![0u8; input.len() + 256];
    let md = xdp_md(input.len(), ingress_ifindex);
    let r = prog.test_run(xdp_options(input, &mut out, &md, 1)).context("BPF_PROG_TEST_RUN")?;
    out.truncate(r.data_size_out as usize);
    Ok(Outcome { verdict: r.return_value as i32, packet: out })
}

/// Average time per run of an XDP program over `repeat` runs, received on
/// `ingress_ifindex`.
pub fn time_xdp_on(prog: &Xdp, input: &[u8], ingress_ifindex: u32, repeat: u32) -> Result<(u32, Duration), ProgramError> {
    let mut out = vec![0u8; input.len() + 256];
    let md = xdp_md(input.len(), ingress_ifindex);
    let r = prog.test_run(xdp_options(input, &mut out, &md, repeat))?;
    Ok((r.return_value, r.duration))
}
