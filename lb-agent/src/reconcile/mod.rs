//! Writes the difference between the desired state and the maps.
//!
//! Ordering rules, so that no packet ever sees a half-written service:
//! - a frontend's address goes into `LB4_VIPS` before the frontend;
//! - backends are written before any slot points at them;
//! - a frontend's slots are written into the generation that is not live,
//!   then one update of the frontend entry flips `count` and `generation`
//!   together; the old generation is deleted a sync later, so a packet that
//!   read the frontend just before the flip still finds its slots;
//! - on removal the frontend entry goes first, then its slots, name and
//!   rev-NAT slot, and backends last once nothing points at them.
//!
//! Flows are never walked on a sync. Frontend and backend IDs are slots of
//! arrays with a version each (`ids`); a conntrack entry names both with
//! the versions it saw, so the datapath treats the flows of a removed
//! frontend or backend as gone from the moment the slot is freed, and
//! garbage collection deletes them. Only a backend that leaves one frontend
//! but stays in use by another needs its flows of that frontend purged:
//! that is done by the next garbage collection (`gc`).
//!
//! IDs are recovered from the maps at start, so an agent restart changes
//! nothing that live flows depend on. A failed write (a full map) is
//! reported and leaves the previous state of that frontend in place: the
//! agent never flushes working state because of an error.
//!
//! Parts: [`ids`] (ID and version allocation), [`backends`] (backend
//! entries and their use counts), [`frontends`] (frontend entries, slots,
//! Maglev tables), [`gc`] (conntrack garbage collection and deferred
//! purges), [`ranges`] (loadBalancerSourceRanges).

mod backends;
mod frontends;
mod gc;
pub mod ids;
mod ranges;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{BuildHasher, Hash, Hasher},
    net::Ipv4Addr,
};

use lb_common::{SCOPE_EXTERNAL, SlotKey, sizes};
use tracing::debug;

pub use self::gc::GcStats;
use self::{
    backends::{InstalledBackend, Refs, Use},
    frontends::Installed,
    ids::Ids,
};
use crate::{
    maglev,
    maps::{Maps, MapsError, svc_name_str},
    model::{BackendAddr, Desired, Frontend, FrontendAddr, Protocol},
    vips::Vips,
};

/// What one `apply` did.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Map updates and deletes issued.
    pub ops: u64,
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    /// Maglev tables built and written (whole, or the slots that changed).
    pub maglev_tables: usize,
    /// Frontends whose flows to a backend they no longer use (but another
    /// frontend still does) wait for the next garbage collection.
    pub purges_queued: usize,
    /// Frontends or backends that could not be written, with why.
    pub errors: Vec<String>,
}

pub struct Reconciler {
    maps: Maps,
    frontends: BTreeMap<FrontendAddr, Installed>,
    backends: BTreeMap<BackendAddr, InstalledBackend>,
    frontend_ids: Ids,
    backend_ids: Ids,
    /// Backend addresses by ID (the IDs in use).
    backend_addrs: HashMap<u32, BackendAddr>,
    maglev_m: u32,
    /// This node's name: endpoints on it get `backend_flags::LOCAL`.
    node_name: Option<String>,
    /// Installed loadBalancerSourceRanges entries, by frontend ID.
    src_ranges: BTreeMap<u32, BTreeSet<(u32, u32)>>,
    /// Uses of each backend by installed frontends. An `apply` only looks
    /// at frontends whose digest changed, so this is what tells it which
    /// backends are still needed without walking every frontend.
    refs: HashMap<BackendAddr, Refs>,
    /// After recovery: remove backends nothing uses once the first `apply`
    /// has counted every frontend.
    scan_unused: bool,
    /// `LB4_VIPS`, counted from the installed frontends.
    vips: Vips,
    /// Frontends (by ID, with the version) whose set of allowed backends
    /// lost a backend that is still installed: their flows to it are
    /// deleted by the next garbage collection.
    pending_purge: BTreeSet<(u32, u16)>,
    /// Frontends whose allowed set lost members in this apply (ID, the
    /// backends removed).
    shrunk: Vec<(u32, Vec<u32>)>,
    /// Slots of generations that stopped being live, deleted at the start
    /// of the next apply.
    stale_slots: Vec<SlotKey>,
    hasher: foldhash::quality::FixedState,
}

