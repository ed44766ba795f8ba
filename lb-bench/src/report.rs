//! The report: markdown tables (printed and written to benchmarks.md),
//! with the method, the machine and the goals.

use std::fmt::Write as _;

use crate::{
    Options,
    b1::{B1Row, NsCost, PathCost},
    b2::{B2Row, Position},
    b3::B3Result,
    b4::{self, B4Row},
    b6::{B6Result, B6Row},
    dp::Kind,
    plot::fmt_count,
    sys,
};

pub struct Report {
    pub command: String,
    pub date: String,
    pub machine: Vec<(String, String)>,
    pub options: Options,
    pub b1: Option<Vec<B1Row>>,
    pub b2: Option<Vec<B2Row>>,
    pub b3: Option<B3Result>,
    pub b4: Option<Vec<B4Row>>,
    /// B5's table, once the agent has a Maglev builder.
    pub b5: Option<String>,
    pub b6: Option<B6Result>,
    pub b7: Option<crate::b7::B7Result>,
}

impl Report {
    pub fn new(o: &Options) -> Report {
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Report {
            command: o.command.clone(),
            date,
            machine: sys::machine(),
            options: o.clone(),
            b1: None,
            b2: None,
            b3: None,
            b4: None,
            b5: None,
            b6: None,
            b7: None,
        }
    }
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn ms(d: std::time::Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v >= 1000.0 {
        format!("{:.2} s", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.2} ms")
    }
}

fn took(t: crate::sys::Took) -> String {
    match t {
        crate::sys::Took::Ran(d) => ms(d),
        crate::sys::Took::Over(b) => format!("> {} (stopped)", ms(b)),
        crate::sys::Took::NotRun => "not run".into(),
    }
}

/// A north-south path's figures to local endpoints, when measured.
fn local(c: &Option<NsCost>) -> Option<&PathCost> {
    c.as_ref().map(|c| &c.local)
}

/// A north-south path's figures to another node, when measured.
fn remote(c: &Option<NsCost>) -> Option<&PathCost> {
    c.as_ref().map(|c| &c.remote)
}

/// The B1 table.
pub fn b1_table(rows: &[B1Row]) -> String {
    let mut t = String::new();
    t.push_str("| services | path | programmed in | floor: XDP_PASS (ns) | established flow (ns) | × floor | new flow (ns), raw / repeat=1 overhead off | × floor | new flow p50 (ns, raw) | repeat=1 overhead (ns) | kernel run_time/run_cnt (ns): established / new flow |\n");
    t.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let prog = match r.program_time {
            Some(d) => ms(d),
            None => "filled directly¹".into(),
        };
        let f = r.floor_ns.max(1.0);
        let _ = writeln!(
            t,
            "| {} | ClusterIP (tc `lb_tc_ingress`) | {} | {:.1} | {:.1} | {:.1} | {:.0} / {:.0} | {:.1} | {:.0} | {:.0} | {:.0} / {:.0} |",
            fmt_count(r.services as f64),
            prog,
            r.floor_ns,
            r.established_ns,
            r.established_ns / f,
            r.new_flow_ns,
            r.new_flow_net_ns(),
            r.new_flow_net_ns() / f,
            r.new_flow_p50_ns,
            r.r1_overhead_ns(),
            r.kernel.established,
            r.kernel.new_flow,
        );
        let v6_name = format!("ClusterIP, IPv6 (tc `lb_tc_ingress`; {} IPv6 services)", fmt_count(r.v6_services as f64));
        let paths = [
            (v6_name.as_str(), r.v6.as_ref()),
            ("NodePort (XDP `lb_xdp` → `lb_xdp4`, local delivery)", local(&r.xdp)),
            ("NodePort (XDP `lb_xdp` → `lb_xdp4`, remote backend: DNAT+SNAT, FIB, `XDP_TX`)²", remote(&r.xdp)),
            ("NodePort (tc `lb_tc_ns`, `--xdp-mode tc`, local delivery)", local(&r.tc_ns)),
            ("NodePort (tc `lb_tc_ns`, `--xdp-mode tc`, remote backend: DNAT+SNAT, FIB, `bpf_redirect`)²", remote(&r.tc_ns)),
            ("NodePort, IPv6 (XDP `lb_xdp` → `lb_xdp6`, local delivery)", local(&r.xdp6)),
            ("NodePort, IPv6 (XDP `lb_xdp` → `lb_xdp6` → `lb_xdp6_nat`, remote backend: NAT66, FIB, `XDP_TX`)²", remote(&r.xdp6)),
        ];
        for (name, cost) in paths {
            match cost {
                Some(x) => {
                    let _ = writeln!(
                        t,
                        "| {} | {name} | 〃 | {:.1} | {:.1} | {:.1} | {:.0} / {:.0} | {:.1} | {:.0} | {:.0} | {:.0} / {:.0} |",
                        fmt_count(r.services as f64),
                        r.floor_ns,
                        x.established_ns,
                        x.established_ns / f,
                        x.new_flow_ns,
                        x.new_flow_net_ns(),
                        x.new_flow_net_ns() / f,
                        x.new_flow_p50_ns,
                        x.r1_overhead_ns(),
                        x.kernel.established,
                        x.kernel.new_flow,
                    );
                }
                None => {
                    let _ = writeln!(t, "| {} | {name} | n/a (not in this object) | | | | | | | | |", fmt_count(r.services as f64));
                }
            }
        }
        // Rows of one figure (and the kernel's): the replies, then the
        // packets lb passes untouched.
        let replies = [
            ("reply (tc `lb_tc_egress`: reverse NAT to the frontend), established flow³", Some(&r.reply)),
            ("reply, IPv6 (tc `lb_tc_egress`: reverse NAT to the frontend), established flow³", r.v6_reply.as_ref()),
            (
                "reply of a remote flow (XDP `lb_xdp` → `lb_xdp4`: SNAT and DNAT reversed, FIB, `XDP_TX`)²",
                r.xdp.as_ref().map(|c| &c.remote_reply),
            ),
            (
                "reply of a remote flow, IPv6 (XDP `lb_xdp` → `lb_xdp6` → `lb_xdp6_nat`: NAT66 reversed, FIB, `XDP_TX`)²",
                r.xdp6.as_ref().map(|c| &c.remote_reply),
            ),
            (
                "reply of a remote flow (tc `lb_tc_ns`, `--xdp-mode tc`: SNAT and DNAT reversed, FIB, `bpf_redirect`)²",
                r.tc_ns.as_ref().map(|c| &c.remote_reply),
            ),
        ];
        let mut one_figure: Vec<_> =
            replies.into_iter().filter_map(|(name, reply)| reply.map(|c| (name, c.established_ns, c.kernel))).collect();
        one_figure.push(("no frontend (tc `lb_tc_ingress`, passed): pod to pod", r.tc_pass.ns, r.tc_pass.kernel));
        one_figure.push((
            "no XDP mark (tc `lb_tc_ext_ingress`, BPF host routing only, passed): any other packet on an external interface",
            r.ext_pass.ns,
            r.ext_pass.kernel,
        ));
        if let Some(p) = &r.v6_tc_pass {
            one_figure.push(("no frontend, IPv6 (tc `lb_tc_ingress` → `lb_tc_ingress6`, passed): pod to pod", p.ns, p.kernel));
        }
        if let Some(p) = r.xdp.as_ref().map(|c| &c.pass) {
            one_figure.push(("no frontend (XDP `lb_xdp` → `lb_xdp4`, passed): another address", p.other_addr_ns, p.other_addr_kernel));
            one_figure.push(("no frontend (XDP `lb_xdp` → `lb_xdp4`, passed): node address, port 22", p.node_port_ns, p.node_port_kernel));
        }
        if let Some(p) = r.tc_ns.as_ref().map(|c| &c.pass) {
            one_figure.push((
                "no frontend (tc `lb_tc_ns`, `--xdp-mode tc`, passed): another address",
                p.other_addr_ns,
                p.other_addr_kernel,
            ));
            one_figure.push((
                "no frontend (tc `lb_tc_ns`, `--xdp-mode tc`, passed): node address, port 22",
                p.node_port_ns,
                p.node_port_kernel,
            ));
        }
        if let Some(p) = r.xdp6.as_ref().map(|c| &c.pass) {
            one_figure.push((
                "no frontend, IPv6 (XDP `lb_xdp` → `lb_xdp6`, passed): another address",
                p.other_addr_ns,
                p.other_addr_kernel,
            ));
            one_figure.push((
                "no frontend, IPv6 (XDP `lb_xdp` → `lb_xdp6`, passed): node address, port 22",
                p.node_port_ns,
                p.node_port_kernel,
            ));
        }
        for (name, ns, kernel) in one_figure {
            let _ = writeln!(
                t,
                "| {} | {name} | 〃 | {:.1} | {:.1} | {:.1} | – | – | – | – | {:.0} / – |",
                fmt_count(r.services as f64),
                r.floor_ns,
                ns,
                ns / f,
                kernel,
            );
        }
    }
    t
}

