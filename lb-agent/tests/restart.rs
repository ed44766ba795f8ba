//! The datapath outlives its agent, on a strict lab node with real
//! sockets: Service traffic (ClusterIP requests, a live TCP stream, a UDP
//! flow, NodePort requests from outside) carries on while the agent is
//! stopped (SIGTERM) or killed (SIGKILL) and while the next one takes the
//! links over; an agent that finds maps of an older layout rebuilds them
//! without a gap; one agent per bpffs directory; `lb-agent uninstall`
//! leaves nothing attached or pinned; a new pod's interface is attached on
//! its link event, before its first packet (`lb-bench` B7 measures how
//! soon). The crash, the north-south hook switch and the older layout are
//! also run with the same traffic over IPv6, on a dual-stack node.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    os::fd::AsFd,
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use common::{Agent, ManifestDir, PinDir, kernel_tests_enabled, line_echo, wait_for};
use lb_agent::links;
use lb_lab::{ClusterLab, Netns, NodeLab, Server, node_ip, tcp_server, tcp_server_at, udp_echo, udp_echo_at};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const STREAM_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
const STREAM_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x11);
const HTTP_NODEPORT: u16 = 30080;

/// `web` (TCP 80 and UDP 53 on web-a and web-b, NodePort 30080 for TCP)
/// and `stream` (TCP 7000 on web-a only: a line echo). With `v6` (web-a's
/// and web-b's IPv6 addresses), both are dual-stack: ClusterIPs
/// [`VIP6`] and [`STREAM_VIP6`] too, and an IPv6 EndpointSlice each.
fn manifests(a: Ipv4Addr, b: Ipv4Addr, v6: Option<(Ipv6Addr, Ipv6Addr)>) -> String {
    let dual = |ip6: Ipv6Addr| match v6 {
        Some(_) => format!("  clusterIPs: [{VIP}, \"{ip6}\"]\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n"),
        None => String::new(),
    };
    let (web6, stream6) = (dual(VIP6), dual(STREAM_VIP6));
    let v4 = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: test}}
spec:
  type: NodePort
  clusterIP: {VIP}
{web6}  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: {HTTP_NODEPORT}}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: test
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: dns, port: 5353, protocol: UDP}}
endpoints:
- addresses: [{a}]
  nodeName: node-a
  conditions: {{ready: true}}
- addresses: [{b}]
  nodeName: node-a
  conditions: {{ready: true}}
---
apiVersion: v1
kind: Service
metadata: {{name: stream, namespace: test}}
spec:
  clusterIP: {STREAM_VIP}
{stream6}  ports:
  - {{name: lines, port: 7000, protocol: TCP, targetPort: 9000}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: stream-1
  namespace: test
  labels: {{kubernetes.io/service-name: stream}}
addressType: IPv4
ports:
- {{name: lines, port: 9000, protocol: TCP}}
endpoints:
- addresses: [{a}]
  nodeName: node-a
  conditions: {{ready: true}}
"#
    );
    let Some((a6, b6)) = v6 else { return v4 };
    let slice = |svc: &str, ports: &str, addrs: &[Ipv6Addr]| {
        let eps: String =
            addrs.iter().map(|ip| format!("- addresses: [\"{ip}\"]\n  nodeName: node-a\n  conditions: {{ready: true}}\n")).collect();
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-6\n  namespace: test\n  \
             labels: {{kubernetes.io/service-name: {svc}}}\naddressType: IPv6\nports:\n{ports}endpoints:\n{eps}"
        )
    };
    let web_ports = "- {name: http, port: 8080, protocol: TCP}\n- {name: dns, port: 5353, protocol: UDP}\n";
    let stream_ports = "- {name: lines, port: 9000, protocol: TCP}\n";
    v4 + &slice("web", web_ports, &[a6, b6]) + &slice("stream", stream_ports, &[a6])
}

/// One request on a new connection, answered within [`ANSWER`].
fn request(to: impl Into<SocketAddr>) -> Result<(), String> {
    let to = to.into();
    let mut s = TcpStream::connect_timeout(&to, ANSWER).map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(ANSWER)).map_err(|e| e.to_string())?;
    s.write_all(b"hi\n").map_err(|e| format!("write {to}: {e}"))?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(|e| format!("read {to}: {e}"))?;
    if answer.starts_with("web-") { Ok(()) } else { Err(format!("{to} answered {answer:?}")) }
}

/// One kind of traffic, counted.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, what: &str, r: Result<(), String>) {
        match r {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::SeqCst);
                let mut errors = self.errors.lock().unwrap();
                if errors.len() < 10 {
                    errors.push(format!("{what}: {e}"));
                }
            }
        }
    }

    fn line(&self, name: &str) -> String {
        format!(
            "{name}: {} ok, {} failed {:?}",
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            self.errors.lock().unwrap()
        )
    }
}

/// Traffic every 50 ms until stopped: ClusterIP requests and a UDP flow
/// from a pod, one TCP stream kept open, NodePort requests from outside.
struct Traffic {
    stop: Arc<AtomicBool>,
    clusterip: Arc<Tally>,
    udp: Arc<Tally>,
    stream: Arc<Tally>,
    nodeport: Arc<Tally>,
    threads: Vec<thread::JoinHandle<()>>,
}

const EVERY: Duration = Duration::from_millis(50);
/// How long an answer may take before it counts as failed.
const ANSWER: Duration = Duration::from_secs(1);

