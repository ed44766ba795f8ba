//! B1: per-packet cost of the programs through BPF_PROG_TEST_RUN.
//!
//! Method (see docs/benchmarks.md for the reasoning):
//! - the calling thread is pinned to one CPU (test runs of skb and XDP
//!   programs execute on the calling CPU);
//! - floor: `lb_xdp_pass` with `repeat` runs in the kernel, best of
//!   `rounds`;
//! - established flow: the kernel keeps rewriting the same skb across the
//!   repeats of one test run, so after the first DNAT the packet would no
//!   longer go to the service. Two frontends A and B are made each other's
//!   only backend: the packet alternates A -> B -> A, and from the third
//!   repeat on every run is a conntrack hit plus a full DNAT rewrite on the
//!   real code path. `repeat` runs, best of `rounds`;
//! - new flow: `repeat = 1` test runs, each with a source (address, port)
//!   never seen before, so every run is a service lookup, a conntrack miss,
//!   a backend selection and two conntrack inserts, then the rewrite. The
//!   kernel's per-run duration of a `repeat = 1` run also includes one
//!   clock read and the bh disable/enable around the program; that overhead
//!   is measured with the same method on an established flow and on the
//!   floor and reported beside it;
//! - the kernel's own figure beside each (`run_time_ns / run_cnt` with
//!   `BPF_ENABLE_STATS`, see [`KernelNs`]): best of `rounds` passes for
//!   `repeat` = N runs too, as one pass alone is at the mercy of whatever
//!   else shares the CPU;
//! - IPv6 ClusterIP: the same two measurements of `lb_tc_ingress` on IPv6
//!   frames, in the same run, over IPv6 twins of the IPv4 frontends (each
//!   address mapped into `fd00:10:<second octet>::/96`, see [`to_v6`]): the ping-pong pair
//!   and the services (all of them up to `--b1-reconcile-limit` backends,
//!   else the measured one), programmed by `Reconciler::apply_dual`; and
//!   an IPv6 packet from a pod to another pod (no frontend: the tail call
//!   into `lb_tc_ingress6` and its pre-filter), passed untouched;
//! - IPv6 NodePort: the XDP NodePort paths measured as the IPv4 ones, on the
//!   IPv6 twins of their frontends at the node's IPv6 address (local
//!   backend: `lb_xdp` → `lb_xdp6`; remote backend: → `lb_xdp6_nat`, NAT66
//!   to the node's IPv6 address in `LB6_NODE`);
//! - the IPv4 NodePort paths in tc (`lb_tc_ns`, `--xdp-mode tc`): the
//!   same measurements as in XDP ([`north_south`] over [`NsHook`]), with a
//!   remote NodePort of their own.
//!
//! The datapath is loaded by lb-agent's own loader (`Datapath::load`), as
//! the agent loads it: whatever the loader sets up (program arrays, tail
//! calls) the bench runs with.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use aya::programs::{ProgramInfo, SchedClassifier, TestRun, TestRunOptions, Xdp};
use lb_agent::{
    datapath::{Datapath, MapSizes, TC_EGRESS_PROGRAM, TC_EXT_INGRESS_PROGRAM, TC_INGRESS_PROGRAM, TC_NS_PROGRAM, XDP_PROGRAM},
    maps::Maps,
    model::{Backend, BackendAddr, Frontend, FrontendAddr, Protocol},
    reconcile::Reconciler,
};
use lb_lab::testrun::{self, TC_ACT_REDIRECT, TC_ACT_UNSPEC};

use crate::{services, sys};

pub const XDP_PASS_PROGRAM: &str = "lb_xdp_pass";

#[derive(Clone, Debug)]
pub struct B1Options {
    pub services: Vec<usize>,
    pub endpoints: usize,
    /// Repeat count of one test run (floor, established flow).
    pub repeat: u32,
    /// Best of this many test runs.
    pub rounds: usize,
    /// `repeat = 1` runs per round for new flows.
    pub new_flows: usize,
    pub cpu: usize,
    /// Above this many backends in total the maps are filled by direct map
    /// writes of the same entries (then checked by a `Reconciler::apply`
    /// that must be a no-op), for when the reconciler would take too long.
    pub reconcile_limit: usize,
    /// With BPF host routing (`config_flags::HOST_ROUTING_BPF`).
    pub host_routing: bool,
    /// Another build of the eBPF object to measure instead of the embedded
    /// one (a variant with a part of the path removed, see
    /// docs/per-packet-profile.md). Its new flows may make no conntrack
    /// entries: the entry counts are not checked.
    pub object: Option<std::path::PathBuf>,
}

impl B1Options {
    /// How many `repeat` = 1 runs make one round's mean ([`mean_r1`]) or
    /// one kernel figure: the new-flow count, at most 20,000.
    fn r1_runs(&self) -> usize {
        self.new_flows.min(20_000)
    }
}

#[derive(Clone, Debug)]
pub struct B1Row {
    pub services: usize,
    /// Reconciler::apply of the whole set (`None`: filled directly, see
    /// [`B1Options::reconcile_limit`]).
    pub program_time: Option<Duration>,
    /// ns/packet, best of rounds, repeat = N.
    pub floor_ns: f64,
    pub established_ns: f64,
    /// ns/packet, repeat = 1 runs: floor, established flow, new flow (best
    /// round mean), new flow median.
    pub floor_r1_ns: f64,
    pub established_r1_ns: f64,
    pub new_flow_ns: f64,
    pub new_flow_p50_ns: f64,
    /// The tc path in the kernel's own accounting.
    pub kernel: KernelNs,
    /// The XDP NodePort paths (`lb_xdp`), when the object has them: to
    /// local endpoints, to a backend on another node (DNAT + SNAT, FIB
    /// lookup, TTL, MACs, `XDP_TX`) and that flow's reply, and what
    /// `lb_xdp` costs the packets it leaves alone (every other packet on
    /// the NIC).
    pub xdp: Option<NsCost>,
    /// The same IPv4 NodePort paths in tc (`lb_tc_ns`, `--xdp-mode tc`).
    pub tc_ns: Option<NsCost>,
    /// What `lb_tc_ingress` costs a packet leaving a pod for no frontend
    /// (pod to pod), which it passes untouched.
    pub tc_pass: TcPassCost,
    /// What `lb_tc_ext_ingress` (on the external interfaces with BPF host
    /// routing) costs a packet `lb_xdp` did not mark: every other packet
    /// arriving there, which it passes untouched.
    pub ext_pass: TcPassCost,
    /// `lb_tc_egress` on a backend's reply of the established ClusterIP
    /// flow (reverse NAT back to the frontend).
    pub reply: ReplyCost,
    /// The tc ClusterIP path over IPv6 (same run), and how many IPv6
    /// services the maps held.
    pub v6: Option<PathCost>,
    pub v6_services: usize,
    /// `lb_tc_ingress` on an IPv6 packet from a pod to another pod (the
    /// tail call into `lb_tc_ingress6`, its pre-filter, passed).
    pub v6_tc_pass: Option<TcPassCost>,
    /// `lb_tc_egress` on a backend's reply of the established IPv6
    /// ClusterIP flow (`egress6`: reverse NAT back to the frontend).
    pub v6_reply: Option<ReplyCost>,
    /// The XDP NodePort paths over IPv6 (same run), when the object has
    /// XDP: the remote backend's through `lb_xdp6_nat` (NAT66 to the
    /// node's IPv6 address), the packets passed through `lb_xdp6`.
    pub xdp6: Option<NsCost>,
    /// The same service count measured again in B1's second pass, which
    /// runs the counts in the reverse order (see [`run`]); `None` after
    /// a run of one count.
    pub again: Option<Box<B1Row>>,
}

/// A tc program on a packet it passes untouched (`lb_tc_ingress` on a
/// packet from a pod to another pod's address, no frontend;
/// `lb_tc_ext_ingress` on one `lb_xdp` did not mark): ns per packet
/// (repeat = N, best of rounds) and the kernel's run_time/run_cnt.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcPassCost {
    pub ns: f64,
    pub kernel: f64,
}

/// `lb_tc_egress` on a backend's reply of an established flow: the reverse
/// NAT changes the packet (its source becomes the frontend), so a second
/// run of it would find no flow: the mean of `repeat` = 1 runs (best
/// round) less the tc path's `repeat` = 1 overhead, as the remote XDP
/// path's, and the kernel's run_time/run_cnt over such runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplyCost {
    pub established_ns: f64,
    pub kernel: f64,
}

/// `lb_xdp` on packets for no frontend, which it passes untouched: ns per
/// packet (repeat = N, best of rounds) and the kernel's run_time/run_cnt.
#[derive(Clone, Copy, Debug, Default)]
pub struct PassCost {
    /// To an address that has no frontend (traffic routed through the node).
    pub other_addr_ns: f64,
    pub other_addr_kernel: f64,
    /// To the node's address on a port that is no NodePort (ssh, the
    /// kubelet: the node's own traffic).
    pub node_port_ns: f64,
    pub node_port_kernel: f64,
}

/// Per-run cost in the kernel's own accounting: `run_time_ns / run_cnt` of
/// the program's `bpf_prog_info`, counted while `BPF_ENABLE_STATS` is held
/// (around the runs measured, and only then: the accounting itself costs
/// two clock reads per run, 80–120 ns on the benchmark VM, and about a
/// quarter of that falls inside the window it measures). It leaves out
/// what the test run adds around the program (the bh disable/enable, the
/// syscall), so it is also the clean figure for `repeat` = 1 runs; at
/// `repeat` = N it reads 20–45 ns above the test run's figure. The
/// `repeat` = N figures are the best of `rounds` passes, as the test
/// run's; the `repeat` = 1 ones are means over their runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelNs {
    /// ns/run, established flow.
    pub established: f64,
    /// ns/run, new flows (fresh sources, `repeat` = 1).
    pub new_flow: f64,
}

