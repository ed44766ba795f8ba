//! Connection tracking: the two entries of a flow (see `lb_common::CtEntryOf`
//! for what they hold and `lb_common::ct` for the state rules), how a
//! packet updates them, and how a new flow gets a reply tuple of its own.
//! Written once over the address family (`FamilyMaps` picks the maps:
//! `LB4_CT_*` or `LB6_CT_*`).
//!
//! Entries live in a map other CPUs write at the same time: every field is
//! read and written once through a raw pointer (READ_ONCE/WRITE_ONCE); no
//! reference to a map value is ever held. Two CPUs adding different TCP
//! flags at the same instant may lose one of them; the next packet carrying
//! it (a retransmitted FIN) adds it again.

use core::ptr::{addr_of, addr_of_mut};

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{
    CT_REPLY, CT_SERVICE, Config, CtEntryOf, IPPROTO_TCP, NodeConfig, V4, ct,
    ct::{DEFAULT_NAT_PORTS, ReplyTuple},
    ct_entry_flags, ct_flags, stat,
};

use crate::{
    clock::now_ns,
    error::Error,
    family::{Ct, CtKey, FamilyMaps},
    l3::L3,
    parse::Flow,
    select::random,
    stats,
};

/// The entry at `key` in the map of its family and protocol.
#[inline(always)]
pub fn get<F: FamilyMaps>(key: &CtKey<F>) -> Option<*mut Ct<F>> {
    F::ct_get(key)
}

#[inline(always)]
fn insert<F: FamilyMaps>(key: &CtKey<F>, value: &Ct<F>, flags: u32) -> Result<(), i32> {
    F::ct_insert(key, value, flags as u64)
}

#[inline(always)]
fn remove<F: FamilyMaps>(key: &CtKey<F>) {
    // Gone already is as good.
    let _ = F::ct_remove(key);
}

/// A copy of the entry at `e`.
#[inline(always)]
pub fn load<A: Copy>(e: *mut CtEntryOf<A>) -> CtEntryOf<A> {
    // SAFETY: `e` is a map value pointer from a lookup (valid and aligned
    // for the program's run); other CPUs may write it, so it is read once,
    // volatile, never through a reference.
    unsafe { e.read_volatile() }
}

/// The key of a packet's own tuple, in direction `dir`.
#[inline(always)]
pub fn key_of<F: FamilyMaps>(f: &Flow<F>, dir: u8) -> CtKey<F> {
    CtKey::<F>::new(f.saddr, f.daddr, f.sport, f.dport, f.proto, dir)
}

/// Whether a forward entry still carries its flow for a packet with
/// `tcp_flags`: its frontend and backend still installed (see
/// `FamilyMaps::flow_valid`), not timed out, and not a closed flow that a
/// new SYN reopens. A SYN on a live flow follows it.
#[inline(always)]
pub fn forward_usable<F: FamilyMaps>(cfg: &Config, proto: u8, e: &Ct<F>, tcp_flags: u8, now: u64) -> bool {
    let st = ct::entry_state(proto, CT_SERVICE, e);
    !ct::expired(&cfg.timeouts, st, e.last_seen, now) && !ct::restarts(st, tcp_flags) && F::flow_valid(e)
}

/// What conntrack holds for a packet towards a frontend.
pub enum Forward<E> {
    /// The flow's entry; the packet is recorded in it.
    Flow(E),
    /// No usable entry: the packet starts a new flow, over an old flow's
    /// entry (timed out, closed, or of a removed backend) when `replace`.
    New { replace: bool },
}

/// Looks up the forward entry of the flow `f` (client -> frontend) belongs
/// to at `now`, and records the packet in it when it is usable.
#[inline(always)]
pub fn forward<F: L3>(cfg: &Config, f: &Flow<F>, now: u64) -> Forward<Ct<F>> {
    let key = key_of(f, CT_SERVICE);
    F::keep_in_memory(&key);
    let Some(e) = get::<F>(&key) else {
        return Forward::New { replace: false };
    };
    let current = load(e);
    F::keep_in_memory(&current);
    if !forward_usable::<F>(cfg, f.proto, &current, f.tcp_flags, now) {
        return Forward::New { replace: true };
    }
    seen(&key, e, f, now);
    Forward::Flow(current)
}

