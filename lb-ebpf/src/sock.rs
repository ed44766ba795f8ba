//! Socket-level load balancing for clients in the host network namespace.
//!
//! connect4 and sendmsg4 turn a frontend into a backend before the socket
//! ever sends a packet, so host traffic needs no per-packet NAT and no
//! conntrack. recvmsg4 and getpeername4 turn the backend back into the
//! frontend, so the application only ever sees the address it dialled.
//! Only sockets in the node's host namespace are translated (the namespace
//! cookie in `LB_CONFIG`); pods are served by the tc program. The
//! translation itself is [`sock_family`](crate::sock_family)'s, shared with
//! the IPv6 hooks (`sock6`).

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use lb_common::V4;

use crate::{
    select::config,
    sock_family::{forward, reverse},
};

/// Return values of cgroup sock_addr programs.
pub(crate) const ALLOW: i32 = 1;
const REJECT: i32 = 0;
pub(crate) const ECONNREFUSED: i32 = 111;
pub(crate) const EHOSTUNREACH: i32 = 113;
pub(crate) const EPERM: i32 = 1;

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
    let to = forward::<V4>(ctx, &cfg, addr, user_port as u16, protocol as u8)?;
    Some(to.apply(|be, be_port| {
        // SAFETY: as above.
        unsafe {
            (*sa).user_ip4 = be;
            (*sa).user_port = be_port as u32;
        }
    }))
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
    if let Some((front, front_port)) = reverse::<V4>(ctx, addr, user_port as u16)? {
        // SAFETY: as above.
        unsafe {
            (*sa).user_ip4 = front;
            (*sa).user_port = front_port as u32;
        }
    }
    Some(ALLOW)
}
