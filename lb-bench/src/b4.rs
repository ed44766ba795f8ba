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
//!   the agent attaches it) only DNATs towards a local pod;
//! - passed: the same client -> a pod of node A by its own address, no
//!   Service: what each datapath costs the traffic it does not translate.
//!
//! - UDP: a generator in the client sends one prebuilt 64-byte datagram's
//!   frame as fast as it can for `seconds` (`AF_PACKET`, past the qdisc,
//!   in batches), three times (the median run is the row's), then a
//!   connected UDP socket does (what an application sees); a sink in the
//!   backend pod, polling, counts what arrives.
//! - TCP: one connection writes 64 KiB buffers for `seconds`; a sink reads
//!   and counts bytes.
//!
//! Softirq CPU time over the run is read from /proc/stat (all CPUs): on
//! veth, forwarding and NAT run in softirq. The loops are bounded in time
//! and stay inside the lab.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd},
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
    /// External client -> a pod of the node by its own address, no
    /// Service: traffic the datapath passes, and what it costs it.
    Passed,
}

impl std::fmt::Display for B4Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            B4Path::ClusterIp => "pod → ClusterIP → pod",
            B4Path::NodePortLocal => "external → NodePort → pod on the node",
            B4Path::NodePortRemote => "external → NodePort → pod on another node",
            B4Path::Passed => "external → pod on the node, no Service (passed)",
        })
    }
}

#[derive(Clone, Debug)]
pub struct B4Row {
    pub kind: Kind,
    pub path: B4Path,
    /// lb's north-south rows: the XDP mode that ran, and why.
    pub xdp: Option<String>,
    /// Datagrams per second the generator sent, and the sink received.
    pub udp_sent_pps: f64,
    pub udp_pps: f64,
    /// Softirq share of all CPU time during the generator's run, in
    /// percent.
    pub udp_softirq_pct: f64,
    /// Datagrams per second received from a connected UDP socket's
    /// `sendmmsg` instead: what an application sees.
    pub udp_socket_pps: f64,
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
    // The sink polls and never sleeps in recv: a sleeping receiver costs
    // the sender's CPU a wake-up (an IPI on a VM) for every datagram, the
    // same in every row, and that hid the datapaths' difference. A
    // generator's receiver (pktgen, xdp-trafficgen) does not sleep either.
    sock.set_nonblocking(true)?;
    let thread = std::thread::spawn(move || {
        let mut batch = Batch::new();
        while !s2.load(Ordering::Relaxed) {
            let n = batch.recv(&sock);
            if n > 0 {
                c2.fetch_add(n as u64, Ordering::Relaxed);
            } else {
                std::hint::spin_loop();
            }
        }
    });
    Ok(Sink { stop, count, thread: Some(thread) })
}

/// Runs of the generator per row; the median is kept.
const GENERATOR_RUNS: usize = 3;

/// Datagrams per `sendmmsg` / `recvmmsg` call.
const BATCH: usize = 64;

/// `BATCH` message headers over one buffer each, for `sendmmsg` (every
/// buffer holds the payload) and `recvmmsg`.
struct Batch {
    bufs: Vec<[u8; 2048]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Box<Batch> {
        let mut b = Box::new(Batch { bufs: vec![[0x55u8; 2048]; BATCH], iovs: Vec::with_capacity(BATCH), hdrs: Vec::with_capacity(BATCH) });
        for i in 0..BATCH {
            let base = b.bufs[i].as_mut_ptr().cast();
            b.iovs.push(libc::iovec { iov_base: base, iov_len: 2048 });
        }
        for i in 0..BATCH {
            // SAFETY: an all-zero msghdr is valid (no name, no control).
            let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
            hdr.msg_hdr.msg_iov = &mut b.iovs[i];
            hdr.msg_hdr.msg_iovlen = 1;
            b.hdrs.push(hdr);
        }
        b
    }

