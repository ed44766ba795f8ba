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
//! purges), [`ranges`] (loadBalancerSourceRanges), [`recover`] (taking
//! over the maps at start).
//!
//! The maps are reached through [`MapStore`] ([`store`]): the pinned maps
//! ([`Maps`], the default), or the in-memory fakes of [`fake`] (one with
//! the kernel's answers, one that fails chosen operations), which let the
//! tests check every path, the rollbacks included, against a [`dump`] of
//! the maps without root.

mod backends;
pub mod dump;
pub mod fake;
mod frontends;
mod gc;
pub mod ids;
mod ranges;
mod recover;
pub mod repair;
pub mod store;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{BuildHasher, Hash},
    net::{Ipv4Addr, Ipv6Addr},
};

use lb_common::SlotKey;

use self::{
    backends::{InstalledBackend, Refs, Use, Writing},
    frontends::Installed,
    ids::Ids,
    ranges::SrcRange,
};
pub use self::{
    gc::{CtFill, GcStats},
    store::{CtKey, CtMap, CtValue, MapFamily, MapKind, MapStore, PerFamily},
};
use crate::{
    maglev,
    maps::Maps,
    model::{BackendAddr, Desired, Frontend, FrontendAddr, Scope},
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

/// A frontend ID with the version of its rev-NAT slot: names one frontend
/// for as long as it is installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendRef {
    pub id: u32,
    pub version: u16,
}

/// A frontend whose allowed backends lost members in an apply.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shrunk {
    /// The frontend's ID.
    id: u32,
    /// The backend IDs it no longer allows.
    removed: Vec<u32>,
}

/// A desired frontend that differs from what was written for it.
struct Change<'a, A: MapFamily> {
    fe: &'a Frontend<A>,
    digest: u64,
    /// The backends it uses, with the flags it gives them.
    uses: Vec<Use<A>>,
}

/// What the reconciler keeps of one address family: its frontends (their
/// IDs come from the one space both families share), its backends (with
/// IDs of its own), their use counts and its frontend addresses.
pub struct FamilyState<A: MapFamily> {
    frontends: BTreeMap<FrontendAddr<A>, Installed<A>>,
    backends: BTreeMap<BackendAddr<A>, InstalledBackend>,
    backend_ids: Ids,
    /// Backend addresses by ID (the IDs in use).
    backend_addrs: HashMap<u32, BackendAddr<A>>,
    /// Uses of each backend by installed frontends. An `apply` only looks
    /// at frontends whose digest changed, so this is what tells it which
    /// backends are still needed without walking every frontend.
    refs: HashMap<BackendAddr<A>, Refs>,
    /// Backends whose flags or removal could not be written: the next
    /// `apply` tries them again.
    retry_backends: BTreeSet<BackendAddr<A>>,
    /// `LB4_VIPS` or `LB6_VIPS`, counted from the installed frontends.
    vips: Vips<A>,
    /// Frontends whose allowed set lost members in this apply.
    shrunk: Vec<Shrunk>,
    /// Removed frontends whose rev-NAT slot, name or Maglev table could not
    /// be cleared: their IDs stay taken until an apply clears them.
    unclean: BTreeSet<FrontendRef>,
    /// Installed loadBalancerSourceRanges entries, by frontend ID.
    src_ranges: BTreeMap<u32, BTreeSet<SrcRange<A::VipKey>>>,
}

impl<A: MapFamily> FamilyState<A> {
    fn new(backend_ids: Ids) -> Self {
        FamilyState {
            frontends: BTreeMap::new(),
            backends: BTreeMap::new(),
            backend_ids,
            backend_addrs: HashMap::new(),
            refs: HashMap::new(),
            retry_backends: BTreeSet::new(),
            vips: Vips::default(),
            shrunk: Vec::new(),
            unclean: BTreeSet::new(),
            src_ranges: BTreeMap::new(),
        }
    }
}

/// Both families' [`FamilyState`].
pub struct Families {
    v4: FamilyState<Ipv4Addr>,
    v6: FamilyState<Ipv6Addr>,
}

