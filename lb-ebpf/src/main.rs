//! lb datapath: per-packet service load balancing in the kernel.
//!
//! Programs, by hook:
//! - `lb_tc_ingress` (tc, pod interfaces, ingress): packets leaving pods;
//!   DNAT to a backend (and SNAT for a pod reaching itself), rejects, ICMP
//!   errors a pod sends about a reply.
//! - `lb_tc_egress` (tc, pod and external interfaces, egress): replies on
//!   their way to the client get the frontend back, after routing; ICMP
//!   errors about translated flows.
//! - `lb_tc_ingress6`, `lb_tc_egress6`: the same for IPv6, tail-called by
//!   the two above through `LB_TC_CALLS` (never attached themselves).
//! - `lb_xdp` (XDP, external interfaces): NodePorts, external and
//!   LoadBalancer IPs from outside; DNAT, or DNAT+SNAT and forwarding, and
//!   the replies of SNATed flows.
//! - `lb_connect4`, `lb_sendmsg4`, `lb_recvmsg4`, `lb_getpeername4`
//!   (cgroup sock_addr): host clients are translated once, at connect time;
//!   `lb_connect6`, `lb_sendmsg6`, `lb_recvmsg6`, `lb_getpeername6` do the
//!   same over IPv6 (and IPv4-mapped addresses of dual-stack sockets).
//! - `lb_xdp_pass`, `lb_tc_pass`: do nothing (measurement floors, and a
//!   stand-in for another program attached after lb).
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