/// Per-packet costs of one program path, ns/packet.
#[derive(Clone, Debug)]
pub struct PathCost {
    /// repeat = N, best of rounds (ping-pong).
    pub established_ns: f64,
    /// repeat = 1 runs.
    pub established_r1_ns: f64,
    /// repeat = 1 runs, fresh sources: best round mean, and p50 of all.
    pub new_flow_ns: f64,
    pub new_flow_p50_ns: f64,
    pub kernel: KernelNs,
}

impl PathCost {
    pub fn r1_overhead_ns(&self) -> f64 {
        (self.established_r1_ns - self.established_ns).max(0.0)
    }

    pub fn new_flow_net_ns(&self) -> f64 {
        self.new_flow_ns - self.r1_overhead_ns()
    }
}

impl B1Row {
    /// The per-call overhead of the repeat = 1 method (established flow
    /// measured both ways).
    pub fn r1_overhead_ns(&self) -> f64 {
        (self.established_r1_ns - self.established_ns).max(0.0)
    }

    /// New-flow cost with the repeat = 1 overhead taken off.
    pub fn new_flow_net_ns(&self) -> f64 {
        self.new_flow_ns - self.r1_overhead_ns()
    }

    /// IPv6 over IPv4 on the tc ClusterIP path, same run: (established,
    /// new flow net, kernel established, kernel new flow).
    pub fn v6_ratios(&self) -> Option<(f64, f64, f64, f64)> {
        let v6 = self.v6.as_ref()?;
        Some((
            v6.established_ns / self.established_ns,
            v6.new_flow_net_ns() / self.new_flow_net_ns(),
            v6.kernel.established / self.kernel.established,
            v6.kernel.new_flow / self.kernel.new_flow,
        ))
    }
}

impl B1Row {
    /// IPv6 over IPv4 on the XDP NodePort paths, same run: local and
    /// remote backend, each (established, new flow net).
    pub fn xdp6_ratios(&self) -> Option<[(f64, f64); 2]> {
        let ratio = |v6: &PathCost, v4: &PathCost| (v6.established_ns / v4.established_ns, v6.new_flow_net_ns() / v4.new_flow_net_ns());
        let (v6, v4) = (self.xdp6.as_ref()?, self.xdp.as_ref()?);
        Some([ratio(&v6.local, &v4.local), ratio(&v6.remote, &v4.remote)])
    }

    /// The figures "flat across N" compares, this pass's: the tc ClusterIP
    /// path's established and new-flow (net) ns, and the XDP local
    /// NodePort path's when the object has XDP.
    pub fn flat_figures(&self) -> FlatFigures {
        FlatFigures {
            tc: (self.established_ns, self.new_flow_net_ns()),
            xdp: self.xdp.as_ref().map(|x| (x.local.established_ns, x.local.new_flow_net_ns())),
        }
    }

    /// [`Self::flat_figures`], the mean of both passes where the count was
    /// measured twice: B1's passes run the counts in opposite orders, so a
    /// drift over the run (the machine warming or cooling, other load)
    /// weighs on every count alike instead of reading as growth with N.
    pub fn flat_mean(&self) -> FlatFigures {
        let a = self.flat_figures();
        match &self.again {
            None => a,
            Some(again) => {
                let b = again.flat_figures();
                let mean = |x: (f64, f64), y: (f64, f64)| ((x.0 + y.0) / 2.0, (x.1 + y.1) / 2.0);
                FlatFigures { tc: mean(a.tc, b.tc), xdp: a.xdp.zip(b.xdp).map(|(x, y)| mean(x, y)) }
            }
        }
    }
}

/// The figures of one service count that "flat across N" compares, ns:
/// (established, new flow net) of the tc ClusterIP path and of the XDP
/// NodePort path to a local backend.
#[derive(Clone, Copy, Debug)]
pub struct FlatFigures {
    pub tc: (f64, f64),
    pub xdp: Option<(f64, f64)>,
}

impl FlatFigures {
    /// Growth from `self` (fewer services) to `more`, worst of both paths:
    /// (established, new flow), as fractions.
    pub fn growth_to(&self, more: &FlatFigures) -> (f64, f64) {
        let grow = |a: (f64, f64), b: (f64, f64)| (b.0 / a.0 - 1.0, b.1 / a.1 - 1.0);
        let (mut g, mut gn) = grow(self.tc, more.tc);
        if let (Some(a), Some(b)) = (self.xdp, more.xdp) {
            let (x, xn) = grow(a, b);
            g = g.max(x);
            gn = gn.max(xn);
        }
        (g, gn)
    }
}

pub fn ready_config() -> lb_common::Config {
    crate::ready_config()
}

fn sizes_for(services: usize, endpoints: usize, new_flows: usize) -> MapSizes {
    let fe = ((services + 16) as u32).next_power_of_two().max(1024);
    // The IPv6 twins take frontend IDs from the same space (LB4_REVNAT and
    // LB6_REVNAT are indexed by it).
    let ids = ((2 * services + 32) as u32).next_power_of_two().max(1024);
    let backends = ((services * endpoints + 64) as u32).next_power_of_two().max(1024);
    // Two entries per new flow, every round, plus headroom: no eviction.
    let ct_tcp = ((new_flows as u32 * 2 + 1024) * 2).next_power_of_two().max(4096);
    let slots = ((services * endpoints) as u32 + (services * endpoints / 10) as u32 + 4096).max(4096);
    MapSizes {
        services: ids,
        backends,
        // Both families' frontends take slots.
        slots: 2 * slots,
        ct_tcp,
        services6: fe,
        backends6: backends,
        ct_tcp6: ct_tcp,
        ..MapSizes::default()
    }
}

/// The IPv6 twin of an IPv4 address of the bench: it in the low 32 bits
/// of `fd00:10:<its second octet>::/96`. Services (10.96/12) and pods
/// (10.244/16) then differ in two of the four words, as a kind cluster's
/// `fd00:10:96::/112` and `fd00:10:244::/56` do (a rewrite's checksum
/// update covers every changed word).
pub fn to_v6(a: Ipv4Addr) -> Ipv6Addr {
    Ipv6Addr::from((0xfd00_0010u128 << 96) | ((a.octets()[1] as u128) << 80) | u32::from(a) as u128)
}

fn sa6(a: SocketAddrV4) -> SocketAddrV6 {
    SocketAddrV6::new(to_v6(*a.ip()), a.port(), 0, 0)
}

/// The IPv6 twin of a frontend (addresses mapped by [`to_v6`]).
fn frontend6(fe: &Frontend) -> (FrontendAddr<Ipv6Addr>, Frontend<Ipv6Addr>) {
    let addr = FrontendAddr { ip: to_v6(fe.addr.ip), port: fe.addr.port, proto: fe.addr.proto, scope: fe.addr.scope };
    let backends = fe
        .backends
        .iter()
        .map(|b| Backend {
            addr: BackendAddr { ip: to_v6(b.addr.ip), port: b.addr.port, proto: b.addr.proto },
            terminating: b.terminating,
            node_name: b.node_name.clone(),
            zone: b.zone.clone(),
            hints: b.hints.clone(),
        })
        .collect();
    (addr, Frontend { addr, name: fe.name.clone(), backends, flags: fe.flags, affinity_timeout: fe.affinity_timeout })
}

/// The pair of frontends that are each other's backend (see the module docs).
const PING: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 95, 0, 1), 80);
const PONG: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 95, 0, 2), 80);

/// The node address of the NodePort frontends, and their ports: a
/// ping-pong pair as for ClusterIP, and a NodePort with the measured
/// service's endpoints for new flows.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The node's IPv6 address, [`to_v6`] of [`NODE_IP`]: the IPv6 NodePorts
/// (the twins of the IPv4 ones) and the IPv6 SNAT address (NAT66).
const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0x0a00, 1);
const NP_PING: SocketAddrV4 = SocketAddrV4::new(NODE_IP, 30080);
const NP_PONG: SocketAddrV4 = SocketAddrV4::new(NODE_IP, 30081);
const NP_TARGET: SocketAddrV4 = SocketAddrV4::new(NODE_IP, 30000);

fn one_backend(name: &str, at: SocketAddrV4, to: SocketAddrV4) -> (FrontendAddr, Frontend) {
    let addr = FrontendAddr::new(*at.ip(), at.port(), Protocol::Tcp);
    let fe = Frontend {
        addr,
        name: name.into(),
        backends: vec![Backend::ready(BackendAddr { ip: *to.ip(), port: to.port(), proto: Protocol::Tcp })],
        flags: 0,
        affinity_timeout: 0,
    };
    (addr, fe)
}

