//! Per-CPU counters of what the datapath did (`lb_common::stat`).

use crate::maps::LB_STATS;

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
