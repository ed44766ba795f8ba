//! B2: new-connection latency against the number of services.
//!
//! A lab node with a client pod and ten backend pods (lean TCP servers
//! on :8080). N services are generated once; the first and the last carry the
//! ten real backends, the others fake endpoints. For each datapath in turn
//! (in a fresh lab, so no conntrack or rule state carries over) the client
//! makes `connections` sequential connections to each target (the first
//! service, the last, and the backend pods directly: the floor): connect,
//! send a line, read the reply to EOF, close. Each connection is timed on
//! the client (`Instant`), and so is the connect() alone. The targets take
//! turns in rounds ([`ROUNDS`]), so that what else the machine does over
//! the run weighs on them alike.

use std::{
    io::{Read, Write},
    net::{SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use lb_lab::NodeLab;

use crate::{
    dp::{self, Kind},
    services::{self, Svc},
    sys,
};

#[derive(Clone, Debug)]
pub struct B2Options {
    pub services: Vec<usize>,
    pub endpoints: usize,
    pub connections: usize,
    /// Budget for loading a baseline's rules; past it the point is not
    /// measured.
    pub install_budget: Duration,
    /// The longest wait for a quiet machine before each datapath
    /// ([`sys::wait_quiet`]).
    pub quiet_max: Duration,
    /// The datapaths measured, in this order.
    pub datapaths: Vec<Kind>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    First,
    Last,
    /// Straight to a backend pod's address, no Service: the floor that
    /// shows what the datapath adds (its programs or rules still see the
    /// packets).
    Direct,
}

impl Position {
    /// In the order of the report's rows.
    pub const ALL: [Position; 3] = [Position::Direct, Position::First, Position::Last];
}

/// Warm-up connections to each target before it is measured (neighbours,
/// caches, the servers' first threads).
const WARM_UP: usize = 50;

/// Rounds the connections of one datapath are measured in (see [`run`]).
pub const ROUNDS: usize = 10;

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Position::First => "first",
            Position::Last => "last",
            Position::Direct => "direct to a backend pod (no Service)",
        })
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pcts {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Pcts {
    pub fn of(mut v: Vec<Duration>) -> Pcts {
        v.sort_unstable();
        let at = |q: f64| {
            if v.is_empty() {
                return 0.0;
            }
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
            v[i].as_secs_f64() * 1e6
        };
        Pcts { p50: at(0.50), p90: at(0.90), p99: at(0.99) }
    }
}

#[derive(Clone, Debug)]
pub struct B2Row {
    pub kind: Kind,
    pub services: usize,
    pub position: Position,
    /// connect + request + reply + close.
    pub request: Pcts,
    /// connect() alone (SYN to SYN-ACK through the datapath).
    pub connect: Pcts,
    pub connections: usize,
    pub failures: usize,
    /// Installing the rules / filling the maps.
    pub install: Duration,
    /// Why the row holds no figures.
    pub note: Option<String>,
}

pub const BACKENDS: usize = 10;

/// The service list: `n` services, the first and the last with the lab's
/// backend pods as endpoints.
pub fn service_list(n: usize, endpoints: usize, backends: &[std::net::Ipv4Addr]) -> Vec<Svc> {
    let mut svcs = services::generate(n.max(2), endpoints);
    let real: Vec<_> = backends.iter().map(|&ip| (ip, services::TARGET_PORT)).collect();
    let last = svcs.len() - 1;
    svcs[0].endpoints = real.clone();
    svcs[last].endpoints = real;
    svcs
}

/// A lean TCP server on one thread: accept, read the request line, write a
/// reply, close. No thread per connection, no polling timers: it adds as
/// little latency and jitter of its own as it can.
pub struct LeanServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LeanServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn lean_server(ns: &lb_lab::Netns, addr: SocketAddrV4) -> Result<LeanServer> {
    use std::{os::fd::AsRawFd, sync::atomic::Ordering};
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = ns.run(move || std::net::TcpListener::bind(addr)).context("bind")?;
    let s2 = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while !s2.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                continue;
            }
            let Ok((mut s, _)) = listener.accept() else {
                continue;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = s.set_nodelay(true);
            if matches!(s.read(&mut buf), Ok(n) if n > 0) {
                let _ = s.write_all(b"ok\n");
            }
            // Everything the client sent was read: close() sends a FIN.
        }
    });
    Ok(LeanServer { stop, thread: Some(thread) })
}

