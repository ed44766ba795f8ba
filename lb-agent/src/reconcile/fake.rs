//! Maps in memory, for tests that need no root (Cilium's `FakeLBMaps` and
//! `FaultyLBMaps`):
//!
//! - [`FakeMaps`] answers as the kernel does: a hash map at its
//!   `max_entries` refuses a new key (`E2BIG`, reported as the map being
//!   full) but takes updates of keys it has; an array refuses an index
//!   past its end; the LPM trie answers `ENOSPC` when full; deleting a key
//!   that is not there is not an error. [`FakeMaps::set_max_entries`]
//!   makes a map full at N entries.
//! - [`Faulty`] wraps any [`MapStore`] (a [`FakeMaps`], or the pinned
//!   [`crate::maps::Maps`]) and fails the operations its [`Fault`]s
//!   select: the Nth write of all, every update of one map, the first
//!   delete after two, ... It records every operation issued
//!   ([`Faulty::issued`]), so a test can fail each write of an `apply` in
//!   turn.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, HashMap},
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::{maps::MapError, sys::SyscallError};
use lb_common::{Affinity4, Affinity4Key, Ct4Key, CtEntry, Service4Value, Slot, SlotKey, SrcRangeOf, SvcName, Vip4, sizes};

use super::store::{CtEntries, CtKey, CtMap, CtValue, MapFamily, MapKind, MapStore, PerFamily, SrcRangeEntries};
use crate::{datapath::MapSizes, maps::MapsError};

type Table<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

fn syscall(call: &'static str, errno: i32) -> MapError {
    MapError::SyscallError(SyscallError { call, io_error: std::io::Error::from_raw_os_error(errno) })
}

/// The maps of one family that name an address, in memory.
#[derive(Clone, Debug)]
pub struct FakeFamily<A: MapFamily> {
    services: Table<A::ServiceKey, Service4Value>,
    /// Arrays: the slots ever written (the others read as zeroes).
    backends: BTreeMap<u32, A::Backend>,
    revnat: BTreeMap<u32, A::RevNat>,
    vips: Table<A::VipKey, Vip4>,
    /// Conntrack: TCP flows, and all others.
    ct_tcp: Table<CtKey<A>, CtValue<A>>,
    ct_any: Table<CtKey<A>, CtValue<A>>,
    /// (prefix length, frontend ID as stored, address) -> 1.
    src_ranges: Table<(u32, u32, A::VipKey), u32>,
}

impl<A: MapFamily> FakeFamily<A> {
    fn ct(&self, map: CtMap) -> &Table<CtKey<A>, CtValue<A>> {
        if map == CtMap::Tcp { &self.ct_tcp } else { &self.ct_any }
    }

    fn ct_mut(&mut self, map: CtMap) -> &mut Table<CtKey<A>, CtValue<A>> {
        if map == CtMap::Tcp { &mut self.ct_tcp } else { &mut self.ct_any }
    }
}

impl<A: MapFamily> Default for FakeFamily<A> {
    fn default() -> Self {
        FakeFamily {
            services: Table::default(),
            backends: BTreeMap::new(),
            revnat: BTreeMap::new(),
            vips: Table::default(),
            ct_tcp: Table::default(),
            ct_any: Table::default(),
            src_ranges: Table::default(),
        }
    }
}

/// Both families' [`FakeFamily`].
#[derive(Clone, Debug, Default)]
pub struct FakeFamilies {
    v4: FakeFamily<Ipv4Addr>,
    v6: FakeFamily<Ipv6Addr>,
}

impl PerFamily for FakeFamilies {
    type Of<A: MapFamily> = FakeFamily<A>;
    fn v4(&self) -> &FakeFamily<Ipv4Addr> {
        &self.v4
    }
    fn v4_mut(&mut self) -> &mut FakeFamily<Ipv4Addr> {
        &mut self.v4
    }
    fn v6(&self) -> &FakeFamily<Ipv6Addr> {
        &self.v6
    }
    fn v6_mut(&mut self) -> &mut FakeFamily<Ipv6Addr> {
        &mut self.v6
    }
}