/// The NodePort frontend whose endpoints are all on another node: its
/// packets are DNATed and SNATed and forwarded (`bpf_fib_lookup`, TTL,
/// MACs, `XDP_TX` back out of `ext0`).
const NP_REMOTE: SocketAddrV4 = SocketAddrV4::new(NODE_IP, 30001);
/// [`NP_REMOTE`] for the tc path (`lb_tc_ns`), with endpoints of its own
/// on node B, so that each path's SNAT ports have their own tuples.
const NP_REMOTE_TC: SocketAddrV4 = SocketAddrV4::new(NODE_IP, 30002);
/// Packets `lb_xdp` leaves alone: to an address with no frontend, and to
/// the node's address on a port outside the NodePort range.
const NO_FRONTEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), 443);
const NODE_SSH: SocketAddrV4 = SocketAddrV4::new(NODE_IP, 22);
/// The client of every measured flow (its IPv6 twin for IPv6).
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 11), 40000);
/// A pod's address (no frontend): pod-to-pod traffic through tc.
const OTHER_POD: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 12), 8080);
/// This node's name (its endpoints are local) and the other node's.
const NODE_NAME: &str = "bench-node-a";
const OTHER_NODE: &str = "bench-node-b";
/// The other node: its address on `ext0`'s subnet, its MAC (a permanent
/// neighbour), and the pod network behind it.
const NODE_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const NODE_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const REMOTE_PODS: Ipv4Addr = Ipv4Addr::new(10, 245, 0, 0);
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// The network namespace B1 runs in: the FIB lookups of the remote path
/// answer from its routes (`ext0` with the node address, node B a
/// permanent neighbour, node B's pods routed through it), never from the
/// host's.
fn lab() -> Result<lb_lab::Netns> {
    let ns = lb_lab::Netns::new("b1")?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.ip(&["link", "add", "ext0", "type", "veth", "peer", "name", "ext0p"])?;
    ns.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "ext0"])?;
    ns.ip(&["link", "set", "ext0p", "up"])?;
    ns.ip(&["link", "set", "ext0", "up"])?;
    let mac = NODE_B_MAC.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    ns.ip(&["neigh", "replace", &NODE_B.to_string(), "lladdr", &mac, "dev", "ext0", "nud", "permanent"])?;
    ns.ip(&["route", "add", &format!("{REMOTE_PODS}/16"), "via", &NODE_B.to_string(), "dev", "ext0"])?;
    // The ClusterIP ping-pong's backends: behind node B as well, so that
    // with BPF host routing a translated packet's next hop is found (kept,
    // or from the FIB) and is no pod interface: the stack path, as for a
    // backend on another node.
    let ping_net = Ipv4Addr::from(u32::from(*PING.ip()) & 0xffff_0000);
    ns.ip(&["route", "add", &format!("{ping_net}/16"), "via", &NODE_B.to_string(), "dev", "ext0"])?;
    // The client, as the remote path's replies see it: behind node B.
    ns.ip(&["route", "add", &format!("{}/32", CLIENT.ip()), "via", &NODE_B.to_string(), "dev", "ext0"])?;
    // The same in IPv6, over the twins' addresses (`to_v6`).
    ensure!(to_v6(NODE_IP) == NODE_IP6, "NODE_IP6 is not the twin of NODE_IP");
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    ns.ip(&["-6", "addr", "add", &format!("{NODE_IP6}/64"), "dev", "ext0", "nodad"])?;
    let node_b6 = to_v6(NODE_B).to_string();
    ns.ip(&["-6", "neigh", "replace", &node_b6, "lladdr", &mac, "dev", "ext0", "nud", "permanent"])?;
    ns.ip(&["-6", "route", "add", &format!("{}/96", to_v6(REMOTE_PODS)), "via", &node_b6, "dev", "ext0"])?;
    ns.ip(&["-6", "route", "add", &format!("{}/128", to_v6(*CLIENT.ip())), "via", &node_b6, "dev", "ext0"])?;
    // The ping-pong's IPv6 twins, as their IPv4 addresses above.
    ns.ip(&["-6", "route", "add", &format!("{}/112", to_v6(ping_net)), "via", &node_b6, "dev", "ext0"])?;
    Ok(ns)
}

/// The calling thread inside a network namespace until dropped.
struct Entered(std::fs::File);

impl Entered {
    fn enter(ns: &lb_lab::Netns) -> Result<Entered> {
        use std::os::fd::{AsFd, AsRawFd};
        let orig = std::fs::File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
        // SAFETY: setns on a valid namespace fd; only this thread moves.
        let rc = unsafe { libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) };
        ensure!(rc == 0, "setns into {}: {}", ns.name(), std::io::Error::last_os_error());
        Ok(Entered(orig))
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as in `enter`, back to the thread's own namespace.
        unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    ensure!(i != 0, "interface {name} missing");
    Ok(i)
}

/// The kernel's run time per run of a program over what `run` does (see
/// [`KernelNs`]).
fn kernel_ns(info: impl Fn() -> Result<ProgramInfo, aya::programs::ProgramError>, run: impl FnOnce() -> Result<()>) -> Result<f64> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let before = info()?;
    run()?;
    let after = info()?;
    let runs = after.run_count().saturating_sub(before.run_count());
    ensure!(runs > 0, "the kernel counted no run (BPF stats unavailable?)");
    Ok(after.run_time().saturating_sub(before.run_time()).as_nanos() as f64 / runs as f64)
}

/// [`kernel_ns`] of a `repeat` = N run, best of `rounds` as the test
/// run's own figure beside it: one pass alone, disturbed by another
/// process on the CPU, read up to 1.6x the undisturbed figure (see
/// docs/per-packet-profile.md, "IPv6 at 100k services").
fn kernel_best(
    rounds: usize,
    info: impl Fn() -> Result<ProgramInfo, aya::programs::ProgramError>,
    mut run: impl FnMut() -> Result<()>,
) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..rounds.max(1) {
        best = best.min(kernel_ns(&info, &mut run)?);
    }
    Ok(best)
}

/// How many endpoints a remote NodePort needs so that one path's new
/// flows (every round's, and the kernel statistics' pass) take at most
/// 45 % of its SNAT tuples, one per NAT port and endpoint: a fuller range
/// makes new flows retry ports, and past it they fail (`drop_no_nat_port`).
/// At least the measured service's count: 10 at `--quick`'s 20,000 flows
/// per round, 40 at the full run's 100,000.
pub(crate) fn remote_endpoints(opts: &B1Options) -> usize {
    let flows = opts.new_flows * opts.rounds + opts.r1_runs();
    let ports = (NAT_PORTS.1 - NAT_PORTS.0) as usize + 1;
    (flows * 100).div_ceil(ports * 45).max(opts.endpoints)
}

/// The SNAT port range: wide, and below the NodePorts. The remote paths'
/// new flows share it (see [`remote_endpoints`]); the default range (4536
/// ports) would fill up.
pub(crate) const NAT_PORTS: (u16, u16) = (1024, 29_999);

fn local(mut fe: Frontend, node: &str) -> Frontend {
    for b in &mut fe.backends {
        b.node_name = Some(node.into());
    }
    fe
}

