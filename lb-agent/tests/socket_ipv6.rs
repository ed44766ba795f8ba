//! Socket-level load balancing over IPv6 (`connect6`, `sendmsg6`,
//! `recvmsg6`, `getpeername6`): host sockets in a dual-stack lab node.
//!
//! - IPv4-mapped addresses: a dual-stack (AF_INET6) socket reaching an
//!   IPv4 Service through `::ffff:a.b.c.d`, end to end through the agent.
//! - IPv6 ClusterIPs: dual-stack Services in the manifest directory, which
//!   the agent programs into the `LB6_*` maps itself; the hooks, `lb-agent
//!   list`, a restart and a removal are checked against them.

mod common;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket},
    time::Duration,
};

use common::{Agent, ManifestDir, dual_stack_yaml, kernel_tests_enabled, service_yaml, wait_for};
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

/// TCP requests to `to` until both backends have answered.
fn both_backends_answer(lab: &NodeLab, agent: &Agent, to: SocketAddr) {
    let mut seen = BTreeSet::new();
    for i in 0..20 {
        let tag = tcp_request_to(&lab.node, to, b"hello\n", TIMEOUT)
            .unwrap_or_else(|e| panic!("request {i} to {to}: {e:#}\n{}", agent.log_text()));
        seen.insert(tag);
    }
    assert_eq!(seen, BACKENDS.iter().map(|s| s.to_string()).collect(), "both backends served {to}");
}

/// The agent programs dual-stack Services from the manifest directory:
/// host sockets reach their IPv6 ClusterIPs (TCP, connected and
/// unconnected UDP, session affinity), a port or Service without endpoints
/// is refused, `lb-agent list` shows the IPv6 rows, a restarted agent
/// keeps them without a write, and a removed Service stops answering.
#[test]
fn the_agent_programs_the_ipv6_cluster_ips_of_dual_stack_services() {
    if !kernel_tests_enabled() {
        return;
    }
    let (lab, _servers) = lab();
    let dir = ManifestDir::new("v6");
    let pods4: Vec<Ipv4Addr> = BACKENDS.iter().map(|n| lab.pod(n).ip).collect();
    let pods6: Vec<Ipv6Addr> = BACKENDS.iter().map(|n| lab.pod_ip6(n)).collect();
    let pods = (&pods4[..], &pods6[..]);
    dir.write("web.yaml", &dual_stack_yaml("web", ("10.96.0.10", "fd00:96::a"), (80, "TCP", 8080), pods, false));
    dir.write("dns.yaml", &dual_stack_yaml("dns", ("10.96.0.53", "fd00:96::35"), (53, "UDP", 5353), pods, false));
    dir.write("empty.yaml", &dual_stack_yaml("empty", ("10.96.0.99", "fd00:96::63"), (80, "TCP", 8080), (&[], &[]), false));
    dir.write("sticky.yaml", &dual_stack_yaml("sticky", ("10.96.0.5", "fd00:96::5"), (80, "TCP", 8080), pods, true));
    let agent = Agent::start(&lab.node, &dir.0, "v6");
    let rows = agent.wait_rows("both families' frontends", |rows| rows.len() == 8);

    // `lb-agent list` shows the IPv6 frontends with their backends.
    let row = rows.iter().find(|r| r.frontend == "[fd00:96::a]:80/TCP").unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(row.name, "test/web:p");
    assert_eq!(row.backends, pods6.iter().map(|ip| format!("[{ip}]:8080")).collect::<Vec<_>>());
    let dns_row = rows.iter().find(|r| r.frontend == "[fd00:96::35]:53/UDP").unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(dns_row.backends.len(), 2);
    let sticky_row = rows.iter().find(|r| r.frontend == "[fd00:96::5]:80/TCP").unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(sticky_row.affinity_timeout_s, 10_800, "the default ClientIP timeout");
    // IPv4 and IPv6 frontends never share an ID.
    let ids: BTreeSet<u32> = rows.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), rows.len(), "{rows:#?}");

    // connect6: TCP to the IPv6 ClusterIP reaches the backends' IPv6
    // addresses (the pods serve nothing on the ClusterIP); the IPv4 one
    // still works.
    let web = SocketAddr::new("fd00:96::a".parse::<Ipv6Addr>().unwrap().into(), 80);
    both_backends_answer(&lab, &agent, web);
    both_backends_answer(&lab, &agent, "10.96.0.10:80".parse().unwrap());

    // A connected UDP socket: getpeername6 shows the ClusterIP.
    let dns = SocketAddr::new("fd00:96::35".parse::<Ipv6Addr>().unwrap().into(), 53);
    let (reply, peer) = udp_request_to(&lab.node, dns, b"q", TIMEOUT).unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_text()));
    assert!(reply.ends_with(":q"), "{reply}");
    assert_eq!(peer, dns);
    // An unconnected one: sendmsg6 translates each datagram, recvmsg6
    // gives the reply's source back as the ClusterIP.
    let (_, from) = unconnected_exchange(&lab.node, dns, "u");
    assert_eq!(from, dns, "recvmsg6 shows the ClusterIP as the source");

    // A port no Service defines on the IPv6 ClusterIP is refused, not sent
    // along a route; so is a Service without endpoints.
    let err = tcp_request_to(&lab.node, SocketAddr::new(web.ip(), 81), b"", TIMEOUT).unwrap_err();
    assert!(lb_lab::is_connection_refused(&err), "{err:#}");
    let empty = SocketAddr::new("fd00:96::63".parse::<Ipv6Addr>().unwrap().into(), 80);
    let err = tcp_request_to(&lab.node, empty, b"", TIMEOUT).unwrap_err();
    assert!(lb_lab::is_connection_refused(&err), "{err:#}");

    // Session affinity over IPv6: every connection of the host goes to
    // the backend the first one got.
    let sticky = SocketAddr::new("fd00:96::5".parse::<Ipv6Addr>().unwrap().into(), 80);
    let tags: BTreeSet<String> =
        (0..20).map(|i| tcp_request_to(&lab.node, sticky, b"hi\n", TIMEOUT).unwrap_or_else(|e| panic!("sticky {i}: {e:#}"))).collect();
    assert_eq!(tags.len(), 1, "affinity keeps one backend: {tags:?}");

    // A restarted agent takes both families over from the pinned maps and
    // writes nothing: its first sync issues no map operation.
    let pins = agent.stop_keeping_pins(libc::SIGTERM);
    let agent = Agent::start_with(&lab.node, &dir.0, pins, &[]);
    let first_sync = wait_for("the restarted agent's first sync", Duration::from_secs(15), || {
        agent.log_text().lines().find(|l| l.contains("synced manifests")).map(str::to_owned)
    });
    assert!(first_sync.contains("map_ops=0") && first_sync.contains("frontends=8"), "{first_sync}\n{}", agent.log_text());
    assert_eq!(agent.rows(), rows, "the same frontends, IDs and backends after the restart");
    both_backends_answer(&lab, &agent, web);

    // The Service leaves the directory: its IPv6 ClusterIP refuses TCP and
    // leaves UDP unanswered; the other Services stay.
    dir.remove("web.yaml");
    dir.remove("dns.yaml");
    agent.wait_rows("the removal", |rows| rows.len() == 4 && !rows.iter().any(|r| r.frontend.starts_with("[fd00:96::a]")));
    // (No longer a Service address, the ClusterIP is left to the routes,
    // and the lab node has none for it.)
    let err = tcp_request_to(&lab.node, web, b"", TIMEOUT).unwrap_err();
    let errno = lb_lab::io_error(&err).and_then(std::io::Error::raw_os_error);
    assert!(matches!(errno, Some(libc::ECONNREFUSED | libc::ENETUNREACH)), "{err:#}");
    assert!(udp_request_to(&lab.node, dns, b"q", Duration::from_millis(500)).is_err(), "a removed UDP Service is not answered");
    let tags: BTreeSet<String> =
        (0..5).map(|i| tcp_request_to(&lab.node, sticky, b"hi\n", TIMEOUT).unwrap_or_else(|e| panic!("sticky {i}: {e:#}"))).collect();
    assert_eq!(tags.len(), 1);
}

