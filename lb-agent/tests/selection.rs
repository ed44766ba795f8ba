//! Backend selection and connection lifecycle through BPF_PROG_TEST_RUN:
//! Maglev lookups, session affinity, conntrack expiry, garbage collection,
//! and purging the flows of removed backends.

mod common;

use std::{
    collections::BTreeMap,
    net::{Ipv6Addr, SocketAddrV4, SocketAddrV6},
};

use common::{Loaded, frontend, kernel_tests_enabled, sa, v6};
use lb_agent::{
    gc::monotonic_ns,
    model::{Desired, FrontendAddr, Protocol},
    reconcile::Stats,
};
use lb_common::{Affinity4Key, CT_SERVICE, CtTimeouts, ct_flags, hash::flow_hash, sizes, svc_flags};
use lb_lab::testrun;

const CLIENT_IP: &str = "10.244.0.11";

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(CLIENT_IP.parse().unwrap(), port)
}

/// Destination address after the program ran (the chosen backend).
fn dnat_target(packet: &[u8]) -> SocketAddrV4 {
    let ip: [u8; 4] = packet[30..34].try_into().unwrap();
    let port = u16::from_be_bytes([packet[36], packet[37]]);
    SocketAddrV4::new(ip.into(), port)
}

fn backends(n: u8) -> Vec<String> {
    (0..n).map(|i| format!("10.244.1.{}:8080", 10 + i)).collect()
}

fn desired(entries: Vec<(FrontendAddr, lb_agent::model::Frontend)>) -> Desired {
    entries.into_iter().collect()
}

fn svc(addr: &str, backends: &[String], flags: u32, affinity_timeout: u32) -> (FrontendAddr, lb_agent::model::Frontend) {
    let refs: Vec<&str> = backends.iter().map(String::as_str).collect();
    let (a, mut f) = frontend(addr, Protocol::Tcp, &refs);
    f.flags = flags;
    f.affinity_timeout = affinity_timeout;
    (a, f)
}

