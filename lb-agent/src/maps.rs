//! Typed handles on the pinned maps, shared by the reconciler and `list`.

use std::path::{Path, PathBuf};

use tracing::warn;

use aya::maps::{
    Array, HashMap, HashOfMaps, Map, MapData, MapError, PerCpuArray,
    lpm_trie::{Key as LpmKey, LpmTrie},
};
use lb_common::{
    Addr6, Affinity4, Affinity4Key, Backend4, Backend6, Config, Ct4Key, Ct6Entry, Ct6Key, CtEntry, Device, FrontendStats, IPPROTO_TCP,
    Node6Config, NodeConfig, RangeAddr, RevNat4, RevNat6, RevNatKey, Service4Key, Service4Value, Service6Key, Slot, SlotKey, SockRevNat4,
    SockRevNat4Key, SockRevNat6, SockRevNat6Key, SrcRange4, SrcRange6, SrcRangeOf, SvcName, Vip4, names, stat,
};

use crate::vip_filter::{FilterAddr, VipFilter, WordWrite};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("cannot open pinned map {name} at {path}: {source} (is the agent running, or has it run, with this --bpffs directory?)")]
    Open {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("map {name} is full ({max_entries} entries); raise its size with the agent's --*-size flags (`lb-agent run --help`)")]
    Full { name: &'static str, max_entries: u32 },
    #[error("writing map {name} failed: {source}")]
    Write {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("reading map {name} failed: {source}")]
    Read {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("batch operation on map {name} failed: {source}")]
    Batch {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// One pinned map with its name and capacity, for error messages.
pub struct Named<M> {
    pub name: &'static str,
    pub max_entries: u32,
    pub map: M,
}

impl MapsError {
    /// What a failed write to map `name` reports: a full hash map answers
    /// `E2BIG` to an insert of a new key, which reads as [`MapsError::Full`].
    pub fn write(name: &'static str, max_entries: u32, source: MapError) -> MapsError {
        if let MapError::SyscallError(e) = &source
            && e.io_error.raw_os_error() == Some(libc::E2BIG)
        {
            return MapsError::Full { name, max_entries };
        }
        MapsError::Write { name, source }
    }
}

impl<M> Named<M> {
    fn write_error(&self, source: MapError) -> MapsError {
        MapsError::write(self.name, self.max_entries, source)
    }

    fn read_error(&self, source: MapError) -> MapsError {
        MapsError::Read { name: self.name, source }
    }
}

impl<K: aya::Pod, V: aya::Pod> Named<HashMap<MapData, K, V>> {
    pub fn insert(&mut self, key: &K, value: &V) -> Result<(), MapsError> {
        self.map.insert(key, value, 0).map_err(|e| self.write_error(e))
    }

    /// Removes `key`; a key that is already gone is not an error.
    pub fn remove(&mut self, key: &K) -> Result<(), MapsError> {
        match self.map.remove(key) {
            Ok(()) => Ok(()),
            Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(self.write_error(e)),
        }
    }

    pub fn get(&self, key: &K) -> Result<Option<V>, MapsError> {
        match self.map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(self.read_error(e)),
        }
    }

    /// All entries, read in batches.
    pub fn entries(&self) -> Result<Vec<(K, V)>, MapsError> {
        crate::batch::lookup_all(crate::batch::fd(&self.map)).map_err(|e| self.io_error(e))
    }

    /// Deletes `keys` in batches; keys already gone are skipped. Returns
    /// how many were deleted.
    pub fn remove_all(&mut self, keys: &[K]) -> Result<usize, MapsError> {
        crate::batch::delete(crate::batch::fd(&self.map), keys).map_err(|e| self.io_error(e))
    }
}

impl<M> Named<M> {
    fn io_error(&self, e: std::io::Error) -> MapsError {
        MapsError::Batch { name: self.name, source: e }
    }
}

/// An array map indexed by ID (`LB4_BACKENDS`, `LB4_REVNAT`).
impl<V: aya::Pod> Named<Array<MapData, V>> {
    pub fn set(&mut self, index: u32, value: &V) -> Result<(), MapsError> {
        if index >= self.max_entries {
            return Err(MapsError::Full { name: self.name, max_entries: self.max_entries });
        }
        self.map.set(index, value, 0).map_err(|e| self.write_error(e))
    }

    pub fn get(&self, index: u32) -> Result<V, MapsError> {
        self.map.get(&index, 0).map_err(|e| self.read_error(e))
    }

    /// Every slot, read in batches.
    pub fn slots(&self) -> Result<Vec<(u32, V)>, MapsError> {
        crate::batch::lookup_all(crate::batch::fd(&self.map)).map_err(|e| self.io_error(e))
    }
}

/// A source-range trie (`LB4_SRC_RANGES`, `LB6_SRC_RANGES`).
impl<A: RangeAddr + aya::Pod> Named<LpmTrie<MapData, SrcRangeOf<A>, u32>> {
    /// Every entry as (prefix length, data).
    pub fn entries(&self) -> Result<Vec<(u32, SrcRangeOf<A>)>, MapsError> {
        let mut out = Vec::new();
        for k in self.map.keys() {
            match k {
                Ok(k) => out.push((k.prefix_len(), k.data())),
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(self.read_error(e)),
            }
        }
        Ok(out)
    }

    pub fn insert(&mut self, prefix_len: u32, data: SrcRangeOf<A>) -> Result<(), MapsError> {
        self.map.insert(&LpmKey::new(prefix_len, data), 1, 0).map_err(|e| self.write_error(e))
    }

    /// Removes an entry (one that is not there is not an error).
    pub fn remove(&mut self, prefix_len: u32, data: SrcRangeOf<A>) -> Result<(), MapsError> {
        match self.map.remove(&LpmKey::new(prefix_len, data)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(self.write_error(e)),
        }
    }
}

/// Every map of the datapath, opened from its pin.
pub struct Maps {
    pub dir: PathBuf,
    pub services: Named<HashMap<MapData, Service4Key, Service4Value>>,
    pub slots: Named<HashMap<MapData, SlotKey, Slot>>,
    /// Backends by ID (an array).
    pub backends: Named<Array<MapData, Backend4>>,
    /// Frontend addresses and versions by ID (an array).
    pub revnat: Named<Array<MapData, RevNat4>>,
    /// Conntrack, TCP and the rest.
    pub ct: Conntrack,
    pub sock_revnat: Named<HashMap<MapData, SockRevNat4Key, SockRevNat4>>,
    pub config: Named<Array<MapData, Config>>,
    pub names: Named<HashMap<MapData, RevNatKey, SvcName>>,
    pub affinity: Named<HashMap<MapData, Affinity4Key, Affinity4>>,
    /// Frontend ID -> Maglev table (an inner array of backend IDs).
    pub maglev: Named<HashOfMaps<MapData, RevNatKey, Array<MapData, u32>>>,
    /// loadBalancerSourceRanges.
    pub src_ranges: Named<LpmTrie<MapData, SrcRange4, u32>>,
    pub node: Named<Array<MapData, NodeConfig>>,
    pub devices: Named<HashMap<MapData, u32, Device>>,
    /// Frontend addresses and their kinds. Written through
    /// [`Maps::insert_vip`] and [`Maps::remove_vip`], which keep
    /// `vip_filter` in step.
    pub vips: Named<HashMap<MapData, u32, Vip4>>,
    /// The XDP and tc programs' pre-filter of `vips` (see
    /// `crate::vip_filter`).
    pub vip_filter: Named<Array<MapData, u64>>,
    /// What `vip_filter` holds, once read (see [`Maps::sync_vip_filter`]).
    filter: Option<VipFilter>,
    /// The datapath's counters (`lb_common::stat`), per CPU.
    pub stats: Named<PerCpuArray<MapData, u64>>,
    /// What each frontend served, by frontend ID, per CPU.
    pub frontend_stats: Named<PerCpuArray<MapData, FrontendStats>>,
    /// The IPv6 maps.
    pub v6: Maps6,
}

/// The maps of IPv6 frontends that name an address (see
/// `lb_common::maps6`); everything indexed by a frontend ID is shared
/// with IPv4.
pub struct Maps6 {
    pub services: Named<HashMap<MapData, Service6Key, Service4Value>>,
    /// IPv6 backends by their own IDs (an array).
    pub backends: Named<Array<MapData, Backend6>>,
    /// IPv6 frontend addresses and versions by (shared) frontend ID.
    pub revnat: Named<Array<MapData, RevNat6>>,
    /// Written through [`Maps::insert_vip`] and [`Maps::remove_vip`], as
    /// `LB4_VIPS`, which keep `vip_filter` in step.
    pub vips: Named<HashMap<MapData, Addr6, Vip4>>,
    /// tc's pre-filter of `vips`.
    pub vip_filter: Named<Array<MapData, u64>>,
    /// What `vip_filter` holds, once read.
    filter: Option<VipFilter<Addr6>>,
    pub sock_revnat: Named<HashMap<MapData, SockRevNat6Key, SockRevNat6>>,
    /// loadBalancerSourceRanges of IPv6 frontends.
    pub src_ranges: Named<LpmTrie<MapData, SrcRange6, u32>>,
    /// IPv6 conntrack: TCP flows, and all others (LRU maps, garbage
    /// collected with the IPv4 ones).
    pub ct_tcp: Named<HashMap<MapData, Ct6Key, Ct6Entry>>,
    pub ct_any: Named<HashMap<MapData, Ct6Key, Ct6Entry>>,
    /// This node's IPv6 SNAT address (`LB6_NODE`).
    pub node: Named<Array<MapData, Node6Config>>,
}

/// The two conntrack maps: TCP flows, and all others. Keys carry their
/// protocol, so each call goes to the right one.
pub struct Conntrack {
    pub tcp: Named<HashMap<MapData, Ct4Key, CtEntry>>,
    pub any: Named<HashMap<MapData, Ct4Key, CtEntry>>,
}

impl Conntrack {
    fn of(&self, key: &Ct4Key) -> &Named<HashMap<MapData, Ct4Key, CtEntry>> {
        if key.proto == IPPROTO_TCP { &self.tcp } else { &self.any }
    }

    fn of_mut(&mut self, key: &Ct4Key) -> &mut Named<HashMap<MapData, Ct4Key, CtEntry>> {
        if key.proto == IPPROTO_TCP { &mut self.tcp } else { &mut self.any }
    }

    pub fn get(&self, key: &Ct4Key) -> Result<Option<CtEntry>, MapsError> {
        self.of(key).get(key)
    }

    pub fn insert(&mut self, key: &Ct4Key, value: &CtEntry) -> Result<(), MapsError> {
        self.of_mut(key).insert(key, value)
    }

    pub fn remove(&mut self, key: &Ct4Key) -> Result<(), MapsError> {
        self.of_mut(key).remove(key)
    }

    /// Deletes `keys` (of either map) in batches; returns how many were
    /// deleted.
    pub fn remove_all(&mut self, keys: &[Ct4Key]) -> Result<usize, MapsError> {
        let (tcp, any): (Vec<Ct4Key>, Vec<Ct4Key>) = keys.iter().partition(|k| k.proto == IPPROTO_TCP);
        Ok(self.tcp.remove_all(&tcp)? + self.any.remove_all(&any)?)
    }

    /// Every entry of both maps.
    pub fn entries(&self) -> Result<Vec<(Ct4Key, CtEntry)>, MapsError> {
        let mut out = self.tcp.entries()?;
        out.extend(self.any.entries()?);
        Ok(out)
    }

    /// Both maps' capacities together.
    pub fn capacity(&self) -> u64 {
        self.tcp.max_entries as u64 + self.any.max_entries as u64
    }
}

fn open<T>(dir: &Path, name: &'static str) -> Result<Named<T>, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = dir.join(name);
    let err = |source| MapsError::Open { name, path: path.clone(), source };
    let data = MapData::from_pin(&path).map_err(err)?;
    let max_entries = data.info().map_err(err)?.max_entries();
    let map = Map::from_map_data(data).map_err(err)?;
    let map = T::try_from(map).map_err(err)?;
    Ok(Named { name, max_entries, map })
}

impl Maps {
    /// Opens the maps pinned under `dir`.
    pub fn open(dir: &Path) -> Result<Maps, MapsError> {
        Ok(Maps {
            dir: dir.to_path_buf(),
            services: open(dir, names::SERVICES)?,
            slots: open(dir, names::SLOTS)?,
            backends: open(dir, names::BACKENDS)?,
            revnat: open(dir, names::REVNAT)?,
            ct: Conntrack { tcp: open(dir, names::CT_TCP)?, any: open(dir, names::CT_ANY)? },
            sock_revnat: open(dir, names::SOCK_REVNAT)?,
            config: open(dir, names::CONFIG)?,
            names: open(dir, names::SVC_NAMES)?,
            affinity: open(dir, names::AFFINITY)?,
            maglev: open(dir, names::MAGLEV)?,
            src_ranges: open(dir, names::SRC_RANGES)?,
            node: open(dir, names::NODE)?,
            devices: open(dir, names::DEVICES)?,
            vips: open(dir, names::VIPS)?,
            vip_filter: open(dir, names::VIP_FILTER)?,
            filter: None,
            stats: open(dir, names::STATS)?,
            frontend_stats: open(dir, names::FRONTEND_STATS)?,
            v6: Maps6 {
                services: open(dir, names::SERVICES6)?,
                backends: open(dir, names::BACKENDS6)?,
                revnat: open(dir, names::REVNAT6)?,
                vips: open(dir, names::VIPS6)?,
                vip_filter: open(dir, names::VIP_FILTER6)?,
                filter: None,
                sock_revnat: open(dir, names::SOCK_REVNAT6)?,
                src_ranges: open(dir, names::SRC_RANGES6)?,
                ct_tcp: open(dir, names::CT_TCP6)?,
                ct_any: open(dir, names::CT_ANY6)?,
                node: open(dir, names::NODE6)?,
            },
        })
    }

    /// The backends installed (slots in use), by ID.
    pub fn live_backends(&self) -> Result<Vec<(u32, Backend4)>, MapsError> {
        Ok(self.backends.slots()?.into_iter().filter(|(_, b)| b.addr != 0).collect())
    }

    /// How many IPv6 backends are installed (slots in use).
    pub fn live_backends6(&self) -> Result<usize, MapsError> {
        use lb_common::Family as _;
        Ok(self.v6.backends.slots()?.iter().filter(|(_, b)| lb_common::V6::backend_addr(b).is_some()).count())
    }

    /// The datapath's counters summed over CPUs, by `lb_common::stat`
    /// index.
    pub fn stats(&self) -> Result<Vec<u64>, MapsError> {
        let m = &self.stats;
        let mut out = Vec::with_capacity(stat::NAMES.len());
        for i in 0..stat::NAMES.len() as u32 {
            let per_cpu = m.map.get(&i, 0).map_err(|e| m.read_error(e))?;
            out.push(per_cpu.iter().sum());
        }
        Ok(out)
    }

    /// One counter summed over CPUs.
    pub fn stat(&self, index: u32) -> Result<u64, MapsError> {
        let m = &self.stats;
        Ok(m.map.get(&index, 0).map_err(|e| m.read_error(e))?.iter().sum())
    }

    /// What frontend `id` served, summed over CPUs.
    pub fn frontend_stats(&self, id: u32) -> Result<FrontendStats, MapsError> {
        let m = &self.frontend_stats;
        let per_cpu = m.map.get(&id, 0).map_err(|e| m.read_error(e))?;
        Ok(per_cpu.iter().fold(FrontendStats::default(), |a, c| FrontendStats {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
            new_flows: a.new_flows + c.new_flows,
        }))
    }

    /// Zeroes the counters of frontend `id` on every CPU.
    pub fn reset_frontend_stats(&mut self, id: u32) -> Result<(), MapsError> {
        let m = &mut self.frontend_stats;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapsError::Batch { name: m.name, source: e })?;
        let zero = aya::maps::PerCpuValues::try_from(vec![FrontendStats::default(); cpus])
            .map_err(|e| MapsError::Batch { name: m.name, source: e })?;
        if id >= m.max_entries {
            return Err(MapsError::Full { name: m.name, max_entries: m.max_entries });
        }
        m.map.set(id, zero, 0).map_err(|e| m.write_error(e))
    }

    /// Reads `LB4_VIPS` and `LB6_VIPS` and their pre-filters and writes the
    /// filter words they disagree on (a filter new to this agent, or one
    /// left behind by another), before the XDP and tc programs run against
    /// them; returns how many. Done once before the first write of either.
    pub fn sync_vip_filter(&mut self) -> Result<usize, MapsError> {
        Ok(self.sync_filter::<u32>()? + self.sync_filter::<Addr6>()?)
    }

    fn sync_filter<A: VipAddr>(&mut self) -> Result<usize, MapsError> {
        let (vips, words, filter) = A::filtered(self);
        let current = words.slots()?;
        let (rebuilt, writes) = VipFilter::rebuild(vips.entries()?.into_iter().map(|(a, v)| (a, v.flags)), current);
        *filter = Some(rebuilt);
        for w in &writes {
            A::write_filter_word(self, *w)?;
        }
        Ok(writes.len())
    }

    /// The pre-filter of family `A`'s addresses, read first if need be.
    fn filter<A: VipAddr>(&mut self) -> Result<&mut VipFilter<A>, MapsError> {
        if A::filtered(self).2.is_none() {
            self.sync_filter::<A>()?;
        }
        Ok(A::filtered(self).2.get_or_insert_with(VipFilter::default))
    }

    /// Writes frontend address `addr` (network order, `LB4_VIPS` or
    /// `LB6_VIPS` by its type) with its kinds: the pre-filter learns them
    /// first.
    pub fn insert_vip<A: VipAddr>(&mut self, addr: A, vip: &Vip4) -> Result<(), MapsError> {
        if let Some(w) = self.filter::<A>()?.before(addr, vip.flags) {
            A::write_filter_word(self, w)?;
        }
        A::filtered(self).0.insert(&addr, vip)?;
        self.narrow_filter(addr, vip.flags);
        Ok(())
    }

    /// Removes frontend address `addr`; the pre-filter forgets it after.
    pub fn remove_vip<A: VipAddr>(&mut self, addr: A) -> Result<(), MapsError> {
        self.filter::<A>()?;
        A::filtered(self).0.remove(&addr)?;
        self.narrow_filter(addr, 0);
        Ok(())
    }

    /// After `addr` went into its `*_VIPS` with `flags` (0: out): clears
    /// the kinds its lane no longer needs. A failed write leaves a superset
    /// (false positives only), retried with the next change of the word.
    fn narrow_filter<A: VipAddr>(&mut self, addr: A, flags: u32) {
        let Some(w) = A::filtered(self).2.as_mut().and_then(|f| f.after(addr, flags)) else {
            return;
        };
        if let Err(e) = A::write_filter_word(self, w) {
            warn!("narrowing the frontend pre-filter for {addr:?}: {e}");
        }
    }

    pub fn write_node(&mut self, node: &NodeConfig) -> Result<(), MapsError> {
        let n = &mut self.node;
        n.map.set(0, node, 0).map_err(|e| n.write_error(e))
    }

    pub fn read_node(&self) -> Result<NodeConfig, MapsError> {
        let n = &self.node;
        n.map.get(&0, 0).map_err(|e| n.read_error(e))
    }

    pub fn write_node6(&mut self, node: &Node6Config) -> Result<(), MapsError> {
        let n = &mut self.v6.node;
        n.map.set(0, node, 0).map_err(|e| n.write_error(e))
    }

    pub fn read_node6(&self) -> Result<Node6Config, MapsError> {
        let n = &self.v6.node;
        n.map.get(&0, 0).map_err(|e| n.read_error(e))
    }

    /// All IPv4 source-range entries as (prefix length, data).
    pub fn src_range_entries(&self) -> Result<Vec<(u32, SrcRange4)>, MapsError> {
        self.src_ranges.entries()
    }

    pub fn insert_src_range(&mut self, prefix_len: u32, data: SrcRange4) -> Result<(), MapsError> {
        self.src_ranges.insert(prefix_len, data)
    }

    pub fn remove_src_range(&mut self, prefix_len: u32, data: SrcRange4) -> Result<(), MapsError> {
        self.src_ranges.remove(prefix_len, data)
    }

    /// Makes `table` (backend IDs, one per slot) the Maglev table of
    /// frontend `id`; returns the map writes it took. An installed table
    /// of the same size is patched in place where it differs (one batch of
    /// the changed slots: a backend change moves about 1/N of them); a
    /// lookup meanwhile sees each slot old or new, and both name live
    /// backends. Otherwise a new inner map is filled and swapped in with
    /// one update of the outer map.
    pub fn write_maglev(&mut self, id: u32, table: &[u32]) -> Result<usize, MapsError> {
        let m = &mut self.maglev;
        if let Ok(inner) = m.map.get(&RevNatKey { frontend_id: id }, 0) {
            let inner: Array<MapData, u32> = inner;
            if inner.len() as usize == table.len() {
                let fd = crate::batch::fd(&inner);
                let current: Vec<(u32, u32)> = crate::batch::lookup_all(fd).map_err(|e| m.io_error(e))?;
                let changed: Vec<(u32, u32)> = current
                    .iter()
                    .filter(|(i, v)| table.get(*i as usize).is_some_and(|t| t != v))
                    .map(|(i, _)| (*i, table[*i as usize]))
                    .collect();
                crate::batch::update(fd, &changed).map_err(|e| m.io_error(e))?;
                return Ok(changed.len());
            }
        }
        let inner = Array::<MapData, u32>::create(table.len() as u32, aya_obj_inner_flag()).map_err(|e| m.write_error(e))?;
        let entries: Vec<(u32, u32)> = table.iter().enumerate().map(|(i, b)| (i as u32, *b)).collect();
        crate::batch::update(crate::batch::fd(&inner), &entries).map_err(|e| m.io_error(e))?;
        m.map.insert(RevNatKey { frontend_id: id }, &inner, 0).map_err(|e| m.write_error(e))?;
        Ok(table.len() + 1)
    }

    pub fn remove_maglev(&mut self, id: u32) -> Result<(), MapsError> {
        let m = &mut self.maglev;
        match m.map.remove(&RevNatKey { frontend_id: id }) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(m.write_error(e)),
        }
    }

    /// Frontend IDs that have a Maglev table.
    pub fn maglev_ids(&self) -> Vec<u32> {
        self.maglev.map.keys().filter_map(Result::ok).map(|k| k.frontend_id).collect()
    }

    /// The Maglev table of frontend `id`, if any.
    pub fn maglev_table(&self, id: u32) -> Result<Option<Vec<u32>>, MapsError> {
        let m = &self.maglev;
        let inner: Array<MapData, u32> = match m.map.get(&RevNatKey { frontend_id: id }, 0) {
            Ok(inner) => inner,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(m.read_error(e)),
        };
        let mut slots: Vec<(u32, u32)> = crate::batch::lookup_all(crate::batch::fd(&inner)).map_err(|e| m.io_error(e))?;
        slots.sort_unstable_by_key(|(i, _)| *i);
        Ok(Some(slots.into_iter().map(|(_, v)| v).collect()))
    }

    pub fn write_config(&mut self, config: &Config) -> Result<(), MapsError> {
        let c = &mut self.config;
        c.map.set(0, config, 0).map_err(|e| c.write_error(e))
    }

    pub fn read_config(&self) -> Result<Config, MapsError> {
        let c = &self.config;
        c.map.get(&0, 0).map_err(|e| c.read_error(e))
    }
}

