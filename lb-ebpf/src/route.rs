//! Forwarding as a router does, past the host stack: the FIB lookup's
//! parameters and the rewrite of a forwarded packet (TTL or hop limit down
//! by one, the next hop's MACs), shared by `lb_xdp` (north-south packets
//! to and from other nodes) and tc's BPF host routing.
//!
//! BPF host routing (`config_flags::HOST_ROUTING_BPF`, `lb-agent run
//! --host-routing bpf`; Cilium's "BPF host routing"): `lb_tc_ingress`
//! (IPv6: `lb_tc_ingress6`, `lb_tc_ingress6_rest`; one path over the
//! family, [`Routed`]) sends a translated packet whose FIB next hop is a pod interface of
//! this node (one the agent attached the tc programs to: `LB_POD_IFACES`)
//! straight into that pod with `bpf_redirect_peer`, instead of handing it
//! to the host stack (netfilter, reverse-path filtering, the neighbour
//! layer). Both directions of a flow between two pods of this node:
//! - a packet to a frontend, once translated to its backend
//!   ([`redirect_translated`], [`redirect_translated6`]); it skips the
//!   backend interface's egress hook, where nothing is translated for it;
//! - the backend's reply, at the backend interface's ingress
//!   ([`redirect_reply`], [`redirect_reply6`]): translated back there, only when it can be
//!   redirected, so it skips the client interface's egress hook where the
//!   stack path translates it.
//!
//! - north-south, a packet `lb_xdp` DNATed to a backend pod of this node
//!   (marked in its XDP metadata; on a kernel that refuses XDP programs
//!   the metadata helper, found by its conntrack entry: [`xdp_marks`]),
//!   at the external interface's ingress
//!   (`lb_tc_ext_ingress`: [`from_outside4`], [`from_outside6`]), its
//!   flow's entries marked `HOST_ROUTED`; the replies of such a flow are
//!   translated back at the backend's interface and sent out towards the
//!   client ([`redirect_reply`]), never one direction alone, and ICMP
//!   errors about them come in the same way (as a translated packet:
//!   [`redirect_translated`], [`redirect_translated6`]).
//!
//! Whatever cannot be redirected (no neighbour entry yet, a next hop that
//! is no pod interface: another node, the host, an external interface; a
//! packet too big for the next hop's MTU, an expired TTL, a fragment of a
//! reply) takes the stack path exactly as without host routing, and the
//! stack resolves the neighbour for the next packets. The FIB's answers
//! are kept for a second (`LB_NEXTHOPS`, see [`pod_next_hop`]).

use core::mem::{MaybeUninit, align_of, size_of};

use aya_ebpf::{
    Global,
    bindings::{__sk_buff, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_fib_lookup as FibParams},
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_peer},
    programs::TcContext,
};
use lb_common::{
    Addr6, CT_REPLY, CtKeyOf, NextHop, NextHopKey, V4, V6, csum, ct_entry_flags,
    packet::{ETH_HLEN, Fragment, eth, ip, ip6},
    stat,
};

