//! Map keys and values. See `docs/map-model.md` for how they fit together.

use core::mem::{offset_of, size_of};

/// Declares the map set once: each map's constant, its name (also its pin
/// name under the bpffs directory; the kernel keeps at most 15 characters
/// of a map name), its layout version and which capacity setting sizes it.
/// `names`, `layout::VERSIONS` and `layout::SIZED_BY` come from here; the
/// key and value types and flags come from the eBPF object itself.
macro_rules! map_set {
    ($($(#[$doc:meta])* $konst:ident = $name:literal, version $version:literal, sized by $size:ident;)*) => {
        /// Names of the maps, which are also their pin names.
        pub mod names {
            $($(#[$doc])* pub const $konst: &str = $name;)*

            /// Every map the agent pins, in a stable order.
            pub const ALL: [&str; [$($name),*].len()] = [$($konst),*];
        }

        /// (name, layout version) of every map, in `names::ALL` order.
        const MAP_VERSIONS: [(&str, u32); [$($name),*].len()] = [$(($name, $version)),*];
        /// (name, capacity setting) of every map, in `names::ALL` order.
        const MAP_SIZED_BY: [(&str, SizedBy); [$($name),*].len()] = [$(($name, SizedBy::$size)),*];
    };
}

/// Which capacity setting sizes a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizedBy {
    /// The frontend count (services, rev-NAT, names, VIPs).
    Services,
    Backends,
    Slots,
    CtTcp,
    CtAny,
    Affinity,
    /// The IPv6 frontend count (IPv6 services and VIPs).
    Services6,
    /// IPv6 backends (their own ID space).
    Backends6,
    /// IPv6 TCP conntrack.
    CtTcp6,
    /// IPv6 conntrack of every other protocol.
    CtAny6,
    /// A size set in the eBPF object, not by the agent.
    Fixed,
}

map_set! {
    SERVICES = "LB4_SERVICES", version 2, sized by Services;
    SLOTS = "LB4_SLOTS", version 2, sized by Slots;
    BACKENDS = "LB4_BACKENDS", version 2, sized by Backends;
    REVNAT = "LB4_REVNAT", version 2, sized by Services;
    /// Conntrack of TCP flows.
    CT_TCP = "LB4_CT_TCP", version 2, sized by CtTcp;
    /// Conntrack of every other flow (UDP), so that DNS churn cannot evict
    /// idle established TCP flows.
    CT_ANY = "LB4_CT_ANY", version 2, sized by CtAny;
    SOCK_REVNAT = "LB4_SOCK_REVNAT", version 2, sized by Fixed;
    CONFIG = "LB_CONFIG", version 2, sized by Fixed;
    SVC_NAMES = "LB_SVC_NAMES", version 2, sized by Services;
    AFFINITY = "LB4_AFFINITY", version 2, sized by Affinity;
    MAGLEV = "LB4_MAGLEV", version 2, sized by Fixed;
    SRC_RANGES = "LB4_SRC_RANGES", version 2, sized by Fixed;
    NODE = "LB_NODE", version 2, sized by Fixed;
    DEVICES = "LB_DEVICES", version 2, sized by Fixed;
    VIPS = "LB4_VIPS", version 2, sized by Services;
    FRAGS = "LB4_FRAGS", version 3, sized by Fixed;
    REJECT_RATE = "LB4_REJECT_RATE", version 2, sized by Fixed;
    STATS = "LB_STATS", version 2, sized by Fixed;
    /// Per-frontend counters (packets, bytes, new flows), by frontend ID.
    FRONTEND_STATS = "LB_FE_STATS", version 1, sized by Services;
    /// IPv6 frontends (see `maps6`): their own keys, the frontend IDs
    /// and everything indexed by them shared with IPv4.
    SERVICES6 = "LB6_SERVICES", version 1, sized by Services6;
    BACKENDS6 = "LB6_BACKENDS", version 1, sized by Backends6;
    /// Indexed by the shared frontend ID, so sized as `LB4_REVNAT`.
    REVNAT6 = "LB6_REVNAT", version 1, sized by Services;
    VIPS6 = "LB6_VIPS", version 1, sized by Services6;
    /// The XDP and tc programs' pre-filter of frontend addresses (see
    /// `vip_filter`), derived from `LB4_VIPS`. Version 2: 65,536 words,
    /// two lanes per address (version 1: 16,384 words, one lane).
    VIP_FILTER = "LB4_VIP_FILTER", version 2, sized by Fixed;
    /// `LB6_VIPS`' pre-filter (see `vip_filter::slot6`), for tc; version 2
    /// as `LB4_VIP_FILTER`'s.
    VIP_FILTER6 = "LB6_VIP_FILTER", version 2, sized by Fixed;
    SOCK_REVNAT6 = "LB6_SOCK_REVNAT", version 1, sized by Fixed;
    /// loadBalancerSourceRanges of IPv6 frontends (`SrcRange6`), as
    /// `LB4_SRC_RANGES`.
    SRC_RANGES6 = "LB6_SRC_RANGES", version 1, sized by Fixed;
    /// IPv6 conntrack (`Ct6Key` -> `Ct6Entry`), TCP and the rest apart
    /// as for IPv4, with sizes of their own.
    CT_TCP6 = "LB6_CT_TCP", version 1, sized by CtTcp6;
    CT_ANY6 = "LB6_CT_ANY", version 1, sized by CtAny6;
    /// The IPv6 tc programs (see [`tc_call`]), tail-called by the tc
    /// programs attached to interfaces. Pinned so that they outlive the
    /// agent: the kernel empties a program array when its last user
    /// reference (a pin, or a process's descriptor) goes.
    /// Version 2: a third slot (`tc_call::INGRESS6_REST`); 3: a fourth
    /// (`tc_call::EGRESS6_ICMP`); 4: the north-south path's
    /// (`tc_call::NS4_REST` to `tc_call::NS_LOCAL_ICMP`).
    TC_CALLS = "LB_TC_CALLS", version 4, sized by Fixed;
    /// The XDP programs (see [`xdp_call`]) `lb_xdp` dispatches to, and
    /// those they tail-call;
    /// pinned for the same reason as `LB_TC_CALLS` (a program array holds
    /// programs of its owner's type only, so XDP has its own).
    /// Version 2: a second slot (`xdp_call::XDP6_NAT`); 3: a third
    /// (`xdp_call::XDP6_REJECT`); 4: a fourth (`xdp_call::XDP6_REST`); 5:
    /// IPv4's (`xdp_call::XDP4`, `xdp_call::XDP4_REST`).
    XDP_CALLS = "LB_XDP_CALLS", version 5, sized by Fixed;
    /// Per-client token buckets for the ICMPv6 errors the datapath sends
    /// (`LB4_REJECT_RATE` for IPv6 clients).
    REJECT_RATE6 = "LB6_REJECT_RATE", version 1, sized by Fixed;
    /// IPv6 datagrams in fragments (`Frag6Key` -> `Frag`), as
    /// `LB4_FRAGS`, the same size.
    FRAGS6 = "LB6_FRAGS", version 2, sized by Fixed;
    /// The FIB's answers for forwarded north-south packets and BPF host
    /// routing (`NextHopKey` -> `NextHop`), both families.
    NEXTHOPS = "LB_NEXTHOPS", version 1, sized by Fixed;
    /// The pod interfaces the tc programs are attached to (ifindex -> 1):
    /// BPF host routing redirects only into these
    /// (`config_flags::HOST_ROUTING_BPF`).
    POD_IFACES = "LB_POD_IFACES", version 1, sized by Fixed;
    /// BPF host routing's per-CPU working memory (a `bpf_fib_lookup`
    /// parameter block and the key of its kept answer), off the tc
    /// programs' stack. Only the datapath reads and writes it. Version 2:
    /// the key.
    HR_SCRATCH = "LB_HR_SCRATCH", version 2, sized by Fixed;
    /// The IPv6 paths' per-CPU working memory (the parsed flow, and what
    /// `lb_xdp6` hands `lb_xdp6_nat`), off their stacks. Only the
    /// datapath reads and writes it.
    SCRATCH6 = "LB6_SCRATCH", version 1, sized by Fixed;
    /// `lb_xdp4`'s per-CPU hand-over to `lb_xdp4_rest` (the parsed flow
    /// and whether conntrack had an entry). Only the datapath reads and
    /// writes it.
    SCRATCH4 = "LB4_SCRATCH", version 1, sized by Fixed;
    /// The datapath's clock, a per-CPU copy kept for the tick it was read
    /// in (jiffies and the coarse clock's ns). Only the datapath reads and
    /// writes it.
    CLOCK = "LB_CLOCK", version 1, sized by Fixed;
    /// This node's IPv6 SNAT address (`Node6Config`), for NAT66, and the
    /// IPv6 session affinity prefix. Version 2: `affinity_host_bits`.
    NODE6 = "LB6_NODE", version 2, sized by Fixed;
    /// One token bucket (`RejectRate`) for all the ICMP errors the
    /// datapath sends, both families: the node-wide cap beside the
    /// per-client ones, as the kernel's `icmp_msgs_per_sec`. Only the
    /// datapath reads and writes it.
    REJECT_NODE = "LB_REJECT_NODE", version 1, sized by Fixed;
    /// The layout version of every other pinned map (see [`layout`]).
    LAYOUT = "LB_LAYOUT", version 1, sized by Fixed;
}

/// Layout versions of the pinned maps. A map's version goes up whenever
/// the meaning of its keys or values changes, even where their sizes do
/// not; the agent records the versions in `LB_LAYOUT` and rebuilds a map
/// it finds pinned with another version (or another type, key or value
/// size, or flags) instead of reusing it.
pub mod layout {
    use super::names::{self, *};

    /// `LB_LAYOUT` keys: the map name, NUL-padded.
    pub const KEY_LEN: usize = 16;
    /// `LB_LAYOUT`'s capacity: one entry per pinned map, with room to
    /// grow (34 maps filled the 32 it had: the agent failed at start).
    pub const ENTRIES: u32 = 64;
    const _: () = assert!(names::ALL.len() <= ENTRIES as usize, "LB_LAYOUT holds an entry for every map");

    /// Layout versions, per map (declared in `map_set!`). 1: the first
    /// layout (key and value sizes checked, no `LB_LAYOUT`); 2: array
    /// slots with versions, conntrack entries holding the whole NAT (the
    /// real-node datapath).
    pub const VERSIONS: [(&str, u32); names::ALL.len()] = super::MAP_VERSIONS;

    /// Which capacity setting sizes each map (declared in `map_set!`).
    pub const SIZED_BY: [(&str, super::SizedBy); names::ALL.len()] = super::MAP_SIZED_BY;

    /// The version this build writes for `name` (0: not a map of ours).
    pub fn version(name: &str) -> u32 {
        let mut i = 0;
        while i < VERSIONS.len() {
            if eq(VERSIONS[i].0, name) {
                return VERSIONS[i].1;
            }
            i += 1;
        }
        0
    }

    /// Which capacity setting sizes `name` (`Fixed` for a map not ours).
    pub fn sized_by(name: &str) -> super::SizedBy {
        let mut i = 0;
        while i < SIZED_BY.len() {
            if eq(SIZED_BY[i].0, name) {
                return SIZED_BY[i].1;
            }
            i += 1;
        }
        super::SizedBy::Fixed
    }

    fn eq(a: &str, b: &str) -> bool {
        a.len() == b.len() && a.as_bytes().iter().zip(b.as_bytes()).all(|(x, y)| x == y)
    }

    /// The `LB_LAYOUT` key of a map name.
    pub fn key(name: &str) -> [u8; KEY_LEN] {
        let mut k = [0u8; KEY_LEN];
        let n = name.len().min(KEY_LEN - 1);
        k[..n].copy_from_slice(&name.as_bytes()[..n]);
        k
    }

    /// Maps written by the agent's reconciler from the Services: they
    /// hold IDs that the others refer to, so they are rebuilt together.
    /// (`LB4_VIP_FILTER` and `LB6_VIP_FILTER` are derived from `LB4_VIPS`
    /// and `LB6_VIPS` and rebuilt with them: programs still attached to
    /// the old maps keep the old filters. Rebuilt alone, they take nothing
    /// with them: [`DERIVED`].)
    pub const RECONCILED: [&str; 15] = [
        SERVICES,
        SLOTS,
        BACKENDS,
        REVNAT,
        SVC_NAMES,
        MAGLEV,
        SRC_RANGES,
        SRC_RANGES6,
        VIPS,
        SERVICES6,
        BACKENDS6,
        REVNAT6,
        VIPS6,
        VIP_FILTER,
        VIP_FILTER6,
    ];
    /// Reconciled maps derived from others, holding no IDs: the
    /// pre-filters, words computed from `LB4_VIPS` and `LB6_VIPS`. One
    /// rebuilt alone (a new filter layout) renumbers nothing, so it takes
    /// no other map with it: the starting agent fills it from the
    /// addresses before its programs go live (`Maps::sync_vip_filter`),
    /// and the flows carry on.
    pub const DERIVED: [&str; 2] = [VIP_FILTER, VIP_FILTER6];

    /// Whether rebuilding `name` gives frontends and backends new IDs
    /// (a reconciled map that is not [`DERIVED`]).
    pub fn renumbers(name: &str) -> bool {
        let mut i = 0;
        while i < RECONCILED.len() {
            if eq(RECONCILED[i], name) {
                let mut j = 0;
                while j < DERIVED.len() {
                    if eq(DERIVED[j], name) {
                        return false;
                    }
                    j += 1;
                }
                return true;
            }
            i += 1;
        }
        false
    }

    /// Maps whose entries name frontend or backend IDs: rebuilt along with
    /// [`RECONCILED`], since fresh IDs would give them other meanings.
    pub const REFER_TO_IDS: [&str; 8] = [CT_TCP, CT_ANY, AFFINITY, SOCK_REVNAT, FRONTEND_STATS, SOCK_REVNAT6, CT_TCP6, CT_ANY6];
}

/// Default capacities. The agent can override each at load time.
pub mod sizes {
    pub const SERVICES: u32 = 65_536;
    pub const SLOTS: u32 = 262_144;
    pub const BACKENDS: u32 = 65_536;
    pub const REVNAT: u32 = 65_536;
    /// TCP conntrack entries (two per flow).
    pub const CT_TCP: u32 = 262_144;
    /// Non-TCP conntrack entries (two per flow).
    pub const CT_ANY: u32 = 131_072;
    pub const SOCK_REVNAT: u32 = 65_536;
    pub const SVC_NAMES: u32 = 65_536;
    pub const AFFINITY: u32 = 65_536;
    /// Frontends that can have a Maglev table at once.
    pub const MAGLEV: u32 = 4_096;
    /// Default Maglev table size M (prime), as Cilium's.
    pub const MAGLEV_M: u32 = 16_381;
    /// loadBalancerSourceRanges CIDRs, all frontends together (as Cilium).
    pub const SRC_RANGES: u32 = 65_536;
    /// IPv6 loadBalancerSourceRanges CIDRs (`LB6_SRC_RANGES`), a quarter of
    /// IPv4's as the other IPv6 maps.
    pub const SRC_RANGES6: u32 = 16_384;
    /// External interfaces with the XDP program.
    pub const DEVICES: u32 = 64;
    /// Service addresses (ClusterIPs, LoadBalancer IPs).
    pub const VIPS: u32 = 65_536;
    /// IPv4 datagrams in flight as fragments; IPv6's too (`LB6_FRAGS`).
    pub const FRAGS: u32 = 8_192;
    /// FIB answers kept (`LB_NEXTHOPS`): destinations of forwarded
    /// north-south packets (backends on other nodes, and clients).
    pub const NEXTHOPS: u32 = 16_384;
    /// Clients tracked by the ICMP reject rate limit.
    pub const REJECT_RATE: u32 = 16_384;
    /// IPv6 frontends (`LB6_SERVICES`) and addresses (`LB6_VIPS`).
    pub const SERVICES6: u32 = 16_384;
    /// IPv6 backends (`LB6_BACKENDS`).
    pub const BACKENDS6: u32 = 16_384;
    /// IPv6 TCP conntrack entries (two per flow; 104 bytes each against
    /// IPv4's 56, so a quarter of IPv4's count by default, as the other
    /// IPv6 maps).
    pub const CT_TCP6: u32 = 65_536;
    /// IPv6 non-TCP conntrack entries (two per flow).
    pub const CT_ANY6: u32 = 32_768;
    /// Pod interfaces (`LB_POD_IFACES`).
    pub const POD_IFACES: u32 = 4_096;
}

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// `Service4Key::scope`: which clients a frontend entry serves.
/// `SCOPE_EXTERNAL` is the only entry for most services; a second
/// `SCOPE_INTERNAL` entry exists when internal and external traffic policies
/// select different backends (as in Cilium): the NodePort, external and
/// LoadBalancer IPs of an `externalTrafficPolicy: Local` Service, whose
/// clients inside the cluster (pods through tc, the host through the socket
/// hooks) get every endpoint, as kube-proxy's short-circuit to the cluster
/// chain does. The `SCOPE_EXTERNAL` entry then carries
/// `svc_flags::HAS_INTERNAL`, so the in-cluster hooks look the second
/// entry up only where one exists.
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
    /// A `SCOPE_INTERNAL` entry at the same address serves clients inside
    /// the cluster (see `SCOPE_INTERNAL`); this entry serves only traffic
    /// from outside (XDP).
    pub const HAS_INTERNAL: u32 = 1 << 8;
}

/// What a frontend resolves to. Replaced as a whole by one map update, so a
/// packet sees either the old or the new service, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service4Value {
    /// Frontend ID. It is also the rev-NAT index and the key of the
    /// backend slots.
    pub frontend_id: u32,
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
    pub frontend_id: u32,
    pub slot: u16,
    pub generation: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub backend_id: u32,
}

/// `Backend4::flags`.
pub mod backend_flags {
    /// The endpoint is terminating (serving, not ready). Existing flows keep
    /// it; it only takes new flows when no ready endpoint exists.
    pub const TERMINATING: u8 = 1 << 0;
    /// The endpoint runs on this node.
    pub const LOCAL: u8 = 1 << 1;
}

/// `LB4_BACKENDS[id]` (an array indexed by backend ID). An unused slot has
/// `addr` 0. `version` moves on every time the agent gives the slot to a
/// new backend, so a conntrack or affinity entry that names the slot (with
/// the version it saw) knows whether its backend still exists: flows of a
/// removed backend are invalid from the moment it is removed, without
/// walking conntrack.
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
    pub version: u16,
    pub _pad: u16,
}

