//! `LB4_SRC_RANGES` and `LB6_SRC_RANGES`: loadBalancerSourceRanges per
//! frontend, one code path over the family.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::SrcRangeOf;

use super::{MapStore, Reconciler, Stats, store::MapFamily};
use crate::model::{Cidr, FrontendAddr};

/// One installed trie entry of a frontend: the prefix length of the key
/// (32 bits of frontend ID plus the CIDR's) and the CIDR's address, as
/// the map stores it (`u32`, `Addr6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SrcRange<K> {
    pub prefix_len: u32,
    /// Network order, host bits zero.
    pub addr: K,
}

impl<K: Copy> SrcRange<K> {
    fn data(self, id: u32) -> SrcRangeOf<K> {
        SrcRangeOf { frontend_id: id.to_be(), addr: self.addr }
    }
}

impl<M: MapStore> Reconciler<M> {
    /// Brings family `A`'s source-range map to `ranges`
    /// (loadBalancerSourceRanges per frontend; those of family `A` are
    /// used). Call after `apply`, which gives the frontends their IDs. A
    /// frontend flagged `SOURCE_RANGES` drops new flows until its ranges
    /// are written, so a new frontend fails closed for the moment in
    /// between.
    pub fn apply_source_ranges<A: MapFamily>(&mut self, ranges: &BTreeMap<FrontendAddr<A>, Vec<Cidr>>, stats: &mut Stats) {
        let mut wanted: BTreeMap<u32, BTreeSet<SrcRange<A::VipKey>>> = BTreeMap::new();
        for (addr, cidrs) in ranges {
            let Some(id) = self.frontend_id(addr) else { continue };
            let set = wanted.entry(id).or_default();
            for c in cidrs {
                if let Some(ip) = A::of(c.addr) {
                    let (prefix_len, data) = SrcRangeOf::range(id, A::vip_key(ip), c.prefix_len);
                    set.insert(SrcRange { prefix_len, addr: data.addr });
                }
            }
        }
        let installed = &mut A::pick_mut(&mut self.fam).src_ranges;
        // After a restart, take over what the map holds.
        if installed.is_empty()
            && let Ok(entries) = self.maps.src_ranges::<A>()
        {
            for (prefix_len, data) in entries {
                installed.entry(u32::from_be(data.frontend_id)).or_default().insert(SrcRange { prefix_len, addr: data.addr });
            }
        }
        let ids: BTreeSet<u32> = wanted.keys().chain(installed.keys()).copied().collect();
        for id in ids {
            let want = wanted.remove(&id).unwrap_or_default();
            let have = installed.remove(&id).unwrap_or_default();
            let mut now = have.clone();
            for &range in want.difference(&have) {
                stats.ops += 1;
                match self.maps.insert_src_range::<A>(range.prefix_len, range.data(id)) {
                    Ok(()) => {
                        now.insert(range);
                    }
                    Err(e) => stats.errors.push(format!("source range of frontend {id}: {e}")),
                }
            }
            for &range in have.difference(&want) {
                stats.ops += 1;
                match self.maps.remove_src_range::<A>(range.prefix_len, range.data(id)) {
                    Ok(()) => {
                        now.remove(&range);
                    }
                    Err(e) => stats.errors.push(format!("source range of frontend {id}: {e}")),
                }
            }
            if !now.is_empty() {
                installed.insert(id, now);
            }
        }
    }
}
