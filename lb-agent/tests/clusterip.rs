//! ClusterIP through the real datapath: an agent in a lab node, real pods,
//! real sockets.

mod common;

use std::{
    collections::BTreeMap,
    net::{SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use common::{Agent, ManifestDir, kernel_tests_enabled, service_yaml};
use lb_lab::{NodeLab, Server, tcp_request, tcp_server, udp_echo, udp_request};

const VIP: &str = "10.96.0.10";

fn vip(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(VIP.parse().unwrap(), port)
}

struct Lab {
    lab: NodeLab,
    servers: Vec<Server>,
}

/// A node with a client pod and three backend pods, each running a TCP
/// server on 8080 and a UDP echo on 5353 that answer with the pod's name.
fn lab() -> Lab {
    let lab = NodeLab::new(&["client", "web-a", "web-b", "web-c"]).unwrap();
    let mut servers = Vec::new();
    for name in ["web-a", "web-b", "web-c"] {
        let pod = lab.pod(name);
        servers.push(tcp_server(&pod.ns, SocketAddrV4::new(pod.ip, 8080), name).unwrap());
        servers.push(udp_echo(&pod.ns, SocketAddrV4::new(pod.ip, 5353), name).unwrap());
    }
    Lab { lab, servers }
}

impl Lab {
    fn ips(&self, names: &[&str]) -> Vec<std::net::Ipv4Addr> {
        names.iter().map(|n| self.lab.pod(n).ip).collect()
    }
}

fn spread(lab: &NodeLab, n: usize) -> BTreeMap<String, usize> {
    let client = &lab.pod("client").ns;
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let tag = tcp_request(client, vip(80)).unwrap_or_else(|e| panic!("request {i}: {e:#}"));
        *counts.entry(tag).or_default() += 1;
    }
    counts
}

#[test]
fn tcp_connections_spread_over_three_backends() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = lab();
    let dir = ManifestDir::new("spread");
    let ips = lab.ips(&["web-a", "web-b", "web-c"]);
    dir.write("web.yaml", &service_yaml("web", VIP, 80, "TCP", 8080, &ips));
    let agent = Agent::start(&lab.lab.node, &dir.0, "spread");
    agent.wait_rows("3 backends", |rows| rows.len() == 1 && rows[0].backends.len() == 3);

    let counts = spread(&lab.lab, 300);
    assert_eq!(counts.values().sum::<usize>(), 300);
    for name in ["web-a", "web-b", "web-c"] {
        let got = counts.get(name).copied().unwrap_or(0);
        // Uniform random choice: each expects 100; 40 is > 8 sigma away.
        assert!(got >= 40, "{name} got {got} of 300: {counts:?}");
    }
    let served: u64 = lab.servers.iter().map(Server::hits).sum();
    assert_eq!(served, 300, "every connection reached a backend once");
    let conntrack = agent.maps().ct.entries().unwrap().len();
    assert!(conntrack >= 2 * 300, "both directions of each flow recorded, got {conntrack}");
}

#[test]
fn connected_udp_socket_gets_replies_from_the_cluster_ip() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = lab();
    let dir = ManifestDir::new("udp");
    let ips = lab.ips(&["web-a", "web-b", "web-c"]);
    dir.write("dns.yaml", &service_yaml("dns", VIP, 53, "UDP", 5353, &ips));
    let agent = Agent::start(&lab.lab.node, &dir.0, "udp");
    agent.wait_rows("the UDP service", |rows| rows.len() == 1 && rows[0].backends.len() == 3);

    let client = &lab.lab.pod("client").ns;
    for i in 0..20 {
        // A connected socket only accepts datagrams from the address it is
        // connected to: a reply proves the reverse NAT.
        let (reply, peer) =
            udp_request(client, vip(53), &format!("q{i}")).unwrap_or_else(|e| panic!("query {i}: {e:#}\n{}", agent.log_text()));
        assert!(reply.starts_with("web-") && reply.ends_with(&format!(":q{i}")), "{reply}");
        assert_eq!(peer, SocketAddr::V4(vip(53)));
    }
}

