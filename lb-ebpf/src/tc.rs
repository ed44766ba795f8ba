//! tc programs (tcx) on pod interfaces, and on the external interfaces'
//! egress.
//!
//! - `lb_tc_ingress`, pod interfaces, ingress (packets leaving a pod):
//!   a packet for a frontend is DNATed to a backend and its flow recorded
//!   in conntrack both ways. A pod that reaches itself through its Service
//!   (hairpin) is also SNATed to the hairpin address and sent straight back
//!   out of its interface, as are the replies it sends itself. A frontend
//!   without endpoints rejects (ICMP port unreachable, rate-limited), as
//!   does a ClusterIP on a port no Service defines. An ICMP error a pod
//!   sends about a reply it got is translated for the backend.
//! - `lb_tc_egress`, pod and external interfaces, egress (packets on their
//!   way to a client): a reply of a translated flow gets the frontend back
//!   as its source (and the client's own address and port as destination).
//!   This is after routing, where netfilter un-NATs too: reverse-path
//!   filtering never sees a frontend address arriving on a pod interface,
//!   and every reply path works (a backend on this node or another, in the
//!   host network, behind a tunnel, with or without XDP). ICMP errors about
//!   translated flows are translated on the same way.
//! - With BPF host routing (`config_flags::HOST_ROUTING_BPF`, see
//!   `route`), `lb_tc_ingress` (and IPv6's programs) also sends a
//!   translated packet, and a backend's reply translated back at its own
//!   interface, straight into a pod of this node (`bpf_redirect_peer`);
//!   what cannot be redirected takes the path above. `lb_tc_ext_ingress`,
//!   on the external interfaces in that mode only, sends a north-south
//!   packet `lb_xdp` DNATed to a pod of this node straight into it, and
//!   that flow's replies then leave straight out (`route`).
//! - `lb_tc_pass` lets everything through (a floor for measurements, and a
//!   stand-in for a program another agent attaches after lb).
//!
//! Whatever passes returns `TC_ACT_UNSPEC`, tcx's "next": programs attached
//! after lb (by a CNI, say) still see the packet.
//!
//! IPv4 and IPv6 flows take the same path, written once over the family
//! (`TcFamily`, on top of `l3::L3` and `family::FamilyMaps`). IPv4 runs in
//! the attached programs; IPv6 in `lb_tc_ingress6` and `lb_tc_egress6`,
//! which they tail-call through `LB_TC_CALLS` (pinned, filled by the
//! agent; an empty slot passes the packet and counts
//! `stat::TAIL_CALL_FAILED`). IPv6 rejects are ICMPv6 port unreachable,
//! quoting up to the minimum MTU, rate-limited per client as IPv4's.
//! ICMPv6 errors about translated flows (Packet Too Big included) are
//! translated as IPv4's, when ICMPv6 follows the fixed header directly
//! and the quote has no extension headers. A pod reaching itself over
//! IPv6 is source-NATed to `lb_common::HAIRPIN_ADDR6` and bounced as
//! IPv4's. IPv6 fragments take the path as IPv4's (`frag`).

use core::ops::ControlFlow;

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use lb_common::{
    CT_SERVICE, Config, IPPROTO_ICMP, IPPROTO_ICMPV6, V4, V6, Vip4, XDP_META_LOCAL_DNAT, XDP_META_LOCAL_ICMP, config_flags, ct_entry_flags,
    packet::{ETH_HLEN, ETH_P_IPV6, FRAG6_HLEN, Fragment, ICMP_HLEN, IPV4_HLEN, IPV6_HLEN, TCP_HLEN, eth, ip, ip6, swapped_macs},
    stat, svc_flags, tc_call, vip_flags,
};

use crate::{
    clock::now_ns,
    ct::{self, Forward, NewFlow, Source},
    error::Error,
    family::{Ct, CtKey, FamilyMaps},
    frag, icmp,
    l3::L3,
    maps::LB_TC_CALLS,
    nat,
    packet::{read, redirect_back, write},
    parse::{Flow, IcmpError, Packet, Quoted, icmp6_error_at, parse, parse6},
    route, scratch,
    select::{config, flow_backend, node_config},
    stats,
};

/// What the tc programs do differently per family.
trait TcFamily: L3 {
    /// The verdict for a flow `f` to a frontend that cannot serve it (no
    /// endpoint, or a ClusterIP port no Service defines).
    fn reject(ctx: &TcContext, f: &Flow<Self>, now: u64) -> Result<i32, Error>;
    /// The verdict for a packet of flow `f` translated as its forward
    /// entry `e` says: past the host stack into a pod of this node with
    /// BPF host routing (`route`), else `NEXT`.
    fn deliver(ctx: &TcContext, cfg: &Config, f: &Flow<Self>, e: &Ct<Self>) -> Result<i32, Error>;
    /// The verdict for a flow `f` to no frontend: with BPF host routing,
    /// a reply of a translated flow to a pod of this node is translated
    /// back and redirected into it (`route`); else `NEXT`.
    fn deliver_reply(ctx: &TcContext, cfg: &Config, f: &Flow<Self>) -> Result<i32, Error>;
}