impl Backend4 {
    /// Whether the slot holds the backend of `version`.
    #[inline(always)]
    pub fn is(&self, version: u16) -> bool {
        self.addr != 0 && self.version == version
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevNatKey {
    pub frontend_id: u32,
}

/// `LB4_REVNAT[id]` (an array indexed by frontend ID): the frontend's
/// address, for the socket hooks' reverse translation, and its version,
/// which a conntrack entry checks the way it checks its backend's (see
/// [`Backend4`]). An unused slot has `addr` 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevNat4 {
    pub addr: u32,
    pub port: u16,
    pub version: u16,
}

impl RevNat4 {
    /// Whether the slot holds the frontend of `version`.
    #[inline(always)]
    pub fn is(&self, version: u16) -> bool {
        self.addr != 0 && self.version == version
    }
}

/// `Ct4Key::dir`.
pub const CT_SERVICE: u8 = 1;
/// `Ct4Key::dir`: reply direction, keyed by the backend's tuple.
pub const CT_REPLY: u8 = 2;

/// A connection tracking key, over an address type `A` (`u32` for IPv4,
/// `Addr6` for IPv6: [`Ct4Key`], `Ct6Key`). Service entries are keyed by
/// the client's original tuple (client -> frontend); reply entries by the
/// reply's tuple (backend -> client).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKeyOf<A> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: u16,
}

