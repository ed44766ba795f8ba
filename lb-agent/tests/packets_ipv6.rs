//! IPv6 ClusterIP packet fixtures through BPF_PROG_TEST_RUN, for the tc
//! programs of pod interfaces (ingress: packets leaving a pod; egress:
//! packets on their way to a client), reached from the attached programs
//! by a tail call: DNAT, conntrack and reverse NAT of TCP and UDP,
//! extension headers, truncations, ICMPv6 rejects and their rate limit,
//! ICMPv6 errors (Packet Too Big) about translated flows. The IPv6 frontends are
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
    Loaded, count_answered, filter_kinds,
    fixture::{Expect, Fixture, Hook, check, check_all},
    hex, kernel_tests_enabled, v6, wipe_filter,
};
use etherparse::{Icmpv6Type, IpNumber, Ipv6Extensions, Ipv6FragmentHeader, Ipv6RawExtHeader, PacketBuilder, icmpv6::DestUnreachableCode};
use lb_agent::model::{Desired, Protocol};
use lb_common::{
    CT_REPLY, CT_SERVICE, Ct6Key, IPPROTO_TCP, IPPROTO_UDP, addr6, ct_entry_flags, ipv6, stat, svc_flags, vip_filter, vip_flags,
};
use lb_lab::testrun::{CLIENT_MAC, NODE_MAC, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC};

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

