//! Header layouts and packet builders that the datapath uses and host tests
//! run directly.

use crate::csum;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const IPV4_HLEN: usize = 20;
pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const ICMP_HLEN: usize = 8;

/// Offsets inside an IPv4 header.
pub mod ip {
    pub const TOT_LEN: usize = 2;
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

/// A non-first fragment carries no L4 header (offset field != 0).
#[inline(always)]
pub fn is_later_fragment(frag_off_be: u16) -> bool {
    u16::from_be(frag_off_be) & 0x1fff != 0
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
pub fn icmp_port_unreachable(quote: &[u8; ICMP_QUOTE_LEN]) -> [u8; ICMP_UNREACH_LEN] {
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
    out[IPV4_HLEN] = 3; // destination unreachable
    out[IPV4_HLEN + 1] = 3; // port unreachable
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
    }
}
