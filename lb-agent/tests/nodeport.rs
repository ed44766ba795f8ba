//! North-south traffic through the real datapath in a two-node lab: an
//! agent per node with XDP on its external interface, pods on both nodes,
//! an external client on the nodes' shared segment (see
//! `lb_lab::ClusterLab`), real sockets.

mod common;

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::fd::{AsFd, AsRawFd},
    time::Duration,
};

use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};
use common::{Agent, ManifestDir, PinDir, WhoAmI, http_status, kernel_tests_enabled};
use lb_agent::{datapath::XDP_PASS_PROGRAM, list, maps::Maps};
use lb_lab::{CLIENT_IP, ClusterLab, Netns, Server, node_ip, tcp_request, tcp_request_with, tcp_server, udp_echo, udp_request};

const HTTP_PORT: u16 = 30080;
const DNS_PORT: u16 = 30053;
const HC_PORT: u16 = 32000;
const UPLOAD_PORT: u16 = 30081;
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 5);
const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 10);

/// The calling thread inside a network namespace until dropped.
struct Entered(File);

impl Entered {
    fn enter(ns: &Netns) -> Entered {
        let orig = File::open("/proc/thread-self/ns/net").unwrap();
        // SAFETY: setns on valid fds; only this thread changes namespace.
        assert_eq!(unsafe { libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        Entered(orig)
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// The lab with its agents and servers. Field order is drop order: agents
/// and servers go before the namespaces.
struct Cluster {
    agents: Vec<Agent>,
    _servers: Vec<Server>,
    dir: ManifestDir,
    lab: ClusterLab,
}

/// Node A runs `web-a` (and a client pod `cli-a`), node B runs `web-b`.
/// Each web pod serves TCP 8080 and UDP 5353, answering with its name.
fn cluster(tag: &str, manifest: &str) -> Cluster {
    cluster_with(tag, manifest, &[])
}

/// [`cluster`] with extra agent arguments.
fn cluster_with(tag: &str, manifest: &str, extra: &[&str]) -> Cluster {
    let lab = ClusterLab::new(&[&["web-a", "cli-a"], &["web-b"]]).unwrap();
    let mut servers = Vec::new();
    for (n, name) in [(0, "web-a"), (1, "web-b")] {
        let pod = lab.node(n).pod(name);
        servers.push(tcp_server(&pod.ns, SocketAddrV4::new(pod.ip, 8080), name).unwrap());
        servers.push(udp_echo(&pod.ns, SocketAddrV4::new(pod.ip, 5353), name).unwrap());
    }
    let dir = ManifestDir::new(tag);
    dir.write("svc.yaml", manifest);
    let agents = (0..2)
        .map(|n| {
            let node = lab.node(n);
            let mut args = vec!["--external-ifaces", lb_lab::EXT_IF, "--node-name", &node.name, "--health-addr", "off"];
            args.extend_from_slice(extra);
            Agent::start_with(&node.ns, &dir.0, PinDir::new(&format!("{tag}-{n}")), &args)
        })
        .collect();
    Cluster { agents, _servers: servers, dir, lab }
}

impl Cluster {
    /// Waits until node `n`'s agent lists `frontend` with `backends` backends.
    fn wait_frontend(&self, n: usize, frontend: &str, backends: usize) -> Vec<list::Row> {
        self.agents[n].wait_rows(&format!("{frontend} with {backends} backends on node {n}"), |rows| {
            rows.iter().any(|r| r.frontend == frontend && r.backends.len() == backends)
        })
    }

    fn logs(&self) -> String {
        self.agents.iter().enumerate().map(|(n, a)| format!("--- agent {n} ---\n{}", a.log_text())).collect()
    }

    /// Counts which backend answered `n` TCP requests from `ns` to `to`.
    fn spread(&self, ns: &Netns, to: SocketAddrV4, n: usize) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for i in 0..n {
            let tag = tcp_request(ns, to).unwrap_or_else(|e| panic!("request {i} to {to}: {e:#}\n{}", self.logs()));
            *seen.entry(tag).or_default() += 1;
        }
        seen
    }
}

/// A Service (with `spec` lines) and its EndpointSlice with web-a on
/// node-a and web-b on node-b (or only the given ones).
fn manifest(spec: &str, status: &str, endpoints: &[(&str, Ipv4Addr, &str)]) -> String {
    let eps: String =
        endpoints.iter().map(|(_, ip, node)| format!("- addresses: [{ip}]\n  nodeName: {node}\n  conditions: {{ready: true}}\n")).collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: test}}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {{name: http, port: 80, protocol: TCP, nodePort: {HTTP_PORT}}}
  - {{name: dns, port: 53, protocol: UDP, nodePort: {DNS_PORT}}}
{spec}{status}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: test, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: dns, port: 5353, protocol: UDP}}
endpoints:
{eps}"#
    )
}

fn ips(lab: &ClusterLab) -> (Ipv4Addr, Ipv4Addr) {
    (lab.node(0).pod("web-a").ip, lab.node(1).pod("web-b").ip)
}

/// Pod IPs are fixed by the lab layout, so manifests can be written before
/// the lab exists.
fn fixed_endpoints(which: &[(&'static str, &'static str)]) -> Vec<(&'static str, Ipv4Addr, &'static str)> {
    which
        .iter()
        .map(|(pod, node)| {
            let ip = if *node == "node-a" { lb_lab::cluster_pod_ip(0, 0) } else { lb_lab::cluster_pod_ip(1, 0) };
            (*pod, ip, *node)
        })
        .collect()
}

const BOTH: &[(&str, &str)] = &[("web-a", "node-a"), ("web-b", "node-b")];

fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

