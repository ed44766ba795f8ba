//! `cargo xtask demo`: lb on a lab node, end to end, in about a minute.
//!
//! Builds a sealed lab (a node namespace with a client pod and three web
//! pods behind veth pairs), starts `lb-agent run` in the node on a copy of
//! `examples/manifests`, then drives real traffic through the ClusterIPs and
//! prints what happened: the spread over the backends, reverse NAT for UDP,
//! socket-level load balancing for the node's own clients, a live scale-down
//! and the rejection of a Service without endpoints. Then, in a second lab
//! of two nodes and an external client, an agent per node serves
//! `examples/nodeport`: a NodePort spreading over pods on both nodes, a
//! LoadBalancer IP, and `externalTrafficPolicy: Local` with its health
//! check NodePort (see `demo/nodeport.rs`). Everything is torn down at the
//! end, on failure and on Ctrl-C.

mod agent;
mod interrupt;
mod listing;
mod manifests;
mod nodeport;

use std::{
    collections::{BTreeMap, BTreeSet},
    env, fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Args;
use lb_lab::{Netns, NodeLab, Server, http_get, http_server, udp_echo, udp_request};

use self::agent::Agent;
use crate::util;

/// Options for `cargo xtask demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// After the demo, keep the lab and the agent running until Ctrl-C, to
    /// try it by hand (curl, lb-agent list, bpftool, editing manifests).
    #[arg(long)]
    pub keep_running: bool,
}

/// The `web` Service's ClusterIP and port (examples/manifests/web.yaml).
const WEB_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
/// The `dns` Service's ClusterIP and port (examples/manifests/dns.yaml).
const DNS_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 53), 53);
/// Where the web pods serve HTTP (the EndpointSlice port `http`).
const HTTP_PORT: u16 = 8080;
/// Where the web pods answer UDP (the EndpointSlice port `dns`).
const UDP_PORT: u16 = 5353;
/// The lab's pods, in index order: pod `i` gets `lb_lab::pod_ip(i)`.
const PODS: [&str; 4] = ["client", "web-1", "web-2", "web-3"];
const CLIENT: &str = "client";
/// How often the agent looks at the manifest directory.
const POLL_MS: u64 = 200;
/// Load, attach and first sync of the agent.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Applying a manifest change.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// Width of the bar of a backend that got every request.
const BAR_WIDTH: usize = 40;

/// The backend pods with the IPs the lab gives them.
fn backend_pods() -> Vec<(&'static str, Ipv4Addr)> {
    PODS.iter().enumerate().filter(|(_, name)| **name != CLIENT).map(|(index, name)| (*name, lb_lab::pod_ip(index))).collect()
}

