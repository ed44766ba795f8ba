//! BPF host routing (`lb-agent run --host-routing bpf`), with real
//! sockets on a strict lab node (`rp_filter=1`): a pod's TCP and UDP to a
//! ClusterIP reach a backend pod of the same node and get answers, both
//! directions redirected straight into the destination pod
//! (`bpf_redirect_peer`, counted as `redirected_peer`) and never seen by
//! the node's netfilter (nft counters in its forward chain stay at 0),
//! while legacy routing takes the host stack (the counters count). A
//! packet whose next hop has no neighbour entry yet takes the stack path,
//! and its flow still works. The FIB's answers are kept for a second
//! (`LB_NEXTHOPS`), yet a backend pod wired again (another interface, the
//! same address) is reached at once. IPv6 ClusterIPs are routed the same
//! way, and so is north-south traffic to a NodePort served by a pod of
//! the node (both families; the replies go straight out of the external
//! interface, and path MTU discovery works with an INVALID drop rule).

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    time::Duration,
};

use common::{
    Agent, ManifestDir, PinDir, bulk_server, cli, dual_stack_nodeport_yaml, dual_stack_yaml, ifindex_in, kernel_tests_enabled, wait_for,
};
use lb_common::stat;
use lb_lab::{
    CLIENT_IP, CLIENT_IP6, ClusterLab, Netns, NodeLab, Server, cluster_pod_ip6, node_ip, node_ip6, tcp_request, tcp_request_to, tcp_server,
    tcp_server_at, udp_echo, udp_echo_at, udp_request, udp_request_to, udp_request_with,
};

const VIP: &str = "10.96.0.20";

fn vip(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(VIP.parse().unwrap(), port)
}

/// A TCP (80 -> 8080) and a UDP (53 -> 5353) Service on one ClusterIP,
/// both served by `backend`.
fn services_yaml(backend: Ipv4Addr) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {VIP}
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: 8080}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: ["{backend}"]
  conditions: {{ready: true}}
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: dns, port: 5353, protocol: UDP}}
"#
    )
}

/// nft counters in the node's forward chain, one per direction between
/// the client and the backend pod: what the host stack routed.
struct ForwardCounters<'a> {
    node: &'a Netns,
}

