//! Table-driven packet fixtures through BPF_PROG_TEST_RUN: an input packet
//! and map state in, the expected packet and verdict out, for the tc
//! programs of pod interfaces (ingress: packets leaving a pod; egress:
//! packets on their way to a client). Expected packets are built from
//! scratch by etherparse, so its checksum code verifies the datapath's
//! incremental checksum updates independently.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::{
    Loaded, assert_checksums_valid, count_answered, filter_kinds,
    fixture::{Expect, Fixture, Hook, check, check_all},
    frontend, hex, kernel_tests_enabled, wipe_filter,
};
use lb_agent::model::{Desired, Protocol};
use lb_common::{CT_SERVICE, ct_entry_flags, stat, vip_filter, vip_flags};
use lb_lab::testrun::{self, CLIENT_MAC, NODE_MAC, TC_ACT_REDIRECT, TC_ACT_UNSPEC};

use common::sa;

const CLIENT: &str = "10.244.0.11:40000";

/// The datapath loaded into a private pin directory, with:
/// - 10.96.0.10:80/TCP and :53/UDP -> one backend 10.244.0.12 (8080/5353);
/// - 10.96.0.20:80/TCP and :53/UDP -> no backends;
/// - 10.96.0.30:80/TCP -> two backends.
fn loaded(tag: &str) -> Loaded {
    Loaded::new(tag, desired())
}

