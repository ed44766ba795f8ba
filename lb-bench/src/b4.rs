//! B4: throughput through the node, client pod -> service -> backend pod,
//! for each datapath in a fresh lab with 1,000 services programmed.
//!
//! - UDP: one connected socket sends 64-byte datagrams as fast as it can
//!   for `seconds`; a sink in the backend pod counts what arrives.
//! - TCP: one connection writes 64 KiB buffers for `seconds`; a sink reads
//!   and counts bytes.
//!
//! Softirq CPU time over the run is read from /proc/stat (all CPUs): on
//! veth, forwarding and NAT run in softirq. The loops are bounded in time
//! and stay inside the lab.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use lb_lab::NodeLab;

use crate::{
    b2,
    dp::{self, Kind},
    services, sys,
};

#[derive(Clone, Debug)]
pub struct B4Options {
    pub seconds: f64,
    /// The longest wait for a quiet machine before each datapath
    /// ([`crate::sys::wait_quiet`]).
    pub quiet_max: Duration,
}

pub const SERVICES: usize = 1_000;
const UDP_PAYLOAD: usize = 64;

#[derive(Clone, Debug)]
pub struct B4Row {
    pub kind: Kind,
    /// Datagrams per second sent and received.
    pub udp_sent_pps: f64,
    pub udp_pps: f64,
    /// Softirq share of all CPU time during the UDP run, in percent.
    pub udp_softirq_pct: f64,
    /// Bits per second received over TCP.
    pub tcp_bps: f64,
    pub tcp_softirq_pct: f64,
}

impl B4Row {
    /// Softirq CPU-microseconds per received datagram.
    pub fn udp_softirq_us_per_pkt(&self, seconds: f64) -> f64 {
        let cpus = sys::online_cpus() as f64;
        self.udp_softirq_pct / 100.0 * cpus * seconds * 1e6 / (self.udp_pps * seconds).max(1.0)
    }
}

struct Sink {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn udp_sink(ns: &lb_lab::Netns, addr: SocketAddrV4) -> Result<Sink> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (s2, c2) = (stop.clone(), count.clone());
    let sock = ns.run(move || UdpSocket::bind(addr)).context("bind UDP sink")?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !s2.load(Ordering::Relaxed) {
            if sock.recv(&mut buf).is_ok() {
                c2.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok(Sink { stop, count, thread: Some(thread) })
}

fn tcp_sink(ns: &lb_lab::Netns, addr: SocketAddrV4) -> Result<Sink> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (s2, c2) = (stop.clone(), count.clone());
    let listener = ns.run(move || TcpListener::bind(addr)).context("bind TCP sink")?;
    listener.set_nonblocking(true)?;
    let thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        while !s2.load(Ordering::Relaxed) {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
            while !s2.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        c2.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
        }
    });
    Ok(Sink { stop, count, thread: Some(thread) })
}

/// Runs `f` (the sender) and returns its result with the softirq share of
/// all CPU time (percent) over the run.
fn with_softirq<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let (s0, t0) = sys::cpu_ticks();
    let out = f();
    let (s1, t1) = sys::cpu_ticks();
    let pct = (s1 - s0) as f64 * 100.0 / (t1 - t0).max(1) as f64;
    (out, pct)
}

fn udp_send(ns: &lb_lab::Netns, to: SocketAddrV4, secs: f64) -> Result<u64> {
    ns.run(move || -> Result<u64> {
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        sock.connect(to)?;
        let payload = [0x55u8; UDP_PAYLOAD];
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut sent = 0u64;
        while Instant::now() < end {
            for _ in 0..64 {
                // ENOBUFS/ECONNREFUSED: count only what the kernel took.
                if sock.send(&payload).is_ok() {
                    sent += 1;
                }
            }
        }
        Ok(sent)
    })
}

fn tcp_send(ns: &lb_lab::Netns, to: SocketAddrV4, secs: f64) -> Result<u64> {
    ns.run(move || -> Result<u64> {
        let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))?;
        s.set_write_timeout(Some(Duration::from_millis(200)))?;
        let buf = vec![0xaau8; 64 * 1024];
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut sent = 0u64;
        while Instant::now() < end {
            match s.write(&buf) {
                Ok(n) => sent += n as u64,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(sent)
    })
}

fn run_one(kind: Kind, o: &B4Options) -> Result<B4Row> {
    crate::sys::wait_quiet(o.quiet_max);
    let lab = NodeLab::new(&["client", "be0"])?;
    let be = &lab.pods[1];
    let mut svcs = b2::service_list(SERVICES, 10, &[be.ip]);
    // The target service gets a UDP port too.
    let target = svcs[0].clone();
    svcs.push(target.udp_twin());
    let installed = dp::install(kind, &lab, &svcs, None)?.expect("no budget");
    let to = SocketAddrV4::new(target.ip, target.port);
    let sink_addr = SocketAddrV4::new(be.ip, services::TARGET_PORT);
    let client = &lab.pods[0].ns;

    let udp = udp_sink(&be.ns, sink_addr)?;
    // Warm-up (neighbours, conntrack entry).
    let _ = udp_send(client, to, 0.05)?;
    std::thread::sleep(Duration::from_millis(100));
    let before = udp.count();
    let start = Instant::now();
    let (sent, udp_softirq_pct) = with_softirq(|| udp_send(client, to, o.seconds));
    let sent = sent?;
    std::thread::sleep(Duration::from_millis(100));
    let elapsed = start.elapsed().as_secs_f64() - 0.1;
    let got = udp.count() - before;
    drop(udp);
    ensure!(got > 0, "{kind}: no UDP datagram reached the backend");

    let tcp = tcp_sink(&be.ns, sink_addr)?;
    let before = tcp.count();
    let start = Instant::now();
    let (sent_bytes, tcp_softirq_pct) = with_softirq(|| tcp_send(client, to, o.seconds));
    let _ = sent_bytes?;
    std::thread::sleep(Duration::from_millis(100));
    let tcp_elapsed = start.elapsed().as_secs_f64() - 0.1;
    let bytes = tcp.count() - before;
    drop(tcp);
    ensure!(bytes > 0, "{kind}: no TCP data reached the backend");
    drop(installed);
    let row = B4Row {
        kind,
        udp_sent_pps: sent as f64 / elapsed,
        udp_pps: got as f64 / elapsed,
        udp_softirq_pct,
        tcp_bps: bytes as f64 * 8.0 / tcp_elapsed,
        tcp_softirq_pct,
    };
    eprintln!(
        "lb-bench: B4 {kind:<20}: UDP {:.0} pps received ({:.0} sent), softirq {:.1}%; TCP {:.2} Gbit/s, softirq {:.1}%",
        row.udp_pps,
        row.udp_sent_pps,
        row.udp_softirq_pct,
        row.tcp_bps / 1e9,
        row.tcp_softirq_pct
    );
    Ok(row)
}

pub fn run(o: &B4Options) -> Result<Vec<B4Row>> {
    Kind::ALL.iter().map(|&k| run_one(k, o).with_context(|| format!("B4 {k}"))).collect()
}
