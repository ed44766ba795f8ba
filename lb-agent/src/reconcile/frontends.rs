//! Frontend entries: the `LB4_SERVICES` entry, its slots (two generations,
//! flipped atomically), its rev-NAT slot (address and version), name, and
//! Maglev table.

use std::collections::BTreeSet;

use lb_common::{RevNat4, RevNatKey, Service4Value, Slot, SlotKey, svc_flags};
use tracing::warn;

use super::{Reconciler, Stats, backends::Use};
use crate::{
    maglev,
    maps::{MapsError, svc_name},
    model::{Frontend, FrontendAddr},
};

/// A frontend as installed in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub id: u32,
    /// Its rev-NAT slot's version.
    pub version: u16,
    pub generation: u16,
    /// Backend IDs in slot order.
    pub slots: Vec<u32>,
    pub flags: u32,
    pub affinity_timeout: u32,
    pub name: String,
    /// Backends whose established flows may continue: the slot backends
    /// plus serving-but-terminating ones. Flows to any other backend are
    /// invalid or purged.
    pub allowed: BTreeSet<u32>,
    /// M of the installed Maglev table; 0 = none, or unknown after a
    /// restart (then it is rebuilt).
    pub maglev_m: u32,
    /// Digest of the desired frontend this was written from; 0 = unknown
    /// (recovered from the maps, or the node name or M changed), so the
    /// next `apply` looks at it again.
    pub digest: u64,
    /// The backends it counts as using (see `Reconciler::refs`).
    pub uses: Vec<Use>,
}

/// What a frontend's entries are to become.
struct Target<'a> {
    fe: &'a Frontend,
    /// Backend IDs in slot order.
    slots: Vec<u32>,
    maglev_m: u32,
}

/// An installed frontend's current entries, for an update.
struct Current {
    id: u32,
    generation: u16,
    slots: Vec<u32>,
    maglev_m: u32,
    name: String,
}

fn service_value(id: u32, generation: u16, count: usize, fe: &Frontend) -> Service4Value {
    Service4Value { id, count: count as u16, generation, flags: fe.flags, affinity_timeout: fe.affinity_timeout }
}

fn rev_nat(fe: &FrontendAddr, version: u16) -> RevNat4 {
    let key = fe.key();
    RevNat4 { addr: key.addr, port: key.port, version }
}

impl Reconciler {
    /// Writes one changed frontend. On success returns the uses it had
    /// before; on failure (it keeps its previous state) gives back `uses`.
    pub(super) fn write_frontend(&mut self, fe: &Frontend, digest: u64, uses: Vec<Use>, stats: &mut Stats) -> Result<Vec<Use>, Vec<Use>> {
        let slots: Vec<u32> = fe
            .slot_backends()
            // A backend whose write failed was reported; serve with the rest.
            .filter_map(|b| self.backends.get(&b.addr).map(|i| i.id))
            .collect();
        let allowed: BTreeSet<u32> = fe.backends.iter().filter_map(|b| self.backends.get(&b.addr).map(|x| x.id)).collect();
        let maglev_m = if fe.flags & svc_flags::MAGLEV != 0 && !slots.is_empty() { self.maglev_m } else { 0 };
        if let Some(inst) = self.frontends.get_mut(&fe.addr)
            && inst.slots == slots
            && inst.flags == fe.flags
            && inst.affinity_timeout == fe.affinity_timeout
            && inst.name == fe.name
            && inst.maglev_m == maglev_m
        {
            // Nothing to write; only terminating backends may differ.
            if inst.allowed != allowed {
                let removed: Vec<u32> = inst.allowed.difference(&allowed).copied().collect();
                if !removed.is_empty() {
                    self.shrunk.push((inst.id, removed));
                }
                inst.allowed = allowed;
            }
            inst.digest = digest;
            return Ok(std::mem::replace(&mut inst.uses, uses));
        }
        let target = Target { fe, slots, maglev_m };
        let current = self.frontends.get(&fe.addr).map(|i| Current {
            id: i.id,
            generation: i.generation,
            slots: i.slots.clone(),
            maglev_m: i.maglev_m,
            name: i.name.clone(),
        });
        let result = match &current {
            None => self.add_frontend(&target, stats).inspect(|_| stats.added += 1),
            Some(cur) => self.update_frontend(&target, cur, stats).map(|generation| {
                stats.updated += 1;
                (cur.id, self.frontend_ids.version(cur.id), generation)
            }),
        };
        match result {
            Ok((id, version, generation)) => {
                let old = self.frontends.insert(
                    fe.addr,
                    Installed {
                        id,
                        version,
                        generation,
                        slots: target.slots,
                        flags: fe.flags,
                        affinity_timeout: fe.affinity_timeout,
                        name: fe.name.clone(),
                        allowed,
                        maglev_m,
                        digest,
                        uses,
                    },
                );
                self.vips.count(fe.addr.ip, fe.flags, true);
                if let Some(old) = &old {
                    self.vips.count(fe.addr.ip, old.flags, false);
                    let now = &self.frontends[&fe.addr].allowed;
                    let removed: Vec<u32> = old.allowed.difference(now).copied().collect();
                    if !removed.is_empty() {
                        self.shrunk.push((id, removed));
                    }
                }
                Ok(old.map(|i| i.uses).unwrap_or_default())
            }
            Err(e) => {
                let msg = format!("frontend {} ({}): {e}", fe.name, fe.addr);
                warn!("{msg}; it keeps its previous state");
                stats.errors.push(msg);
                Err(uses)
            }
        }
    }