fn desired() -> Desired {
    [
        frontend("10.96.0.10:80", Protocol::Tcp, &["10.244.0.12:8080"]),
        frontend("10.96.0.10:53", Protocol::Udp, &["10.244.0.12:5353"]),
        frontend("10.96.0.20:80", Protocol::Tcp, &[]),
        frontend("10.96.0.20:53", Protocol::Udp, &[]),
        frontend("10.96.0.30:80", Protocol::Tcp, &["10.244.0.13:8080", "10.244.0.14:8080"]),
    ]
    .into_iter()
    .collect()
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
    let later = |to: SocketAddrV4| {
        let mut p = testrun::udp(client, to, b"12345678");
        p[20..22].copy_from_slice(&0x0001u16.to_be_bytes()); // offset 8 bytes
        let sum = common::ipv4_checksum(&{
            let mut h = p[14..34].to_vec();
            h[10..12].copy_from_slice(&[0, 0]);
            h
        });
        p[24..26].copy_from_slice(&sum.to_be_bytes());
        p
    };
    let later_fragment = later(vip_udp);
    let later_fragment_elsewhere = later(sa("10.244.0.13:53"));
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

    use Hook::{FromPod, ToClient};
    let fixtures = [
        Fixture {
            name: "TCP SYN to a VIP is DNATed",
            hook: FromPod,
            input: testrun::tcp(client, vip_tcp, "S", 1000, b""),
            expect: Expect::Packet(testrun::tcp(client, be_tcp, "S", 1000, b"")),
        },
        Fixture {
            name: "the SYN-ACK is reverse-NATed on its way to the client",
            hook: ToClient,
            input: testrun::tcp(be_tcp, client, "SA", 5000, b""),
            expect: Expect::Packet(testrun::tcp(vip_tcp, client, "SA", 5000, b"")),
        },
        Fixture {
            name: "the SYN-ACK leaving the backend's pod is left to egress",
            hook: FromPod,
            input: testrun::tcp(be_tcp, client, "SA", 5000, b""),
            expect: Expect::Unchanged,
        },
        Fixture {
            name: "data on the flow follows conntrack",
            hook: FromPod,
            input: testrun::tcp(client, vip_tcp, "PA", 1001, payload),
            expect: Expect::Packet(testrun::tcp(client, be_tcp, "PA", 1001, payload)),
        },
        Fixture {
            name: "UDP to a VIP is DNATed",
            hook: FromPod,
            input: testrun::udp(client, vip_udp, b"query"),
            expect: Expect::Packet(testrun::udp(client, be_udp, b"query")),
        },
        Fixture {
            name: "the UDP reply is reverse-NATed",
            hook: ToClient,
            input: testrun::udp(be_udp, client, b"answer"),
            expect: Expect::Packet(testrun::udp(vip_udp, client, b"answer")),
        },
        Fixture {
            name: "UDP without a checksum keeps none",
            hook: FromPod,
            input: udp_no_checksum,
            expect: Expect::Packet(udp_no_checksum_out),
        },
        Fixture {
            name: "TCP to a service without backends is rejected",
            hook: FromPod,
            input: testrun::tcp(client, sa("10.96.0.20:80"), "S", 7, b""),
            expect: Expect::Unreachable { from: "10.96.0.20".parse().unwrap() },
        },
        Fixture {
            name: "UDP to a service without backends is rejected",
            hook: FromPod,
            input: testrun::udp(sa("10.244.0.11:40001"), sa("10.96.0.20:53"), b"a longer payload than the quote"),
            expect: Expect::Unreachable { from: "10.96.0.20".parse().unwrap() },
        },
        Fixture {
            name: "a packet between pods passes untouched",
            hook: FromPod,
            input: testrun::tcp(client, sa("10.244.0.13:8080"), "S", 1, b""),
            expect: Expect::Unchanged,
        },
        Fixture {
            name: "a ClusterIP on a port no Service defines is rejected, not routed on",
            hook: FromPod,
            input: testrun::tcp(client, sa("10.96.0.10:81"), "S", 1, b""),
            expect: Expect::Unreachable { from: "10.96.0.10".parse().unwrap() },
        },
        Fixture {
            name: "a reply of an unknown flow passes untouched",
            hook: ToClient,
            input: testrun::udp(be_udp, sa("10.244.0.11:40999"), b"x"),
            expect: Expect::Unchanged,
        },
        Fixture { name: "ICMP echo passes untouched", hook: FromPod, input: icmp_echo, expect: Expect::Unchanged },
        Fixture { name: "ARP passes untouched", hook: FromPod, input: arp, expect: Expect::Unchanged },
        Fixture { name: "IP version 6 in an IPv4 frame passes", hook: FromPod, input: garbage_version, expect: Expect::Unchanged },
        Fixture { name: "IHL below 5 passes", hook: FromPod, input: bad_ihl, expect: Expect::Unchanged },
        Fixture {
            name: "a later fragment to a ClusterIP whose first fragment was never seen is dropped",
            hook: FromPod,
            input: later_fragment,
            expect: Expect::Dropped,
        },
        Fixture {
            name: "a later fragment to another address passes",
            hook: FromPod,
            input: later_fragment_elsewhere,
            expect: Expect::Unchanged,
        },
    ];
    check_all::<Ipv4Addr>(&mut l, &fixtures);
    assert_eq!(l.stat(stat::REJECT_UNSERVED_PORT), 1);
    assert_eq!(l.stat(stat::REJECT_NO_BACKEND), 2);
    assert_eq!(l.stat(stat::DROP_ORPHAN_FRAGMENT), 1);
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
        for (hook, out) in [("ingress", l.run(input)), ("egress", l.run_egress(input))] {
            assert_eq!(out.verdict, TC_ACT_UNSPEC, "{len}-byte prefix, {hook}: verdict");
            assert_eq!(&out.packet, input, "{len}-byte prefix, {hook}: must pass untouched");
        }
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

/// A UDP datagram of `len` payload bytes, split into two fragments after
/// `first` bytes of IP payload.
fn fragmented_udp(src: SocketAddrV4, dst: SocketAddrV4, len: usize, first: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let whole = testrun::udp(src, dst, &payload);
    let (a, b) = common::fragment(&whole, first);
    (whole, a, b)
}

#[test]
fn fragments_of_a_datagram_get_its_translation_both_ways() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("fragments");
    let client = sa(CLIENT);
    let vip = sa("10.96.0.10:53");
    let be = sa("10.244.0.12:5353");

    // A 3000-byte query leaves the client in two fragments.
    let (_, first, later) = fragmented_udp(client, vip, 3000, 1480);
    let out_first = l.run(&first);
    let out_later = l.run(&later);
    assert_eq!((out_first.verdict, out_later.verdict), (TC_ACT_UNSPEC, TC_ACT_UNSPEC));
    // Put back together, it is the datagram sent to the backend, with a
    // UDP checksum (over the whole datagram, in the first fragment) right.
    let (want, _, _) = fragmented_udp(client, be, 3000, 1480);
    let got = common::reassemble(&out_first.packet, &out_later.packet);
    assert_checksums_valid("reassembled query", &got);
    assert!(got == want, "both fragments DNATed: {}", hex(&got[..48]));
    // Each fragment's own IPv4 checksum.
    for (name, p) in [("first", &out_first.packet), ("later", &out_later.packet)] {
        let mut h = p[14..34].to_vec();
        let sum = u16::from_be_bytes([h[10], h[11]]);
        h[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(sum, common::ipv4_checksum(&h), "{name} fragment's IPv4 checksum");
    }

    // A 4000-byte answer (EDNS) comes back in fragments: both get the
    // frontend as their source.
    let (_, first, later) = fragmented_udp(be, client, 4000, 1480);
    let out_first = l.run_egress(&first);
    let out_later = l.run_egress(&later);
    let (want, _, _) = fragmented_udp(vip, client, 4000, 1480);
    let got = common::reassemble(&out_first.packet, &out_later.packet);
    assert_checksums_valid("reassembled answer", &got);
    assert!(got == want, "both fragments reverse-NATed: {}", hex(&got[..48]));
    assert_eq!(l.stat(stat::FRAGMENT_TRANSLATED), 2);
}

#[test]
fn icmp_errors_about_translated_flows_are_translated() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("icmp-errors");
    let client = sa(CLIENT);
    let vip = sa("10.96.0.10:53");
    let be = sa("10.244.0.12:5353");
    let query = testrun::udp(client, vip, b"query");
    let sent = l.run(&query);
    assert_eq!(sent.packet, testrun::udp(client, be, b"query"));

    // The backend has no socket on the port: its ICMP port unreachable
    // (about the query as it arrived) reaches the client as if from the
    // frontend, about the query the client sent, so its connected socket
    // gets ECONNREFUSED.
    let err = common::icmp_error(*be.ip(), *client.ip(), 3, 3, &sent.packet);
    let out = l.run_egress(&err);
    assert_eq!(out.verdict, TC_ACT_UNSPEC);
    let (src, dst, q_src, q_dst) = common::icmp_error_parts("port unreachable to the client", &out.packet);
    assert_eq!((src, dst), (*vip.ip(), *client.ip()), "outer: from the frontend");
    assert_eq!((q_src, q_dst), (client, vip), "quote: the client's own packet");
    assert_eq!(&out.packet[14 + 28..14 + 28 + 28], &query[14..14 + 28], "the quote is byte for byte what the client sent");

    // A router's "time exceeded" about the query is translated the same.
    let err = common::icmp_error("10.0.0.254".parse().unwrap(), *client.ip(), 11, 0, &sent.packet);
    let out = l.run_egress(&err);
    let (src, _, q_src, q_dst) = common::icmp_error_parts("time exceeded", &out.packet);
    assert_eq!(src, *vip.ip());
    assert_eq!((q_src, q_dst), (client, vip));

    // The client's own error about the answer it got (from the frontend)
    // goes to the backend, about the answer the backend sent.
    let answer = l.run_egress(&testrun::udp(be, client, b"answer")).packet;
    assert_eq!(answer, testrun::udp(vip, client, b"answer"));
    let err = common::icmp_error(*client.ip(), *vip.ip(), 3, 3, &answer);
    let out = l.run(&err);
    let (src, dst, q_src, q_dst) = common::icmp_error_parts("port unreachable to the backend", &out.packet);
    assert_eq!((src, dst), (*client.ip(), *be.ip()));
    assert_eq!((q_src, q_dst), (be, client));

    // An error about no flow of ours passes untouched.
    let stray = common::icmp_error(*be.ip(), *client.ip(), 3, 3, &testrun::udp(client, sa("10.244.0.13:9"), b"x"));
    let out = l.run_egress(&stray);
    assert_eq!((out.verdict, &out.packet), (TC_ACT_UNSPEC, &stray));

    // So does an error quoting a later fragment of the flow: what follows
    // its IP header is data, here the very bytes of the flow's ports
    // (client, backend), which are no ports to translate.
    let mut payload: Vec<u8> = (0..3000).map(|i| (i % 251) as u8).collect();
    payload[1472..1476].copy_from_slice(&[client.port().to_be_bytes(), be.port().to_be_bytes()].concat());
    let (first, later) = common::fragment(&testrun::udp(client, vip, &payload), 1480);
    assert_eq!(l.run(&first).verdict, TC_ACT_UNSPEC);
    let sent_later = l.run(&later).packet;
    assert_eq!(&sent_later[30..34], &be.ip().octets(), "the later fragment DNATed");
    let err = common::icmp_error("10.0.0.254".parse().unwrap(), *client.ip(), 3, 4, &sent_later);
    let out = l.run_egress(&err);
    assert_eq!(out.verdict, TC_ACT_UNSPEC);
    assert!(out.packet == err, "an error quoting a later fragment passes untouched: {}", hex(&out.packet[14..14 + 56]));
    assert_eq!(l.stat(stat::ICMP_TRANSLATED), 3);
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_hairpinned() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = Loaded::new("hairpin", [frontend("10.96.0.40:80", Protocol::Tcp, &["10.244.0.12:8080"])].into_iter().collect());
    hairpin_flow(&mut l);
}

