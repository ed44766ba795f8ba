//! XDP on the node's external interfaces: the north-south path
//! (`north_south`) in XDP, native where the driver runs it, generic
//! elsewhere.
//!
//! `lb_xdp` only dispatches, by a tail call through `LB_XDP_CALLS`, to
//! each family's first look (`lb_xdp4`, `lb_xdp6`), which tail-call the
//! rest of their path when a packet needs more than an established flow's
//! entry (`lb_xdp4_rest`, `lb_xdp6_rest`), and IPv6 its NAT66 and reject
//! programs (`lb_xdp6_nat`, `lb_xdp6_reject`). A packet DNATed to a
//! backend on this node passes to the kernel; with BPF host routing it is
//! marked in its metadata for `lb_tc_ext_ingress`, which sends it straight
//! into the backend's pod (see `route`).

use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action, xdp_md},
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_meta},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    config_flags,
    packet::{ETH_P_IPV6, eth},
    xdp_call, xdp_mode,
};

use crate::{
    icmp,
    maps::{LB_CONFIG, LB_DEVICES, LB_XDP_CALLS},
    north_south::{
        Edge, PASS, REST, first_look4, first_look6, is_icmp6_error_frame, nat6, nat6_call, reject6, rest4, rest6, tail_call, verdict,
        verdict6,
    },
    packet::read,
    route,
};

impl Edge for XdpContext {
    type Raw = *mut xdp_md;

    #[inline(always)]
    fn raw(&self) -> *mut xdp_md {
        self.ctx
    }

    #[inline(always)]
    fn from_raw(raw: *mut xdp_md) -> XdpContext {
        XdpContext::new(raw)
    }

    #[inline(always)]
    fn in_ifindex(&self) -> u32 {
        XdpContext::ingress_ifindex(self) as u32
    }

    #[inline(always)]
    fn fib(&self, p: &mut FibParams) -> i64 {
        // SAFETY: `ctx` is the program's context and `p` a parameter
        // struct of the size passed.
        unsafe { bpf_fib_lookup(self.ctx.cast(), p, size_of::<FibParams>() as i32, 0) }
    }

    #[inline(always)]
    fn tx(&self) -> u32 {
        xdp_action::XDP_TX
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> u32 {
        // SAFETY: the helper takes plain integers.
        unsafe { bpf_redirect(ifindex, 0) as u32 }
    }

    /// Only to lb's external interfaces that run XDP (`LB_DEVICES`, but
    /// for those with the north-south path in tc). A device without XDP
    /// (a VXLAN or Geneve device of the pod overlay, say) cannot transmit
    /// a redirected frame in native mode: the redirect would drop it.
    #[inline(always)]
    fn can_redirect(&self, ifindex: u32) -> bool {
        // SAFETY: the reference lives only while the mode is read.
        unsafe { LB_DEVICES.get(ifindex) }.is_some_and(|d| d.mode != xdp_mode::TC)
    }

    #[inline(always)]
    fn tail_call(&self, slot: u32) {
        // SAFETY: the slot holds an XDP program of this object (or
        // nothing: the call returns); the context is this program's.
        unsafe { LB_XDP_CALLS.tail_call(self, slot) };
    }

    /// Only on an interface that runs XDP natively is a frame longer than
    /// the path's MTU really one packet (generic XDP also sees GSO
    /// super-packets).
    #[inline(always)]
    fn single_packet(&self) -> bool {
        let ifindex = self.in_ifindex();
        // SAFETY: the reference lives only while the mode is read.
        unsafe { LB_DEVICES.get(ifindex) }.is_some_and(|d| d.mode == xdp_mode::NATIVE)
    }

    /// The kernel delivers it; with BPF host routing, marked for
    /// `lb_tc_ext_ingress` first ([`mark_for_tc`]).
    #[inline(always)]
    fn deliver_local(&self, what: u32) -> u32 {
        mark_for_tc(self, what);
        PASS
    }

    #[inline(always)]
    fn icmp_error(&self, client: u32, now: u64, icmp_type: u8, code: u8, mtu: u16) -> u32 {
        icmp::xdp_error(self, client, now, icmp_type, code, mtu)
    }

    #[inline(always)]
    fn icmp_error6(&self, now: u64, icmp_type: u8, code: u8) -> u32 {
        icmp::xdp_error6(self, now, icmp_type, code)
    }

    #[inline(always)]
    fn icmp_reply6(raw: *mut xdp_md, icmp_type: u8, code: u8, info: u32) -> u32 {
        icmp::xdp_reply6(raw, icmp_type, code, info)
    }
}

/// Passes every packet: the floor that per-packet costs are measured
/// against.
#[xdp]
pub fn lb_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The attached program only dispatches: IPv6 to `lb_xdp6`, everything
/// else to `lb_xdp4`, each by a tail call through `LB_XDP_CALLS` (filled
/// and pinned by the agent; an empty slot passes the packet and counts
/// `stat::TAIL_CALL_FAILED`). A tail call with a constant slot is a jump
/// with no return, and each family's programs have the verifier's 512
/// bytes of stack to themselves.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    if read::<XdpContext, u16>(&ctx, eth::ETHERTYPE.start) == Some(ETH_P_IPV6.to_be()) {
        return tail_call(&ctx, xdp_call::XDP6);
    }
    tail_call(&ctx, xdp_call::XDP4)
}

