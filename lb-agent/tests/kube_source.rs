//! The agent against the Kubernetes API, with the real kube-rs client and
//! an in-process fake API server (`fake_api`) in the lab node's namespace,
//! where the agent runs. Every scenario asserts on the pinned maps as
//! `lb-agent list` reads them; the first and the restart test also on
//! real traffic.

mod common;
mod fake_api;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{ManifestDir, PinDir, kernel_tests_enabled, wait_for};
use fake_api::{FakeApi, Res};
use k8s_openapi::{
    api::{
        core::v1::{Node, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use lb_agent::{list, maps::Maps};
use lb_lab::{ChildGuard, Netns, NodeLab, Server, tcp_request, tcp_server};
use serde_json::json;

const NS: &str = "test";
const HEALTH_PORT: u16 = 10256;

// ---- objects ----------------------------------------------------------------

fn service(name: &str, ip: &str, ports: &[(&str, u16, &str)]) -> Service {
    Service {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some(NS.into()), ..Default::default() },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
            type_: Some("ClusterIP".into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(pname, port, target)| ServicePort {
                        name: Some(pname.to_string()),
                        port: i32::from(*port),
                        protocol: Some("TCP".into()),
                        target_port: Some(IntOrString::String(target.to_string())),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[derive(Clone, Copy)]
enum Cond {
    Ready,
    NotReady,
    Terminating,
}

fn slice(name: &str, svc: &str, ports: &[(&str, u16)], endpoints: &[(Ipv4Addr, Cond)]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            labels: Some(BTreeMap::from([("kubernetes.io/service-name".to_string(), svc.to_string())])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(
            ports
                .iter()
                .map(|(n, p)| EndpointPort {
                    name: Some(n.to_string()),
                    port: Some(i32::from(*p)),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        endpoints: endpoints
            .iter()
            .map(|(ip, cond)| {
                let (ready, serving, terminating) = match cond {
                    Cond::Ready => (true, true, false),
                    Cond::NotReady => (false, false, false),
                    Cond::Terminating => (false, true, true),
                };
                Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions { ready: Some(ready), serving: Some(serving), terminating: Some(terminating) }),
                    node_name: Some("node-1".into()),
                    ..Default::default()
                }
            })
            .collect(),
    }
}

fn node_object() -> Node {
    Node { metadata: ObjectMeta { name: Some("node-1".into()), ..Default::default() }, ..Default::default() }
}

/// node-1 with `extra` merged into its JSON (a deletionTimestamp, taints).
fn node_with(extra: serde_json::Value) -> serde_json::Value {
    let mut node = serde_json::to_value(node_object()).unwrap();
    for (section, fields) in extra.as_object().unwrap() {
        for (k, v) in fields.as_object().unwrap() {
            node[section][k] = v.clone();
        }
    }
    node
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 9, n)
}

// ---- the agent ----------------------------------------------------------------

/// `lb-agent run --kubeconfig ...` in a lab node.
struct KubeAgent {
    pins: Option<PinDir>,
    log: PathBuf,
    child: Option<ChildGuard>,
}

impl KubeAgent {
    fn start(node: &Netns, kubeconfig: &Path, pins: PinDir) -> KubeAgent {
        Self::start_with(node, kubeconfig, pins, &["--sync-delay-ms", "50"])
    }

    fn start_with(node: &Netns, kubeconfig: &Path, pins: PinDir, extra: &[&str]) -> KubeAgent {
        Self::start_env(node, kubeconfig, pins, extra, &[])
    }

    /// With extra flags, and variables (`LB_*`, as the ConfigMap sets them).
    fn start_env(node: &Netns, kubeconfig: &Path, pins: PinDir, extra: &[&str], vars: &[(&str, &str)]) -> KubeAgent {
        let log =
            std::env::temp_dir().join(format!("lb-agent-{}-{}.log", std::process::id(), pins.0.file_name().unwrap().to_string_lossy()));
        let log_file = fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut cmd = node.command(env!("CARGO_BIN_EXE_lb-agent"));
        cmd.args(["run", "--pod-ifaces", "lbp*", "--poll-interval-ms", "100"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--node-name", "node-1", "--api-backoff-max-ms", "500"])
            .arg("--health-addr")
            .arg(format!("127.0.0.1:{HEALTH_PORT}"))
            .arg("--bpffs")
            .arg(&pins.0)
            .args(extra)
            .envs(vars.iter().copied())
            .env("RUST_LOG", "info,lb_agent=debug")
            .env("NO_COLOR", "1")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        let child = node.spawn(&mut cmd).unwrap();
        KubeAgent { pins: Some(pins), log, child: Some(child) }
    }

    fn pins(&self) -> &Path {
        &self.pins.as_ref().unwrap().0
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn rows(&self) -> Vec<list::Row> {
        list::rows(&Maps::open(self.pins()).unwrap()).unwrap()
    }

    fn wait_rows(&self, what: &str, pred: impl Fn(&[list::Row]) -> bool) -> Vec<list::Row> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let rows = Maps::open(self.pins()).ok().and_then(|m| list::rows(&m).ok());
            if let Some(rows) = &rows
                && pred(rows)
            {
                return rows.clone();
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; maps hold {rows:#?}\nagent log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a log line containing `needle` (after `skip` bytes).
    fn wait_log(&self, what: &str, skip: usize, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.log_text();
            if let Some(line) = text.get(skip..).unwrap_or("").lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what} ({needle:?}); agent log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent (SIGTERM) and returns its pin directory, maps kept.
    fn stop(&mut self) -> PinDir {
        if let Some(child) = self.child.take() {
            let mut child = child.into_inner();
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().unwrap();
            assert!(status.success(), "the agent exits cleanly on SIGTERM: {status}\n{}", self.log_text());
        }
        self.pins.take().unwrap()
    }

    fn assert_alive(&mut self) {
        if let Some(child) = self.child.as_mut() {
            assert!(child.try_wait().unwrap().is_none(), "the agent died:\n{}", self.log_text());
        }
    }
}

impl Drop for KubeAgent {
    fn drop(&mut self) {
        drop(self.child.take());
        // After stop() the pins (and the log) go on with the next agent.
        if self.pins.is_some() {
            let _ = fs::remove_file(&self.log);
        }
    }
}

/// GET on the agent's health server, from inside the node namespace:
/// (status code, body), or `None` while nothing listens.
fn try_health(node: &Netns, path: &str) -> Option<(u16, String)> {
    let path = path.to_string();
    node.run(move || {
        let mut s = TcpStream::connect(("127.0.0.1", HEALTH_PORT)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((code, body))
    })
}

fn health(node: &Netns, path: &str) -> (u16, String) {
    try_health(node, path).unwrap_or_else(|| panic!("the health server does not answer {path}"))
}

fn wait_health(node: &Netns, path: &str, code: u16) -> String {
    wait_for(&format!("{path} to answer {code}"), Duration::from_secs(20), || {
        try_health(node, path).and_then(|(c, body)| (c == code).then_some(body))
    })
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

fn backends(rows: &[list::Row], frontend: &str) -> BTreeSet<String> {
    rows.iter().find(|r| r.frontend == frontend).map(|r| r.backends.iter().cloned().collect()).unwrap_or_default()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A lab node (no pods), a fake API server in it and a scratch dir for
/// the kubeconfig.
struct Setup {
    lab: NodeLab,
    api: FakeApi,
    dir: ManifestDir,
}

fn setup(pods: &[&str], tag: &str) -> Setup {
    let lab = NodeLab::new(pods).unwrap();
    let api = FakeApi::start(Some(&lab.node));
    api.apply(&node_object());
    Setup { lab, api, dir: ManifestDir::new(tag) }
}

impl Setup {
    fn agent(&self, tag: &str) -> KubeAgent {
        KubeAgent::start(&self.lab.node, &self.api.kubeconfig(&self.dir.0), PinDir::new(tag))
    }

    /// A TCP server on :8080 in each of these pods, answering its name.
    fn web_servers(&self, pods: &[&str]) -> Vec<Server> {
        pods.iter()
            .map(|n| {
                let pod = self.lab.pod(n);
                tcp_server(&pod.ns, SocketAddrV4::new(pod.ip, 8080), n).unwrap()
            })
            .collect()
    }
}

// ---- scenarios ----------------------------------------------------------------

#[test]
fn create_scale_and_delete_a_service_with_traffic() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = setup(&["client", "web-a", "web-b", "web-c"], "kcrud");
    let _servers = s.web_servers(&["web-a", "web-b", "web-c"]);
    let pod_ip = |n: &str| s.lab.pod(n).ip;
    let agent = s.agent("kcrud");
    // Nothing exists yet: ready once both lists are done, with no frontend.
    wait_health(&s.lab.node, "/readyz", 200);
    assert!(agent.rows().is_empty());

    s.api.apply(&service("web", "10.96.0.10", &[("http", 80, "http")]));
    let all: Vec<_> = ["web-a", "web-b", "web-c"].iter().map(|n| (pod_ip(n), Cond::Ready)).collect();
    s.api.apply(&slice("web-1", "web", &[("http", 8080)], &all));
    let rows = agent.wait_rows("3 backends", |r| r.len() == 1 && r[0].backends.len() == 3);
    assert_eq!(rows[0].name, "test/web:http");
    let id = rows[0].id;
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
    let client = &s.lab.pod("client").ns;
    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        seen.insert(tcp_request(client, vip).unwrap());
    }
    assert_eq!(seen, set(&["web-a", "web-b", "web-c"]));

    // Scale down to one.
    s.api.apply(&slice("web-1", "web", &[("http", 8080)], &[(pod_ip("web-b"), Cond::Ready)]));
    let rows = agent.wait_rows("1 backend", |r| r.len() == 1 && r[0].backends.len() == 1);
    assert_eq!(rows[0].id, id, "the frontend keeps its ID");
    for _ in 0..20 {
        assert_eq!(tcp_request(client, vip).unwrap(), "web-b");
    }

    // Delete.
    s.api.delete(Res::Services, NS, "web");
    s.api.delete(Res::EndpointSlices, NS, "web-1");
    agent.wait_rows("no frontend", |r| r.is_empty());
    assert!(tcp_request(client, vip).is_err(), "the ClusterIP is gone");

    let metrics = wait_health(&s.lab.node, "/metrics", 200);
    assert!(metric(&metrics, "lb_sync_latency_seconds_count") >= 3.0, "{metrics}");
    assert!(metric(&metrics, "lb_map_operations_total") > 0.0, "{metrics}");
    assert_eq!(metric(&metrics, "lb_node_seen"), 1.0, "{metrics}");
    assert_eq!(health(&s.lab.node, "/healthz").0, 200);
}

#[test]
fn endpoint_goes_unready_then_terminating() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = setup(&[], "kready");
    let agent = s.agent("kready");
    s.api.apply(&service("api", "10.96.0.20", &[("http", 80, "http")]));
    s.api.apply(&slice("api-1", "api", &[("http", 8080)], &[(ip(1), Cond::Ready), (ip(2), Cond::Ready)]));
    agent.wait_rows("2 backends", |r| r.len() == 1 && r[0].backends.len() == 2);
    let fe = "10.96.0.20:80/TCP";

    s.api.apply(&slice("api-1", "api", &[("http", 8080)], &[(ip(1), Cond::NotReady), (ip(2), Cond::Ready)]));
    let rows = agent.wait_rows("unready backend out", |r| r.len() == 1 && r[0].backends.len() == 1);
    assert_eq!(backends(&rows, fe), set(&["10.244.9.2:8080"]));

    // The last one terminates while serving: with nothing ready it still
    // takes new flows (KEP-1669), flagged terminating.
    s.api.apply(&slice("api-1", "api", &[("http", 8080)], &[(ip(1), Cond::NotReady), (ip(2), Cond::Terminating)]));
    let rows = agent.wait_rows("terminating fallback", |r| r.len() == 1 && r[0].backends.iter().any(|b| b.contains("terminating")));
    assert_eq!(backends(&rows, fe), set(&["10.244.9.2:8080 (terminating)"]));

    // A new ready endpoint takes over.
    s.api.apply(&slice("api-1", "api", &[("http", 8080)], &[(ip(2), Cond::Terminating), (ip(3), Cond::Ready)]));
    let rows = agent.wait_rows("ready endpoint preferred", |r| backends(r, fe) == set(&["10.244.9.3:8080"]));
    assert_eq!(rows.len(), 1);
}

#[test]
fn renamed_named_port_follows_the_endpointslice_port() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = setup(&[], "kport");
    let agent = s.agent("kport");
    s.api.apply(&service("app", "10.96.0.30", &[("http", 80, "web")]));
    // Several slices, merged, with a duplicate endpoint.
    s.api.apply(&slice("app-1", "app", &[("http", 8080)], &[(ip(1), Cond::Ready), (ip(2), Cond::Ready)]));
    s.api.apply(&slice("app-2", "app", &[("http", 8080)], &[(ip(2), Cond::Ready), (ip(3), Cond::Ready)]));
    let fe = "10.96.0.30:80/TCP";
    agent.wait_rows("merged slices", |r| backends(r, fe) == set(&["10.244.9.1:8080", "10.244.9.2:8080", "10.244.9.3:8080"]));

    // The ServicePort is renamed first: no slice port has the new name yet,
    // so the frontend has no backend (and rejects).
    s.api.apply(&service("app", "10.96.0.30", &[("web", 80, "web")]));
    let rows = agent.wait_rows("no backend after the rename", |r| r.len() == 1 && r[0].backends.is_empty());
    assert_eq!(rows[0].name, "test/app:web");
    // The EndpointSlice controller catches up, with a new target port.
    s.api.apply(&slice("app-1", "app", &[("web", 9090)], &[(ip(1), Cond::Ready), (ip(2), Cond::Ready)]));
    s.api.apply(&slice("app-2", "app", &[("web", 9090)], &[(ip(3), Cond::Ready)]));
    agent.wait_rows("new port", |r| backends(r, fe) == set(&["10.244.9.1:9090", "10.244.9.2:9090", "10.244.9.3:9090"]));
}

#[test]
fn watch_410_gone_relists_without_flushing() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = setup(&[], "k410");
    let agent = s.agent("k410");
    s.api.apply(&service("a", "10.96.0.41", &[("p", 80, "p")]));
    s.api.apply(&slice("a-1", "a", &[("p", 8080)], &[(ip(1), Cond::Ready)]));
    s.api.apply(&service("b", "10.96.0.42", &[("p", 80, "p")]));
    let rows = agent.wait_rows("two frontends", |r| r.len() == 2 && r[0].backends.len() == 1);
    let id_a = rows.iter().find(|r| r.name == "test/a:p").unwrap().id;
    let lists_before = s.api.lists_of("/api/v1/services");

    // Events lost: only a relist shows them.
    s.api.apply_silently(&slice("a-1", "a", &[("p", 8080)], &[(ip(1), Cond::Ready), (ip(2), Cond::Ready)]));
    s.api.delete_silently(Res::Services, NS, "b");
    let log_len = agent.log_text().len();
    s.api.expire_watches();
    let rows = agent.wait_rows("the relisted state", |r| r.len() == 1 && r[0].backends.len() == 2);
    assert_eq!(rows[0].id, id_a, "a relist keeps IDs: nothing was flushed");
    assert!(s.api.lists_of("/api/v1/services") > lists_before, "{:#?}", s.api.requests());
    agent.wait_log("the watch error", log_len, "watching Services");
    // Every list, the first and the relist, may be served from the API
    // server's watch cache (resourceVersion=0, as client-go's informers
    // ask for): thousands of agents relisting after an outage do not all
    // go to etcd.
    let lists: Vec<String> = s.api.requests().into_iter().filter(|r| r.contains("/api/v1/") && !r.contains("watch=")).collect();
    assert!(lists.iter().any(|r| r.contains("/api/v1/nodes")), "{lists:#?}");
    for r in &lists {
        assert!(r.contains("resourceVersion=0"), "a list not served from the cache: {r}\n{lists:#?}");
    }
}

#[test]
fn api_server_restart_mid_watch() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut s = setup(&[], "krestart");
    let agent = s.agent("krestart");
    s.api.apply(&service("a", "10.96.0.51", &[("p", 80, "p")]));
    s.api.apply(&slice("a-1", "a", &[("p", 8080)], &[(ip(1), Cond::Ready)]));
    let before = agent.wait_rows("a", |r| r.len() == 1 && r[0].backends.len() == 1);

    // The server goes away: the agent notices, and keeps the maps.
    let log_len = agent.log_text().len();
    s.api.down();
    agent.wait_log("the watch failing", log_len, "retrying");
    assert_eq!(agent.rows(), before, "nothing flushed while the API server is down");

    // It comes back with its watch cache lost, and a change made meanwhile.
    s.api.apply(&slice("a-1", "a", &[("p", 8080)], &[(ip(1), Cond::Ready), (ip(3), Cond::Ready)]));
    s.api.apply(&service("c", "10.96.0.53", &[("p", 80, "p")]));
    s.api.up(Some(&s.lab.node), true);
    let rows = agent.wait_rows("the state after the restart", |r| r.len() == 2 && r[0].backends.len() == 2);
    assert_eq!(rows[0].id, before[0].id);

    // Cut connections only: the watches resume.
    s.api.drop_connections();
    s.api.apply(&slice("a-1", "a", &[("p", 8080)], &[(ip(3), Cond::Ready)]));
    agent.wait_rows("a change after the reconnect", |r| r.len() == 2 && r[0].backends.len() == 1);
}

#[test]
fn agent_starts_with_the_api_server_down() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&[]).unwrap();
    let dir = ManifestDir::new("kdown");
    let port = FakeApi::free_port(&lab.node);
    let kubeconfig = fake_api::kubeconfig_for(&dir.0, port);

    // A first agent fills the maps.
    let mut api = FakeApi::start_on(&lab.node, port);
    api.apply(&service("a", "10.96.0.61", &[("p", 80, "p")]));
    api.apply(&slice("a-1", "a", &[("p", 8080)], &[(ip(1), Cond::Ready), (ip(2), Cond::Ready)]));
    let mut first = KubeAgent::start(&lab.node, &kubeconfig, PinDir::new("kdown"));
    let before = first.wait_rows("a", |r| r.len() == 1 && r[0].backends.len() == 2);
    let pins = first.stop();
    api.down();

    // The second starts with no API server: it retries and serves what
    // the maps hold, and is not ready.
    let mut agent = KubeAgent::start(&lab.node, &kubeconfig, pins);
    agent.wait_log("a failed list", 0, "retrying");
    agent.wait_log("a second attempt", 0, "retrying");
    wait_health(&lab.node, "/healthz", 200);
    assert_eq!(health(&lab.node, "/readyz").0, 503);
    assert_eq!(agent.rows(), before, "the pinned state is served untouched");
    agent.assert_alive();

    // The server comes up, with a change.
    api.apply(&slice("a-1", "a", &[("p", 8080)], &[(ip(2), Cond::Ready)]));
    api.up(Some(&lab.node), false);
    let rows = agent.wait_rows("the live state", |r| r.len() == 1 && r[0].backends.len() == 1);
    assert_eq!(rows[0].id, before[0].id);
    wait_health(&lab.node, "/readyz", 200);
}

#[test]
fn malformed_objects_are_skipped_and_the_rest_applies() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = setup(&[], "kbad");
    // In the first list: a good Service, a malformed one (port is not a
    // number), one with an invalid ClusterIP, and a slice with an IPv6
    // address in an IPv4 slice.
    s.api.apply(&service("good", "10.96.0.71", &[("p", 80, "p")]));
    let mut bad = serde_json::to_value(service("typo", "10.96.0.72", &[("p", 80, "p")])).unwrap();
    bad["spec"]["ports"][0]["port"] = json!("eighty");
    s.api.apply_raw(Res::Services, bad);
    s.api.apply(&service("badip", "10.96.0.999", &[("p", 80, "p")]));
    let mut sl = serde_json::to_value(slice("good-1", "good", &[("p", 8080)], &[(ip(1), Cond::Ready), (ip(2), Cond::Ready)])).unwrap();
    sl["endpoints"][0]["addresses"][0] = json!("fd00::1");
    s.api.apply_raw(Res::EndpointSlices, sl);

    let agent = s.agent("kbad");
    let rows = agent.wait_rows("the good service", |r| r.len() == 1 && r[0].backends.len() == 1);
    assert_eq!(backends(&rows, "10.96.0.71:80/TCP"), set(&["10.244.9.2:8080"]));
    let line = agent.wait_log("the malformed service", 0, "Service test/typo");
    assert!(line.contains("WARN") && line.contains("spec.ports[0].port"), "{line}");
    let line = agent.wait_log("the bad ClusterIP", 0, "Service test/badip");
    assert!(line.contains("WARN") && line.contains("spec.clusterIP"), "{line}");
    let line = agent.wait_log("the IPv6 endpoint", 0, "EndpointSlice test/good-1");
    assert!(line.contains("endpoints[0].addresses[0]"), "{line}");

    // Over the watch: garbage metadata, a port out of range, then a good one.
    let log_len = agent.log_text().len();
    s.api.apply_raw(Res::Services, json!({"metadata": {"name": "weird", "namespace": NS, "labels": 5}, "spec": []}));
    let mut big = serde_json::to_value(service("big", "10.96.0.73", &[("p", 80, "p")])).unwrap();
    big["spec"]["ports"][0]["port"] = json!(70000);
    s.api.apply_raw(Res::Services, big);
    s.api.apply(&service("late", "10.96.0.74", &[("p", 80, "p")]));
    agent.wait_rows("the late service", |r| r.iter().any(|r| r.name == "test/late:p"));
    let line = agent.wait_log("the weird service", log_len, "Service test/weird");
    assert!(line.contains("metadata.labels"), "{line}");
    let line = agent.wait_log("the port out of range", log_len, "Service test/big");
    assert!(line.contains("spec.ports[0].port"), "{line}");
    assert_eq!(agent.rows().len(), 2);

    // A good version replaces a malformed one.
    s.api.apply(&service("typo", "10.96.0.72", &[("p", 80, "p")]));
    agent.wait_rows("the fixed service", |r| r.iter().any(|r| r.name == "test/typo:p"));
    let metrics = wait_health(&s.lab.node, "/metrics", 200);
    assert!(metric(&metrics, "lb_objects_skipped") >= 3.0, "{metrics}");
    assert_eq!(health(&s.lab.node, "/healthz").0, 200);
}

/// `slice(..)` with an `endpoints.kubernetes.io/last-change-trigger-time`.
fn triggered(mut sl: EndpointSlice, trigger: &str) -> EndpointSlice {
    sl.metadata.annotations = Some(BTreeMap::from([(TRIGGER_TIME.to_string(), trigger.to_string())]));
    sl
}

const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The network programming latency: a slice whose change was triggered
/// 2.2 s ago (written, as the EndpointSlice controller does, to the
/// second, so 2.2 to 3.2 s) is observed once, at 2.2 s or more; slices
/// without the annotation, or with a malformed one (a warning naming the
/// slice), apply but are not counted.
#[test]
fn network_programming_latency_is_observed_from_the_trigger_time() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = setup(&[], "kprog");
    let agent = s.agent("kprog");
    wait_health(&s.lab.node, "/readyz", 200);
    // Changes triggered before the agent started are not counted (as
    // kube-proxy): let it run long enough for 2.2 s ago, truncated to the
    // second, to be after.
    std::thread::sleep(Duration::from_millis(3500));
    let name = "lb_network_programming_duration_seconds";
    assert_eq!(metric(&health(&s.lab.node, "/metrics").1, &format!("{name}_count")), 0.0);

    s.api.apply(&service("prog", "10.96.0.81", &[("p", 80, "p")]));
    s.api.apply(&slice("prog-plain", "prog", &[("p", 8080)], &[(ip(1), Cond::Ready)]));
    s.api.apply(&triggered(slice("prog-bad", "prog", &[("p", 8080)], &[(ip(2), Cond::Ready)]), "two seconds ago"));
    let secs = (SystemTime::now() - Duration::from_millis(2200)).duration_since(UNIX_EPOCH).unwrap().as_secs();
    let trigger = k8s_openapi::jiff::Timestamp::from_second(secs as i64).unwrap().to_string();
    s.api.apply(&triggered(slice("prog-1", "prog", &[("p", 8080)], &[(ip(3), Cond::Ready)]), &trigger));
    let rows = agent.wait_rows("the three slices' backends", |r| r.len() == 1 && r[0].backends.len() == 3);
    assert_eq!(backends(&rows, "10.96.0.81:80/TCP"), set(&["10.244.9.1:8080", "10.244.9.2:8080", "10.244.9.3:8080"]));
    let line = agent.wait_log("the malformed trigger time", 0, "EndpointSlice test/prog-bad");
    assert!(line.contains("WARN") && line.contains(TRIGGER_TIME) && line.contains("two seconds ago"), "{line}");

    let metrics = health(&s.lab.node, "/metrics").1;
    let bucket = |le: &str| metric(&metrics, &format!("{name}_bucket{{le=\"{le}\"}}"));
    assert_eq!(metric(&metrics, &format!("{name}_count")), 1.0, "only prog-1 counts:\n{metrics}");
    assert_eq!(bucket("2"), 0.0, "at least 2.2 s:\n{metrics}");
    assert_eq!(bucket("10"), 1.0, "{metrics}");
    let sum = metric(&metrics, &format!("{name}_sum"));
    assert!((2.2..10.0).contains(&sum), "{sum}\n{metrics}");
    // The histogram agrees with the sum: its bucket is the first le >= sum.
    let le = sum.ceil().to_string();
    assert_eq!((bucket(&(sum.ceil() - 1.0).to_string()), bucket(&le)), (0.0, 1.0), "{metrics}");
}

// ---- restart --------------------------------------------------------------------

/// A line echo server in `pod` on `port`: every connection gets its lines
/// back prefixed with the pod name; connections last as long as the client.
fn echo_server(pod: &lb_lab::Pod, port: u16) {
    let name = pod.name.clone();
    let addr = SocketAddrV4::new(pod.ip, port);
    let listener = pod.ns.run(move || TcpListener::bind(addr).unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let name = name.clone();
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    if writeln!(w, "{name}:{line}").is_err() {
                        return;
                    }
                }
            });
        }
    });
}

