//! The operator's view: per-frontend counters counted by the programs, and
//! the CLI (`list`, `ct`, `stats`, `status`, `explain`) run as the real
//! binary against maps a real reconciler wrote and real packets went
//! through (BPF_PROG_TEST_RUN). `explain` is held to what the programs do
//! with the same packet.

mod common;

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path, process::Command};

use aya::programs::Xdp;
use common::{Loaded, cli, frontend, kernel_tests_enabled, sa};
use lb_agent::{
    datapath::XDP_PROGRAM,
    model::{Cidr, Desired, FrontendAddr, Protocol},
};
use lb_common::{stat, svc_flags};
use lb_lab::testrun::{self, TC_ACT_REDIRECT, TC_ACT_UNSPEC, XDP_DROP};
use serde_json::Value;

/// The destination `ip:port` of an Ethernet/IPv4 (no options) packet.
fn dst_of(p: &[u8]) -> String {
    format!("{}:{}", Ipv4Addr::new(p[30], p[31], p[32], p[33]), u16::from_be_bytes([p[36], p[37]]))
}

fn with_flags(mut fe: (FrontendAddr, lb_agent::model::Frontend), flags: u32, affinity: u32) -> (FrontendAddr, lb_agent::model::Frontend) {
    fe.1.flags = flags;
    fe.1.affinity_timeout = affinity;
    fe
}

/// The entry at the same address for clients inside the cluster.
fn in_cluster(mut fe: (FrontendAddr, lb_agent::model::Frontend)) -> (FrontendAddr, lb_agent::model::Frontend) {
    fe.0 = fe.0.internal();
    fe.1.addr = fe.0;
    fe
}

fn desired() -> Desired {
    [
        frontend("10.96.0.10:80", Protocol::Tcp, &["10.244.0.12:8080"]),
        frontend("10.96.0.20:80", Protocol::Tcp, &[]),
        frontend("10.96.0.30:80", Protocol::Tcp, &["10.244.0.13:8080", "10.244.0.14:8080", "10.244.0.15:8080"]),
        with_flags(
            frontend("10.96.0.40:80", Protocol::Tcp, &["10.244.0.13:8080", "10.244.0.14:8080", "10.244.0.15:8080"]),
            svc_flags::MAGLEV,
            0,
        ),
        with_flags(
            frontend("10.96.0.50:80", Protocol::Tcp, &["10.244.0.13:8080", "10.244.0.14:8080", "10.244.0.15:8080"]),
            svc_flags::AFFINITY,
            600,
        ),
        with_flags(
            frontend("192.168.60.10:80", Protocol::Tcp, &["10.244.0.16:8080"]),
            svc_flags::LOAD_BALANCER | svc_flags::SOURCE_RANGES,
            0,
        ),
        // An externalTrafficPolicy: Local external IP without an endpoint
        // on this node, and its entry for clients inside the cluster.
        with_flags(
            frontend("192.168.60.5:80", Protocol::Tcp, &[]),
            svc_flags::EXTERNAL_IP | svc_flags::EXT_LOCAL | svc_flags::HAS_INTERNAL,
            0,
        ),
        in_cluster(with_flags(frontend("192.168.60.5:80", Protocol::Tcp, &["10.244.0.17:8080"]), svc_flags::EXTERNAL_IP, 0)),
    ]
    .into_iter()
    .collect()
}

fn loaded(tag: &str) -> Loaded {
    let mut l = Loaded::new(tag, desired());
    let lb = FrontendAddr::new("192.168.60.10".parse().unwrap(), 80, Protocol::Tcp);
    let ranges: BTreeMap<FrontendAddr, Vec<Cidr>> = [(lb, vec!["192.168.50.0/24".parse().unwrap()])].into_iter().collect();
    let mut stats = Default::default();
    l.reconciler.apply_source_ranges(&ranges, &mut stats);
    l
}

