//! The example manifests (`examples/manifests`): checking that they match
//! the demo's lab, and rewriting their endpoints for the scaling steps.

use std::{fmt::Write as _, fs, net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result, bail, ensure};
use serde_yaml::Value;

/// What the demo expects of one manifest file: a Service with one port and
/// EndpointSlices listing the lab's backend pods.
#[derive(Debug)]
pub struct Expected<'a> {
    pub file: &'a str,
    pub service: &'a str,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub protocol: &'a str,
    pub port_name: &'a str,
    /// The EndpointSlice port of the same name.
    pub target_port: u16,
    /// (pod name, pod IP) of every endpoint, in the lab.
    pub endpoints: &'a [(&'a str, Ipv4Addr)],
}

/// Fails, saying what differs, unless `dir/<file>` holds the Service and
/// endpoints of `want`.
pub fn check(dir: &Path, want: &Expected<'_>) -> Result<()> {
    let path = dir.join(want.file);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let docs = documents(&text).with_context(|| format!("parsing {}", path.display()))?;
    check_docs(&docs, want).with_context(|| {
        format!(
            "{} does not describe what the demo's lab runs; \
             the demo and the example manifests must be changed together",
            path.display()
        )
    })
}

fn check_docs(docs: &[Value], want: &Expected<'_>) -> Result<()> {
    let name = want.service;
    let service = docs
        .iter()
        .find(|doc| kind(doc) == "Service" && text_at(doc, &["metadata", "name"]) == Some(name))
        .with_context(|| format!("no Service named {name:?}"))?;
    let cluster_ip = text_at(service, &["spec", "clusterIP"]).unwrap_or("(none)");
    ensure!(cluster_ip == want.cluster_ip.to_string(), "Service {name} has clusterIP {cluster_ip}, the demo sends to {}", want.cluster_ip);
    let has_port = items(service, &["spec", "ports"]).iter().any(|port| {
        text_at(port, &["name"]) == Some(want.port_name)
            && number_at(port, &["port"]) == Some(u64::from(want.port))
            && text_at(port, &["protocol"]).unwrap_or("TCP") == want.protocol
    });
    ensure!(has_port, "Service {name} has no port named {:?} = {}/{}", want.port_name, want.port, want.protocol);

    let slices: Vec<&Value> = docs
        .iter()
        .filter(|doc| kind(doc) == "EndpointSlice" && text_at(doc, &["metadata", "labels", "kubernetes.io/service-name"]) == Some(name))
        .collect();
    ensure!(!slices.is_empty(), "no EndpointSlice labelled kubernetes.io/service-name: {name}");
    let mut found: Vec<(Option<&str>, Ipv4Addr)> = Vec::new();
    for slice in slices {
        let slice_name = text_at(slice, &["metadata", "name"]).unwrap_or("?");
        let has_port = items(slice, &["ports"]).iter().any(|port| {
            text_at(port, &["name"]) == Some(want.port_name) && number_at(port, &["port"]) == Some(u64::from(want.target_port))
        });
        ensure!(
            has_port,
            "EndpointSlice {slice_name} has no port named {:?} = {} (where the lab's pods listen)",
            want.port_name,
            want.target_port
        );
        for endpoint in items(slice, &["endpoints"]) {
            let ip = first_address(endpoint).with_context(|| format!("EndpointSlice {slice_name}: an endpoint without an IPv4 address"))?;
            found.push((text_at(endpoint, &["targetRef", "name"]), ip));
        }
    }
    let matches = found.len() == want.endpoints.len()
        && want.endpoints.iter().all(|&(pod, ip)| found.iter().any(|&(target, addr)| addr == ip && target.is_none_or(|t| t == pod)));
    if !matches {
        let listed: Vec<String> = found
            .iter()
            .map(|(target, ip)| match target {
                Some(pod) => format!("{ip} ({pod})"),
                None => ip.to_string(),
            })
            .collect();
        let lab: Vec<String> = want.endpoints.iter().map(|(pod, ip)| format!("{ip} ({pod})")).collect();
        bail!("the EndpointSlices of {name} list {}, but the lab's pods get {} (lb_lab::pod_ip)", or_none(&listed), or_none(&lab));
    }
    Ok(())
}

