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
//!   is a veth pair with both ends created directly in lab namespaces. It
//!   only switches: `br_netfilter`'s hooks are off there.
//! * Node `n` has `192.168.50.(n+1)/24` on `lbext`, its pods behind veth
//!   pairs `lbp<i>` (Calico-style, as in [`crate::NodeLab`]) with
//!   `10.244.(n+1).(10+i)/32`, and routes to the other nodes' pod CIDRs
//!   `10.244.(m+1).0/24 via 192.168.50.(m+1)` over the external link (no
//!   tunnel). Forwarding is on and reverse-path filtering strict, as on a
//!   real node.
//! * The client has only the external link; [`ClusterLab::client_route`]
//!   adds routes for external or LoadBalancer IPs through a node (what a
//!   cloud load balancer or a BGP speaker would do).
//! * Options ([`ClusterOptions`]): the pod networks joined by a kernel
//!   VXLAN device instead of plain routes (flannel's layout: `lbvx` with
//!   `10.244.(n+1).0/32`, a route per other node's pod CIDR via its VTEP
//!   address, static neighbour and FDB entries; with IPv6, the same device
//!   carries the IPv6 pods too, via `fe80::42:<m+1>`); and the client behind a
//!   router (`192.168.60.100` -> `192.168.60.1` / `192.168.50.254`; with
//!   IPv6, `fd00:60::64` -> `fd00:60::1` / `fd00:50::fe`) whose link
//!   towards the client has a smaller MTU, for path MTU discovery.
//! * TX checksum offload is off on the client and the nodes' external
//!   interfaces: packets cross the external segment with complete
//!   checksums, as on a physical network. Pods keep their offloads, as
//!   real pods do.
//!
//! Nothing is created in the root namespace and no route leads out.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, bail};

use crate::{
    Netns,
    node::{GATEWAY_IP, GATEWAY_IP6},
};

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

/// The client's IPv6 address on the external segment (with
/// [`ClusterLab::enable_ipv6`]).
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x64);

/// The external IPv6 address of node `n` (with
/// [`ClusterLab::enable_ipv6`]): `fd00:50::<n+1>/64`.
pub fn node_ip6(n: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, n as u16 + 1)
}

/// The IPv6 address of pod `i` on node `n` (with
/// [`ClusterLab::enable_ipv6`]): `fd00:244:<n+1>::<10+i>` (hex).
pub fn cluster_pod_ip6(n: usize, i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x244, n as u16 + 1, 0, 0, 0, 0, 10 + i as u16)
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
        self.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod named {name:?} on {}", self.name))
    }
}

/// How the nodes' pod networks are joined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overlay {
    /// Plain routes via the other nodes' external addresses.
    #[default]
    Routed,
    /// A kernel VXLAN device (VNI 42, port 4789), as flannel sets it up.
    Vxlan,
}

/// The VXLAN device of every node with [`Overlay::Vxlan`].
pub const VXLAN_IF: &str = "lbvx";

/// The MAC address of node `n`'s VXLAN device.
fn vtep_mac(n: usize) -> String {
    format!("0e:00:00:00:00:{:02x}", n + 1)
}

/// The link-local IPv6 address of node `n`'s VXLAN device (with
/// [`ClusterLab::enable_ipv6`]): the next hop of its IPv6 pods, which the
/// device carries over the IPv4 underlay as it carries IPv4 pods (one
/// device for both families, as Cilium's VXLAN tunnel).
fn vtep_ip6(n: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0x42, n as u16 + 1)
}

/// Options of a [`ClusterLab`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterOptions {
    pub overlay: Overlay,
    /// Put the client behind a router whose link towards the client has
    /// this MTU (the client's own link keeps 1500).
    pub client_router_mtu: Option<u32>,
}

/// The client's address behind the router.
pub const ROUTED_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 100);
/// The router's addresses: towards the client, and on the external segment.
pub const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 1);
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 254);
/// The client's IPv6 address behind the router (with
/// [`ClusterLab::enable_ipv6`]).
pub const ROUTED_CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x60, 0, 0, 0, 0, 0, 0x64);
/// The router's IPv6 addresses: towards the client, and on the external
/// segment.
pub const ROUTER_CLIENT_SIDE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x60, 0, 0, 0, 0, 0, 1);
pub const ROUTER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0xfe);

/// The lab: a switch, nodes, a client (and maybe a router before it).
#[derive(Debug)]
pub struct ClusterLab {
    pub nodes: Vec<ClusterNode>,
    pub client: Netns,
    pub switch: Netns,
    pub router: Option<Netns>,
    /// How the nodes' pod networks are joined.
    pub overlay: Overlay,
}

