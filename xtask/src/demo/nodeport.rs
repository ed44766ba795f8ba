//! The north-south part of the demo: a two-node lab (`lb_lab::ClusterLab`)
//! with an agent per node serving `examples/nodeport` to an external
//! client: a NodePort spreading over pods on both nodes, a LoadBalancer IP,
//! and `externalTrafficPolicy: Local` with its health check NodePort.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use lb_lab::{CLIENT_IP, ClusterLab, Netns, Server, http_get, http_get_with, http_server, node_ip, udp_echo, udp_request};

use super::{
    HTTP_PORT, POLL_MS, START_TIMEOUT, UDP_PORT, agent::Agent, copy_manifests, indent, interrupt, listing, manifests, print_counts, row,
    section,
};

/// The pods of each node, in lab order: pod `i` of node `n` gets
/// `lb_lab::cluster_pod_ip(n, i)`.
const NODE_PODS: [&[&str]; 2] = [&["web-a1", "web-a2"], &["web-b1", "web-b2", "whoami-b"]];
/// The pod behind the `whoami` Service (externalTrafficPolicy: Local).
const WHOAMI: &str = "whoami-b";
/// Where it answers, with the address of whoever connected.
const WHOAMI_PORT: u16 = 9000;
/// `web-np`'s NodePorts (examples/nodeport/web-np.yaml).
const NP_HTTP: u16 = 30080;
const NP_UDP: u16 = 30053;
/// `web-lb`'s LoadBalancer IP (examples/nodeport/web-lb.yaml).
const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 10);
/// `whoami`'s NodePort, LoadBalancer IP and health check NodePort
/// (examples/nodeport/whoami-local.yaml).
const LOCAL_NP: u16 = 30090;
const LOCAL_LB_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 11);
const HC_PORT: u16 = 32000;
/// How long a client waits before calling a connection attempt dropped.
const DROP_WAIT: Duration = Duration::from_millis(700);

/// The two-node lab with its agents and servers. Field order is drop
/// order: the agents and servers go before the namespaces they run in.
pub struct Cluster {
    agents: Vec<Agent>,
    servers: Vec<Server>,
    whoami: Option<WhoAmI>,
    lab: ClusterLab,
}

impl Cluster {
    /// Stops the agents and servers and deletes the namespaces, printing a
    /// row for each. Returns false if something was left behind.
    pub fn teardown(mut self) -> bool {
        let mut clean = true;
        for (n, mut agent) in self.agents.drain(..).enumerate() {
            let node = &self.lab.node(n).name;
            match agent.stop() {
                Ok(how) => row(node, format!("lb-agent {how}; maps unpinned, {} removed", agent.pins.display())),
                Err(e) => {
                    clean = false;
                    row(node, format!("lb-agent FAILED: {e:#}"));
                }
            }
        }
        let count = self.servers.len() + usize::from(self.whoami.is_some());
        self.servers.clear();
        self.whoami = None;
        row("servers", format!("{count} stopped in the two-node lab"));
        let names = self.lab.netns_names();
        drop(self);
        let left: Vec<String> = lb_lab::list_netns().unwrap_or_default().into_iter().filter(|name| names.contains(name)).collect();
        if left.is_empty() {
            row("two nodes", format!("{} network namespaces deleted", names.len()));
        } else {
            clean = false;
            row("two nodes", format!("FAILED: still there: {}", left.join(", ")));
        }
        clean
    }

    /// Lines to try by hand (`--keep-running`).
    pub fn try_lines(&self) -> Vec<String> {
        let client = self.lab.client.name();
        let mut lines = vec![
            format!("ip netns exec {client} curl -s http://{}:{NP_HTTP}/", node_ip(0)),
            format!("ip netns exec {client} curl -s http://{LB_IP}/"),
            format!("ip netns exec {client} curl -s http://{}:{HC_PORT}/", node_ip(0)),
        ];
        if let Some(agent) = self.agents.first() {
            lines.push(format!("lb-agent list --bpffs {}", agent.pins.display()));
        }
        lines
    }
}

/// The pods of the two-node lab that serve `web-*`: (pod, IP, node).
fn web_pods() -> Vec<(&'static str, Ipv4Addr, String)> {
    let mut pods = Vec::new();
    for (n, names) in NODE_PODS.iter().enumerate() {
        for (i, name) in names.iter().enumerate() {
            if *name != WHOAMI {
                pods.push((*name, lb_lab::cluster_pod_ip(n, i), node_name(n)));
            }
        }
    }
    pods
}

