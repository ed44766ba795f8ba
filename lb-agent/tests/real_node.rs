//! The conditions of a real node, with real sockets: every lab node is
//! strict (`rp_filter=1` on all, default and every interface), the agent
//! runs as the DaemonSet runs it (the node's network namespace, the host's
//! mount namespace), and each test takes one thing kube-proxy handles that
//! a friendlier lab would not show: a backend in the host network,
//! hairpin, fragmented answers, ICMP errors from backends, half-closed
//! streams (over IPv6 too), `internalTrafficPolicy: Local`, another tc program after lb, a
//! VXLAN overlay between nodes, and a smaller MTU on the way to a NodePort
//! client.

mod common;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, SocketAddrV4, TcpStream},
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use common::{Agent, ManifestDir, PinDir, bulk_server, kernel_tests_enabled, service_yaml};
use lb_common::stat;
use lb_lab::{
    ClusterLab, ClusterOptions, NODE_IP, NodeLab, Overlay, Server, is_connection_refused, node_ip, tcp_request, tcp_server, udp_echo,
    udp_padded, udp_request, udp_request_with,
};

const VIP: &str = "10.96.0.10";

fn vip(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(VIP.parse().unwrap(), port)
}

/// A strict node with a client pod and two backend pods running a TCP
/// server on 8080 that answers with the pod's name.
fn node_lab() -> (NodeLab, Vec<Server>) {
    let lab = NodeLab::new(&["client", "web-a", "web-b"]).unwrap();
    let servers =
        ["web-a", "web-b"].iter().map(|n| tcp_server(&lab.pod(n).ns, SocketAddrV4::new(lab.pod(n).ip, 8080), n).unwrap()).collect();
    (lab, servers)
}

#[test]
fn a_strict_node_serves_a_clusterip() {
    if !kernel_tests_enabled() {
        return;
    }
    let (lab, _servers) = node_lab();
    for iface in ["all", "default", "lbp0", "lbp1"] {
        assert_eq!(lab.node.sysctl_get(&format!("net.ipv4.conf.{iface}.rp_filter")).unwrap(), "1");
    }
    let dir = ManifestDir::new("strict");
    dir.write("web.yaml", &service_yaml("web", VIP, 80, "TCP", 8080, &[lab.pod("web-a").ip, lab.pod("web-b").ip]));
    let agent = Agent::start(&lab.node, &dir.0, "strict");
    agent.wait_rows("2 backends", |rows| rows.len() == 1 && rows[0].backends.len() == 2);
    let client = &lab.pod("client").ns;
    for i in 0..30 {
        tcp_request(client, vip(80)).unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", agent.log_text()));
    }
}

#[test]
fn a_backend_in_the_host_network_answers_pods() {
    if !kernel_tests_enabled() {
        return;
    }
    // The `kubernetes` Service of a control-plane node: its endpoint is
    // the node's own address.
    let lab = NodeLab::new(&["client"]).unwrap();
    let _apiserver = tcp_server(&lab.node, SocketAddrV4::new(NODE_IP, 6443), "apiserver").unwrap();
    let dir = ManifestDir::new("hostnet");
    dir.write("kubernetes.yaml", &service_yaml("kubernetes", VIP, 443, "TCP", 6443, &[NODE_IP]));
    let agent = Agent::start(&lab.node, &dir.0, "hostnet");
    agent.wait_rows("the endpoint", |rows| rows.len() == 1 && rows[0].backends.len() == 1);
    for i in 0..10 {
        let tag = tcp_request(&lab.pod("client").ns, vip(443)).unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", agent.log_text()));
        assert_eq!(tag, "apiserver");
    }
}

