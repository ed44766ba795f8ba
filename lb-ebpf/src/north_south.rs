//! North-south load balancing on the node's external interfaces' ingress,
//! written once over the hook it runs in ([`Edge`]): XDP (`xdp`: `lb_xdp`
//! and the programs it tail-calls) or, where XDP is not wanted, tc
//! (`tc_edge`: `lb_tc_ns` and its programs, `--xdp-mode tc`), as Cilium
//! serves NodePorts from `bpf_host` when XDP acceleration is off.
//!
//! The program sees every packet that arrives from outside the node. Its
//! first look, one array load of the pre-filter (`vip_filter`), leaves
//! everything not sent to a north-south frontend address alone, as well as
//! traffic to a node address outside the NodePort range; no hash lookup,
//! no clock read. An established flow then follows its conntrack entry,
//! which carries the whole rewrite: `LB4_VIPS` and `LB4_SERVICES` are
//! looked up only for a new flow (and for an entry this path did not
//! make, or a fragment without ports, which take the exact checks first).
//!
//! - To a north-south frontend (a NodePort on a node address, an external
//!   IP, a LoadBalancer ingress IP): an established flow follows its
//!   conntrack entry; a new one is checked against loadBalancerSourceRanges,
//!   gets a backend from `select_backend` (Maglev and affinity apply), and
//!   is recorded. A backend on this node (or `externalTrafficPolicy:
//!   Local`) gets the packet DNATed through the kernel (a pass), with
//!   the client's address intact; the replies are translated back by the tc
//!   program on this interface's egress. (With BPF host routing the packet
//!   goes straight into the backend's pod: `Edge::deliver_local`, `route`.)
//!   A backend on another node is reached by also SNATing to this node's
//!   address and a port of the SNAT range, and forwarding with
//!   `bpf_fib_lookup` (out of the same interface, or redirected to another
//!   one). A packet too big for that path is answered with "fragmentation
//!   needed" from the frontend.
//! - Replies to SNATed flows (backend -> node address:SNAT port): both
//!   translations are reversed and the packet forwarded to the client.
//! - ICMP errors about either (a router's "fragmentation needed" for a
//!   reply, say) are translated and sent where the flow goes.
//! - Fragments get their first fragment's translation (IPv6's too).
//! - Anything else passes untouched.
//!
//! When the FIB has no neighbour for the next hop yet, the translated
//! packet is handed to the kernel, which forwards it and resolves the
//! neighbour (the agent sets `accept_local` on the external interfaces so
//! that a packet from the node's own address is not dropped as martian).
//!
//! The path's verdicts are XDP's numbers in both hooks ([`PASS`],
//! [`DROP`], [`REDIRECT`]; `XDP_TX` from XDP); the tc programs turn them
//! into tc's at their end (`tc_edge`).

use core::{mem::MaybeUninit, ops::ControlFlow};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action},
};
use aya_log_ebpf::debug;
use lb_common::{
    Addr6, CT_REPLY, CT_SERVICE, Config, CtEntry, IPPROTO_ICMP, IPPROTO_ICMPV6, NodeConfig, Service4Value, V4, V6, Vip4,
    XDP_META_LOCAL_DNAT, XDP_META_LOCAL_ICMP, backend_flags, ct_entry_flags,
    packet::{ETH_HLEN, Fragment, IPV4_HLEN, IPV6_HLEN, icmp, icmp6, ip, ip6, is_icmp6_error},
    stat, svc_flags, vip_flags, xdp_call,
};

use crate::{
    clock::now_ns,
    ct::{self, Forward, NewFlow, Source},
    error::Error,
    family::{Ct, FamilyMaps},
    frag, icmp as icmp_out,
    maps::{LB6_NODE, LB6_SERVICES},
    nat, nexthop,
    packet::{L4Csum, PacketData, read},
    parse::{Flow, IcmpError, Packet, icmp6_error_at, parse, parse6},
    route::{self, Routed},
    scratch,
    select::{config, flow_backend, node_config, node_settings, vip},
    stats, vip_filter,
};

/// What the north-south path needs from the hook it runs in (XDP or tc,
/// on an external interface's ingress). Verdicts are XDP's numbers in
/// either hook (see the module's text).
pub trait Edge: PacketData + L4Csum + EbpfContext + Sized {
    /// The program's context pointer, which functions of their own take
    /// (the verifier checks it against its type).
    type Raw: Copy;
    fn raw(&self) -> Self::Raw;
    fn from_raw(raw: Self::Raw) -> Self;
    /// The interface the packet came in on.
    fn in_ifindex(&self) -> u32;
    /// `bpf_fib_lookup` with the parameters in `p` (which receives the
    /// answer).
    fn fib(&self, p: &mut FibParams) -> i64;
    /// Sends the packet back out of the interface it came in on.
    fn tx(&self) -> u32;
    /// Sends the packet out of interface `ifindex`.
    fn redirect(&self, ifindex: u32) -> u32;
    /// Whether [`Edge::redirect`] can send out of interface `ifindex`;
    /// else the kernel forwards the packet.
    fn can_redirect(&self, ifindex: u32) -> bool;
    /// Tail-calls the hook's program for `slot` (numbered as
    /// `xdp_call`); returns only when the slot is empty.
    fn tail_call(&self, slot: u32);
    /// Whether the packet is one packet on the wire, so that one longer
    /// than the path's MTU is answered with "fragmentation needed" (a GSO
    /// super-packet is not: the kernel segments it on the way out).
    fn single_packet(&self) -> bool;
    /// The verdict for a packet translated towards a backend on this node
    /// (`XDP_META_LOCAL_DNAT`), or an ICMP error about a host-routed flow
    /// translated towards one (`XDP_META_LOCAL_ICMP`): through the host
    /// stack, or with BPF host routing straight into the pod.
    fn deliver_local(&self, what: u32) -> u32;
    /// An ICMP error (IPv4 without options) about the packet, to `client`
    /// within its rate, sent back; else a drop.
    fn icmp_error(&self, client: u32, now: u64, icmp_type: u8, code: u8, mtu: u16) -> u32;
    /// An ICMPv6 error (no `info`) to the packet's sender within its rate,
    /// sent back; else a drop.
    fn icmp_error6(&self, now: u64, icmp_type: u8, code: u8) -> u32;
    /// The ICMPv6 error a verdict of the NAT66 path asked for
    /// (`icmp::request6`), sent back; a drop when it cannot be made.
    fn icmp_reply6(raw: Self::Raw, icmp_type: u8, code: u8, info: u32) -> u32;
}

