//! An IPv6 ClusterIP through the real tc datapath: an agent in a
//! dual-stack lab node, a client pod, two backend pods, real sockets.
//! The Services are dual-stack manifests in the agent's directory: the
//! agent programs the `LB6_*` maps itself, and a pod reaches the IPv6
//! ClusterIPs (and still the IPv4 ones), is refused by those without
//! endpoints (ICMPv6), and keeps reaching them with the agent killed and
//! restarted (the IPv6 programs, tail-called, are pinned with the maps).
//! The real-node cases of `real_node.rs` over IPv6 too: a backend in the
//! host network, a closed backend port (ECONNREFUSED), and
//! `internalTrafficPolicy: Local`.

mod common;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6},
    time::{Duration, Instant},
};

use common::{Agent, ManifestDir, PinDir, cli, dual_stack_yaml, kernel_tests_enabled, wait_for};
use lb_common::stat;
use lb_lab::{NodeLab, Server, is_connection_refused, tcp_request_to, tcp_server_at, udp_echo_at, udp_padded_at, udp_request_to};
use serde_json::Value;

const BACKENDS: [&str; 2] = ["web-a", "web-b"];
const TIMEOUT: Duration = Duration::from_secs(2);
const CONNECTIONS: usize = 60;

/// A dual-stack node with a client pod and two backend pods, each serving
/// TCP 8080 (its name) and UDP echo 5353 on its IPv6 address.
fn lab() -> (NodeLab, Vec<Server>) {
    let lab = NodeLab::new(&["client", BACKENDS[0], BACKENDS[1]]).unwrap();
    lab.enable_ipv6().unwrap();
    let mut servers = Vec::new();
    for name in BACKENDS {
        let ip6 = lab.pod_ip6(name);
        let ns = &lab.pod(name).ns;
        servers.push(tcp_server_at(ns, SocketAddrV6::new(ip6, 8080, 0, 0).into(), name).unwrap());
        servers.push(udp_echo_at(ns, SocketAddrV6::new(ip6, 5353, 0, 0).into(), name).unwrap());
    }
    (lab, servers)
}

