use super::*;
use crate::{
    model::Protocol,
    source::manifest::{Objects, parse_into},
    translate::{TranslateOptions, translate},
};

fn run(yaml: &str) -> Translation {
    let mut objects = Objects::default();
    parse_into("t.yaml", yaml, &mut objects);
    assert!(objects.problems.is_empty(), "{:?}", objects.problems);
    translate(&objects.services, &objects.slices, &TranslateOptions::default())
}

fn node(name: &str) -> NodeInfo {
    NodeInfo {
        node_name: Some(name.into()),
        node_ips: vec!["192.168.50.1".parse().unwrap(), "10.0.0.1".parse().unwrap()],
        node_ips6: vec!["fd00:50::1".parse().unwrap()],
        nodeport_range: DEFAULT_NODEPORT_RANGE,
        zone: None,
    }
}

fn fa(s: &str, proto: Protocol) -> FrontendAddr {
    let a: std::net::SocketAddrV4 = s.parse().unwrap();
    FrontendAddr::new(*a.ip(), a.port(), proto)
}

fn backends(p: &Plan, addr: FrontendAddr) -> Vec<String> {
    p.frontends[&addr].backends.iter().map(|b| b.addr.ip.to_string()).collect()
}

fn svc(policy: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalTrafficPolicy: {policy}
  externalIPs: [192.168.60.5]
  loadBalancerSourceRanges: [192.168.50.0/24]
  healthCheckNodePort: 32000
  ports:
  - {{name: http, port: 80, protocol: TCP, nodePort: 30080}}
  - {{name: dns, port: 53, protocol: UDP, nodePort: 30053}}
{extra}status:
  loadBalancer:
    ingress: [{{ip: 192.168.60.10}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: dns, port: 5353, protocol: UDP}}
endpoints:
- addresses: [10.244.1.10]
  nodeName: node-a
- addresses: [10.244.2.10]
  nodeName: node-b
- addresses: [10.244.1.11]
  nodeName: node-a
  conditions: {{ready: false, serving: true, terminating: true}}
"#
    )
}

#[test]
fn cluster_policy_frontends_on_every_node_address() {
    let t = run(&svc("Cluster", ""));
    let p = plan(&t, &node("node-a"));
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    // 2 ports x (2 node addresses + 1 external IP + 1 LB IP).
    assert_eq!(p.frontends.len(), 8, "{:#?}", p.frontends.keys().collect::<Vec<_>>());
    for (addr, kind) in [
        ("192.168.50.1:30080", svc_flags::NODE_PORT),
        ("10.0.0.1:30080", svc_flags::NODE_PORT),
        ("192.168.60.5:80", svc_flags::EXTERNAL_IP),
        ("192.168.60.10:80", svc_flags::LOAD_BALANCER | svc_flags::SOURCE_RANGES),
    ] {
        let f = &p.frontends[&fa(addr, Protocol::Tcp)];
        assert_eq!(f.flags, kind, "{addr}");
        assert_eq!(f.name, "demo/web:http");
        assert_eq!(backends(&p, fa(addr, Protocol::Tcp)), ["10.244.1.10", "10.244.2.10", "10.244.1.11"]);
    }
    assert!(p.frontends.contains_key(&fa("192.168.50.1:30053", Protocol::Udp)));
    // Source ranges only on the LoadBalancer IPs, as kube-proxy.
    assert_eq!(p.source_ranges.len(), 2);
    assert!(p.source_ranges.contains_key(&fa("192.168.60.10:53", Protocol::Udp)));
    // The health check port is only for Local.
    assert!(p.health_checks.is_empty());
}

#[test]
fn local_policy_keeps_this_nodes_endpoints_and_counts_them() {
    let t = run(&svc("Local", ""));
    let a = plan(&t, &node("node-a"));
    let f = &a.frontends[&fa("192.168.50.1:30080", Protocol::Tcp)];
    assert_eq!(f.flags, svc_flags::NODE_PORT | svc_flags::EXT_LOCAL | svc_flags::HAS_INTERNAL);
    assert_eq!(backends(&a, fa("192.168.50.1:30080", Protocol::Tcp)), ["10.244.1.10", "10.244.1.11"]);
    let svc = ServiceRef { namespace: "demo".into(), name: "web".into() };
    // Ready local endpoints only (the terminating one is not counted).
    assert_eq!(a.health_checks[&svc], (32000, 1));

    // A node without endpoints keeps the frontends, with no backend (drop),
    // and reports 0.
    let c = plan(&t, &node("node-c"));
    assert!(c.frontends[&fa("192.168.50.1:30080", Protocol::Tcp)].backends.is_empty());
    assert_eq!(c.health_checks[&svc], (32000, 0));
    assert_eq!(
        c.frontends[&fa("192.168.50.1:30080", Protocol::Tcp)].flags,
        svc_flags::NODE_PORT | svc_flags::EXT_LOCAL | svc_flags::HAS_INTERNAL
    );
    // The ClusterIP frontend is untouched: all endpoints.
    assert_eq!(t.desired[&fa("10.96.0.10:80", Protocol::Tcp)].backends.len(), 3);
}

