//! The agent's figures, served in the Prometheus text format on the
//! health server's `/metrics` and the metrics server's, through
//! prometheus-client: counters, gauges and histograms registered once
//! in a [`Registry`], encoded at each scrape.

use std::{
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::prometheus_text,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::source::Kind;

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;
/// Upper bounds (seconds) of the sync latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Upper bounds (seconds) of the network programming latency histogram:
/// kube-proxy's (`NetworkProgrammingLatency`): 0.25 s, 0.5 s, every second
/// to 59 s, every 5 s to 115 s, every 30 s to 5 min.
const PROGRAMMING_BUCKETS: [f64; 80] = programming_buckets();

const fn programming_buckets() -> [f64; 80] {
    let mut b = [0.0; 80];
    b[0] = 0.25;
    b[1] = 0.5;
    let mut i = 0;
    while i < 59 {
        b[2 + i] = (i + 1) as f64;
        i += 1;
    }
    i = 0;
    while i < 12 {
        b[61 + i] = (60 + 5 * i) as f64;
        i += 1;
    }
    i = 0;
    while i < 7 {
        b[73 + i] = (120 + 30 * i) as f64;
        i += 1;
    }
    b
}

/// The network programming latency of one slice change: from its trigger
/// time to `now` (its change is in the maps). `None` for a change
/// triggered before the agent `started` (a list after a start or restart
/// sees old changes, already programmed by a predecessor: kube-proxy
/// skips them the same way). A trigger time ahead of `now` (clock skew
/// between the control plane and the node) counts as 0.
pub fn programming_latency(trigger: SystemTime, started: SystemTime, now: SystemTime) -> Option<Duration> {
    (trigger > started).then(|| now.duration_since(trigger).unwrap_or(Duration::ZERO))
}

/// Shared handle; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Metrics(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    registry: Registry,
    m: Instruments,
    state: Mutex<State>,
}

/// The instruments, each registered in the registry under its name.
#[derive(Debug)]
struct Instruments {
    syncs: Counter,
    map_ops: Counter,
    map_errors: Counter,
    skipped: Gauge,
    frontends: Gauge,
    services: Gauge,
    api_errors: Family<[(&'static str, &'static str); 1], Counter>,
    /// Map entries put right by the periodic resync (drift repair).
    drift_repairs: Counter,
    /// Host UDP sockets destroyed because their backend left the Service
    /// (`stale_sockets`), and failures to.
    stale_sockets: Counter,
    stale_socket_errors: Counter,
    node_seen: Gauge,
    node_eligible: Gauge,
    api_reachable: Gauge,
    ready: Gauge,
    last_sync_unix: Gauge<f64, AtomicU64>,
    sync_latency: Histogram,
    programming: Histogram,
}

/// What the agent's probes need besides the figures.
#[derive(Debug, Default)]
struct State {
    /// Why this node should not get new load-balanced traffic (its Node
    /// is being deleted, or is about to be); `None` while it is eligible.
    node_ineligible: Option<String>,
    /// The current outage of the API server, if it cannot be reached.
    api_outage: Option<Outage>,
    ready: bool,
}