fn sa6(s: &str) -> SocketAddrV6 {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Installs one IPv6 TCP frontend through the reconciler, and no IPv4
/// one: `vip` over `bes`, with `flags` and `affinity_timeout` (seconds).
fn apply6(l: &mut Loaded, vip: SocketAddrV6, bes: &[SocketAddrV6], flags: u32, affinity_timeout: u32) -> Stats {
    let (a, mut f) = v6::frontend(vip, Protocol::Tcp, bes);
    f.flags |= flags;
    f.affinity_timeout = affinity_timeout;
    let d6: Desired<Ipv6Addr> = [(a, f)].into_iter().collect();
    let s = l.reconciler.apply_dual(&[&Desired::default()], &[&d6]);
    assert!(s.errors.is_empty(), "{s:?}");
    s
}

/// A TCP segment from `from` to `to`, without extension headers.
fn tcp6(from: SocketAddrV6, to: SocketAddrV6, flags: &str, seq: u32) -> Vec<u8> {
    v6::tcp(from, to, flags, seq, b"", etherparse::Ipv6Extensions::default())
}

/// Destination of an IPv6 packet after the program ran (the chosen
/// backend).
fn target6(p: &[u8]) -> SocketAddrV6 {
    let ip: [u8; 16] = p[14 + 24..14 + 40].try_into().unwrap();
    SocketAddrV6::new(ip.into(), u16::from_be_bytes([p[14 + 42], p[14 + 43]]), 0, 0)
}

#[test]
fn maglev_picks_exactly_the_agents_table_slot() {
    if !kernel_tests_enabled() {
        return;
    }
    let vip = sa("10.96.0.40:80");
    let five = backends(5);
    let mut l = Loaded::new("maglev", desired(vec![svc("10.96.0.40:80", &five, svc_flags::MAGLEV, 0)]));
    let fa = FrontendAddr::new(*vip.ip(), 80, Protocol::Tcp);
    let id = l.reconciler.frontend_id(&fa).unwrap();
    let table = l.reconciler.maps().maglev_table(id).unwrap().expect("a Maglev table is installed");
    assert_eq!(table.len(), sizes::MAGLEV_M as usize);
    let backend_of: BTreeMap<u32, SocketAddrV4> = l
        .reconciler
        .maps()
        .live_backends()
        .unwrap()
        .into_iter()
        .map(|(id, b)| (id, SocketAddrV4::new(b.addr.to_ne_bytes().into(), u16::from_be(b.port))))
        .collect();

    let mut used = BTreeMap::<SocketAddrV4, usize>::new();
    for port in 30000..30300u16 {
        let c = client(port);
        let out = l.run(&testrun::tcp(c, vip, "S", 1, b""));
        let hash = flow_hash(u32::from_ne_bytes(c.ip().octets()), u32::from_ne_bytes(vip.ip().octets()), port.to_be(), 80u16.to_be(), 6);
        let want = backend_of[&table[(hash % sizes::MAGLEV_M) as usize]];
        assert_eq!(dnat_target(&out.packet), want, "flow from port {port}");
        *used.entry(want).or_default() += 1;
    }
    assert_eq!(used.len(), 5, "all backends take flows: {used:?}");

    // Without conntrack (another node, or an evicted entry) every flow
    // still goes to the same backend.
    let mut ct = l.reconciler.maps().ct.entries().unwrap();
    for (k, _) in ct.drain(..) {
        l.reconciler.maps_mut().ct.remove(&k).unwrap();
    }
    for port in 30000..30300u16 {
        let c = client(port);
        let first = dnat_target(&l.run(&testrun::tcp(c, vip, "A", 2, b"")).packet);
        let again = dnat_target(&l.run(&testrun::tcp(c, vip, "A", 3, b"")).packet);
        assert_eq!(first, again);
    }

    // Removing one backend moves only the flows it had (plus ~1%).
    let before: Vec<SocketAddrV4> = (30000..30300u16)
        .map(|p| {
            backend_of[&table[(flow_hash(
                u32::from_ne_bytes(client(p).ip().octets()),
                u32::from_ne_bytes(vip.ip().octets()),
                p.to_be(),
                80u16.to_be(),
                6,
            ) % sizes::MAGLEV_M) as usize]]
        })
        .collect();
    let four: Vec<String> = five[..4].to_vec();
    let stats = l.reconciler.apply(&desired(vec![svc("10.96.0.40:80", &four, svc_flags::MAGLEV, 0)]));
    assert_eq!(stats.maglev_tables, 1, "the table was rewritten");
    // Only the slots that changed (the removed backend's fifth, and a
    // little more) were written, not all M.
    assert!(stats.ops < sizes::MAGLEV_M as u64 / 3, "{} map writes for one backend less: {stats:?}", stats.ops);
    let removed = sa(&five[4]);
    let mut moved = 0;
    for (i, port) in (30000..30300u16).enumerate() {
        let now = dnat_target(&l.run(&testrun::tcp(client(port), vip, "S", 1, b"")).packet);
        assert_ne!(now, removed);
        if before[i] != removed && now != before[i] {
            moved += 1;
        }
    }
    assert!(moved <= 300 / 100 + 3, "{moved} of 300 flows moved off surviving backends");
}

#[test]
fn session_affinity_pins_a_client_until_it_expires_or_its_backend_goes() {
    if !kernel_tests_enabled() {
        return;
    }
    let vip = sa("10.96.0.50:80");
    let three = backends(3);
    let mut l = Loaded::new("affinity", desired(vec![svc("10.96.0.50:80", &three, svc_flags::AFFINITY, 60)]));

    // 100 connections (distinct source ports) from one client: one backend.
    let first = dnat_target(&l.run(&testrun::tcp(client(40000), vip, "S", 1, b"")).packet);
    for port in 40001..40100u16 {
        let b = dnat_target(&l.run(&testrun::tcp(client(port), vip, "S", 1, b"")).packet);
        assert_eq!(b, first, "connection from port {port}");
    }
    // Other clients are spread: 20 clients land on more than one backend.
    let mut others = BTreeMap::<SocketAddrV4, usize>::new();
    for host in 20..40u8 {
        let c = SocketAddrV4::new([10, 244, 2, host].into(), 40000);
        *others.entry(dnat_target(&l.run(&testrun::tcp(c, vip, "S", 1, b"")).packet)).or_default() += 1;
    }
    assert!(others.len() > 1, "{others:?}");

    // Expire the client's entry: its next connection is chosen afresh
    // (and sticks again). Ageing the entry stands in for waiting.
    let id = l.reconciler.frontend_id(&FrontendAddr::new(*vip.ip(), 80, Protocol::Tcp)).unwrap();
    let frontend_version = l.reconciler.maps().revnat.get(id).unwrap().version;
    let key = Affinity4Key { client: u32::from_ne_bytes(client(0).ip().octets()) as u64, frontend_id: id, frontend_version, _pad: 0 };
    let mut moved = false;
    for round in 0..30u16 {
        let mut entry = l.reconciler.maps().affinity.get(&key).unwrap().expect("affinity entry");
        entry.last_used -= 61 * 1_000_000_000;
        l.reconciler.maps_mut().affinity.insert(&key, &entry).unwrap();
        let b = dnat_target(&l.run(&testrun::tcp(client(41000 + round), vip, "S", 1, b"")).packet);
        let again = dnat_target(&l.run(&testrun::tcp(client(42000 + round), vip, "S", 1, b"")).packet);
        assert_eq!(b, again, "sticks again after being re-chosen");
        if b != first {
            moved = true;
            break;
        }
    }
    assert!(moved, "after expiry the client could move (30 fresh random choices all hit {first})");

    // Remove the client's current backend: its affinity entry no longer
    // holds (the backend's slot version moved on), so the client moves at
    // once and sticks to the new one; garbage collection deletes the entry.
    let current = dnat_target(&l.run(&testrun::tcp(client(43000), vip, "S", 1, b"")).packet);
    let rest: Vec<String> = three.iter().filter(|b| sa(b) != current).cloned().collect();
    let stats = l.reconciler.apply(&desired(vec![svc("10.96.0.50:80", &rest, svc_flags::AFFINITY, 60)]));
    assert!(stats.errors.is_empty(), "{stats:?}");
    let next = dnat_target(&l.run(&testrun::tcp(client(43001), vip, "S", 1, b"")).packet);
    assert_ne!(next, current);
    for port in 43002..43020u16 {
        assert_eq!(dnat_target(&l.run(&testrun::tcp(client(port), vip, "S", 1, b"")).packet), next);
    }
    let gc = l.reconciler.collect_conntrack(&CtTimeouts::DEFAULT, monotonic_ns()).unwrap();
    assert!(gc.affinity_deleted >= 1, "{gc:?}");
}

/// The conntrack entry of a flow, by its client tuple.
fn ct_entry(l: &Loaded, c: SocketAddrV4, vip: SocketAddrV4, proto: u8) -> Option<lb_common::CtEntry> {
    let key = lb_common::Ct4Key {
        saddr: u32::from_ne_bytes(c.ip().octets()),
        daddr: u32::from_ne_bytes(vip.ip().octets()),
        sport: c.port().to_be(),
        dport: vip.port().to_be(),
        proto,
        dir: CT_SERVICE,
        _pad: 0,
    };
    l.reconciler.maps().ct.get(&key).unwrap()
}

#[test]
fn conntrack_timeouts_reuse_and_garbage_collection() {
    if !kernel_tests_enabled() {
        return;
    }
    let vip = sa("10.96.0.60:80");
    let mut l = Loaded::new("ctgc", desired(vec![svc("10.96.0.60:80", &backends(2), 0, 0)]));
    let t = CtTimeouts::DEFAULT;

    // Three flows: established, closed (FIN both ways), and a bare SYN
    // the backend answered but the client never acknowledged (half-open).
    let est = client(50000);
    let est_be = dnat_target(&l.run(&testrun::tcp(est, vip, "S", 1, b"")).packet);
    l.run_egress(&testrun::tcp(est_be, est, "SA", 1, b""));
    l.run(&testrun::tcp(est, vip, "A", 2, b""));
    let closing = client(50001);
    let closing_be = dnat_target(&l.run(&testrun::tcp(closing, vip, "S", 1, b"")).packet);
    l.run_egress(&testrun::tcp(closing_be, closing, "SA", 1, b""));
    l.run(&testrun::tcp(closing, vip, "A", 2, b""));
    l.run(&testrun::tcp(closing, vip, "FA", 3, b""));
    // Half-closed: the flow lives on (a SYN now would follow it).
    assert_eq!(dnat_target(&l.run(&testrun::tcp(closing, vip, "S", 3, b"")).packet), closing_be);
    l.run_egress(&testrun::tcp(closing_be, closing, "FA", 2, b""));
    let syn = client(50002);
    let syn_be = dnat_target(&l.run(&testrun::tcp(syn, vip, "S", 1, b"")).packet);
    l.run_egress(&testrun::tcp(syn_be, syn, "SA", 1, b""));
    assert_eq!(l.reconciler.maps().ct.entries().unwrap().len(), 6, "two entries per flow");
    assert_eq!(ct_entry(&l, est, vip, 6).unwrap().tcp_flags, ct_flags::SYN | ct_flags::ACK);

    // A new SYN on the closed flow's tuple starts a new flow (flags reset).
    l.run(&testrun::tcp(closing, vip, "S", 9, b""));
    assert_eq!(ct_entry(&l, closing, vip, 6).unwrap().tcp_flags, ct_flags::SYN);
    let e = ct_entry(&l, closing, vip, 6).unwrap();
    let now_be = SocketAddrV4::new(std::net::Ipv4Addr::from(e.nat_daddr.to_ne_bytes()), u16::from_be(e.nat_dport));
    let now_src = SocketAddrV4::new(*closing.ip(), u16::from_be(e.nat_sport));
    l.run(&testrun::tcp(closing, vip, "FA", 10, b""));
    l.run_egress(&testrun::tcp(now_be, now_src, "FA", 10, b""));

    // Garbage collection: at now + 11 s only the closed flow has run out
    // (closing 10 s); at now + 61 s the half-open one too (the SYN timeout,
    // not the 6 h of an established flow); the established flow survives
    // until its 6 h.
    let now = monotonic_ns();
    let gc = l.reconciler.collect_conntrack(&t, now).unwrap();
    assert_eq!(gc.deleted, 0, "nothing expires right away: {gc:?}");
    let gc = l.reconciler.collect_conntrack(&t, now + 11_000_000_000).unwrap();
    // The closed flow, both directions (plus the reply entry of its first
    // incarnation).
    assert_eq!(gc.remaining, 4, "only the established and half-open flows are left: {gc:?}");
    assert!(ct_entry(&l, closing, vip, 6).is_none());
    let gc = l.reconciler.collect_conntrack(&t, now + 61_000_000_000).unwrap();
    assert_eq!(gc.deleted, 2, "the half-open flow: {gc:?}");
    assert!(ct_entry(&l, syn, vip, 6).is_none());
    assert!(ct_entry(&l, est, vip, 6).is_some(), "a live established flow is never collected");
    assert_eq!(gc.remaining, 2);

    // A flow that keeps sending is never collected: its last_seen moves.
    // (The datapath's clock is CLOCK_MONOTONIC_COARSE: it moves once per
    // tick, 10 ms at HZ=100.)
    let before = ct_entry(&l, est, vip, 6).unwrap().last_seen;
    std::thread::sleep(std::time::Duration::from_millis(25));
    l.run(&testrun::tcp(est, vip, "A", 3, b"x"));
    assert!(ct_entry(&l, est, vip, 6).unwrap().last_seen > before);

    // An expired entry is not reused by the datapath even before GC: a UDP
    // flow aged past its timeout is chosen afresh (last_seen renewed).
    let dns = sa("10.96.0.60:53");
    let (a, mut f) = frontend("10.96.0.60:53", Protocol::Udp, &["10.244.1.10:5353"]);
    f.name = "test/dns".into();
    let mut all = desired(vec![svc("10.96.0.60:80", &backends(2), 0, 0)]);
    all.insert(a, f);
    l.reconciler.apply(&all);
    let c = client(50100);
    l.run(&testrun::udp(c, dns, b"q"));
    let key = lb_common::Ct4Key {
        saddr: u32::from_ne_bytes(c.ip().octets()),
        daddr: u32::from_ne_bytes(dns.ip().octets()),
        sport: c.port().to_be(),
        dport: 53u16.to_be(),
        proto: 17,
        dir: CT_SERVICE,
        _pad: 0,
    };
    let mut e = l.reconciler.maps().ct.get(&key).unwrap().unwrap();
    e.last_seen -= (t.udp as u64 + 1) * 1_000_000_000;
    e.backend_id = 999_999; // would blackhole if reused
    l.reconciler.maps_mut().ct.insert(&key, &e).unwrap();
    let out = l.run(&testrun::udp(c, dns, b"q2"));
    assert_eq!(dnat_target(&out.packet), sa("10.244.1.10:5353"));
    assert_ne!(l.reconciler.maps().ct.get(&key).unwrap().unwrap().backend_id, 999_999);
}

/// The longest tick the datapath's clock may lag by (HZ >= 100).
const TICK_NS: u64 = 10_000_000;

/// Pins the calling thread to `cpu`: a test run runs the program on the
/// calling CPU.
fn pin_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set), 0, "pinning to CPU {cpu}");
    }
}

