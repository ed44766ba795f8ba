//! Service and backend lookups shared by the tc and socket programs.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use lb_common::{
    Affinity4, Affinity4Key, Backend4, BackendKey, Config, RevNat4, RevNatKey, SCOPE_EXTERNAL,
    Service4Key, Service4Value, SlotKey, config_flags, svc_flags,
};

use crate::maps::{LB_CONFIG, LB4_AFFINITY, LB4_BACKENDS, LB4_MAGLEV, LB4_REVNAT, LB4_SERVICES, LB4_SLOTS};

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
#[inline(always)]
pub fn select_backend(cfg: &Config, svc: &Service4Value, hash: u32, client: u64) -> Option<(u32, Backend4)> {
    if svc.count == 0 {
        return None;
    }
    if svc.flags & svc_flags::AFFINITY == 0 {
        return pick(cfg, svc, hash);
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
    let (id, be) = pick(cfg, svc, hash)?;
    // An LRU insert only fails on a bad argument; affinity is then simply
    // not recorded for this connection.
    let _ = LB4_AFFINITY.insert(&key, &Affinity4 { last_used: now, backend_id: id, _pad: 0 }, 0);
    Some((id, be))
}

#[inline(always)]
fn pick(cfg: &Config, svc: &Service4Value, hash: u32) -> Option<(u32, Backend4)> {
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
    let slot = (unsafe { bpf_get_prandom_u32() } % svc.count as u32) as u16;
    let key = SlotKey {
        svc_id: svc.id,
        slot,
        generation: svc.generation,
    };
    // SAFETY: read once and copied.
    let backend_id = unsafe { LB4_SLOTS.get(&key) }?.backend_id;
    Some((backend_id, backend(backend_id)?))
}