/// The ICMPv6 port unreachable lb must answer `input` with: from the
/// address it was sent to, back to its sender, quoting as much of it (from
/// the IPv6 header on) as fits in 1280 bytes; built, checksum included, by
/// etherparse.
fn port_unreachable(input: &[u8]) -> Vec<u8> {
    let ip = &input[14..];
    let (src, dst): ([u8; 16], [u8; 16]) = (ip[8..24].try_into().unwrap(), ip[24..40].try_into().unwrap());
    let quote = &ip[..ip.len().min(1280 - 48)];
    let b = PacketBuilder::ethernet2(NODE_MAC, CLIENT_MAC)
        .ipv6(dst, src, 64)
        .icmpv6(etherparse::Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port));
    let mut out = Vec::new();
    b.write(&mut out, quote).unwrap();
    out
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
    // A fragment header at offset 0 without "more fragments": the whole
    // datagram (RFC 8200 4.5's atomic fragment).
    let atomic = || Ipv6Extensions { fragment: Some(Ipv6FragmentHeader::new(IpNumber::UDP, 0.try_into().unwrap(), false, 7)), ..none() };
    let echo = {
        let b = etherparse::PacketBuilder::ethernet2(lb_lab::testrun::CLIENT_MAC, lb_lab::testrun::NODE_MAC)
            .ipv6(client.ip().octets(), vip_tcp.ip().octets(), 64)
            .icmpv6_echo_request(1, 1);
        let mut v = Vec::new();
        b.write(&mut v, b"ping").unwrap();
        v
    };

    let no_backend_syn = v6::tcp(client, sa6("[fd00:96::14]:80"), "S", 7, b"", none());
    let unserved_syn = v6::tcp(client, sa6("[fd00:96::a]:81"), "S", 1, b"", none());
    let no_backend_exts = v6::tcp(ext_client, sa6("[fd00:96::14]:80"), "S", 7, b"", exts());
    let long_datagram = v6::udp(client, sa6("[fd00:96::a]:54"), &[0xa5; 1400], none());
    let odd_datagram = v6::udp(client, sa6("[fd00:96::a]:54"), b"odd", none());

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
            name: "an atomic fragment to the ClusterIP is DNATed as a whole datagram",
            hook: FromPod,
            input: v6::udp(client, vip_udp, b"12345678", atomic()),
            expect: Expect::Packet(v6::udp(client, be_udp, b"12345678", atomic())),
        },
        Fixture {
            name: "TCP to an IPv6 service without backends is rejected (ICMPv6 port unreachable)",
            hook: FromPod,
            input: no_backend_syn.clone(),
            expect: Expect::Answer(port_unreachable(&no_backend_syn)),
        },
        Fixture {
            name: "an IPv6 ClusterIP on a port no Service defines is rejected, not routed on",
            hook: FromPod,
            input: unserved_syn.clone(),
            expect: Expect::Answer(port_unreachable(&unserved_syn)),
        },
        Fixture {
            name: "a reject quotes the whole packet after extension headers",
            hook: FromPod,
            input: no_backend_exts.clone(),
            expect: Expect::Answer(port_unreachable(&no_backend_exts)),
        },
        Fixture {
            name: "a datagram longer than the minimum MTU is quoted up to it (1280-byte answer)",
            hook: FromPod,
            input: long_datagram.clone(),
            expect: Expect::Answer(port_unreachable(&long_datagram)),
        },
        Fixture {
            name: "an odd-length datagram is quoted whole",
            hook: FromPod,
            input: odd_datagram.clone(),
            expect: Expect::Answer(port_unreachable(&odd_datagram)),
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
    assert_eq!(l.stat(stat::REJECT_NO_BACKEND), 2);
    assert_eq!(l.stat(stat::REJECT_UNSERVED_PORT), 3);
    assert_eq!(l.stat(stat::TAIL_CALL_FAILED), 0);

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

/// A UDP payload of `len` bytes.
fn datagram(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn fragments_of_an_ipv6_datagram_get_its_translation_both_ways() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("v6-fragments");
    let (client, vip, be) = (sa6(CLIENT), sa6(VIP_UDP), sa6(BE_UDP));
    let run_all = |l: &mut Loaded, name: &str, hook: Hook, frags: &[Vec<u8>], want: &[Vec<u8>]| {
        assert_eq!(frags.len(), want.len());
        for (i, (input, want)) in frags.iter().zip(want).enumerate() {
            let out = match hook {
                Hook::FromPod => l.run(input),
                Hook::ToClient => l.run_egress(input),
            };
            assert_eq!(out.verdict, TC_ACT_UNSPEC, "{name}: fragment {i}: verdict");
            assert_eq!(hex(&out.packet), hex(want), "{name}: fragment {i}");
        }
    };

    // A 3000-byte query leaves the client in three fragments (1232 +
    // 1232 + 544 bytes of the UDP datagram): each is DNATed, the UDP
    // checksum (in the first, over the whole datagram) updated, the later
    // ones' addresses only. The expected fragments are the datagram to the
    // backend built by etherparse, cut the same way.
    let query = datagram(3000);
    let frags = v6::fragments(&v6::udp(client, vip, &query, none()), 1232, 0x1234_5678);
    assert_eq!(frags.len(), 3);
    let want = v6::fragments(&v6::udp(client, be, &query, none()), 1232, 0x1234_5678);
    run_all(&mut l, "query", Hook::FromPod, &frags, &want);

    // A 4000-byte answer (EDNS) comes back in four fragments: each gets
    // the ClusterIP back as its source.
    let answer = datagram(4000);
    let frags = v6::fragments(&v6::udp(be, client, &answer, none()), 1232, 0x9abc_def0);
    let want = v6::fragments(&v6::udp(vip, client, &answer, none()), 1232, 0x9abc_def0);
    assert_eq!(frags.len(), 4);
    run_all(&mut l, "answer", Hook::ToClient, &frags, &want);
    assert_eq!(l.stat(stat::FRAGMENT_TRANSLATED), 2 + 3);

    // Fragments behind a hop-by-hop header (before the fragment header,
    // as RFC 8200 orders them), from another client port: a new flow.
    let other = sa6("[fd00:10:244::b]:40002");
    let frags = v6::fragments(&v6::udp(other, vip, &query, v6::hop_by_hop(IpNumber::UDP)), 1232, 77);
    assert_eq!(&frags[0][14 + 40..14 + 42], &[44, 0], "hop-by-hop, then the fragment header");
    let want = v6::fragments(&v6::udp(other, be, &query, v6::hop_by_hop(IpNumber::UDP)), 1232, 77);
    run_all(&mut l, "after hop-by-hop", Hook::FromPod, &frags, &want);
    assert_eq!(l.stat(stat::FRAGMENT_TRANSLATED), 2 + 3 + 2);

    // A destination options header after the fragment header (in the
    // fragmentable part, as RFC 8200 4.5 cuts it): the first fragment
    // has it before UDP, and every fragment header names it, not UDP.
    // Both ways, from yet another client port.
    let third = sa6("[fd00:10:244::b]:40003");
    let frags = v6::fragments(&v6::udp(third, vip, &query, v6::dest_opts(IpNumber::UDP)), 1232, 78);
    assert_eq!(frags[1][14 + 40], 60, "the later fragment's header names destination options");
    assert_eq!((frags[0][14 + 40], frags[0][14 + 48]), (60, 17), "the first fragment: destination options, then UDP");
    let want = v6::fragments(&v6::udp(third, be, &query, v6::dest_opts(IpNumber::UDP)), 1232, 78);
    run_all(&mut l, "destination options after the fragment header", Hook::FromPod, &frags, &want);
    let frags = v6::fragments(&v6::udp(be, third, &answer, v6::dest_opts(IpNumber::UDP)), 1232, 79);
    let want = v6::fragments(&v6::udp(vip, third, &answer, v6::dest_opts(IpNumber::UDP)), 1232, 79);
    run_all(&mut l, "the answer, destination options after the fragment header", Hook::ToClient, &frags, &want);
    assert_eq!(l.stat(stat::FRAGMENT_TRANSLATED), 2 + 3 + 2 + 2 + 3);

    // A later fragment whose first fragment was never seen (another
    // identification): to the ClusterIP it is dropped, never routed on
    // untranslated; to a pod it passes.
    let orphan = &v6::fragments(&v6::udp(client, vip, &query, none()), 1232, 0x1234_5679)[1];
    assert_eq!(l.run(orphan).verdict, TC_ACT_SHOT, "orphan to the ClusterIP");
    let to_pod = &v6::fragments(&v6::udp(client, be, &query, none()), 1232, 0x1234_5679)[1];
    let out = l.run(to_pod);
    assert_eq!((out.verdict, hex(&out.packet)), (TC_ACT_UNSPEC, hex(to_pod)), "orphan to a pod");
    // An orphan reply is no flow's: it passes untouched.
    let stray = &v6::fragments(&v6::udp(be, client, &answer, none()), 1232, 0x9abc_def1)[2];
    let out = l.run_egress(stray);
    assert_eq!((out.verdict, hex(&out.packet)), (TC_ACT_UNSPEC, hex(stray)), "orphan reply");
    assert_eq!(l.stat(stat::DROP_ORPHAN_FRAGMENT), 1);
    assert_eq!(l.stat(stat::FRAGMENT_TRANSLATED), 2 + 3 + 2 + 2 + 3);
    assert_eq!(l.stat(stat::TAIL_CALL_FAILED), 0);
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

#[test]
fn rejects_are_rate_limited_per_client() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("v6-reject-rate");
    let to = sa6("[fd00:96::14]:80");
    let sent =
        count_answered(&mut l, (0..60u16).map(|i| v6::tcp(SocketAddrV6::new(*sa6(CLIENT).ip(), 20000 + i, 0, 0), to, "S", 1, b"", none())));
    // A burst of 20, plus what 10 a second refill during the loop (well
    // under a second), as for IPv4.
    assert!((20..=25).contains(&sent), "{sent} rejects sent to one client");
    assert_eq!(l.stat(stat::DROP_REJECT_RATE), 60 - sent);
    assert_eq!(l.stat(stat::REJECT_NO_BACKEND), 60);
    // Another client still gets its reject.
    let other = v6::tcp(sa6("[fd00:10:244::63]:20000"), to, "S", 1, b"", none());
    let out = l.run(&other);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(hex(&out.packet), hex(&port_unreachable(&other)));
}

#[test]
fn ipv6_passes_untranslated_and_is_counted_while_its_programs_are_missing() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("v6-tail-call");
    let syn = v6::tcp(sa6(CLIENT), sa6(VIP_TCP), "S", 1, b"", none());
    let reply = v6::tcp(sa6(BE_TCP), sa6(CLIENT), "SA", 5, b"", none());
    {
        let map = l.dp.ebpf.map_mut(lb_common::names::TC_CALLS).unwrap();
        let mut calls = aya::maps::ProgramArray::try_from(map).unwrap();
        for slot in 0..lb_common::tc_call::SLOTS {
            calls.clear_index(&slot).unwrap();
        }
    }
    let out = l.run(&syn);
    assert_eq!((out.verdict, hex(&out.packet)), (TC_ACT_UNSPEC, hex(&syn)), "ingress passes untouched");
    let out = l.run_egress(&reply);
    assert_eq!((out.verdict, hex(&out.packet)), (TC_ACT_UNSPEC, hex(&reply)), "egress passes untouched");
    assert_eq!(l.stat(stat::TAIL_CALL_FAILED), 2);
    // IPv4 does not go through the array.
    let v4 = lb_lab::testrun::tcp("10.244.0.11:40000".parse().unwrap(), "10.244.0.12:80".parse().unwrap(), "S", 1, b"");
    assert_eq!(l.run(&v4).verdict, TC_ACT_UNSPEC);
    assert_eq!(l.stat(stat::TAIL_CALL_FAILED), 2);

    lb_agent::datapath::fill_tc_calls(&mut l.dp.ebpf).unwrap();
    let out = l.run(&syn);
    assert_eq!(hex(&out.packet), hex(&v6::tcp(sa6(CLIENT), sa6(BE_TCP), "S", 1, b"", none())), "translated again");
    assert_eq!(l.stat(stat::TAIL_CALL_FAILED), 2);
}

