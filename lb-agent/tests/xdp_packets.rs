//! North-south packet fixtures through BPF_PROG_TEST_RUN, each run in
//! both hooks the path has: XDP (`lb_xdp`) and tc (`lb_tc_ns`, `--xdp-mode
//! tc`; see `Hook`): NodePort DNAT+SNAT towards a backend on another node
//! and the reverse translation of its replies, DNAT only for a local
//! backend, UDP, source ranges, rejects and drops, NAT port collisions.
//! Expected packets are built from scratch by etherparse, so its checksum
//! code checks the program's incremental updates (tc's through the
//! kernel's checksum helpers).
//!
//! `bpf_fib_lookup` in a test run consults the calling thread's network
//! namespace, so each test enters a private namespace that looks like a
//! node's external side: `ext0` (192.168.50.1/24) with permanent
//! neighbours for node B (192.168.50.2) and the client (192.168.50.100),
//! and node B's pod CIDR 10.244.2.0/24 routed via node B.

mod common;

use std::{
    collections::BTreeMap,
    fs::File,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsFd, AsRawFd},
    time::Duration,
};

use aya::programs::{SchedClassifier, Xdp};
use common::{Loaded, assert_checksums_valid, hex, kernel_tests_enabled, sa};
use etherparse::{Icmpv4Type, Icmpv6Type, NetSlice, SlicedPacket, TransportSlice, icmpv4::DestUnreachableHeader};
use lb_agent::{
    datapath::{TC_EGRESS_PROGRAM, TC_NS_PROGRAM, XDP_PASS_PROGRAM, XDP_PROGRAM},
    model::{Backend, BackendAddr, Cidr, Desired, Frontend, FrontendAddr, Protocol},
    reconcile::Stats,
};
use lb_common::{NodeConfig, node_flags, stat, svc_flags, vip_filter, vip_flags};
use lb_lab::Netns;
use lb_lab::testrun::{self, Frame, Outcome, XDP_DROP, XDP_PASS, XDP_TX};

const EXT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x50, 0x01];
const NODE_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x50, 0x02];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x50, 0x64];
const EXT1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x70, 0x01];
const NODE_C_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x70, 0x03];
const NODE_IP: &str = "192.168.50.1";
const CLIENT_IP: &str = "192.168.50.100";
const NAT_PORT: u16 = 61000;

/// From the client to node A, as it arrives.
const IN: Frame = Frame { src_mac: CLIENT_MAC, dst_mac: EXT_MAC, ttl: 64 };
/// Forwarded by node A to node B.
const TO_B: Frame = Frame { src_mac: EXT_MAC, dst_mac: NODE_B_MAC, ttl: 63 };
/// A reply as node B sends it to node A.
const FROM_B: Frame = Frame { src_mac: NODE_B_MAC, dst_mac: EXT_MAC, ttl: 64 };
/// Forwarded by node A back to the client.
const TO_CLIENT: Frame = Frame { src_mac: EXT_MAC, dst_mac: CLIENT_MAC, ttl: 63 };

/// The calling thread inside a network namespace until dropped.
struct Entered {
    orig: File,
}

impl Entered {
    fn enter(ns: &Netns) -> Entered {
        let orig = File::open("/proc/thread-self/ns/net").unwrap();
        // SAFETY: setns on valid fds; only this thread changes namespace.
        assert_eq!(unsafe { libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        Entered { orig }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// The external side of node A (see the module docs).
fn mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn external_side() -> Netns {
    let ns = Netns::new("xdp-fixture").unwrap();
    // bpf_fib_lookup answers only where forwarding is on.
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    ns.ip(&["link", "add", "ext0", "address", &mac(EXT_MAC), "type", "veth", "peer", "name", "peer0"]).unwrap();
    ns.ip(&["addr", "add", "192.168.50.1/24", "dev", "ext0"]).unwrap();
    ns.ip(&["link", "set", "peer0", "up"]).unwrap();
    ns.ip(&["link", "set", "ext0", "up"]).unwrap();
    for (ip, m) in [("192.168.50.2", NODE_B_MAC), (CLIENT_IP, CLIENT_MAC)] {
        ns.ip(&["neigh", "replace", ip, "lladdr", &mac(m), "dev", "ext0", "nud", "permanent"]).unwrap();
    }
    ns.ip(&["route", "add", "10.244.2.0/24", "via", "192.168.50.2", "dev", "ext0"]).unwrap();
    // A second external interface, towards node C.
    ns.ip(&["link", "add", "ext1", "address", &mac(EXT1_MAC), "type", "veth", "peer", "name", "peer1"]).unwrap();
    ns.ip(&["addr", "add", "192.168.70.1/24", "dev", "ext1"]).unwrap();
    ns.ip(&["link", "set", "peer1", "up"]).unwrap();
    ns.ip(&["link", "set", "ext1", "up"]).unwrap();
    ns.ip(&["neigh", "replace", "192.168.70.3", "lladdr", &mac(NODE_C_MAC), "dev", "ext1", "nud", "permanent"]).unwrap();
    ns.ip(&["route", "add", "10.244.3.0/24", "via", "192.168.70.3", "dev", "ext1"]).unwrap();
    // IPv6 on ext0: node A fd00:50::1/64, node B fd00:50::2 and the client
    // fd00:50::64 its neighbours, node B's pods fd00:244:2::/48 via node B.
    ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    ns.ip(&["-6", "addr", "add", "fd00:50::1/64", "dev", "ext0", "nodad"]).unwrap();
    for (ip, m) in [("fd00:50::2", NODE_B_MAC), ("fd00:50::64", CLIENT_MAC)] {
        ns.ip(&["-6", "neigh", "replace", ip, "lladdr", &mac(m), "dev", "ext0", "nud", "permanent"]).unwrap();
    }
    ns.ip(&["-6", "route", "add", "fd00:244:2::/48", "via", "fd00:50::2", "dev", "ext0"]).unwrap();
    ns
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "interface {name} missing");
    i
}

fn backend(addr: &str, proto: Protocol, node: &str) -> Backend {
    let a = sa(addr);
    Backend {
        addr: BackendAddr { ip: *a.ip(), port: a.port(), proto },
        terminating: false,
        node_name: Some(node.into()),
        zone: None,
        hints: None,
    }
}

fn front(addr: &str, proto: Protocol, flags: u32, backends: Vec<Backend>) -> (FrontendAddr, Frontend) {
    let a = sa(addr);
    let fa = FrontendAddr::new(*a.ip(), a.port(), proto);
    (fa, Frontend { addr: fa, name: format!("test/{addr}"), backends, flags, affinity_timeout: 0 })
}

/// Node A's frontends:
/// - NodePort 30080/TCP -> 10.244.2.10:8080 on node B;
/// - NodePort 30081/TCP -> 10.244.1.10:8080 on node A (local);
/// - NodePort 30053/UDP -> 10.244.2.10:5353 on node B;
/// - LoadBalancer 192.168.60.10:80/TCP -> 10.244.2.11:8080, source range
///   192.168.50.0/24;
/// - NodePort 30090/TCP, externalTrafficPolicy Local, no local endpoint;
/// - NodePort 30091/TCP, no endpoint at all;
/// - ClusterIP 10.96.0.10:80 -> 10.244.2.10:8080;
/// - NodePort 30082/TCP -> 10.244.3.10:8080 on node C, behind `ext1`.
fn desired() -> (Desired, BTreeMap<FrontendAddr, Vec<Cidr>>) {
    let np = svc_flags::NODE_PORT;
    let d: Desired = [
        front("192.168.50.1:30080", Protocol::Tcp, np, vec![backend("10.244.2.10:8080", Protocol::Tcp, "node-b")]),
        front("192.168.50.1:30081", Protocol::Tcp, np, vec![backend("10.244.1.10:8080", Protocol::Tcp, "node-a")]),
        front("192.168.50.1:30053", Protocol::Udp, np, vec![backend("10.244.2.10:5353", Protocol::Udp, "node-b")]),
        front(
            "192.168.60.10:80",
            Protocol::Tcp,
            svc_flags::LOAD_BALANCER | svc_flags::SOURCE_RANGES,
            vec![backend("10.244.2.11:8080", Protocol::Tcp, "node-b")],
        ),
        front("192.168.50.1:30090", Protocol::Tcp, np | svc_flags::EXT_LOCAL, vec![]),
        front("192.168.50.1:30091", Protocol::Tcp, np, vec![]),
        front("10.96.0.10:80", Protocol::Tcp, 0, vec![backend("10.244.2.10:8080", Protocol::Tcp, "node-b")]),
        front("192.168.50.1:30082", Protocol::Tcp, np, vec![backend("10.244.3.10:8080", Protocol::Tcp, "node-c")]),
    ]
    .into_iter()
    .collect();
    let lb = FrontendAddr::new("192.168.60.10".parse().unwrap(), 80, Protocol::Tcp);
    let ranges = [(lb, vec!["192.168.50.0/24".parse().unwrap()])].into_iter().collect();
    (d, ranges)
}

/// The hook the north-south path runs in: XDP (`lb_xdp`), or tc
/// (`lb_tc_ns`, `--xdp-mode tc`). Each test runs in both ([`both_hooks`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Xdp,
    Tc,
}

/// A `#[test]` per hook for each fixture test `name(hook)`: `name::xdp`
/// and `name::tc`.
macro_rules! both_hooks {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn xdp() {
                    if super::kernel_tests_enabled() {
                        super::$name(super::Hook::Xdp);
                    }
                }

                #[test]
                fn tc() {
                    if super::kernel_tests_enabled() {
                        super::$name(super::Hook::Tc);
                    }
                }
            }
        )*
    };
}

struct Fixture {
    l: Loaded,
    ext: u32,
    hook: Hook,
    _entered: Entered,
    _ns: Netns,
}

impl Fixture {
    fn new(hook: Hook, tag: &str, nat_ports: (u16, u16)) -> Fixture {
        let ns = external_side();
        let entered = Entered::enter(&ns);
        let tag = match hook {
            Hook::Xdp => tag.to_string(),
            Hook::Tc => format!("{tag}-tc"),
        };
        let mut l = Loaded::new(&tag, Desired::new());
        l.reconciler.set_node_name(Some("node-a".into()));
        let (d, ranges) = desired();
        let mut stats = l.reconciler.apply(&d);
        l.reconciler.apply_source_ranges(&ranges, &mut stats);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        l.reconciler
            .maps_mut()
            .write_node(&NodeConfig {
                snat_addr: u32::from_ne_bytes(NODE_IP.parse::<Ipv4Addr>().unwrap().octets()),
                nat_port_min: nat_ports.0,
                nat_port_max: nat_ports.1,
                flags: node_flags::READY,
                nodeport_min: 30000,
                nodeport_max: 32767,
            })
            .unwrap();
        // Both are lb's external interfaces (XDP redirects only to
        // those), in generic mode; tests set ext0's mode where it matters.
        for name in [*b"ext0\0\0\0\0\0\0\0\0\0\0\0\0", *b"ext1\0\0\0\0\0\0\0\0\0\0\0\0"] {
            let dev = lb_common::Device { mode: lb_common::xdp_mode::GENERIC, name, why: 0 };
            let ifname = std::str::from_utf8(&name[..4]).unwrap();
            l.reconciler.maps_mut().devices.insert(&ifindex(ifname), &dev).unwrap();
        }
        Fixture { l, ext: ifindex("ext0"), hook, _entered: entered, _ns: ns }
    }

    fn xdp(&mut self) -> &mut Xdp {
        self.l.dp.ebpf.program_mut(XDP_PROGRAM).unwrap().try_into().unwrap()
    }

    /// Runs a packet arriving on `ext0` through the hook's program.
    fn run(&mut self, input: &[u8]) -> Outcome {
        let ext = self.ext;
        self.run_on(input, ext)
    }

    /// Runs a packet arriving on interface `ifindex` through the hook's
    /// program. tc's verdicts are given in XDP's numbers: a pass
    /// (`TC_ACT_UNSPEC`) as `XDP_PASS`, a drop as `XDP_DROP`, and a
    /// redirect as `XDP_TX`, whichever interface it goes out of (tc has no
    /// `XDP_TX`; the frame's MACs, from the FIB's answer, show where it
    /// goes).
    fn run_on(&mut self, input: &[u8], ifindex: u32) -> Outcome {
        match self.hook {
            Hook::Xdp => testrun::run_xdp(self.xdp(), input, ifindex).unwrap(),
            Hook::Tc => self.run_tc(input, &testrun::sk_buff_on(ifindex)),
        }
    }

    /// Runs a frame that may be a GSO super-packet (longer than one packet
    /// on the wire) arriving on `ext0`: in XDP, an interface in generic
    /// mode (which sees those); in tc, an skb that is one (of 1000-byte
    /// segments).
    fn run_gso(&mut self, input: &[u8]) -> Outcome {
        let ext = self.ext;
        match self.hook {
            Hook::Xdp => {
                let device = lb_common::Device { mode: lb_common::xdp_mode::GENERIC, name: *b"ext0\0\0\0\0\0\0\0\0\0\0\0\0", why: 0 };
                self.l.reconciler.maps_mut().devices.insert(&ext, &device).unwrap();
                self.run(input)
            }
            Hook::Tc => self.run_tc(input, &testrun::gso_sk_buff_on(ext, 1000, input.len().div_ceil(1000) as u32)),
        }
    }

    /// Runs `lb_tc_ns` from `skb`, its verdict in XDP's numbers (see
    /// [`Fixture::run_on`]).
    fn run_tc(&mut self, input: &[u8], skb: &[u8; testrun::SK_BUFF_LEN]) -> Outcome {
        let tc: &mut SchedClassifier = self.l.dp.ebpf.program_mut(TC_NS_PROGRAM).unwrap().try_into().unwrap();
        let mut out = testrun::run_tc_skb(tc, input, skb).unwrap();
        out.verdict = match out.verdict {
            testrun::TC_ACT_UNSPEC => XDP_PASS,
            testrun::TC_ACT_SHOT => XDP_DROP,
            testrun::TC_ACT_REDIRECT => XDP_TX,
            v => panic!("lb_tc_ns returned {v}"),
        };
        out
    }

    /// The verdict for a packet sent out of another interface than it
    /// came in on (see [`Fixture::run_on`]).
    fn redirected(&self) -> i32 {
        match self.hook {
            Hook::Xdp => testrun::XDP_REDIRECT,
            Hook::Tc => XDP_TX,
        }
    }

    /// Empties the hook's program array slot that does what `xdp_call`'s
    /// `slot` does in XDP; false when the hook has no such slot (tc runs
    /// IPv4's first look in the attached program itself).
    fn clear_call(&mut self, slot: u32) -> bool {
        use lb_common::{tc_call, xdp_call};
        let (map, slot) = match (self.hook, slot) {
            (Hook::Xdp, slot) => (lb_common::names::XDP_CALLS, slot),
            (Hook::Tc, xdp_call::XDP4) => return false,
            (Hook::Tc, xdp_call::XDP4_REST) => (lb_common::names::TC_CALLS, tc_call::NS4_REST),
            (Hook::Tc, xdp_call::XDP6) => (lb_common::names::TC_CALLS, tc_call::NS6),
            (Hook::Tc, xdp_call::XDP6_REST) => (lb_common::names::TC_CALLS, tc_call::NS6_REST),
            (Hook::Tc, slot) => panic!("no tc slot for xdp_call {slot}"),
        };
        let mut calls = aya::maps::ProgramArray::try_from(self.l.dp.ebpf.map_mut(map).unwrap()).unwrap();
        calls.clear_index(&slot).unwrap();
        true
    }

