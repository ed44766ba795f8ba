//! Socket-level load balancing over IPv6 (`connect6`, `sendmsg6`,
//! `recvmsg6`, `getpeername6`): host sockets in a dual-stack lab node.
//!
//! - IPv4-mapped addresses: a dual-stack (AF_INET6) socket reaching an
//!   IPv4 Service through `::ffff:a.b.c.d`, end to end through the agent.
//! - IPv6 ClusterIPs: the agent does not write the IPv6 maps yet (its
//!   reconciler is IPv4 only), so the test installs an IPv6 frontend in
//!   the agent's pinned `LB6_*` maps itself, as the reconciler would (a
//!   frontend ID of its own, slots, name), and checks the hooks and
//!   `lb-agent list` against it.

mod common;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket},
    time::Duration,
};

use common::{Agent, ManifestDir, kernel_tests_enabled, service_yaml};
use lb_agent::maps::{Maps, svc_name};
use lb_common::{
    Backend6, IPPROTO_TCP, IPPROTO_UDP, RevNat6, RevNatKey, Service4Value, Service6Key, Slot, SlotKey, Vip4, addr6, svc_flags, vip_flags,
};
use lb_lab::{NodeLab, Server, tcp_request_to, tcp_server, tcp_server_at, udp_echo, udp_echo_at, udp_request_to};

const BACKENDS: [&str; 2] = ["web-a", "web-b"];
const TIMEOUT: Duration = Duration::from_secs(2);

/// A dual-stack node with two backend pods, each serving TCP 8080 (its
/// name) and UDP echo 5353 on both its IPv4 and IPv6 address.
fn lab() -> (NodeLab, Vec<Server>) {
    let lab = NodeLab::new(&BACKENDS).unwrap();
    lab.enable_ipv6().unwrap();
    let mut servers = Vec::new();
    for name in BACKENDS {
        let pod = lab.pod(name);
        let ip6 = lab.pod_ip6(name);
        servers.push(tcp_server(&pod.ns, SocketAddrV4::new(pod.ip, 8080), name).unwrap());
        servers.push(udp_echo(&pod.ns, SocketAddrV4::new(pod.ip, 5353), name).unwrap());
        servers.push(tcp_server_at(&pod.ns, SocketAddrV6::new(ip6, 8080, 0, 0).into(), name).unwrap());
        servers.push(udp_echo_at(&pod.ns, SocketAddrV6::new(ip6, 5353, 0, 0).into(), name).unwrap());
    }
    (lab, servers)
}

fn mapped(v4: &str, port: u16) -> SocketAddr {
    SocketAddr::new(v4.parse::<Ipv4Addr>().unwrap().to_ipv6_mapped().into(), port)
}

#[test]
fn dual_stack_socket_reaches_an_ipv4_service_through_a_mapped_address() {
    if !kernel_tests_enabled() {
        return;
    }
    let (lab, _servers) = lab();
    let dir = ManifestDir::new("mapped");
    let ips: Vec<Ipv4Addr> = BACKENDS.iter().map(|n| lab.pod(n).ip).collect();
    dir.write("web.yaml", &service_yaml("web", "10.96.0.10", 80, "TCP", 8080, &ips));
    dir.write("dns.yaml", &service_yaml("dns", "10.96.0.53", 53, "UDP", 5353, &ips));
    dir.write("empty.yaml", &service_yaml("empty", "10.96.0.99", 80, "TCP", 8080, &[]));
    let agent = Agent::start(&lab.node, &dir.0, "mapped");
    agent.wait_rows("the services", |rows| rows.len() == 3 && rows.iter().filter(|r| r.backends.len() == 2).count() == 2);

    // connect6 to ::ffff:10.96.0.10 goes through the IPv4 frontend.
    let web = mapped("10.96.0.10", 80);
    let mut seen = BTreeSet::new();
    for i in 0..20 {
        let tag =
            tcp_request_to(&lab.node, web, b"hello\n", TIMEOUT).unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", agent.log_text()));
        seen.insert(tag);
    }
    assert_eq!(seen, BACKENDS.iter().map(|s| s.to_string()).collect(), "both backends served over the mapped address");

    // A connected UDP socket: the backend answers, and getpeername6 gives
    // the mapped ClusterIP back, not the backend.
    let dns = mapped("10.96.0.53", 53);
    let (reply, peer) = udp_request_to(&lab.node, dns, b"q", TIMEOUT).unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_text()));
    assert!(reply.ends_with(":q") && BACKENDS.iter().any(|b| reply.starts_with(b)), "{reply}");
    assert_eq!(peer, dns);
    // Unconnected: sendmsg6 and recvmsg6 over the mapped address.
    assert_eq!(unconnected_exchange(&lab.node, dns, "u").1, dns, "recvmsg6 shows the mapped ClusterIP as the source");

    // A Service without endpoints refuses over the mapped address too.
    let err = tcp_request_to(&lab.node, mapped("10.96.0.99", 80), b"", TIMEOUT).unwrap_err();
    assert!(lb_lab::is_connection_refused(&err), "{err:#}");
}