impl Traffic {
    fn start(n: &Node) -> Traffic {
        let (lab, to) = (&n.lab, n.to);
        let stop = Arc::new(AtomicBool::new(false));
        let (clusterip, udp, stream, nodeport) = Default::default();
        let mut t = Traffic { stop, clusterip, udp, stream, nodeport, threads: Vec::new() };
        let cli = &lab.node(0).pod("cli").ns;

        let (stop, tally) = (t.stop.clone(), t.clusterip.clone());
        t.threads.push(
            cli.spawn_thread("clusterip", move || {
                while !stop.load(Ordering::SeqCst) {
                    tally.record("clusterip", request((to.vip, 80)));
                    thread::sleep(EVERY);
                }
            })
            .unwrap(),
        );

        let (stop, tally) = (t.stop.clone(), t.nodeport.clone());
        t.threads.push(
            lab.client
                .spawn_thread("nodeport", move || {
                    while !stop.load(Ordering::SeqCst) {
                        tally.record("nodeport", request((to.node, HTTP_NODEPORT)));
                        thread::sleep(EVERY);
                    }
                })
                .unwrap(),
        );

        // One connected UDP socket: the same flow all along.
        let (stop, tally) = (t.stop.clone(), t.udp.clone());
        t.threads.push(
            cli.spawn_thread("udp-flow", move || {
                let any: IpAddr = if to.vip.is_ipv6() { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
                let s = UdpSocket::bind((any, 0)).unwrap();
                s.connect((to.vip, 53)).unwrap();
                s.set_read_timeout(Some(ANSWER)).unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let q = format!("q{n}");
                    let r = s.send(q.as_bytes()).map_err(|e| e.to_string()).and_then(|_| {
                        let mut buf = [0u8; 512];
                        // Skip late answers to earlier queries.
                        loop {
                            let len = s.recv(&mut buf).map_err(|e| format!("no answer to {q}: {e}"))?;
                            if String::from_utf8_lossy(&buf[..len]).ends_with(&format!(":{q}")) {
                                return Ok(());
                            }
                        }
                    });
                    tally.record("udp", r);
                    thread::sleep(EVERY);
                }
            })
            .unwrap(),
        );

        // One TCP connection all along, a line every 50 ms.
        let (stop, tally) = (t.stop.clone(), t.stream.clone());
        t.threads.push(
            cli.spawn_thread("stream", move || {
                let s = TcpStream::connect_timeout(&(to.stream_vip, 7000).into(), ANSWER).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut out = s.try_clone().unwrap();
                let mut lines = BufReader::new(s);
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let r = writeln!(out, "l{n}").map_err(|e| e.to_string()).and_then(|_| {
                        let mut line = String::new();
                        lines.read_line(&mut line).map_err(|e| e.to_string())?;
                        if line.trim() == format!("web-a:l{n}") { Ok(()) } else { Err(format!("line {n}: got {line:?}")) }
                    });
                    let broken = r.is_err();
                    tally.record("stream", r);
                    if broken {
                        // A broken stream stays broken: count it once.
                        return;
                    }
                    thread::sleep(EVERY);
                }
            })
            .unwrap(),
        );
        t
    }

    fn report(&self) -> String {
        [self.clusterip.line("clusterip"), self.udp.line("udp"), self.stream.line("stream"), self.nodeport.line("nodeport")].join("\n")
    }

    fn finish(mut self) -> String {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        self.report()
    }

    fn failed(&self) -> u64 {
        [&self.clusterip, &self.udp, &self.stream, &self.nodeport].iter().map(|t| t.failed.load(Ordering::SeqCst)).sum()
    }

    fn ok(&self) -> [u64; 4] {
        [&self.clusterip, &self.udp, &self.stream, &self.nodeport].map(|t| t.ok.load(Ordering::SeqCst))
    }
}

/// Where a test's traffic goes: one family's frontends.
#[derive(Clone, Copy)]
struct Frontends {
    vip: IpAddr,
    stream_vip: IpAddr,
    /// The node's address, for the NodePort.
    node: IpAddr,
}

/// One node with web-a, web-b and a client pod; an external client.
struct Node {
    _servers: Vec<Server>,
    _echo: Arc<AtomicBool>,
    dir: ManifestDir,
    lab: ClusterLab,
    to: Frontends,
}

fn node(tag: &str) -> Node {
    node_of(tag, false)
}

/// The same node dual-stack (the Services and the servers too), with
/// IPv6 frontends for the traffic.
fn node6(tag: &str) -> Node {
    node_of(tag, true)
}

fn node_of(tag: &str, v6: bool) -> Node {
    let lab = ClusterLab::new(&[&["web-a", "web-b", "cli"]]).unwrap();
    if v6 {
        lab.enable_ipv6().unwrap();
    }
    // A pod's address in the traffic's family.
    let at = |i: usize, ip: Ipv4Addr, port: u16| -> SocketAddr {
        if v6 { (lb_lab::cluster_pod_ip6(0, i), port).into() } else { (ip, port).into() }
    };
    let mut servers = Vec::new();
    for (i, name) in ["web-a", "web-b"].into_iter().enumerate() {
        let pod = lab.node(0).pod(name);
        servers.push(tcp_server_at(&pod.ns, at(i, pod.ip, 8080), name).unwrap());
        servers.push(udp_echo_at(&pod.ns, at(i, pod.ip, 5353), name).unwrap());
        if v6 {
            // The IPv4 Services are served too.
            servers.push(tcp_server(&pod.ns, SocketAddrV4::new(pod.ip, 8080), name).unwrap());
        }
    }
    let a = lab.node(0).pod("web-a");
    let echo = line_echo(&a.ns, at(0, a.ip, 9000), "web-a");
    let dir = ManifestDir::new(tag);
    let v6_pods = v6.then(|| (lb_lab::cluster_pod_ip6(0, 0), lb_lab::cluster_pod_ip6(0, 1)));
    dir.write("svc.yaml", &manifests(a.ip, lab.node(0).pod("web-b").ip, v6_pods));
    let to = if v6 {
        Frontends { vip: VIP6.into(), stream_vip: STREAM_VIP6.into(), node: lb_lab::node_ip6(0).into() }
    } else {
        Frontends { vip: VIP.into(), stream_vip: STREAM_VIP.into(), node: node_ip(0).into() }
    };
    Node { _servers: servers, _echo: echo, dir, lab, to }
}

