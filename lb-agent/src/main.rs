//! `lb-agent`: the lb node agent and its CLI.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use lb_agent::{
    DEFAULT_BPFFS_DIR, datapath, list,
    maps::Maps,
    model::BackendSelection,
    northsouth::{self, NorthSouthConfig, PortRange},
    run::{self, SourceConfig},
    source::kube::KubeOptions,
    translate::TranslateOptions,
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "lb-agent", version, about = "eBPF Kubernetes Service load balancer: node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the datapath, attach it, and keep its maps in sync with the
    /// Services and EndpointSlices of the Kubernetes API (in-cluster, or
    /// `--kubeconfig`/`KUBECONFIG`), or of a manifest directory
    /// (`--manifests`).
    Run(RunArgs),
    /// Show the frontends and backends held in the pinned maps.
    List {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR, env = "LB_BPFFS")]
        bpffs: PathBuf,
    },
    /// Take lb off the node: detach every program and remove every pinned
    /// link and map (all datapath state). Refused while an agent runs.
    #[command(alias = "cleanup")]
    Uninstall {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR, env = "LB_BPFFS")]
        bpffs: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Directory of Service and EndpointSlice YAML, watched for changes,
    /// instead of the Kubernetes API.
    #[arg(long, env = "LB_MANIFESTS", conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// kubeconfig file for the API server (default: in-cluster config,
    /// then KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Address of the health server (/healthz, /readyz, /metrics); "off"
    /// disables it.
    #[arg(long, env = "LB_HEALTH_ADDR", default_value = "0.0.0.0:10256", value_parser = parse_health_addr)]
    health_addr: HealthAddr,
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
    /// cgroup2 directory for the socket hooks (default: the cgroup2 mount).
    #[arg(long, env = "LB_CGROUP")]
    cgroup: Option<PathBuf>,
    /// Do not attach the socket hooks (host clients then do not reach
    /// ClusterIPs).
    #[arg(long)]
    no_socket_lb: bool,
    /// How often to look for new interfaces (and changed manifests), in ms.
    #[arg(long, default_value_t = 1000)]
    poll_interval_ms: u64,
    /// Capacity of the TCP conntrack map (LRU; two entries per flow).
    #[arg(long, default_value_t = lb_common::sizes::CT_TCP)]
    ct_tcp_size: u32,
    /// Capacity of the conntrack map of every other protocol (LRU; two
    /// entries per flow).
    #[arg(long, default_value_t = lb_common::sizes::CT_ANY)]
    ct_any_size: u32,
    /// Capacity of the frontend map (and rev-NAT map).
    #[arg(long, default_value_t = lb_common::sizes::SERVICES)]
    services_size: u32,
    /// Capacity of the backend map.
    #[arg(long, default_value_t = lb_common::sizes::BACKENDS)]
    backends_size: u32,
    /// Capacity of the backend slot map.
    #[arg(long, default_value_t = lb_common::sizes::SLOTS)]
    slots_size: u32,
    /// Maglev table size M (a prime; 16381 by default, as Cilium; 65537
    /// for Services with more than ~160 backends).
    #[arg(long, default_value_t = lb_common::sizes::MAGLEV_M, value_parser = parse_maglev_m)]
    maglev_table_size: u32,
    /// Capacity of the session affinity map (LRU).
    #[arg(long, default_value_t = lb_common::sizes::AFFINITY)]
    affinity_size: u32,
    /// Conntrack timeout of a TCP flow that only sent its SYN, seconds.
    #[arg(long, default_value_t = lb_common::CtTimeouts::DEFAULT.tcp_syn)]
    ct_tcp_syn_timeout: u32,
    /// Conntrack timeout of an established TCP flow, seconds.
    #[arg(long, default_value_t = lb_common::CtTimeouts::DEFAULT.tcp_established)]
    ct_tcp_established_timeout: u32,
    /// Conntrack timeout of a TCP flow after FIN or RST, seconds.
    #[arg(long, default_value_t = lb_common::CtTimeouts::DEFAULT.tcp_closing)]
    ct_tcp_closing_timeout: u32,
    /// Conntrack timeout of a UDP flow, seconds.
    #[arg(long, default_value_t = lb_common::CtTimeouts::DEFAULT.udp)]
    ct_udp_timeout: u32,
    /// How often expired conntrack entries are collected, seconds.
    #[arg(long, default_value_t = 30)]
    ct_gc_interval: u64,
    /// External interfaces for the north-south XDP program (NodePorts,
    /// external and LoadBalancer IPs), comma separated (default: those of
    /// the default routes).
    #[arg(long, value_delimiter = ',')]
    external_ifaces: Vec<String>,
    /// Node addresses NodePorts are served on, comma separated (default:
    /// the IPv4 addresses of the external interfaces).
    #[arg(long, value_delimiter = ',')]
    node_ips: Vec<std::net::Ipv4Addr>,
    /// Address that north-south flows to backends on other nodes are
    /// SNATed to (default: the first node address).
    #[arg(long)]
    snat_ip: Option<std::net::Ipv4Addr>,
    /// NodePort range, as the API server's --service-node-port-range.
    #[arg(long, default_value_t = northsouth::DEFAULT_NODEPORT_RANGE)]
    nodeport_range: PortRange,
    /// Source ports for SNAT (keep them out of the node's ephemeral range).
    #[arg(long, default_value_t = northsouth::DEFAULT_SNAT_PORTS)]
    snat_ports: PortRange,
    /// XDP attach mode on the external interfaces: auto (native where the
    /// driver supports it, else generic), native, generic, or off.
    #[arg(long, default_value = "auto")]
    xdp_mode: String,
}

