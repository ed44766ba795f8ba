//! Map layouts across agent versions: which pinned maps a starting agent
//! may reuse, and which it must rebuild.
//!
//! A pinned map is reused only when its type, key and value sizes and
//! flags are what this build's eBPF object declares, and `LB_LAYOUT`
//! records this build's layout version for it (`lb_common::layout`).
//! Anything else is rebuilt: the pin is removed, the loader creates the map
//! afresh, and the reconciler fills it from the source. The programs
//! already attached keep the old maps (they hold them) and keep serving
//! until the new agent has written its first complete state and swaps its
//! programs in (see `Datapath::go_live`).
//!
//! Flow state ([`CARRIED`]: conntrack, affinity, socket rev-NAT) is carried
//! into a rebuilt map when its entries still mean the same: same key and
//! value sizes, the same layout version, and the IDs they name not
//! renumbered (no reconciled map rebuilt). Such a map is also rebuilt when
//! its size flag changed, so a new conntrack size applies at a restart
//! without ending the flows. A size flag that differs from another reused
//! map's size cannot apply; that is reported, not acted on.

use std::path::Path;

use anyhow::Context;
use aya::maps::{HashMap as BpfHashMap, MapData};
use lb_common::{
    layout::{self, KEY_LEN},
    names,
};

use crate::datapath::MapSizes;

