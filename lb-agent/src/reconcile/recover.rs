//! Taking over the maps at start: IDs and their versions, generations,
//! slots, whatever an earlier agent (this version or an older one) left,
//! in both families' maps. Leftovers of an interrupted run are cleaned up:
//! slots of a dead generation (an update interrupted before or after its
//! flip), rev-NAT slots, names and Maglev tables without a frontend (an
//! interrupted add or removal); VIPs and backends nothing uses go at the
//! first `apply`, once it has counted every frontend.
//!
//! Frontend IDs are one space for both families: an ID is in use when a
//! frontend of either family holds it, and a free ID keeps the higher of
//! the versions its two rev-NAT slots hold, so its next user moves past
//! both.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, Ipv6Addr},
};

use lb_common::{SlotKey, sizes};
use tracing::{debug, warn};

use super::{
    Families, FamilyState, MapFamily, MapKind, MapStore, Reconciler,
    backends::{InstalledBackend, Use},
    frontends::{Installed, SlotRange},
    ids::{IdSlot, Ids},
};
use crate::{
    maps::{MapsError, svc_name_str},
    model::{BackendAddr, Protocol},
    vips::Vips,
};

/// What one family's maps hold.
struct Found<A: MapFamily> {
    state: FamilyState<A>,
    /// Versions of its rev-NAT slots, by frontend ID.
    revnat_versions: HashMap<u32, u16>,
}

impl<M: MapStore> Reconciler<M> {
    /// Takes over whatever `maps` hold: IDs and their versions,
    /// generations, slots, of both families. Leftovers of an interrupted
    /// run (slots of a dead generation, rev-NAT slots without a frontend)
    /// are cleaned up.
    pub fn recover(mut maps: M) -> Result<Self, MapsError> {
        let mut live_slots = BTreeSet::new();
        let v4 = recover_family::<Ipv4Addr, M>(&mut maps, &BTreeSet::new(), &mut live_slots)?;
        let ids4: BTreeSet<u32> = v4.state.frontends.values().map(|f| f.id).collect();
        let v6 = recover_family::<Ipv6Addr, M>(&mut maps, &ids4, &mut live_slots)?;
        let live: BTreeMap<u32, u16> =
            v4.state.frontends.values().map(|f| (f.id, f.version)).chain(v6.state.frontends.values().map(|f| (f.id, f.version))).collect();
        let mut slots: BTreeMap<u32, IdSlot> = BTreeMap::new();
        for (&id, &version) in v4.revnat_versions.iter().chain(&v6.revnat_versions) {
            let slot = slots.entry(id).or_insert(IdSlot { id, used: false, version });
            slot.version = slot.version.max(version);
        }
        for (&id, &version) in &live {
            slots.insert(id, IdSlot { id, used: true, version });
        }
        let frontend_ids = Ids::recover(maps.max_entries(MapKind::RevNat), slots.into_values());
        // Leftovers.
        let dead_slots: Vec<SlotKey> = maps.slots()?.into_iter().map(|(k, _)| k).filter(|k| !live_slots.contains(k)).collect();
        if !dead_slots.is_empty() {
            maps.remove_slots(&dead_slots)?;
        }
        clear_revnats(&mut maps, &v4.state)?;
        clear_revnats(&mut maps, &v6.state)?;
        for (id, _) in maps.names()? {
            if !live.contains_key(&id) {
                maps.remove_name(id)?;
            }
        }
        for id in maps.maglev_ids()? {
            if !live.contains_key(&id) {
                maps.remove_maglev(id)?;
            }
        }
        debug!(
            frontends = v4.state.frontends.len(),
            frontends6 = v6.state.frontends.len(),
            backends = v4.state.backends.len(),
            backends6 = v6.state.backends.len(),
            "recovered state from the pinned maps"
        );
        Ok(Reconciler {
            maps,
            fam: Families { v4: v4.state, v6: v6.state },
            scan_unused: true,
            hasher: foldhash::quality::FixedState::with_seed(0x6c62_2d61_6765_6e74),
            pending_purge: BTreeSet::new(),
            stale_slots: Vec::new(),
            frontend_ids,
            maglev_m: sizes::MAGLEV_M,
            node_name: None,
            look_at_all: true,
        })
    }
}