/// The maps of the datapath, in memory.
#[derive(Clone, Debug)]
pub struct FakeMaps {
    max_entries: BTreeMap<MapKind, u32>,
    /// The maps that name an address, per family.
    fam: FakeFamilies,
    slots: Table<SlotKey, Slot>,
    names: Table<u32, SvcName>,
    maglev: BTreeMap<u32, Vec<u32>>,
    affinity: Table<Affinity4Key, Affinity4>,
}

impl Default for FakeMaps {
    /// The default sizes, as `lb-agent run` creates the maps.
    fn default() -> Self {
        FakeMaps::new(&MapSizes::default())
    }
}

impl FakeMaps {
    /// Empty maps of `sizes` (the fixed-size maps as in the eBPF object).
    pub fn new(sizes: &MapSizes) -> FakeMaps {
        let max_entries = MapKind::ALL
            .iter()
            .map(|&k| {
                let fixed = match k {
                    MapKind::Maglev => sizes::MAGLEV,
                    MapKind::SrcRanges6 => sizes::SRC_RANGES6,
                    _ => sizes::SRC_RANGES,
                };
                (k, sizes.for_map(k.name()).unwrap_or(fixed))
            })
            .collect();
        FakeMaps {
            max_entries,
            fam: FakeFamilies::default(),
            slots: Table::default(),
            names: Table::default(),
            maglev: BTreeMap::new(),
            affinity: Table::default(),
        }
    }

    /// Makes `map` hold at most `n` entries from now on (entries it holds
    /// beyond that stay; new keys are refused).
    pub fn set_max_entries(&mut self, map: MapKind, n: u32) {
        self.max_entries.insert(map, n);
    }

    /// A conntrack entry, as the datapath writes them.
    pub fn insert_ct(&mut self, key: &Ct4Key, entry: &CtEntry) {
        self.insert_ct_of::<Ipv4Addr>(key, entry);
    }

    /// A conntrack entry of family `A`, as the datapath writes them.
    pub fn insert_ct_of<A: MapFamily>(&mut self, key: &CtKey<A>, entry: &CtValue<A>) {
        let map = if key.proto == lb_common::IPPROTO_TCP { CtMap::Tcp } else { CtMap::Any };
        A::pick_mut(&mut self.fam).ct_mut(map).insert(*key, *entry);
    }

    /// An affinity entry, as the datapath writes them.
    pub fn insert_affinity(&mut self, key: &Affinity4Key, entry: &Affinity4) {
        self.affinity.insert(*key, *entry);
    }

    fn max(&self, map: MapKind) -> u32 {
        self.max_entries[&map]
    }

    /// A hash map insert: a new key needs room.
    fn hash_insert<K: Eq + Hash, V>(max: u32, map: MapKind, table: &mut Table<K, V>, key: K, value: V) -> Result<(), MapsError> {
        if !table.contains_key(&key) && table.len() >= max as usize {
            let errno = if matches!(map, MapKind::SrcRanges | MapKind::SrcRanges6) { libc::ENOSPC } else { libc::E2BIG };
            return Err(MapsError::write(map.name(), max, syscall("bpf_map_update_elem", errno)));
        }
        table.insert(key, value);
        Ok(())
    }

    fn array_set<V>(max: u32, map: MapKind, array: &mut BTreeMap<u32, V>, index: u32, value: V) -> Result<(), MapsError> {
        // As `Named::set`: checked before the syscall.
        if index >= max {
            return Err(MapsError::Full { name: map.name(), max_entries: max });
        }
        array.insert(index, value);
        Ok(())
    }

    fn batch_remove<K: Eq + Hash>(table: &mut Table<K, impl Sized>, keys: &[K]) -> usize {
        keys.iter().filter(|k| table.remove(k).is_some()).count()
    }
}

fn sorted<K: Copy + Ord, V: Copy>(entries: impl Iterator<Item = (K, V)>) -> Vec<(K, V)> {
    let mut v: Vec<(K, V)> = entries.collect();
    v.sort_by_key(|(k, _)| *k);
    v
}

