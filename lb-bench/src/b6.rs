//! B6: churn. What keeping up with a busy cluster costs: the agent's CPU
//! seconds and its sync times while Services come and go, next to the rule
//! syncs kube-proxy's iptables and nftables modes make for the same
//! changes.
//!
//! The churn is [`lb_lab::churn::Churn`]: every 200 ms it adds and removes
//! filler Services (up to [`MAX_FILLERS`]), scales one Service between 0
//! and 4 endpoints, renames its port, flips Maglev and toggles session
//! affinity. It runs on top of `base_services` static Services (10
//! endpoints each) that never change, so the rulesets have a realistic
//! size. The steps are generated once ([`Plan`]) and every datapath, each
//! in a fresh lab node, gets the same ones:
//!
//! - **lb**: a real `lb-agent run` on a manifest directory (one file per
//!   Service); each step writes and deletes files. Its CPU comes from
//!   `/proc/<pid>/stat`, its sync times from its own log.
//! - **kube-proxy iptables** (`iptables-restore`, nf_tables backend, and
//!   `iptables-legacy-restore`) and **kube-proxy nftables** (`nft -f`):
//!   the full ruleset is loaded first, then each step is one partial sync,
//!   timed (wall) with its CPU from `getrusage(RUSAGE_CHILDREN)`.

use std::{
    collections::{BTreeSet, VecDeque},
    fs,
    io::{BufRead, BufReader},
    net::Ipv4Addr,
    path::Path,
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use lb_agent::model::Protocol;
use lb_lab::{
    NodeLab,
    churn::{self, Churn, ChurnSvc, MAX_FILLERS},
};

use crate::agent_cmd::{AgentCommand, Source};
use crate::{
    b2::Pcts,
    dp::Kind,
    services::{self, Delta, Svc},
    sys,
};

#[derive(Clone, Debug)]
pub struct B6Options {
    /// How long the churn runs: one step per [`STEP`].
    pub seconds: f64,
    /// Static Services (10 endpoints each) present all along.
    pub base_services: usize,
    /// Budget of a baseline's full load, and of its whole churn: past it
    /// the load (or the churn, after the syncs that ran) is stopped.
    pub baseline_budget: Duration,
    /// Before each datapath, wait at most this long for the machine to be
    /// quiet ([`sys::wait_quiet`]).
    pub quiet_max: Duration,
}

/// One churn step every 200 ms.
pub const STEP: Duration = Duration::from_millis(200);
/// The churn's seed: every run applies the same steps.
pub const SEED: u64 = 42;
/// Endpoints of each base Service.
pub const BASE_ENDPOINTS: usize = 10;
/// Pods of the lab node (the churn's endpoints are theirs).
const PODS: [&str; 4] = ["pod0", "pod1", "pod2", "pod3"];
/// How long the agent may take for its first sync.
const FIRST_SYNC_BUDGET: Duration = Duration::from_secs(600);
/// After the last step, the agent's last sync is the one no other follows
/// for this long (or longer: see [`caught_up`]).
pub const SETTLE: Duration = Duration::from_secs(1);
/// How long after the last step the agent may take to sync its state.
pub const CATCH_UP_BUDGET: Duration = Duration::from_secs(60);

/// One step of the churn, in the form each datapath applies it.
#[derive(Clone, Debug)]
pub struct Step {
    /// Manifest files written (file name, YAML): added and updated Services.
    pub write: Vec<(String, String)>,
    /// Manifest files deleted: removed Services.
    pub delete: Vec<String>,
    /// The churn's Services after the step as kube-proxy renders them
    /// (service ports with endpoints; see [`kube_proxy_view`]).
    pub svcs: Vec<Svc>,
    /// kube-proxy names of the Services the step touched (added or
    /// updated): their chains are rewritten even where nothing rendered
    /// differs.
    pub touched: BTreeSet<String>,
    /// The churn's Services after the step (with or without endpoints).
    pub services: usize,
}

/// The whole churn, generated up front.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The static Services.
    pub base: Vec<Svc>,
    /// The churn's Services before the first step, as kube-proxy renders them.
    pub initial: Vec<Svc>,
    /// Manifests of the churn's Services before the first step.
    initial_files: Vec<(String, String)>,
    /// The churn's Services before the first step (with or without endpoints).
    initial_services: usize,
    pub steps: Vec<Step>,
}