#[test]
fn a_pod_reaches_itself_through_its_service() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["self"]).unwrap();
    let pod = lab.pod("self");
    let _server = tcp_server(&pod.ns, SocketAddrV4::new(pod.ip, 8080), "self").unwrap();
    let dir = ManifestDir::new("hairpin");
    dir.write("self.yaml", &service_yaml("self", VIP, 80, "TCP", 8080, &[pod.ip]));
    let agent = Agent::start(&lab.node, &dir.0, "hairpin");
    agent.wait_rows("the endpoint", |rows| rows.len() == 1 && rows[0].backends.len() == 1);
    for i in 0..10 {
        let tag = tcp_request(&pod.ns, vip(80)).unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", agent.log_text()));
        assert_eq!(tag, "self");
    }
    assert_eq!(agent.maps().stat(stat::HAIRPIN).unwrap(), 10);
}

#[test]
fn a_4000_byte_udp_answer_crosses_a_clusterip_in_fragments() {
    if !kernel_tests_enabled() {
        return;
    }
    // An EDNS-sized DNS answer: bigger than the pod MTU, so the backend's
    // stack sends it as IPv4 fragments.
    let lab = NodeLab::new(&["client", "dns"]).unwrap();
    let dns = lab.pod("dns");
    let _server = udp_padded(&dns.ns, SocketAddrV4::new(dns.ip, 5353), "dns", 4000).unwrap();
    let dir = ManifestDir::new("frag");
    dir.write("dns.yaml", &service_yaml("dns", VIP, 53, "UDP", 5353, &[dns.ip]));
    let agent = Agent::start(&lab.node, &dir.0, "frag");
    agent.wait_rows("the endpoint", |rows| rows.len() == 1 && rows[0].backends.len() == 1);
    for i in 0..5 {
        let (reply, peer) = udp_request(&lab.pod("client").ns, vip(53), &format!("q{i}"))
            .unwrap_or_else(|e| panic!("query {i}: {e:#}\n{}", agent.log_text()));
        assert_eq!(reply.len(), 4000, "the whole answer");
        assert!(reply.starts_with(&format!("dns:q{i}")));
        assert_eq!(peer, std::net::SocketAddr::V4(vip(53)), "from the address dialled");
    }
    // A 3000-byte query fragments on the way there too.
    let big = vec![b'x'; 3000];
    let (reply, _) =
        udp_request_with(&lab.pod("client").ns, vip(53), &big, Duration::from_secs(2)).unwrap_or_else(|e| panic!("big query: {e:#}"));
    assert!(reply.starts_with(&format!("dns:{}", "x".repeat(3000))), "the query came through whole");
    assert!(agent.maps().stat(stat::FRAGMENT_TRANSLATED).unwrap() >= 6, "later fragments were translated");
}

#[test]
fn a_closed_backend_port_gives_a_connected_udp_socket_econnrefused() {
    if !kernel_tests_enabled() {
        return;
    }
    // The endpoint exists but nothing listens on its port (a DNS pod
    // restarting): its ICMP port unreachable must reach the client as
    // coming from the ClusterIP, so the resolver fails over at once.
    let lab = NodeLab::new(&["client", "dns"]).unwrap();
    let dir = ManifestDir::new("refused");
    dir.write("dns.yaml", &service_yaml("dns", VIP, 53, "UDP", 5353, &[lab.pod("dns").ip]));
    let agent = Agent::start(&lab.node, &dir.0, "refused");
    agent.wait_rows("the endpoint", |rows| rows.len() == 1 && rows[0].backends.len() == 1);
    let started = Instant::now();
    let err = udp_request_with(&lab.pod("client").ns, vip(53), b"q", Duration::from_secs(3)).unwrap_err();
    assert!(is_connection_refused(&err), "expected ECONNREFUSED, got {err:#}\n{}", agent.log_text());
    assert!(started.elapsed() < Duration::from_secs(2), "refused at once, not after a timeout");
    assert_eq!(agent.maps().stat(stat::ICMP_TRANSLATED).unwrap(), 1);
}