#[test]
fn the_datapaths_clock_follows_clock_monotonic_on_every_cpu() {
    if !kernel_tests_enabled() {
        return;
    }
    // The datapath reads the coarse clock once per tick and CPU and keeps
    // it for the tick (`LB_CLOCK`): a flow's `last_seen`, written by a
    // packet on any CPU, must still be CLOCK_MONOTONIC within two ticks,
    // after the CPU's copy has grown old.
    let vip = sa("10.96.0.80:53");
    let (a, f) = frontend("10.96.0.80:53", Protocol::Udp, &["10.244.1.10:5353"]);
    let mut l = Loaded::new("clock", desired(vec![(a, f)]));
    let c = client(52000);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut last = 0;
    for round in 0..3 {
        for cpu in 0..cpus {
            pin_thread(cpu);
            // Older than this CPU's copy by more than two ticks.
            std::thread::sleep(std::time::Duration::from_millis(30));
            for packet in 0..2 {
                let before = monotonic_ns();
                l.run(&testrun::udp(c, vip, b"q"));
                let after = monotonic_ns();
                let seen = ct_entry(&l, c, vip, 17).unwrap().last_seen;
                assert!(
                    seen <= after && seen + 2 * TICK_NS >= before,
                    "round {round}, CPU {cpu}, packet {packet}: last_seen {seen} against CLOCK_MONOTONIC {before}..{after}"
                );
                assert!(seen >= last, "round {round}, CPU {cpu}: last_seen went back from {last} to {seen}");
                last = seen;
            }
        }
    }
}

