//! The two-node cluster lab: addressing, routes between nodes without
//! tunnels, the client on the shared segment, cleanup, and a sealed root
//! namespace. Needs root.

use std::net::SocketAddrV4;

use lb_lab::{
    CLIENT_IP, ClusterLab, EXT_IF, cluster_pod_ip, list_netns, node_ip, require_root, tcp_request, tcp_server, udp_echo, udp_request,
};

fn root_links() -> Vec<String> {
    let out = std::process::Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(out.status.success());
    let mut names: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split(':').nth(1)).map(|n| n.trim().to_owned()).collect();
    names.sort();
    names
}

#[test]
fn client_nodes_and_pods_reach_each_other_across_the_segment() {
    require_root().expect("these tests need root and iproute2");
    let before = root_links();
    let lab = ClusterLab::new(&[&["a0", "a1"], &["b0"]]).unwrap();
    assert_eq!(lab.node(0).name, "node-a");
    assert_eq!(lab.node(1).name, "node-b");
    assert_eq!(lab.node(0).ip, node_ip(0));
    assert_eq!(lab.node(1).pod("b0").ip, cluster_pod_ip(1, 0));
    assert_eq!(cluster_pod_ip(1, 0).to_string(), "10.244.2.10");
    assert_eq!(lab.switch_ports(), ["lbsw-0", "lbsw-1", "lbsw-c"]);

    let b0 = lab.node(1).pod("b0");
    let tcp = tcp_server(&b0.ns, SocketAddrV4::new(b0.ip, 8080), "b0").unwrap();
    let udp = udp_echo(&b0.ns, SocketAddrV4::new(b0.ip, 5353), "b0").unwrap();
    // A pod on node A reaches a pod on node B: routed over the external
    // link, no tunnel.
    let a0 = &lab.node(0).pod("a0").ns;
    assert_eq!(tcp_request(a0, tcp.local_addr()).unwrap(), "b0");
    assert_eq!(udp_request(a0, udp.local_addr(), "x").unwrap().0, "b0:x");
    // Node A's host reaches it too.
    assert_eq!(tcp_request(&lab.node(0).ns, tcp.local_addr()).unwrap(), "b0");

    // The client reaches servers on both nodes' addresses.
    let on_a = tcp_server(&lab.node(0).ns, SocketAddrV4::new(node_ip(0), 7000), "node-a").unwrap();
    let on_b = tcp_server(&lab.node(1).ns, SocketAddrV4::new(node_ip(1), 7000), "node-b").unwrap();
    assert_eq!(tcp_request(&lab.client, on_a.local_addr()).unwrap(), "node-a");
    assert_eq!(tcp_request(&lab.client, on_b.local_addr()).unwrap(), "node-b");
    // ...but not the pods: only the nodes' addresses are on its segment.
    let routes = lab.client.ip_output(&["route"]).unwrap();
    assert!(!routes.contains("10.244."), "{routes}");
    assert!(routes.contains(&format!("src {CLIENT_IP}")), "{routes}");
    // A route for LoadBalancer IPs through node A.
    lab.client_route("192.168.60.0/24", 0).unwrap();
    assert!(lab.client.ip_output(&["route"]).unwrap().contains("192.168.60.0/24 via 192.168.50.1"));
    assert!(lab.node(0).ns.ip_output(&["link", "show", EXT_IF]).unwrap().contains(EXT_IF));

    // Nothing in the root namespace; everything gone after drop.
    assert_eq!(root_links(), before, "the lab must not touch the root namespace");
    let names = lab.netns_names();
    assert_eq!(names.len(), 2 + 2 + 3);
    drop((tcp, udp, on_a, on_b));
    drop(lab);
    let listed = list_netns().unwrap();
    for n in &names {
        assert!(!listed.contains(n), "{n} still listed");
    }
}

/// The switch only switches: a forward chain that drops everything in the
/// switch's namespace never sees the frames it bridges (where the host has
/// `br_netfilter`, its `bridge-nf-call-*` sysctls are on by default in a
/// new namespace, and would hand them to that chain).
#[test]
fn the_switch_bridges_past_its_namespaces_netfilter() {
    require_root().expect("these tests need root and iproute2");
    let lab = ClusterLab::new(&[&["a0"], &["b0"]]).unwrap();
    let rules = "table inet lbtest { chain forward { type filter hook forward priority 0; policy drop; }; }";
    let out = lab.switch.command("nft").arg(rules).output();
    assert!(out.as_ref().is_ok_and(|o| o.status.success()), "nft in the switch: {out:?}");
    let on_a = tcp_server(&lab.node(0).ns, SocketAddrV4::new(node_ip(0), 7000), "node-a").unwrap();
    assert_eq!(tcp_request(&lab.client, on_a.local_addr()).unwrap(), "node-a");
    let udp = udp_echo(&lab.node(1).ns, SocketAddrV4::new(node_ip(1), 5353), "node-b").unwrap();
    assert_eq!(udp_request(&lab.client, udp.local_addr(), "x").unwrap().0, "node-b:x");
}
