//! Why a packet is not translated, for the tc and XDP programs alike: a
//! malformed packet passes untouched, every other error drops it and is
//! counted under its reason (`lb_common::stat`).

use lb_common::stat;

use crate::stats;

pub enum Error {
    /// Too short or not well formed: not ours to judge. It passes
    /// untouched; the kernel's own stack validates and drops garbage.
    Malformed,
    /// A packet write failed half-way: never let it out.
    Rewrite,
    /// A conntrack write failed.
    CtWrite,
    /// No free source port for a new flow (SNAT, or a reply tuple taken).
    NoPort,
    /// A backend slot vanished under a concurrent update.
    NoSlot,
}

impl Error {
    /// Counts a packet dropped for this error and says why (for the log);
    /// `None` when the packet passes instead (`Malformed`).
    #[inline(always)]
    pub fn count_drop(&self) -> Option<&'static str> {
        let (reason, what) = match self {
            Error::Malformed => {
                stats::count(stat::MALFORMED);
                return None;
            }
            Error::Rewrite => (stat::DROP_REWRITE, "translation failed"),
            Error::CtWrite => (stat::DROP_CT_WRITE, "conntrack write failed"),
            Error::NoPort => (stat::DROP_NO_NAT_PORT, "no free source port"),
            Error::NoSlot => (stat::DROP_NO_SLOT, "backend slot missing"),
        };
        stats::count(reason);
        Some(what)
    }
}
