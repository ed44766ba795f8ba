//! The maps of each address family behind one trait, so that lookups,
//! backend selection, conntrack and the socket translation are written
//! once (see `lb_common::maps6` for what the families share).

use aya_ebpf::{bindings::BPF_ANY, btf_maps::lpm_trie::Key};
use lb_common::{
    Addr6, CtEntryOf, CtKeyOf, Family, Frag, Frag4Key, Frag6Key, IPPROTO_TCP, SCOPE_INTERNAL, Service4Value, SrcRange4, SrcRange6, V4, V6,
    Vip4, stat, svc_flags,
};

use crate::{
    maps::{
        LB4_CT_ANY, LB4_CT_TCP, LB4_FRAGS, LB4_SOCK_REVNAT, LB4_SRC_RANGES, LB6_BACKENDS, LB6_CT_ANY, LB6_CT_TCP, LB6_FRAGS, LB6_NODE,
        LB6_REVNAT, LB6_SERVICES, LB6_SOCK_REVNAT, LB6_SRC_RANGES, LB6_VIPS,
    },
    select, stats, vip_filter,
};

/// A conntrack key of family `F`.
pub type CtKey<F> = CtKeyOf<<F as Family>::Addr>;
/// A conntrack entry of family `F`.
pub type Ct<F> = CtEntryOf<<F as Family>::Addr>;

/// Where a family's entries live. Every value is copied out of its map at
/// once (an update can recycle a hash map slot under us).
pub trait FamilyMaps: Family {
    /// The frontend a client inside the cluster (the socket hooks' host
    /// sockets) reaches at (addr, port, proto): the in-cluster entry of an
    /// `externalTrafficPolicy: Local` address where there is one
    /// (`select::in_cluster_service`), else the usual one.
    fn service(addr: Self::Addr, port: u16, proto: u8) -> Option<Service4Value>;
    /// The kinds of frontend at `addr`.
    fn vip(addr: Self::Addr) -> Option<Vip4>;
    /// Whether `addr` may be a frontend address: `false` only when it is
    /// none (the family's pre-filter, `vip_filter`, one array load).
    fn may_be_frontend(addr: Self::Addr) -> bool;
    /// Whether `addr` is a frontend address: the pre-filter first (one
    /// array load rules most addresses out), then the exact lookup.
    #[inline(always)]
    fn is_frontend(addr: Self::Addr) -> bool {
        Self::may_be_frontend(addr) && Self::vip(addr).is_some()
    }
    /// The backend in slot `id`, if the slot is in use.
    fn backend(id: u32) -> Option<Self::Backend>;
    /// The frontend in slot `id` (address, port, version), if in use.
    fn frontend(id: u32) -> Option<(Self::Addr, u16, u16)>;
    /// Whether `saddr` is inside the loadBalancerSourceRanges of frontend
    /// `frontend_id` (one LPM trie lookup).
    fn source_allowed(frontend_id: u32, saddr: Self::Addr) -> bool;
    /// Whether frontend `svc` has loadBalancerSourceRanges that leave
    /// `saddr` out; counted (`stat::DROP_SOURCE_RANGE`). Checked on a
    /// flow's first packet from outside, from a pod and from a host socket
    /// alike, as kube-proxy's firewall chains see all three.
    #[inline(always)]
    fn source_refused(svc: &Service4Value, saddr: Self::Addr) -> bool {
        let refused = svc.flags & svc_flags::SOURCE_RANGES != 0 && !Self::source_allowed(svc.frontend_id, saddr);
        if refused {
            stats::count(stat::DROP_SOURCE_RANGE);
        }
        refused
    }
    /// The address the node's own connections leave with, as far as lb
    /// knows it: its SNAT address (`LB_NODE`, `LB6_NODE`: the first node
    /// address unless `--snat-ip` names another); all zeros before the
    /// agent wrote it.
    fn node_address() -> Self::Addr;
    fn sock_rev_nat_get(key: Self::SockRevNatKey) -> Option<Self::SockRevNat>;
    fn sock_rev_nat_insert(key: Self::SockRevNatKey, value: Self::SockRevNat) -> Option<()>;
    fn sock_rev_nat_remove(key: Self::SockRevNatKey) -> Option<()>;
    /// The conntrack entry at `key`, in the map of its protocol (TCP, or
    /// any other).
    fn ct_get(key: &CtKey<Self>) -> Option<*mut Ct<Self>>;
    fn ct_insert(key: &CtKey<Self>, value: &Ct<Self>, flags: u64) -> Result<(), i32>;
    fn ct_remove(key: &CtKey<Self>) -> Result<(), i32>;
    /// Whether the frontend and backend a flow was made for are both still
    /// installed with the versions the entry holds (see
    /// `select::flow_valid`).
    fn flow_valid(e: &Ct<Self>) -> bool;
    /// The ports and L4 protocol a datagram's first fragment recorded (see
    /// `frag`).
    fn frag_get(key: &Self::FragKey) -> Option<Frag>;
    /// Records a datagram's ports and L4 protocol for its later
    /// fragments; replaces any entry (LRU: an insert only fails on a bad
    /// argument).
    fn frag_insert(key: &Self::FragKey, ports: &Frag) -> Result<(), i32>;
}

