//! Correct under churn, with real sockets on a strict lab node: two flows
//! from one client port to two Services on one backend both work, over
//! IPv4 and IPv6 (the second gets another source port), and a churn of
//! Services (fillers added and removed, one Service scaled, renamed, flipped between random
//! and Maglev, its affinity toggled) every 200 ms fails no request to the
//! Services that do not change, and never sends the scaled Service's
//! clients to a backend outside its endpoints once programming has landed.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream, UdpSocket},
    os::fd::{FromRawFd, OwnedFd},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::{Agent, ManifestDir, PinDir, dual_stack_yaml, kernel_tests_enabled, line_echo, service_yaml};
use lb_lab::{NodeLab, Server, churn, tcp_request_with, tcp_server, udp_echo, udp_echo_at};
use socket2::{Domain, SockRef, Socket, Type};

/// A socket of type `ty` for `to`'s family, bound to `port` with
/// SO_REUSEADDR, so that a second socket can use the same local port
/// towards another destination.
fn reused_port_socket(ty: Type, to: SocketAddr, port: u16) -> OwnedFd {
    let s = Socket::new(Domain::for_address(to), ty, None).unwrap();
    s.set_reuse_address(true).unwrap();
    let any: IpAddr = if to.is_ipv6() { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
    s.bind(&SocketAddr::new(any, port).into()).unwrap_or_else(|e| panic!("bind {port}: {e}"));
    s.into()
}

fn connect(fd: &OwnedFd, to: impl Into<SocketAddr>) -> std::io::Result<()> {
    SockRef::from(fd).connect(&to.into().into())
}

#[test]
fn two_live_flows_from_one_client_port_to_two_services_on_one_backend() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["client", "b1"]).unwrap();
    let b1 = lab.pod("b1");
    let stop = line_echo(&b1.ns, SocketAddrV4::new(b1.ip, 8080), "b1");
    let _udp = udp_echo(&b1.ns, SocketAddrV4::new(b1.ip, 5353), "b1").unwrap();
    let dir = ManifestDir::new("clash");
    dir.write("a.yaml", &service_yaml("a", "10.96.0.50", 80, "TCP", 8080, &[b1.ip]));
    dir.write("b.yaml", &service_yaml("b", "10.96.0.51", 80, "TCP", 8080, &[b1.ip]));
    dir.write("ua.yaml", &service_yaml("ua", "10.96.0.50", 53, "UDP", 5353, &[b1.ip]));
    dir.write("ub.yaml", &service_yaml("ub", "10.96.0.51", 53, "UDP", 5353, &[b1.ip]));
    let agent = Agent::start(&lab.node, &dir.0, "clash");
    agent.wait_rows("four frontends", |rows| rows.len() == 4 && rows.iter().all(|r| r.backends.len() == 1));
    let services = (Ipv4Addr::new(10, 96, 0, 50).into(), Ipv4Addr::new(10, 96, 0, 51).into());
    two_flows_per_client_port(&lab, &agent, services, 45000);
    stop.store(true, Ordering::SeqCst);
}

