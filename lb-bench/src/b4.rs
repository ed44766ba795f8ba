//! B4: throughput through the node, for each datapath in a fresh lab with
//! 1,000 services programmed:
//!
//! - east-west: client pod -> ClusterIP -> backend pod ([`NodeLab`]), lb
//!   with and without BPF host routing;
//! - north-south: the external client of a two-node [`ClusterLab`] ->
//!   node A's NodePort -> a backend pod on node A, and -> a backend pod on
//!   node B (DNAT + SNAT to node A's address, back out of the external
//!   interface). kube-proxy marks NodePort traffic for masquerade in both
//!   cases; lb (its XDP program on the external interface, `auto` mode as
//!   the agent attaches it) only DNATs towards a local pod.
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
use lb_agent::datapath::XdpAttach;
use lb_lab::{ClusterLab, NodeLab};

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

/// The NodePorts of the north-south rows (the local and the remote
/// backend's services).
pub const NODE_PORT_LOCAL: u16 = 30080;
pub const NODE_PORT_REMOTE: u16 = 30081;

/// Which way the traffic goes through the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum B4Path {
    /// Client pod -> ClusterIP -> backend pod on the same node.
    ClusterIp,
    /// External client -> NodePort -> backend pod on that node.
    NodePortLocal,
    /// External client -> NodePort -> backend pod on another node.
    NodePortRemote,
}

impl std::fmt::Display for B4Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            B4Path::ClusterIp => "pod → ClusterIP → pod",
            B4Path::NodePortLocal => "external → NodePort → pod on the node",
            B4Path::NodePortRemote => "external → NodePort → pod on another node",
        })
    }
}