    /// Runs a packet through the egress program (of a pod's or the
    /// external interface).
    fn run_egress(&mut self, input: &[u8]) -> Outcome {
        let tc: &mut SchedClassifier = self.l.dp.ebpf.program_mut(TC_EGRESS_PROGRAM).unwrap().try_into().unwrap();
        testrun::run_tc(tc, input).unwrap()
    }

    /// Runs a packet leaving a pod through the ingress program.
    fn run_ingress(&mut self, input: &[u8]) -> Outcome {
        self.l.run(input)
    }
}

fn expect(name: &str, out: &Outcome, verdict: i32, packet: &[u8]) {
    assert_eq!(out.verdict, verdict, "{name}: verdict");
    assert_checksums_valid(name, &out.packet);
    assert_eq!(hex(&out.packet), hex(packet), "{name}: output packet");
}

fn expect_unchanged(name: &str, out: &Outcome, input: &[u8]) {
    assert_eq!(out.verdict, XDP_PASS, "{name}: verdict");
    assert_eq!(out.packet, input, "{name}: packet must pass untouched");
}

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(CLIENT_IP.parse().unwrap(), port)
}

fn node(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(NODE_IP.parse().unwrap(), port)
}

fn nodeport_to_a_remote_backend_is_snated_and_forwarded_and_replies_reversed(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-remote", (NAT_PORT, NAT_PORT));
    let c = client(40000);
    let be = sa("10.244.2.10:8080");
    let nat = node(NAT_PORT);

    let out = fx.run(&testrun::tcp_frame(IN, c, node(30080), "S", 1000, b""));
    expect("SYN to the NodePort", &out, XDP_TX, &testrun::tcp_frame(TO_B, nat, be, "S", 1000, b""));

    let out = fx.run(&testrun::tcp_frame(FROM_B, be, nat, "SA", 5000, b""));
    expect("SYN-ACK back to the client", &out, XDP_TX, &testrun::tcp_frame(TO_CLIENT, node(30080), c, "SA", 5000, b""));

    let payload = b"GET / HTTP/1.1\r\n\r\n";
    let out = fx.run(&testrun::tcp_frame(IN, c, node(30080), "PA", 1001, payload));
    expect("data follows the flow's NAT", &out, XDP_TX, &testrun::tcp_frame(TO_B, nat, be, "PA", 1001, payload));

    // UDP, with and without a checksum.
    let be_udp = sa("10.244.2.10:5353");
    let out = fx.run(&testrun::udp_frame(IN, client(40001), node(30053), b"query"));
    expect("UDP to the NodePort", &out, XDP_TX, &testrun::udp_frame(TO_B, nat, be_udp, b"query"));
    let out = fx.run(&testrun::udp_frame(FROM_B, be_udp, nat, b"answer"));
    expect("UDP reply", &out, XDP_TX, &testrun::udp_frame(TO_CLIENT, node(30053), client(40001), b"answer"));
    let mut no_sum = testrun::udp_frame(IN, client(40001), node(30053), b"q2");
    no_sum[40..42].copy_from_slice(&[0, 0]);
    let mut no_sum_out = testrun::udp_frame(TO_B, nat, be_udp, b"q2");
    no_sum_out[40..42].copy_from_slice(&[0, 0]);
    expect("UDP without a checksum keeps none", &fx.run(&no_sum), XDP_TX, &no_sum_out);

    // Each flow is two conntrack entries (TCP and UDP apart), naming each
    // other, with the whole translation: one lookup per packet.
    let ct = fx.l.reconciler.maps().ct.entries().unwrap();
    assert_eq!(ct.len(), 4, "{ct:#?}");
    assert_eq!(fx.l.reconciler.maps().ct.tcp.entries().unwrap().len(), 2);
    for (k, v) in &ct {
        assert!(ct.iter().any(|(k2, _)| *k2 == v.twin_key(k)), "twin of {k:?}");
    }

    // Garbage collection: nothing is due now; the UDP flow (60 s) is after
    // 61 s, the established TCP flow (6 h) is not.
    let t = lb_common::CtTimeouts::DEFAULT;
    let now = lb_agent::gc::monotonic_ns();
    assert_eq!(fx.l.reconciler.collect_conntrack(&t, now).unwrap().deleted, 0);
    let gc = fx.l.reconciler.collect_conntrack(&t, now + 61_000_000_000).unwrap();
    assert_eq!(gc.deleted, 2, "the UDP flow's two entries: {gc:?}");
    assert_eq!(fx.l.reconciler.maps().ct.entries().unwrap().len(), 2);
    // Removing the frontend makes its flows invalid at once: the next
    // packet of the flow is a new flow (and, the NodePort gone, passes);
    // garbage collection deletes them.
    let (mut d, _) = desired();
    d.retain(|a, _| a.port != 30080);
    let stats = fx.l.reconciler.apply(&d);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    let data = testrun::tcp_frame(IN, c, node(30080), "A", 2000, b"");
    expect_unchanged("a packet of the removed NodePort's flow", &fx.run(&data), &data);
    let gc = fx.l.reconciler.collect_conntrack(&t, now).unwrap();
    assert_eq!(gc.invalid, 2, "{gc:?}");
    assert!(fx.l.reconciler.maps().ct.entries().unwrap().is_empty(), "flows of the removed NodePort collected");
}

fn nat_ports_never_collide(hook: Hook) {
    // One NAT port: a second flow to the same backend cannot get it while
    // the first holds it, and is dropped rather than mixed up.
    let mut fx = Fixture::new(hook, "xdp-collide", (NAT_PORT, NAT_PORT));
    let be = sa("10.244.2.10:8080");
    let first = fx.run(&testrun::tcp_frame(IN, client(40000), node(30080), "S", 1, b""));
    assert_eq!(first.verdict, XDP_TX);
    let second = fx.run(&testrun::tcp_frame(IN, client(40002), node(30080), "S", 1, b""));
    assert_eq!(second.verdict, XDP_DROP, "the only NAT port is taken");
    // The first flow is unaffected.
    let again = fx.run(&testrun::tcp_frame(IN, client(40000), node(30080), "A", 2, b""));
    expect("first flow", &again, XDP_TX, &testrun::tcp_frame(TO_B, node(NAT_PORT), be, "A", 2, b""));

    // Two ports: 50 flows over 2 ports to one backend; at most 2 succeed and
    // they never share a port.
    let mut fx = Fixture::new(hook, "xdp-collide2", (NAT_PORT, NAT_PORT + 1));
    let mut ports = Vec::new();
    for p in 41000..41050u16 {
        let out = fx.run(&testrun::tcp_frame(IN, client(p), node(30080), "S", 1, b""));
        if out.verdict == XDP_TX {
            ports.push(u16::from_be_bytes([out.packet[34], out.packet[35]]));
        } else {
            assert_eq!(out.verdict, XDP_DROP);
        }
    }
    ports.sort();
    assert_eq!(ports, [NAT_PORT, NAT_PORT + 1], "each port used once");
}

fn local_backend_is_dnated_only_and_kept_client_ip(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-local", (NAT_PORT, NAT_PORT + 100));
    let c = client(40010);
    let be = sa("10.244.1.10:8080");
    let out = fx.run(&testrun::tcp_frame(IN, c, node(30081), "S", 7, b""));
    // To the kernel (which routes to the pod), client address intact, not
    // forwarded by us (TTL and MACs untouched).
    expect("SYN to a local backend", &out, XDP_PASS, &testrun::tcp_frame(IN, c, be, "S", 7, b""));
    // The pod's reply is routed out of the external interface, where the
    // egress program restores the NodePort as the source from the
    // conntrack entry the XDP program wrote.
    let reply = testrun::tcp(be, c, "SA", 9, b"");
    let out = fx.run_egress(&reply);
    assert_eq!(out.verdict, testrun::TC_ACT_UNSPEC);
    assert_checksums_valid("tc reply", &out.packet);
    assert_eq!(hex(&out.packet), hex(&testrun::tcp(node(30081), c, "SA", 9, b"")), "tc reverse NAT");
    let ct = fx.l.reconciler.maps().ct.entries().unwrap();
    assert!(ct.iter().all(|(k, e)| e.nat_saddr == k.saddr || k.dir == lb_common::CT_REPLY), "no SNAT for a local backend: {ct:?}");
}

fn source_ranges_allow_and_deny(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-ranges", (NAT_PORT, NAT_PORT));
    let lb = sa("192.168.60.10:80");
    let out = fx.run(&testrun::tcp_frame(IN, client(40020), lb, "S", 1, b""));
    expect("allowed source", &out, XDP_TX, &testrun::tcp_frame(TO_B, node(NAT_PORT), sa("10.244.2.11:8080"), "S", 1, b""));
    let outsider = sa("10.1.1.1:40000");
    let out = fx.run(&testrun::tcp_frame(IN, outsider, lb, "S", 1, b""));
    assert_eq!(out.verdict, XDP_DROP, "a source outside loadBalancerSourceRanges is dropped");
    // Removing the ranges (the Service no longer has any) opens it up; the
    // frontend's flag goes with it in a real sync, here only the trie
    // changes, so the frontend still drops: ranges fail closed.
    let mut stats = Stats::default();
    fx.l.reconciler.apply_source_ranges(&BTreeMap::<FrontendAddr, Vec<Cidr>>::new(), &mut stats);
    assert!(fx.l.reconciler.maps().src_range_entries().unwrap().is_empty());
    let out = fx.run(&testrun::tcp_frame(IN, client(40021), lb, "S", 1, b""));
    assert_eq!(out.verdict, XDP_DROP);
}

fn no_endpoints_rejects_local_policy_drops_and_others_pass(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-misc", (NAT_PORT, NAT_PORT));
    let c = client(40030);

    let input = testrun::tcp_frame(IN, c, node(30090), "S", 1, b"");
    assert_eq!(fx.run(&input).verdict, XDP_DROP, "Local without local endpoints drops");

    let input = testrun::tcp_frame(IN, c, node(30091), "S", 1, b"");
    let out = fx.run(&input);
    assert_eq!(out.verdict, XDP_TX, "no endpoints: ICMP back out");
    let p = SlicedPacket::from_ethernet(&out.packet).unwrap();
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else { panic!("not Ethernet") };
    assert_eq!((eth.source(), eth.destination()), (EXT_MAC, CLIENT_MAC), "MACs swapped");
    let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("not IPv4") };
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    assert_eq!(Ipv4Addr::from(h.source), *node(0).ip(), "from the dialled address");
    assert_eq!(Ipv4Addr::from(h.destination), *c.ip());
    let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else { panic!("not ICMP") };
    assert_eq!(icmp.icmp_type(), Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port));
    assert_eq!(icmp.payload(), &input[14..14 + 28], "quotes the IP header and 8 bytes");
    let want = etherparse::Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload());
    assert_eq!(icmp.checksum(), want.checksum, "ICMP checksum");

    for (name, input) in [
        ("a ClusterIP from outside", testrun::tcp_frame(IN, c, sa("10.96.0.10:80"), "S", 1, b"")),
        ("a node port with no frontend", testrun::tcp_frame(IN, c, node(22), "S", 1, b"")),
        ("an unknown reply", testrun::tcp_frame(FROM_B, sa("10.244.2.10:8080"), node(NAT_PORT), "SA", 1, b"")),
        ("transit to a pod", testrun::udp_frame(FROM_B, sa("192.168.50.2:61000"), sa("10.244.1.10:8080"), b"x")),
    ] {
        let out = fx.run(&input);
        expect_unchanged(name, &out, &input);
    }
    // IP options are left to the kernel.
    let mut opts = testrun::tcp_frame(IN, c, node(30080), "S", 1, b"");
    opts[14] = 0x46;
    assert_eq!(fx.run(&opts).verdict, XDP_PASS);
}

fn replies_to_pods_whose_backend_is_remote_get_the_frontend_back_on_the_pods_interface(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-podreply", (NAT_PORT, NAT_PORT));
    // A pod of node A dials node A's NodePort: tc DNATs it to node B's pod.
    let pod = sa("10.244.1.20:45000");
    let be = sa("10.244.2.10:8080");
    let out = fx.run_ingress(&testrun::tcp(pod, node(30080), "S", 1, b""));
    assert_eq!(hex(&out.packet), hex(&testrun::tcp(pod, be, "S", 1, b"")));
    // The reply comes back from node B on the external interface: XDP
    // leaves it alone (the kernel routes it, the backend's address is a
    // real one) ...
    let reply = testrun::tcp_frame(FROM_B, be, pod, "SA", 2, b"");
    expect_unchanged("reply to the pod, at XDP", &fx.run(&reply), &reply);
    // ... and the egress program on the pod's interface restores the
    // NodePort as the source, after routing.
    let out = fx.run_egress(&reply);
    expect("reply to the pod", &out, testrun::TC_ACT_UNSPEC, &testrun::tcp_frame(FROM_B, node(30080), pod, "SA", 2, b""));
}