#[test]
fn a_pod_reaches_an_ipv6_cluster_ip_over_tcp_and_udp() {
    if !kernel_tests_enabled() {
        return;
    }
    let (lab, servers) = lab();
    let dir = ManifestDir::new("tc6");
    let pods4: Vec<Ipv4Addr> = BACKENDS.iter().map(|n| lab.pod(n).ip).collect();
    let pods6: Vec<Ipv6Addr> = BACKENDS.iter().map(|n| lab.pod_ip6(n)).collect();
    let pods = (&pods4[..], &pods6[..]);
    dir.write("web.yaml", &dual_stack_yaml("web", ("10.96.0.10", "fd00:96::a"), (80, "TCP", 8080), pods, false));
    dir.write("dns.yaml", &dual_stack_yaml("dns", ("10.96.0.53", "fd00:96::35"), (53, "UDP", 5353), pods, false));
    let agent = Agent::start(&lab.node, &dir.0, "tc6");
    // (wait_rows allows for a slow load: the verifier on a busy machine.)
    agent.wait_rows("both families' frontends", |rows| rows.len() == 4);

    let web: Ipv6Addr = "fd00:96::a".parse().unwrap();
    let dns: Ipv6Addr = "fd00:96::35".parse().unwrap();

    let client = &lab.pod("client").ns;
    // TCP: many connections, each answered by one of the backends.
    let mut tcp = BTreeMap::<String, usize>::new();
    for i in 0..CONNECTIONS {
        let to = SocketAddr::new(web.into(), 80);
        let tag =
            tcp_request_to(client, to, b"hello\n", TIMEOUT).unwrap_or_else(|e| panic!("TCP request {i}: {e:#}\n{}", agent.log_text()));
        *tcp.entry(tag).or_default() += 1;
    }
    // UDP: each request from a new socket (a new flow); the reply comes
    // from the ClusterIP (reverse NAT), not the backend.
    let mut udp = BTreeMap::<String, usize>::new();
    let dns_addr = SocketAddr::new(dns.into(), 53);
    for i in 0..CONNECTIONS {
        let (reply, peer) =
            udp_request_to(client, dns_addr, b"q", TIMEOUT).unwrap_or_else(|e| panic!("UDP request {i}: {e:#}\n{}", agent.log_text()));
        assert_eq!(peer, dns_addr, "the reply's source is the ClusterIP");
        let tag = reply.strip_suffix(":q").unwrap_or_else(|| panic!("{reply}"));
        *udp.entry(tag.to_string()).or_default() += 1;
    }
    for (proto, counts) in [("TCP", &tcp), ("UDP", &udp)] {
        assert_eq!(counts.keys().cloned().collect::<Vec<_>>(), BACKENDS, "{proto}: both backends answered: {counts:?}");
        // Uniform random choice: 30 each expected; 10 is > 5 sigma away.
        assert!(counts.values().all(|&n| n >= 10), "{proto}: {counts:?}");
    }
    let served: u64 = servers.iter().map(Server::hits).sum();
    assert_eq!(served, 2 * CONNECTIONS as u64, "every connection and datagram reached a backend once");
    // Both directions of each flow were recorded in the IPv6 conntrack.
    let maps = agent.maps();
    let ct_tcp = maps.v6.ct_tcp.entries().unwrap().len();
    let ct_udp = maps.v6.ct_any.entries().unwrap().len();
    assert!(ct_tcp >= 2 * CONNECTIONS, "IPv6 TCP conntrack: {ct_tcp}");
    // A client may draw the same source port twice: that is the same UDP
    // flow, its entries reused.
    assert!(ct_udp >= CONNECTIONS, "IPv6 UDP conntrack: {ct_udp}");

    // The operator's view of the same flows (the binary, on the pins).
    let pins = &agent.pins.0;
    let backends6: Vec<String> = pods6.iter().map(|p| format!("[{p}]:8080")).collect();
    let v = cli(pins, &["ct", "--addr", "fd00:96::a"]);
    let entries = v["entries"].as_array().unwrap();
    let text = |e: &Value, f: &str| e[f].as_str().unwrap_or_else(|| panic!("{f} in {e}")).to_string();
    let service: Vec<&Value> = entries.iter().filter(|e| e["direction"] == "service").collect();
    assert!(service.len() >= CONNECTIONS, "{} TCP service entries: {v}", service.len());
    for fwd in &service {
        assert_eq!((text(fwd, "family"), text(fwd, "protocol"), text(fwd, "dst")), ("IPv6".into(), "TCP".into(), "[fd00:96::a]:80".into()));
        assert!(backends6.contains(&text(fwd, "nat_dst")), "translated to a backend: {fwd}");
        assert!(text(fwd, "service").starts_with("test/web"), "{fwd}");
        // Its reply entry: from that backend to the client, back to the
        // ClusterIP.
        let reply = entries
            .iter()
            .find(|e| e["direction"] == "reply" && e["src"] == fwd["nat_dst"] && e["dst"] == fwd["nat_src"])
            .unwrap_or_else(|| panic!("no reply entry for {fwd}"));
        assert_eq!((text(reply, "nat_src"), text(reply, "nat_dst")), (text(fwd, "dst"), text(fwd, "src")));
    }
    assert!(
        cli(pins, &["ct", "--addr", "fd00:96::b"])["entries"].as_array().unwrap().is_empty(),
        "an IPv6 address of no flow filters everything out"
    );

    // explain: a packet of a recorded flow follows its entry (an ACK: the
    // flow is closing, a SYN would start a new one) ...
    let fwd = service[0];
    let x = cli(pins, &["explain", "tcp", &text(fwd, "src"), "[fd00:96::a]:80", "--tcp-flags", "A"]);
    assert_eq!((text(&x, "verdict"), text(&x, "selection")), ("translate".into(), "conntrack".into()), "{x}");
    assert_eq!((text(&x, "frontend"), text(&x, "backend")), ("[fd00:96::a]:80".into(), text(fwd, "nat_dst")), "{x}");
    assert!(text(&x, "service").starts_with("test/web"), "{x}");
    // ... and a new flow picks among both backends.
    let client_ip = lab.pod_ip6("client");
    let x = cli(pins, &["explain", "tcp", &format!("[{client_ip}]:1"), "[fd00:96::a]:80"]);
    assert_eq!((text(&x, "verdict"), text(&x, "selection")), ("translate".into(), "random".into()), "{x}");
    let mut candidates: Vec<String> = x["candidates"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    candidates.sort();
    let mut want = backends6.clone();
    want.sort();
    assert_eq!(candidates, want, "{x}");

    // stats: the IPv6 conntrack's fill.
    let v = cli(pins, &["stats"]);
    let fill = |map: &str| v["maps"].as_array().unwrap().iter().find(|m| m["map"] == map).cloned().unwrap_or_else(|| panic!("{map}: {v}"));
    let tcp6 = fill("LB6_CT_TCP");
    assert!(tcp6["entries"].as_u64().unwrap() >= 2 * CONNECTIONS as u64, "{tcp6}");
    assert_eq!(tcp6["max_entries"], lb_common::sizes::CT_TCP6);
    assert!(fill("LB6_CT_ANY")["entries"].as_u64().unwrap() >= CONNECTIONS as u64);
}

#[test]
fn a_4000_byte_udp_answer_crosses_an_ipv6_clusterip_in_fragments() {
    if !kernel_tests_enabled() {
        return;
    }
    // An EDNS-sized DNS answer: bigger than the pod MTU (1500), so the
    // backend's stack sends it as IPv6 fragments (a UDP socket may
    // fragment: IPV6_DONTFRAG is off by default).
    let lab = NodeLab::new(&["client", "dns"]).unwrap();
    lab.enable_ipv6().unwrap();
    let dns6 = lab.pod_ip6("dns");
    let _server = udp_padded_at(&lab.pod("dns").ns, SocketAddrV6::new(dns6, 5353, 0, 0).into(), "dns", 4000).unwrap();
    let dir = ManifestDir::new("frag6");
    let pods = (&[lab.pod("dns").ip][..], &[dns6][..]);
    dir.write("dns.yaml", &dual_stack_yaml("dns", ("10.96.0.53", "fd00:96::35"), (53, "UDP", 5353), pods, false));
    let agent = Agent::start(&lab.node, &dir.0, "frag6");
    agent.wait_rows("both families' frontends", |rows| rows.len() == 2);
    let vip: SocketAddr = "[fd00:96::35]:53".parse().unwrap();
    let client = &lab.pod("client").ns;
    for i in 0..5 {
        let (reply, peer) = udp_request_to(client, vip, format!("q{i}").as_bytes(), TIMEOUT)
            .unwrap_or_else(|e| panic!("query {i}: {e:#}\n{}", agent.log_text()));
        assert_eq!(reply.len(), 4000, "the whole answer");
        assert!(reply.starts_with(&format!("dns:q{i}")), "{}", &reply[..16]);
        assert_eq!(peer, vip, "from the address dialled");
    }
    // A 3000-byte query fragments on the way there too.
    let big = vec![b'x'; 3000];
    let (reply, _) = udp_request_to(client, vip, &big, TIMEOUT).unwrap_or_else(|e| panic!("big query: {e:#}"));
    assert!(reply.starts_with(&format!("dns:{}", "x".repeat(3000))), "the query came through whole");
    // On a 1500-byte link a fragment carries 1448 bytes of the datagram:
    // each 4008-byte answer (six of them) and the 3008-byte query are
    // three fragments, two of them later ones.
    let translated = agent.maps().stat(stat::FRAGMENT_TRANSLATED).unwrap();
    assert!(translated >= 6 * 2 + 2, "later fragments were translated: {translated}");
}

/// Path MTU discovery for a fragmented UDP datagram through an IPv6
/// ClusterIP: the backend's link has MTU 1280, the client's 1500. The
/// client's 3000-byte query leaves in 1500-byte fragments, which the node
/// cannot forward to the backend: it answers the first with Packet Too
/// Big, quoting it as DNATed (its fragment header included). Translated
/// on its way to the client (from the ClusterIP, about the fragment the
/// client sent), it reaches the client's connected socket: the query
/// fails with EMSGSIZE instead of waiting for an answer that never comes,
/// and the next query, fragmented for 1280 bytes, is answered. Untranslated
/// (about a fragment to the backend's address, which no socket of the
/// client sent) the kernel drops it, and every query times out.
#[test]
fn a_packet_too_big_about_a_fragmented_query_reaches_the_client_through_an_ipv6_clusterip() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["client", "dns"]).unwrap();
    lab.enable_ipv6().unwrap();
    let dns = lab.pod("dns");
    dns.ns.ip(&["link", "set", "eth0", "mtu", "1280"]).unwrap();
    lab.node.ip(&["link", "set", &dns.host_if, "mtu", "1280"]).unwrap();
    let dns6 = lab.pod_ip6("dns");
    let _server = udp_echo_at(&dns.ns, SocketAddrV6::new(dns6, 5353, 0, 0).into(), "dns").unwrap();
    let dir = ManifestDir::new("ptb6");
    let pods = (&[dns.ip][..], &[dns6][..]);
    dir.write("dns.yaml", &dual_stack_yaml("dns", ("10.96.0.53", "fd00:96::35"), (53, "UDP", 5353), pods, false));
    let agent = Agent::start(&lab.node, &dir.0, "ptb6");
    agent.wait_rows("both families' frontends", |rows| rows.len() == 2);
    let vip: SocketAddr = "[fd00:96::35]:53".parse().unwrap();
    let client = &lab.pod("client").ns;
    // A small query goes through: the flow is there.
    let (reply, _) = udp_request_to(client, vip, b"small", TIMEOUT).unwrap_or_else(|e| panic!("small query: {e:#}\n{}", agent.log_text()));
    assert!(reply.starts_with("dns:small"), "{reply}");

    let big = vec![b'x'; 3000];
    let err = udp_request_to(client, vip, &big, TIMEOUT).expect_err("a query too big for the backend's link");
    let os_error = err.chain().find_map(|e| e.downcast_ref::<std::io::Error>()).and_then(std::io::Error::raw_os_error);
    assert_eq!(os_error, Some(libc::EMSGSIZE), "the client learns the path MTU: {err:#}");
    assert!(agent.maps().stat(stat::ICMP_TRANSLATED).unwrap() >= 1);
    // The next query is fragmented for the path and answered.
    let (reply, _) = udp_request_to(client, vip, &big, TIMEOUT).unwrap_or_else(|e| panic!("query after PMTU: {e:#}"));
    assert!(reply.starts_with(&format!("dns:{}", "x".repeat(3000))), "the query came through whole");
}

