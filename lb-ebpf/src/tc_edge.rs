//! The north-south path (`north_south`) in tc, on the external interfaces'
//! ingress (`--xdp-mode tc`): for nodes where XDP is not wanted or cannot
//! be had (another XDP program already on the interface, a driver whose
//! XDP misbehaves), as Cilium serves NodePorts from `bpf_host` when its XDP
//! acceleration is off. tc sees the skb as it is: no copy for generic
//! XDP's headroom, and the skb's checksum state is the kernel helpers' to
//! keep (a veth's partial checksums included).
//!
//! `lb_tc_ns` runs IPv4's first look itself and tail-calls, through
//! `LB_TC_CALLS`, the programs XDP's would: `lb_tc_ns4_rest`, and for
//! IPv6 `lb_tc_ns6`, `lb_tc_ns6_rest`, `lb_tc_ns6_nat` and
//! `lb_tc_ns6_reject`. The headers the path reads are pulled into the
//! linear part first. A packet DNATed to a backend on this node passes to
//! the kernel, or with BPF host routing goes straight into its pod (what
//! `lb_tc_ext_ingress` does for XDP's, which this program replaces). The
//! path's verdicts (XDP's numbers) become tc's at each program's end
//! ([`to_tc`]); what passes returns `TC_ACT_UNSPEC`, tcx's "next".

use core::mem::size_of;

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_REDIRECT, TC_ACT_SHOT, bpf_fib_lookup as FibParams},
    helpers::{bpf_fib_lookup, bpf_redirect},
    macros::classifier,
    programs::TcContext,
};
use lb_common::{XDP_META_LOCAL_DNAT, config_flags, tc_call, xdp_call};

use crate::{
    icmp,
    maps::{LB_CONFIG, LB_TC_CALLS},
    north_south::{
        DROP, Edge, PASS, REDIRECT, REST, first_look4, first_look6, is_icmp6_error_frame, nat6, nat6_call, reject6, rest4, rest6,
        tail_call, verdict, verdict6,
    },
    tc::{MAX_HEADERS, MAX_ICMP6_ERROR, Mark, NEXT, from_outside, icmp_error_from_outside, is_ipv6, pull},
};

impl Edge for TcContext {
    type Raw = *mut __sk_buff;

    #[inline(always)]
    fn raw(&self) -> *mut __sk_buff {
        self.skb.skb
    }

    #[inline(always)]
    fn from_raw(raw: *mut __sk_buff) -> TcContext {
        TcContext::new(raw)
    }

    #[inline(always)]
    fn in_ifindex(&self) -> u32 {
        // SAFETY: `skb` is the program's context; a plain field is read.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn fib(&self, p: &mut FibParams) -> i64 {
        // SAFETY: `skb` is the program's context and `p` a parameter
        // struct of the size passed.
        unsafe { bpf_fib_lookup(self.skb.skb.cast(), p, size_of::<FibParams>() as i32, 0) }
    }

