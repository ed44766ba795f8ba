//! Header layouts and packet builders that the datapath uses and host tests
//! run directly.
//!
//! Packet fields are named as in smoltcp: a multi-byte field is its byte
//! range from the start of its header ([`Field`]), a one-byte field its
//! offset. `ETH_HLEN + ip::SADDR.start` is where the source address of the
//! IPv4 header after an Ethernet header starts, and the range's length is
//! the field's width.

use core::ops::Range;

use crate::csum;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const IPV4_HLEN: usize = 20;
pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const ICMP_HLEN: usize = 8;

/// A multi-byte packet field: its byte range within its header.
pub type Field = Range<usize>;

/// The IPv4 "don't fragment" and "more fragments" bits and the offset mask
/// of the (host order) `frag_off` field.
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;

/// The first byte of an IPv4 header without options: version 4, IHL 5.
pub const IPV4_VER_IHL_NO_OPTIONS: u8 = 0x45;

/// Fields of an Ethernet header.
pub mod eth {
    use super::Field;
    pub const DST: Field = 0..6;
    pub const SRC: Field = 6..12;
    /// Both MAC addresses, destination first.
    pub const ADDRS: Field = 0..12;
    pub const ETHERTYPE: Field = 12..14;
}

/// Fields of an IPv4 header.
pub mod ip {
    use super::Field;
    /// Version (high nibble) and header length in words (low nibble).
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOT_LEN: Field = 2..4;
    pub const ID: Field = 4..6;
    pub const FRAG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    /// TTL and protocol: the 16-bit word of the header checksum that a TTL
    /// change touches.
    pub const TTL_PROTO: Field = 8..10;
    pub const CHECK: Field = 10..12;
    pub const SADDR: Field = 12..16;
    pub const DADDR: Field = 16..20;
}

/// Fields of a TCP or UDP header.
pub mod l4 {
    use super::Field;
    pub const SPORT: Field = 0..2;
    pub const DPORT: Field = 2..4;
    /// Both ports, source first: the first 4 bytes of TCP and UDP alike.
    pub const PORTS: Field = 0..4;
    pub const TCP_SEQ: Field = 4..8;
    pub const TCP_FLAGS: usize = 13;
    pub const TCP_CHECK: Field = 16..18;
    pub const UDP_CHECK: Field = 6..8;
}

/// The 16-bit field `f` of header bytes `h`, as it sits in memory (so a
/// network-order value stays in network order).
#[inline(always)]
pub fn get16<const N: usize>(h: &[u8; N], f: Field) -> u16 {
    debug_assert!(f.len() == 2);
    u16::from_ne_bytes([h[f.start], h[f.start + 1]])
}

/// The 32-bit field `f` of header bytes `h`, as it sits in memory.
#[inline(always)]
pub fn get32<const N: usize>(h: &[u8; N], f: Field) -> u32 {
    debug_assert!(f.len() == 4);
    u32::from_ne_bytes([h[f.start], h[f.start + 1], h[f.start + 2], h[f.start + 3]])
}

/// The source and destination ports of the TCP or UDP header that starts at
/// `at` in `h`, as they sit in memory (network order).
#[inline(always)]
pub fn l4_ports<const N: usize>(h: &[u8; N], at: usize) -> (u16, u16) {
    (get16(h, at + l4::SPORT.start..at + l4::SPORT.end), get16(h, at + l4::DPORT.start..at + l4::DPORT.end))
}

/// The two MAC addresses of an Ethernet header (`eth::ADDRS`) swapped: the
/// header of a frame sent back where this one came from.
#[inline(always)]
pub fn swapped_macs(macs: &[u8; 12]) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[eth::DST].copy_from_slice(&macs[eth::SRC]);
    out[eth::SRC].copy_from_slice(&macs[eth::DST]);
    out
}

/// Offset of the L4 checksum field for a protocol.
#[inline(always)]
pub fn l4_check_offset(proto: u8) -> usize {
    if proto == crate::IPPROTO_TCP { l4::TCP_CHECK.start } else { l4::UDP_CHECK.start }
}

/// Fields of an ICMP header, and the types and codes the datapath uses.
pub mod icmp {
    use super::Field;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECK: Field = 2..4;
    /// "Fragmentation needed": the next-hop MTU (network order).
    pub const MTU: Field = 6..8;

