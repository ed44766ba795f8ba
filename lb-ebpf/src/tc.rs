//! tc ingress on the host side of pod interfaces (east-west traffic).
//!
//! A packet from a pod to a frontend is DNATed to a backend, and the flow is
//! recorded in `LB4_CT` in both directions. A reply from a backend matches
//! the reply entry and has its source turned back into the frontend, so the
//! client only ever sees the address it dialled.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use lb_common::{
    CT_REPLY, Config, Ct4Key, IPPROTO_TCP, IPPROTO_UDP, Service4Value, csum,
    packet::{
        ETH_HLEN, ETH_P_IP, ICMP_QUOTE_LEN, ICMP_UNREACH_LEN, IPV4_HLEN, TCP_HLEN, UDP_HLEN,
        icmp_port_unreachable,
        ip, is_later_fragment, l4, l4_check_offset,
    },
};

use crate::{
    packet,
    lookup::{Tuple, config, flow_backend, now_ns, rev_nat, service},
    maps::LB4_CT,
};

enum Error {
    /// The packet is too short or not well formed: not ours to judge.
    Malformed,
    /// A map or packet write failed half-way through a translation.
    Rewrite,
}

#[classifier]
pub fn lb_tc(ctx: TcContext) -> i32 {
    match try_lb_tc(&ctx) {
        Ok(action) => action,
        // The kernel's own stack validates and drops garbage.
        Err(Error::Malformed) => TC_ACT_OK,
        // Never let a half-translated packet out.
        Err(Error::Rewrite) => {
            debug!(&ctx, "lb_tc: translation failed, packet dropped");
            TC_ACT_SHOT
        }
    }
}

/// The parsed IPv4 5-tuple, all fields in network order.
struct Flow {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    tcp_flags: u8,
    l4_off: usize,
}

impl Flow {
    #[inline(always)]
    fn tuple(&self) -> Tuple {
        Tuple {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            tcp_flags: self.tcp_flags,
        }
    }

    /// The conntrack key of this packet's own tuple.
    #[inline(always)]
    fn ct_key(&self, dir: u8) -> Ct4Key {
        Ct4Key::new(self.saddr, self.daddr, self.sport, self.dport, self.proto, dir)
    }
}

#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, Error> {
    packet::read(ctx, off).ok_or(Error::Malformed)
}

/// Headers we may read: Ethernet, IPv4 with options, a TCP header.
const MAX_HEADERS: u32 = (ETH_HLEN + 60 + 20) as u32;

#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Option<Flow>, Error> {
    // Headers may sit in paged data on some drivers; pull them in once.
    if ctx.data() + (MAX_HEADERS as usize) > ctx.data_end() {
        let want = if ctx.len() < MAX_HEADERS { ctx.len() } else { MAX_HEADERS };
        ctx.pull_data(want).map_err(|_| Error::Malformed)?;
    }
    if read::<u16>(ctx, 12)? != ETH_P_IP.to_be() {
        return Ok(None);
    }
    let ver_ihl: u8 = read(ctx, ETH_HLEN)?;
    if ver_ihl >> 4 != 4 {
        return Err(Error::Malformed);
    }
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN {
        return Err(Error::Malformed);
    }
    let proto: u8 = read(ctx, ETH_HLEN + ip::PROTO)?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Ok(None);
    }
    if is_later_fragment(read(ctx, ETH_HLEN + ip::FRAG_OFF)?) {
        return Ok(None);
    }
    let saddr: u32 = read(ctx, ETH_HLEN + ip::SADDR)?;
    let daddr: u32 = read(ctx, ETH_HLEN + ip::DADDR)?;
    // A frame shorter than its IPv4 total length is truncated: the stack
    // drops it, and so we leave it alone.
    let tot_len = u16::from_be(read(ctx, ETH_HLEN + ip::TOT_LEN)?) as u32;
    if ctx.len() < ETH_HLEN as u32 + tot_len {
        return Err(Error::Malformed);
    }
    let l4_off = ETH_HLEN + ihl;
    // The whole L4 header must be there, including the checksum we rewrite.
    // It is copied out in one bounds-checked read: a second pointer at a
    // variable offset would be a new packet pointer the verifier has not
    // seen checked.
    let (ports, tcp_flags) = if proto == IPPROTO_TCP {
        let h: [u8; TCP_HLEN] = read(ctx, l4_off)?;
        ([h[0], h[1], h[2], h[3]], h[l4::TCP_FLAGS])
    } else {
        let h: [u8; UDP_HLEN] = read(ctx, l4_off)?;
        ([h[0], h[1], h[2], h[3]], 0)
    };
    let ports = [
        u16::from_ne_bytes([ports[0], ports[1]]),
        u16::from_ne_bytes([ports[2], ports[3]]),
    ];
    Ok(Some(Flow {
        saddr,
        daddr,
        sport: ports[0],
        dport: ports[1],
        proto,
        tcp_flags,
        l4_off,
    }))
}

#[inline(always)]
fn try_lb_tc(ctx: &TcContext) -> Result<i32, Error> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK);
    };
    let Some(flow) = parse(ctx)? else {
        return Ok(TC_ACT_OK);
    };
    match service(flow.daddr, flow.dport, flow.proto) {
        Some(svc) => forward(ctx, &cfg, &flow, &svc),
        None => reply(ctx, &flow),
    }
}