fn parse_maglev_m(s: &str) -> Result<u32, String> {
    let m: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if !lb_agent::maglev::is_prime(m) || m < 7 {
        return Err(format!("{m} is not a prime >= 7 (try 16381 or 65537)"));
    }
    Ok(m)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let poll = Duration::from_millis(args.poll_interval_ms.max(10));
            let node_name = args.node_name.clone();
            let source = match args.manifests {
                Some(path) => SourceConfig::Dir { path, poll },
                None => SourceConfig::Kube(KubeOptions {
                    kubeconfig: args.kubeconfig,
                    node_name: args.node_name,
                    backoff_max: Duration::from_millis(args.api_backoff_max_ms.max(100)),
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
                },
                poll,
                sync_delay: Duration::from_millis(args.sync_delay_ms),
                health_addr: args.health_addr.0,
                translate: TranslateOptions { default_selection: args.backend_selection },
                maglev_m: args.maglev_table_size,
                ct_timeouts: lb_common::CtTimeouts {
                    tcp_syn: args.ct_tcp_syn_timeout,
                    tcp_established: args.ct_tcp_established_timeout,
                    tcp_closing: args.ct_tcp_closing_timeout,
                    udp: args.ct_udp_timeout,
                },
                ct_gc_interval: Duration::from_secs(args.ct_gc_interval.max(1)),
                north_south: NorthSouthConfig {
                    node_name: node_name.clone(),
                    external_ifaces: args.external_ifaces,
                    node_ips: args.node_ips,
                    snat_ip: args.snat_ip,
                    nodeport_range: args.nodeport_range,
                    snat_ports: args.snat_ports,
                    xdp: args.xdp_mode != "off",
                    xdp_mode: if args.xdp_mode == "off" {
                        Default::default()
                    } else {
                        args.xdp_mode.parse().map_err(anyhow::Error::msg).context("--xdp-mode")?
                    },
                },
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(run::run(cfg, shutdown_signal()))
        }
        Command::List { bpffs } => {
            let maps = Maps::open(&bpffs)?;
            print!("{}", list::render(&maps).context("reading the maps")?);
            Ok(())
        }
        Command::Uninstall { bpffs } => datapath::cleanup(&bpffs),
    }
}

#[derive(Clone, Debug)]
struct HealthAddr(Option<SocketAddr>);

fn parse_health_addr(s: &str) -> Result<HealthAddr, String> {
    match s {
        "off" | "" => Ok(HealthAddr(None)),
        s => s
            .parse()
            .map(|a| HealthAddr(Some(a)))
            .map_err(|e| format!("{s:?}: {e} (expected ip:port or \"off\")")),
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
