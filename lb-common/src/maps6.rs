//! IPv6 map keys and values, and the [`Family`] trait that lets one
//! lookup, selection and socket-translation path serve both families.
//!
//! What does not name an address is shared with IPv4: frontend IDs (and
//! so `LB4_SLOTS`, `LB_SVC_NAMES`, `LB4_MAGLEV`, `LB_FE_STATS` and the
//! socket-side `LB4_AFFINITY`, keyed by a namespace cookie), the
//! frontend value ([`Service4Value`]) and the VIP kinds ([`Vip4`]). What
//! names an address has an IPv6 twin here. Backend IDs are per family:
//! a slot of an IPv6 frontend names an entry of `LB6_BACKENDS`.
//!
//! IPv6 addresses are stored as four 32-bit words in network order, as
//! the kernel's `struct in6_addr` (`s6_addr32`) and `bpf_sock_addr.user_ip6`
//! hold them, so the datapath copies them without swapping bytes.

use core::{
    mem::{offset_of, size_of},
    net::Ipv6Addr,
};

#[cfg(doc)]
use crate::Vip4;
use crate::{
    Backend4, CtEntryOf, CtKeyOf, Frag4Key, RevNat4, SCOPE_EXTERNAL, Service4Key, Service4Value, SockRevNat4, SockRevNat4Key, SrcRangeOf,
};

/// An IPv6 address: four words, each in network order.
pub type Addr6 = [u32; 4];

/// An address as the maps store it.
pub const fn addr6(ip: Ipv6Addr) -> Addr6 {
    let o = ip.octets();
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The address a map holds.
pub fn ipv6(addr: Addr6) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, w) in addr.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// The `::ffff:0:0/96` prefix of IPv4-mapped addresses, as words.
const V4_MAPPED_PREFIX: [u32; 3] = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff])];

/// The IPv4 address (network order) of an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`), which a dual-stack socket uses to reach IPv4.
#[inline(always)]
pub const fn v4_mapped(addr: &Addr6) -> Option<u32> {
    if addr[0] == V4_MAPPED_PREFIX[0] && addr[1] == V4_MAPPED_PREFIX[1] && addr[2] == V4_MAPPED_PREFIX[2] { Some(addr[3]) } else { None }
}

/// `::ffff:a.b.c.d` for an IPv4 address (network order).
#[inline(always)]
pub const fn map_v4(addr: u32) -> Addr6 {
    [V4_MAPPED_PREFIX[0], V4_MAPPED_PREFIX[1], V4_MAPPED_PREFIX[2], addr]
}

/// `LB6_SERVICES`: an IPv6 frontend (see [`Service4Key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Service6Key {
    pub addr: Addr6,
    /// Frontend port, network order.
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

/// `LB6_BACKENDS[id]` (see [`Backend4`]): an unused slot has `addr` all
/// zeroes (`::` is never a backend).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend6 {
    pub addr: Addr6,
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
    pub version: u16,
    pub _pad: u16,
}

/// `LB6_REVNAT[id]`, indexed by the (shared) frontend ID (see
/// [`RevNat4`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevNat6 {
    pub addr: Addr6,
    pub port: u16,
    pub version: u16,
}

