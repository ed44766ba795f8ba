//! The health server (kube-proxy's port, 10256 by default):
//!
//! - `/livez`: liveness, 200 while the run loop keeps turning (kube-proxy's
//!   `/livez`); the DaemonSet's liveness probe;
//! - `/healthz`: what cloud load balancers probe, as kube-proxy's
//!   `/healthz` (KEP-3836): 200 while the run loop turns *and* the node is
//!   eligible for traffic *and* the maps hold what the last sync asked
//!   for; 503 while its Node is being deleted or carries the
//!   `ToBeDeletedByClusterAutoscaler` taint, so that load balancers drain
//!   it before it goes (`nodeEligible` in the body says which), and once
//!   the syncs have failed (map errors) for [`STALL`], as kube-proxy's
//!   does when its queued changes wait that long (twice its 30 s sync
//!   period): a node whose Services are not programmed should not get the
//!   load balancers' traffic. (`/livez` does not fail for that: a restart
//!   would not make room in a full map.)
//! - `/readyz`: 200 once the first full sync is written and while the API
//!   server can be reached, 503 (saying why) otherwise;
//! - `/metrics`: [`Metrics`] in the Prometheus text format.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::{Request, body::Incoming};
use tokio::net::TcpListener;
use tracing::info;

use crate::{
    http_server::{Limits, Reply, reply},
    metrics::Metrics,
};

/// The run loop is considered stuck when it has not turned for this long.
pub const STALL: Duration = Duration::from_secs(60);

/// The proxy's health, shared by the run loop (which writes it) and the
/// servers that report it: when the loop last turned, and since when the
/// syncs have left map errors.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    start: Instant,
    last_ms: Arc<AtomicU64>,
    /// Milliseconds after `start` + 1 of the first of the failing syncs
    /// in a row; 0 while the last sync wrote everything.
    failing_since_ms: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat { start: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)), failing_since_ms: Arc::new(AtomicU64::new(0)) }
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Records how a sync ended: with map errors (a state not written
    /// whole) or not.
    pub fn sync_ended(&self, errors: bool) {
        if !errors {
            self.failing_since_ms.store(0, Ordering::Relaxed);
        } else if self.failing_since_ms.load(Ordering::Relaxed) == 0 {
            self.failing_since_ms.store(self.start.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        }
    }

    /// How long the syncs have left map errors, if the last one did.
    pub fn sync_failing_for(&self) -> Option<Duration> {
        match self.failing_since_ms.load(Ordering::Relaxed) {
            0 => None,
            since => Some(self.start.elapsed().saturating_sub(Duration::from_millis(since - 1))),
        }
    }

    /// Whether the syncs have not been failing for [`STALL`]: the maps hold
    /// what was asked of them, or soon will.
    pub fn programmed(&self) -> bool {
        self.sync_failing_for().is_none_or(|d| d < STALL)
    }

    /// Whether the proxy is healthy, as kube-proxy's health server judges
    /// its own: the loop turned within [`STALL`], and it is
    /// [`programmed`](Self::programmed) (`/healthz`, health check
    /// NodePorts' answers).
    pub fn proxy_healthy(&self) -> bool {
        self.age() < STALL && self.programmed()
    }
}

/// Binds the health server ([`crate::http_server::listen`]: the default
/// `0.0.0.0` takes both families); fails when the address is taken.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = crate::http_server::listen(addr)?;
    info!(addr = %listener.local_addr()?, "health server listening (/livez, /healthz, /readyz, /metrics)");
    Ok(listener)
}

/// Serves the metrics server (kube-proxy's 127.0.0.1:10249): `/metrics`,
/// the agent's figures and the datapath's (read from the maps pinned under
/// `bpffs` at each scrape), until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, metrics: Metrics, bpffs: std::path::PathBuf) {
    crate::http_server::serve(listener, "metrics server", Limits::default(), move |req| {
        let head = req.method() == hyper::Method::HEAD;
        if req.uri().path() != "/metrics" {
            return Some(reply(head, 404, "text/plain", "not found\n".to_string(), &[]));
        }
        let mut body = metrics.render();
        match crate::maps::Maps::open(&bpffs)
            .map_err(|e| e.to_string())
            .and_then(|m| crate::datapath_metrics::render(&m).map_err(|e| e.to_string()))
        {
            Ok(text) => body.push_str(&text),
            Err(e) => tracing::warn!("metrics: the datapath's figures are missing: {e}"),
        }
        Some(reply(head, 200, crate::metrics::CONTENT_TYPE, body, &[]))
    })
    .await
}

/// Serves until the task is dropped (see [`crate::http_server`] for its
/// bounds).
pub async fn serve(listener: TcpListener, metrics: Metrics, heartbeat: Heartbeat) {
    crate::http_server::serve(listener, "health server", Limits::default(), move |req| Some(handle(req, &metrics, &heartbeat))).await
}

const OK: u16 = 200;
const UNAVAILABLE: u16 = 503;

