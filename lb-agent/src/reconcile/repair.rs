//! Drift repair: the maps compared with what the reconciler wrote, and any
//! difference put right (kube-proxy's periodic full resync, for an entry
//! written or deleted behind the agent's back, or lost to a bug).
//!
//! The reconciler's own record of what it installed is the desired state
//! here (it is what the last `apply` made of the translation): every
//! frontend entry, live slot, backend, rev-NAT slot, name and address is
//! checked and rewritten where it differs, recreated where it is missing,
//! and entries nothing accounts for are deleted (a free array slot is
//! cleared, keeping its version). Slots of a generation waiting for
//! deletion are left to the next apply. Maglev tables are checked against
//! the frontend's slots when their M is known. `LB4_SRC_RANGES` and the
//! conntrack and affinity maps are not checked.

use std::collections::{BTreeMap, HashMap};

use lb_common::{Backend4, RevNat4, Service4Key, Service4Value, Slot, SlotKey, Vip4};

use super::{MapKind, MapStore, Reconciler, frontends::rev_nat_entry};
use crate::{maps::MapsError, maps::svc_name};

/// What a repair found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    /// Entries rewritten, recreated or deleted, per map.
    pub repaired: BTreeMap<MapKind, u64>,
    /// Maps that could not be read or written, with why.
    pub errors: Vec<String>,
}

impl Repairs {
    pub fn total(&self) -> u64 {
        self.repaired.values().sum()
    }

    fn count(&mut self, map: MapKind, result: Result<(), MapsError>) {
        match result {
            Ok(()) => *self.repaired.entry(map).or_default() += 1,
            Err(e) => self.errors.push(format!("repairing {}: {e}", map.name())),
        }
    }
}

impl<M: MapStore> Reconciler<M> {
    /// Compares the maps with what this reconciler installed and repairs
    /// every difference. Reads every checked map once.
    pub fn repair(&mut self) -> Repairs {
        let mut r = Repairs::default();
        if let Err(e) = self.repair_maps(&mut r) {
            r.errors.push(e.to_string());
        }
        r
    }