#[test]
fn removing_a_backend_purges_its_flows_only() {
    if !kernel_tests_enabled() {
        return;
    }
    let vip = sa("10.96.0.70:53");
    let refs = ["10.244.1.10:5353", "10.244.1.11:5353"];
    let (a, f) = frontend("10.96.0.70:53", Protocol::Udp, &refs);
    let mut l = Loaded::new("purge", desired(vec![(a, f)]));
    let mut on = BTreeMap::<SocketAddrV4, Vec<SocketAddrV4>>::new();
    for port in 51000..51040u16 {
        let out = l.run(&testrun::udp(client(port), vip, b"q"));
        on.entry(dnat_target(&out.packet)).or_default().push(client(port));
    }
    assert_eq!(on.len(), 2);
    let gone = sa(refs[0]);
    let (a, f) = frontend("10.96.0.70:53", Protocol::Udp, &refs[1..]);
    let before = l.reconciler.maps().ct.entries().unwrap().len();
    let stats = l.reconciler.apply(&desired(vec![(a, f)]));
    // The sync walks no flows: a handful of writes, whatever conntrack holds.
    assert!(stats.ops <= 6, "{stats:?}");
    assert_eq!(l.reconciler.maps().ct.entries().unwrap().len(), before, "nothing deleted on the sync");
    for c in &on[&gone] {
        // The client's next datagram moves to the live backend at once:
        // the removed backend's slot version moved on.
        let out = l.run(&testrun::udp(*c, vip, b"again"));
        assert_eq!(dnat_target(&out.packet), sa(refs[1]));
    }
    for c in &on[&sa(refs[1])] {
        assert!(ct_entry(&l, *c, vip, 17).is_some(), "flows to the live backend stay");
        let out = l.run(&testrun::udp(*c, vip, b"again"));
        assert_eq!(dnat_target(&out.packet), sa(refs[1]));
    }
    // A frontend's removal makes all its flows invalid; garbage collection
    // deletes them.
    let stats = l.reconciler.apply(&Desired::new());
    assert_eq!(stats.removed, 1);
    let gc = l.reconciler.collect_conntrack(&CtTimeouts::DEFAULT, monotonic_ns()).unwrap();
    assert_eq!(l.reconciler.maps().ct.entries().unwrap().len(), 0, "{gc:?}");
    assert_eq!(gc.invalid, gc.deleted);
}

