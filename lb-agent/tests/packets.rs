//! Table-driven packet fixtures through BPF_PROG_TEST_RUN: an input packet
//! and map state in, the expected packet and verdict out. Expected packets
//! are built from scratch by etherparse, so its checksum code verifies the
//! datapath's incremental checksum updates independently.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::{Loaded, assert_checksums_valid, frontend, hex, kernel_tests_enabled};
use etherparse::{Icmpv4Type, NetSlice, SlicedPacket, TransportSlice, icmpv4::DestUnreachableHeader};
use lb_agent::{
    model::Protocol,
    testrun::{self, CLIENT_MAC, NODE_MAC, TC_ACT_OK, TC_ACT_REDIRECT},
};

use common::sa;

const CLIENT: &str = "10.244.0.11:40000";

/// The datapath loaded into a private pin directory, with:
/// - 10.96.0.10:80/TCP and :53/UDP -> one backend 10.244.0.12 (8080/5353);
/// - 10.96.0.20:80/TCP and :53/UDP -> no backends;
/// - 10.96.0.30:80/TCP -> two backends.
fn loaded(tag: &str) -> Loaded {
    Loaded::new(
        tag,
        [
            frontend("10.96.0.10:80", Protocol::Tcp, &["10.244.0.12:8080"]),
            frontend("10.96.0.10:53", Protocol::Udp, &["10.244.0.12:5353"]),
            frontend("10.96.0.20:80", Protocol::Tcp, &[]),
            frontend("10.96.0.20:53", Protocol::Udp, &[]),
            frontend("10.96.0.30:80", Protocol::Tcp, &["10.244.0.13:8080", "10.244.0.14:8080"]),
        ]
        .into_iter()
        .collect(),
    )
}

/// What a fixture expects.
enum Expect {
    /// Verdict OK, packet untouched.
    Unchanged,
    /// Verdict OK, exactly this packet.
    Packet(Vec<u8>),
    /// An ICMP port unreachable from `from` to the sender, quoting the
    /// input, sent back out of the interface (redirect).
    Unreachable { from: Ipv4Addr },
}

struct Fixture {
    name: &'static str,
    input: Vec<u8>,
    expect: Expect,
}

fn check(l: &mut Loaded, f: &Fixture) {
    let out = l.run(&f.input);
    match &f.expect {
        Expect::Unchanged => {
            assert_eq!(out.verdict, TC_ACT_OK, "{}: verdict", f.name);
            assert_eq!(out.packet, f.input, "{}: packet must pass untouched", f.name);
        }
        Expect::Packet(p) => {
            assert_eq!(out.verdict, TC_ACT_OK, "{}: verdict", f.name);
            assert_checksums_valid(f.name, &out.packet);
            assert_eq!(hex(&out.packet), hex(p), "{}: output packet", f.name);
        }
        Expect::Unreachable { from } => {
            assert_eq!(out.verdict, TC_ACT_REDIRECT, "{}: verdict", f.name);
            assert_icmp_unreachable(f.name, &f.input, &out.packet, *from);
        }
    }
}


fn assert_icmp_unreachable(name: &str, input: &[u8], out: &[u8], from: Ipv4Addr) {
    let p = SlicedPacket::from_ethernet(out).unwrap_or_else(|e| panic!("{name}: unparsable ICMP: {e}"));
    let eth = p.link.as_ref().unwrap().to_header().unwrap();
    let eth = match eth {
        etherparse::LinkHeader::Ethernet2(e) => e,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!((eth.source, eth.destination), (NODE_MAC, CLIENT_MAC), "{name}: MACs swapped");
    let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("{name}: not IPv4") };
    let header = ip.header().to_header();
    assert_eq!(header.header_checksum, header.calc_header_checksum(), "{name}: IPv4 checksum");
    let input_ip = &input[14..];
    assert_eq!(Ipv4Addr::from(header.source), from, "{name}: ICMP source is the dialled address");
    assert_eq!(&header.destination[..], &input_ip[12..16], "{name}: sent back to the client");
    let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else { panic!("{name}: not ICMP") };
    assert_eq!(
        icmp.icmp_type(),
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
        "{name}: type 3 code 3"
    );
    let quote = &input_ip[..28];
    assert_eq!(icmp.payload(), quote, "{name}: quotes the IP header and 8 bytes");
    let want = etherparse::Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload());
    assert_eq!(icmp.checksum(), want.checksum, "{name}: ICMP checksum");
}