/// Requests from the client pod to the web ClusterIP over IPv6: each is
/// answered by a backend.
fn reach_web(lab: &NodeLab, what: &str, n: usize) {
    let web: SocketAddr = "[fd00:96::a]:80".parse().unwrap();
    for i in 0..n {
        let tag = tcp_request_to(&lab.pod("client").ns, web, b"hello\n", TIMEOUT).unwrap_or_else(|e| panic!("{what}: request {i}: {e:#}"));
        assert!(BACKENDS.contains(&tag.as_str()), "{what}: {tag}");
    }
}

/// A TCP connect and a connected UDP socket's send to IPv6 ClusterIPs that
/// cannot serve them: both see ECONNREFUSED (ICMPv6 port unreachable),
/// never a timeout. A TCP connect is refused at the latest by the answer
/// to its first SYN retransmission (1 s): the answer to the first SYN
/// arrives while connect() still holds the socket (the whole path runs in
/// the sender's softirq), and the kernel then only notes it
/// (TcpExtLockDroppedIcmps counts it; for IPv4 it ends the connect at
/// once, for IPv6 it waits for the next answer).
fn assert_refused(lab: &NodeLab, what: &str) {
    let client = &lab.pod("client").ns;
    for to in ["[fd00:96::14]:80", "[fd00:96::a]:81"] {
        let t = Instant::now();
        let err = tcp_request_to(client, to.parse().unwrap(), b"x", Duration::from_secs(5)).unwrap_err();
        assert!(is_connection_refused(&err), "{what}: TCP to {to}: {err:#}");
        assert!(t.elapsed() < Duration::from_millis(2500), "{what}: TCP to {to} refused after {:?}", t.elapsed());
    }
    let err = udp_request_to(client, "[fd00:96::15]:53".parse().unwrap(), b"q", Duration::from_secs(5)).unwrap_err();
    assert!(is_connection_refused(&err), "{what}: UDP: {err:#}");
}

