//! An EndpointSlice reduced to what translation reads.
//!
//! A k8s-openapi `Endpoint` is 352 bytes, almost all of it empty `Option`s
//! (hints, targetRef, deprecated topology, ...); at 10,000 Services with 10
//! endpoints each the store held about 45 MiB of them. Sources convert each
//! slice when it arrives, so the store keeps about 100 bytes per endpoint.

use std::{sync::Arc, time::SystemTime};

use k8s_openapi::{
    api::discovery::v1::{Endpoint, EndpointHints, EndpointPort, EndpointSlice},
    jiff::Timestamp,
};
use tracing::warn;

use super::shared;
use crate::model::Hints;

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// When the change that produced this version of the slice happened (a
/// Pod or Service update), as the EndpointSlice controller writes it
/// (RFC 3339): the start of the network programming latency.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Slice {
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The `kubernetes.io/service-name` label.
    pub service: Option<String>,
    pub address_type: String,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<SliceEndpoint>,
    /// The [`TRIGGER_TIME_ANNOTATION`], when present and readable.
    pub trigger_time: Option<SystemTime>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// The first address (kube-proxy uses only that one), as written.
    pub address: Option<Box<str>>,
    /// The conditions as given; `None` keeps the API's defaulting rules
    /// for translation to apply.
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    /// Node name and zone, shared ([`shared::name`]).
    pub node_name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// Topology hints; `None` when there is none (most endpoints).
    /// Shared ([`shared::hints`]): the endpoints of a zone have the same.
    pub hints: Option<Arc<Hints>>,
}

impl From<EndpointSlice> for Slice {
    fn from(s: EndpointSlice) -> Slice {
        let mut labels = s.metadata.labels.unwrap_or_default();
        let trigger_time = s.metadata.annotations.as_ref().and_then(|a| a.get(TRIGGER_TIME_ANNOTATION)).and_then(|v| {
            parse_trigger_time(v)
                .map_err(|e| {
                    let (ns, name) = (s.metadata.namespace.as_deref().unwrap_or("default"), s.metadata.name.as_deref().unwrap_or(""));
                    warn!("EndpointSlice {ns}/{name}: annotation {TRIGGER_TIME_ANNOTATION} {v:?} is not an RFC 3339 time ({e}); ignored");
                })
                .ok()
        });
        Slice {
            namespace: s.metadata.namespace,
            name: s.metadata.name,
            service: labels.remove(SERVICE_NAME_LABEL),
            address_type: s.address_type,
            ports: s.ports.unwrap_or_default(),
            endpoints: endpoints(s.endpoints),
            trigger_time,
        }
    }
}

/// Reads a [`TRIGGER_TIME_ANNOTATION`] value (RFC 3339, as
/// `metav1.Time` writes it).
pub fn parse_trigger_time(value: &str) -> Result<SystemTime, String> {
    value.parse::<Timestamp>().map(SystemTime::from).map_err(|e| e.to_string())
}

fn endpoints(list: Vec<Endpoint>) -> Vec<SliceEndpoint> {
    // A fresh Vec: `into_iter().map().collect()` would reuse the source
    // allocation (sized for 352-byte Endpoints) and keep all of it.
    let mut out = Vec::with_capacity(list.len());
    out.extend(list.into_iter().map(|ep| {
        let cond = ep.conditions.unwrap_or_default();
        SliceEndpoint {
            address: ep.addresses.into_iter().next().map(String::into_boxed_str),
            ready: cond.ready,
            serving: cond.serving,
            terminating: cond.terminating,
            node_name: ep.node_name.map(shared::name),
            zone: ep.zone.map(shared::name),
            hints: ep.hints.and_then(hints).map(shared::hints),
        }
    }));
    out
}

fn hints(h: EndpointHints) -> Option<Hints> {
    let zones: Vec<String> = h.for_zones.into_iter().flatten().map(|z| z.name).collect();
    let nodes: Vec<String> = h.for_nodes.into_iter().flatten().map(|n| n.name).collect();
    (!zones.is_empty() || !nodes.is_empty()).then_some(Hints { zones, nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_translation_reads() {
        let s: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "x", "labels": {SERVICE_NAME_LABEL: "web", "other": "y"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1", "10.0.0.2"], "conditions": {"ready": false, "terminating": true}, "nodeName": "n1", "zone": "z",
                 "hints": {"forZones": [{"name": "z"}, {"name": "y"}], "forNodes": [{"name": "n1"}]}},
                {"addresses": []}
            ]
        }))
        .unwrap();
        let s = Slice::from(s);
        assert_eq!((s.namespace.as_deref(), s.name.as_deref(), s.service.as_deref()), (Some("x"), Some("web-1"), Some("web")));
        assert_eq!(s.ports[0].port, Some(8080));
        let e = &s.endpoints[0];
        assert_eq!(e.address.as_deref(), Some("10.0.0.1"));
        assert_eq!((e.ready, e.serving, e.terminating), (Some(false), None, Some(true)));
        assert_eq!((e.node_name.as_deref(), e.zone.as_deref()), (Some("n1"), Some("z")));
        let h = e.hints.as_deref().unwrap();
        assert_eq!((h.zones.as_slice(), h.nodes.as_slice()), (&["z".to_string(), "y".to_string()][..], &["n1".to_string()][..]));
        assert_eq!(s.endpoints[1], SliceEndpoint::default());
        assert_eq!(s.trigger_time, None);
    }

    #[test]
    fn equal_names_and_hints_are_shared() {
        let ep = |zone: &str| serde_json::json!({"addresses": ["10.0.0.1"], "hints": {"forZones": [{"name": zone}]}});
        let s: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1"}, "addressType": "IPv4", "endpoints": [ep("a"), ep("b"), ep("a")]
        }))
        .unwrap();
        let s = Slice::from(s);
        let h: Vec<&Arc<Hints>> = s.endpoints.iter().map(|e| e.hints.as_ref().unwrap()).collect();
        assert!(Arc::ptr_eq(h[0], h[2]));
        assert!(!Arc::ptr_eq(h[0], h[1]));
        assert_eq!((h[0].zones.as_slice(), h[1].zones.as_slice()), (&["a".to_string()][..], &["b".to_string()][..]));
        let other: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-2"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.2"], "nodeName": "n1", "zone": "a", "hints": {"forZones": [{"name": "a"}]}}]
        }))
        .unwrap();
        let e = &Slice::from(other).endpoints[0];
        assert!(Arc::ptr_eq(e.hints.as_ref().unwrap(), h[0]), "shared across slices");
        let again = shared::name("n1".to_string());
        assert!(Arc::ptr_eq(e.node_name.as_ref().unwrap(), &again));
    }

    #[test]
    fn reads_the_trigger_time_and_ignores_a_malformed_one() {
        let with = |value: &str| {
            let s: EndpointSlice = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web-1", "namespace": "x", "annotations": {TRIGGER_TIME_ANNOTATION: value}},
                "addressType": "IPv4", "endpoints": []
            }))
            .unwrap();
            Slice::from(s).trigger_time
        };
        let t = with("2026-12-02T05:00:01Z").unwrap();
        assert_eq!(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), 1_796_187_601);
        let t = with("2026-12-02T06:00:01.5+01:00").unwrap();
        assert_eq!(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(), 1_796_187_601_500);
        assert_eq!(with("yesterday"), None);
        assert_eq!(with(""), None);
    }
}
