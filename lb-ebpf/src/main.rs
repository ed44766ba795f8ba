//! lb datapath: per-packet service load balancing in the kernel.
//!
//! Programs, by hook:
//! - `lb_tc_ingress` (tc, pod interfaces, ingress): packets leaving pods;
//!   DNAT to a backend (and SNAT for a pod reaching itself), rejects.
//! - `lb_tc_egress` (tc, pod and external interfaces, egress): replies on
//!   their way to the client get the frontend back, after routing.
//! - `lb_xdp` (XDP, external interfaces): NodePorts, external and
//!   LoadBalancer IPs from outside; DNAT, or DNAT+SNAT and forwarding.
//! - `lb_connect4`, `lb_sendmsg4`, `lb_recvmsg4`, `lb_getpeername4`
//!   (cgroup): host clients are translated once, at connect time.
//! - `lb_xdp_pass`, `lb_tc_pass`: do nothing (measurement floors).
//!
//! Layers, bottom up: `packet` (bounds-checked access, L4 checksums per
//! hook), `parse` (one parser for every hook), `select` (frontend lookups,
//! backend choice), `ct` (the two conntrack entries of a flow, new flows
//! and their reply tuples), `frag` (fragments), `nat` (rewrites, ICMP
//! errors), `icmp` (errors we send, rate-limited), `stats` (counters), then
//! the programs in `tc`, `xdp` and `sock`. Maps are in `maps`; their types
//! and the pure rules (checksums, conntrack states) are in `lb-common`.
#![no_std]
#![no_main]

mod ct;
mod frag;
mod icmp;
mod maps;
mod nat;
mod packet;
mod parse;
mod select;
mod sock;
mod stats;
mod tc;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