impl Node {
    fn agent(&self, pins: PinDir) -> Agent {
        self.agent_with(pins, &[])
    }

    fn agent_with(&self, pins: PinDir, extra: &[&str]) -> Agent {
        let node = self.lab.node(0);
        let mut args = vec!["--external-ifaces", lb_lab::EXT_IF, "--node-name", &node.name, "--health-addr", "off"];
        args.extend(extra);
        let agent = Agent::start_with(&node.ns, &self.dir.0, pins, &args);
        agent.wait_rows("web and stream", |rows| {
            rows.iter().filter(|r| r.frontend.starts_with("10.96.0.")).count() >= 3
                && rows.iter().any(|r| r.frontend.ends_with(&format!(":{HTTP_NODEPORT}/TCP")))
        });
        agent
    }
}

/// The name of a loaded program, from `bpftool prog show`.
fn prog_name(id: u32) -> String {
    let out = Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.get("name").and_then(|n| n.as_str()).unwrap_or("?").to_string()
}

/// Programs on each hook of the node's interfaces, as (hook, program
/// names): tcx ingress and egress from the kernel (BPF_PROG_QUERY: this
/// bpftool predates tcx), XDP from `bpftool net show`.
fn hooks(ns: &Netns) -> Vec<(String, Vec<String>)> {
    let ifaces = ns.run(|| lb_agent::host::interfaces().unwrap());
    let mut found = Vec::new();
    for (ifindex, name) in ifaces {
        for ingress in [true, false] {
            let ids = ns.run(move || links::query_tcx(ifindex, ingress).unwrap_or_default());
            if !ids.is_empty() {
                let dir = if ingress { "ingress" } else { "egress" };
                found.push((format!("tcx/{dir}/{name}"), ids.into_iter().map(prog_name).collect()));
            }
        }
    }
    let out = ns.command("bpftool").args(["-j", "net", "show"]).output().expect("running bpftool");
    assert!(out.status.success(), "bpftool net show: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    for section in v.as_array().into_iter().flatten() {
        for e in section.get("xdp").and_then(|x| x.as_array()).into_iter().flatten() {
            let dev = e.get("devname").and_then(|d| d.as_str()).unwrap_or("?");
            let mut names = Vec::new();
            if let Some(id) = e.get("id").and_then(|i| i.as_u64()) {
                names.push(prog_name(id as u32));
            }
            for m in e.get("multi_attachments").and_then(|m| m.as_array()).into_iter().flatten() {
                if let Some(id) = m.get("id").and_then(|i| i.as_u64()) {
                    names.push(prog_name(id as u32));
                }
            }
            found.push((format!("xdp/{dev}"), names));
        }
    }
    found.sort();
    found
}

/// Asserts exactly one lb program on each hook of the pod and external
/// interfaces.
fn assert_one_program_per_hook(ns: &Netns) {
    // A program that went between the hook's query and its name's (an
    // agent still swapping its own into adopted links) reads "?": look
    // again, for a while.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut hooks = hooks(ns);
    while hooks.iter().any(|(_, names)| names.iter().any(|n| n == "?")) && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        hooks = self::hooks(ns);
    }
    let ours: Vec<_> = hooks.iter().filter(|(_, names)| names.iter().any(|n| n.starts_with("lb_"))).collect();
    assert!(
        ours.iter().all(|(_, names)| names.iter().filter(|n| n.starts_with("lb_")).count() == 1),
        "more than one lb program on a hook: {hooks:#?}"
    );
    // web-a, web-b, cli: ingress and egress each; lbext: XDP and egress.
    assert_eq!(ours.len(), 3 * 2 + 2, "{hooks:#?}");
}

#[test]
fn sigterm_and_three_seconds_without_an_agent_fail_nothing() {
    if !kernel_tests_enabled() {
        return;
    }
    let n = node("restart");
    let agent = n.agent(PinDir::new("restart"));
    let traffic = Traffic::start(&n);
    thread::sleep(Duration::from_secs(1));
    let pins = agent.stop_keeping_pins(libc::SIGTERM);
    thread::sleep(Duration::from_secs(3));
    let during = traffic.ok();
    assert!(during.iter().all(|n| *n > 0), "no traffic got through: {}", traffic.report());
    let agent = n.agent(pins);
    agent.wait_log("the new agent to adopt the links", "adopted from the earlier agent");
    thread::sleep(Duration::from_secs(1));
    let failed = traffic.failed();
    let report = traffic.finish();
    eprintln!("{report}");
    assert_eq!(failed, 0, "{report}\nagent log:\n{}", agent.log_text());
    assert_one_program_per_hook(&n.lab.node(0).ns);
    let log = agent.log_text();
    assert!(
        log.contains("tc programs attached: links adopted") && !log.contains("tc programs attached interface="),
        "links were adopted, not attached anew: {log}"
    );
}

#[test]
fn sigkill_and_five_seconds_without_an_agent_answer_every_request() {
    if !kernel_tests_enabled() {
        return;
    }
    sigkill_and_five_seconds_without_an_agent(node("crash"), "crash");
}

