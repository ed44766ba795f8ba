//! Service and backend lookups shared by the tc and socket programs.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use lb_common::{
    Backend4, BackendKey, CtEntry, RevNat4, RevNatKey, SCOPE_EXTERNAL, Service4Key,
    Service4Value, SlotKey, config_flags,
};

use crate::maps::{LB_CONFIG, LB4_BACKENDS, LB4_REVNAT, LB4_SERVICES, LB4_SLOTS};

/// The configuration, or `None` until the agent marked it ready.
#[inline(always)]
pub fn config() -> Option<lb_common::Config> {
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

/// Picks one of the service's live backend slots at random. Each CPU draws
/// its own random number: there is no shared counter to race on.
#[inline(always)]
pub fn select_backend(svc: &Service4Value) -> Option<(u32, Backend4)> {
    if svc.count == 0 {
        return None;
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

#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn new_ct_entry(backend_id: u32, rev_nat_id: u32, tcp_flags: u8) -> CtEntry {
    CtEntry {
        last_seen: now_ns(),
        backend_id,
        rev_nat_id,
        tcp_flags,
        _pad: [0; 7],
    }
}