/// `LB6_SOCK_REVNAT` key (see [`SockRevNat4Key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNat6Key {
    pub cookie: u64,
    pub addr: Addr6,
    pub port: u16,
    pub _pad: [u16; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockRevNat6 {
    pub addr: Addr6,
    pub port: u16,
    pub _pad: u16,
    pub frontend_id: u32,
}

/// `LB6_CT_TCP` / `LB6_CT_ANY` key (see [`CtKeyOf`]).
pub type Ct6Key = CtKeyOf<Addr6>;
/// `LB6_SRC_RANGES` data (see [`SrcRangeOf`]): a lookup with prefix
/// length 160 and the client's address.
pub type SrcRange6 = SrcRangeOf<Addr6>;

/// An IPv6 conntrack entry (see [`CtEntryOf`]): 64 bytes, one cache line.
pub type Ct6Entry = CtEntryOf<Addr6>;

/// An address family as the maps store it: its address type and the
/// entries that hold one. The lookups, the backend choice and the socket
/// translation are written once over this trait; [`V4`] and [`V6`] pick
/// the keys, values (and, in the datapath, the maps).
pub trait Family {
    /// An address, in network order.
    type Addr: Copy + PartialEq;
    type ServiceKey: Copy;
    type Backend: Copy;
    type RevNat: Copy;
    type SockRevNatKey: Copy;
    type SockRevNat: Copy;
    /// A datagram's identification, network order: IPv4's 16 bits, the
    /// IPv6 fragment header's 32.
    type FragId: Copy;
    /// The fragment map's key (`LB4_FRAGS`, `LB6_FRAGS`).
    type FragKey: Copy;

    fn service_key(addr: Self::Addr, port: u16, proto: u8) -> Self::ServiceKey;
    /// A backend's address and port, if the slot is in use.
    fn backend_addr(b: &Self::Backend) -> Option<(Self::Addr, u16)>;
    fn backend_version(b: &Self::Backend) -> u16;
    /// A backend's `backend_flags`.
    fn backend_flags(b: &Self::Backend) -> u8;
    /// A frontend slot's address, port and version, if it is in use.
    fn rev_nat(r: &Self::RevNat) -> Option<(Self::Addr, u16, u16)>;
    fn sock_rev_nat_key(cookie: u64, addr: Self::Addr, port: u16) -> Self::SockRevNatKey;
    fn sock_rev_nat(addr: Self::Addr, port: u16, frontend_id: u32) -> Self::SockRevNat;
    /// The frontend (address, port, ID) a socket's backend stands for.
    fn sock_front(v: &Self::SockRevNat) -> (Self::Addr, u16, u32);
    /// The fragment map's key of a datagram: its addresses and
    /// identification, and IPv4's protocol.
    fn frag_key(saddr: &Self::Addr, daddr: &Self::Addr, id: Self::FragId, proto: u8) -> Self::FragKey;
}

/// IPv4: the `LB4_*` maps.
pub enum V4 {}
/// IPv6: the `LB6_*` maps.
pub enum V6 {}

impl Family for V4 {
    type Addr = u32;
    type ServiceKey = Service4Key;
    type Backend = Backend4;
    type RevNat = RevNat4;
    type SockRevNatKey = SockRevNat4Key;
    type SockRevNat = SockRevNat4;
    type FragId = u16;
    type FragKey = Frag4Key;

    #[inline(always)]
    fn service_key(addr: u32, port: u16, proto: u8) -> Service4Key {
        Service4Key { addr, port, proto, scope: SCOPE_EXTERNAL }
    }
    #[inline(always)]
    fn backend_addr(b: &Backend4) -> Option<(u32, u16)> {
        (b.addr != 0).then_some((b.addr, b.port))
    }
    #[inline(always)]
    fn backend_version(b: &Backend4) -> u16 {
        b.version
    }
    #[inline(always)]
    fn backend_flags(b: &Backend4) -> u8 {
        b.flags
    }
    #[inline(always)]
    fn rev_nat(r: &RevNat4) -> Option<(u32, u16, u16)> {
        (r.addr != 0).then_some((r.addr, r.port, r.version))
    }
    #[inline(always)]
    fn sock_rev_nat_key(cookie: u64, addr: u32, port: u16) -> SockRevNat4Key {
        SockRevNat4Key { cookie, addr, port, _pad: 0 }
    }
    #[inline(always)]
    fn sock_rev_nat(addr: u32, port: u16, frontend_id: u32) -> SockRevNat4 {
        SockRevNat4 { addr, port, _pad: 0, frontend_id }
    }
    #[inline(always)]
    fn sock_front(v: &SockRevNat4) -> (u32, u16, u32) {
        (v.addr, v.port, v.frontend_id)
    }
    #[inline(always)]
    fn frag_key(saddr: &u32, daddr: &u32, id: u16, proto: u8) -> Frag4Key {
        Frag4Key { saddr: *saddr, daddr: *daddr, id, proto, _pad: 0 }
    }
}

#[inline(always)]
const fn unspecified(a: &Addr6) -> bool {
    a[0] | a[1] | a[2] | a[3] == 0
}

impl Family for V6 {
    type Addr = Addr6;
    type ServiceKey = Service6Key;
    type Backend = Backend6;
    type RevNat = RevNat6;
    type SockRevNatKey = SockRevNat6Key;
    type SockRevNat = SockRevNat6;
    type FragId = u32;
    type FragKey = Frag6Key;

    #[inline(always)]
    fn service_key(addr: Addr6, port: u16, proto: u8) -> Service6Key {
        Service6Key { addr, port, proto, scope: SCOPE_EXTERNAL }
    }
    #[inline(always)]
    fn backend_addr(b: &Backend6) -> Option<(Addr6, u16)> {
        (!unspecified(&b.addr)).then_some((b.addr, b.port))
    }
    #[inline(always)]
    fn backend_version(b: &Backend6) -> u16 {
        b.version
    }
    #[inline(always)]
    fn backend_flags(b: &Backend6) -> u8 {
        b.flags
    }
    #[inline(always)]
    fn rev_nat(r: &RevNat6) -> Option<(Addr6, u16, u16)> {
        (!unspecified(&r.addr)).then_some((r.addr, r.port, r.version))
    }
    #[inline(always)]
    fn sock_rev_nat_key(cookie: u64, addr: Addr6, port: u16) -> SockRevNat6Key {
        SockRevNat6Key { cookie, addr, port, _pad: [0; 3] }
    }
    #[inline(always)]
    fn sock_rev_nat(addr: Addr6, port: u16, frontend_id: u32) -> SockRevNat6 {
        SockRevNat6 { addr, port, _pad: 0, frontend_id }
    }
    #[inline(always)]
    fn sock_front(v: &SockRevNat6) -> (Addr6, u16, u32) {
        (v.addr, v.port, v.frontend_id)
    }
    /// Without the protocol (see [`Frag6Key`]).
    #[inline(always)]
    fn frag_key(saddr: &Addr6, daddr: &Addr6, id: u32, _proto: u8) -> Frag6Key {
        Frag6Key { saddr: *saddr, daddr: *daddr, id, _pad: 0 }
    }
}

/// `LB6_FRAGS` (LRU): an IPv6 datagram being fragmented, as its packets
/// arrive at a hook (see [`crate::Frag4Key`]), by its fragment header's
/// 32-bit identification. The value is IPv4's, [`crate::Frag`]: the
/// first fragment's ports and L4 protocol.
///
/// Unlike IPv4's, the key has no protocol. The identification is unique
/// per address pair (RFC 8200 4.5), and Linux's reassembly keys on
/// addresses and identification alone. The fragment header's next header
/// may name a destination options header rather than the L4 protocol, and
/// a later fragment has nothing else to tell it by.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frag6Key {
    pub saddr: Addr6,
    pub daddr: Addr6,
    /// The fragment header's identification, network order.
    pub id: u32,
    pub _pad: u32,
}