#[test]
fn a_backend_that_leaves_one_frontend_but_serves_another_loses_only_that_frontends_flows() {
    if !kernel_tests_enabled() {
        return;
    }
    // 10.244.1.10:5353 serves two Services. It leaves the first: the
    // first's flows to it are purged at the next garbage collection, the
    // second's stay.
    let shared = "10.244.1.10:5353";
    let (a1, f1) = frontend("10.96.0.71:53", Protocol::Udp, &[shared, "10.244.1.11:5353"]);
    let (a2, f2) = frontend("10.96.0.72:53", Protocol::Udp, &[shared]);
    let mut l = Loaded::new("purge-shared", desired(vec![(a1, f1), (a2, f2.clone())]));
    let (vip1, vip2) = (sa("10.96.0.71:53"), sa("10.96.0.72:53"));
    let mut on_shared = Vec::new();
    for port in 52000..52040u16 {
        if dnat_target(&l.run(&testrun::udp(client(port), vip1, b"q")).packet) == sa(shared) {
            on_shared.push(client(port));
        }
        l.run(&testrun::udp(client(port), vip2, b"q"));
    }
    assert!(!on_shared.is_empty());
    let (a1, f1) = frontend("10.96.0.71:53", Protocol::Udp, &["10.244.1.11:5353"]);
    let stats = l.reconciler.apply(&desired(vec![(a1, f1), (a2, f2)]));
    assert_eq!(stats.purges_queued, 1, "{stats:?}");
    let gc = l.reconciler.collect_conntrack(&CtTimeouts::DEFAULT, monotonic_ns()).unwrap();
    assert_eq!(gc.purged, 2 * on_shared.len(), "both directions of each of the first's flows to it: {gc:?}");
    for c in &on_shared {
        assert!(ct_entry(&l, *c, vip1, 17).is_none());
        assert_eq!(dnat_target(&l.run(&testrun::udp(*c, vip1, b"again")).packet), sa("10.244.1.11:5353"));
    }
    for port in 52000..52040u16 {
        assert!(ct_entry(&l, client(port), vip2, 17).is_some(), "the second Service's flows stay");
    }
    assert_eq!(l.reconciler.pending_purges(), 0);
}

