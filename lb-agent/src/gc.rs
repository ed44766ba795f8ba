//! Periodic conntrack garbage collection.

use lb_common::CtTimeouts;
use tracing::{debug, warn};

use crate::reconcile::{MapStore, Reconciler};

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How full a conntrack map is after a collection.
struct Fill {
    name: &'static str,
    left: usize,
    capacity: u32,
    /// The flag that sizes it.
    flag: &'static str,
}

/// One collection pass; logs what it did and the tables' fill levels.
pub fn collect<M: MapStore>(reconciler: &mut Reconciler<M>, timeouts: &CtTimeouts) {
    match reconciler.collect_conntrack(timeouts, monotonic_ns()) {
        Ok(gc) => {
            debug!(
                scanned = gc.scanned,
                deleted = gc.deleted,
                tcp_entries = gc.tcp_remaining,
                tcp_capacity = gc.tcp_capacity,
                other_entries = gc.any_remaining,
                other_capacity = gc.any_capacity,
                "conntrack garbage collected"
            );
            let fills = [
                Fill { name: lb_common::names::CT_TCP, left: gc.tcp_remaining, capacity: gc.tcp_capacity, flag: "--ct-tcp-size" },
                Fill { name: lb_common::names::CT_ANY, left: gc.any_remaining, capacity: gc.any_capacity, flag: "--ct-any-size" },
            ];
            for Fill { name, left, capacity, flag } in fills {
                let fill = left as f64 * 100.0 / capacity.max(1) as f64;
                if fill > 90.0 {
                    warn!(
                        "conntrack map {name} is {fill:.0}% full ({left} of {capacity}): the oldest flows are being evicted; raise {flag}"
                    );
                }
            }
        }
        Err(e) => warn!("conntrack garbage collection: {e}"),
    }
}