impl FamilyMaps for V4 {
    #[inline(always)]
    fn service(addr: u32, port: u16, proto: u8) -> Option<Service4Value> {
        select::in_cluster_service(addr, port, proto)
    }
    #[inline(always)]
    fn vip(addr: u32) -> Option<Vip4> {
        select::vip(addr)
    }
    #[inline(always)]
    fn may_be_frontend(addr: u32) -> bool {
        vip_filter::kinds(addr) != 0
    }
    #[inline(always)]
    fn backend(id: u32) -> Option<lb_common::Backend4> {
        select::backend(id)
    }
    #[inline(always)]
    fn frontend(id: u32) -> Option<(u32, u16, u16)> {
        select::rev_nat(id).map(|r| (r.addr, r.port, r.version))
    }
    #[inline(always)]
    fn source_allowed(frontend_id: u32, saddr: u32) -> bool {
        let (len, data) = SrcRange4::client(frontend_id, saddr);
        LB4_SRC_RANGES.get(&Key::new(len, data)).is_some()
    }
    #[inline(always)]
    fn node_address() -> u32 {
        select::node_config().map_or(0, |n| n.snat_addr)
    }
    #[inline(always)]
    fn sock_rev_nat_get(key: Self::SockRevNatKey) -> Option<Self::SockRevNat> {
        // SAFETY: the reference lives only until the value is copied out.
        unsafe { LB4_SOCK_REVNAT.get(key).copied() }
    }
    #[inline(always)]
    fn sock_rev_nat_insert(key: Self::SockRevNatKey, value: Self::SockRevNat) -> Option<()> {
        LB4_SOCK_REVNAT.insert(key, value, 0).ok()
    }
    #[inline(always)]
    fn sock_rev_nat_remove(key: Self::SockRevNatKey) -> Option<()> {
        LB4_SOCK_REVNAT.remove(key).ok()
    }
    #[inline(always)]
    fn ct_get(key: &CtKey<Self>) -> Option<*mut Ct<Self>> {
        if key.proto == IPPROTO_TCP { LB4_CT_TCP.get_ptr_mut(key) } else { LB4_CT_ANY.get_ptr_mut(key) }
    }
    #[inline(always)]
    fn ct_insert(key: &CtKey<Self>, value: &Ct<Self>, flags: u64) -> Result<(), i32> {
        if key.proto == IPPROTO_TCP { LB4_CT_TCP.insert(key, value, flags) } else { LB4_CT_ANY.insert(key, value, flags) }
    }
    #[inline(always)]
    fn ct_remove(key: &CtKey<Self>) -> Result<(), i32> {
        if key.proto == IPPROTO_TCP { LB4_CT_TCP.remove(key) } else { LB4_CT_ANY.remove(key) }
    }
    #[inline(always)]
    fn flow_valid(e: &Ct<Self>) -> bool {
        select::flow_valid(e)
    }
    #[inline(always)]
    fn frag_get(key: &Frag4Key) -> Option<Frag> {
        // SAFETY: the reference lives only until the value is copied out;
        // entries are replaced whole by map updates, never written in place.
        unsafe { LB4_FRAGS.get(key).copied() }
    }
    #[inline(always)]
    fn frag_insert(key: &Frag4Key, ports: &Frag) -> Result<(), i32> {
        LB4_FRAGS.insert(key, ports, BPF_ANY as u64)
    }
}

