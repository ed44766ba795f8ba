//! Objects from the API server trimmed to what translation reads, before
//! they are converted and stored: an object as the API server sends it
//! carries `managedFields`, annotations (`kubectl.kubernetes.io/
//! last-applied-configuration` alone repeats the whole object), owner
//! references, the Service's selector and conditions, each endpoint's
//! `targetRef`... none of which lb uses. Trimming the JSON first also
//! spares converting them.
//!
//! The watches themselves use kube-proxy's label selector
//! ([`WATCH_LABEL_SELECTOR`]), so the API server never sends the Services
//! (and their slices) of another proxy, nor headless ones.

use serde_json::Value;

use super::{
    Kind,
    kube::ZONE_LABEL,
    slice::{SERVICE_NAME_LABEL, TRIGGER_TIME_ANNOTATION},
};
use crate::translate::{BACKEND_SELECTION_ANNOTATION, SERVICE_PROXY_NAME_LABEL};

/// kube-proxy's label selector for Services and EndpointSlices (the
/// EndpointSlice controller copies a Service's labels to its slices and
/// labels those of headless Services).
pub const WATCH_LABEL_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Removes from any object's JSON (a Service, an EndpointSlice, a Node)
/// the metadata no part of the agent reads: done as each object of a list
/// page or watch event is read, so a page never holds `managedFields`.
/// Keeps name, namespace, `deletionTimestamp`, the labels lb reads (a
/// Service's proxy name, a slice's Service, a Node's zone), lb's own
/// annotation and a slice's change trigger time (network programming
/// latency).
pub fn trim_metadata(v: &mut Value) {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations" | "deletionTimestamp"));
        keep_only(meta.get_mut("labels"), &[SERVICE_PROXY_NAME_LABEL, SERVICE_NAME_LABEL, ZONE_LABEL]);
        keep_only(meta.get_mut("annotations"), &[BACKEND_SELECTION_ANNOTATION, TRIGGER_TIME_ANNOTATION]);
    }
}

/// Removes from `v` (a Service or an EndpointSlice as JSON) what
/// translation does not read.
pub fn trim(kind: Kind, v: &mut Value) {
    trim_metadata(v);
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("deletionTimestamp");
        let keep_labels: &[&str] = match kind {
            Kind::Service => &[SERVICE_PROXY_NAME_LABEL],
            Kind::EndpointSlice => &[SERVICE_NAME_LABEL],
        };
        keep_only(meta.get_mut("labels"), keep_labels);
    }
    match kind {
        Kind::Service => {
            if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("selector");
            }
            if let Some(status) = v.get_mut("status").and_then(Value::as_object_mut) {
                status.retain(|k, _| k == "loadBalancer");
                if let Some(ingress) = status.get_mut("loadBalancer").and_then(|lb| lb.get_mut("ingress")).and_then(Value::as_array_mut) {
                    for ing in ingress.iter_mut().filter_map(Value::as_object_mut) {
                        ing.retain(|k, _| k == "ip" || k == "ipMode");
                    }
                }
            }
        }
        Kind::EndpointSlice => {
            for ep in v.get_mut("endpoints").and_then(Value::as_array_mut).into_iter().flatten().filter_map(Value::as_object_mut) {
                ep.retain(|k, _| matches!(k.as_str(), "addresses" | "conditions" | "nodeName" | "zone" | "hints"));
            }
        }
    }
}

fn keep_only(map: Option<&mut Value>, keys: &[&str]) {
    if let Some(m) = map.and_then(Value::as_object_mut) {
        m.retain(|k, _| keys.contains(&k.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keeps_what_translation_reads() {
        let mut svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "x", "uid": "u", "resourceVersion": "7",
                "labels": {"app": "web", SERVICE_PROXY_NAME_LABEL: "other"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", BACKEND_SELECTION_ANNOTATION: "maglev"},
                "managedFields": [{"manager": "kubectl"}], "ownerReferences": [{"name": "o"}]},
            "spec": {"clusterIP": "10.96.0.1", "selector": {"app": "web"}, "ports": [{"port": 80}]},
            "status": {"conditions": [{"type": "x"}], "loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP", "ports": [{"port": 80}]}]}}
        });
        trim(Kind::Service, &mut svc);
        assert_eq!(
            svc,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "x", "labels": {SERVICE_PROXY_NAME_LABEL: "other"},
                    "annotations": {BACKEND_SELECTION_ANNOTATION: "maglev"}},
                "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}]}}
            })
        );
        let mut slice = json!({
            "metadata": {"name": "web-1", "labels": {SERVICE_NAME_LABEL: "web", "endpointslice.kubernetes.io/managed-by": "c"},
                "annotations": {TRIGGER_TIME_ANNOTATION: "2026-12-02T05:00:01Z", "other": "x"},
                "managedFields": [{}]},
            "addressType": "IPv4", "ports": [{"port": 8080}],
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "nodeName": "n", "zone": "z",
                "hints": {"forZones": [{"name": "z"}]}, "targetRef": {"kind": "Pod", "name": "p"}, "deprecatedTopology": {"a": "b"}}]
        });
        trim(Kind::EndpointSlice, &mut slice);
        assert_eq!(
            slice,
            json!({
                "metadata": {"name": "web-1", "labels": {SERVICE_NAME_LABEL: "web"},
                    "annotations": {TRIGGER_TIME_ANNOTATION: "2026-12-02T05:00:01Z"}},
                "addressType": "IPv4", "ports": [{"port": 8080}],
                "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "nodeName": "n", "zone": "z",
                    "hints": {"forZones": [{"name": "z"}]}}]
            })
        );
    }
}