impl Reconciler {
    /// Takes over whatever the pinned maps hold: IDs and their versions,
    /// generations, slots. Leftovers of an interrupted run (slots of a
    /// dead generation, rev-NAT slots without a frontend) are cleaned up.
    pub fn recover(mut maps: Maps) -> Result<Self, MapsError> {
        let mut backends = BTreeMap::new();
        let backend_slots = maps.backends.slots()?;
        let backend_ids = Ids::recover(
            maps.backends.max_entries,
            backend_slots.iter().map(|(id, b)| (*id, b.addr != 0, b.version)),
        );
        for (id, be) in &backend_slots {
            if be.addr == 0 {
                continue;
            }
            let Some(proto) = Protocol::from_number(be.proto) else {
                continue;
            };
            let addr = BackendAddr { ip: Ipv4Addr::from(be.addr.to_ne_bytes()), port: u16::from_be(be.port), proto };
            backends.insert(addr, InstalledBackend { id: *id, flags: be.flags, version: be.version });
        }
        let backend_by_id: HashMap<u32, BackendAddr> = backends.iter().map(|(a, b)| (b.id, *a)).collect();
        let revnat_slots = maps.revnat.slots()?;
        let mut frontends = BTreeMap::new();
        let mut live_slots = BTreeSet::new();
        for (key, value) in maps.services.entries()? {
            let Some(addr) = FrontendAddr::from_key(&key) else {
                continue;
            };
            if key.scope != SCOPE_EXTERNAL {
                continue;
            }
            let mut slots = Vec::with_capacity(value.count as usize);
            for slot in 0..value.count {
                let k = SlotKey { svc_id: value.id, slot, generation: value.generation };
                live_slots.insert(k);
                if let Some(s) = maps.slots.get(&k)? {
                    slots.push(s.backend_id);
                }
            }
            let name = maps.names.get(&lb_common::RevNatKey { id: value.id })?.map(|n| svc_name_str(&n)).unwrap_or_default();
            let uses: Vec<Use> = slots
                .iter()
                .filter_map(|id| backend_by_id.get(id))
                .map(|a| (*a, backends.get(a).map_or(0, |b: &InstalledBackend| b.flags)))
                .collect();
            let version = revnat_slots.iter().find(|(id, _)| *id == value.id).map_or(0, |(_, r)| r.version);
            frontends.insert(
                addr,
                Installed {
                    id: value.id,
                    version,
                    generation: value.generation,
                    allowed: slots.iter().copied().collect(),
                    slots,
                    flags: value.flags,
                    affinity_timeout: value.affinity_timeout,
                    name,
                    // Unknown after a restart: the first apply rebuilds it.
                    maglev_m: 0,
                    digest: 0,
                    uses,
                },
            );
        }
        let live_ids: BTreeSet<u32> = frontends.values().map(|f| f.id).collect();
        let frontend_ids = Ids::recover(
            maps.revnat.max_entries,
            revnat_slots.iter().map(|(id, r)| (*id, live_ids.contains(id), r.version)),
        );
        // Leftovers.
        let dead_slots: Vec<SlotKey> = maps.slots.entries()?.into_iter().map(|(k, _)| k).filter(|k| !live_slots.contains(k)).collect();
        maps.slots.remove_all(&dead_slots)?;
        for (id, r) in &revnat_slots {
            if r.addr != 0 && !live_ids.contains(id) {
                maps.revnat.set(*id, &lb_common::RevNat4 { addr: 0, port: 0, version: r.version })?;
            }
        }
        for (key, _) in maps.names.entries()? {
            if !live_ids.contains(&key.id) {
                maps.names.remove(&key)?;
            }
        }
        for id in maps.maglev_ids() {
            if !live_ids.contains(&id) {
                maps.remove_maglev(id)?;
            }
        }
        debug!(frontends = frontends.len(), backends = backends.len(), "recovered state from the pinned maps");
        let mut refs: HashMap<BackendAddr, Refs> = HashMap::new();
        for f in frontends.values() {
            for &(addr, flags) in &f.uses {
                refs.entry(addr).or_default().count(flags, true);
            }
        }
        let mut vips = Vips::recover(&maps)?;
        for (addr, f) in &frontends {
            vips.count(addr.ip, f.flags, true);
        }
        Ok(Reconciler {
            maps,
            refs,
            scan_unused: true,
            vips,
            hasher: foldhash::quality::FixedState::with_seed(0x6c62_2d61_6765_6e74),
            pending_purge: BTreeSet::new(),
            shrunk: Vec::new(),
            stale_slots: Vec::new(),
            backend_addrs: backends.iter().map(|(a, b)| (b.id, *a)).collect(),
            frontends,
            backends,
            frontend_ids,
            backend_ids,
            maglev_m: sizes::MAGLEV_M,
            node_name: None,
            src_ranges: BTreeMap::new(),
        })
    }

    /// Sets this node's name: backends whose endpoint runs here are marked
    /// `backend_flags::LOCAL` (the XDP program delivers to them without
    /// SNAT) from the next `apply` on.
    pub fn set_node_name(&mut self, node_name: Option<String>) {
        if self.node_name != node_name {
            self.forget_digests();
        }
        self.node_name = node_name;
    }

    /// Makes the next `apply` look at every frontend again.
    fn forget_digests(&mut self) {
        for f in self.frontends.values_mut() {
            f.digest = 0;
        }
    }