/// A churn Service as kube-proxy renders it: one service port named
/// `churn/<name>:<port name>` (so a renamed port is another service port:
/// the old one's chains go, new ones come), TCP, its endpoints on the
/// target port. A Service without endpoints has no rules here (`None`):
/// kube-proxy would write a REJECT rule for it instead, which this
/// benchmark leaves out.
pub fn kube_proxy_view(c: &ChurnSvc) -> Option<Svc> {
    if c.endpoints.is_empty() {
        return None;
    }
    Some(Svc {
        name: format!("churn/{}:{}", c.name, c.port_name),
        ip: c.ip,
        port: c.port,
        proto: Protocol::Tcp,
        endpoints: c.endpoints.iter().map(|&ip| (ip, c.target_port)).collect(),
        node_port: None,
    })
}

fn file_name(service: &str) -> String {
    format!("{service}.yaml")
}

impl Plan {
    /// `base_services` static Services and `steps` churn steps. The scaled
    /// Service's address is the first ClusterIP after the base Services'
    /// (the fillers are in 10.97.0.0/16); its endpoints are the lab's four
    /// pods, the fillers' its first two.
    pub fn new(base_services: usize, steps: usize) -> Result<Plan> {
        // 10.96.0.10 + n must stay below the fillers' 10.97.0.0/16.
        ensure!(base_services + 1 < 65_000, "B6 takes at most 65,000 base Services ({base_services} asked)");
        let base = services::generate(base_services, BASE_ENDPOINTS);
        let pods: Vec<Ipv4Addr> = (0..PODS.len()).map(lb_lab::pod_ip).collect();
        let mut churn = Churn::new(services::cluster_ip(base_services), pods.clone(), pods[..2].to_vec(), SEED);
        let view = |c: &Churn| -> Vec<Svc> { c.services.values().filter_map(kube_proxy_view).collect() };
        let initial = view(&churn);
        let initial_files = churn.services.values().map(|s| (file_name(&s.name), churn::manifest(s))).collect();
        let initial_services = churn.services.len();
        let steps = (0..steps)
            .map(|_| {
                let change = churn.step();
                let write = change
                    .added
                    .iter()
                    .chain(&change.updated)
                    .filter_map(|n| churn.services.get(n))
                    .map(|s| (file_name(&s.name), churn::manifest(s)))
                    .collect();
                let touched = change
                    .added
                    .iter()
                    .chain(&change.updated)
                    .filter_map(|n| churn.services.get(n))
                    .filter_map(kube_proxy_view)
                    .map(|s| s.name)
                    .collect();
                Step {
                    write,
                    delete: change.removed.iter().map(|n| file_name(n)).collect(),
                    svcs: view(&churn),
                    touched,
                    services: churn.services.len(),
                }
            })
            .collect();
        Ok(Plan { base, initial, initial_files, initial_services, steps })
    }

    /// Every Service before the first step (base and churn), for the full
    /// load.
    pub fn full_set(&self) -> Vec<Svc> {
        self.base.iter().chain(&self.initial).cloned().collect()
    }