impl PerFamily for Families {
    type Of<A: MapFamily> = FamilyState<A>;
    fn v4(&self) -> &FamilyState<Ipv4Addr> {
        &self.v4
    }
    fn v4_mut(&mut self) -> &mut FamilyState<Ipv4Addr> {
        &mut self.v4
    }
    fn v6(&self) -> &FamilyState<Ipv6Addr> {
        &self.v6
    }
    fn v6_mut(&mut self) -> &mut FamilyState<Ipv6Addr> {
        &mut self.v6
    }
}

/// Keeps the maps (by default the pinned ones, [`Maps`]) in step with the
/// desired state of both address families.
pub struct Reconciler<M: MapStore = Maps> {
    maps: M,
    /// Frontends, backends and addresses, per family.
    fam: Families,
    /// Frontend IDs: one space for both families (`LB4_REVNAT` and
    /// `LB6_REVNAT` are both indexed by it, as are the slots, names and
    /// Maglev tables).
    frontend_ids: Ids,
    maglev_m: u32,
    /// This node's name: endpoints on it get `backend_flags::LOCAL`.
    node_name: Option<String>,
    /// After recovery: remove backends nothing uses once the first `apply`
    /// has counted every frontend.
    scan_unused: bool,
    /// Frontends whose set of allowed backends lost a backend that is still
    /// installed: their flows to it are deleted by the next garbage
    /// collection.
    pending_purge: BTreeSet<FrontendRef>,
    /// Slots of generations that stopped being live, deleted at the start
    /// of the next apply.
    stale_slots: Vec<SlotKey>,
    hasher: foldhash::quality::FixedState,
    /// The next apply looks at every frontend, whatever it is told changed
    /// (see [`Reconciler::apply_changed`]): after recovery, once digests
    /// were forgotten, and after an apply with errors.
    look_at_all: bool,
}

impl<M: MapStore> Reconciler<M> {
    /// Sets this node's name: backends whose endpoint runs here are marked
    /// `backend_flags::LOCAL` (the XDP program delivers to them without
    /// SNAT) from the next `apply` on.
    pub fn set_node_name(&mut self, node_name: Option<String>) {
        if self.node_name != node_name {
            self.forget_digests();
        }
        self.node_name = node_name;
    }

