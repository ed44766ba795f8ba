//! Frontend entries: the `LB4_SERVICES` (or `LB6_SERVICES`) entry, its
//! slots (two generations, flipped atomically), its rev-NAT slot (address
//! and version, in its family's `*_REVNAT`), name, and Maglev table. All
//! but the entry and the rev-NAT slot are indexed by the frontend ID the
//! two families share.
//!
//! Every write that fails before the frontend entry is written is rolled
//! back, so the frontend keeps its previous state: a new frontend's
//! rev-NAT slot, name, slots and table are cleared again; an update's new
//! slot generation is deleted and its Maglev table put back as it was.

use std::{collections::BTreeSet, net::Ipv4Addr};

use lb_common::{Service4Value, Slot, SlotKey, svc_flags};
use tracing::warn;

use super::{Change, FrontendRef, MapFamily, MapStore, Reconciler, Shrunk, Stats, backends::Use};
use crate::{
    maglev,
    maps::{MapsError, svc_name},
    model::{Frontend, FrontendAddr},
};

/// A frontend as installed in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed<A = Ipv4Addr> {
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
    /// (recovered from the maps, the node name or M changed, or one of its
    /// backends could not be written), so the next `apply` looks at it
    /// again.
    pub digest: u64,
    /// The backends it counts as using (see `Reconciler::refs`).
    pub uses: Vec<Use<A>>,
}

/// The slots of one generation of a frontend: `(id, generation, 0..count)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRange {
    pub id: u32,
    pub generation: u16,
    pub count: usize,
}

impl SlotRange {
    pub fn keys(self) -> impl Iterator<Item = SlotKey> {
        (0..self.count).map(move |i| SlotKey { frontend_id: self.id, slot: i as u16, generation: self.generation })
    }
}

/// Where a newly written frontend stands.
struct Placed {
    id: u32,
    /// Its rev-NAT slot's version.
    version: u16,
    generation: u16,
}

/// What a frontend's entries are to become.
struct Target<'a, A> {
    fe: &'a Frontend<A>,
    /// Backend IDs in slot order.
    slots: Vec<u32>,
    maglev_m: u32,
}

/// An installed frontend's current entries, for an update.
struct Current {
    id: u32,
    generation: u16,
    slots: Vec<u32>,
    flags: u32,
    maglev_m: u32,
    name: String,
}

/// The Maglev table a frontend had before an update, put back if the
/// update fails after writing the new one.
enum PreviousTable {
    /// None: the new one is removed again.
    None,
    /// Built from the frontend's current slots and M.
    Build,
    /// As read from the map before the update (its M was unknown).
    Read(Vec<u32>),
}

fn service_value<A>(id: u32, generation: u16, count: usize, fe: &Frontend<A>) -> Service4Value {
    Service4Value { frontend_id: id, count: count as u16, generation, flags: fe.flags, affinity_timeout: fe.affinity_timeout }
}

