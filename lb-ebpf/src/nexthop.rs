//! The FIB's answers kept for forwarded north-south packets, and for BPF
//! host routing's redirects into pods (`LB_NEXTHOPS`, see
//! `lb_common::NextHop`): an established flow's packets to a backend on
//! another node or in a pod of this node, and their replies to clients,
//! skip `bpf_fib_lookup` while the answer is fresh and the packet no
//! longer than one the FIB passed.

use aya_ebpf::bindings::{BPF_ANY, bpf_fib_lookup as FibParams};
use lb_common::{NextHop, NextHopKey};

use crate::maps::LB_NEXTHOPS;

/// The kept answer for `key` that serves a packet of `len` bytes at
/// `now`, written into the FIB parameters `p` (egress interface, MACs);
/// `false`: ask the FIB.
#[inline(always)]
pub fn answer(key: &NextHopKey, len: u16, now: u64, p: &mut FibParams) -> bool {
    // SAFETY: the fields are copied out at once; entries are replaced
    // whole by map updates.
    let Some(h) = (unsafe { LB_NEXTHOPS.get(key) }) else {
        return false;
    };
    if !h.serves(len, now) {
        return false;
    }
    p.ifindex = h.ifindex;
    p.smac = h.smac;
    p.dmac = h.dmac;
    true
}

/// Keeps the FIB's successful answer `p` for `key` (a packet of `len`
/// bytes at `now`).
#[inline(always)]
pub fn remember(key: &NextHopKey, len: u16, now: u64, p: &FibParams) {
    let mut h = NextHop::fresh(now, len, p.ifindex, p.smac, p.dmac);
    remember_in(key, &mut h);
}

/// [`remember`] of the answer `h` (from `NextHop::fresh`), in memory of
/// the caller's choice: tc's host routing keeps it off its stack.
#[inline(always)]
pub fn remember_in(key: &NextHopKey, h: &mut NextHop) {
    // (No `Option<NextHop>` copy: LLVM left a path of it reading an
    // uninitialised register, which the verifier refuses.)
    // SAFETY: as in `answer`.
    if let Some(old) = unsafe { LB_NEXTHOPS.get(key) } {
        *h = h.after(old);
    }
    // LRU: an insert only fails on a bad argument; without the entry the
    // next packet asks the FIB again.
    let _ = LB_NEXTHOPS.insert(key, h, BPF_ANY as u64);
}
