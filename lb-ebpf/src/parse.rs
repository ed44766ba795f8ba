//! One parser per family for every hook: Ethernet + IPv4 (`parse`), then
//! a TCP or UDP flow or an ICMP error quoting one; Ethernet + IPv6
//! (`parse6`), then a TCP or UDP flow after at most
//! `ip6::MAX_EXT_HEADERS` extension headers and a fragment header (an
//! ICMPv6 error quoting one: `icmp6_error_at`). Both give a [`Flow`] (or [`IcmpError`]) of their
//! family, which the rest of the path handles alike.

use core::{mem::MaybeUninit, ptr::addr_of_mut};

use lb_common::{
    Family, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, V4, V6,
    packet::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, FRAG6_HLEN, Fragment, ICMP_HLEN, IP_DF, IPV4_HLEN, IPV4_VER_IHL_NO_OPTIONS, IPV6_HLEN, TCP_HLEN,
        UDP_HLEN, eth, frag6_header, fragment, get32, icmp, icmp_error, icmp6, ip, ip6, is_icmp_error, is_icmp6_error, l4, l4_ports,
    },
};

use crate::{
    error::Error,
    packet::{Header, PacketData, read},
};

/// A TCP or UDP packet of family `F`. Addresses and ports are in network
/// order, as on the wire.
pub struct Flow<F: Family = V4> {
    pub saddr: F::Addr,
    pub daddr: F::Addr,
    /// Zero in a later fragment until the fragment map supplies them.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// `ct_flags::TRACKED` of a TCP header.
    pub tcp_flags: u8,
    /// TCP sequence number, host order.
    pub seq: u32,
    /// Offset of the L4 header (after IPv4 options, or IPv6 extension
    /// headers and the fragment header); in a later fragment, of its data.
    pub l4_off: usize,
    pub frag: Fragment,
    /// The identification, network order, for the fragment map: IPv4's
    /// 16 bits, or the IPv6 fragment header's 32 (0 without one). Of the
    /// family's own width: a `u32` for both changed the IPv4 paths' code,
    /// and in IPv4's egress path LLVM then read an uninitialised register on the
    /// path of a packet that is no flow, which the verifier refuses.
    pub ip_id: F::FragId,
    /// IPv4 TOS; IPv6 traffic class.
    pub tos: u8,
    /// IPv4 total length, host order; IPv6: the payload length plus the
    /// fixed header.
    pub tot_len: u16,
    /// The "don't fragment" bit (always set in IPv6: routers never
    /// fragment).
    pub df: bool,
}

