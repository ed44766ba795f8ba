//! `LB4_VIP_FILTER` and `LB6_VIP_FILTER`: the pre-filters of frontend
//! addresses of the XDP and tc programs, each a counting-free blocked
//! Bloom filter over every address in its family's `LB4_VIPS` or
//! `LB6_VIPS`, with its kinds (`vip_flags::CLUSTER_IP`,
//! `LOAD_BALANCER`, `EXTERNAL_IP`, `NODE_PORT`: [`KINDS`]).
//!
//! An array word (`u64`) holds sixteen 4-bit lanes. An address hashes to
//! one word and two lanes in it ([`Slot`]: the lanes may coincide); each
//! of its lanes holds the OR of the kinds of every frontend address that
//! sets it, and an address's kinds are those both its lanes hold (AND).
//! An array lookup is an index the verifier inlines (no hash, no helper
//! call), so a packet whose destination's lanes share no kind leaves
//! after one load: `lb_xdp` looks at the north-south kinds only
//! ([`NORTH_SOUTH`]: a ClusterIP is not served from outside), and leaves
//! the node's own traffic (lanes with `NODE_PORT` alone, a port outside
//! the NodePort range) after a compare; `lb_tc_ingress` passes a pod's
//! packet to an address with no kind at all (pod to pod). An address
//! whose two lanes are both set by others is a false positive: it takes
//! the exact path (`LB4_VIPS`). False negatives never happen: the agent
//! sets an address's kinds in its lanes before the address goes into
//! `LB4_VIPS` and clears them only after it left.
//!
//! Size and shape (layout version 2): 65,536 words (512 KiB per family)
//! and two lanes per address keep the false positives at about 4.5 % of
//! other addresses with 100,000 frontend addresses in a family (0.3 % at
//! 10,000); version 1's 16,384 words and one lane let about 32 % through
//! at 100,000 (B1's IPv6 pod-to-pod address was one: docs/
//! per-packet-profile.md, "IPv6 at 100k services"). A packet still reads
//! one word, one cache line; the lines real traffic keeps warm are those
//! of the addresses it goes to, so the larger array costs memory, not a
//! larger working set per destination.
//!
//! Both sides compute the slot with [`slot`] (an IPv6 address: [`slot6`],
//! the same slots over a 128-bit hash); the agent keeps the words in step
//! with `LB4_VIPS` and `LB6_VIPS` (`lb-agent`'s `vip_filter` module).
//! IPv6 has a map of its own (same size and layout): IPv6 packets meet
//! only IPv6 addresses' lanes.

use crate::{Addr6, hash::fmix32, vip_flags};

/// Words in each array (`u64` each, 512 KiB).
pub const WORDS: u32 = 65_536;
/// Lanes per word, and bits per lane.
pub const LANES: u32 = 16;
pub const LANE_BITS: u32 = 4;
/// Lanes in all.
pub const BUCKETS: u32 = WORDS * LANES;
/// Lanes an address sets (and reads), all in its one word.
pub const LANES_PER_ADDR: usize = 2;
/// The kinds a lane records: every kind of frontend address.
pub const KINDS: u32 = vip_flags::CLUSTER_IP | vip_flags::LOAD_BALANCER | vip_flags::EXTERNAL_IP | vip_flags::NODE_PORT;
/// The kinds served from outside the node (what `lb_xdp` reads).
pub const NORTH_SOUTH: u32 = vip_flags::LOAD_BALANCER | vip_flags::EXTERNAL_IP | vip_flags::NODE_PORT;

/// Hash bits that pick the word; the lanes come from the bits above.
const WORD_BITS: u32 = WORDS.trailing_zeros();
const LANE_INDEX_BITS: u32 = LANES.trailing_zeros();

const _: () = assert!(
    WORDS.is_power_of_two()
        && LANES.is_power_of_two()
        && KINDS < 1 << LANE_BITS
        && LANES * LANE_BITS == 64
        && NORTH_SOUTH & !KINDS == 0
        && WORD_BITS + LANES_PER_ADDR as u32 * LANE_INDEX_BITS <= 32
);

/// Mixed in so that the lane differs from other uses of `fmix32` over the
/// same address.
const SEED: u32 = 0x5bd1_e995;