pub fn run_one(opts: &B1Options, n: usize) -> Result<B1Row> {
    let ns = lab().context("the B1 network namespace")?;
    let _entered = Entered::enter(&ns)?;
    let ext0 = ifindex("ext0")?;
    let pins = sys::Pins::new(&format!("b1-{n}"));
    let total_new = opts.new_flows * opts.rounds;
    // Sized for three paths of new flows with twice the room they need:
    // the five IPv4 paths (ClusterIP, and NodePort to a local and a remote
    // backend in XDP and in tc) and the kernel-statistics passes fill it to
    // about 60 %, no eviction (checked after the runs).
    let sizes = sizes_for(n, opts.endpoints, 3 * total_new);
    let object = match &opts.object {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let mut dp = match &object {
        Some(object) => Datapath::load_object(pins.path(), &sizes, object),
        None => Datapath::load(pins.path(), &sizes),
    }
    .context("loading the datapath")?;
    let mut maps = Maps::open(pins.path())?;
    let ready = ready_config();
    let host_routing = if opts.host_routing { lb_common::config_flags::HOST_ROUTING_BPF } else { 0 };
    maps.write_config(&lb_common::Config { flags: ready.flags | host_routing, ..ready })?;
    let (nat_port_min, nat_port_max) = NAT_PORTS;
    maps.write_node(&lb_common::NodeConfig {
        snat_addr: u32::from_ne_bytes(NODE_IP.octets()),
        nat_port_min,
        nat_port_max,
        flags: lb_common::node_flags::READY,
        nodeport_min: 30000,
        nodeport_max: 32767,
    })?;
    let mut reconciler = Reconciler::recover(maps)?;
    reconciler.set_node_name(Some(NODE_NAME.into()));
    let svcs = services::generate(n, opts.endpoints);
    let mut desired = services::to_desired(&svcs);
    let (a, fa) = one_backend("bench/ping:http", PING, PONG);
    let (b, fb) = one_backend("bench/pong:http", PONG, PING);
    desired.insert(a, fa);
    desired.insert(b, fb);
    let has_xdp = dp.ebpf.program(XDP_PROGRAM).is_some();
    // The NodePorts serve both north-south hooks (XDP's and tc's).
    if has_xdp || dp.ebpf.program(TC_NS_PROGRAM).is_some() {
        // Local endpoints: DNAT only, the kernel delivers.
        for (name, at, to) in [("bench/np-ping:http", NP_PING, NP_PONG), ("bench/np-pong:http", NP_PONG, NP_PING)] {
            let (addr, mut fe) = one_backend(name, at, to);
            fe.flags = lb_common::svc_flags::NODE_PORT;
            desired.insert(addr, local(fe, NODE_NAME));
        }
        if let Some(last) = svcs.last() {
            let mut fe = services::frontend(last);
            fe.addr = FrontendAddr::new(*NP_TARGET.ip(), NP_TARGET.port(), Protocol::Tcp);
            fe.name = format!("{}:nodeport", last.name);
            fe.flags = lb_common::svc_flags::NODE_PORT;
            desired.insert(fe.addr, local(fe, NODE_NAME));
            // The same endpoints, all on node B (more of them when the
            // new flows need more SNAT tuples, see `remote_endpoints`).
            let remote = Ipv4Addr::from(u32::from(REMOTE_PODS) + 1);
            let mut fe = services::frontend(last);
            fe.addr = FrontendAddr::new(*NP_REMOTE.ip(), NP_REMOTE.port(), Protocol::Tcp);
            fe.name = format!("{}:nodeport-remote", last.name);
            fe.flags = lb_common::svc_flags::NODE_PORT;
            let template = fe.backends[0].clone();
            fe.backends.resize(remote_endpoints(opts), template);
            for (i, b) in fe.backends.iter_mut().enumerate() {
                b.addr.ip = Ipv4Addr::from(u32::from(remote) + i as u32);
            }
            // The tc path's twin, its endpoints the next addresses on node B.
            let mut tc = fe.clone();
            tc.addr = FrontendAddr::new(*NP_REMOTE_TC.ip(), NP_REMOTE_TC.port(), Protocol::Tcp);
            tc.name = format!("{}:nodeport-remote-tc", last.name);
            let n = tc.backends.len() as u32;
            for b in tc.backends.iter_mut() {
                b.addr.ip = Ipv4Addr::from(u32::from(b.addr.ip) + n);
            }
            desired.insert(fe.addr, local(fe, OTHER_NODE));
            desired.insert(tc.addr, local(tc, OTHER_NODE));
        }
    }
    let (mut reconciler, program_time) = fill(pins.path(), reconciler, &desired, n * opts.endpoints <= opts.reconcile_limit)?;
    // The IPv6 twins: the ping-pong pair and the services (all of them
    // within the reconcile limit, else the measured one).
    // With XDP, the twins of the NodePorts too, at the node's IPv6 address.
    let svcs6 = if n * opts.endpoints <= opts.reconcile_limit { &svcs[..] } else { &svcs[svcs.len().saturating_sub(1)..] };
    let node_ports = desired.values().filter(|fe| fe.flags & lb_common::svc_flags::NODE_PORT != 0).cloned();
    let desired6: lb_agent::model::Desired<Ipv6Addr> = svcs6
        .iter()
        .map(services::frontend)
        .chain([one_backend("bench/ping:http", PING, PONG).1, one_backend("bench/pong:http", PONG, PING).1])
        .chain(node_ports)
        .map(|fe| frontend6(&fe))
        .collect();
    reconciler.maps_mut().write_node6(&lb_agent::northsouth::node6_config(Some(NODE_IP6), 128))?;
    let stats = reconciler.apply_dual(&[&desired], &[&desired6]);
    ensure!(stats.errors.is_empty(), "programming the IPv6 frontends: {:?}", &stats.errors[..stats.errors.len().min(3)]);

    {
        let xdp: &mut Xdp =
            dp.ebpf.program_mut(XDP_PASS_PROGRAM).with_context(|| format!("{XDP_PASS_PROGRAM} missing from the object"))?.try_into()?;
        xdp.load().with_context(|| format!("loading {XDP_PASS_PROGRAM}"))?;
    }
    let result = measure(opts, &dp, &svcs, ext0, has_xdp);
    // A failed run says what the datapath counted (its drops).
    let counted = || -> String {
        let stats = reconciler.maps().stats().unwrap_or_default();
        lb_common::stat::NAMES.iter().zip(stats).filter(|(_, v)| *v != 0).map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(", ")
    };
    let m = result.with_context(|| format!("datapath counters: {}", counted()))?;
    // Every new flow made two conntrack entries (none evicted).
    let k = m.flows;
    let ct_entries = reconciler.maps().ct.tcp.map.keys().count();
    ensure!(object.is_some() || ct_entries >= 2 * k, "expected {} conntrack entries after the new-flow runs, found {ct_entries}", 2 * k);
    let target6 = SocketAddrV6::new(to_v6(svcs.last().map(|s| s.ip).unwrap_or(*PING.ip())), services::SERVICE_PORT, 0, 0);
    let mut k6 = 0;
    let (v6, v6_tc_pass, v6_reply) =
        measure_v6(opts, &dp, target6, &mut k6).with_context(|| format!("IPv6; datapath counters: {}", counted()))?;
    let xdp6 = if has_xdp {
        Some(measure_xdp_v6(opts, &dp, ext0, &mut k6).with_context(|| format!("IPv6 NodePort; datapath counters: {}", counted()))?)
    } else {
        None
    };
    let ct6_entries = reconciler.maps().v6.ct_tcp.map.keys().count();
    ensure!(
        object.is_some() || ct6_entries >= 2 * k6,
        "expected {} IPv6 conntrack entries after the new-flow runs, found {ct6_entries}",
        2 * k6
    );
    Ok(B1Row {
        services: n,
        program_time,
        v6: Some(v6),
        v6_services: svcs6.len(),
        v6_tc_pass: Some(v6_tc_pass),
        v6_reply: Some(v6_reply),
        xdp6,
        ..m.row
    })
}

/// What [`measure`] found, and how many new flows it made.
struct Measured {
    row: B1Row,
    flows: usize,
}

/// Every measurement of one service count, on the loaded datapath.
fn measure(opts: &B1Options, dp: &Datapath, svcs: &[services::Svc], ext0: u32, has_xdp: bool) -> Result<Measured> {
    let target = SocketAddrV4::new(svcs.last().map(|s| s.ip).unwrap_or(*PING.ip()), services::SERVICE_PORT);
    let client = CLIENT;

    sys::pin_thread(opts.cpu)?;
    let xdp: &Xdp = dp.ebpf.program(XDP_PASS_PROGRAM).unwrap().try_into()?;
    let tc: &SchedClassifier = dp.ebpf.program(TC_INGRESS_PROGRAM).unwrap().try_into()?;

    let syn = |src: SocketAddrV4, dst: SocketAddrV4| testrun::tcp(src, dst, "S", 1, &[]);
    let ack = |src: SocketAddrV4, dst: SocketAddrV4| testrun::tcp(src, dst, "A", 2, b"hello");

    // Floor.
    let floor_pkt = ack(client, target);
    let floor_ns = best_of(opts.rounds, || Ok(testrun::time_xdp(xdp, &floor_pkt, opts.repeat)?.1))?;
    let floor_r1_ns = mean_r1(opts.rounds, opts.r1_runs(), |_| run_xdp_once(xdp, &floor_pkt))?;

    // Established flow, ping-pong, repeat = N. The first run creates the
    // two conntrack entries; check that an even repeat count lands back on
    // PING (the packet really went through both DNATs).
    let pp = ack(client, PING);
    let mut out = vec![0u8; pp.len() + 256];
    let r = run_tc(tc, &pp, &mut out, 4)?;
    ensure!(r == TC_ACT_UNSPEC as u32, "ping-pong verdict {r}");
    ensure!(out[30..34] == PING.ip().octets(), "ping-pong: packet did not come back to the first frontend");
    let established_ns = best_of(opts.rounds, || Ok(testrun::time_tc(tc, &pp, opts.repeat)?.1))?;
    let tc_info = || tc.info();
    let kernel_established = kernel_best(opts.rounds, tc_info, || {
        testrun::time_tc(tc, &pp, opts.repeat)?;
        Ok(())
    })?;

    // Established flow to a regular service, repeat = 1.
    let est = ack(client, target);
    let (v, _) = testrun::time_tc(tc, &est, 1)?;
    ensure!(v == TC_ACT_UNSPEC, "verdict {v} for an established flow");
    let established_r1_ns = mean_r1(opts.rounds, opts.r1_runs(), |_| run_tc_once(tc, &est))?;
    // The same in the kernel's accounting: the new-flow figure's baseline
    // (a repeat = 1 run finds the program's caches colder than repeat = N).
    let kernel_established_r1 = kernel_ns(tc_info, || {
        for _ in 0..opts.r1_runs() {
            run_tc_once(tc, &est)?;
        }
        Ok(())
    })?;
    eprintln!("lb-bench: B1 ClusterIP (tc): kernel run_time/run_cnt of an established flow at repeat = 1: {kernel_established_r1:.0} ns");

    // The backend's reply of that flow, at the client's interface.
    let egress: &SchedClassifier = dp.ebpf.program(TC_EGRESS_PROGRAM).unwrap().try_into()?;
    let fwd = testrun::run_tc(tc, &est)?;
    let backend = SocketAddrV4::new(
        Ipv4Addr::new(fwd.packet[30], fwd.packet[31], fwd.packet[32], fwd.packet[33]),
        u16::from_be_bytes([fwd.packet[36], fwd.packet[37]]),
    );
    let reply_pkt = ack(backend, client);
    let back = testrun::run_tc(egress, &reply_pkt)?;
    ensure!(
        back.verdict == TC_ACT_UNSPEC && back.packet[26..30] == target.ip().octets() && back.packet[34..36] == target.port().to_be_bytes(),
        "the reply from {backend} was not translated back to the frontend {target}"
    );
    let r1_overhead = tc_r1_overhead(opts, tc, &pp, established_ns)?;
    eprintln!(
        "lb-bench: B1 ClusterIP (tc): repeat = 1 overhead {r1_overhead:.0} ns (ping-pong); the measured service's repeat = 1 run less the ping-pong's repeat = N: {:.0} ns",
        established_r1_ns - established_ns
    );
    let reply = reply_cost(opts, egress, &reply_pkt, r1_overhead)?;

    // New flows, repeat = 1, a fresh source each run.
    let mut k = 0usize;
    let (new_flow_ns, new_flow_p50_ns) = new_flows(opts, &mut k, |src| run_tc_once(tc, &syn(src, target)))?;
    let kernel_new_flow = kernel_ns(tc_info, || {
        for _ in 0..opts.r1_runs() {
            run_tc_once(tc, &syn(fresh_source(k), target))?;
            k += 1;
        }
        Ok(())
    })?;

    // Pod to pod (no frontend): passed untouched.
    let tc_pass = tc_pass_cost(opts, tc, TC_INGRESS_PROGRAM, &ack(client, OTHER_POD))?;
    // The same packet at an external interface's ingress with BPF host
    // routing: no XDP mark in front of it, passed untouched.
    let ext: &SchedClassifier = dp.ebpf.program(TC_EXT_INGRESS_PROGRAM).unwrap().try_into()?;
    let ext_pass = tc_pass_cost(opts, ext, TC_EXT_INGRESS_PROGRAM, &ack(client, OTHER_POD))?;

    // The NodePort paths in XDP (`lb_xdp`), and in tc (`lb_tc_ns`,
    // `--xdp-mode tc`) on their own remote NodePort (the remote paths'
    // SNAT ports would otherwise share one range).
    let xdp_ns = if has_xdp {
        let np: &Xdp = dp.ebpf.program(XDP_PROGRAM).unwrap().try_into()?;
        Some(north_south(opts, np, ext0, NP_REMOTE, &mut k)?)
    } else {
        None
    };
    let tc_ns = match dp.ebpf.program(TC_NS_PROGRAM) {
        Some(p) => Some(north_south(opts, <&SchedClassifier>::try_from(p)?, ext0, NP_REMOTE_TC, &mut k)?),
        None => None,
    };
    Ok(Measured {
        row: B1Row {
            services: 0,
            program_time: None,
            floor_ns,
            established_ns,
            floor_r1_ns,
            established_r1_ns,
            new_flow_ns,
            new_flow_p50_ns,
            kernel: KernelNs { established: kernel_established, new_flow: kernel_new_flow },
            xdp: xdp_ns,
            tc_ns,
            tc_pass,
            ext_pass,
            reply,
            v6: None,
            v6_tc_pass: None,
            v6_reply: None,
            v6_services: 0,
            xdp6: None,
            again: None,
        },
        flows: k,
    })
}

/// What [`north_south`] measures of one hook's NodePort paths (and
/// [`measure_xdp_v6`] of XDP's over IPv6).
#[derive(Clone, Debug)]
pub struct NsCost {
    /// To local endpoints: DNAT, the kernel delivers.
    pub local: PathCost,
    /// To endpoints on node B: DNAT and SNAT, FIB, sent back out.
    pub remote: PathCost,
    /// The backend's reply of the remote path's established flow.
    pub remote_reply: ReplyCost,
    /// Packets for no frontend, passed untouched.
    pub pass: PassCost,
}

/// The IPv4 NodePort path in one hook (`np`), the same three ways as the
/// tc ClusterIP path: to the local ping-pong pair and [`NP_TARGET`]; to
/// `remote`, whose endpoints are all on node B (packets arrive on `ext0`
/// and leave through it, DNATed and SNATed); and packets for no
/// frontend. Counts its new flows in `k`.
fn north_south<H: NsHook>(opts: &B1Options, np: &H, ext0: u32, remote: SocketAddrV4, k: &mut usize) -> Result<NsCost> {
    let client = CLIENT;
    let syn = |src: SocketAddrV4, dst: SocketAddrV4| testrun::tcp(src, dst, "S", 1, &[]);
    let ack = |src: SocketAddrV4, dst: SocketAddrV4| testrun::tcp(src, dst, "A", 2, b"hello");
    // Both frontends share the node address; the port tells them apart.
    let landed = |out: &[u8]| [NP_PING.port(), NP_PONG.port()].contains(&u16::from_be_bytes([out[36], out[37]]));
    let local = ns_local(opts, np, &ack(client, NP_PING), landed, &ack(client, NP_TARGET), |src| syn(src, NP_TARGET), k)?;
    let sent = |out: &[u8]| -> Result<()> {
        ensure!(out[0..6] == NODE_B_MAC, "remote NodePort: not sent to node B's MAC");
        ensure!(out[26..30] == NODE_IP.octets(), "remote NodePort: source not SNATed to the node address");
        ensure!(out[30..32] == REMOTE_PODS.octets()[..2], "remote NodePort: not DNATed to a pod on node B");
        Ok(())
    };
    // The backend's reply: from the pod the first packet went to, to the
    // node's address and the SNAT port it was given.
    let reply = |out: &[u8]| {
        let pod = SocketAddrV4::new(Ipv4Addr::new(out[30], out[31], out[32], out[33]), u16::from_be_bytes([out[36], out[37]]));
        let node = SocketAddrV4::new(Ipv4Addr::new(out[26], out[27], out[28], out[29]), u16::from_be_bytes([out[34], out[35]]));
        ack(pod, node)
    };
    let back = |out: &[u8]| -> Result<()> {
        ensure!(out[26..30] == remote.ip().octets(), "remote NodePort reply: source not the frontend");
        ensure!(out[30..34] == client.ip().octets(), "remote NodePort reply: not sent to the client");
        ensure!(out[34..36] == remote.port().to_be_bytes(), "remote NodePort reply: source port not the NodePort");
        Ok(())
    };
    let est = ack(client, remote);
    let r = Remote { ext0, est: &est, local_r1_overhead_ns: local.r1_overhead_ns() };
    let (remote_cost, remote_reply) = ns_remote(opts, np, &r, sent, (reply, back), |src| syn(src, remote), k)?;
    let pass = ns_pass_cost(opts, np, ext0, &ack(client, NO_FRONTEND), &ack(client, NODE_SSH))?;
    Ok(NsCost { local, remote: remote_cost, remote_reply, pass })
}

/// The hook a north-south path runs in: XDP (`lb_xdp`, `--xdp-mode
/// auto`) or tc (`lb_tc_ns` on the external interface's ingress,
/// `--xdp-mode tc`). The one path, measured the same way in each.
trait NsHook {
    /// The verdict of a packet delivered to a backend on this node (the
    /// kernel takes it on), and of one sent back out towards another node.
    const PASS: i32;
    const TX: i32;
    fn info(&self) -> Result<ProgramInfo, aya::programs::ProgramError>;
    /// `repeat` runs of `input`, received on `ifindex` (0: the loopback
    /// device): the verdict and the mean time per run.
    fn time(&self, input: &[u8], ifindex: u32, repeat: u32) -> Result<(i32, Duration)>;
    /// One run of `input` received on `ifindex`: the verdict and the packet.
    fn run(&self, input: &[u8], ifindex: u32) -> Result<testrun::Outcome>;
    /// `repeat` runs of `input` on the loopback device: the verdict and
    /// the packet after the last.
    fn run_repeated(&self, input: &[u8], repeat: u32) -> Result<(i32, Vec<u8>)>;
    /// One run on `ifindex` whose verdict must be `want`: its time in ns.
    fn once(&self, input: &[u8], want: i32, ifindex: u32) -> Result<u64> {
        let (v, d) = self.time(input, ifindex, 1)?;
        ensure!(v == want, "verdict {v} ({want} expected)");
        Ok(d.as_nanos() as u64)
    }
}

impl NsHook for Xdp {
    const PASS: i32 = XDP_PASS as i32;
    const TX: i32 = XDP_TX as i32;
    fn info(&self) -> Result<ProgramInfo, aya::programs::ProgramError> {
        Xdp::info(self)
    }
    fn time(&self, input: &[u8], ifindex: u32, repeat: u32) -> Result<(i32, Duration)> {
        let (v, d) = testrun::time_xdp_on(self, input, ifindex, repeat)?;
        Ok((v as i32, d))
    }
    fn run(&self, input: &[u8], ifindex: u32) -> Result<testrun::Outcome> {
        testrun::run_xdp(self, input, ifindex)
    }
    fn run_repeated(&self, input: &[u8], repeat: u32) -> Result<(i32, Vec<u8>)> {
        let mut out = vec![0u8; input.len() + 256];
        let v = run_xdp(self, input, &mut out, repeat)?;
        Ok((v as i32, out))
    }
}

impl NsHook for SchedClassifier {
    const PASS: i32 = TC_ACT_UNSPEC;
    const TX: i32 = TC_ACT_REDIRECT;
    fn info(&self) -> Result<ProgramInfo, aya::programs::ProgramError> {
        SchedClassifier::info(self)
    }
    fn time(&self, input: &[u8], ifindex: u32, repeat: u32) -> Result<(i32, Duration)> {
        Ok(testrun::time_tc_on(self, input, ifindex, repeat)?)
    }
    fn run(&self, input: &[u8], ifindex: u32) -> Result<testrun::Outcome> {
        testrun::run_tc_on(self, input, ifindex)
    }
    fn run_repeated(&self, input: &[u8], repeat: u32) -> Result<(i32, Vec<u8>)> {
        let mut out = vec![0u8; input.len() + 256];
        let v = run_tc(self, input, &mut out, repeat)?;
        Ok((v as i32, out))
    }
}

/// The NodePort path to local endpoints (the program DNATs and hands the
/// packet to the kernel), either family, either hook, measured as the tc
/// ClusterIP path: the ping-pong packet `pp` (`landed`: its output went to
/// one of the pair), the established packet `est` at `repeat` = 1, and new
/// flows (`syn` from a fresh source each); counts its new flows in `k`.
fn ns_local<H: NsHook>(
    opts: &B1Options,
    np: &H,
    pp: &[u8],
    landed: impl Fn(&[u8]) -> bool,
    est: &[u8],
    syn: impl Fn(SocketAddrV4) -> Vec<u8>,
    k: &mut usize,
) -> Result<PathCost> {
    let np_info = || np.info();
    let (r, out) = np.run_repeated(pp, 4)?;
    ensure!(r == H::PASS, "NodePort ping-pong verdict {r}");
    ensure!(landed(&out), "NodePort ping-pong: the packet went to neither NodePort of the pair");
    let established_ns = best_of(opts.rounds, || Ok(np.time(pp, 0, opts.repeat)?.1))?;
    let kernel_established = kernel_best(opts.rounds, np_info, || {
        np.time(pp, 0, opts.repeat)?;
        Ok(())
    })?;
    let (v, _) = np.time(est, 0, 1)?;
    ensure!(v == H::PASS, "verdict {v} for an established NodePort flow");
    let established_r1_ns = mean_r1(opts.rounds, opts.r1_runs(), |_| np.once(est, H::PASS, 0))?;
    let (new_flow_ns, new_flow_p50_ns) = new_flows(opts, k, |src| np.once(&syn(src), H::PASS, 0))?;
    let kernel_new_flow = kernel_ns(np_info, || {
        for _ in 0..opts.r1_runs() {
            np.once(&syn(fresh_source(*k)), H::PASS, 0)?;
            *k += 1;
        }
        Ok(())
    })?;
    Ok(PathCost {
        established_ns,
        established_r1_ns,
        new_flow_ns,
        new_flow_p50_ns,
        kernel: KernelNs { established: kernel_established, new_flow: kernel_new_flow },
    })
}

/// What [`ns_remote`] sends: the established packet `est`, arriving on
/// `ext0`, and the local path's `repeat` = 1 overhead.
struct Remote<'a> {
    ext0: u32,
    est: &'a [u8],
    local_r1_overhead_ns: f64,
}