impl<'a> ForwardCounters<'a> {
    fn install(node: &'a Netns, client: impl Into<IpAddr>, backend: impl Into<IpAddr>) -> ForwardCounters<'a> {
        let (client, backend) = (client.into(), backend.into());
        let ip = if client.is_ipv4() { "ip" } else { "ip6" };
        let rules = format!(
            "table inet lbtest {{\n\
             counter to_backend {{}}\n\
             counter to_client {{}}\n\
             chain forward {{\n\
             type filter hook forward priority 0; policy accept;\n\
             {ip} saddr {client} {ip} daddr {backend} counter name to_backend\n\
             {ip} saddr {backend} {ip} daddr {client} counter name to_client\n\
             }}\n\
             }}\n"
        );
        nft(node, &["-f", "-"], Some(&rules));
        ForwardCounters { node }
    }

    /// Packets routed by the host stack (client -> backend, backend ->
    /// client).
    fn read(&self) -> (u64, u64) {
        (self.packets("to_backend"), self.packets("to_client"))
    }

    fn packets(&self, name: &str) -> u64 {
        let out = nft(self.node, &["list", "counter", "inet", "lbtest", name], None);
        let after = out.split("packets ").nth(1).unwrap_or_else(|| panic!("no packet count in {out:?}"));
        after.split_whitespace().next().unwrap().parse().unwrap()
    }

    fn reset(&self) {
        nft(self.node, &["reset", "counters", "table", "inet", "lbtest"], None);
    }
}

fn nft(ns: &Netns, args: &[&str], stdin: Option<&str>) -> String {
    use std::{io::Write, process::Stdio};
    let mut cmd = ns.command("nft");
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("running nft");
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A strict node with a client pod and a backend pod (TCP server on 8080,
/// UDP echo on 5353), the agent serving the Services with `--host-routing
/// mode`, and nft counters in the node's forward chain.
struct Lab {
    lab: NodeLab,
    _servers: Vec<Server>,
    agent: Agent,
    _dir: ManifestDir,
}

impl Lab {
    fn start(mode: &str) -> Lab {
        let lab = NodeLab::new(&["client", "web"]).unwrap();
        assert_eq!(lab.node.sysctl_get("net.ipv4.conf.all.rp_filter").unwrap(), "1");
        let web = lab.pod("web");
        let servers = vec![
            tcp_server(&web.ns, SocketAddrV4::new(web.ip, 8080), "web").unwrap(),
            udp_echo(&web.ns, SocketAddrV4::new(web.ip, 5353), "web").unwrap(),
        ];
        let dir = ManifestDir::new(&format!("hr-{mode}"));
        dir.write("web.yaml", &services_yaml(web.ip));
        let agent = Agent::start_with(&lab.node, &dir.0, PinDir::new(&format!("hr-{mode}")), &["--host-routing", mode]);
        agent.wait_rows("both ports", |rows| rows.len() == 2 && rows.iter().all(|r| r.backends.len() == 1));
        Lab { lab, _servers: servers, agent, _dir: dir }
    }

    fn client(&self) -> &Netns {
        &self.lab.pod("client").ns
    }

    /// The host routing mode `lb-agent status` reports.
    fn status_host_routing(&self) -> String {
        cli(&self.agent.pins.0, &["status"])["host_routing"].as_str().unwrap_or_default().to_string()
    }

    /// [`ForwardCounters`] between the client and the backend pod.
    fn forward_counters(&self) -> ForwardCounters<'_> {
        ForwardCounters::install(&self.lab.node, self.lab.pod("client").ip, self.lab.pod("web").ip)
    }

    fn redirected(&self) -> u64 {
        self.agent.maps().stat(stat::REDIRECTED_PEER).unwrap()
    }

    /// `n` TCP requests and `n` UDP queries through the ClusterIP, each
    /// answered by the backend, from the address dialled.
    fn requests(&self, n: usize) {
        for i in 0..n {
            let tag = tcp_request(self.client(), vip(80)).unwrap_or_else(|e| panic!("TCP request {i}: {e:#}\n{}", self.agent.log_text()));
            assert_eq!(tag, "web");
            let (reply, peer) = udp_request(self.client(), vip(53), &format!("q{i}"))
                .unwrap_or_else(|e| panic!("UDP query {i}: {e:#}\n{}", self.agent.log_text()));
            assert_eq!(reply, format!("web:q{i}"));
            assert_eq!(peer, SocketAddr::V4(vip(53)), "the answer comes from the address dialled");
        }
    }

    /// Forgets the node's neighbour entries of both pods (their next
    /// packets find no neighbour: `bpf_fib_lookup` says NO_NEIGH).
    fn forget_neighbours(&self) {
        for pod in ["client", "web"] {
            let p = self.lab.pod(pod);
            // Absent already is as good.
            let _ = self.lab.node.ip(&["neigh", "del", &p.ip.to_string(), "dev", &p.host_if]);
        }
        let left = self.lab.node.ip_output(&["neigh", "show"]).unwrap();
        let valid = ["REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT"];
        for pod in ["client", "web"] {
            let ip = format!("{} ", self.lab.pod(pod).ip);
            let usable = left.lines().any(|l| l.starts_with(&ip) && valid.iter().any(|v| l.contains(v)));
            assert!(!usable, "{pod}'s neighbour entry is gone: {left}");
        }
    }
}

#[test]
fn bpf_host_routing_delivers_clusterip_traffic_past_the_host_stack() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = Lab::start("bpf");
    assert_eq!(lab.status_host_routing(), "bpf");
    let counters = lab.forward_counters();
    // The node learns both pods' MACs (the first packets may take the
    // stack path: no neighbour yet).
    lab.requests(1);
    counters.reset();
    let before = lab.redirected();
    lab.requests(10);
    assert_eq!(counters.read(), (0, 0), "no packet of these flows went through the node's netfilter");
    // Ten UDP queries and their answers alone are 20 packets, both
    // directions (the TCP flows add some 7 packets each).
    let redirected = lab.redirected() - before;
    assert!(redirected >= 20 + 10 * 6, "redirected_peer counted {redirected} packets\n{}", lab.agent.log_text());
}

#[test]
fn legacy_host_routing_goes_through_the_host_stack() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = Lab::start("legacy");
    assert_eq!(lab.status_host_routing(), "legacy");
    let counters = lab.forward_counters();
    lab.requests(10);
    let (to_backend, to_client) = counters.read();
    assert!(to_backend >= 10 && to_client >= 10, "the host stack routed both directions: {to_backend}, {to_client}");
    assert_eq!(lab.redirected(), 0);
}

