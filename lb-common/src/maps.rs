//! Map keys and values. See `docs/map-model.md` for how they fit together.

use core::mem::{offset_of, size_of};

/// Names of the maps, which are also their pin names under the bpffs
/// directory. The kernel keeps at most 15 characters of a map name.
pub mod names {
    pub const SERVICES: &str = "LB4_SERVICES";
    pub const SLOTS: &str = "LB4_SLOTS";
    pub const BACKENDS: &str = "LB4_BACKENDS";
    pub const REVNAT: &str = "LB4_REVNAT";
    pub const CT: &str = "LB4_CT";
    pub const SOCK_REVNAT: &str = "LB4_SOCK_REVNAT";
    pub const CONFIG: &str = "LB_CONFIG";
    pub const SVC_NAMES: &str = "LB_SVC_NAMES";
    pub const AFFINITY: &str = "LB4_AFFINITY";
    pub const MAGLEV: &str = "LB4_MAGLEV";
    pub const NAT: &str = "LB4_NAT";
    pub const SRC_RANGES: &str = "LB4_SRC_RANGES";
    pub const NODE: &str = "LB_NODE";
    pub const DEVICES: &str = "LB_DEVICES";

    /// Every map the agent pins, in a stable order.
    pub const ALL: [&str; 14] = [
        SERVICES,
        SLOTS,
        BACKENDS,
        REVNAT,
        CT,
        SOCK_REVNAT,
        CONFIG,
        SVC_NAMES,
        AFFINITY,
        MAGLEV,
        NAT,
        SRC_RANGES,
        NODE,
        DEVICES,
    ];
}

/// Default capacities. The agent can override each at load time.
pub mod sizes {
    pub const SERVICES: u32 = 65_536;
    pub const SLOTS: u32 = 262_144;
    pub const BACKENDS: u32 = 65_536;
    pub const REVNAT: u32 = 65_536;
    pub const CT: u32 = 262_144;
    pub const SOCK_REVNAT: u32 = 65_536;
    pub const SVC_NAMES: u32 = 65_536;
    pub const AFFINITY: u32 = 65_536;
    /// Frontends that can have a Maglev table at once.
    pub const MAGLEV: u32 = 4_096;
    /// Default Maglev table size M (prime), as Cilium's.
    pub const MAGLEV_M: u32 = 16_381;
    /// North-south SNAT entries (two per SNATed flow).
    pub const NAT: u32 = 131_072;
    /// loadBalancerSourceRanges CIDRs, all frontends together (as Cilium).
    pub const SRC_RANGES: u32 = 65_536;
    /// External interfaces with the XDP program.
    pub const DEVICES: u32 = 64;
}

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// `Service4Key::scope`: which clients a frontend entry serves.
/// `SCOPE_EXTERNAL` is the only entry for most services; a second
/// `SCOPE_INTERNAL` entry exists when internal and external traffic policies
/// select different backends (as in Cilium).
pub const SCOPE_EXTERNAL: u8 = 0;
pub const SCOPE_INTERNAL: u8 = 1;

/// A frontend: (address, port, protocol). ClusterIP, external IP,
/// LoadBalancer ingress IP, or NodePort (address = a node IP, or 0 for the
/// "any local address" NodePort entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Service4Key {
    /// Frontend IPv4 address, network order.
    pub addr: u32,
    /// Frontend port, network order.
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

/// `Service4Value::flags`.
pub mod svc_flags {
    /// Frontend is a NodePort entry.
    pub const NODE_PORT: u32 = 1 << 0;
    /// Frontend is an external IP.
    pub const EXTERNAL_IP: u32 = 1 << 1;
    /// Frontend is a LoadBalancer ingress IP.
    pub const LOAD_BALANCER: u32 = 1 << 2;
    /// externalTrafficPolicy=Local.
    pub const EXT_LOCAL: u32 = 1 << 3;
    /// internalTrafficPolicy=Local.
    pub const INT_LOCAL: u32 = 1 << 4;
    /// sessionAffinity=ClientIP; `affinity_timeout` is set.
    pub const AFFINITY: u32 = 1 << 5;
    /// Backend choice by the service's Maglev table instead of at random.
    pub const MAGLEV: u32 = 1 << 6;
    /// loadBalancerSourceRanges apply.
    pub const SOURCE_RANGES: u32 = 1 << 7;
}

