//! `lb-agent`: the lb node agent and its CLI.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{ArgAction, Parser, Subcommand, builder::BoolishValueParser};
use lb_agent::{
    DEFAULT_BPFFS_DIR,
    datapath::{self, HostRouting, XdpAttach},
    inspect::{Output, conntrack, explain, stats, status},
    list,
    maps::Maps,
    model::{BackendSelection, IpFamily},
    northsouth::{self, NodePortAddress, NorthSouthConfig, PortRange},
    run::{self, SourceConfig},
    source::kube::{self, KubeOptions},
    translate::TranslateOptions,
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "lb-agent", version, about = "eBPF Kubernetes Service load balancer: node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: text (coloured only on a terminal) or json
    /// (one object a line).
    #[arg(long, global = true, env = "LB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr as `format` asks; colours only when stderr is a
/// terminal (a DaemonSet's logs are a file, where escape codes are noise).
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Load the datapath, attach it, and keep its maps in sync with the
    /// Services and EndpointSlices of the Kubernetes API (in-cluster, or
    /// `--kubeconfig`/`KUBECONFIG`; `--k8s-api-server` for its address), or
    /// of a manifest directory (`--manifests`). Every flag has an
    /// environment variable, `LB_` and the flag in capitals.
    Run(Box<RunArgs>),
    /// Show the frontends held in the pinned maps: their backends, scope,
    /// traffic policy, affinity, backend selection and counters.
    List {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR, env = "LB_BPFFS")]
        bpffs: PathBuf,
        /// Only the frontends of this Service (`namespace/name`).
        #[arg(long)]
        service: Option<String>,
        /// Only this frontend (`ip:port`, or `ip:port/PROTO`).
        #[arg(long)]
        frontend: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show the conntrack entries (both directions of each flow, the NAT
    /// they apply, their state and age).
    Ct {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR, env = "LB_BPFFS")]
        bpffs: PathBuf,
        /// Only entries with this address (client, frontend, backend or
        /// SNAT address).
        #[arg(long)]
        addr: Option<std::net::IpAddr>,
        /// Only entries with this port.
        #[arg(long)]
        port: Option<u16>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show the datapath's counters: drops and rejects by reason, what
    /// each Service served, how full each map is.
    Stats {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR, env = "LB_BPFFS")]
        bpffs: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show what is attached where (interfaces, modes, program and link
    /// IDs), the maps' IDs and sizes, and this binary's version.
    Status {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR, env = "LB_BPFFS")]
        bpffs: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Explain what the datapath would do with a packet: the frontend it
    /// hits, conntrack, affinity, Maglev slot or random pick, or the
    /// reject or drop and its reason. Reads the maps only.
    Explain {
        /// tcp, udp or sctp.
        #[arg(value_parser = explain::parse_proto)]
        proto: u8,
        /// The packet's source, `ip:port` (IPv6: `[ip]:port`).
        src: std::net::SocketAddr,
        /// The packet's destination, `ip:port` (IPv6: `[ip]:port`).
        dst: std::net::SocketAddr,
        /// Where the packet meets the datapath: leaving a pod (tc), or
        /// arriving from outside the node (XDP).
        #[arg(long, value_enum, default_value_t = explain::Hook::Pod)]
        hook: explain::Hook,
        /// TCP flags of the packet (letters S, A, F, R).
        #[arg(long, default_value = "S", value_parser = explain::parse_tcp_flags)]
        tcp_flags: u8,
        #[arg(long, default_value = DEFAULT_BPFFS_DIR, env = "LB_BPFFS")]
        bpffs: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Take lb off the node: detach every program and remove every pinned
    /// link and map (all datapath state). Refused while an agent runs.
    #[command(alias = "cleanup")]
    Uninstall {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR, env = "LB_BPFFS")]
        bpffs: PathBuf,
    },
}

