//! The agent's figures, served in the Prometheus text format on the
//! health server's `/metrics`.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::source::Kind;

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
pub struct Metrics(Arc<Mutex<Inner>>);

#[derive(Debug, Default)]
struct Inner {
    syncs: u64,
    map_ops: u64,
    map_errors: u64,
    skipped: u64,
    frontends: u64,
    services: u64,
    /// Counts per bucket (not cumulative), then the +Inf overflow.
    latency_buckets: [u64; LATENCY_BUCKETS.len() + 1],
    latency_sum: f64,
    latency_count: u64,
    /// The network programming latency histogram, like the above.
    programming_buckets: Vec<u64>,
    programming_sum: f64,
    programming_count: u64,
    last_sync_unix: f64,
    api_errors_services: u64,
    api_errors_slices: u64,
    api_errors_node: u64,
    /// Map entries put right by the periodic resync (drift repair).
    drift_repairs: u64,
    node_seen: bool,
    /// Why this node should not get new load-balanced traffic (its Node
    /// is being deleted, or is about to be); `None` while it is eligible.
    node_ineligible: Option<String>,
    /// The current outage of the API server, if it cannot be reached.
    api_outage: Option<Outage>,
    ready: bool,
}

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

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    pub fn record_sync(&self, r: &SyncRecord) {
        self.with(|m| {
            m.syncs += 1;
            m.map_ops += r.map_ops;
            m.map_errors += r.map_errors;
            m.skipped = r.skipped as u64;
            m.frontends = r.frontends as u64;
            m.services = r.services as u64;
            let secs = r.latency.as_secs_f64();
            let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
            m.latency_buckets[i] += 1;
            m.latency_sum += secs;
            m.latency_count += 1;
            m.last_sync_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
            m.ready = true;
        })
    }

    /// Observes the network programming latency of slice changes a sync
    /// has written.
    pub fn record_programming(&self, latencies: impl IntoIterator<Item = Duration>) {
        self.with(|m| {
            for d in latencies {
                let secs = d.as_secs_f64();
                let i = PROGRAMMING_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(PROGRAMMING_BUCKETS.len());
                if m.programming_buckets.is_empty() {
                    m.programming_buckets = vec![0; PROGRAMMING_BUCKETS.len() + 1];
                }
                m.programming_buckets[i] += 1;
                m.programming_sum += secs;
                m.programming_count += 1;
            }
        })
    }

    /// Whether the first complete sync has been written.
    pub fn ready(&self) -> bool {
        self.with(|m| m.ready)
    }

    pub fn api_error(&self, kind: Kind) {
        self.with(|m| match kind {
            Kind::Service => m.api_errors_services += 1,
            Kind::EndpointSlice => m.api_errors_slices += 1,
        })
    }

    /// Counts map entries the periodic resync repaired.
    pub fn drift_repaired(&self, n: u64) {
        self.with(|m| m.drift_repairs += n)
    }

    pub fn api_error_node(&self) {
        self.with(|m| m.api_errors_node += 1)
    }

    pub fn set_node_seen(&self, seen: bool) {
        self.with(|m| m.node_seen = seen)
    }

    /// Records whether this node is eligible for load-balanced traffic
    /// (`None`), or why not; returns the previous value.
    pub fn set_node_ineligible(&self, why: Option<String>) -> Option<String> {
        self.with(|m| std::mem::replace(&mut m.node_ineligible, why))
    }

    /// Why this node is not eligible for load-balanced traffic, if it is not
    /// (as kube-proxy's `/healthz` reports `nodeEligible`).
    pub fn node_ineligible(&self) -> Option<String> {
        self.with(|m| m.node_ineligible.clone())
    }

    /// Records a failure to reach the API server. Returns true when it
    /// starts an outage (the caller then says why, once per outage).
    pub fn api_unreachable(&self, why: &str) -> bool {
        self.with(|m| {
            let starts = m.api_outage.is_none();
            if starts {
                m.api_outage = Some(Outage { since: Instant::now(), why: why.to_string() });
            }
            starts
        })
    }

    /// Records that the API server answered; returns how long the outage
    /// it ends lasted, if there was one.
    pub fn api_reachable(&self) -> Option<Duration> {
        self.with(|m| m.api_outage.take().map(|o| o.since.elapsed()))
    }

    /// For how long, and why, the API server has been unreachable.
    pub fn api_outage(&self) -> Option<(Duration, String)> {
        self.with(|m| m.api_outage.as_ref().map(|o| (o.since.elapsed(), o.why.clone())))
    }

    /// What `/readyz` answers: ready once the first complete sync is
    /// written and while the API server can be reached; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.with(|m| match (&m.api_outage, m.ready) {
            (Some(o), _) => Err(format!("the API server cannot be reached (for {}s): {}", o.since.elapsed().as_secs(), o.why)),
            (None, false) => Err("waiting for the first full sync".to_string()),
            (None, true) => Ok(()),
        })
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut out = String::new();
            let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                for (labels, value) in samples {
                    let _ = writeln!(out, "{name}{labels} {value}");
                }
            };
            metric("lb_syncs_total", "counter", "Syncs of the maps with the desired state.", &[("", m.syncs.to_string())]);
            metric(
                "lb_map_operations_total",
                "counter",
                "Map updates and deletes issued by the reconciler.",
                &[("", m.map_ops.to_string())],
            );
            metric("lb_map_errors_total", "counter", "Frontends or backends that could not be written.", &[("", m.map_errors.to_string())]);
            metric("lb_objects_skipped", "gauge", "Objects or fields skipped as invalid in the last sync.", &[("", m.skipped.to_string())]);
            metric("lb_frontends", "gauge", "Frontends in the desired state.", &[("", m.frontends.to_string())]);
            metric("lb_services", "gauge", "Services handled.", &[("", m.services.to_string())]);
            metric(
                "lb_api_errors_total",
                "counter",
                "Failed lists and watches against the API server.",
                &[
                    ("{resource=\"services\"}", m.api_errors_services.to_string()),
                    ("{resource=\"endpointslices\"}", m.api_errors_slices.to_string()),
                    ("{resource=\"nodes\"}", m.api_errors_node.to_string()),
                ],
            );
            metric(
                "lb_drift_repairs_total",
                "counter",
                "Map entries the periodic resync found different from the desired state and repaired.",
                &[("", m.drift_repairs.to_string())],
            );
            metric("lb_node_seen", "gauge", "Whether this node's Node object is known.", &[("", u8::from(m.node_seen).to_string())]);
            metric(
                "lb_node_eligible",
                "gauge",
                "Whether this node takes load-balanced traffic (its Node is not being deleted, nor tainted \
                 ToBeDeletedByClusterAutoscaler).",
                &[("", u8::from(m.node_ineligible.is_none()).to_string())],
            );
            metric(
                "lb_api_reachable",
                "gauge",
                "Whether the API server can be reached.",
                &[("", u8::from(m.api_outage.is_none()).to_string())],
            );
            metric("lb_ready", "gauge", "Whether the first full sync is done.", &[("", u8::from(m.ready).to_string())]);
            metric("lb_last_sync_timestamp_seconds", "gauge", "Unix time of the last sync.", &[("", m.last_sync_unix.to_string())]);
            let _ = writeln!(out, "# HELP lb_sync_latency_seconds From the first event of a batch to its maps written.");
            let _ = writeln!(out, "# TYPE lb_sync_latency_seconds histogram");
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += m.latency_buckets[i];
                let _ = writeln!(out, "lb_sync_latency_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
            }
            cumulative += m.latency_buckets[LATENCY_BUCKETS.len()];
            let _ = writeln!(out, "lb_sync_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(out, "lb_sync_latency_seconds_sum {}", m.latency_sum);
            let _ = writeln!(out, "lb_sync_latency_seconds_count {}", m.latency_count);
            let name = "lb_network_programming_duration_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} From an EndpointSlice change's trigger time (its endpoints.kubernetes.io/last-change-trigger-time) \
                 to its maps written (kube-proxy's network_programming_duration_seconds)."
            );
            let _ = writeln!(out, "# TYPE {name} histogram");
            let mut cumulative = 0;
            for (i, bound) in PROGRAMMING_BUCKETS.iter().enumerate() {
                cumulative += m.programming_buckets.get(i).copied().unwrap_or(0);
                let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
            }
            cumulative += m.programming_buckets.get(PROGRAMMING_BUCKETS.len()).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(out, "{name}_sum {}", m.programming_sum);
            let _ = writeln!(out, "{name}_count {}", m.programming_count);
            out
        })
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
