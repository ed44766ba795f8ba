//! The three datapaths of B2 and B4, installed into a lab node namespace
//! from one service list: ours (the tc program on the pod interfaces, maps
//! filled through the reconciler; on a cluster node also the XDP program
//! on the external interface, for NodePorts), kube-proxy's iptables rules
//! and kube-proxy's nftables rules.

use std::{fmt, net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result};
use lb_agent::{
    datapath::{Datapath, MapSizes, XdpAttach, xdp_mode_name, xdp_why_text},
    maps::Maps,
    northsouth::{NorthSouth, NorthSouthConfig},
    probes::Heartbeat,
    reconcile::Reconciler,
};
use lb_lab::{Netns, NodeLab};

use crate::{
    b1,
    services::{self, Svc},
    sys,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Kind {
    Ours,
    /// Ours with BPF host routing (`lb-agent run --host-routing bpf`):
    /// translated packets go straight into the destination pod. B2 and
    /// B4's east-west rows.
    OursHostRouting,
    /// The system's `iptables-restore` (here the nf_tables backend).
    Iptables,
    /// The same rules through `iptables-legacy-restore` (x_tables).
    IptablesLegacy,
    Nftables,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Ours, Kind::Iptables, Kind::IptablesLegacy, Kind::Nftables];
    /// B2's and B4's east-west datapaths: [`Kind::ALL`] and lb with BPF
    /// host routing.
    pub const B2: [Kind; 5] = [Kind::Ours, Kind::OursHostRouting, Kind::Iptables, Kind::IptablesLegacy, Kind::Nftables];

    /// Whether this is lb (either host routing).
    pub fn is_ours(self) -> bool {
        matches!(self, Kind::Ours | Kind::OursHostRouting)
    }

    /// The restore command of an iptables kind.
    pub fn restore_command(self) -> &'static str {
        match self {
            Kind::IptablesLegacy => "iptables-legacy-restore",
            _ => "iptables-restore",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Ours => "lb (tc eBPF)",
            Kind::OursHostRouting => "lb (tc eBPF, BPF host routing)",
            Kind::Iptables => "kube-proxy iptables (nft backend)",
            Kind::IptablesLegacy => "kube-proxy iptables (legacy)",
            Kind::Nftables => "kube-proxy nftables",
        })
    }
}

/// An installed datapath; removed on drop.
pub struct Installed<'a> {
    pub kind: Kind,
    /// How long installing took.
    pub took: Duration,
    /// Ours on a cluster node: the XDP mode that ran on the external
    /// interface and the mode asked for (`generic, --xdp-mode auto`).
    pub xdp: Option<String>,
    ours: Option<(Datapath, Reconciler, sys::Pins)>,
    node: &'a lb_lab::Netns,
}

/// What an install on a cluster node adds for north-south traffic.
#[derive(Clone, Debug)]
pub struct NorthSouthSetup {
    /// This node's name (endpoints' `nodeName`).
    pub node_name: String,
    /// The node address NodePorts are served on.
    pub node_ip: Ipv4Addr,
    /// The external interface: lb attaches its XDP program there.
    pub ext_if: String,
    /// How (`--xdp-mode`; the agent's default is `auto`).
    pub xdp_mode: XdpAttach,
    /// The node of each endpoint address (others: unknown).
    pub endpoint_nodes: Vec<(Ipv4Addr, String)>,
}

/// Above this many backends the maps are filled directly (see
/// [`b1::B1Options::reconcile_limit`]).
pub const RECONCILE_LIMIT: usize = 2_000_000;

/// Installs `kind` with `svcs` into the lab's node. `None` when the rules
/// did not load within `budget` (the command was stopped).
pub fn install<'a>(kind: Kind, lab: &'a NodeLab, svcs: &[Svc], budget: Option<std::time::Duration>) -> Result<Option<Installed<'a>>> {
    let ifaces: Vec<String> = lab.pods.iter().map(|p| p.host_if.clone()).collect();
    install_on(kind, &lab.node, &ifaces, None, svcs, budget)
}