/// `LB4_CT_TCP` / `LB4_CT_ANY` key.
pub type Ct4Key = CtKeyOf<u32>;

impl<A: Copy> CtKeyOf<A> {
    #[inline(always)]
    pub const fn new(saddr: A, daddr: A, sport: u16, dport: u16, proto: u8, dir: u8) -> CtKeyOf<A> {
        CtKeyOf { saddr, daddr, sport, dport, proto, dir, _pad: 0 }
    }
}

/// TCP flags as they appear in the header, and as `CtEntry::tcp_flags`
/// collects them.
pub mod ct_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
    /// The flags conntrack keeps; the others are ignored.
    pub const TRACKED: u8 = FIN | SYN | RST | ACK;
}

/// `CtEntry::flags`.
pub mod ct_entry_flags {
    /// `CtEntry::seq` holds a sequence number seen in this direction.
    pub const SEQ_SEEN: u8 = 1 << 0;
    /// A forward entry the XDP program made for a north-south frontend
    /// (`svc_flags::NODE_PORT`, `EXTERNAL_IP`, `LOAD_BALANCER`, external
    /// scope): its packets need no `LB4_VIPS` lookup while the entry's
    /// frontend is installed (the entry's version check).
    pub const NORTH_SOUTH: u8 = 1 << 1;
    /// A forward entry the tc program made for a packet leaving a pod:
    /// its packets need no `LB4_VIPS` lookup while the entry's frontend
    /// and backend are installed (the entry's version check).
    pub const FROM_POD: u8 = 1 << 2;
    /// Both entries of a north-south flow whose packets from the client
    /// went straight into the backend's pod (BPF host routing, by
    /// `lb_tc_ext_ingress`): its replies may leave past the host stack
    /// too (the reply entry's mark), and so may ICMP errors about them
    /// come in (the forward entry's). Sent through the stack, one
    /// direction alone, the host's conntrack would see a SYN-ACK without
    /// its SYN, or an error related to no flow it knows (INVALID).
    pub const HOST_ROUTED: u8 = 1 << 3;
}

/// The 4 bytes `lb_xdp` puts in an XDP frame's metadata (in front of the
/// packet) when, with BPF host routing, it DNATed the packet to a backend
/// on this node: `lb_tc_ext_ingress` on the same interface then redirects
/// it into the backend's pod. Native byte order.
pub const XDP_META_LOCAL_DNAT: u32 = 0x6c62_646e;
/// The same for an ICMP error `lb_xdp` translated towards a backend on
/// this node, about a flow whose forward entry is `HOST_ROUTED`.
pub const XDP_META_LOCAL_ICMP: u32 = 0x6c62_6963;
/// The XDP programs' load-time switch (a global in `.rodata`, `u8`): 1
/// (the default) lets them mark frames in their metadata; the agent writes
/// 0 where the kernel refuses `bpf_xdp_adjust_meta` to XDP programs, and
/// the verifier then removes the call. Without the marks,
/// `lb_tc_ext_ingress` (which reads the same global) looks every packet
/// from outside up in conntrack instead.
pub const XDP_META_GLOBAL: &str = "LB_XDP_META";

