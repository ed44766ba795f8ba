//! The agent's HTTP servers under a flood: 1,000 idle and 1,000
//! slow-header connections held against the health server (10256) and
//! against a health check NodePort, with the agent started under a soft
//! limit of 1,024 open files (which it raises). Real probes are still
//! answered within a second, and the agent's memory stays bounded.

mod common;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use common::{Agent, ManifestDir, PinDir, kernel_tests_enabled, wait_for};
use lb_lab::{NODE_IP, NodeLab};

const HC_PORT: u16 = 32000;

fn manifest(pod: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: test}}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.10\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {HC_PORT}\n  ports: [{{name: http, port: 80, protocol: TCP, nodePort: 30080}}]\nstatus:\n  loadBalancer:\n    ingress: [{{ip: 192.168.60.10}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: test, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n- addresses: [{pod}]\n  nodeName: lab-node\n  conditions: {{ready: true}}\n"
    )
}

/// One probe: the status code, or the error, and how long it took.
fn probe(to: SocketAddrV4, path: &str) -> (Result<u16, String>, Duration) {
    let start = Instant::now();
    let r = (|| {
        let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| format!("{e} after {text:?}"))?;
        text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status in {text:?}"))
    })();
    (r, start.elapsed())
}

fn status_field(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in {text}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn soft_nofile(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn probes_are_answered_under_a_connection_flood() {
    if !kernel_tests_enabled() {
        return;
    }
    // This process holds 4,000 connections.
    let (_, soft) = lb_agent::fd_limit::set_soft(|_, hard| hard.min(16_384)).unwrap();
    assert!(soft >= 5_000, "need 5000 open files for the flood, have {soft}");

    let lab = NodeLab::new(&["web"]).unwrap();
    let pod = lab.pod("web").ip;
    let dir = ManifestDir::new("flood");
    dir.write("svc.yaml", &manifest(pod));
    let agent = Agent::start_wrapped(
        &lab.node,
        &dir.0,
        PinDir::new("flood"),
        &["prlimit", "--nofile=1024:8192", "--"],
        &["--health-addr", "0.0.0.0:10256", "--node-name", "lab-node", "--node-ips", &NODE_IP.to_string()],
    );
    let pid = agent.pid().unwrap();
    let health = SocketAddrV4::new(NODE_IP, 10256);
    let hc = SocketAddrV4::new(NODE_IP, HC_PORT);
    wait_for("the agent ready and its health check NodePort open", Duration::from_secs(20), || {
        lab.node.run(move || (probe(health, "/readyz").0 == Ok(200) && probe(hc, "/").0 == Ok(200)).then_some(()))
    });
    // The wrapper's prlimit exec'd the agent: pid is the agent.
    assert!(soft_nofile(pid) > 1024, "the agent raised its soft open files limit: {}\n{}", soft_nofile(pid), agent.log_text());
    let rss_before = status_field(pid, "VmRSS:");

    let (probes, rss_during) = lab.node.run(move || {
        let mut held = Vec::new();
        for to in [health, hc] {
            for i in 0..2_000 {
                let Ok(mut s) = TcpStream::connect_timeout(&to.into(), Duration::from_secs(1)) else { continue };
                if i % 2 == 1 {
                    // Slow header: a request line, then nothing.
                    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ");
                }
                held.push(s);
            }
        }
        let mut probes = Vec::new();
        for _ in 0..5 {
            probes.push(("healthz", probe(health, "/healthz")));
            probes.push(("livez", probe(health, "/livez")));
            probes.push(("hc", probe(hc, "/")));
        }
        let rss = status_field(pid, "VmRSS:");
        drop(held);
        (probes, rss)
    });
    for (what, (code, took)) in &probes {
        assert_eq!(code.as_ref().ok(), Some(&200), "{what}: {code:?} in {took:?}\n{}", agent.log_text());
        assert!(*took < Duration::from_secs(1), "{what} answered in {took:?}");
    }
    assert!(rss_during < rss_before + 64 * 1024, "VmRSS grew from {rss_before} kB to {rss_during} kB under the flood");
    assert!(agent.log_text().contains("open files limit raised from 1024"), "{}", agent.log_text());
}

/// `GET /metrics` on 127.0.0.1:10249 inside the node: the body.
fn scrape() -> String {
    let mut s = TcpStream::connect_timeout(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10249).into(), Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

#[test]
fn metrics_are_served_on_localhost_10249_with_the_datapath_figures() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["web"]).unwrap();
    let pod = lab.pod("web").ip;
    let dir = ManifestDir::new("metrics");
    dir.write("svc.yaml", &manifest(pod));
    let agent = Agent::start_with(&lab.node, &dir.0, PinDir::new("metrics"), &["--health-addr", "off", "--node-name", "lab-node"]);
    let text = wait_for("the agent's frontends in its metrics", Duration::from_secs(20), || {
        lab.node.run(|| std::panic::catch_unwind(scrape).ok()).filter(|t| t.contains("service=\"test/web\""))
    });
    for want in [
        format!("lb_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
        "lb_datapath_packets_total{reason=\"reject_no_backend\",drop=\"true\"} 0".to_string(),
        "lb_frontend_packets_total{service=\"test/web\",frontend=\"10.96.0.10:80/TCP\",scope=\"external\"} 0".to_string(),
        "lb_map_max_entries{map=\"LB4_CT_TCP\"} 262144".to_string(),
        "lb_syncs_total ".to_string(),
    ] {
        assert!(text.contains(&want), "{want} missing from\n{text}\n{}", agent.log_text());
    }
    assert!(text.contains("lb_map_entries{map=\"LB4_SERVICES\"} "), "{text}");
}

/// A sync that leaves map errors (here full frontend maps) is tried
/// again after 30 s with nothing else changing, as kube-proxy retries a
/// failed sync after its sync period; `/healthz` stays 200 meanwhile (it
/// fails only after 60 s of failing syncs: the probes module's unit test).
/// Making room is picked up by the next sync, which ends without errors.
#[test]
fn a_sync_with_map_errors_is_tried_again() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["web"]).unwrap();
    let pod = lab.pod("web").ip;
    let dir = ManifestDir::new("retry");
    let svc = |n: u8| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{n}, namespace: test}}\nspec:\n  clusterIP: 10.96.1.{n}\n  ports: [{{port: 80, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{n}-1, namespace: test, labels: {{kubernetes.io/service-name: s{n}}}}}\naddressType: IPv4\nports: [{{port: 8080, protocol: TCP}}]\nendpoints:\n- addresses: [{pod}]\n  conditions: {{ready: true}}\n"
        )
    };
    // One frontend fits (ID 0 is never given out).
    for n in 1..=2 {
        dir.write(&format!("s{n}.yaml"), &svc(n));
    }
    let agent = Agent::start_with(&lab.node, &dir.0, PinDir::new("retry"), &["--services-size", "2", "--xdp-mode", "off"]);
    let retried = "the sync left";
    agent.wait_log("a sync with map errors", retried);
    let first = Instant::now();
    let count = |a: &Agent| a.log_text().matches(retried).count();
    assert_eq!(count(&agent), 1);
    wait_for("the sync to be tried again", Duration::from_secs(45), || (count(&agent) >= 2).then_some(()));
    let waited = first.elapsed();
    assert!(waited >= Duration::from_secs(25), "tried again after {waited:?}");
    assert!(agent.log_text().contains("is full (2 entries)"), "{}", agent.log_text());
    let (status, body) = common::http_status(&lab.node, SocketAddrV4::new(NODE_IP, 10256));
    assert_eq!(status, 200, "{body}");
    // Room: the next sync ends without errors.
    std::fs::remove_file(dir.0.join("s2.yaml")).unwrap();
    wait_for("a sync without errors", Duration::from_secs(10), || {
        agent.log_text().lines().any(|l| l.contains("synced manifests") && l.contains(" errors=0 ")).then_some(())
    });
    let rows = agent.rows();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].frontend, "10.96.1.1:80/TCP");
}
