//! Every manifest in `deploy/` parses into the real k8s-openapi types with
//! no unknown (typoed) field, the ClusterRole grants exactly what the agent
//! watches, and the DaemonSet wires up what the agent needs.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use lb_agent::source::kube::WATCHED;
use serde::{Deserialize, de::DeserializeOwned};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[derive(Default)]
struct Manifests {
    daemonsets: Vec<DaemonSet>,
    service_accounts: Vec<ServiceAccount>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
}

/// Deserializes strictly: a field k8s-openapi does not know is an error.
fn strict<T: DeserializeOwned>(place: &str, value: serde_yaml::Value) -> T {
    let mut unknown = Vec::new();
    let obj: T = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut |path: serde_ignored::Path<'_>| {
        unknown.push(path.to_string())
    }))
    .unwrap_or_else(|e| panic!("{place}: invalid field `{}`: {}", e.path(), e.inner()));
    assert!(unknown.is_empty(), "{place}: unknown fields (typos?): {unknown:?}");
    obj
}

fn load() -> Manifests {
    let mut m = Manifests::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", deploy_dir().display());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let place = format!("{} (document {})", file.display(), i + 1);
            let value = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("{place}: {e}"));
            if value.is_null() {
                continue;
            }
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            let api_version = value["apiVersion"].as_str().unwrap_or_default().to_string();
            match (api_version.as_str(), kind.as_str()) {
                ("apps/v1", "DaemonSet") => m.daemonsets.push(strict(&place, value)),
                ("v1", "ServiceAccount") => m.service_accounts.push(strict(&place, value)),
                ("v1", "ConfigMap") => m.config_maps.push(strict(&place, value)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => m.roles.push(strict(&place, value)),
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => m.bindings.push(strict(&place, value)),
                other => panic!("{place}: unexpected {other:?}; teach this test about it"),
            }
        }
    }
    m
}

#[test]
fn every_manifest_parses_strictly() {
    let m = load();
    assert_eq!(m.daemonsets.len(), 1);
    assert_eq!(m.service_accounts.len(), 1);
    assert_eq!(m.roles.len(), 1);
    assert_eq!(m.bindings.len(), 1);
    assert_eq!(m.config_maps.len(), 1);
}

#[test]
fn a_typo_is_caught() {
    let value: serde_yaml::Value =
        serde_yaml::from_str("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x, namespce: y}\n").unwrap();
    let err = std::panic::catch_unwind(|| strict::<ServiceAccount>("typo", value)).unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains("metadata") && msg.contains("namespce"), "{msg}");
}

#[test]
fn cluster_role_grants_what_the_agent_watches_and_nothing_more() {
    let m = load();
    let role = &m.roles[0];
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none(), "{rule:?}");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(group != "*" && resource != "*" && verb != "*", "no wildcards: {rule:?}");
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let wanted: BTreeSet<(String, String, String)> = WATCHED
        .iter()
        .flat_map(|(g, r, verbs)| verbs.iter().map(move |v| (g.to_string(), r.to_string(), v.to_string())))
        .collect();
    assert_eq!(granted, wanted);

    let binding = &m.bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let sa = &m.service_accounts[0];
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && Some(&s.name) == sa.metadata.name.as_ref()
            && s.namespace == sa.metadata.namespace),
        "{subjects:?}"
    );
}

#[test]
fn daemonset_runs_the_agent_as_a_node_proxy() {
    let m = load();
    let ds = &m.daemonsets[0];
    let ns = ds.metadata.namespace.as_deref();
    assert_eq!(ns, Some("kube-system"), "system-node-critical is only admitted in kube-system");
    let spec = ds.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    assert_eq!(pod.service_account_name, m.service_accounts[0].metadata.name);
    assert_eq!(m.service_accounts[0].metadata.namespace.as_deref(), ns);
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()),
        "tolerates every taint: {tolerations:?}"
    );
    let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    for (k, v) in spec.selector.match_labels.iter().flatten() {
        assert_eq!(labels.get(k), Some(v), "the selector matches the template");
    }

    let c = &pod.containers[0];
    assert_eq!(c.security_context.as_ref().and_then(|s| s.privileged), Some(true));
    assert_eq!(c.args.as_deref(), Some(&["run".to_string()][..]));
    let node_name = c.env.iter().flatten().find(|e| e.name == "NODE_NAME").expect("NODE_NAME");
    let field = node_name.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
    assert_eq!(field, Some("spec.nodeName"));

    // Probes on the health server, at the port the ConfigMap gives it.
    let cm = &m.config_maps[0];
    let data: BTreeMap<String, String> = cm.data.clone().unwrap_or_default();
    let health_port: i32 = data["LB_HEALTH_ADDR"].rsplit(':').next().unwrap().parse().unwrap();
    for (probe, path) in [(&c.readiness_probe, "/readyz"), (&c.liveness_probe, "/healthz")] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{path} probe"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(health_port));
    }
    let from = c.env_from.iter().flatten().filter_map(|e| e.config_map_ref.as_ref()).map(|r| r.name.clone());
    assert!(from.into_iter().any(|n| Some(&n) == cm.metadata.name.as_ref()), "the flags come from the ConfigMap");

    // bpffs (shared, so pins outlive the container) and the host cgroup2.
    let volumes: BTreeMap<String, String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.clone(), v.host_path.as_ref()?.path.clone())))
        .collect();
    let mounts: BTreeMap<String, (String, Option<String>)> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), (m.mount_path.clone(), m.mount_propagation.clone())))
        .collect();
    let mount_of = |host: &str| {
        let (name, _) = volumes.iter().find(|(_, p)| p.as_str() == host).unwrap_or_else(|| panic!("no hostPath {host}"));
        mounts.get(name).cloned().unwrap_or_else(|| panic!("{host} not mounted"))
    };
    let (bpffs, propagation) = mount_of("/sys/fs/bpf");
    assert_eq!(propagation.as_deref(), Some("Bidirectional"));
    assert!(data["LB_BPFFS"].starts_with(&format!("{bpffs}/")), "LB_BPFFS is on the bpffs mount");
    let (cgroup, _) = mount_of("/sys/fs/cgroup");
    assert_eq!(data["LB_CGROUP"], cgroup);
}

#[test]
fn config_map_keys_are_flags_the_agent_knows() {
    let m = load();
    let help = Command::new(env!("CARGO_BIN_EXE_lb-agent")).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for key in m.config_maps[0].data.iter().flatten().map(|(k, _)| k) {
        if key == "RUST_LOG" {
            continue;
        }
        assert!(help.contains(&format!("[env: {key}=")), "{key} is not an lb-agent run variable:\n{help}");
    }
}