/// The same over IPv6: the clash is met in `LB6_CT_*` (the port search is
/// the shared code's, over 40-byte tuples).
#[test]
fn two_live_flows_from_one_client_port_to_two_ipv6_services_on_one_backend() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["client", "b1"]).unwrap();
    lab.enable_ipv6().unwrap();
    let b1 = lab.pod("b1");
    let ip6 = lab.pod_ip6("b1");
    let stop = line_echo(&b1.ns, SocketAddrV6::new(ip6, 8080, 0, 0), "b1");
    let _udp = udp_echo_at(&b1.ns, SocketAddrV6::new(ip6, 5353, 0, 0).into(), "b1").unwrap();
    let dir = ManifestDir::new("clash6");
    let pods = (&[b1.ip][..], &[ip6][..]);
    for (name, ips, port) in [
        ("a", ("10.96.0.50", "fd00:96::50"), (80, "TCP", 8080)),
        ("b", ("10.96.0.51", "fd00:96::51"), (80, "TCP", 8080)),
        ("ua", ("10.96.0.50", "fd00:96::50"), (53, "UDP", 5353)),
        ("ub", ("10.96.0.51", "fd00:96::51"), (53, "UDP", 5353)),
    ] {
        dir.write(&format!("{name}.yaml"), &dual_stack_yaml(name, ips, port, pods, false));
    }
    let agent = Agent::start(&lab.node, &dir.0, "clash6");
    agent.wait_rows("eight frontends", |rows| rows.len() == 8 && rows.iter().all(|r| r.backends.len() == 1));
    let services = ("fd00:96::50".parse::<Ipv6Addr>().unwrap().into(), "fd00:96::51".parse::<Ipv6Addr>().unwrap().into());
    two_flows_per_client_port(&lab, &agent, services, 46000);
    stop.store(true, Ordering::SeqCst);
}

/// Ten rounds from the client pod, each from one source port (`first`,
/// then the next ones): two TCP connections, one to each of `services`
/// (port 80), both open at once and each answered on its own connection,
/// and two connected UDP sockets (port 53) likewise. The Services share
/// their one backend, `b1`, so the second flow of each pair must get
/// another source port.
fn two_flows_per_client_port(lab: &NodeLab, agent: &Agent, services: (IpAddr, IpAddr), first: u16) {
    let (a, b) = (SocketAddr::new(services.0, 80), SocketAddr::new(services.1, 80));
    let result = lab.pod("client").ns.run(move || -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        for round in 0..10u16 {
            let port = first + round;
            // Two TCP connections from the same port, both open at once.
            let (fa, fb) = (reused_port_socket(Type::STREAM, a, port), reused_port_socket(Type::STREAM, b, port));
            connect(&fa, a)?;
            connect(&fb, b)?;
            let (mut ta, mut tb) = (TcpStream::from(fa), TcpStream::from(fb));
            for t in [&ta, &tb] {
                t.set_read_timeout(Some(Duration::from_secs(2)))?;
            }
            let (mut ra, mut rb) = (BufReader::new(ta.try_clone()?), BufReader::new(tb.try_clone()?));
            for i in 0..3 {
                writeln!(ta, "a{round}.{i}")?;
                writeln!(tb, "b{round}.{i}")?;
                let (mut la, mut lb) = (String::new(), String::new());
                ra.read_line(&mut la)?;
                rb.read_line(&mut lb)?;
                out.push(format!("{}|{}", la.trim(), lb.trim()));
            }
            // Two connected UDP sockets from one port, one to each Service.
            let (ua, ub) = (reused_port_socket(Type::DGRAM, a, port), reused_port_socket(Type::DGRAM, b, port));
            connect(&ua, SocketAddr::new(a.ip(), 53))?;
            connect(&ub, SocketAddr::new(b.ip(), 53))?;
            let (ua, ub) = (UdpSocket::from(ua), UdpSocket::from(ub));
            for u in [&ua, &ub] {
                u.set_read_timeout(Some(Duration::from_secs(2)))?;
            }
            ua.send(format!("ua{round}").as_bytes())?;
            ub.send(format!("ub{round}").as_bytes())?;
            let mut buf = [0u8; 64];
            let n = ua.recv(&mut buf)?;
            let got_a = String::from_utf8_lossy(&buf[..n]).into_owned();
            let n = ub.recv(&mut buf)?;
            let got_b = String::from_utf8_lossy(&buf[..n]).into_owned();
            out.push(format!("{got_a}|{got_b}"));
        }
        Ok(out)
    });
    let lines = result.unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    let want: Vec<String> =
        (0..10).flat_map(|r| (0..3).map(move |i| format!("b1:a{r}.{i}|b1:b{r}.{i}")).chain([format!("b1:ua{r}|b1:ub{r}")])).collect();
    assert_eq!(lines, want, "both flows of each pair answered, each on its own connection");
    assert!(agent.maps().stat(lb_common::stat::PORT_REMAPPED).unwrap() >= 20, "the second flow of each pair got another port");
}

