//! `lb-bench`: runs the benchmarks of issue #6 and writes the report.
//! Normally started by `cargo xtask bench [--quick]` (needs root).

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use lb_bench::{Options, report, run_all};

#[derive(Parser)]
#[command(
    name = "lb-bench",
    about = "lb benchmarks: per-packet cost, connection latency, programming time, throughput, churn, new pod interfaces"
)]
struct Cli {
    /// A short run (a few minutes); without it, the full sizes.
    #[arg(long)]
    quick: bool,
    /// Where benchmarks.md and the PNG plots go.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    /// The lb-agent binary, for B3's memory measurement of a real agent
    /// and B6's churn (without it, B6's lb row is not run).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Only these benchmarks (comma separated: b1,b2,b3,b4,b5,b6,b7).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only the agent's peak RSS with full API objects (managedFields,
    /// typical annotations) from the in-process API server, at
    /// --b3-services x --b3-endpoints (default 10,000 x 10); needs --agent.
    #[arg(long)]
    api_rss: bool,
    /// B1: service counts.
    #[arg(long, value_delimiter = ',')]
    b1_services: Option<Vec<usize>>,
    /// B1: above this many backends in total, fill the maps directly
    /// instead of through Reconciler::apply.
    #[arg(long)]
    b1_reconcile_limit: Option<usize>,
    /// B1: run the datapath with BPF host routing (`--host-routing bpf`):
    /// the pod-to-pod row then pays its conntrack lookup, and a translated
    /// packet its next hop (kept, or the FIB's: the backends are routed to
    /// another node, no pod interface, so nothing is redirected).
    #[arg(long)]
    b1_host_routing: bool,
    /// B1: measure this build of the eBPF object instead of the embedded
    /// one (removal experiments: build a variant with `cargo xtask
    /// build-ebpf`, copy target/ebpf/bpfel-unknown-none/release/lb, run;
    /// the conntrack entry counts are not checked)
    #[arg(long)]
    b1_object: Option<std::path::PathBuf>,
    /// B1: repeat count of one test run.
    #[arg(long)]
    b1_repeat: Option<u32>,
    /// B1: new flows per round (repeat = 1 runs).
    #[arg(long)]
    b1_new_flows: Option<usize>,
    /// B2: service counts.
    #[arg(long, value_delimiter = ',')]
    b2_services: Option<Vec<usize>>,
    /// B2: sequential connections per point.
    #[arg(long)]
    b2_connections: Option<usize>,
    /// B2: only these datapaths (comma separated), in this order.
    #[arg(long, value_delimiter = ',', value_enum)]
    b2_datapaths: Option<Vec<lb_bench::dp::Kind>>,
    /// B3: services of the full sync.
    #[arg(long)]
    b3_services: Option<usize>,
    /// B3: endpoints per service.
    #[arg(long)]
    b3_endpoints: Option<usize>,
    /// B2/B3/B6: seconds an iptables-restore / nft load may take before it
    /// is stopped (and the point reported as not measured); in B6 also the
    /// budget of a baseline's whole churn.
    #[arg(long)]
    baseline_budget_s: Option<u64>,
    /// B3: the agent's full sync at full size is skipped (estimated from a
    /// tenth of the size) when the estimate exceeds this many seconds.
    #[arg(long)]
    agent_full_sync_budget_s: Option<u64>,
    /// B4: seconds per throughput run.
    #[arg(long)]
    b4_seconds: Option<f64>,
    /// B4: the longest wait, in seconds, for a quiet machine before each
    /// datapath's lab (on a shared, busy machine: a smaller wait, figures
    /// taken under load).
    #[arg(long)]
    b4_quiet_max_s: Option<u64>,
    /// B2: the longest wait, in seconds, for a quiet machine before each
    /// datapath (as --b4-quiet-max-s).
    #[arg(long)]
    b2_quiet_max_s: Option<u64>,
    /// B6: seconds of churn (one step every 200 ms).
    #[arg(long)]
    b6_seconds: Option<f64>,
    /// B6: static Services (10 endpoints each) under the churn.
    #[arg(long)]
    b6_base_services: Option<usize>,
    /// B7: new pod interfaces timed.
    #[arg(long)]
    b7_pods: Option<usize>,
    /// Print the kube-proxy iptables ruleset (iptables-restore input) for
    /// this many services x 10 endpoints, and exit.
    #[arg(long)]
    dump_iptables: Option<usize>,
    /// Print the kube-proxy nftables ruleset (nft -f input) for this many
    /// services x 10 endpoints, and exit.
    #[arg(long)]
    dump_nft: Option<usize>,
    /// The command line to put in the report.
    #[arg(long)]
    command: Option<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(n) = cli.dump_iptables {
        print!("{}", lb_bench::services::iptables_restore(&lb_bench::services::generate(n, 10), true));
        return Ok(());
    }
    if let Some(n) = cli.dump_nft {
        print!("{}", lb_bench::services::nft_full(&lb_bench::services::generate(n, 10)));
        return Ok(());
    }
    let mut o = if cli.quick { Options::quick() } else { Options::full() };
    if let Some(b1) = &mut o.b1 {
        if let Some(v) = cli.b1_services {
            b1.services = v;
        }
        if let Some(v) = cli.b1_reconcile_limit {
            b1.reconcile_limit = v;
        }
        b1.host_routing = cli.b1_host_routing;
        b1.object = cli.b1_object;
        if let Some(v) = cli.b1_repeat {
            b1.repeat = v;
        }
        if let Some(v) = cli.b1_new_flows {
            b1.new_flows = v;
        }
    }
    if let Some(b2) = &mut o.b2 {
        if let Some(v) = cli.b2_services {
            b2.services = v;
        }
        if let Some(v) = cli.b2_connections {
            b2.connections = v;
        }
        if let Some(v) = cli.b2_datapaths {
            b2.datapaths = v;
        }
    }
    if let Some(b3) = &mut o.b3 {
        if let Some(v) = cli.b3_services {
            b3.services = v;
        }
        if let Some(v) = cli.b3_endpoints {
            b3.endpoints = v;
        }
    }
    if let Some(v) = cli.baseline_budget_s {
        let d = std::time::Duration::from_secs(v);
        if let Some(b2) = &mut o.b2 {
            b2.install_budget = d;
        }
        if let Some(b3) = &mut o.b3 {
            b3.baseline_budget = d;
        }
        if let Some(b6) = &mut o.b6 {
            b6.baseline_budget = d;
        }
    }
    if let (Some(v), Some(b3)) = (cli.agent_full_sync_budget_s, &mut o.b3) {
        b3.full_sync_budget = std::time::Duration::from_secs(v);
    }
    if let Some(b4) = &mut o.b4
        && let Some(v) = cli.b4_seconds
    {
        b4.seconds = v;
    }
    if let Some(b2) = &mut o.b2
        && let Some(v) = cli.b2_quiet_max_s
    {
        b2.quiet_max = std::time::Duration::from_secs(v);
    }
    if let Some(b4) = &mut o.b4
        && let Some(v) = cli.b4_quiet_max_s
    {
        b4.quiet_max = std::time::Duration::from_secs(v);
    }
    if let Some(b6) = &mut o.b6 {
        if let Some(v) = cli.b6_seconds {
            b6.seconds = v;
        }
        if let Some(v) = cli.b6_base_services {
            b6.base_services = v;
        }
    }
    if let (Some(b7), Some(v)) = (&mut o.b7, cli.b7_pods) {
        b7.pods = v;
    }
    if !cli.only.is_empty() {
        let on = |b: &str| cli.only.iter().any(|x| x.eq_ignore_ascii_case(b));
        if !on("b1") {
            o.b1 = None;
        }
        if !on("b2") {
            o.b2 = None;
        }
        if !on("b3") {
            o.b3 = None;
        }
        if !on("b4") {
            o.b4 = None;
        }
        if !on("b6") {
            o.b6 = None;
        }
        if !on("b7") {
            o.b7 = None;
        }
        o.b5 = on("b5");
    }
    o.agent_bin = cli.agent;
    if let Some(c) = cli.command {
        o.command = c;
    }
    if cli.api_rss {
        let bin = o.agent_bin.clone().ok_or_else(|| anyhow::anyhow!("--api-rss needs --agent"))?;
        let (n, e) = (cli.b3_services.unwrap_or(10_000), cli.b3_endpoints.unwrap_or(10));
        let r = lb_bench::api_rss::run(&bin, n, e)?;
        println!(
            "agent peak RSS (VmHWM) with full API objects: {} Services x {} endpoints ({:.1} MiB of JSON at the API server): {:.1} MiB, first sync after {:.2} s",
            r.services,
            r.endpoints,
            r.json_bytes as f64 / (1024.0 * 1024.0),
            r.vm_hwm_kib as f64 / 1024.0,
            r.wall.as_secs_f64()
        );
        return Ok(());
    }
    let r = run_all(&o, &cli.out)?;
    report::print(&r);
    eprintln!("lb-bench: wrote {}", cli.out.join("benchmarks.md").display());
    Ok(())
}