impl TcFamily for V4 {
    /// ICMP port unreachable from the dialled address, within the client's
    /// rate. Only for a packet with its L4 header and no IP options (the
    /// quote covers a 20-byte header); others are dropped.
    #[inline(always)]
    fn reject(ctx: &TcContext, f: &Flow<V4>, now: u64) -> Result<i32, Error> {
        if f.l4_off != ETH_HLEN + IPV4_HLEN || !f.has_l4() {
            return Ok(SHOT);
        }
        icmp::tc_reject(ctx, f.saddr, now).ok_or(Error::Rewrite)
    }

    #[inline(always)]
    fn deliver(ctx: &TcContext, cfg: &Config, f: &Flow<V4>, e: &Ct<V4>) -> Result<i32, Error> {
        if cfg.flags & config_flags::HOST_ROUTING_BPF == 0 {
            return Ok(NEXT);
        }
        let addrs = e.nat_saddr as u64 | (e.nat_daddr as u64) << 32;
        let l4 = f.proto as u64 | (e.nat_sport as u64) << 16 | (e.nat_dport as u64) << 32;
        Ok(route::redirect_translated(ctx.skb.skb, addrs, l4))
    }

    #[inline(always)]
    fn deliver_reply(ctx: &TcContext, cfg: &Config, f: &Flow<V4>) -> Result<i32, Error> {
        if cfg.flags & config_flags::HOST_ROUTING_BPF == 0 {
            return Ok(NEXT);
        }
        if f.frag != Fragment::No {
            // Its ports and translation come from the first fragment, on
            // the stack path.
            return Ok(NEXT);
        }
        let addrs = f.saddr as u64 | (f.daddr as u64) << 32;
        let l4 = f.sport as u64 | (f.dport as u64) << 16 | (f.proto as u64) << 32 | (f.tcp_flags as u64) << 40;
        let seq_off = f.seq as u64 | (f.l4_off as u64) << 32;
        Ok(route::redirect_reply(ctx.skb.skb, addrs, l4, seq_off))
    }
}

impl TcFamily for V6 {
    /// ICMPv6 port unreachable, built by the program once the path has
    /// returned ([`REJECT`]).
    #[inline(always)]
    fn reject(_ctx: &TcContext, _f: &Flow<V6>, _now: u64) -> Result<i32, Error> {
        Ok(REJECT)
    }

    #[inline(always)]
    fn deliver(ctx: &TcContext, cfg: &Config, f: &Flow<V6>, e: &Ct<V6>) -> Result<i32, Error> {
        if cfg.flags & config_flags::HOST_ROUTING_BPF == 0 {
            return Ok(NEXT);
        }
        let l4 = f.proto as u64 | (e.nat_sport as u64) << 16 | (e.nat_dport as u64) << 32;
        Ok(route::redirect_translated6(ctx.skb.skb, l4))
    }

    /// Reached from the first look only (`lb_tc_ingress6`): [`REPLY6`],
    /// and `lb_tc_ingress6_rest` tries the reply's redirect.
    #[inline(always)]
    fn deliver_reply(_ctx: &TcContext, cfg: &Config, f: &Flow<V6>) -> Result<i32, Error> {
        if cfg.flags & config_flags::HOST_ROUTING_BPF == 0 || f.frag != Fragment::No {
            return Ok(NEXT);
        }
        Ok(REPLY6)
    }
}

pub(crate) const NEXT: i32 = TC_ACT_UNSPEC;
const SHOT: i32 = TC_ACT_SHOT;
/// The IPv6 path's verdict for a packet to answer with an ICMPv6 reject
/// (no tc action has this value). The verifier forced this: the IPv6
/// path's frame leaves no room for the reject's, so the path returns and
/// its program builds the reject in a frame of its own (`reject6`).
const REJECT: i32 = 0x7e1ec7;
/// The IPv6 first look's verdicts for a packet that needs the exact path
/// ([`ingress6`]): with a conntrack entry (or not looked up), and with
/// none (a new flow: the exact path need not look again). No tc action
/// has these values either.
const EXACT: i32 = 0x7e1ec8;
const EXACT_NO_ENTRY: i32 = 0x7e1ec9;
/// The IPv6 first look's verdict for a whole packet to no frontend with
/// BPF host routing: it may be a backend's reply to a pod of this node,
/// which [`lb_tc_ingress6_rest`] redirects (`route::redirect_reply6`; in
/// the first look's program, the frames exceeded 512 bytes together).
const REPLY6: i32 = 0x7e1eca;