fn or_none(list: &[String]) -> String {
    if list.is_empty() { "no endpoints".to_owned() } else { list.join(", ") }
}

/// `text` (a manifest file) with the endpoints of every EndpointSlice
/// reduced to those whose address is in `keep`. Comments are not kept.
pub fn with_endpoints(text: &str, keep: &[Ipv4Addr], note: &str) -> Result<String> {
    let mut out = String::new();
    for line in note.lines() {
        let _ = writeln!(out, "# {line}");
    }
    for mut doc in documents(text)? {
        if kind(&doc) == "EndpointSlice"
            && let Some(Value::Sequence(endpoints)) = doc.get_mut("endpoints")
        {
            endpoints.retain(|ep| first_address(ep).is_some_and(|ip| keep.contains(&ip)));
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc).context("serializing a manifest")?);
    }
    Ok(out)
}

/// The YAML documents of a file (split at `---` lines; empty ones dropped).
fn documents(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut flush = |current: &mut String| -> Result<()> {
        let doc: Value = serde_yaml::from_str(current).with_context(|| format!("YAML document {}", docs.len() + 1))?;
        if !doc.is_null() {
            docs.push(doc);
        }
        current.clear();
        Ok(())
    };
    for line in text.lines() {
        if line.trim_end() == "---" {
            flush(&mut current)?;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current)?;
    Ok(docs)
}

fn kind(doc: &Value) -> &str {
    text_at(doc, &["kind"]).unwrap_or("")
}

fn value_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn text_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    value_at(value, path).and_then(Value::as_str)
}

fn number_at(value: &Value, path: &[&str]) -> Option<u64> {
    value_at(value, path).and_then(Value::as_u64)
}

fn items<'a>(value: &'a Value, path: &[&str]) -> &'a [Value] {
    value_at(value, path).and_then(Value::as_sequence).map_or(&[], Vec::as_slice)
}

fn first_address(endpoint: &Value) -> Option<Ipv4Addr> {
    items(endpoint, &["addresses"]).first().and_then(Value::as_str).and_then(|a| a.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_manifests() -> std::path::PathBuf {
        crate::util::workspace_root().join("examples/manifests")
    }

    fn web_expectation<'a>(endpoints: &'a [(&'a str, Ipv4Addr)]) -> Expected<'a> {
        Expected {
            file: "web.yaml",
            service: "web",
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            protocol: "TCP",
            port_name: "http",
            target_port: 8080,
            endpoints,
        }
    }

    #[test]
    fn repo_manifests_match_the_demo() {
        let pods = super::super::backend_pods();
        for want in super::super::expectations(&pods) {
            check(&repo_manifests(), &want).unwrap();
        }
    }

    #[test]
    fn mismatch_names_both_sides() {
        let wrong = [("web-1", Ipv4Addr::new(10, 244, 0, 99))];
        let err = check(&repo_manifests(), &web_expectation(&wrong)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("10.244.0.12 (web-1)"), "{msg}");
        assert!(msg.contains("10.244.0.99 (web-1)"), "{msg}");
    }

    #[test]
    fn rewriting_endpoints() {
        let text = fs::read_to_string(repo_manifests().join("web.yaml")).unwrap();
        let two = [Ipv4Addr::new(10, 244, 0, 12), Ipv4Addr::new(10, 244, 0, 13)];
        let rewritten = with_endpoints(&text, &two, "two left").unwrap();
        assert!(rewritten.starts_with("# two left\n---\n"), "{rewritten}");
        let pods = [("web-1", two[0]), ("web-2", two[1])];
        check_docs(&documents(&rewritten).unwrap(), &web_expectation(&pods)).unwrap();

        let none = with_endpoints(&text, &[], "none").unwrap();
        assert!(none.contains("endpoints: []"), "{none}");
        check_docs(&documents(&none).unwrap(), &web_expectation(&[])).unwrap();
    }
}