/// What the north-south path does differently per family. IPv6's SNATed
/// flows (NAT66) are forwarded by a program of their own ([`nat6`]:
/// `lb_xdp6_nat`, in tc `lb_tc_ns6_nat`).
trait EdgeFamily: Routed {
    /// Offset of the TTL (IPv4) or hop limit (IPv6) in the network header.
    const HOP_LIMIT: usize;
    /// The family's ICMP (FIB parameters of an ICMP error).
    const ICMP_PROTO: u8;
    /// The north-south kinds (`vip_flags`) that may be at `addr`: the
    /// exact ones or a superset (IPv4's pre-filter, one array load); 0:
    /// none, the packet is not ours.
    fn north_south_kinds(addr: Self::Addr) -> u32;
    /// The frontend at (addr, port, proto) for clients outside the
    /// cluster (`SCOPE_EXTERNAL`).
    fn external_service(addr: Self::Addr, port: u16, proto: u8) -> Option<Service4Value>;
    /// What a new flow's source becomes, for a backend with `backend_flags`
    /// of a frontend with `svc_flags` (a backend on this node, or an
    /// `externalTrafficPolicy: Local` frontend, whose backends all are:
    /// DNAT only); `None`: the flow is not served here (passes).
    fn source(node: Option<NodeConfig>, backend: u8, svc: u32) -> Option<Source<Self::Addr>>;
    /// The verdict for a new flow to a frontend with no endpoint at all.
    fn reject<C: Edge>(ctx: &C, f: &Flow<Self>, now: u64) -> u32;
    /// Sends on a packet of a flow that is not DNAT only (SNATed to a
    /// backend on another node): [`forward`], here or in another program.
    fn send_on<C: Edge>(ctx: &C, f: &Flow<Self>, e: &Ct<Self>, now: u64) -> Result<u32, Error>;
    /// The answer to a packet of `f` too big for the path (`mtu`), sent
    /// from where it was sent to.
    fn too_big<C: Edge>(ctx: &C, f: &Flow<Self>, mtu: u16, now: u64) -> u32;
    /// The answer to a packet of `f` whose TTL or hop limit expired.
    fn expired<C: Edge>(ctx: &C, f: &Flow<Self>, now: u64) -> u32;
    /// This node's SNAT address of the family, if it has one.
    fn snat_addr(node: &NodeConfig) -> Option<Self::Addr>;
    /// Sends on a reply of a SNATed flow (to the SNAT address and a port of
    /// the SNAT range): [`snat_reply`], here or in another program.
    fn reply<C: Edge>(ctx: &C, f: &Flow<Self>) -> Result<u32, Error>;
}

impl EdgeFamily for V4 {
    const HOP_LIMIT: usize = ip::TTL;
    const ICMP_PROTO: u8 = IPPROTO_ICMP;

    #[inline(always)]
    fn north_south_kinds(addr: u32) -> u32 {
        vip_filter::kinds(addr) & NORTH_SOUTH_VIP
    }
    #[inline(always)]
    fn external_service(addr: u32, port: u16, proto: u8) -> Option<Service4Value> {
        crate::select::service(addr, port, proto)
    }
    #[inline(always)]
    fn source(node: Option<NodeConfig>, backend: u8, svc: u32) -> Option<Source<u32>> {
        Some(match node {
            // A backend on another node (and a Cluster policy): SNAT, so
            // the replies come back through this node.
            Some(n) if n.snat_addr != 0 && backend & backend_flags::LOCAL == 0 && svc & svc_flags::EXT_LOCAL == 0 => {
                Source::Snat(n.snat_addr)
            }
            // A local backend, or no SNAT configured: DNAT only, the
            // client's address is preserved.
            _ => Source::Client,
        })
    }
    #[inline(always)]
    fn reject<C: Edge>(ctx: &C, f: &Flow<V4>, now: u64) -> u32 {
        debug!(ctx, "lb north-south: no backend for {:i}:{}, rejecting", u32::from_be(f.daddr), u16::from_be(f.dport));
        if !f.has_l4() {
            return DROP;
        }
        ctx.icmp_error(f.saddr, now, icmp::DEST_UNREACH, icmp::PORT_UNREACH, 0)
    }
    #[inline(always)]
    fn send_on<C: Edge>(ctx: &C, f: &Flow<V4>, e: &CtEntry, now: u64) -> Result<u32, Error> {
        forward(ctx, f, e, now)
    }
    #[inline(always)]
    fn too_big<C: Edge>(ctx: &C, f: &Flow<V4>, mtu: u16, now: u64) -> u32 {
        stats::count(stat::FRAG_NEEDED_SENT);
        ctx.icmp_error(f.saddr, now, icmp::DEST_UNREACH, icmp::FRAG_NEEDED, mtu)
    }
    #[inline(always)]
    fn expired<C: Edge>(ctx: &C, f: &Flow<V4>, now: u64) -> u32 {
        ctx.icmp_error(f.saddr, now, icmp::TIME_EXCEEDED, 0, 0)
    }
    #[inline(always)]
    fn snat_addr(node: &NodeConfig) -> Option<u32> {
        (node.snat_addr != 0).then_some(node.snat_addr)
    }
    #[inline(always)]
    fn reply<C: Edge>(ctx: &C, f: &Flow<V4>) -> Result<u32, Error> {
        snat_reply(ctx, f)
    }
}

impl EdgeFamily for V6 {
    const HOP_LIMIT: usize = ip6::HOP_LIMIT;
    const ICMP_PROTO: u8 = IPPROTO_ICMPV6;

