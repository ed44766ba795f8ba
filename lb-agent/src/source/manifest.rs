//! Reads Services and EndpointSlices from a directory of Kubernetes YAML.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file in the directory (not
//! recursive) is read; a file may hold several documents and `kind: List`.
//! Objects are parsed into the real k8s-openapi types. A document that does
//! not parse is skipped with a warning naming the file, the document and the
//! field; everything else still loads. Nodes are read too, for this
//! agent's own (its zone and addresses, as the API source watches it).
//! Other kinds are ignored, so a directory can hold a whole application.

use std::{
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde::{Deserialize, de::DeserializeOwned};
use tracing::{debug, warn};

/// An object together with where it came from, for messages.
#[derive(Clone, Debug, PartialEq)]
pub struct Sourced<T> {
    pub origin: String,
    pub obj: T,
}

#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Vec<Sourced<Service>>,
    pub slices: Vec<Sourced<crate::source::slice::Slice>>,
    pub nodes: Vec<Sourced<Node>>,
    /// One line per skipped document or unreadable file.
    pub problems: Vec<String>,
}

impl Objects {
    fn problem(&mut self, msg: String) {
        warn!("{msg}");
        self.problems.push(msg);
    }
}

/// The manifest files of a directory, sorted for a stable order.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if is_manifest_file(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Whether `path` is a manifest: a file (or a link to one) with a
/// manifest's name ([`is_manifest_name`]).
fn is_manifest_file(path: &Path) -> bool {
    is_manifest_name(path) && path.is_file()
}

/// Whether `path` is named as a manifest: `*.yaml`, `*.yml` or `*.json`,
/// not hidden (editors' swap files, and Kubernetes ConfigMap mounts'
/// `..data` links).
pub fn is_manifest_name(path: &Path) -> bool {
    let is_manifest = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"));
    let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
    is_manifest && !hidden
}

/// Reads every manifest in `dir`.
pub fn read_dir(dir: &Path) -> std::io::Result<Objects> {
    let mut objects = Objects::default();
    for file in manifest_files(dir)? {
        read_file(&file, &mut objects);
    }
    Ok(objects)
}

/// Reads and parses one file into `out` (a file that cannot be read is a
/// problem, logged and recorded).
pub fn read_file(file: &Path, out: &mut Objects) {
    match fs::read_to_string(file) {
        Ok(text) => parse_into(&file.display().to_string(), &text, out),
        Err(e) => out.problem(format!("{}: cannot read: {e}", file.display())),
    }
}

/// Parses one file's text (one or more YAML documents).
pub fn parse_into(origin: &str, text: &str, out: &mut Objects) {
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let place = format!("{origin} (document {})", index + 1);
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue, // empty document
            Ok(v) => v,
            Err(e) => {
                // A syntax error leaves the parser without a next document
                // boundary it can trust (and serde_yaml repeats the error
                // forever): skip the rest of the file.
                out.problem(format!("{place}: not valid YAML, rest of the file skipped: {e}"));
                break;
            }
        };
        parse_value(&place, value, out);
    }
}

fn parse_value(place: &str, value: serde_yaml::Value, out: &mut Objects) {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let api_version = value.get("apiVersion").and_then(|k| k.as_str()).unwrap_or("");
    match (api_version, kind) {
        ("v1", "Service") => {
            if let Some(obj) = typed::<Service>(place, value, out) {
                out.services.push(Sourced { origin: place.to_string(), obj });
            }
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            if let Some(obj) = typed::<EndpointSlice>(place, value, out) {
                out.slices.push(Sourced { origin: place.to_string(), obj: obj.into() });
            }
        }
        ("v1", "Node") => {
            if let Some(obj) = typed::<Node>(place, value, out) {
                out.nodes.push(Sourced { origin: place.to_string(), obj });
            }
        }
        (_, "List") | (_, "ServiceList") | (_, "EndpointSliceList") | (_, "NodeList") => {
            let items = match value.get("items") {
                Some(serde_yaml::Value::Sequence(items)) => items.clone(),
                _ => {
                    out.problem(format!("{place}: {kind} without an items list, skipped"));
                    return;
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                parse_value(&format!("{place} items[{i}]"), item, out);
            }
        }
        ("", _) | (_, "") => out.problem(format!("{place}: missing apiVersion or kind, skipped")),
        _ => debug!("{place}: ignoring {api_version}/{kind}"),
    }
}

/// Deserializes into a k8s-openapi type, naming the failing field.
/// Unknown fields are reported but do not reject the object.
fn typed<T: DeserializeOwned>(place: &str, value: serde_yaml::Value, out: &mut Objects) -> Option<T> {
    let name = object_name(&value);
    let mut unknown = Vec::new();
    let result: Result<T, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut |path: serde_ignored::Path<'_>| {
            unknown.push(path.to_string())
        }));
    match result {
        Ok(obj) => {
            for field in unknown {
                warn!("{place}: {name}: unknown field `{field}` ignored");
            }
            Some(obj)
        }
        Err(e) => {
            let field = e.path().to_string();
            out.problem(format!("{place}: {name}: invalid field `{field}`: {}; object skipped", e.inner()));
            None
        }
    }
}