impl<F: Family> Clone for Flow<F> {
    #[inline(always)]
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Family> Copy for Flow<F> {}

impl<F: Family> Flow<F> {
    /// Whether the L4 header is in this packet (not a later fragment).
    #[inline(always)]
    pub fn has_l4(&self) -> bool {
        self.frag != Fragment::Later
    }
}

/// The furthest a flow's L4 header starts: after IPv6's fixed header,
/// `ip6::MAX_EXT_HEADERS` extension headers of the longest length (2 KiB),
/// a fragment header and one more destination options header (IPv4's
/// options end far before).
pub const MAX_L4_OFF: usize = ETH_HLEN + IPV6_HLEN + ip6::MAX_EXT_HEADERS * 2048 + FRAG6_HLEN + 2048;

/// The furthest the L4 header an ICMPv6 error quotes starts: the quoted
/// packet's own walk ([`MAX_L4_OFF`]'s) after an ICMPv6 header at most at
/// `MAX_L4_OFF` (the callers' is right after the fixed header).
pub const MAX_QUOTED_L4_OFF: usize = MAX_L4_OFF + ICMP_HLEN + IPV6_HLEN + ip6::MAX_EXT_HEADERS * 2048 + FRAG6_HLEN + 2048;

/// The tuple of the packet an ICMP error quotes.
pub struct Quoted<F: Family = V4> {
    pub saddr: F::Addr,
    pub daddr: F::Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// An ICMP error about a TCP or UDP packet. IPv4: destination
/// unreachable, time exceeded, parameter problem, both IPv4 headers
/// without options (its layout is `lb_common::packet::icmp_error`). IPv6:
/// any ICMPv6 error (packet too big included) right after the fixed
/// header, quoting an IPv6 header followed, after the extension headers
/// `parse6` skips (and a first fragment's fragment header), by TCP or UDP.
pub struct IcmpError<F: Family = V4> {
    pub saddr: F::Addr,
    pub daddr: F::Addr,
    /// Offset of the ICMP header.
    pub icmp_off: usize,
    /// Offset of the quoted TCP or UDP header: after the quoted IPv6
    /// header's extension headers (IPv4: `icmp_error::INNER_L4`, which
    /// its rewrite uses directly).
    pub q_l4_off: usize,
    pub quoted: Quoted<F>,
}

impl<F: Family> Clone for Quoted<F> {
    #[inline(always)]
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Family> Copy for Quoted<F> {}

impl<F: Family> Clone for IcmpError<F> {
    #[inline(always)]
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Family> Copy for IcmpError<F> {}

/// What a parser found: `parse` answers for IPv4 (`parse6` writes an IPv6
/// flow into memory of the caller's).
pub enum Packet<F: Family = V4> {
    /// Not of the parser's family (ARP, the other IP family, a VLAN tag,
    /// ...).
    OtherEthertype,
    Flow(Flow<F>),
    /// IPv4 (ICMPv6 errors: [`icmp6_error_at`]).
    IcmpError(IcmpError),
    /// Any other packet of the family (ICMP echo, other protocols, errors
    /// we do not translate, IPv6 extension headers beyond the walk).
    OtherIp,
}

/// Copies a `T` out of the packet at `off`; a packet too short for it is
/// malformed.
#[inline(always)]
fn get<C: PacketData, T: Copy>(ctx: &C, off: usize) -> Result<T, Error> {
    read(ctx, off).ok_or(Error::Malformed)
}

/// The `N` header bytes at `off`, read in place (`Header`); a packet too
/// short for them is malformed.
#[inline(always)]
fn header<C: PacketData, const N: usize>(ctx: &C, off: usize) -> Result<Header<N>, Error> {
    Header::at(ctx, off).ok_or(Error::Malformed)
}

/// Parses the headers. A packet shorter than its IPv4 total length is
/// truncated: the stack drops it, and so it is left alone
/// (`Error::Malformed`).
#[inline(always)]
pub fn parse<C: PacketData>(ctx: &C) -> Result<Packet<V4>, Error> {
    if get::<C, u16>(ctx, eth::ETHERTYPE.start)? != ETH_P_IP.to_be() {
        return Ok(Packet::OtherEthertype);
    }
    let iph = header::<C, IPV4_HLEN>(ctx, ETH_HLEN)?;
    let ver_ihl = iph.u8(ip::VER_IHL);
    if ver_ihl >> 4 != 4 {
        return Err(Error::Malformed);
    }
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN {
        return Err(Error::Malformed);
    }
    let tot_len = u16::from_be(iph.u16(ip::TOT_LEN));
    // BIG TCP super-packets carry 0 here; their length is the skb's.
    if ctx.len() < (ETH_HLEN + tot_len as usize) as u32 {
        return Err(Error::Malformed);
    }
    let saddr = iph.u32(ip::SADDR);
    let daddr = iph.u32(ip::DADDR);
    let frag_off = iph.u16(ip::FRAG_OFF);
    let frag = fragment(frag_off);
    let proto = iph.u8(ip::PROTO);
    if proto == IPPROTO_ICMP {
        if ihl != IPV4_HLEN || frag != Fragment::No {
            return Ok(Packet::OtherIp);
        }
        return icmp_error_of(ctx, saddr, daddr);
    }
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Ok(Packet::OtherIp);
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
        ip_id: iph.u16(ip::ID),
        tos: iph.u8(ip::TOS),
        tot_len,
        df: u16::from_be(frag_off) & IP_DF != 0,
    };
    if frag == Fragment::Later {
        return Ok(Packet::Flow(flow));
    }
    l4_header(ctx, l4_off, proto, &mut flow)?;
    Ok(Packet::Flow(flow))
}

/// Reads the TCP or UDP header at `l4_off` into `flow`: ports, and for
/// TCP the tracked flags and sequence number. The whole L4 header must be
/// there, including the checksum we rewrite. Its fields are read through
/// one bounds-checked pointer (`Header`): a second pointer at a variable
/// offset would be a new packet pointer the verifier has not seen checked.
#[inline(always)]
fn l4_header<C: PacketData, F: Family>(ctx: &C, l4_off: usize, proto: u8, flow: &mut Flow<F>) -> Result<(), Error> {
    let (sport, dport) = if proto == IPPROTO_TCP {
        let h = header::<C, TCP_HLEN>(ctx, l4_off)?;
        flow.tcp_flags = h.u8(l4::TCP_FLAGS) & lb_common::ct_flags::TRACKED;
        flow.seq = u32::from_be(h.u32(l4::TCP_SEQ));
        (h.u16(l4::SPORT), h.u16(l4::DPORT))
    } else {
        let h = header::<C, UDP_HLEN>(ctx, l4_off)?;
        (h.u16(l4::SPORT), h.u16(l4::DPORT))
    };
    flow.sport = sport;
    flow.dport = dport;
    Ok(())
}

#[inline(always)]
fn icmp_error_of<C: PacketData>(ctx: &C, saddr: u32, daddr: u32) -> Result<Packet<V4>, Error> {
    let icmp_type: u8 = get(ctx, ETH_HLEN + icmp_error::ICMP + icmp::TYPE)?;
    if !is_icmp_error(icmp_type) {
        return Ok(Packet::OtherIp);
    }
    // The quoted IPv4 header and the first 8 bytes after it (the ports).
    let Some(q) = read::<C, [u8; icmp_error::MIN_LEN - icmp_error::INNER_IP]>(ctx, ETH_HLEN + icmp_error::INNER_IP) else {
        return Ok(Packet::OtherIp);
    };
    let proto = q[ip::PROTO];
    if q[ip::VER_IHL] != IPV4_VER_IHL_NO_OPTIONS || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return Ok(Packet::OtherIp);
    }
    // A quoted later fragment has data where the ports would be: it passes
    // untouched, as ICMPv6's does and as the host's conntrack leaves it
    // (routers send no error about one, RFC 1812 4.3.2.7).
    if fragment(u16::from_ne_bytes([q[ip::FRAG_OFF.start], q[ip::FRAG_OFF.start + 1]])) == Fragment::Later {
        return Ok(Packet::OtherIp);
    }
    let (sport, dport) = l4_ports(&q, IPV4_HLEN);
    Ok(Packet::IcmpError(IcmpError {
        saddr,
        daddr,
        icmp_off: ETH_HLEN + icmp_error::ICMP,
        q_l4_off: ETH_HLEN + icmp_error::INNER_L4,
        quoted: Quoted { saddr: get32(&q, ip::SADDR), daddr: get32(&q, ip::DADDR), sport, dport, proto },
    }))
}

/// Where an IPv6 packet's upper-layer header starts, after the walk over
/// its extension headers ([`l4_at`]).
struct L4At {
    /// The header found there (TCP or UDP, or anything else the walk
    /// stopped at); in a later fragment, its fragment header's next
    /// header.
    proto: u8,
    /// Its offset; in a later fragment, of the fragment's data.
    l4_off: usize,
    frag: Fragment,
    /// The fragment header's identification (network order), 0 without
    /// one.
    ip_id: u32,
}

/// The extension header walk of an IPv6 packet whose fixed header says
/// `next` and ends at `off`: up to `ip6::MAX_EXT_HEADERS` hop-by-hop,
/// routing and destination options headers, then a fragment header if
/// there is one, and in a first fragment a destination options header
/// after it (the fragmentable part's only one before the L4 header, RFC
/// 8200 4.1 and 4.5). One walk for a packet ([`parse6`]) and for the
/// packet an ICMPv6 error quotes ([`icmp6_error_at`]). A header cut off
/// by the end of the packet is `Error::Malformed`.
#[inline(always)]
fn l4_at<C: PacketData>(ctx: &C, next: u8, off: usize) -> Result<L4At, Error> {
    let (mut proto, mut l4_off) = (next, off);
    // A constant bound for the verifier, unrolled; each header is read
    // with its own bounds check at a bounded offset (at most
    // MAX_EXT_HEADERS * 2 KiB past `off`).
    let mut i = 0;
    while i < ip6::MAX_EXT_HEADERS && ip6::skippable(proto) {
        let ext: [u8; 2] = get(ctx, l4_off)?;
        proto = ext[0];
        l4_off += ip6::ext_len(ext[1]);
        i += 1;
    }
    let (mut frag, mut ip_id) = (Fragment::No, 0);
    if proto == ip6::FRAGMENT {
        let h = frag6_header(&get(ctx, l4_off)?);
        (proto, frag, ip_id) = (h.next, h.frag, h.id);
        l4_off += FRAG6_HLEN;
        if proto == ip6::DEST_OPTS && frag != Fragment::Later {
            let ext: [u8; 2] = get(ctx, l4_off)?;
            proto = ext[0];
            l4_off += ip6::ext_len(ext[1]);
        }
    }
    Ok(L4At { proto, l4_off, frag, ip_id })
}

/// Parses an IPv6 packet: the fixed header, then up to
/// `ip6::MAX_EXT_HEADERS` hop-by-hop, routing and destination options
/// headers, then a fragment header if there is one, then TCP or UDP
/// (anything after more extension headers than the walk takes passes, as
/// does ICMPv6: errors are read by [`icmp6_error_at`]). A first fragment
/// has its L4 header after the fragment header; a later fragment has none
/// (its ports are 0 until the fragment map lends them, as IPv4's); an
/// atomic fragment (offset 0, no more fragments) is a whole datagram. A
/// packet shorter than its payload length is truncated
/// (`Error::Malformed`), as in [`parse`].
///
/// The flow is written into `out` (the program's per-CPU scratch,
/// `scratch::flow6`), and a reference to it returned; `None`: no TCP or
/// UDP flow of IPv6. Returned by value (as `parse`'s), the flow with its
/// two 16-byte addresses was copied out of the packet, then out of the
/// `Packet` enum, and kept on the IPv6 paths' tight stacks.
#[inline(always)]
pub fn parse6<'a, C: PacketData>(ctx: &C, out: &'a mut MaybeUninit<Flow<V6>>) -> Result<Option<&'a mut Flow<V6>>, Error> {
    if get::<C, u16>(ctx, eth::ETHERTYPE.start)? != ETH_P_IPV6.to_be() {
        return Ok(None);
    }
    // The fixed header's first 8 bytes; the addresses are read into the
    // flow directly (a copy of the whole header would cost 40 bytes of the
    // IPv6 path's stack).
    let iph = header::<C, 8>(ctx, ETH_HLEN)?;
    let ver_tc = u16::from_be(iph.u16(ip6::VER_TC));
    if ver_tc >> 12 != 6 {
        return Err(Error::Malformed);
    }
    let payload_len = u16::from_be(iph.u16(ip6::PAYLOAD_LEN));
    // A jumbogram or BIG TCP super-packet carries 0 here.
    if ctx.len() < (ETH_HLEN + IPV6_HLEN + payload_len as usize) as u32 {
        return Err(Error::Malformed);
    }
    let L4At { proto, l4_off, frag, ip_id } = l4_at(ctx, iph.u8(ip6::NEXT_HEADER), ETH_HLEN + IPV6_HLEN)?;
    // A later fragment whose fragment header names a destination options
    // header learns its L4 protocol from its first fragment (`frag`).
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP && !(frag == Fragment::Later && proto == ip6::DEST_OPTS) {
        return Ok(None);
    }
    let flow = out.write(Flow::<V6> {
        saddr: get(ctx, ETH_HLEN + ip6::SADDR.start)?,
        daddr: get(ctx, ETH_HLEN + ip6::DADDR.start)?,
        sport: 0,
        dport: 0,
        proto,
        tcp_flags: 0,
        seq: 0,
        l4_off,
        frag,
        ip_id,
        tos: (ver_tc >> 4) as u8,
        tot_len: payload_len.wrapping_add(IPV6_HLEN as u16),
        df: true,
    });
    if frag != Fragment::Later {
        l4_header(ctx, l4_off, proto, flow)?;
    }
    Ok(Some(flow))
}