    #[inline(always)]
    fn north_south_kinds(addr: lb_common::Addr6) -> u32 {
        vip_filter::kinds6(&addr) & NORTH_SOUTH_VIP
    }
    #[inline(always)]
    fn external_service(addr: lb_common::Addr6, port: u16, proto: u8) -> Option<Service4Value> {
        // SAFETY: copied out at once.
        unsafe { LB6_SERVICES.get(<V6 as lb_common::Family>::service_key(addr, port, proto)).copied() }
    }
    /// As IPv4's, SNATed to the node's IPv6 SNAT address (`LB6_NODE`);
    /// without one, a flow to a backend on another node is not served
    /// (DNAT alone would send the replies straight to the client, from the
    /// backend's address): it passes, counted `stat::PASS_NO_NAT66`.
    #[inline(always)]
    fn source(node: Option<NodeConfig>, backend: u8, svc: u32) -> Option<Source<lb_common::Addr6>> {
        if backend & backend_flags::LOCAL != 0 || svc & svc_flags::EXT_LOCAL != 0 {
            return Some(Source::Client);
        }
        match snat6_addr() {
            Some(a) if node.is_some() => Some(Source::Snat(a)),
            _ => {
                stats::count(stat::PASS_NO_NAT66);
                None
            }
        }
    }
    /// ICMPv6 port unreachable, from `lb_xdp6_reject`: `lb_xdp6`'s frame
    /// (480 bytes) has no room for the error's (`icmp::xdp_reply6`, 352),
    /// and a program of its own needs no word passed to it: the slot is
    /// the reason (a reason in the packet's metadata or a per-CPU scratch
    /// would cost `lb_xdp6_nat` a check on every NAT66 packet).
    #[inline(always)]
    fn reject<C: Edge>(ctx: &C, _f: &Flow<V6>, _now: u64) -> u32 {
        tail_call(ctx, xdp_call::XDP6_REJECT)
    }
    /// In `lb_xdp6_nat`, with a frame of its own: `lb_xdp6`'s is full.
    /// The entry and the time go with the flow in the scratch.
    #[inline(always)]
    fn send_on<C: Edge>(ctx: &C, _f: &Flow<V6>, e: &Ct<V6>, now: u64) -> Result<u32, Error> {
        scratch::hand_over(scratch::NAT66_FORWARD, Some((e, now)));
        Ok(nat6_call(ctx))
    }
    /// ICMPv6 Packet Too Big, sent by `lb_xdp6_nat` itself
    /// (`icmp::request6`).
    #[inline(always)]
    fn too_big<C: Edge>(_ctx: &C, f: &Flow<V6>, mtu: u16, now: u64) -> u32 {
        stats::count(stat::FRAG_NEEDED_SENT);
        icmp_out::request6(&f.saddr, now, icmp6::PACKET_TOO_BIG, 0, mtu)
    }
    /// ICMPv6 Time Exceeded (hop limit exceeded in transit), as above.
    #[inline(always)]
    fn expired<C: Edge>(_ctx: &C, f: &Flow<V6>, now: u64) -> u32 {
        icmp_out::request6(&f.saddr, now, icmp6::TIME_EXCEEDED, 0, 0)
    }
    /// `LB6_NODE`'s, not the IPv4 settings'.
    #[inline(always)]
    fn snat_addr(_node: &NodeConfig) -> Option<Addr6> {
        snat6_addr()
    }
    /// In `lb_xdp6_nat`, which looks its entry up.
    #[inline(always)]
    fn reply<C: Edge>(ctx: &C, _f: &Flow<V6>) -> Result<u32, Error> {
        scratch::hand_over(scratch::NAT66_REPLY, None);
        Ok(nat6_call(ctx))
    }
}

/// This node's IPv6 SNAT address (`LB6_NODE`), if it has one.
#[inline(always)]
fn snat6_addr() -> Option<Addr6> {
    let a = LB6_NODE.get(0)?.snat_addr;
    (a != [0; 4]).then_some(a)
}

/// Whether `f` is a reply of a NAT66 flow: to a port of the SNAT range at
/// this node's IPv6 SNAT address. The node's settings are read in place,
/// not copied (a copy kept across `lb_xdp6`'s lookups cost its frame 8
/// bytes).
#[inline(always)]
fn snat6_reply(f: &Flow<V6>) -> bool {
    node_settings().is_some_and(|n| in_range(f.dport, n.nat_port_min, n.nat_port_max)) && snat6_addr().is_some_and(|a| a == f.daddr)
}

/// Whether an IPv6 frame is an ICMPv6 error right after its fixed header
/// (the kernel sends its own without extension headers): `lb_xdp6_nat`
/// translates those about north-south flows. Recognised before the path,
/// not by `parse6`, as in tc.
#[inline(always)]
pub fn is_icmp6_error_frame<C: Edge>(ctx: &C) -> bool {
    read::<C, u8>(ctx, ETH_HLEN + ip6::NEXT_HEADER) == Some(IPPROTO_ICMPV6)
        && read::<C, u8>(ctx, ETH_HLEN + IPV6_HLEN + icmp6::TYPE).is_some_and(is_icmp6_error)
}

/// Hands the packet to the NAT66 program (`xdp_call::XDP6_NAT`:
/// `lb_xdp6_nat`, in tc `lb_tc_ns6_nat`),
/// once `scratch::hand_over` told it what to do; when it is missing, the
/// packet passes untranslated, counted.
#[inline(always)]
pub fn nat6_call<C: Edge>(ctx: &C) -> u32 {
    tail_call(ctx, xdp_call::XDP6_NAT)
}

/// Hands the packet to the hook's program for `slot` (an `xdp_call`
/// slot: `Edge::tail_call`); when it is missing, the packet passes,
/// counted.
#[inline(always)]
pub fn tail_call<C: Edge>(ctx: &C, slot: u32) -> u32 {
    ctx.tail_call(slot);
    stats::count(stat::TAIL_CALL_FAILED);
    PASS
}

/// Frontend kinds served from outside the node.
const NORTH_SOUTH: u32 = svc_flags::NODE_PORT | svc_flags::EXTERNAL_IP | svc_flags::LOAD_BALANCER;
/// The pre-filter's lanes hold ClusterIPs too (for tc): XDP reads these.
const NORTH_SOUTH_VIP: u32 = lb_common::vip_filter::NORTH_SOUTH;
/// The path's verdicts are XDP's numbers in either hook (see [`Edge`]).
pub const PASS: u32 = xdp_action::XDP_PASS;
pub const DROP: u32 = xdp_action::XDP_DROP;
/// Sent out of an interface: XDP_TX or XDP_REDIRECT in XDP, a redirect in
/// tc.
pub const REDIRECT: u32 = xdp_action::XDP_REDIRECT;