#[test]
fn local_policy_gives_clients_inside_the_cluster_every_endpoint() {
    let t = run(&svc("Local", ""));
    for n in ["node-a", "node-c"] {
        let p = plan(&t, &node(n));
        // Every external address (2 node addresses, the external IP, the
        // LB IP; 2 ports) has a second entry for pods and the host, with
        // every endpoint and no Local flag, as kube-proxy's short-circuit
        // to the cluster chain.
        assert_eq!(p.frontends.len(), 16, "{n}: {:#?}", p.frontends.keys().collect::<Vec<_>>());
        for (addr, kind) in [
            ("192.168.50.1:30080", svc_flags::NODE_PORT),
            ("10.0.0.1:30080", svc_flags::NODE_PORT),
            ("192.168.60.5:80", svc_flags::EXTERNAL_IP),
            ("192.168.60.10:80", svc_flags::LOAD_BALANCER),
        ] {
            let inner = fa(addr, Protocol::Tcp).internal();
            // The LoadBalancer IP's ranges bind clients inside the cluster
            // too (kube-proxy's firewall chains come before its
            // short-circuit).
            let ranges = if kind == svc_flags::LOAD_BALANCER { svc_flags::SOURCE_RANGES } else { 0 };
            assert_eq!(p.frontends[&inner].flags, kind | ranges, "{n} {addr}");
            assert_eq!(p.source_ranges.contains_key(&inner), ranges != 0, "{n} {addr}");
            assert_eq!(p.frontends[&inner].addr.key().scope, lb_common::SCOPE_INTERNAL);
            assert_eq!(backends(&p, inner), ["10.244.1.10", "10.244.2.10", "10.244.1.11"], "{n} {addr}");
            assert_ne!(p.frontends[&fa(addr, Protocol::Tcp)].flags & svc_flags::HAS_INTERNAL, 0, "{n} {addr}");
        }
        // The LoadBalancer IP's two ports, each entry.
        assert_eq!(p.source_ranges.len(), 4);
    }

    // Where every endpoint is local, one entry serves everyone.
    let only_a = svc("Local", "").replace("- addresses: [10.244.2.10]\n  nodeName: node-b\n", "");
    let p = plan(&run(&only_a), &node("node-a"));
    assert_eq!(p.frontends.len(), 8, "{:#?}", p.frontends.keys().collect::<Vec<_>>());
    assert_eq!(p.frontends[&fa("192.168.50.1:30080", Protocol::Tcp)].flags, svc_flags::NODE_PORT | svc_flags::EXT_LOCAL);
    // The Cluster policy needs no second entry.
    let p = plan(&run(&svc("Cluster", "")), &node("node-a"));
    assert!(p.frontends.keys().all(|a| a.scope == crate::model::Scope::External));
}

#[test]
fn node_ports_outside_the_range_and_clashes_are_reported() {
    let t = run(&svc("Cluster", ""));
    let mut n = node("node-a");
    n.nodeport_range = PortRange { min: 30_060, max: 30_070 };
    let p = plan(&t, &n);
    assert!(!p.frontends.contains_key(&fa("192.168.50.1:30080", Protocol::Tcp)));
    assert!(!p.frontends.contains_key(&fa("192.168.50.1:30053", Protocol::Udp)));
    assert!(p.problems.iter().any(|m| m.contains("nodePort 30080 is outside the NodePort range 30060-30070")), "{:?}", p.problems);

    // An external IP that is some other Service's ClusterIP is not taken.
    let mut n = node("node-a");
    n.node_ips = vec!["10.96.0.10".parse().unwrap()];
    let t = run(&svc("Cluster", "").replace("externalIPs: [192.168.60.5]", "externalIPs: [10.96.0.10]"));
    let p = plan(&t, &n);
    assert!(p.problems.iter().any(|m| m.contains("10.96.0.10:80/TCP already belongs to demo/web:http")), "{:?}", p.problems);
}

/// The IPv6 EndpointSlice of the dual-stack `svc`: one ready endpoint on
/// each node, one terminating on node-a.
const SLICE6: &str = r#"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-6, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: ["fd00:244:1::10"]
  nodeName: node-a
- addresses: ["fd00:244:2::10"]
  nodeName: node-b
- addresses: ["fd00:244:1::11"]
  nodeName: node-a
  conditions: {ready: false, serving: true, terminating: true}
"#;

fn dual_stack(policy: &str) -> String {
    svc(policy, "")
        .replace("clusterIP: 10.96.0.10", "clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, \"fd00:96::10\"]\n  ipFamilies: [IPv4, IPv6]")
        .replace("externalIPs: [192.168.60.5]", "externalIPs: [192.168.60.5, \"fd00:60::5\"]")
        .replace("ingress: [{ip: 192.168.60.10}]", "ingress: [{ip: 192.168.60.10}, {ip: \"fd00:60::10\"}]")
        + SLICE6
}

fn fa6(s: &str, proto: Protocol) -> FrontendAddr<Ipv6Addr> {
    let a: std::net::SocketAddrV6 = s.parse().unwrap();
    FrontendAddr::new(*a.ip(), a.port(), proto)
}

fn backends6(p: &Plan, addr: FrontendAddr<Ipv6Addr>) -> Vec<String> {
    p.frontends6[&addr].backends.iter().map(|b| b.addr.ip.to_string()).collect()
}