/// What `examples/manifests` must say for the demo's lab.
fn expectations<'a>(pods: &'a [(&'a str, Ipv4Addr)]) -> [manifests::Expected<'a>; 2] {
    [
        manifests::Expected {
            file: "web.yaml",
            service: "web",
            cluster_ip: *WEB_VIP.ip(),
            port: WEB_VIP.port(),
            protocol: "TCP",
            port_name: "http",
            target_port: HTTP_PORT,
            endpoints: pods,
        },
        manifests::Expected {
            file: "dns.yaml",
            service: "dns",
            cluster_ip: *DNS_VIP.ip(),
            port: DNS_VIP.port(),
            protocol: "UDP",
            port_name: "dns",
            target_port: UDP_PORT,
            endpoints: pods,
        },
    ]
}

fn web_frontend() -> String {
    format!("{WEB_VIP}/TCP")
}

fn dns_frontend() -> String {
    format!("{DNS_VIP}/UDP")
}

/// Runs the demo; setup and `build` have already run.
pub fn run(args: &DemoArgs) -> Result<()> {
    interrupt::install()?;
    let mut env = Env::default();
    let mut result = demo(args, &mut env);
    // From here on a second Ctrl-C must not cut the teardown short.
    interrupt::ignore();
    let interrupted = interrupt::requested();
    if let (Err(e), Some(agent)) = (&result, &mut env.agent)
        && let Ok(Some(status)) = agent.exited()
        && !interrupted
    {
        result = Err(anyhow::anyhow!("{e:#}").context(format!("lb-agent died during the demo ({status}); its log is above")));
    }
    if let (Err(_), false, Some(agent)) = (&result, interrupted, &env.agent) {
        eprintln!("\nlb-agent's log (last 40 lines of {}):\n{}\n", agent.log.display(), indent(&agent.log_tail(40), "  | "));
    }
    if interrupted {
        println!("\nCtrl-C: tearing the lab down.");
    }
    let clean = env.teardown();
    match result {
        Err(_) if interrupted => bail!("interrupted"),
        Err(e) => Err(e),
        Ok(()) if !clean => bail!("the demo passed, but the teardown left something behind (see above)"),
        Ok(()) => {
            println!("\nDemo complete: every check passed and nothing was left behind.");
            Ok(())
        }
    }
}

/// Everything the demo sets up, torn down in field order: the agent (it
/// runs inside the lab), the servers, the lab's namespaces, the temp dir.
#[derive(Default)]
struct Env {
    /// The two-node lab of the north-south part, with its agents.
    cluster: Option<nodeport::Cluster>,
    agent: Option<Agent>,
    servers: Vec<Server>,
    lab: Option<NodeLab>,
    tmp: Option<TempDir>,
}

impl Env {
    /// Tears everything down, printing what was done. Returns false if
    /// something was left behind.
    fn teardown(&mut self) -> bool {
        if self.cluster.is_none() && self.agent.is_none() && self.lab.is_none() && self.tmp.is_none() {
            return true;
        }
        let mut clean = true;
        section("Teardown");
        if let Some(cluster) = self.cluster.take() {
            clean &= cluster.teardown();
        }
        if let Some(mut agent) = self.agent.take() {
            match agent.stop() {
                Ok(how) => row("lb-agent", format!("{how}; maps unpinned, {} removed", agent.pins.display())),
                Err(e) => {
                    clean = false;
                    row("lb-agent", format!("FAILED: {e:#}"));
                }
            }
        }
        if !self.servers.is_empty() {
            let count = self.servers.len();
            self.servers.clear();
            row("servers", format!("{count} stopped"));
        }
        if let Some(lab) = self.lab.take() {
            let names = lab.netns_names();
            drop(lab);
            let left: Vec<String> = lb_lab::list_netns().unwrap_or_default().into_iter().filter(|name| names.contains(name)).collect();
            if left.is_empty() {
                row("lab", format!("{} network namespaces deleted", names.len()));
            } else {
                clean = false;
                row("lab", format!("FAILED: still there: {}", left.join(", ")));
            }
        }
        if let Some(tmp) = self.tmp.take() {
            let path = tmp.0.clone();
            drop(tmp);
            if path.exists() {
                clean = false;
                row("temp dir", format!("FAILED: {} still exists", path.display()));
            } else {
                row("temp dir", format!("{} removed", path.display()));
            }
        }
        clean
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Normally done already; this covers a panic.
        self.teardown();
    }
}

/// A directory removed (recursively) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<TempDir> {
        let path = env::temp_dir().join(name);
        // Left over by an earlier run that had the same pid and was killed.
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("demo: removing {}: {e}", self.0.display());
        }
    }
}

