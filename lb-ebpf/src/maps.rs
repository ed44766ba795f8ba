//! The datapath's maps. Their key and value types live in `lb-common`;
//! see `docs/map-model.md`. Sizes here are defaults the agent overrides.

use aya_ebpf::{
    bindings::BPF_F_INNER_MAP,
    btf_maps::{Array, HashMap, HashOfMaps, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
    macros::btf_map,
};
use lb_common::{
    Addr6, Affinity4, Affinity4Key, Backend4, Backend6, Config, Ct4Key, Ct6Entry, Ct6Key, CtEntry, Device, Frag, Frag4Key, Frag6Key,
    FrontendStats, NextHop, NextHopKey, Node6Config, NodeConfig, RejectRate, RevNat4, RevNat6, RevNatKey, Service4Key, Service4Value,
    Service6Key, Slot, SlotKey, SockRevNat4, SockRevNat4Key, SockRevNat6, SockRevNat6Key, SrcRange4, SrcRange6, SvcName, Vip4, layout,
    sizes, stat, tc_call, vip_filter, xdp_call,
};

use crate::{
    clock::Clock,
    route::Scratch,
    scratch::{self, Scratch4, Scratch6},
};

#[btf_map]
pub static LB4_SERVICES: HashMap<Service4Key, Service4Value, { sizes::SERVICES as usize }> = HashMap::new();

#[btf_map]
pub static LB4_SLOTS: HashMap<SlotKey, Slot, { sizes::SLOTS as usize }> = HashMap::new();

#[btf_map]
/// Backends by ID: an array, so a lookup is an index (see
/// `lb_common::Backend4` for the slot versions).
pub static LB4_BACKENDS: Array<Backend4, { sizes::BACKENDS as usize }> = Array::new();

#[btf_map]
/// Frontends by ID (their address and slot version): an array.
pub static LB4_REVNAT: Array<RevNat4, { sizes::REVNAT as usize }> = Array::new();

/// Connection tracking of TCP flows, two entries per flow (see
/// `lb_common::CtEntry`). LRU: under pressure the oldest flows go first and
/// a new flow never fails to be recorded.
#[btf_map]
pub static LB4_CT_TCP: LruHashMap<Ct4Key, CtEntry, { sizes::CT_TCP as usize }> = LruHashMap::new();

/// Connection tracking of every other flow (UDP). Kept apart from TCP so
/// that a burst of short UDP flows (DNS) cannot evict idle established TCP
/// flows, as in Cilium.
#[btf_map]
pub static LB4_CT_ANY: LruHashMap<Ct4Key, CtEntry, { sizes::CT_ANY as usize }> = LruHashMap::new();

#[btf_map]
pub static LB4_SOCK_REVNAT: LruHashMap<SockRevNat4Key, SockRevNat4, { sizes::SOCK_REVNAT as usize }> = LruHashMap::new();

#[btf_map]
pub static LB_CONFIG: Array<Config, 1> = Array::new();

/// Names of frontends for `lb-agent list` and bpftool. Only userspace
/// writes and reads it.
#[btf_map]
pub static LB_SVC_NAMES: HashMap<RevNatKey, SvcName, { sizes::SVC_NAMES as usize }> = HashMap::new();

/// Session affinity (sessionAffinity: ClientIP). LRU, so it can never fill
/// up; entries expire by the Service's timeout and are purged by the agent
/// when their backend leaves the Service.
#[btf_map]
pub static LB4_AFFINITY: LruHashMap<Affinity4Key, Affinity4, { sizes::AFFINITY as usize }> = LruHashMap::new();

/// A Maglev lookup table: M backend IDs. The template says 1 entry;
/// `BPF_F_INNER_MAP` lets the agent insert tables of any size M, so M is a
/// runtime setting (`Config::maglev_m`) and the verifier bounds-checks each
/// lookup at run time.
pub type MaglevTable = Array<u32, 1, { BPF_F_INNER_MAP as usize }>;

/// Frontend ID -> its Maglev table. The agent builds a new table and swaps
/// it in with one update of this map.
#[btf_map]
pub static LB4_MAGLEV: HashOfMaps<RevNatKey, MaglevTable, { sizes::MAGLEV as usize }> = HashOfMaps::new();

/// loadBalancerSourceRanges: (frontend ID, CIDR) -> 1.
#[btf_map]
pub static LB4_SRC_RANGES: LpmTrie<SrcRange4, u32, { sizes::SRC_RANGES as usize }> = LpmTrie::new();

/// loadBalancerSourceRanges of IPv6 frontends: (frontend ID, CIDR) -> 1.
#[btf_map]
pub static LB6_SRC_RANGES: LpmTrie<SrcRange6, u32, { sizes::SRC_RANGES6 as usize }> = LpmTrie::new();

/// This node's north-south settings (index 0).
#[btf_map]
pub static LB_NODE: Array<NodeConfig, 1> = Array::new();

/// External interfaces and their XDP mode: for listings, and the XDP
/// program's redirect targets.
#[btf_map]
pub static LB_DEVICES: HashMap<u32, Device, { sizes::DEVICES as usize }> = HashMap::new();

/// Every frontend address and its kinds: the first lookup of a packet.
#[btf_map]
pub static LB4_VIPS: HashMap<u32, Vip4, { sizes::VIPS as usize }> = HashMap::new();

/// The XDP and tc programs' pre-filter of frontend addresses (see
/// `lb_common::vip_filter`): an array, so its lookup is an inlined index.
#[btf_map]
pub static LB4_VIP_FILTER: Array<u64, { vip_filter::WORDS as usize }> = Array::new();

/// IPv4 datagrams in fragments: the first fragment's ports and protocol,
/// for the rest.
#[btf_map]
pub static LB4_FRAGS: LruHashMap<Frag4Key, Frag, { sizes::FRAGS as usize }> = LruHashMap::new();

/// Per-client token buckets for the ICMP errors the datapath sends.
#[btf_map]
pub static LB4_REJECT_RATE: LruHashMap<u32, RejectRate, { sizes::REJECT_RATE as usize }> = LruHashMap::new();

/// The node-wide token bucket of the ICMP errors the datapath sends (both
/// families; `lb_common::REJECT_NODE_PER_SEC`).
#[btf_map]
pub static LB_REJECT_NODE: Array<RejectRate, 1> = Array::new();

/// Counters by `lb_common::stat` index, per CPU.
#[btf_map]
pub static LB_STATS: PerCpuArray<u64, { stat::SLOTS as usize }> = PerCpuArray::new();

/// Per-frontend counters by frontend ID, per CPU (sized as the frontend
/// maps by the agent).
#[btf_map]
pub static LB_FE_STATS: PerCpuArray<FrontendStats, { sizes::SERVICES as usize }> = PerCpuArray::new();

/// Layout version of each pinned map, by name (written and read by the
/// agent only; see `lb_common::layout`).
#[btf_map]
pub static LB_LAYOUT: HashMap<[u8; layout::KEY_LEN], u32, { layout::ENTRIES as usize }> = HashMap::new();

// ---- IPv6 (see `lb_common::maps6`): the maps that name an address ----------

#[btf_map]
pub static LB6_SERVICES: HashMap<Service6Key, Service4Value, { sizes::SERVICES6 as usize }> = HashMap::new();

/// IPv6 backends by their own IDs (an IPv6 frontend's slots name these).
#[btf_map]
pub static LB6_BACKENDS: Array<Backend6, { sizes::BACKENDS6 as usize }> = Array::new();

/// IPv6 frontends by the shared frontend ID.
#[btf_map]
pub static LB6_REVNAT: Array<RevNat6, { sizes::REVNAT as usize }> = Array::new();

#[btf_map]
pub static LB6_VIPS: HashMap<Addr6, Vip4, { sizes::SERVICES6 as usize }> = HashMap::new();

/// `LB6_VIPS`' pre-filter for tc (see `LB4_VIP_FILTER`; IPv6 addresses
/// hash with `lb_common::vip_filter::slot6`).
#[btf_map]
pub static LB6_VIP_FILTER: Array<u64, { vip_filter::WORDS as usize }> = Array::new();

#[btf_map]
pub static LB6_SOCK_REVNAT: LruHashMap<SockRevNat6Key, SockRevNat6, { sizes::SOCK_REVNAT as usize }> = LruHashMap::new();

/// IPv6 conntrack of TCP flows (see `LB4_CT_TCP`).
#[btf_map]
pub static LB6_CT_TCP: LruHashMap<Ct6Key, Ct6Entry, { sizes::CT_TCP6 as usize }> = LruHashMap::new();

/// IPv6 conntrack of every other flow (see `LB4_CT_ANY`).
#[btf_map]
pub static LB6_CT_ANY: LruHashMap<Ct6Key, Ct6Entry, { sizes::CT_ANY6 as usize }> = LruHashMap::new();

/// Per-client token buckets for the ICMPv6 errors the datapath sends (see
/// `LB4_REJECT_RATE`).
#[btf_map]
pub static LB6_REJECT_RATE: LruHashMap<Addr6, RejectRate, { sizes::REJECT_RATE as usize }> = LruHashMap::new();

/// IPv6 datagrams in fragments: the first fragment's ports and protocol,
/// for the rest (see `LB4_FRAGS`).
#[btf_map]
pub static LB6_FRAGS: LruHashMap<Frag6Key, Frag, { sizes::FRAGS as usize }> = LruHashMap::new();

/// The FIB's answers for forwarded north-south packets, both families
/// (`nexthop`).
#[btf_map]
pub static LB_NEXTHOPS: LruHashMap<NextHopKey, NextHop, { sizes::NEXTHOPS as usize }> = LruHashMap::new();

/// This node's IPv6 SNAT address (index 0), for NAT66 in `lb_xdp6`.
#[btf_map]
pub static LB6_NODE: Array<Node6Config, 1> = Array::new();

/// The pod interfaces with the tc programs (ifindex -> 1), kept by the
/// agent: BPF host routing redirects only into these (`route`).
#[btf_map]
pub static LB_POD_IFACES: HashMap<u32, u32, { sizes::POD_IFACES as usize }> = HashMap::new();

/// BPF host routing's working memory, one per CPU (`route::Scratch`):
/// off the tc programs' stack.
#[btf_map]
pub static LB_HR_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// The IPv6 paths' working memory, one per CPU and hook (`scratch`): the
/// parsed flow, off the stack, for every part of a path.
#[btf_map]
pub static LB6_SCRATCH: PerCpuArray<Scratch6, { scratch::SLOTS as usize }> = PerCpuArray::new();

/// The clock's per-CPU copy for the tick it was read in (`clock`): one
/// helper call per tick and CPU instead of one per packet.
#[btf_map]
pub static LB_CLOCK: PerCpuArray<Clock, 1> = PerCpuArray::new();

/// `lb_xdp4`'s hand-over to `lb_xdp4_rest`, one per CPU (`scratch`): the
/// parsed flow and what the first look found.
#[btf_map]
pub static LB4_SCRATCH: PerCpuArray<Scratch4, 1> = PerCpuArray::new();

/// The IPv6 tc programs by `lb_common::tc_call` slot, filled and pinned by
/// the agent: the attached programs tail-call them for IPv6 frames.
#[btf_map]
pub static LB_TC_CALLS: ProgramArray<{ tc_call::SLOTS as usize }> = ProgramArray::new();

/// The IPv6 XDP program by `lb_common::xdp_call` slot, filled and pinned
/// by the agent: `lb_xdp` tail-calls it for IPv6 frames.
#[btf_map]
pub static LB_XDP_CALLS: ProgramArray<{ xdp_call::SLOTS as usize }> = ProgramArray::new();
