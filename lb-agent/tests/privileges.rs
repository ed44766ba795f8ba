//! The smallest capability set the agent runs with, proven on a strict lab
//! node: with only `lb_agent::caps::NEEDED` in its bounding set (as a container with
//! `capabilities: {drop: [ALL], add: [...]}` gets, uid 0 but not
//! privileged) the agent loads, attaches, serves pods and host clients,
//! takes over its own links after a restart and uninstalls; without any
//! one of them it does not run (and says which it lacks). And with the
//! read-only /proc/sys of such a container, it sets the node's sysctls
//! through the writable mount the DaemonSet gives it.

mod common;

use std::{
    net::SocketAddrV4,
    process::Command,
    time::{Duration, Instant},
};

use common::{Agent, ManifestDir, PinDir, kernel_tests_enabled, service_yaml};
use lb_lab::{NodeLab, tcp_request, tcp_server};

/// What the agent needs (`lb_agent::caps::NEEDED`, documented there).
fn caps() -> Vec<String> {
    lb_agent::caps::container_names().iter().map(|c| c.to_lowercase()).collect()
}

fn setpriv(caps: &[String]) -> Vec<String> {
    let set: Vec<String> = std::iter::once("-all".to_string()).chain(caps.iter().map(|c| format!("+{c}"))).collect();
    vec!["setpriv".into(), format!("--bounding-set={}", set.join(",")), "--".into()]
}

/// A wrapper that runs the agent in a mount namespace of its own, after
/// `script` (`sh -ec`, with `args` as `$1`...; it ends with `exec "$@"`)
/// has laid out the mounts a container would see. unshare execs sh, which
/// execs the rest: one process, which the harness signals.
fn in_own_mounts(script: &str, args: &[&str]) -> Vec<String> {
    ["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec", script, "sh"].iter().chain(args).map(|s| s.to_string()).collect()
}

/// The capabilities of a running process (`CapEff` of its status).
fn effective_caps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

#[test]
fn the_agent_runs_with_bpf_perfmon_and_net_admin_only() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["client", "web"]).unwrap();
    let web = lab.pod("web");
    let _server = tcp_server(&web.ns, SocketAddrV4::new(web.ip, 8080), "web").unwrap();
    let dir = ManifestDir::new("caps");
    dir.write("web.yaml", &service_yaml("web", "10.96.0.30", 80, "TCP", 8080, &[web.ip]));
    let wrapper = setpriv(&caps());
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let vip = SocketAddrV4::new([10, 96, 0, 30].into(), 80);

    let agent = Agent::start_wrapped(&lab.node, &dir.0, PinDir::new("caps"), &wrapper, &[]);
    agent.wait_rows("the web service", |rows| rows.len() == 1 && rows[0].backends.len() == 1);
    // CAP_BPF 39, CAP_PERFMON 38, CAP_NET_ADMIN 12: nothing else.
    let eff = effective_caps(agent.pid().unwrap());
    assert_eq!(eff, (1 << 39) | (1 << 38) | (1 << 12), "CapEff {eff:#x}");
    assert!(!agent.log_text().contains("lb-agent needs"), "{}", agent.log_text());
    // A pod (tc) and a host client (socket hooks) are served.
    assert_eq!(tcp_request(&lab.pod("client").ns, vip).unwrap(), "web");
    assert_eq!(tcp_request(&lab.node, vip).unwrap(), "web");

    // A restart with the same capabilities takes the links over.
    let pins = agent.stop_keeping_pins(libc::SIGTERM);
    let agent = Agent::start_wrapped(&lab.node, &dir.0, pins, &wrapper, &[]);
    agent.wait_log("the links adopted", "tc programs attached: links adopted");
    assert_eq!(tcp_request(&lab.pod("client").ns, vip).unwrap(), "web");

    // And uninstall needs no more.
    let pins = agent.stop_keeping_pins(libc::SIGTERM);
    let out = Command::new(wrapper[0])
        .args(&wrapper[1..])
        .arg(env!("CARGO_BIN_EXE_lb-agent"))
        .args(["uninstall", "--bpffs"])
        .arg(&pins.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "uninstall: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!pins.0.exists());
}