/// Per-packet cost of the XDP NodePort path next to the no-op program, in
/// the same run (BPF_PROG_TEST_RUN, repeat = 1,000,000):
/// `cargo xtask test -- -p lb-agent --test xdp_packets -- --ignored --nocapture`.
///
/// A test run repeats the program on the same buffer without restoring it,
/// so the timed packet must turn into itself. It does here: the "client"
/// is the NodePort 192.168.50.7:30080 itself, its backend is
/// 192.168.50.7:61000 on another node, and the SNAT address and only NAT
/// port are 192.168.50.7:61000. The forward translation (conntrack hit,
/// NAT hit and its twin check, DNAT+SNAT, FIB lookup with neighbour)
/// turns the packet into the backend's view, which the reverse
/// translation (frontend miss, NAT hit, reverse DNAT+SNAT, FIB lookup)
/// turns back: every run is an established north-south packet, half of
/// them in each direction. The TTL drops by one per run, so after 254
/// runs it sits at 1: from then on the program stops after the FIB
/// lookup and hands the packet to the kernel instead of rewriting the
/// TTL and the MACs (four stores). The second figure, the mean of single
/// runs on fresh packets of one established flow, includes those stores.
#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn bench_xdp_nodeport_per_packet() {
    if !kernel_tests_enabled() {
        return;
    }
    const REPEAT: u32 = 1_000_000;
    let mut fx = Fixture::new(Hook::Xdp, "xdp-bench", (NAT_PORT, NAT_PORT));
    // The self-mapping frontend of the ping-pong.
    let vip = sa("192.168.50.7:30080");
    let be = sa("192.168.50.7:61000");
    let (a, f) =
        front("192.168.50.7:30080", Protocol::Tcp, svc_flags::NODE_PORT, vec![backend("192.168.50.7:61000", Protocol::Tcp, "node-b")]);
    let (mut d, _) = desired();
    d.insert(a, f);
    // A local backend that is the frontend itself: DNAT leaves the packet
    // as it was, so every run is an established local-backend packet.
    let (a, f) =
        front("192.168.50.8:30085", Protocol::Tcp, svc_flags::NODE_PORT, vec![backend("192.168.50.8:30085", Protocol::Tcp, "node-a")]);
    d.insert(a, f);
    let stats = fx.l.reconciler.apply(&d);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    fx.l.reconciler
        .maps_mut()
        .write_node(&NodeConfig {
            snat_addr: u32::from_ne_bytes([192, 168, 50, 7]),
            nat_port_min: NAT_PORT,
            nat_port_max: NAT_PORT,
            flags: node_flags::READY,
            nodeport_min: 30000,
            nodeport_max: 32767,
        })
        .unwrap();
    fx._ns.ip(&["neigh", "replace", "192.168.50.7", "lladdr", "02:00:00:00:50:07", "dev", "ext0", "nud", "permanent"]).unwrap();
    let frame = Frame { ttl: 255, ..IN };
    let ping = testrun::tcp_frame(frame, vip, vip, "A", 2, b"hello");
    let out = fx.run(&ping);
    assert_eq!(out.verdict, XDP_TX);
    assert_eq!(&out.packet[26..38], &testrun::tcp(be, be, "A", 2, b"")[26..38], "forward: to the backend, SNATed");
    let out = fx.run(&out.packet);
    assert_eq!(out.verdict, XDP_TX);
    assert_eq!(&out.packet[26..38], &ping[26..38], "reverse: back to the frontend");
    let ext = fx.ext;
    let (v, pingpong) = testrun::time_xdp_on(fx.xdp(), &ping, ext, REPEAT).unwrap();
    assert_eq!(v as i32, XDP_PASS, "steady state: TTL 1, handed to the kernel after the FIB lookup");

    // Fresh packets of one established flow to a remote backend, one run each.
    let c = client(40100);
    assert_eq!(fx.run(&testrun::tcp_frame(IN, c, node(30080), "S", 1, b"")).verdict, XDP_TX);
    let data = testrun::tcp_frame(IN, c, node(30080), "A", 2, b"hello");
    const SINGLE: u32 = 20_000;
    let mut single = std::time::Duration::ZERO;
    for _ in 0..SINGLE {
        let (v, d) = testrun::time_xdp_on(fx.xdp(), &data, ext, 1).unwrap();
        assert_eq!(v as i32, XDP_TX);
        single += d;
    }
    let local = testrun::tcp_frame(IN, c, sa("192.168.50.8:30085"), "A", 2, b"hello");
    assert_eq!(fx.run(&local).verdict, XDP_PASS);
    let (v, local_ns) = testrun::time_xdp_on(fx.xdp(), &local, ext, REPEAT).unwrap();
    assert_eq!(v as i32, XDP_PASS);
    // A packet for no frontend: two map misses, pass.
    let other = testrun::tcp_frame(IN, c, node(22), "A", 2, b"hello");
    let (v, miss) = testrun::time_xdp_on(fx.xdp(), &other, ext, REPEAT).unwrap();
    assert_eq!(v as i32, XDP_PASS);

    let pass: &mut Xdp = fx.l.dp.ebpf.program_mut(XDP_PASS_PROGRAM).unwrap().try_into().unwrap();
    pass.load().unwrap();
    let (v, floor) = testrun::time_xdp_on(pass, &ping, ext, REPEAT).unwrap();
    assert_eq!(v as i32, XDP_PASS);
    let mut floor_single = std::time::Duration::ZERO;
    for _ in 0..SINGLE {
        floor_single += testrun::time_xdp_on(pass, &data, ext, 1).unwrap().1;
    }
    println!("BPF_PROG_TEST_RUN, ns per packet:");
    println!("  repeat = {REPEAT}:");
    println!("    lb_xdp_pass (no-op floor)                         {:>5}", floor.as_nanos());
    println!("    lb_xdp NodePort, established, forward+reverse     {:>5}", pingpong.as_nanos());
    println!("    lb_xdp NodePort -> local backend, established     {:>5}", local_ns.as_nanos());
    println!("    lb_xdp not for a frontend (misses, pass)          {:>5}", miss.as_nanos());
    println!("  mean of {SINGLE} single runs (repeat = 1):");
    println!("    lb_xdp_pass (no-op floor)                         {:>5}", floor_single.as_nanos() / SINGLE as u128);
    println!("    lb_xdp NodePort -> remote, established, XDP_TX    {:>5}", single.as_nanos() / SINGLE as u128);
}

fn a_backend_behind_another_interface_is_redirected_there(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-redirect", (NAT_PORT, NAT_PORT));
    let c = client(40040);
    let be = sa("10.244.3.10:8080");
    let out = fx.run(&testrun::tcp_frame(IN, c, node(30082), "S", 1, b""));
    let to_c = Frame { src_mac: EXT1_MAC, dst_mac: NODE_C_MAC, ttl: 63 };
    expect("SYN to a backend behind ext1", &out, fx.redirected(), &testrun::tcp_frame(to_c, node(NAT_PORT), be, "S", 1, b""));
    // The reply arrives on ext1 and goes back out of ext0 to the client.
    let from_c = Frame { src_mac: NODE_C_MAC, dst_mac: EXT1_MAC, ttl: 64 };
    let ext1 = ifindex("ext1");
    let out = fx.run_on(&testrun::tcp_frame(from_c, be, node(NAT_PORT), "SA", 2, b""), ext1);
    expect("reply redirected to ext0", &out, fx.redirected(), &testrun::tcp_frame(TO_CLIENT, node(30082), c, "SA", 2, b""));
}

/// With ext1 not one of lb's interfaces (a pod overlay's tunnel device,
/// say, which cannot transmit XDP frames), XDP hands the translated packet
/// to the kernel (MACs and TTL as they came), which forwards it; tc still
/// redirects it.
fn a_backend_behind_an_interface_without_lb_is_forwarded_by_the_kernel(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-redirect-not-lb", (NAT_PORT, NAT_PORT));
    fx.l.reconciler.maps_mut().devices.remove(&ifindex("ext1")).unwrap();
    let be = sa("10.244.3.10:8080");
    let to_c = Frame { src_mac: EXT1_MAC, dst_mac: NODE_C_MAC, ttl: 63 };
    let out = fx.run(&testrun::tcp_frame(IN, client(40041), node(30082), "S", 1, b""));
    match hook {
        Hook::Xdp => expect("SYN towards a non-lb interface", &out, XDP_PASS, &testrun::tcp_frame(IN, node(NAT_PORT), be, "S", 1, b"")),
        Hook::Tc => {
            expect("SYN towards a non-lb interface", &out, fx.redirected(), &testrun::tcp_frame(to_c, node(NAT_PORT), be, "S", 1, b""))
        }
    }
}

fn fragments_through_a_nodeport_get_the_datagrams_translation(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-frags", (NAT_PORT, NAT_PORT));
    let c = client(40050);
    let be = sa("10.244.2.10:5353");
    // Two fragments that fit the 1500-byte links: 1480 + 528 bytes.
    let payload: Vec<u8> = (0..2000).map(|i| (i % 253) as u8).collect();
    let (first, later) = common::fragment(&common::with_ip_id(&testrun::udp_frame(IN, c, node(30053), &payload), 1), 1480);
    let out_first = fx.run(&first);
    let out_later = fx.run(&later);
    assert_eq!((out_first.verdict, out_later.verdict), (XDP_TX, XDP_TX), "both forwarded to node B");
    let got = common::reassemble(&out_first.packet, &out_later.packet);
    let (want_first, want_later) = common::fragment(&common::with_ip_id(&testrun::udp_frame(TO_B, node(NAT_PORT), be, &payload), 1), 1480);
    assert_checksums_valid("reassembled at node B", &got);
    assert!(got == common::reassemble(&want_first, &want_later), "DNAT+SNAT of the whole datagram");
    // The answer comes back from node B in fragments too.
    let (first, later) = common::fragment(&common::with_ip_id(&testrun::udp_frame(FROM_B, be, node(NAT_PORT), &payload), 2), 1480);
    let out_first = fx.run(&first);
    let out_later = fx.run(&later);
    assert_eq!((out_first.verdict, out_later.verdict), (XDP_TX, XDP_TX));
    let got = common::reassemble(&out_first.packet, &out_later.packet);
    let (want_first, want_later) = common::fragment(&common::with_ip_id(&testrun::udp_frame(TO_CLIENT, node(30053), c, &payload), 2), 1480);
    assert_checksums_valid("reassembled at the client", &got);
    assert!(got == common::reassemble(&want_first, &want_later), "both translations reversed");
    assert_eq!(fx.l.stat(lb_common::stat::FRAGMENT_TRANSLATED), 2);
    // A later fragment to a LoadBalancer IP whose first fragment never
    // came is dropped, never routed on untranslated.
    let (_, later) =
        common::fragment(&common::with_ip_id(&testrun::udp_frame(IN, client(40051), sa("192.168.60.10:80"), &payload), 3), 1480);
    assert_eq!(fx.run(&later).verdict, XDP_DROP);
    // One to the node's address passes: it may be the node's own traffic.
    let (_, later) = common::fragment(&common::with_ip_id(&testrun::udp_frame(IN, client(40052), node(30053), &payload), 4), 1480);
    assert_eq!(fx.run(&later).verdict, XDP_PASS);
    assert_eq!(fx.l.stat(lb_common::stat::DROP_ORPHAN_FRAGMENT), 1);
}

/// The frame as `frame` says, on `packet` (an Ethernet frame).
fn reframed(frame: Frame, packet: &[u8]) -> Vec<u8> {
    let mut p = packet.to_vec();
    p[0..6].copy_from_slice(&frame.dst_mac);
    p[6..12].copy_from_slice(&frame.src_mac);
    p
}

fn icmp_errors_about_nodeport_flows_are_translated_both_ways(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-icmp", (NAT_PORT, NAT_PORT + 10));
    let c = client(40060);
    let be = sa("10.244.2.10:8080");
    let syn = fx.run(&testrun::tcp_frame(IN, c, node(30080), "S", 1, b""));
    assert_eq!(syn.verdict, XDP_TX);
    let nat = SocketAddrV4::new(*node(0).ip(), u16::from_be_bytes([syn.packet[34], syn.packet[35]]));

    // A router near the client: "fragmentation needed" about a reply we
    // sent (from the NodePort to the client). It goes to the backend,
    // about the packet the backend sent (to this node's SNAT port).
    let router: Ipv4Addr = "192.168.50.254".parse().unwrap();
    let reply_as_sent = testrun::tcp_frame(TO_CLIENT, node(30080), c, "A", 5000, b"");
    let mut err = common::icmp_error(router, *node(0).ip(), 3, 4, &reframed(IN, &reply_as_sent));
    err[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&1400u16.to_be_bytes());
    let sum = {
        let mut e = err.clone();
        e[14 + 22..14 + 24].copy_from_slice(&[0, 0]);
        common::ipv4_checksum(&e[14 + 20..]) // the same folding as ICMP's
    };
    err[14 + 22..14 + 24].copy_from_slice(&sum.to_be_bytes());
    let out = fx.run(&err);
    assert_eq!(out.verdict, XDP_TX, "on to node B");
    assert_eq!(&out.packet[..12], &[&NODE_B_MAC[..], &EXT_MAC[..]].concat()[..], "MACs from the FIB");
    let (src, dst, q_src, q_dst) = common::icmp_error_parts("frag needed to the backend", &out.packet);
    assert_eq!((src, dst), (*node(0).ip(), *be.ip()));
    assert_eq!((q_src, q_dst), (be, nat), "about the packet the backend sent");
    assert_eq!(u16::from_be_bytes([out.packet[14 + 26], out.packet[14 + 27]]), 1400, "the MTU is kept");

    // Node B's port unreachable about a UDP query we SNATed goes to the
    // client, about the query the client sent.
    let q = fx.run(&testrun::udp_frame(IN, client(40061), node(30053), b"q"));
    assert_eq!(q.verdict, XDP_TX);
    let err = common::icmp_error(*sa("10.244.2.10:0").ip(), *node(0).ip(), 3, 3, &reframed(FROM_B, &q.packet));
    let out = fx.run(&err);
    assert_eq!(out.verdict, XDP_TX, "back to the client");
    let (src, dst, q_src, q_dst) = common::icmp_error_parts("port unreachable to the client", &out.packet);
    assert_eq!((src, dst), (*node(0).ip(), *c.ip()));
    assert_eq!((q_src, q_dst), (client(40061), node(30053)));
    assert_eq!(fx.l.stat(lb_common::stat::ICMP_TRANSLATED), 2);
}

fn a_packet_too_big_for_the_path_to_a_remote_backend_gets_frag_needed(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-mtu", (NAT_PORT, NAT_PORT));
    // The path to node B's pods has MTU 1000 (a tunnel, say).
    fx._ns.ip(&["route", "replace", "10.244.2.0/24", "via", "192.168.50.2", "dev", "ext0", "mtu", "lock", "1000"]).unwrap();
    let big = testrun::tcp_frame(IN, client(40070), node(30080), "A", 1, &[7u8; 1200]);
    // On a native interface a frame is one packet: answer it.
    let ext = fx.ext;
    fx.l.reconciler
        .maps_mut()
        .devices
        .insert(&ext, &lb_common::Device { mode: lb_common::xdp_mode::NATIVE, name: *b"ext0\0\0\0\0\0\0\0\0\0\0\0\0", why: 0 })
        .unwrap();
    let out = fx.run(&big);
    assert_eq!(out.verdict, XDP_TX);
    let p = SlicedPacket::from_ethernet(&out.packet).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("not IPv4") };
    assert_eq!(Ipv4Addr::from(ip.header().source()), *node(0).ip(), "from the NodePort's address");
    let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else { panic!("not ICMP") };
    assert_eq!(icmp.icmp_type(), Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1000 }));
    assert_eq!(icmp.payload(), &big[14..14 + 28], "quotes the packet as the client sent it");
    assert_eq!(fx.l.stat(lb_common::stat::FRAG_NEEDED_SENT), 1);
    // A long frame may be a GSO super-packet (generic XDP, tc), which the
    // kernel segments on its way: translated and handed to the kernel.
    let out = fx.run_gso(&testrun::tcp_frame(IN, client(40070), node(30080), "A", 1, &[7u8; 1200]));
    assert_eq!(out.verdict, XDP_PASS);
    assert_eq!(&out.packet[26..30], &node(0).ip().octets(), "SNATed");
}

/// An `LB_NEXTHOPS` entry as bpftool prints it (BTF): (destination
/// words, in interface, egress interface, next hop's MAC, longest length).
type KeptHop = (Vec<u64>, u64, u64, Vec<u64>, u64);

fn nexthops(fx: &Fixture) -> Vec<KeptHop> {
    let pin = fx.l.pins.0.join("LB_NEXTHOPS");
    let out = std::process::Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(&pin).output().unwrap();
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let u = |v: &serde_json::Value| v.as_u64().unwrap();
    let list = |v: &serde_json::Value| v.as_array().unwrap().iter().map(u).collect::<Vec<_>>();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let (k, v) = (&r["formatted"]["key"], &r["formatted"]["value"]);
            (list(&k["daddr"]), u(&k["ifindex"]), u(&v["ifindex"]), list(&v["dmac"]), u(&v["max_len"]))
        })
        .collect()
}