    /// Every manifest file before the first step: one per base Service
    /// (`svc-<i>.yaml`, namespace `bench`) and one per churn Service.
    pub fn initial_manifests(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.base
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("svc-{i}.yaml"), crate::b3::manifests_from(std::slice::from_ref(s), i)))
            .chain(self.initial_files.iter().cloned())
    }

    /// Services (base and churn, with or without endpoints) after step
    /// `i`: what the agent's last sync should report.
    pub fn services_after(&self, i: usize) -> usize {
        self.base.len() + self.steps.get(i).map_or(self.initial_services, |s| s.services)
    }

    /// The churn's rendered Services before step `i`.
    fn before(&self, i: usize) -> &[Svc] {
        if i == 0 { &self.initial } else { &self.steps[i - 1].svcs }
    }

    /// Every rendered Service after step `i`, base first.
    fn all_after(&self, i: usize) -> Vec<&Svc> {
        self.base.iter().chain(&self.steps[i].svcs).collect()
    }

    /// What step `i` changes for kube-proxy.
    pub fn delta(&self, i: usize) -> Delta<'_> {
        let step = &self.steps[i];
        Delta::between(self.before(i), &step.svcs, &|n| step.touched.contains(n))
    }

    /// Step `i` as kube-proxy's iptables partial sync
    /// (`iptables-restore --noflush` input).
    pub fn iptables(&self, i: usize) -> String {
        services::iptables_sync(&self.all_after(i), &self.delta(i))
    }

    /// Step `i` as kube-proxy's nftables partial sync (`nft -f` input).
    pub fn nft(&self, i: usize) -> String {
        services::nft_sync(&self.all_after(i), &self.delta(i))
    }

    /// Step `i` as `kind`'s partial sync.
    pub fn rules(&self, kind: Kind, i: usize) -> String {
        match kind {
            Kind::Nftables => self.nft(i),
            _ => self.iptables(i),
        }
    }

    /// The full ruleset before the first step, as `kind` loads it.
    pub fn full_rules(&self, kind: Kind) -> String {
        match kind {
            Kind::Nftables => services::nft_full(&self.full_set()),
            _ => services::iptables_restore(&self.full_set(), false),
        }
    }
}

/// The command that loads `kind`'s rules (text on stdin) in `ns`.
pub fn load_command(kind: Kind, ns: &lb_lab::Netns) -> Command {
    match kind {
        Kind::Nftables => {
            let mut cmd = ns.command("nft");
            cmd.args(["-f", "-"]);
            cmd
        }
        _ => {
            let mut cmd = ns.command(kind.restore_command());
            cmd.arg("--noflush");
            cmd
        }
    }
}

/// Checks that `kind`'s rules in `ns` hold `services` service ports: one
/// `KUBE-SERVICES` rule each (plus the NodePorts rule), or one
/// `service-ips` element each.
pub fn check_rules(kind: Kind, ns: &lb_lab::Netns, services: usize) -> Result<()> {
    let (mut cmd, expected) = match kind {
        Kind::Nftables => {
            let mut cmd = ns.command("nft");
            cmd.args(["list", "map", "ip", "kube-proxy", "service-ips"]);
            (cmd, services)
        }
        _ => {
            let program = if kind == Kind::IptablesLegacy { "iptables-legacy" } else { "iptables" };
            let mut cmd = ns.command(program);
            cmd.args(["-t", "nat", "-S", "KUBE-SERVICES"]);
            (cmd, services + 1)
        }
    };
    let out = cmd.output().context("listing the rules")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let found = match kind {
        Kind::Nftables => text.matches("goto ").count(),
        _ => text.lines().filter(|l| l.starts_with("-A")).count(),
    };
    ensure!(found == expected, "{kind}: the rules hold {found} service entries, expected {expected}");
    Ok(())
}

/// One datapath's figures over the churn.
#[derive(Clone, Debug)]
pub struct B6Row {
    pub kind: Kind,
    /// Churn steps applied (all of them unless the run was stopped).
    pub steps: usize,
    /// lb: syncs the agent logged over the churn; baselines: partial
    /// syncs run (one per step).
    pub syncs: usize,
    /// lb: syncs that logged map errors; baselines: commands that failed
    /// (or were stopped).
    pub failed: usize,
    /// CPU time (user + system) over the churn: the agent process, or the
    /// sum over the sync commands.
    pub cpu: Duration,
    /// Sync time, µs: lb's `apply_us` (translate + apply), a baseline
    /// command's wall time.
    pub sync: Pcts,
    /// lb only: `latency_us` (changed directory read to maps written), µs.
    pub latency: Option<Pcts>,
    /// From the first step to the end of the measurement (lb: its sync of
    /// the last step's state; baselines: the last sync's exit).
    pub wall: Duration,
    /// What else there is to say (sizes, idle CPU).
    pub notes: Vec<String>,
    /// What went wrong without stopping the run: a check that failed, a
    /// churn stopped at its budget.
    pub problems: Vec<String>,
    /// A baseline's churn stopped at its budget after this many steps
    /// (also in `problems`): its per-step figures cover those steps.
    pub stopped_at: Option<usize>,
    /// The first failure's message.
    pub error: Option<String>,
    /// Why the row holds no figures.
    pub not_run: Option<String>,
}