fn exchange(conn: &mut (TcpStream, BufReader<TcpStream>), msg: &str) -> std::io::Result<String> {
    writeln!(conn.0, "{msg}")?;
    let mut line = String::new();
    conn.1.read_line(&mut line)?;
    Ok(line.trim().to_string())
}

#[test]
fn restart_keeps_ids_and_live_flows() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = setup(&["client", "echo-a", "echo-b"], "kflows");
    for n in ["echo-a", "echo-b"] {
        echo_server(s.lab.pod(n), 7000);
    }
    s.api.apply(&service("echo", "10.96.0.80", &[("tcp", 70, "tcp")]));
    let eps: Vec<_> = ["echo-a", "echo-b"].iter().map(|n| (s.lab.pod(n).ip, Cond::Ready)).collect();
    s.api.apply(&slice("echo-1", "echo", &[("tcp", 7000)], &eps));
    s.api.apply(&service("other", "10.96.0.81", &[("tcp", 71, "tcp")]));
    s.api.apply(&slice("other-1", "other", &[("tcp", 7000)], &eps));

    let mut agent = s.agent("kflows");
    let before = agent.wait_rows("two services", |r| r.len() == 2 && r.iter().all(|r| r.backends.len() == 2));

    // Long-lived connections from the client pod through the ClusterIP.
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 80), 70);
    let mut conns: Vec<(TcpStream, BufReader<TcpStream>)> = (0..4)
        .map(|_| {
            let stream = s.lab.pod("client").ns.run(move || TcpStream::connect_timeout(&vip.into(), Duration::from_secs(2)).unwrap());
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let reader = BufReader::new(stream.try_clone().unwrap());
            (stream, reader)
        })
        .collect();
    let owners: Vec<String> = conns.iter_mut().map(|c| exchange(c, "before").unwrap().split(':').next().unwrap().to_string()).collect();

    let pins = agent.stop();
    let log_len = agent.log_text().len();
    let mut agent = KubeAgent::start(&s.lab.node, &s.api.kubeconfig(&s.dir.0), pins);
    // The restarted agent re-attaches tc to the pod interfaces, then syncs.
    agent.wait_log("tc attached", log_len, "tc programs attached");
    agent.wait_log("the first sync", log_len, "synced from the API server");
    wait_health(&s.lab.node, "/readyz", 200);
    let after = agent.rows();
    assert_eq!(after, before, "IDs, slots and backends unchanged across the restart");

    for (c, owner) in conns.iter_mut().zip(&owners) {
        let reply = exchange(c, "after").unwrap_or_else(|e| panic!("connection broke across the restart: {e}\n{}", agent.log_text()));
        assert_eq!(reply, format!("{owner}:after"), "same backend, same connection");
    }
    agent.assert_alive();
}

