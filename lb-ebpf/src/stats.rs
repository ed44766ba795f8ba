//! Per-CPU counters of what the datapath did (`lb_common::stat`) and of
//! what each frontend served (`lb_common::FrontendStats`).

use core::ptr::addr_of_mut;

use crate::maps::{LB_FE_STATS, LB_STATS};

/// Adds one to counter `index` of this CPU.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = LB_STATS.get_ptr_mut(index) {
        // SAFETY: `c` is this CPU's own slot of a per-CPU array, valid and
        // aligned for the program's run. Only programs on this CPU write it
        // (one interrupting another, a tc program during a socket hook, may
        // lose a count, nothing worse) and the agent only reads it: read
        // and written once through the raw pointer, no reference made.
        unsafe { c.write_volatile(c.read_volatile() + 1) };
    }
}

/// Counts a packet of `bytes` bytes to frontend `id`, and a new flow when
/// `new_flow`: the one per-frontend count of a program (tc ingress, XDP).
#[inline(always)]
pub fn frontend_packet(id: u32, bytes: u32, new_flow: bool) {
    if let Some(c) = LB_FE_STATS.get_ptr_mut(id) {
        // SAFETY: as in `count`: this CPU's own slot, fields read and
        // written once each through raw pointers.
        unsafe {
            let p = addr_of_mut!((*c).packets);
            p.write_volatile(p.read_volatile() + 1);
            let b = addr_of_mut!((*c).bytes);
            b.write_volatile(b.read_volatile() + bytes as u64);
            if new_flow {
                let n = addr_of_mut!((*c).new_flows);
                n.write_volatile(n.read_volatile() + 1);
            }
        }
    }
}

/// Counts a new flow (a socket translated at connect or sendmsg time) to
/// frontend `id`: the socket hooks see no packet.
#[inline(always)]
pub fn frontend_socket(id: u32) {
    if let Some(c) = LB_FE_STATS.get_ptr_mut(id) {
        // SAFETY: as in `count`.
        unsafe {
            let n = addr_of_mut!((*c).new_flows);
            n.write_volatile(n.read_volatile() + 1);
        }
    }
}