/// The NodePort path to a backend on another node, either family, either
/// hook: DNAT and SNAT (NAT66 for IPv6), FIB, sent back out of `ext0`
/// (`sent` checks the first packet's output). SNAT gives every pass a new
/// source, so there is no ping-pong: the established figure is the mean of
/// `repeat` = 1 runs of one packet (best round, [`mean_r1`]) less the
/// local path's `repeat` = 1 overhead, and the kernel's own figure needs
/// no correction. The backend's reply of the established flow (built by
/// `reply.0` from the first packet's output, its translation checked by
/// `reply.1`) is measured the same way. Counts its new flows in `k`.
fn ns_remote<H: NsHook>(
    opts: &B1Options,
    np: &H,
    remote: &Remote,
    sent: impl Fn(&[u8]) -> Result<()>,
    reply: (impl Fn(&[u8]) -> Vec<u8>, impl Fn(&[u8]) -> Result<()>),
    syn: impl Fn(SocketAddrV4) -> Vec<u8>,
    k: &mut usize,
) -> Result<(PathCost, ReplyCost)> {
    let (ext0, est) = (remote.ext0, remote.est);
    let np_info = || np.info();
    let first = np.run(est, ext0)?;
    ensure!(first.verdict == H::TX, "remote NodePort verdict {} ({} expected)", first.verdict, H::TX);
    sent(&first.packet)?;
    let back = reply.0(&first.packet);
    let answered = np.run(&back, ext0)?;
    ensure!(answered.verdict == H::TX, "remote NodePort reply verdict {} ({} expected)", answered.verdict, H::TX);
    ensure!(answered.packet[0..6] == NODE_B_MAC, "remote NodePort reply: not sent towards the client (node B's MAC)");
    reply.1(&answered.packet)?;
    let runs = opts.r1_runs();
    let reply_r1 = mean_r1(opts.rounds, runs, |_| np.once(&back, H::TX, ext0))?;
    let reply_kernel = kernel_ns(np_info, || {
        for _ in 0..runs {
            np.once(&back, H::TX, ext0)?;
        }
        Ok(())
    })?;
    let reply = ReplyCost { established_ns: reply_r1 - remote.local_r1_overhead_ns, kernel: reply_kernel };
    let r1 = mean_r1(opts.rounds, runs, |_| np.once(est, H::TX, ext0))?;
    let kernel_established = kernel_ns(np_info, || {
        for _ in 0..runs {
            np.once(est, H::TX, ext0)?;
        }
        Ok(())
    })?;
    let (new_flow_ns, new_flow_p50_ns) = new_flows(opts, k, |src| np.once(&syn(src), H::TX, ext0))?;
    let kernel_new_flow = kernel_ns(np_info, || {
        for _ in 0..runs {
            np.once(&syn(fresh_source(*k)), H::TX, ext0)?;
            *k += 1;
        }
        Ok(())
    })?;
    let path = PathCost {
        established_ns: r1 - remote.local_r1_overhead_ns,
        established_r1_ns: r1,
        new_flow_ns,
        new_flow_p50_ns,
        kernel: KernelNs { established: kernel_established, new_flow: kernel_new_flow },
    };
    Ok((path, reply))
}