/// A server that answers each connection with the peer's port and closes
/// first, so that it holds the tuple in TIME_WAIT, as the churn's servers
/// do.
fn peer_port_server(ns: &lb_lab::Netns, addr: SocketAddrV4, stop: std::sync::Arc<AtomicBool>) {
    ns.spawn_thread("peer-port", move || {
        let l = std::net::TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        while !stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((mut s, peer)) => {
                    let _ = writeln!(s, "{}", peer.port());
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    // Wait for the client's FIN: this side closed first.
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let _ = std::io::Read::read(&mut s, &mut [0u8; 64]);
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    })
    .unwrap();
}

/// A client reusing its source port for the same Service, while the
/// backend still holds the previous connection's tuple in TIME_WAIT, is
/// the same client socket tuple as before: the backend takes its new SYN
/// (the ISN and timestamps of a tuple only move on), as it would without
/// lb, and sees the client's own port every time. Another port (of the
/// clash range) would meet other client tuples' TIME_WAIT there, with
/// unrelated timestamps, which the backend drops half the time (PAWS):
/// under the churn soak, a second's wait for a SYN retransmission.
#[test]
fn a_client_reusing_its_port_for_the_same_service_keeps_it() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["client", "b1"]).unwrap();
    let b1 = lab.pod("b1");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    peer_port_server(&b1.ns, SocketAddrV4::new(b1.ip, 8080), stop.clone());
    let dir = ManifestDir::new("reuse");
    dir.write("a.yaml", &service_yaml("a", "10.96.0.60", 80, "TCP", 8080, &[b1.ip]));
    let agent = Agent::start(&lab.node, &dir.0, "reuse");
    agent.wait_rows("the Service", |rows| rows.len() == 1 && rows[0].backends.len() == 1);
    let to = SocketAddrV4::new([10, 96, 0, 60].into(), 80);
    let client = &lab.pod("client").ns;
    let seen = client.run(move || -> std::io::Result<Vec<String>> {
        let mut seen = Vec::new();
        for _ in 0..5 {
            let fd = reused_port_socket(Type::STREAM, to.into(), 45500);
            connect(&fd, to)?;
            let mut s = BufReader::new(TcpStream::from(fd));
            s.get_ref().set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut line = String::new();
            s.read_line(&mut line)?;
            seen.push(line.trim().to_string());
            // Our FIN after the server's: the server is in TIME_WAIT.
            drop(s);
            thread::sleep(Duration::from_millis(50));
        }
        Ok(seen)
    });
    stop.store(true, Ordering::SeqCst);
    let seen = seen.unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    let retransmitted = lab_counters(client);
    assert_eq!(seen, ["45500"; 5], "the backend saw the client's own port each time");
    assert!(!retransmitted.contains("SynRetrans"), "no SYN had to be sent again: {retransmitted}");
    assert_eq!(agent.maps().stat(lb_common::stat::PORT_REMAPPED).unwrap(), 0);
}

/// One request as `lb_lab::tcp_request_with` makes it (connect with
/// `timeout`, send `hello`, read to EOF within `timeout`), from the calling
/// thread's namespace, that also says which local port it had: a failure
/// can then be looked up in conntrack.
fn request_from_port(to: SocketAddrV4, timeout: Duration) -> Result<String, (u16, String)> {
    use std::{io::Read, os::fd::AsRawFd};
    // SAFETY: a fresh socket we own at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err((0, format!("socket: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: as above.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let started = Instant::now();
    match connect(&fd, to) {
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err((0, format!("connect: {e}"))),
        Ok(()) => {}
    }
    let port = local_port(&fd);
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    if ready == 0 {
        return Err((port, format!("connect: timed out after {:?}", started.elapsed())));
    }
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid fd and out pointers of the right size.
    unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ERROR, (&raw mut err).cast(), &mut len) };
    if err != 0 {
        return Err((port, format!("connect: {}", std::io::Error::from_raw_os_error(err))));
    }
    let mut s = TcpStream::from(fd);
    let io = |s: &mut TcpStream| -> std::io::Result<String> {
        s.set_nonblocking(false)?;
        s.set_write_timeout(Some(timeout))?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"hello\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.trim().to_owned())
    };
    io(&mut s).map_err(|e| (port, format!("after connect: {e}")))
}

