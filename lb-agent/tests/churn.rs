//! Correct under churn, with real sockets on a strict lab node: two flows
//! from one client port to two Services on one backend both work (the
//! second gets another source port), and a churn of Services (fillers
//! added and removed, one Service scaled, renamed, flipped between random
//! and Maglev, its affinity toggled) every 200 ms fails no request to the
//! Services that do not change, and never sends the scaled Service's
//! clients to a backend outside its endpoints once programming has landed.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    os::fd::{FromRawFd, OwnedFd},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::{Agent, ManifestDir, PinDir, kernel_tests_enabled, line_echo, service_yaml};
use lb_lab::{NodeLab, Server, churn, tcp_request_with, tcp_server, udp_echo};

/// A socket of `kind` bound to `port` with SO_REUSEADDR, so that a second
/// socket can use the same local port towards another destination.
fn reused_port_socket(kind: libc::c_int, port: u16) -> OwnedFd {
    // SAFETY: plain socket calls on a fresh fd we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&raw const one).cast(), size_of::<libc::c_int>() as u32);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_port = port.to_be();
        assert_eq!(libc::bind(fd, (&raw const sa).cast(), size_of::<libc::sockaddr_in>() as u32), 0, "bind {port}");
        OwnedFd::from_raw_fd(fd)
    }
}

fn connect(fd: &OwnedFd, to: SocketAddrV4) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd and sockaddr.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_port = to.port().to_be();
    sa.sin_addr.s_addr = u32::from_ne_bytes(to.ip().octets());
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const sa).cast(), size_of::<libc::sockaddr_in>() as u32) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
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
    let (a, b) = (SocketAddrV4::new([10, 96, 0, 50].into(), 80), SocketAddrV4::new([10, 96, 0, 51].into(), 80));
    let result = lab.pod("client").ns.run(move || -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        for round in 0..10u16 {
            let port = 45000 + round;
            // Two TCP connections from the same port, both open at once.
            let (fa, fb) = (reused_port_socket(libc::SOCK_STREAM, port), reused_port_socket(libc::SOCK_STREAM, port));
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
            let (ua, ub) = (reused_port_socket(libc::SOCK_DGRAM, port), reused_port_socket(libc::SOCK_DGRAM, port));
            connect(&ua, SocketAddrV4::new(*a.ip(), 53))?;
            connect(&ub, SocketAddrV4::new(*b.ip(), 53))?;
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
    stop.store(true, Ordering::SeqCst);
    let lines = result.unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    let want: Vec<String> =
        (0..10).flat_map(|r| (0..3).map(move |i| format!("b1:a{r}.{i}|b1:b{r}.{i}")).chain([format!("b1:ua{r}|b1:ub{r}")])).collect();
    assert_eq!(lines, want, "both flows of each pair answered, each on its own connection");
    assert!(agent.maps().stat(lb_common::stat::PORT_REMAPPED).unwrap() >= 20, "the second flow of each pair got another port");
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
    let started = Instant::now();
    let mut steps = 0;
    thread::scope(|scope| {
        for (pod, targets) in [("client", ["10.96.0.10:80", "10.96.0.11:80"]), ("client2", ["10.96.0.11:80", "10.96.0.10:80"])] {
            let ns = &lab.pod(pod).ns;
            let (stop, tally) = (&stop, &tally);
            scope.spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let to: SocketAddrV4 = targets[i % targets.len()].parse().unwrap();
                    i += 1;
                    match tcp_request_with(ns, to, b"hello\n", Duration::from_secs(2)) {
                        Ok(_) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => tally.failed.lock().unwrap().push(format!("{to}: {e:#}")),
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
    assert!(
        failed.is_empty(),
        "{} of {} requests to unchanged Services failed: {:?}\n{}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)],
        agent.log_text()
    );
    assert!(ok > 500, "the clients kept going: {ok}");
    let wrong = wrong.into_inner().unwrap();
    assert!(wrong.is_empty(), "answers from outside the scaled Service's endpoints: {wrong:?}");
    assert!(scaled_answers.load(Ordering::Relaxed) > 20);
    drop(servers);
}
