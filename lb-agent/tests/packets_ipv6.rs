//! IPv6 ClusterIP packet fixtures through BPF_PROG_TEST_RUN, for the tc
//! programs of pod interfaces (ingress: packets leaving a pod; egress:
//! packets on their way to a client): DNAT, conntrack and reverse NAT of
//! TCP and UDP, extension headers, truncations. The IPv6 frontends are
//! written straight into the `LB6_*` maps (`common::v6::install`);
//! expected packets are built from scratch by etherparse, so its checksum
//! code checks the datapath's incremental updates (pseudo header
//! included) independently.

mod common;

use std::{
    collections::BTreeMap,
    net::{Ipv6Addr, SocketAddrV6},
};

use common::{
    Loaded,
    fixture::{Expect, Fixture, Hook, check_all},
    hex, kernel_tests_enabled, v6,
};
use etherparse::{IpNumber, Ipv6Extensions, Ipv6FragmentHeader, Ipv6RawExtHeader};
use lb_agent::model::Desired;
use lb_common::{CT_REPLY, CT_SERVICE, Ct6Key, IPPROTO_TCP, IPPROTO_UDP, ipv6, stat, svc_flags};
use lb_lab::testrun::TC_ACT_UNSPEC;

fn sa6(s: &str) -> SocketAddrV6 {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

const CLIENT: &str = "[fd00:10:244::b]:40000";
const VIP_TCP: &str = "[fd00:96::a]:80";
const VIP_UDP: &str = "[fd00:96::a]:53";
const BE_TCP: &str = "[fd00:10:244::c]:8080";
const BE_UDP: &str = "[fd00:10:244::c]:5353";

/// The datapath with no IPv4 Service, and IPv6 frontends (IDs below the
/// small test map sizes):
/// - fd00:96::a 80/TCP and 53/UDP -> fd00:10:244::c (8080/5353);
/// - fd00:96::14 80/TCP -> no backends;
/// - fd00:96::1e 80/TCP -> two backends; fd00:96::1f 80/TCP -> the same
///   two, with session affinity.
fn loaded(tag: &str) -> Loaded {
    let mut l = Loaded::new(tag, Desired::default());
    let maps = l.reconciler.maps_mut();
    v6::install(maps, 40, "test/web6:http", sa6(VIP_TCP), IPPROTO_TCP, &[(1, sa6(BE_TCP))], 0);
    v6::install(maps, 41, "test/dns6:dns", sa6(VIP_UDP), IPPROTO_UDP, &[(2, sa6(BE_UDP))], 0);
    v6::install(maps, 42, "test/empty6:http", sa6("[fd00:96::14]:80"), IPPROTO_TCP, &[], 0);
    let two = [(3, sa6("[fd00:10:244::d]:8080")), (4, sa6("[fd00:10:244::e]:8080"))];
    v6::install(maps, 43, "test/two6:http", sa6("[fd00:96::1e]:80"), IPPROTO_TCP, &two, 0);
    v6::install(maps, 44, "test/sticky6:http", sa6("[fd00:96::1f]:80"), IPPROTO_TCP, &two, svc_flags::AFFINITY);
    l
}

fn none() -> Ipv6Extensions {
    Ipv6Extensions::default()
}

/// A hop-by-hop header (PadN) followed by a 16-byte destination options
/// header (PadN), as a sender would put before TCP or UDP.
fn hop_by_hop_and_dest_opts() -> Ipv6Extensions {
    // Option type 1 (PadN) with its length: padding only.
    let hbh = Ipv6RawExtHeader::new_raw(IpNumber::IPV6_DESTINATION_OPTIONS, &[1, 4, 0, 0, 0, 0]).unwrap();
    let dst = Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    Ipv6Extensions { hop_by_hop_options: Some(hbh), destination_options: Some(dst), ..Default::default() }
}

#[test]
fn fixtures() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("v6-fixtures");
    let client = sa6(CLIENT);
    let (vip_tcp, vip_udp, be_tcp, be_udp) = (sa6(VIP_TCP), sa6(VIP_UDP), sa6(BE_TCP), sa6(BE_UDP));
    let payload = b"GET / HTTP/1.1\r\n\r\n";
    // Another client port, with extension headers all the way.
    let ext_client = sa6("[fd00:10:244::b]:40001");
    let exts = hop_by_hop_and_dest_opts;
    let fragment = Ipv6Extensions { fragment: Some(Ipv6FragmentHeader::new(IpNumber::UDP, 0.try_into().unwrap(), true, 7)), ..none() };
    let echo = {
        let b = etherparse::PacketBuilder::ethernet2(lb_lab::testrun::CLIENT_MAC, lb_lab::testrun::NODE_MAC)
            .ipv6(client.ip().octets(), vip_tcp.ip().octets(), 64)
            .icmpv6_echo_request(1, 1);
        let mut v = Vec::new();
        b.write(&mut v, b"ping").unwrap();
        v
    };

    use Hook::{FromPod, ToClient};
    let fixtures = [
        Fixture {
            name: "TCP SYN to an IPv6 ClusterIP is DNATed",
            hook: FromPod,
            input: v6::tcp(client, vip_tcp, "S", 1000, b"", none()),
            expect: Expect::Packet(v6::tcp(client, be_tcp, "S", 1000, b"", none())),
        },
        Fixture {
            name: "the SYN-ACK is reverse-NATed on its way to the client",
            hook: ToClient,
            input: v6::tcp(be_tcp, client, "SA", 5000, b"", none()),
            expect: Expect::Packet(v6::tcp(vip_tcp, client, "SA", 5000, b"", none())),
        },
        Fixture {
            name: "the SYN-ACK leaving the backend's pod is left to egress",
            hook: FromPod,
            input: v6::tcp(be_tcp, client, "SA", 5000, b"", none()),
            expect: Expect::Unchanged,
        },
        Fixture {
            name: "data on the flow follows conntrack",
            hook: FromPod,
            input: v6::tcp(client, vip_tcp, "PA", 1001, payload, none()),
            expect: Expect::Packet(v6::tcp(client, be_tcp, "PA", 1001, payload, none())),
        },
        Fixture {
            name: "UDP to an IPv6 ClusterIP is DNATed",
            hook: FromPod,
            input: v6::udp(client, vip_udp, b"query", none()),
            expect: Expect::Packet(v6::udp(client, be_udp, b"query", none())),
        },
        Fixture {
            name: "the UDP reply is reverse-NATed",
            hook: ToClient,
            input: v6::udp(be_udp, client, b"answer", none()),
            expect: Expect::Packet(v6::udp(vip_udp, client, b"answer", none())),
        },
        Fixture {
            name: "a SYN after hop-by-hop and destination options headers is DNATed",
            hook: FromPod,
            input: v6::tcp(ext_client, vip_tcp, "S", 9, b"", exts()),
            expect: Expect::Packet(v6::tcp(ext_client, be_tcp, "S", 9, b"", exts())),
        },
        Fixture {
            name: "its reply, with the same headers, is reverse-NATed",
            hook: ToClient,
            input: v6::tcp(be_tcp, ext_client, "SA", 77, b"", exts()),
            expect: Expect::Packet(v6::tcp(vip_tcp, ext_client, "SA", 77, b"", exts())),
        },
        Fixture {
            name: "a fragment to the ClusterIP passes (fragments are not translated yet)",
            hook: FromPod,
            input: v6::udp(client, vip_udp, b"12345678", fragment),
            expect: Expect::Unchanged,
        },
        Fixture {
            name: "TCP to an IPv6 service without backends is dropped",
            hook: FromPod,
            input: v6::tcp(client, sa6("[fd00:96::14]:80"), "S", 7, b"", none()),
            expect: Expect::Dropped,
        },
        Fixture {
            name: "an IPv6 ClusterIP on a port no Service defines is dropped, not routed on",
            hook: FromPod,
            input: v6::tcp(client, sa6("[fd00:96::a]:81"), "S", 1, b"", none()),
            expect: Expect::Dropped,
        },
        Fixture {
            name: "a packet between pods passes untouched",
            hook: FromPod,
            input: v6::tcp(client, sa6("[fd00:10:244::d]:8080"), "S", 1, b"", none()),
            expect: Expect::Unchanged,
        },
        Fixture {
            name: "a reply of an unknown flow passes untouched",
            hook: ToClient,
            input: v6::udp(be_udp, sa6("[fd00:10:244::b]:40999"), b"x", none()),
            expect: Expect::Unchanged,
        },
        Fixture { name: "ICMPv6 echo to the ClusterIP passes untouched", hook: FromPod, input: echo, expect: Expect::Unchanged },
    ];
    check_all::<Ipv6Addr>(&mut l, &fixtures);
    assert_eq!(l.stat(stat::REJECT_NO_BACKEND), 1);
    assert_eq!(l.stat(stat::REJECT_UNSERVED_PORT), 1);

    // Conntrack: both entries of each flow, in the IPv6 maps, naming each
    // other's tuple; nothing in the IPv4 ones.
    let maps = l.reconciler.maps();
    assert!(maps.ct.entries().unwrap().is_empty(), "no IPv4 conntrack");
    let tcp: BTreeMap<_, _> = maps.v6.ct_tcp.entries().unwrap().into_iter().map(|(k, v)| (key_text(&k), v)).collect();
    let udp: BTreeMap<_, _> = maps.v6.ct_any.entries().unwrap().into_iter().map(|(k, v)| (key_text(&k), v)).collect();
    assert_eq!(tcp.len(), 4, "two TCP flows, two entries each: {:?}", tcp.keys());
    assert_eq!(udp.len(), 2, "one UDP flow: {:?}", udp.keys());
    let fwd = &tcp[&format!("service {CLIENT} -> {VIP_TCP}")];
    assert_eq!((ipv6(fwd.nat_daddr), u16::from_be(fwd.nat_dport)), (*be_tcp.ip(), 8080));
    assert_eq!((ipv6(fwd.nat_saddr), u16::from_be(fwd.nat_sport)), (*client.ip(), 40000));
    assert_eq!(fwd.frontend_id, 40);
    let rev = &tcp[&format!("reply {BE_TCP} -> {CLIENT}")];
    assert_eq!((ipv6(rev.nat_saddr), u16::from_be(rev.nat_sport)), (*vip_tcp.ip(), 80));
    assert!(udp.contains_key(&format!("service {CLIENT} -> {VIP_UDP}")), "{:?}", udp.keys());
    assert!(udp.contains_key(&format!("reply {BE_UDP} -> {CLIENT}")), "{:?}", udp.keys());
}