impl<M: MapStore> Reconciler<M> {
    /// Writes one changed frontend. On success returns the uses it had
    /// before; on failure (it keeps its previous state) gives back its new
    /// uses.
    pub(super) fn write_frontend<A: MapFamily>(&mut self, change: Change<'_, A>, stats: &mut Stats) -> Result<Vec<Use<A>>, Vec<Use<A>>> {
        let Change { fe, digest, uses } = change;
        let fam = A::pick_mut(&mut self.fam);
        let slots: Vec<u32> = fe
            .slot_backends()
            // A backend whose write failed was reported; serve with the rest.
            .filter_map(|b| fam.backends.get(&b.addr).map(|i| i.id))
            .collect();
        let allowed: BTreeSet<u32> = fe.backends.iter().filter_map(|b| fam.backends.get(&b.addr).map(|x| x.id)).collect();
        // Written without a backend that could not be written: looked at
        // again by the next apply, which tries that backend again.
        let digest = if fe.backends.iter().all(|b| fam.backends.contains_key(&b.addr)) { digest } else { 0 };
        let maglev_m = if fe.flags & svc_flags::MAGLEV != 0 && !slots.is_empty() { self.maglev_m } else { 0 };
        if let Some(inst) = fam.frontends.get_mut(&fe.addr)
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
                    fam.shrunk.push(Shrunk { id: inst.id, removed });
                }
                inst.allowed = allowed;
            }
            inst.digest = digest;
            return Ok(std::mem::replace(&mut inst.uses, uses));
        }
        let target = Target { fe, slots, maglev_m };
        let current = fam.frontends.get(&fe.addr).map(|i| Current {
            id: i.id,
            generation: i.generation,
            slots: i.slots.clone(),
            flags: i.flags,
            maglev_m: i.maglev_m,
            name: i.name.clone(),
        });
        let result = match &current {
            None => self.add_frontend(&target, stats).inspect(|_| stats.added += 1),
            Some(cur) => self.update_frontend(&target, cur, stats).map(|generation| {
                stats.updated += 1;
                Placed { id: cur.id, version: self.frontend_ids.version(cur.id), generation }
            }),
        };
        match result {
            Ok(Placed { id, version, generation }) => {
                let fam = A::pick_mut(&mut self.fam);
                let old = fam.frontends.insert(
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
                fam.vips.count(fe.addr.ip, fe.flags, true);
                if let Some(old) = &old {
                    fam.vips.count(fe.addr.ip, old.flags, false);
                    let now = &fam.frontends[&fe.addr].allowed;
                    let removed: Vec<u32> = old.allowed.difference(now).copied().collect();
                    if !removed.is_empty() {
                        fam.shrunk.push(Shrunk { id, removed });
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
    pub(super) fn maglev_table<A: MapFamily>(&self, slots: &[u32], m: u32) -> Vec<u32> {
        let addrs = &A::pick(&self.fam).backend_addrs;
        let keys: Vec<String> = slots.iter().map(|id| addrs.get(id).map(|a| a.to_string()).unwrap_or_default()).collect();
        maglev::build(&keys, m).into_iter().map(|i| slots[i as usize]).collect()
    }

    /// Writes a new frontend: rev-NAT slot, name, slots and Maglev table
    /// first, the frontend entry last.
    fn add_frontend<A: MapFamily>(&mut self, t: &Target<'_, A>, stats: &mut Stats) -> Result<Placed, MapsError> {
        let Some((id, version)) = self.frontend_ids.alloc() else {
            return Err(MapsError::Full { name: A::REVNAT.name(), max_entries: self.maps.max_entries(A::REVNAT) });
        };
        let slots = SlotRange { id, generation: 0, count: t.slots.len() };
        // The ID's counters were another frontend's: they start from zero
        // (no packet reaches the ID before the frontend entry, written last).
        if let Err(e) = self.maps.reset_frontend_stats(id) {
            warn!("frontend {}: its counters keep an earlier frontend's counts: {e}", t.fe.addr);
        }
        let result = (|| {
            stats.ops += 1;
            self.maps.set_revnat::<A>(id, &A::revnat(&t.fe.addr, version))?;
            stats.ops += 1;
            self.maps.insert_name(id, &svc_name(&t.fe.name))?;
            self.write_slots(slots, &t.slots, stats)?;
            if t.maglev_m != 0 {
                let table = self.maglev_table::<A>(&t.slots, t.maglev_m);
                stats.ops += self.maps.write_maglev(id, &table)? as u64;
                stats.maglev_tables += 1;
            }
            stats.ops += 1;
            self.maps.insert_service::<A>(&A::key(&t.fe.addr), &service_value(id, slots.generation, t.slots.len(), t.fe))
        })();
        if let Err(e) = result {
            // Undo the parts that were written; the frontend entry itself
            // was the last write, so no packet saw any of them.
            self.delete_slots(slots, stats);
            let _ = self.maps.remove_maglev(id);
            let _ = self.maps.set_revnat::<A>(id, &A::free_revnat(version));
            let _ = self.maps.remove_name(id);
            self.frontend_ids.free(id);
            return Err(e);
        }
        Ok(Placed { id, version, generation: slots.generation })
    }

    /// Rewrites an installed frontend; returns its slot generation now.
    fn update_frontend<A: MapFamily>(&mut self, t: &Target<'_, A>, cur: &Current, stats: &mut Stats) -> Result<u16, MapsError> {
        let id = cur.id;
        let slots_changed = t.slots != cur.slots;
        let new_slots = SlotRange { id, generation: if slots_changed { 1 - cur.generation } else { cur.generation }, count: t.slots.len() };
        // Undoes the new generation of slots (no packet can have seen it).
        let drop_new_slots = |r: &mut Self, stats: &mut Stats| {
            if slots_changed {
                r.delete_slots(new_slots, stats);
            }
        };
        if slots_changed && let Err(e) = self.write_slots(new_slots, &t.slots, stats) {
            drop_new_slots(self, stats);
            return Err(e);
        }
        // The table goes in before the frontend flips to the new slots;
        // both hold only backends that already exist. An existing table of
        // the same size is patched where it changed (each slot always
        // names a live backend, so a lookup during the patch is fine).
        let maglev_written = t.maglev_m != 0 && (slots_changed || cur.maglev_m != t.maglev_m);
        let mut previous = PreviousTable::None;
        if maglev_written {
            previous = match self.previous_table(cur) {
                Ok(p) => p,
                Err(e) => {
                    drop_new_slots(self, stats);
                    return Err(e);
                }
            };
            let table = self.maglev_table::<A>(&t.slots, t.maglev_m);
            match self.maps.write_maglev(id, &table) {
                Ok(ops) => stats.ops += ops as u64,
                Err(e) => {
                    // A patch may have been partly written.
                    self.restore_table::<A>(cur, previous, stats);
                    drop_new_slots(self, stats);
                    return Err(e);
                }
            }
            stats.maglev_tables += 1;
        }
        stats.ops += 1;
        if let Err(e) = self.maps.insert_service::<A>(&A::key(&t.fe.addr), &service_value(id, new_slots.generation, t.slots.len(), t.fe)) {
            if maglev_written {
                // The frontend still serves its old backends: so must its
                // table (the new backends it named may go now).
                self.restore_table::<A>(cur, previous, stats);
            }
            drop_new_slots(self, stats);
            return Err(e);
        }
        if slots_changed {
            self.defer_slots(SlotRange { id, generation: cur.generation, count: cur.slots.len() });
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
            if let Err(e) = self.maps.insert_name(id, &svc_name(&t.fe.name)) {
                stats.errors.push(format!("renaming frontend {id} to {}: {e}", t.fe.name));
            }
        }
        Ok(new_slots.generation)
    }

    /// How to put back the Maglev table `cur` has, should its update fail.
    fn previous_table(&self, cur: &Current) -> Result<PreviousTable, MapsError> {
        Ok(if cur.maglev_m != 0 {
            PreviousTable::Build
        } else if cur.flags & svc_flags::MAGLEV != 0 {
            // Recovered from the maps: a table of unknown M may be there.
            match self.maps.maglev_table(cur.id)? {
                Some(table) => PreviousTable::Read(table),
                None => PreviousTable::None,
            }
        } else {
            PreviousTable::None
        })
    }

    /// Puts back the Maglev table a frontend had before a failed update.
    fn restore_table<A: MapFamily>(&mut self, cur: &Current, previous: PreviousTable, stats: &mut Stats) {
        let result = match previous {
            PreviousTable::None => self.maps.remove_maglev(cur.id).map(|()| 1),
            PreviousTable::Build => {
                let table = self.maglev_table::<A>(&cur.slots, cur.maglev_m);
                self.maps.write_maglev(cur.id, &table)
            }
            PreviousTable::Read(table) => self.maps.write_maglev(cur.id, &table),
        };
        match result {
            Ok(ops) => stats.ops += ops as u64,
            Err(e) => {
                let msg = format!("restoring the Maglev table of frontend {} ({}): {e}", cur.id, cur.name);
                warn!("{msg}");
                stats.errors.push(msg);
            }
        }
    }

    /// Removes a frontend; returns the backends it used if it was removed.
    /// Its rev-NAT slot is cleared (version kept), which makes its flows
    /// invalid at once.
    pub(super) fn remove_frontend<A: MapFamily>(&mut self, addr: FrontendAddr<A>, stats: &mut Stats) -> Option<Vec<Use<A>>> {
        let inst = A::pick(&self.fam).frontends.get(&addr)?;
        let slots = SlotRange { id: inst.id, generation: inst.generation, count: inst.slots.len() };
        let (version, name) = (inst.version, inst.name.clone());
        stats.ops += 1;
        if let Err(e) = self.maps.remove_service::<A>(&A::key(&addr)) {
            let msg = format!("removing frontend {name} ({addr}): {e}");
            warn!("{msg}");
            stats.errors.push(msg);
            return None;
        }
        self.defer_slots(slots);
        // The frontend is gone for the datapath; what is left of it is
        // cleared. Its ID is free once that is done; until then the next
        // apply tries again.
        stats.ops += 3;
        let errors = self.clear_frontend::<A>(slots.id, version);
        if errors.is_empty() {
            self.frontend_ids.free(slots.id);
        } else {
            A::pick_mut(&mut self.fam).unclean.insert(FrontendRef { id: slots.id, version });
        }
        for e in errors {
            let msg = format!("removing frontend {name} ({addr}): {e}");
            warn!("{msg}");
            stats.errors.push(msg);
        }
        let fam = A::pick_mut(&mut self.fam);
        let inst = fam.frontends.remove(&addr)?;
        fam.vips.count(addr.ip, inst.flags, false);
        stats.removed += 1;
        Some(inst.uses)
    }

    /// Clears what a removed frontend left: its Maglev table, its rev-NAT
    /// slot (version kept, so its flows are invalid) and its name.
    fn clear_frontend<A: MapFamily>(&mut self, id: u32, version: u16) -> Vec<MapsError> {
        [self.maps.remove_maglev(id), self.maps.set_revnat::<A>(id, &A::free_revnat(version)), self.maps.remove_name(id)]
            .into_iter()
            .filter_map(Result::err)
            .collect()
    }

    /// Clears again what removed frontends left when that failed, and
    /// frees their IDs once it is done.
    pub(super) fn retry_unclean<A: MapFamily>(&mut self, stats: &mut Stats) {
        for frontend in std::mem::take(&mut A::pick_mut(&mut self.fam).unclean) {
            stats.ops += 3;
            let errors = self.clear_frontend::<A>(frontend.id, frontend.version);
            if errors.is_empty() {
                self.frontend_ids.free(frontend.id);
                continue;
            }
            A::pick_mut(&mut self.fam).unclean.insert(frontend);
            for e in errors {
                stats.errors.push(format!("clearing removed frontend {}: {e}", frontend.id));
            }
        }
    }

    fn write_slots(&mut self, range: SlotRange, backend_ids: &[u32], stats: &mut Stats) -> Result<(), MapsError> {
        if !self.stale_slots.is_empty() {
            // Stale slots whose deletion failed and is to be tried again:
            // those about to be written are live from now on.
            self.stale_slots
                .retain(|k| !(k.frontend_id == range.id && k.generation == range.generation && (k.slot as usize) < range.count));
        }
        for (key, backend_id) in range.keys().zip(backend_ids) {
            stats.ops += 1;
            self.maps.insert_slot(&key, &Slot { backend_id: *backend_id })?;
        }
        Ok(())
    }

    /// Deletes slots no packet can have seen (a write that failed).
    fn delete_slots(&mut self, range: SlotRange, stats: &mut Stats) {
        for key in range.keys() {
            stats.ops += 1;
            if let Err(e) = self.maps.remove_slot(&key) {
                warn!("deleting slot {} of frontend {}: {e}", key.slot, key.frontend_id);
            }
        }
    }

    /// Slots that stopped being live: deleted at the next apply, so a
    /// packet that read the frontend just before still finds them.
    fn defer_slots(&mut self, range: SlotRange) {
        self.stale_slots.extend(range.keys());
    }
}