fn local_port(fd: &OwnedFd) -> u16 {
    SockRef::from(fd).local_addr().ok().and_then(|a| a.as_socket()).map_or(0, |a| a.port())
}

/// The kernel's TCP and IP counters of a namespace that say where a SYN
/// went (the nonzero ones among these), as `name=value`.
fn lab_counters(ns: &lb_lab::Netns) -> String {
    const WANTED: [&str; 16] = [
        "Listen",
        "PAWS",
        "TW",
        "TimeWait",
        "Challenge",
        "Syn",
        "SYN",
        "Abort",
        "Rst",
        "Reset",
        "Fail",
        "Retrans",
        "Timeout",
        "NoRoute",
        "Unreach",
        "InErrs",
    ];
    // /proc/net is the process's namespace: the thread's is in thread-self.
    let text = ns.run(|| {
        ["netstat", "snmp"]
            .iter()
            .map(|f| std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).unwrap_or_default())
            .collect::<Vec<_>>()
    });
    let mut out = Vec::new();
    for file in &text {
        let lines: Vec<&str> = file.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()).skip(1) {
                if WANTED.iter().any(|w| n.contains(w)) && v != "0" {
                    out.push(format!("{n}={v}"));
                }
            }
        }
    }
    out.join(" ")
}

/// Everything the datapath reads to serve a new flow to the frontend
/// `addr` (TCP): its address's entry, both scopes of its frontend entry,
/// its rev-NAT slot, the live generation's slots and their backends.
fn datapath_view(maps: &lb_agent::maps::Maps, addr: SocketAddrV4) -> String {
    use lb_common::{IPPROTO_TCP, SCOPE_EXTERNAL, SCOPE_INTERNAL, Service4Key, SlotKey};
    let ip = u32::from_ne_bytes(addr.ip().octets());
    let key = |scope| Service4Key { addr: ip, port: addr.port().to_be(), proto: IPPROTO_TCP, scope };
    let vip = maps.vips.get(&ip).ok().flatten().map(|v| v.flags);
    let (ext, int) = (maps.services.get(&key(SCOPE_EXTERNAL)).ok().flatten(), maps.services.get(&key(SCOPE_INTERNAL)).ok().flatten());
    let mut view = format!("vip {vip:?} external {ext:?} internal {int:?}");
    if let Some(svc) = ext {
        let revnat = maps.revnat.map.get(&svc.frontend_id, 0).ok();
        view += &format!(" revnat {revnat:?}");
        for slot in 0..svc.count {
            let s = maps.slots.get(&SlotKey { frontend_id: svc.frontend_id, slot, generation: svc.generation }).ok().flatten();
            let be = s.and_then(|s| maps.backends.map.get(&s.backend_id, 0).ok());
            view += &format!(" slot{slot} {s:?} {be:?}");
        }
    }
    view
}

/// How the clients fared.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: Mutex<Vec<String>>,
}

