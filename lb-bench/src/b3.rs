//! B3: programming time. A full sync of `services` x `endpoints`, then
//! "+1 service" and "+1 endpoint" at that size, for the agent
//! (`Reconciler::apply` into the maps, the changes told what changed, as
//! the agent's sync tells it), kube-proxy's iptables mode
//! (`iptables-restore`) and kube-proxy's nftables mode (`nft -f`), each in
//! a network namespace of its own. Also the agent's peak RSS, from a real
//! `lb-agent run` on a generated manifest directory.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use lb_agent::{
    datapath::{Datapath, MapSizes},
    maps::Maps,
    model::differing,
    reconcile::Reconciler,
};
use lb_lab::Netns;

use crate::agent_cmd::{AgentCommand, Source};
use crate::{
    services::{self, Svc},
    sys::{self, Took},
};

#[derive(Clone, Debug)]
pub struct B3Options {
    pub services: usize,
    pub endpoints: usize,
    /// The agent's full sync is first timed at a tenth of the size; when
    /// that, scaled quadratically, says the full size would take longer
    /// than this, the full-size sync is not run (the maps are filled
    /// directly instead, for the incremental measurements).
    pub full_sync_budget: Duration,
    /// Start the measured `lb-agent run` on maps already holding the set
    /// (as after a restart: quick) rather than on empty maps (full).
    pub agent_prefilled: bool,
    /// Budget of each iptables-restore / nft command; a command still
    /// running then is stopped and reported as such.
    pub baseline_budget: Duration,
    /// Also time a full iptables restore at N+1 (kube-proxy's periodic
    /// resync).
    pub iptables_resync: bool,
}

/// Full sync, +1 service, +1 endpoint.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub full: Duration,
    pub add_service: Duration,
    pub add_endpoint: Duration,
}

#[derive(Clone, Debug)]
pub struct AgentRun {
    /// Started on maps already holding the set (a restart), rather than
    /// on empty maps.
    pub prefilled: bool,
    /// The agent's own `apply_us` for its first sync (translate and
    /// apply; reading the manifests comes before).
    pub sync: Duration,
    /// From start to the first "synced manifests" line.
    pub wall: Duration,
    pub vm_hwm_kib: u64,
    /// The agent's `apply_us` for the sync after one more Service (with
    /// its endpoints) was added to the directory: everything the agent does
    /// for the change (translation of the store, the reconciler's apply),
    /// not reading the directory again. The median of
    /// [`Self::add_service_samples`].
    pub add_service: Option<Duration>,
    /// The same for each of [`AGENT_ADDITIONS`] Services added one at a
    /// time (each sync waited for), in order: one sync of a few ms on a
    /// shared VM is at the mercy of whatever else runs.
    pub add_service_samples: Vec<Duration>,
}

/// How many Services `lb-agent run` gets added, one at a time, for its
/// "+1 service" figure (their median).
pub const AGENT_ADDITIONS: usize = 5;

#[derive(Clone, Debug)]
pub struct B3Result {
    pub services: usize,
    pub endpoints: usize,
    /// `ours.full` is an estimate when this is false (see `probe`).
    pub ours_full_measured: bool,
    /// The probe sync: (services, time).
    pub probe: (usize, Duration),
    pub ours: Timings,
    /// VmHWM growth of this process over the in-process full sync.
    pub ours_hwm_growth_kib: u64,
    pub agent: Option<Result<AgentRun, String>>,
    /// Partial syncs (`--noflush` with KUBE-SERVICES and the changed
    /// chains), as kube-proxy does by default.
    pub iptables: BaseTimings,
    /// "+1 service" as a full restore (kube-proxy's periodic full sync).
    pub iptables_full_resync: Took,
    pub iptables_lines: usize,
    /// The same rules through `iptables-legacy-restore`.
    pub iptables_legacy: BaseTimings,
    pub nft: BaseTimings,
    pub nft_lines: usize,
}

/// A baseline's full sync, +1 service, +1 endpoint; each command runs
/// under the time budget.
#[derive(Clone, Copy, Debug)]
pub struct BaseTimings {
    pub full: Took,
    pub add_service: Took,
    pub add_endpoint: Took,
}