    /// Receives what is queued on `sock` (non-blocking), up to `BATCH`
    /// datagrams; 0 when nothing is.
    fn recv(&mut self, sock: &UdpSocket) -> usize {
        for iov in &mut self.iovs {
            iov.iov_len = 2048;
        }
        // SAFETY: the headers point at this batch's iovecs and buffers,
        // which outlive the call.
        let n = unsafe { libc::recvmmsg(sock.as_raw_fd(), self.hdrs.as_mut_ptr(), BATCH as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        n.max(0) as usize
    }

    /// Sends `BATCH` datagrams of `len` bytes on the connected `sock`;
    /// returns how many the kernel took.
    fn send(&mut self, sock: &UdpSocket, len: usize) -> usize {
        self.send_fd(sock.as_raw_fd(), len)
    }

    /// Sends the first `len` bytes of every buffer on `fd`.
    fn send_fd(&mut self, fd: i32, len: usize) -> usize {
        for iov in &mut self.iovs {
            iov.iov_len = len;
        }
        // SAFETY: as in `recv`.
        let n = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), BATCH as u32, 0) };
        n.max(0) as usize
    }

    /// Puts `bytes` at the start of every buffer.
    fn fill(&mut self, bytes: &[u8]) {
        for b in &mut self.bufs {
            b[..bytes.len()].copy_from_slice(bytes);
        }
    }
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
        // Batches of datagrams per system call, as a generator sends them:
        // the sender's own cost, the same in every row, is kept small.
        let mut batch = Batch::new();
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut sent = 0u64;
        while Instant::now() < end {
            // ENOBUFS/ECONNREFUSED: count only what the kernel took.
            sent += batch.send(&sock, UDP_PAYLOAD) as u64;
        }
        Ok(sent)
    })
}

/// A generator's frame: the Ethernet frame of one UDP datagram of
/// `UDP_PAYLOAD` bytes to `to`, from a socket of `ns` connected to it,
/// with both checksums complete, and the interface it leaves by.
struct Frame {
    ifindex: i32,
    bytes: Vec<u8>,
}

/// The route, the next hop's MAC and the source port come from the kernel:
/// a connected socket sends one datagram (which also resolves the
/// neighbour), and `ip -j route get` / `neigh` / `link` name the rest.
fn udp_frame(ns: &lb_lab::Netns, to: SocketAddrV4) -> Result<(Frame, UdpSocket)> {
    let sock = ns.run(move || -> std::io::Result<UdpSocket> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect(to)?;
        s.send(&[0x55u8; UDP_PAYLOAD])?;
        Ok(s)
    })?;
    std::thread::sleep(Duration::from_millis(50));
    let std::net::SocketAddr::V4(from) = sock.local_addr()? else { anyhow::bail!("UDP socket bound to IPv6") };
    let json = |args: &[&str]| -> Result<serde_json::Value> {
        let out = ns.ip_output(&[&["-j"], args].concat())?;
        let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("ip -j {}: {out}", args.join(" ")))?;
        v.get(0).cloned().with_context(|| format!("ip -j {}: empty", args.join(" ")))
    };
    let dst = to.ip().to_string();
    let route = json(&["route", "get", &dst])?;
    let dev = route["dev"].as_str().context("route without dev")?.to_string();
    let hop = route["gateway"].as_str().unwrap_or(&dst).to_string();
    let neigh = json(&["neigh", "show", &hop, "dev", &dev])?;
    let link = json(&["link", "show", "dev", &dev])?;
    let mac = |v: &serde_json::Value| -> Result<[u8; 6]> {
        let s = v.as_str().context("no MAC")?;
        let b: Vec<u8> = s.split(':').map(|h| u8::from_str_radix(h, 16)).collect::<Result<_, _>>()?;
        b.try_into().map_err(|_| anyhow::anyhow!("MAC {s}"))
    };
    let (dmac, smac) = (mac(&neigh["lladdr"])?, mac(&link["address"])?);
    let ifindex = link["ifindex"].as_i64().context("link without ifindex")? as i32;
    Ok((Frame { ifindex, bytes: udp_frame_bytes(dmac, smac, from, to) }, sock))
}

