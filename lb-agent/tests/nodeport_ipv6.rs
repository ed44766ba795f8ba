//! IPv6 north-south traffic through the real datapath: an agent with XDP
//! (generic, as on any veth node) on the external interface of a
//! dual-stack lab node, an external IPv6 client on the shared segment,
//! real sockets. The Service is a dual-stack manifest in the agent's
//! directory; the agent finds the node's IPv6 addresses on the interface
//! (NodePorts on them, and the first as the IPv6 SNAT address).

mod common;

use std::{
    net::{SocketAddr, SocketAddrV6},
    time::Duration,
};

use common::{Agent, ManifestDir, PinDir, WhoAmI, dual_stack_nodeport_yaml, http_status, kernel_tests_enabled, wait_for};
use lb_common::stat;
use lb_lab::{CLIENT_IP6, ClusterLab, cluster_pod_ip, cluster_pod_ip6, node_ip6, tcp_request_to, tcp_server_at};

const TIMEOUT: Duration = Duration::from_secs(2);

/// A dual-stack NodePort Service `web` (ports 80 -> 8080, NodePort 30080,
/// and 90 -> 9000, NodePort 30090) with one endpoint, web-a on node-a,
/// with the given `externalTrafficPolicy`.
fn manifest(policy: &str) -> String {
    manifest_on(policy, 0)
}

/// [`manifest`] with the endpoint the first pod of node `n` (`node-a`,
/// `node-b`, ...).
fn manifest_on(policy: &str, n: usize) -> String {
    let node = format!("node-{}", (b'a' + n as u8) as char);
    let ports = [("http", 80, "TCP", 8080, 30080), ("who", 90, "TCP", 9000, 30090)];
    dual_stack_nodeport_yaml(policy, &ports, (cluster_pod_ip(n, 0), cluster_pod_ip6(n, 0)), &node)
}

/// The agent on node A as these labs run it: XDP (generic) on the
/// external interface, the Services of `dir`.
fn agent_on_node_a(lab: &ClusterLab, dir: &ManifestDir, tag: &str) -> Agent {
    agent_on_node_a_in(lab, dir, tag, "generic")
}

/// [`agent_on_node_a`] with `--xdp-mode xdp`.
fn agent_on_node_a_in(lab: &ClusterLab, dir: &ManifestDir, tag: &str, xdp: &str) -> Agent {
    agent_on_node_a_with(lab, dir, tag, &["--xdp-mode", xdp])
}

/// The agent on node A with the Services of `dir` and `extra` flags after
/// the lab's own (`--external-ifaces`, the node's name, no health server).
fn agent_on_node_a_with(lab: &ClusterLab, dir: &ManifestDir, tag: &str, extra: &[&str]) -> Agent {
    let node = lab.node(0);
    let mut args = vec!["--external-ifaces", lb_lab::EXT_IF, "--node-name", &node.name, "--health-addr", "off"];
    args.extend_from_slice(extra);
    Agent::start_with(&node.ns, &dir.0, PinDir::new(tag), &args)
}

/// A dual-stack lab of one node whose pod web-a serves its name on
/// 8080 of its IPv6 address, and a manifest directory `tag` with
/// [`manifest`] (`Cluster`).
fn web_a_lab(tag: &str) -> (ClusterLab, lb_lab::Server, ManifestDir) {
    let lab = ClusterLab::new(&[&["web-a"]]).unwrap();
    lab.enable_ipv6().unwrap();
    let web = lab.node(0).pod("web-a");
    let server = tcp_server_at(&web.ns, SocketAddrV6::new(cluster_pod_ip6(0, 0), 8080, 0, 0).into(), "web-a").unwrap();
    let dir = ManifestDir::new(tag);
    dir.write("svc.yaml", &manifest("Cluster"));
    (lab, server, dir)
}