// ---- batching and sync latency ----------------------------------------------------

/// Latencies (µs) of the agent's `synced` log lines.
fn logged_latencies(log: &str) -> Vec<u64> {
    logged_field(log, "latency_us")
}

fn logged_field(log: &str, field: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("synced from the API server"))
        .filter_map(|l| l.split(&format!(" {field}=")).nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A burst of 300 Services (and their slices) is written in a few
/// batches, not 600 syncs; prints the sync latency figures (event seen to
/// maps written) for single changes and for the burst.
#[test]
fn bursts_are_batched_and_sync_latency_is_reported() {
    if !kernel_tests_enabled() {
        return;
    }
    // LB_TEST_SYNC_DELAY_MS changes the batching window for measurements.
    let delay = std::env::var("LB_TEST_SYNC_DELAY_MS").unwrap_or_else(|_| "100".into());
    let s = setup(&[], "kburst");
    let agent = KubeAgent::start_with(&s.lab.node, &s.api.kubeconfig(&s.dir.0), PinDir::new("kburst"), &["--sync-delay-ms", &delay]);
    wait_health(&s.lab.node, "/readyz", 200);

    // Single changes, one at a time.
    s.api.apply(&service("one", "10.96.1.1", &[("p", 80, "p")]));
    for n in 1..=20u8 {
        let eps: Vec<_> = (1..=n).map(|i| (ip(i), Cond::Ready)).collect();
        s.api.apply(&slice("one-1", "one", &[("p", 8080)], &eps));
        agent.wait_rows("the change", |r| r.len() == 1 && r[0].backends.len() == n as usize);
    }
    let single = logged_latencies(&agent.log_text());

    let before = metric(&wait_health(&s.lab.node, "/metrics", 200), "lb_syncs_total");
    for i in 0..300u16 {
        let name = format!("burst-{i}");
        let vip = format!("10.96.{}.{}", 2 + i / 200, 1 + i % 200);
        s.api.apply(&service(&name, &vip, &[("p", 80, "p")]));
        s.api.apply(&slice(&format!("{name}-1"), &name, &[("p", 8080)], &[(ip(1), Cond::Ready), (ip(2), Cond::Ready)]));
    }
    agent.wait_rows("301 frontends", |r| r.len() == 301 && r.iter().all(|r| !r.backends.is_empty()));
    let metrics = wait_health(&s.lab.node, "/metrics", 200);
    let burst_syncs = metric(&metrics, "lb_syncs_total") - before;
    assert!(burst_syncs < 600.0, "600 events were batched into fewer syncs, got {burst_syncs}");
    let all = logged_latencies(&agent.log_text());
    let burst: Vec<u64> = all[single.len()..].to_vec();

    let mut sorted = single.clone();
    sorted.sort_unstable();
    let mut work = logged_field(&agent.log_text(), "apply_us");
    work.sort_unstable();
    eprintln!(
        "translate+reconcile per sync (n={}): p50 {} us, p90 {} us, max {} us",
        work.len(),
        percentile(&work, 0.5),
        percentile(&work, 0.9),
        work.last().unwrap()
    );
    eprintln!(
        "sync latency, single changes (n={}, --sync-delay-ms {delay}): p50 {} us, p90 {} us, max {} us",
        sorted.len(),
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.9),
        sorted.last().unwrap()
    );
    eprintln!(
        "burst of 300 Services + 300 EndpointSlices: {burst_syncs} syncs, latencies {burst:?} us; map ops total {}",
        metric(&metrics, "lb_map_operations_total")
    );
}

