//! lb benchmarks (issue #6). `lb-bench` (the binary, run by
//! `cargo xtask bench`) runs them all and writes `docs/benchmarks.md` with
//! plots; the smoke test runs the same code at a tiny size into a
//! temporary directory.
//!
//! - B1 ([`b1`]): per-packet cost through BPF_PROG_TEST_RUN;
//! - B2 ([`b2`]): new-connection latency against the service count, ours
//!   against kube-proxy's iptables and nftables rules;
//! - B3 ([`b3`]): programming time and agent memory;
//! - B4 ([`b4`]): throughput through the node;
//! - B5: Maglev table build (`lb_agent::maglev::build`);
//! - B6 ([`b6`]): agent CPU and sync times under Service churn, next to
//!   kube-proxy's rule syncs for the same churn.

pub mod agent_cmd;
pub mod api_rss;
pub mod b1;
pub mod b2;
pub mod b3;
pub mod b4;
pub mod b6;
pub mod b7;
pub mod dp;
pub mod plot;
pub mod report;
pub mod services;
pub mod sys;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The datapath configuration that marks it ready.
pub fn ready_config() -> lb_common::Config {
    lb_common::Config::ready(0)
}

/// What to run, at which sizes.
#[derive(Clone, Debug)]
pub struct Options {
    pub b1: Option<b1::B1Options>,
    pub b2: Option<b2::B2Options>,
    pub b3: Option<b3::B3Options>,
    pub b4: Option<b4::B4Options>,
    /// B5: Maglev table build.
    pub b5: bool,
    pub b6: Option<b6::B6Options>,
    /// B7: new pod interfaces to tcx attached (needs `agent_bin`).
    pub b7: Option<b7::B7Options>,
    /// The `lb-agent` binary (B3's memory measurement, B6's lb row);
    /// `None` skips those.
    pub agent_bin: Option<PathBuf>,
    /// The command line, for the report.
    pub command: String,
}

impl Options {
    /// `--quick`: a few minutes.
    pub fn quick() -> Options {
        Options {
            b1: Some(b1::B1Options {
                services: vec![1, 1_000, 10_000, 100_000],
                endpoints: 10,
                repeat: 1_000_000,
                rounds: 5,
                new_flows: 20_000,
                cpu: sys::online_cpus().saturating_sub(1),
                reconcile_limit: 2_000_000,
                host_routing: false,
                object: None,
            }),
            b2: Some(b2::B2Options {
                services: vec![1_000, 10_000],
                endpoints: 10,
                connections: 2_000,
                install_budget: std::time::Duration::from_secs(200),
                quiet_max: std::time::Duration::from_secs(300),
                datapaths: dp::Kind::B2.to_vec(),
            }),
            b3: Some(b3::B3Options {
                services: 10_000,
                endpoints: 10,
                full_sync_budget: std::time::Duration::from_secs(300),
                agent_prefilled: false,
                baseline_budget: std::time::Duration::from_secs(200),
                iptables_resync: false,
            }),
            b4: Some(b4::B4Options { seconds: 3.0, quiet_max: std::time::Duration::from_secs(300) }),
            b5: true,
            b6: Some(b6::B6Options {
                seconds: 20.0,
                base_services: 1_000,
                baseline_budget: std::time::Duration::from_secs(200),
                quiet_max: std::time::Duration::from_secs(300),
            }),
            b7: Some(b7::B7Options { pods: 50 }),
            agent_bin: None,
            command: "cargo xtask bench --quick".into(),
        }
    }

    /// The default (full) run.
    pub fn full() -> Options {
        let mut o = Options::quick();
        if let Some(b1) = &mut o.b1 {
            b1.new_flows = 100_000;
        }
        if let Some(b2) = &mut o.b2 {
            b2.services = vec![1_000, 10_000, 30_000];
            b2.connections = 10_000;
            b2.install_budget = std::time::Duration::from_secs(3 * 3600);
        }
        if let Some(b4) = &mut o.b4 {
            b4.seconds = 10.0;
        }
        if let Some(b3) = &mut o.b3 {
            b3.full_sync_budget = std::time::Duration::from_secs(3600);
            b3.agent_prefilled = false;
            b3.baseline_budget = std::time::Duration::from_secs(3 * 3600);
            b3.iptables_resync = true;
        }
        if let Some(b6) = &mut o.b6 {
            b6.seconds = 60.0;
            b6.base_services = 10_000;
            b6.baseline_budget = std::time::Duration::from_secs(3 * 3600);
        }
        if let Some(b7) = &mut o.b7 {
            b7.pods = 200;
        }
        o.command = "cargo xtask bench".into();
        o
    }