impl Default for Shared {
    fn default() -> Self {
        let m = Instruments {
            syncs: Counter::default(),
            map_ops: Counter::default(),
            map_errors: Counter::default(),
            skipped: Gauge::default(),
            frontends: Gauge::default(),
            services: Gauge::default(),
            api_errors: Family::default(),
            drift_repairs: Counter::default(),
            stale_sockets: Counter::default(),
            stale_socket_errors: Counter::default(),
            node_seen: Gauge::default(),
            node_eligible: Gauge::default(),
            api_reachable: Gauge::default(),
            ready: Gauge::default(),
            last_sync_unix: Gauge::default(),
            sync_latency: Histogram::new(LATENCY_BUCKETS),
            programming: Histogram::new(PROGRAMMING_BUCKETS),
        };
        // Every resource's line from the start, at 0.
        for resource in API_RESOURCES {
            let _ = m.api_errors.get_or_create(&[("resource", resource)]);
        }
        m.node_eligible.set(1);
        m.api_reachable.set(1);
        let mut r = Registry::default();
        r.register("lb_syncs", "Syncs of the maps with the desired state", m.syncs.clone());
        r.register("lb_map_operations", "Map updates and deletes issued by the reconciler", m.map_ops.clone());
        r.register("lb_map_errors", "Frontends or backends that could not be written", m.map_errors.clone());
        r.register("lb_objects_skipped", "Objects or fields skipped as invalid in the last sync", m.skipped.clone());
        r.register("lb_frontends", "Frontends in the desired state", m.frontends.clone());
        r.register("lb_services", "Services handled", m.services.clone());
        r.register("lb_api_errors", "Failed lists and watches against the API server", m.api_errors.clone());
        r.register(
            "lb_drift_repairs",
            "Map entries the periodic resync found different from the desired state and repaired",
            m.drift_repairs.clone(),
        );
        r.register(
            "lb_stale_sockets_destroyed",
            "Host UDP sockets the socket hooks had connected to a backend that then left its Service, destroyed",
            m.stale_sockets.clone(),
        );
        r.register(
            "lb_stale_socket_errors",
            "Such sockets that could not be destroyed, and sweeps that could not list the host's sockets",
            m.stale_socket_errors.clone(),
        );
        r.register("lb_node_seen", "Whether this node's Node object is known", m.node_seen.clone());
        r.register(
            "lb_node_eligible",
            "Whether this node takes load-balanced traffic (its Node is not being deleted, nor tainted \
             ToBeDeletedByClusterAutoscaler)",
            m.node_eligible.clone(),
        );
        r.register("lb_api_reachable", "Whether the API server can be reached", m.api_reachable.clone());
        r.register("lb_ready", "Whether the first full sync is done", m.ready.clone());
        r.register("lb_last_sync_timestamp_seconds", "Unix time of the last sync", m.last_sync_unix.clone());
        r.register("lb_sync_latency_seconds", "From the first event of a batch to its maps written", m.sync_latency.clone());
        r.register(
            "lb_network_programming_duration_seconds",
            "From an EndpointSlice change's trigger time (its endpoints.kubernetes.io/last-change-trigger-time) \
             to its maps written (kube-proxy's network_programming_duration_seconds)",
            m.programming.clone(),
        );
        Shared { registry: r, m, state: Mutex::default() }
    }
}

/// The values of `lb_api_errors_total`'s `resource` label.
const API_RESOURCES: [&str; 3] = ["services", "endpointslices", "nodes"];

/// A streak of failures to reach the API server.
#[derive(Debug)]
struct Outage {
    since: Instant,
    /// The first failure of the streak.
    why: String,
}

/// What one sync did.
#[derive(Clone, Debug, Default)]
pub struct SyncRecord {
    /// From the first event of the batch to the maps being written.
    pub latency: Duration,
    pub map_ops: u64,
    pub map_errors: u64,
    pub skipped: usize,
    pub frontends: usize,
    pub services: usize,
}