pub fn b2_table(rows: &[B2Row]) -> String {
    let mut t = String::new();
    t.push_str("| datapath | services | target | p50 (µs) | p90 (µs) | p99 (µs) | connect() p50 / p99 (µs) | connections (failed) | install time |\n");
    t.push_str("|---|---:|---|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        if let Some(note) = &r.note {
            let _ = writeln!(t, "| {} | {} | {} | – | – | – | – | – | {note} |", r.kind, fmt_count(r.services as f64), r.position);
            continue;
        }
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} | {} ({}) | {} |",
            r.kind,
            fmt_count(r.services as f64),
            r.position,
            r.request.p50,
            r.request.p90,
            r.request.p99,
            r.connect.p50,
            r.connect.p99,
            r.connections,
            r.failures,
            ms(r.install)
        );
    }
    t
}

pub fn b3_table(b: &B3Result) -> String {
    let mut t = String::new();
    t.push_str("| datapath | full sync | +1 service | +1 endpoint | notes |\n|---|---:|---:|---:|---|\n");
    let full = if b.ours_full_measured { ms(b.ours.full) } else { format!("≈ {} (estimated²)", ms(b.ours.full)) };
    let _ = writeln!(
        t,
        "| lb agent: `Reconciler::apply` into the maps (the changes: `apply_changed`, told what changed) | {} | {} | {} | in-process; {} services took {}; VmHWM grew by {:.1} MiB over the full sync |",
        full,
        ms(b.ours.add_service),
        ms(b.ours.add_endpoint),
        fmt_count(b.probe.0 as f64),
        ms(b.probe.1),
        b.ours_hwm_growth_kib as f64 / 1024.0
    );
    match &b.agent {
        Some(Ok(a)) => {
            let how = if a.prefilled {
                "started on maps already holding the set (a restart: recover, then a sync with nothing to write)"
            } else {
                "started on empty maps"
            };
            let _ = writeln!(
                t,
                "| lb agent: `lb-agent run` on {} services' manifests (translate + apply, from its log) | {} | {} | – | {how}; first sync logged {} after start (YAML read and parsed first); +1 service: a new manifest file, the sync's own time (translation of what changed, north-south planning, apply), the median of {} added one at a time ({}); **peak RSS (VmHWM) {:.1} MiB** |",
                fmt_count(b.services as f64),
                ms(a.sync),
                a.add_service.map_or_else(|| "not seen".to_string(), ms),
                ms(a.wall),
                a.add_service_samples.len(),
                a.add_service_samples.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", "),
                a.vm_hwm_kib as f64 / 1024.0
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(t, "| lb agent: `lb-agent run` | failed | – | – | {} |", e.replace('|', "/"));
        }
        None => {}
    }
    let _ = writeln!(
        t,
        "| kube-proxy iptables, system default (nf_tables backend): `iptables-restore --noflush` | {} | {} | {} | {} lines; partial syncs (KUBE-SERVICES + changed chains); a full resync at N+1 took {} |",
        took(b.iptables.full),
        took(b.iptables.add_service),
        took(b.iptables.add_endpoint),
        b.iptables_lines,
        took(b.iptables_full_resync)
    );
    let _ = writeln!(
        t,
        "| kube-proxy iptables, legacy backend: `iptables-legacy-restore --noflush` | {} | {} | {} | the same rules and partial syncs through x_tables |",
        took(b.iptables_legacy.full),
        took(b.iptables_legacy.add_service),
        took(b.iptables_legacy.add_endpoint),
    );
    let _ = writeln!(
        t,
        "| kube-proxy nftables: `nft -f` | {} | {} | {} | {} lines; partial syncs carry only the changed chains and elements |",
        took(b.nft.full),
        took(b.nft.add_service),
        took(b.nft.add_endpoint),
        b.nft_lines
    );
    t
}

/// A B4 row's datapath as the table names it: lb's north-south rows with
/// the XDP mode that ran.
fn b4_datapath(r: &B4Row) -> String {
    // (`--xdp-mode tc`: the north-south path in tc, no XDP.)
    let hook = |mode: &str| if mode.starts_with("tc,") { format!("tc north-south, {}", &mode[4..]) } else { format!("XDP {mode}") };
    match (&r.xdp, r.kind) {
        (Some(mode), Kind::Ours) => format!("lb ({})", hook(mode)),
        (Some(mode), Kind::OursHostRouting) => format!("lb ({}, BPF host routing)", hook(mode)),
        _ => r.kind.to_string(),
    }
}

pub fn b4_table(rows: &[B4Row], seconds: f64) -> String {
    let mut t = String::new();
    t.push_str("| path | datapath | UDP 64 B from the generator, received (pps) | × iptables | softirq CPU (UDP) | softirq µs per datagram | UDP 64 B from a socket (pps) | × iptables | TCP (Gbit/s) | × iptables | softirq CPU (TCP) |\n");
    t.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        // Ratios against iptables on the same path.
        let base = rows.iter().find(|b| b.kind == Kind::Iptables && b.path == r.path);
        let ratio = |f: fn(&B4Row) -> f64| base.map(|b| f(r) / f(b).max(1.0)).unwrap_or(0.0);
        let datapath = b4_datapath(r);
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {:.2} | {:.1} % | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} % |",
            r.path,
            datapath,
            r.udp_pps,
            ratio(|r| r.udp_pps),
            r.udp_softirq_pct,
            r.udp_softirq_us_per_pkt(seconds),
            r.udp_socket_pps,
            ratio(|r| r.udp_socket_pps),
            r.tcp_bps / 1e9,
            ratio(|r| r.tcp_bps),
            r.tcp_softirq_pct
        );
    }
    t
}

/// Microseconds as milliseconds, for B6's sync times.
fn us_ms(us: f64) -> String {
    ms(std::time::Duration::from_secs_f64(us / 1e6))
}

/// The B7 table.
pub fn b7_table(b: &crate::b7::B7Result) -> String {
    use crate::b7::B7Result as R;
    let q = |v: &[f64], p: f64| format!("{:.1}", R::quantile(v, p) / 1e3);
    let max = |v: &[f64]| format!("{:.1}", v.iter().copied().fold(f64::NAN, f64::max) / 1e3);
    let mut t = String::from(
        "| interfaces | created → tcx attached p50 (ms) | p99 (ms) | max (ms) | `ip link add` alone p50 (ms) | p99 (ms) | missed (> 2 s) |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let _ = writeln!(
        t,
        "| {} | {} | {} | {} | {} | {} | {} |",
        b.pods,
        q(&b.attached_us, 0.5),
        q(&b.attached_us, 0.99),
        max(&b.attached_us),
        q(&b.ip_us, 0.5),
        q(&b.ip_us, 0.99),
        b.missed
    );
    t
}

/// The B6 table.
pub fn b6_table(b: &B6Result) -> String {
    let mut t = String::new();
    t.push_str("| datapath | steps | syncs (failed) | CPU over the churn | CPU per step | sync time p50 | sync time p99 | event → maps p50 / p99 | notes |\n");
    t.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in &b.rows {
        let name = b6_name(r);
        if let Some(why) = &r.not_run {
            let _ = writeln!(t, "| {name} | – | – | – | – | – | – | – | {} |", why.replace('|', "/"));
            continue;
        }
        let latency = match &r.latency {
            Some(p) => format!("{} / {}", us_ms(p.p50), us_ms(p.p99)),
            None => "–".into(),
        };
        let mut notes: Vec<String> = r.problems.iter().map(|p| format!("**{p}**")).collect();
        notes.extend(r.notes.iter().cloned());
        if let Some(e) = &r.error {
            notes.push(format!("first failure: {e}"));
        }
        let notes = notes.join("; ");
        let _ = writeln!(
            t,
            "| {name} | {} | {} ({}) | {:.2} s | {} | {} | {} | {latency} | {} |",
            r.steps,
            r.syncs,
            r.failed,
            r.cpu.as_secs_f64(),
            ms(r.cpu_per_step()),
            us_ms(r.sync.p50),
            us_ms(r.sync.p99),
            notes.replace('|', "/")
        );
    }
    t
}

fn b6_name(r: &B6Row) -> &'static str {
    match r.kind {
        Kind::Ours | Kind::OursHostRouting => "lb: `lb-agent run` (agent process; sync time = its `apply_us`)",
        Kind::Iptables => "kube-proxy iptables (nf_tables backend): `iptables-restore --noflush`",
        Kind::IptablesLegacy => "kube-proxy iptables (legacy): `iptables-legacy-restore --noflush`",
        Kind::Nftables => "kube-proxy nftables: `nft -f`",
    }
}