/// What a frontend resolves to. Replaced as a whole by one map update, so a
/// packet sees either the old or the new service, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service4Value {
    /// Frontend ID. It is also the rev-NAT index and the key of the
    /// backend slots.
    pub id: u32,
    /// Number of backend slots in use (slot 0..count). 0 means the service
    /// has no usable endpoint and new connections are rejected.
    pub count: u16,
    /// Which generation of slots is live (0 or 1). The agent writes the
    /// other generation and then flips this field in one update.
    pub generation: u16,
    /// `svc_flags::*`.
    pub flags: u32,
    /// Session affinity timeout in seconds (with `svc_flags::AFFINITY`).
    pub affinity_timeout: u32,
}

/// One backend slot of a frontend: `(id, generation, slot) -> backend id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub svc_id: u32,
    pub slot: u16,
    pub generation: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub backend_id: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub id: u32,
}

/// `Backend4::flags`.
pub mod backend_flags {
    /// The endpoint is terminating (serving, not ready). Existing flows keep
    /// it; it only takes new flows when no ready endpoint exists.
    pub const TERMINATING: u8 = 1 << 0;
    /// The endpoint runs on this node.
    pub const LOCAL: u8 = 1 << 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend4 {
    /// Backend (pod) IPv4 address, network order.
    pub addr: u32,
    /// Backend port, network order.
    pub port: u16,
    pub proto: u8,
    /// `backend_flags::*`.
    pub flags: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevNatKey {
    pub id: u32,
}

/// The frontend a reply must appear to come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevNat4 {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// `Ct4Key::dir`.
pub const CT_SERVICE: u8 = 1;
/// `Ct4Key::dir`: reply direction, keyed by the backend's tuple.
pub const CT_REPLY: u8 = 2;

/// A connection tracking key. Service entries are keyed by the client's
/// original tuple (client -> frontend); reply entries by the reply's tuple
/// (backend -> client).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ct4Key {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: u16,
}

impl Ct4Key {
    #[inline(always)]
    pub const fn new(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8, dir: u8) -> Ct4Key {
        Ct4Key { saddr, daddr, sport, dport, proto, dir, _pad: 0 }
    }
}

/// `CtEntry::tcp_flags` collects the TCP flags seen on the flow.
pub mod ct_flags {
    pub const SYN: u8 = 0x02;
    pub const FIN: u8 = 0x01;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last packet in this
    /// entry's direction, for timeouts and GC.
    pub last_seen: u64,
    pub backend_id: u32,
    pub rev_nat_id: u32,
    /// The other end of the translation: the backend (in a `CT_SERVICE`
    /// entry) or the frontend (in a `CT_REPLY` entry). With it the agent
    /// finds an entry's twin without reading other maps.
    pub peer_addr: u32,
    pub peer_port: u16,
    /// TCP flags seen in this entry's direction (`ct_flags`).
    pub tcp_flags: u8,
    pub _pad: u8,
}

impl CtEntry {
    /// The key of the other direction's entry.
    #[inline(always)]
    pub fn twin_key(&self, key: &Ct4Key) -> Ct4Key {
        if key.dir == CT_SERVICE {
            Ct4Key {
                saddr: self.peer_addr,
                daddr: key.saddr,
                sport: self.peer_port,
                dport: key.sport,
                proto: key.proto,
                dir: CT_REPLY,
                _pad: 0,
            }
        } else {
            Ct4Key {
                saddr: key.daddr,
                daddr: self.peer_addr,
                sport: key.dport,
                dport: self.peer_port,
                proto: key.proto,
                dir: CT_SERVICE,
                _pad: 0,
            }
        }
    }
}

/// Socket-level reverse NAT for host clients: after connect4/sendmsg4 turned
/// a frontend into a backend, recvmsg4/getpeername4 turn it back.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNat4Key {
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockRevNat4 {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
    pub rev_nat_id: u32,
}

/// Global datapath configuration, index 0 of `LB_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Network namespace cookie of the node's host namespace. The socket
    /// hooks only translate for sockets in that namespace: pods are served
    /// by the tc program on their interface.
    pub host_netns_cookie: u64,
    /// `config_flags::*`.
    pub flags: u32,
    /// Size M of the Maglev tables (a prime).
    pub maglev_m: u32,
    /// Conntrack timeouts, in seconds (see `crate::ct`).
    pub timeouts: CtTimeouts,
}

