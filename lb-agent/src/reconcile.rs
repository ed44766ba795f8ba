//! Writes the difference between the desired state and the maps.
//!
//! Ordering rules, so that no packet ever sees a half-written service:
//! - backends are written before any slot points at them;
//! - a frontend's slots are written into the generation that is not live,
//!   then one update of the frontend entry flips `count` and `generation`
//!   together; the old generation is deleted afterwards;
//! - on removal the frontend entry goes first, then its slots, rev-NAT and
//!   name, and backends last once nothing points at them.
//!
//! IDs are recovered from the maps at start, so an agent restart changes
//! nothing that live flows depend on. A failed write (a full map) is
//! reported and leaves the previous state of that frontend in place: the
//! agent never flushes working state because of an error.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use lb_common::{
    Backend4, BackendKey, RevNat4, RevNatKey, SCOPE_EXTERNAL, Service4Value, Slot, SlotKey,
    backend_flags,
};
use tracing::{debug, warn};

use crate::{
    maps::{Maps, MapsError, svc_name, svc_name_str},
    model::{BackendAddr, Desired, Frontend, FrontendAddr, Protocol},
};

/// A frontend as installed in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Installed {
    id: u32,
    generation: u16,
    /// Backend IDs in slot order.
    slots: Vec<u32>,
    flags: u32,
    affinity_timeout: u32,
    name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InstalledBackend {
    id: u32,
    flags: u8,
}

/// What one `apply` did.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Map updates and deletes issued.
    pub ops: u64,
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    /// Frontends or backends that could not be written, with why.
    pub errors: Vec<String>,
}

pub struct Reconciler {
    maps: Maps,
    frontends: BTreeMap<FrontendAddr, Installed>,
    backends: BTreeMap<BackendAddr, InstalledBackend>,
    next_frontend_id: u32,
    next_backend_id: u32,
}

