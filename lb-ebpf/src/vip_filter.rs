//! The XDP and tc programs' frontend pre-filters (`LB4_VIP_FILTER`,
//! `LB6_VIP_FILTER`, see `lb_common::vip_filter`): which kinds an address
//! may have, from one array load.

use lb_common::{
    Addr6,
    vip_filter::{self, KINDS},
};

use crate::maps::{LB4_VIP_FILTER, LB6_VIP_FILTER};

/// A superset of the `vip_flags` kinds of `addr` (network order): 0 means
/// it is no frontend address. `lb_xdp` reads the north-south ones
/// (`vip_filter::NORTH_SOUTH`), tc all of them.
#[inline(always)]
pub fn kinds(addr: u32) -> u32 {
    let slot = vip_filter::slot(addr);
    // The index is below the array's size by construction; were the
    // lookup to fail anyway, every kind is possible (the exact path).
    LB4_VIP_FILTER.get(slot.word).map_or(KINDS, |w| vip_filter::kinds(*w, slot))
}

/// [`kinds`] of an IPv6 address (`LB6_VIP_FILTER`).
#[inline(always)]
pub fn kinds6(addr: &Addr6) -> u32 {
    let slot = vip_filter::slot6(addr);
    LB6_VIP_FILTER.get(slot.word).map_or(KINDS, |w| vip_filter::kinds(*w, slot))
}
