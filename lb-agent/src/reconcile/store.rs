//! The maps as the reconciler sees them: [`MapStore`], one method per
//! operation it issues on each map, as Cilium's loadbalancer reconciler
//! writes through its `LBMaps` interface. Three implementations:
//!
//! - [`Maps`], the pinned BPF maps;
//! - [`super::fake::FakeMaps`], in memory, with the kernel's answers (a
//!   full hash map refuses a new key, an array index past the end fails);
//! - [`super::fake::Faulty`], which wraps either and fails chosen
//!   operations, to test every rollback path without root.
//!
//! Errors are [`MapsError`]s naming the map (and its size when it is full),
//! whichever implementation produced them.

use lb_common::{
    Affinity4, Affinity4Key, Backend4, Ct4Key, CtEntry, RevNat4, RevNatKey, Service4Key, Service4Value, Slot, SlotKey, SrcRange4, SvcName,
    Vip4, names,
};

use crate::maps::{Maps, MapsError};

/// The maps the reconciler reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapKind {
    Services,
    Slots,
    Backends,
    RevNat,
    Names,
    Vips,
    Maglev,
    SrcRanges,
    CtTcp,
    CtAny,
    Affinity,
}

impl MapKind {
    pub const ALL: [MapKind; 11] = [
        MapKind::Services,
        MapKind::Slots,
        MapKind::Backends,
        MapKind::RevNat,
        MapKind::Names,
        MapKind::Vips,
        MapKind::Maglev,
        MapKind::SrcRanges,
        MapKind::CtTcp,
        MapKind::CtAny,
        MapKind::Affinity,
    ];

    /// The map's name (also its pin name).
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Services => names::SERVICES,
            MapKind::Slots => names::SLOTS,
            MapKind::Backends => names::BACKENDS,
            MapKind::RevNat => names::REVNAT,
            MapKind::Names => names::SVC_NAMES,
            MapKind::Vips => names::VIPS,
            MapKind::Maglev => names::MAGLEV,
            MapKind::SrcRanges => names::SRC_RANGES,
            MapKind::CtTcp => names::CT_TCP,
            MapKind::CtAny => names::CT_ANY,
            MapKind::Affinity => names::AFFINITY,
        }
    }
}

/// One of the two conntrack maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtMap {
    /// `LB4_CT_TCP`.
    Tcp,
    /// `LB4_CT_ANY`: every other protocol.
    Any,
}

impl CtMap {
    pub const BOTH: [CtMap; 2] = [CtMap::Tcp, CtMap::Any];

    pub fn kind(self) -> MapKind {
        match self {
            CtMap::Tcp => MapKind::CtTcp,
            CtMap::Any => MapKind::CtAny,
        }
    }
}

/// Every operation the reconciler (with its garbage collection) issues on
/// the maps. Removing a key that is not there is not an error; batch
/// deletes return how many keys they deleted. Array maps (`LB4_BACKENDS`,
/// `LB4_REVNAT`) are listed with at least every slot that is not all
/// zeroes.
pub trait MapStore {
    /// The capacity of a map (`max_entries`).
    fn max_entries(&self, map: MapKind) -> u32;

    /// `LB4_SERVICES`: every frontend entry.
    fn services(&self) -> Result<Vec<(Service4Key, Service4Value)>, MapsError>;
    fn insert_service(&mut self, key: &Service4Key, value: &Service4Value) -> Result<(), MapsError>;
    fn remove_service(&mut self, key: &Service4Key) -> Result<(), MapsError>;

    /// `LB4_SLOTS`.
    fn slot(&self, key: &SlotKey) -> Result<Option<Slot>, MapsError>;
    fn slots(&self) -> Result<Vec<(SlotKey, Slot)>, MapsError>;
    fn insert_slot(&mut self, key: &SlotKey, slot: &Slot) -> Result<(), MapsError>;
    fn remove_slot(&mut self, key: &SlotKey) -> Result<(), MapsError>;
    /// Deletes `keys` in batches.
    fn remove_slots(&mut self, keys: &[SlotKey]) -> Result<usize, MapsError>;

    /// `LB4_BACKENDS`, an array by backend ID.
    fn backends(&self) -> Result<Vec<(u32, Backend4)>, MapsError>;
    fn set_backend(&mut self, id: u32, backend: &Backend4) -> Result<(), MapsError>;

