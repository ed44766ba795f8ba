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
//! the frontend's slots when their M is known. Both families' maps are
//! checked. `LB4_SRC_RANGES`, `LB6_SRC_RANGES` and the conntrack and affinity maps are not.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use lb_common::{Service4Value, Slot, SlotKey, Vip4};

use super::{MapFamily, MapKind, MapStore, Reconciler};
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
        self.repair_vips::<Ipv4Addr>(r)?;
        self.repair_vips::<Ipv6Addr>(r)?;
        // Backends before the slots that point at them.
        self.repair_backends::<Ipv4Addr>(r)?;
        self.repair_backends::<Ipv6Addr>(r)?;

        // Live slots (one map for both families).
        let stale: HashSet<SlotKey> = self.stale_slots.iter().copied().collect();
        let mut want_slots: HashMap<SlotKey, u32> = HashMap::new();
        for (id, generation, slots) in self.installed_slots() {
            for (i, backend_id) in slots.iter().enumerate() {
                want_slots.insert(SlotKey { frontend_id: id, slot: i as u16, generation }, *backend_id);
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
        self.repair_services::<Ipv4Addr>(r)?;
        self.repair_services::<Ipv6Addr>(r)?;
        self.repair_revnats::<Ipv4Addr>(r)?;
        self.repair_revnats::<Ipv6Addr>(r)?;
        let mut tables: Vec<(u32, Vec<u32>)> = self.maglev_tables::<Ipv4Addr>();
        tables.extend(self.maglev_tables::<Ipv6Addr>());
        let names: HashMap<u32, &str> = self
            .fam
            .v4
            .frontends
            .values()
            .map(|i| (i.id, i.name.as_str()))
            .chain(self.fam.v6.frontends.values().map(|i| (i.id, i.name.as_str())))
            .collect();
        let unclean: HashSet<u32> = self.fam.v4.unclean.iter().chain(&self.fam.v6.unclean).map(|f| f.id).collect();
        let have_names: HashMap<u32, lb_common::SvcName> = self.maps.names()?.into_iter().collect();
        let mut name_fixes = Vec::new();
        for (id, name) in &names {
            let name = svc_name(name);
            if have_names.get(id) != Some(&name) {
                name_fixes.push((*id, Some(name)));
            }
        }
        for id in have_names.keys() {
            if !names.contains_key(id) && !unclean.contains(id) {
                name_fixes.push((*id, None));
            }
        }
        for (id, name) in name_fixes {
            let res = match name {
                Some(name) => self.maps.insert_name(id, &name),
                None => self.maps.remove_name(id),
            };
            r.count(MapKind::Names, res);
        }
        for (id, table) in tables {
            if self.maps.maglev_table(id)?.as_deref() != Some(&table[..]) {
                let res = self.maps.write_maglev(id, &table).map(|_| ());
                r.count(MapKind::Maglev, res);
            }
        }
        Ok(())
    }

    /// Every installed frontend's (ID, generation, slots), both families.
    fn installed_slots(&self) -> Vec<(u32, u16, Vec<u32>)> {
        let v4 = self.fam.v4.frontends.values().map(|i| (i.id, i.generation, i.slots.clone()));
        v4.chain(self.fam.v6.frontends.values().map(|i| (i.id, i.generation, i.slots.clone()))).collect()
    }

    /// The Maglev tables a family's frontends should have (where M is
    /// known).
    fn maglev_tables<A: MapFamily>(&self) -> Vec<(u32, Vec<u32>)> {
        A::pick(&self.fam)
            .frontends
            .values()
            .filter(|inst| inst.maglev_m != 0 && !inst.slots.is_empty())
            .map(|inst| (inst.id, self.maglev_table::<A>(&inst.slots, inst.maglev_m)))
            .collect()
    }

    fn repair_vips<A: MapFamily>(&mut self, r: &mut Repairs) -> Result<(), MapsError> {
        let want_vips: HashMap<A::VipKey, u32> = A::pick(&self.fam).vips.written().map(|(a, f)| (A::vip_key(a), f)).collect();
        for (addr, vip) in self.maps.vips::<A>()? {
            if !want_vips.contains_key(&addr) {
                let res = self.maps.remove_vip::<A>(addr);
                r.count(A::VIPS, res);
            } else if want_vips[&addr] != vip.flags {
                let res = self.maps.insert_vip::<A>(addr, &Vip4 { flags: want_vips[&addr] });
                r.count(A::VIPS, res);
            }
        }
        let have_vips: HashMap<A::VipKey, Vip4> = self.maps.vips::<A>()?.into_iter().collect();
        for (addr, flags) in &want_vips {
            if !have_vips.contains_key(addr) {
                let res = self.maps.insert_vip::<A>(*addr, &Vip4 { flags: *flags });
                r.count(A::VIPS, res);
            }
        }
        Ok(())
    }

    fn repair_backends<A: MapFamily>(&mut self, r: &mut Repairs) -> Result<(), MapsError> {
        let backends = self.maps.backends::<A>()?;
        let have_backends: HashMap<u32, A::Backend> = backends.iter().copied().collect();
        let fam = A::pick(&self.fam);
        let mut fixes: Vec<(u32, A::Backend)> = Vec::new();
        for (&addr, b) in &fam.backends {
            let want = A::backend(addr, b.flags, b.version);
            if have_backends.get(&b.id) != Some(&want) {
                fixes.push((b.id, want));
            }
        }
        for (id, have) in backends {
            let slot = A::backend_slot(&have);
            if slot.ip.is_some() && !fam.backend_addrs.contains_key(&id) {
                fixes.push((id, A::free_backend(slot.version)));
            }
        }
        for (id, entry) in fixes {
            let res = self.maps.set_backend::<A>(id, &entry);
            r.count(A::BACKENDS, res);
        }
        Ok(())
    }

    fn repair_services<A: MapFamily>(&mut self, r: &mut Repairs) -> Result<(), MapsError> {
        let want_services: HashMap<A::ServiceKey, Service4Value> = A::pick(&self.fam)
            .frontends
            .iter()
            .map(|(addr, inst)| {
                let value = Service4Value {
                    frontend_id: inst.id,
                    count: inst.slots.len() as u16,
                    generation: inst.generation,
                    flags: inst.flags,
                    affinity_timeout: inst.affinity_timeout,
                };
                (A::key(addr), value)
            })
            .collect();
        let mut have_services: HashMap<A::ServiceKey, Service4Value> = HashMap::new();
        for (key, value) in self.maps.services::<A>()? {
            if want_services.contains_key(&key) {
                have_services.insert(key, value);
            } else {
                let res = self.maps.remove_service::<A>(&key);
                r.count(A::SERVICES, res);
            }
        }
        for (key, want) in &want_services {
            if have_services.get(key) != Some(want) {
                let res = self.maps.insert_service::<A>(key, want);
                r.count(A::SERVICES, res);
            }
        }
        Ok(())
    }

    fn repair_revnats<A: MapFamily>(&mut self, r: &mut Repairs) -> Result<(), MapsError> {
        let have_revnats: HashMap<u32, A::RevNat> = self.maps.revnats::<A>()?.into_iter().collect();
        let fam = A::pick(&self.fam);
        let mut fixes: Vec<(u32, A::RevNat)> = Vec::new();
        let mut ours: HashSet<u32> = HashSet::new();
        for (addr, inst) in &fam.frontends {
            ours.insert(inst.id);
            let want = A::revnat(addr, inst.version);
            if have_revnats.get(&inst.id) != Some(&want) {
                fixes.push((inst.id, want));
            }
        }
        for (id, have) in have_revnats {
            // Removed frontends whose slots could not be cleared are retried
            // by apply; anything else that is not ours is cleared (an ID
            // another family's frontend holds included: this family's slot
            // of it is empty).
            let slot = A::revnat_slot(&have);
            if slot.ip.is_some() && !ours.contains(&id) && !fam.unclean.iter().any(|f| f.id == id) {
                fixes.push((id, A::free_revnat(slot.version)));
            }
        }
        for (id, entry) in fixes {
            let res = self.maps.set_revnat::<A>(id, &entry);
            r.count(A::REVNAT, res);
        }
        Ok(())
    }
}