/// The pod's answer to itself is recognised after the pre-filter, which
/// answers "maybe" for the hairpin address when a frontend shares its
/// lanes (a false positive): that answer must not send it down the
/// frontend path, where it has no flow.
#[test]
fn a_hairpin_reply_is_translated_when_the_pre_filter_lets_its_address_through() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = vip_filter::slot(u32::from_ne_bytes(lb_common::HAIRPIN_ADDR));
    let sharing = (1u32..)
        .map(|i| Ipv4Addr::from(0x0a60_0000 + i))
        .find(|a| vip_filter::slot(u32::from_ne_bytes(a.octets())) == s)
        .expect("a ClusterIP sharing the hairpin address's lanes");
    let mut d: Desired = [frontend("10.96.0.40:80", Protocol::Tcp, &["10.244.0.12:8080"])].into_iter().collect();
    let (a, f) = frontend(&format!("{sharing}:80"), Protocol::Tcp, &["10.244.0.13:8080"]);
    d.insert(a, f);
    let mut l = Loaded::new("hairpin-filter", d);
    assert_eq!(
        filter_kinds(&l, Ipv4Addr::from(lb_common::HAIRPIN_ADDR)),
        vip_flags::CLUSTER_IP,
        "the hairpin address passes the pre-filter"
    );
    hairpin_flow(&mut l);
}

