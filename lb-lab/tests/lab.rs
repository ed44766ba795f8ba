//! Real tests: they need root and create (sealed) network namespaces.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lb_lab::{
    GATEWAY_IP, NODE_IP, Netns, NodeLab, http_get, http_server, io_error_kind, is_connection_refused, list_netns, netns_cookie,
    require_root, tcp_request, tcp_server, udp_echo, udp_request,
};

fn lab(pods: &[&str]) -> NodeLab {
    require_root().expect("these tests need root and iproute2");
    NodeLab::new(pods).expect("build NodeLab")
}

fn root_links() -> Vec<String> {
    let out = std::process::Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(out.status.success());
    let mut names: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split(':').nth(1)).map(|n| n.trim().to_owned()).collect();
    names.sort();
    names
}

fn assert_gone(names: &[String]) {
    let listed = list_netns().unwrap();
    for n in names {
        assert!(!listed.contains(n), "netns {n} still listed after drop: {listed:?}");
        assert!(!std::path::Path::new("/run/netns").join(n).exists());
    }
}

#[test]
fn pod_to_pod_through_node() {
    let lab = lab(&["a", "b"]);
    let (a, b) = (lab.pod("a"), lab.pod("b"));
    assert_eq!(a.ip.to_string(), "10.244.0.11");
    assert_eq!(b.ip.to_string(), "10.244.0.12");
    assert_eq!((a.host_if.as_str(), b.host_if.as_str()), ("lbp0", "lbp1"));

    let tcp = tcp_server(&b.ns, SocketAddrV4::new(b.ip, 8080), "b-tcp").unwrap();
    let http = http_server(&b.ns, SocketAddrV4::new(b.ip, 8081), "b-http").unwrap();
    let udp = udp_echo(&b.ns, SocketAddrV4::new(b.ip, 5353), "b-udp").unwrap();

    // The first packet waits for ARP of the gateway (proxy ARP on the node),
    // answered at once: no neigh.proxy_delay stall (0.8 s by default) on
    // either pod interface.
    for hif in [&a.host_if, &b.host_if] {
        assert_eq!(lab.node.sysctl_get(&format!("net.ipv4.neigh.{hif}.proxy_delay")).unwrap(), "0", "{hif}");
    }
    assert_eq!(tcp_request(&a.ns, tcp.local_addr()).unwrap(), "b-tcp");
    assert_eq!(tcp.hits(), 1);
    assert_eq!(http_get(&a.ns, http.local_addr()).unwrap(), "b-http");
    assert_eq!(http.hits(), 1);
    let (reply, peer) = udp_request(&a.ns, udp.local_addr(), "ping").unwrap();
    assert_eq!(reply, "b-udp:ping");
    assert_eq!(peer, SocketAddr::V4(udp.local_addr()));
    assert_eq!(udp.hits(), 1);

    // Pod A has no route to B except via the gateway: the traffic went
    // through the node, which forwarded it.
    let routes = a.ns.ip_output(&["-4", "route", "show"]).unwrap();
    assert!(routes.contains(&format!("default via {GATEWAY_IP} dev eth0")), "{routes}");
    assert!(!routes.contains(&b.ip.to_string()), "{routes}");
    let fwd = lab.node.ip_output(&["-s", "link", "show", "lbp1"]).unwrap();
    assert!(fwd.contains("lbp1"), "{fwd}");

    // A closed port answers with a RST: ECONNREFUSED stays visible.
    let err = tcp_request(&a.ns, SocketAddrV4::new(b.ip, 9)).unwrap_err();
    assert_eq!(io_error_kind(&err), Some(ErrorKind::ConnectionRefused), "{err:#}");
    assert!(is_connection_refused(&err));
    let io = err.downcast_ref::<std::io::Error>().expect("io::Error in chain");
    assert_eq!(io.raw_os_error(), Some(libc::ECONNREFUSED));

    // UDP to a closed port: ICMP port unreachable -> ECONNREFUSED too.
    let err = udp_request(&a.ns, SocketAddrV4::new(b.ip, 9), "x").unwrap_err();
    assert!(is_connection_refused(&err), "{err:#}");
}