#[test]
fn a_reused_client_port_never_puts_two_flows_on_one_backend_tuple() {
    if !kernel_tests_enabled() {
        return;
    }
    // Two Services with the same two backends (one random, one Maglev). A
    // client that reuses its port for the second one may land on the
    // backend it just used: the second flow then gets another source port,
    // so the backend sees two tuples (and a tuple in TIME_WAIT there is
    // never reused).
    let two = backends(2);
    let mut l =
        Loaded::new("tuple-reuse", desired(vec![svc("10.96.0.80:80", &two, 0, 0), svc("10.96.0.81:80", &two, svc_flags::MAGLEV, 0)]));
    let (a, b) = (sa("10.96.0.80:80"), sa("10.96.0.81:80"));
    let mut same_backend = 0;
    for port in 41000..41060u16 {
        let c = client(port);
        let first = l.run(&testrun::tcp(c, a, "S", 1, b"")).packet;
        let second = l.run(&testrun::tcp(c, b, "S", 1, b"")).packet;
        let tuple = |p: &[u8]| (p[26..38].to_vec(), dnat_target(p));
        assert_ne!(tuple(&first), tuple(&second), "client port {port}: two flows on one tuple");
        if dnat_target(&first) == dnat_target(&second) {
            same_backend += 1;
        }
    }
    assert!(same_backend > 0, "some pairs shared a backend (and so needed another port)");
    assert_eq!(l.stat(lb_common::stat::PORT_REMAPPED), same_backend);
}

/// The IPv6 conntrack (`LB6_CT_TCP`) is garbage collected as the IPv4 one:
/// a closed flow goes after the closing timeout, an established one stays,
/// and the flows of a removed backend go at the next collection.
#[test]
fn ipv6_conntrack_garbage_collection() {
    if !kernel_tests_enabled() {
        return;
    }
    let vip = sa6("[fd00:96::60]:80");
    let bes = [sa6("[fd00:10:244::d]:8080"), sa6("[fd00:10:244::e]:8080")];
    let mut l = Loaded::new("ctgc6", Desired::default());
    apply6(&mut l, vip, &bes, 0, 0);
    let client = |port| SocketAddrV6::new("fd00:10:244::b".parse().unwrap(), port, 0, 0);
    // A segment through tc ingress (from a client) or egress (a reply).
    let send = |l: &mut Loaded, from: SocketAddrV6, to: SocketAddrV6, flags: &str, egress: bool| {
        let p = tcp6(from, to, flags, 1);
        if egress { l.run_egress(&p) } else { l.run(&p) }.packet
    };
    // An established flow, and a closed one (FIN both ways).
    let est = client(50000);
    let est_be = target6(&send(&mut l, est, vip, "S", false));
    send(&mut l, est_be, est, "SA", true);
    send(&mut l, est, vip, "A", false);
    let closed = client(50001);
    let closed_be = target6(&send(&mut l, closed, vip, "S", false));
    send(&mut l, closed_be, closed, "SA", true);
    send(&mut l, closed, vip, "A", false);
    send(&mut l, closed, vip, "FA", false);
    send(&mut l, closed_be, closed, "FA", true);
    let v6_flows = |l: &Loaded| l.reconciler.maps().v6.ct_tcp.entries().unwrap();
    assert_eq!(v6_flows(&l).len(), 4, "two entries per flow");
    // The service entries of a client's flow.
    let of = |l: &Loaded, c: SocketAddrV6| {
        v6_flows(l).iter().filter(|(k, _)| lb_common::ipv6(k.saddr) == *c.ip() && k.sport == c.port().to_be()).count()
    };

    let t = CtTimeouts::DEFAULT;
    let now = monotonic_ns();
    let gc = l.reconciler.collect_conntrack(&t, now).unwrap();
    assert_eq!(gc.deleted, 0, "nothing expires right away: {gc:?}");
    let fill = gc.fills.iter().find(|f| f.map == "LB6_CT_TCP").copied().unwrap();
    assert_eq!((fill.remaining, fill.capacity), (4, sizes::CT_TCP6), "{gc:?}");
    let gc = l.reconciler.collect_conntrack(&t, now + 11_000_000_000).unwrap();
    assert_eq!((gc.deleted, gc.remaining), (2, 2), "the closed flow, both directions: {gc:?}");
    assert_eq!(of(&l, closed), 0);
    assert_eq!(of(&l, est), 1, "the established flow's service entry stays");

    // The established flow's backend is removed: its entries go at once.
    let rest: Vec<SocketAddrV6> = bes.iter().copied().filter(|b| *b != est_be).collect();
    apply6(&mut l, vip, &rest, 0, 0);
    let gc = l.reconciler.collect_conntrack(&t, monotonic_ns()).unwrap();
    assert_eq!((gc.invalid, gc.deleted, gc.remaining), (2, 2, 0), "{gc:?}");
    assert!(v6_flows(&l).is_empty());
}