#[inline(always)]
pub fn verdict(ctx: &TcContext, result: Result<i32, Error>) -> i32 {
    match result {
        Ok(v) => v,
        Err(e) => match e.count_drop() {
            None => NEXT,
            Some(what) => {
                debug!(ctx, "lb_tc: {}, packet dropped", what);
                SHOT
            }
        },
    }
}

// IPv4 runs in the attached programs; IPv6 in programs of its own,
// reached by a tail call (`LB_TC_CALLS`, filled and pinned by the agent).
// Each gets the verifier's 512 bytes of stack: both paths in one program
// exceeded it (as BPF-to-BPF calls, their frames add up along the call
// chain). The tail call is made from the program itself, never from a
// function it calls (the verifier limits tail calls from subprograms).

#[classifier]
pub fn lb_tc_ingress(ctx: TcContext) -> i32 {
    if is_ipv6(&ctx) {
        return tail_call(&ctx, tc_call::INGRESS6);
    }
    verdict(&ctx, try_ingress(&ctx))
}

#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    if is_ipv6(&ctx) {
        return tail_call(&ctx, tc_call::EGRESS6);
    }
    // Inlined: as a function of its own (once needed to dodge an LLVM
    // miscompile the verifier refused), every packet to a pod paid a call
    // and a return.
    verdict(&ctx, try_egress(&ctx))
}

/// IPv6, leaving a pod: `LB_TC_CALLS[tc_call::INGRESS6]`. The first look
/// runs here: the pre-filter, then an established flow straight from
/// conntrack (`Stage::First`), which settles most packets. The rest (the
/// exact path of a new flow, a reject, an ICMPv6 error) continues in
/// [`lb_tc_ingress6_rest`], by another tail call: a tail call starts a
/// fresh stack, and the first look and the exact path in one call chain
/// needed more than the verifier's 512 bytes (their frames add up). As a
/// call of its own, the first look cost an established packet a call
/// and a return.
#[classifier]
pub fn lb_tc_ingress6(mut ctx: TcContext) -> i32 {
    // (An ICMPv6 error goes on to the rest as it is: no first look.)
    if !is_icmp6(&ctx) {
        let rest = match ingress6_stage(ctx.skb.skb, Stage::First) {
            Ok(EXACT) => EXACT,
            Ok(EXACT_NO_ENTRY) => EXACT_NO_ENTRY,
            Ok(REPLY6) => REPLY6,
            other => return verdict(&ctx, other),
        };
        // The control block survives the tail call: it tells the rest
        // whether the first look found no conntrack entry.
        ctx.cb_mut()[CB_FIRST_LOOK] = rest as u32;
    }
    tail_call(&ctx, tc_call::INGRESS6_REST)
}

/// IPv6, leaving a pod, after the first look: `LB_TC_CALLS[tc_call::INGRESS6_REST]`.
/// The path runs in functions of their own (BPF-to-BPF calls), one after
/// the other, so that their frames never add up: the exact path
/// ([`ingress6`]) and a reject ([`reject6`]), or an ICMPv6 error
/// ([`icmp6_error`]).
#[classifier]
pub fn lb_tc_ingress6_rest(ctx: TcContext) -> i32 {
    if is_icmp6(&ctx) {
        // A pod's error about a reply it got from a frontend.
        return verdict(&ctx, icmp6_error(ctx.skb.skb, CT_SERVICE));
    }
    let first_look = ctx.cb()[CB_FIRST_LOOK];
    if first_look == REPLY6 as u32 {
        return route::redirect_reply6(ctx.skb.skb);
    }
    let no_entry = first_look == EXACT_NO_ENTRY as u32;
    let result = match ingress6(ctx.skb.skb, no_entry) {
        Ok(REJECT) => reject6(ctx.skb.skb),
        other => other,
    };
    verdict(&ctx, result)
}

/// The word of the skb's control block where `lb_tc_ingress6` leaves
/// `lb_tc_ingress6_rest` the first look's answer ([`EXACT`] or
/// [`EXACT_NO_ENTRY`]).
const CB_FIRST_LOOK: usize = 0;

/// IPv6, on its way to a client: `LB_TC_CALLS[tc_call::EGRESS6]`. The
/// reverse translation runs in the program itself (as a function of its
/// own, every reply paid a call and a return); an ICMPv6 error goes on to
/// [`lb_tc_egress6_icmp`] by a tail call, as `icmp6_error`'s frame (408
/// bytes) and this program's (264) exceed the verifier's 512 together.
#[classifier]
pub fn lb_tc_egress6(ctx: TcContext) -> i32 {
    if is_icmp6(&ctx) {
        return tail_call(&ctx, tc_call::EGRESS6_ICMP);
    }
    verdict(&ctx, egress6(ctx.skb.skb))
}

