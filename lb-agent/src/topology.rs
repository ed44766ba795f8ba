//! Topology-aware routing, as kube-proxy's `CategorizeEndpoints`
//! (pkg/proxy/topology.go, Kubernetes 1.33) decides it for the endpoints
//! of "cluster" traffic (ClusterIPs with `internalTrafficPolicy: Cluster`,
//! north-south frontends with `externalTrafficPolicy: Cluster`).
//!
//! kube-proxy reads only the EndpointSlice hints, which the EndpointSlice
//! controller writes from `spec.trafficDistribution` (PreferClose and
//! PreferSameZone give `forZones`, PreferSameNode gives `forNodes` too):
//!
//! - Only ready endpoints are looked at to choose the mode.
//! - Node hints win if every ready endpoint has one and one of them names
//!   this node.
//! - Otherwise zone hints, if every ready endpoint has one and one of them
//!   names this node's zone (`topology.kubernetes.io/zone`).
//! - Otherwise (a hint missing on some endpoint, no endpoint for this
//!   node or zone, a node without a zone label): every endpoint.
//!
//! In a topology mode, only the endpoints hinted for this node (or zone)
//! are used, ready ones first, then serving-terminating ones, as without
//! topology.

use crate::model::{Backend, IpFamily};

/// Which endpoints cluster traffic may use on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every endpoint (no usable hints).
    All,
    /// Those whose `forNodes` hints name this node.
    SameNode,
    /// Those whose `forZones` hints name this node's zone.
    SameZone,
}

/// kube-proxy's `topologyModeFromHints`. `node` and `zone` are this
/// node's name and zone label (absent: matches no hint).
pub fn mode<A: IpFamily>(backends: &[Backend<A>], node: Option<&str>, zone: Option<&str>) -> Mode {
    let (mut all_node_hints, mut for_node) = (true, false);
    let (mut all_zone_hints, mut for_zone) = (true, false);
    let mut any_ready = false;
    for b in backends.iter().filter(|b| !b.terminating) {
        any_ready = true;
        let hints = b.hints.as_deref();
        match hints.map(|h| h.zones.as_slice()).filter(|z| !z.is_empty()) {
            None => all_zone_hints = false,
            Some(zones) => for_zone |= zone.is_some_and(|z| zones.iter().any(|h| h == z)),
        }
        match hints.map(|h| h.nodes.as_slice()).filter(|n| !n.is_empty()) {
            None => all_node_hints = false,
            Some(nodes) => for_node |= node.is_some_and(|n| nodes.iter().any(|h| h == n)),
        }
    }
    // (With no ready endpoint, neither `for_*` can be set.)
    debug_assert!(any_ready || (!for_node && !for_zone));
    if all_node_hints && for_node {
        Mode::SameNode
    } else if all_zone_hints && for_zone {
        Mode::SameZone
    } else {
        Mode::All
    }
}

/// Whether `b` may take cluster traffic in `mode` (kube-proxy's
/// `availableForTopology`).
pub fn available<A: IpFamily>(b: &Backend<A>, mode: Mode, node: Option<&str>, zone: Option<&str>) -> bool {
    let has = |list: &[String], want: Option<&str>| want.is_some_and(|w| list.iter().any(|h| h == w));
    match mode {
        Mode::All => true,
        Mode::SameNode => b.hints.as_deref().is_some_and(|h| has(&h.nodes, node)),
        Mode::SameZone => b.hints.as_deref().is_some_and(|h| has(&h.zones, zone)),
    }
}

