//! `LB4_VIP_FILTER` and `LB6_VIP_FILTER`, the XDP and tc programs'
//! pre-filters of frontend addresses and their kinds (see
//! `lb_common::vip_filter`: ClusterIPs for tc, the north-south kinds for
//! both), kept in step with `LB4_VIPS` and `LB6_VIPS` by the map store:
//! every write of either goes through [`VipFilter::before`] and
//! [`VipFilter::after`] (one filter per family, over its addresses:
//! [`FilterAddr`]).
//!
//! The order is the one `LB4_VIPS` itself keeps towards the frontends: an
//! address's kinds are set in its lanes before the address is written
//! with them, and cleared only after it was written without them (or
//! removed), so the filter never misses an address the datapath has.
//! Lanes are shared: a lane holds the kinds of every address with that
//! lane (each address has two in its word), so the filter remembers each
//! address's kinds and rewrites a word from its members, clearing only
//! what none needs.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
};

use lb_common::{
    Addr6,
    vip_filter::{self, KINDS, Slot, WORDS},
};

/// An address as a family's `*_VIPS` map holds it, and its lane.
pub trait FilterAddr: Copy + Ord + Debug {
    fn slot(&self) -> Slot;
}

impl FilterAddr for u32 {
    fn slot(&self) -> Slot {
        vip_filter::slot(*self)
    }
}

impl FilterAddr for Addr6 {
    fn slot(&self) -> Slot {
        vip_filter::slot6(self)
    }
}

/// What the filter of a family's addresses `A` holds and why.
#[derive(Debug)]
pub struct VipFilter<A = u32> {
    /// Kinds (`vip_filter::KINDS`) by address (network order), grouped by
    /// word.
    members: HashMap<u32, BTreeMap<A, u32>>,
    /// The words the map holds that are not zero.
    words: HashMap<u32, u64>,
}

impl<A> Default for VipFilter<A> {
    fn default() -> Self {
        VipFilter { members: HashMap::new(), words: HashMap::new() }
    }
}

/// One word to write: (index, value).
pub type WordWrite = (u32, u64);

impl<A: FilterAddr> VipFilter<A> {
    /// The filter of the addresses `vips` ((address, `vip_flags`), as
    /// `LB4_VIPS` or `LB6_VIPS` holds them) and the writes that turn the
    /// map's `current` words into it.
    pub fn rebuild(
        vips: impl IntoIterator<Item = (A, u32)>,
        current: impl IntoIterator<Item = (u32, u64)>,
    ) -> (VipFilter<A>, Vec<WordWrite>) {
        let mut f = VipFilter::default();
        for (addr, flags) in vips {
            if flags & KINDS != 0 {
                f.members.entry(addr.slot().word).or_default().insert(addr, flags & KINDS);
            }
        }
        let current: HashMap<u32, u64> = current.into_iter().filter(|(i, w)| *w != 0 && *i < WORDS).collect();
        let mut writes = Vec::new();
        for (&word, &have) in &current {
            let want = f.exact(word);
            if want != have {
                writes.push((word, want));
            }
        }
        for &word in f.members.keys() {
            let want = f.exact(word);
            if !current.contains_key(&word) && want != 0 {
                writes.push((word, want));
            }
        }
        writes.sort_unstable();
        f.words = current;
        (f, writes)
    }

    /// The word `word` as the members say.
    fn exact(&self, word: u32) -> u64 {
        let Some(m) = self.members.get(&word) else { return 0 };
        m.iter().fold(0, |acc, (addr, kinds)| acc | vip_filter::lane(*kinds, addr.slot()))
    }

    fn held(&self, word: u32) -> u64 {
        self.words.get(&word).copied().unwrap_or(0)
    }

    /// Before `addr` is written to `LB4_VIPS` (`LB6_VIPS`) with `flags`:
    /// the write that sets its kinds, if its lane lacks any.
    pub fn before(&self, addr: A, flags: u32) -> Option<WordWrite> {
        let slot = addr.slot();
        let have = self.held(slot.word);
        let want = have | vip_filter::lane(flags, slot);
        (want != have).then_some((slot.word, want))
    }

