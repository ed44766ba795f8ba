//! XDP programs.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Passes every packet: the floor that per-packet costs are measured against.
#[xdp]
pub fn lb_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
