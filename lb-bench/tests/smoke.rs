//! Smoke test: the whole harness at a tiny size (N = 10, repeat = 1000, a
//! few connections, two seconds of churn), writing into a temporary
//! directory. It checks that
//! every benchmark runs and the report and plots are written; it asserts
//! no timing.

use std::path::PathBuf;

use lb_bench::b4::B4Path;

/// Whether the kernel tests can run. Without root they are skipped, except
/// under CI (`CI=true`), where they must fail instead.
fn kernel_tests_enabled() -> bool {
    match lb_lab::require_root() {
        Ok(()) => true,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true and the benchmark smoke test cannot run: {e:#}")
        }
        Err(e) => {
            eprintln!("SKIPPED (needs root and iproute2): {e:#}");
            false
        }
    }
}

#[test]
fn harness_runs_at_a_tiny_size() {
    if !kernel_tests_enabled() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("lb-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut o = lb_bench::Options::tiny();
    // `cargo test --workspace` builds lb-agent next to this test's deps
    // directory; use it for B3's and B6's agent runs when it is there.
    o.agent_bin = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.parent()?.join("lb-agent"))).filter(|p| p.exists());
    let r = lb_bench::run_all(&o, &dir).expect("the benchmarks run");
    assert_eq!(r.b1.as_ref().map(Vec::len), Some(2));
    // Each service count measured the IPv6 NodePort paths (XDP, local and
    // remote backend) beside the IPv4 ones, and the IPv4 ones in tc.
    for row in r.b1.as_deref().unwrap_or_default() {
        assert!(row.xdp6.is_some(), "B1 at {}: no IPv6 NodePort figures", row.services);
        // And the IPv4 NodePort paths in tc (`--xdp-mode tc`).
        assert!(row.tc_ns.is_some(), "B1 at {}: no tc north-south figures", row.services);
        assert!(row.xdp6_ratios().is_some());
    }
    let kinds = lb_bench::dp::Kind::ALL.len();
    assert_eq!(r.b2.as_ref().map(Vec::len), Some(lb_bench::dp::Kind::B2.len() * 3), "every B2 datapath x first/last/direct");
    assert!(r.b3.is_some());
    // B4: every datapath on the ClusterIP path (lb with and without BPF
    // host routing), on both NodePort paths and the passed one, lb there
    // six times (XDP auto and native, and the tc path, without and with
    // BPF host routing); each row saw its UDP datagrams and TCP bytes
    // arrive.
    let b4 = r.b4.as_ref().expect("B4 ran");
    let east_west = lb_bench::dp::Kind::B2.len();
    for (path, n) in [
        (B4Path::ClusterIp, east_west),
        (B4Path::NodePortLocal, kinds + 5),
        (B4Path::NodePortRemote, kinds + 5),
        (B4Path::Passed, kinds + 5),
    ] {
        assert_eq!(b4.iter().filter(|row| row.path == path).count(), n, "B4 rows on {path}");
    }
    let modes: Vec<&str> = b4.iter().filter_map(|row| row.xdp.as_deref()).collect();
    assert_eq!(modes.len(), 18, "lb's north-south rows say which XDP mode ran: {modes:?}");
    assert_eq!(modes.iter().filter(|m| m.starts_with("native, --xdp-mode native")).count(), 6, "{modes:?}");
    assert_eq!(modes.iter().filter(|m| m.starts_with("tc, --xdp-mode tc")).count(), 6, "{modes:?}");
    // B6: every datapath has its row; every baseline sync of the churn
    // loaded and the rules held the Services after it; the agent ran when
    // there is one.
    let b6 = r.b6.as_ref().expect("B6 ran");
    assert_eq!(b6.rows.len(), kinds);
    for row in &b6.rows {
        let runs = row.kind != lb_bench::dp::Kind::Ours || o.agent_bin.is_some();
        if !runs {
            assert!(row.not_run.is_some(), "{}: no agent binary, yet it ran", row.kind);
            continue;
        }
        assert_eq!(row.not_run, None, "{}", row.kind);
        assert_eq!(row.failed, 0, "{}: failed syncs: {:?}", row.kind, row.error);
        assert!(row.problems.is_empty(), "{}: {:?}", row.kind, row.problems);
        assert_eq!(row.steps, b6.steps, "{}", row.kind);
        assert!(row.syncs > 0, "{}: no sync", row.kind);
    }
    let md = std::fs::read_to_string(dir.join("benchmarks.md")).unwrap();
    for section in ["## B1", "## B2", "## B3", "## B4", "## B5", "## B6", "## Goals"] {
        assert!(md.contains(section), "report lacks {section}");
    }
    // B1's table: per service count, the two IPv6 NodePort rows; the goals
    // their ratio to IPv4.
    assert_eq!(md.matches("| NodePort, IPv6 (XDP").count(), 2 * 2, "B1's IPv6 NodePort rows");
    assert!(md.contains("| B1: NodePort (XDP) over IPv6 vs IPv4 (same run) | local backend:"), "B1's IPv6 NodePort ratio");
    for png in ["bench-b1-per-packet.png", "bench-b2-latency.png", "bench-b3-programming.png", "bench-b4-throughput.png"] {
        let bytes = std::fs::read(dir.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(bytes.starts_with(b"\x89PNG"), "{png} is not a PNG");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