#[inline(always)]
pub fn verdict<C: Edge>(ctx: &C, result: Result<u32, Error>) -> u32 {
    match result {
        Ok(action) => action,
        Err(e) => match e.count_drop() {
            None => PASS,
            Some(what) => {
                debug!(ctx, "lb north-south: {}, packet dropped", what);
                DROP
            }
        },
    }
}

/// IPv4 from outside, after [`first_look4`] did not settle the packet
/// (`lb_xdp4_rest`, `lb_tc_ns4_rest`): the exact path, on the flow the
/// first look handed over in this CPU's `LB4_SCRATCH`, with whether
/// conntrack had an entry for it; an ICMP error is parsed again. A
/// function of its own: inlined into the program, the verifier's count
/// went past its million instructions.
#[inline(never)]
pub fn rest4<C: Edge>(raw: C::Raw) -> Result<u32, Error> {
    let ctx = &C::from_raw(raw);
    let Some(cfg) = config() else {
        return Ok(PASS);
    };
    let Some(s) = scratch::get4() else {
        return Ok(PASS);
    };
    match s.first_look {
        scratch::ICMP_ERROR => match parse(ctx)? {
            Packet::IcmpError(err) => icmp_error(ctx, &err),
            _ => Ok(PASS),
        },
        first_look => {
            // SAFETY: `lb_xdp4`'s first look wrote the flow into this
            // CPU's slot on this run before it answered `REST` (without
            // `ICMP_ERROR`), and the tail call keeps the CPU.
            let f = unsafe { s.flow.assume_init_mut() };
            rest(ctx, &cfg, f, first_look == scratch::NO_ENTRY)
        }
    }
}

/// IPv4's first look (`lb_xdp4`, `lb_tc_ns`): a packet for no north-south frontend passes
/// (the pre-filter), and an established flow whose forward entry this path
/// made (`ct_entry_flags::NORTH_SOUTH`) is translated ([`first_look`]).
/// [`REST`] for everything else (a new flow, a fragment, a reply to the
/// SNAT address, an ICMP error, an entry another program made), with the
/// flow and what conntrack had for it handed over in `LB4_SCRATCH`.
#[inline(always)]
pub fn first_look4<C: Edge>(ctx: &C) -> Result<u32, Error> {
    let Some(cfg) = config() else {
        return Ok(PASS);
    };
    let mut f = match parse(ctx)? {
        // IPv4 options are rare from outside; they are left to the kernel
        // (as Katran does), which has no translation for them.
        Packet::Flow(f) if f.l4_off != ETH_HLEN + IPV4_HLEN => return Ok(PASS),
        Packet::Flow(f) => f,
        Packet::IcmpError(_) => return Ok(hand_over4(None, scratch::ICMP_ERROR)),
        _ => return Ok(PASS),
    };
    if f.frag != Fragment::No {
        return Ok(hand_over4(Some(&f), 0));
    }
    let (node, snat_reply) = node_and_snat4_reply(&f);
    match first_look(ctx, &cfg, node, &mut f, snat_reply) {
        Ok(REST_NO_ENTRY) => Ok(hand_over4(Some(&f), scratch::NO_ENTRY)),
        Ok(REST) => Ok(hand_over4(Some(&f), 0)),
        other => other,
    }
}

/// This node's settings (`node_config`), and whether `f` is a reply of a
/// SNATed flow: to a port of the SNAT range at this node's SNAT address.
/// One lookup of `LB_NODE`; the test reads the settings in place
/// (`node_settings`): tested on the copy, LLVM compared the copy's fields
/// before its "ready" test, reading an uninitialised register when the
/// node is not ready, which the verifier refuses.
#[inline(always)]
fn node_and_snat4_reply(f: &Flow<V4>) -> (Option<NodeConfig>, bool) {
    let node = node_settings();
    let reply = node.is_some_and(|n| n.snat_addr == f.daddr && in_range(f.dport, n.nat_port_min, n.nat_port_max));
    (node.copied(), reply)
}

/// [`REST`], with the flow `f` (none for an ICMP error) and what the first
/// look found written for [`rest4`]; without this CPU's slot, the
/// packet passes.
#[inline(always)]
fn hand_over4(f: Option<&Flow<V4>>, first_look: u32) -> u32 {
    if scratch::hand_over4(f, first_look) { REST } else { PASS }
}

/// The part of the first look both families share, after their own
/// checks: a packet for no north-south frontend passes (the pre-filter),
/// and an established flow whose forward entry this path made
/// (`ct_entry_flags::NORTH_SOUTH`) is translated as `north_south` would,
/// without the address lookup (the entry's version check ends it when its
/// frontend or backend goes). [`REST`] for anything else;
/// [`REST_NO_ENTRY`] when conntrack has no forward entry for the flow.
///
/// `snat_reply` (IPv4's first look): `f` is a backend's reply to the SNAT
/// address, sent back to its client by its reply entry. Both directions
/// end in the one `send_on` call: a second inlined copy of `forward` cost
/// every packet of the first look 3–9 ns (a larger program, more spills).
#[inline(always)]
fn first_look<F: EdgeFamily, C: Edge>(
    ctx: &C,
    cfg: &Config,
    node: Option<NodeConfig>,
    f: &mut Flow<F>,
    snat_reply: bool,
) -> Result<u32, Error> {
    let (entry, now) = if snat_reply {
        let Some((entry, now)) = ct::reply(f) else {
            return Ok(PASS);
        };
        F::keep_in_memory(&entry);
        (entry, now)
    } else {
        let kinds = F::north_south_kinds(f.daddr);
        if kinds == 0 || not_a_node_port(kinds, node, f.dport) {
            return Ok(PASS);
        }
        let Some(e) = ct::find_forward(f) else {
            return Ok(REST_NO_ENTRY);
        };
        if !ct::marked(e, ct_entry_flags::NORTH_SOUTH) {
            return Ok(REST);
        }
        let now = now_ns();
        let Forward::Flow(entry) = ct::follow(cfg, f, Some(e), now) else {
            return Ok(REST);
        };
        if let Some(verdict) = deliver_here(ctx, f, &entry, false)? {
            return Ok(verdict);
        }
        (entry, now)
    };
    F::send_on(ctx, f, &entry, now)
}