use crate::{
    clock::now_ns,
    ct,
    error::Error,
    l3::L3,
    maps::{LB_HR_SCRATCH, LB_POD_IFACES},
    nat, nexthop,
    packet::{PacketData, read, write},
    parse::Flow,
    stats,
    tc::verdict,
};

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Zeroes the `bpf_fib_lookup` at `p` in place with sixteen 4-byte
/// stores and returns it. `mem::zeroed()`, or any copy of the struct,
/// compiles to a call of the object's `memset`/`memcpy`, loops of one-byte
/// accesses (some 200 instructions for these 64 bytes) on every forwarded
/// packet; volatile stores into storage that is never moved cannot be
/// merged back into one.
#[inline(always)]
pub fn zeroed_fib_params(p: &mut MaybeUninit<FibParams>) -> &mut FibParams {
    const WORDS: usize = size_of::<FibParams>() / 4;
    const _: () = assert!(size_of::<FibParams>() == WORDS * 4 && align_of::<FibParams>() >= 4);
    let words = p.as_mut_ptr().cast::<u32>();
    let mut i = 0;
    while i < WORDS {
        // SAFETY: `words` points at the start of `p`, 4-aligned (checked
        // above), and `i < WORDS` keeps each store inside it.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte was written (zero), and all-zero is a valid value
    // of this plain C struct of integers, arrays and unions of them.
    unsafe { p.assume_init_mut() }
}

/// What a router does to an IPv4 packet it forwards: the TTL goes down by
/// one (and the header checksum with it) and the MACs become those of the
/// FIB result `p` (the egress interface's and the next hop's). `false`,
/// the packet left as it was, when the TTL has expired.
#[inline(always)]
pub fn hop<C: PacketData>(ctx: &C, p: &FibParams) -> Result<bool, Error> {
    const TTL_PROTO: usize = ETH_HLEN + ip::TTL_PROTO.start;
    const CHECK: usize = ETH_HLEN + ip::CHECK.start;
    let ttl_proto: [u8; 2] = read(ctx, TTL_PROTO).ok_or(Error::Rewrite)?;
    if ttl_proto[0] <= 1 {
        return Ok(false);
    }
    let check: u16 = read(ctx, CHECK).ok_or(Error::Rewrite)?;
    let new = [ttl_proto[0] - 1, ttl_proto[1]];
    let check = csum::replace2(check, u16::from_ne_bytes(ttl_proto), u16::from_ne_bytes(new));
    write(ctx, TTL_PROTO, new).ok_or(Error::Rewrite)?;
    write(ctx, CHECK, check).ok_or(Error::Rewrite)?;
    macs(ctx, p)?;
    Ok(true)
}

/// [`hop`] for IPv6: the hop limit goes down by one (no header checksum)
/// and the MACs become the FIB result's.
#[inline(always)]
pub fn hop6<C: PacketData>(ctx: &C, p: &FibParams) -> Result<bool, Error> {
    const HOP_LIMIT: usize = ETH_HLEN + ip6::HOP_LIMIT;
    let hops: u8 = read(ctx, HOP_LIMIT).ok_or(Error::Rewrite)?;
    if hops <= 1 {
        return Ok(false);
    }
    write(ctx, HOP_LIMIT, hops - 1).ok_or(Error::Rewrite)?;
    macs(ctx, p)?;
    Ok(true)
}

/// The egress interface's MAC as the source, the next hop's as the
/// destination (FIB result `p`).
#[inline(always)]
fn macs<C: PacketData>(ctx: &C, p: &FibParams) -> Result<(), Error> {
    write(ctx, eth::DST.start, p.dmac).ok_or(Error::Rewrite)?;
    write(ctx, eth::SRC.start, p.smac).ok_or(Error::Rewrite)
}

/// A packet that stays on the stack path.
const NEXT: i32 = TC_ACT_UNSPEC;

/// Whether `ifindex` is a pod interface with the tc programs: a veth
/// whose peer is in the pod's network namespace, so that
/// `bpf_redirect_peer` can deliver there (the helper itself only fails
/// once the program has returned, and then drops the packet).
#[inline(always)]
fn pod_iface(ifindex: u32) -> bool {
    // SAFETY: only the presence of the entry is looked at.
    unsafe { LB_POD_IFACES.get(ifindex) }.is_some()
}

/// What forwarding does differently per family, for XDP's north-south
/// path and tc's host routing alike.
pub trait Routed: L3 {
    /// The FIB parameters' family and addresses (IPv4: with `tos`).
    fn fib_addrs(p: &mut FibParams, saddr: &Self::Addr, daddr: &Self::Addr, tos: u8);
    /// The destination in `p`, as the caller wrote it (the lookup replaces
    /// it with a gateway's address).
    fn fib_daddr(p: &FibParams) -> Self::Addr;
    /// The `LB_NEXTHOPS` key of destination `daddr` for packets that came
    /// in on `ifindex`.
    fn nexthop_key(daddr: &Self::Addr, ifindex: u32) -> NextHopKey;
    /// What a router does to a packet it forwards: [`hop`] or [`hop6`].
    fn hop<C: PacketData>(ctx: &C, p: &FibParams) -> Result<bool, Error>;
}

impl Routed for V4 {
    #[inline(always)]
    fn fib_addrs(p: &mut FibParams, saddr: &u32, daddr: &u32, tos: u8) {
        p.family = AF_INET;
        p.__bindgen_anon_2.tos = tos;
        p.__bindgen_anon_3.ipv4_src = *saddr;
        p.__bindgen_anon_4.ipv4_dst = *daddr;
    }

    #[inline(always)]
    fn fib_daddr(p: &FibParams) -> u32 {
        // SAFETY: a union of plain integers, written as IPv4 (`fib_addrs`).
        unsafe { p.__bindgen_anon_4.ipv4_dst }
    }

    #[inline(always)]
    fn nexthop_key(daddr: &u32, ifindex: u32) -> NextHopKey {
        NextHopKey::v4(*daddr, ifindex)
    }

    #[inline(always)]
    fn hop<C: PacketData>(ctx: &C, p: &FibParams) -> Result<bool, Error> {
        hop(ctx, p)
    }
}

impl Routed for V6 {
    #[inline(always)]
    fn fib_addrs(p: &mut FibParams, saddr: &Addr6, daddr: &Addr6, _tos: u8) {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = *saddr;
        p.__bindgen_anon_4.ipv6_dst = *daddr;
    }

    #[inline(always)]
    fn fib_daddr(p: &FibParams) -> Addr6 {
        // SAFETY: a union of plain integers, written as IPv6.
        unsafe { p.__bindgen_anon_4.ipv6_dst }
    }

    #[inline(always)]
    fn nexthop_key(daddr: &Addr6, ifindex: u32) -> NextHopKey {
        NextHopKey::v6(*daddr, ifindex)
    }

    #[inline(always)]
    fn hop<C: PacketData>(ctx: &C, p: &FibParams) -> Result<bool, Error> {
        hop6(ctx, p)
    }
}

/// The FIB's next hop for a packet of `proto` from `sport` to `dport`,
/// its addresses written into the parameters by `addrs` (with the
/// family), that came in on the skb's interface, when the neighbour is
/// resolved (whether it is a pod interface is the caller's to check:
/// [`pod_iface`]); the parameters and the answer in `s` (this CPU's
/// [`Scratch`]). The MTU is checked against the packet (`tot_len` 0: the
/// skb's length, GSO segments included).
///
/// The FIB's answers are kept as for XDP's forwarded packets
/// (`LB_NEXTHOPS`, by destination and the interface the packet came in
/// on; a route change ends them, see the agent's link watch), and serve
/// packets that the MTU check sees whole: a GSO packet's segments are
/// checked by the FIB alone.
#[inline(always)]
fn next_hop<'a, F: Routed>(
    ctx: &TcContext,
    s: &'a mut Scratch,
    proto: u8,
    ports: (u16, u16),
    addrs: impl FnOnce(&mut FibParams) -> Option<()>,
) -> Option<&'a FibParams> {
    // SAFETY: `skb` is the program's context, valid for the whole run;
    // plain fields are read through the raw pointer.
    let (in_if, len, gso) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len, (*ctx.skb.skb).gso_size) };
    let keep = gso == 0 && len <= u16::MAX as u32;
    let (len, now) = (len as u16, now_ns());
    // (The key and the answer kept in the scratch, not on the stack:
    // `lb_tc_ingress`'s frame and `redirect_reply`'s together are at the
    // verifier's 512 bytes; on the stack they took the chain to 528.)
    let p = zeroed_fib_params(&mut s.fib);
    addrs(p)?;
    s.hop = F::nexthop_key(&F::fib_daddr(p), in_if);
    p.l4_protocol = proto;
    p.sport = ports.0;
    p.dport = ports.1;
    // Every successful answer is kept, a next hop that is no pod interface
    // too (a backend on another node, the host): those packets then take
    // the stack path without asking the FIB each time. The interface is
    // checked at every packet: the agent removes a pod interface that went
    // away.
    if !(keep && nexthop::answer(&s.hop, len, now, p)) {
        p.ifindex = in_if;
        // SAFETY: `skb` is the program's context and `p` a parameter
        // struct of the size passed, in this CPU's scratch.
        let rc = unsafe { bpf_fib_lookup(ctx.skb.skb.cast(), p, size_of::<FibParams>() as i32, 0) };
        if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
            return None;
        }
        if keep {
            s.kept = NextHop::fresh(now, len, p.ifindex, p.smac, p.dmac);
            nexthop::remember_in(&s.hop, &mut s.kept);
        }
    }
    Some(p)
}

