//! Every manifest in `deploy/` parses into the real k8s-openapi types with
//! no unknown (typoed) field, the ClusterRole grants exactly what the agent
//! watches, and the DaemonSet wires up what the agent needs. `deploy/` is a
//! kustomize base: its kustomization lists every manifest, the API server's
//! address is one patch, the image is pinned; what `kubectl kustomize`
//! renders is checked too (skipped without kubectl, except under CI=true).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use lb_agent::source::kube::{WATCHED, parse_api_server};
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

/// `deploy/kustomization.yaml`, the fields lb uses (any other is an error).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Kustomization {
    api_version: String,
    kind: String,
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<PatchRef>,
    #[serde(default)]
    images: Vec<ImageOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchRef {
    path: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ImageOverride {
    name: String,
    new_name: Option<String>,
    new_tag: Option<String>,
    digest: Option<String>,
}

fn kustomization() -> Kustomization {
    let path = deploy_dir().join("kustomization.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let k: Kustomization = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!((k.api_version.as_str(), k.kind.as_str()), ("kustomize.config.k8s.io/v1beta1", "Kustomization"));
    k
}

/// Adds the objects of a multi-document YAML text.
fn parse_into(m: &mut Manifests, origin: &str, text: &str) {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let place = format!("{origin} (document {})", i + 1);
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

fn parse_files(files: &[String]) -> Manifests {
    let mut m = Manifests::default();
    for file in files {
        let path = deploy_dir().join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        parse_into(&mut m, &path.display().to_string(), &text);
    }
    m
}

/// The resources the kustomization lists.
fn load() -> Manifests {
    parse_files(&kustomization().resources)
}

/// Its patches.
fn load_patches() -> Manifests {
    parse_files(&kustomization().patches.into_iter().map(|p| p.path).collect::<Vec<_>>())
}

/// The agent's variables as applied: the ConfigMap's data with the
/// patches' on top (a strategic merge of `data`, as kustomize does).
fn config_data() -> BTreeMap<String, String> {
    let mut data = load().config_maps[0].data.clone().unwrap_or_default();
    for patch in load_patches().config_maps {
        data.extend(patch.data.unwrap_or_default());
    }
    data
}

#[test]
fn every_manifest_parses_strictly() {
    let m = load();
    assert_eq!(m.daemonsets.len(), 1);
    assert_eq!(m.service_accounts.len(), 1);
    assert_eq!(m.roles.len(), 1);
    assert_eq!(m.bindings.len(), 1);
    assert_eq!(m.config_maps.len(), 1);
    let patches = load_patches();
    assert_eq!(patches.config_maps.len(), 1, "the API server patch");
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let k = kustomization();
    let listed: BTreeSet<String> =
        k.resources.iter().chain(k.patches.iter().map(|p| &p.path)).cloned().chain(["kustomization.yaml".to_string()]).collect();
    let present: BTreeSet<String> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    assert_eq!(listed, present, "every manifest in deploy/ is a resource or a patch of the kustomization");
}

/// The address of the API server is one ConfigMap patch, valid as it is.
#[test]
fn the_api_server_address_is_one_patch() {
    let base = &load().config_maps[0];
    let patches = load_patches();
    let patch = &patches.config_maps[0];
    assert_eq!((&patch.metadata.name, &patch.metadata.namespace), (&base.metadata.name, &base.metadata.namespace));
    let data = patch.data.clone().unwrap_or_default();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["LB_K8S_API_SERVER"], "the patch sets the address and nothing else");
    parse_api_server(&data["LB_K8S_API_SERVER"]).unwrap();
    assert!(!base.data.iter().flatten().any(|(k, _)| k == "LB_K8S_API_SERVER"), "only the patch sets it");
}

/// The image is a release, the same in the DaemonSet and the
/// kustomization's `images:`, never `:latest`.
#[test]
fn the_image_is_pinned() {
    let m = load();
    let pod = m.daemonsets[0].spec.as_ref().unwrap().template.spec.clone().unwrap();
    let image = pod.containers[0].image.clone().unwrap();
    let (name, tag) = image.rsplit_once(':').unwrap_or_else(|| panic!("{image} has no tag"));
    assert_eq!(tag, env!("CARGO_PKG_VERSION"), "{image}: the release this tree builds");
    let k = kustomization();
    let set = k.images.iter().find(|i| i.name == name).unwrap_or_else(|| panic!("kustomization.yaml sets no tag for {name}"));
    assert_eq!(set.new_tag.as_deref(), Some(tag));
    assert!(set.new_name.is_none() && set.digest.is_none());
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
    let wanted: BTreeSet<(String, String, String)> =
        WATCHED.iter().flat_map(|(g, r, verbs)| verbs.iter().map(move |v| (g.to_string(), r.to_string(), v.to_string()))).collect();
    assert_eq!(granted, wanted);

    let binding = &m.bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let sa = &m.service_accounts[0];
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert!(
        subjects
            .iter()
            .any(|s| s.kind == "ServiceAccount" && Some(&s.name) == sa.metadata.name.as_ref() && s.namespace == sa.metadata.namespace),
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
    // Cluster DNS is a ClusterIP: not routed before lb runs.
    assert_eq!(pod.dns_policy.as_deref(), Some("Default"), "the agent resolves names with the node's resolver");
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
    // The agent: its three capabilities and nothing more, RuntimeDefault
    // seccomp (the privileges lab test proves it runs so).
    let sc = c.security_context.as_ref().expect("the agent's securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let added: Vec<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, lb_agent::caps::container_names());
    assert_eq!(sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()), Some("RuntimeDefault"));
    // What it cannot do so, a short privileged init container does.
    let init = pod.init_containers.as_deref().unwrap_or_default();
    assert_eq!(init.len(), 1, "prepare-node");
    assert_eq!(init[0].security_context.as_ref().and_then(|s| s.privileged), Some(true));
    assert_eq!(init[0].image, c.image);
    let bpffs_mount = |c: &k8s_openapi::api::core::v1::Container| {
        c.volume_mounts.iter().flatten().find(|m| m.mount_path == "/sys/fs/bpf").and_then(|m| m.mount_propagation.clone())
    };
    assert_eq!(bpffs_mount(&init[0]).as_deref(), Some("Bidirectional"), "a bpffs it mounts reaches the host");
    assert_eq!(c.args.as_deref(), Some(&["run".to_string()][..]));
    let node_name = c.env.iter().flatten().find(|e| e.name == "NODE_NAME").expect("NODE_NAME");
    let field = node_name.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
    assert_eq!(field, Some("spec.nodeName"));

    // Probes on the health server, at the port the ConfigMap gives it:
    // liveness on /livez, as kube-proxy's (/healthz fails on purpose while
    // the node is being deleted).
    let cm = &m.config_maps[0];
    let data = config_data();
    let health_port: i32 = data["LB_HEALTH_ADDR"].rsplit(':').next().unwrap().parse().unwrap();
    for (probe, path) in [(&c.readiness_probe, "/readyz"), (&c.liveness_probe, "/livez")] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{path} probe"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(health_port));
    }
    let from = c.env_from.iter().flatten().filter_map(|e| e.config_map_ref.as_ref()).map(|r| r.name.clone());
    assert!(from.into_iter().any(|n| Some(&n) == cm.metadata.name.as_ref()), "the flags come from the ConfigMap");

    // bpffs (shared, so pins outlive the container) and the host cgroup2.
    let volumes: BTreeMap<String, String> =
        pod.volumes.iter().flatten().filter_map(|v| Some((v.name.clone(), v.host_path.as_ref()?.path.clone()))).collect();
    let mounts: BTreeMap<String, (String, Option<String>)> =
        c.volume_mounts.iter().flatten().map(|m| (m.name.clone(), (m.mount_path.clone(), m.mount_propagation.clone()))).collect();
    let mount_of = |host: &str| {
        let (name, _) = volumes.iter().find(|(_, p)| p.as_str() == host).unwrap_or_else(|| panic!("no hostPath {host}"));
        mounts.get(name).cloned().unwrap_or_else(|| panic!("{host} not mounted"))
    };
    let (bpffs, propagation) = mount_of("/sys/fs/bpf");
    // Bidirectional is for privileged containers only; the agent only
    // needs to see the host's bpffs.
    assert_eq!(propagation.as_deref(), Some("HostToContainer"));
    assert!(data["LB_BPFFS"].starts_with(&format!("{bpffs}/")), "LB_BPFFS is on the bpffs mount");
    let (cgroup, _) = mount_of("/sys/fs/cgroup");
    assert_eq!(data["LB_CGROUP"], cgroup);
    // The host's network sysctls, writable, where LB_SYSCTL_DIR looks for
    // them (its own /proc/sys is read-only; the privileges lab test runs
    // the agent so).
    let (sysctl_net, _) = mount_of("/proc/sys/net");
    assert_eq!(format!("{}/net", data["LB_SYSCTL_DIR"]), sysctl_net);
    let writable = c.volume_mounts.iter().flatten().find(|m| m.mount_path == sysctl_net).is_some_and(|m| m.read_only != Some(true));
    assert!(writable, "{sysctl_net} is mounted read-only");
    // Linux nodes only: the tolerations take every node.
    let selector = pod.node_selector.clone().unwrap_or_default();
    assert_eq!(selector.get("kubernetes.io/os").map(String::as_str), Some("linux"));
}

#[test]
fn config_map_keys_are_flags_the_agent_knows() {
    let help = Command::new(env!("CARGO_BIN_EXE_lb-agent")).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for key in config_data().keys() {
        if key == "RUST_LOG" {
            continue;
        }
        assert!(help.contains(&format!("[env: {key}=")), "{key} is not an lb-agent run variable:\n{help}");
    }
}

/// The image builds with `cargo xtask build` (which installs the matching
/// bpf-linker) from base images pinned to exact versions, and the build
/// context leaves build outputs and history out.
#[test]
fn the_containerfile_builds_with_xtask_from_pinned_images() {
    let root = deploy_dir().join("..");
    let text = std::fs::read_to_string(deploy_dir().join("Containerfile")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    let bases: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("FROM ")?.split_whitespace().next()).collect();
    assert_eq!(bases.len(), 2, "a build and a run stage: {bases:?}");
    for base in &bases {
        let (_, tag) = base.rsplit_once(':').unwrap_or_else(|| panic!("{base} has no tag"));
        // 1.95.0-bookworm, bookworm-20260824-slim: a full version or a date.
        let exact = tag.split('-').any(|part| part.split('.').count() == 3 || (part.len() == 8 && part.parse::<u32>().is_ok()));
        assert!(exact && !tag.contains("latest"), "{base} is not pinned to an exact version");
    }
    let rust_version = std::fs::read_to_string(root.join("Cargo.toml"))
        .unwrap()
        .lines()
        .find_map(|l| Some(l.strip_prefix("rust-version = ")?.trim_matches('"').to_string()))
        .unwrap();
    let stable = format!("rust:{rust_version}.");
    assert!(bases[0].contains(&stable), "{}: the workspace's rust-version {rust_version}", bases[0]);
    let run = lines.iter().filter(|l| l.starts_with("RUN ")).map(|l| l.to_string()).collect::<Vec<_>>().join("\n");
    assert!(run.contains("cargo xtask build"), "{run}");
    let instructions = lines.join("\n");
    assert!(!instructions.contains("cargo install"), "bpf-linker comes from xtask's toolchain step, at its version");

    let ignore = std::fs::read_to_string(root.join(".containerignore")).unwrap();
    let ignored: BTreeSet<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    for path in ["target/", "lb-ebpf/target/", ".git/"] {
        assert!(ignored.contains(path), ".containerignore lacks {path}");
    }
}

/// `options/privileged.yaml`, added as a patch by an overlay, makes the
/// agent privileged.
#[test]
fn the_privileged_option_renders() {
    if !kubectl_available() {
        return;
    }
    let overlay = std::env::temp_dir().join(format!("lb-overlay-{}", std::process::id()));
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::copy(deploy_dir().join("options/privileged.yaml"), overlay.join("privileged.yaml")).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        // kustomize takes bases by relative path only.
        format!("resources:\n- ../..{}\npatches:\n- path: privileged.yaml\n", deploy_dir().canonicalize().unwrap().display()),
    )
    .unwrap();
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&overlay)
        .env("HOME", &overlay)
        .env("KUBECONFIG", overlay.join("none"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&overlay);
    assert!(out.status.success(), "kubectl kustomize: {}", String::from_utf8_lossy(&out.stderr));
    let mut m = Manifests::default();
    parse_into(&mut m, "the privileged overlay", &String::from_utf8(out.stdout).unwrap());
    let c = &m.daemonsets[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(true));
    assert!(sc.capabilities.is_none() && sc.seccomp_profile.is_none(), "{sc:?}");
}

fn kubectl_available() -> bool {
    let ok = Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true and kubectl is not installed");
        }
        eprintln!("SKIPPED: kubectl not installed");
    }
    ok
}