fn frontend_id(pins: &Path, frontend: &str) -> u64 {
    let v = cli(pins, &["list", "--frontend", frontend]);
    let rows = v["frontends"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{frontend}: {v}");
    rows[0]["id"].as_u64().unwrap()
}

#[test]
fn frontend_counters_and_the_cli() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("counters");
    let pins = l.pins.0.clone();
    let (client, fe) = (sa("10.244.0.11:40000"), sa("10.96.0.10:80"));
    let syn = testrun::tcp(client, fe, "S", 1, b"");
    let ack = testrun::tcp(client, fe, "A", 2, b"hello");
    assert_eq!(l.run(&syn).verdict, TC_ACT_UNSPEC);
    assert_eq!(l.run(&ack).verdict, TC_ACT_UNSPEC);
    // No endpoints: rejected, counted under its reason, not per frontend.
    assert_eq!(l.run(&testrun::tcp(client, sa("10.96.0.20:80"), "S", 1, b"")).verdict, TC_ACT_REDIRECT);

    // list: the frontend's counters, policies and backends.
    let v = cli(&pins, &["list", "--frontend", "10.96.0.10:80"]);
    let rows = v["frontends"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    let r = &rows[0];
    assert_eq!(r["frontend"], "10.96.0.10:80/TCP");
    assert_eq!(r["packets"], 2, "{r}");
    assert_eq!(r["new_flows"], 1, "{r}");
    assert_eq!(r["bytes"], (syn.len() + ack.len()) as u64, "{r}");
    assert_eq!((r["scope"].as_str(), r["policy"].as_str(), r["selection"].as_str()), (Some("external"), Some("Cluster"), Some("random")));
    assert_eq!(r["backends"][0], "10.244.0.12:8080");
    let maglev = &cli(&pins, &["list", "--frontend", "10.96.0.40:80"])["frontends"][0];
    assert_eq!(maglev["selection"], "maglev");
    assert_eq!(maglev["packets"], 0);
    let affinity = &cli(&pins, &["list", "--frontend", "10.96.0.50:80/TCP"])["frontends"][0];
    assert_eq!(affinity["affinity_timeout_s"], 600);
    let by_service = cli(&pins, &["list", "--service", "test/10.96.0.30"]);
    assert_eq!(by_service["frontends"].as_array().unwrap().len(), 1, "{by_service}");
    assert_eq!(cli(&pins, &["list"])["frontends"].as_array().unwrap().len(), 8);

    // ct: both directions of the flow, established, NATed to the backend.
    let v = cli(&pins, &["ct", "--addr", "10.244.0.12"]);
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{v}");
    let fwd = entries.iter().find(|e| e["direction"] == "service").unwrap();
    assert_eq!((fwd["src"].as_str(), fwd["dst"].as_str()), (Some("10.244.0.11:40000"), Some("10.96.0.10:80")));
    assert_eq!(fwd["nat_dst"], "10.244.0.12:8080");
    assert_eq!(fwd["state"], "tcp_established");
    assert_eq!(fwd["service"], "test/10.96.0.10:80");
    assert!(fwd["age_s"].as_u64().unwrap() < 60);
    assert_eq!(cli(&pins, &["ct", "--port", "9999"])["entries"].as_array().unwrap().len(), 0);

    // stats: reasons, per-Service counters, fill levels.
    let v = cli(&pins, &["stats"]);
    let reason = |name: &str| v["reasons"].as_array().unwrap().iter().find(|r| r["reason"] == name).cloned().unwrap();
    assert_eq!(reason("reject_no_backend")["packets"], 1);
    assert_eq!(reason("reject_no_backend")["drop"], true);
    assert_eq!(reason("drop_source_range")["packets"], 0);
    let svc = v["services"].as_array().unwrap().iter().find(|s| s["service"] == "test/10.96.0.10").cloned().unwrap();
    assert_eq!((svc["packets"].as_u64(), svc["new_flows"].as_u64()), (Some(2), Some(1)));
    let ct_fill = v["maps"].as_array().unwrap().iter().find(|m| m["map"] == "LB4_CT_TCP").cloned().unwrap();
    assert_eq!((ct_fill["entries"].as_u64(), ct_fill["max_entries"].as_u64()), (Some(2), Some(4096)));
    let services = v["maps"].as_array().unwrap().iter().find(|m| m["map"] == "LB4_SERVICES").cloned().unwrap();
    assert_eq!(services["entries"], 8);

    // status: every map pinned with its size, the version.
    let v = cli(&pins, &["status"]);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["ready"], true);
    assert_eq!(v["missing_maps"].as_array().unwrap().len(), 0, "{v}");
    let fe_stats = v["maps"].as_array().unwrap().iter().find(|m| m["name"] == "LB_FE_STATS").cloned().unwrap();
    assert_eq!(fe_stats["max_entries"], 64, "sized as the frontend maps");
    assert_eq!(l.stat(stat::REJECT_NO_BACKEND), 1);
}