#[test]
fn a_churn_of_services_fails_no_request_to_the_unchanged_ones() {
    if !kernel_tests_enabled() {
        return;
    }
    // 20 s in every test run; longer on demand (the 60 s soak):
    // LB_SOAK_SECONDS=60 cargo xtask test -- -p lb-agent --test churn
    let seconds = std::env::var("LB_SOAK_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    soak(Duration::from_secs(seconds));
}

/// Runs the churn for `length` with clients on the two unchanged Services
/// and on the scaled one, and asserts what the module docs say.
fn soak(length: Duration) {
    let pods = ["client", "client2", "a1", "a2", "b1", "b2", "s1", "s2", "s3", "s4"];
    let lab = NodeLab::new(&pods).unwrap();
    let mut servers: Vec<Server> = Vec::new();
    for name in &pods[2..] {
        let p = lab.pod(name);
        servers.push(tcp_server(&p.ns, SocketAddrV4::new(p.ip, 8080), name).unwrap());
    }
    let ip = |n: &str| lab.pod(n).ip;
    let dir = ManifestDir::new("soak");
    dir.write("stable-a.yaml", &service_yaml("stable-a", "10.96.0.10", 80, "TCP", 8080, &[ip("a1"), ip("a2")]));
    dir.write("stable-b.yaml", &service_yaml("stable-b", "10.96.0.11", 80, "TCP", 8080, &[ip("b1"), ip("b2")]));
    let scaled_pods: Vec<Ipv4Addr> = ["s1", "s2", "s3", "s4"].iter().map(|n| ip(n)).collect();
    let name_of: BTreeMap<Ipv4Addr, &str> = ["s1", "s2", "s3", "s4"].iter().map(|n| (ip(n), *n)).collect();
    let mut churn = churn::Churn::new(Ipv4Addr::new(10, 96, 0, 30), scaled_pods, vec![ip("a1"), ip("b1")], 42);
    for s in churn.services.values() {
        dir.write(&format!("{}.yaml", s.name), &churn::manifest(s));
    }
    let agent = Agent::start_with(&lab.node, &dir.0, PinDir::new("soak"), &[]);
    agent.wait_rows("the stable Services", |rows| rows.iter().filter(|r| r.frontend.starts_with("10.96.0.1")).count() == 2);

    let stop = AtomicBool::new(false);
    let tally = Tally::default();
    // (when, the scaled Service's endpoints from then on)
    let history: Mutex<Vec<(Instant, Vec<String>)>> =
        Mutex::new(vec![(Instant::now(), churn.scaled_endpoints().iter().map(|ip| name_of[ip].to_string()).collect())]);
    let wrong = Mutex::new(Vec::<String>::new());
    let scaled_answers = AtomicU64::new(0);
    let maps = agent.maps();
    let views: Vec<(SocketAddrV4, String)> =
        ["10.96.0.10:80", "10.96.0.11:80"].iter().map(|a| a.parse().unwrap()).map(|a| (a, datapath_view(&maps, a))).collect();
    let view_changes = Mutex::new(Vec::<String>::new());
    let started = Instant::now();
    let mut steps = 0;
    thread::scope(|scope| {
        for (pod, targets) in [("client", ["10.96.0.10:80", "10.96.0.11:80"]), ("client2", ["10.96.0.11:80", "10.96.0.10:80"])] {
            let ns = &lab.pod(pod).ns;
            let (stop, tally, maps) = (&stop, &tally, &maps);
            scope.spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let to: SocketAddrV4 = targets[i % targets.len()].parse().unwrap();
                    i += 1;
                    match ns.run(move || request_from_port(to, Duration::from_secs(2))) {
                        Ok(_) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err((port, e)) => {
                            // The flow's conntrack entries, as the datapath has them now.
                            let ct = lb_agent::inspect::conntrack::rows(
                                maps,
                                &lb_agent::inspect::conntrack::CtFilter { addr: None, port: Some(port) },
                            );
                            let at = started.elapsed();
                            tally.failed.lock().unwrap().push(format!("{to} from port {port} at {at:?}: {e}; conntrack: {ct:#?}"))
                        }
                    }
                }
            });
        }
        // The scaled Service's client: every answer must come from one of
        // its endpoints as of a moment ago (programming takes a sync).
        let ns = &lab.pod("client").ns;
        let (stop, history, wrong, answers) = (&stop, &history, &wrong, &scaled_answers);
        scope.spawn(move || {
            let to: SocketAddrV4 = "10.96.0.30:80".parse().unwrap();
            while !stop.load(Ordering::SeqCst) {
                let asked = Instant::now();
                if let Ok(tag) = tcp_request_with(ns, to, b"hello\n", Duration::from_secs(1)) {
                    answers.fetch_add(1, Ordering::Relaxed);
                    const GRACE: Duration = Duration::from_millis(1500);
                    let h = history.lock().unwrap();
                    let plausible = h.iter().enumerate().any(|(k, (since, set))| {
                        let until = h.get(k + 1).map(|(t, _)| *t + GRACE);
                        set.contains(&tag) && *since <= asked + Duration::from_millis(1) && until.is_none_or(|u| u >= asked)
                    });
                    if !plausible {
                        wrong.lock().unwrap().push(format!("{tag} at {:?}", asked - started));
                    }
                }
                thread::sleep(Duration::from_millis(5));
            }
        });

        // What the datapath reads for the unchanged Services must not
        // change (their entries are never rewritten): sampled all along.
        let (views, view_changes, maps) = (&views, &view_changes, &maps);
        scope.spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for (addr, first) in views {
                    let now = datapath_view(maps, *addr);
                    if now != *first {
                        view_changes.lock().unwrap().push(format!("{addr} at {:?}: {now}", started.elapsed()));
                    }
                }
                thread::sleep(Duration::from_millis(10));
            }
        });

        while started.elapsed() < length {
            let change = churn.step();
            steps += 1;
            for name in &change.removed {
                dir.remove(&format!("{name}.yaml"));
            }
            for name in change.added.iter().chain(&change.updated) {
                dir.write(&format!("{name}.yaml"), &churn::manifest(&churn.services[name]));
            }
            history.lock().unwrap().push((Instant::now(), churn.scaled_endpoints().iter().map(|ip| name_of[ip].to_string()).collect()));
            thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::SeqCst);
    });
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.into_inner().unwrap();
    eprintln!(
        "soak: {steps} churn steps in {:?}; unchanged Services: {ok} requests answered, {} failed; scaled Service: {} answers",
        started.elapsed(),
        failed.len(),
        scaled_answers.load(Ordering::Relaxed)
    );
    let counters: Vec<String> = lb_common::stat::NAMES
        .iter()
        .enumerate()
        .filter_map(|(i, name)| Some((name, maps.stat(i as u32).ok()?)))
        .filter(|(_, n)| *n != 0)
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    eprintln!("soak: datapath: {}", counters.join(" "));
    for name in pods {
        eprintln!("soak: {name}: {}", lab_counters(&lab.pod(name).ns));
    }
    eprintln!("soak: node: {}", lab_counters(&lab.node));
    let mut states: BTreeMap<(&str, &str, u64), usize> = BTreeMap::new();
    for r in lb_agent::inspect::conntrack::rows(&maps, &Default::default()).unwrap() {
        *states.entry((r.direction, r.state, r.age_s.min(3))).or_default() += 1;
    }
    eprintln!("soak: conntrack (direction, state, age up to 3 s): {states:?}");
    assert!(
        failed.is_empty(),
        "{} of {} requests to unchanged Services failed: {:?}\n{}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)],
        agent.log_text()
    );
    assert!(ok > 500, "the clients kept going: {ok}");
    let view_changes = view_changes.into_inner().unwrap();
    assert!(
        view_changes.is_empty(),
        "{} samples of the unchanged Services' map entries differed from {views:#?}, the first: {:#?}",
        view_changes.len(),
        &view_changes[..view_changes.len().min(3)]
    );
    let wrong = wrong.into_inner().unwrap();
    assert!(wrong.is_empty(), "answers from outside the scaled Service's endpoints: {wrong:?}");
    assert!(scaled_answers.load(Ordering::Relaxed) > 20);
    drop(servers);
}
