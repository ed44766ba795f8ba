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

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_redirect,
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use lb_common::{
    CT_REPLY, CT_SERVICE, Config, CtEntry, Vip4, hairpin_addr,
    hash::flow_hash,
    packet::{ETH_HLEN, Fragment, IPV4_HLEN, TCP_HLEN},
    stat, svc_flags, vip_flags,
};

use crate::{
    ct::{self, NewFlowError, Source},
    frag, icmp, nat,
    packet::{read, write},
    parse::{Flow, IcmpError, Malformed, Packet, parse},
    select::{config, node_config, now_ns, select_backend, service, vip},
    stats,
};

const NEXT: i32 = TC_ACT_UNSPEC;
const SHOT: i32 = TC_ACT_SHOT as i32;

/// SNAT/clash source ports when the agent has not written `LB_NODE`.
pub const DEFAULT_NAT_PORTS: (u16, u16) = (61_000, 65_535);

enum Error {
    /// Not ours to judge: passes untouched.
    Malformed,
    /// A packet write failed half-way: never let it out.
    Rewrite,
    /// A conntrack write failed.
    CtWrite,
    /// No free source port for a new flow.
    NoPort,
    /// A backend slot vanished under a concurrent update.
    NoSlot,
}

impl From<Malformed> for Error {
    fn from(_: Malformed) -> Self {
        Error::Malformed
    }
}

impl From<NewFlowError> for Error {
    fn from(e: NewFlowError) -> Self {
        match e {
            NewFlowError::NoPort => Error::NoPort,
            NewFlowError::Write => Error::CtWrite,
        }
    }
}

#[inline(always)]
fn verdict(ctx: &TcContext, result: Result<i32, Error>) -> i32 {
    let (reason, what) = match result {
        Ok(v) => return v,
        Err(Error::Malformed) => return NEXT,
        Err(Error::Rewrite) => (stat::DROP_REWRITE, "translation failed"),
        Err(Error::CtWrite) => (stat::DROP_CT_WRITE, "conntrack write failed"),
        Err(Error::NoPort) => (stat::DROP_NO_NAT_PORT, "no free source port"),
        Err(Error::NoSlot) => (stat::DROP_NO_SLOT, "backend slot missing"),
    };
    stats::count(reason);
    debug!(ctx, "lb_tc: {}, packet dropped", what);
    SHOT
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
            if f.frag == Fragment::Later && !frag::lend_ports(&mut f) {
                return Ok(NEXT);
            }
            let key = ct::key_of(&f, CT_REPLY);
            let Some(e) = ct::get(&key) else {
                return Ok(NEXT);
            };
            ct::seen(&key, e, &f, now_ns());
            let entry = ct::load(e);
            frag::record(&f);
            translate(ctx, &f, &entry)?;
            Ok(NEXT)
        }
        Packet::IcmpError(err) => translate_icmp_error(ctx, &err, CT_REPLY),
        _ => Ok(NEXT),
    }
}

/// Client -> frontend: the flow's backend from conntrack, or a new flow.
#[inline(always)]
fn forward(ctx: &TcContext, cfg: &Config, vip: Vip4, mut f: Flow) -> Result<i32, Error> {
    if f.frag == Fragment::Later && !frag::lend_ports(&mut f) {
        return Ok(orphan_fragment(vip));
    }
    let now = now_ns();
    let key = ct::key_of(&f, CT_SERVICE);
    let mut replace = false;
    let mut entry = None;
    if let Some(e) = ct::get(&key) {
        let current = ct::load(e);
        if ct::forward_usable(cfg, f.proto, &current, f.tcp_flags, now) {
            ct::seen(&key, e, &f, now);
            entry = Some(current);
        } else {
            replace = true;
        }
    }
    let entry = match entry {
        Some(e) => e,
        // The datagram's first fragment made the flow; it is gone.
        None if f.frag == Fragment::Later => return Ok(orphan_fragment(vip)),
        None => match new_flow(ctx, cfg, vip, &f, now, replace)? {
            Ok(e) => e,
            Err(verdict) => return Ok(verdict),
        },
    };
    frag::record(&f);
    translate(ctx, &f, &entry)?;
    if entry.nat_saddr == hairpin_addr() {
        return bounce(ctx);
    }
    Ok(NEXT)
}