fn demo(args: &DemoArgs, env: &mut Env) -> Result<()> {
    let root = util::workspace_root();
    let bin = agent_binary(&root)?;
    let repo_manifests = root.join("examples/manifests");
    let pods = backend_pods();
    let expected = expectations(&pods);
    let pid = std::process::id();

    println!("lb demo: an eBPF load balancer for Kubernetes Services, on a lab node");
    println!("{}", "=".repeat(72));
    println!(
        "The node and its pods are network namespaces on this machine; nothing\n\
         touches the host's own network. lb-agent reads Services and EndpointSlices\n\
         from a directory of YAML and keeps its eBPF maps in sync with them."
    );

    remove_leftovers(&bin)?;
    // The manifests and the lab must agree on the pods' addresses.
    for want in &expected {
        manifests::check(&repo_manifests, want)?;
    }
    interrupt::check()?;

    section("The lab");
    lb_lab::require_root()?;
    let lab = env.lab.insert(NodeLab::new(&PODS).context("building the lab")?);
    for (name, ip) in &pods {
        let got = lab.pod(name).ip;
        ensure!(got == *ip, "the lab gave pod {name} {got}, but examples/manifests lists it as {ip}");
    }
    for (name, _) in &pods {
        interrupt::check()?;
        let pod = lab.pod(name);
        env.servers.push(http_server(&pod.ns, SocketAddrV4::new(pod.ip, HTTP_PORT), name)?);
        env.servers.push(udp_echo(&pod.ns, SocketAddrV4::new(pod.ip, UDP_PORT), name)?);
    }
    let w_ns = lab.netns_names().iter().map(String::len).max().unwrap_or(0);
    println!("  {:<8} {:<w_ns$}  {:<13} RUNS", "NAME", "NETNS", "IP");
    println!(
        "  {:<8} {:<w_ns$}  {:<13} lb-agent (tc on lbp*, socket hooks on cgroup2)",
        "node",
        lab.node.name(),
        lb_lab::NODE_IP.to_string()
    );
    for pod in &lab.pods {
        let runs = if pod.name == CLIENT {
            "the clients of this demo".to_owned()
        } else {
            format!("HTTP on :{HTTP_PORT}, UDP echo on :{UDP_PORT}")
        };
        println!("  {:<8} {:<w_ns$}  {:<13} {runs}", pod.name, pod.ns.name(), pod.ip.to_string());
    }
    println!("  Each server answers with its pod's name, so every reply says who served it.");

    section("The manifests");
    let tmp = env.tmp.insert(TempDir::new(&format!("lb-demo-{pid}"))?);
    let manifest_dir = tmp.0.join("manifests");
    copy_manifests(&repo_manifests, &manifest_dir)?;
    println!("  examples/manifests, copied to {} (the demo edits the copy):", manifest_dir.display());
    let names: Vec<&str> = pods.iter().map(|(name, _)| *name).collect();
    for want in &expected {
        println!(
            "  {:<9} Service {:<4} {:<18} -> port {:<4} = {}/{} on {}",
            want.file,
            want.service,
            format!("{}:{}/{}", want.cluster_ip, want.port, want.protocol),
            want.port_name,
            want.target_port,
            want.protocol,
            names.join(", ")
        );
    }
    println!("  Their endpoints are the lab's pod IPs ({}).", pods.iter().map(|(_, ip)| ip.to_string()).collect::<Vec<_>>().join(", "));
    interrupt::check()?;

    section("Starting lb-agent in the node namespace");
    let pins = PathBuf::from(format!("/sys/fs/bpf/lb-demo-{pid}"));
    let log = tmp.0.join("agent.log");
    let agent = env.agent.insert(Agent::start(&lab.node, &bin, &manifest_dir, &pins, &log, POLL_MS)?);
    println!("  $ {}", agent.command_line());
    println!("  binary {}, log {} (RUST_LOG=info)", bin.display(), log.display());
    let (_, took) = agent.wait_for("both Services with 3 backends each", START_TIMEOUT, |rows| {
        listing::backend_count(rows, &web_frontend()) == Some(3) && listing::backend_count(rows, &dns_frontend()) == Some(3)
    })?;
    print_agent_log(agent);
    println!("  Loaded, attached and in sync {} ms after start.", took.as_millis());

    show_listing(agent, "What the datapath holds")?;
    show_bpftool(&pins)?;

    let client = &lab.pod(CLIENT);
    let backends: Vec<&str> = names.clone();

    section("1/5  HTTP through the ClusterIP");
    let requests = 300;
    println!("  {requests} x GET http://{}/ from pod {CLIENT} ({}), one connection each:", WEB_VIP.ip(), client.ip);
    let (counts, took) = http_spread(&client.ns, requests)?;
    print_counts(&counts, &backends, requests);
    let starved: Vec<&str> = backends.iter().copied().filter(|name| counts.get(*name).copied().unwrap_or(0) == 0).collect();
    ensure!(starved.is_empty(), "{} got none of the {requests} requests", starved.join(" and "));
    println!("  {requests}/{requests} answered in {:.2} s, by all three pods. The tc program on the", took.as_secs_f64());
    println!("  client's veth picked a backend per connection and rewrote the destination;");
    println!("  the replies were rewritten back, so the client only ever saw {WEB_VIP}.");

    section("2/5  DNS-style UDP through the ClusterIP");
    let queries = 30;
    println!("  {queries} queries to {DNS_VIP} from pod {CLIENT}, each from a new connected UDP socket:");
    let (counts, sample) = udp_spread(&client.ns, queries)?;
    print_counts(&counts, &backends, queries);
    println!("  e.g. sent {:?}, got {:?} back from {DNS_VIP}.", sample.0, sample.1);
    println!("  All {queries} replies came from {DNS_VIP}, not from a pod IP: the datapath reversed");
    println!("  the NAT, or the connected socket would have dropped them.");

    section("3/5  From the node itself (socket-level LB)");
    let requests = 30;
    println!("  {requests} x GET http://{}/ from the node namespace ({}), not from a pod:", WEB_VIP.ip(), lab.node.name());
    let (counts, _) = http_spread(&lab.node, requests)?;
    print_counts(&counts, &backends, requests);
    println!("  Host clients have no veth to hook: the cgroup connect4 program chose the");
    println!("  backend inside connect(), so no packet ever carried the ClusterIP.");

    section("4/5  Scaling down");
    let two: Vec<(&str, Ipv4Addr)> = pods[..2].to_vec();
    let (gone, gone_ip) = pods[2];
    let web_manifest = repo_manifests.join("web.yaml");
    let original = fs::read_to_string(&web_manifest).with_context(|| format!("reading {}", web_manifest.display()))?;
    let keep: Vec<Ipv4Addr> = two.iter().map(|(_, ip)| *ip).collect();
    let note = format!("cargo xtask demo: {gone} ({gone_ip}) scaled away");
    write_atomically(&manifest_dir, "web.yaml", &manifests::with_endpoints(&original, &keep, &note)?)?;
    println!("  web.yaml rewritten without {gone} ({gone_ip}): written to .web.yaml.tmp, then renamed,");
    println!("  as a ConfigMap update does, so the agent never reads half a file.");
    let (_, took) =
        agent.wait_for("2 backends for web", CHANGE_TIMEOUT, |rows| listing::backend_count(rows, &web_frontend()) == Some(2))?;
    print_agent_log(agent);
    println!("  The datapath had 2 backends {} ms after the rename (the agent polls every {POLL_MS} ms).", took.as_millis());
    let requests = 100;
    println!("  {requests} x GET http://{}/ from pod {CLIENT}:", WEB_VIP.ip());
    let (counts, _) = http_spread(&client.ns, requests)?;
    print_counts(&counts, &backends, requests);
    let to_gone = counts.get(gone).copied().unwrap_or(0);
    ensure!(to_gone == 0, "{gone} was scaled away but got {to_gone} of {requests} requests");
    for (name, _) in &two {
        ensure!(counts.get(*name).copied().unwrap_or(0) > 0, "{name} got none of the {requests} requests after the scale-down");
    }
    println!("  {gone} got nothing: new connections only go to the endpoints that remain.");

    section("5/5  No endpoints: reject, not blackhole");
    let note = "cargo xtask demo: every endpoint removed";
    write_atomically(&manifest_dir, "web.yaml", &manifests::with_endpoints(&original, &[], note)?)?;
    println!("  web.yaml rewritten with `endpoints: []` (the Deployment scaled to zero).");
    let (rows, took) =
        agent.wait_for("no backends for web", CHANGE_TIMEOUT, |rows| listing::backend_count(rows, &web_frontend()) == Some(0))?;
    print_agent_log(agent);
    if let Some(row) = listing::find(&rows, &web_frontend()) {
        println!("  After {} ms, lb-agent list shows: {}  {}  (none: rejects)", took.as_millis(), row.frontend, row.service);
    }
    let started = Instant::now();
    match http_get(&client.ns, WEB_VIP) {
        Ok(body) => bail!("the web Service has no endpoints, yet GET got an answer: {body:?}"),
        Err(e) if lb_lab::is_connection_refused(&e) => println!(
            "  GET http://{}/ from pod {CLIENT}: connection refused (ECONNREFUSED) after {:.1} ms.",
            WEB_VIP.ip(),
            started.elapsed().as_secs_f64() * 1000.0
        ),
        Err(e) => {
            return Err(e.context(format!("expected the connection to {WEB_VIP} to be refused (ECONNREFUSED)")));
        }
    }
    println!("  As with kube-proxy, a Service without endpoints rejects: the client fails at");
    println!("  once instead of hanging until its timeout ({} s for these clients).", lb_lab::DEFAULT_TIMEOUT.as_secs());

    show_listing(agent, "What the datapath holds now")?;

    nodeport::run(&bin, &root, &tmp.0, pid, &mut env.cluster)?;

    if args.keep_running {
        let more = env.cluster.as_ref().map(nodeport::Cluster::try_lines).unwrap_or_default();
        keep_running(agent, lab, &manifest_dir, &original, &pins, &more)?;
    }
    Ok(())
}