/// An ICMPv6 error of type `t` from `src` to `dst` about the Ethernet +
/// IPv6 packet `about`, quoting as much of it as fits in 1280 bytes; built
/// by etherparse, checksum included.
fn icmp6_error(src: Ipv6Addr, dst: Ipv6Addr, t: Icmpv6Type, about: &[u8]) -> Vec<u8> {
    let ip = &about[14..];
    let quote = &ip[..ip.len().min(1280 - 48)];
    let b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv6(src.octets(), dst.octets(), 64).icmpv6(t);
    let mut out = Vec::new();
    b.write(&mut out, quote).unwrap();
    out
}

#[test]
fn icmpv6_errors_about_translated_flows_are_translated() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("v6-icmp-errors");
    let (client, vip, be) = (sa6(CLIENT), sa6(VIP_TCP), sa6(BE_TCP));
    let ptb = Icmpv6Type::PacketTooBig { mtu: 1280 };
    let payload = [0x5a; 1300];
    l.run(&v6::tcp(client, vip, "S", 1, b"", none()));
    let data = v6::tcp(client, vip, "PA", 2, &payload, none());
    let sent = l.run(&data).packet;
    assert_eq!(hex(&sent), hex(&v6::tcp(client, be, "PA", 2, &payload, none())), "DNATed");

    // Packet Too Big on its way to the client (PMTU through a ClusterIP):
    // from a router towards the backend, about the packet as DNATed. The
    // client must read it as from the ClusterIP, about the packet it sent.
    let router: Ipv6Addr = "fd00:10:244::1".parse().unwrap();
    let out = l.run_egress(&icmp6_error(router, *client.ip(), ptb, &sent));
    assert_eq!(out.verdict, TC_ACT_UNSPEC);
    assert_eq!(hex(&out.packet), hex(&icmp6_error(*vip.ip(), *client.ip(), ptb, &data)), "Packet Too Big to the client");

    // The other way: the client's error about a reply it got from the
    // ClusterIP goes to the backend, about the packet the backend sent.
    let sent_reply = v6::tcp(be, client, "PA", 7, &payload, none());
    let got = l.run_egress(&sent_reply).packet;
    assert_eq!(hex(&got), hex(&v6::tcp(vip, client, "PA", 7, &payload, none())), "reverse-NATed");
    let out = l.run(&icmp6_error(*client.ip(), *vip.ip(), ptb, &got));
    assert_eq!(out.verdict, TC_ACT_UNSPEC);
    assert_eq!(hex(&out.packet), hex(&icmp6_error(*client.ip(), *be.ip(), ptb, &sent_reply)), "Packet Too Big to the backend");

    // UDP, destination unreachable, a whole quote with its checksum.
    let (vip_udp, be_udp) = (sa6(VIP_UDP), sa6(BE_UDP));
    let query = v6::udp(client, vip_udp, b"query", none());
    let sent = l.run(&query).packet;
    let unreach = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port);
    let out = l.run_egress(&icmp6_error(*be_udp.ip(), *client.ip(), unreach, &sent));
    assert_eq!(hex(&out.packet), hex(&icmp6_error(*vip_udp.ip(), *client.ip(), unreach, &query)), "port unreachable to the client");
    assert_eq!(l.stat(stat::ICMP_TRANSLATED), 3);

    // Errors about no flow lb knows pass untouched, both ways.
    let stray = icmp6_error(router, *client.ip(), ptb, &v6::tcp(client, sa6("[fd00:10:244::d]:8080"), "PA", 2, &payload, none()));
    let out = l.run_egress(&stray);
    assert_eq!((out.verdict, hex(&out.packet)), (TC_ACT_UNSPEC, hex(&stray)));
    let stray = icmp6_error(*client.ip(), *vip.ip(), ptb, &v6::tcp(vip, sa6("[fd00:10:244::b]:1"), "PA", 2, b"x", none()));
    let out = l.run(&stray);
    assert_eq!((out.verdict, hex(&out.packet)), (TC_ACT_UNSPEC, hex(&stray)));
    assert_eq!(l.stat(stat::ICMP_TRANSLATED), 3);
}