/// A new flow to the frontend at `f`'s destination, or the verdict for a
/// packet that gets none (passed, rejected or dropped).
#[inline(always)]
fn new_flow(ctx: &TcContext, cfg: &Config, vip: Vip4, f: &Flow, now: u64, replace: bool) -> Result<Result<CtEntry, i32>, Error> {
    let Some(svc) = service(f.daddr, f.dport, f.proto) else {
        // A ClusterIP on a port no Service defines: never let it follow
        // the default route (kube-proxy's nftables mode rejects it too).
        if vip.flags & vip_flags::CLUSTER_IP != 0 {
            stats::count(stat::REJECT_UNSERVED_PORT);
            return Ok(Err(reject(ctx, f, now)?));
        }
        return Ok(Err(NEXT));
    };
    if svc.count == 0 {
        // A Local traffic policy with no endpoint on this node drops, as
        // kube-proxy does; no endpoint at all rejects.
        if svc.flags & (svc_flags::INT_LOCAL | svc_flags::EXT_LOCAL) != 0 {
            stats::count(stat::DROP_NO_LOCAL_BACKEND);
            return Ok(Err(SHOT));
        }
        stats::count(stat::REJECT_NO_BACKEND);
        debug!(ctx, "lb_tc: no backend for {:i}:{}, rejecting", u32::from_be(f.daddr), u16::from_be(f.dport));
        return Ok(Err(reject(ctx, f, now)?));
    }
    let hash = flow_hash(f.saddr, f.daddr, f.sport, f.dport, f.proto);
    let (be_id, be) = select_backend(cfg, &svc, hash, f.saddr as u64, now).ok_or(Error::NoSlot)?;
    let source = if be.addr == f.saddr {
        stats::count(stat::HAIRPIN);
        Source::Hairpin
    } else {
        Source::Client
    };
    let ports = node_config().map_or(DEFAULT_NAT_PORTS, |n| (n.nat_port_min, n.nat_port_max));
    Ok(Ok(ct::create(cfg, svc.id, f, be_id, &be, source, ports, now, replace)?))
}

/// A later fragment whose first fragment was not seen: dropped where the
/// address belongs to Services alone (routing it on untranslated would
/// send it who knows where), passed elsewhere (a node address has other
/// traffic).
#[inline(always)]
fn orphan_fragment(vip: Vip4) -> i32 {
    if vip.flags & vip_flags::VIRTUAL != 0 {
        stats::count(stat::DROP_ORPHAN_FRAGMENT);
        SHOT
    } else {
        NEXT
    }
}

#[inline(always)]
fn translate(ctx: &TcContext, f: &Flow, e: &CtEntry) -> Result<(), Error> {
    nat::apply(ctx, f, e).ok_or(Error::Rewrite)?;
    if f.frag == Fragment::Later {
        stats::count(stat::FRAGMENT_TRANSLATED);
    }
    Ok(())
}

/// A reply of a hairpin flow (the pod answering itself): both translations
/// reversed, and straight back to the pod.
#[inline(always)]
fn hairpin_reply(ctx: &TcContext, mut f: Flow) -> Result<i32, Error> {
    if f.frag == Fragment::Later && !frag::lend_ports(&mut f) {
        return Ok(NEXT);
    }
    let key = ct::key_of(&f, CT_REPLY);
    let Some(e) = ct::get(&key) else {
        return Ok(NEXT);
    };
    ct::seen(&key, e, &f, now_ns());
    let entry = ct::load(e);
    frag::record(&f);
    translate(ctx, &f, &entry)?;
    bounce(ctx)
}

/// Sends the packet back out of the interface it came in on, towards the
/// pod that sent it, without routing: the hairpin address is not routable,
/// and the pod's address arriving from its own interface would be a
/// martian.
#[inline(always)]
fn bounce(ctx: &TcContext) -> Result<i32, Error> {
    let macs: [u8; 12] = read(ctx, 0).ok_or(Error::Rewrite)?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    write(ctx, 0, swapped).ok_or(Error::Rewrite)?;
    // SAFETY: reading the context's ifindex field.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
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
    let key = nat::icmp_error_key(err, dir);
    let Some(e) = ct::get(&key) else {
        return Ok(NEXT);
    };
    let entry = ct::load(e);
    nat::rewrite_icmp_error(ctx, err, &entry).ok_or(Error::Rewrite)?;
    stats::count(stat::ICMP_TRANSLATED);
    Ok(NEXT)
}
