//! B6's kube-proxy partial syncs, checked for real: every step of a churn
//! (with removals, renames, scale to zero and back, stale endpoints) loads
//! through `iptables-restore`, `iptables-legacy-restore` and `nft -f`
//! (exit 0), and afterwards the rules hold exactly the Services of that
//! step: one `KUBE-SERVICES` rule or `service-ips` element per Service, and
//! no chain left over from a removed Service or endpoint. Asserts no
//! timing.

use lb_bench::{b6, dp::Kind};

/// Whether the kernel tests can run. Without root they are skipped, except
/// under CI (`CI=true`), where they must fail instead.
fn kernel_tests_enabled() -> bool {
    match lb_lab::require_root() {
        Ok(()) => true,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true and the churn rule test cannot run: {e:#}")
        }
        Err(e) => {
            eprintln!("SKIPPED (needs root and iproute2): {e:#}");
            false
        }
    }
}

/// Service and endpoint chains in the namespace's kube-proxy rules.
fn chains(kind: Kind, ns: &lb_lab::Netns) -> (usize, usize) {
    let out = match kind {
        Kind::Nftables => {
            let mut cmd = ns.command("nft");
            // (nft 1.0.6 lists chains by family only; the table is ours.)
            cmd.args(["list", "chains", "ip"]);
            cmd.output()
        }
        _ => {
            let program = if kind == Kind::IptablesLegacy { "iptables-legacy" } else { "iptables" };
            let mut cmd = ns.command(program);
            cmd.args(["-t", "nat", "-S"]);
            cmd.output()
        }
    }
    .expect("listing the rules");
    let text = String::from_utf8_lossy(&out.stdout);
    let count = |prefix: &str| {
        text.lines()
            .filter(|l| {
                let l = l.trim_start();
                match kind {
                    // Per-service chains are `service-<hash>-ns/name/proto/port`
                    // (`service-endpoints-check` is a helper chain).
                    Kind::Nftables => l.strip_prefix("chain ").is_some_and(|c| c.starts_with(prefix) && c.contains('/')),
                    _ => l.strip_prefix("-N ").is_some_and(|c| c.starts_with(prefix)),
                }
            })
            .count()
    };
    match kind {
        Kind::Nftables => (count("service-"), count("endpoint-")),
        _ => (count("KUBE-SVC-"), count("KUBE-SEP-")),
    }
}

#[test]
fn every_churn_step_loads_and_leaves_exact_rules() {
    if !kernel_tests_enabled() {
        return;
    }
    let plan = b6::Plan::new(5, 120).expect("plan");
    for kind in [Kind::Iptables, Kind::IptablesLegacy, Kind::Nftables] {
        let ns = lb_lab::Netns::new("b6-rules").expect("netns");
        let load = |rules: &str, what: &str| {
            let mut cmd = b6::load_command(kind, &ns);
            if let Err(e) = lb_bench::sys::timed_stdin(&mut cmd, rules) {
                panic!("{kind}: {what} did not load: {e:#}\n{rules}");
            }
        };
        load(&plan.full_rules(kind), "the full ruleset");
        for (i, step) in plan.steps.iter().enumerate() {
            load(&plan.rules(kind, i), &format!("step {i}"));
            let svcs: Vec<_> = plan.base.iter().chain(&step.svcs).collect();
            b6::check_rules(kind, &ns, svcs.len()).unwrap_or_else(|e| panic!("step {i}: {e:#}"));
            let endpoints: usize = svcs.iter().map(|s| s.endpoints.len()).sum();
            assert_eq!(chains(kind, &ns), (svcs.len(), endpoints), "{kind}, step {i}: service and endpoint chains");
        }
    }
}