#[derive(Clone, Debug)]
pub struct B4Row {
    pub kind: Kind,
    pub path: B4Path,
    /// lb's north-south rows: the XDP mode that ran, and why.
    pub xdp: Option<String>,
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

/// Sends UDP, then TCP, from `client` to `to` for `o.seconds` each, and
/// counts what a sink on `sink_addr` in `sink_ns` receives.
fn measure(
    kind: Kind,
    path: B4Path,
    client: &lb_lab::Netns,
    to: SocketAddrV4,
    sink_ns: &lb_lab::Netns,
    sink_addr: SocketAddrV4,
    o: &B4Options,
) -> Result<B4Row> {
    let udp = udp_sink(sink_ns, sink_addr)?;
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
    ensure!(got > 0, "{kind}, {path}: no UDP datagram reached the backend");

    let tcp = tcp_sink(sink_ns, sink_addr)?;
    let before = tcp.count();
    let start = Instant::now();
    let (sent_bytes, tcp_softirq_pct) = with_softirq(|| tcp_send(client, to, o.seconds));
    let _ = sent_bytes?;
    std::thread::sleep(Duration::from_millis(100));
    let tcp_elapsed = start.elapsed().as_secs_f64() - 0.1;
    let bytes = tcp.count() - before;
    drop(tcp);
    ensure!(bytes > 0, "{kind}, {path}: no TCP data reached the backend");
    let row = B4Row {
        kind,
        path,
        xdp: None,
        udp_sent_pps: sent as f64 / elapsed,
        udp_pps: got as f64 / elapsed,
        udp_softirq_pct,
        tcp_bps: bytes as f64 * 8.0 / tcp_elapsed,
        tcp_softirq_pct,
    };
    eprintln!(
        "lb-bench: B4 {kind:<20} {path}: UDP {:.0} pps received ({:.0} sent), softirq {:.1}%; TCP {:.2} Gbit/s, softirq {:.1}%",
        row.udp_pps,
        row.udp_sent_pps,
        row.udp_softirq_pct,
        row.tcp_bps / 1e9,
        row.tcp_softirq_pct
    );
    Ok(row)
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
    let row = measure(kind, B4Path::ClusterIp, &lab.pods[0].ns, to, &be.ns, sink_addr, o)?;
    drop(installed);
    Ok(row)
}

/// The north-south rows of one datapath: a two-node cluster, the
/// datapath on node A (node B only routes to its pod), one NodePort
/// service (TCP and UDP) per backend.
fn run_north_south(kind: Kind, xdp_mode: XdpAttach, o: &B4Options) -> Result<Vec<B4Row>> {
    crate::sys::wait_quiet(o.quiet_max);
    let lab = ClusterLab::new(&[&["be-local"], &["be-remote"]])?;
    let (node, other) = (lab.node(0), lab.node(1));
    let (local, remote) = (&node.pods[0], &other.pods[0]);
    let mut svcs = b2::service_list(SERVICES, 10, &[local.ip]);
    let last = svcs.len() - 1;
    svcs[0].node_port = Some(NODE_PORT_LOCAL);
    svcs[last].endpoints = vec![(remote.ip, services::TARGET_PORT)];
    svcs[last].node_port = Some(NODE_PORT_REMOTE);
    let (a, b) = (svcs[0].udp_twin(), svcs[last].udp_twin());
    svcs.extend([a, b]);
    let setup = dp::NorthSouthSetup {
        node_name: node.name.clone(),
        node_ip: node.ip,
        ext_if: lb_lab::EXT_IF.to_string(),
        xdp_mode,
        endpoint_nodes: vec![(local.ip, node.name.clone()), (remote.ip, other.name.clone())],
    };
    let pod_ifaces: Vec<String> = node.pods.iter().map(|p| p.host_if.clone()).collect();
    // Native XDP on a veth: frames it transmits (XDP_TX) reach the peer
    // only when the peer runs XDP too; the switch ports run XDP_PASS.
    let _switch = match (kind, xdp_mode) {
        (k, XdpAttach::Native) if k.is_ours() => Some(switch_xdp_pass(&lab)?),
        _ => None,
    };
    let installed = dp::install_on(kind, &node.ns, &pod_ifaces, Some(&setup), &svcs, None)?.expect("no budget");
    if let Some(mode) = &installed.xdp {
        eprintln!("lb-bench: B4 {kind}: XDP {mode} on {} of {}", setup.ext_if, node.name);
    }
    let mut rows = Vec::new();
    for (path, be, np) in [(B4Path::NodePortLocal, local, NODE_PORT_LOCAL), (B4Path::NodePortRemote, remote, NODE_PORT_REMOTE)] {
        let to = SocketAddrV4::new(node.ip, np);
        let sink = SocketAddrV4::new(be.ip, services::TARGET_PORT);
        let row = measure(kind, path, &lab.client, to, &be.ns, sink, o)?;
        rows.push(B4Row { xdp: installed.xdp.clone(), ..row });
    }
    drop(installed);
    Ok(rows)
}

/// `lb_xdp_pass` in native mode on every switch port of `lab`, until the
/// returned object is dropped.
fn switch_xdp_pass(lab: &ClusterLab) -> Result<aya::Ebpf> {
    let ports = lab.switch_ports();
    lab.switch.run(move || -> Result<aya::Ebpf> {
        let mut ebpf = aya::Ebpf::load(lb_agent::EBPF_OBJECT).context("loading the eBPF object for the switch")?;
        let name = lb_agent::datapath::XDP_PASS_PROGRAM;
        let pass: &mut aya::programs::Xdp = ebpf.program_mut(name).with_context(|| format!("{name} missing"))?.try_into()?;
        pass.load()?;
        for port in &ports {
            pass.attach(port, aya::programs::XdpMode::Driver).with_context(|| format!("attaching {name} to switch port {port}"))?;
        }
        Ok(ebpf)
    })
}

pub fn run(o: &B4Options) -> Result<Vec<B4Row>> {
    let mut rows = Vec::new();
    // East-west with and without BPF host routing (issue 12: "measure B4
    // throughput with and without it").
    for &k in &Kind::B2 {
        rows.push(run_one(k, o).with_context(|| format!("B4 {k}"))?);
    }
    for &k in &Kind::ALL {
        rows.extend(run_north_south(k, XdpAttach::Auto, o).with_context(|| format!("B4 north-south {k}"))?);
    }
    // lb once more with native XDP (the lab allows it with XDP on the
    // switch ports).
    rows.extend(run_north_south(Kind::Ours, XdpAttach::Native, o).context("B4 north-south, lb with native XDP")?);
    // And with BPF host routing, both modes: to a pod of the node, past the
    // host stack both ways (`lb_tc_ext_ingress`).
    for mode in [XdpAttach::Auto, XdpAttach::Native] {
        rows.extend(
            run_north_south(Kind::OursHostRouting, mode, o)
                .with_context(|| format!("B4 north-south, lb with XDP {mode} and BPF host routing"))?,
        );
    }
    // Grouped by path, datapaths in order within each.
    rows.sort_by_key(|r| (r.path, r.kind));
    Ok(rows)
}