/// The pod 10.244.0.12 reaches itself through 10.96.0.40:80 (`l` serves
/// it): its SYN, its answer to the hairpin address, and the next packet.
fn hairpin_flow(l: &mut Loaded) {
    let pod = sa("10.244.0.12:40000");
    let vip = sa("10.96.0.40:80");
    let hairpin = SocketAddrV4::new(Ipv4Addr::from(lb_common::HAIRPIN_ADDR), 40000);
    let me = sa("10.244.0.12:8080");
    let swapped = testrun::Frame { src_mac: NODE_MAC, dst_mac: CLIENT_MAC, ttl: 64 };

    // The SYN comes back to the pod, from the hairpin address, without
    // routing (its own address as the source would be a martian).
    let out = l.run(&testrun::tcp(pod, vip, "S", 1, b""));
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "straight back out of the pod's interface");
    assert_checksums_valid("hairpin SYN", &out.packet);
    assert_eq!(hex(&out.packet), hex(&testrun::tcp_frame(swapped, hairpin, me, "S", 1, b"")));
    // The pod answers the hairpin address: both translations reversed.
    let out = l.run(&testrun::tcp(me, hairpin, "SA", 9, b""));
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_checksums_valid("hairpin SYN-ACK", &out.packet);
    assert_eq!(hex(&out.packet), hex(&testrun::tcp_frame(swapped, vip, pod, "SA", 9, b"")));
    // The pod's next packet follows the flow's entry, back to itself.
    let out = l.run(&testrun::tcp(pod, vip, "A", 2, b"x"));
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "established hairpin flow");
    assert_eq!(hex(&out.packet), hex(&testrun::tcp_frame(swapped, hairpin, me, "A", 2, b"x")));
    assert_eq!(l.stat(stat::HAIRPIN), 1);
}

/// The backend (address) the flow from `client` to `vip` is DNATed to.
fn dnat(l: &mut Loaded, client: SocketAddrV4, vip: SocketAddrV4, flags: &str, seq: u32) -> [u8; 4] {
    let out = l.run(&testrun::tcp(client, vip, flags, seq, b""));
    assert_eq!(out.verdict, TC_ACT_UNSPEC);
    out.packet[30..34].try_into().unwrap()
}