/// IPv6, an ICMPv6 error on its way to a client (about a packet the client
/// sent to a frontend): `LB_TC_CALLS[tc_call::EGRESS6_ICMP]`.
#[classifier]
pub fn lb_tc_egress6_icmp(ctx: TcContext) -> i32 {
    verdict(&ctx, icmp6_error(ctx.skb.skb, lb_common::CT_REPLY))
}

/// Whether an IPv6 frame carries ICMPv6 right after its fixed header.
/// ICMPv6 is recognised here, before the path, and not by `parse6`: one
/// more branch there grew the IPv6 path's frame past the verifier's limit.
/// (So an ICMPv6 error behind extension headers passes untouched; the
/// kernel sends its own without any.)
#[inline(always)]
fn is_icmp6(ctx: &TcContext) -> bool {
    read::<TcContext, u8>(ctx, ETH_HLEN + ip6::NEXT_HEADER) == Some(IPPROTO_ICMPV6)
}

/// Continues in the program at `slot` of `LB_TC_CALLS`. Returns only when
/// the slot is empty (no agent filled it: counted, the packet passes).
#[inline(always)]
fn tail_call(ctx: &TcContext, slot: u32) -> i32 {
    // SAFETY: the slot holds a tc program of this object (or nothing: the
    // call returns); the context is this program's.
    unsafe { LB_TC_CALLS.tail_call(ctx, slot) };
    stats::count(stat::TAIL_CALL_FAILED);
    NEXT
}

/// Whether the frame carries IPv6 (the Ethernet header is always in the
/// linear part).
#[inline(always)]
pub(crate) fn is_ipv6(ctx: &TcContext) -> bool {
    read::<TcContext, u16>(ctx, eth::ETHERTYPE.start) == Some(ETH_P_IPV6.to_be())
}

/// An ICMPv6 error travelling in direction `dir` of a translated flow.
/// From a pod (`CT_SERVICE`), only one sent to a frontend address.
#[inline(never)]
fn icmp6_error(skb: *mut __sk_buff, dir: u8) -> Result<i32, Error> {
    let ctx = &TcContext::new(skb);
    if config().is_none() {
        return Ok(NEXT);
    }
    let slot = if dir == CT_SERVICE { scratch::TC_INGRESS } else { scratch::TC_EGRESS };
    let Some(s) = scratch::get(slot) else {
        return Ok(NEXT);
    };
    pull(ctx, MAX_ICMP6_ERROR)?;
    let Some(err) = icmp6_error_at(ctx, ETH_HLEN + IPV6_HLEN, &mut s.err) else {
        return Ok(NEXT);
    };
    if dir == CT_SERVICE && !V6::is_frontend(err.daddr) {
        return Ok(NEXT);
    }
    nat::translate_icmp_error(ctx, err, dir)?;
    Ok(NEXT)
}

/// The ICMPv6 reject the IPv6 path asked for ([`REJECT`]).
#[inline(never)]
fn reject6(skb: *mut __sk_buff) -> Result<i32, Error> {
    icmp::tc_reject6(&TcContext::new(skb), now_ns()).ok_or(Error::Rewrite)
}

/// An external interface's ingress, attached with BPF host routing only
/// (`lb-agent run --host-routing bpf`): a north-south packet that
/// `lb_xdp` DNATed to a backend on this node goes straight into the
/// backend's pod (`route::from_outside4`, `route::from_outside6`), and
/// so does an ICMP error about such a flow; anything else (no mark in
/// front of it: the cost of one comparison) passes.
///
/// On a kernel that refuses XDP programs the metadata helper, nothing is
/// marked (`route::xdp_marks`): every packet is looked up instead
/// ([`from_outside`] with [`Mark::Unmarked`]).
#[classifier]
pub fn lb_tc_ext_ingress(ctx: TcContext) -> i32 {
    if !route::xdp_marks() {
        return verdict(&ctx, from_outside(&ctx, Mark::Unmarked));
    }
    match route::xdp_mark(&ctx) {
        XDP_META_LOCAL_DNAT => verdict(&ctx, from_outside(&ctx, Mark::LocalDnat)),
        XDP_META_LOCAL_ICMP => icmp_error_from_outside(&ctx),
        _ => NEXT,
    }
}

/// [`from_outside`] of an unmarked ICMPv6 packet, in a frame of its own
/// (the error's parse needs the scratch and a longer pull).
#[inline(never)]
fn icmp6_error_unmarked(skb: *mut __sk_buff) -> i32 {
    let ctx = &TcContext::new(skb);
    let Some(s) = scratch::get(scratch::TC_INGRESS) else {
        return NEXT;
    };
    if pull(ctx, MAX_ICMP6_ERROR).is_err() {
        return NEXT;
    }
    match icmp6_error_at(ctx, ETH_HLEN + IPV6_HLEN, &mut s.err) {
        Some(err) if host_routed::<V6>(&err.quoted) => icmp_error_from_outside(ctx),
        _ => NEXT,
    }
}