/// The frontend value is the same for both families.
pub type Service6Value = Service4Value;

/// This node's IPv6 north-south settings, index 0 of `LB6_NODE` (the rest,
/// the SNAT ports and the NodePort range, are `LB_NODE`'s, shared with
/// IPv4). A map of its own rather than a field of `NodeConfig`: the IPv4
/// path copies `NodeConfig` onto its stack, and the IPv6 one reads this
/// only where it needs it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Node6Config {
    /// The address IPv6 north-south flows to a backend on another node are
    /// SNATed to (NAT66): an IPv6 address of the external interface. `::`:
    /// none; such flows pass untranslated (`stat::PASS_NO_NAT66`).
    pub snat_addr: Addr6,
    /// The low bits of an IPv6 client's address that session affinity
    /// ignores: 128 - `--affinity-ipv6-prefix` (see [`Self::affinity_prefix`]).
    /// 0, also what a zeroed map holds: the whole address, as kube-proxy.
    pub affinity_host_bits: u32,
}

impl Node6Config {
    /// The IPv6 client prefix length session affinity keys a client by.
    #[inline(always)]
    pub fn affinity_prefix(&self) -> u32 {
        128 - self.affinity_host_bits.min(128)
    }

    /// [`Self::affinity_host_bits`] for a prefix length (above 128: 128).
    pub const fn affinity_host_bits_for(prefix: u32) -> u32 {
        128 - if prefix > 128 { 128 } else { prefix }
    }
}