#[test]
fn a_rst_outside_the_window_neither_ends_nor_resteers_a_flow() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("rst");
    let vip = sa("10.96.0.30:80");
    for port in 30000..30020u16 {
        let client = SocketAddrV4::new("10.244.0.11".parse().unwrap(), port);
        let backend = dnat(&mut l, client, vip, "S", 1000);
        let be = SocketAddrV4::new(Ipv4Addr::from(backend), 8080);
        l.run_egress(&testrun::tcp(be, client, "SA", 5000, b""));
        dnat(&mut l, client, vip, "A", 1001);
        // A blind RST far from the client's sequence numbers, then a SYN:
        // the flow stays where it is (with two backends a re-steered flow
        // would move half the time).
        assert_eq!(dnat(&mut l, client, vip, "R", 1001 + 0x4000_0000), backend);
        assert_eq!(dnat(&mut l, client, vip, "S", 77), backend, "a SYN does not re-steer a live flow");
        assert_eq!(dnat(&mut l, client, vip, "A", 1001), backend);
    }
    assert_eq!(l.stat(stat::RST_IGNORED), 20);
    // An in-window RST ends the flow: a new SYN may then start another.
    let client = SocketAddrV4::new("10.244.0.11".parse().unwrap(), 31000);
    dnat(&mut l, client, vip, "S", 1000);
    dnat(&mut l, client, vip, "A", 1001);
    dnat(&mut l, client, vip, "R", 1001);
    let key = lb_common::Ct4Key::new(
        u32::from_ne_bytes(client.ip().octets()),
        u32::from_ne_bytes(vip.ip().octets()),
        client.port().to_be(),
        vip.port().to_be(),
        lb_common::IPPROTO_TCP,
        lb_common::CT_SERVICE,
    );
    let e = l.reconciler.maps().ct.get(&key).unwrap().unwrap();
    assert_eq!(lb_common::ct::entry_state(lb_common::IPPROTO_TCP, lb_common::CT_SERVICE, &e), lb_common::ct::State::TcpClosing);
    assert_eq!(l.stat(stat::RST_IGNORED), 20, "the in-window RST is not counted as ignored");
}

#[test]
fn two_flows_from_one_client_port_to_one_backend_keep_apart() {
    if !kernel_tests_enabled() {
        return;
    }
    // Two Services with the same single backend: a client that reuses its
    // source port for both would put both flows on one reply tuple.
    let mut l = Loaded::new(
        "clash",
        [frontend("10.96.0.50:80", Protocol::Tcp, &["10.244.0.12:8080"]), frontend("10.96.0.51:80", Protocol::Tcp, &["10.244.0.12:8080"])]
            .into_iter()
            .collect(),
    );
    let client = sa("10.244.0.11:40000");
    let (a, b) = (sa("10.96.0.50:80"), sa("10.96.0.51:80"));
    let be = sa("10.244.0.12:8080");
    let first = l.run(&testrun::tcp(client, a, "S", 1, b""));
    assert_eq!(hex(&first.packet), hex(&testrun::tcp(client, be, "S", 1, b"")), "the first keeps its port");
    let second = l.run(&testrun::tcp(client, b, "S", 1, b""));
    let sport = u16::from_be_bytes([second.packet[34], second.packet[35]]);
    assert_ne!(sport, client.port(), "the second gets another source port");
    let remapped = SocketAddrV4::new(*client.ip(), sport);
    assert_eq!(hex(&second.packet), hex(&testrun::tcp(remapped, be, "S", 1, b"")));
    // Each flow's replies come from its own frontend, to the client's port.
    let out = l.run_egress(&testrun::tcp(be, client, "SA", 7, b""));
    assert_eq!(hex(&out.packet), hex(&testrun::tcp(a, client, "SA", 7, b"")));
    let out = l.run_egress(&testrun::tcp(be, remapped, "SA", 8, b""));
    assert_eq!(hex(&out.packet), hex(&testrun::tcp(b, client, "SA", 8, b"")));
    // And both stay put.
    assert_eq!(l.run(&testrun::tcp(client, b, "A", 2, b"")).packet, testrun::tcp(remapped, be, "A", 2, b""));
    assert_eq!(l.run(&testrun::tcp(client, a, "A", 2, b"")).packet, testrun::tcp(client, be, "A", 2, b""));
    assert_eq!(l.stat(stat::PORT_REMAPPED), 1);
}