/// The XDP NodePort paths over IPv6 (`lb_xdp` → `lb_xdp6`, and
/// `lb_xdp6_nat` for the remote backend: NAT66), measured as the IPv4
/// ones on the IPv6 twins of their frontends (at the node's IPv6 address,
/// [`NODE_IP6`]); counts their new flows in `k`.
fn measure_xdp_v6(opts: &B1Options, dp: &Datapath, ext0: u32, k: &mut usize) -> Result<NsCost> {
    let np: &Xdp = dp.ebpf.program(XDP_PROGRAM).unwrap().try_into()?;
    let client = sa6(CLIENT);
    let syn = |src: SocketAddrV4, dst: SocketAddrV4| testrun::tcp6(sa6(src), sa6(dst), "S", 1, &[]);
    let ack = |dst: SocketAddrV4| testrun::tcp6(client, sa6(dst), "A", 2, b"hello");
    // The destination port after the IPv6 and TCP headers' addresses.
    let landed = |out: &[u8]| [NP_PING.port(), NP_PONG.port()].contains(&u16::from_be_bytes([out[14 + 42], out[14 + 43]]));
    let local = ns_local(opts, np, &ack(NP_PING), landed, &ack(NP_TARGET), |src| syn(src, NP_TARGET), k)?;
    let sent = |out: &[u8]| -> Result<()> {
        ensure!(out[0..6] == NODE_B_MAC, "IPv6 remote NodePort: not sent to node B's MAC");
        ensure!(out[14 + 8..14 + 24] == NODE_IP6.octets(), "IPv6 remote NodePort: source not SNATed to the node's IPv6 address");
        ensure!(out[14 + 24..14 + 36] == to_v6(REMOTE_PODS).octets()[..12], "IPv6 remote NodePort: not DNATed to a pod on node B");
        Ok(())
    };
    let reply = |out: &[u8]| {
        let src: [u8; 16] = out[14 + 8..14 + 24].try_into().expect("16 bytes");
        let dst: [u8; 16] = out[14 + 24..14 + 40].try_into().expect("16 bytes");
        let pod = SocketAddrV6::new(Ipv6Addr::from(dst), u16::from_be_bytes([out[56], out[57]]), 0, 0);
        let node = SocketAddrV6::new(Ipv6Addr::from(src), u16::from_be_bytes([out[54], out[55]]), 0, 0);
        testrun::tcp6(pod, node, "A", 2, b"hello")
    };
    let back = |out: &[u8]| -> Result<()> {
        ensure!(out[14 + 8..14 + 24] == NODE_IP6.octets(), "IPv6 remote NodePort reply: source not the frontend");
        ensure!(out[14 + 24..14 + 40] == client.ip().octets(), "IPv6 remote NodePort reply: not sent to the client");
        ensure!(out[54..56] == NP_REMOTE.port().to_be_bytes(), "IPv6 remote NodePort reply: source port not the NodePort");
        Ok(())
    };
    let remote = Remote { ext0, est: &ack(NP_REMOTE), local_r1_overhead_ns: local.r1_overhead_ns() };
    let (remote, reply) = ns_remote(opts, np, &remote, sent, (reply, back), |src| syn(src, NP_REMOTE), k)?;
    let ssh = testrun::tcp6(client, SocketAddrV6::new(NODE_IP6, NODE_SSH.port(), 0, 0), "A", 2, b"hello");
    let pass = ns_pass_cost(opts, np, ext0, &ack(NO_FRONTEND), &ssh)?;
    Ok(NsCost { local, remote, remote_reply: reply, pass })
}

/// `lb_xdp` on packets it must pass untouched, either family: `other`
/// to an address with no frontend, `ssh` to the node's address on a port
/// that is no NodePort (both checked on the first run).
fn ns_pass_cost<H: NsHook>(opts: &B1Options, np: &H, ext0: u32, other: &[u8], ssh: &[u8]) -> Result<PassCost> {
    let one = |pkt: &[u8], what: &str| -> Result<(f64, f64)> {
        let first = np.run(pkt, ext0)?;
        ensure!(first.verdict == H::PASS && first.packet == pkt, "a packet to {what} was not passed untouched");
        let ns = best_of(opts.rounds, || Ok(np.time(pkt, 0, opts.repeat)?.1))?;
        let kernel = kernel_best(
            opts.rounds,
            || np.info(),
            || {
                np.time(pkt, 0, opts.repeat)?;
                Ok(())
            },
        )?;
        Ok((ns, kernel))
    };
    let (other_addr_ns, other_addr_kernel) = one(other, "an address with no frontend")?;
    let (node_port_ns, node_port_kernel) = one(ssh, "the node's address, port 22")?;
    Ok(PassCost { other_addr_ns, other_addr_kernel, node_port_ns, node_port_kernel })
}