/// The endpoints cluster traffic uses on this node, or `None` when that is
/// all of them (no hint applies: the common case, which costs one pass).
pub fn cluster_backends<A: IpFamily>(backends: &[Backend<A>], node: Option<&str>, zone: Option<&str>) -> Option<Vec<Backend<A>>> {
    if !backends.iter().any(|b| b.hints.is_some()) {
        return None;
    }
    let mode = mode(backends, node, zone);
    if mode == Mode::All {
        return None;
    }
    // In a topology mode at least one ready endpoint is available, so
    // `Frontend::slot_backends` picks among the ready ones; terminating
    // ones outside this node or zone are not kept.
    Some(backends.iter().filter(|b| available(b, mode, node, zone)).cloned().collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{BackendAddr, Hints, Protocol};

    fn b(n: u8, terminating: bool, zones: &[&str], nodes: &[&str]) -> Backend {
        let hints = (!zones.is_empty() || !nodes.is_empty()).then(|| {
            Arc::new(Hints { zones: zones.iter().map(|s| s.to_string()).collect(), nodes: nodes.iter().map(|s| s.to_string()).collect() })
        });
        Backend {
            addr: BackendAddr { ip: [10, 0, 0, n].into(), port: 80, proto: Protocol::Tcp },
            terminating,
            node_name: None,
            zone: None,
            hints,
        }
    }

    fn ids(v: Option<Vec<Backend>>) -> Option<Vec<u8>> {
        v.map(|v| v.iter().map(|b| b.addr.ip.octets()[3]).collect())
    }

    const N: Option<&str> = Some("node-a");
    const Z: Option<&str> = Some("zone-a");

    #[test]
    fn zone_hints_select_this_zone() {
        let eps = [b(1, false, &["zone-a"], &[]), b(2, false, &["zone-b"], &[]), b(3, false, &["zone-a", "zone-c"], &[])];
        assert_eq!(mode(&eps, N, Z), Mode::SameZone);
        assert_eq!(ids(cluster_backends(&eps, N, Z)), Some(vec![1, 3]));
        // Another zone's node gets the others.
        assert_eq!(ids(cluster_backends(&eps, N, Some("zone-b"))), Some(vec![2]));
    }

    #[test]
    fn fallbacks_to_every_endpoint() {
        // A ready endpoint without hints: all.
        let missing = [b(1, false, &["zone-a"], &[]), b(2, false, &[], &[])];
        assert_eq!(mode(&missing, N, Z), Mode::All);
        assert_eq!(cluster_backends(&missing, N, Z), None);
        // No endpoint for this zone: all.
        let other = [b(1, false, &["zone-b"], &[]), b(2, false, &["zone-c"], &[])];
        assert_eq!(mode(&other, N, Z), Mode::All);
        // A node without a zone label: all.
        assert_eq!(mode(&[b(1, false, &["zone-a"], &[])], N, None), Mode::All);
        // A terminating endpoint without hints does not count.
        let t = [b(1, false, &["zone-a"], &[]), b(2, true, &[], &[]), b(3, false, &["zone-b"], &[])];
        assert_eq!(ids(cluster_backends(&t, N, Z)), Some(vec![1]));
        // No ready endpoint at all: all (the terminating ones).
        assert_eq!(mode(&[b(1, true, &["zone-a"], &[])], N, Z), Mode::All);
    }

    #[test]
    fn node_hints_win_when_complete() {
        let eps = [b(1, false, &["zone-a"], &["node-a"]), b(2, false, &["zone-a"], &["node-b"])];
        assert_eq!(mode(&eps, N, Z), Mode::SameNode);
        assert_eq!(ids(cluster_backends(&eps, N, Z)), Some(vec![1]));
        // No endpoint for this node: zone hints apply.
        assert_eq!(ids(cluster_backends(&eps, Some("node-c"), Z)), Some(vec![1, 2]));
        assert_eq!(mode(&eps, Some("node-c"), Z), Mode::SameZone);
        // A node hint missing on one endpoint: zone hints apply.
        let partial = [b(1, false, &["zone-a"], &["node-a"]), b(2, false, &["zone-b"], &[])];
        assert_eq!(mode(&partial, N, Z), Mode::SameZone);
        assert_eq!(ids(cluster_backends(&partial, N, Z)), Some(vec![1]));
    }
}