/// A dual-stack lab with `pods` per node, the `web` Service of
/// [`manifest_on`] (`policy`) whose endpoint is the first pod of node
/// `n`, serving its name on 8080 and [`WhoAmI`] on 9000, and the agent on
/// node A once it serves node A's IPv6 NodePort.
struct NodePort6 {
    lab: ClusterLab,
    agent: Agent,
    _dir: ManifestDir,
    _server: lb_lab::Server,
    _who: WhoAmI,
}

impl NodePort6 {
    fn start(pods: &[&[&str]], n: usize, policy: &str, tag: &str) -> NodePort6 {
        Self::start_in(pods, n, policy, tag, "generic")
    }

    /// [`NodePort6::start`] with the agent's `--xdp-mode xdp`.
    fn start_in(pods: &[&[&str]], n: usize, policy: &str, tag: &str, xdp: &str) -> NodePort6 {
        let lab = ClusterLab::new(pods).unwrap();
        lab.enable_ipv6().unwrap();
        let web = lab.node(n).pod(pods[n][0]);
        let be6 = cluster_pod_ip6(n, 0);
        let server = tcp_server_at(&web.ns, SocketAddrV6::new(be6, 8080, 0, 0).into(), pods[n][0]).unwrap();
        let who = WhoAmI::start(&web.ns, SocketAddrV6::new(be6, 9000, 0, 0));
        let dir = ManifestDir::new(tag);
        dir.write("svc.yaml", &manifest_on(policy, n));
        let agent = agent_on_node_a_in(&lab, &dir, tag, xdp);
        let np = format!("[{}]:30080/TCP", node_ip6(0));
        agent.wait_rows(&format!("{np} with its backend"), |rows| rows.iter().any(|r| r.frontend == np && r.backends.len() == 1));
        NodePort6 { lab, agent, _dir: dir, _server: server, _who: who }
    }

    /// `n` TCP requests from the external client to node A's IPv6
    /// NodePort, each answered by `backend`.
    fn requests(&self, n: usize, backend: &str) {
        let to = SocketAddr::new(node_ip6(0).into(), 30080);
        for i in 0..n {
            let answer = tcp_request_to(&self.lab.client, to, b"hello\n", TIMEOUT)
                .unwrap_or_else(|e| panic!("request {i} to {to}: {e:#}\n{}", self.agent.log_text()));
            assert_eq!(answer, backend);
        }
    }

    /// The source address the backend sees for the external client's
    /// connection through node A's NodePort 30090.
    fn peer_seen(&self) -> std::net::IpAddr {
        let who = SocketAddr::new(node_ip6(0).into(), 30090);
        let peer =
            tcp_request_to(&self.lab.client, who, b"who\n", TIMEOUT).unwrap_or_else(|e| panic!("{who}: {e:#}\n{}", self.agent.log_text()));
        peer.trim().parse::<SocketAddr>().unwrap_or_else(|e| panic!("{peer:?}: {e}")).ip()
    }
}

#[test]
fn ipv6_nodeports_follow_an_address_added_to_and_removed_from_the_node() {
    if !kernel_tests_enabled() {
        return;
    }
    let np = NodePort6::start(&[&["web-a"]], 0, "Cluster", "addr6");
    // A second IPv6 address on node A's external interface, on the
    // client's segment, while the agent runs: nothing listens there, so
    // only the agent's new frontend answers.
    let extra: std::net::Ipv6Addr = "fd00:50::11".parse().unwrap();
    let node_a = &np.lab.node(0).ns;
    node_a.ip(&["-6", "addr", "add", &format!("{extra}/64"), "dev", lb_lab::EXT_IF, "nodad"]).unwrap();
    let to = SocketAddr::new(extra.into(), 30080);
    let fe = format!("[{extra}]:30080/TCP");
    np.agent.wait_rows(&fe, |rows| rows.iter().any(|r| r.frontend == fe && r.backends.len() == 1));
    for i in 0..5 {
        let answer = tcp_request_to(&np.lab.client, to, b"hello\n", TIMEOUT)
            .unwrap_or_else(|e| panic!("request {i} to {to}: {e:#}\n{}", np.agent.log_text()));
        assert_eq!(answer, "web-a");
    }
    // Removed: the frontend goes with it.
    node_a.ip(&["-6", "addr", "del", &format!("{extra}/64"), "dev", lb_lab::EXT_IF]).unwrap();
    np.agent.wait_rows(&format!("{fe} gone"), |rows| !rows.iter().any(|r| r.frontend == fe));
}