#[test]
fn a_half_closed_stream_outlives_the_closing_timeout() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["client", "slow"]).unwrap();
    let slow = lab.pod("slow").ip;
    let manifest = service_yaml("slow", VIP, 80, "TCP", 8080, &[slow]);
    half_closed_stream(&lab, SocketAddrV4::new(slow, 8080).into(), vip(80).into(), &manifest, "halfclose");
}

/// The same through an IPv6 ClusterIP (the IPv6 conntrack's states and
/// its garbage collection).
#[test]
fn a_half_closed_ipv6_stream_outlives_the_closing_timeout() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["client", "slow"]).unwrap();
    lab.enable_ipv6().unwrap();
    let (slow, slow6) = (lab.pod("slow").ip, lab.pod_ip6("slow"));
    let manifest = common::dual_stack_yaml("slow", (VIP, "fd00:96::a"), (80, "TCP", 8080), (&[slow], &[slow6]), false);
    let to = SocketAddr::new("fd00:96::a".parse::<std::net::Ipv6Addr>().unwrap().into(), 80);
    half_closed_stream(&lab, SocketAddr::new(slow6.into(), 8080), to, &manifest, "halfclose6");
}

/// The client sends its request to `to` and shuts its side down (FIN);
/// the server (pod `slow`, at `server`) answers 3 s later, well past the
/// 1 s closing timeout, with garbage collection running every second: the
/// answer arrives whole.
fn half_closed_stream(lab: &NodeLab, server: SocketAddr, to: SocketAddr, manifest: &str, tag: &str) {
    let (stop, handle) = common::serve_each(&lab.pod("slow").ns, server, |mut s| {
        let mut req = Vec::new();
        s.read_to_end(&mut req).unwrap();
        thread::sleep(Duration::from_secs(3));
        s.write_all(format!("answer to {}", String::from_utf8_lossy(&req)).as_bytes()).unwrap();
        let _ = s.shutdown(Shutdown::Write);
    });
    let dir = ManifestDir::new(tag);
    dir.write("slow.yaml", manifest);
    let agent = Agent::start_with(&lab.node, &dir.0, PinDir::new(tag), &["--ct-tcp-closing-timeout", "1", "--ct-gc-interval", "1"]);
    agent.wait_rows("the endpoints", |rows| !rows.is_empty() && rows.iter().all(|r| r.backends.len() == 1));
    let answer = common::send_then_read(&lab.pod("client").ns, to, b"request".to_vec(), Duration::from_secs(8))
        .unwrap_or_else(|e| panic!("half-closed stream: {e}\n{}", agent.log_text()));
    assert_eq!(answer, "answer to request");
    stop.store(true, Ordering::SeqCst);
    handle.join().unwrap();
}

/// A Service with `internalTrafficPolicy: Local` and its slice: web-a on
/// `node-1` (this node), web-b on `node-2`, or all on `node-2`.
fn local_policy_yaml(lab: &NodeLab, all_remote: bool) -> String {
    let (a, b) = (lab.pod("web-a").ip, lab.pod("web-b").ip);
    let node_a = if all_remote { "node-2" } else { "node-1" };
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: local, namespace: test}}
spec:
  clusterIP: {VIP}
  internalTrafficPolicy: Local
  ports: [{{name: p, port: 80, protocol: TCP, targetPort: p}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: local-1, namespace: test, labels: {{kubernetes.io/service-name: local}}}}
addressType: IPv4
ports: [{{name: p, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: [{a}], conditions: {{ready: true}}, nodeName: {node_a}}}
- {{addresses: [{b}], conditions: {{ready: true}}, nodeName: node-2}}
"#
    )
}

#[test]
fn internal_traffic_policy_local_keeps_to_this_nodes_endpoints() {
    if !kernel_tests_enabled() {
        return;
    }
    let (lab, _servers) = node_lab();
    common::internal_traffic_policy_local_holds(&lab, vip(80).into(), |remote| local_policy_yaml(&lab, remote), "itp");
}