#[test]
fn without_a_neighbour_entry_bpf_host_routing_falls_back_to_the_host_stack() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = Lab::start("bpf");
    let counters = lab.forward_counters();
    lab.requests(1);
    // Neither pod's neighbour is known: the query and its answer both take
    // the stack path (the answer translated back on the client's
    // interface, after routing, as without host routing), and the node
    // resolves both neighbours on the way.
    lab.forget_neighbours();
    // The FIB's answers the datapath keeps (`LB_NEXTHOPS`) still serve for
    // up to `NEXTHOP_TTL_NS` after their lookup; past it the FIB is asked,
    // and has no neighbour.
    std::thread::sleep(Duration::from_nanos(lb_common::NEXTHOP_TTL_NS) + Duration::from_millis(200));
    counters.reset();
    let before = lab.redirected();
    let (reply, peer) = udp_request(lab.client(), vip(53), "first").unwrap_or_else(|e| panic!("{e:#}\n{}", lab.agent.log_text()));
    assert_eq!((reply.as_str(), peer), ("web:first", SocketAddr::V4(vip(53))));
    assert_eq!(counters.read(), (1, 1), "both packets took the host stack");
    assert_eq!(lab.redirected(), before, "nothing was redirected");
    // The next ones are redirected again.
    counters.reset();
    lab.requests(3);
    assert_eq!(counters.read(), (0, 0));
    assert!(lab.redirected() - before >= 6);
}

#[test]
fn bpf_host_routing_reaches_a_backend_pod_wired_again_at_once() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = Lab::start("bpf");
    let counters = lab.forward_counters();
    // Warm: the node knows both neighbours, and the datapath keeps the
    // FIB's answers for the backend (its interface, its MAC).
    lab.requests(3);
    let before = lab.redirected();
    lab.requests(1);
    assert!(lab.redirected() > before, "redirected before the backend moved");
    let host_if = lab.lab.pod("web").host_if.clone();
    let old = ifindex_in(&lab.lab.node, &host_if).unwrap();
    lab.lab.rewire_pod("web").unwrap();
    let new = ifindex_in(&lab.lab.node, &host_if).unwrap();
    assert_ne!(old, new);
    wait_for("the new interface attached", Duration::from_secs(2), || lab.agent.tcx_attached(new).then_some(()));
    // Well within the kept answer's second: a query through the ClusterIP
    // is answered (the kept answer names an interface that is gone).
    let (reply, peer) = udp_request_with(lab.client(), vip(53), b"moved", Duration::from_millis(500))
        .unwrap_or_else(|e| panic!("the first query after the backend moved: {e:#}\n{}", lab.agent.log_text()));
    assert_eq!((reply.as_str(), peer), ("web:moved", SocketAddr::V4(vip(53))));
    // And the flows are redirected again, past the stack.
    lab.requests(1);
    counters.reset();
    let before = lab.redirected();
    lab.requests(3);
    assert_eq!(counters.read(), (0, 0), "no packet went through the node's netfilter");
    assert!(lab.redirected() - before >= 6);
}

