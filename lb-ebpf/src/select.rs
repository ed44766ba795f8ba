//! Frontend lookups and backend selection, shared by the tc, XDP and socket
//! programs.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use lb_common::{
    Affinity4, Affinity4Key, Backend4, BackendKey, Config, NodeConfig, RevNat4, RevNatKey, SCOPE_EXTERNAL,
    Service4Key, Service4Value, SlotKey, Vip4, config_flags, node_flags, svc_flags,
};

use crate::maps::{
    LB_CONFIG, LB_NODE, LB4_AFFINITY, LB4_BACKENDS, LB4_MAGLEV, LB4_REVNAT, LB4_SERVICES, LB4_SLOTS, LB4_VIPS,
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

/// This node's north-south settings, once the agent wrote them.
#[inline(always)]
pub fn node_config() -> Option<NodeConfig> {
    let n = *LB_NODE.get(0)?;
    (n.flags & node_flags::READY != 0).then_some(n)
}

/// The kinds of frontend at `addr`, if it is a frontend address at all.
#[inline(always)]
pub fn vip(addr: u32) -> Option<Vip4> {
    // SAFETY: read once and copied.
    unsafe { LB4_VIPS.get(&addr).copied() }
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
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn random() -> u32 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_get_prandom_u32() }
}

/// Chooses the backend of a new connection:
/// 1. with session affinity, the client's backend while it is fresh and
///    still exists;
/// 2. with Maglev, the service's table at `hash % M`, so every node sends
///    a flow to the same backend and a table change moves few flows;
/// 3. otherwise a random slot. Each CPU draws its own random number:
///    there is no shared counter to race on.
///
/// `client` is the affinity key's client (an address, or a netns cookie
/// for host sockets). `None` only when the service has no slot or a map
/// read raced with the agent.
#[inline(always)]
pub fn select_backend(cfg: &Config, svc: &Service4Value, hash: u32, client: u64, now: u64) -> Option<(u32, Backend4)> {
    if svc.count == 0 {
        return None;
    }
    if svc.flags & svc_flags::AFFINITY == 0 {
        return pick(cfg, svc, hash);
    }
    let key = Affinity4Key { client, svc_id: svc.id, _pad: 0 };
    if let Some(a) = LB4_AFFINITY.get_ptr_mut(&key) {
        // SAFETY: a map value other CPUs may write too: each field is read
        // and written once (READ_ONCE/WRITE_ONCE); a racing CPU at worst
        // writes the same fields.
        let (last_used, backend_id) = unsafe {
            (
                core::ptr::addr_of!((*a).last_used).read_volatile(),
                core::ptr::addr_of!((*a).backend_id).read_volatile(),
            )
        };
        let timeout = svc.affinity_timeout as u64 * 1_000_000_000;
        if now.saturating_sub(last_used) <= timeout {
            if let Some(be) = backend(backend_id) {
                // SAFETY: as above.
                unsafe { core::ptr::addr_of_mut!((*a).last_used).write_volatile(now) };
                return Some((backend_id, be));
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
    let key = SlotKey {
        svc_id: svc.id,
        slot: (random() % svc.count as u32) as u16,
        generation: svc.generation,
    };
    // SAFETY: read once and copied.
    let id = unsafe { LB4_SLOTS.get(&key) }?.backend_id;
    Some((id, backend(id)?))
}