#[test]
fn ipv6_cluster_ips_without_endpoints_refuse_and_the_datapath_outlives_its_agent() {
    if !kernel_tests_enabled() {
        return;
    }
    let (lab, _servers) = lab();
    let dir = ManifestDir::new("tc6-reject");
    let pods4: Vec<Ipv4Addr> = BACKENDS.iter().map(|n| lab.pod(n).ip).collect();
    let pods6: Vec<Ipv6Addr> = BACKENDS.iter().map(|n| lab.pod_ip6(n)).collect();
    dir.write("web.yaml", &dual_stack_yaml("web", ("10.96.0.10", "fd00:96::a"), (80, "TCP", 8080), (&pods4, &pods6), false));
    dir.write("empty.yaml", &dual_stack_yaml("empty", ("10.96.0.20", "fd00:96::14"), (80, "TCP", 8080), (&[], &[]), false));
    dir.write("quiet.yaml", &dual_stack_yaml("quiet", ("10.96.0.21", "fd00:96::15"), (53, "UDP", 5353), (&[], &[]), false));
    let agent = Agent::start_with(&lab.node, &dir.0, PinDir::new("tc6-reject"), &[]);
    agent.wait_rows("both families' frontends", |rows| rows.len() == 6);

    reach_web(&lab, "with the agent", 10);
    assert_refused(&lab, "with the agent");
    let maps = agent.maps();
    // Two TCP rejects and the UDP one (a connect may retry nothing: one
    // SYN each), one of them for the unserved port.
    assert!(maps.stat(stat::REJECT_NO_BACKEND).unwrap() >= 2, "{}", agent.log_text());
    assert!(maps.stat(stat::REJECT_UNSERVED_PORT).unwrap() >= 1);

    // SIGKILL: no clean-up ran; the pinned program array still holds the
    // IPv6 programs.
    let pins = agent.stop_keeping_pins(libc::SIGKILL);
    reach_web(&lab, "with the agent killed", 10);
    assert_refused(&lab, "with the agent killed");

    let agent = Agent::start_with(&lab.node, &dir.0, pins, &[]);
    wait_for("the restarted agent's datapath", Duration::from_secs(120), || agent.log_text().contains("datapath loaded").then_some(()));
    agent.wait_rows("both families' frontends", |rows| rows.len() == 6);
    reach_web(&lab, "with the agent restarted", 10);
    assert_refused(&lab, "with the agent restarted");
    assert_eq!(agent.maps().stat(stat::TAIL_CALL_FAILED).unwrap(), 0, "no IPv6 packet missed its program");
}

