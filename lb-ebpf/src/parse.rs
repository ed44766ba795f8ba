//! One parser for every hook: Ethernet + IPv4, then a TCP or UDP flow or
//! an ICMP error quoting one.

use lb_common::{
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    packet::{ETH_HLEN, ETH_P_IP, Fragment, IP_DF, IPV4_HLEN, TCP_HLEN, UDP_HLEN, fragment, icmp, icmp_error, ip, is_icmp_error, l4},
};

use crate::packet::{PacketData, read};

/// Not a packet to judge: too short or not well formed. The kernel's own
/// stack validates and drops garbage, so such packets pass untouched.
pub struct Malformed;

/// A TCP or UDP packet. Addresses and ports are in network order, as on
/// the wire.
#[derive(Clone, Copy)]
pub struct Flow {
    pub saddr: u32,
    pub daddr: u32,
    /// Zero in a later fragment until the fragment map supplies them.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// `ct_flags::TRACKED` of a TCP header.
    pub tcp_flags: u8,
    /// TCP sequence number, host order.
    pub seq: u32,
    /// Offset of the L4 header (after IPv4 options).
    pub l4_off: usize,
    pub frag: Fragment,
    /// The IPv4 identification, network order (for the fragment map).
    pub ip_id: u16,
    pub tos: u8,
    /// IPv4 total length, host order.
    pub tot_len: u16,
    /// The "don't fragment" bit.
    pub df: bool,
}

impl Flow {
    /// Whether the L4 header is in this packet (not a later fragment).
    #[inline(always)]
    pub fn has_l4(&self) -> bool {
        self.frag != Fragment::Later
    }
}

/// The tuple of the packet an ICMP error quotes.
#[derive(Clone, Copy)]
pub struct Quoted {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// An ICMP error (destination unreachable, time exceeded, parameter
/// problem) about a TCP or UDP packet, both IPv4 headers without options:
/// its layout is `lb_common::packet::icmp_error`.
#[derive(Clone, Copy)]
pub struct IcmpError {
    pub saddr: u32,
    pub daddr: u32,
    pub quoted: Quoted,
}

pub enum Packet {
    /// Not IPv4 (ARP, IPv6, a VLAN tag, ...).
    NotIpv4,
    Flow(Flow),
    IcmpError(IcmpError),
    /// Any other IPv4 packet (ICMP echo, other protocols, errors we do not
    /// translate).
    OtherIpv4,
}

#[inline(always)]
fn get<C: PacketData, T: Copy>(ctx: &C, off: usize) -> Result<T, Malformed> {
    read(ctx, off).ok_or(Malformed)
}

/// Parses the headers. A packet shorter than its IPv4 total length is
/// truncated: the stack drops it, and so it is left alone.
#[inline(always)]
pub fn parse<C: PacketData>(ctx: &C) -> Result<Packet, Malformed> {
    if get::<C, u16>(ctx, 12)? != ETH_P_IP.to_be() {
        return Ok(Packet::NotIpv4);
    }
    let iph: [u8; IPV4_HLEN] = get(ctx, ETH_HLEN)?;
    if iph[0] >> 4 != 4 {
        return Err(Malformed);
    }
    let ihl = ((iph[0] & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN {
        return Err(Malformed);
    }
    let tot_len = u16::from_be_bytes([iph[ip::TOT_LEN], iph[ip::TOT_LEN + 1]]);
    // BIG TCP super-packets carry 0 here; their length is the skb's.
    if ctx.len() < (ETH_HLEN + tot_len as usize) as u32 {
        return Err(Malformed);
    }
    let saddr = u32::from_ne_bytes([iph[ip::SADDR], iph[ip::SADDR + 1], iph[ip::SADDR + 2], iph[ip::SADDR + 3]]);
    let daddr = u32::from_ne_bytes([iph[ip::DADDR], iph[ip::DADDR + 1], iph[ip::DADDR + 2], iph[ip::DADDR + 3]]);
    let frag_off = u16::from_ne_bytes([iph[ip::FRAG_OFF], iph[ip::FRAG_OFF + 1]]);
    let frag = fragment(frag_off);
    let proto = iph[ip::PROTO];
    if proto == IPPROTO_ICMP {
        if ihl != IPV4_HLEN || frag != Fragment::No {
            return Ok(Packet::OtherIpv4);
        }
        return icmp_error_of(ctx, saddr, daddr);
    }
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Ok(Packet::OtherIpv4);
    }
    let l4_off = ETH_HLEN + ihl;
    let mut flow = Flow {
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        proto,
        tcp_flags: 0,
        seq: 0,
        l4_off,
        frag,
        ip_id: u16::from_ne_bytes([iph[ip::ID], iph[ip::ID + 1]]),
        tos: iph[ip::TOS],
        tot_len,
        df: u16::from_be(frag_off) & IP_DF != 0,
    };
    if frag == Fragment::Later {
        return Ok(Packet::Flow(flow));
    }
    // The whole L4 header must be there, including the checksum we
    // rewrite. It is copied out in one bounds-checked read: a second
    // pointer at a variable offset would be a new packet pointer the
    // verifier has not seen checked.
    let ports = if proto == IPPROTO_TCP {
        let h: [u8; TCP_HLEN] = get(ctx, l4_off)?;
        flow.tcp_flags = h[l4::TCP_FLAGS] & lb_common::ct_flags::TRACKED;
        flow.seq = u32::from_be_bytes([h[l4::TCP_SEQ], h[l4::TCP_SEQ + 1], h[l4::TCP_SEQ + 2], h[l4::TCP_SEQ + 3]]);
        [h[0], h[1], h[2], h[3]]
    } else {
        let h: [u8; UDP_HLEN] = get(ctx, l4_off)?;
        [h[0], h[1], h[2], h[3]]
    };
    flow.sport = u16::from_ne_bytes([ports[0], ports[1]]);
    flow.dport = u16::from_ne_bytes([ports[2], ports[3]]);
    Ok(Packet::Flow(flow))
}

#[inline(always)]
fn icmp_error_of<C: PacketData>(ctx: &C, saddr: u32, daddr: u32) -> Result<Packet, Malformed> {
    let icmp_type: u8 = get(ctx, ETH_HLEN + icmp_error::ICMP + icmp::TYPE)?;
    if !is_icmp_error(icmp_type) {
        return Ok(Packet::OtherIpv4);
    }
    // The quoted IPv4 header and the first 8 bytes after it (the ports).
    let Some(q) = read::<C, [u8; icmp_error::MIN_LEN - icmp_error::INNER_IP]>(ctx, ETH_HLEN + icmp_error::INNER_IP) else {
        return Ok(Packet::OtherIpv4);
    };
    let proto = q[ip::PROTO];
    if q[0] != 0x45 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return Ok(Packet::OtherIpv4);
    }
    let p = IPV4_HLEN;
    Ok(Packet::IcmpError(IcmpError {
        saddr,
        daddr,
        quoted: Quoted {
            saddr: u32::from_ne_bytes([q[ip::SADDR], q[ip::SADDR + 1], q[ip::SADDR + 2], q[ip::SADDR + 3]]),
            daddr: u32::from_ne_bytes([q[ip::DADDR], q[ip::DADDR + 1], q[ip::DADDR + 2], q[ip::DADDR + 3]]),
            sport: u16::from_ne_bytes([q[p], q[p + 1]]),
            dport: u16::from_ne_bytes([q[p + 2], q[p + 3]]),
            proto,
        },
    }))
}