#[test]
fn nodeport_tcp_and_udp_from_outside_reach_backends_on_both_nodes() {
    if !kernel_tests_enabled() {
        return;
    }
    let c = cluster("np", &manifest("  type: NodePort\n", "", &fixed_endpoints(BOTH)));
    assert_eq!(ips(&c.lab), (fixed_endpoints(BOTH)[0].1, fixed_endpoints(BOTH)[1].1));
    c.wait_frontend(0, &format!("{}:{HTTP_PORT}/TCP", node_ip(0)), 2);
    c.wait_frontend(1, &format!("{}:{HTTP_PORT}/TCP", node_ip(1)), 2);

    // The XDP mode the agent chose, as `lb-agent list` shows it.
    let maps = Maps::open(&c.agents[0].pins.0).unwrap();
    let header = list::north_south(&maps).unwrap().expect("north-south header");
    eprintln!("node A: {header}");
    // `auto` on a veth (as on kind or containerlab nodes): generic, and
    // it says why.
    assert!(header.contains("XDP generic on lbext (auto: veth"), "{header}");
    let rendered = list::render(&maps).unwrap();
    assert!(rendered.contains("[NodePort]"), "{rendered}");

    // TCP from the client to node A's NodePort: both backends answer, the
    // one on node B through node A's SNAT and the reverse translation.
    let seen = c.spread(&c.lab.client, at(node_ip(0), HTTP_PORT), 40);
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), ["web-a", "web-b"], "{seen:?}");
    let node_a = u32::from_ne_bytes(node_ip(0).octets());
    let snated = maps.ct.entries().unwrap().iter().filter(|(k, e)| k.dir == lb_common::CT_SERVICE && e.nat_saddr == node_a).count();
    assert!(snated > 0, "flows to web-b were SNATed");
    // The same through node B.
    let seen = c.spread(&c.lab.client, at(node_ip(1), HTTP_PORT), 40);
    assert_eq!(seen.len(), 2, "{seen:?}");

    // UDP: a connected socket only accepts replies from the address it
    // dialled, so every answer proves the reverse translation.
    let mut udp = BTreeMap::<String, usize>::new();
    for i in 0..30 {
        let (reply, peer) = udp_request(&c.lab.client, at(node_ip(0), DNS_PORT), &format!("q{i}"))
            .unwrap_or_else(|e| panic!("query {i}: {e:#}\n{}", c.logs()));
        assert_eq!(peer, std::net::SocketAddr::V4(at(node_ip(0), DNS_PORT)));
        let (tag, rest) = reply.split_once(':').unwrap();
        assert_eq!(rest, format!("q{i}"));
        *udp.entry(tag.to_string()).or_default() += 1;
    }
    assert_eq!(udp.len(), 2, "UDP reached both backends: {udp:?}");
}

#[test]
fn external_ip_and_load_balancer_ip_reach_backends_on_both_nodes() {
    if !kernel_tests_enabled() {
        return;
    }
    let spec = format!("  type: LoadBalancer\n  externalIPs: [{EXTERNAL_IP}]\n");
    let status = format!("status:\n  loadBalancer:\n    ingress: [{{ip: {LB_IP}}}]\n");
    let c = cluster("lbip", &manifest(&spec, &status, &fixed_endpoints(BOTH)));
    // The addresses are announced through node A (as a router or a cloud
    // load balancer would send them there).
    c.lab.client_route("192.168.60.0/24", 0).unwrap();
    c.wait_frontend(0, &format!("{LB_IP}:80/TCP"), 2);
    c.wait_frontend(0, &format!("{EXTERNAL_IP}:80/TCP"), 2);
    for vip in [EXTERNAL_IP, LB_IP] {
        let seen = c.spread(&c.lab.client, at(vip, 80), 40);
        assert_eq!(seen.len(), 2, "{vip}: {seen:?}");
        let (reply, peer) = udp_request(&c.lab.client, at(vip, 53), "q").unwrap_or_else(|e| panic!("{vip} UDP: {e:#}"));
        assert!(reply.starts_with("web-"), "{reply}");
        assert_eq!(peer, std::net::SocketAddr::V4(at(vip, 53)));
    }
}

#[test]
fn local_policy_keeps_the_client_ip_and_a_node_without_endpoints_drops_and_fails_its_health_check() {
    if !kernel_tests_enabled() {
        return;
    }
    let spec = format!("  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {HC_PORT}\n");
    let status = format!("status:\n  loadBalancer:\n    ingress: [{{ip: {LB_IP}}}]\n");
    // Only web-b (on node B) is an endpoint.
    let only_b = fixed_endpoints(&[("web-b", "node-b")]);
    let c = cluster("local", &manifest(&spec, &status, &only_b));
    let web_b = c.lab.node(1).pod("web-b");
    let _who = WhoAmI::start(&web_b.ns, SocketAddrV4::new(web_b.ip, 9000));
    // A second port for the client-IP check.
    c.dir.write(
        "svc.yaml",
        &manifest(&spec, &status, &only_b)
            .replace("  - {name: dns,", "  - {name: who, port: 90, protocol: TCP, nodePort: 30090}\n  - {name: dns,")
            .replace("- {name: dns, port: 5353", "- {name: who, port: 9000, protocol: TCP}\n- {name: dns, port: 5353"),
    );
    c.wait_frontend(1, &format!("{}:30090/TCP", node_ip(1)), 1);
    c.wait_frontend(0, &format!("{}:30090/TCP", node_ip(0)), 0);

    // Node B: the backend sees the real client address (no SNAT).
    let peer = tcp_request(&c.lab.client, at(node_ip(1), 30090)).unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    assert!(peer.starts_with(&format!("{CLIENT_IP}:")), "backend saw {peer}, not the client");
    assert_eq!(tcp_request(&c.lab.client, at(node_ip(1), HTTP_PORT)).unwrap(), "web-b");

    // Node A has no local endpoint: its NodePort drops (no answer at all,
    // neither a reset nor a refusal), so the connection attempt times out.
    let err =
        tcp_request_with(&c.lab.client, at(node_ip(0), HTTP_PORT), b"x", Duration::from_millis(700)).expect_err("node A must not answer");
    assert_eq!(lb_lab::io_error_kind(&err), Some(std::io::ErrorKind::TimedOut), "{err:#}");

    // The health check NodePorts tell the load balancer so.
    let (code, body) = http_status(&c.lab.client, at(node_ip(0), HC_PORT));
    assert_eq!(code, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["localEndpoints"], 0, "{body}");
    assert_eq!(v["service"]["namespace"], "test");
    assert_eq!(v["service"]["name"], "web");
    assert_eq!(v["serviceProxyHealthy"], true);
    let (code, body) = http_status(&c.lab.client, at(node_ip(1), HC_PORT));
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["localEndpoints"], 1, "{body}");
}