/// A pod reaching itself through its own IPv6 ClusterIP (the only
/// endpoint): the connection comes back to it from the hairpin address
/// (`lb_common::HAIRPIN_ADDR6`), and its answer, sent there through its
/// default gateway, comes back from the ClusterIP. DNAT alone would have
/// the pod answer itself over its loopback, from its own address: the
/// connection would be reset.
#[test]
fn a_pod_reaches_itself_through_its_ipv6_cluster_ip() {
    if !kernel_tests_enabled() {
        return;
    }
    let (lab, _servers) = lab();
    let dir = ManifestDir::new("hairpin6");
    let me = BACKENDS[0];
    let pods = (&[lab.pod(me).ip][..], &[lab.pod_ip6(me)][..]);
    dir.write("self.yaml", &dual_stack_yaml("self", ("10.96.0.11", "fd00:96::b"), (80, "TCP", 8080), pods, false));
    let agent = Agent::start(&lab.node, &dir.0, "hairpin6");
    agent.wait_rows("both families' frontends", |rows| rows.len() == 2);
    let to = SocketAddr::new("fd00:96::b".parse::<Ipv6Addr>().unwrap().into(), 80);
    for i in 0..10 {
        let tag = tcp_request_to(&lab.pod(me).ns, to, b"hello\n", TIMEOUT)
            .unwrap_or_else(|e| panic!("TCP request {i}: {e:#}\n{}", agent.log_text()));
        assert_eq!(tag, me);
    }
    assert_eq!(agent.maps().stat(stat::HAIRPIN).unwrap(), 10);
}

/// A pod reaches an IPv6 ClusterIP whose only backend is on another node,
/// over plain routing (the lab's nodes route each other's pod prefixes),
/// with the agent as deployed on the client's node (XDP on the external
/// interface, `auto`). The request leaves node A translated; the reply
/// comes back through node A's external interface, past its XDP program,
/// and is translated back at the client pod's interface. IPv4's
/// counterpart is `a_clusterip_reaches_a_backend_on_another_node_with_xdp_off`
/// (real_node.rs).
#[test]
fn a_pod_reaches_an_ipv6_cluster_ip_whose_backend_is_on_another_node() {
    if !kernel_tests_enabled() {
        return;
    }
    backend_on_another_node(lb_lab::Overlay::Routed, "tc6-remote");
}