pub fn lab(backends: usize) -> Result<(NodeLab, Vec<LeanServer>)> {
    let mut names = vec!["client".to_string()];
    names.extend((0..backends).map(|i| format!("be{i}")));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let lab = NodeLab::new(&refs)?;
    let mut servers = Vec::new();
    for p in &lab.pods[1..] {
        servers.push(lean_server(&p.ns, SocketAddrV4::new(p.ip, services::TARGET_PORT))?);
    }
    Ok((lab, servers))
}

/// The first source port of B2's direct connections (the floor): each
/// binds a port of its own, from here up, below the kernel's ephemeral
/// range (32768 on), where the Service connections' ports come from. A
/// direct connection from the port of a Service flow that went to the same
/// backend would carry that flow's reply tuple, which netfilter's conntrack
/// (kube-proxy) and lb's both still hold.
pub const FIRST_PORT: u16 = 10_000;

/// `count` sequential connections from `ns`, the i-th to `to[i % len]`,
/// from source port `port + i` (with `Some(port)`) or an ephemeral one;
/// returns the request and connect latencies and the number of failures.
pub fn connections(ns: &lb_lab::Netns, to: &[SocketAddrV4], count: usize, port: Option<u16>) -> (Vec<Duration>, Vec<Duration>, usize) {
    let to = to.to_vec();
    ns.run(move || {
        let mut req = Vec::with_capacity(count);
        let mut conn = Vec::with_capacity(count);
        let mut failures = 0;
        let timeout = Duration::from_secs(2);
        for i in 0..count {
            // Socket (and bind) before the clock starts: the timed part is
            // the connection itself.
            let Ok(sock) = socket(port.map(|p| p + i as u16)) else {
                failures += 1;
                continue;
            };
            let t0 = Instant::now();
            if sock.connect_timeout(&std::net::SocketAddr::V4(to[i % to.len()]).into(), timeout).is_err() {
                failures += 1;
                continue;
            }
            let t1 = Instant::now();
            let mut s = TcpStream::from(sock);
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(timeout));
            let mut buf = [0u8; 256];
            let mut ok = s.write_all(b"hello\n").is_ok();
            let mut got = 0;
            while ok {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(_) => ok = false,
                }
            }
            drop(s);
            let t2 = Instant::now();
            if ok && got > 0 {
                conn.push(t1 - t0);
                req.push(t2 - t0);
            } else {
                failures += 1;
            }
        }
        (req, conn, failures)
    })
}

fn socket(port: Option<u16>) -> std::io::Result<socket2::Socket> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(port) = port {
        sock.set_reuse_address(true)?;
        sock.bind(&std::net::SocketAddr::V4(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, port)).into())?;
    }
    Ok(sock)
}

/// The two rows (first and last target) of a datapath that was not measured
/// at `n` services, with why.
fn not_measured(rows: &mut Vec<B2Row>, kind: Kind, n: usize, install: Duration, note: String) {
    for position in [Position::First, Position::Last] {
        rows.push(B2Row {
            kind,
            services: n,
            position,
            request: Pcts::default(),
            connect: Pcts::default(),
            connections: 0,
            failures: 0,
            install,
            note: Some(note.clone()),
        });
    }
}