/// One direction of a translated flow, in `LB4_CT_TCP` (TCP) or
/// `LB4_CT_ANY` (everything else); over an address type `A` like
/// [`CtKeyOf`] (the IPv6 entries, `Ct6Entry`, are in `LB6_CT_TCP` and
/// `LB6_CT_ANY`). A packet whose tuple is the key leaves
/// with source `nat_saddr:nat_sport` and destination `nat_daddr:nat_dport`.
///
/// - A forward entry ([`CT_SERVICE`]) is keyed by the client's tuple
///   towards the frontend; it rewrites the destination to the backend and
///   the source to the client itself, or to what the client was translated
///   to: a SNAT address and port (north-south to another node), the
///   hairpin address (a pod reaching itself), or another source port (the
///   reply tuple was taken by another flow).
/// - A reply entry ([`CT_REPLY`]) is keyed by the backend's reply tuple; it
///   rewrites the source back to the frontend and the destination back to
///   the original client.
///
/// Either entry names its twin: [`CtEntry::twin_key`]. Together they hold
/// everything a packet of the flow needs, so one lookup per packet does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntryOf<A> {
    /// The datapath's clock (CLOCK_MONOTONIC_COARSE through its per-CPU
    /// copy, `LB_CLOCK`: at most two ticks behind CLOCK_MONOTONIC) at the
    /// last packet in this entry's direction, for timeouts and GC.
    pub last_seen: u64,
    pub nat_saddr: A,
    pub nat_daddr: A,
    pub nat_sport: u16,
    pub nat_dport: u16,
    pub backend_id: u32,
    pub frontend_id: u32,
    /// TCP: the highest sequence number seen in this direction (host
    /// order), to tell whether a RST belongs to the flow.
    pub seq: u32,
    /// TCP flags seen in this entry's direction (`ct_flags::TRACKED`).
    pub tcp_flags: u8,
    /// TCP flags the other direction saw that decide the flow's state: the
    /// client's ACK (in a reply entry), FIN and RST (in both).
    pub peer_flags: u8,
    /// `ct_entry_flags::*`.
    pub flags: u8,
    pub _pad: u8,
    /// Versions of the frontend and backend slots when the flow was made:
    /// the flow is valid only while both slots still hold them.
    pub frontend_version: u16,
    pub backend_version: u16,
}

/// An IPv4 conntrack entry.
pub type CtEntry = CtEntryOf<u32>;

impl<A: Copy> CtEntryOf<A> {
    /// The key of the other direction's entry.
    #[inline(always)]
    pub fn twin_key(&self, key: &CtKeyOf<A>) -> CtKeyOf<A> {
        let dir = if key.dir == CT_SERVICE { CT_REPLY } else { CT_SERVICE };
        CtKeyOf::new(self.nat_daddr, self.nat_saddr, self.nat_dport, self.nat_sport, key.proto, dir)
    }

    /// The flags of the flow's originator (client) and responder
    /// (backend) as this entry knows them.
    #[inline(always)]
    pub fn orig_resp_flags(&self, dir: u8) -> (u8, u8) {
        if dir == CT_SERVICE { (self.tcp_flags, self.peer_flags) } else { (self.peer_flags, self.tcp_flags) }
    }
}

/// The address a pod's connection to its own Service comes from, as seen
/// by the pod (Cilium uses the same link-local address): the pod cannot
/// talk to itself with its own address as the source.
pub const HAIRPIN_ADDR: [u8; 4] = [169, 254, 42, 1];

/// [`HAIRPIN_ADDR`] as stored in keys and values (network order).
pub const fn hairpin_addr() -> u32 {
    u32::from_ne_bytes(HAIRPIN_ADDR)
}

/// The IPv6 address a pod's connection to its own Service comes from:
/// `100::a9fe:2a01`, in the discard-only prefix `100::/64` (RFC 6666), so
/// that it is never a real peer and a pod routes it through its default
/// gateway (its interface), where lb bounces the answer back. A link-local
/// address, as IPv4's, would be on-link in the pod: it would ask for its
/// neighbour instead of sending.
pub const HAIRPIN_ADDR6: core::net::Ipv6Addr = core::net::Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0xa9fe, 0x2a01);

/// [`HAIRPIN_ADDR6`] as stored in keys and values.
pub const fn hairpin_addr6() -> crate::Addr6 {
    crate::addr6(HAIRPIN_ADDR6)
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
    pub frontend_id: u32,
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
        Config { host_netns_cookie, flags: config_flags::READY, maglev_m: sizes::MAGLEV_M, timeouts: CtTimeouts::DEFAULT }
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
    pub const DEFAULT: CtTimeouts = CtTimeouts { tcp_syn: 60, tcp_established: 21_600, tcp_closing: 10, udp: 60 };
}

pub mod config_flags {
    /// The agent has written the configuration; until then the datapath
    /// passes everything untouched.
    pub const READY: u32 = 1 << 0;
    /// BPF host routing (`lb-agent run --host-routing bpf`): a translated
    /// IPv4 packet between two pods of this node goes straight into the
    /// destination pod (`bpf_redirect_peer`) instead of through the host
    /// stack (and its netfilter: NetworkPolicy of an iptables-based CNI is
    /// skipped). Off: the host stack routes it (legacy, the default).
    pub const HOST_ROUTING_BPF: u32 = 1 << 1;
}

/// Session affinity: which backend a client was last sent to, per frontend.
/// `client` is the client's IPv4 address (network order) for packets, or
/// the socket's network namespace cookie with `AFFINITY_NETNS` set for the
/// socket hooks (a host client has no source address at connect time).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Affinity4Key {
    pub client: u64,
    pub frontend_id: u32,
    /// The frontend slot's version (see [`RevNat4`]): a frontend that
    /// takes over a freed ID does not inherit its affinities.
    pub frontend_version: u16,
    pub _pad: u16,
}

pub const AFFINITY_NETNS: u64 = 1 << 63;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Affinity4 {
    /// CLOCK_MONOTONIC ns of the last new connection that used it.
    pub last_used: u64,
    pub backend_id: u32,
    /// The backend slot's version (see [`Backend4`]).
    pub backend_version: u16,
    pub _pad: u16,
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

/// `LB4_SRC_RANGES` / `LB6_SRC_RANGES` (LPM tries): loadBalancerSourceRanges
/// of frontends, over an address type `A` ([`SrcRange4`], `SrcRange6`).
/// The trie key is a prefix length followed by this data; the prefix length
/// counts the 32 bits of `frontend_id` plus the CIDR's prefix, so a lookup
/// with the full length (32 + the address's bits) and the client's address
/// finds whether any range of that frontend contains it. The value is
/// unused (1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SrcRangeOf<A> {
    /// Frontend ID, big-endian (the trie matches bytes in order).
    pub frontend_id: u32,
    /// CIDR address, network order (host bits zero).
    pub addr: A,
}

/// `LB4_SRC_RANGES` data.
pub type SrcRange4 = SrcRangeOf<u32>;

/// An address a source range is made of: its bits and its prefix.
/// Implemented for the two address types only (both 4-byte aligned words:
/// [`SrcRangeOf`] has no padding).
pub trait RangeAddr: Copy + 'static {
    /// Address bits (32, 128).
    const BITS: u8;
    /// The first `len` bits on the wire (`len` <= `BITS`), the rest zero.
    fn prefix(self, len: u8) -> Self;
}

/// A network-order IPv4 word's first `len` (<= 32) bits.
#[inline(always)]
const fn word_prefix(w: u32, len: u32) -> u32 {
    let mask_host: u32 = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    w & mask_host.to_be()
}

impl RangeAddr for u32 {
    const BITS: u8 = 32;
    #[inline(always)]
    fn prefix(self, len: u8) -> u32 {
        word_prefix(self, len as u32)
    }
}

impl RangeAddr for [u32; 4] {
    const BITS: u8 = 128;
    #[inline(always)]
    fn prefix(self, len: u8) -> [u32; 4] {
        let mut out = self;
        let mut i = 0;
        while i < 4 {
            let bits = (len as u32).saturating_sub(32 * i as u32).min(32);
            out[i] = word_prefix(self[i], bits);
            i += 1;
        }
        out
    }
}

