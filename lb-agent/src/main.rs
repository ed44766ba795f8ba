//! `lb-agent`: the lb node agent and its CLI.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use lb_agent::{DEFAULT_BPFFS_DIR, datapath, list, maps::Maps, run};
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
    /// Services and EndpointSlices of a manifest directory.
    Run(RunArgs),
    /// Show the frontends and backends held in the pinned maps.
    List {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR, env = "LB_BPFFS")]
        bpffs: PathBuf,
    },
    /// Remove the pinned maps (all datapath state) of a stopped agent.
    Cleanup {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR, env = "LB_BPFFS")]
        bpffs: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Directory of Service and EndpointSlice YAML, watched for changes.
    #[arg(long, env = "LB_MANIFESTS")]
    manifests: PathBuf,
    /// bpffs directory where the maps are pinned.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR, env = "LB_BPFFS")]
    bpffs: PathBuf,
    /// Pod interface name patterns (`*` wildcards), comma separated. The tc
    /// program is attached to every matching interface, including ones
    /// that appear later.
    #[arg(long, value_delimiter = ',', default_value = "lxc*,veth*,cali*,eni*,gke*")]
    pod_ifaces: Vec<String>,
    /// cgroup2 directory for the socket hooks (default: the cgroup2 mount).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Do not attach the socket hooks (host clients then do not reach
    /// ClusterIPs).
    #[arg(long)]
    no_socket_lb: bool,
    /// How often to look for changed manifests and new interfaces, in ms.
    #[arg(long, default_value_t = 1000)]
    poll_interval_ms: u64,
    /// Capacity of the conntrack map (LRU).
    #[arg(long, default_value_t = lb_common::sizes::CT)]
    ct_size: u32,
    /// Capacity of the frontend map (and rev-NAT map).
    #[arg(long, default_value_t = lb_common::sizes::SERVICES)]
    services_size: u32,
    /// Capacity of the backend map.
    #[arg(long, default_value_t = lb_common::sizes::BACKENDS)]
    backends_size: u32,
    /// Capacity of the backend slot map.
    #[arg(long, default_value_t = lb_common::sizes::SLOTS)]
    slots_size: u32,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let cfg = run::RunConfig {
                manifests: args.manifests,
                bpffs: args.bpffs,
                pod_ifaces: args.pod_ifaces,
                cgroup: args.cgroup,
                socket_lb: !args.no_socket_lb,
                sizes: datapath::MapSizes {
                    services: args.services_size,
                    backends: args.backends_size,
                    slots: args.slots_size,
                    ct: args.ct_size,
                },
                poll: Duration::from_millis(args.poll_interval_ms.max(10)),
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
        Command::Cleanup { bpffs } => datapath::cleanup(&bpffs),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