    /// The Maglev table of a frontend as backend IDs: keys are the slot
    /// backends' `ip:port`, so every node builds the same table.
    fn maglev_table(&self, slots: &[u32], m: u32) -> Vec<u32> {
        let keys: Vec<String> = slots.iter().map(|id| self.backend_addrs.get(id).map(|a| a.to_string()).unwrap_or_default()).collect();
        maglev::build(&keys, m).into_iter().map(|i| slots[i as usize]).collect()
    }

    /// Writes a new frontend; returns its ID, version and generation.
    fn add_frontend(&mut self, t: &Target<'_>, stats: &mut Stats) -> Result<(u32, u16, u16), MapsError> {
        let Some((id, version)) = self.frontend_ids.alloc() else {
            return Err(MapsError::Full { name: self.maps.revnat.name, max_entries: self.maps.revnat.max_entries });
        };
        let generation = 0;
        let result = (|| {
            stats.ops += 1;
            self.maps.revnat.set(id, &rev_nat(&t.fe.addr, version))?;
            stats.ops += 1;
            self.maps.names.insert(&RevNatKey { id }, &svc_name(&t.fe.name))?;
            self.write_slots(id, generation, &t.slots, stats)?;
            if t.maglev_m != 0 {
                let table = self.maglev_table(&t.slots, t.maglev_m);
                stats.ops += self.maps.write_maglev(id, &table)? as u64;
                stats.maglev_tables += 1;
            }
            stats.ops += 1;
            self.maps.services.insert(&t.fe.addr.key(), &service_value(id, generation, t.slots.len(), t.fe))
        })();
        if let Err(e) = result {
            // Undo the parts that were written; the frontend entry itself
            // was the last write, so no packet saw any of them.
            self.delete_slots(id, generation, t.slots.len(), stats);
            let _ = self.maps.remove_maglev(id);
            let _ = self.maps.revnat.set(id, &RevNat4 { addr: 0, port: 0, version });
            let _ = self.maps.names.remove(&RevNatKey { id });
            self.frontend_ids.free(id);
            return Err(e);
        }
        Ok((id, version, generation))
    }