/// Explains a packet through the binary.
fn explain(pins: &Path, hook: &str, src: &str, dst: &str, flags: &str) -> Value {
    cli(pins, &["explain", "tcp", src, dst, "--hook", hook, "--tcp-flags", flags])
}

#[test]
fn explain_agrees_with_the_programs() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("explain");
    let pins = l.pins.0.clone();

    // No frontend at the address: passes untouched.
    let x = explain(&pins, "pod", "10.244.0.11:40000", "10.1.2.3:80", "S");
    assert_eq!(x["verdict"], "pass", "{x}");
    let p = testrun::tcp(sa("10.244.0.11:40000"), sa("10.1.2.3:80"), "S", 1, b"");
    let out = l.run(&p);
    assert_eq!((out.verdict, &out.packet), (TC_ACT_UNSPEC, &p));

    // No endpoints: rejected.
    let x = explain(&pins, "pod", "10.244.0.11:40001", "10.96.0.20:80", "S");
    assert_eq!((x["verdict"].as_str(), x["reason"].as_str()), (Some("reject"), Some("reject_no_backend")), "{x}");
    let before = l.stat(stat::REJECT_NO_BACKEND);
    assert_eq!(l.run(&testrun::tcp(sa("10.244.0.11:40001"), sa("10.96.0.20:80"), "S", 1, b"")).verdict, TC_ACT_REDIRECT);
    assert_eq!(l.stat(stat::REJECT_NO_BACKEND), before + 1);

    // A ClusterIP on a port no Service defines: rejected too.
    let x = explain(&pins, "pod", "10.244.0.11:40001", "10.96.0.10:81", "S");
    assert_eq!((x["verdict"].as_str(), x["reason"].as_str()), (Some("reject"), Some("reject_unserved_port")), "{x}");
    assert_eq!(l.run(&testrun::tcp(sa("10.244.0.11:40001"), sa("10.96.0.10:81"), "S", 1, b"")).verdict, TC_ACT_REDIRECT);

    // Random pick: any of the candidates; then the conntrack hit names the
    // one the program took.
    let (client, fe) = ("10.244.0.11:40002", "10.96.0.30:80");
    let x = explain(&pins, "pod", client, fe, "S");
    assert_eq!((x["verdict"].as_str(), x["selection"].as_str()), (Some("translate"), Some("random")), "{x}");
    let candidates: Vec<String> = x["candidates"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    assert_eq!(candidates.len(), 3);
    let out = l.run(&testrun::tcp(sa(client), sa(fe), "S", 1, b""));
    let picked = dst_of(&out.packet);
    assert!(candidates.contains(&picked), "{picked} not in {candidates:?}");
    let x = explain(&pins, "pod", client, fe, "A");
    assert_eq!((x["selection"].as_str(), x["backend"].as_str()), (Some("conntrack"), Some(picked.as_str())), "{x}");
    assert_eq!(dst_of(&l.run(&testrun::tcp(sa(client), sa(fe), "A", 2, b"")).packet), picked);

    // Maglev: the slot's backend, for several clients.
    for port in 41000..41006 {
        let client = format!("10.244.0.11:{port}");
        let x = explain(&pins, "pod", &client, "10.96.0.40:80", "S");
        assert_eq!(x["selection"], "maglev", "{x}");
        let want = x["backend"].as_str().unwrap().to_string();
        let out = l.run(&testrun::tcp(sa(&client), sa("10.96.0.40:80"), "S", 1, b""));
        assert_eq!(dst_of(&out.packet), want, "{client}: {x}");
    }

    // Affinity: a new flow of a client that already has a backend.
    let out = l.run(&testrun::tcp(sa("10.244.0.21:42000"), sa("10.96.0.50:80"), "S", 1, b""));
    let first = dst_of(&out.packet);
    for port in 42001..42004 {
        let client = format!("10.244.0.21:{port}");
        let x = explain(&pins, "pod", &client, "10.96.0.50:80", "S");
        assert_eq!((x["selection"].as_str(), x["backend"].as_str()), (Some("affinity"), Some(first.as_str())), "{x}");
        assert_eq!(dst_of(&l.run(&testrun::tcp(sa(&client), sa("10.96.0.50:80"), "S", 1, b"")).packet), first);
    }

    // Source ranges (XDP, from outside): a client outside is dropped.
    let x = explain(&pins, "external", "10.9.9.9:5000", "192.168.60.10:80", "S");
    assert_eq!((x["verdict"].as_str(), x["reason"].as_str()), (Some("drop"), Some("drop_source_range")), "{x}");
    let before = l.stat(stat::DROP_SOURCE_RANGE);
    let xdp: &mut Xdp = l.dp.ebpf.program_mut(XDP_PROGRAM).unwrap().try_into().unwrap();
    let frame = testrun::tcp(sa("10.9.9.9:5000"), sa("192.168.60.10:80"), "S", 1, b"");
    assert_eq!(testrun::run_xdp(xdp, &frame, 1).unwrap().verdict, XDP_DROP);
    assert_eq!(l.stat(stat::DROP_SOURCE_RANGE), before + 1);
    let x = explain(&pins, "external", "192.168.50.7:5000", "192.168.60.10:80", "S");
    assert_eq!((x["verdict"].as_str(), x["backend"].as_str()), (Some("translate"), Some("10.244.0.16:8080")), "{x}");

    // externalTrafficPolicy: Local holds only for traffic from outside: a
    // pod gets the in-cluster entry's endpoint, a client outside is
    // dropped (no endpoint on this node).
    let x = explain(&pins, "pod", "10.244.0.11:43000", "192.168.60.5:80", "S");
    assert_eq!((x["verdict"].as_str(), x["backend"].as_str()), (Some("translate"), Some("10.244.0.17:8080")), "{x}");
    let out = l.run(&testrun::tcp(sa("10.244.0.11:43000"), sa("192.168.60.5:80"), "S", 1, b""));
    assert_eq!((out.verdict, dst_of(&out.packet)), (TC_ACT_UNSPEC, "10.244.0.17:8080".to_string()));
    let x = explain(&pins, "external", "192.168.50.7:5001", "192.168.60.5:80", "S");
    assert_eq!((x["verdict"].as_str(), x["reason"].as_str()), (Some("drop"), Some("drop_no_local_backend")), "{x}");
    let before = l.stat(stat::DROP_NO_LOCAL_BACKEND);
    let xdp: &mut Xdp = l.dp.ebpf.program_mut(XDP_PROGRAM).unwrap().try_into().unwrap();
    let frame = testrun::tcp(sa("192.168.50.7:5001"), sa("192.168.60.5:80"), "S", 1, b"");
    assert_eq!(testrun::run_xdp(xdp, &frame, 1).unwrap().verdict, XDP_DROP);
    assert_eq!(l.stat(stat::DROP_NO_LOCAL_BACKEND), before + 1);
    // `list` shows both entries.
    let rows = cli(&pins, &["list", "--frontend", "192.168.60.5:80"]);
    let scopes: Vec<(String, String, usize)> = rows["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["scope"].as_str().unwrap().into(), r["policy"].as_str().unwrap().into(), r["backends"].as_array().unwrap().len()))
        .collect();
    assert_eq!(scopes, [("external".into(), "Local".into(), 0), ("internal".into(), "Cluster".into(), 1)], "{rows}");

    // Per-frontend counters saw every translated packet of the Maglev
    // frontend.
    let id = frontend_id(&pins, "10.96.0.40:80");
    let s = l.reconciler.maps().frontend_stats(id as u32).unwrap();
    assert_eq!((s.packets, s.new_flows), (6, 6));
}

#[test]
fn a_reused_frontend_id_starts_with_zero_counters() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = loaded("reuse");
    let pins = l.pins.0.clone();
    let client = sa("10.244.0.11:40000");
    let syn = testrun::tcp(client, sa("10.96.0.10:80"), "S", 1, b"");
    assert_eq!(l.run(&syn).verdict, TC_ACT_UNSPEC);
    let counted = frontend_id(&pins, "10.96.0.10:80") as u32;
    assert_eq!(l.reconciler.maps().frontend_stats(counted).unwrap().packets, 1);
    // Replace the frontend by others until one takes its ID (IDs go round).
    let mut base = desired();
    base.retain(|a, _| a.ip != Ipv4Addr::new(10, 96, 0, 10));
    for i in 1..200u8 {
        let mut d = base.clone();
        let (a, f) = frontend(&format!("10.97.0.{i}:80"), Protocol::Tcp, &["10.244.0.12:8080"]);
        d.insert(a, f);
        let stats = l.reconciler.apply(&d);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        if frontend_id(&pins, &format!("10.97.0.{i}:80")) as u32 == counted {
            let s = l.reconciler.maps().frontend_stats(counted).unwrap();
            assert_eq!((s.packets, s.bytes, s.new_flows), (0, 0, 0), "10.97.0.{i}:80 took ID {counted} over");
            return;
        }
    }
    panic!("no frontend took ID {counted} over");
}