/// The flags of `lb-agent run`. Each has an environment variable, `LB_`
/// and the flag in capitals (`--sync-delay-ms`: `LB_SYNC_DELAY_MS`), except
/// `--node-name` (`NODE_NAME`, from the downward API), so that the
/// DaemonSet sets every one from its ConfigMap (`deploy/02-configmap.yaml`).
#[derive(clap::Args)]
struct RunArgs {
    /// Directory of Service and EndpointSlice YAML, watched for changes,
    /// instead of the Kubernetes API.
    #[arg(long, env = "LB_MANIFESTS", conflicts_with_all = ["kubeconfig", "k8s_api_server"])]
    manifests: Option<PathBuf>,
    /// kubeconfig file for the API server (default: KUBECONFIG, then
    /// ~/.kube/config, then the in-cluster configuration).
    #[arg(long, env = "LB_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The API server's own address, e.g. https://10.0.0.1:6443, instead of
    /// the kubeconfig's or the in-cluster one (a ClusterIP, which a node
    /// without kube-proxy does not route before lb runs); the in-cluster
    /// token and CA are kept.
    #[arg(long, env = "LB_K8S_API_SERVER", value_parser = kube::parse_api_server)]
    k8s_api_server: Option<String>,
    /// This node's name (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Address of the health server (/livez, /healthz, /readyz, /metrics);
    /// "off" disables it. A wildcard (0.0.0.0 or ::) takes both families,
    /// as kube-proxy's does.
    #[arg(long, env = "LB_HEALTH_ADDR", default_value = "0.0.0.0:10256", value_parser = parse_health_addr)]
    health_addr: HealthAddr,
    /// Address of the metrics server (/metrics: the agent's and the
    /// datapath's figures), kube-proxy's by default; "off" disables it.
    #[arg(long, env = "LB_METRICS_ADDR", default_value = "127.0.0.1:10249", value_parser = parse_health_addr)]
    metrics_addr: HealthAddr,
    /// Backend selection of Services without the lb.dev/backend-selection
    /// annotation.
    #[arg(long, env = "LB_BACKEND_SELECTION", default_value = "random", value_parser = parse_selection)]
    backend_selection: BackendSelection,
    /// How long to gather a burst of updates before writing the maps, in ms.
    #[arg(long, env = "LB_SYNC_DELAY_MS", default_value_t = 100)]
    sync_delay_ms: u64,
    /// Longest wait between retries against a failing API server, in ms.
    #[arg(long, env = "LB_API_BACKOFF_MAX_MS", default_value_t = 30_000)]
    api_backoff_max_ms: u64,
    /// bpffs directory where the maps are pinned.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR, env = "LB_BPFFS")]
    bpffs: PathBuf,
    /// Pod interface name patterns (`*` wildcards), comma separated. The tc
    /// program is attached to every matching interface, including ones
    /// that appear later.
    #[arg(long, env = "LB_POD_IFACES", value_delimiter = ',', default_value = "lxc*,veth*,cali*,eni*,gke*")]
    pod_ifaces: Vec<String>,
    /// cgroup2 directory for the socket hooks, or a cgroup v1 hierarchy
    /// whose `unified` is one (a hybrid host); default: the cgroup2 mount.
    #[arg(long, env = "LB_CGROUP")]
    cgroup: Option<PathBuf>,
    /// Do not attach the socket hooks (host clients then do not reach
    /// ClusterIPs). As a variable: true or false (also yes/no, 1/0, on/off).
    #[arg(long, env = "LB_NO_SOCKET_LB", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    no_socket_lb: bool,
    /// How often to look for new interfaces, and at the manifests that
    /// changed (inotify names them; every file is looked at every 30 s), in
    /// ms.
    #[arg(long, env = "LB_POLL_INTERVAL_MS", default_value_t = 1000)]
    poll_interval_ms: u64,
    /// Capacity of the TCP conntrack map (LRU; two entries per flow). A new
    /// size applies at the next start, with the flows carried over.
    #[arg(long, env = "LB_CT_TCP_SIZE", default_value_t = lb_common::sizes::CT_TCP)]
    ct_tcp_size: u32,
    /// Capacity of the conntrack map of every other protocol (LRU; two
    /// entries per flow).
    #[arg(long, env = "LB_CT_ANY_SIZE", default_value_t = lb_common::sizes::CT_ANY)]
    ct_any_size: u32,
    /// Capacity of the frontend map (and rev-NAT map).
    #[arg(long, env = "LB_SERVICES_SIZE", default_value_t = lb_common::sizes::SERVICES)]
    services_size: u32,
    /// Capacity of the backend map.
    #[arg(long, env = "LB_BACKENDS_SIZE", default_value_t = lb_common::sizes::BACKENDS)]
    backends_size: u32,
    /// Capacity of the IPv6 frontend map (and IPv6 address map).
    #[arg(long, env = "LB_SERVICES6_SIZE", default_value_t = lb_common::sizes::SERVICES6)]
    services6_size: u32,
    /// Capacity of the IPv6 backend map.
    #[arg(long, env = "LB_BACKENDS6_SIZE", default_value_t = lb_common::sizes::BACKENDS6)]
    backends6_size: u32,
    /// Capacity of the IPv6 TCP conntrack map (LRU; two entries per flow).
    #[arg(long, env = "LB_CT6_TCP_SIZE", default_value_t = lb_common::sizes::CT_TCP6)]
    ct6_tcp_size: u32,
    /// Capacity of the IPv6 conntrack map of every other protocol (LRU;
    /// two entries per flow).
    #[arg(long, env = "LB_CT6_ANY_SIZE", default_value_t = lb_common::sizes::CT_ANY6)]
    ct6_any_size: u32,
    /// Capacity of the backend slot map.
    #[arg(long, env = "LB_SLOTS_SIZE", default_value_t = lb_common::sizes::SLOTS)]
    slots_size: u32,
    /// Maglev table size M (a prime; 16381 by default, as Cilium; 65537
    /// for Services with more than ~160 backends).
    #[arg(
        long,
        env = "LB_MAGLEV_TABLE_SIZE",
        default_value_t = lb_common::sizes::MAGLEV_M,
        value_parser = parse_maglev_m
    )]
    maglev_table_size: u32,
    /// Session affinity (ClientIP) keys an IPv6 client by this prefix of
    /// its address, 0-128 (default 128: the whole address, as kube-proxy;
    /// 64 keeps the clients of one /64 on one backend).
    #[arg(long, env = "LB_AFFINITY_IPV6_PREFIX", default_value_t = 128, value_parser = clap::value_parser!(u8).range(0..=128))]
    affinity_ipv6_prefix: u8,
    /// Capacity of the session affinity map (LRU).
    #[arg(long, env = "LB_AFFINITY_SIZE", default_value_t = lb_common::sizes::AFFINITY)]
    affinity_size: u32,
    /// Conntrack timeout of a TCP flow that only sent its SYN, seconds.
    #[arg(long, env = "LB_CT_TCP_SYN_TIMEOUT", default_value_t = lb_common::CtTimeouts::DEFAULT.tcp_syn)]
    ct_tcp_syn_timeout: u32,
    /// Conntrack timeout of an established TCP flow, seconds.
    #[arg(
        long,
        env = "LB_CT_TCP_ESTABLISHED_TIMEOUT",
        default_value_t = lb_common::CtTimeouts::DEFAULT.tcp_established
    )]
    ct_tcp_established_timeout: u32,
    /// Conntrack timeout of a TCP flow after FIN or RST, seconds.
    #[arg(long, env = "LB_CT_TCP_CLOSING_TIMEOUT", default_value_t = lb_common::CtTimeouts::DEFAULT.tcp_closing)]
    ct_tcp_closing_timeout: u32,
    /// Conntrack timeout of a UDP flow, seconds.
    #[arg(long, env = "LB_CT_UDP_TIMEOUT", default_value_t = lb_common::CtTimeouts::DEFAULT.udp)]
    ct_udp_timeout: u32,
    /// How often expired conntrack entries are collected, seconds.
    #[arg(long, env = "LB_CT_GC_INTERVAL", default_value_t = 30)]
    ct_gc_interval: u64,
    /// How often the maps are compared with the desired state and any
    /// difference repaired (kube-proxy's --sync-period): `1h`, `15m`,
    /// `30s`, `500ms`; a bare number is seconds.
    #[arg(long, env = "LB_SYNC_PERIOD", default_value = "1h", value_parser = lb_agent::run::parse_period)]
    sync_period: Duration,
    /// External interfaces for the north-south XDP program (NodePorts,
    /// external and LoadBalancer IPs), comma separated (default: those of
    /// the default routes, IPv4's and IPv6's).
    #[arg(long, env = "LB_EXTERNAL_IFACES", value_delimiter = ',')]
    external_ifaces: Vec<String>,
    /// The node's primary addresses, of either family or both, comma
    /// separated: NodePorts are served on them unless --nodeport-addresses
    /// says otherwise (default, per family without one here: the IPv4
    /// addresses, or the global IPv6 addresses, of the external
    /// interfaces).
    #[arg(long, env = "LB_NODE_IPS", value_delimiter = ',')]
    node_ips: Vec<std::net::IpAddr>,
    /// Which node addresses NodePorts are served on, as kube-proxy's flag:
    /// CIDRs of either family and `primary` (per family: --node-ips, else
    /// the Node's InternalIP, else its ExternalIP), comma separated; any
    /// address of the node inside them, followed as addresses come and go
    /// (default: the --node-ips, else the external interfaces'
    /// addresses).
    #[arg(long, env = "LB_NODEPORT_ADDRESSES", value_delimiter = ',')]
    nodeport_addresses: Vec<NodePortAddress>,
    /// Address that north-south flows to backends on other nodes are
    /// SNATed to (default: the first node address).
    #[arg(long, env = "LB_SNAT_IP")]
    snat_ip: Option<std::net::Ipv4Addr>,
    /// Address that IPv6 north-south flows to backends on other nodes are
    /// SNATed to (NAT66; default: the first global IPv6 address of the
    /// external interfaces).
    #[arg(long, env = "LB_SNAT_IP6")]
    snat_ip6: Option<std::net::Ipv6Addr>,
    /// NodePort range, as the API server's --service-node-port-range.
    #[arg(long, env = "LB_NODEPORT_RANGE", default_value_t = northsouth::DEFAULT_NODEPORT_RANGE)]
    nodeport_range: PortRange,
    /// Source ports for SNAT (keep them out of the node's ephemeral range).
    #[arg(long, env = "LB_SNAT_PORTS", default_value_t = northsouth::DEFAULT_SNAT_PORTS)]
    snat_ports: PortRange,
    /// XDP attach mode on the external interfaces: auto (native where the
    /// driver runs it, else tc; generic on veth), native, generic, tc (no
    /// XDP: the north-south path in tc on their ingress), or off (no
    /// north-south path).
    #[arg(long, env = "LB_XDP_MODE", value_enum, default_value_t = XdpAttach::Auto)]
    xdp_mode: XdpAttach,
    /// How translated pod traffic reaches a pod of this node: legacy
    /// (through the host stack and its netfilter) or bpf (straight into
    /// the pod with bpf_redirect_peer, both families; skips netfilter, so
    /// the NetworkPolicy of an iptables-based CNI too).
    #[arg(long, env = "LB_HOST_ROUTING", value_enum, default_value_t = HostRouting::Legacy)]
    host_routing: HostRouting,
    /// Where the node's network sysctls are set (accept_local on the
    /// external interfaces, loose rp_filter on VXLAN and Geneve devices):
    /// /proc/sys, or in a container that is not privileged (its /proc/sys
    /// is read-only) a directory whose net/ is a writable mount of the
    /// host's /proc/sys/net (the DaemonSet's /host/proc/sys).
    #[arg(long, env = "LB_SYSCTL_DIR", default_value = "/proc/sys")]
    sysctl_dir: PathBuf,
}