/// `--affinity-ipv6-prefix` in tc (an IPv6 ClusterIP from pods): with the
/// default (`LB6_NODE` zeroed, or 128) each client address has its own
/// affinity entry; with 64 the clients of one /64 share one entry and one
/// backend, another /64 has its own.
#[test]
fn ipv6_session_affinity_keys_a_client_prefix() {
    if !kernel_tests_enabled() {
        return;
    }
    let vip = sa6("[fd00:96::61]:80");
    let bes: Vec<SocketAddrV6> = (0..4).map(|i| sa6(&format!("[fd00:10:244::{:x}]:8080", 0x20 + i))).collect();
    let mut l = Loaded::new("affinity6", Desired::default());
    apply6(&mut l, vip, &bes, svc_flags::AFFINITY, 10_800);
    // The backend a client's new connection goes to.
    let chosen =
        |l: &mut Loaded, client: &str| -> Ipv6Addr { *target6(&l.run(&tcp6(sa6(&format!("[{client}]:43000")), vip, "S", 1)).packet).ip() };
    let entries = |l: &Loaded| l.reconciler.maps().affinity.entries().unwrap().len();
    for i in 0..8 {
        chosen(&mut l, &format!("fd00:10:244:1::{i}"));
    }
    assert_eq!(entries(&l), 8, "the default: each address keyed apart");
    l.reconciler.maps_mut().write_node6(&lb_agent::northsouth::node6_config(None, 64)).unwrap();
    let got: std::collections::BTreeSet<Ipv6Addr> = (0..8).map(|i| chosen(&mut l, &format!("fd00:10:244:2::{i}"))).collect();
    assert_eq!(got.len(), 1, "one /64, one backend: {got:?}");
    assert_eq!(entries(&l), 9, "one /64, one entry");
    chosen(&mut l, "fd00:10:244:3::1");
    assert_eq!(entries(&l), 10, "another /64, another entry");
}

/// An IPv6 Maglev frontend picks the slot of the agent's table (in the
/// shared `LB4_MAGLEV`, by its shared frontend ID) for
/// [`flow_hash6`](lb_common::hash::flow_hash6) of the flow, with and
/// without conntrack, and a backend less moves only its own flows.
#[test]
fn ipv6_maglev_picks_exactly_the_agents_table_slot() {
    if !kernel_tests_enabled() {
        return;
    }
    use lb_common::hash::flow_hash6;
    let vip = sa6("[fd00:96::40]:80");
    let five: Vec<SocketAddrV6> = (0..5).map(|i| sa6(&format!("[fd00:10:244:1::{:x}]:8080", 0x10 + i))).collect();
    let mut l = Loaded::new("maglev6", Desired::default());
    apply6(&mut l, vip, &five, svc_flags::MAGLEV, 0);
    let id = l.reconciler.frontend_id(&FrontendAddr::new(*vip.ip(), 80, Protocol::Tcp)).unwrap();
    let table = l.reconciler.maps().maglev_table(id).unwrap().expect("a Maglev table is installed");
    assert_eq!(table.len(), sizes::MAGLEV_M as usize);
    let words =
        |ip: &Ipv6Addr| -> [u32; 4] { std::array::from_fn(|i| u32::from_ne_bytes(ip.octets()[4 * i..4 * i + 4].try_into().unwrap())) };
    let backend_of: BTreeMap<u32, SocketAddrV6> = l
        .reconciler
        .maps()
        .v6
        .backends
        .slots()
        .unwrap()
        .into_iter()
        .filter(|(_, b)| b.addr != [0; 4])
        .map(|(id, b)| {
            let octets: Vec<u8> = b.addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let ip = <[u8; 16]>::try_from(octets).unwrap();
            (id, SocketAddrV6::new(ip.into(), u16::from_be(b.port), 0, 0))
        })
        .collect();
    assert_eq!(backend_of.len(), 5);
    let client = |port: u16| sa6(&format!("[fd00:10:244::b]:{port}"));
    let table_pick = |port: u16| {
        let hash = flow_hash6(&words(client(port).ip()), &words(vip.ip()), port.to_be(), 80u16.to_be(), 6);
        backend_of[&table[(hash % sizes::MAGLEV_M) as usize]]
    };
    let ports = 30000..30300u16;
    let mut used = BTreeMap::<SocketAddrV6, usize>::new();
    for port in ports.clone() {
        let got = target6(&l.run(&tcp6(client(port), vip, "S", 1)).packet);
        assert_eq!(got, table_pick(port), "flow from port {port}");
        *used.entry(got).or_default() += 1;
    }
    assert_eq!(used.len(), 5, "all backends take flows: {used:?}");

    // Without conntrack (another node, or an evicted entry) every flow
    // still goes to the same backend.
    let ct = &mut l.reconciler.maps_mut().v6.ct_tcp;
    let keys: Vec<_> = ct.entries().unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(keys.len() >= 300, "{} entries", keys.len());
    assert_eq!(ct.remove_all(&keys).unwrap(), keys.len());
    for port in ports.clone() {
        let first = target6(&l.run(&tcp6(client(port), vip, "A", 2)).packet);
        let again = target6(&l.run(&tcp6(client(port), vip, "A", 3)).packet);
        assert_eq!((first, again), (table_pick(port), table_pick(port)), "flow from port {port} without its entry");
    }

    // A backend less moves only the flows it had (plus about 1 %).
    let before: Vec<SocketAddrV6> = ports.clone().map(table_pick).collect();
    let stats = apply6(&mut l, vip, &five[..4], svc_flags::MAGLEV, 0);
    assert_eq!(stats.maglev_tables, 1, "the table was rewritten");
    let mut moved = 0;
    for (i, port) in ports.enumerate() {
        let now = target6(&l.run(&tcp6(client(port), vip, "S", 1)).packet);
        assert_ne!(now, five[4], "flow from port {port} on the removed backend");
        if before[i] != five[4] && now != before[i] {
            moved += 1;
        }
    }
    assert!(moved <= 300 / 100 + 3, "{moved} of 300 flows moved off surviving backends");
}