#[test]
fn a_direct_connection_on_an_ended_service_flows_tuple_is_left_alone() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = Loaded::new("direct", [frontend("10.96.0.52:80", Protocol::Tcp, &["10.244.0.12:8080"])].into_iter().collect());
    let vip = sa("10.96.0.52:80");
    let be = sa("10.244.0.12:8080");
    // A Service flow from client port 40001 runs and closes.
    let client = sa("10.244.0.11:40001");
    let open_and_talk = |l: &mut Loaded, client: SocketAddrV4| {
        assert_eq!(l.run(&testrun::tcp(client, vip, "S", 1, b"")).packet, testrun::tcp(client, be, "S", 1, b""));
        assert_eq!(l.run_egress(&testrun::tcp(be, client, "SA", 100, b"")).packet, testrun::tcp(vip, client, "SA", 100, b""));
        l.run(&testrun::tcp(client, vip, "A", 2, b""));
    };
    open_and_talk(&mut l, client);
    l.run(&testrun::tcp(client, vip, "FA", 2, b""));
    l.run_egress(&testrun::tcp(be, client, "FA", 101, b""));
    l.run(&testrun::tcp(client, vip, "A", 3, b""));
    // The client reuses the port, straight to the backend: its SYN and the
    // backend's answer pass untouched (the answer was rewritten to come
    // from the VIP, and the client dropped it).
    let out = l.run(&testrun::tcp(client, be, "S", 500, b""));
    assert_eq!((out.verdict, hex(&out.packet)), (TC_ACT_UNSPEC, hex(&testrun::tcp(client, be, "S", 500, b""))));
    let out = l.run_egress(&testrun::tcp(be, client, "SA", 900, b""));
    assert_eq!(hex(&out.packet), hex(&testrun::tcp(be, client, "SA", 900, b"")), "the direct connection's SYN-ACK");
    // A live Service flow keeps its replies: a direct SYN on its tuple
    // does not take them away.
    let live = sa("10.244.0.11:40002");
    open_and_talk(&mut l, live);
    l.run(&testrun::tcp(live, be, "S", 700, b""));
    let out = l.run_egress(&testrun::tcp(be, live, "A", 101, b"y"));
    assert_eq!(hex(&out.packet), hex(&testrun::tcp(vip, live, "A", 101, b"y")), "the live flow's reply");
}

#[test]
fn rejects_are_rate_limited_per_client() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("reject-rate");
    let to = sa("10.96.0.20:53");
    let sent =
        count_answered(&mut l, (0..60u16).map(|i| testrun::udp(SocketAddrV4::new("10.244.0.11".parse().unwrap(), 20000 + i), to, b"q")));
    // A burst of 20, plus what 10 a second refill during the loop (well
    // under a second).
    assert!((20..=25).contains(&sent), "{sent} rejects sent to one client");
    assert_eq!(l.stat(stat::DROP_REJECT_RATE), 60 - sent);
    // Another client still gets its reject.
    let out = l.run(&testrun::udp(sa("10.244.0.99:20000"), to, b"q"));
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
}

/// A flood from ever-changing sources, each within its own client's
/// bucket, gets at most the node's burst of rejects (50) and its refill
/// (1,000 a second), as the kernel's `icmp_msgs_per_sec` caps its own ICMP
/// errors: not one reject per packet.
#[test]
fn rejects_are_rate_limited_for_the_whole_node() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("reject-global");
    let to = sa("10.96.0.20:53");
    let start = std::time::Instant::now();
    let clients = (0..1000u32).map(|i| SocketAddrV4::new(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 100, 0)) + i), 20000));
    let sent = count_answered(&mut l, clients.map(|c| testrun::udp(c, to, b"q")));
    let elapsed_ms = start.elapsed().as_millis() as u64;
    eprintln!("{sent} rejects to 1,000 clients in {elapsed_ms} ms");
    assert!(
        // The datapath's clock is the coarse one: it moves by ticks (4 ms
        // at HZ=250), so allow two more ticks' refill.
        (lb_common::REJECT_NODE_BURST as u64..=50 + elapsed_ms + 10).contains(&sent),
        "{sent} rejects to 1,000 clients in {elapsed_ms} ms"
    );
    assert_eq!(l.stat(stat::DROP_REJECT_RATE), 1000 - sent);
}