/// kube-rs's own messages about every failed request and broken watch:
/// the agent reports those itself, once per outage rather than at every
/// retry. Off unless RUST_LOG names `kube_client`.
const KUBE_CLIENT_QUIET: &str = "kube_client::client=off,kube_client::client::tls=info";

/// The log filter: RUST_LOG (default `info`), with kube-rs's per-request
/// messages off unless RUST_LOG asks for them.
fn log_filter(rust_log: Option<&str>) -> EnvFilter {
    let spec = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    let spec = if spec.contains("kube_client") { spec.to_string() } else { format!("{spec},{KUBE_CLIENT_QUIET}") };
    EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("RUST_LOG={spec:?}: {e}; logging at info");
        EnvFilter::new(format!("info,{KUBE_CLIENT_QUIET}"))
    })
}

fn parse_maglev_m(s: &str) -> Result<u32, String> {
    let m: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if !lb_agent::maglev::is_prime(m) || m < 7 {
        return Err(format!("{m} is not a prime >= 7 (try 16381 or 65537)"));
    }
    Ok(m)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Run(args) => {
            northsouth::check_snat_ports(args.snat_ports, args.nodeport_range).map_err(anyhow::Error::msg)?;
            lb_agent::heap::one_arena();
            match lb_agent::fd_limit::raise() {
                Ok((before, after)) if before != after => tracing::info!("open files limit raised from {before} to {after}"),
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot raise the open files limit: {e}"),
            }
            let poll = Duration::from_millis(args.poll_interval_ms.max(10));
            let node_name = args.node_name.clone();
            let source = match args.manifests {
                Some(path) => SourceConfig::Dir { path, poll },
                None => SourceConfig::Kube(KubeOptions {
                    kubeconfig: args.kubeconfig,
                    node_name: args.node_name,
                    backoff_max: Duration::from_millis(args.api_backoff_max_ms.max(100)),
                    api_server: args.k8s_api_server,
                }),
            };
            let cfg = run::RunConfig {
                source,
                bpffs: args.bpffs,
                pod_ifaces: args.pod_ifaces,
                cgroup: args.cgroup,
                socket_lb: !args.no_socket_lb,
                sizes: datapath::MapSizes {
                    services: args.services_size,
                    backends: args.backends_size,
                    slots: args.slots_size,
                    ct_tcp: args.ct_tcp_size,
                    ct_any: args.ct_any_size,
                    affinity: args.affinity_size,
                    services6: args.services6_size,
                    backends6: args.backends6_size,
                    ct_tcp6: args.ct6_tcp_size,
                    ct_any6: args.ct6_any_size,
                },
                poll,
                sync_delay: Duration::from_millis(args.sync_delay_ms),
                health_addr: args.health_addr.0,
                metrics_addr: args.metrics_addr.0,
                translate: TranslateOptions { default_selection: args.backend_selection },
                maglev_m: args.maglev_table_size,
                ct_timeouts: lb_common::CtTimeouts {
                    tcp_syn: args.ct_tcp_syn_timeout,
                    tcp_established: args.ct_tcp_established_timeout,
                    tcp_closing: args.ct_tcp_closing_timeout,
                    udp: args.ct_udp_timeout,
                },
                ct_gc_interval: Duration::from_secs(args.ct_gc_interval.max(1)),
                sync_period: args.sync_period,
                host_routing: args.host_routing,
                north_south: NorthSouthConfig {
                    node_name: node_name.clone(),
                    external_ifaces: args.external_ifaces,
                    node_ips: args.node_ips.iter().filter_map(|ip| std::net::Ipv4Addr::of(*ip)).collect(),
                    node_ips6: args.node_ips.iter().filter_map(|ip| std::net::Ipv6Addr::of(*ip)).collect(),
                    nodeport_addresses: args.nodeport_addresses,
                    snat_ip: args.snat_ip,
                    snat_ip6: args.snat_ip6,
                    affinity_ipv6_prefix: args.affinity_ipv6_prefix,
                    nodeport_range: args.nodeport_range,
                    snat_ports: args.snat_ports,
                    xdp_mode: args.xdp_mode,
                    sysctls: lb_agent::host::Sysctls::new(args.sysctl_dir),
                },
            };
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(run::run(cfg, shutdown_signal()))
        }
        Command::List { bpffs, service, frontend, output } => {
            let maps = Maps::open(&bpffs)?;
            let filter = list::Filter { service, frontend };
            match output {
                Output::Table => print!("{}", list::render_filtered(&maps, &filter).context("reading the maps")?),
                Output::Json => print_json(&list::json(&maps, &filter).context("reading the maps")?)?,
            }
            Ok(())
        }
        Command::Ct { bpffs, addr, port, output } => {
            let maps = Maps::open(&bpffs)?;
            let rows = conntrack::rows(&maps, &conntrack::CtFilter { addr, port }).context("reading the maps")?;
            match output {
                Output::Table => print!("{}", conntrack::render(&rows)),
                Output::Json => print_json(&serde_json::json!({ "entries": rows }))?,
            }
            Ok(())
        }
        Command::Stats { bpffs, output } => {
            let maps = Maps::open(&bpffs)?;
            let s = stats::read(&maps).context("reading the maps")?;
            match output {
                Output::Table => print!("{}", stats::render(&s)),
                Output::Json => print_json(&s)?,
            }
            Ok(())
        }
        Command::Status { bpffs, output } => {
            let s = status::read(&bpffs)?;
            match output {
                Output::Table => print!("{}", status::render(&s)),
                Output::Json => print_json(&s)?,
            }
            Ok(())
        }
        Command::Explain { proto, src, dst, hook, tcp_flags, bpffs, output } => {
            let maps = Maps::open(&bpffs)?;
            let q = explain::Query { hook, proto, src, dst, tcp_flags };
            let x = explain::explain(&maps, &q, lb_agent::gc::monotonic_ns()).context("reading the maps")?;
            match output {
                Output::Table => print!("{}", explain::render(&x)),
                Output::Json => print_json(&x)?,
            }
            Ok(())
        }
        Command::Uninstall { bpffs } => datapath::cleanup(&bpffs),
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[derive(Clone, Debug)]
struct HealthAddr(Option<SocketAddr>);

fn parse_health_addr(s: &str) -> Result<HealthAddr, String> {
    match s {
        "off" | "" => Ok(HealthAddr(None)),
        s => s.parse().map(|a| HealthAddr(Some(a))).map_err(|e| format!("{s:?}: {e} (expected ip:port or \"off\")")),
    }
}

fn parse_selection(s: &str) -> Result<BackendSelection, String> {
    s.parse()
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        path::{Path, PathBuf},
        sync::Mutex,
    };

    use clap::{CommandFactory as _, FromArgMatches as _, parser::ValueSource};
    use serde::Deserialize as _;

    use super::*;

    /// Held while the environment is changed and read (by parsing).
    static ENV: Mutex<()> = Mutex::new(());

    /// Variables in deploy/'s ConfigMap that are not `run` flags.
    const NOT_FLAGS: [&str; 1] = ["RUST_LOG"];

    /// `lb-agent run`'s flags, the global ones (such as `--log-format`)
    /// included.
    fn run_flags() -> Vec<clap::Arg> {
        let cli = Cli::command();
        let run = cli.find_subcommand("run").expect("a run subcommand");
        let global = cli.get_arguments().filter(|a| a.is_global_set());
        run.get_arguments().chain(global).filter(|a| !matches!(a.get_id().as_str(), "help" | "version")).cloned().collect()
    }

    /// The variable of `--{long}`: `LB_` and the flag in capitals.
    fn variable_for(long: &str) -> String {
        match long {
            "node-name" => "NODE_NAME".to_string(),
            _ => format!("LB_{}", long.to_uppercase().replace('-', "_")),
        }
    }

    fn flag_variables() -> BTreeSet<String> {
        run_flags().iter().filter_map(|a| Some(a.get_env()?.to_str()?.to_string())).collect()
    }

    fn deploy_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
    }

    /// A variable as deploy/'s ConfigMaps list it.
    struct Listed {
        value: String,
        /// `# LB_X: value`: a flag whose default is fine, or an example.
        commented_out: bool,
    }

    /// Every variable the ConfigMaps in deploy/ list, set or commented out.
    fn config_map_entries() -> BTreeMap<String, Listed> {
        let mut vars = BTreeMap::new();
        for entry in std::fs::read_dir(deploy_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let mut has_config_map = false;
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let doc = serde_yaml::Value::deserialize(doc).unwrap();
                if doc["kind"].as_str() != Some("ConfigMap") {
                    continue;
                }
                has_config_map = true;
                for (k, v) in doc["data"].as_mapping().into_iter().flatten() {
                    vars.insert(scalar(k), Listed { value: scalar(v), commented_out: false });
                }
            }
            if has_config_map {
                for (k, value) in commented_out(&text) {
                    vars.entry(k).or_insert(Listed { value, commented_out: true });
                }
            }
        }
        vars
    }

    /// The variables with their values, as if all were uncommented.
    fn config_map_variables() -> BTreeMap<String, String> {
        config_map_entries().into_iter().map(|(k, l)| (k, l.value)).collect()
    }

    /// `# LB_X: value` lines.
    fn commented_out(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| {
                let rest = l.trim_start().strip_prefix('#')?.trim_start().strip_prefix("LB_")?;
                Some(format!("LB_{rest}"))
            })
            .filter(|l| l.contains(": ") && l.split(':').next().is_some_and(|k| !k.contains(' ')))
            .map(|l| {
                let map: BTreeMap<String, serde_yaml::Value> =
                    serde_yaml::from_str(&l).unwrap_or_else(|e| panic!("commented-out variable {l:?}: {e}"));
                map.into_iter().map(|(k, v)| (k, scalar(&v))).next().unwrap()
            })
            .collect()
    }

    fn scalar(v: &serde_yaml::Value) -> String {
        match v {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            other => panic!("not a scalar: {other:?}"),
        }
    }

    /// Parses `lb-agent run ARGS` with exactly `vars` set among the flags'
    /// variables; returns the arguments and how each was set.
    fn parse_run(args: &[&str], vars: &BTreeMap<String, String>) -> Result<(RunArgs, clap::ArgMatches), clap::Error> {
        let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let names: BTreeSet<String> = flag_variables().into_iter().chain(vars.keys().cloned()).collect();
        let set = |values: &BTreeMap<String, String>| {
            for name in &names {
                // SAFETY: every test of this binary that reads or writes
                // the environment holds ENV.
                unsafe {
                    match values.get(name) {
                        Some(v) => std::env::set_var(name, v),
                        None => std::env::remove_var(name),
                    }
                }
            }
        };
        set(vars);
        let matches = Cli::command().try_get_matches_from(["lb-agent", "run"].iter().chain(args));
        set(&BTreeMap::new());
        let matches = matches?;
        let run = matches.subcommand_matches("run").expect("run").clone();
        Ok((RunArgs::from_arg_matches(&run)?, run))
    }

    #[test]
    fn kube_client_requests_are_quiet_unless_asked_for() {
        let default = log_filter(None).to_string();
        assert!(default.contains("kube_client::client=off") && default.contains("info"), "{default}");
        let asked = log_filter(Some("info,kube_client=debug")).to_string();
        assert!(!asked.contains("kube_client::client=off"), "{asked}");
        assert!(log_filter(Some("debug")).to_string().contains("kube_client::client=off"));
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_run_flag_has_its_variable() {
        let flags = run_flags();
        assert!(flags.len() > 30, "{} flags", flags.len());
        for arg in flags {
            let long = arg.get_long().expect("every run argument is a --flag");
            let env = arg.get_env().unwrap_or_else(|| panic!("--{long} has no environment variable"));
            assert_eq!(env.to_str(), Some(variable_for(long).as_str()), "--{long}");
        }
    }

    #[test]
    fn the_config_map_lists_every_flag_and_only_flags() {
        let flags = flag_variables();
        let listed = config_map_variables();
        for key in listed.keys() {
            assert!(
                flags.contains(key) || NOT_FLAGS.contains(&key.as_str()),
                "{key} is in deploy/'s ConfigMap but is no `lb-agent run` variable"
            );
        }
        for var in flags.iter().filter(|v| *v != "NODE_NAME") {
            assert!(listed.contains_key(var), "{var} is not in deploy/02-configmap.yaml (list it, commented out if the default is fine)");
        }
        assert!(!listed.contains_key("NODE_NAME"), "NODE_NAME comes from the DaemonSet (spec.nodeName)");
    }

    /// A commented-out entry of a flag with a default shows that default.
    #[test]
    fn commented_out_entries_show_the_defaults() {
        let listed = config_map_entries();
        for arg in run_flags() {
            let Some(var) = arg.get_env().and_then(|v| v.to_str()) else { continue };
            let default: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
            match listed.get(var) {
                Some(entry) if entry.commented_out && !default.is_empty() && var != "LB_NO_SOCKET_LB" => {
                    assert_eq!(entry.value, default.join(","), "the commented-out {var} is not the default");
                }
                Some(entry) if var == "LB_NO_SOCKET_LB" => assert_eq!(entry.value, "false"),
                _ => {}
            }
        }
    }

    /// Every variable the ConfigMap lists (as if all were uncommented)
    /// parses, and sets its flag. `--manifests` excludes the API server
    /// flags, so it is tried apart.
    #[test]
    fn the_config_map_can_set_every_flag() {
        let listed: BTreeMap<String, String> =
            config_map_variables().into_iter().filter(|(k, _)| !NOT_FLAGS.contains(&k.as_str())).collect();
        let without = |skip: &[&str]| -> BTreeMap<String, String> {
            listed.iter().filter(|(k, _)| !skip.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let mut from_env = BTreeSet::new();
        for vars in [without(&["LB_MANIFESTS"]), without(&["LB_KUBECONFIG", "LB_K8S_API_SERVER"])] {
            let (_, matches) = parse_run(&[], &vars).unwrap_or_else(|e| panic!("the ConfigMap's variables do not parse:\n{e}"));
            for arg in run_flags() {
                if matches.value_source(arg.get_id().as_str()) == Some(ValueSource::EnvVariable) {
                    from_env.insert(arg.get_long().unwrap().to_string());
                }
            }
        }
        for arg in run_flags() {
            let long = arg.get_long().unwrap();
            assert!(long == "node-name" || from_env.contains(long), "--{long} cannot be set from the ConfigMap");
        }
    }

    #[test]
    fn boolean_variables_take_true_and_false() {
        let var = |v: &str| BTreeMap::from([("LB_NO_SOCKET_LB".to_string(), v.to_string())]);
        let values = [("true", true), ("false", false), ("1", true), ("0", false), ("yes", true), ("off", false)];
        for (value, expected) in values {
            let (args, _) = parse_run(&[], &var(value)).unwrap_or_else(|e| panic!("LB_NO_SOCKET_LB={value}: {e}"));
            assert_eq!(args.no_socket_lb, expected, "LB_NO_SOCKET_LB={value}");
        }
        assert!(parse_run(&[], &var("maybe")).is_err());
        assert!(parse_run(&["--no-socket-lb"], &BTreeMap::new()).unwrap().0.no_socket_lb);
        assert!(!parse_run(&[], &BTreeMap::new()).unwrap().0.no_socket_lb);
    }

    #[test]
    fn the_api_server_address_is_checked() {
        let var = |v: &str| BTreeMap::from([("LB_K8S_API_SERVER".to_string(), v.to_string())]);
        let (args, _) = parse_run(&[], &var("10.0.0.1:6443")).unwrap();
        assert_eq!(args.k8s_api_server.as_deref(), Some("https://10.0.0.1:6443"));
        assert!(parse_run(&[], &var("https://")).is_err());
        let with_manifests = parse_run(&["--manifests", "/tmp"], &var("https://10.0.0.1:6443"));
        assert!(with_manifests.is_err(), "no API server with --manifests");
    }
}