// ---- health as kube-proxy's, outages, bootstrap ---------------------------------

/// `/healthz` as JSON, with its status.
fn healthz(node: &Netns) -> (u16, serde_json::Value) {
    let (code, body) = health(node, "/healthz");
    (code, serde_json::from_str(&body).unwrap_or_else(|e| panic!("/healthz is not JSON ({e}): {body}")))
}

/// Waits for `/healthz` to answer `code`, then checks that `nodeEligible`
/// says the same and that `/livez` (the agent itself) is fine regardless.
fn wait_eligibility(node: &Netns, eligible: bool) {
    let code = if eligible { 200 } else { 503 };
    wait_health(node, "/healthz", code);
    let (got, body) = healthz(node);
    assert_eq!(got, code, "{body}");
    assert_eq!(body["nodeEligible"], json!(eligible), "{body}");
    assert!(body["lastUpdated"].is_string() && body["currentTime"].is_string(), "{body}");
    let (live, body) = health(node, "/livez");
    assert_eq!(live, 200, "/livez does not depend on the node: {body}");
    assert!(!body.contains("nodeEligible"), "{body}");
    let metrics = health(node, "/metrics").1;
    assert_eq!(metric(&metrics, "lb_node_eligible"), f64::from(u8::from(eligible)), "{metrics}");
}

