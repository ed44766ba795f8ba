//! `LB4_SRC_RANGES`: loadBalancerSourceRanges per frontend.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::SrcRange4;

use super::{MapStore, Reconciler, Stats};
use crate::model::{Cidr, FrontendAddr};

/// One installed trie entry of a frontend: the prefix length of the key
/// (32 bits of frontend ID plus the CIDR's) and the CIDR's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SrcRange {
    pub prefix_len: u32,
    /// Network order, host bits zero.
    pub addr: u32,
}

impl SrcRange {
    fn data(self, id: u32) -> SrcRange4 {
        SrcRange4 { frontend_id: id.to_be(), addr: self.addr }
    }
}

impl<M: MapStore> Reconciler<M> {
    /// Brings `LB4_SRC_RANGES` to `ranges` (loadBalancerSourceRanges per
    /// frontend; IPv4 ones are used). Call after `apply`, which gives the
    /// frontends their IDs. A frontend flagged `SOURCE_RANGES` drops new
    /// flows until its ranges are written, so a new frontend fails closed
    /// for the moment in between.
    pub fn apply_source_ranges(&mut self, ranges: &BTreeMap<FrontendAddr, Vec<Cidr>>, stats: &mut Stats) {
        let mut wanted: BTreeMap<u32, BTreeSet<SrcRange>> = BTreeMap::new();
        for (addr, cidrs) in ranges {
            let Some(id) = self.frontend_id(addr) else { continue };
            let set = wanted.entry(id).or_default();
            for c in cidrs {
                if let std::net::IpAddr::V4(ip) = c.addr {
                    let (prefix_len, data) = SrcRange4::range(id, u32::from_ne_bytes(ip.octets()), c.prefix_len);
                    set.insert(SrcRange { prefix_len, addr: data.addr });
                }
            }
        }
        // After a restart, take over what the map holds.
        if self.src_ranges.is_empty()
            && let Ok(entries) = self.maps.src_ranges()
        {
            for (prefix_len, data) in entries {
                self.src_ranges.entry(u32::from_be(data.frontend_id)).or_default().insert(SrcRange { prefix_len, addr: data.addr });
            }
        }
        let ids: BTreeSet<u32> = wanted.keys().chain(self.src_ranges.keys()).copied().collect();
        for id in ids {
            let want = wanted.remove(&id).unwrap_or_default();
            let have = self.src_ranges.remove(&id).unwrap_or_default();
            let mut now = have.clone();
            for &range in want.difference(&have) {
                stats.ops += 1;
                match self.maps.insert_src_range(range.prefix_len, range.data(id)) {
                    Ok(()) => {
                        now.insert(range);
                    }
                    Err(e) => stats.errors.push(format!("source range of frontend {id}: {e}")),
                }
            }
            for &range in have.difference(&want) {
                stats.ops += 1;
                match self.maps.remove_src_range(range.prefix_len, range.data(id)) {
                    Ok(()) => {
                        now.remove(&range);
                    }
                    Err(e) => stats.errors.push(format!("source range of frontend {id}: {e}")),
                }
            }
            if !now.is_empty() {
                self.src_ranges.insert(id, now);
            }
        }
    }
}