    fn repair_maps(&mut self, r: &mut Repairs) -> Result<(), MapsError> {
        // Addresses first, as apply does: a frontend whose address the
        // datapath does not know is never looked up.
        let want_vips: HashMap<u32, u32> = self.vips.written().map(|(a, f)| (u32::from_ne_bytes(a.octets()), f)).collect();
        for (addr, vip) in self.maps.vips()? {
            if !want_vips.contains_key(&addr) {
                let res = self.maps.remove_vip(addr);
                r.count(MapKind::Vips, res);
            } else if want_vips[&addr] != vip.flags {
                let res = self.maps.insert_vip(addr, &Vip4 { flags: want_vips[&addr] });
                r.count(MapKind::Vips, res);
            }
        }
        let have_vips: HashMap<u32, Vip4> = self.maps.vips()?.into_iter().collect();
        for (addr, flags) in &want_vips {
            if !have_vips.contains_key(addr) {
                let res = self.maps.insert_vip(*addr, &Vip4 { flags: *flags });
                r.count(MapKind::Vips, res);
            }
        }

        // Backends before the slots that point at them.
        let backends = self.maps.backends()?;
        let have_backends: HashMap<u32, Backend4> = backends.iter().copied().collect();
        for (&addr, b) in &self.backends {
            let want = super::backends::entry(addr, b.flags, b.version);
            if have_backends.get(&b.id) != Some(&want) {
                let res = self.maps.set_backend(b.id, &want);
                r.count(MapKind::Backends, res);
            }
        }
        for (id, have) in backends {
            if have.addr != 0 && !self.backend_addrs.contains_key(&id) {
                let res = self.maps.set_backend(id, &Backend4 { addr: 0, port: 0, proto: 0, flags: 0, version: have.version, _pad: 0 });
                r.count(MapKind::Backends, res);
            }
        }

        // Live slots.
        let stale: std::collections::HashSet<SlotKey> = self.stale_slots.iter().copied().collect();
        let mut want_slots: HashMap<SlotKey, u32> = HashMap::new();
        for inst in self.frontends.values() {
            for (i, backend_id) in inst.slots.iter().enumerate() {
                want_slots.insert(SlotKey { frontend_id: inst.id, slot: i as u16, generation: inst.generation }, *backend_id);
            }
        }
        let mut have_slots: HashMap<SlotKey, u32> = HashMap::new();
        for (key, slot) in self.maps.slots()? {
            match want_slots.get(&key) {
                Some(_) => {
                    have_slots.insert(key, slot.backend_id);
                }
                None if stale.contains(&key) => {}
                None => {
                    let res = self.maps.remove_slot(&key);
                    r.count(MapKind::Slots, res);
                }
            }
        }
        for (key, backend_id) in &want_slots {
            if have_slots.get(key) != Some(backend_id) {
                let res = self.maps.insert_slot(key, &Slot { backend_id: *backend_id });
                r.count(MapKind::Slots, res);
            }
        }

        // Frontend entries, rev-NAT slots, names, Maglev tables.
        let mut want_services: HashMap<Service4Key, Service4Value> = HashMap::new();
        for (addr, inst) in &self.frontends {
            want_services.insert(
                addr.key(),
                Service4Value {
                    frontend_id: inst.id,
                    count: inst.slots.len() as u16,
                    generation: inst.generation,
                    flags: inst.flags,
                    affinity_timeout: inst.affinity_timeout,
                },
            );
        }
        let mut have_services: HashMap<Service4Key, Service4Value> = HashMap::new();
        for (key, value) in self.maps.services()? {
            if want_services.contains_key(&key) {
                have_services.insert(key, value);
            } else {
                let res = self.maps.remove_service(&key);
                r.count(MapKind::Services, res);
            }
        }
        for (key, want) in &want_services {
            if have_services.get(key) != Some(want) {
                let res = self.maps.insert_service(key, want);
                r.count(MapKind::Services, res);
            }
        }

        let have_revnats: HashMap<u32, RevNat4> = self.maps.revnats()?.into_iter().collect();
        let have_names: HashMap<u32, lb_common::SvcName> = self.maps.names()?.into_iter().collect();
        let mut ours: std::collections::HashSet<u32> = std::collections::HashSet::new();
        let mut tables: Vec<(u32, Vec<u32>)> = Vec::new();
        for (addr, inst) in &self.frontends {
            ours.insert(inst.id);
            let want = rev_nat_entry(addr, inst.version);
            if have_revnats.get(&inst.id) != Some(&want) {
                let res = self.maps.set_revnat(inst.id, &want);
                r.count(MapKind::RevNat, res);
            }
            let name = svc_name(&inst.name);
            if have_names.get(&inst.id) != Some(&name) {
                let res = self.maps.insert_name(inst.id, &name);
                r.count(MapKind::Names, res);
            }
            if inst.maglev_m != 0 && !inst.slots.is_empty() {
                tables.push((inst.id, self.maglev_table(&inst.slots, inst.maglev_m)));
            }
        }
        for (id, have) in have_revnats {
            // Removed frontends whose slots could not be cleared are retried
            // by apply; anything else that is not ours is cleared.
            if have.addr != 0 && !ours.contains(&id) && !self.unclean.iter().any(|f| f.id == id) {
                let res = self.maps.set_revnat(id, &RevNat4 { addr: 0, port: 0, version: have.version });
                r.count(MapKind::RevNat, res);
            }
        }
        for id in have_names.keys() {
            if !ours.contains(id) && !self.unclean.iter().any(|f| f.id == *id) {
                let res = self.maps.remove_name(*id);
                r.count(MapKind::Names, res);
            }
        }
        for (id, table) in tables {
            if self.maps.maglev_table(id)?.as_deref() != Some(&table[..]) {
                let res = self.maps.write_maglev(id, &table).map(|_| ());
                r.count(MapKind::Maglev, res);
            }
        }
        Ok(())
    }
}