#[test]
fn ipv6_north_south_frontends_of_a_dual_stack_service() {
    let t = run(&dual_stack("Cluster"));
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let p = plan(&t, &node("node-a"));
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    // IPv4 as before; IPv6: 2 ports x (1 node address + 1 external IP + 1
    // LB IP), with the kinds of IPv4's and the IPv6 endpoints.
    assert_eq!(p.frontends.len(), 8, "{:#?}", p.frontends.keys().collect::<Vec<_>>());
    assert_eq!(p.frontends6.len(), 6, "{:#?}", p.frontends6.keys().collect::<Vec<_>>());
    for (addr, proto, kind) in [
        ("[fd00:50::1]:30080", Protocol::Tcp, svc_flags::NODE_PORT),
        ("[fd00:50::1]:30053", Protocol::Udp, svc_flags::NODE_PORT),
        ("[fd00:60::5]:80", Protocol::Tcp, svc_flags::EXTERNAL_IP),
        ("[fd00:60::5]:53", Protocol::Udp, svc_flags::EXTERNAL_IP),
        ("[fd00:60::10]:80", Protocol::Tcp, svc_flags::LOAD_BALANCER),
        ("[fd00:60::10]:53", Protocol::Udp, svc_flags::LOAD_BALANCER),
    ] {
        let fe = &p.frontends6[&fa6(addr, proto)];
        // The IPv4 source range says nothing about IPv6 clients.
        assert_eq!(fe.flags, kind, "{addr}");
        assert_eq!(fe.name, if proto == Protocol::Tcp { "demo/web:http" } else { "demo/web:dns" });
        assert_eq!(backends6(&p, fa6(addr, proto)), ["fd00:244:1::10", "fd00:244:2::10", "fd00:244:1::11"], "{addr}");
    }
}

#[test]
fn ipv6_local_policy_keeps_local_endpoints_and_an_in_cluster_entry() {
    let t = run(&dual_stack("Local"));
    let p = plan(&t, &node("node-a"));
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let np = fa6("[fd00:50::1]:30080", Protocol::Tcp);
    assert_eq!(backends6(&p, np), ["fd00:244:1::10", "fd00:244:1::11"]);
    assert_eq!(p.frontends6[&np].flags, svc_flags::NODE_PORT | svc_flags::EXT_LOCAL | svc_flags::HAS_INTERNAL);
    // Pods and the host get every endpoint at the same address.
    let inner = &p.frontends6[&np.internal()];
    assert_eq!(inner.flags, svc_flags::NODE_PORT);
    assert_eq!(inner.backends.len(), 3);
    // One ready local endpoint per family: the pod is counted once.
    assert_eq!(p.health_checks[&ServiceRef { namespace: "demo".into(), name: "web".into() }], (32000, 1));
    // On node-c (no endpoint): Local frontends with no backend (drop).
    let p = plan(&t, &node("node-c"));
    assert!(p.frontends6[&np].backends.is_empty());
    assert_ne!(p.frontends6[&np].flags & svc_flags::EXT_LOCAL, 0);
}

#[test]
fn ipv6_source_ranges_apply_to_the_ipv6_lb_ip() {
    // IPv6 ranges restrict the IPv6 LoadBalancer IPs (and only those, as
    // for IPv4); each family's frontends get the whole list, the
    // reconciler writes the ranges of the frontend's family.
    let yaml = dual_stack("Cluster")
        .replace("loadBalancerSourceRanges: [192.168.50.0/24]", "loadBalancerSourceRanges: [192.168.50.0/24, \"fd00:50::/64\"]");
    let p = plan(&run(&yaml), &node("node-a"));
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    assert_eq!(p.frontends6.len(), 6);
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let port = if proto == Protocol::Tcp { 80 } else { 53 };
        let lb = fa6(&format!("[fd00:60::10]:{port}"), proto);
        assert_eq!(p.frontends6[&lb].flags, svc_flags::LOAD_BALANCER | svc_flags::SOURCE_RANGES);
        assert_eq!(p.source_ranges6[&lb].iter().map(ToString::to_string).collect::<Vec<_>>(), ["192.168.50.0/24", "fd00:50::/64"]);
    }
    assert_eq!(p.source_ranges6.len(), 2);
    // NodePorts and external IPs are not restricted.
    assert_eq!(p.frontends6[&fa6("[fd00:50::1]:30080", Protocol::Tcp)].flags, svc_flags::NODE_PORT);
    assert_eq!(p.frontends6[&fa6("[fd00:60::5]:80", Protocol::Tcp)].flags, svc_flags::EXTERNAL_IP);
    // IPv4 unchanged.
    assert_eq!(p.frontends[&fa("192.168.60.10:80", Protocol::Tcp)].flags, svc_flags::LOAD_BALANCER | svc_flags::SOURCE_RANGES);
    assert_eq!(p.source_ranges.len(), 2);
}