fn ipv6_nodeport(policy: &str, tag: &str) {
    // An external IPv6 client to the node's IPv6 NodePort: a local backend
    // answers (DNAT in XDP, the reply translated back in tc).
    let np = NodePort6::start(&[&["web-a"]], 0, policy, tag);
    np.requests(5, "web-a");
    // The backend sees the client's own IPv6 address (no SNAT).
    let peer = np.peer_seen();
    assert_eq!(peer, std::net::IpAddr::V6(CLIENT_IP6), "the backend saw {peer}, not the client");

    // Translated by lb's XDP program (not by the kernel): IPv6 flows in
    // the conntrack, and no tail call failed.
    let maps = np.agent.maps();
    let flows = maps.v6.ct_tcp.entries().unwrap();
    assert!(flows.len() >= 2 * 6, "IPv6 TCP conntrack: {}", flows.len());
    assert_eq!(maps.stat(stat::TAIL_CALL_FAILED).unwrap(), 0);
    // `lb-agent list` counts them (its last line: "..., N IPv6 (of M)").
    let text = lb_agent::list::render(&maps).unwrap();
    let footer = text.lines().last().unwrap_or_default();
    let ipv6 = footer.rsplit_once(", ").and_then(|(_, t)| t.strip_suffix(')')?.split_once(" IPv6 (of ")).map(|(n, _)| n.parse::<usize>());
    assert!(matches!(ipv6, Some(Ok(n)) if n >= flows.len()), "{footer}");
}

/// `--nodeport-addresses` with an IPv4 CIDR only: the IPv4 NodePort is on
/// the address it picks, and the IPv6 NodePort stays on the node's IPv6
/// address, as kube-proxy's (`::/0` for a family the flag has no CIDR
/// of). (Before, such a flag left the node without IPv6 NodePorts: the
/// external IPv6 client was refused.)
#[test]
fn nodeport_addresses_of_one_family_leave_the_other_family_served() {
    if !kernel_tests_enabled() {
        return;
    }
    let (lab, _server, dir) = web_a_lab("np6-addrs");
    let v4_only = format!("{}/32", lb_lab::node_ip(0));
    let agent = agent_on_node_a_with(&lab, &dir, "np6-addrs", &["--xdp-mode", "generic", "--nodeport-addresses", &v4_only]);
    let (np4, np6) = (format!("{}:30080/TCP", lb_lab::node_ip(0)), format!("[{}]:30080/TCP", node_ip6(0)));
    agent.wait_rows("the NodePorts of both families", |rows| {
        [&np4, &np6].iter().all(|fe| rows.iter().any(|r| &r.frontend == *fe && r.backends.len() == 1))
    });
    let to = SocketAddr::new(node_ip6(0).into(), 30080);
    let answer = tcp_request_to(&lab.client, to, b"hello\n", TIMEOUT).unwrap_or_else(|e| panic!("{to}: {e:#}\n{}", agent.log_text()));
    assert_eq!(answer, "web-a");
}