impl Default for BaseTimings {
    fn default() -> Self {
        BaseTimings { full: Took::NotRun, add_service: Took::NotRun, add_endpoint: Took::NotRun }
    }
}

/// Runs `cmd` on `input` under `budget`.
fn budgeted(mut cmd: std::process::Command, input: &str, budget: Duration) -> Result<Took> {
    Ok(match sys::run_stdin(&mut cmd, input, Some(budget))? {
        Some(d) => Took::Ran(d),
        None => Took::Over(budget),
    })
}

/// Map sizes for `services` x `endpoints` distinct backends, with room
/// for a spare slot generation.
pub(crate) fn map_sizes(services: usize, endpoints: usize) -> MapSizes {
    let fe = services as u32 + 1024;
    let be = (services * (endpoints + 1)) as u32 + 1024;
    MapSizes {
        services: fe.next_power_of_two(),
        backends: be.next_power_of_two(),
        slots: (be * 2).next_power_of_two(),
        ct_tcp: 65_536,
        ..MapSizes::default()
    }
}

/// The set after the full sync, and the two changes.
fn scenarios(o: &B3Options) -> (Vec<Svc>, Vec<Svc>, Vec<Svc>, usize) {
    let base = services::generate(o.services, o.endpoints);
    let mut plus_svc = base.clone();
    plus_svc.extend(services::generate_range(o.services..o.services + 1, o.endpoints));
    let mut plus_ep = plus_svc.clone();
    let changed = plus_ep.len() / 2;
    let ep = services::fake_endpoint(o.services + 1, 0, o.endpoints);
    plus_ep[changed].endpoints.push((ep, services::TARGET_PORT));
    (base, plus_svc, plus_ep, changed)
}

/// The agent's programming time: a probe at a tenth of the size, the full
/// sync (or a direct fill when the probe says it would not fit the
/// budget), then +1 service and +1 endpoint. Returns the pins (filled with
/// the base set) for the agent run.
#[allow(clippy::type_complexity)]
fn time_ours(o: &B3Options, base: &[Svc], plus_svc: &[Svc], plus_ep: &[Svc]) -> Result<(Timings, u64, bool, (usize, Duration))> {
    let probe_n = (o.services / 10).max(1);
    let probe = {
        let pins = sys::Pins::new("b3-probe");
        let _dp = Datapath::load(pins.path(), &map_sizes(probe_n, o.endpoints))?;
        let mut maps = Maps::open(pins.path())?;
        maps.write_config(&crate::ready_config())?;
        let mut rec = Reconciler::recover(maps)?;
        let d = services::to_desired(&base[..probe_n]);
        let start = Instant::now();
        let s = rec.apply(&d);
        let took = start.elapsed();
        ensure!(s.errors.is_empty(), "probe sync: {:?}", &s.errors[..s.errors.len().min(3)]);
        took
    };
    let scale = o.services as f64 / probe_n as f64;
    let estimate = probe.mul_f64(scale * scale);
    let measure = estimate <= o.full_sync_budget;
    eprintln!(
        "lb-bench: B3 agent probe: {probe_n} services in {probe:?}; quadratic estimate at {}: {estimate:?} ({})",
        o.services,
        if measure { "running it" } else { "over the budget: filling directly" }
    );

    let pins = sys::Pins::new("b3");
    let _dp = Datapath::load(pins.path(), &map_sizes(o.services, o.endpoints))?;
    let mut maps = Maps::open(pins.path())?;
    maps.write_config(&crate::ready_config())?;
    let rec = Reconciler::recover(maps)?;
    let (d0, d1, d2) = (services::to_desired(base), services::to_desired(plus_svc), services::to_desired(plus_ep));
    let me = std::process::id().to_string();
    let hwm_before = sys::status_kib(&me, "VmHWM").unwrap_or(0);
    let mut t = Timings::default();
    let (mut rec, took) = crate::b1::fill(pins.path(), rec, &d0, measure)?;
    t.full = took.unwrap_or(estimate);
    let hwm_after = sys::status_kib(&me, "VmHWM").unwrap_or(0);
    // Told where the desired state changed, as the agent's sync tells it.
    let no_ipv6 = BTreeSet::new();
    let changed = differing(&d0, &d1);
    let start = Instant::now();
    let s = rec.apply_changed(&[&d1], &[], Some((&changed, &no_ipv6)));
    t.add_service = start.elapsed();
    ensure!(s.errors.is_empty() && s.added == 1, "+1 service: {s:?}");
    let changed = differing(&d1, &d2);
    let start = Instant::now();
    let s = rec.apply_changed(&[&d2], &[], Some((&changed, &no_ipv6)));
    t.add_endpoint = start.elapsed();
    ensure!(s.errors.is_empty() && s.updated == 1, "+1 endpoint: {s:?}");
    Ok((t, hwm_after.saturating_sub(hwm_before), measure, (probe_n, probe)))
}