#[test]
fn local_policy_holds_only_for_traffic_from_outside_pods_and_the_host_reach_every_endpoint() {
    if !kernel_tests_enabled() {
        return;
    }
    let spec = "  type: LoadBalancer\n  externalTrafficPolicy: Local\n";
    let status = format!("status:\n  loadBalancer:\n    ingress: [{{ip: {LB_IP}}}]\n");
    // The only endpoint, web-b, is on node B.
    let c = cluster("local-inside", &manifest(spec, &status, &fixed_endpoints(&[("web-b", "node-b")])));
    let nodeport = at(node_ip(0), HTTP_PORT);
    c.wait_frontend(1, &format!("{}:{HTTP_PORT}/TCP", node_ip(1)), 1);
    // The LB IP's TCP frontend is the last one node A's agent writes.
    c.agents[0].wait_rows("node A's LB IP frontend", |rows| rows.iter().any(|r| r.frontend == format!("{LB_IP}:80/TCP")));

    // A pod on node A (tc) reaches node A's NodePort and the LB IP: web-b
    // answers, over TCP and UDP.
    let pod = &c.lab.node(0).pod("cli-a").ns;
    for to in [nodeport, at(LB_IP, 80)] {
        let tag = tcp_request(pod, to).unwrap_or_else(|e| panic!("pod -> {to}: {e:#}\n{}", c.logs()));
        assert_eq!(tag, "web-b", "pod -> {to}");
    }
    let (reply, peer) = udp_request(pod, at(node_ip(0), DNS_PORT), "q").unwrap_or_else(|e| panic!("pod UDP: {e:#}\n{}", c.logs()));
    assert!(reply.starts_with("web-b"), "{reply}");
    assert_eq!(peer, std::net::SocketAddr::V4(at(node_ip(0), DNS_PORT)));
    // So does node A's host (socket hooks).
    let host = &c.lab.node(0).ns;
    for to in [nodeport, at(LB_IP, 80)] {
        let tag = tcp_request(host, to).unwrap_or_else(|e| panic!("host -> {to}: {e:#}\n{}", c.logs()));
        assert_eq!(tag, "web-b", "host -> {to}");
    }

    // From outside, node A still has no endpoint for the Service: no
    // answer at all.
    let err = tcp_request_with(&c.lab.client, nodeport, b"x", Duration::from_millis(700)).expect_err("node A must not answer from outside");
    assert_eq!(lb_lab::io_error_kind(&err), Some(std::io::ErrorKind::TimedOut), "{err:#}");
    // Node B's own endpoint serves it there.
    assert_eq!(tcp_request(&c.lab.client, at(node_ip(1), HTTP_PORT)).unwrap(), "web-b");

    // `list` shows both entries of node A's NodePort: Local (no endpoint
    // here) for traffic from outside, Cluster (every endpoint) for pods and
    // the host.
    let rows = c.agents[0].rows();
    let np: Vec<_> = rows
        .iter()
        .filter(|r| r.frontend == format!("{}:{HTTP_PORT}/TCP", node_ip(0)))
        .map(|r| (r.scope, r.policy, r.backends.len()))
        .collect();
    assert_eq!(np, [("external", "Local", 0), ("internal", "Cluster", 1)], "{rows:#?}");
}

#[test]
fn load_balancer_source_ranges_allow_and_deny() {
    if !kernel_tests_enabled() {
        return;
    }
    let status = format!("status:\n  loadBalancer:\n    ingress: [{{ip: {LB_IP}}}]\n");
    let spec = |range: &str| format!("  type: LoadBalancer\n  loadBalancerSourceRanges: [{range}]\n");
    let c = cluster("ranges", &manifest(&spec("192.168.50.100/32"), &status, &fixed_endpoints(BOTH)));
    c.lab.client_route("192.168.60.0/24", 0).unwrap();
    let rows = c.wait_frontend(0, &format!("{LB_IP}:80/TCP"), 2);
    assert!(rows.iter().any(|r| r.kind.contains("SourceRanges")), "{rows:#?}");
    let seen = c.spread(&c.lab.client, at(LB_IP, 80), 10);
    assert_eq!(seen.values().sum::<usize>(), 10);

    // The client is no longer in the ranges: its packets are dropped.
    c.dir.write("svc.yaml", &manifest(&spec("10.0.0.0/8"), &status, &fixed_endpoints(BOTH)));
    common::wait_for("the new source range", Duration::from_secs(10), || {
        let maps = Maps::open(&c.agents[0].pins.0).ok()?;
        let entries = maps.src_range_entries().ok()?;
        (entries.len() == 2 && entries.iter().all(|(_, r)| r.addr == u32::from_ne_bytes([10, 0, 0, 0]))).then_some(())
    });
    let err = tcp_request_with(&c.lab.client, at(LB_IP, 80), b"x", Duration::from_millis(700))
        .expect_err("a source outside the ranges must be dropped");
    assert_eq!(lb_lab::io_error_kind(&err), Some(std::io::ErrorKind::TimedOut), "{err:#}");
    // The NodePort of the same Service is not restricted (as kube-proxy).
    assert!(tcp_request(&c.lab.client, at(node_ip(0), HTTP_PORT)).unwrap().starts_with("web-"));
}