/// Whether the packet an ICMP error quotes, as `lb_xdp` translated it (a
/// backend's reply to a client), belongs to a host-routed flow: its reply
/// entry is marked `HOST_ROUTED`.
#[inline(always)]
fn host_routed<F: FamilyMaps>(q: &Quoted<F>) -> bool {
    let key = CtKey::<F>::new(q.saddr, q.daddr, q.sport, q.dport, q.proto, lb_common::CT_REPLY);
    ct::get::<F>(&key).is_some_and(|e| ct::marked(e, ct_entry_flags::HOST_ROUTED))
}

/// An ICMP error `lb_xdp` translated towards a backend on this node about
/// a host-routed flow: into the backend's pod as a translated packet goes
/// (its addresses are the flow's now); through the stack the host's
/// conntrack, which never saw the flow, would call it INVALID.
#[inline(always)]
pub(crate) fn icmp_error_from_outside(ctx: &TcContext) -> i32 {
    if is_ipv6(ctx) {
        return route::redirect_translated6(ctx.skb.skb, IPPROTO_ICMPV6 as u64);
    }
    let (Some(saddr), Some(daddr)) = (read::<_, u32>(ctx, ETH_HLEN + ip::SADDR.start), read::<_, u32>(ctx, ETH_HLEN + ip::DADDR.start))
    else {
        return NEXT;
    };
    route::redirect_translated(ctx.skb.skb, saddr as u64 | (daddr as u64) << 32, IPPROTO_ICMP as u64)
}

/// What `lb_tc_ext_ingress` knows of a packet from outside it sends
/// into a pod when it can (a constant at each call site).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// DNATed to a backend on this node (`XDP_META_LOCAL_DNAT`, or
    /// `lb_tc_ns`'s own hand-over): only its flow's entry is looked up.
    LocalDnat,
    /// Nothing: on a kernel that refuses XDP programs the metadata helper
    /// (`route::xdp_marks`), every packet. One whose flow has a reply
    /// entry in conntrack is one `lb_xdp` DNATed to a backend here (only
    /// lb's translations make reply entries, and none but a north-south
    /// flow's has an outside source and a destination on this node), and
    /// goes on as a marked one; an ICMP error `lb_xdp` translated about a
    /// `HOST_ROUTED` flow ([`host_routed`]) goes in as
    /// [`icmp_error_from_outside`] sends a marked one. What passes paid
    /// the parse and a lookup: the price of BPF host routing of
    /// north-south traffic on such a kernel (`--xdp-mode tc` does not pay
    /// it).
    Unmarked,
}

#[inline(always)]
pub(crate) fn from_outside(ctx: &TcContext, mark: Mark) -> Result<i32, Error> {
    if is_ipv6(ctx) {
        if mark == Mark::Unmarked && is_icmp6(ctx) {
            return Ok(icmp6_error_unmarked(ctx.skb.skb));
        }
        let Some(s) = scratch::get(scratch::TC_INGRESS) else {
            return Ok(NEXT);
        };
        pull(ctx, MAX_HEADERS6)?;
        return match parse6(ctx, &mut s.flow)? {
            Some(f) if f.frag == Fragment::No => route::from_outside6(ctx, f),
            _ => Ok(NEXT),
        };
    }
    pull(ctx, MAX_HEADERS)?;
    match parse(ctx)? {
        Packet::Flow(f) if f.frag == Fragment::No => {
            let addrs = f.saddr as u64 | (f.daddr as u64) << 32;
            let l4 = f.proto as u64 | (f.sport as u64) << 16 | (f.dport as u64) << 32;
            Ok(route::from_outside4(ctx.skb.skb, addrs, l4))
        }
        Packet::IcmpError(err) if mark == Mark::Unmarked && host_routed::<V4>(&err.quoted) => Ok(icmp_error_from_outside(ctx)),
        _ => Ok(NEXT),
    }
}

#[classifier]
pub fn lb_tc_pass(_ctx: TcContext) -> i32 {
    NEXT
}

/// Headers we may read: Ethernet, IPv4 with options, a TCP header (an ICMP
/// error with its quote is shorter).
pub(crate) const MAX_HEADERS: usize = ETH_HLEN + 60 + TCP_HLEN;

/// The IPv6 extension headers pulled into the linear part (most are 8 or
/// 16 bytes; a longer chain is read from the linear part only if it is
/// there).
const EXT_HEADERS6: usize = 64;

/// IPv6: Ethernet, the fixed header, extension headers, a TCP header.
const MAX_HEADERS6: usize = ETH_HLEN + IPV6_HLEN + EXT_HEADERS6 + TCP_HLEN;

/// An ICMPv6 error: Ethernet, IPv6, ICMPv6, the quoted IPv6 header, its
/// extension headers (as many as a packet's) and a fragment header, and
/// the quoted TCP header (the UDP one is shorter).
pub(crate) const MAX_ICMP6_ERROR: usize = ETH_HLEN + IPV6_HLEN + ICMP_HLEN + IPV6_HLEN + EXT_HEADERS6 + FRAG6_HLEN + TCP_HLEN;

