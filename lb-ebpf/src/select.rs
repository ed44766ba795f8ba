//! Frontend lookups and backend selection, shared by the tc, XDP and socket
//! programs.

use core::ptr::{addr_of, addr_of_mut};

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{
    Affinity4, Affinity4Key, Backend4, Config, CtEntry, NodeConfig, RevNat4, RevNatKey, SCOPE_EXTERNAL, SCOPE_INTERNAL, Service4Key,
    Service4Value, SlotKey, Vip4, config_flags, node_flags, svc_flags,
};

use crate::{
    family::FamilyMaps,
    l3::L3,
    maps::{LB_CONFIG, LB_NODE, LB4_AFFINITY, LB4_BACKENDS, LB4_MAGLEV, LB4_REVNAT, LB4_SERVICES, LB4_SLOTS, LB4_VIPS},
    parse::Flow,
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
    node_settings().copied()
}

/// [`node_config`], read in place.
#[inline(always)]
pub fn node_settings() -> Option<&'static NodeConfig> {
    LB_NODE.get(0).filter(|n| n.flags & node_flags::READY != 0)
}

/// The kinds of frontend at `addr`, if it is a frontend address at all.
#[inline(always)]
pub fn vip(addr: u32) -> Option<Vip4> {
    // SAFETY: the reference lives only until the plain-data value is
    // copied out (an update may recycle the element under us: at worst a
    // stale copy).
    unsafe { LB4_VIPS.get(addr).copied() }
}

/// Finds the frontend for (addr, port, proto). The value is copied out: a
/// hash map slot can be recycled under us once the agent replaces it.
#[inline(always)]
pub fn service(addr: u32, port: u16, proto: u8) -> Option<Service4Value> {
    scoped_service(addr, port, proto, SCOPE_EXTERNAL)
}

/// [`service`] for a client inside the cluster (a pod, the host): where
/// the frontend has a second entry for such clients (the external address
/// of an `externalTrafficPolicy: Local` Service, see `SCOPE_INTERNAL`),
/// that one.
#[inline(always)]
pub fn in_cluster_service(addr: u32, port: u16, proto: u8) -> Option<Service4Value> {
    let svc = service(addr, port, proto)?;
    if svc.flags & svc_flags::HAS_INTERNAL == 0 {
        return Some(svc);
    }
    // Should it be missing (between the agent's two writes when the entry
    // comes or goes), the external entry serves.
    scoped_service(addr, port, proto, SCOPE_INTERNAL).or(Some(svc))
}

#[inline(always)]
fn scoped_service(addr: u32, port: u16, proto: u8, scope: u8) -> Option<Service4Value> {
    let key = Service4Key { addr, port, proto, scope };
    // SAFETY: as in `vip`: copied out at once.
    unsafe { LB4_SERVICES.get(key).copied() }
}

/// The backend in slot `id`, if the slot is in use.
#[inline(always)]
pub fn backend(id: u32) -> Option<Backend4> {
    let be = *LB4_BACKENDS.get(id)?;
    (be.addr != 0).then_some(be)
}

/// The frontend in slot `id`, if the slot is in use.
#[inline(always)]
pub fn rev_nat(id: u32) -> Option<RevNat4> {
    let rn = *LB4_REVNAT.get(id)?;
    (rn.addr != 0).then_some(rn)
}

/// Whether the frontend and backend a flow was made for are both still
/// installed (the slots hold the versions the flow saw). A flow of a
/// removed frontend or backend is invalid at once: the next packet starts
/// a new flow (a UDP client moves on, a TCP one gets reset), and the
/// entries go with garbage collection.
#[inline(always)]
pub fn flow_valid(e: &CtEntry) -> bool {
    LB4_REVNAT.get(e.frontend_id).is_some_and(|f| f.is(e.frontend_version))
        && LB4_BACKENDS.get(e.backend_id).is_some_and(|b| b.is(e.backend_version))
}

#[inline(always)]
pub fn random() -> u32 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_get_prandom_u32() }
}

/// Chooses the backend of a new flow `f` of family `F` to `svc` (see
/// [`select_backend_of`]): the flow's hash for Maglev, its client address
/// for affinity.
#[inline(always)]
pub fn flow_backend<F: L3>(cfg: &Config, svc: &Service4Value, f: &Flow<F>, now: u64) -> Option<(u32, F::Backend)> {
    select_backend_of::<F>(cfg, svc, F::flow_hash(f), || F::affinity_client(f.saddr), now)
}

