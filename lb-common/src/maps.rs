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

    /// Every map the agent pins, in a stable order.
    pub const ALL: [&str; 10] = [
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
    );
}