impl ClusterLab {
    /// Builds one node per entry of `pods` (node `n` gets the pods named in
    /// `pods[n]`, in order) plus the switch and the client.
    pub fn new(pods: &[&[&str]]) -> Result<ClusterLab> {
        Self::with_options(pods, ClusterOptions::default())
    }

    /// [`ClusterLab::new`] with options.
    pub fn with_options(pods: &[&[&str]], opts: ClusterOptions) -> Result<ClusterLab> {
        if pods.is_empty() || pods.len() > 26 {
            bail!("a cluster lab has 1 to 26 nodes, not {}", pods.len());
        }
        let switch = Netns::new("switch")?;
        switch.ip(&["link", "add", BRIDGE, "type", "bridge"]).context("create the bridge")?;
        switch.ip(&["link", "set", BRIDGE, "up"])?;
        plain_switch(&switch)?;
        let client = Netns::new("client")?;
        let router = match opts.client_router_mtu {
            Some(_) => Some(Netns::new("router")?),
            None => None,
        };
        let mut lab = ClusterLab { nodes: Vec::new(), client, switch, router, overlay: opts.overlay };
        match (&lab.router, opts.client_router_mtu) {
            (Some(router), Some(mtu)) => lab.wire_router(router, mtu).context("set up the router")?,
            _ => {
                lab.attach(&lab.client, CLIENT_IF, "lbsw-c")?;
                lab.client.ip(&["addr", "add", &format!("{CLIENT_IP}/{EXT_PREFIX}"), "dev", CLIENT_IF])?;
                lab.client.ip(&["link", "set", CLIENT_IF, "up"])?;
            }
        }
        tx_checksum_off(&lab.client, CLIENT_IF)?;
        for (n, names) in pods.iter().enumerate() {
            let node = lab.add_node(n, names).with_context(|| format!("set up node {n}"))?;
            lab.nodes.push(node);
        }
        match opts.overlay {
            Overlay::Routed => {
                // Routes between the nodes' pod CIDRs over the external link.
                for (n, node) in lab.nodes.iter().enumerate() {
                    for m in 0..lab.nodes.len() {
                        if m != n {
                            node.ns.ip(&["route", "add", &pod_cidr(m), "via", &node_ip(m).to_string(), "dev", EXT_IF])?;
                        }
                    }
                }
            }
            Overlay::Vxlan => lab.wire_vxlan().context("set up the VXLAN overlay")?,
        }
        if lab.router.is_some() {
            for node in &lab.nodes {
                node.ns.ip(&["route", "add", &format!("{ROUTED_CLIENT_IP}/32"), "via", &ROUTER_IP.to_string(), "dev", EXT_IF])?;
            }
        }
        Ok(lab)
    }

    /// The client's address.
    pub fn client_ip(&self) -> Ipv4Addr {
        if self.router.is_some() { ROUTED_CLIENT_IP } else { CLIENT_IP }
    }

    /// The client's IPv6 address (with [`ClusterLab::enable_ipv6`]).
    pub fn client_ip6(&self) -> Ipv6Addr {
        if self.router.is_some() { ROUTED_CLIENT_IP6 } else { CLIENT_IP6 }
    }

    /// client (1500) -- (mtu) router -- switch.
    fn wire_router(&self, router: &Netns, mtu: u32) -> Result<()> {
        router.sysctl("net.ipv4.ip_forward", "1")?;
        router
            .ip(&["link", "add", "rtr-c", "type", "veth", "peer", "name", CLIENT_IF, "netns", self.client.name()])
            .context("create the client link")?;
        router.ip(&["addr", "add", &format!("{ROUTER_CLIENT_SIDE}/24"), "dev", "rtr-c"])?;
        router.ip(&["link", "set", "rtr-c", "mtu", &mtu.to_string()])?;
        router.ip(&["link", "set", "rtr-c", "up"])?;
        self.attach(router, "rtr-sw", "lbsw-r")?;
        router.ip(&["addr", "add", &format!("{ROUTER_IP}/{EXT_PREFIX}"), "dev", "rtr-sw"])?;
        router.ip(&["link", "set", "rtr-sw", "up"])?;
        tx_checksum_off(router, "rtr-sw")?;
        let c = &self.client;
        c.ip(&["addr", "add", &format!("{ROUTED_CLIENT_IP}/24"), "dev", CLIENT_IF])?;
        c.ip(&["link", "set", CLIENT_IF, "up"])?;
        c.ip(&["route", "add", &format!("192.168.50.0/{EXT_PREFIX}"), "via", &ROUTER_CLIENT_SIDE.to_string(), "dev", CLIENT_IF])?;
        Ok(())
    }

