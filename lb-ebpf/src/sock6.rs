//! Socket-level load balancing over IPv6 (see `sock` for IPv4): the same
//! translation ([`sock_family`](crate::sock_family)) for IPv6 frontends,
//! and for the IPv4-mapped addresses (`::ffff:a.b.c.d`) through which a
//! dual-stack socket reaches IPv4: those go through the IPv4 frontends and
//! the backend is written back mapped.

use core::ptr::{addr_of, addr_of_mut};

use aya_ebpf::{bindings::bpf_sock_addr, macros::cgroup_sock_addr, programs::SockAddrContext};
use lb_common::{Addr6, V4, V6, map_v4, v4_mapped};

use crate::{
    sock::{ALLOW, host_config, verdict},
    sock_family::{Forward, forward, reverse},
};

#[cgroup_sock_addr(connect6)]
pub fn lb_connect6(ctx: SockAddrContext) -> i32 {
    verdict(&ctx, try_forward6(&ctx))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn lb_sendmsg6(ctx: SockAddrContext) -> i32 {
    verdict(&ctx, try_forward6(&ctx))
}

#[cgroup_sock_addr(recvmsg6)]
pub fn lb_recvmsg6(ctx: SockAddrContext) -> i32 {
    verdict(&ctx, try_reverse6(&ctx))
}

#[cgroup_sock_addr(getpeername6)]
pub fn lb_getpeername6(ctx: SockAddrContext) -> i32 {
    verdict(&ctx, try_reverse6(&ctx))
}

/// `user_ip6`, word by word.
///
/// # Safety
/// `sa` is the program's context.
#[inline(always)]
unsafe fn read_ip6(sa: *const bpf_sock_addr) -> Addr6 {
    // The verifier accepts only 4-byte accesses to `user_ip6` (or 8-byte
    // ones at an 8-byte offset): one volatile access per word, so that the
    // compiler can neither merge nor split them.
    // SAFETY: the caller's context pointer; each access is a field of it.
    unsafe {
        [
            addr_of!((*sa).user_ip6[0]).read_volatile(),
            addr_of!((*sa).user_ip6[1]).read_volatile(),
            addr_of!((*sa).user_ip6[2]).read_volatile(),
            addr_of!((*sa).user_ip6[3]).read_volatile(),
        ]
    }
}

/// Sets `user_ip6` and `user_port`, word by word (as [`read_ip6`]).
///
/// # Safety
/// `sa` is the program's context.
#[inline(always)]
unsafe fn write_addr6(sa: *mut bpf_sock_addr, addr: Addr6, port: u16) {
    // SAFETY: as in `read_ip6`.
    unsafe {
        addr_of_mut!((*sa).user_ip6[0]).write_volatile(addr[0]);
        addr_of_mut!((*sa).user_ip6[1]).write_volatile(addr[1]);
        addr_of_mut!((*sa).user_ip6[2]).write_volatile(addr[2]);
        addr_of_mut!((*sa).user_ip6[3]).write_volatile(addr[3]);
        addr_of_mut!((*sa).user_port).write_volatile(port as u32);
    }
}

#[inline(always)]
fn try_forward6(ctx: &SockAddrContext) -> Option<i32> {
    let Some(cfg) = host_config(ctx) else {
        return Some(ALLOW);
    };
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the program's context, read through the raw pointer.
    let (addr, user_port, protocol) = unsafe { (read_ip6(sa), (*sa).user_port, (*sa).protocol) };
    // The port sits in network order in the low 16 bits.
    let port = user_port as u16;
    let proto = protocol as u8;
    let to = match v4_mapped(&addr) {
        Some(addr4) => match forward::<V4>(ctx, &cfg, addr4, port, proto)? {
            Forward::Pass => Forward::Pass,
            Forward::Refuse(errno) => Forward::Refuse(errno),
            Forward::To(be, be_port) => Forward::To(map_v4(be), be_port),
        },
        None => forward::<V6>(ctx, &cfg, addr, port, proto)?,
    };
    // SAFETY: the program's context.
    Some(to.apply(|be, be_port| unsafe { write_addr6(sa, be, be_port) }))
}

#[inline(always)]
fn try_reverse6(ctx: &SockAddrContext) -> Option<i32> {
    if host_config(ctx).is_none() {
        return Some(ALLOW);
    }
    let sa = ctx.sock_addr;
    // SAFETY: as in `try_forward6`.
    let (addr, user_port) = unsafe { (read_ip6(sa), (*sa).user_port) };
    let port = user_port as u16;
    let front = match v4_mapped(&addr) {
        Some(addr4) => reverse::<V4>(ctx, addr4, port)?.map(|(a, p)| (map_v4(a), p)),
        None => reverse::<V6>(ctx, addr, port)?,
    };
    if let Some((front, front_port)) = front {
        // SAFETY: as above.
        unsafe { write_addr6(sa, front, front_port) };
    }
    Some(ALLOW)
}
