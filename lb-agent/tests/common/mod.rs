//! Shared harness for the kernel tests: the gate that decides between
//! running and skipping, an agent process in a lab node, and polling.
#![allow(dead_code)]

pub mod fixture;
pub mod v6;

use std::{
    fs,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use aya::programs::SchedClassifier;
use lb_agent::{
    datapath::{Datapath, MapSizes, TC_EGRESS_PROGRAM, TC_INGRESS_PROGRAM},
    list,
    maps::Maps,
    model::{Backend, BackendAddr, Desired, Frontend, FrontendAddr, Protocol},
    reconcile::Reconciler,
};
use lb_common::Config;
use lb_lab::testrun::{self, Outcome};
use lb_lab::{ChildGuard, Netns};

/// Whether the kernel tests can run. Without root they are skipped, except
/// under CI (`CI=true`), where they must fail instead.
pub fn kernel_tests_enabled() -> bool {
    match lb_lab::require_root() {
        Ok(()) => true,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true and the kernel tests cannot run: {e:#}")
        }
        Err(e) => {
            eprintln!("SKIPPED (needs root and iproute2): {e:#}");
            false
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique bpffs pin directory, removed on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> PinDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        PinDir(PathBuf::from(format!("/sys/fs/bpf/lb-test-{}-{n}-{tag}", std::process::id())))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = lb_agent::datapath::cleanup(&self.0) {
            eprintln!("removing {}: {e:#}", self.0.display());
        }
    }
}

/// A scratch directory of manifests, removed on drop.
pub struct ManifestDir(pub PathBuf);

impl ManifestDir {
    pub fn new(tag: &str) -> ManifestDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lb-test-{}-{n}-{tag}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        ManifestDir(dir)
    }

    /// Writes a file atomically (write + rename), as a ConfigMap update or
    /// an editor would, so the agent never reads half a file.
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.0.join(format!(".{name}.tmp"));
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, self.0.join(name)).unwrap();
    }

    pub fn remove(&self, name: &str) {
        fs::remove_file(self.0.join(name)).unwrap();
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// An `lb-agent run` process inside a lab node namespace.
pub struct Agent {
    pub pins: PinDir,
    pub log: PathBuf,
    child: Option<ChildGuard>,
}

impl Agent {
    /// Starts the agent in `node` on `manifests`, attaching to the lab's pod
    /// interfaces (`lbp*`) and to a cgroup for the socket hooks.
    pub fn start(node: &Netns, manifests: &Path, tag: &str) -> Agent {
        let pins = PinDir::new(tag);
        Self::start_with(node, manifests, pins, &[])
    }

    pub fn start_with(node: &Netns, manifests: &Path, pins: PinDir, extra: &[&str]) -> Agent {
        Self::start_wrapped(node, manifests, pins, &[], extra)
    }

    /// [`Agent::start_with`], run through `wrapper` (a command that execs
    /// its arguments, such as `setpriv ... --`).
    pub fn start_wrapped(node: &Netns, manifests: &Path, pins: PinDir, wrapper: &[&str], extra: &[&str]) -> Agent {
        let log =
            std::env::temp_dir().join(format!("lb-agent-{}-{}.log", std::process::id(), pins.0.file_name().unwrap().to_string_lossy()));
        let log_file = fs::File::create(&log).unwrap();
        let agent = env!("CARGO_BIN_EXE_lb-agent");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = node.command(program);
                c.args(args).arg(agent);
                c
            }
            None => node.command(agent),
        };
        cmd.args(["run", "--pod-ifaces", "lbp*"]);
        if !extra.contains(&"--poll-interval-ms") {
            cmd.args(["--poll-interval-ms", "100"]);
        }
        cmd.arg("--manifests")
            .arg(manifests)
            .arg("--bpffs")
            .arg(&pins.0)
            .args(extra)
            .env("RUST_LOG", "info,lb=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        let child = node.spawn(&mut cmd).unwrap();
        Agent { pins, log, child: Some(child) }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether this agent has pinned the tcx ingress link of interface
    /// `ifindex` (it attached its programs there).
    pub fn tcx_attached(&self, ifindex: u32) -> bool {
        self.pins.0.join("links").join(format!("tcx-in-{ifindex}")).exists()
    }

    /// The maps, as `lb-agent list` reads them.
    pub fn maps(&self) -> Maps {
        wait_for("the agent to pin its maps", Duration::from_secs(10), || Maps::open(&self.pins.0).ok())
    }

    /// The listing rows, once the agent has written the config.
    pub fn rows(&self) -> Vec<list::Row> {
        list::rows(&self.maps()).unwrap()
    }

    /// Waits until the listing satisfies `pred`; panics with the agent's
    /// log otherwise. The 15 s count from when the agent has loaded its
    /// datapath: loading (the verifier) alone can take longer on a busy
    /// machine, two agents at once (up to 120 s).
    pub fn wait_rows(&self, what: &str, pred: impl Fn(&[list::Row]) -> bool) -> Vec<list::Row> {
        let loading_until = Instant::now() + Duration::from_secs(120);
        let mut loaded_at = None;
        loop {
            if loaded_at.is_none() && self.log_text().contains("datapath loaded") {
                loaded_at = Some(Instant::now());
            }
            let deadline = loaded_at.map_or(loading_until, |t| t + Duration::from_secs(15));
            if let Ok(maps) = Maps::open(&self.pins.0)
                && let Ok(rows) = list::rows(&maps)
            {
                if pred(&rows) {
                    return rows;
                }
                if Instant::now() > deadline {
                    panic!("timed out waiting for {what}; maps hold {rows:#?}\nagent log:\n{}", self.log_text());
                }
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}\nagent log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the agent's log holds `needle`; panics with the log
    /// otherwise. Timed like [`Agent::wait_rows`]: 15 s from when the
    /// datapath has loaded, up to 120 s for the load itself (a restarted
    /// agent verifies its programs again before it adopts or goes live).
    pub fn wait_log(&self, what: &str, needle: &str) {
        let loading_until = Instant::now() + Duration::from_secs(120);
        let mut loaded_at = None;
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return;
            }
            if loaded_at.is_none() && log.contains("datapath loaded") {
                loaded_at = Some(Instant::now());
            }
            if Instant::now() > loaded_at.map_or(loading_until, |t| t + Duration::from_secs(15)) {
                panic!("timed out waiting for {what}\nagent log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent (SIGTERM, as the kubelet would) and waits for it.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// Kills the agent (SIGKILL, as the OOM killer would) and waits for it.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
    }

    /// The agent's process ID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the agent has exited (reaping it), with its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// Stops the agent and hands over its pin directory (with everything
    /// still pinned), for the next agent.
    pub fn stop_keeping_pins(mut self, signal: libc::c_int) -> PinDir {
        self.signal(signal);
        std::mem::replace(&mut self.pins, PinDir(PathBuf::new()))
    }

    fn signal(&mut self, signal: libc::c_int) {
        if let Some(child) = self.child.take() {
            let mut child = child.into_inner();
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, signal) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_file(&self.log);
    }
}

/// The packets interface `name` of `ns` has sent and received (tx, rx),
/// from `ip -s link`'s counters.
pub fn link_packets(ns: &lb_lab::Netns, name: &str) -> (u64, u64) {
    let out = ns.ip_output(&["-j", "-s", "link", "show", name]).unwrap();
    let link: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stats = &link[0]["stats64"];
    (stats["tx"]["packets"].as_u64().unwrap(), stats["rx"]["packets"].as_u64().unwrap())
}

/// The ifindex of interface `name` in namespace `ns`, if it exists.
pub fn ifindex_in(ns: &lb_lab::Netns, name: &str) -> Option<u32> {
    let name = name.to_string();
    ns.run(move || lb_agent::host::ifindex(&name)).ok()
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A dual-stack Service (`ipFamilies: [IPv4, IPv6]`, a ClusterIP of each
/// family) with one port, and an EndpointSlice of each family for
/// `pods4` and `pods6` (ready). `affinity`: `sessionAffinity: ClientIP`.
pub fn dual_stack_yaml(
    name: &str,
    ips: (&str, &str),
    port: (u16, &str, u16),
    pods: (&[std::net::Ipv4Addr], &[std::net::Ipv6Addr]),
    affinity: bool,
) -> String {
    let ((ip4, ip6), (port, proto, target), (pods4, pods6)) = (ips, port, pods);
    let endpoints = |ips: Vec<String>| {
        if ips.is_empty() {
            return " []\n".to_string();
        }
        let eps: String = ips.iter().map(|ip| format!("- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n")).collect();
        format!("\n{eps}")
    };
    let eps4 = endpoints(pods4.iter().map(ToString::to_string).collect());
    let eps6 = endpoints(pods6.iter().map(ToString::to_string).collect());
    let affinity = if affinity { "  sessionAffinity: ClientIP\n" } else { "" };
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: test}}
spec:
  clusterIP: {ip4}
  clusterIPs: [{ip4}, "{ip6}"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
{affinity}  ports: [{{name: p, port: {port}, protocol: {proto}, targetPort: p}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-4, namespace: test, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: p, port: {target}, protocol: {proto}}}]
endpoints:{eps4}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-6, namespace: test, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv6
ports: [{{name: p, port: {target}, protocol: {proto}}}]
endpoints:{eps6}"#
    )
}

/// A dual-stack NodePort Service `web` in namespace `test` (ClusterIPs
/// 10.96.0.10 and fd00:96::a, `externalTrafficPolicy: policy`) with
/// `ports`, each (name, port, protocol, target port, NodePort), and one
/// endpoint, `pod` (its IPv4 and IPv6 addresses) on node `node`: an
/// EndpointSlice per family.
pub fn dual_stack_nodeport_yaml(
    policy: &str,
    ports: &[(&str, u16, &str, u16, u16)],
    pod: (std::net::Ipv4Addr, std::net::Ipv6Addr),
    node: &str,
) -> String {
    let svc_ports: String = ports
        .iter()
        .map(|(name, port, proto, target, node_port)| {
            format!("  - {{name: {name}, port: {port}, protocol: {proto}, targetPort: {target}, nodePort: {node_port}}}\n")
        })
        .collect();
    let ep_ports: String =
        ports.iter().map(|(name, _, proto, target, _)| format!("- {{name: {name}, port: {target}, protocol: {proto}}}\n")).collect();
    let slice = |family: &str, ip: String| {
        format!(
            r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-{family}, namespace: test, labels: {{kubernetes.io/service-name: web}}}}
addressType: {family}
ports:
{ep_ports}endpoints:
- addresses: ["{ip}"]
  nodeName: {node}
  conditions: {{ready: true}}
"#
        )
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: test}}
spec:
  type: NodePort
  externalTrafficPolicy: {policy}
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::a"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports:
{svc_ports}{}{}"#,
        slice("IPv4", pod.0.to_string()),
        slice("IPv6", pod.1.to_string())
    )
}

