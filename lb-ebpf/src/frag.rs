//! Fragments, of both families: a translated datagram's later fragments
//! carry no L4 header, so the first fragment's ports and L4 protocol are
//! kept (keyed by the addresses, identification and IPv4's protocol as
//! they arrive at the hook: `LB4_FRAGS`, `LB6_FRAGS`) and lent to the
//! rest, which then take the same conntrack path and get the same
//! addresses. (An IPv6 later fragment's fragment header may name a
//! destination options header, not the protocol.) Fragments are assumed
//! to arrive first fragment first, as Linux sends them; one that arrives
//! before its first fragment finds no ports.

use lb_common::{Frag, Vip4, packet::Fragment, stat, vip_flags};

use crate::{family::FamilyMaps, parse::Flow, stats};

#[inline(always)]
fn key<F: FamilyMaps>(f: &Flow<F>) -> F::FragKey {
    F::frag_key(&f.saddr, &f.daddr, f.ip_id, f.proto)
}

/// Remembers a first fragment's ports for the fragments that follow.
#[inline(always)]
pub fn record<F: FamilyMaps>(f: &Flow<F>) {
    if f.frag == Fragment::First {
        // LRU: an insert only fails on a bad argument. Without the entry
        // the later fragments are dropped as orphans (or passed, where the
        // address is not a Service's alone).
        let _ = F::frag_insert(&key(f), &Frag { sport: f.sport, dport: f.dport, proto: f.proto, _pad: 0 });
    }
}

/// Whether `f` has its ports: a later fragment is lent its datagram's;
/// `false` when its first fragment was not seen here.
#[inline(always)]
pub fn ports<F: FamilyMaps>(f: &mut Flow<F>) -> bool {
    f.frag != Fragment::Later || lend_ports(f)
}

/// Gives a later fragment its datagram's ports and L4 protocol; `false`
/// when the first fragment was not seen here.
#[inline(always)]
fn lend_ports<F: FamilyMaps>(f: &mut Flow<F>) -> bool {
    match F::frag_get(&key(f)) {
        Some(p) => {
            f.sport = p.sport;
            f.dport = p.dport;
            f.proto = p.proto;
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