/// `SvcName` from a label, truncated to fit and NUL padded.
pub fn svc_name(label: &str) -> SvcName {
    let mut name = [0u8; lb_common::SVC_NAME_LEN];
    let bytes = label.as_bytes();
    let n = bytes.len().min(name.len() - 1);
    name[..n].copy_from_slice(&bytes[..n]);
    SvcName { name }
}

pub fn svc_name_str(name: &SvcName) -> String {
    let end = name.name.iter().position(|&b| b == 0).unwrap_or(name.name.len());
    String::from_utf8_lossy(&name.name[..end]).into_owned()
}

/// `BPF_F_INNER_MAP`: inner maps of `LB4_MAGLEV` may differ in size from
/// the template in the object (the table size M is a runtime setting).
fn aya_obj_inner_flag() -> u32 {
    1 << 12
}

/// A frontend address of one family, as its `*_VIPS` map holds it (`u32`:
/// `LB4_VIPS`, `Addr6`: `LB6_VIPS`), with that family's pre-filter.
pub trait VipAddr: FilterAddr + aya::Pod {
    /// The family's addresses, its pre-filter map, and what the agent
    /// knows the filter holds.
    #[allow(clippy::type_complexity)]
    fn filtered(m: &mut Maps) -> (&mut Named<HashMap<MapData, Self, Vip4>>, &mut Named<Array<MapData, u64>>, &mut Option<VipFilter<Self>>);

    /// Writes one word of the family's filter and records it.
    fn write_filter_word(m: &mut Maps, w: WordWrite) -> Result<(), MapsError> {
        let (_, words, filter) = Self::filtered(m);
        words.set(w.0, &w.1)?;
        if let Some(f) = filter {
            f.wrote(w);
        }
        Ok(())
    }
}

impl VipAddr for u32 {
    fn filtered(m: &mut Maps) -> (&mut Named<HashMap<MapData, u32, Vip4>>, &mut Named<Array<MapData, u64>>, &mut Option<VipFilter>) {
        (&mut m.vips, &mut m.vip_filter, &mut m.filter)
    }
}

impl VipAddr for Addr6 {
    fn filtered(
        m: &mut Maps,
    ) -> (&mut Named<HashMap<MapData, Addr6, Vip4>>, &mut Named<Array<MapData, u64>>, &mut Option<VipFilter<Addr6>>) {
        (&mut m.v6.vips, &mut m.v6.vip_filter, &mut m.v6.filter)
    }
}
