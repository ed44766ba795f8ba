//! A sealed two-node "cluster": nodes with pods, an external client, and a
//! shared L2 segment between them.
//!
//! ```text
//!   client (192.168.50.100/24, eth0)
//!      |
//!   [switch namespace: bridge lbbr0, ports lbsw-c, lbsw-0, lbsw-1]
//!      |                         |
//!   node 0 (lbext 192.168.50.1)  node 1 (lbext 192.168.50.2)
//!   pods 10.244.1.10, .11, ...   pods 10.244.2.10, .11, ...
//! ```
//!
//! * The switch is a Linux bridge inside its own lab namespace; every link
//!   is a veth pair with both ends created directly in lab namespaces.
//! * Node `n` has `192.168.50.(n+1)/24` on `lbext`, its pods behind veth
//!   pairs `lbp<i>` (Calico-style, as in [`crate::NodeLab`]) with
//!   `10.244.(n+1).(10+i)/32`, and routes to the other nodes' pod CIDRs
//!   `10.244.(m+1).0/24 via 192.168.50.(m+1)` over the external link (no
//!   tunnel). Forwarding is on and reverse-path filtering strict, as on a
//!   real node.
//! * The client has only the external link; [`ClusterLab::client_route`]
//!   adds routes for external or LoadBalancer IPs through a node (what a
//!   cloud load balancer or a BGP speaker would do).
//! * TX checksum offload is off on the client and the nodes' external
//!   interfaces: packets cross the external segment with complete
//!   checksums, as on a physical network. Pods keep their offloads, as
//!   real pods do.
//!
//! Nothing is created in the root namespace and no route leads out.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};

use crate::{Netns, node::GATEWAY_IP};

/// The external interface of every node.
pub const EXT_IF: &str = "lbext";
/// The client's interface.
pub const CLIENT_IF: &str = "eth0";
/// The bridge in the switch namespace.
pub const BRIDGE: &str = "lbbr0";
/// The client's address on the external segment.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);
/// Prefix length of the external segment.
pub const EXT_PREFIX: u8 = 24;

/// The external address of node `n`.
pub fn node_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50, n as u8 + 1)
}

/// The address of pod `i` on node `n`.
pub fn cluster_pod_ip(n: usize, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n as u8 + 1, 10 + i as u8)
}

/// The pod CIDR of node `n`.
pub fn pod_cidr(n: usize) -> String {
    format!("10.244.{}.0/24", n + 1)
}

/// A pod of a cluster node.
#[derive(Debug)]
pub struct ClusterPod {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// Its node-side interface (`lbp<i>`).
    pub host_if: String,
}

/// One node of the cluster.
#[derive(Debug)]
pub struct ClusterNode {
    /// `node-a`, `node-b`, ...: the `nodeName` of its endpoints.
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub pods: Vec<ClusterPod>,
}

impl ClusterNode {
    pub fn pod(&self, name: &str) -> &ClusterPod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod named {name:?} on {}", self.name))
    }
}

/// The lab: a switch, nodes, a client.
#[derive(Debug)]
pub struct ClusterLab {
    pub nodes: Vec<ClusterNode>,
    pub client: Netns,
    pub switch: Netns,
}

impl ClusterLab {
    /// Builds one node per entry of `pods` (node `n` gets the pods named in
    /// `pods[n]`, in order) plus the switch and the client.
    pub fn new(pods: &[&[&str]]) -> Result<ClusterLab> {
        if pods.is_empty() || pods.len() > 26 {
            bail!("a cluster lab has 1 to 26 nodes, not {}", pods.len());
        }
        let switch = Netns::new("switch")?;
        switch.ip(&["link", "add", BRIDGE, "type", "bridge"]).context("create the bridge")?;
        switch.ip(&["link", "set", BRIDGE, "up"])?;
        let client = Netns::new("client")?;
        let mut lab = ClusterLab { nodes: Vec::new(), client, switch };
        lab.attach(&lab.client, CLIENT_IF, "lbsw-c")?;
        lab.client.ip(&["addr", "add", &format!("{CLIENT_IP}/{EXT_PREFIX}"), "dev", CLIENT_IF])?;
        lab.client.ip(&["link", "set", CLIENT_IF, "up"])?;
        tx_checksum_off(&lab.client, CLIENT_IF)?;
        for (n, names) in pods.iter().enumerate() {
            let node = lab.add_node(n, names).with_context(|| format!("set up node {n}"))?;
            lab.nodes.push(node);
        }
        // Routes between the nodes' pod CIDRs over the external link.
        for (n, node) in lab.nodes.iter().enumerate() {
            for m in 0..lab.nodes.len() {
                if m != n {
                    node.ns.ip(&["route", "add", &pod_cidr(m), "via", &node_ip(m).to_string(), "dev", EXT_IF])?;
                }
            }
        }
        Ok(lab)
    }

    pub fn node(&self, n: usize) -> &ClusterNode {
        &self.nodes[n]
    }