/// Ethernet + IPv4 (DF, TTL 64) + UDP + `UDP_PAYLOAD` bytes of 0x55.
fn udp_frame_bytes(dmac: [u8; 6], smac: [u8; 6], from: SocketAddrV4, to: SocketAddrV4) -> Vec<u8> {
    let fold = |mut sum: u32| {
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    };
    let words = |b: &[u8]| b.chunks(2).map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0))).sum::<u32>();
    let udp_len = (8 + UDP_PAYLOAD) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend(from.ip().octets());
    ip.extend(to.ip().octets());
    let ip_sum = fold(words(&ip));
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let mut udp = Vec::with_capacity(usize::from(udp_len));
    udp.extend(from.port().to_be_bytes());
    udp.extend(to.port().to_be_bytes());
    udp.extend(udp_len.to_be_bytes());
    udp.extend([0, 0]);
    udp.extend([0x55u8; UDP_PAYLOAD]);
    let pseudo = words(&ip[12..20]) + 17 + u32::from(udp_len);
    let udp_sum = match fold(pseudo + words(&udp)) {
        0 => 0xffff,
        s => s,
    };
    udp[6..8].copy_from_slice(&udp_sum.to_be_bytes());
    let mut frame = Vec::with_capacity(14 + ip.len() + udp.len());
    frame.extend(dmac);
    frame.extend(smac);
    frame.extend(0x0800u16.to_be_bytes());
    frame.extend(ip);
    frame.extend(udp);
    frame
}