/// Headers may sit in paged data on some drivers: pull up to `max` bytes
/// into the linear part, only when they are not there already.
#[inline(always)]
pub(crate) fn pull(ctx: &TcContext, max: usize) -> Result<(), Error> {
    let linear = (ctx.data_end() - ctx.data()) as u32;
    let len = ctx.len();
    if linear < max as u32 && linear < len {
        let want = if len < max as u32 { len } else { max as u32 };
        ctx.pull_data(want).map_err(|_| Error::Malformed)?;
    }
    Ok(())
}

#[inline(always)]
fn try_ingress(ctx: &TcContext) -> Result<i32, Error> {
    let Some(cfg) = config() else {
        return Ok(NEXT);
    };
    pull(ctx, MAX_HEADERS)?;
    match parse(ctx)? {
        Packet::Flow(mut f) => ingress_flow(ctx, &cfg, &mut f, Stage::Whole),
        // A pod's error about a reply it got from a frontend (the
        // pre-filter first: most ICMP errors pods send are about others).
        Packet::IcmpError(err) if V4::is_frontend(err.daddr) => translate_icmp_error(ctx, &err, CT_SERVICE),
        _ => Ok(NEXT),
    }
}

/// [`try_ingress`] for IPv6, the rest ([`Stage::Exact`]).
#[inline(never)]
fn ingress6(skb: *mut __sk_buff, no_entry: bool) -> Result<i32, Error> {
    ingress6_stage(skb, Stage::Exact { no_entry })
}

#[inline(always)]
fn ingress6_stage(skb: *mut __sk_buff, stage: Stage) -> Result<i32, Error> {
    let ctx = &TcContext::new(skb);
    let Some(cfg) = config() else {
        return Ok(NEXT);
    };
    let Some(s) = scratch::get(scratch::TC_INGRESS) else {
        return Ok(NEXT);
    };
    let f = if let Stage::Exact { .. } = stage {
        // SAFETY: the first look (`lb_tc_ingress6`) parsed the flow into
        // this CPU's slot on this run: the exact path follows its `EXACT`
        // answers only, by a tail call, which keeps the CPU.
        unsafe { s.flow.assume_init_mut() }
    } else {
        pull(ctx, MAX_HEADERS6)?;
        match parse6(ctx, &mut s.flow)? {
            Some(f) => f,
            None => return Ok(NEXT),
        }
    };
    ingress_flow(ctx, &cfg, f, stage)
}

/// Which part of the path from a pod a call runs (a constant at each call
/// site). IPv4 runs it whole. IPv6 runs it in two programs, the second
/// tail-called when the first answers [`EXACT`] ([`lb_tc_ingress6`], then
/// [`ingress6`] in [`lb_tc_ingress6_rest`]): the verifier forced this, as
/// one call chain its frames grew past 512 bytes (keys and entries, and
/// the four-word addresses spilled across helper calls). The flow is
/// parsed once, into the per-CPU scratch (`scratch::TC_INGRESS`), where
/// the exact path finds it; an established flow never gets there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Whole,
    /// The pre-filter and conntrack ([`established`]); [`EXACT`] or
    /// [`EXACT_NO_ENTRY`] for the rest.
    First,
    /// The rest: frontend address first, then conntrack (unless the first
    /// look found `no_entry`).
    Exact {
        no_entry: bool,
    },
}

/// A flow leaving a pod: a reply of a hairpin flow, or a packet to a
/// frontend address. A packet to an address the pre-filter has no kind
/// for (pod to pod, or anywhere outside) leaves after one array load: no
/// hash lookup, no clock read, no conntrack (with BPF host routing, one
/// conntrack lookup: it may be a backend's reply, `route`).
#[inline(always)]
fn ingress_flow<F: TcFamily>(ctx: &TcContext, cfg: &Config, f: &mut Flow<F>, stage: Stage) -> Result<i32, Error> {
    F::keep_in_memory(f);
    if F::hairpin_addr() == Some(f.daddr) {
        return hairpin_reply(ctx, f);
    }
    // (The exact path follows a first look that passed the pre-filter.)
    if !matches!(stage, Stage::Exact { .. }) && !F::may_be_frontend(f.daddr) {
        ct::forget_ended_reply(cfg, f);
        return F::deliver_reply(ctx, cfg, f);
    }
    let first = match stage {
        Stage::Exact { no_entry: true } => ControlFlow::Continue(Some(None)),
        Stage::Exact { no_entry: false } => ControlFlow::Continue(None),
        Stage::Whole | Stage::First => established(cfg, f),
    };
    let flow = match first {
        ControlFlow::Break(entry) => ControlFlow::Continue((entry, false)),
        ControlFlow::Continue(Some(None)) if stage == Stage::First => return Ok(EXACT_NO_ENTRY),
        ControlFlow::Continue(_) if stage == Stage::First => return Ok(EXACT),
        ControlFlow::Continue(found) => forward(ctx, cfg, f, found)?,
    };
    match flow {
        ControlFlow::Continue((entry, new)) => translated(ctx, cfg, f, &entry, new),
        ControlFlow::Break(verdict) => Ok(verdict),
    }
}