#[test]
fn ipv6_internal_traffic_policy_local_keeps_this_nodes_endpoints() {
    let yaml = dual_stack("Cluster").replace("status:\n", "  internalTrafficPolicy: Local\nstatus:\n");
    let t = run(&yaml);
    let cluster6 = fa6("[fd00:96::10]:80", Protocol::Tcp);
    assert_eq!(t.desired6[&cluster6].backends.len(), 3, "the translation has every endpoint");
    let p = plan(&t, &node("node-a"));
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    // Both families' ClusterIPs get this node's endpoints only.
    let inner = &p.internal6[&cluster6];
    assert_eq!(inner.backends.iter().map(|b| b.addr.ip.to_string()).collect::<Vec<_>>(), ["fd00:244:1::10", "fd00:244:1::11"]);
    assert_ne!(inner.flags & svc_flags::INT_LOCAL, 0);
    assert_eq!(p.internal6.len(), 2, "both ports");
    assert_eq!(p.internal[&fa("10.96.0.10:80", Protocol::Tcp)].backends.len(), 2);
    // Not the north-south frontends (externalTrafficPolicy: Cluster).
    assert_eq!(backends6(&p, fa6("[fd00:50::1]:30080", Protocol::Tcp)).len(), 3);
    // A node without endpoints: none (in-cluster clients are dropped).
    let p = plan(&t, &node("node-c"));
    assert!(p.internal6[&cluster6].backends.is_empty());
    assert_ne!(p.internal6[&cluster6].flags & svc_flags::INT_LOCAL, 0);
}

#[test]
fn ipv6_topology_hints_narrow_the_ipv6_endpoints() {
    // Zone hints on the IPv6 slice only (its controller writes each
    // slice's own): node-a in zone-a gets the zone-a endpoints of IPv6,
    // every IPv4 endpoint.
    let yaml = dual_stack("Cluster")
        .replace(
            "- addresses: [\"fd00:244:1::10\"]\n  nodeName: node-a",
            "- addresses: [\"fd00:244:1::10\"]\n  nodeName: node-a\n  hints: {forZones: [{name: zone-a}]}",
        )
        .replace(
            "- addresses: [\"fd00:244:2::10\"]\n  nodeName: node-b",
            "- addresses: [\"fd00:244:2::10\"]\n  nodeName: node-b\n  hints: {forZones: [{name: zone-b}]}",
        )
        .replace(
            "- addresses: [\"fd00:244:1::11\"]\n  nodeName: node-a",
            "- addresses: [\"fd00:244:1::11\"]\n  nodeName: node-a\n  hints: {forZones: [{name: zone-a}]}",
        );
    let t = run(&yaml);
    let in_zone = |zone: &str| NodeInfo { zone: Some(zone.into()), ..node("node-a") };
    let p = plan(&t, &in_zone("zone-a"));
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let cluster6 = fa6("[fd00:96::10]:80", Protocol::Tcp);
    let ips = |f: &Frontend<Ipv6Addr>| f.backends.iter().map(|b| b.addr.ip.to_string()).collect::<Vec<_>>();
    assert_eq!(ips(&p.internal6[&cluster6]), ["fd00:244:1::10", "fd00:244:1::11"]);
    // The north-south frontends (Cluster policy) follow the hints too.
    assert_eq!(backends6(&p, fa6("[fd00:50::1]:30080", Protocol::Tcp)), ["fd00:244:1::10", "fd00:244:1::11"]);
    assert_eq!(backends6(&p, fa6("[fd00:60::10]:80", Protocol::Tcp)), ["fd00:244:1::10", "fd00:244:1::11"]);
    // IPv4 has no hints: untouched.
    assert!(p.internal.is_empty(), "{:?}", p.internal.keys().collect::<Vec<_>>());
    // zone-b's node: its endpoint.
    let p = plan(&t, &in_zone("zone-b"));
    assert_eq!(ips(&p.internal6[&cluster6]), ["fd00:244:2::10"]);
    // No zone label: every endpoint (no internal entry).
    let p = plan(&t, &node("node-a"));
    assert!(p.internal6.is_empty());
}

#[test]
fn addresses_of_a_family_without_a_cluster_ip_are_reported_not_dropped_silently() {
    // IPv6-only: its IPv4 addresses are named; the IPv6 ones (and the
    // NodePorts, on the IPv6 node address) are served.
    let yaml = svc("Cluster", "")
        .replace("clusterIP: 10.96.0.10", "clusterIPs: [\"fd00:96::10\"]\n  ipFamilies: [IPv6]")
        .replace("externalIPs: [192.168.60.5]", "externalIPs: [192.168.60.5, \"fd00:60::5\"]")
        + SLICE6;
    let p = plan(&run(&yaml), &node("node-a"));
    assert!(p.frontends.is_empty(), "{:#?}", p.frontends.keys().collect::<Vec<_>>());
    assert_eq!(p.frontends6.len(), 4, "{:#?}", p.frontends6.keys().collect::<Vec<_>>());
    assert!(p.frontends6.contains_key(&fa6("[fd00:50::1]:30080", Protocol::Tcp)));
    assert!(p.frontends6.contains_key(&fa6("[fd00:60::5]:53", Protocol::Udp)));
    assert_eq!(
        p.problems.iter().map(String::as_str).collect::<Vec<_>>(),
        [
            "Service demo/web: LoadBalancer IP 192.168.60.10 is not served: the Service has no IPv4 ClusterIP",
            "Service demo/web: external IP 192.168.60.5 is not served: the Service has no IPv4 ClusterIP",
        ]
    );
}

