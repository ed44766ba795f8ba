//! Connection tracking: the two entries of a flow (see `lb_common::CtEntry`
//! for what they hold and `lb_common::ct` for the state rules), how a
//! packet updates them, and how a new flow gets a reply tuple of its own.
//!
//! Entries live in a map other CPUs write at the same time: every field is
//! read and written once through a raw pointer (READ_ONCE/WRITE_ONCE); no
//! reference to a map value is ever held. Two CPUs adding different TCP
//! flags at the same instant may lose one of them; the next packet carrying
//! it (a retransmitted FIN) adds it again.

use core::ptr::{addr_of, addr_of_mut};

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{
    Backend4, CT_REPLY, CT_SERVICE, Config, Ct4Key, CtEntry, IPPROTO_TCP, NodeConfig, ct,
    ct::{DEFAULT_NAT_PORTS, ReplyTuple},
    ct_entry_flags, ct_flags, hairpin_addr, stat,
};

use crate::{
    error::Error,
    maps::{LB4_CT_ANY, LB4_CT_TCP},
    parse::Flow,
    select::{flow_valid, now_ns, random, rev_nat},
    stats,
};

/// The entry at `key` in the map of its protocol.
#[inline(always)]
pub fn get(key: &Ct4Key) -> Option<*mut CtEntry> {
    if key.proto == IPPROTO_TCP { LB4_CT_TCP.get_ptr_mut(key) } else { LB4_CT_ANY.get_ptr_mut(key) }
}

#[inline(always)]
fn insert(key: &Ct4Key, value: &CtEntry, flags: u32) -> Result<(), i32> {
    if key.proto == IPPROTO_TCP { LB4_CT_TCP.insert(key, value, flags as u64) } else { LB4_CT_ANY.insert(key, value, flags as u64) }
}

#[inline(always)]
fn remove(key: &Ct4Key) {
    // Gone already is as good.
    let _ = if key.proto == IPPROTO_TCP { LB4_CT_TCP.remove(key) } else { LB4_CT_ANY.remove(key) };
}

/// A copy of the entry at `e`.
#[inline(always)]
pub fn load(e: *mut CtEntry) -> CtEntry {
    // SAFETY: `e` is a map value pointer from a lookup (valid and aligned
    // for the program's run); other CPUs may write it, so it is read once,
    // volatile, never through a reference.
    unsafe { e.read_volatile() }
}

/// The key of a packet's own tuple, in direction `dir`.
#[inline(always)]
pub fn key_of(f: &Flow, dir: u8) -> Ct4Key {
    Ct4Key::new(f.saddr, f.daddr, f.sport, f.dport, f.proto, dir)
}

/// Whether a forward entry still carries its flow for a packet with
/// `tcp_flags`: its frontend and backend still installed (see
/// `select::flow_valid`), not timed out, and not a closed flow that a new
/// SYN reopens. A SYN on a live flow follows it.
#[inline(always)]
pub fn forward_usable(cfg: &Config, proto: u8, e: &CtEntry, tcp_flags: u8, now: u64) -> bool {
    let st = ct::entry_state(proto, CT_SERVICE, e);
    !ct::expired(&cfg.timeouts, st, e.last_seen, now) && !ct::restarts(st, tcp_flags) && flow_valid(e)
}

/// What conntrack holds for a packet towards a frontend.
pub enum Forward {
    /// The flow's entry; the packet is recorded in it.
    Flow(CtEntry),
    /// No usable entry: the packet starts a new flow, over an old flow's
    /// entry (timed out, closed, or of a removed backend) when `replace`.
    New { replace: bool },
}

/// Looks up the forward entry of the flow `f` (client -> frontend) belongs
/// to at `now`, and records the packet in it when it is usable.
#[inline(always)]
pub fn forward(cfg: &Config, f: &Flow, now: u64) -> Forward {
    let key = key_of(f, CT_SERVICE);
    let Some(e) = get(&key) else {
        return Forward::New { replace: false };
    };
    let current = load(e);
    if !forward_usable(cfg, f.proto, &current, f.tcp_flags, now) {
        return Forward::New { replace: true };
    }
    seen(&key, e, f, now);
    Forward::Flow(current)
}

/// The forward entry of the tuple of `f` (client -> frontend), if any,
/// not yet judged nor recorded: the XDP program looks the flow up before
/// it knows the packet is for a frontend (an entry [`marked`]
/// `ct_entry_flags::NORTH_SOUTH` tells it), and [`follow`] finishes what
/// [`forward`] does. Only the pointer is kept: a copy of the entry on the
/// stack as well would take `lb_xdp` past the 512-byte stack limit.
#[inline(always)]
pub fn find_forward(f: &Flow) -> Option<*mut CtEntry> {
    get(&key_of(f, CT_SERVICE))
}

/// Whether the entry at `e` has `mark` (`ct_entry_flags`) in its flags.
#[inline(always)]
pub fn marked(e: *mut CtEntry, mark: u8) -> bool {
    // SAFETY: as in `load`, one field read once.
    unsafe { addr_of!((*e).flags).read_volatile() & mark != 0 }
}