/// [`next_hop`] when it is a pod interface of this node.
#[inline(always)]
fn pod_next_hop<'a, F: Routed>(
    ctx: &TcContext,
    s: &'a mut Scratch,
    proto: u8,
    ports: (u16, u16),
    addrs: impl FnOnce(&mut FibParams) -> Option<()>,
) -> Option<&'a FibParams> {
    next_hop::<F>(ctx, s, proto, ports, addrs).filter(|p| pod_iface(p.ifindex))
}

/// Hands the packet to the pod behind `p.ifindex` (its MACs and TTL
/// rewritten already, by [`hop`]), counted.
#[inline(always)]
fn into_pod(p: &FibParams) -> i32 {
    stats::count(stat::REDIRECTED_PEER);
    // SAFETY: the helper takes plain integers.
    unsafe { bpf_redirect_peer(p.ifindex, 0) as i32 }
}

/// Sends the packet out of `p.ifindex` (its MACs and TTL rewritten
/// already, by [`hop`]), counted: a north-south reply towards its client.
#[inline(always)]
fn out_of(p: &FibParams) -> i32 {
    stats::count(stat::REDIRECTED_OUT);
    // SAFETY: the helper takes plain integers.
    unsafe { bpf_redirect(p.ifindex, 0) as i32 }
}