/// The tc ClusterIP path over IPv6, measured as the IPv4 one (ping-pong
/// established flow, repeat = 1 established flow and new flows, the
/// kernel's figures); counts its new flows in `k`.
fn measure_v6(opts: &B1Options, dp: &Datapath, target: SocketAddrV6, k: &mut usize) -> Result<(PathCost, TcPassCost, ReplyCost)> {
    let tc: &SchedClassifier = dp.ebpf.program(TC_INGRESS_PROGRAM).unwrap().try_into()?;
    let tc_info = || tc.info();
    let client = sa6(CLIENT);
    let syn = |src: SocketAddrV4| testrun::tcp6(sa6(src), target, "S", 1, &[]);
    let ack = |dst: SocketAddrV6| testrun::tcp6(client, dst, "A", 2, b"hello");

    // Ping-pong: an even repeat count lands back on PING, through both DNATs.
    let pp = ack(sa6(PING));
    let mut out = vec![0u8; pp.len() + 256];
    let r = run_tc(tc, &pp, &mut out, 4)?;
    ensure!(r == TC_ACT_UNSPEC as u32, "IPv6 ping-pong verdict {r}");
    ensure!(out[14 + 24..14 + 40] == sa6(PING).ip().octets(), "IPv6 ping-pong: packet did not come back to the first frontend");
    let established_ns = best_of(opts.rounds, || Ok(testrun::time_tc(tc, &pp, opts.repeat)?.1))?;
    let kernel_established = kernel_best(opts.rounds, tc_info, || {
        testrun::time_tc(tc, &pp, opts.repeat)?;
        Ok(())
    })?;

    let est = ack(target);
    let (v, _) = testrun::time_tc(tc, &est, 1)?;
    ensure!(v == TC_ACT_UNSPEC, "verdict {v} for an established IPv6 flow");
    let established_r1_ns = mean_r1(opts.rounds, opts.r1_runs(), |_| run_tc_once(tc, &est))?;

    // The backend's reply of that flow, at the client's interface
    // (`egress6`), as IPv4's.
    let egress: &SchedClassifier = dp.ebpf.program(TC_EGRESS_PROGRAM).unwrap().try_into()?;
    let fwd = testrun::run_tc(tc, &est)?;
    let ip6 = |b: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes"));
    let backend = SocketAddrV6::new(ip6(&fwd.packet[14 + 24..14 + 40]), u16::from_be_bytes([fwd.packet[56], fwd.packet[57]]), 0, 0);
    let reply_pkt = testrun::tcp6(backend, client, "A", 2, b"hello");
    let back = testrun::run_tc(egress, &reply_pkt)?;
    ensure!(
        back.verdict == TC_ACT_UNSPEC
            && back.packet[14 + 8..14 + 24] == target.ip().octets()
            && back.packet[54..56] == target.port().to_be_bytes(),
        "the IPv6 reply from {backend} was not translated back to the frontend {target}"
    );
    let reply = reply_cost(opts, egress, &reply_pkt, tc_r1_overhead(opts, tc, &pp, established_ns)?)?;

    let (new_flow_ns, new_flow_p50_ns) = new_flows(opts, k, |src| run_tc_once(tc, &syn(src)))?;
    let kernel_new_flow = kernel_ns(tc_info, || {
        for _ in 0..opts.r1_runs() {
            run_tc_once(tc, &syn(fresh_source(*k)))?;
            *k += 1;
        }
        Ok(())
    })?;

    // Pod to pod (no frontend): passed untouched.
    let pass = tc_pass_cost(opts, tc, TC_INGRESS_PROGRAM, &ack(sa6(OTHER_POD)))?;
    let cost = PathCost {
        established_ns,
        established_r1_ns,
        new_flow_ns,
        new_flow_p50_ns,
        kernel: KernelNs { established: kernel_established, new_flow: kernel_new_flow },
    };
    Ok((cost, pass, reply))
}

/// tc program `tc` (`name`) on `pkt`, a pod's packet to another pod (no
/// frontend), which it must pass untouched: ns per packet (repeat = N,
/// best of rounds) and the kernel's run_time/run_cnt.
fn tc_pass_cost(opts: &B1Options, tc: &SchedClassifier, name: &str, pkt: &[u8]) -> Result<TcPassCost> {
    let first = testrun::run_tc(tc, pkt)?;
    ensure!(
        first.verdict == TC_ACT_UNSPEC && first.packet == pkt,
        "a packet to another pod (no frontend) was not passed untouched by {name}"
    );
    let ns = best_of(opts.rounds, || Ok(testrun::time_tc(tc, pkt, opts.repeat)?.1))?;
    let kernel = kernel_best(
        opts.rounds,
        || tc.info(),
        || {
            testrun::time_tc(tc, pkt, opts.repeat)?;
            Ok(())
        },
    )?;
    Ok(TcPassCost { ns, kernel })
}

/// The tc path's `repeat` = 1 overhead: the ping-pong packet `pp` (an
/// established flow, whose one pass is one translation) at `repeat` = 1
/// (best round mean) less its `repeat` = N figure `pp_ns`. The same packet
/// on the same path: the repeat = 1 run of the measured service's flow
/// differs where its backends are routed otherwise (with BPF host
/// routing, a FIB lookup that finds no next hop on every run).
fn tc_r1_overhead(opts: &B1Options, tc: &SchedClassifier, pp: &[u8], pp_ns: f64) -> Result<f64> {
    Ok(mean_r1(opts.rounds, opts.r1_runs(), |_| run_tc_once(tc, pp))? - pp_ns)
}

/// `lb_tc_egress` on `reply`, a backend's reply of an established flow
/// (translated, checked by the caller): the best round mean of `repeat` =
/// 1 runs less the tc path's `repeat` = 1 overhead `r1_overhead_ns`, and
/// the kernel's run_time/run_cnt over such runs.
fn reply_cost(opts: &B1Options, egress: &SchedClassifier, reply: &[u8], r1_overhead_ns: f64) -> Result<ReplyCost> {
    let runs = opts.r1_runs();
    let r1 = mean_r1(opts.rounds, runs, |_| run_tc_once(egress, reply))?;
    let kernel = kernel_ns(
        || egress.info(),
        || {
            for _ in 0..runs {
                run_tc_once(egress, reply)?;
            }
            Ok(())
        },
    )?;
    Ok(ReplyCost { established_ns: r1 - r1_overhead_ns.max(0.0), kernel })
}

/// `rounds` rounds of `new_flows` runs of `run` from fresh sources: the
/// best round's mean and the median of all, ns.
fn new_flows(opts: &B1Options, k: &mut usize, mut run: impl FnMut(SocketAddrV4) -> Result<u64>) -> Result<(f64, f64)> {
    let mut means = Vec::new();
    let mut all = Vec::with_capacity(opts.new_flows * opts.rounds);
    for _ in 0..opts.rounds {
        let mut sum = 0u128;
        for _ in 0..opts.new_flows {
            let ns = run(fresh_source(*k)).with_context(|| format!("new flow {} from {}", *k, fresh_source(*k)))?;
            *k += 1;
            sum += ns as u128;
            all.push(ns);
        }
        means.push(sum as f64 / opts.new_flows.max(1) as f64);
    }
    all.sort_unstable();
    Ok((means.iter().copied().fold(f64::INFINITY, f64::min), all.get(all.len() / 2).copied().unwrap_or(0) as f64))
}

/// Programs `desired` into the maps: through `Reconciler::apply` (timed)
/// when `reconcile`, else by [`write_directly`] and then a
/// `Reconciler::apply` that must find nothing to do (or fixes whatever
/// differs, reported).
pub fn fill(
    pins: &std::path::Path,
    mut reconciler: Reconciler,
    desired: &lb_agent::model::Desired,
    reconcile: bool,
) -> Result<(Reconciler, Option<Duration>)> {
    if reconcile {
        let started = Instant::now();
        let stats = reconciler.apply(desired);
        let took = started.elapsed();
        ensure!(stats.errors.is_empty(), "programming: {:?}", &stats.errors[..stats.errors.len().min(3)]);
        return Ok((reconciler, Some(took)));
    }
    // The node's name goes with the reconciler that takes over: without
    // it no endpoint is this node's, and the local NodePorts (and their
    // IPv6 twins, programmed after) were measured as remote ones, SNAT
    // and all (15 µs per packet over IPv6).
    let node_name = reconciler.node_name().map(str::to_owned);
    drop(reconciler);
    let mut maps = Maps::open(pins)?;
    write_directly(&mut maps, desired, node_name.as_deref())?;
    let mut reconciler = Reconciler::recover(maps)?;
    reconciler.set_node_name(node_name);
    let stats = reconciler.apply(desired);
    ensure!(stats.errors.is_empty(), "programming: {:?}", &stats.errors[..stats.errors.len().min(3)]);
    if stats.ops > 0 {
        eprintln!("lb-bench: the reconciler rewrote {} entries of the direct fill", stats.ops);
    }
    Ok((reconciler, None))
}