    /// After `addr` was written to `LB4_VIPS` (`LB6_VIPS`) with `flags`
    /// (0: removed): records it, and returns the write that clears the
    /// kinds no address of the word needs any more.
    pub fn after(&mut self, addr: A, flags: u32) -> Option<WordWrite> {
        let word = addr.slot().word;
        let m = self.members.entry(word).or_default();
        if flags & KINDS == 0 {
            m.remove(&addr);
        } else {
            m.insert(addr, flags & KINDS);
        }
        if m.is_empty() {
            self.members.remove(&word);
        }
        let want = self.exact(word);
        (want != self.held(word)).then_some((word, want))
    }

    /// Records that the map's word `index` now holds `value`.
    pub fn wrote(&mut self, (index, value): WordWrite) {
        if value == 0 {
            self.words.remove(&index);
        } else {
            self.words.insert(index, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use lb_common::vip_flags;

    use super::*;

    fn addr(s: &str) -> u32 {
        u32::from_ne_bytes(s.parse::<std::net::Ipv4Addr>().unwrap().octets())
    }

    /// An address other than `a` whose word and lanes are `a`'s.
    fn sharing_lane_with(a: u32) -> u32 {
        let s = vip_filter::slot(a);
        (1u32..).map(|i| (0xac10_0000u32 + i).to_be()).find(|b| *b != a && vip_filter::slot(*b) == s).unwrap()
    }

    /// Applies a write to a model of the map.
    fn apply<A: FilterAddr>(map: &mut HashMap<u32, u64>, f: &mut VipFilter<A>, w: Option<WordWrite>) {
        if let Some(w) = w {
            map.insert(w.0, w.1);
            f.wrote(w);
        }
    }

    fn kinds_in<A: FilterAddr>(map: &HashMap<u32, u64>, a: A) -> u32 {
        let s = a.slot();
        vip_filter::kinds(map.get(&s.word).copied().unwrap_or(0), s)
    }

    #[test]
    fn the_agents_lane_is_the_one_the_datapath_reads() {
        // The datapath reads word `slot.word`, bits `slot.shift..+4`
        // (`lb-ebpf/src/vip_filter.rs`, the same lb-common functions); the
        // agent must write exactly there.
        let a = addr("192.168.60.10");
        let mut f = VipFilter::default();
        let w = f.before(a, vip_flags::LOAD_BALANCER).unwrap();
        let s = vip_filter::slot(a);
        let both = |flags: u32| ((flags as u64) << s.shifts[0]) | ((flags as u64) << s.shifts[1]);
        assert_eq!(w, (s.word, both(vip_flags::LOAD_BALANCER)));
        f.wrote(w);
        // The hash is a fixed function of the address: pinned here, so a
        // change on one side only cannot go unnoticed.
        assert_eq!(vip_filter::slot(a), vip_filter::slot(u32::from_ne_bytes([192, 168, 60, 10])));
        assert_eq!(f.after(a, vip_flags::LOAD_BALANCER), None, "nothing to clear");
    }

    #[test]
    fn kinds_are_set_before_and_cleared_after_and_shared_lanes_keep_their_other_address() {
        let a = addr("192.168.50.1");
        let b = sharing_lane_with(a);
        let mut f = VipFilter::default();
        let mut map = HashMap::new();
        // ClusterIPs are recorded too (for tc).
        let cip = addr("10.96.0.10");
        let w = f.before(cip, vip_flags::CLUSTER_IP);
        assert_eq!(w, Some((vip_filter::slot(cip).word, vip_filter::lane(vip_flags::CLUSTER_IP, vip_filter::slot(cip)))));
        apply(&mut map, &mut f, w);
        assert_eq!(f.after(cip, vip_flags::CLUSTER_IP), None);
        assert_eq!(kinds_in(&map, cip), vip_flags::CLUSTER_IP);
        let w = f.after(cip, 0);
        apply(&mut map, &mut f, w);
        assert_eq!(kinds_in(&map, cip), 0, "cleared once the ClusterIP left");

        let w = f.before(a, vip_flags::NODE_PORT);
        apply(&mut map, &mut f, w);
        assert_eq!(kinds_in(&map, a), vip_flags::NODE_PORT, "set before the address is written");
        let w = f.after(a, vip_flags::NODE_PORT);
        apply(&mut map, &mut f, w);
        let w = f.before(b, vip_flags::EXTERNAL_IP);
        apply(&mut map, &mut f, w);
        let w = f.after(b, vip_flags::EXTERNAL_IP);
        apply(&mut map, &mut f, w);
        assert_eq!(kinds_in(&map, a), vip_flags::NODE_PORT | vip_flags::EXTERNAL_IP);

        // `b` removed: `a`'s kind stays; `a` loses its NodePorts: empty.
        assert_eq!(f.before(b, 0), None, "a removal sets nothing");
        let w = f.after(b, 0);
        apply(&mut map, &mut f, w);
        assert_eq!(kinds_in(&map, a), vip_flags::NODE_PORT);
        // `a` keeps a ClusterIP only: its NodePort kind is cleared.
        let w = f.before(a, vip_flags::CLUSTER_IP);
        apply(&mut map, &mut f, w);
        let w = f.after(a, vip_flags::CLUSTER_IP);
        apply(&mut map, &mut f, w);
        assert_eq!(kinds_in(&map, a), vip_flags::CLUSTER_IP);
        let w = f.after(a, 0);
        apply(&mut map, &mut f, w);
        assert_eq!(kinds_in(&map, a), 0);
        assert!(f.words.is_empty() && f.members.is_empty(), "{f:?}");
    }

    #[test]
    fn an_address_sharing_one_lane_keeps_it_and_the_other_is_cleared() {
        // `b` in `a`'s word with one lane in common (and one not).
        let a = addr("192.168.50.1");
        let sa = vip_filter::slot(a);
        let shared = |s: Slot| s.shifts.iter().filter(|x| sa.shifts.contains(x)).count();
        let b = (1u32..)
            .map(|i| (0xac10_0000u32 + i).to_be())
            .find(|b| {
                let sb = vip_filter::slot(*b);
                sb.word == sa.word && sa.shifts[0] != sa.shifts[1] && sb.shifts[0] != sb.shifts[1] && shared(sb) == 1
            })
            .unwrap();
        let mut f = VipFilter::default();
        let mut map = HashMap::new();
        for (addr, flags) in [(a, vip_flags::CLUSTER_IP), (b, vip_flags::CLUSTER_IP)] {
            let w = f.before(addr, flags);
            apply(&mut map, &mut f, w);
            let w = f.after(addr, flags);
            apply(&mut map, &mut f, w);
        }
        assert_eq!((kinds_in(&map, a), kinds_in(&map, b)), (vip_flags::CLUSTER_IP, vip_flags::CLUSTER_IP));
        assert_eq!(map[&sa.word].count_ones(), 3, "three lanes of one kind");
        let w = f.after(a, 0);
        apply(&mut map, &mut f, w);
        assert_eq!(kinds_in(&map, a), 0, "a's own lane cleared");
        assert_eq!(kinds_in(&map, b), vip_flags::CLUSTER_IP, "the shared lane kept for b");
        assert_eq!(map[&sa.word], vip_filter::lane(vip_flags::CLUSTER_IP, vip_filter::slot(b)));
    }

    #[test]
    fn rebuild_writes_what_the_vips_need_and_clears_stale_words() {
        let a = addr("192.168.50.1");
        let b = addr("192.168.60.10");
        let stale_word = (vip_filter::slot(a).word + 1) % WORDS;
        let vips =
            [(a, vip_flags::NODE_PORT), (b, vip_flags::LOAD_BALANCER | vip_flags::CLUSTER_IP), (addr("10.96.0.1"), vip_flags::CLUSTER_IP)];
        let (mut f, writes) = VipFilter::rebuild(vips, [(stale_word, 0xff)]);
        let mut map: HashMap<u32, u64> = [(stale_word, 0xff)].into_iter().collect();
        for &w in &writes {
            map.insert(w.0, w.1);
            f.wrote(w);
        }
        assert_eq!(kinds_in(&map, a), vip_flags::NODE_PORT);
        assert_eq!(kinds_in(&map, b), vip_flags::LOAD_BALANCER | vip_flags::CLUSTER_IP);
        assert_eq!(kinds_in(&map, addr("10.96.0.1")), vip_flags::CLUSTER_IP);
        if stale_word != vip_filter::slot(b).word && stale_word != vip_filter::slot(addr("10.96.0.1")).word {
            assert_eq!(map[&stale_word], 0, "stale word cleared: {writes:?}");
        }
        // Rebuilding over a map that already holds it writes nothing.
        let (_, again) = VipFilter::rebuild(vips, f.words.clone());
        assert!(again.is_empty(), "{again:?}");
    }

    fn addr6(s: &str) -> Addr6 {
        lb_common::addr6(s.parse().unwrap())
    }

    #[test]
    fn ipv6_addresses_get_their_own_lanes_set_before_and_cleared_after() {
        // The lane the datapath reads for an IPv6 address
        // (`lb-ebpf/src/vip_filter.rs::kinds6`, the same lb-common
        // function) is the one the agent writes.
        let a = addr6("fd00:96::a");
        let s = vip_filter::slot6(&a);
        let mut f = VipFilter::<Addr6>::default();
        let mut map = HashMap::new();
        let w = f.before(a, vip_flags::CLUSTER_IP);
        assert_eq!(w, Some((s.word, ((vip_flags::CLUSTER_IP as u64) << s.shifts[0]) | ((vip_flags::CLUSTER_IP as u64) << s.shifts[1]))));
        apply(&mut map, &mut f, w);
        assert_eq!(f.after(a, vip_flags::CLUSTER_IP), None, "nothing to clear");
        // Every word counts: addresses differing in one high word only
        // land apart (not all in one lane).
        let lanes: std::collections::HashSet<Slot> = (0..64u16).map(|i| vip_filter::slot6(&addr6(&format!("fd00:{i:x}::a")))).collect();
        assert!(lanes.len() > 60, "{} lanes", lanes.len());

        // An address sharing `a`'s lane keeps it when `a` goes.
        let b = (1u32..)
            .map(|i| lb_common::addr6(std::net::Ipv6Addr::from(0xfd00_0010_0244_0000_0000_0000_0000_0000u128 + i as u128)))
            .find(|b| vip_filter::slot6(b) == s)
            .expect("an address sharing the lanes");
        let w = f.before(b, vip_flags::CLUSTER_IP);
        assert_eq!(w, None, "the lane already has the kind");
        assert_eq!(f.after(b, vip_flags::CLUSTER_IP), None);
        let w = f.after(a, 0);
        assert_eq!(w, None, "b still needs the lane");
        assert_eq!(kinds_in(&map, b), vip_flags::CLUSTER_IP);
        let w = f.after(b, 0);
        apply(&mut map, &mut f, w);
        assert_eq!(kinds_in(&map, a), 0, "cleared once the last address left");
        assert!(f.words.is_empty() && f.members.is_empty(), "{f:?}");

        // Rebuilt at start from `LB6_VIPS` over a stale map.
        let stale = (s.word + 1) % WORDS;
        let (mut f, writes) = VipFilter::rebuild([(a, vip_flags::CLUSTER_IP)], [(stale, 0xf0)]);
        let mut map: HashMap<u32, u64> = [(stale, 0xf0)].into_iter().collect();
        for &w in &writes {
            apply(&mut map, &mut f, Some(w));
        }
        assert_eq!(kinds_in(&map, a), vip_flags::CLUSTER_IP);
        assert_eq!(map[&stale], 0, "stale word cleared: {writes:?}");
        let (_, again) = VipFilter::rebuild([(a, vip_flags::CLUSTER_IP)], f.words.clone());
        assert!(again.is_empty(), "{again:?}");
    }
}
