//! Taking over the maps at start: IDs and their versions, generations,
//! slots, whatever an earlier agent (this version or an older one) left.
//! Leftovers of an interrupted run are cleaned up: slots of a dead
//! generation (an update interrupted before or after its flip), rev-NAT
//! slots, names and Maglev tables without a frontend (an interrupted add
//! or removal); VIPs and backends nothing uses go at the first `apply`,
//! once it has counted every frontend.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use lb_common::{Backend4, RevNat4, Service4Key, SlotKey, sizes};
use tracing::{debug, warn};

use super::{
    MapStore, Reconciler,
    backends::{InstalledBackend, Refs, Use},
    frontends::{Installed, SlotRange},
    ids::{IdSlot, Ids},
};
use crate::{
    maps::{MapsError, svc_name_str},
    model::{BackendAddr, FrontendAddr, Protocol},
    vips::Vips,
};

/// The backends found in `LB4_BACKENDS`.
struct FoundBackends {
    by_addr: BTreeMap<BackendAddr, InstalledBackend>,
    ids: Ids,
}

fn backend_addr(be: &Backend4) -> Option<BackendAddr> {
    let proto = Protocol::from_number(be.proto)?;
    Some(BackendAddr { ip: Ipv4Addr::from(be.addr.to_ne_bytes()), port: u16::from_be(be.port), proto })
}

impl<M: MapStore> Reconciler<M> {
    /// Takes over whatever `maps` hold: IDs and their versions,
    /// generations, slots. Leftovers of an interrupted run (slots of a
    /// dead generation, rev-NAT slots without a frontend) are cleaned up.
    pub fn recover(mut maps: M) -> Result<Self, MapsError> {
        let backends = recover_backends(&mut maps)?;
        let backend_by_id: HashMap<u32, BackendAddr> = backends.by_addr.iter().map(|(a, b)| (b.id, *a)).collect();
        let revnats: HashMap<u32, RevNat4> = maps.revnats()?.into_iter().collect();
        let mut frontends = BTreeMap::new();
        let mut live_slots = BTreeSet::new();
        let mut foreign: Vec<Service4Key> = Vec::new();
        for (key, value) in maps.services()? {
            // Only entries this agent writes are taken over. Any other
            // (an unknown scope or protocol) would point at slots and an ID
            // that are cleaned up and handed out again below.
            let Some(addr) = FrontendAddr::from_key(&key) else {
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
            let uses: Vec<Use> = slots
                .iter()
                .filter_map(|id| backend_by_id.get(id))
                .map(|addr| Use { addr: *addr, flags: backends.by_addr.get(addr).map_or(0, |b| b.flags) })
                .collect();
            let version = revnats.get(&value.frontend_id).map_or(0, |r| r.version);
            frontends.insert(
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
            warn!(?key, "removing a frontend entry this agent does not write");
            maps.remove_service(key)?;
        }
        let live_ids: BTreeSet<u32> = frontends.values().map(|f| f.id).collect();
        let frontend_ids = Ids::recover(
            maps.max_entries(super::MapKind::RevNat),
            revnats.iter().map(|(&id, r)| IdSlot { id, used: live_ids.contains(&id), version: r.version }),
        );
        // Leftovers.
        let dead_slots: Vec<SlotKey> = maps.slots()?.into_iter().map(|(k, _)| k).filter(|k| !live_slots.contains(k)).collect();
        maps.remove_slots(&dead_slots)?;
        for (id, r) in &revnats {
            if r.addr != 0 && !live_ids.contains(id) {
                maps.set_revnat(*id, &RevNat4 { addr: 0, port: 0, version: r.version })?;
            }
        }
        for (id, _) in maps.names()? {
            if !live_ids.contains(&id) {
                maps.remove_name(id)?;
            }
        }
        for id in maps.maglev_ids()? {
            if !live_ids.contains(&id) {
                maps.remove_maglev(id)?;
            }
        }
        debug!(frontends = frontends.len(), backends = backends.by_addr.len(), "recovered state from the pinned maps");
        let mut refs: HashMap<BackendAddr, Refs> = HashMap::new();
        for f in frontends.values() {
            for u in &f.uses {
                refs.entry(u.addr).or_default().count(u.flags, true);
            }
        }
        let mut vips = Vips::recover(&maps)?;
        for (addr, f) in &frontends {
            vips.count(addr.ip, f.flags, true);
        }
        Ok(Reconciler {
            maps,
            refs,
            scan_unused: true,
            retry_backends: BTreeSet::new(),
            vips,
            hasher: foldhash::quality::FixedState::with_seed(0x6c62_2d61_6765_6e74),
            pending_purge: BTreeSet::new(),
            shrunk: Vec::new(),
            stale_slots: Vec::new(),
            unclean: BTreeSet::new(),
            backend_addrs: backend_by_id,
            frontends,
            backends: backends.by_addr,
            frontend_ids,
            backend_ids: backends.ids,
            maglev_m: sizes::MAGLEV_M,
            node_name: None,
            src_ranges: BTreeMap::new(),
        })
    }
}

/// Reads `LB4_BACKENDS`: the backends installed, and the IDs with their
/// versions. A slot holding a backend this agent cannot have written (an
/// unknown protocol) is cleared, its version kept.
fn recover_backends<M: MapStore>(maps: &mut M) -> Result<FoundBackends, MapsError> {
    let slots = maps.backends()?;
    let mut by_addr = BTreeMap::new();
    let mut ids = Vec::with_capacity(slots.len());
    for (id, be) in &slots {
        let addr = if be.addr == 0 { None } else { backend_addr(be) };
        if be.addr != 0 && addr.is_none() {
            warn!(id, proto = be.proto, "clearing a backend entry this agent does not write");
            maps.set_backend(*id, &Backend4 { addr: 0, port: 0, proto: 0, flags: 0, version: be.version, _pad: 0 })?;
        }
        ids.push(IdSlot { id: *id, used: addr.is_some(), version: be.version });
        if let Some(addr) = addr {
            by_addr.insert(addr, InstalledBackend { id: *id, flags: be.flags, version: be.version });
        }
    }
    let ids = Ids::recover(maps.max_entries(super::MapKind::Backends), ids);
    Ok(FoundBackends { by_addr, ids })
}