/// ICMPv6 errors (Packet Too Big, destination unreachable) about packets
/// of translated flows that carried extension headers, or were the first
/// fragment of a datagram: the quoted packet's headers are walked as a
/// packet's, its ports found after them and translated, the extension
/// headers left as they are. Each case is checked and the wrong ones
/// named together.
#[test]
fn icmpv6_errors_quoting_extension_headers_and_first_fragments_are_translated() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("v6-icmp-exts");
    let (client, vip, be) = (sa6(CLIENT), sa6(VIP_TCP), sa6(BE_TCP));
    let (vip_udp, be_udp) = (sa6(VIP_UDP), sa6(BE_UDP));
    let router: Ipv6Addr = "fd00:10:244::1".parse().unwrap();
    let ptb = Icmpv6Type::PacketTooBig { mtu: 1280 };
    let unreach = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port);
    let payload = [0x5a; 1300];
    let mut wrong = Vec::new();
    let mut expect = |l: &mut Loaded, name: &str, hook: Hook, input: &[u8], want: &[u8]| {
        let out = match hook {
            Hook::FromPod => l.run(input),
            Hook::ToClient => l.run_egress(input),
        };
        if out.verdict != TC_ACT_UNSPEC || out.packet != want {
            wrong.push(format!("{name}: verdict {}, packet {}", out.verdict, if out.packet == input { "untouched" } else { "wrong" }));
        }
    };

    // (a) TCP behind a destination options header (and, the other way,
    // a hop-by-hop header too), both ways of the flow.
    assert_eq!(l.run(&v6::tcp(client, vip, "S", 1, b"", none())).verdict, TC_ACT_UNSPEC);
    let data = v6::tcp(client, vip, "PA", 2, &payload, v6::dest_opts(IpNumber::TCP));
    let sent = l.run(&data).packet;
    assert_eq!(hex(&sent), hex(&v6::tcp(client, be, "PA", 2, &payload, v6::dest_opts(IpNumber::TCP))), "DNATed");
    let want = icmp6_error(*vip.ip(), *client.ip(), ptb, &data);
    expect(&mut l, "PTB quoting destination options, to the client", Hook::ToClient, &icmp6_error(router, *client.ip(), ptb, &sent), &want);
    let want = icmp6_error(*vip.ip(), *client.ip(), unreach, &data);
    expect(
        &mut l,
        "unreachable quoting destination options, to the client",
        Hook::ToClient,
        &icmp6_error(*be.ip(), *client.ip(), unreach, &sent),
        &want,
    );
    let sent_reply = v6::tcp(be, client, "PA", 7, &payload, hop_by_hop_and_dest_opts());
    let got = l.run_egress(&sent_reply).packet;
    assert_eq!(hex(&got), hex(&v6::tcp(vip, client, "PA", 7, &payload, hop_by_hop_and_dest_opts())), "reverse-NATed");
    let want = icmp6_error(*client.ip(), *be.ip(), ptb, &sent_reply);
    expect(
        &mut l,
        "PTB quoting hop-by-hop and destination options, to the backend",
        Hook::FromPod,
        &icmp6_error(*client.ip(), *vip.ip(), ptb, &got),
        &want,
    );

    // (b) The first fragment (offset 0, M) of a UDP datagram, both ways:
    // its ports follow the fragment header; its UDP checksum (over the
    // whole datagram) is in the quote and translated back too.
    let query = datagram(3000);
    let frags = v6::fragments(&v6::udp(client, vip_udp, &query, none()), 1232, 0x1234_5678);
    let sent: Vec<Vec<u8>> = frags.iter().map(|f| l.run(f).packet).collect();
    assert_eq!(hex(&sent[0]), hex(&v6::fragments(&v6::udp(client, be_udp, &query, none()), 1232, 0x1234_5678)[0]), "DNATed");
    assert_eq!(&sent[0][14 + 40..14 + 44], &[17, 0, 0, 1], "a fragment header: UDP, offset 0, M");
    let want = icmp6_error(*vip_udp.ip(), *client.ip(), ptb, &frags[0]);
    expect(&mut l, "PTB quoting a first fragment, to the client", Hook::ToClient, &icmp6_error(router, *client.ip(), ptb, &sent[0]), &want);
    let want = icmp6_error(*vip_udp.ip(), *client.ip(), unreach, &frags[0]);
    expect(
        &mut l,
        "unreachable quoting a first fragment, to the client",
        Hook::ToClient,
        &icmp6_error(*be_udp.ip(), *client.ip(), unreach, &sent[0]),
        &want,
    );
    // A first fragment with a destination options header after its
    // fragment header (the fragmentable part): the ports follow that.
    let dest_frags = v6::fragments(&v6::udp(client, vip_udp, &query, v6::dest_opts(IpNumber::UDP)), 1232, 0x1234_5680);
    let dest_sent: Vec<Vec<u8>> = dest_frags.iter().map(|f| l.run(f).packet).collect();
    assert_eq!(&dest_sent[0][14 + 40..14 + 42], &[60, 0], "a fragment header naming destination options");
    let want = icmp6_error(*vip_udp.ip(), *client.ip(), ptb, &dest_frags[0]);
    expect(
        &mut l,
        "PTB quoting a first fragment with destination options after its fragment header, to the client",
        Hook::ToClient,
        &icmp6_error(router, *client.ip(), ptb, &dest_sent[0]),
        &want,
    );
    // The answer's fragments carry a hop-by-hop header before the
    // fragment header (the unfragmentable part, RFC 8200 4.5).
    let answer = datagram(4000);
    let reply_frags = v6::fragments(&v6::udp(be_udp, client, &answer, v6::hop_by_hop(IpNumber::UDP)), 1232, 0x9abc_def0);
    let got: Vec<Vec<u8>> = reply_frags.iter().map(|f| l.run_egress(f).packet).collect();
    assert_eq!(
        hex(&got[0]),
        hex(&v6::fragments(&v6::udp(vip_udp, client, &answer, v6::hop_by_hop(IpNumber::UDP)), 1232, 0x9abc_def0)[0]),
        "reverse-NATed"
    );
    assert_eq!(&got[0][14 + 40..14 + 42], &[44, 0], "hop-by-hop, then the fragment header");
    let want = icmp6_error(*client.ip(), *be_udp.ip(), ptb, &reply_frags[0]);
    expect(
        &mut l,
        "PTB quoting a first fragment behind hop-by-hop, to the backend",
        Hook::FromPod,
        &icmp6_error(*client.ip(), *vip_udp.ip(), ptb, &got[0]),
        &want,
    );
    let translated = l.stat(stat::ICMP_TRANSLATED);

    // (c) A later fragment quotes no ports: its first fragment's are kept
    // under the addresses it arrived with, not the translated ones the
    // quote shows; it passes untouched.
    let later = icmp6_error(router, *client.ip(), ptb, &sent[1]);
    expect(&mut l, "PTB quoting a later fragment passes untouched", Hook::ToClient, &later, &later);

    // Quotes cut off inside a header pass untouched: in the destination
    // options header, in the fragment header, and right after it (no
    // ports).
    let cut = |p: &[u8], len: usize| icmp6_error(router, *client.ip(), ptb, &p[..14 + len]);
    let tcp_sent = l.run(&data).packet;
    for (name, input) in [
        ("a quote cut in its destination options header", cut(&tcp_sent, 40 + 4)),
        ("a quote cut in its fragment header", cut(&sent[0], 40 + 6)),
        ("a quote cut after its fragment header", cut(&sent[0], 40 + 8 + 2)),
    ] {
        expect(&mut l, name, Hook::ToClient, &input, &input);
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(translated, 7);
    assert_eq!(l.stat(stat::ICMP_TRANSLATED), 7, "nothing else translated");
}