fn time_iptables(
    kind: crate::dp::Kind,
    o: &B3Options,
    base: &[Svc],
    plus_svc: &[Svc],
    plus_ep: &[Svc],
    changed: usize,
) -> Result<(BaseTimings, Took, usize)> {
    let ns = Netns::new("b3-ipt")?;
    let legacy = kind == crate::dp::Kind::IptablesLegacy;
    let nfacct = !legacy && nfacct_available(&ns);
    let full = services::iptables_restore(base, nfacct);
    let restore = |rules: &str| -> Result<Took> {
        let mut cmd = ns.command(kind.restore_command());
        cmd.arg("--noflush");
        budgeted(cmd, rules, o.baseline_budget)
    };
    let mut t = BaseTimings { full: restore(&full)?, ..BaseTimings::default() };
    let mut resync = Took::NotRun;
    if t.full.ran().is_some() {
        let new = plus_svc.last().expect("non-empty");
        t.add_service = restore(&services::iptables_partial(plus_svc, &[new]))?;
        t.add_endpoint = restore(&services::iptables_partial(plus_ep, &[&plus_ep[changed]]))?;
        if t.add_service.ran().is_some() && t.add_endpoint.ran().is_some() {
            check_iptables(&ns, if legacy { "iptables-legacy" } else { "iptables" }, plus_ep.len())?;
        }
        // kube-proxy's full resync at N+1 (it runs one periodically, and
        // after any partial sync failure).
        if o.iptables_resync && !legacy {
            resync = restore(&services::iptables_restore(plus_ep, nfacct))?;
        }
    }
    // The namespace goes, and its rules with it.
    Ok((t, resync, full.lines().count()))
}

fn nfacct_available(ns: &Netns) -> bool {
    let mut cmd = ns.command("iptables");
    cmd.args(["-t", "filter", "-N", "LB-BENCH-PROBE"]);
    let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    let mut cmd = ns.command("iptables");
    cmd.args(["-A", "LB-BENCH-PROBE", "-m", "nfacct", "--nfacct-name", "lb_bench_probe", "-j", "RETURN"]);
    let ok = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    for args in [&["-F", "LB-BENCH-PROBE"][..], &["-X", "LB-BENCH-PROBE"][..]] {
        let mut cmd = ns.command("iptables");
        let _ = cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
    ok
}

/// The nat table holds one KUBE-SERVICES rule per service (plus the
/// NodePorts rule): the restores really landed.
fn check_iptables(ns: &Netns, program: &str, services: usize) -> Result<()> {
    let mut cmd = ns.command(program);
    cmd.args(["-t", "nat", "-S", "KUBE-SERVICES"]);
    let out = cmd.output().context("iptables -S")?;
    let rules = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("-A")).count();
    ensure!(rules == services + 1, "KUBE-SERVICES holds {rules} rules, expected {}", services + 1);
    Ok(())
}

