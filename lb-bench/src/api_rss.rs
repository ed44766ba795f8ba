//! The agent's peak RSS with full API objects: `lb-agent run` against the
//! in-process API server of the lb-agent tests (`fake_api`), loaded with
//! `services` Services x `endpoints` endpoints as a real API server sends
//! them (`managedFields`, `kubectl.kubernetes.io/last-applied-configuration`
//! and other typical annotations and labels, owner references, endpoint
//! `targetRef`s and hints), until the agent's first sync; VmHWM then.
//! Run with `lb-bench --api-rss --agent <lb-agent>`.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use lb_lab::Netns;
use serde_json::{Value, json};

use crate::agent_cmd::{AgentCommand, Source};
use crate::{services, sys};

#[allow(unused_imports)]
#[path = "../../lb-agent/tests/fake_api/mod.rs"]
mod fake_api;

/// What one run measured.
#[derive(Clone, Debug)]
pub struct ApiRss {
    pub services: usize,
    pub endpoints: usize,
    /// Bytes of JSON the API server holds for them.
    pub json_bytes: usize,
    /// From the agent's start to its first complete sync.
    pub wall: Duration,
    pub vm_hwm_kib: u64,
}

fn managed_fields(manager: &str) -> Value {
    json!([{
        "manager": manager, "operation": "Update", "apiVersion": "v1", "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}},
            "f:labels": {".": {}, "f:app": {}, "f:app.kubernetes.io/name": {}, "f:app.kubernetes.io/part-of": {}}},
            "f:spec": {"f:internalTrafficPolicy": {}, "f:ports": {".": {}, "k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}},
            "f:selector": {}, "f:sessionAffinity": {}, "f:type": {}}}
    }, {
        "manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": "2026-01-01T00:00:01Z", "fieldsType": "FieldsV1",
        "subresource": "status", "fieldsV1": {"f:status": {"f:loadBalancer": {}}}
    }])
}

fn service(i: usize) -> Value {
    let name = format!("svc-{i}");
    let ip = services::cluster_ip(i).to_string();
    let labels = json!({"app": name, "app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "bench", "team": "platform"});
    let last_applied = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "bench", "labels": labels},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}});
    json!({
        "metadata": {"name": name, "namespace": "bench", "uid": format!("6f1c2d3e-0000-4000-8000-{i:012}"),
            "creationTimestamp": "2026-01-01T00:00:00Z", "labels": labels,
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": last_applied.to_string(),
                "meta.helm.sh/release-name": "bench", "meta.helm.sh/release-namespace": "bench",
                "prometheus.io/scrape": "true", "prometheus.io/port": "8080"},
            "managedFields": managed_fields("kubectl-client-side-apply")},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster", "sessionAffinity": "None", "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
        "status": {"loadBalancer": {}}
    })
}

fn slice(i: usize, endpoints: usize) -> Value {
    let name = format!("svc-{i}");
    let eps: Vec<Value> = (0..endpoints)
        .map(|j| {
            json!({"addresses": [services::fake_endpoint(i, j, endpoints).to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", j % 50), "zone": format!("zone-{}", j % 3),
                "hints": {"forZones": [{"name": format!("zone-{}", j % 3)}]},
                "targetRef": {"kind": "Pod", "namespace": "bench", "name": format!("{name}-7d9f8b6c5-{j:05}"),
                    "uid": format!("0a1b2c3d-0000-4000-8000-{:012}", i * 1000 + j)}})
        })
        .collect();
    json!({
        "addressType": "IPv4",
        "metadata": {"name": format!("{name}-abcde"), "namespace": "bench", "generateName": format!("{name}-"),
            "uid": format!("7e2d3c4b-0000-4000-8000-{i:012}"), "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "app": name, "app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "bench"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-01-01T00:00:00Z"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": format!("6f1c2d3e-0000-4000-8000-{i:012}"),
                "controller": true, "blockOwnerDeletion": true}],
            "managedFields": managed_fields("kube-controller-manager")},
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps
    })
}

/// Runs the measurement (root: a network namespace and bpffs).
pub fn run(bin: &Path, n: usize, endpoints: usize) -> Result<ApiRss> {
    let ns = Netns::new("api-rss")?;
    ns.run(|| std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status())?;
    let api = fake_api::FakeApi::start(Some(&ns));
    let mut json_bytes = 0;
    for i in 0..n {
        let (s, sl) = (service(i), slice(i, endpoints));
        json_bytes += s.to_string().len() + sl.to_string().len();
        api.apply_raw(fake_api::Res::Services, s);
        api.apply_raw(fake_api::Res::EndpointSlices, sl);
    }
    let dir = std::env::temp_dir().join(format!("lb-bench-{}-api-rss", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = crate::b3::DirGuard(dir.clone());
    let kubeconfig = api.kubeconfig(&dir);
    let pins = sys::Pins::new("api-rss");
    let size = (n * 2).next_power_of_two().max(1024);
    let (backends, slots) = ((n * endpoints * 2).next_power_of_two().max(1024), (n * endpoints * 4).next_power_of_two().max(1024));
    let mut cmd = AgentCommand::new("api-rss", Source::Kubeconfig(&kubeconfig), pins.path(), "lbbench-none*")
        .xdp_mode("off")
        .health_addr("127.0.0.1:10299")
        .sizes(size as u32, backends as u32, slots as u32)
        .command(&ns, bin);
    let start = Instant::now();
    let mut child = ns.spawn(&mut cmd)?.into_inner();
    let pid = child.id().to_string();
    let stderr = child.stderr.take().expect("piped");
    let mut result = None;
    let mut log = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if line.contains("synced from the API server") && line.contains(&format!("services={n}")) {
            // Let the allocator settle the list's transient peak.
            std::thread::sleep(Duration::from_millis(200));
            let vm_hwm_kib = sys::status_kib(&pid, "VmHWM").unwrap_or(0);
            result = Some(ApiRss { services: n, endpoints, json_bytes, wall: start.elapsed(), vm_hwm_kib });
            break;
        }
        log.push(line);
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match result {
        Some(r) => Ok(r),
        None => {
            bail!("the agent exited before syncing {n} Services: {}", log.iter().rev().take(5).cloned().collect::<Vec<_>>().join(" | "))
        }
    }
}