/// What `kubectl apply -k deploy/` applies: the image pinned, the API
/// server's address set, the probes on /livez and /readyz.
#[test]
fn kustomize_renders_the_install() {
    if !kubectl_available() {
        return;
    }
    let home = std::env::temp_dir().join(format!("lb-kustomize-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy_dir())
        .env("HOME", &home)
        .env("KUBECONFIG", home.join("none"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&home);
    assert!(out.status.success(), "kubectl kustomize deploy/: {}", String::from_utf8_lossy(&out.stderr));
    let mut m = Manifests::default();
    parse_into(&mut m, "kubectl kustomize deploy/", &String::from_utf8(out.stdout).unwrap());
    assert_eq!((m.daemonsets.len(), m.config_maps.len(), m.service_accounts.len(), m.roles.len(), m.bindings.len()), (1, 1, 1, 1, 1));

    let c = &m.daemonsets[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    let image = c.image.as_deref().unwrap();
    assert_eq!(image, format!("ghcr.io/lb-dev/lb-agent:{}", env!("CARGO_PKG_VERSION")));
    assert!(!image.ends_with(":latest"));

    // The API server's address reaches the agent: the patched ConfigMap,
    // which the container takes its variables from.
    let cm = &m.config_maps[0];
    let data = cm.data.clone().unwrap_or_default();
    let server = data.get("LB_K8S_API_SERVER").expect("LB_K8S_API_SERVER in the rendered ConfigMap");
    parse_api_server(server).unwrap();
    assert_eq!(data.get("LB_HEALTH_ADDR").map(String::as_str), Some("0.0.0.0:10256"), "the base's data is kept");
    let from: Vec<String> = c.env_from.iter().flatten().filter_map(|e| Some(e.config_map_ref.as_ref()?.name.clone())).collect();
    assert_eq!(from, [cm.metadata.name.clone().unwrap()]);
    assert!(!c.env.iter().flatten().any(|e| e.name.starts_with("LB_")), "no variable hides the ConfigMap's");

    let path =
        |probe: &Option<k8s_openapi::api::core::v1::Probe>| probe.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|g| g.path.clone());
    assert_eq!(path(&c.liveness_probe).as_deref(), Some("/livez"));
    assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
}
