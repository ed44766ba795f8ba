//! lb datapath: per-packet service load balancing in the kernel.
//!
//! Programs attached, by hook (the agent attaches these and no others):
//! - `lb_tc_ingress` (tc, pod interfaces, ingress): packets leaving pods;
//!   DNAT to a backend (and SNAT for a pod reaching itself), rejects, ICMP
//!   errors a pod sends about a reply.
//! - `lb_tc_egress` (tc, pod and external interfaces, egress): replies on
//!   their way to the client get the frontend back, after routing; ICMP
//!   errors about translated flows.
//! - `lb_xdp` (XDP, external interfaces): NodePorts, external and
//!   LoadBalancer IPs from outside; it only dispatches by family.
//! - `lb_tc_ns` (tc, external interfaces, ingress: `--xdp-mode tc`, or
//!   `auto` where a NIC cannot run XDP natively or a veth node has an
//!   overlay of a smaller MTU): the same north-south path in tc.
//! - `lb_tc_ext_ingress` (tc, external interfaces, ingress, with XDP and
//!   `--host-routing bpf`): what `lb_xdp` DNATed to a pod of this node goes
//!   straight into it.
//! - `lb_connect4`, `lb_sendmsg4`, `lb_recvmsg4`, `lb_getpeername4`
//!   (cgroup sock_addr): host clients are translated once, at connect time;
//!   `lb_connect6`, `lb_sendmsg6`, `lb_recvmsg6`, `lb_getpeername6` do the
//!   same over IPv6 (and IPv4-mapped addresses of dual-stack sockets).
//! - `lb_xdp_pass`, `lb_tc_pass`: do nothing (measurement floors, and a
//!   stand-in for another program attached after lb).
//!
//! Programs tail-called through the pinned program arrays (a fresh stack
//! each, and they keep serving with the agent gone):
//! - `LB_TC_CALLS` (`lb_common::tc_call`): `lb_tc_ingress6`,
//!   `lb_tc_ingress6_rest`, `lb_tc_egress6` and `lb_tc_egress6_icmp` (IPv6
//!   from and to pods); `lb_tc_ns4_rest`, `lb_tc_ns6`, `lb_tc_ns6_rest`,
//!   `lb_tc_ns6_nat` and `lb_tc_ns6_reject` (`lb_tc_ns`'s path past its
//!   first look); `lb_tc_ns_local` and `lb_tc_ns_local_icmp` (BPF host
//!   routing of what the north-south path DNATed to a pod of this node).
//! - `LB_XDP_CALLS` (`lb_common::xdp_call`): `lb_xdp4` and `lb_xdp4_rest`
//!   (IPv4), `lb_xdp6`, `lb_xdp6_rest`, `lb_xdp6_nat` (NAT66 and ICMPv6
//!   errors) and `lb_xdp6_reject` (IPv6).
//!
//! Layers, bottom up:
//! - `maps`: the maps (their key and value types, and the pure rules:
//!   checksums, header fields, conntrack states, are in `lb-common`);
//! - `packet`: bounds-checked packet access, L4 checksum updates per hook;
//! - `stats`: per-CPU counters; `error`: why a packet is dropped (each
//!   counted), one error type for tc and XDP;
//! - `parse`: one parser for every hook (a TCP/UDP `Flow`, or an ICMP error
//!   quoting one);
//! - `family`: each address family's maps behind one trait;
//! - `select`: frontend lookups and backend choice (Maglev, affinity);
//!   `vip_filter`: XDP's and tc's pre-filter of frontend addresses (one
//!   array load);
//! - `ct`: the two conntrack entries of a flow: lookups, updates, new flows
//!   and their reply tuples;
//! - `frag`: fragments (the first fragment's ports for the rest);
//! - `nat`: rewrites of a flow's packets and of ICMP errors about it;
//! - `icmp`: the ICMP errors lb sends itself, rate-limited;
//! - `route`: forwarding past the host stack (FIB lookups and a router's
//!   rewrite, for XDP; tc's BPF host routing into pods of this node);
//! - `sock_family`: the socket translation, over an address family;
//! - the programs: `tc`, `xdp`, `sock` and `sock6`.
//!
//! Every map value that other CPUs write in place (conntrack entries,
//! affinity, reject rates, counters) is accessed field by field through
//! raw pointers, read and written once (Cilium's READ_ONCE/WRITE_ONCE); no
//! reference to one is ever made.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

mod clock;
mod ct;
mod error;
mod family;
mod frag;
mod icmp;
mod l3;
mod maps;
mod nat;
mod nexthop;
mod north_south;
mod packet;
mod parse;
mod route;
mod scratch;
mod select;
mod sock;
mod sock6;
mod sock_family;
mod stats;
mod tc;
mod tc_edge;
mod vip_filter;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