    /// Out of the interface it came in on: its egress.
    #[inline(always)]
    fn tx(&self) -> u32 {
        self.redirect(self.in_ifindex())
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> u32 {
        // SAFETY: the helper takes plain integers.
        match unsafe { bpf_redirect(ifindex, 0) } as i32 {
            TC_ACT_REDIRECT => REDIRECT,
            _ => DROP,
        }
    }

    /// tc redirects to any interface (its egress).
    #[inline(always)]
    fn can_redirect(&self, _ifindex: u32) -> bool {
        true
    }

    /// `xdp_call`'s slots mapped to the tc programs that do the same.
    #[inline(always)]
    fn tail_call(&self, slot: u32) {
        let slot = match slot {
            xdp_call::XDP4_REST => tc_call::NS4_REST,
            xdp_call::XDP6 => tc_call::NS6,
            xdp_call::XDP6_REST => tc_call::NS6_REST,
            xdp_call::XDP6_NAT => tc_call::NS6_NAT,
            xdp_call::XDP6_REJECT => tc_call::NS6_REJECT,
            HOST_ROUTE_DNAT_SLOT => tc_call::NS_LOCAL,
            HOST_ROUTE_ICMP_SLOT => tc_call::NS_LOCAL_ICMP,
            _ => return,
        };
        // SAFETY: the slot holds a tc program of this object (or nothing:
        // the call returns); the context is this program's.
        unsafe { LB_TC_CALLS.tail_call(self, slot) };
    }

    /// An skb that is no GSO super-packet.
    #[inline(always)]
    fn single_packet(&self) -> bool {
        // SAFETY: `skb` is the program's context; a plain field is read.
        unsafe { (*self.skb.skb).gso_size == 0 }
    }

    /// Through the kernel, or with BPF host routing straight into the
    /// backend's pod: [`HOST_ROUTE_DNAT`] or [`HOST_ROUTE_ICMP`], which
    /// the program turns into a tail call ([`to_tc`]).
    #[inline(always)]
    fn deliver_local(&self, what: u32) -> u32 {
        if !LB_CONFIG.get(0).is_some_and(|c| c.flags & config_flags::HOST_ROUTING_BPF != 0) {
            return PASS;
        }
        if what == XDP_META_LOCAL_DNAT { HOST_ROUTE_DNAT } else { HOST_ROUTE_ICMP }
    }

    #[inline(always)]
    fn icmp_error(&self, client: u32, now: u64, icmp_type: u8, code: u8, mtu: u16) -> u32 {
        icmp::tc_error(self, client, now, icmp_type, code, mtu).map_or(DROP, from_tc)
    }

    #[inline(always)]
    fn icmp_error6(&self, now: u64, icmp_type: u8, code: u8) -> u32 {
        icmp::tc_error6(self, now, icmp_type, code).map_or(DROP, from_tc)
    }

    #[inline(always)]
    fn icmp_reply6(raw: *mut __sk_buff, icmp_type: u8, code: u8, info: u32) -> u32 {
        reply6(raw, icmp_type, code, info)
    }
}

/// [`Edge::icmp_reply6`] in a frame of its own, as XDP's
/// (`icmp::xdp_reply6`): inlined into `lb_tc_ns6_nat`'s path it would add
/// its headers and checksum loop to the path's frame.
#[inline(never)]
fn reply6(raw: *mut __sk_buff, icmp_type: u8, code: u8, info: u32) -> u32 {
    icmp::tc_reply6(&TcContext::new(raw), icmp_type, code, info).map_or(DROP, from_tc)
}

/// A tc verdict in the path's numbers.
#[inline(always)]
fn from_tc(verdict: i32) -> u32 {
    match verdict {
        TC_ACT_REDIRECT => REDIRECT,
        TC_ACT_SHOT => DROP,
        _ => PASS,
    }
}

/// The path's verdict for a packet translated towards a backend on this
/// node, with BPF host routing: [`lb_tc_ns_local`] sends it into the pod.
/// The verifier forced this: that path's frame (`route::from_outside4`)
/// added to the north-south path's exceeded its 512 bytes, so the path
/// returns and its program tail-calls it. (No verdict has this value.)
const HOST_ROUTE_DNAT: u32 = 0x6c62_0001;
/// The same for an ICMP error translated towards one, about a host-routed
/// flow: [`lb_tc_ns_local_icmp`].
const HOST_ROUTE_ICMP: u32 = 0x6c62_0002;

/// The path's verdict (XDP's numbers) as tc's; a packet for BPF host
/// routing goes on to its program.
#[inline(always)]
fn to_tc(ctx: &TcContext, verdict: u32) -> i32 {
    match verdict {
        REDIRECT => TC_ACT_REDIRECT,
        DROP => TC_ACT_SHOT,
        // An empty slot: the packet is translated, the stack delivers it.
        HOST_ROUTE_DNAT => {
            tail_call(ctx, HOST_ROUTE_DNAT_SLOT);
            NEXT
        }
        HOST_ROUTE_ICMP => {
            tail_call(ctx, HOST_ROUTE_ICMP_SLOT);
            NEXT
        }
        // `XDP_TX` is the XDP hook's alone (`Edge::tx` redirects here).
        _ => NEXT,
    }
}

/// [`Edge::tail_call`]'s own slot numbers for the host routing programs,
/// beside `xdp_call`'s.
const HOST_ROUTE_DNAT_SLOT: u32 = 0x100;
const HOST_ROUTE_ICMP_SLOT: u32 = 0x101;

/// A packet `lb_tc_ns` (or another program of the path) DNATed to a
/// backend on this node, with BPF host routing: `LB_TC_CALLS[
/// tc_call::NS_LOCAL]`, `lb_tc_ext_ingress`'s path for an XDP-marked frame
/// (`tc::from_outside`). What cannot be redirected passes to the stack.
#[classifier]
pub fn lb_tc_ns_local(ctx: TcContext) -> i32 {
    crate::tc::verdict(&ctx, from_outside(&ctx, Mark::LocalDnat))
}

/// An ICMP error translated towards a backend on this node about a
/// host-routed flow: `LB_TC_CALLS[tc_call::NS_LOCAL_ICMP]`
/// (`tc::icmp_error_from_outside`).
#[classifier]
pub fn lb_tc_ns_local_icmp(ctx: TcContext) -> i32 {
    icmp_error_from_outside(&ctx)
}

/// The external interfaces' ingress with `--xdp-mode tc`: IPv4's first
/// look here (`north_south::first_look4`), the rest in
/// [`lb_tc_ns4_rest`]; IPv6 in [`lb_tc_ns6`]. Both tail-called through
/// `LB_TC_CALLS` (an empty slot passes the packet, counted).
#[classifier]
pub fn lb_tc_ns(ctx: TcContext) -> i32 {
    if is_ipv6(&ctx) {
        return to_tc(&ctx, tail_call(&ctx, xdp_call::XDP6));
    }
    if pull(&ctx, MAX_HEADERS).is_err() {
        return NEXT;
    }
    match first_look4(&ctx) {
        Ok(REST) => to_tc(&ctx, tail_call(&ctx, xdp_call::XDP4_REST)),
        other => to_tc(&ctx, verdict(&ctx, other)),
    }
}

/// IPv4 after [`lb_tc_ns`]'s first look did not settle the packet:
/// `LB_TC_CALLS[tc_call::NS4_REST]` (`north_south::rest4`).
#[classifier]
pub fn lb_tc_ns4_rest(ctx: TcContext) -> i32 {
    to_tc(&ctx, verdict(&ctx, rest4::<TcContext>(ctx.skb.skb)))
}

/// IPv6 from outside: `LB_TC_CALLS[tc_call::NS6]`, as XDP's `lb_xdp6`
/// (the headers, an ICMPv6 error's quote included, pulled first).
#[classifier]
pub fn lb_tc_ns6(ctx: TcContext) -> i32 {
    if pull(&ctx, MAX_ICMP6_ERROR).is_err() {
        return NEXT;
    }
    if is_icmp6_error_frame(&ctx) {
        return to_tc(&ctx, nat6_call(&ctx));
    }
    match first_look6(&ctx) {
        Ok(REST) => to_tc(&ctx, tail_call(&ctx, xdp_call::XDP6_REST)),
        other => to_tc(&ctx, verdict6(other)),
    }
}

/// IPv6 after [`lb_tc_ns6`]'s first look: `LB_TC_CALLS[tc_call::NS6_REST]`
/// (`north_south::rest6`).
#[classifier]
pub fn lb_tc_ns6_rest(ctx: TcContext) -> i32 {
    to_tc(&ctx, verdict6(rest6(&ctx)))
}

/// NAT66 flows and ICMPv6 errors about north-south flows:
/// `LB_TC_CALLS[tc_call::NS6_NAT]` (`north_south::nat6`).
#[classifier]
pub fn lb_tc_ns6_nat(ctx: TcContext) -> i32 {
    to_tc(&ctx, nat6(&ctx))
}

/// ICMPv6 port unreachable for a new flow to a frontend with no endpoint:
/// `LB_TC_CALLS[tc_call::NS6_REJECT]` (`north_south::reject6`).
#[classifier]
pub fn lb_tc_ns6_reject(ctx: TcContext) -> i32 {
    to_tc(&ctx, reject6(&ctx))
}