#[test]
fn without_any_one_of_them_the_agent_does_not_run() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["web"]).unwrap();
    let web = lab.pod("web");
    let dir = ManifestDir::new("fewer-caps");
    dir.write("web.yaml", &service_yaml("web", "10.96.0.31", 80, "TCP", 8080, &[web.ip]));
    for missing in caps() {
        let fewer: Vec<String> = caps().into_iter().filter(|c| *c != missing).collect();
        let wrapper = setpriv(&fewer);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let mut agent = Agent::start_wrapped(&lab.node, &dir.0, PinDir::new(&format!("no-{missing}")), &wrapper, &[]);
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = agent.exited() {
                break status;
            }
            assert!(Instant::now() < deadline, "the agent runs without {missing}:\n{}", agent.log_text());
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = agent.log_text();
        assert!(!status.success(), "without {missing}: {status}\n{log}");
        // It says why (bpf: loading the object; perfmon, net_admin: loading
        // the tc programs), rather than crashing.
        let why = log.lines().find(|l| l.starts_with("Error: loading")).unwrap_or_else(|| panic!("without {missing}: no error\n{log}"));
        let named = format!("CAP_{}", missing.to_uppercase());
        assert!(log.lines().any(|l| l.contains("WARN") && l.contains(&named)), "the agent did not name {named}:\n{log}");
        eprintln!("without {missing}: {why}");
    }
}

/// The agent as the DaemonSet runs it, not privileged: its /proc/sys is
/// read-only (as a container runtime mounts it), and the host's
/// /proc/sys/net is mounted writable elsewhere (the DaemonSet's
/// /host/proc/sys/net; deploy_manifests.rs checks that LB_SYSCTL_DIR
/// names it). Through that mount it turns accept_local on for its external
/// interface and makes rp_filter loose on an overlay device, one there at
/// its start and one that appears later. Without `--sysctl-dir` it cannot,
/// and says so.
#[test]
fn the_agent_sets_the_node_sysctls_through_a_writable_mount_in_a_read_only_proc_sys() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["web"]).unwrap();
    let web = lab.pod("web");
    let node = &lab.node;
    // An external interface (a veth pair inside the node) and a VXLAN
    // device over it; the strict lab node gives both rp_filter=1.
    node.ip(&["link", "add", "lbx0", "type", "veth", "peer", "name", "lbx1"]).unwrap();
    node.ip(&["addr", "add", "192.168.77.1/24", "dev", "lbx0"]).unwrap();
    node.ip(&["link", "set", "lbx0", "up"]).unwrap();
    node.ip(&["link", "set", "lbx1", "up"]).unwrap();
    node.ip(&["link", "add", "lbvx7", "type", "vxlan", "id", "7", "dstport", "4797", "dev", "lbx0"]).unwrap();
    let get = |key: &str| node.sysctl_get(key).unwrap();
    assert_eq!((get("net.ipv4.conf.lbvx7.rp_filter"), get("net.ipv4.conf.all.rp_filter")), ("1".into(), "1".into()));
    assert_eq!((get("net.ipv4.conf.lbx0.accept_local"), get("net.ipv4.conf.all.accept_local")), ("0".into(), "0".into()));

    let dir = ManifestDir::new("sysctls");
    dir.write("web.yaml", &service_yaml("web", "10.96.0.32", 80, "TCP", 8080, &[web.ip]));
    let host_sys = std::env::temp_dir().join(format!("lb-sysctl-{}", std::process::id()));
    std::fs::create_dir_all(host_sys.join("net")).unwrap();
    let host_sys_arg = host_sys.to_str().unwrap().to_string();
    let container = "mount --bind /proc/sys/net \"$1/net\"; shift; \
                     mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro /proc/sys; exec \"$@\"";
    let mut wrapper = in_own_mounts(container, &[&host_sys_arg]);
    wrapper.extend(setpriv(&caps()));
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let args = ["--external-ifaces", "lbx0", "--node-ips", "192.168.77.1", "--xdp-mode", "tc"];

    // Without --sysctl-dir: /proc/sys is read-only, and the agent says so.
    let agent = Agent::start_wrapped(node, &dir.0, PinDir::new("sysctls-ro"), &wrapper, &args);
    agent.wait_log("the warning about accept_local", "accept_local is off on lbx0 and setting it under /proc/sys failed");
    agent.wait_log(
        "the warning about rp_filter",
        "strict reverse-path filtering on overlay device lbvx7 (vxlan) and setting it loose under /proc/sys failed",
    );
    assert!(agent.log_text().contains("Read-only file system"), "{}", agent.log_text());
    assert_eq!((get("net.ipv4.conf.lbvx7.rp_filter"), get("net.ipv4.conf.lbx0.accept_local")), ("1".into(), "0".into()));
    drop(agent);

    // With it, as the DaemonSet runs the agent.
    let mut with_dir: Vec<&str> = args.to_vec();
    with_dir.extend(["--sysctl-dir", &host_sys_arg]);
    let agent = Agent::start_wrapped(node, &dir.0, PinDir::new("sysctls"), &wrapper, &with_dir);
    common::wait_for("the agent to set the sysctls", Duration::from_secs(120), || {
        (get("net.ipv4.conf.lbvx7.rp_filter") == "2" && get("net.ipv4.conf.lbx0.accept_local") == "1").then_some(())
    });
    // A tunnel device a CNI makes later gets the same.
    node.ip(&["link", "add", "lbvx8", "type", "vxlan", "id", "8", "dstport", "4798", "dev", "lbx0"]).unwrap();
    common::wait_for("the agent to make the new tunnel device loose", Duration::from_secs(10), || {
        (get("net.ipv4.conf.lbvx8.rp_filter") == "2").then_some(())
    });
    assert_eq!(get("net.ipv4.conf.lbx1.rp_filter"), "1", "not a tunnel");
    assert!(!agent.log_text().contains("failed ("), "{}", agent.log_text());
    drop(agent);
    let _ = std::fs::remove_dir_all(&host_sys);
}