/// A ClusterIP Service with one port, and its EndpointSlice.
pub fn service_yaml(name: &str, cluster_ip: &str, port: u16, proto: &str, target_port: u16, endpoints: &[std::net::Ipv4Addr]) -> String {
    let eps: String = endpoints.iter().map(|ip| format!("- addresses: [{ip}]\n  conditions: {{ready: true}}\n")).collect();
    let eps = if eps.is_empty() { "[]\n".to_string() } else { format!("\n{eps}") };
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: test}}
spec:
  clusterIP: {cluster_ip}
  ports: [{{name: p, port: {port}, protocol: {proto}, targetPort: p}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: test, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: p, port: {target_port}, protocol: {proto}}}]
endpoints: {eps}"#
    )
}

pub fn sa(s: &str) -> std::net::SocketAddrV4 {
    s.parse().unwrap()
}

/// A frontend `addr` with `backends` (all ready), flags 0.
pub fn frontend(addr: &str, proto: Protocol, backends: &[&str]) -> (FrontendAddr, Frontend) {
    let backends: Vec<SocketAddrV4> = backends.iter().map(|b| sa(b)).collect();
    frontend_of(sa(addr), proto, &backends)
}

/// [`frontend`] of either family (`SocketAddrV4` or `SocketAddrV6`), for
/// the reconciler (`Reconciler::apply`, `apply_dual`).
pub fn frontend_of<S: SocketAddrOf>(addr: S, proto: Protocol, backends: &[S]) -> (FrontendAddr<S::Ip>, Frontend<S::Ip>) {
    let fa = FrontendAddr::new(addr.ip_of(), addr.port_of(), proto);
    let backends = backends
        .iter()
        .map(|b| Backend {
            addr: BackendAddr { ip: b.ip_of(), port: b.port_of(), proto },
            terminating: false,
            node_name: None,
            zone: None,
            hints: None,
        })
        .collect();
    (fa, Frontend { addr: fa, name: format!("test/{addr}"), backends, flags: 0, affinity_timeout: 0 })
}

