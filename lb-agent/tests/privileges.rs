//! The smallest capability set the agent runs with, proven on a strict lab
//! node: with only `lb_agent::caps::NEEDED` in its bounding set (as a container with
//! `capabilities: {drop: [ALL], add: [...]}` gets, uid 0 but not
//! privileged) the agent loads, attaches, serves pods and host clients,
//! takes over its own links after a restart and uninstalls; without any
//! one of them it does not run (and says which it lacks).

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

/// The DaemonSet's prepare-node init container, run as written in
/// deploy/03-daemonset.yaml inside a lab node: it turns accept_local on
/// for the external interfaces (named, or those of the default routes).
#[test]
fn the_prepare_node_script_turns_accept_local_on() {
    if !kernel_tests_enabled() {
        return;
    }
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/03-daemonset.yaml")).unwrap();
    let ds: k8s_openapi::api::apps::v1::DaemonSet = serde_yaml::from_str(&text).unwrap();
    let init = ds.spec.unwrap().template.spec.unwrap().init_containers.unwrap().remove(0);
    let (command, args) = (init.command.unwrap(), init.args.unwrap());
    let lab = NodeLab::new(&["a", "b"]).unwrap();
    let accept_local = |ifname: &str| -> String {
        let ifname = ifname.to_string();
        lab.node.run(move || std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{ifname}/accept_local")).unwrap().trim().to_string())
    };
    let run = |env: &[(&str, &str)]| {
        let mut cmd = lab.node.command(&command[0]);
        cmd.args(&command[1..]).args(&args).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "prepare-node with {env:?}: {} {}", out.status, String::from_utf8_lossy(&out.stderr));
    };
    assert_eq!((accept_local("lbp0"), accept_local("lbp1")), ("0".into(), "0".into()));
    run(&[("LB_EXTERNAL_IFACES", "lbp1")]);
    assert_eq!((accept_local("lbp0"), accept_local("lbp1")), ("0".into(), "1".into()));
    lab.node.ip(&["route", "add", "default", "dev", "lbp0"]).unwrap();
    run(&[]);
    assert_eq!(accept_local("lbp0"), "1");
}