/// On a hybrid cgroup host (systemd's hybrid mode: cgroup v1 controllers
/// under a tmpfs at /sys/fs/cgroup, cgroup2 at its `unified`), the
/// DaemonSet's `LB_CGROUP` (its mount of the host's /sys/fs/cgroup) is no
/// cgroup2 mount: the agent takes its `unified` directory and serves host
/// clients. The layout is made in the agent's own mount namespace: a tmpfs
/// with the host's cgroup2 root bound at `unified`.
#[test]
fn on_a_hybrid_cgroup_host_the_socket_hooks_go_to_the_unified_hierarchy() {
    if !kernel_tests_enabled() {
        return;
    }
    let lab = NodeLab::new(&["web"]).unwrap();
    let web = lab.pod("web");
    let _server = tcp_server(&web.ns, SocketAddrV4::new(web.ip, 8080), "web").unwrap();
    let dir = ManifestDir::new("hybrid");
    dir.write("web.yaml", &service_yaml("web", "10.96.0.33", 80, "TCP", 8080, &[web.ip]));
    let cgroup2 = lb_agent::host::find_cgroup2().unwrap();
    let hybrid = std::env::temp_dir().join(format!("lb-hybrid-cgroup-{}", std::process::id()));
    std::fs::create_dir_all(&hybrid).unwrap();
    let layout = "mount -t tmpfs lbhybrid \"$1\"; mkdir \"$1/unified\"; mount --bind \"$2\" \"$1/unified\"; shift 2; exec \"$@\"";
    let (hybrid_arg, cgroup2_arg) = (hybrid.to_str().unwrap().to_string(), cgroup2.to_str().unwrap().to_string());
    let wrapper = in_own_mounts(layout, &[&hybrid_arg, &cgroup2_arg]);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = Agent::start_wrapped(&lab.node, &dir.0, PinDir::new("hybrid"), &wrapper, &["--cgroup", &hybrid_arg]);
    agent.wait_rows("the web service", |rows| rows.len() == 1 && rows[0].backends.len() == 1);
    agent.wait_log("the socket hooks on the unified hierarchy", &format!("cgroup={hybrid_arg}/unified"));
    assert_eq!(tcp_request(&lab.node, SocketAddrV4::new([10, 96, 0, 33].into(), 80)).unwrap(), "web");
    drop(agent);
    let _ = std::fs::remove_dir(&hybrid);
}
