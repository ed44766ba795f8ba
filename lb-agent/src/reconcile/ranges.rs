//! `LB4_SRC_RANGES`: loadBalancerSourceRanges per frontend.

use std::collections::{BTreeMap, BTreeSet};

use super::{Reconciler, Stats};
use crate::model::FrontendAddr;

impl Reconciler {
    /// Brings `LB4_SRC_RANGES` to `ranges` (loadBalancerSourceRanges per
    /// frontend; IPv4 ones are used). Call after `apply`, which gives the
    /// frontends their IDs. A frontend flagged `SOURCE_RANGES` drops new
    /// flows until its ranges are written, so a new frontend fails closed
    /// for the moment in between.
    pub fn apply_source_ranges(&mut self, ranges: &BTreeMap<FrontendAddr, Vec<crate::model::Cidr>>, stats: &mut Stats) {
        use lb_common::SrcRange4;
        let mut wanted: BTreeMap<u32, BTreeSet<(u32, u32)>> = BTreeMap::new();
        for (addr, cidrs) in ranges {
            let Some(id) = self.frontend_id(addr) else { continue };
            let set = wanted.entry(id).or_default();
            for c in cidrs {
                if let std::net::IpAddr::V4(ip) = c.addr {
                    let (len, data) = SrcRange4::range(id, u32::from_ne_bytes(ip.octets()), c.prefix_len);
                    set.insert((len, data.addr));
                }
            }
        }
        // After a restart, take over what the map holds.
        if self.src_ranges.is_empty()
            && let Ok(entries) = self.maps.src_range_entries()
        {
            for (len, data) in entries {
                self.src_ranges.entry(u32::from_be(data.svc_id)).or_default().insert((len, data.addr));
            }
        }
        let ids: BTreeSet<u32> = wanted.keys().chain(self.src_ranges.keys()).copied().collect();
        for id in ids {
            let want = wanted.remove(&id).unwrap_or_default();
            let have = self.src_ranges.remove(&id).unwrap_or_default();
            let mut now = have.clone();
            for &(len, addr) in want.difference(&have) {
                stats.ops += 1;
                match self.maps.insert_src_range(len, SrcRange4 { svc_id: id.to_be(), addr }) {
                    Ok(()) => {
                        now.insert((len, addr));
                    }
                    Err(e) => stats.errors.push(format!("source range of frontend {id}: {e}")),
                }
            }
            for &(len, addr) in have.difference(&want) {
                stats.ops += 1;
                match self.maps.remove_src_range(len, SrcRange4 { svc_id: id.to_be(), addr }) {
                    Ok(()) => {
                        now.remove(&(len, addr));
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