    /// Flannel's VXLAN layout on every node (see the module docs).
    fn wire_vxlan(&self) -> Result<()> {
        let vtep_ip = |n: usize| Ipv4Addr::new(10, 244, n as u8 + 1, 0);
        for (n, node) in self.nodes.iter().enumerate() {
            let ns = &node.ns;
            ns.ip(&[
                "link",
                "add",
                VXLAN_IF,
                "type",
                "vxlan",
                "id",
                "42",
                "dstport",
                "4789",
                "local",
                &node_ip(n).to_string(),
                "dev",
                EXT_IF,
                "nolearning",
            ])
            .context("create the VXLAN device")?;
            ns.ip(&["link", "set", VXLAN_IF, "address", &vtep_mac(n)])?;
            ns.ip(&["addr", "add", &format!("{}/32", vtep_ip(n)), "dev", VXLAN_IF])?;
            ns.sysctl(&format!("net.ipv4.conf.{VXLAN_IF}.rp_filter"), crate::node::RP_FILTER)?;
            ns.ip(&["link", "set", VXLAN_IF, "up"])?;
            for m in 0..self.nodes.len() {
                if m == n {
                    continue;
                }
                ns.ip(&["route", "add", &pod_cidr(m), "via", &vtep_ip(m).to_string(), "dev", VXLAN_IF, "onlink"])?;
                ns.ip(&["neigh", "replace", &vtep_ip(m).to_string(), "lladdr", &vtep_mac(m), "dev", VXLAN_IF, "nud", "permanent"])?;
                let out = ns
                    .command("bridge")
                    .args(["fdb", "append", &vtep_mac(m), "dev", VXLAN_IF, "dst", &node_ip(m).to_string()])
                    .output()
                    .context("running bridge (iproute2)")?;
                if !out.status.success() {
                    bail!("bridge fdb append: {}", String::from_utf8_lossy(&out.stderr).trim());
                }
            }
        }
        Ok(())
    }

    pub fn node(&self, n: usize) -> &ClusterNode {
        &self.nodes[n]
    }