// ---- ABI locks (`assert_layout!` from `maps`) ------------------------------

assert_layout!(Service6Key, size = 20, addr @ 0, port @ 16, proto @ 18, scope @ 19);
assert_layout!(Backend6, size = 24, addr @ 0, port @ 16, proto @ 18, flags @ 19, version @ 20, _pad @ 22);
assert_layout!(RevNat6, size = 20, addr @ 0, port @ 16, version @ 18);
assert_layout!(SockRevNat6Key, size = 32, cookie @ 0, addr @ 8, port @ 24, _pad @ 26);
assert_layout!(SockRevNat6, size = 24, addr @ 0, port @ 16, _pad @ 18, frontend_id @ 20);
assert_layout!(SrcRange6, size = 20, frontend_id @ 0, addr @ 4);
assert_layout!(Ct6Key, size = 40, saddr @ 0, daddr @ 16, sport @ 32, dport @ 34, proto @ 36, dir @ 37, _pad @ 38);
assert_layout!(Node6Config, size = 20, snat_addr @ 0, affinity_host_bits @ 16);
assert_layout!(Frag6Key, size = 40, saddr @ 0, daddr @ 16, id @ 32, _pad @ 36);
assert_layout!(Ct6Entry, size = 64, last_seen @ 0, nat_saddr @ 8, nat_daddr @ 24, nat_sport @ 40, nat_dport @ 42, backend_id @ 44, frontend_id @ 48, seq @ 52, tcp_flags @ 56, peer_flags @ 57, flags @ 58, _pad @ 59, frontend_version @ 60, backend_version @ 62);

#[cfg(feature = "user")]
mod user {
    use super::*;

    pod!(Service6Key, Backend6, RevNat6, SockRevNat6Key, SockRevNat6, Ct6Key, Ct6Entry, Node6Config, Frag6Key);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(a: Ipv6Addr) -> Addr6 {
        let w = addr6(a);
        assert_eq!(ipv6(w), a);
        w
    }

    #[test]
    fn v4_mapped_addresses_are_told_apart() {
        let mapped = words("::ffff:10.96.0.10".parse().unwrap());
        assert_eq!(v4_mapped(&mapped), Some(u32::from_ne_bytes([10, 96, 0, 10])));
        assert_eq!(map_v4(u32::from_ne_bytes([10, 96, 0, 10])), mapped);
        // Not mapped: a plain IPv6 address, the IPv4-compatible form
        // (deprecated, `::a.b.c.d`) and NAT64's prefix.
        for s in ["fd00:96::10", "::10.96.0.10", "64:ff9b::a60:a", "::1", "::"] {
            assert_eq!(v4_mapped(&words(s.parse().unwrap())), None, "{s}");
        }
    }

    #[test]
    fn unused_slots_are_all_zero() {
        let b = Backend6 { addr: [0; 4], port: 80u16.to_be(), proto: 6, flags: 0, version: 3, _pad: 0 };
        assert_eq!(V6::backend_addr(&b), None);
        let b = Backend6 { addr: words("fd00::1".parse().unwrap()), ..b };
        assert_eq!(V6::backend_addr(&b), Some((b.addr, 80u16.to_be())));
        assert_eq!(V6::backend_version(&b), 3);
        let r = RevNat6 { addr: [0; 4], port: 0, version: 1 };
        assert_eq!(V6::rev_nat(&r), None);
        let r = RevNat6 { addr: words("fd00:96::10".parse().unwrap()), port: 53u16.to_be(), version: 1 };
        assert_eq!(V6::rev_nat(&r), Some((r.addr, 53u16.to_be(), 1)));
    }
}