/// KEP-3836: while its Node is being deleted, or tainted by the cluster
/// autoscaler for deletion, the node fails `/healthz` (load balancers drain
/// it) but stays live and ready.
#[test]
fn a_node_on_its_way_out_fails_healthz_but_not_livez() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = setup(&[], "kelig");
    let agent = s.agent("kelig");
    wait_health(&s.lab.node, "/readyz", 200);
    wait_eligibility(&s.lab.node, true);

    let log_len = agent.log_text().len();
    s.api.apply_raw(Res::Nodes, node_with(json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}})));
    wait_eligibility(&s.lab.node, false);
    agent.wait_log("the deletion", log_len, "deletionTimestamp");
    assert_eq!(health(&s.lab.node, "/readyz").0, 200, "still serving, so still ready");

    // (A real API server never takes a deletionTimestamp back.)
    s.api.apply(&node_object());
    wait_eligibility(&s.lab.node, true);

    let taint = json!({"key": "ToBeDeletedByClusterAutoscaler", "value": "1735689600", "effect": "NoSchedule"});
    let other = json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"});
    s.api.apply_raw(Res::Nodes, node_with(json!({"spec": {"taints": [other.clone()]}})));
    s.api.apply_raw(Res::Nodes, node_with(json!({"spec": {"taints": [other.clone(), taint]}})));
    wait_eligibility(&s.lab.node, false);
    s.api.apply_raw(Res::Nodes, node_with(json!({"spec": {"taints": [other]}})));
    wait_eligibility(&s.lab.node, true);

    // Deleted outright.
    s.api.delete(Res::Nodes, "", "node-1");
    wait_eligibility(&s.lab.node, false);
    s.api.apply(&node_object());
    wait_eligibility(&s.lab.node, true);
}

