//! A sealed "Kubernetes node": a node namespace routing to pod namespaces.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, bail};

use crate::Netns;

/// The node IP, on the dummy interface [`NODE_IF`] in the node namespace.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// Dummy interface holding [`NODE_IP`].
pub const NODE_IF: &str = "lbnode";
/// The pods' (Calico-style) default gateway, answered by proxy ARP on the node.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Interface name of every pod's end of its veth pair.
pub const POD_IF: &str = "eth0";
/// Maximum number of pods in one [`NodeLab`] (10.244.0.11 ..= 10.244.0.254).
pub const MAX_PODS: usize = 244;

/// The IP of pod `index`: `10.244.0.(11 + index)`.
pub fn pod_ip(index: usize) -> Ipv4Addr {
    assert!(index < MAX_PODS, "pod index {index} out of range");
    Ipv4Addr::new(10, 244, 0, 11 + index as u8)
}

/// The node's IPv6 address (with [`NodeLab::enable_ipv6`]), on [`NODE_IF`].
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 1);
/// The pods' IPv6 default gateway: the same link-local address on every
/// node-side veth end (as Calico's `fe80::ecee:eeff:feee:eeee`).
pub const GATEWAY_IP6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The IPv6 address of pod `index` (with [`NodeLab::enable_ipv6`]):
/// `fd00:244::(11 + index)`, written in hex as `pod_ip`'s last octet is in
/// decimal (`pod_ip(0)` = 10.244.0.11, `pod_ip6(0)` = fd00:244::b).
pub fn pod_ip6(index: usize) -> Ipv6Addr {
    assert!(index < MAX_PODS, "pod index {index} out of range");
    Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 11 + index as u16)
}

/// The node-side interface of pod `index`: `lbp<index>`.
pub fn host_if(index: usize) -> String {
    format!("lbp{index}")
}

/// Reverse-path filtering on every interface of a lab node: strict.
pub const RP_FILTER: &str = "1";

/// Makes a node namespace forward and filter as a strict real node does:
/// `ip_forward=1`, `rp_filter=1` on all, default and lo.
pub fn strict_node(node: &Netns) -> Result<()> {
    for (k, v) in [
        ("net.ipv4.conf.all.rp_filter", RP_FILTER),
        ("net.ipv4.conf.default.rp_filter", RP_FILTER),
        ("net.ipv4.conf.lo.rp_filter", RP_FILTER),
        ("net.ipv4.ip_forward", "1"),
    ] {
        node.sysctl(k, v)?;
    }
    Ok(())
}

/// A pod: its own namespace behind a veth pair whose other end (`host_if`)
/// is in the node namespace.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub host_if: String,
}

/// One node: a node namespace with IPv4 forwarding on and pods behind veth
/// pairs, Calico-style.
///
/// * pod `i` has `10.244.0.(11+i)/32` on `eth0`, a link route to
///   `169.254.1.1 dev eth0` and `default via 169.254.1.1 dev eth0`;
/// * the node side `lbp<i>` has `proxy_arp=1` (and `neigh.proxy_delay=0`,
///   as Calico does) and the node has
///   `10.244.0.(11+i) dev lbp<i>`;
/// * the node is strict, as real nodes are: `ip_forward=1` and strict
///   reverse-path filtering (`rp_filter=1`) on all/default and every
///   interface (Calico sets 1 on its `cali*` interfaces; systemd
///   distributions default to 2), and a dummy `lbnode` with `10.0.0.1/32` (an `ifb` device
///   where the kernel lacks `CONFIG_DUMMY`). `169.254.1.1/32` is
///   routed into `lbnode` (a sink) so that proxy ARP answers for the gateway.
///
/// No interface or route leads out of the lab: nothing is created in the
/// root namespace and there is no default route in the node.
#[derive(Debug)]
pub struct NodeLab {
    pub node: Netns,
    pub pods: Vec<Pod>,
}

impl NodeLab {
    /// Builds the node and one pod per name (in order, so `pod_names[i]` gets
    /// [`pod_ip(i)`](pod_ip)). Pod names must be unique.
    pub fn new(pod_names: &[&str]) -> Result<NodeLab> {
        let node = Netns::new("node")?;
        strict_node(&node)?;
        // Kernels without CONFIG_DUMMY (like some CI VMs): an `ifb` device is
        // an equally good sink (it drops everything not redirected into it).
        if let Err(e) = node.ip(&["link", "add", NODE_IF, "type", "dummy"]) {
            node.ip(&["link", "add", NODE_IF, "type", "ifb"])
                .map_err(|e2| e2.context(format!("no dummy device ({e:#}), and no ifb either")))?;
        }
        node.sysctl(&format!("net.ipv4.conf.{NODE_IF}.rp_filter"), RP_FILTER)?;
        node.ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", NODE_IF])?;
        node.ip(&["link", "set", NODE_IF, "up"])?;
        // Proxy ARP only answers for targets with a unicast route through
        // another interface: give the gateway address one, into the sink.
        node.ip(&["route", "add", &format!("{GATEWAY_IP}/32"), "dev", NODE_IF])?;

        let mut lab = NodeLab { node, pods: Vec::new() };
        for name in pod_names {
            lab.add_pod(name)?;
        }
        Ok(lab)
    }

    /// The pod called `name`. Panics if there is none.
    pub fn pod(&self, name: &str) -> &Pod {
        self.try_pod(name).unwrap_or_else(|| panic!("no pod named {name:?} in lab"))
    }