/// Sends `frame` for `secs` from an `AF_PACKET` socket in `ns`, in
/// batches (`sendmmsg`) and past the qdisc (`PACKET_QDISC_BYPASS`), as
/// trafgen does: a generator in place of pktgen, which this kernel lacks.
/// Returns the frames the kernel took.
fn udp_generate(ns: &lb_lab::Netns, frame: &Frame, secs: f64) -> Result<u64> {
    let (ifindex, bytes) = (frame.ifindex, frame.bytes.clone());
    ns.run(move || -> Result<u64> {
        // SAFETY: plain socket calls on a descriptor this closure owns; the
        // structures passed live across each call.
        unsafe {
            // Protocol 0: the socket only sends (it takes no copy of what
            // the interface receives).
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
            ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex;
            let rc = libc::bind(fd.as_raw_fd(), (&raw const sll).cast(), size_of::<libc::sockaddr_ll>() as u32);
            ensure!(rc == 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
            let one: libc::c_int = 1;
            let rc = libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as u32,
            );
            ensure!(rc == 0, "PACKET_QDISC_BYPASS: {}", std::io::Error::last_os_error());
            let mut batch = Batch::new();
            batch.fill(&bytes);
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let mut sent = 0u64;
            while Instant::now() < end {
                sent += batch.send_fd(fd.as_raw_fd(), bytes.len()) as u64;
            }
            Ok(sent)
        }
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
    // The generator's flow: its socket stays open, so that no other
    // socket takes its port.
    let (frame, _flow) = udp_frame(client, to)?;
    let _ = udp_generate(client, &frame, 0.05)?;
    std::thread::sleep(Duration::from_millis(100));
    // Returns datagrams sent and received per second, and the softirq share.
    let udp_run = |send: &dyn Fn() -> Result<u64>| -> Result<(f64, f64, f64)> {
        let before = udp.count();
        let start = Instant::now();
        let (sent, softirq_pct) = with_softirq(send);
        let sent = sent?;
        std::thread::sleep(Duration::from_millis(100));
        let elapsed = start.elapsed().as_secs_f64() - 0.1;
        let got = udp.count() - before;
        ensure!(got > 0, "{kind}, {path}: no UDP datagram reached the backend");
        Ok((sent as f64 / elapsed, got as f64 / elapsed, softirq_pct))
    };
    // The generator runs three times and the median run is kept: one run
    // the machine disturbed (the last lab's namespaces going away, say)
    // does not make the row (the ratio of two single runs moved by a
    // fifth from one bench to the next).
    let mut runs = (0..GENERATOR_RUNS).map(|_| udp_run(&|| udp_generate(client, &frame, o.seconds))).collect::<Result<Vec<_>>>()?;
    runs.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (udp_sent_pps, udp_pps, udp_softirq_pct) = runs[runs.len() / 2];
    let (_, udp_socket_pps, _) = udp_run(&|| udp_send(client, to, o.seconds))?;
    drop(udp);

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
        udp_sent_pps,
        udp_pps,
        udp_softirq_pct,
        udp_socket_pps,
        tcp_bps: bytes as f64 * 8.0 / tcp_elapsed,
        tcp_softirq_pct,
    };
    eprintln!(
        "lb-bench: B4 {kind:<20} {path}: UDP {:.0} pps received ({:.0} sent), softirq {:.1}%; from a socket {:.0} pps; TCP {:.2} Gbit/s, softirq {:.1}%",
        row.udp_pps,
        row.udp_sent_pps,
        row.udp_softirq_pct,
        row.udp_socket_pps,
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
    // Traffic no Service owns, through the same interface: the client
    // routes node A's pod network through node A (as a routed pod network
    // does: Calico's BGP mode, flannel's host-gw).
    lab.client_route(&lb_lab::pod_cidr(0), 0)?;
    let sink = SocketAddrV4::new(local.ip, services::TARGET_PORT);
    let row = measure(kind, B4Path::Passed, &lab.client, sink, &local.ns, sink, o)?;
    rows.push(B4Row { xdp: installed.xdp.clone(), ..row });
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
    // And with the north-south path in tc instead (`--xdp-mode tc`: no
    // XDP, so no copy of every frame for generic XDP's headroom).
    rows.extend(run_north_south(Kind::Ours, XdpAttach::Tc, o).context("B4 north-south, lb in tc")?);
    // And with BPF host routing, every mode: to a pod of the node, past the
    // host stack both ways (`lb_tc_ext_ingress`, or `lb_tc_ns` itself).
    for mode in [XdpAttach::Auto, XdpAttach::Native, XdpAttach::Tc] {
        rows.extend(
            run_north_south(Kind::OursHostRouting, mode, o)
                .with_context(|| format!("B4 north-south, lb with --xdp-mode {mode} and BPF host routing"))?,
        );
    }
    // Grouped by path, datapaths in order within each.
    rows.sort_by_key(|r| (r.path, r.kind));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_frame_is_the_datagram_a_socket_sends() {
        let (from, to) = (SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000), SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 1), 8080));
        let frame = udp_frame_bytes([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], from, to);
        // The expected frame, built independently.
        let mut want = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4(from.ip().octets(), to.ip().octets(), 64)
            .udp(from.port(), to.port())
            .write(&mut want, &[0x55; UDP_PAYLOAD])
            .unwrap();
        let p = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!("not IPv4") };
        assert!(ip.header().dont_fragment());
        // etherparse sets DF off and the identification to 0: compare the
        // rest, then both checksums as a receiver checks them.
        assert_eq!(frame.len(), want.len());
        assert_eq!(frame[..20], want[..20]);
        assert_eq!(frame[22..24], want[22..24]);
        assert_eq!(frame[26..], want[26..], "addresses, UDP header and payload");
        assert_eq!(ip.header().to_header().calc_header_checksum(), ip.header().header_checksum());
        let Some(etherparse::TransportSlice::Udp(udp)) = &p.transport else { panic!("not UDP") };
        let sum = udp.to_header().calc_checksum_ipv4(&ip.header().to_header(), udp.payload()).unwrap();
        assert_eq!(sum, udp.checksum());
    }
}