/// BPF host routing's working memory, one per CPU (`LB_HR_SCRATCH`): the
/// verifier's 512 bytes of stack forced this, as `lb_tc_ingress` (320
/// bytes) and [`redirect_reply`] with the FIB parameters on its stack
/// reached the limit together. A tc program runs to its end on its CPU
/// (softirq), so nothing else uses the slot meanwhile.
pub struct Scratch {
    pub fib: MaybeUninit<FibParams>,
    /// The key of the FIB's kept answer (`LB_NEXTHOPS`) for the packet
    /// being routed, and the answer to keep.
    pub hop: NextHopKey,
    pub kept: NextHop,
}

/// This CPU's [`Scratch`].
#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    let s = LB_HR_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU array, valid and aligned for the
    // program's run and used by nothing else during it (see `Scratch`);
    // its members are `MaybeUninit`, written before they are read.
    Some(unsafe { &mut *s })
}

/// BPF host routing of a packet that `lb_tc_ingress` translated to a
/// backend (or an ICMP error `lb_xdp` translated towards one, at
/// `lb_tc_ext_ingress`), now of `proto` from `saddr:sport` to `daddr:dport` (`addrs`:
/// `saddr | daddr << 32`; `l4`: `proto | sport << 16 | dport << 32`,
/// ports in network order): into the backend's pod when it is one of
/// this node's, else `NEXT` (the host stack routes it, and answers an
/// expired TTL). A function of its own, so that the FIB lookup's frame is
/// apart from the translation's; its arguments are scalars, and it
/// returns the verdict itself: a reference to the entry, or a `Result`
/// returned through memory, took `lb_tc_ingress`'s frame from 320 to 376
/// bytes.
#[inline(never)]
pub fn redirect_translated(skb: *mut __sk_buff, addrs: u64, l4: u64) -> i32 {
    let ctx = &TcContext::new(skb);
    let Some(s) = scratch() else {
        return NEXT;
    };
    let ports = ((l4 >> 16) as u16, (l4 >> 32) as u16);
    let (saddr, daddr) = (addrs as u32, (addrs >> 32) as u32);
    let Some(p) = pod_next_hop::<V4>(ctx, s, l4 as u8, ports, |p| {
        V4::fib_addrs(p, &saddr, &daddr, 0);
        Some(())
    }) else {
        return NEXT;
    };
    into_pod_after_hop::<V4>(ctx, p)
}