/// A Service with `trafficDistribution: PreferClose` and its slice:
/// web-a hinted for zone-a, web-b for zone-b.
fn prefer_close_yaml(lab: &NodeLab) -> String {
    let (a, b) = (lab.pod("web-a").ip, lab.pod("web-b").ip);
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: close, namespace: test}}
spec:
  clusterIP: {VIP}
  trafficDistribution: PreferClose
  ports: [{{name: p, port: 80, protocol: TCP, targetPort: p}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: close-1, namespace: test, labels: {{kubernetes.io/service-name: close}}}}
addressType: IPv4
ports: [{{name: p, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: [{a}], conditions: {{ready: true}}, nodeName: node-2, hints: {{forZones: [{{name: zone-a}}]}}}}
- {{addresses: [{b}], conditions: {{ready: true}}, nodeName: node-3, hints: {{forZones: [{{name: zone-b}}]}}}}
"#
    )
}

/// This agent's Node in a manifest: its zone label and InternalIP.
fn node_yaml(name: &str, zone: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{topology.kubernetes.io/zone: {zone}}}\n\
         status:\n  addresses: [{{type: InternalIP, address: 192.168.77.1}}]\n"
    )
}

#[test]
fn the_manifest_directorys_node_gives_the_zone_for_topology_hints() {
    if !kernel_tests_enabled() {
        return;
    }
    let (lab, _servers) = node_lab();
    let dir = ManifestDir::new("zone");
    dir.write("close.yaml", &prefer_close_yaml(&lab));
    // Another node's Node does not count.
    dir.write("node-2.yaml", &node_yaml("node-2", "zone-b"));
    dir.write("node-1.yaml", &node_yaml("node-1", "zone-a"));
    let agent = Agent::start_with(&lab.node, &dir.0, PinDir::new("zone"), &["--node-name", "node-1"]);
    let backends = |want: &str| {
        let want = format!("{}:8080", lab.pod(want).ip);
        move |rows: &[lb_agent::list::Row]| rows.len() == 1 && rows[0].backends == [want.clone()]
    };
    let client = &lab.pod("client").ns;
    let answers =
        |n: usize| (0..n).map(|i| tcp_request(client, vip(80)).unwrap_or_else(|e| panic!("request {i}: {e:#}"))).collect::<BTreeSet<_>>();
    agent.wait_rows("zone-a's endpoint", backends("web-a"));
    assert_eq!(answers(10), BTreeSet::from(["web-a".to_string()]));
    assert!(agent.log_text().contains("this node's zone (topology.kubernetes.io/zone)"), "{}", agent.log_text());

    // The Node moves to zone-b.
    dir.write("node-1.yaml", &node_yaml("node-1", "zone-b"));
    agent.wait_rows("zone-b's endpoint", backends("web-b"));
    assert_eq!(answers(10), BTreeSet::from(["web-b".to_string()]));

    // Without its Node, the node has no zone: every endpoint.
    std::fs::remove_file(dir.0.join("node-1.yaml")).unwrap();
    agent.wait_rows("both endpoints", |rows| rows.len() == 1 && rows[0].backends.len() == 2);
    assert_eq!(answers(30), BTreeSet::from(["web-a".to_string(), "web-b".to_string()]));
}

