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

use std::{
    fmt::Debug,
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::maps::{Array, HashMap, LpmTrie, MapData};
use lb_common::{
    Addr6, Affinity4, Affinity4Key, Backend4, Backend6, Ct4Key, Ct6Entry, Ct6Key, CtEntry, CtEntryOf, CtKeyOf, RevNat4, RevNat6, RevNatKey,
    SCOPE_EXTERNAL, SCOPE_INTERNAL, Service4Key, Service4Value, Service6Key, Slot, SlotKey, SrcRangeOf, SvcName, Vip4, addr6, ipv6, names,
};

use crate::{
    maps::{Maps, MapsError, Named},
    model::{BackendAddr, FrontendAddr, IpFamily, Protocol, Scope},
};

/// The maps the reconciler reads and writes. The `*6` ones are the IPv6
/// twins of the maps that name an address; the others (slots, names,
/// Maglev tables, ...) are indexed by the frontend ID both families share.
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
    Services6,
    Backends6,
    RevNat6,
    Vips6,
    CtTcp6,
    CtAny6,
    SrcRanges6,
}

impl MapKind {
    pub const ALL: [MapKind; 18] = [
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
        MapKind::Services6,
        MapKind::Backends6,
        MapKind::RevNat6,
        MapKind::Vips6,
        MapKind::CtTcp6,
        MapKind::CtAny6,
        MapKind::SrcRanges6,
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
            MapKind::Services6 => names::SERVICES6,
            MapKind::Backends6 => names::BACKENDS6,
            MapKind::RevNat6 => names::REVNAT6,
            MapKind::Vips6 => names::VIPS6,
            MapKind::CtTcp6 => names::CT_TCP6,
            MapKind::CtAny6 => names::CT_ANY6,
            MapKind::SrcRanges6 => names::SRC_RANGES6,
        }
    }
}

/// A backend slot (`LB4_BACKENDS`, `LB6_BACKENDS`) read back, host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSlot<A> {
    /// `None`: a free slot (the address all zeroes).
    pub ip: Option<A>,
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
    pub version: u16,
}

/// A rev-NAT slot (`LB4_REVNAT`, `LB6_REVNAT`) read back, host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevNatSlot<A> {
    /// `None`: no frontend of this family holds the ID.
    pub ip: Option<A>,
    pub port: u16,
    pub version: u16,
}

/// Something held once per address family (the reconciler's state, the
/// fakes' tables): [`MapFamily::pick`] reaches the part of a family.
pub trait PerFamily {
    type Of<A: MapFamily>;
    fn v4(&self) -> &Self::Of<Ipv4Addr>;
    fn v4_mut(&mut self) -> &mut Self::Of<Ipv4Addr>;
    fn v6(&self) -> &Self::Of<Ipv6Addr>;
    fn v6_mut(&mut self) -> &mut Self::Of<Ipv6Addr>;
}

/// An address family as the reconciler writes it: its map entries
/// (`lb_common` keys and values), the maps that hold them, and its part of
/// anything held per family. One reconciler path, written over this trait,
/// serves both families: [`Ipv4Addr`] picks the `LB4_*` maps, [`Ipv6Addr`]
/// the `LB6_*` ones.
pub trait MapFamily: IpFamily {
    type ServiceKey: aya::Pod + Copy + Eq + Hash + Ord + Debug;
    type Backend: aya::Pod + Copy + Eq + Debug;
    type RevNat: aya::Pod + Copy + Eq + Debug;
    /// A `*_VIPS` key: the address as the maps store it.
    type VipKey: aya::Pod + Copy + Eq + Hash + Ord + Debug + crate::maps::VipAddr + lb_common::RangeAddr;