/// [`redirect_translated`] for IPv6: a packet `lb_tc_ingress6` (or
/// `lb_tc_ingress6_rest`) translated, `l4` = `proto | sport << 16 | dport
/// << 32` (its new ports). Its addresses are read from the packet, now
/// translated, straight into the FIB parameters: a reference to the
/// entry kept it in memory in the calling program, whose frame grew from
/// 296 to 376 bytes.
#[inline(never)]
pub fn redirect_translated6(skb: *mut __sk_buff, l4: u64) -> i32 {
    let ctx = &TcContext::new(skb);
    let Some(s) = scratch() else {
        return NEXT;
    };
    let ports = ((l4 >> 16) as u16, (l4 >> 32) as u16);
    let Some(p) = pod_next_hop::<V6>(ctx, s, l4 as u8, ports, |p| {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = read(ctx, ETH_HLEN + ip6::SADDR.start)?;
        p.__bindgen_anon_4.ipv6_dst = read(ctx, ETH_HLEN + ip6::DADDR.start)?;
        Some(())
    }) else {
        return NEXT;
    };
    into_pod_after_hop::<V6>(ctx, p)
}

/// Whether `lb_xdp` marks the frames it DNATs to a backend on this node
/// (in their XDP metadata, see [`xdp_mark`]): unless the agent's probe
/// found the kernel refusing XDP programs `bpf_xdp_adjust_meta`. Then
/// `lb_tc_ext_ingress` looks every packet up instead
/// (`tc::from_outside` with `tc::Mark::Unmarked`).
#[inline(always)]
pub fn xdp_marks() -> bool {
    LB_XDP_META.load() != 0
}

/// [`xdp_marks`]: `lb_common::XDP_META_GLOBAL`, 1 unless the agent wrote
/// 0 at load. The verifier knows a frozen read-only value, so with 0 it
/// never sees the helper call behind it.
#[unsafe(no_mangle)]
static LB_XDP_META: Global<u8> = Global::new(1);

/// How `lb_xdp` marked the packet, in the 4 bytes of metadata in front of
/// it: `XDP_META_LOCAL_DNAT` (DNATed to a backend on this node),
/// `XDP_META_LOCAL_ICMP` (an ICMP error translated towards one); 0 when
/// it did not.
#[inline(always)]
pub fn xdp_mark(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the program's context; plain fields are read
    // through the raw pointer.
    let meta = unsafe { (*ctx.skb.skb).data_meta } as usize;
    if meta + 4 > ctx.data() {
        return 0;
    }
    // SAFETY: `meta..meta + 4` lies inside the metadata, checked above
    // against the start of the packet.
    unsafe { (meta as *const u32).read_unaligned() }
}

/// BPF host routing of a north-south packet that `lb_xdp` DNATed to a
/// backend on this node ([`xdp_mark`]), at the external interface's
/// ingress (`lb_tc_ext_ingress`): into the backend's pod when the FIB's
/// next hop is its interface, with the flow's reply entry marked
/// `HOST_ROUTED`, so that the backend's replies leave past the host stack
/// as well ([`redirect_reply`]): the host's conntrack then sees neither
/// direction, never one alone. Else `NEXT`: the stack delivers it, as
/// without host routing. Fragments all take the stack path (the caller
/// leaves them): its defragmentation would wait for a first fragment sent
/// past it.
///
/// The IPv4 flow comes as scalars (`addrs` = `saddr | daddr << 32`, `l4`
/// = `proto | sport << 16 | dport << 32`), as [`redirect_translated`]'s:
/// given a reference to the parsed flow, LLVM read a register that one
/// path never wrote, and the verifier refused it (`R8 !read_ok`).
#[inline(never)]
pub fn from_outside4(skb: *mut __sk_buff, addrs: u64, l4: u64) -> i32 {
    let ctx = &TcContext::new(skb);
    let (saddr, daddr) = (addrs as u32, (addrs >> 32) as u32);
    verdict(ctx, from_outside::<V4>(ctx, &saddr, &daddr, l4 as u8, ((l4 >> 16) as u16, (l4 >> 32) as u16)))
}