/// Installs `kind` with `svcs` into `node`, whose pods sit behind
/// `pod_ifaces`; with `north_south`, NodePorts are served from outside too
/// (kube-proxy: the services' NodePort rules; ours: the XDP program and
/// the NodePort frontends).
pub fn install_on<'a>(
    kind: Kind,
    node: &'a Netns,
    pod_ifaces: &[String],
    north_south: Option<&NorthSouthSetup>,
    svcs: &[Svc],
    budget: Option<std::time::Duration>,
) -> Result<Option<Installed<'a>>> {
    let started = std::time::Instant::now();
    let mut ours = None;
    let mut xdp = None;
    match kind {
        Kind::Ours | Kind::OursHostRouting => {
            let pins = sys::Pins::new("dp");
            let backends: usize = svcs.iter().map(|s| s.endpoints.len()).sum();
            let sizes = MapSizes {
                services: (svcs.len() as u32 + 1024).next_power_of_two(),
                backends: (backends as u32 + 1024).next_power_of_two(),
                slots: (backends as u32 * 2 + 1024).next_power_of_two(),
                ct_tcp: 262_144,
                ..MapSizes::default()
            };
            let ifaces = pod_ifaces.to_vec();
            let path = pins.path().to_path_buf();
            // Attaching resolves interface names in the calling thread's
            // namespace: do it from inside the node.
            let dp = node.run(move || -> Result<Datapath> {
                let mut dp = Datapath::load(&path, &sizes)?;
                for i in &ifaces {
                    dp.attach_tc(lb_agent::host::ifindex(i)?, i)?;
                }
                Ok(dp)
            })?;
            let mut maps = Maps::open(pins.path())?;
            let ready = crate::ready_config();
            let host_routing = if kind == Kind::OursHostRouting { lb_common::config_flags::HOST_ROUTING_BPF } else { 0 };
            maps.write_config(&lb_common::Config { flags: ready.flags | host_routing, ..ready })?;
            let mut rec = Reconciler::recover(maps)?;
            let mut dp = dp;
            let desired = match north_south {
                None => services::to_desired(svcs),
                Some(ns) => {
                    // What the agent does at start: XDP on the external
                    // interface, this node's settings (SNAT address from
                    // the interface), its name.
                    let cfg = NorthSouthConfig {
                        node_name: Some(ns.node_name.clone()),
                        external_ifaces: vec![ns.ext_if.clone()],
                        xdp_mode: ns.xdp_mode,
                        ..NorthSouthConfig::default()
                    };
                    if kind == Kind::OursHostRouting {
                        // (`lb_tc_ext_ingress` on the external interface.)
                        dp.set_host_routing(lb_agent::datapath::HostRouting::Bpf);
                    }
                    (dp, rec) = node.run(move || -> Result<(Datapath, Reconciler)> {
                        NorthSouth::start(&cfg, &mut dp, &mut rec, Heartbeat::default())?;
                        Ok((dp, rec))
                    })?;
                    if let Some((name, mode, why)) = dp.xdp_interfaces().next() {
                        eprintln!("lb-bench: lb's XDP program on {name}: {} ({})", xdp_mode_name(mode), xdp_why_text(why));
                        xdp = Some(format!("{}, --xdp-mode {}", xdp_mode_name(mode), ns.xdp_mode));
                    }
                    let nodes = ns.endpoint_nodes.clone();
                    let node_of = move |ip: Ipv4Addr| nodes.iter().find(|(a, _)| *a == ip).map(|(_, n)| n.clone());
                    services::to_desired_with_nodeports(svcs, ns.node_ip, &node_of)
                }
            };
            let (rec, _) = b1::fill(pins.path(), rec, &desired, backends <= RECONCILE_LIMIT)?;
            ours = Some((dp, rec, pins));
        }
        Kind::Iptables | Kind::IptablesLegacy => {
            let mut cmd = node.command(kind.restore_command());
            cmd.arg("--noflush");
            if sys::run_stdin(&mut cmd, &services::iptables_restore(svcs, false), budget).context("iptables-restore")?.is_none() {
                // Whatever was loaded goes with the lab's namespace.
                return Ok(None);
            }
        }
        Kind::Nftables => {
            let mut cmd = node.command("nft");
            cmd.args(["-f", "-"]);
            if sys::run_stdin(&mut cmd, &services::nft_full(svcs), budget).context("nft -f")?.is_none() {
                return Ok(None);
            }
        }
    }
    Ok(Some(Installed { kind, took: started.elapsed(), xdp, ours, node }))
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        // Programs detach with their links; the maps go with the pins.
        self.ours.take();
        match self.kind {
            Kind::Ours | Kind::OursHostRouting => {}
            Kind::Iptables | Kind::IptablesLegacy => {
                let mut cmd = self.node.command(self.kind.restore_command());
                let _ = sys::timed_stdin(&mut cmd, services::iptables_flush());
            }
            Kind::Nftables => {
                let mut cmd = self.node.command("nft");
                cmd.args(["-f", "-"]);
                let _ = sys::timed_stdin(&mut cmd, services::nft_delete());
            }
        }
    }
}