#[test]
fn ipv6_nodeport_addresses_follow_the_interfaces_and_the_filter() {
    let a = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let addrs = [("ext0".to_string(), a("fd00:50::1")), ("eth9".to_string(), a("fd00:99::1")), ("ext0".to_string(), a("2001:db8::1"))];
    let ifaces = ["ext0".to_string()];
    let plan = |configured: &[Ipv6Addr], node: &[Ipv6Addr], filter: &[&str]| {
        let filter: Vec<NodePortAddress> = filter.iter().map(|s| s.parse().unwrap()).collect();
        FamilyAddresses { configured: configured.to_vec(), node_primary: node.to_vec() }.plan(&filter, &ifaces, &addrs).1
    };
    // The external interfaces' addresses.
    assert_eq!(plan(&[], &[], &[]), [a("fd00:50::1"), a("2001:db8::1")]);
    // IPv6 CIDRs of --nodeport-addresses pick any address of the node.
    assert_eq!(plan(&[], &[], &["fd00::/16"]), [a("fd00:50::1"), a("fd00:99::1")]);
    // IPv4 CIDRs alone say nothing about IPv6: every IPv6 address of the
    // node, as kube-proxy (`::/0` for a family without CIDRs).
    assert_eq!(plan(&[], &[], &["10.0.0.0/8"]), [a("fd00:50::1"), a("fd00:99::1"), a("2001:db8::1")]);
    // IPv6 --node-ips: those.
    assert_eq!(plan(&[a("fd00:99::1")], &[], &[]), [a("fd00:99::1")]);
    // `primary`: the IPv6 --node-ips, else the Node's IPv6 address, else
    // the first node address.
    assert_eq!(plan(&[a("fd00:99::1")], &[a("2001:db8::1")], &["primary"]), [a("fd00:99::1")]);
    assert_eq!(plan(&[], &[a("2001:db8::1")], &["primary"]), [a("2001:db8::1")]);
    assert_eq!(plan(&[], &[], &["primary"]), [a("fd00:50::1")]);
}

#[test]
fn port_ranges_parse() {
    assert_eq!("30000-32767".parse::<PortRange>().unwrap(), DEFAULT_NODEPORT_RANGE);
    assert!("0-10".parse::<PortRange>().is_err());
    assert!("20-10".parse::<PortRange>().is_err());
    assert!("abc".parse::<PortRange>().is_err());
}

#[test]
fn snat_ports_must_stay_out_of_the_nodeport_range_and_should_stay_out_of_the_ephemeral_one() {
    let r = |s: &str| s.parse::<PortRange>().unwrap();
    assert_eq!(check_snat_ports(DEFAULT_SNAT_PORTS, DEFAULT_NODEPORT_RANGE), Ok(()));
    let err = check_snat_ports(r("32000-33000"), DEFAULT_NODEPORT_RANGE).unwrap_err();
    assert!(err.contains("--snat-ports 32000-33000 overlaps --nodeport-range 30000-32767"), "{err}");
    assert!(check_snat_ports(r("32767-32767"), DEFAULT_NODEPORT_RANGE).is_err(), "one port shared");
    // Linux's default ephemeral range ends below the default SNAT ports.
    assert_eq!(snat_ports_warning(DEFAULT_SNAT_PORTS, r("32768-60999")), None);
    let w = snat_ports_warning(DEFAULT_SNAT_PORTS, r("1024-65535")).unwrap();
    assert!(w.contains("ip_local_port_range 1024-65535"), "{w}");
}

#[test]
fn local_policy_without_any_endpoint_rejects_like_kube_proxy() {
    let yaml = svc("Local", "");
    let cut = yaml.find("endpoints:\n").unwrap();
    let t = run(&format!("{}endpoints: []\n", &yaml[..cut]));
    let p = plan(&t, &node("node-a"));
    // No EXT_LOCAL: the XDP program answers with ICMP instead of dropping.
    assert_eq!(p.frontends[&fa("192.168.50.1:30080", Protocol::Tcp)].flags, svc_flags::NODE_PORT);
}

#[test]
fn node_addresses_are_those_of_the_external_interfaces_unless_configured() {
    let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let addrs = vec![
        ("lo".to_string(), a("127.0.0.1")),
        ("eth0".to_string(), a("192.168.50.1")),
        ("lxc1".to_string(), a("10.244.1.1")),
        ("eth1".to_string(), a("172.16.0.1")),
        ("eth0".to_string(), a("192.168.50.11")),
    ];
    let ifaces = ["eth1".to_string(), "eth0".to_string()];
    assert_eq!(node_addresses(&[], &ifaces, &addrs), [a("172.16.0.1"), a("192.168.50.1"), a("192.168.50.11")]);
    assert_eq!(node_addresses(&[a("10.0.0.1")], &ifaces, &addrs), [a("10.0.0.1")]);
    assert!(node_addresses(&[], &["eth9".to_string()], &addrs).is_empty());
}

#[test]
fn address_changes_say_what_came_and_went() {
    let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let old = [a("192.168.50.1"), a("192.168.50.11")];
    let new = [a("192.168.50.11"), a("192.168.50.12")];
    let c = AddressChange::between(&old, &new);
    assert_eq!(c.added, [a("192.168.50.12")]);
    assert_eq!(c.removed, [a("192.168.50.1")]);
    assert!(AddressChange::between(&old, &[old[1], old[0]]).is_empty(), "the order does not matter");
}