/// The flags of the forward conntrack entry of `client` -> `vip` (TCP).
fn forward_entry_flags(l: &Loaded, client: SocketAddrV6, vip: SocketAddrV6) -> Option<u8> {
    let want = format!("service {client} -> {vip}");
    l.reconciler.maps().v6.ct_tcp.entries().unwrap().into_iter().find_map(|(k, e)| (key_text(&k) == want).then_some(e.flags))
}

/// Installs the IPv6 frontends `d` through the reconciler (no IPv4 one).
fn apply6(l: &mut Loaded, d: &Desired<Ipv6Addr>) {
    let stats = l.reconciler.apply_dual(&[], &[d]);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
}

/// Where the IPv6 packet `p` goes (its destination address).
fn dst_of(p: &[u8]) -> Ipv6Addr {
    <[u8; 16]>::try_from(&p[14 + 24..14 + 40]).unwrap().into()
}

#[test]
fn established_flows_follow_conntrack_without_the_address_lookup_until_their_frontend_or_backend_goes() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = Loaded::new("v6-established", Desired::default());
    let (client, vip, be) = (sa6(CLIENT), sa6(VIP_TCP), sa6(BE_TCP));
    let (udp, be_udp) = (sa6(VIP_UDP), sa6(BE_UDP));
    let vip30 = sa6("[fd00:96::1e]:80");
    let two = [sa6("[fd00:10:244::d]:8080"), sa6("[fd00:10:244::e]:8080")];
    let mut d: Desired<Ipv6Addr> =
        [v6::frontend(vip, Protocol::Tcp, &[be]), v6::frontend(udp, Protocol::Udp, &[be_udp]), v6::frontend(vip30, Protocol::Tcp, &two)]
            .into_iter()
            .collect();
    apply6(&mut l, &d);
    let syn = l.run(&v6::tcp(client, vip, "S", 1, b"", none()));
    assert_eq!(hex(&syn.packet), hex(&v6::tcp(client, be, "S", 1, b"", none())));
    let flags = forward_entry_flags(&l, client, vip).expect("the flow's forward entry");
    assert_ne!(flags & ct_entry_flags::FROM_POD, 0, "marked as made by tc: {flags:#x}");

    // The ClusterIP's `LB6_VIPS` entry taken away behind the agent's back
    // (the frontend stays): the established flow does not look it up, a
    // new flow does (and passes).
    let key = addr6(*vip.ip());
    let entry = l.reconciler.maps().v6.vips.get(&key).unwrap().expect("the ClusterIP's LB6_VIPS entry");
    l.reconciler.maps_mut().v6.vips.remove(&key).unwrap();
    let data = v6::tcp(client, vip, "PA", 2, b"data", none());
    check::<Ipv6Addr>(
        &mut l,
        &Fixture {
            name: "established, without LB6_VIPS",
            hook: Hook::FromPod,
            input: data,
            expect: Expect::Packet(v6::tcp(client, be, "PA", 2, b"data", none())),
        },
    );
    let other = v6::tcp(sa6("[fd00:10:244::b]:40001"), vip, "S", 1, b"", none());
    check::<Ipv6Addr>(&mut l, &Fixture { name: "a new flow needs LB6_VIPS", hook: Hook::FromPod, input: other, expect: Expect::Unchanged });
    l.reconciler.maps_mut().v6.vips.insert(&key, &entry).unwrap();

    // A flow to the two-backend ClusterIP, and one to the UDP port.
    let first = dst_of(&l.run(&v6::tcp(client, vip30, "S", 1, b"", none())).packet);
    let out = l.run(&v6::udp(client, udp, b"q", none()));
    assert_eq!(hex(&out.packet), hex(&v6::udp(client, be_udp, b"q", none())));

    // Its backend removed: the flow's next packet is a new flow, to the
    // other backend (the entry's version check).
    let rest: Vec<SocketAddrV6> = two.iter().copied().filter(|b| *b.ip() != first).collect();
    let (a30, f30) = v6::frontend(vip30, Protocol::Tcp, &rest);
    d.insert(a30, f30);
    apply6(&mut l, &d);
    let moved = dst_of(&l.run(&v6::tcp(client, vip30, "A", 2, b"", none())).packet);
    assert_eq!(moved, *rest[0].ip(), "the removed backend's flow moved on");

    // The frontend [fd00:96::a]:80 removed: its address stays (port 53),
    // and the flow's next packet takes the exact path by the version
    // check: a ClusterIP on a port no Service defines, rejected.
    d.retain(|a, _| !(a.ip == *vip.ip() && a.port == vip.port()));
    d.remove(&a30);
    apply6(&mut l, &d);
    assert_eq!(filter_kinds(&l, *vip.ip()), vip_flags::CLUSTER_IP);
    let data = v6::tcp(client, vip, "PA", 3, b"more", none());
    check::<Ipv6Addr>(
        &mut l,
        &Fixture { name: "the removed frontend's flow", hook: Hook::FromPod, input: data, expect: Expect::Unreachable { from: *vip.ip() } },
    );
    // fd00:96::1e removed whole: its lane cleared (no other ClusterIP
    // there), the flow's next packet passes untouched.
    assert_eq!(filter_kinds(&l, *vip30.ip()), 0, "the removed ClusterIP's lane is cleared");
    let data = v6::tcp(client, vip30, "A", 3, b"more", none());
    check::<Ipv6Addr>(
        &mut l,
        &Fixture { name: "the removed ClusterIP's flow", hook: Hook::FromPod, input: data, expect: Expect::Unchanged },
    );
    // The remaining frontend is served, its flow followed.
    let out = l.run(&v6::udp(client, udp, b"q2", none()));
    assert_eq!(hex(&out.packet), hex(&v6::udp(client, be_udp, b"q2", none())));
}

