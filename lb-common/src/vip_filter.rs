//! `LB4_VIP_FILTER` and `LB6_VIP_FILTER`: the pre-filters of frontend
//! addresses of the XDP and tc programs, each a counting-free Bloom-like
//! bitmap (one hash) over every address in its family's `LB4_VIPS` or
//! `LB6_VIPS`, with its kinds (`vip_flags::CLUSTER_IP`,
//! `LOAD_BALANCER`, `EXTERNAL_IP`, `NODE_PORT`: [`KINDS`]).
//!
//! Each address hashes to one 4-bit lane holding the OR of the kinds of
//! every frontend address that hashes there; sixteen lanes make one `u64`
//! word of the array. An array lookup is an index the verifier inlines (no
//! hash, no helper call), so a packet whose destination's lane is empty
//! leaves after one load: `lb_xdp` looks at the north-south kinds only
//! ([`NORTH_SOUTH`]: a ClusterIP is not served from outside), and leaves
//! the node's own traffic (a lane with `NODE_PORT` alone, a port outside
//! the NodePort range) after a compare; `lb_tc_ingress` passes a pod's
//! packet to an address with no kind at all (pod to pod). Addresses
//! sharing a lane are false positives: they take the exact path
//! (`LB4_VIPS`). False negatives never happen: the agent sets an address's
//! kinds in its lane before the address goes into `LB4_VIPS` and clears
//! them only after it left.
//!
//! Both sides compute the lane with [`slot`] (an IPv6 address: [`slot6`],
//! the same lanes over a 128-bit hash); the agent keeps the words in step
//! with `LB4_VIPS` and `LB6_VIPS` (`lb-agent`'s `vip_filter` module).
//! IPv6 has a map of its own (same size and layout): IPv6 packets meet
//! only IPv6 addresses' lanes.

use crate::{Addr6, hash::fmix32, vip_flags};

/// Words in each array (`u64` each, 128 KiB).
pub const WORDS: u32 = 16_384;
/// Lanes per word, and bits per lane.
pub const LANES: u32 = 16;
pub const LANE_BITS: u32 = 4;
/// Lanes in all: addresses are spread over this many.
pub const BUCKETS: u32 = WORDS * LANES;
/// The kinds a lane records: every kind of frontend address.
pub const KINDS: u32 = vip_flags::CLUSTER_IP | vip_flags::LOAD_BALANCER | vip_flags::EXTERNAL_IP | vip_flags::NODE_PORT;
/// The kinds served from outside the node (what `lb_xdp` reads).
pub const NORTH_SOUTH: u32 = vip_flags::LOAD_BALANCER | vip_flags::EXTERNAL_IP | vip_flags::NODE_PORT;

const _: () = assert!(BUCKETS.is_power_of_two() && KINDS < 1 << LANE_BITS && LANES * LANE_BITS == 64 && NORTH_SOUTH & !KINDS == 0);

/// Mixed in so that the lane differs from other uses of `fmix32` over the
/// same address.
const SEED: u32 = 0x5bd1_e995;

/// Where an address's kinds live: word `word`, bits `shift..shift + 4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    pub word: u32,
    pub shift: u32,
}

/// The slot of `addr` (network order, as in `LB4_VIPS`' keys).
#[inline(always)]
pub fn slot(addr: u32) -> Slot {
    slot_of(fmix32(addr ^ SEED))
}

/// The slot of an IPv6 `addr` (four words in network order, as in
/// `LB6_VIPS`' keys): its words folded one by one (as
/// `hash::flow_hash6` does), so every bit counts.
#[inline(always)]
pub fn slot6(addr: &Addr6) -> Slot {
    let mut h = SEED;
    let mut i = 0;
    while i < 4 {
        h = fmix32(h ^ addr[i]);
        i += 1;
    }
    slot_of(h)
}

#[inline(always)]
fn slot_of(hash: u32) -> Slot {
    let bucket = hash & (BUCKETS - 1);
    Slot { word: bucket / LANES, shift: (bucket % LANES) * LANE_BITS }
}

/// The bits of a word that record `vip_flags` at `slot`.
#[inline(always)]
pub fn lane(flags: u32, slot: Slot) -> u64 {
    ((flags & KINDS) as u64) << slot.shift
}

/// The kinds `word` records at `slot`: a superset of those of every
/// address with that slot.
#[inline(always)]
pub fn kinds(word: u64, slot: Slot) -> u32 {
    (word >> slot.shift) as u32 & KINDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_round_trip_and_keep_apart() {
        let a = u32::from_ne_bytes([192, 168, 50, 1]);
        let s = slot(a);
        assert!(s.word < WORDS && s.shift < 64 && s.shift.is_multiple_of(LANE_BITS));
        let w = lane(vip_flags::NODE_PORT | vip_flags::CLUSTER_IP, s);
        assert_eq!(kinds(w, s), vip_flags::NODE_PORT | vip_flags::CLUSTER_IP, "every kind is recorded");
        assert_eq!(kinds(w, s) & NORTH_SOUTH, vip_flags::NODE_PORT, "XDP's view");
        assert_eq!(kinds(lane(vip_flags::CLUSTER_IP, s), s) & NORTH_SOUTH, 0, "XDP ignores a ClusterIP-only lane");
        let other = Slot { word: s.word, shift: (s.shift + LANE_BITS) % 64 };
        assert_eq!(kinds(w, other), 0, "a lane leaks into its neighbour");
        assert_eq!(kinds(lane(KINDS, s), other), 0, "a full lane leaks into its neighbour");
        assert_eq!(kinds(u64::MAX, s), KINDS);
    }

    #[test]
    fn spreads_addresses_over_the_words() {
        // 4096 consecutive addresses (a /20 of LoadBalancer IPs): few share
        // a lane.
        let mut seen = std::collections::HashSet::new();
        for i in 0..4096u32 {
            seen.insert(slot((0x0a60_0000 + i).to_be()));
        }
        assert!(seen.len() > 4000, "{} distinct lanes", seen.len());
        // The same over IPv6: a /116 of ClusterIPs, then addresses that
        // differ in one high word only.
        let mut seen6 = std::collections::HashSet::new();
        for i in 0..4096u32 {
            seen6.insert(slot6(&crate::addr6(std::net::Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, i as u16))));
        }
        assert!(seen6.len() > 4000, "{} distinct IPv6 lanes", seen6.len());
        seen6.clear();
        for i in 0..4096u32 {
            seen6.insert(slot6(&crate::addr6(std::net::Ipv6Addr::new(0xfd00, i as u16, 0, 0, 0, 0, 0, 1))));
        }
        assert!(seen6.len() > 4000, "{} distinct IPv6 lanes", seen6.len());
    }
}