/// A socket address of one family: its IP and port.
pub trait SocketAddrOf: Copy + std::fmt::Display {
    type Ip: Copy;
    fn ip_of(&self) -> Self::Ip;
    fn port_of(&self) -> u16;
}

impl SocketAddrOf for SocketAddrV4 {
    type Ip = std::net::Ipv4Addr;
    fn ip_of(&self) -> Self::Ip {
        *self.ip()
    }
    fn port_of(&self) -> u16 {
        self.port()
    }
}

impl SocketAddrOf for std::net::SocketAddrV6 {
    type Ip = std::net::Ipv6Addr;
    fn ip_of(&self) -> Self::Ip {
        *self.ip()
    }
    fn port_of(&self) -> u16 {
        self.port()
    }
}

/// Runs each packet through the pod-side program and counts the ones
/// answered (sent back out: a reject within the client's rate); every
/// other one must have been dropped.
pub fn count_answered(l: &mut Loaded, packets: impl IntoIterator<Item = Vec<u8>>) -> u64 {
    let mut sent = 0;
    for p in packets {
        let out = l.run(&p);
        if out.verdict == testrun::TC_ACT_REDIRECT {
            sent += 1;
        } else {
            assert_eq!(out.verdict, testrun::TC_ACT_SHOT);
        }
    }
    sent
}