impl MapStore for FakeMaps {
    fn max_entries(&self, map: MapKind) -> u32 {
        self.max(map)
    }

    fn services<A: MapFamily>(&self) -> Result<Vec<(A::ServiceKey, Service4Value)>, MapsError> {
        Ok(sorted(A::pick(&self.fam).services.iter().map(|(k, v)| (*k, *v))))
    }

    fn insert_service<A: MapFamily>(&mut self, key: &A::ServiceKey, value: &Service4Value) -> Result<(), MapsError> {
        let max = self.max(A::SERVICES);
        Self::hash_insert(max, A::SERVICES, &mut A::pick_mut(&mut self.fam).services, *key, *value)
    }

    fn remove_service<A: MapFamily>(&mut self, key: &A::ServiceKey) -> Result<(), MapsError> {
        A::pick_mut(&mut self.fam).services.remove(key);
        Ok(())
    }

    fn slot(&self, key: &SlotKey) -> Result<Option<Slot>, MapsError> {
        Ok(self.slots.get(key).copied())
    }

    fn slots(&self) -> Result<Vec<(SlotKey, Slot)>, MapsError> {
        Ok(sorted(self.slots.iter().map(|(k, v)| (*k, *v))))
    }

    fn insert_slot(&mut self, key: &SlotKey, slot: &Slot) -> Result<(), MapsError> {
        Self::hash_insert(self.max(MapKind::Slots), MapKind::Slots, &mut self.slots, *key, *slot)
    }

    fn remove_slot(&mut self, key: &SlotKey) -> Result<(), MapsError> {
        self.slots.remove(key);
        Ok(())
    }

    fn remove_slots(&mut self, keys: &[SlotKey]) -> Result<usize, MapsError> {
        Ok(Self::batch_remove(&mut self.slots, keys))
    }

