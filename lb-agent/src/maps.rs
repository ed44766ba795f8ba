//! Typed handles on the pinned maps, shared by the reconciler and `list`.

use std::path::{Path, PathBuf};

use aya::maps::{
    Array, HashMap, HashOfMaps, Map, MapData, MapError, PerCpuArray,
    lpm_trie::{Key as LpmKey, LpmTrie},
};
use lb_common::{
    Affinity4, Affinity4Key, Backend4, BackendKey, Config, Ct4Key, CtEntry, Device, IPPROTO_TCP, NodeConfig,
    RevNat4, RevNatKey, Service4Key, Service4Value, Slot, SlotKey, SockRevNat4, SockRevNat4Key, SrcRange4, SvcName,
    Vip4, names, stat,
};

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
}

/// One pinned map with its name and capacity, for error messages.
pub struct Named<M> {
    pub name: &'static str,
    pub max_entries: u32,
    pub map: M,
}

impl<M> Named<M> {
    fn write_error(&self, source: MapError) -> MapsError {
        if let MapError::SyscallError(e) = &source {
            // A full hash map answers E2BIG to an insert of a new key.
            if e.io_error.raw_os_error() == Some(libc::E2BIG) {
                return MapsError::Full {
                    name: self.name,
                    max_entries: self.max_entries,
                };
            }
        }
        MapsError::Write { name: self.name, source }
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

    /// All entries. Entries deleted during the walk are skipped.
    pub fn entries(&self) -> Result<Vec<(K, V)>, MapsError> {
        let mut out = Vec::new();
        for item in self.map.iter() {
            match item {
                Ok(kv) => out.push(kv),
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(self.read_error(e)),
            }
        }
        Ok(out)
    }
}

/// Every map of the datapath, opened from its pin.
pub struct Maps {
    pub dir: PathBuf,
    pub services: Named<HashMap<MapData, Service4Key, Service4Value>>,
    pub slots: Named<HashMap<MapData, SlotKey, Slot>>,
    pub backends: Named<HashMap<MapData, BackendKey, Backend4>>,
    pub revnat: Named<HashMap<MapData, RevNatKey, RevNat4>>,
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
    /// Frontend addresses and their kinds.
    pub vips: Named<HashMap<MapData, u32, Vip4>>,
    /// The datapath's counters (`lb_common::stat`), per CPU.
    pub stats: Named<PerCpuArray<MapData, u64>>,
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
            stats: open(dir, names::STATS)?,
        })
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

    pub fn write_node(&mut self, node: &NodeConfig) -> Result<(), MapsError> {
        let n = &mut self.node;
        n.map.set(0, node, 0).map_err(|e| n.write_error(e))
    }

    pub fn read_node(&self) -> Result<NodeConfig, MapsError> {
        let n = &self.node;
        n.map.get(&0, 0).map_err(|e| n.read_error(e))
    }

    /// All source-range entries as (prefix length, data).
    pub fn src_range_entries(&self) -> Result<Vec<(u32, SrcRange4)>, MapsError> {
        let m = &self.src_ranges;
        let mut out = Vec::new();
        for k in m.map.keys() {
            match k {
                Ok(k) => out.push((k.prefix_len(), k.data())),
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(m.read_error(e)),
            }
        }
        Ok(out)
    }

    pub fn insert_src_range(&mut self, prefix_len: u32, data: SrcRange4) -> Result<(), MapsError> {
        let m = &mut self.src_ranges;
        m.map.insert(&LpmKey::new(prefix_len, data), 1, 0).map_err(|e| m.write_error(e))
    }

    pub fn remove_src_range(&mut self, prefix_len: u32, data: SrcRange4) -> Result<(), MapsError> {
        let m = &mut self.src_ranges;
        match m.map.remove(&LpmKey::new(prefix_len, data)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(m.write_error(e)),
        }
    }

    /// Installs `table` (backend IDs, one per slot) as the Maglev table of
    /// frontend `id`: a new inner map is filled, then swapped in with one
    /// update, so lookups see the old table or the new one, never a mix.
    pub fn install_maglev(&mut self, id: u32, table: &[u32]) -> Result<(), MapsError> {
        let m = &mut self.maglev;
        let mut inner = Array::<MapData, u32>::create(table.len() as u32, aya_obj_inner_flag())
            .map_err(|e| m.write_error(e))?;
        for (i, backend_id) in table.iter().enumerate() {
            inner.set(i as u32, backend_id, 0).map_err(|e| m.write_error(e))?;
        }
        m.map.insert(RevNatKey { id }, &inner, 0).map_err(|e| m.write_error(e))
    }

    pub fn remove_maglev(&mut self, id: u32) -> Result<(), MapsError> {
        let m = &mut self.maglev;
        match m.map.remove(&RevNatKey { id }) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(m.write_error(e)),
        }
    }

    /// Frontend IDs that have a Maglev table.
    pub fn maglev_ids(&self) -> Vec<u32> {
        self.maglev.map.keys().filter_map(Result::ok).map(|k| k.id).collect()
    }

    /// The Maglev table of frontend `id`, if any.
    pub fn maglev_table(&self, id: u32) -> Result<Option<Vec<u32>>, MapsError> {
        let m = &self.maglev;
        let inner: Array<MapData, u32> = match m.map.get(&RevNatKey { id }, 0) {
            Ok(inner) => inner,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(m.read_error(e)),
        };
        let mut table = Vec::with_capacity(inner.len() as usize);
        for v in inner.iter() {
            table.push(v.map_err(|e| m.read_error(e))?);
        }
        Ok(Some(table))
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