#[test]
fn node_and_pods_reach_each_other() {
    let lab = lab(&["a", "b"]);
    let b = lab.pod("b");
    let srv = tcp_server(&b.ns, SocketAddrV4::new(b.ip, 80), "b").unwrap();
    assert_eq!(tcp_request(&lab.node, srv.local_addr()).unwrap(), "b");
    assert_eq!(srv.hits(), 1);

    // Pod -> node IP, and a server bound to 0.0.0.0 in the node.
    let on_node = tcp_server(&lab.node, SocketAddrV4::new(NODE_IP, 10250), "node").unwrap();
    assert_eq!(tcp_request(&lab.pod("a").ns, on_node.local_addr()).unwrap(), "node");
    let any = udp_echo(&lab.node, "0.0.0.0:53".parse().unwrap(), "n").unwrap();
    let (reply, peer) = udp_request(&b.ns, SocketAddrV4::new(NODE_IP, 53), "q").unwrap();
    assert_eq!((reply.as_str(), peer), ("n:q", SocketAddr::from((NODE_IP, 53))));
    assert_eq!(any.hits(), 1);
}

#[test]
fn node_configuration() {
    let lab = lab(&["a"]);
    let n = &lab.node;
    assert_eq!(n.sysctl_get("net.ipv4.ip_forward").unwrap(), "1");
    // A strict node: reverse-path filtering on everywhere.
    for iface in ["all", "default", "lo", "lbnode", "lbp0"] {
        assert_eq!(n.sysctl_get(&format!("net.ipv4.conf.{iface}.rp_filter")).unwrap(), "1", "{iface}");
    }
    assert_eq!(n.sysctl_get("net.ipv4.conf.lbp0.proxy_arp").unwrap(), "1");
    assert_eq!(n.sysctl_get("net.ipv4.neigh.lbp0.proxy_delay").unwrap(), "0");
    let addrs = n.ip_output(&["-o", "-4", "addr", "show", "dev", "lbnode"]).unwrap();
    assert!(addrs.contains("10.0.0.1/32"), "{addrs}");
    let routes = n.ip_output(&["-4", "route", "show"]).unwrap();
    assert!(!routes.contains("default"), "no default route in the lab: {routes}");
    assert!(routes.contains("10.244.0.11 dev lbp0"), "{routes}");

    // The sysctl really is per namespace.
    let pod = &lab.pod("a").ns;
    pod.sysctl("net.ipv4.conf.eth0.rp_filter", "2").unwrap();
    assert_eq!(pod.sysctl_get("net/ipv4/conf/eth0/rp_filter").unwrap(), "2");
    assert!(n.sysctl_get("net.ipv4.conf.eth0.rp_filter").is_err(), "node has no eth0");
    let err = pod.sysctl("net.ipv4.conf.nope.rp_filter", "0").unwrap_err();
    assert!(format!("{err:#}").contains("net.ipv4.conf.nope.rp_filter"), "{err:#}");
}

#[test]
fn add_pod_uses_next_index() {
    let mut lab = lab(&["a"]);
    let c = lab.add_pod("c").unwrap();
    assert_eq!((c.ip.to_string().as_str(), c.host_if.as_str()), ("10.244.0.12", "lbp1"));
    assert!(lab.add_pod("c").is_err(), "duplicate pod name");
    let c = lab.pod("c");
    let srv = udp_echo(&c.ns, SocketAddrV4::new(c.ip, 7), "c").unwrap();
    assert_eq!(udp_request(&lab.pod("a").ns, srv.local_addr(), "x").unwrap().0, "c:x");
}

#[test]
fn names_unique_across_concurrent_labs() {
    require_root().unwrap();
    let labs: Vec<NodeLab> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2).map(|_| s.spawn(|| NodeLab::new(&["a", "b"]).unwrap())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let names: Vec<String> = labs.iter().flat_map(NodeLab::netns_names).collect();
    assert_eq!(names.len(), 6);
    assert_eq!(names.iter().collect::<HashSet<_>>().len(), 6, "{names:?}");
    let pid = std::process::id();
    let listed = list_netns().unwrap();
    for n in &names {
        assert!(n.starts_with(&format!("lb-{pid}-")), "{n}");
        assert!(listed.contains(n), "{n} not in {listed:?}");
    }
    // The two labs are separate: same pod IPs, different namespaces.
    assert_ne!(netns_cookie(&labs[0].pod("b").ns).unwrap(), netns_cookie(&labs[1].pod("b").ns).unwrap());
    drop(labs);
    assert_gone(&names);
}

