//! Conntrack garbage collection: every `--ct-gc-interval` the agent reads
//! the conntrack maps of both families (`LB4_CT_*`, `LB6_CT_*`, in
//! batches) and deletes, both directions at once, the flows that:
//! - timed out, judged on both directions together (a live flow is never
//!   collected; a half-open one goes at the SYN timeout);
//! - belong to a removed frontend or backend (the datapath already ignores
//!   them: their slot versions moved on);
//! - were queued for purging: flows of a frontend to a backend it no longer
//!   uses while other frontends still do.
//!
//! Affinity entries of removed or purged backends go the same way (those
//! of IPv6 frontends, which the socket hooks keep in the same map, judged
//! against the IPv6 backend IDs). One pass, written over the family
//! (`MapFamily`), serves both; a flow is judged against its own family's
//! backend IDs (frontend IDs are shared).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr},
};

use lb_common::{CT_SERVICE, CtEntryOf, CtKeyOf, CtTimeouts, ct};

use super::{CtKey, CtValue, FrontendRef, MapFamily, MapStore, Reconciler, ids::Ids};
use crate::maps::MapsError;

/// How full one conntrack map is after a collection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CtFill {
    /// The map's name (`LB4_CT_TCP`, ...).
    pub map: &'static str,
    /// The agent flag that sizes it.
    pub size_flag: &'static str,
    pub remaining: usize,
    pub capacity: u32,
}

/// What one conntrack garbage collection did.
#[derive(Debug, Default, Clone, Copy)]
pub struct GcStats {
    pub scanned: usize,
    /// Entries deleted, for any reason.
    pub deleted: usize,
    /// Of those: flows of a removed frontend or backend.
    pub invalid: usize,
    /// Of those: flows purged because their backend left their frontend.
    pub purged: usize,
    /// Entries left in all the conntrack maps.
    pub remaining: usize,
    /// Entries left in each map, and its capacity: the fill levels
    /// (`LB4_CT_TCP`, `LB4_CT_ANY`, `LB6_CT_TCP`, `LB6_CT_ANY`).
    pub fills: [CtFill; 4],
    /// Affinity entries deleted (their backend is gone or was purged).
    pub affinity_deleted: usize,
    /// Entries judged to go that had changed when read again just before
    /// the delete (a flow the datapath reopened on the same tuple
    /// meanwhile): left alone.
    pub changed: usize,
}

/// Why a flow goes, if it does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Keep,
    Expired,
    Invalid,
    Purged,
}

/// A conntrack entry to delete, why, and the entry as it was judged.
#[derive(Clone, Copy)]
struct Doomed<K, V> {
    key: K,
    verdict: Verdict,
    seen: V,
}

/// A doomed entry of family `A`'s conntrack.
type DoomedCt<A> = Doomed<CtKey<A>, CtValue<A>>;

/// What one pass over a conntrack map found.
struct Judged<K, V> {
    /// Entries read.
    scanned: usize,
    doomed: Vec<Doomed<K, V>>,
}

impl<M: MapStore> Reconciler<M> {
    /// One collection pass as of `now_ns` on CLOCK_MONOTONIC (the
    /// datapath's `bpf_ktime_get_ns`).
    pub fn collect_conntrack(&mut self, timeouts: &CtTimeouts, now_ns: u64) -> Result<GcStats, MapsError> {
        let purge = std::mem::take(&mut self.pending_purge);
        let result = self.collect(timeouts, now_ns, &purge);
        if result.is_err() {
            // Try again next time.
            self.pending_purge.extend(purge);
        }
        result
    }