    pub const DEST_UNREACH: u8 = 3;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
    /// Codes of `DEST_UNREACH`.
    pub const PORT_UNREACH: u8 = 3;
    pub const FRAG_NEEDED: u8 = 4;
}

/// Whether an ICMP type is an error that quotes the packet it is about
/// (destination unreachable, time exceeded, parameter problem): those are
/// translated with the flow they belong to.
#[inline(always)]
pub fn is_icmp_error(icmp_type: u8) -> bool {
    icmp_type == icmp::DEST_UNREACH || icmp_type == icmp::TIME_EXCEEDED || icmp_type == icmp::PARAMETER_PROBLEM
}

/// The IPv6 ethertype, and the IPv6 header (no checksum of its own: the
/// L4 checksums cover its addresses through the pseudo header).
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPV6_HLEN: usize = 40;

/// Fields of an IPv6 header.
pub mod ip6 {
    use super::Field;
    /// Version (4 bits), traffic class (8), and the flow label's top 4
    /// bits (the rest of it follows).
    pub const VER_TC: Field = 0..2;
    pub const PAYLOAD_LEN: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SADDR: Field = 8..24;
    pub const DADDR: Field = 24..40;

    /// Extension headers the datapath skips over to find TCP or UDP.
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const DEST_OPTS: u8 = 60;
    /// How many extension headers are skipped at most: a bound the
    /// verifier can see (more are left alone).
    pub const MAX_EXT_HEADERS: usize = 4;

    /// Whether the datapath skips an extension header of type `next`
    /// (hop-by-hop, routing, destination options). A fragment header
    /// ([`super::frag6`]) ends the walk: what follows it is the L4 header
    /// (first fragment) or data (later fragment); any other ends it too.
    #[inline(always)]
    pub fn skippable(next: u8) -> bool {
        next == HOP_BY_HOP || next == ROUTING || next == DEST_OPTS
    }

    /// The length of a skippable extension header from its "header
    /// extension length" byte (its second): 8-byte units beyond the first.
    #[inline(always)]
    pub fn ext_len(hdr_ext_len: u8) -> usize {
        (hdr_ext_len as usize + 1) * 8
    }
}

/// The IPv6 fragment header's length (RFC 8200 4.5): it has no length
/// field of its own.
pub const FRAG6_HLEN: usize = 8;

/// Fields of an IPv6 fragment header (`ip6::FRAGMENT`).
pub mod frag6 {
    use super::Field;
    pub const NEXT_HEADER: usize = 0;
    /// The fragment offset (13 bits, in 8-byte units), two reserved bits
    /// and the M ("more fragments") flag, network order.
    pub const OFFSET_M: Field = 2..4;
    /// The identification, 32 bits (IPv4's is 16).
    pub const ID: Field = 4..8;
    /// The offset and M flag of the (host order) `OFFSET_M` field.
    pub const OFFSET: u16 = 0xfff8;
    pub const MORE: u16 = 0x0001;
}

/// A fragment header's fields the datapath uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frag6 {
    /// The header after it (TCP or UDP in a first fragment).
    pub next: u8,
    pub frag: Fragment,
    /// The identification, as in the packet (network order).
    pub id: u32,
}

/// Reads an IPv6 fragment header. Offset 0 without M is an atomic
/// fragment (RFC 6946): a whole datagram, `Fragment::No`.
#[inline(always)]
pub fn frag6_header(h: &[u8; FRAG6_HLEN]) -> Frag6 {
    Frag6 { next: h[frag6::NEXT_HEADER], frag: fragment6(get16(h, frag6::OFFSET_M)), id: get32(h, frag6::ID) }
}

/// The fragment position from an IPv6 fragment header's offset and M
/// field (network order), as [`fragment`] for IPv4's.
#[inline(always)]
pub fn fragment6(offset_m_be: u16) -> Fragment {
    let f = u16::from_be(offset_m_be);
    if f & frag6::OFFSET != 0 {
        Fragment::Later
    } else if f & frag6::MORE != 0 {
        Fragment::First
    } else {
        Fragment::No
    }
}

/// Where a fragment sits in its datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram.
    No,
    /// The first fragment: it carries the L4 header.
    First,
    /// A later fragment: no L4 header.
    Later,
}