    /// `LB4_REVNAT`, an array by frontend ID.
    fn revnats(&self) -> Result<Vec<(u32, RevNat4)>, MapsError>;
    fn set_revnat(&mut self, id: u32, revnat: &RevNat4) -> Result<(), MapsError>;
    /// Zeroes the per-frontend counters of `id` (`LB_FE_STATS`), for a
    /// frontend that takes the ID over. The fakes keep no counters.
    fn reset_frontend_stats(&mut self, _id: u32) -> Result<(), MapsError> {
        Ok(())
    }

    /// `LB_SVC_NAMES`, by frontend ID.
    fn name(&self, id: u32) -> Result<Option<SvcName>, MapsError>;
    fn names(&self) -> Result<Vec<(u32, SvcName)>, MapsError>;
    fn insert_name(&mut self, id: u32, name: &SvcName) -> Result<(), MapsError>;
    fn remove_name(&mut self, id: u32) -> Result<(), MapsError>;

    /// `LB4_VIPS`, by address (network order).
    fn vips(&self) -> Result<Vec<(u32, Vip4)>, MapsError>;
    fn insert_vip(&mut self, addr: u32, vip: &Vip4) -> Result<(), MapsError>;
    fn remove_vip(&mut self, addr: u32) -> Result<(), MapsError>;

    /// `LB4_MAGLEV`: makes `table` the table of frontend `id` (patching an
    /// installed table of the same size where it differs, otherwise
    /// swapping in a new one); returns the map writes it took.
    fn write_maglev(&mut self, id: u32, table: &[u32]) -> Result<usize, MapsError>;
    fn remove_maglev(&mut self, id: u32) -> Result<(), MapsError>;
    /// Frontend IDs that have a table.
    fn maglev_ids(&self) -> Result<Vec<u32>, MapsError>;
    fn maglev_table(&self, id: u32) -> Result<Option<Vec<u32>>, MapsError>;

    /// `LB4_SRC_RANGES`: (prefix length, data) entries.
    fn src_ranges(&self) -> Result<Vec<(u32, SrcRange4)>, MapsError>;
    fn insert_src_range(&mut self, prefix_len: u32, data: SrcRange4) -> Result<(), MapsError>;
    fn remove_src_range(&mut self, prefix_len: u32, data: SrcRange4) -> Result<(), MapsError>;

    /// Conntrack, read and deleted in batches.
    fn ct_entries(&self, map: CtMap) -> Result<Vec<(Ct4Key, CtEntry)>, MapsError>;
    fn remove_ct(&mut self, map: CtMap, keys: &[Ct4Key]) -> Result<usize, MapsError>;

    /// `LB4_AFFINITY`, read and deleted in batches.
    fn affinity(&self) -> Result<Vec<(Affinity4Key, Affinity4)>, MapsError>;
    fn remove_affinity(&mut self, keys: &[Affinity4Key]) -> Result<usize, MapsError>;
}

impl MapStore for Maps {
    fn max_entries(&self, map: MapKind) -> u32 {
        match map {
            MapKind::Services => self.services.max_entries,
            MapKind::Slots => self.slots.max_entries,
            MapKind::Backends => self.backends.max_entries,
            MapKind::RevNat => self.revnat.max_entries,
            MapKind::Names => self.names.max_entries,
            MapKind::Vips => self.vips.max_entries,
            MapKind::Maglev => self.maglev.max_entries,
            MapKind::SrcRanges => self.src_ranges.max_entries,
            MapKind::CtTcp => self.ct.tcp.max_entries,
            MapKind::CtAny => self.ct.any.max_entries,
            MapKind::Affinity => self.affinity.max_entries,
        }
    }

    fn services(&self) -> Result<Vec<(Service4Key, Service4Value)>, MapsError> {
        self.services.entries()
    }

    fn insert_service(&mut self, key: &Service4Key, value: &Service4Value) -> Result<(), MapsError> {
        self.services.insert(key, value)
    }

    fn remove_service(&mut self, key: &Service4Key) -> Result<(), MapsError> {
        self.services.remove(key)
    }

    fn slot(&self, key: &SlotKey) -> Result<Option<Slot>, MapsError> {
        self.slots.get(key)
    }