/// The ICMPv6 message at `icmp_off` as an error, when it is one (packet
/// too big included) quoting an IPv6 header followed by TCP or UDP after
/// the extension headers [`parse6`] walks, the same walk (a quoted first
/// fragment's ports follow its fragment header; a quoted later fragment,
/// with no ports, and a quote whose headers are cut off pass untouched),
/// written into `out` (the per-CPU scratch, as [`parse6`]'s flow: four
/// addresses on the stack pushed `xdp6_icmp_error_translate` to 496 of
/// its 512 bytes).
/// Not part of [`parse6`]: one more branch there grew the IPv6 tc path's
/// frame past the verifier's limit.
#[inline(always)]
pub fn icmp6_error_at<'a, C: PacketData>(ctx: &C, icmp_off: usize, out: &'a mut MaybeUninit<IcmpError<V6>>) -> Option<&'a IcmpError<V6>> {
    let icmp_type: u8 = read(ctx, icmp_off + icmp6::TYPE)?;
    if !is_icmp6_error(icmp_type) {
        return None;
    }
    let q_ip = icmp_off + ICMP_HLEN;
    // The quote's extension headers, walked as a packet's; one cut off by
    // the end of the quote (or of what tc pulled) leaves the error alone.
    let q = l4_at(ctx, read(ctx, q_ip + ip6::NEXT_HEADER)?, q_ip + IPV6_HLEN).ok()?;
    let next = q.proto;
    // A later fragment quotes no ports; its first fragment's are in the
    // fragment map under the addresses it arrived with, before the
    // translation this quote shows: it passes untouched.
    if (next != IPPROTO_TCP && next != IPPROTO_UDP) || q.frag == Fragment::Later {
        return None;
    }
    let q_l4 = q.l4_off;
    let ports: [u8; 4] = read(ctx, q_l4)?;
    let (sport, dport) = l4_ports(&ports, 0);
    let e = out.as_mut_ptr();
    // Each address goes from the packet straight into `out`: built as one
    // value, its sixteen words were held (and spilled) until every read
    // had succeeded.
    // SAFETY: `e` points at `out`, valid for writes; every member is
    // written before `out` is handed out as initialised.
    unsafe {
        addr_of_mut!((*e).saddr).write(read(ctx, ETH_HLEN + ip6::SADDR.start)?);
        addr_of_mut!((*e).daddr).write(read(ctx, ETH_HLEN + ip6::DADDR.start)?);
        addr_of_mut!((*e).quoted.saddr).write(read(ctx, q_ip + ip6::SADDR.start)?);
        addr_of_mut!((*e).quoted.daddr).write(read(ctx, q_ip + ip6::DADDR.start)?);
        addr_of_mut!((*e).quoted.sport).write(sport);
        addr_of_mut!((*e).quoted.dport).write(dport);
        addr_of_mut!((*e).quoted.proto).write(next);
        addr_of_mut!((*e).icmp_off).write(icmp_off);
        addr_of_mut!((*e).q_l4_off).write(q_l4);
        Some(out.assume_init_ref())
    }
}
