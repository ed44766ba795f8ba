//! Connection lifecycle with real sockets in a lab node: session affinity,
//! DNS-style UDP failover, graceful termination and resetting TCP flows of
//! removed backends.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{Agent, ManifestDir, kernel_tests_enabled};
use lb_lab::{Netns, NodeLab, Server, tcp_request, tcp_server, udp_echo};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 80);

/// Endpoint states for the manifest.
#[derive(Clone, Copy)]
enum State {
    Ready,
    Terminating,
}

/// A Service and its EndpointSlice, with optional ClientIP affinity.
fn manifest(proto: &str, port: u16, target: u16, endpoints: &[(Ipv4Addr, State)], affinity: Option<u32>) -> String {
    let affinity = match affinity {
        Some(t) => format!("  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {t}}}}}\n"),
        None => String::new(),
    };
    let eps: String = endpoints
        .iter()
        .map(|(ip, s)| {
            let cond = match s {
                State::Ready => "{ready: true, serving: true, terminating: false}",
                State::Terminating => "{ready: false, serving: true, terminating: true}",
            };
            format!("- addresses: [{ip}]\n  conditions: {cond}\n")
        })
        .collect();
    let eps = if eps.is_empty() { " []\n".to_string() } else { format!("\n{eps}") };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: test}}\nspec:\n  clusterIP: {VIP}\n  ports: [{{name: p, port: {port}, protocol: {proto}}}]\n{affinity}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-1, namespace: test, labels: {{kubernetes.io/service-name: svc}}}}\naddressType: IPv4\nports: [{{name: p, port: {target}, protocol: {proto}}}]\nendpoints:{eps}"
    )
}

fn vip(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(VIP, port)
}

/// Backends `web-0..n` each running a TCP server on 8080 answering its name.
fn web_lab(clients: &[&str], n: usize) -> (NodeLab, Vec<Server>) {
    let mut names: Vec<String> = clients.iter().map(|c| c.to_string()).collect();
    names.extend((0..n).map(|i| format!("web-{i}")));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let lab = NodeLab::new(&refs).unwrap();
    let servers = (0..n)
        .map(|i| {
            let pod = lab.pod(&format!("web-{i}"));
            tcp_server(&pod.ns, SocketAddrV4::new(pod.ip, 8080), &format!("web-{i}")).unwrap()
        })
        .collect();
    (lab, servers)
}

fn ready(lab: &NodeLab, names: &[&str]) -> Vec<(Ipv4Addr, State)> {
    names.iter().map(|n| (lab.pod(n).ip, State::Ready)).collect()
}

#[test]
fn client_ip_affinity_sticks_expires_and_differs_between_clients() {
    if !kernel_tests_enabled() {
        return;
    }
    let clients = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"];
    let (lab, _servers) = web_lab(&clients, 3);
    let dir = ManifestDir::new("affinity");
    let webs = ready(&lab, &["web-0", "web-1", "web-2"]);
    dir.write("svc.yaml", &manifest("TCP", 80, 8080, &webs, Some(1)));
    let agent = Agent::start(&lab.node, &dir.0, "affinity");
    agent.wait_rows("3 backends", |rows| rows.len() == 1 && rows[0].backends.len() == 3);

    // 100 connections from one client land on one backend.
    let c0 = &lab.pod("c0").ns;
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..100 {
        *seen.entry(tcp_request(c0, vip(80)).unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    let first = seen.into_keys().next().unwrap();

    // Different clients are balanced: 8 clients do not all share one
    // backend (chance (1/3)^7 if they did by accident).
    let per_client: BTreeSet<String> = clients.iter().map(|c| tcp_request(&lab.pod(c).ns, vip(80)).unwrap()).collect();
    assert!(per_client.len() > 1, "all clients on {per_client:?}");

    // After the 1 s timeout without new connections, the choice is made
    // afresh: within a few rounds the client moves (each round is a new
    // uniform choice among 3).
    let mut moved = false;
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(1300));
        let now = tcp_request(c0, vip(80)).unwrap();
        if now != first {
            moved = true;
            // ...and sticks to the new backend again.
            for _ in 0..10 {
                assert_eq!(tcp_request(c0, vip(80)).unwrap(), now);
            }
            break;
        }
    }
    assert!(moved, "the client never moved off {first} after its affinity expired");
}

/// A UDP echo whose replies say which backend answered.
fn udp_backends(lab: &NodeLab, names: &[&str]) -> Vec<Server> {
    names
        .iter()
        .map(|n| {
            let pod = lab.pod(n);
            udp_echo(&pod.ns, SocketAddrV4::new(pod.ip, 5353), n).unwrap()
        })
        .collect()
}

/// One connected UDP socket in `ns`, kept across queries like a resolver
/// that reuses its source port.
fn resolver(ns: &Netns, to: SocketAddrV4) -> UdpSocket {
    ns.run(move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        s.connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    })
}