/// IPv4 (and every frame that is not IPv6) from outside:
/// `LB_XDP_CALLS[xdp_call::XDP4]`. The first look runs here
/// (`first_look4`): an established north-south flow, or a packet for no
/// north-south frontend, is settled without a call. The rest continues in
/// [`lb_xdp4_rest`], tail-called. (The whole IPv4 path inlined into one
/// program took the verifier past its million instructions; as a function
/// called from here every packet paid a call and a return.)
#[xdp]
#[inline(always)] // else `#[xdp]`'s wrapper calls the body: a call and a return
pub fn lb_xdp4(ctx: XdpContext) -> u32 {
    match first_look4(&ctx) {
        Ok(REST) => tail_call(&ctx, xdp_call::XDP4_REST),
        other => verdict(&ctx, other),
    }
}

/// IPv4 from outside, after [`lb_xdp4`]'s first look did not settle the
/// packet: `LB_XDP_CALLS[xdp_call::XDP4_REST]` (`rest4`).
#[xdp]
pub fn lb_xdp4_rest(ctx: XdpContext) -> u32 {
    verdict(&ctx, rest4::<XdpContext>(ctx.ctx))
}

/// IPv6 from outside: `LB_XDP_CALLS[xdp_call::XDP6]`. NodePorts on the
/// node's IPv6 addresses, IPv6 external and LoadBalancer IPs: to backends
/// on this node DNAT only (the replies are translated back by
/// `lb_tc_egress6`); to backends on other nodes SNATed too (NAT66), the
/// flow recorded here and its packets, with their replies, forwarded by
/// `lb_xdp6_nat`; everything else passes.
///
/// It logs nothing: a log call is a function call, whose frame added to
/// the path's (504 bytes) exceeds the verifier's 512 when the agent logs
/// at debug level. Its drops are counted as everywhere.
///
/// The first look runs here (`first_look6`): the pre-filter, then an
/// established north-south flow straight from conntrack, which settles
/// most packets. The rest (new flows, fragments, entries another program
/// made) continues in [`lb_xdp6_rest`], by another tail call: a tail call
/// starts a fresh stack, and the first look and the exact path in one
/// frame needed more than the verifier's 512 bytes.
#[xdp]
pub fn lb_xdp6(ctx: XdpContext) -> u32 {
    if is_icmp6_error_frame(&ctx) {
        return nat6_call(&ctx);
    }
    match first_look6(&ctx) {
        Ok(REST) => tail_call(&ctx, xdp_call::XDP6_REST),
        other => verdict6(other),
    }
}

/// IPv6 from outside, after [`lb_xdp6`]'s first look did not settle the
/// packet: `LB_XDP_CALLS[xdp_call::XDP6_REST]` (`rest6`).
#[xdp]
pub fn lb_xdp6_rest(ctx: XdpContext) -> u32 {
    verdict6(rest6(&ctx))
}

/// The packets of NAT66 flows and ICMPv6 errors about north-south flows:
/// `LB_XDP_CALLS[xdp_call::XDP6_NAT]` (`north_south::nat6`).
#[xdp]
pub fn lb_xdp6_nat(ctx: XdpContext) -> u32 {
    nat6(&ctx)
}

/// ICMPv6 port unreachable for a new flow to a frontend with no endpoint:
/// `LB_XDP_CALLS[xdp_call::XDP6_REJECT]` (`north_south::reject6`).
#[xdp]
pub fn lb_xdp6_reject(ctx: XdpContext) -> u32 {
    reject6(&ctx)
}

/// With BPF host routing, tells `lb_tc_ext_ingress` on this interface that
/// the frame was translated towards a backend on this node: `mark`
/// (`XDP_META_LOCAL_DNAT`, `XDP_META_LOCAL_ICMP`) in 4 bytes of metadata
/// in front of it. Without room for them (a driver with no metadata
/// support) the frame goes through the host stack, as without host
/// routing; so do its flow's replies (`HOST_ROUTED` is set by
/// `lb_tc_ext_ingress` alone).
///
/// Some kernels refuse `bpf_xdp_adjust_meta` to XDP programs (the verifier
/// rejects any program that calls it): there nothing is marked
/// (`route::xdp_marks`), and `lb_tc_ext_ingress` looks each packet up.
#[inline(always)]
fn mark_for_tc(ctx: &XdpContext, mark: u32) {
    // Read before anything else: with the frozen 0 the verifier removes
    // the rest, the helper call with it.
    if !route::xdp_marks() {
        return;
    }
    // (The flags read in place: a copy of the configuration costs the
    // tight IPv6 frames.)
    if !LB_CONFIG.get(0).is_some_and(|c| c.flags & config_flags::HOST_ROUTING_BPF != 0) {
        return;
    }
    // SAFETY: the helper takes the program's own context.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -4) } != 0 {
        return;
    }
    let (meta, data) = (ctx.metadata(), ctx.data());
    if meta + 4 > data {
        return;
    }
    // SAFETY: `meta..meta + 4` lies inside the metadata, checked above
    // against the start of the packet.
    unsafe { (meta as *mut u32).write_unaligned(mark) };
}