/// An IPv6-only node: its external interface is the one of its IPv6
/// default route. With no --external-ifaces the agent finds it, as it
/// finds IPv4's (and as Cilium's device detection does), and serves the
/// IPv6 NodePort from outside. (Only IPv4 default routes counted before:
/// such a node had no external interface, so no IPv6 node address and no
/// NodePort at all; the client was refused.)
#[test]
fn an_ipv6_default_route_names_the_external_interface() {
    if !kernel_tests_enabled() {
        return;
    }
    let (lab, _server, dir) = web_a_lab("np6-route");
    let node = lab.node(0);
    // The lab's nodes have no default route of either family; this one
    // gets an IPv6 one, to the client on the shared segment.
    node.ns.ip(&["-6", "route", "add", "default", "via", &CLIENT_IP6.to_string(), "dev", lb_lab::EXT_IF]).unwrap();
    let args = ["--node-name", &node.name, "--health-addr", "off", "--xdp-mode", "generic"];
    let agent = Agent::start_with(&node.ns, &dir.0, PinDir::new("np6-route"), &args);
    let np = format!("[{}]:30080/TCP", node_ip6(0));
    agent.wait_rows(&format!("{np} with its backend"), |rows| rows.iter().any(|r| r.frontend == np && r.backends.len() == 1));
    let header = lb_agent::list::north_south(&agent.maps()).unwrap().expect("north-south header");
    assert!(header.contains(&format!("XDP generic on {}", lb_lab::EXT_IF)), "{header}");
    let to = SocketAddr::new(node_ip6(0).into(), 30080);
    for i in 0..3 {
        let answer = tcp_request_to(&lab.client, to, b"hello\n", TIMEOUT)
            .unwrap_or_else(|e| panic!("request {i} to {to}: {e:#}\n{}", agent.log_text()));
        assert_eq!(answer, "web-a");
    }
}

#[test]
fn an_external_ipv6_client_reaches_a_local_backend_through_the_nodes_ipv6_nodeport() {
    if !kernel_tests_enabled() {
        return;
    }
    ipv6_nodeport("Cluster", "np6-cluster");
}

#[test]
fn local_policy_over_ipv6_keeps_the_client_address() {
    if !kernel_tests_enabled() {
        return;
    }
    ipv6_nodeport("Local", "np6-local");
}

/// A dual-stack LoadBalancer Service with `externalTrafficPolicy: Local`:
/// its health check NodePort answers the load balancer's probes over both
/// families, as kube-proxy's does (Go binds the wildcard dual-stack). A
/// dual-stack cloud load balancer probes each node's IPv6 address for its
/// IPv6 frontend; a port that refuses IPv6 takes every node out of it.
/// Node A has the endpoint (200); once the endpoint moves to node B, node
/// A answers 503 over both, and drops its IPv6 NodePort's traffic.
#[test]
fn a_health_check_nodeport_answers_over_ipv6_and_ipv4() {
    if !kernel_tests_enabled() {
        return;
    }
    const HC_PORT: u16 = 32000;
    let lab = ClusterLab::new(&[&["web-a"], &["web-b"]]).unwrap();
    lab.enable_ipv6().unwrap();
    let lb = |n: usize| {
        manifest_on("Local", n).replace("  type: NodePort\n", &format!("  type: LoadBalancer\n  healthCheckNodePort: {HC_PORT}\n"))
    };
    let dir = ManifestDir::new("np6-health");
    dir.write("svc.yaml", &lb(0));
    let agent = agent_on_node_a(&lab, &dir, "np6-health");
    let np = format!("[{}]:30080/TCP", node_ip6(0));
    agent.wait_rows(&format!("{np} with its backend"), |rows| rows.iter().any(|r| r.frontend == np && r.backends.len() == 1));
    let v6 = SocketAddr::new(node_ip6(0).into(), HC_PORT);
    let v4 = SocketAddr::new(lb_lab::node_ip(0).into(), HC_PORT);
    for to in [v6, v4] {
        let (code, body) = http_status(&lab.client, to);
        assert_eq!(code, 200, "{to}: {body}\n{}", agent.log_text());
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{to}: {e}: {body}"));
        assert_eq!(v["localEndpoints"], 1, "{to}: {body}");
        assert_eq!(v["service"]["name"], "web", "{to}: {body}");
    }
    // The endpoint is on node B now: node A fails the check over both.
    dir.write("svc.yaml", &lb(1));
    agent.wait_rows(&format!("{np} without a local backend"), |rows| rows.iter().any(|r| r.frontend == np && r.backends.is_empty()));
    for to in [v6, v4] {
        // (The check's count follows the same sync as the maps: wait for it.)
        let (code, body) = wait_for(&format!("503 from {to}"), Duration::from_secs(10), || {
            let (code, body) = http_status(&lab.client, to);
            (code == 503).then_some((code, body))
        });
        assert!(body.contains("\"localEndpoints\": 0"), "{to}: {code} {body}");
    }
    // And its IPv6 NodePort drops (no answer at all, as kube-proxy's Local
    // policy on a node without endpoints): the connection times out.
    let np_to = SocketAddr::new(node_ip6(0).into(), 30080);
    let err = tcp_request_to(&lab.client, np_to, b"x", Duration::from_millis(700)).expect_err("node A must not answer");
    assert_eq!(lb_lab::io_error_kind(&err), Some(std::io::ErrorKind::TimedOut), "{err:#}");
}

