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
    let hi = addr[2] ^ fmix32(addr[0]);
    let lo = addr[3] ^ fmix32(addr[1]);
    (((hi as u64) << 32) | lo as u64) & !(1 << 63)
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

    #[test]
    fn deterministic_and_tuple_sensitive() {
        let a = flow_hash(1, 2, 3, 4, 6);
        assert_eq!(a, flow_hash(1, 2, 3, 4, 6));
        assert_ne!(a, flow_hash(1, 2, 4, 3, 6));
        assert_ne!(a, flow_hash(1, 2, 3, 4, 17));
    }
}