fn time_nft(o: &B3Options, base: &[Svc], plus_svc: &[Svc], plus_ep: &[Svc], changed: usize) -> Result<(BaseTimings, usize)> {
    let ns = Netns::new("b3-nft")?;
    let nft = |rules: &str| -> Result<Took> {
        let mut cmd = ns.command("nft");
        cmd.args(["-f", "-"]);
        budgeted(cmd, rules, o.baseline_budget)
    };
    let full = services::nft_full(base);
    let mut t = BaseTimings { full: nft(&full)?, ..BaseTimings::default() };
    if t.full.ran().is_some() {
        let new = plus_svc.last().expect("non-empty");
        t.add_service = nft(&services::nft_partial(&[new]))?;
        t.add_endpoint = nft(&services::nft_partial(&[&plus_ep[changed]]))?;
        if t.add_service.ran().is_some() && t.add_endpoint.ran().is_some() {
            // Check the map holds every service.
            let mut cmd = ns.command("nft");
            cmd.args(["list", "map", "ip", "kube-proxy", "service-ips"]);
            let out = cmd.output().context("nft list map")?;
            let elems = String::from_utf8_lossy(&out.stdout).matches("goto ").count();
            ensure!(elems == plus_ep.len(), "service-ips holds {elems} elements, expected {}", plus_ep.len());
        }
    }
    Ok((t, full.lines().count()))
}

/// Services and EndpointSlices as YAML, for a real agent.
pub fn manifests(svcs: &[Svc]) -> String {
    manifests_from(svcs, 0)
}

/// As [`manifests`], the first Service named `svc-<first>`.
pub(crate) fn manifests_from(svcs: &[Svc], first: usize) -> String {
    let mut out = String::with_capacity(svcs.len() * 700);
    for (i, s) in svcs.iter().enumerate() {
        let name = format!("svc-{}", first + i);
        let eps: String = s.endpoints.iter().map(|(ip, _)| format!("- addresses: [{ip}]\n  conditions: {{ready: true}}\n")).collect();
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench}}\nspec:\n  clusterIP: {}\n  ports: [{{name: http, port: {}, protocol: TCP, targetPort: {}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: bench, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {}, protocol: TCP}}]\nendpoints:\n{eps}",
            s.ip,
            s.port,
            services::TARGET_PORT,
            services::TARGET_PORT
        );
    }
    out
}

/// Runs `lb-agent run` on a manifest directory of `svcs` in a namespace of
/// its own (no pod interfaces there, no socket hooks) until its first sync
/// is logged; reads its VmHWM then.
fn agent_run(bin: &Path, svcs: &[Svc], extras: &[Svc], o: &B3Options, prefill: bool) -> Result<AgentRun> {
    let dir = std::env::temp_dir().join(format!("lb-bench-{}-manifests", std::process::id()));
    fs::create_dir_all(&dir)?;
    let _cleanup = DirGuard(dir.clone());
    fs::write(dir.join("services.yaml"), manifests(svcs))?;
    let pins = sys::Pins::new("b3-agent");
    let sizes = map_sizes(o.services, o.endpoints);
    if prefill {
        // The agent then starts as after a restart: it recovers the state
        // from the pinned maps and its first sync finds nothing to write.
        let dp = Datapath::load(pins.path(), &sizes)?;
        let mut maps = Maps::open(pins.path())?;
        crate::b1::write_directly(&mut maps, &services::to_desired(svcs), None)?;
        drop(dp);
    }
    let ns = Netns::new("b3-agent")?;
    let mut cmd = AgentCommand::new("B3", Source::Manifests(&dir), pins.path(), "lbbench-none*")
        .poll_interval_ms(50)
        .map_sizes(&sizes)
        .command(&ns, bin);
    let start = Instant::now();
    let child = ns.spawn(&mut cmd)?;
    let mut child = child.into_inner();
    let pid = child.id().to_string();
    let stderr = child.stderr.take().expect("piped");
    let mut result = Err(anyhow::anyhow!("the agent exited before its first sync"));
    let mut log = Vec::new();
    let apply_us = |line: &str| -> Duration {
        let us: u64 = line.split_whitespace().find_map(|w| w.strip_prefix("apply_us=")).and_then(|v| v.parse().ok()).unwrap_or(0);
        Duration::from_micros(us)
    };
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if line.contains("synced manifests") {
            let wall = start.elapsed();
            let vm_hwm_kib = sys::status_kib(&pid, "VmHWM").unwrap_or(0);
            result = Ok(AgentRun {
                prefilled: prefill,
                sync: apply_us(&line),
                wall,
                vm_hwm_kib,
                add_service: None,
                add_service_samples: Vec::new(),
            });
            break;
        }
        log.push(line);
    }
    // One more Service at a time, each in a file of its own; the agent
    // notices it at its next poll of the directory. (A failed write is
    // reported after the agent is stopped.)
    let mut extra_written = Ok(());
    if let Ok(run) = &mut result {
        'extras: for (i, extra) in extras.iter().enumerate() {
            extra_written = fs::write(dir.join(format!("zz-extra-{i}.yaml")), manifests_from(std::slice::from_ref(extra), svcs.len() + i));
            if extra_written.is_err() {
                break;
            }
            let want = format!("services={}", svcs.len() + i + 1);
            // The next sync is this addition's; any other ends the series.
            loop {
                let Some(Ok(line)) = lines.next() else { break 'extras };
                if line.contains("synced manifests") {
                    if !line.contains(&want) {
                        break 'extras;
                    }
                    run.add_service_samples.push(apply_us(&line));
                    break;
                }
            }
        }
        run.add_service = median(&run.add_service_samples);
    }
    sys::stop_agent(&mut child)?;
    extra_written.context("writing the extra Service")?;
    result.map_err(|e| e.context(log.iter().rev().take(5).cloned().collect::<Vec<_>>().join(" | ")))
}