impl B6Row {
    fn not_run(kind: Kind, why: String) -> B6Row {
        B6Row {
            kind,
            steps: 0,
            syncs: 0,
            failed: 0,
            cpu: Duration::ZERO,
            sync: Pcts::default(),
            latency: None,
            wall: Duration::ZERO,
            notes: Vec::new(),
            problems: Vec::new(),
            stopped_at: None,
            error: None,
            not_run: Some(why),
        }
    }

    /// CPU time per churn step.
    pub fn cpu_per_step(&self) -> Duration {
        self.cpu / self.steps.max(1) as u32
    }
}

#[derive(Clone, Debug)]
pub struct B6Result {
    pub base_services: usize,
    pub steps: usize,
    /// Most churn Services at once, and Services added and removed over
    /// the churn.
    pub churn_max: usize,
    pub churn_added: usize,
    pub churn_removed: usize,
    pub rows: Vec<B6Row>,
}

/// Writes `dir/name` through a hidden temporary file and a rename, so the
/// agent never reads half a file.
fn write_atomic(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming {}", tmp.display()))
}

/// Sleeps until `at` (returns at once when it has passed).
fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// A `key=value` field of a log line, as a number.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')).and_then(|v| v.parse().ok())
}

/// A line of the agent's log, with when it arrived and, for a
/// "synced manifests" line, the agent's CPU time then.
struct LogLine {
    at: Instant,
    cpu: Option<Duration>,
    text: String,
}

impl LogLine {
    fn is_sync(&self) -> bool {
        self.text.contains("synced manifests")
    }
}

/// The agent's stderr, line by line, from a thread.
fn log_lines(stderr: std::process::ChildStderr, pid: u32) -> mpsc::Receiver<LogLine> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for text in BufReader::new(stderr).lines() {
            let Ok(text) = text else { break };
            let at = Instant::now();
            let cpu = if text.contains("synced manifests") { sys::process_cpu(pid).ok() } else { None };
            if tx.send(LogLine { at, cpu, text }).is_err() {
                break;
            }
        }
    });
    rx
}

/// One "synced manifests" line of the churn.
struct Synced {
    at: Instant,
    cpu: Option<Duration>,
    apply: Duration,
    latency: Duration,
    errors: u64,
    services: Option<u64>,
}

impl Synced {
    fn of(line: &LogLine) -> Synced {
        let us = |key| Duration::from_micros(field(&line.text, key).unwrap_or(0));
        Synced {
            at: line.at,
            cpu: line.cpu,
            apply: us("apply_us"),
            latency: us("latency_us"),
            errors: field(&line.text, "errors").unwrap_or(0),
            services: field(&line.text, "services"),
        }
    }
}

/// Whether the agent is done with the churn: its last sync came after the
/// last step was written, holds the last step's Service count, and no
/// sync followed for [`SETTLE`] or twice the longest gap between its
/// syncs so far (a directory read that began before the last write may
/// still be under way; at 10,000 files one takes about a second).
fn caught_up(syncs: &[Synced], start: Instant, last_write: Instant, expected: u64) -> bool {
    let Some(last) = syncs.last() else {
        return false;
    };
    let mut gap = Duration::ZERO;
    let mut prev = start;
    for s in syncs {
        gap = gap.max(s.at.saturating_duration_since(prev));
        prev = s.at;
    }
    last.at > last_write && last.services == Some(expected) && last.at.elapsed() >= SETTLE.max(gap * 2)
}