/// WARN lines of the agent's log after `skip` bytes containing `needle`.
fn warnings(agent: &KubeAgent, skip: usize, needle: &str) -> Vec<String> {
    let text = agent.log_text();
    let lines = text.get(skip..).unwrap_or("").lines();
    lines.filter(|l| l.contains("WARN") && l.contains(needle)).map(String::from).collect()
}

/// While the API server cannot be reached the agent is not ready, and
/// says why once, not at every retry. The server comes back with its watch
/// history, so the watches resume without news: the probe sees it.
#[test]
fn an_outage_is_logged_once_and_unreadies_the_agent() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut s = setup(&[], "koutage");
    let agent = s.agent("koutage");
    s.api.apply(&service("a", "10.96.0.91", &[("p", 80, "p")]));
    s.api.apply(&slice("a-1", "a", &[("p", 8080)], &[(ip(1), Cond::Ready)]));
    let before = agent.wait_rows("a", |r| r.len() == 1 && r[0].backends.len() == 1);
    wait_health(&s.lab.node, "/readyz", 200);

    let log_len = agent.log_text().len();
    s.api.down();
    let why = wait_health(&s.lab.node, "/readyz", 503);
    assert!(why.contains("cannot be reached"), "{why}");
    agent.wait_log("the outage", log_len, "cannot reach the API server");
    // Several retries (backoff at most 500 ms here), one warning.
    std::thread::sleep(Duration::from_secs(3));
    let outage_warnings = warnings(&agent, log_len, "cannot reach");
    assert_eq!(outage_warnings.len(), 1, "one warning per outage:\n{}", agent.log_text());
    assert!(outage_warnings[0].contains("--k8s-api-server"), "a hint at the bootstrap address: {}", outage_warnings[0]);
    assert!(agent.log_text()[log_len..].matches("cannot reach").count() > 2, "the retries are logged at debug");
    assert_eq!(warnings(&agent, log_len, "").len(), 1, "nothing else warns:\n{}", &agent.log_text()[log_len..]);
    assert_eq!(metric(&health(&s.lab.node, "/metrics").1, "lb_api_reachable"), 0.0);
    assert_eq!(health(&s.lab.node, "/livez").0, 200);
    assert_eq!(health(&s.lab.node, "/healthz").0, 200, "the datapath still serves");
    assert_eq!(agent.rows(), before);

    // Back with its history: nothing to relist, the probe notices.
    s.api.up(Some(&s.lab.node), false);
    wait_health(&s.lab.node, "/readyz", 200);
    agent.wait_log("the end of the outage", log_len, "answers again");
    assert_eq!(metric(&health(&s.lab.node, "/metrics").1, "lb_api_reachable"), 1.0);
    s.api.apply(&slice("a-1", "a", &[("p", 8080)], &[(ip(1), Cond::Ready), (ip(2), Cond::Ready)]));
    agent.wait_rows("a change after the outage", |r| r.len() == 1 && r[0].backends.len() == 2);

    // A second outage gets its own warning.
    let log_len = agent.log_text().len();
    s.api.down();
    wait_health(&s.lab.node, "/readyz", 503);
    agent.wait_log("the second outage", log_len, "cannot reach the API server");
    s.api.up(Some(&s.lab.node), true);
    wait_health(&s.lab.node, "/readyz", 200);
}

/// Bootstrap without kube-proxy: the configured address (here a
/// kubeconfig's; in a pod the `kubernetes` ClusterIP) does not answer, and
/// LB_K8S_API_SERVER, as the ConfigMap sets it, gives the real one.
#[test]
fn the_api_server_address_replaces_the_configured_one() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = setup(&[], "kboot");
    s.api.apply(&service("a", "10.96.0.95", &[("p", 80, "p")]));
    s.api.apply(&slice("a-1", "a", &[("p", 8080)], &[(ip(1), Cond::Ready)]));
    // A kubeconfig whose server nothing answers.
    let unrouted = FakeApi::free_port(&s.lab.node);
    let kubeconfig = fake_api::kubeconfig_for(&s.dir.0, unrouted);

    let mut agent = KubeAgent::start(&s.lab.node, &kubeconfig, PinDir::new("kboot"));
    let line = agent.wait_log("the unreachable server", 0, "cannot reach the API server");
    assert!(line.contains("WARN") && line.contains(&format!("127.0.0.1:{unrouted}")), "{line}");
    assert!(line.contains("LB_K8S_API_SERVER"), "{line}");
    let why = wait_health(&s.lab.node, "/readyz", 503);
    assert!(why.contains("cannot be reached"), "{why}");
    assert_eq!(health(&s.lab.node, "/livez").0, 200);
    let pins = agent.stop();
    // The next agent appends to the same log.
    let log_len = agent.log_text().len();

    let address = format!("http://127.0.0.1:{}", s.api.port());
    let agent = KubeAgent::start_env(&s.lab.node, &kubeconfig, pins, &["--sync-delay-ms", "50"], &[("LB_K8S_API_SERVER", &address)]);
    agent.wait_rows("the service", |r| r.len() == 1 && r[0].backends.len() == 1);
    wait_health(&s.lab.node, "/readyz", 200);
    let line = agent.wait_log("the server used", log_len, "Kubernetes API server");
    assert!(line.contains(&address) && line.contains("given=true"), "{line}");
    assert!(warnings(&agent, log_len, "cannot reach").is_empty(), "{}", agent.log_text());
}