/// The same with IPv6 traffic: the IPv6 programs, tail-called through
/// pinned program arrays, and the `LB6_*` maps outlive the agent too.
#[test]
fn sigkill_and_five_seconds_without_an_agent_answer_every_ipv6_request() {
    if !kernel_tests_enabled() {
        return;
    }
    sigkill_and_five_seconds_without_an_agent(node6("crash6"), "crash6");
}

fn sigkill_and_five_seconds_without_an_agent(n: Node, tag: &str) {
    let agent = n.agent(PinDir::new(tag));
    let traffic = Traffic::start(&n);
    thread::sleep(Duration::from_millis(500));
    let pins = agent.stop_keeping_pins(libc::SIGKILL);
    let before = traffic.ok();
    thread::sleep(Duration::from_secs(5));
    let after = traffic.ok();
    // At one per 50 ms, 5 s is ~100 of each; the NodePort and ClusterIP
    // requests take a connection each.
    for (i, what) in ["clusterip", "udp", "stream", "nodeport"].iter().enumerate() {
        assert!(after[i] - before[i] >= 40, "{what}: only {} answers in 5 s without an agent\n{}", after[i] - before[i], traffic.report());
    }
    assert_eq!(traffic.failed(), 0, "{}", traffic.report());
    let agent = n.agent(pins);
    thread::sleep(Duration::from_millis(500));
    let failed = traffic.failed();
    let report = traffic.finish();
    eprintln!("{report}");
    assert_eq!(failed, 0, "{report}\nagent log:\n{}", agent.log_text());
    assert_one_program_per_hook(&n.lab.node(0).ns);
}

/// The north-south hook switched at a restart (`--xdp-mode tc`, then back
/// to `auto`): the new agent attaches its hook before it removes the
/// earlier agent's, whose programs keep their tail-call slots until then,
/// so no request fails, and each time exactly one lb program serves the
/// external interface's ingress.
#[test]
fn switching_the_north_south_hook_at_a_restart_fails_nothing() {
    if !kernel_tests_enabled() {
        return;
    }
    switch_the_north_south_hook_twice(node("hookswitch"), "hookswitch");
}

/// The same with IPv6 traffic (the NodePort from outside to the node's
/// IPv6 address: `lb_xdp6`, then `lb_tc_ns6`, then `lb_xdp6` again).
#[test]
fn switching_the_north_south_hook_at_a_restart_fails_no_ipv6_request() {
    if !kernel_tests_enabled() {
        return;
    }
    switch_the_north_south_hook_twice(node6("hookswitch6"), "hookswitch6");
}

fn switch_the_north_south_hook_twice(n: Node, tag: &str) {
    let agent = n.agent(PinDir::new(tag));
    let traffic = Traffic::start(&n);
    let ext_hooks = || {
        let all = hooks(&n.lab.node(0).ns);
        let ours =
            |h: &str| all.iter().filter(|(k, _)| k == h).flat_map(|(_, v)| v.clone()).filter(|p| p.starts_with("lb_")).collect::<Vec<_>>();
        (ours(&format!("xdp/{}", lb_lab::EXT_IF)), ours(&format!("tcx/ingress/{}", lb_lab::EXT_IF)))
    };
    assert_eq!(ext_hooks(), (vec!["lb_xdp".to_string()], vec![]), "auto: XDP");
    thread::sleep(Duration::from_millis(500));
    let mut agent = agent;
    for (mode, want) in [("tc", (vec![], vec!["lb_tc_ns".to_string()])), ("auto", (vec!["lb_xdp".to_string()], vec![]))] {
        let pins = agent.stop_keeping_pins(libc::SIGTERM);
        agent = n.agent_with(pins, &["--xdp-mode", mode]);
        wait_for(&format!("the external interface's hooks in {mode} mode"), Duration::from_secs(10), || {
            (ext_hooks() == want).then_some(())
        });
        thread::sleep(Duration::from_millis(500));
    }
    let failed = traffic.failed();
    let report = traffic.finish();
    eprintln!("{report}");
    assert_eq!(failed, 0, "{report}\nagent log:\n{}", agent.log_text());
    assert_one_program_per_hook(&n.lab.node(0).ns);
}

/// A backends map as an older agent left it: another value size.
struct OlderMap {
    name: &'static str,
    entries: u32,
    value_then: u32,
    /// This build's value size.
    value_now: u32,
}

/// Replaces a pinned map with one of another layout, as an older agent
/// would have left it, and forgets the recorded layout versions.
fn fabricate_older_layout(pins: &Path, older: &OlderMap) {
    let name = older.name;
    let path = pins.join(name);
    std::fs::remove_file(&path).unwrap();
    let (value, entries) = (older.value_then.to_string(), older.entries.to_string());
    bpftool(&["map", "create"], &path, &["type", "array", "key", "4", "value", &value, "entries", &entries, "name", name]);
    // And its LB_LAYOUT recorded none of the versions, in 32 entries: too
    // few for this build's maps (an agent reusing it failed at start).
    let layout = pins.join(lb_common::names::LAYOUT);
    std::fs::remove_file(&layout).unwrap();
    let key = lb_common::layout::KEY_LEN.to_string();
    bpftool(&["map", "create"], &layout, &["type", "hash", "key", &key, "value", "4", "entries", "32", "name", "LB_LAYOUT"]);
}

#[test]
fn maps_of_an_older_layout_are_rebuilt_while_the_old_programs_serve() {
    if !kernel_tests_enabled() {
        return;
    }
    // Before slots had versions, a backend was 8 bytes.
    let older = OlderMap {
        name: lb_common::names::BACKENDS,
        entries: lb_common::sizes::BACKENDS,
        value_then: 8,
        value_now: size_of::<lb_common::maps::Backend4>() as u32,
    };
    rebuild_an_older_layout_under_traffic(node("upgrade"), "upgrade", &older, &["LB4_BACKENDS", "LB4_SERVICES", "LB4_CT_TCP"]);
}

