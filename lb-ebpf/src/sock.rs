//! Socket-level load balancing for clients in the host network namespace.
//!
//! connect4 and sendmsg4 turn a frontend into a backend before the socket
//! ever sends a packet, so host traffic needs no per-packet NAT and no
//! conntrack. recvmsg4 and getpeername4 turn the backend back into the
//! frontend, so the application only ever sees the address it dialled.
//! Only sockets in the node's host namespace are translated (the namespace
//! cookie in `LB_CONFIG`); pods are served by the tc program.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use lb_common::{AFFINITY_NETNS, SockRevNat4, SockRevNat4Key, hash::fmix32, stat, svc_flags, vip_flags};

use crate::{
    maps::LB4_SOCK_REVNAT,
    select::{config, in_cluster_service, now_ns, rev_nat, select_backend, vip},
    stats,
};

/// Return values of cgroup sock_addr programs.
pub(crate) const ALLOW: i32 = 1;
const REJECT: i32 = 0;
pub(crate) const ECONNREFUSED: i32 = 111;
pub(crate) const EHOSTUNREACH: i32 = 113;

#[cgroup_sock_addr(connect4)]
pub fn lb_connect4(ctx: SockAddrContext) -> i32 {
    verdict(&ctx, try_forward(&ctx))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    verdict(&ctx, try_forward(&ctx))
}

#[cgroup_sock_addr(recvmsg4)]
pub fn lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    verdict(&ctx, try_reverse(&ctx))
}

#[cgroup_sock_addr(getpeername4)]
pub fn lb_getpeername4(ctx: SockAddrContext) -> i32 {
    verdict(&ctx, try_reverse(&ctx))
}

/// The verdict, or `None` when a backend slot or the socket rev-NAT entry
/// could not be read or written: the address is then left alone, and the
/// socket reaches the frontend address untranslated, as without lb.
#[inline(always)]
pub(crate) fn verdict(ctx: &SockAddrContext, result: Option<i32>) -> i32 {
    match result {
        Some(verdict) => verdict,
        None => {
            debug!(ctx, "lb sock: map access failed, address left untranslated");
            ALLOW
        }
    }
}

/// The configuration, if the socket lives in the host namespace we serve.
#[inline(always)]
pub(crate) fn host_config(ctx: &SockAddrContext) -> Option<lb_common::Config> {
    let cfg = config()?;
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    (cookie == cfg.host_netns_cookie).then_some(cfg)
}

#[inline(always)]
fn try_forward(ctx: &SockAddrContext) -> Option<i32> {
    let Some(cfg) = host_config(ctx) else {
        return Some(ALLOW);
    };
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the program's context, a bpf_sock_addr valid for the
    // whole run; its fields are read (and written below) through the raw
    // pointer, without a reference (the verifier rewrites each access).
    let (addr, user_port, protocol) = unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).protocol) };
    // The port sits in network order in the low 16 bits.
    let port = user_port as u16;
    let proto = protocol as u8;
    let Some(svc) = in_cluster_service(addr, port, proto) else {
        // A ClusterIP on a port no Service defines: refused, never sent
        // along the default route.
        if vip(addr).is_some_and(|v| v.flags & vip_flags::CLUSTER_IP != 0) {
            stats::count(stat::REJECT_UNSERVED_PORT);
            return Some(refuse(ECONNREFUSED));
        }
        return Some(ALLOW);
    };
    if svc.count == 0 {
        // A Local traffic policy with no endpoint on this node: no route
        // to one (packets would be dropped); no endpoint at all: refused.
        if svc.flags & (svc_flags::INT_LOCAL | svc_flags::EXT_LOCAL) != 0 {
            stats::count(stat::DROP_NO_LOCAL_BACKEND);
            return Some(refuse(EHOSTUNREACH));
        }
        stats::count(stat::REJECT_NO_BACKEND);
        return Some(refuse(ECONNREFUSED));
    }
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // No source port exists yet at connect time: Maglev hashes the socket,
    // and affinity keys on the namespace (all host sockets are one client).
    let hash = fmix32(cookie as u32 ^ (cookie >> 32) as u32);
    let client = cfg.host_netns_cookie | AFFINITY_NETNS;
    let (_, be) = select_backend(&cfg, &svc, hash, client, now_ns())?;
    let key = SockRevNat4Key { cookie, addr: be.addr, port: be.port, _pad: 0 };
    let value = SockRevNat4 { addr, port, _pad: 0, frontend_id: svc.frontend_id };
    LB4_SOCK_REVNAT.insert(key, value, 0).ok()?;
    stats::frontend_socket(svc.frontend_id);
    // SAFETY: as above.
    unsafe {
        (*sa).user_ip4 = be.addr;
        (*sa).user_port = be.port as u32;
    }
    Some(ALLOW)
}

/// Fails the syscall with `errno`.
#[inline(always)]
pub(crate) fn refuse(errno: i32) -> i32 {
    // SAFETY: the helper takes an integer; cgroup sock_addr programs may set
    // the syscall's return value.
    unsafe { bpf_set_retval(-errno) };
    REJECT
}

#[inline(always)]
fn try_reverse(ctx: &SockAddrContext) -> Option<i32> {
    if host_config(ctx).is_none() {
        return Some(ALLOW);
    }
    let sa = ctx.sock_addr;
    // SAFETY: as in `try_forward`: the program's context, through the raw
    // pointer.
    let (addr, user_port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevNat4Key { cookie, addr, port: user_port as u16, _pad: 0 };
    // SAFETY: the reference lives only until the plain-data value is
    // copied out.
    let Some(front) = (unsafe { LB4_SOCK_REVNAT.get(key).copied() }) else {
        return Some(ALLOW);
    };
    // Only while the frontend still exists as recorded.
    match rev_nat(front.frontend_id) {
        Some(rn) if rn.addr == front.addr && rn.port == front.port => {
            // SAFETY: as above.
            unsafe {
                (*sa).user_ip4 = front.addr;
                (*sa).user_port = front.port as u32;
            }
        }
        _ => {
            LB4_SOCK_REVNAT.remove(key).ok()?;
        }
    }
    Some(ALLOW)
}
