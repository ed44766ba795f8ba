//! One parser for every hook: Ethernet + IPv4, then a TCP or UDP flow or
//! an ICMP error quoting one.

use lb_common::{
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    packet::{
        ETH_HLEN, ETH_P_IP, Fragment, IP_DF, IPV4_HLEN, IPV4_VER_IHL_NO_OPTIONS, TCP_HLEN, UDP_HLEN, eth, fragment, get16, get32, icmp,
        icmp_error, ip, is_icmp_error, l4, l4_ports,
    },
};

use crate::{
    error::Error,
    packet::{PacketData, read},
};

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

/// Copies a `T` out of the packet at `off`; a packet too short for it is
/// malformed.
#[inline(always)]
fn get<C: PacketData, T: Copy>(ctx: &C, off: usize) -> Result<T, Error> {
    read(ctx, off).ok_or(Error::Malformed)
}

/// Parses the headers. A packet shorter than its IPv4 total length is
/// truncated: the stack drops it, and so it is left alone
/// (`Error::Malformed`).
#[inline(always)]
pub fn parse<C: PacketData>(ctx: &C) -> Result<Packet, Error> {
    if get::<C, u16>(ctx, eth::ETHERTYPE.start)? != ETH_P_IP.to_be() {
        return Ok(Packet::NotIpv4);
    }
    let iph: [u8; IPV4_HLEN] = get(ctx, ETH_HLEN)?;
    if iph[ip::VER_IHL] >> 4 != 4 {
        return Err(Error::Malformed);
    }
    let ihl = ((iph[ip::VER_IHL] & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN {
        return Err(Error::Malformed);
    }
    let tot_len = u16::from_be(get16(&iph, ip::TOT_LEN));
    // BIG TCP super-packets carry 0 here; their length is the skb's.
    if ctx.len() < (ETH_HLEN + tot_len as usize) as u32 {
        return Err(Error::Malformed);
    }
    let saddr = get32(&iph, ip::SADDR);
    let daddr = get32(&iph, ip::DADDR);
    let frag_off = get16(&iph, ip::FRAG_OFF);
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
        ip_id: get16(&iph, ip::ID),
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
    let (sport, dport) = if proto == IPPROTO_TCP {
        let h: [u8; TCP_HLEN] = get(ctx, l4_off)?;
        flow.tcp_flags = h[l4::TCP_FLAGS] & lb_common::ct_flags::TRACKED;
        flow.seq = u32::from_be(get32(&h, l4::TCP_SEQ));
        l4_ports(&h, 0)
    } else {
        let h: [u8; UDP_HLEN] = get(ctx, l4_off)?;
        l4_ports(&h, 0)
    };
    flow.sport = sport;
    flow.dport = dport;
    Ok(Packet::Flow(flow))
}

#[inline(always)]
fn icmp_error_of<C: PacketData>(ctx: &C, saddr: u32, daddr: u32) -> Result<Packet, Error> {
    let icmp_type: u8 = get(ctx, ETH_HLEN + icmp_error::ICMP + icmp::TYPE)?;
    if !is_icmp_error(icmp_type) {
        return Ok(Packet::OtherIpv4);
    }
    // The quoted IPv4 header and the first 8 bytes after it (the ports).
    let Some(q) = read::<C, [u8; icmp_error::MIN_LEN - icmp_error::INNER_IP]>(ctx, ETH_HLEN + icmp_error::INNER_IP) else {
        return Ok(Packet::OtherIpv4);
    };
    let proto = q[ip::PROTO];
    if q[ip::VER_IHL] != IPV4_VER_IHL_NO_OPTIONS || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return Ok(Packet::OtherIpv4);
    }
    let (sport, dport) = l4_ports(&q, IPV4_HLEN);
    Ok(Packet::IcmpError(IcmpError {
        saddr,
        daddr,
        quoted: Quoted { saddr: get32(&q, ip::SADDR), daddr: get32(&q, ip::DADDR), sport, dport, proto },
    }))
}