/// Where an address's kinds live: word `word`, the lanes at bits
/// `shifts[i]..shifts[i] + 4` (both the same lane at times).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    pub word: u32,
    pub shifts: [u32; LANES_PER_ADDR],
}

/// The slot of `addr` (network order, as in `LB4_VIPS`' keys).
#[inline(always)]
pub fn slot(addr: u32) -> Slot {
    slot_of(fmix32(addr ^ SEED))
}

/// The slot of an IPv6 `addr` (four words in network order, as in
/// `LB6_VIPS`' keys): each word multiplied by its own odd constant (a
/// one-to-one map of the word), the four products folded with XOR, then
/// one `fmix32`, so every bit counts. The four products are independent;
/// version 1 ran `fmix32` once per word, one after the other, and those
/// sixteen dependent steps were the largest part of the IPv6 tc path's
/// first stage (docs/per-packet-profile.md).
#[inline(always)]
pub fn slot6(addr: &Addr6) -> Slot {
    let folded = addr[0].wrapping_mul(0x9e37_79b1)
        ^ addr[1].wrapping_mul(0x85eb_ca77)
        ^ addr[2].wrapping_mul(0xc2b2_ae3d)
        ^ addr[3].wrapping_mul(0x27d4_eb2f);
    slot_of(fmix32(folded ^ SEED))
}

#[inline(always)]
fn slot_of(hash: u32) -> Slot {
    let lane = |i: u32| ((hash >> (WORD_BITS + i * LANE_INDEX_BITS)) & (LANES - 1)) * LANE_BITS;
    Slot { word: hash & (WORDS - 1), shifts: [lane(0), lane(1)] }
}

/// The bits of a word that record `vip_flags` at `slot`.
#[inline(always)]
pub fn lane(flags: u32, slot: Slot) -> u64 {
    let k = (flags & KINDS) as u64;
    (k << slot.shifts[0]) | (k << slot.shifts[1])
}