/// [`from_outside4`] for IPv6, of the flow parsed into this CPU's
/// `LB6_SCRATCH` slot (`scratch::TC_INGRESS`); fragments are the caller's
/// to leave alone.
#[inline(always)]
pub fn from_outside6(ctx: &TcContext, f: &Flow<V6>) -> Result<i32, Error> {
    from_outside::<V6>(ctx, &f.saddr, &f.daddr, f.proto, (f.sport, f.dport))
}

#[inline(always)]
fn from_outside<F: Routed>(ctx: &TcContext, saddr: &F::Addr, daddr: &F::Addr, proto: u8, ports: (u16, u16)) -> Result<i32, Error> {
    let Some(s) = scratch() else {
        return Ok(NEXT);
    };
    let key = CtKeyOf::new(*daddr, *saddr, ports.1, ports.0, proto, CT_REPLY);
    let Some(e) = ct::get::<F>(&key) else {
        return Ok(NEXT);
    };
    let Some(p) = hop_into_pod::<F>(ctx, s, saddr, daddr, proto, ports)? else {
        return Ok(NEXT);
    };
    if !ct::marked(e, ct_entry_flags::HOST_ROUTED) {
        ct::mark(e, ct_entry_flags::HOST_ROUTED);
        // The forward entry too (once per flow): `lb_xdp` finds an ICMP
        // error about the flow by it.
        if let Some(t) = ct::get::<F>(&ct::load(e).twin_key(&key)) {
            ct::mark(t, ct_entry_flags::HOST_ROUTED);
        }
    }
    Ok(into_pod(p))
}

/// The next hop of a packet from outside (`saddr` -> `daddr`, `proto`,
/// `ports`) when it is a pod interface of this node, with the packet's
/// TTL (hop limit) and MACs rewritten for it; `None` (the packet left as
/// it was) when not, or when the TTL has expired.
#[inline(always)]
fn hop_into_pod<'a, F: Routed>(
    ctx: &TcContext,
    s: &'a mut Scratch,
    saddr: &F::Addr,
    daddr: &F::Addr,
    proto: u8,
    ports: (u16, u16),
) -> Result<Option<&'a FibParams>, Error> {
    let Some(p) = pod_next_hop::<F>(ctx, s, proto, ports, |p| {
        F::fib_addrs(p, saddr, daddr, 0);
        Some(())
    }) else {
        return Ok(None);
    };
    Ok(F::hop(ctx, p)?.then_some(p))
}

/// Into the pod behind `p` after [`Routed::hop`]; `NEXT` when the TTL
/// (hop limit) has expired: the stack answers it. A packet that could not
/// be rewritten is counted and dropped as `tc::verdict` does, without its
/// debug log: that log's call took IPv6's exact path (`ingress6`, 432
/// bytes, then this) past the verifier's 512.
#[inline(always)]
fn into_pod_after_hop<F: Routed>(ctx: &TcContext, p: &FibParams) -> i32 {
    match F::hop(ctx, p) {
        Ok(true) => into_pod(p),
        Ok(false) => NEXT,
        Err(e) => match e.count_drop() {
            None => NEXT,
            Some(_) => TC_ACT_SHOT,
        },
    }
}

