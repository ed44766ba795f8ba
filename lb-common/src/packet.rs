//! Header layouts and packet builders that the datapath uses and host tests
//! run directly.

use crate::csum;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const IPV4_HLEN: usize = 20;
pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const ICMP_HLEN: usize = 8;

/// The IPv4 "don't fragment" and "more fragments" bits and the offset mask
/// of the (host order) `frag_off` field.
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;

/// Offsets inside an IPv4 header.
pub mod ip {
    pub const TOS: usize = 1;
    pub const TOT_LEN: usize = 2;
    pub const ID: usize = 4;
    pub const FRAG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CHECK: usize = 10;
    pub const SADDR: usize = 12;
    pub const DADDR: usize = 16;
}

/// Offsets inside a TCP or UDP header.
pub mod l4 {
    pub const SPORT: usize = 0;
    pub const DPORT: usize = 2;
    pub const TCP_SEQ: usize = 4;
    pub const TCP_FLAGS: usize = 13;
    pub const TCP_CHECK: usize = 16;
    pub const UDP_CHECK: usize = 6;
}

/// Offset of the L4 checksum field for a protocol.
#[inline(always)]
pub fn l4_check_offset(proto: u8) -> usize {
    if proto == crate::IPPROTO_TCP {
        l4::TCP_CHECK
    } else {
        l4::UDP_CHECK
    }
}

/// Offsets inside an ICMP header.
pub mod icmp {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECK: usize = 2;
    /// "Fragmentation needed": the next-hop MTU (network order).
    pub const MTU: usize = 6;

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
    out[0] = 0x45;
    out[1] = 0xc0; // precedence "internetwork control", as the kernel's icmp_send
    out[2..4].copy_from_slice(&(ICMP_UNREACH_LEN as u16).to_be_bytes());
    out[6] = 0x40; // DF
    out[ip::TTL] = 64;
    out[ip::PROTO] = crate::IPPROTO_ICMP;
    // source = the original destination, destination = the original source
    let mut i = 0;
    while i < 4 {
        out[ip::SADDR + i] = quote[ip::DADDR + i];
        out[ip::DADDR + i] = quote[ip::SADDR + i];
        i += 1;
    }
    let mut iph = [0u8; IPV4_HLEN];
    iph.copy_from_slice(&out[..IPV4_HLEN]);
    let check = csum::checksum(&iph);
    out[ip::CHECK..ip::CHECK + 2].copy_from_slice(&check.to_ne_bytes());
    // ICMP header + quote.
    out[IPV4_HLEN + icmp::TYPE] = icmp_type;
    out[IPV4_HLEN + icmp::CODE] = code;
    out[IPV4_HLEN + icmp::MTU..IPV4_HLEN + icmp::MTU + 2].copy_from_slice(&mtu.to_be_bytes());
    out[IPV4_HLEN + ICMP_HLEN..].copy_from_slice(quote);
    let mut icmp = [0u8; ICMP_HLEN + ICMP_QUOTE_LEN];
    icmp.copy_from_slice(&out[IPV4_HLEN..]);
    let check = csum::checksum(&icmp);
    out[IPV4_HLEN + 2..IPV4_HLEN + 4].copy_from_slice(&check.to_ne_bytes());
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
        quote[ip::SADDR..ip::SADDR + 4].copy_from_slice(&[10, 244, 0, 11]);
        quote[ip::DADDR..ip::DADDR + 4].copy_from_slice(&[10, 96, 0, 10]);
        quote[20..24].copy_from_slice(&[0x9c, 0x40, 0, 53]);
        let out = icmp_port_unreachable(&quote);
        assert_eq!(&out[ip::SADDR..ip::SADDR + 4], &[10, 96, 0, 10]);
        assert_eq!(&out[ip::DADDR..ip::DADDR + 4], &[10, 244, 0, 11]);
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
    fn frag_needed_carries_the_mtu() {
        let mut quote = [0u8; ICMP_QUOTE_LEN];
        quote[0] = 0x45;
        quote[ip::SADDR..ip::SADDR + 4].copy_from_slice(&[192, 168, 60, 100]);
        quote[ip::DADDR..ip::DADDR + 4].copy_from_slice(&[192, 168, 50, 1]);
        let out = icmp_error_packet(&quote, icmp::DEST_UNREACH, icmp::FRAG_NEEDED, 1400);
        assert_eq!(&out[20..22], &[3, 4]);
        assert_eq!(u16::from_be_bytes([out[26], out[27]]), 1400);
        let mut icmp = [0u8; 36];
        icmp.copy_from_slice(&out[20..]);
        assert_eq!(csum::fold(csum::sum_words(&icmp, 0)), 0xffff);
        assert!(is_icmp_error(3) && is_icmp_error(11) && is_icmp_error(12) && !is_icmp_error(8));
    }
}
