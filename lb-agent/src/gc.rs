//! Periodic conntrack garbage collection (both families' conntrack maps:
//! `Reconciler::collect_conntrack`), and the fill levels it warns about.

use lb_common::CtTimeouts;
use tracing::{debug, warn};

use crate::reconcile::{CtFill, MapStore, Reconciler};

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One collection pass; logs what it did and the tables' fill levels.
pub fn collect<M: MapStore>(reconciler: &mut Reconciler<M>, timeouts: &CtTimeouts) {
    match reconciler.collect_conntrack(timeouts, monotonic_ns()) {
        Ok(gc) => {
            debug!(
                scanned = gc.scanned,
                deleted = gc.deleted,
                changed = gc.changed,
                remaining = gc.remaining,
                "conntrack garbage collected"
            );
            for CtFill { map, size_flag, remaining, capacity } in gc.fills {
                debug!(map, entries = remaining, capacity, "conntrack fill");
                let fill = remaining as f64 * 100.0 / capacity.max(1) as f64;
                if fill > 90.0 {
                    warn!(
                        "conntrack map {map} is {fill:.0}% full ({remaining} of {capacity}): the oldest flows are being evicted; raise {size_flag}"
                    );
                }
            }
        }
        Err(e) => warn!("conntrack garbage collection: {e}"),
    }
}