/// An EndpointSlice as JSON: endpoints (address, conditions, zone hints).
fn hinted_slice(name: &str, svc: &str, endpoints: &[(Ipv4Addr, serde_json::Value, &[&str])]) -> serde_json::Value {
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(ip, cond, zones)| {
            let mut ep = json!({"addresses": [ip.to_string()], "conditions": cond, "nodeName": "node-2"});
            if !zones.is_empty() {
                ep["hints"] = json!({"forZones": zones.iter().map(|z| json!({"name": z})).collect::<Vec<_>>()});
            }
            ep
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": NS, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    })
}

/// Who answers `n` requests to `vip` from `client`.
fn answers(client: &Netns, vip: SocketAddrV4, n: usize) -> BTreeSet<String> {
    (0..n).map(|_| tcp_request(client, vip).unwrap()).collect()
}

#[test]
fn topology_hints_ip_mode_proxy_and_nil_serving_with_traffic() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = setup(&["client", "web-a", "web-b", "web-c"], "ktopo");
    let _servers = s.web_servers(&["web-a", "web-b", "web-c"]);
    let (a, b, c) = (s.lab.pod("web-a").ip, s.lab.pod("web-b").ip, s.lab.pod("web-c").ip);
    s.api.apply_raw(Res::Nodes, node_with(json!({"metadata": {"labels": {"topology.kubernetes.io/zone": "zone-a"}}})));
    let agent = s.agent("ktopo");
    let client = &s.lab.pod("client").ns;

    // A LoadBalancer Service with trafficDistribution: PreferClose, one
    // ingress IP in VIP mode and one in Proxy mode.
    let mut svc = serde_json::to_value(service("web", "10.96.0.30", &[("http", 80, "http")])).unwrap();
    svc["spec"]["type"] = "LoadBalancer".into();
    svc["spec"]["trafficDistribution"] = "PreferClose".into();
    svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10", "ipMode": "VIP"}, {"ip": "192.0.2.11", "ipMode": "Proxy"}]}});
    s.api.apply_raw(Res::Services, svc);
    let ready = json!({"ready": true, "serving": true, "terminating": false});
    s.api.apply_raw(
        Res::EndpointSlices,
        hinted_slice("web-1", "web", &[(a, ready.clone(), &["zone-a"]), (b, ready.clone(), &["zone-b"]), (c, ready.clone(), &["zone-a"])]),
    );
    let fe = "10.96.0.30:80/TCP";
    let rows = agent.wait_rows("zone-a endpoints", |r| backends(r, fe).len() == 2);
    let ab = |ips: &[Ipv4Addr]| ips.iter().map(|ip| format!("{ip}:8080")).collect::<BTreeSet<_>>();
    assert_eq!(backends(&rows, fe), ab(&[a, c]));
    assert_eq!(backends(&rows, "192.0.2.10:80/TCP"), ab(&[a, c]), "the VIP-mode ingress IP is served, with the same topology");
    assert!(rows.iter().all(|r| !r.frontend.starts_with("192.0.2.11")), "the Proxy-mode ingress IP is not programmed: {rows:#?}");
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 30), 80);
    assert_eq!(answers(client, vip, 40), set(&["web-a", "web-c"]));

    // A hint missing on one endpoint: every endpoint.
    s.api.apply_raw(
        Res::EndpointSlices,
        hinted_slice("web-1", "web", &[(a, ready.clone(), &["zone-a"]), (b, ready.clone(), &["zone-b"]), (c, ready.clone(), &[])]),
    );
    agent.wait_rows("all endpoints (missing hint)", |r| backends(r, fe).len() == 3);
    assert_eq!(answers(client, vip, 60), set(&["web-a", "web-b", "web-c"]));

    // No endpoint hinted for this zone: every endpoint.
    s.api.apply_raw(Res::EndpointSlices, hinted_slice("web-1", "web", &[(a, ready.clone(), &["zone-c"]), (b, ready.clone(), &["zone-b"])]));
    let rows = agent.wait_rows("all endpoints (none for zone-a)", |r| backends(r, fe).len() == 2);
    assert_eq!(backends(&rows, fe), ab(&[a, b]));

    // The node moves to zone-b: its endpoint only.
    s.api.apply_raw(Res::Nodes, node_with(json!({"metadata": {"labels": {"topology.kubernetes.io/zone": "zone-b"}}})));
    agent.wait_rows("zone-b endpoint", |r| backends(r, fe) == ab(&[b]));
    assert_eq!(answers(client, vip, 20), set(&["web-b"]));

    // Nil `serving` is true: a terminating endpoint without it still
    // serves when nothing is ready.
    s.api.apply_raw(Res::EndpointSlices, hinted_slice("web-1", "web", &[(c, json!({"ready": false, "terminating": true}), &[])]));
    let terminating = set(&[&format!("{c}:8080 (terminating)")]);
    agent.wait_rows("terminating fallback", |r| backends(r, fe) == terminating);
    assert_eq!(answers(client, vip, 10), set(&["web-c"]));
}

#[test]
fn watches_use_kube_proxys_label_selector() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = setup(&[], "ksel");
    let agent = s.agent("ksel");
    // A Service of another proxy, with a ClusterIP that would clash with
    // ours: the API server never sends it, so ours is served without a
    // conflict warning.
    let mut other = serde_json::to_value(service("other", "10.96.0.40", &[("http", 80, "http")])).unwrap();
    other["metadata"]["labels"] = json!({"service.kubernetes.io/service-proxy-name": "someone-else"});
    s.api.apply_raw(Res::Services, other);
    let mut ours = serde_json::to_value(service("ours", "10.96.0.40", &[("http", 80, "http")])).unwrap();
    // A full object, as the API server sends it.
    ours["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {"f:ports": {}}}}]);
    ours["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/last-applied-configuration": "{\"spec\":{}}"});
    s.api.apply_raw(Res::Services, ours);
    s.api.apply(&slice("ours-1", "ours", &[("http", 8080)], &[(ip(1), Cond::Ready)]));
    let mut headless_slice = serde_json::to_value(slice("ours-2", "ours", &[("http", 8080)], &[(ip(2), Cond::Ready)])).unwrap();
    headless_slice["metadata"]["labels"]["service.kubernetes.io/headless"] = "".into();
    s.api.apply_raw(Res::EndpointSlices, headless_slice);
    let rows = agent.wait_rows("ours", |r| r.len() == 1 && r[0].backends.len() == 1);
    assert_eq!(rows[0].name, "test/ours:http");
    assert_eq!(backends(&rows, "10.96.0.40:80/TCP"), set(&["10.244.9.1:8080"]), "the headless-labelled slice is not sent");
    assert!(!agent.log_text().contains("already belongs to"), "{}", agent.log_text());
    let selector = "labelSelector=%21service.kubernetes.io%2Fservice-proxy-name%2C%21service.kubernetes.io%2Fheadless";
    let requests = s.api.requests();
    for path in ["/api/v1/services?", "/apis/discovery.k8s.io/v1/endpointslices?"] {
        let of_path: Vec<&String> = requests.iter().filter(|r| r.contains(path)).collect();
        assert!(!of_path.is_empty(), "{requests:#?}");
        assert!(of_path.iter().all(|r| r.contains(selector)), "every list and watch of {path} carries the selector: {of_path:#?}");
    }
}

