//! A sealed lab of Linux network namespaces that looks like a Kubernetes
//! node, for integration tests and the demo.
//!
//! * [`Netns`]: a uniquely named `ip netns` (`lb-<pid>-<counter>-<role>`),
//!   deleted on drop (also while unwinding from a panic). Code runs inside it
//!   with [`Netns::run`] (a thread that `setns`'d) or [`Netns::command`] (a
//!   child that `setns`'d in `pre_exec`, network namespace only).
//! * [`NodeLab`]: a node namespace plus pod namespaces behind veth pairs,
//!   routed Calico-style (see its docs).
//! * [`ClusterLab`]: two (or more) such nodes, an external client and a
//!   switch namespace (a bridge) joining their external interfaces.
//! * [`tcp_server`], [`udp_echo`], [`http_server`] and the clients
//!   [`tcp_request`], [`udp_request`], [`http_get`], all with timeouts.
//! * [`testrun`]: runs datapath programs on crafted packets through
//!   BPF_PROG_TEST_RUN (the packet fixtures and the per-packet benchmarks).
//!
//! The lab is sealed: every interface is created inside lab namespaces (veth
//! pairs are created with both ends placed directly), nothing is linked to
//! the root namespace and no route leads out of the lab.
//!
//! Everything needs root (see [`require_root`]) and `ip` (iproute2).

pub mod churn;
mod client;
mod cluster;
mod netns;
mod node;
mod server;
pub mod testrun;

use std::io;

use anyhow::{Context, Result, bail};

pub use client::{
    DEFAULT_TIMEOUT, http_get, http_get_with, tcp_request, tcp_request_to, tcp_request_with, udp_request, udp_request_to, udp_request_with,
};
pub use cluster::{
    BRIDGE, CLIENT_IF, CLIENT_IP, CLIENT_IP6, ClusterLab, ClusterNode, ClusterOptions, ClusterPod, EXT_IF, Overlay, ROUTED_CLIENT_IP,
    ROUTED_CLIENT_IP6, ROUTER_CLIENT_SIDE, ROUTER_CLIENT_SIDE6, ROUTER_IP, ROUTER_IP6, VXLAN_IF, cluster_pod_ip, cluster_pod_ip6, node_ip,
    node_ip6, pod_cidr, tx_checksum_off,
};
pub use netns::{ChildGuard, NAME_PREFIX, NETNS_RUN_DIR, Netns, cleanup_stale, list_netns};
pub use node::{GATEWAY_IP, GATEWAY_IP6, MAX_PODS, NODE_IF, NODE_IP, NODE_IP6, NodeLab, POD_IF, Pod, host_if, pod_ip, pod_ip6};
pub use server::{Server, http_server, tcp_server, tcp_server_at, udp_echo, udp_echo_at, udp_padded, udp_padded_at};

/// Fails unless running as root with `ip` (iproute2) available.
pub fn require_root() -> Result<()> {
    // SAFETY: trivial syscall.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!("lb-lab needs root (network namespaces, veths); running as euid {euid}");
    }
    let out = std::process::Command::new("ip").arg("-V").output().context("lb-lab needs `ip` (iproute2) in PATH")?;
    if !out.status.success() {
        bail!("`ip -V` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The network-namespace cookie of `ns`: `getsockopt(SO_NETNS_COOKIE)` on a
/// socket created inside it (what `bpf_get_netns_cookie()` returns there).
pub fn netns_cookie(ns: &Netns) -> Result<u64> {
    ns.cookie().with_context(|| format!("netns cookie of {}", ns.name()))
}

/// The first [`io::Error`] in `err`'s chain (client errors keep theirs).
pub fn io_error(err: &anyhow::Error) -> Option<&io::Error> {
    err.chain().find_map(|e| e.downcast_ref::<io::Error>())
}

/// The [`io::ErrorKind`] of the first [`io::Error`] in `err`'s chain.
pub fn io_error_kind(err: &anyhow::Error) -> Option<io::ErrorKind> {
    io_error(err).map(io::Error::kind)
}

/// Whether `err` is (caused by) `ECONNREFUSED`.
pub fn is_connection_refused(err: &anyhow::Error) -> bool {
    io_error(err).is_some_and(|e| e.raw_os_error() == Some(libc::ECONNREFUSED))
}