#[test]
fn bpf_host_routing_delivers_ipv6_clusterip_traffic_past_the_host_stack() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["client", "web"]).unwrap();
    lab.enable_ipv6().unwrap();
    let web6 = lab.pod_ip6("web");
    let web_ns = &lab.pod("web").ns;
    let _servers = [
        tcp_server_at(web_ns, SocketAddrV6::new(web6, 8080, 0, 0).into(), "web").unwrap(),
        udp_echo_at(web_ns, SocketAddrV6::new(web6, 5353, 0, 0).into(), "web").unwrap(),
    ];
    let dir = ManifestDir::new("hr6");
    let pods = (&[lab.pod("web").ip][..], &[web6][..]);
    dir.write("web.yaml", &dual_stack_yaml("web", ("10.96.0.20", "fd00:96::14"), (80, "TCP", 8080), pods, false));
    dir.write("dns.yaml", &dual_stack_yaml("dns", ("10.96.0.53", "fd00:96::35"), (53, "UDP", 5353), pods, false));
    let agent = Agent::start_with(&lab.node, &dir.0, PinDir::new("hr6"), &["--host-routing", "bpf"]);
    agent.wait_rows("both families' frontends", |rows| rows.len() == 4);
    let web: SocketAddr = (Ipv6Addr::from([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x14]), 80).into();
    let dns: SocketAddr = (Ipv6Addr::from([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x35]), 53).into();
    let client = &lab.pod("client").ns;
    let timeout = Duration::from_secs(2);
    let requests = |n: usize| {
        for i in 0..n {
            let tag =
                tcp_request_to(client, web, b"hello\n", timeout).unwrap_or_else(|e| panic!("TCP request {i}: {e:#}\n{}", agent.log_text()));
            assert_eq!(tag, "web");
            let (reply, peer) = udp_request_to(client, dns, format!("q{i}").as_bytes(), timeout)
                .unwrap_or_else(|e| panic!("UDP query {i}: {e:#}\n{}", agent.log_text()));
            assert_eq!((reply, peer), (format!("web:q{i}"), dns), "answered from the address dialled");
        }
    };
    let counters = ForwardCounters::install(&lab.node, lab.pod_ip6("client"), web6);
    let redirected = || agent.maps().stat(stat::REDIRECTED_PEER).unwrap();
    // The node learns both pods' neighbours (the first packets may take
    // the stack path).
    requests(1);
    counters.reset();
    let before = redirected();
    requests(10);
    assert_eq!(counters.read(), (0, 0), "no packet of these flows went through the node's netfilter");
    let n = redirected() - before;
    assert!(n >= 20 + 10 * 6, "redirected_peer counted {n} packets\n{}", agent.log_text());
}

/// A dual-stack NodePort Service: TCP 80 -> 8080 (NodePort 30080) and
/// UDP 53 -> 5353 (NodePort 30053), served by `pod` (IPv4 and IPv6
/// addresses) on node `node`.
fn nodeport_yaml(pod: (Ipv4Addr, Ipv6Addr), node: &str) -> String {
    dual_stack_nodeport_yaml("Cluster", &[("http", 80, "TCP", 8080, 30080), ("dns", 53, "UDP", 5353, 30053)], pod, node)
}