/// The first look's answer when the rest of the path ([`rest4`],
/// [`rest6`]) is to go on: no XDP action.
pub const REST: u32 = u32::MAX;
/// [`first_look`]'s [`REST`] when conntrack has no forward entry for the
/// flow: no XDP action.
const REST_NO_ENTRY: u32 = u32::MAX - 1;

/// The verdict of a result of the IPv6 paths, which log nothing.
#[inline(always)]
pub fn verdict6(result: Result<u32, Error>) -> u32 {
    match result {
        Ok(action) => action,
        Err(e) => match e.count_drop() {
            None => PASS,
            Some(_) => DROP,
        },
    }
}

/// IPv6's first look (`lb_xdp6`, `lb_tc_ns6`): parses the flow into this
/// CPU's scratch (`scratch::XDP`, the north-south slot of either hook),
/// sends a NAT66 reply on to the NAT66 program ([`nat6`]), then
/// [`first_look`] (no `LB6_VIPS` lookup for an established flow). [`REST`]
/// for everything else, with whether conntrack had no entry left in the
/// scratch for the exact path.
#[inline(always)]
pub fn first_look6<C: Edge>(ctx: &C) -> Result<u32, Error> {
    let Some(cfg) = config() else {
        return Ok(PASS);
    };
    let Some(s) = scratch::get(scratch::XDP) else {
        return Ok(PASS);
    };
    let Some(f) = parse6(ctx, &mut s.flow)? else {
        return Ok(PASS);
    };
    if f.frag != Fragment::No {
        s.first_look = 0;
        return Ok(REST);
    }
    if snat6_reply(f) {
        scratch::hand_over(scratch::NAT66_REPLY, None);
        return Ok(nat6_call(ctx));
    }
    match first_look(ctx, &cfg, node_config(), f, false) {
        Ok(REST_NO_ENTRY) => {
            s.first_look = scratch::NO_ENTRY;
            Ok(REST)
        }
        Ok(REST) => {
            s.first_look = 0;
            Ok(REST)
        }
        other => other,
    }
}

/// IPv6 from outside, after [`first_look6`] did not settle the packet
/// (`lb_xdp6_rest`, `lb_tc_ns6_rest`): the exact path on the flow the
/// first look parsed into this CPU's scratch. Inlined: one frame of the
/// 512 bytes (a function of its own, as tc's `ingress6`, would add the
/// program's frame to its own).
#[inline(always)]
pub fn rest6<C: Edge>(ctx: &C) -> Result<u32, Error> {
    let Some(cfg) = config() else {
        return Ok(PASS);
    };
    let Some(s) = scratch::get(scratch::XDP) else {
        return Ok(PASS);
    };
    // SAFETY: `first_look6` parsed the flow into this CPU's slot
    // on this run before it answered `REST`, and the tail call keeps the
    // CPU.
    let f = unsafe { s.flow.assume_init_mut() };
    rest(ctx, &cfg, f, s.first_look == scratch::NO_ENTRY)
}

/// The exact path of both families, for a packet their first look did not
/// settle: a reply to the SNAT address goes back to its client, and a
/// packet to a north-south frontend (by the address's exact kinds, looked
/// up once) goes through [`north_south`]. `no_entry`: the first look found
/// no forward entry, conntrack is not looked up again.
#[inline(always)]
fn rest<F: EdgeFamily, C: Edge>(ctx: &C, cfg: &Config, f: &mut Flow<F>, no_entry: bool) -> Result<u32, Error> {
    let node = node_config();
    if let Some(n) = node
        && F::snat_addr(&n).is_some_and(|a| a == f.daddr)
    {
        // Replies of SNATed flows come to a port of the SNAT range: a later
        // fragment's port is its first fragment's.
        if !frag::ports(f) {
            return Ok(PASS);
        }
        if in_range(f.dport, n.nat_port_min, n.nat_port_max) {
            return F::reply(ctx, f);
        }
    }
    let Some(v) = F::vip(f.daddr) else {
        return Ok(PASS);
    };
    // A ClusterIP from outside is not ours to serve.
    if v.flags & NORTH_SOUTH_VIP == 0 {
        return Ok(PASS);
    }
    north_south(ctx, cfg, node, v, no_entry, f)
}

/// The packets of NAT66 flows (`lb_xdp6_nat`, `lb_tc_ns6_nat`), from the
/// IPv6 path (`xdp_call::XDP6_NAT`): a client's, whose forward entry it made
/// or followed (and recorded the packet in), and a backend's reply to the
/// node's IPv6 SNAT address. Both are translated as their entry says and
/// forwarded as IPv4's (`forward`). A program of its own because
/// the IPv6 path's frame has no room left for the FIB lookup's; the cost is
/// the tail call: the flow, and a client's forward entry with the time,
/// come in the per-CPU scratch (`scratch::XDP`, `scratch::hand_over`), so
/// nothing is parsed or looked up again (a reply's entry is looked up
/// here, once).
///
/// The ICMPv6 errors of the path (Packet Too Big, Time Exceeded) are made
/// here, after the path returned (its verdict asks for one:
/// `icmp::request6`): the path's frame and the error's together would
/// exceed the verifier's 512 bytes, one after the other they do not.
#[inline(always)]
pub fn nat6<C: Edge>(ctx: &C) -> u32 {
    let action = if is_icmp6_error_frame(ctx) {
        match icmp6_error_dir::<C>(ctx.raw()) {
            NO_DIR => PASS,
            dir => match icmp6_error_translate::<C>(ctx.raw(), dir) {
                ROUTE => route_icmp6_error::<C>(ctx.raw()),
                action => action,
            },
        }
    } else {
        nat6_path::<C>(ctx.raw())
    };
    match icmp_out::requested6(action) {
        Some((icmp_type, code, info)) => C::icmp_reply6(ctx.raw(), icmp_type, code, info),
        None => action,
    }
}