#[test]
fn fixtures() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("fixtures");
    let client = sa(CLIENT);
    let vip_tcp = sa("10.96.0.10:80");
    let vip_udp = sa("10.96.0.10:53");
    let be_tcp = sa("10.244.0.12:8080");
    let be_udp = sa("10.244.0.12:5353");
    let payload = b"GET / HTTP/1.1\r\n\r\n";

    let mut garbage_version = testrun::udp(client, vip_udp, b"x");
    garbage_version[14] = 0x65; // IP version 6 in an IPv4 ethertype
    let mut bad_ihl = testrun::udp(client, vip_udp, b"x");
    bad_ihl[14] = 0x43; // IHL 3 (< 5)
    let mut arp = testrun::udp(client, vip_udp, b"x");
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let mut later_fragment = testrun::udp(client, vip_udp, b"12345678");
    later_fragment[20..22].copy_from_slice(&0x0001u16.to_be_bytes()); // offset 8 bytes
    let icmp_echo = {
        let b = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
            .ipv4(client.ip().octets(), vip_tcp.ip().octets(), 64)
            .icmpv4_echo_request(1, 1);
        let mut v = Vec::new();
        b.write(&mut v, b"ping").unwrap();
        v
    };
    let mut udp_no_checksum = testrun::udp(client, vip_udp, b"q");
    udp_no_checksum[40..42].copy_from_slice(&[0, 0]);
    let mut udp_no_checksum_out = testrun::udp(client, be_udp, b"q");
    udp_no_checksum_out[40..42].copy_from_slice(&[0, 0]);

    let fixtures = [
        Fixture {
            name: "TCP SYN to a VIP is DNATed",
            input: testrun::tcp(client, vip_tcp, "S", 1000, b""),
            expect: Expect::Packet(testrun::tcp(client, be_tcp, "S", 1000, b"")),
        },
        Fixture {
            name: "the SYN-ACK is reverse-NATed",
            input: testrun::tcp(be_tcp, client, "SA", 5000, b""),
            expect: Expect::Packet(testrun::tcp(vip_tcp, client, "SA", 5000, b"")),
        },
        Fixture {
            name: "data on the flow follows conntrack",
            input: testrun::tcp(client, vip_tcp, "PA", 1001, payload),
            expect: Expect::Packet(testrun::tcp(client, be_tcp, "PA", 1001, payload)),
        },
        Fixture {
            name: "UDP to a VIP is DNATed",
            input: testrun::udp(client, vip_udp, b"query"),
            expect: Expect::Packet(testrun::udp(client, be_udp, b"query")),
        },
        Fixture {
            name: "the UDP reply is reverse-NATed",
            input: testrun::udp(be_udp, client, b"answer"),
            expect: Expect::Packet(testrun::udp(vip_udp, client, b"answer")),
        },
        Fixture {
            name: "UDP without a checksum keeps none",
            input: udp_no_checksum,
            expect: Expect::Packet(udp_no_checksum_out),
        },
        Fixture {
            name: "TCP to a service without backends is rejected",
            input: testrun::tcp(client, sa("10.96.0.20:80"), "S", 7, b""),
            expect: Expect::Unreachable { from: "10.96.0.20".parse().unwrap() },
        },
        Fixture {
            name: "UDP to a service without backends is rejected",
            input: testrun::udp(sa("10.244.0.11:40001"), sa("10.96.0.20:53"), b"a longer payload than the quote"),
            expect: Expect::Unreachable { from: "10.96.0.20".parse().unwrap() },
        },
        Fixture {
            name: "a packet between pods passes untouched",
            input: testrun::tcp(client, sa("10.244.0.13:8080"), "S", 1, b""),
            expect: Expect::Unchanged,
        },
        Fixture {
            name: "a VIP on another port passes untouched",
            input: testrun::tcp(client, sa("10.96.0.10:81"), "S", 1, b""),
            expect: Expect::Unchanged,
        },
        Fixture {
            name: "a reply of an unknown flow passes untouched",
            input: testrun::udp(be_udp, sa("10.244.0.11:40999"), b"x"),
            expect: Expect::Unchanged,
        },
        Fixture { name: "ICMP passes untouched", input: icmp_echo, expect: Expect::Unchanged },
        Fixture { name: "ARP passes untouched", input: arp, expect: Expect::Unchanged },
        Fixture { name: "IP version 6 in an IPv4 frame passes", input: garbage_version, expect: Expect::Unchanged },
        Fixture { name: "IHL below 5 passes", input: bad_ihl, expect: Expect::Unchanged },
        Fixture {
            name: "a later fragment (no L4 header) passes",
            input: later_fragment,
            expect: Expect::Unchanged,
        },
    ];
    for f in &fixtures {
        check(&mut l, f);
    }
}

#[test]
fn truncated_packets_get_a_safe_verdict() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("truncated");
    let full = testrun::tcp(sa(CLIENT), sa("10.96.0.10:80"), "S", 1, b"");
    // BPF_PROG_TEST_RUN itself refuses an IPv4 frame shorter than Ethernet
    // + IPv4 header (EINVAL), so truncation is tried from there on: inside
    // the TCP header, where the program must not read past the end.
    let mut inputs: Vec<Vec<u8>> = (14 + 20..full.len()).map(|len| full[..len].to_vec()).collect();
    // An IHL pointing past the end of the packet.
    let mut long_ihl = full[..14 + 20 + 4].to_vec();
    long_ihl[14] = 0x4f;
    inputs.push(long_ihl);
    for input in &inputs {
        let len = input.len();
        let out = l.run(input);
        assert_eq!(out.verdict, TC_ACT_OK, "{len}-byte prefix: verdict");
        assert_eq!(&out.packet, input, "{len}-byte prefix must pass untouched");
    }
    // Nothing was recorded for them.
    assert!(l.reconciler.maps().ct.entries().unwrap().is_empty());
}

#[test]
fn new_flows_spread_and_each_flow_sticks() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("sticky");
    let vip = sa("10.96.0.30:80");
    let mut chosen = std::collections::BTreeMap::<[u8; 4], usize>::new();
    for port in 20000..20100u16 {
        let client = SocketAddrV4::new("10.244.0.11".parse().unwrap(), port);
        let first = l.run(&testrun::tcp(client, vip, "S", 1, b""));
        let dst: [u8; 4] = first.packet[30..34].try_into().unwrap();
        *chosen.entry(dst).or_default() += 1;
        // The same flow again (a retransmitted SYN, then data) keeps its
        // backend.
        for flags in ["S", "A", "PA"] {
            let again = l.run(&testrun::tcp(client, vip, flags, 1, b""));
            assert_eq!(&again.packet[30..34], &dst, "flow {port} moved on {flags}");
        }
    }
    assert_eq!(chosen.len(), 2, "both backends take new flows: {chosen:?}");
    assert!(chosen.values().all(|&n| n >= 20), "{chosen:?}");
}