#[test]
fn pod_to_pod_packets_pass_untouched_and_leave_no_conntrack_entry() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("v6-pod-to-pod");
    // The pre-filter holds the ClusterIPs (tc reads them), nothing for a
    // pod's address.
    for cip in ["fd00:96::a", "fd00:96::14", "fd00:96::1e", "fd00:96::1f"] {
        assert_eq!(filter_kinds(&l, cip.parse::<Ipv6Addr>().unwrap()), vip_flags::CLUSTER_IP, "{cip}'s lane");
    }
    assert_eq!(filter_kinds(&l, *sa6(BE_TCP).ip()), 0);
    let client = sa6(CLIENT);
    // An address sharing a ClusterIP's lane (a false positive) takes the
    // exact lookup and passes too.
    let s = vip_filter::slot6(&addr6(*sa6(VIP_TCP).ip()));
    let sharing = (1u32..)
        .map(|i| Ipv6Addr::from((0xfd00_0010_0244_0000_0000_0000_0000_0000u128) + i as u128))
        .find(|a| vip_filter::slot6(&addr6(*a)) == s)
        .expect("a pod address sharing the lane");
    for dst in [sa6(BE_TCP), sa6("[fd00:10:244::c]:80"), SocketAddrV6::new(sharing, 80, 0, 0)] {
        for (name, input) in [
            (format!("TCP SYN to {dst}"), v6::tcp(client, dst, "S", 1, b"", none())),
            (format!("TCP data to {dst}"), v6::tcp(client, dst, "PA", 2, b"data", none())),
            (format!("UDP to {dst}"), v6::udp(client, dst, b"q", none())),
            (format!("TCP data after extension headers to {dst}"), v6::tcp(client, dst, "PA", 2, b"data", hop_by_hop_and_dest_opts())),
        ] {
            let name = Box::leak(name.into_boxed_str());
            check::<Ipv6Addr>(&mut l, &Fixture { name, hook: Hook::FromPod, input, expect: Expect::Unchanged });
        }
    }
    let maps = l.reconciler.maps();
    let ct: Vec<_> = maps.v6.ct_tcp.entries().unwrap().into_iter().chain(maps.v6.ct_any.entries().unwrap()).collect();
    assert!(ct.is_empty(), "no conntrack entry for pod-to-pod packets: {ct:?}");
    assert_eq!(l.stat(stat::REJECT_UNSERVED_PORT), 0);
}