impl<A: RangeAddr> SrcRangeOf<A> {
    /// The trie entry (prefix length, data) of `addr/len` (network-order
    /// address) for frontend `id`.
    pub fn range(id: u32, addr: A, len: u8) -> (u32, SrcRangeOf<A>) {
        let len = if len > A::BITS { A::BITS } else { len };
        (32 + len as u32, SrcRangeOf { frontend_id: id.to_be(), addr: addr.prefix(len) })
    }

    /// The lookup entry for a client address.
    #[inline(always)]
    pub fn client(id: u32, addr: A) -> (u32, SrcRangeOf<A>) {
        (32 + A::BITS as u32, SrcRangeOf { frontend_id: id.to_be(), addr })
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
    /// The NodePort range, inclusive, host order: XDP leaves other
    /// traffic to node addresses alone at once.
    pub nodeport_min: u16,
    pub nodeport_max: u16,
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
    /// No XDP: the north-south path runs in tc on the interface's ingress
    /// (`lb_tc_ns`, `--xdp-mode tc`).
    pub const TC: u32 = 4;
}

/// Why an external interface has the XDP mode it has (`Device::why`).
pub mod xdp_why {
    /// The mode was asked for (`--xdp-mode native|generic|tc`).
    pub const REQUESTED: u32 = 0;
    /// `auto`: the driver runs XDP natively.
    pub const AUTO_NATIVE: u32 = 1;
    /// `auto`: a veth (kind, containerlab): native XDP there passes the
    /// sender's partial checksums on as they are, and the frames it
    /// transmits arrive only where the peer runs XDP too.
    pub const AUTO_VETH: u32 = 2;
    /// `auto`: the driver cannot run the program natively (it has no
    /// native XDP, or not at the interface's MTU): the north-south path in
    /// tc, since generic XDP turns the interface's hardware GRO and LRO
    /// off and copies every GRO packet. (Agents before 2026-12-06 took
    /// generic XDP here.)
    pub const AUTO_UNSUPPORTED: u32 = 3;
    /// `auto`: where it would take generic XDP (a veth), a pod overlay
    /// device (VXLAN, Geneve) with a
    /// smaller MTU: the north-south path in tc, which sees the size of a
    /// GRO'd packet's segments. Generic XDP does not, so it could not
    /// answer "fragmentation needed" for a flow forwarded into the tunnel
    /// with segments too big for it, and the kernel's answer would go to
    /// the SNAT address.
    pub const AUTO_OVERLAY: u32 = 4;
}

pub const IFNAME_LEN: usize = 16;

/// `LB_DEVICES`: ifindex -> how the XDP program is attached there. Written
/// by the agent; read by `lb-agent list`, and by the XDP program to tell
/// whether a frame can be a GSO super-packet (generic mode) and which
/// interfaces it may redirect a frame to (only these).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    /// `xdp_mode::*`.
    pub mode: u32,
    pub name: [u8; IFNAME_LEN],
    /// `xdp_why::*`.
    pub why: u32,
}

/// `LB4_VIPS`: every frontend address -> what kinds of frontend it has.
/// The datapath's first lookup: a packet to any other address is not
/// ours. Traffic to a ClusterIP on a port no Service defines is rejected,
/// and a fragment to a virtual address whose first fragment was not seen
/// is dropped, never routed on untranslated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vip4 {
    /// `vip_flags::*`.
    pub flags: u32,
}

/// What kinds of frontend an address has: the union over its frontends.
pub mod vip_flags {
    /// A ClusterIP: a port no Service defines is rejected.
    pub const CLUSTER_IP: u32 = 1 << 0;
    /// A LoadBalancer ingress IP.
    pub const LOAD_BALANCER: u32 = 1 << 1;
    /// An external IP.
    pub const EXTERNAL_IP: u32 = 1 << 2;
    /// A node address with NodePorts.
    pub const NODE_PORT: u32 = 1 << 3;
    /// Addresses that exist only as Service frontends: a fragment there
    /// with no known first fragment cannot be for anything else.
    pub const VIRTUAL: u32 = CLUSTER_IP | LOAD_BALANCER;
}

/// `LB4_FRAGS` (LRU): an IPv4 datagram being fragmented, as its packets
/// arrive at a hook (before translation): its first fragment's ports, so
/// the later fragments, which carry no L4 header, get the same
/// translation (as Cilium's `IPV4_FRAG_DATAGRAMS_MAP`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frag4Key {
    pub saddr: u32,
    pub daddr: u32,
    /// The IPv4 identification field, network order.
    pub id: u16,
    /// The IPv4 protocol.
    pub proto: u8,
    pub _pad: u8,
}

/// The value of `LB4_FRAGS` and `LB6_FRAGS`: what a datagram's first
/// fragment had and its later fragments lack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frag {
    pub sport: u16,
    pub dport: u16,
    /// The L4 protocol (TCP or UDP): an IPv6 fragment header may name a
    /// destination options header before it, and IPv6's key has no
    /// protocol (see `Frag6Key`).
    pub proto: u8,
    pub _pad: u8,
}

/// `LB_NEXTHOPS` (LRU): what the FIB last answered for a destination of
/// forwarded north-south packets (a backend on another node, or a client
/// getting its reply), or of packets BPF host routing redirects into a
/// pod of this node, by the interface they came in on. A packet of an
/// established flow then skips `bpf_fib_lookup`, which costs more than the
/// rest of its path (docs/per-packet-profile.md). An answer is used for
/// [`NEXTHOP_TTL_NS`] after the lookup, and only for packets no longer
/// than one the FIB passed (its MTU check; a longer one asks the FIB
/// again), so a changed route or neighbour is followed within that time.
/// Only successful answers are kept (no neighbour: the kernel forwards, and
/// resolves it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NextHopKey {
    /// The destination, network order: IPv4 in the first word, the rest 0.
    pub daddr: [u32; 4],
    /// The interface the packet came in on (the FIB's input).
    pub ifindex: u32,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 3],
}

impl NextHopKey {
    pub const fn v4(daddr: u32, ifindex: u32) -> NextHopKey {
        NextHopKey { daddr: [daddr, 0, 0, 0], ifindex, family: 4, _pad: [0; 3] }
    }
    pub const fn v6(daddr: [u32; 4], ifindex: u32) -> NextHopKey {
        NextHopKey { daddr, ifindex, family: 6, _pad: [0; 3] }
    }
}

/// How long a FIB answer in `LB_NEXTHOPS` is used: a route or neighbour
/// change is followed within this time.
pub const NEXTHOP_TTL_NS: u64 = 1_000_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// When the FIB was asked (the datapath's clock, `LB_CLOCK`).
    pub looked_up_ns: u64,
    /// Where the FIB sends the packet.
    pub ifindex: u32,
    /// The longest packet (IPv4 total length, IPv6 payload plus header)
    /// the FIB passed since `looked_up_ns`: within the path's MTU.
    pub max_len: u16,
    pub _pad: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad2: [u8; 4],
}

impl NextHop {
    /// Whether this answer serves a packet of `len` bytes at `now`.
    #[inline(always)]
    pub fn serves(&self, len: u16, now: u64) -> bool {
        now.wrapping_sub(self.looked_up_ns) < NEXTHOP_TTL_NS && len <= self.max_len
    }

    /// A successful lookup's answer at `now` for a packet of `len` bytes.
    #[inline(always)]
    pub fn fresh(now: u64, len: u16, ifindex: u32, smac: [u8; 6], dmac: [u8; 6]) -> NextHop {
        NextHop { looked_up_ns: now, ifindex, max_len: len, _pad: 0, smac, dmac, _pad2: [0; 4] }
    }

    /// This fresh answer, keeping the longest length the FIB passed when
    /// the answer it replaces (`old`) was still fresh and the same.
    #[inline(always)]
    pub fn after(mut self, old: &NextHop) -> NextHop {
        let same = old.ifindex == self.ifindex && old.smac == self.smac && old.dmac == self.dmac;
        if same && self.looked_up_ns.wrapping_sub(old.looked_up_ns) < NEXTHOP_TTL_NS && old.max_len > self.max_len {
            self.max_len = old.max_len;
        }
        self
    }
}

