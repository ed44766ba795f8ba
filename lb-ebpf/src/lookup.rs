//! Service and backend lookups shared by the tc and socket programs.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use lb_common::{
    Affinity4, Affinity4Key, Backend4, BackendKey, CT_REPLY, CT_SERVICE, Config, Ct4Key, CtEntry, IPPROTO_TCP,
    RevNat4, RevNatKey, SCOPE_EXTERNAL, Service4Key, Service4Value, SlotKey, config_flags, ct,
    hash::flow_hash, svc_flags,
};

use crate::maps::{
    LB_CONFIG, LB4_AFFINITY, LB4_BACKENDS, LB4_CT, LB4_MAGLEV, LB4_REVNAT, LB4_SERVICES, LB4_SLOTS,
};

/// The configuration, or `None` until the agent marked it ready.
#[inline(always)]
pub fn config() -> Option<Config> {
    let cfg = *LB_CONFIG.get(0)?;
    if cfg.flags & config_flags::READY == 0 {
        return None;
    }
    Some(cfg)
}

/// Finds the frontend for (addr, port, proto). The value is copied out: a
/// hash map slot can be recycled under us once the agent replaces it.
#[inline(always)]
pub fn service(addr: u32, port: u16, proto: u8) -> Option<Service4Value> {
    let key = Service4Key {
        addr,
        port,
        proto,
        scope: SCOPE_EXTERNAL,
    };
    // SAFETY: read once and copied.
    unsafe { LB4_SERVICES.get(&key).copied() }
}

#[inline(always)]
pub fn backend(id: u32) -> Option<Backend4> {
    // SAFETY: read once and copied.
    unsafe { LB4_BACKENDS.get(BackendKey { id }).copied() }
}

#[inline(always)]
pub fn rev_nat(id: u32) -> Option<RevNat4> {
    // SAFETY: read once and copied.
    unsafe { LB4_REVNAT.get(RevNatKey { id }).copied() }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// Chooses the backend of a new connection:
/// 1. with session affinity, the client's backend while it is fresh and
///    still exists;
/// 2. with Maglev, the service's table at `hash % M`, so every node sends
///    a flow to the same backend and a table change moves few flows;
/// 3. otherwise a random live slot. Each CPU draws its own random number:
///    there is no shared counter to race on.
///
/// `client` is the affinity key's client (an address, or a netns cookie
/// for host sockets). `None` only when the service has no slot or a map
/// read raced with the agent.
///
/// `taken` says whether a backend would put the new flow on a tuple the
/// backend may still hold (see [`flow_backend`]); the random pick then
/// tries the next slots. Maglev and a live affinity entry are kept as they
/// are: their point is to be the same backend.
#[inline(always)]
pub fn select_backend<F: Fn(&Backend4) -> bool>(
    cfg: &Config,
    svc: &Service4Value,
    hash: u32,
    client: u64,
    taken: F,
) -> Option<(u32, Backend4)> {
    if svc.count == 0 {
        return None;
    }
    if svc.flags & svc_flags::AFFINITY == 0 {
        return pick(cfg, svc, hash, taken);
    }
    let now = now_ns();
    let key = Affinity4Key { client, svc_id: svc.id, _pad: 0 };
    if let Some(a) = LB4_AFFINITY.get_ptr_mut(&key) {
        // SAFETY: a map value; a racing CPU at worst writes the same fields.
        let a = unsafe { &mut *a };
        let timeout = svc.affinity_timeout as u64 * 1_000_000_000;
        if now.saturating_sub(a.last_used) <= timeout {
            if let Some(be) = backend(a.backend_id) {
                a.last_used = now;
                return Some((a.backend_id, be));
            }
        }
    }
    let (id, be) = pick(cfg, svc, hash, taken)?;
    // An LRU insert only fails on a bad argument; affinity is then simply
    // not recorded for this connection.
    let _ = LB4_AFFINITY.insert(&key, &Affinity4 { last_used: now, backend_id: id, _pad: 0 }, 0);
    Some((id, be))
}

/// Slots a random pick tries before it settles for a taken backend.
const SLOT_TRIES: u32 = 4;

#[inline(always)]
fn pick<F: Fn(&Backend4) -> bool>(cfg: &Config, svc: &Service4Value, hash: u32, taken: F) -> Option<(u32, Backend4)> {
    if svc.flags & svc_flags::MAGLEV != 0 && cfg.maglev_m != 0 {
        let index = hash % cfg.maglev_m;
        // SAFETY: read once and copied.
        let id = unsafe { LB4_MAGLEV.get_value(&RevNatKey { id: svc.id }, &index) }.copied();
        if let Some(id) = id {
            if let Some(be) = backend(id) {
                return Some((id, be));
            }
        }
        // No table yet (or a race with its replacement): random slot.
    }
    let count = svc.count as u32;
    let first = unsafe { bpf_get_prandom_u32() } % count;
    let mut fallback = None;
    // A constant bound for the verifier; the next slots after a random one
    // are as random as the first.
    let mut i = 0;
    while i < SLOT_TRIES && i < count {
        let key = SlotKey {
            svc_id: svc.id,
            slot: ((first + i) % count) as u16,
            generation: svc.generation,
        };
        // SAFETY: read once and copied.
        if let Some(id) = unsafe { LB4_SLOTS.get(&key) }.map(|s| s.backend_id) {
            if let Some(be) = backend(id) {
                if !taken(&be) {
                    return Some((id, be));
                }
                if fallback.is_none() {
                    fallback = Some((id, be));
                }
            }
        }
        i += 1;
    }
    fallback
}

/// How long after its last packet a TCP tuple may still be in TIME_WAIT
/// on the backend (Linux keeps it 60 s).
const TIME_WAIT_NS: u64 = 60 * 1_000_000_000;

/// A client -> frontend packet's tuple (network order) and TCP flags.
pub struct Tuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
}