/// Takes over one family's frontends and backends. A frontend entry whose
/// ID a frontend of the other family already holds (`taken`), or that
/// this agent does not write (an unknown scope or protocol), is removed.
fn recover_family<A: MapFamily, M: MapStore>(
    maps: &mut M,
    taken: &BTreeSet<u32>,
    live_slots: &mut BTreeSet<SlotKey>,
) -> Result<Found<A>, MapsError> {
    let mut state = recover_backends::<A, M>(maps)?;
    let revnat_versions: HashMap<u32, u16> = maps.revnats::<A>()?.iter().map(|(id, r)| (*id, A::revnat_slot(r).version)).collect();
    let mut foreign: Vec<A::ServiceKey> = Vec::new();
    for (key, value) in maps.services::<A>()? {
        // Only entries this agent writes are taken over. Any other would
        // point at slots and an ID that are cleaned up and handed out
        // again below.
        let Some(addr) = A::frontend_addr(&key).filter(|_| !taken.contains(&value.frontend_id)) else {
            foreign.push(key);
            continue;
        };
        let range = SlotRange { id: value.frontend_id, generation: value.generation, count: value.count as usize };
        let mut slots = Vec::with_capacity(range.count);
        for k in range.keys() {
            live_slots.insert(k);
            if let Some(s) = maps.slot(&k)? {
                slots.push(s.backend_id);
            }
        }
        let name = maps.name(value.frontend_id)?.map(|n| svc_name_str(&n)).unwrap_or_default();
        let uses: Vec<Use<A>> = slots
            .iter()
            .filter_map(|id| state.backend_addrs.get(id))
            .map(|addr| Use { addr: *addr, flags: state.backends.get(addr).map_or(0, |b| b.flags) })
            .collect();
        let version = revnat_versions.get(&value.frontend_id).copied().unwrap_or(0);
        state.frontends.insert(
            addr,
            Installed {
                id: value.frontend_id,
                version,
                generation: value.generation,
                allowed: slots.iter().copied().collect(),
                slots,
                flags: value.flags,
                affinity_timeout: value.affinity_timeout,
                name,
                // Unknown after a restart: the first apply rebuilds it.
                maglev_m: 0,
                digest: 0,
                uses,
            },
        );
    }
    for key in &foreign {
        warn!(?key, map = A::SERVICES.name(), "removing a frontend entry this agent does not write");
        maps.remove_service::<A>(key)?;
    }
    for f in state.frontends.values() {
        for u in &f.uses {
            state.refs.entry(u.addr).or_default().count(u.flags, true);
        }
    }
    state.vips = Vips::recover(maps)?;
    let counts: Vec<(A, u32)> = state.frontends.iter().map(|(addr, f)| (addr.ip, f.flags)).collect();
    for (ip, flags) in counts {
        state.vips.count(ip, flags, true);
    }
    Ok(Found { state, revnat_versions })
}

/// Clears the rev-NAT slots of a family that no frontend of it holds
/// (their versions kept).
fn clear_revnats<A: MapFamily, M: MapStore>(maps: &mut M, state: &FamilyState<A>) -> Result<(), MapsError> {
    let ours: BTreeSet<u32> = state.frontends.values().map(|f| f.id).collect();
    for (id, r) in maps.revnats::<A>()? {
        let slot = A::revnat_slot(&r);
        if slot.ip.is_some() && !ours.contains(&id) {
            maps.set_revnat::<A>(id, &A::free_revnat(slot.version))?;
        }
    }
    Ok(())
}

/// Reads a family's backend array: the backends installed, and the IDs
/// with their versions. A slot holding a backend this agent cannot have
/// written (an unknown protocol) is cleared, its version kept.
fn recover_backends<A: MapFamily, M: MapStore>(maps: &mut M) -> Result<FamilyState<A>, MapsError> {
    let slots = maps.backends::<A>()?;
    let mut by_addr = BTreeMap::new();
    let mut ids = Vec::with_capacity(slots.len());
    for (id, be) in &slots {
        let slot = A::backend_slot(be);
        let addr = slot.ip.and_then(|ip| Some(BackendAddr { ip, port: slot.port, proto: Protocol::from_number(slot.proto)? }));
        if slot.ip.is_some() && addr.is_none() {
            warn!(id, proto = slot.proto, map = A::BACKENDS.name(), "clearing a backend entry this agent does not write");
            maps.set_backend::<A>(*id, &A::free_backend(slot.version))?;
        }
        ids.push(IdSlot { id: *id, used: addr.is_some(), version: slot.version });
        if let Some(addr) = addr {
            by_addr.insert(addr, InstalledBackend { id: *id, flags: slot.flags, version: slot.version });
        }
    }
    let mut state = FamilyState::new(Ids::recover(maps.max_entries(A::BACKENDS), ids));
    state.backend_addrs = by_addr.iter().map(|(a, b)| (b.id, *a)).collect();
    state.backends = by_addr;
    Ok(state)
}