/// [`forward`] for the entry `found` by [`find_forward`] (`None`: no
/// entry): the packet is recorded in it when it is usable.
#[inline(always)]
pub fn follow(cfg: &Config, f: &Flow, found: Option<*mut CtEntry>, now: u64) -> Forward {
    let Some(e) = found else {
        return Forward::New { replace: false };
    };
    let current = load(e);
    if !forward_usable(cfg, f.proto, &current, f.tcp_flags, now) {
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
pub fn reply(f: &Flow) -> Option<(CtEntry, u64)> {
    let key = key_of(f, CT_REPLY);
    let e = get(&key)?;
    let now = now_ns();
    seen(&key, e, f, now);
    Some((load(e), now))
}

/// Records a packet of a flow in its entry `e` (at `key`): the time, and
/// for TCP the flags and highest sequence number, plus the flags its twin
/// must learn to know the flow's state. A RST outside the flow's window is
/// not recorded: it passes, but does not end the flow.
#[inline(always)]
pub fn seen(key: &Ct4Key, e: *mut CtEntry, f: &Flow, now: u64) {
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
        if let Some(t) = get(&twin) {
            // SAFETY: as above, for the twin's entry `t`.
            unsafe {
                let peer = addr_of!((*t).peer_flags).read_volatile();
                addr_of_mut!((*t).peer_flags).write_volatile(peer | tell);
            }
        }
    }
}

/// What the client's source becomes in a new flow.
#[derive(Clone, Copy)]
pub enum Source {
    /// The client's address, and its port unless the reply tuple is taken.
    Client,
    /// The hairpin address (a pod reaching itself), the client's port
    /// unless taken.
    Hairpin,
    /// This node's address with a port from the SNAT range (north-south to
    /// a backend on another node).
    Snat(u32),
}

/// A new flow: its frontend, the backend chosen for it, and what its
/// source becomes.
pub struct NewFlow {
    pub frontend_id: u32,
    pub backend_id: u32,
    pub backend: Backend4,
    pub source: Source,
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

/// Records a new flow `new` of packet `f`, and returns its forward entry
/// (what the packet must be rewritten to).
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
pub fn create(cfg: &Config, f: &Flow, new: &NewFlow, now: u64, replace: bool) -> Result<CtEntry, Error> {
    create_marked(cfg, f, new, now, replace, 0)
}

/// [`create`], with `mark` (`ct_entry_flags`) added to the forward entry's
/// flags.
#[inline(always)]
pub fn create_marked(cfg: &Config, f: &Flow, new: &NewFlow, now: u64, replace: bool, mark: u8) -> Result<CtEntry, Error> {
    let be = &new.backend;
    let frontend_version = rev_nat(new.frontend_id).map_or(0, |f| f.version);
    let (src_addr, keep_port) = match new.source {
        Source::Client => (f.saddr, true),
        Source::Hairpin => (hairpin_addr(), true),
        Source::Snat(addr) => (addr, false),
    };
    // The first packet's flags and sequence number, as `seen` would record
    // them (a flow may start mid-stream: its entries were lost).
    let tcp = f.proto == IPPROTO_TCP && f.has_l4();
    let reply = CtEntry {
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
        backend_version: be.version,
    };
    let (min, max) = new.ports;
    let span = if max >= min { (max - min) as u32 + 1 } else { 1 };
    let mut i = 0;
    let mut port = 0u16;
    let mut found = false;
    // A constant bound for the verifier.
    while i < PORT_TRIES {
        port = if i == 0 && keep_port { f.sport } else { ((min as u32 + random() % span) as u16).to_be() };
        let rkey = Ct4Key::new(be.addr, src_addr, be.port, port, f.proto, CT_REPLY);
        if insert(&rkey, &reply, BPF_NOEXIST).is_ok() {
            found = true;
            break;
        }
        if let Some(old) = get(&rkey) {
            let old = load(old);
            if ct::reply_tuple(&cfg.timeouts, f.proto, &old, &reply, now) == ReplyTuple::Reclaim && insert(&rkey, &reply, BPF_ANY).is_ok() {
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
    let fwd = CtEntry {
        nat_saddr: src_addr,
        nat_daddr: be.addr,
        nat_sport: port,
        nat_dport: be.port,
        seq: if tcp { f.seq } else { 0 },
        tcp_flags: if tcp { f.tcp_flags & !ct_flags::RST } else { 0 },
        peer_flags: 0,
        flags: if tcp { ct_entry_flags::SEQ_SEEN | mark } else { mark },
        ..reply
    };
    let fkey = key_of(f, CT_SERVICE);
    if insert(&fkey, &fwd, if replace { BPF_ANY } else { BPF_NOEXIST }).is_ok() {
        return Ok(fwd);
    }
    // Another CPU recorded this flow meanwhile: follow its choice.
    remove(&Ct4Key::new(be.addr, src_addr, be.port, port, f.proto, CT_REPLY));
    match get(&fkey) {
        Some(e) => Ok(load(e)),
        None => Err(Error::CtWrite),
    }
}