fn whoami_ip() -> Ipv4Addr {
    let i = NODE_PODS[1].iter().position(|p| *p == WHOAMI).unwrap_or(0);
    lb_lab::cluster_pod_ip(1, i)
}

fn node_name(n: usize) -> String {
    format!("node-{}", (b'a' + n as u8) as char)
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// Runs the north-south part; `slot` holds the lab for the teardown.
pub fn run(bin: &Path, root: &Path, tmp: &Path, pid: u32, slot: &mut Option<Cluster>) -> Result<()> {
    let repo_manifests = root.join("examples/nodeport");
    let web = web_pods();
    check_manifests(&repo_manifests)?;
    interrupt::check()?;

    section("North-south: a two-node lab");
    let lab = ClusterLab::new(&NODE_PODS).context("building the two-node lab")?;
    let cluster = slot.insert(Cluster { agents: Vec::new(), servers: Vec::new(), whoami: None, lab });
    for (pod, ip, node) in &web {
        let n = usize::from(node == "node-b");
        let got = cluster.lab.node(n).pod(pod).ip;
        ensure!(got == *ip, "the lab gave pod {pod} {got}, but examples/nodeport lists it as {ip}");
        interrupt::check()?;
        let p = cluster.lab.node(n).pod(pod);
        cluster.servers.push(http_server(&p.ns, at(p.ip, HTTP_PORT), pod)?);
        cluster.servers.push(udp_echo(&p.ns, at(p.ip, UDP_PORT), pod)?);
    }
    let who = cluster.lab.node(1).pod(WHOAMI);
    ensure!(who.ip == whoami_ip(), "the lab gave pod {WHOAMI} {}, not {}", who.ip, whoami_ip());
    cluster.whoami = Some(WhoAmI::start(&who.ns, at(who.ip, WHOAMI_PORT))?);
    // What the cloud's load balancer (or a BGP speaker) would do: send each
    // LoadBalancer IP to a node; whoami's to node-b, the node its health
    // check finds healthy.
    cluster.lab.client_route(&format!("{LB_IP}/32"), 0)?;
    cluster.lab.client_route(&format!("{LOCAL_LB_IP}/32"), 1)?;
    let lab = &cluster.lab;
    let w_ns = lab.netns_names().iter().map(String::len).max().unwrap_or(0);
    println!("  {:<8} {:<w_ns$}  {:<15} RUNS", "NAME", "NETNS", "IP");
    println!(
        "  {:<8} {:<w_ns$}  {:<15} routes {LB_IP} via node-a, {LOCAL_LB_IP} via node-b",
        "client",
        lab.client.name(),
        CLIENT_IP.to_string()
    );
    println!("  {:<8} {:<w_ns$}  {:<15} a bridge joining the nodes' lbext and the client", "switch", lab.switch.name(), "");
    for node in &lab.nodes {
        println!(
            "  {:<8} {:<w_ns$}  {:<15} lb-agent (XDP on lbext, tc on lbp*), pods {}",
            node.name,
            node.ns.name(),
            node.ip.to_string(),
            node.pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
        );
        for pod in &node.pods {
            let runs = if pod.name == WHOAMI {
                format!("HTTP on :{WHOAMI_PORT}, answers with the caller's address")
            } else {
                format!("HTTP on :{HTTP_PORT}, UDP echo on :{UDP_PORT}")
            };
            println!("  {:<8} {:<w_ns$}  {:<15} {runs}", pod.name, pod.ns.name(), pod.ip.to_string());
        }
    }
    println!("  The nodes route each other's pod CIDRs over lbext (no tunnel); the client");
    println!("  only has the external segment 192.168.50.0/24, like a machine outside.");

    let manifest_dir = tmp.join("nodeport");
    copy_manifests(&repo_manifests, &manifest_dir)?;
    println!();
    println!("  examples/nodeport, copied to {}:", manifest_dir.display());
    println!("  web-np.yaml       Service web-np  type NodePort, :{NP_HTTP}/TCP and :{NP_UDP}/UDP on every node");
    println!("  web-lb.yaml       Service web-lb  type LoadBalancer, ingress {LB_IP}:80");
    println!("  whoami-local.yaml Service whoami  type LoadBalancer, ingress {LOCAL_LB_IP}:80, NodePort {LOCAL_NP},");
    println!("                    externalTrafficPolicy: Local, healthCheckNodePort: {HC_PORT}");
    let pods_by_node: Vec<String> = web.iter().map(|(pod, ip, node)| format!("{pod} {ip} ({node})")).collect();
    println!("  web-*'s endpoints carry their nodeName:");
    println!("    {}", pods_by_node.join(", "));
    println!("  whoami's only endpoint is {WHOAMI} {} on node-b.", whoami_ip());
    interrupt::check()?;

    section("North-south: one lb-agent per node");
    for n in 0..cluster.lab.nodes.len() {
        let node = cluster.lab.node(n);
        let pins = Path::new("/sys/fs/bpf").join(format!("lb-demo-{pid}-{}", node.name));
        let log = tmp.join(format!("agent-{}.log", node.name));
        let extra = ["--external-ifaces", lb_lab::EXT_IF, "--node-name", &node.name, "--health-addr", "off"];
        let agent = Agent::start_with(&node.ns, bin, &manifest_dir, &pins, &log, POLL_MS, &extra)
            .with_context(|| format!("starting lb-agent on {}", node.name))?;
        println!("  {}$ {}", node.name, agent.command_line());
        cluster.agents.push(agent);
    }
    println!("  (--xdp-mode auto, the default: native XDP where the driver runs it well;");
    println!("  on a veth, as here and on kind or containerlab nodes, generic: native XDP there");
    println!("  passes the sender's partial checksums on as they are, and the frames it");
    println!("  transmits only arrive where the peer runs XDP too.)");
    let a = format!("{}", node_ip(0));
    let b = format!("{}", node_ip(1));
    let wants: [Vec<(String, usize)>; 2] = [
        vec![
            (format!("{a}:{NP_HTTP}/TCP"), 4),
            (format!("{a}:{NP_UDP}/UDP"), 4),
            (format!("{LB_IP}:80/TCP"), 4),
            (format!("{a}:{LOCAL_NP}/TCP"), 0),
        ],
        vec![
            (format!("{b}:{NP_HTTP}/TCP"), 4),
            (format!("{LB_IP}:80/TCP"), 4),
            (format!("{b}:{LOCAL_NP}/TCP"), 1),
            (format!("{LOCAL_LB_IP}:80/TCP"), 1),
        ],
    ];
    for (n, want) in wants.iter().enumerate() {
        let node = cluster.lab.node(n).name.clone();
        let agent = &mut cluster.agents[n];
        let (_, took) = agent.wait_for(&format!("the north-south frontends on {node}"), START_TIMEOUT, |rows| {
            want.iter().all(|(frontend, count)| listing::backend_count(rows, frontend) == Some(*count))
        })?;
        print_log(&node, agent);
        println!("  {node}: loaded, attached and in sync {} ms after start.", took.as_millis());
    }
    let agent_a = &cluster.agents[0];
    let listing_a = agent_a.list()?;
    let header =
        listing_a.lines().find(|line| line.starts_with("north-south:")).context("`lb-agent list` on node-a has no north-south: line")?;
    ensure!(
        header.contains("XDP generic on lbext (auto: veth"),
        "node-a's agent reports {header:?}, not generic XDP (auto, veth) on lbext"
    );
    println!("  XDP mode in use (from node-a's `lb-agent list`): {header}");

    section("What node-a's datapath holds");
    println!("  $ lb-agent list --bpffs {}", agent_a.pins.display());
    println!("{}", indent(listing_a.trim_end(), "  "));
    println!("  One [NodePort] frontend per node address; the LoadBalancer IPs get their own.");
    println!("  whoami has no endpoint on node-a (Local), so node-a drops its traffic.");

    let lab = &cluster.lab;
    let client = &lab.client;
    let labels: BTreeMap<String, String> = web.iter().map(|(pod, _, node)| ((*pod).to_owned(), format!("{pod} on {node}"))).collect();
    let shown: Vec<&str> = labels.values().map(String::as_str).collect();

    section("N1/3  NodePort from outside the cluster");
    let np_a = at(node_ip(0), NP_HTTP);
    let requests = 200;
    println!("  {requests} x GET http://{np_a}/ from the client ({CLIENT_IP}), one connection each:");
    let (counts, took) = spread(client, np_a, requests)?;
    let counts = relabel(&counts, &labels);
    print_counts(&counts, &shown, requests);
    let starved: Vec<&str> = shown.iter().copied().filter(|l| counts.get(*l).copied().unwrap_or(0) == 0).collect();
    ensure!(starved.is_empty(), "{} got none of the {requests} requests", starved.join(" and "));
    println!("  {requests}/{requests} answered in {:.2} s, by all four pods on both nodes. node-a's XDP", took.as_secs_f64());
    println!("  program DNATed each new flow to a pod; flows to node-b's pods were also SNATed");
    println!("  to {} and sent on over lbext, and their replies came back through node-a,", node_ip(0));
    println!("  which reversed both translations: the client only ever talked to {np_a}.");

    let udp_a = at(node_ip(0), NP_UDP);
    let queries = 20;
    println!();
    println!("  {queries} UDP queries to {udp_a}, each from a new connected socket:");
    let mut udp = BTreeMap::new();
    for i in 0..queries {
        interrupt::check()?;
        let query = format!("q{i}");
        let (reply, peer) = udp_request(client, udp_a, &query).with_context(|| format!("query {} of {queries}", i + 1))?;
        ensure!(peer == SocketAddr::V4(udp_a), "the reply to {query:?} came from {peer}, not from {udp_a}");
        let Some(pod) = reply.strip_suffix(&format!(":{query}")) else {
            bail!("the reply to {query:?} was {reply:?}, not <pod>:{query}");
        };
        *udp.entry(pod.to_owned()).or_insert(0) += 1;
    }
    print_counts(&relabel(&udp, &labels), &shown, queries);
    println!("  Every reply came from {udp_a}, the address dialled (a connected UDP socket");
    println!("  drops anything else).");

    let np_b = at(node_ip(1), NP_HTTP);
    let requests = 40;
    let (counts, _) = spread(client, np_b, requests)?;
    let on_a: usize = counts.iter().filter(|(pod, _)| pod.contains("-a")).map(|(_, c)| c).sum();
    ensure!(on_a > 0 && on_a < requests, "through node-b, {on_a} of {requests} requests reached node-a's pods: {counts:?}");
    println!();
    println!("  The same NodePort on node-b, http://{np_b}/: {} of {requests} to node-a's pods, {} to node-b's.", on_a, requests - on_a);

    section("N2/3  LoadBalancer IP");
    let lb = at(LB_IP, 80);
    let requests = 100;
    println!("  {requests} x GET http://{LB_IP}/ from the client (routed to node-a, as a cloud LB would):");
    let (counts, _) = spread(client, lb, requests)?;
    let counts = relabel(&counts, &labels);
    print_counts(&counts, &shown, requests);
    for node in ["node-a", "node-b"] {
        ensure!(counts.iter().any(|(label, c)| label.ends_with(node) && *c > 0), "no request to {LB_IP} reached a pod on {node}");
    }
    println!("  status.loadBalancer.ingress[].ip is served like the NodePort, on port 80.");

    section("N3/3  externalTrafficPolicy: Local");
    let via_lb = at(LOCAL_LB_IP, 80);
    let seen = http_get(client, via_lb).context("GET through whoami's LoadBalancer IP")?;
    println!("  GET http://{via_lb}/ (LoadBalancer IP, routed to node-b) -> {WHOAMI}: you are {seen}");
    ensure!(seen.starts_with(&format!("{CLIENT_IP}:")), "{WHOAMI} saw {seen}, not the client {CLIENT_IP}");
    let np_local_b = at(node_ip(1), LOCAL_NP);
    let seen = http_get(client, np_local_b).context("GET to whoami's NodePort on node-b")?;
    println!("  GET http://{np_local_b}/ (NodePort of node-b)         -> {WHOAMI}: you are {seen}");
    ensure!(seen.starts_with(&format!("{CLIENT_IP}:")), "{WHOAMI} saw {seen}, not the client {CLIENT_IP}");
    println!("  The pod sees the real client address: with Local, nothing is SNATed.");
    let np_local_a = at(node_ip(0), LOCAL_NP);
    let started = Instant::now();
    match http_get_with(client, np_local_a, "/", DROP_WAIT) {
        Ok(body) => bail!("node-a has no whoami endpoint, yet {np_local_a} answered {body:?}"),
        Err(e) if lb_lab::io_error_kind(&e) == Some(std::io::ErrorKind::TimedOut) => println!(
            "  GET http://{np_local_a}/ (NodePort of node-a)         -> no answer in {} ms: dropped,",
            started.elapsed().as_millis()
        ),
        Err(e) => return Err(e.context(format!("expected {np_local_a} to drop the connection attempt"))),
    }
    println!("  as kube-proxy does on a node without a local endpoint.");
    println!();
    println!("  The health check NodePort tells the load balancer which nodes to use:");
    let mut codes = Vec::new();
    for n in 0..2 {
        interrupt::check()?;
        let to = at(node_ip(n), HC_PORT);
        let (status, body) = http_status(client, to).with_context(|| format!("GET http://{to}/"))?;
        println!("  GET http://{to}/ ({}) -> {status}", node_name(n));
        println!("{}", indent(body.trim_end(), "      "));
        codes.push(status.split_whitespace().nth(1).unwrap_or("").to_owned());
    }
    ensure!(codes == ["503", "200"], "the health checks answered {codes:?}, expected 503 on node-a and 200 on node-b");
    println!("  503 on node-a (no local endpoint), 200 on node-b: the load balancer sends");
    println!("  {LOCAL_LB_IP} to node-b only.");
    Ok(())
}

/// Fails unless the manifests in `dir` (examples/nodeport) describe what
/// the two-node lab runs.
fn check_manifests(dir: &Path) -> Result<()> {
    let web = web_pods();
    let web_ips: Vec<(&str, Ipv4Addr)> = web.iter().map(|(pod, ip, _)| (*pod, *ip)).collect();
    let whoami = [(WHOAMI, whoami_ip())];
    let expected = [
        manifests::Expected {
            file: "web-np.yaml",
            service: "web-np",
            cluster_ip: Ipv4Addr::new(10, 96, 1, 10),
            port: 80,
            protocol: "TCP",
            port_name: "http",
            target_port: HTTP_PORT,
            endpoints: &web_ips,
        },
        manifests::Expected {
            file: "web-np.yaml",
            service: "web-np",
            cluster_ip: Ipv4Addr::new(10, 96, 1, 10),
            port: 53,
            protocol: "UDP",
            port_name: "dns",
            target_port: UDP_PORT,
            endpoints: &web_ips,
        },
        manifests::Expected {
            file: "web-lb.yaml",
            service: "web-lb",
            cluster_ip: Ipv4Addr::new(10, 96, 1, 20),
            port: 80,
            protocol: "TCP",
            port_name: "http",
            target_port: HTTP_PORT,
            endpoints: &web_ips,
        },
        manifests::Expected {
            file: "whoami-local.yaml",
            service: "whoami",
            cluster_ip: Ipv4Addr::new(10, 96, 1, 30),
            port: 80,
            protocol: "TCP",
            port_name: "http",
            target_port: WHOAMI_PORT,
            endpoints: &whoami,
        },
    ];
    for want in &expected {
        manifests::check(dir, want)?;
    }
    Ok(())
}

/// The agent's sync, warning and error lines, prefixed with its node.
fn print_log(node: &str, agent: &mut Agent) {
    for line in agent.new_log_lines() {
        println!("  {node}| {line}");
    }
}

/// `n` GETs to `to` from `ns`: which pod answered how often.
fn spread(ns: &Netns, to: SocketAddrV4, n: usize) -> Result<(BTreeMap<String, usize>, Duration)> {
    let started = Instant::now();
    let mut counts = BTreeMap::new();
    for i in 0..n {
        interrupt::check()?;
        let tag = http_get(ns, to).with_context(|| format!("request {} of {n} to {to} failed", i + 1))?;
        *counts.entry(tag).or_default() += 1;
    }
    Ok((counts, started.elapsed()))
}

/// Counts per pod -> counts per "pod on node" (unknown answers kept as they are).
fn relabel(counts: &BTreeMap<String, usize>, labels: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    counts.iter().map(|(pod, count)| (labels.get(pod).cloned().unwrap_or_else(|| pod.clone()), *count)).collect()
}

/// `GET /` from `ns` with any status: (status line, body).
fn http_status(ns: &Netns, to: SocketAddrV4) -> Result<(String, String)> {
    let timeout = lb_lab::DEFAULT_TIMEOUT;
    let text = ns.run(move || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&to.into(), timeout).context("connect")?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n").as_bytes())?;
        let mut text = String::new();
        s.read_to_string(&mut text).context("reading the response")?;
        Ok(text)
    })?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("malformed response {text:?}");
    };
    Ok((head.lines().next().unwrap_or("").to_owned(), body.to_owned()))
}

/// An HTTP server answering every request with the caller's address (as
/// the pod sees it). Stopped on drop.
struct WhoAmI {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WhoAmI {
    fn start(ns: &Netns, addr: SocketAddrV4) -> Result<WhoAmI> {
        let listener = ns.run(move || TcpListener::bind(addr)).with_context(|| format!("binding {addr} in {}", ns.name()))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, peer)) => answer(conn, peer),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(WhoAmI { stop, thread: Some(thread) })
    }
}

/// Reads the request head, answers with `peer`, closes gracefully.
fn answer(mut conn: TcpStream, peer: SocketAddr) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("{peer}\n");
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let _ = conn.write_all(reply.as_bytes());
    let _ = conn.shutdown(Shutdown::Write);
    // Wait for the client's close so unread data never turns ours into a reset.
    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
}

impl Drop for WhoAmI {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn repo_manifests_match_the_two_node_lab() {
        super::check_manifests(&crate::util::workspace_root().join("examples/nodeport")).unwrap();
    }
}