/// `lb-agent status` on a directory whose link pin is no BPF object: it
/// warns, and its log is one JSON object a line with `--log-format json`,
/// plain text without escape codes on a pipe otherwise.
#[test]
fn logs_are_json_on_request_and_never_coloured_on_a_pipe() {
    let dir = std::env::temp_dir().join(format!("lb-logs-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("links")).unwrap();
    std::fs::write(dir.join("links").join("tcx-in-1"), b"not a link").unwrap();
    let run = |format: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_lb-agent"))
            .args(["status", "--log-format", format, "--bpffs"])
            .arg(&dir)
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stderr).unwrap()
    };
    let text = run("text");
    assert!(text.contains("WARN") && text.contains("tcx-in-1"), "{text}");
    assert!(!text.contains('\x1b'), "escape codes on a pipe: {text:?}");
    let json = run("json");
    let lines: Vec<&str> = json.lines().collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["level"], "WARN", "{v}");
        assert!(v["fields"]["message"].as_str().unwrap().contains("tcx-in-1"), "{v}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// IPv6 loadBalancerSourceRanges in the CLI: `list` names the ranges of
/// each family's frontends, `explain --hook external` checks an IPv6
/// client against `LB6_SRC_RANGES` (the fixtures in `xdp_packets.rs` hold
/// the program to the same).
#[test]
fn ipv6_source_ranges_in_list_and_explain() {
    if !kernel_tests_enabled() {
        return;
    }
    use lb_agent::model::{Backend, BackendAddr, Frontend};
    use std::net::Ipv6Addr;
    let mut l = loaded("v6-ranges");
    let pins = l.pins.0.clone();
    l.reconciler.set_node_name(Some("node-a".into()));
    let ip = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let fa = FrontendAddr::new(ip("fd00:61::10"), 80, Protocol::Tcp);
    let be = Backend {
        addr: BackendAddr { ip: ip("fd00:244:1::13"), port: 8080, proto: Protocol::Tcp },
        terminating: false,
        node_name: Some("node-a".into()),
        zone: None,
        hints: None,
    };
    let flags = svc_flags::LOAD_BALANCER | svc_flags::SOURCE_RANGES;
    let d6: Desired<Ipv6Addr> =
        [(fa, Frontend { addr: fa, name: "test/v6".into(), backends: vec![be], flags, affinity_timeout: 0 })].into_iter().collect();
    let mut stats = l.reconciler.apply_dual(&[&desired()], &[&d6]);
    let ranges: BTreeMap<FrontendAddr<Ipv6Addr>, Vec<Cidr>> = [(fa, vec!["fd00:50::/64".parse().unwrap()])].into();
    l.reconciler.apply_source_ranges(&ranges, &mut stats);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);

    let row = &cli(&pins, &["list", "--frontend", "[fd00:61::10]:80"])["frontends"][0];
    assert_eq!(row["source_ranges"], true, "{row}");
    assert_eq!(row["allowed_sources"], serde_json::json!(["fd00:50::/64"]), "{row}");
    let v4 = &cli(&pins, &["list", "--frontend", "192.168.60.10:80"])["frontends"][0];
    assert_eq!(v4["allowed_sources"], serde_json::json!(["192.168.50.0/24"]), "{v4}");

    let x = explain(&pins, "external", "[fd00:99::5]:40000", "[fd00:61::10]:80", "S");
    assert_eq!((x["verdict"].as_str(), x["reason"].as_str()), (Some("drop"), Some("drop_source_range")), "{x}");
    let x = explain(&pins, "external", "[fd00:50::64]:40000", "[fd00:61::10]:80", "S");
    assert_eq!((x["verdict"].as_str(), x["backend"].as_str()), (Some("translate"), Some("[fd00:244:1::13]:8080")), "{x}");
}