    fn backends<A: MapFamily>(&self) -> Result<Vec<(u32, A::Backend)>, MapsError> {
        Ok(A::pick(&self.fam).backends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn set_backend<A: MapFamily>(&mut self, id: u32, backend: &A::Backend) -> Result<(), MapsError> {
        let max = self.max(A::BACKENDS);
        Self::array_set(max, A::BACKENDS, &mut A::pick_mut(&mut self.fam).backends, id, *backend)
    }

    fn revnats<A: MapFamily>(&self) -> Result<Vec<(u32, A::RevNat)>, MapsError> {
        Ok(A::pick(&self.fam).revnat.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn set_revnat<A: MapFamily>(&mut self, id: u32, revnat: &A::RevNat) -> Result<(), MapsError> {
        let max = self.max(A::REVNAT);
        Self::array_set(max, A::REVNAT, &mut A::pick_mut(&mut self.fam).revnat, id, *revnat)
    }

    fn name(&self, id: u32) -> Result<Option<SvcName>, MapsError> {
        Ok(self.names.get(&id).copied())
    }

    fn names(&self) -> Result<Vec<(u32, SvcName)>, MapsError> {
        Ok(sorted(self.names.iter().map(|(k, v)| (*k, *v))))
    }

    fn insert_name(&mut self, id: u32, name: &SvcName) -> Result<(), MapsError> {
        Self::hash_insert(self.max(MapKind::Names), MapKind::Names, &mut self.names, id, *name)
    }

    fn remove_name(&mut self, id: u32) -> Result<(), MapsError> {
        self.names.remove(&id);
        Ok(())
    }

    fn vips<A: MapFamily>(&self) -> Result<Vec<(A::VipKey, Vip4)>, MapsError> {
        Ok(sorted(A::pick(&self.fam).vips.iter().map(|(k, v)| (*k, *v))))
    }

    fn insert_vip<A: MapFamily>(&mut self, addr: A::VipKey, vip: &Vip4) -> Result<(), MapsError> {
        let max = self.max(A::VIPS);
        Self::hash_insert(max, A::VIPS, &mut A::pick_mut(&mut self.fam).vips, addr, *vip)
    }

    fn remove_vip<A: MapFamily>(&mut self, addr: A::VipKey) -> Result<(), MapsError> {
        A::pick_mut(&mut self.fam).vips.remove(&addr);
        Ok(())
    }

    fn write_maglev(&mut self, id: u32, table: &[u32]) -> Result<usize, MapsError> {
        // As `Maps::write_maglev`: a table of the same size is patched
        // where it differs, another one swapped in with one insert.
        if let Some(current) = self.maglev.get_mut(&id)
            && current.len() == table.len()
        {
            let changed = current.iter().zip(table).filter(|(a, b)| a != b).count();
            current.copy_from_slice(table);
            return Ok(changed);
        }
        let max = self.max(MapKind::Maglev);
        if !self.maglev.contains_key(&id) && self.maglev.len() >= max as usize {
            return Err(MapsError::write(MapKind::Maglev.name(), max, syscall("bpf_map_update_elem", libc::E2BIG)));
        }
        self.maglev.insert(id, table.to_vec());
        Ok(table.len() + 1)
    }

    fn remove_maglev(&mut self, id: u32) -> Result<(), MapsError> {
        self.maglev.remove(&id);
        Ok(())
    }

    fn maglev_ids(&self) -> Result<Vec<u32>, MapsError> {
        Ok(self.maglev.keys().copied().collect())
    }

    fn maglev_table(&self, id: u32) -> Result<Option<Vec<u32>>, MapsError> {
        Ok(self.maglev.get(&id).cloned())
    }

    fn src_ranges<A: MapFamily>(&self) -> Result<SrcRangeEntries<A>, MapsError> {
        let mut keys: Vec<(u32, u32, A::VipKey)> = A::pick(&self.fam).src_ranges.keys().copied().collect();
        keys.sort_unstable();
        Ok(keys.into_iter().map(|(len, frontend_id, addr)| (len, SrcRangeOf { frontend_id, addr })).collect())
    }

    fn insert_src_range<A: MapFamily>(&mut self, prefix_len: u32, data: SrcRangeOf<A::VipKey>) -> Result<(), MapsError> {
        let key = (prefix_len, data.frontend_id, data.addr);
        let max = self.max(A::SRC_RANGES);
        Self::hash_insert(max, A::SRC_RANGES, &mut A::pick_mut(&mut self.fam).src_ranges, key, 1)
    }

    fn remove_src_range<A: MapFamily>(&mut self, prefix_len: u32, data: SrcRangeOf<A::VipKey>) -> Result<(), MapsError> {
        A::pick_mut(&mut self.fam).src_ranges.remove(&(prefix_len, data.frontend_id, data.addr));
        Ok(())
    }

    fn ct_entries<A: MapFamily>(&self, map: CtMap) -> Result<CtEntries<A>, MapsError> {
        Ok(A::pick(&self.fam).ct(map).iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn ct_entry<A: MapFamily>(&self, map: CtMap, key: &CtKey<A>) -> Result<Option<CtValue<A>>, MapsError> {
        Ok(A::pick(&self.fam).ct(map).get(key).copied())
    }

    fn remove_ct<A: MapFamily>(&mut self, map: CtMap, keys: &[CtKey<A>]) -> Result<usize, MapsError> {
        Ok(Self::batch_remove(A::pick_mut(&mut self.fam).ct_mut(map), keys))
    }

    fn affinity(&self) -> Result<Vec<(Affinity4Key, Affinity4)>, MapsError> {
        Ok(self.affinity.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn remove_affinity(&mut self, keys: &[Affinity4Key]) -> Result<usize, MapsError> {
        Ok(Self::batch_remove(&mut self.affinity, keys))
    }
}

/// The kind of a map operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    /// An insert or update (a Maglev table write is one).
    Update,
    /// A delete, one key or a batch.
    Delete,
}

/// One operation a [`Faulty`] passed on or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Issued {
    pub map: MapKind,
    pub op: Op,
    pub failed: bool,
}

impl Issued {
    pub fn is_write(&self) -> bool {
        self.op != Op::Read
    }
}

/// Which operations fail, and how.
#[derive(Clone, Debug)]
pub struct Fault {
    /// The map, or any.
    pub map: Option<MapKind>,
    /// The operation, or any write (update or delete).
    pub op: Option<Op>,
    /// Matching operations that go through before the first failure.
    pub skip: usize,
    /// Matching operations that fail after those (`usize::MAX`: all).
    pub times: usize,
    /// What they fail with: `E2BIG` reads as a full map.
    pub errno: i32,
    matched: Cell<usize>,
}

impl Fault {
    /// Every `op` on `map` fails with `EIO`.
    pub fn on(map: MapKind, op: Op) -> Fault {
        Fault { map: Some(map), op: Some(op), skip: 0, times: usize::MAX, errno: libc::EIO, matched: Cell::new(0) }
    }

    /// Every write (update or delete) of any map fails with `EIO`.
    pub fn any_write() -> Fault {
        Fault { map: None, op: None, skip: 0, times: usize::MAX, errno: libc::EIO, matched: Cell::new(0) }
    }

    /// The `n`th write (from 0) of any map fails, once, with `EIO`.
    pub fn nth_write(n: usize) -> Fault {
        Fault::any_write().after(n).once()
    }

    /// Lets `n` matching operations through first.
    pub fn after(mut self, n: usize) -> Fault {
        self.skip = n;
        self
    }

    /// Fails one matching operation only.
    pub fn once(mut self) -> Fault {
        self.times = 1;
        self
    }

    pub fn errno(mut self, errno: i32) -> Fault {
        self.errno = errno;
        self
    }

    /// Counts an operation; whether it fails.
    fn hit(&self, map: MapKind, op: Op) -> bool {
        let matches = self.map.is_none_or(|m| m == map) && self.op.map_or(op != Op::Read, |o| o == op);
        if !matches {
            return false;
        }
        let n = self.matched.get();
        self.matched.set(n + 1);
        n >= self.skip && n - self.skip < self.times
    }
}

/// How an operation reports a failure, as the pinned maps do.
#[derive(Clone, Copy)]
enum Shape {
    /// One key (`bpf_map_*_elem`).
    Single,
    /// A batch (`BPF_MAP_*_BATCH`).
    Batch,
}

/// A [`MapStore`] that fails the operations its [`Fault`]s select and
/// passes the others to `M`.
pub struct Faulty<M> {
    inner: M,
    faults: Vec<Fault>,
    issued: RefCell<Vec<Issued>>,
}

impl<M: MapStore> Faulty<M> {
    pub fn new(inner: M) -> Faulty<M> {
        Faulty { inner, faults: Vec::new(), issued: RefCell::new(Vec::new()) }
    }

    /// Adds a fault; its operations are counted from now on.
    pub fn inject(&mut self, fault: Fault) {
        self.faults.push(fault);
    }

    /// Removes every fault: from now on everything goes through.
    pub fn heal(&mut self) {
        self.faults.clear();
    }

    /// Every operation issued so far.
    pub fn issued(&self) -> Vec<Issued> {
        self.issued.borrow().clone()
    }

    /// Forgets the operations issued so far.
    pub fn clear_issued(&mut self) {
        self.issued.borrow_mut().clear();
    }

    pub fn inner(&self) -> &M {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut M {
        &mut self.inner
    }

    pub fn into_inner(self) -> M {
        self.inner
    }

    fn check(&self, map: MapKind, op: Op, shape: Shape) -> Result<(), MapsError> {
        // Every fault counts the operation, whichever fails it.
        let failing: Vec<i32> = self.faults.iter().filter(|f| f.hit(map, op)).map(|f| f.errno).collect();
        self.issued.borrow_mut().push(Issued { map, op, failed: !failing.is_empty() });
        let Some(&errno) = failing.first() else { return Ok(()) };
        let name = map.name();
        Err(match (shape, op) {
            (Shape::Batch, _) => MapsError::Batch { name, source: std::io::Error::from_raw_os_error(errno) },
            (Shape::Single, Op::Read) => MapsError::Read { name, source: syscall("bpf_map_lookup_elem", errno) },
            (Shape::Single, Op::Update) => MapsError::write(name, self.inner.max_entries(map), syscall("bpf_map_update_elem", errno)),
            (Shape::Single, Op::Delete) => MapsError::write(name, self.inner.max_entries(map), syscall("bpf_map_delete_elem", errno)),
        })
    }
}

impl<M: MapStore> MapStore for Faulty<M> {
    fn max_entries(&self, map: MapKind) -> u32 {
        self.inner.max_entries(map)
    }

    fn services<A: MapFamily>(&self) -> Result<Vec<(A::ServiceKey, Service4Value)>, MapsError> {
        self.check(A::SERVICES, Op::Read, Shape::Batch)?;
        self.inner.services::<A>()
    }

    fn insert_service<A: MapFamily>(&mut self, key: &A::ServiceKey, value: &Service4Value) -> Result<(), MapsError> {
        self.check(A::SERVICES, Op::Update, Shape::Single)?;
        self.inner.insert_service::<A>(key, value)
    }

    fn remove_service<A: MapFamily>(&mut self, key: &A::ServiceKey) -> Result<(), MapsError> {
        self.check(A::SERVICES, Op::Delete, Shape::Single)?;
        self.inner.remove_service::<A>(key)
    }

    fn slot(&self, key: &SlotKey) -> Result<Option<Slot>, MapsError> {
        self.check(MapKind::Slots, Op::Read, Shape::Single)?;
        self.inner.slot(key)
    }

    fn slots(&self) -> Result<Vec<(SlotKey, Slot)>, MapsError> {
        self.check(MapKind::Slots, Op::Read, Shape::Batch)?;
        self.inner.slots()
    }

    fn insert_slot(&mut self, key: &SlotKey, slot: &Slot) -> Result<(), MapsError> {
        self.check(MapKind::Slots, Op::Update, Shape::Single)?;
        self.inner.insert_slot(key, slot)
    }

    fn remove_slot(&mut self, key: &SlotKey) -> Result<(), MapsError> {
        self.check(MapKind::Slots, Op::Delete, Shape::Single)?;
        self.inner.remove_slot(key)
    }

    fn remove_slots(&mut self, keys: &[SlotKey]) -> Result<usize, MapsError> {
        self.check(MapKind::Slots, Op::Delete, Shape::Batch)?;
        self.inner.remove_slots(keys)
    }

    fn backends<A: MapFamily>(&self) -> Result<Vec<(u32, A::Backend)>, MapsError> {
        self.check(A::BACKENDS, Op::Read, Shape::Batch)?;
        self.inner.backends::<A>()
    }

    fn set_backend<A: MapFamily>(&mut self, id: u32, backend: &A::Backend) -> Result<(), MapsError> {
        self.check(A::BACKENDS, Op::Update, Shape::Single)?;
        self.inner.set_backend::<A>(id, backend)
    }

    fn revnats<A: MapFamily>(&self) -> Result<Vec<(u32, A::RevNat)>, MapsError> {
        self.check(A::REVNAT, Op::Read, Shape::Batch)?;
        self.inner.revnats::<A>()
    }

    fn set_revnat<A: MapFamily>(&mut self, id: u32, revnat: &A::RevNat) -> Result<(), MapsError> {
        self.check(A::REVNAT, Op::Update, Shape::Single)?;
        self.inner.set_revnat::<A>(id, revnat)
    }

    fn name(&self, id: u32) -> Result<Option<SvcName>, MapsError> {
        self.check(MapKind::Names, Op::Read, Shape::Single)?;
        self.inner.name(id)
    }

    fn names(&self) -> Result<Vec<(u32, SvcName)>, MapsError> {
        self.check(MapKind::Names, Op::Read, Shape::Batch)?;
        self.inner.names()
    }

    fn insert_name(&mut self, id: u32, name: &SvcName) -> Result<(), MapsError> {
        self.check(MapKind::Names, Op::Update, Shape::Single)?;
        self.inner.insert_name(id, name)
    }

    fn remove_name(&mut self, id: u32) -> Result<(), MapsError> {
        self.check(MapKind::Names, Op::Delete, Shape::Single)?;
        self.inner.remove_name(id)
    }

    fn vips<A: MapFamily>(&self) -> Result<Vec<(A::VipKey, Vip4)>, MapsError> {
        self.check(A::VIPS, Op::Read, Shape::Batch)?;
        self.inner.vips::<A>()
    }

    fn insert_vip<A: MapFamily>(&mut self, addr: A::VipKey, vip: &Vip4) -> Result<(), MapsError> {
        self.check(A::VIPS, Op::Update, Shape::Single)?;
        self.inner.insert_vip::<A>(addr, vip)
    }

    fn remove_vip<A: MapFamily>(&mut self, addr: A::VipKey) -> Result<(), MapsError> {
        self.check(A::VIPS, Op::Delete, Shape::Single)?;
        self.inner.remove_vip::<A>(addr)
    }

    fn write_maglev(&mut self, id: u32, table: &[u32]) -> Result<usize, MapsError> {
        self.check(MapKind::Maglev, Op::Update, Shape::Single)?;
        self.inner.write_maglev(id, table)
    }

    fn remove_maglev(&mut self, id: u32) -> Result<(), MapsError> {
        self.check(MapKind::Maglev, Op::Delete, Shape::Single)?;
        self.inner.remove_maglev(id)
    }

    fn maglev_ids(&self) -> Result<Vec<u32>, MapsError> {
        self.check(MapKind::Maglev, Op::Read, Shape::Batch)?;
        self.inner.maglev_ids()
    }

    fn maglev_table(&self, id: u32) -> Result<Option<Vec<u32>>, MapsError> {
        self.check(MapKind::Maglev, Op::Read, Shape::Batch)?;
        self.inner.maglev_table(id)
    }

    fn src_ranges<A: MapFamily>(&self) -> Result<SrcRangeEntries<A>, MapsError> {
        self.check(A::SRC_RANGES, Op::Read, Shape::Single)?;
        self.inner.src_ranges::<A>()
    }

    fn insert_src_range<A: MapFamily>(&mut self, prefix_len: u32, data: SrcRangeOf<A::VipKey>) -> Result<(), MapsError> {
        self.check(A::SRC_RANGES, Op::Update, Shape::Single)?;
        self.inner.insert_src_range::<A>(prefix_len, data)
    }

    fn remove_src_range<A: MapFamily>(&mut self, prefix_len: u32, data: SrcRangeOf<A::VipKey>) -> Result<(), MapsError> {
        self.check(A::SRC_RANGES, Op::Delete, Shape::Single)?;
        self.inner.remove_src_range::<A>(prefix_len, data)
    }

    fn ct_entries<A: MapFamily>(&self, map: CtMap) -> Result<CtEntries<A>, MapsError> {
        self.check(map.kind_of::<A>(), Op::Read, Shape::Batch)?;
        self.inner.ct_entries::<A>(map)
    }

    fn ct_entry<A: MapFamily>(&self, map: CtMap, key: &CtKey<A>) -> Result<Option<CtValue<A>>, MapsError> {
        self.check(map.kind_of::<A>(), Op::Read, Shape::Single)?;
        self.inner.ct_entry::<A>(map, key)
    }

    fn remove_ct<A: MapFamily>(&mut self, map: CtMap, keys: &[CtKey<A>]) -> Result<usize, MapsError> {
        self.check(map.kind_of::<A>(), Op::Delete, Shape::Batch)?;
        self.inner.remove_ct::<A>(map, keys)
    }

    fn affinity(&self) -> Result<Vec<(Affinity4Key, Affinity4)>, MapsError> {
        self.check(MapKind::Affinity, Op::Read, Shape::Batch)?;
        self.inner.affinity()
    }

    fn remove_affinity(&mut self, keys: &[Affinity4Key]) -> Result<usize, MapsError> {
        self.check(MapKind::Affinity, Op::Delete, Shape::Batch)?;
        self.inner.remove_affinity(keys)
    }
}
