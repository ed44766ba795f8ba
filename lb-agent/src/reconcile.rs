//! Writes the difference between the desired state and the maps.
//!
//! Ordering rules, so that no packet ever sees a half-written service:
//! - backends are written before any slot points at them;
//! - a frontend's slots are written into the generation that is not live,
//!   then one update of the frontend entry flips `count` and `generation`
//!   together; the old generation is deleted afterwards;
//! - on removal the frontend entry goes first, then its slots, rev-NAT and
//!   name, and backends last once nothing points at them.
//!
//! IDs are recovered from the maps at start, so an agent restart changes
//! nothing that live flows depend on. A failed write (a full map) is
//! reported and leaves the previous state of that frontend in place: the
//! agent never flushes working state because of an error.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{BuildHasher, Hash, Hasher},
    net::Ipv4Addr,
};

use lb_common::{
    Ct4Key,
    Backend4, BackendKey, RevNat4, RevNatKey, SCOPE_EXTERNAL, Service4Value, Slot, SlotKey,
    backend_flags, sizes, svc_flags,
};
use tracing::{debug, warn};

use crate::{
    maglev,
    maps::{Maps, MapsError, Named, svc_name, svc_name_str},
    model::{BackendAddr, Desired, Frontend, FrontendAddr, Protocol},
    vips::Vips,
};

/// A frontend's use of a backend: its address and the flags this frontend
/// gives it (terminating, local).
type Use = (BackendAddr, u8);

/// A frontend as installed in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Installed {
    id: u32,
    generation: u16,
    /// Backend IDs in slot order.
    slots: Vec<u32>,
    flags: u32,
    affinity_timeout: u32,
    name: String,
    /// Backends whose established flows may continue: the slot backends
    /// plus serving-but-terminating ones. Conntrack and affinity entries to
    /// any other backend are purged.
    allowed: BTreeSet<u32>,
    /// M of the installed Maglev table; 0 = none, or unknown after a
    /// restart (then it is rebuilt).
    maglev_m: u32,
    /// Digest of the desired frontend this was written from; 0 = unknown
    /// (recovered from the maps, or the node name or M changed), so the
    /// next `apply` looks at it again.
    digest: u64,
    /// The backends it counts as using (see `Reconciler::refs`).
    uses: Vec<Use>,
}

impl Installed {
    fn new(
        fe: &Frontend,
        id: u32,
        generation: u16,
        slots: Vec<u32>,
        allowed: BTreeSet<u32>,
        maglev_m: u32,
        digest: u64,
        uses: Vec<Use>,
    ) -> Self {
        Installed {
            id,
            generation,
            slots,
            flags: fe.flags,
            affinity_timeout: fe.affinity_timeout,
            name: fe.name.clone(),
            allowed,
            maglev_m,
            digest,
            uses,
        }
    }
}

/// How many installed frontends use a backend, and how many of them mark
/// it terminating or local: its flags are the union.
#[derive(Clone, Copy, Debug, Default)]
struct Refs {
    n: u32,
    terminating: u32,
    local: u32,
}

impl Refs {
    fn count(&mut self, flags: u8, add: bool) {
        let step = |c: &mut u32| *c = if add { *c + 1 } else { c.saturating_sub(1) };
        step(&mut self.n);
        if flags & backend_flags::TERMINATING != 0 {
            step(&mut self.terminating);
        }
        if flags & backend_flags::LOCAL != 0 {
            step(&mut self.local);
        }
    }