    fn slots(&self) -> Result<Vec<(SlotKey, Slot)>, MapsError> {
        self.slots.entries()
    }

    fn insert_slot(&mut self, key: &SlotKey, slot: &Slot) -> Result<(), MapsError> {
        self.slots.insert(key, slot)
    }

    fn remove_slot(&mut self, key: &SlotKey) -> Result<(), MapsError> {
        self.slots.remove(key)
    }

    fn remove_slots(&mut self, keys: &[SlotKey]) -> Result<usize, MapsError> {
        self.slots.remove_all(keys)
    }

    fn backends(&self) -> Result<Vec<(u32, Backend4)>, MapsError> {
        self.backends.slots()
    }

    fn set_backend(&mut self, id: u32, backend: &Backend4) -> Result<(), MapsError> {
        self.backends.set(id, backend)
    }

    fn revnats(&self) -> Result<Vec<(u32, RevNat4)>, MapsError> {
        self.revnat.slots()
    }

    fn set_revnat(&mut self, id: u32, revnat: &RevNat4) -> Result<(), MapsError> {
        self.revnat.set(id, revnat)
    }

    fn reset_frontend_stats(&mut self, id: u32) -> Result<(), MapsError> {
        Maps::reset_frontend_stats(self, id)
    }

    fn name(&self, id: u32) -> Result<Option<SvcName>, MapsError> {
        self.names.get(&RevNatKey { frontend_id: id })
    }

    fn names(&self) -> Result<Vec<(u32, SvcName)>, MapsError> {
        Ok(self.names.entries()?.into_iter().map(|(k, v)| (k.frontend_id, v)).collect())
    }

    fn insert_name(&mut self, id: u32, name: &SvcName) -> Result<(), MapsError> {
        self.names.insert(&RevNatKey { frontend_id: id }, name)
    }

    fn remove_name(&mut self, id: u32) -> Result<(), MapsError> {
        self.names.remove(&RevNatKey { frontend_id: id })
    }

    fn vips(&self) -> Result<Vec<(u32, Vip4)>, MapsError> {
        self.vips.entries()
    }

    fn insert_vip(&mut self, addr: u32, vip: &Vip4) -> Result<(), MapsError> {
        Maps::insert_vip(self, addr, vip)
    }

    fn remove_vip(&mut self, addr: u32) -> Result<(), MapsError> {
        Maps::remove_vip(self, addr)
    }

    fn write_maglev(&mut self, id: u32, table: &[u32]) -> Result<usize, MapsError> {
        Maps::write_maglev(self, id, table)
    }

    fn remove_maglev(&mut self, id: u32) -> Result<(), MapsError> {
        Maps::remove_maglev(self, id)
    }

    fn maglev_ids(&self) -> Result<Vec<u32>, MapsError> {
        Ok(Maps::maglev_ids(self))
    }

    fn maglev_table(&self, id: u32) -> Result<Option<Vec<u32>>, MapsError> {
        Maps::maglev_table(self, id)
    }

    fn src_ranges(&self) -> Result<Vec<(u32, SrcRange4)>, MapsError> {
        self.src_range_entries()
    }

    fn insert_src_range(&mut self, prefix_len: u32, data: SrcRange4) -> Result<(), MapsError> {
        Maps::insert_src_range(self, prefix_len, data)
    }

    fn remove_src_range(&mut self, prefix_len: u32, data: SrcRange4) -> Result<(), MapsError> {
        Maps::remove_src_range(self, prefix_len, data)
    }

    fn ct_entries(&self, map: CtMap) -> Result<Vec<(Ct4Key, CtEntry)>, MapsError> {
        match map {
            CtMap::Tcp => self.ct.tcp.entries(),
            CtMap::Any => self.ct.any.entries(),
        }
    }

    fn remove_ct(&mut self, map: CtMap, keys: &[Ct4Key]) -> Result<usize, MapsError> {
        match map {
            CtMap::Tcp => self.ct.tcp.remove_all(keys),
            CtMap::Any => self.ct.any.remove_all(keys),
        }
    }

    fn affinity(&self) -> Result<Vec<(Affinity4Key, Affinity4)>, MapsError> {
        self.affinity.entries()
    }

    fn remove_affinity(&mut self, keys: &[Affinity4Key]) -> Result<usize, MapsError> {
        self.affinity.remove_all(keys)
    }
}