fn the_fibs_answer_is_kept_for_a_second_and_a_longer_packet_or_a_stale_answer_asks_again(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-nexthop", (NAT_PORT, NAT_PORT));
    let (c, np, be, nat) = (client(40090), node(30080), sa("10.244.2.10:8080"), node(NAT_PORT));
    let syn = testrun::tcp_frame(IN, c, np, "S", 1000, b"");
    expect("SYN to the NodePort", &fx.run(&syn), XDP_TX, &testrun::tcp_frame(TO_B, nat, be, "S", 1000, b""));
    // The FIB's answer is kept for the backend's address, by the
    // interface the packet came in on: node B's MAC, the SYN's length.
    let kept = nexthops(&fx);
    let be_word = u32::from_ne_bytes(be.ip().octets()) as u64;
    assert_eq!(kept, vec![(vec![be_word, 0, 0, 0], fx.ext as u64, fx.ext as u64, NODE_B_MAC.map(u64::from).to_vec(), 40)]);

    // Node B's MAC changes. A packet longer than any the FIB passed asks
    // it again (its MTU check): the new MAC at once.
    let new_mac = [0x02, 0, 0, 0, 0x50, 0x99];
    fx._ns.ip(&["neigh", "replace", "192.168.50.2", "lladdr", &mac(new_mac), "dev", "ext0", "nud", "permanent"]).unwrap();
    let to_b = Frame { dst_mac: new_mac, ..TO_B };
    let data = testrun::tcp_frame(IN, c, np, "PA", 1001, &[5u8; 100]);
    expect("a longer packet asks the FIB", &fx.run(&data), XDP_TX, &testrun::tcp_frame(to_b, nat, be, "PA", 1001, &[5u8; 100]));
    assert_eq!(nexthops(&fx)[0].4, 140, "the longest length the FIB passed");

    // It changes again: within a second, short packets may still go to
    // the kept answer; after it, the FIB is asked again.
    let newer_mac = [0x02, 0, 0, 0, 0x50, 0x98];
    fx._ns.ip(&["neigh", "replace", "192.168.50.2", "lladdr", &mac(newer_mac), "dev", "ext0", "nud", "permanent"]).unwrap();
    std::thread::sleep(Duration::from_millis(1_100));
    let ack = testrun::tcp_frame(IN, c, np, "A", 1101, b"");
    let to_b = Frame { dst_mac: newer_mac, ..TO_B };
    expect("a stale answer asks the FIB", &fx.run(&ack), XDP_TX, &testrun::tcp_frame(to_b, nat, be, "A", 1101, b""));

    // A reply to the client keeps the client's answer too.
    let out = fx.run(&testrun::tcp_frame(FROM_B, be, nat, "SA", 5000, b""));
    expect("SYN-ACK back to the client", &out, XDP_TX, &testrun::tcp_frame(TO_CLIENT, np, c, "SA", 5000, b""));
    assert_eq!(nexthops(&fx).len(), 2, "the backend's and the client's");
}

fn spoofed_syns_hold_snat_ports_only_until_the_syn_timeout(hook: Hook) {
    // One SNAT port. A SYN from a source that never answers (spoofed)
    // takes it; a real client is dropped while it is held, and gets it
    // once the SYN timeout has passed, without waiting for GC.
    let mut fx = Fixture::new(hook, "xdp-spoof", (NAT_PORT, NAT_PORT));
    let be = sa("10.244.2.10:8080");
    let spoofed = sa("203.0.113.9:4444");
    assert_eq!(fx.run(&testrun::tcp_frame(IN, spoofed, node(30080), "S", 1, b"")).verdict, XDP_TX);
    // The backend's SYN-ACK goes out to the spoofed source (through the
    // kernel: no route here); nothing comes back.
    assert_eq!(fx.run(&testrun::tcp_frame(FROM_B, be, node(NAT_PORT), "SA", 9, b"")).verdict, XDP_PASS);
    let real = client(40080);
    assert_eq!(fx.run(&testrun::tcp_frame(IN, real, node(30080), "S", 1, b"")).verdict, XDP_DROP, "the port is held");
    // Age the half-open flow past the SYN timeout (60 s).
    let age = |fx: &mut Fixture, by: u64| {
        let ct = fx.l.reconciler.maps().ct.entries().unwrap();
        for (k, mut e) in ct {
            e.last_seen -= by;
            fx.l.reconciler.maps_mut().ct.insert(&k, &e).unwrap();
        }
    };
    age(&mut fx, 61_000_000_000);
    let out = fx.run(&testrun::tcp_frame(IN, real, node(30080), "S", 1, b""));
    expect("the real client gets the port", &out, XDP_TX, &testrun::tcp_frame(TO_B, node(NAT_PORT), be, "S", 1, b""));
    // An established flow keeps its port for as long as it lives.
    assert_eq!(fx.run(&testrun::tcp_frame(FROM_B, be, node(NAT_PORT), "SA", 9, b"")).verdict, XDP_TX);
    assert_eq!(fx.run(&testrun::tcp_frame(IN, real, node(30080), "A", 2, b"")).verdict, XDP_TX);
    age(&mut fx, 61_000_000_000);
    assert_eq!(fx.run(&testrun::tcp_frame(IN, client(40081), node(30080), "S", 1, b"")).verdict, XDP_DROP);
}

fn two_nodeport_flows_from_one_client_port_to_one_local_backend_keep_apart(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-clash", (NAT_PORT, NAT_PORT + 100));
    // A second NodePort with the same local backend as 30081.
    let (mut d, _) = desired();
    let (a, f) =
        front("192.168.50.1:30083", Protocol::Tcp, svc_flags::NODE_PORT, vec![backend("10.244.1.10:8080", Protocol::Tcp, "node-a")]);
    d.insert(a, f);
    let stats = fx.l.reconciler.apply(&d);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    let c = client(40090);
    let be = sa("10.244.1.10:8080");
    let first = fx.run(&testrun::tcp_frame(IN, c, node(30081), "S", 1, b""));
    expect("the first keeps its port", &first, XDP_PASS, &testrun::tcp_frame(IN, c, be, "S", 1, b""));
    let second = fx.run(&testrun::tcp_frame(IN, c, node(30083), "S", 1, b""));
    assert_eq!(second.verdict, XDP_PASS);
    let sport = u16::from_be_bytes([second.packet[34], second.packet[35]]);
    assert!((NAT_PORT..=NAT_PORT + 100).contains(&sport), "the second gets a port of the SNAT range, not {sport}");
    let remapped = SocketAddrV4::new(*c.ip(), sport);
    expect("client address kept, port remapped", &second, XDP_PASS, &testrun::tcp_frame(IN, remapped, be, "S", 1, b""));
    // The replies leave through the external interface: each gets its own
    // NodePort back, and the client's own port.
    let out = fx.run_egress(&testrun::tcp(be, c, "SA", 5, b""));
    assert_eq!(hex(&out.packet), hex(&testrun::tcp(node(30081), c, "SA", 5, b"")));
    let out = fx.run_egress(&testrun::tcp(be, remapped, "SA", 6, b""));
    assert_eq!(hex(&out.packet), hex(&testrun::tcp(node(30083), c, "SA", 6, b"")));
    assert_eq!(fx.l.stat(lb_common::stat::PORT_REMAPPED), 1);
}

/// The pre-filter's kinds for `addr` as the map holds them (the lane the
/// XDP program reads, by the same lb-common function).
fn filter_kinds(fx: &Fixture, addr: Ipv4Addr) -> u32 {
    let a = u32::from_ne_bytes(addr.octets());
    let slot = vip_filter::slot(a);
    vip_filter::kinds(fx.l.reconciler.maps().vip_filter.get(slot.word).unwrap(), slot)
}

/// An address other than `of` (and outside every fixture subnet) whose
/// pre-filter lane is `of`'s: a false positive.
fn sharing_lane(of: Ipv4Addr) -> Ipv4Addr {
    let s = vip_filter::slot(u32::from_ne_bytes(of.octets()));
    (1u32..)
        .map(|i| Ipv4Addr::from(0xac10_0000 + i))
        .find(|a| vip_filter::slot(u32::from_ne_bytes(a.octets())) == s)
        .expect("an address sharing the lane")
}

fn packets_for_no_frontend_pass_untouched_and_leave_no_conntrack_entry(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-nofront", (NAT_PORT, NAT_PORT));
    // The pre-filter holds the frontend addresses with their kinds (a
    // ClusterIP's for tc: XDP reads the north-south kinds only), and
    // nothing for an address with no frontend.
    let lb_ip: Ipv4Addr = "192.168.60.10".parse().unwrap();
    assert_eq!(filter_kinds(&fx, NODE_IP.parse().unwrap()), vip_flags::NODE_PORT);
    assert_eq!(filter_kinds(&fx, lb_ip), vip_flags::LOAD_BALANCER);
    assert_eq!(filter_kinds(&fx, "10.96.0.10".parse().unwrap()), vip_flags::CLUSTER_IP, "a ClusterIP-only lane");
    assert_eq!(filter_kinds(&fx, "192.168.50.77".parse().unwrap()), 0);
    let c = client(40100);
    for (name, input) in [
        ("TCP to an address with no frontend", testrun::tcp_frame(IN, c, sa("192.168.50.77:443"), "S", 1, b"")),
        ("UDP to an address with no frontend", testrun::udp_frame(IN, c, sa("192.168.50.77:53"), b"q")),
        ("a ClusterIP from outside", testrun::tcp_frame(IN, c, sa("10.96.0.10:80"), "S", 1, b"")),
        ("the node address, not a NodePort", testrun::tcp_frame(IN, c, node(22), "S", 1, b"")),
        ("the node address, a NodePort nobody has", testrun::tcp_frame(IN, c, node(30999), "S", 1, b"")),
        ("the LB IP, a port it does not serve", testrun::tcp_frame(IN, c, sa("192.168.60.10:443"), "S", 1, b"")),
    ] {
        expect_unchanged(name, &fx.run(&input), &input);
    }
    let ct = fx.l.reconciler.maps().ct.entries().unwrap();
    assert!(ct.is_empty(), "no conntrack entry for packets to no frontend: {ct:?}");
}

fn an_address_sharing_a_frontends_filter_lane_passes_untouched(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-falsepos", (NAT_PORT, NAT_PORT));
    let c = client(40110);
    // A false positive of the LoadBalancer IP's lane, and of the node
    // address's (NodePorts only: a port in the NodePort range gets past
    // the lane's kinds to the exact lookup).
    for (frontend, port) in [("192.168.60.10", 80), (NODE_IP, 30080)] {
        let other = sharing_lane(frontend.parse().unwrap());
        assert_ne!(filter_kinds(&fx, other), 0, "{other} shares {frontend}'s lane");
        let dst = SocketAddrV4::new(other, port);
        for (name, input) in [
            (format!("TCP SYN to {dst}"), testrun::tcp_frame(IN, c, dst, "S", 1, b"")),
            (format!("TCP data to {dst}"), testrun::tcp_frame(IN, c, dst, "A", 2, b"x")),
            (format!("UDP to {dst}"), testrun::udp_frame(IN, c, dst, b"q")),
        ] {
            expect_unchanged(&name, &fx.run(&input), &input);
        }
    }
    assert!(fx.l.reconciler.maps().ct.entries().unwrap().is_empty());
    // The frontend itself is served as ever.
    let out = fx.run(&testrun::tcp_frame(IN, c, sa("192.168.60.10:80"), "S", 1, b""));
    assert_eq!(out.verdict, XDP_TX);
}

fn established_flows_follow_conntrack_without_the_address_lookup_until_their_frontend_goes(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-est", (NAT_PORT, NAT_PORT + 10));
    let c = client(40120);
    let lb = sa("192.168.60.10:80");
    let be = sa("10.244.2.11:8080");
    let out = fx.run(&testrun::tcp_frame(IN, c, lb, "S", 1, b""));
    assert_eq!(out.verdict, XDP_TX, "SYN to the LoadBalancer IP");
    let nat = SocketAddrV4::new(NODE_IP.parse().unwrap(), u16::from_be_bytes([out.packet[34], out.packet[35]]));
    expect("the SYN", &out, XDP_TX, &testrun::tcp_frame(TO_B, nat, be, "S", 1, b""));

    // The address's `LB4_VIPS` entry taken away behind the agent's back
    // (the frontend and the pre-filter stay): the established flow does
    // not look it up, a new flow does (and passes).
    let key = u32::from_ne_bytes(lb.ip().octets());
    let vip = fx.l.reconciler.maps().vips.get(&key).unwrap().expect("the LB IP's VIPS entry");
    fx.l.reconciler.maps_mut().vips.remove(&key).unwrap();
    let data = testrun::tcp_frame(IN, c, lb, "A", 2, b"data");
    expect("established, without LB4_VIPS", &fx.run(&data), XDP_TX, &testrun::tcp_frame(TO_B, nat, be, "A", 2, b"data"));
    let other = testrun::tcp_frame(IN, client(40121), lb, "S", 1, b"");
    expect_unchanged("a new flow needs LB4_VIPS", &fx.run(&other), &other);
    fx.l.reconciler.maps_mut().vips.insert(&key, &vip).unwrap();

    // The frontend removed: its lane is cleared (no other frontend there)
    // and the flow's next packet passes untranslated; so it does when the
    // lane stays set (a NodePort flow on the node address, whose other
    // NodePorts remain), by the entry's version check.
    let out = fx.run(&testrun::tcp_frame(IN, c, node(30080), "S", 1, b""));
    assert_eq!(out.verdict, XDP_TX, "SYN to NodePort 30080");
    let (mut d, _) = desired();
    d.retain(|a, _| a.port != 80 && a.port != 30080);
    let mut stats = fx.l.reconciler.apply(&d);
    fx.l.reconciler.apply_source_ranges(&BTreeMap::<FrontendAddr, Vec<Cidr>>::new(), &mut stats);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    assert_eq!(filter_kinds(&fx, *lb.ip()), 0, "the removed LB IP's lane is cleared");
    assert_eq!(filter_kinds(&fx, NODE_IP.parse().unwrap()), vip_flags::NODE_PORT);
    let data = testrun::tcp_frame(IN, c, lb, "A", 3, b"more");
    expect_unchanged("the removed LB IP's flow", &fx.run(&data), &data);
    let data = testrun::tcp_frame(IN, c, node(30080), "A", 3, b"more");
    expect_unchanged("the removed NodePort's flow", &fx.run(&data), &data);
    // The remaining NodePorts are served.
    let out = fx.run(&testrun::tcp_frame(IN, c, node(30082), "S", 1, b""));
    assert_eq!(out.verdict, fx.redirected(), "NodePort 30082 (behind ext1)");
}