/// loadBalancerSourceRanges bind clients inside the cluster too, as
/// kube-proxy's firewall chains (hooked in PREROUTING and OUTPUT) do: a pod
/// outside the ranges is dropped, and a host client whose node address is
/// outside them refused with EPERM (what a packet netfilter drops on OUTPUT
/// gives the application); inside them, both are served. With either
/// traffic policy: a Local Service's pods and host reach its in-cluster
/// entry (every endpoint), which carries the ranges as well.
#[test]
fn load_balancer_source_ranges_bind_pods_and_the_host_too() {
    if !kernel_tests_enabled() {
        return;
    }
    let status = format!("status:\n  loadBalancer:\n    ingress: [{{ip: {LB_IP}}}]\n");
    for (policy, external_backends) in [("Cluster", 2), ("Local", 1)] {
        let spec =
            |range: &str| format!("  type: LoadBalancer\n  externalTrafficPolicy: {policy}\n  loadBalancerSourceRanges: [{range}]\n");
        let c = cluster(&format!("ranges-in-{policy}"), &manifest(&spec("192.168.50.100/32"), &status, &fixed_endpoints(BOTH)));
        c.lab.client_route("192.168.60.0/24", 0).unwrap();
        c.wait_frontend(0, &format!("{LB_IP}:80/TCP"), external_backends);
        let pod = &c.lab.node(0).pod("cli-a").ns;
        let host = &c.lab.node(0).ns;
        // Only the outside client is in the ranges.
        assert!(tcp_request(&c.lab.client, at(LB_IP, 80)).unwrap().starts_with("web-"), "{policy}");
        let err = tcp_request_with(pod, at(LB_IP, 80), b"x", Duration::from_millis(700)).expect_err("a pod outside the ranges");
        assert_eq!(lb_lab::io_error_kind(&err), Some(std::io::ErrorKind::TimedOut), "{policy}: {err:#}");
        let err = tcp_request(host, at(LB_IP, 80)).expect_err("the host outside the ranges");
        assert_eq!(lb_lab::io_error_kind(&err), Some(std::io::ErrorKind::PermissionDenied), "{policy}: {err:#}");
        // The ClusterIP of the same Service is not restricted.
        assert!(tcp_request(pod, at(Ipv4Addr::new(10, 96, 0, 10), 80)).unwrap().starts_with("web-"), "{policy}");

        // Ranges that hold the pod network and node A's address.
        c.dir.write("svc.yaml", &manifest(&spec("10.244.0.0/16, 192.168.50.1/32"), &status, &fixed_endpoints(BOTH)));
        common::wait_for("the pod to be let in", Duration::from_secs(10), || {
            tcp_request_with(pod, at(LB_IP, 80), b"x", Duration::from_millis(300)).ok()
        });
        let seen = c.spread(pod, at(LB_IP, 80), 20);
        assert_eq!(seen.len(), 2, "{policy}: every endpoint serves the pod: {seen:?}");
        let seen = c.spread(host, at(LB_IP, 80), 20);
        assert_eq!(seen.len(), 2, "{policy}: every endpoint serves the host: {seen:?}");
        let err = tcp_request_with(&c.lab.client, at(LB_IP, 80), b"x", Duration::from_millis(700)).expect_err("the client is out now");
        assert_eq!(lb_lab::io_error_kind(&err), Some(std::io::ErrorKind::TimedOut), "{policy}: {err:#}");
    }
}

#[test]
fn nodeport_is_reachable_from_a_pod_and_from_the_host() {
    if !kernel_tests_enabled() {
        return;
    }
    let c = cluster("inside", &manifest("  type: NodePort\n", "", &fixed_endpoints(BOTH)));
    c.wait_frontend(0, &format!("{}:{HTTP_PORT}/TCP", node_ip(0)), 2);
    c.wait_frontend(1, &format!("{}:{HTTP_PORT}/TCP", node_ip(1)), 2);
    // A pod on node A dials its own node's NodePort (tc), and node B's
    // (routed out to node B, served there by XDP).
    let pod = &c.lab.node(0).pod("cli-a").ns;
    for n in 0..2 {
        let seen = c.spread(pod, at(node_ip(n), HTTP_PORT), 30);
        assert_eq!(seen.len(), 2, "pod -> node {n}: {seen:?}");
    }
    let (reply, peer) = udp_request(pod, at(node_ip(0), DNS_PORT), "q").unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    assert!(reply.starts_with("web-"));
    assert_eq!(peer, std::net::SocketAddr::V4(at(node_ip(0), DNS_PORT)));
    // The host of node A dials its own address (socket hooks) and node B's.
    let host = &c.lab.node(0).ns;
    for n in 0..2 {
        let seen = c.spread(host, at(node_ip(n), HTTP_PORT), 30);
        assert_eq!(seen.len(), 2, "host -> node {n}: {seen:?}");
    }
}

/// An XDP program on the switch's ports: frames a node's native XDP
/// program transmits back out of its veth are received by the peer only
/// when the peer runs XDP too.
fn switch_xdp(lab: &ClusterLab) -> Ebpf {
    let _in = Entered::enter(&lab.switch);
    let mut ebpf = Ebpf::load(lb_agent::EBPF_OBJECT).expect("loading the eBPF object for the switch");
    let pass: &mut Xdp = ebpf.program_mut(XDP_PASS_PROGRAM).unwrap().try_into().unwrap();
    pass.load().unwrap();
    for port in lab.switch_ports() {
        pass.attach(&port, XdpMode::Driver).unwrap_or_else(|e| panic!("attaching {XDP_PASS_PROGRAM} to switch port {port}: {e}"));
    }
    ebpf
}