#[test]
fn the_snat_address_stays_while_it_is_a_node_address() {
    let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let (one, two) = (a("192.168.50.1"), a("192.168.50.11"));
    // The first address at start-up.
    assert_eq!(snat_address(None, None, &[one, two]), Some(one));
    // An address added before it does not move it.
    assert_eq!(snat_address(None, Some(one), &[two, one]), Some(one));
    // Removed: the first remaining address.
    assert_eq!(snat_address(None, Some(one), &[two]), Some(two));
    // No address left: keep the old one rather than none.
    assert_eq!(snat_address(None, Some(one), &[]), Some(one));
    assert_eq!(snat_address::<Ipv4Addr>(None, None, &[]), None);
    // Configured: always that one.
    assert_eq!(snat_address(Some(a("10.0.0.9")), Some(one), &[two]), Some(a("10.0.0.9")));
}

#[test]
fn the_ipv6_snat_address_is_chosen_as_ipv4s_from_the_external_interfaces() {
    let ifaces = ["eth0".to_string(), "eth1".to_string()];
    let a = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let addrs6 = [("eth1".to_string(), a("fd00:51::1")), ("lo9".to_string(), a("fd00:99::1")), ("eth0".to_string(), a("fd00:50::1"))];
    // The first global address of the external interfaces, in their order.
    let base = node_addresses(&[], &ifaces, &addrs6);
    assert_eq!(snat_address(None, None, &base), Some(a("fd00:50::1")));
    // Kept while it stays; `--snat-ip6` wins.
    assert_eq!(snat_address(None, Some(a("fd00:51::1")), &base), Some(a("fd00:51::1")));
    assert_eq!(snat_address(Some(a("fd00:77::7")), None, &base), Some(a("fd00:77::7")));
    // None at all: `::` in LB6_NODE (the datapath passes such flows).
    assert_eq!(node6_config(None, 128).snat_addr, [0; 4]);
    assert_eq!(lb_common::ipv6(node6_config(Some(a("fd00:50::1")), 128).snat_addr), a("fd00:50::1"));
    // The affinity prefix, as the bits it ignores (0: the whole address,
    // also a zeroed map's).
    assert_eq!(node6_config(None, 128).affinity_host_bits, 0);
    assert_eq!(node6_config(None, 64).affinity_host_bits, 64);
    assert_eq!(node6_config(None, 64).affinity_prefix(), 64);
    assert_eq!(node6_config(None, 0).affinity_prefix(), 0);
    assert_eq!(lb_common::Node6Config::default().affinity_prefix(), 128);
}

#[test]
fn nodeport_addresses_parse_as_kube_proxys_flag() {
    assert_eq!("primary".parse::<NodePortAddress>().unwrap(), NodePortAddress::Primary);
    let c: NodePortAddress = "192.168.50.0/24".parse().unwrap();
    assert_eq!(c.to_string(), "192.168.50.0/24");
    // IPv6 blocks are accepted (and match no IPv4 address).
    assert!(matches!("fd00::/64".parse::<NodePortAddress>().unwrap(), NodePortAddress::Cidr(_)));
    for bad in ["192.168.50.1", "all", "10.0.0.0/33"] {
        let e = bad.parse::<NodePortAddress>().unwrap_err();
        assert!(e.contains("a CIDR or `primary`"), "{bad}: {e}");
    }
}

#[test]
fn nodeport_addresses_pick_the_node_addresses_inside_the_cidrs_or_primary() {
    let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let addrs = vec![
        ("lo".to_string(), a("127.0.0.1")),
        ("eth0".to_string(), a("192.168.50.1")),
        ("eth0".to_string(), a("192.168.50.9")),
        ("eth1".to_string(), a("10.0.0.1")),
        ("cni0".to_string(), a("10.244.1.1")),
    ];
    let f = |items: &[&str]| items.iter().map(|i| i.parse::<NodePortAddress>().unwrap()).collect::<Vec<_>>();
    let node_ips = [a("192.168.50.1"), a("192.168.50.9")];
    // Unset: the node addresses, as before.
    assert_eq!(nodeport_addresses(&[], &node_ips, &addrs, &[]), node_ips);
    // CIDRs: any interface's address inside one, never loopback.
    assert_eq!(nodeport_addresses(&f(&["10.0.0.0/8"]), &node_ips, &addrs, &[]), [a("10.0.0.1"), a("10.244.1.1")]);
    assert_eq!(nodeport_addresses(&f(&["192.168.50.9/32", "10.0.0.0/24"]), &node_ips, &addrs, &[]), [a("192.168.50.9"), a("10.0.0.1")]);
    assert_eq!(nodeport_addresses(&f(&["0.0.0.0/0"]), &node_ips, &addrs, &[]).len(), 4, "all but loopback");
    // IPv6 CIDRs match no IPv4 address; an IPv4 CIDR without a node
    // address neither.
    assert!(nodeport_addresses(&f(&["fd00::/8", "172.16.0.0/12"]), &node_ips, &addrs, &[]).is_empty());
    // IPv6 CIDRs alone say nothing about IPv4: all of it but loopback, as
    // kube-proxy's `0.0.0.0/0` for a family without CIDRs.
    assert_eq!(nodeport_addresses(&f(&["fd00::/8"]), &node_ips, &addrs, &[]).len(), 4);
    // primary: the primary addresses that are the node's.
    assert_eq!(nodeport_addresses(&f(&["primary"]), &node_ips, &addrs, &[a("10.0.0.1"), a("10.9.9.9")]), [a("10.0.0.1")]);
    assert_eq!(
        nodeport_addresses(&f(&["primary", "10.244.0.0/16"]), &node_ips, &addrs, &[a("192.168.50.1")]),
        [a("192.168.50.1"), a("10.244.1.1")]
    );
}