/// lb: `lb-agent run` on the plan's manifests in a fresh lab node, the
/// churn applied to the directory. The agent's CPU time over the churn
/// (from the first step to its sync of the last step's state, see
/// [`caught_up`]) and every "synced manifests" line it logs meanwhile are
/// the figures; its idle CPU over a second before the churn is noted (the
/// directory and interface polling every 100 ms).
fn run_agent(plan: &Plan, bin: &Path) -> Result<B6Row> {
    let lab = NodeLab::new(&PODS).context("lab")?;
    let dir = std::env::temp_dir().join(format!("lb-bench-{}-b6-manifests", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _dir_guard = crate::b3::DirGuard(dir.clone());
    for (name, text) in plan.initial_manifests() {
        write_atomic(&dir, &name, &text)?;
    }
    let pins = sys::Pins::new("b6-agent");
    let sizes = crate::b3::map_sizes(plan.base.len() + MAX_FILLERS + 1, BASE_ENDPOINTS);
    let mut cmd = AgentCommand::new("B6", Source::Manifests(&dir), pins.path(), "lbp*")
        .poll_interval_ms(100)
        .health_addr("off")
        .map_sizes(&sizes)
        .command(&lab.node, bin);
    let mut child = lab.node.spawn(&mut cmd)?;
    let pid = child.id();
    let rx = log_lines(child.stderr.take().expect("piped"), pid);
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut keep = |line: String| {
        if tail.len() == 5 {
            tail.pop_front();
        }
        tail.push_back(line);
    };

    let result = (|| -> Result<B6Row> {
        let deadline = Instant::now() + FIRST_SYNC_BUDGET;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.is_sync() => break,
                Ok(line) => keep(line.text),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("no first sync within {FIRST_SYNC_BUDGET:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the agent exited before its first sync")
                }
            }
        }
        let idle0 = sys::process_cpu(pid)?;
        std::thread::sleep(Duration::from_secs(1));
        let idle = sys::process_cpu(pid)?.saturating_sub(idle0);

        let cpu0 = sys::process_cpu(pid)?;
        let start = Instant::now();
        for (i, step) in plan.steps.iter().enumerate() {
            sleep_until(start + STEP * i as u32);
            for (name, text) in &step.write {
                write_atomic(&dir, name, text)?;
            }
            for name in &step.delete {
                match fs::remove_file(dir.join(name)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| format!("removing {name}"));
                    }
                    _ => {}
                }
            }
        }
        let last_write = Instant::now();
        let expected = plan.services_after(plan.steps.len() - 1) as u64;
        let mut syncs = Vec::new();
        let mut problems = Vec::new();
        while !caught_up(&syncs, start, last_write, expected) {
            if last_write.elapsed() > CATCH_UP_BUDGET {
                problems
                    .push(format!("no sync of the last step's state ({expected} Services) within {} s of it", CATCH_UP_BUDGET.as_secs()));
                break;
            }
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if line.is_sync() && line.at >= start => syncs.push(Synced::of(&line)),
                Ok(line) if line.is_sync() => {}
                Ok(line) => keep(line.text),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the agent exited during the churn"),
            }
        }
        // Up to the last sync (the agent then has nothing left to do);
        // without one, up to now.
        let end = syncs.last().filter(|_| problems.is_empty());
        let cpu_end = match end.and_then(|s| s.cpu) {
            Some(c) => c,
            None => sys::process_cpu(pid)?,
        };
        let cpu = cpu_end.saturating_sub(cpu0);
        let wall = end.map_or_else(|| start.elapsed(), |s| s.at - start);
        let failed = syncs.iter().filter(|s| s.errors > 0).count();
        let apply: Vec<Duration> = syncs.iter().map(|s| s.apply).collect();
        let latency: Vec<Duration> = syncs.iter().map(|s| s.latency).collect();
        let apply_total: Duration = apply.iter().sum();
        let notes = vec![
            format!(
                "idle before the churn: {:.0} ms CPU per s (polling interfaces every 100 ms, and the directory: the files inotify named, and all of them every 30 s)",
                idle.as_secs_f64() * 1e3
            ),
            format!(
                "the syncs' own time (apply_us) adds up to {:.2} s; the rest is reading and parsing the changed files, translating, and polling",
                apply_total.as_secs_f64()
            ),
        ];
        if syncs.is_empty() {
            problems.push("no sync logged during the churn".into());
        }
        Ok(B6Row {
            kind: Kind::Ours,
            steps: plan.steps.len(),
            syncs: syncs.len(),
            failed,
            cpu,
            sync: Pcts::of(apply),
            latency: Some(Pcts::of(latency)),
            wall,
            notes,
            problems,
            stopped_at: None,
            error: None,
            not_run: None,
        })
    })();

    sys::stop_agent(&mut child)?;
    drop(child);
    // The maps are unpinned (lb_agent::datapath::cleanup) once it is gone.
    drop(pins);
    drop(lab);
    result.map_err(|e| {
        let tail: Vec<String> = tail.into_iter().collect();
        e.context(format!("agent log: {}", tail.join(" | ")))
    })
}