/// BPF host routing of a whole packet (no fragment) leaving a pod for no
/// frontend: when it is the reply of a translated flow (a backend
/// answering) and its client is a pod of this node, translated back and
/// redirected into the client's pod; else `NEXT`, untouched (the client
/// interface's egress translates it after the stack routed it, as without
/// host routing: translated here, its frontend source would meet
/// reverse-path filtering on the backend's interface). Costs every such
/// packet (pod to pod) one conntrack lookup.
///
/// The flow comes as scalars, `addrs` = `saddr | daddr << 32`, `l4` =
/// `sport | dport << 16 | proto << 32 | tcp_flags << 40`, `seq_off` =
/// `seq | l4_off << 32`, and is rebuilt on this function's stack: given a
/// reference to the caller's flow, LLVM kept that flow in memory in
/// `lb_tc_ingress`, where the verifier lost the bounds of its header
/// offset (and a flow in the per-CPU scratch has no bounds at all).
#[inline(never)]
pub fn redirect_reply(skb: *mut __sk_buff, addrs: u64, l4: u64, seq_off: u64) -> i32 {
    let ctx = &TcContext::new(skb);
    let Some(s) = scratch() else {
        return NEXT;
    };
    let f = Flow::<V4> {
        saddr: addrs as u32,
        daddr: (addrs >> 32) as u32,
        sport: l4 as u16,
        dport: (l4 >> 16) as u16,
        proto: (l4 >> 32) as u8,
        tcp_flags: (l4 >> 40) as u8,
        seq: seq_off as u32,
        // Bounded again for the verifier (an IPv4 header ends by 74).
        l4_off: (seq_off >> 32) as usize & 0xff,
        frag: Fragment::No,
        ip_id: 0,
        tos: 0,
        tot_len: 0,
        df: false,
    };
    verdict(ctx, reply(ctx, s, &f))
}

/// [`redirect_reply`] for IPv6, of the flow `lb_tc_ingress6` parsed into
/// this CPU's `LB6_SCRATCH` slot (`scratch::TC_INGRESS`), a whole packet.
/// Called from `lb_tc_ingress6_rest`: with `lb_tc_ingress6`'s frame (296
/// bytes), this one's (264: the key and the entry) exceeded the
/// verifier's 512.
#[inline(never)]
pub fn redirect_reply6(skb: *mut __sk_buff) -> i32 {
    let ctx = &TcContext::new(skb);
    let (Some(s), Some(parsed)) = (scratch(), crate::scratch::get(crate::scratch::TC_INGRESS)) else {
        return NEXT;
    };
    // SAFETY: `lb_tc_ingress6`'s first look parsed this packet's flow into
    // the slot on this run, before its tail call here (which keeps the
    // CPU).
    let f = unsafe { parsed.flow.assume_init_ref() };
    verdict(ctx, reply(ctx, s, f))
}

#[inline(always)]
fn reply<F: Routed>(ctx: &TcContext, s: &mut Scratch, f: &Flow<F>) -> Result<i32, Error> {
    let key = ct::key_of(f, CT_REPLY);
    let Some(e) = ct::get::<F>(&key) else {
        return Ok(NEXT);
    };
    let entry = ct::load(e);
    let Some(p) = next_hop::<F>(ctx, s, f.proto, (entry.nat_sport, entry.nat_dport), |p| {
        F::fib_addrs(p, &entry.nat_saddr, &entry.nat_daddr, 0);
        Some(())
    }) else {
        return Ok(NEXT);
    };
    // Into a client pod of this node; or, for a north-south flow whose
    // client packets came past the host stack, out towards the client.
    let north_south = entry.flags & ct_entry_flags::HOST_ROUTED != 0;
    if !north_south && !pod_iface(p.ifindex) {
        return Ok(NEXT);
    }
    // The TTL first: a packet that cannot be redirected leaves untouched.
    if !F::hop(ctx, p)? {
        return Ok(NEXT);
    }
    ct::seen(&key, e, f, now_ns());
    nat::translate(ctx, f, &entry)?;
    // (The flag read again from the entry's copy: a flag of its own kept
    // across the calls above took `redirect_reply`'s frame from 160 to 168
    // bytes, and its chain with `lb_tc_ingress` past the verifier's 512.)
    Ok(if entry.flags & ct_entry_flags::HOST_ROUTED != 0 { out_of(p) } else { into_pod(p) })
}