/// A count as a gauge's value.
fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    fn state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut guard = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    pub fn record_sync(&self, r: &SyncRecord) {
        let m = &self.0.m;
        m.syncs.inc();
        m.map_ops.inc_by(r.map_ops);
        m.map_errors.inc_by(r.map_errors);
        m.skipped.set(gauge_value(r.skipped));
        m.frontends.set(gauge_value(r.frontends));
        m.services.set(gauge_value(r.services));
        m.sync_latency.observe(r.latency.as_secs_f64());
        m.last_sync_unix.set(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0));
        m.ready.set(1);
        self.state(|s| s.ready = true);
    }

    /// Observes the network programming latency of slice changes a sync
    /// has written.
    pub fn record_programming(&self, latencies: impl IntoIterator<Item = Duration>) {
        for d in latencies {
            self.0.m.programming.observe(d.as_secs_f64());
        }
    }

    /// Whether the first complete sync has been written.
    pub fn ready(&self) -> bool {
        self.state(|s| s.ready)
    }

    pub fn api_error(&self, kind: Kind) {
        let resource = match kind {
            Kind::Service => API_RESOURCES[0],
            Kind::EndpointSlice => API_RESOURCES[1],
        };
        self.0.m.api_errors.get_or_create(&[("resource", resource)]).inc();
    }

    /// Counts map entries the periodic resync repaired.
    pub fn drift_repaired(&self, n: u64) {
        self.0.m.drift_repairs.inc_by(n);
    }

    /// Counts a sweep of stale host sockets: those destroyed, and those
    /// (or the listing) that failed.
    pub fn stale_sockets(&self, destroyed: usize, errors: usize) {
        self.0.m.stale_sockets.inc_by(destroyed as u64);
        self.0.m.stale_socket_errors.inc_by(errors as u64);
    }

    pub fn api_error_node(&self) {
        self.0.m.api_errors.get_or_create(&[("resource", API_RESOURCES[2])]).inc();
    }

    pub fn set_node_seen(&self, seen: bool) {
        self.0.m.node_seen.set(i64::from(seen));
    }

    /// Records whether this node is eligible for load-balanced traffic
    /// (`None`), or why not; returns the previous value.
    pub fn set_node_ineligible(&self, why: Option<String>) -> Option<String> {
        self.0.m.node_eligible.set(i64::from(why.is_none()));
        self.state(|s| std::mem::replace(&mut s.node_ineligible, why))
    }

    /// Why this node is not eligible for load-balanced traffic, if it is not
    /// (as kube-proxy's `/healthz` reports `nodeEligible`).
    pub fn node_ineligible(&self) -> Option<String> {
        self.state(|s| s.node_ineligible.clone())
    }

    /// Records a failure to reach the API server. Returns true when it
    /// starts an outage (the caller then says why, once per outage).
    pub fn api_unreachable(&self, why: &str) -> bool {
        self.0.m.api_reachable.set(0);
        self.state(|s| {
            let starts = s.api_outage.is_none();
            if starts {
                s.api_outage = Some(Outage { since: Instant::now(), why: why.to_string() });
            }
            starts
        })
    }

    /// Records that the API server answered; returns how long the outage
    /// it ends lasted, if there was one.
    pub fn api_reachable(&self) -> Option<Duration> {
        self.0.m.api_reachable.set(1);
        self.state(|s| s.api_outage.take().map(|o| o.since.elapsed()))
    }

    /// For how long, and why, the API server has been unreachable.
    pub fn api_outage(&self) -> Option<(Duration, String)> {
        self.state(|s| s.api_outage.as_ref().map(|o| (o.since.elapsed(), o.why.clone())))
    }

    /// What `/readyz` answers: ready once the first complete sync is
    /// written and while the API server can be reached; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.state(|s| match (&s.api_outage, s.ready) {
            (Some(o), _) => Err(format!("the API server cannot be reached (for {}s): {}", o.since.elapsed().as_secs(), o.why)),
            (None, false) => Err("waiting for the first full sync".to_string()),
            (None, true) => Ok(()),
        })
    }

    /// The Prometheus text exposition (format 0.0.4, [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.0.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_match() {
        let m = Metrics::default();
        for ms in [2, 2, 40, 20_000] {
            m.record_sync(&SyncRecord { latency: Duration::from_millis(ms), map_ops: 3, ..SyncRecord::default() });
        }
        let text = m.render();
        assert!(text.contains("lb_sync_latency_seconds_bucket{le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("lb_sync_latency_seconds_bucket{le=\"0.05\"} 3\n"), "{text}");
        assert!(text.contains("lb_sync_latency_seconds_bucket{le=\"10\"} 3\n"), "{text}");
        assert!(text.contains("lb_sync_latency_seconds_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("lb_sync_latency_seconds_count 4\n"), "{text}");
        assert!(text.contains("lb_map_operations_total 12\n"), "{text}");
        assert!(text.contains("lb_ready 1\n"), "{text}");
        m.stale_sockets(2, 1);
        let text = m.render();
        assert!(text.contains("lb_stale_sockets_destroyed_total 2\n") && text.contains("lb_stale_socket_errors_total 1\n"), "{text}");
    }

    #[test]
    fn programming_buckets_are_kube_proxys() {
        assert_eq!(&PROGRAMMING_BUCKETS[..4], &[0.25, 0.5, 1.0, 2.0]);
        assert_eq!(PROGRAMMING_BUCKETS[60], 59.0);
        assert_eq!(&PROGRAMMING_BUCKETS[61..63], &[60.0, 65.0]);
        assert_eq!(PROGRAMMING_BUCKETS[72], 115.0);
        assert_eq!(&PROGRAMMING_BUCKETS[73..], &[120.0, 150.0, 180.0, 210.0, 240.0, 270.0, 300.0]);
        assert!(PROGRAMMING_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn programming_latency_runs_from_the_trigger_time_and_skips_older_changes() {
        let at = |s: f64| UNIX_EPOCH + Duration::from_secs_f64(s);
        let started = at(1000.0);
        assert_eq!(programming_latency(at(1010.0), started, at(1012.5)), Some(Duration::from_millis(2500)));
        assert_eq!(programming_latency(at(1000.0), started, at(1012.5)), None, "triggered before the agent started");
        assert_eq!(programming_latency(at(990.0), started, at(1012.5)), None);
        assert_eq!(programming_latency(at(1013.0), started, at(1012.5)), Some(Duration::ZERO), "a trigger time ahead of the node's clock");
    }

    #[test]
    fn programming_histogram_is_cumulative() {
        let m = Metrics::default();
        assert!(m.render().contains("lb_network_programming_duration_seconds_count 0\n"));
        m.record_programming([0.1, 2.5, 2.5, 70.0, 400.0].map(Duration::from_secs_f64));
        let text = m.render();
        let bucket = |le: &str| format!("lb_network_programming_duration_seconds_bucket{{le=\"{le}\"}} ");
        assert!(text.contains(&format!("{}1\n", bucket("0.25"))), "{text}");
        assert!(text.contains(&format!("{}1\n", bucket("2"))), "{text}");
        assert!(text.contains(&format!("{}3\n", bucket("3"))), "{text}");
        assert!(text.contains(&format!("{}3\n", bucket("65"))), "{text}");
        assert!(text.contains(&format!("{}4\n", bucket("70"))), "{text}");
        assert!(text.contains(&format!("{}4\n", bucket("300"))), "{text}");
        assert!(text.contains(&format!("{}5\n", bucket("+Inf"))), "{text}");
        assert!(text.contains("lb_network_programming_duration_seconds_count 5\n"), "{text}");
        assert!(text.contains("lb_network_programming_duration_seconds_sum 475.1\n"), "{text}");
    }

    #[test]
    fn an_outage_is_reported_once_and_makes_the_agent_unready() {
        let m = Metrics::default();
        assert_eq!(m.readiness(), Err("waiting for the first full sync".to_string()));
        m.record_sync(&SyncRecord::default());
        assert_eq!(m.readiness(), Ok(()));
        assert!(m.api_unreachable("connection refused"), "the first failure starts the outage");
        assert!(!m.api_unreachable("connection refused again"), "later ones belong to it");
        let why = m.readiness().unwrap_err();
        assert!(why.contains("connection refused") && !why.contains("again"), "{why}");
        assert!(m.render().contains("lb_api_reachable 0\n"));
        assert!(m.api_reachable().is_some(), "the outage ends");
        assert!(m.api_reachable().is_none(), "once");
        assert_eq!(m.readiness(), Ok(()));
        assert!(m.api_unreachable("timed out"), "a new outage");
    }

    #[test]
    fn node_eligibility_defaults_to_eligible() {
        let m = Metrics::default();
        assert_eq!(m.node_ineligible(), None);
        assert!(m.render().contains("lb_node_eligible 1\n"));
        assert_eq!(m.set_node_ineligible(Some("being deleted".into())), None);
        assert_eq!(m.node_ineligible().as_deref(), Some("being deleted"));
        assert!(m.render().contains("lb_node_eligible 0\n"));
        assert_eq!(m.set_node_ineligible(None).as_deref(), Some("being deleted"));
    }
}
