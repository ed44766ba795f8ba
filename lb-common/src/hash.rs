//! Flow hashing for Maglev lookups: the same 5-tuple always maps to the same
//! table slot, on every node and CPU.

/// murmur3's 32-bit finalizer: a cheap, well-mixed permutation.
#[inline(always)]
pub fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hash of an IPv4 5-tuple (fields as stored: network order).
#[inline(always)]
pub fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = fmix32(saddr ^ 0x9e37_79b9);
    h = fmix32(h ^ daddr);
    h = fmix32(h ^ ((sport as u32) << 16 | dport as u32));
    fmix32(h ^ proto as u32)
}

/// Hash of an IPv6 5-tuple (addresses as four words in network order, as
/// stored), folded word by word like [`flow_hash`].
#[inline(always)]
pub fn flow_hash6(saddr: &[u32; 4], daddr: &[u32; 4], sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = 0x9e37_79b9;
    let mut i = 0;
    while i < 4 {
        h = fmix32(h ^ saddr[i]);
        i += 1;
    }
    i = 0;
    while i < 4 {
        h = fmix32(h ^ daddr[i]);
        i += 1;
    }
    h = fmix32(h ^ ((sport as u32) << 16 | dport as u32));
    fmix32(h ^ proto as u32)
}

/// The session affinity key's client for an IPv6 address: 63 bits of it
/// (the interface identifier, with the prefix mixed in), bit 63 clear so
/// that it never looks like a namespace cookie (`AFFINITY_NETNS`).
#[inline(always)]
pub fn affinity_client6(addr: &[u32; 4]) -> u64 {
    affinity_fold6(addr[0], addr[1], addr[2], addr[3])
}

#[inline(always)]
fn affinity_fold6(w0: u32, w1: u32, w2: u32, w3: u32) -> u64 {
    let hi = w2 ^ fmix32(w0);
    let lo = w3 ^ fmix32(w1);
    (((hi as u64) << 32) | lo as u64) & !(1 << 63)
}

/// `addr` (four words in network order, as stored) with only its first
/// `len` bits kept, the rest zero (`len` of 128 or more: all of them): the
/// client prefix session affinity keys an IPv6 client by
/// (`--affinity-ipv6-prefix`). Word by word, with a bound the verifier
/// sees and no shift by 32.
#[inline(always)]
pub fn prefix6(addr: &[u32; 4], len: u32) -> [u32; 4] {
    [0, 1, 2, 3].map(|i| addr[i] & prefix6_mask(len, i))
}

/// The mask of word `i` (network order) of an IPv6 prefix of `len` bits.
#[inline(always)]
fn prefix6_mask(len: u32, i: usize) -> u32 {
    let bits = len.saturating_sub(32 * i as u32).min(32);
    // 0 bits: the word goes; 32: it stays whole.
    (((u32::MAX as u64) << (32 - bits)) as u32).to_be()
}

/// [`affinity_client6`] of [`prefix6`]`(addr, len)`, word by word: no
/// masked copy of the address on the stack (it cost `lb_xdp6`'s frame 8
/// bytes).
#[inline(always)]
pub fn affinity_client6_prefix(addr: &[u32; 4], len: u32) -> u64 {
    let w = |i: usize| addr[i] & prefix6_mask(len, i);
    affinity_fold6(w(0), w(1), w(2), w(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_source_ports_evenly() {
        let m = 16_381u32;
        let mut buckets = [0u32; 16];
        for port in 0..16_000u16 {
            let idx = flow_hash(0x0b00_f40a, 0x0a00_600a, port.to_be(), 80u16.to_be(), 6) % m;
            buckets[(idx * 16 / m) as usize] += 1;
        }
        // 1000 per bucket expected; far outside 4 sigma would be a bad mix.
        assert!(buckets.iter().all(|&b| (870..1130).contains(&b)), "{buckets:?}");
    }

    #[test]
    fn ipv6_tuples_hash_apart() {
        let a = [1, 2, 3, 4];
        let b = [1, 2, 3, 5];
        let h = flow_hash6(&a, &b, 3, 4, 6);
        assert_eq!(h, flow_hash6(&a, &b, 3, 4, 6));
        assert_ne!(h, flow_hash6(&b, &a, 3, 4, 6));
        assert_ne!(h, flow_hash6(&a, &b, 4, 3, 6));
        assert_ne!(affinity_client6(&a), affinity_client6(&b));
        assert_eq!(affinity_client6(&[u32::MAX; 4]) >> 63, 0);
    }

    fn a6(s: &str) -> [u32; 4] {
        crate::addr6(s.parse().unwrap())
    }

    #[test]
    fn ipv6_prefixes_keep_their_first_bits() {
        let a = a6("2001:db8:1234:5678:9abc:def0:1357:9bdf");
        assert_eq!(prefix6(&a, 128), a);
        assert_eq!(prefix6(&a, 200), a, "beyond 128: the whole address");
        assert_eq!(prefix6(&a, 0), [0; 4]);
        assert_eq!(prefix6(&a, 64), a6("2001:db8:1234:5678::"));
        assert_eq!(prefix6(&a, 48), a6("2001:db8:1234::"));
        assert_eq!(prefix6(&a, 60), a6("2001:db8:1234:5670::"));
        assert_eq!(prefix6(&a, 127), a6("2001:db8:1234:5678:9abc:def0:1357:9bde"));
        assert_eq!(prefix6(&a, 1), a6("::"), "0x2001's first bit is 0");
        assert_eq!(prefix6(&a6("8000::1"), 1), a6("8000::"));
        assert_eq!(prefix6(&a, 96), a6("2001:db8:1234:5678:9abc:def0::"));
    }

    #[test]
    fn two_clients_of_one_prefix_share_an_affinity_key_only_when_masked() {
        let (a, b) = (a6("fd00:50::64"), a6("fd00:50::65"));
        assert_ne!(affinity_client6(&prefix6(&a, 128)), affinity_client6(&prefix6(&b, 128)));
        assert_eq!(affinity_client6(&prefix6(&a, 64)), affinity_client6(&prefix6(&b, 64)));
        let other = a6("fd00:51::64");
        assert_ne!(affinity_client6(&prefix6(&a, 64)), affinity_client6(&prefix6(&other, 64)), "another /64");
        for len in [0, 1, 31, 32, 33, 64, 100, 127, 128] {
            assert_eq!(affinity_client6_prefix(&a, len), affinity_client6(&prefix6(&a, len)), "/{len}");
        }
    }

    #[test]
    fn deterministic_and_tuple_sensitive() {
        let a = flow_hash(1, 2, 3, 4, 6);
        assert_eq!(a, flow_hash(1, 2, 3, 4, 6));
        assert_ne!(a, flow_hash(1, 2, 4, 3, 6));
        assert_ne!(a, flow_hash(1, 2, 3, 4, 17));
    }
}