/// The forward entry of the tuple of `f` (client -> frontend), if any,
/// not yet judged nor recorded: the XDP and tc programs look the flow up
/// before they know the packet is for a frontend (an entry [`marked`]
/// `ct_entry_flags::NORTH_SOUTH` or `FROM_POD`, made by the program
/// itself, tells them), and [`follow`] judges and records it. Only the
/// pointer is kept: a copy of the entry on the stack as well would take
/// `lb_xdp` past the 512-byte stack limit.
#[inline(always)]
pub fn find_forward<F: L3>(f: &Flow<F>) -> Option<*mut Ct<F>> {
    get::<F>(&key_of(f, CT_SERVICE))
}

/// Whether the entry at `e` has `mark` (`ct_entry_flags`) in its flags.
#[inline(always)]
pub fn marked<A>(e: *mut CtEntryOf<A>, mark: u8) -> bool {
    // SAFETY: as in `load`, one field read once.
    unsafe { addr_of!((*e).flags).read_volatile() & mark != 0 }
}

/// Adds `mark` (`ct_entry_flags`) to the flags of the entry at `e`,
/// written only when it is missing. Not atomic: a flag another CPU adds
/// to the same entry at the same instant may be lost (see the module's
/// note); the next packet that sets it sets it again.
#[inline(always)]
pub fn mark<A>(e: *mut CtEntryOf<A>, mark: u8) {
    // SAFETY: as in `load`; one field, read and written in place.
    unsafe {
        let flags = addr_of!((*e).flags).read_volatile();
        if flags & mark == 0 {
            addr_of_mut!((*e).flags).write_volatile(flags | mark);
        }
    }
}

/// [`forward`] for the entry `found` by [`find_forward`] (`None`: no
/// entry): the packet is recorded in it when it is usable.
#[inline(always)]
pub fn follow<F: L3>(cfg: &Config, f: &Flow<F>, found: Option<*mut Ct<F>>, now: u64) -> Forward<Ct<F>> {
    let Some(e) = found else {
        return Forward::New { replace: false };
    };
    let current = load(e);
    if !forward_usable::<F>(cfg, f.proto, &current, f.tcp_flags, now) {
        return Forward::New { replace: true };
    }
    seen(&key_of(f, CT_SERVICE), e, f, now);
    Forward::Flow(current)
}

/// The reply entry of the flow `f` belongs to (backend -> client, or a
/// hairpin flow's answer), with the packet recorded in it, and the time it
/// was seen; `None` when `f` is no reply of a translated flow. The clock is
/// read only for a reply.
#[inline(always)]
pub fn reply<F: FamilyMaps>(f: &Flow<F>) -> Option<(Ct<F>, u64)> {
    let key = key_of(f, CT_REPLY);
    let e = get::<F>(&key)?;
    let now = now_ns();
    seen(&key, e, f, now);
    Some((load(e), now))
}

/// A pod's packet `f` to an address that is no frontend: if it is a bare
/// TCP SYN, it opens a direct connection, whose replies must pass
/// untouched. If a translated flow
/// that has ended (closed, or timed out) left its reply entry on the same
/// tuple (the client reused its source port, towards the backend itself
/// this time), that entry is dropped here: kept, it would translate the
/// new connection's replies to the old frontend, and the client would drop
/// them. A live flow's entry stays (the two connections really clash; the
/// backend's own TCP cannot tell them apart either).
#[inline(always)]
pub fn forget_ended_reply<F: FamilyMaps>(cfg: &Config, f: &Flow<F>) {
    if f.proto != IPPROTO_TCP || !f.has_l4() || !ct::bare_syn(f.tcp_flags) {
        return;
    }
    let key = CtKey::<F>::new(f.daddr, f.saddr, f.dport, f.sport, f.proto, CT_REPLY);
    let Some(e) = get::<F>(&key) else {
        return;
    };
    let old = load(e);
    let st = ct::entry_state(f.proto, CT_REPLY, &old);
    if st == ct::State::TcpClosing || ct::expired(&cfg.timeouts, st, old.last_seen, now_ns()) {
        remove::<F>(&key);
    }
}