/// NAT66: an external IPv6 client reaches a backend on node B through node
/// A's IPv6 NodePort. Node A's XDP program DNATs the flow to the backend
/// and SNATs it to node A's IPv6 address and a port of the SNAT range,
/// forwards it to node B, and reverses the replies; the backend sees node
/// A's address. (Before NAT66 such a flow passed untranslated to node A's
/// stack, where nothing listens on the NodePort: refused.)
#[test]
fn an_external_ipv6_client_reaches_a_backend_on_another_node_through_nat66() {
    if !kernel_tests_enabled() {
        return;
    }
    nat66("generic");
}

/// The same with `--xdp-mode tc`: NAT66 in `lb_tc_ns6_nat`, the packets
/// redirected out of the external interface.
#[test]
fn an_external_ipv6_client_reaches_a_backend_on_another_node_through_nat66_on_the_tc_path() {
    if !kernel_tests_enabled() {
        return;
    }
    nat66("tc");
}

fn nat66(xdp: &str) {
    let np = NodePort6::start_in(&[&["cli-a"], &["web-b"]], 1, "Cluster", &format!("np6-nat66-{xdp}"), xdp);
    np.requests(5, "web-b");
    // The backend sees node A's IPv6 address (SNAT), not the client's.
    let peer = np.peer_seen();
    assert_eq!(peer, std::net::IpAddr::V6(node_ip6(0)), "the backend saw {peer}, not node A");

    // Translated by lb's XDP programs: SNATed IPv6 flows in the
    // conntrack, no tail call failed, none passed for want of NAT66.
    let maps = np.agent.maps();
    let node_a = lb_common::addr6(node_ip6(0));
    let flows = maps.v6.ct_tcp.entries().unwrap();
    let snated = flows.iter().filter(|(k, e)| k.dir == lb_common::CT_SERVICE && e.nat_saddr == node_a).count();
    assert!(snated >= 6, "SNATed IPv6 flows: {snated} of {}", flows.len());
    assert_eq!(maps.stat(stat::TAIL_CALL_FAILED).unwrap(), 0);
    assert_eq!(maps.stat(stat::PASS_NO_NAT66).unwrap(), 0);
    let header = lb_agent::list::north_south(&maps).unwrap().expect("north-south header");
    assert!(header.contains(&format!("SNAT6 {}", node_ip6(0))), "{header}");
}

/// One node with web-a, both families, and the client routing the IPv6
/// LoadBalancer prefix fd00:60::/64 to node A; the LB IP.
fn lb_ip_lab() -> (ClusterLab, &'static str) {
    let lab = ClusterLab::new(&[&["web-a"]]).unwrap();
    lab.enable_ipv6().unwrap();
    lab.client.ip(&["-6", "route", "add", "fd00:60::/64", "via", &node_ip6(0).to_string(), "dev", lb_lab::CLIENT_IF]).unwrap();
    (lab, "fd00:60::10")
}