/// An unconnected IPv6 UDP socket sends `payload` to `to` with sendto;
/// returns the reply (checked to echo `payload`) and its source as
/// recvfrom reports it.
fn unconnected_exchange(ns: &lb_lab::Netns, to: SocketAddr, payload: &str) -> (String, SocketAddr) {
    let sent = payload.to_string();
    let (reply, from) = ns.run(move || {
        let sock = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).unwrap();
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        sock.send_to(sent.as_bytes(), to).unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = sock.recv_from(&mut buf).expect("a reply to the unconnected socket");
        (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
    });
    assert!(reply.ends_with(&format!(":{payload}")) && BACKENDS.iter().any(|b| reply.starts_with(b)), "{reply}");
    (reply, from)
}

/// Installs an IPv6 frontend `vip` (port, proto) with `backends` (IPv6
/// backend IDs from 1) under frontend ID `id` in the agent's maps, in the
/// reconciler's order: address, backends, rev-NAT slot, name, slots, and
/// the frontend entry last.
fn install_v6(maps: &mut Maps, id: u32, name: &str, vip: SocketAddrV6, proto: u8, backends: &[(u32, SocketAddrV6)]) {
    install_v6_with(maps, id, name, vip, proto, backends, 0);
}

/// [`install_v6`] with `svc_flags` (a 60 s timeout with `AFFINITY`).
fn install_v6_with(maps: &mut Maps, id: u32, name: &str, vip: SocketAddrV6, proto: u8, backends: &[(u32, SocketAddrV6)], svc: u32) {
    let flags = vip_flags::CLUSTER_IP;
    maps.v6.vips.insert(&addr6(*vip.ip()), &Vip4 { flags }).unwrap();
    for (slot, (be_id, be)) in backends.iter().enumerate() {
        let entry = Backend6 { addr: addr6(*be.ip()), port: be.port().to_be(), proto, flags: 0, version: 1, _pad: 0 };
        maps.v6.backends.set(*be_id, &entry).unwrap();
        maps.slots.insert(&SlotKey { frontend_id: id, slot: slot as u16, generation: 0 }, &Slot { backend_id: *be_id }).unwrap();
    }
    maps.v6.revnat.set(id, &RevNat6 { addr: addr6(*vip.ip()), port: vip.port().to_be(), version: 1 }).unwrap();
    maps.names.insert(&RevNatKey { frontend_id: id }, &svc_name(name)).unwrap();
    let key = Service6Key { addr: addr6(*vip.ip()), port: vip.port().to_be(), proto, scope: 0 };
    let timeout = if svc & svc_flags::AFFINITY != 0 { 60 } else { 0 };
    let value = Service4Value { frontend_id: id, count: backends.len() as u16, generation: 0, flags: svc, affinity_timeout: timeout };
    maps.v6.services.insert(&key, &value).unwrap();
}

