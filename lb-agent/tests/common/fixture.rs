//! The table-driven packet fixture harness of both families: an input
//! packet through one of the pod interfaces' tc programs, and what must
//! come out (the packet untouched, exactly a given packet, a reject, or a
//! drop). What differs by family (the checksums to recompute, the shape of
//! a reject) is [`PacketFamily`], implemented by `Ipv4Addr` and `Ipv6Addr`.

use std::{
    fmt::Debug,
    net::{Ipv4Addr, Ipv6Addr},
};

use etherparse::{LinkHeader, NetSlice, SlicedPacket, TransportSlice};
use lb_lab::testrun::{CLIENT_MAC, NODE_MAC, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC};

use super::{Loaded, hex};

/// What the harness checks differently for each IP family.
pub trait PacketFamily: Copy + Debug {
    /// Recomputes the output's checksums from scratch (etherparse).
    fn assert_checksums_valid(name: &str, packet: &[u8]);
    /// Asserts that `out` is the "port unreachable" reject, from `from`,
    /// of `input`, sent back to its sender.
    fn assert_unreachable(name: &str, input: &[u8], out: &[u8], from: Self);
}

/// What a fixture expects.
pub enum Expect<A: PacketFamily> {
    /// Passed on ("next"), untouched.
    Unchanged,
    /// Passed on, exactly this packet (with valid checksums).
    Packet(Vec<u8>),
    /// A port unreachable from `from` to the sender, quoting the input,
    /// sent back out of the interface (redirect).
    Unreachable { from: A },
    /// Answered: exactly this packet, sent back out of the interface
    /// (redirect).
    Answer(Vec<u8>),
    /// Dropped.
    Dropped,
}

/// Which program a fixture's packet goes through.
#[derive(Clone, Copy)]
pub enum Hook {
    /// Leaving a pod (its interface's ingress).
    FromPod,
    /// On its way to the client (an interface's egress).
    ToClient,
}

pub struct Fixture<A: PacketFamily> {
    pub name: &'static str,
    pub hook: Hook,
    pub input: Vec<u8>,
    pub expect: Expect<A>,
}

/// Runs one fixture and asserts its expectation.
pub fn check<A: PacketFamily>(l: &mut Loaded, f: &Fixture<A>) {
    let out = match f.hook {
        Hook::FromPod => l.run(&f.input),
        Hook::ToClient => l.run_egress(&f.input),
    };
    match &f.expect {
        Expect::Unchanged => {
            assert_eq!(out.verdict, TC_ACT_UNSPEC, "{}: verdict", f.name);
            assert_eq!(hex(&out.packet), hex(&f.input), "{}: packet must pass untouched", f.name);
        }
        Expect::Packet(p) => {
            assert_eq!(out.verdict, TC_ACT_UNSPEC, "{}: verdict", f.name);
            A::assert_checksums_valid(f.name, &out.packet);
            assert_eq!(hex(&out.packet), hex(p), "{}: output packet", f.name);
        }
        Expect::Unreachable { from } => {
            assert_eq!(out.verdict, TC_ACT_REDIRECT, "{}: verdict", f.name);
            A::assert_unreachable(f.name, &f.input, &out.packet, *from);
        }
        Expect::Answer(p) => {
            assert_eq!(out.verdict, TC_ACT_REDIRECT, "{}: verdict", f.name);
            assert_eq!(hex(&out.packet), hex(p), "{}: answer", f.name);
        }
        Expect::Dropped => assert_eq!(out.verdict, TC_ACT_SHOT, "{}: verdict", f.name),
    }
}

/// Runs every fixture, in order (later ones see the conntrack state the
/// earlier ones made).
pub fn check_all<A: PacketFamily>(l: &mut Loaded, fixtures: &[Fixture<A>]) {
    for f in fixtures {
        check(l, f);
    }
}

/// The output's Ethernet header: the input's, addresses swapped.
fn assert_sent_back(name: &str, p: &SlicedPacket) {
    let eth = match p.link.as_ref().and_then(|l| l.to_header()) {
        Some(LinkHeader::Ethernet2(e)) => e,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!((eth.source, eth.destination), (NODE_MAC, CLIENT_MAC), "{name}: MACs swapped");
}

impl PacketFamily for Ipv4Addr {
    fn assert_checksums_valid(name: &str, packet: &[u8]) {
        super::assert_checksums_valid(name, packet)
    }

    /// ICMP type 3 code 3, quoting the IPv4 header and 8 bytes.
    fn assert_unreachable(name: &str, input: &[u8], out: &[u8], from: Ipv4Addr) {
        use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
        let p = SlicedPacket::from_ethernet(out).unwrap_or_else(|e| panic!("{name}: unparsable ICMP: {e}"));
        assert_sent_back(name, &p);
        let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("{name}: not IPv4") };
        let header = ip.header().to_header();
        assert_eq!(header.header_checksum, header.calc_header_checksum(), "{name}: IPv4 checksum");
        let input_ip = &input[14..];
        assert_eq!(Ipv4Addr::from(header.source), from, "{name}: ICMP source is the dialled address");
        assert_eq!(&header.destination[..], &input_ip[12..16], "{name}: sent back to the client");
        let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else { panic!("{name}: not ICMP") };
        assert_eq!(icmp.icmp_type(), Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port), "{name}: type 3 code 3");
        let quote = &input_ip[..28];
        assert_eq!(icmp.payload(), quote, "{name}: quotes the IP header and 8 bytes");
        let want = etherparse::Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload());
        assert_eq!(icmp.checksum(), want.checksum, "{name}: ICMP checksum");
    }
}

impl PacketFamily for Ipv6Addr {
    fn assert_checksums_valid(name: &str, packet: &[u8]) {
        super::v6::assert_checksums_valid(name, packet)
    }

    /// ICMPv6 type 1 code 4 (RFC 4443 3.1), quoting the start of the
    /// input's IPv6 packet: at least its IPv6 header and 8 bytes, at most
    /// what fits the minimum MTU (1280 bytes).
    fn assert_unreachable(name: &str, input: &[u8], out: &[u8], from: Ipv6Addr) {
        use etherparse::{Icmpv6Type, icmpv6::DestUnreachableCode};
        let p = SlicedPacket::from_ethernet(out).unwrap_or_else(|e| panic!("{name}: unparsable ICMPv6: {e}"));
        assert_sent_back(name, &p);
        let Some(NetSlice::Ipv6(ip)) = &p.net else { panic!("{name}: not IPv6") };
        let input_ip = &input[14..];
        let (src, dst) = (ip.header().source(), ip.header().destination());
        assert_eq!(Ipv6Addr::from(src), from, "{name}: ICMPv6 source is the dialled address");
        assert_eq!(&dst[..], &input_ip[8..24], "{name}: sent back to the client");
        assert!(out.len() - 14 <= 1280, "{name}: {} bytes exceed the minimum MTU", out.len() - 14);
        let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else { panic!("{name}: not ICMPv6") };
        assert_eq!(icmp.icmp_type(), Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port), "{name}: type 1 code 4");
        assert!(icmp.is_checksum_valid(src, dst), "{name}: ICMPv6 checksum");
        let quote = icmp.payload();
        assert!(quote.len() >= (40 + 8).min(input_ip.len()), "{name}: quotes {} bytes", quote.len());
        assert_eq!(hex(quote), hex(&input_ip[..quote.len()]), "{name}: quotes the start of the input");
    }
}