/// An IPv6 external IP (`spec.externalIPs`), routed to node A: the
/// external client reaches the local backend through it, and the backend
/// sees the client's own address (the Service's `Local` policy: no SNAT).
/// IPv4's counterpart: `external_ip_and_load_balancer_ip_reach_backends_on_both_nodes`.
#[test]
fn an_ipv6_external_ip_reaches_the_backend() {
    if !kernel_tests_enabled() {
        return;
    }
    let (lab, _) = lb_ip_lab();
    let external = "fd00:60::20";
    let web = lab.node(0).pod("web-a");
    let be6 = cluster_pod_ip6(0, 0);
    let _server = tcp_server_at(&web.ns, SocketAddrV6::new(be6, 8080, 0, 0).into(), "web-a").unwrap();
    let _who = WhoAmI::start(&web.ns, SocketAddrV6::new(be6, 9000, 0, 0));
    let dir = ManifestDir::new("np6-extip");
    dir.write(
        "svc.yaml",
        &manifest("Local").replace("  type: NodePort\n", &format!("  type: NodePort\n  externalIPs: [\"{external}\"]\n")),
    );
    let agent = agent_on_node_a(&lab, &dir, "np6-extip");
    let fe = format!("[{external}]:80/TCP");
    agent.wait_rows(&format!("{fe} with its backend"), |rows| rows.iter().any(|r| r.frontend == fe && r.backends.len() == 1));
    let ip: std::net::Ipv6Addr = external.parse().unwrap();
    for i in 0..3 {
        let to = SocketAddr::new(ip.into(), 80);
        let answer = tcp_request_to(&lab.client, to, b"hello\n", TIMEOUT)
            .unwrap_or_else(|e| panic!("request {i} to {to}: {e:#}\n{}", agent.log_text()));
        assert_eq!(answer, "web-a");
    }
    let who = SocketAddr::new(ip.into(), 90);
    let peer = tcp_request_to(&lab.client, who, b"who\n", TIMEOUT).unwrap_or_else(|e| panic!("{who}: {e:#}"));
    let peer: SocketAddr = peer.trim().parse().unwrap_or_else(|e| panic!("{peer:?}: {e}"));
    assert_eq!(peer.ip(), std::net::IpAddr::V6(CLIENT_IP6), "the backend saw {peer}, not the client");
}