/// `LB4_REJECT_RATE` (LRU): a token bucket per client address for the ICMP
/// errors the datapath sends (rejects), so it cannot be used as a
/// reflector: [`REJECT_BURST`] at once, then [`REJECT_PER_SEC`] a second.
/// Also the node-wide bucket of `LB_REJECT_NODE` ([`REJECT_NODE_BURST`],
/// [`REJECT_NODE_PER_SEC`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RejectRate {
    /// CLOCK_MONOTONIC ns of the last refill.
    pub last_ns: u64,
    pub tokens: u32,
    pub _pad: u32,
}

/// Slots of `LB_XDP_CALLS`: the XDP programs `lb_xdp` (which only
/// dispatches by family) and they tail-call.
pub mod xdp_call {
    /// `lb_xdp6`, from `lb_xdp`.
    pub const XDP6: u32 = 0;
    /// `lb_xdp6_nat`, from `lb_xdp6`: the packets of IPv6 flows SNATed to
    /// a backend on another node (NAT66), both ways.
    pub const XDP6_NAT: u32 = 1;
    /// `lb_xdp6_reject`, from `lb_xdp6`: a new flow to a north-south
    /// frontend with no endpoint anywhere, answered with ICMPv6 port
    /// unreachable.
    pub const XDP6_REJECT: u32 = 2;
    /// `lb_xdp6_rest`, from `lb_xdp6` when its first look (pre-filter,
    /// established flow) did not settle the packet.
    pub const XDP6_REST: u32 = 3;
    /// `lb_xdp4`, from `lb_xdp`: IPv4 (every frame that is not IPv6).
    pub const XDP4: u32 = 4;
    /// `lb_xdp4_rest`, from `lb_xdp4` when its first look (pre-filter,
    /// established flow) did not settle the packet.
    pub const XDP4_REST: u32 = 5;
    /// Slots in the map.
    pub const SLOTS: u32 = 6;
    /// The program of each slot, by index.
    pub const PROGRAMS: [&str; SLOTS as usize] = ["lb_xdp6", "lb_xdp6_nat", "lb_xdp6_reject", "lb_xdp6_rest", "lb_xdp4", "lb_xdp4_rest"];
}

/// Slots of `LB_TC_CALLS`: the tc programs each family's packets are
/// tail-called into (IPv4 runs in the attached programs themselves).
pub mod tc_call {
    /// `lb_tc_ingress6`, from `lb_tc_ingress`.
    pub const INGRESS6: u32 = 0;
    /// `lb_tc_egress6`, from `lb_tc_egress`.
    pub const EGRESS6: u32 = 1;
    /// `lb_tc_ingress6_rest`, from `lb_tc_ingress6` when its first look
    /// (pre-filter, established flow) did not settle the packet.
    pub const INGRESS6_REST: u32 = 2;
    /// `lb_tc_egress6_icmp`, from `lb_tc_egress6`: an ICMPv6 error on its
    /// way to a client.
    pub const EGRESS6_ICMP: u32 = 3;
    /// The north-south path in tc (`--xdp-mode tc`), as XDP's programs
    /// (`xdp_call`): `lb_tc_ns4_rest`, from `lb_tc_ns` when its IPv4 first
    /// look did not settle the packet.
    pub const NS4_REST: u32 = 4;
    /// `lb_tc_ns6`, from `lb_tc_ns`: IPv6.
    pub const NS6: u32 = 5;
    /// `lb_tc_ns6_rest`, from `lb_tc_ns6` (as `xdp_call::XDP6_REST`).
    pub const NS6_REST: u32 = 6;
    /// `lb_tc_ns6_nat`, from `lb_tc_ns6` (as `xdp_call::XDP6_NAT`).
    pub const NS6_NAT: u32 = 7;
    /// `lb_tc_ns6_reject`, from `lb_tc_ns6` (as `xdp_call::XDP6_REJECT`).
    pub const NS6_REJECT: u32 = 8;
    /// `lb_tc_ns_local`, from the tc north-south programs with BPF host
    /// routing: a packet DNATed to a backend on this node, into its pod.
    pub const NS_LOCAL: u32 = 9;
    /// `lb_tc_ns_local_icmp`: the same for an ICMP error about such a flow.
    pub const NS_LOCAL_ICMP: u32 = 10;
    /// Slots in the map.
    pub const SLOTS: u32 = 11;
    /// The program of each slot, by index.
    pub const PROGRAMS: [&str; SLOTS as usize] = [
        "lb_tc_ingress6",
        "lb_tc_egress6",
        "lb_tc_ingress6_rest",
        "lb_tc_egress6_icmp",
        "lb_tc_ns4_rest",
        "lb_tc_ns6",
        "lb_tc_ns6_rest",
        "lb_tc_ns6_nat",
        "lb_tc_ns6_reject",
        "lb_tc_ns_local",
        "lb_tc_ns_local_icmp",
    ];
}

/// Per client (`LB4_REJECT_RATE`, `LB6_REJECT_RATE`).
pub const REJECT_BURST: u32 = 20;
pub const REJECT_PER_SEC: u32 = 10;
/// For the whole node (`LB_REJECT_NODE`): the kernel's defaults for its
/// own ICMP errors (`net.ipv4.icmp_msgs_burst`, `icmp_msgs_per_sec`), so
/// that a flood from ever-changing (spoofed) sources, each within its own
/// bucket, is not reflected one for one.
pub const REJECT_NODE_BURST: u32 = 50;
pub const REJECT_NODE_PER_SEC: u32 = 1000;

/// `LB_STATS` (per-CPU array of u64): what the datapath did with packets
/// it did not simply translate, by index.
pub mod stat {
    /// Rejected (ICMP port unreachable / ECONNREFUSED): the frontend has
    /// no endpoint.
    pub const REJECT_NO_BACKEND: u32 = 0;
    /// Dropped: a Local traffic policy and no endpoint on this node.
    pub const DROP_NO_LOCAL_BACKEND: u32 = 1;
    /// Dropped: the client is outside loadBalancerSourceRanges.
    pub const DROP_SOURCE_RANGE: u32 = 2;
    /// Dropped: no free SNAT or clash port for a new flow.
    pub const DROP_NO_NAT_PORT: u32 = 3;
    /// Dropped: a conntrack entry could not be written.
    pub const DROP_CT_WRITE: u32 = 4;
    /// Dropped: a packet write failed half-way.
    pub const DROP_REWRITE: u32 = 5;
    /// Dropped: a later fragment to a Service address whose first
    /// fragment was not seen.
    pub const DROP_ORPHAN_FRAGMENT: u32 = 6;
    /// Rejected: a ClusterIP on a port no Service defines.
    pub const REJECT_UNSERVED_PORT: u32 = 7;
    /// Dropped: a reject that the per-client rate limit held back.
    pub const DROP_REJECT_RATE: u32 = 8;
    /// Dropped: a backend slot vanished under a concurrent update.
    pub const DROP_NO_SLOT: u32 = 9;
    /// A RST whose sequence number is outside the flow's window: passed
    /// on, but it does not end the flow.
    pub const RST_IGNORED: u32 = 10;
    /// A new flow whose reply tuple was taken got another source port.
    pub const PORT_REMAPPED: u32 = 11;
    /// An ICMP error about a translated flow, translated.
    pub const ICMP_TRANSLATED: u32 = 12;
    /// A later fragment given its datagram's translation.
    pub const FRAGMENT_TRANSLATED: u32 = 13;
    /// A pod's connection to its own Service (hairpin), source-NATed.
    pub const HAIRPIN: u32 = 14;
    /// Dropped: TTL expired on a north-south packet forwarded by XDP.
    pub const DROP_TTL: u32 = 15;
    /// Answered with "fragmentation needed": a north-south packet too big
    /// for the path to its backend.
    pub const FRAG_NEEDED_SENT: u32 = 16;