    /// Gives the external segment and the pods IPv6 as well (dual stack):
    /// the client [`CLIENT_IP6`]`/64` (behind a router,
    /// [`ROUTED_CLIENT_IP6`]`/64`, the router forwarding IPv6 as IPv4),
    /// node `n` [`node_ip6(n)`](node_ip6)`/64` on [`EXT_IF`] with IPv6
    /// forwarding, its pod `i` [`cluster_pod_ip6(n, i)`](cluster_pod_ip6)
    /// `/128` with a default route via [`GATEWAY_IP6`] (link-local, on the
    /// node side `lbp<i>`) and the node a route to it; the other nodes'
    /// pods, `fd00:244:<m+1>::/48`, via node `m`'s external IPv6 address
    /// (as the IPv4 pod CIDRs), or with [`Overlay::Vxlan`] through the
    /// VXLAN device, via node `m`'s VTEP `fe80::42:<m+1>` (a static
    /// neighbour with its VTEP MAC, which the FDB already sends to node
    /// `m`'s IPv4 address). Addresses skip duplicate address
    /// detection, so they are usable at once.
    pub fn enable_ipv6(&self) -> Result<()> {
        match &self.router {
            Some(router) => {
                router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
                router.ip(&["-6", "addr", "add", &format!("{ROUTER_CLIENT_SIDE6}/64"), "dev", "rtr-c", "nodad"])?;
                router.ip(&["-6", "addr", "add", &format!("{ROUTER_IP6}/64"), "dev", "rtr-sw", "nodad"])?;
                // (Link-local addresses valid at once, as the nodes' below.)
                router.ip(&["-6", "addr", "add", "fe80::51:1/64", "dev", "rtr-c", "nodad"])?;
                router.ip(&["-6", "addr", "add", "fe80::50:ff/64", "dev", "rtr-sw", "nodad"])?;
                let c = &self.client;
                c.ip(&["-6", "addr", "add", &format!("{ROUTED_CLIENT_IP6}/64"), "dev", CLIENT_IF, "nodad"])?;
                c.ip(&["-6", "route", "add", "fd00:50::/64", "via", &ROUTER_CLIENT_SIDE6.to_string(), "dev", CLIENT_IF])?;
            }
            None => self.client.ip(&["-6", "addr", "add", &format!("{CLIENT_IP6}/64"), "dev", CLIENT_IF, "nodad"])?,
        }
        for (n, node) in self.nodes.iter().enumerate() {
            let ns = &node.ns;
            ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            ns.ip(&["-6", "addr", "add", &format!("{}/64", node_ip6(n)), "dev", EXT_IF, "nodad"])?;
            // A link-local address valid at once: a node forwarding a
            // packet that is not its own (a pod's, to another node)
            // solicits the next hop from its link-local address, and sends
            // nothing while the interface's own one is still in duplicate
            // address detection (a second or two after the lab came up).
            // A node up for longer has passed it.
            ns.ip(&["-6", "addr", "add", &format!("fe80::50:{}/64", n + 1), "dev", EXT_IF, "nodad"])?;
            if self.router.is_some() {
                ns.ip(&["-6", "route", "add", &format!("{ROUTED_CLIENT_IP6}/128"), "via", &ROUTER_IP6.to_string(), "dev", EXT_IF])?;
            }
            for (i, pod) in node.pods.iter().enumerate() {
                let ip6 = cluster_pod_ip6(n, i);
                let hif = pod.host_if.as_str();
                ns.ip(&["-6", "addr", "add", &format!("{GATEWAY_IP6}/64"), "dev", hif, "nodad"])?;
                ns.ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", hif])?;
                pod.ns.ip(&["-6", "addr", "add", &format!("{ip6}/128"), "dev", "eth0", "nodad"])?;
                pod.ns.ip(&["-6", "route", "add", "default", "via", &GATEWAY_IP6.to_string(), "dev", "eth0"])?;
            }
            if self.overlay == Overlay::Vxlan {
                ns.ip(&["-6", "addr", "add", &format!("{}/64", vtep_ip6(n)), "dev", VXLAN_IF, "nodad"])?;
            }
            for m in (0..self.nodes.len()).filter(|&m| m != n) {
                let pods = format!("{}/48", Ipv6Addr::new(0xfd00, 0x244, m as u16 + 1, 0, 0, 0, 0, 0));
                match self.overlay {
                    Overlay::Routed => ns.ip(&["-6", "route", "add", &pods, "via", &node_ip6(m).to_string(), "dev", EXT_IF])?,
                    Overlay::Vxlan => {
                        let (peer, mac) = (vtep_ip6(m).to_string(), vtep_mac(m));
                        ns.ip(&["-6", "route", "add", &pods, "via", &peer, "dev", VXLAN_IF])?;
                        ns.ip(&["-6", "neigh", "replace", &peer, "lladdr", &mac, "dev", VXLAN_IF, "nud", "permanent"])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The names of the switch's ports (one per node, then the client's):
    /// where a test attaches an XDP program so that frames a node's XDP
    /// program transmits (XDP_TX on a veth) are received in native mode.
    pub fn switch_ports(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|n| format!("lbsw-{n}")).chain(["lbsw-c".to_string()]).collect()
    }

    /// Routes `cidr` from the client through node `n` (an external or
    /// LoadBalancer IP announced by that node), through the router if
    /// there is one.
    pub fn client_route(&self, cidr: &str, n: usize) -> Result<()> {
        match &self.router {
            Some(router) => {
                self.client.ip(&["route", "replace", cidr, "via", &ROUTER_CLIENT_SIDE.to_string(), "dev", CLIENT_IF])?;
                router.ip(&["route", "replace", cidr, "via", &node_ip(n).to_string(), "dev", "rtr-sw"])
            }
            None => self.client.ip(&["route", "replace", cidr, "via", &node_ip(n).to_string(), "dev", CLIENT_IF]),
        }
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
        out.extend(self.router.iter().map(|r| r.name().to_owned()));
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

/// The switch stands for the network's L2 switch, which filters nothing:
/// where the host has `br_netfilter`, bridged frames would go through the
/// switch namespace's IP hooks too (its sysctls are per namespace, on by
/// default), a cost every north-south packet paid there and no real node's
/// network does.
fn plain_switch(switch: &Netns) -> Result<()> {
    for key in ["net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables", "net.bridge.bridge-nf-call-arptables"] {
        if let Err(e) = switch.sysctl(key, "0") {
            // No br_netfilter: nothing to turn off.
            if crate::io_error_kind(&e) != Some(std::io::ErrorKind::NotFound) {
                return Err(e);
            }
        }
    }
    Ok(())
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