#[test]
fn cleanup_on_drop_and_on_panic() {
    require_root().unwrap();
    let names = {
        let lab = lab(&["a", "b"]);
        lab.netns_names()
    };
    assert_gone(&names);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let r = std::panic::catch_unwind(move || {
        let lab = NodeLab::new(&["x"]).unwrap();
        let _srv = tcp_server(&lab.pod("x").ns, SocketAddrV4::new(lab.pod("x").ip, 1), "x").unwrap();
        *seen2.lock().unwrap() = lab.netns_names();
        panic!("test panic while the lab is up");
    });
    assert!(r.is_err());
    let names = seen.lock().unwrap().clone();
    assert_eq!(names.len(), 2);
    assert_gone(&names);
}

#[test]
fn root_namespace_untouched() {
    require_root().unwrap();
    let before = root_links();
    {
        let mut lab = lab(&["a", "b"]);
        lab.add_pod("c").unwrap();
        let b = lab.pod("b");
        let srv = tcp_server(&b.ns, SocketAddrV4::new(b.ip, 80), "b").unwrap();
        assert_eq!(tcp_request(&lab.pod("a").ns, srv.local_addr()).unwrap(), "b");
        for l in root_links() {
            assert!(!l.starts_with("lbp") && !l.starts_with("lbnode"), "lab interface {l} in root ns");
        }
    }
    assert_eq!(before, root_links());
}

#[test]
fn command_enters_network_namespace_only() {
    let lab = lab(&["a"]);
    let out = lab.node.command("readlink").args(["/proc/self/ns/net", "/proc/self/ns/mnt"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), format!("net:[{}]", lab.node.inode().unwrap()));
    let our_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_eq!(lines.next().unwrap(), our_mnt.to_str().unwrap(), "same mount namespace");

    let out = lab.node.command("ip").args(["-o", "link", "show"]).output().unwrap();
    let links = String::from_utf8_lossy(&out.stdout);
    assert!(links.contains("lbnode") && links.contains("lbp0"), "{links}");

    // Long-running child, killed (and reaped) by the guard.
    let mut cmd = lab.pod("a").ns.command("sleep");
    cmd.arg("30");
    let guard = lab.pod("a").ns.spawn(&mut cmd).unwrap();
    let pid = guard.id();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let t = Instant::now();
    drop(guard);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn run_and_cookies() {
    let lab = lab(&["a"]);
    let pod = &lab.pod("a").ns;
    let (c_node, c_pod) = (netns_cookie(&lab.node).unwrap(), netns_cookie(pod).unwrap());
    assert_ne!(c_node, c_pod);
    assert_eq!(c_pod, netns_cookie(pod).unwrap(), "stable");
    let root = Netns::new("tmp").unwrap();
    assert_ne!(netns_cookie(&root).unwrap(), c_pod);

    // A thread inside sees the namespace; a socket made inside stays there.
    let ino = pod.inode().unwrap();
    let seen = pod.run(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap());
    assert_eq!(seen.to_str().unwrap(), format!("net:[{ino}]"));
    let l = pod.run(|| std::net::TcpListener::bind("10.244.0.11:0").unwrap());
    let port = l.local_addr().unwrap().port();
    assert_eq!(tcp_request(pod, SocketAddrV4::new(lab.pod("a").ip, port)).map_err(|e| io_error_kind(&e)), Err(Some(ErrorKind::TimedOut)));
    // Panics propagate.
    assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pod.run(|| panic!("inside")))).is_err());
}

#[test]
fn sequential_connections_and_prompt_stop() {
    let lab = lab(&["a", "b"]);
    let (a, b) = (lab.pod("a"), lab.pod("b"));
    let srv = tcp_server(&b.ns, SocketAddrV4::new(b.ip, 8080), "b").unwrap();
    let t = Instant::now();
    for _ in 0..300 {
        assert_eq!(tcp_request(&a.ns, srv.local_addr()).unwrap(), "b");
    }
    assert_eq!(srv.hits(), 300);
    assert!(t.elapsed() < Duration::from_secs(30), "300 connections took {:?}", t.elapsed());

    let http = http_server(&b.ns, SocketAddrV4::new(b.ip, 8081), "h").unwrap();
    for _ in 0..50 {
        assert_eq!(http_get(&a.ns, http.local_addr()).unwrap(), "h");
    }
    assert_eq!(http.hits(), 50);

    let addr = srv.local_addr();
    let t = Instant::now();
    drop(srv);
    drop(http);
    assert!(t.elapsed() < Duration::from_millis(500), "drop took {:?}", t.elapsed());
    let err = tcp_request(&a.ns, addr).unwrap_err();
    assert!(is_connection_refused(&err), "{err:#}");
}
