//! IPv4 fragments: a translated datagram's later fragments carry no L4
//! header, so the first fragment's ports are kept (keyed by the addresses,
//! IP ID and protocol as they arrive at the hook) and lent to the rest,
//! which then take the same conntrack path and get the same addresses.
//! Fragments are assumed to arrive first fragment first, as Linux sends
//! them; one that arrives before its first fragment finds no ports.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{Frag4, Frag4Key, Vip4, packet::Fragment, stat, vip_flags};

use crate::{maps::LB4_FRAGS, parse::Flow, stats};

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
        let _ = LB4_FRAGS.insert(key(f), Frag4 { sport: f.sport, dport: f.dport }, BPF_ANY as u64);
    }
}

/// Whether `f` has its ports: a later fragment is lent its datagram's;
/// `false` when its first fragment was not seen here.
#[inline(always)]
pub fn ports(f: &mut Flow) -> bool {
    f.frag != Fragment::Later || lend_ports(f)
}

/// Gives a later fragment its datagram's ports; `false` when the first
/// fragment was not seen here.
#[inline(always)]
pub fn lend_ports(f: &mut Flow) -> bool {
    // SAFETY: the reference lives only until the value is copied out;
    // entries are replaced whole by map updates, never written in place.
    match unsafe { LB4_FRAGS.get(key(f)) }.copied() {
        Some(p) => {
            f.sport = p.sport;
            f.dport = p.dport;
            true
        }
        None => false,
    }
}

/// Whether a later fragment to frontend address `v` whose first fragment
/// was not seen (or whose flow is gone) is dropped: where the address
/// belongs to Services alone (routing it on untranslated would send it who
/// knows where), counted. Elsewhere it passes: a node address has other
/// traffic.
#[inline(always)]
pub fn orphan_dropped(v: &Vip4) -> bool {
    if v.flags & vip_flags::VIRTUAL != 0 {
        stats::count(stat::DROP_ORPHAN_FRAGMENT);
        true
    } else {
        false
    }
}