#[test]
fn native_xdp_mode_can_be_forced_where_the_peers_run_xdp() {
    if !kernel_tests_enabled() {
        return;
    }
    let c = cluster_with("native", &manifest("  type: NodePort\n", "", &fixed_endpoints(BOTH)), &["--xdp-mode", "native"]);
    let _switch = switch_xdp(&c.lab);
    c.wait_frontend(0, &format!("{}:{HTTP_PORT}/TCP", node_ip(0)), 2);
    let header = list::north_south(&Maps::open(&c.agents[0].pins.0).unwrap()).unwrap().unwrap();
    assert!(header.contains("XDP native on lbext (as requested)"), "{header}");
    let seen = c.spread(&c.lab.client, at(node_ip(0), HTTP_PORT), 30);
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn generic_xdp_mode_can_be_forced() {
    if !kernel_tests_enabled() {
        return;
    }
    let c = cluster_with("generic", &manifest("  type: NodePort\n", "", &fixed_endpoints(BOTH)), &["--xdp-mode", "generic"]);
    c.wait_frontend(0, &format!("{}:{HTTP_PORT}/TCP", node_ip(0)), 2);
    let header = list::north_south(&Maps::open(&c.agents[0].pins.0).unwrap()).unwrap().unwrap();
    assert!(header.contains("XDP generic on lbext"), "{header}");
    assert!(c.agents[0].log_text().contains("mode=\"generic\""), "the mode is logged");
    let seen = c.spread(&c.lab.client, at(node_ip(0), HTTP_PORT), 30);
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// `--xdp-mode tc`: no XDP program on the external interface; the
/// north-south path runs in tc on its ingress (`lb_tc_ns`). TCP and UDP
/// from the external client to node A's NodePort reach both backends, the
/// one on node B through node A's SNAT, FIB and redirect, with the
/// replies translated back.
#[test]
fn tc_mode_serves_nodeports_from_outside_without_xdp() {
    if !kernel_tests_enabled() {
        return;
    }
    let c = cluster_with("tcmode", &manifest("  type: NodePort\n", "", &fixed_endpoints(BOTH)), &["--xdp-mode", "tc"]);
    c.wait_frontend(0, &format!("{}:{HTTP_PORT}/TCP", node_ip(0)), 2);
    let maps = Maps::open(&c.agents[0].pins.0).unwrap();
    let header = list::north_south(&maps).unwrap().unwrap();
    assert!(header.contains("north-south: tc on lbext (as requested)"), "{header}");
    let link = c.lab.node(0).ns.ip_output(&["-d", "link", "show", lb_lab::EXT_IF]).unwrap();
    assert!(!link.contains("xdp"), "no XDP program on {}: {link}", lb_lab::EXT_IF);
    let ext = common::ifindex_in(&c.lab.node(0).ns, lb_lab::EXT_IF).unwrap();
    let ingress = c.lab.node(0).ns.run(move || lb_agent::links::query_tcx(ext, true).unwrap());
    assert_eq!(ingress.len(), 1, "lb_tc_ns on the ingress of {}", lb_lab::EXT_IF);

    let seen = c.spread(&c.lab.client, at(node_ip(0), HTTP_PORT), 40);
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), ["web-a", "web-b"], "{seen:?}");
    let node_a = u32::from_ne_bytes(node_ip(0).octets());
    let snated = maps.ct.entries().unwrap().iter().filter(|(k, e)| k.dir == lb_common::CT_SERVICE && e.nat_saddr == node_a).count();
    assert!(snated > 0, "flows to web-b were SNATed");
    let mut udp = BTreeMap::<String, usize>::new();
    for i in 0..30 {
        let (reply, peer) = udp_request(&c.lab.client, at(node_ip(0), DNS_PORT), &format!("q{i}"))
            .unwrap_or_else(|e| panic!("query {i}: {e:#}\n{}", c.logs()));
        assert_eq!(peer, std::net::SocketAddr::V4(at(node_ip(0), DNS_PORT)));
        *udp.entry(reply.split_once(':').unwrap().0.to_string()).or_default() += 1;
    }
    assert_eq!(udp.len(), 2, "UDP reached both backends: {udp:?}");
    assert_eq!(maps.stat(lb_common::stat::TAIL_CALL_FAILED).unwrap(), 0);

    // Another XDP program on the interface (a firewall's, say) and lb's
    // tc path serve side by side.
    let _other = {
        let _in = Entered::enter(&c.lab.node(0).ns);
        let mut ebpf = Ebpf::load(lb_agent::EBPF_OBJECT).unwrap();
        let pass: &mut Xdp = ebpf.program_mut(XDP_PASS_PROGRAM).unwrap().try_into().unwrap();
        pass.load().unwrap();
        pass.attach(lb_lab::EXT_IF, XdpMode::Skb).unwrap();
        ebpf
    };
    let link = c.lab.node(0).ns.ip_output(&["-d", "link", "show", lb_lab::EXT_IF]).unwrap();
    assert!(link.contains("xdpgeneric"), "{link}");
    let seen = c.spread(&c.lab.client, at(node_ip(0), HTTP_PORT), 20);
    assert_eq!(seen.len(), 2, "beside another XDP program: {seen:?}");
}

/// How many FIB answers node `n`'s XDP program keeps (`LB_NEXTHOPS`).
fn kept_next_hops(c: &Cluster, n: usize) -> usize {
    let path = c.agents[n].pins.0.join(lb_common::names::NEXTHOPS);
    let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_pin(&path).unwrap()).unwrap();
    let map: aya::maps::HashMap<_, lb_common::NextHopKey, lb_common::NextHop> = aya::maps::HashMap::try_from(map).unwrap();
    map.keys().filter_map(Result::ok).count()
}

#[test]
fn a_route_change_forgets_the_kept_next_hops() {
    if !kernel_tests_enabled() {
        return;
    }
    // The only backend is on node B: node A's XDP program forwards every
    // packet from the client, with the FIB's answer kept.
    let c = cluster("nexthop", &manifest("  type: NodePort\n", "", &fixed_endpoints(&[("web-b", "node-b")])));
    c.wait_frontend(0, &format!("{}:{HTTP_PORT}/TCP", node_ip(0)), 1);
    let to = at(node_ip(0), HTTP_PORT);
    assert_eq!(c.spread(&c.lab.client, to, 5).into_keys().collect::<Vec<_>>(), ["web-b"]);
    assert!(kept_next_hops(&c, 0) > 0, "no FIB answer kept\n{}", c.logs());
    // A route added on node A: the agent forgets them (left alone, a kept
    // answer stays in the map, only too old to use after a second).
    let node_a = &c.lab.node(0).ns;
    node_a.ip(&["route", "add", "blackhole", "198.51.100.0/24"]).unwrap();
    common::wait_for("the kept next hops to go", Duration::from_secs(10), || (kept_next_hops(&c, 0) == 0).then_some(()));
    // And the next packets ask the FIB again.
    assert_eq!(c.spread(&c.lab.client, to, 5).into_keys().collect::<Vec<_>>(), ["web-b"]);
    assert!(kept_next_hops(&c, 0) > 0);
}

#[test]
fn a_missing_external_interface_is_named() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = lb_lab::NodeLab::new(&[]).unwrap();
    let dir = ManifestDir::new("noext");
    let agent = Agent::start_with(&lab.node, &dir.0, PinDir::new("noext"), &["--external-ifaces", "nosuch0"]);
    common::wait_for("the agent to fail", Duration::from_secs(15), || {
        agent.log_text().contains("external interface nosuch0 does not exist").then_some(())
    });
}