    fn flags(&self) -> u8 {
        let mut f = 0;
        if self.terminating > 0 {
            f |= backend_flags::TERMINATING;
        }
        if self.local > 0 {
            f |= backend_flags::LOCAL;
        }
        f
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InstalledBackend {
    id: u32,
    flags: u8,
}

/// What one `apply` did.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Map updates and deletes issued.
    pub ops: u64,
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    /// Maglev tables built and swapped in.
    pub maglev_tables: usize,
    /// Conntrack entries purged because their backend left the Service.
    pub ct_purged: usize,
    /// Affinity entries purged because their backend left the Service.
    pub affinity_purged: usize,
    /// Frontends or backends that could not be written, with why.
    pub errors: Vec<String>,
}

/// What one conntrack garbage collection did.
#[derive(Debug, Default, Clone, Copy)]
pub struct GcStats {
    pub scanned: usize,
    pub deleted: usize,
    /// Entries left in both maps.
    pub remaining: usize,
    /// Entries left in each map, and its capacity: the fill levels.
    pub tcp_remaining: usize,
    pub tcp_capacity: u32,
    pub any_remaining: usize,
    pub any_capacity: u32,
}

/// `Ct4Key` ordered by its bytes, for sets and maps.
#[derive(Clone, Copy, PartialEq, Eq)]
struct CtKeyOrd(lb_common::Ct4Key);

impl PartialOrd for CtKeyOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CtKeyOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let k = |c: &CtKeyOrd| (c.0.saddr, c.0.daddr, c.0.sport, c.0.dport, c.0.proto, c.0.dir);
        k(self).cmp(&k(other))
    }
}

pub struct Reconciler {
    maps: Maps,
    /// Frontends whose set of allowed backends lost members in this apply,
    /// with the set they have now: their flows to others are purged.
    shrunk: BTreeMap<u32, BTreeSet<u32>>,
    frontends: BTreeMap<FrontendAddr, Installed>,
    backends: BTreeMap<BackendAddr, InstalledBackend>,
    /// IDs in use, kept alongside the two maps above so that allocating one
    /// is O(log n) rather than a scan of every installed entry.
    frontend_ids: BTreeSet<u32>,
    /// Backend addresses by ID (the IDs in use).
    backend_addrs: HashMap<u32, BackendAddr>,
    next_frontend_id: u32,
    next_backend_id: u32,
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
    hasher: foldhash::quality::FixedState,
}

