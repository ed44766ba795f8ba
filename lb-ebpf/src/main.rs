//! lb datapath: per-packet service load balancing in the kernel.
//!
//! - `lb_tc`: tc ingress on the host side of pod interfaces. DNAT to a
//!   backend for packets to a frontend, reverse NAT for replies.
//! - `lb_connect4`, `lb_sendmsg4`, `lb_recvmsg4`, `lb_getpeername4`: socket
//!   hooks that translate at connect time for clients in the host namespace.
//! - `lb_xdp_pass`: an XDP program that does nothing (the benchmark floor).
#![no_std]
#![no_main]

mod lookup;
mod maps;
mod packet;
mod sock;
mod tc;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