/// `skip`: (datapath, services) points known not to load within the
/// budget (from B3), with the reason; they are reported, not run.
pub fn run(o: &B2Options, skip: &[(Kind, usize, String)]) -> Result<Vec<B2Row>> {
    let warm = WARM_UP.min(o.connections);
    let ports = warm + o.connections;
    ensure!(
        usize::from(FIRST_PORT) + ports < 32_768,
        "B2: {} direct connections need {ports} source ports of their own, more than {FIRST_PORT}..32767 holds",
        o.connections
    );
    let mut rows = Vec::new();
    for &n in &o.services {
        for &kind in &o.datapaths {
            if let Some((_, _, why)) = skip.iter().find(|(k, at, _)| *k == kind && n >= *at) {
                eprintln!("lb-bench: B2 {kind} with {n} services: {why}; not measured");
                not_measured(&mut rows, kind, n, Duration::ZERO, format!("not measured: {why}"));
                continue;
            }
            let waited = sys::wait_quiet(o.quiet_max);
            if waited > Duration::from_secs(2) {
                eprintln!("lb-bench: B2 waited {waited:.1?} for the machine to be quiet before {kind} at {n}");
            }
            let (lab, servers) = lab(BACKENDS)?;
            let ips: Vec<_> = lab.pods[1..].iter().map(|p| p.ip).collect();
            let svcs = service_list(n, o.endpoints, &ips);
            let installed = match dp::install(kind, &lab, &svcs, Some(o.install_budget)) {
                Ok(i) => i,
                // A baseline that cannot hold the ruleset at all (legacy
                // iptables-restore fails at COMMIT with 30k x 10 here) is a
                // result, not a reason to stop the run.
                Err(e) if !kind.is_ours() => {
                    let why = format!("{e:#}");
                    eprintln!("lb-bench: B2 {kind} with {n} services: loading the rules failed: {why}; not measured");
                    not_measured(&mut rows, kind, n, Duration::ZERO, format!("not measured: loading the rules failed ({why})"));
                    continue;
                }
                Err(e) => return Err(e.context(format!("installing {kind} with {n} services"))),
            };
            // (A block moves the Option, so nothing of it outlives `lab`.)
            let Some(installed) = ({ installed }) else {
                eprintln!("lb-bench: B2 {kind} with {n} services: the rules did not load within {:?}; not measured", o.install_budget);
                not_measured(
                    &mut rows,
                    kind,
                    n,
                    o.install_budget,
                    format!("not measured: loading the rules took over {} s", o.install_budget.as_secs()),
                );
                continue;
            };
            let client = &lab.pods[0].ns;
            let targets = |position: Position| -> Vec<SocketAddrV4> {
                match position {
                    Position::First => vec![SocketAddrV4::new(svcs[0].ip, svcs[0].port)],
                    Position::Last => vec![SocketAddrV4::new(svcs[svcs.len() - 1].ip, svcs[svcs.len() - 1].port)],
                    // The floor goes to the same ten backend pods the
                    // Service picks from, one after the other: one pod's
                    // server alone stays warmer than ten.
                    Position::Direct => ips.iter().map(|&ip| SocketAddrV4::new(ip, services::TARGET_PORT)).collect(),
                }
            };
            let mut port = FIRST_PORT;
            let mut from = |position: Position, count: usize| {
                (position == Position::Direct).then(|| {
                    let p = port;
                    port += count as u16;
                    p
                })
            };
            // Warm-up.
            for position in Position::ALL {
                let to = targets(position);
                let (_, _, warm_fail) = connections(client, &to, warm, from(position, warm));
                ensure!(warm_fail == 0, "{kind}, {n} services: {warm_fail} of the warm-up connections to {to:?} failed");
            }
            // The positions take turns, a batch each per round, the order
            // rotating from round to round: whatever else the machine does
            // over the run (it settles after the install, the kernel tears
            // the last lab down) falls on all of them alike.
            let rounds = ROUNDS.min(o.connections).max(1);
            let mut got: Vec<(Vec<Duration>, Vec<Duration>, usize)> = Position::ALL.iter().map(|_| Default::default()).collect();
            for r in 0..rounds {
                let batch = o.connections / rounds + usize::from(r < o.connections % rounds);
                for k in 0..Position::ALL.len() {
                    let i = (r + k) % Position::ALL.len();
                    let (req, conn, failures) = connections(client, &targets(Position::ALL[i]), batch, from(Position::ALL[i], batch));
                    got[i].0.extend(req);
                    got[i].1.extend(conn);
                    got[i].2 += failures;
                }
            }
            for (position, (req, conn, failures)) in Position::ALL.into_iter().zip(got) {
                ensure!(
                    failures * 100 <= o.connections,
                    "{kind}, {n} services, {position}: {failures} of {} connections failed",
                    o.connections
                );
                let row = B2Row {
                    kind,
                    services: n,
                    position,
                    request: Pcts::of(req),
                    connect: Pcts::of(conn),
                    connections: o.connections,
                    failures,
                    install: installed.took,
                    note: None,
                };
                eprintln!(
                    "lb-bench: B2 {kind:<20} {n:>6} svc {position:<5}: p50 {:.0} us p90 {:.0} us p99 {:.0} us (connect p99 {:.0} us)",
                    row.request.p50, row.request.p90, row.request.p99, row.connect.p99
                );
                rows.push(row);
            }
            drop(installed);
            drop(servers);
            drop(lab);
        }
    }
    Ok(rows)
}
