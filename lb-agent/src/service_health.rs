//! Health check NodePorts (`spec.healthCheckNodePort` of LoadBalancer
//! Services with `externalTrafficPolicy: Local`), served as kube-proxy's
//! `pkg/proxy/healthcheck/service_health.go` does: any path, `200` while
//! this node has a ready local endpoint (and the agent is healthy:
//! `Heartbeat::proxy_healthy`, its syncs included), `503`
//! otherwise, with the body
//!
//! ```json
//! {
//!     "service": {
//!         "namespace": "ns",
//!         "name": "name"
//!     },
//!     "localEndpoints": 1,
//!     "serviceProxyHealthy": true
//! }
//! ```
//!
//! (indented with tabs, exactly as kube-proxy prints it).
//!
//! Cloud load balancers probe it to send traffic only to nodes that have
//! endpoints (the others drop it).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    http_server::{Limits, reply},
    model::ServiceRef,
    probes::Heartbeat,
};

/// Port -> (Service, local ready endpoints), shared with the servers.
type State = Arc<Mutex<BTreeMap<u16, (ServiceRef, usize)>>>;

pub struct HealthChecks {
    state: State,
    servers: BTreeMap<u16, JoinHandle<()>>,
    heartbeat: Heartbeat,
    /// Where to listen (the wildcard by default: both families, `listen`).
    bind: Ipv4Addr,
}

impl HealthChecks {
    pub fn new(heartbeat: Heartbeat) -> HealthChecks {
        HealthChecks { state: Arc::default(), servers: BTreeMap::new(), heartbeat, bind: Ipv4Addr::UNSPECIFIED }
    }

    /// Opens the ports of new Services, closes those of removed ones and
    /// updates the counts. Must run inside the tokio runtime. A port that
    /// cannot be bound is reported and retried at the next sync.
    pub fn sync(&mut self, want: &BTreeMap<ServiceRef, (u16, usize)>) {
        let by_port: BTreeMap<u16, (ServiceRef, usize)> = want.iter().map(|(svc, (port, n))| (*port, (svc.clone(), *n))).collect();
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = by_port.clone();
        let gone: Vec<u16> = self.servers.keys().filter(|p| !by_port.contains_key(p)).copied().collect();
        for port in gone {
            if let Some(task) = self.servers.remove(&port) {
                task.abort();
                info!(port, "health check NodePort closed");
            }
        }
        for (port, (svc, _)) in by_port {
            if self.servers.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::from((self.bind, port));
            // Both families on the default wildcard, as kube-proxy's (Go):
            // a dual-stack load balancer probes each node over both.
            match crate::http_server::listen(addr) {
                Ok(listener) => {
                    info!(port, service = %svc, "health check NodePort listening");
                    let (state, hb) = (self.state.clone(), self.heartbeat.clone());
                    self.servers.insert(port, tokio::spawn(serve(listener, port, state, hb)));
                }
                Err(e) => warn!("health check NodePort {port} of Service {svc}: cannot listen on {addr}: {e}"),
            }
        }
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for task in self.servers.values() {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, port: u16, state: State, heartbeat: Heartbeat) {
    crate::http_server::serve(listener, "health check NodePort", Limits::default(), move |req| {
        let entry = state.lock().unwrap_or_else(|e| e.into_inner()).get(&port).cloned();
        // A port closed between accept and now: kube-proxy answers nothing.
        let (svc, count) = entry?;
        let (status, body) = response(&svc, count, heartbeat.proxy_healthy());
        let code = if status.starts_with("200") { 200 } else { 503 };
        Some(reply(req.method() == hyper::Method::HEAD, code, "application/json", body, &[("X-Content-Type-Options", "nosniff")]))
    })
    .await
}

/// The response to a probe: status line and body.
pub fn response(svc: &ServiceRef, local_endpoints: usize, proxy_healthy: bool) -> (&'static str, String) {
    let status = if local_endpoints != 0 && proxy_healthy { "200 OK" } else { "503 Service Unavailable" };
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        serde_json::Value::from(svc.namespace.as_str()),
        serde_json::Value::from(svc.name.as_str()),
        local_endpoints,
        proxy_healthy
    );
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_body() {
        let svc = ServiceRef { namespace: "ns".into(), name: "web".into() };
        let (status, body) = response(&svc, 2, true);
        assert_eq!(status, "200 OK");
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["service"]["name"], "web");
        assert_eq!(response(&svc, 0, true).0, "503 Service Unavailable");
        assert_eq!(response(&svc, 3, false).0, "503 Service Unavailable");
    }
}
