//! The datapath's clock: CLOCK_MONOTONIC_COARSE, in ns, read through a
//! per-CPU copy that is good for the tick it was read in (`LB_CLOCK`).
//!
//! The coarse clock moves once per tick (1-10 ms), which every timeout it
//! serves (seconds) and the agent's garbage collection (on
//! CLOCK_MONOTONIC) can afford, and it lets a flow's `last_seen` be
//! written once per tick instead of once per packet.
//!
//! The kernel constraint that shaped this: `bpf_ktime_get_coarse_ns` is a
//! helper call, and on this project's benchmark host (retpolines, SRSO
//! "Safe RET") a call and its return cost an established packet 15-20 ns
//! of its 100-190 (B1, 2026-12-05). `bpf_jiffies64` is no call: the
//! verifier turns it into a load of `jiffies_64` (JITed 64-bit programs),
//! and a per-CPU array lookup is inlined too. So each packet reads
//! jiffies, and only the first packet of a tick on a CPU calls the
//! helper; the rest take the value that packet kept.
//!
//! Both clocks move in the same tick (`tick_do_update_jiffies64`: jiffies,
//! then the timekeeper the coarse clock reads). A CPU that reads the new
//! jiffies between the two keeps the last tick's time for this tick: the
//! value then lags CLOCK_MONOTONIC by at most two ticks, not one. Copies
//! on different CPUs may differ by that tick, so a later packet on another
//! CPU may read a time a tick before one already recorded; every reader
//! of a recorded time takes that (`ct::expired`, the reject rate's
//! refill, affinity and kept next hops compare without underflow).

use core::ptr::addr_of_mut;

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use crate::maps::LB_CLOCK;

/// One CPU's copy of the clock (`LB_CLOCK`): the coarse clock's value
/// `ns`, read in tick `jiffies`.
#[repr(C)]
pub struct Clock {
    pub jiffies: u64,
    pub ns: u64,
}

/// CLOCK_MONOTONIC_COARSE in ns (see the module's text).
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments (inlined by the verifier).
    let tick = unsafe { bpf_jiffies64() };
    let Some(c) = LB_CLOCK.get_ptr_mut(0) else {
        // SAFETY: a helper without arguments.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's slot of a per-CPU array, plain integers. A
    // program in process context (the socket hooks) can be interrupted on
    // its CPU by one in softirq, which uses the same slot: `ns` is written
    // before `jiffies`, and `jiffies` is read before `ns`, so a reader that
    // finds this tick's `jiffies` finds a time read in this tick or later,
    // never an older copy's. (Volatile: the order is kept as written.)
    unsafe {
        if addr_of_mut!((*c).jiffies).read_volatile() == tick {
            return addr_of_mut!((*c).ns).read_volatile();
        }
        let ns = bpf_ktime_get_coarse_ns();
        addr_of_mut!((*c).ns).write_volatile(ns);
        addr_of_mut!((*c).jiffies).write_volatile(tick);
        ns
    }
}