/// The backend of a client -> frontend flow, for the tc and XDP programs
/// alike: its conntrack entry while that belongs to this frontend, has not
/// timed out or been closed and reopened, and its backend still exists (a
/// terminating backend does: its flows continue); otherwise a new choice,
/// recorded in both directions (the reply entry is what restores the
/// frontend as the source of replies). `Ok(None)` when the frontend has no
/// backend; `Err` when a map read raced with the agent or a write failed.
#[inline(always)]
pub fn flow_backend(cfg: &Config, svc: &Service4Value, t: &Tuple, now: u64) -> Result<Option<(u32, Backend4)>, ()> {
    let key = Ct4Key::new(t.saddr, t.daddr, t.sport, t.dport, t.proto, CT_SERVICE);
    if let Some(entry) = LB4_CT.get_ptr_mut(&key) {
        // SAFETY: a map value pointer; racing updates from other CPUs only
        // touch the timestamp and the flag bits.
        let entry = unsafe { &mut *entry };
        if entry.rev_nat_id == svc.id
            && !ct::expired(&cfg.timeouts, t.proto, entry.tcp_flags, entry.last_seen, now)
            && !ct::restarts(t.proto, entry.tcp_flags, t.tcp_flags)
        {
            if let Some(be) = backend(entry.backend_id) {
                entry.last_seen = now;
                entry.tcp_flags |= t.tcp_flags;
                return Ok(Some((entry.backend_id, be)));
            }
        }
    }
    if svc.count == 0 {
        return Ok(None);
    }
    let hash = flow_hash(t.saddr, t.daddr, t.sport, t.dport, t.proto);
    // A client that reuses its port for another frontend (or the same one
    // after a close) would reach a backend it used before with the very
    // same tuple. If the backend closed first, that tuple sits in TIME_WAIT
    // there and the new SYN may be answered with a stale ACK instead of a
    // SYN-ACK: the connection stalls. kube-proxy's conntrack avoids it by
    // remapping the source port; we avoid that backend when another slot
    // is free of it (our reply entry tells us the tuple was used lately).
    let taken = |be: &Backend4| {
        t.proto == IPPROTO_TCP
            && LB4_CT
                .get_ptr(&Ct4Key::new(be.addr, t.saddr, be.port, t.sport, t.proto, CT_REPLY))
                // SAFETY: a map value pointer, read once.
                .is_some_and(|e| now.saturating_sub(unsafe { (*e).last_seen }) < TIME_WAIT_NS)
    };
    let (backend_id, be) = select_backend(cfg, svc, hash, t.saddr as u64, taken).ok_or(())?;
    let reply_key = Ct4Key::new(be.addr, t.saddr, be.port, t.sport, t.proto, CT_REPLY);
    let reply = CtEntry {
        last_seen: now,
        backend_id,
        rev_nat_id: svc.id,
        peer_addr: t.daddr,
        peer_port: t.dport,
        tcp_flags: 0,
        _pad: 0,
    };
    let service = CtEntry {
        peer_addr: be.addr,
        peer_port: be.port,
        tcp_flags: t.tcp_flags,
        ..reply
    };
    LB4_CT.insert(&reply_key, &reply, 0).map_err(|_| ())?;
    LB4_CT.insert(&key, &service, 0).map_err(|_| ())?;
    Ok(Some((backend_id, be)))
}