/// A B1 path's figures at one N: established ns, established × floor,
/// new flow ns (overhead off).
type B1Figures = (f64, f64, f64);

/// Goals with our figures.
pub fn goals(r: &Report) -> String {
    let mut t = String::new();
    t.push_str("| goal | our figure | result |\n|---|---|---|\n");
    if let Some(rows) = &r.b1 {
        // The targets: an established flow ≤ 100 ns and ≤ 4× the
        // XDP_PASS floor, a new flow ≤ 400 ns (Katran: 101–119 ns).
        let paths: [(&str, Vec<Option<B1Figures>>); 3] = [
            (
                "ClusterIP (tc)",
                rows.iter().map(|r| Some((r.established_ns, r.established_ns / r.floor_ns.max(1.0), r.new_flow_net_ns()))).collect(),
            ),
            (
                "NodePort (XDP), local backend",
                rows.iter()
                    .map(|r| local(&r.xdp).map(|x| (x.established_ns, x.established_ns / r.floor_ns.max(1.0), x.new_flow_net_ns())))
                    .collect(),
            ),
            (
                "NodePort (XDP), remote backend",
                rows.iter()
                    .map(|r| remote(&r.xdp).map(|x| (x.established_ns, x.established_ns / r.floor_ns.max(1.0), x.new_flow_net_ns())))
                    .collect(),
            ),
        ];
        for (name, figures) in paths {
            if figures.iter().any(Option::is_none) {
                let _ = writeln!(t, "| B1: {name} | n/a (not in this object) | – |");
                continue;
            }
            let figures: Vec<_> = figures.into_iter().flatten().collect();
            let est = figures.iter().map(|f| f.0).fold(0.0, f64::max);
            let ratio = figures.iter().map(|f| f.1).fold(0.0, f64::max);
            let new = figures.iter().map(|f| f.2).fold(0.0, f64::max);
            let _ = writeln!(
                t,
                "| B1: {name}, established flow ≤ 100 ns/packet and ≤ 4× the XDP_PASS floor (Katran: 101–119 ns) | {est:.0} ns, {ratio:.1}× (worst over N) | {} |",
                pass(est <= 100.0 && ratio <= 4.0)
            );
            let _ = writeln!(
                t,
                "| B1: {name}, new flow ≤ 400 ns/packet | {new:.0} ns (worst over N, repeat=1 overhead off) | {} |",
                pass(new <= 400.0)
            );
        }
        // The IPv6 goal: within 15 % of IPv4 on the same run.
        let ratios: Vec<_> = rows.iter().filter_map(|r| r.v6_ratios()).collect();
        if ratios.len() == rows.len() && !ratios.is_empty() {
            let worst = |f: fn(&(f64, f64, f64, f64)) -> f64| ratios.iter().map(f).fold(0.0, f64::max);
            let (est, new) = (worst(|r| r.0), worst(|r| r.1));
            let _ = writeln!(
                t,
                "| B1: ClusterIP over IPv6 within 15 % of IPv4 (same run) | established {est:.2}×, new flow {new:.2}× (kernel run time {:.2}× / {:.2}×; worst over N) | {} |",
                worst(|r| r.2),
                worst(|r| r.3),
                pass(est <= 1.15 && new <= 1.15)
            );
        } else {
            let _ = writeln!(t, "| B1: ClusterIP over IPv6 within 15 % of IPv4 (same run) | n/a (not measured) | – |");
        }
        // The same ratio on the XDP NodePort paths (reported; the goal is
        // the ClusterIP one).
        let ratios: Vec<_> = rows.iter().filter_map(|r| r.xdp6_ratios()).collect();
        if ratios.len() == rows.len() && !ratios.is_empty() {
            let worst = |i: usize, f: fn(&(f64, f64)) -> f64| ratios.iter().map(|r| f(&r[i])).fold(0.0, f64::max);
            let _ = writeln!(
                t,
                "| B1: NodePort (XDP) over IPv6 vs IPv4 (same run) | local backend: established {:.2}×, new flow {:.2}×; remote backend (NAT66 vs SNAT): established {:.2}×, new flow {:.2}× (worst over N) | – |",
                worst(0, |r| r.0),
                worst(0, |r| r.1),
                worst(1, |r| r.0),
                worst(1, |r| r.1),
            );
        } else {
            let _ = writeln!(t, "| B1: NodePort (XDP) over IPv6 vs IPv4 (same run) | n/a (not measured) | – |");
        }
        if let (Some(first), Some(last)) = (rows.first(), rows.last())
            && rows.len() > 1
        {
            // Each count's two passes (opposite orders) averaged; the first
            // pass alone is shown beside, as it reads on the table.
            let (g, gn) = first.flat_mean().growth_to(&last.flat_mean());
            let (g1, gn1) = first.flat_figures().growth_to(&last.flat_figures());
            let passes = if first.again.is_some() && last.again.is_some() {
                format!(
                    " (mean of two passes in opposite orders; the first pass alone, as in the table: {:+.1} %, {:+.1} %)",
                    g1 * 100.0,
                    gn1 * 100.0
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                t,
                "| B1: flat across N (≤ 10 % growth from {} to {} services; worst of both paths) | established {:+.1} %, new flow {:+.1} %{passes} | {} |",
                fmt_count(first.services as f64),
                fmt_count(last.services as f64),
                g * 100.0,
                gn * 100.0,
                pass(g <= 0.10 && gn <= 0.10)
            );
        }
    }
    if let Some(rows) = &r.b2 {
        b2_goals(&mut t, rows);
    }
    if let Some(b) = &r.b3 {
        let label = format!("{} × {}", fmt_count(b.services as f64), b.endpoints);
        let _ = writeln!(t, "| B3: full sync of {label} < 1 s | {} | {} |", ms(b.ours.full), pass(b.ours.full.as_secs_f64() < 1.0));
        let _ = writeln!(
            t,
            "| B3: +1 service < 10 ms (nftables' published figure: 141 ms), reconciler | {} (our nft: {}) | {} |",
            ms(b.ours.add_service),
            took(b.nft.add_service),
            pass(b.ours.add_service.as_secs_f64() < 0.010)
        );
        if let Some(Ok(a)) = &b.agent
            && let Some(add) = a.add_service
        {
            let _ = writeln!(
                t,
                "| B3: +1 service < 10 ms, whole agent (`lb-agent run`: translation + apply) | {} (median of {} additions, {} to {}) | {} |",
                ms(add),
                a.add_service_samples.len(),
                ms(a.add_service_samples.iter().copied().min().unwrap_or_default()),
                ms(a.add_service_samples.iter().copied().max().unwrap_or_default()),
                pass(add.as_secs_f64() < 0.010)
            );
        }
        match &b.agent {
            Some(Ok(a)) => {
                let mib = a.vm_hwm_kib as f64 / 1024.0;
                let _ =
                    writeln!(t, "| B3: agent RSS < 100 MiB at {label} | {mib:.1} MiB (VmHWM of `lb-agent run`) | {} |", pass(mib < 100.0));
            }
            _ => {
                let mib = b.ours_hwm_growth_kib as f64 / 1024.0;
                let _ = writeln!(
                    t,
                    "| B3: agent RSS < 100 MiB at {label} | growth of the benchmark's VmHWM: {mib:.1} MiB (no `lb-agent run` figure) | {} |",
                    pass(mib < 100.0)
                );
            }
        }
    }
    if let Some(rows) = &r.b4 {
        // Issue 12: B4 UDP pps >= 1.5x kube-proxy iptables, on each path;
        // our figure is lb's best row there (with or without BPF host
        // routing, generic or native XDP, or the tc path), named.
        for path in [b4::B4Path::ClusterIp, b4::B4Path::NodePortLocal, b4::B4Path::NodePortRemote] {
            let on_path = || rows.iter().filter(move |r| r.path == path);
            let base = on_path().find(|r| r.kind == Kind::Iptables);
            let best = on_path().filter(|r| r.kind.is_ours()).max_by(|a, b| a.udp_pps.total_cmp(&b.udp_pps));
            let (Some(base), Some(best)) = (base, best) else { continue };
            let ratio = best.udp_pps / base.udp_pps.max(1.0);
            let _ = writeln!(
                t,
                "| B4: {path}, UDP 64 B ≥ 1.5× kube-proxy iptables (nft backend) | {} {:.0} pps against {:.0} ({ratio:.2}×) | {} |",
                b4_datapath(best),
                best.udp_pps,
                base.udp_pps,
                pass(ratio >= 1.5)
            );
        }
    }
    if let Some(b) = &r.b6 {
        let ran = |k: Kind| b.rows.iter().find(|r| r.kind == k && r.not_run.is_none());
        if let Some(ours) = ran(Kind::Ours) {
            // A baseline whose churn its budget stopped still measured each
            // step it ran (the per-step figures compare; it is named so);
            // one with failed syncs or rules that failed their check does
            // not count.
            let bases: Vec<&B6Row> = [Kind::Iptables, Kind::IptablesLegacy, Kind::Nftables]
                .into_iter()
                .filter_map(ran)
                .filter(|r| r.failed == 0 && r.problems.len() == usize::from(r.stopped_at.is_some()))
                .collect();
            let name = |r: &B6Row| match r.stopped_at {
                Some(n) => format!("{} (stopped after {n} of {} steps)", r.kind, b.steps),
                None => r.kind.to_string(),
            };
            let p99_goal = format!(
                "B6: p99 sync time under churn ({} base Services) below every kube-proxy mode's p99 partial sync",
                fmt_count(b.base_services as f64)
            );
            let cpu_goal = "B6: agent CPU per churn step below every kube-proxy mode's rule syncs (whole agent process against the sync commands alone)";
            if bases.is_empty() {
                for goal in [p99_goal.as_str(), cpu_goal] {
                    let _ = writeln!(t, "| {goal} | no kube-proxy mode measured a step (see the B6 table) | n/a |");
                }
            } else {
                let p99 = bases.iter().map(|r| r.sync.p99).fold(f64::MAX, f64::min);
                let _ = writeln!(
                    t,
                    "| {p99_goal} | ours {} (`apply_us`); {} | {} |",
                    us_ms(ours.sync.p99),
                    bases.iter().map(|r| format!("{} {}", name(r), us_ms(r.sync.p99))).collect::<Vec<_>>().join(", "),
                    pass(ours.failed == 0 && ours.problems.is_empty() && ours.sync.p99 < p99)
                );
                let least = bases.iter().map(|r| r.cpu_per_step()).min().unwrap_or_default();
                let _ = writeln!(
                    t,
                    "| {cpu_goal} | ours {}; {} | {} |",
                    ms(ours.cpu_per_step()),
                    bases.iter().map(|r| format!("{} {}", name(r), ms(r.cpu_per_step()))).collect::<Vec<_>>().join(", "),
                    pass(ours.cpu_per_step() < least)
                );
            }
        }
    }
    if let Some(b) = &r.b7 {
        let p99 = crate::b7::B7Result::quantile(&b.attached_us, 0.99) / 1e3;
        let _ = writeln!(
            t,
            "| B7: a new pod interface has lb's tcx programs within 50 ms (p99, `ip link add` included), none missed | p99 {p99:.1} ms over {} interfaces, {} missed | {} |",
            b.pods,
            b.missed,
            pass(b.missed == 0 && p99 < 50.0)
        );
    }
    t
}

pub fn markdown(r: &Report, plots: &[String]) -> String {
    let mut md = String::new();
    md.push_str("# lb benchmarks\n\n");
    let _ = writeln!(
        md,
        "Generated by `{}` on {}. Every figure below comes from that one run; nothing is edited by hand. \
         No test asserts a timing: the figures are for reading, next to the published ones in `anchors-perf.md`.\n",
        r.command, r.date
    );
    md.push_str("## Machine\n\n| | |\n|---|---|\n");
    for (k, v) in &r.machine {
        let _ = writeln!(md, "| {k} | {} |", v.replace('|', "/"));
    }
    md.push_str(
        "\nAll traffic stays inside network namespaces the benchmark creates (a lab \"node\" with pods behind veth pairs); \
         nothing is linked to the root namespace. veth is the medium: absolute rates are far below a NIC's, so compare ratios.\n\n",
    );
    md.push_str(
        "Run it with `cargo xtask bench --quick` (about a quarter of an hour on this machine, most of it the agent's full sync and the baselines' \
         rule loads at 10,000 services) or `cargo xtask bench` (the full sizes: B2 up to 30,000 services and longer runs; the baselines' rule loads \
         alone can take hours there). Sizes and budgets are flags: `cargo xtask bench -- --help`.\n\n",
    );
    md.push_str("## Goals\n\n");
    md.push_str(&goals(r));
    md.push('\n');

    if let Some(rows) = &r.b1 {
        let o = r.options.b1.as_ref().expect("B1 ran");
        md.push_str("## B1: per-packet cost\n\n");
        md.push_str(&b1_table(rows));
        let _ = write!(
            md,
            "\nMethod. `BPF_PROG_TEST_RUN` through aya, the calling thread pinned to CPU {} with `sched_setaffinity` (the kernel runs skb and XDP test runs on the calling CPU). \
             Each service count is a fresh datapath whose maps hold N ClusterIP services with {} backends each (distinct backends), plus the frontends described below (a ClusterIP pair, and NodePort frontends when the object has the XDP program); \
             the measured service is the last one generated.\n\n\
             - **Floor**: the no-op `lb_xdp_pass`, `repeat` = {}, best of {}.\n\
             - **Established flow** (`lb_tc_ingress`, conntrack hit): with `repeat` > 1 the kernel runs the program again and again on the *same* skb, so after the first DNAT the packet \
             no longer goes to a service and later repeats would measure a miss. Two frontends A and B are therefore made each other's only backend: \
             the packet goes A → B → A …, and from the third repeat on every run is a conntrack hit plus the full DNAT rewrite on the real code path \
             (checked: after an even number of repeats the packet is back at A). `repeat` = {}, best of {}.\n\
             - **New flow** (`lb_tc_ingress`, TCP SYN): conntrack is defeated by giving every run a source (address, port) never seen before, so each run is a service lookup, \
             a conntrack miss, a backend selection (random slot + backend lookup), two conntrack inserts (service and reply direction, LRU hash) and the rewrite. \
             These are `repeat` = 1 runs ({} per round, best round mean of {}; the p50 column is over all runs); the conntrack map is sized so nothing is evicted, \
             which the benchmark checks. The kernel's duration of a `repeat` = 1 run also holds one clock read, the bh disable/enable around the program and \
             whatever the syscall left cold in the caches. That overhead is measured by timing an established flow the same way (`repeat` = 1, best round mean as well) and subtracting \
             the `repeat` = N figure; the \"overhead off\" new-flow figure subtracts it, the raw one does not. The repeat=1 floor (XDP_PASS) came out at {}.\n\
             - **XDP NodePort path, local delivery** (`lb_xdp`, which tail-calls `lb_xdp4` for IPv4): measured the same three ways on NodePort frontends at the node address (a ping-pong pair for the established flow, \
             and a NodePort with the measured service's ten endpoints for new flows), all endpoints on this node: the program DNATs and hands the packet \
             to the kernel (`XDP_PASS`).\n\
             - **XDP NodePort path, remote backend** (²): a NodePort whose {} endpoints are on another node (one SNAT tuple per NAT port and endpoint: enough endpoints that a path's new flows take at most 45 % of the tuples). B1 runs in a network namespace of its own where \
             `ext0` holds the node address, the other node is a permanent neighbour and its pod network is routed through it; the packets arrive on `ext0`, \
             so each run is the whole north-south path: DNAT and SNAT (to the node address, a port of the SNAT range {}–{}), `bpf_fib_lookup`, TTL, MACs, \
             `XDP_TX` (checked on the first packet: verdict, MAC, addresses). SNAT gives every pass a new source, so there is no ping-pong: its established figure is the mean of \
             `repeat` = 1 runs of one packet (best round mean) less the local XDP path's repeat = 1 overhead. \
             Its reply row is the backend's answer to that flow, arriving on `ext0` at the node address and the flow's SNAT port (IPv6: the node's IPv6 address): \
             conntrack's reply entry, both translations reversed, FIB, `XDP_TX` towards the client (routed through the other node; checked on the first packet), measured the same way.\n\
             - **Reply** (³): the backend's reply of the tc row's established flow (to the measured service; for IPv6, of the IPv6 row's), through `lb_tc_egress` as at the client's interface: \
             conntrack's reply entry, the reverse NAT of source address and port back to the frontend (checked on the first packet). The translated packet would find no flow \
             on a second pass, so there is no ping-pong either: the mean of `repeat` = 1 runs (best round mean) less the tc path's repeat = 1 overhead (the ping-pong packet's `repeat` = 1 mean less its `repeat` = N figure).\n\
             - **No XDP mark**: `lb_tc_ext_ingress`, which only BPF host routing attaches (to the external interfaces' tc ingress), on a packet `lb_xdp` did not \
             mark: what that mode costs every other packet arriving from outside (`repeat` = N of the pod-to-pod packet, passed untouched).\n\
             - **NodePort paths in tc** (`--xdp-mode tc`): `lb_tc_ns`, the same north-south path at the external interface's tc ingress, measured as the XDP rows \
             (the same ping-pong pair and measured NodePort; a remote NodePort of its own, its {} endpoints other pods of the other node, so that each hook's SNAT ports \
             have their own tuples). A packet for a local backend passes to the kernel (`TC_ACT_UNSPEC`); one for another node, and a reply sent back to the client, \
             are redirected (`bpf_redirect`, `TC_ACT_REDIRECT`; the test run does not carry out the redirect). tc's checksum updates are kernel helper calls (the skb's checksum state is the kernel's), \
             where XDP's are arithmetic.\n\
             - **XDP NodePort paths over IPv6**: the same two, in the same run, on the IPv6 twins of the NodePort frontends at the node's IPv6 address \
             (`lb_xdp` tail-calls `lb_xdp6`; the remote backend's packets go on to `lb_xdp6_nat`, NAT66 to the node's IPv6 address in `LB6_NODE`, \
             checked on the first packet as IPv4's); their ratio to IPv4's is in the goals table.\n\
             - **Kernel run_time/run_cnt**: the kernel's own accounting of the program (`bpf_prog_info`, counted only while `BPF_ENABLE_STATS` is held, around \
             `repeat` = N runs of the ping-pong packet, best of the rounds as the test run's figure (one pass alone is at the mercy of whatever else shares the CPU), \
             or one more round of `repeat` = 1 runs: new flows, and the remote path's established packet). It leaves out what \
             the test run adds around the program, so it needs no overhead correction, but includes part of the accounting's own two clock reads per run: \
             on this VM it reads 20–45 ns above the test run's `repeat` = N figure (docs/per-packet-profile.md, \"IPv6 at 100k services\").\n\
             - The Katran anchor (101–119 ns) is an XDP program on a bare-metal CPU; these figures come from the VM described above.\n",
            o.cpu,
            o.endpoints,
            o.repeat,
            o.rounds,
            o.repeat,
            o.rounds,
            o.new_flows,
            o.rounds,
            rows.iter().map(|r| format!("{:.0} ns at {}", r.floor_r1_ns, fmt_count(r.services as f64))).collect::<Vec<_>>().join(", "),
            crate::b1::remote_endpoints(o),
            crate::b1::NAT_PORTS.0,
            crate::b1::NAT_PORTS.1,
            crate::b1::remote_endpoints(o),
        );
        let again: Vec<_> = rows.iter().filter_map(|r| r.again.as_ref().map(|a| (r.services, a.flat_figures()))).collect();
        if !again.is_empty() {
            let shown = again
                .iter()
                .map(|(n, f)| {
                    let xdp = f.xdp.map(|x| format!(", XDP local {:.0} / {:.0} ns", x.0, x.1)).unwrap_or_default();
                    format!("at {}: ClusterIP {:.0} / {:.0} ns{xdp}", fmt_count(*n as f64), f.tc.0, f.tc.1)
                })
                .collect::<Vec<_>>()
                .join("; ");
            let _ = writeln!(
                md,
                "- **Two passes**: B1 measures the service counts in increasing order, then again in decreasing order, each time in a fresh datapath. \
                 The table shows the first pass. \"Flat across N\" compares each count's mean of the two: both passes of a count centre on the same moment of the run, \
                 so a drift over its minutes (the machine warming, other load) weighs on every count alike instead of reading as growth with N. \
                 The second pass's figures it uses (established / new flow net): {shown}."
            );
        }
        if rows.iter().any(|r| r.program_time.is_none()) {
            let _ = write!(
                md,
                "\n¹ Above {} backends in total the maps are filled by writing the same entries the reconciler writes (same IDs, generation 0 slots), after which \
                 `Reconciler::recover` and `Reconciler::apply` run and must find nothing to change (the `--b1-reconcile-limit` flag sets the limit).\n",
                fmt_count(o.reconcile_limit as f64)
            );
        }
        md.push('\n');
    }
    if let Some(b) = &r.b3 {
        md.push_str("## B3: programming time\n\n");
        md.push_str(&b3_table(b));
        md.push_str(
            "\nMethod. One generated list of ClusterIP services (TCP), each with its endpoints, rendered three ways. \
             **lb**: a fresh datapath with maps sized for the set, `Reconciler::apply` timed in-process for the full set, then for the set plus one service \
             (with its endpoints), then for that set plus one endpoint on an existing service, each change told the frontend addresses it changed \
             (`Reconciler::apply_changed`, as the agent's sync tells it). The same manifests are also given to a real `lb-agent run` \
             (in a network namespace of its own, no pod interfaces, no socket hooks; as every agent the benchmarks start, at a soft limit of 1,024 open files, which it raises), whose own log gives the sync time (YAML read, translation, apply) and whose VmHWM \
             is read from /proc once it has logged its first sync. \
             **iptables**: the ruleset kube-proxy's iptables mode writes (filter and nat tables; KUBE-SERVICES → KUBE-SVC-* with `statistic --mode random --probability` \
             → KUBE-SEP-* with KUBE-MARK-MASQ and DNAT; PREROUTING/OUTPUT jump to KUBE-SERVICES, KUBE-POSTROUTING masquerades marked packets) loaded with \
             `iptables-restore --noflush` in an empty network namespace. \"+1 service\" and \"+1 endpoint\" are what kube-proxy's partial sync (the default since 1.27) \
             restores: the whole KUBE-SERVICES chain (it lists every service) plus the changed service's chains, with `--noflush`; a full restore (kube-proxy's \
             periodic resync) is shown in the notes. **nftables**: the table kube-proxy's nftables mode writes (`table ip kube-proxy`, the `service-ips` verdict map \
             `ip daddr . meta l4proto . th dport vmap @service-ips`, per-service chains with `numgen random mod N vmap { … }`, per-endpoint chains with the masquerade \
             mark and `dnat`), one `nft -f` transaction into an empty namespace; the changes send only the changed chains (`add chain` + `flush chain` + rules) and map \
             elements, as kube-proxy's partial sync does. The rules were checked after loading (one KUBE-SERVICES rule and one `service-ips` element per service). \
             **iptables, legacy backend**: the same ruleset and partial syncs through `iptables-legacy-restore` (x_tables); kube-proxy uses whichever backend \
             the node's iptables uses, and this system's default is the nf_tables one. Each baseline command runs under a time budget; one still running \
             then is stopped and shown as \"> budget (stopped)\".\n\n",
        );
    }
    if let Some(b) = &r.b3 {
        if !b.ours_full_measured {
            let _ = write!(
                md,
                "² Not run at full size: the agent's sync is first timed at {} services ({}), and scaled by (N/n)² it would exceed this mode's budget of {}; \
                 the maps were then filled directly (as in B1) for the incremental measurements.\n\n",
                fmt_count(b.probe.0 as f64),
                ms(b.probe.1),
                ms(r.options.b3.as_ref().map(|o| o.full_sync_budget).unwrap_or_default())
            );
        } else {
            let _ = write!(
                md,
                "The agent's sync at a tenth of the size ({} services) took {}; the full size took {} ({:.1}× for 10× the services).\n\n",
                fmt_count(b.probe.0 as f64),
                ms(b.probe.1),
                ms(b.ours.full),
                b.ours.full.as_secs_f64() / b.probe.1.as_secs_f64().max(1e-9)
            );
        }
    }
    if let Some(rows) = &r.b2 {
        md.push_str("## B2: new-connection latency against the number of services\n\n");
        md.push_str(&b2_table(rows));
        let o = r.options.b2.as_ref().expect("B2 ran");
        let _ = write!(
            md,
            "\nMethod. A lab node namespace with a client pod and {} backend pods (TCP servers on :8080), Calico-style routing through the node. \
             N services are generated once ({} endpoints each); the first and the last generated service have the ten backend pods as endpoints, the others fake \
             endpoints that are never contacted. The same list is programmed into each datapath in turn, each in a fresh lab (no conntrack or rule state carries over): \
             **lb** (the `lb_tc_ingress` program attached to every pod interface in the node, maps filled as in B1), **kube-proxy iptables** (the B3 ruleset, loaded inside the node namespace with \
             `iptables-restore` (nf_tables backend, the system default) and, as a separate datapath, with `iptables-legacy-restore`; the target's rule is first \
             or last in KUBE-SERVICES) and **kube-proxy nftables** (the B3 table, `nft -f` inside the node namespace). \
             The client then makes {} sequential connections to each target (after 50 warm-up ones): connect, send a line, read the reply to EOF, close; each is timed \
             on the client (the socket is made before the clock starts). The connect() column is the SYN → SYN-ACK round trip alone, the first packet of a flow through the datapath. \
             The \"direct\" row is the floor: the same client, in the same lab with the same datapath installed, straight to the backend pods' addresses (no Service), \
             the ten in turn as the Service spreads its connections over them, so the difference to the last service's row is what the Service translation adds. \
             The three targets take turns: {} rounds, each a batch of connections to every target, in an order that rotates from round to round, so that \
             whatever else the machine does during the run weighs on the three alike. The direct connections bind source ports of their own \
             (from {} up, below the ephemeral range the Service connections draw from): reused, a port would carry an earlier Service flow's reply tuple. \
             A baseline whose rules did not load within the budget (or did not in B3 at that size) is shown as not measured. \
             Before each datapath's lab the run waits (at most 5 minutes) until the machine is quiet, under 10 % CPU busy over half a second, so that leftover background work (the kernel tears a deleted namespace down asynchronously) does not overlap a measurement. Nothing else on the machine is stopped for the run; tails (p99) are the figures most sensitive to other load.\n\n",
            crate::b2::BACKENDS,
            o.endpoints,
            o.connections,
            crate::b2::ROUNDS,
            crate::b2::FIRST_PORT
        );
    }
    if let Some(rows) = &r.b4 {
        let o = r.options.b4.as_ref().expect("B4 ran");
        md.push_str("## B4: throughput through the node\n\n");
        md.push_str(&b4_table(rows, o.seconds));
        let _ = write!(
            md,
            "\nMethod. A lab node with a client pod and one backend pod; {} services programmed (B2's list, the target with the backend pod as its endpoint, \
             plus a UDP port on the target). UDP, as a generator sends it (pktgen, which this kernel lacks, or trafgen): the client sends one prebuilt frame \
             of a 64-byte datagram (Ethernet, IPv4 and UDP, checksums complete, addresses and port of a connected UDP socket, the next hop's MAC from the \
             neighbour table) for {} s as fast as it can, three times (the row is the median run), from an `AF_PACKET` socket past the qdisc \
             (`PACKET_QDISC_BYPASS`), 64 frames per `sendmmsg`; \
             a sink in the backend, a UDP socket that polls (`recvmmsg`, non-blocking) rather than sleeps, counts what arrives. The sender's CPU also runs \
             the softirq that carries each datagram to the sink (veth), so the rate is one CPU's worth of sending plus the datapath: the generator keeps the \
             sending part small, and a polling sink costs the sender no wake-up per datagram (an IPI on this VM). \
             \"From a socket\" repeats the run with what an application sends: a connected UDP socket's `sendmmsg` of 64 datagrams, the same sink; \
             the socket's own path (UDP, IP, the route) is then most of the sender's CPU, the same in every row, so its ratios are smaller. TCP: one connection writes 64 KiB buffers for {} s; the sink counts bytes. Softirq is the share of all CPU time (both CPUs) spent \
             in softirq over the run, from /proc/stat (on veth, forwarding and NAT run there); \"µs per datagram\" divides the softirq CPU time by the datagrams \
             received. veth is the medium and the sender shares the two CPUs with the datapath, so only ratios mean anything. lb runs twice on this path: \
             as the agent's default (translated packets go on through the host stack) and with BPF host routing (`--host-routing bpf`: \
             `bpf_redirect_peer` into the backend pod).\n\n\
             North-south rows: a two-node lab cluster (nodes and the external client on one bridge, every link a veth); the same {} services, \
             two of them NodePorts ({} with its endpoint a pod on node A, {} with its endpoint a pod on node B), TCP and UDP. The client sends to node A's \
             address; the datapath runs on node A only (node B just routes to its pod). kube-proxy (externalTrafficPolicy: Cluster) DNATs and marks \
             NodePort traffic for masquerade, so both rows are DNAT + SNAT there; lb's XDP program on node A's external interface DNATs towards a local \
             pod (passing it on to the kernel) and DNATs + SNATs towards node B (FIB lookup, transmitted back out of the interface). lb attaches its XDP \
             program in `auto` mode as the agent does, and once more with `--xdp-mode native` (the lab allows it: the switch's ports then run an XDP_PASS \
             program, since frames a native XDP program transmits on a veth reach only a peer running XDP); the mode that ran is in the datapath column \
             (on veth `auto` picks generic XDP: native XDP there passes partial checksums on), and in both modes again with BPF host routing \
             (`--host-routing bpf`: the locally DNATed packets go from the external interface's tc ingress straight into the pod, and its replies \
             straight out; the remote path is the same XDP path). TX checksum offload is off on the external links, so \
             TCP there runs well below the pod-to-pod rows. The passed rows: the same client sends to the pod on node A by its own address \
             (the client routes node A's pod network through node A, as a routed pod network does), no Service, with every datapath \
             installed as above: what each costs the traffic it does not translate (lb: its XDP program's first look, and in generic mode \
             the copy of every frame for XDP's headroom; kube-proxy: the host's conntrack).\n\n",
            b4::SERVICES,
            o.seconds,
            o.seconds,
            b4::SERVICES,
            b4::NODE_PORT_LOCAL,
            b4::NODE_PORT_REMOTE
        );
    }
    if let Some(b) = &r.b6 {
        let o = r.options.b6.as_ref().expect("B6 ran");
        md.push_str("## B6: agent CPU and sync time under Service churn\n\n");
        md.push_str(&b6_table(b));
        let _ = write!(
            md,
            "\nMethod. {} static Services ({} endpoints each, never changed) and, on top, `lb_lab::churn::Churn` (seed {}): every {} ms a step adds and removes \
             filler Services (up to {} at once, 2 endpoints each), scales one Service (`scaled`) between 0 and 4 endpoints, renames its port (`http` ↔ `web`) every \
             3rd step, flips it between random and Maglev selection every 4th and toggles its session affinity every 5th. {} steps ({} s) were generated once; \
             over them {} filler Services were added and {} removed, with at most {} churn Services at once. Every datapath runs in a fresh lab node namespace \
             (four pods) and gets the same steps on the same schedule, after the machine was quiet (as in B2; waiting at most {} s).\n\n\
             - **lb**: the real agent, `lb-agent run --manifests DIR --pod-ifaces 'lbp*' --poll-interval-ms 100 --health-addr off --no-socket-lb` \
             (default `--sync-delay-ms` 100), on a directory with one file per Service (Service and EndpointSlice), written before it starts. \
             Once it logged its first sync, each step writes the files of added and updated Services (through a temporary file and a rename) and deletes \
             those of removed ones. CPU is the agent's `utime + stime` from `/proc/<pid>/stat` from the first step to its sync of the last step's state \
             (the first sync after the last write that holds the last step's Service count and that no other sync follows for {} s, or twice the longest \
             gap between its syncs); syncs are the \"synced manifests\" lines logged meanwhile. Sync time is their `apply_us` (translation of what changed, north-south planning and \
             the map writes); event → maps is their `latency_us`, from the moment the agent read the changed directory to the maps written, which holds \
             the 100 ms `--sync-delay-ms` window in which it gathers a burst of changes. Every 100 ms the manifest source reads and parses the files inotify \
             named since its last look (and looks at every file every 30 s), and the agent polls the interfaces; all of that is in the CPU \
             figure (the notes give the idle rate and the syncs' own share). Against the API server the agent gets the changed objects alone.\n\
             - **kube-proxy iptables** (`iptables-restore --noflush`, the nf_tables backend, and `iptables-legacy-restore --noflush`) and \
             **kube-proxy nftables** (`nft -f`): the B3 rulesets of the static Services and the churn's initial ones are loaded first; then each \
             step is one partial sync as kube-proxy makes it: iptables (`MinimizeIPTablesRestore`) rewrites `KUBE-SERVICES` with every Service, \
             declares (so flushes) and rewrites the chains of added and updated Services, and declares and deletes (`-X`) the chains of removed Services \
             and the `KUBE-SEP-*` chains of endpoints an updated Service lost; nftables deletes a removed Service's `service-ips` element (and its \
             `cluster-ips` element when no Service keeps the address) and chains, rewrites added and updated Services' chains and elements, and deletes \
             stale endpoint chains, in one transaction (kube-proxy flushes stale chains at once and deletes them a second later, a workaround for kernels \
             before 6.2). The scaled Service is rewritten every step; its renamed port is another service port (the old one's chains go, the new one's \
             come). A Service without endpoints is left out of the rules (treated as removed; kube-proxy would write a REJECT rule or a \
             `no-endpoint-services` element for it); Maglev has no kube-proxy counterpart and session affinity is not rendered (kube-proxy adds `recent` \
             matches or affinity sets). Each sync command is timed (wall, spawn to exit: the sync time) and its CPU is the `getrusage(RUSAGE_CHILDREN)` \
             difference around it (user + system, the kernel's work in the command's syscalls included); steps run on the same {} ms schedule, back to \
             back when a sync outlasts a step. A failing sync is counted and the churn goes on. After the churn the rules were checked (one \
             `KUBE-SERVICES` rule or `service-ips` element per Service with endpoints). A baseline's full load and its whole churn each have a budget of {} s.\n\n\
             The comparison favours the baselines: their CPU is the rule-loading commands alone, not kube-proxy's own work (watching the API, computing \
             the rules, listing chains before an nftables sync), while lb's is its whole process, manifest parsing and polling included.\n\n",
            fmt_count(b.base_services as f64),
            crate::b6::BASE_ENDPOINTS,
            crate::b6::SEED,
            crate::b6::STEP.as_millis(),
            lb_lab::churn::MAX_FILLERS,
            b.steps,
            o.seconds,
            b.churn_added,
            b.churn_removed,
            b.churn_max,
            o.quiet_max.as_secs(),
            crate::b6::SETTLE.as_secs(),
            crate::b6::STEP.as_millis(),
            o.baseline_budget.as_secs()
        );
    }
    if let Some(b) = &r.b7 {
        md.push_str("## B7: a new pod interface, to lb's programs on it\n\n");
        md.push_str(&b7_table(b));
        let _ = write!(
            md,
            "\nMethod. The real agent (`lb-agent run --pod-ifaces 'lbp*' --poll-interval-ms 600000 --health-addr off --no-socket-lb` on an empty \
             manifest directory) serves a lab node, so only rtnetlink link events can find new interfaces. {} times, one after the other, a thread \
             in the node's namespace takes the time, runs `ip link add lbpbN type veth peer name lbqbN`, then asks the kernel (BPF_PROG_QUERY) \
             every {} µs whether both tcx hooks of the new interface carry a program; the figure ends at the first query that sees both. \
             The `ip` command's own time (fork, exec, netlink) is inside the figure and is shown on its own. The interface is deleted after each \
             sample and the next one starts 50 ms later. kube-proxy has no counterpart (its rules are not per interface); Cilium attaches its \
             programs when the CNI plugin creates the endpoint.\n\n\
             Where the time goes: the agent acts on the link event within about a millisecond, and the rest is the kernel's. Each tcx \
             attachment (`BPF_LINK_CREATE`) waits for an RCU grace period before it returns (the new program list is published, then \
             `synchronize_rcu`, under the rtnl lock), and an interface gets two (ingress and egress). The agent's debug log gives the two \
             together as `attach_us` (\"attached on a link event\"): 29–34 ms on this 2-CPU VM, 0.26–0.34 ms with the kernel's \
             `/sys/kernel/rcu_expedited` set to 1 (a host-wide setting, tried only to find the cause and not set by lb). Attaching both hooks \
             from two threads gains nothing: the rtnl lock serialises them.\n\n",
            b.pods,
            crate::b7::POLL.as_micros()
        );
    }
    md.push_str("## B5: Maglev table build\n\n");
    match &r.b5 {
        Some(t) => md.push_str(t),
        None => md.push_str("Not run.\n"),
    }
    md.push('\n');
    if !plots.is_empty() {
        md.push_str("## Plots\n\n");
        for p in plots {
            let _ = writeln!(md, "![{p}]({p})\n");
        }
    }
    md
}

/// The tables as printed at the end of a run.
pub fn print(r: &Report) {
    println!("\n== Goals ==\n{}", goals(r));
    if let Some(rows) = &r.b1 {
        println!("== B1: per-packet cost ==\n{}", b1_table(rows));
    }
    if let Some(rows) = &r.b2 {
        println!("== B2: connection latency ==\n{}", b2_table(rows));
    }
    if let Some(b) = &r.b3 {
        println!("== B3: programming time ==\n{}", b3_table(b));
    }
    if let Some(rows) = &r.b4 {
        let s = r.options.b4.as_ref().map(|o| o.seconds).unwrap_or(1.0);
        println!("== B4: throughput ==\n{}", b4_table(rows, s));
    }
    if let Some(b) = &r.b6 {
        println!("== B6: churn ==\n{}", b6_table(b));
    }
    if let Some(b) = &r.b7 {
        println!("== B7: new pod interfaces ==\n{}", b7_table(b));
    }
    if let Some(t) = &r.b5 {
        println!("== B5: Maglev ==\n{t}")
    }
}

/// B2's goal rows. lb's figure in each is its better configuration (with
/// or without BPF host routing, named), as in B4's; the other one's figure
/// follows it, so the row shows both.
fn b2_goals(t: &mut String, rows: &[B2Row]) {
    let lbs: Vec<Kind> = [Kind::Ours, Kind::OursHostRouting].into_iter().filter(|&k| rows.iter().any(|r| r.kind == k)).collect();
    let mut ns: Vec<usize> = rows.iter().filter(|r| r.kind.is_ours()).map(|r| r.services).collect();
    ns.sort_unstable();
    ns.dedup();
    let (Some(&min), Some(&max)) = (ns.first(), ns.last()) else { return };
    let stat = |n: usize, k: Kind, p: Position, pick: fn(&B2Row) -> f64| {
        rows.iter().find(|r| r.kind == k && r.services == n && r.position == p && r.note.is_none()).map(pick)
    };
    let p50 = |n: usize, k: Kind, p: Position| stat(n, k, p, |r| r.request.p50);
    // The worst of the first and the last service (0: not measured).
    let p99 =
        |n: usize, k: Kind| [Position::First, Position::Last].iter().filter_map(|&p| stat(n, k, p, |r| r.request.p99)).fold(0.0, f64::max);
    // lb's configuration with the smallest `score` (None: no figure).
    let pick = |score: &dyn Fn(Kind) -> Option<f64>| lbs.iter().filter_map(|&k| Some((k, score(k)?))).min_by(|a, b| a.1.total_cmp(&b.1));
    // The picked configuration's score, and the row text: its figure, then
    // the other's.
    let best = |score: &dyn Fn(Kind) -> Option<f64>, text: &dyn Fn(Kind) -> String| {
        let chosen = pick(score);
        let first = chosen.map(|(k, _)| k);
        let order = first.into_iter().chain(lbs.iter().copied().filter(|&k| Some(k) != first));
        let shown = order.map(|k| format!("{k}: {}", text(k))).collect::<Vec<_>>().join("; ");
        (chosen.map(|(_, v)| v), shown)
    };

    if min != max {
        let growth = |k: Kind| {
            let (a, b) = (p99(min, k), p99(max, k));
            (a > 0.0 && b > 0.0).then(|| b / a - 1.0)
        };
        let text = |k: Kind| match growth(k) {
            Some(g) => format!("{:.0} → {:.0} µs ({:+.0} %)", p99(min, k), p99(max, k), g * 100.0),
            None => "n/a".to_string(),
        };
        let (g, shown) = best(&growth, &text);
        let _ = writeln!(
            t,
            "| B2: flat across N (p99, worst of first/last, grows ≤ 25 % from {} to {}) | {shown} | {} |",
            fmt_count(min as f64),
            fmt_count(max as f64),
            g.map_or("n/a", |g| pass(g <= 0.25))
        );
    }

    // What each datapath adds to a connection: its p50 to the last service
    // less its p50 straight to a backend pod.
    let added = |n: usize, k: Kind| Some(p50(n, k, Position::Last)? - p50(n, k, Position::Direct)?);
    let added_text = |k: Kind| {
        ns.iter()
            .map(|&n| match added(n, k) {
                Some(a) => format!("{a:+.0} µs at {}", fmt_count(n as f64)),
                None => format!("n/a at {}", fmt_count(n as f64)),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let worst_added =
        |k: Kind| ns.iter().map(|&n| added(n, k)).collect::<Option<Vec<f64>>>().map(|v| v.into_iter().fold(f64::MIN, f64::max));
    let (worst, shown) = best(&worst_added, &added_text);
    let _ = writeln!(
        t,
        "| B2: lb adds ≤ 5 µs p50 to a connection at every N (last service less direct to a backend pod) | {shown} (iptables: {}) | {} |",
        added_text(Kind::Iptables),
        worst.map_or("n/a", |w| pass(w <= 5.0))
    );

    // p50 below every baseline at every N: lb's worse service (first or
    // last) against the best service of any baseline measured there.
    let baselines = [Kind::Iptables, Kind::IptablesLegacy, Kind::Nftables];
    let lb_p50 = |n: usize, k: Kind| Some(p50(n, k, Position::First)?.max(p50(n, k, Position::Last)?));
    let base_p50 = |n: usize| {
        baselines
            .iter()
            .flat_map(|&b| [Position::First, Position::Last].map(|p| p50(n, b, p).map(|v| (v, b))))
            .flatten()
            .min_by(|a, b| a.0.total_cmp(&b.0))
    };
    // Positive: lb is above the baselines' best somewhere.
    let margin = |k: Kind| {
        ns.iter()
            .map(|&n| Some(lb_p50(n, k)? - base_p50(n)?.0))
            .collect::<Option<Vec<f64>>>()
            .map(|v| v.into_iter().fold(f64::MIN, f64::max))
    };
    let margin_text = |k: Kind| {
        ns.iter()
            .map(|&n| match (lb_p50(n, k), base_p50(n)) {
                (Some(o), Some((b, kind))) => format!("{o:.0} against {b:.0} µs ({kind}) at {}", fmt_count(n as f64)),
                _ => format!("n/a at {}", fmt_count(n as f64)),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (m, shown) = best(&margin, &margin_text);
    let _ = writeln!(
        t,
        "| B2: p50 below all three baselines at every N (lb's worse of first/last against the best baseline service measured) | {shown} | {} |",
        m.map_or("n/a", |m| pass(m < 0.0))
    );

    let at = if ns.contains(&10_000) { 10_000 } else { max };
    let ours = pick(&|k| Some(p99(at, k)).filter(|&v| v > 0.0));
    let ours_text = ours.map_or_else(|| "lb not measured".to_string(), |(k, v)| format!("{k} {v:.0} µs"));
    let o = ours.map_or(0.0, |(_, v)| v);
    let fig = |v: f64| if v > 0.0 { format!("{v:.0} µs") } else { "not measured (its rules did not load within the budget)".to_string() };
    for k in [Kind::Iptables, Kind::IptablesLegacy] {
        let i = p99(at, k);
        let _ = writeln!(
            t,
            "| B2: at {} services, p99 ≥ 5× better than {k} | {ours_text}, iptables {}{} | {} |",
            fmt_count(at as f64),
            fig(i),
            if i > 0.0 && o > 0.0 { format!(" ({:.1}×)", i / o) } else { String::new() },
            if i > 0.0 && o > 0.0 { pass(i >= 5.0 * o) } else { "n/a" }
        );
    }
    let n = p99(at, Kind::Nftables);
    let _ = writeln!(
        t,
        "| B2: at {} services, p99 no worse than nftables (within 5 %) | {ours_text}, nftables {} | {} |",
        fmt_count(at as f64),
        fig(n),
        if n > 0.0 && o > 0.0 { pass(o <= n * 1.05) } else { "n/a" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b2::Pcts;

    fn row(kind: Kind, services: usize, position: Position, p50: f64) -> B2Row {
        let p = Pcts { p50, p90: p50, p99: p50 };
        B2Row {
            kind,
            services,
            position,
            request: p,
            connect: p,
            connections: 100,
            failures: 0,
            install: std::time::Duration::ZERO,
            note: None,
        }
    }

    /// The B2 floor goal: each datapath's p50 to the last service less its
    /// p50 straight to a backend pod, at every N.
    #[test]
    fn b2_added_latency_is_last_less_direct() {
        let mut r = Report::new(&Options::tiny());
        let mut rows = Vec::new();
        for (n, ours_last, ipt_last) in [(10, 93.0, 100.0), (1000, 96.0, 140.0)] {
            rows.push(row(Kind::Ours, n, Position::First, 95.0));
            rows.push(row(Kind::Ours, n, Position::Last, ours_last));
            rows.push(row(Kind::Ours, n, Position::Direct, 90.0));
            rows.push(row(Kind::Iptables, n, Position::Last, ipt_last));
            rows.push(row(Kind::Iptables, n, Position::Direct, 91.0));
        }
        r.b2 = Some(rows.clone());
        let g = goals(&r);
        let line = g.lines().find(|l| l.contains("lb adds ≤ 5 µs")).expect("the B2 floor goal");
        assert!(line.contains("+3 µs at 10, +6 µs at 1k"), "{line}");
        assert!(line.contains("iptables: +9 µs at 10, +49 µs at 1k"), "{line}");
        assert!(line.ends_with("| MISS |"), "{line}");
        rows.retain(|r| !(r.kind == Kind::Ours && r.services == 1000 && r.position == Position::Last));
        rows.push(row(Kind::Ours, 1000, Position::Last, 94.0));
        r.b2 = Some(rows);
        let line = goals(&r).lines().find(|l| l.contains("lb adds ≤ 5 µs")).unwrap().to_string();
        assert!(line.ends_with("| PASS |"), "{line}");
    }

    /// B2's goals take lb's better configuration, named first, and show
    /// the other's figure after it; the p50 goal holds lb's worse service
    /// against the best baseline service at every N.
    #[test]
    fn b2_goals_name_lbs_better_configuration_and_show_both() {
        let mut r = Report::new(&Options::tiny());
        let mut rows = Vec::new();
        for (n, plain, routed, nft) in [(1000, 116.0, 100.0, 125.0), (10_000, 130.0, 107.0, 121.0)] {
            for (k, v) in [(Kind::Ours, plain), (Kind::OursHostRouting, routed), (Kind::Nftables, nft)] {
                rows.push(row(k, n, Position::First, v));
                rows.push(row(k, n, Position::Last, v - 1.0));
                rows.push(row(k, n, Position::Direct, 105.0));
            }
        }
        r.b2 = Some(rows.clone());
        let g = goals(&r);
        let find = |what: &str| g.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("no {what:?} row in\n{g}")).to_string();
        let line = find("p50 below all three baselines");
        assert!(
            line.contains("| lb (tc eBPF, BPF host routing): 100 against 124 µs (kube-proxy nftables) at 1k, 107 against 120 µs (kube-proxy nftables) at 10k; lb (tc eBPF): 116 against 124"),
            "{line}"
        );
        assert!(line.ends_with("| PASS |"), "{line}");
        let line = find("lb adds ≤ 5 µs");
        assert!(
            line.contains("| lb (tc eBPF, BPF host routing): -6 µs at 1k, +1 µs at 10k; lb (tc eBPF): +10 µs at 1k, +24 µs at 10k"),
            "{line}"
        );
        assert!(line.ends_with("| PASS |"), "{line}");
        let line = find("p99 no worse than nftables");
        assert!(line.contains("lb (tc eBPF, BPF host routing) 107 µs, nftables 121 µs"), "{line}");
        assert!(line.ends_with("| PASS |"), "{line}");
        // Without the host-routing rows, the plain one decides (and misses
        // at 10k: 130 against 120).
        rows.retain(|r| r.kind != Kind::OursHostRouting);
        r.b2 = Some(rows);
        let g = goals(&r);
        let line = g.lines().find(|l| l.contains("p50 below all three baselines")).unwrap();
        assert!(line.contains("| lb (tc eBPF): 116 against 124 µs (kube-proxy nftables) at 1k, 130 against 120"), "{line}");
        assert!(line.ends_with("| MISS |"), "{line}");
    }

    fn b6_row(kind: Kind, steps: usize, p99_us: f64, cpu_s: f64) -> B6Row {
        B6Row {
            kind,
            steps,
            syncs: steps,
            failed: 0,
            cpu: std::time::Duration::from_secs_f64(cpu_s),
            sync: Pcts { p50: p99_us, p90: p99_us, p99: p99_us },
            latency: None,
            wall: std::time::Duration::ZERO,
            notes: Vec::new(),
            problems: Vec::new(),
            stopped_at: None,
            error: None,
            not_run: None,
        }
    }

    fn stopped(mut r: B6Row) -> B6Row {
        r.stopped_at = Some(r.steps);
        r.problems.push(format!("stopped after {} of 300 steps: the churn's budget of 200 s was spent", r.steps));
        r
    }

    /// B6's goals compare lb with the baselines whose churn its budget
    /// stopped (over the steps they ran, named so), leave out one whose
    /// rules failed their check, and say n/a when no baseline is left
    /// (the rows were missing from the page then).
    #[test]
    fn b6_goals_count_stopped_baselines_and_never_vanish() {
        let mut r = Report::new(&Options::tiny());
        let b6 = |rows: Vec<B6Row>| crate::b6::B6Result {
            base_services: 10_000,
            steps: 300,
            churn_max: 0,
            churn_added: 0,
            churn_removed: 0,
            rows,
        };
        let ours = b6_row(Kind::Ours, 300, 29_000.0, 6.0);
        let nft = stopped(b6_row(Kind::Nftables, 223, 1_000_000.0, 195.0));
        let mut legacy = b6_row(Kind::IptablesLegacy, 300, 900_000.0, 150.0);
        legacy.problems.push("check failed: 3 rules missing".into());
        r.b6 = Some(b6(vec![ours.clone(), nft.clone(), legacy.clone()]));
        let g = goals(&r);
        let find =
            |g: &str, what: &str| g.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("no {what:?} row in\n{g}")).to_string();
        let line = find(&g, "B6: p99 sync time");
        assert!(line.contains("| ours 29 ms (`apply_us`); kube-proxy nftables (stopped after 223 of 300 steps) 1.00 s |"), "{line}");
        assert!(line.ends_with("| PASS |"), "{line}");
        let line = find(&g, "B6: agent CPU per churn step");
        assert!(line.contains("| ours 20 ms; kube-proxy nftables (stopped after 223 of 300 steps) 874 ms |"), "{line}");
        assert!(line.ends_with("| PASS |"), "{line}");
        r.b6 = Some(b6(vec![ours, legacy]));
        let g = goals(&r);
        for what in ["B6: p99 sync time", "B6: agent CPU per churn step"] {
            assert!(find(&g, what).ends_with("| no kube-proxy mode measured a step (see the B6 table) | n/a |"), "{g}");
        }
    }
}
