//! The three datapaths of B2 and B4, installed into a lab node namespace
//! from one service list: ours (the tc program on the pod interfaces, maps
//! filled through the reconciler), kube-proxy's iptables rules and
//! kube-proxy's nftables rules.

use std::{fmt, time::Duration};

use anyhow::{Context, Result};
use lb_agent::{
    datapath::{Datapath, MapSizes},
    maps::Maps,
    reconcile::Reconciler,
};
use lb_lab::NodeLab;

use crate::{
    b1,
    services::{self, Svc},
    sys,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Ours,
    /// The system's `iptables-restore` (here the nf_tables backend).
    Iptables,
    /// The same rules through `iptables-legacy-restore` (x_tables).
    IptablesLegacy,
    Nftables,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Ours, Kind::Iptables, Kind::IptablesLegacy, Kind::Nftables];

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
    ours: Option<(Datapath, Reconciler, sys::Pins)>,
    node: &'a lb_lab::Netns,
}

/// Above this many backends the maps are filled directly (see
/// [`b1::B1Options::reconcile_limit`]).
pub const RECONCILE_LIMIT: usize = 2_000_000;

/// Installs `kind` with `svcs` into the lab's node. `None` when the rules
/// did not load within `budget` (the command was stopped).
pub fn install<'a>(kind: Kind, lab: &'a NodeLab, svcs: &[Svc], budget: Option<std::time::Duration>) -> Result<Option<Installed<'a>>> {
    let node = &lab.node;
    let started = std::time::Instant::now();
    let mut ours = None;
    match kind {
        Kind::Ours => {
            let pins = sys::Pins::new("dp");
            let backends: usize = svcs.iter().map(|s| s.endpoints.len()).sum();
            let sizes = MapSizes {
                services: (svcs.len() as u32 + 1024).next_power_of_two(),
                backends: (backends as u32 + 1024).next_power_of_two(),
                slots: (backends as u32 * 2 + 1024).next_power_of_two(),
                ct_tcp: 262_144,
                ..MapSizes::default()
            };
            let ifaces: Vec<String> = lab.pods.iter().map(|p| p.host_if.clone()).collect();
            let path = pins.path().to_path_buf();
            // Attaching resolves interface names in the calling thread's
            // namespace: do it from inside the node.
            let dp = lab.node.run(move || -> Result<Datapath> {
                let mut dp = Datapath::load(&path, &sizes)?;
                for i in &ifaces {
                    dp.attach_tc(lb_agent::host::ifindex(i)?, i)?;
                }
                Ok(dp)
            })?;
            let mut maps = Maps::open(pins.path())?;
            maps.write_config(&crate::ready_config())?;
            let rec = Reconciler::recover(maps)?;
            let desired = services::to_desired(svcs);
            let (rec, _) = b1::fill(pins.path(), rec, &desired, backends <= RECONCILE_LIMIT)?;
            ours = Some((dp, rec, pins));
        }
        Kind::Iptables | Kind::IptablesLegacy => {
            let mut cmd = lab.node.command(kind.restore_command());
            cmd.arg("--noflush");
            if sys::run_stdin(&mut cmd, &services::iptables_restore(svcs, false), budget).context("iptables-restore")?.is_none() {
                // Whatever was loaded goes with the lab's namespace.
                return Ok(None);
            }
        }
        Kind::Nftables => {
            let mut cmd = lab.node.command("nft");
            cmd.args(["-f", "-"]);
            if sys::run_stdin(&mut cmd, &services::nft_full(svcs), budget).context("nft -f")?.is_none() {
                return Ok(None);
            }
        }
    }
    Ok(Some(Installed { kind, took: started.elapsed(), ours, node }))
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        // Programs detach with their links; the maps go with the pins.
        self.ours.take();
        match self.kind {
            Kind::Ours => {}
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
