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
//! - `lb_tc_pass` lets everything through (a floor for measurements, and a
//!   stand-in for a program another agent attaches after lb).
//!
//! Whatever passes returns `TC_ACT_UNSPEC`, tcx's "next": programs attached
//! after lb (by a CNI, say) still see the packet.

use core::ops::ControlFlow;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use lb_common::{
    CT_SERVICE, Config, CtEntry, Vip4, hairpin_addr,
    packet::{ETH_HLEN, Fragment, IPV4_HLEN, TCP_HLEN, eth, swapped_macs},
    stat, svc_flags, vip_flags,
};

use crate::{
    ct::{self, Forward, NewFlow, Source},
    error::Error,
    frag, icmp, nat,
    packet::{read, redirect_back, write},
    parse::{Flow, IcmpError, Packet, parse},
    select::{config, flow_backend, in_cluster_service, node_config, now_ns, vip},
    stats,
};

const NEXT: i32 = TC_ACT_UNSPEC;
const SHOT: i32 = TC_ACT_SHOT;

#[inline(always)]
fn verdict(ctx: &TcContext, result: Result<i32, Error>) -> i32 {
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

#[classifier]
pub fn lb_tc_ingress(ctx: TcContext) -> i32 {
    verdict(&ctx, try_ingress(&ctx))
}

#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    verdict(&ctx, try_egress(&ctx))
}

#[classifier]
pub fn lb_tc_pass(_ctx: TcContext) -> i32 {
    NEXT
}

/// Headers we may read: Ethernet, IPv4 with options, a TCP header (an ICMP
/// error with its quote is shorter).
const MAX_HEADERS: usize = ETH_HLEN + 60 + TCP_HLEN;

/// Headers may sit in paged data on some drivers: pull them into the
/// linear part, only when they are not there already.
#[inline(always)]
fn pull(ctx: &TcContext) -> Result<(), Error> {
    let linear = (ctx.data_end() - ctx.data()) as u32;
    let len = ctx.len();
    if linear < MAX_HEADERS as u32 && linear < len {
        let want = if len < MAX_HEADERS as u32 { len } else { MAX_HEADERS as u32 };
        ctx.pull_data(want).map_err(|_| Error::Malformed)?;
    }
    Ok(())
}

#[inline(always)]
fn try_ingress(ctx: &TcContext) -> Result<i32, Error> {
    let Some(cfg) = config() else {
        return Ok(NEXT);
    };
    pull(ctx)?;
    match parse(ctx)? {
        Packet::Flow(f) => {
            if f.daddr == hairpin_addr() {
                return hairpin_reply(ctx, f);
            }
            match vip(f.daddr) {
                Some(v) => forward(ctx, &cfg, v, f),
                None => Ok(NEXT),
            }
        }
        // A pod's error about a reply it got from a frontend.
        Packet::IcmpError(err) if vip(err.daddr).is_some() => translate_icmp_error(ctx, &err, CT_SERVICE),
        _ => Ok(NEXT),
    }
}

#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<i32, Error> {
    if config().is_none() {
        return Ok(NEXT);
    }
    pull(ctx)?;
    match parse(ctx)? {
        Packet::Flow(mut f) => {
            if !frag::ports(&mut f) {
                return Ok(NEXT);
            }
            let Some((entry, _)) = ct::reply(&f) else {
                return Ok(NEXT);
            };
            frag::record(&f);
            nat::translate(ctx, &f, &entry)?;
            Ok(NEXT)
        }
        Packet::IcmpError(err) => translate_icmp_error(ctx, &err, lb_common::CT_REPLY),
        _ => Ok(NEXT),
    }
}