impl Config {
    /// A ready configuration with default timeouts and Maglev size.
    pub const fn ready(host_netns_cookie: u64) -> Config {
        Config {
            host_netns_cookie,
            flags: config_flags::READY,
            maglev_m: sizes::MAGLEV_M,
            timeouts: CtTimeouts::DEFAULT,
        }
    }
}

/// Conntrack timeouts in seconds, by state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP, only the opening SYN seen.
    pub tcp_syn: u32,
    /// TCP, handshake done and no FIN or RST seen.
    pub tcp_established: u32,
    /// TCP after a FIN or RST.
    pub tcp_closing: u32,
    /// UDP (and any non-TCP flow).
    pub udp: u32,
}

impl CtTimeouts {
    /// Cilium's defaults, with UDP at 60 s as in its CT (non-TCP) lifetime.
    pub const DEFAULT: CtTimeouts = CtTimeouts {
        tcp_syn: 60,
        tcp_established: 21_600,
        tcp_closing: 10,
        udp: 60,
    };
}

pub mod config_flags {
    /// The agent has written the configuration; until then the datapath
    /// passes everything untouched.
    pub const READY: u32 = 1 << 0;
}

/// Session affinity: which backend a client was last sent to, per frontend.
/// `client` is the client's IPv4 address (network order) for packets, or
/// the socket's network namespace cookie with `AFFINITY_NETNS` set for the
/// socket hooks (a host client has no source address at connect time).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Affinity4Key {
    pub client: u64,
    pub svc_id: u32,
    pub _pad: u32,
}

pub const AFFINITY_NETNS: u64 = 1 << 63;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Affinity4 {
    /// CLOCK_MONOTONIC ns of the last new connection that used it.
    pub last_used: u64,
    pub backend_id: u32,
    pub _pad: u32,
}

pub const SVC_NAME_LEN: usize = 64;

/// Human name of a frontend for listings: `namespace/name:port`, NUL padded.
/// Only userspace reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvcName {
    pub name: [u8; SVC_NAME_LEN],
}

// ---- North-south (NodePort, external IPs, LoadBalancer) ---------------------

/// `LB4_NAT` (LRU): the SNAT of north-south flows whose backend is on
/// another node. Keyed by [`Ct4Key`], with `dir`:
///
/// - [`CT_SERVICE`]: the client's original tuple (client -> frontend); the
///   value's `addr:port` is the node address and NAT port the flow leaves
///   with, `peer_addr:peer_port` the backend the port was allocated for;
/// - [`CT_REPLY`]: the backend's reply tuple (backend -> node address:NAT
///   port); the value's `addr:port` is the client, `peer_addr:peer_port` the
///   frontend the reply must come from.
///
/// The two entries of a flow name each other: see [`Nat4::twin_key`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nat4 {
    /// `bpf_ktime_get_ns()` of the last packet in this entry's direction.
    pub last_seen: u64,
    pub addr: u32,
    pub port: u16,
    /// TCP flags seen in this entry's direction (`ct_flags`).
    pub tcp_flags: u8,
    pub _pad: u8,
    pub peer_addr: u32,
    pub peer_port: u16,
    pub _pad2: u16,
    /// Frontend ID (rev-NAT index) of the flow.
    pub rev_nat_id: u32,
    pub _pad3: u32,
}

impl Nat4 {
    /// The key of the other direction's entry.
    #[inline(always)]
    pub fn twin_key(&self, key: &Ct4Key) -> Ct4Key {
        if key.dir == CT_SERVICE {
            // client -> frontend  ==>  backend -> nat addr:port
            Ct4Key {
                saddr: self.peer_addr,
                daddr: self.addr,
                sport: self.peer_port,
                dport: self.port,
                proto: key.proto,
                dir: CT_REPLY,
                _pad: 0,
            }
        } else {
            // backend -> nat addr:port  ==>  client -> frontend
            Ct4Key {
                saddr: self.addr,
                daddr: self.peer_addr,
                sport: self.port,
                dport: self.peer_port,
                proto: key.proto,
                dir: CT_SERVICE,
                _pad: 0,
            }
        }
    }
}