/// The same with the nodes' pod networks joined by a VXLAN device that
/// carries both families over the IPv4 underlay (Cilium's tunnel; flannel
/// and Calico make the same encapsulation): the translated requests leave
/// node A encapsulated, and the replies arrive decapsulated on the tunnel
/// device before lb translates them back. IPv4's counterpart:
/// `a_clusterip_reaches_a_backend_on_another_node_over_vxlan`
/// (real_node.rs).
#[test]
fn a_pod_reaches_an_ipv6_cluster_ip_whose_backend_is_on_another_node_over_vxlan() {
    if !kernel_tests_enabled() {
        return;
    }
    backend_on_another_node(lb_lab::Overlay::Vxlan, "tc6-vxlan");
}

fn backend_on_another_node(overlay: lb_lab::Overlay, tag: &str) {
    use lb_lab::{ClusterLab, ClusterOptions, Overlay, VXLAN_IF, cluster_pod_ip, cluster_pod_ip6};
    let lab = ClusterLab::with_options(&[&["cli-a"], &["web-b"]], ClusterOptions { overlay, ..Default::default() }).unwrap();
    lab.enable_ipv6().unwrap();
    let web = lab.node(1).pod("web-b");
    let be6 = cluster_pod_ip6(1, 0);
    let _tcp = tcp_server_at(&web.ns, SocketAddrV6::new(be6, 8080, 0, 0).into(), "web-b").unwrap();
    let _udp = udp_echo_at(&web.ns, SocketAddrV6::new(be6, 5353, 0, 0).into(), "web-b").unwrap();
    let pods = (&[cluster_pod_ip(1, 0)][..], &[be6][..]);
    let dir = ManifestDir::new(tag);
    dir.write("web.yaml", &dual_stack_yaml("web", ("10.96.0.10", "fd00:96::a"), (80, "TCP", 8080), pods, false));
    dir.write("dns.yaml", &dual_stack_yaml("dns", ("10.96.0.53", "fd00:96::35"), (53, "UDP", 5353), pods, false));
    let node = lab.node(0);
    let args = ["--external-ifaces", lb_lab::EXT_IF, "--node-name", &node.name, "--health-addr", "off"];
    let agent = Agent::start_with(&node.ns, &dir.0, PinDir::new(tag), &args);
    // Packets node A's VXLAN device sent and received.
    let tunnel_packets = || common::link_packets(&node.ns, VXLAN_IF);
    let before = (overlay == Overlay::Vxlan).then(tunnel_packets);
    agent.wait_rows("both families' frontends", |rows| rows.iter().filter(|r| r.backends.len() == 1).count() == 4);

    let client = &node.pod("cli-a").ns;
    let (web_vip, dns_vip): (Ipv6Addr, Ipv6Addr) = ("fd00:96::a".parse().unwrap(), "fd00:96::35".parse().unwrap());
    for i in 0..10 {
        let to = SocketAddr::new(web_vip.into(), 80);
        let tag =
            tcp_request_to(client, to, b"hello\n", TIMEOUT).unwrap_or_else(|e| panic!("request {i} to {to}: {e:#}\n{}", agent.log_text()));
        assert_eq!(tag, "web-b");
        let to = SocketAddr::new(dns_vip.into(), 53);
        let (reply, peer) =
            udp_request_to(client, to, format!("q{i}").as_bytes(), TIMEOUT).unwrap_or_else(|e| panic!("query {i} to {to}: {e:#}"));
        assert_eq!(reply, format!("web-b:q{i}"));
        assert_eq!(peer, to, "the answer comes from the ClusterIP");
    }
    if let Some((tx, rx)) = before {
        // Each TCP request is at least 4 packets each way, each query 1.
        let (tx2, rx2) = tunnel_packets();
        assert!(tx2 - tx >= 10 * 5 && rx2 - rx >= 10 * 5, "through the tunnel: {} sent, {} received", tx2 - tx, rx2 - rx);
    }
    // Translated by lb: IPv6 flows in its conntrack.
    let maps = agent.maps();
    assert!(maps.v6.ct_tcp.entries().unwrap().len() >= 2 * 10);
    assert!(maps.v6.ct_any.entries().unwrap().len() >= 2 * 10);
    assert_eq!(maps.stat(stat::TAIL_CALL_FAILED).unwrap(), 0);
}