/// A kube-proxy baseline: the full ruleset (base and the churn's initial
/// Services) loaded in a fresh lab node, then one partial sync per step,
/// on the same 200 ms schedule (back to back when a sync outlasts a step).
/// Each sync command is timed (wall, spawn to exit) and its CPU time taken
/// from `getrusage(RUSAGE_CHILDREN)` around it. A failing sync is counted
/// and the churn goes on; the first error is kept.
fn run_baseline(kind: Kind, plan: &Plan, o: &B6Options) -> Result<B6Row> {
    let lab = NodeLab::new(&PODS).context("lab")?;
    let full = plan.full_rules(kind);
    let lines = full.lines().count();
    let load = match sys::run_stdin(&mut load_command(kind, &lab.node), &full, Some(o.baseline_budget)) {
        Ok(Some(d)) => d,
        Ok(None) => {
            return Ok(B6Row::not_run(
                kind,
                format!("not run: the full ruleset ({lines} lines) did not load within {} s", o.baseline_budget.as_secs()),
            ));
        }
        Err(e) => {
            return Ok(B6Row::not_run(kind, format!("not run: loading the full ruleset ({lines} lines) failed: {e:#}")));
        }
    };
    drop(full);
    let (mut times, mut cpu, mut failed, mut error) = (Vec::new(), Duration::ZERO, 0, None);
    let mut sync_lines = 0;
    let mut stopped = None;
    let start = Instant::now();
    for i in 0..plan.steps.len() {
        let rules = plan.rules(kind, i);
        sleep_until(start + STEP * i as u32);
        let left = o.baseline_budget.saturating_sub(start.elapsed());
        if left.is_zero() {
            stopped = Some(i);
            break;
        }
        let cpu0 = sys::children_cpu();
        let r = sys::run_stdin(&mut load_command(kind, &lab.node), &rules, Some(left));
        let used = sys::children_cpu().saturating_sub(cpu0);
        match r {
            Ok(Some(d)) => {
                times.push(d);
                cpu += used;
                sync_lines += rules.lines().count();
            }
            // Stopped at the budget: the step did not happen.
            Ok(None) => {
                stopped = Some(i);
                break;
            }
            Err(e) => {
                failed += 1;
                cpu += used;
                sync_lines += rules.lines().count();
                error.get_or_insert_with(|| format!("step {i}: {e:#}"));
            }
        }
    }
    let wall = start.elapsed();
    let steps = stopped.unwrap_or(plan.steps.len());
    let mut notes = vec![
        format!("full load: {lines} lines in {:.2} s", load.as_secs_f64()),
        format!("{:.0} lines per partial sync on average", sync_lines as f64 / steps.max(1) as f64),
    ];
    // The schedule: the last step at (steps - 1) x STEP, then its sync.
    if stopped.is_none() && wall > STEP * steps as u32 + STEP {
        notes.push(format!(
            "the churn took {:.1} s instead of {:.1} s: syncs outlasted the steps and ran back to back",
            wall.as_secs_f64(),
            (STEP * steps as u32).as_secs_f64()
        ));
    }
    let mut problems = Vec::new();
    if let Some(i) = stopped {
        problems.push(format!(
            "stopped after {i} of {} steps: the churn's budget of {} s was spent",
            plan.steps.len(),
            o.baseline_budget.as_secs()
        ));
    } else if failed == 0 {
        // Every sync landed: the rules hold exactly the Services now.
        let services = plan.base.len() + plan.steps.last().map_or(0, |s| s.svcs.len());
        if let Err(e) = check_rules(kind, &lab.node, services) {
            problems.push(format!("check failed: {e:#}"));
        }
    }
    Ok(B6Row {
        kind,
        steps,
        syncs: times.len() + failed,
        failed,
        cpu,
        sync: Pcts::of(times),
        latency: None,
        wall,
        notes,
        problems,
        stopped_at: stopped,
        error,
        not_run: None,
    })
}

