//! IPv4 fragments: a translated datagram's later fragments carry no L4
//! header, so the first fragment's ports are kept (keyed by the addresses,
//! IP ID and protocol as they arrive at the hook) and lent to the rest,
//! which then take the same conntrack path and get the same addresses.
//! Fragments are assumed to arrive first fragment first, as Linux sends
//! them; one that arrives before its first fragment finds no ports.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{Frag4, Frag4Key, packet::Fragment};

use crate::{maps::LB4_FRAGS, parse::Flow};

#[inline(always)]
fn key(f: &Flow) -> Frag4Key {
    Frag4Key { saddr: f.saddr, daddr: f.daddr, id: f.ip_id, proto: f.proto, _pad: 0 }
}

/// Remembers a first fragment's ports for the fragments that follow.
#[inline(always)]
pub fn record(f: &Flow) {
    if f.frag == Fragment::First {
        // LRU: an insert only fails on a bad argument. Without the entry
        // the later fragments are dropped as orphans (or passed, where the
        // address is not a Service's alone).
        let _ = LB4_FRAGS.insert(&key(f), &Frag4 { sport: f.sport, dport: f.dport }, BPF_ANY as u64);
    }
}

/// Gives a later fragment its datagram's ports; `false` when the first
/// fragment was not seen here.
#[inline(always)]
pub fn lend_ports(f: &mut Flow) -> bool {
    // SAFETY: read once and copied.
    match unsafe { LB4_FRAGS.get(&key(f)) }.copied() {
        Some(p) => {
            f.sport = p.sport;
            f.dport = p.dport;
            true
        }
        None => false,
    }
}
