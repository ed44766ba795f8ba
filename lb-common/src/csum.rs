//! Internet checksum arithmetic (RFC 1071, RFC 1624).
//!
//! All values are taken exactly as they sit in packet memory (network byte
//! order loaded as native integers): one's-complement sums do not depend on
//! byte order as long as every operand uses the same one.

/// Folds a 32-bit one's-complement accumulator into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word changed.
#[inline(always)]
pub fn replace2(check: u16, from: u16, to: u16) -> u16 {
    let sum = (!check as u32) + (!from as u32) + (to as u32);
    !fold(sum)
}

/// The checksum after one 32-bit word (an IPv4 address) changed.
#[inline(always)]
pub fn replace4(check: u16, from: u32, to: u32) -> u16 {
    let sum = (!check as u32) + ((!from) & 0xffff) + ((!from) >> 16) + (to & 0xffff) + (to >> 16);
    !fold(sum)
}

/// What a checksum covering the 32-bit words `from` changes by when they
/// become `to` (their one's-complement sum of `!from` and `to`), folded
/// into 16 bits: the `__wsum` difference `bpf_l4_csum_replace` applies with
/// size 0 (`inet_proto_csum_replace_by_diff`), so that a whole IPv6
/// address (or two) costs one helper call instead of one per word.
#[inline(always)]
pub fn diff<const N: usize>(from: &[u32; N], to: &[u32; N]) -> u32 {
    // Four 16-bit halves a word: the sum fits 32 bits, and two folds
    // (no loop the verifier must walk) bring it to 16.
    const { assert!(N < 4096) };
    let mut sum = 0u32;
    let mut i = 0;
    while i < N {
        let (f, t) = (!from[i], to[i]);
        sum += (f & 0xffff) + (f >> 16) + (t & 0xffff) + (t >> 16);
        i += 1;
    }
    fold(sum) as u32
}

/// [`diff`] of one 16-bit field (a port): what a checksum covering it
/// changes by when it goes from `from` to `to`.
#[inline(always)]
pub fn diff2(from: u16, to: u16) -> u32 {
    fold((!from) as u32 + to as u32) as u32
}

/// The sum of two differences of [`diff`], folded again.
#[inline(always)]
pub fn add_diff(a: u32, b: u32) -> u32 {
    fold(a + b) as u32
}

/// The checksum after the words it covers changed by `diff` (of [`diff`]):
/// RFC 1624 eqn. 3 over all of them at once.
#[inline(always)]
pub fn apply_diff(check: u16, diff: u32) -> u16 {
    !fold((!check as u32) + diff)
}

/// UDP uses 0 for "no checksum"; a computed 0 is sent as 0xffff.
#[inline(always)]
pub fn udp_mangled_zero(check: u16) -> u16 {
    if check == 0 { 0xffff } else { check }
}