/// `LB4_SRC_RANGES` (LPM trie): loadBalancerSourceRanges of frontends.
/// The trie key is a prefix length followed by this data; the prefix length
/// counts the 32 bits of `svc_id` plus the CIDR's prefix, so a lookup with
/// prefix length 64 and the client's address finds whether any range of
/// that frontend contains it. The value is unused (1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SrcRange4 {
    /// Frontend ID, big-endian (the trie matches bytes in order).
    pub svc_id: u32,
    /// CIDR address, network order (host bits zero).
    pub addr: u32,
}

impl SrcRange4 {
    /// The trie entry (prefix length, data) of `addr/len` (network-order
    /// address) for frontend `id`.
    pub const fn range(id: u32, addr: u32, len: u8) -> (u32, SrcRange4) {
        let len = if len > 32 { 32 } else { len };
        // The first `len` bits on the wire.
        let mask_host: u32 = if len == 0 { 0 } else { u32::MAX << (32 - len as u32) };
        (32 + len as u32, SrcRange4 { svc_id: id.to_be(), addr: addr & mask_host.to_be() })
    }

    /// The lookup entry for a client address.
    #[inline(always)]
    pub const fn client(id: u32, addr: u32) -> (u32, SrcRange4) {
        (64, SrcRange4 { svc_id: id.to_be(), addr })
    }
}

/// This node's north-south settings, index 0 of `LB_NODE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// The address north-south flows to a backend on another node are
    /// SNATed to (network order). 0: no SNAT; such packets are left to the
    /// kernel.
    pub snat_addr: u32,
    /// SNAT source ports, inclusive, host order.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// `node_flags::*`.
    pub flags: u32,
    pub _pad: u32,
}

pub mod node_flags {
    /// The agent has written the north-south configuration.
    pub const READY: u32 = 1 << 0;
}

/// How the XDP program is attached to an external interface.
pub mod xdp_mode {
    pub const NATIVE: u32 = 1;
    pub const GENERIC: u32 = 2;
    pub const OFFLOAD: u32 = 3;
}

pub const IFNAME_LEN: usize = 16;

/// `LB_DEVICES`: ifindex -> how the XDP program is attached there. Written
/// by the agent for `lb-agent list`; the datapath does not read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    /// `xdp_mode::*`.
    pub mode: u32,
    pub name: [u8; IFNAME_LEN],
}

// ---- ABI locks -------------------------------------------------------------

macro_rules! assert_layout {
    ($ty:ty, size = $size:expr, $( $field:ident @ $off:expr ),* $(,)?) => {
        const _: () = {
            assert!(size_of::<$ty>() == $size);
            $( assert!(offset_of!($ty, $field) == $off); )*
        };
    };
}