/// North-south over `family` (4 or 6): the external client's TCP and UDP
/// to a NodePort whose endpoint is a pod of the node. With `--host-routing
/// bpf` the packets `lb_xdp` DNATed (marked in their XDP metadata) go from
/// the external interface's ingress (`lb_tc_ext_ingress`) straight into
/// the pod, and the pod's replies, translated back at its interface,
/// straight out of the external interface (`redirected_out`): the node's
/// netfilter sees neither direction. With legacy routing the same counters
/// count both (the test's own check that they would see the stack path).
/// With bpf, the client's request to the pod by its own address (no
/// Service) still goes through the stack, redirected by nothing: on a
/// kernel without XDP metadata `lb_tc_ext_ingress` looks every packet up,
/// and must let those through.
/// Without `lb_tc_ext_ingress` on the external interface (the agent
/// changed to leave it out) the bpf run fails with (60, 60): the replies
/// then take the stack path as well. An agent started again in legacy
/// mode on the same pins removes `lb_tc_ext_ingress`.
///
/// `xdp` is the agent's `--xdp-mode`: with `tc` the north-south path runs
/// in `lb_tc_ns` on the external interface's ingress, which hands the
/// DNATed packet to its own host routing program (`lb_tc_ns_local`), and
/// stays there in legacy mode.
fn north_south(family: u8, xdp: &str) {
    for mode in ["legacy", "bpf"] {
        let lab = ClusterLab::new(&[&["web"]]).unwrap();
        lab.enable_ipv6().unwrap();
        let node = lab.node(0);
        let web = node.pod("web");
        let web6 = cluster_pod_ip6(0, 0);
        let (backend, node_addr, client): (IpAddr, IpAddr, IpAddr) = if family == 4 {
            (web.ip.into(), node_ip(0).into(), CLIENT_IP.into())
        } else {
            (web6.into(), node_ip6(0).into(), CLIENT_IP6.into())
        };
        let _servers = [
            tcp_server_at(&web.ns, SocketAddr::new(backend, 8080), "web").unwrap(),
            udp_echo_at(&web.ns, SocketAddr::new(backend, 5353), "web").unwrap(),
        ];
        let tag = format!("hr-ns{family}-{mode}-{xdp}");
        let dir = ManifestDir::new(&tag);
        dir.write("web.yaml", &nodeport_yaml((web.ip, web6), &node.name));
        let args = [
            "--external-ifaces",
            lb_lab::EXT_IF,
            "--node-name",
            &node.name,
            "--health-addr",
            "off",
            "--host-routing",
            mode,
            "--xdp-mode",
            xdp,
        ];
        let agent = Agent::start_with(&node.ns, &dir.0, PinDir::new(&tag), &args);
        let (http, dns) = (SocketAddr::new(node_addr, 30080), SocketAddr::new(node_addr, 30053));
        let served = [format!("{http}/TCP"), format!("{dns}/UDP")];
        agent.wait_rows("the NodePorts", |rows| served.iter().all(|f| rows.iter().any(|r| &r.frontend == f && r.backends.len() == 1)));
        let timeout = Duration::from_secs(2);
        let requests = |n: usize| {
            for i in 0..n {
                let tag = tcp_request_to(&lab.client, http, b"hello\n", timeout)
                    .unwrap_or_else(|e| panic!("{mode}: TCP request {i}: {e:#}\n{}", agent.log_text()));
                assert_eq!(tag, "web");
                let (reply, peer) = udp_request_to(&lab.client, dns, format!("q{i}").as_bytes(), timeout)
                    .unwrap_or_else(|e| panic!("{mode}: UDP query {i}: {e:#}\n{}", agent.log_text()));
                assert_eq!((reply, peer), (format!("web:q{i}"), dns), "{mode}: answered from the address dialled");
            }
        };
        let counters = ForwardCounters::install(&node.ns, client, backend);
        let stat = |i| agent.maps().stat(i).unwrap();
        // The node learns the pod's and the client's neighbours (the first
        // packets may take the stack path).
        requests(1);
        counters.reset();
        let before = (stat(stat::REDIRECTED_PEER), stat(stat::REDIRECTED_OUT));
        requests(10);
        let (into_pod, out) = (stat(stat::REDIRECTED_PEER) - before.0, stat(stat::REDIRECTED_OUT) - before.1);
        let (to_backend, to_client) = counters.read();
        if mode == "legacy" {
            assert!(to_backend >= 10 && to_client >= 10, "the host stack routed both directions: {to_backend}, {to_client}");
            assert_eq!((into_pod, out), (0, 0));
        } else {
            assert_eq!((to_backend, to_client), (0, 0), "no packet of these flows went through the node's netfilter\n{}", agent.log_text());
            // Ten UDP queries alone are 10 packets each way (the TCP
            // flows add some 3 or 4 each way).
            assert!(into_pod >= 10 + 10 * 3 && out >= 10 + 10 * 3, "redirected into the pod {into_pod}, out {out}\n{}", agent.log_text());
            // The client to the pod by its own address, no Service:
            // `lb_tc_ext_ingress` leaves it to the host stack (no mark; on
            // a kernel without XDP metadata, whose packets it all looks
            // up, no conntrack entry), which routes it.
            let (via, host_len) = if family == 4 { (node_ip(0).to_string(), 32) } else { (node_ip6(0).to_string(), 128) };
            lab.client.ip(&["route", "replace", &format!("{backend}/{host_len}"), "via", &via]).unwrap();
            counters.reset();
            let peer = stat(stat::REDIRECTED_PEER);
            let tag = tcp_request_to(&lab.client, SocketAddr::new(backend, 8080), b"hello\n", timeout)
                .unwrap_or_else(|e| panic!("straight to the pod: {e:#}\n{}", agent.log_text()));
            assert_eq!(tag, "web");
            assert!(counters.read().0 > 0, "straight to the pod: the host stack routed it");
            assert_eq!(stat(stat::REDIRECTED_PEER), peer, "straight to the pod: nothing redirected");
            // Started again in legacy mode on the same pins, the agent
            // removes `lb_tc_ext_ingress` from the external interface (an
            // earlier agent's link it does not adopt), and the stack path
            // serves.
            let ext = ifindex_in(&node.ns, lb_lab::EXT_IF).unwrap();
            let ext_ingress = || node.ns.run(move || lb_agent::links::query_tcx(ext, true).unwrap_or_default());
            assert_eq!(ext_ingress().len(), 1, "lb_tc_ext_ingress (or lb_tc_ns) on {}", lb_lab::EXT_IF);
            let pins = agent.stop_keeping_pins(libc::SIGTERM);
            let legacy = ["--external-ifaces", lb_lab::EXT_IF, "--node-name", &node.name, "--health-addr", "off", "--xdp-mode", xdp];
            let agent = Agent::start_with(&node.ns, &dir.0, pins, &legacy);
            agent.wait_rows("the NodePorts", |rows| served.iter().all(|f| rows.iter().any(|r| &r.frontend == f && r.backends.len() == 1)));
            // (The pinned maps list the NodePorts before the new agent has
            // even loaded: its configuration, without host routing, says
            // it runs. `lb_tc_ns` is the north-south path itself in tc
            // mode, and stays.)
            let legacy_config = || agent.maps().read_config().ok().filter(|c| c.flags & lb_common::config_flags::HOST_ROUTING_BPF == 0);
            wait_for("the legacy agent's configuration", Duration::from_secs(10), legacy_config);
            let left = if xdp == "tc" { 1 } else { 0 };
            wait_for("lb_tc_ext_ingress to be removed", Duration::from_secs(10), || (ext_ingress().len() == left).then_some(()));
            counters.reset();
            let tag = tcp_request_to(&lab.client, http, b"hello\n", timeout)
                .unwrap_or_else(|e| panic!("legacy again: {e:#}\n{}", agent.log_text()));
            assert_eq!(tag, "web");
            assert!(counters.read().0 > 0, "legacy again: the host stack routes");
        }
    }
}