/// A response: status, content type, body.
type Response = (u16, &'static str, String);

/// Whether the run loop turned recently and `eligible` holds, with
/// kube-proxy's `lastUpdated` and `currentTime` (`lastUpdated` is now while
/// healthy, as kube-proxy keeps it for older clients; the last turn
/// otherwise).
fn check(heartbeat: &Heartbeat, eligible: bool) -> (bool, String, String) {
    let age = heartbeat.age();
    let now = std::time::SystemTime::now();
    let healthy = age < STALL && eligible;
    let last = if healthy { now } else { now - age };
    (healthy, go_time(last), go_time(now))
}

/// kube-proxy's `/healthz` (pkg/proxy/healthcheck/proxy_health.go): cloud
/// load balancers probe it on 10256 to decide whether to send this node
/// traffic, so it fails while the node is on its way out.
fn healthz(heartbeat: &Heartbeat, metrics: &Metrics) -> Response {
    let eligible = metrics.node_ineligible().is_none();
    let (healthy, last, now) = check(heartbeat, eligible && heartbeat.programmed());
    let body = format!("{{\"lastUpdated\": \"{last}\",\"currentTime\": \"{now}\", \"nodeEligible\": {eligible}}}");
    (if healthy { OK } else { UNAVAILABLE }, "application/json", body)
}

/// kube-proxy's `/livez`: the agent itself, whatever its node's fate.
fn livez(heartbeat: &Heartbeat) -> Response {
    let (healthy, last, now) = check(heartbeat, true);
    let body = format!("{{\"lastUpdated\": \"{last}\",\"currentTime\": \"{now}\"}}");
    (if healthy { OK } else { UNAVAILABLE }, "application/json", body)
}

fn handle(req: &Request<Incoming>, metrics: &Metrics, heartbeat: &Heartbeat) -> Reply {
    let (method, path) = (req.method().as_str(), req.uri().path());
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/healthz") => healthz(heartbeat, metrics),
        ("GET" | "HEAD", "/livez") => livez(heartbeat),
        ("GET" | "HEAD", "/readyz") => match metrics.readiness() {
            Ok(()) => (OK, "text/plain", "ok\n".to_string()),
            Err(why) => (UNAVAILABLE, "text/plain", format!("{why}\n")),
        },
        ("GET" | "HEAD", "/metrics") => (OK, crate::metrics::CONTENT_TYPE, metrics.render()),
        ("GET" | "HEAD", _) => (404, "text/plain", "not found\n".to_string()),
        _ => (405, "text/plain", "method not allowed\n".to_string()),
    };
    reply(method == "HEAD", status, content_type, body, &[])
}

/// A time as Go's `time.Time.String()` prints it in UTC
/// (`2006-01-02 15:04:05.999999999 +0000 UTC`), as kube-proxy's health
/// responses carry it.
pub fn go_time(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut frac = format!(".{:09}", d.subsec_nanos());
    while frac.ends_with('0') {
        frac.pop();
    }
    if frac == "." {
        frac.clear();
    }
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}{frac} +0000 UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod go_time_tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_like_go() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_450_000);
        assert_eq!(super::go_time(t), "2023-11-14 22:13:20.12345 +0000 UTC");
        assert_eq!(super::go_time(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29 00:00:00 +0000 UTC");
    }
}

#[cfg(test)]
mod health_tests {
    use std::time::Duration;

    use super::{Heartbeat, OK, STALL, UNAVAILABLE, healthz, livez};
    use crate::metrics::Metrics;

    /// `/healthz` fails once the syncs have failed for the stall time, as
    /// kube-proxy's once its queued changes wait that long; `/livez` does
    /// not; a sync without errors makes it healthy again.
    #[test]
    fn healthz_fails_while_the_syncs_have_failed_for_long() {
        let (heartbeat, metrics) = (Heartbeat::default(), Metrics::default());
        heartbeat.beat();
        heartbeat.sync_ended(false);
        assert_eq!(healthz(&heartbeat, &metrics).0, OK);
        heartbeat.sync_ended(true);
        assert!(heartbeat.sync_failing_for().is_some());
        assert_eq!(healthz(&heartbeat, &metrics).0, OK, "failing for a moment only");
        assert!(heartbeat.proxy_healthy());
        // The first failing sync of a row counts: seen from a clock
        // STALL later (a heartbeat whose start is that much earlier).
        let mut later = heartbeat.clone();
        later.start = later.start.checked_sub(STALL + Duration::from_secs(1)).unwrap();
        later.beat();
        heartbeat.sync_ended(true);
        assert!(later.sync_failing_for().unwrap() > STALL);
        let (status, _, body) = healthz(&later, &metrics);
        assert_eq!(status, UNAVAILABLE, "{body}");
        assert!(body.contains("\"nodeEligible\": true"), "{body}");
        assert!(!later.proxy_healthy());
        assert_eq!(livez(&later).0, OK, "a restart would not help");
        later.sync_ended(false);
        assert_eq!(later.sync_failing_for(), None);
        assert_eq!(healthz(&later, &metrics).0, OK);
    }
}