/// The fragment position from the IPv4 `frag_off` field (network order).
#[inline(always)]
pub fn fragment(frag_off_be: u16) -> Fragment {
    let f = u16::from_be(frag_off_be);
    if f & IP_OFFSET != 0 {
        Fragment::Later
    } else if f & IP_MF != 0 {
        Fragment::First
    } else {
        Fragment::No
    }
}

/// A non-first fragment carries no L4 header (offset field != 0).
#[inline(always)]
pub fn is_later_fragment(frag_off_be: u16) -> bool {
    fragment(frag_off_be) == Fragment::Later
}

/// Offsets in an ICMP error about an IPv4 packet whose outer and inner
/// IPv4 headers have no options (the only ones translated): from the start
/// of the outer IPv4 header.
pub mod icmp_error {
    use super::{ICMP_HLEN, IPV4_HLEN};
    pub const ICMP: usize = IPV4_HLEN;
    pub const INNER_IP: usize = ICMP + ICMP_HLEN;
    pub const INNER_L4: usize = INNER_IP + IPV4_HLEN;
    /// The least an error must carry: both headers and the inner ports.
    pub const MIN_LEN: usize = INNER_L4 + 8;
}

/// Length of the quoted datagram in an ICMP error we generate: the
/// original IPv4 header (no options) plus the first 8 bytes of its payload.
pub const ICMP_QUOTE_LEN: usize = IPV4_HLEN + 8;
/// Length of the whole generated ICMP error, IPv4 header included.
pub const ICMP_UNREACH_LEN: usize = IPV4_HLEN + ICMP_HLEN + ICMP_QUOTE_LEN;

/// Builds the IPv4 packet of an ICMP "destination unreachable / port
/// unreachable" (type 3, code 3) answering `quote` (the offending packet's
/// IPv4 header and first 8 payload bytes). This is what kube-proxy's
/// `REJECT` rule sends for a Service without endpoints, for TCP and UDP.
/// The error comes from the address the client dialled.
#[inline(always)]
pub fn icmp_port_unreachable(quote: &[u8; ICMP_QUOTE_LEN]) -> [u8; ICMP_UNREACH_LEN] {
    icmp_error_packet(quote, icmp::DEST_UNREACH, icmp::PORT_UNREACH, 0)
}

/// Builds the IPv4 packet of an ICMP error of `icmp_type`/`code` answering
/// `quote`, from the address the offending packet was sent to. `mtu` goes
/// into the "next-hop MTU" field (for "fragmentation needed"; 0 otherwise).
#[inline(always)]
pub fn icmp_error_packet(quote: &[u8; ICMP_QUOTE_LEN], icmp_type: u8, code: u8, mtu: u16) -> [u8; ICMP_UNREACH_LEN] {
    let mut out = [0u8; ICMP_UNREACH_LEN];
    // IPv4 header.
    out[ip::VER_IHL] = IPV4_VER_IHL_NO_OPTIONS;
    out[ip::TOS] = 0xc0; // precedence "internetwork control", as the kernel's icmp_send
    out[ip::TOT_LEN].copy_from_slice(&(ICMP_UNREACH_LEN as u16).to_be_bytes());
    out[ip::FRAG_OFF].copy_from_slice(&IP_DF.to_be_bytes());
    out[ip::TTL] = 64;
    out[ip::PROTO] = crate::IPPROTO_ICMP;
    // source = the original destination, destination = the original source
    out[ip::SADDR].copy_from_slice(&quote[ip::DADDR]);
    out[ip::DADDR].copy_from_slice(&quote[ip::SADDR]);
    let mut iph = [0u8; IPV4_HLEN];
    iph.copy_from_slice(&out[..IPV4_HLEN]);
    let check = csum::checksum(&iph);
    out[ip::CHECK].copy_from_slice(&check.to_ne_bytes());
    // ICMP header + quote.
    const ICMP: usize = IPV4_HLEN;
    out[ICMP + icmp::TYPE] = icmp_type;
    out[ICMP + icmp::CODE] = code;
    out[ICMP + icmp::MTU.start..ICMP + icmp::MTU.end].copy_from_slice(&mtu.to_be_bytes());
    out[ICMP + ICMP_HLEN..].copy_from_slice(quote);
    let mut icmp = [0u8; ICMP_HLEN + ICMP_QUOTE_LEN];
    icmp.copy_from_slice(&out[ICMP..]);
    let check = csum::checksum(&icmp);
    out[ICMP + icmp::CHECK.start..ICMP + icmp::CHECK.end].copy_from_slice(&check.to_ne_bytes());
    out
}