assert_layout!(Service4Key, size = 8, addr @ 0, port @ 4, proto @ 6, scope @ 7);
assert_layout!(Service4Value, size = 16, id @ 0, count @ 4, generation @ 6, flags @ 8, affinity_timeout @ 12);
assert_layout!(SlotKey, size = 8, svc_id @ 0, slot @ 4, generation @ 6);
assert_layout!(Slot, size = 4, backend_id @ 0);
assert_layout!(BackendKey, size = 4, id @ 0);
assert_layout!(Backend4, size = 8, addr @ 0, port @ 4, proto @ 6, flags @ 7);
assert_layout!(RevNatKey, size = 4, id @ 0);
assert_layout!(RevNat4, size = 8, addr @ 0, port @ 4, _pad @ 6);
assert_layout!(Ct4Key, size = 16, saddr @ 0, daddr @ 4, sport @ 8, dport @ 10, proto @ 12, dir @ 13, _pad @ 14);
assert_layout!(CtEntry, size = 24, last_seen @ 0, backend_id @ 8, rev_nat_id @ 12, peer_addr @ 16, peer_port @ 20, tcp_flags @ 22, _pad @ 23);
assert_layout!(SockRevNat4Key, size = 16, cookie @ 0, addr @ 8, port @ 12, _pad @ 14);
assert_layout!(SockRevNat4, size = 12, addr @ 0, port @ 4, _pad @ 6, rev_nat_id @ 8);
assert_layout!(Config, size = 32, host_netns_cookie @ 0, flags @ 8, maglev_m @ 12, timeouts @ 16);
assert_layout!(CtTimeouts, size = 16, tcp_syn @ 0, tcp_established @ 4, tcp_closing @ 8, udp @ 12);
assert_layout!(Affinity4Key, size = 16, client @ 0, svc_id @ 8, _pad @ 12);
assert_layout!(Affinity4, size = 16, last_used @ 0, backend_id @ 8, _pad @ 12);
assert_layout!(SvcName, size = SVC_NAME_LEN, name @ 0);
assert_layout!(Nat4, size = 32, last_seen @ 0, addr @ 8, port @ 12, tcp_flags @ 14, _pad @ 15, peer_addr @ 16, peer_port @ 20, _pad2 @ 22, rev_nat_id @ 24, _pad3 @ 28);
assert_layout!(SrcRange4, size = 8, svc_id @ 0, addr @ 4);
assert_layout!(NodeConfig, size = 16, snat_addr @ 0, nat_port_min @ 4, nat_port_max @ 6, flags @ 8, _pad @ 12);
assert_layout!(Device, size = 20, mode @ 0, name @ 4);

#[cfg(feature = "user")]
mod user {
    use super::*;

    macro_rules! pod {
        ($($ty:ty),* $(,)?) => {$(
            // SAFETY: repr(C), only integer fields, explicit padding: every
            // bit pattern is valid and there are no implicit padding bytes
            // (the layout asserts above prove the sizes add up).
            unsafe impl aya::Pod for $ty {}
            unsafe impl bytemuck::Zeroable for $ty {}
            unsafe impl bytemuck::Pod for $ty {}
        )*};
    }

    pod!(
        Service4Key,
        Service4Value,
        SlotKey,
        Slot,
        BackendKey,
        Backend4,
        RevNatKey,
        RevNat4,
        Ct4Key,
        CtEntry,
        SockRevNat4Key,
        SockRevNat4,
        Config,
        CtTimeouts,
        Affinity4Key,
        Affinity4,
        SvcName,
        Nat4,
        SrcRange4,
        NodeConfig,
        Device,
    );
}

#[cfg(test)]
mod north_south_tests {
    use super::*;

    fn be(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    #[test]
    fn source_range_keys_mask_host_bits() {
        let (len, k) = SrcRange4::range(7, be([192, 168, 50, 77]), 24);
        assert_eq!(len, 56);
        assert_eq!(k.addr, be([192, 168, 50, 0]));
        assert_eq!(k.svc_id.to_ne_bytes(), [0, 0, 0, 7]);
        assert_eq!(SrcRange4::range(7, be([10, 1, 2, 3]), 0).1.addr, 0);
        assert_eq!(SrcRange4::range(7, be([10, 1, 2, 3]), 32).1.addr, be([10, 1, 2, 3]));
        assert_eq!(SrcRange4::range(7, be([10, 1, 2, 3]), 9).1.addr, be([10, 0, 0, 0]));
        assert_eq!(SrcRange4::client(7, be([1, 2, 3, 4])).0, 64);
    }

    #[test]
    fn nat_entries_name_their_twin() {
        let out_key = Ct4Key {
            saddr: 1, daddr: 2, sport: 3, dport: 4, proto: IPPROTO_TCP, dir: CT_SERVICE, _pad: 0,
        };
        let out = Nat4 {
            last_seen: 0, addr: 10, port: 11, tcp_flags: 0, _pad: 0,
            peer_addr: 20, peer_port: 21, _pad2: 0, rev_nat_id: 5, _pad3: 0,
        };
        let in_key = out.twin_key(&out_key);
        assert_eq!((in_key.saddr, in_key.daddr, in_key.sport, in_key.dport, in_key.dir), (20, 10, 21, 11, CT_REPLY));
        let back = Nat4 { addr: 1, port: 3, peer_addr: 2, peer_port: 4, ..out };
        assert_eq!(back.twin_key(&in_key), out_key);
    }
}