impl Reconciler {
    /// Takes over whatever the pinned maps hold: IDs, generations, slots.
    /// Leftovers of an interrupted run (slots of a dead generation, rev-NAT
    /// entries without a frontend) are cleaned up.
    pub fn recover(mut maps: Maps) -> Result<Self, MapsError> {
        let mut backends = BTreeMap::new();
        let mut backend_by_id = BTreeMap::new();
        let mut next_backend_id = 1;
        for (key, be) in maps.backends.entries()? {
            next_backend_id = next_backend_id.max(key.id.wrapping_add(1));
            let Some(proto) = Protocol::from_number(be.proto) else {
                continue;
            };
            let addr = BackendAddr {
                ip: Ipv4Addr::from(be.addr.to_ne_bytes()),
                port: u16::from_be(be.port),
                proto,
            };
            backends.insert(addr, InstalledBackend { id: key.id, flags: be.flags });
            backend_by_id.insert(key.id, addr);
        }
        let mut frontends = BTreeMap::new();
        let mut live_slots = BTreeSet::new();
        let mut next_frontend_id = 1;
        for (key, value) in maps.services.entries()? {
            next_frontend_id = next_frontend_id.max(value.id.wrapping_add(1));
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
            let name = maps
                .names
                .get(&RevNatKey { id: value.id })?
                .map(|n| svc_name_str(&n))
                .unwrap_or_default();
            let allowed = slots.iter().copied().collect();
            let uses: Vec<Use> = slots
                .iter()
                .filter_map(|id| backend_by_id.get(id))
                .map(|a: &BackendAddr| (*a, backends.get(a).map_or(0, |b: &InstalledBackend| b.flags)))
                .collect();
            frontends.insert(
                addr,
                Installed {
                    id: value.id,
                    generation: value.generation,
                    slots,
                    flags: value.flags,
                    affinity_timeout: value.affinity_timeout,
                    name,
                    // Unknown until the first apply, which also re-adds
                    // terminating backends here.
                    allowed,
                    maglev_m: 0,
                    digest: 0,
                    uses,
                },
            );
        }
        // Leftovers.
        for (key, _) in maps.slots.entries()? {
            if !live_slots.contains(&key) {
                maps.slots.remove(&key)?;
            }
        }
        let live_ids: BTreeSet<u32> = frontends.values().map(|f| f.id).collect();
        for (key, _) in maps.revnat.entries()? {
            if !live_ids.contains(&key.id) {
                maps.revnat.remove(&key)?;
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
        debug!(
            frontends = frontends.len(),
            backends = backends.len(),
            "recovered state from the pinned maps"
        );
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
            shrunk: BTreeMap::new(),
            frontend_ids: frontends.values().map(|f| f.id).collect(),
            backend_addrs: backends.iter().map(|(a, b)| (b.id, *a)).collect(),
            frontends,
            backends,
            next_frontend_id,
            next_backend_id,
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

    /// Brings `LB4_SRC_RANGES` to `ranges` (loadBalancerSourceRanges per
    /// frontend; IPv4 ones are used). Call after `apply`, which gives the
    /// frontends their IDs. A frontend flagged `SOURCE_RANGES` drops
    /// everything until its ranges are written, so a new frontend fails
    /// closed for the moment in between.
    pub fn apply_source_ranges(&mut self, ranges: &BTreeMap<FrontendAddr, Vec<crate::model::Cidr>>, stats: &mut Stats) {
        use lb_common::SrcRange4;
        let mut wanted: BTreeMap<u32, BTreeSet<(u32, u32)>> = BTreeMap::new();
        for (addr, cidrs) in ranges {
            let Some(id) = self.frontend_id(addr) else { continue };
            let set = wanted.entry(id).or_default();
            for c in cidrs {
                if let std::net::IpAddr::V4(ip) = c.addr {
                    let (len, data) = SrcRange4::range(id, u32::from_ne_bytes(ip.octets()), c.prefix_len);
                    set.insert((len, data.addr));
                }
            }
        }
        // After a restart, take over what the map holds.
        if self.src_ranges.is_empty()
            && let Ok(entries) = self.maps.src_range_entries()
        {
            for (len, data) in entries {
                self.src_ranges.entry(u32::from_be(data.svc_id)).or_default().insert((len, data.addr));
            }
        }
        let ids: BTreeSet<u32> = wanted.keys().chain(self.src_ranges.keys()).copied().collect();
        for id in ids {
            let want = wanted.remove(&id).unwrap_or_default();
            let have = self.src_ranges.remove(&id).unwrap_or_default();
            let mut now = have.clone();
            for &(len, addr) in want.difference(&have) {
                stats.ops += 1;
                match self.maps.insert_src_range(len, SrcRange4 { svc_id: id.to_be(), addr }) {
                    Ok(()) => {
                        now.insert((len, addr));
                    }
                    Err(e) => stats.errors.push(format!("source range of frontend {id}: {e}")),
                }
            }
            for &(len, addr) in have.difference(&want) {
                stats.ops += 1;
                match self.maps.remove_src_range(len, SrcRange4 { svc_id: id.to_be(), addr }) {
                    Ok(()) => {
                        now.remove(&(len, addr));
                    }
                    Err(e) => stats.errors.push(format!("source range of frontend {id}: {e}")),
                }
            }
            if !now.is_empty() {
                self.src_ranges.insert(id, now);
            }
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
        let gone: Vec<FrontendAddr> = self
            .frontends
            .keys()
            .filter(|addr| !parts.iter().any(|d| d.contains_key(addr)))
            .copied()
            .collect();
        // Addresses first: a frontend whose address the datapath does not
        // know is never looked up.
        for (fe, _, _) in &changed {
            if let Err(e) = self.vips.prepare(&mut self.maps, fe.addr.ip, fe.flags) {
                stats.errors.push(format!("frontend {} ({}): {e}", fe.name, fe.addr));
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
        let mut purge: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for addr in gone {
            if let Some((id, old)) = self.remove_frontend(addr, &mut stats) {
                purge.insert(id, BTreeSet::new());
                self.count(&old, false);
                touched.extend(old.iter().map(|u| u.0));
            }
        }
        if std::mem::take(&mut self.scan_unused) {
            touched.extend(self.backends.keys().copied());
        }
        self.settle_backends(&touched, &mut stats);
        for (id, allowed) in std::mem::take(&mut self.shrunk) {
            purge.insert(id, allowed);
        }
        if !purge.is_empty() {
            self.purge_flows(&purge, &mut stats);
        }
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

    /// The backends a desired frontend uses, with the flags it gives them.
    fn uses(&self, fe: &Frontend) -> Vec<Use> {
        fe.backends
            .iter()
            .map(|b| {
                let mut flags = if b.terminating { backend_flags::TERMINATING } else { 0 };
                if self.node_name.is_some() && b.node_name == self.node_name {
                    flags |= backend_flags::LOCAL;
                }
                (b.addr, flags)
            })
            .collect()
    }

    fn count(&mut self, uses: &[Use], add: bool) {
        for &(addr, flags) in uses {
            let refs = self.refs.entry(addr).or_default();
            refs.count(flags, add);
            if refs.n == 0 {
                self.refs.remove(&addr);
            }
        }
    }

    /// Deletes conntrack and affinity entries of frontend `id` whose backend
    /// is not in `purge[id]` (all of them for a removed frontend). UDP
    /// clients then move to a live backend with their next packet instead
    /// of blackholing; see `docs/connection-lifecycle.md` for TCP.
    fn purge_flows(&mut self, purge: &BTreeMap<u32, BTreeSet<u32>>, stats: &mut Stats) {
        let stale = |rev_nat_id: u32, backend_id: u32| {
            purge.get(&rev_nat_id).is_some_and(|allowed| !allowed.contains(&backend_id))
        };
        match self.maps.ct.entries() {
            Ok(entries) => {
                for (key, entry) in entries {
                    if stale(entry.rev_nat_id, entry.backend_id) {
                        stats.ops += 1;
                        match self.maps.ct.remove(&key) {
                            Ok(()) => stats.ct_purged += 1,
                            Err(e) => stats.errors.push(format!("purging conntrack: {e}")),
                        }
                    }
                }
            }
            Err(e) => stats.errors.push(format!("purging conntrack: {e}")),
        }
        match self.maps.affinity.entries() {
            Ok(entries) => {
                for (key, entry) in entries {
                    if stale(key.svc_id, entry.backend_id) {
                        stats.ops += 1;
                        match self.maps.affinity.remove(&key) {
                            Ok(()) => stats.affinity_purged += 1,
                            Err(e) => stats.errors.push(format!("purging affinity: {e}")),
                        }
                    }
                }
            }
            Err(e) => stats.errors.push(format!("purging affinity: {e}")),
        }
    }

    /// Deletes conntrack entries whose flow timed out (by the state of both
    /// directions together), as of `now_ns` on CLOCK_MONOTONIC (the
    /// datapath's `bpf_ktime_get_ns`). A flow is only deleted once neither
    /// direction has seen a packet for its timeout, so a live flow is never
    /// collected; a half-open one (the client never acknowledged) goes at
    /// the SYN timeout.
    pub fn collect_conntrack(&mut self, timeouts: &lb_common::CtTimeouts, now_ns: u64) -> Result<GcStats, MapsError> {
        let (tcp_scanned, tcp_deleted) = collect_pairs(&mut self.maps.ct.tcp, timeouts, now_ns)?;
        let (any_scanned, any_deleted) = collect_pairs(&mut self.maps.ct.any, timeouts, now_ns)?;
        Ok(GcStats {
            scanned: tcp_scanned + any_scanned,
            deleted: tcp_deleted + any_deleted,
            remaining: tcp_scanned + any_scanned - tcp_deleted - any_deleted,
            tcp_remaining: tcp_scanned - tcp_deleted,
            tcp_capacity: self.maps.ct.tcp.max_entries,
            any_remaining: any_scanned - any_deleted,
            any_capacity: self.maps.ct.any.max_entries,
        })
    }

    /// Writes the backends of `addrs` that are used and new, or whose
    /// flags changed.
    fn write_backends(&mut self, addrs: &BTreeSet<BackendAddr>, stats: &mut Stats) {
        for &addr in addrs {
            let Some(flags) = self.refs.get(&addr).map(Refs::flags) else {
                continue;
            };
            let existing = self.backends.get(&addr).copied();
            if existing.is_some_and(|b| b.flags == flags) {
                continue;
            }
            let id = match existing {
                Some(b) => b.id,
                None => self.alloc_backend_id(),
            };
            let value = Backend4 {
                addr: u32::from_ne_bytes(addr.ip.octets()),
                port: addr.port.to_be(),
                proto: addr.proto.number(),
                flags,
            };
            stats.ops += 1;
            match self.maps.backends.insert(&BackendKey { id }, &value) {
                Ok(()) => {
                    self.backends.insert(addr, InstalledBackend { id, flags });
                    self.backend_addrs.insert(id, addr);
                }
                Err(e) => stats.errors.push(format!("backend {addr}: {e}")),
            }
        }
    }

    /// After the frontends: backends of `addrs` that nothing uses any more
    /// are removed, the others get their final flags.
    fn settle_backends(&mut self, addrs: &BTreeSet<BackendAddr>, stats: &mut Stats) {
        self.write_backends(addrs, stats);
        for &addr in addrs {
            if self.refs.contains_key(&addr) {
                continue;
            }
            let Some(b) = self.backends.get(&addr).copied() else { continue };
            stats.ops += 1;
            match self.maps.backends.remove(&BackendKey { id: b.id }) {
                Ok(()) => {
                    self.backends.remove(&addr);
                    self.backend_addrs.remove(&b.id);
                }
                Err(e) => stats.errors.push(format!("removing backend {addr}: {e}")),
            }
        }
    }

    fn alloc_backend_id(&mut self) -> u32 {
        let used = &self.backend_addrs;
        alloc(&mut self.next_backend_id, |id| used.contains_key(&id))
    }

    fn alloc_frontend_id(&mut self) -> u32 {
        let used = &self.frontend_ids;
        alloc(&mut self.next_frontend_id, |id| used.contains(&id))
    }

    /// Writes one changed frontend. On success returns the uses it had
    /// before; on failure (it keeps its previous state) gives back `uses`.
    fn write_frontend(&mut self, fe: &Frontend, digest: u64, uses: Vec<Use>, stats: &mut Stats) -> Result<Vec<Use>, Vec<Use>> {
        let mut slots = Vec::new();
        for b in fe.slot_backends() {
            match self.backends.get(&b.addr) {
                Some(installed) => slots.push(installed.id),
                // Its write failed and was reported; serve with the rest.
                None => continue,
            }
        }
        let allowed: BTreeSet<u32> = fe
            .backends
            .iter()
            .filter_map(|b| self.backends.get(&b.addr).map(|x| x.id))
            .collect();
        let maglev_m = if fe.flags & svc_flags::MAGLEV != 0 && !slots.is_empty() {
            self.maglev_m
        } else {
            0
        };
        if let Some(inst) = self.frontends.get_mut(&fe.addr) {
            if inst.slots == slots
                && inst.flags == fe.flags
                && inst.affinity_timeout == fe.affinity_timeout
                && inst.name == fe.name
                && inst.maglev_m == maglev_m
            {
                // Nothing to write; only terminating backends may differ.
                if inst.allowed != allowed {
                    if !inst.allowed.is_subset(&allowed) {
                        self.shrunk.insert(inst.id, allowed.clone());
                    }
                    inst.allowed = allowed;
                }
                inst.digest = digest;
                return Ok(std::mem::replace(&mut inst.uses, uses));
            }
        }
        let current = self.frontends.get(&fe.addr).map(|i| (i.id, i.generation, i.slots.clone(), i.maglev_m, i.name.clone(), i.allowed.is_subset(&allowed)));
        let result = match current {
            None => self
                .add_frontend(fe, &slots, maglev_m, stats)
                .map(|id| {
                    stats.added += 1;
                    (id, 0)
                }),
            Some((id, generation, ref old_slots, old_m, ref old_name, _)) => self
                .update_frontend(fe, id, generation, old_slots, old_m, old_name, &slots, maglev_m, stats)
                .map(|generation| {
                    stats.updated += 1;
                    (id, generation)
                }),
        };
        match result {
            Ok((id, generation)) => {
                if let Some((_, _, _, _, _, false)) = current {
                    self.shrunk.insert(id, allowed.clone());
                }
                self.frontend_ids.insert(id);
                let old = self.frontends.insert(
                    fe.addr,
                    Installed::new(fe, id, generation, slots, allowed, maglev_m, digest, uses),
                );
                self.vips.count(fe.addr.ip, fe.flags, true);
                if let Some(old) = &old {
                    self.vips.count(fe.addr.ip, old.flags, false);
                }
                Ok(old.map(|i| i.uses).unwrap_or_default())
            }
            Err(e) => {
                let msg = format!("frontend {} ({}): {e}", fe.name, fe.addr);
                warn!("{msg}; it keeps its previous state");
                stats.errors.push(msg);
                Err(uses)
            }
        }
    }

    /// The Maglev table of a frontend as backend IDs: keys are the slot
    /// backends' `ip:port`, so every node builds the same table.
    fn maglev_table(&self, slots: &[u32], m: u32) -> Vec<u32> {
        let keys: Vec<String> = slots
            .iter()
            .map(|id| self.backend_addrs.get(id).map(|a| a.to_string()).unwrap_or_default())
            .collect();
        maglev::build(&keys, m).into_iter().map(|i| slots[i as usize]).collect()
    }

    /// Writes a new frontend; returns its ID.
    fn add_frontend(&mut self, fe: &Frontend, slots: &[u32], maglev_m: u32, stats: &mut Stats) -> Result<u32, MapsError> {
        let id = self.alloc_frontend_id();
        let generation = 0;
        let result = (|| {
            stats.ops += 1;
            self.maps.revnat.insert(
                &RevNatKey { id },
                &RevNat4 {
                    addr: fe.addr.key().addr,
                    port: fe.addr.key().port,
                    _pad: 0,
                },
            )?;
            stats.ops += 1;
            self.maps.names.insert(&RevNatKey { id }, &svc_name(&fe.name))?;
            self.write_slots(id, generation, slots, stats)?;
            if maglev_m != 0 {
                let table = self.maglev_table(slots, maglev_m);
                stats.ops += table.len() as u64 + 1;
                self.maps.install_maglev(id, &table)?;
                stats.maglev_tables += 1;
            }
            stats.ops += 1;
            self.maps.services.insert(
                &fe.addr.key(),
                &service_value(id, generation, slots.len(), fe),
            )
        })();
        if let Err(e) = result {
            // Undo the parts that were written; the frontend entry itself
            // was the last write, so no packet saw any of them.
            self.delete_slots(id, generation, slots.len(), stats);
            let _ = self.maps.remove_maglev(id);
            let _ = self.maps.revnat.remove(&RevNatKey { id });
            let _ = self.maps.names.remove(&RevNatKey { id });
            return Err(e);
        }
        Ok(id)
    }

    /// Rewrites an installed frontend; returns its slot generation now.
    #[allow(clippy::too_many_arguments)]
    fn update_frontend(
        &mut self,
        fe: &Frontend,
        id: u32,
        old_generation: u16,
        old_slots: &[u32],
        old_maglev_m: u32,
        old_name: &str,
        slots: &[u32],
        maglev_m: u32,
        stats: &mut Stats,
    ) -> Result<u16, MapsError> {
        let slots_changed = slots != old_slots;
        let generation = if slots_changed { 1 - old_generation } else { old_generation };
        if slots_changed {
            if let Err(e) = self.write_slots(id, generation, slots, stats) {
                self.delete_slots(id, generation, slots.len(), stats);
                return Err(e);
            }
        }
        // The new table goes in before the frontend flips to the new slots;
        // both hold only backends that already exist.
        if maglev_m != 0 && (slots_changed || old_maglev_m != maglev_m) {
            let table = self.maglev_table(slots, maglev_m);
            stats.ops += table.len() as u64 + 1;
            if let Err(e) = self.maps.install_maglev(id, &table) {
                if slots_changed {
                    self.delete_slots(id, generation, slots.len(), stats);
                }
                return Err(e);
            }
            stats.maglev_tables += 1;
        }
        stats.ops += 1;
        if let Err(e) = self
            .maps
            .services
            .insert(&fe.addr.key(), &service_value(id, generation, slots.len(), fe))
        {
            if slots_changed {
                self.delete_slots(id, generation, slots.len(), stats);
            }
            return Err(e);
        }
        if slots_changed {
            self.delete_slots(id, old_generation, old_slots.len(), stats);
        }
        // The frontend entry is written: from here on a failure is only
        // reported, the new state stands.
        if maglev_m == 0 && old_maglev_m != 0 {
            stats.ops += 1;
            if let Err(e) = self.maps.remove_maglev(id) {
                stats.errors.push(format!("removing the Maglev table of {}: {e}", fe.name));
            }
        }
        if old_name != fe.name {
            stats.ops += 1;
            if let Err(e) = self.maps.names.insert(&RevNatKey { id }, &svc_name(&fe.name)) {
                stats.errors.push(format!("renaming frontend {id} to {}: {e}", fe.name));
            }
        }
        Ok(generation)
    }

    /// Removes a frontend; returns its ID and the backends it used if it
    /// was removed.
    fn remove_frontend(&mut self, addr: FrontendAddr, stats: &mut Stats) -> Option<(u32, Vec<Use>)> {
        let inst = self.frontends.get(&addr)?;
        let (id, generation, count, name) = (inst.id, inst.generation, inst.slots.len(), inst.name.clone());
        stats.ops += 1;
        if let Err(e) = self.maps.services.remove(&addr.key()) {
            let msg = format!("removing frontend {name} ({addr}): {e}");
            warn!("{msg}");
            stats.errors.push(msg);
            return None;
        }
        self.delete_slots(id, generation, count, stats);
        stats.ops += 3;
        let _ = self.maps.remove_maglev(id);
        let _ = self.maps.revnat.remove(&RevNatKey { id });
        let _ = self.maps.names.remove(&RevNatKey { id });
        let inst = self.frontends.remove(&addr)?;
        self.frontend_ids.remove(&id);
        self.vips.count(addr.ip, inst.flags, false);
        stats.removed += 1;
        Some((id, inst.uses))
    }

    fn write_slots(&mut self, id: u32, generation: u16, slots: &[u32], stats: &mut Stats) -> Result<(), MapsError> {
        for (i, backend_id) in slots.iter().enumerate() {
            stats.ops += 1;
            self.maps.slots.insert(
                &SlotKey { svc_id: id, slot: i as u16, generation },
                &Slot { backend_id: *backend_id },
            )?;
        }
        Ok(())
    }

    fn delete_slots(&mut self, id: u32, generation: u16, count: usize, stats: &mut Stats) {
        for i in 0..count {
            stats.ops += 1;
            if let Err(e) = self.maps.slots.remove(&SlotKey { svc_id: id, slot: i as u16, generation }) {
                warn!("deleting slot {i} of frontend {id}: {e}");
            }
        }
    }
}

fn service_value(id: u32, generation: u16, count: usize, fe: &Frontend) -> Service4Value {
    Service4Value {
        id,
        count: count as u16,
        generation,
        flags: fe.flags,
        affinity_timeout: fe.affinity_timeout,
    }
}

/// The next free ID at or after `next`, skipping 0 and IDs in use. IDs are
/// not reused right away, so a stale conntrack entry cannot point at a
/// different frontend or backend that happened to take a freed ID.
fn alloc(next: &mut u32, used: impl Fn(u32) -> bool) -> u32 {
    loop {
        let id = *next;
        *next = next.wrapping_add(1);
        if id != 0 && !used(id) {
            return id;
        }
    }
}

/// Deletes the flows of `map` that timed out, judged on both directions
/// together; returns (entries scanned, entries deleted).
fn collect_pairs(
    map: &mut Named<aya::maps::HashMap<aya::maps::MapData, Ct4Key, lb_common::CtEntry>>,
    timeouts: &lb_common::CtTimeouts,
    now_ns: u64,
) -> Result<(usize, usize), MapsError> {
    use lb_common::{CT_SERVICE, ct};
    let entries: BTreeMap<_, _> = map.entries()?.into_iter().map(|(k, v)| (CtKeyOrd(k), v)).collect();
    let mut deleted = BTreeSet::new();
    for (key, entry) in &entries {
        if deleted.contains(key) {
            continue;
        }
        let twin = CtKeyOrd(entry.twin_key(&key.0));
        let proto = key.0.proto;
        let (state, last_seen) = match entries.get(&twin) {
            Some(t) => {
                let (fwd, reply) = if key.0.dir == CT_SERVICE { (entry, t) } else { (t, entry) };
                (ct::state(proto, fwd.tcp_flags, reply.tcp_flags), entry.last_seen.max(t.last_seen))
            }
            None => (ct::entry_state(proto, key.0.dir, entry), entry.last_seen),
        };
        if ct::expired(timeouts, state, last_seen, now_ns) {
            for k in [key, &twin] {
                if entries.contains_key(k) && deleted.insert(*k) {
                    map.remove(&k.0)?;
                }
            }
        }
    }
    Ok((entries.len(), deleted.len()))
}