impl FamilyMaps for V6 {
    /// As IPv4's: the in-cluster entry where the frontend has one.
    #[inline(always)]
    fn service(addr: Addr6, port: u16, proto: u8) -> Option<Service4Value> {
        let mut key = V6::service_key(addr, port, proto);
        // SAFETY: copied out at once.
        let svc = unsafe { LB6_SERVICES.get(key).copied() }?;
        if svc.flags & svc_flags::HAS_INTERNAL == 0 {
            return Some(svc);
        }
        key.scope = SCOPE_INTERNAL;
        // SAFETY: as above.
        unsafe { LB6_SERVICES.get(key).copied() }.or(Some(svc))
    }
    #[inline(always)]
    fn vip(addr: Addr6) -> Option<Vip4> {
        // SAFETY: copied out at once.
        unsafe { LB6_VIPS.get(addr).copied() }
    }
    #[inline(always)]
    fn may_be_frontend(addr: Addr6) -> bool {
        vip_filter::kinds6(&addr) != 0
    }
    #[inline(always)]
    fn backend(id: u32) -> Option<lb_common::Backend6> {
        let be = *LB6_BACKENDS.get(id)?;
        V6::backend_addr(&be).map(|_| be)
    }
    #[inline(always)]
    fn frontend(id: u32) -> Option<(Addr6, u16, u16)> {
        V6::rev_nat(LB6_REVNAT.get(id)?)
    }
    #[inline(always)]
    fn source_allowed(frontend_id: u32, saddr: Addr6) -> bool {
        let (len, data) = SrcRange6::client(frontend_id, saddr);
        LB6_SRC_RANGES.get(&Key::new(len, data)).is_some()
    }
    #[inline(always)]
    fn node_address() -> Addr6 {
        LB6_NODE.get(0).map_or(Addr6::default(), |n| n.snat_addr)
    }
    #[inline(always)]
    fn sock_rev_nat_get(key: Self::SockRevNatKey) -> Option<Self::SockRevNat> {
        // SAFETY: the reference lives only until the value is copied out.
        unsafe { LB6_SOCK_REVNAT.get(key).copied() }
    }
    #[inline(always)]
    fn sock_rev_nat_insert(key: Self::SockRevNatKey, value: Self::SockRevNat) -> Option<()> {
        LB6_SOCK_REVNAT.insert(key, value, 0).ok()
    }
    #[inline(always)]
    fn sock_rev_nat_remove(key: Self::SockRevNatKey) -> Option<()> {
        LB6_SOCK_REVNAT.remove(key).ok()
    }
    #[inline(always)]
    fn ct_get(key: &CtKey<Self>) -> Option<*mut Ct<Self>> {
        if key.proto == IPPROTO_TCP { LB6_CT_TCP.get_ptr_mut(key) } else { LB6_CT_ANY.get_ptr_mut(key) }
    }
    #[inline(always)]
    fn ct_insert(key: &CtKey<Self>, value: &Ct<Self>, flags: u64) -> Result<(), i32> {
        if key.proto == IPPROTO_TCP { LB6_CT_TCP.insert(key, value, flags) } else { LB6_CT_ANY.insert(key, value, flags) }
    }
    #[inline(always)]
    fn ct_remove(key: &CtKey<Self>) -> Result<(), i32> {
        if key.proto == IPPROTO_TCP { LB6_CT_TCP.remove(key) } else { LB6_CT_ANY.remove(key) }
    }
    #[inline(always)]
    fn flow_valid(e: &Ct<Self>) -> bool {
        LB6_REVNAT.get(e.frontend_id).and_then(V6::rev_nat).is_some_and(|f| f.2 == e.frontend_version)
            && LB6_BACKENDS.get(e.backend_id).is_some_and(|b| V6::backend_addr(b).is_some() && b.version == e.backend_version)
    }
    #[inline(always)]
    fn frag_get(key: &Frag6Key) -> Option<Frag> {
        // SAFETY: as IPv4's.
        unsafe { LB6_FRAGS.get(key).copied() }
    }
    #[inline(always)]
    fn frag_insert(key: &Frag6Key, ports: &Frag) -> Result<(), i32> {
        LB6_FRAGS.insert(key, ports, BPF_ANY as u64)
    }
}