/// Runs `lb-agent ARGS --bpffs DIR -o json` and parses its output.
pub fn cli(pins: &Path, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(args)
        .arg("--bpffs")
        .arg(pins)
        .args(["-o", "json"])
        .output()
        .expect("running lb-agent");
    assert!(out.status.success(), "lb-agent {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("lb-agent {args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The datapath loaded in-process into a private pin directory, its maps
/// programmed with `desired`, for BPF_PROG_TEST_RUN.
pub struct Loaded {
    pub dp: Datapath,
    pub reconciler: Reconciler,
    pub pins: PinDir,
}

impl Loaded {
    pub fn new(tag: &str, desired: Desired) -> Loaded {
        let pins = PinDir::new(tag);
        let sizes = MapSizes { services: 64, backends: 64, slots: 256, ct_tcp: 4096, ct_any: 4096, affinity: 256, ..MapSizes::default() };
        let dp = Datapath::load(&pins.0, &sizes).unwrap_or_else(|e| panic!("loading the datapath: {e:#}"));
        let mut maps = Maps::open(&pins.0).unwrap();
        maps.write_config(&Config::ready(0)).unwrap();
        let mut reconciler = Reconciler::recover(maps).unwrap();
        let stats = reconciler.apply(&desired);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        Loaded { dp, reconciler, pins }
    }

    /// The pod interfaces' ingress program (packets leaving pods).
    pub fn tc(&mut self) -> &mut SchedClassifier {
        self.dp.ebpf.program_mut(TC_INGRESS_PROGRAM).unwrap().try_into().unwrap()
    }

    /// The egress program (packets on their way to a client).
    pub fn tc_egress(&mut self) -> &mut SchedClassifier {
        self.dp.ebpf.program_mut(TC_EGRESS_PROGRAM).unwrap().try_into().unwrap()
    }

    /// Runs a packet leaving a pod through the ingress program.
    pub fn run(&mut self, input: &[u8]) -> Outcome {
        testrun::run_tc(self.tc(), input).unwrap()
    }

    /// Runs a packet on its way to a client through the egress program.
    pub fn run_egress(&mut self, input: &[u8]) -> Outcome {
        testrun::run_tc(self.tc_egress(), input).unwrap()
    }

    /// A datapath counter (`lb_common::stat`), summed over CPUs.
    pub fn stat(&self, index: u32) -> u64 {
        self.reconciler.maps().stat(index).unwrap()
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

/// Recomputes the IPv4 and L4 checksums from scratch with etherparse.
pub fn assert_checksums_valid(name: &str, packet: &[u8]) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(packet).unwrap_or_else(|e| panic!("{name}: unparsable output: {e}"));
    let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("{name}: not IPv4") };
    let header = ip.header().to_header();
    assert_eq!(header.header_checksum, header.calc_header_checksum(), "{name}: IPv4 checksum");
    let (src, dst) = (ip.header().source(), ip.header().destination());
    match &p.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let want = tcp.to_header().calc_checksum_ipv4_raw(src, dst, tcp.payload()).unwrap();
            assert_eq!(tcp.checksum(), want, "{name}: TCP checksum");
        }
        Some(TransportSlice::Udp(udp)) if udp.checksum() != 0 => {
            let want = udp.to_header().calc_checksum_ipv4_raw(src, dst, udp.payload()).unwrap();
            assert_eq!(udp.checksum(), want, "{name}: UDP checksum");
        }
        Some(TransportSlice::Udp(_)) => {}
        other => panic!("{name}: unexpected transport {other:?}"),
    }
}

/// Splits an Ethernet + IPv4 packet into two IPv4 fragments, the first
/// carrying `first` bytes of the IP payload (a multiple of 8), with the
/// same IP ID, as a sender's stack would.
pub fn fragment(packet: &[u8], first: usize) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(first % 8, 0);
    let (eth, ip) = packet.split_at(14);
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let (hdr, payload) = ip.split_at(ihl);
    let make = |data: &[u8], offset: usize, more: bool| {
        let mut h = hdr.to_vec();
        h[2..4].copy_from_slice(&((ihl + data.len()) as u16).to_be_bytes());
        // Fragments carry no DF.
        let frag = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let sum = ipv4_checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        [eth, &h, data].concat()
    };
    (make(&payload[..first], 0, true), make(&payload[first..], first, false))
}