/// Runs B6 for every datapath. `skip`: baselines known not to load at
/// (service count) or above (from B3), with the reason; they are reported,
/// not run.
pub fn run(o: &B6Options, agent_bin: Option<&Path>, skip: &[(Kind, usize, String)]) -> Result<B6Result> {
    let steps = (o.seconds / STEP.as_secs_f64()).round().max(1.0) as usize;
    let plan = Plan::new(o.base_services, steps)?;
    let (mut churn_max, mut churn_added, mut churn_removed) = (0, 0, 0);
    for s in &plan.steps {
        churn_max = churn_max.max(s.services);
        churn_removed += s.delete.len();
    }
    // Added: written files that did not exist before; count them by name.
    {
        let mut live: BTreeSet<&str> = plan.initial_files.iter().map(|(n, _)| n.as_str()).collect();
        for s in &plan.steps {
            for n in &s.delete {
                live.remove(n.as_str());
            }
            for (n, _) in &s.write {
                if live.insert(n.as_str()) {
                    churn_added += 1;
                }
            }
        }
    }
    let total = plan.base.len() + churn_max;
    let mut rows = Vec::new();
    for kind in Kind::ALL {
        let waited = sys::wait_quiet(o.quiet_max);
        if waited > Duration::from_secs(2) {
            eprintln!("lb-bench: B6 waited {waited:.1?} for the machine to be quiet before {kind}");
        }
        let row = match kind {
            Kind::Ours => match agent_bin {
                None => B6Row::not_run(kind, "not run: no agent binary (`--agent`)".into()),
                Some(bin) => run_agent(&plan, bin).unwrap_or_else(|e| B6Row::not_run(kind, format!("failed: {e:#}"))),
            },
            _ => match skip.iter().find(|(k, at, _)| *k == kind && total >= *at) {
                Some((_, _, why)) => B6Row::not_run(kind, format!("not run: {why}")),
                None => run_baseline(kind, &plan, o).with_context(|| format!("{kind}"))?,
            },
        };
        match &row.not_run {
            Some(why) => eprintln!("lb-bench: B6 {kind}: {why}"),
            None => eprintln!(
                "lb-bench: B6 {kind:<34} {} steps, {} syncs ({} failed), CPU {:.3} s, sync p50 {:.0} us p99 {:.0} us{}",
                row.steps,
                row.syncs,
                row.failed,
                row.cpu.as_secs_f64(),
                row.sync.p50,
                row.sync.p99,
                row.error.as_deref().map(|e| format!("; first error: {e}")).unwrap_or_default()
            ),
        }
        rows.push(row);
    }
    Ok(B6Result { base_services: o.base_services, steps, churn_max, churn_added, churn_removed, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_deterministic_and_consistent() {
        let a = Plan::new(10, 60).unwrap();
        let b = Plan::new(10, 60).unwrap();
        assert_eq!(a.steps.len(), 60);
        for i in 0..60 {
            assert_eq!(a.iptables(i), b.iptables(i));
            assert_eq!(a.nft(i), b.nft(i));
            // The scaled Service is touched every step.
            assert!(a.steps[i].touched.len() <= 21);
            assert!(a.steps[i].write.iter().any(|(n, _)| n == "scaled.yaml"));
        }
        // Nothing of the base is ever rewritten or deleted.
        for i in 0..60 {
            let d = a.delta(i);
            assert!(d.changed.iter().chain(&d.removed).all(|s| s.name.starts_with("churn/")));
        }
        // Renames, scale-to-zero and removals all happen.
        let renamed = (1..60).any(|i| {
            a.delta(i).removed.iter().any(|s| s.name.starts_with("churn/scaled:"))
                && a.steps[i].svcs.iter().any(|s| s.name.starts_with("churn/scaled:"))
        });
        let zero = a.steps.iter().any(|s| !s.svcs.iter().any(|s| s.name.starts_with("churn/scaled:")));
        assert!(renamed && zero);
        assert!(a.initial_manifests().count() == 10 + a.initial_files.len());
    }

    #[test]
    fn log_fields() {
        let line = "2026-01-01T00:00:00Z  INFO lb_agent::run: synced manifests services=12 frontends=12 errors=0 latency_us=101234 apply_us=345 translate_us=12";
        assert_eq!(field(line, "apply_us"), Some(345));
        assert_eq!(field(line, "latency_us"), Some(101_234));
        assert_eq!(field(line, "services"), Some(12));
        assert_eq!(field(line, "us"), None);
    }
}