/// A new IPv6 flow to a north-south frontend with no endpoint anywhere
/// (`lb_xdp6_reject`, `lb_tc_ns6_reject`), from the IPv6 path
/// (`xdp_call::XDP6_REJECT`), which counted it
/// (`stat::REJECT_NO_BACKEND`): ICMPv6 port unreachable from the dialled
/// address, quoting as much of the packet as fits the minimum MTU, sent
/// back within the client's rate (`LB6_REJECT_RATE`), as IPv4's
/// `Edge::icmp_error` and kube-proxy's REJECT (also for TCP).
#[inline(always)]
pub fn reject6<C: Edge>(ctx: &C) -> u32 {
    ctx.icmp_error6(now_ns(), icmp6::DEST_UNREACH, icmp6::PORT_UNREACH)
}

/// [`nat6`]'s path, a function of its own (see there).
#[inline(never)]
fn nat6_path<C: Edge>(raw: C::Raw) -> u32 {
    verdict6(nat6_in(&C::from_raw(raw)))
}

/// [`icmp6_error_dir`]: the error is not about a north-south flow.
const NO_DIR: u32 = u32::MAX;
/// [`icmp6_error_translate`]: translated, for the FIB to route.
const ROUTE: u32 = 1 << 30;

/// An ICMPv6 error from outside about a north-south flow in
/// [`nat6`], as IPv4's [`icmp_error`], in three functions of their
/// own called one after the other, each reading the error from the packet:
/// in one, their frames exceeded the verifier's 512 bytes. First the
/// direction of the flow the error travels in, by where it is sent (the
/// SNAT address and port: `CT_REPLY`, to the client; a north-south
/// frontend: `CT_SERVICE`, to the backend), or `NO_DIR`.
#[inline(never)]
fn icmp6_error_dir<C: Edge>(raw: C::Raw) -> u32 {
    // The context pointer itself must reach the function (the verifier
    // checks it against its BTF type): with only loads through it, LLVM
    // passed the loaded packet pointer instead.
    let raw = core::hint::black_box(raw);
    let Some(s) = scratch::get(scratch::XDP) else {
        return NO_DIR;
    };
    let Some(err) = icmp6_error_at(&C::from_raw(raw), ETH_HLEN + IPV6_HLEN, &mut s.err) else {
        return NO_DIR;
    };
    let to_snat = node_config().is_some_and(|n| in_range(err.quoted.sport, n.nat_port_min, n.nat_port_max))
        && snat6_addr().is_some_and(|a| a == err.daddr);
    if to_snat {
        return CT_REPLY as u32;
    }
    match V6::vip(err.daddr) {
        Some(v) if v.flags & NORTH_SOUTH_VIP != 0 => CT_SERVICE as u32,
        _ => NO_DIR,
    }
}

/// Then the translation, in direction `dir`: `ROUTE`, or `PASS` when the
/// kernel delivers it (to a backend on this node) or it is about no flow
/// we know.
#[inline(never)]
fn icmp6_error_translate<C: Edge>(raw: C::Raw, dir: u32) -> u32 {
    let ctx = &C::from_raw(raw);
    let Some(s) = scratch::get(scratch::XDP) else {
        return PASS;
    };
    // SAFETY: `icmp6_error_dir` read the error into this CPU's slot on
    // this run: only its answer (a direction) leads here.
    let err = unsafe { s.err.assume_init_ref() };
    let dir = dir as u8;
    match nat::translate_icmp_error(ctx, err, dir) {
        Ok(Some(entry)) if !(dir == CT_SERVICE && entry.nat_saddr == err.quoted.daddr) => ROUTE,
        // To a backend on this node, as IPv4's (`icmp_error`).
        Ok(Some(entry)) if entry.flags & ct_entry_flags::HOST_ROUTED != 0 => ctx.deliver_local(XDP_META_LOCAL_ICMP),
        Ok(_) => PASS,
        Err(e) => verdict6(Err(e)),
    }
}

/// Last the route: the translated error's header holds the flow's
/// addresses.
#[inline(never)]
fn route_icmp6_error<C: Edge>(raw: C::Raw) -> u32 {
    let ctx = &C::from_raw(raw);
    let mut params = MaybeUninit::uninit();
    let p = route::zeroed_fib_params(&mut params);
    p.family = route::AF_INET6;
    p.l4_protocol = IPPROTO_ICMPV6;
    p.__bindgen_anon_3.ipv6_src = read(ctx, ETH_HLEN + ip6::SADDR.start).unwrap_or([0; 4]);
    p.__bindgen_anon_4.ipv6_dst = read(ctx, ETH_HLEN + ip6::DADDR.start).unwrap_or([0; 4]);
    if fib_lookup(ctx, p) != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return PASS;
    }
    verdict6(send::<V6, C>(ctx, p))
}

#[inline(always)]
fn nat6_in<C: Edge>(ctx: &C) -> Result<u32, Error> {
    let Some(s) = scratch::get(scratch::XDP) else {
        return Ok(PASS);
    };
    let next = s.next;
    // Taken: a stale word never sends another packet down this path.
    s.next = 0;
    // SAFETY: the IPv6 path parsed the flow into this CPU's slot on this run
    // (and lent a later fragment its ports) before the tail call that set
    // `next`; with `NAT66_FORWARD` it wrote the entry too.
    unsafe {
        match next {
            scratch::NAT66_REPLY => snat_reply(ctx, s.flow.assume_init_ref()),
            scratch::NAT66_FORWARD => forward(ctx, s.flow.assume_init_ref(), s.entry.assume_init_ref(), s.now),
            _ => Ok(PASS),
        }
    }
}

/// Whether port `port_be` (network order) is within `min..=max` (host
/// order).
#[inline(always)]
fn in_range(port_be: u16, min: u16, max: u16) -> bool {
    let p = u16::from_be(port_be);
    min <= p && p <= max
}

