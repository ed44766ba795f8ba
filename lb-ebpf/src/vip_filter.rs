//! The XDP program's frontend pre-filter (`LB4_VIP_FILTER`, see
//! `lb_common::vip_filter`): which north-south kinds an address may have,
//! from one array load.

use lb_common::vip_filter::{self, KINDS};

use crate::maps::LB4_VIP_FILTER;

/// A superset of the north-south `vip_flags` of `addr` (network order):
/// 0 means it is no north-south frontend address.
#[inline(always)]
pub fn kinds(addr: u32) -> u32 {
    let slot = vip_filter::slot(addr);
    // The index is below the array's size by construction; were the
    // lookup to fail anyway, every kind is possible (the exact path).
    LB4_VIP_FILTER.get(slot.word).map_or(KINDS, |w| vip_filter::kinds(*w, slot))
}
