//! Flow state carried into rebuilt maps (see [`crate::layout`]).
//!
//! The old map stays readable through a descriptor taken before its pin
//! goes; the old programs keep writing it until the swap. Its entries are
//! copied twice: just before the swap (the bulk), and just after it (the
//! flows the old programs made in between; they make no more). Both copies
//! leave alone an entry the new map already holds: the new programs' own
//! entries are the newer.

use aya::{
    Pod,
    maps::{HashMap, Map, MapData, MapError},
};
use lb_common::{
    Affinity4, Affinity4Key, Ct4Key, Ct6Entry, Ct6Key, CtEntry, SockRevNat4, SockRevNat4Key, SockRevNat6, SockRevNat6Key, names,
};

/// What one copy did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Entries written into the new map.
    pub copied: u64,
    /// Entries the new map held already.
    pub present: u64,
}

/// An old map whose entries go into the rebuilt map of the same name.
pub struct OldMap {
    pub name: &'static str,
    map: Map,
}

impl OldMap {
    /// Opens the pinned map at `path` (before its pin is removed).
    pub fn open(name: &'static str, path: &std::path::Path) -> Result<OldMap, MapError> {
        Ok(OldMap { name, map: Map::from_map_data(MapData::from_pin(path)?)? })
    }

    /// Copies the entries missing from `new` (the rebuilt map).
    pub fn copy_into(&self, new: &mut Map) -> Result<Copied, MapError> {
        match self.name {
            names::CT_TCP | names::CT_ANY => copy::<Ct4Key, CtEntry>(&self.map, new),
            names::CT_TCP6 | names::CT_ANY6 => copy::<Ct6Key, Ct6Entry>(&self.map, new),
            names::AFFINITY => copy::<Affinity4Key, Affinity4>(&self.map, new),
            names::SOCK_REVNAT => copy::<SockRevNat4Key, SockRevNat4>(&self.map, new),
            names::SOCK_REVNAT6 => copy::<SockRevNat6Key, SockRevNat6>(&self.map, new),
            _ => Err(MapError::InvalidName { name: self.name.to_string() }),
        }
    }
}

/// `bpf_map_update_elem`'s `BPF_NOEXIST`.
const NOEXIST: u64 = 1;

fn copy<K: Pod, V: Pod>(old: &Map, new: &mut Map) -> Result<Copied, MapError> {
    let old: HashMap<&MapData, K, V> = HashMap::try_from(old)?;
    let mut new: HashMap<&mut MapData, K, V> = HashMap::try_from(new)?;
    let mut out = Copied::default();
    // An entry deleted while the walk goes (GC, LRU eviction) ends that
    // key's lookup, not the walk.
    for (k, v) in old.iter().filter_map(Result::ok) {
        match new.insert(k, v, NOEXIST) {
            Ok(()) => out.copied += 1,
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => out.present += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