/// Whether a packet to `dport` at an address with north-south kinds
/// `kinds` (exact, or the pre-filter's superset) is the node's own
/// traffic: only NodePorts at the address, and this port is none.
#[inline(always)]
fn not_a_node_port(kinds: u32, node: Option<NodeConfig>, dport: u16) -> bool {
    kinds & !vip_flags::NODE_PORT & NORTH_SOUTH_VIP == 0 && node.is_some_and(|n| !in_range(dport, n.nodeport_min, n.nodeport_max))
}

/// Client -> north-south frontend `v` (the destination address's exact
/// kinds), for a packet the first look did not settle: a fragment, an
/// entry another program made (a pod's flow to the same tuple), an entry
/// whose frontend or backend went, a new flow. `no_entry`: the first look
/// found no forward entry, conntrack is not looked up again.
#[inline(always)]
fn north_south<F: EdgeFamily, C: Edge>(
    ctx: &C,
    cfg: &Config,
    node: Option<NodeConfig>,
    v: Vip4,
    no_entry: bool,
    f: &mut Flow<F>,
) -> Result<u32, Error> {
    if f.frag == Fragment::Later {
        if !frag::ports(f) {
            return Ok(orphan_fragment(&v));
        }
    } else if not_a_node_port(v.flags, node, f.dport) {
        // Only NodePorts here, and this is not one: the node's own traffic.
        return Ok(PASS);
    }
    let now = now_ns();
    let forward = if no_entry { Forward::New { replace: false } } else { ct::forward(cfg, f, now) };
    let (entry, new) = match forward {
        Forward::Flow(e) => (e, false),
        // The datagram's first fragment made the flow; it is gone.
        Forward::New { .. } if f.frag == Fragment::Later => return Ok(orphan_fragment(&v)),
        Forward::New { replace } => match new_flow(ctx, cfg, node, f, now, replace)? {
            ControlFlow::Continue(e) => (e, true),
            ControlFlow::Break(verdict) => return Ok(verdict),
        },
    };
    deliver(ctx, f, &entry, new, now)
}

/// A north-south packet of the flow whose forward entry is `entry`
/// (`new`: this packet made it), recorded at `now`: counted, and DNATed
/// for the kernel to deliver to a backend on this node, or sent on.
#[inline(always)]
fn deliver<F: EdgeFamily, C: Edge>(ctx: &C, f: &mut Flow<F>, entry: &Ct<F>, new: bool, now: u64) -> Result<u32, Error> {
    frag::record(f);
    match deliver_here(ctx, f, entry, new)? {
        Some(verdict) => Ok(verdict),
        None => F::send_on(ctx, f, entry, now),
    }
}

/// [`deliver`] up to sending on, for a packet that is no fragment (the
/// first look's; `deliver` records a first fragment's ports): the packet
/// counted, and DNATed for the kernel to deliver when its backend is on
/// this node (its verdict); `None`: it is to be sent on
/// (`EdgeFamily::send_on`).
#[inline(always)]
fn deliver_here<F: EdgeFamily, C: Edge>(ctx: &C, f: &mut Flow<F>, entry: &Ct<F>, new: bool) -> Result<Option<u32>, Error> {
    F::keep_in_memory(entry);
    stats::frontend_packet(entry.frontend_id, ctx.len(), new);
    if entry.nat_saddr == f.saddr {
        // A backend on this node: DNAT only, the kernel delivers.
        nat::translate(ctx, f, entry)?;
        return Ok(Some(ctx.deliver_local(XDP_META_LOCAL_DNAT)));
    }
    Ok(None)
}

/// A new north-south flow, or the verdict for a packet that gets none.
#[inline(always)]
fn new_flow<F: EdgeFamily, C: Edge>(
    ctx: &C,
    cfg: &Config,
    node: Option<NodeConfig>,
    f: &Flow<F>,
    now: u64,
    replace: bool,
) -> Result<ControlFlow<u32, Ct<F>>, Error> {
    let Some(svc) = F::external_service(f.daddr, f.dport, f.proto) else {
        return Ok(ControlFlow::Break(PASS));
    };
    if svc.flags & NORTH_SOUTH == 0 {
        return Ok(ControlFlow::Break(PASS));
    }
    // loadBalancerSourceRanges are checked when a flow starts, as
    // kube-proxy's firewall chains see only a connection's first packet.
    if F::source_refused(&svc, f.saddr) {
        return Ok(ControlFlow::Break(DROP));
    }
    if svc.count == 0 {
        // externalTrafficPolicy=Local without a local endpoint: drop, so
        // the load balancer's health check (503 here) takes this node
        // out. No endpoint anywhere: reject, as kube-proxy does.
        if svc.flags & svc_flags::EXT_LOCAL != 0 {
            stats::count(stat::DROP_NO_LOCAL_BACKEND);
            return Ok(ControlFlow::Break(DROP));
        }
        stats::count(stat::REJECT_NO_BACKEND);
        return Ok(ControlFlow::Break(F::reject(ctx, f, now)));
    }
    let (backend_id, backend) = flow_backend(cfg, &svc, f, now).ok_or(Error::NoSlot)?;
    let Some(source) = F::source(node, F::backend_flags(&backend), svc.flags) else {
        return Ok(ControlFlow::Break(PASS));
    };
    let new = NewFlow { frontend_id: svc.frontend_id, backend_id, backend, source, ports: ct::nat_ports(node) };
    // Marked: its next packets need no `LB4_VIPS` lookup (`north_south`).
    Ok(ControlFlow::Continue(ct::create_marked(cfg, f, &new, now, replace, ct_entry_flags::NORTH_SOUTH)?))
}

/// A later fragment whose first fragment was not seen (see
/// `frag::orphan_dropped`).
#[inline(always)]
fn orphan_fragment(v: &Vip4) -> u32 {
    if frag::orphan_dropped(v) { DROP } else { PASS }
}

/// Backend -> node address:SNAT port: back to the client, from the
/// frontend.
#[inline(always)]
fn snat_reply<F: EdgeFamily, C: Edge>(ctx: &C, f: &Flow<F>) -> Result<u32, Error> {
    let Some((entry, now)) = ct::reply(f) else {
        return Ok(PASS);
    };
    F::keep_in_memory(&entry);
    frag::record(f);
    forward(ctx, f, &entry, now)
}