#[test]
fn a_wiped_pre_filter_lets_flows_pass_until_the_agent_rebuilds_it() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("v6-filter-sync");
    let (client, vip, be) = (sa6(CLIENT), sa6(VIP_TCP), sa6(BE_TCP));
    l.run(&v6::tcp(client, vip, "S", 1, b"", none()));
    let established = v6::tcp(client, vip, "A", 2, b"x", none());
    let translated = v6::tcp(client, be, "A", 2, b"x", none());
    assert_eq!(hex(&l.run(&established).packet), hex(&translated));
    // An empty IPv6 filter: the established flow passes untranslated, so
    // tc really gates IPv6 on it.
    wipe_filter(&mut l.reconciler.maps_mut().v6.vip_filter);
    check::<Ipv6Addr>(
        &mut l,
        &Fixture { name: "with an empty IPv6 pre-filter", hook: Hook::FromPod, input: established.clone(), expect: Expect::Unchanged },
    );
    // What the agent does at start, before attaching the programs.
    let fixed = l.reconciler.maps_mut().sync_vip_filter().unwrap();
    let words: std::collections::BTreeSet<u32> = ["fd00:96::a", "fd00:96::14", "fd00:96::1e", "fd00:96::1f"]
        .iter()
        .map(|a| vip_filter::slot6(&addr6(a.parse().unwrap())).word)
        .collect();
    assert_eq!(fixed, words.len(), "the four ClusterIPs' words");
    assert_eq!(hex(&l.run(&established).packet), hex(&translated), "the flow is served again");
    assert_eq!(l.reconciler.maps_mut().sync_vip_filter().unwrap(), 0, "nothing to fix twice");
}