    fn collect(&mut self, timeouts: &CtTimeouts, now_ns: u64, purge: &BTreeSet<FrontendRef>) -> Result<GcStats, MapsError> {
        // The backends each queued frontend may still use.
        // Frontend IDs are shared by both families, so one map serves both.
        let allowed: HashMap<u32, &BTreeSet<u32>> = self
            .fam
            .v4
            .frontends
            .values()
            .map(|f| (f.id, f.version, &f.allowed))
            .chain(self.fam.v6.frontends.values().map(|f| (f.id, f.version, &f.allowed)))
            .filter(|(id, version, _)| purge.contains(&FrontendRef { id: *id, version: *version }))
            .map(|(id, _, allowed)| (id, allowed))
            .collect();
        let mut stats = GcStats::default();
        let ids = (&self.frontend_ids, &allowed);
        let [v4_tcp, v4_any] = collect_family::<Ipv4Addr, M>(&mut self.maps, ids, &self.fam.v4.backend_ids, timeouts, now_ns, &mut stats)?;
        let [v6_tcp, v6_any] = collect_family::<Ipv6Addr, M>(&mut self.maps, ids, &self.fam.v6.backend_ids, timeouts, now_ns, &mut stats)?;
        stats.fills = [v4_tcp, v4_any, v6_tcp, v6_any];
        stats.remaining = stats.fills.iter().map(|f| f.remaining).sum();

        let backend_ids = &self.fam.v4.backend_ids;
        let affinity = self.maps.affinity()?;
        let ids6: HashSet<u32> = self.fam.v6.frontends.values().map(|f| f.id).collect();
        let gone: Vec<_> = affinity
            .iter()
            .filter(|(k, a)| {
                let backend_ids = if ids6.contains(&k.frontend_id) { &self.fam.v6.backend_ids } else { backend_ids };
                !backend_ids.holds(a.backend_id, a.backend_version)
                    || !self.frontend_ids.holds(k.frontend_id, k.frontend_version)
                    || allowed.get(&k.frontend_id).is_some_and(|s| !s.contains(&a.backend_id))
            })
            .map(|(k, _)| *k)
            .collect();
        stats.affinity_deleted = self.maps.remove_affinity(&gone)?;
        Ok(stats)
    }
}

/// Collects family `A`'s two conntrack maps into `stats`, judging flows
/// against the (shared) frontend IDs, the purge queue's allowed backends
/// (`ids`) and the family's `backend_ids`; returns the maps' fill levels.
fn collect_family<A: MapFamily, M: MapStore>(
    maps: &mut M,
    (frontend_ids, allowed): (&Ids, &HashMap<u32, &BTreeSet<u32>>),
    backend_ids: &Ids,
    timeouts: &CtTimeouts,
    now_ns: u64,
    stats: &mut GcStats,
) -> Result<[CtFill; 2], MapsError> {
    let judge = |e: &CtValue<A>| {
        if !frontend_ids.holds(e.frontend_id, e.frontend_version) || !backend_ids.holds(e.backend_id, e.backend_version) {
            Verdict::Invalid
        } else if allowed.get(&e.frontend_id).is_some_and(|a| !a.contains(&e.backend_id)) {
            Verdict::Purged
        } else {
            Verdict::Keep
        }
    };
    let mut fills = [CtFill::default(); 2];
    for (fill, (map, kind, size_flag)) in fills.iter_mut().zip(A::CT) {
        let Judged { scanned, doomed } = judge_pairs(maps.ct_entries::<A>(map)?, timeouts, now_ns, &judge);
        let (doomed, changed) = unchanged::<A, M>(maps, map, doomed)?;
        stats.changed += changed;
        let keys: Vec<CtKey<A>> = doomed.iter().map(|d| d.key).collect();
        let deleted = maps.remove_ct::<A>(map, &keys)?;
        stats.scanned += scanned;
        stats.deleted += deleted;
        stats.invalid += doomed.iter().filter(|d| d.verdict == Verdict::Invalid).count();
        stats.purged += doomed.iter().filter(|d| d.verdict == Verdict::Purged).count();
        *fill = CtFill { map: kind.name(), size_flag, remaining: scanned.saturating_sub(deleted), capacity: maps.max_entries(kind) };
    }
    Ok(fills)
}

/// Those of `doomed` whose entry is still as it was judged, read again one
/// by one, and how many had changed. The maps are read in batches while
/// the datapath writes them: a timed-out flow reopened on the same tuple
/// (the datapath overwrites its entries) is a new flow by the time the
/// delete comes, and must stay. (A write between this read and the
/// delete can still be lost; the window is one lookup, not a whole scan.)
fn unchanged<A: MapFamily, M: MapStore>(
    maps: &M,
    map: super::CtMap,
    doomed: Vec<DoomedCt<A>>,
) -> Result<(Vec<DoomedCt<A>>, usize), MapsError> {
    let mut keep = Vec::with_capacity(doomed.len());
    let mut changed = 0;
    for d in doomed {
        match maps.ct_entry::<A>(map, &d.key)? {
            Some(now) if now == d.seen => keep.push(d),
            Some(_) => changed += 1,
            // Gone already (LRU eviction, or the datapath's own removal).
            None => {}
        }
    }
    Ok((keep, changed))
}