/// One's-complement sum of `data` as native-order 16-bit words, added to
/// `seed`. `N` is a constant so that the eBPF verifier sees a bounded loop.
#[inline(always)]
pub fn sum_words<const N: usize>(data: &[u8; N], seed: u32) -> u32 {
    let mut sum = seed as u64;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_ne_bytes([data[i], data[i + 1]]) as u64;
        i += 2;
    }
    if N % 2 == 1 {
        sum += u16::from_ne_bytes([data[N - 1], 0]) as u64;
    }
    while sum >> 32 != 0 {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

/// The checksum of a fixed-size buffer (checksum field zeroed by the caller).
#[inline(always)]
pub fn checksum<const N: usize>(data: &[u8; N]) -> u16 {
    !fold(sum_words(data, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain RFC 1071 over big-endian words, written independently of the
    /// functions above.
    fn reference(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for chunk in data.chunks(2) {
            let word = if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from_be_bytes([chunk[0], 0]) };
            sum += word as u32;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn a_diff_is_the_word_by_word_replacement() {
        let from = [0x0000_00fd_u32.to_be(), 0x1000_0000, 0x0a60_0000_u32.to_be(), 0xffff_ffff];
        let to = [0x0000_00fd_u32.to_be(), 0x1000_f400, 0x0af4_000b_u32.to_be(), 0x0000_0001];
        for check in [0u16, 1, 0x1234, 0xfffe, 0xffff, 0x8000] {
            let mut one = check;
            for i in 0..4 {
                one = replace4(one, from[i], to[i]);
            }
            assert_eq!(apply_diff(check, diff(&from, &to)), one, "check {check:#x}");
            // Two addresses at once: the sum of their differences.
            let both = add_diff(diff(&from, &to), diff(&to, &from));
            let mut two = one;
            for i in 0..4 {
                two = replace4(two, to[i], from[i]);
            }
            assert_eq!(apply_diff(check, both), two, "check {check:#x}, both");
        }
        assert_eq!(apply_diff(0x1234, diff(&from, &from)), 0x1234, "no change");
    }

    /// Both ports of a TCP header changed in one update (`diff2`, added):
    /// the checksum a full recomputation gives.
    #[test]
    fn both_ports_in_one_update_give_the_recomputed_checksum() {
        // A TCP header's first 20 bytes (checksum at 16..18) behind a
        // pseudo-header's 12 (the sum covers both).
        let mut seg = [0u8; 32];
        seg[..12].copy_from_slice(&[10, 0, 0, 1, 10, 245, 0, 1, 0, 6, 0, 20]);
        seg[12..14].copy_from_slice(&40000u16.to_be_bytes());
        seg[14..16].copy_from_slice(&30001u16.to_be_bytes());
        seg[24] = 0x50;
        seg[25] = 0x10;
        let check = reference(&seg);
        seg[28..30].copy_from_slice(&check.to_be_bytes());
        for (sport, dport) in [(1024u16, 8080u16), (65535, 0), (40000, 8080), (1024, 30001)] {
            let (old_s, old_d) = (u16::from_ne_bytes([seg[12], seg[13]]), u16::from_ne_bytes([seg[14], seg[15]]));
            let (new_s, new_d) = (sport.to_be(), dport.to_be());
            let ds = if new_s != old_s { diff2(old_s, new_s) } else { 0 };
            let dd = if new_d != old_d { diff2(old_d, new_d) } else { 0 };
            let field = u16::from_ne_bytes([seg[28], seg[29]]);
            let updated = apply_diff(field, add_diff(ds, dd));
            let mut fresh = seg;
            fresh[12..14].copy_from_slice(&sport.to_be_bytes());
            fresh[14..16].copy_from_slice(&dport.to_be_bytes());
            fresh[28..30].copy_from_slice(&[0, 0]);
            assert_eq!(u16::from_be(updated), reference(&fresh), "ports {sport}, {dport}");
        }
    }

    fn header() -> [u8; 20] {
        [0x45, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 64, 6, 0, 0, 10, 244, 0, 11, 10, 96, 0, 10]
    }

    fn store_check(h: &mut [u8; 20]) {
        h[10] = 0;
        h[11] = 0;
        let c = checksum(h);
        h[10..12].copy_from_slice(&c.to_ne_bytes());
    }

    #[test]
    fn full_checksum_matches_reference() {
        let mut h = header();
        store_check(&mut h);
        let mut z = h;
        z[10] = 0;
        z[11] = 0;
        assert_eq!(u16::from_be_bytes([h[10], h[11]]), reference(&z));
        assert_eq!(reference(&h), 0, "a header with its checksum sums to zero");
    }

    #[test]
    fn odd_length_checksum() {
        let data = [1u8, 2, 3, 4, 5];
        assert_eq!(checksum(&data).to_ne_bytes(), reference(&data).to_be_bytes());
    }

    #[test]
    fn replace4_equals_recompute() {
        for to in [0x0a_f4_00_0cu32, 0, 0xffff_ffff, 0x7f00_0001, 0xc0a8_0101] {
            let mut h = header();
            store_check(&mut h);
            let old_check = u16::from_ne_bytes([h[10], h[11]]);
            let from = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
            h[16..20].copy_from_slice(&to.to_be_bytes());
            let new = replace4(old_check, from, u32::from_ne_bytes(to.to_be_bytes()));
            let mut expect = h;
            store_check(&mut expect);
            assert_eq!(new.to_ne_bytes(), [expect[10], expect[11]], "to={to:#x}");
        }
    }

    #[test]
    fn replace2_equals_recompute() {
        for to in [0u16, 1, 0x1f90, 0xffff] {
            let mut h = header();
            store_check(&mut h);
            let old_check = u16::from_ne_bytes([h[10], h[11]]);
            let from = u16::from_ne_bytes([h[2], h[3]]);
            h[2..4].copy_from_slice(&to.to_be_bytes());
            let new = replace2(old_check, from, u16::from_ne_bytes(to.to_be_bytes()));
            let mut expect = h;
            store_check(&mut expect);
            // 0x0000 and 0xffff are the same value in one's complement.
            let got = new.to_ne_bytes();
            assert!(
                got == [expect[10], expect[11]] || (got == [0xff, 0xff] && expect[10..12] == [0, 0]),
                "to={to:#x} got {got:?} expect {:?}",
                &expect[10..12]
            );
        }
    }
}