fn object_name(value: &serde_yaml::Value) -> String {
    let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or("object");
    let meta = value.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(|v| v.as_str()).unwrap_or("<unnamed>");
    if kind == "Node" {
        // Cluster-scoped.
        return format!("{kind} {name}");
    }
    let ns = meta.and_then(|m| m.get("namespace")).and_then(|v| v.as_str()).unwrap_or("default");
    format!("{kind} {ns}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: http, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.0.12]
  conditions: {ready: true}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
"#;

    #[test]
    fn multi_document_file() {
        let mut out = Objects::default();
        parse_into("x.yaml", GOOD, &mut out);
        assert_eq!(out.services.len(), 1);
        assert_eq!(out.slices.len(), 1);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.services[0].origin, "x.yaml (document 1)");
    }

    #[test]
    fn nodes_are_read_alone_and_in_lists() {
        let node = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a, labels: {topology.kubernetes.io/zone: z1}}\n\
                    status: {addresses: [{type: InternalIP, address: 192.168.50.1}]}\n";
        let list = "apiVersion: v1\nkind: NodeList\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {name: node-b}\n";
        let bad = "apiVersion: v1\nkind: Node\nmetadata: {name: node-c}\nstatus: {addresses: 7}\n";
        let mut out = Objects::default();
        parse_into("n.yaml", &format!("{node}---\n{list}---\n{bad}"), &mut out);
        let names: Vec<_> = out.nodes.iter().map(|n| n.obj.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, ["node-a", "node-b"]);
        assert_eq!(out.nodes[1].origin, "n.yaml (document 2) items[0]");
        assert_eq!(out.problems.len(), 1, "{:?}", out.problems);
        assert!(out.problems[0].contains("Node node-c") && out.problems[0].contains("status.addresses"), "{}", out.problems[0]);
    }

    #[test]
    fn bad_field_is_named_and_rest_loads() {
        let text = format!(
            "{GOOD}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: bad, namespace: demo}}\nspec:\n  ports: [{{port: notanumber}}]\n"
        );
        let mut out = Objects::default();
        parse_into("y.yaml", &text, &mut out);
        assert_eq!(out.services.len(), 1);
        assert_eq!(out.problems.len(), 1);
        let p = &out.problems[0];
        assert!(p.contains("y.yaml (document 4)"), "{p}");
        assert!(p.contains("Service demo/bad"), "{p}");
        assert!(p.contains("spec.ports[0].port"), "{p}");
    }

    #[test]
    fn broken_yaml_and_missing_kind() {
        let mut out = Objects::default();
        parse_into("z.yaml", "a: [1, 2\n", &mut out);
        parse_into("w.yaml", "apiVersion: v1\nmetadata: {name: x}\n", &mut out);
        assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
        assert!(out.problems[0].starts_with("z.yaml"));
        assert!(out.problems[1].contains("missing apiVersion or kind"));
    }

    #[test]
    fn a_slice_keeps_its_trigger_time() {
        let text = GOOD.replace(
            "  name: web-abc\n",
            "  name: web-abc\n  annotations: {endpoints.kubernetes.io/last-change-trigger-time: \"2026-12-02T05:00:01Z\"}\n",
        );
        let mut out = Objects::default();
        parse_into("t.yaml", &text, &mut out);
        let t = out.slices[0].obj.trigger_time.expect("the trigger time");
        assert_eq!(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), 1_796_187_601);
        parse_into("g.yaml", GOOD, &mut out);
        assert_eq!(out.slices[1].obj.trigger_time, None);
    }

    #[test]
    fn list_kind() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n  spec: {clusterIP: 10.96.0.1, ports: [{port: 53, protocol: UDP}]}\n";
        let mut out = Objects::default();
        parse_into("l.yaml", text, &mut out);
        assert_eq!(out.services.len(), 1, "{:?}", out.problems);
    }
}