/// Records a packet of a flow in its entry `e` (at `key`): the time, and
/// for TCP the flags and highest sequence number, plus the flags its twin
/// must learn to know the flow's state. A RST outside the flow's window is
/// not recorded: it passes, but does not end the flow.
#[inline(always)]
pub fn seen<F: FamilyMaps>(key: &CtKey<F>, e: *mut Ct<F>, f: &Flow<F>, now: u64) {
    // Written only when the (coarse) clock moved: most packets leave the
    // entry's cache line clean, so CPUs sharing a flow do not bounce it.
    // SAFETY: `e` is a map value pointer from a lookup, valid and aligned
    // for the program's run; other CPUs may write the entry too, so each
    // field is read or written once, volatile, through the raw pointer
    // (READ_ONCE/WRITE_ONCE), and no reference to it is made.
    unsafe {
        let last = addr_of_mut!((*e).last_seen);
        if last.read_volatile() != now {
            last.write_volatile(now);
        }
    }
    if f.proto != IPPROTO_TCP || !f.has_l4() {
        return;
    }
    // SAFETY: as above.
    let (old, eflags, highest) =
        unsafe { (addr_of!((*e).tcp_flags).read_volatile(), addr_of!((*e).flags).read_volatile(), addr_of!((*e).seq).read_volatile()) };
    let mut flags = f.tcp_flags;
    if flags & ct_flags::RST != 0 && !ct::rst_in_window(eflags, highest, f.seq) {
        flags &= !ct_flags::RST;
        stats::count(stat::RST_IGNORED);
    }
    if eflags & ct_entry_flags::SEQ_SEEN == 0 {
        // SAFETY: as above.
        unsafe {
            addr_of_mut!((*e).seq).write_volatile(f.seq);
            addr_of_mut!((*e).flags).write_volatile(eflags | ct_entry_flags::SEQ_SEEN);
        }
    } else if ct::seq_after(f.seq, highest) {
        // SAFETY: as above.
        unsafe { addr_of_mut!((*e).seq).write_volatile(f.seq) };
    }
    let new = old | flags;
    if new == old {
        return;
    }
    // SAFETY: as above.
    unsafe { addr_of_mut!((*e).tcp_flags).write_volatile(new) };
    let tell = ct::to_propagate(key.dir, old, new);
    if tell != 0 {
        let twin = load(e).twin_key(key);
        if let Some(t) = get::<F>(&twin) {
            // SAFETY: as above, for the twin's entry `t`.
            unsafe {
                let peer = addr_of!((*t).peer_flags).read_volatile();
                addr_of_mut!((*t).peer_flags).write_volatile(peer | tell);
            }
        }
    }
}

/// What the client's source (an address of type `A`) becomes in a new
/// flow.
#[derive(Clone, Copy)]
pub enum Source<A = u32> {
    /// The client's address, and its port unless the reply tuple is taken.
    Client,
    /// The hairpin address (a pod reaching itself; `L3::hairpin_addr`),
    /// the client's port unless taken.
    Hairpin,
    /// This node's address with a port from the SNAT range (north-south to
    /// a backend on another node).
    Snat(A),
}

/// A new flow of family `F`: its frontend, the backend chosen for it, and
/// what its source becomes.
pub struct NewFlow<F: FamilyMaps = V4> {
    pub frontend_id: u32,
    pub backend_id: u32,
    pub backend: F::Backend,
    pub source: Source<F::Addr>,
    /// Where new source ports come from (host order, inclusive): SNAT, and
    /// a client port whose reply tuple is taken.
    pub ports: (u16, u16),
}

/// The source ports of new flows: this node's SNAT range (`LB_NODE`), or
/// [`DEFAULT_NAT_PORTS`] until the agent wrote it.
#[inline(always)]
pub fn nat_ports(node: Option<NodeConfig>) -> (u16, u16) {
    node.map_or(DEFAULT_NAT_PORTS, |n| (n.nat_port_min, n.nat_port_max))
}

/// Source ports tried for a new flow's reply tuple before it is dropped.
const PORT_TRIES: u32 = 32;