/// ICMPv6 (RFC 4443): the error types (those that quote the packet they
/// are about) and the codes the datapath uses.
pub mod icmp6 {
    use super::Field;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECK: Field = 2..4;
    /// The type-specific word (the MTU of "packet too big", the pointer of
    /// "parameter problem"), network order.
    pub const INFO: Field = 4..8;

    pub const DEST_UNREACH: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAMETER_PROBLEM: u8 = 4;
    /// Code of `DEST_UNREACH`: what kube-proxy's REJECT sends over IPv6
    /// (icmp6-port-unreachable).
    pub const PORT_UNREACH: u8 = 4;
}

/// Whether an ICMPv6 type is an error that quotes the packet it is about
/// (destination unreachable, packet too big, time exceeded, parameter
/// problem).
#[inline(always)]
pub fn is_icmp6_error(icmp_type: u8) -> bool {
    (icmp6::DEST_UNREACH..=icmp6::PARAMETER_PROBLEM).contains(&icmp_type)
}

/// The IPv6 minimum MTU: an ICMPv6 error is never longer.
pub const IPV6_MIN_MTU: usize = 1280;
/// The headers of an ICMPv6 error (IPv6, ICMPv6) before its quote.
pub const ICMP6_ERROR_HLEN: usize = IPV6_HLEN + ICMP_HLEN;
/// The most of the offending packet an ICMPv6 error quotes: as much as
/// fits in the minimum MTU (RFC 4443 2.4 (c), as the kernel's icmp6_send).
pub const ICMP6_QUOTE_MAX: usize = IPV6_MIN_MTU - ICMP6_ERROR_HLEN;