fn a_pre_filter_new_to_the_pins_is_rebuilt_from_the_frontend_addresses(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-filter-sync", (NAT_PORT, NAT_PORT));
    let c = client(40130);
    let lb = sa("192.168.60.10:80");
    let out = fx.run(&testrun::tcp_frame(IN, c, lb, "S", 1, b""));
    assert_eq!(out.verdict, XDP_TX);
    let established = testrun::tcp_frame(IN, c, lb, "A", 2, b"x");
    assert_eq!(fx.run(&established).verdict, XDP_TX);
    // An empty filter (as a new agent finds one next to an older agent's
    // maps): everything passes, flows included.
    let maps = fx.l.reconciler.maps_mut();
    for (i, w) in maps.vip_filter.slots().unwrap() {
        if w != 0 {
            maps.vip_filter.set(i, &0).unwrap();
        }
    }
    expect_unchanged("with an empty pre-filter", &fx.run(&established), &established);
    // What the agent does at start, before attaching XDP.
    let fixed = fx.l.reconciler.maps_mut().sync_vip_filter().unwrap();
    let word = |a: &str| vip_filter::slot(u32::from_ne_bytes(a.parse::<Ipv4Addr>().unwrap().octets())).word;
    let words: std::collections::BTreeSet<u32> = [word(NODE_IP), word("192.168.60.10"), word("10.96.0.10")].into();
    assert_eq!(fixed, words.len(), "the node address's word, the LB IP's and the ClusterIP's");
    assert_eq!(fx.run(&established).verdict, XDP_TX, "the flow is served again");
    assert_eq!(fx.l.reconciler.maps_mut().sync_vip_filter().unwrap(), 0, "nothing to fix twice");
}