fn query(s: &UdpSocket, q: &str) -> std::io::Result<String> {
    s.send(q.as_bytes())?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn udp_client_moves_to_a_live_backend_when_its_backend_is_removed() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["client", "dns-a", "dns-b"]).unwrap();
    let _servers = udp_backends(&lab, &["dns-a", "dns-b"]);
    let dir = ManifestDir::new("udpfail");
    dir.write("svc.yaml", &manifest("UDP", 53, 5353, &ready(&lab, &["dns-a", "dns-b"]), None));
    let agent = Agent::start(&lab.node, &dir.0, "udpfail");
    agent.wait_rows("2 backends", |rows| rows.len() == 1 && rows[0].backends.len() == 2);

    let sock = resolver(&lab.pod("client").ns, vip(53));
    let answer = query(&sock, "q1").unwrap();
    let (current, other) = if answer.starts_with("dns-a") { ("dns-a", "dns-b") } else { ("dns-b", "dns-a") };
    // The same socket sticks to its backend (one conntrack flow).
    for i in 0..5 {
        assert!(query(&sock, &format!("q{i}")).unwrap().starts_with(current));
    }
    // Its backend goes away (e.g. CoreDNS rescheduled). The stale flow is
    // invalid at once (the backend's slot version moved on), so the very
    // same socket is answered by the other backend (the kube-proxy
    // stale-UDP-conntrack bug would blackhole it instead).
    dir.write("svc.yaml", &manifest("UDP", 53, 5353, &ready(&lab, &[other]), None));
    agent.wait_rows("1 backend", |rows| rows.len() == 1 && rows[0].backends.len() == 1);
    common::wait_for("the backend's removal", Duration::from_secs(5), || {
        let ip = u32::from_ne_bytes(lab.pod(current).ip.octets());
        (!agent.maps().live_backends().unwrap().iter().any(|(_, b)| b.addr == ip)).then_some(())
    });
    let after = query(&sock, "after").unwrap_or_else(|e| panic!("blackholed: {e}\n{}", agent.log_text()));
    assert!(after.starts_with(other), "{after}");
    assert_eq!(sock.peer_addr().unwrap(), std::net::SocketAddr::V4(vip(53)));
}

/// The same for a client in the host network namespace, served by the
/// socket hooks: its connected UDP socket was given the backend's address
/// at `connect`, and no later send passes a hook. When that backend goes,
/// the agent destroys the socket (as Cilium's socket LB does): the
/// application's next call fails, and a new socket (a resolver's retry)
/// reaches the live backend.
#[test]
fn a_host_udp_socket_connected_to_a_removed_backend_is_destroyed() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["dns-a", "dns-b"]).unwrap();
    let _servers = udp_backends(&lab, &["dns-a", "dns-b"]);
    let dir = ManifestDir::new("hostudp");
    dir.write("svc.yaml", &manifest("UDP", 53, 5353, &ready(&lab, &["dns-a", "dns-b"]), None));
    let agent = Agent::start(&lab.node, &dir.0, "hostudp");
    agent.wait_rows("2 backends", |rows| rows.len() == 1 && rows[0].backends.len() == 2);

    let sock = resolver(&lab.node, vip(53));
    let answer = query(&sock, "q1").unwrap();
    let (current, other) = if answer.starts_with("dns-a") { ("dns-a", "dns-b") } else { ("dns-b", "dns-a") };
    for i in 0..5 {
        assert!(query(&sock, &format!("q{i}")).unwrap().starts_with(current));
    }
    // A socket connected to the backend pod's own address (not through
    // the Service) is the application's business: it stays.
    let direct = resolver(&lab.node, SocketAddrV4::new(lab.pod(current).ip, 5353));
    assert!(query(&direct, "d1").unwrap().starts_with(current));
    dir.write("svc.yaml", &manifest("UDP", 53, 5353, &ready(&lab, &[other]), None));
    agent.wait_rows("1 backend", |rows| rows.len() == 1 && rows[0].backends.len() == 1);
    // Destroyed, the socket has no peer any more: its next send fails
    // (EDESTADDRREQ), a pending receive with ECONNABORTED.
    common::wait_for("the socket's destruction", Duration::from_secs(5), || sock.peer_addr().is_err().then_some(()));
    let dead = |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EDESTADDRREQ));
    let next = query(&sock, "after");
    assert!(next.as_ref().is_err_and(dead), "the socket's next call: {next:?}\n{}", agent.log_text());
    let again = resolver(&lab.node, vip(53));
    assert!(query(&again, "retry").unwrap().starts_with(other));
    assert!(query(&direct, "d2").unwrap().starts_with(current), "the direct socket was left alone");
    let log = agent.log_text();
    assert!(log.contains("destroyed a host UDP socket connected to a backend its Service no longer has"), "{log}");
    let (_, metrics) = common::http_get(&lab.node, (Ipv4Addr::LOCALHOST, 10256), "/metrics");
    assert!(metrics.contains("lb_stale_sockets_destroyed_total 1\n"), "{metrics}");
    assert!(metrics.contains("lb_stale_socket_errors_total 0\n"), "{metrics}");
}

