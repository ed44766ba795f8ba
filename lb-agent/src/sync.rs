//! The sync path, in one place: updates from a source go into the
//! [`Store`]; a sync translates it (kube-proxy's semantics,
//! [`translate`]), plans this node's frontends ([`Planner`]:
//! NodePorts, external and LoadBalancer IPs, `internalTrafficPolicy:
//! Local`), writes the difference to the maps ([`Reconciler`]), then the
//! source ranges, and brings the health check servers and the metrics up
//! to date. Each step takes only what changed where it can: the Services
//! the store says were touched are translated again and planned again
//! (unless only a whole plan can say the outcome), and the reconciler is
//! then told which frontend addresses to look at.

use std::time::{Instant, SystemTime};

use tracing::{debug, info, warn};

use crate::{
    metrics::{Metrics, SyncRecord, programming_latency},
    northsouth::{NorthSouth, Planner},
    reconcile::Reconciler,
    source::{Store, Update},
    stale_sockets,
    translate::{TranslateOptions, Translator},
};

/// Source state in, map writes out.
pub struct Syncer {
    store: Store,
    translator: Translator,
    opts: TranslateOptions,
    north_south: NorthSouth,
    /// The node-specific plan, patched where a change allows it.
    planner: Planner,
    reconciler: Reconciler,
    metrics: Metrics,
    /// When the agent started: slice changes triggered before are not
    /// counted in the network programming latency.
    started: SystemTime,
    /// Whether the socket hooks serve host clients: then a sync that
    /// changed frontends destroys the host UDP sockets they left
    /// connected to a removed backend ([`stale_sockets`]).
    socket_lb: bool,
}

impl Syncer {
    pub fn new(opts: TranslateOptions, north_south: NorthSouth, reconciler: Reconciler, metrics: Metrics) -> Syncer {
        Syncer {
            store: Store::default(),
            translator: Translator::default(),
            opts,
            north_south,
            planner: Planner::default(),
            reconciler,
            metrics,
            started: SystemTime::now(),
            socket_lb: false,
        }
    }

    /// Says whether the socket hooks serve host clients (see
    /// [`stale_sockets`]).
    pub fn set_socket_lb(&mut self, on: bool) {
        self.socket_lb = on;
    }

    /// Takes an update from a source (nothing is written yet).
    pub fn take(&mut self, update: Update) {
        self.store.apply(update);
    }

    /// Whether the source has listed everything at least once: before
    /// that, a sync would remove what it has not seen yet.
    pub fn ready(&self) -> bool {
        self.store.ready()
    }

    /// The reconciler, for what is not a sync (conntrack GC, settings).
    pub fn reconciler_mut(&mut self) -> &mut Reconciler {
        &mut self.reconciler
    }

    /// Reads the node's addresses again; true when they changed, and the
    /// next sync plans the NodePorts on the new ones.
    pub fn refresh_node_addresses(&mut self) -> bool {
        self.north_south.refresh_addresses(&mut self.reconciler)
    }

    /// The periodic resync (`--sync-period`): compares the maps with what
    /// the last sync wrote and repairs any difference (an entry written or
    /// deleted behind the agent's back); counted in
    /// `lb_drift_repairs_total`. Returns how many entries were repaired.
    pub fn resync(&mut self) -> u64 {
        let started = Instant::now();
        let repairs = self.reconciler.repair();
        for e in &repairs.errors {
            warn!("resync: {e}");
        }
        let total = repairs.total();
        self.metrics.drift_repaired(total);
        if total > 0 {
            let per_map: Vec<String> = repairs.repaired.iter().map(|(m, n)| format!("{}: {n}", m.name())).collect();
            warn!(repaired = total, "resync: the maps differed from the desired state, repaired ({})", per_map.join(", "));
        } else {
            debug!(check_us = started.elapsed().as_micros() as u64, "resync: the maps match the desired state");
        }
        total
    }

    /// Writes the current state to the maps. `first_seen` is when the
    /// oldest update in it arrived; `what` says where it came from.
    pub fn sync(&mut self, first_seen: Instant, what: &str) -> SyncRecord {
        let started = Instant::now();
        self.translator.update(&mut self.store, &self.opts);
        let (translation, changes) = (self.translator.translation(), self.translator.changes());
        let translated = started.elapsed();
        self.north_south.set_zone(self.store.node_zone());
        // Its InternalIPs are the primary addresses (`--nodeport-addresses
        // primary`); the plan below takes what they change.
        self.north_south.set_node_primary(self.store.node_internal_ips(), &mut self.reconciler);
        let (plan, touched) = self.planner.update(translation, changes, self.translator.has_conflicts(), self.north_south.node());
        let north_south_skipped = self.north_south.log_problems(plan);
        // A patched plan says where it and the translation changed.
        let mut stats = self.reconciler.apply_changed(
            &[&translation.desired, &plan.internal, &plan.frontends],
            &[&translation.desired6, &plan.internal6, &plan.frontends6],
            touched.as_ref().map(|(v4, v6)| (v4, v6)),
        );
        self.reconciler.apply_source_ranges(&plan.source_ranges, &mut stats);
        self.reconciler.apply_source_ranges(&plan.source_ranges6, &mut stats);
        self.north_south.sync_health_checks(plan);
        if self.socket_lb && stats.updated + stats.removed > 0 {
            destroy_stale_sockets(&self.reconciler, &self.metrics);
        }
        let latency = first_seen.elapsed();
        let now = SystemTime::now();
        let triggers = self.store.take_trigger_times();
        self.metrics.record_programming(triggers.into_iter().filter_map(|t| programming_latency(t, self.started, now)));
        let record = SyncRecord {
            latency,
            map_ops: stats.ops,
            map_errors: stats.errors.len() as u64,
            skipped: self.store.skipped() + translation.problems.len() + north_south_skipped,
            frontends: self.reconciler.frontend_count(),
            services: translation.services.len(),
        };
        self.metrics.record_sync(&record);
        info!(
            services = record.services,
            frontends = record.frontends,
            added = stats.added,
            updated = stats.updated,
            removed = stats.removed,
            map_ops = stats.ops,
            skipped = record.skipped,
            errors = stats.errors.len(),
            latency_us = latency.as_micros() as u64,
            apply_us = started.elapsed().as_micros() as u64,
            translate_us = translated.as_micros() as u64,
            plan = if touched.is_some() { "patched" } else { "whole" },
            "{what}"
        );
        for e in &stats.errors {
            warn!("sync error: {e}");
        }
        record
    }
}

/// See [`stale_sockets`]: logs and counts what the sweep did.
fn destroy_stale_sockets(reconciler: &Reconciler, metrics: &Metrics) {
    let started = Instant::now();
    match stale_sockets::sweep(reconciler) {
        Ok(sweep) => {
            for (s, frontend) in &sweep.destroyed {
                info!(socket = %s.src, backend = %s.dst, frontend = %frontend, "destroyed a host UDP socket connected to a backend its Service no longer has");
            }
            for e in &sweep.errors {
                warn!("could not destroy a host UDP socket connected to a removed backend: {e}");
            }
            let sweep_us = started.elapsed().as_micros() as u64;
            debug!(connected = sweep.connected, destroyed = sweep.destroyed.len(), sweep_us, "host UDP sockets swept");
            metrics.stale_sockets(sweep.destroyed.len(), sweep.errors.len());
        }
        Err(e) => {
            warn!("listing the host's UDP sockets (sock_diag): {e}");
            metrics.stale_sockets(0, 1);
        }
    }
}