    /// A malformed packet (too short, a bad header length): passed
    /// untouched, for the kernel's own stack to judge.
    pub const MALFORMED: u32 = 17;
    /// Passed untranslated: an IPv6 packet whose program was missing from
    /// `LB_TC_CALLS` or `LB_XDP_CALLS` (the tail call failed).
    pub const TAIL_CALL_FAILED: u32 = 18;
    /// BPF host routing: a translated packet (to a backend, or a reply to
    /// its client) redirected straight into a pod of this node
    /// (`bpf_redirect_peer`), past the host stack.
    pub const REDIRECTED_PEER: u32 = 19;
    /// Passed untranslated: a new IPv6 north-south flow whose backend is
    /// on another node while this node has no IPv6 SNAT address
    /// (`LB6_NODE`) to NAT66 it to (DNAT alone would send the backend's
    /// replies straight to the client, from the wrong address).
    pub const PASS_NO_NAT66: u32 = 20;
    /// BPF host routing: a backend's reply of a north-south flow whose
    /// client packets went straight into the pod, translated back and sent
    /// out of the interface towards its client (`bpf_redirect`), past the
    /// host stack.
    pub const REDIRECTED_OUT: u32 = 21;

    /// Slots in the map.
    pub const SLOTS: u32 = 32;

    /// Names for listings and metrics, by index. Stable: they are the
    /// `reason` of `lb-agent stats -o json` and of the metrics.
    pub const NAMES: [&str; 22] = [
        "reject_no_backend",
        "drop_no_local_backend",
        "drop_source_range",
        "drop_no_nat_port",
        "drop_ct_write",
        "drop_rewrite",
        "drop_orphan_fragment",
        "reject_unserved_port",
        "drop_reject_rate_limited",
        "drop_no_slot",
        "rst_ignored",
        "port_remapped",
        "icmp_translated",
        "fragment_translated",
        "hairpin",
        "drop_ttl_exceeded",
        "frag_needed_sent",
        "malformed_passed",
        "tail_call_failed",
        "redirected_peer",
        "pass_no_nat66",
        "redirected_out",
    ];

    /// What each counter means, by index (for `lb-agent stats` and the
    /// README).
    pub const HELP: [&str; 22] = [
        "rejected (ICMP port unreachable, ECONNREFUSED): the frontend has no endpoint",
        "dropped: a Local traffic policy and no endpoint on this node",
        "dropped: the client is outside loadBalancerSourceRanges",
        "dropped: no free SNAT or reply-tuple port for a new flow",
        "dropped: a conntrack entry could not be written",
        "dropped: a packet rewrite failed half-way",
        "dropped: a later fragment to a Service address whose first fragment was not seen",
        "rejected: a ClusterIP on a port no Service defines",
        "dropped: a reject held back by the per-client ICMP rate limit",
        "dropped: a backend slot vanished under a concurrent update",
        "passed: a TCP RST outside the flow's window (does not end the flow)",
        "translated: a new flow whose reply tuple was taken got another source port",
        "translated: an ICMP error about a translated flow",
        "translated: a later fragment given its datagram's translation",
        "translated: a pod reaching itself through its Service (source-NATed)",
        "dropped: TTL expired on a north-south packet forwarded by XDP (time exceeded sent)",
        "answered: fragmentation needed, for a north-south packet too big for its path",
        "passed untouched: a malformed packet (too short, bad header length), left to the kernel",
        "passed untranslated: an IPv6 packet whose tc or XDP program was missing from LB_TC_CALLS / LB_XDP_CALLS (tail call failed)",
        "redirected: a translated packet sent straight into a pod of this node, past the host stack (--host-routing bpf)",
        "passed untranslated: a new IPv6 north-south flow to a backend on another node, and no IPv6 SNAT address on this node",
        "redirected: a north-south reply sent straight out towards its client, past the host stack (--host-routing bpf)",
    ];

    /// Whether counter `index` is a packet lb dropped or rejected.
    pub const fn is_drop(index: u32) -> bool {
        matches!(
            index,
            REJECT_NO_BACKEND
                | DROP_NO_LOCAL_BACKEND
                | DROP_SOURCE_RANGE
                | DROP_NO_NAT_PORT
                | DROP_CT_WRITE
                | DROP_REWRITE
                | DROP_ORPHAN_FRAGMENT
                | REJECT_UNSERVED_PORT
                | DROP_REJECT_RATE
                | DROP_NO_SLOT
                | DROP_TTL
        )
    }
}

/// `LB_FE_STATS` (per-CPU array indexed by frontend ID): what one
/// frontend served. Counted once per packet sent to the frontend that the
/// datapath translates (tc ingress, XDP), and once per socket the connect
/// and sendmsg hooks translate (a new flow, no packet seen).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendStats {
    pub packets: u64,
    /// Bytes of those packets, as the hook saw them (with the Ethernet
    /// header).
    pub bytes: u64,
    pub new_flows: u64,
}