/// The flags of the forward conntrack entry of `client` -> `vip` (TCP).
fn forward_entry_flags(l: &Loaded, client: SocketAddrV4, vip: SocketAddrV4) -> Option<u8> {
    let (s, d) = (u32::from_ne_bytes(client.ip().octets()), u32::from_ne_bytes(vip.ip().octets()));
    l.reconciler.maps().ct.entries().unwrap().into_iter().find_map(|(k, e)| {
        (k.dir == CT_SERVICE && k.saddr == s && k.daddr == d && k.sport == client.port().to_be() && k.dport == vip.port().to_be())
            .then_some(e.flags)
    })
}

#[test]
fn pod_to_pod_packets_pass_untouched_and_leave_no_conntrack_entry() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("pod-to-pod");
    // The pre-filter holds the ClusterIPs (tc reads them), nothing for a
    // pod's address.
    for cip in ["10.96.0.10", "10.96.0.20", "10.96.0.30"] {
        assert_eq!(filter_kinds(&l, cip.parse::<Ipv4Addr>().unwrap()), vip_flags::CLUSTER_IP, "{cip}'s lane");
    }
    assert_eq!(filter_kinds(&l, "10.244.0.12".parse::<Ipv4Addr>().unwrap()), 0);
    let client = sa(CLIENT);
    // An address sharing a ClusterIP's lane (a false positive) takes the
    // exact lookup and passes too.
    let s = vip_filter::slot(u32::from_ne_bytes([10, 96, 0, 10]));
    let sharing = (1u32..)
        .map(|i| Ipv4Addr::from(0x0af4_0000 + i))
        .find(|a| vip_filter::slot(u32::from_ne_bytes(a.octets())) == s)
        .expect("a pod address sharing the lane");
    for dst in [sa("10.244.0.12:8080"), sa("10.244.0.12:80"), SocketAddrV4::new(sharing, 80)] {
        for (name, input) in [
            (format!("TCP SYN to {dst}"), testrun::tcp(client, dst, "S", 1, b"")),
            (format!("TCP data to {dst}"), testrun::tcp(client, dst, "PA", 2, b"data")),
            (format!("UDP to {dst}"), testrun::udp(client, dst, b"q")),
        ] {
            let name = Box::leak(name.into_boxed_str());
            check::<Ipv4Addr>(&mut l, &Fixture { name, hook: Hook::FromPod, input, expect: Expect::Unchanged });
        }
    }
    let ct = l.reconciler.maps().ct.entries().unwrap();
    assert!(ct.is_empty(), "no conntrack entry for pod-to-pod packets: {ct:?}");
    assert_eq!(l.stat(stat::REJECT_UNSERVED_PORT), 0);
}