#[test]
fn a_program_attached_after_lb_still_sees_packets() {
    if !kernel_tests_enabled() {
        return;
    }
    use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions};
    let (lab, _servers) = node_lab();
    let dir = ManifestDir::new("chain");
    dir.write("web.yaml", &service_yaml("web", VIP, 80, "TCP", 8080, &[lab.pod("web-a").ip]));
    let agent = Agent::start(&lab.node, &dir.0, "chain");
    agent.wait_rows("the endpoint", |rows| rows.len() == 1 && rows[0].backends.len() == 1);
    let client_if = lab.pod("client").host_if.clone();
    // Another agent's tcx program (a CNI's, say), attached after lb on the
    // client pod's interface.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let iface = client_if.clone();
    let mut ebpf = lab.node.run(move || {
        let mut ebpf = aya::Ebpf::load(lb_agent::EBPF_OBJECT).unwrap();
        let p: &mut SchedClassifier = ebpf.program_mut(lb_agent::datapath::TC_PASS_PROGRAM).unwrap().try_into().unwrap();
        p.load().unwrap();
        p.attach_with_options(&iface, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::last())).unwrap();
        ebpf
    });

    let client = &lab.pod("client").ns;
    for i in 0..5 {
        tcp_request(client, vip(80)).unwrap_or_else(|e| panic!("request {i}: {e:#}"));
    }
    let pass: &mut SchedClassifier = ebpf.program_mut(lb_agent::datapath::TC_PASS_PROGRAM).unwrap().try_into().unwrap();
    let runs = pass.info().unwrap().run_count();
    drop(stats);
    // Each connection's packets from the client (SYN, ACK, data, FIN, ...)
    // went through lb (translated) and then on to the later program.
    assert!(runs >= 5 * 3, "the program after lb ran {runs} times");
}

#[test]
fn a_clusterip_reaches_a_backend_on_another_node_over_vxlan() {
    if !kernel_tests_enabled() {
        return;
    }
    // Two nodes whose pod networks are joined by a kernel VXLAN device
    // (flannel's layout); the only backend is on the other node, so every
    // reply arrives decapsulated on the tunnel device.
    let opts = ClusterOptions { overlay: Overlay::Vxlan, ..Default::default() };
    let lab = ClusterLab::with_options(&[&["cli-a"], &["web-b"]], opts).unwrap();
    let web = lab.node(1).pod("web-b");
    let _tcp = tcp_server(&web.ns, SocketAddrV4::new(web.ip, 8080), "web-b").unwrap();
    let _udp = udp_echo(&web.ns, SocketAddrV4::new(web.ip, 5353), "web-b").unwrap();
    let dir = ManifestDir::new("vxlan");
    dir.write("tcp.yaml", &service_yaml("web", VIP, 80, "TCP", 8080, &[web.ip]));
    dir.write("udp.yaml", &service_yaml("dns", VIP, 53, "UDP", 5353, &[web.ip]));
    let agents: Vec<Agent> = (0..2)
        .map(|n| {
            let node = lab.node(n);
            Agent::start_with(
                &node.ns,
                &dir.0,
                PinDir::new(&format!("vxlan-{n}")),
                &["--external-ifaces", lb_lab::EXT_IF, "--node-name", &node.name],
            )
        })
        .collect();
    agents[0].wait_rows("both frontends", |rows| rows.len() == 2);
    let client = &lab.node(0).pod("cli-a").ns;
    for i in 0..20 {
        let tag = tcp_request(client, vip(80)).unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", agents[0].log_text()));
        assert_eq!(tag, "web-b");
        let (reply, peer) = udp_request(client, vip(53), &format!("q{i}")).unwrap_or_else(|e| panic!("query {i}: {e:#}"));
        assert_eq!(reply, format!("web-b:q{i}"));
        assert_eq!(peer, std::net::SocketAddr::V4(vip(53)));
    }
}