/// Records a new flow `new` of packet `f`, with `mark` (`ct_entry_flags`:
/// the program that made it) added to the forward entry's flags, and
/// returns its forward entry (what the packet must be rewritten to).
///
/// The reply tuple (backend -> client's source) must be the flow's alone,
/// or replies would be translated for the wrong flow: a client reuses a
/// source port towards different Services, and two of them may share a
/// backend. So the reply entry is inserted first with `BPF_NOEXIST`; when
/// the tuple is held by another flow (or, for TCP, was held so recently
/// that the backend may keep it in TIME_WAIT), the flow gets another source
/// port from `new.ports`, as netfilter's NAT clash resolution does. The
/// forward entry goes in last; with `replace` it overwrites an old one (a
/// timed out or closed flow reopened).
#[inline(always)]
pub fn create_marked<F: L3>(cfg: &Config, f: &Flow<F>, new: &NewFlow<F>, now: u64, replace: bool, mark: u8) -> Result<Ct<F>, Error> {
    let (be_addr, be_port) = F::backend_addr(&new.backend).ok_or(Error::NoSlot)?;
    let frontend_version = F::frontend(new.frontend_id).map_or(0, |f| f.2);
    let (src_addr, keep_port) = match new.source {
        Source::Client => (f.saddr, true),
        Source::Hairpin => (F::hairpin_addr().unwrap_or(f.saddr), true),
        Source::Snat(addr) => (addr, false),
    };
    // The first packet's flags and sequence number, as `seen` would record
    // them (a flow may start mid-stream: its entries were lost).
    let tcp = f.proto == IPPROTO_TCP && f.has_l4();
    let reply = Ct::<F> {
        last_seen: now,
        nat_saddr: f.daddr,
        nat_daddr: f.saddr,
        nat_sport: f.dport,
        nat_dport: f.sport,
        backend_id: new.backend_id,
        frontend_id: new.frontend_id,
        seq: 0,
        tcp_flags: 0,
        peer_flags: if tcp { ct::to_propagate(CT_SERVICE, 0, f.tcp_flags) } else { 0 },
        flags: 0,
        _pad: 0,
        frontend_version,
        backend_version: F::backend_version(&new.backend),
    };
    F::keep_in_memory(&reply);
    let (min, max) = new.ports;
    let span = if max >= min { (max - min) as u32 + 1 } else { 1 };
    let mut i = 0;
    let mut port = 0u16;
    let mut found = false;
    // One key on the stack for every lookup and write below (the IPv6
    // path's stack is tight): the reply tuple's, then the forward one's.
    let mut key = CtKey::<F>::new(be_addr, src_addr, be_port, 0, f.proto, CT_REPLY);
    F::keep_in_memory(&key);
    // A constant bound for the verifier.
    while i < PORT_TRIES {
        port = if i == 0 && keep_port { f.sport } else { ((min as u32 + random() % span) as u16).to_be() };
        key.dport = port;
        let rkey = &key;
        if insert::<F>(rkey, &reply, BPF_NOEXIST).is_ok() {
            found = true;
            break;
        }
        if let Some(old) = get::<F>(rkey) {
            let old = load(old);
            if ct::reply_tuple(&cfg.timeouts, f.proto, &old, &reply, now) == ReplyTuple::Reclaim
                && insert::<F>(rkey, &reply, BPF_ANY).is_ok()
            {
                found = true;
                break;
            }
        }
        i += 1;
    }
    if !found {
        return Err(Error::NoPort);
    }
    if keep_port && port != f.sport {
        stats::count(stat::PORT_REMAPPED);
    }
    // The forward entry: the reply entry's value rewritten in place (one
    // entry on the stack, not two: the IPv6 path's stack is tight).
    let mut fwd = reply;
    fwd.nat_sport = port;
    fwd.nat_dport = be_port;
    fwd.seq = if tcp { f.seq } else { 0 };
    fwd.tcp_flags = if tcp { f.tcp_flags & !ct_flags::RST } else { 0 };
    fwd.peer_flags = 0;
    fwd.flags = if tcp { ct_entry_flags::SEQ_SEEN | mark } else { mark };
    // The addresses from the key in memory, not from registers spilled
    // across the loop's helper calls (the same values).
    fwd.nat_saddr = key.daddr;
    fwd.nat_daddr = key.saddr;
    let rkey = key;
    key = key_of(f, CT_SERVICE);
    if insert::<F>(&key, &fwd, if replace { BPF_ANY } else { BPF_NOEXIST }).is_ok() {
        return Ok(fwd);
    }
    // Another CPU recorded this flow meanwhile: follow its choice.
    remove::<F>(&rkey);
    match get::<F>(&key) {
        Some(e) => Ok(load(e)),
        None => Err(Error::CtWrite),
    }
}