/// Fills the maps the way `Reconciler::apply` does into empty maps:
/// backends by address order from ID 1 (`backend_flags::LOCAL` for those
/// on `node`), frontends in order from ID 1, each with its rev-NAT entry,
/// name, generation-0 slots and frontend entry.
pub fn write_directly(maps: &mut Maps, desired: &lb_agent::model::Desired, node: Option<&str>) -> Result<()> {
    use lb_common::{Backend4, RevNat4, RevNatKey, Service4Value, Slot, SlotKey, Vip4};
    let mut ids = std::collections::BTreeMap::new();
    for fe in desired.values() {
        for b in &fe.backends {
            // Local when any frontend's endpoint is (as the reconciler
            // counts it).
            let local = node.is_some() && b.node_name.as_deref() == node;
            ids.entry(b.addr).or_insert((0u32, false)).1 |= local;
        }
    }
    for (i, (addr, (id, local))) in ids.iter_mut().enumerate() {
        *id = i as u32 + 1;
        let v = Backend4 {
            addr: u32::from_ne_bytes(addr.ip.octets()),
            port: addr.port.to_be(),
            proto: addr.proto.number(),
            flags: if *local { lb_common::backend_flags::LOCAL } else { 0 },
            version: 1,
            _pad: 0,
        };
        maps.backends.set(*id, &v)?;
    }
    for (i, fe) in desired.values().enumerate() {
        let id = i as u32 + 1;
        let key = fe.addr.key();
        maps.revnat.set(id, &RevNat4 { addr: key.addr, port: key.port, version: 1 })?;
        maps.names.insert(&RevNatKey { frontend_id: id }, &lb_agent::maps::svc_name(&fe.name))?;
        let slots: Vec<u32> = fe.slot_backends().map(|b| ids[&b.addr].0).collect();
        for (s, backend_id) in slots.iter().enumerate() {
            maps.slots.insert(&SlotKey { frontend_id: id, slot: s as u16, generation: 0 }, &Slot { backend_id: *backend_id })?;
        }
        let v = Service4Value {
            frontend_id: id,
            count: slots.len() as u16,
            generation: 0,
            flags: fe.flags,
            affinity_timeout: fe.affinity_timeout,
        };
        maps.services.insert(&key, &v)?;
        let vip = Vip4 { flags: maps.vips.get(&key.addr)?.map_or(0, |v| v.flags) | lb_agent::vips::kind(fe.flags) };
        maps.insert_vip(key.addr, &vip)?;
    }
    Ok(())
}

/// 10.244.0.0/16 sources with ports 1024..=65535: about 4 billion flows.
fn fresh_source(k: usize) -> SocketAddrV4 {
    let ports = 64512;
    let host = (k / ports) as u32;
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 1, 0)) + host);
    SocketAddrV4::new(ip, 1024 + (k % ports) as u16)
}

fn run_tc(tc: &SchedClassifier, input: &[u8], out: &mut [u8], repeat: u32) -> Result<u32> {
    let mut o = TestRunOptions::new();
    o.data_in = Some(input);
    o.data_out = Some(out);
    o.repeat = repeat;
    Ok(tc.test_run(o).context("BPF_PROG_TEST_RUN")?.return_value)
}

fn run_tc_once(tc: &SchedClassifier, input: &[u8]) -> Result<u64> {
    let (v, d) = testrun::time_tc(tc, input, 1)?;
    ensure!(v == TC_ACT_UNSPEC, "verdict {v}");
    Ok(d.as_nanos() as u64)
}

fn run_xdp(xdp: &Xdp, input: &[u8], out: &mut [u8], repeat: u32) -> Result<u32> {
    let mut o = TestRunOptions::new();
    o.data_in = Some(input);
    o.data_out = Some(out);
    o.repeat = repeat;
    Ok(xdp.test_run(o).context("BPF_PROG_TEST_RUN")?.return_value)
}

fn run_xdp_once(xdp: &Xdp, input: &[u8]) -> Result<u64> {
    Ok(testrun::time_xdp(xdp, input, 1)?.1.as_nanos() as u64)
}

fn best_of(rounds: usize, mut f: impl FnMut() -> Result<Duration>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..rounds.max(1) {
        best = best.min(f()?.as_nanos() as f64);
    }
    Ok(best)
}

/// The mean of `runs` calls of `f` (`repeat` = 1 runs), the best of
/// `rounds` such means: as the new flows' figure, and as the `repeat` = N
/// figures (best of rounds), so that a difference of two of them (the
/// remote path's established figure less the local path's overhead) is not
/// one disturbed round's.
fn mean_r1(rounds: usize, runs: usize, mut f: impl FnMut(usize) -> Result<u64>) -> Result<f64> {
    let runs = runs.max(1);
    let mut best = f64::INFINITY;
    for _ in 0..rounds.max(1) {
        let mut sum = 0u128;
        for i in 0..runs {
            sum += f(i)? as u128;
        }
        best = best.min(sum as f64 / runs as f64);
    }
    Ok(best)
}

pub fn run(opts: &B1Options) -> Result<Vec<B1Row>> {
    let opts = opts.clone();
    // A thread of its own, so that pinning stays with it.
    std::thread::spawn(move || -> Result<Vec<B1Row>> {
        let mut rows = Vec::new();
        for &n in &opts.services {
            rows.push(run_logged(&opts, n, "")?);
        }
        // With more than one count, a second pass runs them again in the
        // reverse order (1, 1k, 10k, 100k, then 100k, 10k, 1k, 1): each
        // count's two runs then centre on the same moment of the run, and
        // "flat across N" compares their means (`B1Row::flat_mean`).
        if rows.len() > 1 {
            for row in rows.iter_mut().rev() {
                row.again = Some(Box::new(run_logged(&opts, row.services, " (second pass)")?));
            }
        }
        Ok(rows)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("B1 thread panicked"))?
}

/// [`run_one`], with its main figures on stderr.
fn run_logged(opts: &B1Options, n: usize, pass: &str) -> Result<B1Row> {
    let row = run_one(opts, n).with_context(|| format!("B1 at {n} services{pass}"))?;
    eprintln!(
        "lb-bench: B1 {n} services{pass}: programmed in {:?}; floor {:.1} ns, established {:.1} ns, new flow {:.1} ns (r1 overhead {:.1} ns)",
        row.program_time,
        row.floor_ns,
        row.established_ns,
        row.new_flow_ns,
        row.r1_overhead_ns()
    );
    if let (Some(v6), Some((est, new, kest, knew))) = (&row.v6, row.v6_ratios()) {
        eprintln!(
            "lb-bench: B1 {n} services{pass}, IPv6 ClusterIP: established {:.1} ns ({est:.2}x IPv4), new flow {:.1} ns net ({new:.2}x); kernel {kest:.2}x / {knew:.2}x",
            v6.established_ns,
            v6.new_flow_net_ns()
        );
    }
    if let (Some(NsCost { local, remote, .. }), Some([(le, ln), (re, rn)])) = (&row.xdp6, row.xdp6_ratios()) {
        eprintln!(
            "lb-bench: B1 {n} services{pass}, IPv6 NodePort (XDP): local established {:.1} ns ({le:.2}x IPv4), new flow {:.1} ns net ({ln:.2}x); remote (NAT66) established {:.1} ns ({re:.2}x), new flow {:.1} ns net ({rn:.2}x)",
            local.established_ns,
            local.new_flow_net_ns(),
            remote.established_ns,
            remote.new_flow_net_ns()
        );
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row whose tc ClusterIP path reads `est` ns established and `new`
    /// ns per new flow (no repeat = 1 overhead), and nothing else.
    fn row(services: usize, est: f64, new: f64) -> B1Row {
        let cost = |ns| TcPassCost { ns, kernel: ns };
        B1Row {
            services,
            program_time: None,
            floor_ns: 6.0,
            established_ns: est,
            floor_r1_ns: 6.0,
            established_r1_ns: est,
            new_flow_ns: new,
            new_flow_p50_ns: new,
            kernel: KernelNs::default(),
            xdp: None,
            tc_ns: None,
            tc_pass: cost(20.0),
            ext_pass: cost(30.0),
            reply: ReplyCost::default(),
            v6: None,
            v6_services: 0,
            v6_tc_pass: None,
            v6_reply: None,
            xdp6: None,
            again: None,
        }
    }

    /// Two counts measured in the passes' order (1, 100k, then 100k, 1),
    /// steps 0 to 3, costing `at(count, step)`.
    fn two_passes(at: impl Fn(usize, f64) -> f64) -> (FlatFigures, FlatFigures, (f64, f64)) {
        let mut one = row(1, at(1, 0.0), 10.0 * at(1, 0.0));
        let mut many = row(100_000, at(100_000, 1.0), 10.0 * at(100_000, 1.0));
        many.again = Some(Box::new(row(100_000, at(100_000, 2.0), 10.0 * at(100_000, 2.0))));
        one.again = Some(Box::new(row(1, at(1, 3.0), 10.0 * at(1, 3.0))));
        (one.flat_mean(), many.flat_mean(), one.flat_figures().growth_to(&many.flat_figures()))
    }

    #[test]
    fn a_drift_over_the_run_does_not_read_as_growth_with_n() {
        // The path costs 100 ns at any count; the machine adds 5 ns a step.
        let (one, many, first_pass) = two_passes(|_, step| 100.0 + 5.0 * step);
        let (g, gn) = one.growth_to(&many);
        assert!(g.abs() < 1e-9 && gn.abs() < 1e-9, "{g} {gn}");
        assert!(first_pass.0 > 0.04, "the first pass alone reads the drift: {first_pass:?}");
    }

    #[test]
    fn growth_with_n_reads_through_a_drift() {
        // 20 ns dearer at 100k services, under the same drift: read
        // against the count's mean cost over the run (107.5 ns).
        let (one, many, _) = two_passes(|n, step| if n == 1 { 100.0 } else { 120.0 } + 5.0 * step);
        let (g, gn) = one.growth_to(&many);
        let want = 20.0 / 107.5;
        assert!((g - want).abs() < 1e-9 && (gn - want).abs() < 1e-9, "{g} {gn}");
    }
}
