//! Per-CPU counters of what the datapath did (`lb_common::stat`).

use crate::maps::LB_STATS;

/// Adds one to counter `index` of this CPU.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = LB_STATS.get_ptr_mut(index) {
        // SAFETY: this CPU's own slot of a per-CPU array: nothing else
        // writes it while the program runs (no preemption inside it).
        unsafe { *c += 1 };
    }
}