#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<i32, Error> {
    if config().is_none() {
        return Ok(NEXT);
    }
    pull(ctx, MAX_HEADERS)?;
    match parse(ctx)? {
        Packet::Flow(mut f) => reply(ctx, &mut f),
        Packet::IcmpError(err) => translate_icmp_error(ctx, &err, lb_common::CT_REPLY),
        _ => Ok(NEXT),
    }
}

/// [`try_egress`] for IPv6, inlined into `lb_tc_egress6`.
#[inline(always)]
fn egress6(skb: *mut __sk_buff) -> Result<i32, Error> {
    let ctx = &TcContext::new(skb);
    if config().is_none() {
        return Ok(NEXT);
    }
    let Some(s) = scratch::get(scratch::TC_EGRESS) else {
        return Ok(NEXT);
    };
    pull(ctx, MAX_HEADERS6)?;
    match parse6(ctx, &mut s.flow)? {
        Some(f) => reply(ctx, f),
        None => Ok(NEXT),
    }
}

/// A packet on its way to a client: a reply of a translated flow gets
/// the frontend back.
#[inline(always)]
fn reply<F: TcFamily>(ctx: &TcContext, f: &mut Flow<F>) -> Result<i32, Error> {
    F::keep_in_memory(f);
    reverse(ctx, f)?;
    Ok(NEXT)
}

/// Translates a reply of a flow in conntrack back (a later fragment takes
/// its first fragment's ports); `false` when `f` is no such reply.
#[inline(always)]
fn reverse<F: TcFamily>(ctx: &TcContext, f: &mut Flow<F>) -> Result<bool, Error> {
    if !frag::ports(f) {
        return Ok(false);
    }
    let Some((entry, _)) = ct::reply(f) else {
        return Ok(false);
    };
    frag::record(f);
    nat::translate(ctx, f, &entry)?;
    Ok(true)
}

/// An established flow whose forward entry this program made
/// (`ct_entry_flags::FROM_POD`), followed without `LB4_VIPS` or
/// `LB6_VIPS`: the entry was made for a frontend at this address and
/// port, and its version check (`ct::forward_usable`) ends it when that
/// frontend or its backend goes. `Break`: the flow's entry, the packet
/// recorded in it. `Continue`: the exact path's turn ([`forward`]), with
/// what conntrack
/// holds for the flow (`None`: not looked up, a later fragment, whose
/// ports come from its first fragment): no entry, an entry another program
/// made, one no longer usable.
#[inline(always)]
fn established<F: TcFamily>(cfg: &Config, f: &Flow<F>) -> ControlFlow<Ct<F>, Option<Option<*mut Ct<F>>>> {
    if f.frag == Fragment::Later {
        return ControlFlow::Continue(None);
    }
    let found = ct::find_forward(f);
    let Some(e) = found else {
        return ControlFlow::Continue(Some(None));
    };
    if !ct::marked(e, ct_entry_flags::FROM_POD) {
        return ControlFlow::Continue(Some(found));
    }
    match ct::follow(cfg, f, found, now_ns()) {
        Forward::Flow(entry) => ControlFlow::Break(entry),
        Forward::New { .. } => ControlFlow::Continue(Some(found)),
    }
}

/// Client -> frontend, once [`established`] left the packet (with what it
/// `found` in conntrack; `None`: to look up): the frontend address, then
/// the flow's entry (and whether it is new), or the packet's verdict.
#[inline(always)]
fn forward<F: TcFamily>(
    ctx: &TcContext,
    cfg: &Config,
    f: &mut Flow<F>,
    found: Option<Option<*mut Ct<F>>>,
) -> Result<ControlFlow<i32, (Ct<F>, bool)>, Error> {
    let Some(vip) = F::vip(f.daddr) else {
        return Ok(ControlFlow::Break(NEXT));
    };
    if !frag::ports(f) {
        return Ok(ControlFlow::Break(orphan_fragment(&vip)));
    }
    let now = now_ns();
    let forward = match found {
        Some(found) => ct::follow(cfg, f, found, now),
        None => ct::forward(cfg, f, now),
    };
    Ok(match forward {
        Forward::Flow(e) => ControlFlow::Continue((e, false)),
        // The datagram's first fragment made the flow; it is gone.
        Forward::New { .. } if f.frag == Fragment::Later => ControlFlow::Break(orphan_fragment(&vip)),
        Forward::New { replace } => match new_flow(ctx, cfg, &vip, f, now, replace)? {
            ControlFlow::Continue(e) => ControlFlow::Continue((e, true)),
            ControlFlow::Break(verdict) => ControlFlow::Break(verdict),
        },
    })
}