/// Client -> frontend: stick to the recorded backend, or pick one.
#[inline(always)]
fn forward(ctx: &TcContext, cfg: &Config, f: &Flow, svc: &Service4Value) -> Result<i32, Error> {
    let Some((_, be)) = flow_backend(cfg, svc, &f.tuple(), now_ns()).map_err(|()| Error::Rewrite)? else {
        return reject(ctx, f);
    };
    rewrite(ctx, f, ip::DADDR, l4::DPORT, f.daddr, be.addr, f.dport, be.port)?;
    Ok(TC_ACT_OK)
}

/// Backend -> client: restore the frontend as the source.
#[inline(always)]
fn reply(ctx: &TcContext, f: &Flow) -> Result<i32, Error> {
    let key = f.ct_key(CT_REPLY);
    let Some(ct) = LB4_CT.get_ptr_mut(&key) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: see `forward`.
    let ct = unsafe { &mut *ct };
    ct.last_seen = now_ns();
    ct.tcp_flags |= f.tcp_flags;
    let Some(front) = rev_nat(ct.rev_nat_id) else {
        return Ok(TC_ACT_OK);
    };
    rewrite(ctx, f, ip::SADDR, l4::SPORT, f.saddr, front.addr, f.sport, front.port)?;
    Ok(TC_ACT_OK)
}

/// Rewrites one address and one port. The L4 checksum goes through the
/// kernel helper, which alone knows the skb's checksum state (with
/// CHECKSUM_PARTIAL from local senders on veth only the pseudo-header part
/// changes); the IPv4 checksum has no such state, so it and the fields are
/// written directly, which costs less than three more helper calls.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    f: &Flow,
    addr_field: usize,
    port_field: usize,
    old_addr: u32,
    new_addr: u32,
    old_port: u16,
    new_port: u16,
) -> Result<(), Error> {
    let check_off = f.l4_off + l4_check_offset(f.proto);
    let mangled = if f.proto == IPPROTO_UDP { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    if old_addr != new_addr {
        ctx.l4_csum_replace(
            check_off,
            old_addr as u64,
            new_addr as u64,
            BPF_F_PSEUDO_HDR as u64 | mangled | 4,
        )
        .map_err(|_| Error::Rewrite)?;
    }
    if old_port != new_port {
        ctx.l4_csum_replace(check_off, old_port as u64, new_port as u64, mangled | 2)
            .map_err(|_| Error::Rewrite)?;
    }
    // The helpers may have moved the packet: fresh bounds checks below.
    if old_addr != new_addr {
        let check: u16 = packet::read(ctx, ETH_HLEN + ip::CHECK).ok_or(Error::Rewrite)?;
        write(ctx, ETH_HLEN + ip::CHECK, csum::replace4(check, old_addr, new_addr))?;
        write(ctx, ETH_HLEN + addr_field, new_addr)?;
    }
    if old_port != new_port {
        write(ctx, f.l4_off + port_field, new_port)?;
    }
    Ok(())
}

#[inline(always)]
fn write<T>(ctx: &TcContext, off: usize, v: T) -> Result<(), Error> {
    packet::write(ctx, off, v).ok_or(Error::Rewrite)
}

/// Copies exactly `N` bytes at `off`. (`TcContext::load_bytes` clamps the
/// length to the packet, which the verifier rejects as a possibly zero-sized
/// read; a constant length is what it wants.)
#[inline(always)]
fn load_exact<const N: usize>(ctx: &TcContext, off: usize) -> Result<[u8; N], Error> {
    let mut buf = [0u8; N];
    // SAFETY: buf is N bytes of writable stack.
    let ret = unsafe {
        bpf_skb_load_bytes(ctx.skb.skb as *const _, off as u32, buf.as_mut_ptr().cast(), N as u32)
    };
    if ret != 0 {
        return Err(Error::Malformed);
    }
    Ok(buf)
}

/// A frontend without endpoints: answer with ICMP port unreachable, as
/// kube-proxy's REJECT rule does, so clients fail fast instead of timing
/// out. The packet is turned into the ICMP error in place and sent back out
/// of the interface it came in on.
#[inline(always)]
fn reject(ctx: &TcContext, f: &Flow) -> Result<i32, Error> {
    debug!(
        ctx,
        "lb_tc: no backend for {:i}:{}, rejecting",
        u32::from_be(f.daddr),
        u16::from_be(f.dport)
    );
    // The quote we build covers a 20-byte header; with IP options, drop.
    if f.l4_off != ETH_HLEN + IPV4_HLEN {
        return Ok(TC_ACT_SHOT);
    }
    let macs: [u8; 12] = load_exact(ctx, 0)?;
    let quote: [u8; ICMP_QUOTE_LEN] = load_exact(ctx, ETH_HLEN)?;
    let icmp = icmp_port_unreachable(&quote);
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    // SAFETY: the skb pointer is the program's context.
    let ret = unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + ICMP_UNREACH_LEN) as u32, 0) };
    if ret != 0 {
        return Err(Error::Rewrite);
    }
    ctx.store(0, &swapped, 0).map_err(|_| Error::Rewrite)?;
    ctx.store(ETH_HLEN, &icmp, 0).map_err(|_| Error::Rewrite)?;
    // SAFETY: reading the context's ifindex field.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}