/// A TCP echo server on `port` in `ns`: echoes every line on every
/// connection until stopped, and reports its connections' peers.
struct Echo {
    stop: Arc<AtomicBool>,
    accepted: Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>,
}

impl Echo {
    fn start(ns: &Netns, addr: SocketAddrV4) -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = ns.run(move || TcpListener::bind(addr).unwrap());
        listener.set_nonblocking(true).unwrap();
        let (s, a) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        a.lock().unwrap().push(peer);
                        let s = s.clone();
                        std::thread::spawn(move || {
                            conn.set_nonblocking(false).unwrap();
                            conn.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                            let mut buf = [0u8; 1024];
                            while !s.load(Ordering::Relaxed) {
                                match conn.read(&mut buf) {
                                    Ok(0) => return,
                                    Ok(n) => {
                                        if conn.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
                    Err(_) => return,
                }
            }
        });
        Echo { stop, accepted }
    }

    fn connections(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn roundtrip(s: &mut TcpStream, msg: &str) -> std::io::Result<String> {
    s.write_all(msg.as_bytes())?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[test]
fn terminating_backend_keeps_its_stream_then_removal_resets_it() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["client", "web-a", "web-b"]).unwrap();
    let echo_a = Echo::start(&lab.pod("web-a").ns, SocketAddrV4::new(lab.pod("web-a").ip, 9000));
    let echo_b = Echo::start(&lab.pod("web-b").ns, SocketAddrV4::new(lab.pod("web-b").ip, 9000));
    let dir = ManifestDir::new("term");
    dir.write("svc.yaml", &manifest("TCP", 90, 9000, &ready(&lab, &["web-a", "web-b"]), None));
    let agent = Agent::start(&lab.node, &dir.0, "term");
    agent.wait_rows("2 backends", |rows| rows.len() == 1 && rows[0].backends.len() == 2);

    // A long-lived stream from the client.
    let client = &lab.pod("client").ns;
    let mut stream = client.run(|| TcpStream::connect_timeout(&vip(90).into(), Duration::from_secs(2)).unwrap());
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(roundtrip(&mut stream, "hello\n").unwrap(), "hello\n");
    let (on, other, on_echo, other_echo) =
        if echo_a.connections() == 1 { ("web-a", "web-b", &echo_a, &echo_b) } else { ("web-b", "web-a", &echo_b, &echo_a) };
    assert_eq!(on_echo.connections(), 1);

    // Its backend starts terminating (ready=false, serving, terminating).
    let eps = vec![(lab.pod(on).ip, State::Terminating), (lab.pod(other).ip, State::Ready)];
    dir.write("svc.yaml", &manifest("TCP", 90, 9000, &eps, None));
    agent.wait_rows("1 slot", |rows| rows.len() == 1 && rows[0].backends.len() == 1);
    // The established stream keeps working...
    for i in 0..20 {
        let msg = format!("still there {i}\n");
        assert_eq!(roundtrip(&mut stream, &msg).unwrap(), msg, "the stream to the terminating backend broke");
    }
    // ...while new connections all avoid the terminating backend.
    let before = (on_echo.connections(), other_echo.connections());
    for _ in 0..20 {
        let mut s = client.run(|| TcpStream::connect_timeout(&vip(90).into(), Duration::from_secs(2)).unwrap());
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert_eq!(roundtrip(&mut s, "x\n").unwrap(), "x\n");
    }
    assert_eq!(on_echo.connections(), before.0, "no new connection reached the terminating backend");
    assert_eq!(other_echo.connections(), before.1 + 20);

    // The terminating pod goes away for good. Its flows are invalid from
    // the moment its backend is removed (no walk of conntrack); the
    // client's next segment is steered to a live backend, which does not
    // know the connection and resets it: the client sees ECONNRESET at
    // once instead of retransmitting into a void.
    dir.write("svc.yaml", &manifest("TCP", 90, 9000, &ready(&lab, &[other]), None));
    agent.wait_rows("the terminating backend removed", |rows| {
        rows.len() == 1 && rows[0].backends.len() == 1 && rows[0].backends[0].starts_with(&lab.pod(other).ip.to_string())
    });
    common::wait_for("the backend's removal", Duration::from_secs(5), || {
        let ip = u32::from_ne_bytes(lab.pod(on).ip.octets());
        (!agent.maps().live_backends().unwrap().iter().any(|(_, b)| b.addr == ip)).then_some(())
    });
    let err = roundtrip(&mut stream, "are you there\n").and_then(|_| roundtrip(&mut stream, "again\n"));
    let err = err.expect_err("the stream to a removed backend must be reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
}