#[test]
fn host_namespace_client_reaches_the_cluster_ip() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = lab();
    let dir = ManifestDir::new("host");
    let ips = lab.ips(&["web-a", "web-b", "web-c"]);
    dir.write("web.yaml", &service_yaml("web", VIP, 80, "TCP", 8080, &ips));
    dir.write("dns.yaml", &service_yaml("dns", "10.96.0.53", 53, "UDP", 5353, &ips));
    let agent = Agent::start(&lab.lab.node, &dir.0, "host");
    agent.wait_rows("both services", |rows| rows.len() == 2);

    let node = &lab.lab.node;
    let mut seen = BTreeMap::<String, usize>::new();
    for i in 0..30 {
        let tag = tcp_request(node, vip(80)).unwrap_or_else(|e| panic!("host request {i}: {e:#}\n{}", agent.log_text()));
        *seen.entry(tag).or_default() += 1;
    }
    assert!(seen.len() >= 2, "host connections were balanced too: {seen:?}");
    let dns = SocketAddrV4::new("10.96.0.53".parse().unwrap(), 53);
    let (reply, peer) = udp_request(node, dns, "hi").unwrap();
    assert!(reply.ends_with(":hi"), "{reply}");
    // getpeername4/recvmsg4 turn the backend back into the frontend.
    assert_eq!(peer, SocketAddr::V4(dns));
    // Other namespaces are left alone by the socket hooks: a pod's socket
    // is served by tc, which must still see the VIP.
    assert!(tcp_request(&lab.lab.pod("client").ns, vip(80)).is_ok());
}

/// The IPv4 socket hooks' refusals and session affinity, for host clients:
/// a ClusterIP port no Service defines is refused; an
/// `internalTrafficPolicy: Local` Service with no endpoint on this node
/// has no route to one; ClientIP affinity pins the host (one client) to
/// one backend.
#[test]
fn host_sockets_are_refused_where_nothing_serves_and_keep_their_affinity() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = lab();
    let dir = ManifestDir::new("host-verdicts");
    let ips = lab.ips(&["web-a", "web-b", "web-c"]);
    let sticky = service_yaml("web", VIP, 80, "TCP", 8080, &ips).replace("  ports:", "  sessionAffinity: ClientIP\n  ports:");
    dir.write("web.yaml", &sticky);
    let local = service_yaml("local", "10.96.0.20", 80, "TCP", 8080, &ips[..1])
        .replace("  ports:", "  internalTrafficPolicy: Local\n  ports:")
        .replace("  conditions:", "  nodeName: node-2\n  conditions:");
    dir.write("local.yaml", &local);
    let agent = Agent::start_with(&lab.lab.node, &dir.0, common::PinDir::new("host-verdicts"), &["--node-name", "node-1"]);
    agent.wait_rows("both services", |rows| rows.len() == 2);
    let node = &lab.lab.node;

    let started = Instant::now();
    let err = tcp_request(node, vip(81)).expect_err("no Service on port 81");
    assert!(lb_lab::is_connection_refused(&err), "an unserved ClusterIP port: {err:#}");
    let local_vip = SocketAddrV4::new("10.96.0.20".parse().unwrap(), 80);
    let err = tcp_request(node, local_vip).expect_err("no local endpoint");
    assert_eq!(lb_lab::io_error(&err).and_then(std::io::Error::raw_os_error), Some(libc::EHOSTUNREACH), "{err:#}");
    assert!(started.elapsed() < Duration::from_secs(1), "refusals are immediate, not timeouts");

    let mut seen = BTreeMap::<String, usize>::new();
    for i in 0..20 {
        let tag = tcp_request(node, vip(80)).unwrap_or_else(|e| panic!("host request {i}: {e:#}\n{}", agent.log_text()));
        *seen.entry(tag).or_default() += 1;
    }
    assert_eq!(seen.len(), 1, "ClientIP affinity holds for host sockets: {seen:?}");
}