    /// The pod called `name`, if any.
    pub fn try_pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// Adds a pod at the next index.
    pub fn add_pod(&mut self, name: &str) -> Result<&Pod> {
        if self.try_pod(name).is_some() {
            bail!("pod {name:?} already exists");
        }
        let index = self.pods.len();
        if index >= MAX_PODS {
            bail!("too many pods (max {MAX_PODS})");
        }
        let ip = pod_ip(index);
        let host_if = host_if(index);
        let ns = Netns::new(name)?;
        let pod = Pod { name: name.to_owned(), ns, ip, host_if };
        if let Err(e) = self.wire_pod(&pod) {
            // The pod namespace goes away with `pod`; the veth goes with it,
            // but asynchronously: remove the node end now.
            let _ = self.node.ip(&["link", "del", &pod.host_if]);
            return Err(e.context(format!("set up pod {name:?}")));
        }
        self.pods.push(pod);
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Wires pod `name` to the node again, as a CNI plugin does for a pod
    /// made again with the same address: its veth pair is deleted and made
    /// anew (the node end keeps its name, with another ifindex and both
    /// ends other MACs), with the address and routes as before. Sockets in
    /// the pod's namespace stay open.
    pub fn rewire_pod(&self, name: &str) -> Result<()> {
        let pod = self.try_pod(name).with_context(|| format!("no pod {name:?}"))?;
        self.node.ip(&["link", "del", &pod.host_if]).context("delete the pod's veth pair")?;
        self.wire_pod(pod).with_context(|| format!("wire pod {name:?} again"))
    }

    fn wire_pod(&self, pod: &Pod) -> Result<()> {
        let node = &self.node;
        let hif = pod.host_if.as_str();
        // Both ends are created directly inside lab namespaces.
        node.ip(&["link", "add", hif, "type", "veth", "peer", "name", POD_IF, "netns", pod.ns.name()]).context("create veth pair")?;

        let p = &pod.ns;
        p.ip(&["addr", "add", &format!("{}/32", pod.ip), "dev", POD_IF])?;
        p.ip(&["link", "set", POD_IF, "up"])?;
        p.ip(&["route", "add", &format!("{GATEWAY_IP}/32"), "dev", POD_IF, "scope", "link"])?;
        p.ip(&["route", "add", "default", "via", &GATEWAY_IP.to_string(), "dev", POD_IF])?;

        node.sysctl(&format!("net.ipv4.conf.{hif}.proxy_arp"), "1")?;
        // Otherwise proxy ARP replies to broadcast requests are delayed by up
        // to neigh.proxy_delay (0.8 s), stalling every pod's first packet.
        node.sysctl(&format!("net.ipv4.neigh.{hif}.proxy_delay"), "0")?;
        node.sysctl(&format!("net.ipv4.conf.{hif}.rp_filter"), RP_FILTER)?;
        node.ip(&["link", "set", hif, "up"])?;
        node.ip(&["route", "add", &format!("{}/32", pod.ip), "dev", hif])?;
        Ok(())
    }

    /// Gives the node and every pod an IPv6 address as well (dual stack):
    /// the node [`NODE_IP6`]`/128` on [`NODE_IF`] and IPv6 forwarding; pod
    /// `i` [`pod_ip6(i)`](pod_ip6)`/128` on `eth0` with a default route
    /// via [`GATEWAY_IP6`], which the node side `lbp<i>` holds, and the
    /// node a route `pod_ip6(i) dev lbp<i>`. Addresses skip duplicate
    /// address detection, so they are usable at once. Pods added later
    /// get no IPv6 address.
    pub fn enable_ipv6(&self) -> Result<()> {
        let node = &self.node;
        node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        node.ip(&["-6", "addr", "add", &format!("{NODE_IP6}/128"), "dev", NODE_IF, "nodad"])?;
        for (i, pod) in self.pods.iter().enumerate() {
            let ip6 = pod_ip6(i);
            let hif = pod.host_if.as_str();
            node.ip(&["-6", "addr", "add", &format!("{GATEWAY_IP6}/64"), "dev", hif, "nodad"])?;
            node.ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", hif])?;
            let p = &pod.ns;
            p.ip(&["-6", "addr", "add", &format!("{ip6}/128"), "dev", POD_IF, "nodad"])?;
            p.ip(&["-6", "route", "add", "default", "via", &GATEWAY_IP6.to_string(), "dev", POD_IF])?;
        }
        Ok(())
    }

    /// The IPv6 address of the pod called `name` (see
    /// [`NodeLab::enable_ipv6`]). Panics if there is none.
    pub fn pod_ip6(&self, name: &str) -> Ipv6Addr {
        let i = self.pods.iter().position(|p| p.name == name).unwrap_or_else(|| panic!("no pod named {name:?} in lab"));
        pod_ip6(i)
    }

    /// All namespace names of the lab (node first).
    pub fn netns_names(&self) -> Vec<String> {
        std::iter::once(self.node.name().to_owned()).chain(self.pods.iter().map(|p| p.ns.name().to_owned())).collect()
    }
}

impl Drop for NodeLab {
    fn drop(&mut self) {
        // Pods first, then the node (the field order would do node first;
        // either is correct, this one leaves no dangling veth ends).
        self.pods.clear();
    }
}