#[test]
fn established_flows_follow_conntrack_without_the_address_lookup_until_their_frontend_or_backend_goes() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("tc-established");
    let client = sa(CLIENT);
    let vip = sa("10.96.0.10:80");
    let be = sa("10.244.0.12:8080");
    assert_eq!(dnat(&mut l, client, vip, "S", 1), be.ip().octets());
    let flags = forward_entry_flags(&l, client, vip).expect("the flow's forward entry");
    assert_ne!(flags & ct_entry_flags::FROM_POD, 0, "marked as made by tc: {flags:#x}");
    assert_eq!(flags & ct_entry_flags::NORTH_SOUTH, 0);

    // The ClusterIP's `LB4_VIPS` entry taken away behind the agent's back
    // (the frontend and the pre-filter stay): the established flow does
    // not look it up, a new flow does (and passes).
    let key = u32::from_ne_bytes(vip.ip().octets());
    let entry = l.reconciler.maps().vips.get(&key).unwrap().expect("the ClusterIP's VIPS entry");
    l.reconciler.maps_mut().vips.remove(&key).unwrap();
    let data = testrun::tcp(client, vip, "PA", 2, b"data");
    let out = l.run(&data);
    assert_eq!(out.verdict, TC_ACT_UNSPEC);
    assert_checksums_valid("established, without LB4_VIPS", &out.packet);
    assert_eq!(hex(&out.packet), hex(&testrun::tcp(client, be, "PA", 2, b"data")), "established, without LB4_VIPS");
    let other = testrun::tcp(sa("10.244.0.11:40001"), vip, "S", 1, b"");
    check::<Ipv4Addr>(&mut l, &Fixture { name: "a new flow needs LB4_VIPS", hook: Hook::FromPod, input: other, expect: Expect::Unchanged });
    l.reconciler.maps_mut().vips.insert(&key, &entry).unwrap();

    // A flow to the two-backend ClusterIP, and one to 10.96.0.10:53/UDP.
    let vip30 = sa("10.96.0.30:80");
    let first = dnat(&mut l, client, vip30, "S", 1);
    let udp = sa("10.96.0.10:53");
    let out = l.run(&testrun::udp(client, udp, b"q"));
    assert_eq!(hex(&out.packet), hex(&testrun::udp(client, sa("10.244.0.12:5353"), b"q")));

    // Its backend removed: the flow's next packet is a new flow, to the
    // other backend (the entry's version check).
    let mut d = desired();
    let (a30, mut f30) = frontend("10.96.0.30:80", Protocol::Tcp, &["10.244.0.13:8080", "10.244.0.14:8080"]);
    f30.backends.retain(|b| b.addr.ip.octets() != first);
    let other_be = f30.backends[0].addr.ip.octets();
    d.insert(a30, f30);
    let stats = l.reconciler.apply(&d);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    assert_eq!(dnat(&mut l, client, vip30, "A", 2), other_be, "the removed backend's flow moved on");

    // The frontend 10.96.0.10:80 removed: its address stays (port 53), so
    // does the lane, and the flow's next packet takes the exact path by the
    // version check: a ClusterIP on a port no Service defines, rejected.
    d.remove(&a30);
    d.retain(|a, _| !(a.ip == *vip.ip() && a.port == vip.port()));
    let stats = l.reconciler.apply(&d);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    assert_eq!(filter_kinds(&l, *vip.ip()), vip_flags::CLUSTER_IP);
    let data = testrun::tcp(client, vip, "PA", 3, b"more");
    check::<Ipv4Addr>(
        &mut l,
        &Fixture { name: "the removed frontend's flow", hook: Hook::FromPod, input: data, expect: Expect::Unreachable { from: *vip.ip() } },
    );
    // 10.96.0.30 removed whole: its lane cleared (no other ClusterIP there),
    // the flow's next packet passes untouched.
    assert_eq!(filter_kinds(&l, *vip30.ip()), 0, "the removed ClusterIP's lane is cleared");
    let data = testrun::tcp(client, vip30, "A", 3, b"more");
    check::<Ipv4Addr>(
        &mut l,
        &Fixture { name: "the removed ClusterIP's flow", hook: Hook::FromPod, input: data, expect: Expect::Unchanged },
    );
    // The remaining frontend is served, its flow followed.
    let out = l.run(&testrun::udp(client, udp, b"q2"));
    assert_eq!(hex(&out.packet), hex(&testrun::udp(client, sa("10.244.0.12:5353"), b"q2")));
}

#[test]
fn a_wiped_pre_filter_lets_flows_pass_until_the_agent_rebuilds_it() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("tc-filter-sync");
    let client = sa(CLIENT);
    let vip = sa("10.96.0.10:80");
    let be = sa("10.244.0.12:8080");
    assert_eq!(dnat(&mut l, client, vip, "S", 1), be.ip().octets());
    let established = testrun::tcp(client, vip, "A", 2, b"x");
    let translated = testrun::tcp(client, be, "A", 2, b"x");
    assert_eq!(hex(&l.run(&established).packet), hex(&translated));
    // An empty filter (as a new agent finds one next to an older agent's
    // maps): the established flow passes untranslated, so tc really gates
    // on the filter.
    wipe_filter(&mut l.reconciler.maps_mut().vip_filter);
    check::<Ipv4Addr>(
        &mut l,
        &Fixture { name: "with an empty pre-filter", hook: Hook::FromPod, input: established.clone(), expect: Expect::Unchanged },
    );
    // What the agent does at start, before attaching the programs.
    let fixed = l.reconciler.maps_mut().sync_vip_filter().unwrap();
    let word = |a: &str| vip_filter::slot(u32::from_ne_bytes(a.parse::<Ipv4Addr>().unwrap().octets())).word;
    let words: std::collections::BTreeSet<u32> = [word("10.96.0.10"), word("10.96.0.20"), word("10.96.0.30")].into();
    assert_eq!(fixed, words.len(), "the three ClusterIPs' words");
    assert_eq!(hex(&l.run(&established).packet), hex(&translated), "the flow is served again");
    assert_eq!(l.reconciler.maps_mut().sync_vip_filter().unwrap(), 0, "nothing to fix twice");
}