impl Reconciler {
    /// Takes over whatever the pinned maps hold: IDs, generations, slots.
    /// Leftovers of an interrupted run (slots of a dead generation, rev-NAT
    /// entries without a frontend) are cleaned up.
    pub fn recover(mut maps: Maps) -> Result<Self, MapsError> {
        let mut backends = BTreeMap::new();
        let mut backend_by_id = BTreeMap::new();
        let mut next_backend_id = 1;
        for (key, be) in maps.backends.entries()? {
            next_backend_id = next_backend_id.max(key.id.wrapping_add(1));
            let Some(proto) = Protocol::from_number(be.proto) else {
                continue;
            };
            let addr = BackendAddr {
                ip: Ipv4Addr::from(be.addr.to_ne_bytes()),
                port: u16::from_be(be.port),
                proto,
            };
            backends.insert(addr, InstalledBackend { id: key.id, flags: be.flags });
            backend_by_id.insert(key.id, addr);
        }
        let mut frontends = BTreeMap::new();
        let mut live_slots = BTreeSet::new();
        let mut next_frontend_id = 1;
        for (key, value) in maps.services.entries()? {
            next_frontend_id = next_frontend_id.max(value.id.wrapping_add(1));
            let Some(addr) = FrontendAddr::from_key(&key) else {
                continue;
            };
            if key.scope != SCOPE_EXTERNAL {
                continue;
            }
            let mut slots = Vec::with_capacity(value.count as usize);
            for slot in 0..value.count {
                let k = SlotKey { svc_id: value.id, slot, generation: value.generation };
                live_slots.insert(k);
                if let Some(s) = maps.slots.get(&k)? {
                    slots.push(s.backend_id);
                }
            }
            let name = maps
                .names
                .get(&RevNatKey { id: value.id })?
                .map(|n| svc_name_str(&n))
                .unwrap_or_default();
            frontends.insert(
                addr,
                Installed {
                    id: value.id,
                    generation: value.generation,
                    slots,
                    flags: value.flags,
                    affinity_timeout: value.affinity_timeout,
                    name,
                },
            );
        }
        // Leftovers.
        for (key, _) in maps.slots.entries()? {
            if !live_slots.contains(&key) {
                maps.slots.remove(&key)?;
            }
        }
        let live_ids: BTreeSet<u32> = frontends.values().map(|f| f.id).collect();
        for (key, _) in maps.revnat.entries()? {
            if !live_ids.contains(&key.id) {
                maps.revnat.remove(&key)?;
            }
        }
        for (key, _) in maps.names.entries()? {
            if !live_ids.contains(&key.id) {
                maps.names.remove(&key)?;
            }
        }
        debug!(
            frontends = frontends.len(),
            backends = backends.len(),
            "recovered state from the pinned maps"
        );
        Ok(Reconciler {
            maps,
            frontends,
            backends,
            next_frontend_id,
            next_backend_id,
        })
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// The ID of an installed frontend.
    pub fn frontend_id(&self, addr: &FrontendAddr) -> Option<u32> {
        self.frontends.get(addr).map(|f| f.id)
    }

    /// Brings the maps to `desired` with the fewest writes.
    pub fn apply(&mut self, desired: &Desired) -> Stats {
        let mut stats = Stats::default();
        self.write_backends(desired, &mut stats);
        for fe in desired.values() {
            self.write_frontend(fe, &mut stats);
        }
        let gone: Vec<FrontendAddr> = self
            .frontends
            .keys()
            .filter(|addr| !desired.contains_key(addr))
            .copied()
            .collect();
        for addr in gone {
            self.remove_frontend(addr, &mut stats);
        }
        self.remove_unused_backends(desired, &mut stats);
        stats
    }

    fn write_backends(&mut self, desired: &Desired, stats: &mut Stats) {
        let mut wanted: BTreeMap<BackendAddr, u8> = BTreeMap::new();
        for fe in desired.values() {
            for b in &fe.backends {
                let flags = if b.terminating { backend_flags::TERMINATING } else { 0 };
                // An endpoint terminating for one port is terminating.
                *wanted.entry(b.addr).or_default() |= flags;
            }
        }
        for (addr, flags) in wanted {
            let existing = self.backends.get(&addr).copied();
            if existing.is_some_and(|b| b.flags == flags) {
                continue;
            }
            let id = match existing {
                Some(b) => b.id,
                None => self.alloc_backend_id(),
            };
            let value = Backend4 {
                addr: u32::from_ne_bytes(addr.ip.octets()),
                port: addr.port.to_be(),
                proto: addr.proto.number(),
                flags,
            };
            stats.ops += 1;
            match self.maps.backends.insert(&BackendKey { id }, &value) {
                Ok(()) => {
                    self.backends.insert(addr, InstalledBackend { id, flags });
                }
                Err(e) => stats.errors.push(format!("backend {addr}: {e}")),
            }
        }
    }

    fn alloc_backend_id(&mut self) -> u32 {
        let used: BTreeSet<u32> = self.backends.values().map(|b| b.id).collect();
        alloc(&mut self.next_backend_id, &used)
    }

    fn alloc_frontend_id(&mut self) -> u32 {
        let used: BTreeSet<u32> = self.frontends.values().map(|f| f.id).collect();
        alloc(&mut self.next_frontend_id, &used)
    }

    fn write_frontend(&mut self, fe: &Frontend, stats: &mut Stats) {
        let mut slots = Vec::new();
        for b in fe.slot_backends() {
            match self.backends.get(&b.addr) {
                Some(installed) => slots.push(installed.id),
                // Its write failed and was reported; serve with the rest.
                None => continue,
            }
        }
        let current = self.frontends.get(&fe.addr).cloned();
        let result = match &current {
            None => self.add_frontend(fe, slots, stats).map(|()| stats.added += 1),
            Some(inst)
                if inst.slots == slots
                    && inst.flags == fe.flags
                    && inst.affinity_timeout == fe.affinity_timeout
                    && inst.name == fe.name =>
            {
                Ok(())
            }
            Some(inst) => self
                .update_frontend(fe, inst, slots, stats)
                .map(|()| stats.updated += 1),
        };
        if let Err(e) = result {
            let msg = format!("frontend {} ({}): {e}", fe.name, fe.addr);
            warn!("{msg}; it keeps its previous state");
            stats.errors.push(msg);
        }
    }

    fn add_frontend(&mut self, fe: &Frontend, slots: Vec<u32>, stats: &mut Stats) -> Result<(), MapsError> {
        let id = self.alloc_frontend_id();
        let generation = 0;
        let result = (|| {
            stats.ops += 1;
            self.maps.revnat.insert(
                &RevNatKey { id },
                &RevNat4 {
                    addr: fe.addr.key().addr,
                    port: fe.addr.key().port,
                    _pad: 0,
                },
            )?;
            stats.ops += 1;
            self.maps.names.insert(&RevNatKey { id }, &svc_name(&fe.name))?;
            self.write_slots(id, generation, &slots, stats)?;
            stats.ops += 1;
            self.maps.services.insert(
                &fe.addr.key(),
                &service_value(id, generation, slots.len(), fe),
            )
        })();
        if let Err(e) = result {
            // Undo the parts that were written; the frontend entry itself
            // was the last write, so no packet saw any of them.
            self.delete_slots(id, generation, slots.len(), stats);
            let _ = self.maps.revnat.remove(&RevNatKey { id });
            let _ = self.maps.names.remove(&RevNatKey { id });
            return Err(e);
        }
        self.frontends.insert(
            fe.addr,
            Installed {
                id,
                generation,
                slots,
                flags: fe.flags,
                affinity_timeout: fe.affinity_timeout,
                name: fe.name.clone(),
            },
        );
        Ok(())
    }

    fn update_frontend(
        &mut self,
        fe: &Frontend,
        inst: &Installed,
        slots: Vec<u32>,
        stats: &mut Stats,
    ) -> Result<(), MapsError> {
        let id = inst.id;
        let generation = if slots == inst.slots { inst.generation } else { 1 - inst.generation };
        if generation != inst.generation {
            if let Err(e) = self.write_slots(id, generation, &slots, stats) {
                self.delete_slots(id, generation, slots.len(), stats);
                return Err(e);
            }
        }
        stats.ops += 1;
        if let Err(e) = self
            .maps
            .services
            .insert(&fe.addr.key(), &service_value(id, generation, slots.len(), fe))
        {
            if generation != inst.generation {
                self.delete_slots(id, generation, slots.len(), stats);
            }
            return Err(e);
        }
        if generation != inst.generation {
            self.delete_slots(id, inst.generation, inst.slots.len(), stats);
        }
        if inst.name != fe.name {
            stats.ops += 1;
            self.maps.names.insert(&RevNatKey { id }, &svc_name(&fe.name))?;
        }
        self.frontends.insert(
            fe.addr,
            Installed {
                id,
                generation,
                slots,
                flags: fe.flags,
                affinity_timeout: fe.affinity_timeout,
                name: fe.name.clone(),
            },
        );
        Ok(())
    }

    fn remove_frontend(&mut self, addr: FrontendAddr, stats: &mut Stats) {
        let Some(inst) = self.frontends.get(&addr).cloned() else {
            return;
        };
        stats.ops += 1;
        if let Err(e) = self.maps.services.remove(&addr.key()) {
            let msg = format!("removing frontend {} ({addr}): {e}", inst.name);
            warn!("{msg}");
            stats.errors.push(msg);
            return;
        }
        self.delete_slots(inst.id, inst.generation, inst.slots.len(), stats);
        stats.ops += 2;
        let _ = self.maps.revnat.remove(&RevNatKey { id: inst.id });
        let _ = self.maps.names.remove(&RevNatKey { id: inst.id });
        self.frontends.remove(&addr);
        stats.removed += 1;
    }

    fn remove_unused_backends(&mut self, desired: &Desired, stats: &mut Stats) {
        let wanted: BTreeSet<BackendAddr> = desired
            .values()
            .flat_map(|fe| fe.backends.iter().map(|b| b.addr))
            .collect();
        let in_slots: BTreeSet<u32> = self.frontends.values().flat_map(|f| f.slots.iter().copied()).collect();
        let unused: Vec<(BackendAddr, u32)> = self
            .backends
            .iter()
            .filter(|(addr, b)| !wanted.contains(addr) && !in_slots.contains(&b.id))
            .map(|(addr, b)| (*addr, b.id))
            .collect();
        for (addr, id) in unused {
            stats.ops += 1;
            match self.maps.backends.remove(&BackendKey { id }) {
                Ok(()) => {
                    self.backends.remove(&addr);
                }
                Err(e) => stats.errors.push(format!("removing backend {addr}: {e}")),
            }
        }
    }

    fn write_slots(&mut self, id: u32, generation: u16, slots: &[u32], stats: &mut Stats) -> Result<(), MapsError> {
        for (i, backend_id) in slots.iter().enumerate() {
            stats.ops += 1;
            self.maps.slots.insert(
                &SlotKey { svc_id: id, slot: i as u16, generation },
                &Slot { backend_id: *backend_id },
            )?;
        }
        Ok(())
    }

    fn delete_slots(&mut self, id: u32, generation: u16, count: usize, stats: &mut Stats) {
        for i in 0..count {
            stats.ops += 1;
            if let Err(e) = self.maps.slots.remove(&SlotKey { svc_id: id, slot: i as u16, generation }) {
                warn!("deleting slot {i} of frontend {id}: {e}");
            }
        }
    }
}

fn service_value(id: u32, generation: u16, count: usize, fe: &Frontend) -> Service4Value {
    Service4Value {
        id,
        count: count as u16,
        generation,
        flags: fe.flags,
        affinity_timeout: fe.affinity_timeout,
    }
}

/// The next free ID at or after `next`, skipping 0 and IDs in use. IDs are
/// not reused right away, so a stale conntrack entry cannot point at a
/// different frontend or backend that happened to take a freed ID.
fn alloc(next: &mut u32, used: &BTreeSet<u32>) -> u32 {
    loop {
        let id = *next;
        *next = next.wrapping_add(1);
        if id != 0 && !used.contains(&id) {
            return id;
        }
    }
}