/// Puts two fragments of one datagram back together (headers from the
/// first, the fragment field set to DF, as the datagram was sent before
/// the sender fragmented it), checking they agree.
pub fn reassemble(first: &[u8], later: &[u8]) -> Vec<u8> {
    let ihl = ((first[14] & 0x0f) as usize) * 4;
    assert_eq!(first[14 + 4..14 + 6], later[14 + 4..14 + 6], "same IP ID");
    assert_eq!(first[14 + 12..14 + 20], later[14 + 12..14 + 20], "same addresses");
    let mut out = first.to_vec();
    out.extend_from_slice(&later[14 + ihl..]);
    let len = (out.len() - 14) as u16;
    out[14 + 2..14 + 4].copy_from_slice(&len.to_be_bytes());
    out[14 + 6..14 + 8].copy_from_slice(&0x4000u16.to_be_bytes());
    out[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let sum = ipv4_checksum(&out[14..14 + ihl]);
    out[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
    out
}

/// The IPv4 header checksum of `h` (whose checksum field is zero).
pub fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Asserts that an ICMP error's outer IPv4 header, its ICMP checksum and
/// the quoted IPv4 header's checksum are all right; returns (outer source,
/// outer destination, quoted source, quoted destination) as socket
/// addresses (ports from the quoted L4 header).
pub fn icmp_error_parts(
    name: &str,
    packet: &[u8],
) -> (std::net::Ipv4Addr, std::net::Ipv4Addr, std::net::SocketAddrV4, std::net::SocketAddrV4) {
    use std::net::{Ipv4Addr, SocketAddrV4};
    let ip = &packet[14..];
    assert_eq!(ip[9], 1, "{name}: ICMP");
    let outer = &ip[..20];
    assert_eq!(ipv4_checksum(outer), 0, "{name}: outer IPv4 checksum");
    let icmp = &ip[20..];
    let mut sum: u32 = icmp.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    assert_eq!(sum, 0xffff, "{name}: ICMP checksum");
    let q = &icmp[8..];
    assert_eq!(ipv4_checksum(&q[..20]), 0, "{name}: quoted IPv4 checksum");
    let a = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let p = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    (a(&outer[12..16]), a(&outer[16..20]), SocketAddrV4::new(a(&q[12..16]), p(&q[20..22])), SocketAddrV4::new(a(&q[16..20]), p(&q[22..24])))
}

/// An ICMP error of `icmp_type`/`code` from `from` to `to`, quoting the
/// IPv4 header and the first 8 payload bytes of `about` (an Ethernet
/// frame), with correct checksums.
pub fn icmp_error(from: std::net::Ipv4Addr, to: std::net::Ipv4Addr, icmp_type: u8, code: u8, about: &[u8]) -> Vec<u8> {
    let quote = &about[14..14 + 28];
    let mut icmp = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quote);
    let mut sum: u32 = icmp.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    icmp[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&from.octets());
    ip.extend_from_slice(&to.octets());
    let sum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    [&about[..14], &ip[..], &icmp[..]].concat()
}

/// `packet` (Ethernet + IPv4) with IP identification `id`, checksum fixed.
pub fn with_ip_id(packet: &[u8], id: u16) -> Vec<u8> {
    let mut p = packet.to_vec();
    p[18..20].copy_from_slice(&id.to_be_bytes());
    p[24..26].copy_from_slice(&[0, 0]);
    let sum = ipv4_checksum(&p[14..34]);
    p[24..26].copy_from_slice(&sum.to_be_bytes());
    p
}

/// `GET /healthz` over HTTP/1.1 (`Connection: close`) from `ns` to `to`
/// (either family): (status code, body). Health check NodePorts answer
/// any path.
pub fn http_status(ns: &Netns, to: impl Into<SocketAddr>) -> (u16, String) {
    http_get(ns, to, "/healthz")
}

/// [`http_status`] of another `path`.
pub fn http_get(ns: &Netns, to: impl Into<SocketAddr>, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let to = to.into();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    ns.run(move || {
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap_or_else(|e| panic!("{to}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let code = text.split_whitespace().nth(1).unwrap_or("0").parse().unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (code, body)
    })
}

/// A TCP server answering every line with `<tag>:<line>` on connections
/// it keeps open (on an address of either family); stops when the flag it
/// returns is set.
pub fn line_echo(ns: &Netns, addr: impl Into<std::net::SocketAddr>, tag: &'static str) -> Arc<AtomicBool> {
    use std::io::{BufRead, BufReader, Write};
    let addr = addr.into();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    ns.spawn_thread("line-echo", move || {
        let l = TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        while !stop2.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((s, _)) => {
                    std::thread::spawn(move || {
                        s.set_nonblocking(false).unwrap();
                        let mut out = s.try_clone().unwrap();
                        for line in BufReader::new(s).lines() {
                            let Ok(line) = line else { break };
                            if writeln!(out, "{tag}:{line}").is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    })
    .unwrap();
    stop
}

/// The pre-filter's kinds for `addr` as its family's map holds it
/// (`LB4_VIP_FILTER` or `LB6_VIP_FILTER`: the lane the programs read, by
/// the same lb-common functions).
pub fn filter_kinds(l: &Loaded, addr: impl Into<std::net::IpAddr>) -> u32 {
    use lb_common::vip_filter;
    let maps = l.reconciler.maps();
    let (slot, filter) = match addr.into() {
        std::net::IpAddr::V4(a) => (vip_filter::slot(u32::from_ne_bytes(a.octets())), &maps.vip_filter),
        std::net::IpAddr::V6(a) => (vip_filter::slot6(&lb_common::addr6(a)), &maps.v6.vip_filter),
    };
    vip_filter::kinds(filter.get(slot.word).unwrap(), slot)
}

/// Zeroes a pre-filter's words behind the agent's back (as a new agent
/// finds a filter next to an older agent's maps).
pub fn wipe_filter(filter: &mut lb_agent::maps::Named<aya::maps::Array<aya::maps::MapData, u64>>) {
    for (i, w) in filter.slots().unwrap() {
        if w != 0 {
            filter.set(i, &0).unwrap();
        }
    }
}

/// A TCP server that answers every connection with the peer's address.
pub struct WhoAmI(Arc<AtomicBool>);

impl WhoAmI {
    pub fn start(ns: &Netns, addr: impl Into<std::net::SocketAddr>) -> WhoAmI {
        let addr = addr.into();
        let stop = Arc::new(AtomicBool::new(false));
        let listener = ns.run(move || std::net::TcpListener::bind(addr).unwrap());
        listener.set_nonblocking(true).unwrap();
        let s = stop.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        // Read the request, answer, then close cleanly (unread
                        // data would turn the close into a reset).
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 64];
                        let _ = conn.read(&mut buf);
                        let _ = conn.write_all(format!("{peer}\n").as_bytes());
                        let _ = conn.shutdown(std::net::Shutdown::Write);
                        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        WhoAmI(stop)
    }
}

impl Drop for WhoAmI {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A TCP server at `addr` in `ns` that hands each connection (blocking)
/// to `handle`, one after the other, until the returned flag is set.
pub fn serve_each(
    ns: &lb_lab::Netns,
    addr: impl Into<SocketAddr>,
    handle: impl Fn(std::net::TcpStream) + Send + 'static,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let addr = addr.into();
    let h = ns
        .spawn_thread("serve-each", move || {
            let l = TcpListener::bind(addr).unwrap();
            l.set_nonblocking(true).unwrap();
            while !stop2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        handle(s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
        .unwrap();
    (stop, h)
}

/// A TCP server that sends `len` bytes to every connection and closes.
pub fn bulk_server(ns: &lb_lab::Netns, addr: impl Into<SocketAddr>, len: usize) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let data = vec![b'z'; len];
    serve_each(ns, addr, move |mut s| {
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(&data);
        let _ = s.shutdown(Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    })
}

/// A TCP server that reads each connection to its end and answers with
/// the number of bytes it read (an upload's receiver).
pub fn upload_server(ns: &lb_lab::Netns, addr: impl Into<SocketAddr>) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    serve_each(ns, addr, |mut s| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let _ = s.write_all(got.len().to_string().as_bytes());
    })
}

/// Sends `data` from `ns` to `to`, shuts the sending side down and returns
/// the whole answer (each step within `timeout`).
pub fn send_then_read(ns: &lb_lab::Netns, to: SocketAddr, data: Vec<u8>, timeout: Duration) -> std::io::Result<String> {
    ns.run(move || {
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(&data)?;
        s.shutdown(Shutdown::Write)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

/// `len` bytes to an [`upload_server`]: the count it answers.
pub fn upload(ns: &lb_lab::Netns, to: SocketAddr, len: usize) -> std::io::Result<String> {
    send_then_read(ns, to, vec![b'u'; len], Duration::from_secs(5))
}

/// `internalTrafficPolicy: Local` seen from pod `client` of `lab` through
/// the frontend `to`. `yaml(false)`: the Service with web-a on this node
/// (`node-1`, the agent's `--node-name`) and web-b on another; 20
/// requests are all answered by web-a. `yaml(true)`: none on this node;
/// the frontend has no backend and a request is dropped (no answer, not
/// refused), as kube-proxy does.
pub fn internal_traffic_policy_local_holds(lab: &lb_lab::NodeLab, to: SocketAddr, yaml: impl Fn(bool) -> String, tag: &str) {
    let dir = ManifestDir::new(tag);
    dir.write("local.yaml", &yaml(false));
    let agent = Agent::start_with(&lab.node, &dir.0, PinDir::new(tag), &["--node-name", "node-1"]);
    agent.wait_rows("the local endpoint only", |rows| rows.len() == 1 && rows[0].backends.len() == 1);
    let client = &lab.pod("client").ns;
    for i in 0..20 {
        let tag = lb_lab::tcp_request_to(client, to, b"hello\n", Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", agent.log_text()));
        assert_eq!(tag, "web-a", "only this node's endpoint");
    }
    dir.write("local.yaml", &yaml(true));
    agent.wait_rows("no local endpoint", |rows| rows.len() == 1 && rows[0].backends.is_empty());
    let err = lb_lab::tcp_request_to(client, to, b"hello\n", Duration::from_millis(1500)).unwrap_err();
    assert!(!lb_lab::is_connection_refused(&err), "dropped, not rejected: {err:#}");
}