    const SERVICES: MapKind;
    const BACKENDS: MapKind;
    const REVNAT: MapKind;
    const VIPS: MapKind;
    /// loadBalancerSourceRanges (`LB4_SRC_RANGES`, `LB6_SRC_RANGES`).
    const SRC_RANGES: MapKind;
    /// The agent flag that sizes the backend map.
    const BACKENDS_SIZE_FLAG: &'static str;
    /// The conntrack maps (TCP, everything else) and the flags that size
    /// them.
    const CT: [(CtMap, MapKind, &'static str); 2];

    /// A frontend key; `port` in host order.
    fn service_key(ip: Self, port: u16, proto: u8, scope: u8) -> Self::ServiceKey;
    /// (address, port in host order, protocol, scope) of a key.
    fn service_parts(key: &Self::ServiceKey) -> (Self, u16, u8, u8);
    fn backend_entry(slot: BackendSlot<Self>) -> Self::Backend;
    fn backend_slot(b: &Self::Backend) -> BackendSlot<Self>;
    fn revnat_entry(slot: RevNatSlot<Self>) -> Self::RevNat;
    fn revnat_slot(r: &Self::RevNat) -> RevNatSlot<Self>;
    fn vip_key(ip: Self) -> Self::VipKey;
    fn vip_ip(key: Self::VipKey) -> Self;

    fn pick<P: PerFamily>(p: &P) -> &P::Of<Self>;
    fn pick_mut<P: PerFamily>(p: &mut P) -> &mut P::Of<Self>;

    /// This family's maps among the pinned ones.
    fn pinned_services(m: &Maps) -> &Named<HashMap<MapData, Self::ServiceKey, Service4Value>>;
    fn pinned_services_mut(m: &mut Maps) -> &mut Named<HashMap<MapData, Self::ServiceKey, Service4Value>>;
    fn pinned_backends(m: &Maps) -> &Named<Array<MapData, Self::Backend>>;
    fn pinned_backends_mut(m: &mut Maps) -> &mut Named<Array<MapData, Self::Backend>>;
    fn pinned_revnat(m: &Maps) -> &Named<Array<MapData, Self::RevNat>>;
    fn pinned_revnat_mut(m: &mut Maps) -> &mut Named<Array<MapData, Self::RevNat>>;
    fn pinned_vips(m: &Maps) -> &Named<HashMap<MapData, Self::VipKey, Vip4>>;
    fn pinned_vips_mut(m: &mut Maps) -> &mut Named<HashMap<MapData, Self::VipKey, Vip4>>;
    fn pinned_src_ranges(m: &Maps) -> &Named<LpmTrie<MapData, SrcRangeOf<Self::VipKey>, u32>>;
    fn pinned_src_ranges_mut(m: &mut Maps) -> &mut Named<LpmTrie<MapData, SrcRangeOf<Self::VipKey>, u32>>;
    /// Every entry of the family's conntrack map `map`.
    fn pinned_ct_entries(m: &Maps, map: CtMap) -> Result<CtEntries<Self>, MapsError>;
    /// The entry at `key` in one of its pinned conntrack maps, if any.
    fn pinned_ct_entry(m: &Maps, map: CtMap, key: &CtKey<Self>) -> Result<Option<CtValue<Self>>, MapsError>;
    /// Deletes `keys` from it in batches; how many were deleted.
    fn remove_pinned_ct(m: &mut Maps, map: CtMap, keys: &[CtKey<Self>]) -> Result<usize, MapsError>;
    /// Adds a frontend address to the pinned maps (its family's pre-filter
    /// learns it first: `Maps::insert_vip`).
    fn insert_pinned_vip(m: &mut Maps, addr: Self::VipKey, vip: &Vip4) -> Result<(), MapsError> {
        m.insert_vip(addr, vip)
    }
    /// Removes a frontend address (the pre-filter forgets it after).
    fn remove_pinned_vip(m: &mut Maps, addr: Self::VipKey) -> Result<(), MapsError> {
        m.remove_vip(addr)
    }

    /// The key of a frontend.
    fn key(addr: &FrontendAddr<Self>) -> Self::ServiceKey {
        let scope = match addr.scope {
            Scope::External => SCOPE_EXTERNAL,
            Scope::Internal => SCOPE_INTERNAL,
        };
        Self::service_key(addr.ip, addr.port, addr.proto.number(), scope)
    }

    /// The frontend of a key; `None` for a protocol or scope this agent
    /// does not write.
    fn frontend_addr(key: &Self::ServiceKey) -> Option<FrontendAddr<Self>> {
        let (ip, port, proto, scope) = Self::service_parts(key);
        let scope = match scope {
            SCOPE_EXTERNAL => Scope::External,
            SCOPE_INTERNAL => Scope::Internal,
            _ => return None,
        };
        Some(FrontendAddr { ip, port, proto: Protocol::from_number(proto)?, scope })
    }

    /// A backend entry in use.
    fn backend(addr: BackendAddr<Self>, flags: u8, version: u16) -> Self::Backend {
        Self::backend_entry(BackendSlot { ip: Some(addr.ip), port: addr.port, proto: addr.proto.number(), flags, version })
    }

    /// A free backend slot that keeps its version.
    fn free_backend(version: u16) -> Self::Backend {
        Self::backend_entry(BackendSlot { ip: None, port: 0, proto: 0, flags: 0, version })
    }

    /// The rev-NAT slot of a frontend.
    fn revnat(addr: &FrontendAddr<Self>, version: u16) -> Self::RevNat {
        Self::revnat_entry(RevNatSlot { ip: Some(addr.ip), port: addr.port, version })
    }

    /// A free rev-NAT slot that keeps its version.
    fn free_revnat(version: u16) -> Self::RevNat {
        Self::revnat_entry(RevNatSlot { ip: None, port: 0, version })
    }
}

fn v4_addr(ip: Option<Ipv4Addr>) -> u32 {
    ip.map_or(0, |ip| u32::from_ne_bytes(ip.octets()))
}

fn v4_ip(addr: u32) -> Option<Ipv4Addr> {
    (addr != 0).then(|| Ipv4Addr::from(addr.to_ne_bytes()))
}

impl MapFamily for Ipv4Addr {
    type ServiceKey = Service4Key;
    type Backend = Backend4;
    type RevNat = RevNat4;
    type VipKey = u32;

    const SERVICES: MapKind = MapKind::Services;
    const BACKENDS: MapKind = MapKind::Backends;
    const REVNAT: MapKind = MapKind::RevNat;
    const VIPS: MapKind = MapKind::Vips;
    const SRC_RANGES: MapKind = MapKind::SrcRanges;
    const BACKENDS_SIZE_FLAG: &'static str = "--backends-size";
    const CT: [(CtMap, MapKind, &'static str); 2] =
        [(CtMap::Tcp, MapKind::CtTcp, "--ct-tcp-size"), (CtMap::Any, MapKind::CtAny, "--ct-any-size")];

    fn service_key(ip: Self, port: u16, proto: u8, scope: u8) -> Service4Key {
        Service4Key { addr: u32::from_ne_bytes(ip.octets()), port: port.to_be(), proto, scope }
    }
    fn service_parts(k: &Service4Key) -> (Self, u16, u8, u8) {
        (Ipv4Addr::from(k.addr.to_ne_bytes()), u16::from_be(k.port), k.proto, k.scope)
    }
    fn backend_entry(s: BackendSlot<Self>) -> Backend4 {
        Backend4 { addr: v4_addr(s.ip), port: s.port.to_be(), proto: s.proto, flags: s.flags, version: s.version, _pad: 0 }
    }
    fn backend_slot(b: &Backend4) -> BackendSlot<Self> {
        BackendSlot { ip: v4_ip(b.addr), port: u16::from_be(b.port), proto: b.proto, flags: b.flags, version: b.version }
    }
    fn revnat_entry(s: RevNatSlot<Self>) -> RevNat4 {
        RevNat4 { addr: v4_addr(s.ip), port: s.port.to_be(), version: s.version }
    }
    fn revnat_slot(r: &RevNat4) -> RevNatSlot<Self> {
        RevNatSlot { ip: v4_ip(r.addr), port: u16::from_be(r.port), version: r.version }
    }
    fn vip_key(ip: Self) -> u32 {
        u32::from_ne_bytes(ip.octets())
    }
    fn vip_ip(key: u32) -> Self {
        Ipv4Addr::from(key.to_ne_bytes())
    }

    fn pick<P: PerFamily>(p: &P) -> &P::Of<Self> {
        p.v4()
    }
    fn pick_mut<P: PerFamily>(p: &mut P) -> &mut P::Of<Self> {
        p.v4_mut()
    }

    fn pinned_services(m: &Maps) -> &Named<HashMap<MapData, Service4Key, Service4Value>> {
        &m.services
    }
    fn pinned_services_mut(m: &mut Maps) -> &mut Named<HashMap<MapData, Service4Key, Service4Value>> {
        &mut m.services
    }
    fn pinned_backends(m: &Maps) -> &Named<Array<MapData, Backend4>> {
        &m.backends
    }
    fn pinned_backends_mut(m: &mut Maps) -> &mut Named<Array<MapData, Backend4>> {
        &mut m.backends
    }
    fn pinned_revnat(m: &Maps) -> &Named<Array<MapData, RevNat4>> {
        &m.revnat
    }
    fn pinned_revnat_mut(m: &mut Maps) -> &mut Named<Array<MapData, RevNat4>> {
        &mut m.revnat
    }
    fn pinned_vips(m: &Maps) -> &Named<HashMap<MapData, u32, Vip4>> {
        &m.vips
    }
    fn pinned_vips_mut(m: &mut Maps) -> &mut Named<HashMap<MapData, u32, Vip4>> {
        &mut m.vips
    }
    fn pinned_src_ranges(m: &Maps) -> &Named<LpmTrie<MapData, SrcRangeOf<u32>, u32>> {
        &m.src_ranges
    }
    fn pinned_src_ranges_mut(m: &mut Maps) -> &mut Named<LpmTrie<MapData, SrcRangeOf<u32>, u32>> {
        &mut m.src_ranges
    }
    fn pinned_ct_entries(m: &Maps, map: CtMap) -> Result<Vec<(Ct4Key, CtEntry)>, MapsError> {
        (if map == CtMap::Tcp { &m.ct.tcp } else { &m.ct.any }).entries()
    }
    fn pinned_ct_entry(m: &Maps, map: CtMap, key: &Ct4Key) -> Result<Option<CtEntry>, MapsError> {
        (if map == CtMap::Tcp { &m.ct.tcp } else { &m.ct.any }).get(key)
    }
    fn remove_pinned_ct(m: &mut Maps, map: CtMap, keys: &[Ct4Key]) -> Result<usize, MapsError> {
        (if map == CtMap::Tcp { &mut m.ct.tcp } else { &mut m.ct.any }).remove_all(keys)
    }
}

fn v6_addr(ip: Option<Ipv6Addr>) -> Addr6 {
    ip.map_or([0; 4], addr6)
}

fn v6_ip(addr: Addr6) -> Option<Ipv6Addr> {
    (addr != [0; 4]).then(|| ipv6(addr))
}

impl MapFamily for Ipv6Addr {
    type ServiceKey = Service6Key;
    type Backend = Backend6;
    type RevNat = RevNat6;
    type VipKey = Addr6;

    const SERVICES: MapKind = MapKind::Services6;
    const BACKENDS: MapKind = MapKind::Backends6;
    const REVNAT: MapKind = MapKind::RevNat6;
    const VIPS: MapKind = MapKind::Vips6;
    const SRC_RANGES: MapKind = MapKind::SrcRanges6;
    const BACKENDS_SIZE_FLAG: &'static str = "--backends6-size";
    const CT: [(CtMap, MapKind, &'static str); 2] =
        [(CtMap::Tcp, MapKind::CtTcp6, "--ct6-tcp-size"), (CtMap::Any, MapKind::CtAny6, "--ct6-any-size")];

    fn service_key(ip: Self, port: u16, proto: u8, scope: u8) -> Service6Key {
        Service6Key { addr: addr6(ip), port: port.to_be(), proto, scope }
    }
    fn service_parts(k: &Service6Key) -> (Self, u16, u8, u8) {
        (ipv6(k.addr), u16::from_be(k.port), k.proto, k.scope)
    }
    fn backend_entry(s: BackendSlot<Self>) -> Backend6 {
        Backend6 { addr: v6_addr(s.ip), port: s.port.to_be(), proto: s.proto, flags: s.flags, version: s.version, _pad: 0 }
    }
    fn backend_slot(b: &Backend6) -> BackendSlot<Self> {
        BackendSlot { ip: v6_ip(b.addr), port: u16::from_be(b.port), proto: b.proto, flags: b.flags, version: b.version }
    }
    fn revnat_entry(s: RevNatSlot<Self>) -> RevNat6 {
        RevNat6 { addr: v6_addr(s.ip), port: s.port.to_be(), version: s.version }
    }
    fn revnat_slot(r: &RevNat6) -> RevNatSlot<Self> {
        RevNatSlot { ip: v6_ip(r.addr), port: u16::from_be(r.port), version: r.version }
    }
    fn vip_key(ip: Self) -> Addr6 {
        addr6(ip)
    }
    fn vip_ip(key: Addr6) -> Self {
        ipv6(key)
    }

    fn pick<P: PerFamily>(p: &P) -> &P::Of<Self> {
        p.v6()
    }
    fn pick_mut<P: PerFamily>(p: &mut P) -> &mut P::Of<Self> {
        p.v6_mut()
    }

    fn pinned_services(m: &Maps) -> &Named<HashMap<MapData, Service6Key, Service4Value>> {
        &m.v6.services
    }
    fn pinned_services_mut(m: &mut Maps) -> &mut Named<HashMap<MapData, Service6Key, Service4Value>> {
        &mut m.v6.services
    }
    fn pinned_backends(m: &Maps) -> &Named<Array<MapData, Backend6>> {
        &m.v6.backends
    }
    fn pinned_backends_mut(m: &mut Maps) -> &mut Named<Array<MapData, Backend6>> {
        &mut m.v6.backends
    }
    fn pinned_revnat(m: &Maps) -> &Named<Array<MapData, RevNat6>> {
        &m.v6.revnat
    }
    fn pinned_revnat_mut(m: &mut Maps) -> &mut Named<Array<MapData, RevNat6>> {
        &mut m.v6.revnat
    }
    fn pinned_vips(m: &Maps) -> &Named<HashMap<MapData, Addr6, Vip4>> {
        &m.v6.vips
    }
    fn pinned_vips_mut(m: &mut Maps) -> &mut Named<HashMap<MapData, Addr6, Vip4>> {
        &mut m.v6.vips
    }
    fn pinned_src_ranges(m: &Maps) -> &Named<LpmTrie<MapData, SrcRangeOf<Addr6>, u32>> {
        &m.v6.src_ranges
    }
    fn pinned_src_ranges_mut(m: &mut Maps) -> &mut Named<LpmTrie<MapData, SrcRangeOf<Addr6>, u32>> {
        &mut m.v6.src_ranges
    }
    fn pinned_ct_entries(m: &Maps, map: CtMap) -> Result<Vec<(Ct6Key, Ct6Entry)>, MapsError> {
        (if map == CtMap::Tcp { &m.v6.ct_tcp } else { &m.v6.ct_any }).entries()
    }
    fn pinned_ct_entry(m: &Maps, map: CtMap, key: &Ct6Key) -> Result<Option<Ct6Entry>, MapsError> {
        (if map == CtMap::Tcp { &m.v6.ct_tcp } else { &m.v6.ct_any }).get(key)
    }
    fn remove_pinned_ct(m: &mut Maps, map: CtMap, keys: &[Ct6Key]) -> Result<usize, MapsError> {
        (if map == CtMap::Tcp { &mut m.v6.ct_tcp } else { &mut m.v6.ct_any }).remove_all(keys)
    }
}

/// A source-range map's entries: (prefix length, data).
pub type SrcRangeEntries<A> = Vec<(u32, SrcRangeOf<<A as MapFamily>::VipKey>)>;

/// One of a family's two conntrack maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtMap {
    /// `LB4_CT_TCP`, `LB6_CT_TCP`.
    Tcp,
    /// `LB4_CT_ANY`, `LB6_CT_ANY`: every other protocol.
    Any,
}

impl CtMap {
    pub const BOTH: [CtMap; 2] = [CtMap::Tcp, CtMap::Any];

    /// The IPv4 map.
    pub fn kind(self) -> MapKind {
        self.kind_of::<Ipv4Addr>()
    }

    /// Family `A`'s map.
    pub fn kind_of<A: MapFamily>(self) -> MapKind {
        A::CT[self as usize].1
    }
}

/// A conntrack key of family `A` (`Ct4Key`, `Ct6Key`).
pub type CtKey<A> = CtKeyOf<<A as MapFamily>::VipKey>;
/// A conntrack entry of family `A` (`CtEntry`, `Ct6Entry`).
pub type CtValue<A> = CtEntryOf<<A as MapFamily>::VipKey>;
/// The entries of one of family `A`'s conntrack maps.
pub type CtEntries<A> = Vec<(CtKey<A>, CtValue<A>)>;

/// Every operation the reconciler (with its garbage collection) issues on
/// the maps. Removing a key that is not there is not an error; batch
/// deletes return how many keys they deleted. Array maps (`LB4_BACKENDS`,
/// `LB4_REVNAT` and their IPv6 twins) are listed with at least every slot that is not all
/// zeroes.
pub trait MapStore {
    /// The capacity of a map (`max_entries`).
    fn max_entries(&self, map: MapKind) -> u32;

    /// `LB4_SERVICES` or `LB6_SERVICES`: every frontend entry.
    fn services<A: MapFamily>(&self) -> Result<Vec<(A::ServiceKey, Service4Value)>, MapsError>;
    fn insert_service<A: MapFamily>(&mut self, key: &A::ServiceKey, value: &Service4Value) -> Result<(), MapsError>;
    fn remove_service<A: MapFamily>(&mut self, key: &A::ServiceKey) -> Result<(), MapsError>;

    /// `LB4_SLOTS`.
    fn slot(&self, key: &SlotKey) -> Result<Option<Slot>, MapsError>;
    fn slots(&self) -> Result<Vec<(SlotKey, Slot)>, MapsError>;
    fn insert_slot(&mut self, key: &SlotKey, slot: &Slot) -> Result<(), MapsError>;
    fn remove_slot(&mut self, key: &SlotKey) -> Result<(), MapsError>;
    /// Deletes `keys` in batches.
    fn remove_slots(&mut self, keys: &[SlotKey]) -> Result<usize, MapsError>;

    /// `LB4_BACKENDS` or `LB6_BACKENDS`, an array by backend ID (each
    /// family has its own IDs).
    fn backends<A: MapFamily>(&self) -> Result<Vec<(u32, A::Backend)>, MapsError>;
    fn set_backend<A: MapFamily>(&mut self, id: u32, backend: &A::Backend) -> Result<(), MapsError>;

    /// `LB4_REVNAT` or `LB6_REVNAT`, an array by frontend ID (one ID space
    /// for both families: an ID holds a frontend in one of them).
    fn revnats<A: MapFamily>(&self) -> Result<Vec<(u32, A::RevNat)>, MapsError>;
    fn set_revnat<A: MapFamily>(&mut self, id: u32, revnat: &A::RevNat) -> Result<(), MapsError>;
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

    /// `LB4_VIPS` or `LB6_VIPS`, by address (as the maps store it).
    fn vips<A: MapFamily>(&self) -> Result<Vec<(A::VipKey, Vip4)>, MapsError>;
    fn insert_vip<A: MapFamily>(&mut self, addr: A::VipKey, vip: &Vip4) -> Result<(), MapsError>;
    fn remove_vip<A: MapFamily>(&mut self, addr: A::VipKey) -> Result<(), MapsError>;

    /// `LB4_MAGLEV`: makes `table` the table of frontend `id` (patching an
    /// installed table of the same size where it differs, otherwise
    /// swapping in a new one); returns the map writes it took.
    fn write_maglev(&mut self, id: u32, table: &[u32]) -> Result<usize, MapsError>;
    fn remove_maglev(&mut self, id: u32) -> Result<(), MapsError>;
    /// Frontend IDs that have a table.
    fn maglev_ids(&self) -> Result<Vec<u32>, MapsError>;
    fn maglev_table(&self, id: u32) -> Result<Option<Vec<u32>>, MapsError>;

    /// `LB4_SRC_RANGES` or `LB6_SRC_RANGES`: (prefix length, data) entries.
    fn src_ranges<A: MapFamily>(&self) -> Result<SrcRangeEntries<A>, MapsError>;
    fn insert_src_range<A: MapFamily>(&mut self, prefix_len: u32, data: SrcRangeOf<A::VipKey>) -> Result<(), MapsError>;
    fn remove_src_range<A: MapFamily>(&mut self, prefix_len: u32, data: SrcRangeOf<A::VipKey>) -> Result<(), MapsError>;

    /// Conntrack, read and deleted in batches.
    fn ct_entries<A: MapFamily>(&self, map: CtMap) -> Result<CtEntries<A>, MapsError>;
    /// One entry, read again (the collector's check before it deletes).
    fn ct_entry<A: MapFamily>(&self, map: CtMap, key: &CtKey<A>) -> Result<Option<CtValue<A>>, MapsError>;
    fn remove_ct<A: MapFamily>(&mut self, map: CtMap, keys: &[CtKey<A>]) -> Result<usize, MapsError>;

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
            MapKind::SrcRanges6 => self.v6.src_ranges.max_entries,
            MapKind::CtTcp => self.ct.tcp.max_entries,
            MapKind::CtAny => self.ct.any.max_entries,
            MapKind::Affinity => self.affinity.max_entries,
            MapKind::Services6 => self.v6.services.max_entries,
            MapKind::Backends6 => self.v6.backends.max_entries,
            MapKind::RevNat6 => self.v6.revnat.max_entries,
            MapKind::Vips6 => self.v6.vips.max_entries,
            MapKind::CtTcp6 => self.v6.ct_tcp.max_entries,
            MapKind::CtAny6 => self.v6.ct_any.max_entries,
        }
    }

    fn services<A: MapFamily>(&self) -> Result<Vec<(A::ServiceKey, Service4Value)>, MapsError> {
        A::pinned_services(self).entries()
    }

    fn insert_service<A: MapFamily>(&mut self, key: &A::ServiceKey, value: &Service4Value) -> Result<(), MapsError> {
        A::pinned_services_mut(self).insert(key, value)
    }

    fn remove_service<A: MapFamily>(&mut self, key: &A::ServiceKey) -> Result<(), MapsError> {
        A::pinned_services_mut(self).remove(key)
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

    fn backends<A: MapFamily>(&self) -> Result<Vec<(u32, A::Backend)>, MapsError> {
        A::pinned_backends(self).slots()
    }

    fn set_backend<A: MapFamily>(&mut self, id: u32, backend: &A::Backend) -> Result<(), MapsError> {
        A::pinned_backends_mut(self).set(id, backend)
    }

    fn revnats<A: MapFamily>(&self) -> Result<Vec<(u32, A::RevNat)>, MapsError> {
        A::pinned_revnat(self).slots()
    }

    fn set_revnat<A: MapFamily>(&mut self, id: u32, revnat: &A::RevNat) -> Result<(), MapsError> {
        A::pinned_revnat_mut(self).set(id, revnat)
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

    fn vips<A: MapFamily>(&self) -> Result<Vec<(A::VipKey, Vip4)>, MapsError> {
        A::pinned_vips(self).entries()
    }

    fn insert_vip<A: MapFamily>(&mut self, addr: A::VipKey, vip: &Vip4) -> Result<(), MapsError> {
        A::insert_pinned_vip(self, addr, vip)
    }

    fn remove_vip<A: MapFamily>(&mut self, addr: A::VipKey) -> Result<(), MapsError> {
        A::remove_pinned_vip(self, addr)
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

    fn src_ranges<A: MapFamily>(&self) -> Result<SrcRangeEntries<A>, MapsError> {
        A::pinned_src_ranges(self).entries()
    }

    fn insert_src_range<A: MapFamily>(&mut self, prefix_len: u32, data: SrcRangeOf<A::VipKey>) -> Result<(), MapsError> {
        A::pinned_src_ranges_mut(self).insert(prefix_len, data)
    }

    fn remove_src_range<A: MapFamily>(&mut self, prefix_len: u32, data: SrcRangeOf<A::VipKey>) -> Result<(), MapsError> {
        A::pinned_src_ranges_mut(self).remove(prefix_len, data)
    }

    fn ct_entries<A: MapFamily>(&self, map: CtMap) -> Result<CtEntries<A>, MapsError> {
        A::pinned_ct_entries(self, map)
    }

    fn ct_entry<A: MapFamily>(&self, map: CtMap, key: &CtKey<A>) -> Result<Option<CtValue<A>>, MapsError> {
        A::pinned_ct_entry(self, map, key)
    }

    fn remove_ct<A: MapFamily>(&mut self, map: CtMap, keys: &[CtKey<A>]) -> Result<usize, MapsError> {
        A::remove_pinned_ct(self, map, keys)
    }

    fn affinity(&self) -> Result<Vec<(Affinity4Key, Affinity4)>, MapsError> {
        self.affinity.entries()
    }

    fn remove_affinity(&mut self, keys: &[Affinity4Key]) -> Result<usize, MapsError> {
        self.affinity.remove_all(keys)
    }
}
