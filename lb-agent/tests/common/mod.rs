//! Shared harness for the kernel tests: the gate that decides between
//! running and skipping, an agent process in a lab node, and polling.
#![allow(dead_code)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use aya::programs::SchedClassifier;
use lb_agent::{
    datapath::{Datapath, MapSizes, TC_PROGRAM},
    list,
    maps::Maps,
    model::{Backend, BackendAddr, Desired, Frontend, FrontendAddr, Protocol},
    reconcile::Reconciler,
    testrun::{self, Outcome},
};
use lb_common::Config;
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
        PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/lb-test-{}-{n}-{tag}",
            std::process::id()
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = lb_agent::datapath::cleanup(&self.0);
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
        let log = std::env::temp_dir().join(format!(
            "lb-agent-{}-{}.log",
            std::process::id(),
            pins.0.file_name().unwrap().to_string_lossy()
        ));
        let log_file = fs::File::create(&log).unwrap();
        let mut cmd = node.command(env!("CARGO_BIN_EXE_lb-agent"));
        cmd.args(["run", "--pod-ifaces", "lbp*", "--poll-interval-ms", "100"])
            .arg("--manifests")
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

    /// The maps, as `lb-agent list` reads them.
    pub fn maps(&self) -> Maps {
        wait_for("the agent to pin its maps", Duration::from_secs(10), || {
            Maps::open(&self.pins.0).ok()
        })
    }

    /// The listing rows, once the agent has written the config.
    pub fn rows(&self) -> Vec<list::Row> {
        list::rows(&self.maps()).unwrap()
    }

    /// Waits until the listing satisfies `pred`; panics with the agent's
    /// log otherwise.
    pub fn wait_rows(&self, what: &str, pred: impl Fn(&[list::Row]) -> bool) -> Vec<list::Row> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(maps) = Maps::open(&self.pins.0) {
                if let Ok(rows) = list::rows(&maps) {
                    if pred(&rows) {
                        return rows;
                    }
                    if Instant::now() > deadline {
                        panic!("timed out waiting for {what}; maps hold {rows:#?}\nagent log:\n{}", self.log_text());
                    }
                }
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}\nagent log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent (SIGTERM, as the kubelet would) and waits for it.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            let mut child = child.into_inner();
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
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

/// A ClusterIP Service with one port, and its EndpointSlice.
pub fn service_yaml(
    name: &str,
    cluster_ip: &str,
    port: u16,
    proto: &str,
    target_port: u16,
    endpoints: &[std::net::Ipv4Addr],
) -> String {
    let eps: String = endpoints
        .iter()
        .map(|ip| format!("- addresses: [{ip}]\n  conditions: {{ready: true}}\n"))
        .collect();
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
    let a = sa(addr);
    let fa = FrontendAddr { ip: *a.ip(), port: a.port(), proto };
    let backends = backends
        .iter()
        .map(|b| {
            let b = sa(b);
            Backend {
                addr: BackendAddr { ip: *b.ip(), port: b.port(), proto },
                terminating: false,
                node_name: None,
                zone: None,
            }
        })
        .collect();
    (fa, Frontend { addr: fa, name: format!("test/{addr}"), backends, flags: 0, affinity_timeout: 0 })
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
        let sizes = MapSizes { services: 64, backends: 64, slots: 256, ct: 4096, affinity: 256 };
        let dp = Datapath::load(&pins.0, &sizes).expect("loading the datapath");
        let mut maps = Maps::open(&pins.0).unwrap();
        maps.write_config(&Config::ready(0)).unwrap();
        let mut reconciler = Reconciler::recover(maps).unwrap();
        let stats = reconciler.apply(&desired);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        Loaded { dp, reconciler, pins }
    }

    pub fn tc(&mut self) -> &mut SchedClassifier {
        self.dp.ebpf.program_mut(TC_PROGRAM).unwrap().try_into().unwrap()
    }

    pub fn run(&mut self, input: &[u8]) -> Outcome {
        testrun::run_tc(self.tc(), input).unwrap()
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