/// Chooses the backend of a new connection to a frontend of family `F`:
/// 1. with session affinity, the client's backend while it is fresh and
///    still exists;
/// 2. with Maglev, the service's table at `hash % M`, so every node sends
///    a flow to the same backend and a table change moves few flows;
/// 3. otherwise a random slot. Each CPU draws its own random number:
///    there is no shared counter to race on.
///
/// The slots, Maglev tables and affinities are shared by the families
/// (they name IDs); the backend comes from the family's own backend map.
/// `client` gives the affinity key's client (an address or its prefix, or
/// a netns cookie for host sockets), asked only with affinity (IPv6's
/// reads `LB6_NODE`). `None` only when the service has no slot or a map
/// read raced with the agent.
#[inline(always)]
pub fn select_backend_of<F: FamilyMaps>(
    cfg: &Config,
    svc: &Service4Value,
    hash: u32,
    client: impl FnOnce() -> u64,
    now: u64,
) -> Option<(u32, F::Backend)> {
    if svc.count == 0 {
        return None;
    }
    if svc.flags & svc_flags::AFFINITY == 0 {
        return pick::<F>(cfg, svc, hash);
    }
    let frontend_version = F::frontend(svc.frontend_id).map_or(0, |f| f.2);
    let key = Affinity4Key { client: client(), frontend_id: svc.frontend_id, frontend_version, _pad: 0 };
    if let Some(a) = LB4_AFFINITY.get_ptr_mut(key) {
        // SAFETY: `a` is a map value pointer from a lookup, valid and
        // aligned for the program's run. Other CPUs may write it too, so
        // each field is read and written once, volatile, through the raw
        // pointer (READ_ONCE/WRITE_ONCE), never through a reference; a
        // racing CPU at worst writes the same fields.
        let (last_used, backend_id, version) = unsafe {
            (
                addr_of!((*a).last_used).read_volatile(),
                addr_of!((*a).backend_id).read_volatile(),
                addr_of!((*a).backend_version).read_volatile(),
            )
        };
        let timeout = svc.affinity_timeout as u64 * 1_000_000_000;
        if now.saturating_sub(last_used) <= timeout {
            // Only while the backend is still the one the client had.
            if let Some(be) = F::backend(backend_id).filter(|b| F::backend_version(b) == version) {
                // SAFETY: as above.
                unsafe { addr_of_mut!((*a).last_used).write_volatile(now) };
                return Some((backend_id, be));
            }
        }
    }
    let (id, be) = pick::<F>(cfg, svc, hash)?;
    // An LRU insert only fails on a bad argument; affinity is then simply
    // not recorded for this connection.
    let value = Affinity4 { last_used: now, backend_id: id, backend_version: F::backend_version(&be), _pad: 0 };
    let _ = LB4_AFFINITY.insert(key, value, 0);
    Some((id, be))
}

#[inline(always)]
fn pick<F: FamilyMaps>(cfg: &Config, svc: &Service4Value, hash: u32) -> Option<(u32, F::Backend)> {
    // Read and checked here, before any helper call: LLVM may not carry
    // the caller's check of `svc.count` across one, and would leave a
    // division-by-zero panic in the object, which the verifier rejects.
    let count = svc.count as u32;
    if count == 0 {
        return None;
    }
    if svc.flags & svc_flags::MAGLEV != 0 && cfg.maglev_m != 0 {
        let index = hash % cfg.maglev_m;
        // SAFETY: the reference lives only until the ID is copied out.
        let id = unsafe { LB4_MAGLEV.get_value(&RevNatKey { frontend_id: svc.frontend_id }, &index) }.copied();
        if let Some(id) = id
            && let Some(be) = F::backend(id)
        {
            return Some((id, be));
        }
        // No table yet (or a race with its replacement): random slot.
    }
    let key = SlotKey { frontend_id: svc.frontend_id, slot: (random() % count) as u16, generation: svc.generation };
    // SAFETY: the reference lives only until the ID is copied out. (The
    // agent deletes a generation of slots only a sync after it stopped
    // being live, so a frontend value read just before a flip still finds
    // its slots.)
    let id = unsafe { LB4_SLOTS.get(key) }?.backend_id;
    Some((id, F::backend(id)?))
}