#[test]
fn a_clusterip_reaches_a_backend_on_another_node_with_xdp_off() {
    if !kernel_tests_enabled() {
        return;
    }
    // Plain routing between the nodes and no XDP program at all: the
    // replies are still translated, at the client pod's interface.
    let lab = ClusterLab::new(&[&["cli-a"], &["web-b"]]).unwrap();
    let web = lab.node(1).pod("web-b");
    let _tcp = tcp_server(&web.ns, SocketAddrV4::new(web.ip, 8080), "web-b").unwrap();
    let dir = ManifestDir::new("xdpoff");
    dir.write("tcp.yaml", &service_yaml("web", VIP, 80, "TCP", 8080, &[web.ip]));
    let agent = Agent::start_with(
        &lab.node(0).ns,
        &dir.0,
        PinDir::new("xdpoff"),
        &["--external-ifaces", lb_lab::EXT_IF, "--xdp-mode", "off", "--node-name", "node-a"],
    );
    agent.wait_rows("the frontend", |rows| rows.len() == 1 && rows[0].backends.len() == 1);
    for i in 0..10 {
        let tag = tcp_request(&lab.node(0).pod("cli-a").ns, vip(80)).unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", agent.log_text()));
        assert_eq!(tag, "web-b");
    }
}

fn nodeport_yaml(name: &str, port: u16, ip: std::net::Ipv4Addr, node: &str, cluster_ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: test}}
spec:
  type: NodePort
  clusterIP: {cluster_ip}
  ports: [{{name: p, port: 80, protocol: TCP, targetPort: p, nodePort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: test, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: p, port: 9000, protocol: TCP}}]
endpoints:
- {{addresses: [{ip}], conditions: {{ready: true}}, nodeName: {node}}}
"#
    )
}

#[test]
fn a_nodeport_download_crosses_a_hop_with_a_smaller_mtu() {
    if !kernel_tests_enabled() {
        return;
    }
    // The client sits behind a router whose link towards it has MTU 1400,
    // while the client's own link (and so the MSS it announces) is 1500:
    // the backend's full-size segments get "fragmentation needed" from the
    // router, sent to the NodePort address. Only if lb translates that
    // error back to the backend does the backend lower its path MTU; else
    // the download stalls. A local backend (DNAT only) and a remote one
    // (DNAT+SNAT through XDP) both.
    let opts = ClusterOptions { client_router_mtu: Some(1400), ..Default::default() };
    let lab = ClusterLab::with_options(&[&["web-a"], &["web-b"]], opts).unwrap();
    let (a, b) = (lab.node(0).pod("web-a"), lab.node(1).pod("web-b"));
    let servers = [bulk_server(&a.ns, SocketAddrV4::new(a.ip, 9000), 300_000), bulk_server(&b.ns, SocketAddrV4::new(b.ip, 9000), 300_000)];
    let dir = ManifestDir::new("pmtu");
    dir.write("local.yaml", &nodeport_yaml("local", 30100, a.ip, "node-a", "10.96.0.21"));
    dir.write("remote.yaml", &nodeport_yaml("remote", 30101, b.ip, "node-b", "10.96.0.22"));
    let agents: Vec<Agent> = (0..2)
        .map(|n| {
            let node = lab.node(n);
            Agent::start_with(
                &node.ns,
                &dir.0,
                PinDir::new(&format!("pmtu-{n}")),
                &["--external-ifaces", lb_lab::EXT_IF, "--node-name", &node.name],
            )
        })
        .collect();
    agents[0].wait_rows("both NodePorts", |rows| rows.iter().filter(|r| r.frontend.starts_with(&node_ip(0).to_string())).count() == 2);
    for port in [30100u16, 30101] {
        let to = SocketAddrV4::new(node_ip(0), port);
        let got = lab
            .client
            .run(move || -> std::io::Result<usize> {
                let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut buf = Vec::new();
                s.read_to_end(&mut buf)?;
                Ok(buf.len())
            })
            .unwrap_or_else(|e| {
                panic!("download through NodePort {port}: {e}\n{}", agents.iter().map(Agent::log_text).collect::<String>())
            });
        assert_eq!(got, 300_000, "the whole download through NodePort {port}");
    }
    // The router's "fragmentation needed" errors were what got through.
    let translated = agents[0].maps().stat(stat::ICMP_TRANSLATED).unwrap();
    assert!(translated >= 2, "ICMP errors translated on node A: {translated}");
    for (stop, h) in servers {
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
    }
}