/// Client -> frontend: the flow's backend from conntrack, or a new flow.
#[inline(always)]
fn forward(ctx: &TcContext, cfg: &Config, vip: Vip4, mut f: Flow) -> Result<i32, Error> {
    if !frag::ports(&mut f) {
        return Ok(orphan_fragment(&vip));
    }
    let now = now_ns();
    let (entry, new) = match ct::forward(cfg, &f, now) {
        Forward::Flow(e) => (e, false),
        // The datagram's first fragment made the flow; it is gone.
        Forward::New { .. } if f.frag == Fragment::Later => return Ok(orphan_fragment(&vip)),
        Forward::New { replace } => match new_flow(ctx, cfg, &vip, &f, now, replace)? {
            ControlFlow::Continue(e) => (e, true),
            ControlFlow::Break(verdict) => return Ok(verdict),
        },
    };
    stats::frontend_packet(entry.frontend_id, ctx.len(), new);
    frag::record(&f);
    nat::translate(ctx, &f, &entry)?;
    if entry.nat_saddr == hairpin_addr() {
        return bounce(ctx);
    }
    Ok(NEXT)
}

/// A new flow to the frontend at `f`'s destination, or the verdict for a
/// packet that gets none (passed, rejected or dropped).
#[inline(always)]
fn new_flow(ctx: &TcContext, cfg: &Config, vip: &Vip4, f: &Flow, now: u64, replace: bool) -> Result<ControlFlow<i32, CtEntry>, Error> {
    let Some(svc) = in_cluster_service(f.daddr, f.dport, f.proto) else {
        // A ClusterIP on a port no Service defines: never let it follow
        // the default route (kube-proxy's nftables mode rejects it too).
        if vip.flags & vip_flags::CLUSTER_IP != 0 {
            stats::count(stat::REJECT_UNSERVED_PORT);
            return Ok(ControlFlow::Break(reject(ctx, f, now)?));
        }
        return Ok(ControlFlow::Break(NEXT));
    };
    if svc.count == 0 {
        // A Local traffic policy with no endpoint on this node drops, as
        // kube-proxy does; no endpoint at all rejects.
        if svc.flags & (svc_flags::INT_LOCAL | svc_flags::EXT_LOCAL) != 0 {
            stats::count(stat::DROP_NO_LOCAL_BACKEND);
            return Ok(ControlFlow::Break(SHOT));
        }
        stats::count(stat::REJECT_NO_BACKEND);
        debug!(ctx, "lb_tc: no backend for {:i}:{}, rejecting", u32::from_be(f.daddr), u16::from_be(f.dport));
        return Ok(ControlFlow::Break(reject(ctx, f, now)?));
    }
    let (backend_id, backend) = flow_backend(cfg, &svc, f, now).ok_or(Error::NoSlot)?;
    let source = if backend.addr == f.saddr {
        stats::count(stat::HAIRPIN);
        Source::Hairpin
    } else {
        Source::Client
    };
    let new = NewFlow { frontend_id: svc.frontend_id, backend_id, backend, source, ports: ct::nat_ports(node_config()) };
    Ok(ControlFlow::Continue(ct::create(cfg, f, &new, now, replace)?))
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
fn hairpin_reply(ctx: &TcContext, mut f: Flow) -> Result<i32, Error> {
    if !frag::ports(&mut f) {
        return Ok(NEXT);
    }
    let Some((entry, _)) = ct::reply(&f) else {
        return Ok(NEXT);
    };
    frag::record(&f);
    nat::translate(ctx, &f, &entry)?;
    bounce(ctx)
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

/// ICMP port unreachable from the dialled address, within the client's
/// rate. Only for a packet with its L4 header and no IP options (the quote
/// covers a 20-byte header); others are dropped.
#[inline(always)]
fn reject(ctx: &TcContext, f: &Flow, now: u64) -> Result<i32, Error> {
    if f.l4_off != ETH_HLEN + IPV4_HLEN || !f.has_l4() {
        return Ok(SHOT);
    }
    icmp::tc_reject(ctx, f.saddr, now).ok_or(Error::Rewrite)
}

/// An ICMP error travelling in direction `dir` of a translated flow.
#[inline(always)]
fn translate_icmp_error(ctx: &TcContext, err: &IcmpError, dir: u8) -> Result<i32, Error> {
    nat::translate_icmp_error(ctx, err, dir)?;
    Ok(NEXT)
}