/// The kinds `word` records at `slot` (those of both its lanes): a
/// superset of those of every address with that slot.
#[inline(always)]
pub fn kinds(word: u64, slot: Slot) -> u32 {
    ((word >> slot.shifts[0]) & (word >> slot.shifts[1])) as u32 & KINDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_round_trip_and_keep_apart() {
        let a = u32::from_ne_bytes([192, 168, 50, 1]);
        let s = slot(a);
        assert!(s.word < WORDS && s.shifts.iter().all(|&x| x < 64 && x.is_multiple_of(LANE_BITS)));
        let w = lane(vip_flags::NODE_PORT | vip_flags::CLUSTER_IP, s);
        assert_eq!(kinds(w, s), vip_flags::NODE_PORT | vip_flags::CLUSTER_IP, "every kind is recorded");
        assert_eq!(kinds(w, s) & NORTH_SOUTH, vip_flags::NODE_PORT, "XDP's view");
        assert_eq!(kinds(lane(vip_flags::CLUSTER_IP, s), s) & NORTH_SOUTH, 0, "XDP ignores a ClusterIP-only lane");
        // Lanes that are not `s`'s: nothing leaks into them.
        let free: Vec<u32> = (0..LANES).map(|i| i * LANE_BITS).filter(|x| !s.shifts.contains(x)).collect();
        let other = Slot { word: s.word, shifts: [free[0], free[1]] };
        assert_eq!(kinds(w, other), 0, "a lane leaks into its neighbour");
        assert_eq!(kinds(lane(KINDS, s), other), 0, "a full lane leaks into its neighbour");
        assert_eq!(kinds(u64::MAX, s), KINDS);
    }

    #[test]
    fn an_address_needs_both_its_lanes_set() {
        // One lane in common with a member: not enough (the second lane is
        // what keeps the false positives down at 100k addresses).
        let s = Slot { word: 7, shifts: [8, 20] };
        let half = Slot { word: 7, shifts: [8, 36] };
        assert_eq!(kinds(lane(vip_flags::CLUSTER_IP, half), s), 0);
        // Both lanes set, by two other addresses with other kinds: the
        // kinds both lanes hold.
        let other = Slot { word: 7, shifts: [20, 52] };
        let w = lane(vip_flags::CLUSTER_IP | vip_flags::NODE_PORT, half) | lane(vip_flags::CLUSTER_IP | vip_flags::LOAD_BALANCER, other);
        assert_eq!(kinds(w, s), vip_flags::CLUSTER_IP);
        // An address whose two lanes are one.
        let one = Slot { word: 7, shifts: [12, 12] };
        assert_eq!(lane(vip_flags::NODE_PORT, one), (vip_flags::NODE_PORT as u64) << 12);
        assert_eq!(kinds(lane(vip_flags::NODE_PORT, one), one), vip_flags::NODE_PORT);
    }

    /// B1's ClusterIPs at 100k services (10.96.0.10 on, and their IPv6
    /// twins in fd00:10:60::/96), as the bench programs them.
    fn b1_cluster_ips(n: u32) -> impl Iterator<Item = std::net::Ipv4Addr> {
        (0..n).map(|i| std::net::Ipv4Addr::from(0x0a60_000a + i))
    }

    fn twin(a: std::net::Ipv4Addr) -> crate::Addr6 {
        crate::addr6(std::net::Ipv6Addr::from((0xfd00_0010u128 << 96) | ((a.octets()[1] as u128) << 80) | u32::from(a) as u128))
    }

    #[test]
    fn ipv6_addresses_that_differ_in_any_word_spread_over_the_lanes() {
        // 100k frontends differing in the third word, pods in the second
        // and the fourth: the fold of the words keeps them apart.
        let a6 = |w: [u32; 4]| {
            crate::addr6(std::net::Ipv6Addr::from(((w[0] as u128) << 96) | ((w[1] as u128) << 64) | ((w[2] as u128) << 32) | w[3] as u128))
        };
        let mut words = std::collections::HashMap::<u32, u64>::new();
        for i in 0..100_000u32 {
            let s = slot6(&a6([0x2001_0db8, 0, i, 1]));
            *words.entry(s.word).or_default() |= lane(vip_flags::LOAD_BALANCER, s);
        }
        let pods = (0..256u32).flat_map(|j| (0..256u32).map(move |k| a6([0xfd00_0000, j << 16, 0, k])));
        let hits = pods.filter(|p| kinds(words.get(&slot6(p).word).copied().unwrap_or(0), slot6(p)) != 0).count();
        let rate = hits as f64 / 65_536.0;
        assert!(rate < 0.06, "{:.1} % of pod addresses are false positives", rate * 100.0);
        assert!(words.len() > 50_000, "100k addresses fell into {} words", words.len());
    }

    #[test]
    fn stays_selective_with_100k_addresses_per_family() {
        // Every address of a /16 of pods against a filter holding 100k
        // frontend addresses: few take the exact path (one lane per
        // address over 16,384 words let about 32 % through).
        let mut words = std::collections::HashMap::<u32, u64>::new();
        let mut words6 = std::collections::HashMap::<u32, u64>::new();
        for a in b1_cluster_ips(100_000) {
            let s = slot(u32::from_ne_bytes(a.octets()));
            *words.entry(s.word).or_default() |= lane(vip_flags::CLUSTER_IP, s);
            let s = slot6(&twin(a));
            *words6.entry(s.word).or_default() |= lane(vip_flags::CLUSTER_IP, s);
        }
        let pods = || (0..65_536u32).map(|i| std::net::Ipv4Addr::from(0x0af4_0000 + i));
        let hits = pods()
            .filter(|p| {
                let s = slot(u32::from_ne_bytes(p.octets()));
                kinds(words.get(&s.word).copied().unwrap_or(0), s) != 0
            })
            .count();
        let hits6 = pods()
            .filter(|p| {
                let s = slot6(&twin(*p));
                kinds(words6.get(&s.word).copied().unwrap_or(0), s) != 0
            })
            .count();
        for (family, n) in [("IPv4", hits), ("IPv6", hits6)] {
            let rate = n as f64 / 65_536.0;
            eprintln!("{family}: {n} of 65,536 pod addresses pass the filter ({:.2} %)", rate * 100.0);
            assert!(rate < 0.06, "{family}: {:.1} % of pod addresses are false positives", rate * 100.0);
        }
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