    /// This node's name, as [`Reconciler::set_node_name`] set it.
    pub fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }

    /// Makes the next `apply` look at every frontend again.
    fn forget_digests(&mut self) {
        self.look_at_all = true;
        for f in self.fam.v4.frontends.values_mut() {
            f.digest = 0;
        }
        for f in self.fam.v6.frontends.values_mut() {
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

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// How many frontends are installed (both families).
    pub fn frontend_count(&self) -> usize {
        self.fam.v4.frontends.len() + self.fam.v6.frontends.len()
    }

    /// Whether installed frontend `id`, at `frontend` (address, port),
    /// still allows `backend`: one of its slots, or a serving but
    /// terminating backend, so that a flow or socket to it may go on. A
    /// frontend that is gone, or whose ID now names another address,
    /// allows nothing. The frontend is found by its address (either scope,
    /// `backend`'s protocol), not by a walk of all of them: a sweep of the
    /// host's sockets asks once per socket.
    pub fn allows<A: MapFamily>(&self, id: u32, frontend: (A, u16), backend: &BackendAddr<A>) -> bool {
        let fam = A::pick(&self.fam);
        let Some(be) = fam.backends.get(backend) else { return false };
        let (ip, port) = frontend;
        [Scope::External, Scope::Internal].into_iter().any(|scope| {
            let addr = FrontendAddr { ip, port, proto: backend.proto, scope };
            fam.frontends.get(&addr).is_some_and(|f| f.id == id && f.allowed.contains(&be.id))
        })
    }

    /// The ID of an installed frontend (of either family).
    pub fn frontend_id<A: MapFamily>(&self, addr: &FrontendAddr<A>) -> Option<u32> {
        A::pick(&self.fam).frontends.get(addr).map(|f| f.id)
    }

    /// Frontends waiting for the next garbage collection to purge their
    /// flows to a backend they no longer use.
    pub fn pending_purges(&self) -> usize {
        self.pending_purge.len()
    }

    /// Brings the maps to `desired` (IPv4 frontends only: any IPv6
    /// frontend is removed) with the fewest writes.
    ///
    /// Only frontends whose desired state changed since they were written
    /// (by digest) are looked at, and only the backends those use, so a
    /// change to one Service costs the same with 10 or 10,000 installed.
    pub fn apply(&mut self, desired: &Desired) -> Stats {
        self.apply_all(&[desired])
    }

    /// [`Reconciler::apply`] for a desired state kept in several maps, so
    /// that callers need not merge them: a frontend in a later part
    /// replaces the one at the same address in an earlier part. IPv4 only,
    /// as `apply`; [`Reconciler::apply_dual`] takes both families.
    pub fn apply_all(&mut self, parts: &[&Desired]) -> Stats {
        self.apply_dual(parts, &[])
    }

    /// Brings the maps to the desired state of both families: IPv4
    /// frontends in `parts`, IPv6 ones in `parts6` (each a list of maps as
    /// in [`Reconciler::apply_all`]). One frontend ID space serves both, so
    /// an IPv4 and an IPv6 frontend never share an ID; each family has its
    /// own backend IDs. Each family is written with the same ordering
    /// rules, IPv4 first.
    pub fn apply_dual(&mut self, parts: &[&Desired], parts6: &[&Desired<Ipv6Addr>]) -> Stats {
        self.apply_changed(parts, parts6, None)
    }

    /// [`Reconciler::apply_dual`] told where the desired state may differ
    /// from the last apply's: only frontends at the addresses in `changed`
    /// (IPv4, IPv6) are looked at (`None`: every frontend), so a sync that
    /// changed one Service does not digest the 10,000 others. Every
    /// frontend is looked at all the same after recovery, once digests
    /// were forgotten, and after an apply with errors (a frontend that kept
    /// its previous state is tried again).
    pub fn apply_changed(
        &mut self,
        parts: &[&Desired],
        parts6: &[&Desired<Ipv6Addr>],
        changed: Option<(&BTreeSet<FrontendAddr>, &BTreeSet<FrontendAddr<Ipv6Addr>>)>,
    ) -> Stats {
        let changed = changed.filter(|_| !std::mem::take(&mut self.look_at_all));
        let mut stats = Stats::default();
        self.delete_stale_slots(&mut stats);
        self.retry_unclean::<Ipv4Addr>(&mut stats);
        self.retry_unclean::<Ipv6Addr>(&mut stats);
        let scan_unused = std::mem::take(&mut self.scan_unused);
        self.apply_family(parts, changed.map(|c| c.0), scan_unused, &mut stats);
        self.apply_family(parts6, changed.map(|c| c.1), scan_unused, &mut stats);
        self.look_at_all = !stats.errors.is_empty();
        stats
    }

    /// The changes of one family's frontends, in the order of the module
    /// docs: of those at the addresses in `only`, or of all.
    fn apply_family<A: MapFamily>(
        &mut self,
        parts: &[&Desired<A>],
        only: Option<&BTreeSet<FrontendAddr<A>>>,
        scan_unused: bool,
        stats: &mut Stats,
    ) {
        let installed = &A::pick(&self.fam).frontends;
        // Each desired frontend, from the last part that has its address,
        // in the order of the parts, then of addresses.
        let desired: Vec<&Frontend<A>> = match only {
            None => parts
                .iter()
                .enumerate()
                .flat_map(|(i, d)| d.values().map(move |fe| (i, fe)))
                .filter(|(i, fe)| !parts[i + 1..].iter().any(|later| later.contains_key(&fe.addr)))
                .map(|(_, fe)| fe)
                .collect(),
            Some(addrs) => {
                let mut found: Vec<(usize, &Frontend<A>)> =
                    addrs.iter().filter_map(|a| parts.iter().enumerate().rev().find_map(|(i, d)| d.get(a).map(|fe| (i, fe)))).collect();
                found.sort_by_key(|(i, _)| *i);
                found.into_iter().map(|(_, fe)| fe).collect()
            }
        };
        let changed: Vec<Change<'_, A>> = desired
            .into_iter()
            .filter_map(|fe| {
                let digest = self.digest(fe);
                let same = installed.get(&fe.addr).is_some_and(|i| i.digest == digest);
                (!same).then(|| Change { fe, digest, uses: self.uses(fe) })
            })
            .collect();
        let is_gone = |addr: &&FrontendAddr<A>| !parts.iter().any(|d| d.contains_key(addr));
        let gone: Vec<FrontendAddr<A>> = match only {
            None => installed.keys().filter(is_gone).copied().collect(),
            Some(addrs) => addrs.iter().filter(|a| installed.contains_key(a)).filter(is_gone).copied().collect(),
        };
        // Addresses first: a frontend whose address the datapath does not
        // know is never looked up.
        for Change { fe, .. } in &changed {
            match A::pick_mut(&mut self.fam).vips.prepare(&mut self.maps, fe.addr.ip, fe.flags) {
                Ok(ops) => stats.ops += ops,
                Err(e) => stats.errors.push(format!("frontend {} ({}): {e}", fe.name, fe.addr)),
            }
        }
        // Backends next: count the new uses and write new backends (and
        // changed flags) before any slot points at them.
        let mut touched: BTreeSet<BackendAddr<A>> = std::mem::take(&mut A::pick_mut(&mut self.fam).retry_backends);
        for Change { uses, .. } in &changed {
            self.count(uses, true);
            touched.extend(uses.iter().map(|u| u.addr));
        }
        self.write_backends(&touched, Writing::NewAndChanged, stats);
        for change in changed {
            match self.write_frontend(change, stats) {
                // Written: the uses it had before are released.
                Ok(old) => {
                    self.count(&old, false);
                    touched.extend(old.iter().map(|u| u.addr));
                }
                // Kept its previous state: its new uses are released.
                Err(new) => self.count(&new, false),
            }
        }
        for addr in gone {
            if let Some(old) = self.remove_frontend(addr, stats) {
                self.count(&old, false);
                touched.extend(old.iter().map(|u| u.addr));
            }
        }
        if scan_unused {
            touched.extend(A::pick(&self.fam).backends.keys().copied());
        }
        self.settle_backends(&touched, stats);
        self.queue_purges::<A>(stats);
        let (ops, errors) = A::pick_mut(&mut self.fam).vips.settle(&mut self.maps);
        stats.ops += ops;
        stats.errors.extend(errors);
    }

    /// What decides a frontend's map entries, hashed: a frontend whose
    /// digest did not change needs no write.
    fn digest<A: MapFamily>(&self, fe: &Frontend<A>) -> u64 {
        // 0 means "unknown".
        self.hasher.hash_one(fe).max(1)
    }

    /// A frontend that lost backends from its allowed set: flows to those
    /// that were removed outright are invalid already (their slot version
    /// moved on); flows to those still installed for other frontends wait
    /// for the next garbage collection.
    fn queue_purges<A: MapFamily>(&mut self, stats: &mut Stats) {
        let fam = A::pick_mut(&mut self.fam);
        for Shrunk { id, removed } in std::mem::take(&mut fam.shrunk) {
            if removed.iter().any(|b| fam.backend_addrs.contains_key(b)) {
                let frontend = FrontendRef { id, version: self.frontend_ids.version(id) };
                if self.pending_purge.insert(frontend) {
                    stats.purges_queued += 1;
                }
            }
        }
    }

    /// Deletes the slots of generations that stopped being live in the
    /// previous apply; if that fails, the next apply tries again.
    fn delete_stale_slots(&mut self, stats: &mut Stats) {
        if self.stale_slots.is_empty() {
            return;
        }
        stats.ops += self.stale_slots.len() as u64;
        match self.maps.remove_slots(&self.stale_slots) {
            Ok(_) => self.stale_slots.clear(),
            Err(e) => stats.errors.push(format!("deleting old slots: {e}")),
        }
    }
}