#[test]
fn manifest_changes_apply_without_restart() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = lab();
    let dir = ManifestDir::new("live");
    let all = lab.ips(&["web-a", "web-b", "web-c"]);
    dir.write("web.yaml", &service_yaml("web", VIP, 80, "TCP", 8080, &all));
    let agent = Agent::start(&lab.lab.node, &dir.0, "live");
    let before = agent.wait_rows("3 backends", |rows| rows.len() == 1 && rows[0].backends.len() == 3);

    // Scale to two backends.
    let two = lab.ips(&["web-a", "web-b"]);
    dir.write("web.yaml", &service_yaml("web", VIP, 80, "TCP", 8080, &two));
    let after = agent.wait_rows("2 backends", |rows| rows.len() == 1 && rows[0].backends.len() == 2);
    assert_eq!(before[0].id, after[0].id, "the frontend keeps its ID across updates");
    let counts = spread(&lab.lab, 60);
    assert!(!counts.contains_key("web-c"), "web-c was scaled away: {counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");

    // Delete the Service.
    dir.remove("web.yaml");
    agent.wait_rows("no frontends", |rows| rows.is_empty());
    let backends = agent.maps().live_backends().unwrap();
    assert!(backends.is_empty(), "unused backends are removed: {backends:?}");
    let err = tcp_request(&lab.lab.pod("client").ns, vip(80)).expect_err("the VIP is gone");
    assert!(!format!("{err:#}").is_empty());
}

#[test]
fn service_without_endpoints_rejects_instead_of_blackholing() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = lab();
    let dir = ManifestDir::new("reject");
    dir.write("web.yaml", &service_yaml("web", VIP, 80, "TCP", 8080, &[]));
    dir.write("dns.yaml", &service_yaml("dns", VIP, 53, "UDP", 5353, &[]));
    let agent = Agent::start(&lab.lab.node, &dir.0, "reject");
    agent.wait_rows("two empty services", |rows| rows.len() == 2 && rows.iter().all(|r| r.backends.is_empty()));

    let client = &lab.lab.pod("client").ns;
    let started = Instant::now();
    let err = tcp_request(client, vip(80)).expect_err("no endpoints");
    assert!(lb_lab::is_connection_refused(&err), "TCP from a pod: {err:#}");
    let err = udp_request(client, vip(53), "q").expect_err("no endpoints");
    assert!(lb_lab::is_connection_refused(&err), "UDP from a pod: {err:#}");
    let err = tcp_request(&lab.lab.node, vip(80)).expect_err("no endpoints");
    assert!(lb_lab::is_connection_refused(&err), "TCP from the host: {err:#}");
    assert!(started.elapsed() < Duration::from_secs(1), "rejections are immediate, not timeouts");
}

#[test]
fn bad_manifest_is_skipped_with_a_warning_and_the_rest_loads() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = lab();
    let dir = ManifestDir::new("bad");
    let ips = lab.ips(&["web-a"]);
    dir.write("good.yaml", &service_yaml("web", VIP, 80, "TCP", 8080, &ips));
    dir.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: test}\nspec:\n  clusterIP: 10.96.0.11\n  ports: [{port: eighty}]\n",
    );
    let agent = Agent::start(&lab.lab.node, &dir.0, "bad");
    agent.wait_rows("the good service", |rows| rows.len() == 1);
    assert_eq!(tcp_request(&lab.lab.pod("client").ns, vip(80)).unwrap(), "web-a");
    let log = common::wait_for("the warning", Duration::from_secs(5), || {
        let log = agent.log_text();
        log.contains("bad.yaml").then_some(log)
    });
    let line = log.lines().find(|l| l.contains("bad.yaml")).unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("Service test/broken"), "{line}");
    assert!(line.contains("spec.ports[0].port"), "{line}");
}