#[test]
fn primary_addresses_are_node_ips_else_the_nodes_internal_ips_else_the_first_node_address() {
    let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let node_ips = [a("192.168.50.1"), a("192.168.50.9")];
    assert_eq!(primary_addresses(&[a("10.0.0.1")], &[a("10.0.0.2")], &node_ips), [a("10.0.0.1")]);
    assert_eq!(primary_addresses(&[], &[a("10.0.0.2")], &node_ips), [a("10.0.0.2")]);
    assert_eq!(primary_addresses(&[], &[], &node_ips), [a("192.168.50.1")]);
    assert!(primary_addresses::<Ipv4Addr>(&[], &[], &[]).is_empty());
}

#[test]
fn cidrs_contain_ipv4_addresses() {
    let c = |s: &str| s.parse::<Cidr>().unwrap();
    let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    assert!(c("10.0.0.0/8").contains_v4(a("10.255.1.2")));
    assert!(!c("10.0.0.0/8").contains_v4(a("11.0.0.1")));
    assert!(c("0.0.0.0/0").contains_v4(a("203.0.113.7")));
    assert!(c("192.168.50.9/32").contains_v4(a("192.168.50.9")));
    assert!(!c("192.168.50.9/32").contains_v4(a("192.168.50.8")));
    assert!(!c("::/0").contains_v4(a("10.0.0.1")));
}

/// The plan a [`Planner`] keeps over a series of changes, each checked
/// against a whole [`plan`] of the same translation.
mod kept {
    use super::*;
    use crate::{
        model::{differing, merged},
        source::{Kind, Object, ObjectKey, Store, Update},
        translate::{Changes, Translator},
    };

    fn objects(yaml: &str) -> Vec<Object> {
        let mut o = Objects::default();
        parse_into("t.yaml", yaml, &mut o);
        assert!(o.problems.is_empty(), "{:?}", o.problems);
        o.services.into_iter().map(|s| Object::Service(Box::new(s))).chain(o.slices.into_iter().map(Object::EndpointSlice)).collect()
    }