/// Builds the IPv6 and ICMPv6 headers of an ICMPv6 error of
/// `icmp_type`/`code` (with `info`, host order, as its type-specific word)
/// about a packet whose source and destination addresses are `addrs` (32
/// bytes, as in its header). The error comes from the address the packet
/// was sent to and goes to its sender. It quotes `quote_len` bytes of the
/// packet (from its IPv6 header on), whose one's-complement sum as
/// [`csum::sum_words`] computes it is `quote_sum`: the checksum covers the
/// pseudo header, these headers and the quote.
#[inline(always)]
pub fn icmp6_error_headers(addrs: &[u8; 32], icmp_type: u8, code: u8, info: u32, quote_len: u16, quote_sum: u32) -> [u8; ICMP6_ERROR_HLEN] {
    let mut out = [0u8; ICMP6_ERROR_HLEN];
    let payload_len = (ICMP_HLEN as u16).wrapping_add(quote_len);
    out[ip6::VER_TC.start] = 0x60;
    out[ip6::PAYLOAD_LEN].copy_from_slice(&payload_len.to_be_bytes());
    out[ip6::NEXT_HEADER] = crate::IPPROTO_ICMPV6;
    out[ip6::HOP_LIMIT] = 64;
    out[ip6::SADDR].copy_from_slice(&addrs[16..32]);
    out[ip6::DADDR].copy_from_slice(&addrs[0..16]);
    let mut icmp = [0u8; ICMP_HLEN];
    icmp[icmp6::TYPE] = icmp_type;
    icmp[icmp6::CODE] = code;
    icmp[icmp6::INFO].copy_from_slice(&info.to_be_bytes());
    // The pseudo header: both addresses (their order does not change the
    // sum), the upper-layer length and the next header, as 32-bit words.
    let mut pseudo = [0u8; 8];
    pseudo[2..4].copy_from_slice(&payload_len.to_be_bytes());
    pseudo[7] = crate::IPPROTO_ICMPV6;
    let sum = csum::sum_words(&pseudo, csum::sum_words(&icmp, csum::sum_words(addrs, quote_sum)));
    let check = !csum::fold(sum);
    icmp[icmp6::CHECK].copy_from_slice(&check.to_ne_bytes());
    out[IPV6_HLEN..].copy_from_slice(&icmp);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_unreachable_layout() {
        let mut quote = [0u8; ICMP_QUOTE_LEN];
        quote[0] = 0x45;
        quote[ip::PROTO] = crate::IPPROTO_UDP;
        quote[ip::SADDR].copy_from_slice(&[10, 244, 0, 11]);
        quote[ip::DADDR].copy_from_slice(&[10, 96, 0, 10]);
        quote[20..24].copy_from_slice(&[0x9c, 0x40, 0, 53]);
        let out = icmp_port_unreachable(&quote);
        assert_eq!(&out[ip::SADDR], &[10, 96, 0, 10]);
        assert_eq!(&out[ip::DADDR], &[10, 244, 0, 11]);
        assert_eq!(out[..2], [0x45, 0xc0]);
        assert_eq!(&out[ip::FRAG_OFF], &[0x40, 0], "DF");
        assert_eq!(out[ip::TTL], 64);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]) as usize, ICMP_UNREACH_LEN);
        assert_eq!(out[ip::PROTO], 1);
        assert_eq!(&out[20..22], &[3, 3]);
        assert_eq!(&out[28..], &quote);
        // Both checksums verify: the sum over a checked region is 0xffff.
        let mut iph = [0u8; 20];
        iph.copy_from_slice(&out[..20]);
        assert_eq!(csum::fold(csum::sum_words(&iph, 0)), 0xffff);
        let mut icmp = [0u8; 36];
        icmp.copy_from_slice(&out[20..]);
        assert_eq!(csum::fold(csum::sum_words(&icmp, 0)), 0xffff);
    }

    #[test]
    fn fragments() {
        assert!(!is_later_fragment(0x4000u16.to_be())); // DF only
        assert!(!is_later_fragment(0x2000u16.to_be())); // MF, first fragment
        assert!(is_later_fragment(0x0001u16.to_be()));
        assert_eq!(fragment(0x4000u16.to_be()), Fragment::No);
        assert_eq!(fragment(0x2000u16.to_be()), Fragment::First);
        assert_eq!(fragment(0x2001u16.to_be()), Fragment::Later);
        assert_eq!(fragment(0x0001u16.to_be()), Fragment::Later, "the last fragment has no MF");
    }

    #[test]
    fn ipv6_fragment_headers() {
        // RFC 8200 4.5: next header, reserved, offset (13 bits) | res (2) |
        // M, identification. UDP, offset 1232 bytes (154 units), M set.
        let h = [17, 0, 0x04, 0xd1, 0x12, 0x34, 0x56, 0x78];
        let f = frag6_header(&h);
        assert_eq!((f.next, f.frag), (17, Fragment::Later));
        assert_eq!(u32::from_be(f.id), 0x1234_5678);
        assert_eq!(u16::from_be(get16(&h, frag6::OFFSET_M)) >> 3, 154);
        // The last fragment: an offset, no M.
        assert_eq!(frag6_header(&[17, 0, 0x04, 0xd0, 0, 0, 0, 1]).frag, Fragment::Later);
        // The first: offset 0, M.
        let first = frag6_header(&[6, 0, 0, 1, 0, 0, 0, 9]);
        assert_eq!((first.next, first.frag, u32::from_be(first.id)), (6, Fragment::First, 9));
        // Offset 0 and no M: an atomic fragment, a whole datagram. The
        // reserved bits change nothing.
        assert_eq!(frag6_header(&[17, 0xff, 0, 0, 0, 0, 0, 2]).frag, Fragment::No);
        assert_eq!(fragment6(0x0006u16.to_be()), Fragment::No, "reserved bits only");
        assert_eq!(fragment6(0x0007u16.to_be()), Fragment::First);
        assert_eq!(fragment6(0x0008u16.to_be()), Fragment::Later, "the lowest offset, 8 bytes");
        assert_eq!((frag6::NEXT_HEADER, frag6::OFFSET_M, frag6::ID.end), (0, 2..4, FRAG6_HLEN));
    }

    #[test]
    fn frag_needed_carries_the_mtu() {
        let mut quote = [0u8; ICMP_QUOTE_LEN];
        quote[0] = 0x45;
        quote[ip::SADDR].copy_from_slice(&[192, 168, 60, 100]);
        quote[ip::DADDR].copy_from_slice(&[192, 168, 50, 1]);
        let out = icmp_error_packet(&quote, icmp::DEST_UNREACH, icmp::FRAG_NEEDED, 1400);
        assert_eq!(&out[20..22], &[3, 4]);
        assert_eq!(u16::from_be_bytes([out[26], out[27]]), 1400);
        let mut icmp = [0u8; 36];
        icmp.copy_from_slice(&out[20..]);
        assert_eq!(csum::fold(csum::sum_words(&icmp, 0)), 0xffff);
        assert!(is_icmp_error(3) && is_icmp_error(11) && is_icmp_error(12) && !is_icmp_error(8));
    }

    #[test]
    fn fields() {
        // The offsets of the kernel's struct iphdr, tcphdr, udphdr, icmphdr.
        assert_eq!((ip::TOT_LEN, ip::ID, ip::FRAG_OFF, ip::CHECK), (2..4, 4..6, 6..8, 10..12));
        assert_eq!((ip::SADDR, ip::DADDR, ip::TTL_PROTO), (12..16, 16..20, ip::TTL..ip::PROTO + 1));
        assert_eq!((l4::SPORT.end, l4::DPORT), (l4::DPORT.start, 2..4));
        assert_eq!(l4::PORTS, l4::SPORT.start..l4::DPORT.end);
        assert_eq!((eth::ADDRS.start, eth::ADDRS.end, eth::SRC.start), (eth::DST.start, eth::SRC.end, eth::DST.end));
        assert_eq!(eth::ETHERTYPE.end, ETH_HLEN);
        assert_eq!((l4_check_offset(crate::IPPROTO_TCP), l4_check_offset(crate::IPPROTO_UDP)), (16, 6));
        const { assert!(l4::TCP_CHECK.end <= TCP_HLEN && l4::UDP_CHECK.end <= UDP_HLEN && icmp::MTU.end <= ICMP_HLEN) };
    }

    #[test]
    fn field_reads() {
        let h: [u8; 24] = [0x45, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 64, 6, 0xab, 0xcd, 10, 244, 0, 11, 10, 96, 0, 10, 0x9c, 0x40, 0, 80];
        assert_eq!(get16(&h, ip::TOT_LEN), 60u16.to_be());
        assert_eq!(get16(&h, ip::CHECK), u16::from_be_bytes([0xab, 0xcd]).to_be());
        assert_eq!(get32(&h, ip::SADDR), u32::from_be_bytes([10, 244, 0, 11]).to_be());
        assert_eq!(get32(&h, ip::DADDR), u32::from_be_bytes([10, 96, 0, 10]).to_be());
        assert_eq!(l4_ports(&h, IPV4_HLEN), (40_000u16.to_be(), 80u16.to_be()));
    }

    #[test]
    fn icmp6_error_checksum_covers_pseudo_header_headers_and_quote() {
        let mut quote = [0u8; 61];
        quote[0] = 0x60;
        for (i, b) in quote.iter_mut().enumerate().skip(1) {
            *b = (i * 7) as u8;
        }
        let mut addrs = [0u8; 32];
        addrs.copy_from_slice(&quote[8..40]);
        let out = icmp6_error_headers(&addrs, icmp6::DEST_UNREACH, icmp6::PORT_UNREACH, 0, 61, csum::sum_words(&quote, 0));
        assert_eq!(&out[8..24], &quote[24..40], "from the dialled address");
        assert_eq!(&out[24..40], &quote[8..24], "to the sender");
        assert_eq!((out[0], out[6], out[7]), (0x60, 58, 64));
        assert_eq!(u16::from_be_bytes([out[4], out[5]]), 8 + 61);
        assert_eq!(&out[40..42], &[1, 4]);
        // RFC 1071 over the pseudo header and the whole message, big-endian
        // words, written out here: a valid checksum sums to 0xffff.
        let mut msg = out[40..].to_vec();
        msg.extend_from_slice(&quote);
        let mut all = out[8..40].to_vec();
        all.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        all.extend_from_slice(&[0, 0, 0, 58]);
        all.extend_from_slice(&msg);
        let mut sum: u32 = 0;
        for c in all.chunks(2) {
            sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        assert!(is_icmp6_error(1) && is_icmp6_error(2) && is_icmp6_error(4) && !is_icmp6_error(128) && !is_icmp6_error(0));
        assert_eq!(ICMP6_QUOTE_MAX, 1232);
    }

    #[test]
    fn macs_swap() {
        let macs = [1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16];
        assert_eq!(swapped_macs(&macs), [11, 12, 13, 14, 15, 16, 1, 2, 3, 4, 5, 6]);
        assert_eq!(swapped_macs(&swapped_macs(&macs)), macs);
    }
}