/// The same with IPv6 traffic and an `LB6_BACKENDS` of another value
/// size: the `LB6_*` maps are rebuilt (conntrack included) while the old
/// programs serve, and the new ones, tail-called, take over.
#[test]
fn ipv6_maps_of_an_older_layout_are_rebuilt_while_the_old_programs_serve() {
    if !kernel_tests_enabled() {
        return;
    }
    let older = OlderMap {
        name: lb_common::names::BACKENDS6,
        entries: lb_common::sizes::BACKENDS6,
        value_then: 20,
        value_now: size_of::<lb_common::maps6::Backend6>() as u32,
    };
    rebuild_an_older_layout_under_traffic(node6("upgrade6"), "upgrade6", &older, &["LB6_BACKENDS", "LB6_SERVICES", "LB6_CT_TCP"]);
}

/// Restarts the agent on maps of an older layout (`older`) under traffic,
/// and checks that the maps named in `rebuilt` are rebuilt without a gap.
fn rebuild_an_older_layout_under_traffic(n: Node, tag: &str, older: &OlderMap, rebuilt: &[&str]) {
    let agent = n.agent(PinDir::new(tag));
    let traffic = Traffic::start(&n);
    thread::sleep(Duration::from_millis(500));
    let pins = agent.stop_keeping_pins(libc::SIGTERM);
    fabricate_older_layout(&pins.0, older);
    // Stale held program arrays, as an agent that never went live (or a
    // rollback past one) leaves them: not the arrays the attached programs
    // tail-call through, which must be held all the same.
    for name in [lb_common::names::TC_CALLS, lb_common::names::XDP_CALLS] {
        let stale = pins.0.join(format!("{name}_HELD"));
        bpftool(&["map", "create"], &stale, &["type", "prog_array", "key", "4", "value", "4", "entries", "8", "name", "stale"]);
    }
    let agent = n.agent(pins);
    agent.wait_log("the rebuilt maps to go live", "this agent's programs are live");
    let live = traffic.ok();
    // New connections and the UDP flow go on after the swap (a second's
    // worth of them; a busy machine may take longer to make them).
    let grew = |after: &[u64; 4]| after[0] >= live[0] + 3 && after[3] >= live[3] + 3 && after[1] > live[1] + 10;
    let _ = wait_for_quietly(Duration::from_secs(15), || grew(&traffic.ok()));
    let after = traffic.ok();
    // A flow open across the swap may lose a reply: the conntrack maps
    // were rebuilt too, so a reply to a packet the old program translated
    // meets the new one without an entry (the UDP flow loses at most that
    // answer; the TCP stream may be reset). That includes the one
    // connection of each kind being opened at the swap (its SYN
    // translated by the old program, its reply met by the new one): at
    // most one fails; every other connection, before and after, succeeds.
    let failed = [traffic.clusterip.failed.load(Ordering::SeqCst), traffic.nodeport.failed.load(Ordering::SeqCst)];
    let udp_failed = traffic.udp.failed.load(Ordering::SeqCst);
    let report = traffic.finish();
    eprintln!("{report}");
    let log = agent.log_text();
    assert!(failed[0] <= 1 && failed[1] <= 1, "{report}\nagent log:\n{log}");
    assert!(after[0] >= live[0] + 3 && after[3] >= live[3] + 3, "new connections stopped: {report}");
    assert!(udp_failed <= 1 && after[1] > live[1] + 10, "the UDP flow stopped: {report}");
    for map in rebuilt {
        assert!(
            log.lines().any(|l| l.contains("WARN") && l.contains(&format!("map=\"{map}\"")) && l.contains("rebuilding")),
            "no warning naming {map}:\n{log}"
        );
    }
    assert!(log.contains(&format!("value size {}, this agent's is {}", older.value_then, older.value_now)), "{log}");
    // The old program arrays, which the old programs tail-called through
    // until the swap (IPv4 NodePorts among them), were held until then,
    // and are gone now.
    for name in [lb_common::names::TC_CALLS, lb_common::names::XDP_CALLS] {
        assert!(log.lines().any(|l| l.contains("keep the old program array") && l.contains(name)), "{name} not held:\n{log}");
        let left: Vec<_> = std::fs::read_dir(&agent.pins.0)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|f| f.starts_with(&format!("{name}_HELD")))
            .collect();
        assert!(left.is_empty(), "held program arrays left pinned: {left:?}");
    }
    // The rebuilt map is the new layout, and a restart now reuses it all.
    assert_eq!(lb_agent::layout::pinned_def(&agent.pins.0.join(older.name)).unwrap().value_size, older.value_now);
    let pins = agent.stop_keeping_pins(libc::SIGTERM);
    let again = n.agent(pins);
    assert!(!again.log_text().contains("rebuilding"), "{}", again.log_text());
    assert_one_program_per_hook(&n.lab.node(0).ns);
}