/// A packet of a flow towards a frontend, counted and rewritten as its
/// forward entry says (a `new` flow's first).
#[inline(always)]
fn translated<F: TcFamily>(ctx: &TcContext, cfg: &Config, f: &Flow<F>, entry: &Ct<F>, new: bool) -> Result<i32, Error> {
    stats::frontend_packet(entry.frontend_id, ctx.len(), new);
    frag::record(f);
    nat::translate(ctx, f, entry)?;
    if F::hairpin_addr() == Some(entry.nat_saddr) {
        return bounce(ctx);
    }
    F::deliver(ctx, cfg, f, entry)
}

/// A new flow to the frontend at `f`'s destination, or the verdict for a
/// packet that gets none (passed, rejected or dropped).
#[inline(always)]
fn new_flow<F: TcFamily>(
    ctx: &TcContext,
    cfg: &Config,
    vip: &Vip4,
    f: &Flow<F>,
    now: u64,
    replace: bool,
) -> Result<ControlFlow<i32, Ct<F>>, Error> {
    let Some(svc) = F::service(f.daddr, f.dport, f.proto) else {
        // A ClusterIP on a port no Service defines: never let it follow
        // the default route (kube-proxy's nftables mode rejects it too).
        if vip.flags & vip_flags::CLUSTER_IP != 0 {
            stats::count(stat::REJECT_UNSERVED_PORT);
            return Ok(ControlFlow::Break(F::reject(ctx, f, now)?));
        }
        return Ok(ControlFlow::Break(NEXT));
    };
    // loadBalancerSourceRanges bind pods too (PREROUTING, for kube-proxy).
    if F::source_refused(&svc, f.saddr) {
        return Ok(ControlFlow::Break(SHOT));
    }
    if svc.count == 0 {
        // A Local traffic policy with no endpoint on this node drops, as
        // kube-proxy does; no endpoint at all rejects.
        if svc.flags & (svc_flags::INT_LOCAL | svc_flags::EXT_LOCAL) != 0 {
            stats::count(stat::DROP_NO_LOCAL_BACKEND);
            return Ok(ControlFlow::Break(SHOT));
        }
        stats::count(stat::REJECT_NO_BACKEND);
        debug!(ctx, "lb_tc: no backend for frontend {} (port {}), rejecting", svc.frontend_id, u16::from_be(f.dport));
        return Ok(ControlFlow::Break(F::reject(ctx, f, now)?));
    }
    let (backend_id, backend) = flow_backend(cfg, &svc, f, now).ok_or(Error::NoSlot)?;
    let source = match F::backend_addr(&backend) {
        Some((addr, _)) if F::hairpin_addr().is_some() && addr == f.saddr => {
            stats::count(stat::HAIRPIN);
            Source::Hairpin
        }
        _ => Source::Client,
    };
    let new = NewFlow { frontend_id: svc.frontend_id, backend_id, backend, source, ports: ct::nat_ports(node_config()) };
    // Marked: its next packets need no `LB4_VIPS` lookup (`forward`).
    Ok(ControlFlow::Continue(ct::create_marked(cfg, f, &new, now, replace, ct_entry_flags::FROM_POD)?))
}

/// A later fragment whose first fragment was not seen (see
/// `frag::orphan_dropped`).
#[inline(always)]
fn orphan_fragment(vip: &Vip4) -> i32 {
    if frag::orphan_dropped(vip) { SHOT } else { NEXT }
}

/// A reply of a hairpin flow (the pod answering itself): both translations
/// reversed, and straight back to the pod.
#[inline(always)]
fn hairpin_reply<F: TcFamily>(ctx: &TcContext, f: &mut Flow<F>) -> Result<i32, Error> {
    if reverse(ctx, f)? { bounce(ctx) } else { Ok(NEXT) }
}

/// Sends the packet back out of the interface it came in on, towards the
/// pod that sent it, without routing: the hairpin address is not routable,
/// and the pod's address arriving from its own interface would be a
/// martian.
#[inline(always)]
fn bounce(ctx: &TcContext) -> Result<i32, Error> {
    let macs: [u8; 12] = read(ctx, eth::ADDRS.start).ok_or(Error::Rewrite)?;
    write(ctx, eth::ADDRS.start, swapped_macs(&macs)).ok_or(Error::Rewrite)?;
    Ok(redirect_back(ctx))
}

/// An ICMP error travelling in direction `dir` of a translated flow.
#[inline(always)]
fn translate_icmp_error(ctx: &TcContext, err: &IcmpError, dir: u8) -> Result<i32, Error> {
    nat::translate_icmp_error(ctx, err, dir)?;
    Ok(NEXT)
}