    /// A tiny run for the smoke test.
    pub fn tiny() -> Options {
        Options {
            b1: Some(b1::B1Options {
                services: vec![1, 10],
                endpoints: 10,
                repeat: 1_000,
                rounds: 2,
                new_flows: 100,
                cpu: 0,
                reconcile_limit: 10_000,
                host_routing: false,
                object: None,
            }),
            b2: Some(b2::B2Options {
                services: vec![10],
                endpoints: 3,
                connections: 20,
                install_budget: std::time::Duration::from_secs(60),
                quiet_max: std::time::Duration::from_secs(5),
                datapaths: dp::Kind::B2.to_vec(),
            }),
            b3: Some(b3::B3Options {
                services: 10,
                endpoints: 3,
                full_sync_budget: std::time::Duration::from_secs(60),
                agent_prefilled: false,
                baseline_budget: std::time::Duration::from_secs(60),
                iptables_resync: true,
            }),
            b4: Some(b4::B4Options { seconds: 0.3, quiet_max: std::time::Duration::from_secs(5) }),
            b5: true,
            b6: Some(b6::B6Options {
                seconds: 2.0,
                base_services: 10,
                baseline_budget: std::time::Duration::from_secs(60),
                // No figure of the smoke test is read: do not wait long
                // for a busy machine.
                quiet_max: std::time::Duration::from_secs(5),
            }),
            b7: Some(b7::B7Options { pods: 3 }),
            agent_bin: None,
            command: "smoke test".into(),
        }
    }
}

/// Runs every benchmark that `opts` enables, in order, and writes the
/// report and plots into `out_dir`. Returns the report.
pub fn run_all(opts: &Options, out_dir: &Path) -> Result<report::Report> {
    lb_lab::require_root()?;
    let mut r = report::Report::new(opts);
    if let Some(o) = &opts.b1 {
        eprintln!("lb-bench: B1 per-packet cost ({:?} services)", o.services);
        r.b1 = Some(b1::run(o).context("B1")?);
    }
    if let Some(o) = &opts.b3 {
        eprintln!("lb-bench: B3 programming time ({} services x {} endpoints)", o.services, o.endpoints);
        r.b3 = Some(b3::run(o, opts.agent_bin.as_deref()).context("B3")?);
    }
    if let Some(o) = &opts.b2 {
        eprintln!("lb-bench: B2 connection latency ({:?} services)", o.services);
        let skip = baseline_skips(&r);
        r.b2 = Some(b2::run(o, &skip).context("B2")?);
    }
    if let Some(o) = &opts.b4 {
        eprintln!("lb-bench: B4 throughput ({} s per run)", o.seconds);
        r.b4 = Some(b4::run(o).context("B4")?);
    }
    if let Some(o) = &opts.b6 {
        eprintln!("lb-bench: B6 churn ({} s, {} base services)", o.seconds, o.base_services);
        let skip = baseline_skips(&r);
        r.b6 = Some(b6::run(o, opts.agent_bin.as_deref(), &skip).context("B6")?);
    }
    if let Some(o) = &opts.b7 {
        eprintln!("lb-bench: B7 pod interface to tcx attached ({} interfaces)", o.pods);
        r.b7 = b7::run(o, opts.agent_bin.as_deref()).context("B7")?;
    }
    if opts.b5 {
        r.b5 = b5();
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let plots = plot::write_all(&r, out_dir).context("plots")?;
    let md = report::markdown(&r, &plots);
    std::fs::write(out_dir.join("benchmarks.md"), md).context("writing benchmarks.md")?;
    Ok(r)
}

/// Baselines whose rules did not load within B3's budget at its size:
/// (datapath, services, why). B2 and B6 do not load them again at that
/// size or above.
fn baseline_skips(r: &report::Report) -> Vec<(dp::Kind, usize, String)> {
    let mut skip = Vec::new();
    if let Some(b3) = &r.b3 {
        for (kind, t) in
            [(dp::Kind::Iptables, b3.iptables.full), (dp::Kind::IptablesLegacy, b3.iptables_legacy.full), (dp::Kind::Nftables, b3.nft.full)]
        {
            if let sys::Took::Over(b) = t {
                skip.push((
                    kind,
                    b3.services,
                    format!("its rules did not load within {} s in B3 at {} services", b.as_secs(), b3.services),
                ));
            }
        }
    }
    skip
}

/// B5: `lb_agent::maglev::build` for 100 and 1,000 backends at M = 16381
/// and M = 65537, best of 5 (keys are `ip:port` names, as the agent
/// passes them). Returns the markdown table.
fn b5() -> Option<String> {
    use std::fmt::Write as _;
    let mut t = String::from("| backends | M | build time (best of 5) | table memory | published |\n|---:|---:|---:|---:|---|\n");
    for (n, m) in [(100usize, 16381u32), (1000, 16381), (100, 65537), (1000, 65537)] {
        let keys: Vec<String> = (0..n).map(|i| format!("{}:{}", services::fake_endpoint(0, i, 1), services::TARGET_PORT)).collect();
        let mut best = std::time::Duration::MAX;
        let mut len = 0;
        for _ in 0..5 {
            let start = std::time::Instant::now();
            let table = lb_agent::maglev::build(&keys, m);
            best = best.min(start.elapsed());
            len = table.len();
            std::hint::black_box(&table);
        }
        let anchor = match (n, m) {
            (1000, 16381) => "Cilium (Go, i9-13950HX): 8.17 ms",
            (1000, 65537) => "maglev_ex (Elixir): 19.0 ms",
            _ => "",
        };
        let _ = writeln!(t, "| {n} | {m} | {:.2} ms | {:.0} KiB |  {anchor} |", best.as_secs_f64() * 1e3, (len * 4) as f64 / 1024.0);
    }
    t.push_str("\nMethod: `lb_agent::maglev::build` on one thread, keys `ip:port` of distinct backends, best of 5 builds. ");
    t.push_str("Table memory is the M × 4-byte result; the builder's working state is two u64 per backend.\n");
    eprintln!("lb-bench: B5 Maglev\n{t}");
    Some(t)
}