#[test]
fn a_new_conntrack_size_applies_at_a_restart_and_the_flows_carry_over() {
    if !kernel_tests_enabled() {
        return;
    }
    let n = node("ctsize");
    let (a, b) = (n.lab.node(0).pod("web-a"), n.lab.node(0).pod("web-b"));
    let _echoes = [line_echo(&a.ns, SocketAddrV4::new(a.ip, 9001), "web-a"), line_echo(&b.ns, SocketAddrV4::new(b.ip, 9001), "web-b")];
    // A ClusterIP (10.96.0.50:9001) over line echoes on web-a and web-b.
    n.dir.write("echo2.yaml", &common::service_yaml("echo2", "10.96.0.50", 9001, "TCP", 9001, &[a.ip, b.ip]));
    let agent = n.agent(PinDir::new("ctsize"));
    agent.wait_rows("echo2", |rows| rows.iter().any(|r| r.frontend == "10.96.0.50:9001/TCP" && r.backends.len() == 2));
    // Idle connections through a ClusterIP of two backends, each with the
    // backend it was given.
    let cli = &n.lab.node(0).pod("cli").ns;
    let conns: Vec<(TcpStream, String)> = cli.run(|| {
        (0..12)
            .map(|_| {
                let mut s = TcpStream::connect_timeout(&SocketAddrV4::new([10, 96, 0, 50].into(), 9001).into(), ANSWER).unwrap();
                s.set_read_timeout(Some(ANSWER)).unwrap();
                writeln!(s, "l1").unwrap();
                let mut line = String::new();
                BufReader::new(s.try_clone().unwrap()).read_line(&mut line).unwrap();
                let backend = line.trim().strip_suffix(":l1").unwrap_or_else(|| panic!("answered {line:?}")).to_string();
                (s, backend)
            })
            .collect()
    });
    let tcp = |pins: &Path| lb_agent::layout::pinned_def(&pins.join(lb_common::names::CT_TCP)).unwrap().max_entries;
    assert_eq!(tcp(&agent.pins.0), lb_common::sizes::CT_TCP);

    // The next agent asks for another size: the map is rebuilt with it,
    // and the flows move into it.
    let pins = agent.stop_keeping_pins(libc::SIGTERM);
    let agent = n.agent_with(pins, &["--ct-tcp-size", "131072"]);
    agent.wait_log("the rebuilt map to go live", "this agent's programs are live");
    let log = agent.log_text();
    assert_eq!(tcp(&agent.pins.0), 131072, "{log}");
    assert!(log.contains("262144 entries, 131072 asked for") && log.contains("flows carried into the rebuilt map"), "{log}");
    assert!(!log.contains("LB4_BACKENDS"), "only the conntrack map is rebuilt: {log}");
    let maps = lb_agent::maps::Maps::open(&agent.pins.0).unwrap();
    let entries = maps.ct.tcp.entries().unwrap();
    for (s, _) in &conns {
        let port = s.local_addr().unwrap().port();
        assert!(entries.iter().any(|(k, _)| k.sport == port.to_be()), "no entry for client port {port} in {entries:#?}");
    }
    // Each connection goes on, with its backend.
    for (i, (s, backend)) in conns.into_iter().enumerate() {
        let mut w = s.try_clone().unwrap();
        writeln!(w, "l2").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap_or_else(|e| panic!("connection {i} after the restart: {e}\n{log}"));
        assert_eq!(line.trim(), format!("{backend}:l2"), "connection {i}");
    }
    // And new ones are served.
    assert_eq!(cli.run(|| request(SocketAddrV4::new(VIP, 80))), Ok(()));
}

/// Replaces both pre-filters with maps of their first layout (16,384
/// words, one lane per address), recorded as layout version 1, as an
/// agent before the two-lane filter left them.
fn fabricate_older_filters(pins: &Path) {
    for name in [lb_common::names::VIP_FILTER, lb_common::names::VIP_FILTER6] {
        let path = pins.join(name);
        std::fs::remove_file(&path).unwrap();
        bpftool(&["map", "create"], &path, &["type", "array", "key", "4", "value", "8", "entries", "16384", "name", name]);
        let mut key = vec!["key".to_string()];
        key.extend(lb_common::layout::key(name).iter().map(|b| b.to_string()));
        key.extend(["value", "1", "0", "0", "0"].map(String::from));
        bpftool(&["map", "update", "pinned"], &pins.join(lb_common::names::LAYOUT), &key);
    }
}

#[test]
fn pre_filters_of_an_older_layout_are_rebuilt_alone_and_the_flows_carry_on() {
    if !kernel_tests_enabled() {
        return;
    }
    let n = node("filter-layout");
    let agent = n.agent(PinDir::new("filter-layout"));
    // Idle connections through the line-echo ClusterIP.
    let cli = &n.lab.node(0).pod("cli").ns;
    let conns: Vec<TcpStream> = cli.run(|| {
        (0..4)
            .map(|i| {
                let mut s = TcpStream::connect_timeout(&SocketAddrV4::new(STREAM_VIP, 7000).into(), ANSWER).unwrap();
                s.set_read_timeout(Some(ANSWER)).unwrap();
                writeln!(s, "l1").unwrap();
                let mut line = String::new();
                BufReader::new(s.try_clone().unwrap()).read_line(&mut line).unwrap();
                assert_eq!(line.trim(), "web-a:l1", "connection {i}");
                s
            })
            .collect()
    });
    let pins = agent.stop_keeping_pins(libc::SIGTERM);
    let map_id = |pins: &Path, name: &str| aya::maps::MapData::from_pin(pins.join(name)).unwrap().info().unwrap().id();
    let kept = [lb_common::names::CT_TCP, lb_common::names::VIPS, lb_common::names::SERVICES];
    let before: Vec<u32> = kept.iter().map(|m| map_id(&pins.0, m)).collect();
    fabricate_older_filters(&pins.0);
    let agent = n.agent(pins);
    agent.wait_log("the rebuilt filters to go live", "this agent's programs are live");
    let log = agent.log_text();
    let rebuilt: Vec<&str> = log.lines().filter(|l| l.contains("WARN") && l.contains("rebuilding")).collect();
    for map in ["LB4_VIP_FILTER", "LB6_VIP_FILTER"] {
        assert!(rebuilt.iter().any(|l| l.contains(&format!("map=\"{map}\""))), "no warning naming {map}:\n{log}");
        let def = lb_agent::layout::pinned_def(&agent.pins.0.join(map)).unwrap();
        assert_eq!(def.max_entries, lb_common::vip_filter::WORDS, "{map}");
    }
    // Nothing else: the IDs stay, and conntrack with them.
    assert_eq!(rebuilt.len(), 2, "only the pre-filters are rebuilt:\n{log}");
    let after: Vec<u32> = kept.iter().map(|m| map_id(&agent.pins.0, m)).collect();
    assert_eq!(after, before, "{kept:?} are the same maps");
    // Each connection goes on (its entry, the new filter's lanes), and a
    // new one is served.
    for (i, s) in conns.into_iter().enumerate() {
        let mut w = s.try_clone().unwrap();
        writeln!(w, "l2").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap_or_else(|e| panic!("connection {i} after the restart: {e}\n{log}"));
        assert_eq!(line.trim(), "web-a:l2", "connection {i}");
    }
    assert_eq!(cli.run(|| request(SocketAddrV4::new(VIP, 80))), Ok(()));
}