/// As IPv4's: an IPv6 client's affinity holds until its entry expires
/// (then it is chosen afresh and sticks again) and moves at once when its
/// backend goes; garbage collection deletes the entries naming a removed
/// backend.
#[test]
fn ipv6_session_affinity_pins_a_client_until_it_expires_or_its_backend_goes() {
    if !kernel_tests_enabled() {
        return;
    }
    let vip = sa6("[fd00:96::62]:80");
    let three: Vec<SocketAddrV6> = (0..3).map(|i| sa6(&format!("[fd00:10:244:1::{:x}]:8080", 0x30 + i))).collect();
    let mut l = Loaded::new("affinity6-expiry", Desired::default());
    apply6(&mut l, vip, &three, svc_flags::AFFINITY, 60);
    // The backend a new connection from the client's `port` goes to.
    let chosen_for = |l: &mut Loaded, client: &str, port: u16| -> Ipv6Addr {
        *target6(&l.run(&tcp6(sa6(&format!("[{client}]:{port}")), vip, "S", 1)).packet).ip()
    };
    let chosen = |l: &mut Loaded, port: u16| chosen_for(l, "fd00:10:244::b", port);
    let first = chosen(&mut l, 40000);
    for port in 40001..40050u16 {
        assert_eq!(chosen(&mut l, port), first, "connection from port {port}");
    }
    // Other clients are spread: 20 clients land on more than one backend.
    let others: Vec<Ipv6Addr> = (0..20).map(|i| chosen_for(&mut l, &format!("fd00:10:244:2::{:x}", 0x20 + i), 40000)).collect();
    assert!(others.iter().any(|b| *b != others[0]), "{others:?}");

    // Expire the client's entry (ageing it stands in for waiting): its
    // next connection is chosen afresh, and sticks again.
    let mut moved = false;
    for round in 0..30u16 {
        let entries = l.reconciler.maps().affinity.entries().unwrap();
        assert_eq!(entries.len(), 21, "an entry per client");
        for (k, mut e) in entries {
            e.last_used -= 61 * 1_000_000_000;
            l.reconciler.maps_mut().affinity.insert(&k, &e).unwrap();
        }
        let b = chosen(&mut l, 41000 + round);
        assert_eq!(chosen(&mut l, 42000 + round), b, "sticks again after being re-chosen");
        if b != first {
            moved = true;
            break;
        }
    }
    assert!(moved, "after expiry the client could move (30 fresh random choices all hit {first})");

    // Remove the client's current backend: the client moves at once and
    // sticks to the new one (its entry rewritten); garbage collection
    // deletes the entries of the other clients that had it.
    let current = chosen(&mut l, 43000);
    let stale = others.iter().filter(|b| **b == current).count();
    let rest: Vec<SocketAddrV6> = three.iter().copied().filter(|b| *b.ip() != current).collect();
    apply6(&mut l, vip, &rest, svc_flags::AFFINITY, 60);
    let next = chosen(&mut l, 43001);
    assert_ne!(next, current);
    for port in 43002..43020u16 {
        assert_eq!(chosen(&mut l, port), next, "connection from port {port}");
    }
    let gc = l.reconciler.collect_conntrack(&CtTimeouts::DEFAULT, monotonic_ns()).unwrap();
    assert_eq!(gc.affinity_deleted, stale, "{gc:?}");
    assert_eq!(l.reconciler.maps().affinity.entries().unwrap().len(), 21 - stale);
}