#[test]
fn nodeports_follow_an_address_added_to_and_removed_from_the_node() {
    if !kernel_tests_enabled() {
        return;
    }
    let c = cluster("addr", &manifest("  type: NodePort\n", "", &fixed_endpoints(BOTH)));
    c.wait_frontend(0, &format!("{}:{HTTP_PORT}/TCP", node_ip(0)), 2);
    // A second address on node A's external interface, on the client's
    // segment (so the client reaches it directly), while the agent runs.
    let extra = Ipv4Addr::new(192, 168, 50, 11);
    let node_a = &c.lab.node(0).ns;
    node_a.ip(&["addr", "add", &format!("{extra}/24"), "dev", lb_lab::EXT_IF]).unwrap();
    // Nothing listens on the new address: only the agent's new frontend
    // answers there.
    common::wait_for("the NodePort to answer on the new address", Duration::from_secs(10), || {
        tcp_request_with(&c.lab.client, at(extra, HTTP_PORT), b"x", Duration::from_millis(300)).ok()
    });
    // Both backends, the one on node B through node A's SNAT.
    let seen = c.spread(&c.lab.client, at(extra, HTTP_PORT), 30);
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), ["web-a", "web-b"], "{seen:?}");
    let (reply, peer) = udp_request(&c.lab.client, at(extra, DNS_PORT), "q").unwrap_or_else(|e| panic!("UDP: {e:#}\n{}", c.logs()));
    assert!(reply.starts_with("web-"), "{reply}");
    assert_eq!(peer, std::net::SocketAddr::V4(at(extra, DNS_PORT)));
    c.wait_frontend(0, &format!("{extra}:{DNS_PORT}/UDP"), 2);
    let log = c.agents[0].log_text();
    assert!(log.contains("the node's addresses changed") && log.contains("192.168.50.11"), "the change is logged:\n{log}");
    // Node B's agent plans on node B's addresses only.
    assert!(!c.agents[1].rows().iter().any(|r| r.frontend.starts_with(&format!("{extra}:"))));

    // Removed: its frontends go, the node's first address still serves.
    node_a.ip(&["addr", "del", &format!("{extra}/24"), "dev", lb_lab::EXT_IF]).unwrap();
    c.agents[0].wait_rows("the frontends of the removed address to go", |rows| {
        !rows.iter().any(|r| r.frontend.starts_with(&format!("{extra}:")))
            && rows.iter().any(|r| r.frontend == format!("{}:{HTTP_PORT}/TCP", node_ip(0)))
    });
    let seen = c.spread(&c.lab.client, at(node_ip(0), HTTP_PORT), 20);
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn nodeport_addresses_choose_the_node_addresses_nodeports_are_served_on() {
    if !kernel_tests_enabled() {
        return;
    }
    // Only 192.168.50.11 (not yet on the node); the IPv6 block is accepted
    // and ignored.
    let extra = Ipv4Addr::new(192, 168, 50, 11);
    let args = ["--nodeport-addresses", "192.168.50.11/32,fd00::/64"];
    let c = cluster_with("npaddr", &manifest("  type: NodePort\n", "", &fixed_endpoints(BOTH)), &args);
    c.wait_frontend(0, "10.96.0.10:80/TCP", 2);
    // Node A's own address is outside: no NodePort there, the kernel
    // refuses (nothing listens on the port).
    assert!(!c.agents[0].rows().iter().any(|r| r.frontend.starts_with(&format!("{}:", node_ip(0)))), "{:#?}", c.agents[0].rows());
    let err = tcp_request_with(&c.lab.client, at(node_ip(0), HTTP_PORT), b"x", Duration::from_millis(700))
        .expect_err("no NodePort on an address outside --nodeport-addresses");
    assert!(lb_lab::is_connection_refused(&err), "{err:#}");

    // The address inside, added while the agent runs, serves it.
    c.lab.node(0).ns.ip(&["addr", "add", &format!("{extra}/24"), "dev", lb_lab::EXT_IF]).unwrap();
    common::wait_for("the NodePort to answer on the address inside --nodeport-addresses", Duration::from_secs(10), || {
        tcp_request_with(&c.lab.client, at(extra, HTTP_PORT), b"x", Duration::from_millis(300)).ok()
    });
    let seen = c.spread(&c.lab.client, at(extra, HTTP_PORT), 20);
    assert_eq!(seen.len(), 2, "{seen:?}");
    let rows = c.agents[0].rows();
    assert!(!rows.iter().any(|r| r.frontend.starts_with(&format!("{}:", node_ip(0)))), "{rows:#?}");
    // Still refused on node A's first address.
    let err = tcp_request_with(&c.lab.client, at(node_ip(0), HTTP_PORT), b"x", Duration::from_millis(700)).expect_err("still outside");
    assert!(lb_lab::is_connection_refused(&err), "{err:#}");
}