/// Polls `f` until it holds or `timeout` passes; whether it held.
fn wait_for_quietly(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// The link and program IDs of everything pinned under `pins/links`.
fn pinned_ids(pins: &Path) -> Vec<(String, u32, u32)> {
    links::pinned(pins)
        .unwrap()
        .into_iter()
        .map(|(pin, path)| {
            let fd = links::open(&path).unwrap();
            let info = links::info(fd.as_fd()).unwrap();
            (pin.file_name(), info.id, info.prog_id)
        })
        .collect()
}

/// Runs `bpftool <cmd> <path> <args>` and asserts that it succeeded.
fn bpftool<A: AsRef<std::ffi::OsStr>>(cmd: &[&str], path: &Path, args: &[A]) {
    let out = Command::new("bpftool").args(cmd).arg(path).args(args).output().unwrap();
    assert!(out.status.success(), "bpftool {}: {}", cmd.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn bpftool_ok(args: &[&str]) -> bool {
    Command::new("bpftool").args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

#[test]
fn one_agent_per_directory_and_uninstall_leaves_nothing() {
    if !kernel_tests_enabled() {
        return;
    }
    let n = node("one");
    let first = n.agent(PinDir::new("one"));
    let pins = first.pins.0.clone();

    // A second agent on the same directory refuses, naming the first.
    let log = std::env::temp_dir().join(format!("lb-second-{}.log", std::process::id()));
    let out = n
        .lab
        .node(0)
        .ns
        .command(env!("CARGO_BIN_EXE_lb-agent"))
        .args(["run", "--pod-ifaces", "lbp*", "--health-addr", "off", "--metrics-addr", "off", "--manifests"])
        .arg(&n.dir.0)
        .arg("--bpffs")
        .arg(&pins)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(log);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second agent ran: {err}");
    assert!(err.contains("another lb-agent") && err.contains(&format!("process {}", first.pid().unwrap())), "{err}");

    // uninstall refuses under a live agent.
    let out = Command::new(env!("CARGO_BIN_EXE_lb-agent")).args(["uninstall", "--bpffs"]).arg(&pins).env("NO_COLOR", "1").output().unwrap();
    assert!(!out.status.success(), "uninstall ran under a live agent");
    assert!(String::from_utf8_lossy(&out.stderr).contains("another lb-agent"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(pins.join("LB4_SERVICES").exists());

    let ids = pinned_ids(&pins);
    // web-a, web-b, cli (in and out), lbext (XDP and out), 8 socket hooks
    // (IPv4 and IPv6).
    assert_eq!(ids.len(), 3 * 2 + 2 + 8, "{ids:?}");
    let pins_dir = first.stop_keeping_pins(libc::SIGTERM);
    // Stopped, the agent leaves every link in place.
    assert_eq!(pinned_ids(&pins), ids);
    let out = Command::new(env!("CARGO_BIN_EXE_lb-agent")).args(["uninstall", "--bpffs"]).arg(&pins).output().unwrap();
    assert!(out.status.success(), "uninstall: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!pins.exists(), "{} left behind", pins.display());
    // The kernel frees a link and then its program after an RCU grace
    // period (deferred work), so "gone" is waited for, not checked at once.
    for (name, link, prog) in &ids {
        wait_for(&format!("link {name} ({link}) to be freed"), Duration::from_secs(5), || {
            (!bpftool_ok(&["link", "show", "id", &link.to_string()])).then_some(())
        });
        wait_for(&format!("the program of {name} ({prog}) to be freed"), Duration::from_secs(5), || {
            (!bpftool_ok(&["prog", "show", "id", &prog.to_string()])).then_some(())
        });
    }
    let left: Vec<_> = hooks(&n.lab.node(0).ns).into_iter().filter(|(_, p)| p.iter().any(|n| n.starts_with("lb_"))).collect();
    assert!(left.is_empty(), "still attached: {left:?}");
    drop(pins_dir);
}

#[test]
fn a_new_pod_is_served_from_its_first_packet() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut lab = NodeLab::new(&["dns"]).unwrap();
    let dns = lab.pod("dns");
    let _server = udp_echo(&dns.ns, SocketAddrV4::new(dns.ip, 5353), "dns").unwrap();
    let dir = ManifestDir::new("newpod");
    dir.write("dns.yaml", &common::service_yaml("dns", "10.96.0.53", 53, "UDP", 5353, &[dns.ip]));
    // No polling to speak of: only link events can find the new pods.
    let agent = Agent::start_with(&lab.node, &dir.0, PinDir::new("newpod"), &["--poll-interval-ms", "600000"]);
    agent.wait_rows("the dns service", |rows| rows.len() == 1 && rows[0].backends.len() == 1);

    for i in 0..5 {
        let pod = lab.add_pod(&format!("new{i}")).unwrap();
        // One query, sent the moment the pod has its address: no retry.
        let answer = pod.ns.run(|| -> std::io::Result<String> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.send_to(b"first", "10.96.0.53:53")?;
            let mut buf = [0u8; 64];
            let (len, _) = s.recv_from(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
        });
        assert_eq!(answer.as_deref().ok(), Some("dns:first"), "pod new{i}: {answer:?}\n{}", agent.log_text());
    }

    // An interface deleted and made again under the same name gets the
    // programs again (it has another ifindex).
    let node = &lab.node;
    let attached = |name: &str| common::ifindex_in(node, name).is_some_and(|i| agent.tcx_attached(i));
    node.ip(&["link", "add", "lbpx", "type", "veth", "peer", "name", "lbqx"]).unwrap();
    wait_for("lbpx attached", Duration::from_secs(2), || attached("lbpx").then_some(()));
    node.ip(&["link", "del", "lbpx"]).unwrap();
    node.ip(&["link", "add", "lbpx", "type", "veth", "peer", "name", "lbqx"]).unwrap();
    wait_for("lbpx attached again", Duration::from_secs(2), || attached("lbpx").then_some(()));
    // The links of the deleted interface went with it: six pods and lbpx
    // (in and out), eight socket hooks (IPv4 and IPv6).
    let pinned = wait_for("the deleted interface's links to go", Duration::from_secs(2), || {
        let n = links::pinned(&agent.pins.0).unwrap();
        (n.len() == 6 * 2 + 2 + 8).then_some(n)
    });
    assert!(pinned.iter().all(|(p, _)| p.ifindex().is_none_or(|i| i > 1)), "{pinned:?}");
}

/// `lb-agent status -o json`, run in the node's namespace (interface
/// names are per namespace).
fn status(ns: &Netns, pins: &Path) -> serde_json::Value {
    let out = ns.command(env!("CARGO_BIN_EXE_lb-agent")).args(["status", "-o", "json", "--bpffs"]).arg(pins).output().unwrap();
    assert!(out.status.success(), "lb-agent status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// What `status` lists as attached, checked against the kernel: every
/// hook that holds an lb program is listed once, with the ID of the
/// program the kernel runs there; the XDP mode is the one `auto` picks on
/// a veth (generic); the eight socket hooks (IPv4 and IPv6) run the
/// programs they are named after. Still true with the agent stopped (status reads the pins).
#[test]
fn status_lists_what_the_kernel_has_attached() {
    if !kernel_tests_enabled() {
        return;
    }
    let n = node("status");
    let agent = n.agent(PinDir::new("status"));
    let ns = &n.lab.node(0).ns;
    let ifindex: std::collections::BTreeMap<String, u32> =
        ns.run(|| lb_agent::host::interfaces().unwrap()).into_iter().map(|(i, name)| (name, i)).collect();
    let check = |v: &serde_json::Value| {
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["ready"], true, "{v:#}");
        assert_eq!(v["missing_maps"].as_array().map(Vec::len), Some(0), "{v:#}");
        assert!(v["maps"].as_array().is_some_and(|m| m.iter().any(|m| m["name"] == "LB4_SERVICES" && m["max_entries"].as_u64() > Some(0))));
        let mut listed = Vec::new();
        for a in v["attachments"].as_array().expect("attachments") {
            let (kind, target, mode) = (a["kind"].as_str().unwrap(), a["target"].as_str().unwrap(), a["mode"].as_str().unwrap());
            let prog = a["program_id"].as_u64().unwrap() as u32;
            assert!(a["link_id"].as_u64().unwrap() > 0, "{a}");
            match kind {
                "tcx" => {
                    let i = *ifindex.get(target).unwrap_or_else(|| panic!("no interface {target}: {a}"));
                    let ingress = mode == "ingress";
                    assert!(ingress || mode == "egress", "{a}");
                    let on_hook = ns.run(move || links::query_tcx(i, ingress).unwrap_or_default());
                    assert!(on_hook.contains(&prog), "{a}: the kernel runs {on_hook:?} there");
                    listed.push(format!("tcx/{mode}/{target}"));
                }
                "xdp" => {
                    assert_eq!(mode, "generic", "auto on a veth: {a}");
                    assert_eq!(prog_name(prog), "lb_xdp", "{a}");
                    listed.push(format!("xdp/{target}"));
                }
                "cgroup" => {
                    assert_eq!(prog_name(prog), mode, "{a}");
                    listed.push(format!("cgroup/{mode}"));
                }
                other => panic!("unknown kind {other}: {a}"),
            }
        }
        listed.sort();
        let mut expected: Vec<String> =
            hooks(ns).into_iter().filter(|(_, names)| names.iter().any(|n| n.starts_with("lb_"))).map(|(hook, _)| hook).collect();
        for hook in ["connect", "getpeername", "recvmsg", "sendmsg"] {
            expected.extend([4, 6].map(|family| format!("cgroup/lb_{hook}{family}")));
        }
        expected.sort();
        assert_eq!(listed, expected, "{v:#}");
    };
    let running = status(ns, &agent.pins.0);
    check(&running);
    // Returns once the agent has exited.
    let pins = agent.stop_keeping_pins(libc::SIGTERM);
    let stopped = status(ns, &pins.0);
    check(&stopped);
    assert_eq!(stopped["attachments"], running["attachments"], "the same links with the agent gone");
}