fn key_text(k: &Ct6Key) -> String {
    let dir = match k.dir {
        CT_SERVICE => "service",
        CT_REPLY => "reply",
        d => panic!("direction {d}"),
    };
    let s = SocketAddrV6::new(ipv6(k.saddr), u16::from_be(k.sport), 0, 0);
    let d = SocketAddrV6::new(ipv6(k.daddr), u16::from_be(k.dport), 0, 0);
    format!("{dir} {s} -> {d}")
}

#[test]
fn truncated_packets_pass_untouched() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("v6-truncated");
    let plain = v6::tcp(sa6(CLIENT), sa6(VIP_TCP), "S", 1, b"", none());
    let with_exts = v6::tcp(sa6(CLIENT), sa6(VIP_TCP), "S", 1, b"", hop_by_hop_and_dest_opts());
    let mut inputs = Vec::new();
    for full in [&plain, &with_exts] {
        // From a bare Ethernet header on: inside the IPv6 header, the
        // extension headers and the TCP header, where the program must not
        // read past the end (the payload length says more).
        inputs.extend((14..full.len()).map(|len| full[..len].to_vec()));
    }
    // A payload length past the end of the packet.
    let mut long = plain.clone();
    long[18..20].copy_from_slice(&200u16.to_be_bytes());
    inputs.push(long);
    // An extension header whose length points past the end.
    let mut long_ext = with_exts.clone();
    long_ext[14 + 40 + 1] = 200;
    inputs.push(long_ext);
    let mut ran = 0;
    for input in &inputs {
        let len = input.len();
        for (hook, out) in [("ingress", lb_lab::testrun::run_tc(l.tc(), input)), ("egress", lb_lab::testrun::run_tc(l.tc_egress(), input))]
        {
            // BPF_PROG_TEST_RUN may refuse a frame too short for its
            // network header; whatever it runs must pass untouched.
            let Ok(out) = out else {
                assert!(len < 14 + 40, "{len}-byte input refused: {:?}", out.err());
                continue;
            };
            ran += 1;
            assert_eq!(out.verdict, TC_ACT_UNSPEC, "{len}-byte input, {hook}: verdict");
            assert_eq!(hex(&out.packet), hex(input), "{len}-byte input, {hook}: must pass untouched");
        }
    }
    assert!(ran > 2 * (plain.len() - 14 - 40), "the truncations from the IPv6 header on ran: {ran}");
    assert!(l.reconciler.maps().v6.ct_tcp.entries().unwrap().is_empty(), "nothing recorded");
}