/// `GET /metrics` on the agent's default metrics address inside `ns`.
fn scrape(ns: &Netns) -> String {
    let _in = Entered::enter(ns);
    let mut s = TcpStream::connect_timeout(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10249).into(), Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn a_nodeport_outside_the_nodeport_range_is_reported_not_silently_ignored() {
    if !kernel_tests_enabled() {
        return;
    }
    // HTTP's NodePort (30080) is outside the range, DNS's (30053) inside.
    let args = ["--nodeport-range", "30000-30060"];
    let c = cluster_with("range", &manifest("  type: NodePort\n", "", &fixed_endpoints(BOTH)), &args);
    c.wait_frontend(0, &format!("{}:{DNS_PORT}/UDP", node_ip(0)), 2);
    let rows = c.agents[0].rows();
    assert!(!rows.iter().any(|r| r.frontend.ends_with(&format!(":{HTTP_PORT}/TCP"))), "{rows:#?}");
    // A warning names the Service, the port and the range.
    let log = c.agents[0].log_text();
    let line = log.lines().find(|l| l.contains(&format!("nodePort {HTTP_PORT}"))).unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(
        line.contains("WARN") && line.contains("Service test/web") && line.contains("outside the NodePort range 30000-30060"),
        "{line}"
    );
    // Counted among the skipped objects and fields.
    let metrics = scrape(&c.lab.node(0).ns);
    let skipped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lb_objects_skipped "))
        .unwrap_or_else(|| panic!("no lb_objects_skipped:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(skipped >= 1.0, "{metrics}");
    // Not served: the kernel refuses, the other port answers.
    let err = tcp_request_with(&c.lab.client, at(node_ip(0), HTTP_PORT), b"x", Duration::from_millis(700)).expect_err("not served");
    assert!(lb_lab::is_connection_refused(&err), "{err:#}");
    let (reply, _) = udp_request(&c.lab.client, at(node_ip(0), DNS_PORT), "q").unwrap_or_else(|e| panic!("UDP: {e:#}\n{}", c.logs()));
    assert!(reply.starts_with("web-"), "{reply}");
}

/// NodePorts of both families to a backend on another node, with the pod
/// networks joined by a VXLAN overlay (flannel's layout; one device carries
/// both families): the translated packets leave node A through the tunnel
/// device. From XDP they are handed to the kernel, which forwards them
/// into the tunnel (a redirect there from native XDP would drop them: the
/// device does not transmit XDP frames). On strict node B, its agent makes
/// reverse-path filtering loose on the tunnel device, where the flows
/// SNATed to node A's address arrive while the route back to that address
/// is the node network's.
#[test]
fn nodeports_reach_a_backend_on_another_node_over_a_vxlan_overlay() {
    if !kernel_tests_enabled() {
        return;
    }
    nodeport_over_vxlan("auto");
}

/// The same with native XDP on the external interfaces (the switch's
/// ports run XDP too, so transmitted frames arrive).
#[test]
fn nodeports_reach_a_backend_on_another_node_over_a_vxlan_overlay_in_native_xdp() {
    if !kernel_tests_enabled() {
        return;
    }
    nodeport_over_vxlan("native");
}

/// The same with the north-south path in tc (`--xdp-mode tc`), which
/// redirects into the tunnel device itself.
#[test]
fn nodeports_reach_a_backend_on_another_node_over_a_vxlan_overlay_on_the_tc_path() {
    if !kernel_tests_enabled() {
        return;
    }
    nodeport_over_vxlan("tc");
}

fn nodeport_over_vxlan(xdp: &str) {
    use std::net::SocketAddr;

    use lb_lab::{ClusterOptions, Overlay, VXLAN_IF, cluster_pod_ip, cluster_pod_ip6, node_ip6, tcp_request_to, tcp_server_at};
    let lab =
        ClusterLab::with_options(&[&["cli-a"], &["web-b"]], ClusterOptions { overlay: Overlay::Vxlan, ..Default::default() }).unwrap();
    lab.enable_ipv6().unwrap();
    let web = lab.node(1).pod("web-b");
    let (ip4, ip6) = (cluster_pod_ip(1, 0), cluster_pod_ip6(1, 0));
    let _servers = [
        tcp_server_at(&web.ns, SocketAddr::new(ip4.into(), 8080), "web-b").unwrap(),
        tcp_server_at(&web.ns, SocketAddr::new(ip6.into(), 8080), "web-b").unwrap(),
    ];
    let uploads = [
        common::upload_server(&web.ns, SocketAddr::new(ip4.into(), 8081)),
        common::upload_server(&web.ns, SocketAddr::new(ip6.into(), 8081)),
    ];
    let tag = format!("np-vxlan-{xdp}");
    let dir = ManifestDir::new(&tag);
    let ports = [("http", 80, "TCP", 8080, HTTP_PORT), ("up", 81, "TCP", 8081, UPLOAD_PORT)];
    dir.write("svc.yaml", &common::dual_stack_nodeport_yaml("Cluster", &ports, (ip4, ip6), "node-b"));
    let agents: Vec<Agent> = (0..2)
        .map(|n| {
            let node = lab.node(n);
            let args = ["--external-ifaces", lb_lab::EXT_IF, "--node-name", &node.name, "--health-addr", "off", "--xdp-mode", xdp];
            Agent::start_with(&node.ns, &dir.0, PinDir::new(&format!("{tag}-{n}")), &args)
        })
        .collect();
    let _switch = (xdp == "native").then(|| switch_xdp(&lab));
    let nodeports = |n: usize| [SocketAddr::new(node_ip(n).into(), HTTP_PORT), SocketAddr::new(node_ip6(n).into(), HTTP_PORT)];
    for (n, agent) in agents.iter().enumerate() {
        let names = nodeports(n).map(|f| format!("{f}/TCP"));
        agent
            .wait_rows("the node's NodePorts", |rows| names.iter().all(|f| rows.iter().any(|r| &r.frontend == f && r.backends.len() == 1)));
    }
    let fronts = nodeports(0);
    if xdp == "auto" {
        // The veths and the tunnel's smaller MTU: auto puts the path in tc.
        let header = lb_agent::list::north_south(&agents[0].maps()).unwrap().expect("north-south header");
        assert!(header.contains(lb_agent::datapath::xdp_why_text(lb_common::xdp_why::AUTO_OVERLAY)), "{header}");
    }
    let node_b = &lab.node(1).ns;
    assert_eq!(node_b.sysctl_get("net.ipv4.conf.all.rp_filter").unwrap(), "1", "the lab's nodes are strict");
    assert_eq!(node_b.sysctl_get(&format!("net.ipv4.conf.{VXLAN_IF}.rp_filter")).unwrap(), "2", "node B's agent made its tunnel loose");
    let tunnel_tx = || common::link_packets(&lab.node(0).ns, VXLAN_IF).0;
    let before = tunnel_tx();
    for i in 0..10 {
        for to in fronts {
            let answer = tcp_request_to(&lab.client, to, b"hello\n", Duration::from_secs(2)).unwrap_or_else(|e| {
                let logs: String = agents.iter().map(|a| a.log_text()).collect();
                panic!("request {i} to {to}: {e:#}\n{logs}")
            });
            assert_eq!(answer, "web-b", "request {i} to {to}");
        }
    }
    // Uploads: the client's full-size segments (MSS 1460) do not fit the
    // tunnel's MTU (1450); the client learns the path's MTU from the
    // NodePort ("fragmentation needed", or Packet Too Big) and the upload
    // arrives whole.
    for n in fronts.map(|f| SocketAddr::new(f.ip(), UPLOAD_PORT)) {
        let got = common::upload(&lab.client, n, 300_000).unwrap_or_else(|e| panic!("upload to {n}: {e}"));
        assert_eq!(got, "300000", "upload to {n}");
    }
    for (stop, _) in &uploads {
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    // Through the tunnel: each request is at least 3 packets from the client.
    let sent = tunnel_tx() - before;
    assert!(sent >= 2 * 10 * 3, "node A sent {sent} packets into the tunnel");
    // SNATed by lb on node A, both families.
    let maps = agents[0].maps();
    let node_a = u32::from_ne_bytes(node_ip(0).octets());
    let snated4 = maps.ct.tcp.entries().unwrap().iter().filter(|(k, e)| k.dir == lb_common::CT_SERVICE && e.nat_saddr == node_a).count();
    let node_a6 = lb_common::addr6(node_ip6(0));
    let snated6 =
        maps.v6.ct_tcp.entries().unwrap().iter().filter(|(k, e)| k.dir == lb_common::CT_SERVICE && e.nat_saddr == node_a6).count();
    assert!(snated4 >= 10 && snated6 >= 10, "SNATed flows: {snated4} IPv4, {snated6} IPv6");
    // An overlay device that appears later (a CNI starting after lb) is
    // made loose when its link event comes; another kind of device is not.
    // (The veth first: its event is handled before the tunnel's.)
    node_b.ip(&["link", "add", "lbve2", "type", "veth", "peer", "name", "lbve3"]).unwrap();
    node_b.ip(&["link", "add", "lbvx2", "type", "vxlan", "id", "43", "dstport", "4790", "dev", lb_lab::EXT_IF]).unwrap();
    common::wait_for("node B's agent to make the new tunnel device loose", Duration::from_secs(10), || {
        (node_b.sysctl_get("net.ipv4.conf.lbvx2.rp_filter").unwrap() == "2").then_some(())
    });
    assert_eq!(node_b.sysctl_get("net.ipv4.conf.lbve2.rp_filter").unwrap(), "1", "not a tunnel");
}

/// An overlay device that appears after the agent chose generic XDP on a
/// veth (`auto`, no overlay yet): its reverse-path filtering is made loose,
/// and the agent warns that uploads through it to other nodes' pods need
/// the tc path (a restart picks it).
#[test]
fn an_overlay_device_after_the_start_is_made_loose_and_warned_about() {
    if !kernel_tests_enabled() {
        return;
    }
    let c = cluster("late-overlay", &manifest("  type: NodePort\n", "", &fixed_endpoints(BOTH)));
    c.wait_frontend(0, &format!("{}:{HTTP_PORT}/TCP", node_ip(0)), 2);
    let node = &c.lab.node(0).ns;
    node.ip(&["link", "add", "lbvx9", "type", "vxlan", "id", "9", "dstport", "4791", "dev", lb_lab::EXT_IF]).unwrap();
    c.agents[0].wait_log("the warning about generic XDP and the overlay", "a pod overlay device with a smaller MTU appeared");
    assert_eq!(node.sysctl_get("net.ipv4.conf.lbvx9.rp_filter").unwrap(), "2");
    let header = list::north_south(&Maps::open(&c.agents[0].pins.0).unwrap()).unwrap().unwrap();
    assert!(header.contains("XDP generic on lbext"), "{header}");
}

/// `auto` on an interface whose driver cannot run XDP natively (an ifb
/// here; a NIC whose XDP does not take the interface's MTU alike) puts the
/// north-south path in tc, not in generic XDP (which would turn the
/// interface's hardware GRO off); restarted over an
/// earlier agent's generic XDP link (asked for, or an older agent's
/// fallback), it replaces that link. Asked for generic XDP on a node with a
/// pod overlay device of a smaller MTU, it attaches that and warns.
#[test]
fn auto_takes_tc_where_native_xdp_is_missing() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = lb_lab::NodeLab::new(&["a"]).unwrap();
    lab.node.ip(&["link", "add", "lbifb0", "type", "ifb"]).unwrap();
    lab.node.ip(&["link", "set", "lbifb0", "up"]).unwrap();
    lab.node.ip(&["addr", "add", "192.168.70.1/24", "dev", "lbifb0"]).unwrap();
    let dir = ManifestDir::new("auto-ifb");
    let args = ["--external-ifaces", "lbifb0", "--health-addr", "off", "--metrics-addr", "off"];
    // Waits for the header line to say `what` (an earlier agent's stays
    // until the new one writes its own).
    let header = |agent: &Agent, what: &str| {
        common::wait_for(&format!("the north-south header to say {what}"), Duration::from_secs(20), || {
            list::north_south(&Maps::open(&agent.pins.0).ok()?).ok()?.filter(|h| h.contains(what))
        })
    };
    let ifindex = common::ifindex_in(&lab.node, "lbifb0").unwrap();
    let why = lb_agent::datapath::xdp_why_text(lb_common::xdp_why::AUTO_UNSUPPORTED);
    let agent = Agent::start_with(&lab.node, &dir.0, PinDir::new("auto-ifb"), &args);
    agent.wait_log("the north-south path in tc", "north-south tc program");
    header(&agent, &format!("tc on lbifb0 ({why})"));
    assert!(agent.tcx_attached(ifindex), "lb's tc programs on lbifb0");
    let link = lab.node.ip_output(&["link", "show", "lbifb0"]).unwrap();
    assert!(!link.contains("xdp"), "no XDP on lbifb0: {link}");

    // An earlier agent's generic XDP link is replaced.
    let pins = agent.stop_keeping_pins(libc::SIGTERM);
    let generic = [&args[..], &["--xdp-mode", "generic"]].concat();
    let agent = Agent::start_with(&lab.node, &dir.0, pins, &generic);
    header(&agent, "XDP generic on lbifb0 (as requested)");
    assert!(lab.node.ip_output(&["link", "show", "lbifb0"]).unwrap().contains("xdpgeneric"));
    let pins = agent.stop_keeping_pins(libc::SIGTERM);
    let agent = Agent::start_with(&lab.node, &dir.0, pins, &args);
    agent.wait_log("the north-south path in tc", "north-south tc program");
    header(&agent, &format!("tc on lbifb0 ({why})"));
    let link = lab.node.ip_output(&["link", "show", "lbifb0"]).unwrap();
    assert!(!link.contains("xdp"), "the earlier agent's generic XDP link is gone: {link}");

    // Generic XDP asked for with an overlay of a smaller MTU: attached as
    // asked, with a warning.
    let pins = agent.stop_keeping_pins(libc::SIGTERM);
    lab.node.ip(&["link", "add", "lbvx0", "mtu", "1450", "type", "vxlan", "id", "7", "dstport", "4792", "dev", "lbifb0"]).unwrap();
    let agent = Agent::start_with(&lab.node, &dir.0, pins, &generic);
    agent.wait_log(
        "the warning about requested generic XDP and the overlay",
        "generic XDP here (--xdp-mode generic) and a pod overlay device",
    );
    header(&agent, "XDP generic on lbifb0 (as requested)");
}