#[test]
fn bpf_host_routing_delivers_nodeport_traffic_to_a_pod_of_the_node_past_the_host_stack() {
    if !kernel_tests_enabled() {
        return;
    }
    north_south(4, "auto");
}

#[test]
fn bpf_host_routing_delivers_ipv6_nodeport_traffic_to_a_pod_of_the_node_past_the_host_stack() {
    if !kernel_tests_enabled() {
        return;
    }
    north_south(6, "auto");
}

#[test]
fn bpf_host_routing_delivers_nodeport_traffic_from_the_tc_north_south_path() {
    if !kernel_tests_enabled() {
        return;
    }
    north_south(4, "tc");
}

#[test]
fn bpf_host_routing_delivers_ipv6_nodeport_traffic_from_the_tc_north_south_path() {
    if !kernel_tests_enabled() {
        return;
    }
    north_south(6, "tc");
}

/// Path MTU discovery through a host-routed NodePort, over `family` (4
/// or 6): the client sits behind a router whose link towards it has MTU
/// 1400, the node's forward chain drops `ct state invalid` (as CNIs and
/// node firewalls do), and a pod of the node sends 300 kB through the
/// NodePort with BPF host routing. The router's "fragmentation needed"
/// (IPv6: "packet too big") about the pod's replies reaches the pod past
/// the host stack (`lb_xdp` translates it and marks it,
/// `lb_tc_ext_ingress` sends it in): through the stack it would be
/// INVALID, the host's conntrack never having seen the flow, and the
/// download would stall. (On the object before that change it did, over
/// IPv4: the read timed out.)
///
/// `xdp` is the agent's `--xdp-mode` (`tc`: `lb_tc_ns` translates the
/// error and `lb_tc_ns_local_icmp` sends it in).
fn path_mtu_discovery(family: u8, xdp: &str) {
    let opts = lb_lab::ClusterOptions { client_router_mtu: Some(1400), ..Default::default() };
    let lab = ClusterLab::with_options(&[&["web"]], opts).unwrap();
    lab.enable_ipv6().unwrap();
    let node = lab.node(0);
    let web = node.pod("web");
    let web6 = cluster_pod_ip6(0, 0);
    let (backend, node_addr, router, client): (IpAddr, IpAddr, IpAddr, IpAddr) = if family == 4 {
        (web.ip.into(), node_ip(0).into(), lb_lab::ROUTER_IP.into(), lab.client_ip().into())
    } else {
        (web6.into(), node_ip6(0).into(), lb_lab::ROUTER_IP6.into(), lab.client_ip6().into())
    };
    let (stop, server) = bulk_server(&web.ns, SocketAddr::new(backend, 8080), 300_000);
    let tag = format!("hr-pmtu{family}-{xdp}");
    let dir = ManifestDir::new(&tag);
    dir.write("web.yaml", &nodeport_yaml((web.ip, web6), &node.name));
    nft(
        &node.ns,
        &["-f", "-"],
        Some(
            "table inet lbinvalid {\nchain forward {\ntype filter hook forward priority 0; policy accept;\nct state invalid counter drop\n}\n}\n",
        ),
    );
    let args = [
        "--external-ifaces",
        lb_lab::EXT_IF,
        "--node-name",
        &node.name,
        "--health-addr",
        "off",
        "--host-routing",
        "bpf",
        "--xdp-mode",
        xdp,
    ];
    let agent = Agent::start_with(&node.ns, &dir.0, PinDir::new(&tag), &args);
    let http = SocketAddr::new(node_addr, 30080);
    agent.wait_rows("the NodePort", |rows| rows.iter().any(|r| r.frontend == format!("{http}/TCP") && r.backends.len() == 1));
    // The node's neighbours towards the pod and the client's router, so
    // that the flow's first packets are redirected too: through the stack
    // they would give the host's conntrack an entry, and the error would
    // be RELATED to it.
    for to in [backend, client] {
        node.ns
            .run(move || -> std::io::Result<()> {
                let s = std::net::UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
                s.send_to(b"hello", (to, 9))?;
                Ok(())
            })
            .unwrap();
    }
    wait_for("the node's neighbour entries", Duration::from_secs(5), || {
        let neigh = node.ns.ip_output(&["neigh", "show"]).ok()?;
        let resolved =
            |ip: &IpAddr| neigh.lines().any(|l| l.starts_with(&format!("{ip} ")) && (l.contains("REACHABLE") || l.contains("STALE")));
        (resolved(&backend) && resolved(&router)).then_some(())
    });
    let got = lab
        .client
        .run(move || -> std::io::Result<usize> {
            let mut s = std::net::TcpStream::connect_timeout(&http, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut s, &mut buf)?;
            Ok(buf.len())
        })
        .unwrap_or_else(|e| panic!("download through the NodePort: {e}\n{}", agent.log_text()));
    assert_eq!(got, 300_000, "the whole download");
    let stat = |i| agent.maps().stat(i).unwrap();
    assert!(stat(stat::ICMP_TRANSLATED) >= 1, "the router's errors were translated");
    // (Counted per skb: the pod's TCP sends GSO packets of many segments.)
    assert!(stat(stat::REDIRECTED_OUT) >= 5, "the download went out past the host stack: {}", stat(stat::REDIRECTED_OUT));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    server.join().unwrap();
}

#[test]
fn path_mtu_discovery_works_through_a_host_routed_nodeport() {
    if !kernel_tests_enabled() {
        return;
    }
    path_mtu_discovery(4, "auto");
}

#[test]
fn path_mtu_discovery_works_through_a_host_routed_ipv6_nodeport() {
    if !kernel_tests_enabled() {
        return;
    }
    path_mtu_discovery(6, "auto");
}

#[test]
fn path_mtu_discovery_works_through_a_host_routed_nodeport_on_the_tc_path() {
    if !kernel_tests_enabled() {
        return;
    }
    path_mtu_discovery(4, "tc");
}

#[test]
fn path_mtu_discovery_works_through_a_host_routed_ipv6_nodeport_on_the_tc_path() {
    if !kernel_tests_enabled() {
        return;
    }
    path_mtu_discovery(6, "tc");
}