/// What [`check`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Check {
    /// Pinned maps to rebuild, with why.
    pub rebuild: Vec<(&'static str, String)>,
    /// Size flags that cannot apply to a reused map, in words.
    pub size_notes: Vec<String>,
    /// Rebuilt flow maps whose entries move into the new map.
    pub carry: Vec<&'static str>,
    /// Rebuilt flow maps whose entries end with the old map, with why.
    pub not_carried: Vec<(&'static str, String)>,
}

/// The maps of flow state, which the reconciler cannot rebuild from the
/// source: carried over a rebuild where they can be ([`carry_refusal`]).
pub const CARRIED: [&str; 7] =
    [names::CT_TCP, names::CT_ANY, names::CT_TCP6, names::CT_ANY6, names::AFFINITY, names::SOCK_REVNAT, names::SOCK_REVNAT6];

/// BPF_MAP_TYPE_HASH and BPF_MAP_TYPE_LRU_HASH: one value per key, copied
/// entry by entry.
const HASH_TYPES: [u32; 2] = [1, 9];

/// Why the entries of a pinned flow map (`pinned`, with its recorded
/// layout `version`) cannot move as they are into a map made as `want`;
/// `None` when they can. `renumbered`: the IDs they name change.
pub fn carry_refusal(name: &str, pinned: &MapDef, version: Option<u32>, want: &MapDef, renumbered: bool) -> Option<String> {
    let current = layout::version(name);
    if renumbered {
        Some("the frontend and backend IDs its entries name are renumbered".into())
    } else if pinned.key_size != want.key_size || pinned.value_size != want.value_size {
        Some("its entries have another shape".into())
    } else if version != Some(current) {
        Some(format!(
            "its entries are of layout version {}, this agent's are {current}",
            version.map_or("(none)".into(), |v| v.to_string())
        ))
    } else if !HASH_TYPES.contains(&pinned.map_type) || !HASH_TYPES.contains(&want.map_type) {
        Some(format!("map type {} to {} is not a copy of entries", pinned.map_type, want.map_type))
    } else {
        None
    }
}

/// A map as the kernel (pinned) or the object (expected) describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// Why a pinned map (`pinned`, with its recorded layout `version`) cannot
/// serve as `want`; `None` when it can.
pub fn mismatch(name: &str, pinned: &MapDef, version: Option<u32>, want: &MapDef) -> Option<String> {
    let mut why = Vec::new();
    if pinned.map_type != want.map_type {
        why.push(format!("map type {}, this agent's is {}", pinned.map_type, want.map_type));
    }
    if pinned.key_size != want.key_size {
        why.push(format!("key size {}, this agent's is {}", pinned.key_size, want.key_size));
    }
    if pinned.value_size != want.value_size {
        why.push(format!("value size {}, this agent's is {}", pinned.value_size, want.value_size));
    }
    if pinned.flags != want.flags {
        why.push(format!("flags {:#x}, this agent's are {:#x}", pinned.flags, want.flags));
    }
    let current = layout::version(name);
    match version {
        _ if !why.is_empty() => {}
        None => why.push(format!("no layout version recorded (an agent older than layouts), this agent's is {current}")),
        Some(v) if v != current => why.push(format!("layout version {v}, this agent's is {current}")),
        Some(_) => {}
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// Widens a set of maps to rebuild: the reconciled maps go together, and
/// with them every map whose entries name their IDs. A derived map alone
/// (`layout::DERIVED`, a pre-filter) renumbers nothing and widens nothing.
pub fn close_over_ids(rebuild: &mut Vec<(&'static str, String)>, pinned: impl Fn(&str) -> bool) {
    let Some((first, _)) = rebuild.iter().find(|(n, _)| layout::renumbers(n)) else {
        return;
    };
    let first = *first;
    for name in layout::RECONCILED.iter().chain(&layout::REFER_TO_IDS) {
        if pinned(name) && !rebuild.iter().any(|(n, _)| n == name) {
            rebuild.push((name, format!("its IDs are renumbered with {first}")));
        }
    }
}

/// The map definitions of this build's eBPF object.
pub fn expected() -> anyhow::Result<Vec<(&'static str, MapDef)>> {
    let obj = aya_obj::Object::parse(crate::EBPF_OBJECT).context("parsing the eBPF object")?;
    names::ALL
        .iter()
        .map(|name| {
            let m = obj.maps.get(*name).with_context(|| format!("map {name} missing from the eBPF object"))?;
            Ok((
                *name,
                MapDef {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries: m.max_entries(),
                    flags: m.map_flags(),
                },
            ))
        })
        .collect()
}

/// The definition of a pinned map.
pub fn pinned_def(path: &Path) -> anyhow::Result<MapDef> {
    let info = MapData::from_pin(path).and_then(|m| m.info()).with_context(|| format!("reading pinned map {}", path.display()))?;
    Ok(MapDef {
        map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// Layout versions by `LB_LAYOUT` key.
pub type Versions = Vec<([u8; KEY_LEN], u32)>;

/// The layout versions recorded under `dir`; `None` when no `LB_LAYOUT` is
/// pinned there.
pub fn recorded(dir: &Path) -> anyhow::Result<Option<Versions>> {
    let path = dir.join(names::LAYOUT);
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map: BpfHashMap<_, [u8; KEY_LEN], u32> = BpfHashMap::try_from(aya::maps::Map::HashMap(data))
        .with_context(|| format!("{} is not a hash of layout versions", path.display()))?;
    Ok(Some(map.iter().filter_map(Result::ok).collect()))
}

/// Compares what is pinned under `dir` with this build.
pub fn check(dir: &Path, sizes: &MapSizes) -> anyhow::Result<Check> {
    let mut out = Check::default();
    let recorded = match recorded(dir) {
        Ok(r) => r,
        // An LB_LAYOUT of another shape: every version is unknown.
        Err(_) => Some(Vec::new()),
    };
    let version_of = |name: &str| -> Option<u32> {
        let key = layout::key(name);
        recorded.as_ref()?.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    };
    let mut flows = Vec::new();
    for (name, mut want) in expected()? {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        if let Some(n) = sizes.for_map(name) {
            want.max_entries = n;
        }
        let pinned = pinned_def(&path)?;
        let version = if name == names::LAYOUT { Some(layout::version(name)) } else { version_of(name) };
        if CARRIED.contains(&name) {
            flows.push((name, pinned, version, want));
        }
        if let Some(why) = mismatch(name, &pinned, version, &want) {
            out.rebuild.push((name, why));
        } else if CARRIED.contains(&name) && pinned.max_entries != want.max_entries {
            // Its entries can follow it (unless the reconciled maps are
            // rebuilt too, which ends them anyway).
            out.rebuild.push((name, format!("{} entries, {} asked for", pinned.max_entries, want.max_entries)));
        } else if name == names::LAYOUT && pinned.max_entries < layout::VERSIONS.len() as u32 {
            // An older agent's LB_LAYOUT, sized for fewer maps: reused, it
            // could not record this build's versions (E2BIG at start).
            out.rebuild.push((name, format!("{} entries, too few for this agent's {} maps", pinned.max_entries, layout::VERSIONS.len())));
        } else if pinned.max_entries != want.max_entries {
            out.size_notes.push(format!(
                "{name} is pinned with {} entries, not the {} asked for: the size applies when the map is created \
                 (after `lb-agent uninstall`)",
                pinned.max_entries, want.max_entries
            ));
        }
    }
    close_over_ids(&mut out.rebuild, |name| dir.join(name).exists());
    let renumbered = out.rebuild.iter().any(|(n, _)| layout::renumbers(n));
    for (name, pinned, version, want) in flows {
        if !out.rebuild.iter().any(|(n, _)| *n == name) {
            continue;
        }
        match carry_refusal(name, &pinned, version, &want, renumbered) {
            None => out.carry.push(name),
            Some(why) => out.not_carried.push((name, why)),
        }
    }
    Ok(out)
}

/// Records this build's layout versions in the `LB_LAYOUT` map of `ebpf`.
pub fn write_versions(ebpf: &mut aya::Ebpf) -> anyhow::Result<()> {
    let map = ebpf.map_mut(names::LAYOUT).context("LB_LAYOUT missing from the eBPF object")?;
    let mut map: BpfHashMap<_, [u8; KEY_LEN], u32> = BpfHashMap::try_from(map)?;
    for (name, version) in layout::VERSIONS {
        map.insert(layout::key(name), version, 0).with_context(|| format!("recording the layout of {name} in {}", names::LAYOUT))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(value_size: u32) -> MapDef {
        MapDef { map_type: 1, key_size: 4, value_size, max_entries: 16, flags: 0 }
    }

    #[test]
    fn a_map_is_reused_only_with_the_same_shape_and_version() {
        let v = layout::version(names::VIPS);
        assert_eq!(mismatch(names::VIPS, &def(8), Some(v), &def(8)), None);
        let why = mismatch(names::VIPS, &def(8), Some(v), &def(12)).unwrap();
        assert!(why.contains("value size 8, this agent's is 12"), "{why}");
        let why = mismatch(names::VIPS, &def(8), Some(v - 1), &def(8)).unwrap();
        assert!(why.contains(&format!("layout version {}", v - 1)), "{why}");
        let why = mismatch(names::VIPS, &def(8), None, &def(8)).unwrap();
        assert!(why.contains("no layout version"), "{why}");
        // Size is not the shape: max_entries differs, the map is reused.
        let mut small = def(8);
        small.max_entries = 4;
        assert_eq!(mismatch(names::VIPS, &small, Some(v), &def(8)), None);
    }

    #[test]
    fn flow_entries_move_only_when_they_mean_the_same() {
        let lru = |value_size, flags| MapDef { map_type: 9, key_size: 16, value_size, max_entries: 16, flags };
        let current = layout::version(names::CT_TCP);
        let v = Some(current);
        // Resized, or other flags: carried.
        let mut bigger = lru(64, 0);
        bigger.max_entries = 64;
        assert_eq!(carry_refusal(names::CT_TCP, &lru(64, 0), v, &bigger, false), None);
        assert_eq!(carry_refusal(names::CT_TCP, &lru(64, 0), v, &lru(64, 2), false), None);
        let hash = MapDef { map_type: 1, ..lru(64, 0) };
        assert_eq!(carry_refusal(names::CT_TCP, &hash, v, &lru(64, 0), false), None);
        // Anything that changes what an entry means: not carried.
        let why = carry_refusal(names::CT_TCP, &lru(64, 0), v, &lru(64, 0), true).unwrap();
        assert!(why.contains("renumbered"), "{why}");
        assert!(carry_refusal(names::CT_TCP, &lru(56, 0), v, &lru(64, 0), false).unwrap().contains("another shape"));
        let why = carry_refusal(names::CT_TCP, &lru(64, 0), Some(current - 1), &lru(64, 0), false).unwrap();
        assert!(why.contains("layout version"), "{why}");
        assert!(carry_refusal(names::CT_TCP, &lru(64, 0), None, &lru(64, 0), false).unwrap().contains("(none)"));
        let percpu = MapDef { map_type: 10, ..lru(64, 0) };
        assert!(carry_refusal(names::CT_TCP, &percpu, v, &lru(64, 0), false).unwrap().contains("map type"));
    }

    #[test]
    fn reconciled_maps_are_rebuilt_together_with_the_flows_naming_their_ids() {
        let mut rebuild = vec![(names::BACKENDS, "value size".to_string())];
        close_over_ids(&mut rebuild, |n| n != names::MAGLEV);
        let names: Vec<&str> = rebuild.iter().map(|(n, _)| *n).collect();
        for n in layout::RECONCILED.iter().chain(&layout::REFER_TO_IDS) {
            assert_eq!(names.contains(n), *n != names::MAGLEV, "{n}");
        }
        assert!(!names.contains(&names::FRAGS));
        // A flow map alone is rebuilt alone.
        let mut rebuild = vec![(names::FRAGS, "flags".to_string())];
        close_over_ids(&mut rebuild, |_| true);
        assert_eq!(rebuild.len(), 1);
    }

    #[test]
    fn a_pre_filter_of_another_layout_is_rebuilt_alone_and_the_flows_stay() {
        // Both pre-filters of an older layout: no ID changes, so neither
        // the reconciled maps nor conntrack go with them.
        let mut rebuild = vec![(names::VIP_FILTER, "layout version 1".to_string()), (names::VIP_FILTER6, "layout version 1".to_string())];
        close_over_ids(&mut rebuild, |_| true);
        let names: Vec<&str> = rebuild.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, [names::VIP_FILTER, names::VIP_FILTER6]);
        assert!(!layout::renumbers(names::VIP_FILTER) && !layout::renumbers(names::VIP_FILTER6));
        assert!(layout::renumbers(names::VIPS) && !layout::renumbers(names::CT_TCP));
        // The addresses they derive from rebuilt: the filters go with them
        // (programs still attached keep the old pair).
        let mut rebuild = vec![(names::VIPS6, "value size".to_string())];
        close_over_ids(&mut rebuild, |_| true);
        let names: Vec<&str> = rebuild.iter().map(|(n, _)| *n).collect();
        assert!(names.contains(&names::VIP_FILTER6) && names.contains(&names::CT_TCP6), "{names:?}");
    }
}