#[test]
fn host_sockets_reach_an_ipv6_cluster_ip() {
    if !kernel_tests_enabled() {
        return;
    }
    let (lab, _servers) = lab();
    let dir = ManifestDir::new("v6");
    let ips: Vec<Ipv4Addr> = BACKENDS.iter().map(|n| lab.pod(n).ip).collect();
    dir.write("web.yaml", &service_yaml("web", "10.96.0.10", 80, "TCP", 8080, &ips));
    let agent = Agent::start(&lab.node, &dir.0, "v6");
    agent.wait_rows("the IPv4 service", |rows| rows.len() == 1);

    let web: Ipv6Addr = "fd00:96::a".parse().unwrap();
    let dns: Ipv6Addr = "fd00:96::35".parse().unwrap();
    let pods: Vec<Ipv6Addr> = BACKENDS.iter().map(|n| lab.pod_ip6(n)).collect();
    let mut maps = agent.maps();
    // Frontend IDs far above the few the agent hands out; IPv6 backend
    // IDs are their own.
    let web_backends: Vec<(u32, SocketAddrV6)> =
        pods.iter().enumerate().map(|(i, ip)| (1 + i as u32, SocketAddrV6::new(*ip, 8080, 0, 0))).collect();
    let dns_backends: Vec<(u32, SocketAddrV6)> =
        pods.iter().enumerate().map(|(i, ip)| (3 + i as u32, SocketAddrV6::new(*ip, 5353, 0, 0))).collect();
    install_v6(&mut maps, 60_000, "test/web6:http", SocketAddrV6::new(web, 80, 0, 0), IPPROTO_TCP, &web_backends);
    install_v6(&mut maps, 60_001, "test/dns6:dns", SocketAddrV6::new(dns, 53, 0, 0), IPPROTO_UDP, &dns_backends);

    // connect6: TCP to the IPv6 ClusterIP reaches the backends' IPv6
    // addresses (the pods serve nothing on the ClusterIP).
    let mut seen = BTreeSet::new();
    for i in 0..20 {
        let to = SocketAddr::new(web.into(), 80);
        let tag = tcp_request_to(&lab.node, to, b"hello\n", TIMEOUT).unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", agent.log_text()));
        seen.insert(tag);
    }
    assert_eq!(seen, BACKENDS.iter().map(|s| s.to_string()).collect(), "both IPv6 backends served");

    // A connected UDP socket: getpeername6 shows the ClusterIP.
    let dns_addr = SocketAddr::new(dns.into(), 53);
    let (reply, peer) = udp_request_to(&lab.node, dns_addr, b"q", TIMEOUT).unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_text()));
    assert!(reply.ends_with(":q"), "{reply}");
    assert_eq!(peer, dns_addr);

    // An unconnected one: sendmsg6 translates each datagram, recvmsg6
    // gives the reply's source back as the ClusterIP.
    let (_, from) = unconnected_exchange(&lab.node, dns_addr, "u");
    assert_eq!(from, dns_addr, "recvmsg6 shows the ClusterIP as the source");

    // A port no Service defines on the IPv6 ClusterIP is refused, not
    // sent along a route.
    let err = tcp_request_to(&lab.node, SocketAddr::new(web.into(), 81), b"", TIMEOUT).unwrap_err();
    assert!(lb_lab::is_connection_refused(&err), "{err:#}");
    // So is a frontend without endpoints.
    let empty: Ipv6Addr = "fd00:96::63".parse().unwrap();
    install_v6(&mut maps, 60_002, "test/empty6:http", SocketAddrV6::new(empty, 80, 0, 0), IPPROTO_TCP, &[]);
    let err = tcp_request_to(&lab.node, SocketAddr::new(empty.into(), 80), b"", TIMEOUT).unwrap_err();
    assert!(lb_lab::is_connection_refused(&err), "{err:#}");

    // Session affinity over IPv6: every connection of the host goes to
    // the backend the first one got (the same backend slots as `web`).
    let sticky: Ipv6Addr = "fd00:96::5".parse().unwrap();
    let vip = SocketAddrV6::new(sticky, 80, 0, 0);
    install_v6_with(&mut maps, 60_003, "test/sticky6:http", vip, IPPROTO_TCP, &web_backends, svc_flags::AFFINITY);
    let tags: BTreeSet<String> =
        (0..20).map(|i| tcp_request_to(&lab.node, vip.into(), b"hi\n", TIMEOUT).unwrap_or_else(|e| panic!("sticky {i}: {e:#}"))).collect();
    assert_eq!(tags.len(), 1, "affinity keeps one backend: {tags:?}");

    // `lb-agent list` shows the IPv6 frontends with their backends.
    let rows = agent.rows();
    let row = rows.iter().find(|r| r.frontend == "[fd00:96::a]:80/TCP").unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(row.name, "test/web6:http");
    assert_eq!(row.backends, pods.iter().map(|ip| format!("[{ip}]:8080")).collect::<Vec<_>>());
    assert!(rows.iter().any(|r| r.frontend == "[fd00:96::35]:53/UDP"), "{rows:#?}");
    let sticky_row = rows.iter().find(|r| r.frontend == "[fd00:96::5]:80/TCP").unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(sticky_row.affinity_timeout_s, 60);
}