/// Marks map key and value types as plain data for aya and bytemuck (with
/// the `user` feature); used by `maps` and `maps6`.
#[cfg(feature = "user")]
macro_rules! pod {
    ($($ty:ty),* $(,)?) => {$(
        // SAFETY: repr(C), only integer fields, explicit padding: every
        // bit pattern is valid and there are no implicit padding bytes
        // (the layout asserts prove the sizes add up).
        unsafe impl aya::Pod for $ty {}
        unsafe impl bytemuck::Zeroable for $ty {}
        unsafe impl bytemuck::Pod for $ty {}
    )*};
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
assert_layout!(Service4Value, size = 16, frontend_id @ 0, count @ 4, generation @ 6, flags @ 8, affinity_timeout @ 12);
assert_layout!(SlotKey, size = 8, frontend_id @ 0, slot @ 4, generation @ 6);
assert_layout!(Slot, size = 4, backend_id @ 0);
assert_layout!(Backend4, size = 12, addr @ 0, port @ 4, proto @ 6, flags @ 7, version @ 8, _pad @ 10);
assert_layout!(RevNatKey, size = 4, frontend_id @ 0);
assert_layout!(RevNat4, size = 8, addr @ 0, port @ 4, version @ 6);
assert_layout!(Ct4Key, size = 16, saddr @ 0, daddr @ 4, sport @ 8, dport @ 10, proto @ 12, dir @ 13, _pad @ 14);
assert_layout!(CtEntry, size = 40, last_seen @ 0, nat_saddr @ 8, nat_daddr @ 12, nat_sport @ 16, nat_dport @ 18, backend_id @ 20, frontend_id @ 24, seq @ 28, tcp_flags @ 32, peer_flags @ 33, flags @ 34, _pad @ 35, frontend_version @ 36, backend_version @ 38);
assert_layout!(SockRevNat4Key, size = 16, cookie @ 0, addr @ 8, port @ 12, _pad @ 14);
assert_layout!(SockRevNat4, size = 12, addr @ 0, port @ 4, _pad @ 6, frontend_id @ 8);
assert_layout!(Config, size = 32, host_netns_cookie @ 0, flags @ 8, maglev_m @ 12, timeouts @ 16);
assert_layout!(CtTimeouts, size = 16, tcp_syn @ 0, tcp_established @ 4, tcp_closing @ 8, udp @ 12);
assert_layout!(Affinity4Key, size = 16, client @ 0, frontend_id @ 8, frontend_version @ 12, _pad @ 14);
assert_layout!(Affinity4, size = 16, last_used @ 0, backend_id @ 8, backend_version @ 12, _pad @ 14);
assert_layout!(SvcName, size = SVC_NAME_LEN, name @ 0);
assert_layout!(SrcRange4, size = 8, frontend_id @ 0, addr @ 4);
assert_layout!(NodeConfig, size = 16, snat_addr @ 0, nat_port_min @ 4, nat_port_max @ 6, flags @ 8, nodeport_min @ 12, nodeport_max @ 14);
assert_layout!(Device, size = 24, mode @ 0, name @ 4, why @ 20);
assert_layout!(Vip4, size = 4, flags @ 0);
assert_layout!(Frag4Key, size = 12, saddr @ 0, daddr @ 4, id @ 8, proto @ 10, _pad @ 11);
assert_layout!(NextHopKey, size = 24, daddr @ 0, ifindex @ 16, family @ 20, _pad @ 21);
assert_layout!(NextHop, size = 32, looked_up_ns @ 0, ifindex @ 8, max_len @ 12, _pad @ 14, smac @ 16, dmac @ 22, _pad2 @ 28);
assert_layout!(Frag, size = 6, sport @ 0, dport @ 2, proto @ 4, _pad @ 5);
assert_layout!(RejectRate, size = 16, last_ns @ 0, tokens @ 8, _pad @ 12);
assert_layout!(FrontendStats, size = 24, packets @ 0, bytes @ 8, new_flows @ 16);
const _: () = assert!(stat::NAMES.len() as u32 <= stat::SLOTS);
const _: () = assert!(stat::NAMES.len() == stat::HELP.len());

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: as `pod!`: repr(C), and the address types (`RangeAddr`: u32
    // and [u32; 4]) are 4-byte aligned integers, so no padding (the layout
    // asserts of `SrcRange4` and `SrcRange6` prove it).
    unsafe impl<A: RangeAddr + aya::Pod> aya::Pod for SrcRangeOf<A> {}
    unsafe impl<A: RangeAddr + bytemuck::Zeroable> bytemuck::Zeroable for SrcRangeOf<A> {}
    unsafe impl<A: RangeAddr + bytemuck::Pod> bytemuck::Pod for SrcRangeOf<A> {}

    pod!(
        Service4Key,
        Service4Value,
        SlotKey,
        Slot,
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
        NodeConfig,
        Device,
        Vip4,
        Frag4Key,
        Frag,
        NextHopKey,
        NextHop,
        RejectRate,
        FrontendStats,
    );
}

#[cfg(test)]
mod north_south_tests {
    use super::*;

    #[test]
    fn every_map_has_a_layout_version() {
        for (i, name) in names::ALL.iter().enumerate() {
            assert_eq!(layout::VERSIONS[i].0, *name, "VERSIONS follows names::ALL");
            assert!(layout::version(name) > 0, "{name}");
            assert!(name.len() < layout::KEY_LEN, "{name} fits a LB_LAYOUT key");
        }
        assert_eq!(layout::version("LB4_OTHER"), 0);
        assert_eq!(layout::sized_by(names::CT_TCP), SizedBy::CtTcp);
        assert_eq!(layout::sized_by(names::LAYOUT), SizedBy::Fixed);
        assert_eq!(&layout::key("LB4_VIPS")[..9], b"LB4_VIPS\0");
    }

    fn be(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    #[test]
    fn source_range_keys_mask_host_bits() {
        let (len, k) = SrcRange4::range(7, be([192, 168, 50, 77]), 24);
        assert_eq!(len, 56);
        assert_eq!(k.addr, be([192, 168, 50, 0]));
        assert_eq!(k.frontend_id.to_ne_bytes(), [0, 0, 0, 7]);
        assert_eq!(SrcRange4::range(7, be([10, 1, 2, 3]), 0).1.addr, 0);
        assert_eq!(SrcRange4::range(7, be([10, 1, 2, 3]), 32).1.addr, be([10, 1, 2, 3]));
        assert_eq!(SrcRange4::range(7, be([10, 1, 2, 3]), 9).1.addr, be([10, 0, 0, 0]));
        assert_eq!(SrcRange4::client(7, be([1, 2, 3, 4])).0, 64);
    }

    #[test]
    fn ipv6_source_range_keys_mask_host_bits() {
        use crate::SrcRange6;
        let a = |s: &str| crate::addr6(s.parse().unwrap());
        let (len, k) = SrcRange6::range(7, a("2001:db8:aaaa:bbbb:cccc::1"), 48);
        assert_eq!(len, 80);
        assert_eq!(k.addr, a("2001:db8:aaaa::"));
        assert_eq!(k.frontend_id.to_ne_bytes(), [0, 0, 0, 7]);
        // Prefixes inside a word, on word edges, none and all.
        assert_eq!(SrcRange6::range(7, a("2001:db8:ffff::1"), 36).1.addr, a("2001:db8:f000::"));
        assert_eq!(SrcRange6::range(7, a("2001:db8:ffff::1"), 64).1.addr, a("2001:db8:ffff::"));
        assert_eq!(SrcRange6::range(7, a("2001:db8::1"), 0).1.addr, [0; 4]);
        assert_eq!(SrcRange6::range(7, a("2001:db8::1"), 128).1.addr, a("2001:db8::1"));
        assert_eq!(SrcRange6::range(7, a("2001:db8::1"), 200), SrcRange6::range(7, a("2001:db8::1"), 128));
        assert_eq!(SrcRange6::client(7, a("fd00::1")).0, 160);
    }

    #[test]
    fn ct_entries_name_their_twin() {
        // client 1:3 -> frontend 2:4, SNATed to 10:11, backend 20:21.
        let fwd_key = Ct4Key::new(1, 2, 3, 4, IPPROTO_TCP, CT_SERVICE);
        let fwd = CtEntry {
            last_seen: 0,
            nat_saddr: 10,
            nat_daddr: 20,
            nat_sport: 11,
            nat_dport: 21,
            backend_id: 7,
            frontend_id: 5,
            seq: 0,
            tcp_flags: 0,
            peer_flags: 0,
            flags: 0,
            _pad: 0,
            frontend_version: 0,
            backend_version: 0,
        };
        let reply_key = fwd.twin_key(&fwd_key);
        assert_eq!(reply_key, Ct4Key::new(20, 10, 21, 11, IPPROTO_TCP, CT_REPLY));
        let reply = CtEntry { nat_saddr: 2, nat_sport: 4, nat_daddr: 1, nat_dport: 3, ..fwd };
        assert_eq!(reply.twin_key(&reply_key), fwd_key);
    }
}

#[cfg(test)]
mod nexthop_tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const C: [u8; 6] = [2, 0, 0, 0, 0, 0xc];

    #[test]
    fn an_answer_serves_packets_it_passed_while_fresh() {
        let h = NextHop::fresh(5_000, 1_400, 3, A, B);
        assert!(h.serves(1_400, 5_000));
        assert!(h.serves(60, 5_000 + NEXTHOP_TTL_NS - 1));
        assert!(!h.serves(1_401, 5_000), "longer than the FIB passed: asked again (MTU)");
        assert!(!h.serves(60, 5_000 + NEXTHOP_TTL_NS), "stale");
    }

    #[test]
    fn a_fresh_lookup_keeps_the_longest_length_of_the_same_answer() {
        let h = NextHop::fresh(0, 1_400, 3, A, B);
        let later = NextHop::fresh(10, 60, 3, A, B).after(&h);
        assert_eq!(later.max_len, 1_400);
        assert_eq!(later.looked_up_ns, 10);
        // Another neighbour (or interface): the old length says nothing.
        assert_eq!(NextHop::fresh(10, 60, 3, A, C).after(&h).max_len, 60);
        assert_eq!(NextHop::fresh(10, 60, 4, A, B).after(&h).max_len, 60);
        // A stale answer neither.
        assert_eq!(NextHop::fresh(NEXTHOP_TTL_NS, 60, 3, A, B).after(&h).max_len, 60);
    }

    #[test]
    fn families_never_share_a_key() {
        let v4 = NextHopKey::v4(u32::from_be_bytes([32, 1, 13, 184]).to_be(), 2);
        let v6 = NextHopKey::v6([u32::from_be_bytes([32, 1, 13, 184]).to_be(), 0, 0, 0], 2);
        assert_ne!(v4, v6);
    }
}
