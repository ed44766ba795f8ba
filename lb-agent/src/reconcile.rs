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
    collections::{BTreeMap, BTreeSet},
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
};

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
}

impl Installed {
    fn new(fe: &Frontend, id: u32, generation: u16, slots: Vec<u32>, allowed: BTreeSet<u32>, maglev_m: u32) -> Self {
        Installed {
            id,
            generation,
            slots,
            flags: fe.flags,
            affinity_timeout: fe.affinity_timeout,
            name: fe.name.clone(),
            allowed,
            maglev_m,
        }
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
    /// Entries left, and the map's capacity: the fill level.
    pub remaining: usize,
    pub capacity: u32,
    /// North-south SNAT entries deleted (both directions of a flow).
    pub nat_deleted: usize,
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
    backend_ids: BTreeSet<u32>,
    next_frontend_id: u32,
    next_backend_id: u32,
    maglev_m: u32,
    /// This node's name: endpoints on it get `backend_flags::LOCAL`.
    node_name: Option<String>,
    /// Installed loadBalancerSourceRanges entries, by frontend ID.
    src_ranges: BTreeMap<u32, BTreeSet<(u32, u32)>>,
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
        Ok(Reconciler {
            maps,
            shrunk: BTreeMap::new(),
            frontend_ids: frontends.values().map(|f| f.id).collect(),
            backend_ids: backends.values().map(|b| b.id).collect(),
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
        self.node_name = node_name;
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
        self.maglev_m = m;
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// The ID of an installed frontend.
    pub fn frontend_id(&self, addr: &FrontendAddr) -> Option<u32> {
        self.frontends.get(addr).map(|f| f.id)
    }

    /// Brings the maps to `desired` with the fewest writes.
    pub fn apply(&mut self, desired: &Desired) -> Stats {
        let mut stats = Stats::default();
        let wanted = self.write_backends(desired, &mut stats);
        for fe in desired.values() {
            self.write_frontend(fe, &mut stats);
        }
        let gone: Vec<FrontendAddr> = self
            .frontends
            .keys()
            .filter(|addr| !desired.contains_key(addr))
            .copied()
            .collect();
        let mut purge: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for addr in gone {
            if let Some(id) = self.remove_frontend(addr, &mut stats) {
                purge.insert(id, BTreeSet::new());
            }
        }
        self.remove_unused_backends(&wanted, &mut stats);
        for (id, allowed) in std::mem::take(&mut self.shrunk) {
            purge.insert(id, allowed);
        }
        if !purge.is_empty() {
            self.purge_flows(&purge, &mut stats);
        }
        stats
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
        // North-south SNAT entries name their backend by address.
        let addr_of: BTreeMap<u32, (u32, u16)> = self
            .backends
            .iter()
            .map(|(a, b)| (b.id, (u32::from_ne_bytes(a.ip.octets()), a.port.to_be())))
            .collect();
        match self.maps.nat.entries() {
            Ok(entries) => {
                for (key, entry) in entries {
                    let Some(allowed) = purge.get(&entry.rev_nat_id) else { continue };
                    let backend = if key.dir == lb_common::CT_SERVICE {
                        (entry.peer_addr, entry.peer_port)
                    } else {
                        (key.saddr, key.sport)
                    };
                    if allowed.iter().any(|id| addr_of.get(id) == Some(&backend)) {
                        continue;
                    }
                    stats.ops += 1;
                    match self.maps.nat.remove(&key) {
                        Ok(()) => stats.ct_purged += 1,
                        Err(e) => stats.errors.push(format!("purging NAT: {e}")),
                    }
                }
            }
            Err(e) => stats.errors.push(format!("purging NAT: {e}")),
        }
    }

    /// Deletes conntrack entries whose flow timed out (by the state of both
    /// directions together), as of `now_ns` on CLOCK_MONOTONIC (the
    /// datapath's `bpf_ktime_get_ns`). A flow is only deleted once neither
    /// direction has seen a packet for its timeout, so a live flow is never
    /// collected. The north-south SNAT entries are collected the same way.
    pub fn collect_conntrack(&mut self, timeouts: &lb_common::CtTimeouts, now_ns: u64) -> Result<GcStats, MapsError> {
        let (scanned, deleted) = collect_pairs(&mut self.maps.ct, timeouts, now_ns)?;
        let (_, nat_deleted) = collect_pairs(&mut self.maps.nat, timeouts, now_ns)?;
        Ok(GcStats {
            scanned,
            deleted,
            remaining: scanned - deleted,
            capacity: self.maps.ct.max_entries,
            nat_deleted,
        })
    }

    /// Writes new and changed backends; returns every backend the desired
    /// state uses, with its flags.
    fn write_backends(&mut self, desired: &Desired, stats: &mut Stats) -> BTreeMap<BackendAddr, u8> {
        let mut wanted: BTreeMap<BackendAddr, u8> = BTreeMap::new();
        for fe in desired.values() {
            for b in &fe.backends {
                let mut flags = if b.terminating { backend_flags::TERMINATING } else { 0 };
                if self.node_name.is_some() && b.node_name == self.node_name {
                    flags |= backend_flags::LOCAL;
                }
                // An endpoint terminating for one port is terminating.
                *wanted.entry(b.addr).or_default() |= flags;
            }
        }
        for (&addr, &flags) in &wanted {
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
                    self.backend_ids.insert(id);
                }
                Err(e) => stats.errors.push(format!("backend {addr}: {e}")),
            }
        }
        wanted
    }

    fn alloc_backend_id(&mut self) -> u32 {
        alloc(&mut self.next_backend_id, &self.backend_ids)
    }

    fn alloc_frontend_id(&mut self) -> u32 {
        alloc(&mut self.next_frontend_id, &self.frontend_ids)
    }

    fn write_frontend(&mut self, fe: &Frontend, stats: &mut Stats) {
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
                return;
            }
        }
        let current = self.frontends.get(&fe.addr).cloned();
        let result = match &current {
            None => self
                .add_frontend(fe, slots, allowed.clone(), maglev_m, stats)
                .map(|()| stats.added += 1),
            Some(inst) => self
                .update_frontend(fe, inst, slots, allowed.clone(), maglev_m, stats)
                .map(|()| stats.updated += 1),
        };
        match result {
            Ok(()) => {
                if let Some(inst) = current {
                    if !inst.allowed.is_subset(&allowed) {
                        self.shrunk.insert(inst.id, allowed);
                    }
                }
            }
            Err(e) => {
                let msg = format!("frontend {} ({}): {e}", fe.name, fe.addr);
                warn!("{msg}; it keeps its previous state");
                stats.errors.push(msg);
            }
        }
    }

    /// The Maglev table of a frontend as backend IDs: keys are the slot
    /// backends' `ip:port`, so every node builds the same table.
    fn maglev_table(&self, slots: &[u32], m: u32) -> Vec<u32> {
        let by_id: BTreeMap<u32, BackendAddr> = self.backends.iter().map(|(a, b)| (b.id, *a)).collect();
        let keys: Vec<String> = slots
            .iter()
            .map(|id| by_id.get(id).map(|a| a.to_string()).unwrap_or_default())
            .collect();
        maglev::build(&keys, m).into_iter().map(|i| slots[i as usize]).collect()
    }

    fn add_frontend(
        &mut self,
        fe: &Frontend,
        slots: Vec<u32>,
        allowed: BTreeSet<u32>,
        maglev_m: u32,
        stats: &mut Stats,
    ) -> Result<(), MapsError> {
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
            self.write_slots(id, generation, &slots, stats)?;
            if maglev_m != 0 {
                let table = self.maglev_table(&slots, maglev_m);
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
        self.frontend_ids.insert(id);
        self.frontends
            .insert(fe.addr, Installed::new(fe, id, generation, slots, allowed, maglev_m));
        Ok(())
    }

    fn update_frontend(
        &mut self,
        fe: &Frontend,
        inst: &Installed,
        slots: Vec<u32>,
        allowed: BTreeSet<u32>,
        maglev_m: u32,
        stats: &mut Stats,
    ) -> Result<(), MapsError> {
        let id = inst.id;
        let slots_changed = slots != inst.slots;
        let generation = if slots_changed { 1 - inst.generation } else { inst.generation };
        if slots_changed {
            if let Err(e) = self.write_slots(id, generation, &slots, stats) {
                self.delete_slots(id, generation, slots.len(), stats);
                return Err(e);
            }
        }
        // The new table goes in before the frontend flips to the new slots;
        // both hold only backends that already exist.
        if maglev_m != 0 && (slots_changed || inst.maglev_m != maglev_m) {
            let table = self.maglev_table(&slots, maglev_m);
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
            self.delete_slots(id, inst.generation, inst.slots.len(), stats);
        }
        if maglev_m == 0 && inst.maglev_m != 0 {
            stats.ops += 1;
            self.maps.remove_maglev(id)?;
        }
        if inst.name != fe.name {
            stats.ops += 1;
            self.maps.names.insert(&RevNatKey { id }, &svc_name(&fe.name))?;
        }
        self.frontend_ids.insert(id);
        self.frontends
            .insert(fe.addr, Installed::new(fe, id, generation, slots, allowed, maglev_m));
        Ok(())
    }

    /// Removes a frontend; returns its ID if it was removed.
    fn remove_frontend(&mut self, addr: FrontendAddr, stats: &mut Stats) -> Option<u32> {
        let inst = self.frontends.get(&addr).cloned()?;
        stats.ops += 1;
        if let Err(e) = self.maps.services.remove(&addr.key()) {
            let msg = format!("removing frontend {} ({addr}): {e}", inst.name);
            warn!("{msg}");
            stats.errors.push(msg);
            return None;
        }
        self.delete_slots(inst.id, inst.generation, inst.slots.len(), stats);
        stats.ops += 3;
        let _ = self.maps.remove_maglev(inst.id);
        let _ = self.maps.revnat.remove(&RevNatKey { id: inst.id });
        let _ = self.maps.names.remove(&RevNatKey { id: inst.id });
        self.frontends.remove(&addr);
        self.frontend_ids.remove(&inst.id);
        stats.removed += 1;
        Some(inst.id)
    }

    fn remove_unused_backends(&mut self, wanted: &BTreeMap<BackendAddr, u8>, stats: &mut Stats) {
        let candidates: Vec<(BackendAddr, u32)> = self
            .backends
            .iter()
            .filter(|(addr, _)| !wanted.contains_key(addr))
            .map(|(addr, b)| (*addr, b.id))
            .collect();
        if candidates.is_empty() {
            return;
        }
        // A frontend whose update failed may still point at one.
        let in_slots: BTreeSet<u32> = self
            .frontends
            .values()
            .flat_map(|f| f.slots.iter().chain(&f.allowed).copied())
            .collect();
        let unused: Vec<(BackendAddr, u32)> =
            candidates.into_iter().filter(|(_, id)| !in_slots.contains(id)).collect();
        for (addr, id) in unused {
            stats.ops += 1;
            match self.maps.backends.remove(&BackendKey { id }) {
                Ok(()) => {
                    self.backends.remove(&addr);
                    self.backend_ids.remove(&id);
                }
                Err(e) => stats.errors.push(format!("removing backend {addr}: {e}")),
            }
        }
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
fn alloc(next: &mut u32, used: &BTreeSet<u32>) -> u32 {
    loop {
        let id = *next;
        *next = next.wrapping_add(1);
        if id != 0 && !used.contains(&id) {
            return id;
        }
    }
}

/// An entry of a map that holds each flow as two entries, one per direction.
trait PairedEntry: aya::Pod {
    fn twin(&self, key: &Ct4Key) -> Ct4Key;
    fn flags(&self) -> u8;
    fn last_seen(&self) -> u64;
}

impl PairedEntry for lb_common::CtEntry {
    fn twin(&self, key: &Ct4Key) -> Ct4Key {
        self.twin_key(key)
    }
    fn flags(&self) -> u8 {
        self.tcp_flags
    }
    fn last_seen(&self) -> u64 {
        self.last_seen
    }
}

impl PairedEntry for lb_common::Nat4 {
    fn twin(&self, key: &Ct4Key) -> Ct4Key {
        self.twin_key(key)
    }
    fn flags(&self) -> u8 {
        self.tcp_flags
    }
    fn last_seen(&self) -> u64 {
        self.last_seen
    }
}

/// Deletes the flows of `map` that timed out, judged on both directions
/// together; returns (entries scanned, entries deleted).
fn collect_pairs<V: PairedEntry>(
    map: &mut Named<aya::maps::HashMap<aya::maps::MapData, Ct4Key, V>>,
    timeouts: &lb_common::CtTimeouts,
    now_ns: u64,
) -> Result<(usize, usize), MapsError> {
    let entries: BTreeMap<_, _> = map.entries()?.into_iter().map(|(k, v)| (CtKeyOrd(k), v)).collect();
    let mut deleted = BTreeSet::new();
    for (key, entry) in &entries {
        if deleted.contains(key) {
            continue;
        }
        let twin = CtKeyOrd(entry.twin(&key.0));
        let (flags, last_seen) = match entries.get(&twin) {
            Some(t) => (entry.flags() | t.flags(), entry.last_seen().max(t.last_seen())),
            None => (entry.flags(), entry.last_seen()),
        };
        if lb_common::ct::expired(timeouts, key.0.proto, flags, last_seen, now_ns) {
            for k in [key, &twin] {
                if entries.contains_key(k) && deleted.insert(*k) {
                    map.remove(&k.0)?;
                }
            }
        }
    }
    Ok((entries.len(), deleted.len()))
}