/// Restores the full web manifest and waits for Ctrl-C, relaying the
/// agent's log.
fn keep_running(agent: &mut Agent, lab: &NodeLab, manifest_dir: &Path, original: &str, pins: &Path, more: &[String]) -> Result<()> {
    section("Keeping the lab up (--keep-running)");
    write_atomically(manifest_dir, "web.yaml", original)?;
    agent.wait_for("3 backends for web again", CHANGE_TIMEOUT, |rows| listing::backend_count(rows, &web_frontend()) == Some(3))?;
    print_agent_log(agent);
    let client = lab.pod(CLIENT).ns.name();
    let node = lab.node.name();
    let bin = agent_binary(&util::workspace_root())?;
    println!("  web.yaml has its 3 endpoints again. Try, as root, in another shell:");
    println!();
    println!("    ip netns exec {client} curl -s http://{}/", WEB_VIP.ip());
    println!("    ip netns exec {node} curl -s http://{}/", WEB_VIP.ip());
    println!("    {} list --bpffs {}", bin.display(), pins.display());
    println!("    bpftool map dump pinned {}/LB4_SERVICES", pins.display());
    println!("    $EDITOR {}/web.yaml", manifest_dir.display());
    println!("    tail -f {}", agent.log.display());
    for line in more {
        println!("    {line}");
    }
    println!();
    println!("  Edits to the manifests apply within {POLL_MS} ms; the agent's syncs show below.");
    println!("  Press Ctrl-C to tear everything down.");
    loop {
        if interrupt::requested() {
            return Ok(());
        }
        if let Some(status) = agent.exited()? {
            bail!("lb-agent exited ({status})");
        }
        print_agent_log(agent);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes what earlier demos that were killed outright (SIGKILL, no
/// teardown) left behind: their pinned maps, temp dir and namespaces, all
/// named after the dead process's pid. (Their agent died with them.)
fn remove_leftovers(bin: &Path) -> Result<()> {
    let bpffs = Path::new("/sys/fs/bpf");
    let tmp = env::temp_dir();
    let mut pids = BTreeSet::new();
    for dir in [bpffs, tmp.as_path()] {
        let Ok(entries) = fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            // lb-demo-<pid>, and lb-demo-<pid>-node-a etc. (the two-node lab)
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix("lb-demo-"))
                .and_then(|n| n.split('-').next())
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(pid) = pid
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                pids.insert(pid);
            }
        }
    }
    for pid in pids {
        let mut removed = Vec::new();
        let own = format!("lb-demo-{pid}");
        let mut pin_dirs: Vec<PathBuf> = fs::read_dir(bpffs)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|entry| {
                        let name = entry.file_name();
                        let name = name.to_string_lossy();
                        name == own.as_str() || name.starts_with(&format!("{own}-"))
                    })
                    .map(|entry| entry.path())
                    .collect()
            })
            .unwrap_or_default();
        pin_dirs.sort();
        for pins in pin_dirs {
            agent::remove_pins(bin, &pins)?;
            removed.push(pins.display().to_string());
        }
        let dir = tmp.join(format!("lb-demo-{pid}"));
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            removed.push(dir.display().to_string());
        }
        let prefix = format!("{}{pid}-", lb_lab::NAME_PREFIX);
        let mut namespaces = 0;
        for name in lb_lab::list_netns()? {
            if name.starts_with(&prefix) {
                util::output(Command::new("ip").args(["netns", "del", &name]))?;
                namespaces += 1;
            }
        }
        if namespaces > 0 {
            removed.push(format!("{namespaces} namespaces {prefix}*"));
        }
        println!("(Removed what a killed demo, pid {pid}, left behind: {}.)", removed.join(", "));
    }
    Ok(())
}