    /// The names of the switch's ports (one per node, then the client's):
    /// where a test attaches an XDP program so that frames a node's XDP
    /// program transmits (XDP_TX on a veth) are received in native mode.
    pub fn switch_ports(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|n| format!("lbsw-{n}")).chain(["lbsw-c".to_string()]).collect()
    }

    /// Routes `cidr` from the client through node `n` (an external or
    /// LoadBalancer IP announced by that node).
    pub fn client_route(&self, cidr: &str, n: usize) -> Result<()> {
        self.client.ip(&["route", "replace", cidr, "via", &node_ip(n).to_string(), "dev", CLIENT_IF])
    }

    /// A veth pair from `ns` (named `inner`) to a bridge port `port`.
    fn attach(&self, ns: &Netns, inner: &str, port: &str) -> Result<()> {
        self.switch
            .ip(&["link", "add", port, "type", "veth", "peer", "name", inner, "netns", ns.name()])
            .with_context(|| format!("create veth {port} <-> {inner} in {}", ns.name()))?;
        self.switch.ip(&["link", "set", port, "master", BRIDGE])?;
        self.switch.ip(&["link", "set", port, "up"])?;
        Ok(())
    }

    fn add_node(&self, n: usize, names: &[&str]) -> Result<ClusterNode> {
        let name = format!("node-{}", (b'a' + n as u8) as char);
        let ns = Netns::new(&name)?;
        crate::node::strict_node(&ns)?;
        // The pods' gateway needs a route for proxy ARP to answer: into a
        // sink, as in NodeLab.
        if let Err(e) = ns.ip(&["link", "add", "lbnode", "type", "dummy"]) {
            ns.ip(&["link", "add", "lbnode", "type", "ifb"])
                .map_err(|e2| e2.context(format!("no dummy device ({e:#}), and no ifb either")))?;
        }
        ns.ip(&["link", "set", "lbnode", "up"])?;
        ns.ip(&["route", "add", &format!("{GATEWAY_IP}/32"), "dev", "lbnode"])?;
        self.attach(&ns, EXT_IF, &format!("lbsw-{n}"))?;
        let ip = node_ip(n);
        ns.ip(&["addr", "add", &format!("{ip}/{EXT_PREFIX}"), "dev", EXT_IF])?;
        ns.sysctl(&format!("net.ipv4.conf.{EXT_IF}.rp_filter"), crate::node::RP_FILTER)?;
        ns.ip(&["link", "set", EXT_IF, "up"])?;
        tx_checksum_off(&ns, EXT_IF)?;
        let mut node = ClusterNode { name, ns, ip, pods: Vec::new() };
        for (i, pod) in names.iter().enumerate() {
            if node.pods.iter().any(|p| p.name == *pod) {
                bail!("pod {pod:?} twice on {}", node.name);
            }
            let p = add_pod(&node.ns, pod, cluster_pod_ip(n, i), &format!("lbp{i}"))
                .with_context(|| format!("set up pod {pod:?} on {}", node.name))?;
            node.pods.push(p);
        }
        Ok(node)
    }

    /// Every namespace name of the lab.
    pub fn netns_names(&self) -> Vec<String> {
        let mut out = vec![self.switch.name().to_owned(), self.client.name().to_owned()];
        for n in &self.nodes {
            out.push(n.ns.name().to_owned());
            out.extend(n.pods.iter().map(|p| p.ns.name().to_owned()));
        }
        out
    }
}

impl Drop for ClusterLab {
    fn drop(&mut self) {
        // Pods, then nodes; the switch and client go with their fields.
        for n in &mut self.nodes {
            n.pods.clear();
        }
        self.nodes.clear();
    }
}

fn add_pod(node: &Netns, name: &str, ip: Ipv4Addr, hif: &str) -> Result<ClusterPod> {
    let ns = Netns::new(name)?;
    let pod = ClusterPod { name: name.to_owned(), ns, ip, host_if: hif.to_owned() };
    let wire = || -> Result<()> {
        node.ip(&["link", "add", hif, "type", "veth", "peer", "name", crate::POD_IF, "netns", pod.ns.name()])
            .context("create veth pair")?;
        let p = &pod.ns;
        p.ip(&["addr", "add", &format!("{ip}/32"), "dev", crate::POD_IF])?;
        p.ip(&["link", "set", crate::POD_IF, "up"])?;
        p.ip(&["route", "add", &format!("{GATEWAY_IP}/32"), "dev", crate::POD_IF, "scope", "link"])?;
        p.ip(&["route", "add", "default", "via", &GATEWAY_IP.to_string(), "dev", crate::POD_IF])?;
        node.sysctl(&format!("net.ipv4.conf.{hif}.proxy_arp"), "1")?;
        node.sysctl(&format!("net.ipv4.neigh.{hif}.proxy_delay"), "0")?;
        node.sysctl(&format!("net.ipv4.conf.{hif}.rp_filter"), crate::node::RP_FILTER)?;
        node.ip(&["link", "set", hif, "up"])?;
        node.ip(&["route", "add", &format!("{ip}/32"), "dev", hif])?;
        Ok(())
    };
    if let Err(e) = wire() {
        let _ = node.ip(&["link", "del", hif]);
        return Err(e);
    }
    Ok(pod)
}

/// Turns TX checksum offload off on `ifname` in `ns` (the ETHTOOL_STXCSUM
/// ioctl, as `ethtool -K <if> tx off`).
pub fn tx_checksum_off(ns: &Netns, ifname: &str) -> Result<()> {
    let name = ifname.to_owned();
    let res = ns.run(move || -> std::io::Result<()> {
        const ETHTOOL_STXCSUM: u32 = 0x17;
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        let mut value = EthtoolValue { cmd: ETHTOOL_STXCSUM, data: 0 };
        // SAFETY: a plain socket for the ioctl, closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: an all-zero ifreq is valid.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (i, b) in name.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
            ifr.ifr_name[i] = b as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&raw mut value).cast();
        // SAFETY: SIOCETHTOOL with a valid ifreq pointing at `value`.
        let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut ifr) };
        let err = std::io::Error::last_os_error();
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        if rc != 0 {
            return Err(err);
        }
        Ok(())
    });
    res.with_context(|| format!("turning TX checksum offload off on {ifname} in {}", ns.name()))
}