/// The flows of one map's `entries` to delete (both directions), with why,
/// judged on both directions together.
fn judge_pairs<A: Copy + Eq + Hash>(
    entries: Vec<(CtKeyOf<A>, CtEntryOf<A>)>,
    timeouts: &CtTimeouts,
    now_ns: u64,
    judge: &impl Fn(&CtEntryOf<A>) -> Verdict,
) -> Judged<CtKeyOf<A>, CtEntryOf<A>> {
    let entries: HashMap<CtKeyOf<A>, CtEntryOf<A>> = entries.into_iter().collect();
    let mut doomed: HashSet<CtKeyOf<A>> = HashSet::new();
    let mut out = Vec::new();
    for (key, entry) in &entries {
        if doomed.contains(key) {
            continue;
        }
        let twin_key = entry.twin_key(key);
        let twin = entries.get(&twin_key);
        let proto = key.proto;
        let (state, last_seen) = match twin {
            Some(t) => {
                let (fwd, reply) = if key.dir == CT_SERVICE { (entry, t) } else { (t, entry) };
                (ct::state(proto, fwd.tcp_flags, reply.tcp_flags), entry.last_seen.max(t.last_seen))
            }
            None => (ct::entry_state(proto, key.dir, entry), entry.last_seen),
        };
        let verdict = match judge(entry) {
            Verdict::Keep if ct::expired(timeouts, state, last_seen, now_ns) => Verdict::Expired,
            v => v,
        };
        if verdict == Verdict::Keep {
            continue;
        }
        for k in [*key, twin_key] {
            if let Some(seen) = entries.get(&k)
                && doomed.insert(k)
            {
                out.push(Doomed { key: k, verdict, seen: *seen });
            }
        }
    }
    Judged { scanned: entries.len(), doomed: out }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lb_common::{CT_REPLY, CT_SERVICE, Ct4Key, CtEntry, CtTimeouts, IPPROTO_UDP};

    use super::{Verdict, judge_pairs, unchanged};
    use crate::reconcile::{MapStore, fake::FakeMaps, store::CtMap};

    const S: u64 = 1_000_000_000;

    fn entry(nat_saddr: u32, nat_daddr: u32, nat_sport: u16, nat_dport: u16, last_seen: u64) -> CtEntry {
        CtEntry { last_seen, nat_saddr, nat_daddr, nat_sport, nat_dport, backend_id: 1, frontend_id: 1, ..CtEntry::default() }
    }

    /// A UDP flow judged timed out, then reopened by the datapath on the
    /// same tuple (its forward entry overwritten) before the delete: the
    /// new forward entry stays; the old reply entry, unchanged, goes.
    #[test]
    fn an_entry_the_datapath_rewrote_after_the_scan_is_not_deleted() {
        let (client, vip, backend) = (0x0a00_0001u32, 0x0a60_000au32, 0x0af4_0005u32);
        let fwd_key = Ct4Key::new(client, vip, 4000, 53, IPPROTO_UDP, CT_SERVICE);
        let reply_key = Ct4Key::new(backend, client, 5353, 4000, IPPROTO_UDP, CT_REPLY);
        let old_fwd = entry(client, backend, 4000, 5353, S);
        let old_reply = entry(vip, client, 53, 4000, S);
        let mut maps = FakeMaps::default();
        maps.insert_ct(&fwd_key, &old_fwd);
        maps.insert_ct(&reply_key, &old_reply);
        let timeouts = CtTimeouts { tcp_syn: 60, tcp_established: 3600, tcp_closing: 10, udp: 30 };
        let now = 100 * S;
        let judged = judge_pairs(maps.ct_entries::<Ipv4Addr>(CtMap::Any).unwrap(), &timeouts, now, &|_| Verdict::Keep);
        assert_eq!(judged.doomed.len(), 2, "both directions timed out");
        // The client sends again: a new flow over the old forward entry
        // (to another backend port, its reply tuple elsewhere).
        let new_fwd = entry(client, backend, 4000, 5354, now);
        maps.insert_ct(&fwd_key, &new_fwd);
        let (doomed, changed) = unchanged::<Ipv4Addr, FakeMaps>(&maps, CtMap::Any, judged.doomed).unwrap();
        assert_eq!(changed, 1);
        let keys: Vec<Ct4Key> = doomed.iter().map(|d| d.key).collect();
        assert_eq!(keys, [reply_key]);
        assert_eq!(maps.ct_entry::<Ipv4Addr>(CtMap::Any, &fwd_key).unwrap(), Some(new_fwd));
    }
}
