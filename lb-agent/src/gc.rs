//! Periodic conntrack garbage collection.

use lb_common::CtTimeouts;
use tracing::{debug, warn};

use crate::reconcile::Reconciler;

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One collection pass; logs what it did and the table's fill level.
pub fn collect(reconciler: &mut Reconciler, timeouts: &CtTimeouts) {
    match reconciler.collect_conntrack(timeouts, monotonic_ns()) {
        Ok(gc) => {
            let fill = gc.remaining as f64 * 100.0 / gc.capacity.max(1) as f64;
            debug!(
                scanned = gc.scanned,
                deleted = gc.deleted,
                entries = gc.remaining,
                capacity = gc.capacity,
                fill_percent = format!("{fill:.1}"),
                "conntrack garbage collected"
            );
            if fill > 90.0 {
                warn!(
                    "conntrack map {} is {fill:.0}% full ({} of {}): the oldest flows are being evicted; raise --ct-size",
                    lb_common::names::CT,
                    gc.remaining,
                    gc.capacity
                );
            }
        }
        Err(e) => warn!("conntrack garbage collection: {e}"),
    }
}