#[test]
fn a_pod_reaching_itself_through_its_ipv6_service_is_hairpinned() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("v6-hairpin");
    // The backend of fd00:96::a:80 dials that Service.
    let me = sa6(BE_TCP);
    let pod = SocketAddrV6::new(*me.ip(), 40000, 0, 0);
    let vip = sa6(VIP_TCP);
    let hairpin = SocketAddrV6::new(lb_common::HAIRPIN_ADDR6, 40000, 0, 0);
    // Sent back out of the interface it came in on: the MACs swapped.
    let swapped = lb_lab::testrun::Frame { src_mac: NODE_MAC, dst_mac: CLIENT_MAC, ttl: 64 };
    use Hook::FromPod;
    let steps = [
        // The SYN comes back to the pod from the hairpin address, without
        // routing (its own address as the source would be a martian, and
        // the pod would answer itself over its loopback).
        Fixture {
            name: "the pod's SYN to its own Service comes back from the hairpin address",
            hook: FromPod,
            input: v6::tcp(pod, vip, "S", 1, b"", none()),
            expect: Expect::Answer(v6::tcp_in(swapped, hairpin, me, "S", 1, b"")),
        },
        // The pod answers the hairpin address (through its default
        // gateway): both translations reversed.
        Fixture {
            name: "its SYN-ACK to the hairpin address comes back from the Service",
            hook: FromPod,
            input: v6::tcp(me, hairpin, "SA", 9, b"", none()),
            expect: Expect::Answer(v6::tcp_in(swapped, vip, pod, "SA", 9, b"")),
        },
        Fixture {
            name: "the established hairpin flow follows its entry",
            hook: FromPod,
            input: v6::tcp(pod, vip, "A", 2, b"x", none()),
            expect: Expect::Answer(v6::tcp_in(swapped, hairpin, me, "A", 2, b"x")),
        },
    ];
    check_all::<Ipv6Addr>(&mut l, &steps);
    assert_eq!(l.stat(stat::HAIRPIN), 1);
}

/// As IPv4's: a blind RST far outside the client's sequence numbers
/// neither ends an IPv6 flow nor lets the next SYN re-steer it (with two
/// backends, a re-steered flow would move half the time), and is counted;
/// an in-window RST ends the flow.
#[test]
fn a_rst_outside_the_window_neither_ends_nor_resteers_an_ipv6_flow() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("v6-rst");
    let vip = sa6("[fd00:96::1e]:80");
    let dnat = |l: &mut Loaded, c: SocketAddrV6, flags: &str, seq: u32| -> Ipv6Addr {
        let out = l.run(&v6::tcp(c, vip, flags, seq, b"", none()));
        assert_eq!(out.verdict, TC_ACT_UNSPEC, "{flags} from {c}");
        dst_of(&out.packet)
    };
    let client = |port: u16| SocketAddrV6::new(*sa6(CLIENT).ip(), port, 0, 0);
    for port in 30000..30020u16 {
        let c = client(port);
        let backend = dnat(&mut l, c, "S", 1000);
        l.run_egress(&v6::tcp(SocketAddrV6::new(backend, 8080, 0, 0), c, "SA", 5000, b"", none()));
        dnat(&mut l, c, "A", 1001);
        assert_eq!(dnat(&mut l, c, "R", 1001 + 0x4000_0000), backend, "port {port}");
        assert_eq!(dnat(&mut l, c, "S", 77), backend, "port {port}: a SYN does not re-steer a live flow");
        assert_eq!(dnat(&mut l, c, "A", 1001), backend, "port {port}");
    }
    assert_eq!(l.stat(stat::RST_IGNORED), 20);
    // An in-window RST ends the flow: a new SYN may then start another.
    let c = client(31000);
    dnat(&mut l, c, "S", 1000);
    dnat(&mut l, c, "A", 1001);
    dnat(&mut l, c, "R", 1001);
    let want = format!("service {c} -> {vip}");
    let entries = l.reconciler.maps().v6.ct_tcp.entries().unwrap();
    let e = entries.iter().find_map(|(k, e)| (key_text(k) == want).then_some(e)).expect("the flow's service entry");
    assert_eq!(lb_common::ct::entry_state(IPPROTO_TCP, CT_SERVICE, e), lb_common::ct::State::TcpClosing);
    assert_eq!(l.stat(stat::RST_IGNORED), 20, "the in-window RST is not counted as ignored");
}