/// What the FIB is asked: the packet of a flow rewritten as its entry
/// says, or an ICMP error to the entry's destination.
enum Route<'a, F: EdgeFamily> {
    /// A packet of a flow, at a time (`LB_NEXTHOPS` answers).
    Flow(&'a Flow<F>, u64),
    IcmpError,
}

/// Where the FIB sends a packet from `e.nat_saddr` to `e.nat_daddr`.
/// The parameters are built in `params`, which also receives the answer.
#[inline(always)]
fn fib<'a, F: EdgeFamily, C: Edge>(ctx: &C, e: &Ct<F>, what: Route<F>, params: &'a mut MaybeUninit<FibParams>) -> (i64, &'a FibParams) {
    let p = route::zeroed_fib_params(params);
    match what {
        Route::Flow(f, now) => {
            // The answer kept for this destination (`LB_NEXTHOPS`), else
            // the FIB's, kept when it is a success.
            let key = F::nexthop_key(&e.nat_daddr, ctx.in_ifindex());
            if nexthop::answer(&key, f.tot_len, now, p) {
                return (BPF_FIB_LKUP_RET_SUCCESS as i64, p);
            }
            p.l4_protocol = f.proto;
            p.sport = e.nat_sport;
            p.dport = e.nat_dport;
            p.__bindgen_anon_1.tot_len = f.tot_len;
            F::fib_addrs(p, &e.nat_saddr, &e.nat_daddr, f.tos);
            let rc = fib_lookup(ctx, p);
            if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
                nexthop::remember(&key, f.tot_len, now, p);
            }
            (rc, p)
        }
        Route::IcmpError => {
            p.l4_protocol = F::ICMP_PROTO;
            F::fib_addrs(p, &e.nat_saddr, &e.nat_daddr, 0);
            (fib_lookup(ctx, p), p)
        }
    }
}

/// Asks the FIB about the packet `p` describes, as if it came in where
/// this one did; `p` receives the answer.
#[inline(always)]
fn fib_lookup<C: Edge>(ctx: &C, p: &mut FibParams) -> i64 {
    p.ifindex = ctx.in_ifindex();
    ctx.fib(p)
}

/// Sends a packet of a translated flow on, rewritten as `e` says: the FIB
/// gives the egress interface and the next hop's MAC, and the TTL (hop
/// limit) goes down by one as in any router. A packet too big for the path
/// (IPv4: with DF) is answered from where it was sent to (IPv4:
/// "fragmentation needed"), an expired TTL too (IPv4: "time exceeded");
/// both quote the packet as it came. Without a route or neighbour the
/// kernel forwards it.
#[inline(always)]
fn forward<F: EdgeFamily, C: Edge>(ctx: &C, f: &Flow<F>, e: &Ct<F>, now: u64) -> Result<u32, Error> {
    let mut params = MaybeUninit::uninit();
    let (rc, p) = fib(ctx, e, Route::Flow(f, now), &mut params);
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 && f.df && f.has_l4() && ctx.single_packet() {
        // SAFETY: the union member the kernel wrote for this result (all
        // members are plain integers).
        let mtu = unsafe { p.__bindgen_anon_1.mtu_result };
        return Ok(F::too_big(ctx, f, mtu, now));
    }
    let ttl: u8 = read(ctx, ETH_HLEN + F::HOP_LIMIT).ok_or(Error::Malformed)?;
    if ttl <= 1 {
        stats::count(stat::DROP_TTL);
        return Ok(F::expired(ctx, f, now));
    }
    nat::translate(ctx, f, e)?;
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Ok(PASS);
    }
    send::<F, C>(ctx, p)
}

/// Decrements the TTL (hop limit), sets the MACs from the FIB result and
/// transmits; or, towards an interface the hook cannot send out of (an
/// overlay's tunnel device, from XDP), hands the translated packet to the
/// kernel, which forwards it.
#[inline(always)]
fn send<F: EdgeFamily, C: Edge>(ctx: &C, p: &FibParams) -> Result<u32, Error> {
    if p.ifindex != ctx.in_ifindex() && !ctx.can_redirect(p.ifindex) {
        return Ok(PASS);
    }
    if !F::hop(ctx, p)? {
        stats::count(stat::DROP_TTL);
        return Ok(DROP);
    }
    if p.ifindex == ctx.in_ifindex() { Ok(ctx.tx()) } else { Ok(ctx.redirect(p.ifindex)) }
}

/// An ICMP error from outside about a translated flow: about a reply we
/// sent a client (to the frontend address: it goes to the backend), or
/// about a packet we SNATed to a backend (to this node's SNAT address: it
/// goes to the client).
#[inline(always)]
fn icmp_error<C: Edge>(ctx: &C, err: &IcmpError) -> Result<u32, Error> {
    let node = node_config();
    let to_snat = node.is_some_and(|n| err.daddr == n.snat_addr && in_range(err.quoted.sport, n.nat_port_min, n.nat_port_max));
    let dir = if to_snat {
        CT_REPLY
    } else if vip_filter::kinds(err.daddr) & NORTH_SOUTH_VIP == 0 {
        return Ok(PASS);
    } else {
        match vip(err.daddr) {
            Some(v) if v.flags & NORTH_SOUTH_VIP != 0 => CT_SERVICE,
            _ => return Ok(PASS),
        }
    };
    let Some(entry) = nat::translate_icmp_error(ctx, err, dir)? else {
        return Ok(PASS);
    };
    // To a backend on this node (the flow is not SNATed: its source is
    // still the client the error is about): the kernel delivers it, or,
    // for a flow host-routed past the kernel, BPF host routing.
    if dir == CT_SERVICE && entry.nat_saddr == err.quoted.daddr {
        if entry.flags & ct_entry_flags::HOST_ROUTED != 0 {
            return Ok(ctx.deliver_local(XDP_META_LOCAL_ICMP));
        }
        return Ok(PASS);
    }
    let mut params = MaybeUninit::uninit();
    let (rc, p) = fib::<V4, C>(ctx, &entry, Route::IcmpError, &mut params);
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Ok(PASS);
    }
    send::<V4, C>(ctx, p)
}