/// `target/release/lb-agent` (or under `CARGO_TARGET_DIR`), built by
/// `cargo xtask build` before the demo runs.
fn agent_binary(root: &Path) -> Result<PathBuf> {
    let target = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    let bin = target.join("release/lb-agent");
    ensure!(bin.is_file(), "{} does not exist; `cargo xtask build` builds it", bin.display());
    Ok(bin)
}

/// Copies the manifest files (not the README) of `from` into `to`.
fn copy_manifests(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let entries = fs::read_dir(from).with_context(|| format!("reading {}", from.display()))?;
    for entry in entries {
        let path = entry?.path();
        let is_manifest = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"));
        if let (true, Some(name)) = (is_manifest, path.file_name()) {
            fs::copy(&path, to.join(name)).with_context(|| format!("copying {} to {}", path.display(), to.display()))?;
        }
    }
    Ok(())
}

/// Writes `dir/name` atomically: a hidden temp file (which the agent
/// ignores), then a rename over the old file.
fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming {} to {name}", tmp.display()))
}

/// `n` HTTP GETs to the web ClusterIP from `ns`: which pod answered how
/// often, and how long it took. Fails on the first failed request.
fn http_spread(ns: &Netns, n: usize) -> Result<(BTreeMap<String, usize>, Duration)> {
    let started = Instant::now();
    let mut counts = BTreeMap::new();
    for i in 0..n {
        interrupt::check()?;
        let tag = http_get(ns, WEB_VIP).with_context(|| format!("request {} of {n} failed", i + 1))?;
        *counts.entry(tag).or_default() += 1;
    }
    Ok((counts, started.elapsed()))
}