/// Another IPv6 conntrack size at a restart: the next agent rebuilds
/// `LB6_CT_TCP` with it and carries the flows over, and the IPv6 programs
/// it tail-calls (through the pinned `LB_TC_CALLS`) use the rebuilt map:
/// idle connections through an IPv6 ClusterIP go on with their backends,
/// new ones are served, and no tail call failed. IPv4's counterpart:
/// `a_new_conntrack_size_applies_at_a_restart_and_the_flows_carry_over`
/// (restart.rs).
#[test]
fn a_new_ipv6_conntrack_size_applies_at_a_restart_and_the_flows_carry_over() {
    if !kernel_tests_enabled() {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    let (lab, _servers) = lab();
    let _echoes: Vec<_> =
        BACKENDS.iter().map(|n| common::line_echo(&lab.pod(n).ns, SocketAddrV6::new(lab.pod_ip6(n), 9001, 0, 0), n)).collect();
    let pods4: Vec<Ipv4Addr> = BACKENDS.iter().map(|n| lab.pod(n).ip).collect();
    let pods6: Vec<Ipv6Addr> = BACKENDS.iter().map(|n| lab.pod_ip6(n)).collect();
    let dir = ManifestDir::new("tc6-ctsize");
    dir.write("echo.yaml", &dual_stack_yaml("echo", ("10.96.0.50", "fd00:96::32"), (9001, "TCP", 9001), (&pods4, &pods6), false));
    let agent = Agent::start_with(&lab.node, &dir.0, PinDir::new("tc6-ctsize"), &[]);
    let fe = "[fd00:96::32]:9001/TCP";
    agent.wait_rows(fe, |rows| rows.iter().any(|r| r.frontend == fe && r.backends.len() == 2));
    let vip = SocketAddr::new("fd00:96::32".parse::<Ipv6Addr>().unwrap().into(), 9001);
    // A line through a connection: the backend's tag.
    let line = |s: &std::net::TcpStream, text: &str| -> std::io::Result<String> {
        writeln!(&*s, "{text}")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line.trim().strip_suffix(&format!(":{text}")).unwrap_or_else(|| panic!("answered {line:?}")).to_string())
    };
    // Idle connections, each with the backend it was given.
    let client = &lab.pod("client").ns;
    let conns: Vec<(std::net::TcpStream, String)> = client.run(move || {
        (0..12)
            .map(|_| {
                let s = std::net::TcpStream::connect_timeout(&vip, TIMEOUT).unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                let backend = line(&s, "l1").unwrap();
                (s, backend)
            })
            .collect()
    });
    let size = |pins: &std::path::Path| lb_agent::layout::pinned_def(&pins.join(lb_common::names::CT_TCP6)).unwrap().max_entries;
    assert_eq!(size(&agent.pins.0), lb_common::sizes::CT_TCP6);

    let pins = agent.stop_keeping_pins(libc::SIGTERM);
    let agent = Agent::start_with(&lab.node, &dir.0, pins, &["--ct6-tcp-size", "131072"]);
    agent.wait_log("the rebuilt map to go live", "this agent's programs are live");
    let log = agent.log_text();
    assert_eq!(size(&agent.pins.0), 131072, "{log}");
    assert!(log.contains("flows carried into the rebuilt map"), "{log}");
    let entries = agent.maps().v6.ct_tcp.entries().unwrap();
    for (s, _) in &conns {
        let port = s.local_addr().unwrap().port();
        assert!(entries.iter().any(|(k, _)| k.sport == port.to_be()), "no IPv6 entry for client port {port}");
    }
    // Each connection goes on, with its backend; new ones are served.
    for (i, (s, backend)) in conns.iter().enumerate() {
        let now = line(s, "l2").unwrap_or_else(|e| panic!("connection {i} after the restart: {e}\n{log}"));
        assert_eq!(&now, backend, "connection {i}");
    }
    // (The line echo keeps a connection open: one line, no EOF.)
    let answer = client
        .run(move || {
            let s = std::net::TcpStream::connect_timeout(&vip, TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            line(&s, "l3")
        })
        .unwrap_or_else(|e| panic!("a new connection: {e}\n{log}"));
    assert!(BACKENDS.contains(&answer.as_str()), "{answer}");
    assert_eq!(agent.maps().stat(stat::TAIL_CALL_FAILED).unwrap(), 0);
}

/// The `kubernetes` Service of a control-plane node over IPv6: its
/// endpoint is the node's own IPv6 address (a backend in the host
/// network), and pods reach it through the IPv6 ClusterIP.
#[test]
fn a_backend_in_the_host_network_answers_pods_over_ipv6() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["client"]).unwrap();
    lab.enable_ipv6().unwrap();
    let _apiserver = tcp_server_at(&lab.node, SocketAddrV6::new(lb_lab::NODE_IP6, 6443, 0, 0).into(), "apiserver").unwrap();
    let dir = ManifestDir::new("hostnet6");
    let pods = (&[lb_lab::NODE_IP][..], &[lb_lab::NODE_IP6][..]);
    dir.write("kubernetes.yaml", &dual_stack_yaml("kubernetes", ("10.96.0.1", "fd00:96::1"), (443, "TCP", 6443), pods, false));
    let agent = Agent::start(&lab.node, &dir.0, "hostnet6");
    agent.wait_rows("both families' endpoints", |rows| rows.len() == 2 && rows.iter().all(|r| r.backends.len() == 1));
    let to = SocketAddr::new("fd00:96::1".parse::<Ipv6Addr>().unwrap().into(), 443);
    for i in 0..10 {
        let tag = tcp_request_to(&lab.pod("client").ns, to, b"hello\n", TIMEOUT)
            .unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", agent.log_text()));
        assert_eq!(tag, "apiserver");
    }
}