    /// Rewrites an installed frontend; returns its slot generation now.
    fn update_frontend(&mut self, t: &Target<'_>, cur: &Current, stats: &mut Stats) -> Result<u16, MapsError> {
        let id = cur.id;
        let slots_changed = t.slots != cur.slots;
        let generation = if slots_changed { 1 - cur.generation } else { cur.generation };
        if slots_changed && let Err(e) = self.write_slots(id, generation, &t.slots, stats) {
            self.delete_slots(id, generation, t.slots.len(), stats);
            return Err(e);
        }
        // The table goes in before the frontend flips to the new slots;
        // both hold only backends that already exist. An existing table of
        // the same size is patched where it changed (each slot always
        // names a live backend, so a lookup during the patch is fine).
        if t.maglev_m != 0 && (slots_changed || cur.maglev_m != t.maglev_m) {
            let table = self.maglev_table(&t.slots, t.maglev_m);
            match self.maps.write_maglev(id, &table) {
                Ok(ops) => stats.ops += ops as u64,
                Err(e) => {
                    if slots_changed {
                        self.delete_slots(id, generation, t.slots.len(), stats);
                    }
                    return Err(e);
                }
            }
            stats.maglev_tables += 1;
        }
        stats.ops += 1;
        if let Err(e) = self.maps.services.insert(&t.fe.addr.key(), &service_value(id, generation, t.slots.len(), t.fe)) {
            if slots_changed {
                self.delete_slots(id, generation, t.slots.len(), stats);
            }
            return Err(e);
        }
        if slots_changed {
            self.defer_slots(id, cur.generation, cur.slots.len());
        }
        // The frontend entry is written: from here on a failure is only
        // reported, the new state stands.
        if t.maglev_m == 0 && cur.maglev_m != 0 {
            stats.ops += 1;
            if let Err(e) = self.maps.remove_maglev(id) {
                stats.errors.push(format!("removing the Maglev table of {}: {e}", t.fe.name));
            }
        }
        if cur.name != t.fe.name {
            stats.ops += 1;
            if let Err(e) = self.maps.names.insert(&RevNatKey { id }, &svc_name(&t.fe.name)) {
                stats.errors.push(format!("renaming frontend {id} to {}: {e}", t.fe.name));
            }
        }
        Ok(generation)
    }

    /// Removes a frontend; returns the backends it used if it was removed.
    /// Its rev-NAT slot is cleared (version kept), which makes its flows
    /// invalid at once.
    pub(super) fn remove_frontend(&mut self, addr: FrontendAddr, stats: &mut Stats) -> Option<Vec<super::Use>> {
        let inst = self.frontends.get(&addr)?;
        let (id, version, generation, count, name) = (inst.id, inst.version, inst.generation, inst.slots.len(), inst.name.clone());
        stats.ops += 1;
        if let Err(e) = self.maps.services.remove(&addr.key()) {
            let msg = format!("removing frontend {name} ({addr}): {e}");
            warn!("{msg}");
            stats.errors.push(msg);
            return None;
        }
        self.defer_slots(id, generation, count);
        stats.ops += 3;
        let _ = self.maps.remove_maglev(id);
        let _ = self.maps.revnat.set(id, &RevNat4 { addr: 0, port: 0, version });
        let _ = self.maps.names.remove(&RevNatKey { id });
        let inst = self.frontends.remove(&addr)?;
        self.frontend_ids.free(id);
        self.vips.count(addr.ip, inst.flags, false);
        stats.removed += 1;
        Some(inst.uses)
    }

    fn write_slots(&mut self, id: u32, generation: u16, slots: &[u32], stats: &mut Stats) -> Result<(), MapsError> {
        for (i, backend_id) in slots.iter().enumerate() {
            stats.ops += 1;
            self.maps.slots.insert(&SlotKey { svc_id: id, slot: i as u16, generation }, &Slot { backend_id: *backend_id })?;
        }
        Ok(())
    }

    /// Deletes slots no packet can have seen (a write that failed).
    fn delete_slots(&mut self, id: u32, generation: u16, count: usize, stats: &mut Stats) {
        for i in 0..count {
            stats.ops += 1;
            if let Err(e) = self.maps.slots.remove(&SlotKey { svc_id: id, slot: i as u16, generation }) {
                warn!("deleting slot {i} of frontend {id}: {e}");
            }
        }
    }

    /// Slots that stopped being live: deleted at the next apply, so a
    /// packet that read the frontend just before still finds them.
    fn defer_slots(&mut self, id: u32, generation: u16, count: usize) {
        self.stale_slots.extend((0..count).map(|i| SlotKey { svc_id: id, slot: i as u16, generation }));
    }
}
