//! The socket translation of the connect/sendmsg and recvmsg/getpeername
//! hooks, written once over an address family ([`FamilyMaps`]): the IPv4
//! hooks (`sock`) use it for IPv4, the IPv6 hooks (`sock6`) for IPv6 and,
//! on dual-stack sockets, for IPv4-mapped addresses.

use aya_ebpf::{EbpfContext, helpers::bpf_get_socket_cookie, programs::SockAddrContext};
use lb_common::{AFFINITY_NETNS, Config, hash::fmix32, stat, svc_flags, vip_flags};

use crate::{
    clock::now_ns,
    family::FamilyMaps,
    select::select_backend_of,
    sock::{ALLOW, ECONNREFUSED, EHOSTUNREACH, EPERM, refuse},
    stats,
};

/// What a connect or sendmsg to (addr, port) becomes.
pub enum Forward<A> {
    /// Not a frontend: left alone.
    Pass,
    /// Fails with this errno.
    Refuse(i32),
    /// Goes to this backend (address, port in network order).
    To(A, u16),
}

impl<A> Forward<A> {
    /// The hook's verdict: a refusal fails the syscall; a backend is
    /// written into the socket address by `write` (address, port in
    /// network order).
    #[inline(always)]
    pub fn apply(self, write: impl FnOnce(A, u16)) -> i32 {
        match self {
            Forward::Pass => ALLOW,
            Forward::Refuse(errno) => refuse(errno),
            Forward::To(be, be_port) => {
                write(be, be_port);
                ALLOW
            }
        }
    }
}

/// The translation of a connect or sendmsg from a host socket to
/// (addr, port, proto). `None` when a map read raced with the agent or the
/// socket rev-NAT entry could not be written: the caller leaves the
/// address alone.
#[inline(always)]
pub fn forward<F: FamilyMaps>(ctx: &SockAddrContext, cfg: &Config, addr: F::Addr, port: u16, proto: u8) -> Option<Forward<F::Addr>> {
    let Some(svc) = F::service(addr, port, proto) else {
        // A ClusterIP on a port no Service defines: refused, never sent
        // along the default route.
        if F::vip(addr).is_some_and(|v| v.flags & vip_flags::CLUSTER_IP != 0) {
            stats::count(stat::REJECT_UNSERVED_PORT);
            return Some(Forward::Refuse(ECONNREFUSED));
        }
        return Some(Forward::Pass);
    };
    // loadBalancerSourceRanges bind host clients too, by the node's
    // address (a socket's source is not chosen before routing): a range
    // that holds it lets the host in, as kube-proxy's OUTPUT firewall
    // chain does, and a refusal is EPERM, what a packet netfilter drops
    // there gives the application.
    if F::source_refused(&svc, F::node_address()) {
        return Some(Forward::Refuse(EPERM));
    }
    if svc.count == 0 {
        // A Local traffic policy with no endpoint on this node: no route
        // to one; no endpoint at all: refused.
        if svc.flags & (svc_flags::INT_LOCAL | svc_flags::EXT_LOCAL) != 0 {
            stats::count(stat::DROP_NO_LOCAL_BACKEND);
            return Some(Forward::Refuse(EHOSTUNREACH));
        }
        stats::count(stat::REJECT_NO_BACKEND);
        return Some(Forward::Refuse(ECONNREFUSED));
    }
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // No source port exists yet at connect time: Maglev hashes the socket,
    // and affinity keys on the namespace (all host sockets are one client).
    let hash = fmix32(cookie as u32 ^ (cookie >> 32) as u32);
    let client = cfg.host_netns_cookie | AFFINITY_NETNS;
    let (_, be) = select_backend_of::<F>(cfg, &svc, hash, || client, now_ns())?;
    let (be_addr, be_port) = F::backend_addr(&be)?;
    F::sock_rev_nat_insert(F::sock_rev_nat_key(cookie, be_addr, be_port), F::sock_rev_nat(addr, port, svc.frontend_id))?;
    stats::frontend_socket(svc.frontend_id);
    Some(Forward::To(be_addr, be_port))
}

/// The frontend a host socket's peer (addr, port) stands for, if the
/// socket was translated to it and the frontend still exists as recorded
/// (`Some(None)`: leave the address alone; `None`: a map write failed).
#[inline(always)]
pub fn reverse<F: FamilyMaps>(ctx: &SockAddrContext, addr: F::Addr, port: u16) -> Option<Option<(F::Addr, u16)>> {
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = F::sock_rev_nat_key(cookie, addr, port);
    let Some(entry) = F::sock_rev_nat_get(key) else {
        return Some(None);
    };
    let (front_addr, front_port, id) = F::sock_front(&entry);
    match F::frontend(id) {
        Some((a, p, _)) if a == front_addr && p == front_port => Some(Some((front_addr, front_port))),
        _ => {
            F::sock_rev_nat_remove(key)?;
            Some(None)
        }
    }
}
