//! What the agent takes from its own Node object, whichever source read
//! it (the API server's watch or a manifest directory): the zone label
//! for topology, and the node's addresses of each family for NodePorts on
//! `--nodeport-addresses primary`.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

/// The Node label giving its zone (topology hints).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// This node's facts as one Node object states them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub zone: Option<String>,
    pub internal_ips: Vec<IpAddr>,
}

impl NodeFacts {
    pub fn of(n: &Node) -> NodeFacts {
        NodeFacts { zone: n.metadata.labels.as_ref().and_then(|l| l.get(ZONE_LABEL)).cloned(), internal_ips: internal_ips(n) }
    }
}

/// A Node's addresses, as kube-proxy takes the node IPs of each family
/// for dual-stack: its `InternalIP` addresses, and for a family with none,
/// its `ExternalIP` addresses of that family.
pub fn internal_ips(n: &Node) -> Vec<IpAddr> {
    let addresses = n.status.as_ref().and_then(|s| s.addresses.as_ref());
    let of = |kind: &str| -> Vec<IpAddr> {
        addresses.into_iter().flatten().filter(|a| a.type_ == kind).filter_map(|a| a.address.parse().ok()).collect()
    };
    let (internal, external) = (of("InternalIP"), of("ExternalIP"));
    let mut out = internal.clone();
    for v4 in [true, false] {
        if !internal.iter().any(|ip| ip.is_ipv4() == v4) {
            out.extend(external.iter().filter(|ip| ip.is_ipv4() == v4));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addresses: serde_json::Value) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-a", "labels": {ZONE_LABEL: "zone-a"}},
            "status": {"addresses": addresses},
        }))
        .unwrap()
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn node_addresses_of_both_families() {
        // A dual-stack Node: its InternalIPs of both families.
        let n = node(serde_json::json!([
            {"type": "InternalIP", "address": "192.168.50.1"},
            {"type": "InternalIP", "address": "fd00:50::1"},
            {"type": "ExternalIP", "address": "2001:db8::1"},
            {"type": "Hostname", "address": "node-a"},
        ]));
        assert_eq!(internal_ips(&n), ips(&["192.168.50.1", "fd00:50::1"]));
        // A family without an InternalIP takes its ExternalIPs.
        let n = node(serde_json::json!([
            {"type": "InternalIP", "address": "192.168.50.1"},
            {"type": "ExternalIP", "address": "203.0.113.1"},
            {"type": "ExternalIP", "address": "2001:db8::1"},
        ]));
        assert_eq!(internal_ips(&n), ips(&["192.168.50.1", "2001:db8::1"]));
        assert!(internal_ips(&node(serde_json::json!([{"type": "Hostname", "address": "node-a"}]))).is_empty());
    }

    #[test]
    fn facts_hold_the_zone_label_and_the_addresses() {
        let n = node(serde_json::json!([{"type": "InternalIP", "address": "192.168.50.1"}]));
        assert_eq!(NodeFacts::of(&n), NodeFacts { zone: Some("zone-a".into()), internal_ips: ips(&["192.168.50.1"]) });
        assert_eq!(NodeFacts::of(&Node::default()), NodeFacts::default());
    }
}