/// The middle one of `samples` (the upper middle of an even count).
fn median(samples: &[Duration]) -> Option<Duration> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

/// A directory removed (with what it holds) on drop.
pub(crate) struct DirGuard(pub(crate) std::path::PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn run(o: &B3Options, agent_bin: Option<&Path>) -> Result<B3Result> {
    if o.services < 2 {
        bail!("B3 needs at least 2 services");
    }
    let (base, plus_svc, plus_ep, changed) = scenarios(o);
    let (ours, hwm, measured, probe) = time_ours(o, &base, &plus_svc, &plus_ep).context("agent")?;
    eprintln!("lb-bench: B3 agent: full {:?}, +1 svc {:?}, +1 ep {:?}", ours.full, ours.add_service, ours.add_endpoint);
    let agent = agent_bin.map(|bin| {
        let extras = services::generate_range(o.services..o.services + AGENT_ADDITIONS, o.endpoints);
        agent_run(bin, &base, &extras, o, o.agent_prefilled || !measured).map_err(|e| format!("{e:#}"))
    });
    if let Some(a) = &agent {
        eprintln!("lb-bench: B3 lb-agent run: {a:?}");
    }
    let (iptables, iptables_full_resync, iptables_lines) =
        time_iptables(crate::dp::Kind::Iptables, o, &base, &plus_svc, &plus_ep, changed).context("iptables")?;
    eprintln!("lb-bench: B3 iptables: {iptables:?}, full resync {iptables_full_resync:?}");
    let (iptables_legacy, _, _) =
        time_iptables(crate::dp::Kind::IptablesLegacy, o, &base, &plus_svc, &plus_ep, changed).context("iptables-legacy")?;
    eprintln!("lb-bench: B3 iptables-legacy: {iptables_legacy:?}");
    let (nft, nft_lines) = time_nft(o, &base, &plus_svc, &plus_ep, changed).context("nftables")?;
    eprintln!("lb-bench: B3 nftables: {nft:?}");
    Ok(B3Result {
        services: o.services,
        endpoints: o.endpoints,
        ours_full_measured: measured,
        probe,
        ours,
        ours_hwm_growth_kib: hwm,
        agent,
        iptables,
        iptables_full_resync,
        iptables_lines,
        iptables_legacy,
        nft,
        nft_lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_addition_figure_is_the_median_of_its_samples() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(8), ms(31), ms(7), ms(9), ms(8)]), Some(ms(8)), "one slow sync does not move it");
        assert_eq!(median(&[ms(3), ms(5)]), Some(ms(5)));
        assert_eq!(median(&[]), None);
    }
}