fn sa6(s: &str) -> std::net::SocketAddrV6 {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// An IPv6 TCP frontend of `kind` with one backend on `node`.
fn front6(addr: &str, kind: u32, be: &str, node: &str) -> (FrontendAddr<std::net::Ipv6Addr>, Frontend<std::net::Ipv6Addr>) {
    front6_of(Protocol::Tcp, addr, kind, be, node)
}

/// An IPv6 frontend of `proto` and `kind` with one backend on `node`.
fn front6_of(
    proto: Protocol,
    addr: &str,
    kind: u32,
    be: &str,
    node: &str,
) -> (FrontendAddr<std::net::Ipv6Addr>, Frontend<std::net::Ipv6Addr>) {
    let (a, b) = (sa6(addr), sa6(be));
    let fa = FrontendAddr::new(*a.ip(), a.port(), proto);
    let backend = Backend {
        addr: BackendAddr { ip: *b.ip(), port: b.port(), proto },
        terminating: false,
        node_name: Some(node.into()),
        zone: None,
        hints: None,
    };
    (fa, Frontend { addr: fa, name: format!("test/{addr}"), backends: vec![backend], flags: kind, affinity_timeout: 0 })
}

const NODE6: &str = "fd00:50::1";
const CLIENT6: &str = "[fd00:50::64]:40000";

/// [`Fixture::new`] with node A's IPv6 frontends as well, written by the
/// reconciler (backends on node-a are local):
/// - NodePort [fd00:50::1]:30081 -> [fd00:244:1::10]:8080 on node A;
/// - NodePort [fd00:50::1]:30080 -> [fd00:244:2::10]:8080 on node B;
/// - NodePort [fd00:50::1]:30092, externalTrafficPolicy Local ->
///   [fd00:244:1::12]:8080 on node A;
/// - LoadBalancer [fd00:60::10]:80 -> [fd00:244:1::11]:8080 on node A;
/// - LoadBalancer [fd00:61::10]:80 -> [fd00:244:1::13]:8080 on node A,
///   loadBalancerSourceRanges fd00:50::/64 and 192.168.50.0/24 (the IPv4
///   one says nothing about IPv6 clients);
/// - NodePort [fd00:50::1]:30093, sessionAffinity ClientIP, ->
///   [fd00:244:1::20]:8080 and [fd00:244:1::21]:8080 on node A;
/// - UDP: NodePort [fd00:50::1]:30053 -> [fd00:244:2::10]:5353 on node B,
///   LoadBalancer [fd00:60::10]:53 -> [fd00:244:1::11]:5353 on node A.
/// - NodePort [fd00:50::1]:30094, TCP and UDP, with no endpoints.
fn fixture6(hook: Hook, tag: &str) -> Fixture {
    fixture6_snat(hook, tag, Some(NODE6))
}

/// [`fixture6`] with `snat6` as node A's IPv6 SNAT address (`LB6_NODE`;
/// `None`: none).
fn fixture6_snat(hook: Hook, tag: &str, snat6: Option<&str>) -> Fixture {
    let mut fx = Fixture::new(hook, tag, (NAT_PORT, NAT_PORT));
    let node6 = lb_agent::northsouth::node6_config(snat6.map(|a| a.parse().unwrap()), 128);
    fx.l.reconciler.maps_mut().write_node6(&node6).unwrap();
    let np = svc_flags::NODE_PORT;
    let ranged = front6("[fd00:61::10]:80", svc_flags::LOAD_BALANCER | svc_flags::SOURCE_RANGES, "[fd00:244:1::13]:8080", "node-a");
    let (sticky_addr, mut sticky) = front6("[fd00:50::1]:30093", np | svc_flags::AFFINITY, "[fd00:244:1::20]:8080", "node-a");
    let mut second = sticky.backends[0].clone();
    second.addr.ip = "fd00:244:1::21".parse().unwrap();
    sticky.backends.push(second);
    sticky.affinity_timeout = 10_800;
    let no_endpoints = |proto: Protocol| {
        let (mut a, mut f) = front6("[fd00:50::1]:30094", np, "[fd00:244:1::30]:8080", "node-a");
        (a.proto, f.backends) = (proto, Vec::new());
        f.addr = a;
        (a, f)
    };
    let d6: Desired<std::net::Ipv6Addr> = [
        front6("[fd00:50::1]:30081", np, "[fd00:244:1::10]:8080", "node-a"),
        front6("[fd00:50::1]:30080", np, "[fd00:244:2::10]:8080", "node-b"),
        front6("[fd00:50::1]:30092", np | svc_flags::EXT_LOCAL, "[fd00:244:1::12]:8080", "node-a"),
        front6("[fd00:60::10]:80", svc_flags::LOAD_BALANCER, "[fd00:244:1::11]:8080", "node-a"),
        ranged.clone(),
        (sticky_addr, sticky),
        no_endpoints(Protocol::Tcp),
        no_endpoints(Protocol::Udp),
        front6_of(Protocol::Udp, "[fd00:50::1]:30053", np, "[fd00:244:2::10]:5353", "node-b"),
        front6_of(Protocol::Udp, "[fd00:60::10]:53", svc_flags::LOAD_BALANCER, "[fd00:244:1::11]:5353", "node-a"),
    ]
    .into_iter()
    .collect();
    let (d, _) = desired();
    let mut stats = fx.l.reconciler.apply_dual(&[&d], &[&d6]);
    let ranges6: BTreeMap<_, Vec<Cidr>> = [(ranged.0, vec!["fd00:50::/64".parse().unwrap(), "192.168.50.0/24".parse().unwrap()])].into();
    fx.l.reconciler.apply_source_ranges(&ranges6, &mut stats);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    fx
}

fn ipv6_source_ranges_allow_and_deny(hook: Hook) {
    let mut fx = fixture6(hook, "xdp-v6-ranges");
    let none = etherparse::Ipv6Extensions::default;
    let lb = sa6("[fd00:61::10]:80");
    let be = sa6("[fd00:244:1::13]:8080");
    let inside = sa6(CLIENT6);
    let out = fx.run(&common::v6::tcp(inside, lb, "S", 1, b"", none()));
    assert_eq!(out.verdict, XDP_PASS, "a client inside fd00:50::/64: verdict");
    assert_eq!(hex(&out.packet), hex(&common::v6::tcp(inside, be, "S", 1, b"", none())), "a client inside the range is DNATed");
    let outside = sa6("[fd00:99::5]:40000");
    assert_eq!(fx.run(&common::v6::tcp(outside, lb, "S", 1, b"", none())).verdict, XDP_DROP, "a client outside is dropped");
    assert_eq!(fx.l.stat(stat::DROP_SOURCE_RANGE), 1);
    // The range entry is in IPv6's own map; the IPv6 frontend's IPv4
    // range is written nowhere (IPv4's map holds only its IPv4 LB IP's).
    let maps = fx.l.reconciler.maps();
    let v6: Vec<(u32, String)> =
        maps.v6.src_ranges.entries().unwrap().into_iter().map(|(l, d)| (l, lb_common::ipv6(d.addr).to_string())).collect();
    assert_eq!(v6, [(32 + 64, "fd00:50::".to_string())]);
    assert_eq!(maps.src_range_entries().unwrap().len(), 1, "IPv4's LB IP's range only");
    // Without ranges the frontend (still flagged) fails closed.
    let mut stats = Stats::default();
    fx.l.reconciler.apply_source_ranges(&BTreeMap::<FrontendAddr<std::net::Ipv6Addr>, Vec<Cidr>>::new(), &mut stats);
    assert!(fx.l.reconciler.maps().v6.src_ranges.entries().unwrap().is_empty());
    assert_eq!(fx.run(&common::v6::tcp(sa6("[fd00:50::64]:40001"), lb, "S", 1, b"", none())).verdict, XDP_DROP);
}

fn ipv6_session_affinity_keeps_a_client_on_one_backend(hook: Hook) {
    let mut fx = fixture6(hook, "xdp-v6-affinity");
    let none = etherparse::Ipv6Extensions::default;
    let np = sa6(&format!("[{NODE6}]:30093"));
    // The backend each new connection (a new source port) of a client is
    // DNATed to.
    let chosen = |fx: &mut Fixture, client: &str| -> std::collections::BTreeSet<String> {
        (0..16u16)
            .map(|i| {
                let c = sa6(&format!("[{client}]:{}", 41000 + i));
                let out = fx.run(&common::v6::tcp(c, np, "S", 1, b"", none()));
                assert_eq!(out.verdict, XDP_PASS);
                let ip = etherparse::Ipv6HeaderSlice::from_slice(&out.packet[14..]).unwrap().destination_addr();
                ip.to_string()
            })
            .collect()
    };
    for client in ["fd00:50::64", "fd00:50::65", "fd00:50::66", "fd00:50::67"] {
        let got = chosen(&mut fx, client);
        assert_eq!(got.len(), 1, "{client}: every new connection to the same backend: {got:?}");
    }
}

/// `--affinity-ipv6-prefix 64`: the clients of one /64 are one client to
/// session affinity (one entry, one backend); with the default (128) each
/// address is keyed apart.
fn ipv6_session_affinity_keys_a_client_prefix(hook: Hook) {
    let mut fx = fixture6(hook, "xdp-v6-affinity-prefix");
    let none = etherparse::Ipv6Extensions::default;
    let np = sa6(&format!("[{NODE6}]:30093"));
    // The backend a client's new connection is DNATed to.
    let chosen = |fx: &mut Fixture, client: String, port: u16| -> String {
        let out = fx.run(&common::v6::tcp(sa6(&format!("[{client}]:{port}")), np, "S", 1, b"", none()));
        assert_eq!(out.verdict, XDP_PASS);
        etherparse::Ipv6HeaderSlice::from_slice(&out.packet[14..]).unwrap().destination_addr().to_string()
    };
    let entries = |fx: &Fixture| fx.l.reconciler.maps().affinity.entries().unwrap().len();
    for i in 0..8 {
        chosen(&mut fx, format!("fd00:50::1:{i}"), 42000);
    }
    assert_eq!(entries(&fx), 8, "the default: each address keyed apart");
    fx.l.reconciler.maps_mut().write_node6(&lb_agent::northsouth::node6_config(Some(NODE6.parse().unwrap()), 64)).unwrap();
    let got: std::collections::BTreeSet<String> = (0..8).map(|i| chosen(&mut fx, format!("fd00:50::2:{i}"), 42001)).collect();
    assert_eq!(got.len(), 1, "one /64, one backend: {got:?}");
    assert_eq!(entries(&fx), 9, "one /64, one entry");
    chosen(&mut fx, "fd00:51::1".into(), 42002);
    assert_eq!(entries(&fx), 10, "another /64, another entry");
}

fn ipv6_nodeport_and_lb_ip_to_a_local_backend_are_dnated_and_replies_reversed(hook: Hook) {
    let mut fx = fixture6(hook, "xdp-v6-local");
    let none = etherparse::Ipv6Extensions::default;
    let c = sa6(CLIENT6);
    let np = sa6(&format!("[{NODE6}]:30081"));
    let be = sa6("[fd00:244:1::10]:8080");

    let out = fx.run(&common::v6::tcp(c, np, "S", 1000, b"", none()));
    assert_eq!(out.verdict, XDP_PASS, "SYN to the IPv6 NodePort: verdict");
    common::v6::assert_checksums_valid("SYN", &out.packet);
    assert_eq!(hex(&out.packet), hex(&common::v6::tcp(c, be, "S", 1000, b"", none())), "SYN DNATed to the local backend");

    let out = fx.run_egress(&common::v6::tcp(be, c, "SA", 5000, b"", none()));
    assert_eq!(hex(&out.packet), hex(&common::v6::tcp(np, c, "SA", 5000, b"", none())), "SYN-ACK from the NodePort");

    let payload = b"GET / HTTP/1.1\r\n\r\n";
    let out = fx.run(&common::v6::tcp(c, np, "PA", 1001, payload, none()));
    assert_eq!((out.verdict, hex(&out.packet)), (XDP_PASS, hex(&common::v6::tcp(c, be, "PA", 1001, payload, none()))), "data");

    // Local policy keeps the client's address too (all of it is DNAT).
    let local = sa6(&format!("[{NODE6}]:30092"));
    let out = fx.run(&common::v6::tcp(c, local, "S", 7, b"", none()));
    assert_eq!(hex(&out.packet), hex(&common::v6::tcp(c, sa6("[fd00:244:1::12]:8080"), "S", 7, b"", none())), "Local policy");

    // A LoadBalancer IP.
    let lb = sa6("[fd00:60::10]:80");
    let out = fx.run(&common::v6::tcp(c, lb, "S", 9, b"", none()));
    assert_eq!(hex(&out.packet), hex(&common::v6::tcp(c, sa6("[fd00:244:1::11]:8080"), "S", 9, b"", none())), "LB IP");
    assert_eq!(fx.l.stat(stat::TAIL_CALL_FAILED), 0);
}

fn ipv6_traffic_that_is_not_served_passes_untouched(hook: Hook) {
    let mut fx = fixture6(hook, "xdp-v6-pass");
    let none = etherparse::Ipv6Extensions::default;
    let c = sa6(CLIENT6);
    for (name, dst) in [
        ("a port outside the NodePort range on the node's IPv6 address", format!("[{NODE6}]:22")),
        ("an unused NodePort on the node's IPv6 address", format!("[{NODE6}]:30999")),
        ("an IPv6 address with no frontend", "[fd00:50::99]:80".to_string()),
        ("the LB IP on a port no Service defines", "[fd00:60::10]:81".to_string()),
    ] {
        let input = common::v6::tcp(c, sa6(&dst), "S", 1, b"", none());
        expect_unchanged(name, &fx.run(&input), &input);
    }
    assert_eq!(fx.l.stat(stat::PASS_NO_NAT66), 0);
    assert_eq!(fx.l.stat(stat::TAIL_CALL_FAILED), 0);
}

fn ipv6_to_a_backend_on_another_node_passes_while_the_node_has_no_ipv6_snat_address(hook: Hook) {
    let mut fx = fixture6_snat(hook, "xdp-v6-no-snat", None);
    let none = etherparse::Ipv6Extensions::default;
    // No address to NAT66 to, and DNAT alone would send the backend's
    // replies straight to the client: not served here, counted.
    let input = common::v6::tcp(sa6(CLIENT6), sa6(&format!("[{NODE6}]:30080")), "S", 1, b"", none());
    expect_unchanged("a NodePort whose backend is on another node", &fx.run(&input), &input);
    assert_eq!(fx.l.stat(stat::PASS_NO_NAT66), 1);
    assert!(fx.l.reconciler.maps().v6.ct_tcp.entries().unwrap().is_empty(), "no flow recorded");
    // Local backends are served all the same.
    let input = common::v6::tcp(sa6(CLIENT6), sa6(&format!("[{NODE6}]:30081")), "S", 1, b"", none());
    assert_eq!(fx.run(&input).verdict, XDP_PASS);
    assert_eq!(fx.l.reconciler.maps().v6.ct_tcp.entries().unwrap().len(), 2);
}

/// The ICMPv6 error of type `t` from `src` to `dst` that node A sends
/// back about the Ethernet + IPv6 packet `about` (which came from the
/// client), quoting as much of it as fits in 1280 bytes; built by
/// etherparse, checksum included.
fn icmp6_back(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, t: Icmpv6Type, about: &[u8]) -> Vec<u8> {
    let ip = &about[14..];
    let quote = &ip[..ip.len().min(1280 - 48)];
    let b = etherparse::PacketBuilder::ethernet2(EXT_MAC, CLIENT_MAC).ipv6(src.octets(), dst.octets(), 64).icmpv6(t);
    let mut out = Vec::new();
    b.write(&mut out, quote).unwrap();
    out
}

fn ipv6_a_packet_too_big_for_the_path_to_a_remote_backend_gets_packet_too_big(hook: Hook) {
    let mut fx = fixture6(hook, "xdp-v6-mtu");
    // The path to node B's pods has MTU 1300 (a tunnel, say).
    fx._ns.ip(&["-6", "route", "replace", "fd00:244:2::/48", "via", "fd00:50::2", "dev", "ext0", "mtu", "lock", "1300"]).unwrap();
    let (c, np) = (sa6(CLIENT6), node6(30080));
    let big = common::v6::tcp_in(IN, c, np, "A", 1, &[7u8; 1400]);
    // On a native interface a frame is one packet: answered with Packet
    // Too Big from the NodePort's address, quoting the start of the packet
    // as the client sent it.
    let ext = fx.ext;
    let device = |mode| lb_common::Device { mode, name: *b"ext0\0\0\0\0\0\0\0\0\0\0\0\0", why: 0 };
    fx.l.reconciler.maps_mut().devices.insert(&ext, &device(lb_common::xdp_mode::NATIVE)).unwrap();
    let out = fx.run(&big);
    assert_eq!(out.verdict, XDP_TX);
    let want = icmp6_back(*np.ip(), *c.ip(), Icmpv6Type::PacketTooBig { mtu: 1300 }, &big);
    assert_eq!(out.packet.len(), 14 + 1280, "as much as fits the minimum MTU");
    assert_eq!(hex(&out.packet), hex(&want), "Packet Too Big");
    assert_eq!(fx.l.stat(stat::FRAG_NEEDED_SENT), 1);
    // A small packet of the flow is forwarded all the same.
    let small = common::v6::tcp_in(IN, c, np, "A", 1, &[7u8; 1000]);
    assert_eq!(fx.run(&small).verdict, XDP_TX);
    // A long frame may be a GSO super-packet (generic XDP, tc), which the
    // kernel segments on its way: translated and handed to the kernel.
    let out = fx.run_gso(&big);
    assert_eq!(out.verdict, XDP_PASS);
    assert_eq!(&out.packet[14 + 8..14 + 24], &np.ip().octets(), "SNATed");
}

/// An ICMPv6 error of type `t` in `frame` (its MACs; its TTL as the hop
/// limit) from `src` to `dst`, quoting the IPv6 packet of the Ethernet
/// frame `about`; built by etherparse, checksum included.
fn icmp6_in(frame: Frame, src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, t: Icmpv6Type, about: &[u8]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(frame.src_mac, frame.dst_mac).ipv6(src.octets(), dst.octets(), frame.ttl).icmpv6(t);
    let mut out = Vec::new();
    b.write(&mut out, &about[14..]).unwrap();
    out
}

fn icmpv6_errors_about_nat66_flows_are_translated_both_ways(hook: Hook) {
    let mut fx = fixture6(hook, "xdp-v6-icmp");
    let (c, np, be, nat) = (sa6(CLIENT6), node6(30080), sa6("[fd00:244:2::10]:8080"), node6(NAT_PORT));
    let syn = common::v6::tcp_in(IN, c, np, "S", 1000, b"");
    assert_eq!(fx.run(&syn).verdict, XDP_TX);
    let hop = |f: Frame| Frame { ttl: 63, ..f };

    // A router near the client: Packet Too Big about a reply we sent (from
    // the NodePort to the client), to the NodePort's address. It goes to
    // the backend (from node A, as the flow's packets do), about the
    // packet the backend sent (to node A's SNAT port).
    let router: std::net::Ipv6Addr = "fd00:50::fe".parse().unwrap();
    let ptb = Icmpv6Type::PacketTooBig { mtu: 1280 };
    let reply_as_sent = common::v6::tcp_in(TO_CLIENT, np, c, "A", 5000, b"");
    let out = fx.run(&icmp6_in(IN, router, *np.ip(), ptb, &reply_as_sent));
    assert_eq!(out.verdict, XDP_TX, "on to node B");
    let reply_as_backend_sent = common::v6::tcp_in(hop(FROM_B), be, nat, "A", 5000, b"");
    let want = icmp6_in(hop(TO_B), *np.ip(), *be.ip(), ptb, &reply_as_backend_sent);
    assert_eq!(hex(&out.packet), hex(&want), "Packet Too Big to the backend");

    // Node B's destination unreachable about the SYN we SNATed, to the
    // SNAT address: it goes to the client, about the SYN the client sent.
    let unreach = Icmpv6Type::DestinationUnreachable(etherparse::icmpv6::DestUnreachableCode::Port);
    let forwarded = common::v6::tcp_in(TO_B, nat, be, "S", 1000, b"");
    let out = fx.run(&icmp6_in(FROM_B, *be.ip(), *nat.ip(), unreach, &forwarded));
    assert_eq!(out.verdict, XDP_TX, "back to the client");
    let want = icmp6_in(hop(TO_CLIENT), *np.ip(), *c.ip(), unreach, &common::v6::tcp_in(hop(IN), c, np, "S", 1000, b""));
    assert_eq!(hex(&out.packet), hex(&want), "destination unreachable to the client");
    assert_eq!(fx.l.stat(stat::ICMP_TRANSLATED), 2);

    // Errors about no flow we know pass untouched; so does neighbour
    // discovery (no error).
    let stray = icmp6_in(IN, router, *np.ip(), ptb, &common::v6::tcp_in(TO_CLIENT, np, sa6("[fd00:50::65]:1"), "A", 1, b""));
    expect_unchanged("an error about no flow", &fx.run(&stray), &stray);
    let stray = icmp6_in(FROM_B, *be.ip(), *nat.ip(), unreach, &common::v6::tcp_in(TO_B, node6(NAT_PORT + 1), be, "S", 1, b""));
    expect_unchanged("an error about no SNATed flow", &fx.run(&stray), &stray);
    assert_eq!(fx.l.stat(stat::ICMP_TRANSLATED), 2);
    assert_eq!(fx.l.stat(stat::TAIL_CALL_FAILED), 0);
}

/// ICMPv6 errors about NAT66 flows whose quoted packet carried extension
/// headers, or was the first fragment of a datagram: the quote's headers
/// are walked as a packet's and its ports, after them, translated, the
/// extension headers left as they are. A quoted later fragment (no ports)
/// and a quote cut off inside its headers pass untouched. Each case is
/// checked and the wrong ones named together.
fn icmpv6_errors_quoting_extension_headers_and_first_fragments_are_translated(hook: Hook) {
    use common::v6::{dest_opts, fragments, hop_by_hop, tcp, udp};
    use etherparse::{IpNumber, Ipv6Extensions};
    let mut fx = fixture6(hook, "xdp-v6-icmp-exts");
    let (c, np, be, nat) = (sa6(CLIENT6), node6(30080), sa6("[fd00:244:2::10]:8080"), node6(NAT_PORT));
    let hop = |f: Frame| Frame { ttl: 63, ..f };
    let router: std::net::Ipv6Addr = "fd00:50::fe".parse().unwrap();
    let router_b: std::net::Ipv6Addr = "fd00:50::2".parse().unwrap();
    let ptb = Icmpv6Type::PacketTooBig { mtu: 1280 };
    let unreach = Icmpv6Type::DestinationUnreachable(etherparse::icmpv6::DestUnreachableCode::Port);
    // What an error quotes of a packet: at most 1232 bytes.
    let quote = |p: &[u8]| p[..p.len().min(14 + 1232)].to_vec();
    let mut wrong = Vec::new();
    // `want`: the translated error, sent on; `None`: passed untouched.
    let mut check = |fx: &mut Fixture, name: &str, input: &[u8], want: Option<&[u8]>| {
        let out = fx.run(input);
        let (verdict, packet) = match want {
            Some(p) => (XDP_TX, p),
            None => (XDP_PASS, input),
        };
        if out.verdict != verdict || out.packet != packet {
            wrong.push(format!("{name}: verdict {}, packet {}", out.verdict, if out.packet == input { "untouched" } else { "wrong" }));
        }
    };

    // (a) TCP: Packet Too Big about a reply we sent behind a destination
    // options header, and node B's destination unreachable about a SYN
    // behind hop-by-hop and destination options.
    assert_eq!(fx.run(&common::v6::tcp_in(IN, c, np, "S", 1000, b"")).verdict, XDP_TX);
    let input = icmp6_in(IN, router, *np.ip(), ptb, &tcp(np, c, "A", 5000, b"", dest_opts(IpNumber::TCP)));
    let want = icmp6_in(hop(TO_B), *np.ip(), *be.ip(), ptb, &tcp(be, nat, "A", 5000, b"", dest_opts(IpNumber::TCP)));
    check(&mut fx, "PTB quoting destination options, to the backend", &input, Some(&want));
    let both = || Ipv6Extensions {
        destination_options: dest_opts(IpNumber::TCP).destination_options,
        ..hop_by_hop(IpNumber::IPV6_DESTINATION_OPTIONS)
    };
    let input = icmp6_in(FROM_B, *be.ip(), *nat.ip(), unreach, &tcp(nat, be, "S", 1000, b"", both()));
    let want = icmp6_in(hop(TO_CLIENT), *np.ip(), *c.ip(), unreach, &tcp(c, np, "S", 1000, b"", both()));
    check(&mut fx, "unreachable quoting hop-by-hop and destination options, to the client", &input, Some(&want));

    // (b) UDP through NodePort 30053 (node B): the first fragment (offset
    // 0, M) of a datagram, its ports after the fragment header and its
    // UDP checksum (over the whole datagram) in the quote.
    let np_u = node6(30053);
    let be_u = sa6("[fd00:244:2::10]:5353");
    let out = fx.run(&common::v6::udp_in(IN, c, np_u, b"query"));
    assert_eq!(out.verdict, XDP_TX, "UDP to node B");
    let nat_u = node6(u16::from_be_bytes([out.packet[14 + 40], out.packet[14 + 41]]));
    let data: Vec<u8> = (0..3000).map(|i| (i % 253) as u8).collect();
    let first = |src, dst, exts| quote(&fragments(&udp(src, dst, &data, exts), 1232, 7)[0]);
    assert_eq!(&first(nat_u, be_u, Ipv6Extensions::default())[14 + 40..14 + 44], &[17, 0, 0, 1], "UDP, offset 0, M");
    let input = icmp6_in(FROM_B, router_b, *nat.ip(), ptb, &first(nat_u, be_u, Ipv6Extensions::default()));
    let want = icmp6_in(hop(TO_CLIENT), *np.ip(), *c.ip(), ptb, &first(c, np_u, Ipv6Extensions::default()));
    check(&mut fx, "PTB quoting a first fragment, to the client", &input, Some(&want));
    let input = icmp6_in(FROM_B, *be.ip(), *nat.ip(), unreach, &first(nat_u, be_u, Ipv6Extensions::default()));
    let want = icmp6_in(hop(TO_CLIENT), *np.ip(), *c.ip(), unreach, &first(c, np_u, Ipv6Extensions::default()));
    check(&mut fx, "unreachable quoting a first fragment, to the client", &input, Some(&want));
    // The answer's first fragment, behind a hop-by-hop header.
    let input = icmp6_in(IN, router, *np.ip(), ptb, &first(np_u, c, hop_by_hop(IpNumber::UDP)));
    let want = icmp6_in(hop(TO_B), *np.ip(), *be.ip(), ptb, &first(be_u, nat_u, hop_by_hop(IpNumber::UDP)));
    check(&mut fx, "PTB quoting a first fragment behind hop-by-hop, to the backend", &input, Some(&want));
    let translated = fx.l.stat(stat::ICMP_TRANSLATED);

    // (c) A later fragment quotes no ports (its first fragment's are kept
    // under the addresses it arrived with, not the quote's): untouched.
    let later = quote(&fragments(&udp(nat_u, be_u, &data, Ipv6Extensions::default()), 1232, 7)[1]);
    check(&mut fx, "PTB quoting a later fragment passes untouched", &icmp6_in(FROM_B, router_b, *nat.ip(), ptb, &later), None);
    // Quotes cut off in the destination options header, in the fragment
    // header, and right after it (no ports).
    let tcp_reply = tcp(np, c, "A", 5000, b"", dest_opts(IpNumber::TCP));
    let frag = first(np_u, c, Ipv6Extensions::default());
    for (name, cut) in [
        ("a quote cut in its destination options header", &tcp_reply[..14 + 40 + 4]),
        ("a quote cut in its fragment header", &frag[..14 + 40 + 6]),
        ("a quote cut after its fragment header", &frag[..14 + 40 + 8 + 2]),
    ] {
        check(&mut fx, name, &icmp6_in(IN, router, *np.ip(), ptb, cut), None);
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(translated, 5);
    assert_eq!(fx.l.stat(stat::ICMP_TRANSLATED), 5, "nothing else translated");
    assert_eq!(fx.l.stat(stat::TAIL_CALL_FAILED), 0);
}

/// [`expect`] for an IPv6 packet.
fn expect6(name: &str, out: &Outcome, verdict: i32, packet: &[u8]) {
    assert_eq!(out.verdict, verdict, "{name}: verdict");
    common::v6::assert_checksums_valid(name, &out.packet);
    assert_eq!(hex(&out.packet), hex(packet), "{name}: output packet");
}

fn node6(port: u16) -> std::net::SocketAddrV6 {
    std::net::SocketAddrV6::new(NODE6.parse().unwrap(), port, 0, 0)
}

fn ipv6_nodeport_to_a_remote_backend_is_nat66ed_and_forwarded_and_replies_reversed(hook: Hook) {
    let mut fx = fixture6(hook, "xdp-v6-remote");
    let c = sa6(CLIENT6);
    let np = node6(30080);
    let be = sa6("[fd00:244:2::10]:8080");
    let nat = node6(NAT_PORT);

    // DNAT and SNAT to node A's IPv6 address and a port of the SNAT range,
    // out of the same interface to node B (the FIB's MACs, hop limit 63).
    let out = fx.run(&common::v6::tcp_in(IN, c, np, "S", 1000, b""));
    expect6("SYN to the IPv6 NodePort", &out, XDP_TX, &common::v6::tcp_in(TO_B, nat, be, "S", 1000, b""));
    let out = fx.run(&common::v6::tcp_in(FROM_B, be, nat, "SA", 5000, b""));
    expect6("SYN-ACK back to the client", &out, XDP_TX, &common::v6::tcp_in(TO_CLIENT, np, c, "SA", 5000, b""));
    let payload = b"GET / HTTP/1.1\r\n\r\n";
    let out = fx.run(&common::v6::tcp_in(IN, c, np, "PA", 1001, payload));
    expect6("data follows the flow's NAT", &out, XDP_TX, &common::v6::tcp_in(TO_B, nat, be, "PA", 1001, payload));
    let out = fx.run(&common::v6::tcp_in(FROM_B, be, nat, "PA", 5001, b"200 OK"));
    expect6("the backend's data", &out, XDP_TX, &common::v6::tcp_in(TO_CLIENT, np, c, "PA", 5001, b"200 OK"));

    // One flow, two IPv6 conntrack entries naming each other, as IPv4's.
    let ct = fx.l.reconciler.maps().v6.ct_tcp.entries().unwrap();
    assert_eq!(ct.len(), 2, "{ct:#?}");
    for (k, v) in &ct {
        assert!(ct.iter().any(|(k2, _)| *k2 == v.twin_key(k)), "twin of {k:?}");
    }
    // An expired hop limit is not forwarded: ICMPv6 Time Exceeded from
    // the NodePort's address, quoting the packet as it came.
    let expiring = common::v6::tcp_in(Frame { ttl: 1, ..IN }, c, np, "A", 1002, b"");
    let out = fx.run(&expiring);
    assert_eq!(out.verdict, XDP_TX, "hop limit 1");
    let exceeded = Icmpv6Type::TimeExceeded(etherparse::icmpv6::TimeExceededCode::HopLimitExceeded);
    assert_eq!(hex(&out.packet), hex(&icmp6_back(*np.ip(), *c.ip(), exceeded, &expiring)), "Time Exceeded");
    assert_eq!(fx.l.stat(stat::DROP_TTL), 1);
    // A packet to the SNAT address and port that no flow's reply is (from
    // another port of the backend) is not ours.
    let stray = common::v6::tcp_in(FROM_B, sa6("[fd00:244:2::10]:9999"), nat, "SA", 1, b"");
    expect_unchanged("a stray packet to the SNAT address", &fx.run(&stray), &stray);
    assert_eq!(fx.l.stat(stat::PASS_NO_NAT66), 0);
    assert_eq!(fx.l.stat(stat::TAIL_CALL_FAILED), 0);
}

fn ipv6_nat66_ports_never_collide(hook: Hook) {
    // fixture6's one NAT port: a second NAT66 flow to the same backend
    // cannot get it while the first holds it, and is dropped (counted)
    // rather than mixed up with the first.
    let mut fx = fixture6(hook, "xdp-v6-collide");
    let (np, be, nat) = (node6(30080), sa6("[fd00:244:2::10]:8080"), node6(NAT_PORT));
    let client6 = |port: u16| std::net::SocketAddrV6::new(*sa6(CLIENT6).ip(), port, 0, 0);
    let first = fx.run(&common::v6::tcp_in(IN, client6(40000), np, "S", 1, b""));
    assert_eq!(first.verdict, XDP_TX);
    let second = fx.run(&common::v6::tcp_in(IN, client6(40002), np, "S", 1, b""));
    assert_eq!(second.verdict, XDP_DROP, "the only NAT port is taken");
    assert_eq!(fx.l.stat(stat::DROP_NO_NAT_PORT), 1);
    // The first flow is unaffected, both ways.
    let again = fx.run(&common::v6::tcp_in(IN, client6(40000), np, "A", 2, b""));
    expect6("first flow", &again, XDP_TX, &common::v6::tcp_in(TO_B, nat, be, "A", 2, b""));
    let back = fx.run(&common::v6::tcp_in(FROM_B, be, nat, "A", 9, b""));
    expect6("first flow's reply", &back, XDP_TX, &common::v6::tcp_in(TO_CLIENT, np, client6(40000), "A", 9, b""));
    assert_eq!(fx.l.reconciler.maps().v6.ct_tcp.entries().unwrap().len(), 2, "the dropped flow left no entry");
}

fn ipv6_spoofed_syns_hold_nat66_ports_only_until_the_syn_timeout(hook: Hook) {
    // As IPv4's: a SYN from a source that never answers takes the one NAT
    // port; a real client is dropped while it is held, and gets it once
    // the SYN timeout has passed, without waiting for GC.
    let mut fx = fixture6(hook, "xdp-v6-spoof");
    let (np, be, nat) = (node6(30080), sa6("[fd00:244:2::10]:8080"), node6(NAT_PORT));
    let spoofed = sa6("[2001:db8::9]:4444");
    assert_eq!(fx.run(&common::v6::tcp_in(IN, spoofed, np, "S", 1, b"")).verdict, XDP_TX);
    // The backend's SYN-ACK goes out to the spoofed source (through the
    // kernel: no route here); nothing comes back.
    assert_eq!(fx.run(&common::v6::tcp_in(FROM_B, be, nat, "SA", 9, b"")).verdict, XDP_PASS);
    let real = sa6("[fd00:50::64]:40080");
    assert_eq!(fx.run(&common::v6::tcp_in(IN, real, np, "S", 1, b"")).verdict, XDP_DROP, "the port is held");
    // Age the half-open flow past the SYN timeout (60 s).
    let age = |fx: &mut Fixture, by: u64| {
        let ct = fx.l.reconciler.maps().v6.ct_tcp.entries().unwrap();
        for (k, mut e) in ct {
            e.last_seen -= by;
            fx.l.reconciler.maps_mut().v6.ct_tcp.insert(&k, &e).unwrap();
        }
    };
    age(&mut fx, 61_000_000_000);
    let out = fx.run(&common::v6::tcp_in(IN, real, np, "S", 1, b""));
    expect6("the real client gets the port", &out, XDP_TX, &common::v6::tcp_in(TO_B, nat, be, "S", 1, b""));
    // An established flow keeps its port for as long as it lives.
    assert_eq!(fx.run(&common::v6::tcp_in(FROM_B, be, nat, "SA", 9, b"")).verdict, XDP_TX);
    assert_eq!(fx.run(&common::v6::tcp_in(IN, real, np, "A", 2, b"")).verdict, XDP_TX);
    age(&mut fx, 61_000_000_000);
    assert_eq!(fx.run(&common::v6::tcp_in(IN, sa6("[fd00:50::64]:40081"), np, "S", 1, b"")).verdict, XDP_DROP);
}

fn ipv6_the_fibs_answer_is_kept_for_a_second_and_a_longer_packet_or_a_stale_answer_asks_again(hook: Hook) {
    let mut fx = fixture6(hook, "xdp-v6-nexthop");
    let (c, np, be, nat) = (sa6(CLIENT6), node6(30080), sa6("[fd00:244:2::10]:8080"), node6(NAT_PORT));
    let syn = common::v6::tcp_in(IN, c, np, "S", 1000, b"");
    expect6("SYN to the NodePort", &fx.run(&syn), XDP_TX, &common::v6::tcp_in(TO_B, nat, be, "S", 1000, b""));
    // The FIB's answer is kept for the backend's address (its four
    // words), by the interface the packet came in on: node B's MAC, the
    // SYN's IPv6 length.
    let kept = nexthops(&fx);
    let words: Vec<u64> = be.ip().octets().chunks(4).map(|w| u32::from_ne_bytes(w.try_into().unwrap()) as u64).collect();
    assert_eq!(kept, vec![(words, fx.ext as u64, fx.ext as u64, NODE_B_MAC.map(u64::from).to_vec(), 60)]);

    // Node B's MAC changes. A packet longer than any the FIB passed asks
    // it again (its MTU check): the new MAC at once.
    let new_mac = [0x02, 0, 0, 0, 0x50, 0x99];
    fx._ns.ip(&["-6", "neigh", "replace", "fd00:50::2", "lladdr", &mac(new_mac), "dev", "ext0", "nud", "permanent"]).unwrap();
    let to_b = Frame { dst_mac: new_mac, ..TO_B };
    let data = common::v6::tcp_in(IN, c, np, "PA", 1001, &[5u8; 100]);
    expect6("a longer packet asks the FIB", &fx.run(&data), XDP_TX, &common::v6::tcp_in(to_b, nat, be, "PA", 1001, &[5u8; 100]));
    assert_eq!(nexthops(&fx)[0].4, 160, "the longest length the FIB passed");

    // It changes again: within a second, short packets may still go to
    // the kept answer; after it, the FIB is asked again.
    let newer_mac = [0x02, 0, 0, 0, 0x50, 0x98];
    fx._ns.ip(&["-6", "neigh", "replace", "fd00:50::2", "lladdr", &mac(newer_mac), "dev", "ext0", "nud", "permanent"]).unwrap();
    std::thread::sleep(Duration::from_millis(1_100));
    let ack = common::v6::tcp_in(IN, c, np, "A", 1101, b"");
    let to_b = Frame { dst_mac: newer_mac, ..TO_B };
    expect6("a stale answer asks the FIB", &fx.run(&ack), XDP_TX, &common::v6::tcp_in(to_b, nat, be, "A", 1101, b""));

    // A reply to the client keeps the client's answer too.
    let out = fx.run(&common::v6::tcp_in(FROM_B, be, nat, "SA", 5000, b""));
    expect6("SYN-ACK back to the client", &out, XDP_TX, &common::v6::tcp_in(TO_CLIENT, np, c, "SA", 5000, b""));
    assert_eq!(nexthops(&fx).len(), 2, "the backend's and the client's");
}

fn ipv6_no_endpoints_rejects_with_icmpv6_port_unreachable(hook: Hook) {
    let mut fx = fixture6(hook, "xdp-v6-reject");
    let (c, np) = (sa6(CLIENT6), node6(30094));
    let unreach = Icmpv6Type::DestinationUnreachable(etherparse::icmpv6::DestUnreachableCode::Port);
    // TCP is rejected too, as kube-proxy's REJECT (not a reset from the
    // kernel); a long datagram is quoted up to the IPv6 minimum MTU.
    let syn = common::v6::tcp_in(IN, c, np, "S", 1, b"");
    let datagram = common::v6::udp_in(IN, c, np, &[9u8; 1400]);
    for (name, input) in [("a TCP SYN", &syn), ("a UDP datagram", &datagram)] {
        let out = fx.run(input);
        assert_eq!(out.verdict, XDP_TX, "{name}: ICMPv6 back out");
        assert_eq!(hex(&out.packet), hex(&icmp6_back(*np.ip(), *c.ip(), unreach, input)), "{name}: port unreachable");
        // The checksum, recomputed from the parsed packet.
        let p = SlicedPacket::from_ethernet(&out.packet).unwrap();
        let (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(icmp))) = (&p.net, &p.transport) else { panic!("{name}: not ICMPv6") };
        assert!(icmp.is_checksum_valid(ip.header().source(), ip.header().destination()), "{name}: ICMPv6 checksum");
    }
    assert_eq!(fx.run(&datagram).packet.len(), 14 + 1280, "as much as fits the minimum MTU");
    assert_eq!(fx.l.stat(stat::REJECT_NO_BACKEND), 3);
    assert_eq!(fx.l.stat(stat::TAIL_CALL_FAILED), 0);
    assert!(fx.l.reconciler.maps().v6.ct_tcp.entries().unwrap().is_empty(), "no flow recorded");
}

fn ipv6_fragments_through_a_nodeport_and_an_lb_ip_get_the_datagrams_translation(hook: Hook) {
    let mut fx = fixture6(hook, "xdp-v6-frags");
    let none = etherparse::Ipv6Extensions::default;
    let (c, np, be, nat) = (sa6(CLIENT6), node6(30053), sa6("[fd00:244:2::10]:5353"), node6(NAT_PORT));
    // A 3000-byte datagram in three fragments that fit the 1500-byte
    // links (1232 + 1232 + 544 bytes of it); the expected ones are the
    // translated datagram built by etherparse, cut the same way.
    let payload: Vec<u8> = (0..3000).map(|i| (i % 253) as u8).collect();
    let frags = |packet: Vec<u8>, id: u32| common::v6::fragments(&packet, 1232, id);
    let run_all = |fx: &mut Fixture, name: &str, input: &[Vec<u8>], verdict: i32, want: &[Vec<u8>]| {
        assert_eq!(input.len(), 3);
        for (i, (p, want)) in input.iter().zip(want).enumerate() {
            let out = fx.run(p);
            assert_eq!(out.verdict, verdict, "{name}: fragment {i}: verdict");
            assert_eq!(hex(&out.packet), hex(want), "{name}: fragment {i}");
        }
    };

    // To a NodePort whose backend is on node B: every fragment NAT66ed
    // (DNAT and SNAT to a port of the SNAT range) and forwarded.
    let want = frags(common::v6::udp_in(TO_B, nat, be, &payload), 1);
    run_all(&mut fx, "to node B", &frags(common::v6::udp_in(IN, c, np, &payload), 1), XDP_TX, &want);
    // The answer comes back from node B in fragments too.
    let want = frags(common::v6::udp_in(TO_CLIENT, np, c, &payload), 2);
    run_all(&mut fx, "back to the client", &frags(common::v6::udp_in(FROM_B, be, nat, &payload), 2), XDP_TX, &want);
    assert_eq!(fx.l.stat(stat::FRAGMENT_TRANSLATED), 4);

    // To a LoadBalancer IP whose backend is on this node: DNAT only, the
    // kernel delivers; the backend's answer gets the LB IP back on egress.
    let (lb, local) = (sa6("[fd00:60::10]:53"), sa6("[fd00:244:1::11]:5353"));
    let want = frags(common::v6::udp(c, local, &payload, none()), 3);
    run_all(&mut fx, "to a local backend", &frags(common::v6::udp(c, lb, &payload, none()), 3), XDP_PASS, &want);
    let want = frags(common::v6::udp(lb, c, &payload, none()), 4);
    for (i, (p, want)) in frags(common::v6::udp(local, c, &payload, none()), 4).iter().zip(&want).enumerate() {
        let out = fx.run_egress(p);
        assert_eq!(hex(&out.packet), hex(want), "the local backend's answer: fragment {i}");
    }
    assert_eq!(fx.l.stat(stat::FRAGMENT_TRANSLATED), 8);

    // The same with a destination options header after the fragment
    // header (the fragmentable part): every fragment header names it, and
    // the first fragment has it before UDP.
    let dest = || common::v6::dest_opts(etherparse::IpNumber::UDP);
    let c2 = sa6("[fd00:50::64]:40053");
    let input = frags(common::v6::udp(c2, lb, &payload, dest()), 7);
    assert_eq!((input[0][14 + 40], input[2][14 + 40]), (60, 60), "fragment headers naming destination options");
    let want = frags(common::v6::udp(c2, local, &payload, dest()), 7);
    run_all(&mut fx, "destination options after the fragment header", &input, XDP_PASS, &want);
    // And through NAT66 to node B (`lb_xdp6_nat` parses each fragment
    // afresh and lends it its ports and protocol again), from the first
    // flow's client port: the fixture's SNAT range is that flow's one port.
    let input = frags(common::v6::udp_in_with(IN, c, np, &payload, dest()), 8);
    let want = frags(common::v6::udp_in_with(TO_B, nat, be, &payload, dest()), 8);
    run_all(&mut fx, "to node B, destination options after the fragment header", &input, XDP_TX, &want);
    assert_eq!(fx.l.stat(stat::FRAGMENT_TRANSLATED), 12);

    // A later fragment to the LB IP whose first fragment never came is
    // dropped, never routed on untranslated; one to the node's address
    // passes: it may be the node's own traffic.
    let orphan = &frags(common::v6::udp(sa6("[fd00:50::64]:40051"), lb, &payload, none()), 5)[1];
    assert_eq!(fx.run(orphan).verdict, XDP_DROP, "orphan to the LB IP");
    let orphan = &frags(common::v6::udp(sa6("[fd00:50::64]:40052"), np, &payload, none()), 6)[2];
    expect_unchanged("orphan to the node's address", &fx.run(orphan), orphan);
    assert_eq!(fx.l.stat(stat::DROP_ORPHAN_FRAGMENT), 1);
    assert_eq!(fx.l.stat(stat::FRAGMENT_TRANSLATED), 12);
    assert_eq!(fx.l.stat(stat::TAIL_CALL_FAILED), 0);
}

fn ipv6_passes_and_is_counted_while_the_xdp_program_is_missing(hook: Hook) {
    let mut fx = fixture6(hook, "xdp-v6-tail-call");
    assert!(fx.clear_call(lb_common::xdp_call::XDP6));
    let none = etherparse::Ipv6Extensions::default;
    let input = common::v6::tcp(sa6(CLIENT6), sa6(&format!("[{NODE6}]:30081")), "S", 1, b"", none());
    expect_unchanged("IPv6 NodePort with an empty slot", &fx.run(&input), &input);
    assert_eq!(fx.l.stat(stat::TAIL_CALL_FAILED), 1);
    // IPv4 does not go through that slot.
    let v4 = testrun::tcp_frame(IN, client(40000), node(30081), "S", 1000, b"");
    assert_eq!(fx.run(&v4).verdict, XDP_PASS);
    assert_eq!(fx.l.stat(stat::TAIL_CALL_FAILED), 1);
    lb_agent::datapath::fill_tc_calls(&mut fx.l.dp.ebpf).unwrap();
    let out = fx.run(&input);
    assert_eq!(hex(&out.packet), hex(&common::v6::tcp(sa6(CLIENT6), sa6("[fd00:244:1::10]:8080"), "S", 1, b"", none())), "served again");
}

/// `lb_xdp6`'s first look settles an established flow by itself: with the
/// exact path's program (`xdp_call::XDP6_REST`) gone, the flow's packets
/// are still DNATed, a packet for no frontend still passes without it,
/// and only packets that need the exact path (a new flow, a flow whose
/// backend went) miss it.
fn ipv6_established_nodeport_flows_are_served_by_the_first_look_alone(hook: Hook) {
    let mut fx = fixture6(hook, "xdp-v6-first");
    let none = etherparse::Ipv6Extensions::default;
    let c = sa6(CLIENT6);
    let np = sa6(&format!("[{NODE6}]:30081"));
    let be = sa6("[fd00:244:1::10]:8080");
    let out = fx.run(&common::v6::tcp(c, np, "S", 1000, b"", none()));
    assert_eq!(hex(&out.packet), hex(&common::v6::tcp(c, be, "S", 1000, b"", none())), "SYN DNATed (exact path)");
    let clear_rest = |fx: &mut Fixture| assert!(fx.clear_call(lb_common::xdp_call::XDP6_REST));
    clear_rest(&mut fx);

    let payload = b"GET / HTTP/1.1\r\n\r\n";
    let out = fx.run(&common::v6::tcp(c, np, "PA", 1001, payload, none()));
    assert_eq!(
        (out.verdict, hex(&out.packet)),
        (XDP_PASS, hex(&common::v6::tcp(c, be, "PA", 1001, payload, none()))),
        "established flow DNATed by the first look"
    );
    let input = common::v6::tcp(c, sa6("[fd00:50::99]:80"), "S", 1, b"", none());
    expect_unchanged("an IPv6 address with no frontend", &fx.run(&input), &input);
    let input = common::v6::tcp(c, sa6(&format!("[{NODE6}]:22")), "S", 1, b"", none());
    expect_unchanged("the node's IPv6 address, no NodePort", &fx.run(&input), &input);
    assert_eq!(fx.l.stat(stat::TAIL_CALL_FAILED), 0, "none of these needed the exact path");

    // A new flow does.
    let other = sa6("[fd00:50::64]:40001");
    let input = common::v6::tcp(other, np, "S", 1, b"", none());
    expect_unchanged("a new flow with the exact path gone", &fx.run(&input), &input);
    assert_eq!(fx.l.stat(stat::TAIL_CALL_FAILED), 1);

    // The backend goes: the first look does not follow the entry (its
    // version check), the exact path would make a new flow.
    let (d, _) = desired();
    let d6: Desired<std::net::Ipv6Addr> =
        [front6("[fd00:50::1]:30081", svc_flags::NODE_PORT, "[fd00:244:1::11]:8080", "node-a")].into_iter().collect();
    let stats = fx.l.reconciler.apply_dual(&[&d], &[&d6]);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    let input = common::v6::tcp(c, np, "PA", 1019, payload, none());
    expect_unchanged("the old backend's flow with the exact path gone", &fx.run(&input), &input);
    assert_eq!(fx.l.stat(stat::TAIL_CALL_FAILED), 2);
    lb_agent::datapath::fill_tc_calls(&mut fx.l.dp.ebpf).unwrap();
    let out = fx.run(&common::v6::tcp(c, np, "S", 2000, b"", none()));
    assert_eq!(
        hex(&out.packet),
        hex(&common::v6::tcp(c, sa6("[fd00:244:1::11]:8080"), "S", 2000, b"", none())),
        "the new backend, through the exact path again"
    );
}

/// `lb_xdp4`'s first look settles an established IPv4 flow by itself (the
/// local DNAT, the remote path's SNAT and forwarding, and the remote
/// backend's reply to the SNAT address) and passes a packet for no
/// frontend: with the rest's program (`xdp_call::XDP4_REST`) gone, only
/// packets that need it (a new flow) miss it, and with it back the new
/// flow is served from what the first look handed over; with `lb_xdp4`
/// gone, IPv4 passes.
fn ipv4_established_nodeport_flows_are_served_by_the_first_look_alone(hook: Hook) {
    let mut fx = Fixture::new(hook, "xdp-v4-first", (NAT_PORT, NAT_PORT + 10));
    let c = client(40200);
    let local_be = sa("10.244.1.10:8080");
    let out = fx.run(&testrun::tcp_frame(IN, c, node(30081), "S", 7, b""));
    expect("SYN to a local backend", &out, XDP_PASS, &testrun::tcp_frame(IN, c, local_be, "S", 7, b""));
    let lb = sa("192.168.60.10:80");
    let remote_be = sa("10.244.2.11:8080");
    let out = fx.run(&testrun::tcp_frame(IN, c, lb, "S", 1, b""));
    assert_eq!(out.verdict, XDP_TX, "SYN to the LoadBalancer IP");
    let nat = SocketAddrV4::new(NODE_IP.parse().unwrap(), u16::from_be_bytes([out.packet[34], out.packet[35]]));

    assert!(fx.clear_call(lb_common::xdp_call::XDP4_REST));
    let out = fx.run(&testrun::tcp_frame(IN, c, node(30081), "A", 8, b"data"));
    expect("established, local backend", &out, XDP_PASS, &testrun::tcp_frame(IN, c, local_be, "A", 8, b"data"));
    let out = fx.run(&testrun::tcp_frame(IN, c, lb, "A", 2, b"data"));
    expect("established, remote backend", &out, XDP_TX, &testrun::tcp_frame(TO_B, nat, remote_be, "A", 2, b"data"));
    for (name, dst) in [("no frontend", sa("10.0.0.77:443")), ("the node address, port 22", node(22))] {
        let input = testrun::tcp_frame(IN, c, dst, "S", 1, b"");
        expect_unchanged(name, &fx.run(&input), &input);
    }
    // The backend's reply to the SNAT address: both translations reversed
    // by the first look too.
    let reply = testrun::tcp_frame(FROM_B, remote_be, nat, "A", 5000, b"reply");
    let out = fx.run(&reply);
    expect("a reply to the SNAT address", &out, XDP_TX, &testrun::tcp_frame(TO_CLIENT, lb, c, "A", 5000, b"reply"));
    assert_eq!(fx.l.stat(stat::TAIL_CALL_FAILED), 0, "none of these needed the whole path");

    let new = testrun::tcp_frame(IN, client(40201), lb, "S", 1, b"");
    expect_unchanged("a new flow with the whole path gone", &fx.run(&new), &new);
    assert_eq!(fx.l.stat(stat::TAIL_CALL_FAILED), 1);

    lb_agent::datapath::fill_tc_calls(&mut fx.l.dp.ebpf).unwrap();
    let out = fx.run(&new);
    assert_eq!(out.verdict, XDP_TX, "the new flow, with the whole path back");
    assert_eq!(out.packet[26..30], NODE_IP.parse::<Ipv4Addr>().unwrap().octets(), "the new flow SNATed");
    // (tc runs IPv4's first look in `lb_tc_ns` itself: no slot.)
    if fx.clear_call(lb_common::xdp_call::XDP4) {
        let data = testrun::tcp_frame(IN, c, lb, "A", 3, b"more");
        expect_unchanged("IPv4 with lb_xdp4 gone", &fx.run(&data), &data);
        assert_eq!(fx.l.stat(stat::TAIL_CALL_FAILED), 2);
    }
}

both_hooks!(
    nodeport_to_a_remote_backend_is_snated_and_forwarded_and_replies_reversed,
    nat_ports_never_collide,
    local_backend_is_dnated_only_and_kept_client_ip,
    source_ranges_allow_and_deny,
    no_endpoints_rejects_local_policy_drops_and_others_pass,
    replies_to_pods_whose_backend_is_remote_get_the_frontend_back_on_the_pods_interface,
    a_backend_behind_another_interface_is_redirected_there,
    a_backend_behind_an_interface_without_lb_is_forwarded_by_the_kernel,
    fragments_through_a_nodeport_get_the_datagrams_translation,
    icmp_errors_about_nodeport_flows_are_translated_both_ways,
    a_packet_too_big_for_the_path_to_a_remote_backend_gets_frag_needed,
    the_fibs_answer_is_kept_for_a_second_and_a_longer_packet_or_a_stale_answer_asks_again,
    spoofed_syns_hold_snat_ports_only_until_the_syn_timeout,
    two_nodeport_flows_from_one_client_port_to_one_local_backend_keep_apart,
    packets_for_no_frontend_pass_untouched_and_leave_no_conntrack_entry,
    an_address_sharing_a_frontends_filter_lane_passes_untouched,
    established_flows_follow_conntrack_without_the_address_lookup_until_their_frontend_goes,
    a_pre_filter_new_to_the_pins_is_rebuilt_from_the_frontend_addresses,
    ipv6_source_ranges_allow_and_deny,
    ipv6_session_affinity_keeps_a_client_on_one_backend,
    ipv6_session_affinity_keys_a_client_prefix,
    ipv6_nodeport_and_lb_ip_to_a_local_backend_are_dnated_and_replies_reversed,
    ipv6_traffic_that_is_not_served_passes_untouched,
    ipv6_to_a_backend_on_another_node_passes_while_the_node_has_no_ipv6_snat_address,
    ipv6_a_packet_too_big_for_the_path_to_a_remote_backend_gets_packet_too_big,
    icmpv6_errors_about_nat66_flows_are_translated_both_ways,
    icmpv6_errors_quoting_extension_headers_and_first_fragments_are_translated,
    ipv6_nodeport_to_a_remote_backend_is_nat66ed_and_forwarded_and_replies_reversed,
    ipv6_no_endpoints_rejects_with_icmpv6_port_unreachable,
    ipv6_nat66_ports_never_collide,
    ipv6_spoofed_syns_hold_nat66_ports_only_until_the_syn_timeout,
    ipv6_the_fibs_answer_is_kept_for_a_second_and_a_longer_packet_or_a_stale_answer_asks_again,
    ipv6_fragments_through_a_nodeport_and_an_lb_ip_get_the_datagrams_translation,
    ipv6_passes_and_is_counted_while_the_xdp_program_is_missing,
    ipv6_established_nodeport_flows_are_served_by_the_first_look_alone,
    ipv4_established_nodeport_flows_are_served_by_the_first_look_alone,
);

/// The agent's probe for the metadata helper (`kernel_probe`) answers
/// what the datapath's own XDP programs meet: loaded with the switch on
/// (`lb_common::XDP_META_GLOBAL` = 1, the calls kept), they all load where
/// it says yes, and where it says no one is refused for the helper. With
/// the switch off (what the agent loads there) they all load. A probe
/// that answered wrong would either fail the agent's load or give up the
/// marks for nothing.
#[test]
fn the_metadata_probe_answers_what_the_xdp_programs_meet() {
    if !kernel_tests_enabled() {
        return;
    }
    let said = lb_agent::kernel_probe::xdp_adjust_meta().expect("probing the kernel as root");
    let load_all = |meta: u8| -> Vec<(String, String)> {
        let mut loader = aya::EbpfLoader::new();
        loader.override_global(lb_common::XDP_META_GLOBAL, &meta, true);
        let mut ebpf = loader.load(lb_agent::EBPF_OBJECT).expect("loading the object's maps");
        let mut refused = Vec::new();
        for name in [XDP_PROGRAM].into_iter().chain(lb_agent::datapath::XDP_CALL_PROGRAMS) {
            let xdp: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
            if let Err(e) = xdp.load() {
                refused.push((name.to_string(), format!("{e:?}")));
            }
        }
        refused
    };
    let with_calls = load_all(1);
    if said {
        assert!(with_calls.is_empty(), "the probe said yes, and these were refused: {with_calls:#?}");
    } else {
        assert!(
            with_calls.iter().any(|(_, e)| e.contains("bpf_xdp_adjust_meta")),
            "the probe said no, and no program was refused for the helper: {with_calls:#?}"
        );
    }
    assert_eq!(load_all(0), vec![], "with the switch off");
}