/// `bpftool map <args...>` on a pinned map of `pins`.
fn bpftool_map(pins: &Path, op: &str, map: &str, args: &[String]) {
    let out = std::process::Command::new("bpftool")
        .args(["map", op, "pinned"])
        .arg(pins.join(map))
        .args(args)
        .output()
        .expect("bpftool (the drift test damages the maps with it)");
    assert!(out.status.success(), "bpftool map {op} {map} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `hex b0 b1 ...`, as bpftool reads a key or value.
fn hex_bytes(bytes: &[u8]) -> Vec<String> {
    std::iter::once("hex".to_string()).chain(bytes.iter().map(|b| format!("{b:02x}"))).collect()
}

#[test]
fn drift_is_repaired_by_the_periodic_resync() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = setup(&["client", "web-a"], "kdrift");
    let pod = s.lab.pod("web-a");
    let _server = tcp_server(&pod.ns, SocketAddrV4::new(pod.ip, 8080), "web-a").unwrap();
    let agent = KubeAgent::start_with(
        &s.lab.node,
        &s.api.kubeconfig(&s.dir.0),
        PinDir::new("kdrift"),
        &["--sync-delay-ms", "50", "--sync-period", "2s"],
    );
    s.api.apply(&service("web", "10.96.0.50", &[("http", 80, "http")]));
    s.api.apply(&slice("web-1", "web", &[("http", 8080)], &[(pod.ip, Cond::Ready)]));
    let fe = "10.96.0.50:80/TCP";
    agent.wait_rows("the frontend", |r| backends(r, fe).len() == 1);
    let client = &s.lab.pod("client").ns;
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 50), 80);
    assert_eq!(tcp_request(client, vip).unwrap(), "web-a");
    let metrics = wait_health(&s.lab.node, "/metrics", 200);
    assert_eq!(metric(&metrics, "lb_drift_repairs_total"), 0.0, "intact maps need no repair");

    // Behind the agent's back: the frontend entry deleted, its backend
    // pointed elsewhere.
    let pins = agent.pins().to_path_buf();
    // Service4Key: address and port in network order, protocol, scope.
    let key = [10, 96, 0, 50, 0, 80, 6, lb_common::SCOPE_EXTERNAL];
    bpftool_map(&pins, "delete", lb_common::names::SERVICES, &[&["key".to_string()][..], &hex_bytes(&key)].concat());
    use lb_agent::reconcile::MapStore;
    let installed = Maps::open(&pins).unwrap().backends::<Ipv4Addr>().unwrap();
    let (backend_id, _) = *installed.iter().find(|(_, b)| b.addr == u32::from_ne_bytes(pod.ip.octets())).unwrap();
    let wrong = lb_common::Backend4 {
        addr: u32::from_ne_bytes([10, 244, 250, 250]),
        port: 8080u16.to_be(),
        proto: 6,
        flags: 0,
        version: 1,
        _pad: 0,
    };
    // SAFETY: Backend4 is a plain repr(C) struct of integers.
    let value =
        unsafe { std::slice::from_raw_parts((&wrong as *const lb_common::Backend4).cast::<u8>(), size_of::<lb_common::Backend4>()) };
    let args = [&["key".to_string()][..], &hex_bytes(&backend_id.to_ne_bytes()), &["value".to_string()], &hex_bytes(value)].concat();
    bpftool_map(&pins, "update", lb_common::names::BACKENDS, &args);
    // (The resync runs every 2 s: this looks well before the next one.)
    let damaged = Maps::open(&pins).unwrap();
    assert!(list::rows(&damaged).unwrap().iter().all(|r| r.frontend != fe), "the frontend entry is gone");
    assert!(damaged.backends::<Ipv4Addr>().unwrap().contains(&(backend_id, wrong)), "the backend is overwritten");

    // The next resync puts both right.
    let body = wait_for("the drift repaired", Duration::from_secs(20), || {
        let body = try_health(&s.lab.node, "/metrics")?.1;
        (metric(&body, "lb_drift_repairs_total") >= 2.0).then_some(body)
    });
    assert_eq!(metric(&body, "lb_drift_repairs_total"), 2.0, "{body}");
    let rows = agent.wait_rows("the frontend back", |r| backends(r, fe) == set(&[&format!("{}:8080", pod.ip)]));
    assert_eq!(rows.len(), 1);
    assert_eq!(tcp_request(client, vip).unwrap(), "web-a");
    agent.wait_log("the repair logged", 0, "resync: the maps differed");
}

#[test]
fn nodeport_addresses_primary_follows_the_nodes_internal_ip() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = setup(&["client", "web-a"], "kprimary");
    let web = s.lab.pod("web-a");
    let _server = tcp_server(&web.ns, SocketAddrV4::new(web.ip, 8080), "web-a").unwrap();
    // A second address on the node; the Node names the first as its
    // InternalIP.
    let second = Ipv4Addr::new(10, 0, 0, 2);
    s.lab.node.ip(&["addr", "add", &format!("{second}/32"), "dev", lb_lab::NODE_IF]).unwrap();
    let internal_ip = |ip: Ipv4Addr| {
        node_with(
            json!({"status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": "node-1"}]}}),
        )
    };
    s.api.apply_raw(Res::Nodes, internal_ip(lb_lab::NODE_IP));
    let agent = KubeAgent::start_with(
        &s.lab.node,
        &s.api.kubeconfig(&s.dir.0),
        PinDir::new("kprimary"),
        &["--sync-delay-ms", "50", "--nodeport-addresses", "primary"],
    );
    let mut svc = serde_json::to_value(service("web", "10.96.0.40", &[("http", 80, "http")])).unwrap();
    svc["spec"]["type"] = "NodePort".into();
    svc["spec"]["ports"][0]["nodePort"] = 30080.into();
    s.api.apply_raw(Res::Services, svc);
    s.api.apply(&slice("web-1", "web", &[("http", 8080)], &[(web.ip, Cond::Ready)]));
    let on = |rows: &[list::Row], ip: Ipv4Addr| rows.iter().any(|r| r.frontend == format!("{ip}:30080/TCP"));
    let rows = agent.wait_rows("the NodePort on the InternalIP", |r| on(r, lb_lab::NODE_IP));
    assert!(!on(&rows, second), "only the primary address: {rows:#?}");
    let client = &s.lab.pod("client").ns;
    assert_eq!(tcp_request(client, SocketAddrV4::new(lb_lab::NODE_IP, 30080)).unwrap(), "web-a");

    // The Node's InternalIP moves to the second address: so does the
    // NodePort.
    s.api.apply_raw(Res::Nodes, internal_ip(second));
    agent.wait_rows("the NodePort on the new InternalIP", |r| on(r, second) && !on(r, lb_lab::NODE_IP));
    assert_eq!(tcp_request(client, SocketAddrV4::new(second, 30080)).unwrap(), "web-a");
}