/// The endpoint exists but nothing listens on its port (a DNS pod
/// restarting): its ICMPv6 port unreachable reaches the client as coming
/// from the IPv6 ClusterIP, so a connected UDP socket gets ECONNREFUSED at
/// once and the resolver fails over.
#[test]
fn a_closed_backend_port_gives_a_connected_ipv6_udp_socket_econnrefused() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["client", "dns"]).unwrap();
    lab.enable_ipv6().unwrap();
    let dir = ManifestDir::new("refused6");
    let pods = (&[lab.pod("dns").ip][..], &[lab.pod_ip6("dns")][..]);
    dir.write("dns.yaml", &dual_stack_yaml("dns", ("10.96.0.53", "fd00:96::35"), (53, "UDP", 5353), pods, false));
    let agent = Agent::start(&lab.node, &dir.0, "refused6");
    agent.wait_rows("both families' endpoints", |rows| rows.len() == 2 && rows.iter().all(|r| r.backends.len() == 1));
    let started = Instant::now();
    let to = SocketAddr::new("fd00:96::35".parse::<Ipv6Addr>().unwrap().into(), 53);
    let err = udp_request_to(&lab.pod("client").ns, to, b"q", Duration::from_secs(3)).unwrap_err();
    assert!(is_connection_refused(&err), "expected ECONNREFUSED, got {err:#}\n{}", agent.log_text());
    assert!(started.elapsed() < Duration::from_secs(2), "refused at once, not after a timeout");
    assert_eq!(agent.maps().stat(stat::ICMP_TRANSLATED).unwrap(), 1);
}

/// An IPv6 Service with `internalTrafficPolicy: Local` and its slice:
/// web-a on `node-1` (this node), web-b on `node-2`, or both on `node-2`.
fn local_policy6_yaml(lab: &NodeLab, all_remote: bool) -> String {
    let (a, b) = (lab.pod_ip6("web-a"), lab.pod_ip6("web-b"));
    let node_a = if all_remote { "node-2" } else { "node-1" };
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: local, namespace: test}}
spec:
  clusterIP: "fd00:96::a"
  clusterIPs: ["fd00:96::a"]
  ipFamilies: [IPv6]
  ipFamilyPolicy: SingleStack
  internalTrafficPolicy: Local
  ports: [{{name: p, port: 80, protocol: TCP, targetPort: p}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: local-6, namespace: test, labels: {{kubernetes.io/service-name: local}}}}
addressType: IPv6
ports: [{{name: p, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: ["{a}"], conditions: {{ready: true}}, nodeName: {node_a}}}
- {{addresses: ["{b}"], conditions: {{ready: true}}, nodeName: node-2}}
"#
    )
}

/// `internalTrafficPolicy: Local` over IPv6: only this node's endpoint is
/// served, and with none on this node the IPv6 ClusterIP drops (no
/// answer, not a reject), as kube-proxy does.
#[test]
fn internal_traffic_policy_local_keeps_ipv6_traffic_to_this_nodes_endpoints() {
    if !kernel_tests_enabled() {
        return;
    }
    let (lab, _servers) = lab();
    let to = SocketAddr::new("fd00:96::a".parse::<Ipv6Addr>().unwrap().into(), 80);
    common::internal_traffic_policy_local_holds(&lab, to, |remote| local_policy6_yaml(&lab, remote), "itp6");
}