#[test]
fn new_flows_spread_each_flow_sticks_and_affinity_holds() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("v6-sticky");
    let vip = sa6("[fd00:96::1e]:80");
    let sticky = sa6("[fd00:96::1f]:80");
    let dst_of = |p: &[u8]| -> [u8; 16] { p[14 + 24..14 + 40].try_into().unwrap() };
    let mut chosen = BTreeMap::<[u8; 16], usize>::new();
    let mut sticky_chosen = BTreeMap::<[u8; 16], usize>::new();
    for port in 20000..20100u16 {
        let client = SocketAddrV6::new(*sa6(CLIENT).ip(), port, 0, 0);
        let first = l.run(&v6::tcp(client, vip, "S", 1, b"", none()));
        let dst = dst_of(&first.packet);
        *chosen.entry(dst).or_default() += 1;
        for flags in ["S", "A", "PA"] {
            let again = l.run(&v6::tcp(client, vip, flags, 1, b"", none()));
            assert_eq!(dst_of(&again.packet), dst, "flow {port} moved on {flags}");
        }
        let s = l.run(&v6::tcp(client, sticky, "S", 1, b"", none()));
        *sticky_chosen.entry(dst_of(&s.packet)).or_default() += 1;
    }
    let two: Vec<[u8; 16]> =
        ["fd00:10:244::d", "fd00:10:244::e"].iter().map(|a| a.parse::<std::net::Ipv6Addr>().unwrap().octets()).collect();
    assert_eq!(chosen.keys().cloned().collect::<Vec<_>>(), two, "both backends take new flows: {chosen:?}");
    assert!(chosen.values().all(|&n| n >= 20), "{chosen:?}");
    assert_eq!(sticky_chosen.len(), 1, "affinity keeps the client on one backend: {sticky_chosen:?}");
}