/// `n` UDP queries to the dns ClusterIP from `ns`; every reply must echo
/// its query and come from the ClusterIP. Returns the counts per pod and
/// the first (query, reply).
fn udp_spread(ns: &Netns, n: usize) -> Result<(BTreeMap<String, usize>, (String, String))> {
    let mut counts = BTreeMap::new();
    let mut sample = None;
    for i in 0..n {
        interrupt::check()?;
        let query = format!("query-{i}");
        let (reply, peer) = udp_request(ns, DNS_VIP, &query).with_context(|| format!("query {} of {n} failed", i + 1))?;
        ensure!(peer == SocketAddr::V4(DNS_VIP), "the reply to {query:?} came from {peer}, not from {DNS_VIP}");
        let Some(pod) = reply.strip_suffix(&format!(":{query}")) else {
            bail!("the reply to {query:?} was {reply:?}, not <pod>:{query}");
        };
        *counts.entry(pod.to_owned()).or_default() += 1;
        sample.get_or_insert((query, reply));
    }
    Ok((counts, sample.unwrap_or_default()))
}

/// One line per backend: name, bar, count, share. Unexpected answers are
/// listed too.
fn print_counts(counts: &BTreeMap<String, usize>, backends: &[&str], total: usize) {
    let others = counts.keys().filter(|k| !backends.contains(&k.as_str()));
    let names: Vec<&str> = backends.iter().copied().chain(others.map(String::as_str)).collect();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    for name in names {
        let count = counts.get(name).copied().unwrap_or(0);
        let share = count as f64 / total.max(1) as f64;
        let bar = "#".repeat((share * BAR_WIDTH as f64).round() as usize);
        println!("    {name:<width$}  {bar:<BAR_WIDTH$}  {count:>4}  {:>5.1}%", share * 100.0);
    }
}

/// Prints `lb-agent list` under a heading.
fn show_listing(agent: &Agent, heading: &str) -> Result<()> {
    section(heading);
    println!("  $ lb-agent list --bpffs {}", agent.pins.display());
    println!("{}", indent(agent.list()?.trim_end(), "  "));
    Ok(())
}

/// Prints what bpftool shows of the frontend map.
fn show_bpftool(pins: &Path) -> Result<()> {
    let map = pins.join("LB4_SERVICES");
    println!();
    println!("  The same frontends, raw, as an operator sees them with bpftool:");
    println!("  $ bpftool map dump pinned {}", map.display());
    let bpftool = util::find_program("bpftool").context("bpftool is not installed (`cargo xtask setup` installs it)")?;
    let out = util::output(Command::new(bpftool).args(["map", "dump", "pinned"]).arg(&map))?;
    println!("{}", indent(out.trim_end(), "  "));
    // The key holds the address and port as the packet does (network byte
    // order), which bpftool prints as host-order numbers.
    println!(
        "  (Keys are in network byte order: addr {} is {}, port {} is {}; proto 6 is TCP, 17 UDP.)",
        u32::from_ne_bytes(WEB_VIP.ip().octets()),
        WEB_VIP.ip(),
        WEB_VIP.port().to_be(),
        WEB_VIP.port()
    );
    Ok(())
}

/// Relays the agent's new log lines (syncs, warnings, errors).
fn print_agent_log(agent: &mut Agent) {
    for line in agent.new_log_lines() {
        println!("  agent| {line}");
        if line.contains("no external interface") {
            println!("  (Expected here: the lab node has no uplink, and this demo uses ClusterIPs only.)");
        }
    }
}

fn section(title: &str) {
    println!();
    println!("== {title} {}", "=".repeat(68usize.saturating_sub(title.len())));
}

fn row(what: &str, text: String) {
    println!("  {what:<10} {text}");
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|line| format!("{prefix}{line}")).collect::<Vec<_>>().join("\n")
}