    /// Sets the Maglev table size M (prime); tables of another size are
    /// rebuilt by the next `apply`.
    pub fn set_maglev_m(&mut self, m: u32) {
        assert!(maglev::is_prime(m), "Maglev M must be prime");
        if self.maglev_m != m {
            self.forget_digests();
        }
        self.maglev_m = m;
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// How many frontends are installed.
    pub fn frontend_count(&self) -> usize {
        self.frontends.len()
    }

    /// The ID of an installed frontend.
    pub fn frontend_id(&self, addr: &FrontendAddr) -> Option<u32> {
        self.frontends.get(addr).map(|f| f.id)
    }

    /// Frontends waiting for the next garbage collection to purge their
    /// flows to a backend they no longer use.
    pub fn pending_purges(&self) -> usize {
        self.pending_purge.len()
    }

    /// Brings the maps to `desired` with the fewest writes.
    ///
    /// Only frontends whose desired state changed since they were written
    /// (by digest) are looked at, and only the backends those use, so a
    /// change to one Service costs the same with 10 or 10,000 installed.
    pub fn apply(&mut self, desired: &Desired) -> Stats {
        self.apply_all(&[desired])
    }

    /// [`Reconciler::apply`] for a desired state kept in several maps, so
    /// that callers need not merge them: a frontend in a later part
    /// replaces the one at the same address in an earlier part.
    pub fn apply_all(&mut self, parts: &[&Desired]) -> Stats {
        let mut stats = Stats::default();
        self.delete_stale_slots(&mut stats);
        let changed: Vec<(&Frontend, u64, Vec<Use>)> = parts
            .iter()
            .enumerate()
            .flat_map(|(i, d)| d.values().map(move |fe| (i, fe)))
            .filter(|(i, fe)| !parts[i + 1..].iter().any(|later| later.contains_key(&fe.addr)))
            .map(|(_, fe)| fe)
            .filter_map(|fe| {
                let digest = self.digest(fe);
                let same = self.frontends.get(&fe.addr).is_some_and(|i| i.digest == digest);
                (!same).then(|| (fe, digest, self.uses(fe)))
            })
            .collect();
        let gone: Vec<FrontendAddr> =
            self.frontends.keys().filter(|addr| !parts.iter().any(|d| d.contains_key(addr))).copied().collect();
        // Addresses first: a frontend whose address the datapath does not
        // know is never looked up.
        for (fe, _, _) in &changed {
            match self.vips.prepare(&mut self.maps, fe.addr.ip, fe.flags) {
                Ok(ops) => stats.ops += ops,
                Err(e) => stats.errors.push(format!("frontend {} ({}): {e}", fe.name, fe.addr)),
            }
        }
        // Backends next: count the new uses and write new backends (and
        // changed flags) before any slot points at them.
        let mut touched: BTreeSet<BackendAddr> = BTreeSet::new();
        for (_, _, uses) in &changed {
            self.count(uses, true);
            touched.extend(uses.iter().map(|u| u.0));
        }
        self.write_backends(&touched, &mut stats);
        for (fe, digest, uses) in changed {
            match self.write_frontend(fe, digest, uses, &mut stats) {
                // Written: the uses it had before are released.
                Ok(old) => {
                    self.count(&old, false);
                    touched.extend(old.iter().map(|u| u.0));
                }
                // Kept its previous state: its new uses are released.
                Err(new) => self.count(&new, false),
            }
        }
        for addr in gone {
            if let Some(old) = self.remove_frontend(addr, &mut stats) {
                self.count(&old, false);
                touched.extend(old.iter().map(|u| u.0));
            }
        }
        if std::mem::take(&mut self.scan_unused) {
            touched.extend(self.backends.keys().copied());
        }
        self.settle_backends(&touched, &mut stats);
        self.queue_purges(&mut stats);
        let (ops, errors) = self.vips.settle(&mut self.maps);
        stats.ops += ops;
        stats.errors.extend(errors);
        stats
    }

    /// What decides a frontend's map entries, hashed: a frontend whose
    /// digest did not change needs no write.
    fn digest(&self, fe: &Frontend) -> u64 {
        let mut h = self.hasher.build_hasher();
        fe.hash(&mut h);
        // 0 means "unknown".
        h.finish().max(1)
    }

    /// A frontend that lost backends from its allowed set: flows to those
    /// that were removed outright are invalid already (their slot version
    /// moved on); flows to those still installed for other frontends wait
    /// for the next garbage collection.
    fn queue_purges(&mut self, stats: &mut Stats) {
        for (id, removed) in std::mem::take(&mut self.shrunk) {
            if removed.iter().any(|b| self.backend_addrs.contains_key(b)) {
                let version = self.frontend_ids.version(id);
                if self.pending_purge.insert((id, version)) {
                    stats.purges_queued += 1;
                }
            }
        }
    }

    /// Deletes the slots of generations that stopped being live in the
    /// previous apply.
    fn delete_stale_slots(&mut self, stats: &mut Stats) {
        if self.stale_slots.is_empty() {
            return;
        }
        let stale = std::mem::take(&mut self.stale_slots);
        stats.ops += stale.len() as u64;
        if let Err(e) = self.maps.slots.remove_all(&stale) {
            stats.errors.push(format!("deleting old slots: {e}"));
        }
    }
}