/// As for IPv4 (`lifecycle.rs`): an IPv6 host UDP socket connected to an
/// IPv6 ClusterIP, and a dual-stack one connected to the IPv4 ClusterIP
/// through its mapped address, are destroyed when their backend leaves the
/// Service; a new socket reaches the backend that is left.
#[test]
fn host_udp_sockets_connected_to_a_removed_backend_are_destroyed_over_ipv6_and_mapped_addresses() {
    if !kernel_tests_enabled() {
        return;
    }
    let (lab, _servers) = lab();
    let dir = ManifestDir::new("v6-destroy");
    let pods4: Vec<Ipv4Addr> = BACKENDS.iter().map(|n| lab.pod(n).ip).collect();
    let pods6: Vec<Ipv6Addr> = BACKENDS.iter().map(|n| lab.pod_ip6(n)).collect();
    let dns = |pods: (&[Ipv4Addr], &[Ipv6Addr])| dual_stack_yaml("dns", ("10.96.0.53", "fd00:96::35"), (53, "UDP", 5353), pods, false);
    dir.write("dns.yaml", &dns((&pods4, &pods6)));
    let agent = Agent::start(&lab.node, &dir.0, "v6-destroy");
    agent.wait_rows("both families' frontends", |rows| rows.len() == 2 && rows.iter().all(|r| r.backends.len() == 2));

    // A connected socket of each kind, and the backend each was given.
    let connect = |to: SocketAddr| {
        lab.node.run(move || {
            let s = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).unwrap();
            s.connect(to).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s
        })
    };
    let ask = |s: &UdpSocket, q: &str| -> std::io::Result<String> {
        s.send(q.as_bytes())?;
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let v6: SocketAddr = "[fd00:96::35]:53".parse().unwrap();
    let (s6, s4) = (connect(v6), connect(mapped("10.96.0.53", 53)));
    let backend_of = |s: &UdpSocket| {
        let answer = ask(s, "q").unwrap();
        BACKENDS.iter().position(|b| answer.starts_with(b)).unwrap_or_else(|| panic!("{answer}"))
    };
    let (b6, b4) = (backend_of(&s6), backend_of(&s4));

    // Each family's Service keeps only the other backend of its socket.
    let keep4: Vec<Ipv4Addr> = vec![pods4[1 - b4]];
    let keep6: Vec<Ipv6Addr> = vec![pods6[1 - b6]];
    dir.write("dns.yaml", &dns((&keep4, &keep6)));
    agent.wait_rows("one backend each", |rows| rows.len() == 2 && rows.iter().all(|r| r.backends.len() == 1));
    for (name, s) in [("IPv6", &s6), ("mapped IPv4", &s4)] {
        wait_for(&format!("the {name} socket's destruction"), Duration::from_secs(5), || s.peer_addr().is_err().then_some(()));
        let next = ask(s, "after");
        assert!(
            next.as_ref().is_err_and(|e| matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EDESTADDRREQ))),
            "the {name} socket's next call: {next:?}\n{}",
            agent.log_text()
        );
    }
    assert_eq!(backend_of(&connect(v6)), 1 - b6, "a new IPv6 socket reaches the backend left");
    assert_eq!(backend_of(&connect(mapped("10.96.0.53", 53))), 1 - b4, "a new mapped socket too");
}