/// An IPv6 LoadBalancer IP with IPv6 loadBalancerSourceRanges: the lab's
/// client (fd00:50::64) is served while inside them, its connections time
/// out (dropped in XDP) once the ranges leave it out; the Service's IPv4
/// range says nothing about IPv6 clients.
#[test]
fn ipv6_lb_ip_source_ranges_allow_and_deny() {
    if !kernel_tests_enabled() {
        return;
    }
    let (lab, lb) = lb_ip_lab();
    let web = lab.node(0).pod("web-a");
    let _server = tcp_server_at(&web.ns, SocketAddrV6::new(cluster_pod_ip6(0, 0), 8080, 0, 0).into(), "web-a").unwrap();
    let svc = |range: &str| {
        manifest("Cluster")
            .replace("  type: NodePort\n", &format!("  type: LoadBalancer\n  loadBalancerSourceRanges: [10.0.0.0/8, \"{range}\"]\n"))
    };
    // The ingress IP is in the Service's status.
    let with_status = |range: &str| {
        svc(range).replacen(
            "  - {name: who, port: 90, protocol: TCP, targetPort: 9000, nodePort: 30090}\n",
            &format!(
                "  - {{name: who, port: 90, protocol: TCP, targetPort: 9000, nodePort: 30090}}\nstatus:\n  loadBalancer:\n    ingress: [{{ip: \"{lb}\"}}]\n"
            ),
            1,
        )
    };
    let dir = ManifestDir::new("np6-ranges");
    dir.write("svc.yaml", &with_status("fd00:50::/64"));
    let agent = agent_on_node_a(&lab, &dir, "np6-ranges");
    let fe = format!("[{lb}]:80/TCP");
    let rows = agent
        .wait_rows(&format!("{fe} with its range"), |rows| rows.iter().any(|r| r.frontend == fe && r.allowed_sources == ["fd00:50::/64"]));
    assert!(rows.iter().any(|r| r.frontend == fe && r.backends.len() == 1), "{rows:#?}");
    let to = SocketAddr::new(lb.parse::<std::net::Ipv6Addr>().unwrap().into(), 80);
    for i in 0..3 {
        let answer = tcp_request_to(&lab.client, to, b"hello\n", TIMEOUT)
            .unwrap_or_else(|e| panic!("request {i} to {to}: {e:#}\n{}", agent.log_text()));
        assert_eq!(answer, "web-a");
    }
    // The client is no longer inside: dropped.
    dir.write("svc.yaml", &with_status("fd00:51::/64"));
    agent.wait_rows("the new range", |rows| rows.iter().any(|r| r.frontend == fe && r.allowed_sources == ["fd00:51::/64"]));
    let err = tcp_request_to(&lab.client, to, b"x", Duration::from_millis(700)).expect_err("a client outside the ranges must be dropped");
    assert_eq!(lb_lab::io_error_kind(&err), Some(std::io::ErrorKind::TimedOut), "{err:#}");
    assert!(agent.maps().stat(stat::DROP_SOURCE_RANGE).unwrap() >= 1);
}

/// An IPv6 LoadBalancer IP of a Service with no endpoints anywhere: the
/// external client's UDP datagram and TCP connection are refused at once
/// (ICMPv6 port unreachable from XDP, as kube-proxy's REJECT), not left to
/// time out: node A does not own the LB IP, so its kernel would forward or
/// drop them, and answers nothing.
#[test]
fn an_ipv6_lb_ip_without_endpoints_refuses_udp_and_tcp() {
    if !kernel_tests_enabled() {
        return;
    }
    let (lab, lb) = lb_ip_lab();
    let svc = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: gone, namespace: test}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20, "fd00:96::14"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports:
  - {{name: http, port: 80, protocol: TCP, nodePort: 30080}}
  - {{name: dns, port: 53, protocol: UDP, nodePort: 30053}}
status:
  loadBalancer:
    ingress: [{{ip: "{lb}"}}]
"#
    );
    let dir = ManifestDir::new("np6-reject");
    dir.write("svc.yaml", &svc);
    let agent = agent_on_node_a(&lab, &dir, "np6-reject");
    let (tcp, udp) = (format!("[{lb}]:80/TCP"), format!("[{lb}]:53/UDP"));
    agent.wait_rows("the LB IP's frontends", |rows| rows.iter().filter(|r| r.frontend == tcp || r.frontend == udp).count() == 2);
    let ip: std::net::Ipv6Addr = lb.parse().unwrap();
    let err = lb_lab::udp_request_to(&lab.client, SocketAddr::new(ip.into(), 53), b"q", TIMEOUT).expect_err("no endpoints: refused");
    assert!(lb_lab::is_connection_refused(&err), "UDP: {err:#}\n{}", agent.log_text());
    let err = tcp_request_to(&lab.client, SocketAddr::new(ip.into(), 80), b"x", TIMEOUT).expect_err("no endpoints: refused");
    assert!(lb_lab::is_connection_refused(&err), "TCP: {err:#}\n{}", agent.log_text());
    let maps = agent.maps();
    assert!(maps.stat(stat::REJECT_NO_BACKEND).unwrap() >= 2);
    assert_eq!(maps.stat(stat::TAIL_CALL_FAILED).unwrap(), 0);
}