    /// A ClusterIP Service `name` at `ip`:80 with `spec` lines added, and
    /// its endpoints (address, node).
    fn cluster_ip(name: &str, ip: &str, spec: &str, endpoints: &[(&str, &str)]) -> String {
        let eps: String = endpoints.iter().map(|(a, n)| format!("- addresses: [{a}]\n  nodeName: {n}\n")).collect();
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: {ip}\n{spec}  ports: [{{name: http, port: 80, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: demo, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{eps}"
        )
    }

    struct Lab {
        store: Store,
        translator: Translator,
        planner: Planner,
        node: NodeInfo,
        /// The frontends the last sync asked for, of both families.
        wanted: (Desired, Desired<Ipv6Addr>),
    }

    impl Lab {
        fn new() -> Lab {
            Lab {
                store: Store::default(),
                translator: Translator::default(),
                planner: Planner::default(),
                node: node("node-a"),
                wanted: Default::default(),
            }
        }

        /// Applies the objects of `yaml`, then syncs: the kept plan must be
        /// a whole plan's; returns whether it was patched.
        fn apply(&mut self, yaml: &str) -> bool {
            for o in objects(yaml) {
                self.store.apply(Update::Applied(o));
            }
            self.sync()
        }

        fn delete(&mut self, name: &str) -> bool {
            self.store.apply(Update::Deleted { kind: Kind::Service, key: ObjectKey::new(Some("demo"), Some(name)) });
            self.sync()
        }

        /// A sync: the kept plan must be a whole plan's, and a patched one
        /// must name every address where the frontends asked for changed.
        fn sync(&mut self) -> bool {
            let t = &mut self.translator;
            t.update(&mut self.store, &TranslateOptions::default());
            let tr = t.translation();
            let (kept, touched) = self.planner.update(tr, t.changes(), t.has_conflicts(), &self.node);
            assert_eq!(*kept, plan(tr, &self.node), "the kept plan (patched: {}) is not the whole plan", touched.is_some());
            let wanted =
                (merged(&[&tr.desired, &kept.internal, &kept.frontends]), merged(&[&tr.desired6, &kept.internal6, &kept.frontends6]));
            if let Some((v4, v6)) = &touched {
                let (missed, missed6) = (&differing(&self.wanted.0, &wanted.0) - v4, &differing(&self.wanted.1, &wanted.1) - v6);
                assert!(missed.is_empty() && missed6.is_empty(), "changed but not named: {missed:?} {missed6:?}");
            }
            self.wanted = wanted;
            touched.is_some()
        }

        fn kept(&self) -> &Plan {
            &self.planner.last.as_ref().expect("planned").plan
        }

        fn internal(&self, addr: &str) -> Option<Vec<String>> {
            self.kept().internal.get(&fa(addr, Protocol::Tcp)).map(|f| f.backends.iter().map(|b| b.addr.ip.to_string()).collect())
        }
    }

    const LOCAL: &str = "  internalTrafficPolicy: Local\n";

    #[test]
    fn a_change_patches_the_plan_unless_the_order_of_the_services_could_matter() {
        let mut lab = Lab::new();
        let base = [
            cluster_ip("a", "10.96.0.1", LOCAL, &[("10.244.1.1", "node-a"), ("10.244.2.1", "node-b")]),
            cluster_ip("b", "10.96.0.2", "", &[("10.244.1.2", "node-a")]),
            format!("---{}", svc("Local", "")),
        ]
        .concat();
        assert!(!lab.apply(&base), "the first plan is whole");
        assert_eq!(lab.internal("10.96.0.1:80").unwrap(), ["10.244.1.1"]);

        // Endpoints of a ClusterIP Service, a new one, a removed one.
        assert!(lab.apply(&cluster_ip("a", "10.96.0.1", LOCAL, &[("10.244.1.1", "node-a"), ("10.244.1.3", "node-a")])));
        assert_eq!(lab.internal("10.96.0.1:80").unwrap(), ["10.244.1.1", "10.244.1.3"]);
        assert!(lab.apply(&cluster_ip("d", "10.96.0.4", LOCAL, &[("10.244.2.4", "node-b")])));
        assert_eq!(lab.internal("10.96.0.4:80").unwrap(), Vec::<String>::new());
        assert!(lab.delete("a"));
        assert_eq!(lab.internal("10.96.0.1:80"), None);
        // A policy that stops being Local: its entry goes.
        assert!(lab.apply(&cluster_ip("d", "10.96.0.4", "", &[("10.244.2.4", "node-b")])));
        assert_eq!(lab.internal("10.96.0.4:80"), None);
        // Nothing changed.
        assert!(lab.sync());

        // A LoadBalancer Service's policy (its frontends, health check and
        // in-cluster entries change); a ClusterIP Service that becomes a
        // NodePort one, and back.
        assert!(lab.apply(&svc("Cluster", "")));
        assert!(lab.apply(&svc("Local", "")));
        let nodeport = |n: u16| format!("  type: NodePort\n  ports: [{{name: http, port: 80, protocol: TCP, nodePort: {n}}}]\n");
        let b_np = cluster_ip("b", "10.96.0.2", &nodeport(30100), &[("10.244.1.2", "node-a")])
            .replace("  ports: [{name: http, port: 80, protocol: TCP}]\n", "");
        assert!(lab.apply(&b_np));
        assert!(lab.kept().frontends.contains_key(&fa("192.168.50.1:30100", Protocol::Tcp)));
        assert!(lab.apply(&cluster_ip("b", "10.96.0.2", "", &[("10.244.1.2", "node-a")])));
        assert!(!lab.kept().frontends.contains_key(&fa("192.168.50.1:30100", Protocol::Tcp)));

        // A ClusterIP Service that takes web's external IP and port: whole,
        // and web's frontend there is refused; while it is, every change
        // plans whole...
        assert!(!lab.apply(&cluster_ip("e", "192.168.60.5", "", &[("10.244.1.5", "node-a")])));
        assert!(!lab.kept().frontends.contains_key(&fa("192.168.60.5:80", Protocol::Tcp)));
        assert!(!lab.apply(&cluster_ip("b", "10.96.0.2", "", &[("10.244.1.2", "node-a"), ("10.244.1.6", "node-a")])));
        // ...until it goes, which frees the address for web.
        assert!(!lab.delete("e"));
        assert!(lab.kept().frontends.contains_key(&fa("192.168.60.5:80", Protocol::Tcp)));
        assert!(lab.apply(&cluster_ip("b", "10.96.0.2", "", &[("10.244.1.2", "node-a")])));

        // Two Services claim one NodePort: the first in name order has it,
        // whichever came first.
        let c_np = cluster_ip("c", "10.96.0.3", &nodeport(30100), &[("10.244.1.7", "node-a")])
            .replace("  ports: [{name: http, port: 80, protocol: TCP}]\n", "");
        assert!(lab.apply(&c_np));
        assert!(!lab.apply(&b_np));
        assert_eq!(lab.kept().frontends[&fa("192.168.50.1:30100", Protocol::Tcp)].name, "demo/b:http");
        assert!(!lab.delete("b"));
        assert_eq!(lab.kept().frontends[&fa("192.168.50.1:30100", Protocol::Tcp)].name, "demo/c:http");
        assert!(lab.apply(&cluster_ip("f", "10.96.0.6", "", &[("10.244.1.8", "node-a")])));

        // The translator looked at every Service (a relist of many): whole.
        let all = Changes { all: true, ..Changes::default() };
        assert!(lab.planner.update(lab.translator.translation(), &all, false, &lab.node).1.is_none());
        assert!(lab.sync());

        // The node changed: whole.
        lab.node.zone = Some("zone-1".into());
        assert!(!lab.sync());
        assert!(lab.sync());
    }
}
